//! Cluster housekeeping controllers (kube-controller-manager and k3s's own):
//!
//! - Namespaces: `default`, `kube-system`, `kube-public`, `kube-node-lease` exist; a deleted
//!   namespace is `Terminating` until its contents are gone (`namespace/deletion`); every active
//!   namespace gets the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap.
//! - Events expire after an hour (`--event-ttl`).
//! - Garbage collection (`garbagecollector`): objects whose owners are all gone are deleted;
//!   `foregroundDeletion` owners wait for their dependents.
//! - Node lifecycle (`nodelifecycle`): `node.kubernetes.io/not-ready` (NoSchedule and NoExecute)
//!   while `Ready` is False, `node.kubernetes.io/unreachable` when a node stops posting status for
//!   `node-monitor-grace-period` (conditions turn `Unknown`, "Kubelet stopped posting node
//!   status."), and eviction of pods whose NoExecute tolerations run out.
//! - Node IPAM (`nodeipam`, `allocate-node-cidrs=true` in k3s): each node gets a `/24` podCIDR from
//!   `cluster-cidr`.
//! - k3s's cloud controller (`pkg/cloudprovider`): `providerID: k3s://<node>`.
//! - Pod GC (`podgc`): pods bound to nodes that no longer exist are removed.
//! - The `kubernetes` Service and Endpoints in `default`.
//! - k3s's ServiceLB (`pkg/cloudprovider/servicelb.go`, unless `disable: servicelb`): a
//!   `svclb-<service>-<hash>` DaemonSet in kube-system whose pods take each LoadBalancer port as a
//!   hostPort on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::scheduler::tolerates;
use super::util::{Recorder, deleting, id, meta, owner_ref, pod_active};
use crate::standin::store::admission::parse_cidr;
use crate::standin::store::resources::{self, RESOURCES};
use crate::standin::store::{DeleteOpts, Store, Sub, WriteOpts, now, parse_time};

const CM: &str = "kube-controller-manager";

fn opts(m: &str) -> WriteOpts {
    WriteOpts {
        manager: m.into(),
        ..Default::default()
    }
}

/// The static objects a fresh cluster has.
pub fn bootstrap(
    store: &Store,
    service_ip: &str,
    server_ips: &[String],
    https_port: u16,
    ca_pem: &str,
) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let _ = store.ensure(
            resources::core("namespaces"),
            "",
            json!({"metadata": {"name": ns}}),
            "kube-apiserver",
        );
    }
    let _ = store.ensure(
        resources::core("services"),
        "default",
        json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"clusterIP": service_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": https_port}]}}),
        "kube-apiserver",
    );
    endpoints(store, server_ips, https_port);
    let _ = ca_pem;
}

/// The `kubernetes` Endpoints and EndpointSlice: the servers' addresses (the apiserver's
/// endpoint reconciler writes both; kube-proxy reads the slice).
pub fn endpoints(store: &Store, server_ips: &[String], https_port: u16) {
    kubernetes_slice(store, server_ips, https_port);
    let rt = resources::core("endpoints");
    let addrs: Vec<Value> = server_ips.iter().map(|ip| json!({"ip": ip})).collect();
    let subsets = json!([{"addresses": addrs, "ports": [{"name": "https", "port": https_port, "protocol": "TCP"}]}]);
    if store.get(rt, "default", "kubernetes").is_some() {
        let _ = store.update_with(
            rt,
            "default",
            "kubernetes",
            Sub::Main,
            "kube-apiserver",
            |e| e["subsets"] = subsets.clone(),
        );
    } else {
        let _ = store.create(
            rt,
            "default",
            json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}, "subsets": subsets}),
            &opts("kube-apiserver"),
        );
    }
}

fn kubernetes_slice(store: &Store, server_ips: &[String], https_port: u16) {
    let Some(rt) = resources::find("discovery.k8s.io", "v1", "endpointslices") else {
        return;
    };
    let endpoints: Vec<Value> = server_ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let endpoints = Value::Array(endpoints);
    let ports = json!([{"name": "https", "port": https_port, "protocol": "TCP"}]);
    match store.get(rt, "default", "kubernetes") {
        Some(s) if s["endpoints"] == endpoints && s["ports"] == ports => {}
        Some(_) => {
            let _ = store.update_with(
                rt,
                "default",
                "kubernetes",
                Sub::Main,
                "kube-apiserver",
                |x| {
                    x["endpoints"] = endpoints.clone();
                    x["ports"] = ports.clone();
                },
            );
        }
        None => {
            let _ = store.create(
                rt,
                "default",
                json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
                       "addressType": "IPv4", "endpoints": endpoints, "ports": ports}),
                &opts("kube-apiserver"),
            );
        }
    }
}

