//! The default scheduler, for the filters that decide where (and whether) the installer's pods
//! land (kube-scheduler 1.36 plugins):
//! `NodeUnschedulable` ("node(s) were unschedulable"), `TaintToleration` ("node(s) had
//! untolerated taint(s)"), `NodeAffinity` incl. nodeSelector ("node(s) didn't match Pod's node
//! affinity/selector"), `NodePorts` ("node(s) didn't have free ports for the requested pod
//! ports"), `NodeResourcesFit` ("Insufficient cpu", "Insufficient memory", "Too many pods") and
//! `InterPodAffinity` ("node(s) didn't match pod anti-affinity rules" / "pod affinity rules").
//! An unschedulable pod gets `PodScheduled=False`, reason `Unschedulable`, and a `FailedScheduling`
//! event with the scheduler's message, e.g. `0/3 nodes are available: 3 node(s) didn't have free
//! ports for the requested pod ports. no new claims to deallocate, preemption: 0/3 nodes are
//! available: 3 No preemption victims found for incoming pod.`. Feasible nodes are scored by how
//! few pods of the same owner, then how few pods in total, they run (a simplification of the
//! spreading scores).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::util::{Recorder, cpu_milli, id, mem_bytes, meta, pod_active};
use crate::standin::store::selectors::LabelSelector;
use crate::standin::store::{Store, Sub, now, resources};

/// Why a node does not fit, and whether preemption could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub reason: String,
    pub resolvable: bool,
}

fn unfit(reason: &str, resolvable: bool) -> Option<Unfit> {
    Some(Unfit {
        reason: reason.to_string(),
        resolvable,
    })
}

/// Whether `tolerations` tolerate `taint` (`v1helper.TolerationsTolerateTaint`).
pub fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
        let key = t["key"].as_str().unwrap_or_default();
        let op = t["operator"].as_str().unwrap_or("Equal");
        let key_ok =
            key.is_empty() && op == "Exists" || key == taint["key"].as_str().unwrap_or_default();
        let value_ok = op == "Exists"
            || t["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default();
        effect_ok && key_ok && value_ok
    })
}

fn node_selector_term_matches(term: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let exprs_ok = term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                "Gt" => label(key)
                    .and_then(|v| v.parse::<i64>().ok())
                    .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
                    .is_some_and(|(a, b)| a > b),
                "Lt" => label(key)
                    .and_then(|v| v.parse::<i64>().ok())
                    .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
                    .is_some_and(|(a, b)| a < b),
                _ => false,
            }
        });
    let fields_ok = term["matchFields"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let v = if e["key"] == "metadata.name" {
                meta(node, "name")
            } else {
                ""
            };
            match e["operator"].as_str().unwrap_or_default() {
                "In" => values.contains(&v),
                "NotIn" => !values.contains(&v),
                _ => false,
            }
        });
    exprs_ok && fields_ok
}

/// nodeSelector and required node affinity.
pub fn node_affinity_ok(pod_spec: &Value, node: &Value) -> bool {
    if let Some(sel) = pod_spec.get("nodeSelector").and_then(Value::as_object) {
        let labels = node.pointer("/metadata/labels");
        for (k, v) in sel {
            if labels.and_then(|l| l.get(k)) != Some(v) {
                return false;
            }
        }
    }
    match pod_spec.pointer(
        "/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    ) {
        Some(Value::Array(terms)) if !terms.is_empty() => {
            terms.iter().any(|t| node_selector_term_matches(t, node))
        }
        _ => true,
    }
}

/// Taints with NoSchedule/NoExecute that the pod does not tolerate.
pub fn untolerated(pod_spec: &Value, node: &Value, effects: &[&str]) -> Vec<Value> {
    let tols: Vec<Value> = pod_spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| effects.contains(&t["effect"].as_str().unwrap_or_default()))
        .filter(|t| !tolerates(&tols, t))
        .cloned()
        .collect()
}

