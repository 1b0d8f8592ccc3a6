//! What both benchmarks use: the 100-pod, 50-policy snapshot on 3 nodes.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use installer_enforcer::model::Snapshot;
use serde_json::json;

pub const PODS: usize = 100;
pub const POLICIES: usize = 50;
pub const NODES: usize = 3;

pub fn snapshot() -> Snapshot {
    let roles = 10;
    let pods: Vec<_> = (0..PODS)
        .map(|i| {
            json!({
                "metadata": {"namespace": "app", "name": format!("p{i}"), "uid": format!("0000-bench-{i}"),
                             "labels": {"role": format!("r{}", i % roles), "idx": i.to_string()}},
                "spec": {"nodeName": format!("n{}", i % NODES), "hostNetwork": true,
                         "containers": [{"name": "c", "ports": [{"name": "main", "containerPort": 10000 + i}, {"name": "aux", "containerPort": 20000 + i, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "qosClass": "Burstable"}
            })
        })
        .collect();
    let policies: Vec<_> = (0..POLICIES)
        .map(|i| {
            json!({"metadata": {"namespace": "app", "name": format!("pol{i}")}, "spec": {
                "podSelector": {"matchLabels": {"role": format!("r{}", i % roles)}},
                "policyTypes": if i % 5 == 0 { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) },
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("r{}", (i + 1) % roles)}}},
                                      {"ipBlock": {"cidr": "192.168.0.0/16", "except": [format!("192.168.{i}.0/24")]}}],
                             "ports": [{"port": "main"}, {"port": 30000, "endPort": 30010}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"role": format!("r{}", (i + 2) % roles)}}}], "ports": [{"port": "main"}]}]
            }})
        })
        .collect();
    let nodes: Vec<_> = (0..NODES)
        .map(|n| json!({"metadata": {"name": format!("n{n}")}, "status": {"addresses": [{"type": "InternalIP", "address": format!("10.254.0.{}", n + 1)}]}}))
        .collect();
    serde_json::from_value(json!({"pods": pods, "namespaces": [{"metadata": {"name": "app"}}], "policies": policies, "nodes": nodes})).unwrap()
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
