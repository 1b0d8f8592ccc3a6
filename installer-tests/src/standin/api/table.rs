//! Server-side printing: the `meta.k8s.io/v1` `Table` kube-apiserver answers when the `Accept`
//! header asks for `application/json;as=Table;v=v1;g=meta.k8s.io` (kubectl sends it for `get`).
//!
//! Column definitions and cells follow kube-apiserver's printers
//! (`kubernetes/pkg/printers/internalversion/printers.go`: `AddHandlers`, `printNode`,
//! `printPod`, `printDeployment`, `printDaemonSet`, `printStatefulSet`, `printService`,
//! `printEvent`, `printNamespace`); priority 1 columns are the ones `-o wide` adds. Types without
//! a printer get the default table of `pkg/registry/rest/table.go`'s convertor as CRDs without
//! printer columns do: Name and Age. Ages are `duration.HumanDuration` of the creation time.

use serde_json::{Value, json};

use crate::standin::store::resources::ResourceType;

/// One `columnDefinitions` entry.
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        priority: 1,
        ..col(name, ty, description)
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    priority: 0,
};
const AGE: Column = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
);

/// The media type asked for, if the `Accept` header prefers a Table: `Some("v1")` or
/// `Some("v1beta1")`. The first media range that is a Table or plain JSON wins, as the
/// apiserver's content negotiation takes the client's order.
pub fn wanted(accept: &str) -> Option<&'static str> {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mt = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let p = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if mt != "application/json" && mt != "*/*" && mt != "application/*" {
            continue;
        }
        match (p("as"), p("g"), p("v")) {
            (None, _, _) => return None,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Some("v1"),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => return Some("v1beta1"),
            _ => continue,
        }
    }
    None
}

