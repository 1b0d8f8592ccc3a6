//! The policy enforcer in the lab (issue 12): the install deploys it before the application
//! (the `enforcer` phase), from its image in the payload (this workspace's `enforcer` and
//! Debian's `nft`, built by `installer_tests::lab_images::enforcer`), as a real container in its
//! pod's cgroup: an in-cluster client through the `kubernetes` Service (kube-proxy's rules) with
//! its ServiceAccount's token and RBAC, programming the node's nftables and lifting the
//! installer's taint. The appliance's own policies hold: from the workstation the gateway
//! answers, the API and the store do not. Then a NetworkPolicy really stops traffic to a host-network pod from the
//! workstation (the only other host), SSH and the kubelet's probes are unaffected, and a policy
//! admitting the workstation's address lets it through again.
//!
//! One 1-node lab installed by the installer. Needs root; skips with the reason otherwise
//! (fails instead under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use installer::phases::enforcer;
use installer_tests::e2e::{Env, kube_client, poll};
use installer_tests::lab_or_skip;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use serde_json::json;

const IMAGE: &str = "lab.example/busybox:real";
const NS: &str = "enftest";
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

#[test]
fn the_enforcer_runs_for_real_and_a_networkpolicy_stops_traffic_to_a_host_network_pod() {
    let Some(lab) = lab_or_skip!(1) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let node = &lab.nodes()[0];

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
            let c = kube_client(&lab).await.unwrap();
            // The install ran the phase and the enforcer lifted the taint.
            let phase = run
                .of("phase_finished")
                .into_iter()
                .find(|p| p["phase"] == "enforcer")
                .cloned()
                .unwrap_or_else(|| panic!("no enforcer phase in\n{}", run.all()));
            assert_eq!(phase["ok"], json!(true), "{phase}");
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
            let n = nodes.get(&node.name).await.unwrap();
            assert!(!enforcer::node_tainted(&n), "the installer's taint is still on {}", node.name);
            // The appliance's own policies, enforced on its running pods: from the workstation
            // the gateway answers, the API and the store do not.
            let plan = run.of("plan_ready").first().map(|e| e["plan"]["app"].clone()).unwrap();
            let value = |k: &str| -> u16 {
                plan.as_array().unwrap().iter()
                    .find(|kv| kv[0] == json!(k))
                    .and_then(|kv| kv[1].as_str()?.parse().ok())
                    .unwrap_or_else(|| panic!("no {k} in {plan}"))
            };
            let gateway = format!("{}:{}", node.addr, value("gatewayPort"));
            assert!(connects(&gateway).await, "the gateway must answer anyone: {gateway}");
            for k in ["apiPort", "storePort"] {
                let addr = format!("{}:{}", node.addr, value(k));
                assert!(!connects(&addr).await, "{k} must be refused from outside: {addr}");
            }
            let system: Api<Pod> = Api::namespaced(c.clone(), enforcer::NAMESPACE);
            poll("the enforcer's pod Ready", Duration::from_secs(90), || {
                let system = system.clone();
                async move {
                    let list = system
                        .list(&kube::api::ListParams::default().labels(&format!("app.kubernetes.io/name={}", enforcer::NAME)))
                        .await
                        .map_err(|e| e.to_string())?;
                    let p = list.items.first().ok_or("no enforcer pod yet")?;
                    let st = serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap();
                    if st["containerStatuses"][0]["ready"] == json!(true) { Ok(()) } else { Err(st.to_string()) }
                }
            })
            .await;
            // It runs as a real process (not a simulated shim) and has applied its table.
            let state = poll("the enforcer's state: rules applied", Duration::from_secs(30), || {
                let out = lab.exec_ok(node, &format!("curl -s http://127.0.0.1:{}/state", enforcer::STATE_PORT)).unwrap_or_default();
                async move {
                    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
                    if v["ready"] == json!(true) && v["synced"] == json!(true) && v["applies"].as_u64() >= Some(1) { Ok(v) } else { Err(out) }
                }
            })
            .await;
            assert_eq!(state["mode"], json!("enforce"), "{state}");
            assert_eq!(state["apply_errors"], json!(0), "{state}");
            let table = lab.exec_ok(node, "nft list table inet installer_enforcer").unwrap();
            assert!(table.contains("hook input"), "{table}\nstate: {state}");

            // A host-network server behind a policy.
            let ns: Api<Namespace> = Api::all(c.clone());
            ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap()).await.unwrap();
            let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
            let web: Pod = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
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
                    if st["containerStatuses"][0]["ready"] == json!(true) { Ok(()) } else { Err(st.to_string()) }
                }
            })
            .await;
            let target = format!("{}:{PORT}", node.addr);
            assert!(connects(&target).await, "no policy selects web yet: {target} must answer");

            // Default deny: the workstation's connections to web stop; SSH stays open.
            apply(&c, &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny", "namespace": NS},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            })).await;
            poll("the default-deny policy enforced", Duration::from_secs(30), || {
                let target = target.clone();
                async move { if connects(&target).await { Err("still open".to_string()) } else { Ok(()) } }
            })
            .await;
            assert!(connects(&format!("{}:22", node.addr)).await, "SSH must stay open");
            let out = lab.exec_ok(node, &format!("curl -s http://127.0.0.1:{}/state", enforcer::STATE_PORT)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v["dropped_packets"].as_u64() > Some(0), "the refused connections are counted: {out}");
            // The kubelet (a host process of the node itself) still probes it: web stays Ready.
            let p = pods.get("web").await.unwrap();
            let st = serde_json::to_value(p.status.unwrap_or_default()).unwrap();
            assert_eq!(st["containerStatuses"][0]["ready"], json!(true), "{st}");

            // Admit the workstation's address on the lab bridge: open again.
            apply(&c, &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "from-workstation", "namespace": NS},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"ipBlock": {"cidr": format!("{}/32", lab.bridge_addr())}}], "ports": [{"port": PORT, "protocol": "TCP"}]}]},
            })).await;
            poll("the allow policy enforced", Duration::from_secs(30), || {
                let target = target.clone();
                async move { if connects(&target).await { Ok(()) } else { Err("still closed".to_string()) } }
            })
            .await;
        })
    }));
    if let Err(panic) = outcome {
        let journal = lab
            .exec(
                node,
                "journalctl -q --no-pager -u k3s | grep -Ev 'GET /|watch' | tail -30; for f in $(find /var/log/pods -name '*.log' | grep -E 'enforcer|enftest'); do echo == $f; tail -n 30 $f; done; nft list ruleset | head -80; curl -s http://127.0.0.1:9648/state",
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!(
            "--- k3s journal, pod logs, ruleset on {} ---\n{journal}",
            node.name
        );
        std::panic::resume_unwind(panic);
    }
}
