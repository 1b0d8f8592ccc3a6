//! Snapshot to one nftables table (text for `nft -f`). Pure: no I/O, golden-tested.
//!
//! Layout of `table inet <name>` (see docs/enforcer.md for the reasoning):
//! - `output_tag` (hook output, priority mangle): a new connection from a local pod's cgroup gets
//!   that pod's number as its conntrack mark (0 = a host process);
//! - `output` (hook output): established, failsafe ports, then per-pod egress chains
//!   `out_<n>` by ct mark; a socket under the kubelet's cgroups with no known pod is denied;
//!   host processes go through `out_host`. Egress chains first drop connections to pods on
//!   other nodes whose ingress policies do not admit the sender (the receiver sees only the
//!   node's address), then apply the sender's own egress policies;
//! - `input` (hook input): established, failsafe ports, then the receiving socket's cgroup picks
//!   the local pod's ingress chain `in_<n>`; unknown pods are denied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::cgroup::CgroupRef;
use crate::model::{Config, Mode, Snapshot, node_addresses};
use crate::select;

/// Layer 4 protocols a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A port a container declares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortDecl {
    name: Option<String>,
    port: u16,
    proto: Proto,
}

/// A pod as the compiler sees it.
#[derive(Debug, Clone)]
struct PodInfo {
    key: String,
    ns: String,
    uid: String,
    node: String,
    labels: BTreeMap<String, String>,
    host_network: bool,
    ips: Vec<IpAddr>,
    ports: Vec<PortDecl>,
}

/// Who opens a connection.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Pod(&'a PodInfo),
    /// A host process (not a pod) on the named node.
    Host(&'a str),
}

/// The cgroups the resolver found on this node.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// Pod UID to its cgroup.
    pub pods: BTreeMap<String, CgroupRef>,
    /// The kubelet's top cgroups that exist (`kubepods.slice`, `kubepods`).
    pub roots: Vec<CgroupRef>,
}

/// Figures about one compiled ruleset.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Rules in the table.
    pub rules: usize,
    /// Pods in the snapshot (running or pending, scheduled).
    pub pods: usize,
    /// Host-network pods on this node.
    pub local_pods: usize,
    /// Local host-network pods whose cgroup is not there yet (denied until it is).
    pub unresolved_pods: usize,
    pub policies: usize,
}

/// A compiled ruleset: the `nft -f` text, its figures and what could not be enforced.
#[derive(Debug, Clone, Serialize)]
pub struct Ruleset {
    pub text: String,
    pub stats: Stats,
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    pods: Vec<PodInfo>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    policies: Vec<&'a NetworkPolicy>,
    node_addrs: BTreeMap<String, Vec<IpAddr>>,
    warnings: BTreeSet<String>,
}

fn pod_info(p: &Pod) -> Option<PodInfo> {
    let meta = &p.metadata;
    let spec = p.spec.as_ref()?;
    let node = spec.node_name.clone()?;
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed"))
        || meta.deletion_timestamp.is_some() && phase.is_none()
    {
        return None;
    }
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let mut ips: Vec<IpAddr> = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|i| i.parse().ok())
    {
        ips.push(ip);
    }
    ips.sort_unstable();
    ips.dedup();
    let mut ports = Vec::new();
    for c in &spec.containers {
        for cp in c.ports.iter().flatten() {
            let proto = match cp.protocol.as_deref() {
                None | Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                _ => continue,
            };
            if let Ok(port) = u16::try_from(cp.container_port) {
                ports.push(PortDecl {
                    name: cp.name.clone(),
                    port,
                    proto,
                });
            }
        }
    }
    Some(PodInfo {
        key: format!("{ns}/{name}"),
        ns,
        uid: meta.uid.clone().unwrap_or_default(),
        node,
        labels: meta.labels.clone().unwrap_or_default(),
        host_network: spec.host_network.unwrap_or(false),
        ips,
        ports,
    })
}