/// Namespace lifecycle, default ServiceAccounts and `kube-root-ca.crt`.
pub fn namespaces(store: &Store, ca_pem: &str) {
    let nsrt = resources::core("namespaces");
    for ns in store.all(nsrt) {
        let (name, _, _) = id(&ns);
        if deleting(&ns) {
            let mut remaining = 0;
            for rt in RESOURCES.iter().filter(|r| r.namespaced) {
                let (items, _) =
                    store.list(rt, Some(&name), &Default::default(), &Default::default());
                for o in items {
                    remaining += 1;
                    if !deleting(&o) {
                        let _ = store.delete(rt, &name, meta(&o, "name"), &DeleteOpts::default());
                    } else if rt.plural == "pods"
                        && o.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        store.remove(rt, &name, meta(&o, "name"));
                    }
                }
            }
            if remaining == 0 {
                store.remove(nsrt, "", &name);
            }
            continue;
        }
        let _ = store.ensure(
            resources::core("serviceaccounts"),
            &name,
            json!({"metadata": {"name": "default", "namespace": name}}),
            "kube-controller-manager",
        );
        let _ = store.ensure(
            resources::core("configmaps"),
            &name,
            json!({"metadata": {"name": "kube-root-ca.crt", "namespace": name, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": {"ca.crt": ca_pem}}),
            "kube-root-ca-cert-publisher",
        );
    }
}

/// Events expire after an hour (kube-apiserver `--event-ttl`, 1h by default).
pub fn expire_events(store: &Store) {
    let rt = resources::core("events");
    let now_s = jiff::Timestamp::now().as_second();
    for e in store.all(rt) {
        let last = e
            .get("lastTimestamp")
            .and_then(Value::as_str)
            .or_else(|| {
                e.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
            })
            .and_then(parse_time)
            .map(|t| t.as_second())
            .unwrap_or(now_s);
        if now_s - last > 3600 {
            let (name, ns, _) = id(&e);
            store.remove(rt, &ns, &name);
        }
    }
}

/// Garbage collection by owner references.
pub fn garbage_collect(store: &Store) {
    let mut uids: BTreeSet<String> = BTreeSet::new();
    let mut all: Vec<(&'static resources::ResourceType, Value)> = Vec::new();
    // Events have no owners; skipping them keeps a pass cheap as they accumulate.
    for rt in RESOURCES.iter().filter(|r| r.plural != "events") {
        for o in store.all(rt) {
            uids.insert(meta(&o, "uid").to_string());
            all.push((rt, o));
        }
    }
    let mut dependents: BTreeMap<String, usize> = BTreeMap::new();
    for (rt, o) in &all {
        let refs: Vec<String> = o
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str().map(str::to_string))
            .collect();
        if refs.is_empty() {
            continue;
        }
        for r in &refs {
            *dependents.entry(r.clone()).or_default() += 1;
        }
        let (name, ns, _) = id(o);
        if refs.iter().all(|r| !uids.contains(r)) && !deleting(o) {
            let _ = store.delete(rt, &ns, &name, &DeleteOpts::default());
            continue;
        }
        // Dependents of an owner in foreground deletion go first.
        let owner_in_foreground = refs.iter().any(|r| {
            all.iter().any(|(_, x)| {
                meta(x, "uid") == r
                    && deleting(x)
                    && x.pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|f| f.iter().any(|v| v == "foregroundDeletion"))
            })
        });
        if owner_in_foreground && !deleting(o) {
            let _ = store.delete(rt, &ns, &name, &DeleteOpts::default());
        }
    }
    for (rt, o) in &all {
        let fg = o
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|v| v == "foregroundDeletion"));
        if deleting(o) && fg && dependents.get(meta(o, "uid")).copied().unwrap_or(0) == 0 {
            let (name, ns, _) = id(o);
            let _ = store.update_with(rt, &ns, &name, Sub::Main, "garbage-collector", |x| {
                if let Some(f) = x
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|v| v != "foregroundDeletion");
                }
            });
        }
    }
}

fn ready_status(node: &Value) -> String {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string()
}

fn heartbeat_age(node: &Value) -> i64 {
    let hb = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .and_then(parse_time);
    match hb {
        Some(t) => jiff::Timestamp::now().as_second() - t.as_second(),
        None => 0,
    }
}

