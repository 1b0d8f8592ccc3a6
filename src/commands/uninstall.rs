//! `installer uninstall`: the list of phases `connect`, `uninstall-check`, `stop`, `clean`
//! (and, with `--node` for an agent, `forget`: its Node deleted from the cluster), from a
//! validated plan. Nothing is contacted before the admin confirms (the cluster's name typed
//! back on a terminal, `--force` without one). Every phase goes on past a host that fails;
//! the summary names every host not cleaned and why (exit 1).

use std::sync::Arc;

use crate::cli::UninstallArgs;
use crate::config::Plan;
use crate::config::plan::Role;
use crate::error::Error;
use crate::phases::snapshot;
use crate::phases::uninstall::{self, HostResult};
use crate::phases::uninstall_plan::APP_DATA_DIRS;
use crate::phases::{Goal, Runner, StepError, StepOk, ids};
use crate::report::{ChangeAction, Event, Reporter, prompt};

use super::install::changing_run;
use super::session::{self, SshConnector};

/// How the admin confirms.
pub trait Confirm {
    /// Whether there is a person to ask.
    fn interactive(&self) -> bool;
    /// Asks for a line of text.
    fn ask(&self, question: &str) -> std::io::Result<String>;
}

/// Confirmation on the terminal.
pub struct TerminalConfirm(pub prompt::Prompts);

impl Confirm for TerminalConfirm {
    fn interactive(&self) -> bool {
        prompt::interactive()
    }
    fn ask(&self, question: &str) -> std::io::Result<String> {
        self.0.input(question, None, |_| Ok(()))
    }
}

/// Asks for (or checks) the confirmation; Err: nothing may change (exit 2, or 130).
pub fn confirm(
    cluster_name: &str,
    args: &UninstallArgs,
    hosts: usize,
    confirm: &dyn Confirm,
) -> Result<(), Error> {
    // A dry run changes nothing; --force is the admin's answer given in advance.
    if args.dry_run || args.force {
        return Ok(());
    }
    let what = format!(
        "k3s, its data and everything the installer set up on {hosts} host(s) of cluster `{}`{}",
        cluster_name,
        if args.purge_data {
            format!(
                ", and the application's data ({})",
                APP_DATA_DIRS.join(", ")
            )
        } else {
            String::new()
        }
    );
    if !confirm.interactive() {
        return Err(Error::usage(
            format!("uninstall deletes {what}: without a terminal to confirm on, it needs --force"),
            Some(
                "rerun with --force (or on a terminal, to type the cluster's name); nothing was changed"
                    .to_string(),
            ),
        ));
    }
    let snapshot = match (&args.node, args.no_snapshot) {
        (Some(_), _) => "",
        (None, false) => " A last etcd snapshot is copied to the workstation first.",
        (None, true) => " No etcd snapshot is kept (--no-snapshot).",
    };
    let typed = confirm
        .ask(&format!(
            "This deletes {what}.{snapshot} Type the cluster's name ({cluster_name}) to go on"
        ))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::Interrupted {
                Error::Interrupted
            } else {
                Error::usage(format!("cannot read the confirmation: {e}"), None)
            }
        })?;
    if typed.trim() != cluster_name {
        return Err(Error::usage(
            format!(
                "`{}` is not the cluster's name (`{cluster_name}`): nothing was changed",
                typed.trim()
            ),
            Some(
                "rerun and type the name exactly as the answer file's metadata.name gives it"
                    .to_string(),
            ),
        ));
    }
    Ok(())
}

/// The host `--node` names (as the answer file names it, or its node name): an agent.
/// `hosts`: (name, node name, is a server).
fn pick_node(hosts: &[(String, Option<String>, bool)], node: &str) -> Result<String, Error> {
    let (name, _, is_server) = hosts
        .iter()
        .find(|(n, nn, _)| n == node || nn.as_deref() == Some(node))
        .ok_or_else(|| {
            Error::usage(
                format!("--node {node} names no host of the answer file"),
                Some(
                    "name the host as spec.hosts[].address gives it, or its node name".to_string(),
                ),
            )
        })?;
    if *is_server {
        return Err(Error::usage(
            format!("--node {node} is a server: removing one server must take its etcd member out of the cluster first, which uninstall --node does not do"),
            Some("uninstall --node removes agents; to remove the whole cluster, run uninstall without --node".to_string()),
        ));
    }
    Ok(name.clone())
}

