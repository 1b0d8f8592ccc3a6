//! Unit tests of the decisions the coming commands rely on, against the scripted fake host
//! (no root, no lab): a dry run sends nothing that changes a host; k3s restarts only when
//! its config, unit or binary changed; a first server without data is never bootstrapped
//! while other servers hold the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::context::{ConnectedHost, Context, Goal, HostSpec, Timeouts};
use super::k3s_node::{self, K3sPlan};
use super::ops::{Ops, sha256_hex};
use super::preflight::Relaxations;
use super::runner::Runner;
use crate::host::facts::{self, Facts};
use crate::host::fake::{Call, FakeRemote, Reply};
use crate::k3s::config::{ClusterSettings, NodeRole, NodeSettings, render_config};
use crate::k3s::{K3sCommand, paths, units};
use crate::report::events::Collector;
use crate::report::{Event, Reporter};

fn ctx(goal: Goal, hosts: usize) -> Context {
    Context {
        goal,
        cluster_name: "test".into(),
        hosts: (1..=hosts)
            .map(|i| HostSpec {
                name: format!("node{i}"),
                address: format!("10.0.0.{i}"),
                is_server: true,
                node_name: None,
                node_ip: None,
            })
            .collect(),
        cluster: ClusterSettings::default(),
        relax: Relaxations::default(),
        app_ports: vec![],
        app_udp_ports: vec![],
        concurrency: 5,
        timeouts: Timeouts::default(),
    }
}

fn facts(extra: &str) -> Facts {
    facts::parse(&format!(
        "os_id=debian\nos_version=12\ncpus=2\nmem_kb=4000000\ndisk_free_kb=1\ndisk_total_kb=1\nhostname=node1\n{extra}gather=done\n"
    ))
    .unwrap()
}

fn host(i: usize, remote: Arc<FakeRemote>, facts: Facts) -> Arc<ConnectedHost> {
    Arc::new(ConnectedHost {
        spec: HostSpec {
            name: format!("node{i}"),
            address: format!("10.0.0.{i}"),
            is_server: true,
            node_name: None,
            node_ip: None,
        },
        remote,
        facts,
        node_name: format!("node{i}"),
        node_ip: format!("10.0.0.{i}").parse().unwrap(),
        node_ip_reason: "test".into(),
        facts_window: (0, 0),
    })
}

/// A command that changes a host: anything but the read-only scripts phases use to look.
fn mutating(call: &Call) -> bool {
    match call {
        Call::Upload { .. } => true,
        Call::Exec { script, .. } => {
            !(script.starts_with("ok=1\n") || script.starts_with("systemctl is-active"))
        }
        Call::Tunnel { .. } => false,
    }
}

fn runner(goal_events: &Arc<Collector>) -> Runner {
    Runner::new(
        "test",
        Reporter::new(vec![goal_events.clone()]),
        None,
        CancellationToken::new(),
    )
}

#[tokio::test]
async fn a_dry_run_sends_no_mutating_command() {
    let c = ctx(Goal::DryRun, 1);
    // A fresh host: nothing prepared, no k3s.
    let remote = Arc::new(FakeRemote::new("node1").on_contains("ok=1", Reply::ok("missing\n")));
    let h = host(1, remote.clone(), facts(""));
    let hosts = vec![h.clone()];
    let events = Arc::new(Collector::default());
    let mut r = runner(&events);
    super::prepare::run(&mut r, &c, &hosts).await.unwrap();
    let plan = K3sPlan::new(&c, &hosts, BTreeMap::new()).unwrap();
    let booted = super::bootstrap::run(&mut r, &plan).await.unwrap();
    assert!(booted.is_none(), "a dry run boots nothing");
    let calls = remote.calls();
    assert!(
        !calls.iter().any(mutating),
        "a dry run changed the host: {calls:#?}"
    );
    // ...and said what it would do, as typed changes.
    let planned: Vec<String> = events
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::PlannedChange { target, .. } => Some(target.clone()),
            _ => None,
        })
        .collect();
    for want in [paths::CONFIG_FILE, paths::SERVER_TOKEN_FILE] {
        assert!(planned.iter().any(|t| t == want), "{want}: {planned:?}");
    }
}

