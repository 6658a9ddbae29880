//! Help for operators, from one table: each applet's config keys (type, default,
//! meaning) and one example config. `cnibox APPLET --help`, `cnibox --help` and the man
//! page (`cnibox --man`) are all rendered from [`HELP`] and the applet table, so they
//! cannot disagree. `tests/help.rs` runs every example through its applet.

use crate::cni::skel::{Applet, Kind};
use serde_json::Value;
use std::fmt::Write;

/// One config key: `name` is its path in the config (`ipam.subnet`).
pub struct Key {
    pub name: &'static str,
    pub ty: &'static str,
    /// What an absent key means ("" = nothing / not set).
    pub default: &'static str,
    pub about: &'static str,
}

pub struct AppletHelp {
    pub name: &'static str,
    /// `main` (makes the interface), `ipam` (addresses), `meta` (chained after a main).
    pub kind: &'static str,
    pub keys: &'static [Key],
    /// A config a user could start from (JSON).
    pub example: &'static str,
}

const fn k(
    name: &'static str,
    ty: &'static str,
    default: &'static str,
    about: &'static str,
) -> Key {
    Key {
        name,
        ty,
        default,
        about,
    }
}

/// Keys every applet reads (the harness's), shown once in `cnibox --help` and the man page.
pub static COMMON_KEYS: &[Key] = &[
    k("cniVersion", "string", "0.1.0", "CNI version of the config and of the result printed (0.1.0 .. 1.1.0)"),
    k("name", "string", "", "network name (required): letters, digits, '_', '.', '-'"),
    k("type", "string", "", "the plugin to run (the runtime uses it to pick the binary)"),
    k("ipam", "object", "", "IPAM section: {\"type\": \"host-local\" | \"static\" | any plugin in CNI_PATH, ...}"),
    k("dns", "object", "", "nameservers, domain, search, options for the result"),
    k("args", "object", "", "extra arguments from the runtime (args.cni.*)"),
    k("runtimeConfig", "object", "", "capability values from the runtime (portMappings, mac, ips, bandwidth, ...)"),
    k("prevResult", "object", "", "result of the previous plugin in a chain (set by the runtime)"),
    k("logFile", "string", "", "append one JSON line per call to this absolute path (env CNIBOX_LOG_FILE wins)"),
    k("logLevel", "string", "info", "off | error (failed calls only) | info (every call) | debug (also config and result); env CNIBOX_LOG_LEVEL wins"),
];

const IPAM_OPT: Key = k(
    "ipam",
    "object",
    "",
    "optional: without a type the interface is L2 only",
);
const IPAM_REQ: Key = k(
    "ipam",
    "object",
    "",
    "required: the addresses come from IPAM",
);
const MTU: Key = k(
    "mtu",
    "int",
    "0",
    "MTU of the interface (0: the kernel's default)",
);
const MASQ: Key = k(
    "ipMasq",
    "bool",
    "false",
    "masquerade traffic leaving the container subnet",
);
const MASQ_BACKEND: Key = k(
    "ipMasqBackend",
    "string",
    "auto",
    "iptables | nftables (auto: iptables if installed, else nftables)",
);
const LINK_IN_CONTAINER: Key = k(
    "linkInContainer",
    "bool",
    "false",
    "the master link is in the container's netns (made by an earlier plugin)",
);

