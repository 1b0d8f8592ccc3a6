//! `dns`: CoreDNS on the host network behind `kube-dns`; gate: a real lookup answered on
//! every node.

use std::sync::Arc;
use std::time::Duration;

use super::app::{cluster_facts, outcome};
use super::context::ConnectedHost;
use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError};
use crate::app;
use crate::host::Remote;
use crate::kube::Cluster;

/// How often a node that has not answered yet is asked again: a DNS answer over SSH has
/// nothing to watch.
pub const LOOKUP_EVERY: Duration = Duration::from_millis(250);

/// The `dns` phase: CoreDNS applied and gated on its rollout (watch-driven), then a lookup
/// from every node (polled every [`LOOKUP_EVERY`]).
pub async fn run(
    runner: &mut Runner,
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    service_cidr: ipnet::IpNet,
    timeout: Duration,
) -> Result<(), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let remotes: Vec<Arc<dyn Remote>> = hosts.iter().map(|n| n.remote.clone()).collect();
    let id = PhaseId::Dns;
    runner
        .cluster_step(id.id(), id.title(), async {
            let facts = cluster_facts(cluster, service_cidr).await?;
            let report = app::dns::deploy(cluster, &facts, &reporter, timeout).await?;
            let check = app::dns::DnsCheck::for_cluster(&facts)?;
            app::dns::gate(&remotes, &check, timeout, LOOKUP_EVERY, &reporter)
                .await
                .map_err(|e| StepError::new(e.to_string()))?;
            let detail = format!(
                "{}; answering on {} node{}",
                report.summary(),
                remotes.len(),
                if remotes.len() == 1 { "" } else { "s" }
            );
            Ok((outcome(report.unchanged(), detail), ()))
        })
        .await
}
