//! `installer install`, part 1: from a validated plan to a Ready k3s cluster on host
//! networking. Phases, in order, each ending in a gate:
//!
//! 1. `connect`: SSH to every host in parallel and gather facts.
//! 2. `preflight`: fact checks and cross-node reachability; nothing changed yet.
//! 3. `prepare`: directories, CNI plugin links, firewall openings (recorded for uninstall).
//! 4. `upload`: the k3s binary and image archives, verified, skipped when present.
//! 5. `bootstrap`: the first server (cluster-init); gate: unit active, API ready, node
//!    registered, CNI written, node Ready.
//! 6. `join-servers`: the other servers strictly one at a time; gate: Ready and a voting
//!    etcd member.
//! 7. `join-agents`: agents in parallel; gate: Ready.
//! 8. `cluster`: every node Ready; the admin kubeconfig written locally (0600).
//!
//! Every phase decides from facts what is left to do, so a rerun converges: it never
//! re-initialises an existing cluster, never joins two servers at once, and uploads nothing
//! that is already there. The k3s wait sequence follows k3s-host-network.md §8.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::ops::Ops;
use super::preflight::{self, Finding, Relaxations, Severity};
use super::reachability;
use super::runner::{Named, PhaseFailure, Runner, StepError, StepOk};
use crate::assets::{self, AssetStore, ResolvedArtifact};
use crate::host::facts::{self, Facts};
use crate::host::{HostError, Remote, RemoteCommand, RemoteExt, UploadTarget};
use crate::k3s::config::{ClusterSettings, NodeRole, NodeSettings, render_config, server_url};
use crate::k3s::{ClusterSecrets, K3sCommand, cni, paths, token_files, units};
use crate::kube::wait::{self, Probe};
use crate::kube::{Cluster, KubeError};
use crate::secret::Secret;

/// One host as the plan describes it.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// The display name: the address as the answer file writes it.
    pub name: String,
    /// The address used to reach the host (also a TLS SAN and the kubeconfig server).
    pub address: String,
    pub is_server: bool,
    pub node_name: Option<String>,
    pub node_ip: Option<IpAddr>,
}

/// How long the k3s gates wait (k3s-host-network.md §8: 300 s per server, 180 s per agent).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub server: Duration,
    pub agent: Duration,
    pub poll: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            server: Duration::from_secs(300),
            agent: Duration::from_secs(180),
            poll: Duration::from_millis(250),
        }
    }
}

/// Everything part 1 needs, derived from the plan.
#[derive(Debug, Clone)]
pub struct InstallSpec {
    pub cluster_name: String,
    pub hosts: Vec<HostSpec>,
    /// CIDRs, kubelet args...; `tls_san` is filled in from the hosts.
    pub cluster: ClusterSettings,
    pub relax: Relaxations,
    /// Ports the application listens on, on every node (from the answer file's values;
    /// replaced after `connect` by every port the rendered templates hold when
    /// `app_values` is set).
    pub app_ports: Vec<(String, u16)>,
    /// The application's values, to render its templates for the exact ports.
    pub app_values: Option<crate::app::Values>,
    pub app_cpus: u32,
    pub app_mem_bytes: u64,
    /// Connect, gather facts and report what would change; change nothing.
    pub dry_run: bool,
    /// Stop after preflight (`installer preflight`).
    pub preflight_only: bool,
    /// Hosts worked on at once in parallel phases.
    pub concurrency: usize,
    /// Where to write the admin kubeconfig.
    pub kubeconfig_out: PathBuf,
    pub timeouts: Timeouts,
}

/// Opens the connection to a host (the SSH layer in the product; fakes in tests).
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, host: &HostSpec) -> Result<Arc<dyn Remote>, HostError>;
}

/// A host after `connect`: its connection, facts, and resolved identity.
pub struct Node {
    pub spec: HostSpec,
    pub remote: Arc<dyn Remote>,
    pub facts: Facts,
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Why this node IP was chosen (reported so a multi-NIC surprise is visible).
    pub node_ip_reason: String,
}

impl Named for Node {
    fn name(&self) -> &str {
        &self.spec.name
    }
}

/// What part 1 hands to part 2.
pub struct Installed {
    pub nodes: Vec<Arc<Node>>,
    /// The API connection (None after a dry run or `preflight`).
    pub cluster: Option<Cluster>,
    pub kubeconfig: Option<PathBuf>,
}

/// Why part 1 stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Phase(#[from] PhaseFailure),
    #[error("{0}")]
    Setup(String),
}

impl InstallError {
    pub fn interrupted(&self) -> bool {
        matches!(self, InstallError::Phase(p) if p.interrupted())
    }
}

fn step_err(e: impl std::fmt::Display) -> StepError {
    StepError::new(e.to_string())
}

impl From<KubeError> for StepError {
    fn from(e: KubeError) -> Self {
        step_err(e)
    }
}

impl From<wait::WaitTimeout> for StepError {
    fn from(e: wait::WaitTimeout) -> Self {
        step_err(e)
    }
}

/// Picks the node IP: the answer file's override; else the address the installer connects
/// to, when it is one of the host's own addresses; else the first IPv4 address of the
/// interface that carries the default route (what k3s itself would choose).
pub fn resolve_node_ip(spec: &HostSpec, facts: &Facts) -> Result<(IpAddr, String), StepError> {
    if let Some(ip) = spec.node_ip {
        return Ok((ip, "set by nodeIp in the answer file".into()));
    }
    let ips = facts.host_ips();
    if let Ok(ip) = spec.address.parse::<IpAddr>()
        && ips.contains(&ip)
    {
        return Ok((ip, "the address the installer connects to".into()));
    }
    let dev = facts.default_route.as_deref().and_then(|r| {
        let mut it = r.split_whitespace();
        it.position(|w| w == "dev").and_then(|_| it.next())
    });
    if let Some(dev) = dev
        && let Some(a) = facts
            .addresses
            .iter()
            .find(|a| a.interface == dev && a.addr.addr().is_ipv4())
    {
        return Ok((
            a.addr.addr(),
            format!("the first address of {dev}, the default route's interface"),
        ));
    }
    ips.first()
        .map(|ip| (*ip, "the host's first address".into()))
        .ok_or_else(|| {
            StepError::new("the host has no usable IP address")
                .with_hint("set hosts[].nodeIp in the answer file")
        })
}