/// The columns kube-apiserver prints for a type.
pub fn columns(rt: &ResourceType) -> Vec<Column> {
    match rt.key().as_str() {
        "core/nodes" => vec![
            NAME,
            col("Status", "string", "The status of the node"),
            col("Roles", "string", "The roles of the node"),
            AGE,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide(
                "Internal-IP",
                "string",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "External-IP",
                "string",
                "List of addresses reachable to the node. Queried from cloud provider, if available.",
            ),
            wide(
                "OS-Image",
                "string",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            wide(
                "Kernel-Version",
                "string",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            wide(
                "Container-Runtime",
                "string",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "core/pods" => vec![
            NAME,
            col(
                "Ready",
                "string",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            wide(
                "IP",
                "string",
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            wide(
                "Node",
                "string",
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            wide(
                "Nominated Node",
                "string",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            wide(
                "Readiness Gates",
                "string",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "apps/deployments" => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "integer",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "integer",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            wide(
                "Containers",
                "string",
                "Names of each container in the template.",
            ),
            wide(
                "Images",
                "string",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "string",
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        "apps/daemonsets" => vec![
            NAME,
            col(
                "Desired",
                "integer",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
            ),
            col(
                "Current",
                "integer",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            col(
                "Ready",
                "integer",
                "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
            ),
            col(
                "Up-to-date",
                "integer",
                "The total number of nodes that are running updated daemon pod",
            ),
            col(
                "Available",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            col(
                "Node Selector",
                "string",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            wide(
                "Containers",
                "string",
                "Names of each container in the template.",
            ),
            wide(
                "Images",
                "string",
                "Images referenced by each container in the template.",
            ),
            wide(
                "Selector",
                "string",
                "A label query over pods that are managed by the daemon set.",
            ),
        ],
        "apps/statefulsets" => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            AGE,
            wide(
                "Containers",
                "string",
                "Names of each container in the template.",
            ),
            wide(
                "Images",
                "string",
                "Images referenced by each container in the template.",
            ),
        ],
        "core/services" => vec![
            NAME,
            col(
                "Type",
                "string",
                "type determines how the Service is exposed.",
            ),
            col(
                "Cluster-IP",
                "string",
                "clusterIP is the IP address of the service and is usually assigned randomly.",
            ),
            col(
                "External-IP",
                "string",
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                "string",
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            wide(
                "Selector",
                "string",
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "core/events" | "events.k8s.io/events" => vec![
            col(
                "Last Seen",
                "string",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "string",
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                "string",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", "string", "The object that this event is about."),
            wide(
                "Subobject",
                "string",
                "The subobject of the involved object (fieldPath).",
            ),
            wide(
                "Source",
                "string",
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            col(
                "Message",
                "string",
                "A human-readable description of the status of this operation.",
            ),
            wide(
                "First Seen",
                "string",
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            wide(
                "Count",
                "string",
                "The number of times this event has occurred.",
            ),
            wide("Name", "string", "Name must be unique within a namespace."),
        ],
        "core/namespaces" => vec![
            NAME,
            col("Status", "string", "The status of the namespace"),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// `duration.HumanDuration` of the time since an RFC 3339 timestamp, `<unknown>` without one.
pub fn age(ts: &str) -> String {
    let Some(t) = crate::standin::store::parse_time(ts) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - t.as_second())
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`, in seconds.
pub fn human_duration(s: i64) -> String {
    let (m, h) = (s / 60, s / 3600);
    let or = |a: String, rem: i64, b: String| if rem == 0 { a } else { b };
    match s {
        s if s < -1 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => or(format!("{m}m"), s % 60, format!("{m}m{}s", s % 60)),
        _ if m < 3 * 60 => format!("{m}m"),
        _ if h < 8 => or(format!("{h}h"), m % 60, format!("{h}h{}m", m % 60)),
        _ if h < 48 => format!("{h}h"),
        _ if h < 8 * 24 => or(
            format!("{}d", h / 24),
            h % 24,
            format!("{}d{}h", h / 24, h % 24),
        ),
        _ if h < 2 * 365 * 24 => format!("{}d", h / 24),
        _ if h < 8 * 365 * 24 => {
            let (y, d) = (h / 24 / 365, (h / 24) % 365);
            or(format!("{y}y"), d, format!("{y}y{d}d"))
        }
        _ => format!("{}y", h / 24 / 365),
    }
}

fn s<'a>(o: &'a Value, p: &str) -> &'a str {
    o.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn i(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn none_if_empty(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn arr<'a>(o: &'a Value, p: &str) -> &'a [Value] {
    o.pointer(p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn label_selector(m: Option<&Value>) -> String {
    let pairs: Vec<String> = m
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    none_if_empty(pairs.join(","))
}

fn template_containers(o: &Value) -> (String, String) {
    let cs = arr(o, "/spec/template/spec/containers");
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// kubectl's node roles: the `node-role.kubernetes.io/<role>` label keys (and the legacy
/// `kubernetes.io/role` value), sorted, `<none>` without any.
pub fn node_roles(o: &Value) -> String {
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .or_else(|| {
                    (k == "kubernetes.io/role")
                        .then(|| v.as_str().unwrap_or_default().to_string())
                        .filter(|r| !r.is_empty())
                })
        })
        .collect();
    roles.sort();
    roles.dedup();
    none_if_empty(roles.join(","))
}

/// `printPod`'s STATUS: the phase (or `status.reason`), overridden by the first container that
/// waits or terminated with a reason, `Running` when a Completed pod still has a ready running
/// container, `Terminating` once deletion began.
pub fn pod_status(o: &Value) -> String {
    let mut reason = match s(o, "/status/reason") {
        "" => s(o, "/status/phase").to_string(),
        r => r.to_string(),
    };
    let init = arr(o, "/status/initContainerStatuses");
    let mut initializing = false;
    for (n, c) in init.iter().enumerate() {
        let exit = c
            .pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64);
        if exit == Some(0) {
            continue;
        }
        initializing = true;
        reason = match (
            s(c, "/state/terminated/reason"),
            s(c, "/state/waiting/reason"),
        ) {
            (r, _) if exit.is_some() => {
                if r.is_empty() {
                    format!("Init:ExitCode:{}", exit.unwrap_or(0))
                } else {
                    format!("Init:{r}")
                }
            }
            (_, w) if !w.is_empty() && w != "PodInitializing" => format!("Init:{w}"),
            _ => format!("Init:{n}/{}", arr(o, "/spec/initContainers").len()),
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr(o, "/status/containerStatuses").iter().rev() {
            let w = s(c, "/state/waiting/reason");
            let t = s(c, "/state/terminated/reason");
            if !w.is_empty() {
                reason = w.to_string();
            } else if !t.is_empty() {
                reason = t.to_string();
            } else if let Some(code) = c.pointer("/state/terminated/exitCode") {
                reason = match c
                    .pointer("/state/terminated/signal")
                    .and_then(Value::as_i64)
                {
                    Some(sig) if sig != 0 => format!("Signal:{sig}"),
                    _ => format!("ExitCode:{}", code.as_i64().unwrap_or(0)),
                };
            } else if c.pointer("/state/running").is_some() && c["ready"] == true {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(o, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn service_ports(o: &Value) -> String {
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = match s(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{}:{np}/{proto}", i(p, "/port")),
                _ => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

fn service_external_ip(o: &Value) -> String {
    let external: Vec<&str> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(o, "/spec/type") {
        "LoadBalancer" => {
            let mut ips: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
                .iter()
                .map(|x| match s(x, "/ip") {
                    "" => s(x, "/hostname"),
                    ip => ip,
                })
                .filter(|x| !x.is_empty())
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        _ => none_if_empty(external.join(",")),
    }
}

/// The cells of one object's row, in the order of [`columns`].
pub fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = s(o, "/metadata/name");
    let created = age(s(o, "/metadata/creationTimestamp"));
    match rt.key().as_str() {
        "core/nodes" => {
            let ready = arr(o, "/status/conditions")
                .iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let addr = |t: &str| {
                arr(o, "/status/addresses")
                    .iter()
                    .find(|x| x["type"] == t)
                    .map(|x| s(x, "/address").to_string())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                json!(name),
                json!(status),
                json!(node_roles(o)),
                json!(created),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(none_if_empty(s(o, "/status/nodeInfo/osImage").into())),
                json!(none_if_empty(s(o, "/status/nodeInfo/kernelVersion").into())),
                json!(none_if_empty(
                    s(o, "/status/nodeInfo/containerRuntimeVersion").into()
                )),
            ]
        }
        "core/pods" => {
            let cs = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = cs
                .iter()
                .filter(|c| c["ready"] == true && c.pointer("/state/running").is_some())
                .count();
            let restarts: i64 = cs.iter().map(|c| i(c, "/restartCount")).sum();
            let gates = arr(o, "/spec/readinessGates");
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let met = gates
                    .iter()
                    .filter(|g| {
                        arr(o, "/status/conditions")
                            .iter()
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{met}/{}", gates.len())
            };
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(created),
                json!(none_if_empty(s(o, "/status/podIP").into())),
                json!(none_if_empty(s(o, "/spec/nodeName").into())),
                json!(none_if_empty(s(o, "/status/nominatedNodeName").into())),
                json!(gates),
            ]
        }
        "apps/deployments" => {
            let (names, images) = template_containers(o);
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                json!(created),
                json!(names),
                json!(images),
                json!(label_selector(o.pointer("/spec/selector/matchLabels"))),
            ]
        }
        "apps/daemonsets" => {
            let (names, images) = template_containers(o);
            vec![
                json!(name),
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                json!(label_selector(
                    o.pointer("/spec/template/spec/nodeSelector")
                )),
                json!(created),
                json!(names),
                json!(images),
                json!(label_selector(o.pointer("/spec/selector/matchLabels"))),
            ]
        }
        "apps/statefulsets" => {
            let (names, images) = template_containers(o);
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(created),
                json!(names),
                json!(images),
            ]
        }
        "core/services" => vec![
            json!(name),
            json!(match s(o, "/spec/type") {
                "" => "ClusterIP",
                t => t,
            }),
            json!(none_if_empty(s(o, "/spec/clusterIP").into())),
            json!(service_external_ip(o)),
            json!(service_ports(o)),
            json!(created),
            json!(label_selector(o.pointer("/spec/selector"))),
        ],
        "core/events" | "events.k8s.io/events" => {
            let first = match s(o, "/firstTimestamp") {
                "" => s(o, "/eventTime"),
                t => t,
            };
            let last = match s(o, "/lastTimestamp") {
                "" => first,
                t => t,
            };
            let (kind, obj) = if rt.group.is_empty() {
                (s(o, "/involvedObject/kind"), s(o, "/involvedObject/name"))
            } else {
                (s(o, "/regarding/kind"), s(o, "/regarding/name"))
            };
            let source = [s(o, "/source/component"), s(o, "/source/host")]
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            let count = o.get("count").and_then(Value::as_i64).unwrap_or(1);
            vec![
                json!(age(last)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(format!("{}/{obj}", kind.to_lowercase())),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(
                    match s(o, "/message") {
                        "" => s(o, "/note"),
                        m => m,
                    }
                    .trim()
                ),
                json!(age(first)),
                json!(count.to_string()),
                json!(name),
            ]
        }
        "core/namespaces" => vec![json!(name), json!(s(o, "/status/phase")), json!(created)],
        _ => vec![json!(name), json!(created)],
    }
}

/// What a row's `object` holds (`includeObject`, default `PartialObjectMetadata`).
pub fn include_object(q: Option<&str>) -> Result<&'static str, String> {
    match q.unwrap_or_default() {
        "" | "Metadata" => Ok("Metadata"),
        "Object" => Ok("Object"),
        "None" => Ok("None"),
        other => Err(format!(
            "unsupported includeObject value {other:?}, expected one of [None Metadata Object]"
        )),
    }
}

/// A `meta.k8s.io/<version>` Table of `objects` (objects with kind and apiVersion), with the
/// list metadata given.
pub fn table(
    rt: &ResourceType,
    version: &str,
    objects: &[Value],
    metadata: Value,
    include: &str,
) -> Value {
    let defs: Vec<Value> = columns(rt)
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt, o)});
            match include {
                "Object" => {
                    let mut full = o.clone();
                    full["kind"] = json!(rt.kind);
                    full["apiVersion"] = json!(rt.api_version());
                    row["object"] = full;
                }
                "None" => {}
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": format!("meta.k8s.io/{version}"),
                        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(wanted(kubectl), Some("v1"));
        assert_eq!(
            wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json"),
            Some("v1beta1")
        );
        assert_eq!(wanted("application/json"), None);
        assert_eq!(
            wanted("application/json, application/json;as=Table;v=v1;g=meta.k8s.io"),
            None
        );
        assert_eq!(wanted(""), None);
    }

    #[test]
    fn human_durations() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (180, "3m"),
            (3600, "60m"),
            (4 * 3600 + 60, "4h1m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 3600, "3d1h"),
            (3 * 86400, "3d"),
            (100 * 86400, "100d"),
            (3 * 365 * 86400, "3y"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn pod_status_as_kubectl_shows_it() {
        let running = json!({"status": {"phase": "Running", "containerStatuses": [
            {"ready": true, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&running), "Running");
        let crash = json!({"status": {"phase": "Running", "containerStatuses": [
            {"ready": false, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status(&crash), "CrashLoopBackOff");
        let done = json!({"status": {"phase": "Succeeded", "containerStatuses": [
            {"ready": false, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}});
        assert_eq!(pod_status(&done), "Completed");
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running"}});
        assert_eq!(pod_status(&deleting), "Terminating");
        assert_eq!(
            pod_status(&json!({"status": {"phase": "Pending"}})),
            "Pending"
        );
    }

    #[test]
    fn node_roles_from_labels() {
        let n = json!({"metadata": {"labels": {
            "node-role.kubernetes.io/etcd": "true",
            "node-role.kubernetes.io/control-plane": "true",
            "kubernetes.io/hostname": "a"}}});
        assert_eq!(node_roles(&n), "control-plane,etcd");
        assert_eq!(node_roles(&json!({"metadata": {}})), "<none>");
    }
}
