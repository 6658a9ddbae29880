//! The cnibox binary: one table of applets, picked by the name we were run as.
//!
//! Runtimes exec plugins by name from `CNI_PATH`; every name there is a symlink to this
//! binary, so `basename(argv[0])` selects the applet. `cnibox <applet>` works too, and
//! `cnibox` on its own offers `--list`, `--install DIR`, `--help` and `--version`.
//! Plugin applets never see clap: every CNI failure must stay a JSON error object.

use cnibox::cni::skel::{self, Applet, Kind};

mod bridge;
#[path = "host-local.rs"]
mod host_local;
mod loopback;
mod ptp;
#[path = "static.rs"]
mod static_ipam;
mod tuning;

/// The applet table (busybox's model): dispatch, `--list` and `--install` all read it.
/// Applets not built yet are simply absent.
static APPLETS: &[Applet] = &[
    bridge::APPLET,
    host_local::APPLET,
    loopback::APPLET,
    ptp::APPLET,
    static_ipam::APPLET,
    tuning::APPLET,
];

fn main() {
    // Input never panics (it is validated), but should a bug do so, the runtime still
    // gets a CNI error object on stdout rather than a bare abort (panic = "abort").
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let err = serde_json::json!({"code": 999, "msg": format!("internal error: {info}")});
        let _ = std::io::stdout().write_all(&cnibox::cni::types::to_pretty(&err));
        let _ = std::io::stdout().flush();
        eprintln!("cnibox: {info}");
    }));
    skel::register(APPLETS);
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(dispatch(&argv));
}

fn run_applet(applet: &Applet, args: &[String]) -> i32 {
    match &applet.kind {
        Kind::Plugin(p) => skel::plugin_main(applet.name, p),
        Kind::Tool(main) => main(args),
    }
}

fn dispatch(argv: &[String]) -> i32 {
    let arg0 = argv.first().map(String::as_str).unwrap_or("cnibox");
    let base = arg0
        .rsplit('/')
        .next()
        .unwrap_or(arg0)
        .trim_start_matches('-');
    if let Some(a) = skel::find_applet(base) {
        return run_applet(a, argv.get(1..).unwrap_or(&[]));
    }
    if let Some(a) = argv.get(1).and_then(|n| skel::find_applet(n)) {
        return run_applet(a, argv.get(2..).unwrap_or(&[]));
    }
    frontend(base, argv)
}

fn frontend(base: &str, argv: &[String]) -> i32 {
    use clap::{Arg, ArgAction, Command};
    let about = "The CNI reference plugins as one busybox-style binary.\n\
                 Install symlinks named after the plugins (cnibox --install /opt/cni/bin);\n\
                 each link runs that plugin.";
    let cmd = Command::new("cnibox")
        .about(about)
        .disable_version_flag(true)
        .arg(
            Arg::new("version")
                .long("version")
                .short('V')
                .action(ArgAction::SetTrue)
                .help("print the version"),
        )
        .arg(
            Arg::new("applet")
                .value_name("APPLET")
                .help("run APPLET (same as running a link named APPLET)"),
        )
        .arg(
            Arg::new("list")
                .long("list")
                .action(ArgAction::SetTrue)
                .help("list the applets, one per line"),
        )
        .arg(
            Arg::new("install")
                .long("install")
                .value_name("DIR")
                .help("create a symlink in DIR for every applet"),
        )
        .arg(
            Arg::new("force")
                .long("force")
                .action(ArgAction::SetTrue)
                .help("with --install: replace existing files"),
        );
    let m = match cmd.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    if m.get_flag("version") {
        println!("cnibox {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if m.get_flag("list") {
        for a in APPLETS {
            println!("{}", a.name);
        }
        return 0;
    }
    if let Some(dir) = m.get_one::<String>("install") {
        return match install(std::path::Path::new(dir), m.get_flag("force")) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cnibox: --install: {e:#}");
                1
            }
        };
    }
    if let Some(name) = m.get_one::<String>("applet") {
        eprintln!("cnibox: applet not found: {name} (see cnibox --list)");
        return 1;
    }
    if base != "cnibox" {
        eprintln!("cnibox: applet not found: {base} (see cnibox --list)");
        return 1;
    }
    println!("cnibox {}: {about}\n\nApplets:", env!("CARGO_PKG_VERSION"));
    for a in APPLETS {
        println!("  {:<12} {}", a.name, a.about);
    }
    println!("\nRun `cnibox --help` for options.");
    0
}

/// Busybox-style `--install`: one symlink per applet, idempotent, atomic (a runtime
/// may exec a plugin while we replace its link), never clobbering a real file unless
/// forced.
fn install(dir: &std::path::Path, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe =
        std::fs::read_link("/proc/self/exe").context("cannot find this binary (/proc/self/exe)")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut refused = Vec::new();
    for a in APPLETS {
        let link = dir.join(a.name);
        match std::fs::symlink_metadata(&link) {
            Ok(md)
                if md.file_type().is_symlink()
                    && std::fs::read_link(&link).ok().as_deref() == Some(exe.as_path()) =>
            {
                continue;
            }
            Ok(md) if md.file_type().is_symlink() => {}
            Ok(_) if !force => {
                refused.push(a.name);
                continue;
            }
            _ => {}
        }
        let tmp = dir.join(format!(".{}.cnibox-tmp", a.name));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&exe, &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::rename(&tmp, &link)
            .with_context(|| format!("cannot install {}", link.display()))?;
        println!("{} -> {}", link.display(), exe.display());
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "not replacing existing files (use --force): {}",
            refused.join(", ")
        );
    }
    Ok(())
}
