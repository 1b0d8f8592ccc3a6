//! End to end (issue 7): the application on the cluster, its gates, and `installer status`.
//! A 3-host lab with the k3s stand-in; needs root (fails instead of skipping under
//! LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use installer_tests::e2e::{self, Env, Run};
use installer_tests::lab::Lab;
use installer_tests::lab_or_skip;

fn messages(run: &Run) -> Vec<String> {
    run.of("message")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

fn status(env: &Env, lab: &Lab) -> (i32, serde_json::Value) {
    let run = env.run(&lab.answer_file_path(), &["status"]).unwrap();
    let st = run
        .of("status_ready")
        .first()
        .map(|e| e["status"].clone())
        .unwrap_or_default();
    (run.code, st)
}

/// Issue 12: the API scaled up by one (2 to 3 replicas, one per node): once its new pod is Ready,
/// within 5 s the gateway reaches it, from the gateway's pod on the same node and from one on
/// another node, while the store's pod beside it and the workstation stay denied. Connections
/// are made as verify's probe matrix makes them (a shell moved into the source pod's cgroup).
/// Returns how long after Ready the allowed flows worked.
async fn a_new_api_pod_is_policed_within_5_s(lab: &Lab, api_port: u16) -> std::time::Duration {
    use installer::phases::enforcer::probe::{self, Origin, Probe, Seen};
    use k8s_openapi::api::core::v1::Pod;
    use std::time::{Duration, Instant};

    let c = e2e::kube_client(lab).await.unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(c, "appliance");
    let ready_on = |p: &Pod| -> Option<String> {
        let ready = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then(|| p.spec.as_ref()?.node_name.clone())?
    };
    let of = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(
                &kube::api::ListParams::default().labels(&format!("app.kubernetes.io/name={name}")),
            )
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        }
    };
    let before: Vec<String> = of("api").await.iter().filter_map(ready_on).collect();
    assert_eq!(before.len(), 2, "api pods Ready before: {before:?}");
    let new_node = e2e::poll(
        "the API's third pod Ready",
        Duration::from_secs(120),
        || {
            let list = of("api");
            let before = before.clone();
            async move {
                let on: Vec<String> = list.await.iter().filter_map(ready_on).collect();
                on.into_iter()
                    .find(|n| !before.contains(n))
                    .ok_or_else(|| "not yet".to_string())
            }
        },
    )
    .await;
    let ready = Instant::now();
    let node = |name: &str| {
        lab.nodes()
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no lab node {name}"))
    };
    let target = std::net::SocketAddr::new(node(&new_node).addr.into(), api_port);
    let pod_on = |list: &[Pod], on: &str| -> String {
        list.iter()
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(on))
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_else(|| panic!("no pod on {on}"))
    };
    let gateways = of("gateway").await;
    let stores = of("store").await;
    let other = lab
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != new_node)
        .unwrap();
    let from = |node: &str, uid: String| Probe {
        cell: 0,
        origin: Origin::Pod {
            node: node.to_string(),
            uid,
        },
        to_node: new_node.clone(),
        to: target,
    };
    let make = |on: &str, p: &Probe| {
        let script = probe::node_script(&[(0, p)]);
        let out = lab.exec_ok(node(on), &script).unwrap_or_default();
        probe::parse(&out).remove(&0)
    };
    let allowed = [
        (other.clone(), from(&other, pod_on(&gateways, &other))),
        (
            new_node.clone(),
            from(&new_node, pod_on(&gateways, &new_node)),
        ),
    ];
    for (on, p) in &allowed {
        loop {
            match make(on, p) {
                Some(Seen::Open) => break,
                Some(Seen::NotMade(why)) => panic!("probe from {on} not made: {why}"),
                seen => assert!(
                    ready.elapsed() < Duration::from_secs(5),
                    "gateway on {on} -> api on {new_node} ({target}) still not open 5 s after Ready: {seen:?}"
                ),
            }
        }
    }
    let took = ready.elapsed();
    let denied = from(&new_node, pod_on(&stores, &new_node));
    let seen = make(&new_node, &denied);
    assert!(
        seen.as_ref().is_some_and(Seen::denied),
        "store on {new_node} -> api on {new_node}: {seen:?}"
    );
    let outside = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(target),
    )
    .await;
    assert!(
        !matches!(outside, Ok(Ok(_))),
        "the workstation reached the new api pod at {target}"
    );
    eprintln!(
        "the API's new pod on {new_node}: the gateway's flows to it open {:.2} s after it turned Ready",
        took.as_secs_f64()
    );
    took
}

