//! Workload controllers: Deployment, ReplicaSet, DaemonSet, StatefulSet, Job, and
//! PodDisruptionBudget status, after kube-controller-manager 1.36 (`pkg/controller/...`).
//!
//! - Deployment (`deployment/sync.go`, `rolling.go`, `recreate.go`, `progress.go`): one
//!   ReplicaSet per pod template (`<name>-<pod-template-hash>`, revision annotations); rolling
//!   updates respect `maxSurge` (rounded up) and `maxUnavailable` (rounded down), so with hostNetwork
//!   pods and a surge the new pod can stay Pending on a host-port clash, as in a real cluster;
//!   `Recreate` scales the old ReplicaSets to zero first. Status: `observedGeneration`,
//!   `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`, `unavailableReplicas`,
//!   and the `Available` and `Progressing` conditions with their reasons
//!   (`NewReplicaSetAvailable` once complete, `ProgressDeadlineExceeded` after
//!   `progressDeadlineSeconds` without progress).
//! - ReplicaSet: creates and deletes pods to match `replicas` (deleting unscheduled, then pending,
//!   then not-ready pods first), with `SuccessfulCreate`/`SuccessfulDelete` events.
//! - DaemonSet (`daemon/daemon_controller.go`): a pod for each node the template's selector,
//!   affinity and tolerations (plus the DaemonSet default tolerations) admit, pinned with a
//!   `metadata.name` node affinity and placed by the scheduler; rolling updates replace at most
//!   `maxUnavailable` pods at a time.
//! - StatefulSet (`statefulset/stateful_set_control.go`): pods `<name>-<ordinal>`; with
//!   `OrderedReady` each is created only when all lower ordinals are Running and Ready, scale-down
//!   and rolling updates go from the highest ordinal, one at a time, honouring `partition`.
//! - Job: runs pods until `completions` succeed, then `Complete` (and `SuccessCriteriaMet`).
//! - PodDisruptionBudget (`disruption/disruption.go`): `expectedPods`, `currentHealthy`,
//!   `desiredHealthy`, `disruptionsAllowed`, which the eviction API checks.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::scheduler::{node_affinity_ok, untolerated};
use super::util::{
    Recorder, deleting, id, int_or_percent, meta, owned_by, owner_ref, pod_active, pod_available,
    template_hash,
};
use crate::standin::store::selectors::LabelSelector;
use crate::standin::store::{DeleteOpts, Store, Sub, WriteOpts, name_suffix, now, resources};

const CM: &str = "kube-controller-manager";

fn opts() -> WriteOpts {
    WriteOpts {
        manager: CM.into(),
        ..Default::default()
    }
}

fn pods_of(store: &Store, owner_uid: &str, ns: &str) -> Vec<Value> {
    let (pods, _) = store.list(
        resources::core("pods"),
        Some(ns),
        &LabelSelector::default(),
        &Default::default(),
    );
    pods.into_iter()
        .filter(|p| owned_by(p, owner_uid))
        .collect()
}

fn create_pod(
    store: &Store,
    rec: &Recorder,
    owner: &Value,
    template: &Value,
    name: &str,
    extra_labels: &Value,
    extra_spec: impl FnOnce(&mut Value),
) -> Option<Value> {
    let (_, ns, _) = id(owner);
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(ns);
    pod["metadata"]["ownerReferences"] = json!([owner_ref(owner)]);
    if let Some(m) = extra_labels.as_object() {
        for (k, v) in m {
            pod["metadata"]["labels"][k] = v.clone();
        }
    }
    extra_spec(&mut pod);
    match store.create(resources::core("pods"), &ns, pod, &opts()) {
        Ok(w) => {
            rec.event(
                store,
                owner,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {name}"),
                owner_component(owner),
            );
            Some(w.object)
        }
        Err(e) => {
            rec.event(
                store,
                owner,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {}", e.message),
                owner_component(owner),
            );
            None
        }
    }
}

fn owner_component(owner: &Value) -> &'static str {
    match owner["kind"].as_str() {
        Some("ReplicaSet") => "replicaset-controller",
        Some("DaemonSet") => "daemonset-controller",
        Some("StatefulSet") => "statefulset-controller",
        Some("Job") => "job-controller",
        Some("Deployment") => "deployment-controller",
        _ => CM,
    }
}

