//! The bundled application rendered for 3- and 5-node clusters, its validation through real
//! values, and what a changed value rolls out.

use super::*;
use std::collections::BTreeSet;

fn facts(servers: usize, agents: usize) -> ClusterFacts {
    let mut nodes = Vec::new();
    for i in 1..=servers {
        nodes.push(NodeFact {
            name: format!("srv{i}"),
            address: format!("10.0.0.{}", 10 + i).parse().unwrap(),
            server: true,
        });
    }
    for i in 1..=agents {
        nodes.push(NodeFact {
            name: format!("agt{i}"),
            address: format!("10.0.0.{}", 20 + i).parse().unwrap(),
            server: false,
        });
    }
    ClusterFacts::new(nodes, "10.43.0.0/16".parse().unwrap())
}

/// The defaults of templates/app/values.yaml.
fn values() -> Values {
    Values::new()
        .set("hostname", "appliance.example.internal")
        .set("gatewayPort", 8443)
        .set("apiPort", 8081)
        .set("storePort", 7379)
        .set("apiReplicas", 2)
        .set("adminEmail", "admin@example.internal")
}

fn load(values: Values, facts: ClusterFacts) -> App {
    App::load(Bundle::embedded(), values, facts).unwrap()
}

fn render(app: &App) -> Result<Manifests, AppError> {
    app.render(&Generated::placeholder(app.spec(), "1"))
}

fn problems(e: AppError) -> Vec<String> {
    match e {
        AppError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
        other => panic!("expected validation problems, got {other}"),
    }
}

#[test]
fn the_bundled_application_renders_for_three_servers() {
    let app = load(values(), facts(3, 0));
    let m = render(&app).unwrap();
    insta::assert_snapshot!("appliance_3_servers", m.to_yaml());
}

