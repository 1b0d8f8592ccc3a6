//! `enforcer`: the host-network policy enforcer (docs/enforcer.md), deployed before the
//! application, and the appliance's NetworkPolicies (`templates/app/policies/`).
//!
//! Every node registers with the installer's `NoSchedule` taint ([`TAINT`], k3s `node-taint`)
//! that the application does not tolerate; the enforcer removes it from its own node once its
//! rules are applied. The gate: the DaemonSet rolled out (a Ready pod on every node, watch-driven,
//! with the rollout gate's early give-up), then every node's `/state` read over SSH on the node's
//! loopback (the endpoint listens on `127.0.0.1` only, which the API server's pod proxy cannot
//! reach: it dials the pod IP, the node's address) reports its rules applied and the taint gone,
//! and the Node object no longer shows it. A failure names each node, its enforcer pod's state,
//! the enforcer's own last error and its last log lines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::app::{Prepared, outcome};
use super::context::ConnectedHost;
use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError};
use crate::app::{self, App, AppError, Bundle, ClusterFacts, render};
use crate::config::plan::EnforcerMode;
use crate::host::{Remote, RemoteCommand, shell_quote};
use crate::kube::Cluster;
use crate::kube::manifest::Manifests;
use crate::kube::rollout::{WorkloadId, WorkloadKind};
use crate::report::events::Reporter;

pub use crate::k3s::config::ENFORCER_TAINT as TAINT;

/// Where the enforcer runs.
pub const NAMESPACE: &str = "kube-system";
/// Its DaemonSet (and ServiceAccount, ClusterRole, pod label `app.kubernetes.io/name`).
pub const NAME: &str = "installer-enforcer";
/// Its image: an `app-images` entry of `assets/assets.lock` carries it (a unit test checks).
pub const IMAGE: &str = "localhost/installer-enforcer:0.1.0";
/// The state endpoint's port on each node's loopback.
pub const STATE_PORT: u16 = 9648;
/// How often a node whose state is not there yet is asked again (over SSH: nothing to watch).
pub const STATE_EVERY: Duration = Duration::from_millis(500);
/// Log lines of a failing enforcer quoted in the error.
pub const LOG_LINES: i64 = 8;

const TEMPLATE: &str = "enforcer.yaml.tera";
const POLICIES_DIR: &str = "policies/";

/// The mode as the enforcer spells it.
pub fn mode_str(mode: EnforcerMode) -> &'static str {
    match mode {
        EnforcerMode::Enforce => "enforce",
        EnforcerMode::Audit => "audit",
    }
}

/// What the enforcer's manifests are rendered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: EnforcerMode,
    /// Every SSH port the installer uses (always open on every node).
    pub ssh_ports: Vec<u16>,
    /// The cluster services' ports (CoreDNS), always open.
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

impl Settings {
    /// For this cluster: the cluster services' declared ports from their rendered manifests.
    pub fn new(
        mode: EnforcerMode,
        ssh_ports: impl IntoIterator<Item = u16>,
        facts: &ClusterFacts,
    ) -> Result<Settings, AppError> {
        let services = app::dns::render(facts)?;
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for (port, protocol) in app::validate::declared_ports(&services).into_keys() {
            match protocol.as_str() {
                "UDP" => udp.push(port),
                _ => tcp.push(port),
            }
        }
        let mut ssh: Vec<u16> = ssh_ports.into_iter().collect();
        ssh.sort_unstable();
        ssh.dedup();
        Ok(Settings {
            mode,
            ssh_ports: ssh,
            tcp_ports: tcp,
            udp_ports: udp,
        })
    }
}

/// Renders `templates/enforcer/` (ServiceAccount, RBAC, DaemonSet).
pub fn render(settings: &Settings) -> Result<Manifests, AppError> {
    render_bundle(&Bundle::enforcer(), settings)
}