fn delete_pod(store: &Store, rec: &Recorder, owner: &Value, pod: &Value) {
    let (name, ns, _) = id(pod);
    if store
        .delete(resources::core("pods"), &ns, &name, &DeleteOpts::default())
        .is_ok()
    {
        rec.event(
            store,
            owner,
            "Normal",
            "SuccessfulDelete",
            &format!("Deleted pod: {name}"),
            owner_component(owner),
        );
    }
}

fn set_status(
    store: &Store,
    rt: &'static crate::standin::store::resources::ResourceType,
    o: &Value,
    status: Value,
) {
    let (name, ns, _) = id(o);
    let _ = store.update_with(rt, &ns, &name, Sub::Status, CM, |x| {
        // Keep transition times of unchanged conditions.
        let mut status = status;
        if let Some(new) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in new.iter_mut() {
                let old = x
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|oc| oc["type"] == c["type"]));
                if let Some(old) = old
                    && old["status"] == c["status"]
                {
                    c["lastTransitionTime"] = old["lastTransitionTime"].clone();
                    if old["reason"] == c["reason"] {
                        c["lastUpdateTime"] = old
                            .get("lastUpdateTime")
                            .cloned()
                            .unwrap_or(c["lastUpdateTime"].clone());
                    }
                }
            }
        }
        x["status"] = status;
    });
}

// ---------------------------------------------------------------- ReplicaSet

fn pod_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let unscheduled = p
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let pending = p.pointer("/status/phase").and_then(Value::as_str) != Some("Running");
    let ready = super::util::pod_ready_since(p).is_some();
    (
        if unscheduled { 0 } else { 1 },
        if pending { 0 } else { 1 },
        if ready { 1 } else { 0 },
        std::cmp::Reverse(meta(p, "creationTimestamp").to_string()),
    )
}

/// Sync all ReplicaSets.
pub fn replicasets(store: &Store, rec: &Recorder) {
    let rt = resources::apps("replicasets");
    for rs in store.all(rt) {
        if deleting(&rs) {
            continue;
        }
        let (name, ns, uid) = id(&rs);
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let min_ready = rs
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut active: Vec<Value> = pods_of(store, &uid, &ns)
            .into_iter()
            .filter(pod_active)
            .collect();
        let have = active.len() as i64;
        if have < want {
            let template = rs.pointer("/spec/template").cloned().unwrap_or_default();
            for _ in 0..(want - have) {
                let pname = format!("{name}-{}", name_suffix(5));
                if let Some(p) = create_pod(store, rec, &rs, &template, &pname, &json!({}), |_| {})
                {
                    active.push(p);
                }
            }
        } else if have > want {
            active.sort_by_key(pod_rank);
            for p in active.iter().take((have - want) as usize) {
                delete_pod(store, rec, &rs, p);
            }
            active = pods_of(store, &uid, &ns)
                .into_iter()
                .filter(pod_active)
                .collect();
        }
        let ready = active
            .iter()
            .filter(|p| super::util::pod_ready_since(p).is_some())
            .count();
        let available = active
            .iter()
            .filter(|p| pod_available(p, min_ready))
            .count();
        let mut status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        if let Some(m) = status.as_object_mut() {
            for k in ["readyReplicas", "availableReplicas"] {
                if m[k] == 0 {
                    m.remove(k);
                }
            }
        }
        set_status(store, rt, &rs, status);
    }
}

// ---------------------------------------------------------------- Deployment

fn strip_hash(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove("pod-template-hash");
    }
    t
}