#[test]
fn the_bundled_application_renders_for_three_servers_and_two_agents() {
    let app = load(values(), facts(3, 2));
    let m = render(&app).unwrap();
    let store = m.find("StatefulSet", Some("appliance"), "store").unwrap();
    assert_eq!(
        store.object["spec"]["replicas"], 3,
        "one store member per server"
    );
    let cmd = store.object["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap();
    assert!(
        cmd.iter().any(|a| a
            == "--initial-cluster=srv1=http://10.0.0.11:7380,srv2=http://10.0.0.12:7380,srv3=http://10.0.0.13:7380"),
        "{cmd:?}"
    );
    assert_eq!(
        app.endpoints()
            .iter()
            .map(|e| e.url.as_str())
            .collect::<Vec<_>>(),
        vec![
            "https://10.0.0.21:8443/healthz",
            "https://10.0.0.22:8443/healthz",
            "https://10.0.0.11:8443/healthz",
            "https://10.0.0.12:8443/healthz",
            "https://10.0.0.13:8443/healthz",
        ]
    );
}

#[test]
fn the_metadata_orders_store_before_api_before_gateway() {
    let app = load(values(), facts(3, 0));
    let order: Vec<String> = app.workloads().iter().map(ToString::to_string).collect();
    assert_eq!(
        order,
        vec![
            "StatefulSet appliance/store",
            "Deployment appliance/api",
            "Deployment appliance/worker",
            "DaemonSet appliance/gateway",
        ]
    );
    let spec = app.spec();
    assert_eq!(spec.secrets[0].name, "app-secrets");
    assert_eq!(
        spec.tls.as_ref().unwrap().certificates[0].dns_names,
        vec!["appliance.example.internal"]
    );
}

#[test]
fn every_image_the_manifests_use_is_in_the_asset_lock_for_every_arch() {
    let lock = builtin_lock().unwrap();
    let app = load(values(), facts(3, 0));
    let m = render(&app).unwrap();
    let used: BTreeSet<String> = m
        .items
        .iter()
        .filter_map(|m| validate::pod_spec_of(&m.object))
        .flat_map(|s| s["containers"].as_array().unwrap().clone())
        .map(|c| validate::normalize_image(c["image"].as_str().unwrap()))
        .collect();
    assert_eq!(used.len(), 4, "{used:?}");
    // The lock's app-images also carry the policy enforcer's image (phases::enforcer).
    let mut used = used;
    used.insert(validate::normalize_image(crate::phases::enforcer::IMAGE));
    for arch in ["amd64", "arm64"] {
        let in_lock: BTreeSet<String> = lock
            .artifacts
            .iter()
            .filter(|e| {
                e.kind == ArtifactKind::AppImages && e.arch.map(|a| a.as_str()) == Some(arch)
            })
            .flat_map(|e| {
                e.images
                    .iter()
                    .map(|i| validate::normalize_image(&i.reference))
            })
            .collect();
        assert_eq!(used, in_lock, "{arch}");
    }
    // With another lock the same manifests are refused, naming the workload.
    let none = app.clone().with_images(Some(BTreeSet::new()));
    let p = problems(render(&none).unwrap_err());
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(
        p[0].contains(
            "image registry.k8s.io/etcd:3.6.6-0 is in no image archive of the asset lock"
        ),
        "{}",
        p[0]
    );
}

#[test]
fn every_pod_is_on_the_host_network_with_probes_requests_and_if_not_present() {
    for (s, a) in [(3, 0), (3, 2)] {
        let m = render(&load(values(), facts(s, a))).unwrap();
        let workloads: Vec<&Manifest> = m
            .items
            .iter()
            .filter(|m| validate::is_workload(&m.object))
            .collect();
        assert_eq!(workloads.len(), 4);
        for w in workloads {
            let spec = validate::pod_spec_of(&w.object).unwrap();
            assert_eq!(spec["hostNetwork"], true, "{}", w.describe());
            assert_eq!(
                spec["dnsPolicy"],
                "ClusterFirstWithHostNet",
                "{}",
                w.describe()
            );
            for c in spec["containers"].as_array().unwrap() {
                assert_eq!(c["imagePullPolicy"], "IfNotPresent");
                assert!(c["readinessProbe"].is_object() && c["livenessProbe"].is_object());
                assert!(c["resources"]["requests"].is_object());
                for p in c["ports"].as_array().unwrap() {
                    assert_eq!(p["hostPort"], p["containerPort"], "{}", w.describe());
                }
            }
        }
    }
}

#[test]
fn a_port_value_that_clashes_with_a_template_port_names_both_workloads() {
    // 7380 is the store's peer port (storePort + 1); the answer file cannot know that.
    let app = load(values().set("apiPort", 7380), facts(3, 0));
    let p = problems(render(&app).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        p[0],
        "templates/app/manifests/30-api.yaml.tera: Deployment appliance/api: container api: port 7380/TCP is also used by StatefulSet appliance/store (container etcd, templates/app/manifests/20-store.yaml.tera)\n    hint: all pods share the nodes' network: give each workload its own ports (change the port value in the answer file or the template)"
    );
}

#[test]
fn a_port_value_on_coredns_or_k3s_or_the_node_port_range_is_refused() {
    let p = problems(render(&load(values().set("gatewayPort", 1053), facts(3, 0))).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("port 1053/TCP is also used by DaemonSet kube-system/coredns"),
        "{}",
        p[0]
    );
    let p = problems(render(&load(values().set("gatewayPort", 10250), facts(3, 0))).unwrap_err());
    assert!(
        p[0].contains("port 10250/TCP is taken by the kubelet API on every node"),
        "{}",
        p[0]
    );
    let p = problems(render(&load(values().set("storePort", 31000), facts(3, 0))).unwrap_err());
    // The client port, its peer port (31001) and nothing else.
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|p| p.contains("NodePort range")), "{p:?}");
}

#[test]
fn more_api_replicas_than_nodes_is_refused() {
    let p = problems(render(&load(values().set("apiReplicas", 4), facts(3, 0))).unwrap_err());
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("Deployment appliance/api: asks for 4 replicas, but the cluster has 3 nodes"),
        "{}",
        p[0]
    );
    assert!(render(&load(values().set("apiReplicas", 4), facts(3, 2))).is_ok());
}

#[test]
fn a_template_without_host_network_is_refused_naming_template_and_workload() {
    let original = Bundle::embedded();
    let text = original.file("manifests/40-worker.yaml.tera").unwrap();
    let broken = text.replace("      hostNetwork: true\n", "");
    assert_ne!(broken, text);
    let bundle = original
        .clone()
        .with_file("manifests/40-worker.yaml.tera", &broken);
    let app = App::load(bundle, values(), facts(3, 0)).unwrap();
    let p = problems(render(&app).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("templates/app/manifests/40-worker.yaml.tera: Deployment appliance/worker: the pod template lacks `hostNetwork: true`"),
        "{}",
        p[0]
    );
}

