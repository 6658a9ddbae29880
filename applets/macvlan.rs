//! macvlan: a MAC-addressed sub-interface of a host link ("master"), moved into the
//! container.
//!
//! ADD: validate everything (mode, MTU against the master's, MAC, bcqueuelen, IPAM
//! plugin present, master found: configured, or the default route's link in the host or,
//! with `linkInContainer`, in the container), then create the macvlan directly in the
//! container under `CNI_IFNAME`, then IPAM and the addresses (or, without `ipam`, just
//! bring it up). Any failure undoes every step (the reference leaks the link and the
//! address through Go variable shadowing). DEL: IPAM, then the link; nothing else is
//! read, so DEL never fails because the config or the master changed. CHECK: the
//! reference's rules, plus the parent, MTU, bcqueuelen and source list when configured.
//!
//! `stacked` holds what ipvlan and vlan share with it.

use anyhow::{bail, Result};
use cnibox::cni::skel::{Applet, Ctx, Kind, Plugin, ALL};
use cnibox::cni::types::{shape_of, Shape};
use cnibox::cni::{delegate, value, CniResult};
use cnibox::error::{cni_err, Code};
use cnibox::l3::{self, Rollback};
use cnibox::netlink::link::{KindData, Macvlan, MacvlanMode, NewLink};
use serde::Deserialize;

pub const APPLET: Applet = Applet {
    name: "macvlan",
    about: "give a container a macvlan sub-interface of a host link",
    kind: Kind::Plugin(Plugin {
        versions: ALL,
        cni_args: Some(&["MAC"]),
        add,
        del,
        check,
        gc: Some(stacked::gc),
        status: Some(stacked::status_if_ipam),
    }),
};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conf {
    master: String,
    mode: String,
    mtu: i64,
    mac: String,
    #[serde(rename = "linkInContainer")]
    link_in_container: bool,
    bcqueuelen: i64,
    /// Source mode only: the MACs whose frames the link receives (not in the
    /// reference, which has no source mode).
    #[serde(rename = "sourceMacs")]
    source_macs: Option<Vec<String>>,
}

/// The validated config; the master is resolved separately (it needs the namespaces).
struct Parsed {
    c: Conf,
    data: Macvlan,
    mac: Option<[u8; 6]>,
    l3: bool,
}

fn parse(ctx: &Ctx) -> Result<Parsed> {
    let c: Conf = ctx.decode()?;
    if !c.master.is_empty() {
        value::ifname("master", &c.master)?;
    }
    let mode = if c.mode.is_empty() {
        MacvlanMode::Bridge
    } else {
        MacvlanMode::from_name(&c.mode).ok_or_else(|| {
            value::invalid(
                "mode",
                format!("{:?}", c.mode),
                format!("is not a macvlan mode ({})", MacvlanMode::NAMES.join(", ")),
            )
        })?
    };
    let bc_queue_len = match c.bcqueuelen {
        0 => None,
        q => Some(
            u32::try_from(q)
                .map_err(|_| value::invalid("bcqueuelen", q, "is out of range (0..4294967295)"))?,
        ),
    };
    let mut source_macs = Vec::new();
    if let Some(list) = &c.source_macs {
        if mode != MacvlanMode::Source && !list.is_empty() {
            return Err(value::invalid(
                "sourceMacs",
                format!("{list:?}"),
                format!("needs \"mode\": \"source\" (mode is {:?})", mode.name()),
            ));
        }
        for (i, m) in list.iter().enumerate() {
            source_macs.push(stacked::unicast_mac(&format!("sourceMacs[{i}]"), m)?);
        }
    }
    // MTU range only here; its upper bound is the master's MTU (see stacked::master).
    value::mtu(c.mtu)?;
    let mac = pick_mac(ctx, &c.mac)?;
    let l3 = !ctx.conf.ipam_type().is_empty();
    Ok(Parsed {
        data: Macvlan {
            mode,
            flags: 0,
            bc_queue_len,
            source_macs,
        },
        mac,
        l3,
        c,
    })
}

/// The MAC, lowest priority first: `mac`, `CNI_ARGS MAC`, `args.cni.mac`,
/// `runtimeConfig.mac` (the reference's order, plus the `args` convention). Every value
/// given is validated, not only the winner: a bad one is a mistake either way. A bad
/// `CNI_ARGS` value is a bad environment (code 4), the others bad config (code 7).
fn pick_mac(ctx: &Ctx, conf_mac: &str) -> Result<Option<[u8; 6]>> {
    let mut mac = None;
    if !conf_mac.is_empty() {
        mac = Some(stacked::unicast_mac("mac", conf_mac)?);
    }
    if let Some(m) = value::runtime_mac(ctx, stacked::unicast_mac, "unicast MAC address")? {
        mac = Some(m);
    }
    Ok(mac)
}

