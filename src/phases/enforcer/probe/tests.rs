//! The probe matrix's live half: which pods stand for a workload, which connections check a
//! cell, the node script run for real on loopback, and the gate's decision.

use super::*;
use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn workload(name: &str, port: u16) -> Workload {
    Workload {
        name: name.into(),
        namespace: "appliance".into(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        ports: vec![(port, "TCP".into(), None)],
    }
}

fn pod(name: &str, app: &str, node: &str, addr: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("appliance".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("pod-template-hash".to_string(), "abc".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(addr.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[test]
fn a_workload_is_probed_from_one_ready_pod_per_node() {
    let ws = [workload("store", 7379), workload("api", 8081)];
    let mut deleting = pod("store-c", "store", "n2", "10.0.0.2", true);
    deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
    let mut elsewhere = pod("store-x", "store", "n3", "10.0.0.3", true);
    elsewhere.metadata.namespace = Some("other".into());
    let pods = [
        pod("store-b", "store", "n1", "10.0.0.1", true),
        pod("store-a", "store", "n1", "10.0.0.1", true),
        deleting,
        elsewhere,
        pod("api-a", "api", "n2", "10.0.0.2", false),
        pod("api-b", "api", "n3", "10.0.0.3", true),
    ];
    let got: Vec<(String, String, String)> = places(&ws, &pods)
        .into_iter()
        .map(|p| (p.workload, p.node, p.uid))
        .collect();
    assert_eq!(
        got,
        [
            ("store".into(), "n1".into(), "uid-store-a".into()),
            ("api".into(), "n3".into(), "uid-api-b".into()),
        ]
    );
}

fn cell(source: Source, dest: &str, port: u16, proto: &str, verdict: Verdict) -> Cell {
    Cell {
        source,
        destination: dest.into(),
        port,
        protocol: proto.into(),
        verdict,
    }
}

fn place(w: &str, node: &str, addr: &str) -> Place {
    Place {
        workload: w.into(),
        node: node.into(),
        address: addr.parse().unwrap(),
        uid: format!("uid-{w}-{node}"),
    }
}

#[test]
fn every_pair_of_nodes_where_a_cell_applies_gets_a_connection_and_udp_none() {
    let places = [
        place("store", "n1", "10.0.0.1"),
        place("store", "n2", "10.0.0.2"),
        place("worker", "n1", "10.0.0.1"),
    ];
    let nodes = ["n1".to_string(), "n2".to_string(), "n3".to_string()];
    let cells = [
        cell(
            Source::Workload("worker".into()),
            "store",
            7379,
            "TCP",
            Verdict::Allow,
        ),
        cell(Source::Outside, "store", 7379, "TCP", Verdict::Deny),
        cell(Source::HostSameNode, "store", 7379, "TCP", Verdict::Allow),
        cell(Source::HostOtherNode, "store", 7379, "TCP", Verdict::Deny),
        cell(
            Source::Workload("worker".into()),
            "store",
            53,
            "UDP",
            Verdict::Allow,
        ),
    ];
    let probes = plan(&cells, &places, &nodes);
    let of = |i: usize| -> Vec<(Origin, String)> {
        probes
            .iter()
            .filter(|p| p.cell == i)
            .map(|p| (p.origin.clone(), p.to.to_string()))
            .collect()
    };
    let pod = |n: &str| Origin::Pod {
        node: n.into(),
        uid: format!("uid-worker-{n}"),
    };
    let host = |n: &str| Origin::Host { node: n.into() };
    assert_eq!(
        of(0),
        [
            (pod("n1"), "10.0.0.1:7379".to_string()),
            (pod("n1"), "10.0.0.2:7379".to_string()),
        ]
    );
    assert_eq!(
        of(1),
        [
            (Origin::Workstation, "10.0.0.1:7379".to_string()),
            (Origin::Workstation, "10.0.0.2:7379".to_string()),
        ]
    );
    assert_eq!(
        of(2),
        [
            (host("n1"), "10.0.0.1:7379".to_string()),
            (host("n2"), "10.0.0.2:7379".to_string()),
        ]
    );
    assert_eq!(
        of(3),
        [
            (host("n2"), "10.0.0.1:7379".to_string()),
            (host("n3"), "10.0.0.1:7379".to_string()),
            (host("n1"), "10.0.0.2:7379".to_string()),
            (host("n3"), "10.0.0.2:7379".to_string()),
        ]
    );
    assert!(of(4).is_empty(), "UDP is not probed: {:?}", of(4));
}

#[test]
fn the_node_script_tells_open_from_refused_for_real() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let probe = |cell, to: SocketAddr| Probe {
        cell,
        origin: Origin::Host { node: "n1".into() },
        to_node: "n1".into(),
        to,
    };
    let a = probe(0, open.local_addr().unwrap());
    let b = probe(1, SocketAddr::from(([127, 0, 0, 1], closed_port)));
    let script = node_script(&[(7, &a), (9, &b)]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let seen = parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        seen,
        BTreeMap::from([(7, Seen::Open), (9, Seen::Refused)]),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pod_whose_cgroup_is_not_found_is_not_probed_as_a_host_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = Probe {
        cell: 0,
        origin: Origin::Pod {
            node: "n1".into(),
            uid: "no-such-pod-0000".into(),
        },
        to_node: "n1".into(),
        to: listener.local_addr().unwrap(),
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(node_script(&[(0, &p)]))
        .output()
        .unwrap();
    let seen = parse(&String::from_utf8_lossy(&out.stdout));
    assert!(matches!(seen.get(&0), Some(Seen::NotMade(_))), "{seen:?}");
}

#[test]
fn timeouts_and_other_failures_are_read_as_denied() {
    let seen = parse("1 0\n2 124\n3 1\nnoise\n4 nocgroup\n");
    assert_eq!(seen[&1], Seen::Open);
    assert_eq!(seen[&2], Seen::TimedOut);
    assert_eq!(seen[&3], Seen::Refused);
    assert!(matches!(seen[&4], Seen::NotMade(_)));
    assert!(seen[&2].denied() && seen[&3].denied() && !seen[&1].denied());
}

#[tokio::test]
async fn the_workstation_connects_directly() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let p = |to| Probe {
        cell: 0,
        origin: Origin::Workstation,
        to_node: "n1".into(),
        to,
    };
    let (a, b) = (p(open.local_addr().unwrap()), p(closed_addr));
    let seen = from_workstation(&[(0, &a), (1, &b)]).await;
    assert_eq!(seen, BTreeMap::from([(0, Seen::Open), (1, Seen::Refused)]));
}

fn checked(seen: &[Seen], audit: bool) -> Checked {
    let cells = vec![
        cell(
            Source::Workload("worker".into()),
            "store",
            7379,
            "TCP",
            Verdict::Allow,
        ),
        cell(Source::Outside, "store", 7379, "TCP", Verdict::Deny),
        cell(
            Source::Workload("worker".into()),
            "store",
            53,
            "UDP",
            Verdict::Allow,
        ),
    ];
    let observations = seen
        .iter()
        .enumerate()
        .map(|(i, s)| Observation {
            probe: Probe {
                cell: i,
                origin: if i == 0 {
                    Origin::Pod {
                        node: "n1".into(),
                        uid: "u".into(),
                    }
                } else {
                    Origin::Workstation
                },
                to_node: "n2".into(),
                to: "10.0.0.2:7379".parse().unwrap(),
            },
            seen: s.clone(),
        })
        .collect();
    Checked {
        cells,
        observations,
        audit,
    }
}

#[test]
fn the_gate_passes_when_every_connection_does_what_the_policies_say() {
    let c = checked(&[Seen::Open, Seen::TimedOut], false);
    assert_eq!(c.verdict(), Ok(()));
    assert_eq!(c.counts(), (2, 1));
    insta::assert_snapshot!(c.render(), @r"
    from \ to  store:7379/TCP  store:53/UDP
    worker     allow           -
    outside    deny
    ");
}

#[test]
fn an_expected_deny_that_connects_fails_the_gate_naming_the_flow() {
    let c = checked(&[Seen::Open, Seen::Open], false);
    let err = c.verdict().unwrap_err();
    assert!(
        err.contains(
            "outside -> store 10.0.0.2:7379/TCP on n2: the policies deny it, it connected"
        ),
        "{err}"
    );
    assert!(c.render().contains("DIFFERS (want deny)"), "{}", c.render());
}

#[test]
fn an_expected_allow_that_is_dropped_fails_the_gate() {
    let c = checked(&[Seen::TimedOut, Seen::Refused], false);
    let err = c.verdict().unwrap_err();
    assert!(
        err.contains("worker on n1 -> store 10.0.0.2:7379/TCP on n2: the policies allow it, it got no answer within 2 s"),
        "{err}"
    );
}

#[test]
fn a_probe_that_could_not_be_made_fails_the_gate() {
    let c = checked(
        &[
            Seen::NotMade("its pod's cgroup was not found".into()),
            Seen::Refused,
        ],
        false,
    );
    let err = c.verdict().unwrap_err();
    assert!(err.contains("the probe could not be made"), "{err}");
}

#[test]
fn audit_mode_shows_an_open_expected_deny_without_failing() {
    let c = checked(&[Seen::Open, Seen::Open], true);
    assert_eq!(c.verdict(), Ok(()));
    assert!(c.render().contains("would deny"), "{}", c.render());
}

#[test]
fn a_matrix_without_any_deny_seen_denied_fails_in_enforce_mode() {
    // Only the expected allow probed: nothing shows the enforcer drops anything.
    let c = checked(&[Seen::Open], false);
    let err = c.verdict().unwrap_err();
    assert!(
        err.contains("no connection the NetworkPolicies deny"),
        "{err}"
    );
    // In audit mode nothing is dropped by design.
    assert_eq!(checked(&[Seen::Open], true).verdict(), Ok(()));
}
