//! Decoding, defaulting and validation of objects on their way into the store, as the
//! kube-apiserver does it for the built-in types (Kubernetes 1.36):
//!
//! - Decoding through the real `k8s-openapi` types: a body that does not fit the type is a
//!   `400 BadRequest`; unknown fields are dropped with a `Warning` header (`fieldValidation=Warn`,
//!   the server default) or, for server-side apply, rejected with the apiserver's
//!   `failed to create typed patch object (...): .spec.x: field not declared in schema`.
//! - Defaulting as `pkg/apis/core/v1/defaults.go` and `pkg/apis/apps/v1/defaults.go` do for the
//!   fields the installer's waits and comparisons see (restartPolicy, dnsPolicy, imagePullPolicy,
//!   probe timings, rolling-update strategy, revisionHistoryLimit, progressDeadlineSeconds,
//!   Service clusterIP/ports, ...), plus the `DefaultTolerationSeconds` admission plugin.
//! - Validation with the apiserver's `422 Invalid` wording for names (RFC 1123), labels, missing
//!   containers or images, `hostPort` on hostNetwork pods, a selector that does not match the
//!   template, immutable selectors, and Service cluster IPs outside `service-cidr`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::errors::ApiError;
use super::patch;
use super::resources::ResourceType;

/// Write operations admission distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
}

/// Cluster parameters admission needs.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    /// `service-cidr` (first range).
    pub service_cidr: (Ipv4Addr, u8),
    /// `service-node-port-range`.
    pub node_port_range: (u16, u16),
}

impl Default for ClusterParams {
    fn default() -> Self {
        ClusterParams {
            service_cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
            node_port_range: (30000, 32767),
        }
    }
}

/// Parse `10.43.0.0/16`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.trim().split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((ip, len))
}

/// Whether `ip` is inside `cidr`.
pub fn cidr_contains(cidr: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if cidr.1 == 0 {
        0
    } else {
        u32::MAX << (32 - cidr.1)
    };
    (u32::from(cidr.0) & mask) == (u32::from(ip) & mask)
}

/// What admission may look at in the rest of the store.
pub struct Context {
    pub params: ClusterParams,
    /// Cluster IPs already allocated to Services.
    pub used_cluster_ips: BTreeSet<Ipv4Addr>,
    /// Node ports already allocated.
    pub used_node_ports: BTreeSet<u16>,
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(
    v: &Value,
) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// Decode `v` through the k8s-openapi type for `rt` and encode it again.
pub fn typed_roundtrip(rt: &ResourceType, v: &Value) -> Result<Value, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
    };
    use k8s_openapi::api::{networking::v1 as net, policy::v1 as policy, rbac::v1 as rbac};
    match rt.key().as_str() {
        "core/namespaces" => roundtrip::<core::Namespace>(v),
        "core/nodes" => roundtrip::<core::Node>(v),
        "core/pods" => roundtrip::<core::Pod>(v),
        "core/services" => roundtrip::<core::Service>(v),
        "core/endpoints" => roundtrip::<core::Endpoints>(v),
        "core/configmaps" => roundtrip::<core::ConfigMap>(v),
        "core/secrets" => roundtrip::<core::Secret>(v),
        "core/serviceaccounts" => roundtrip::<core::ServiceAccount>(v),
        "core/events" => roundtrip::<core::Event>(v),
        "core/persistentvolumeclaims" => roundtrip::<core::PersistentVolumeClaim>(v),
        "apps/deployments" => roundtrip::<apps::Deployment>(v),
        "apps/replicasets" => roundtrip::<apps::ReplicaSet>(v),
        "apps/daemonsets" => roundtrip::<apps::DaemonSet>(v),
        "apps/statefulsets" => roundtrip::<apps::StatefulSet>(v),
        "apps/controllerrevisions" => roundtrip::<apps::ControllerRevision>(v),
        "batch/jobs" => roundtrip::<batch::Job>(v),
        "networking.k8s.io/networkpolicies" => roundtrip::<net::NetworkPolicy>(v),
        "policy/poddisruptionbudgets" => roundtrip::<policy::PodDisruptionBudget>(v),
        "discovery.k8s.io/endpointslices" => {
            roundtrip::<k8s_openapi::api::discovery::v1::EndpointSlice>(v)
        }
        "rbac.authorization.k8s.io/roles" => roundtrip::<rbac::Role>(v),
        "rbac.authorization.k8s.io/rolebindings" => roundtrip::<rbac::RoleBinding>(v),
        "rbac.authorization.k8s.io/clusterroles" => roundtrip::<rbac::ClusterRole>(v),
        "rbac.authorization.k8s.io/clusterrolebindings" => roundtrip::<rbac::ClusterRoleBinding>(v),
        "coordination.k8s.io/leases" => roundtrip::<coord::Lease>(v),
        "events.k8s.io/events" => roundtrip::<k8s_openapi::api::events::v1::Event>(v),
        _ => Ok(v.clone()),
    }
}