fn add(ctx: &Ctx) -> Result<CniResult> {
    let p = parse(ctx)?;
    if !p.l3 && shape_of(ctx.version()) == Some(Shape::V02) {
        // Refuse before changing anything: a result without IPs has no 0.x form.
        return Err(cni_err(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        ));
    }
    if p.l3 {
        delegate::ensure_available(ctx, ctx.conf.ipam_type())?;
    }
    let s = stacked::Sockets::open(ctx)?;
    let master = s.master(&p.c.master, p.c.link_in_container, None)?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let req = NewLink::typed(&ctx.ifname, KindData::Macvlan(p.data.clone()))
        .parent(master.index)
        .mtu(mtu)
        .mac(p.mac);
    Rollback::guard(|undo| {
        let link = s.create(ctx, req, p.c.link_in_container, undo)?;
        let iface = stacked::iface(ctx, &link);
        if p.l3 {
            let ipam = stacked::ipam_add(ctx, undo)?;
            stacked::configure(ctx, &s, iface, ipam, None)
        } else {
            s.cont_nl.set_up(link.index, true)?;
            let mut res = CniResult {
                cni_version: ctx.version().to_string(),
                interfaces: vec![iface],
                ..Default::default()
            };
            l3::apply_dns_override(ctx.conf.dns.as_ref(), &mut res)?;
            Ok(res)
        }
    })
}

fn del(ctx: &Ctx) -> Result<()> {
    stacked::del(ctx)
}

fn check(ctx: &Ctx) -> Result<()> {
    let p = parse(ctx)?;
    let s = stacked::Sockets::open(ctx)?;
    let master = s.master(&p.c.master, p.c.link_in_container, None)?;
    let mtu = stacked::mtu_under(p.c.mtu, &master)?;
    let prev = ctx.prev_result_required()?;
    if p.l3 {
        delegate::check(ctx, ctx.conf.ipam_type())?;
    }
    let explicit = (!p.c.master.is_empty()).then_some(&master);
    let link = stacked::check_link(ctx, &s, &prev, "macvlan", explicit, mtu)?;
    let Some(KindData::Macvlan(have)) = &link.info else {
        bail!(
            "Error: Container interface {} not of type macvlan",
            link.name
        );
    };
    if have.mode != p.data.mode {
        bail!(
            "container macvlan mode {} does not match expected value: {}",
            have.mode.name(),
            p.data.mode.name()
        );
    }
    if p.data.bc_queue_len.is_some() && have.bc_queue_len != p.data.bc_queue_len {
        bail!(
            "container macvlan bcqueuelen {} does not match expected value: {}",
            have.bc_queue_len.unwrap_or(0),
            p.data.bc_queue_len.unwrap_or(0)
        );
    }
    if p.data.mode == MacvlanMode::Source {
        let (mut want, mut got) = (p.data.source_macs.clone(), have.source_macs.clone());
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            bail!(
                "container macvlan source MACs {:?} do not match expected value: {:?}",
                got.iter()
                    .map(|m| cnibox::netlink::mac_string(m))
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|m| cnibox::netlink::mac_string(m))
                    .collect::<Vec<_>>()
            );
        }
    }
    stacked::check_addresses(ctx, &s, &prev)
}

/// What macvlan, ipvlan and vlan share: the master (parent) and its MTU, creating the
/// link in the container with its undo, IPAM and the addresses, DEL, the CHECK of the
/// container link, GC and STATUS. (A candidate for `src/l3/stacked.rs`.)
pub(crate) mod stacked {
    use anyhow::{anyhow, bail, Context, Result};
    use cnibox::cni::skel::Ctx;
    use cnibox::cni::{delegate, value, CniResult, Interface};
    use cnibox::error::{cni_err, Code};
    use cnibox::l3::{self, Rollback};
    use cnibox::netlink::link::NewLink;
    use cnibox::netlink::{Link, LinkId, Nl};
    use cnibox::netns::Netns;
    use cnibox::sysctl;
    use std::os::fd::AsFd;

    /// A MAC for a link of its own: 6 octets, unicast and not all zero (the kernel
    /// refuses the others with a bare "cannot assign requested address").
    pub fn unicast_mac(key: &str, s: &str) -> Result<[u8; 6]> {
        let mac = value::mac(key, s)?;
        if mac[0] & 1 != 0 {
            return Err(value::invalid(
                key,
                format!("{s:?}"),
                "is a multicast address (a link needs a unicast MAC)",
            ));
        }
        if mac == [0; 6] {
            return Err(value::invalid(key, format!("{s:?}"), "is the zero address"));
        }
        Ok(mac)
    }

    /// The namespaces and sockets of one call: the plugin's own ("host") and the
    /// container's.
    pub struct Sockets {
        pub host_nl: Nl,
        pub cont_ns: Netns,
        pub cont_nl: Nl,
    }

