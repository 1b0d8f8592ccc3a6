//! The phases of `installer upgrade` that `install` has no counterpart for (issue 14, first
//! slice): `upgrade-check` reads the running cluster and refuses, before anything changes,
//! an upgrade the versions or the cluster's health forbid; `upgrade-servers` and
//! `upgrade-agents` roll the nodes onto the staged k3s, servers strictly one at a time and
//! then the agents one at a time, each through [`k3s_node::converge`] (which restarts k3s
//! because its binary changed) and gated on what the new k3s must show. The first failed
//! gate stops the roll: no later node is touched.
//!
//! Staging is the install's `upload` phase, and the application is the install's own
//! phases (see `commands::upgrade`).

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::PipelineError;
use super::context::ConnectedHost;
use super::ids::PhaseId;
use super::journal::RunSummary;
use super::k3s_node::{self, K3sPlan};
use super::ops::Ops;
use super::runner::{Runner, StepError, StepOk};
use super::upload;
use crate::assets::ResolvedArtifact;
use crate::host::{Remote, RemoteCommand};
use crate::k3s::paths;
use crate::k3s::skew::{self, HopCheck, Version};
use crate::kube::Cluster;
use crate::kube::wait::{self, Probe};
use crate::report::ChangeAction;

/// What the check saw of one node of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    /// The host's name in the answer file.
    pub host: String,
    /// The Kubernetes node name.
    pub node: String,
    pub is_server: bool,
    /// `status.nodeInfo.kubeletVersion`; None when the node is not registered.
    pub kubelet_version: Option<String>,
    /// Ready, or why not.
    pub ready: Result<(), String>,
    /// Servers: whether `/db/info` lists the node as a voting member (None: not read).
    pub etcd_voter: Option<bool>,
    /// Servers: `/readyz` through this server (None for agents).
    pub readyz: Option<Result<(), String>>,
}

/// One reason an upgrade is refused, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub message: String,
    pub hint: String,
}

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every node already runs the target.
    UpToDate,
    /// Go ahead: the nodes whose kubelet is not on the target will be restarted.
    Go,
    /// Refused, before any change; every reason.
    Refused(Vec<Reason>),
}

/// Commands whose unfinished run blocks an upgrade (the ones that change hosts and journal).
fn blocking_command(last: &RunSummary) -> Option<&str> {
    if last.finished == Some(true) {
        return None;
    }
    let cmd = last.command.split_whitespace().next().unwrap_or("");
    // An unfinished upgrade is continued by running the upgrade again: every step is
    // re-derived from what the hosts and the cluster show.
    (cmd != "upgrade").then_some(cmd)
}

/// Decides whether an upgrade to `target` may start, from what was seen of every node and
/// the journal's last run. Pure: every refusal at once, one line each with its hint.
pub fn judge(
    seen: &[NodeSeen],
    target: &Version,
    last: Option<&RunSummary>,
    answer_file: &str,
) -> Verdict {
    let mut reasons = Vec::new();
    if let Some(last) = last
        && let Some(cmd) = blocking_command(last)
    {
        let how = if last.finished.is_none() {
            "was interrupted"
        } else {
            "failed"
        };
        reasons.push(Reason {
            message: format!(
                "the last `{}` (started {}) {how}: an upgrade does not start on an unfinished operation",
                last.command, last.started
            ),
            hint: format!(
                "finish it first: rerun `installer {cmd} -f {answer_file}` (finished steps are not repeated), then run the upgrade"
            ),
        });
    }
    let mut servers = Vec::new();
    let mut agents = Vec::new();
    for n in seen {
        let Some(v) = &n.kubelet_version else {
            reasons.push(Reason {
                message: format!(
                    "{}: node {} is not registered in the cluster",
                    n.host, n.node
                ),
                hint: format!(
                    "an upgrade needs every host of the answer file installed: run `installer install -f {answer_file}` first"
                ),
            });
            continue;
        };
        match Version::from_str(v) {
            Ok(v) => {
                if n.is_server {
                    servers.push((n.node.as_str(), v));
                } else {
                    agents.push((n.node.as_str(), v));
                }
            }
            Err(e) => reasons.push(Reason {
                message: format!("{}: node {} reports kubeletVersion {v:?}: {e}", n.host, n.node),
                hint: "the installer only upgrades k3s releases it can order (vX.Y.Z+k3sN); upgrade this node by hand or ask the vendor".into(),
            }),
        }
        if let Err(why) = &n.ready {
            reasons.push(Reason {
                message: format!("{}: node {} is not Ready: {why}", n.host, n.node),
                hint: format!(
                    "an upgrade restarts nodes one at a time and needs every other node healthy: bring {} back (`installer status -f {answer_file}` shows the cluster)",
                    n.host
                ),
            });
        }
        if n.is_server {
            if let Some(Err(why)) = &n.readyz {
                reasons.push(Reason {
                    message: format!("{}: the API server's /readyz is not ok: {why}", n.host),
                    hint: format!(
                        "see `journalctl -u k3s` on {}; while one server is unhealthy, restarting another could lose etcd's quorum",
                        n.host
                    ),
                });
            }
            match n.etcd_voter {
                Some(true) => {}
                Some(false) => reasons.push(Reason {
                    message: format!("{}: node {} is not a voting etcd member", n.host, n.node),
                    hint: "wait until it is promoted (it may still be a learner) or rejoin it; with a server out of the quorum, one more restart would stop the cluster".into(),
                }),
                None => reasons.push(Reason {
                    message: format!(
                        "{}: cannot tell whether node {} is a voting etcd member (k3s's /db/info did not answer)",
                        n.host, n.node
                    ),
                    hint: "an upgrade restarts servers only when every one is known to be in the quorum; see `journalctl -u k3s` on the servers and run the upgrade again".into(),
                }),
            }
        }
    }
    if reasons.is_empty() || !servers.is_empty() {
        match skew::check_hop(&servers, &agents, target) {
            HopCheck::UpToDate if reasons.is_empty() => return Verdict::UpToDate,
            HopCheck::UpToDate | HopCheck::Allowed => {}
            HopCheck::Refused(refusals) => {
                for r in refusals {
                    reasons.push(Reason {
                        message: r.to_string(),
                        hint: r.hint().unwrap_or_default(),
                    });
                }
            }
        }
    }
    if reasons.is_empty() {
        Verdict::Go
    } else {
        Verdict::Refused(reasons)
    }
}

