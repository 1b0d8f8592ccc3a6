//! `installer upgrade`: rolls the k3s this installer carries (embedded, or `--assets`) onto
//! a running cluster, then converges the application, on the install's phases.
//!
//! Order: connect; `upgrade-check` reads every node through any server and refuses, before
//! anything changes, what the version rules or the cluster's health forbid (and an
//! unfinished install or uninstall in the journal); `upload` stages the new binary and
//! images on every node at side paths (the install's phase with
//! `Destination::Staged`: nothing running changes, and a k3s restarted early stays on the
//! old release); `snapshot` copies an etcd snapshot and the cluster token to the workstation
//! before the first restart (the uninstall's phase; skipped when no node restarts);
//! `upgrade-servers` one at a time, then `upgrade-agents` one at a time, each
//! node's staged files swapped into place and the node cordoned right before its restart,
//! then converged, gated and uncordoned (a failed roll uncordons what it cordoned); then
//! the install's application phases (dns, enforcer, app, verify). The upgraded version is
//! recorded in the journal. A refused upgrade is not journaled: it changed nothing.
//!
//! When every node already runs the target, no node is restarted, but the staging and the
//! application phases still run: a release may change only the application, and on an
//! unchanged one they change nothing.

use std::sync::Arc;

use crate::cli::UpgradeArgs;
use crate::commands::install::{
    answer_display, appliance_phases, asset_store, open_journal, pipeline_error,
};
use crate::commands::session::{self, SshConnector};
use crate::config::Plan;
use crate::error::Error;
use crate::host::Remote;
use crate::k3s::skew::Version;
use crate::phases::journal::RunSummary;
use crate::phases::k3s_node::{self, K3sPlan};
use crate::phases::ops::Ops;
use crate::phases::upgrade::{self, Verdict};
use crate::phases::{self, Goal, Journal, PipelineError, Runner, ids};
use crate::report::{Event, Reporter};

/// Runs an upgrade of `plan`'s cluster.
pub async fn run(plan: Plan, args: UpgradeArgs, reporter: Reporter) -> Result<(), Error> {
    reporter.emit(Event::PlanReady {
        plan: plan.summary(),
    });
    let store = asset_store(
        args.connect.assets.as_ref(),
        args.connect.assets_lock.as_ref(),
    )?;
    let target: Version = store.k3s_version().parse().map_err(|e| {
        Error::usage(
            format!("the asset lock's k3s_version: {e}"),
            Some("the lock must name a k3s release such as v1.36.4+k3s1".into()),
        )
    })?;
    let goal = if args.dry_run {
        Goal::DryRun
    } else {
        Goal::Apply
    };
    let ctx = session::context(&plan, goal);
    let connector = SshConnector::new(&plan, args.connect.accept_new_host_keys, reporter.clone());
    // One run at a time (a dry run takes no lock). The journal is read now and written from
    // the moment the checks passed.
    let _lock = if args.dry_run {
        None
    } else {
        Some(session::lock(&plan, "upgrade")?)
    };
    let journal_path = session::state_dir(&plan).join("journal.jsonl");
    let last = Journal::last_run(&journal_path).ok().flatten();
    let name = if args.dry_run {
        "upgrade --dry-run"
    } else {
        "upgrade"
    };
    let mut runner = Runner::new(name, reporter.clone(), None, session::cancel_token());
    let hosts: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    runner.start(&ids::PhaseId::ids(ids::UPGRADE), &hosts);
    let result = pipeline(
        &mut runner,
        &plan,
        &ctx,
        &connector,
        &store,
        &target,
        last.as_ref(),
    )
    .await;
    runner.finish(result.is_ok());
    result.map_err(pipeline_error)?;
    if args.dry_run {
        reporter.info(None, "dry run: nothing was changed on any host");
    } else {
        reporter.info(
            None,
            format!(
                "every node runs {target}; `installer status -f {}` shows the cluster",
                answer_display(&plan)
            ),
        );
    }
    Ok(())
}

/// The `snapshot` phase with the upgrade's purpose: taken on the first active server and
/// copied, checksummed, with the token beside it, into the cluster's state directory.
async fn snapshot_before_restarts(
    runner: &mut Runner,
    ctx: &phases::Context,
    plan: &Plan,
    hosts: &[Arc<phases::ConnectedHost>],
) -> Result<(), PipelineError> {
    let dir = session::state_dir(plan);
    match phases::snapshot::run(runner, ctx, hosts, &dir, phases::snapshot::UPGRADE).await {
        phases::snapshot::Outcome::Failed(e) if e.interrupted => {
            let id = ids::PhaseId::Snapshot;
            Err(PipelineError::Phase(phases::PhaseFailure {
                phase: id.id().into(),
                title: id.title().into(),
                total: 1,
                failures: vec![(String::new(), e)],
            }))
        }
        // The message names the server; the phase already reported it.
        phases::snapshot::Outcome::Failed(e) => Err(PipelineError::Setup {
            message: format!(
                "no etcd snapshot was copied to the workstation, so no node was restarted: {}",
                e.message
            ),
            hint: e.hint,
        }),
        phases::snapshot::Outcome::Saved(s) => {
            runner.reporter().info(
                None,
                format!(
                    "the etcd snapshot taken before the upgrade (on {}) is at {} (SHA-256 {}), the cluster token beside it at {}: keep both, a rollback needs them",
                    s.host,
                    s.path.display(),
                    s.sha256,
                    s.token.display()
                ),
            );
            Ok(())
        }
        phases::snapshot::Outcome::Planned { .. } | phases::snapshot::Outcome::NotNeeded => Ok(()),
    }
}

