//! The watched objects as one snapshot, and the enforcer's configuration.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

/// Everything the compiler reads: the cluster as the watchers last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
    #[serde(default)]
    pub nodes: Vec<Node>,
}

/// Drop, or only count and log what would be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// What the compiler needs besides the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The node this enforcer programs.
    pub node_name: String,
    pub mode: Mode,
    /// The nftables table (family inet) the enforcer owns.
    pub table: String,
    /// TCP ports always open in both directions (SSH, the API server, kubelet, etcd, ...).
    pub failsafe_tcp: Vec<(u16, u16)>,
    /// UDP ports always open (DNS, ...).
    pub failsafe_udp: Vec<(u16, u16)>,
    /// The taint removed from this node once its rules are applied (see [`crate::taint`]).
    #[serde(default)]
    pub remove_taint: Option<String>,
}

/// The ports no policy can close (see docs/enforcer.md, "Never locks anyone out").
pub const FAILSAFE_TCP: &[(u16, u16)] = &[
    (22, 22),
    (53, 53),
    (2379, 2380),
    (6443, 6443),
    (6444, 6444),
    (10250, 10250),
];
pub const FAILSAFE_UDP: &[(u16, u16)] = &[(53, 53)];

impl Config {
    /// The default failsafe ports plus the installer's SSH port and extra ports.
    pub fn new(
        node_name: &str,
        mode: Mode,
        table: &str,
        extra_tcp: &[u16],
        extra_udp: &[u16],
    ) -> Self {
        let mut tcp = FAILSAFE_TCP.to_vec();
        tcp.extend(extra_tcp.iter().map(|p| (*p, *p)));
        let mut udp = FAILSAFE_UDP.to_vec();
        udp.extend(extra_udp.iter().map(|p| (*p, *p)));
        Config {
            node_name: node_name.to_string(),
            mode,
            table: table.to_string(),
            failsafe_tcp: merge_ranges(tcp),
            failsafe_udp: merge_ranges(udp),
            remove_taint: None,
        }
    }
}

/// Sorted, overlapping and adjacent ranges merged (nft refuses overlapping interval elements).
pub fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.iter_mut().for_each(|r| {
        if r.0 > r.1 {
            *r = (r.1, r.0)
        }
    });
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// A node's addresses (InternalIP and ExternalIP), as the other nodes see them.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out.dedup();
    out
}
