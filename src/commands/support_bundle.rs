//! `installer support-bundle`: connects as `status` does, then hands the hosts (and the API,
//! when a server answers) to [`crate::bundle::collect`]. Exit 0 complete, 3 written but
//! partial, 1 when no archive could be written.

use std::path::PathBuf;
use std::sync::Arc;

use crate::bundle::{self, NodeInput};
use crate::cli::SupportBundleArgs;
use crate::config::Plan;
use crate::config::plan::Role;
use crate::error::Error;
use crate::host::Remote;
use crate::kube::Cluster;
use crate::report::{Event, Reporter};

use super::{session, status};

/// Runs `installer support-bundle`.
pub async fn run(
    plan: Plan,
    args: SupportBundleArgs,
    log_file: Option<PathBuf>,
    reporter: Reporter,
) -> Result<(), Error> {
    let wanted = |h: &crate::config::plan::HostPlan| {
        args.nodes.is_empty()
            || args
                .nodes
                .iter()
                .any(|n| *n == h.name || h.node_name.as_deref() == Some(n.as_str()))
    };
    let results = status::connect_hosts(&plan, args.accept_new_host_keys, &reporter).await;
    let mut nodes = Vec::new();
    let mut seen = Vec::new();
    let mut api_candidates: Vec<Arc<dyn Remote>> = Vec::new();
    for (h, r) in plan.hosts.iter().zip(results) {
        let mut row =
            serde_json::json!({"host": h.name, "role": h.role.as_str(), "address": h.ssh.address});
        let remote = match r {
            Ok(host) => {
                let (remote, f) = (host.remote.clone(), &host.facts);
                row["reachable"] = true.into();
                row["k3s_version"] = f.k3s_version.clone().into();
                row["k3s_unit"] = f.k3s_unit.clone().into();
                row["k3s_agent_unit"] = f.k3s_agent_unit.clone().into();
                if h.role == Role::Server && f.kubeconfig && f.k3s_running() {
                    api_candidates.push(remote.clone());
                }
                Ok(remote)
            }
            Err(e) => {
                row["reachable"] = false.into();
                row["error"] = e.message.clone().into();
                Err(e.message)
            }
        };
        seen.push(row);
        if wanted(h) {
            nodes.push(NodeInput {
                name: h.node_name.clone().unwrap_or_else(|| h.name.clone()),
                is_server: h.role == Role::Server,
                address: h
                    .node_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| h.ssh.address.clone()),
                remote,
            });
        }
    }
    if nodes.is_empty() {
        return Err(Error::usage(
            format!(
                "--nodes {} names no host of the answer file",
                args.nodes.join(",")
            ),
            Some("name hosts as the answer file does, or their node names".to_string()),
        ));
    }
    let mut cluster: Result<Cluster, String> = Err(if args.no_cluster {
        "skipped (--no-cluster)".to_string()
    } else {
        "no server with a running k3s and its kubeconfig could be reached".to_string()
    });
    if !args.no_cluster && !api_candidates.is_empty() {
        cluster = crate::phases::k3s_node::cluster_through_any(api_candidates)
            .await
            .map_err(|reasons| reasons.join("; "));
    }

    let mut workstation: Vec<(String, Vec<u8>)> = Vec::new();
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    workstation.push(("connect.json".into(), json(&serde_json::Value::Array(seen))));
    workstation.push((
        "plan.json".into(),
        serde_json::to_vec_pretty(&plan.summary()).unwrap_or_default(),
    ));
    // The answer file itself, redacted like everything else (its secrets are registered).
    if let Some(f) = &plan.answer_file
        && let Ok(text) = std::fs::read(f)
    {
        workstation.push(("answers.yaml".into(), text));
    }
    let journal = session::state_dir(&plan).join("journal.jsonl");
    if let Ok(j) = std::fs::read(&journal) {
        workstation.push(("journal.jsonl".into(), j));
    }
    if let Some(l) = &log_file
        && let Ok(text) = std::fs::read(l)
    {
        workstation.push(("installer.log".into(), text));
    }

    let options = bundle::Options {
        out_dir: args.out_dir.clone(),
        since: args.since,
        node_budget: args.node_budget,
        expected_servers: plan.hosts.iter().filter(|h| h.role == Role::Server).count(),
        ..Default::default()
    };
    let input = bundle::Input {
        cluster_name: plan.cluster_name.clone(),
        nodes,
        cluster: cluster.as_ref().map_err(Clone::clone),
        workstation,
        options,
    };
    let summary = bundle::collect(input, &reporter).await.map_err(|e| {
        Error::failed(
            e,
            Some("no archive was written; the log file has the details".to_string()),
        )
    })?;
    let complete = summary.complete;
    let path = summary.path.clone();
    reporter.emit(Event::BundleReady { summary });
    if complete {
        Ok(())
    } else {
        Err(Error::Partial {
            message: format!("the support bundle {path} was written, but it is partial"),
            hint: Some("manifest.json in the archive lists what is missing and why".to_string()),
        })
    }
}
