//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, seeds plus what the
//! fuzzer kept) and every input that once crashed a target (`fuzz/regressions/<target>/`)
//! through the same target functions `cargo fuzz` runs, on stable Rust: a fixed bug that
//! comes back fails CI. `make fuzz` runs the fuzzer itself (nightly).

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in rd.flatten() {
            // (A fuzzer running meanwhile may replace corpus files: one gone is skipped.)
            let data = match std::fs::read(e.path()) {
                Ok(d) => d,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("{}: {err}", e.path().display()),
            };
            run(&data);
            n += 1;
        }
    }
    assert!(
        n > 0,
        "no corpus for fuzz target {target}: fuzz/corpus/{target} is empty"
    );
    eprintln!("fuzz target {target}: {n} inputs replayed");
}

#[test]
fn harness_corpus() {
    replay("harness", targets::harness);
}

#[test]
fn cni_args_corpus() {
    replay("cni_args", targets::cni_args);
}

#[test]
fn results_corpus() {
    replay("results", targets::results);
}

#[test]
fn netlink_corpus() {
    replay("netlink", targets::netlink);
}

#[test]
fn store_corpus() {
    replay("store", targets::store);
}

#[test]
fn gob_corpus() {
    replay("gob", targets::gob);
}
