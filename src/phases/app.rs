//! `app`: generated material (secrets, the appliance CA and certificates: created once,
//! reused), then server-side apply in dependency order, each workload gated on its
//! rollout before the next.

use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError, StepOk};
use crate::app::{self, App, ClusterFacts, Values, generated::Generated};
use crate::kube::Cluster;

/// The application's view of the nodes, from the cluster.
pub async fn cluster_facts(
    cluster: &Cluster,
    service_cidr: ipnet::IpNet,
) -> Result<ClusterFacts, StepError> {
    let nodes = cluster.nodes().await?;
    Ok(ClusterFacts::from_nodes(&nodes, service_cidr)?)
}

/// A cluster step's outcome.
pub fn outcome(unchanged: bool, detail: String) -> StepOk {
    if unchanged {
        StepOk::unchanged(detail)
    } else {
        StepOk::changed(detail)
    }
}

/// The application made ready to roll out, by [`prepare`].
pub struct Prepared {
    pub app: App,
    pub generated: Generated,
    pub manifests: app::Manifests,
    /// What applying the objects that are not workloads changed.
    pub setup: crate::kube::apply::ApplyReport,
}

/// Everything of the `app` phase that does not depend on cluster DNS, so it runs while
/// CoreDNS rolls out (docs/design.md, "Overlap"): the application loaded for the cluster's
/// nodes, its generated material (created once, reused), its manifests rendered and
/// validated, and the objects that are not workloads applied. Its result is handed to
/// [`run`], which reports a failure here as the `app` phase's.
pub async fn prepare(
    cluster: &Cluster,
    values: &Values,
    service_cidr: ipnet::IpNet,
    reporter: &crate::report::events::Reporter,
) -> Result<Prepared, StepError> {
    let facts = cluster_facts(cluster, service_cidr).await?;
    let app = App::load(app::Bundle::embedded(), values.clone(), facts)?;
    let generated = app::generated::ensure(cluster, &app, reporter).await?;
    let manifests = app.render(&generated)?;
    let setup = app::apply_setup(cluster, &app, &manifests, reporter).await?;
    Ok(Prepared {
        app,
        generated,
        manifests,
        setup,
    })
}

/// The `app` phase: with what [`prepare`] made ready, every workload applied and gated
/// together. Returns the loaded application and its generated material.
pub async fn run(
    runner: &mut Runner,
    cluster: &Cluster,
    prepared: Result<Prepared, StepError>,
    timeouts: app::DeployTimeouts,
) -> Result<(App, Generated), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::App;
    runner
        .cluster_step(id.id(), id.title(), async {
            let Prepared {
                app,
                generated,
                manifests,
                setup,
            } = prepared?;
            let mut report = setup;
            report.extend(app::roll_out(cluster, &app, &manifests, &reporter, timeouts).await?);
            let unchanged = report.unchanged() && generated.report.unchanged();
            let detail = format!("{}; every workload rolled out", report.summary());
            Ok((outcome(unchanged, detail), (app, generated)))
        })
        .await
}

/// The host ports the application and the cluster services hold, by protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPorts {
    pub tcp: Vec<(String, u16)>,
    pub udp: Vec<(String, u16)>,
}

/// Ports the application and the cluster services hold on every node, for preflight and
/// firewall openings: rendered from the templates with the nodes known after `connect`.
pub fn host_ports(
    values: &Values,
    service_cidr: ipnet::IpNet,
    nodes: &[(String, std::net::IpAddr, bool)],
) -> Result<HostPorts, app::AppError> {
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
    let all = app.host_ports()?;
    let of = |protocol: &str| {
        let mut out: Vec<(String, u16)> = all
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| (p.owner.clone(), p.port))
            .collect();
        out.sort_by_key(|(_, p)| *p);
        out.dedup_by_key(|(_, p)| *p);
        out
    };
    Ok(HostPorts {
        tcp: of("TCP"),
        udp: of("UDP"),
    })
}
