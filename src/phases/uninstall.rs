//! The phases of `uninstall`, after `connect`: `uninstall-check` (read-only: the changes
//! log, the recorded paths' state, the mounts; a host of another cluster or with a mount it
//! must not delete across is refused here, before anything changes on it), `stop` (k3s, its
//! containers, k3s's own volatile mounts and network state, as k3s-killall.sh does) and
//! `clean` (the changes log undone in reverse, hash-guarded, k3s's leftovers deleted on one
//! file system). Every phase goes on past a host that fails; every change goes through the
//! door ([`Ops`]), so a dry run reports each one. What is decided, and the scripts, are in
//! [`super::uninstall_plan`].

use std::sync::Arc;
use std::time::Duration;

use super::context::{ConnectedHost, Connector, Context, HostSpec};
use super::ids::PhaseId;
use super::ops::Ops;
use super::prepare::{CHANGES_LOG, outcome};
use super::runner::{Named, Runner, StepError, StepOk};
use super::uninstall_plan::{self as up, HostState, Verdict, Work};
use super::uninstall_scripts as us;
use crate::host::{RemoteCommand, RemoteExt};

/// What happened to one host, for the command's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostResult {
    /// Cleaned; the files kept (changed since the installer wrote them), with why.
    Cleaned { kept: Vec<(String, String)> },
    /// Nothing of the installer or k3s was there.
    Nothing,
    /// Not cleaned: unreachable, refused, or a step failed (the phase and the error).
    NotCleaned { phase: String, error: StepError },
}

/// A host with its work.
pub struct Target {
    pub host: Arc<ConnectedHost>,
    pub work: Work,
}

impl Named for Target {
    fn name(&self) -> &str {
        &self.host.spec.name
    }
}

/// `connect`, going on past the hosts it cannot reach.
pub async fn connect(
    runner: &mut Runner,
    ctx: &Context,
    connector: &dyn Connector,
) -> Vec<Result<Arc<ConnectedHost>, StepError>> {
    let specs: Vec<Arc<HostSpec>> = ctx.hosts.iter().cloned().map(Arc::new).collect();
    let id = PhaseId::Connect;
    runner
        .phase_tolerant(
            id.id(),
            id.title(),
            &specs,
            ctx.concurrency,
            |spec| async move {
                let host = super::connect::connect_host(connector, &spec).await?;
                Ok((
                    StepOk::unchanged(super::connect::describe(&host)),
                    Arc::new(host),
                ))
            },
        )
        .await
}

/// Reads what [`up::decide`] needs from a host (read-only).
pub async fn read_state(host: &ConnectedHost) -> Result<HostState, StepError> {
    let r = host.remote.as_ref();
    let changes = r
        .read_file(CHANGES_LOG, true)
        .await?
        .map(|b| up::parse_changes(&String::from_utf8_lossy(&b)));
    let probe = up::paths_to_probe(changes.as_deref().unwrap_or_default());
    let list: Vec<&str> = probe.iter().map(String::as_str).collect();
    let out = r
        .run(RemoteCommand::new(up::probe_paths_script(&list)).sudo())
        .await?;
    let paths = up::parse_path_states(&out.stdout_str());
    let mounts = read_mounts(host).await?;
    Ok(HostState {
        changes,
        paths,
        mounts,
    })
}

async fn read_mounts(host: &ConnectedHost) -> Result<Vec<up::Mount>, StepError> {
    let out = host
        .remote
        .run(RemoteCommand::new("cat /proc/self/mountinfo").sudo())
        .await?;
    Ok(up::parse_mountinfo(&out.stdout_str()))
}

fn summary(w: &Work) -> String {
    let undo = w.remove_first.len() + w.then.len();
    let mut s = format!(
        "installed for this cluster: {undo} recorded change(s) to undo, {} k3s director{} to delete",
        w.leftovers.len(),
        if w.leftovers.len() == 1 { "y" } else { "ies" }
    );
    if !w.kept.is_empty() {
        s.push_str(&format!(
            ", {} file(s) changed since install to keep",
            w.kept.len()
        ));
    }
    s
}

