//! The node agent: what k3s's agent, kubelet and containerd do on each node, as far as the
//! installer can see it.
//!
//! - Agent configuration (`pkg/agent/config/config.go`): the node password in
//!   `/etc/rancher/node/password` and the kubelet certificates are fetched from the supervisor,
//!   retried every 5 s with `Waiting to retrieve agent configuration; server is not ready: ...`;
//!   a rejected node password logs k3s's `Node password rejected, duplicate hostname ...`.
//! - Registration (`pkg/agent/run.go`, the kubelet): the Node object with k3s's labels
//!   (`node-role.kubernetes.io/control-plane`/`etcd` on servers, `node.kubernetes.io/instance-type=k3s`),
//!   annotations (`k3s.io/hostname`, `k3s.io/internal-ip`, `k3s.io/node-args`, ...), addresses,
//!   `nodeInfo` (kubeletVersion = the k3s version, `containerd://2.1.5-k3s1`), capacity, and the
//!   images it holds.
//! - Readiness: `Ready` only once a CNI config exists in this node's `/etc/cni/net.d`
//!   (`runtime::cni_ready`); otherwise `Ready=False`, `KubeletNotReady`, with containerd's message.
//! - Pods bound to this node: sandbox, images and probes as in [`pods`]; hostNetwork containers
//!   get real listeners through [`shim`]; graceful deletion is confirmed once they are stopped.
//! - The ports k3s's own components hold on every node (kubelet 10250/10248, kube-proxy
//!   10249/10256, containerd 10010, the agent load balancer 6444; on servers also etcd
//!   2379/2380 and the controller-manager, cloud-controller and scheduler 10257-10259) are bound,
//!   so an application that wants one of them fails to bind, as it would next to real k3s.

pub mod cgroups;
pub mod container;
pub mod logs;
pub mod pods;
mod real;
pub mod runc;
pub mod runtime;
pub mod shim;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client;
use super::config::NodeConfig;
use super::faults::LiveFaults;
use super::log;
use super::paths::{Root, k3s};
use super::pki::CertKey;
use super::store::{new_uid, now};
use crate::images::normalize;
use pods::{Blocker, ImageState, Run};

/// What the agent needs to start.
pub struct AgentSetup {
    pub root: Root,
    pub node: NodeConfig,
    /// The supervisor/API URL to use.
    pub server_url: String,
    /// The cluster's server CA.
    pub ca_pem: String,
    /// The `node` user's password.
    pub node_pw: String,
    /// Label the node as an etcd member.
    pub server_roles: bool,
    /// Label the node as control-plane.
    pub control_plane: bool,
    pub faults: LiveFaults,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// A minimal Kubernetes API client over the node's credentials, failing over between servers.
pub struct Kube {
    urls: Vec<String>,
    client: reqwest::Client,
    current: std::sync::atomic::AtomicUsize,
}

impl Kube {
    /// A client for `urls` trusting `ca_pem` with identity `id`.
    pub fn new(urls: Vec<String>, ca_pem: &str, id: &CertKey) -> anyhow::Result<Kube> {
        Ok(Kube {
            urls,
            client: client::with_ca(ca_pem, Some(id))?,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Send a request; returns the status code and JSON body.
    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        ct: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let n = self.urls.len().max(1);
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!(
                "{}{}",
                self.urls.get(idx).cloned().unwrap_or_default(),
                path
            );
            let mut rb = self
                .client
                .request(method.clone(), &url)
                .header("user-agent", "k3s/kubelet");
            if let Some(b) = body {
                rb = rb
                    .header("content-type", ct.unwrap_or("application/json"))
                    .body(serde_json::to_vec(b).unwrap_or_default());
            }
            match rb.send().await {
                Ok(resp) => {
                    self.current
                        .store(idx, std::sync::atomic::Ordering::Relaxed);
                    let code = resp.status().as_u16();
                    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
                    if code == 503 && i + 1 < n {
                        last = format!("{url}: 503");
                        continue;
                    }
                    return Ok((code, v));
                }
                Err(e) => last = client::go_error(method.as_str(), &url, &e),
            }
        }
        Err(last)
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.req(reqwest::Method::GET, path, None, None).await
    }
}

fn ensure_node_password(root: &Root) -> std::io::Result<String> {
    // pkg/agent/config/config.go ensureNodePassword.
    let p = root.path(k3s::NODE_PASSWORD);
    if let Ok(s) = std::fs::read_to_string(&p) {
        return Ok(s.trim().to_string());
    }
    let pw = hex::encode(rand::random::<[u8; 16]>());
    super::tls_files::write_file(&p, format!("{pw}\n").as_bytes(), 0o600)
        .map_err(std::io::Error::other)?;
    Ok(pw)
}

/// Fetch the kubelet client certificate (and have the node password checked).
async fn node_certs(setup: &AgentSetup, node_password: &str) -> Result<CertKey, String> {
    let url = format!(
        "{}/v1-k3s/serving-kubelet.crt",
        setup.server_url.trim_end_matches('/')
    );
    let http = client::with_ca(&setup.ca_pem, None).map_err(|e| e.to_string())?;
    let resp = http
        .get(&url)
        .basic_auth("node", Some(&setup.node_pw))
        .header("k3s-Node-Name", &setup.node.node_name)
        .header("k3s-Node-Password", node_password)
        .header("k3s-Node-IP", setup.node.node_ips.join(","))
        .send()
        .await
        .map_err(|e| client::go_error("GET", &url, &e))?;
    let code = resp.status();
    if code.as_u16() == 403 {
        return Err(format!(
            "Node password rejected, duplicate hostname or contents of '{}' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag",
            k3s::NODE_PASSWORD
        ));
    }
    if !code.is_success() {
        return Err(format!("{url}: {}", client::status_text(code)));
    }
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(CertKey {
        cert_pem: v["cert"].as_str().unwrap_or_default().to_string(),
        key_pem: v["key"].as_str().unwrap_or_default().to_string(),
    })
}

/// The kubelet's API on 10250: `GET /containerLogs/{namespace}/{pod}/{container}` (see [`logs`]),
/// over TLS with a self-signed serving certificate, as a kubelet without `--tls-cert-file`
/// generates one. Differences: k3s gives its kubelet a serving certificate signed by the server
/// CA, and the kubelet authenticates the apiserver's client certificate; here any client may read.
async fn serve_kubelet_api(setup: &AgentSetup, node_ip: &str) {
    let name = setup.node.node_name.clone();
    let tls = super::pki::new_ca(&format!("{name}-ca"))
        .and_then(|ca| super::pki::issue_server(&ca, &name, &[node_ip.to_string(), name.clone()]))
        .and_then(|ck| super::api::tls_config(&ck.cert_pem, &ck.key_pem, None));
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            log::error(format!("kubelet serving certificate: {e:#}"));
            return;
        }
    };
    let ip = setup.root.host_bind_ip(node_ip, "0.0.0.0");
    let listener = match tokio::net::TcpListener::bind((ip.as_str(), 10250)).await {
        Ok(l) => l,
        Err(e) => {
            log::error(format!("Failed to listen on {ip}:10250: {e}"));
            return;
        }
    };
    let root = setup.root.clone();
    let router = axum::Router::new().route(
        "/containerLogs/{ns}/{pod}/{container}",
        axum::routing::get(
            move |axum::extract::Path((ns, pod, container)): axum::extract::Path<(
                String,
                String,
                String,
            )>,
                  axum::extract::RawQuery(q): axum::extract::RawQuery| {
                let root = root.clone();
                async move {
                    use axum::http::StatusCode;
                    use axum::response::IntoResponse;
                    let params = super::api::kube::url_decode_pairs(q.as_deref().unwrap_or(""));
                    let query = logs::Query::from_params(&params);
                    let r = if query.follow && !query.previous {
                        logs::follow(&root, &ns, &pod, &container, &query).map(|s| {
                            (StatusCode::OK, axum::body::Body::from_stream(s)).into_response()
                        })
                    } else {
                        logs::read(&root, &ns, &pod, &container, &query)
                            .map(|text| (StatusCode::OK, text).into_response())
                    };
                    match r {
                        Ok(resp) => resp,
                        Err(logs::LogError::NotFound(m)) => {
                            (StatusCode::NOT_FOUND, m).into_response()
                        }
                        Err(logs::LogError::BadRequest(m)) => {
                            (StatusCode::BAD_REQUEST, m).into_response()
                        }
                    }
                }
            },
        ),
    );
    tokio::spawn(super::api::serve_tls(
        listener,
        tls,
        router,
        setup.shutdown.clone(),
    ));
}

