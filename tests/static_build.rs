//! `make static`: the binary needs no shared library at all, so it runs in an empty
//! root. Proven on the ELF (no interpreter, no NEEDED entries) and by running a bridge
//! attachment with host-local (in-process and exec'd) from a chroot holding nothing
//! but the binary, its links and the kernel's /proc and /sys, inside the rig's
//! namespaces.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Build (or find up to date) the static binary through the Makefile's own target,
/// once per test run (the tests here run in parallel).
fn static_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(make_static).clone()
}

fn make_static() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("make")
        .args(["-s", "static"])
        .current_dir(root)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make static failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("target/static/cnibox")
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn static_binary_has_no_interpreter_and_no_libraries() {
    let bin = static_binary();
    let b = bin.to_str().unwrap();
    let headers = tool("readelf", &["-lW", b]);
    assert!(headers.contains("LOAD"), "readelf works: {headers}");
    assert!(
        !headers.contains("INTERP"),
        "a dynamic loader is requested:\n{headers}"
    );
    let dynamic = tool("readelf", &["-dW", b]);
    assert!(
        !dynamic.contains("(NEEDED)"),
        "shared libraries needed:\n{dynamic}"
    );
    let ldd = tool("ldd", &[b]);
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "{ldd}"
    );
    // The one the dynamic build links for comparison: it does need libc.
    let dyn_needed = tool("readelf", &["-dW", env!("CARGO_BIN_EXE_cnibox")]);
    assert!(dyn_needed.contains("(NEEDED)"), "{dyn_needed}");
}

/// Run `/opt/cni/bin/<plugin>` chrooted into `root`, in the rig's host netns, with the
/// rig's container netns bound at `/run/netns/cont` (the mounts live in the private
/// mount namespace `ip netns exec` makes, and go with it).
fn chrooted(
    rig: &Rig,
    root: &Path,
    argv: &str,
    cmd: &str,
    conf: &serde_json::Value,
    extra: &[(&str, &str)],
) -> CniOut {
    let r = root.to_str().unwrap();
    let script = format!(
        "set -e; mount -t proc proc {r}/proc; mount --rbind /sys {r}/sys; \
         mount --bind {} {r}/run/netns/cont; exec chroot {r} {argv}",
        rig.cont.path.display()
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &rig.host.name, "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "static1")
        .env("CNI_NETNS", "/run/netns/cont")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    CniOut {
        command: cmd.to_string(),
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn static_binary_runs_a_bridge_attachment_from_an_empty_chroot() {
    let bin = static_binary();
    let rig = Rig::new();
    let root = rig.dir.join("root");
    for d in [
        "bin",
        "opt/cni/bin",
        "proc",
        "sys",
        "run/netns",
        "var/lib/cni",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&bin, root.join("bin/cnibox")).unwrap();
    std::fs::write(root.join("run/netns/cont"), "").unwrap();
    // The links, made by the binary itself from inside the chroot.
    let out = chrooted(
        &rig,
        &root,
        "/bin/cnibox --install /opt/cni/bin",
        "",
        &json!({}),
        &[],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        std::fs::read_link(root.join("opt/cni/bin/bridge")).unwrap(),
        Path::new("/bin/cnibox")
    );
    // Nothing in the root but the binary, its links and the mount points.
    let r = root.display().to_string();
    let files: Vec<String> = tree(&root)
        .into_iter()
        .map(|f| f[r.len()..].to_string())
        .filter(|f| !f.starts_with("/opt/cni/bin/"))
        .collect();
    let want = [
        "/bin",
        "/bin/cnibox",
        "/opt",
        "/opt/cni",
        "/opt/cni/bin",
        "/proc",
        "/run",
        "/run/netns",
        "/run/netns/cont",
        "/sys",
        "/var",
        "/var/lib",
        "/var/lib/cni",
    ];
    assert_eq!(files, want);

    let conf = json!({"cniVersion": "1.0.0", "name": "staticnet", "type": "bridge",
        "bridge": "cbxst0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.79.0.0/24"}});
    // host-local in-process, then exec'd (a second process from the same empty root).
    for (n, extra) in [(2, &[][..]), (3, &[("CNIBOX_NO_INPROCESS", "1")][..])] {
        let ip = format!("10.79.0.{n}/24");
        let res = chrooted(&rig, &root, "/opt/cni/bin/bridge", "ADD", &conf, extra);
        let r = res.ok();
        assert_eq!(r["ips"][0]["address"], ip.as_str(), "{r}");
        assert!(has_addr(&rig.cont, "eth0", &ip));
        assert!(link(&rig.host, "cbxst0").is_some());
        let lease = root.join(format!("var/lib/cni/networks/staticnet/10.79.0.{n}"));
        assert!(lease.exists(), "reservation in the chroot's /var/lib/cni");
        chrooted(&rig, &root, "/opt/cni/bin/bridge", "DEL", &conf, extra).ok();
        assert!(link(&rig.cont, "eth0").is_none());
        assert!(!lease.exists());
    }
}
