//! The multicall front-end and install.sh: dispatch by name, --list, --version,
//! --install (idempotent, refuses to clobber files unless --force), unknown names.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cnibox"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cbx-fe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn list_version_help() {
    let (code, out, _) = run(&exe(), &["--list"], &[]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out.lines().collect();
    for n in ["bridge", "host-local", "loopback", "ptp", "static"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let (code, out, _) = run(&exe(), &["--version"], &[]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("cnibox {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let (code, out, _) = run(&exe(), &["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("--install"));
    let (code, out, _) = run(&exe(), &[], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("host-local"), "{out}");
}

#[test]
fn dispatch_by_name_and_by_argument() {
    let d = tmp("dispatch");
    symlink(exe(), d.join("loopback")).unwrap();
    symlink(exe(), d.join("nosuchplugin")).unwrap();
    let env = [("CNI_COMMAND", "VERSION")];
    let (code, out, _) = run(&d.join("loopback"), &[], &env);
    assert_eq!(code, 0);
    assert!(out.contains("supportedVersions"));
    let (code, out, _) = run(&exe(), &["loopback"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("supportedVersions"));
    let (code, _, err) = run(&d.join("nosuchplugin"), &[], &env);
    assert_eq!(code, 1);
    assert!(err.contains("applet not found: nosuchplugin"), "{err}");
    let (code, _, err) = run(&exe(), &["nosuchplugin"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("applet not found"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn install_links_idempotently_and_refuses_files() {
    let d = tmp("install");
    let bin = d.join("bin");
    let (code, out, err) = run(&exe(), &["--install", bin.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bridge"));
    let target = std::fs::canonicalize(exe()).unwrap();
    for n in ["bridge", "host-local", "loopback", "ptp", "static"] {
        assert_eq!(std::fs::canonicalize(bin.join(n)).unwrap(), target, "{n}");
    }
    // again: nothing to do
    let (code, out, _) = run(&exe(), &["--install", bin.to_str().unwrap()], &[]);
    assert_eq!((code, out.as_str()), (0, ""));
    // a real file is not replaced without --force
    std::fs::remove_file(bin.join("ptp")).unwrap();
    std::fs::write(bin.join("ptp"), "go plugin").unwrap();
    let (code, _, err) = run(&exe(), &["--install", bin.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("ptp"), "{err}");
    assert_eq!(
        std::fs::read_to_string(bin.join("ptp")).unwrap(),
        "go plugin"
    );
    let (code, _, err) = run(
        &exe(),
        &["--install", bin.to_str().unwrap(), "--force"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::canonicalize(bin.join("ptp")).unwrap(), target);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn install_script_installs_and_uninstalls() {
    let d = tmp("script");
    let prefix = d.join("usr");
    let cni = d.join("cni");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh");
    let exe = exe();
    let args = [
        "--binary",
        exe.to_str().unwrap(),
        "--prefix",
        prefix.to_str().unwrap(),
        "--cni-bin-dir",
        cni.to_str().unwrap(),
    ];
    for _ in 0..2 {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let installed = prefix.join("bin/cnibox");
    assert_eq!(std::fs::read_link(cni.join("bridge")).unwrap(), installed);
    let (code, out, _) = run(&cni.join("loopback"), &[], &[("CNI_COMMAND", "VERSION")]);
    assert_eq!(code, 0);
    assert!(out.contains("supportedVersions"));
    std::fs::write(cni.join("someone-elses-plugin"), "someone else's").unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .arg("--uninstall")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!installed.exists());
    assert!(!cni.join("bridge").exists());
    assert!(
        cni.join("someone-elses-plugin").exists(),
        "files we did not install stay"
    );
    let _ = std::fs::remove_dir_all(&d);
}
