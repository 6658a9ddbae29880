//! host-local's store under stress and against the Go plugin: the shared lock (bounded
//! wait, code 11), temp files of killed writers, the index that spares ADD and DEL a
//! scan of every reservation, and SIGKILL at random points inside the work.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn conf(rig: &Rig, subnet: &str) -> Value {
    json!({"cniVersion": "1.1.0", "name": "hlnet", "type": "ipam-test",
           "ipam": {"type": "host-local", "subnet": subnet, "dataDir": rig.data_dir()}})
}

fn dir(rig: &Rig) -> PathBuf {
    rig.data_dir().join("hlnet")
}

fn addr_of(v: &Value) -> String {
    v["ips"][0]["address"].as_str().unwrap().to_string()
}

/// Take the network's lock from the test process, as another plugin would.
fn hold_lock(rig: &Rig) -> File {
    fs::create_dir_all(dir(rig)).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir(rig).join("lock"))
        .unwrap();
    f.lock().unwrap();
    f
}

/// Every entry of `d` whose name marks a temp file.
fn temps(d: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in [
        d.to_path_buf(),
        d.join(".cnibox-index"),
        d.join(".cnibox-boot"),
    ] {
        if let Ok(rd) = fs::read_dir(&sub) {
            v.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".tmp-")),
            );
        }
    }
    v
}

/// `n` reservations as the Go plugin writes them, in 10.1.100.1 onwards.
fn go_reservations(rig: &Rig, n: u32) -> Vec<PathBuf> {
    fs::create_dir_all(dir(rig)).unwrap();
    (0..n)
        .map(|i| {
            let p = dir(rig).join(format!("10.1.{}.{}", 100 + i / 250, 1 + i % 250));
            fs::write(&p, format!("go{i}\r\neth0")).unwrap();
            p
        })
        .collect()
}

/// Rewrite files in place (which changes nothing in their directory) so that their
/// content claims `content`: a scan would now count them as that attachment's, the
/// index does not.
fn rewrite_in_place(files: &[PathBuf], content: &str) {
    for p in files {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)
            .unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }
}

#[test]
fn lock_is_shared_with_go_and_waited_for() {
    // The test holds <dataDir>/<net>/lock: a Go and a cnibox ADD both wait for it, then
    // both succeed with distinct addresses once it is released.
    let rig = Rig::new();
    let c = conf(&rig, "10.1.2.0/24");
    let lock = hold_lock(&rig);
    std::thread::scope(|s| {
        let go = s.spawn(|| rig.call("host-local", "ADD", &c).id("go").go().run());
        let ours = s.spawn(|| rig.call("host-local", "ADD", &c).id("rs").run());
        std::thread::sleep(Duration::from_millis(500));
        let waiting = (!go.is_finished(), !ours.is_finished());
        let untouched = reservations(&dir(&rig)).is_empty();
        // Release before asserting, so a failure cannot leave a waiter blocked forever.
        lock.unlock().unwrap();
        assert!(waiting.0, "the Go ADD did not wait for the lock");
        assert!(waiting.1, "the cnibox ADD did not wait for the lock");
        assert!(untouched, "a reservation was made while the lock was held");
        let (g, o) = (go.join().unwrap(), ours.join().unwrap());
        assert_ne!(addr_of(g.ok()), addr_of(o.ok()));
    });
    assert_eq!(reservations(&dir(&rig)).len(), 2);
}

