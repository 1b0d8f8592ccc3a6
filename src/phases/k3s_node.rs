//! Converging one k3s node and its gates, shared by `bootstrap`, `join` and the coming
//! upgrade and node operations: token files, config and unit written through the door,
//! k3s started (or restarted only when its config, unit or binary changed); then the gates
//! (unit active, node registered and Ready with its CNI config, a voting etcd member).
//! The k3s wait sequence follows k3s-host-network.md §8.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::context::{ConnectedHost, Context};
use super::ops::Ops;
use super::runner::StepError;
use crate::host::{HostError, Remote, RemoteCommand, RemoteExt};
use crate::k3s::config::{ClusterSettings, NodeRole, NodeSettings, render_config, server_url};
use crate::k3s::{ClusterSecrets, K3sCommand, cni, paths, token_files, units};
use crate::kube::Cluster;
use crate::kube::wait::{self, Probe};
use crate::report::ChangeAction;
use crate::secret::Secret;

/// What converging k3s on the nodes needs, once per run.
pub struct K3sPlan<'a> {
    pub ctx: &'a Context,
    /// The cluster settings with every server's names and addresses as TLS SANs.
    pub settings: ClusterSettings,
    /// Per host name: whether its k3s binary was replaced in this run.
    pub binary_changed: BTreeMap<String, bool>,
    /// The bootstrap server (the first server of the plan).
    pub first: Arc<ConnectedHost>,
    /// Other servers that already hold the cluster's data (etcd).
    pub members_elsewhere: Vec<String>,
}

impl<'a> K3sPlan<'a> {
    /// Builds the plan from the connected hosts; None when the plan has no server.
    pub fn new(
        ctx: &'a Context,
        hosts: &[Arc<ConnectedHost>],
        binary_changed: BTreeMap<String, bool>,
    ) -> Option<K3sPlan<'a>> {
        let servers = super::context::servers(hosts);
        let first = servers.first()?.clone();
        Some(K3sPlan {
            ctx,
            settings: cluster_settings(ctx, &servers),
            binary_changed,
            first,
            members_elsewhere: servers
                .iter()
                .skip(1)
                .filter(|n| n.facts.etcd_data)
                .map(|n| n.spec.name.clone())
                .collect(),
        })
    }

    /// The role of a host in this cluster.
    pub fn role_of(&self, node: &ConnectedHost) -> NodeRole {
        let url = server_url(&self.first.node_ip.to_string());
        if node.spec.name == self.first.spec.name {
            NodeRole::FirstServer
        } else if node.spec.is_server {
            NodeRole::JoiningServer { server_url: url }
        } else {
            NodeRole::Agent { server_url: url }
        }
    }
}

/// Every name and address of every server goes into `tls-san` (k3s-host-network.md §2).
pub fn cluster_settings(ctx: &Context, servers: &[Arc<ConnectedHost>]) -> ClusterSettings {
    let mut s = ctx.cluster.clone();
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
    if ctx.relax.allow_cgroup_v1 {
        s.allow_cgroup_v1();
    }
    s
}

/// What the bootstrap hands to the joins.
pub struct Booted {
    pub cluster: Cluster,
    pub secrets: ClusterSecrets,
    pub ca_pem: Vec<u8>,
    pub server_url: String,
}

/// Reads a secret file from a host (sudo), trimmed, or None when it does not exist.
pub async fn read_secret(remote: &dyn Remote, path: &str) -> Result<Option<Secret>, HostError> {
    Ok(remote
        .read_file(path, true)
        .await?
        .map(|b| Secret::new(String::from_utf8_lossy(&b).trim().to_owned())))
}

/// The admin kubeconfig k3s wrote on a server (read quietly: it holds the client key).
pub async fn read_kubeconfig(remote: &dyn Remote) -> Result<Secret, StepError> {
    let k = remote
        .read_file(paths::KUBECONFIG, true)
        .await?
        .ok_or_else(|| {
            StepError::new(format!(
                "{} is missing on {}",
                paths::KUBECONFIG,
                remote.name()
            ))
        })?;
    Ok(Secret::new(String::from_utf8_lossy(&k).into_owned()))
}

/// The cluster's API through a server, with the admin kubeconfig k3s wrote there.
pub async fn cluster_client(remote: Arc<dyn Remote>) -> Result<Cluster, StepError> {
    let k = read_kubeconfig(remote.as_ref()).await?;
    Ok(Cluster::connect(remote, k.expose()).await?)
}