fn rs_replicas(rs: &Value) -> i64 {
    rs.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn rs_available(rs: &Value) -> i64 {
    rs.pointer("/status/availableReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn scale_rs(store: &Store, rec: &Recorder, d: &Value, rs: &Value, to: i64) {
    let from = rs_replicas(rs);
    if from == to {
        return;
    }
    let (name, ns, _) = id(rs);
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let surge = d
        .pointer("/spec/strategy/rollingUpdate/maxSurge")
        .map(|s| int_or_percent(s, want, true))
        .unwrap_or(0);
    let _ = store.update_with(
        resources::apps("replicasets"),
        &ns,
        &name,
        Sub::Main,
        "deployment-controller",
        |r| {
            r["spec"]["replicas"] = json!(to);
            r["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                json!(want.to_string());
            r["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] =
                json!((want + surge).to_string());
        },
    );
    let verb = if to > from { "up" } else { "down" };
    rec.event(
        store,
        d,
        "Normal",
        "ScalingReplicaSet",
        &format!("Scaled {verb} replica set {name} from {from} to {to}"),
        "deployment-controller",
    );
}

/// Sync all Deployments.
pub fn deployments(store: &Store, rec: &Recorder) {
    let rt = resources::apps("deployments");
    let rsrt = resources::apps("replicasets");
    for d in store.all(rt) {
        if deleting(&d) {
            continue;
        }
        let (name, ns, uid) = id(&d);
        let want = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let template = d.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = template_hash(&template);
        let (all_rs, _) = store.list(
            rsrt,
            Some(&ns),
            &LabelSelector::default(),
            &Default::default(),
        );
        let mut owned: Vec<Value> = all_rs
            .into_iter()
            .filter(|r| owned_by(r, &uid) && !deleting(r))
            .collect();
        let max_rev = owned
            .iter()
            .filter_map(|r| {
                r.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<i64>().ok())
            })
            .max()
            .unwrap_or(0);
        let mut new_rs = owned
            .iter()
            .find(|r| {
                strip_hash(r.pointer("/spec/template").unwrap_or(&Value::Null))
                    == strip_hash(&template)
            })
            .cloned();
        let mut created_new = false;
        if new_rs.is_none() {
            let rs_name = format!("{name}-{hash}");
            let mut tpl = template.clone();
            tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut sel = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            sel["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels["pod-template-hash"] = json!(hash);
            let strategy = d
                .pointer("/spec/strategy/type")
                .and_then(Value::as_str)
                .unwrap_or("RollingUpdate");
            let total: i64 = owned.iter().map(rs_replicas).sum();
            let initial = if strategy == "Recreate" || total > 0 {
                0
            } else {
                want
            };
            let body = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {
                        "deployment.kubernetes.io/revision": (max_rev + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": want.to_string(),
                        "deployment.kubernetes.io/max-replicas": want.to_string(),
                    },
                    "ownerReferences": [owner_ref(&d)],
                },
                "spec": {"replicas": initial, "minReadySeconds": d.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)), "selector": sel, "template": tpl},
            });
            match store.create(rsrt, &ns, body, &opts()) {
                Ok(w) => {
                    if initial > 0 {
                        rec.event(
                            store,
                            &d,
                            "Normal",
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {rs_name} from 0 to {initial}"),
                            "deployment-controller",
                        );
                    }
                    owned.push(w.object.clone());
                    new_rs = Some(w.object);
                    created_new = true;
                }
                Err(e) if e.reason == "AlreadyExists" => new_rs = store.get(rsrt, &ns, &rs_name),
                Err(_) => continue,
            }
        }
        let Some(new_rs) = new_rs else { continue };
        let new_name = meta(&new_rs, "name").to_string();
        // The deployment's revision annotation follows its new ReplicaSet.
        let new_rev = new_rs
            .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .and_then(Value::as_str)
            .unwrap_or("1")
            .to_string();
        let _ = store.update_with(rt, &ns, &name, Sub::Main, "deployment-controller", |x| {
            x["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(new_rev);
        });
        let olds: Vec<Value> = owned
            .iter()
            .filter(|r| meta(r, "name") != new_name)
            .cloned()
            .collect();
        let paused = d
            .pointer("/spec/paused")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let strategy = d
            .pointer("/spec/strategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate");
        if !paused {
            if strategy == "Recreate" {
                let old_active: i64 = olds
                    .iter()
                    .map(|r| {
                        r.pointer("/status/replicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                    })
                    .sum();
                for r in &olds {
                    scale_rs(store, rec, &d, r, 0);
                }
                if old_active == 0 && olds.iter().all(|r| rs_replicas(r) == 0) {
                    scale_rs(store, rec, &d, &new_rs, want);
                }
            } else {
                let surge = d
                    .pointer("/spec/strategy/rollingUpdate/maxSurge")
                    .map(|s| int_or_percent(s, want, true))
                    .unwrap_or(1);
                let mut unavail = d
                    .pointer("/spec/strategy/rollingUpdate/maxUnavailable")
                    .map(|s| int_or_percent(s, want, false))
                    .unwrap_or(0);
                if surge == 0 && unavail == 0 {
                    unavail = 1;
                }
                // Scale up the new ReplicaSet within maxSurge.
                let total: i64 = owned.iter().map(rs_replicas).sum();
                let new_count = rs_replicas(&new_rs);
                if new_count < want {
                    let room = want + surge - total;
                    if room > 0 {
                        scale_rs(store, rec, &d, &new_rs, (new_count + room).min(want));
                    }
                } else if new_count > want {
                    scale_rs(store, rec, &d, &new_rs, want);
                }
                // Scale down old ReplicaSets within maxUnavailable.
                let new_rs_now = store.get(rsrt, &ns, &new_name).unwrap_or(new_rs.clone());
                let all_now: Vec<Value> = olds
                    .iter()
                    .map(|r| store.get(rsrt, &ns, meta(r, "name")).unwrap_or(r.clone()))
                    .collect();
                let total_now: i64 =
                    all_now.iter().map(rs_replicas).sum::<i64>() + rs_replicas(&new_rs_now);
                let min_available = want - unavail;
                let new_unavailable = rs_replicas(&new_rs_now) - rs_available(&new_rs_now);
                let mut max_down = total_now - min_available - new_unavailable;
                // First remove old replicas that are not available anyway.
                for r in &all_now {
                    if max_down <= 0 {
                        break;
                    }
                    let unhealthy = rs_replicas(r) - rs_available(r);
                    let cut = unhealthy.min(max_down).max(0);
                    if cut > 0 {
                        scale_rs(store, rec, &d, r, rs_replicas(r) - cut);
                        max_down -= cut;
                    }
                }
                let all_now: Vec<Value> = olds
                    .iter()
                    .map(|r| store.get(rsrt, &ns, meta(r, "name")).unwrap_or(r.clone()))
                    .collect();
                let available: i64 =
                    all_now.iter().map(rs_available).sum::<i64>() + rs_available(&new_rs_now);
                let mut can_remove = available - min_available;
                for r in &all_now {
                    if can_remove <= 0 {
                        break;
                    }
                    let n = rs_replicas(r);
                    let cut = n.min(can_remove);
                    if cut > 0 {
                        scale_rs(store, rec, &d, r, n - cut);
                        can_remove -= cut;
                    }
                }
            }
        }
        // Old ReplicaSets beyond revisionHistoryLimit with no replicas are removed.
        let limit = d
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10);
        let mut empties: Vec<Value> = olds
            .iter()
            .filter_map(|r| store.get(rsrt, &ns, meta(r, "name")))
            .filter(|r| {
                rs_replicas(r) == 0
                    && r.pointer("/status/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        == 0
            })
            .collect();
        empties.sort_by_key(|r| {
            r.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
        });
        while empties.len() as i64 > limit {
            let r = empties.remove(0);
            let _ = store.delete(rsrt, &ns, meta(&r, "name"), &DeleteOpts::default());
        }
        // Status.
        let all: Vec<Value> = owned
            .iter()
            .filter_map(|r| store.get(rsrt, &ns, meta(r, "name")))
            .collect();
        let new_now = store.get(rsrt, &ns, &new_name).unwrap_or(new_rs.clone());
        let st_i = |r: &Value, f: &str| {
            r.pointer(&format!("/status/{f}"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let replicas: i64 = all.iter().map(|r| st_i(r, "replicas")).sum();
        let ready: i64 = all.iter().map(|r| st_i(r, "readyReplicas")).sum();
        let available: i64 = all.iter().map(|r| st_i(r, "availableReplicas")).sum();
        let updated = st_i(&new_now, "replicas");
        let unavail = d
            .pointer("/spec/strategy/rollingUpdate/maxUnavailable")
            .map(|s| int_or_percent(s, want, false))
            .unwrap_or(0);
        let min_avail = if strategy == "Recreate" {
            want
        } else {
            want - unavail
        };
        let ts = now();
        let available_cond = if available >= min_avail {
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.", "lastUpdateTime": ts, "lastTransitionTime": ts})
        } else {
            json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability.", "lastUpdateTime": ts, "lastTransitionTime": ts})
        };
        let generation = d
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let complete = updated == want
            && replicas == want
            && available == want
            && st_i(&new_now, "availableReplicas") == want;
        let prev_prog = d
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
            .cloned();
        let deadline = d
            .pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(600);
        let progressed = d.pointer("/status/updatedReplicas") != Some(&json!(updated))
            || d.pointer("/status/availableReplicas") != Some(&json!(available))
            || d.pointer("/status/readyReplicas") != Some(&json!(ready))
            || created_new;
        let progressing = if complete {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{new_name}\" has successfully progressed."), "lastUpdateTime": ts, "lastTransitionTime": ts})
        } else if created_new {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated", "message": format!("Created new replica set \"{new_name}\""), "lastUpdateTime": ts, "lastTransitionTime": ts})
        } else {
            let last_update = prev_prog
                .as_ref()
                .and_then(|c| c["lastUpdateTime"].as_str())
                .and_then(crate::standin::store::parse_time)
                .map(|t| t.as_second())
                .unwrap_or_else(|| jiff::Timestamp::now().as_second());
            let stalled =
                !progressed && jiff::Timestamp::now().as_second() - last_update > deadline;
            let was_timed_out = prev_prog
                .as_ref()
                .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded");
            if (stalled || was_timed_out) && !progressed {
                json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": format!("ReplicaSet \"{new_name}\" has timed out progressing."), "lastUpdateTime": ts, "lastTransitionTime": ts})
            } else {
                let keep_update = if progressed {
                    json!(ts)
                } else {
                    prev_prog
                        .as_ref()
                        .map(|c| c["lastUpdateTime"].clone())
                        .unwrap_or(json!(ts))
                };
                json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": format!("ReplicaSet \"{new_name}\" is progressing."), "lastUpdateTime": keep_update, "lastTransitionTime": ts})
            }
        };
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (want - available).max(0),
            "conditions": [available_cond, progressing],
        });
        if let Some(m) = status.as_object_mut() {
            for k in [
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
            ] {
                if m[k] == 0 {
                    m.remove(k);
                }
            }
        }
        set_status(store, rt, &d, status);
    }
}

