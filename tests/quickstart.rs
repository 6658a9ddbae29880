//! The README's quickstart, run exactly as printed: the shell block between
//! `<!-- quickstart -->` and `<!-- /quickstart -->` runs with `sh -e` from the
//! repository root, inside a rig's host netns (so its bridge and veths are the test's
//! own) with `TMPDIR` in the rig's temp dir (so its scratch prefix is too) and an empty
//! private `/var/lib`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The shell code of the quickstart block in `md`, if it has one.
fn quickstart_block(md: &str) -> Option<String> {
    let start = md.find("<!-- quickstart -->")?;
    let end = md[start..].find("<!-- /quickstart -->")? + start;
    let block = &md[start..end];
    let body = block.split_once("```sh\n")?.1;
    Some(body.split_once("```")?.0.to_string())
}

/// Run `script` as a user would, and check what it promises: the address on eth0, a
/// reply from the gateway, and nothing left behind.
fn run_as_printed(script: &str) {
    let rig = Rig::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A guard: /var/lib is a private empty dir for the run, so even a cnitool that
    // ignored CNIBOX_CACHE_DIR could not touch the machine's /var/lib/cni.
    let guard = rig.dir.join("varlib");
    std::fs::create_dir_all(&guard).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &rig.host.name, "sh", "-c"])
        .arg(r#"mount --bind "$1" /var/lib && exec sh -e -c "$2""#)
        .arg("sh")
        .arg(&guard)
        .arg(script)
        .current_dir(root)
        .env("TMPDIR", &rig.dir)
        .env_remove("NETCONFPATH")
        .env_remove("CNI_PATH")
        .env_remove("CNIBOX_CACHE_DIR")
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quickstart failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("inet 10.222.0.2/24"),
        "eth0 has its address:\n{stdout}"
    );
    assert!(
        stdout.contains("1 packets transmitted, 1 received"),
        "the gateway answers:\n{stdout}"
    );
    // The scratch prefix is gone, and so are the bridge and every veth.
    let left: Vec<String> = tree(&rig.dir)
        .into_iter()
        .filter(|p| p.starts_with(&format!("{}/tmp.", rig.dir.display())))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(
        tree(&guard),
        Vec::<String>::new(),
        "the cache went to CNIBOX_CACHE_DIR"
    );
    let names: Vec<String> = links(&rig.host)
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["lo"], "host links after the quickstart");
}

#[test]
fn readme_quickstart_runs_as_printed() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let Some(script) = quickstart_block(&readme) else {
        panic!(
            "README.md has no quickstart block between `<!-- quickstart -->` and \
             `<!-- /quickstart -->`"
        );
    };
    assert!(script.contains("./install.sh") && script.contains("cnitool\" exec mynet"));
    run_as_printed(&script);
}
