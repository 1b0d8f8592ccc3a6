//! The endpoints and endpointslice controllers of kube-controller-manager
//! (`pkg/controller/endpoint`, `pkg/controller/endpointslice`): for every Service with a
//! selector, the pods it selects, as an `Endpoints` object of the Service's name and one
//! `EndpointSlice` labelled `kubernetes.io/service-name`.
//!
//! - A pod counts once it has an IP (a host-network pod's IP is its node's) and is not
//!   terminal; it is ready when its `Ready` condition is True and it is not being deleted,
//!   `serving` when Ready, `terminating` while being deleted. Not-ready pods go to
//!   `notReadyAddresses` (Endpoints) and `ready: false` (slice), unless the Service says
//!   `publishNotReadyAddresses`.
//! - Ports: each Service port with its `targetPort`, a number, or a name looked up in the
//!   pod's container ports (a pod without that name is left out of that port's subset).
//! - Services without a selector are left alone (their Endpoints are the user's); the
//!   `kubernetes` Service's Endpoints are the apiserver's (`core::endpoints`).
//!
//! Differences: one slice per Service (real slices hold up to 100 endpoints each), named
//! `<service>-<5 chars>` once and kept; no topology hints, no `zone`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::util::{deleting, meta, owner_ref};
use crate::standin::store::resources;
use crate::standin::store::selectors::LabelSelector;
use crate::standin::store::{Store, Sub, WriteOpts, name_suffix};

const EP: &str = "endpoint-controller";
const EPS: &str = "endpointslice-controller.k8s.io";

/// One pass over every Service.
pub fn run(store: &Store) {
    let srt = resources::core("services");
    let prt = resources::core("pods");
    let pods = store.all(prt);
    for svc in store.all(srt) {
        let ns = meta(&svc, "namespace").to_string();
        let name = meta(&svc, "name").to_string();
        let Some(sel) = svc
            .pointer("/spec/selector")
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        else {
            continue;
        };
        if deleting(&svc) {
            continue;
        }
        let sel = LabelSelector::from_object(&json!({"matchLabels": sel}));
        let selected: Vec<&Value> = pods
            .iter()
            .filter(|p| meta(p, "namespace") == ns && sel.matches(p.pointer("/metadata/labels")))
            .collect();
        let (subsets, slice_endpoints, slice_ports) = compute(&svc, &selected);
        write_endpoints(store, &svc, &ns, &name, subsets);
        write_slice(store, &svc, &ns, &name, slice_endpoints, slice_ports);
    }
    // Endpoints of a Service that is gone (slices go with their owner reference).
    let ert = resources::core("endpoints");
    for e in store.all(ert) {
        let managed = e
            .pointer("/metadata/labels/endpoints.kubernetes.io~1managed-by")
            .and_then(Value::as_str)
            == Some(EP);
        if managed
            && store
                .get(srt, meta(&e, "namespace"), meta(&e, "name"))
                .is_none()
        {
            store.remove(ert, meta(&e, "namespace"), meta(&e, "name"));
        }
    }
}

/// A pod's address and readiness, if it counts.
fn pod_address(p: &Value) -> Option<(String, bool, bool)> {
    let ip = p.pointer("/status/podIP").and_then(Value::as_str)?;
    if ip.is_empty()
        || matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
    {
        return None;
    }
    let ready = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    Some((ip.to_string(), ready && !deleting(p), deleting(p)))
}

/// `targetPort` of a Service port for pod `p` (a number, or a container port's name).
fn target_port(port: &Value, p: &Value) -> Option<i64> {
    match port.get("targetPort") {
        None | Some(Value::Null) => port["port"].as_i64(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|cp| cp["name"] == s.as_str())
                .and_then(|cp| cp["containerPort"].as_i64()),
        },
        _ => None,
    }
}

/// Pods with the same resolved ports: one subset of an Endpoints object.
#[derive(Default)]
struct Subset {
    ready: Vec<Value>,
    not_ready: Vec<Value>,
    ports: Vec<Value>,
}