// ---------------------------------------------------------------- DaemonSet

/// The tolerations the DaemonSet controller adds (`pkg/controller/daemon/util`).
fn daemonset_tolerations(spec: &Value) -> Vec<Value> {
    let mut t: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !t
            .iter()
            .any(|x| x["key"] == key && (x["effect"] == effect || x.get("effect").is_none()))
        {
            t.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec["hostNetwork"] == true {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    t
}

/// Whether a DaemonSet's pod should run on `node` (`nodeShouldRunDaemonPod`).
pub fn should_run(ds: &Value, node: &Value) -> bool {
    let mut spec = ds
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_default();
    spec["tolerations"] = json!(daemonset_tolerations(&spec));
    node_affinity_ok(&spec, node)
        && untolerated(&spec, node, &["NoSchedule", "NoExecute"]).is_empty()
}

/// Sync all DaemonSets.
pub fn daemonsets(store: &Store, rec: &Recorder) {
    let rt = resources::apps("daemonsets");
    let nodes = store.all(resources::core("nodes"));
    for ds in store.all(rt) {
        if deleting(&ds) {
            continue;
        }
        let (name, ns, uid) = id(&ds);
        let template = ds.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = template_hash(&template);
        let generation = ds
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let pods: Vec<Value> = pods_of(store, &uid, &ns)
            .into_iter()
            .filter(|p| !deleting(p))
            .collect();
        let node_of = |p: &Value| -> String {
            p.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
                .and_then(Value::as_str)
                .or_else(|| p.pointer("/spec/nodeName").and_then(Value::as_str))
                .unwrap_or_default()
                .to_string()
        };
        let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for p in &pods {
            by_node.entry(node_of(p)).or_default().push(p.clone());
        }
        let mut desired = 0;
        let mut current = 0;
        let mut misscheduled = 0;
        let mut ready = 0;
        let mut available = 0;
        let mut updated = 0;
        let max_unavail = ds
            .pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
            .map(|v| int_or_percent(v, nodes.len() as i64, true))
            .unwrap_or(1)
            .max(1);
        let rolling = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        let min_ready = ds
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut unavailable_now = 0;
        let mut stale: Vec<Value> = Vec::new();
        for node in &nodes {
            let nname = meta(node, "name").to_string();
            let run = should_run(&ds, node);
            let here = by_node.remove(&nname).unwrap_or_default();
            if run {
                desired += 1;
                if here.is_empty() {
                    let pname = format!("{name}-{}", name_suffix(5));
                    let labels = json!({"controller-revision-hash": hash, "pod-template-generation": generation.to_string()});
                    let tols = daemonset_tolerations(template.get("spec").unwrap_or(&Value::Null));
                    let target = nname.clone();
                    create_pod(store, rec, &ds, &template, &pname, &labels, |p| {
                        p["spec"]["tolerations"] = json!(tols);
                        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
                            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [target]}]}]
                        });
                    });
                    unavailable_now += 1;
                } else {
                    current += 1;
                    let p = &here[0];
                    if super::util::pod_ready_since(p).is_some() {
                        ready += 1;
                    }
                    if pod_available(p, min_ready) {
                        available += 1;
                    } else {
                        unavailable_now += 1;
                    }
                    let up_to_date = p
                        .pointer("/metadata/labels/controller-revision-hash")
                        .and_then(Value::as_str)
                        == Some(hash.as_str());
                    if up_to_date {
                        updated += 1;
                    } else {
                        stale.push(p.clone());
                    }
                    for extra in here.iter().skip(1) {
                        delete_pod(store, rec, &ds, extra);
                    }
                }
            } else {
                for p in &here {
                    if p.pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .is_some_and(|n| !n.is_empty())
                    {
                        misscheduled += 1;
                    }
                    delete_pod(store, rec, &ds, p);
                }
            }
        }
        // Pods for nodes that no longer exist.
        for (_, ps) in by_node {
            for p in ps {
                delete_pod(store, rec, &ds, &p);
            }
        }
        if rolling {
            // Unavailable stale pods go first, then available ones within maxUnavailable.
            stale.sort_by_key(|p| pod_available(p, min_ready));
            for p in stale {
                let avail = pod_available(&p, min_ready);
                if avail && unavailable_now >= max_unavail {
                    break;
                }
                if avail {
                    unavailable_now += 1;
                }
                delete_pod(store, rec, &ds, &p);
            }
        }
        let status = json!({
            "currentNumberScheduled": current,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": (desired - available).max(0),
            "updatedNumberScheduled": updated,
            "observedGeneration": generation,
        });
        let mut status = status;
        if let Some(m) = status.as_object_mut() {
            for k in [
                "numberAvailable",
                "numberUnavailable",
                "updatedNumberScheduled",
            ] {
                if m[k] == 0 {
                    m.remove(k);
                }
            }
        }
        set_status(store, rt, &ds, status);
    }
}

