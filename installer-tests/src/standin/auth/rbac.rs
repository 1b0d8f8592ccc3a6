//! Authorization as kube-apiserver under k3s (`--authorization-mode=Node,RBAC`).
//!
//! - `system:masters` may do everything (kube-apiserver's privileged group).
//! - The Node authorizer (`plugin/pkg/auth/authorizer/node`): a user `system:node:<name>` in
//!   `system:nodes` gets the rules of the `system:node` role (`NodeRules`). Not modelled: its
//!   graph, which limits a node to its own Node object and to the pods, secrets, configmaps and
//!   service-account tokens of the pods bound to it.
//! - RBAC (`plugin/pkg/auth/authorizer/rbac`): ClusterRoleBindings everywhere, RoleBindings in
//!   their namespace, to a Role of that namespace or a ClusterRole; subjects User, Group and
//!   ServiceAccount; rules with verbs, apiGroups, resources (`*`, `res/sub`, `*/sub`),
//!   resourceNames and nonResourceURLs (`*` suffix). A ClusterRole with an `aggregationRule`
//!   holds the rules of every ClusterRole its selectors match (the clusterrole-aggregation
//!   controller's result).
//! - The default roles and bindings kube-apiserver's bootstrap policy ships ([`bootstrap`]):
//!   `cluster-admin`, the aggregated `admin`/`edit`/`view` with their `system:aggregate-to-*`
//!   parts, `system:discovery`, `system:basic-user`, `system:public-info-viewer`, `system:node`,
//!   `system:node-proxier` (bound to `system:kube-proxy`). They are evaluated built in; a stored
//!   object of the same name replaces one. They are not listed by the API.
//! - A denial is `403 Forbidden` with kube-apiserver's message ([`forbidden`]), with
//!   `RBAC: <error>` appended when a binding that applies names a missing role.

use serde_json::{Value, json};

use super::UserInfo;
use crate::standin::store::resources::{self, ResourceType};
use crate::standin::store::selectors::LabelSelector;
use crate::standin::store::{ApiError, Store};

/// What a request does (`authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub verb: String,
    /// A resource request (else a non-resource `path`).
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

impl Attrs {
    /// A resource request.
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str) -> Attrs {
        Attrs {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            ..Attrs::default()
        }
    }

    /// A non-resource request.
    pub fn non_resource(verb: &str, path: &str) -> Attrs {
        Attrs {
            verb: verb.into(),
            path: path.into(),
            ..Attrs::default()
        }
    }
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn has(list: &[String], x: &str) -> bool {
    list.iter().any(|v| v == "*" || v == x)
}