/// Part 1. Returns the nodes and, unless dry-running, a connection to the Ready cluster.
pub async fn run(
    runner: &mut Runner,
    spec: &InstallSpec,
    connector: &dyn Connector,
    store: &AssetStore,
) -> Result<Installed, InstallError> {
    let nodes = connect(runner, spec, connector).await?;
    // Every port the application and the cluster services will hold, rendered from the
    // templates for these nodes (the answer file's port values are only some of them).
    let mut spec = spec.clone();
    if let Some(values) = &spec.app_values {
        let list: Vec<(String, IpAddr, bool)> = nodes
            .iter()
            .map(|n| (n.node_name.clone(), n.node_ip, n.spec.is_server))
            .collect();
        spec.app_ports = super::appliance::host_ports(values, spec.cluster.service_cidr, &list)
            .map_err(|e| InstallError::Setup(format!("the application's templates: {e}")))?;
    }
    let spec = &spec;
    preflight(runner, spec, &nodes, store).await?;
    if spec.preflight_only {
        return Ok(Installed {
            nodes,
            cluster: None,
            kubeconfig: None,
        });
    }
    prepare(runner, spec, &nodes).await?;
    let binary_changed = upload(runner, spec, &nodes, store).await?;
    let servers: Vec<Arc<Node>> = nodes.iter().filter(|n| n.spec.is_server).cloned().collect();
    let agents: Vec<Arc<Node>> = nodes
        .iter()
        .filter(|n| !n.spec.is_server)
        .cloned()
        .collect();
    let cluster_settings = cluster_settings(spec, &servers);
    let k3s = K3sContext {
        spec,
        settings: cluster_settings,
        binary_changed,
        first: servers
            .first()
            .cloned()
            .ok_or_else(|| InstallError::Setup("the plan has no server".into()))?,
        members_elsewhere: servers
            .iter()
            .skip(1)
            .filter(|n| n.facts.etcd_data)
            .map(|n| n.spec.name.clone())
            .collect(),
    };
    let boot = bootstrap(runner, &k3s).await?;
    let Some(boot) = boot else {
        // Dry run: describe the joins from facts and stop.
        describe_joins(runner, &k3s, &servers[1..], &agents).await?;
        return Ok(Installed {
            nodes,
            cluster: None,
            kubeconfig: None,
        });
    };
    join(runner, &k3s, &boot, &servers[1..], true).await?;
    join(runner, &k3s, &boot, &agents, false).await?;
    let kubeconfig = cluster_gate(runner, &k3s, &boot, &nodes).await?;
    Ok(Installed {
        nodes,
        cluster: Some(boot.cluster),
        kubeconfig: Some(kubeconfig),
    })
}

// ---------------------------------------------------------------------------------------
// 1. connect

async fn connect(
    runner: &mut Runner,
    spec: &InstallSpec,
    connector: &dyn Connector,
) -> Result<Vec<Arc<Node>>, InstallError> {
    let specs: Vec<Arc<HostSpec>> = spec.hosts.iter().cloned().map(Arc::new).collect();
    struct H(Arc<HostSpec>);
    impl Named for H {
        fn name(&self) -> &str {
            &self.0.name
        }
    }
    let hs: Vec<Arc<H>> = specs.iter().cloned().map(|s| Arc::new(H(s))).collect();
    let reporter = runner.reporter().clone();
    let nodes = runner
        .phase(
            "connect",
            "Connect and gather facts",
            &hs,
            spec.concurrency,
            |h| {
                let reporter = reporter.clone();
                async move {
                    let remote = connector.connect(&h.0).await?;
                    let facts = facts::gather(remote.as_ref()).await?;
                    let (node_ip, why) = resolve_node_ip(&h.0, &facts)?;
                    let node_name =
                        h.0.node_name
                            .clone()
                            .unwrap_or_else(|| facts.hostname.to_lowercase());
                    reporter.emit(crate::report::Event::HostStep {
                        phase: "connect".into(),
                        host: h.0.name.clone(),
                        message: format!("node {node_name}, IP {node_ip} ({why})"),
                    });
                    let detail = format!(
                        "{}, {}, {} CPU, {} MiB, k3s {}",
                        facts.os_pretty,
                        facts.arch.as_str(),
                        facts.cpus,
                        facts.mem_bytes / (1024 * 1024),
                        facts
                            .k3s_version
                            .as_deref()
                            .map(|v| v.trim_start_matches("k3s version "))
                            .unwrap_or("not installed")
                    );
                    Ok((
                        StepOk::unchanged(detail),
                        Arc::new(Node {
                            spec: (*h.0).clone(),
                            remote,
                            facts,
                            node_name,
                            node_ip,
                            node_ip_reason: why,
                        }),
                    ))
                }
            },
        )
        .await?;
    Ok(nodes)
}

// ---------------------------------------------------------------------------------------
// 2. preflight

/// Ports other nodes must reach on a node (the cluster's cross-node traffic).
fn cross_node_ports(is_server: bool, app_ports: &[(String, u16)]) -> Vec<u16> {
    let mut p = vec![10250];
    if is_server {
        p.extend([paths::API_PORT, 2379, 2380]);
    }
    p.extend(app_ports.iter().map(|(_, p)| *p));
    p.sort();
    p.dedup();
    p
}

