//! The manifests under templates/: they render, parse as Kubernetes objects, and the
//! appliance's policies compile to the flows the appliance needs (golden).
#![allow(clippy::unwrap_used)]

use installer_enforcer::cgroup::CgroupRef;
use installer_enforcer::compile::{Cgroups, compile};
use installer_enforcer::model::{Config, Mode, Snapshot};
use serde_json::{Value, json};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn render(rel: &str, ctx: Value) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    let ctx = tera::Context::from_value(ctx).unwrap();
    let out = tera::Tera::one_off(&text, &ctx, false).unwrap_or_else(|e| panic!("{rel}: {e:?}"));
    out.split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{rel}: {e}\n{d}")))
        .collect()
}

fn app_ctx() -> Value {
    json!({
        "app": {"name": "appliance", "namespace": "appliance"},
        "values": {"gatewayPort": 8443, "apiPort": 8081, "storePort": 7379},
        "cluster": {"servers": [{"name": "n1"}, {"name": "n2"}], "domain": "cluster.local"},
    })
}

#[test]
fn enforcer_daemonset_is_least_privilege() {
    let docs = render(
        "templates/enforcer/enforcer.yaml.tera",
        json!({"enforcer": {
        "namespace": "kube-system", "image": "localhost/installer-enforcer:0.1.0", "mode": "enforce",
        "sshPort": 2222, "extraTcpPorts": [1053, 1054, 1055], "extraUdpPorts": [1053],
        "taint": "installer/enforcer-not-ready"}}),
    );
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet"
        ]
    );
    let ds: k8s_openapi::api::apps::v1::DaemonSet =
        serde_json::from_value(docs[3].clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tol = pod.tolerations.unwrap();
    assert!(
        tol.iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    let c = &pod.containers[0];
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let vols = pod.volumes.unwrap();
    assert_eq!(vols.len(), 1, "one host path only");
    assert_eq!(vols[0].host_path.as_ref().unwrap().path, "/sys/fs/cgroup");
    assert_eq!(c.volume_mounts.as_ref().unwrap()[0].read_only, Some(true));
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert!(
        env.contains(&("ENFORCER_EXTRA_TCP_PORTS".into(), "1053,1054,1055".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&(
            "ENFORCER_REMOVE_TAINT".into(),
            "installer/enforcer-not-ready".into()
        )),
        "{env:?}"
    );
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(docs[1].clone()).unwrap();
    // Read-only, except patching nodes (its own node's taint; RBAC cannot say "own").
    for r in role.rules.unwrap() {
        let res = r.resources.clone().unwrap_or_default();
        if r.verbs == ["patch"] {
            assert_eq!(res, ["nodes"], "patch on nodes only");
        } else {
            assert_eq!(r.verbs, ["get", "list", "watch"], "read-only RBAC: {res:?}");
        }
    }
}

fn pod(ns: &str, name: &str, node: &str, app: &str, ports: &[(&str, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, pr)| json!({"name": n, "containerPort": p, "protocol": pr}))
        .collect();
    let label = if ns == "kube-system" {
        "k8s-app"
    } else {
        "app.kubernetes.io/name"
    };
    json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": {label: app}},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "qosClass": "Burstable"}
    })
}

#[test]
fn appliance_policies_compile_to_its_flows() {
    let policies = render(
        "templates/app/policies/network-policies.yaml.tera",
        app_ctx(),
    );
    assert_eq!(policies.len(), 6);
    let node = |n: &str, ip: &str| json!({"metadata": {"name": n}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
    let snap: Snapshot = serde_json::from_value(json!({
        "pods": [
            pod("appliance", "store-0", "n1", "store", &[("client", 7379, "TCP"), ("peer", 7380, "TCP")]),
            pod("appliance", "store-1", "n2", "store", &[("client", 7379, "TCP"), ("peer", 7380, "TCP")]),
            pod("appliance", "api-0", "n1", "api", &[("http", 8081, "TCP")]),
            pod("appliance", "api-1", "n2", "api", &[("http", 8081, "TCP")]),
            pod("appliance", "gateway-n1", "n1", "gateway", &[("https", 8443, "TCP")]),
            pod("appliance", "gateway-n2", "n2", "gateway", &[("https", 8443, "TCP")]),
            pod("appliance", "worker-0", "n2", "worker", &[("health", 8090, "TCP")]),
            pod("kube-system", "coredns-n1", "n1", "kube-dns", &[("dns", 1053, "UDP"), ("dns-tcp", 1053, "TCP")]),
            pod("kube-system", "coredns-n2", "n2", "kube-dns", &[("dns", 1053, "UDP"), ("dns-tcp", 1053, "TCP")]),
        ],
        "namespaces": [{"metadata": {"name": "appliance"}}, {"metadata": {"name": "kube-system"}}],
        "policies": policies,
        "nodes": [node("n1", "10.0.0.1"), node("n2", "10.0.0.2")],
    }))
    .unwrap();
    let mut cg = Cgroups {
        roots: vec![CgroupRef {
            nft_path: "kubepods.slice".into(),
            level: 1,
            inode: 1,
        }],
        ..Cgroups::default()
    };
    for p in snap
        .pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("n1"))
    {
        let uid = p.metadata.uid.clone().unwrap();
        let path = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        );
        cg.pods.insert(
            uid,
            CgroupRef {
                nft_path: path,
                level: 3,
                inode: 2,
            },
        );
    }
    let rs = compile(
        &snap,
        &Config::new("n1", Mode::Enforce, "installer_enforcer", &[], &[]),
        &cg,
    );
    assert!(rs.warnings.is_empty(), "{:?}", rs.warnings);
    // The gateway admits anyone on its port.
    assert!(
        rs.text
            .contains("tcp dport 8443 accept comment \"appliance/gateway ingress[0]\""),
        "{}",
        rs.text
    );
    insta::assert_snapshot!(rs.text);
}