// ---------------------------------------------------------------- StatefulSet

/// Sync all StatefulSets.
pub fn statefulsets(store: &Store, rec: &Recorder) {
    let rt = resources::apps("statefulsets");
    for sts in store.all(rt) {
        if deleting(&sts) {
            continue;
        }
        let (name, ns, uid) = id(&sts);
        let want = sts
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let template = sts.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = format!("{name}-{}", template_hash(&template));
        let ordered = sts
            .pointer("/spec/podManagementPolicy")
            .and_then(Value::as_str)
            != Some("Parallel");
        let partition = sts
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let rolling = sts
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        let min_ready = sts
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let all = pods_of(store, &uid, &ns);
        let ordinal = |p: &Value| -> i64 {
            meta(p, "name")
                .strip_prefix(&format!("{name}-"))
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1)
        };
        let mut by_ord: BTreeMap<i64, Value> = BTreeMap::new();
        for p in &all {
            by_ord.insert(ordinal(p), p.clone());
        }
        let healthy = |p: &Value| {
            !deleting(p)
                && p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                && super::util::pod_ready_since(p).is_some()
        };
        let mut blocked = false;
        for i in 0..want {
            match by_ord.get(&i) {
                None => {
                    if blocked {
                        break;
                    }
                    let pname = format!("{name}-{i}");
                    let labels = json!({"controller-revision-hash": hash, "statefulset.kubernetes.io/pod-name": pname, "apps.kubernetes.io/pod-index": i.to_string()});
                    let svc = sts.pointer("/spec/serviceName").cloned();
                    let hostname = pname.clone();
                    create_pod(store, rec, &sts, &template, &pname, &labels, |p| {
                        p["spec"]["hostname"] = json!(hostname);
                        if let Some(s) = svc.filter(|s| s.as_str().is_some_and(|x| !x.is_empty())) {
                            p["spec"]["subdomain"] = s;
                        }
                    });
                    if ordered {
                        blocked = true;
                    }
                }
                Some(p) => {
                    if ordered && !healthy(p) {
                        blocked = true;
                    }
                }
            }
        }
        // Scale down from the highest ordinal.
        let extra: Vec<i64> = by_ord
            .keys()
            .filter(|o| **o >= want)
            .rev()
            .cloned()
            .collect();
        for o in extra {
            if let Some(p) = by_ord.get(&o) {
                if deleting(p) {
                    if ordered {
                        break;
                    }
                    continue;
                }
                delete_pod(store, rec, &sts, p);
                if ordered {
                    break;
                }
            }
        }
        // Rolling update from the highest ordinal, one at a time.
        let pods: Vec<Value> = pods_of(store, &uid, &ns);
        let current_ok = (0..want).all(|i| pods.iter().any(|p| ordinal(p) == i && healthy(p)));
        if rolling && current_ok {
            for i in (partition..want).rev() {
                if let Some(p) = pods.iter().find(|p| ordinal(p) == i)
                    && p.pointer("/metadata/labels/controller-revision-hash")
                        .and_then(Value::as_str)
                        != Some(hash.as_str())
                {
                    delete_pod(store, rec, &sts, p);
                    break;
                }
            }
        }
        let pods: Vec<Value> = pods_of(store, &uid, &ns)
            .into_iter()
            .filter(pod_active)
            .collect();
        let ready = pods
            .iter()
            .filter(|p| super::util::pod_ready_since(p).is_some())
            .count();
        let available = pods.iter().filter(|p| pod_available(p, min_ready)).count();
        let updated = pods
            .iter()
            .filter(|p| {
                p.pointer("/metadata/labels/controller-revision-hash")
                    .and_then(Value::as_str)
                    == Some(hash.as_str())
            })
            .count();
        let current_revision = if updated == pods.len() && pods.len() as i64 == want {
            hash.clone()
        } else {
            sts.pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .unwrap_or(&hash)
                .to_string()
        };
        let mut status = json!({
            "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(),
            "readyReplicas": ready,
            "currentReplicas": if current_revision == hash { updated } else { pods.len() - updated },
            "updatedReplicas": updated,
            "availableReplicas": available,
            "currentRevision": current_revision,
            "updateRevision": hash,
            "collisionCount": 0,
        });
        if let Some(m) = status.as_object_mut() {
            for k in ["readyReplicas", "currentReplicas", "updatedReplicas"] {
                if m[k] == 0 {
                    m.remove(k);
                }
            }
        }
        set_status(store, rt, &sts, status);
    }
}

