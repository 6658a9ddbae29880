//! host-local reclaims reservations that outlived their containers: a reboot is
//! simulated by rewriting the file the boot id is read from (`CNIBOX_BOOT_ID_PATH`, the
//! test-only override of `/proc/sys/kernel/random/boot_id`); the logic is the real one.
//! Reservations from earlier boots are reclaimed when a range is exhausted, never those
//! of the current boot, of a netns that still exists, or of unknown boot; reservations
//! written by the Go plugins (Debian's 1.1.1 and upstream v1.9.1) count only when the
//! network's records prove them older; GC removes whatever is not valid.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

const BOOT_A: &str = "0a0a0a0a-1111-4111-8111-111111111111";
const BOOT_B: &str = "0b0b0b0b-2222-4222-8222-222222222222";
/// The reference's message for an exhausted /30.
const FULL_30: &str =
    "failed to allocate for range 0: no IP addresses available in range set: 10.1.2.1-10.1.2.2";

/// A rig whose cnibox calls read the boot id from a file the test rewrites.
struct World {
    rig: Rig,
    boot_file: PathBuf,
}

impl World {
    fn new() -> World {
        let rig = Rig::new();
        let boot_file = rig.dir.join("boot_id");
        let w = World { rig, boot_file };
        w.boot(BOOT_A);
        w
    }

    /// "Reboot": the kernel now reports `id`.
    fn boot(&self, id: &str) {
        fs::write(&self.boot_file, format!("{id}\n")).unwrap();
    }

    fn conf(&self, subnet: &str) -> Value {
        // 1.0.0: the newest version Debian's 1.1.1 plugins accept (GC makes it 1.1.0).
        json!({"cniVersion": "1.0.0", "name": "stnet", "type": "ipam-test",
               "ipam": {"type": "host-local", "subnet": subnet, "dataDir": self.rig.data_dir()}})
    }

    fn dir(&self) -> PathBuf {
        self.rig.data_dir().join("stnet")
    }

    /// A cnibox host-local call (reading the simulated boot id).
    fn ours(&self, cmd: &str, c: &Value, id: &str) -> Call<'_> {
        self.rig
            .call("host-local", cmd, c)
            .id(id)
            .env("CNIBOX_BOOT_ID_PATH", self.boot_file.to_str().unwrap())
    }

    /// A cnibox ADD for a container whose netns is gone (it died with its boot).
    fn add_dead(&self, c: &Value, id: &str) -> String {
        let v = self
            .ours("ADD", c, id)
            .netns(&format!("/run/netns/cbx-gone-{id}-{}", std::process::id()))
            .run()
            .ok()
            .clone();
        v["ips"][0]["address"].as_str().unwrap().to_string()
    }

    /// The owner (`id\r\nifname`) of each reservation, sorted by address.
    fn owners(&self) -> Vec<(String, String)> {
        reservations(&self.dir())
            .into_iter()
            .map(|n| {
                let c = fs::read_to_string(self.dir().join(&n)).unwrap();
                (n, c)
            })
            .collect()
    }

    /// The boot record of reservation `ip`, if any.
    fn record(&self, ip: &str) -> Option<Value> {
        let p = self.dir().join(".cnibox-boot").join(format!("{ip}.boot"));
        match fs::read_to_string(&p) {
            Ok(s) => Some(serde_json::from_str(&s).unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }

    /// Names in the records directory, sorted.
    fn records(&self) -> Vec<String> {
        let mut v: Vec<String> = match fs::read_dir(self.dir().join(".cnibox-boot")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => panic!("{e}"),
        };
        v.sort();
        v
    }

    /// Every file under the network directory with its content, but the lock and the
    /// index (a cache, restamped by any call): "nothing changed" comparisons.
    fn snapshot(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = tree(&self.dir())
            .into_iter()
            .filter(|p| Path::new(p).is_file() && !p.ends_with("/lock"))
            .filter(|p| !p.contains("/.cnibox-index/"))
            .map(|p| {
                let c = fs::read_to_string(&p).unwrap();
                (p, c)
            })
            .collect();
        v.sort();
        v
    }
}

fn addr(v: &Value) -> String {
    v["ips"][0]["address"].as_str().unwrap().to_string()
}

/// The Go plugins writing reservations: upstream v1.9.1 and Debian's 1.1.1.
#[derive(Clone, Copy, Debug)]
enum Go {
    Upstream,
    Debian,
}

impl Go {
    fn call<'a>(self, w: &'a World, cmd: &str, c: &Value, id: &str) -> Call<'a> {
        let call = w.rig.call("host-local", cmd, c).id(id);
        match self {
            Go::Upstream => call.go(),
            Go::Debian => call.debian(),
        }
    }
}

