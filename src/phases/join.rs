//! `join-servers` and `join-agents`: one phase function with the role as an argument.
//! Servers join strictly one at a time (etcd admits one learner at a time,
//! k3s-host-network.md §2), each gated on Ready and a voting etcd membership; agents join
//! in parallel, each gated on Ready. Without a booted cluster (a dry run) each node's
//! changes are reported from its facts.

use std::sync::Arc;

use super::PipelineError;
use super::context::ConnectedHost;
use super::ids::PhaseId;
use super::k3s_node::{self, Booted, K3sPlan};
use super::ops::Ops;
use super::prepare::outcome;
use super::runner::{Runner, StepError};
use crate::k3s::config::NodeRole;
use crate::k3s::paths;

/// Which kind of node joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    Server,
    Agent,
}

impl JoinRole {
    pub fn phase(self) -> PhaseId {
        match self {
            JoinRole::Server => PhaseId::JoinServers,
            JoinRole::Agent => PhaseId::JoinAgents,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            JoinRole::Server => paths::SERVER_UNIT,
            JoinRole::Agent => paths::AGENT_UNIT,
        }
    }
}

/// Joins `nodes` in `role` (a no-op without nodes).
pub async fn run(
    runner: &mut Runner,
    plan: &K3sPlan<'_>,
    boot: Option<&Booted>,
    nodes: &[Arc<ConnectedHost>],
    role: JoinRole,
) -> Result<(), PipelineError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let ctx = plan.ctx;
    let reporter = runner.reporter().clone();
    let t = ctx.timeouts;
    let (limit, timeout) = match role {
        JoinRole::Server => (1, t.server),
        JoinRole::Agent => (ctx.concurrency, t.agent),
    };
    let id = role.phase();
    runner
        .phase(id.id(), id.title(), nodes, limit, |n| {
            let ops = Ops::new(n.remote.clone(), id.id(), &reporter, ctx.goal);
            async move {
                let Some(boot) = boot else {
                    if ctx.goal.applies() {
                        return Err(StepError::new("internal: a join without a booted cluster"));
                    }
                    k3s_node::converge(&ops, plan, &n, &plan.role_of(&n), None, None).await?;
                    return Ok((outcome(&ops, "joined", "already joined"), ()));
                };
                let server_url = boot.server_url.clone();
                let node_role = match role {
                    JoinRole::Server => NodeRole::JoiningServer { server_url },
                    JoinRole::Agent => NodeRole::Agent { server_url },
                };
                k3s_node::converge(
                    &ops,
                    plan,
                    &n,
                    &node_role,
                    Some(&boot.secrets),
                    Some(&boot.ca_pem),
                )
                .await?;
                k3s_node::wait_unit_active(&n, role.unit(), timeout, t.poll).await?;
                k3s_node::node_gate(&ops, &boot.cluster, &n, timeout).await?;
                if role == JoinRole::Server {
                    k3s_node::etcd_member_gate(&boot.cluster, &n, timeout, t.poll).await?;
                }
                let done = match role {
                    JoinRole::Server => "joined, Ready, etcd member",
                    JoinRole::Agent => "joined, Ready",
                };
                Ok((outcome(&ops, done, "already joined"), ()))
            }
        })
        .await?;
    Ok(())
}
