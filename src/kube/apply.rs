//! Server-side apply of a rendered manifest set, with one fixed field manager (`installer`)
//! and `force` (the installer owns every field it sets, even if someone edited it by hand).
//!
//! Objects go in a fixed order: namespaces, then identities and RBAC, then configuration and
//! Secrets, then Services, then anything else, and workloads last, in the order given. Each
//! kind is found through discovery (so its plural and scope come from the API server, not from
//! a table here). Every object is reported as created, updated or unchanged, judged by its
//! `resourceVersion` before and after: an apply that changes nothing leaves it as it was,
//! which is how a rerun says "unchanged".

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Serialize;

use super::Cluster;
use super::manifest::{Manifest, Manifests};
use super::rollout::WorkloadId;
use crate::report::events::{Level, Reporter};

/// The field manager of every object the installer applies.
pub const FIELD_MANAGER: &str = "installer";

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// One applied object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `Kind namespace/name`.
    pub object: String,
    /// The template it came from.
    pub file: String,
    pub change: Change,
}

/// Everything an apply did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub items: Vec<Applied>,
}

impl ApplyReport {
    pub fn extend(&mut self, other: ApplyReport) {
        self.items.extend(other.items);
    }

    pub fn count(&self, change: Change) -> usize {
        self.items.iter().filter(|i| i.change == change).count()
    }

    /// Whether nothing was created or updated.
    pub fn unchanged(&self) -> bool {
        self.items.iter().all(|i| i.change == Change::Unchanged)
    }

    /// `2 created, 1 updated, 14 unchanged`.
    pub fn summary(&self) -> String {
        format!(
            "{} created, {} updated, {} unchanged",
            self.count(Change::Created),
            self.count(Change::Updated),
            self.count(Change::Unchanged)
        )
    }
}

/// Why an apply failed; names the object and its template.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the API server does not know {api_version} {kind} (from {file}): {source}")]
    Discovery {
        api_version: String,
        kind: String,
        file: String,
        source: kube::Error,
    },
    #[error("cannot apply {object} (from {file}): {}", api_message(.source))]
    Apply {
        object: String,
        file: String,
        source: kube::Error,
    },
    #[error("{object} (from {file}) is not a valid object: {message}")]
    Invalid {
        object: String,
        file: String,
        message: String,
    },
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

/// Where an object goes in the apply order (lower first).
pub fn apply_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        | "PriorityClass" => 2,
        "ConfigMap" | "Secret" => 3,
        "Service" => 4,
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" | "CronJob" | "Pod" => 6,
        _ => 5,
    }
}

/// The objects in apply order (stable: the same rank keeps the given order).
pub fn ordered(manifests: &Manifests) -> Vec<&Manifest> {
    let mut items: Vec<&Manifest> = manifests.items.iter().collect();
    items.sort_by_key(|m| apply_rank(m.kind()));
    items
}

/// Splits a set into what comes before the workloads (namespaces, configuration, Services,
/// ...) and the workloads of `order`, in that order. Workloads not in `order` stay with the
/// first part (applied, not gated).
pub fn split_workloads(
    manifests: &Manifests,
    order: &[WorkloadId],
) -> (Manifests, Vec<(WorkloadId, Manifest)>) {
    let is_listed = |m: &Manifest| {
        order.iter().any(|w| {
            w.kind.as_str() == m.kind()
                && Some(w.namespace.as_str()) == m.namespace()
                && w.name == m.name()
        })
    };
    let setup = Manifests {
        items: manifests
            .items
            .iter()
            .filter(|m| !is_listed(m))
            .cloned()
            .collect(),
    };
    let workloads = order
        .iter()
        .filter_map(|w| {
            manifests
                .find(w.kind.as_str(), Some(&w.namespace), &w.name)
                .map(|m| (w.clone(), m.clone()))
        })
        .collect();
    (setup, workloads)
}

fn gvk_of(m: &Manifest) -> GroupVersionKind {
    let (group, version) = match m.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", m.api_version()),
    };
    GroupVersionKind::gvk(group, version, m.kind())
}

