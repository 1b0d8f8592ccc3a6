//! The enforcer phase's pure parts and its SSH state reader, against the scripted fake host:
//! what is rendered (snapshots), what the gate decides from a node's state, what a failure says.

use super::*;
use crate::app::{NodeFact, Values, generated::Generated};
use crate::host::fake::{FakeRemote, Reply};

fn facts(servers: usize, agents: usize) -> ClusterFacts {
    let mut nodes = Vec::new();
    for i in 1..=servers {
        nodes.push(NodeFact {
            name: format!("srv{i}"),
            address: format!("10.0.0.{}", 10 + i).parse().unwrap(),
            server: true,
        });
    }
    for i in 1..=agents {
        nodes.push(NodeFact {
            name: format!("agt{i}"),
            address: format!("10.0.0.{}", 20 + i).parse().unwrap(),
            server: false,
        });
    }
    ClusterFacts::new(nodes, "10.43.0.0/16".parse().unwrap())
}

fn values() -> Values {
    Values::new()
        .set("hostname", "appliance.example.internal")
        .set("gatewayPort", 8443)
        .set("apiPort", 8081)
        .set("storePort", 7379)
        .set("apiReplicas", 2)
        .set("adminEmail", "admin@example.internal")
}

fn settings(mode: EnforcerMode) -> Settings {
    Settings::new(mode, [2222, 22, 2222], &facts(3, 0)).unwrap()
}

fn daemonset(m: &Manifests) -> &serde_json::Value {
    &m.items
        .iter()
        .find(|i| i.kind() == "DaemonSet")
        .expect("a DaemonSet")
        .object
}

fn env(m: &Manifests) -> BTreeMap<String, String> {
    daemonset(m)["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect()
}

#[test]
fn the_enforcer_renders_with_the_mode_the_taint_and_every_port_that_must_stay_open() {
    let m = render(&settings(EnforcerMode::Enforce)).unwrap();
    insta::assert_snapshot!(m.to_yaml());
    let env = env(&m);
    assert_eq!(env["ENFORCER_MODE"], "enforce");
    assert_eq!(env["ENFORCER_REMOVE_TAINT"], TAINT);
    assert_eq!(env["ENFORCER_SSH_PORT"], "22");
    assert_eq!(
        env["ENFORCER_STATE_ADDR"],
        format!("127.0.0.1:{STATE_PORT}")
    );
    // The other SSH port and CoreDNS's ports (from its rendered manifests) are always open.
    let tcp: Vec<&str> = env["ENFORCER_EXTRA_TCP_PORTS"].split(',').collect();
    assert!(tcp.contains(&"2222"), "{tcp:?}");
    let dns = app::dns::ClusterServices::embedded()
        .unwrap()
        .dns
        .port
        .to_string();
    assert!(tcp.contains(&dns.as_str()), "{tcp:?}");
    assert!(
        env["ENFORCER_EXTRA_UDP_PORTS"].split(',').any(|p| p == dns),
        "{env:?}"
    );
    let image = daemonset(&m)["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image, IMAGE);
    // It may patch nodes (its own taint) and nothing else is written.
    let role = &m
        .items
        .iter()
        .find(|i| i.kind() == "ClusterRole")
        .unwrap()
        .object;
    let writes: Vec<&serde_json::Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verbs"] != serde_json::json!(["get", "list", "watch"]))
        .collect();
    assert_eq!(
        writes,
        [&serde_json::json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]})]
    );
}

#[test]
fn audit_mode_is_rendered_into_the_daemonset() {
    let m = render(&settings(EnforcerMode::Audit)).unwrap();
    assert_eq!(env(&m)["ENFORCER_MODE"], "audit");
    let enforce = render(&settings(EnforcerMode::Enforce)).unwrap();
    assert_ne!(m.to_yaml(), enforce.to_yaml());
}