/// [`render`] from another bundle (tests).
pub fn render_bundle(bundle: &Bundle, settings: &Settings) -> Result<Manifests, AppError> {
    let engine = render::engine(bundle.files(), bundle.root())?;
    // The first SSH port is the enforcer's `--ssh-port`; 22 and the others are failsafe too.
    let ssh_port = settings.ssh_ports.first().copied().unwrap_or(22);
    let mut extra_tcp: Vec<u16> = settings.ssh_ports.iter().skip(1).copied().collect();
    extra_tcp.extend(&settings.tcp_ports);
    let ctx = serde_json::json!({
        "enforcer": {
            "namespace": NAMESPACE,
            "image": IMAGE,
            "mode": mode_str(settings.mode),
            "sshPort": ssh_port,
            "extraTcpPorts": extra_tcp,
            "extraUdpPorts": settings.udp_ports,
            "statePort": STATE_PORT,
            "taint": TAINT,
        }
    });
    let text = render::render_one(&engine, bundle.root(), TEMPLATE, &ctx)?;
    let items = render::parse_documents(&format!("{}/{TEMPLATE}", bundle.root()), &text)?;
    Ok(Manifests { items })
}

/// Renders the application's policies (`templates/app/policies/*.yaml.tera`) with the
/// application's context; every object must be a NetworkPolicy in the application's
/// namespace.
pub fn render_policies(app: &App) -> Result<Manifests, AppError> {
    render_policies_bundle(&Bundle::embedded(), app)
}

/// [`render_policies`] from another bundle (tests).
pub fn render_policies_bundle(bundle: &Bundle, app: &App) -> Result<Manifests, AppError> {
    let engine = render::engine(bundle.files(), bundle.root())?;
    let spec = app.spec();
    let ctx = serde_json::json!({
        "values": app.values().plain(),
        "cluster": app.facts().context()?,
        "app": {"name": spec.name, "namespace": spec.namespace},
    });
    let mut items = Vec::new();
    let names: Vec<&String> = bundle
        .files()
        .keys()
        .filter(|k| k.starts_with(POLICIES_DIR) && k.ends_with(".yaml.tera"))
        .collect();
    for name in names {
        let file = format!("{}/{name}", bundle.root());
        let text = render::render_one(&engine, bundle.root(), name, &ctx)?;
        for m in render::parse_documents(&file, &text)? {
            let ns = m.object["metadata"]["namespace"].as_str().unwrap_or("");
            if m.kind() != "NetworkPolicy" || ns != spec.namespace {
                return Err(AppError::Template {
                    file,
                    message: format!(
                        "{}: only NetworkPolicies in the application's namespace `{}` belong in policies/",
                        m.describe(),
                        spec.namespace
                    ),
                });
            }
            items.push(m);
        }
    }
    Ok(Manifests { items })
}

/// The part of the enforcer's `/state` the installer reads (docs/enforcer.md, "Reading its
/// state"); unknown fields are ignored so a newer enforcer still reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct EnforcerState {
    pub node: String,
    pub mode: String,
    pub ready: bool,
    pub synced: bool,
    pub adopted: bool,
    pub stats: Stats,
    pub last_apply_unix: Option<u64>,
    pub last_apply_ms: Option<f64>,
    pub applies: u64,
    pub apply_errors: u64,
    pub last_error: Option<String>,
    pub dropped_packets: u64,
    pub would_drop_packets: u64,
    pub warnings: Vec<String>,
    pub taint: Option<String>,
    pub taint_removed: bool,
    pub taint_error: Option<String>,
}

/// The enforcer's rule counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Stats {
    pub rules: u64,
    pub pods: u64,
    pub local_pods: u64,
    pub unresolved_pods: u64,
    pub policies: u64,
}

impl EnforcerState {
    /// `enforce, 42 rules, 9 pods, 6 policies, applied 12 s ago, 0 dropped`.
    pub fn summary(&self, now_unix: u64) -> String {
        let applied = match self.last_apply_unix {
            Some(t) => format!("applied {} s ago", now_unix.saturating_sub(t)),
            None => "never applied".into(),
        };
        let drops = if self.mode == "audit" {
            format!("{} would drop", self.would_drop_packets)
        } else {
            format!("{} dropped", self.dropped_packets)
        };
        format!(
            "{}, {} rules, {} pods, {} policies, {applied}, {drops}",
            self.mode, self.stats.rules, self.stats.pods, self.stats.policies
        )
    }
}