/// Applies every object of `manifests` in [`ordered`] order, reporting each.
pub async fn apply_all(
    cluster: &Cluster,
    manifests: &Manifests,
    reporter: &Reporter,
) -> Result<ApplyReport, ApplyError> {
    let client = cluster.client().clone();
    let mut kinds: BTreeMap<(String, String), (ApiResource, ApiCapabilities)> = BTreeMap::new();
    let mut report = ApplyReport::default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for m in ordered(manifests) {
        let key = (m.api_version().to_owned(), m.kind().to_owned());
        if !kinds.contains_key(&key) {
            let found = kube::discovery::pinned_kind(&client, &gvk_of(m))
                .await
                .map_err(|source| ApplyError::Discovery {
                    api_version: key.0.clone(),
                    kind: key.1.clone(),
                    file: m.file.clone(),
                    source,
                })?;
            kinds.insert(key.clone(), found);
        }
        let Some((ar, caps)) = kinds.get(&key) else {
            continue;
        };
        let object = m.describe();
        let obj: DynamicObject =
            serde_json::from_value(m.object.clone()).map_err(|e| ApplyError::Invalid {
                object: object.clone(),
                file: m.file.clone(),
                message: e.to_string(),
            })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                Api::namespaced_with(client.clone(), m.namespace().unwrap_or("default"), ar)
            }
            Scope::Cluster => Api::all_with(client.clone(), ar),
        };
        let apply_err = |source| ApplyError::Apply {
            object: object.clone(),
            file: m.file.clone(),
            source,
        };
        let before = api.get_opt(m.name()).await.map_err(apply_err)?;
        let after = api
            .patch(m.name(), &params, &Patch::Apply(&obj))
            .await
            .map_err(apply_err)?;
        let change = match before {
            None => Change::Created,
            Some(b) if b.metadata.resource_version != after.metadata.resource_version => {
                Change::Updated
            }
            Some(_) => Change::Unchanged,
        };
        let level = if change == Change::Unchanged {
            Level::Debug
        } else {
            Level::Detail
        };
        let word = match change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        };
        reporter.message(level, None, format!("{object}: {word}"));
        report.items.push(Applied {
            object,
            file: m.file.clone(),
            change,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::rollout::WorkloadKind;
    use serde_json::json;

    fn m(kind: &str, name: &str) -> Manifest {
        Manifest {
            file: format!("{name}.yaml"),
            object: json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}}),
        }
    }

    #[test]
    fn namespaces_then_config_then_services_then_workloads_in_given_order() {
        let set = Manifests {
            items: vec![
                m("DaemonSet", "gateway"),
                m("Service", "api"),
                m("Deployment", "api"),
                m("ConfigMap", "cfg"),
                m("StatefulSet", "store"),
                m("Namespace", "ns"),
                m("ServiceAccount", "sa"),
                m("Secret", "s"),
            ],
        };
        let order: Vec<String> = ordered(&set).iter().map(|m| m.describe()).collect();
        assert_eq!(
            order,
            vec![
                "Namespace ns/ns",
                "ServiceAccount ns/sa",
                "ConfigMap ns/cfg",
                "Secret ns/s",
                "Service ns/api",
                "DaemonSet ns/gateway",
                "Deployment ns/api",
                "StatefulSet ns/store",
            ]
        );
        let ids = [
            WorkloadId {
                kind: WorkloadKind::StatefulSet,
                namespace: "ns".into(),
                name: "store".into(),
            },
            WorkloadId {
                kind: WorkloadKind::Deployment,
                namespace: "ns".into(),
                name: "api".into(),
            },
            WorkloadId {
                kind: WorkloadKind::DaemonSet,
                namespace: "ns".into(),
                name: "gateway".into(),
            },
        ];
        let (setup, workloads) = split_workloads(&set, &ids);
        assert_eq!(setup.items.len(), 5);
        assert!(setup.items.iter().all(|m| apply_rank(m.kind()) < 6));
        let names: Vec<String> = workloads.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(
            names,
            vec![
                "StatefulSet ns/store",
                "Deployment ns/api",
                "DaemonSet ns/gateway"
            ]
        );
    }

    #[test]
    fn api_versions_become_group_version_kinds() {
        let core = m("Service", "a");
        let g = gvk_of(&core);
        assert_eq!(
            (g.group.as_str(), g.version.as_str(), g.kind.as_str()),
            ("", "v1", "Service")
        );
        let apps = Manifest {
            file: "x".into(),
            object: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}),
        };
        let g = gvk_of(&apps);
        assert_eq!(g.group, "rbac.authorization.k8s.io");
        assert_eq!(g.version, "v1");
    }

    #[test]
    fn the_report_summarizes() {
        let r = ApplyReport {
            items: vec![
                Applied {
                    object: "a".into(),
                    file: "f".into(),
                    change: Change::Created,
                },
                Applied {
                    object: "b".into(),
                    file: "f".into(),
                    change: Change::Unchanged,
                },
                Applied {
                    object: "c".into(),
                    file: "f".into(),
                    change: Change::Unchanged,
                },
            ],
        };
        assert_eq!(r.summary(), "1 created, 0 updated, 2 unchanged");
        assert!(!r.unchanged());
    }
}
