#![allow(clippy::unwrap_used)] // test code

use super::*;
use std::collections::BTreeMap;

fn cluster() -> ClusterSettings {
    ClusterSettings {
        tls_san: [
            "10.0.0.11",
            "10.0.0.12",
            "10.0.0.13",
            "srv1",
            "srv2",
            "srv3",
            "srv1",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterSettings::default()
    }
}

fn node(name: &str, ip: &str) -> NodeSettings {
    NodeSettings {
        node_name: name.into(),
        node_ip: ip.parse().unwrap(),
    }
}

fn parse(yaml: &str) -> BTreeMap<String, serde_json::Value> {
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn first_server_config() {
    let f = render_config(
        &NodeRole::FirstServer,
        &cluster(),
        &node("srv1", "10.0.0.11"),
    )
    .unwrap();
    assert_eq!(f.path, "/etc/rancher/k3s/config.yaml");
    assert_eq!(f.mode, 0o600);
    insta::assert_snapshot!(f.content);
    let c = parse(&f.content);
    assert_eq!(c["cluster-init"], true);
    assert!(!c.contains_key("server"));
    assert_eq!(c["flannel-backend"], "none");
    assert_eq!(c["write-kubeconfig-mode"], "0600");
    assert_eq!(
        c["tls-san"].as_array().unwrap().len(),
        6,
        "duplicates removed"
    );
}

#[test]
fn joining_server_config() {
    let role = NodeRole::JoiningServer {
        server_url: server_url("10.0.0.11"),
    };
    let f = render_config(&role, &cluster(), &node("srv2", "10.0.0.12")).unwrap();
    insta::assert_snapshot!(f.content);
    let c = parse(&f.content);
    assert_eq!(c["server"], "https://10.0.0.11:6443");
    assert!(!c.contains_key("cluster-init"));
    assert_eq!(c["token-file"], "/etc/rancher/k3s/server-token");
}

#[test]
fn servers_share_every_critical_value() {
    let first = parse(
        &render_config(
            &NodeRole::FirstServer,
            &cluster(),
            &node("srv1", "10.0.0.11"),
        )
        .unwrap()
        .content,
    );
    let join = parse(
        &render_config(
            &NodeRole::JoiningServer {
                server_url: server_url("10.0.0.11"),
            },
            &cluster(),
            &node("srv3", "10.0.0.13"),
        )
        .unwrap()
        .content,
    );
    for key in [
        "flannel-backend",
        "disable-network-policy",
        "disable-helm-controller",
        "disable",
        "cluster-cidr",
        "service-cidr",
        "tls-san",
        "agent-token-file",
    ] {
        assert_eq!(first[key], join[key], "{key}");
    }
}

#[test]
fn agent_config_has_agent_keys_only() {
    let role = NodeRole::Agent {
        server_url: server_url("10.0.0.11"),
    };
    let mut cl = cluster();
    cl.allow_cgroup_v1();
    cl.allow_cgroup_v1();
    cl.selinux = true;
    cl.prefer_bundled_bin = true;
    let f = render_config(&role, &cl, &node("agt1", "10.0.0.21")).unwrap();
    insta::assert_snapshot!(f.content);
    let c = parse(&f.content);
    let keys: Vec<&str> = c.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "kubelet-arg",
            "node-ip",
            "node-name",
            "prefer-bundled-bin",
            "selinux",
            "server",
            "token-file"
        ]
    );
    assert_eq!(c["token-file"], "/etc/rancher/k3s/agent-token");
    assert_eq!(c["kubelet-arg"], serde_json::json!(["fail-cgroupv1=false"]));
    let table = flags::table();
    for k in c.keys() {
        assert!(
            table.lookup(k).unwrap().scope.allows(K3sCommand::Agent),
            "{k} is not an agent flag"
        );
    }
}

