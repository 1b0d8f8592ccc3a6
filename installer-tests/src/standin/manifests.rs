//! Packaged components and auto-deploying manifests (`pkg/deploy`, `pkg/cli/cmds/stage.go`).
//!
//! At start k3s writes its packaged manifests to `${data-dir}/server/manifests/` — coredns,
//! local-storage, metrics-server and traefik — except those named in `disable`, whose files are
//! removed (and whose objects are deleted). The deploy controller then applies every `.yaml`,
//! `.yml` and `.json` file in that directory (files with a `<name>.skip` companion are skipped)
//! and keeps re-applying them; objects from a removed file are deleted. In an airgap the packaged
//! components' images exist only if the k3s airgap image archive is in `agent/images/`, so a
//! component left enabled without it sits in `ImagePullBackOff`, and traefik's LoadBalancer
//! Service makes ServiceLB take ports 80 and 443 on every node, as with real k3s.
//!
//! The stand-in's manifests are reduced to the objects that matter for scheduling and ports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::log;
use super::server::Server;
use super::store::resources;

fn tolerations() -> Value {
    json!([
        {"key": "CriticalAddonsOnly", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    ])
}

fn deployment(name: &str, image: &str, ports: Value, extra: Value) -> Value {
    let mut c =
        json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "ports": ports});
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            c[k] = v.clone();
        }
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"k8s-app": name}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": name}},
            "template": {
                "metadata": {"labels": {"k8s-app": name}},
                "spec": {"priorityClassName": "system-cluster-critical", "serviceAccountName": name, "tolerations": tolerations(), "nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [c]},
            },
        },
    })
}

fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "kube-system"}})
}

/// The packaged manifests, by file name (`manifests/<name>.yaml`) and `disable` key.
fn packaged(cluster_dns: &str) -> Vec<(&'static str, &'static str, Vec<Value>)> {
    vec![
        (
            "coredns",
            "coredns.yaml",
            vec![
                service_account("coredns"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {"Corefile": ".:53 {\n    errors\n    health\n    ready\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n    loop\n    reload\n    loadbalance\n}\n"}}),
                deployment(
                    "coredns",
                    "rancher/mirrored-coredns-coredns:1.12.3",
                    json!([{"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}]),
                    json!({"readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"}}, "livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"}}}),
                ),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
                       "spec": {"selector": {"k8s-app": "coredns"}, "clusterIP": cluster_dns, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}, {"name": "metrics", "port": 9153, "protocol": "TCP"}]}}),
            ],
        ),
        (
            "local-storage",
            "local-storage.yaml",
            vec![
                service_account("local-path-provisioner-service-account"),
                deployment(
                    "local-path-provisioner",
                    "rancher/local-path-provisioner:v0.0.32",
                    json!([]),
                    json!({}),
                ),
            ],
        ),
        (
            "metrics-server",
            "metrics-server/metrics-server-deployment.yaml",
            vec![
                service_account("metrics-server"),
                deployment(
                    "metrics-server",
                    "rancher/mirrored-metrics-server:v0.8.0",
                    json!([{"name": "https", "containerPort": 10250, "protocol": "TCP"}]),
                    json!({"args": ["--cert-dir=/tmp", "--secure-port=10250", "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname"]}),
                ),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-server", "namespace": "kube-system"}, "spec": {"selector": {"k8s-app": "metrics-server"}, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}]}}),
            ],
        ),
        (
            "traefik",
            "traefik.yaml",
            vec![
                service_account("traefik"),
                deployment(
                    "traefik",
                    "rancher/mirrored-library-traefik:3.3.6",
                    json!([{"name": "web", "containerPort": 8000, "protocol": "TCP"}, {"name": "websecure", "containerPort": 8443, "protocol": "TCP"}]),
                    json!({}),
                ),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "traefik", "namespace": "kube-system"}, "spec": {"type": "LoadBalancer", "selector": {"k8s-app": "traefik"}, "ports": [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": "web"}, {"name": "websecure", "port": 443, "protocol": "TCP", "targetPort": "websecure"}]}}),
            ],
        ),
    ]
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            manifest_files(&p, out);
            continue;
        }
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let mut skip = p.clone().into_os_string();
        skip.push(".skip");
        if Path::new(&skip).exists() {
            continue;
        }
        out.push(p);
    }
}

