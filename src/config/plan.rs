//! The plan: a validated, immutable description of an install.
//!
//! Built once by [`super::validate`] from an answer file (or the wizard's answers); every
//! field here has been checked, every default filled in, every `${VAR}` resolved and every
//! secret wrapped in [`Secret`]. Later stages (SSH, phases) read it and never write it back:
//! what is observed on the hosts lives in their facts, not here.

use super::app::AppValue;
use crate::secret::Secret;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

pub use super::answer_file::{EnforcerMode, HostFirewall};

/// k3s's default pod network (`--cluster-cidr`).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// k3s's default service network (`--service-cidr`).
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// The default of `spec.timeouts.node` and `spec.timeouts.rollout`.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// A validated install.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The answer file this plan came from (`None` for a plan built in memory).
    pub answer_file: Option<PathBuf>,
    /// `metadata.name`.
    pub cluster_name: String,
    /// The hosts in answer-file order; the first server is the one that initializes the cluster.
    pub hosts: Vec<HostPlan>,
    pub network: NetworkPlan,
    pub enforcer: EnforcerMode,
    /// Whether the answer file sets `spec.enforcer.mode` (a default is not warned about).
    pub enforcer_chosen: bool,
    /// Run the kubelet on cgroup v1 hosts (`spec.k3s.allowCgroupV1`).
    pub allow_cgroup_v1: bool,
    /// How long to wait for each node (`spec.timeouts.node`).
    pub node_timeout: std::time::Duration,
    /// How long to wait for each workload to roll out (`spec.timeouts.rollout`).
    pub rollout_timeout: std::time::Duration,
    /// The application's values, every declared value with a given or default value present.
    pub app: AppValues,
    /// Line and column of each application value the file gives (defaults have none), so an
    /// error found only when the templates are rendered can point at the value.
    pub app_value_at: BTreeMap<String, (usize, usize)>,
}

impl Plan {
    /// The servers, in order.
    pub fn servers(&self) -> impl Iterator<Item = &HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Server)
    }

    /// The agents, in order.
    pub fn agents(&self) -> impl Iterator<Item = &HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Agent)
    }

    /// The application's port values (every one a host port on every node), for the
    /// preflight port checks and firewall openings.
    pub fn app_ports(&self) -> Vec<(String, u16)> {
        self.app
            .iter()
            .filter_map(|(k, v)| v.as_port().map(|p| (k.clone(), p)))
            .collect()
    }

    /// What to show for a dry run: plain strings only, secrets never included.
    pub fn summary(&self) -> PlanSummary {
        PlanSummary {
            cluster: self.cluster_name.clone(),
            answer_file: self.answer_file.as_ref().map(|p| p.display().to_string()),
            cluster_cidr: self.network.cluster_cidr.to_string(),
            service_cidr: self.network.service_cidr.to_string(),
            enforcer: match self.enforcer {
                EnforcerMode::Enforce => "enforce".into(),
                EnforcerMode::Audit => "audit".into(),
            },
            hosts: self
                .hosts
                .iter()
                .map(|h| PlanHostRow {
                    address: h.name.clone(),
                    port: h.ssh.port,
                    role: h.role.as_str().into(),
                    node_name: h
                        .node_name
                        .clone()
                        .unwrap_or_else(|| "(its hostname)".into()),
                    node_ip: h.node_ip.map(|ip| ip.to_string()),
                    user: h.ssh.user.clone(),
                    auth: h.ssh.auth.describe(),
                    sudo: h.sudo.describe().into(),
                    bastion: h
                        .bastion
                        .as_ref()
                        .map(|b| format!("{}@{}:{}", b.user, b.address, b.port)),
                    host_key: h.ssh.host_key.clone(),
                })
                .collect(),
            app: self
                .app
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        }
    }
}

/// What a host is in the cluster, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Control plane with embedded etcd.
    Server,
    /// Worker.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// One host of the plan.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// The host's display name: its address as written in the answer file. Events and
    /// errors name the host by this.
    pub name: String,
    /// Position in `spec.hosts`.
    pub index: usize,
    pub role: Role,
    /// `nodeName`, or `None` to use the host's hostname (known only once connected).
    pub node_name: Option<String>,
    /// `nodeIp`, or `None` to let k3s pick the default route's address.
    pub node_ip: Option<IpAddr>,
    /// How to reach and log in to the host.
    pub ssh: SshTarget,
    /// A jump host to go through, if any.
    pub bastion: Option<SshTarget>,
    /// How to become root.
    pub sudo: SudoPlan,
}

/// Where and how to open an SSH session (a host or a bastion).
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Address as written (IP or DNS name, without brackets).
    pub address: String,
    pub port: u16,
    pub user: String,
    pub auth: AuthMethod,
    /// The OpenSSH known_hosts file to check and record host keys in.
    pub known_hosts_file: PathBuf,
    /// A pinned host-key fingerprint (`SHA256:...`); when set it wins over known_hosts.
    pub host_key: Option<String>,
}

/// How to log in.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// Keys in the running ssh-agent.
    Agent,
    /// A private key file (checked to exist), with its passphrase if one was given.
    KeyFile {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    Password(Secret),
}

impl AuthMethod {
    /// A short description for tables: `agent`, `key ~/.ssh/id_ed25519`, `password`.
    pub fn describe(&self) -> String {
        match self {
            AuthMethod::Agent => "agent".into(),
            AuthMethod::KeyFile { path, passphrase } => format!(
                "key {}{}",
                path.display(),
                if passphrase.is_some() {
                    " (passphrase)"
                } else {
                    ""
                }
            ),
            AuthMethod::Password(_) => "password".into(),
        }
    }
}

/// How the login user becomes root.
#[derive(Debug, Clone)]
pub enum SudoPlan {
    /// The user is root.
    None,
    Passwordless,
    Password(Secret),
}

impl SudoPlan {
    pub fn describe(&self) -> &'static str {
        match self {
            SudoPlan::None => "none (root)",
            SudoPlan::Passwordless => "passwordless",
            SudoPlan::Password(_) => "password",
        }
    }
}

/// Cluster networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub cluster_cidr: IpNet,
    pub service_cidr: IpNet,
    /// `spec.network.hostFirewall`.
    pub host_firewall: HostFirewall,
}

/// The application's values by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppValues(pub BTreeMap<String, AppValue>);

impl AppValues {
    pub fn get(&self, name: &str) -> Option<&AppValue> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &AppValue)> {
        self.0.iter()
    }
}

/// A plan as plain strings, for the dry-run table and `--output json`. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    pub cluster: String,
    pub answer_file: Option<String>,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub enforcer: String,
    pub hosts: Vec<PlanHostRow>,
    /// Application values as shown (secrets as `***`).
    pub app: Vec<(String, String)>,
}

/// One host's row in a [`PlanSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanHostRow {
    pub address: String,
    pub port: u16,
    pub role: String,
    pub node_name: String,
    pub node_ip: Option<String>,
    pub user: String,
    pub auth: String,
    pub sudo: String,
    pub bastion: Option<String>,
    pub host_key: Option<String>,
}