// ---------------------------------------------------------------- Job

/// Sync all Jobs.
pub fn jobs(store: &Store, rec: &Recorder) {
    let Some(rt) = resources::find("batch", "v1", "jobs") else {
        return;
    };
    for job in store.all(rt) {
        if deleting(&job) {
            continue;
        }
        if job
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            })
        {
            continue;
        }
        let (name, ns, uid) = id(&job);
        let completions = job
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let parallelism = job
            .pointer("/spec/parallelism")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let pods = pods_of(store, &uid, &ns);
        let succeeded = pods
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded"))
            .count() as i64;
        let active: Vec<&Value> = pods.iter().filter(|p| pod_active(p)).collect();
        let ts = now();
        let suspended = job
            .pointer("/spec/suspend")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !suspended && succeeded < completions {
            let need = (completions - succeeded).min(parallelism) - active.len() as i64;
            let template = job.pointer("/spec/template").cloned().unwrap_or_default();
            for _ in 0..need.max(0) {
                let pname = format!("{name}-{}", name_suffix(5));
                create_pod(store, rec, &job, &template, &pname, &json!({}), |_| {});
            }
        }
        let ready = active
            .iter()
            .filter(|p| super::util::pod_ready_since(p).is_some())
            .count();
        let start = job
            .pointer("/status/startTime")
            .cloned()
            .unwrap_or(json!(ts));
        let mut status = json!({"startTime": start, "active": active.len(), "ready": ready, "succeeded": succeeded, "terminating": 0, "uncountedTerminatedPods": {}});
        if succeeded >= completions {
            status["completionTime"] = json!(ts);
            status["active"] = json!(0);
            status["conditions"] = json!([
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": ts, "lastTransitionTime": ts},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": ts, "lastTransitionTime": ts},
            ]);
            rec.event(
                store,
                &job,
                "Normal",
                "Completed",
                "Job completed",
                "job-controller",
            );
        }
        if let Some(m) = status.as_object_mut() {
            for k in ["active", "succeeded"] {
                if m[k] == 0 {
                    m.remove(k);
                }
            }
        }
        set_status(store, rt, &job, status);
    }
}

