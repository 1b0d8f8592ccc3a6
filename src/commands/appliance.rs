//! The application's part of `installer status`: each workload's rollout (ready/desired,
//! restarts, problems) and each endpoint checked once from the workstation.

use crate::config::Plan;
use crate::kube::Cluster;
use crate::report::status::{EndpointStatus, StatusSummary, WorkloadStatus};

/// Adds the application's workloads and endpoints to a status.
pub async fn status(cluster: &Cluster, plan: &Plan, s: &mut StatusSummary) {
    let values = crate::app::Values::from(&plan.app);
    match crate::app::observe(cluster, values, plan.network.service_cidr).await {
        Ok(obs) => {
            for w in obs.workloads {
                let name = w.workload.to_string();
                if !w.rolled_out {
                    s.problems.push(format!("{name}: {}", w.summary));
                    for p in &w.problems {
                        s.problems.push(format!("  {p}"));
                    }
                }
                s.workloads.push(WorkloadStatus {
                    workload: name,
                    ready: w.ready.max(0) as u32,
                    desired: w.desired.max(0) as u32,
                    restarts: w.restarts.max(0) as u32,
                    problems: w.problems,
                });
            }
            for e in obs.endpoints {
                let detail = match (&e.status, &e.error) {
                    (_, Some(err)) => err.clone(),
                    (Some(code), None) => format!("HTTP {code}"),
                    (None, None) => String::new(),
                };
                if !e.ok {
                    s.problems.push(format!(
                        "{} on {} ({}): {detail}",
                        e.endpoint.name, e.endpoint.node, e.endpoint.url
                    ));
                }
                s.endpoints.push(EndpointStatus {
                    name: e.endpoint.name.clone(),
                    node: e.endpoint.node.clone(),
                    url: e.endpoint.url.clone(),
                    ok: e.ok,
                    detail,
                });
            }
        }
        Err(e) => s.problems.push(format!("the application: {e}")),
    }
}