/// A host where k3s runs with exactly the config and unit this plan renders.
fn converged_host(c: &Context) -> (Arc<FakeRemote>, Arc<ConnectedHost>) {
    let settings = K3sPlan::new(
        c,
        &[host(1, Arc::new(FakeRemote::new("x")), facts(""))],
        BTreeMap::new(),
    )
    .unwrap()
    .settings;
    let config = render_config(
        &NodeRole::FirstServer,
        &settings,
        &NodeSettings {
            node_name: "node1".into(),
            node_ip: "10.0.0.1".parse().unwrap(),
        },
    )
    .unwrap();
    let unit = units::render_unit(K3sCommand::Server).unwrap();
    let f = facts(&format!(
        "unit_k3s=active\nserver_token_file=yes\nagent_token_file=yes\nfile_sha256={} {}\nfile_sha256={} {}\n",
        sha256_hex(config.content.as_bytes()),
        paths::CONFIG_FILE,
        sha256_hex(unit.content.as_bytes()),
        unit.path
    ));
    let remote = Arc::new(
        FakeRemote::new("node1")
            .with_file(&config.path, config.content.clone())
            .with_file(&unit.path, unit.content.clone())
            .on_contains("systemctl", Reply::ok(""))
            .on_contains("/var/lib/installer/changes.log", Reply::ok("")),
    );
    (remote.clone(), host(1, remote, f))
}

async fn converge_once(c: &Context, h: &ConnectedHost, binary_changed: bool) {
    let hosts = vec![Arc::new(ConnectedHost {
        spec: h.spec.clone(),
        remote: h.remote.clone(),
        facts: h.facts.clone(),
        node_name: h.node_name.clone(),
        node_ip: h.node_ip,
        node_ip_reason: String::new(),
        facts_window: (0, 0),
    })];
    let changed = BTreeMap::from([("node1".to_string(), binary_changed)]);
    let plan = K3sPlan::new(c, &hosts, changed).unwrap();
    let ops = Ops::new(h.remote.clone(), "bootstrap", &Reporter::silent(), c.goal);
    let secrets = crate::k3s::ClusterSecrets::generate();
    k3s_node::converge(&ops, &plan, h, &NodeRole::FirstServer, Some(&secrets), None)
        .await
        .unwrap();
}

fn restarts(remote: &FakeRemote) -> usize {
    remote
        .scripts()
        .iter()
        .filter(|s| s.contains("systemctl restart"))
        .count()
}

#[tokio::test]
async fn k3s_restarts_only_when_its_config_unit_or_binary_changed() {
    let c = ctx(Goal::Apply, 1);
    // Unchanged: nothing is written, nothing restarts.
    let (remote, h) = converged_host(&c);
    converge_once(&c, &h, false).await;
    assert_eq!(restarts(&remote), 0, "{:#?}", remote.calls());
    assert!(remote.uploads().is_empty(), "{:#?}", remote.uploads());
    // The binary changed: restart.
    let (remote, h) = converged_host(&c);
    converge_once(&c, &h, true).await;
    assert_eq!(restarts(&remote), 1, "{:#?}", remote.calls());
    // The config changed (another CIDR): it is written and k3s restarts.
    let mut c2 = ctx(Goal::Apply, 1);
    c2.cluster.cluster_cidr = "10.99.0.0/16".parse().unwrap();
    let (remote, h) = converged_host(&c);
    converge_once(&c2, &h, false).await;
    assert_eq!(restarts(&remote), 1, "{:#?}", remote.calls());
    assert!(
        remote
            .uploads()
            .iter()
            .any(|u| u.target.path == paths::CONFIG_FILE)
    );
    // The file written is recorded in the changes log with its hash, for uninstall.
    assert!(
        remote.scripts().iter().any(|s| s.contains("sha256sum")
            && s.contains(paths::CONFIG_FILE)
            && s.contains(">> /var/lib/installer/changes.log")),
        "{:#?}",
        remote.scripts()
    );
}