#[test]
fn earlier_boot_reservation_is_reclaimed_when_the_range_is_exhausted() {
    // A full /30 from an earlier boot: the ADD takes the reclaimed address, but only
    // once the old container's netns is gone too.
    let w = World::new();
    let c = w.conf("10.1.2.0/30");
    let ns = w.rig.new_netns();
    let v = w
        .ours("ADD", &c, "old")
        .netns(ns.path.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(addr(&v), "10.1.2.2/30");
    let rec = w
        .record("10.1.2.2")
        .expect("a boot record for our reservation");
    assert_eq!(rec["boot"], BOOT_A);
    assert_eq!(rec["key"], "old\r\neth0");
    assert_eq!(rec["netns"], ns.path.to_str().unwrap());

    w.boot(BOOT_B);
    // The netns still exists: that container is alive whatever the boot id says.
    let before = w.snapshot();
    let out = w.ours("ADD", &c, "new").run();
    assert_eq!(out.err_text().trim_end(), FULL_30, "{}", out.stdout);
    assert_eq!(w.owners(), [("10.1.2.2".into(), "old\r\neth0".into())]);
    assert_eq!(
        w.snapshot(),
        before,
        "a refused ADD changed the reservations or records"
    );

    ns.delete();
    let out = w.ours("ADD", &c, "new").run();
    assert_eq!(addr(out.ok()), "10.1.2.2/30");
    assert!(
        out.stderr.contains(&format!(
            "host-local: reclaimed (reserved in an earlier boot): 10.1.2.2 (old/eth0, boot {BOOT_A})"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(w.owners(), [("10.1.2.2".into(), "new\r\neth0".into())]);
    assert_eq!(w.record("10.1.2.2").unwrap()["boot"], BOOT_B);
    // The index followed: the old attachment holds nothing, the new one its address.
    w.ours("DEL", &c, "old").run().ok();
    assert_eq!(w.owners().len(), 1);
    let cc = with_prev(&c, out.ok());
    assert_eq!(w.ours("CHECK", &cc, "old").run().code, 1);
    w.ours("CHECK", &cc, "new").run().ok();
    w.ours("DEL", &c, "new").run().ok();
    assert!(w.owners().is_empty());
    assert!(w.records().is_empty(), "{:?}", w.records());
}

#[test]
fn current_boot_exhausted_range_fails_like_the_reference_and_reclaims_nothing() {
    let w = World::new();
    let c = w.conf("10.1.2.0/30");
    assert_eq!(w.add_dead(&c, "c1"), "10.1.2.2/30");
    let before = w.snapshot();
    let ours = w.ours("ADD", &c, "c2").run();
    assert_eq!(w.snapshot(), before, "the failed ADD changed something");
    let go = w.rig.call("host-local", "ADD", &c).id("c2").go().run();
    assert_eq!(ours.err_text().trim_end(), FULL_30, "{}", ours.stdout);
    assert_eq!(
        (ours.code, ours.err_code(), ours.err_text().trim_end()),
        (go.code, go.err_code(), go.err_text().trim_end())
    );
    assert_eq!(w.owners(), [("10.1.2.2".into(), "c1\r\neth0".into())]);
    // Without a readable boot id nothing can be proved older: nothing is reclaimed.
    fs::remove_file(&w.boot_file).unwrap();
    let out = w.ours("ADD", &c, "c2").run();
    assert_eq!(out.err_text().trim_end(), FULL_30, "{}", out.stdout);
    assert_eq!(w.snapshot(), before);
}

#[test]
fn reference_reservations_are_reclaimed_only_when_proved_older() {
    for flavor in [Go::Upstream, Go::Debian] {
        // Proved: a cnibox call stamped the network (boot A) after Go's reservation,
        // and nothing changed it until the next boot's first call.
        let w = World::new();
        let c = w.conf("10.1.2.0/30");
        flavor.call(&w, "ADD", &c, "g1").run().ok();
        w.ours("DEL", &c, "nobody").run().ok();
        w.boot(BOOT_B);
        let out = w.ours("ADD", &c, "n1").run();
        assert_eq!(addr(out.ok()), "10.1.2.2/30", "{flavor:?}");
        assert!(
            out.stderr
                .contains(&format!("10.1.2.2 (g1/eth0, boot {BOOT_A})")),
            "{flavor:?}: {}",
            out.stderr
        );
        assert_eq!(w.owners(), [("10.1.2.2".into(), "n1\r\neth0".into())]);

        // Not proved: Go reserved after cnibox's last call of boot A (its change breaks
        // the chain), so after the reboot its reservation is of unknown boot: the ADD
        // fails as the reference's would; GC removes it.
        let w = World::new();
        let c = w.conf("10.1.2.0/30");
        w.ours("DEL", &c, "nobody").run().ok();
        flavor.call(&w, "ADD", &c, "g1").run().ok();
        w.boot(BOOT_B);
        let out = w.ours("ADD", &c, "n1").run();
        assert_eq!(
            out.err_text().trim_end(),
            FULL_30,
            "{flavor:?}: {}",
            out.stdout
        );
        assert_eq!(w.owners(), [("10.1.2.2".into(), "g1\r\neth0".into())]);
        let mut gc = c.clone();
        gc["cniVersion"] = json!("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "n1", "ifname": "eth0"}]);
        let out = w.ours("GC", &gc, "").run();
        assert_eq!(out.code, 0, "{}", out.stdout);
        assert!(
            out.stderr
                .contains("host-local: GC released: 10.1.2.2 (g1/eth0)"),
            "{}",
            out.stderr
        );
        assert!(w.owners().is_empty());
        assert_eq!(addr(w.ours("ADD", &c, "n1").run().ok()), "10.1.2.2/30");

        // Current boot: Go reserved after the reboot. Never reclaimed.
        let w = World::new();
        let c = w.conf("10.1.2.0/30");
        w.ours("DEL", &c, "nobody").run().ok();
        w.boot(BOOT_B);
        flavor.call(&w, "ADD", &c, "g1").run().ok();
        let out = w.ours("ADD", &c, "n1").run();
        assert_eq!(
            out.err_text().trim_end(),
            FULL_30,
            "{flavor:?}: {}",
            out.stdout
        );
        assert_eq!(w.owners(), [("10.1.2.2".into(), "g1\r\neth0".into())]);
        assert!(w.records().is_empty(), "{:?}", w.records());
    }
}

#[test]
fn cross_compat_holds_with_boot_records_present() {
    for flavor in [Go::Upstream, Go::Debian] {
        let w = World::new();
        let c = w.conf("10.1.2.0/29");
        // Go's CHECK (FindByKey reads every file) finds ours, and no record passes for
        // a reservation of an attachment that has none.
        let v = w
            .ours("ADD", &c, "c1")
            .netns("/run/netns/cbx-gone")
            .run()
            .ok()
            .clone();
        assert_eq!(addr(&v), "10.1.2.2/29");
        assert!(w.record("10.1.2.2").is_some());
        let cc = with_prev(&c, &v);
        flavor.call(&w, "CHECK", &cc, "c1").run().ok();
        let out = flavor.call(&w, "CHECK", &cc, "nobody").run();
        assert!(
            out.err_text().contains("Failed to find address"),
            "{}",
            out.stdout
        );
        // Go releases ours: it reads the record (content, then name) and leaves it.
        flavor.call(&w, "DEL", &c, "c1").run().ok();
        assert!(w.owners().is_empty(), "{flavor:?}");
        assert!(
            w.record("10.1.2.2").is_some(),
            "{flavor:?}'s DEL took the record for a reservation"
        );
        // Go's duplicate check (GetByID) does not take the record for c1's address.
        let v = flavor.call(&w, "ADD", &c, "c1").run().ok().clone();
        assert_eq!(addr(&v), "10.1.2.3/29");
        // cnibox releases Go's; the stale record of .2 goes at the next scan.
        w.ours("DEL", &c, "c1").run().ok();
        assert!(w.owners().is_empty());
        assert!(w.records().is_empty(), "{flavor:?}: {:?}", w.records());

        // Go re-creates a reservation with the same name and owner as one of ours from
        // an earlier boot: the record describes the old file, not this live one.
        let w = World::new();
        let c = w.conf("10.1.2.0/30");
        assert_eq!(w.add_dead(&c, "c1"), "10.1.2.2/30");
        w.boot(BOOT_B);
        flavor.call(&w, "DEL", &c, "c1").run().ok();
        assert_eq!(
            addr(flavor.call(&w, "ADD", &c, "c1").run().ok()),
            "10.1.2.2/30"
        );
        assert!(w.record("10.1.2.2").is_some());
        let out = w.ours("ADD", &c, "c2").run();
        assert_eq!(
            out.err_text().trim_end(),
            FULL_30,
            "{flavor:?}: {}",
            out.stdout
        );
        assert_eq!(w.owners(), [("10.1.2.2".into(), "c1\r\neth0".into())]);
        assert!(w.records().is_empty(), "{flavor:?}: {:?}", w.records());
    }
}

#[test]
fn parallel_adds_on_a_range_full_of_stale_reservations_never_share_an_address() {
    // A /24 (253 addresses) filled in boot A by cnibox and by Go (proved by cnibox's
    // last call of the boot); after the reboot, 64 ADDs at once.
    let w = World::new();
    let c = w.conf("10.1.2.0/24");
    for i in 0..200 {
        w.add_dead(&c, &format!("a{i}"));
    }
    for i in 0..53 {
        let call = w.rig.call("host-local", "ADD", &c).id(&format!("g{i}"));
        if i % 2 == 0 { call.go() } else { call.debian() }
            .run()
            .ok();
    }
    w.ours("DEL", &c, "nobody").run().ok();
    assert_eq!(w.owners().len(), 253);
    w.boot(BOOT_B);
    let got: Vec<(String, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let (w, c) = (&w, &c);
                s.spawn(move || {
                    let id = format!("p{i}");
                    let out = w.ours("ADD", c, &id).run();
                    (id, addr(out.ok()))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<&String> = got.iter().map(|(_, a)| a).collect();
    assert_eq!(distinct.len(), 64, "an address was given twice: {got:?}");
    // Exactly the 64 new attachments hold addresses, each the one it was given.
    let owners = w.owners();
    assert_eq!(owners.len(), 64, "{owners:?}");
    for (id, a) in &got {
        let ip = a.split('/').next().unwrap();
        let content = fs::read_to_string(w.dir().join(ip)).unwrap();
        assert_eq!(content, format!("{id}\r\neth0"));
        assert_eq!(w.record(ip).unwrap()["boot"], BOOT_B);
    }
    assert_eq!(w.records().len(), 64);
    // The index forgot the reclaimed attachments: their ids may be used again (a stale
    // index entry would refuse them as duplicates), by cnibox and by Go.
    let again = w.ours("ADD", &c, "a0").run();
    let again_go = w.rig.call("host-local", "ADD", &c).id("g1").go().run();
    let (again, again_go) = (addr(again.ok()), addr(again_go.ok()));
    assert!(!distinct.contains(&again) && !distinct.contains(&again_go) && again != again_go);
    w.ours("DEL", &c, "a0").run().ok();
    w.ours("DEL", &c, "g1").run().ok();
    // The index is exact: DEL of every new attachment (half through Go) empties it.
    for (i, (id, _)) in got.iter().enumerate() {
        let call = w.ours("DEL", &c, id);
        if i % 2 == 0 { call.go() } else { call }.run().ok();
    }
    assert!(w.owners().is_empty(), "{:?}", w.owners());
}

#[test]
fn reclaim_stale_false_opts_out() {
    let w = World::new();
    let c = w.conf("10.1.2.0/30");
    w.add_dead(&c, "old");
    w.boot(BOOT_B);
    let mut off = c.clone();
    off["ipam"]["reclaimStale"] = json!(false);
    let before = w.snapshot();
    let out = w.ours("ADD", &off, "new").run();
    assert_eq!(out.err_text().trim_end(), FULL_30, "{}", out.stdout);
    assert_eq!(w.owners(), [("10.1.2.2".into(), "old\r\neth0".into())]);
    assert_eq!(w.snapshot(), before);
    // A value of the wrong type is a decode error, as for every key.
    let mut bad = c.clone();
    bad["ipam"]["reclaimStale"] = json!("no");
    assert_eq!(w.ours("ADD", &bad, "new").run().err_code(), 6);
    // Explicitly on (the default) reclaims.
    let mut on = c.clone();
    on["ipam"]["reclaimStale"] = json!(true);
    assert_eq!(addr(w.ours("ADD", &on, "new").run().ok()), "10.1.2.2/30");
}

#[test]
fn gc_removes_every_reservation_not_valid_whatever_its_boot() {
    let w = World::new();
    let c = w.conf("10.1.2.0/24");
    w.add_dead(&c, "a1");
    w.add_dead(&c, "a2");
    w.rig.call("host-local", "ADD", &c).id("g1").go().run().ok();
    w.rig
        .call("host-local", "ADD", &c)
        .id("d1")
        .debian()
        .run()
        .ok();
    // A record left behind by Go's DEL of one of ours.
    w.add_dead(&c, "o1");
    w.rig.call("host-local", "DEL", &c).id("o1").go().run().ok();
    w.boot(BOOT_B);
    // Current boot, live netns: GC's valid list is what decides.
    w.ours("ADD", &c, "b1").run().ok();
    w.ours("ADD", &c, "b2").run().ok();
    let ip_of = |id: &str| -> String {
        w.owners()
            .into_iter()
            .find(|(_, o)| o == &format!("{id}\r\neth0"))
            .unwrap()
            .0
    };
    let keep = [ip_of("a1"), ip_of("b1")];
    let gone: Vec<String> = ["a2", "g1", "d1", "b2"].iter().map(|i| ip_of(i)).collect();
    let mut gc = c.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a1", "ifname": "eth0"},
                                            {"containerID": "b1", "ifname": "eth0"}]);
    let out = w.ours("GC", &gc, "").run();
    assert_eq!(out.code, 0, "{}", out.stdout);
    let mut left: Vec<String> = w.owners().into_iter().map(|(n, _)| n).collect();
    left.sort();
    let mut want = keep.to_vec();
    want.sort();
    assert_eq!(left, want);
    for ip in &gone {
        assert!(out.stderr.contains(ip.as_str()), "{ip}: {}", out.stderr);
    }
    // Only the records of what is left remain.
    let mut recs: Vec<String> = keep.iter().map(|ip| format!("{ip}.boot")).collect();
    recs.sort();
    assert_eq!(w.records(), recs);
}