/// Every finding of the fact checks and the reachability check.
async fn findings(spec: &InstallSpec, nodes: &[Arc<Node>], store: &AssetStore) -> Vec<Finding> {
    let payload_bytes = payload_size(store, nodes);
    let k3s_sha = nodes
        .first()
        .and_then(|n| assets::Arch::from_facts(&n.facts.arch))
        .and_then(|a| store.k3s_binary(a).ok())
        .map(|a| a.sha256);
    let input = preflight::Input {
        hosts: nodes
            .iter()
            .map(|n| preflight::HostInput {
                name: n.spec.name.clone(),
                is_server: n.spec.is_server,
                node_name: Some(n.node_name.clone()),
                node_ip: n.spec.node_ip,
                facts: &n.facts,
            })
            .collect(),
        cluster_cidr: spec.cluster.cluster_cidr,
        service_cidr: spec.cluster.service_cidr,
        app_ports: spec.app_ports.clone(),
        app_cpus: spec.app_cpus,
        app_mem_bytes: spec.app_mem_bytes,
        payload_bytes,
        arches: store
            .available_arches()
            .into_iter()
            .map(Into::into)
            .collect(),
        k3s_sha256: k3s_sha,
        workstation_epoch: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        relax: spec.relax.clone(),
    };
    let mut findings = preflight::check(&input);
    // Cross-node reachability (skipped when a single host).
    if nodes.len() > 1 {
        let rnodes: Vec<reachability::Node> = nodes
            .iter()
            .map(|n| {
                // A port already held by a listener bound to loopback only (a rerun: some
                // k3s components) cannot be tested from other nodes and is left out; other
                // held ports are tested against whatever listens on them.
                let ports: Vec<u16> = cross_node_ports(n.spec.is_server, &spec.app_ports)
                    .into_iter()
                    .filter(|p| !n.facts.tcp_port_in_use(*p).is_some_and(|l| l.loopback_only))
                    .collect();
                let busy = ports
                    .iter()
                    .copied()
                    .filter(|p| n.facts.tcp_port_in_use(*p).is_some())
                    .collect();
                reachability::Node {
                    remote: n.remote.clone(),
                    ip: n.node_ip,
                    ports,
                    busy,
                    have_python3: n.facts.have_python3,
                    have_perl: n.facts.have_perl,
                }
            })
            .collect();
        match reachability::check(&rnodes).await {
            Ok(unreachable) => {
                for u in unreachable {
                    let managed_fw = nodes
                        .iter()
                        .find(|n| n.spec.name == u.to)
                        .is_some_and(|n| n.facts.firewall != facts::Firewall::None && !spec.relax.leave_firewall);
                    findings.push(Finding {
                        check: "reachability",
                        host: Some(u.from.clone()),
                        severity: if managed_fw { Severity::Warning } else { Severity::Blocking },
                        found: format!("cannot connect to {} ({}) on TCP port {}: {}", u.to, u.to_ip, u.port, u.reason),
                        needed: format!("TCP {} open from every node to {}", u.port, u.to),
                        hint: if managed_fw {
                            "the installer opens this port in the host firewall during prepare".into()
                        } else {
                            format!("open TCP {} from {} to {} in the firewalls or security groups between them", u.port, u.from, u.to)
                        },
                    });
                }
            }
            Err(e) => findings.push(Finding {
                check: "reachability",
                host: Some(e.host().to_owned()),
                severity: Severity::Warning,
                found: format!("the check could not run: {e}"),
                needed: "python3 or perl on the host for temporary listeners".into(),
                hint: "reachability between nodes was not verified; joins may fail if a firewall blocks them".into(),
            }),
        }
    }
    findings
}

async fn preflight(
    runner: &mut Runner,
    spec: &InstallSpec,
    nodes: &[Arc<Node>],
    store: &AssetStore,
) -> Result<(), InstallError> {
    // Computed once, by whichever host's step gets there first, inside the phase (so the
    // phase's time includes the reachability check).
    let cell: tokio::sync::OnceCell<Vec<Finding>> = tokio::sync::OnceCell::new();
    let cell = &cell;
    let reporter = runner.reporter().clone();
    runner
        .phase(
            "preflight",
            "Preflight checks",
            nodes,
            spec.concurrency,
            |n| {
                let reporter = reporter.clone();
                async move {
                    let findings = cell.get_or_init(|| findings(spec, nodes, store)).await;
                    let mine: Vec<&Finding> = findings
                        .iter()
                        .filter(|f| {
                            f.host
                                .as_deref()
                                .is_some_and(|h| h.split(", ").any(|x| x == n.spec.name))
                        })
                        .collect();
                    for w in mine.iter().filter(|f| f.severity == Severity::Warning) {
                        reporter.warn(Some(&n.spec.name), w.to_string());
                    }
                    let blocking: Vec<&&Finding> = mine
                        .iter()
                        .filter(|f| f.severity == Severity::Blocking)
                        .collect();
                    if blocking.is_empty() {
                        Ok((
                            StepOk::unchanged(format!("{} checks passed", {
                                // Checks with a finding here (a check may have several).
                                let mut ids: Vec<&str> = mine.iter().map(|f| f.check).collect();
                                ids.sort_unstable();
                                ids.dedup();
                                preflight::CHECKS.len().saturating_sub(ids.len())
                            })),
                            (),
                        ))
                    } else {
                        let message = blocking
                            .iter()
                            .map(|f| format!("{}: found {}; needed {}", f.check, f.found, f.needed))
                            .collect::<Vec<_>>()
                            .join("; ");
                        let hint = blocking
                            .iter()
                            .map(|f| f.hint.as_str())
                            .collect::<Vec<_>>()
                            .join("; ");
                        Err(StepError::new(message).with_hint(hint))
                    }
                }
            },
        )
        .await?;
    Ok(())
}

