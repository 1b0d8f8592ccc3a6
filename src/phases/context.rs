//! What every phase shares: the goal of the run, the hosts as the plan names them, the
//! cluster-wide settings, and the connected-host type that `connect` hands to every later
//! phase. Commands (install, preflight, status, upgrade, support bundle, uninstall, and the coming
//! node operations) build one [`Context`] from the plan and call the phases they need.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::preflight::Relaxations;
use super::runner::Named;
use crate::host::facts::Facts;
use crate::host::{HostError, Remote};
use crate::k3s::config::ClusterSettings;

/// How far a run goes, handed to the runner's phases and to the door for host changes
/// ([`super::ops::Ops`]), so no call site decides on its own whether to change a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Connect, gather facts, run every check (temporary probes included); stop there.
    Preflight,
    /// Connect and gather facts, then report every change each phase would make, as typed
    /// change events; nothing is sent to a host that changes it, not even temporarily.
    DryRun,
    /// Make the changes.
    Apply,
}

impl Goal {
    /// Whether changes are made (else they are only reported).
    pub fn applies(self) -> bool {
        self == Goal::Apply
    }

    /// Whether temporary probes (preflight's test listeners) may run: they change a host
    /// for a minute, so a dry run reports them instead.
    pub fn allows_probes(self) -> bool {
        self != Goal::DryRun
    }

    pub fn is_dry_run(self) -> bool {
        self == Goal::DryRun
    }
}

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

impl Named for HostSpec {
    fn name(&self) -> &str {
        &self.name
    }
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

/// What the phases of one run share, derived from the plan.
#[derive(Debug, Clone)]
pub struct Context {
    pub goal: Goal,
    pub cluster_name: String,
    pub hosts: Vec<HostSpec>,
    /// CIDRs, kubelet args...; `tls_san` is filled in from the servers at bootstrap.
    pub cluster: ClusterSettings,
    pub relax: Relaxations,
    /// Ports the application holds on every node (from the answer file's values; replaced
    /// after `connect` by every port the rendered templates hold, see
    /// [`super::app::host_ports`]).
    pub app_ports: Vec<(String, u16)>,
    /// UDP ports the application and the cluster services hold on every node (CoreDNS's).
    pub app_udp_ports: Vec<(String, u16)>,
    /// Hosts worked on at once in parallel phases.
    pub concurrency: usize,
    pub timeouts: Timeouts,
}

impl Context {
    /// The servers' specs, in plan order (the first is the bootstrap server).
    pub fn servers(&self) -> impl Iterator<Item = &HostSpec> {
        self.hosts.iter().filter(|h| h.is_server)
    }
}

/// Opens the connection to a host (the SSH layer in the product; fakes in tests).
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, host: &HostSpec) -> Result<Arc<dyn Remote>, HostError>;
}

/// A host after `connect`: its connection, facts, and resolved identity as a node.
pub struct ConnectedHost {
    pub spec: HostSpec,
    pub remote: Arc<dyn Remote>,
    pub facts: Facts,
    /// The Kubernetes node name it registers (or has registered) as.
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Why this node IP was chosen (reported so a multi-NIC surprise is visible).
    pub node_ip_reason: String,
    /// The workstation's clock (epoch seconds) when the facts were asked for and when they
    /// came back: the host read its clock in between (for the clock-skew check).
    pub facts_window: (i64, i64),
}

impl Named for ConnectedHost {
    fn name(&self) -> &str {
        &self.spec.name
    }
}

/// The servers among connected hosts, in plan order.
pub fn servers(hosts: &[Arc<ConnectedHost>]) -> Vec<Arc<ConnectedHost>> {
    hosts.iter().filter(|n| n.spec.is_server).cloned().collect()
}

/// The agents among connected hosts, in plan order.
pub fn agents(hosts: &[Arc<ConnectedHost>]) -> Vec<Arc<ConnectedHost>> {
    hosts
        .iter()
        .filter(|n| !n.spec.is_server)
        .cloned()
        .collect()
}
