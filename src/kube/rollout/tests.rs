//! The rollout gate's judgement and its diagnoses, over constructed k8s-openapi objects.
//! The messages are snapshots: they are what an operator reads when an install stops.

use super::*;
use serde_json::{Value, json};

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn at(secs_ago: i64) -> String {
    let t = now().as_second() - secs_ago;
    Timestamp::from_second(t).unwrap().to_string()
}

fn id(kind: WorkloadKind, name: &str) -> WorkloadId {
    WorkloadId {
        kind,
        namespace: "appliance".into(),
        name: name.into(),
    }
}

fn pod(
    name: &str,
    node: Option<&str>,
    ready: bool,
    container_statuses: Value,
    extra_conditions: Value,
) -> Pod {
    let mut conditions =
        vec![json!({"type": "Ready", "status": if ready { "True" } else { "False" }})];
    if let Some(extra) = extra_conditions.as_array() {
        conditions.extend(extra.iter().cloned());
    }
    let mut spec =
        json!({"containers": [{"name": "c", "image": "docker.io/library/nginx:1.28.0-alpine"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "appliance", "labels": {"app.kubernetes.io/name": "gateway"}},
        "spec": spec,
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" }, "conditions": conditions, "containerStatuses": container_statuses}
    }))
    .unwrap()
}

fn running(name: &str, ready: bool, restarts: i32) -> Value {
    json!([{"name": name, "image": "docker.io/library/nginx:1.28.0-alpine", "imageID": "", "ready": ready,
        "restartCount": restarts, "state": {"running": {"startedAt": at(300)}}}])
}

fn waiting(name: &str, reason: &str, message: &str) -> Value {
    json!([{"name": name, "image": "docker.io/library/nginx:1.28.0-alpine", "imageID": "", "ready": false,
        "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}])
}

fn event(
    kind: &str,
    name: &str,
    type_: &str,
    reason: &str,
    message: &str,
    secs_ago: i64,
    count: i32,
) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}.{reason}"), "namespace": "appliance"},
        "involvedObject": {"kind": kind, "name": name, "namespace": "appliance"},
        "type": type_, "reason": reason, "message": message, "count": count,
        "lastTimestamp": at(secs_ago)
    }))
    .unwrap()
}

fn node(name: &str, labels: Value, taints: Value) -> Node {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
    )
    .unwrap()
}

fn ds_state(desired: i32, ready: i32, expected: &[&str]) -> RolloutState {
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "gateway", "namespace": "appliance", "generation": 2},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}, "template": {"spec": {"containers": []}}},
        "status": {"observedGeneration": 2, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
            "updatedNumberScheduled": desired, "numberReady": ready, "numberAvailable": ready, "numberMisscheduled": 0}
    }))
    .unwrap();
    RolloutState::of_daemonset(
        id(WorkloadKind::DaemonSet, "gateway"),
        &ds,
        Some(expected.iter().map(|s| s.to_string()).collect()),
    )
}

fn deploy_state(
    replicas: i32,
    ready: i32,
    updated: i32,
    generation: i64,
    observed: i64,
) -> RolloutState {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "appliance", "generation": generation},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/name": "api"}}, "template": {"spec": {"containers": []}}},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready}
    }))
    .unwrap();
    RolloutState::of_deployment(id(WorkloadKind::Deployment, "api"), &d)
}

fn sts_state(replicas: i32, ready: i32, current: &str, update: &str) -> RolloutState {
    let s: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "store", "namespace": "appliance", "generation": 1},
        "spec": {"replicas": replicas, "serviceName": "store-members", "selector": {"matchLabels": {"app.kubernetes.io/name": "store"}}, "template": {"spec": {"containers": []}}},
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
            "currentRevision": current, "updateRevision": update}
    }))
    .unwrap();
    RolloutState::of_statefulset(id(WorkloadKind::StatefulSet, "store"), &s)
}

const WAITED: Duration = Duration::from_secs(300);

#[test]
fn rollouts_are_done_only_when_every_replica_runs_the_latest_spec_and_is_ready() {
    assert!(deploy_state(2, 2, 2, 3, 3).is_done());
    assert!(
        !deploy_state(2, 2, 2, 4, 3).is_done(),
        "controller has not seen the new spec"
    );
    assert!(
        !deploy_state(2, 2, 1, 3, 3).is_done(),
        "one replica runs the old spec"
    );
    assert!(!deploy_state(2, 1, 2, 3, 3).is_done());
    assert_eq!(
        deploy_state(2, 1, 2, 4, 3).summary(),
        "1 of 2 ready (updated 2, available 1, controller has not seen generation 4 yet)"
    );
    assert!(ds_state(3, 3, &["agt1", "srv1", "srv2"]).is_done());
    assert!(!ds_state(3, 2, &["agt1", "srv1", "srv2"]).is_done());
    let short = ds_state(2, 2, &["agt1", "srv1", "srv2"]);
    assert!(!short.is_done(), "a node that should run it has none");
    assert_eq!(
        short.summary(),
        "2 of 2 ready (updated 2, available 2, expected on 3 nodes)"
    );
    assert!(sts_state(3, 3, "store-1", "store-1").is_done());
    assert!(!sts_state(3, 3, "store-1", "store-2").is_done());
    assert!(!sts_state(3, 2, "store-1", "store-1").is_done());
    assert!(!RolloutState::empty(id(WorkloadKind::Deployment, "x")).is_done());
}