/// Runs `installer uninstall`.
pub async fn run(
    mut plan: Plan,
    args: UninstallArgs,
    confirmation: &dyn Confirm,
    reporter: Reporter,
) -> Result<(), Error> {
    let only = args
        .node
        .as_deref()
        .map(|n| {
            let hosts: Vec<(String, Option<String>, bool)> = plan
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.node_name.clone(), h.role == Role::Server))
                .collect();
            pick_node(&hosts, n)
        })
        .transpose()?;
    let hosts = if only.is_some() { 1 } else { plan.hosts.len() };
    confirm(&plan.cluster_name, &args, hosts, confirmation)?;
    let goal = if args.dry_run {
        Goal::DryRun
    } else {
        Goal::Apply
    };
    let full = plan.clone();
    if let Some(name) = &only {
        plan.hosts.retain(|h| &h.name == name);
    }
    let ctx = session::context(&plan, goal);
    let connector = SshConnector::new(&full, args.accept_new_host_keys, reporter.clone());
    let (_lock, mut runner) = changing_run(&full, "uninstall", args.dry_run, &reporter)?;
    let names: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    // A last etcd snapshot, for a whole-cluster uninstall only (one agent holds no etcd).
    let snapshot_dir = session::state_dir(&full);
    let snapshot_to = (only.is_none() && !args.no_snapshot).then_some(snapshot_dir.as_path());
    let mut list: Vec<&str> = ids::PhaseId::ids(ids::UNINSTALL);
    if snapshot_to.is_none() {
        list.retain(|p| *p != ids::PhaseId::Snapshot.id());
    }
    if only.is_some() {
        list.push(ids::PhaseId::UninstallForget.id());
    }
    runner.start(&list, &names);
    if only.is_none() && args.no_snapshot {
        reporter.warn(
            None,
            "no etcd snapshot is taken (--no-snapshot): once the servers are cleaned, the cluster's state cannot be restored",
        );
    }
    let connected = uninstall::connect(&mut runner, &ctx, &connector).await;
    let outcome = uninstall::run(&mut runner, &ctx, connected, args.purge_data, snapshot_to).await;
    if let Some(snapshot::Outcome::Failed(e)) = &outcome.snapshot {
        runner.finish(false);
        if e.interrupted {
            return Err(Error::Interrupted);
        }
        return Err(Error::failed(
            anyhow::anyhow!("{}", e.message),
            e.hint.clone().or_else(|| {
                Some("rerun, or rerun with --no-snapshot to uninstall without one".into())
            }),
        ));
    }
    let results = outcome.hosts;
    let mut forget_error = None;
    if let (Some(name), Some((_, result))) = (&only, results.first())
        && matches!(result, HostResult::Cleaned { .. } | HostResult::Nothing)
        && let Err(e) = forget(&mut runner, &full, name, &args, &reporter).await
    {
        forget_error = Some(e);
    }
    let failed: Vec<&(String, HostResult)> = results
        .iter()
        .filter(|(_, r)| matches!(r, HostResult::NotCleaned { .. }))
        .collect();
    let ok = failed.is_empty() && forget_error.is_none();
    runner.finish(ok);
    if failed
        .iter()
        .any(|(_, r)| matches!(r, HostResult::NotCleaned { error, .. } if error.interrupted))
    {
        return Err(Error::Interrupted);
    }
    for (host, r) in &results {
        let text = uninstall::describe(r);
        match r {
            HostResult::NotCleaned { .. } => reporter.warn(Some(host), text),
            _ => reporter.info(Some(host), text),
        }
    }
    match &outcome.snapshot {
        Some(snapshot::Outcome::Saved(s)) => reporter.info(
            None,
            format!(
                "the last etcd snapshot (taken on {}) is at {} ({}, SHA-256 {}), the cluster token beside it at {}: keep both, a restore needs them",
                s.host,
                s.path.display(),
                crate::report::text::bytes(s.bytes),
                s.sha256,
                s.token.display()
            ),
        ),
        Some(snapshot::Outcome::Planned { note, .. }) => reporter.info(None, note.clone()),
        _ => {}
    }
    if args.dry_run {
        reporter.info(None, "dry run: nothing was changed on any host");
    }
    if let Some(e) = forget_error {
        return Err(Error::failed(
            anyhow::anyhow!(
                "{} was cleaned, but its Node is still in the cluster: {}",
                names.join(""),
                e.message
            ),
            e.hint.or_else(|| {
                Some("delete it with `kubectl delete node NAME` once a server answers".to_string())
            }),
        ));
    }
    if failed.is_empty() {
        if !args.dry_run {
            reporter.info(
                None,
                format!(
                    "uninstalled: {} host(s) cleaned, {} had nothing left to remove{}",
                    results
                        .iter()
                        .filter(|(_, r)| matches!(r, HostResult::Cleaned { .. }))
                        .count(),
                    results
                        .iter()
                        .filter(|(_, r)| matches!(r, HostResult::Nothing))
                        .count(),
                    if args.purge_data {
                        ""
                    } else {
                        "; the application's data was kept (--purge-data deletes it)"
                    }
                ),
            );
        }
        return Ok(());
    }
    let list: Vec<String> = failed
        .iter()
        .map(|(h, r)| format!("{h}: {}", uninstall::describe(r)))
        .collect();
    Err(Error::failed(
        anyhow::anyhow!(
            "{} of {} host(s) were not cleaned:\n  {}",
            failed.len(),
            results.len(),
            list.join("\n  ")
        ),
        Some("fix what is reported for each host and rerun the same command: hosts already cleaned are left as they are".to_string()),
    ))
}