/// Node lifecycle: taints, Unknown conditions, pod eviction; podCIDRs; providerID; pod GC.
pub fn nodes(store: &Store, rec: &Recorder, cluster_cidr: &str, grace_secs: i64) {
    let nrt = resources::core("nodes");
    let prt = resources::core("pods");
    let nodes = store.all(nrt);
    // IPAM: /24s from cluster-cidr in registration order.
    let used: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| {
            n.pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    let base = parse_cidr(cluster_cidr)
        .map(|(ip, _)| u32::from(ip))
        .unwrap_or(u32::from(Ipv4Addr::new(10, 42, 0, 0)));
    let mut next = 0u32;
    let mut by_age = nodes.clone();
    by_age.sort_by_key(|n| meta(n, "creationTimestamp").to_string());
    for n in &by_age {
        let name = meta(n, "name").to_string();
        if n.pointer("/spec/podCIDR").is_none() {
            let cidr = loop {
                let c = format!("{}/24", Ipv4Addr::from(base + (next << 8)));
                next += 1;
                if !used.contains(&c) {
                    break c;
                }
            };
            let _ = store.update_with(nrt, "", &name, Sub::Main, CM, |x| {
                x["spec"]["podCIDR"] = json!(cidr);
                x["spec"]["podCIDRs"] = json!([cidr]);
                x["spec"]["providerID"] = json!(format!("k3s://{name}"));
            });
            rec.event(
                store,
                n,
                "Normal",
                "CIDRAssignmentSucceeded",
                &format!("Node {name} status is now: CIDRAssignmentSucceeded"),
                "cidrAllocator",
            );
        }
    }
    let now_s = jiff::Timestamp::now().as_second();
    let ts = now();
    for n in store.all(nrt) {
        let name = meta(&n, "name").to_string();
        let mut status = ready_status(&n);
        // A node that stopped posting status turns Unknown.
        if status != "Unknown" && heartbeat_age(&n) > grace_secs {
            let _ = store.update_with(nrt, "", &name, Sub::Status, CM, |x| {
                for c in x["status"]["conditions"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(ts);
                }
            });
            rec.event(
                store,
                &n,
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
                "node-controller",
            );
            // MarkPodsNotReady.
            let (pods, _) = store.list(prt, None, &Default::default(), &Default::default());
            for p in pods
                .iter()
                .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(&name))
            {
                let (pn, pns, _) = id(p);
                let _ = store.update_with(prt, &pns, &pn, Sub::Status, "node-controller", |x| {
                    for c in x["status"]["conditions"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                            c["status"] = json!("False");
                            c["lastTransitionTime"] = json!(ts);
                        }
                    }
                    for cs in x["status"]["containerStatuses"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        cs["ready"] = json!(false);
                    }
                });
            }
            status = "Unknown".into();
        }
        let (want_key, other_key) = match status.as_str() {
            "True" => ("", ""),
            "False" => (
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ),
            _ => (
                "node.kubernetes.io/unreachable",
                "node.kubernetes.io/not-ready",
            ),
        };
        let n_now = store.get(nrt, "", &name).unwrap_or(n.clone());
        let taints: Vec<Value> = n_now
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut new_taints: Vec<Value> = taints
            .iter()
            .filter(|t| {
                let k = t["key"].as_str().unwrap_or_default();
                !(k == other_key
                    || (want_key.is_empty()
                        && (k == "node.kubernetes.io/not-ready"
                            || k == "node.kubernetes.io/unreachable")))
            })
            .cloned()
            .collect();
        if !want_key.is_empty() {
            for effect in ["NoSchedule", "NoExecute"] {
                if !new_taints
                    .iter()
                    .any(|t| t["key"] == want_key && t["effect"] == effect)
                {
                    let mut t = json!({"key": want_key, "effect": effect});
                    if effect == "NoExecute" {
                        t["timeAdded"] = json!(ts);
                    }
                    new_taints.push(t);
                }
            }
        }
        if new_taints != taints {
            let _ = store.update_with(nrt, "", &name, Sub::Main, CM, |x| {
                x["spec"]["taints"] = json!(new_taints.clone())
            });
            if status == "True" {
                rec.event(
                    store,
                    &n_now,
                    "Normal",
                    "NodeReady",
                    &format!("Node {name} status is now: NodeReady"),
                    "kubelet",
                );
            }
        }
        // NoExecute eviction.
        let no_exec: Vec<Value> = new_taints
            .iter()
            .filter(|t| t["effect"] == "NoExecute")
            .cloned()
            .collect();
        if !no_exec.is_empty() {
            let (pods, _) = store.list(prt, None, &Default::default(), &Default::default());
            for p in pods.iter().filter(|p| {
                p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(&name) && pod_active(p)
            }) {
                let tols: Vec<Value> = p
                    .pointer("/spec/tolerations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut evict = false;
                for t in &no_exec {
                    let matching: Vec<&Value> = tols
                        .iter()
                        .filter(|tol| tolerates(std::slice::from_ref(*tol), t))
                        .collect();
                    if matching.is_empty() {
                        evict = true;
                        break;
                    }
                    let secs = matching
                        .iter()
                        .filter_map(|tol| tol["tolerationSeconds"].as_i64())
                        .min();
                    if let Some(secs) = secs
                        && matching
                            .iter()
                            .all(|tol| tol.get("tolerationSeconds").is_some())
                    {
                        let added = t["timeAdded"]
                            .as_str()
                            .and_then(parse_time)
                            .map(|x| x.as_second())
                            .unwrap_or(now_s);
                        if now_s - added >= secs {
                            evict = true;
                            break;
                        }
                    }
                }
                if evict {
                    let (pn, pns, _) = id(p);
                    rec.event(
                        store,
                        p,
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {pns}/{pn}"),
                        "taint-eviction-controller",
                    );
                    let _ = store.delete(prt, &pns, &pn, &DeleteOpts::default());
                }
            }
        }
    }
    // Pod GC: pods on nodes that no longer exist.
    let names: BTreeSet<String> = store
        .all(nrt)
        .iter()
        .map(|n| meta(n, "name").to_string())
        .collect();
    for p in store.all(prt) {
        if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str)
            && !n.is_empty()
            && !names.contains(n)
        {
            let (pn, pns, _) = id(&p);
            store.remove(prt, &pns, &pn);
        }
    }
}