/// The Endpoints subsets, and the slice's endpoints and ports.
fn compute(svc: &Value, pods: &[&Value]) -> (Value, Value, Value) {
    let publish = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ports: Vec<Value> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Pods grouped by their resolved ports (the Endpoints API's subsets).
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    let mut endpoints = Vec::new();
    let mut slice_ports: Option<Vec<Value>> = None;
    let mut sorted: Vec<&&Value> = pods.iter().collect();
    sorted.sort_by_key(|p| meta(p, "name").to_string());
    for p in sorted {
        let Some((ip, ready, terminating)) = pod_address(p) else {
            continue;
        };
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|sp| {
                let mut e = json!({"port": target_port(sp, p)?, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                    e["name"] = json!(n);
                }
                Some(e)
            })
            .collect();
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let target = json!({"kind": "Pod", "namespace": meta(p, "namespace"), "name": meta(p, "name"), "uid": meta(p, "uid")});
        let mut addr = json!({"ip": ip, "targetRef": target});
        if !node.is_empty() {
            addr["nodeName"] = json!(node);
        }
        let g = groups
            .entry(
                resolved
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .or_insert_with(|| Subset {
                ports: resolved.clone(),
                ..Subset::default()
            });
        if ready || publish {
            g.ready.push(addr);
        } else {
            g.not_ready.push(addr);
        }
        let mut ep = json!({
            "addresses": [ip],
            "conditions": {"ready": ready || publish, "serving": ready, "terminating": terminating},
            "targetRef": target,
        });
        if !node.is_empty() {
            ep["nodeName"] = json!(node);
        }
        endpoints.push(ep);
        slice_ports.get_or_insert(resolved);
    }
    let subsets: Vec<Value> = groups
        .into_values()
        .filter(|g| !g.ports.is_empty())
        .map(|g| {
            let mut s = json!({"ports": g.ports});
            if !g.ready.is_empty() {
                s["addresses"] = json!(g.ready);
            }
            if !g.not_ready.is_empty() {
                s["notReadyAddresses"] = json!(g.not_ready);
            }
            s
        })
        .collect();
    (
        json!(subsets),
        json!(endpoints),
        json!(slice_ports.unwrap_or_default()),
    )
}

fn opts(m: &str) -> WriteOpts {
    WriteOpts {
        manager: m.to_string(),
        ..Default::default()
    }
}

fn write_endpoints(store: &Store, svc: &Value, ns: &str, name: &str, subsets: Value) {
    let rt = resources::core("endpoints");
    match store.get(rt, ns, name) {
        Some(e) if e.get("subsets").unwrap_or(&json!([])) == &subsets => {}
        Some(_) => {
            let _ = store.update_with(rt, ns, name, Sub::Main, EP, |e| {
                e["subsets"] = subsets.clone();
            });
        }
        None => {
            let mut labels = svc
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            labels["endpoints.kubernetes.io/managed-by"] = json!(EP);
            let _ = store.create(
                rt,
                ns,
                json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets}),
                &opts(EP),
            );
        }
    }
}

fn write_slice(store: &Store, svc: &Value, ns: &str, name: &str, endpoints: Value, ports: Value) {
    let Some(rt) = resources::find("discovery.k8s.io", "v1", "endpointslices") else {
        return;
    };
    let (mine, _) = store.list(
        rt,
        Some(ns),
        &LabelSelector::from_object(&json!({"matchLabels": {"kubernetes.io/service-name": name}})),
        &Default::default(),
    );
    match mine.first() {
        Some(s) if s["endpoints"] == endpoints && s["ports"] == ports => {}
        Some(s) => {
            let sname = meta(s, "name").to_string();
            let _ = store.update_with(rt, ns, &sname, Sub::Main, EPS, |x| {
                x["endpoints"] = endpoints.clone();
                x["ports"] = ports.clone();
            });
        }
        None => {
            let _ = store.create(
                rt,
                ns,
                json!({
                    "metadata": {
                        "name": format!("{name}-{}", name_suffix(5)),
                        "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": EPS},
                        "ownerReferences": [owner_ref(svc)],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                }),
                &opts(EPS),
            );
        }
    }
}
