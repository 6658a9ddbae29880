//! Attribute numbers from the kernel's uapi headers that neli does not name.
//! Grouped by the nest they belong to; values from include/uapi/linux/*.h.

/// `IFLA_*` not in neli's enum.
pub const IFLA_PROTINFO: u16 = 12;
pub const IFLA_AF_SPEC: u16 = 26;
pub const IFLA_EXT_MASK: u16 = 29;
pub const IFLA_INFO_SLAVE_KIND: u16 = 4;
pub const IFLA_INFO_SLAVE_DATA: u16 = 5;

/// Set on nested attributes where the kernel requires it.
pub const NLA_F_NESTED: u16 = 0x8000;

/// veth (linux/veth.h).
pub const VETH_INFO_PEER: u16 = 1;

/// bridge link data (IFLA_INFO_DATA of kind "bridge").
pub const IFLA_BR_VLAN_FILTERING: u16 = 7;

/// bridge port attributes, inside IFLA_PROTINFO (AF_BRIDGE).
pub const IFLA_BRPORT_MODE: u16 = 4; // hairpin
pub const IFLA_BRPORT_ISOLATED: u16 = 33;

/// bridge VLAN entries, inside IFLA_AF_SPEC (AF_BRIDGE).
pub const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
pub const BRIDGE_VLAN_INFO_MASTER: u16 = 1 << 0;
pub const BRIDGE_VLAN_INFO_PVID: u16 = 1 << 1;
pub const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 1 << 2;
pub const RTEXT_FILTER_BRVLAN: u32 = 1 << 1;

pub const AF_BRIDGE: u8 = 7;