/// The cluster's API through the first of `servers` (in the plan's order) whose API answers
/// `/readyz` at all, ready or not, so a server that is down, isolated or has lost its kubeconfig
/// is passed over for the next one. Err gives each server's reason, named.
pub async fn cluster_through_any(servers: Vec<Arc<dyn Remote>>) -> Result<Cluster, Vec<String>> {
    let mut reasons = Vec::new();
    for r in servers {
        let name = r.name().to_owned();
        let named = |m: String| {
            if m.starts_with(&format!("{name}:")) {
                m
            } else {
                format!("{name}: {m}")
            }
        };
        match cluster_client(r).await {
            Ok(c) => match c.readyz().await {
                Ok(_) => return Ok(c),
                Err(e) => reasons.push(named(format!("the API did not answer /readyz: {e}"))),
            },
            Err(e) => reasons.push(named(e.message)),
        }
    }
    Err(reasons)
}

/// Writes token files, config and unit; starts or restarts k3s without blocking.
/// Returns whether anything changed. When the goal is not to apply, only reports.
/// `secrets` is None in a dry run before the cluster exists (the token files are then
/// reported as to be written).
pub async fn converge(
    ops: &Ops,
    plan: &K3sPlan<'_>,
    node: &ConnectedHost,
    role: &NodeRole,
    secrets: Option<&ClusterSecrets>,
    ca_pem: Option<&[u8]>,
) -> Result<bool, StepError> {
    let f = &node.facts;
    let cmd = role.command();
    if let Some(secrets) = secrets {
        for file in token_files(role, secrets, ca_pem)? {
            let exists = if file.path == paths::SERVER_TOKEN_FILE {
                f.server_token_file
            } else {
                f.agent_token_file
            };
            ops.write_secret_file(&file, exists).await?;
        }
    } else if !(f.server_token_file || f.agent_token_file || ops.goal().applies()) {
        ops.planned(
            ChangeAction::WriteSecret,
            role.token_file(),
            &format!("write the token files ({} mode 0600)", role.token_file()),
        );
    }
    let config = render_config(
        role,
        &plan.settings,
        &NodeSettings {
            node_name: node.node_name.clone(),
            node_ip: node.node_ip,
        },
    )?;
    let config_changed = ops
        .write_file(
            &config,
            f.file_sha256.get(paths::CONFIG_FILE).map(String::as_str),
        )
        .await?;
    let unit = units::render_unit(cmd)?;
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
    let binary_changed = plan
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

/// How long a host may fail to answer over SSH before a gate stops waiting for it.
pub const LOST_AFTER: Duration = Duration::from_secs(20);

/// Tracks whether a host still answers while a gate waits for it: a host that has not
/// answered for [`LOST_AFTER`] was powered off or cut off, and waiting cannot help.
#[derive(Debug, Default)]
pub struct Liveness {
    failing_since: Option<tokio::time::Instant>,
    last_error: String,
}

impl Liveness {
    /// Records one attempt to reach the host, started at `at`; returns why the gate should
    /// stop, if it should. Time counts from the start of the first failed attempt, so a
    /// slow failure (a command timing out) counts whole.
    pub fn record(
        &mut self,
        host: &str,
        at: tokio::time::Instant,
        result: Result<(), String>,
    ) -> Option<String> {
        match result {
            Ok(()) => {
                self.failing_since = None;
                None
            }
            Err(e) => {
                let since = *self.failing_since.get_or_insert(at);
                self.last_error = e;
                (since.elapsed() >= LOST_AFTER).then(|| {
                    format!(
                        "{host} has not answered over SSH for {} s (powered off, or the link is down?): {}",
                        since.elapsed().as_secs(),
                        self.last_error
                    )
                })
            }
        }
    }
}

/// What the unit's journal says since the wait began, read in one round trip with its
/// state: the fatal lines (k3s exits through `logrus.Fatal` when it cannot start) and the
/// errors that waiting cannot fix (a refused join token).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnitHealth {
    pub active_state: String,
    pub fatal_lines: Vec<String>,
    pub refused_lines: Vec<String>,
}

/// The script behind [`UnitHealth`]: state, then `F <line>` for fatal lines and `R <line>`
/// for refused joins since `since` (host epoch seconds).
pub fn unit_health_script(unit: &str, since: i64) -> String {
    format!(
        "systemctl show -p ActiveState --value {unit}
         journalctl -u {unit} --since @{since} --no-pager -o cat 2>/dev/null | grep -E 'level=fatal' | tail -n 5 | sed 's/^/F /'
         journalctl -u {unit} --since @{since} --no-pager -o cat 2>/dev/null | grep -E 'level=error' | grep -E 'CA hash does not match|401 Unauthorized|token is not valid' | tail -n 5 | sed 's/^/R /'
"
    )
}

