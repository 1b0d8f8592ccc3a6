//! Cluster collectors, through kube-rs, when the API answers: versions, nodes, events,
//! workloads, pods and their logs (current and previous), Services, EndpointSlices,
//! NetworkPolicies, ConfigMaps (redacted like every file) and Secrets by name and keys only.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, LogParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kube::Cluster;

use super::manifest::{Item, Status};
use super::node::Collected;

/// Namespaces left out: nothing of the installer's or the application's lives there.
const SKIP_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "default"];

/// What the analysis reads from the cluster.
#[derive(Default)]
pub struct ClusterData {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub etcd_members: Option<usize>,
}

/// Per request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: i64 = 10_000;
const LOG_LIMIT_BYTES: i64 = 5 * 1024 * 1024;

fn item(id: &str, path: &str, started: Instant, r: &Result<Vec<u8>, String>) -> Item {
    Item {
        id: id.into(),
        node: None,
        path: path.into(),
        status: match r {
            Ok(_) => Status::Ok,
            Err(e) if e.starts_with(NOT_SERVED) => Status::Skipped,
            Err(_) => Status::Failed,
        },
        exit_code: None,
        duration_ms: started.elapsed().as_millis() as u64,
        bytes_kept: r.as_ref().map_or(0, |d| d.len() as u64),
        bytes_dropped: 0,
        reason: r.as_ref().err().map(|e| crate::secret::redact(e)),
    }
}

fn strip(v: &mut serde_json::Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
        if let Some(a) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
}

async fn list<K>(api: Api<K>) -> Result<Vec<K>, String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, api.list(&ListParams::default())).await {
        Ok(Ok(l)) => Ok(l.items),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
            Err(format!("{NOT_SERVED}: {}", s.message))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
    }
}

/// The reason given when the API server does not serve a kind (404): `skipped`, not failed.
const NOT_SERVED: &str = "not served by this API server";

fn to_json<K: Serialize>(items: &[K]) -> Result<Vec<u8>, String> {
    let mut v = serde_json::to_value(items).map_err(|e| e.to_string())?;
    if let Some(a) = v.as_array_mut() {
        a.iter_mut().for_each(strip);
    }
    serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())
}

