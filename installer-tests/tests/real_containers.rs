//! Real containers in the lab (issue 11): an image archive that carries a root filesystem is run
//! by the stand-in's kubelet with runc, as containerd would: the image's program with the pod's
//! command, env (values, fieldRef, configMapKeyRef, secretKeyRef) and volumes (configMap with
//! items, secret, hostPath, the service-account volume), on the node's network, in the pod's
//! cgroup; its output in `kubectl logs`; its exit code, `OOMKilled` and the termination message
//! from its logs in `lastState`; a failing liveness probe restarts it; deleting the pod stops it
//! gracefully (SIGTERM first); kube-proxy's rules take a ClusterIP to the pod behind it and the
//! `kubernetes` Service to the API, which takes the pod's own token and applies RBAC.
//!
//! Then the policy enforcer (issue 12), which the install deploys before the application from its
//! image in the payload (this workspace's `enforcer` and Debian's `nft`,
//! `installer_tests::lab_images::enforcer`), running as a real container: an in-cluster client
//! through the `kubernetes` Service with its token and RBAC, programming the node's nftables and
//! lifting the installer's taint. The appliance's own policies hold from the workstation (the
//! gateway answers, the API and the store do not); a default-deny NetworkPolicy stops the
//! workstation's traffic to a host-network pod (SSH and the kubelet's probes unaffected, drops
//! counted) and an ipBlock rule admitting the workstation lets it through again. Killed, it comes
//! back and applies again; with the API out of its reach (a host firewall on the node) it comes
//! back, adopts the rules in the kernel and changes nothing until the API is back. Audit mode,
//! chosen on a rerun of the install, drops nothing and counts what it would have dropped.
//!
//! One 1-node lab installed by the installer (the appliance itself stays simulated here); the
//! test's own pods use a busybox image built from Debian's busybox-static
//! (`installer_tests::lab_images`). Needs root; skips with the reason otherwise (fails instead
//! under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use installer::phases::enforcer;
use installer_tests::e2e::{self, Env, Run, poll};
use installer_tests::lab::{Lab, Node};
use installer_tests::lab_or_skip;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, LogParams, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use serde_json::json;

const IMAGE: &str = "lab.example/busybox:real";
const NS: &str = "realtest";
const ENF_NS: &str = "enftest";
const PORT: u16 = 18282;

/// Server-side applies one rendered object, as the installer's apply does.
async fn apply(client: &kube::Client, obj: &serde_json::Value) {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match (caps.scope, obj["metadata"]["namespace"].as_str()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply("enforcer-lab-test").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind}/{name}: {e}"));
}

