//! The probe matrix's expectation (issue 12, item 6, the pure part): from the appliance's
//! NetworkPolicies and its workloads, the verdict Kubernetes' NetworkPolicy semantics give every
//! (source, destination workload and port) pair, with two sources that are not pods: "outside
//! the cluster" (the workstation, at a given address) and "a host process on a node" (on the
//! destination's node, and on another node), as docs/enforcer.md ("What host networking lets it
//! enforce") decides them:
//!
//! - pod to pod: the source's egress policies and the destination's ingress policies must both
//!   admit the flow (a pod no policy of its kind selects is not isolated in that direction);
//! - outside: only ingress, and only an `ipBlock` covering its address (or a rule with no
//!   `from`) admits it;
//! - a host process on the destination's node: always admitted (node traffic, the kubelet's
//!   probes);
//! - a host process on another node: it is that node's address, so as outside with the node's
//!   address.
//!
//! This is an oracle written apart from the enforcer's compiler, on purpose: the verify phase
//! compares what the network does with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::app::validate::pod_spec_of;
use crate::kube::manifest::Manifests;

/// One workload of the appliance as a destination or a source: its pod template's labels and
/// its containers' ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// (port, protocol, name).
    pub ports: Vec<(u16, String, Option<String>)>,
}

/// Who opens the connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Workload(String),
    /// The workstation, outside the cluster's nodes.
    Outside,
    /// A process that is not a pod, on the destination pod's node.
    HostSameNode,
    /// A process that is not a pod, on another node.
    HostOtherNode,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Workload(w) => f.write_str(w),
            Source::Outside => f.write_str("outside"),
            Source::HostSameNode => f.write_str("host (same node)"),
            Source::HostOtherNode => f.write_str("host (other node)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One cell: `source` to `destination`'s `port`/`protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub source: Source,
    pub destination: String,
    pub port: u16,
    pub protocol: String,
    pub verdict: Verdict,
}

/// Namespace labels the selectors see (`kubernetes.io/metadata.name` is always there).
pub type Namespaces = BTreeMap<String, BTreeMap<String, String>>;

/// The workloads of rendered manifests (every object with a pod template), in order.
pub fn workloads(manifests: &Manifests) -> Vec<Workload> {
    let mut out = Vec::new();
    for m in &manifests.items {
        let Some(spec) = pod_spec_of(&m.object) else {
            continue;
        };
        let template_labels = if m.kind() == "Pod" {
            &m.object["metadata"]["labels"]
        } else {
            &m.object["spec"]["template"]["metadata"]["labels"]
        };
        let labels = template_labels
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let mut ports = Vec::new();
        for c in spec["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                let Some(n) = p["containerPort"]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                else {
                    continue;
                };
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_owned();
                ports.push((n, proto, p["name"].as_str().map(str::to_owned)));
            }
        }
        out.push(Workload {
            name: m.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            namespace: m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            labels,
            ports,
        });
    }
    out
}

/// The NetworkPolicies among rendered manifests; `Err` names one that does not parse.
pub fn policies(manifests: &Manifests) -> Result<Vec<NetworkPolicy>, String> {
    manifests
        .items
        .iter()
        .filter(|m| m.kind() == "NetworkPolicy")
        .map(|m| {
            serde_json::from_value(m.object.clone()).map_err(|e| format!("{}: {e}", m.describe()))
        })
        .collect()
}

/// Whether `selector` selects `labels` (matchLabels and matchExpressions; an empty selector
/// selects everything). An operator Kubernetes does not know selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expr
}

fn ns_labels(namespaces: &Namespaces, ns: &str) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = namespaces.get(ns).cloned().unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), ns.into());
    l
}

fn policy_ns(p: &NetworkPolicy) -> &str {
    p.metadata.namespace.as_deref().unwrap_or("default")
}