/// Whether one PolicyRule allows `a` (`pkg/registry/rbac/validation` `RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attrs) -> bool {
    let verbs = strs(rule, "verbs");
    if !has(&verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return strs(rule, "nonResourceURLs").iter().any(|u| {
            u == "*" || u == &a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    if !has(&strs(rule, "apiGroups"), &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strs(rule, "resources").iter().any(|r| {
        r == "*"
            || r == &combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(rule, "resourceNames");
    names.is_empty() || names.contains(&a.name)
}

fn meta<'a>(o: &'a Value, k: &str) -> &'a str {
    o.pointer(&format!("/metadata/{k}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn applies(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str().unwrap_or_default() {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn rbac_rt(plural: &str) -> Option<&'static ResourceType> {
    resources::find("rbac.authorization.k8s.io", "v1", plural)
}

/// The RBAC objects the evaluator sees: the store's, over the bootstrap policy.
pub struct Policy {
    pub cluster_roles: Vec<Value>,
    pub roles: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
    pub role_bindings: Vec<Value>,
}

fn overlay(mut base: Vec<Value>, stored: Vec<Value>) -> Vec<Value> {
    base.retain(|b| !stored.iter().any(|s| meta(s, "name") == meta(b, "name")));
    base.extend(stored);
    base
}

impl Policy {
    /// The bootstrap policy with the store's objects over it.
    pub fn from_store(store: &Store) -> Policy {
        let all = |p: &str| rbac_rt(p).map(|rt| store.all(rt)).unwrap_or_default();
        let (roles, bindings) = bootstrap();
        Policy {
            cluster_roles: overlay(roles, all("clusterroles")),
            roles: all("roles"),
            cluster_role_bindings: overlay(bindings, all("clusterrolebindings")),
            role_bindings: all("rolebindings"),
        }
    }

    fn cluster_role(&self, name: &str) -> Option<&Value> {
        self.cluster_roles.iter().find(|r| meta(r, "name") == name)
    }

    /// A ClusterRole's effective rules (aggregated from its selectors' matches).
    pub fn cluster_role_rules(&self, role: &Value) -> Vec<Value> {
        let selectors = role
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array);
        let Some(selectors) = selectors else {
            return rules(role);
        };
        let sels: Vec<LabelSelector> = selectors.iter().filter_map(label_selector).collect();
        let mut out = Vec::new();
        for r in &self.cluster_roles {
            if meta(r, "name") == meta(role, "name") {
                continue;
            }
            if sels
                .iter()
                .any(|s| s.matches(r.pointer("/metadata/labels")))
            {
                for rule in rules(r) {
                    if !out.contains(&rule) {
                        out.push(rule);
                    }
                }
            }
        }
        out
    }

    /// RBAC's decision: `Ok` allows; `Err(reason)` has no opinion, with the errors met.
    pub fn authorize(&self, user: &UserInfo, a: &Attrs) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for b in &self.cluster_role_bindings {
            if !subjects(b).iter().any(|s| applies(s, user, "")) {
                continue;
            }
            let rname = b.pointer("/roleRef/name").and_then(Value::as_str);
            match rname.and_then(|n| self.cluster_role(n)) {
                Some(role) => {
                    if self
                        .cluster_role_rules(role)
                        .iter()
                        .any(|r| rule_allows(r, a))
                    {
                        return Ok(());
                    }
                }
                None => errors.push(format!(
                    "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                    rname.unwrap_or_default()
                )),
            }
        }
        if !a.namespace.is_empty() {
            for b in self
                .role_bindings
                .iter()
                .filter(|b| meta(b, "namespace") == a.namespace)
            {
                if !subjects(b).iter().any(|s| applies(s, user, &a.namespace)) {
                    continue;
                }
                let kind = b
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let rname = b
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let rules =
                    if kind == "ClusterRole" {
                        match self.cluster_role(rname) {
                            Some(role) => Some(self.cluster_role_rules(role)),
                            None => {
                                errors.push(format!(
                                    "clusterrole.rbac.authorization.k8s.io \"{rname}\" not found"
                                ));
                                None
                            }
                        }
                    } else {
                        match self.roles.iter().find(|r| {
                            meta(r, "name") == rname && meta(r, "namespace") == a.namespace
                        }) {
                            Some(role) => Some(rules(role)),
                            None => {
                                errors.push(format!(
                                    "role.rbac.authorization.k8s.io \"{rname}\" not found"
                                ));
                                None
                            }
                        }
                    };
                if rules.is_some_and(|rs| rs.iter().any(|r| rule_allows(r, a))) {
                    return Ok(());
                }
            }
        }
        Err(errors)
    }
}

fn rules(role: &Value) -> Vec<Value> {
    role.get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn subjects(b: &Value) -> Vec<Value> {
    b.get("subjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn label_selector(sel: &Value) -> Option<LabelSelector> {
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values = strs(e, "values").join(",");
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    LabelSelector::parse(&parts.join(",")).ok()
}

/// The whole decision (`Node,RBAC` after the `system:masters` short cut): `Err(reason)` denies.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attrs) -> Result<(), String> {
    if user.is_master() {
        return Ok(());
    }
    if user.name.starts_with("system:node:")
        && user.groups.iter().any(|g| g == "system:nodes")
        && node_rules().iter().any(|r| rule_allows(r, a))
    {
        return Ok(());
    }
    match Policy::from_store(store).authorize(user, a) {
        Ok(()) => Ok(()),
        Err(errors) if errors.is_empty() => Err(String::new()),
        Err(errors) if errors.len() == 1 => Err(format!("RBAC: {}", errors[0])),
        Err(errors) => Err(format!("RBAC: [{}]", errors.join(", "))),
    }
}

/// kube-apiserver's `forbiddenMessage` inside `NewForbidden`, with the authorizer's reason.
pub fn forbidden(user: &UserInfo, a: &Attrs, reason: &str) -> ApiError {
    let what = if !a.resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path)
    } else {
        let res = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        if a.namespace.is_empty() {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
                user.name, a.verb, res, a.group
            )
        } else {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
                user.name, a.verb, res, a.group, a.namespace
            )
        }
    };
    let err = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let message = if !a.resource_request || qualified.is_empty() {
        format!("forbidden: {err}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {:?} is forbidden: {err}", a.name)
    };
    let mut details = serde_json::Map::new();
    for (k, v) in [
        ("name", &a.name),
        ("group", &a.group),
        ("kind", &a.resource),
    ] {
        if !v.is_empty() && a.resource_request {
            details.insert(k.into(), json!(v));
        }
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(Value::Object(details)),
    }
}