/// Parses the output of [`unit_health_script`].
pub fn parse_unit_health(out: &str) -> UnitHealth {
    let mut h = UnitHealth::default();
    for (i, l) in out.lines().enumerate() {
        if i == 0 {
            h.active_state = l.trim().to_owned();
        } else if let Some(f) = l.strip_prefix("F ") {
            h.fatal_lines.push(f.to_owned());
        } else if let Some(r) = l.strip_prefix("R ") {
            h.refused_lines.push(r.to_owned());
        }
    }
    h
}

impl UnitHealth {
    /// Why waiting cannot help, if it cannot: the unit died with a fatal line at least twice
    /// (it is restarted every 5 s and fails the same way), or a join was refused three times.
    pub fn hopeless(&self, unit: &str) -> Option<String> {
        if self.active_state == "active" {
            return None;
        }
        if self.fatal_lines.len() >= 2
            && let Some(last) = self.fatal_lines.last()
        {
            return Some(format!(
                "{unit} keeps exiting at start ({} times); its last fatal line: {last}",
                self.fatal_lines.len()
            ));
        }
        if self.refused_lines.len() >= 3
            && let Some(last) = self.refused_lines.last()
        {
            return Some(format!(
                "{unit} keeps being refused by the server; its last error: {last}"
            ));
        }
        None
    }
}

/// Waits until the unit is active. Stops early, quoting the journal, when the unit keeps
/// exiting with a fatal line or its join keeps being refused, and when the host stops
/// answering; on a timeout, shows the unit's last log lines.
pub async fn wait_unit_active(
    node: &ConnectedHost,
    unit: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    // The host's clock: journal lines older than this wait (a previous run's) do not count.
    let since = bounded(
        node.remote
            .exec(RemoteCommand::new("date +%s").timeout(Duration::from_secs(20))),
    )
    .await
    .ok()
    .and_then(|o| o.stdout_str().trim().parse::<i64>().ok())
    .map(|t| t - 2)
    .unwrap_or(0);
    let alive = tokio::sync::Mutex::new(Liveness::default());
    let mut tries = 0u32;
    let r = wait::until(&format!("{unit} to become active"), timeout, poll, || {
        tries += 1;
        // The journal is read every 8th look (about every 2 s), the state every time.
        let script = if tries % 8 == 1 {
            unit_health_script(unit, since)
        } else {
            format!("systemctl show -p ActiveState --value {unit}")
        };
        let r = node.remote.exec(
            RemoteCommand::new(script)
                .sudo()
                .quiet_output()
                .timeout(Duration::from_secs(10)),
        );
        let alive = &alive;
        async move {
            let at = tokio::time::Instant::now();
            match bounded(r).await {
                Ok(o) => {
                    alive.lock().await.record(&node.spec.name, at, Ok(()));
                    let h = parse_unit_health(&o.stdout_str());
                    if h.active_state == "active" {
                        return Probe::Done(());
                    }
                    if let Some(why) = h.hopeless(unit) {
                        return Probe::Hopeless(why);
                    }
                    Probe::NotYet(format!("{unit} is {}", h.active_state))
                }
                Err(e) => match alive
                    .lock()
                    .await
                    .record(&node.spec.name, at, Err(e.clone()))
                {
                    Some(why) => Probe::Hopeless(why),
                    None => Probe::NotYet(e.to_string()),
                },
            }
        }
    })
    .await;
    let Err(e) = r else { return Ok(()) };
    // A host that stopped answering has no log to give.
    let lost = e.hopeless && e.last.contains("over SSH");
    let log = if lost {
        String::new()
    } else {
        node.remote
            .exec(
                RemoteCommand::new(format!("journalctl -u {unit} -n 15 --no-pager -o cat"))
                    .sudo()
                    .timeout(Duration::from_secs(20)),
            )
            .await
            .map(|o| o.stdout_str())
            .unwrap_or_default()
    };
    let mut message = e.to_string();
    if !log.trim().is_empty() {
        message.push_str(&format!(
            "\n    last lines of the {unit} log:\n      {}",
            crate::host::tail(&log, 15).replace('\n', "\n      ")
        ));
    }
    Err(StepError::new(message).with_hint(gate_hint(&e, unit)))
}

/// What to do after a gate stopped: for a host that stopped answering, bring it back; for a
/// unit that cannot start, its journal; for a deadline, the setting that changes it.
fn gate_hint(e: &wait::WaitTimeout, unit: &str) -> String {
    if e.hopeless && e.last.contains("over SSH") {
        "bring the host back (power, network) and rerun: finished steps are not repeated".into()
    } else if e.hopeless {
        format!(
            "see `journalctl -u {unit}` on the host for the whole story, fix the cause, and rerun"
        )
    } else {
        format!(
            "waited {}; spec.timeouts.node in the answer file sets how long a node may take. See `journalctl -u {unit}` on the host; the installer's log file has the whole story",
            humantime::format_duration(e.after)
        )
    }
}