/// Whether policy `p` selects workload `w`, and for which directions (policyTypes defaulted as
/// Kubernetes does: Ingress always, Egress when the policy has egress rules).
fn types_of(p: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &p.spec else {
        return (false, false);
    };
    match &spec.policy_types {
        Some(t) => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.is_some()),
    }
}

fn selects_workload(p: &NetworkPolicy, w: &Workload) -> bool {
    policy_ns(p) == w.namespace
        && p.spec
            .as_ref()
            .is_some_and(|s| selects(&s.pod_selector.clone().unwrap_or_default(), &w.labels))
}

/// A peer as the rules see it: a pod (namespace labels, pod labels) or an address.
enum Peer<'a> {
    Pod(&'a Workload),
    Address(Option<IpAddr>),
}

fn ip_in(block: &IPBlock, ip: IpAddr) -> bool {
    let Ok(net) = block.cidr.parse::<ipnet::IpNet>() else {
        return false;
    };
    net.contains(&ip)
        && !block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<ipnet::IpNet>().ok())
            .any(|e| e.contains(&ip))
}

fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    who: &Peer,
    namespaces: &Namespaces,
) -> bool {
    match who {
        Peer::Address(addr) => match (&peer.ip_block, addr) {
            (Some(b), Some(ip)) => ip_in(b, *ip),
            _ => false,
        },
        Peer::Pod(w) => {
            if peer.ip_block.is_some() {
                // A host-network pod's address is its node's: not modelled per pod here.
                return false;
            }
            let ns_ok = match &peer.namespace_selector {
                Some(sel) => selects(sel, &ns_labels(namespaces, &w.namespace)),
                None => w.namespace == policy_ns,
            };
            let pod_ok = match &peer.pod_selector {
                Some(sel) => selects(sel, &w.labels),
                None => true,
            };
            ns_ok && pod_ok && (peer.namespace_selector.is_some() || peer.pod_selector.is_some())
        }
    }
}

fn port_matches(
    rule_ports: Option<&Vec<NetworkPolicyPort>>,
    dest: &Workload,
    port: u16,
    proto: &str,
) -> bool {
    let Some(ports) = rule_ports else {
        return true;
    };
    if ports.is_empty() {
        return true;
    }
    ports.iter().any(|p| {
        let p_proto = p.protocol.as_deref().unwrap_or("TCP");
        if p_proto != proto {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let lo = i64::from(*n);
                let hi = p.end_port.map(i64::from).unwrap_or(lo);
                (lo..=hi).contains(&i64::from(port))
            }
            Some(IntOrString::String(name)) => dest
                .ports
                .iter()
                .any(|(n, pr, nm)| *n == port && pr == proto && nm.as_deref() == Some(name)),
        }
    })
}

fn ingress_admits(
    policies: &[NetworkPolicy],
    dest: &Workload,
    from: &Peer,
    port: u16,
    proto: &str,
    namespaces: &Namespaces,
) -> bool {
    let isolating: Vec<&NetworkPolicy> = policies
        .iter()
        .filter(|p| types_of(p).0 && selects_workload(p, dest))
        .collect();
    if isolating.is_empty() {
        return true;
    }
    isolating.iter().any(|p| {
        let ns = policy_ns(p);
        p.spec
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .into_iter()
            .flatten()
            .any(|r| {
                let peer_ok = match &r.from {
                    None => true,
                    Some(f) if f.is_empty() => true,
                    Some(f) => f
                        .iter()
                        .any(|peer| peer_matches(peer, ns, from, namespaces)),
                };
                peer_ok && port_matches(r.ports.as_ref(), dest, port, proto)
            })
    })
}