/// The help table: one entry per applet, in the applet table's order.
pub static HELP: &[AppletHelp] = &[
    AppletHelp {
        name: "bandwidth",
        kind: "meta",
        keys: &[
            k("ingressRate", "uint64 (bit/s)", "", "limit traffic towards the container (with ingressBurst)"),
            k("ingressBurst", "uint64 (bit)", "", "burst of the ingress limit"),
            k("egressRate", "uint64 (bit/s)", "", "limit traffic from the container (with egressBurst)"),
            k("egressBurst", "uint64 (bit)", "", "burst of the egress limit"),
            k("runtimeConfig.bandwidth", "object", "", "the same four keys from the runtime; used only when none is set at the top"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"bandwidth","ingressRate":10000000,"ingressBurst":100000,"egressRate":10000000,"egressBurst":100000}"#,
    },
    AppletHelp {
        name: "bridge",
        kind: "main",
        keys: &[
            k("bridge", "string", "cni0", "bridge to create or reuse"),
            k("isGateway", "bool", "false", "put the gateway addresses on the bridge, enable forwarding"),
            k("isDefaultGateway", "bool", "false", "also add a default route via the gateway (implies isGateway)"),
            k("forceAddress", "bool", "false", "replace a conflicting address on the bridge instead of failing"),
            MASQ,
            MASQ_BACKEND,
            k("mtu", "int", "0", "MTU of the veth pair, and of the bridge when created"),
            k("hairpinMode", "bool", "false", "hairpin on the host port"),
            k("promiscMode", "bool", "false", "bridge in promiscuous mode (not with hairpinMode)"),
            k("vlan", "int", "0", "access VLAN of the host port (0: none; 1..4094)"),
            k("vlanTrunk", "list of {id} | {minID,maxID}", "", "tagged VLANs of the host port"),
            k("preserveDefaultVlan", "bool", "false", "keep the port's existing VLANs when vlan/vlanTrunk is set"),
            k("macspoofchk", "bool", "false", "drop frames from the container with another source MAC (nftables)"),
            k("enabledad", "bool", "false", "IPv6 duplicate address detection on the container side"),
            k("disableContainerInterface", "bool", "false", "leave the container side down (L2 only, no ipam)"),
            k("portIsolation", "bool", "false", "isolate the host port from other isolated ports"),
            IPAM_OPT,
            k("runtimeConfig.mac", "string", "", "container MAC (wins over args.cni.mac and CNI_ARGS MAC)"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.22.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}}"#,
    },
    AppletHelp {
        name: "dhcp",
        kind: "ipam",
        keys: &[
            k("ipam.daemonSocketPath", "string", "/run/cni/dhcp.sock", "unix socket of `dhcp daemon` (cnibox's or the Go reference's)"),
            k("ipam.request", "list of {option, skipDefault}", "", "DHCP options to ask for, by name or code (skipDefault: not the default set)"),
            k("ipam.provide", "list of {option, value | fromArg}", "", "DHCP options to send (e.g. dhcp-client-identifier); fromArg reads CNI_ARGS"),
            k("ipam.priority", "int", "0", "metric of the routes the lease brings"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"lan","type":"macvlan","ipam":{"type":"dhcp","provide":[{"option":"host-name","fromArg":"K8S_POD_NAME"}]}}"#,
    },
    AppletHelp {
        name: "dummy",
        kind: "main",
        keys: &[IPAM_REQ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"dummy","ipam":{"type":"host-local","subnet":"10.1.2.0/24"}}"#,
    },
    AppletHelp {
        name: "firewall",
        kind: "meta",
        keys: &[
            k("backend", "string", "auto", "iptables | nftables (auto: iptables if installed for the families used, else nftables)"),
            k("iptablesAdminChainName", "string", "CNI-ADMIN", "chain the admin fills to override the plugin's rules"),
            k("ingressPolicy", "string", "open", "open | same-bridge | isolated: who may reach the container"),
            k("firewalldZone", "string", "", "accepted and ignored (no firewalld backend)"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"firewall","backend":"nftables","ingressPolicy":"same-bridge"}"#,
    },
    AppletHelp {
        name: "flannel",
        kind: "delegating",
        keys: &[
            k("subnetFile", "string", "/run/flannel/subnet.env", "flanneld's lease: FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_*, FLANNEL_MTU, FLANNEL_IPMASQ"),
            k("dataDir", "string", "/var/lib/cni/flannel", "where the delegate config of each container is saved (DEL uses the saved copy)"),
            k("delegate", "object", "{\"type\":\"bridge\"}", "keys of the delegate config (type, bridge, hairpinMode, ...); name and ipam are not allowed"),
            IPAM_OPT,
        ],
        example: r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
    },
    AppletHelp {
        name: "host-device",
        kind: "main",
        keys: &[
            k("device", "string", "", "host link to move in, by name (the first selector set wins)"),
            k("hwaddr", "string", "", "... or by MAC"),
            k("kernelpath", "string", "", "... or by /sys/devices/... path"),
            k("pciBusID", "string", "", "... or by PCI address (a user-space driver means DPDK mode)"),
            k("runtimeConfig.deviceID", "string", "", "PCI or auxiliary device from the runtime (capability deviceID)"),
            k("dataDir", "string", "/run/cni/host-device", "where the device's original settings are kept until DEL"),
            IPAM_OPT,
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"host-device","device":"eth1"}"#,
    },
    AppletHelp {
        name: "host-local",
        kind: "ipam",
        keys: &[
            k("ipam.ranges", "list of lists of {subnet, rangeStart?, rangeEnd?, gateway?}", "", "one address per inner list, taken from its ranges in order"),
            k("ipam.subnet", "CIDR", "", "a single range (legacy form); also rangeStart, rangeEnd, gateway"),
            k("ipam.rangeStart", "IP", "subnet + 1", "first address handed out"),
            k("ipam.rangeEnd", "IP", "last (IPv4: before broadcast)", "last address handed out"),
            k("ipam.gateway", "IP", "subnet + 1", "gateway put in the result"),
            k("ipam.routes", "list of {dst, gw?}", "", "routes put in the result"),
            k("ipam.dataDir", "string", "/var/lib/cni/networks", "reservation store (<dataDir>/<network name>/)"),
            k("ipam.resolvConf", "string", "", "host resolv.conf to turn into the result's dns"),
            k("runtimeConfig.ips / args.cni.ips", "list of IP", "", "request these addresses (also CNI_ARGS IP=)"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/16","rangeStart":"10.10.1.20","rangeEnd":"10.10.3.50","gateway":"10.10.0.254"}],[{"subnet":"fd00:10::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}}"#,
    },
    AppletHelp {
        name: "ipvlan",
        kind: "main",
        keys: &[
            k("master", "string", "default-route link", "host link to make the ipvlan on (chained: prevResult's interface)"),
            k("mode", "string", "l2", "l2 | l3 | l3s"),
            MTU,
            LINK_IN_CONTAINER,
            k("ipam", "object", "", "required unless chained (then prevResult's addresses are used)"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"ipvlan","master":"eth0","mode":"l2","ipam":{"type":"host-local","subnet":"10.1.3.0/24"}}"#,
    },
    AppletHelp {
        name: "loopback",
        kind: "main",
        keys: &[],
        example: r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
    },
    AppletHelp {
        name: "macvlan",
        kind: "main",
        keys: &[
            k("master", "string", "default-route link", "host link to make the macvlan on"),
            k("mode", "string", "bridge", "bridge | private | vepa | passthru | source"),
            MTU,
            k("mac", "string", "kernel's random", "MAC of the macvlan (runtimeConfig.mac wins)"),
            LINK_IN_CONTAINER,
            k("bcqueuelen", "uint32", "0", "broadcast queue length (0: the kernel's)"),
            k("sourceMacs", "list of MAC", "", "source mode: the MACs whose frames it receives"),
            IPAM_OPT,
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"macvlan","master":"eth0","mode":"bridge","ipam":{"type":"host-local","subnet":"192.168.1.0/24","rangeStart":"192.168.1.100","rangeEnd":"192.168.1.200","gateway":"192.168.1.1"}}"#,
    },
    AppletHelp {
        name: "multinet",
        kind: "delegating",
        keys: &[
            k("confDir", "string", "", "directory of the network configs to attach, found by name (required)"),
            k("binDir", "string", "", "extra plugin directory, searched before CNI_PATH"),
            k("backend", "string (http:// URL)", "", "inventory asked GET <backend>?podName=<K8S_POD_NAME> for the networks and addresses"),
            k("networks", "list of {type, podIp, subnetMask, gateway, ifName, master}", "", "a fixed list instead of backend (exactly one master)"),
            k("stateDir", "string", "/var/lib/cni/multinet", "records of what each container has attached (DEL works from them)"),
            k("timeout", "number (s)", "10", "how long the backend has to answer (then code 11)"),
        ],
        example: r#"{"cniVersion":"1.1.0","name":"pods","type":"multinet","confDir":"/etc/cni/multinet.d","backend":"http://127.0.0.1:8089/ipam","timeout":10}"#,
    },
    AppletHelp {
        name: "portmap",
        kind: "meta",
        keys: &[
            k("runtimeConfig.portMappings", "list of {hostPort, containerPort, protocol, hostIP?}", "", "the mappings (capability portMappings)"),
            k("backend", "string", "auto", "iptables | nftables (auto: iptables unless only nftables works)"),
            k("snat", "bool", "true", "masquerade hairpin and localhost traffic to mapped ports"),
            k("masqAll", "bool", "false", "iptables: masquerade from any source, not just the container subnet"),
            k("markMasqBit", "int 0..31", "13", "iptables: mark bit for masquerading"),
            k("externalSetMarkChain", "string", "", "iptables: jump to this chain instead of our own mark chain"),
            k("conditionsV4", "list of string", "", "extra match tokens for IPv4 rules (iptables or nftables syntax)"),
            k("conditionsV6", "list of string", "", "the same for IPv6"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"portmap","capabilities":{"portMappings":true},"backend":"nftables","snat":true}"#,
    },
    AppletHelp {
        name: "ptp",
        kind: "main",
        keys: &[MASQ, MASQ_BACKEND, MTU, IPAM_REQ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"ptp","ipMasq":true,"mtu":1400,"ipam":{"type":"host-local","subnet":"10.1.1.0/24"}}"#,
    },
    AppletHelp {
        name: "sbr",
        kind: "meta",
        keys: &[k("table", "uint32", "first free id >= 100", "routing table for the interface's source rules")],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"sbr","table":100}"#,
    },
    AppletHelp {
        name: "static",
        kind: "ipam",
        keys: &[
            k("ipam.addresses", "list of {address (CIDR), gateway?}", "", "the addresses to hand out"),
            k("ipam.routes", "list of {dst, gw?}", "", "routes put in the result"),
            k("ipam.dns", "object", "", "nameservers, domain, search, options for the result"),
            k("runtimeConfig.ips / args.cni.ips", "list of CIDR", "", "replace ipam.addresses (CNI_ARGS IP= adds to them)"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"bridge","ipam":{"type":"static","addresses":[{"address":"10.10.0.1/24","gateway":"10.10.0.254"},{"address":"fd00:10::1/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.10.0.254"]}}}"#,
    },
    AppletHelp {
        name: "tap",
        kind: "main",
        keys: &[
            MTU,
            k("mac", "string", "kernel's random", "MAC (CNI_ARGS MAC, then runtimeConfig.mac win)"),
            k("multiQueue", "bool", "false", "multi-queue tap"),
            k("owner", "uint32", "", "uid that may attach to the tap"),
            k("group", "uint32", "", "gid that may attach to the tap"),
            k("selinuxContext", "string", "", "SELinux label the tap is created with"),
            k("bridge", "string", "", "a bridge inside the container to attach the tap to"),
            IPAM_OPT,
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"tap","mtu":1500,"multiQueue":true,"ipam":{"type":"host-local","subnet":"10.1.4.0/24"}}"#,
    },
    AppletHelp {
        name: "tuning",
        kind: "meta",
        keys: &[
            k("sysctl", "map string -> string", "", "net.* sysctls of the container (IFNAME stands for CNI_IFNAME)"),
            k("mac", "string", "", "set the interface's MAC"),
            k("mtu", "int", "", "set the interface's MTU"),
            k("promisc", "bool", "false", "turn promiscuous mode on"),
            k("allmulti", "bool", "", "set or clear all-multicast mode"),
            k("txQLen", "int", "", "set the transmit queue length"),
            k("dataDir", "string", "/run/cni/tuning", "where the original values are kept until DEL"),
            k("args.cni.*", "object", "", "mac, mtu, promisc, allmulti, txQLen, sysctl from the runtime override the config"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"tuning","sysctl":{"net.core.somaxconn":"500","net.ipv4.conf.IFNAME.arp_notify":"1"},"mtu":1400}"#,
    },
    AppletHelp {
        name: "vlan",
        kind: "main",
        keys: &[
            k("master", "string", "", "host link to make the VLAN on (required)"),
            k("vlanId", "int 1..4094", "", "the VLAN id (required)"),
            k("mtu", "int", "0", "MTU (0: the master's)"),
            LINK_IN_CONTAINER,
            IPAM_REQ,
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"vlan","master":"eth0","vlanId":100,"ipam":{"type":"host-local","subnet":"10.1.5.0/24"}}"#,
    },
    AppletHelp {
        name: "vrf",
        kind: "meta",
        keys: &[
            k("vrfname", "string", "", "VRF to put the interface in, created if missing (required)"),
            k("table", "uint32", "lowest free id", "routing table of the VRF"),
        ],
        example: r#"{"cniVersion":"1.0.0","name":"mynet","type":"vrf","vrfname":"blue","table":1001}"#,
    },
];

pub fn find(name: &str) -> Option<&'static AppletHelp> {
    HELP.iter().find(|h| h.name == name)
}

fn kind_text(kind: &str) -> &'static str {
    match kind {
        "main" => "main plugin: makes the container's interface",
        "ipam" => "IPAM plugin: hands out addresses, run by a main plugin (its \"ipam\" section)",
        "meta" => "meta plugin: chained after a main plugin in a conflist, works on prevResult",
        "delegating" => {
            "delegating plugin: decides which networks to attach and runs their plugins"
        }
        _ => "",
    }
}

/// The commands an applet answers (GC and STATUS only when it has something to do).
fn commands(a: &Applet) -> String {
    let mut c = vec!["ADD", "DEL", "CHECK"];
    if let Kind::Plugin(p) = &a.kind {
        if p.gc.is_some() {
            c.push("GC");
        }
        if p.status.is_some() {
            c.push("STATUS");
        }
    }
    c.push("VERSION");
    c.join(" ")
}

fn pretty(example: &str) -> String {
    serde_json::from_str::<Value>(example)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| example.to_string())
}

fn key_lines(out: &mut String, keys: &[Key]) {
    let w = keys.iter().map(|k| k.name.len()).max().unwrap_or(0);
    for key in keys {
        let def = if key.default.is_empty() {
            String::new()
        } else {
            format!(" (default: {})", key.default)
        };
        let _ = writeln!(
            out,
            "  {:<w$}  {}{def}\n  {:<w$}  {}",
            key.name, key.ty, "", key.about
        );
    }
}

/// `cnibox APPLET --help`.
pub fn applet_text(a: &Applet) -> String {
    let mut s = format!("{} - {}\n", a.name, a.about);
    let Some(h) = find(a.name) else {
        return s;
    };
    let _ = writeln!(s, "{}", kind_text(h.kind));
    let _ = writeln!(s, "commands: {}", commands(a));
    if let Kind::Plugin(p) = &a.kind {
        let _ = writeln!(s, "cniVersion: {}", p.versions.join(", "));
        if let Some(keys) = p.cni_args.filter(|k| !k.is_empty()) {
            let _ = writeln!(s, "CNI_ARGS keys: {} (and IgnoreUnknown)", keys.join(", "));
        }
    }
    if h.keys.is_empty() {
        let _ = writeln!(s, "\nNo config keys of its own.");
    } else {
        let _ = writeln!(
            s,
            "\nConfig keys (besides the common ones in `cnibox --help`):"
        );
        key_lines(&mut s, h.keys);
    }
    let _ = writeln!(s, "\nExample:\n{}", pretty(h.example));
    let _ = writeln!(
        s,
        "\nA runtime runs it with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH\n\
         set and the config on stdin; the result or error object is printed on stdout."
    );
    s
}

/// The part of `cnibox --help` after the options: applets and common keys.
pub fn frontend_text(applets: &[Applet]) -> String {
    let mut s = String::from("Applets (run `cnibox APPLET --help` for its config keys):\n");
    for a in applets {
        let _ = writeln!(s, "  {:<12} {}", a.name, a.about);
    }
    let _ = writeln!(s, "\nConfig keys every applet reads:");
    key_lines(&mut s, COMMON_KEYS);
    let _ = writeln!(
        s,
        "\nLogging: set logFile (or CNIBOX_LOG_FILE) to append one JSON line per call:\n  \
         ts, level, applet, command, containerId, ifname, netns, network, cniVersion, pid,\n  \
         durationUs, ok, code/msg on failure, objects (what ADD made)."
    );
    s
}

/// roff escapes: backslashes, and a leading '.' or '\'' that would start a request.
fn roff(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

fn roff_keys(out: &mut String, keys: &[Key]) {
    for key in keys {
        let def = if key.default.is_empty() {
            String::new()
        } else {
            format!(", default {}", roff(key.default))
        };
        let _ = writeln!(
            out,
            ".TP\n.B {}\n({}{def}) {}",
            roff(key.name),
            roff(key.ty),
            roff(key.about)
        );
    }
}

/// The man page, cnibox(1), in roff.
pub fn man_page(applets: &[Applet], version: &str) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        ".TH CNIBOX 1 \"\" \"cnibox {}\" \"User Commands\"",
        roff(version)
    );
    let _ = writeln!(
        m,
        ".SH NAME\ncnibox \\- the CNI reference plugins as one binary"
    );
    let _ = writeln!(
        m,
        ".SH SYNOPSIS\n.B cnibox\n[\\fB\\-\\-list\\fR [\\fB\\-\\-long\\fR]] [\\fB\\-\\-install\\fR \\fIDIR\\fR [\\fB\\-\\-force\\fR|\\fB\\-\\-backup\\fR]] [\\fB\\-\\-man\\fR] [\\fB\\-\\-version\\fR]\n.br\n.B cnibox\n\\fIAPPLET\\fR [\\fB\\-\\-help\\fR]\n.br\n\\fIAPPLET\\fR [\\fB\\-\\-help\\fR]"
    );
    let _ = writeln!(
        m,
        ".SH DESCRIPTION\nOne binary holds every plugin (applet). A container runtime runs a plugin by \
         its name from \\fBCNI_PATH\\fR; each name is a symlink to cnibox, and the name it is run \
         as picks the applet. The runtime sets \\fBCNI_COMMAND\\fR (ADD, DEL, CHECK, GC, STATUS, \
         VERSION), \\fBCNI_CONTAINERID\\fR, \\fBCNI_NETNS\\fR, \\fBCNI_IFNAME\\fR, \\fBCNI_ARGS\\fR \
         and \\fBCNI_PATH\\fR and writes the network config to stdin; the applet prints the result \
         or a CNI error object on stdout."
    );
    let _ = writeln!(
        m,
        ".SH OPTIONS\n.TP\n.B \\-\\-list\nthe applets, one name per line (\\fB\\-\\-long\\fR: with a description)\n\
         .TP\n.BI \\-\\-install \" DIR\"\none symlink per applet in DIR; names taken by other files are kept unless \
         \\fB\\-\\-force\\fR, or \\fB\\-\\-backup\\fR (keeps NAME.cnibox\\-orig)\n\
         .TP\n.B \\-\\-man\nprint this page\n.TP\n.B \\-\\-version\nprint the version\n\
         .TP\n.B \\-\\-help\nusage; after an applet name (alone): that applet's config keys and an example"
    );
    let _ = writeln!(m, ".SH COMMON CONFIG KEYS");
    roff_keys(&mut m, COMMON_KEYS);
    let _ = writeln!(m, ".SH APPLETS");
    for a in applets {
        let _ = writeln!(m, ".SS {}\n{}.", roff(a.name), roff(a.about));
        if let Some(h) = find(a.name) {
            let _ = writeln!(m, "{}. Commands: {}.", roff(kind_text(h.kind)), commands(a));
            if h.keys.is_empty() {
                let _ = writeln!(m, "No config keys of its own.");
            }
            roff_keys(&mut m, h.keys);
            let _ = writeln!(m, ".PP\nExample:\n.PP\n.nf\n.RS 4");
            for line in pretty(h.example).lines() {
                let _ = writeln!(m, "{}", roff(line));
            }
            let _ = writeln!(m, ".RE\n.fi");
        }
    }
    let _ = writeln!(
        m,
        ".SH LOGGING\nWith \\fBlogFile\\fR in the config or \\fBCNIBOX_LOG_FILE\\fR in the environment, \
         each call appends one JSON line (ts, level, applet, command, containerId, ifname, netns, \
         network, cniVersion, pid, durationUs, ok, code and msg on failure, objects made by ADD) \
         with a single write on an O_APPEND file, so concurrent calls never mix lines. \
         \\fBlogLevel\\fR or \\fBCNIBOX_LOG_LEVEL\\fR: off, error, info (default), debug. \
         Nothing is ever logged on stdout."
    );
    let _ = writeln!(
        m,
        ".SH EXIT STATUS\n0 on success; 1 with a CNI error object on stdout. Codes: 1 incompatible \
         version, 3 unknown container (netns), 4 bad environment, 5 I/O, 6 undecodable config, \
         7 invalid config value, 8 the plugin's own netns, 11 try again later (a bounded wait ran \
         out), 999 anything else."
    );
    let _ = writeln!(
        m,
        ".SH FILES\n.TP\n/opt/cni/bin, /usr/lib/cni\nthe applet symlinks\n.TP\n/var/lib/cni/networks\n\
         host\\-local reservations\n.TP\n/run/cni/tuning, /run/cni/host\\-device\nsettings restored by DEL"
    );
    m
}
