//! `/etc/rancher/k3s/config.yaml` for the first server, joining servers and agents, as
//! k3s-host-network.md §1–§2 lays it out:
//! - host network, no overlay: `flannel-backend: none`, `disable-network-policy`, the
//!   packaged components disabled (coredns, servicelb, traefik, local-storage,
//!   metrics-server) and `disable-helm-controller`;
//! - HA embedded etcd: `cluster-init` on the first server, `server:` on the others, the same
//!   "critical" values on every server (`docs/cli/server.md`), `tls-san` for every server;
//! - secrets only by file (`token-file`, `agent-token-file`), never inline;
//! - agents get agent keys only (a server key kills `k3s agent`, see [`super::flags`]).
//!
//! Every rendered file is checked against the k3s v1.36 flag table before it is returned.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::flags::{self, K3sCommand};
use super::{K3S_MINOR, K3sError, RenderedFile, paths};

/// The packaged components every server disables (k3s-host-network.md §1; values from
/// `pkg/cli/cmds/stage.go`): CoreDNS is replaced by a host-network one, metrics-server
/// would take the kubelet's port 10250, servicelb binds host ports, traefik is unused,
/// local-storage is not needed by the appliance.
pub const DISABLED_COMPONENTS: [&str; 5] = [
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
];

/// The installer's "not protected yet" taint key: every node registers with it (`node-taint`,
/// [`ENFORCER_TAINT_SPEC`]); the policy enforcer removes it from its node once its rules are
/// applied; the application does not tolerate it (docs/enforcer.md, "The taint handshake").
pub const ENFORCER_TAINT: &str = "installer/enforcer-not-ready";

/// [`ENFORCER_TAINT`] as k3s's `node-taint` (the kubelet's `--register-with-taints`) takes it.
pub const ENFORCER_TAINT_SPEC: &str = "installer/enforcer-not-ready=true:NoSchedule";

/// The kubelet argument that lets Kubernetes 1.35+ run on a cgroup v1 host (KEP-5573;
/// k3s-host-network.md §4). Only with the answer file's explicit consent.
pub const KUBELET_ALLOW_CGROUP_V1: &str = "fail-cgroupv1=false";

/// Settings that are the same on every node of the cluster. The "critical" ones (CIDRs,
/// flannel backend, disabled components) must match on every server or a joining server
/// exits with `critical configuration value mismatch between servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Pod network (`cluster-cidr`), k3s default 10.42.0.0/16.
    pub cluster_cidr: IpNet,
    /// Service network (`service-cidr`), k3s default 10.43.0.0/16.
    pub service_cidr: IpNet,
    /// Every name and address clients may use for the API: each server's IP, node name and
    /// the address the answer file gives it (`tls-san-security` refuses any other).
    pub tls_san: Vec<String>,
    /// `etcd-snapshot-retention` (k3s default 5; k3s-host-network.md suggests 10).
    pub etcd_snapshot_retention: u32,
    /// Extra kubelet arguments (`kubelet-arg`), `name=value` without leading dashes;
    /// see [`KUBELET_ALLOW_CGROUP_V1`].
    pub kubelet_args: Vec<String>,
    /// `selinux: true` (hosts with SELinux enforcing and k3s-selinux installed).
    pub selinux: bool,
    /// `prefer-bundled-bin: true` (hosts with a buggy iptables 1.8.0–1.8.4).
    pub prefer_bundled_bin: bool,
    /// `node-taint`: taints every node registers with (install sets [`ENFORCER_TAINT_SPEC`]);
    /// the kubelet applies them when it registers the node, not to a node already registered.
    pub node_taints: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            cluster_cidr: IpNet::from(ipnet::Ipv4Net::new_assert([10, 42, 0, 0].into(), 16)),
            service_cidr: IpNet::from(ipnet::Ipv4Net::new_assert([10, 43, 0, 0].into(), 16)),
            tls_san: Vec::new(),
            etcd_snapshot_retention: 10,
            kubelet_args: Vec::new(),
            selinux: false,
            prefer_bundled_bin: false,
            node_taints: Vec::new(),
        }
    }
}