/// `SelfSubjectAccessReview` (`authorization.k8s.io/v1`): the caller's own decision for
/// `spec.resourceAttributes` or `spec.nonResourceAttributes`.
pub fn self_subject_access_review(store: &Store, user: &UserInfo, body: &Value) -> Value {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let a = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), _) if r.is_object() => Attrs {
            verb: s(r, "verb"),
            resource_request: true,
            group: s(r, "group"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            namespace: s(r, "namespace"),
            name: s(r, "name"),
            path: String::new(),
        },
        (_, Some(n)) if n.is_object() => Attrs::non_resource(&s(n, "verb"), &s(n, "path")),
        _ => Attrs::default(),
    };
    let decision = authorize(store, user, &a);
    let mut status = json!({"allowed": decision.is_ok()});
    if let Err(reason) = &decision
        && !reason.is_empty()
    {
        status["reason"] = json!(reason);
    }
    if decision.is_ok() && !user.is_master() {
        status["reason"] = json!("RBAC: allowed");
    }
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}

fn rule(verbs: &[&str], groups: &[&str], res: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": res})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn aggregated(name: &str, label: &str) -> Value {
    let mut r = cluster_role(
        name,
        json!({"kubernetes.io/bootstrapping": "rbac-defaults"}),
        vec![],
    );
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {
        format!("rbac.authorization.k8s.io/aggregate-to-{label}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, kind: &str, subject: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    })
}

/// The `system:node` role's rules (`NodeRules` in kube-apiserver's bootstrap policy).
pub fn node_rules() -> Vec<Value> {
    vec![
        rule(
            &[
                "create", "get", "list", "watch", "delete", "patch", "update",
            ],
            &[""],
            &["nodes"],
        ),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(
            &["create", "patch", "update"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        rule(READ, &[""], &["pods"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(READ, &[""], &["services"]),
        rule(
            &["get"],
            &[""],
            &[
                "secrets",
                "configmaps",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
        ),
        rule(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

/// The default ClusterRoles and ClusterRoleBindings (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`).
pub fn bootstrap() -> (Vec<Value>, Vec<Value>) {
    let defaults = || json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let to = |labels: &[&str]| {
        let mut m = serde_json::Map::new();
        m.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
        for l in labels {
            m.insert(
                format!("rbac.authorization.k8s.io/aggregate-to-{l}"),
                json!("true"),
            );
        }
        Value::Object(m)
    };
    let apps = &[
        "statefulsets",
        "statefulsets/scale",
        "daemonsets",
        "deployments",
        "deployments/scale",
        "deployments/rollback",
        "replicasets",
        "replicasets/scale",
    ];
    let view_rules = vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ];
    let edit_rules = vec![
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(WRITE, &["apps"], apps),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(
            &["create", "delete", "deletecollection", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
    ];
    let admin_rules = vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
        ),
    ];
    let roles = vec![
        cluster_role(
            "cluster-admin",
            defaults(),
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            ],
        ),
        aggregated("admin", "admin"),
        aggregated("edit", "edit"),
        aggregated("view", "view"),
        cluster_role("system:aggregate-to-admin", to(&["admin"]), admin_rules),
        cluster_role(
            "system:aggregate-to-edit",
            to(&["admin", "edit"]),
            edit_rules,
        ),
        cluster_role(
            "system:aggregate-to-view",
            to(&["admin", "edit", "view"]),
            view_rules,
        ),
        cluster_role(
            "system:discovery",
            defaults(),
            vec![json!({"verbs": ["get"], "nonResourceURLs": [
            "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"]})],
        ),
        cluster_role(
            "system:public-info-viewer",
            defaults(),
            vec![json!({"verbs": ["get"], "nonResourceURLs": [
            "/healthz", "/livez", "/readyz", "/version", "/version/"]})],
        ),
        cluster_role(
            "system:basic-user",
            defaults(),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role("system:node", defaults(), node_rules()),
        cluster_role(
            "system:node-proxier",
            defaults(),
            vec![
                rule(&["list", "watch"], &[""], &["endpoints", "services"]),
                rule(READ, &[""], &["nodes"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
    ];
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", "Group", "system:masters"),
        binding(
            "system:discovery",
            "system:discovery",
            "Group",
            "system:authenticated",
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            "Group",
            "system:authenticated",
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            "Group",
            "system:authenticated",
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            "User",
            "system:kube-proxy",
        ),
    ];
    (roles, bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> UserInfo {
        UserInfo::service_account("app", "worker")
    }

    fn policy(roles: Vec<Value>, role_bindings: Vec<Value>, cluster_roles: Vec<Value>) -> Policy {
        let (builtin, bindings) = bootstrap();
        Policy {
            cluster_roles: overlay(builtin, cluster_roles),
            roles,
            cluster_role_bindings: bindings,
            role_bindings,
        }
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules})
    }

    fn rb(ns: &str, kind: &str, role: &str, subject: Value) -> Value {
        json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": ns},
            "roleRef": {"kind": kind, "name": role}, "subjects": [subject]})
    }

    #[test]
    fn role_binding_grants_its_namespace_only() {
        let p = policy(
            vec![role(
                "app",
                "pods-reader",
                json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
            )],
            vec![rb(
                "app",
                "Role",
                "pods-reader",
                json!({"kind": "ServiceAccount", "name": "worker"}),
            )],
            vec![],
        );
        assert!(
            p.authorize(&sa(), &Attrs::resource("list", "", "pods", "app"))
                .is_ok()
        );
        assert!(
            p.authorize(&sa(), &Attrs::resource("watch", "", "pods", "app"))
                .is_err()
        );
        assert!(
            p.authorize(&sa(), &Attrs::resource("list", "", "pods", "other"))
                .is_err()
        );
        assert!(
            p.authorize(&sa(), &Attrs::resource("list", "", "pods", ""))
                .is_err()
        );
        let mut log = Attrs::resource("get", "", "pods", "app");
        log.subresource = "log".into();
        assert!(
            p.authorize(&sa(), &log).is_err(),
            "pods does not cover pods/log"
        );
        let other = UserInfo::service_account("app", "gateway");
        assert!(
            p.authorize(&other, &Attrs::resource("list", "", "pods", "app"))
                .is_err()
        );
    }

    #[test]
    fn resource_names_subresource_wildcards_and_groups() {
        let r = json!({"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["*"], "resourceNames": ["web"]});
        let mut a = Attrs::resource("update", "apps", "deployments", "app");
        a.subresource = "scale".into();
        a.name = "web".into();
        assert!(rule_allows(&r, &a));
        a.name = "db".into();
        assert!(!rule_allows(&r, &a));
        a.name = "web".into();
        a.group = "".into();
        assert!(!rule_allows(&r, &a));
        let nr = json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]});
        assert!(rule_allows(
            &nr,
            &Attrs::non_resource("get", "/apis/apps/v1")
        ));
        assert!(!rule_allows(&nr, &Attrs::non_resource("get", "/metrics")));
        assert!(!rule_allows(&nr, &Attrs::resource("get", "", "pods", "")));
    }

    #[test]
    fn aggregated_view_edit_admin_and_custom_aggregation() {
        let custom = cluster_role(
            "crontabs-view",
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            vec![rule(READ, &["stable.example.com"], &["crontabs"])],
        );
        let bind = |role: &str| {
            vec![rb(
                "app",
                "ClusterRole",
                role,
                json!({"kind": "User", "name": "alice"}),
            )]
        };
        let alice = UserInfo::new("alice", &[]);
        let list_pods = Attrs::resource("list", "", "pods", "app");
        let create_pods = Attrs::resource("create", "", "pods", "app");
        let roles_create = Attrs::resource("create", "rbac.authorization.k8s.io", "roles", "app");
        let crontabs = Attrs::resource("list", "stable.example.com", "crontabs", "app");
        let secrets = Attrs::resource("get", "", "secrets", "app");
        let view = policy(vec![], bind("view"), vec![custom.clone()]);
        assert!(view.authorize(&alice, &list_pods).is_ok());
        assert!(
            view.authorize(&alice, &crontabs).is_ok(),
            "aggregated by label"
        );
        assert!(view.authorize(&alice, &create_pods).is_err());
        assert!(
            view.authorize(&alice, &secrets).is_err(),
            "view may not read secrets"
        );
        let edit = policy(vec![], bind("edit"), vec![custom.clone()]);
        assert!(edit.authorize(&alice, &create_pods).is_ok());
        assert!(edit.authorize(&alice, &secrets).is_ok());
        assert!(
            edit.authorize(&alice, &list_pods).is_ok(),
            "edit holds view's rules"
        );
        assert!(edit.authorize(&alice, &roles_create).is_err());
        let admin = policy(vec![], bind("admin"), vec![custom]);
        assert!(admin.authorize(&alice, &roles_create).is_ok());
        assert!(admin.authorize(&alice, &create_pods).is_ok());
    }

    #[test]
    fn discovery_for_every_authenticated_user_and_missing_role_reported() {
        let p = policy(
            vec![],
            vec![rb(
                "app",
                "Role",
                "gone",
                json!({"kind": "Group", "name": "system:serviceaccounts:app"}),
            )],
            vec![],
        );
        assert!(
            p.authorize(&sa(), &Attrs::non_resource("get", "/apis/apps/v1"))
                .is_ok()
        );
        assert!(
            p.authorize(&sa(), &Attrs::non_resource("get", "/metrics"))
                .is_err()
        );
        assert_eq!(
            p.authorize(&sa(), &Attrs::resource("get", "", "pods", "app"))
                .unwrap_err(),
            vec!["role.rbac.authorization.k8s.io \"gone\" not found".to_string()]
        );
    }

    #[test]
    fn forbidden_messages_are_kube_apiservers() {
        let u = sa();
        let e = forbidden(&u, &Attrs::resource("list", "", "pods", "app"), "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "system:serviceaccount:app:worker" cannot list resource "pods" in API group "" in the namespace "app""#
        );
        let mut a = Attrs::resource("patch", "", "nodes", "");
        a.name = "n1".into();
        assert_eq!(
            forbidden(&u, &a, "").message,
            r#"nodes "n1" is forbidden: User "system:serviceaccount:app:worker" cannot patch resource "nodes" in API group "" at the cluster scope"#
        );
        let mut d = Attrs::resource("get", "apps", "deployments", "app");
        d.subresource = "scale".into();
        d.name = "web".into();
        assert_eq!(
            forbidden(
                &u,
                &d,
                "RBAC: role.rbac.authorization.k8s.io \"x\" not found"
            )
            .message,
            r#"deployments.apps "web" is forbidden: User "system:serviceaccount:app:worker" cannot get resource "deployments/scale" in API group "apps" in the namespace "app": RBAC: role.rbac.authorization.k8s.io "x" not found"#
        );
        assert_eq!(
            forbidden(&u, &Attrs::non_resource("get", "/metrics"), "").message,
            r#"forbidden: User "system:serviceaccount:app:worker" cannot get path "/metrics""#
        );
    }

    #[test]
    fn node_rules_cover_what_the_kubelet_does() {
        let mut a = Attrs::resource("patch", "", "pods", "app");
        a.subresource = "status".into();
        assert!(node_rules().iter().any(|r| rule_allows(r, &a)));
        let sec = Attrs::resource("list", "", "secrets", "app");
        assert!(!node_rules().iter().any(|r| rule_allows(r, &sec)));
    }
}
