//! End to end (issue 6): `installer install` from an answer file to a Ready k3s cluster,
//! against real hosts (the lab: systemd, OpenSSH) with the k3s stand-in as k3s.
//! Needs root; skips with the reason otherwise (fails instead under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};

use installer_tests::e2e::{self, Env};
use installer_tests::lab::Lab;
use installer_tests::lab_or_skip;

/// Installs, checks every node's unit and the kubeconfig, reruns, checks nothing changed.
fn install_and_rerun(lab: &Lab, servers: usize) {
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    for (i, n) in lab.nodes().iter().enumerate() {
        let unit = if i < servers { "k3s" } else { "k3s-agent" };
        assert_eq!(
            e2e::unit_state(lab, n, unit).unwrap(),
            "active",
            "{} {unit}",
            n.name
        );
    }
    // The gates ran: one etcd-member gate per joining server, Ready for every node.
    let done: Vec<_> = run.of("host_done");
    let joined = done.iter().filter(|e| e["phase"] == "join-servers").count();
    assert_eq!(joined, servers - 1, "{}", run.all());
    let agents = done.iter().filter(|e| e["phase"] == "join-agents").count();
    assert_eq!(agents, lab.nodes().len() - servers, "{}", run.all());
    let kubeconfig = e2e::kubeconfig(lab);
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&kubeconfig).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        text.contains(&format!("https://{}:6443", lab.nodes()[0].addr)),
        "{text}"
    );

    // A second run on the finished cluster changes nothing and uploads nothing.
    let again = env.run(&answers, &["install"]).unwrap();
    assert!(again.ok(), "{}", again.all());
    assert!(
        again.changes().is_empty(),
        "a rerun changed: {:?}\n{}",
        again.changes(),
        again.all()
    );
    assert!(
        !again.uploaded_anything(),
        "a rerun uploaded bytes\n{}",
        again.all()
    );

    // No secret reached the log file or the events, on the first run (secrets generated)
    // or the rerun (secrets read back from the first server).
    let log_path = answers.parent().unwrap().join("installer.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let n1 = &lab.nodes()[0];
    let mut secrets: Vec<String> = Vec::new();
    for f in [
        "/etc/rancher/k3s/server-token",
        "/etc/rancher/k3s/agent-token",
        "/var/lib/rancher/k3s/server/token",
    ] {
        let v = lab
            .exec_ok(n1, &format!("cat {f}"))
            .unwrap()
            .trim()
            .to_owned();
        assert!(v.len() >= 32, "{f}: {v}");
        secrets.push(v);
    }
    // The admin client key of the kubeconfig.
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data:"))
        .map(|k| k.trim().trim_matches('"').to_owned())
        .unwrap();
    secrets.push(key);
    // The libraries' own diagnostics are in the log, at debug level, through the same
    // redaction: russh (SSH negotiation) and kube-rs (API requests).
    for lib in ["trace DEBUG russh", "trace DEBUG kube"] {
        assert!(
            log.contains(lib),
            "no {lib:?} line in {}",
            log_path.display()
        );
    }
    let first_log = std::fs::read_to_string(answers.parent().unwrap().join("installer.log.1"))
        .unwrap_or_default();
    for s in &secrets {
        for (what, out) in [
            ("the log file", log.clone()),
            ("the first run's log file", first_log.clone()),
            ("the first run's output", run.all()),
            ("the rerun's output", again.all()),
        ] {
            assert!(
                !out.contains(s.as_str()),
                "a secret ({}...) is in {what}",
                &s[..8]
            );
        }
    }
}

#[test]
fn one_host_install_is_a_single_ready_server() {
    let Some(lab) = lab_or_skip!(1) else { return };
    install_and_rerun(&lab, 1);
}

#[test]
fn three_host_install_is_three_servers_with_embedded_etcd() {
    let Some(lab) = lab_or_skip!(3) else { return };
    install_and_rerun(&lab, 3);
}

#[test]
fn five_host_install_is_three_servers_and_two_agents() {
    let Some(lab) = lab_or_skip!(5) else { return };
    install_and_rerun(&lab, 3);
}

/// Reads JSON events from a running installer until `stop` says so.
fn wait_for(
    child: &mut std::process::Child,
    stop: impl Fn(&serde_json::Value) -> bool,
) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        seen.push(line);
        if stop(&v) {
            return seen;
        }
    }
    panic!(
        "the installer ended before the awaited event:\n{}",
        seen.join("\n")
    );
}

