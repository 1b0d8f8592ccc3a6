//! Helpers shared by the controllers: JSON accessors, owner references, events, quantities.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::standin::store::{Store, WriteOpts, new_uid, now, resources};

/// `metadata.<f>` as a string.
pub fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o.pointer(&format!("/metadata/{f}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Name, namespace and uid.
pub fn id(o: &Value) -> (String, String, String) {
    (
        meta(o, "name").to_string(),
        meta(o, "namespace").to_string(),
        meta(o, "uid").to_string(),
    )
}

/// Whether `o` is owned (as controller or not) by `uid`.
pub fn owned_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

/// The controller owner reference's uid, if any.
pub fn controller_uid(o: &Value) -> Option<String> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str().map(str::to_string))
}

/// An owner reference to `owner` (controller, blockOwnerDeletion).
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta(owner, "name"),
        "uid": meta(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether the object is being deleted.
pub fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// Pod readiness (the `Ready` condition) and since when.
pub fn pod_ready_since(p: &Value) -> Option<String> {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| {
            c["lastTransitionTime"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
}

/// Ready for at least `min_ready` seconds (an "available" pod).
pub fn pod_available(p: &Value, min_ready: i64) -> bool {
    if deleting(p) {
        return false;
    }
    match pod_ready_since(p) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(t) => crate::standin::store::parse_time(&t)
            .is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() >= min_ready),
    }
}

/// Whether a pod is active (not terminal, not being deleted).
pub fn pod_active(p: &Value) -> bool {
    !deleting(p)
        && !matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded") | Some("Failed")
        )
}

/// `rand.SafeEncodeString` of a 32-bit FNV-1a hash of the JSON (`controller.ComputeHash`).
pub fn template_hash(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[(d as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Resolve an int-or-percent against `total` (round up or down).
pub fn int_or_percent(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.parse().unwrap_or(0.0);
                let x = p * total as f64 / 100.0;
                if round_up {
                    x.ceil() as i64
                } else {
                    x.floor() as i64
                }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// A CPU quantity in millicores.
pub fn cpu_milli(q: &str) -> i64 {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().unwrap_or(0);
    }
    (q.parse::<f64>().unwrap_or(0.0) * 1000.0) as i64
}

/// A memory quantity in bytes.
pub fn mem_bytes(q: &str) -> i64 {
    let q = q.trim();
    let units: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (u, mul) in units {
        if let Some(n) = q.strip_suffix(u) {
            return (n.parse::<f64>().unwrap_or(0.0) * mul) as i64;
        }
    }
    q.parse::<f64>().unwrap_or(0.0) as i64
}

/// Records events, counting repeats as the event recorder does.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<BTreeMap<EventKey, EventSeen>>,
}

/// (involved uid, reason, message).
type EventKey = (String, String, String);
/// (event name, count, last time in unix seconds).
type EventSeen = (String, i64, i64);

impl Recorder {
    /// Record an event about `obj` from `component`.
    pub fn event(
        &self,
        store: &Store,
        obj: &Value,
        ty: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let (name, ns, uid) = id(obj);
        let ns_ev = if ns.is_empty() {
            "default".to_string()
        } else {
            ns.clone()
        };
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let nowts = now();
        let now_s = jiff::Timestamp::now().as_second();
        let events = resources::core("events");
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((ev_name, count, last)) = seen.get_mut(&key) {
            if now_s - *last < 10 {
                return;
            }
            *count += 1;
            *last = now_s;
            let c = *count;
            let _ = store.update_with(
                events,
                &ns_ev,
                ev_name,
                crate::standin::store::Sub::Main,
                component,
                |e| {
                    e["count"] = json!(c);
                    e["lastTimestamp"] = json!(nowts);
                },
            );
            return;
        }
        let ev_name = format!("{name}.{}", &new_uid().replace('-', "")[..16]);
        let body = json!({
            "metadata": {"name": ev_name, "namespace": ns_ev},
            "involvedObject": {"kind": obj["kind"], "namespace": ns, "name": name, "uid": uid, "apiVersion": obj["apiVersion"], "resourceVersion": meta(obj, "resourceVersion")},
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": nowts,
            "lastTimestamp": nowts,
            "count": 1,
            "type": ty,
            "eventTime": null,
            "reportingComponent": component,
            "reportingInstance": "",
        });
        let opts = WriteOpts {
            manager: component.to_string(),
            ..Default::default()
        };
        if store.create(events, &ns_ev, body, &opts).is_ok() {
            seen.insert(key, (ev_name, 1, now_s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_percentages() {
        assert_eq!(cpu_milli("500m"), 500);
        assert_eq!(cpu_milli("2"), 2000);
        assert_eq!(mem_bytes("128Mi"), 128 * 1024 * 1024);
        assert_eq!(mem_bytes("1G"), 1_000_000_000);
        assert_eq!(int_or_percent(&json!("25%"), 3, true), 1);
        assert_eq!(int_or_percent(&json!("25%"), 3, false), 0);
        assert_eq!(int_or_percent(&json!(2), 3, false), 2);
        let h = template_hash(&json!({"a": 1}));
        assert!(!h.is_empty() && h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