#[test]
fn lock_wait_is_bounded_with_code_11() {
    let rig = Rig::new();
    let c = conf(&rig, "10.1.2.0/24");
    let lock = hold_lock(&rig);
    let t = Instant::now();
    let out = std::thread::scope(|s| {
        let add = s.spawn(|| rig.call("host-local", "ADD", &c).run());
        // A plugin that waited forever would hang the test: give up after 30 s, and
        // release the lock first so that it can end.
        while !add.is_finished() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let finished = add.is_finished();
        if !finished {
            lock.unlock().unwrap();
        }
        assert!(finished, "ADD still waiting for the lock after 30 s");
        add.join().unwrap()
    });
    let waited = t.elapsed();
    assert_eq!(out.err_code(), 11, "{}", out.stdout);
    let want = format!(
        "timed out waiting for the lock {}",
        dir(&rig).join("lock").display()
    );
    assert!(out.stdout.contains(&want), "{}", out.stdout);
    // It did wait (the bound is 5 s), and changed nothing.
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    assert!(reservations(&dir(&rig)).is_empty());
    // DEL and CHECK are bounded the same way; a released lock works at once.
    assert_eq!(rig.call("host-local", "DEL", &c).run().err_code(), 11);
    drop(lock);
    rig.call("host-local", "ADD", &c).run().ok();
}

/// A PID that certainly belonged to a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn temp_files_of_dead_writers_are_reclaimed() {
    // 1,000 temp files of killed writers (both kinds, beside reservations, in the index
    // directory and among the boot records): the next ADD removes them all, without any
    // GC. Temp files of a live PID are left to GC, which removes every temp file.
    let rig = Rig::new();
    let c = conf(&rig, "10.1.0.0/16");
    rig.call("host-local", "ADD", &c).id("first").run().ok();
    let d = dir(&rig);
    let idx = d.join(".cnibox-index");
    assert!(idx.is_dir());
    let boot = d.join(".cnibox-boot");
    assert!(boot.is_dir());
    let dead = dead_pid();
    for i in 0..1000 {
        let (where_, name) = match i % 5 {
            0 => (&d, format!(".tmp-r-10.1.7.{}-{dead}-{i}x0", i % 250)),
            1 => (&d, format!(".tmp-w-{dead}-{i}x0")),
            2 => (&idx, format!(".tmp-w-{dead}-{i}x0")),
            3 => (&boot, format!(".tmp-w-{dead}-{i}x0")),
            _ => (&d, format!(".tmp-r-fd00::{i:x}-{dead}-{i}x0")),
        };
        fs::write(where_.join(name), "x\r\neth0").unwrap();
    }
    let live = std::process::id();
    fs::write(d.join(format!(".tmp-w-{live}-1x0")), "").unwrap();
    fs::write(d.join(format!(".tmp-r-10.1.9.9-{live}-2x0")), "y\r\neth0").unwrap();
    assert_eq!(temps(&d).len(), 1002);
    rig.call("host-local", "ADD", &c).id("second").run().ok();
    let mut left = temps(&d);
    left.sort();
    assert!(
        left == [
            format!(".tmp-r-10.1.9.9-{live}-2x0"),
            format!(".tmp-w-{live}-1x0")
        ],
        "{} temp files left, e.g. {:?}",
        left.len(),
        &left[..left.len().min(4)]
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "first", "ifname": "eth0"},
                                            {"containerID": "second", "ifname": "eth0"}]);
    rig.call("host-local", "GC", &gc).run().ok();
    assert!(temps(&d).is_empty(), "{:?}", temps(&d));
    assert_eq!(reservations(&d).len(), 2);
}

#[test]
fn del_uses_the_index_not_a_scan() {
    // DEL must not read every reservation. 1,000 Go-written reservations are indexed by
    // the first cnibox call; then they are rewritten in place to claim the container
    // being deleted. A DEL that scanned would delete all of them; through the index it
    // deletes exactly the container's own address.
    let rig = Rig::new();
    let c = conf(&rig, "10.1.0.0/16");
    let foreign = go_reservations(&rig, 1000);
    let v = rig
        .call("host-local", "ADD", &c)
        .id("target")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v), "10.1.0.2/16");
    rewrite_in_place(&foreign, "target\r\neth0");
    rig.call("host-local", "DEL", &c).id("target").run().ok();
    assert!(!dir(&rig).join("10.1.0.2").exists());
    assert_eq!(reservations(&dir(&rig)).len(), 1000);
    // A Go reservation is released by cnibox too (found through the index).
    rewrite_in_place(&foreign[7..8], "go7\r\neth0");
    rig.call("host-local", "DEL", &c).id("go7").run().ok();
    assert_eq!(reservations(&dir(&rig)).len(), 999);
}

