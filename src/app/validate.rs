//! The rules every rendered workload must follow before anything reaches the cluster, checked
//! on the rendered objects (pure, so each rule has a unit test):
//!
//! - the pod runs on the host network (`hostNetwork: true`): there is no overlay network, a
//!   pod off the host network is reachable from its own node only
//!   (shared/docs/k3s-host-network.md §1);
//! - its DNS policy lets it use cluster DNS from the host network (`ClusterFirstWithHostNet`;
//!   CoreDNS itself uses `Default`);
//! - every container declares its ports (`hostPort`, if given, equals `containerPort`), has a
//!   readiness and a liveness probe when it has ports, and every probe targets a declared port;
//! - no port clashes with another workload's, with a port k3s uses on the nodes, or with the
//!   NodePort range ("Ports apps must avoid", k3s `docs/installation/requirements.md`);
//! - resource requests, `imagePullPolicy: IfNotPresent` (the images come from archives, the
//!   nodes never pull), and an image the asset lock carries;
//! - a Deployment or StatefulSet asks for no more replicas than there are nodes (each replica
//!   holds its ports on a node of its own).
//!
//! Every problem names the template and the workload, and all are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use super::render::{Manifest, Manifests};
pub use crate::kube::manifest::is_workload;

/// The NodePort range k3s gives kube-proxy (`service-node-port-range` default).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> =
    crate::config::check::NODE_PORT_MIN..=crate::config::check::NODE_PORT_MAX;

/// Ports k3s itself holds on the nodes, the NodePort range and SSH: the same table the answer
/// file's port values are checked against ([`crate::config::check::reserved_port`], from
/// k3s-host-network.md §1 "Ports apps must avoid"). `None` for a free port.
pub fn reserved_port(port: u16) -> Option<&'static str> {
    crate::config::check::reserved_port(port)
}

/// One rule broken by one workload (or document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The template file, e.g. `templates/app/manifests/30-api.yaml.tera`.
    pub file: String,
    /// `Kind namespace/name`, when the problem is about one object.
    pub object: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// What the rules need to know beyond the objects themselves.
#[derive(Debug, Clone)]
pub struct Rules {
    /// DNS policies allowed on pods (`ClusterFirstWithHostNet` for the application;
    /// `Default` for CoreDNS, which must not resolve through itself).
    pub dns_policies: Vec<String>,
    /// Image references the nodes will have (from the asset lock and k3s's airgap images),
    /// normalized with [`normalize_image`]. `None` skips the check.
    pub images: Option<BTreeSet<String>>,
    /// Nodes in the cluster: an upper bound for host-network replicas. `None` skips the check.
    pub node_count: Option<usize>,
    /// Ports already held by other workloads (for example CoreDNS for the application):
    /// `(port, protocol) -> owner`.
    pub taken: BTreeMap<(u16, String), String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            dns_policies: vec!["ClusterFirstWithHostNet".into()],
            images: None,
            node_count: None,
            taken: BTreeMap::new(),
        }
    }
}

