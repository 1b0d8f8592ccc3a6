//! Workloads on a single stand-in node: image presence from archives, probes answered by real
//! listeners, scheduling failures with the scheduler's messages, controller status and rolling
//! updates, and state that survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod standin_util;

use std::time::Duration;

use installer_tests::images::{ArchiveOptions, write_archive};
use installer_tests::standin::testing::LocalNode;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use standin_util::*;

const PAUSE: &str = "docker.io/rancher/mirrored-pause:3.6";
const APP: &str = "registry.example/app/api:1.0";

/// A ready single-node cluster (CNI written) with the given images imported.
async fn ready_node(images: &[&str]) -> (LocalNode, kube::Client) {
    let n = first_server("srv1", "");
    if !images.is_empty() {
        let p = n.path("/var/lib/rancher/k3s/agent/images/payload.tar.zst");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_archive(&p, images, &ArchiveOptions::default()).unwrap();
    }
    n.write(
        "/etc/cni/net.d/10-local.conflist",
        &conflist("10.42.0.0/24"),
    );
    let c = client(&n).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    wait_for("node Ready", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get_opt("srv1").await.ok()??;
            let ready = n
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let taints = n.spec?.taints.unwrap_or_default();
            (ready
                && !taints
                    .iter()
                    .any(|t| t.key.starts_with("node.kubernetes.io/")))
            .then_some(())
        }
    })
    .await;
    (n, c)
}

fn host_pod(name: &str, image: &str, policy: &str, port: u16) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": image, "imagePullPolicy": policy, "ports": [{"containerPort": port}]}]},
    }))
    .unwrap()
}

async fn waiting_reason(pods: &Api<Pod>, name: &str) -> Option<String> {
    let p = pods.get(name).await.ok()?;
    let cs = p.status?.container_statuses?;
    cs[0].state.as_ref()?.waiting.as_ref()?.reason.clone()
}