/// A cheap look at whether the host still answers (for gates that otherwise only watch
/// the API).
async fn ping(node: &ConnectedHost) -> Result<(), String> {
    bounded(
        node.remote
            .exec(RemoteCommand::new("true").timeout(Duration::from_secs(10))),
    )
    .await
    .map(|_| ())
}

/// One look at a host that may be gone, cut off after [`LOST_AFTER`]: the SSH layer
/// reconnects and retries on its own, so one call could otherwise outlast the moment the
/// host counts as lost (a powered-off server was reported after 57 s instead of 20).
pub async fn bounded<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(LOST_AFTER, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", LOST_AFTER.as_secs())),
    }
}

/// How often a watch-driven gate looks again when the API reports no change: the host's
/// SSH liveness ([`Liveness`]) has nothing to watch, so a host that went silent is noticed
/// within [`LOST_AFTER`] plus this.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Waits for the node object, writes the CNI config for its pod CIDR, waits for Ready.
/// Both waits are driven by a watch on the node (`fieldSelector=metadata.name=<node>`): the
/// node is looked at again as soon as it changes, and every [`RECHECK`] for the host's
/// liveness.
pub async fn node_gate(
    ops: &Ops,
    cluster: &Cluster,
    node: &ConnectedHost,
    timeout: Duration,
) -> Result<(), StepError> {
    let name = node.node_name.clone();
    let alive = tokio::sync::Mutex::new(Liveness::default());
    let mut changes = crate::kube::watch::Changes::new();
    changes.watch(
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client().clone()),
        Some(&format!("metadata.name={name}")),
    );
    let mut rx = changes.subscribe();
    let registered = wait::until_changed(
        &format!("node {name} to register with a pod CIDR"),
        timeout,
        RECHECK,
        &mut rx,
        || async {
            let seen = match cluster.node(&name).await {
                Ok(Some(n)) => match wait::pod_cidr(&n) {
                    Some(c) => {
                        return Probe::Done(
                            n.spec.and_then(|s| s.pod_cidrs).unwrap_or_else(|| vec![c]),
                        );
                    }
                    None => "registered, no pod CIDR assigned yet".to_string(),
                },
                Ok(None) => "not registered yet".to_string(),
                Err(e) => e.to_string(),
            };
            still_there(node, &alive, seen).await
        },
    )
    .await?;
    let cidrs: Vec<ipnet::IpNet> = registered.iter().filter_map(|c| c.parse().ok()).collect();
    let conflist = cni::render_conflist(&cidrs)?;
    ops.write_file(
        &conflist,
        node.facts
            .file_sha256
            .get(paths::CNI_CONFLIST)
            .map(String::as_str),
    )
    .await?;
    wait::until_changed(
        &format!("node {name} to be Ready"),
        timeout,
        RECHECK,
        &mut rx,
        || async {
            let seen = match cluster.node(&name).await {
                Ok(Some(n)) => {
                    let (ready, why) = wait::node_readiness(&n);
                    if ready {
                        return Probe::Done(());
                    }
                    why
                }
                Ok(None) => "the node object disappeared".to_string(),
                Err(e) => e.to_string(),
            };
            still_there(node, &alive, seen).await
        },
    )
    .await?;
    Ok(())
}

/// Not there yet: unless the host stopped answering, in which case waiting cannot help.
async fn still_there<T>(
    node: &ConnectedHost,
    alive: &tokio::sync::Mutex<Liveness>,
    seen: String,
) -> Probe<T> {
    let at = tokio::time::Instant::now();
    let r = ping(node).await;
    match alive.lock().await.record(&node.spec.name, at, r) {
        Some(why) => Probe::Hopeless(why),
        None => Probe::NotYet(seen),
    }
}

/// Waits until `name` is a voting (no longer learner) member of the embedded etcd. k3s's
/// `/db/info` has no watch, so this one polls, every `poll` (`Timeouts::poll`, 250 ms).
pub async fn etcd_member_gate(
    cluster: &Cluster,
    node: &ConnectedHost,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    let name = node.node_name.as_str();
    let alive = tokio::sync::Mutex::new(Liveness::default());
    wait::until(
        &format!("{name} to be a voting etcd member"),
        timeout,
        poll,
        || async {
            let seen = match cluster.etcd_members().await {
                Ok(m) => match m.iter().find(|m| m.is_node(name)) {
                    Some(m) if !m.is_learner => return Probe::Done(()),
                    Some(_) => format!("{name} is still a learner"),
                    None => format!(
                        "members are {}",
                        m.iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                Err(e) => e.to_string(),
            };
            still_there(node, &alive, seen).await
        },
    )
    .await?;
    Ok(())
}