/// The host ports a pod uses: `(protocol, port)`.
pub fn host_ports(pod: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(hp) = p["hostPort"].as_u64().filter(|h| *h > 0) {
                    out.push((p["protocol"].as_str().unwrap_or("TCP").to_string(), hp));
                }
            }
        }
    }
    out
}

fn requests(pod: &Value) -> (i64, i64) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = c.pointer("/resources/requests") {
            cpu += r["cpu"].as_str().map(cpu_milli).unwrap_or(0);
            mem += r["memory"].as_str().map(mem_bytes).unwrap_or(0);
        }
    }
    (cpu, mem)
}

fn affinity_terms<'a>(spec: &'a Value, kind: &str) -> Vec<&'a Value> {
    spec.pointer(&format!(
        "/affinity/{kind}/requiredDuringSchedulingIgnoredDuringExecution"
    ))
    .and_then(Value::as_array)
    .map(|a| a.iter().collect())
    .unwrap_or_default()
}

fn term_matches_pod(term: &Value, term_ns: &str, other: &Value) -> bool {
    let namespaces: Vec<&str> = term["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let ns_ok = if namespaces.is_empty() {
        meta(other, "namespace") == term_ns
    } else {
        namespaces.contains(&meta(other, "namespace"))
    };
    ns_ok
        && LabelSelector::from_object(&term["labelSelector"])
            .matches(other.pointer("/metadata/labels"))
}

fn same_topology(a: &Value, b: &Value, key: &str) -> bool {
    let la = a.pointer("/metadata/labels").and_then(|l| l.get(key));
    let lb = b.pointer("/metadata/labels").and_then(|l| l.get(key));
    la.is_some() && la == lb
}

/// Run the filters for `pod` on `node`, given the active pods per node.
pub fn filter(
    pod: &Value,
    node: &Value,
    nodes: &[Value],
    pods_by_node: &BTreeMap<String, Vec<Value>>,
) -> Option<Unfit> {
    let spec = &pod["spec"];
    let node_name = meta(node, "name");
    let tols: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        let t = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if !tolerates(&tols, &t) {
            return unfit("node(s) were unschedulable", false);
        }
    }
    if !untolerated(spec, node, &["NoSchedule", "NoExecute"]).is_empty() {
        return unfit("node(s) had untolerated taint(s)", false);
    }
    if !node_affinity_ok(spec, node) {
        return unfit("node(s) didn't match Pod's node affinity/selector", false);
    }
    let empty = Vec::new();
    let on_node = pods_by_node.get(node_name).unwrap_or(&empty);
    let mine = host_ports(pod);
    if !mine.is_empty() {
        let used: Vec<(String, u64)> = on_node.iter().flat_map(host_ports).collect();
        if mine.iter().any(|p| used.contains(p)) {
            return unfit(
                "node(s) didn't have free ports for the requested pod ports",
                true,
            );
        }
    }
    let alloc = node.pointer("/status/allocatable");
    let max_pods: usize = alloc
        .and_then(|a| a["pods"].as_str())
        .and_then(|p| p.parse().ok())
        .unwrap_or(110);
    if on_node.len() + 1 > max_pods {
        return unfit("Too many pods", true);
    }
    let (cpu, mem) = requests(pod);
    if cpu > 0 || mem > 0 {
        let (used_cpu, used_mem) = on_node
            .iter()
            .map(requests)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let cap_cpu = alloc
            .and_then(|a| a["cpu"].as_str())
            .map(cpu_milli)
            .unwrap_or(i64::MAX);
        let cap_mem = alloc
            .and_then(|a| a["memory"].as_str())
            .map(mem_bytes)
            .unwrap_or(i64::MAX);
        if cpu > 0 && used_cpu + cpu > cap_cpu {
            return unfit("Insufficient cpu", true);
        }
        if mem > 0 && used_mem + mem > cap_mem {
            return unfit("Insufficient memory", true);
        }
    }
    // InterPodAffinity: the incoming pod's anti-affinity and affinity, and existing pods'
    // anti-affinity against it.
    let ns = meta(pod, "namespace");
    let all_pods: Vec<(&Value, &Value)> = pods_by_node
        .iter()
        .flat_map(|(n, ps)| {
            let nobj = nodes.iter().find(|x| meta(x, "name") == n);
            ps.iter().filter_map(move |p| nobj.map(|no| (p, no)))
        })
        .collect();
    for term in affinity_terms(spec, "podAntiAffinity") {
        let key = term["topologyKey"]
            .as_str()
            .unwrap_or("kubernetes.io/hostname");
        if all_pods
            .iter()
            .any(|(p, pn)| same_topology(node, pn, key) && term_matches_pod(term, ns, p))
        {
            return unfit("node(s) didn't match pod anti-affinity rules", true);
        }
    }
    for (p, pn) in &all_pods {
        for term in affinity_terms(&p["spec"], "podAntiAffinity") {
            let key = term["topologyKey"]
                .as_str()
                .unwrap_or("kubernetes.io/hostname");
            if same_topology(node, pn, key) && term_matches_pod(term, meta(p, "namespace"), pod) {
                return unfit("node(s) didn't match pod anti-affinity rules", true);
            }
        }
    }
    for term in affinity_terms(spec, "podAffinity") {
        let key = term["topologyKey"]
            .as_str()
            .unwrap_or("kubernetes.io/hostname");
        let any_match = all_pods.iter().any(|(p, _)| term_matches_pod(term, ns, p));
        let here = all_pods
            .iter()
            .any(|(p, pn)| same_topology(node, pn, key) && term_matches_pod(term, ns, p));
        // A pod may match its own affinity term when no pod matches yet (first of a group).
        if !here && (any_match || !term_matches_pod(term, ns, pod)) {
            return unfit("node(s) didn't match pod affinity rules", false);
        }
    }
    None
}