#[test]
fn add_uses_the_index_not_a_scan() {
    // ADD's duplicate check must not read every reservation either: 1,000 reservations
    // rewritten in place to claim the new container would make a scanning ADD refuse it
    // ("has been allocated"); through the index it succeeds.
    let rig = Rig::new();
    let c = conf(&rig, "10.1.0.0/16");
    let foreign = go_reservations(&rig, 1000);
    rig.call("host-local", "ADD", &c).id("before").run().ok();
    rewrite_in_place(&foreign, "newc\r\neth0");
    let v = rig
        .call("host-local", "ADD", &c)
        .id("newc")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v), "10.1.0.3/16");
    // The attachment's own reservation is still refused as a duplicate.
    let out = rig.call("host-local", "ADD", &c).id("newc").run();
    assert!(
        out.stdout
            .contains("10.1.0.3 has been allocated to newc, duplicate allocation is not allowed"),
        "{}",
        out.stdout
    );
}

#[test]
fn go_changes_between_cnibox_calls_are_seen() {
    // The index is only trusted while nobody else changed the directory: reservations
    // the Go plugin makes or releases between two cnibox calls count exactly as the
    // reference counts them.
    let rig = Rig::new();
    let c = conf(&rig, "10.1.2.0/24");
    rig.call("host-local", "ADD", &c).id("c1").run().ok();
    let g = rig
        .call("host-local", "ADD", &c)
        .id("c2")
        .go()
        .run()
        .ok()
        .clone();
    let dup = |id: &str, ip: &str| {
        let out = rig.call("host-local", "ADD", &c).id(id).run();
        let want = format!("{ip} has been allocated to {id}, duplicate allocation is not allowed");
        assert!(out.stdout.contains(&want), "{id}: {}", out.stdout);
    };
    dup("c2", "10.1.2.3");
    dup("c1", "10.1.2.2");
    // Another ifname of the same container is a different attachment.
    let v = rig
        .call("host-local", "ADD", &c)
        .id("c2")
        .ifname("eth1")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v), "10.1.2.4/24");
    // Go releases c1 (known to our index): cnibox must not refuse c1 any more.
    rig.call("host-local", "DEL", &c).id("c1").go().run().ok();
    let v = rig
        .call("host-local", "ADD", &c)
        .id("c1")
        .run()
        .ok()
        .clone();
    assert_eq!(addr_of(&v), "10.1.2.5/24");
    // A legacy id-only reservation blocks its container's ADD, as in the reference.
    fs::write(dir(&rig).join("10.1.2.77"), "c3").unwrap();
    dup("c3", "10.1.2.77");
    // cnibox releases what Go made; Go then sees it gone.
    rig.call("host-local", "DEL", &c).id("c2").run().ok();
    assert!(!dir(&rig)
        .join(addr_of(&g).split('/').next().unwrap())
        .exists());
    rig.call("host-local", "ADD", &c).id("c2").go().run().ok();
    let mut cc = c.clone();
    cc["prevResult"] = v;
    rig.call("host-local", "CHECK", &cc).id("c1").run().ok();
    rig.call("host-local", "DEL", &c).id("c1").go().run().ok();
    assert_eq!(
        rig.call("host-local", "CHECK", &cc).id("c1").run().code,
        1,
        "CHECK must see Go's release"
    );
}

