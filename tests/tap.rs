//! tap through the built binary (§2.8, §4.8 of the reference notes): the device in the
//! container with its MAC, MTU, owner, group and queue mode, attachable by its owner
//! only, carrying frames both ways through the owner's fd; nothing exec'd (empty PATH);
//! L3 with IPAM; a bridge inside the container; SELinux labels; rollback; malformed
//! input; and the Go plugin v1.9.1 side by side.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

const OWNER: u32 = 4321;
const GROUP: u32 = 4322;

fn conf(extra: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "tapnet", "type": "tap"}),
        &extra,
    )
}

fn conf_ipam(rig: &Rig, extra: Value) -> Value {
    conf(merged(
        json!({"ipam": {"type": "host-local", "subnet": "10.33.0.0/24",
            "routes": [{"dst": "10.34.0.0/16"}], "dataDir": rig.data_dir()}}),
        &extra,
    ))
}

/// The tun attributes of `ifname` as `ip -d -j link` prints them, plus MTU and MAC.
fn tun(ns: &Netns, ifname: &str) -> Value {
    let l = link(ns, ifname).unwrap_or_else(|| panic!("{ifname} missing"));
    assert_eq!(l["linkinfo"]["info_kind"], "tun", "{l}");
    json!({"data": l["linkinfo"]["info_data"], "mtu": l["mtu"], "mac": l["address"],
        "up": l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "master": l["master"]})
}

/// The command that runs a Python program as `uid`/`gid` (no supplementary groups, no
/// capabilities) inside the container: after `ip netns exec <cont>`.
fn python_as(uid: u32, gid: u32, program: &str) -> Vec<String> {
    [
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--inh-caps=-all",
        "/usr/bin/python3",
        "-c",
        program,
    ]
    .map(String::from)
    .to_vec()
}