fn egress_admits(
    policies: &[NetworkPolicy],
    src: &Workload,
    dest: &Workload,
    port: u16,
    proto: &str,
    namespaces: &Namespaces,
) -> bool {
    let isolating: Vec<&NetworkPolicy> = policies
        .iter()
        .filter(|p| types_of(p).1 && selects_workload(p, src))
        .collect();
    if isolating.is_empty() {
        return true;
    }
    isolating.iter().any(|p| {
        let ns = policy_ns(p);
        p.spec
            .as_ref()
            .and_then(|s| s.egress.as_ref())
            .into_iter()
            .flatten()
            .any(|r| {
                let peer_ok = match &r.to {
                    None => true,
                    Some(t) if t.is_empty() => true,
                    Some(t) => t
                        .iter()
                        .any(|peer| peer_matches(peer, ns, &Peer::Pod(dest), namespaces)),
                };
                peer_ok && port_matches(r.ports.as_ref(), dest, port, proto)
            })
    })
}

/// The addresses the non-pod sources have.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addresses {
    /// The workstation's address as the nodes see it.
    pub outside: Option<IpAddr>,
    /// Another node's address (the source of a host process there).
    pub other_node: Option<IpAddr>,
}

/// The expected matrix: every source (each workload, then outside, then host processes) to
/// every destination workload's every declared port. `sources` are the workloads that open
/// connections (usually all of `workloads`); `destinations` the ones that are probed.
pub fn expected(
    sources: &[Workload],
    destinations: &[Workload],
    policies: &[NetworkPolicy],
    namespaces: &Namespaces,
    addresses: Addresses,
) -> Vec<Cell> {
    let mut out = Vec::new();
    let mut all_sources: Vec<Source> = sources
        .iter()
        .map(|w| Source::Workload(w.name.clone()))
        .collect();
    all_sources.extend([Source::Outside, Source::HostSameNode, Source::HostOtherNode]);
    for source in &all_sources {
        for dest in destinations {
            for (port, proto, _) in &dest.ports {
                let allowed = match source {
                    Source::Workload(name) => match sources.iter().find(|w| &w.name == name) {
                        Some(src) => {
                            egress_admits(policies, src, dest, *port, proto, namespaces)
                                && ingress_admits(
                                    policies,
                                    dest,
                                    &Peer::Pod(src),
                                    *port,
                                    proto,
                                    namespaces,
                                )
                        }
                        None => false,
                    },
                    Source::Outside => ingress_admits(
                        policies,
                        dest,
                        &Peer::Address(addresses.outside),
                        *port,
                        proto,
                        namespaces,
                    ),
                    Source::HostSameNode => true,
                    Source::HostOtherNode => ingress_admits(
                        policies,
                        dest,
                        &Peer::Address(addresses.other_node),
                        *port,
                        proto,
                        namespaces,
                    ),
                };
                out.push(Cell {
                    source: source.clone(),
                    destination: dest.name.clone(),
                    port: *port,
                    protocol: proto.clone(),
                    verdict: if allowed {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    },
                });
            }
        }
    }
    out
}

/// The matrix as a table: one row per source, one column per destination `name:port/proto`,
/// `allow` or `deny` in each cell.
pub fn render(cells: &[Cell]) -> String {
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<(String, BTreeMap<String, Verdict>)> = Vec::new();
    for c in cells {
        let col = format!("{}:{}/{}", c.destination, c.port, c.protocol);
        if !columns.contains(&col) {
            columns.push(col.clone());
        }
        let src = c.source.to_string();
        match rows.iter_mut().find(|(s, _)| *s == src) {
            Some((_, r)) => {
                r.insert(col, c.verdict);
            }
            None => rows.push((src, BTreeMap::from([(col, c.verdict)]))),
        }
    }
    let first = rows
        .iter()
        .map(|(s, _)| s.len())
        .chain(["from \\ to".len()])
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    let _ = write!(s, "{:first$}", "from \\ to");
    for c in &columns {
        let _ = write!(s, "  {c}");
    }
    s.push('\n');
    for (src, r) in &rows {
        let _ = write!(s, "{src:first$}");
        for c in &columns {
            let v = match r.get(c) {
                Some(Verdict::Allow) => "allow",
                Some(Verdict::Deny) => "deny",
                None => "-",
            };
            let _ = write!(s, "  {v:w$}", w = c.len());
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests;
