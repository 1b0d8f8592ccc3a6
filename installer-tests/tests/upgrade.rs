//! End to end (issue 14, first slice): `installer upgrade` on a 4-host lab (3 servers, 1
//! agent) with the k3s stand-in. Release A is installed, release B (the stand-in stamped with a newer patch
//! version, a payload and lock of its own) is rolled on, servers one at a time; then the
//! installer of A is refused a downgrade before it changes anything.
//! Needs root; skips with the reason otherwise (fails instead under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use installer_tests::e2e::{Env, Run};
use installer_tests::lab::{Lab, Node};
use installer_tests::lab_or_skip;

const A: &str = "v1.36.4+k3s1";
const B: &str = "v1.36.5+k3s1";

/// The k3s unit's (`k3s`, or `k3s-agent` on the agent) activation times on a node (CLOCK_MONOTONIC µs, one clock for every lab
/// host: they share the kernel), and its binary's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    exit: u64,
    enter: u64,
    sha: String,
    version: String,
}

fn unit(lab: &Lab, n: &Node) -> Unit {
    // The lab's fourth host is the agent.
    let unit = if n.name == "node4" {
        "k3s-agent"
    } else {
        "k3s"
    };
    let out = lab
        .exec_ok(
            n,
            &format!(
                "systemctl show -p ActiveExitTimestampMonotonic --value {unit}; \
                 systemctl show -p ActiveEnterTimestampMonotonic --value {unit}; \
                 sha256sum /usr/local/bin/k3s | cut -d' ' -f1; \
                 /usr/local/bin/k3s --version | head -n 1"
            ),
        )
        .unwrap();
    let l: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(l.len(), 4, "{}: {out}", n.name);
    Unit {
        exit: l[0].parse().unwrap_or(0),
        enter: l[1].parse().unwrap(),
        sha: l[2].to_owned(),
        version: l[3].split_whitespace().nth(2).unwrap_or("").to_owned(),
    }
}

/// What the upgrade staged and left on a node: the side paths (`/usr/local/bin/k3s.staged`,
/// the images' `images.staged` directory) and any partial upload beside them. Empty when
/// nothing is staged.
fn staged(lab: &Lab, n: &Node) -> String {
    lab.exec_ok(
        n,
        "find /usr/local/bin /var/lib/rancher/k3s/agent -maxdepth 1 -name '*staged*' 2>/dev/null; true",
    )
    .unwrap()
    .trim()
    .to_owned()
}

fn assert_nothing_staged(lab: &Lab, when: &str) {
    for n in lab.nodes() {
        let left = staged(lab, n);
        assert!(
            left.is_empty(),
            "{when}: {} has staged files: {left}",
            n.name
        );
    }
}

/// The stand-in's version skew record on each server (the one running the controllers
/// writes it): absent or empty, or the test fails printing it.
fn assert_no_skew(lab: &Lab, when: &str) {
    for n in lab.nodes().iter().take(3) {
        let rec = lab
            .exec_ok(
                n,
                "cat /var/lib/rancher/k3s/server/db/standin/skew.jsonl 2>/dev/null; true",
            )
            .unwrap();
        assert!(
            rec.trim().is_empty(),
            "{when}: the stand-in on {} recorded version skew:\n{rec}",
            n.name
        );
    }
}

