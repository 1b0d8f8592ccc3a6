//! The probe matrix's live half (issue 12, item 6): every cell of [`super::matrix::expected`]
//! checked with real TCP connections made as its source, between every pair of nodes where it
//! applies, then compared with the expectation.
//!
//! How each source connects (the same on real k3s and in the lab):
//! - a workload: a short-lived shell on the node of one of its pods, moved into a container
//!   cgroup of that pod (`cgroup.procs`), so its sockets carry the pod's cgroup, which is what the
//!   enforcer identifies pods by; one source pod per node, to one destination pod per node;
//! - outside: the workstation itself, with a 2 s connect timeout;
//! - a host process on the destination's node, or on each other node: a shell there, in the
//!   login's own cgroup.
//!
//! Only TCP is probed: a UDP send has no handshake to observe, so UDP cells are shown as not
//! probed. A connection that opens is `open`; one refused or timed out (the enforcer drops) is
//! denied. The gate fails on any difference, and in `enforce` mode also unless at least one
//! expected deny was seen denied (a matrix of allows proves nothing about the enforcer). In
//! `audit` mode nothing is dropped by design: an expected deny seen open is shown, not failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;

use super::matrix::{Addresses, Cell, Namespaces, Source, Verdict, Workload, expected};
use crate::host::{Remote, RemoteCommand, shell_quote};
use crate::kube::Cluster;
use crate::phases::ConnectedHost;

/// Differences named one by one in the gate's error (the rest are counted).
const MAX_SHOWN: usize = 12;

/// How long one probe waits for its connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One running, ready pod of a workload and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub workload: String,
    pub node: String,
    /// The node's address (the pods are on the host network).
    pub address: IpAddr,
    pub uid: String,
}

/// The pods of `workloads` among `pods`: running, ready, not being deleted, and one per
/// (workload, node), the first by name. A pod belongs to a workload when it is in its namespace
/// and carries every label of its pod template.
pub fn places(workloads: &[Workload], pods: &[Pod]) -> Vec<Place> {
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: Vec<Place> = Vec::new();
    for w in workloads {
        if w.labels.is_empty() {
            continue;
        }
        for p in &sorted {
            if p.metadata.namespace.as_deref() != Some(w.namespace.as_str())
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let labels = p.metadata.labels.clone().unwrap_or_default();
            if !w.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let Some(status) = &p.status else { continue };
            let ready = status.phase.as_deref() == Some("Running")
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let address = status
                .host_ip
                .as_deref()
                .or(status.pod_ip.as_deref())
                .and_then(|a| a.parse::<IpAddr>().ok());
            let (Some(node), Some(address), Some(uid), true) =
                (node, address, p.metadata.uid.clone(), ready)
            else {
                continue;
            };
            if out.iter().any(|o| o.workload == w.name && o.node == node) {
                continue;
            }
            out.push(Place {
                workload: w.name.clone(),
                node,
                address,
                uid,
            });
        }
    }
    out
}

/// Where a probe's connection starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// In a container cgroup of the pod with this UID, on `node`.
    Pod { node: String, uid: String },
    /// A shell on `node` that is not in any pod.
    Host { node: String },
    /// The workstation.
    Workstation,
}

impl Origin {
    /// The node the probe runs on (None: the workstation).
    pub fn node(&self) -> Option<&str> {
        match self {
            Origin::Pod { node, .. } | Origin::Host { node } => Some(node),
            Origin::Workstation => None,
        }
    }
}

/// One connection to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Index of its cell.
    pub cell: usize,
    pub origin: Origin,
    pub to_node: String,
    pub to: SocketAddr,
}

/// The connections that check `cells`: for a workload source, from each node that runs one
/// of its pods to each node that runs the destination; outside, from the workstation to each;
/// a host process, on the destination's node and on every other node. `nodes` are the
/// cluster's node names.
pub fn plan(cells: &[Cell], places: &[Place], nodes: &[String]) -> Vec<Probe> {
    let mut out = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        if c.protocol != "TCP" {
            continue;
        }
        for dest in places.iter().filter(|p| p.workload == c.destination) {
            let to = SocketAddr::new(dest.address, c.port);
            let mut push = |origin: Origin| {
                out.push(Probe {
                    cell: i,
                    origin,
                    to_node: dest.node.clone(),
                    to,
                })
            };
            match &c.source {
                Source::Workload(w) => {
                    for src in places.iter().filter(|p| &p.workload == w) {
                        push(Origin::Pod {
                            node: src.node.clone(),
                            uid: src.uid.clone(),
                        });
                    }
                }
                Source::Outside => push(Origin::Workstation),
                Source::HostSameNode => push(Origin::Host {
                    node: dest.node.clone(),
                }),
                Source::HostOtherNode => {
                    for n in nodes.iter().filter(|n| **n != dest.node) {
                        push(Origin::Host { node: n.clone() });
                    }
                }
            }
        }
    }
    out
}