/// Bind the ports k3s's own components hold on a node.
fn reserve_ports(root: &Root, node_ip: &str, server: bool) -> Vec<std::net::TcpListener> {
    // 10250 is served by [`serve_kubelet_api`].
    let mut ports: Vec<(&str, u16)> = vec![
        ("127.0.0.1", 10248),
        ("127.0.0.1", 10249),
        ("0.0.0.0", 10256),
        ("127.0.0.1", 10010),
        ("127.0.0.1", 6444),
    ];
    if server {
        ports.extend([
            ("127.0.0.1", 2379),
            ("0.0.0.0", 2380),
            ("127.0.0.1", 10257),
            ("127.0.0.1", 10258),
            ("127.0.0.1", 10259),
        ]);
    }
    let mut out = Vec::new();
    for (normal, port) in ports {
        let ip = root.host_bind_ip(node_ip, normal);
        match std::net::TcpListener::bind((ip.as_str(), port)) {
            Ok(l) => out.push(l),
            Err(e) => log::error(format!("Failed to listen on {ip}:{port}: {e}")),
        }
    }
    out
}

fn os_image(root: &Root) -> String {
    std::fs::read_to_string(root.path(k3s::OS_RELEASE))
        .or_else(|_| std::fs::read_to_string(k3s::OS_RELEASE))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn read_trim(p: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn mem_kib() -> u64 {
    read_trim("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// One pod's local bookkeeping.
#[derive(Default)]
struct PodLocal {
    started: BTreeMap<String, String>,
    ready: BTreeMap<String, bool>,
    restarts: BTreeMap<String, i64>,
    crash: BTreeMap<String, (String, String, String, Instant, u64)>,
    shims: BTreeMap<String, (u32, PathBuf)>,
    pull_attempts: BTreeMap<String, (u32, Instant)>,
    completed: BTreeMap<String, (String, String)>,
    init_done: BTreeMap<String, (String, String)>,
    pod_ip: String,
    start_time: String,
    once: BTreeSet<String>,
    /// Real containers (runc), by name.
    real: BTreeMap<String, real::RealState>,
    /// Real containers' last termination, for the status.
    last_terminated: BTreeMap<String, Value>,
}

struct EventRec {
    name: String,
    count: i64,
    last: Instant,
}

/// The kubelet loop for one node.
struct Kubelet {
    setup: AgentSetup,
    kube: Kube,
    images: runtime::ImageStore,
    present: BTreeMap<String, u64>,
    pods: BTreeMap<String, PodLocal>,
    events: BTreeMap<(String, String, String), EventRec>,
    last_status: Value,
    last_heartbeat: Instant,
    probe: reqwest::Client,
    run_dir: PathBuf,
    lost: bool,
    node_ip: String,
    pod_cidr: String,
    next_ip: u32,
}

impl Kubelet {
    fn images_dir(&self) -> PathBuf {
        self.setup
            .root
            .path(self.setup.node.data_dir.join("agent/images"))
    }

    fn labels(&self) -> Value {
        let n = &self.setup.node.node_name;
        let mut l = json!({
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/instance-type": "k3s",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": n,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "k3s",
        });
        if self.setup.control_plane {
            l["node-role.kubernetes.io/control-plane"] = json!("true");
        }
        if self.setup.server_roles {
            l["node-role.kubernetes.io/etcd"] = json!("true");
        }
        for kv in &self.setup.node.node_labels {
            if let Some((k, v)) = kv.split_once('=') {
                l[k] = json!(v);
            } else {
                l[kv.as_str()] = json!("");
            }
        }
        l
    }

    fn taints(&self) -> Vec<Value> {
        // `--node-taint key=value:Effect` (or `key:Effect`).
        self.setup
            .node
            .node_taints
            .iter()
            .filter_map(|t| {
                let (kv, effect) = t.rsplit_once(':')?;
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let mut o = json!({"key": k, "effect": effect});
                if !v.is_empty() {
                    o["value"] = json!(v);
                }
                Some(o)
            })
            .collect()
    }

    fn node_status(&self, cni: bool, heartbeat: &str, old: &Value) -> Value {
        let cond = |ty: &str, status: &str, reason: &str, message: &str| {
            let prev = old
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
            let ltt = match prev {
                Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
                _ => json!(heartbeat),
            };
            json!({"type": ty, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": heartbeat, "lastTransitionTime": ltt})
        };
        let ready = if cni {
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            )
        } else {
            cond("Ready", "False", "KubeletNotReady", runtime::CNI_NOT_READY)
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mem = format!("{}Ki", mem_kib());
        let disk = rustix::fs::statvfs(self.setup.root.path(&self.setup.node.data_dir).as_path())
            .or_else(|_| rustix::fs::statvfs("/"))
            .map(|s| format!("{}Ki", s.f_blocks * s.f_frsize / 1024))
            .unwrap_or_else(|_| "0".into());
        let capacity = json!({"cpu": cpus.to_string(), "memory": mem, "pods": "110", "ephemeral-storage": disk, "hugepages-1Gi": "0", "hugepages-2Mi": "0"});
        let images: Vec<Value> = self
            .present
            .iter()
            .map(|(n, size)| json!({"names": [n], "sizeBytes": size}))
            .collect();
        let mut addresses: Vec<Value> = self
            .setup
            .node
            .node_ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": self.setup.node.node_name}));
        let uname = rustix::system::uname();
        let machine_id = read_trim(self.setup.root.path(k3s::MACHINE_ID));
        json!({
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                ready,
            ],
            "addresses": addresses,
            "capacity": capacity,
            "allocatable": capacity,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": machine_id,
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": uname.release().to_string_lossy(),
                "osImage": os_image(&self.setup.root),
                "containerRuntimeVersion": "containerd://2.1.5-k3s1",
                "kubeletVersion": super::version::current(),
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
        })
    }

    /// Register or update the Node; returns it.
    async fn sync_node(&mut self, cni: bool) -> Option<Value> {
        let name = self.setup.node.node_name.clone();
        let path = format!("/api/v1/nodes/{name}");
        let (code, node) = match self.kube.get(&path).await {
            Ok(x) => x,
            Err(e) => {
                log::debug(format!("kubelet: get node: {e}"));
                return None;
            }
        };
        let heartbeat = now();
        if code == 404 {
            log::info(format!("Attempting to register node {name}"));
            let node_args = serde_json::to_string(&self.setup.node.node_args).unwrap_or_default();
            let body = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": self.labels(),
                    "annotations": {
                        "alpha.kubernetes.io/provided-node-ip": self.setup.node.node_ips.join(","),
                        "k3s.io/hostname": super::config::hostname(),
                        "k3s.io/internal-ip": self.setup.node.node_ips.join(","),
                        "k3s.io/node-args": node_args,
                        "k3s.io/node-config-hash": format!("{:X}", u64::from_be_bytes(sha_prefix(&node_args))),
                        "k3s.io/node-env": "{}",
                        "node.alpha.kubernetes.io/ttl": "0",
                        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                    },
                },
                "spec": {"taints": self.taints()},
                "status": self.node_status(cni, &heartbeat, &Value::Null),
            });
            match self
                .kube
                .req(reqwest::Method::POST, "/api/v1/nodes", None, Some(&body))
                .await
            {
                Ok((201, v)) => {
                    log::info(format!("Successfully registered node {name}"));
                    self.last_heartbeat = Instant::now();
                    return Some(v);
                }
                Ok((c, v)) => {
                    log::warn(format!(
                        "Unable to register node with API server: {c} {}",
                        v["message"].as_str().unwrap_or_default()
                    ));
                    return None;
                }
                Err(e) => {
                    log::warn(format!("Unable to register node with API server: {e}"));
                    return None;
                }
            }
        }
        if code != 200 {
            return None;
        }
        if let Some(cidr) = node.pointer("/spec/podCIDR").and_then(Value::as_str) {
            self.pod_cidr = cidr.to_string();
        }
        let mut status = self.node_status(cni, &heartbeat, &node);
        let strip = |v: &Value| {
            let mut v = v.clone();
            for c in v["conditions"].as_array_mut().into_iter().flatten() {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastHeartbeatTime");
                    m.remove("lastTransitionTime");
                }
            }
            v
        };
        let changed = strip(&status) != strip(&self.last_status)
            || strip(node.get("status").unwrap_or(&Value::Null)) != strip(&status);
        if changed || self.last_heartbeat.elapsed() >= Duration::from_secs(10) {
            if !changed {
                status = self.node_status(cni, &heartbeat, &node);
            }
            let patch = json!({"status": status});
            match self
                .kube
                .req(
                    reqwest::Method::PATCH,
                    &format!("{path}/status"),
                    Some("application/merge-patch+json"),
                    Some(&patch),
                )
                .await
            {
                Ok((200, v)) => {
                    self.last_status = status;
                    self.last_heartbeat = Instant::now();
                    return Some(v);
                }
                Ok((c, v)) => log::debug(format!("kubelet: node status: {c} {v}")),
                Err(e) => log::debug(format!("kubelet: node status: {e}")),
            }
        }
        Some(node)
    }

    async fn event(
        &mut self,
        pod: &Value,
        ty: &str,
        reason: &str,
        message: &str,
        container: Option<&str>,
    ) {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let pname = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let ts = now();
        if let Some(rec) = self.events.get_mut(&key) {
            if rec.last.elapsed() < Duration::from_secs(10) {
                return;
            }
            rec.count += 1;
            rec.last = Instant::now();
            let patch = json!({"count": rec.count, "lastTimestamp": ts});
            let path = format!("/api/v1/namespaces/{ns}/events/{}", rec.name);
            let _ = self
                .kube
                .req(
                    reqwest::Method::PATCH,
                    &path,
                    Some("application/merge-patch+json"),
                    Some(&patch),
                )
                .await;
            return;
        }
        let name = format!("{pname}.{}", &new_uid().replace('-', "")[..16]);
        let mut involved = json!({"kind": "Pod", "namespace": ns, "name": pname, "uid": uid, "apiVersion": "v1", "resourceVersion": pod.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
        if let Some(c) = container {
            involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
        }
        let body = json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.setup.node.node_name},
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
            "type": ty,
            "eventTime": null,
            "reportingComponent": "kubelet",
            "reportingInstance": self.setup.node.node_name,
        });
        let _ = self
            .kube
            .req(
                reqwest::Method::POST,
                &format!("/api/v1/namespaces/{ns}/events"),
                None,
                Some(&body),
            )
            .await;
        self.events.insert(
            key,
            EventRec {
                name,
                count: 1,
                last: Instant::now(),
            },
        );
    }

    fn bind_ip(&self) -> String {
        self.setup.root.host_bind_ip(&self.node_ip, "0.0.0.0")
    }

    fn alloc_pod_ip(&mut self) -> String {
        let Some((net, _)) = super::store::admission::parse_cidr(&self.pod_cidr) else {
            return String::new();
        };
        self.next_ip += 1;
        std::net::Ipv4Addr::from(u32::from(net) + 1 + self.next_ip).to_string()
    }

    async fn probe_ok(&self, container: &Value, probe: &Value) -> Result<(), String> {
        // A test made this container's application unhealthy (faults file).
        let name = container["name"].as_str().unwrap_or("");
        if self
            .setup
            .faults
            .get()
            .unhealthy_containers
            .iter()
            .any(|c| c == name)
        {
            return Err("HTTP probe failed with statuscode: 503".into());
        }
        if let Some(hg) = probe.get("httpGet") {
            let Some(port) = pods::probe_port(container, &hg["port"]) else {
                return Err("invalid probe port".into());
            };
            let scheme = if hg["scheme"].as_str() == Some("HTTPS") {
                "https"
            } else {
                "http"
            };
            let host = hg["host"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| self.node_ip.clone());
            let path = hg["path"].as_str().unwrap_or("/");
            let url = format!("{scheme}://{host}:{port}{path}");
            return match self.probe.get(&url).send().await {
                Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
                Ok(r) => Err(format!(
                    "HTTP probe failed with statuscode: {}",
                    r.status().as_u16()
                )),
                Err(e) => Err(client::go_error("GET", &url, &e)),
            };
        }
        if let Some(ts) = probe.get("tcpSocket") {
            let Some(port) = pods::probe_port(container, &ts["port"]) else {
                return Err("invalid probe port".into());
            };
            let addr = format!("{}:{port}", self.node_ip);
            return match tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            };
        }
        Ok(())
    }

    /// Stop every shim of a pod.
    /// Stop every container of a pod: simulated ones at once, real ones through their shim's
    /// graceful stop (SIGTERM, the grace period, SIGKILL). Returns true once none runs any more
    /// (the pod's directory and cgroups are then removed).
    fn stop_pod(&mut self, uid: &str) -> bool {
        if let Some(local) = self.pods.get_mut(uid) {
            for (_, (pid, _)) in std::mem::take(&mut local.shims) {
                shim::stop(pid);
            }
        }
        let dir = self.run_dir.join("pods").join(uid);
        let mut alive = false;
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for c in rd.flatten() {
                if runc::is_real(&c.path()) {
                    if let Some(st) = runc::status(&c.path())
                        && real::real_alive(&c.path())
                    {
                        shim::stop(st.pid);
                        alive = true;
                    }
                } else if let Some(st) = shim::status(&c.path())
                    && shim::alive(st.pid, &c.path())
                {
                    shim::stop(st.pid);
                }
            }
        }
        if alive {
            return false;
        }
        remove_pod_dir(&dir);
        if !self.setup.root.is_prefixed() {
            let paths: Vec<String> = ["Guaranteed", "Burstable", "BestEffort"]
                .iter()
                .map(|q| cgroups::pod_path(q, uid))
                .collect();
            cgroups::remove_pod(std::path::Path::new("/sys/fs/cgroup"), &paths);
        }
        true
    }

    async fn sync_pods(&mut self, cni: bool) {
        let sel = format!("spec.nodeName%3D{}", self.setup.node.node_name);
        let (code, list) = match self
            .kube
            .get(&format!("/api/v1/pods?fieldSelector={sel}"))
            .await
        {
            Ok(x) => x,
            Err(_) => return,
        };
        if code != 200 {
            return;
        }
        let items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        let live: BTreeSet<String> = items
            .iter()
            .filter_map(|p| {
                p.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        // Pods that are gone: stop their containers.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !live.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            self.stop_pod(&uid);
            self.pods.remove(&uid);
            logs::remove_pod(&self.setup.root, &uid);
        }
        // Orphaned shims from an earlier run of this process.
        if let Ok(rd) = std::fs::read_dir(self.run_dir.join("pods")) {
            for e in rd.flatten() {
                let uid = e.file_name().to_string_lossy().to_string();
                if !live.contains(&uid) {
                    self.stop_pod(&uid);
                }
            }
        }
        for pod in items {
            let mut pod = pod;
            if pod.get("kind").is_none() {
                pod["kind"] = json!("Pod");
            }
            self.sync_pod(&pod, cni).await;
        }
    }

    async fn sync_pod(&mut self, pod: &Value, cni: bool) {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let host_network = pod
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            let containers: Vec<String> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            if !self
                .pods
                .get(&uid)
                .is_some_and(|l| l.once.contains("killing"))
            {
                for c in &containers {
                    self.event(
                        pod,
                        "Normal",
                        "Killing",
                        &format!("Stopping container {c}"),
                        Some(c),
                    )
                    .await;
                }
                self.pods
                    .entry(uid.clone())
                    .or_default()
                    .once
                    .insert("killing".into());
            }
            if !self.stop_pod(&uid) {
                // Real containers are still stopping (their grace period); delete once they are gone.
                return;
            }
            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
            let _ = self
                .kube
                .req(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/namespaces/{ns}/pods/{name}"),
                    None,
                    Some(&body),
                )
                .await;
            return;
        }
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending")
            .to_string();
        if phase == "Succeeded" || phase == "Failed" {
            self.stop_pod(&uid);
            return;
        }
        let pause = normalize(&self.setup.node.pause_image);
        let plan = pods::plan(pod, &self.present, cni, &pause);
        let ts = now();
        let mut local = self.pods.remove(&uid).unwrap_or_default();
        if local.start_time.is_empty() {
            local.start_time = pod
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| ts.clone());
            for c in pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(n), Some(r)) = (c["name"].as_str(), c["restartCount"].as_i64()) {
                    local.restarts.insert(n.to_string(), r);
                }
                if let (Some(n), Some(s)) = (
                    c["name"].as_str(),
                    c.pointer("/state/running/startedAt")
                        .and_then(Value::as_str),
                ) {
                    local.started.insert(n.to_string(), s.to_string());
                }
            }
        }
        if local.pod_ip.is_empty() {
            local.pod_ip = if host_network {
                self.node_ip.clone()
            } else {
                pod.pointer("/status/podIP")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_default()
            };
        }
        let mut init_runs: BTreeMap<String, Run> = BTreeMap::new();
        let mut runs: BTreeMap<String, Run> = BTreeMap::new();
        let mut pending_events: Vec<(String, String, String, Option<String>)> = Vec::new();
        match &plan.blocker {
            Some(Blocker::SandboxImage(msg)) => {
                pending_events.push((
                    "Warning".into(),
                    "FailedCreatePodSandBox".into(),
                    msg.clone(),
                    None,
                ));
            }
            Some(Blocker::Network) => {
                pending_events.push((
                    "Warning".into(),
                    "NetworkNotReady".into(),
                    format!("network is not ready: {}", runtime::CNI_NOT_READY),
                    None,
                ));
            }
            None => {
                if local.pod_ip.is_empty() {
                    local.pod_ip = self.alloc_pod_ip();
                }
                // Init containers run to completion in order.
                let mut init_ok = true;
                for (cname, image, st) in &plan.init {
                    if let Some((s, f)) = local.init_done.get(cname) {
                        init_runs.insert(
                            cname.clone(),
                            Run::Terminated {
                                reason: "Completed".into(),
                                exit_code: 0,
                                started_at: s.clone(),
                                finished_at: f.clone(),
                            },
                        );
                        continue;
                    }
                    if !init_ok {
                        break;
                    }
                    match image_run(&mut local, cname, image, st, &mut pending_events) {
                        Some(w) => {
                            init_runs.insert(cname.clone(), w);
                            init_ok = false;
                        }
                        None => {
                            local
                                .init_done
                                .insert(cname.clone(), (ts.clone(), ts.clone()));
                            pending_events.push((
                                "Normal".into(),
                                "Created".into(),
                                format!("Created container: {cname}"),
                                Some(cname.clone()),
                            ));
                            pending_events.push((
                                "Normal".into(),
                                "Started".into(),
                                format!("Started container {cname}"),
                                Some(cname.clone()),
                            ));
                            init_runs.insert(
                                cname.clone(),
                                Run::Terminated {
                                    reason: "Completed".into(),
                                    exit_code: 0,
                                    started_at: ts.clone(),
                                    finished_at: ts.clone(),
                                },
                            );
                        }
                    }
                }
                let init_done = plan
                    .init
                    .iter()
                    .all(|(n, _, _)| local.init_done.contains_key(n));
                if init_done {
                    let restart_policy = pod
                        .pointer("/spec/restartPolicy")
                        .and_then(Value::as_str)
                        .unwrap_or("Always")
                        .to_string();
                    let specs: Vec<Value> = pod
                        .pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for (cname, image, st) in &plan.containers {
                        let cspec = specs
                            .iter()
                            .find(|c| c["name"] == cname.as_str())
                            .cloned()
                            .unwrap_or_default();
                        if let Some((s, f)) = local.completed.get(cname) {
                            runs.insert(
                                cname.clone(),
                                Run::Terminated {
                                    reason: "Completed".into(),
                                    exit_code: 0,
                                    started_at: s.clone(),
                                    finished_at: f.clone(),
                                },
                            );
                            continue;
                        }
                        if let Some(w) =
                            image_run(&mut local, cname, image, st, &mut pending_events)
                        {
                            runs.insert(cname.clone(), w);
                            continue;
                        }
                        if host_network
                            && let Some(img) = self.images.runnable(&normalize(image)).cloned()
                        {
                            let run = self
                                .run_real(
                                    pod,
                                    &uid,
                                    &mut local,
                                    cname,
                                    &cspec,
                                    img,
                                    &mut pending_events,
                                )
                                .await;
                            runs.insert(cname.clone(), run);
                            continue;
                        }
                        let run = self
                            .run_container(
                                pod,
                                &uid,
                                &mut local,
                                cname,
                                &cspec,
                                host_network,
                                &mut pending_events,
                            )
                            .await;
                        // Run-to-completion pods finish a moment after starting.
                        let run = match (&run, restart_policy.as_str()) {
                            (Run::Running { started_at, .. }, "Never" | "OnFailure") => {
                                let started = super::store::parse_time(started_at);
                                if started.is_some_and(|s| {
                                    jiff::Timestamp::now().as_second() - s.as_second() >= 1
                                }) {
                                    local
                                        .completed
                                        .insert(cname.clone(), (started_at.clone(), ts.clone()));
                                    if let Some((pid, _)) = local.shims.remove(cname) {
                                        shim::stop(pid);
                                    }
                                    Run::Terminated {
                                        reason: "Completed".into(),
                                        exit_code: 0,
                                        started_at: started_at.clone(),
                                        finished_at: ts.clone(),
                                    }
                                } else {
                                    run
                                }
                            }
                            _ => run,
                        };
                        runs.insert(cname.clone(), run);
                    }
                }
            }
        }
        for (ty, reason, msg, c) in pending_events {
            self.event(pod, &ty, &reason, &msg, c.as_deref()).await;
        }
        let status = pods::build_status(&pods::StatusInput {
            pod,
            plan: &plan,
            init_runs: &init_runs,
            runs: &runs,
            restarts: &local.restarts,
            host_ip: &self.node_ip,
            pod_ip: &local.pod_ip,
            start_time: &local.start_time,
            now: &ts,
            last_terminated: &local.last_terminated,
        });
        self.pods.insert(uid.clone(), local);
        let old = pod.get("status").cloned().unwrap_or(Value::Null);
        if strip_times(&old) != strip_times(&status) {
            let patch = json!({"status": status});
            let _ = self
                .kube
                .req(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
                    Some("application/merge-patch+json"),
                    Some(&patch),
                )
                .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &mut self,
        pod: &Value,
        uid: &str,
        local: &mut PodLocal,
        cname: &str,
        cspec: &Value,
        host_network: bool,
        events: &mut Vec<(String, String, String, Option<String>)>,
    ) -> Run {
        let ts = now();
        let ports = if host_network {
            pods::listen_ports(cspec)
        } else {
            Vec::new()
        };
        let pname = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let pns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // A crashed container waits out its back-off.
        if let Some((msg, ls, lf, retry_at, _)) = local.crash.get(cname).cloned()
            && Instant::now() < retry_at
        {
            return Run::CrashLoop {
                message: msg,
                last_started: ls,
                last_finished: lf,
            };
        }
        if !ports.is_empty() {
            let dir = shim::shim_dir(&self.run_dir, uid, cname);
            let running = match local.shims.get(cname) {
                Some((pid, d)) => shim::alive(*pid, d),
                None => match shim::status(&dir) {
                    // Adopt a shim left by an earlier run of the stand-in.
                    Some(st) if st.state == "running" && shim::alive(st.pid, &dir) => {
                        local.shims.insert(cname.to_string(), (st.pid, dir.clone()));
                        true
                    }
                    _ => false,
                },
            };
            if !running {
                local.shims.remove(cname);
                let spec = shim::ShimSpec {
                    pod: format!("{pns}/{pname}"),
                    uid: uid.to_string(),
                    container: cname.to_string(),
                    bind_ip: self.bind_ip(),
                    ports: ports.clone(),
                    cgroup: if self.setup.root.is_prefixed() {
                        String::new()
                    } else {
                        cgroups::container_path(
                            pods::qos_class(pod),
                            uid,
                            &hex::encode(sha_prefix(&format!("{uid}/{cname}"))),
                        )
                    },
                };
                let argv0 = shim::shim_argv0(&self.setup.node.data_dir);
                // Containers modelling CoreDNS answer DNS on their `dns-tcp` port (standin::dns).
                // A container serving HTTPS uses the certificate of the TLS Secret it mounts (standin::secret_volumes).
                let tls = crate::standin::secret_volumes::tls_pair(&self.kube, pod, cspec).await;
                crate::standin::secret_volumes::write(&dir, tls.as_ref());
                crate::standin::dns::DnsPorts::of_container(
                    cspec,
                    crate::standin::dns::DEFAULT_KUBERNETES_IP,
                )
                .write(&dir);
                let pid = match shim::start(&spec, &dir, &argv0) {
                    Ok(p) => p,
                    Err(e) => {
                        log::error(format!(
                            "failed to start container {cname} of {pns}/{pname}: {e}"
                        ));
                        return Run::Waiting {
                            reason: "ContainerCreating".into(),
                            message: String::new(),
                        };
                    }
                };
                // Wait briefly for the shim to bind.
                let mut st = None;
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    st = shim::status(&dir);
                    if st.is_some() {
                        break;
                    }
                }
                match st {
                    Some(s) if s.state == "running" => {
                        local.shims.insert(cname.to_string(), (pid, dir.clone()));
                        local.started.insert(cname.to_string(), ts.clone());
                        local.crash.remove(cname);
                        let listening: Vec<String> = ports
                            .iter()
                            .map(|p| format!("{}/{}", p.port, p.protocol))
                            .collect();
                        let run = local.restarts.get(cname).copied().unwrap_or(0);
                        self.container_log(
                            (pns, pname, uid, cname, run),
                            "stdout",
                            &format!(
                                "k3s stand-in: simulated container {cname} started, listening on {}",
                                listening.join(", ")
                            ),
                        );
                        events.push((
                            "Normal".into(),
                            "Created".into(),
                            format!("Created container: {cname}"),
                            Some(cname.to_string()),
                        ));
                        events.push((
                            "Normal".into(),
                            "Started".into(),
                            format!("Started container {cname}"),
                            Some(cname.to_string()),
                        ));
                    }
                    Some(s) => {
                        let restarts = local.restarts.entry(cname.to_string()).or_insert(0);
                        let prev = local.crash.get(cname).map(|c| c.4).unwrap_or(5);
                        let backoff = (prev * 2).min(300);
                        if local.started.contains_key(cname) || local.crash.contains_key(cname) {
                            *restarts += 1;
                        }
                        let run = *restarts;
                        self.container_log(
                            (pns, pname, uid, cname, run),
                            "stderr",
                            &format!(
                                "k3s stand-in: simulated container {cname} exited: {}",
                                s.error
                            ),
                        );
                        log::info(format!(
                            "container {cname} of {pns}/{pname} exited: {}",
                            s.error
                        ));
                        let msg = format!(
                            "back-off {backoff}s restarting failed container={cname} pod={pname}_{pns}({uid})"
                        );
                        local.crash.insert(
                            cname.to_string(),
                            (
                                msg.clone(),
                                ts.clone(),
                                ts.clone(),
                                Instant::now() + Duration::from_secs(backoff),
                                backoff,
                            ),
                        );
                        local.started.insert(cname.to_string(), ts.clone());
                        events.push((
                            "Warning".into(),
                            "BackOff".into(),
                            format!("Back-off restarting failed container {cname} in pod {pname}_{pns}({uid})"),
                            Some(cname.to_string()),
                        ));
                        return Run::CrashLoop {
                            message: msg,
                            last_started: ts.clone(),
                            last_finished: ts.clone(),
                        };
                    }
                    None => {
                        return Run::Waiting {
                            reason: "ContainerCreating".into(),
                            message: String::new(),
                        };
                    }
                }
            }
        } else if !local.started.contains_key(cname) {
            local.started.insert(cname.to_string(), ts.clone());
            let run = local.restarts.get(cname).copied().unwrap_or(0);
            self.container_log(
                (pns, pname, uid, cname, run),
                "stdout",
                &format!("k3s stand-in: simulated container {cname} started (no ports)"),
            );
            events.push((
                "Normal".into(),
                "Created".into(),
                format!("Created container: {cname}"),
                Some(cname.to_string()),
            ));
            events.push((
                "Normal".into(),
                "Started".into(),
                format!("Started container {cname}"),
                Some(cname.to_string()),
            ));
        }
        let started_at = local.started.get(cname).cloned().unwrap_or(ts);
        // Readiness: probes of hostNetwork pods really reach the shim.
        let ready = match cspec.get("readinessProbe") {
            None => true,
            Some(_) if !host_network => true,
            Some(probe) => {
                let delay = probe["initialDelaySeconds"].as_i64().unwrap_or(0);
                let since = super::store::parse_time(&started_at)
                    .map(|s| jiff::Timestamp::now().as_second() - s.as_second())
                    .unwrap_or(0);
                if since < delay {
                    false
                } else {
                    match self.probe_ok(cspec, probe).await {
                        Ok(()) => true,
                        Err(e) => {
                            events.push((
                                "Warning".into(),
                                "Unhealthy".into(),
                                format!("Readiness probe failed: {e}"),
                                Some(cname.to_string()),
                            ));
                            false
                        }
                    }
                }
            }
        };
        local.ready.insert(cname.to_string(), ready);
        Run::Running { started_at, ready }
    }
}