fn joining(v: &serde_json::Value, host: &str) -> bool {
    v["event"] == "host_step"
        && v["phase"] == "join-servers"
        && v["host"] == host
        && v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("start k3s"))
}

#[test]
fn a_run_killed_during_the_server_joins_is_finished_by_a_rerun() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let node2 = lab.nodes()[1].addr.to_string();
    let mut child = env.spawn(&answers, &["install"]).unwrap();
    wait_for(&mut child, |v| joining(v, &node2));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let notes: Vec<String> = run
        .of("message")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    assert!(
        notes
            .iter()
            .any(|t| t.contains("was interrupted") && t.contains("continuing")),
        "the rerun did not say where the last run stopped: {notes:?}"
    );
    // Nothing was bootstrapped twice: the first server was already up.
    let boot = run
        .of("host_done")
        .into_iter()
        .find(|e| e["phase"] == "bootstrap")
        .unwrap();
    assert_eq!(boot["outcome"], "unchanged", "{}", run.all());
    for n in lab.nodes() {
        assert_eq!(
            e2e::unit_state(&lab, n, "k3s").unwrap(),
            "active",
            "{}",
            n.name
        );
    }
}

#[test]
fn ctrl_c_during_the_joins_exits_130_and_a_rerun_continues() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let node3 = lab.nodes()[2].addr.to_string();
    let mut child = env.spawn(&answers, &["install"]).unwrap();
    wait_for(&mut child, |v| joining(v, &node3));
    // SAFETY-free: kill(2) through the libc crate's safe wrapper is not available, so
    // use the kill command, as a user pressing Ctrl-C in another terminal would.
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn dry_run_connects_reports_actions_and_changes_nothing() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let run = env
        .run(&lab.answer_file_path(), &["install", "--dry-run"])
        .unwrap();
    assert!(run.ok(), "{}", run.all());
    // Every change is a typed event: (action, target, summary).
    let changes: Vec<(String, String, String)> = run
        .of("planned_change")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("action"), s("target"), s("summary"))
        })
        .collect();
    for (action, target, summary) in [
        (
            "upload",
            "/usr/local/bin/k3s",
            "upload k3s-amd64 to /usr/local/bin/k3s",
        ),
        (
            "write",
            "/etc/rancher/k3s/config.yaml",
            "write /etc/rancher/k3s/config.yaml",
        ),
        ("run", "start k3s.service", "start k3s.service"),
    ] {
        let want = (action.to_owned(), target.to_owned(), summary.to_owned());
        assert!(changes.contains(&want), "no {want:?} in {changes:#?}");
    }
    // The reachability check's listeners are probes, reported and not run.
    assert!(changes.iter().any(|(a, _, _)| a == "probe"), "{changes:#?}");
    // A dry run says "would" only through typed events.
    assert!(
        !run.of("host_step").iter().any(|s| s["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("would "))),
        "{}",
        run.all()
    );
    // Every host's plan is reported, servers joining included.
    let joins = run
        .of("host_done")
        .into_iter()
        .filter(|e| e["phase"] == "join-servers")
        .count();
    assert_eq!(joins, 2, "{}", run.all());
    for n in lab.nodes() {
        assert!(
            e2e::untouched(&lab, n).unwrap(),
            "{} was changed by a dry run",
            n.name
        );
    }
}

#[test]
fn a_wiped_first_server_is_never_bootstrapped_into_a_second_cluster() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    // node1 is reinstalled: k3s, its data and its configuration are gone.
    let n1 = &lab.nodes()[0];
    lab.exec_ok(
        n1,
        "systemctl stop k3s; rm -rf /var/lib/rancher/k3s /etc/rancher/k3s /usr/local/bin/k3s /etc/systemd/system/k3s.service; systemctl daemon-reload",
    )
    .unwrap();
    let run = env.run(&answers, &["install"]).unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    let f = run.failures();
    assert!(f.contains("would create a second, separate cluster"), "{f}");
    assert!(f.contains(&lab.nodes()[1].addr.to_string()), "{f}");
    // Nothing was started on node1.
    assert_ne!(e2e::unit_state(&lab, n1, "k3s").unwrap(), "active");
    assert!(
        lab.exec_ok(
            n1,
            "test -e /var/lib/rancher/k3s/server/db && echo yes || echo no"
        )
        .unwrap()
        .contains("no")
    );
}