#[test]
fn a_template_with_a_port_but_no_probe_is_refused() {
    let original = Bundle::embedded();
    let text = original.file("manifests/30-api.yaml.tera").unwrap();
    let start = text.find("          livenessProbe:").unwrap();
    let end = text.find("          resources:").unwrap();
    let broken = format!("{}{}", &text[..start], &text[end..]);
    let app = App::load(
        original.with_file("manifests/30-api.yaml.tera", &broken),
        values(),
        facts(3, 0),
    )
    .unwrap();
    let p = problems(render(&app).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("Deployment appliance/api: container api: has ports but no livenessProbe"),
        "{}",
        p[0]
    );
}

#[test]
fn a_workload_missing_from_the_metadata_is_refused() {
    let original = Bundle::embedded();
    let spec = original
        .file(APP_SPEC_FILE)
        .unwrap()
        .replace("  - Deployment/worker\n", "");
    let app = App::load(
        original.with_file(APP_SPEC_FILE, &spec),
        values(),
        facts(3, 0),
    )
    .unwrap();
    let p = problems(render(&app).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("Deployment appliance/worker: not listed under `workloads`"),
        "{}",
        p[0]
    );
}

#[test]
fn template_errors_name_the_file_and_secret_values_stay_out_of_templates() {
    let original = Bundle::embedded();
    let broken = format!(
        "{}\n# {{{{ values.nope }}}}\n",
        original.file("manifests/30-api.yaml.tera").unwrap()
    );
    let app = App::load(
        original
            .clone()
            .with_file("manifests/30-api.yaml.tera", &broken),
        values(),
        facts(3, 0),
    )
    .unwrap();
    let e = render(&app).unwrap_err().to_string();
    assert!(
        e.starts_with("templates/app/manifests/30-api.yaml.tera: "),
        "{e}"
    );
    assert!(e.contains("values.nope"), "{e}");
    let leaky = format!(
        "{}\n# {{{{ values.adminPassword }}}}\n",
        original.file("manifests/30-api.yaml.tera").unwrap()
    );
    let v = values().set_secret("adminPassword", Secret::new("do-not-render-me"));
    let app = App::load(
        original.with_file("manifests/30-api.yaml.tera", &leaky),
        v,
        facts(3, 0),
    )
    .unwrap();
    let e = render(&app).unwrap_err().to_string();
    assert!(
        e.contains("`adminPassword` is a secret value: templates never see it"),
        "{e}"
    );
    assert!(!e.contains("do-not-render-me"));
}

fn changed(a: &Manifests, b: &Manifests) -> Vec<String> {
    let mut out = Vec::new();
    for m in &b.items {
        match a.find(m.kind(), m.namespace(), m.name()) {
            Some(old) if old.object == m.object => {}
            _ => out.push(m.describe()),
        }
    }
    out
}

#[test]
fn a_changed_value_changes_only_the_objects_that_use_it() {
    let f = facts(3, 0);
    let base = render(&load(values(), f.clone())).unwrap();
    let same = render(&load(values(), f.clone())).unwrap();
    assert!(
        changed(&base, &same).is_empty(),
        "rendering is deterministic"
    );
    let more = render(&load(values().set("apiReplicas", 3), f.clone())).unwrap();
    assert_eq!(changed(&base, &more), vec!["Deployment appliance/api"]);
    let port = render(&load(values().set("apiPort", 8082), f.clone())).unwrap();
    assert_eq!(
        changed(&base, &port),
        vec![
            "ConfigMap appliance/gateway-nginx",
            "Service appliance/api",
            "Deployment appliance/api",
            "Deployment appliance/worker",
            "DaemonSet appliance/gateway",
        ]
    );
    // A new version of the generated Secret (the admin password changed) rolls the pods
    // that read it: the worker (api-token) and the gateway (admin-password), not the API.
    let app = load(values(), f);
    let mut g = Generated::placeholder(app.spec(), "1");
    g.versions.insert("app-secrets".into(), "2".into());
    let rotated = app.render(&g).unwrap();
    assert_eq!(
        changed(&base, &rotated),
        vec!["Deployment appliance/worker", "DaemonSet appliance/gateway"]
    );
}

