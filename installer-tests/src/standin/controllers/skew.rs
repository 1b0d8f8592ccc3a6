//! A record of the version skew the cluster went through, for tests to assert none happened.
//!
//! Kubernetes' skew policy (`website/content/en/releases/version-skew-policy.md`): a kubelet must
//! not be newer than kube-apiserver, nor more than three minors older; k3s servers (each an
//! apiserver, and on the same binary as its kubelet) may be at most one minor apart, and an
//! upgrade goes one minor at a time. Real k3s does not refuse all of these, which is why an
//! upgrade that broke one would pass unnoticed: the stand-in writes down, on the server running
//! the controllers, every time it sees
//! - `kubelet-newer-than-apiservers`: a node's kubeletVersion newer than every live server's (a
//!   server whose Ready condition is not Unknown);
//! - `minors-apart`: two nodes two or more minors apart;
//! - `downgrade`: a node's kubeletVersion lower than the one it had before.
//!
//! Each finding is one JSON line in `${data-dir}/server/db/standin/skew.jsonl`, written once per
//! distinct finding.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::util::meta;
use crate::standin::store::Store;
use crate::standin::store::resources;

/// `v1.36.2+k3s1` as (minor, patch, k3s build); the major is always 1.
fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v')?;
    let (core, build) = v.split_once('+').unwrap_or((v, "k3s0"));
    let mut p = core.split('.');
    if p.next()? != "1" {
        return None;
    }
    let minor = p.next()?.parse().ok()?;
    let patch = p.next()?.parse().ok()?;
    let build = build.strip_prefix("k3s")?.parse().ok()?;
    Some((minor, patch, build))
}

/// What the watcher has seen so far.
pub struct SkewWatch {
    file: PathBuf,
    last: BTreeMap<String, (u32, u32, u32)>,
    written: BTreeSet<String>,
}

impl SkewWatch {
    pub fn new(server_dir: &std::path::Path) -> SkewWatch {
        SkewWatch {
            file: server_dir.join("db/standin/skew.jsonl"),
            last: BTreeMap::new(),
            written: BTreeSet::new(),
        }
    }

    /// One look at every Node.
    pub fn check(&mut self, store: &Store) {
        let nodes = store.all(resources::core("nodes"));
        for f in findings(&nodes, &mut self.last) {
            let key = f.to_string();
            if self.written.insert(key) {
                self.write(&f);
            }
        }
    }

    fn write(&self, f: &Value) {
        let mut line = f.clone();
        line["time"] = json!(crate::standin::store::now());
        let r = (|| {
            if let Some(d) = self.file.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)?;
            writeln!(out, "{line}")
        })();
        if let Err(e) = r {
            crate::standin::log::warn(format!("writing {}: {e}", self.file.display()));
        }
    }
}

fn version_of(n: &Value) -> Option<(String, (u32, u32, u32))> {
    let v = n.pointer("/status/nodeInfo/kubeletVersion")?.as_str()?;
    Some((v.to_string(), parse(v)?))
}

/// A server whose node still posts its status (Ready True or False, not Unknown): its
/// apiserver is taken to be live.
fn is_live_server(n: &Value) -> bool {
    let server = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"));
    let live = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && (c["status"] == "True" || c["status"] == "False"));
    server && live
}

fn show((minor, patch, build): (u32, u32, u32)) -> String {
    format!("v1.{minor}.{patch}+k3s{build}")
}

/// The findings in one look at `nodes`, updating each node's last seen version.
fn findings(nodes: &[Value], last: &mut BTreeMap<String, (u32, u32, u32)>) -> Vec<Value> {
    let mut out = Vec::new();
    let versions: Vec<(String, (u32, u32, u32))> = nodes
        .iter()
        .filter_map(|n| Some((meta(n, "name").to_string(), version_of(n)?.1)))
        .collect();
    let newest_server = nodes
        .iter()
        .filter(|n| is_live_server(n))
        .filter_map(|n| version_of(n).map(|v| v.1))
        .max();
    for (name, v) in &versions {
        if let Some(before) = last.insert(name.clone(), *v)
            && *v < before
        {
            out.push(
                json!({"kind": "downgrade", "node": name, "from": show(before), "to": show(*v)}),
            );
        }
        if let Some(s) = newest_server
            && *v > s
        {
            out.push(json!({"kind": "kubelet-newer-than-apiservers", "node": name, "kubelet": show(*v), "newest_apiserver": show(s)}));
        }
    }
    if let (Some(lo), Some(hi)) = (
        versions.iter().min_by_key(|(_, v)| v.0),
        versions.iter().max_by_key(|(_, v)| v.0),
    ) && hi.1.0 >= lo.1.0 + 2
    {
        out.push(json!({"kind": "minors-apart", "nodes": [lo.0, hi.0], "versions": [show(lo.1), show(hi.1)]}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, v: &str, server: bool, live: bool) -> Value {
        let mut labels = serde_json::Map::new();
        if server {
            labels.insert(
                "node-role.kubernetes.io/control-plane".into(),
                json!("true"),
            );
        }
        json!({"metadata": {"name": name, "labels": labels},
               "status": {"nodeInfo": {"kubeletVersion": v},
                          "conditions": [{"type": "Ready", "status": if live {"False"} else {"Unknown"}}]}})
    }

    fn kinds(f: &[Value]) -> Vec<String> {
        f.iter()
            .map(|x| x["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn a_rolling_upgrade_servers_first_records_nothing() {
        let mut last = BTreeMap::new();
        let a = "v1.35.4+k3s1";
        let b = "v1.36.2+k3s1";
        let steps = [
            [(a, true), (a, true), (a, false)],
            [(b, true), (a, true), (a, false)],
            [(b, true), (b, true), (a, false)],
            [(b, true), (b, true), (b, false)],
        ];
        for s in steps {
            let nodes: Vec<Value> = s
                .iter()
                .enumerate()
                .map(|(i, (v, srv))| node(&format!("n{i}"), v, *srv, true))
                .collect();
            assert!(findings(&nodes, &mut last).is_empty());
        }
    }

    #[test]
    fn an_agent_first_a_downgrade_and_two_minors_are_recorded() {
        let mut last = BTreeMap::new();
        let nodes = [
            node("s1", "v1.35.4+k3s1", true, true),
            node("s2", "v1.35.4+k3s1", true, false),
            node("a1", "v1.36.2+k3s1", false, true),
        ];
        assert_eq!(
            kinds(&findings(&nodes, &mut last)),
            ["kubelet-newer-than-apiservers"]
        );
        let nodes = [
            node("s1", "v1.35.4+k3s1", true, true),
            node("a1", "v1.36.1+k3s2", false, true),
        ];
        assert_eq!(
            kinds(&findings(&nodes, &mut last)),
            ["downgrade", "kubelet-newer-than-apiservers"]
        );
        let nodes = [
            node("s1", "v1.37.0+k3s1", true, true),
            node("a1", "v1.35.9+k3s1", false, true),
        ];
        assert_eq!(
            kinds(&findings(&nodes, &mut last)),
            ["downgrade", "minors-apart"]
        );
        assert_eq!(parse("v1.36.2+k3s1"), Some((36, 2, 1)));
        assert_eq!(parse("2.0.0"), None);
    }
}