/// What one connection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Open,
    Refused,
    /// No answer within [`CONNECT_TIMEOUT`] (what a drop looks like).
    TimedOut,
    /// The probe could not be made as its source (the reason).
    NotMade(String),
}

impl Seen {
    pub fn denied(&self) -> bool {
        matches!(self, Seen::Refused | Seen::TimedOut)
    }
}

/// The script that makes `probes` (indexes into the list the caller keeps) on one node, all at
/// once, each printing `<index> <bash exit status>` or `<index> nocgroup`. Needs root (it moves
/// shells into pod cgroups) and bash (`/dev/tcp`, as preflight's reachability check).
pub fn node_script(probes: &[(usize, &Probe)]) -> String {
    let secs = CONNECT_TIMEOUT.as_secs();
    // POSIX sh (the login shell runs it); bash only for `/dev/tcp`. The connecting process is
    // a fresh `sh` that moves itself (`$$`) into the pod's cgroup, then execs the connection.
    let mut s = String::from(
        r#"cg=/sys/fs/cgroup; [ -f "$cg/cgroup.controllers" ] || cg=/sys/fs/cgroup/unified
leaf() {
  u=$(printf %s "$1" | tr - _)
  d=$(find "$cg"/kubepods* -maxdepth 4 -type d \( -name "*pod$u.slice" -o -name "pod$1" \) -print -quit 2>/dev/null)
  [ -n "$d" ] || return 1
  c=$(find "$d" -mindepth 1 -maxdepth 1 -type d -print -quit)
  printf %s "${c:-$d}"
}
p() {
  (
    l=
    if [ -n "$2" ]; then l=$(leaf "$2") || { echo "$1 nocgroup"; exit 0; }; fi
    sh -c 'if [ -n "$0" ]; then echo $$ > "$0/cgroup.procs" 2>/dev/null || exit 99; fi
      exec timeout SECS bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null' "$l" "$3" "$4"
    r=$?
    if [ "$r" = 99 ]; then echo "$1 nocgroup"; else echo "$1 $r"; fi
  ) &
}
"#,
    );
    for (i, p) in probes {
        let uid = match &p.origin {
            Origin::Pod { uid, .. } => uid.as_str(),
            _ => "",
        };
        let _ = writeln!(
            s,
            "p {i} {} {} {}",
            shell_quote(uid),
            shell_quote(&p.to.ip().to_string()),
            p.to.port()
        );
    }
    s.push_str("wait\n");
    s.replace("SECS", &secs.to_string())
}

/// Reads [`node_script`]'s output: index → what was seen. An index missing from the output is
/// left out (the caller reports it as not made).
pub fn parse(output: &str) -> BTreeMap<usize, Seen> {
    let mut out = BTreeMap::new();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        let (Some(i), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else { continue };
        let seen = match what {
            "0" => Seen::Open,
            "124" => Seen::TimedOut,
            "nocgroup" => Seen::NotMade("its pod's cgroup was not found on the node".into()),
            _ => Seen::Refused,
        };
        out.insert(i, seen);
    }
    out
}

/// One probe's result, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub probe: Probe,
    pub seen: Seen,
}

/// The matrix checked: each cell's observations and whether they agree.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub cells: Vec<Cell>,
    pub observations: Vec<Observation>,
    /// The enforcer runs in `audit` mode (it drops nothing).
    pub audit: bool,
}

/// How a cell came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellResult {
    /// Every connection did what the policies say.
    Agrees,
    /// Nothing to probe (UDP, or no other node).
    NotProbed,
    /// An expected deny was seen open in `audit` mode (it would be dropped in `enforce`).
    WouldDeny,
    /// Some connection did not do what the policies say (or could not be made).
    Differs,
}