/// The refusals as one error: each reason on its own line, followed by its hint.
pub fn refusal_error(reasons: &[Reason]) -> StepError {
    let mut m = format!(
        "upgrade refused ({} reason{}); nothing was changed:",
        reasons.len(),
        if reasons.len() == 1 { "" } else { "s" }
    );
    for r in reasons {
        m.push_str(&format!("\n    - {}\n      hint: {}", r.message, r.hint));
    }
    StepError::new(m).with_hint("fix each reason above and run the upgrade again")
}

/// `status.nodeInfo.kubeletVersion` of a node object.
pub fn kubelet_version(n: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    n.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
}

/// The version in `k3s --version`'s first line (`k3s version v1.36.2+k3s1 (5a1a4d4e)`).
pub fn parse_k3s_version_line(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some("k3s"), Some("version"), Some(v)) => Some(v),
        _ => None,
    }
}

/// How long the check gives a server's `/readyz` to be ok before refusing: a single failed
/// look can be a blip (an etcd leader election after a restart); a server that is down or
/// unhealthy stays failed for longer.
pub const READYZ_SETTLE: Duration = Duration::from_secs(15);

/// Reads every node of the plan through `cluster`, and `/readyz` through each server (all
/// servers at once, each given [`READYZ_SETTLE`]).
pub async fn observe(
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
) -> Result<Vec<NodeSeen>, StepError> {
    let nodes = cluster
        .nodes()
        .await
        .map_err(|e| StepError::new(format!("listing the nodes through {}: {e}", cluster.via())))?;
    let members = cluster.etcd_members().await.ok();
    let readyz = futures::future::join_all(hosts.iter().map(|h| async move {
        if h.spec.is_server {
            Some(readyz_within(h.remote.clone(), READYZ_SETTLE).await)
        } else {
            None
        }
    }))
    .await;
    let mut seen = Vec::new();
    for (h, readyz) in hosts.iter().zip(readyz) {
        let node = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(h.node_name.as_str()));
        let ready = match node {
            Some(n) => {
                let (ok, why) = wait::node_readiness(n);
                if ok { Ok(()) } else { Err(why) }
            }
            None => Err("not registered".into()),
        };
        let etcd_voter = if h.spec.is_server {
            members
                .as_ref()
                .map(|m| m.iter().any(|m| m.is_node(&h.node_name) && !m.is_learner))
        } else {
            None
        };
        seen.push(NodeSeen {
            host: h.spec.name.clone(),
            node: h.node_name.clone(),
            is_server: h.spec.is_server,
            kubelet_version: node.and_then(kubelet_version),
            ready,
            etcd_voter,
            readyz,
        });
    }
    Ok(seen)
}

