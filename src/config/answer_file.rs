//! The answer file, v1, exactly as written: the raw serde model.
//!
//! Every struct refuses unknown fields, every key is camelCase, and string values are kept
//! as written (a `${VAR}` reference stays a reference): interpolation, defaults and every
//! cross-field rule belong to [`super::validate`], which turns this into a
//! [`super::plan::Plan`]. The same types serialize the file the wizard saves, so an
//! interactive install can be repeated unattended from it.
//!
//! The doc comments on these types become the JSON Schema's descriptions
//! (`installer schema`, `docs/answer-file.schema.json`) and the `hint:` of a structural error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only `apiVersion` this installer reads.
pub const API_VERSION: &str = "installer.dev/v1";
/// The only `kind` this installer reads.
pub const KIND: &str = "Cluster";

/// An answer file: everything an install needs, so it can run unattended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "installer answer file (installer.dev/v1, kind Cluster)")]
pub struct AnswerFile {
    /// The answer-file format version: `installer.dev/v1`.
    pub api_version: String,
    /// Always `Cluster`.
    pub kind: String,
    /// The cluster's name.
    pub metadata: Metadata,
    /// What to install and where.
    pub spec: Spec,
}

/// Names the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The cluster's name: a DNS label (lower-case letters, digits and `-`, at most 63 characters).
    pub name: String,
}

/// The install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// SSH settings shared by every host; each host may override any of them under `hosts[].ssh`.
    #[serde(default, skip_serializing_if = "SshSettings::is_empty")]
    pub ssh: SshSettings,
    /// The hosts: 1, 3, 4 or 5 of them. With `role: auto`, the first three are servers and the rest agents; a single host is a single server.
    pub hosts: Vec<Host>,
    /// Cluster networking.
    #[serde(default, skip_serializing_if = "Network::is_empty")]
    pub network: Network,
    /// The policy enforcer.
    #[serde(default, skip_serializing_if = "Enforcer::is_empty")]
    pub enforcer: Enforcer,
    /// k3s settings that relax what a host must pass.
    #[serde(default, skip_serializing_if = "K3s::is_empty")]
    pub k3s: K3s,
    /// How long the install waits at its gates.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The bundled application's settings.
    #[serde(default, skip_serializing_if = "App::is_empty")]
    pub app: App,
}

/// How to reach hosts over SSH. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshSettings {
    /// The login user (default: the user running the installer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The SSH port (default 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How to log in (default: the SSH agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// How to become root (default: `none` when the user is root, else `passwordless`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<Sudo>,
    /// The OpenSSH known_hosts file used to verify host keys (default ~/.ssh/known_hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<String>,
    /// A jump host every connection goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<Bastion>,
}

impl SshSettings {
    pub fn is_empty(&self) -> bool {
        self == &SshSettings::default()
    }
}

/// How to log in over SSH.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// Keys held by the running ssh-agent (SSH_AUTH_SOCK).
    Agent {},
    /// A private key file.
    Key {
        /// Path of the private key (`~` is the home directory).
        #[serde(rename = "keyFile")]
        key_file: String,
        /// The key's passphrase, if it has one; write `${VAR}` to take it from the environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        passphrase: Option<String>,
    },
    /// A password: from `password` (write `${VAR}`), from `passwordFile`, or asked on the terminal when both are absent.
    Password {
        /// The password; write `${VAR}` to take it from the environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// A file whose first line is the password.
        #[serde(
            default,
            rename = "passwordFile",
            skip_serializing_if = "Option::is_none"
        )]
        password_file: Option<String>,
    },
}

/// How the login user becomes root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SudoMode {
    /// The login user is root.
    None,
    /// `sudo` without a password.
    Passwordless,
    /// `sudo` with a password.
    Password,
}

/// Privilege escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sudo {
    /// `none` (the user is root), `passwordless` or `password`.
    pub mode: SudoMode,
    /// With `mode: password`: the password; write `${VAR}` to take it from the environment. When neither this nor `passwordFile` is set, it is asked on the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// With `mode: password`: a file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