impl Kubelet {
    /// One line in the log file of a container's run (namespace, pod, uid, container, restart
    /// count; see [`logs`]).
    fn container_log(
        &self,
        (ns, pod, uid, container, run): (&str, &str, &str, &str, i64),
        stream: &str,
        text: &str,
    ) {
        let run = u32::try_from(run).unwrap_or(0);
        let path = logs::file(&self.setup.root, ns, pod, uid, container, run);
        if let Err(e) = logs::append(&path, stream, text) {
            log::warn(format!("writing {}: {e}", path.display()));
        }
    }
}

/// Remove a pod's state directory; a real container's root filesystem mount is taken down first
/// so that nothing is deleted through it.
fn remove_pod_dir(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for c in rd.flatten() {
            let rootfs = c.path().join("bundle/rootfs");
            if rootfs.exists() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&rootfs)
                    .output();
                if std::fs::read_dir(&rootfs).is_ok_and(|mut r| r.next().is_some()) {
                    // Still mounted: leave it (the next pass retries).
                    return;
                }
            }
            if let Ok(layer) = std::fs::read_to_string(c.path().join("layer")) {
                let _ = std::fs::remove_dir_all(layer.trim());
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sha_prefix(s: &str) -> [u8; 8] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// The waiting state for a container whose image cannot be used, with the kubelet's events.
fn image_run(
    local: &mut PodLocal,
    cname: &str,
    image: &str,
    st: &ImageState,
    events: &mut Vec<(String, String, String, Option<String>)>,
) -> Option<Run> {
    let c = Some(cname.to_string());
    match st {
        ImageState::Present => {
            if local.once.insert(format!("pulled/{cname}")) {
                events.push((
                    "Normal".into(),
                    "Pulled".into(),
                    format!("Container image \"{image}\" already present on machine"),
                    c,
                ));
            }
            None
        }
        ImageState::NeverPull => {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            events.push((
                "Warning".into(),
                "ErrImageNeverPull".into(),
                msg.clone(),
                c.clone(),
            ));
            events.push((
                "Warning".into(),
                "Failed".into(),
                "Error: ErrImageNeverPull".into(),
                c,
            ));
            Some(Run::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: msg,
            })
        }
        ImageState::PullFailed => {
            let entry = local
                .pull_attempts
                .entry(cname.to_string())
                .or_insert((0, Instant::now()));
            if entry.0 == 0 || Instant::now() >= entry.1 {
                entry.0 += 1;
                let backoff = (10u64 << (entry.0.min(5) - 1)).min(300);
                entry.1 = Instant::now() + Duration::from_secs(backoff);
                events.push((
                    "Normal".into(),
                    "Pulling".into(),
                    format!("Pulling image \"{image}\""),
                    c.clone(),
                ));
                events.push((
                    "Warning".into(),
                    "Failed".into(),
                    format!(
                        "Failed to pull image \"{image}\": {}",
                        pods::pull_error(image)
                    ),
                    c.clone(),
                ));
                events.push((
                    "Warning".into(),
                    "Failed".into(),
                    "Error: ErrImagePull".into(),
                    c,
                ));
                if entry.0 == 1 {
                    return Some(Run::Waiting {
                        reason: "ErrImagePull".into(),
                        message: pods::pull_error(image),
                    });
                }
            } else {
                events.push((
                    "Normal".into(),
                    "BackOff".into(),
                    format!("Back-off pulling image \"{image}\""),
                    c.clone(),
                ));
                events.push((
                    "Warning".into(),
                    "Failed".into(),
                    "Error: ImagePullBackOff".into(),
                    c,
                ));
            }
            Some(Run::Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\""),
            })
        }
    }
}

fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    for c in v
        .get_mut("conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(m) = c.as_object_mut() {
            m.remove("lastTransitionTime");
            m.remove("lastProbeTime");
        }
    }
    v
}

/// Starts kube-proxy ([`super::proxy`]) unless the cluster disables it: its settings from the
/// supervisor's `/v1-k3s/config` (`DisableKubeProxy`, the cluster CIDR), its identity from
/// `/v1-k3s/client-kube-proxy.crt`. Only on a real node: under a test root the "nodes" share the
/// workstation's network namespace, whose rules are not the stand-in's to change.
async fn start_kube_proxy(setup: &AgentSetup, urls: &[String]) {
    if setup.root.is_prefixed() {
        return;
    }
    let Some(base) = urls.first() else { return };
    let http = match client::with_ca(&setup.ca_pem, None) {
        Ok(h) => h,
        Err(e) => {
            log::error(format!("kube-proxy: {e}"));
            return;
        }
    };
    let get = |path: &str| {
        http.get(format!("{base}/v1-k3s/{path}"))
            .basic_auth("node", Some(&setup.node_pw))
            .send()
    };
    let config: Value = match get("config").await {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
        Ok(r) => {
            log::error(format!("kube-proxy: /v1-k3s/config: {}", r.status()));
            return;
        }
        Err(e) => {
            log::error(format!("kube-proxy: /v1-k3s/config: {e}"));
            return;
        }
    };
    if config["DisableKubeProxy"].as_bool() == Some(true) {
        return;
    }
    let cidr = config
        .pointer("/CriticalControlArgs/ClusterIPRange")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let cert: Value = match get("client-kube-proxy.crt").await {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
        Ok(r) => {
            log::error(format!(
                "kube-proxy: /v1-k3s/client-kube-proxy.crt: {}",
                r.status()
            ));
            return;
        }
        Err(e) => {
            log::error(format!("kube-proxy: /v1-k3s/client-kube-proxy.crt: {e}"));
            return;
        }
    };
    let id = CertKey {
        cert_pem: cert["cert"].as_str().unwrap_or_default().to_string(),
        key_pem: cert["key"].as_str().unwrap_or_default().to_string(),
    };
    match Kube::new(urls.to_vec(), &setup.ca_pem, &id) {
        Ok(k) => {
            tokio::spawn(super::proxy::run(k, cidr, setup.shutdown.clone()));
        }
        Err(e) => log::error(format!("kube-proxy client: {e}")),
    }
}