/// Secrets reduced to their name, type and data keys.
fn secret_keys(items: &[Secret]) -> Result<Vec<u8>, String> {
    let v: Vec<serde_json::Value> = items
        .iter()
        .map(|s| {
            let mut keys: Vec<&String> = s.data.iter().flat_map(|d| d.keys()).collect();
            keys.extend(s.string_data.iter().flat_map(|d| d.keys()));
            serde_json::json!({
                "name": s.metadata.name,
                "namespace": s.metadata.namespace,
                "type": s.type_,
                "keys": keys,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())
}

struct Out {
    files: Vec<Collected>,
}

impl Out {
    fn push(&mut self, id: &str, path: &str, started: Instant, r: Result<Vec<u8>, String>) {
        let item = item(id, path, started, &r);
        self.files.push(Collected {
            item,
            data: r.unwrap_or_default(),
        });
    }
}

/// Collects everything from the cluster, within `budget`.
pub async fn collect(
    cluster: &Cluster,
    since: Duration,
    budget: Duration,
) -> (Vec<Collected>, ClusterData) {
    let mut out = Out { files: Vec::new() };
    let mut data = ClusterData::default();
    let deadline = Instant::now() + budget;
    let c = cluster.client().clone();

    let t = Instant::now();
    let v = c
        .apiserver_version()
        .await
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_vec_pretty(&v).map_err(|e| e.to_string()));
    out.push("cluster/version", "cluster/version.json", t, v);
    let t = Instant::now();
    let ready = cluster
        .readyz()
        .await
        .map(|r| {
            if r {
                b"ok\n".to_vec()
            } else {
                b"not ready\n".to_vec()
            }
        })
        .map_err(|e| e.to_string());
    out.push("cluster/readyz", "cluster/readyz.txt", t, ready);

    let t = Instant::now();
    let nodes = list(Api::<Node>::all(c.clone())).await;
    if let Ok(n) = &nodes {
        data.nodes = n.clone();
    }
    out.push(
        "cluster/nodes",
        "cluster/nodes.json",
        t,
        nodes.and_then(|n| to_json(&n)),
    );
    let t = Instant::now();
    let members = cluster.etcd_members().await.map_err(|e| e.to_string());
    data.etcd_members = members
        .as_ref()
        .ok()
        .map(|m| m.iter().filter(|m| !m.is_learner).count());
    out.push(
        "cluster/etcd-members",
        "cluster/etcd-members.json",
        t,
        members.map(|m| {
            let names: Vec<serde_json::Value> = m
                .iter()
                .map(|m| serde_json::json!({"name": m.name, "learner": m.is_learner}))
                .collect();
            serde_json::to_vec_pretty(&names).unwrap_or_default()
        }),
    );

    let t = Instant::now();
    let namespaces: Vec<String> = match list(Api::<Namespace>::all(c.clone())).await {
        Ok(ns) => {
            let names: Vec<String> = ns
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .filter(|n| !SKIP_NAMESPACES.contains(&n.as_str()))
                .collect();
            out.push(
                "cluster/namespaces",
                "cluster/namespaces.json",
                t,
                to_json(&ns),
            );
            names
        }
        Err(e) => {
            out.push("cluster/namespaces", "cluster/namespaces.json", t, Err(e));
            vec!["kube-system".into()]
        }
    };

    for ns in &namespaces {
        macro_rules! kind {
            ($k:ty, $name:literal) => {{
                let t = Instant::now();
                let r = list(Api::<$k>::namespaced(c.clone(), ns))
                    .await
                    .and_then(|l| to_json(&l));
                out.push(
                    concat!("cluster/", $name),
                    &format!("cluster/{ns}/{}.json", $name),
                    t,
                    r,
                );
            }};
        }
        kind!(Event, "events");
        kind!(Deployment, "deployments");
        kind!(DaemonSet, "daemonsets");
        kind!(StatefulSet, "statefulsets");
        kind!(Service, "services");
        kind!(EndpointSlice, "endpointslices");
        kind!(NetworkPolicy, "networkpolicies");
        kind!(ConfigMap, "configmaps");
        let t = Instant::now();
        let r = list(Api::<Secret>::namespaced(c.clone(), ns))
            .await
            .and_then(|l| secret_keys(&l));
        out.push(
            "cluster/secrets",
            &format!("cluster/{ns}/secrets.json"),
            t,
            r,
        );
        let t = Instant::now();
        let pods = list(Api::<Pod>::namespaced(c.clone(), ns)).await;
        let pod_list = pods.as_ref().ok().cloned().unwrap_or_default();
        out.push(
            "cluster/pods",
            &format!("cluster/{ns}/pods.json"),
            t,
            pods.and_then(|p| to_json(&p)),
        );
        let api: Api<Pod> = Api::namespaced(c.clone(), ns);
        for pod in &pod_list {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let statuses = pod.status.iter().flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            });
            let containers: Vec<(String, bool)> = statuses
                .map(|s| (s.name.clone(), s.restart_count > 0))
                .collect();
            for (container, restarted) in containers {
                for previous in [false, true] {
                    let path = format!(
                        "cluster/{ns}/logs/{name}/{container}{}.log",
                        if previous { ".previous" } else { "" }
                    );
                    let id = if previous {
                        "cluster/logs-previous"
                    } else {
                        "cluster/logs"
                    };
                    if previous && !restarted {
                        continue;
                    }
                    let t = Instant::now();
                    if Instant::now() >= deadline {
                        let mut i = item(id, &path, t, &Err(String::new()));
                        i.status = Status::Timeout;
                        i.reason = Some(format!(
                            "the cluster's budget of {} s was spent",
                            budget.as_secs()
                        ));
                        out.files.push(Collected {
                            item: i,
                            data: Vec::new(),
                        });
                        continue;
                    }
                    let lp = LogParams {
                        container: Some(container.clone()),
                        previous,
                        tail_lines: Some(LOG_TAIL_LINES),
                        limit_bytes: Some(LOG_LIMIT_BYTES),
                        since_seconds: Some(since.as_secs() as i64),
                        ..Default::default()
                    };
                    let r = match tokio::time::timeout(REQUEST_TIMEOUT, api.logs(&name, &lp)).await
                    {
                        Ok(Ok(s)) => Ok(s.into_bytes()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
                    };
                    out.push(id, &path, t, r);
                }
            }
        }
        data.pods.extend(pod_list);
    }
    (out.files, data)
}
