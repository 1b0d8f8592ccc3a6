//! A single stand-in server on loopback: the files k3s writes, the supervisor endpoints, the
//! Kubernetes API as kube-rs sees it, readiness, and node readiness gated on the CNI config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod standin_util;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use standin_util::*;

fn http_insecure() -> reqwest::Client {
    installer_tests::standin::client::insecure().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn server_writes_k3s_files_and_serves_the_supervisor() {
    let n = first_server("srv1", "");
    // server/token is K10<sha256 of the CA>::server:<password>, mode 0600.
    let token = n.read("/var/lib/rancher/k3s/server/token").unwrap();
    let ca = n
        .read("/var/lib/rancher/k3s/server/tls/server-ca.crt")
        .unwrap();
    let info = installer_tests::standin::token::parse(token.trim()).unwrap();
    assert_eq!(info.username, "server");
    assert_eq!(info.password, "standin-test-token-0123456789abcdef");
    assert_eq!(
        info.ca_hash,
        installer_tests::standin::token::hash_ca(ca.as_bytes())
    );
    let mode = |p: &str| std::fs::metadata(n.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("/var/lib/rancher/k3s/server/token"), 0o600);
    assert_eq!(mode("/etc/rancher/k3s/k3s.yaml"), 0o600);
    for link in ["node-token", "agent-token"] {
        let m = std::fs::symlink_metadata(n.path(&format!("/var/lib/rancher/k3s/server/{link}")))
            .unwrap();
        assert!(m.file_type().is_symlink(), "{link} is a symlink to token");
    }
    let kc = n.read("/etc/rancher/k3s/k3s.yaml").unwrap();
    assert!(
        kc.contains(&format!("server: https://{}:6443", n.ip)),
        "{kc}"
    );

    let http = http_insecure();
    let ping = http.get(format!("{}/ping", n.url())).send().await.unwrap();
    assert_eq!(ping.text().await.unwrap(), "pong");
    let cacerts = http
        .get(format!("{}/cacerts", n.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(cacerts, ca);
    // The Kubernetes API wants a client certificate (anonymous-auth=false).
    let r = http
        .get(format!("{}/readyz", n.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // /v1-k3s/readyz takes basic auth as node:<password>.
    let r = http
        .get(format!("{}/v1-k3s/readyz", n.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .get(format!("{}/v1-k3s/readyz", n.url()))
        .basic_auth("node", Some("standin-test-token-0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // /db/info is open on loopback and lists the etcd members in etcd's JSON shape.
    let info: serde_json::Value = http
        .get(format!("{}/db/info", n.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert!(members[0]["name"].as_str().unwrap().starts_with("srv1-"));
    assert_eq!(members[0]["peerURLs"][0], format!("https://{}:2380", n.ip));
    assert!(members[0].get("isLearner").is_none());
    assert!(n.notified_ready(), "READY=1 sent to NOTIFY_SOCKET");
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_sees_a_kubernetes_api() {
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.git_version, "v1.36.2+k3s1");
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&want.to_string()), "{want} in {names:?}");
    }
    // Server-side apply as the installer does it, then get, list by label, delete.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app-config", "labels": {"app": "demo"}},
        "data": {"a": "1"},
    }))
    .unwrap();
    let pp = PatchParams::apply("installer").force();
    let applied = cms
        .patch("app-config", &pp, &Patch::Apply(&cm))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");
    let mf = applied.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("installer"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let listed = cms
        .list(&ListParams::default().labels("app=demo"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(
        cms.list(&ListParams::default().labels("app=other"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let err = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    cms.delete("app-config", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("app-config").await.unwrap().is_none());
    // Discovery, as kube-rs's dynamic APIs use it.
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    assert!(groups.contains(&"apps".to_string()), "{groups:?}");
    assert!(
        groups.contains(&"networking.k8s.io".to_string()),
        "{groups:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_is_not_ready_until_a_cni_config_exists() {
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = wait_for("node registered", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move { nodes.get_opt("srv1").await.ok().flatten() }
    })
    .await;
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert_eq!(labels["node-role.kubernetes.io/etcd"], "true");
    assert_eq!(labels["node.kubernetes.io/instance-type"], "k3s");
    let info = node.status.as_ref().unwrap().node_info.as_ref().unwrap();
    assert_eq!(info.kubelet_version, "v1.36.2+k3s1");
    assert!(info.container_runtime_version.starts_with("containerd://"));
    // Without /etc/cni/net.d/*.conflist: NotReady with containerd's message and the not-ready taint.
    let node =
        wait_for("not-ready taint", Duration::from_secs(10), || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("srv1").await.ok()?;
                let tainted =
                    n.spec.as_ref()?.taints.as_ref()?.iter().any(|t| {
                        t.key == "node.kubernetes.io/not-ready" && t.effect == "NoSchedule"
                    });
                tainted.then_some(n)
            }
        })
        .await;
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    assert!(
        ready
            .message
            .as_deref()
            .unwrap()
            .contains("cni plugin not initialized"),
        "{:?}",
        ready.message
    );
    let cidr = node.spec.unwrap().pod_cidr.unwrap();
    assert_eq!(cidr, "10.42.0.0/24");
    // The installer writes the conflist: the node turns Ready and loses the taint.
    n.write("/etc/cni/net.d/10-local.conflist", &conflist(&cidr));
    wait_for("node Ready without taint", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("srv1").await.ok()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = n
                .spec
                .as_ref()?
                .taints
                .as_ref()
                .is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
            (ready && !tainted).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_subset_and_the_staged_data_dir() {
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("node registered", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move { nodes.get_opt("srv1").await.ok().flatten() }
    })
    .await;
    let kubectl = |args: &[&str]| {
        std::process::Command::new(bin())
            .env(installer_tests::standin::paths::ROOT_ENV, n.root.path())
            .arg("kubectl")
            .args(args)
            .output()
            .unwrap()
    };
    let out = kubectl(&["get", "nodes"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = s.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[2], row[4]),
        ("srv1", "NotReady", "control-plane,etcd", "v1.36.2+k3s1")
    );
    let out = kubectl(&["get", "--raw", "/readyz?verbose"]);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("readyz check passed\n"));
    let out = kubectl(&["get", "namespaces", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "List");
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "Namespace")
    );
    let out = kubectl(&["get", "pods", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    // data/cni holds the plugin links the installer points /opt/cni/bin at.
    for p in ["bridge", "host-local", "loopback", "portmap"] {
        let l = n.path(&format!("/var/lib/rancher/k3s/data/cni/{p}"));
        let target = std::fs::read_link(&l).unwrap();
        assert!(target.ends_with("bin/cni"), "{target:?}");
        assert!(l.exists(), "{p} resolves");
    }
    assert!(
        std::fs::symlink_metadata(n.path("/var/lib/rancher/k3s/data/current"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_namespace_deletes_its_contents_first() {
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
    )
    .unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    // The namespace controller gives every namespace its root CA ConfigMap.
    wait_for("kube-root-ca.crt", Duration::from_secs(10), || {
        let cms = cms.clone();
        async move { cms.get_opt("kube-root-ca.crt").await.ok().flatten() }
    })
    .await;
    nss.delete("app", &DeleteParams::default()).await.unwrap();
    wait_for("namespace gone", Duration::from_secs(20), || {
        let nss = nss.clone();
        async move {
            nss.get_opt("app")
                .await
                .ok()
                .filter(Option::is_none)
                .map(|_| ())
        }
    })
    .await;
    let err = cms.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})).unwrap()).await.unwrap_err();
    assert!(
        err.to_string().contains("namespaces \"app\" not found"),
        "{err}"
    );
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

async fn get_table(client: &kube::Client, path: &str) -> serde_json::Value {
    let req = axum::http::Request::get(path)
        .header("accept", TABLE_ACCEPT)
        .body(Vec::new())
        .unwrap();
    serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap()
}

fn column_names(t: &serde_json::Value, priority: u64) -> Vec<String> {
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == priority)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_tables_with_the_apiservers_printer_columns() {
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("node registered", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move { nodes.get_opt("srv1").await.ok().flatten() }
    })
    .await;
    n.write(
        "/etc/cni/net.d/10-local.conflist",
        &conflist("10.42.0.0/24"),
    );
    let t = wait_for("node Ready in the Table", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let t = get_table(&client, "/api/v1/nodes").await;
            (t["rows"][0]["cells"][1] == "Ready").then_some(t)
        }
    })
    .await;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        column_names(&t, 0),
        ["Name", "Status", "Roles", "Age", "Version"]
    );
    assert_eq!(
        column_names(&t, 1),
        [
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let cells = rows[0]["cells"].as_array().unwrap();
    assert_eq!(cells[0], "srv1");
    assert_eq!(cells[2], "control-plane,etcd");
    assert!(
        cells[3].as_str().unwrap().ends_with('s'),
        "age {}",
        cells[3]
    );
    assert_eq!(cells[4], "v1.36.2+k3s1");
    assert_eq!(cells[5], n.ip.to_string());
    assert!(cells[9].as_str().unwrap().starts_with("containerd://"));
    // The row's object is PartialObjectMetadata by default, the object with includeObject=Object.
    assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(rows[0]["object"]["metadata"]["name"], "srv1");
    assert!(rows[0]["object"].get("status").is_none());
    let t = get_table(&client, "/api/v1/nodes/srv1?includeObject=Object").await;
    assert_eq!(t["rows"].as_array().unwrap().len(), 1);
    assert_eq!(t["rows"][0]["object"]["kind"], "Node");
    assert!(t["rows"][0]["object"]["status"]["nodeInfo"].is_object());
    let t = get_table(&client, "/api/v1/nodes?includeObject=None").await;
    assert!(t["rows"][0].get("object").is_none());

    // Pods: one scheduled to srv1 that waits in ContainerCreating (no pause image on this node:
    // the container's waiting reason is the STATUS), one no node fits (Pending, no node).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str| {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "registry.example/none:1", "imagePullPolicy": "Never"}],
                     "nodeSelector": if name == "web" { serde_json::json!({}) } else { serde_json::json!({"nowhere": "true"}) }},
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("web"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("stuck"))
        .await
        .unwrap();
    let t = wait_for(
        "pod web ContainerCreating in the Table",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let t = get_table(&client, "/api/v1/namespaces/default/pods/web").await;
                let c = &t["rows"][0]["cells"];
                (c[1] == "0/1" && c[2] == "ContainerCreating").then_some(t)
            }
        },
    )
    .await;
    assert_eq!(
        column_names(&t, 0),
        ["Name", "Ready", "Status", "Restarts", "Age"]
    );
    assert_eq!(
        column_names(&t, 1),
        ["IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    let c = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(
        (&c[0], &c[3]),
        (&serde_json::json!("web"), &serde_json::json!("0"))
    );
    assert_eq!(c[6], "srv1");
    assert_eq!(
        (&c[7], &c[8]),
        (&serde_json::json!("<none>"), &serde_json::json!("<none>"))
    );
    let t = get_table(&client, "/api/v1/namespaces/default/pods").await;
    let stuck = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "stuck")
        .unwrap();
    assert_eq!(stuck["cells"][1], "0/1");
    assert_eq!(stuck["cells"][2], "Pending");
    assert_eq!(stuck["cells"][6], "<none>");

    // Types without a printer get Name and Age; plain JSON is still the default.
    let t = get_table(&client, "/api/v1/namespaces/default/configmaps").await;
    assert_eq!(column_names(&t, 0), ["Name", "Age"]);
    let req = axum::http::Request::get("/api/v1/nodes")
        .header("accept", "application/json")
        .body(Vec::new())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(v["kind"], "NodeList");
}

/// The `kubectl` on PATH (Debian's kubernetes-client, or any other), if there is one.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_kubectl_prints_its_usual_columns() {
    let Some(kubectl) = real_kubectl_or_skip() else {
        return;
    };
    let n = first_server("srv1", "");
    let client = client(&n).await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("node registered", Duration::from_secs(20), || {
        let nodes = nodes.clone();
        async move { nodes.get_opt("srv1").await.ok().flatten() }
    })
    .await;
    let kc = KubectlRun::new(kubectl, n.path("/etc/rancher/k3s/k3s.yaml"));
    let run = |args: &[&str]| kc.run(args);
    let s = run(&["get", "nodes"]);
    let mut lines = s.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], "{s}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[2], row[4]),
        ("srv1", "NotReady", "control-plane,etcd", "v1.36.2+k3s1"),
        "{s}"
    );
    let s = run(&["get", "nodes", "-o", "wide"]);
    let header = s.lines().next().unwrap();
    assert!(
        header.contains("INTERNAL-IP") && header.contains("CONTAINER-RUNTIME"),
        "{s}"
    );
    assert!(s.contains(&n.ip.to_string()), "{s}");
    let s = run(&["get", "namespaces"]);
    assert!(s.starts_with("NAME"), "{s}");
    let header: Vec<&str> = s.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE"], "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("kube-system") && l.contains("Active")),
        "{s}"
    );
}