/// The pod spec of an object that runs pods (Pod, Deployment, DaemonSet, ...).
pub fn pod_spec_of(obj: &Value) -> Option<&Value> {
    let kind = obj.get("kind")?.as_str()?;
    match kind {
        "Pod" => obj.get("spec"),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            obj.pointer("/spec/template/spec")
        }
        "CronJob" => obj.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// `docker.io/library/nginx:1.28` for `nginx:1.28`, `docker.io/traefik/whoami:v1` for
/// `traefik/whoami:v1`: the form containerd records, so references compare equal however
/// they are written.
pub fn normalize_image(reference: &str) -> String {
    let (name_tag, digest) = match reference.split_once('@') {
        Some((a, d)) => (a, Some(d)),
        None => (reference, None),
    };
    // A tag is a ':' after the last '/' (an earlier ':' is a registry's port).
    let base = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[base..].rfind(':') {
        Some(i) => (&name_tag[..base + i], Some(&name_tag[base + i + 1..])),
        None => (name_tag, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    match (tag, digest) {
        (Some(t), Some(d)) => format!("{full}:{t}@{d}"),
        (Some(t), None) => format!("{full}:{t}"),
        (None, Some(d)) => format!("{full}@{d}"),
        (None, None) => format!("{full}:latest"),
    }
}

/// The ports the workloads of `manifests` declare: `(port, protocol) -> owner`, to be passed
/// as [`Rules::taken`] when checking another set that shares the nodes.
pub fn declared_ports(manifests: &Manifests) -> BTreeMap<(u16, String), String> {
    let mut out = BTreeMap::new();
    for m in &manifests.items {
        let Some(spec) = pod_spec_of(&m.object) else {
            continue;
        };
        for c in spec
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = str_at(c, "name").unwrap_or("?");
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(port) = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                {
                    let proto = str_at(p, "protocol").unwrap_or("TCP").to_owned();
                    out.entry((port, proto)).or_insert_with(|| {
                        format!("{} (container {cname}, {})", m.describe(), m.file)
                    });
                }
            }
        }
    }
    out
}

/// Checks every rule on every object; all problems at once, in document order.
pub fn check(manifests: &Manifests, rules: &Rules) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut ports: BTreeMap<(u16, String), String> = rules.taken.clone();
    for m in &manifests.items {
        check_object(m, rules, &mut ports, &mut problems);
    }
    problems
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn check_object(
    m: &Manifest,
    rules: &Rules,
    ports: &mut BTreeMap<(u16, String), String>,
    problems: &mut Vec<Problem>,
) {
    let object = m.describe();
    let mut problem = |message: String, hint: Option<&str>| {
        problems.push(Problem {
            file: m.file.clone(),
            object: Some(object.clone()),
            message,
            hint: hint.map(str::to_owned),
        })
    };
    let Some(spec) = pod_spec_of(&m.object) else {
        return;
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
        problem(
            "the pod template lacks `hostNetwork: true`".into(),
            Some(
                "every pod of the appliance runs on the host network (there is no overlay network): add `hostNetwork: true` to the pod spec",
            ),
        );
    }
    let dns = str_at(spec, "dnsPolicy").unwrap_or("ClusterFirst");
    if !rules.dns_policies.iter().any(|p| p == dns) {
        problem(
            format!(
                "`dnsPolicy: {dns}` on the host network; expected {}",
                rules.dns_policies.join(" or ")
            ),
            Some(
                "a host-network pod reaches cluster DNS only with `dnsPolicy: ClusterFirstWithHostNet`",
            ),
        );
    }
    let kind = m.kind();
    if matches!(kind, "Deployment" | "StatefulSet" | "ReplicaSet")
        && let (Some(n), Some(replicas)) = (
            rules.node_count,
            m.object.pointer("/spec/replicas").and_then(Value::as_u64),
        )
        && replicas as usize > n
        && has_ports(spec)
    {
        problem(
            format!("asks for {replicas} replicas, but the cluster has {n} nodes"),
            Some(
                "on the host network each replica holds its ports on a node of its own: lower the replica count to the number of nodes or fewer",
            ),
        );
    }
    let mut own: BTreeSet<(u16, String)> = BTreeSet::new();
    for (section, containers) in [
        ("initContainers", spec.get("initContainers")),
        ("containers", spec.get("containers")),
    ] {
        let Some(containers) = containers.and_then(Value::as_array) else {
            if section == "containers" {
                problem("the pod template has no containers".into(), None);
            }
            continue;
        };
        for c in containers {
            let cname = str_at(c, "name").unwrap_or("?");
            check_container(c, cname, section, rules, &mut problem);
            let Some(cports) = c.get("ports").and_then(Value::as_array) else {
                continue;
            };
            for p in cports {
                let Some(port) = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    problem(
                        format!("container {cname}: a port without a valid `containerPort`"),
                        None,
                    );
                    continue;
                };
                let proto = str_at(p, "protocol").unwrap_or("TCP").to_owned();
                if let Some(hp) = p.get("hostPort").and_then(Value::as_u64)
                    && hp != u64::from(port)
                {
                    problem(
                        format!(
                            "container {cname}: hostPort {hp} differs from containerPort {port}"
                        ),
                        Some(
                            "on the host network the container binds the node's port itself: give hostPort the same value as containerPort, or leave it out",
                        ),
                    );
                }
                if let Some(what) = reserved_port(port) {
                    problem(
                        format!("container {cname}: port {port}/{proto} is taken by {what}"),
                        Some(
                            "every pod uses the host network, so a container port is a port on the node: pick one below 30000 that k3s does not use",
                        ),
                    );
                    continue;
                }
                let key = (port, proto.clone());
                if !own.insert(key.clone()) {
                    problem(
                        format!(
                            "container {cname}: port {port}/{proto} is declared twice in this pod"
                        ),
                        None,
                    );
                    continue;
                }
                let owner = format!("{object} (container {cname}, {})", m.file);
                if let Some(other) = ports.get(&key) {
                    problem(
                        format!("container {cname}: port {port}/{proto} is also used by {other}"),
                        Some(
                            "all pods share the nodes' network: give each workload its own ports (change the port value in the answer file or the template)",
                        ),
                    );
                } else {
                    ports.insert(key, owner);
                }
            }
        }
    }
}