#[test]
fn the_enforcer_image_is_carried_by_the_built_in_lock_for_every_arch() {
    let lock = app::builtin_lock().unwrap();
    for arch in ["amd64", "arm64"] {
        let carried = lock.artifacts.iter().any(|e| {
            e.kind == crate::assets::ArtifactKind::AppImages
                && e.arch.map(|a| a.as_str()) == Some(arch)
                && e.images.iter().any(|i| i.reference == IMAGE)
        });
        assert!(carried, "no {arch} archive carries {IMAGE}");
    }
}

#[test]
fn the_appliances_policies_render_as_network_policies_in_its_namespace() {
    let app = App::load(Bundle::embedded(), values(), facts(3, 0)).unwrap();
    let m = render_policies(&app).unwrap();
    insta::assert_snapshot!(m.to_yaml());
    assert_eq!(m.items.len(), 6);
    assert!(m.items.iter().all(|i| i.kind() == "NetworkPolicy"));
    // Not among the application's manifests: applied once, by this phase.
    let manifests = app
        .render(&Generated::placeholder(app.spec(), "1"))
        .unwrap();
    assert!(manifests.items.iter().all(|i| i.kind() != "NetworkPolicy"));
}

#[test]
fn a_policies_file_holding_another_kind_is_refused_naming_it() {
    let app = App::load(Bundle::embedded(), values(), facts(3, 0)).unwrap();
    let bundle = Bundle::embedded().with_file(
        "policies/99-extra.yaml.tera",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: {{ app.namespace }}\n",
    );
    let e = render_policies_bundle(&bundle, &app)
        .unwrap_err()
        .to_string();
    assert!(e.contains("99-extra.yaml.tera"), "{e}");
    assert!(e.contains("ConfigMap"), "{e}");
}