fn payload_size(store: &AssetStore, nodes: &[Arc<Node>]) -> u64 {
    let Some(arch) = nodes
        .first()
        .and_then(|n| assets::Arch::from_facts(&n.facts.arch))
    else {
        return 0;
    };
    let mut total = 0;
    if let Ok(a) = store.k3s_binary(arch) {
        total += a.size;
    }
    if let Ok(a) = store.airgap_images(arch) {
        total += a.size;
    }
    if let Ok(v) = store.app_image_archives(arch) {
        total += v.iter().map(|a| a.size).sum::<u64>();
    }
    total
}

// ---------------------------------------------------------------------------------------
// 3. prepare

/// The record of changes the installer made on a host, for uninstall.
pub const CHANGES_LOG: &str = "/var/lib/installer/changes.log";

fn prepare_check_script() -> String {
    let mut s = String::from("ok=1\n");
    for d in [
        paths::CONFIG_DIR,
        paths::IMAGES_DIR,
        paths::CNI_BIN_DIR,
        paths::CNI_CONF_DIR,
    ] {
        s.push_str(&format!("[ -d {d} ] || ok=0\n"));
    }
    for (link, target) in paths::cni_plugin_links() {
        s.push_str(&format!("[ \"$(readlink {link})\" = {target} ] || ok=0\n"));
    }
    s.push_str(&format!("[ -f {} ] || ok=0\n", paths::IMAGES_CACHE_MARKER));
    s.push_str("[ $ok = 1 ] && echo ready || echo missing\n");
    s
}

fn prepare_script() -> String {
    let mut s = format!(
        "set -e\nmkdir -p {} {} {} {} $(dirname {CHANGES_LOG})\n",
        paths::CONFIG_DIR,
        paths::IMAGES_DIR,
        paths::CNI_BIN_DIR,
        paths::CNI_CONF_DIR
    );
    for (link, target) in paths::cni_plugin_links() {
        s.push_str(&format!(
            "if [ \"$(readlink {link})\" != {target} ]; then ln -sfn {target} {link}; echo \"link {link}\" >> {CHANGES_LOG}; fi\n"
        ));
    }
    // k3s never creates it; with it the image import cache survives restarts
    // (k3s-host-network.md §3).
    s.push_str(&format!(
        "[ -f {m} ] || {{ touch {m}; echo \"file {m}\" >> {CHANGES_LOG}; }}\n",
        m = paths::IMAGES_CACHE_MARKER
    ));
    s
}

