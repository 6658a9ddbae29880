//! tap: a persistent TAP device named `CNI_IFNAME` inside the container, for a VM
//! monitor or a user-space switch to attach to later (as `owner`/`group`).
//!
//! ADD: the tap is created inside the container's namespace with the `/dev/net/tun`
//! ioctls (`src/tap.rs`), exclusively (an existing device of that name is never
//! reused); then MTU, MAC, the optional `bridge` (a bridge *inside* the container) as
//! its master, and UP over rtnetlink. With `ipam`: addresses and routes too. A failure
//! deletes the tap and releases the addresses. The result's `dns` is the config's, as
//! in the reference. DEL: IPAM, then the tap (a missing netns or link is fine).
//! CHECK: IPAM, the tap exists with the recorded MAC, the recorded addresses and routes.
//!
//! Keys: `mtu`, `mac` (overridden by `CNI_ARGS MAC`, then `runtimeConfig.mac`),
//! `multiQueue`, `owner`, `group`, `selinuxContext`, `bridge`, `ipam`, `dns`.
//!
//! The device's default features follow the reference's two creation paths, so both
//! implementations make the same device: with `owner` *and* `group` set (and no
//! `selinuxContext`) it has `vnet_hdr` on and packet info on (the reference's netlink
//! path), otherwise both off (its `ip tuntap` path). Whoever attaches sets these again.
//!
//! `selinuxContext`: the reference sets it as its thread's SELinux *exec* label and then
//! runs `ip tuntap add`, so the tap is created by a process in that context (the kernel
//! labels a tun device with its creator's context). cnibox does the same with itself
//! instead of `ip`: it writes the label to `/proc/thread-self/attr/exec`, re-executes
//! its own binary as a helper that only creates the tap (environment variable
//! `CNIBOX_TAP_HELPER=1`), and clears the label again before anything else runs (the
//! reference leaves it set, so its IPAM plugin runs in that context too). Without
//! SELinux the kernel refuses the label (EINVAL) and ADD fails with code 7 before
//! anything exists, as the reference fails (with code 999). For tests only,
//! `CNIBOX_SELINUX_EXEC_ATTR=FILE` makes the label (then a newline, which clears it)
//! be appended to FILE instead, so the helper path runs on a host without SELinux.
//!
//! Differences from the reference, on purpose: `mtu` and `mac` are applied also when
//! `owner` and `group` are both set (the reference's netlink path silently ignores
//! them); a missing `bridge`, a bad MAC or MTU or owner are refused (code 7) before the
//! tap exists; a failed ADD always deletes the tap (the reference leaks it when IPAM or
//! the addresses fail); an L2 tap under cniVersion 0.1.0/0.2.0 (no result form) is
//! refused before anything is created; CHECK also finds a vanished or replaced tap
//! when there are no addresses to check; GC forwards to IPAM.

use anyhow::{anyhow, bail, Context, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::{shape_of, Shape};
use cnibox::cni::{decode, delegate, value, CniResult, Dns, Interface};
use cnibox::error::{cni_err, CniError, Code};
use cnibox::l3::{self, Rollback};
use cnibox::netlink::{LinkId, Nl};
use cnibox::netns::Netns;
use cnibox::tap::{self, TapSpec};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub const APPLET: Applet = Applet {
    name: "tap",
    about: "persistent tap device in the container (for VMs), optionally on a bridge",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: Some(&["MAC"]),
        add,
        del,
        check,
        gc: Some(gc),
        status: Some(status),
    }),
};