fn object_path(obj: &Value) -> Option<(String, String)> {
    let rt = resources::by_kind(obj["apiVersion"].as_str()?, obj["kind"].as_str()?)?;
    let name = obj.pointer("/metadata/name").and_then(Value::as_str)?;
    let prefix = if rt.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}", rt.api_version())
    };
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let base = if rt.namespaced {
        format!("{prefix}/namespaces/{ns}/{}", rt.plural)
    } else {
        format!("{prefix}/{}", rt.plural)
    };
    Some((format!("{base}/{name}"), base))
}

/// Write the packaged manifests and keep applying the manifests directory.
pub async fn run(srv: Arc<Server>) {
    while !srv.api_ready() {
        if srv.shutdown.is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dir = srv.server_dir.join("manifests");
    let _ = std::fs::create_dir_all(&dir);
    for (key, file, objs) in packaged(&srv.cfg.cluster_dns) {
        let path = dir.join(file);
        if srv.cfg.disable.iter().any(|d| d == key) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let text: Vec<String> = objs
            .iter()
            .map(|o| serde_json::to_string_pretty(o).unwrap_or_default())
            .collect();
        let _ = super::tls_files::write_file(
            &path,
            format!("{}\n", text.join("\n---\n")).as_bytes(),
            0o600,
        );
    }
    let client = match super::client::with_ca(&srv.pki.server_ca.cert_pem, Some(&srv.admin)) {
        Ok(c) => c,
        Err(e) => {
            log::error(format!("deploy controller: {e}"));
            return;
        }
    };
    let manager = format!("deploy@{}", srv.cfg.node.node_name);
    let mut applied: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let state_file = srv.server_dir.join("db/standin/addons.json");
    if let Ok(t) = std::fs::read_to_string(&state_file)
        && let Ok(v) = serde_json::from_str(&t)
    {
        applied = v;
    }
    loop {
        let mut files = Vec::new();
        manifest_files(&dir, &mut files);
        let mut now_applied: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            let docs: Vec<Value> = match serde_saphyr::from_multiple::<Value>(&text) {
                Ok(d) => d,
                Err(e) => {
                    log::error(format!(
                        "Failed to process config: failed to parse {}: {e}",
                        f.display()
                    ));
                    continue;
                }
            };
            let mut objs = BTreeSet::new();
            for doc in docs.into_iter().filter(|d| d.is_object()) {
                let Some((path, _)) = object_path(&doc) else {
                    log::error(format!(
                        "Failed to process config: failed to process {}: no matches for kind \"{}\" in version \"{}\"",
                        f.display(),
                        doc["kind"].as_str().unwrap_or_default(),
                        doc["apiVersion"].as_str().unwrap_or_default()
                    ));
                    continue;
                };
                let url = format!("{}{path}?fieldManager={manager}&force=true", srv.local_url);
                match client
                    .patch(&url)
                    .header("content-type", "application/apply-patch+yaml")
                    .body(serde_json::to_vec(&doc).unwrap_or_default())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        objs.insert(path);
                    }
                    Ok(r) => {
                        let code = r.status();
                        let body: Value = r.json().await.unwrap_or_default();
                        log::error(format!(
                            "Failed to process config: failed to create {path}: {} {}",
                            code.as_u16(),
                            body["message"].as_str().unwrap_or_default()
                        ));
                    }
                    Err(e) => log::debug(format!("deploy controller: {e}")),
                }
            }
            now_applied.insert(f.clone(), objs);
        }
        // Objects from files that are gone are deleted.
        for (f, objs) in &applied {
            if now_applied.contains_key(f) {
                continue;
            }
            for path in objs {
                let _ = client
                    .delete(format!("{}{path}", srv.local_url))
                    .send()
                    .await;
            }
            log::info(format!(
                "Deleted objects from removed manifest {}",
                f.display()
            ));
        }
        if now_applied != applied {
            applied = now_applied;
            let _ = super::tls_files::write_file(
                &state_file,
                serde_json::to_string(&applied)
                    .unwrap_or_default()
                    .as_bytes(),
                0o600,
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = srv.shutdown.cancelled() => return,
        }
    }
}