/// One look at `/readyz?verbose` through a connection to this server's own API server: Ok,
/// or the checks that failed (`[-]etcd failed: reason withheld`), or why it did not answer.
async fn readyz_once(cluster: &Cluster) -> Result<(), String> {
    let req = http::Request::get("/readyz?verbose")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match cluster.client().request_text(req).await {
        Ok(body) if body.contains("readyz check passed") || body.trim() == "ok" => Ok(()),
        Ok(body) => Err(failed_checks(&body)),
        Err(kube::Error::Api(e)) => Err(failed_checks(&e.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// The failing lines of a verbose health answer (all of it when none is marked).
fn failed_checks(body: &str) -> String {
    let failed: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[-]"))
        .collect();
    if failed.is_empty() {
        format!("/readyz answered: {}", crate::host::tail(body.trim(), 3))
    } else {
        format!("/readyz: {}", failed.join(", "))
    }
}

/// Waits up to `within` for this server's own `/readyz` to be ok (one connection, made
/// again when it fails); Err says what was last seen.
async fn readyz_within(remote: Arc<dyn Remote>, within: Duration) -> Result<(), String> {
    let conn: tokio::sync::Mutex<Option<Cluster>> = tokio::sync::Mutex::new(None);
    wait::until(
        "/readyz to be ok",
        within,
        Duration::from_secs(1),
        || async {
            let mut slot = conn.lock().await;
            if slot.is_none() {
                match k3s_node::cluster_client(remote.clone()).await {
                    Ok(c) => *slot = Some(c),
                    Err(e) => return Probe::NotYet(e.message),
                }
            }
            let Some(c) = slot.as_ref() else {
                return Probe::NotYet("no connection".into());
            };
            match readyz_once(c).await {
                Ok(()) => Probe::Done(()),
                Err(e) => {
                    *slot = None;
                    Probe::NotYet(e)
                }
            }
        },
    )
    .await
    .map_err(|e| e.last)
}

/// The `upgrade-check` phase: reads the cluster through any server, judges, and fails (a
/// refusal, nothing changed) unless the upgrade may go on. Returns the verdict (never
/// `Refused`) and what was seen.
pub async fn check(
    runner: &mut Runner,
    hosts: &[Arc<ConnectedHost>],
    target: &Version,
    last: Option<&RunSummary>,
    answer_file: &str,
) -> Result<(Verdict, Vec<NodeSeen>), PipelineError> {
    let id = PhaseId::UpgradeCheck;
    let servers: Vec<Arc<dyn Remote>> = super::context::servers(hosts)
        .iter()
        .map(|n| n.remote.clone())
        .collect();
    let out = runner
        .cluster_step(id.id(), id.title(), async move {
            let cluster = k3s_node::cluster_through_any(servers).await.map_err(|reasons| {
                refusal_error(&[Reason {
                    message: format!("the cluster's API answers through no server: {}", reasons.join("; ")),
                    hint: format!("an upgrade needs a running cluster: `installer status -f {answer_file}` shows what is down"),
                }])
            })?;
            let seen = observe(&cluster, hosts).await?;
            match judge(&seen, target, last, answer_file) {
                Verdict::Refused(reasons) => Err(refusal_error(&reasons)),
                v => {
                    let from: Vec<String> = seen
                        .iter()
                        .filter_map(|n| n.kubelet_version.clone())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let detail = match v {
                        Verdict::UpToDate => format!("every node already runs {target}"),
                        _ => format!("healthy; {} -> {target}", from.join(", ")),
                    };
                    Ok((StepOk::unchanged(detail), (v, seen)))
                }
            }
        })
        .await?;
    Ok(out)
}

/// Whether each host must be restarted onto the target: its binary was replaced in this run,
/// or its kubelet does not run the target yet (a previous run staged the binary and stopped
/// before restarting it). Re-derived from facts on every run.
pub fn needs_restart(
    uploaded: &BTreeMap<String, bool>,
    seen: &[NodeSeen],
    target: &Version,
) -> BTreeMap<String, bool> {
    seen.iter()
        .map(|n| {
            let behind = n
                .kubelet_version
                .as_deref()
                .and_then(|v| Version::from_str(v).ok())
                .is_none_or(|v| v != *target);
            let up = uploaded.get(&n.host).copied().unwrap_or(false);
            (n.host.clone(), up || behind)
        })
        .collect()
}

/// Rolls `step` over the servers strictly one at a time, then over the agents one at a time
/// (phases `upgrade-servers`, `upgrade-agents`). After the first failure no further node is
/// stepped: the later ones are reported as skipped, and the agents' phase does not start.
pub async fn roll<F, Fut>(
    runner: &mut Runner,
    servers: &[Arc<ConnectedHost>],
    agents: &[Arc<ConnectedHost>],
    step: F,
) -> Result<(), PipelineError>
where
    F: Fn(Arc<ConnectedHost>) -> Fut,
    Fut: Future<Output = Result<StepOk, StepError>>,
{
    let stopped = AtomicBool::new(false);
    for (id, nodes) in [
        (PhaseId::UpgradeServers, servers),
        (PhaseId::UpgradeAgents, agents),
    ] {
        if nodes.is_empty() {
            continue;
        }
        let stopped = &stopped;
        let step = &step;
        runner
            .phase(id.id(), id.title(), nodes, 1, |n| async move {
                if stopped.load(Ordering::SeqCst) {
                    return Ok((
                        StepOk::skipped("not started: the upgrade stopped at an earlier node"),
                        (),
                    ));
                }
                match step(n).await {
                    Ok(ok) => Ok((ok, ())),
                    Err(e) => {
                        stopped.store(true, Ordering::SeqCst);
                        Err(e)
                    }
                }
            })
            .await?;
    }
    Ok(())
}

/// [`roll`] with a clean-up (`undo`, if any: the uncordon of a real run) registered with
/// [`Runner::on_failure`] before it, run when the roll fails or is interrupted, dropped when
/// it finishes.
pub async fn roll_with_clean_up<F, Fut>(
    runner: &mut Runner,
    undo: Option<(String, super::runner::CleanUp)>,
    servers: &[Arc<ConnectedHost>],
    agents: &[Arc<ConnectedHost>],
    step: F,
) -> Result<(), PipelineError>
where
    F: Fn(Arc<ConnectedHost>) -> Fut,
    Fut: Future<Output = Result<StepOk, StepError>>,
{
    if let Some((what, undo)) = undo {
        runner.on_failure(what, undo);
    }
    let rolled = roll(runner, servers, agents, step).await;
    if rolled.is_err() {
        runner.clean_up().await;
    }
    runner.forget_clean_ups();
    rolled
}

/// The API through the other servers first (the node being upgraded restarts its own),
/// then through this one.
async fn cluster_for(
    node: &ConnectedHost,
    servers: &[Arc<ConnectedHost>],
) -> Result<Cluster, StepError> {
    let mut order: Vec<Arc<dyn Remote>> = servers
        .iter()
        .filter(|s| s.spec.name != node.spec.name)
        .map(|s| s.remote.clone())
        .collect();
    if node.spec.is_server {
        order.push(node.remote.clone());
    }
    k3s_node::cluster_through_any(order).await.map_err(|r| {
        StepError::new(format!(
            "the cluster's API answers through no server: {}",
            r.join("; ")
        ))
        .with_hint("the upgrade stopped here; bring the servers back and run it again")
    })
}

/// Upgrades one node: checks the staged binary is the target, swaps the staged artifacts
/// into place ([`upload::swap_staged`]), converges it (k3s restarts
/// when its binary changed or its kubelet is behind), then the gates: the node's
/// kubeletVersion is the target, the unit is active, the node is Ready, and for a server
/// its own `/readyz` is ok and it is a voting etcd member. A dry run only reports.
pub async fn upgrade_node(
    ops: &Ops,
    plan: &K3sPlan<'_>,
    node: &ConnectedHost,
    servers: &[Arc<ConnectedHost>],
    target: &Version,
    artifacts: &[ResolvedArtifact],
) -> Result<StepOk, StepError> {
    let ctx = plan.ctx;
    let role = plan.role_of(node);
    if !ctx.goal.applies() {
        upload::swap_staged(ops, artifacts).await?;
        let cordons = plan
            .binary_changed
            .get(&node.spec.name)
            .copied()
            .unwrap_or(false);
        if cordons {
            ops.planned(
                ChangeAction::Apply,
                &format!("node/{}", node.node_name),
                &format!("cordon node {}", node.node_name),
            );
        }
        k3s_node::converge(ops, plan, node, &role, None, None).await?;
        if cordons {
            ops.planned(
                ChangeAction::Apply,
                &format!("node/{}", node.node_name),
                &format!("uncordon node {} after its gates", node.node_name),
            );
        }
        return Ok(super::prepare::outcome(
            ops,
            &format!("restarted on {target}"),
            &format!("already on {target}"),
        ));
    }
    let t = ctx.timeouts;
    let (unit, timeout) = if node.spec.is_server {
        (paths::SERVER_UNIT, t.server)
    } else {
        (paths::AGENT_UNIT, t.agent)
    };
    let host = node.spec.name.as_str();
    // The binary the restart will run (the staged one while it is staged) must be the
    // target, whatever the lock said about it: checked before it is swapped into place.
    let out = node
        .remote
        .exec(
            RemoteCommand::new(version_script())
                .sudo()
                .timeout(Duration::from_secs(30)),
        )
        .await?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim().to_owned();
    let since = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .map(|t| t - 2)
        .unwrap_or(0);
    let staged = parse_k3s_version_line(&first).and_then(|v| Version::from_str(v).ok());
    if staged != Some(*target) {
        return Err(StepError::new(format!(
            "{host}: the k3s binary to run reports {first:?}, not the target {target}; nothing was swapped and the node was not restarted"
        ))
        .with_hint("the k3s artifact does not match its lock's k3s_version: use the installer (and --assets) of one release"));
    }
    upload::swap_staged(ops, artifacts).await?;
    let restart = plan.binary_changed.get(host).copied().unwrap_or(false);
    if restart {
        // Through the other servers (the restart takes this one's API away).
        let cluster = cluster_for(node, servers).await?;
        cordon(ops, &cluster, node).await?;
    }
    k3s_node::converge(ops, plan, node, &role, None, None).await?;
    let cluster = cluster_for(node, servers).await?;
    version_gate(&cluster, node, unit, target, since, timeout, t.poll).await?;
    k3s_node::wait_unit_active(node, unit, timeout, t.poll).await?;
    k3s_node::node_gate(ops, &cluster, node, timeout).await?;
    if node.spec.is_server {
        own_readyz_gate(node, timeout).await?;
        k3s_node::etcd_member_gate(&cluster, node, timeout, t.poll).await?;
    }
    // Also a node a failed earlier run cordoned and whose clean-up could not reach the API.
    uncordon_if_ours(ops, &cluster, node).await?;
    let gates = if node.spec.is_server {
        "kubeletVersion, Ready, /readyz, etcd voter"
    } else {
        "kubeletVersion, Ready"
    };
    Ok(if restart {
        StepOk::changed(format!("restarted on {target}; gates passed: {gates}"))
    } else {
        StepOk::unchanged(format!("already on {target}; gates passed: {gates}"))
    })
}

/// The annotation the upgrade puts on a node it cordons. What it cordoned is read back from
/// the cluster (by the node's own step after its gates, by a rerun, by the clean-up of a
/// failed run), never remembered; a node cordoned by someone else is left as it is.
pub const CORDONED_BY_UPGRADE: &str = "installer/cordoned-for-upgrade";

/// The merge patch that cordons a node and marks it as cordoned by the upgrade.
pub fn cordon_patch() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {CORDONED_BY_UPGRADE: "true"}},
        "spec": {"unschedulable": true}
    })
}