/// The TUN driver's largest MTU (MAX_MTU 65535 minus the Ethernet header).
const TAP_MAX_MTU: u32 = 65521;
const ATTR_EXEC: &str = "/proc/thread-self/attr/exec";
/// The helper creating a labelled tap gets this long (it does four ioctls).
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConf {
    #[serde(rename = "multiQueue")]
    multi_queue: bool,
    mtu: i64,
    mac: String,
    owner: Option<i64>,
    group: Option<i64>,
    #[serde(rename = "selinuxContext")]
    selinux_context: String,
    bridge: String,
    /// Accepted and ignored, but it must be an object (the reference decodes it into
    /// an empty struct).
    #[allow(dead_code)]
    args: Option<Map<String, Value>>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RuntimeConfig {
    mac: String,
}

/// The validated config.
struct Conf {
    spec: TapSpec,
    mtu: u32,
    mac: Option<[u8; 6]>,
    selinux: Option<String>,
    bridge: Option<String>,
    l3: bool,
    dns: Dns,
}

fn id_key(key: &str, v: Option<i64>) -> Result<Option<u32>> {
    v.map(|n| {
        u32::try_from(n)
            .map_err(|_| value::invalid(key, n, "is not a user/group id (0..4294967295)"))
    })
    .transpose()
}

/// Everything ADD needs, validated before anything changes (code 7 naming the key).
fn parse(ctx: &Ctx) -> Result<Conf> {
    let c: RawConf = ctx.decode()?;
    let mtu = value::mtu(c.mtu)?;
    if mtu > TAP_MAX_MTU {
        return Err(value::invalid(
            "mtu",
            mtu,
            format!("is out of range for a tap device (68..{TAP_MAX_MTU})"),
        ));
    }
    let owner = id_key("owner", c.owner)?;
    let group = id_key("group", c.group)?;
    // MAC priority (lowest first): mac, CNI_ARGS MAC, runtimeConfig.mac.
    let mut mac = None;
    if !c.mac.is_empty() {
        mac = Some(unicast("mac", value::mac("mac", &c.mac)?)?);
    }
    if let Some(m) = ctx.cni_args.get("MAC").filter(|m| !m.is_empty()) {
        let bytes = cnibox::netlink::link::parse_mac(m).map_err(|_| {
            cni_err(
                Code::InvalidEnv,
                format!("CNI_ARGS MAC={m:?} is not a MAC address"),
            )
        })?;
        mac = Some(unicast("CNI_ARGS MAC", bytes)?);
    }
    if !c.runtime_config.mac.is_empty() {
        let key = "runtimeConfig.mac";
        mac = Some(unicast(key, value::mac(key, &c.runtime_config.mac)?)?);
    }
    let bridge = (!c.bridge.is_empty()).then_some(c.bridge);
    if let Some(b) = &bridge {
        value::ifname("bridge", b)?;
    }
    let selinux = (!c.selinux_context.is_empty()).then_some(c.selinux_context);
    // The reference's netlink path (owner and group both set, no SELinux label).
    let netlink_path = owner.is_some() && group.is_some() && selinux.is_none();
    let dns = match &ctx.conf.dns {
        None => Dns::default(),
        Some(v) => decode::from_value(v.clone())
            .map_err(|e| cni_err(Code::Decode, format!("invalid dns: {e}")))?,
    };
    Ok(Conf {
        spec: TapSpec {
            name: ctx.ifname.clone(),
            multi_queue: c.multi_queue,
            vnet_hdr: netlink_path,
            packet_info: netlink_path && !c.multi_queue,
            owner,
            group,
        },
        mtu,
        mac,
        selinux,
        bridge,
        l3: !ctx.conf.ipam_type().is_empty(),
        dns,
    })
}

/// A tap takes only unicast, non-zero Ethernet addresses (the kernel says
/// "cannot assign requested address" otherwise, after the tap exists).
fn unicast(key: &str, mac: [u8; 6]) -> Result<[u8; 6]> {
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(value::invalid(
            key,
            format!("{:?}", cnibox::netlink::mac_string(&mac)),
            "is not a unicast MAC address",
        ));
    }
    Ok(mac)
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let c = parse(ctx)?;
    if std::env::var("CNIBOX_TAP_HELPER").as_deref() == Ok("1") {
        helper_main(ctx, &c);
    }
    if !c.l3 && shape_of(ctx.version()) == Some(Shape::V02) {
        // Refuse before changing anything: a result without IPs has no 0.x form.
        return Err(cni_err(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        ));
    }
    if c.l3 {
        delegate::ensure_available(ctx, ctx.conf.ipam_type())?;
    }
    let cont_ns = Netns::open(&ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let ifname = ctx.ifname.as_str();
    if cont_nl.link(LinkId::Name(ifname))?.is_some() {
        bail!("failed to create tap: the container already has an interface {ifname:?}");
    }
    let master = match &c.bridge {
        None => None,
        Some(b) => Some(
            cont_nl
                .link(LinkId::Name(b))?
                .ok_or_else(|| {
                    value::invalid(
                        "bridge",
                        format!("{b:?}"),
                        "does not exist in the container's network namespace",
                    )
                })?
                .index,
        ),
    };

    Rollback::guard(|undo| {
        let nl = &cont_nl;
        match &c.selinux {
            None => cont_ns
                .run(|| tap::create(&c.spec))
                .context("failed to create tap")?,
            Some(label) => {
                // Registered before the helper runs: it may have made the tap before
                // failing. The name was free a moment ago and the creation is
                // exclusive, so a tap by that name now is ours.
                undo.push("delete the tap", move || delete_tap(nl, ifname));
                create_labelled(ctx, label)?;
            }
        }
        if c.selinux.is_none() {
            undo.push("delete the tap", move || delete_tap(nl, ifname));
        }
        let link = cont_nl.link_must(LinkId::Name(ifname))?;
        if c.mtu != 0 {
            cont_nl
                .set_mtu(link.index, c.mtu)
                .with_context(|| format!("failed to set the MTU of tap {ifname:?}"))?;
        }
        if let Some(mac) = c.mac {
            cont_nl
                .set_mac(link.index, mac)
                .with_context(|| format!("failed to set the MAC of tap {ifname:?}"))?;
        }
        if let (Some(m), Some(b)) = (master, &c.bridge) {
            cont_nl
                .set_master(link.index, m)
                .with_context(|| format!("failed to set tap {ifname} as a port of bridge {b}"))?;
        }
        cont_nl
            .set_up(link.index, true)
            .context("failed to set tap interface up")?;
        let link = cont_nl.link_must(LinkId::Index(link.index))?;
        let mut res = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![Interface::in_sandbox(ifname, &link.mac, &ctx.netns)],
            ..Default::default()
        };
        if c.l3 {
            let ipam = l3::ipam_add(ctx)?;
            undo.push("release the IPAM allocation", || {
                delegate::del(ctx, ctx.conf.ipam_type())
            });
            res.ips = ipam.ips;
            res.routes = ipam.routes;
            for ip in &mut res.ips {
                ip.interface = Some(0);
            }
            l3::configure_iface(&cont_nl, &cont_ns, ifname, &res)?;
        }
        res.dns = c.dns.clone();
        Ok(res)
    })
}