/// `forget`: deletes the agent's Node from the cluster, through the first server that answers
/// (its node-password Secret goes with it, by its owner reference).
async fn forget(
    runner: &mut Runner,
    plan: &Plan,
    host: &str,
    args: &UninstallArgs,
    reporter: &Reporter,
) -> Result<(), StepError> {
    let node = plan
        .hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| h.node_name.clone());
    let servers: Vec<crate::phases::HostSpec> = session::host_specs(plan)
        .into_iter()
        .filter(|h| h.is_server)
        .collect();
    let connector = SshConnector::new(plan, args.accept_new_host_keys, reporter.clone());
    let id = ids::PhaseId::UninstallForget;
    let dry = args.dry_run;
    let reporter = reporter.clone();
    let host = host.to_owned();
    runner
        .cluster_step(id.id(), id.title(), async move {
            let mut reasons = Vec::new();
            for s in &servers {
                let connected = match crate::phases::connect::connect_host(&connector, s).await {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        reasons.push(format!("{}: {}", s.name, e.message));
                        continue;
                    }
                };
                let name = node.clone().unwrap_or_else(|| host.clone());
                let cluster =
                    match crate::phases::k3s_node::cluster_client(connected.remote.clone()).await {
                        Ok(c) => c,
                        Err(e) => {
                            reasons.push(format!("{}: {}", s.name, e.message));
                            continue;
                        }
                    };
                // The node name the agent registered as: from its host name, as connect resolves it.
                let api: kube::Api<k8s_openapi::api::core::v1::Node> =
                    kube::Api::all(cluster.client().clone());
                let candidates = [name.clone(), host.clone()];
                let mut found = None;
                for c in &candidates {
                    if api
                        .get_opt(c)
                        .await
                        .map_err(|e| StepError::new(e.to_string()))?
                        .is_some()
                    {
                        found = Some(c.clone());
                        break;
                    }
                }
                let Some(found) = found else {
                    return Ok((
                        StepOk::unchanged(format!("no Node {name} in the cluster")),
                        (),
                    ));
                };
                if dry {
                    reporter.emit(Event::PlannedChange {
                        phase: id.id().into(),
                        host: "cluster".into(),
                        action: ChangeAction::Run,
                        target: format!("node/{found}"),
                        summary: format!(
                            "delete the Node {found} (its node-password Secret goes with it)"
                        ),
                    });
                    return Ok((
                        StepOk::changed(format!("would delete the Node {found}")),
                        (),
                    ));
                }
                api.delete(&found, &Default::default())
                    .await
                    .map_err(|e| StepError::new(format!("delete the Node {found}: {e}")))?;
                return Ok((StepOk::changed(format!("deleted the Node {found}")), ()));
            }
            Err(StepError::new(format!(
                "no server answered: {}",
                reasons.join("; ")
            )))
        })
        .await
        .map_err(|f| {
            f.failures
                .into_iter()
                .next()
                .map(|(_, e)| e)
                .unwrap_or_else(|| StepError::new("the Node could not be deleted"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        tty: bool,
        answer: &'static str,
    }
    impl Confirm for Fake {
        fn interactive(&self) -> bool {
            self.tty
        }
        fn ask(&self, _: &str) -> std::io::Result<String> {
            Ok(self.answer.to_owned())
        }
    }

    fn hosts() -> Vec<(String, Option<String>, bool)> {
        vec![
            ("10.0.0.1".into(), None, true),
            ("10.0.0.2".into(), Some("worker".into()), false),
        ]
    }

    fn args(force: bool) -> UninstallArgs {
        UninstallArgs {
            answers: crate::cli::AnswerFileArg {
                file: "answers.yaml".into(),
            },
            force,
            purge_data: false,
            no_snapshot: false,
            node: None,
            dry_run: false,
            accept_new_host_keys: false,
        }
    }

    #[test]
    fn without_a_terminal_and_without_force_it_is_a_usage_error() {
        let e = confirm(
            "lab",
            &args(false),
            2,
            &Fake {
                tty: false,
                answer: "",
            },
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(
            confirm(
                "lab",
                &args(true),
                2,
                &Fake {
                    tty: false,
                    answer: ""
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn on_a_terminal_the_cluster_name_must_be_typed_back() {
        assert!(
            confirm(
                "lab",
                &args(false),
                2,
                &Fake {
                    tty: true,
                    answer: "lab"
                }
            )
            .is_ok()
        );
        let e = confirm(
            "lab",
            &args(false),
            2,
            &Fake {
                tty: true,
                answer: "yes",
            },
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn node_takes_agents_only() {
        assert_eq!(pick_node(&hosts(), "worker").unwrap(), "10.0.0.2");
        assert_eq!(pick_node(&hosts(), "10.0.0.1").unwrap_err().exit_code(), 2);
        assert_eq!(pick_node(&hosts(), "10.9.9.9").unwrap_err().exit_code(), 2);
    }
}