/// The `uninstall-check` phase: every host's verdict, in host order (Ok(None): nothing to
/// do; Err: refused, with the reason).
pub async fn check(
    runner: &mut Runner,
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    purge_data: bool,
) -> Vec<Result<Option<Work>, StepError>> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::UninstallCheck;
    runner
        .phase_tolerant(id.id(), id.title(), hosts, ctx.concurrency, |n| {
            let reporter = reporter.clone();
            async move {
                let st = read_state(&n).await?;
                match up::decide(&ctx.cluster_name, &st, purge_data) {
                    Verdict::Nothing => Ok((
                        StepOk::unchanged("nothing left to uninstall on this host"),
                        None,
                    )),
                    Verdict::Refuse { reason, hint } => Err(StepError::new(reason).with_hint(hint)),
                    Verdict::Proceed(w) => {
                        for note in &w.notes {
                            reporter.warn(Some(&n.spec.name), note.clone());
                        }
                        Ok((StepOk::unchanged(summary(&w)), Some(*w)))
                    }
                }
            }
        })
        .await
}

/// The `stop` phase: k3s's units, its containers (the shims' process trees), k3s's own
/// volatile mounts, its network namespaces, links and kube-proxy rules. A host where a
/// mount remains under a directory to delete fails here, before anything is deleted.
pub async fn stop(
    runner: &mut Runner,
    ctx: &Context,
    targets: &[Arc<Target>],
    purge_data: bool,
) -> Vec<Result<(), StepError>> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::UninstallStop;
    runner
        .phase_tolerant(id.id(), id.title(), targets, ctx.concurrency, |t| {
            let ops = Ops::new(t.host.remote.clone(), id.id(), &reporter, ctx.goal);
            async move {
                let n = &t.host;
                ops.run(
                    "stop k3s (every k3s unit)",
                    RemoteCommand::new(us::stop_units_script())
                        .sudo()
                        .timeout(Duration::from_secs(180)),
                )
                .await?;
                if let Some(out) = ops
                    .run(
                        "kill containerd's shims and their containers",
                        RemoteCommand::new(us::kill_shims_script()).sudo(),
                    )
                    .await?
                    && us::killed_something(&out.stdout_str())
                {
                    ops.step("containers killed");
                }
                let guarded = up::guarded_dirs(purge_data);
                let mounts = read_mounts(n).await?;
                let mine: Vec<String> = up::guarded_mounts(&mounts, &guarded)
                    .into_iter()
                    .filter(|m| up::k3s_owned(m))
                    .map(|m| m.point.clone())
                    .collect();
                if !mine.is_empty() {
                    ops.run(
                        &format!("unmount k3s's {} volatile mount(s)", mine.len()),
                        RemoteCommand::new(us::release_script(&mine)).sudo(),
                    )
                    .await?;
                }
                ops.run(
                    "remove k3s's network namespaces, links and kube-proxy rules",
                    RemoteCommand::new(us::network_script()).sudo(),
                )
                .await?;
                ops.run(
                    "remove the runtime state of k3s's killed containers",
                    RemoteCommand::new(us::runc_state_script()).sudo(),
                )
                .await?;
                if ops.goal().applies() {
                    let left: Vec<String> = up::guarded_mounts(&read_mounts(n).await?, &guarded)
                        .into_iter()
                        .map(|m| format!("{} ({})", m.point, m.fstype))
                        .collect();
                    if !left.is_empty() {
                        return Err(StepError::new(format!(
                            "k3s is stopped, but these mounts could not be released, so nothing was deleted: {}",
                            left.join(", ")
                        ))
                        .with_hint("find what holds them (`fuser -vm PATH`), unmount them, then rerun"));
                    }
                }
                Ok((outcome(&ops, "stopped", "nothing was running"), ()))
            }
        })
        .await
}