    impl Sockets {
        pub fn open(ctx: &Ctx) -> Result<Sockets> {
            let cont_ns = Netns::open(&ctx.netns)?;
            Ok(Sockets {
                host_nl: Nl::open()?,
                cont_nl: Nl::open_in(&cont_ns)?,
                cont_ns,
            })
        }

        fn nl(&self, in_container: bool) -> &Nl {
            if in_container {
                &self.cont_nl
            } else {
                &self.host_nl
            }
        }

        /// The master: `name`, or else `chained` (ipvlan's prevResult interface), or
        /// else the link of the default route, in the host netns or, with
        /// `linkInContainer`, in the container's. Not found: code 7 naming "master".
        pub fn master(
            &self,
            name: &str,
            in_container: bool,
            chained: Option<&str>,
        ) -> Result<Link> {
            let where_ = if in_container {
                "in the container's network namespace (\"linkInContainer\": true)"
            } else {
                "in the host network namespace"
            };
            let nl = self.nl(in_container);
            let name = if !name.is_empty() {
                name
            } else if let Some(n) = chained {
                n
            } else {
                return nl.default_route_link()?.ok_or_else(|| {
                    value::invalid(
                        "master",
                        "(not set)",
                        format!("cannot default to the default route's link: there is no default route {where_}"),
                    )
                });
            };
            nl.link(LinkId::Name(name))?.ok_or_else(|| {
                value::invalid(
                    "master",
                    format!("{name:?}"),
                    format!("does not exist {where_}"),
                )
            })
        }

