//! `installer install`, part 2: on the Ready cluster of part 1, the cluster services and
//! the application, each gated.
//!
//! - `dns`: CoreDNS on the host network behind `kube-dns`; gate: a real lookup answered
//!   on every node.
//! - `enforcer`: the slot of the host-network policy enforcer, which must be Ready on
//!   every node before any application workload starts. It is not part of this version:
//!   the phase is reported as skipped, with a warning when the answer file asks for it.
//! - `app`: generated material (secrets, the appliance CA and certificates: created once,
//!   reused), then server-side apply in dependency order, each workload gated on its
//!   rollout before the next.
//! - `verify`: every endpoint the application declares answers from the workstation,
//!   checked against the appliance CA only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::install::{InstallError, Node};
use super::runner::{Runner, StepError, StepOk};
use crate::app::{self, App, ClusterFacts, Values, endpoints};
use crate::config::plan::EnforcerMode;
use crate::host::Remote;
use crate::kube::Cluster;

/// What part 2 needs from the plan.
pub struct ApplianceSpec {
    pub values: Values,
    pub service_cidr: ipnet::IpNet,
    pub enforcer: EnforcerMode,
    /// The answer file (the CA certificate is written beside it).
    pub answer_file: Option<PathBuf>,
    pub timeouts: app::DeployTimeouts,
    pub dns_timeout: Duration,
}

/// What part 2 reports back for the final summary.
pub struct Deployed {
    pub endpoints: Vec<endpoints::EndpointResult>,
    pub ca_file: Option<PathBuf>,
    /// Values generated in this run that the admin must learn once (name, value).
    pub shown_once: Vec<(String, crate::secret::Secret)>,
}

fn app_err(e: app::AppError) -> StepError {
    let hint = e.hint();
    let mut se = StepError::new(e.to_string());
    se.hint = hint;
    se
}

/// The application's view of the nodes, from the cluster.
async fn facts(cluster: &Cluster, spec: &ApplianceSpec) -> Result<ClusterFacts, StepError> {
    let nodes = cluster.nodes().await?;
    ClusterFacts::from_nodes(&nodes, spec.service_cidr).map_err(app_err)
}

/// Part 2. Runs after part 1 succeeded.
pub async fn run(
    runner: &mut Runner,
    spec: &ApplianceSpec,
    cluster: &Cluster,
    nodes: &[Arc<Node>],
) -> Result<Deployed, InstallError> {
    let reporter = runner.reporter().clone();
    let remotes: Vec<Arc<dyn Remote>> = nodes.iter().map(|n| n.remote.clone()).collect();

    runner
        .cluster_step("dns", "Cluster DNS on the host network", async {
            let facts = facts(cluster, spec).await?;
            let report = app::dns::deploy(cluster, &facts, &reporter, spec.dns_timeout)
                .await
                .map_err(app_err)?;
            let check = app::dns::DnsCheck::for_cluster(&facts).map_err(app_err)?;
            app::dns::gate(
                &remotes,
                &check,
                spec.dns_timeout,
                Duration::from_millis(500),
                &reporter,
            )
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
        .await?;

    runner
        .cluster_step("enforcer", "Policy enforcer", async {
            if spec.enforcer == EnforcerMode::Enforce {
                reporter.warn(
                    None,
                    "the answer file asks for the policy enforcer in `enforce` mode, but this version does not carry it: NetworkPolicies are not enforced on host-network pods",
                );
            }
            Ok((StepOk::skipped("not part of this version"), ()))
        })
        .await?;

    let (app, generated) = runner
        .cluster_step("app", "Deploy the application", async {
            let facts = facts(cluster, spec).await?;
            let app =
                App::load(app::Bundle::embedded(), spec.values.clone(), facts).map_err(app_err)?;
            let generated = app::generated::ensure(cluster, &app, &reporter)
                .await
                .map_err(app_err)?;
            let manifests = app.render(&generated).map_err(app_err)?;
            let report = app::deploy(cluster, &app, &manifests, &reporter, spec.timeouts)
                .await
                .map_err(app_err)?;
            let unchanged = report.unchanged() && generated.report.unchanged();
            let detail = format!("{}; every workload rolled out", report.summary());
            Ok((outcome(unchanged, detail), (app, generated)))
        })
        .await?;

    let ca_file = match &spec.answer_file {
        Some(f) => app::generated::write_ca_file(&generated, f).unwrap_or_else(|e| {
            reporter.warn(None, format!("cannot write the CA certificate: {e}"));
            None
        }),
        None => None,
    };

    let endpoints = runner
        .cluster_step("verify", "Check the application's endpoints", async {
            let results = endpoints::check(
                &app.endpoints(),
                generated.ca_cert_pem.as_deref(),
                Default::default(),
            )
            .await
            .map_err(app_err)?;
            endpoints::verdict(&results).map_err(|e| {
                StepError::new(e).with_hint(
                    "the workstation must reach every node on the application's ports; `installer status` checks them again",
                )
            })?;
            let n = results.len();
            Ok((
                StepOk::unchanged(format!("{n} endpoint{} answering", if n == 1 { "" } else { "s" })),
                results,
            ))
        })
        .await?;

    Ok(Deployed {
        endpoints,
        ca_file,
        shown_once: generated.shown_once.clone(),
    })
}

fn outcome(unchanged: bool, detail: String) -> StepOk {
    if unchanged {
        StepOk::unchanged(detail)
    } else {
        StepOk::changed(detail)
    }
}

/// Ports the application and the cluster services hold on every node, for preflight and
/// firewall openings: rendered from the templates with the nodes known after `connect`.
pub fn host_ports(
    values: &Values,
    service_cidr: ipnet::IpNet,
    nodes: &[(String, std::net::IpAddr, bool)],
) -> Result<Vec<(String, u16)>, app::AppError> {
    let facts = ClusterFacts::new(
        nodes
            .iter()
            .map(|(name, address, server)| app::NodeFact {
                name: name.clone(),
                address: *address,
                server: *server,
            })
            .collect(),
        service_cidr,
    );
    let app = App::load(app::Bundle::embedded(), values.clone(), facts)?;
    let mut out: Vec<(String, u16)> = app
        .host_ports()?
        .into_iter()
        .filter(|p| p.protocol == "TCP")
        .map(|p| (p.owner, p.port))
        .collect();
    out.sort_by_key(|(_, p)| *p);
    out.dedup_by_key(|(_, p)| *p);
    Ok(out)
}