/// The script that prints the node's `/state` (python3, else curl, else perl), on the node's
/// loopback. Nothing secret goes in it.
pub fn state_script(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/state");
    let py = "import sys,urllib.request\nsys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())\n";
    let pl = r#"use IO::Socket::INET;my $s=IO::Socket::INET->new(PeerAddr=>"127.0.0.1",PeerPort=>$ARGV[0],Proto=>"tcp",Timeout=>5) or die "connect 127.0.0.1:$ARGV[0]: $!\n";
print $s "GET /state HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";local $/;my $r=<$s>;$r=~s/^.*?\r\n\r\n//s;print $r;"#;
    format!(
        "if command -v python3 >/dev/null 2>&1; then exec python3 -c {} {}; \
         elif command -v curl >/dev/null 2>&1; then exec curl -fsS --max-time 5 {}; \
         elif command -v perl >/dev/null 2>&1; then exec perl -e {} {port}; \
         else echo 'neither python3, curl nor perl is installed on this node' >&2; exit 127; fi",
        shell_quote(py),
        shell_quote(&url),
        shell_quote(&url),
        shell_quote(pl),
    )
}

/// Reads one node's enforcer state over SSH. `Err` says why not (nothing listening yet, no
/// tool, not JSON).
pub async fn read_state(remote: &dyn Remote, port: u16) -> Result<EnforcerState, String> {
    let cmd = RemoteCommand::new(state_script(port)).timeout(Duration::from_secs(15));
    let out = remote.exec(cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        let err = crate::host::tail(out.stderr_str().trim(), 2);
        return Err(if err.is_empty() {
            format!(
                "nothing answers on 127.0.0.1:{port} (exit status {:?})",
                out.status
            )
        } else {
            format!("nothing answers on 127.0.0.1:{port}: {err}")
        });
    }
    let text = out.stdout_str();
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "127.0.0.1:{port}/state is not the enforcer's state: {e}: {}",
            crate::host::tail(text.trim(), 1)
        )
    })
}

/// Where one node's enforcer stands, for the gate.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeVerdict {
    /// Rules applied, taint gone from the Node.
    Protected(Box<EnforcerState>),
    /// Not yet, and why.
    Waiting(String),
}

/// The gate's decision for one node from what its enforcer says and what the Node shows.
pub fn judge(
    state: &Result<EnforcerState, String>,
    node_tainted: bool,
    mode: EnforcerMode,
) -> NodeVerdict {
    let s = match state {
        Err(e) => return NodeVerdict::Waiting(format!("no state: {e}")),
        Ok(s) => s,
    };
    if !s.ready || s.last_apply_unix.is_none() {
        let why = s
            .last_error
            .as_deref()
            .map(|e| format!("no rules applied yet: {e}"))
            .unwrap_or_else(|| {
                if s.synced {
                    "no rules applied yet".into()
                } else {
                    "its watchers have not synced yet: it has not read the cluster from the Kubernetes API (the node's pods must reach the API servers' port 6443 through the `kubernetes` Service)".into()
                }
            });
        return NodeVerdict::Waiting(why);
    }
    if s.mode != mode_str(mode) {
        return NodeVerdict::Waiting(format!(
            "it runs in `{}` mode, the answer file asks for `{}` (its pod has not been replaced yet)",
            s.mode,
            mode_str(mode)
        ));
    }
    if node_tainted || !s.taint_removed {
        let why = s
            .taint_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return NodeVerdict::Waiting(format!(
            "rules applied, but the node still carries the taint {TAINT}{why}"
        ));
    }
    NodeVerdict::Protected(Box::new(s.clone()))
}

/// Whether the Node carries the installer's taint.
pub fn node_tainted(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TAINT))
}

/// The enforcer's pod on each node, by node name: (pod name, a one-line state).
pub fn pod_states(pods: &[k8s_openapi::api::core::v1::Pod]) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        out.insert(node, (name, pod_state(p)));
    }
    out
}

/// `Running, not ready`, `Pending: ErrImageNeverPull (...)`, `Running, ready, 2 restarts`.
pub fn pod_state(p: &k8s_openapi::api::core::v1::Pod) -> String {
    let Some(st) = &p.status else {
        return "no status yet".into();
    };
    let phase = st.phase.clone().unwrap_or_else(|| "Unknown".into());
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let mut parts = vec![format!(
        "{phase}, {}",
        if ready { "ready" } else { "not ready" }
    )];
    for c in st.container_statuses.iter().flatten() {
        if c.restart_count > 0 {
            parts.push(format!("{} restarts", c.restart_count));
        }
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_else(|| "waiting".into());
            match &w.message {
                Some(m) => parts.push(format!("{reason} ({})", crate::host::tail(m, 1))),
                None => parts.push(reason),
            }
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "last exit {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    parts.join(", ")
}

/// One node that is not protected, for the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprotected {
    pub node: String,
    pub why: String,
    /// `installer-enforcer-x7k2p: Running, not ready`, or that there is none.
    pub pod: String,
    pub log_tail: Vec<String>,
}