/// Run the agent for this node until shutdown. With `notify`, send `READY=1` once the API is
/// reachable (agent-only nodes; on servers the server notifies).
pub async fn run_agent(setup: AgentSetup) {
    run_agent_inner(setup, false).await
}

/// Like [`run_agent`], for `k3s agent` (notifies systemd).
pub async fn run_agent_notify(setup: AgentSetup) {
    run_agent_inner(setup, true).await
}

async fn run_agent_inner(setup: AgentSetup, notify: bool) {
    if let Err(e) = runtime::stage_data_dir(&setup.root, &setup.node.data_dir) {
        log::error(format!("failed to stage the data directory: {e}"));
    }
    let node_password = match ensure_node_password(&setup.root) {
        Ok(p) => p,
        Err(e) => {
            log::error(format!("failed to write node password: {e}"));
            return;
        }
    };
    let certs = loop {
        if setup.shutdown.is_cancelled() {
            return;
        }
        if setup.faults.get().lose_node {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match node_certs(&setup, &node_password).await {
            Ok(c) => break c,
            Err(e) => log::info(format!(
                "Waiting to retrieve agent configuration; server is not ready: {e}"
            )),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = setup.shutdown.cancelled() => return,
        }
    };
    let agent_dir = setup.root.path(setup.node.data_dir.join("agent"));
    let _ = super::tls_files::write_file(
        &agent_dir.join("client-kubelet.crt"),
        certs.cert_pem.as_bytes(),
        0o644,
    );
    let _ = super::tls_files::write_file(
        &agent_dir.join("client-kubelet.key"),
        certs.key_pem.as_bytes(),
        0o600,
    );
    let _ = super::tls_files::write_file(
        &agent_dir.join("server-ca.crt"),
        setup.ca_pem.as_bytes(),
        0o644,
    );
    // Learn every apiserver, as the agent's load balancer does (`k3s-agent-load-balancer.json`).
    let mut urls = vec![setup.server_url.trim_end_matches('/').to_string()];
    if let Ok(http) = client::with_ca(&setup.ca_pem, None)
        && let Ok(resp) = http
            .get(format!("{}/v1-k3s/apiservers", urls[0]))
            .basic_auth("node", Some(&setup.node_pw))
            .send()
            .await
        && let Ok(list) = resp.json::<Vec<String>>().await
    {
        for a in list {
            let u = format!("https://{a}");
            if !urls.contains(&u) {
                urls.push(u);
            }
        }
    }
    let lb = json!({"ServerURL": urls[0], "ServerAddresses": urls.iter().skip(1).map(|u| u.trim_start_matches("https://")).collect::<Vec<_>>()});
    let _ = super::tls_files::write_file(
        &agent_dir.join("etc/k3s-agent-load-balancer.json"),
        serde_json::to_string_pretty(&lb)
            .unwrap_or_default()
            .as_bytes(),
        0o600,
    );
    start_kube_proxy(&setup, &urls).await;
    let kube = match Kube::new(urls, &setup.ca_pem, &certs) {
        Ok(k) => k,
        Err(e) => {
            log::error(format!("kubelet client: {e}"));
            return;
        }
    };
    // Wait for the apiserver.
    loop {
        if setup.shutdown.is_cancelled() {
            return;
        }
        if let Ok((200, _)) = kube.get("/readyz").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if notify {
        log::info("k3s agent is up and running");
        if let Err(e) = super::notify::ready() {
            log::warn(format!("Failed to notify systemd: {e}"));
        }
    }
    let node_ip = setup
        .node
        .node_ips
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let _reserved = reserve_ports(&setup.root, &node_ip, setup.control_plane);
    serve_kubelet_api(&setup, &node_ip).await;
    let run_dir = setup.root.path(k3s::RUN_DIR);
    let probe = match client::insecure_with_timeout(Duration::from_secs(1)) {
        Ok(c) => c,
        Err(e) => {
            log::error(format!("kubelet probe client: {e}"));
            return;
        }
    };
    let mut k = Kubelet {
        setup,
        kube,
        images: runtime::ImageStore::default(),
        present: BTreeMap::new(),
        pods: BTreeMap::new(),
        events: BTreeMap::new(),
        last_status: Value::Null,
        last_heartbeat: Instant::now() - Duration::from_secs(60),
        probe,
        run_dir,
        lost: false,
        node_ip,
        pod_cidr: String::new(),
        next_ip: 0,
    };
    loop {
        if k.setup.shutdown.is_cancelled() {
            return;
        }
        if k.setup.faults.get().lose_node {
            if !k.lost {
                log::warn(
                    "k3s-standin fault injected: node lost (no heartbeats, containers stopped)",
                );
                let uids: Vec<String> = k.pods.keys().cloned().collect();
                for u in uids {
                    k.stop_pod(&u);
                }
                k.pods.clear();
                k.lost = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        k.lost = false;
        let dir = k.images_dir();
        let before: BTreeSet<String> = k.present.keys().cloned().collect();
        k.present = k.images.scan(&dir);
        let new: Vec<String> = k
            .present
            .keys()
            .filter(|n| !before.contains(*n))
            .cloned()
            .collect();
        runtime::log_imports(
            &k.setup.root.path(
                k.setup
                    .node
                    .data_dir
                    .join("agent/containerd/containerd.log"),
            ),
            &new,
        );
        let cni = runtime::cni_ready(&k.setup.root.path(k3s::CNI_CONF_DIR));
        if k.sync_node(cni).await.is_some() {
            k.sync_pods(cni).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(700)) => {}
            _ = k.setup.shutdown.cancelled() => return,
        }
    }
}