impl ClusterSettings {
    /// The cluster DNS address k3s derives when `cluster-dns` is not set: the 10th address
    /// of the service CIDR (10.43.0.10 by default; `pkg/cli/server/server.go`). The
    /// host-network CoreDNS `kube-dns` Service must use this clusterIP.
    pub fn cluster_dns(&self) -> Option<IpAddr> {
        match self.service_cidr {
            IpNet::V4(n) => {
                let base = u32::from(n.network());
                let ip = std::net::Ipv4Addr::from(base.checked_add(10)?);
                n.contains(&ip).then_some(IpAddr::V4(ip))
            }
            IpNet::V6(n) => {
                let base = u128::from(n.network());
                let ip = std::net::Ipv6Addr::from(base.checked_add(10)?);
                n.contains(&ip).then_some(IpAddr::V6(ip))
            }
        }
    }

    /// Adds `fail-cgroupv1=false` once (the answer file allowed cgroup v1 hosts).
    pub fn allow_cgroup_v1(&mut self) {
        if !self
            .kubelet_args
            .iter()
            .any(|a| a == KUBELET_ALLOW_CGROUP_V1)
        {
            self.kubelet_args.push(KUBELET_ALLOW_CGROUP_V1.to_owned());
        }
    }
}

/// What is particular to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `node-name`: unique in the cluster (a duplicate is refused by k3s with
    /// "Node password rejected").
    pub node_name: String,
    /// `node-ip`: the address other nodes reach this one at.
    pub node_ip: IpAddr,
}

/// The node's part in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// Starts the cluster (`cluster-init: true`); its token file holds the bare password,
    /// because its CA does not exist yet.
    FirstServer,
    /// Joins through `server_url` (`https://<live server>:6443`); its token file holds the
    /// full `K10…::server:…` token.
    JoiningServer { server_url: String },
    /// Runs workloads only; token file holds the full `K10…::node:…` agent token.
    Agent { server_url: String },
}

impl NodeRole {
    /// The k3s subcommand (and so the flag rules) for this role.
    pub fn command(&self) -> K3sCommand {
        match self {
            NodeRole::FirstServer | NodeRole::JoiningServer { .. } => K3sCommand::Server,
            NodeRole::Agent { .. } => K3sCommand::Agent,
        }
    }

    fn id(&self) -> &'static str {
        match self {
            NodeRole::FirstServer => "first-server",
            NodeRole::JoiningServer { .. } => "joining-server",
            NodeRole::Agent { .. } => "agent",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            NodeRole::FirstServer => "first server (starts the cluster)",
            NodeRole::JoiningServer { .. } => "server joining the cluster",
            NodeRole::Agent { .. } => "agent",
        }
    }

    /// The token file this role's config names (`token-file`).
    pub fn token_file(&self) -> &'static str {
        match self {
            NodeRole::Agent { .. } => paths::AGENT_TOKEN_FILE,
            _ => paths::SERVER_TOKEN_FILE,
        }
    }
}

/// `https://<host>:6443`, with brackets around an IPv6 address.
pub fn server_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{}", paths::API_PORT)
    } else {
        format!("https://{host}:{}", paths::API_PORT)
    }
}

#[derive(Serialize)]
struct ConfigContext<'a> {
    role: &'static str,
    role_title: &'static str,
    command: &'static str,
    k3s_minor: &'static str,
    server_url: Option<&'a str>,
    token_file: &'static str,
    agent_token_file: &'static str,
    node_name: &'a str,
    node_ip: String,
    tls_san: &'a [String],
    disable: &'static [&'static str],
    cluster_cidr: String,
    service_cidr: String,
    etcd_snapshot_retention: u32,
    kubelet_args: &'a [String],
    selinux: bool,
    prefer_bundled_bin: bool,
    node_taints: &'a [String],
}