/// No application pod may run on a node before its enforcer applied its rules: nothing of the
/// application tolerates the installer's taint (neither by key nor by a bare `Exists`).
#[test]
fn no_application_workload_tolerates_the_installers_taint() {
    let app = App::load(Bundle::embedded(), values(), facts(3, 2)).unwrap();
    let manifests = app
        .render(&Generated::placeholder(app.spec(), "1"))
        .unwrap();
    let mut pods = 0;
    for m in &manifests.items {
        let Some(spec) = app::validate::pod_spec_of(&m.object) else {
            continue;
        };
        pods += 1;
        for t in spec["tolerations"].as_array().into_iter().flatten() {
            let key = t["key"].as_str();
            assert!(
                key != Some(TAINT) && !(key.is_none() && t["operator"] == "Exists"),
                "{} tolerates {TAINT}: {t}",
                m.describe()
            );
        }
    }
    assert!(pods >= 3, "{pods} workloads");
    // The enforcer itself does, or it could never lift it.
    let e = render(&settings(EnforcerMode::Enforce)).unwrap();
    assert_eq!(
        daemonset(&e)["spec"]["template"]["spec"]["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
}

const STATE: &str = r#"{"node": "srv1", "mode": "enforce", "ready": true, "synced": true, "adopted": false,
 "stats": {"rules": 42, "pods": 9, "local_pods": 4, "unresolved_pods": 0, "policies": 6},
 "last_apply_unix": 1796200000, "last_apply_ms": 18.4, "applies": 3, "apply_errors": 0,
 "last_error": null, "drift_repairs": 0, "dropped_packets": 12, "would_drop_packets": 0,
 "warnings": [], "taint": "installer/enforcer-not-ready", "taint_removed": true,
 "taint_error": null, "a_newer_field": 1}"#;

fn state() -> EnforcerState {
    serde_json::from_str(STATE).unwrap()
}

#[tokio::test]
async fn the_state_is_read_on_the_nodes_loopback_and_parsed() {
    let remote = FakeRemote::new("srv1").expect_contains("127.0.0.1:9648/state", Reply::ok(STATE));
    let s = read_state(&remote, STATE_PORT).await.unwrap();
    remote.assert_done();
    assert_eq!(s.stats.rules, 42);
    assert_eq!(s.dropped_packets, 12);
    assert!(s.taint_removed);
    assert_eq!(
        s.summary(1796200012),
        "enforce, 42 rules, 9 pods, 6 policies, applied 12 s ago, 12 dropped"
    );
}

#[tokio::test]
async fn nothing_listening_and_garbage_are_errors_that_say_so() {
    let remote = FakeRemote::new("srv1").on_contains(
        "/state",
        Reply::exit(7, "", "curl: (7) Failed to connect to 127.0.0.1 port 9648"),
    );
    let e = read_state(&remote, STATE_PORT).await.unwrap_err();
    assert!(e.contains("nothing answers on 127.0.0.1:9648"), "{e}");
    assert!(e.contains("Failed to connect"), "{e}");
    let remote = FakeRemote::new("srv1").on_contains("/state", Reply::ok("<html>hello</html>"));
    let e = read_state(&remote, STATE_PORT).await.unwrap_err();
    assert!(e.contains("is not the enforcer's state"), "{e}");
}

#[test]
fn a_node_is_protected_only_with_rules_applied_the_right_mode_and_the_taint_gone() {
    let ok = Ok(state());
    assert!(matches!(
        judge(&ok, false, EnforcerMode::Enforce),
        NodeVerdict::Protected(_)
    ));
    // The Node still shows the taint (the enforcer's patch not seen yet).
    let NodeVerdict::Waiting(why) = judge(&ok, true, EnforcerMode::Enforce) else {
        panic!("protected while tainted")
    };
    assert!(why.contains(TAINT), "{why}");
    // Another mode than asked: the old pod still runs.
    let NodeVerdict::Waiting(why) = judge(&ok, false, EnforcerMode::Audit) else {
        panic!("protected in the wrong mode")
    };
    assert!(why.contains("`enforce` mode"), "{why}");
    // Not applied yet, with the enforcer's own error.
    let mut s = state();
    s.ready = false;
    s.last_apply_unix = None;
    s.last_error = Some("nft: Error: Could not process rule".into());
    let NodeVerdict::Waiting(why) = judge(&Ok(s), false, EnforcerMode::Enforce) else {
        panic!("protected without rules")
    };
    assert!(why.contains("Could not process rule"), "{why}");
    // The taint could not be removed (RBAC).
    let mut s = state();
    s.taint_removed = false;
    s.taint_error = Some("403 Forbidden".into());
    let NodeVerdict::Waiting(why) = judge(&Ok(s), false, EnforcerMode::Enforce) else {
        panic!("protected with the taint")
    };
    assert!(why.contains("403 Forbidden"), "{why}");
    // Nothing answered.
    let NodeVerdict::Waiting(why) = judge(&Err("refused".into()), false, EnforcerMode::Enforce)
    else {
        panic!("protected without state")
    };
    assert_eq!(why, "no state: refused");
}

#[test]
fn a_failure_names_each_node_its_pod_and_its_last_log_lines() {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "installer-enforcer-x7k2p"},
        "spec": {"nodeName": "srv2", "containers": []},
        "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "enforcer", "image": IMAGE, "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}
    }))
    .unwrap();
    let states = pod_states(&[pod]);
    let (name, st) = &states["srv2"];
    assert_eq!(name, "installer-enforcer-x7k2p");
    assert_eq!(
        st,
        "Running, not ready, 3 restarts, CrashLoopBackOff (back-off 40s), last exit 1 (Error)"
    );
    let text = describe_failure(
        &[
            Unprotected {
                node: "srv2".into(),
                why: "no state: nothing answers on 127.0.0.1:9648".into(),
                pod: format!("{name}: {st}"),
                log_tail: vec!["ERROR enforcer stopped error=nft: not found".into()],
            },
            Unprotected {
                node: "agt1".into(),
                why: "no state: refused".into(),
                pod: "none on this node".into(),
                log_tail: vec![],
            },
        ],
        Duration::from_secs(300),
    );
    insta::assert_snapshot!(text);
    assert!(text.contains("srv2: no state"), "{text}");
    assert!(text.contains("    ERROR enforcer stopped"), "{text}");
    assert!(text.contains("agt1: no state: refused; pod none on this node; no log lines"));
}
