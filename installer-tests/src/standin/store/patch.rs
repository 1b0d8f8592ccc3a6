//! Patches and server-side apply.
//!
//! - JSON merge patch (RFC 7386, `application/merge-patch+json`).
//! - JSON patch (RFC 6902, `application/json-patch+json`): add, remove, replace, test, copy, move.
//! - Strategic merge patch (`application/strategic-merge-patch+json`): a merge patch that merges the
//!   lists Kubernetes marks with a patch merge key (containers by `name`, ports by `containerPort`,
//!   ...) instead of replacing them. `$patch` directives are not modelled.
//! - Server-side apply (`application/apply-patch+yaml`, KEP-555): the applied configuration is
//!   merged into the live object; fields the same manager applied last time and no longer applies
//!   are removed; each manager owns the leaf fields it set. Applying a value different from the
//!   live one to a field another manager owns is a 409 conflict unless `force=true`, with the
//!   apiserver's message (`Apply failed with 1 conflict: conflict with "m": .spec.replicas`).
//!   Simplification: ownership is tracked per leaf field and keyed list item (the structured-merge
//!   "fieldset"), with list keys from a fixed table rather than the OpenAPI schema.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Seg {
    /// A map key.
    Field(String),
    /// A keyed list item: (key field, JSON of the key value).
    Item(String, String),
}

/// A field path.
pub type FieldPath = Vec<Seg>;

/// Render a path the way apply conflicts name fields: `.spec.template.spec.containers[name="app"].image`.
pub fn path_string(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Seg::Item(k, v) => {
                let pairs: Vec<String> = k
                    .split(',')
                    .zip(v.split(','))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                s.push_str(&format!("[{}]", pairs.join(",")));
            }
        }
    }
    s
}

/// The merge key(s) of a list field, if Kubernetes merges it by key: one field name, or
/// several joined by `,` (ports are keyed by port and protocol, `x-kubernetes-list-map-keys`).
fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let all_have = |k: &str| !items.is_empty() && items.iter().all(|i| i.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "hostAliases" => Some("ip"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "ports" => {
            if all_have("containerPort") {
                Some("containerPort,protocol")
            } else if all_have("port") {
                Some("port,protocol")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The key of a list item under `keys` (see [`list_key`]): the JSON of each key field's value,
/// `protocol` defaulting to `TCP` as the schema defaults it.
fn item_key_value(item: &Value, keys: &str) -> String {
    keys.split(',')
        .map(|k| match item.get(k) {
            Some(v) => v.to_string(),
            None if k == "protocol" => "\"TCP\"".to_string(),
            None => "null".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch (approximation: merge keyed lists by their merge key).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch) {
        (Some(t), Value::Object(p)) => {
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), v) {
                    (Some(Value::Array(cur)), Value::Array(new)) => {
                        if let Some(key) = list_key(k, new) {
                            for item in new {
                                let kv = item_key_value(item, key);
                                match cur.iter_mut().find(|c| item_key_value(c, key) == kv) {
                                    Some(existing) => strategic_merge_patch(existing, item),
                                    None => cur.push(item.clone()),
                                }
                            }
                        } else {
                            *cur = new.clone();
                        }
                    }
                    (Some(existing), _) => strategic_merge_patch(existing, v),
                    (None, _) => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (_, p) => *target = p.clone(),
    }
}

fn pointer_parts(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {p:?}"))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn json_patch_add(target: &mut Value, parts: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent_parts)) = parts.split_last() else {
        *target = value;
        return Ok(());
    };
    let mut cur = target;
    for p in parent_parts {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(p)
                .ok_or_else(|| format!("missing path segment {p:?}"))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| format!("bad index {p:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {p:?}")),
        };
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
                if i > a.len() {
                    return Err(format!("index {i} out of range"));
                }
                a.insert(i, value);
            }
            Ok(())
        }
        _ => Err("cannot add to a scalar".into()),
    }
}