/// The start of a Python program that opens a tun character device and attaches to
/// `ifname` as a queue (fd `fd`), then prints "attached". Python, not our own code, so
/// the check is independent of `src/tap.rs`. The device node is the rig's own copy of
/// /dev/net/tun (10:200, mode 0666): this machine's is root-only, and the node's
/// permissions are the administrator's business, not the tap's.
fn attach_program(rig: &Rig, ifname: &str, mq: bool) -> String {
    let node = rig.dir.join("tun");
    if !node.exists() {
        let out = std::process::Command::new("mknod")
            .args(["-m", "0666", node.to_str().unwrap(), "c", "10", "200"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mknod: {out:?}");
    }
    let flags = 0x0002 | 0x1000 | if mq { 0x0100 } else { 0 }; // TAP | NO_PI | MULTI_QUEUE
    format!(
        "import fcntl,os,struct\nfd=os.open('{}',os.O_RDWR)\n\
         fcntl.ioctl(fd,0x400454ca,struct.pack('16sH22x',b'{ifname}',{flags}))\n\
         print('attached',flush=True)\n",
        node.display()
    )
}

/// As `uid`/`gid`, inside the container: attach to `ifname` (see [`attach_program`]).
fn attach_as(rig: &Rig, uid: u32, gid: u32, ifname: &str, mq: bool) -> Result<(), String> {
    let py = attach_program(rig, ifname, mq);
    let cmd = python_as(uid, gid, &py);
    let out = rig
        .cont
        .exec(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("attached") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn tap_has_mac_mtu_owner_group_and_queues() {
    let rig = Rig::new();
    let c = conf(
        json!({"mac": "02:aa:bb:cc:dd:01", "mtu": 1400, "multiQueue": true,
        "owner": OWNER, "group": GROUP}),
    );
    let v = rig.call("tap", "ADD", &c).run().ok().clone();
    assert_eq!(
        v["interfaces"],
        json!([{"name": "eth0", "mac": "02:aa:bb:cc:dd:01", "sandbox": rig.cont.path}])
    );
    assert_eq!(
        tun(&rig.cont, "eth0"),
        json!({"data": {"type": "tap", "pi": false, "vnet_hdr": true, "multi_queue": true,
            "numqueues": 0, "numdisabled": 0, "persist": true, "user": OWNER, "group": GROUP},
            "mtu": 1400, "mac": "02:aa:bb:cc:dd:01", "up": true, "master": null})
    );
    assert!(link(&rig.host, "eth0").is_none(), "nothing in the host");
    rig.call("tap", "CHECK", &with_prev(&c, &v)).run().ok();

    // Single queue, owner only: the reference's `ip tuntap` defaults.
    let c1 = conf(json!({"owner": OWNER}));
    let v1 = rig
        .call("tap", "ADD", &c1)
        .ifname("tap1")
        .run()
        .ok()
        .clone();
    assert_eq!(
        tun(&rig.cont, "tap1")["data"],
        json!({"type": "tap", "pi": false, "vnet_hdr": false, "multi_queue": false,
            "persist": true, "user": OWNER})
    );
    // CNI_ARGS MAC beats mac; runtimeConfig.mac beats both.
    let c2 =
        conf(json!({"mac": "02:aa:bb:cc:dd:02", "runtimeConfig": {"mac": "02:aa:bb:cc:dd:03"}}));
    rig.call("tap", "ADD", &c2)
        .ifname("tap2")
        .args("IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:04")
        .run()
        .ok();
    assert_eq!(tun(&rig.cont, "tap2")["mac"], "02:aa:bb:cc:dd:03");
    rig.call("tap", "ADD", &conf(json!({"mac": "02:aa:bb:cc:dd:02"})))
        .ifname("tap3")
        .args("MAC=02:aa:bb:cc:dd:04")
        .run()
        .ok();
    assert_eq!(tun(&rig.cont, "tap3")["mac"], "02:aa:bb:cc:dd:04");

    for (ifname, c) in [("eth0", &c), ("tap1", &c1)] {
        rig.call("tap", "DEL", c).ifname(ifname).run().ok();
        assert!(link(&rig.cont, ifname).is_none());
        // Idempotent.
        rig.call("tap", "DEL", c).ifname(ifname).run().ok();
    }
    assert_eq!(v1["interfaces"][0]["name"], "tap1");
}

#[test]
fn the_owner_can_attach_and_nobody_else() {
    let rig = Rig::new();
    let other = OWNER + 10;
    // (ifname, multi-queue, config, (uid, gid) that may attach, (uid, gid) that may not).
    // With both owner and group set the kernel wants both.
    let cases = [
        (
            "eth0",
            false,
            json!({"owner": OWNER}),
            vec![(OWNER, other)],
            vec![(other, GROUP)],
        ),
        (
            "eth1",
            true,
            json!({"owner": OWNER, "group": GROUP, "multiQueue": true}),
            vec![(OWNER, GROUP)],
            vec![(OWNER, other), (other, GROUP)],
        ),
        (
            "eth2",
            false,
            json!({"group": GROUP}),
            vec![(other, GROUP)],
            vec![(OWNER, OWNER)],
        ),
    ];
    for (ifname, mq, extra, ok, refused) in cases {
        rig.call("tap", "ADD", &conf(extra))
            .ifname(ifname)
            .run()
            .ok();
        for (uid, gid) in ok {
            attach_as(&rig, uid, gid, ifname, mq)
                .unwrap_or_else(|e| panic!("{uid}:{gid} cannot attach to {ifname}: {e}"));
        }
        for (uid, gid) in refused {
            let e = attach_as(&rig, uid, gid, ifname, mq)
                .expect_err(&format!("{uid}:{gid} attached to {ifname}"));
            assert!(e.contains("Operation not permitted"), "{e}");
        }
    }
    // The taps outlive every attachment (persistent).
    assert!(link(&rig.cont, "eth0").is_some());
}

/// What the attached process does after [`attach_program`]: it answers, through its
/// fd, the ARP request and then the ICMP echo request the kernel sends out of the tap
/// for `{target}` (as `{mac}`), printing what it read, and stays attached until its
/// stdin closes; it gives up after 20 s.
const ANSWER_PING: &str = r#"
import select,socket,sys,time
target=socket.inet_aton('{target}'); mine=bytes.fromhex('{mac}'.replace(':',''))
def csum(b):
    b+=bytes(len(b)%2); s=sum(struct.unpack('!%dH'%(len(b)//2),b))
    while s>>16: s=(s&0xffff)+(s>>16)
    return ~s&0xffff
deadline=time.monotonic()+20
while True:
    left=deadline-time.monotonic()
    if left<=0 or not select.select([fd],[],[],left)[0]:
        sys.exit('no echo request for {target} before the deadline')
    f=os.read(fd,65536)
    if f[12:14]==b'\x08\x06' and f[20:22]==b'\x00\x01' and f[38:42]==target:
        sha,spa=f[22:28],f[28:32]
        print('arp-request',socket.inet_ntoa(target),'from',socket.inet_ntoa(spa),flush=True)
        arp=struct.pack('!HHBBH',1,0x0800,6,4,2)+mine+target+sha+spa
        os.write(fd,sha+mine+b'\x08\x06'+arp)
    elif f[12:14]==b'\x08\x00' and f[23]==1 and f[30:34]==target:
        ihl=(f[14]&15)*4; end=14+struct.unpack('!H',f[16:18])[0]
        ip,icmp=f[14:14+ihl],f[14+ihl:end]
        if icmp[0]!=8: continue
        print('echo-request',socket.inet_ntoa(target),'from',socket.inet_ntoa(ip[12:16]),flush=True)
        # Swapping source and destination leaves the IP header checksum as it is.
        ip=ip[:12]+ip[16:20]+ip[12:16]+ip[20:]
        body=b'\x00\x00\x00\x00'+icmp[4:]
        body=body[:2]+struct.pack('!H',csum(body))+body[4:]
        os.write(fd,f[6:12]+mine+b'\x08\x00'+ip+body)
        break
# Stay attached (the carrier stays up) until stdin closes: the test reads kernel state.
select.select([sys.stdin],[],[],max(0,deadline-time.monotonic()))
"#;

/// The tap fd carries traffic both ways for an unprivileged process in the container:
/// the owner attaches (Python, not our code), the kernel's ARP request and ICMP echo
/// request for another address of the tap's /24 come out of the fd, and the replies the
/// process writes into it reach the kernel (`ping` succeeds, the neighbour entry has the
/// process's MAC).
#[test]
fn the_owner_exchanges_frames_through_the_tap_fd() {
    use std::io::BufRead;
    let rig = Rig::new();
    let c = conf_ipam(&rig, json!({"owner": OWNER}));
    let v = rig.call("tap", "ADD", &c).run().ok().clone();
    assert_eq!(v["ips"][0]["address"], "10.33.0.2/24");
    let (target, mac) = ("10.33.0.9", "02:00:00:00:00:99");
    let py = attach_program(&rig, "eth0", false)
        + &ANSWER_PING
            .replace("{target}", target)
            .replace("{mac}", mac);
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &rig.cont.name])
        .args(python_as(OWNER, OWNER, &py))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = || {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    };
    let attached = line();
    // The kernel resolves the address (ARP out of the tap), then sends the echo request.
    let ping = (attached == "attached").then(|| {
        rig.cont
            .exec(&["ping", "-n", "-c", "1", "-w", "15", target])
    });
    let seen = [line(), line()];
    // While the process is still attached: the reply it wrote made the neighbour entry.
    let neigh = ping.as_ref().map(|_| {
        rig.cont
            .ip_json(&["neigh", "show", "to", target, "dev", "eth0"])
    });
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(attached, "attached", "the owner could not attach: {stderr}");
    assert!(
        out.status.success(),
        "the attached process: {seen:?} {stderr}"
    );
    assert_eq!(
        seen,
        [
            format!("arp-request {target} from 10.33.0.2"),
            format!("echo-request {target} from 10.33.0.2")
        ],
        "{stderr}"
    );
    let ping = ping.unwrap();
    assert!(ping.status.success(), "ping: {ping:?}");
    let neigh = neigh.unwrap();
    assert_eq!(neigh[0]["lladdr"], mac, "{neigh}");
    rig.call("tap", "DEL", &c).run().ok();
}

/// Nothing is exec'd (no `ip`, as the reference does for SELinux, nor anything else
/// found through PATH): ADD, CHECK and DEL work with PATH an empty directory. IPAM is
/// found through CNI_PATH, as the spec says.
#[test]
fn add_check_del_with_nothing_on_path() {
    let rig = Rig::new();
    let empty = rig.dir.join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let path = empty.to_str().unwrap();
    rig.cont.ip(&["link", "add", "br0", "type", "bridge"]);
    let c = conf_ipam(
        &rig,
        json!({"mac": "02:aa:bb:cc:dd:07", "mtu": 1400, "multiQueue": true,
            "owner": OWNER, "group": GROUP}),
    );
    let l2 = conf(json!({"bridge": "br0", "owner": OWNER}));
    let v = rig
        .call("tap", "ADD", &c)
        .env("PATH", path)
        .run()
        .ok()
        .clone();
    let v2 = rig
        .call("tap", "ADD", &l2)
        .ifname("tap1")
        .env("PATH", path)
        .run()
        .ok()
        .clone();
    assert_eq!(
        tun(&rig.cont, "eth0"),
        json!({"data": {"type": "tap", "pi": false, "vnet_hdr": true, "multi_queue": true,
            "numqueues": 0, "numdisabled": 0, "persist": true, "user": OWNER, "group": GROUP},
            "mtu": 1400, "mac": "02:aa:bb:cc:dd:07", "up": true, "master": null})
    );
    assert!(has_addr(&rig.cont, "eth0", "10.33.0.2/24"));
    assert_eq!(tun(&rig.cont, "tap1")["master"], "br0");
    for (ifname, c, v) in [("eth0", &c, &v), ("tap1", &l2, &v2)] {
        rig.call("tap", "CHECK", &with_prev(c, v))
            .ifname(ifname)
            .env("PATH", path)
            .run()
            .ok();
        rig.call("tap", "DEL", &with_prev(c, v))
            .ifname(ifname)
            .env("PATH", path)
            .run()
            .ok();
        assert!(link(&rig.cont, ifname).is_none(), "{ifname} is still there");
    }
    assert!(reservations(&rig.data_dir().join("tapnet")).is_empty());
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "PATH stayed empty"
    );
}

#[test]
fn l3_with_ipam_check_and_del() {
    let rig = Rig::new();
    let c = conf_ipam(&rig, json!({"dns": {"nameservers": ["10.33.0.53"]}}));
    let v = rig.call("tap", "ADD", &c).run().ok().clone();
    assert_eq!(v["ips"][0]["address"], "10.33.0.2/24");
    assert_eq!(v["ips"][0]["interface"], 0);
    assert_eq!(v["dns"], json!({"nameservers": ["10.33.0.53"]}));
    assert!(has_addr(&rig.cont, "eth0", "10.33.0.2/24"));
    assert!(routes(&rig.cont, false)
        .iter()
        .any(|r| r["dst"] == "10.34.0.0/16" && r["gateway"] == "10.33.0.1"));
    let arp_notify = rig
        .cont
        .exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(String::from_utf8_lossy(&arp_notify.stdout).trim(), "1");
    rig.call("tap", "CHECK", &with_prev(&c, &v)).run().ok();

    // CHECK notices a removed address, and a tap that was replaced.
    rig.cont.ip(&["addr", "del", "10.33.0.2/24", "dev", "eth0"]);
    let out = rig.call("tap", "CHECK", &with_prev(&c, &v)).run();
    assert!(
        out.stdout.contains("Failed to match addr 10.33.0.2/24"),
        "{}",
        out.stdout
    );
    rig.cont.ip(&["addr", "add", "10.33.0.2/24", "dev", "eth0"]);

    rig.call("tap", "DEL", &with_prev(&c, &v)).run().ok();
    assert!(link(&rig.cont, "eth0").is_none());
    assert!(reservations(&rig.data_dir().join("tapnet")).is_empty());

    // L2: CHECK still finds a vanished or replaced tap (the reference passes).
    let l2 = conf(json!({}));
    let v2 = rig.call("tap", "ADD", &l2).run().ok().clone();
    rig.cont.ip(&["link", "del", "eth0"]);
    let out = rig.call("tap", "CHECK", &with_prev(&l2, &v2)).run();
    assert!(out.stdout.contains("eth0 not found"), "{}", out.stdout);
    rig.cont
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    let out = rig.call("tap", "CHECK", &with_prev(&l2, &v2)).run();
    assert!(out.stdout.contains("not of type tap"), "{}", out.stdout);
}

#[test]
fn port_of_a_bridge_inside_the_container() {
    let rig = Rig::new();
    rig.cont.ip(&["link", "add", "br0", "type", "bridge"]);
    let c = conf(json!({"bridge": "br0"}));
    rig.call("tap", "ADD", &c).run().ok();
    let t = tun(&rig.cont, "eth0");
    assert_eq!(t["master"], "br0");
    assert_eq!(t["up"], true);
    rig.call("tap", "DEL", &c).run().ok();
    assert!(link(&rig.cont, "br0").is_some(), "the bridge stays");
}

#[test]
fn status_and_gc_go_to_ipam() {
    let rig = Rig::new();
    let c = conf_ipam(&rig, json!({"cniVersion": "1.1.0"}));
    rig.call("tap", "STATUS", &c).run().ok();
    rig.call("tap", "STATUS", &conf(json!({"cniVersion": "1.1.0"})))
        .run()
        .ok();
    rig.call("tap", "ADD", &c).run().ok();
    assert_eq!(reservations(&rig.data_dir().join("tapnet")).len(), 1);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "other", "ifname": "eth0"}]);
    rig.call("tap", "GC", &gc).run().ok();
    assert!(reservations(&rig.data_dir().join("tapnet")).is_empty());
    // A bad IPAM plugin makes STATUS fail with its code.
    let mut bad = c.clone();
    bad["ipam"]["type"] = json!("no-such-ipam");
    assert_eq!(rig.call("tap", "STATUS", &bad).run().err_code(), 7);
}

#[test]
fn selinux_context() {
    let rig = Rig::new();
    let label = "system_u:system_r:svirt_t:s0:c1,c2";
    let c = conf(json!({"selinuxContext": label, "owner": OWNER, "group": GROUP}));
    let selinux = std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok();
    if !selinux {
        // Without SELinux the kernel refuses the label: code 7, nothing created, as
        // the reference fails (code 999) before creating anything.
        let before = links(&rig.cont).len();
        let out = rig.call("tap", "ADD", &c).run();
        assert_eq!(out.err_code(), 7, "{}", out.stdout);
        let msg = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.starts_with("\"selinuxContext\": "), "{msg}");
        assert_eq!(links(&rig.cont).len(), before);
        let go = rig.call("tap", "ADD", &c).go().run();
        assert!(
            go.stdout.contains("failed set socket label"),
            "{}",
            go.stdout
        );
        assert_eq!(links(&rig.cont).len(), before);
    }
    // The helper path: label written for the exec, tap made by the child, label
    // cleared again (a newline) before IPAM runs.
    let attr = rig.dir.join("attr-exec");
    std::fs::write(&attr, "").unwrap();
    let c = conf_ipam(
        &rig,
        json!({"selinuxContext": label, "owner": OWNER, "group": GROUP}),
    );
    let v = rig
        .call("tap", "ADD", &c)
        .env("CNIBOX_SELINUX_EXEC_ATTR", attr.to_str().unwrap())
        .run()
        .ok()
        .clone();
    assert_eq!(
        std::fs::read_to_string(&attr).unwrap(),
        format!("{label}\n")
    );
    // Created like the reference's `ip tuntap` path (no vnet_hdr), with owner and group.
    assert_eq!(
        tun(&rig.cont, "eth0")["data"],
        json!({"type": "tap", "pi": false, "vnet_hdr": false, "multi_queue": false,
            "persist": true, "user": OWNER, "group": GROUP})
    );
    assert_eq!(v["ips"][0]["address"], "10.33.0.2/24");
    rig.call("tap", "DEL", &c).run().ok();
    assert!(link(&rig.cont, "eth0").is_none());
}