#[test]
fn every_role_and_option_combination_passes_the_flag_check() {
    // render_config validates internally; this drives it through every branch of the template.
    let roles = [
        NodeRole::FirstServer,
        NodeRole::JoiningServer {
            server_url: server_url("srv1.example"),
        },
        NodeRole::Agent {
            server_url: server_url("fd00::11"),
        },
    ];
    for role in &roles {
        for bits in 0..8u8 {
            let mut cl = cluster();
            if bits & 1 != 0 {
                cl.allow_cgroup_v1();
            }
            cl.selinux = bits & 2 != 0;
            cl.prefer_bundled_bin = bits & 4 != 0;
            let f = render_config(role, &cl, &node("n1", "10.0.0.5")).unwrap();
            assert!(flags::validate_config_yaml(role.command(), &f.content).is_ok());
        }
    }
}

#[test]
fn an_agent_config_with_a_server_key_would_be_caught() {
    // The safety net itself: take a real agent render and add a server-only key.
    let role = NodeRole::Agent {
        server_url: server_url("10.0.0.11"),
    };
    let f = render_config(&role, &cluster(), &node("agt1", "10.0.0.21")).unwrap();
    let tampered = format!("{}flannel-backend: \"none\"\n", f.content);
    let problems = flags::validate_config_yaml(K3sCommand::Agent, &tampered).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "flannel-backend");
}

#[test]
fn ipv6_server_urls_get_brackets() {
    assert_eq!(server_url("fd00::11"), "https://[fd00::11]:6443");
    assert_eq!(server_url("srv1"), "https://srv1:6443");
}

#[test]
fn cluster_dns_is_the_tenth_service_address() {
    let cl = ClusterSettings::default();
    assert_eq!(cl.cluster_dns().unwrap().to_string(), "10.43.0.10");
    let tiny = ClusterSettings {
        service_cidr: "10.96.0.0/29".parse().unwrap(),
        ..ClusterSettings::default()
    };
    assert_eq!(tiny.cluster_dns(), None);
}

#[test]
fn bad_inputs_are_refused_before_rendering() {
    let err = render_config(
        &NodeRole::FirstServer,
        &cluster(),
        &node("Srv_1", "10.0.0.11"),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("node-name:"), "{err}");

    let err = render_config(
        &NodeRole::Agent {
            server_url: "http://10.0.0.11:6443".into(),
        },
        &cluster(),
        &node("a", "10.0.0.2"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");

    let mut cl = cluster();
    cl.kubelet_args.push("--max-pods=200".into());
    let err = render_config(&NodeRole::FirstServer, &cl, &node("a", "10.0.0.2")).unwrap_err();
    assert!(err.to_string().starts_with("kubelet-arg:"), "{err}");

    let cl = ClusterSettings {
        service_cidr: "10.42.128.0/20".parse().unwrap(),
        ..cluster()
    };
    let err = render_config(&NodeRole::FirstServer, &cl, &node("a", "10.0.0.2")).unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");
}

#[test]
fn yaml_special_values_are_quoted_not_interpreted() {
    // A node name YAML would read as a number or bool stays a string.
    let f = render_config(
        &NodeRole::FirstServer,
        &cluster(),
        &node("1e3", "10.0.0.11"),
    )
    .unwrap();
    assert_eq!(parse(&f.content)["node-name"], "1e3");
}

#[test]
fn every_role_registers_with_the_enforcer_taint_and_a_bad_taint_is_refused() {
    let cl = ClusterSettings {
        node_taints: vec![ENFORCER_TAINT_SPEC.to_owned()],
        ..cluster()
    };
    let url = server_url("10.0.0.11");
    for role in [
        NodeRole::FirstServer,
        NodeRole::JoiningServer {
            server_url: url.clone(),
        },
        NodeRole::Agent { server_url: url },
    ] {
        // render_config checks the result against the k3s flag table for the role's command.
        let f = render_config(&role, &cl, &node("n1", "10.0.0.11")).unwrap();
        let c = parse(&f.content);
        assert_eq!(
            c["node-taint"],
            serde_json::json!(["installer/enforcer-not-ready=true:NoSchedule"]),
            "{}",
            f.content
        );
    }
    let bad = ClusterSettings {
        node_taints: vec!["installer/x=true:Sometimes".into()],
        ..cluster()
    };
    let err = render_config(&NodeRole::FirstServer, &bad, &node("n1", "10.0.0.11")).unwrap_err();
    assert!(err.to_string().contains("node-taint"), "{err}");
}