async fn pipeline(
    runner: &mut Runner,
    plan: &Plan,
    ctx: &phases::Context,
    connector: &dyn phases::Connector,
    store: &crate::assets::AssetStore,
    target: &Version,
    last: Option<&RunSummary>,
) -> Result<(), PipelineError> {
    let hosts = phases::connect::run(runner, ctx, connector).await?;
    // Every artifact is resolved and checked against its lock before anything changes.
    let artifacts = phases::upload::artifacts(store, &hosts).map_err(|e| PipelineError::Input {
        message: e.to_string(),
        hint: crate::hint::Hint::hint(&e),
    })?;
    let (verdict, seen) =
        upgrade::check(runner, &hosts, target, last, &answer_display(plan)).await?;
    let reporter = runner.reporter().clone();
    if verdict == Verdict::UpToDate {
        reporter.info(
            None,
            format!(
                "k3s is already {target} on every node: no node is restarted; the artifacts and the application are still converged"
            ),
        );
    }
    if ctx.goal.applies() {
        runner.attach_journal(open_journal(plan, &reporter));
    }
    // Staged at side paths: a k3s restarted before its node's turn stays on the old release.
    let staged = Arc::new(artifacts.clone());
    let uploaded = phases::upload::run(
        runner,
        ctx,
        &hosts,
        artifacts,
        phases::upload::Destination::Staged,
    )
    .await?;
    let restart = upgrade::needs_restart(&uploaded, &seen, target);
    // The way back, off the cluster, before the first node restarts (not needed when none does).
    if restart.values().any(|r| *r) {
        snapshot_before_restarts(runner, ctx, plan, &hosts).await?;
    } else {
        runner
            .cluster_step(
                ids::PhaseId::Snapshot.id(),
                ids::PhaseId::Snapshot.title(),
                async {
                    Ok((
                        phases::StepOk::skipped("no node is restarted: nothing to roll back"),
                        (),
                    ))
                },
            )
            .await?;
    }
    let k3s = K3sPlan::new(ctx, &hosts, restart).ok_or(PipelineError::Setup {
        message: "the plan has no server".into(),
        hint: Some("give at least one host `role: server` in the answer file".into()),
    })?;
    let servers = phases::context::servers(&hosts);
    let agents = phases::context::agents(&hosts);
    let k3s = &k3s;
    let all_servers = &servers;
    // A failed or interrupted roll uncordons what it cordoned (read from the cluster).
    let undo = ctx.goal.applies().then(|| {
        (
            "uncordon the nodes the upgrade cordoned".to_string(),
            upgrade::uncordon_clean_up(
                servers.iter().map(|n| n.remote.clone()).collect(),
                hosts.iter().map(|n| n.node_name.clone()).collect(),
            ),
        )
    });
    upgrade::roll_with_clean_up(runner, undo, &servers, &agents, |n| {
        let ops = Ops::new(
            n.remote.clone(),
            if n.spec.is_server {
                ids::PhaseId::UpgradeServers.id()
            } else {
                ids::PhaseId::UpgradeAgents.id()
            },
            &reporter,
            ctx.goal,
        );
        let staged = staged.clone();
        async move {
            let list = staged
                .get(n.facts.arch.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            upgrade::upgrade_node(&ops, k3s, &n, all_servers, target, list).await
        }
    })
    .await?;
    if !ctx.goal.applies() {
        // The application's changes need the cluster's answers to a server-side dry run;
        // not built yet (the install's dry run does not plan them either).
        return Ok(());
    }
    let remotes: Vec<Arc<dyn Remote>> = servers.iter().map(|n| n.remote.clone()).collect();
    let cluster =
        k3s_node::cluster_through_any(remotes)
            .await
            .map_err(|r| PipelineError::Setup {
                message: format!(
                    "the cluster's API answers through no server: {}",
                    r.join("; ")
                ),
                hint: Some(
                    "every node was upgraded; rerun the upgrade to apply the application".into(),
                ),
            })?;
    appliance_phases(runner, plan, &cluster, &hosts).await?;
    if let Some(j) = runner.journal() {
        let from = seen
            .iter()
            .map(|n| {
                format!(
                    "{}={}",
                    n.host,
                    n.kubelet_version.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        j.upgraded(&target.to_string(), from);
    }
    Ok(())
}