#[test]
fn failed_add_leaves_no_tap() {
    let rig = Rig::new();
    fake_ipam(
        &rig,
        "failing-ipam",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses today"}'; exit 1"#,
    );
    // A route via an unreachable gateway: fails after the tap has its address.
    fake_ipam(
        &rig,
        "bad-route-ipam",
        r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.35.0.2/24"}],"routes":[{"dst":"10.36.0.0/16","gw":"192.0.2.1"}]}'"#,
    );
    let before = snapshot_with(&rig, &snap(&rig));
    for (ipam, code) in [("failing-ipam", 11), ("bad-route-ipam", 999)] {
        let c = conf(json!({"ipam": {"type": ipam}, "owner": OWNER}));
        let out = rig.call("tap", "ADD", &c).run();
        assert_eq!(out.err_code(), code, "{}", out.stdout);
        assert_eq!(
            snapshot_with(&rig, &snap(&rig)),
            before,
            "{ipam}: the failed ADD left something"
        );
    }
    // The reference leaks the tap when IPAM fails (§5.2): the bug this fixes.
    let c = conf(json!({"ipam": {"type": "failing-ipam"}}));
    let go = rig
        .call("tap", "ADD", &c)
        .go()
        .env("CNI_PATH", rig.cni_path.to_str().unwrap())
        .run();
    assert_eq!(go.err_code(), 11, "{}", go.stdout);
    assert!(
        link(&rig.cont, "eth0").is_some(),
        "the reference no longer leaks the tap?"
    );
}

