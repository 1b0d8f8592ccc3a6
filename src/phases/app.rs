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

/// The `app` phase. Returns the loaded application and its generated material.
pub async fn run(
    runner: &mut Runner,
    cluster: &Cluster,
    values: &Values,
    service_cidr: ipnet::IpNet,
    timeouts: app::DeployTimeouts,
) -> Result<(App, Generated), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::App;
    runner
        .cluster_step(id.id(), id.title(), async {
            let facts = cluster_facts(cluster, service_cidr).await?;
            let app = App::load(app::Bundle::embedded(), values.clone(), facts)?;
            let generated = app::generated::ensure(cluster, &app, &reporter).await?;
            let manifests = app.render(&generated)?;
            let report = app::deploy(cluster, &app, &manifests, &reporter, timeouts).await?;
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