/// The merge patch that undoes [`cordon_patch`] (as `kubectl uncordon`: the field removed).
pub fn uncordon_patch() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {CORDONED_BY_UPGRADE: null}},
        "spec": {"unschedulable": null}
    })
}

/// Whether the node is cordoned (`spec.unschedulable`).
pub fn is_cordoned(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

/// Whether the upgrade cordoned this node (its annotation is there).
pub fn cordoned_by_upgrade(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CORDONED_BY_UPGRADE))
}

fn api_error(node: &ConnectedHost, what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::new(format!("{}: {what} node {}: {e}", node.spec.name, node.node_name)).with_hint(
        "the upgrade stopped here; run it again once the cluster's API answers (it uncordons what it cordoned)",
    )
}

/// Cordons the node before its restart, unless it is already cordoned (by the upgrade: a
/// rerun; by someone else: left to them, and not uncordoned after).
async fn cordon(ops: &Ops, cluster: &Cluster, node: &ConnectedHost) -> Result<(), StepError> {
    let name = node.node_name.as_str();
    let n = cluster
        .node(name)
        .await
        .map_err(|e| api_error(node, "reading", e))?;
    match n {
        Some(n) if is_cordoned(&n) => {
            if !cordoned_by_upgrade(&n) {
                ops.step(format!(
                    "node {name} was already cordoned (not by the upgrade): left cordoned"
                ));
            }
            Ok(())
        }
        _ => {
            cluster
                .patch_node(name, &cordon_patch())
                .await
                .map_err(|e| api_error(node, "cordoning", e))?;
            ops.step(format!("cordoned node {name}"));
            Ok(())
        }
    }
}