#[test]
fn the_appliance_is_ready_its_endpoints_answer_and_a_changed_value_rolls_out_only_its_workload() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let verify = run
        .of("host_done")
        .into_iter()
        .find(|e| e["phase"] == "verify")
        .cloned()
        .unwrap_or_default();
    // The endpoints, then the probe matrix across the 3 nodes, with denies seen denied.
    let detail = verify["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.starts_with("3 endpoints answering; probe matrix: "),
        "{}",
        run.all()
    );
    let denied: u64 = detail
        .rsplit('(')
        .next()
        .and_then(|d| d.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(denied > 0, "{detail}");
    let matrix = messages(&run)
        .into_iter()
        .find(|t| t.starts_with("probe matrix:"))
        .unwrap_or_default();
    assert!(matrix.contains("host (other node)"), "{matrix}");
    assert!(!matrix.contains("DIFFERS"), "{matrix}");
    // The hand-off: where the appliance is and how to log in; the generated password is
    // never in the JSON output (nor the log, which writes the same events).
    let handoff = run
        .of("handoff")
        .first()
        .map(|e| e["handoff"].clone())
        .unwrap_or_default();
    assert_eq!(handoff["user"], "admin", "{}", run.all());
    let urls = handoff["node_urls"].as_array().cloned().unwrap_or_default();
    assert_eq!(urls.len(), 3, "{handoff:#}");
    assert!(
        urls[0].as_str().unwrap().ends_with(":8443/admin/")
            || urls[0].as_str().unwrap().contains("/admin/"),
        "{handoff:#}"
    );
    assert!(handoff.get("password").is_none(), "{handoff:#}");
    assert!(
        handoff["password_note"]
            .as_str()
            .is_some_and(|n| n.contains("base64 -d")),
        "{handoff:#}"
    );
    // The appliance CA is beside the answer file, for the admin.
    let ca = answers.parent().unwrap().join("appliance-ca.crt");
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    // `installer status`: healthy, every workload ready, every endpoint answering.
    let (code, st) = status(&env, &lab);
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["healthy"], true, "{st:#}");
    let workloads = st["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 5, "{st:#}");
    for w in workloads {
        assert_eq!(w["ready"], w["desired"], "{w}");
    }
    assert!(
        st["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["ok"] == true),
        "{st:#}"
    );
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3);
    // Every node's enforcer, and the matrix verify checked.
    let enforcers = st["enforcers"].as_array().unwrap();
    assert_eq!(enforcers.len(), 3, "{st:#}");
    for e in enforcers {
        assert_eq!(e["mode"], "enforce", "{e}");
        assert_eq!(e["ready"], true, "{e}");
        assert!(e["rules"].as_u64() > Some(0), "{e}");
    }
    assert_eq!(st["matrix"]["ok"], true, "{st:#}");
    assert_eq!(
        st["matrix"]["table"].as_str(),
        Some(matrix.trim_start_matches("probe matrix:\n")),
        "{st:#}"
    );

    // A changed value in the answer file rolls out only the workload that uses it.
    let more = env
        .answers_variant(&lab, "more-api", |t| {
            format!("{t}  app:\n    values:\n      apiReplicas: 3\n")
        })
        .unwrap();
    // While it runs: the API's new pod is policed within 5 s of turning Ready.
    let mut child = env.spawn(&more, &["install"]).unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = out;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(a_new_api_pod_is_policed_within_5_s(
            &lab,
            run.app_value("apiPort"),
        ))
    }));
    if checked.is_err() {
        let _ = child.kill();
    }
    let exit = child.wait().unwrap();
    let stdout = reader.join().unwrap().unwrap();
    let run = Run {
        code: exit.code().unwrap_or(-1),
        events: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stdout,
        stderr: String::new(),
    };
    if let Err(panic) = checked {
        eprintln!("the rerun printed:\n{}", run.all());
        std::panic::resume_unwind(panic);
    }
    assert!(run.ok(), "{}", run.all());
    let updated: Vec<String> = messages(&run)
        .into_iter()
        .filter(|m| m.ends_with(": updated") || m.ends_with(": created"))
        .collect();
    assert_eq!(
        updated,
        vec!["Deployment appliance/api: updated".to_string()],
        "{}",
        run.all()
    );
    // (The cluster gate writes the kubeconfig beside this new answer file: not a change
    // on the cluster.)
    let changed: Vec<String> = run
        .changes()
        .iter()
        .filter(|e| e["phase"] != "cluster")
        .map(|e| e["phase"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(changed, vec!["app"], "{}", run.all());

    // Status reads the same answer file: 3 API replicas now.
    let run = env.run(&more, &["status"]).unwrap();
    let st = run.of("status_ready")[0]["status"].clone();
    let api = st["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "Deployment appliance/api")
        .cloned()
        .unwrap();
    assert_eq!(
        (api["ready"].as_u64(), api["desired"].as_u64()),
        (Some(3), Some(3)),
        "{st:#}"
    );

    // A stopped node makes status unhealthy, exit 1, with the node named.
    lab.stop_node(&lab.nodes()[2]).unwrap();
    let (code, st) = status(&env, &lab);
    assert_eq!(code, 1, "{st:#}");
    assert_eq!(st["healthy"], false);
    let problems = st["problems"].to_string();
    assert!(
        problems.contains(&lab.nodes()[2].addr.to_string()),
        "{problems}"
    );
}

#[test]
fn a_missing_image_archive_stops_the_install_at_the_workloads_gate_naming_node_and_image() {
    let Some(lab) = lab_or_skip!(3) else { return };
    // The gateway's (nginx) archive is not in the payload.
    let env = Env::with_sizes(Default::default(), &["app-gateway-amd64"]).unwrap();
    let run = env.run(&lab.answer_file_path(), &["install"]).unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    let failed = run.of("host_failed");
    assert_eq!(failed.len(), 1, "{}", run.all());
    assert_eq!(failed[0]["phase"], "app");
    let f = run.failures();
    for want in [
        "DaemonSet appliance/gateway is not ready",
        "on node node1: container nginx waiting: ",
        "Back-off pulling image \"docker.io/library/nginx:1.28.0-alpine\"",
        "is not on node1, node2, node3: its archive did not reach the node",
        "what to do:",
    ] {
        assert!(f.contains(want), "no {want:?} in\n{f}");
    }
    // It stopped early: the image cannot appear by waiting.
    let app_time = run
        .of("phase_finished")
        .into_iter()
        .find(|p| p["phase"] == "app")
        .unwrap()["elapsed"]
        .as_f64()
        .unwrap();
    assert!(
        app_time < 120.0,
        "the gate waited {app_time} s for a hopeless rollout"
    );
}

#[test]
fn a_probe_that_never_succeeds_stops_the_install_at_its_workloads_gate() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    e2e::standin_knobs(&lab, "unhealthy-containers: [api]\n").unwrap();
    let short = env
        .answers_variant(&lab, "short", |t| {
            format!("{t}  timeouts:\n    rollout: 30s\n")
        })
        .unwrap();
    let run = env.run(&short, &["install"]).unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    let f = run.failures();
    for want in [
        "Deployment appliance/api is not ready after 30s",
        "container api running but not ready",
        "HTTP probe failed with statuscode: 503",
        "on node node",
    ] {
        assert!(f.contains(want), "no {want:?} in\n{f}");
    }
    // The workloads are applied and gated together, reported in dependency order: the
    // store, before the API, is reported rolled out; the gateway, after it, was applied with
    // the rest but is never reported rolled out ahead of the API's failure.
    let msgs = messages(&run);
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("StatefulSet appliance/store is rolled out")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("DaemonSet appliance/gateway: ")),
        "{msgs:#?}"
    );
    assert!(
        !msgs
            .iter()
            .any(|m| m.starts_with("DaemonSet appliance/gateway is rolled out")),
        "{msgs:#?}"
    );
}
