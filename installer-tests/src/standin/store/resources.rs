//! The Kubernetes resources the stand-in serves, and their discovery documents.
//!
//! A subset of the kube-apiserver's built-in types (Kubernetes 1.36, as embedded in k3s): the ones
//! the installer creates or reads (nodes, namespaces, pods, services, configmaps, secrets,
//! serviceaccounts, deployments, replicasets, daemonsets, statefulsets, networkpolicies, events,
//! plus RBAC, leases, PodDisruptionBudgets and Jobs, which an application's manifests commonly
//! contain). Discovery answers `/api`, `/apis`, `/api/v1` and `/apis/<group>/<version>` in the
//! `APIVersions`/`APIGroupList`/`APIResourceList` shapes kube-rs reads.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural name used in URLs.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource (status is ignored on the main resource and vice versa).
    pub status: bool,
    /// Has a `/scale` subresource.
    pub scale: bool,
    /// `metadata.generation` is maintained (bumped when the spec changes).
    pub generation: bool,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as used in API error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps` or `Pod`, as used in validation error messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The key the store files objects of this type under.
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            format!("core/{}", self.plural)
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }
}

macro_rules! rt {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, [$($short:expr),*], status=$status:expr, scale=$scale:expr, generation=$gen:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: &[$($short),*],
            status: $status,
            scale: $scale,
            generation: $gen,
        }
    };
}

/// Every served type.
pub static RESOURCES: &[ResourceType] = &[
    rt!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        ["ns"],
        status = true,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        ["no"],
        status = true,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        ["po"],
        status = true,
        scale = false,
        generation = true
    ),
    rt!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        ["svc"],
        status = true,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        ["ep"],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        ["cm"],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        ["sa"],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        ["ev"],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        ["pvc"],
        status = true,
        scale = false,
        generation = false
    ),
    rt!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        ["deploy"],
        status = true,
        scale = true,
        generation = true
    ),
    rt!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        ["rs"],
        status = true,
        scale = true,
        generation = true
    ),
    rt!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        ["ds"],
        status = true,
        scale = false,
        generation = true
    ),
    rt!(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        ["sts"],
        status = true,
        scale = true,
        generation = true
    ),
    rt!(
        "apps",
        "v1",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        true,
        [],
        status = true,
        scale = false,
        generation = true
    ),
    rt!(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        ["netpol"],
        status = false,
        scale = false,
        generation = true
    ),
    rt!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        ["pdb"],
        status = true,
        scale = false,
        generation = true
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        [],
        status = false,
        scale = false,
        generation = false
    ),
    rt!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        ["ev"],
        status = false,
        scale = false,
        generation = false
    ),
];

/// Find a type by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a type by apiVersion and kind.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The core type with this plural name.
pub fn core(plural: &str) -> &'static ResourceType {
    find("", "v1", plural).unwrap_or(&RESOURCES[0])
}

/// The apps/v1 type with this plural name.
pub fn apps(plural: &str) -> &'static ResourceType {
    find("apps", "v1", plural).unwrap_or(&RESOURCES[0])
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let gs: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
    })
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &types {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "storageVersionHash": "",
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.plural == "pods" && r.group.is_empty() {
            for (sub, kind, verbs) in [
                ("pods/eviction", "Eviction", vec!["create"]),
                ("pods/binding", "Binding", vec!["create"]),
                ("pods/log", "Pod", vec!["get"]),
            ] {
                let mut v = json!({"name": sub, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
                if sub == "pods/eviction" {
                    v["group"] = json!("policy");
                    v["version"] = json!("v1");
                }
                resources.push(v);
            }
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_what_the_installer_uses() {
        let core = api_resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "nodes",
            "namespaces",
            "pods",
            "pods/status",
            "services",
            "configmaps",
            "secrets",
            "serviceaccounts",
            "events",
        ] {
            assert!(names.contains(&want), "{want}");
        }
        let apps = api_resource_list("apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        assert!(api_resource_list("nope", "v1").is_none());
        let groups = api_group_list();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "networking.k8s.io")
        );
    }
}