fn json_patch_remove(target: &mut Value, parts: &[String]) -> Result<Value, String> {
    let Some((last, parent_parts)) = parts.split_last() else {
        return Err("cannot remove the root".into());
    };
    let mut cur = target;
    for p in parent_parts {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(p)
                .ok_or_else(|| format!("missing path segment {p:?}"))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| format!("bad index {p:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {p:?}")),
        };
    }
    match cur {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("missing key {last:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err("cannot remove from a scalar".into()),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("JSON patch operation without op")?;
        let path = pointer_parts(op.get("path").and_then(Value::as_str).unwrap_or_default())?;
        match kind {
            "add" => json_patch_add(
                target,
                &path,
                op.get("value").cloned().unwrap_or(Value::Null),
            )?,
            "remove" => {
                json_patch_remove(target, &path)?;
            }
            "replace" => {
                json_patch_remove(target, &path)?;
                json_patch_add(
                    target,
                    &path,
                    op.get("value").cloned().unwrap_or(Value::Null),
                )?;
            }
            "test" => {
                let ptr = op.get("path").and_then(Value::as_str).unwrap_or_default();
                if target.pointer(ptr) != op.get("value") {
                    return Err(format!("testing value {ptr} failed"));
                }
            }
            "copy" | "move" => {
                let from_s = op.get("from").and_then(Value::as_str).unwrap_or_default();
                let from = pointer_parts(from_s)?;
                let v = if kind == "move" {
                    json_patch_remove(target, &from)?
                } else {
                    target
                        .pointer(from_s)
                        .cloned()
                        .ok_or("copy from a missing path")?
                };
                json_patch_add(target, &path, v)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// The leaf fields (and keyed list items) a configuration sets.
pub fn field_set(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(Seg::Field(k.clone()));
                match child {
                    Value::Array(items) => match list_key(k, items) {
                        Some(key) => {
                            for item in items {
                                let kv = item_key_value(item, key);
                                path.push(Seg::Item(key.to_string(), kv));
                                out.insert(path.clone());
                                collect(item, path, out);
                                path.pop();
                            }
                        }
                        None => {
                            out.insert(path.clone());
                        }
                    },
                    _ => collect(child, path, out),
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at a field path.
pub fn get_path<'a>(v: &'a Value, p: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in p {
        cur = match seg {
            Seg::Field(f) => cur.get(f)?,
            Seg::Item(k, kv) => cur
                .as_array()?
                .iter()
                .find(|i| item_key_value(i, k) == *kv)?,
        };
    }
    Some(cur)
}

fn remove_path(v: &mut Value, p: &[Seg]) {
    let Some((last, parent)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parent {
        let next = match seg {
            Seg::Field(f) => cur.get_mut(f),
            Seg::Item(k, kv) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| item_key_value(i, k) == *kv)),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Seg::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Seg::Item(k, kv) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| item_key_value(i, k) != *kv);
            }
        }
    }
}

/// Remove maps that became empty under `p`'s ancestors after a removal.
fn prune_empty(v: &mut Value, p: &[Seg]) {
    for n in (1..p.len()).rev() {
        let prefix = &p[..n];
        let empty = matches!(get_path(v, prefix), Some(Value::Object(m)) if m.is_empty());
        if empty && matches!(prefix.last(), Some(Seg::Field(_))) {
            remove_path(v, prefix);
        } else {
            break;
        }
    }
}

/// Merge an applied configuration into `target` (maps recursively, keyed lists by key, other
/// lists replaced).
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied) {
        (Some(t), Value::Object(a)) => {
            for (k, v) in a {
                match (t.get_mut(k), v) {
                    (Some(Value::Array(cur)), Value::Array(new)) => match list_key(k, new) {
                        Some(key) => {
                            for item in new {
                                let kv = item_key_value(item, key);
                                match cur.iter_mut().find(|c| item_key_value(c, key) == kv) {
                                    Some(existing) => apply_merge(existing, item),
                                    None => cur.push(item.clone()),
                                }
                            }
                        }
                        None => *cur = new.clone(),
                    },
                    (Some(existing), Value::Object(_)) if existing.is_object() => {
                        apply_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (_, a) => *target = a.clone(),
    }
}

/// Server-side apply of `applied` by a manager that previously owned `prev_owned`.
pub fn apply(live: &Value, applied: &Value, prev_owned: &BTreeSet<FieldPath>) -> Value {
    let mut out = live.clone();
    let now = field_set(applied);
    for p in prev_owned {
        if now.contains(p) {
            continue;
        }
        // Never drop identity or server-managed metadata.
        if matches!(p.first(), Some(Seg::Field(f)) if f == "apiVersion" || f == "kind" || f == "status")
        {
            continue;
        }
        if matches!(p.as_slice(), [Seg::Field(a), Seg::Field(b)] if a == "metadata" && (b == "name" || b == "namespace"))
        {
            continue;
        }
        remove_path(&mut out, p);
        prune_empty(&mut out, p);
    }
    apply_merge(&mut out, applied);
    out
}

/// Fields of `applied` whose value differs from `live` and that another manager owns.
pub fn conflicts<'a>(
    live: &Value,
    applied: &Value,
    others: impl Iterator<Item = (&'a str, &'a BTreeSet<FieldPath>)>,
) -> Vec<(String, String)> {
    let now = field_set(applied);
    let mut out = Vec::new();
    for (manager, owned) in others {
        for p in &now {
            if !owned.contains(p) {
                continue;
            }
            if matches!(p.first(), Some(Seg::Field(f)) if f == "apiVersion" || f == "kind" || f == "metadata")
            {
                continue;
            }
            let (a, b) = (get_path(live, p), get_path(applied, p));
            let differs = match (a, b) {
                (Some(x), Some(y)) => !values_equal(x, y),
                (None, Some(_)) => true,
                _ => false,
            };
            if differs && !matches!(p.last(), Some(Seg::Item(..))) {
                out.push((manager.to_string(), path_string(p)));
            }
        }
    }
    out
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        // The apiserver compares after defaulting; a bare number and an int-or-string are equal.
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            x.to_string() == *y
        }
        _ => a == b,
    }
}

/// Render a field set as `fieldsV1` (`{"f:spec":{"f:replicas":{}}}`).
pub fn fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for seg in p {
            let key = match seg {
                Seg::Field(f) => format!("f:{f}"),
                Seg::Item(k, v) => {
                    let pairs: Vec<String> = k
                        .split(',')
                        .zip(v.split(','))
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("k:{{{}}}", pairs.join(","))
                }
            };
            let entry = cur.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if matches!(seg, Seg::Item(..))
                && let Value::Object(m) = entry
            {
                m.entry(".".to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            let Value::Object(m) = entry else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

/// The leaf paths whose values differ between two versions of an object (for `Update` ownership).
pub fn changed_fields(old: &Value, new: &Value) -> BTreeSet<FieldPath> {
    field_set(new)
        .into_iter()
        .filter(|p| get_path(old, p) != get_path(new, p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 9}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 9, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
        );
        assert_eq!(t["spec"]["containers"][0]["image"], "x");
        assert_eq!(t["spec"]["containers"][1]["image"], "z");
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"a": [1, 2], "b": 1});
        json_patch(
            &mut t,
            &json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/b", "value": 2}, {"op": "remove", "path": "/a/0"}]),
        )
        .unwrap();
        assert_eq!(t, json!({"a": [2, 3], "b": 2}));
        assert!(json_patch(&mut t, &json!([{"op": "test", "path": "/b", "value": 5}])).is_err());
    }

    #[test]
    fn apply_removes_fields_the_manager_no_longer_sets() {
        let first = json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "i:1", "args": ["x"]}]}}}});
        let live = apply(&json!({}), &first, &BTreeSet::new());
        let owned = field_set(&first);
        let mut live_defaulted = live.clone();
        live_defaulted["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        let second = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i:2"}]}}}});
        let out = apply(&live_defaulted, &second, &owned);
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        assert!(out["spec"].get("replicas").is_none());
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "i:2");
        assert!(c.get("args").is_none());
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn conflicts_name_the_other_manager_and_field() {
        let live = json!({"spec": {"replicas": 5}});
        let other: BTreeSet<FieldPath> = field_set(&json!({"spec": {"replicas": 5}}));
        let c = conflicts(
            &live,
            &json!({"spec": {"replicas": 3}}),
            [("kubectl-scale", &other)].into_iter(),
        );
        assert_eq!(
            c,
            vec![("kubectl-scale".to_string(), ".spec.replicas".to_string())]
        );
        assert!(
            conflicts(
                &live,
                &json!({"spec": {"replicas": 5}}),
                [("m", &other)].into_iter()
            )
            .is_empty()
        );
    }

    #[test]
    fn ports_are_keyed_by_port_and_protocol() {
        // kube-dns has 53/UDP and 53/TCP: re-applying the same ports must change nothing.
        let svc = json!({"spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
        let live = apply(&json!({}), &svc, &BTreeSet::new());
        assert_eq!(live, svc);
        let again = apply(&live, &svc, &field_set(&svc));
        assert_eq!(again, svc);
        let f = fields_v1(&field_set(&svc));
        assert!(
            f["f:spec"]["f:ports"]
                .get("k:{\"port\":53,\"protocol\":\"UDP\"}")
                .is_some(),
            "{f}"
        );
        // A port without protocol is the TCP one.
        let implicit = json!({"spec": {"ports": [{"port": 53, "name": "renamed"}]}});
        let merged = apply(&live, &implicit, &BTreeSet::new());
        assert_eq!(merged["spec"]["ports"][1]["name"], "renamed");
        assert_eq!(merged["spec"]["ports"][0]["name"], "dns");
        let mut live2 = live.clone();
        strategic_merge_patch(
            &mut live2,
            &json!({"spec": {"ports": [{"port": 53, "protocol": "UDP", "name": "u"}]}}),
        );
        assert_eq!(live2["spec"]["ports"][0]["name"], "u");
        assert_eq!(live2["spec"]["ports"][1]["name"], "dns-tcp");
    }

    #[test]
    fn ports_are_keyed_by_number_and_protocol() {
        // From main (the same fix made independently): 53/UDP and 53/TCP are two ports.
        let svc = json!({"spec": {"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]}});
        let live = apply(&json!({}), &svc, &BTreeSet::new());
        assert_eq!(
            live["spec"]["ports"].as_array().map(Vec::len),
            Some(2),
            "{live}"
        );
        let owned = field_set(&svc);
        let again = apply(&live, &svc, &owned);
        assert_eq!(again, live);
        // Without a protocol, TCP is meant.
        let a = json!({"ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP"}]});
        let merged = apply(&json!({}), &a, &BTreeSet::new());
        assert_eq!(merged["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn fields_v1_shape() {
        let s = field_set(&json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}));
        let f = fields_v1(&s);
        assert_eq!(
            f,
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
    }
}