fn firewall_script(fw: facts::Firewall, is_server: bool, spec: &InstallSpec) -> Option<String> {
    let mut ports: Vec<String> = vec!["10250".into()];
    if is_server {
        ports.push("6443".into());
        ports.push("2379-2380".into());
    }
    ports.extend(spec.app_ports.iter().map(|(_, p)| p.to_string()));
    match fw {
        facts::Firewall::Firewalld => {
            let mut s = String::from("set -e\n");
            for p in &ports {
                s.push_str(&format!(
                    "if ! firewall-cmd --permanent --query-port={p}/tcp >/dev/null; then firewall-cmd --permanent --add-port={p}/tcp; echo \"firewalld-port {p}/tcp\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            for cidr in [spec.cluster.cluster_cidr, spec.cluster.service_cidr] {
                s.push_str(&format!(
                    "if ! firewall-cmd --permanent --zone=trusted --query-source={cidr} >/dev/null; then firewall-cmd --permanent --zone=trusted --add-source={cidr}; echo \"firewalld-trusted {cidr}\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            s.push_str("firewall-cmd --reload\n");
            Some(s)
        }
        facts::Firewall::Ufw => {
            let mut s = String::from("set -e\n");
            for p in &ports {
                let p = p.replace('-', ":");
                s.push_str(&format!(
                    "if ! ufw status | grep -q \"^{p}/tcp \"; then ufw allow {p}/tcp; echo \"ufw {p}/tcp\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            Some(s)
        }
        // A hand-written nftables ruleset is the admin's: preflight told them what to open.
        facts::Firewall::Nftables | facts::Firewall::None => None,
    }
}

async fn prepare(
    runner: &mut Runner,
    spec: &InstallSpec,
    nodes: &[Arc<Node>],
) -> Result<(), InstallError> {
    let reporter = runner.reporter().clone();
    runner
        .phase("prepare", "Prepare hosts", nodes, spec.concurrency, |n| {
            let ops = Ops::new(n.remote.clone(), "prepare", &reporter, spec.dry_run);
            async move {
                let check = n
                    .remote
                    .run(RemoteCommand::new(prepare_check_script()).sudo())
                    .await?;
                if check.stdout_str().trim() != "ready" {
                    ops.run(
                        "create the k3s directories and link the CNI plugins into /opt/cni/bin",
                        RemoteCommand::new(prepare_script()).sudo().not_idempotent(),
                    )
                    .await?;
                }
                if !spec.relax.leave_firewall
                    && let Some(script) = firewall_script(n.facts.firewall, n.spec.is_server, spec)
                {
                    ops.run(
                        &format!("open the cluster's ports in {:?}", n.facts.firewall),
                        RemoteCommand::new(script)
                            .sudo()
                            .timeout(Duration::from_secs(120)),
                    )
                    .await?;
                }
                Ok((outcome(&ops, "prepared", "already prepared"), ()))
            }
        })
        .await?;
    Ok(())
}

fn outcome(ops: &Ops, changed: &str, unchanged: &str) -> StepOk {
    match (ops.changed(), ops.dry_run()) {
        (true, true) => StepOk::changed(format!("would be {changed}")),
        (true, false) => StepOk::changed(changed),
        (false, _) => StepOk::unchanged(unchanged),
    }
}

// ---------------------------------------------------------------------------------------
// 4. upload

async fn upload(
    runner: &mut Runner,
    spec: &InstallSpec,
    nodes: &[Arc<Node>],
    store: &AssetStore,
) -> Result<BTreeMap<String, bool>, InstallError> {
    // Resolve (and hash, for files from --assets) before any transfer starts.
    let mut by_arch: BTreeMap<String, Vec<ResolvedArtifact>> = BTreeMap::new();
    for n in nodes {
        let Some(arch) = assets::Arch::from_facts(&n.facts.arch) else {
            continue;
        };
        if by_arch.contains_key(arch.as_str()) {
            continue;
        }
        let mut list = vec![
            store
                .k3s_binary(arch)
                .map_err(|e| InstallError::Setup(e.to_string()))?,
            store
                .airgap_images(arch)
                .map_err(|e| InstallError::Setup(e.to_string()))?,
        ];
        list.extend(
            store
                .app_image_archives(arch)
                .map_err(|e| InstallError::Setup(e.to_string()))?,
        );
        by_arch.insert(arch.as_str().to_owned(), list);
    }
    let by_arch = Arc::new(by_arch);
    let reporter = runner.reporter().clone();
    let changed = runner
        .phase(
            "upload",
            "Upload k3s and images",
            nodes,
            spec.concurrency,
            |n| {
                let ops = Ops::new(n.remote.clone(), "upload", &reporter, spec.dry_run);
                let by_arch = by_arch.clone();
                async move {
                    let arch = n.facts.arch.as_str().to_owned();
                    let list = by_arch.get(&arch).ok_or_else(|| {
                        StepError::new(format!("no k3s artifacts for architecture {arch}"))
                    })?;
                    let mut binary_changed = false;
                    let mut sent = 0u64;
                    for a in list {
                        let path = a.host_path();
                        let present = match a.kind {
                            assets::ArtifactKind::K3sBinary => {
                                n.facts.k3s_sha256.as_deref() == Some(a.sha256.as_str())
                            }
                            _ => n
                                .facts
                                .image_files
                                .get(&path)
                                .is_some_and(|size| size == &a.size.to_string()),
                        };
                        let target = UploadTarget::root(path, a.host_mode());
                        let did = ops.upload(&a.file, &a.source, &target, present).await?;
                        if did {
                            sent += a.size;
                            if a.kind == assets::ArtifactKind::K3sBinary {
                                binary_changed = true;
                            }
                        }
                    }
                    let ok = if ops.changed() {
                        StepOk::changed(format!(
                            "{} MB {}",
                            sent / 1_000_000,
                            if spec.dry_run {
                                "to send"
                            } else {
                                "sent and verified"
                            }
                        ))
                    } else {
                        StepOk::unchanged("every artifact already present")
                    };
                    Ok((ok, (n.spec.name.clone(), binary_changed)))
                }
            },
        )
        .await?;
    Ok(changed.into_iter().collect())
}

// ---------------------------------------------------------------------------------------
// 5-8. k3s

struct K3sContext<'a> {
    spec: &'a InstallSpec,
    settings: ClusterSettings,
    binary_changed: BTreeMap<String, bool>,
    first: Arc<Node>,
    /// Other servers that already hold the cluster's data (etcd).
    members_elsewhere: Vec<String>,
}

/// Every name and address of every server goes into `tls-san` (k3s-host-network.md §2).
fn cluster_settings(spec: &InstallSpec, servers: &[Arc<Node>]) -> ClusterSettings {
    let mut s = spec.cluster.clone();
    let mut san: Vec<String> = Vec::new();
    for n in servers {
        for v in [
            n.node_ip.to_string(),
            n.node_name.clone(),
            n.spec.address.clone(),
        ] {
            if !san.contains(&v) {
                san.push(v);
            }
        }
    }
    s.tls_san = san;
    if spec.relax.allow_cgroup_v1 {
        s.allow_cgroup_v1();
    }
    s
}

/// What the bootstrap hands to the joins.
struct Booted {
    cluster: Cluster,
    secrets: ClusterSecrets,
    ca_pem: Vec<u8>,
    server_url: String,
}

fn role_for(node: &Node, first: &Node) -> NodeRole {
    let url = server_url(&first.node_ip.to_string());
    if node.spec.name == first.spec.name {
        NodeRole::FirstServer
    } else if node.spec.is_server {
        NodeRole::JoiningServer { server_url: url }
    } else {
        NodeRole::Agent { server_url: url }
    }
}

/// Reads a secret file from a host (sudo), trimmed, or None when it does not exist.
async fn read_secret(remote: &dyn Remote, path: &str) -> Result<Option<Secret>, HostError> {
    Ok(remote
        .read_file(path, true)
        .await?
        .map(|b| Secret::new(String::from_utf8_lossy(&b).trim().to_owned())))
}

/// Writes token files, config and unit; starts or restarts k3s without blocking.
/// Returns whether anything changed. In a dry run only reports.
async fn converge_node(
    ops: &Ops,
    k3s: &K3sContext<'_>,
    node: &Node,
    role: &NodeRole,
    secrets: Option<&ClusterSecrets>,
    ca_pem: Option<&[u8]>,
) -> Result<bool, StepError> {
    let f = &node.facts;
    let cmd = role.command();
    if let Some(secrets) = secrets {
        for file in token_files(role, secrets, ca_pem).map_err(step_err)? {
            let exists = if file.path == paths::SERVER_TOKEN_FILE {
                f.server_token_file
            } else {
                f.agent_token_file
            };
            ops.write_secret_file(&file, exists).await?;
        }
    } else if !(f.server_token_file || f.agent_token_file) {
        ops.step(format!(
            "would write the token files ({} mode 0600)",
            role.token_file()
        ));
    }
    let config = render_config(
        role,
        &k3s.settings,
        &NodeSettings {
            node_name: node.node_name.clone(),
            node_ip: node.node_ip,
        },
    )
    .map_err(|e| {
        let hint = e.hint();
        let mut se = step_err(&e);
        se.hint = hint;
        se
    })?;
    let config_changed = ops
        .write_file(
            &config,
            f.file_sha256.get(paths::CONFIG_FILE).map(String::as_str),
        )
        .await?;
    let unit = units::render_unit(cmd).map_err(step_err)?;
    let unit_changed = ops
        .write_file(&unit, f.file_sha256.get(&unit.path).map(String::as_str))
        .await?;
    let unit_name = units::unit_name(cmd);
    if unit_changed {
        ops.run(
            "reload systemd",
            RemoteCommand::new("systemctl daemon-reload").sudo(),
        )
        .await?;
        ops.run(
            &format!("enable {unit_name}"),
            RemoteCommand::new(format!("systemctl enable {unit_name}")).sudo(),
        )
        .await?;
    }
    let active = match cmd {
        K3sCommand::Server => f.k3s_unit.as_deref() == Some("active"),
        K3sCommand::Agent => f.k3s_agent_unit.as_deref() == Some("active"),
    };
    let binary_changed = k3s
        .binary_changed
        .get(&node.spec.name)
        .copied()
        .unwrap_or(false);
    if !active {
        // --no-block: a Type=notify unit with TimeoutStartSec=0 would block forever on a
        // failed join (k3s-host-network.md §3); we wait with our own deadline instead.
        ops.run(
            &format!("start {unit_name}"),
            RemoteCommand::new(format!("systemctl start --no-block {unit_name}"))
                .sudo()
                .not_idempotent(),
        )
        .await?;
    } else if config_changed || unit_changed || binary_changed {
        ops.run(
            &format!("restart {unit_name} (its configuration or binary changed)"),
            RemoteCommand::new(format!("systemctl restart --no-block {unit_name}"))
                .sudo()
                .not_idempotent(),
        )
        .await?;
    }
    Ok(ops.changed())
}

/// Waits until `systemctl is-active` says active; on a timeout, shows the unit's last log.
async fn wait_unit_active(
    node: &Node,
    unit: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    let r = wait::until(
        &format!("{unit} to become active"),
        timeout,
        poll,
        || async {
            match node
                .remote
                .exec(
                    RemoteCommand::new(format!("systemctl is-active {unit}"))
                        .timeout(Duration::from_secs(20)),
                )
                .await
            {
                Ok(o) if o.stdout_str().trim() == "active" => Probe::Done(()),
                Ok(o) => Probe::NotYet(format!(
                    "systemctl is-active {unit}: {}",
                    o.stdout_str().trim()
                )),
                Err(e) => Probe::NotYet(e.to_string()),
            }
        },
    )
    .await;
    if let Err(e) = r {
        let log = node
            .remote
            .exec(
                RemoteCommand::new(format!("journalctl -u {unit} -n 15 --no-pager -o cat"))
                    .sudo()
                    .timeout(Duration::from_secs(20)),
            )
            .await
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        return Err(StepError::new(format!(
            "{e}\n    last lines of the {unit} log:\n      {}",
            crate::host::tail(&log, 15).replace('\n', "\n      ")
        ))
        .with_hint(format!(
            "see `journalctl -u {unit}` on the host; the installer's log file has the whole story"
        )));
    }
    Ok(())
}

/// Waits for the node object, writes the CNI config for its pod CIDR, waits for Ready.
async fn node_gate(
    ops: &Ops,
    cluster: &Cluster,
    node: &Node,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    let name = node.node_name.clone();
    let registered = wait::until(
        &format!("node {name} to register with a pod CIDR"),
        timeout,
        poll,
        || async {
            match cluster.node(&name).await {
                Ok(Some(n)) => match wait::pod_cidr(&n) {
                    Some(c) => {
                        Probe::Done(n.spec.and_then(|s| s.pod_cidrs).unwrap_or_else(|| vec![c]))
                    }
                    None => Probe::NotYet("registered, no pod CIDR assigned yet".into()),
                },
                Ok(None) => Probe::NotYet("not registered yet".into()),
                Err(e) => Probe::NotYet(e.to_string()),
            }
        },
    )
    .await?;
    let cidrs: Vec<ipnet::IpNet> = registered.iter().filter_map(|c| c.parse().ok()).collect();
    let conflist = cni::render_conflist(&cidrs).map_err(step_err)?;
    ops.write_file(
        &conflist,
        node.facts
            .file_sha256
            .get(paths::CNI_CONFLIST)
            .map(String::as_str),
    )
    .await?;
    wait::until(
        &format!("node {name} to be Ready"),
        timeout,
        poll,
        || async {
            match cluster.node(&name).await {
                Ok(Some(n)) => {
                    let (ready, why) = wait::node_readiness(&n);
                    if ready {
                        Probe::Done(())
                    } else {
                        Probe::NotYet(why)
                    }
                }
                Ok(None) => Probe::NotYet("the node object disappeared".into()),
                Err(e) => Probe::NotYet(e.to_string()),
            }
        },
    )
    .await?;
    Ok(())
}

async fn bootstrap(
    runner: &mut Runner,
    k3s: &K3sContext<'_>,
) -> Result<Option<Booted>, InstallError> {
    let spec = k3s.spec;
    let first = k3s.first.clone();
    let reporter = runner.reporter().clone();
    let t = spec.timeouts;
    let mut out = runner
        .phase("bootstrap", "Bootstrap the first server", &[first], 1, |n| {
            let ops = Ops::new(n.remote.clone(), "bootstrap", &reporter, spec.dry_run);
            async move {
                let f = &n.facts;
                // Never start a second cluster: a first server without the cluster's data,
                // while other servers hold it, was wiped or replaced.
                if !f.etcd_data && !k3s.members_elsewhere.is_empty() {
                    return Err(StepError::new(format!(
                        "{} has no cluster data, but {} {} it: starting k3s with cluster-init here would create a second, separate cluster",
                        n.spec.name,
                        k3s.members_elsewhere.join(", "),
                        if k3s.members_elsewhere.len() == 1 { "holds" } else { "hold" }
                    ))
                    .with_hint("if the host was reinstalled, rejoin it by hand (`server:` pointing at a live server, its token from that server) or restore it from an etcd snapshot; the installer does not recover a lost first server in this version"));
                }
                // The token files on the first server are the source of truth for the
                // cluster's join secrets: reused on every rerun, generated only once.
                let secrets = if f.server_token_file && f.agent_token_file {
                    let s = read_secret(n.remote.as_ref(), paths::SERVER_TOKEN_FILE).await?;
                    let a = read_secret(n.remote.as_ref(), paths::AGENT_TOKEN_FILE).await?;
                    match (s, a) {
                        (Some(s), Some(a)) => ClusterSecrets { server_password: s, agent_password: a },
                        _ => ClusterSecrets::generate(),
                    }
                } else if f.etcd_data {
                    return Err(StepError::new(format!(
                        "{} has cluster data ({}) but no {}: the join secrets are lost",
                        n.spec.name, paths::ETCD_DB_DIR, paths::SERVER_TOKEN_FILE
                    ))
                    .with_hint("restore /etc/rancher/k3s/server-token and agent-token from a backup, or uninstall k3s from every host and install again"));
                } else {
                    ClusterSecrets::generate()
                };
                let role = NodeRole::FirstServer;
                converge_node(&ops, k3s, &n, &role, Some(&secrets), None).await?;
                if spec.dry_run {
                    return Ok((outcome(&ops, "bootstrapped", "already running"), None));
                }
                wait_unit_active(&n, paths::SERVER_UNIT, t.server, t.poll).await?;
                let kubeconfig = wait::until("k3s to write its kubeconfig", t.server, t.poll, || async {
                    match n.remote.read_file(paths::KUBECONFIG, true).await {
                        Ok(Some(b)) => Probe::Done(b),
                        Ok(None) => Probe::NotYet(format!("{} does not exist yet", paths::KUBECONFIG)),
                        Err(e) => Probe::NotYet(e.to_string()),
                    }
                })
                .await?;
                let kubeconfig = Secret::new(String::from_utf8_lossy(&kubeconfig).into_owned());
                let cluster = Cluster::connect(n.remote.clone(), kubeconfig.expose()).await?;
                wait::until("the Kubernetes API to be ready (/readyz)", t.server, t.poll, || async {
                    match cluster.readyz().await {
                        Ok(true) => Probe::Done(()),
                        Ok(false) => Probe::NotYet("/readyz is not ok yet".into()),
                        Err(e) => Probe::NotYet(e.to_string()),
                    }
                })
                .await?;
                node_gate(&ops, &cluster, &n, t.server, t.poll).await?;
                let ca_pem = n
                    .remote
                    .read_file(paths::SERVER_CA_CERT, true)
                    .await?
                    .ok_or_else(|| StepError::new(format!("{} is missing after k3s started", paths::SERVER_CA_CERT)))?;
                let booted = Booted {
                    cluster,
                    secrets,
                    ca_pem,
                    server_url: server_url(&n.node_ip.to_string()),
                };
                Ok((outcome(&ops, "bootstrapped, Ready", "already Ready"), Some(booted)))
            }
        })
        .await?;
    Ok(out.pop().flatten())
}

async fn describe_joins(
    runner: &mut Runner,
    k3s: &K3sContext<'_>,
    servers: &[Arc<Node>],
    agents: &[Arc<Node>],
) -> Result<(), InstallError> {
    let reporter = runner.reporter().clone();
    for (id, title, nodes) in [
        (
            "join-servers",
            "Join the other servers, one at a time",
            servers,
        ),
        ("join-agents", "Join the agents", agents),
    ] {
        if nodes.is_empty() {
            continue;
        }
        runner
            .phase(id, title, nodes, 1, |n| {
                let ops = Ops::new(n.remote.clone(), id, &reporter, true);
                async move {
                    let role = role_for(&n, &k3s.first);
                    converge_node(&ops, k3s, &n, &role, None, None).await?;
                    Ok((outcome(&ops, "joined", "already joined"), ()))
                }
            })
            .await?;
    }
    Ok(())
}

/// Joins servers (strictly one at a time: etcd admits one learner at a time,
/// k3s-host-network.md §2; each gated on Ready and a voting etcd membership) or agents (in
/// parallel; each gated on Ready).
async fn join(
    runner: &mut Runner,
    k3s: &K3sContext<'_>,
    boot: &Booted,
    nodes: &[Arc<Node>],
    servers: bool,
) -> Result<(), InstallError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let reporter = runner.reporter().clone();
    let t = k3s.spec.timeouts;
    let (id, title, limit, unit, timeout) = if servers {
        (
            "join-servers",
            "Join the other servers, one at a time",
            1,
            paths::SERVER_UNIT,
            t.server,
        )
    } else {
        (
            "join-agents",
            "Join the agents",
            k3s.spec.concurrency,
            paths::AGENT_UNIT,
            t.agent,
        )
    };
    runner
        .phase(id, title, nodes, limit, |n| {
            let ops = Ops::new(n.remote.clone(), id, &reporter, false);
            async move {
                let server_url = boot.server_url.clone();
                let role = if servers {
                    NodeRole::JoiningServer { server_url }
                } else {
                    NodeRole::Agent { server_url }
                };
                converge_node(
                    &ops,
                    k3s,
                    &n,
                    &role,
                    Some(&boot.secrets),
                    Some(&boot.ca_pem),
                )
                .await?;
                wait_unit_active(&n, unit, timeout, t.poll).await?;
                node_gate(&ops, &boot.cluster, &n, timeout, t.poll).await?;
                if servers {
                    etcd_member_gate(&boot.cluster, &n.node_name, timeout, t.poll).await?;
                }
                let done = if servers {
                    "joined, Ready, etcd member"
                } else {
                    "joined, Ready"
                };
                Ok((outcome(&ops, done, "already joined"), ()))
            }
        })
        .await?;
    Ok(())
}

/// Waits until `name` is a voting (no longer learner) member of the embedded etcd.
async fn etcd_member_gate(
    cluster: &Cluster,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    wait::until(
        &format!("{name} to be a voting etcd member"),
        timeout,
        poll,
        || async {
            match cluster.etcd_members().await {
                Ok(m) => match m.iter().find(|m| m.is_node(name)) {
                    Some(m) if !m.is_learner => Probe::Done(()),
                    Some(_) => Probe::NotYet(format!("{name} is still a learner")),
                    None => Probe::NotYet(format!(
                        "members are {}",
                        m.iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                },
                Err(e) => Probe::NotYet(e.to_string()),
            }
        },
    )
    .await?;
    Ok(())
}

async fn cluster_gate(
    runner: &mut Runner,
    k3s: &K3sContext<'_>,
    boot: &Booted,
    nodes: &[Arc<Node>],
) -> Result<PathBuf, InstallError> {
    let spec = k3s.spec;
    let first = k3s.first.clone();
    let expected: Vec<String> = nodes.iter().map(|n| n.node_name.clone()).collect();
    let path = spec.kubeconfig_out.clone();
    runner
        .cluster_step("cluster", "Cluster gate", async {
            let nodes = boot.cluster.nodes().await?;
            let mut problems = Vec::new();
            for name in &expected {
                match nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(name))
                {
                    Some(n) => {
                        let (ready, why) = wait::node_readiness(n);
                        if !ready {
                            problems.push(format!("{name}: {why}"));
                        }
                    }
                    None => problems.push(format!("{name}: not registered")),
                }
            }
            if !problems.is_empty() {
                return Err(StepError::new(format!(
                    "not every node is Ready: {}",
                    problems.join("; ")
                )));
            }
            let k3s_yaml = first
                .remote
                .read_file(paths::KUBECONFIG, true)
                .await?
                .ok_or_else(|| {
                    StepError::new(format!(
                        "{} is missing on {}",
                        paths::KUBECONFIG,
                        first.spec.name
                    ))
                })?;
            let k3s_yaml = Secret::new(String::from_utf8_lossy(&k3s_yaml).into_owned());
            let rewritten = crate::k3s::kubeconfig::rewrite_kubeconfig(
                k3s_yaml.expose(),
                &server_url(&first.spec.address),
                &spec.cluster_name,
            )
            .map_err(step_err)?;
            let same = crate::fsx::own_regular_file(&path).ok().flatten() == Some(true)
                && std::fs::read(&path).is_ok_and(|b| b == rewritten.expose().as_bytes());
            let detail = format!(
                "{} nodes Ready; kubeconfig {}",
                expected.len(),
                path.display()
            );
            if same {
                return Ok((StepOk::unchanged(detail), ()));
            }
            write_private_file(&path, rewritten.expose().as_bytes()).map_err(step_err)?;
            Ok((StepOk::changed(detail), ()))
        })
        .await?;
    Ok(path)
}

/// Writes a file readable only by the owner (0600), atomically and safely ([`crate::fsx`]).
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsx::write_atomic(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_with(addrs: &[(&str, &str)], route: Option<&str>) -> Facts {
        let mut text = String::from(
            "os_id=debian\nos_version=12\ncpus=2\nmem_kb=1000\ndisk_free_kb=1\ndisk_total_kb=1\nhostname=h\ngather=done\n",
        );
        for (i, a) in addrs {
            text.push_str(&format!("addr={i} {a}\n"));
        }
        if let Some(r) = route {
            text.push_str(&format!("default_route={r}\n"));
        }
        facts::parse(&text).unwrap()
    }

    fn host(addr: &str) -> HostSpec {
        HostSpec {
            name: addr.into(),
            address: addr.into(),
            is_server: true,
            node_name: None,
            node_ip: None,
        }
    }

    #[test]
    fn node_ip_prefers_override_then_connect_address_then_default_route() {
        let f = facts_with(
            &[
                ("lo", "127.0.0.1/8"),
                ("eth0", "10.0.0.11/24"),
                ("eth1", "192.168.1.5/24"),
            ],
            Some("default via 192.168.1.1 dev eth1"),
        );
        let mut h = host("10.0.0.11");
        assert_eq!(
            resolve_node_ip(&h, &f).unwrap().0,
            "10.0.0.11".parse::<IpAddr>().unwrap()
        );
        h.node_ip = Some("192.168.1.5".parse().unwrap());
        assert_eq!(
            resolve_node_ip(&h, &f).unwrap().1,
            "set by nodeIp in the answer file"
        );
        // A DNS name or a NATed address: fall back to the default route's interface.
        let h = host("srv1.example.internal");
        let (ip, why) = resolve_node_ip(&h, &f).unwrap();
        assert_eq!(ip, "192.168.1.5".parse::<IpAddr>().unwrap());
        assert!(why.contains("eth1"), "{why}");
        let none = facts_with(&[("lo", "127.0.0.1/8")], None);
        assert!(resolve_node_ip(&h, &none).is_err());
    }

    #[test]
    fn prepare_scripts_are_valid_sh() {
        for s in [prepare_check_script(), prepare_script()] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .unwrap();
            assert!(st.success(), "{s}");
        }
    }

    #[test]
    fn cross_node_ports_cover_k3s_and_the_application() {
        let app = vec![("gateway".to_string(), 8443u16)];
        assert_eq!(
            cross_node_ports(true, &app),
            vec![2379, 2380, 6443, 8443, 10250]
        );
        assert_eq!(cross_node_ports(false, &app), vec![8443, 10250]);
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/kubeconfig");
        write_private_file(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