fn policy_key(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// (ingress, egress) types of a policy, defaulted as the API does.
fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
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

/// A port range of one protocol; `None` range = every port of that protocol.
type PortSpec = (Proto, Option<(u16, u16)>);

impl<'a> Ctx<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let mut pods: Vec<PodInfo> = snap.pods.iter().filter_map(pod_info).collect();
        pods.sort_by(|a, b| a.key.cmp(&b.key));
        let ns_labels = snap
            .namespaces
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .map(|(n, mut l)| {
                l.entry("kubernetes.io/metadata.name".into())
                    .or_insert_with(|| n.clone());
                (n, l)
            })
            .collect();
        let mut policies: Vec<&NetworkPolicy> = snap.policies.iter().collect();
        policies.sort_by_key(|p| policy_key(p));
        let node_addrs = snap
            .nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, node_addresses(n))))
            .collect();
        Ctx {
            pods,
            ns_labels,
            policies,
            node_addrs,
            warnings: BTreeSet::new(),
        }
    }

    fn warn(&mut self, w: String) {
        self.warnings.insert(w);
    }

    fn selects(&self, p: &NetworkPolicy, pod: &PodInfo) -> bool {
        let Some(spec) = &p.spec else { return false };
        p.metadata.namespace.as_deref().unwrap_or("default") == pod.ns
            && select::matches(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels)
    }

    /// The policies that select `pod` for ingress (or egress).
    fn policies_for(&self, pod: &PodInfo, egress: bool) -> Vec<&'a NetworkPolicy> {
        self.policies
            .iter()
            .copied()
            .filter(|p| {
                let (i, e) = policy_types(p);
                (if egress { e } else { i }) && self.selects(p, pod)
            })
            .collect()
    }

    /// Whether a peer's pod selection (podSelector/namespaceSelector) picks `pod`.
    fn peer_selects(&self, policy_ns: &str, peer: &NetworkPolicyPeer, pod: &PodInfo) -> bool {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return false;
        }
        let ns_ok = match &peer.namespace_selector {
            None => pod.ns == policy_ns,
            Some(s) => self
                .ns_labels
                .get(&pod.ns)
                .is_some_and(|l| select::matches(s, l)),
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| select::matches(s, &pod.labels))
    }

    /// The addresses traffic from (or to) `pod` carries, as another node sees them.
    fn pod_addrs(&self, pod: &PodInfo) -> Vec<IpAddr> {
        if pod.host_network {
            let mut a = self.node_addrs.get(&pod.node).cloned().unwrap_or_default();
            a.extend(pod.ips.iter().copied());
            a.sort_unstable();
            a.dedup();
            a
        } else {
            pod.ips.clone()
        }
    }

    fn source_addrs(&self, s: Source<'_>) -> Vec<IpAddr> {
        match s {
            Source::Pod(p) => self.pod_addrs(p),
            Source::Host(n) => self.node_addrs.get(n).cloned().unwrap_or_default(),
        }
    }

    /// A policy's port list as ranges, resolving named ports against `target`'s declared ports.
    fn port_specs(
        &mut self,
        pol: &str,
        ports: Option<&Vec<NetworkPolicyPort>>,
        target: Option<&PodInfo>,
    ) -> Option<Vec<PortSpec>> {
        let ports = ports.filter(|p| !p.is_empty())?;
        let mut out = Vec::new();
        for p in ports {
            let proto = match p.protocol.as_deref() {
                None | Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                Some(other) => {
                    self.warn(format!(
                        "{pol}: protocol {other} is not supported; that port allows nothing"
                    ));
                    continue;
                }
            };
            match &p.port {
                None => out.push((proto, None)),
                Some(IntOrString::Int(n)) => {
                    let Ok(lo) = u16::try_from(*n) else { continue };
                    let hi = p
                        .end_port
                        .and_then(|e| u16::try_from(e).ok())
                        .unwrap_or(lo)
                        .max(lo);
                    out.push((proto, Some((lo, hi))));
                }
                Some(IntOrString::String(name)) => {
                    if let Some(t) = target {
                        for d in t
                            .ports
                            .iter()
                            .filter(|d| d.proto == proto && d.name.as_deref() == Some(name))
                        {
                            out.push((proto, Some((d.port, d.port))));
                        }
                    }
                }
            }
        }
        Some(out)
    }

    fn ip_in_block(&mut self, pol: &str, peer: &NetworkPolicyPeer, addrs: &[IpAddr]) -> bool {
        let Some(b) = &peer.ip_block else {
            return false;
        };
        let Ok(cidr) = b.cidr.parse::<IpNet>() else {
            self.warn(format!(
                "{pol}: ipBlock cidr {:?} is not a CIDR; it matches nothing",
                b.cidr
            ));
            return false;
        };
        let except: Vec<IpNet> = b
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse().ok())
            .collect();
        addrs
            .iter()
            .any(|a| cidr.contains(a) && !except.iter().any(|e| e.contains(a)))
    }

    /// Whether `dst`'s ingress policies admit `src` on (proto, port).
    fn ingress_allows(&mut self, dst: &PodInfo, src: Source<'_>, proto: Proto, port: u16) -> bool {
        let pols = self.policies_for(dst, false);
        if pols.is_empty() {
            return true;
        }
        let src_addrs = self.source_addrs(src);
        for p in pols {
            let key = policy_key(p);
            let pns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            for rule in p
                .spec
                .as_ref()
                .and_then(|s| s.ingress.as_ref())
                .into_iter()
                .flatten()
            {
                let port_ok = match self.port_specs(&key, rule.ports.as_ref(), Some(dst)) {
                    None => true,
                    Some(specs) => specs.iter().any(|(pr, r)| {
                        *pr == proto && r.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
                    }),
                };
                if !port_ok {
                    continue;
                }
                let from = rule.from.as_deref().unwrap_or_default();
                if from.is_empty() {
                    return true;
                }
                for peer in from {
                    if self.ip_in_block(&key, peer, &src_addrs) {
                        return true;
                    }
                    if let Source::Pod(s) = src
                        && self.peer_selects(&pns, peer, s)
                    {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// A comment, quoted and cut to fit nft's 128-byte limit.
fn q(s: &str) -> String {
    let mut clean = String::new();
    for c in s.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')) {
        if clean.len() + c.len_utf8() > 120 {
            break;
        }
        clean.push(c);
    }
    format!("\"{clean}\"")
}

/// A cgroup path, quoted whole: nft resolves it to the cgroup's id, so a cut path names no
/// cgroup and nft refuses the whole batch (a hybrid host's `unified/` prefix under a longer
/// cgroup root took the kubelet's paths past the 120 characters comments are cut to).
fn q_path(s: &str) -> String {
    format!("\"{s}\"")
}

fn set_of<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.len() == 1 {
        v[0].clone()
    } else {
        format!("{{ {} }}", v.join(", "))
    }
}

fn range_str((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// `tcp dport 80` / `udp dport { 53, 1000-2000 }` / `meta l4proto tcp` / `""` for "any".
fn ports_expr(specs: &[PortSpec]) -> Vec<String> {
    let mut by_proto: BTreeMap<Proto, Vec<Option<(u16, u16)>>> = BTreeMap::new();
    for (p, r) in specs {
        by_proto.entry(*p).or_default().push(*r);
    }
    by_proto
        .into_iter()
        .map(|(p, rs)| {
            if rs.iter().any(Option::is_none) {
                format!("meta l4proto {}", p.nft())
            } else {
                let merged = crate::model::merge_ranges(rs.into_iter().flatten().collect());
                format!(
                    "{} dport {}",
                    p.nft(),
                    set_of(merged.into_iter().map(range_str))
                )
            }
        })
        .collect()
}

/// `ip saddr { ... }` / `ip6 saddr { ... }` lines for the given networks, one per family.
fn addr_exprs(dir: &str, nets: &[IpNet]) -> Vec<String> {
    let v4: BTreeSet<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .map(net_str)
        .collect();
    let v6: BTreeSet<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)))
        .map(net_str)
        .collect();
    let mut out = Vec::new();
    if !v4.is_empty() {
        out.push(format!("ip {dir} {}", set_of(v4)));
    }
    if !v6.is_empty() {
        out.push(format!("ip6 {dir} {}", set_of(v6)));
    }
    out
}

fn net_str(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.trunc().to_string()
    }
}

fn host_nets(addrs: &[IpAddr]) -> Vec<IpNet> {
    addrs.iter().map(|a| IpNet::from(*a)).collect()
}

fn loopback() -> Vec<IpNet> {
    let v4 = ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).map(IpNet::V4);
    let v6 = IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    v4.into_iter().chain([v6]).map(|n| n.trunc()).collect()
}

