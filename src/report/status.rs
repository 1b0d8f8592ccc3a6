//! What `installer status` reports: plain data (serializable for `--output json`), never a
//! secret. Built by `commands::status`, printed by the renderers.

use serde::Serialize;

/// The whole picture.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusSummary {
    pub cluster: String,
    /// Everything below is as it should be.
    pub healthy: bool,
    pub hosts: Vec<HostStatus>,
    pub nodes: Vec<NodeStatus>,
    pub workloads: Vec<WorkloadStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Each reachable host's policy enforcer, as its `/state` says.
    pub enforcers: Vec<EnforcerStatus>,
    /// The probe matrix the last `verify` checked (from the journal).
    pub matrix: Option<MatrixStatus>,
    /// Where the last install stopped, if it did not finish.
    pub last_run: Option<String>,
    /// Every reason the cluster is not healthy, one line each.
    pub problems: Vec<String>,
}

/// One node's policy enforcer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnforcerStatus {
    pub host: String,
    /// `enforce` or `audit` (None when its state cannot be read).
    pub mode: Option<String>,
    pub ready: bool,
    pub rules: u64,
    pub last_apply_unix: Option<u64>,
    pub dropped_packets: u64,
    pub would_drop_packets: u64,
    /// The one-line summary, or why its state cannot be read.
    pub detail: String,
}

/// The last probe matrix.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MatrixStatus {
    /// When `verify` checked it.
    pub time: String,
    pub ok: bool,
    pub table: String,
}

/// One host of the answer file, as seen over SSH.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub role: String,
    pub reachable: bool,
    /// `k3s` / `k3s-agent` unit state (`active`, `failed`, ...).
    pub unit: Option<String>,
    pub k3s_version: Option<String>,
    pub error: Option<String>,
}

/// One Kubernetes node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub version: String,
    pub ready: bool,
    /// Why not Ready.
    pub reason: Option<String>,
    /// Servers: a voting etcd member (None for agents).
    pub etcd_member: Option<bool>,
}

/// One application workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkloadStatus {
    /// `DaemonSet/gateway`.
    pub workload: String,
    pub ready: u32,
    pub desired: u32,
    pub restarts: u32,
    pub problems: Vec<String>,
}

/// One endpoint of the application, checked from the workstation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub node: String,
    pub url: String,
    pub ok: bool,
    pub detail: String,
}