/// Whether the workstation can open a TCP connection to `addr` within a second.
async fn connects(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The policy enforcer the install deployed (issue 12): running for real, it enforces the
/// appliance's policies and a NetworkPolicy on a host-network pod, from the workstation.
async fn the_enforcer_enforces(lab: &Lab, node: &Node, run: &Run, c: &kube::Client) {
    let c = c.clone();
    // The install ran the phase and the enforcer lifted the taint.
    let phase = run
        .of("phase_finished")
        .into_iter()
        .find(|p| p["phase"] == "enforcer")
        .cloned()
        .unwrap_or_else(|| panic!("no enforcer phase in\n{}", run.all()));
    assert_eq!(phase["ok"], json!(true), "{phase}");
    // verify's probe matrix: every flow tried for real, as the policies say, denies included.
    let verify = run
        .of("phase_finished")
        .into_iter()
        .find(|p| p["phase"] == "verify")
        .cloned()
        .unwrap_or_else(|| panic!("no verify phase in\n{}", run.all()));
    assert_eq!(verify["ok"], json!(true), "{verify}");
    let matrix = run
        .of("message")
        .into_iter()
        .filter_map(|m| m["text"].as_str())
        .find(|t| t.starts_with("probe matrix:"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no probe matrix in\n{}", run.all()));
    for want in [
        "outside",
        "host (same node)",
        "store:",
        "gateway:",
        "allow",
        "deny",
    ] {
        assert!(matrix.contains(want), "{want:?} not in\n{matrix}");
    }
    assert!(!matrix.contains("DIFFERS"), "{matrix}");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    let n = nodes.get(&node.name).await.unwrap();
    assert!(
        !enforcer::node_tainted(&n),
        "the installer's taint is still on {}",
        node.name
    );
    // The appliance's own policies, enforced on its running pods: from the workstation
    // the gateway answers, the API and the store do not.
    let gateway = format!("{}:{}", node.addr, run.app_value("gatewayPort"));
    assert!(
        connects(&gateway).await,
        "the gateway must answer anyone: {gateway}"
    );
    for k in ["apiPort", "storePort"] {
        let addr = format!("{}:{}", node.addr, run.app_value(k));
        assert!(
            !connects(&addr).await,
            "{k} must be refused from outside: {addr}"
        );
    }
    let system: Api<Pod> = Api::namespaced(c.clone(), enforcer::NAMESPACE);
    poll("the enforcer's pod Ready", Duration::from_secs(90), || {
        let system = system.clone();
        async move {
            let list = system
                .list(
                    &kube::api::ListParams::default()
                        .labels(&format!("app.kubernetes.io/name={}", enforcer::NAME)),
                )
                .await
                .map_err(|e| e.to_string())?;
            let p = list.items.first().ok_or("no enforcer pod yet")?;
            let st = serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap();
            if st["containerStatuses"][0]["ready"] == json!(true) {
                Ok(())
            } else {
                Err(st.to_string())
            }
        }
    })
    .await;
    // It runs as a real process (not a simulated shim) and has applied its table.
    let state = poll(
        "the enforcer's state: rules applied",
        Duration::from_secs(30),
        || {
            let s = enforcer_state(lab, node);
            async move {
                let v = s?;
                if v["ready"] == json!(true)
                    && v["synced"] == json!(true)
                    && v["applies"].as_u64() >= Some(1)
                {
                    Ok(v)
                } else {
                    Err(v.to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(state["mode"], json!("enforce"), "{state}");
    // The rules in force are the last compiled ones. A batch the kernel refused earlier (a pod
    // of the steps above deleted between cgroup lookup and apply) is retried by design, so
    // `apply_errors` may be above 0; its log lines are shown.
    assert_eq!(state["last_error"], json!(null), "{state}");
    if state["apply_errors"].as_u64() > Some(0) {
        let log = lab
            .exec_ok(node, "grep -h -i 'error' /var/log/pods/kube-system_installer-enforcer-*/enforcer/*.log | tail -5")
            .unwrap_or_default();
        eprintln!("enforcer apply errors ({}):\n{log}", state["apply_errors"]);
    }
    let table = lab
        .exec_ok(node, "nft list table inet installer_enforcer")
        .unwrap();
    assert!(table.contains("hook input"), "{table}\nstate: {state}");

    // A host-network server behind a policy.
    let ns: Api<Namespace> = Api::all(c.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ENF_NS}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), ENF_NS);
    let web: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ENF_NS, "labels": {"app": "web"}},
        "spec": {"hostNetwork": true, "containers": [{
            "name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", format!("mkdir -p /tmp/www; echo ok > /tmp/www/healthz; exec httpd -f -p {PORT} -h /tmp/www")],
            "ports": [{"containerPort": PORT, "hostPort": PORT}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 1},
        }]},
    })).unwrap();
    pods.create(&PostParams::default(), &web).await.unwrap();
    poll("pod web Ready", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("web").await.map_err(|e| e.to_string())?;
            let st = serde_json::to_value(p.status.unwrap_or_default()).unwrap();
            if st["containerStatuses"][0]["ready"] == json!(true) {
                Ok(())
            } else {
                Err(st.to_string())
            }
        }
    })
    .await;
    let target = format!("{}:{PORT}", node.addr);
    assert!(
        connects(&target).await,
        "no policy selects web yet: {target} must answer"
    );

    // Default deny: the workstation's connections to web stop; SSH stays open.
    apply(
        &c,
        &json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": ENF_NS},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }),
    )
    .await;
    poll(
        "the default-deny policy enforced",
        Duration::from_secs(30),
        || {
            let target = target.clone();
            async move {
                if connects(&target).await {
                    Err("still open".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert!(
        connects(&format!("{}:22", node.addr)).await,
        "SSH must stay open"
    );
    let v = enforcer_state(lab, node).unwrap();
    assert!(
        v["dropped_packets"].as_u64() > Some(0),
        "the refused connections are counted: {v}"
    );
    // The kubelet (a host process of the node itself) still probes it: web stays Ready.
    let p = pods.get("web").await.unwrap();
    let st = serde_json::to_value(p.status.unwrap_or_default()).unwrap();
    assert_eq!(st["containerStatuses"][0]["ready"], json!(true), "{st}");

    // Fail-closed: the enforcer killed, its rules stay while nothing runs it (the kubelet's
    // first restart waits 10 s): the store is still refused, the table still in the kernel.
    let store = format!("{}:{}", node.addr, run.app_value("storePort"));
    lab.exec_ok(node, "pkill -KILL -x enforcer").unwrap();
    let state_gone = lab
        .exec(
            node,
            &format!(
                "curl -s --max-time 2 http://127.0.0.1:{}/state",
                enforcer::STATE_PORT
            ),
        )
        .map(|o| !o.status.success())
        .unwrap();
    assert!(state_gone, "the enforcer still answers after its kill");
    assert!(
        !connects(&store).await,
        "the store must stay refused while the enforcer is dead: {store}"
    );
    lab.exec_ok(node, "nft list table inet installer_enforcer")
        .expect("the enforcer's table must outlive its process");
    poll(
        "the enforcer restarted and applied its rules again",
        Duration::from_secs(90),
        || {
            let s = enforcer_state(lab, node);
            async move {
                let v = s?;
                if v["ready"] == json!(true) && v["last_error"] == json!(null) {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            }
        },
    )
    .await;
    assert!(!connects(&store).await, "{store}");

    // Admit the workstation's address on the lab bridge: open again.
    apply(&c, &json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-workstation", "namespace": ENF_NS},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": format!("{}/32", lab.bridge_addr())}}], "ports": [{"port": PORT, "protocol": "TCP"}]}]},
    })).await;
    poll("the allow policy enforced", Duration::from_secs(30), || {
        let target = target.clone();
        async move {
            if connects(&target).await {
                Ok(())
            } else {
                Err("still closed".to_string())
            }
        }
    })
    .await;
}