/// One rule's match part for an ipBlock (`ip saddr 10.0.0.0/8 ip saddr != { ... }`).
fn ipblock_exprs(dir: &str, cidr: &IpNet, except: &[IpNet]) -> String {
    let fam = if matches!(cidr, IpNet::V4(_)) {
        "ip"
    } else {
        "ip6"
    };
    let ex: Vec<String> = except
        .iter()
        .filter(|e| std::mem::discriminant(*e) == std::mem::discriminant(cidr))
        .map(net_str)
        .collect();
    if ex.is_empty() {
        format!("{fam} {dir} {}", net_str(cidr))
    } else {
        format!(
            "{fam} {dir} {} {fam} {dir} != {}",
            net_str(cidr),
            set_of(ex)
        )
    }
}

struct Out {
    text: String,
    rules: usize,
}

impl Out {
    fn rule(&mut self, indent: &str, r: &str) {
        self.rules += 1;
        let _ = writeln!(self.text, "{indent}{r}");
    }
    fn line(&mut self, l: &str) {
        let _ = writeln!(self.text, "{l}");
    }
}

/// Compiles the snapshot into the table for this node.
pub fn compile(snap: &Snapshot, cfg: &Config, cg: &Cgroups) -> Ruleset {
    let mut cx = Ctx::new(snap);
    for p in &cx.policies.clone() {
        if let Some(s) = &p.spec {
            let mut sels = vec![s.pod_selector.clone().unwrap_or_default()];
            for peer in s
                .ingress
                .iter()
                .flatten()
                .flat_map(|r| r.from.iter().flatten())
                .chain(
                    s.egress
                        .iter()
                        .flatten()
                        .flat_map(|r| r.to.iter().flatten()),
                )
            {
                sels.extend(peer.pod_selector.clone());
                sels.extend(peer.namespace_selector.clone());
            }
            for w in sels.iter().flat_map(select::problems) {
                cx.warn(format!("{}: {w}", policy_key(p)));
            }
        }
    }
    let drop_v = match cfg.mode {
        Mode::Enforce => "counter name \"dropped\" drop".to_string(),
        Mode::Audit => {
            "counter name \"would_drop\" log prefix \"enforcer audit: \" level info accept"
                .to_string()
        }
    };
    let me = cfg.node_name.clone();
    let local: Vec<PodInfo> = cx
        .pods
        .iter()
        .filter(|p| p.node == me && p.host_network)
        .cloned()
        .collect();
    let unresolved = local
        .iter()
        .filter(|p| !cg.pods.contains_key(&p.uid))
        .count();
    let resolved: Vec<(usize, &PodInfo, &CgroupRef)> = local
        .iter()
        .filter_map(|p| cg.pods.get(&p.uid).map(|c| (p, c)))
        .enumerate()
        .map(|(i, (p, c))| (i + 1, p, c))
        .collect();
    let remote_isolated: Vec<PodInfo> = cx
        .pods
        .iter()
        .filter(|p| p.node != me && p.host_network && !cx.policies_for(p, false).is_empty())
        .cloned()
        .collect();

    let mut o = Out {
        text: String::new(),
        rules: 0,
    };
    o.line(&format!("table inet {} {{", cfg.table));
    o.line("  counter dropped { }");
    o.line("  counter would_drop { }");
    o.line(&format!(
        "  set failsafe_tcp {{ type inet_service; flags interval; elements = {{ {} }}; }}",
        cfg.failsafe_tcp
            .iter()
            .copied()
            .map(range_str)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !cfg.failsafe_udp.is_empty() {
        o.line(&format!(
            "  set failsafe_udp {{ type inet_service; flags interval; elements = {{ {} }}; }}",
            cfg.failsafe_udp
                .iter()
                .copied()
                .map(range_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // Per-level maps: cgroup -> ct mark, cgroup -> ingress verdict.
    let mut levels: BTreeMap<u32, Vec<(usize, &PodInfo, &CgroupRef)>> = BTreeMap::new();
    for r in &resolved {
        levels.entry(r.2.level).or_default().push(*r);
    }

    // Build chains first, to know which pods need one.
    let mut chains: Vec<(String, String, Vec<String>)> = Vec::new(); // (name, comment, rules)
    let mut in_verdict: BTreeMap<usize, String> = BTreeMap::new();
    let mut out_chain: BTreeMap<usize, String> = BTreeMap::new();

    let addr_of_local = |cx: &Ctx<'_>, p: &PodInfo| -> Vec<IpNet> {
        let mut n = host_nets(&cx.pod_addrs(p));
        if p.node == me && p.host_network {
            n.extend(loopback());
        }
        n
    };

    for (idx, pod, _) in &resolved {
        // Ingress.
        let pols = cx.policies_for(pod, false);
        if pols.is_empty() {
            in_verdict.insert(*idx, "accept".into());
        } else {
            let mut rules = vec!["iifname \"lo\" ct mark 0 accept comment \"node-local host process (kubelet probes)\"".to_string()];
            for p in pols {
                let key = policy_key(p);
                let pns = p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                for (ri, rule) in p
                    .spec
                    .as_ref()
                    .and_then(|s| s.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let specs = cx.port_specs(&key, rule.ports.as_ref(), Some(pod));
                    let pexprs: Vec<String> = match &specs {
                        None => vec![String::new()],
                        Some(s) if s.is_empty() => continue,
                        Some(s) => ports_expr(s),
                    };
                    let mut matches: Vec<String> = Vec::new();
                    let from = rule.from.as_deref().unwrap_or_default();
                    if from.is_empty() {
                        matches.push(String::new());
                    }
                    for peer in from {
                        if let Some(b) = &peer.ip_block {
                            match b.cidr.parse::<IpNet>() {
                                Ok(c) => {
                                    let ex: Vec<IpNet> = b
                                        .except
                                        .iter()
                                        .flatten()
                                        .filter_map(|e| e.parse().ok())
                                        .collect();
                                    matches.push(ipblock_exprs("saddr", &c, &ex));
                                }
                                Err(_) => cx.warn(format!(
                                    "{key}: ipBlock cidr {:?} is not a CIDR; it matches nothing",
                                    b.cidr
                                )),
                            }
                            continue;
                        }
                        let sel: Vec<&PodInfo> = cx
                            .pods
                            .iter()
                            .filter(|s| cx.peer_selects(&pns, peer, s))
                            .collect();
                        let marks: BTreeSet<usize> = resolved
                            .iter()
                            .filter(|(_, rp, _)| sel.iter().any(|s| s.uid == rp.uid))
                            .map(|(i, _, _)| *i)
                            .collect();
                        if !marks.is_empty() {
                            matches.push(format!("iifname \"lo\" ct mark {}", set_of(marks)));
                        }
                        let mut remote: Vec<IpNet> = Vec::new();
                        for s in sel.iter().filter(|s| s.node != me || !s.host_network) {
                            remote.extend(host_nets(&cx.pod_addrs(s)));
                        }
                        for a in addr_exprs("saddr", &remote) {
                            matches.push(format!("iifname != \"lo\" {a}"));
                        }
                    }
                    let c = q(&format!("{key} ingress[{ri}]"));
                    for m in &matches {
                        for pe in &pexprs {
                            let body = [m.as_str(), pe.as_str()]
                                .iter()
                                .filter(|s| !s.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(" ");
                            let body = if body.is_empty() {
                                String::new()
                            } else {
                                format!("{body} ")
                            };
                            rules.push(format!("{body}accept comment {c}"));
                        }
                    }
                }
            }
            rules.push(drop_v.clone());
            let name = format!("in_{idx}");
            in_verdict.insert(*idx, format!("jump {name}"));
            chains.push((name, pod.key.clone(), rules));
        }

        // Egress.
        let mut rules: Vec<String> = Vec::new();
        rules.extend(remote_denies(
            &mut cx,
            Source::Pod(pod),
            &remote_isolated,
            &drop_v,
        ));
        let epols = cx.policies_for(pod, true);
        if !epols.is_empty() {
            for p in epols {
                let key = policy_key(p);
                let pns = p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                for (ri, rule) in p
                    .spec
                    .as_ref()
                    .and_then(|s| s.egress.as_ref())
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let c = q(&format!("{key} egress[{ri}]"));
                    let to = rule.to.as_deref().unwrap_or_default();
                    // (destination match, target pod for named ports)
                    let mut dests: Vec<(String, Option<PodInfo>)> = Vec::new();
                    if to.is_empty() {
                        dests.push((String::new(), None));
                    }
                    for peer in to {
                        if let Some(b) = &peer.ip_block {
                            if let Ok(cn) = b.cidr.parse::<IpNet>() {
                                let ex: Vec<IpNet> = b
                                    .except
                                    .iter()
                                    .flatten()
                                    .filter_map(|e| e.parse().ok())
                                    .collect();
                                dests.push((ipblock_exprs("daddr", &cn, &ex), None));
                            } else {
                                cx.warn(format!(
                                    "{key}: ipBlock cidr {:?} is not a CIDR; it matches nothing",
                                    b.cidr
                                ));
                            }
                            continue;
                        }
                        let sel: Vec<PodInfo> = cx
                            .pods
                            .iter()
                            .filter(|s| cx.peer_selects(&pns, peer, s))
                            .cloned()
                            .collect();
                        let named = rule
                            .ports
                            .iter()
                            .flatten()
                            .any(|p| matches!(p.port, Some(IntOrString::String(_))));
                        if named {
                            for s in sel {
                                for a in addr_exprs("daddr", &addr_of_local(&cx, &s)) {
                                    dests.push((a, Some(s.clone())));
                                }
                            }
                        } else {
                            let mut nets: Vec<IpNet> = Vec::new();
                            for s in &sel {
                                nets.extend(addr_of_local(&cx, s));
                            }
                            for a in addr_exprs("daddr", &nets) {
                                dests.push((a, None));
                            }
                        }
                    }
                    for (d, target) in dests {
                        let specs = cx.port_specs(&key, rule.ports.as_ref(), target.as_ref());
                        let pexprs: Vec<String> = match &specs {
                            None => vec![String::new()],
                            Some(s) if s.is_empty() => continue,
                            Some(s) => ports_expr(s),
                        };
                        for pe in pexprs {
                            let body = [d.as_str(), pe.as_str()]
                                .iter()
                                .filter(|s| !s.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(" ");
                            let body = if body.is_empty() {
                                String::new()
                            } else {
                                format!("{body} ")
                            };
                            rules.push(format!("{body}accept comment {c}"));
                        }
                    }
                }
            }
            rules.push(drop_v.clone());
        }
        if !rules.is_empty() {
            let name = format!("out_{idx}");
            out_chain.insert(*idx, name.clone());
            chains.push((name, pod.key.clone(), rules));
        }
    }
    let host_rules = remote_denies(&mut cx, Source::Host(&me), &remote_isolated, &drop_v);

    for (lvl, pods) in &levels {
        let el: Vec<String> = pods
            .iter()
            .map(|(i, _, c)| format!("{} : {i}", q_path(&c.nft_path)))
            .collect();
        o.line(&format!(
            "  map mark_l{lvl} {{ typeof socket cgroupv2 level {lvl} : ct mark; elements = {{ {} }}; }}",
            el.join(", ")
        ));
        let el: Vec<String> = pods
            .iter()
            .map(|(i, _, c)| {
                format!(
                    "{} : {}",
                    q_path(&c.nft_path),
                    in_verdict.get(i).map(String::as_str).unwrap_or("accept")
                )
            })
            .collect();
        o.line(&format!(
            "  map ingress_l{lvl} {{ typeof socket cgroupv2 level {lvl} : verdict; elements = {{ {} }}; }}",
            el.join(", ")
        ));
    }
    if !out_chain.is_empty() {
        let el: Vec<String> = out_chain
            .iter()
            .map(|(i, n)| format!("{i} : jump {n}"))
            .collect();
        o.line(&format!(
            "  map egress {{ type mark : verdict; elements = {{ {} }}; }}",
            el.join(", ")
        ));
    }

    for (name, comment, rules) in &chains {
        o.line(&format!("  chain {name} {{"));
        o.line(&format!("    comment {}", q(comment)));
        let mut seen = BTreeSet::new();
        for r in rules.iter().filter(|r| seen.insert(r.as_str())) {
            o.rule("    ", r);
        }
        o.line("  }");
    }
    if !host_rules.is_empty() {
        o.line("  chain out_host {");
        o.line("    comment \"host processes of this node\"");
        for r in &host_rules {
            o.rule("    ", r);
        }
        o.line("  }");
    }

    o.line("  chain output_tag {");
    o.line("    type filter hook output priority mangle; policy accept;");
    for lvl in levels.keys().rev() {
        o.rule(
            "    ",
            &format!("ct state new ct mark set socket cgroupv2 level {lvl} map @mark_l{lvl}"),
        );
    }
    o.line("  }");

    let failsafe = |o: &mut Out| {
        o.rule("    ", "ct state established,related accept");
        o.rule("    ", "tcp dport @failsafe_tcp accept");
        if !cfg.failsafe_udp.is_empty() {
            o.rule("    ", "udp dport @failsafe_udp accept");
        }
    };
    o.line("  chain output {");
    o.line("    type filter hook output priority filter; policy accept;");
    failsafe(&mut o);
    if !out_chain.is_empty() {
        o.rule("    ", "ct mark vmap @egress");
    }
    for r in &cg.roots {
        o.rule(
            "    ",
            &format!(
                "ct mark 0 socket cgroupv2 level {} {} {drop_v} comment \"pod without rules yet\"",
                r.level,
                q_path(&r.nft_path)
            ),
        );
    }
    if !host_rules.is_empty() {
        o.rule("    ", "ct mark 0 jump out_host");
    }
    o.line("  }");

    o.line("  chain input {");
    o.line("    type filter hook input priority filter; policy accept;");
    failsafe(&mut o);
    for lvl in levels.keys().rev() {
        o.rule(
            "    ",
            &format!("socket cgroupv2 level {lvl} vmap @ingress_l{lvl}"),
        );
    }
    for r in &cg.roots {
        o.rule(
            "    ",
            &format!(
                "socket cgroupv2 level {} {} {drop_v} comment \"pod without rules yet\"",
                r.level,
                q_path(&r.nft_path)
            ),
        );
    }
    o.line("  }");
    o.line("}");

    Ruleset {
        text: o.text,
        stats: Stats {
            rules: o.rules,
            pods: cx.pods.len(),
            local_pods: local.len(),
            unresolved_pods: unresolved,
            policies: cx.policies.len(),
        },
        warnings: cx.warnings.into_iter().collect(),
    }
}

/// Drops for connections from `src` to isolated pods on other nodes that do not admit it, on
/// the ports those pods declare: one rule per (node, protocol).
fn remote_denies(
    cx: &mut Ctx<'_>,
    src: Source<'_>,
    remote: &[PodInfo],
    drop_v: &str,
) -> Vec<String> {
    let mut by_node: BTreeMap<(String, Proto), (BTreeSet<u16>, BTreeSet<String>)> = BTreeMap::new();
    for d in remote {
        for port in &d.ports {
            if !cx.ingress_allows(d, src, port.proto, port.port) {
                let e = by_node.entry((d.node.clone(), port.proto)).or_default();
                e.0.insert(port.port);
                e.1.insert(d.key.clone());
            }
        }
    }
    let mut out = Vec::new();
    for ((node, proto), (ports, pods)) in by_node {
        let addrs = host_nets(&cx.node_addrs.get(&node).cloned().unwrap_or_default());
        let c = q(&format!(
            "ingress of {}",
            pods.into_iter().collect::<Vec<_>>().join(",")
        ));
        let ranges = crate::model::merge_ranges(ports.into_iter().map(|p| (p, p)).collect());
        for a in addr_exprs("daddr", &addrs) {
            out.push(format!(
                "{a} {} dport {} {drop_v} comment {c}",
                proto.nft(),
                set_of(ranges.iter().copied().map(range_str))
            ));
        }
    }
    out
}