/// The gate's error: every unprotected node, its pod and its last log lines.
pub fn describe_failure(nodes: &[Unprotected], waited: Duration) -> String {
    let mut s = format!(
        "the policy enforcer did not protect {} node{} within {} s; no application pod is scheduled there:",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        waited.as_secs()
    );
    for n in nodes {
        s.push_str(&format!("\n  {}: {}; pod {}", n.node, n.why, n.pod));
        if n.log_tail.is_empty() {
            s.push_str("; no log lines");
        } else {
            s.push_str("; last log lines:");
            for l in &n.log_tail {
                s.push_str(&format!("\n    {l}"));
            }
        }
    }
    s
}

/// The gate's hint.
pub const HINT: &str = "the enforcer's image must be on every node (it is in the installer's payload) and the node's kernel must have nftables; `kubectl -n kube-system logs ds/installer-enforcer` and `installer support-bundle` show more; rerun the install once it is fixed (nothing of the application was deployed)";

/// The DaemonSet's workload id.
pub fn workload() -> WorkloadId {
    WorkloadId {
        kind: WorkloadKind::DaemonSet,
        namespace: NAMESPACE.into(),
        name: NAME.into(),
    }
}

async fn enforcer_pods(cluster: &Cluster) -> Vec<k8s_openapi::api::core::v1::Pod> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(cluster.client().clone(), NAMESPACE);
    let lp = kube::api::ListParams::default().labels(&format!("app.kubernetes.io/name={NAME}"));
    api.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

async fn log_tail(cluster: &Cluster, pod: &str) -> Vec<String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(cluster.client().clone(), NAMESPACE);
    let lp = kube::api::LogParams {
        tail_lines: Some(LOG_LINES),
        limit_bytes: Some(16 * 1024),
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(10), api.logs(pod, &lp)).await {
        Ok(Ok(text)) => text.lines().map(str::to_owned).collect(),
        Ok(Err(e)) => vec![format!("(its log cannot be read: {e})")],
        Err(_) => vec!["(its log did not come within 10 s)".into()],
    }
}

/// Every node that is not protected, with its pod and last log lines.
async fn diagnose(cluster: &Cluster, waiting: &BTreeMap<String, String>) -> Vec<Unprotected> {
    let pods = enforcer_pods(cluster).await;
    let states = pod_states(&pods);
    let mut out = Vec::new();
    for (node, why) in waiting {
        let (pod, log) = match states.get(node) {
            Some((name, state)) => (format!("{name}: {state}"), log_tail(cluster, name).await),
            None => ("none on this node".to_string(), Vec::new()),
        };
        out.push(Unprotected {
            node: node.clone(),
            why: why.clone(),
            pod,
            log_tail: log,
        });
    }
    out
}

/// One reading of each host's `/state` and Node, judged.
async fn judge_all<'h>(
    cluster: &Cluster,
    hosts: &[&'h Arc<ConnectedHost>],
    mode: EnforcerMode,
) -> Vec<(&'h Arc<ConnectedHost>, NodeVerdict)> {
    let reads = futures::future::join_all(
        hosts
            .iter()
            .map(|h| async { read_state(h.remote.as_ref(), STATE_PORT).await }),
    )
    .await;
    let mut out = Vec::new();
    for (h, state) in hosts.iter().zip(reads) {
        let tainted = match cluster.node(&h.node_name).await {
            Ok(Some(n)) => node_tainted(&n),
            Ok(None) => true,
            Err(_) => true,
        };
        out.push((*h, judge(&state, tainted, mode)));
    }
    out
}