#[test]
fn daemonset_nodes_follow_node_selector_and_taints() {
    let nodes = vec![
        node(
            "srv1",
            json!({"node-role.kubernetes.io/control-plane": "true", "kubernetes.io/os": "linux"}),
            json!([]),
        ),
        node(
            "agt1",
            json!({"kubernetes.io/os": "linux"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        ),
        node(
            "agt2",
            json!({"kubernetes.io/os": "linux"}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]),
        ),
    ];
    let plain = PodSpec::default();
    assert_eq!(
        eligible_nodes(Some(&plain), &nodes),
        vec!["agt2", "srv1"],
        "not-ready is tolerated by every DaemonSet"
    );
    let all: PodSpec =
        serde_json::from_value(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}))
            .unwrap();
    assert_eq!(
        eligible_nodes(Some(&all), &nodes),
        vec!["agt1", "agt2", "srv1"]
    );
    let keyed: PodSpec = serde_json::from_value(json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]})).unwrap();
    assert_eq!(
        eligible_nodes(Some(&keyed), &nodes),
        vec!["agt1", "agt2", "srv1"]
    );
    let servers: PodSpec = serde_json::from_value(json!({"containers": [], "nodeSelector": {"node-role.kubernetes.io/control-plane": "true"}})).unwrap();
    assert_eq!(eligible_nodes(Some(&servers), &nodes), vec!["srv1"]);
}

#[test]
fn a_missing_image_archive_names_the_image_the_node_and_the_archive_directory() {
    let state = ds_state(3, 2, &["srv1", "srv2", "srv3"]);
    let pods = vec![
        pod(
            "gateway-4xk2p",
            Some("srv1"),
            true,
            running("nginx", true, 0),
            json!([]),
        ),
        pod(
            "gateway-9fz7q",
            Some("srv2"),
            false,
            waiting(
                "nginx",
                "ErrImageNeverPull",
                "Container image \"docker.io/library/nginx:1.28.0-alpine\" is not present with pull policy of Never",
            ),
            json!([]),
        ),
        pod(
            "gateway-h2m8c",
            Some("srv3"),
            true,
            running("nginx", true, 0),
            json!([]),
        ),
    ];
    let events = vec![
        event(
            "DaemonSet",
            "gateway",
            "Normal",
            "SuccessfulCreate",
            "Created pod: gateway-9fz7q",
            290,
            1,
        ),
        event(
            "Pod",
            "gateway-9fz7q",
            "Normal",
            "Scheduled",
            "Successfully assigned appliance/gateway-9fz7q to srv2",
            290,
            1,
        ),
        event(
            "Pod",
            "gateway-9fz7q",
            "Warning",
            "ErrImageNeverPull",
            "Container image \"docker.io/library/nginx:1.28.0-alpine\" is not present with pull policy of Never",
            5,
            31,
        ),
        event("Pod", "api-7d9c-xx", "Normal", "Pulled", "unrelated", 4, 1),
    ];
    let e = diagnose(&state, &pods, &events, now(), WAITED);
    assert_eq!(e.findings.len(), 1);
    assert_eq!(e.findings[0].node.as_deref(), Some("srv2"));
    insta::assert_snapshot!("image_missing", e.to_string());
}

