//! `bootstrap`: the first server, with `cluster-init`; gate: unit active, kubeconfig
//! written, API ready, node registered with its CNI config and Ready. Never starts a
//! second cluster: a first server without data while other servers hold it is refused.

use super::PipelineError;
use super::ids::PhaseId;
use super::k3s_node::{self, Booted, K3sPlan};
use super::ops::Ops;
use super::prepare::outcome;
use super::runner::{Runner, StepError};
use crate::host::RemoteExt;
use crate::host::facts::Facts;
use crate::k3s::config::{NodeRole, server_url};
use crate::k3s::{ClusterSecrets, paths};
use crate::kube::Cluster;
use crate::kube::wait::{self, Probe};
use crate::secret::Secret;

/// Refuses to bootstrap a first server that lost its data while others hold the cluster.
pub fn refuse_second_cluster(
    host: &str,
    facts: &Facts,
    members_elsewhere: &[String],
) -> Result<(), StepError> {
    if facts.etcd_data || members_elsewhere.is_empty() {
        return Ok(());
    }
    Err(StepError::new(format!(
        "{host} has no cluster data, but {} {} it: starting k3s with cluster-init here would create a second, separate cluster",
        members_elsewhere.join(", "),
        if members_elsewhere.len() == 1 { "holds" } else { "hold" }
    ))
    .with_hint("if the host was reinstalled, rejoin it by hand (`server:` pointing at a live server, its token from that server) or restore it from an etcd snapshot; the installer does not recover a lost first server in this version"))
}

/// The `bootstrap` phase. Returns None when the goal is not to apply (nothing started).
pub async fn run(runner: &mut Runner, plan: &K3sPlan<'_>) -> Result<Option<Booted>, PipelineError> {
    let ctx = plan.ctx;
    let first = plan.first.clone();
    let reporter = runner.reporter().clone();
    let t = ctx.timeouts;
    let id = PhaseId::Bootstrap;
    let mut out = runner
        .phase(id.id(), id.title(), &[first], 1, |n| {
            let ops = Ops::new(n.remote.clone(), id.id(), &reporter, ctx.goal);
            async move {
                let f = &n.facts;
                refuse_second_cluster(&n.spec.name, f, &plan.members_elsewhere)?;
                // The token files on the first server are the source of truth for the
                // cluster's join secrets: reused on every rerun, generated only once.
                let secrets = if f.server_token_file && f.agent_token_file {
                    let s = k3s_node::read_secret(n.remote.as_ref(), paths::SERVER_TOKEN_FILE).await?;
                    let a = k3s_node::read_secret(n.remote.as_ref(), paths::AGENT_TOKEN_FILE).await?;
                    match (s, a) {
                        (Some(s), Some(a)) => ClusterSecrets { server_password: s, agent_password: a },
                        _ => ClusterSecrets::generate(),
                    }
                } else if f.etcd_data {
                    return Err(StepError::new(format!(
                        "{} has cluster data ({}) but no {}: the join secrets are lost",
                        n.spec.name, paths::ETCD_DB_DIR, paths::SERVER_TOKEN_FILE
                    ))
                    .with_hint("restore /etc/rancher/k3s/server-token and agent-token from a backup, or uninstall k3s from every host and install again"));
                } else {
                    ClusterSecrets::generate()
                };
                k3s_node::converge(&ops, plan, &n, &NodeRole::FirstServer, Some(&secrets), None).await?;
                if !ctx.goal.applies() {
                    return Ok((outcome(&ops, "bootstrapped", "already running"), None));
                }
                k3s_node::wait_unit_active(&n, paths::SERVER_UNIT, t.server, t.poll).await?;
                let kubeconfig = wait::until("k3s to write its kubeconfig", t.server, t.poll, || async {
                    match n.remote.read_file(paths::KUBECONFIG, true).await {
                        Ok(Some(b)) => Probe::Done(b),
                        Ok(None) => Probe::NotYet(format!("{} does not exist yet", paths::KUBECONFIG)),
                        Err(e) => Probe::NotYet(e.to_string()),
                    }
                })
                .await?;
                let kubeconfig = Secret::new(String::from_utf8_lossy(&kubeconfig).into_owned());
                let cluster = Cluster::connect(n.remote.clone(), kubeconfig.expose()).await?;
                wait::until("the Kubernetes API to be ready (/readyz)", t.server, t.poll, || async {
                    match cluster.readyz().await {
                        Ok(true) => Probe::Done(()),
                        Ok(false) => Probe::NotYet("/readyz is not ok yet".into()),
                        Err(e) => Probe::NotYet(e.to_string()),
                    }
                })
                .await?;
                k3s_node::node_gate(&ops, &cluster, &n, t.server).await?;
                let ca_pem = n
                    .remote
                    .read_file(paths::SERVER_CA_CERT, true)
                    .await?
                    .ok_or_else(|| StepError::new(format!("{} is missing after k3s started", paths::SERVER_CA_CERT)))?;
                let booted = Booted {
                    cluster,
                    secrets,
                    ca_pem,
                    server_url: server_url(&n.node_ip.to_string()),
                };
                Ok((outcome(&ops, "bootstrapped, Ready", "already Ready"), Some(booted)))
            }
        })
        .await?;
    Ok(out.pop().flatten())
}