/// k3s ServiceLB: a DaemonSet per LoadBalancer Service holding its ports as hostPorts.
pub fn servicelb(store: &Store) {
    let srt = resources::core("services");
    let dsrt = resources::apps("daemonsets");
    let mut wanted = BTreeSet::new();
    for svc in store.all(srt) {
        if svc.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
            || deleting(&svc)
        {
            continue;
        }
        let (name, ns, uid) = id(&svc);
        let ds_name = format!("svclb-{name}-{}", &uid.replace('-', "")[..8]);
        wanted.insert(ds_name.clone());
        if store.get(dsrt, "kube-system", &ds_name).is_some() {
            continue;
        }
        let containers: Vec<Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let port = p["port"].as_u64().unwrap_or(0);
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                json!({
                    "name": format!("lb-{}-{port}", proto.to_lowercase()),
                    "image": "rancher/klipper-lb:v0.4.13",
                    "ports": [{"name": format!("lb-{}-{port}", proto.to_lowercase()), "containerPort": port, "hostPort": port, "protocol": proto}],
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                })
            })
            .collect();
        let labels = json!({"app": ds_name, "svccontroller.k3s.cattle.io/svcname": name, "svccontroller.k3s.cattle.io/svcnamespace": ns});
        let body = json!({
            "metadata": {"name": ds_name, "namespace": "kube-system", "labels": labels, "ownerReferences": [owner_ref(&svc)]},
            "spec": {
                "selector": {"matchLabels": {"app": ds_name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": containers,
                        "serviceAccountName": "svclb",
                        "automountServiceAccountToken": false,
                        "tolerations": [
                            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        ],
                    },
                },
            },
        });
        let _ = store.create(dsrt, "kube-system", body, &opts("svccontroller"));
    }
    for ds in store.all(dsrt) {
        let n = meta(&ds, "name");
        if n.starts_with("svclb-") && !wanted.contains(n) {
            let _ = store.delete(dsrt, "kube-system", n, &DeleteOpts::default());
        }
    }
    // Ingress status: the nodes running a ready svclb pod.
    for svc in store.all(srt) {
        if svc.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer") {
            continue;
        }
        let (name, ns, uid) = id(&svc);
        let ds_name = format!("svclb-{name}-{}", &uid.replace('-', "")[..8]);
        let (pods, _) = store.list(
            resources::core("pods"),
            Some("kube-system"),
            &crate::standin::store::selectors::LabelSelector::parse(&format!("app={ds_name}"))
                .unwrap_or_default(),
            &Default::default(),
        );
        let ips: Vec<Value> = pods
            .iter()
            .filter(|p| super::util::pod_ready_since(p).is_some())
            .filter_map(|p| p.pointer("/status/hostIP").cloned())
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        let _ = store.update_with(srt, &ns, &name, Sub::Status, "svccontroller", |s| {
            s["status"]["loadBalancer"] = if ips.is_empty() {
                json!({})
            } else {
                json!({"ingress": ips})
            };
        });
    }
}
