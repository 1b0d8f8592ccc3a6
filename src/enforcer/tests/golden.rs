//! Golden tests: snapshot -> rules text, one per NetworkPolicy feature. No root needed.
#![allow(clippy::unwrap_used)]

use installer_enforcer::cgroup::CgroupRef;
use installer_enforcer::compile::{Cgroups, Ruleset, compile};
use installer_enforcer::model::{Config, Mode, Snapshot};
use serde_json::{Value, json};

/// Nodes n1 (10.0.0.1, this node), n2 (10.0.0.2), n3 (10.0.0.3, fd00::3).
fn nodes() -> Vec<Value> {
    vec![
        json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]}}),
        json!({"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
        json!({"metadata": {"name": "n3"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.3"}, {"type": "InternalIP", "address": "fd00::3"}]}}),
    ]
}

/// A running host-network pod; `ports` as (name, port, protocol).
fn pod(ns: &str, name: &str, node: &str, labels: Value, ports: &[(&str, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, pr)| json!({"name": n, "containerPort": p, "protocol": pr}))
        .collect();
    json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "qosClass": "Burstable"}
    })
}

fn ns(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// The appliance's shape: app namespace with store (n1, n2), api (n1, n2), gateway (n1),
/// worker (n3), and a tools pod in another namespace on n1.
fn base_pods() -> Vec<Value> {
    vec![
        pod(
            "app",
            "store-0",
            "n1",
            json!({"role": "store"}),
            &[("client", 7379, "TCP"), ("peer", 7380, "TCP")],
        ),
        pod(
            "app",
            "store-1",
            "n2",
            json!({"role": "store"}),
            &[("client", 7379, "TCP"), ("peer", 7380, "TCP")],
        ),
        pod(
            "app",
            "api-0",
            "n1",
            json!({"role": "api"}),
            &[("http", 8081, "TCP")],
        ),
        pod(
            "app",
            "api-1",
            "n2",
            json!({"role": "api"}),
            &[("http", 8081, "TCP")],
        ),
        pod(
            "app",
            "gateway-0",
            "n1",
            json!({"role": "gateway"}),
            &[("https", 8443, "TCP")],
        ),
        pod(
            "app",
            "worker-0",
            "n3",
            json!({"role": "worker"}),
            &[("health", 8090, "TCP")],
        ),
        pod(
            "tools",
            "debug-0",
            "n1",
            json!({"role": "api"}),
            &[("dns", 5353, "UDP")],
        ),
    ]
}

fn snapshot(policies: Vec<Value>) -> Snapshot {
    serde_json::from_value(json!({
        "pods": base_pods(),
        "namespaces": [ns("app", json!({"team": "app"})), ns("tools", json!({"team": "ops"}))],
        "policies": policies,
        "nodes": nodes(),
    }))
    .unwrap()
}

/// Every local pod resolved on a systemd-driver layout, api-0 as a Guaranteed pod (level 2).
fn cgroups(snap: &Snapshot, skip: &[&str]) -> Cgroups {
    let mut c = Cgroups {
        roots: vec![CgroupRef {
            nft_path: "kubepods.slice".into(),
            level: 1,
            inode: 1,
        }],
        ..Cgroups::default()
    };
    for p in &snap.pods {
        let uid = p.metadata.uid.clone().unwrap();
        let name = p.metadata.name.clone().unwrap();
        if p.spec.as_ref().unwrap().node_name.as_deref() != Some("n1")
            || skip.contains(&name.as_str())
        {
            continue;
        }
        let u = uid.replace('-', "_");
        let (path, level) = if name == "api-0" {
            (format!("kubepods.slice/kubepods-pod{u}.slice"), 2)
        } else {
            (
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                3,
            )
        };
        c.pods.insert(
            uid,
            CgroupRef {
                nft_path: path,
                level,
                inode: 100,
            },
        );
    }
    c
}

fn cfg(mode: Mode) -> Config {
    Config::new("n1", mode, "installer_enforcer", &[2222], &[])
}

fn run(policies: Vec<Value>) -> Ruleset {
    let s = snapshot(policies);
    compile(&s, &cfg(Mode::Enforce), &cgroups(&s, &[]))
}

fn show(rs: &Ruleset) -> String {
    format!(
        "{}\n# stats: {:?}\n# warnings: {:?}\n",
        rs.text, rs.stats, rs.warnings
    )
}

#[test]
fn no_policies_allow_everything_but_deny_unknown_pods() {
    let rs = run(vec![]);
    assert!(!rs.text.contains("chain in_"), "no pod is isolated");
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn default_deny_ingress() {
    let rs = run(vec![policy(
        "app",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn pod_selector_same_namespace_local_and_remote_peers() {
    let rs = run(vec![policy(
        "app",
        "store-from-api",
        json!({
            "podSelector": {"matchLabels": {"role": "store"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "api"}}}], "ports": [{"port": 7379}]}]
        }),
    )]);
    // tools/debug-0 has role=api but another namespace: not a peer.
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn namespace_selector_alone() {
    let rs = run(vec![policy(
        "app",
        "gw-from-ops",
        json!({
            "podSelector": {"matchLabels": {"role": "gateway"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]}]
        }),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn pod_and_namespace_selector_together() {
    let rs = run(vec![policy(
        "app",
        "api-from-ops-api",
        json!({
            "podSelector": {"matchLabels": {"role": "api"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["tools", "app"]}]},
                                   "podSelector": {"matchLabels": {"role": "worker"}}}]}]
        }),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn ip_block_with_except() {
    let rs = run(vec![policy(
        "app",
        "gw-from-lan",
        json!({
            "podSelector": {"matchLabels": {"role": "gateway"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.10.0/24"]}},
                                  {"ipBlock": {"cidr": "fd00::/8"}}],
                         "ports": [{"port": "https"}]}]
        }),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn named_ports_numbered_ports_and_end_port() {
    let rs = run(vec![policy(
        "app",
        "store-ports",
        json!({
            "podSelector": {"matchLabels": {"role": "store"}},
            "ingress": [{"ports": [{"port": "peer"}, {"port": 9000, "endPort": 9010}, {"port": "nosuch"}]}]
        }),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn udp_port_and_sctp_reported_unsupported() {
    let rs = run(vec![policy(
        "tools",
        "dns-only",
        json!({
            "podSelector": {},
            "ingress": [{"ports": [{"port": 5353, "protocol": "UDP"}, {"port": 99, "protocol": "SCTP"}]}]
        }),
    )]);
    assert!(
        rs.warnings.iter().any(|w| w.contains("SCTP")),
        "{:?}",
        rs.warnings
    );
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn policy_types_egress_default_deny_with_dns_allowed() {
    let rs = run(vec![policy(
        "app",
        "egress",
        json!({
            "podSelector": {"matchLabels": {"role": "gateway"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "api"}}}], "ports": [{"port": "http"}]},
                       {"ports": [{"port": 1053, "protocol": "UDP"}, {"port": 1053, "protocol": "TCP"}]}]
        }),
    )]);
    // Ingress is not isolated by an Egress-only policy.
    assert!(!rs.text.contains("chain in_"), "{}", rs.text);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn union_of_two_policies() {
    let rs = run(vec![
        policy(
            "app",
            "a-api-from-gateway",
            json!({"podSelector": {"matchLabels": {"role": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "gateway"}}}]}]}),
        ),
        policy(
            "app",
            "b-api-from-worker",
            json!({"podSelector": {"matchLabels": {"role": "api"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "worker"}}}], "ports": [{"port": 8081}]}]}),
        ),
    ]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn sender_applies_remote_destinations_ingress() {
    // store-1 on n2 admits only the worker (n3): pods and host processes on n1 must be stopped
    // by n1's egress rules, because n2 sees only 10.0.0.1.
    let rs = run(vec![policy(
        "app",
        "store-from-worker",
        json!({
            "podSelector": {"matchLabels": {"role": "store"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "worker"}}}]}]
        }),
    )]);
    assert!(rs.text.contains("chain out_host"), "{}", rs.text);
    assert!(
        rs.text
            .contains("ip daddr 10.0.0.2 tcp dport 7379-7380 counter name \"dropped\" drop"),
        "{}",
        rs.text
    );
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn ingress_and_egress_in_one_policy() {
    let rs = run(vec![policy(
        "app",
        "worker-both",
        json!({
            "podSelector": {"matchLabels": {"role": "api"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "gateway"}}}], "ports": [{"port": "http"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "store"}}}], "ports": [{"port": 7379}]},
                       {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.3/32"]}}], "ports": [{"port": 443}]}]
        }),
    )]);
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn unresolved_pod_is_left_to_the_deny_rule() {
    let s = snapshot(vec![]);
    let rs = compile(&s, &cfg(Mode::Enforce), &cgroups(&s, &["store-0"]));
    assert_eq!(rs.stats.unresolved_pods, 1);
    assert!(!rs.text.contains("uid_store_0"), "{}", rs.text);
    assert!(
        rs.text
            .contains("socket cgroupv2 level 1 \"kubepods.slice\" counter name \"dropped\" drop"),
        "{}",
        rs.text
    );
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn audit_mode_counts_and_logs_instead_of_dropping() {
    let s = snapshot(vec![policy(
        "app",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )]);
    let rs = compile(&s, &cfg(Mode::Audit), &cgroups(&s, &[]));
    assert!(
        !rs.text
            .lines()
            .any(|l| l.contains(" drop comment") || l.trim_end().ends_with(" drop")),
        "audit never drops:\n{}",
        rs.text
    );
    assert!(
        rs.text.contains("counter name \"would_drop\" log prefix"),
        "{}",
        rs.text
    );
    insta::assert_snapshot!(show(&rs));
}

#[test]
fn failsafe_ports_merge_and_include_the_ssh_port() {
    let c = Config::new("n1", Mode::Enforce, "t", &[2222, 22, 2381], &[1053]);
    assert_eq!(
        c.failsafe_tcp,
        vec![
            (22, 22),
            (53, 53),
            (2222, 2222),
            (2379, 2381),
            (6443, 6444),
            (10250, 10250)
        ]
    );
    assert_eq!(c.failsafe_udp, vec![(53, 53), (1053, 1053)]);
}

/// Regression: cgroup paths were cut to 120 characters like comments, so on a hybrid host
/// (`unified/` prefix) under a longer cgroup root the kubelet's paths named no cgroup and nft
/// refused the whole batch: the node was never protected (found by the enforcer_watchers bench).
#[test]
fn a_cgroup_path_longer_than_a_comment_is_written_whole() {
    let s = snapshot(vec![]);
    let mut c = cgroups(&s, &[]);
    let long = format!(
        "unified/{}/kubepods.slice",
        "a-longer-cgroup-root".repeat(8)
    );
    assert!(long.len() > 160);
    c.roots = vec![CgroupRef {
        nft_path: long.clone(),
        level: 10,
        inode: 1,
    }];
    for r in c.pods.values_mut() {
        r.nft_path = format!("{long}/kubepods-burstable.slice/{}", r.nft_path);
    }
    let rs = compile(&s, &cfg(Mode::Enforce), &c);
    let quoted = format!("\"{long}\"");
    assert!(rs.text.contains(&quoted), "{}", rs.text);
    for r in c.pods.values() {
        assert!(
            rs.text.contains(&format!("\"{}\"", r.nft_path)),
            "{} not whole in\n{}",
            r.nft_path,
            rs.text
        );
    }
    // Comments are still cut to nft's limit (128 bytes).
    for line in rs.text.lines().filter(|l| l.contains("comment \"")) {
        let c = line.split("comment \"").nth(1).unwrap_or_default();
        let c = c.split('"').next().unwrap_or_default();
        assert!(c.len() <= 120, "{c}");
    }
}
