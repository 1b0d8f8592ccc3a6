//! The stand-in's command line and config.yaml handling, as k3s's: unknown keys warn on a
//! server and are fatal on an agent, `--version`, `check-config`, fault injection at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod standin_util;

use std::process::Command;
use std::time::Duration;

use installer_tests::standin::paths::ROOT_ENV;
use installer_tests::standin::testing::LocalNode;
use standin_util::*;

#[test]
fn version_is_k3s_shaped() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let first = s.lines().next().unwrap();
    assert!(first.starts_with("k3s version v1.36.2+k3s1 ("), "{s}");
    assert!(
        s.lines().nth(1).unwrap().starts_with("go version go1."),
        "{s}"
    );
}

#[test]
fn agent_with_a_server_only_key_exits_with_k3s_message() {
    // k3s#6565: `k3s agent` does not filter config keys; a server-only key is fatal.
    let mut n = LocalNode::prepare(
        &bin(),
        "agt1",
        "agent",
        "server: https://{ip}:6443\ntoken: x\nnode-name: agt1\ndisable: [coredns]\n",
        None,
    );
    n.start();
    let st = n.wait_exit(Duration::from_secs(10)).expect("agent exits");
    assert_eq!(st.code(), Some(1));
    let logs = n.logs();
    assert!(
        logs.contains("Incorrect Usage: flag provided but not defined: -disable"),
        "{logs}"
    );
    assert!(
        logs.contains("level=fatal msg=\"Error: flag provided but not defined: -disable\""),
        "{logs}"
    );
    assert!(logs.contains("k3s agent - Run node agent"), "{logs}");
}

#[test]
fn agent_rejects_unknown_keys_too() {
    let mut n = LocalNode::prepare(
        &bin(),
        "agt1",
        "agent",
        "server: https://{ip}:6443\ntoken: x\nnode-nmae: agt1\n",
        None,
    );
    n.start();
    assert_eq!(
        n.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        n.logs()
            .contains("flag provided but not defined: -node-nmae"),
        "{}",
        n.logs()
    );
}

#[test]
fn server_warns_about_unknown_keys_and_runs() {
    let mut n = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        &format!("{FIRST_SERVER}node-nmae: typo\ndisable-apiserver-lb: true\n"),
        None,
    );
    n.start();
    n.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    let logs = n.logs();
    assert!(
        logs.contains(
            "level=warning msg=\"Unknown flag --node-nmae found in config.yaml, skipping\""
        ),
        "{logs}"
    );
    // disable-apiserver-lb is agent-only: a server skips it with the same warning.
    assert!(
        logs.contains("Unknown flag --disable-apiserver-lb found in config.yaml, skipping"),
        "{logs}"
    );
    assert!(n.running());
}

#[test]
fn config_drop_ins_append_and_override() {
    let mut n = LocalNode::prepare(&bin(), "srv1", "server", FIRST_SERVER, None);
    n.write(
        "/etc/rancher/k3s/config.yaml.d/50-extra.yaml",
        "tls-san+: [extra.example]\nnode-label+: [tier=web]\n",
    );
    n.start();
    n.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    let pem = n
        .read("/var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt")
        .unwrap();
    let der = installer_tests::standin::pki::pem_certs(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
    );
    assert!(sans.contains("extra.example"), "{sans}");
    assert!(sans.contains("kubernetes.default.svc"), "{sans}");
}

#[test]
fn missing_token_file_is_fatal_like_k3s() {
    let mut n = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        "cluster-init: true\ntoken-file: /etc/rancher/k3s/server-token\nnode-ip: {ip}\nbind-address: {ip}\n",
        None,
    );
    n.start();
    assert_eq!(
        n.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        n.logs().contains("level=fatal msg=\"Error: open /etc/rancher/k3s/server-token: no such file or directory\""),
        "{}",
        n.logs()
    );
}

#[test]
fn crash_at_start_fault() {
    let mut n = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        FIRST_SERVER,
        Some("crash-at-start: true\n"),
    );
    n.start();
    assert_eq!(
        n.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(n.logs().contains("crash at start"), "{}", n.logs());
}

#[test]
fn startup_delay_and_never_ready() {
    // With a startup delay the API answers only after it, and READY=1 follows.
    let mut n = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        FIRST_SERVER,
        Some("startup-delay: 2s\n"),
    );
    let t0 = std::time::Instant::now();
    n.start();
    n.wait_log("Wrote kubeconfig", Duration::from_secs(10))
        .unwrap();
    assert!(!n.notified_ready(), "not ready while starting");
    n.wait_log("k3s is up and running", Duration::from_secs(10))
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(2));
    // READY=1 follows the log line.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !n.notified_ready() {
        assert!(std::time::Instant::now() < deadline, "READY=1 never came");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // never-ready: the process runs, files exist, READY=1 never comes.
    let mut m = LocalNode::prepare(
        &bin(),
        "srv2",
        "server",
        FIRST_SERVER,
        Some("startup-delay: 0\nnever-ready: true\n"),
    );
    m.start();
    m.wait_log("Wrote kubeconfig", Duration::from_secs(10))
        .unwrap();
    // A negative over time: watched for 2 s (the ready server above took 2 s), it keeps
    // running and never says READY=1.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert!(m.running());
        assert!(!m.notified_ready());
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert!(!m.logs().contains("k3s is up and running"));
}

#[test]
fn check_config_reports_and_is_honest() {
    let out = Command::new(bin())
        .arg("check-config")
        .env(ROOT_ENV, "/nonexistent")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("cgroup hierarchy"), "{s}");
    assert!(
        s.contains("kernel configuration (CONFIG_*) checks are not performed"),
        "{s}"
    );
    assert!(s.contains("STATUS:"), "{s}");
}