#[tokio::test]
async fn a_first_server_without_data_is_never_bootstrapped_while_others_hold_the_cluster() {
    let c = ctx(Goal::Apply, 2);
    let first = Arc::new(FakeRemote::new("node1").on_contains("k3s.yaml", Reply::exit(3, "", "")));
    let hosts = vec![
        host(1, first.clone(), facts("")),
        host(
            2,
            Arc::new(FakeRemote::new("node2")),
            facts("etcd_data=yes\n"),
        ),
    ];
    let plan = K3sPlan::new(&c, &hosts, BTreeMap::new()).unwrap();
    assert_eq!(plan.members_elsewhere, vec!["node2"]);
    let events = Arc::new(Collector::default());
    let mut r = runner(&events);
    let err = match super::bootstrap::run(&mut r, &plan).await {
        Err(super::PipelineError::Phase(p)) => p,
        _ => panic!("bootstrapped a second cluster"),
    };
    assert!(
        err.to_string()
            .contains("would create a second, separate cluster"),
        "{err}"
    );
    assert!(
        first.calls().is_empty(),
        "the first server was touched: {:#?}",
        first.calls()
    );
}

#[test]
fn a_unit_that_keeps_dying_with_a_fatal_line_is_hopeless_and_one_crash_is_not() {
    let fatal = "time=\"x\" level=fatal msg=\"Error: --token is required\"";
    let once = k3s_node::parse_unit_health(&format!("activating\nF {fatal}\n"));
    assert_eq!(once.hopeless("k3s.service"), None);
    let twice = k3s_node::parse_unit_health(&format!("activating\nF {fatal}\nF {fatal}\n"));
    let why = twice.hopeless("k3s.service").unwrap();
    assert!(why.contains("keeps exiting at start (2 times)"), "{why}");
    assert!(why.contains("--token is required"), "{why}");
    // Active wins over old lines.
    let up = k3s_node::parse_unit_health(&format!("active\nF {fatal}\nF {fatal}\n"));
    assert_eq!(up.hopeless("k3s.service"), None);
    // A join refused three times is hopeless; a server not up yet never is.
    let refused = "level=error msg=\"Failed to validate connection to cluster: token CA hash does not match\"";
    let r = k3s_node::parse_unit_health(&format!(
        "activating\nR {refused}\nR {refused}\nR {refused}\n"
    ));
    assert!(r.hopeless("k3s-agent.service").unwrap().contains("refused"));
}

#[test]
fn a_host_is_lost_only_after_it_failed_to_answer_for_a_while() {
    use std::time::Duration;
    use tokio::time::Instant;
    let mut l = k3s_node::Liveness::default();
    let now = Instant::now();
    assert_eq!(l.record("node2", now, Err("timed out".into())), None);
    assert_eq!(l.record("node2", now, Ok(())), None);
    // Failing since an attempt that started 31 s ago: lost.
    let long_ago = now - Duration::from_secs(21);
    let mut l = k3s_node::Liveness::default();
    assert!(
        l.record("node2", long_ago, Err("timed out".into()))
            .is_some()
    );
    let why = l
        .record("node2", now, Err("connection reset".into()))
        .unwrap();
    assert!(
        why.contains("node2 has not answered over SSH for 21 s"),
        "{why}"
    );
    assert!(why.contains("connection reset"), "{why}");
    // One answer resets it.
    assert_eq!(l.record("node2", now, Ok(())), None);
    assert_eq!(l.record("node2", now, Err("x".into())), None);
}