/// `status.nodeInfo.kubeletVersion` of `node`, read through the API on `via`.
fn kubelet_version(lab: &Lab, via: &Node, node: &str) -> String {
    let out = lab
        .exec_ok(via, &format!("k3s kubectl get node {node} -o json"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["status"]["nodeInfo"]["kubeletVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no kubeletVersion for {node}: {out}"))
        .to_owned()
}

/// Whether `node` is cordoned, or carries the upgrade's cordon mark, read through `via`.
fn cordon_state(lab: &Lab, via: &Node, node: &str) -> (bool, bool) {
    let out = lab
        .exec_ok(via, &format!("k3s kubectl get node {node} -o json"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    (
        v["spec"]["unschedulable"] == true,
        !v["metadata"]["annotations"]["installer/cordoned-for-upgrade"].is_null(),
    )
}

fn status(env: &Env, lab: &Lab) -> (Run, serde_json::Value) {
    let run = env.run(&lab.answer_file_path(), &["status"]).unwrap();
    let st = run
        .of("status_ready")
        .first()
        .map(|e| e["status"].clone())
        .unwrap_or_default();
    (run, st)
}

#[test]
fn an_upgrade_rolls_every_server_onto_the_new_release_one_at_a_time_and_a_downgrade_is_refused_before_any_change()
 {
    let Some(lab) = lab_or_skip!(4) else { return };
    let started = std::time::Instant::now();
    let mut env = Env::with_release(A).unwrap();
    let release_a = env.payload.clone();
    let release_b = env.release(B).unwrap();
    let answers = lab.answer_file_path();

    let install = env.run(&answers, &["install"]).unwrap();
    assert!(install.ok(), "{}", install.all());
    let installed_in = started.elapsed();

    // The installer of release B.
    env.payload = release_b.clone();

    // One server down: refused before any change, naming it.
    let n3 = &lab.nodes()[2];
    lab.exec_ok(n3, "systemctl stop k3s").unwrap();
    let stopped: Vec<Unit> = lab.nodes().iter().map(|n| unit(&lab, n)).collect();
    let sick = env.run(&answers, &["upgrade"]).unwrap();
    assert_eq!(sick.code, 1, "{}", sick.all());
    let why = sick.failures();
    assert!(
        why.contains(&format!("{}: the API server's /readyz is not ok", n3.addr)),
        "{why}"
    );
    assert!(!sick.uploaded_anything(), "{}", sick.all());
    assert_nothing_staged(&lab, "after the refused upgrade (a server down)");
    for (n, u) in lab.nodes().iter().zip(&stopped) {
        assert_eq!(&unit(&lab, n), u, "the refused upgrade changed {}", n.name);
    }
    lab.exec_ok(n3, "systemctl start --no-block k3s").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (st_run, _) = status(&env, &lab);
        if st_run.code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not become healthy again: {}",
            st_run.all()
        );
    }
    let before: Vec<Unit> = lab.nodes().iter().map(|n| unit(&lab, n)).collect();
    for (n, u) in lab.nodes().iter().zip(&before) {
        assert_eq!(u.version, A, "{}", n.name);
    }

    // A dry run plans, in order, a restart of each server, then of the agent, and changes
    // nothing.
    let dry = env.run(&answers, &["upgrade", "--dry-run"]).unwrap();
    assert!(dry.ok(), "{}", dry.all());
    let restarts: Vec<String> = dry
        .of("planned_change")
        .iter()
        .filter(|e| {
            e["phase"]
                .as_str()
                .is_some_and(|p| p.starts_with("upgrade-"))
                && e["summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("restart k3s"))
        })
        .map(|e| e["host"].as_str().unwrap_or("").to_owned())
        .collect();
    // The answer file names the hosts by address.
    let addrs: Vec<String> = lab.nodes().iter().map(|n| n.addr.to_string()).collect();
    assert_eq!(restarts, addrs, "{}", dry.all());
    // ... after the snapshot, planned on the first server and not taken.
    let planned = dry.of("planned_change");
    let snap_at = planned.iter().position(|c| {
        c["phase"] == "snapshot"
            && c["host"] == addrs[0].as_str()
            && c["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("take an etcd snapshot"))
    });
    let first_restart = planned.iter().position(|c| {
        c["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("restart k3s"))
    });
    assert!(
        snap_at.is_some() && snap_at < first_restart,
        "the snapshot is not planned before the first restart: {}",
        dry.all()
    );
    assert!(dry.of("snapshot_saved").is_empty(), "{}", dry.all());
    let state = answers
        .parent()
        .unwrap()
        .join(".installer")
        .join(format!("lab{}", lab.id()));
    let pre_upgrade = |state: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(state)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.starts_with("pre-upgrade-"))
            .collect();
        v.sort();
        v
    };
    for old in pre_upgrade(&state) {
        std::fs::remove_file(state.join(old)).unwrap();
    }
    for (n, u) in lab.nodes().iter().zip(&before) {
        assert_eq!(&unit(&lab, n), u, "the dry run changed {}", n.name);
    }

    let t0 = std::time::Instant::now();
    let up = env.run(&answers, &["upgrade"]).unwrap();
    let upgrade_took = t0.elapsed();
    assert!(up.ok(), "{}", up.all());
    for e in up.of("host_done") {
        if e["phase"]
            .as_str()
            .is_some_and(|p| p.starts_with("upgrade-"))
        {
            eprintln!("{} {}: {}", e["phase"], e["host"], e["detail"]);
        }
    }
    let after: Vec<Unit> = lab.nodes().iter().map(|n| unit(&lab, n)).collect();
    for ((n, b), a) in lab.nodes().iter().zip(&before).zip(&after) {
        assert_eq!(a.version, B, "{}: k3s --version", n.name);
        assert_ne!(a.sha, b.sha, "{}: the binary was not replaced", n.name);
        assert!(
            a.exit > b.enter && a.enter > a.exit,
            "{}: k3s was not restarted by the upgrade: before {b:?}, after {a:?}",
            n.name
        );
    }
    // Never two servers down at once: each restart window [stop, active again] ends before
    // the next one begins, in the plan's order, the agent's after every server's.
    let mut windows: Vec<(u64, u64, &str)> = after
        .iter()
        .zip(lab.nodes())
        .map(|(u, n)| (u.exit, u.enter, n.name.as_str()))
        .collect();
    windows.sort();
    for w in windows.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "restart windows overlap: {} [{}, {}] and {} [{}, {}]",
            w[0].2,
            w[0].0,
            w[0].1,
            w[1].2,
            w[1].0,
            w[1].1
        );
    }
    for w in &windows {
        eprintln!("restart window {}: {:.2} s", w.2, (w.1 - w.0) as f64 / 1e6);
    }
    let order: Vec<&str> = windows.iter().map(|w| w.2).collect();
    let names: Vec<&str> = lab.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, names);
    // Each node was cordoned before its restart and uncordoned after its gates.
    let steps: Vec<String> = up
        .of("host_step")
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    for n in lab.nodes() {
        for verb in ["cordoned", "uncordoned"] {
            let want = format!("{verb} node {}", n.name);
            assert!(steps.iter().any(|s| s == &want), "{want}: {steps:#?}");
        }
        assert_eq!(
            cordon_state(&lab, &lab.nodes()[0], &n.name),
            (false, false),
            "{} is still cordoned after the upgrade",
            n.name
        );
    }
    // Before the first restart, the first server's etcd snapshot was copied beside the
    // journal, mode 0600, with the SHA-256 the host reported, and the token beside it.
    let saved = up.saved_snapshot();
    assert_eq!(saved.host, addrs[0]);
    assert!(
        String::from_utf8_lossy(&saved.bytes).contains("node1"),
        "not a snapshot of this cluster"
    );
    let name = saved.name;
    assert!(name.starts_with("pre-upgrade-node1-"), "{name}");
    assert_eq!(
        pre_upgrade(&state),
        vec![name.clone(), format!("{name}.token")]
    );
    let phases: Vec<&str> = up
        .of("phase_started")
        .into_iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    let at = |p: &str| phases.iter().position(|x| *x == p);
    assert!(
        at("snapshot").is_some() && at("snapshot") < at("upgrade-servers"),
        "{phases:?}"
    );
    // Every staged file was swapped into place: nothing is left at the side paths.
    assert_nothing_staged(&lab, "after the upgrade");
    assert_no_skew(&lab, "after the upgrade A -> B");
    // The gates ran on every node, and the application phases after them.
    let done = up.of("host_done");
    let changed = |phase: &str| {
        done.iter()
            .filter(|e| e["phase"] == phase && e["outcome"] == "changed")
            .count()
    };
    assert_eq!(changed("upgrade-servers"), 3, "{}", up.all());
    assert_eq!(changed("upgrade-agents"), 1, "{}", up.all());
    assert!(done.iter().any(|e| e["phase"] == "verify"), "{}", up.all());

    let (st_run, st) = status(&env, &lab);
    assert_eq!(st_run.code, 0, "status after the upgrade: {}", st_run.all());
    assert_eq!(st["healthy"], true, "{st:#}");
    let nodes = st["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 4, "{st:#}");
    for n in &nodes {
        assert_eq!(n["version"], B, "{st:#}");
    }
    // The journal records the upgrade.
    let journal = journal_text(&answers);
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"kind\":\"upgraded\"") && l.contains(B)),
        "{journal}"
    );

    // Running B again changes nothing.
    let again = env.run(&answers, &["upgrade"]).unwrap();
    assert!(again.ok(), "{}", again.all());
    assert!(
        again.changes().is_empty(),
        "a second upgrade changed: {:?}",
        again.changes()
    );
    // No node restarts, so no snapshot is taken.
    assert!(again.of("snapshot_saved").is_empty(), "{}", again.all());
    assert_eq!(pre_upgrade(&state).len(), 2);
    assert!(
        again.of("message").iter().any(|m| m["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("already {B} on every node")))),
        "{}",
        again.all()
    );

    // The installer of release A: a downgrade, refused before any change on any host.
    env.payload = release_a;
    let down = env.run(&answers, &["upgrade"]).unwrap();
    assert_eq!(down.code, 1, "{}", down.all());
    let why = down.failures();
    assert!(why.contains("downgrade refused"), "{why}");
    assert!(why.contains("hint:"), "{why}");
    assert!(!down.uploaded_anything(), "{}", down.all());
    assert_nothing_staged(&lab, "after the refused downgrade");
    assert!(
        !down
            .of("phase_started")
            .iter()
            .any(|e| e["phase"] == "upload" || e["phase"] == "upgrade-servers"),
        "{}",
        down.all()
    );
    for (n, a) in lab.nodes().iter().zip(&after) {
        assert_eq!(
            &unit(&lab, n),
            a,
            "the refused downgrade changed {}",
            n.name
        );
    }
    // A refusal leaves no unfinished run behind: the cluster is still healthy.
    let (st_run, st) = status(&env, &lab);
    assert_eq!(st_run.code, 0, "status after the refusal: {}", st_run.all());
    assert_eq!(st["healthy"], true, "{st:#}");
    assert_no_skew(&lab, "after the refused downgrade");
    eprintln!(
        "timing: install {:.1} s, upgrade of 3 servers and 1 agent {:.1} s, whole test {:.1} s",
        installed_in.as_secs_f64(),
        upgrade_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The journal beside the answer file (`.installer/<cluster>/journal.jsonl`).
fn journal_text(answers: &std::path::Path) -> String {
    let state = answers.parent().unwrap().join(".installer");
    let mut text = String::new();
    for d in std::fs::read_dir(&state).unwrap() {
        let p = d.unwrap().path().join("journal.jsonl");
        if let Ok(t) = std::fs::read_to_string(&p) {
            text.push_str(&t);
        }
    }
    text
}

#[test]
fn a_server_that_cannot_start_on_the_new_release_stops_the_upgrade_at_its_gate_a_k3s_restarted_before_its_turn_stays_on_the_old_release_and_a_rerun_finishes()
 {
    let Some(lab) = lab_or_skip!(4) else { return };
    let mut env = Env::with_release(A).unwrap();
    let release_b = env.release(B).unwrap();
    let answers = lab.answer_file_path();
    let install = env.run(&answers, &["install"]).unwrap();
    assert!(install.ok(), "{}", install.all());
    let before: Vec<Unit> = lab.nodes().iter().map(|n| unit(&lab, n)).collect();

    // node2's next start fails (the stand-in reads the fault at start; the running k3s is
    // not affected), as a k3s would that cannot start on the new release.
    let n2 = &lab.nodes()[1];
    let fault = "/etc/k3s-standin/faults.yaml";
    lab.exec_ok(
        n2,
        &format!("mkdir -p /etc/k3s-standin && echo 'crash-at-start: true' > {fault}"),
    )
    .unwrap();
    env.payload = release_b;
    let t0 = std::time::Instant::now();
    let up = env.run(&answers, &["upgrade"]).unwrap();
    let took = t0.elapsed();
    assert_eq!(up.code, 1, "{}", up.all());
    let why = up.failures();
    assert!(why.contains(&format!("{}:", n2.addr)), "{why}");
    assert!(why.contains("keeps exiting at start"), "{why}");
    assert!(
        why.contains("crash at start"),
        "the fatal line is quoted: {why}"
    );
    assert!(
        took < std::time::Duration::from_secs(120),
        "took {took:?}\n{why}"
    );
    // node1 went first and is on B; node3 and the agent were not restarted, and the agents'
    // phase never started.
    let stopped: Vec<Unit> = lab.nodes().iter().map(|n| unit(&lab, n)).collect();
    assert_eq!(stopped[0].version, B);
    assert!(stopped[0].enter > before[0].enter, "{:?}", stopped[0]);
    for i in [2, 3] {
        let (b, s) = (&before[i], &stopped[i]);
        assert_eq!(
            (b.exit, b.enter),
            (s.exit, s.enter),
            "{} was restarted after the upgrade stopped",
            lab.nodes()[i].name
        );
    }
    let node3 = lab.nodes()[2].addr.to_string();
    assert!(
        up.of("host_done")
            .iter()
            .any(|e| e["phase"] == "upgrade-servers"
                && e["host"] == node3.as_str()
                && e["outcome"] == "skipped"),
        "{}",
        up.all()
    );
    assert!(
        !up.of("phase_started")
            .iter()
            .any(|e| e["phase"] == "upgrade-agents"),
        "{}",
        up.all()
    );

    // node2 was cordoned before its restart; the failed run uncordoned it (its clean-up).
    assert!(
        up.of("message").iter().any(|m| m["text"]
            .as_str()
            .is_some_and(|t| t == "undone: uncordon the nodes the upgrade cordoned")),
        "{}",
        up.all()
    );
    assert_eq!(
        cordon_state(&lab, &lab.nodes()[0], "node2"),
        (false, false),
        "node2 is still cordoned after the failed upgrade"
    );
    // The cause fixed, node2 comes back on B (systemd restarts it); the same command then
    // finishes what is left, re-derived from the cluster: node3 and the agent.
    lab.exec_ok(n2, &format!("rm -f {fault}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lab
        .exec_ok(n2, "systemctl is-active k3s || true")
        .unwrap()
        .trim()
        != "active"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "k3s on node2 did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The pause point: B is staged on node3 and the agent, not yet their turn. A k3s that
    // systemd restarts now (a crash, a reboot) must come back on A: the staged binary sits
    // at a side path the unit never runs (it used to be written over /usr/local/bin/k3s).
    let n3 = &lab.nodes()[2];
    for i in [2, 3] {
        let left = staged(&lab, &lab.nodes()[i]);
        assert!(
            left.contains("/usr/local/bin/k3s.staged"),
            "{}: B is not staged: {left:?}",
            lab.nodes()[i].name
        );
    }
    lab.exec_ok(n3, "systemctl restart k3s").unwrap();
    let early = unit(&lab, n3);
    assert!(
        early.enter > before[2].enter,
        "node3 was not restarted: {early:?}"
    );
    assert_eq!(
        early.version, A,
        "node3, restarted before its turn, runs B early: {early:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = lab
            .exec_ok(n3, "k3s kubectl get node node3 -o json")
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&st).unwrap_or_default();
        let ready = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node3 did not become Ready after its early restart: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(kubelet_version(&lab, &lab.nodes()[0], "node3"), A);
    let rerun = env.run(&answers, &["upgrade"]).unwrap();
    assert!(rerun.ok(), "{}", rerun.all());
    assert!(
        rerun.of("message").iter().any(|m| m["text"]
            .as_str()
            .is_some_and(|t| t.contains("failed") && t.contains("continuing"))),
        "the rerun did not say where the last run stopped\n{}",
        rerun.all()
    );
    let outcome = |phase: &str, host: &str| {
        rerun
            .of("host_done")
            .iter()
            .find(|e| e["phase"] == phase && e["host"] == host)
            .map(|e| e["outcome"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let addr = |i: usize| lab.nodes()[i].addr.to_string();
    assert_eq!(outcome("upgrade-servers", &addr(0)), "unchanged");
    assert_eq!(outcome("upgrade-servers", &addr(1)), "unchanged");
    assert_eq!(outcome("upgrade-servers", &addr(2)), "changed");
    assert_eq!(outcome("upgrade-agents", &addr(3)), "changed");
    for n in lab.nodes() {
        assert_eq!(unit(&lab, n).version, B, "{}", n.name);
    }
    assert_nothing_staged(&lab, "after the rerun finished the upgrade");
    let (st_run, st) = status(&env, &lab);
    assert_eq!(st_run.code, 0, "{}", st_run.all());
    for n in st["nodes"].as_array().cloned().unwrap_or_default() {
        assert_eq!(n["version"], B, "{st:#}");
    }
    eprintln!(
        "timing: the upgrade stopped at node2's gate after {:.1} s",
        took.as_secs_f64()
    );
}