/// The `clean` phase. Returns each host's kept files.
pub async fn clean(
    runner: &mut Runner,
    ctx: &Context,
    targets: &[Arc<Target>],
) -> Vec<Result<Vec<(String, String)>, StepError>> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::UninstallClean;
    runner
        .phase_tolerant(id.id(), id.title(), targets, ctx.concurrency, |t| {
            let ops = Ops::new(t.host.remote.clone(), id.id(), &reporter, ctx.goal);
            let reporter = reporter.clone();
            async move {
                let host = t.host.spec.name.as_str();
                let w = &t.work;
                for u in &w.units {
                    ops.run(
                        &format!("disable {u}"),
                        RemoteCommand::new(format!(
                            "systemctl disable {u} 2>/dev/null || true; systemctl reset-failed {u} 2>/dev/null || true"
                        ))
                        .sudo(),
                    )
                    .await?;
                }
                for u in &w.remove_first {
                    ops.run(&u.describe(), RemoteCommand::new(u.script()).sudo())
                        .await?;
                }
                for (path, why) in &w.kept {
                    reporter.warn(Some(host), format!("kept {path}: {why}"));
                }
                let kept: Vec<String> = w.kept.iter().map(|(p, _)| p.clone()).collect();
                for d in w.leftovers.iter().chain(&w.purge) {
                    let what = if w.purge.contains(d) {
                        format!("delete the application's data in {d} (--purge-data; on its own file system, crossing no mount)")
                    } else {
                        format!("delete {d} (on its own file system, crossing no mount)")
                    };
                    let out = ops
                        .run(
                            &what,
                            RemoteCommand::new(us::delete_script(d, &kept))
                                .sudo()
                                .timeout(Duration::from_secs(600)),
                        )
                        .await?;
                    if out.is_some_and(|o| o.stdout_str().contains("remains")) {
                        reporter.info(Some(host), format!("kept {d}: it holds the files kept"));
                    }
                }
                for u in &w.then {
                    let out = ops
                        .run(
                            &u.describe(),
                            RemoteCommand::new(u.script())
                                .sudo()
                                .timeout(Duration::from_secs(120)),
                        )
                        .await?;
                    if let (up::Undo::RemoveDirIfEmpty(d), Some(o)) = (u, out)
                        && o.stdout_str().contains("kept")
                    {
                        reporter.info(Some(host), format!("kept the directory {d}: not empty"));
                    }
                }
                if !w.units.is_empty() {
                    ops.run(
                        "reload systemd",
                        RemoteCommand::new("systemctl daemon-reload").sudo(),
                    )
                    .await?;
                }
                for d in &w.empty_parents {
                    let u = up::Undo::RemoveDirIfEmpty(d.clone());
                    ops.run(&u.describe(), RemoteCommand::new(u.script()).sudo())
                        .await?;
                }
                if w.has_log && w.kept.is_empty() {
                    ops.run(
                        &format!("remove {CHANGES_LOG} (every change undone)"),
                        RemoteCommand::new(format!(
                            "rm -f {CHANGES_LOG}; rmdir \"$(dirname {CHANGES_LOG})\" 2>/dev/null || true"
                        ))
                        .sudo(),
                    )
                    .await?;
                } else if w.has_log {
                    ops.run(
                        &format!(
                            "leave in {CHANGES_LOG} only the {} file(s) kept",
                            w.kept.len()
                        ),
                        RemoteCommand::new(us::tombstone_script(&ctx.cluster_name, &kept)).sudo(),
                    )
                    .await?;
                }
                let ok = outcome(&ops, "uninstalled", "nothing to remove");
                Ok((ok, w.kept.clone()))
            }
        })
        .await
}

/// What `uninstall` did: every host's result in plan order, and the snapshot's.
#[derive(Debug)]
pub struct Outcome {
    pub hosts: Vec<(String, HostResult)>,
    /// `None`: no snapshot was asked for (`--node`, `--no-snapshot`).
    pub snapshot: Option<super::snapshot::Outcome>,
}

