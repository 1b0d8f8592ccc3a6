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

/// Waits until `systemctl is-active` says active; on a timeout, shows the unit's last log.
pub async fn wait_unit_active(
    node: &ConnectedHost,
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
pub async fn node_gate(
    ops: &Ops,
    cluster: &Cluster,
    node: &ConnectedHost,
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
    let conflist = cni::render_conflist(&cidrs)?;
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

/// Waits until `name` is a voting (no longer learner) member of the embedded etcd.
pub async fn etcd_member_gate(
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