/// The rollout gate's error, with first what the enforcer says of each node it does not protect
/// (its `/state`, its pod, its last log lines): a pod that is not ready is the symptom, the
/// enforcer knows the cause.
async fn explain_rollout_failure(
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    mode: EnforcerMode,
    waited: Duration,
    rollout: &str,
) -> String {
    let all: Vec<&Arc<ConnectedHost>> = hosts.iter().collect();
    let waiting: BTreeMap<String, String> = judge_all(cluster, &all, mode)
        .await
        .into_iter()
        .filter_map(|(h, v)| match v {
            NodeVerdict::Waiting(why) => Some((h.node_name.clone(), why)),
            NodeVerdict::Protected(_) => None,
        })
        .collect();
    if waiting.is_empty() {
        return rollout.to_string();
    }
    let nodes = diagnose(cluster, &waiting).await;
    format!("{}\n{rollout}", describe_failure(&nodes, waited))
}

/// The state gate: polls every node's `/state` and its Node until all are protected.
pub async fn state_gate(
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    mode: EnforcerMode,
    timeout: Duration,
    every: Duration,
    reporter: &Reporter,
) -> Result<Vec<(String, EnforcerState)>, StepError> {
    let started = Instant::now();
    let mut done: BTreeMap<String, EnforcerState> = BTreeMap::new();
    loop {
        let mut waiting = BTreeMap::new();
        let pending: Vec<&Arc<ConnectedHost>> = hosts
            .iter()
            .filter(|h| !done.contains_key(&h.node_name))
            .collect();
        for (h, verdict) in judge_all(cluster, &pending, mode).await {
            match verdict {
                NodeVerdict::Protected(s) => {
                    reporter.detail(
                        Some(&h.spec.name),
                        format!("enforcer: {}", s.summary(now_unix())),
                    );
                    done.insert(h.node_name.clone(), *s);
                }
                NodeVerdict::Waiting(why) => {
                    waiting.insert(h.node_name.clone(), why);
                }
            }
        }
        if waiting.is_empty() {
            return Ok(hosts
                .iter()
                .filter_map(|h| {
                    done.get(&h.node_name)
                        .map(|s| (h.node_name.clone(), s.clone()))
                })
                .collect());
        }
        if started.elapsed() >= timeout {
            let nodes = diagnose(cluster, &waiting).await;
            return Err(StepError::new(describe_failure(&nodes, started.elapsed())).with_hint(HINT));
        }
        tokio::time::sleep(every).await;
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `enforcer` phase: the enforcer and the appliance's policies applied, then gated on every
/// node (before any application workload: the `app` phase comes next).
/// `prepared` is the application made ready by `app::prepare` (its policies are rendered from
/// it); its failure is the `app` phase's to report, so the policies are then left out here.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    runner: &mut Runner,
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    ssh_ports: Vec<u16>,
    mode: EnforcerMode,
    prepared: Option<&Prepared>,
    service_cidr: ipnet::IpNet,
    timeout: Duration,
) -> Result<Vec<(String, EnforcerState)>, PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::Enforcer;
    runner
        .cluster_step(id.id(), id.title(), async {
            let facts = super::app::cluster_facts(cluster, service_cidr).await?;
            let settings = Settings::new(mode, ssh_ports, &facts)?;
            let manifests = render(&settings)?;
            let mut report = crate::kube::apply::apply_all(cluster, &manifests, &reporter)
                .await
                .map_err(AppError::from)?;
            // The policies first, so the enforcer's first rules already hold them.
            if let Some(p) = prepared {
                let policies = render_policies(&p.app)?;
                report.extend(
                    crate::kube::apply::apply_all(cluster, &policies, &reporter)
                        .await
                        .map_err(AppError::from)?,
                );
            }
            if let Err(e) = crate::kube::rollout::gate(
                cluster,
                &[workload()],
                timeout,
                crate::kube::rollout::RECHECK,
                &reporter,
            )
            .await
            {
                let text =
                    explain_rollout_failure(cluster, hosts, mode, timeout, &e.to_string()).await;
                return Err(StepError::new(text).with_hint(HINT));
            }
            let states = state_gate(cluster, hosts, mode, timeout, STATE_EVERY, &reporter).await?;
            let n = states.len();
            let detail = format!(
                "{}; `{}` on {n} node{}, rules applied, taint lifted",
                report.summary(),
                mode_str(mode),
                if n == 1 { "" } else { "s" }
            );
            Ok((outcome(report.unchanged(), detail), states))
        })
        .await
}

pub mod matrix;
pub mod probe;

#[cfg(test)]
mod tests;