/// Paths present in `orig` but lost by the typed round trip (unknown fields). Null leaves and
/// server-managed metadata are ignored.
pub fn unknown_fields(orig: &Value, decoded: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in patch::field_set(orig) {
        let Some(v) = patch::get_path(orig, &p) else {
            continue;
        };
        if v.is_null()
            || v.as_object().is_some_and(|m| m.is_empty())
            || v.as_array().is_some_and(|a| a.is_empty())
        {
            continue;
        }
        if patch::get_path(decoded, &p).is_some() {
            continue;
        }
        // Report the shortest prefix the decoded object lacks, as the apiserver does.
        let n = (1..=p.len())
            .find(|n| patch::get_path(decoded, &p[..*n]).is_none())
            .unwrap_or(p.len());
        let s = patch::path_string(&p[..n]);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`, alphanumeric at both ends, ≤253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_dns1123_label_nolen)
}

fn is_dns1123_label_nolen(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label: like a subdomain part, ≤63.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_label_nolen(s)
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && label_value_ok(name)
}

fn set_default(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i == path.len() - 1 {
            if let Some(m) = cur.as_object_mut()
                && (!m.contains_key(*seg) || m[*seg].is_null())
            {
                m.insert((*seg).to_string(), v);
            }
            return;
        }
        let m = match cur.as_object_mut() {
            Some(m) => m,
            None => return,
        };
        cur = m.entry((*seg).to_string()).or_insert_with(|| json!({}));
    }
}

fn image_pull_policy_default(image: &str) -> &'static str {
    // pkg/apis/core/v1/defaults.go SetDefaults_Container: Always for :latest or no tag.
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Value) {
    if !p.is_object() {
        return;
    }
    set_default(p, &["timeoutSeconds"], json!(1));
    set_default(p, &["periodSeconds"], json!(10));
    set_default(p, &["successThreshold"], json!(1));
    set_default(p, &["failureThreshold"], json!(3));
    if p.get("httpGet").is_some() {
        set_default(p, &["httpGet", "scheme"], json!("HTTP"));
        set_default(p, &["httpGet", "path"], json!("/"));
    }
}

/// `SetDefaults_PodSpec` and friends for the fields that matter here.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    set_default(spec, &["restartPolicy"], json!("Always"));
    set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
    set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set_default(spec, &["securityContext"], json!({}));
    set_default(spec, &["schedulerName"], json!("default-scheduler"));
    set_default(spec, &["enableServiceLinks"], json!(true));
    if spec.get("serviceAccountName").is_none() {
        let sa = spec
            .get("serviceAccount")
            .cloned()
            .unwrap_or(json!("default"));
        spec["serviceAccountName"] = sa;
    }
    let san = spec["serviceAccountName"].clone();
    set_default(spec, &["serviceAccount"], san);
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                set_default(
                    c,
                    &["imagePullPolicy"],
                    json!(image_pull_policy_default(&image)),
                );
                set_default(
                    c,
                    &["terminationMessagePath"],
                    json!("/dev/termination-log"),
                );
                set_default(c, &["terminationMessagePolicy"], json!("File"));
                set_default(c, &["resources"], json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, &["protocol"], json!("TCP"));
                        if host_network && let Some(cp) = p.get("containerPort").cloned() {
                            set_default(p, &["hostPort"], cp);
                        }
                    }
                }
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    if let Some(p) = c.get_mut(probe) {
                        default_probe(p);
                    }
                }
            }
        }
    }
}

/// `DefaultTolerationSeconds` admission: tolerate not-ready and unreachable for 300s.
fn default_tolerations(spec: &mut Value) {
    let tols = spec
        .as_object_mut()
        .map(|m| m.entry("tolerations").or_insert_with(|| json!([])));
    let Some(Value::Array(tols)) = tols else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = tols.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let e = t.get("effect").and_then(Value::as_str);
            let op = t.get("operator").and_then(Value::as_str);
            (k == Some(key) || (k.is_none() && op == Some("Exists")))
                && (e.is_none() || e == Some("NoExecute"))
        });
        if !has {
            tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

fn validate_pod_spec(spec: &Value, base: &str, causes: &mut Vec<(String, String)>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push((format!("{base}.containers"), "Required value".into())),
        Some(cs) if cs.is_empty() => {
            causes.push((format!("{base}.containers"), "Required value".into()))
        }
        Some(_) => {}
    }
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("{base}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                causes.push((format!("{f}.name"), "Required value".into()));
            } else if !is_dns1123_label(name) {
                causes.push((
                    format!("{f}.name"),
                    format!("Invalid value: \"{name}\": {LABEL_MSG}"),
                ));
            } else if !names.insert(name.to_string()) {
                causes.push((format!("{f}.name"), format!("Duplicate value: \"{name}\"")));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                causes.push((format!("{f}.image"), "Required value".into()));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    causes.push((
                        format!("{f}.ports[{j}].containerPort"),
                        format!("Invalid value: {cp}: must be between 1 and 65535, inclusive"),
                    ));
                }
                if host_network
                    && let Some(hp) = p.get("hostPort").and_then(Value::as_i64)
                    && hp != cp
                {
                    causes.push((
                        format!("{f}.ports[{j}].hostPort"),
                        format!("Invalid value: {hp}: must match `containerPort` when `hostNetwork` is true"),
                    ));
                }
            }
        }
    }
}

fn labels_causes(obj: &Value, base: &str, causes: &mut Vec<(String, String)>) {
    for (field, check_values) in [("labels", true), ("annotations", false)] {
        if let Some(m) = obj
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        {
            for (k, v) in m {
                if !label_key_ok(k) {
                    causes.push((
                        format!("{base}metadata.{field}"),
                        format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                    ));
                }
                if check_values
                    && let Some(s) = v.as_str()
                    && !label_value_ok(s)
                {
                    causes.push((
                        format!("{base}metadata.{field}"),
                        format!("Invalid value: \"{s}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                    ));
                }
            }
        }
    }
}

fn selector_causes(obj: &Value, old: Option<&Value>, causes: &mut Vec<(String, String)>) {
    let sel = obj.pointer("/spec/selector");
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        causes.push(("spec.selector".into(), "Required value".into()));
        return;
    };
    let selector = super::selectors::LabelSelector::from_object(sel);
    if selector.is_empty() {
        causes.push((
            "spec.selector".into(),
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment".into(),
        ));
    }
    let tl = obj.pointer("/spec/template/metadata/labels");
    if !selector.matches(tl) {
        causes.push((
            "spec.template.metadata.labels".into(),
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                tl.cloned().unwrap_or(Value::Null)
            ),
        ));
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != Some(sel)
    {
        causes.push((
            "spec.selector".into(),
            format!("Invalid value: {sel}: field is immutable"),
        ));
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

fn ip_of(v: &Value) -> Option<Ipv4Addr> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Default and validate `obj` for `op`. `old` is the stored object on update.
pub fn admit(
    ctx: &Context,
    rt: &ResourceType,
    op: Op,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut causes: Vec<(String, String)> = Vec::new();
    if op == Op::Create {
        let label_names = matches!(rt.plural, "namespaces" | "services");
        if label_names {
            if !is_dns1123_label(&name) {
                causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": {LABEL_MSG}"),
                ));
            }
        } else if matches!(
            rt.plural,
            "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings"
        ) {
            // RBAC names are path segments, so `system:coredns` is valid
            // (kubernetes pkg/apis/rbac/validation ValidateRBACName = path.IsValidPathSegmentName).
            if name == "." || name == ".." || name.contains('/') || name.contains('%') {
                causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": may not be '.' or '..' and may not contain '/' or '%'"),
                ));
            }
        } else if !is_dns1123_subdomain(&name) && !matches!(rt.plural, "events") {
            causes.push((
                "metadata.name".into(),
                format!("Invalid value: \"{name}\": {SUBDOMAIN_MSG}"),
            ));
        }
    }
    labels_causes(obj, "", &mut causes);
    match rt.key().as_str() {
        "core/namespaces" => {
            set_default(
                obj,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                json!(name),
            );
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            if obj.pointer("/status/phase").is_none() {
                set_default(obj, &["status", "phase"], json!("Active"));
            }
        }
        "core/pods" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                default_tolerations(spec);
            }
            validate_pod_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", &mut causes);
            if op == Op::Update
                && let Some(old) = old
            {
                // Pod specs are immutable apart from images, tolerations additions and a few more.
                let strip = |v: &Value| {
                    let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                    if let Some(cs) = s.get_mut("containers").and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                    if let Some(m) = s.as_object_mut() {
                        m.remove("tolerations");
                        m.remove("activeDeadlineSeconds");
                        m.remove("terminationGracePeriodSeconds");
                        m.remove("nodeName");
                    }
                    s
                };
                if strip(obj) != strip(old) {
                    causes.push((
                        "spec".into(),
                        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                    ));
                }
            }
        }
        "apps/deployments" | "apps/replicasets" | "apps/statefulsets" | "apps/daemonsets"
        | "batch/jobs" => {
            default_template(obj);
            match rt.plural {
                "deployments" => {
                    set_default(obj, &["spec", "replicas"], json!(1));
                    set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
                    set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
                    set_default(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
                    if obj.pointer("/spec/strategy/type").and_then(Value::as_str)
                        == Some("RollingUpdate")
                    {
                        set_default(
                            obj,
                            &["spec", "strategy", "rollingUpdate", "maxSurge"],
                            json!("25%"),
                        );
                        set_default(
                            obj,
                            &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                            json!("25%"),
                        );
                    }
                }
                "replicasets" => set_default(obj, &["spec", "replicas"], json!(1)),
                "statefulsets" => {
                    set_default(obj, &["spec", "replicas"], json!(1));
                    set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
                    set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
                    set_default(
                        obj,
                        &["spec", "updateStrategy", "type"],
                        json!("RollingUpdate"),
                    );
                    if obj
                        .pointer("/spec/updateStrategy/type")
                        .and_then(Value::as_str)
                        == Some("RollingUpdate")
                    {
                        set_default(
                            obj,
                            &["spec", "updateStrategy", "rollingUpdate", "partition"],
                            json!(0),
                        );
                    }
                    set_default(
                        obj,
                        &["spec", "persistentVolumeClaimRetentionPolicy"],
                        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                    );
                }
                "daemonsets" => {
                    set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
                    set_default(
                        obj,
                        &["spec", "updateStrategy", "type"],
                        json!("RollingUpdate"),
                    );
                    if obj
                        .pointer("/spec/updateStrategy/type")
                        .and_then(Value::as_str)
                        == Some("RollingUpdate")
                    {
                        set_default(
                            obj,
                            &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"],
                            json!(1),
                        );
                        set_default(
                            obj,
                            &["spec", "updateStrategy", "rollingUpdate", "maxSurge"],
                            json!(0),
                        );
                    }
                }
                "jobs" => {
                    set_default(obj, &["spec", "completions"], json!(1));
                    set_default(obj, &["spec", "parallelism"], json!(1));
                    set_default(obj, &["spec", "backoffLimit"], json!(6));
                    set_default(obj, &["spec", "completionMode"], json!("NonIndexed"));
                    set_default(obj, &["spec", "suspend"], json!(false));
                    if obj.pointer("/spec/selector").is_none() {
                        let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(json!(""));
                        set_default(
                            obj,
                            &[
                                "spec",
                                "selector",
                                "matchLabels",
                                "batch.kubernetes.io/controller-uid",
                            ],
                            uid.clone(),
                        );
                        set_default(
                            obj,
                            &[
                                "spec",
                                "template",
                                "metadata",
                                "labels",
                                "batch.kubernetes.io/controller-uid",
                            ],
                            uid.clone(),
                        );
                        set_default(
                            obj,
                            &["spec", "template", "metadata", "labels", "controller-uid"],
                            uid.clone(),
                        );
                        set_default(
                            obj,
                            &[
                                "spec",
                                "template",
                                "metadata",
                                "labels",
                                "batch.kubernetes.io/job-name",
                            ],
                            json!(name),
                        );
                        set_default(
                            obj,
                            &["spec", "template", "metadata", "labels", "job-name"],
                            json!(name),
                        );
                    }
                }
                _ => {}
            }
            if let Some(spec) = obj.pointer("/spec/template/spec") {
                validate_pod_spec(spec, "spec.template.spec", &mut causes);
            }
            if let Some(tpl) = obj.pointer("/spec/template") {
                labels_causes(tpl, "spec.template.", &mut causes);
            }
            if rt.plural == "jobs" {
                let rp = obj
                    .pointer("/spec/template/spec/restartPolicy")
                    .and_then(Value::as_str);
                if rp == Some("Always") {
                    causes.push((
                        "spec.template.spec.restartPolicy".into(),
                        "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
                            .into(),
                    ));
                }
            } else {
                selector_causes(obj, old, &mut causes);
            }
        }
        "core/services" => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string();
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    set_default(p, &["protocol"], json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, &["targetPort"], port);
                    }
                }
            }
            if ty != "ExternalName" {
                let n = obj
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0);
                if n == 0 {
                    causes.push(("spec.ports".into(), "Required value".into()));
                }
                if n > 1 {
                    for (i, p) in obj
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        if p.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            causes.push((format!("spec.ports[{i}].name"), "Required value".into()));
                        }
                    }
                }
                // Cluster IP: keep the old one, validate a requested one, or allocate.
                let requested = obj
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
                match (requested.as_deref(), old_ip) {
                    (_, Some(old_ip)) if op == Op::Update => {
                        if requested.is_some() && Some(&old_ip) != obj.pointer("/spec/clusterIP") {
                            causes.push((
                                "spec.clusterIPs[0]".into(),
                                format!("Invalid value: {:?}: may not change once set", requested.unwrap_or_default()),
                            ));
                        }
                        obj["spec"]["clusterIP"] = old_ip.clone();
                        obj["spec"]["clusterIPs"] = json!([old_ip]);
                    }
                    (Some("None"), _) => {
                        obj["spec"]["clusterIPs"] = json!(["None"]);
                    }
                    (Some(ip), _) if !ip.is_empty() => match ip.parse::<Ipv4Addr>() {
                        Ok(addr) if !cidr_contains(ctx.params.service_cidr, addr) => {
                            let (net, len) = ctx.params.service_cidr;
                            causes.push((
                                "spec.clusterIPs".into(),
                                format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {net}/{len}"),
                            ));
                        }
                        Ok(addr) if ctx.used_cluster_ips.contains(&addr) => {
                            causes.push((
                                "spec.clusterIPs".into(),
                                format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                            ));
                        }
                        Ok(_) => obj["spec"]["clusterIPs"] = json!([ip]),
                        Err(_) => causes.push((
                            "spec.clusterIPs[0]".into(),
                            format!("Invalid value: \"{ip}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                        )),
                    },
                    _ => {
                        let (net, len) = ctx.params.service_cidr;
                        let base = u32::from(net);
                        let size = 1u32 << (32 - len as u32);
                        let ip = (2..size.saturating_sub(1))
                            .map(|i| Ipv4Addr::from(base + i))
                            .find(|ip| !ctx.used_cluster_ips.contains(ip));
                        match ip {
                            Some(ip) => {
                                obj["spec"]["clusterIP"] = json!(ip.to_string());
                                obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
                            }
                            None => return Err(ApiError::internal("failed to allocate a serviceIP: range is full")),
                        }
                    }
                }
                set_default(obj, &["spec", "ipFamilies"], json!(["IPv4"]));
                set_default(obj, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set_default(obj, &["spec", "externalTrafficPolicy"], json!("Cluster"));
                    let (lo, hi) = ctx.params.node_port_range;
                    let mut used = ctx.used_node_ports.clone();
                    if let Some(ports) =
                        obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut)
                    {
                        for (i, p) in ports.iter_mut().enumerate() {
                            match p.get("nodePort").and_then(Value::as_u64) {
                                Some(np) if np < lo as u64 || np > hi as u64 => causes.push((
                                    format!("spec.ports[{i}].nodePort"),
                                    format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                                )),
                                Some(np) => {
                                    used.insert(np as u16);
                                }
                                None => {
                                    if let Some(np) = (lo..=hi).find(|x| !used.contains(x)) {
                                        used.insert(np);
                                        p["nodePort"] = json!(np);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let _ = ip_of;
            if obj.get("status").is_none() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        "core/secrets" => {
            set_default(obj, &["type"], json!("Opaque"));
            if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
                && let Some(sd) = sd.as_object()
            {
                use base64::Engine;
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    set_default(obj, &["data"], json!({}));
                    obj["data"][k] = json!(enc);
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, &name, &causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::store::resources;

    fn ctx() -> Context {
        Context {
            params: ClusterParams::default(),
            used_cluster_ips: [Ipv4Addr::new(10, 43, 0, 1)].into_iter().collect(),
            used_node_ports: BTreeSet::new(),
        }
    }

    #[test]
    fn pod_defaults() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"port": 80}}}]}});
        admit(&ctx(), resources::core("pods"), Op::Create, &mut p, None).unwrap();
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["hostPort"], 80);
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn invalid_names_and_missing_images() {
        let mut p =
            json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}});
        let e = admit(&ctx(), resources::core("pods"), Op::Create, &mut p, None).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.starts_with("Pod \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", e.message);
        assert!(
            e.message
                .contains("spec.containers[0].image: Required value"),
            "{}",
            e.message
        );
    }

    #[test]
    fn deployment_selector_must_match() {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        let e = admit(
            &ctx(),
            resources::apps("deployments"),
            Op::Create,
            &mut d,
            None,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("`selector` does not match template `labels`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn service_cluster_ip_rules() {
        let mut s = json!({"metadata": {"name": "kube-dns"}, "spec": {"clusterIP": "10.44.0.10", "ports": [{"port": 53}]}});
        let e = admit(
            &ctx(),
            resources::core("services"),
            Op::Create,
            &mut s,
            None,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
            "{}",
            e.message
        );
        let mut s = json!({"metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}});
        admit(
            &ctx(),
            resources::core("services"),
            Op::Create,
            &mut s,
            None,
        )
        .unwrap();
        assert_eq!(s["spec"]["clusterIP"], "10.43.0.2");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    }

    #[test]
    fn unknown_fields_are_found() {
        let orig = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "dta": {"a": "b"}});
        let rt = typed_roundtrip(resources::core("configmaps"), &orig).unwrap();
        assert_eq!(unknown_fields(&orig, &rt), vec![".dta".to_string()]);
    }
}