// ---------------------------------------------------------------- PodDisruptionBudget

/// Sync PodDisruptionBudget status.
pub fn pdbs(store: &Store) {
    let Some(rt) = resources::find("policy", "v1", "poddisruptionbudgets") else {
        return;
    };
    for pdb in store.all(rt) {
        let (_, ns, _) = id(&pdb);
        let sel = LabelSelector::from_object(pdb.pointer("/spec/selector").unwrap_or(&Value::Null));
        let (pods, _) = store.list(
            resources::core("pods"),
            Some(&ns),
            &sel,
            &Default::default(),
        );
        let pods: Vec<Value> = pods.into_iter().filter(pod_active).collect();
        let expected = pods.len() as i64;
        let healthy = pods
            .iter()
            .filter(|p| super::util::pod_ready_since(p).is_some())
            .count() as i64;
        let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
            int_or_percent(min, expected, true)
        } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
            expected - int_or_percent(max, expected, true)
        } else {
            expected
        };
        let allowed = (healthy - desired).max(0);
        let ts = now();
        let cond = if allowed > 0 {
            json!({"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": "", "lastTransitionTime": ts, "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1))})
        } else {
            json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": "", "lastTransitionTime": ts, "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1))})
        };
        let status = json!({
            "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [cond],
        });
        set_status(store, rt, &pdb, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(taints: Value) -> Value {
        json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}}, "spec": {"taints": taints}})
    }

    fn ds(tolerations: Value) -> Value {
        json!({"spec": {"template": {"spec": {"hostNetwork": true, "tolerations": tolerations, "containers": []}}}})
    }

    #[test]
    fn daemonset_pods_skip_not_ready_nodes_unless_tolerated() {
        let not_ready = node(
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        // The default DaemonSet tolerations cover not-ready:NoExecute, not NoSchedule.
        assert!(!should_run(&ds(json!([])), &not_ready));
        assert!(should_run(&ds(json!([{"operator": "Exists"}])), &not_ready));
        assert!(should_run(&ds(json!([])), &node(json!([]))));
        // Unschedulable (cordoned) nodes still run DaemonSet pods.
        let cordoned =
            node(json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]));
        assert!(should_run(&ds(json!([])), &cordoned));
    }
}