/// Uncordons the node if the upgrade cordoned it (after its gates).
async fn uncordon_if_ours(
    ops: &Ops,
    cluster: &Cluster,
    node: &ConnectedHost,
) -> Result<(), StepError> {
    let name = node.node_name.as_str();
    let n = cluster
        .node(name)
        .await
        .map_err(|e| api_error(node, "reading", e))?;
    if n.as_ref().is_some_and(cordoned_by_upgrade) {
        cluster
            .patch_node(name, &uncordon_patch())
            .await
            .map_err(|e| api_error(node, "uncordoning", e))?;
        ops.step(format!("uncordoned node {name}"));
    }
    Ok(())
}

/// The nodes among `nodes` (Kubernetes names) that the upgrade cordoned, as the cluster
/// shows them.
pub fn ours_among(seen: &[k8s_openapi::api::core::v1::Node], nodes: &[String]) -> Vec<String> {
    seen.iter()
        .filter(|n| cordoned_by_upgrade(n))
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| nodes.contains(n))
        .collect()
}

/// The clean-up of a failed or interrupted upgrade (for `Runner::on_failure`): uncordons
/// every node of the plan the upgrade cordoned, through any server.
pub fn uncordon_clean_up(
    servers: Vec<Arc<dyn Remote>>,
    nodes: Vec<String>,
) -> super::runner::CleanUp {
    Box::new(move || {
        Box::pin(async move {
            let cluster = k3s_node::cluster_through_any(servers)
                .await
                .map_err(|r| {
                    StepError::new(format!(
                        "the cluster's API answers through no server: {}",
                        r.join("; ")
                    ))
                    .with_hint("run the upgrade again: it uncordons the nodes it cordoned once their gates pass")
                })?;
            let seen = cluster
                .nodes()
                .await
                .map_err(|e| StepError::new(format!("listing the nodes: {e}")))?;
            for name in ours_among(&seen, &nodes) {
                cluster
                    .patch_node(&name, &uncordon_patch())
                    .await
                    .map_err(|e| StepError::new(format!("uncordoning node {name}: {e}")))?;
            }
            Ok(())
        })
    })
}

/// Prints the first line of `--version` of the binary the node's restart will run (the
/// staged one if present, else the installed one), then the host's clock.
fn version_script() -> String {
    format!(
        "b={staged}; [ -x \"$b\" ] || b={installed}; \"$b\" --version 2>/dev/null | head -n 1; date +%s",
        staged = paths::K3S_BINARY_STAGED,
        installed = paths::K3S_BINARY
    )
}

/// Waits until the node's kubelet reports the target version (only a restarted k3s does).
/// Stops early, quoting the journal, when the unit keeps exiting or the host is gone.
async fn version_gate(
    cluster: &Cluster,
    node: &ConnectedHost,
    unit: &str,
    target: &Version,
    since: i64,
    timeout: Duration,
    poll: Duration,
) -> Result<(), StepError> {
    let name = node.node_name.as_str();
    let want = target.to_string();
    let alive = tokio::sync::Mutex::new(k3s_node::Liveness::default());
    let mut tries = 0u32;
    wait::until(
        &format!("node {name} to report kubeletVersion {want}"),
        timeout,
        poll.max(Duration::from_millis(500)),
        || {
            tries += 1;
            let look_at_unit = tries % 4 == 1;
            let alive = &alive;
            let want = want.clone();
            async move {
                let seen = match cluster.node(name).await {
                    Ok(Some(n)) => match kubelet_version(&n) {
                        Some(v) if v == want => return Probe::Done(()),
                        Some(v) => format!("kubeletVersion is {v}"),
                        None => "no kubeletVersion".into(),
                    },
                    Ok(None) => "the node object is gone".into(),
                    Err(e) => e.to_string(),
                };
                if !look_at_unit {
                    return Probe::NotYet(seen);
                }
                let at = tokio::time::Instant::now();
                let r = k3s_node::bounded(
                    node.remote.exec(
                        RemoteCommand::new(k3s_node::unit_health_script(unit, since))
                            .sudo()
                            .quiet_output()
                            .timeout(Duration::from_secs(10)),
                    ),
                )
                .await;
                match r {
                    Ok(o) => {
                        alive.lock().await.record(&node.spec.name, at, Ok(()));
                        let h = k3s_node::parse_unit_health(&o.stdout_str());
                        match h.hopeless(unit) {
                            Some(why) => Probe::Hopeless(format!("{seen}; {why}")),
                            None => Probe::NotYet(format!("{seen}; {unit} is {}", h.active_state)),
                        }
                    }
                    Err(e) => match alive.lock().await.record(&node.spec.name, at, Err(e)) {
                        Some(why) => Probe::Hopeless(why),
                        None => Probe::NotYet(seen),
                    },
                }
            }
        },
    )
    .await?;
    Ok(())
}