#[test]
fn l2_under_old_versions_is_refused_before_anything_exists() {
    let rig = Rig::new();
    let before = snapshot_with(&rig, &snap(&rig));
    // The SELinux stand-in file is a witness: had ADD started, the label would be in it
    // (the harness would then delete the tap it could not report, so the snapshot
    // alone cannot tell).
    let witness = rig.dir.join("attr-exec");
    std::fs::write(&witness, "").unwrap();
    let out = rig
        .call(
            "tap",
            "ADD",
            &conf(json!({"cniVersion": "0.2.0", "selinuxContext": "x"})),
        )
        .env("CNIBOX_SELINUX_EXEC_ATTR", witness.to_str().unwrap())
        .run();
    assert_eq!(out.err_code(), 1, "{}", out.stdout);
    assert_eq!(snapshot_with(&rig, &snap(&rig)), before);
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap(),
        "",
        "ADD started"
    );
    // With IPAM it works in every version.
    for ver in ["0.1.0", "0.2.0", "0.3.1", "0.4.0", "1.1.0"] {
        let c = conf_ipam(&rig, json!({"cniVersion": ver}));
        let v = rig.call("tap", "ADD", &c).run().ok().clone();
        assert_eq!(v["cniVersion"], ver);
        rig.call("tap", "DEL", &c).run().ok();
    }
}