async fn events_for(c: &kube::Client, name: &str) -> Vec<Event> {
    let ev: Api<Event> = Api::namespaced(c.clone(), "default");
    ev.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_with_never_pull_reports_err_image_never_pull() {
    let (_n, c) = ready_node(&[PAUSE]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &host_pod("nopull", APP, "Never", 18001),
    )
    .await
    .unwrap();
    let reason = wait_for("ErrImageNeverPull", Duration::from_secs(15), || {
        let pods = pods.clone();
        async move {
            waiting_reason(&pods, "nopull")
                .await
                .filter(|r| r == "ErrImageNeverPull")
        }
    })
    .await;
    assert_eq!(reason, "ErrImageNeverPull");
    let p = pods.get("nopull").await.unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let msg = st.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert_eq!(
        msg,
        format!("Container image \"{APP}\" is not present with pull policy of Never")
    );
    let evs = events_for(&c, "nopull").await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("ErrImageNeverPull")
                && e.type_.as_deref() == Some("Warning")),
        "{evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_if_not_present_fails_to_pull_and_backs_off() {
    let (_n, c) = ready_node(&[PAUSE]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &host_pod("pull", APP, "IfNotPresent", 18002),
    )
    .await
    .unwrap();
    wait_for("ImagePullBackOff", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            waiting_reason(&pods, "pull")
                .await
                .filter(|r| r == "ImagePullBackOff")
        }
    })
    .await;
    let evs = events_for(&c, "pull").await;
    let failed = evs
        .iter()
        .find(|e| {
            e.reason.as_deref() == Some("Failed")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Failed to pull image"))
        })
        .expect("Failed event");
    assert!(
        failed.message.as_deref().unwrap().contains("no such host"),
        "{failed:?}"
    );
    // :latest defaults to imagePullPolicy Always, which pulls even when the image is present.
    let (_, latest) = (0, pods.create(&PostParams::default(), &serde_json::from_value::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "latest"},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "registry.example/app/api"}]},
    })).unwrap()).await.unwrap());
    assert_eq!(
        latest.spec.unwrap().containers[0]
            .image_pull_policy
            .as_deref(),
        Some("Always")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_pause_image_no_sandbox_starts() {
    let (_n, c) = ready_node(&[APP]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &host_pod("nosandbox", APP, "IfNotPresent", 18003),
    )
    .await
    .unwrap();
    let ev = wait_for("FailedCreatePodSandBox", Duration::from_secs(15), || {
        let c = c.clone();
        async move {
            events_for(&c, "nosandbox")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
        }
    })
    .await;
    assert!(
        ev.message
            .unwrap()
            .contains("failed to get sandbox image \"docker.io/rancher/mirrored-pause:3.6\"")
    );
    assert_eq!(
        pods.get("nosandbox")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );
}

fn deployment(name: &str, replicas: i32, port: u16, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "containers": [{
                        "name": "api", "image": APP, "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": port}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        "livenessProbe": {"httpGet": {"path": "/livez", "port": port + 1, "scheme": "HTTPS"}},
                    }],
                },
            },
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_completes_and_its_probes_answer_on_the_node() {
    let (n, c) = ready_node(&[PAUSE, APP]).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("installer").force();
    deploys
        .patch(
            "api",
            &pp,
            &Patch::Apply(deployment("api", 1, 18080, json!({}))),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            deploys.clone(),
            "api",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("deployment completes")
    .unwrap();
    let d = deploys.get("api").await.unwrap();
    let st = d.status.unwrap();
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(
        (
            st.replicas,
            st.ready_replicas,
            st.available_replicas,
            st.updated_replicas
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    let avail = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(avail.status, "True");
    // The readiness probe path answers over HTTP, the liveness path over HTTPS, others 404.
    let http = installer_tests::standin::client::insecure().unwrap();
    let r = http
        .get(format!("http://{}:18080/healthz", n.ip))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok".to_string())
    );
    let r = http
        .get(format!("https://{}:18081/livez", n.ip))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        http.get(format!("http://{}:18080/other", n.ip))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // The pod reports the node's address as its own (hostNetwork).
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p = pods
        .list(&ListParams::default().labels("app=api"))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some(n.ip.as_str())
    );
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("srv1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_port_clash_leaves_the_second_replica_pending() {
    let (_n, c) = ready_node(&[PAUSE, APP]).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("installer").force();
    deploys
        .patch(
            "web",
            &pp,
            &Patch::Apply(deployment("web", 2, 18090, json!({}))),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let msg = wait_for("an unschedulable replica", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            list.items.iter().find_map(|p| {
                let cond = p
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
                (cond.reason.as_deref() == Some("Unschedulable"))
                    .then(|| cond.message.clone().unwrap_or_default())
            })
        }
    })
    .await;
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. no new claims to deallocate, preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    let d = wait_for("one replica available", Duration::from_secs(20), || {
        let deploys = deploys.clone();
        async move {
            deploys
                .get("web")
                .await
                .ok()
                .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(1))
        }
    })
    .await;
    let avail = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(avail.status, "False");
    assert_eq!(avail.reason.as_deref(), Some("MinimumReplicasUnavailable"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_update_with_a_surge_sticks_on_host_ports_until_max_unavailable_allows_it() {
    let (_n, c) = ready_node(&[PAUSE, APP, "registry.example/app/api:2.0"]).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("installer").force();
    deploys
        .patch(
            "roll",
            &pp,
            &Patch::Apply(deployment("roll", 1, 18100, json!({}))),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            deploys.clone(),
            "roll",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("first rollout")
    .unwrap();
    // New image with the default strategy (maxSurge 25% -> 1, maxUnavailable 25% -> 0): the new
    // pod needs the same host port on the only node, so the rollout cannot progress.
    let mut d2 = deployment("roll", 1, 18100, json!({}));
    d2.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("registry.example/app/api:2.0".into());
    deploys
        .patch("roll", &pp, &Patch::Apply(&d2))
        .await
        .unwrap();
    // The controller has seen the new generation and reports it progressing.
    let d = wait_for("generation 2 observed", Duration::from_secs(15), || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get("roll").await.ok()?;
            let st = d.status.as_ref()?;
            let progressing = st.conditions.as_ref()?.iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ReplicaSetUpdated")
            });
            (st.observed_generation == Some(2) && progressing).then_some(d)
        }
    })
    .await;
    assert_eq!(d.metadata.generation, Some(2));
    let st = d.status.unwrap();
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(st.available_replicas, Some(1), "the old pod keeps serving");
    let prog = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(prog.reason.as_deref(), Some("ReplicaSetUpdated"));
    // maxUnavailable 1, maxSurge 0: the old pod goes first, then the new one starts.
    let d3 = {
        let mut d = deployment(
            "roll",
            1,
            18100,
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
        );
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("registry.example/app/api:2.0".into());
        d
    };
    deploys
        .patch("roll", &pp, &Patch::Apply(&d3))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(40),
        await_condition(
            deploys.clone(),
            "roll",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("second rollout completes")
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let running: Vec<Pod> = pods
        .list(&ListParams::default().labels("app=roll"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(running.len(), 1);
    assert_eq!(
        running[0].spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.example/app/api:2.0")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_and_statefulset_controllers() {
    let (_n, c) = ready_node(&[PAUSE, APP]).await;
    let pp = PatchParams::apply("installer").force();
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
                 "spec": {"hostNetwork": true, "containers": [{"name": "a", "image": APP, "ports": [{"containerPort": 18200}]}]}}},
    }))
    .unwrap();
    dss.patch("agent", &pp, &Patch::Apply(&ds)).await.unwrap();
    wait_for("daemonset ready", Duration::from_secs(20), || {
        let dss = dss.clone();
        async move {
            let s = dss.get("agent").await.ok()?.status?;
            (s.desired_number_scheduled == 1
                && s.number_ready == 1
                && s.updated_number_scheduled == Some(1))
            .then_some(())
        }
    })
    .await;
    let stss: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}},
                 "spec": {"containers": [{"name": "db", "image": APP}]}}},
    }))
    .unwrap();
    stss.patch("db", &pp, &Patch::Apply(&sts)).await.unwrap();
    wait_for("statefulset ready", Duration::from_secs(30), || {
        let stss = stss.clone();
        async move {
            let s = stss.get("db").await.ok()?.status?;
            (s.ready_replicas == Some(2) && s.current_revision == s.update_revision).then_some(())
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        names.contains(&"db-0".to_string()) && names.contains(&"db-1".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_on_a_port_k3s_holds_crash_loops() {
    let (_n, c) = ready_node(&[PAUSE, APP]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    // 10250 is the kubelet's port on every node.
    pods.create(
        &PostParams::default(),
        &host_pod("clash", APP, "IfNotPresent", 10250),
    )
    .await
    .unwrap();
    wait_for("CrashLoopBackOff", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            waiting_reason(&pods, "clash")
                .await
                .filter(|r| r == "CrashLoopBackOff")
        }
    })
    .await;
    let evs = events_for(&c, "clash").await;
    assert!(
        evs.iter().any(|e| e.reason.as_deref() == Some("BackOff")),
        "{evs:?}"
    );
    // Its log (read through the node's kubelet on 10250, as the apiserver does) says why.
    let text = pods.logs("clash", &LogParams::default()).await.unwrap();
    assert!(
        text.contains("simulated container app exited") && text.contains("10250"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn container_logs_are_read_through_the_kubelet_with_the_apiservers_parameters() {
    let (n, c) = ready_node(&[PAUSE, APP]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &host_pod("talker", APP, "IfNotPresent", 18260),
    )
    .await
    .unwrap();
    let uid = wait_for("talker running", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("talker").await.ok()?;
            let running = p.status.as_ref()?.container_statuses.as_ref()?[0]
                .state
                .as_ref()?
                .running
                .is_some();
            running.then(|| p.metadata.uid.clone()).flatten()
        }
    })
    .await;
    let text = pods.logs("talker", &LogParams::default()).await.unwrap();
    assert!(text.contains("listening on 18260/TCP"), "{text}");
    // What the program prints lands in the CRI file; tail and previous as the kubelet answers.
    let f = installer_tests::standin::kubelet::logs::file(
        &installer_tests::standin::paths::Root::under(n.root.path()),
        "default",
        "talker",
        &uid,
        "app",
        0,
    );
    installer_tests::standin::kubelet::logs::append(&f, "stdout", "second\nthird").unwrap();
    let tail = LogParams {
        tail_lines: Some(2),
        ..LogParams::default()
    };
    assert_eq!(pods.logs("talker", &tail).await.unwrap(), "second\nthird\n");
    // follow: what is written later arrives on the open stream.
    let follow = LogParams {
        follow: true,
        tail_lines: Some(1),
        ..LogParams::default()
    };
    let mut lines = pods.log_stream("talker", &follow).await.unwrap().lines();
    use futures::{AsyncBufReadExt, TryStreamExt};
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("third"));
    installer_tests::standin::kubelet::logs::append(&f, "stdout", "fourth").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), lines.try_next())
        .await
        .expect("a followed line within 10 s")
        .unwrap();
    assert_eq!(next.as_deref(), Some("fourth"));
    let prev = LogParams {
        previous: true,
        ..LogParams::default()
    };
    let err = pods.logs("talker", &prev).await.unwrap_err().to_string();
    assert!(
        err.contains("previous terminated container \"app\" in pod \"talker\" not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_containers_survive_a_restart() {
    let (mut n, c) = ready_node(&[PAUSE, APP]).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("installer").force();
    deploys
        .patch(
            "keep",
            &pp,
            &Patch::Apply(deployment("keep", 1, 18300, json!({}))),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            deploys.clone(),
            "keep",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("rollout")
    .unwrap();
    let uid = deploys.get("keep").await.unwrap().metadata.uid;
    n.stop();
    // KillMode=process: the container keeps its port while k3s is down.
    let http = installer_tests::standin::client::insecure().unwrap();
    let r = http
        .get(format!("http://{}:18300/healthz", n.ip))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    n.start();
    n.wait_log(
        "Managed etcd cluster bootstrap already complete and initialized",
        Duration::from_secs(20),
    )
    .unwrap();
    let c2 = client(&n).await;
    let deploys: Api<Deployment> = Api::namespaced(c2.clone(), "default");
    let d = wait_for("deployment after restart", Duration::from_secs(20), || {
        let deploys = deploys.clone();
        async move { deploys.get("keep").await.ok() }
    })
    .await;
    assert_eq!(d.metadata.uid, uid);
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            deploys.clone(),
            "keep",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("still complete after restart")
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c2.clone(), "default");
    let p = pods
        .list(&ListParams::default().labels("app=keep"))
        .await
        .unwrap()
        .items
        .remove(0);
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(
        cs.restart_count, 0,
        "the container was adopted, not restarted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_honours_pod_disruption_budgets() {
    let (n, c) = ready_node(&[PAUSE, APP]).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("installer").force();
    deploys
        .patch(
            "guarded",
            &pp,
            &Patch::Apply(deployment("guarded", 1, 18400, json!({}))),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            deploys.clone(),
            "guarded",
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .expect("rollout")
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "default");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }))
    .unwrap();
    pdbs.patch("guarded", &pp, &Patch::Apply(&pdb))
        .await
        .unwrap();
    wait_for("pdb status", Duration::from_secs(10), || {
        let pdbs = pdbs.clone();
        async move {
            pdbs.get("guarded")
                .await
                .ok()?
                .status
                .filter(|s| s.expected_pods == Some(1) && s.current_healthy == Some(1))
        }
    })
    .await;
    // kube-rs retries a 429 by default (as it would against k3s); this test wants to see it.
    let pods: Api<Pod> = Api::namespaced(client_no_retry(&n).await, "default");
    let name = pods
        .list(&ListParams::default().labels("app=guarded"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let err = pods.evict(&name, &Default::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    pdbs.delete("guarded", &Default::default()).await.unwrap();
    pods.evict(&name, &Default::default()).await.unwrap();
    // The ReplicaSet replaces the evicted pod.
    wait_for("replacement pod ready", Duration::from_secs(30), || {
        let pods = pods.clone();
        let name = name.clone();
        async move {
            let l = pods
                .list(&ListParams::default().labels("app=guarded"))
                .await
                .ok()?;
            l.items
                .iter()
                .any(|p| {
                    p.metadata.name.as_deref() != Some(name.as_str())
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_kubectl_shows_a_pods_log_and_describes_the_pod_and_its_node() {
    let Some(kubectl) = real_kubectl_or_skip() else {
        return;
    };
    let (n, c) = ready_node(&[PAUSE, APP]).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(
        &PostParams::default(),
        &host_pod("shown", APP, "IfNotPresent", 18270),
    )
    .await
    .unwrap();
    wait_for("shown running", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("shown").await.ok()?;
            p.status?.container_statuses?[0]
                .state
                .as_ref()?
                .running
                .as_ref()?;
            Some(())
        }
    })
    .await;
    let kc = KubectlRun::new(kubectl, n.path("/etc/rancher/k3s/k3s.yaml"));
    let run = |args: &[&str]| kc.run(args);
    let s = run(&["logs", "shown"]);
    assert!(s.contains("listening on 18270/TCP"), "{s}");
    let s = run(&["describe", "pod", "shown"]);
    for want in [
        "Name:", "shown", "Node:", "srv1", "Status:", "Running", "Events:",
    ] {
        assert!(s.contains(want), "no {want:?} in:\n{s}");
    }
    let s = run(&["describe", "node", "srv1"]);
    for want in [
        "Name:",
        "srv1",
        "Conditions:",
        "Ready",
        "Non-terminated Pods:",
        "shown",
    ] {
        assert!(s.contains(want), "no {want:?} in:\n{s}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_services_endpoints_and_slice_follow_its_pods_readiness() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (n, c) = ready_node(&[PAUSE, APP]).await;
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": APP, "imagePullPolicy": "IfNotPresent",
                 "ports": [{"name": "http", "containerPort": 18290}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 18290}, "periodSeconds": 1}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let eps: Api<Endpoints> = Api::namespaced(c.clone(), "default");
    let ip = n.ip.to_string();
    wait_for("web's ready endpoint", Duration::from_secs(30), || {
        let eps = eps.clone();
        let ip = ip.clone();
        async move {
            let e = eps.get("web").await.ok()?;
            let s = e.subsets?.into_iter().next()?;
            let a = s.addresses?.into_iter().next()?;
            let port = s.ports?.into_iter().next()?.port;
            (a.ip == ip && port == 18290).then_some(())
        }
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "{:?}", list.items);
    let s = &list.items[0];
    assert_eq!(s.address_type, "IPv4");
    let ep = &s.endpoints.as_ref().expect("endpoints")[0];
    assert_eq!(ep.addresses, vec![ip.clone()]);
    assert_eq!(ep.conditions.as_ref().and_then(|c| c.ready), Some(true));
    assert_eq!(
        s.ports.as_ref().unwrap()[0].port,
        Some(18290),
        "{:?}",
        s.ports
    );
    // The pod deleted: no address left; the Service deleted: its Endpoints go too.
    pods.delete("web-1", &Default::default()).await.unwrap();
    wait_for("no address for web", Duration::from_secs(30), || {
        let eps = eps.clone();
        async move {
            let e = eps.get("web").await.ok()?;
            e.subsets.unwrap_or_default().is_empty().then_some(())
        }
    })
    .await;
    svcs.delete("web", &Default::default()).await.unwrap();
    wait_for("web's Endpoints removed", Duration::from_secs(30), || {
        let eps = eps.clone();
        async move { eps.get_opt("web").await.ok()?.is_none().then_some(()) }
    })
    .await;
}