fn invalid(field: &str, problem: impl Into<String>) -> K3sError {
    K3sError::InvalidInput {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// A Kubernetes node name: a DNS subdomain (lower-case letters, digits, `-`, `.`).
fn check_node_name(name: &str) -> Result<(), K3sError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "node-name",
            format!(
                "{name:?} is not a valid Kubernetes node name (lower-case letters, digits, '-' and '.')"
            ),
        ))
    }
}

fn check_inputs(
    role: &NodeRole,
    cluster: &ClusterSettings,
    node: &NodeSettings,
) -> Result<(), K3sError> {
    check_node_name(&node.node_name)?;
    if let NodeRole::JoiningServer { server_url } | NodeRole::Agent { server_url } = role
        && (!server_url.starts_with("https://") || server_url.contains(char::is_whitespace))
    {
        return Err(invalid(
            "server",
            format!("{server_url:?} must be an https:// URL (k3s accepts no other)"),
        ));
    }
    for san in &cluster.tls_san {
        if san.is_empty() || san.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(invalid(
                "tls-san",
                format!("{san:?} is not a host name or address"),
            ));
        }
    }
    for t in &cluster.node_taints {
        let ok = t.rsplit_once(':').is_some_and(|(kv, effect)| {
            !kv.is_empty()
                && matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
                && !t.contains(char::is_whitespace)
        });
        if !ok {
            return Err(invalid(
                "node-taint",
                format!(
                    "{t:?} must look like key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)"
                ),
            ));
        }
    }
    for arg in &cluster.kubelet_args {
        if arg.starts_with('-') || !arg.contains('=') || arg.contains(['\n', '\r']) {
            return Err(invalid(
                "kubelet-arg",
                format!("{arg:?} must look like name=value, without leading dashes"),
            ));
        }
    }
    if cluster
        .cluster_cidr
        .contains(&cluster.service_cidr.network())
        || cluster
            .service_cidr
            .contains(&cluster.cluster_cidr.network())
    {
        return Err(invalid(
            "cluster-cidr/service-cidr",
            format!(
                "{} and {} overlap",
                cluster.cluster_cidr, cluster.service_cidr
            ),
        ));
    }
    Ok(())
}

/// Renders and validates `/etc/rancher/k3s/config.yaml` (mode 0600: it names the token
/// files, and k3s-uninstall.sh removes the whole directory).
pub fn render_config(
    role: &NodeRole,
    cluster: &ClusterSettings,
    node: &NodeSettings,
) -> Result<RenderedFile, K3sError> {
    check_inputs(role, cluster, node)?;
    let mut tls_san: Vec<String> = Vec::new();
    for san in &cluster.tls_san {
        if !tls_san.contains(san) {
            tls_san.push(san.clone());
        }
    }
    let command = role.command();
    let server_url = match role {
        NodeRole::FirstServer => None,
        NodeRole::JoiningServer { server_url } | NodeRole::Agent { server_url } => {
            Some(server_url.as_str())
        }
    };
    let ctx = ConfigContext {
        role: role.id(),
        role_title: role.title(),
        command: command.as_str(),
        k3s_minor: K3S_MINOR,
        server_url,
        token_file: role.token_file(),
        agent_token_file: paths::AGENT_TOKEN_FILE,
        node_name: &node.node_name,
        node_ip: node.node_ip.to_string(),
        tls_san: &tls_san,
        disable: &DISABLED_COMPONENTS,
        cluster_cidr: cluster.cluster_cidr.to_string(),
        service_cidr: cluster.service_cidr.to_string(),
        etcd_snapshot_retention: cluster.etcd_snapshot_retention,
        kubelet_args: &cluster.kubelet_args,
        selinux: cluster.selinux,
        prefer_bundled_bin: cluster.prefer_bundled_bin,
        node_taints: &cluster.node_taints,
    };
    let content = super::render("config.yaml", &ctx)?;
    flags::validate_config_yaml(command, &content).map_err(|problems| K3sError::InvalidConfig {
        path: paths::CONFIG_FILE.into(),
        command,
        problems,
    })?;
    Ok(RenderedFile {
        path: paths::CONFIG_FILE.into(),
        mode: 0o600,
        content,
    })
}

#[cfg(test)]
mod tests;