fn has_ports(spec: &Value) -> bool {
    spec.get("containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .is_some_and(|p| !p.is_empty())
            })
        })
}

fn check_container(
    c: &Value,
    cname: &str,
    section: &str,
    rules: &Rules,
    problem: &mut impl FnMut(String, Option<&str>),
) {
    match str_at(c, "image") {
        None => problem(format!("container {cname}: no image"), None),
        Some(image) => {
            if let Some(allowed) = &rules.images
                && !allowed.contains(&normalize_image(image))
            {
                problem(
                    format!(
                        "container {cname}: image {image} is in no image archive of the asset lock"
                    ),
                    Some(
                        "the nodes never pull: add an `app-images` entry listing this image to assets/assets.lock (docs/assets.md), or use an image it lists",
                    ),
                );
            }
        }
    }
    match str_at(c, "imagePullPolicy") {
        Some("IfNotPresent") => {}
        other => problem(
            format!(
                "container {cname}: imagePullPolicy is {}, expected IfNotPresent",
                other.unwrap_or("unset")
            ),
            Some(
                "the images come from the archives the installer places on every node; `IfNotPresent` uses them without pulling",
            ),
        ),
    }
    let requests = c
        .pointer("/resources/requests")
        .and_then(Value::as_object)
        .is_some_and(|r| !r.is_empty());
    if !requests {
        problem(
            format!("container {cname}: no resource requests"),
            Some("set `resources.requests` (cpu and memory) so the scheduler can place it"),
        );
    }
    let declared: Vec<(Option<&str>, u64)> = c
        .get("ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    Some((
                        str_at(p, "name"),
                        p.get("containerPort").and_then(Value::as_u64)?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if section == "containers" && !declared.is_empty() {
        for probe in ["readinessProbe", "livenessProbe"] {
            if c.get(probe).is_none() {
                problem(
                    format!("container {cname}: has ports but no {probe}"),
                    Some(
                        "every container that serves a port needs a readiness and a liveness probe: the install gates on them",
                    ),
                );
            }
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(p) = c.get(probe) else { continue };
        let port = ["httpGet", "tcpSocket", "grpc"]
            .iter()
            .find_map(|k| p.get(*k).and_then(|h| h.get("port")));
        let Some(port) = port else { continue };
        let ok = match port {
            Value::Number(n) => n
                .as_u64()
                .is_some_and(|n| declared.iter().any(|(_, p)| *p == n)),
            Value::String(name) => declared.iter().any(|(n, _)| *n == Some(name.as_str())),
            _ => false,
        };
        if !ok {
            problem(
                format!(
                    "container {cname}: the {probe} targets port {port}, which the container does not declare"
                ),
                Some(
                    "declare every port the container serves (probes included) under `ports`, so clashes can be checked",
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::render::Manifest;
    use serde_json::json;

    fn pod(name: &str, port: u16) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"replicas": 1, "template": {"spec": {
                "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
                "containers": [{
                    "name": "c", "image": "docker.io/library/busybox:1.37.0",
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"requests": {"cpu": "10m"}},
                    "ports": [{"name": "http", "containerPort": port}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": port}},
                    "livenessProbe": {"httpGet": {"path": "/", "port": "http"}}
                }]
            }}}
        })
    }

    fn set(items: Vec<(&str, Value)>) -> Manifests {
        Manifests {
            items: items
                .into_iter()
                .map(|(file, object)| Manifest {
                    file: file.into(),
                    object,
                })
                .collect(),
        }
    }

    fn messages(p: &[Problem]) -> Vec<String> {
        p.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_good_workload_passes() {
        let m = set(vec![
            ("a.yaml.tera", pod("a", 8080)),
            ("b.yaml.tera", pod("b", 8081)),
        ]);
        assert_eq!(check(&m, &Rules::default()), vec![]);
    }

    #[test]
    fn a_workload_off_the_host_network_is_refused_by_name() {
        let mut p = pod("api", 8080);
        p["spec"]["template"]["spec"]["hostNetwork"] = json!(false);
        let problems = check(
            &set(vec![("manifests/30-api.yaml.tera", p)]),
            &Rules::default(),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "manifests/30-api.yaml.tera: Deployment ns/api: the pod template lacks `hostNetwork: true`\n    hint: every pod of the appliance runs on the host network (there is no overlay network): add `hostNetwork: true` to the pod spec"
        );
        let mut q = pod("api", 8080);
        q["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("hostNetwork");
        assert_eq!(check(&set(vec![("x", q)]), &Rules::default()).len(), 1);
    }

    #[test]
    fn a_port_clash_between_workloads_names_both() {
        let m = set(vec![
            ("manifests/30-api.yaml.tera", pod("api", 8081)),
            ("manifests/40-worker.yaml.tera", pod("worker", 8081)),
        ]);
        let problems = messages(&check(&m, &Rules::default()));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("manifests/40-worker.yaml.tera: Deployment ns/worker: container c: port 8081/TCP is also used by Deployment ns/api (container c, manifests/30-api.yaml.tera)"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn udp_and_tcp_on_one_port_do_not_clash_but_a_taken_port_does() {
        let mut a = pod("dns", 1053);
        a["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([
            {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
            {"name": "http", "containerPort": 1053, "protocol": "TCP"}
        ]);
        assert_eq!(check(&set(vec![("x", a)]), &Rules::default()), vec![]);
        let rules = Rules {
            taken: [(
                (8443, "TCP".to_string()),
                "DaemonSet kube-system/coredns".to_string(),
            )]
            .into_iter()
            .collect(),
            ..Rules::default()
        };
        let p = messages(&check(&set(vec![("g", pod("gw", 8443))]), &rules));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("port 8443/TCP is also used by DaemonSet kube-system/coredns"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn k3s_ports_and_the_node_port_range_are_refused() {
        for (port, what) in [
            (10250, "the kubelet API"),
            (6443, "the Kubernetes API server"),
            (2380, "etcd on servers"),
            (30080, "NodePort range"),
            (32767, "NodePort range"),
            (22, "SSH"),
        ] {
            let p = messages(&check(&set(vec![("t", pod("w", port))]), &Rules::default()));
            assert_eq!(p.len(), 1, "{port}: {p:?}");
            assert!(
                p[0].contains(&format!("port {port}/TCP is taken by")),
                "{}",
                p[0]
            );
            assert!(p[0].contains(what), "{}", p[0]);
        }
        assert!(reserved_port(29999).is_none());
        assert!(reserved_port(32768).is_none());
    }

    #[test]
    fn a_container_port_without_probes_is_refused() {
        let mut p = pod("api", 8080);
        let c = p["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap();
        c.remove("readinessProbe");
        c.remove("livenessProbe");
        let problems = messages(&check(&set(vec![("a", p)]), &Rules::default()));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("container c: has ports but no readinessProbe"));
        assert!(problems[1].contains("container c: has ports but no livenessProbe"));
    }

    #[test]
    fn a_probe_on_an_undeclared_port_is_refused() {
        let mut p = pod("api", 8080);
        p["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
            json!({"httpGet": {"path": "/", "port": 8181}});
        p["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/", "port": "metrics"}});
        let problems = messages(&check(&set(vec![("a", p)]), &Rules::default()));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("readinessProbe targets port \"metrics\""),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("livenessProbe targets port 8181"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn pull_policy_requests_dns_policy_host_port_and_images_are_checked() {
        let mut p = pod("api", 8080);
        let spec = &mut p["spec"]["template"]["spec"];
        spec["dnsPolicy"] = json!("ClusterFirst");
        let c = &mut spec["containers"][0];
        c["imagePullPolicy"] = json!("Always");
        c["resources"] = json!({});
        c["ports"][0]["hostPort"] = json!(9090);
        c["image"] = json!("nginx:1.28.0-alpine");
        let rules = Rules {
            images: Some(["docker.io/library/busybox:1.37.0".to_string()].into()),
            ..Rules::default()
        };
        let problems = messages(&check(&set(vec![("a", p)]), &rules));
        let all = problems.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        assert!(
            all.contains("`dnsPolicy: ClusterFirst` on the host network"),
            "{all}"
        );
        assert!(
            all.contains("imagePullPolicy is Always, expected IfNotPresent"),
            "{all}"
        );
        assert!(all.contains("no resource requests"), "{all}");
        assert!(
            all.contains("hostPort 9090 differs from containerPort 8080"),
            "{all}"
        );
        assert!(
            all.contains("image nginx:1.28.0-alpine is in no image archive"),
            "{all}"
        );
    }

    #[test]
    fn more_replicas_than_nodes_is_refused() {
        let mut p = pod("api", 8080);
        p["spec"]["replicas"] = json!(4);
        let rules = Rules {
            node_count: Some(3),
            ..Rules::default()
        };
        let problems = messages(&check(&set(vec![("a", p.clone())]), &rules));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("asks for 4 replicas, but the cluster has 3 nodes"));
        p["spec"]["replicas"] = json!(3);
        assert!(check(&set(vec![("a", p)]), &rules).is_empty());
    }

    #[test]
    fn non_workloads_are_not_checked_and_every_problem_is_reported() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let mut bad1 = pod("a", 10250);
        bad1["spec"]["template"]["spec"]["hostNetwork"] = json!(false);
        let bad2 = pod("b", 31000);
        let problems = check(
            &set(vec![("c", cm), ("a", bad1), ("b", bad2)]),
            &Rules::default(),
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn image_references_are_normalized() {
        assert_eq!(
            normalize_image("nginx:1.28"),
            "docker.io/library/nginx:1.28"
        );
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            normalize_image("traefik/whoami:v1.11.0"),
            "docker.io/traefik/whoami:v1.11.0"
        );
        assert_eq!(
            normalize_image("registry.k8s.io/etcd:3.6.6-0"),
            "registry.k8s.io/etcd:3.6.6-0"
        );
        assert_eq!(
            normalize_image("localhost:5000/app:1"),
            "localhost:5000/app:1"
        );
        assert_eq!(
            normalize_image("busybox@sha256:abcd"),
            "docker.io/library/busybox@sha256:abcd"
        );
        assert_eq!(
            normalize_image("docker.io/library/nginx:1.28.0-alpine"),
            "docker.io/library/nginx:1.28.0-alpine"
        );
    }
}
