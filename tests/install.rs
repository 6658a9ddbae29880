//! `--install` next to plugins that are not ours: a foreign symlink (a distro's plugin)
//! is kept unless forced, `--backup` keeps the original as NAME.cnibox-orig and
//! `install.sh --uninstall` puts it back; a dangling link is simply replaced. The same
//! for the binary and the man page install.sh replaces in its prefix.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnibox"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cbx-inst-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cnibox(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn points_to_us(p: &Path) -> bool {
    std::fs::canonicalize(p).ok() == std::fs::canonicalize(exe()).ok()
}

#[test]
fn foreign_symlinks_are_kept_unless_forced() {
    let d = tmp("foreign");
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let distro = d.join("distro-bridge");
    std::fs::write(&distro, "#!/bin/sh\n").unwrap();
    symlink(&distro, bin.join("bridge")).unwrap();
    symlink(d.join("gone"), bin.join("ptp")).unwrap(); // dangling

    let (code, _, err) = cnibox(&["--install", bin.to_str().unwrap()]);
    assert_eq!(code, 1, "a foreign symlink must be refused");
    assert!(err.contains("bridge") && err.contains("--backup"), "{err}");
    assert_eq!(std::fs::read_link(bin.join("bridge")).unwrap(), distro);
    assert!(
        points_to_us(&bin.join("ptp")),
        "the dangling link is replaced"
    );
    assert!(points_to_us(&bin.join("loopback")));

    let (code, _, err) = cnibox(&["--install", bin.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(points_to_us(&bin.join("bridge")));
    assert!(!bin.join("bridge.cnibox-orig").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn backup_keeps_the_originals_and_uninstall_restores_them() {
    let d = tmp("backup");
    let prefix = d.join("usr");
    let cni = d.join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    std::fs::write(cni.join("bridge"), "go bridge").unwrap();
    let distro = d.join("distro-ptp");
    std::fs::write(&distro, "go ptp").unwrap();
    symlink(&distro, cni.join("ptp")).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh");
    let run = |extra: &[&str]| {
        let out = Command::new("bash")
            .arg(&script)
            .args(["--binary", exe().to_str().unwrap()])
            .args(["--prefix", prefix.to_str().unwrap()])
            .args(["--cni-bin-dir", cni.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&[]);
    assert!(!ok, "plain install must refuse the existing plugins: {out}");
    // An older cnibox and man page in the prefix, replaced and restored like the plugins.
    std::fs::write(prefix.join("bin/cnibox"), "#!/bin/sh\necho old cnibox\n").unwrap();
    std::fs::write(prefix.join("share/man/man1/cnibox.1"), ".TH OLD 1\n").unwrap();
    let (ok, out) = run(&["--install", "--backup"]);
    assert!(ok, "{out}");
    let installed = prefix.join("bin/cnibox");
    let man = prefix.join("share/man/man1/cnibox.1");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(exe()).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(prefix.join("bin/cnibox.cnibox-orig")).unwrap(),
        "#!/bin/sh\necho old cnibox\n"
    );
    assert_eq!(std::fs::read_to_string(&man).unwrap(), cnibox(&["--man"]).1);
    assert_eq!(
        std::fs::read_to_string(prefix.join("share/man/man1/cnibox.1.cnibox-orig")).unwrap(),
        ".TH OLD 1\n"
    );
    assert_eq!(std::fs::read_link(cni.join("bridge")).unwrap(), installed);
    assert_eq!(
        std::fs::read_to_string(cni.join("bridge.cnibox-orig")).unwrap(),
        "go bridge"
    );
    assert_eq!(
        std::fs::read_link(cni.join("ptp.cnibox-orig")).unwrap(),
        distro
    );
    // Idempotent: nothing left to back up, the backups are untouched.
    let (ok, out) = run(&["--backup"]);
    assert!(ok, "{out}");
    assert!(!out.contains("saved as"), "{out}");

    let (ok, out) = run(&["--uninstall"]);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        "#!/bin/sh\necho old cnibox\n"
    );
    assert_eq!(std::fs::read_to_string(&man).unwrap(), ".TH OLD 1\n");
    assert!(!prefix.join("bin/cnibox.cnibox-orig").exists());
    assert!(!prefix.join("share/man/man1/cnibox.1.cnibox-orig").exists());
    assert_eq!(
        std::fs::read_to_string(cni.join("bridge")).unwrap(),
        "go bridge"
    );
    assert_eq!(std::fs::read_link(cni.join("ptp")).unwrap(), distro);
    assert!(!cni.join("bridge.cnibox-orig").exists());
    assert!(!cni.join("loopback").exists(), "our own links are removed");
    let _ = std::fs::remove_dir_all(&d);
}