/// The enforcer's `/state` on `node`, or why there is none.
fn enforcer_state(lab: &Lab, node: &Node) -> Result<serde_json::Value, String> {
    let out = lab
        .exec_ok(
            node,
            &format!(
                "curl -s --max-time 2 http://127.0.0.1:{}/state",
                enforcer::STATE_PORT
            ),
        )
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
}

/// Step 8, the API out of the node's pods' reach (a host firewall, `e2e::block_pods_from_api`) and the
/// enforcer killed again: it comes back without its API, says it adopted the rules in the kernel,
/// leaves them exactly as they were (the store still refused, the workstation still admitted to
/// web) and applies again once the API is back.
async fn the_enforcer_keeps_its_rules_without_the_api(lab: &Lab, node: &Node, run: &Run) {
    let store = format!("{}:{}", node.addr, run.app_value("storePort"));
    let web = format!("{}:{PORT}", node.addr);
    let rules = || {
        lab.exec_ok(node, "nft -s list table inet installer_enforcer")
            .expect("the enforcer's table")
    };
    let before = rules();
    e2e::block_pods_from_api(lab, node).unwrap();
    lab.exec_ok(node, "pkill -KILL -x enforcer").unwrap();
    let state = poll(
        "the enforcer restarted, waiting for its API",
        Duration::from_secs(120),
        || {
            let s = enforcer_state(lab, node);
            let fw = lab
                .exec_ok(
                    node,
                    &format!(
                        "nft list table inet {}; ss -tnp | grep enforcer",
                        e2e::API_BLOCK_TABLE
                    ),
                )
                .unwrap_or_default();
            async move {
                let v = s?;
                if v["synced"] == json!(false) && v["adopted"] == json!(true) {
                    Ok(v)
                } else {
                    Err(format!("{v}\n{fw}"))
                }
            }
        },
    )
    .await;
    assert_eq!(state["ready"], json!(false), "{state}");
    // It did try: the firewall dropped its connections to the API.
    poll(
        "the restarted enforcer's API connections dropped",
        Duration::from_secs(30),
        || {
            let out = lab
                .exec_ok(
                    node,
                    &format!("nft list table inet {}", e2e::API_BLOCK_TABLE),
                )
                .unwrap_or_default();
            async move {
                if out.contains("counter packets 0 ") {
                    Err(out)
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    assert_eq!(
        rules(),
        before,
        "the rules in the kernel changed while the enforcer had no API"
    );
    assert!(
        !connects(&store).await,
        "the store must stay refused while the enforcer has no API: {store}"
    );
    assert!(
        connects(&web).await,
        "the workstation's allowed flow must stay open while the enforcer has no API: {web}"
    );
    e2e::unblock_pods_from_api(lab, node).unwrap();
    let state = poll(
        "the enforcer synced and applied again, its API back",
        Duration::from_secs(120),
        || {
            let s = enforcer_state(lab, node);
            async move {
                let v = s?;
                if v["ready"] == json!(true)
                    && v["synced"] == json!(true)
                    && v["last_error"] == json!(null)
                {
                    Ok(v)
                } else {
                    Err(v.to_string())
                }
            }
        },
    )
    .await;
    assert!(state["applies"].as_u64() >= Some(1), "{state}");
    assert!(!connects(&store).await, "{store}");
    assert!(connects(&web).await, "{web}");
}

/// Step 9, `spec.enforcer.mode: audit` on a rerun of the install: the enforcer is replaced by one in
/// audit mode, verify's matrix shows the policies' denies as `would deny`, and the store, denied
/// until now, answers the workstation (audit drops nothing) while the connection is counted.
async fn audit_mode_drops_nothing_and_counts(lab: &Lab, node: &Node, env: &Env, run: &Run) {
    let answers = lab.answer_file_path();
    let text = std::fs::read_to_string(&answers).unwrap();
    assert!(!text.contains("enforcer:"), "{text}");
    std::fs::write(
        &answers,
        text.replacen("\nspec:\n", "\nspec:\n  enforcer:\n    mode: audit\n", 1),
    )
    .unwrap();
    let audit = env.run(&answers, &["install"]).unwrap();
    assert!(audit.ok(), "{}", audit.all());
    let phase = audit
        .of("host_done")
        .into_iter()
        .find(|p| p["phase"] == "enforcer")
        .cloned()
        .unwrap_or_else(|| panic!("no enforcer phase in\n{}", audit.all()));
    assert!(
        phase["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`audit` on 1 node")),
        "{phase}"
    );
    let matrix = audit
        .of("message")
        .into_iter()
        .filter_map(|m| m["text"].as_str())
        .find(|t| t.starts_with("probe matrix:"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no probe matrix in\n{}", audit.all()));
    assert!(matrix.contains("would deny"), "{matrix}");
    assert!(!matrix.contains("DIFFERS"), "{matrix}");
    let state = enforcer_state(lab, node).unwrap();
    assert_eq!(state["mode"], json!("audit"), "{state}");
    let store = format!("{}:{}", node.addr, run.app_value("storePort"));
    assert!(
        connects(&store).await,
        "audit mode must drop nothing, the store included: {store}"
    );
    poll(
        "the store's connection counted as would-drop",
        Duration::from_secs(30),
        || {
            let s = enforcer_state(lab, node);
            async move {
                let v = s?;
                if v["would_drop_packets"].as_u64() > Some(0) && v["dropped_packets"] == json!(0) {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            }
        },
    )
    .await;
}

fn host_pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    spec["hostNetwork"] = json!(true);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": spec,
    }))
    .unwrap()
}

fn status_of(p: &Pod) -> serde_json::Value {
    serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap()
}

#[test]
fn images_with_a_root_filesystem_run_as_real_containers() {
    let Some(lab) = lab_or_skip!(1) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let node = &lab.nodes()[0];

    // The image, imported as k3s imports airgap archives.
    let archive = env.work.path().join("lab-busybox.tar");
    installer_tests::rootfs_images::write_archive(
        &archive,
        &[installer_tests::lab_images::busybox(IMAGE).unwrap()],
    )
    .unwrap();
    lab.cp(
        &archive,
        node,
        "/var/lib/rancher/k3s/agent/images/lab-busybox.tar",
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
        let c = installer_tests::e2e::kube_client(&lab).await.unwrap();
        let ns: Api<Namespace> = Api::all(c.clone());
        ns.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello-from-configmap", "file.txt": "file-content"}})).unwrap(),
        )
        .await
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(c.clone(), NS);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "sec"}, "stringData": {"password": "s3cret-value"}})).unwrap(),
            )
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(c.clone(), NS);

        // 1. A long-running program: env, volumes, its port on the node, its cgroup, its logs.
        let script = "echo \"start $POD_NAME on $NODE greeting=$GREETING pw=${#PASSWORD}\"; \
            cat /cfg/renamed.txt; echo; echo \"ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)\"; \
            echo \"api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
            echo \"uid=$(id -u)\"; \
            trap 'echo got-TERM > /host/term.txt; exit 0' TERM; \
            mkdir -p /tmp/www; echo ok > /tmp/www/healthz; httpd -f -p 18181 -h /tmp/www & \
            while true; do sleep 1; done";
        pods.create(&PostParams::default(), &host_pod("long", json!({
            "terminationGracePeriodSeconds": 20,
            "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", script],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                ],
                "ports": [{"containerPort": 18181, "hostPort": 18181}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 18181}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "host", "mountPath": "/host"},
                ],
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "file.txt", "path": "renamed.txt"}]}},
                {"name": "host", "hostPath": {"path": "/var/tmp/realtest", "type": "DirectoryOrCreate"}},
            ],
        }))).await.unwrap();
        let p = poll("pod long Ready", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let p = pods.get("long").await.map_err(|e| e.to_string())?;
                let st = status_of(&p);
                let ready = st["containerStatuses"][0]["ready"] == json!(true);
                if ready { Ok(p) } else { Err(st.to_string()) }
            }
        })
        .await;
        let uid = p.metadata.uid.clone().unwrap();
        // The program's own socket answers on the node's address.
        let body = reqwest::get(format!("http://{}:18181/healthz", node.addr)).await.unwrap().text().await.unwrap();
        assert_eq!(body.trim(), "ok");
        // Its output reaches `kubectl logs`.
        let logs = poll("the program's log lines", Duration::from_secs(20), || {
            let pods = pods.clone();
            async move {
                let l = pods.logs("long", &LogParams::default()).await.map_err(|e| e.to_string())?;
                if l.contains("api=") { Ok(l) } else { Err(l) }
            }
        })
        .await;
        assert!(logs.contains(&format!("start long on {} greeting=hello-from-configmap pw=12", node.name)), "{logs}");
        assert!(logs.contains("file-content"), "{logs}");
        assert!(logs.contains(&format!("ns={NS}")), "{logs}");
        assert!(logs.contains("api=10.43.0.1:443"), "{logs}");
        assert!(logs.contains("uid=0"), "{logs}");
        assert!(!logs.contains("simulated"), "{logs}");
        // Its process is in the pod's cgroup, as the systemd cgroup driver lays it out.
        let u = uid.replace('-', "_");
        let procs = lab
            .exec_ok(node, &format!("cat /sys/fs/cgroup/unified/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-*.scope/cgroup.procs | head -1"))
            .unwrap();
        let pid = procs.trim();
        assert!(!pid.is_empty(), "no process in the pod's cgroup");
        let comm = lab.exec_ok(node, &format!("cat /proc/{pid}/cmdline | tr '\\0' ' '")).unwrap();
        assert!(comm.contains("/bin/sh -c"), "{comm}");

        // 2. A program that fails: exit code, the termination message from its last log lines
        //    (FallbackToLogsOnError), CrashLoopBackOff.
        pods.create(&PostParams::default(), &host_pod("crash", json!({
            "containers": [{
                "name": "main", "image": IMAGE,
                "command": ["/bin/sh", "-c", "echo 'fatal: unknown flag --bogus' >&2; exit 3"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
        }))).await.unwrap();
        let st = poll("pod crash in CrashLoopBackOff", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let st = status_of(&pods.get("crash").await.map_err(|e| e.to_string())?);
                let cs = &st["containerStatuses"][0];
                if cs["state"]["waiting"]["reason"] == json!("CrashLoopBackOff") { Ok(st) } else { Err(st.to_string()) }
            }
        })
        .await;
        let last = &st["containerStatuses"][0]["lastState"]["terminated"];
        assert_eq!(last["exitCode"], json!(3), "{st}");
        assert_eq!(last["reason"], json!("Error"), "{st}");
        assert!(last["message"].as_str().unwrap_or_default().contains("fatal: unknown flag --bogus"), "{st}");

        // 3. Over its memory limit: OOMKilled.
        pods.create(&PostParams::default(), &host_pod("oom", json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": IMAGE,
                "command": ["/bin/sh", "-c", "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived ${#a}"],
                "resources": {"limits": {"memory": "32Mi"}},
            }],
        }))).await.unwrap();
        let st = poll("pod oom terminated", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let st = status_of(&pods.get("oom").await.map_err(|e| e.to_string())?);
                let t = &st["containerStatuses"][0]["state"]["terminated"];
                if t.is_object() { Ok(st) } else { Err(st.to_string()) }
            }
        })
        .await;
        let t = &st["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["reason"], json!("OOMKilled"), "{st}");
        assert_eq!(t["exitCode"], json!(137), "{st}");
        assert_eq!(st["phase"], json!("Failed"), "{st}");

        // 4. A failing liveness probe (exec, inside the container) restarts it.
        pods.create(&PostParams::default(), &host_pod("live", json!({
            "containers": [{
                "name": "main", "image": IMAGE,
                "command": ["/bin/sh", "-c", "echo run; while true; do sleep 1; done"],
                "livenessProbe": {"exec": {"command": ["/bin/sh", "-c", "test -e /tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
            }],
        }))).await.unwrap();
        let st = poll("pod live restarted by its liveness probe", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let st = status_of(&pods.get("live").await.map_err(|e| e.to_string())?);
                let cs = &st["containerStatuses"][0];
                if cs["restartCount"].as_i64().unwrap_or(0) >= 1 { Ok(st) } else { Err(st.to_string()) }
            }
        })
        .await;
        assert!(st["containerStatuses"][0]["lastState"]["terminated"].is_object(), "{st}");

        // 5. Services through kube-proxy's rules: a ClusterIP reaches the ready pod behind it,
        //    one without endpoints refuses, and the `kubernetes` Service reaches the API, which
        //    authenticates the pod's own service-account token and authorizes it with RBAC.
        let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.clone(), NS);
        for (name, selector) in [("web", "long"), ("nobody", "no-such-pod")] {
            services.create(&PostParams::default(), &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": selector}, "ports": [{"name": "http", "port": 80, "targetPort": 18181}]},
            })).unwrap()).await.unwrap();
        }
        let web_ip = services.get("web").await.unwrap().spec.unwrap().cluster_ip.unwrap();
        // nc, not wget: Debian's busybox-static is linked against glibc, whose service lookup
        // (wget asks for "http") needs NSS modules the image does not have, and crashes.
        let client_script = "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $WEB_SERVICE_HOST 80; echo \"web-rc=$?\"; \
            nc -w 5 $NOBODY_SERVICE_HOST 80 </dev/null 2>&1; echo \"nobody-rc=$?\"";
        // The slice must list the ready pod before the client runs (kube-proxy syncs every second).
        poll("kube-proxy's rule for web", Duration::from_secs(30), || {
            let out = lab.exec_ok(node, &format!("iptables-save -t nat | grep -c 'realtest/web:http -> {}:18181' || true", node.addr)).unwrap_or_default();
            async move { if out.trim() == "1" { Ok(()) } else { Err(format!("rules for web: {out}")) } }
        })
        .await;
        pods.create(&PostParams::default(), &host_pod("client", json!({
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": IMAGE, "command": ["/bin/sh", "-c", client_script]}],
        }))).await.unwrap();
        poll("pod client done", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let st = status_of(&pods.get("client").await.map_err(|e| e.to_string())?);
                if st["phase"] == json!("Succeeded") { Ok(()) } else { Err(st.to_string()) }
            }
        })
        .await;
        let out = pods.logs("client", &LogParams::default()).await.unwrap();
        assert!(out.contains(" 200 OK") && out.contains("ok\nweb-rc=0"), "through {web_ip}:\n{out}");
        assert!(out.contains("Connection refused") && out.contains("nobody-rc=1"), "{out}");
        let chain = lab.exec_ok(node, "iptables-save -t nat | grep -c 'KUBE-SVC-NPX46M4PTMTKRN6Y' || true").unwrap();
        assert_ne!(chain.trim(), "0", "the kubernetes Service's chain");
        // The `long` pod's projected token, read through its process's root.
        let api = |what: &str| {
            let cmd = format!(
                "t=$(cat /proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount/token) && umask 077 && \
                 printf 'Authorization: Bearer %s' \"$t\" > /run/realtest-auth && \
                 curl -sk -o /dev/null -w '%{{http_code}}' -H @/run/realtest-auth https://10.43.0.1/api/v1/namespaces/{NS}/{what}; rm -f /run/realtest-auth"
            );
            lab.exec_ok(node, &cmd).unwrap()
        };
        assert_eq!(api("pods"), "403", "the default ServiceAccount may not list pods");
        let rbac = c.clone();
        let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(rbac.clone(), NS);
        roles.create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        })).unwrap()).await.unwrap();
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(rbac, NS);
        bindings.create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "pod-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}],
        })).unwrap()).await.unwrap();
        assert_eq!(api("pods"), "200", "after the RoleBinding");
        assert_eq!(api("secrets"), "403", "the Role grants pods only");

        // 6. Deleting a pod stops its program gracefully: SIGTERM reaches it.
        lab.exec_ok(node, "rm -f /var/tmp/realtest/term.txt").unwrap();
        pods.delete("long", &DeleteParams::default()).await.unwrap();
        poll("pod long gone", Duration::from_secs(40), || {
            let pods = pods.clone();
            async move {
                match pods.get_opt("long").await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(p) => Err(status_of(&p).to_string()),
                }
            }
        })
        .await;
        let term = lab.exec_ok(node, "cat /var/tmp/realtest/term.txt").unwrap();
        assert_eq!(term.trim(), "got-TERM");
        // Its cgroup is gone with it.
        let left = lab
            .exec_ok(node, &format!("ls -d /sys/fs/cgroup/unified/kubepods.slice/*/*pod{u}.slice 2>/dev/null | wc -l"))
            .unwrap();
        assert_eq!(left.trim(), "0", "the pod's cgroup is left behind");

        // 7. The policy enforcer the install deployed.
        the_enforcer_enforces(&lab, node, &run, &c).await;
        // 8. Without its API, its rules stay.
        the_enforcer_keeps_its_rules_without_the_api(&lab, node, &run).await;
        // 9. Audit mode, chosen on a rerun.
        audit_mode_drops_nothing_and_counts(&lab, node, &env, &run).await;
    })
    }));
    if let Err(panic) = outcome {
        // What the kubelet said, so a failure here can be read without the lab.
        let journal = lab
            .exec(
                node,
                "journalctl -q --no-pager -u k3s | grep -Ev 'GET /|watch' | tail -30; for f in $(find /var/log/pods -name '*.log' | grep -E 'realtest|enftest|enforcer'); do echo == $f; tail -n 15 $f; done",
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!("--- k3s journal on {} ---\n{journal}", node.name);
        std::panic::resume_unwind(panic);
    }
}