/// A jump host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bastion {
    /// The jump host's address (IPv4, IPv6 or DNS name).
    pub address: String,
    /// Its SSH port (default 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The login user on the jump host (default: the hosts' user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How to log in to the jump host (default: the hosts' auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// The jump host's pinned SSH host-key fingerprint, `SHA256:...` as `ssh-keygen -lf` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// Per-host overrides of the shared SSH settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSsh {
    /// The login user on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// This host's SSH port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How to log in to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// How to become root on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<Sudo>,
    /// The known_hosts file for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<String>,
    /// A jump host for this host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<Bastion>,
}

/// What a host becomes in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decided by position: the first three hosts are servers, the rest agents; a single host is a server.
    #[default]
    Auto,
    /// A control-plane node running embedded etcd.
    Server,
    /// A worker node.
    Agent,
}

impl Role {
    fn is_auto(&self) -> bool {
        *self == Role::Auto
    }
}

/// One host: at least its `address`, written `- address: 10.0.0.11`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Host {
    /// How to reach the host: IPv4, IPv6 or DNS name.
    pub address: String,
    /// `auto` (default), `server` or `agent`.
    #[serde(default, skip_serializing_if = "Role::is_auto")]
    pub role: Role,
    /// The Kubernetes node name (default: the host's hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The IP address the node uses for cluster traffic (default: the address of the default route's interface). Set it on hosts with several network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// The host's pinned SSH host-key fingerprint, `SHA256:...` as `ssh-keygen -lf` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// SSH settings for this host that override `spec.ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<HostSsh>,
}

impl Host {
    /// A host at `address` with every other field left to its default.
    pub fn new(address: impl Into<String>) -> Host {
        Host {
            address: address.into(),
            role: Role::Auto,
            node_name: None,
            node_ip: None,
            host_key: None,
            ssh: None,
        }
    }
}

/// Cluster networking. The defaults are k3s's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// The pod network (default 10.42.0.0/16). Must not overlap the service network or contain a host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// The service network (default 10.43.0.0/16). Must not overlap the pod network or contain a host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// What to do with an active host firewall (firewalld or ufw): `manage` (default) opens the cluster's ports and records it for uninstall; `leave` changes nothing and stops the install with the commands to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_firewall: Option<HostFirewall>,
}

/// What the installer may do with a host firewall.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostFirewall {
    /// Open the cluster's ports (recorded on the host for uninstall).
    #[default]
    Manage,
    /// Change nothing; preflight stops with the exact commands to run.
    Leave,
}

/// k3s settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K3s {
    /// Allow hosts that boot with cgroup v1 (RHEL 8, Ubuntu 20.04, some containers): the kubelet runs with `fail-cgroupv1=false`. Kubernetes refuses cgroup v1 by default from 1.35; prefer booting the hosts with cgroup v2. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_cgroup_v1: Option<bool>,
}

impl K3s {
    pub fn is_empty(&self) -> bool {
        self == &K3s::default()
    }
}

/// How long the install waits at its gates, as durations such as `90s`, `5m` or `1h`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// For each k3s node to start, join and become Ready (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For each workload to roll out, CoreDNS included (default 5m). A rollout that cannot succeed (an image missing on a node, a pod that cannot be scheduled) stops sooner, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self == &Timeouts::default()
    }
}

impl Network {
    pub fn is_empty(&self) -> bool {
        self == &Network::default()
    }
}

/// What the policy enforcer does with a violation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnforcerMode {
    /// Refuse workloads that break the policy (default).
    #[default]
    Enforce,
    /// Admit them and report each violation.
    Audit,
}

/// The policy enforcer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Enforcer {
    /// `enforce` (default) or `audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcerMode>,
}

impl Enforcer {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
    }
}

/// The bundled application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct App {
    /// Values declared by the application (see docs/answer-file.md for the list, their types and defaults). Values left out take their defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, serde_json::Value>,
}

impl App {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}