        /// Create `req` (its name is `CNI_IFNAME`) directly in the container, parented to
        /// a master in the host (sent from the host socket with the container as target)
        /// or, `in_container`, to one in the container (sent from inside). Its deletion
        /// is registered with `undo` the moment it exists. Returns the link as the
        /// container sees it.
        ///
        /// The reference creates a temporary `veth…` name and renames it; we create the
        /// final name at once, which the kernel checks in the target namespace (so a host
        /// link of the same name is no obstacle, tested). One call instead of two, and no
        /// moment at which a crash leaves a link DEL cannot find by name.
        pub fn create<'a>(
            &'a self,
            ctx: &'a Ctx,
            req: NewLink,
            in_container: bool,
            undo: &mut Rollback<'a>,
        ) -> Result<Link> {
            let kind = req.kind;
            let req = if in_container {
                req
            } else {
                req.netns(self.cont_ns.file.as_fd())
            };
            self.nl(in_container)
                .create_link(&req)
                .with_context(|| format!("failed to create {kind}"))?;
            let cont_nl = &self.cont_nl;
            let ifname = ctx.ifname.as_str();
            undo.push(format!("delete the {kind} {ifname:?}"), move || {
                l3::delete_cont_link(cont_nl, ifname).map(|_| ())
            });
            cont_nl.link_must(LinkId::Name(ifname))
        }
    }

    /// The MTU to create with: `mtu` (already range-checked) must not exceed the
    /// master's; 0 keeps the kernel's default (the master's MTU).
    pub fn mtu_under(mtu: i64, master: &Link) -> Result<u32> {
        let m = value::mtu(mtu)?;
        if m > master.mtu {
            return Err(value::invalid(
                "mtu",
                m,
                format!(
                    "is larger than the MTU of master {:?} ({})",
                    master.name, master.mtu
                ),
            ));
        }
        Ok(m)
    }

    /// The result's entry for the new container link.
    pub fn iface(ctx: &Ctx, link: &Link) -> Interface {
        Interface::in_sandbox(&ctx.ifname, &link.mac, &ctx.netns)
    }

    /// IPAM ADD, its release registered with `undo` at once.
    pub fn ipam_add<'a>(ctx: &'a Ctx, undo: &mut Rollback<'a>) -> Result<CniResult> {
        let ipam = l3::ipam_add(ctx)?;
        undo.push("release the IPAM allocation", move || {
            delegate::del(ctx, ctx.conf.ipam_type())
        });
        Ok(ipam)
    }

    /// Put `addrs` (IPs and routes from IPAM or a prevResult) on the container link
    /// `iface` and build the result: `prev`'s interfaces, IPs and routes first when the
    /// plugin is chained, then ours; the plugin-level `dns` replaces the DNS when set
    /// (the reference always replaces it, dropping IPAM's).
    pub fn configure(
        ctx: &Ctx,
        s: &Sockets,
        iface: Interface,
        addrs: CniResult,
        prev: Option<CniResult>,
    ) -> Result<CniResult> {
        // Configured through a view holding only our link, so a prevResult interface of
        // the same name (a host link) cannot be mistaken for it.
        let mut view = CniResult {
            cni_version: ctx.version().to_string(),
            interfaces: vec![iface.clone()],
            ips: addrs.ips,
            routes: addrs.routes,
            dns: addrs.dns,
        };
        for ip in &mut view.ips {
            ip.interface = Some(0);
        }
        let ifname = ctx.ifname.clone();
        // Like the reference: unsolicited neighbour advertisements on link-up
        // (configure_iface adds arp_notify; best effort, IPv6 may be off).
        s.cont_ns.run(|| {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1");
            Ok(())
        })?;
        l3::configure_iface(&s.cont_nl, &s.cont_ns, &ctx.ifname, &view)?;
        let mut res = match prev {
            None => view,
            Some(mut p) => {
                let ours = p.interfaces.len();
                p.interfaces.push(iface);
                for mut ip in view.ips {
                    ip.interface = Some(ours);
                    p.ips.push(ip);
                }
                p.routes.extend(view.routes);
                if p.dns.is_empty() {
                    p.dns = view.dns;
                }
                p.cni_version = ctx.version().to_string();
                p
            }
        };
        l3::apply_dns_override(ctx.conf.dns.as_ref(), &mut res)?;
        Ok(res)
    }

    /// DEL: IPAM (when the config names it), then the link, both always attempted.
    /// Nothing else is read: no master lookup (the reference's vlan fails when the
    /// master is gone, its ipvlan on hosts without a default route).
    pub fn del(ctx: &Ctx) -> Result<()> {
        let ipam = if ctx.conf.ipam_type().is_empty() {
            Ok(())
        } else {
            delegate::del(ctx, ctx.conf.ipam_type())
        };
        let link = l3::del_cont_iface(&ctx.netns, &ctx.ifname);
        l3::all_errors([ipam, link])
    }

    /// CHECK of the container link shared by the three: prevResult names it in this
    /// sandbox, it exists with the recorded MAC and is a `kind`; with an explicitly
    /// configured master it is that master's child; with an `mtu` configured it has it.
    pub fn check_link(
        ctx: &Ctx,
        s: &Sockets,
        prev: &CniResult,
        kind: &str,
        master: Option<&Link>,
        mtu: u32,
    ) -> Result<Link> {
        let iface = l3::find_container_iface(prev, &ctx.ifname, &ctx.netns)?;
        let link = s.cont_nl.link(LinkId::Name(&iface.name))?.ok_or_else(|| {
            anyhow!(
                "Container Interface name in prevResult: {} not found",
                iface.name
            )
        })?;
        if link.kind != kind {
            bail!(
                "Error: Container interface {} not of type {kind}",
                link.name
            );
        }
        if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&link.mac) {
            bail!(
                "Interface {} Mac {} doesn't match container Mac: {}",
                iface.name,
                iface.mac,
                link.mac
            );
        }
        if let Some(m) = master {
            if link.link != m.index {
                bail!(
                    "container {kind} {} is not a child of master {:?} (parent ifindex {}, master ifindex {})",
                    link.name,
                    m.name,
                    link.link,
                    m.index
                );
            }
        }
        if mtu != 0 && link.mtu != mtu {
            bail!(
                "container {kind} {} has MTU {}, the config says {mtu}",
                link.name,
                link.mtu
            );
        }
        Ok(link)
    }

    /// The prevResult's addresses of our interface (or without an interface index) are
    /// on it, and its routes exist.
    pub fn check_addresses(ctx: &Ctx, s: &Sockets, prev: &CniResult) -> Result<()> {
        let idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == ctx.ifname && i.sandbox == ctx.netns);
        let ours: Vec<_> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == idx)
            .cloned()
            .collect();
        l3::validate_ips(&s.cont_nl, &ctx.ifname, &ours)?;
        l3::validate_routes(&s.cont_nl, &prev.routes)
    }

    /// GC: nothing of ours outlives DEL except IPAM state; forward to IPAM (the
    /// reference has no GC).
    pub fn gc(ctx: &Ctx) -> Result<()> {
        if ctx.conf.ipam_type().is_empty() {
            return Ok(());
        }
        delegate::gc(ctx, ctx.conf.ipam_type())
    }

    /// STATUS as the reference: IPAM's, when the config names one.
    pub fn status_if_ipam(ctx: &Ctx) -> Result<()> {
        if ctx.conf.ipam_type().is_empty() {
            return Ok(());
        }
        delegate::status(ctx, ctx.conf.ipam_type())
    }

    /// For plugins that cannot work without IPAM (vlan, ipvlan unchained): code 7
    /// before anything changes, where the reference creates the link first and then
    /// fails on the empty plugin name.
    pub fn require_ipam(ctx: &Ctx, why: &str) -> Result<()> {
        if ctx.conf.ipam_type().is_empty() {
            return Err(cni_err(
                Code::InvalidConfig,
                format!("\"ipam\" is missing: {why}"),
            ));
        }
        delegate::ensure_available(ctx, ctx.conf.ipam_type())
    }
}