/// Waits until the restarted server's own API server answers `/readyz` ok.
async fn own_readyz_gate(node: &ConnectedHost, timeout: Duration) -> Result<(), StepError> {
    readyz_within(node.remote.clone(), timeout)
        .await
        .map_err(|last| {
            StepError::new(format!(
                "gave up after {} waiting for the API server on {} to be ready; last seen: {last}",
                humantime::format_duration(timeout),
                node.spec.name
            ))
            .with_hint(format!(
                "see `journalctl -u k3s` on {}; the upgrade stopped here, and the servers after it were not touched",
                node.spec.name
            ))
        })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts;
    use crate::host::fake::FakeRemote;
    use crate::phases::context::HostSpec;
    use crate::report::events::Collector;
    use crate::report::{Event, HostOutcome, Reporter};
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    const A: &str = "v1.36.4+k3s1";
    const B: &str = "v1.36.5+k3s1";

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn node(i: usize, server: bool, version: &str) -> NodeSeen {
        NodeSeen {
            host: format!("host{i}"),
            node: format!("node{i}"),
            is_server: server,
            kubelet_version: Some(version.into()),
            ready: Ok(()),
            etcd_voter: server.then_some(true),
            readyz: server.then_some(Ok(())),
        }
    }

    fn cluster(version: &str) -> Vec<NodeSeen> {
        vec![
            node(1, true, version),
            node(2, true, version),
            node(3, true, version),
            node(4, false, version),
        ]
    }

    fn reasons(v: Verdict) -> Vec<Reason> {
        match v {
            Verdict::Refused(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn last_run(command: &str, finished: Option<bool>) -> RunSummary {
        RunSummary {
            run: "1".into(),
            command: command.into(),
            started: "2026-12-03T06:00:00Z".into(),
            finished,
            done: vec![],
            failed: vec![],
        }
    }

    #[test]
    fn a_healthy_cluster_one_patch_behind_may_go_and_one_on_the_target_is_up_to_date() {
        assert_eq!(judge(&cluster(A), &v(B), None, "a.yaml"), Verdict::Go);
        assert_eq!(judge(&cluster(B), &v(B), None, "a.yaml"), Verdict::UpToDate);
        // Midway (an earlier run restarted one server): still allowed, to finish the roll.
        let mut mid = cluster(A);
        mid[0].kubelet_version = Some(B.into());
        assert_eq!(judge(&mid, &v(B), None, "a.yaml"), Verdict::Go);
    }

    #[test]
    fn a_downgrade_is_refused_naming_each_node_with_a_hint() {
        let r = reasons(judge(&cluster(B), &v(A), None, "a.yaml"));
        assert_eq!(r.len(), 4, "{r:?}");
        for (i, r) in r.iter().enumerate() {
            assert!(r.message.starts_with("downgrade refused"), "{r:?}");
            assert!(r.message.contains(&format!("node{}", i + 1)), "{r:?}");
            assert!(!r.hint.is_empty(), "{r:?}");
        }
    }

    #[test]
    fn a_two_minor_jump_is_refused() {
        let r = reasons(judge(&cluster("v1.34.2+k3s1"), &v(B), None, "a.yaml"));
        assert!(
            r.iter().all(|r| r.message.contains("one minor at a time")),
            "{r:?}"
        );
    }

    #[test]
    fn an_unhealthy_cluster_is_refused_with_one_reason_per_problem() {
        let mut c = cluster(A);
        c[1].ready = Err("NotReady (KubeletNotReady: no heartbeat)".into());
        c[2].etcd_voter = Some(false);
        c[0].readyz = Some(Err("/readyz does not answer ok".into()));
        let r = reasons(judge(&c, &v(B), None, "a.yaml"));
        assert_eq!(r.len(), 3, "{r:?}");
        // Not knowing the voters is not taken as a yes.
        let mut unknown = cluster(A);
        unknown[1].etcd_voter = None;
        let u = reasons(judge(&unknown, &v(B), None, "a.yaml"));
        assert!(
            u[0].message
                .contains("cannot tell whether node node2 is a voting"),
            "{u:?}"
        );
        assert!(
            r[0].message.starts_with("host1: the API server's /readyz"),
            "{r:?}"
        );
        assert!(
            r[1].message.starts_with("host2: node node2 is not Ready"),
            "{r:?}"
        );
        assert!(
            r[2].message.contains("node3 is not a voting etcd member"),
            "{r:?}"
        );
        assert!(r.iter().all(|r| !r.hint.is_empty()));
        // Up to date but unhealthy is not "nothing to do": it is refused.
        let mut c = cluster(B);
        c[3].ready = Err("NotReady".into());
        assert_eq!(reasons(judge(&c, &v(B), None, "a.yaml")).len(), 1);
    }

    #[test]
    fn a_node_not_registered_is_refused() {
        let mut c = cluster(A);
        c[3].kubelet_version = None;
        c[3].ready = Err("not registered".into());
        let r = reasons(judge(&c, &v(B), None, "a.yaml"));
        assert!(
            r.iter()
                .any(|r| r.message.contains("not registered in the cluster")),
            "{r:?}"
        );
    }

    #[test]
    fn an_unfinished_install_is_refused_pointing_to_its_rerun_and_an_unfinished_upgrade_is_continued()
     {
        for finished in [None, Some(false)] {
            let last = last_run("install", finished);
            let r = reasons(judge(&cluster(A), &v(B), Some(&last), "a.yaml"));
            assert_eq!(r.len(), 1, "{r:?}");
            assert!(r[0].message.contains("the last `install`"), "{r:?}");
            assert!(
                r[0].hint.contains("rerun `installer install -f a.yaml`"),
                "{r:?}"
            );
        }
        let done = last_run("install", Some(true));
        assert_eq!(
            judge(&cluster(A), &v(B), Some(&done), "a.yaml"),
            Verdict::Go
        );
        let upgrading = last_run("upgrade", None);
        assert_eq!(
            judge(&cluster(A), &v(B), Some(&upgrading), "a.yaml"),
            Verdict::Go
        );
    }

    #[test]
    fn the_refusal_error_puts_each_reason_on_its_own_line_with_its_hint() {
        let r = reasons(judge(&cluster(B), &v(A), None, "a.yaml"));
        let e = refusal_error(&r);
        let lines: Vec<&str> = e.message.lines().collect();
        assert_eq!(lines.len(), 1 + 2 * r.len(), "{}", e.message);
        assert!(lines[0].contains("nothing was changed"), "{}", e.message);
        for pair in lines[1..].chunks(2) {
            assert!(
                pair[0].trim_start().starts_with("- downgrade refused"),
                "{pair:?}"
            );
            assert!(pair[1].trim_start().starts_with("hint: "), "{pair:?}");
        }
        assert!(e.hint.is_some());
    }

    #[test]
    fn a_node_is_restarted_when_its_binary_changed_or_its_kubelet_is_behind() {
        let mut c = cluster(B);
        c[1].kubelet_version = Some(A.into());
        let uploaded: BTreeMap<String, bool> = [("host3".to_string(), true)].into_iter().collect();
        let r = needs_restart(&uploaded, &c, &v(B));
        assert!(!r["host1"]);
        assert!(r["host2"], "staged by an earlier run, never restarted");
        assert!(r["host3"]);
        assert!(!r["host4"]);
    }

    #[test]
    fn the_version_line_of_k3s_is_parsed() {
        assert_eq!(
            parse_k3s_version_line("k3s version v1.36.5+k3s1 (5a1a4d4e)"),
            Some("v1.36.5+k3s1")
        );
        assert_eq!(parse_k3s_version_line("bash: k3s: command not found"), None);
        assert_eq!(parse_k3s_version_line(""), None);
    }

    #[test]
    fn a_failed_readyz_names_its_failing_checks() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start-apiserver ok\nreadyz check failed\n";
        assert_eq!(
            failed_checks(body),
            "/readyz: [-]etcd failed: reason withheld"
        );
        assert_eq!(
            failed_checks("Unauthorized"),
            "/readyz answered: Unauthorized"
        );
    }

    fn k8s_node(name: &str, unschedulable: bool, ours: bool) -> k8s_openapi::api::core::v1::Node {
        let mut v = serde_json::json!({"metadata": {"name": name}, "spec": {}});
        if unschedulable {
            v["spec"]["unschedulable"] = true.into();
        }
        if ours {
            v["metadata"]["annotations"] = serde_json::json!({CORDONED_BY_UPGRADE: "true"});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_the_nodes_the_upgrade_cordoned_are_uncordoned_never_one_the_admin_cordoned() {
        let seen = vec![
            k8s_node("node1", false, false),
            k8s_node("node2", true, true),
            k8s_node("node3", true, false),
            k8s_node("other", true, true),
        ];
        let plan: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        assert_eq!(ours_among(&seen, &plan), ["node2"]);
        assert!(is_cordoned(&seen[2]) && !cordoned_by_upgrade(&seen[2]));
        // The patches: cordon marks the node; uncordon removes both (merge-patch nulls).
        let mut n = serde_json::json!({"metadata": {"name": "node1"}, "spec": {}});
        json_patch_merge(&mut n, &cordon_patch());
        let cordoned: k8s_openapi::api::core::v1::Node = serde_json::from_value(n.clone()).unwrap();
        assert!(is_cordoned(&cordoned) && cordoned_by_upgrade(&cordoned));
        json_patch_merge(&mut n, &uncordon_patch());
        let back: k8s_openapi::api::core::v1::Node = serde_json::from_value(n).unwrap();
        assert!(
            !is_cordoned(&back) && !cordoned_by_upgrade(&back),
            "{back:?}"
        );
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn json_patch_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        if let serde_json::Value::Object(p) = patch {
            if !target.is_object() {
                *target = serde_json::json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_patch_merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        } else {
            *target = patch.clone();
        }
    }

    #[tokio::test]
    async fn a_failed_roll_runs_the_uncordon_clean_up_and_a_finished_one_forgets_it() {
        // The clean-up is registered before the roll, run when the roll fails, dropped when
        // it succeeds.
        for fail in [true, false] {
            let hosts = mixed();
            let servers = super::super::context::servers(&hosts);
            let agents = super::super::context::agents(&hosts);
            let events = Arc::new(Collector::default());
            let mut r = runner(&events);
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            let undo: super::super::runner::CleanUp = Box::new(move || {
                Box::pin(async move {
                    flag.store(true, Ordering::SeqCst);
                    Ok(())
                })
            });
            let rolled = roll_with_clean_up(
                &mut r,
                Some(("uncordon the nodes the upgrade cordoned".into(), undo)),
                &servers,
                &agents,
                |n| async move {
                    if fail && n.spec.name == "host3" {
                        Err(StepError::new("gate failed"))
                    } else {
                        Ok(StepOk::changed("restarted"))
                    }
                },
            )
            .await;
            assert_eq!(rolled.is_err(), fail);
            // Nothing is left registered either way.
            r.clean_up().await;
            assert_eq!(ran.load(Ordering::SeqCst), fail, "fail={fail}");
        }
    }

    fn host(i: usize, server: bool) -> Arc<ConnectedHost> {
        let facts = facts::parse(
            "os_id=debian\nos_version=12\ncpus=2\nmem_kb=4000000\ndisk_free_kb=1\ndisk_total_kb=1\nhostname=h\ngather=done\n",
        )
        .unwrap();
        Arc::new(ConnectedHost {
            spec: HostSpec {
                name: format!("host{i}"),
                address: format!("10.0.0.{i}"),
                is_server: server,
                node_name: None,
                node_ip: None,
            },
            remote: Arc::new(FakeRemote::new(format!("host{i}"))),
            facts,
            node_name: format!("node{i}"),
            node_ip: format!("10.0.0.{i}").parse().unwrap(),
            node_ip_reason: "test".into(),
            facts_window: (0, 0),
        })
    }

    /// The plan lists agents and servers mixed; the roll takes the servers first.
    fn mixed() -> Vec<Arc<ConnectedHost>> {
        vec![
            host(1, false),
            host(2, true),
            host(3, true),
            host(4, false),
            host(5, true),
        ]
    }

    fn runner(events: &Arc<Collector>) -> Runner {
        Runner::new(
            "upgrade",
            Reporter::new(vec![events.clone()]),
            None,
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn servers_are_rolled_one_at_a_time_before_any_agent() {
        let hosts = mixed();
        let servers = super::super::context::servers(&hosts);
        let agents = super::super::context::agents(&hosts);
        let events = Arc::new(Collector::default());
        let mut r = runner(&events);
        let log = Mutex::new(Vec::<String>::new());
        roll(&mut r, &servers, &agents, |n| {
            let log = &log;
            async move {
                log.lock().unwrap().push(format!("start {}", n.spec.name));
                // Give any other step that could run now the chance to start.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                log.lock().unwrap().push(format!("end {}", n.spec.name));
                Ok(StepOk::changed("restarted"))
            }
        })
        .await
        .unwrap();
        let want: Vec<String> = ["host2", "host3", "host5", "host1", "host4"]
            .iter()
            .flat_map(|h| [format!("start {h}"), format!("end {h}")])
            .collect();
        assert_eq!(*log.lock().unwrap(), want);
        let phases: Vec<String> = events
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::PhaseStarted { phase, .. } => Some(phase.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(phases, ["upgrade-servers", "upgrade-agents"]);
    }

    #[tokio::test]
    async fn a_failed_gate_stops_the_roll_no_later_node_is_touched() {
        let hosts = mixed();
        let servers = super::super::context::servers(&hosts);
        let agents = super::super::context::agents(&hosts);
        let events = Arc::new(Collector::default());
        let mut r = runner(&events);
        let stepped = Mutex::new(Vec::<String>::new());
        let err = roll(&mut r, &servers, &agents, |n| {
            let stepped = &stepped;
            async move {
                stepped.lock().unwrap().push(n.spec.name.clone());
                if n.spec.name == "host3" {
                    return Err(StepError::new(
                        "gave up after 5m waiting for node node3 to report kubeletVersion v1.36.5+k3s1; last seen: kubeletVersion is v1.36.4+k3s1",
                    ));
                }
                Ok(StepOk::changed("restarted"))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(*stepped.lock().unwrap(), ["host2", "host3"]);
        let text = err.to_string();
        assert!(text.contains("host3: gave up"), "{text}");
        assert!(text.contains("kubeletVersion is v1.36.4+k3s1"), "{text}");
        let ev = events.events();
        assert!(
            !ev.iter().any(
                |e| matches!(e, Event::PhaseStarted { phase, .. } if phase == "upgrade-agents")
            ),
            "the agents' phase started after a server failed"
        );
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::HostDone { host, outcome: HostOutcome::Skipped, .. } if host == "host5"
        )));
    }
}