/// The FailedScheduling message (`framework.FitError.Error` with the preemption post-filter).
pub fn fit_error(total: usize, reasons: &[Unfit]) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let hist = |items: &mut dyn Iterator<Item = String>| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in items {
            *counts.entry(r).or_default() += 1;
        }
        let mut v: Vec<String> = counts
            .into_iter()
            .map(|(r, c)| format!("{c} {r}"))
            .collect();
        v.sort();
        v.join(", ")
    };
    let filters = hist(&mut reasons.iter().map(|u| u.reason.clone()));
    let preempt = hist(&mut reasons.iter().map(|u| {
        if u.resolvable {
            "No preemption victims found for incoming pod".to_string()
        } else {
            "Preemption is not helpful for scheduling".to_string()
        }
    }));
    format!(
        "0/{total} nodes are available: {filters}. no new claims to deallocate, preemption: 0/{total} nodes are available: {preempt}."
    )
}

/// One scheduling pass over pending pods.
pub fn run(store: &Store, rec: &Recorder) {
    let pods_rt = resources::core("pods");
    let nodes = store.all(resources::core("nodes"));
    let pods = store.all(pods_rt);
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in &pods {
        if let Some(n) = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            && pod_active(p)
        {
            by_node.entry(n.to_string()).or_default().push(p.clone());
        }
    }
    for pod in pods {
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
            || super::util::deleting(&pod)
            || pod
                .pointer("/spec/schedulerName")
                .and_then(Value::as_str)
                .unwrap_or("default-scheduler")
                != "default-scheduler"
        {
            continue;
        }
        let mut reasons = Vec::new();
        let mut feasible: Vec<&Value> = Vec::new();
        for n in &nodes {
            match filter(&pod, n, &nodes, &by_node) {
                Some(u) => reasons.push(u),
                None => feasible.push(n),
            }
        }
        let (name, ns, _) = id(&pod);
        let owner = super::util::controller_uid(&pod);
        if let Some(best) = feasible.into_iter().min_by_key(|n| {
            let on = by_node.get(meta(n, "name")).cloned().unwrap_or_default();
            let same = on
                .iter()
                .filter(|p| owner.is_some() && super::util::controller_uid(p) == owner)
                .count();
            (same, on.len(), meta(n, "name").to_string())
        }) {
            let node_name = meta(best, "name").to_string();
            let ts = now();
            let bound = store.update_with(pods_rt, &ns, &name, Sub::Main, "kube-scheduler", |p| {
                p["spec"]["nodeName"] = json!(node_name);
            });
            if let Ok(p) = bound {
                let _ = store.update_with(pods_rt, &ns, &name, Sub::Status, "kube-scheduler", |p| {
                    let conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
                    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts}));
                    p["status"]["conditions"] = json!(conds);
                });
                rec.event(
                    store,
                    &p,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node_name}"),
                    "default-scheduler",
                );
                by_node.entry(node_name).or_default().push(p);
            }
        } else {
            let msg = fit_error(nodes.len(), &reasons);
            let ts = now();
            let _ = store.update_with(pods_rt, &ns, &name, Sub::Status, "kube-scheduler", |p| {
                let conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let prev = conds.iter().find(|c| c["type"] == "PodScheduled").cloned();
                let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
                let ltt = prev
                    .as_ref()
                    .filter(|c| c["status"] == "False")
                    .map(|c| c["lastTransitionTime"].clone())
                    .unwrap_or(json!(ts));
                conds.push(json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": ltt, "reason": "Unschedulable", "message": msg}));
                p["status"]["conditions"] = json!(conds);
            });
            rec.event(
                store,
                &pod,
                "Warning",
                "FailedScheduling",
                &msg,
                "default-scheduler",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, taints: Value, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}, "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}})
    }

    fn pod(name: &str, port: Option<u64>) -> Value {
        let ports = port
            .map(|p| json!([{"containerPort": p, "hostPort": p, "protocol": "TCP"}]))
            .unwrap_or(json!([]));
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "a"}}, "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "x", "ports": ports}], "tolerations": []}})
    }

    #[test]
    fn host_port_conflicts_and_taints() {
        let n1 = node("n1", json!([]), json!({"kubernetes.io/hostname": "n1"}));
        let n2 = node(
            "n2",
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]),
            json!({"kubernetes.io/hostname": "n2"}),
        );
        let nodes = vec![n1.clone(), n2.clone()];
        let mut by_node = BTreeMap::new();
        by_node.insert("n1".to_string(), vec![pod("old", Some(8080))]);
        let p = pod("new", Some(8080));
        let r1 = filter(&p, &n1, &nodes, &by_node).unwrap();
        let r2 = filter(&p, &n2, &nodes, &by_node).unwrap();
        assert_eq!(
            r1.reason,
            "node(s) didn't have free ports for the requested pod ports"
        );
        assert_eq!(r2.reason, "node(s) had untolerated taint(s)");
        assert_eq!(
            fit_error(2, &[r1, r2]),
            "0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) had untolerated taint(s). no new claims to deallocate, preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
        assert!(filter(&pod("other", Some(9090)), &n1, &nodes, &by_node).is_none());
    }

    #[test]
    fn selectors_and_anti_affinity() {
        let n1 = node(
            "n1",
            json!([]),
            json!({"kubernetes.io/hostname": "n1", "role": "db"}),
        );
        let nodes = vec![n1.clone()];
        let mut p = pod("x", None);
        p["spec"]["nodeSelector"] = json!({"role": "web"});
        assert_eq!(
            filter(&p, &n1, &nodes, &BTreeMap::new()).unwrap().reason,
            "node(s) didn't match Pod's node affinity/selector"
        );
        let mut q = pod("y", None);
        q["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        let mut by_node = BTreeMap::new();
        by_node.insert("n1".to_string(), vec![pod("z", None)]);
        assert_eq!(
            filter(&q, &n1, &nodes, &by_node).unwrap().reason,
            "node(s) didn't match pod anti-affinity rules"
        );
    }

    #[test]
    fn tolerations() {
        let t = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"});
        assert!(tolerates(&[json!({"operator": "Exists"})], &t));
        assert!(tolerates(
            &[
                json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"})
            ],
            &t
        ));
        assert!(!tolerates(
            &[
                json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"})
            ],
            &t
        ));
    }
}
