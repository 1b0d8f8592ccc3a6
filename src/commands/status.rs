//! `installer status`: reads the answer file, connects, and shows the hosts (reachable, k3s
//! unit and version), the nodes (role, version, Ready, etcd membership), the application's
//! workloads and endpoints, and where the last install stopped if it did not finish.
//! Changes nothing. Exit 0 when everything is healthy, 1 otherwise.

use std::sync::Arc;

use crate::commands::session::{self, SshConnector};
use crate::config::Plan;
use crate::config::plan::Role;
use crate::error::Error;
use crate::host::Remote;
use crate::kube::Cluster;
use crate::kube::wait::node_readiness;
use crate::phases::Journal;
use crate::phases::connect::connect_host;
use crate::phases::enforcer;
use crate::phases::k3s_node::cluster_through_any;
use crate::phases::{ConnectedHost, StepError};
use crate::report::status::{EnforcerStatus, HostStatus, MatrixStatus, NodeStatus, StatusSummary};
use crate::report::{Event, Reporter};

/// How to run status, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusOptions {
    pub accept_new_host_keys: bool,
}

/// Builds the status of the cluster of `plan`.
pub async fn collect(plan: &Plan, opts: &StatusOptions, reporter: &Reporter) -> StatusSummary {
    let mut s = StatusSummary {
        cluster: plan.cluster_name.clone(),
        ..Default::default()
    };
    let results = connect_hosts(plan, opts.accept_new_host_keys, reporter).await;
    // Every server whose k3s runs, in the plan's order: the API is read through the first that
    // answers, so one server down does not hide the cluster (issue 13).
    let mut api_hosts: Vec<Arc<dyn Remote>> = Vec::new();
    let mut reachable: Vec<(String, Arc<dyn Remote>)> = Vec::new();
    for (h, r) in plan.hosts.iter().zip(results) {
        let mut hs = HostStatus {
            host: h.name.clone(),
            role: h.role.as_str().into(),
            ..Default::default()
        };
        match r {
            Ok(host) => {
                let f = &host.facts;
                hs.reachable = true;
                hs.unit = if h.role == Role::Server {
                    f.k3s_unit.clone()
                } else {
                    f.k3s_agent_unit.clone()
                };
                hs.k3s_version = f
                    .k3s_version
                    .as_deref()
                    .map(|v| v.trim_start_matches("k3s version ").to_owned());
                if hs.unit.as_deref() != Some("active") {
                    s.problems.push(format!(
                        "{}: k3s is {}",
                        h.name,
                        hs.unit.as_deref().unwrap_or("not installed")
                    ));
                }
                if f.k3s_running() {
                    reachable.push((h.name.clone(), host.remote.clone()));
                }
                if h.role == Role::Server && f.kubeconfig && f.k3s_running() {
                    api_hosts.push(host.remote.clone());
                }
            }
            Err(e) => {
                s.problems.push(e.message.clone());
                hs.error = Some(e.message);
            }
        }
        s.hosts.push(hs);
    }
    if api_hosts.is_empty() {
        s.problems.push(
            "no server with a running k3s could be reached: the cluster is not installed or is down"
                .into(),
        );
    } else {
        match cluster_through_any(api_hosts).await {
            Ok(cluster) => {
                nodes(&cluster, plan, &mut s).await;
                super::appliance::status(&cluster, plan, &mut s).await;
            }
            Err(reasons) => s
                .problems
                .push(format!("the Kubernetes API: {}", reasons.join("; "))),
        }
    }
    // Once the appliance runs, every node must be protected; before, an enforcer that is not
    // there yet is no problem of its own (the last run says where it stopped).
    let appliance_deployed = !s.workloads.is_empty();
    enforcers(&reachable, appliance_deployed, &mut s).await;
    let journal = session::state_dir(plan).join("journal.jsonl");
    match Journal::last_matrix(&journal) {
        Ok(Some((time, table, ok))) => {
            if !ok {
                s.problems.push(format!(
                    "the probe matrix checked {time} differed from the NetworkPolicies"
                ));
            }
            s.matrix = Some(MatrixStatus { time, ok, table });
        }
        Ok(None) => {}
        Err(e) => s
            .problems
            .push(format!("cannot read {}: {e}", journal.display())),
    }
    match Journal::last_run(&journal) {
        Ok(Some(last)) => {
            if let Some(stopped) = last.stopped_at() {
                s.problems.push(stopped.clone());
                s.last_run = Some(stopped);
            }
        }
        Ok(None) => {}
        Err(e) => s
            .problems
            .push(format!("cannot read {}: {e}", journal.display())),
    }
    s.healthy = s.problems.is_empty();
    s
}