/// Runs the uninstall phases after `connect` on the hosts it reached (`connected` is
/// `connect`'s output). With `snapshot_to`, a last etcd snapshot is copied into that
/// directory before any host is changed; if it cannot be, no host is changed.
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    connected: Vec<Result<Arc<ConnectedHost>, StepError>>,
    purge_data: bool,
    snapshot_to: Option<&std::path::Path>,
) -> Outcome {
    let names: Vec<String> = ctx.hosts.iter().map(|h| h.name.clone()).collect();
    let mut results: Vec<Option<HostResult>> = vec![None; names.len()];
    let not_cleaned = |phase: PhaseId, error: StepError| HostResult::NotCleaned {
        phase: phase.id().to_owned(),
        error,
    };
    let mut reached = Vec::new();
    for (i, r) in connected.into_iter().enumerate() {
        match r {
            Ok(h) => reached.push((i, h)),
            Err(e) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(not_cleaned(PhaseId::Connect, e));
                }
            }
        }
    }
    let hosts: Vec<Arc<ConnectedHost>> = reached.iter().map(|(_, h)| h.clone()).collect();
    let verdicts = check(runner, ctx, &hosts, purge_data).await;
    let mut targets = Vec::new();
    let mut target_index = Vec::new();
    for ((i, h), v) in reached.into_iter().zip(verdicts) {
        match v {
            Ok(None) => results[i] = Some(HostResult::Nothing),
            Ok(Some(work)) => {
                targets.push(Arc::new(Target { host: h, work }));
                target_index.push(i);
            }
            Err(e) => results[i] = Some(not_cleaned(PhaseId::UninstallCheck, e)),
        }
    }
    let mut snapshot = None;
    if let Some(dir) = snapshot_to {
        let hosts: Vec<Arc<ConnectedHost>> = targets.iter().map(|t| t.host.clone()).collect();
        let o = super::snapshot::run(runner, ctx, &hosts, dir, super::snapshot::UNINSTALL).await;
        if let super::snapshot::Outcome::Failed(e) = &o {
            let mut why = StepError::new(format!(
                "not changed: no snapshot was taken ({})",
                e.message
            ));
            why.hint = e.hint.clone();
            for &i in &target_index {
                results[i] = Some(not_cleaned(PhaseId::Snapshot, why.clone()));
            }
            return Outcome {
                hosts: collect(names, results),
                snapshot: Some(o),
            };
        }
        snapshot = Some(o);
    }
    // Agents first, then the servers, the first server last (as k0sctl reset does).
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&k| {
        let spec = &targets[k].host.spec;
        let first_server = ctx.servers().next().map(|s| s.name.as_str()) == Some(&spec.name);
        (spec.is_server, first_server)
    });
    let targets: Vec<Arc<Target>> = order.iter().map(|&k| targets[k].clone()).collect();
    let target_index: Vec<usize> = order.iter().map(|&k| target_index[k]).collect();

    let stopped = stop(runner, ctx, &targets, purge_data).await;
    let mut to_clean = Vec::new();
    let mut clean_index = Vec::new();
    for ((t, i), r) in targets.iter().zip(&target_index).zip(stopped) {
        match r {
            Ok(()) => {
                to_clean.push(t.clone());
                clean_index.push(*i);
            }
            Err(e) => results[*i] = Some(not_cleaned(PhaseId::UninstallStop, e)),
        }
    }
    let cleaned = clean(runner, ctx, &to_clean).await;
    for (i, r) in clean_index.into_iter().zip(cleaned) {
        results[i] = Some(match r {
            Ok(kept) => HostResult::Cleaned { kept },
            Err(e) => not_cleaned(PhaseId::UninstallClean, e),
        });
    }
    Outcome {
        hosts: collect(names, results),
        snapshot,
    }
}

fn collect(names: Vec<String>, results: Vec<Option<HostResult>>) -> Vec<(String, HostResult)> {
    names
        .into_iter()
        .zip(results)
        .map(|(n, r)| {
            (
                n,
                r.unwrap_or(HostResult::NotCleaned {
                    phase: "uninstall".into(),
                    error: StepError::new("internal: no result"),
                }),
            )
        })
        .collect()
}