/// splitmix64: a fixed-seed generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn sigkill_inside_the_work() {
    // host-local ADDs SIGKILLed at random points, drawn around the measured duration of
    // an ADD (the work happens at the end of the process's life), a few hundred times,
    // with successful ADDs in between. Then: every state file parses, no attachment holds
    // two addresses and no address went to two successful ADDs, the network still
    // allocates (cnibox and Go), no temp file is left although no GC ran, and DEL of
    // every id used leaves no reservation.
    const RUNS: usize = 300;
    let rig = Rig::new();
    let c = conf(&rig, "10.1.0.0/16");
    let d = dir(&rig);
    let mut ids: Vec<String> = Vec::new();
    let mut granted: HashMap<String, String> = HashMap::new();
    let mut add_ok = |id: &str, ids: &mut Vec<String>| {
        let v = rig.call("host-local", "ADD", &c).id(id).run().ok().clone();
        ids.push(id.to_string());
        let ip = addr_of(&v);
        assert!(
            granted.insert(ip.clone(), id.to_string()).is_none(),
            "{ip} granted twice"
        );
    };
    let mut durations = Vec::new();
    for i in 0..15 {
        let t = Instant::now();
        add_ok(&format!("m{i}"), &mut ids);
        durations.push(t.elapsed());
    }
    durations.sort();
    let typical = durations[durations.len() / 2];
    let mut rng = Rng(0x5eed_cafe);
    let (mut mid_work, mut reserved) = (0, 0);
    for run in 0..RUNS {
        let id = format!("k{run}");
        let before = reservations(&d).len();
        let stamped = d.join(".cnibox-index/stamp").exists();
        let delay = typical.mul_f64(0.4 + 0.8 * rng.unit());
        rig.call("host-local", "ADD", &c)
            .id(&id)
            .run_killed_after(delay);
        ids.push(id);
        // The stamp is removed before the first change and written after the last: if
        // it was there before and is gone now, the kill landed inside the work.
        if stamped && !d.join(".cnibox-index/stamp").exists() {
            mid_work += 1;
        }
        if reservations(&d).len() > before {
            reserved += 1;
        }
        if run % 20 == 19 {
            add_ok(&format!("n{run}"), &mut ids);
        }
    }
    eprintln!(
        "{RUNS} ADDs killed after {:?}..{:?}: {mid_work} inside the work, {reserved} after reserving",
        typical.mul_f64(0.4),
        typical.mul_f64(1.2)
    );
    assert!(
        mid_work > 0,
        "no kill landed inside the work: the test proves nothing"
    );

    // Every state file parses.
    let mut owners: HashMap<String, String> = HashMap::new();
    for e in fs::read_dir(&d).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let text = || fs::read_to_string(d.join(&name)).unwrap();
        if name.parse::<std::net::IpAddr>().is_ok() {
            let content = text();
            let (id, ifname) = content.split_once("\r\n").expect("id\\r\\nifname");
            assert!(
                ids.iter().any(|i| i == id) && ifname == "eth0",
                "{name}: {content:?}"
            );
            if let Some(other) = owners.insert(content.clone(), name.clone()) {
                panic!("{content:?} holds {other} and {name}");
            }
        } else if name.starts_with("last_reserved_ip.") {
            text()
                .parse::<std::net::IpAddr>()
                .expect("last_reserved_ip");
        } else {
            assert!(
                ["lock", ".cnibox-index", ".cnibox-boot"].contains(&name.as_str())
                    || name.starts_with(".tmp-"),
                "unexpected {name}"
            );
        }
    }
    // So does every index entry and boot record.
    let records = fs::read_dir(d.join(".cnibox-boot")).unwrap();
    for e in fs::read_dir(d.join(".cnibox-index"))
        .unwrap()
        .chain(records)
    {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-") {
            serde_json::from_str::<Value>(&fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }
    // The network still allocates, and nothing accumulated without GC.
    add_ok("final", &mut ids);
    assert!(temps(&d).is_empty(), "{:?}", temps(&d));
    rig.call("host-local", "ADD", &c)
        .id("go-final")
        .go()
        .run()
        .ok();
    ids.push("go-final".into());
    // DEL of every id used (a third through Go) leaves no reservation.
    let unique: HashSet<&String> = ids.iter().collect();
    for (i, id) in unique.into_iter().enumerate() {
        let call = rig.call("host-local", "DEL", &c).id(id);
        if i % 3 == 0 { call.go() } else { call }.run().ok();
    }
    assert!(reservations(&d).is_empty(), "{:?}", reservations(&d));
}
