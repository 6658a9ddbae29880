//! `make deb` (packaging/deb/build.sh), checked without installing anything: the
//! control fields (Conflicts/Replaces/Provides containernetworking-plugins), the
//! contents (binary, a /usr/lib/cni link per applet that resolves to it, the man page),
//! and the maintainer scripts, which are then run against a temp root to show that the
//! /opt/cni/bin links keep foreign plugins and go away again on removal. The real
//! install/replace/purge cycle is `make deb-check` (it changes the machine).

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package, built once per test run (uncompressed: the debug binary is large).
fn built() -> &'static Path {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        // Under target/ (earlier runs' packages removed), not left in /tmp.
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("deb-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = tmp.join(format!("deb-{}", std::process::id()));
        build(&d)
    })
}

fn build(out: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb/build.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_cnibox"))
        .arg(out)
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

fn applets() -> Vec<String> {
    sh(env!("CARGO_BIN_EXE_cnibox"), &["--list"])
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_package_replaces_debians_plugins_and_ships_every_applet() {
    let d = std::env::temp_dir().join(format!("cbx-debx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let deb = built();
    let deb_s = deb.to_str().unwrap();
    assert!(deb_s.ends_with(&format!("cnibox_{}_amd64.deb", env!("CARGO_PKG_VERSION"))));

    let field = |f: &str| sh("dpkg-deb", &["--field", deb_s, f]).trim().to_string();
    assert_eq!(field("Package"), "cnibox");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Conflicts"), "containernetworking-plugins");
    assert_eq!(field("Replaces"), "containernetworking-plugins");
    assert_eq!(
        field("Provides"),
        "containernetworking-plugins (= 1.9.1), container-network-stack (= 1)"
    );
    assert!(
        field("Depends").starts_with("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    let info = sh("dpkg-deb", &["--info", deb_s]);
    for s in ["postinst", "postrm"] {
        assert!(info.contains(s), "{info}");
    }

    let contents = sh("dpkg-deb", &["--contents", deb_s]);
    assert!(contents.contains("-rwxr-xr-x root/root"), "{contents}");
    assert!(contents.contains(" ./usr/bin/cnibox\n"), "{contents}");
    assert!(contents.contains(" ./usr/share/man/man1/cnibox.1.gz\n"));
    for a in applets() {
        let line = format!(" ./usr/lib/cni/{a} -> ../../bin/cnibox\n");
        assert!(contents.contains(&line), "{line:?} missing:\n{contents}");
    }
    assert!(
        !contents.contains("./opt/"),
        "/opt/cni/bin is postinst's job"
    );

    // Unpacked: the links resolve to the binary, which runs as each plugin, and the man
    // page is the binary's own.
    let root = d.join("root");
    sh("dpkg-deb", &["-x", deb_s, root.to_str().unwrap()]);
    let bridge = root.join("usr/lib/cni/bridge");
    assert_eq!(
        std::fs::canonicalize(&bridge).unwrap(),
        std::fs::canonicalize(root.join("usr/bin/cnibox")).unwrap()
    );
    let v = Command::new(&bridge)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("supportedVersions"));
    let man = sh(
        "zcat",
        &[root
            .join("usr/share/man/man1/cnibox.1.gz")
            .to_str()
            .unwrap()],
    );
    assert_eq!(man, sh(env!("CARGO_BIN_EXE_cnibox"), &["--man"]));
    let _ = std::fs::remove_dir_all(&d);
}

/// postinst and postrm, run with / replaced by a temp root (their paths rewritten),
/// around a foreign plugin already in /opt/cni/bin.
#[test]
fn maintainer_scripts_link_free_names_and_clean_up_only_their_links() {
    let d = std::env::temp_dir().join(format!("cbx-debscripts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let deb = built();
    let ctl = d.join("control");
    sh(
        "dpkg-deb",
        &["-e", deb.to_str().unwrap(), ctl.to_str().unwrap()],
    );
    let root = d.join("root");
    let opt = root.join("opt/cni/bin");
    std::fs::create_dir_all(&opt).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    // A copy, so that the links --install makes (to /proc/self/exe) name the temp root's
    // binary, as they name /usr/bin/cnibox on a real machine.
    std::fs::copy(env!("CARGO_BIN_EXE_cnibox"), root.join("usr/bin/cnibox")).unwrap();
    std::fs::write(opt.join("bridge"), "someone's bridge").unwrap();
    let r = root.to_str().unwrap();
    let run = |script: &str, arg: &str| {
        let text = std::fs::read_to_string(ctl.join(script))
            .unwrap()
            .replace("/usr/bin/cnibox", &format!("{r}/usr/bin/cnibox"))
            .replace("/opt/cni", &format!("{r}/opt/cni"));
        let o = Command::new("sh")
            .args(["-c", &text, script, arg])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script} {arg}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run("postinst", "configure");
    assert!(err.contains("left alone"), "{err}");
    assert_eq!(
        std::fs::read_to_string(opt.join("bridge")).unwrap(),
        "someone's bridge"
    );
    for a in applets().iter().filter(|a| *a != "bridge") {
        assert_eq!(
            std::fs::read_link(opt.join(a)).unwrap(),
            root.join("usr/bin/cnibox")
        );
    }
    run("postinst", "configure"); // idempotent
    run("postrm", "purge");
    let left: Vec<_> = std::fs::read_dir(&opt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["bridge"], "only the foreign plugin stays");
    std::fs::remove_file(opt.join("bridge")).unwrap();
    run("postrm", "remove");
    assert!(!root.join("opt/cni").exists(), "empty dirs go too");
    let _ = std::fs::remove_dir_all(&d);
}