#[tokio::test]
async fn the_unit_gate_stops_early_quoting_the_fatal_line() {
    let fatal = "time=\"x\" level=fatal msg=\"k3s-standin fault injected: crash at start\"";
    let remote = Arc::new(
        FakeRemote::new("node1")
            .on("date +%s", Reply::ok("1000\n"))
            .on_contains(
                "journalctl -u k3s.service --since",
                Reply::ok(&format!("activating\nF {fatal}\nF {fatal}\n")),
            )
            .on_contains(
                "journalctl -u k3s.service -n 15",
                Reply::ok(&format!("{fatal}\n")),
            ),
    );
    let h = host(1, remote, facts(""));
    let started = std::time::Instant::now();
    let e = k3s_node::wait_unit_active(
        &h,
        "k3s.service",
        std::time::Duration::from_secs(300),
        std::time::Duration::from_millis(10),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        e.message.contains("since waiting cannot help"),
        "{}",
        e.message
    );
    assert!(e.message.contains("crash at start"), "{}", e.message);
    assert!(e.hint.unwrap().contains("journalctl -u k3s.service"));
}

/// A powered-off server was reported after 57 s: each look at it was one SSH call that
/// reconnected and retried on its own for longer than the host may be silent.
#[tokio::test(start_paused = true)]
async fn a_host_whose_ssh_calls_hang_is_lost_after_lost_after_not_after_its_retries() {
    let remote = Arc::new(
        FakeRemote::new("node2")
            .on("date +%s", Reply::ok("1000\n"))
            .on_contains("k3s.service", Reply::Hang),
    );
    let h = host(2, remote, facts(""));
    let started = tokio::time::Instant::now();
    let gate = k3s_node::wait_unit_active(
        &h,
        "k3s.service",
        std::time::Duration::from_secs(300),
        std::time::Duration::from_millis(250),
    );
    let e = tokio::time::timeout(std::time::Duration::from_secs(120), gate)
        .await
        .expect("the gate never gave up on a host that does not answer")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took <= k3s_node::LOST_AFTER + std::time::Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(
        e.message.contains("has not answered over SSH"),
        "{}",
        e.message
    );
    assert!(e.message.contains("no answer within 20 s"), "{}", e.message);
}

/// `status` and `support-bundle` read the API through any server: a server whose kubeconfig is
/// gone or whose API cannot be reached is passed over for the next, and when none answers every
/// server's reason is given, named, in the plan's order.
#[tokio::test]
async fn api_through_any_server_passes_over_a_broken_one_and_names_each_reason() {
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\ncontexts:\n- name: default\n  context: {cluster: default, user: default}\ncurrent-context: default\nusers:\n- name: default\n  user: {token: not-a-secret}\n";
    let no_kubeconfig: Arc<dyn crate::host::Remote> =
        Arc::new(FakeRemote::new("node1").on_contains("k3s.yaml", Reply::exit(3, "", "")));
    let no_tunnel: Arc<dyn crate::host::Remote> =
        Arc::new(FakeRemote::new("node2").with_file(paths::KUBECONFIG, kubeconfig));
    let reasons = k3s_node::cluster_through_any(vec![no_kubeconfig, no_tunnel])
        .await
        .err()
        .expect("no server could answer, yet a cluster was returned");
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("node1: ") && reasons[0].contains("is missing"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("node2: "), "{reasons:?}");
}

mod staging {
    //! `upgrade` stages at side paths and swaps in each node's turn (issue 14): a k3s that
    //! systemd restarts before its turn must come back on the old release.
    use super::*;
    use crate::assets::{ArtifactKind, ArtifactOrigin, ResolvedArtifact};
    use crate::host::UploadSource;
    use crate::phases::runner::StepOk;
    use crate::phases::upload::{self, Destination};
    use std::sync::Mutex;

    const IMAGES: &str = "k3s-airgap-images-amd64.tar.zst";