#[test]
fn cluster_facts_come_from_node_objects() {
    let node = |name: &str, ip: &str, server: bool| -> Node {
        let mut labels = serde_json::Map::new();
        if server {
            labels.insert(CONTROL_PLANE_LABEL.into(), "true".into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    };
    let f = ClusterFacts::from_nodes(
        &[
            node("srv2", "10.0.0.12", true),
            node("agt1", "10.0.0.21", false),
            node("srv1", "10.0.0.11", true),
        ],
        "10.43.0.0/16".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(
        f.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["agt1", "srv1", "srv2"]
    );
    assert_eq!(f.servers().count(), 2);
    assert_eq!(f.dns_ip().unwrap().to_string(), "10.43.0.10");
    assert_eq!(f.kubernetes_ip().unwrap().to_string(), "10.43.0.1");
    let bad: Node = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let e = ClusterFacts::from_nodes(&[bad], "10.43.0.0/16".parse().unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node x reports no InternalIP address (saw None)"
    );
}

/// `values.<name>` references in a template text.
fn value_references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("values.") {
        let tail = &rest[i + 7..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let before = rest[..i].chars().last();
        if !name.is_empty() && before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '.') {
            out.insert(name);
        }
        rest = tail;
    }
    out
}

#[test]
fn every_declared_value_is_used_and_every_used_value_is_declared() {
    let decl = crate::config::app::Declaration::embedded().unwrap();
    let bundle = Bundle::embedded();
    let mut used = BTreeSet::new();
    for (name, text) in bundle.files() {
        if name.ends_with(".tera") {
            used.extend(value_references(text));
        }
    }
    let app = load(values(), facts(3, 0));
    let from_value: BTreeSet<String> = app
        .spec()
        .secrets
        .iter()
        .flat_map(|s| s.keys.iter().filter_map(|k| k.from_value.clone()))
        .collect();
    for v in &decl.values {
        if v.is_secret() {
            assert!(
                from_value.contains(&v.name),
                "secret value {} reaches no generated Secret",
                v.name
            );
            assert!(
                !used.contains(&v.name),
                "secret value {} is referenced by a template",
                v.name
            );
        } else {
            assert!(
                used.contains(&v.name),
                "value {} is declared but no template uses it",
                v.name
            );
        }
    }
    for name in used.iter().chain(from_value.iter()) {
        assert!(
            decl.get(name).is_some(),
            "templates use {name}, which values.yaml does not declare"
        );
    }
}

#[test]
fn the_plans_values_render_with_their_declared_defaults() {
    use crate::config::app::AppValue;
    let decl = crate::config::app::Declaration::embedded().unwrap();
    let mut map = std::collections::BTreeMap::new();
    for v in &decl.values {
        if let Some(d) = v.default_text() {
            map.insert(v.name.clone(), v.check_text(&d).unwrap());
        }
    }
    map.insert(
        "adminPassword".into(),
        AppValue::Secret(Secret::new("given-admin-password")),
    );
    let plan_values = crate::config::plan::AppValues(map);
    let values = Values::from(&plan_values);
    assert_eq!(values.plain()["gatewayPort"], json!(8443));
    assert_eq!(
        values.plain()["hostname"],
        json!("appliance.example.internal")
    );
    assert!(!values.plain().contains_key("adminPassword"));
    assert_eq!(
        values.secret("adminPassword").unwrap().expose(),
        "given-admin-password"
    );
    let app = load(values, facts(3, 0));
    let m = render(&app).unwrap();
    assert_eq!(m, render(&load(self::values(), facts(3, 0))).unwrap());
}

#[test]
fn host_ports_include_the_ports_the_templates_fix() {
    let app = load(values(), facts(3, 0));
    let ports: Vec<String> = app
        .host_ports()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        vec![
            "1053/TCP", "1053/UDP", "1054/TCP", "1055/TCP", "7379/TCP", "7380/TCP", "8081/TCP",
            "8090/TCP", "8443/TCP"
        ]
    );
}