#[test]
fn image_pull_backoff_on_an_airgapped_node_is_an_image_problem_too() {
    let state = deploy_state(2, 1, 2, 1, 1);
    let pods = vec![pod(
        "api-5c6f8d7b9-k2j4l",
        Some("agt1"),
        false,
        waiting(
            "api",
            "ImagePullBackOff",
            "Back-off pulling image \"docker.io/traefik/whoami:v1.11.0\"",
        ),
        json!([]),
    )];
    let e = diagnose(&state, &pods, &[], now(), WAITED);
    match &e.findings[0].problem {
        PodProblem::ImageMissing { reason, image, .. } => {
            assert_eq!(reason, "ImagePullBackOff");
            assert_eq!(
                image, "docker.io/library/nginx:1.28.0-alpine",
                "the status's image wins"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.what_to_do.contains("is not on agt1"), "{}", e.what_to_do);
}

#[test]
fn a_port_clash_shows_the_schedulers_message() {
    let state = deploy_state(2, 1, 2, 1, 1);
    let msg = "0/3 nodes are available: 1 node(s) didn't match pod anti-affinity rules, 2 node(s) didn't have free ports for the requested pod ports. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    let pods = vec![
        pod(
            "api-5c6f8d7b9-k2j4l",
            Some("srv1"),
            true,
            running("api", true, 0),
            json!([]),
        ),
        pod(
            "api-5c6f8d7b9-zz9x1",
            None,
            false,
            json!([]),
            json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]),
        ),
    ];
    let events = vec![event(
        "Pod",
        "api-5c6f8d7b9-zz9x1",
        "Warning",
        "FailedScheduling",
        msg,
        20,
        12,
    )];
    let e = diagnose(&state, &pods, &events, now(), WAITED);
    insta::assert_snapshot!("port_clash", e.to_string());
}

#[test]
fn a_crash_loop_shows_the_exit_and_the_log_command() {
    let state = sts_state(3, 2, "store-6b7c", "store-6b7c");
    let crashing: Value = json!([{"name": "etcd", "image": "registry.k8s.io/etcd:3.6.6-0", "imageID": "", "ready": false, "restartCount": 7,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container=etcd pod=store-1_appliance"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": at(70), "finishedAt": at(69)}}}]);
    let pods = vec![
        pod(
            "store-0",
            Some("srv1"),
            true,
            running("etcd", true, 0),
            json!([]),
        ),
        pod("store-1", Some("srv2"), false, crashing, json!([])),
        pod(
            "store-2",
            Some("srv3"),
            true,
            running("etcd", true, 0),
            json!([]),
        ),
    ];
    let events = vec![
        event(
            "Pod",
            "store-1",
            "Warning",
            "BackOff",
            "Back-off restarting failed container etcd in pod store-1_appliance",
            30,
            25,
        ),
        event(
            "StatefulSet",
            "store",
            "Normal",
            "SuccessfulCreate",
            "create Pod store-1 in StatefulSet store successful",
            600,
            1,
        ),
    ];
    let e = diagnose(&state, &pods, &events, now(), WAITED);
    insta::assert_snapshot!("crash_loop", e.to_string());
}

#[test]
fn a_failing_readiness_probe_quotes_the_probe() {
    let state = ds_state(3, 0, &["srv1", "srv2", "srv3"]);
    let pods: Vec<Pod> = ["srv1", "srv2", "srv3"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            pod(
                &format!("gateway-p{i}"),
                Some(n),
                false,
                running("nginx", false, 0),
                json!([]),
            )
        })
        .collect();
    let events: Vec<Event> = (0..3)
        .map(|i| event("Pod", &format!("gateway-p{i}"), "Warning", "Unhealthy", "Readiness probe failed: Get \"https://10.0.0.11:8443/healthz\": dial tcp 10.0.0.11:8443: connect: connection refused", 3 + i, 40))
        .collect();
    let e = diagnose(&state, &pods, &events, now(), WAITED);
    assert_eq!(e.findings.len(), 3);
    insta::assert_snapshot!("readiness_failing", e.to_string());
}

#[test]
fn a_missing_secret_and_a_node_without_a_pod_are_explained() {
    let state = ds_state(2, 0, &["agt1", "srv1", "srv2"]);
    let pods = vec![
        pod(
            "gateway-a",
            Some("srv1"),
            false,
            waiting(
                "nginx",
                "CreateContainerConfigError",
                "secret \"app-secrets\" not found",
            ),
            json!([]),
        ),
        pod(
            "gateway-b",
            Some("srv2"),
            false,
            waiting("nginx", "ContainerCreating", ""),
            json!([]),
        ),
    ];
    let events = vec![event(
        "Pod",
        "gateway-b",
        "Warning",
        "FailedMount",
        "MountVolume.SetUp failed for volume \"tls\" : secret \"gateway-tls\" not found",
        10,
        6,
    )];
    let e = diagnose(&state, &pods, &events, now(), WAITED);
    assert_eq!(e.nodes_without_pod, vec!["agt1"]);
    insta::assert_snapshot!("missing_secret_and_node", e.to_string());
}

