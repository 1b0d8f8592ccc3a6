//! `manifest.json`: every collector x node with its outcome, so every absence has a reason.

use serde::Serialize;

/// How a collector came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    Timeout,
    Skipped,
    Unreachable,
}

/// One collector on one node (or the cluster / the workstation when `node` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub id: String,
    pub node: Option<String>,
    /// The file in the bundle (present when some output was kept).
    pub path: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub bytes_kept: u64,
    pub bytes_dropped: u64,
    pub reason: Option<String>,
}

/// A node as the bundle saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeEntry {
    pub name: String,
    pub role: String,
    pub address: String,
    /// `ok` or `unreachable`.
    pub ssh: String,
    pub error: Option<String>,
    /// The node's clock minus the workstation's (midpoint of the request), in ms.
    pub clock_offset_ms: Option<i64>,
    pub duration_ms: u64,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub format: u32,
    pub installer_version: String,
    pub cluster: String,
    pub created_at: String,
    /// `journalctl --since` and log windows, as a UNIX time.
    pub since_epoch: i64,
    pub redaction: bool,
    /// Through which server the API answered, or why it did not.
    pub api: ApiEntry,
    pub nodes: Vec<NodeEntry>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiEntry {
    pub reachable: bool,
    pub via: Option<String>,
    pub reason: Option<String>,
}

impl Manifest {
    /// Complete: every node reached, the API answered, and nothing failed or timed out.
    pub fn complete(&self) -> bool {
        self.api.reachable
            && self
                .items
                .iter()
                .all(|i| matches!(i.status, Status::Ok | Status::Skipped))
    }

    /// Counts per status, for the summary.
    pub fn counts(&self) -> [(Status, usize); 5] {
        let n = |s| self.items.iter().filter(|i| i.status == s).count();
        [
            (Status::Ok, n(Status::Ok)),
            (Status::Failed, n(Status::Failed)),
            (Status::Timeout, n(Status::Timeout)),
            (Status::Skipped, n(Status::Skipped)),
            (Status::Unreachable, n(Status::Unreachable)),
        ]
    }
}