    fn artifact(kind: ArtifactKind, file: &str, bytes: &[u8]) -> ResolvedArtifact {
        ResolvedArtifact {
            name: file.into(),
            kind,
            version: "v1.36.5+k3s1".into(),
            file: file.into(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            source: UploadSource::Bytes(bytes.to_vec().into()),
            origin: ArtifactOrigin::Embedded,
        }
    }

    fn release_b() -> Vec<ResolvedArtifact> {
        vec![
            artifact(ArtifactKind::K3sBinary, "k3s", b"k3s B"),
            artifact(ArtifactKind::K3sAirgapImages, IMAGES, b"images B"),
        ]
    }

    fn staged_bin() -> String {
        paths::K3S_BINARY_STAGED.to_owned()
    }

    fn staged_images() -> String {
        paths::staged_image_archive_path(IMAGES)
    }

    fn final_images() -> String {
        paths::image_archive_path(IMAGES)
    }

    /// A node on release A; its hashes as the host answers them, first at staging (finals
    /// hold A), then in its turn (the side paths hold B).
    fn node_on_a() -> Arc<FakeRemote> {
        let (a_bin, a_img) = (sha256_hex(b"k3s A"), sha256_hex(b"images A"));
        let (b_bin, b_img) = (sha256_hex(b"k3s B"), sha256_hex(b"images B"));
        Arc::new(
            FakeRemote::new("n")
                .expect_contains(
                    "for f in ",
                    Reply::ok(&format!(
                        "{a_bin} {}\n{a_img} {}\n",
                        paths::K3S_BINARY,
                        final_images()
                    )),
                )
                .expect_contains(
                    "for f in ",
                    Reply::ok(&format!(
                        "{a_bin} {}\n{b_bin} {}\n{a_img} {}\n{b_img} {}\n",
                        paths::K3S_BINARY,
                        staged_bin(),
                        final_images(),
                        staged_images()
                    )),
                )
                .on_contains("/var/lib/installer/changes.log", Reply::ok("")),
        )
    }

    fn swaps(remote: &FakeRemote) -> Vec<String> {
        remote
            .scripts()
            .into_iter()
            .filter(|s| s.contains("mv -f --"))
            .collect()
    }

    #[tokio::test]
    async fn a_k3s_restarted_before_its_turn_finds_the_old_release_every_node_is_staged_before_any_swap_and_each_swap_follows_the_previous_nodes_gates()
     {
        let c = ctx(Goal::Apply, 3);
        let remotes: Vec<Arc<FakeRemote>> = (0..3).map(|_| node_on_a()).collect();
        let hosts: Vec<Arc<ConnectedHost>> = remotes
            .iter()
            .enumerate()
            .map(|(i, r)| host(i + 1, r.clone(), facts("arch=x86_64\n")))
            .collect();
        let events = Arc::new(Collector::default());
        let mut r = runner(&events);
        let artifacts = BTreeMap::from([("amd64".to_string(), release_b())]);
        let changes = upload::run(&mut r, &c, &hosts, artifacts, Destination::Staged)
            .await
            .unwrap();
        assert!(changes.values().all(|b| *b), "{changes:?}");
        // Staged on every node, at side paths only: what systemd would start is still A.
        for remote in &remotes {
            let up: Vec<String> = remote
                .uploads()
                .iter()
                .map(|u| u.target.path.clone())
                .collect();
            assert_eq!(up, [staged_bin(), staged_images()], "{:#?}", remote.calls());
            assert_eq!(remote.file(paths::K3S_BINARY), None);
            assert!(swaps(remote).is_empty(), "{:#?}", remote.calls());
        }
        let gated = Mutex::new(Vec::<String>::new());
        let list = release_b();
        let (remotes_ref, gated_ref, list_ref) = (&remotes, &gated, &list);
        super::super::upgrade::roll(&mut r, &hosts, &[], |n| async move {
            // Before this node's swap: exactly the nodes already gated were swapped.
            let done = gated_ref.lock().unwrap().clone();
            for (i, remote) in remotes_ref.iter().enumerate() {
                let name = format!("node{}", i + 1);
                assert_eq!(
                    !swaps(remote).is_empty(),
                    done.contains(&name),
                    "{name} at {}'s turn (gated: {done:?})",
                    n.spec.name
                );
            }
            let ops = Ops::new(
                n.remote.clone(),
                "upgrade-servers",
                &Reporter::silent(),
                Goal::Apply,
            );
            let s = upload::swap_staged(&ops, list_ref).await?;
            assert_eq!(s.swapped, [paths::K3S_BINARY.to_owned(), final_images()]);
            // The gates of this node (the API's, in the real step) pass here.
            gated_ref.lock().unwrap().push(n.spec.name.clone());
            Ok(StepOk::changed("swapped, restarted, gated"))
        })
        .await
        .unwrap();
        assert_eq!(*gated.lock().unwrap(), ["node1", "node2", "node3"]);
        for remote in &remotes {
            let s = swaps(remote);
            assert_eq!(s.len(), 2, "{s:#?}");
            assert!(
                s[0].contains(&format!("mv -f -- {} {}", staged_bin(), paths::K3S_BINARY)),
                "{s:#?}"
            );
            assert!(
                s[1].contains(&format!("mv -f -- {} {}", staged_images(), final_images())),
                "{s:#?}"
            );
            remote.assert_done();
        }
    }

    #[tokio::test]
    async fn a_rerun_swaps_what_the_host_shows_staged_and_removes_a_leftover_beside_what_is_in_place()
     {
        let (b_bin, b_img) = (sha256_hex(b"k3s B"), sha256_hex(b"images B"));
        // The binary was swapped by an earlier run, a copy is left at its side path; the
        // images are still staged.
        let remote = Arc::new(
            FakeRemote::new("n")
                .expect_contains(
                    "for f in ",
                    Reply::ok(&format!(
                        "{b_bin} {}\n{b_bin} {}\n{} {}\n{b_img} {}\n",
                        paths::K3S_BINARY,
                        staged_bin(),
                        sha256_hex(b"images A"),
                        final_images(),
                        staged_images()
                    )),
                )
                .on_contains("rm -f --", Reply::ok(""))
                .on_contains("/var/lib/installer/changes.log", Reply::ok("")),
        );
        let ops = Ops::new(
            remote.clone(),
            "upgrade-servers",
            &Reporter::silent(),
            Goal::Apply,
        );
        let s = upload::swap_staged(&ops, &release_b()).await.unwrap();
        assert_eq!(s.in_place, [paths::K3S_BINARY.to_owned()]);
        assert_eq!(s.swapped, [final_images()]);
        let scripts = remote.scripts();
        assert!(
            scripts
                .iter()
                .any(|s| s == &format!("rm -f -- {}", staged_bin())),
            "{scripts:#?}"
        );
        // Nothing staged and nothing in place: an error naming the artifact, nothing moved.
        let empty = Arc::new(FakeRemote::new("n").expect_contains("for f in ", Reply::ok("")));
        let ops = Ops::new(
            empty.clone(),
            "upgrade-servers",
            &Reporter::silent(),
            Goal::Apply,
        );
        let e = upload::swap_staged(&ops, &release_b()).await.unwrap_err();
        assert!(e.message.contains("k3s is not staged"), "{}", e.message);
        assert!(swaps(&empty).is_empty());
    }

    #[tokio::test]
    async fn a_dry_run_plans_each_swap_and_sends_nothing() {
        let remote = Arc::new(FakeRemote::new("n").expect_contains("for f in ", Reply::ok("")));
        let events = Arc::new(Collector::default());
        let rep = Reporter::new(vec![events.clone()]);
        let ops = Ops::new(remote.clone(), "upgrade-servers", &rep, Goal::DryRun);
        upload::swap_staged(&ops, &release_b()).await.unwrap();
        let planned: Vec<String> = events
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::PlannedChange { summary, .. } => Some(summary.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            planned,
            [
                format!("swap {} into place at {}", staged_bin(), paths::K3S_BINARY),
                format!("swap {} into place at {}", staged_images(), final_images()),
            ]
        );
        assert_eq!(remote.scripts().len(), 1, "only the hashes were read");
    }
}