#[test]
fn a_workload_without_pods_says_so() {
    let e = diagnose(
        &RolloutState::empty(id(WorkloadKind::Deployment, "api")),
        &[],
        &[],
        now(),
        WAITED,
    );
    assert_eq!(
        e.to_string(),
        "Deployment appliance/api is not ready after 5m: does not exist\n  what to do: the Deployment was not created; run the install again"
    );
    let state = ds_state(1, 0, &["srv1", "srv2"]);
    let e = diagnose(&state, &[], &[], now(), WAITED);
    assert!(e.to_string().contains("no pod on nodes srv1, srv2"), "{e}");
    assert!(
        e.what_to_do.starts_with("no pod was created on srv1, srv2"),
        "{}",
        e.what_to_do
    );
}

#[test]
fn only_the_last_events_are_shown_oldest_first() {
    let state = deploy_state(1, 0, 1, 1, 1);
    let events: Vec<Event> = (0..20)
        .map(|i| {
            event(
                "Pod",
                &format!("api-x{i}"),
                "Normal",
                "Scheduled",
                &format!("event {i}"),
                100 - i,
                1,
            )
        })
        .collect();
    let e = diagnose(&state, &[], &events, now(), WAITED);
    assert_eq!(e.events.len(), EVENTS_SHOWN);
    assert!(e.events[0].contains("event 12"), "{:?}", e.events);
    assert!(
        e.events[7].starts_with("81s ago Normal Scheduled pod/api-x19: event 19"),
        "{:?}",
        e.events
    );
}

#[test]
fn status_counts_restarts_and_lists_problems() {
    let state = sts_state(3, 2, "a", "a");
    let pods = vec![
        pod(
            "store-0",
            Some("srv1"),
            true,
            running("etcd", true, 2),
            json!([]),
        ),
        pod(
            "store-1",
            Some("srv2"),
            false,
            running("etcd", false, 5),
            json!([]),
        ),
    ];
    let s = workload_status(&state, &pods, &[]);
    assert_eq!(
        (s.ready, s.desired, s.restarts, s.rolled_out),
        (2, 3, 7, false)
    );
    assert_eq!(
        s.problems,
        vec![
            "pod store-1 on node srv2: container etcd running but not ready: its readiness probe has not succeeded yet"
        ]
    );
}

#[test]
fn the_gate_futures_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    // Never polled: only their types matter.
    let make = |c: &'static Cluster| {
        let reporter = Reporter::silent();
        let f = async move { gate(c, &[], Duration::ZERO, Duration::ZERO, &reporter).await };
        assert_send(&f);
        let g = async move { status(c, &[]).await };
        assert_send(&g);
    };
    let _ = make;
}

#[test]
fn a_port_held_by_another_process_is_named_from_the_termination_message() {
    let state = ds_state(3, 2, &["srv1", "srv2", "srv3"]);
    // terminationMessagePolicy: FallbackToLogsOnError puts the log's tail here.
    let crashing: Value = json!([{"name": "nginx", "image": "docker.io/library/nginx:1.28.0-alpine", "imageID": "", "ready": false, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=nginx pod=gateway-x_appliance"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "2026/06/01 11:59:00 [emerg] 1#1: bind() to 0.0.0.0:8443 failed (98: Address already in use)\nnginx: [emerg] bind() to 0.0.0.0:8443 failed (98: Address already in use)\n",
            "startedAt": at(70), "finishedAt": at(69)}}}]);
    let pods = vec![
        pod(
            "gateway-a",
            Some("srv1"),
            true,
            running("nginx", true, 0),
            json!([]),
        ),
        pod("gateway-x", Some("srv2"), false, crashing, json!([])),
        pod(
            "gateway-c",
            Some("srv3"),
            true,
            running("nginx", true, 0),
            json!([]),
        ),
    ];
    let e = diagnose(&state, &pods, &[], now(), WAITED);
    insta::assert_snapshot!("port_held_by_a_process", e.to_string());
}

fn pod_json(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

#[test]
fn hopeless_pods_are_those_waiting_cannot_fix() {
    let waiting = |reason: &str| {
        pod_json(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": reason}}}]}
        }))
    };
    assert!(hopeless(&waiting("ErrImageNeverPull")));
    assert!(hopeless(&waiting("InvalidImageName")));
    // Airgapped: an image that is not on the node will not come from a registry.
    assert!(hopeless(&waiting("ImagePullBackOff")));
    assert!(hopeless(&waiting("ErrImagePull")));
    // A crash loop may end when a dependency starts: waited for until the timeout.
    assert!(!hopeless(&waiting("CrashLoopBackOff")));
    assert!(!hopeless(&waiting("ContainerCreating")));
    let unschedulable = pod_json(serde_json::json!({
        "metadata": {"name": "p"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 node(s) didn't have free ports for the requested pod ports."}]}
    }));
    assert!(hopeless(&unschedulable));
    assert!(!hopeless(&pod_json(
        serde_json::json!({"metadata": {"name": "p"}})
    )));
}