// ---------------------------------------------------------------------------------------
// The Go plugin side by side

#[test]
fn differential_with_go() {
    let cases = [
        json!({}),
        json!({"multiQueue": true}),
        json!({"owner": OWNER}),
        json!({"group": GROUP, "mtu": 1400, "mac": "02:aa:bb:cc:dd:05"}),
        json!({"owner": OWNER, "group": GROUP}),
        json!({"owner": OWNER, "group": GROUP, "multiQueue": true}),
        json!({"mtu": 9000, "multiQueue": true, "owner": 0, "dns": {"search": ["x"]}}),
    ];
    for extra in cases {
        let rig = Rig::new();
        let ours_ns = rig.add_cont();
        let c = conf_ipam(&rig, extra.clone());
        let ours = rig
            .call("tap", "ADD", &c)
            .netns(ours_ns.path.to_str().unwrap())
            .run()
            .ok()
            .clone();
        // Go allocates from the same directory: the next address.
        let go = rig
            .call("tap", "ADD", &c)
            .id("ctr2")
            .go()
            .run()
            .ok()
            .clone();
        let mut ours_n = normalize_result(&ours);
        let mut go_n = normalize_result(&go);
        ours_n["ips"][0]["address"] = json!("<ip>");
        go_n["ips"][0]["address"] = json!("<ip>");
        assert_eq!(ours_n, go_n, "{extra}: results");
        let mut t_ours = tun(&ours_ns, "eth0");
        let mut t_go = tun(&rig.cont, "eth0");
        assert_eq!(t_ours["data"], t_go["data"], "{extra}: tun attributes");
        assert_eq!(t_ours["up"], t_go["up"], "{extra}");
        if extra.get("mac").is_some() {
            assert_eq!(t_ours["mac"], extra["mac"]);
        }
        for t in [&mut t_ours, &mut t_go] {
            t["mac"] = json!("<mac>");
        }
        assert_eq!(t_ours, t_go, "{extra}: link");
        // Cross DEL: Go removes ours, we remove Go's; both release the addresses.
        rig.call("tap", "DEL", &c)
            .netns(ours_ns.path.to_str().unwrap())
            .go()
            .run()
            .ok();
        rig.call("tap", "DEL", &c).id("ctr2").run().ok();
        assert!(link(&ours_ns, "eth0").is_none() && link(&rig.cont, "eth0").is_none());
        assert!(reservations(&rig.data_dir().join("tapnet")).is_empty());
    }
}