/// Undo step: delete `ifname` if it is a tun/tap device (never anything else).
fn delete_tap(nl: &Nl, ifname: &str) -> Result<()> {
    match nl.link(LinkId::Name(ifname))? {
        Some(l) if l.kind == "tun" => nl.delete_link(LinkId::Index(l.index)),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// selinuxContext: create the tap in a child process running under the label.

/// The file the exec label goes to, and whether it is the test stand-in.
fn exec_attr() -> (String, bool) {
    match std::env::var("CNIBOX_SELINUX_EXEC_ATTR") {
        Ok(p) if !p.is_empty() => (p, true),
        _ => (ATTR_EXEC.to_string(), false),
    }
}

fn write_exec_attr(text: &str) -> std::io::Result<()> {
    let (path, stand_in) = exec_attr();
    std::fs::OpenOptions::new()
        .write(true)
        .append(stand_in)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Run the helper under `label`: set this thread's exec label, spawn ourselves (the
/// child inherits the label and the kernel applies it at exec), clear the label.
fn create_labelled(ctx: &Ctx, label: &str) -> Result<()> {
    write_exec_attr(label).map_err(|e| {
        let why = e.to_string();
        value::invalid(
            "selinuxContext",
            format!("{label:?}"),
            format!(
                "cannot be set as the exec label (writing {}: {}); is SELinux enabled?",
                exec_attr().0,
                why.split(" (os error")
                    .next()
                    .unwrap_or(&why)
                    .to_lowercase()
            ),
        )
    })?;
    let r = run_helper(ctx);
    // A newline clears the exec label: nothing else we run (IPAM) may inherit it.
    if let Err(e) = write_exec_attr("\n") {
        eprintln!("tap: could not clear the SELinux exec label: {e}");
    }
    r
}

fn run_helper(ctx: &Ctx) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find this binary to run the tap helper")?;
    let mut child = std::process::Command::new(&exe)
        .arg0("tap")
        .env("CNIBOX_TAP_HELPER", "1")
        .env("CNI_COMMAND", "ADD")
        // The call's own values, not this process's environment: an in-process caller
        // (cnitool, multinet) runs tap without them in its environment.
        .env("CNI_CONTAINERID", &ctx.container_id)
        .env("CNI_NETNS", &ctx.netns)
        .env("CNI_IFNAME", &ctx.ifname)
        .env("CNI_ARGS", &ctx.args)
        .env("CNI_PATH", &ctx.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to run the tap helper {}", exe.display()))?;
    if let Some(mut s) = child.stdin.take() {
        // The config is a few KiB: it fits the pipe, so this cannot block.
        let _ = s.write_all(&ctx.stdin);
    }
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(cni_err(
                Code::TryAgainLater,
                format!("the tap helper did not finish within {HELPER_TIMEOUT:?}; killed it"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if status.success() {
        return Ok(());
    }
    match serde_json::from_slice::<CniError>(&out) {
        Ok(e) => Err(anyhow!(e)),
        Err(_) => Err(anyhow!("the tap helper failed ({status})")),
    }
}

/// The helper process: create the tap in the container and exit, printing nothing.
fn helper_main(ctx: &Ctx, c: &Conf) -> ! {
    let r = Netns::open(&ctx.netns).and_then(|ns| ns.run(|| tap::create(&c.spec)));
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let mut err = CniError::from_anyhow(&e.context("failed to create tap"));
            err.cni_version = ctx.version().to_string();
            let _ = std::io::stdout().write_all(&serde_json::to_vec(&err).unwrap_or_default());
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------------------------------

/// DEL reads only `ipam.type`: it never fails because ADD would reject the config.
fn del(ctx: &Ctx) -> Result<()> {
    let ipam = match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::del(ctx, t),
    };
    let link = l3::del_cont_iface(&ctx.netns, &ctx.ifname);
    l3::all_errors([ipam, link])
}

fn check(ctx: &Ctx) -> Result<()> {
    let c = parse(ctx)?;
    let prev = ctx.prev_result_required()?;
    let cont_ns = Netns::open(&ctx.netns)?;
    if c.l3 {
        delegate::check(ctx, ctx.conf.ipam_type())?;
    }
    let iface = l3::find_container_iface(&prev, &ctx.ifname, &ctx.netns)?;
    let cont_nl = Nl::open_in(&cont_ns)?;
    let link = cont_nl.link(LinkId::Name(&iface.name))?.ok_or_else(|| {
        anyhow!(
            "Container Interface name in prevResult: {} not found",
            iface.name
        )
    })?;
    if link.kind != "tun" {
        bail!("Error: Container interface {} not of type tap", link.name);
    }
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac) {
        bail!(
            "Interface {} Mac {} doesn't match container Mac: {}",
            iface.name,
            iface.mac,
            link.mac
        );
    }
    l3::validate_ips(&cont_nl, &ctx.ifname, &prev.ips)?;
    l3::validate_routes(&cont_nl, &prev.routes)
}

fn status(ctx: &Ctx) -> Result<()> {
    match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::status(ctx, t),
    }
}

/// GC (the reference has none): the addresses of vanished attachments, through IPAM.
fn gc(ctx: &Ctx) -> Result<()> {
    match ctx.conf.ipam_type() {
        "" => Ok(()),
        t => delegate::gc(ctx, t),
    }
}