/// Reports a host's result as the admin reads it (used by the command's summary).
pub fn describe(result: &HostResult) -> String {
    match result {
        HostResult::Cleaned { kept } if kept.is_empty() => "cleaned".into(),
        HostResult::Cleaned { kept } => format!(
            "cleaned, {} file(s) kept because they changed since install: {}",
            kept.len(),
            kept.iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        HostResult::Nothing => "nothing to uninstall".into(),
        HostResult::NotCleaned { phase, error } => {
            format!("NOT cleaned ({phase}): {}", error.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Call, FakeRemote, Reply};
    use crate::host::read_file_script;
    use crate::report::events::Collector;
    use crate::report::{Event, Reporter};
    use tokio_util::sync::CancellationToken;

    const H: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn ctx(goal: super::super::Goal) -> Context {
        Context {
            goal,
            cluster_name: "test".into(),
            hosts: (1..=2)
                .map(|i| HostSpec {
                    name: format!("node{i}"),
                    address: format!("10.0.0.{i}"),
                    is_server: true,
                    node_name: None,
                    node_ip: None,
                })
                .collect(),
            cluster: crate::k3s::config::ClusterSettings::default(),
            relax: super::super::preflight::Relaxations::default(),
            app_ports: vec![],
            app_udp_ports: vec![],
            concurrency: 5,
            timeouts: super::super::Timeouts::default(),
        }
    }

    /// A host the installer set up: its log records the k3s binary, still unchanged.
    fn installed() -> Arc<FakeRemote> {
        Arc::new(as_installed(FakeRemote::new("node2")))
    }

    /// `host`'s replies, then those of a host the installer set up (last: its catch-all).
    fn as_installed(host: FakeRemote) -> FakeRemote {
        host.on(
            read_file_script(CHANGES_LOG).as_str(),
            Reply::ok(&format!("cluster test\nfile {H} /usr/local/bin/k3s\n")),
        )
        .on_contains(
            "p=/",
            Reply::ok(&format!("file\t/usr/local/bin/k3s\t{H}\n")),
        )
        .on(
            "cat /proc/self/mountinfo",
            Reply::ok("22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"),
        )
        .on_contains("", Reply::ok(""))
    }

    fn connected(remote: Arc<FakeRemote>) -> Arc<ConnectedHost> {
        connected_with(remote, "")
    }

    /// node2, a server, with `extra` facts (`unit_k3s=active\n`).
    fn connected_with(remote: Arc<FakeRemote>, extra: &str) -> Arc<ConnectedHost> {
        Arc::new(ConnectedHost {
            spec: HostSpec {
                name: "node2".into(),
                address: "10.0.0.2".into(),
                is_server: true,
                node_name: None,
                node_ip: None,
            },
            remote,
            facts: crate::host::facts::parse(&format!(
                "os_id=debian\nos_version=12\ncpus=2\nmem_kb=1\ndisk_free_kb=1\ndisk_total_kb=1\nhostname=node2\n{extra}gather=done\n",
            ))
            .unwrap(),
            node_name: "node2".into(),
            node_ip: "10.0.0.2".parse().unwrap(),
            node_ip_reason: "test".into(),
            facts_window: (0, 0),
        })
    }

    async fn uninstall(
        goal: super::super::Goal,
        remote: Arc<FakeRemote>,
    ) -> (Vec<(String, HostResult)>, Vec<Event>) {
        let events = Arc::new(Collector::default());
        let mut runner = Runner::new(
            "uninstall",
            Reporter::new(vec![events.clone()]),
            None,
            CancellationToken::new(),
        );
        let hosts = vec![
            Err(StepError::new("connection refused")),
            Ok(connected(remote)),
        ];
        let r = run(&mut runner, &ctx(goal), hosts, false, None).await;
        (r.hosts, events.events())
    }

    #[tokio::test]
    async fn an_unreachable_host_is_reported_and_the_others_are_still_cleaned() {
        let remote = installed();
        let (results, _) = uninstall(super::super::Goal::Apply, remote.clone()).await;
        assert!(
            matches!(&results[0].1, HostResult::NotCleaned { phase, error } if phase == "connect" && error.message == "connection refused"),
            "{results:?}"
        );
        assert_eq!(results[1].1, HostResult::Cleaned { kept: vec![] });
        let scripts = remote.scripts();
        assert!(
            scripts.iter().any(|s| s == "rm -f -- /usr/local/bin/k3s"),
            "{scripts:#?}"
        );
        assert!(
            scripts
                .last()
                .is_some_and(|s| s.starts_with(&format!("rm -f {CHANGES_LOG}"))),
            "{scripts:#?}"
        );
    }

    #[tokio::test]
    async fn a_dry_run_sends_nothing_that_changes_a_host() {
        let remote = installed();
        let (results, events) = uninstall(super::super::Goal::DryRun, remote.clone()).await;
        assert_eq!(results[1].1, HostResult::Cleaned { kept: vec![] });
        let read_only = |c: &Call| match c {
            Call::Exec { script, .. } => {
                script == &read_file_script(CHANGES_LOG)
                    || script.starts_with("p=/")
                    || script == "cat /proc/self/mountinfo"
            }
            _ => false,
        };
        let calls = remote.calls();
        assert!(calls.iter().all(read_only), "{calls:#?}");
        let planned: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::PlannedChange { summary, .. } => Some(summary.clone()),
                _ => None,
            })
            .collect();
        for want in [
            "stop k3s (every k3s unit)",
            "remove /usr/local/bin/k3s (unchanged since the installer wrote it)",
        ] {
            assert!(planned.iter().any(|p| p == want), "{planned:#?}");
        }
    }

    mod snapshot {
        use super::*;
        use crate::phases::snapshot::{self as snap, Outcome as Snap};
        use std::os::unix::fs::PermissionsExt;

        const NAME: &str = "pre-uninstall-node2-1767225600";
        const DATA: &str = "{\"the\":\"store\"}";
        const TOKEN: &str = "K10abc::server:the-cluster-token-password";

        fn remote_path() -> String {
            format!("{}/{NAME}", snap::SNAPSHOT_DIR)
        }

        /// node2 as `installed()`, whose k3s answers `k3s etcd-snapshot save` as k3s does
        /// and whose `sha256sum` reports `sum`.
        fn snapshotting(sum: &str) -> Arc<FakeRemote> {
            let p = remote_path();
            Arc::new(as_installed(
                FakeRemote::new("node2")
                    .on(
                        snap::save_command(snap::UNINSTALL).as_str(),
                        Reply::exit(
                            0,
                            "",
                            &format!("time=\"2026-01-01T00:00:00Z\" level=info msg=\"Snapshot {NAME} saved.\"\n"),
                        ),
                    )
                    .on(
                        format!("stat -c %s -- {p} && sha256sum -- {p}").as_str(),
                        Reply::ok(&format!("{}\n{sum}  {p}\n", DATA.len())),
                    )
                    .on(format!("cat -- {p}").as_str(), Reply::ok(DATA))
                    .on(
                        read_file_script(crate::k3s::paths::SERVER_TOKEN_GENERATED).as_str(),
                        Reply::ok(TOKEN),
                    ),
            ))
        }

        async fn uninstall_to(
            goal: super::super::super::Goal,
            remote: Arc<FakeRemote>,
            unit: &str,
            dir: &std::path::Path,
        ) -> (Outcome, Vec<Event>) {
            let events = Arc::new(Collector::default());
            let mut runner = Runner::new(
                "uninstall",
                Reporter::new(vec![events.clone()]),
                None,
                CancellationToken::new(),
            );
            let hosts = vec![
                Err(StepError::new("connection refused")),
                Ok(connected_with(remote, unit)),
            ];
            let r = run(&mut runner, &ctx(goal), hosts, false, Some(dir)).await;
            (r, events.events())
        }

        fn files(dir: &std::path::Path) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }

        #[test]
        fn the_first_active_server_in_plan_order_is_chosen() {
            let h = |n: &str, server: bool, unit: Option<&str>| {
                (n.to_owned(), server, unit.map(str::to_owned))
            };
            assert_eq!(
                snap::choose(&[
                    h("agent", false, Some("active")),
                    h("node1", true, Some("inactive")),
                    h("node2", true, Some("active")),
                    h("node3", true, Some("active")),
                ]),
                snap::Choice::Server(2)
            );
            assert_eq!(
                snap::choose(&[h("agent", false, Some("active"))]),
                snap::Choice::NoServer
            );
            assert_eq!(
                snap::choose(&[h("node1", true, Some("failed")), h("node2", true, None)]),
                snap::Choice::NoneActive(vec![
                    ("node1".into(), "failed".into()),
                    ("node2".into(), "not installed".into())
                ])
            );
        }

        #[test]
        fn the_file_name_is_read_from_what_k3s_logs() {
            assert_eq!(
                snap::parse_saved(&format!(
                    "time=\"2026-01-01T00:00:00Z\" level=info msg=\"Snapshot {NAME} saved.\""
                ))
                .as_deref(),
                Some(NAME)
            );
            assert_eq!(
                snap::parse_saved("msg=\"Snapshot pre-uninstall-n1-1.zip saved.\"").as_deref(),
                Some("pre-uninstall-n1-1.zip")
            );
            assert_eq!(
                snap::parse_saved("msg=\"Snapshot ../../etc/x saved.\""),
                None
            );
            assert_eq!(snap::parse_saved("level=fatal msg=\"Error: ...\""), None);
        }

        #[tokio::test]
        async fn the_snapshot_is_copied_and_verified_before_k3s_is_stopped() {
            let dir = tempfile::tempdir().unwrap();
            let remote = snapshotting(&crate::phases::ops::sha256_hex(DATA.as_bytes()));
            let (out, events) = uninstall_to(
                super::super::super::Goal::Apply,
                remote.clone(),
                "unit_k3s=active\n",
                dir.path(),
            )
            .await;
            assert_eq!(out.hosts[1].1, HostResult::Cleaned { kept: vec![] });
            let Some(Snap::Saved(s)) = &out.snapshot else {
                panic!("{:?}", out.snapshot)
            };
            assert_eq!(s.path, dir.path().join(NAME));
            assert_eq!(s.bytes, DATA.len() as u64);
            assert_eq!(std::fs::read_to_string(&s.path).unwrap(), DATA);
            assert_eq!(std::fs::read_to_string(&s.token).unwrap(), TOKEN);
            for f in [&s.path, &s.token] {
                let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
            }
            assert_eq!(
                files(dir.path()),
                vec![NAME.to_string(), format!("{NAME}.token")]
            );
            let scripts = remote.scripts();
            let at = |want: &str| scripts.iter().position(|s| s == want);
            let saved = at(&snap::save_command(snap::UNINSTALL)).expect("no snapshot taken");
            let stopped = at(&super::super::us::stop_units_script()).expect("k3s not stopped");
            assert!(saved < stopped, "{scripts:#?}");
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::SnapshotSaved { path, bytes, .. }
                    if path == &s.path.display().to_string() && *bytes == DATA.len() as u64)),
                "{events:#?}"
            );
            let all = format!("{events:?}");
            assert!(!all.contains("the-cluster-token-password"), "{all}");
        }

        #[tokio::test]
        async fn a_dry_run_plans_the_snapshot_and_runs_nothing() {
            let dir = tempfile::tempdir().unwrap();
            let remote = snapshotting(&crate::phases::ops::sha256_hex(DATA.as_bytes()));
            let (out, events) = uninstall_to(
                super::super::super::Goal::DryRun,
                remote.clone(),
                "unit_k3s=active\n",
                dir.path(),
            )
            .await;
            assert!(
                matches!(&out.snapshot, Some(Snap::Planned { host: Some(h), .. }) if h == "node2"),
                "{:?}",
                out.snapshot
            );
            let scripts = remote.scripts();
            assert!(
                !scripts.iter().any(|s| s.contains("etcd-snapshot")
                    || s.starts_with("stat -c")
                    || s.starts_with("cat --")
                    || s.contains("server/token")),
                "{scripts:#?}"
            );
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::PlannedChange { host, summary, .. }
                    if host == "node2" && summary.starts_with("take an etcd snapshot"))),
                "{events:#?}"
            );
            assert!(files(dir.path()).is_empty());
        }

        #[tokio::test]
        async fn a_checksum_mismatch_names_host_and_file_and_changes_nothing() {
            let dir = tempfile::tempdir().unwrap();
            let remote = snapshotting(&"0".repeat(64));
            let (out, _) = uninstall_to(
                super::super::super::Goal::Apply,
                remote.clone(),
                "unit_k3s=active\n",
                dir.path(),
            )
            .await;
            let Some(Snap::Failed(e)) = &out.snapshot else {
                panic!("{:?}", out.snapshot)
            };
            assert!(
                e.message.starts_with("node2: ") && e.message.contains(&remote_path()),
                "{e:?}"
            );
            assert!(e.message.contains("does not match"), "{e:?}");
            assert!(
                matches!(&out.hosts[1].1, HostResult::NotCleaned { phase, .. } if phase == "snapshot"),
                "{:?}",
                out.hosts
            );
            assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
            let scripts = remote.scripts();
            assert!(
                !scripts.contains(&super::super::us::stop_units_script()),
                "{scripts:#?}"
            );
        }

        #[tokio::test]
        async fn a_dry_run_without_an_active_server_warns_and_plans_the_rest() {
            let dir = tempfile::tempdir().unwrap();
            let remote = snapshotting(&crate::phases::ops::sha256_hex(DATA.as_bytes()));
            let (out, events) = uninstall_to(
                super::super::super::Goal::DryRun,
                remote.clone(),
                "unit_k3s=failed\n",
                dir.path(),
            )
            .await;
            assert!(
                matches!(&out.snapshot, Some(Snap::Planned { host: None, note }) if note.contains("node2: failed")),
                "{:?}",
                out.snapshot
            );
            assert!(
                events.iter().any(
                    |e| matches!(e, Event::Message { level: crate::report::Level::Warn, text, .. }
                    if text.starts_with("a real run would stop before changing anything"))
                ),
                "{events:#?}"
            );
            assert_eq!(out.hosts[1].1, HostResult::Cleaned { kept: vec![] });
            assert!(
                remote
                    .scripts()
                    .iter()
                    .all(|s| !s.contains("etcd-snapshot")),
                "{:#?}",
                remote.scripts()
            );
        }

        #[tokio::test]
        async fn without_an_active_server_nothing_changes_and_the_way_on_is_named() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("pre-uninstall-node2-1.zip"), "old").unwrap();
            let remote = snapshotting(&crate::phases::ops::sha256_hex(DATA.as_bytes()));
            let (out, _) = uninstall_to(
                super::super::super::Goal::Apply,
                remote.clone(),
                "unit_k3s=inactive\n",
                dir.path(),
            )
            .await;
            let Some(Snap::Failed(e)) = &out.snapshot else {
                panic!("{:?}", out.snapshot)
            };
            assert!(e.message.contains("node2: inactive"), "{e:?}");
            let hint = e.hint.clone().unwrap_or_default();
            assert!(hint.contains("--no-snapshot"), "{hint}");
            assert!(hint.contains("pre-uninstall-node2-1.zip"), "{hint}");
            assert!(
                matches!(&out.hosts[1].1, HostResult::NotCleaned { phase, .. } if phase == "snapshot"),
                "{:?}",
                out.hosts
            );
            let read_only = |s: &String| {
                s == &read_file_script(CHANGES_LOG)
                    || s.starts_with("p=/")
                    || s == "cat /proc/self/mountinfo"
            };
            let scripts = remote.scripts();
            assert!(scripts.iter().all(read_only), "{scripts:#?}");
            assert_eq!(
                files(dir.path()),
                vec!["pre-uninstall-node2-1.zip".to_string()]
            );
        }

        /// The upgrade's snapshot is the same phase: its file is named `pre-upgrade-…`, and a
        /// failed save stops with the upgrade's way on (no node was restarted), keeping nothing.
        #[tokio::test]
        async fn an_upgrade_snapshot_that_cannot_be_taken_says_no_node_was_restarted() {
            let dir = tempfile::tempdir().unwrap();
            let remote = Arc::new(FakeRemote::new("node2").on(
                snap::save_command(snap::UPGRADE).as_str(),
                Reply::exit(
                    1,
                    "",
                    "time=\"2026-01-01T00:00:00Z\" level=fatal msg=\"Error: etcdserver: request timed out\"\n",
                ),
            ));
            let mut runner = Runner::new(
                "upgrade",
                Reporter::new(vec![]),
                None,
                CancellationToken::new(),
            );
            let host = connected_with(remote.clone(), "unit_k3s=active\n");
            let out = snap::run(
                &mut runner,
                &ctx(super::super::super::Goal::Apply),
                &[host],
                dir.path(),
                snap::UPGRADE,
            )
            .await;
            let Snap::Failed(e) = out else {
                panic!("{out:?}")
            };
            assert!(e.message.contains("node2"), "{e:?}");
            let hint = e.hint.unwrap_or_default();
            assert!(hint.contains("rerun the upgrade"), "{hint}");
            assert!(!hint.contains("--no-snapshot"), "{hint}");
            assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
            assert_eq!(
                snap::save_command(snap::UPGRADE),
                format!(
                    "k3s etcd-snapshot save --name pre-upgrade --dir {}",
                    snap::SNAPSHOT_DIR
                )
            );
        }
    }
}
