//! The cnibox binary: one table of applets, picked by the name we were run as.
//!
//! Runtimes exec plugins by name from `CNI_PATH`; every name there is a symlink to this
//! binary, so `basename(argv[0])` selects the applet. `cnibox <applet>` works too, and
//! `cnibox` on its own offers `--list`, `--install DIR`, `--help`, `--man` and `--version`;
//! `cnibox APPLET --help` (or a link run with a sole `--help`) shows the applet's keys.
//! Plugin applets never see clap: every CNI failure must stay a JSON error object.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use cnibox::cni::skel::{self, Applet, Kind};

mod bandwidth;
mod bridge;
mod cnitool;
mod dhcp;
mod dummy;
mod firewall;
mod flannel;
#[path = "host-device.rs"]
mod host_device;
#[path = "host-local.rs"]
mod host_local;
mod ipvlan;
mod loopback;
mod macvlan;
mod multinet;
mod portmap;
mod ptp;
mod sbr;
#[path = "static.rs"]
mod static_ipam;
mod tap;
mod tuning;
mod vlan;
mod vrf;

/// The applet table (busybox's model): dispatch, `--list` and `--install` all read it.
/// Applets not built yet are simply absent.
static APPLETS: &[Applet] = &[
    bandwidth::APPLET,
    bridge::APPLET,
    cnitool::APPLET,
    dhcp::APPLET,
    dummy::APPLET,
    firewall::APPLET,
    flannel::APPLET,
    host_device::APPLET,
    host_local::APPLET,
    ipvlan::APPLET,
    loopback::APPLET,
    macvlan::APPLET,
    multinet::APPLET,
    portmap::APPLET,
    ptp::APPLET,
    sbr::APPLET,
    static_ipam::APPLET,
    tap::APPLET,
    tuning::APPLET,
    vlan::APPLET,
    vrf::APPLET,
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
    // `dhcp daemon [flags]` (argv[0] dhcp, or `cnibox dhcp daemon`): the lease keeper.
    if applet.name == "dhcp" && args.first().map(String::as_str) == Some("daemon") {
        return dhcp::daemon_main(args.get(1..).unwrap_or(&[]));
    }
    match &applet.kind {
        // A plugin takes no arguments from a runtime, so a sole `--help` can only be a
        // person asking; anything else still runs the plugin as CNI demands.
        Kind::Plugin(_) if matches!(args, [only] if only == "--help") => {
            print!("{}", cnibox::help::applet_text(applet));
            0
        }
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
        .after_help(cnibox::help::frontend_text(APPLETS))
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
                .help("list the applets, one name per line (for scripts)"),
        )
        .arg(
            Arg::new("long")
                .long("long")
                .short('l')
                .action(ArgAction::SetTrue)
                .help("with --list: each with its one-line description"),
        )
        .arg(
            Arg::new("man")
                .long("man")
                .action(ArgAction::SetTrue)
                .help("print the man page cnibox(1) (roff)"),
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
                .help("with --install: replace existing files and foreign symlinks"),
        )
        .arg(
            Arg::new("backup")
                .long("backup")
                .action(ArgAction::SetTrue)
                .help(
                    "with --install: replace them, keeping each as NAME.cnibox-orig \
                     (install.sh --uninstall puts them back)",
                ),
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
            if m.get_flag("long") {
                println!("{:<12} {}", a.name, a.about);
            } else {
                println!("{}", a.name);
            }
        }
        return 0;
    }
    if m.get_flag("man") {
        print!(
            "{}",
            cnibox::help::man_page(APPLETS, env!("CARGO_PKG_VERSION"))
        );
        return 0;
    }
    if let Some(dir) = m.get_one::<String>("install") {
        let mode = if m.get_flag("backup") {
            Replace::Backup
        } else if m.get_flag("force") {
            Replace::Force
        } else {
            Replace::Never
        };
        return match install(std::path::Path::new(dir), mode) {
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

/// What `--install` does with a name that is taken by something not ours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Never,
    Force,
    Backup,
}

/// Busybox-style `--install`: one symlink per applet, idempotent, atomic (a runtime
/// may exec a plugin while we replace its link). A name already taken by a file or by a
/// symlink that leads elsewhere (a distro's plugin, say) is left alone unless forced,
/// and `--backup` keeps the original beside it. A dangling symlink runs nothing and is
/// replaced.
fn install(dir: &std::path::Path, mode: Replace) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe =
        std::fs::read_link("/proc/self/exe").context("cannot find this binary (/proc/self/exe)")?;
    let me = std::fs::canonicalize(&exe).unwrap_or_else(|_| exe.clone());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut refused = Vec::new();
    for a in APPLETS {
        let link = dir.join(a.name);
        let taken = match std::fs::symlink_metadata(&link) {
            Err(_) => false,
            Ok(md) => match std::fs::canonicalize(&link) {
                // Already ours (maybe through another path to the same file).
                Ok(target) if target == me && md.file_type().is_symlink() => continue,
                Ok(_) => true,
                Err(_) if md.file_type().is_symlink() => false, // dangling
                Err(_) => true,
            },
        };
        if taken {
            match mode {
                Replace::Never => {
                    refused.push(a.name);
                    continue;
                }
                Replace::Force => {}
                Replace::Backup => {
                    let orig = dir.join(format!("{}.cnibox-orig", a.name));
                    if std::fs::symlink_metadata(&orig).is_ok() {
                        anyhow::bail!(
                            "{} exists already: not overwriting an earlier backup",
                            orig.display()
                        );
                    }
                    std::fs::rename(&link, &orig)
                        .with_context(|| format!("cannot back up {}", link.display()))?;
                    println!("{} saved as {}", link.display(), orig.display());
                }
            }
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
            "not replacing existing files or foreign symlinks (use --force, or --backup to keep them): {}",
            refused.join(", ")
        );
    }
    Ok(())
}