/// Each host's policy enforcer, read over SSH from its `/state` (hosts whose k3s runs).
async fn enforcers(hosts: &[(String, Arc<dyn Remote>)], expected: bool, s: &mut StatusSummary) {
    let reads = futures::future::join_all(
        hosts
            .iter()
            .map(|(_, r)| enforcer::read_state(r.as_ref(), enforcer::STATE_PORT)),
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if !expected && reads.iter().all(Result::is_err) {
        return;
    }
    for ((host, _), r) in hosts.iter().zip(reads) {
        let e = match r {
            Ok(st) => {
                if !st.ready {
                    s.problems.push(format!(
                        "{host}: the policy enforcer is not ready{}",
                        st.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
                EnforcerStatus {
                    host: host.clone(),
                    mode: Some(st.mode.clone()),
                    ready: st.ready,
                    rules: st.stats.rules,
                    last_apply_unix: st.last_apply_unix,
                    dropped_packets: st.dropped_packets,
                    would_drop_packets: st.would_drop_packets,
                    detail: st.summary(now),
                }
            }
            Err(why) => {
                s.problems
                    .push(format!("{host}: the policy enforcer's state: {why}"));
                EnforcerStatus {
                    host: host.clone(),
                    detail: why,
                    ..Default::default()
                }
            }
        };
        s.enforcers.push(e);
    }
}

/// Connects to every host of the plan and gathers its facts, in parallel, going on past
/// the hosts it cannot reach: one result per host, in the plan's order (also used by
/// `support-bundle`).
pub(crate) async fn connect_hosts(
    plan: &Plan,
    accept_new_host_keys: bool,
    reporter: &Reporter,
) -> Vec<Result<ConnectedHost, StepError>> {
    let connector = SshConnector::new(plan, accept_new_host_keys, reporter.clone());
    let specs = session::host_specs(plan);
    futures::future::join_all(specs.iter().map(|spec| connect_host(&connector, spec))).await
}

async fn nodes(cluster: &Cluster, plan: &Plan, s: &mut StatusSummary) {
    let list = match cluster.nodes().await {
        Ok(l) => l,
        Err(e) => {
            s.problems.push(format!("listing nodes: {e}"));
            return;
        }
    };
    let members = cluster.etcd_members().await.ok();
    for n in &list {
        let name = n.metadata.name.clone().unwrap_or_default();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let server = labels.contains_key("node-role.kubernetes.io/control-plane");
        let (ready, why) = node_readiness(n);
        let etcd_member = server.then(|| {
            members
                .as_ref()
                .is_some_and(|m| m.iter().any(|m| m.is_node(&name) && !m.is_learner))
        });
        if !ready {
            s.problems.push(format!("node {name}: {why}"));
        }
        if etcd_member == Some(false) {
            s.problems
                .push(format!("node {name}: not a voting etcd member"));
        }
        s.nodes.push(NodeStatus {
            name,
            role: if server {
                "server".into()
            } else {
                "agent".into()
            },
            version: n
                .status
                .as_ref()
                .and_then(|st| st.node_info.as_ref())
                .map(|i| i.kubelet_version.clone())
                .unwrap_or_default(),
            ready,
            reason: (!ready).then_some(why),
            etcd_member,
        });
    }
    if list.len() < plan.hosts.len() {
        s.problems.push(format!(
            "{} of {} hosts are registered as nodes",
            list.len(),
            plan.hosts.len()
        ));
    }
}

/// Runs `installer status`.
pub async fn run(plan: Plan, opts: StatusOptions, reporter: Reporter) -> Result<(), Error> {
    let status = collect(&plan, &opts, &reporter).await;
    let healthy = status.healthy;
    let problems = status.problems.len();
    reporter.emit(Event::StatusReady { status });
    if healthy {
        Ok(())
    } else {
        Err(Error::failed(
            anyhow::anyhow!("the cluster is not healthy ({problems} problem{})", if problems == 1 { "" } else { "s" }),
            Some("`installer install -f FILE` again converges what it can; the log file has the details".to_string()),
        ))
    }
}
