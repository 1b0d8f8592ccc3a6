//! The application part of `install` and `status` (filled in by part 2).

use crate::config::Plan;
use crate::kube::Cluster;
use crate::report::status::StatusSummary;

/// Adds the application's workloads and endpoints to a status.
pub async fn status(_cluster: &Cluster, _plan: &Plan, _s: &mut StatusSummary) {}