impl Checked {
    pub fn cell_result(&self, i: usize) -> CellResult {
        let obs: Vec<&Observation> = self
            .observations
            .iter()
            .filter(|o| o.probe.cell == i)
            .collect();
        if obs.is_empty() {
            return CellResult::NotProbed;
        }
        let want = self.cells[i].verdict;
        let mut would = false;
        for o in obs {
            match (&o.seen, want) {
                (Seen::Open, Verdict::Allow) => {}
                (s, Verdict::Deny) if s.denied() => {}
                (Seen::Open, Verdict::Deny) if self.audit => would = true,
                _ => return CellResult::Differs,
            }
        }
        if would {
            CellResult::WouldDeny
        } else {
            CellResult::Agrees
        }
    }

    /// Connections counted: (made, expected denies seen denied).
    pub fn counts(&self) -> (usize, usize) {
        let made = self
            .observations
            .iter()
            .filter(|o| !matches!(o.seen, Seen::NotMade(_)))
            .count();
        let denied = self
            .observations
            .iter()
            .filter(|o| self.cells[o.probe.cell].verdict == Verdict::Deny && o.seen.denied())
            .count();
        (made, denied)
    }

    /// Every difference, one line each: the source, where from, the destination, what the
    /// policies say and what happened.
    pub fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.observations {
            let c = &self.cells[o.probe.cell];
            let bad = match (&o.seen, c.verdict) {
                (Seen::Open, Verdict::Allow) => false,
                (s, Verdict::Deny) if s.denied() => false,
                (Seen::Open, Verdict::Deny) => !self.audit,
                _ => true,
            };
            if !bad {
                continue;
            }
            let from = match &o.probe.origin {
                Origin::Pod { node, .. } | Origin::Host { node } => format!(" on {node}"),
                Origin::Workstation => String::new(),
            };
            let seen = match &o.seen {
                Seen::Open => "it connected".to_string(),
                Seen::Refused => "it was refused".to_string(),
                Seen::TimedOut => {
                    format!("it got no answer within {} s", CONNECT_TIMEOUT.as_secs())
                }
                Seen::NotMade(why) => format!("the probe could not be made: {why}"),
            };
            let want = match c.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
            };
            out.push(format!(
                "{}{from} -> {} {}:{}/{} on {}: the policies {want} it, {seen}",
                c.source,
                c.destination,
                o.probe.to.ip(),
                c.port,
                c.protocol,
                o.probe.to_node
            ));
        }
        out
    }

    /// Whether the gate passes: no difference, and in `enforce` mode at least one expected
    /// deny seen denied. `Err` says why not.
    pub fn verdict(&self) -> Result<(), String> {
        let diffs = self.differences();
        if !diffs.is_empty() {
            let n = diffs.len();
            let mut shown = diffs[..n.min(MAX_SHOWN)].join("\n  ");
            if n > MAX_SHOWN {
                let _ = write!(
                    shown,
                    "\n  … and {} more (the table above shows every cell)",
                    n - MAX_SHOWN
                );
            }
            return Err(format!(
                "{n} connection{} did not do what the NetworkPolicies say:\n  {shown}",
                if n == 1 { "" } else { "s" },
            ));
        }
        let (made, denied) = self.counts();
        if made == 0 {
            return Err("no probe of the matrix could be made".into());
        }
        if !self.audit && denied == 0 {
            return Err(
                "no connection the NetworkPolicies deny was probed and seen denied: a matrix of allows \
                 would not notice an enforcer that lets everything through"
                    .into(),
            );
        }
        Ok(())
    }

    /// The table: one row per source, one column per destination port; each cell the
    /// policies' verdict when every connection agreed, `DIFFERS (want …)` when one did not,
    /// `would deny` in audit mode, `-` when not probed.
    pub fn render(&self) -> String {
        let mut columns: Vec<String> = Vec::new();
        let mut rows: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for (i, c) in self.cells.iter().enumerate() {
            let col = format!("{}:{}/{}", c.destination, c.port, c.protocol);
            if !columns.contains(&col) {
                columns.push(col.clone());
            }
            let want = match c.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
            };
            let text = match self.cell_result(i) {
                CellResult::Agrees => want.to_string(),
                CellResult::NotProbed => "-".to_string(),
                CellResult::WouldDeny => "would deny".to_string(),
                CellResult::Differs => format!("DIFFERS (want {want})"),
            };
            let src = c.source.to_string();
            match rows.iter_mut().find(|(s, _)| *s == src) {
                Some((_, r)) => {
                    r.insert(col, text);
                }
                None => rows.push((src, BTreeMap::from([(col, text)]))),
            }
        }
        let first = rows
            .iter()
            .map(|(s, _)| s.len())
            .chain(["from \\ to".len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| {
                rows.iter()
                    .filter_map(|(_, r)| r.get(c).map(String::len))
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        let _ = write!(s, "{:first$}", "from \\ to");
        for (c, w) in columns.iter().zip(&widths) {
            let _ = write!(s, "  {c:w$}");
        }
        s.push('\n');
        for (src, r) in &rows {
            let _ = write!(s, "{src:first$}");
            for (c, w) in columns.iter().zip(&widths) {
                let v = r.get(c).map(String::as_str).unwrap_or("");
                let _ = write!(s, "  {v:w$}");
            }
            s.push('\n');
        }
        s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
    }
}

/// Checks the matrix on the running cluster: its namespaces and the workloads' pods read from
/// the API, the expectation computed, every probe made (each node's at once, over SSH as root;
/// the workstation's directly), the observations gathered. `Err` only when the matrix cannot be
/// computed; probes that cannot be made are observations ([`Seen::NotMade`]).
///
/// "A host process on another node" is expected from the address of the second host (the first
/// when there is one): the appliance's policies treat every node's address alike.
pub async fn check(
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    workloads: &[Workload],
    policies: &[NetworkPolicy],
    audit: bool,
) -> Result<Checked, String> {
    let client = cluster.client().clone();
    let namespaces: Namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces: {e}"))?
        .items
        .into_iter()
        .filter_map(|n| Some((n.metadata.name?, n.metadata.labels.unwrap_or_default())))
        .collect();
    let mut pods = Vec::new();
    let mut seen_ns: Vec<&str> = Vec::new();
    for w in workloads {
        if seen_ns.contains(&w.namespace.as_str()) {
            continue;
        }
        seen_ns.push(&w.namespace);
        let list = Api::<Pod>::namespaced(client.clone(), &w.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing the pods of namespace {}: {e}", w.namespace))?;
        pods.extend(list.items);
    }
    let places = places(workloads, &pods);
    let outside = match hosts.first() {
        Some(h) => {
            let cmd = RemoteCommand::new("printf %s \"${SSH_CONNECTION%% *}\"")
                .timeout(Duration::from_secs(15));
            match h.remote.exec(cmd).await {
                Ok(o) if o.success() => o.stdout_str().trim().parse::<IpAddr>().ok(),
                _ => None,
            }
        }
        None => None,
    };
    let addresses = Addresses {
        outside,
        other_node: hosts.get(1).or(hosts.first()).map(|h| h.node_ip),
    };
    let cells = expected(workloads, workloads, policies, &namespaces, addresses);
    let nodes: Vec<String> = hosts.iter().map(|h| h.node_name.clone()).collect();
    let probes = plan(&cells, &places, &nodes);
    let mut by_node: BTreeMap<Option<&str>, Vec<(usize, &Probe)>> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        by_node.entry(p.origin.node()).or_default().push((i, p));
    }
    let runs = by_node.iter().map(|(node, list)| async move {
        let Some(node) = node else {
            return from_workstation(list).await;
        };
        let Some(h) = hosts.iter().find(|h| h.node_name == *node) else {
            return BTreeMap::new();
        };
        let cmd = RemoteCommand::new(node_script(list))
            .sudo()
            .quiet_output()
            .timeout(CONNECT_TIMEOUT + Duration::from_secs(30));
        match h.remote.exec(cmd).await {
            Ok(o) => parse(&o.stdout_str()),
            Err(_) => BTreeMap::new(),
        }
    });
    let mut seen: BTreeMap<usize, Seen> = BTreeMap::new();
    for part in futures::future::join_all(runs).await {
        seen.extend(part);
    }
    let observations = probes
        .into_iter()
        .enumerate()
        .map(|(i, probe)| {
            let seen = seen.remove(&i).unwrap_or_else(|| {
                Seen::NotMade(match probe.origin.node() {
                    Some(n) => format!("no answer from {n}'s probe script"),
                    None => "no answer".into(),
                })
            });
            Observation { probe, seen }
        })
        .collect();
    Ok(Checked {
        cells,
        observations,
        audit,
    })
}

/// Makes the workstation's probes (direct TCP connections, all at once).
pub async fn from_workstation(probes: &[(usize, &Probe)]) -> BTreeMap<usize, Seen> {
    let tries = probes.iter().map(|(i, p)| async move {
        let seen = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(p.to))
            .await
        {
            Ok(Ok(_)) => Seen::Open,
            Ok(Err(_)) => Seen::Refused,
            Err(_) => Seen::TimedOut,
        };
        (*i, seen)
    });
    futures::future::join_all(tries).await.into_iter().collect()
}

#[cfg(test)]
mod tests;