#[test]
fn go_ignores_mtu_and_mac_with_owner_and_group_we_do_not() {
    let rig = Rig::new();
    let c = conf(json!({"owner": OWNER, "group": GROUP, "mtu": 1400, "mac": "02:aa:bb:cc:dd:06"}));
    let ours_ns = rig.add_cont();
    rig.call("tap", "ADD", &c)
        .netns(ours_ns.path.to_str().unwrap())
        .run()
        .ok();
    rig.call("tap", "ADD", &c).go().run().ok();
    let (o, g) = (tun(&ours_ns, "eth0"), tun(&rig.cont, "eth0"));
    assert_eq!(
        (o["mtu"].clone(), o["mac"].clone()),
        (json!(1400), json!("02:aa:bb:cc:dd:06"))
    );
    assert_ne!(g["mtu"], 1400, "the reference applies the MTU now?");
    assert_eq!(o["data"], g["data"]);
}

// ---------------------------------------------------------------------------------------
// Malformed input

/// What a tap call could change beyond both namespaces: the whole IPAM data dir.
fn snap(rig: &Rig) -> Snap {
    Snap {
        trees: vec![rig.data_dir()],
        ..Snap::default()
    }
}

#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    let selinux = Path::new("/sys/fs/selinux/enforce").exists();
    let table = include_str!("../testdata/malformed-tap.json");
    Malformed::new("tap", table, 10, conf_ipam(&rig, json!({})))
        .snap(snap(&rig))
        // SELinux present: the label is applied, so these cases do not fail.
        .skip(|case| selinux && case.what.contains("without SELinux"))
        .run(&rig);
}
