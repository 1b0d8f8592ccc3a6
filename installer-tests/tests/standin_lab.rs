//! The stand-in on real lab nodes under systemd, installed the way the installer installs k3s:
//! `/usr/local/bin/k3s`, `/etc/rancher/k3s/config.yaml` with token files, `k3s.service`
//! (`Type=notify`) and `k3s-agent.service`. Shows that `systemctl start` blocks until `READY=1`,
//! that a second server joins over the lab network, that an agent with a server-only key fails in
//! a restart loop with k3s's message, that nodes turn Ready once a CNI config lands, that a
//! hostNetwork pod's probe port is reachable from the workstation and survives
//! `systemctl restart k3s` (`KillMode=process`), `/db/info`, `k3s etcd-snapshot save`, and a lost
//! node. One test function (a lab of one `LAB_ID` at a time). Needs root and the lab; skipped with
//! the reason otherwise (failed under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod standin_util;

use std::time::{Duration, Instant};

use installer_tests::images::{ArchiveOptions, write_archive};
use installer_tests::lab::{Lab, Node};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node as KNode;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use standin_util::*;

const UNIT: &str = "[Unit]
Description=Lightweight Kubernetes
Wants=network-online.target
After=network-online.target
[Install]
WantedBy=multi-user.target
[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=/usr/local/bin/k3s {cmd}
";

fn sh(lab: &Lab, node: &Node, cmd: &str) -> String {
    lab.ssh_ok(node, cmd)
        .unwrap_or_else(|e| panic!("{}: {cmd}: {e:#}", node.name))
}

fn put(lab: &Lab, node: &Node, path: &str, content: &str, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, content).unwrap();
    sh(lab, node, &format!("mkdir -p $(dirname {path})"));
    lab.cp(&local, node, path).unwrap();
    sh(lab, node, &format!("chmod {mode} {path}"));
}

fn server_config(node: &Node, all: &[&Node], first: Option<&Node>) -> String {
    let sans: Vec<String> = all
        .iter()
        .flat_map(|n| [n.addr.to_string(), n.name.clone()])
        .collect();
    let mut s = String::new();
    match first {
        None => s.push_str("cluster-init: true\n"),
        Some(f) => s.push_str(&format!("server: https://{}:6443\n", f.addr)),
    }
    s.push_str(&format!(
        "token-file: /etc/rancher/k3s/server-token\nnode-name: {}\nnode-ip: {}\ntls-san: [{}]\nflannel-backend: none\ndisable-network-policy: true\ndisable-helm-controller: true\ndisable: [coredns, servicelb, traefik, local-storage, metrics-server]\ncluster-cidr: 10.42.0.0/16\nservice-cidr: 10.43.0.0/16\nwrite-kubeconfig-mode: \"0600\"\n",
        node.name,
        node.addr,
        sans.join(", ")
    ));
    s
}

async fn wait_http_200(url: &str, timeout: Duration) -> bool {
    let http =
        installer_tests::standin::client::insecure_with_timeout(Duration::from_secs(2)).unwrap();
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Ok(r) = http.get(url).send().await
            && r.status().as_u16() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

#[test]
fn standin_under_systemd_in_the_lab() {
    let Some(lab) = installer_tests::lab_or_skip!(3) else {
        return;
    };
    installer_tests::standin::client::install_crypto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nodes: Vec<&Node> = lab.nodes().iter().collect();
    let (n1, n2, n3) = (nodes[0], nodes[1], nodes[2]);
    for n in &nodes {
        lab.cp(&bin(), n, "/usr/local/bin/k3s").unwrap();
        sh(&lab, n, "chmod 0755 /usr/local/bin/k3s");
        // The test's knobs: a realistic start-up time, a short node grace period.
        put(
            &lab,
            n,
            "/etc/k3s-standin/faults.yaml",
            "startup-delay: 2s\nlearner-promotion-delay: 1s\nnode-monitor-grace-period: 6s\n",
            "0644",
        );
    }
    assert!(sh(&lab, n1, "k3s --version").starts_with("k3s version v1.36.2+k3s1"));

    // First server: systemctl start blocks until READY=1 (Type=notify).
    put(
        &lab,
        n1,
        "/etc/rancher/k3s/server-token",
        "lab-server-token-0123456789abcdef\n",
        "0600",
    );
    put(
        &lab,
        n1,
        "/etc/rancher/k3s/config.yaml",
        &server_config(n1, &nodes[..2], None),
        "0600",
    );
    put(
        &lab,
        n1,
        "/etc/systemd/system/k3s.service",
        &UNIT.replace("{cmd}", "server"),
        "0644",
    );
    let t = Instant::now();
    sh(&lab, n1, "systemctl daemon-reload && systemctl start k3s");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "systemctl start returned after {took:?}, before the API was ready"
    );
    assert_eq!(sh(&lab, n1, "systemctl is-active k3s").trim(), "active");
    let journal = sh(&lab, n1, "journalctl -u k3s --no-pager -o cat");
    assert!(
        journal.contains("level=info msg=\"k3s is up and running\""),
        "{journal}"
    );
    let info = sh(&lab, n1, "curl -sk https://127.0.0.1:6443/db/info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["members"].as_array().unwrap().len(), 1, "{info}");
    let token = sh(&lab, n1, "cat /var/lib/rancher/k3s/server/token");
    assert!(
        token.starts_with("K10")
            && token
                .trim_end()
                .ends_with("::server:lab-server-token-0123456789abcdef")
    );

    // Second server joins over the lab network.
    put(&lab, n2, "/etc/rancher/k3s/server-token", &token, "0600");
    put(
        &lab,
        n2,
        "/etc/rancher/k3s/config.yaml",
        &server_config(n2, &nodes[..2], Some(n1)),
        "0600",
    );
    put(
        &lab,
        n2,
        "/etc/systemd/system/k3s.service",
        &UNIT.replace("{cmd}", "server"),
        "0644",
    );
    sh(
        &lab,
        n2,
        "systemctl daemon-reload && systemctl start --no-block k3s",
    );
    let t = Instant::now();
    while sh(&lab, n2, "systemctl is-active k3s || true").trim() != "active" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{}",
            sh(&lab, n2, "journalctl -u k3s --no-pager -o cat")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let info: serde_json::Value =
        serde_json::from_str(&sh(&lab, n1, "curl -sk https://127.0.0.1:6443/db/info")).unwrap();
    assert_eq!(info["members"].as_array().unwrap().len(), 2, "{info}");

    // An agent with a server-only key: k3s's message, and systemd keeps restarting it.
    let agent_token = sh(&lab, n1, "cat /var/lib/rancher/k3s/server/agent-token");
    put(
        &lab,
        n3,
        "/etc/rancher/k3s/agent-token",
        &agent_token,
        "0600",
    );
    let agent_cfg = format!(
        "server: https://{}:6443\ntoken-file: /etc/rancher/k3s/agent-token\nnode-name: {}\nnode-ip: {}\n",
        n1.addr, n3.name, n3.addr
    );
    put(
        &lab,
        n3,
        "/etc/rancher/k3s/config.yaml",
        &format!("{agent_cfg}disable: [traefik]\n"),
        "0600",
    );
    put(
        &lab,
        n3,
        "/etc/systemd/system/k3s-agent.service",
        &UNIT.replace("{cmd}", "agent"),
        "0644",
    );
    sh(
        &lab,
        n3,
        "systemctl daemon-reload && systemctl start --no-block k3s-agent",
    );
    std::thread::sleep(Duration::from_secs(7));
    let j = sh(&lab, n3, "journalctl -u k3s-agent --no-pager -o cat");
    assert!(
        j.contains("Incorrect Usage: flag provided but not defined: -disable"),
        "{j}"
    );
    assert!(
        j.matches("flag provided but not defined: -disable").count() >= 2,
        "restarted by systemd: {j}"
    );
    put(&lab, n3, "/etc/rancher/k3s/config.yaml", &agent_cfg, "0600");
    sh(&lab, n3, "systemctl restart k3s-agent");
    assert_eq!(
        sh(&lab, n3, "systemctl is-active k3s-agent").trim(),
        "active"
    );

    rt.block_on(async {
        // The installer's view: the kubeconfig from srv1, pointed at its lab address.
        let kc = sh(&lab, n1, "cat /etc/rancher/k3s/k3s.yaml").replace("https://127.0.0.1:6443", &format!("https://{}:6443", n1.addr));
        let kc = kube::config::Kubeconfig::from_yaml(&kc).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let c = kube::Client::try_from(cfg).unwrap();
        let knodes: Api<KNode> = Api::all(c.clone());
        wait_for("3 nodes registered", Duration::from_secs(60), || {
            let knodes = knodes.clone();
            async move { knodes.list(&ListParams::default()).await.ok().filter(|l| l.items.len() == 3) }
        })
        .await;
        // Nodes go Ready once the installer writes the CNI config on each.
        for n in [n1, n2, n3] {
            let cidr = wait_for("podCIDR", Duration::from_secs(30), || {
                let knodes = knodes.clone();
                let name = n.name.clone();
                async move { knodes.get(&name).await.ok()?.spec?.pod_cidr }
            })
            .await;
            put(&lab, n, "/etc/cni/net.d/10-local.conflist", &conflist(&cidr), "0644");
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("app.tar.zst");
            write_archive(&archive, &["docker.io/rancher/mirrored-pause:3.6", "registry.example/app/api:1.0"], &ArchiveOptions::default()).unwrap();
            sh(&lab, n, "mkdir -p /var/lib/rancher/k3s/agent/images");
            lab.cp(&archive, n, "/var/lib/rancher/k3s/agent/images/app.tar.zst").unwrap();
        }
        wait_for("all nodes Ready", Duration::from_secs(60), || {
            let knodes = knodes.clone();
            async move {
                let l = knodes.list(&ListParams::default()).await.ok()?;
                l.items
                    .iter()
                    .all(|n| n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
                    .then_some(())
            }
        })
        .await;
        // A hostNetwork DaemonSet: its probe port answers on every node, from the workstation.
        let ds: DaemonSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "api", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {"metadata": {"labels": {"app": "api"}}, "spec": {
                "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
                "containers": [{"name": "api", "image": "registry.example/app/api:1.0", "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}},
        }))
        .unwrap();
        let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
        dss.patch("api", &PatchParams::apply("installer").force(), &Patch::Apply(&ds)).await.unwrap();
        wait_for("daemonset ready on 3 nodes", Duration::from_secs(60), || {
            let dss = dss.clone();
            async move {
                let s = dss.get("api").await.ok()?.status?;
                (s.desired_number_scheduled == 3 && s.number_ready == 3).then_some(())
            }
        })
        .await;
        for n in [n1, n2, n3] {
            assert!(wait_http_200(&format!("http://{}:8080/healthz", n.addr), Duration::from_secs(10)).await, "{}", n.name);
        }
        // KillMode=process: restarting k3s leaves the container serving.
        sh(&lab, n2, "systemctl restart --no-block k3s");
        assert!(wait_http_200(&format!("http://{}:8080/healthz", n2.addr), Duration::from_secs(3)).await);
        // Lose the agent: its node turns Unknown with the unreachable taint.
        put(&lab, n3, "/etc/k3s-standin/faults.yaml", "lose-node: true\n", "0644");
        let name = n3.name.clone();
        wait_for("agent unreachable", Duration::from_secs(60), || {
            let knodes = knodes.clone();
            let name = name.clone();
            async move {
                let n = knodes.get(&name).await.ok()?;
                n.spec?.taints?.iter().any(|t| t.key == "node.kubernetes.io/unreachable").then_some(())
            }
        })
        .await;
    });
    let out = sh(&lab, n1, "k3s etcd-snapshot save --name pre-upgrade 2>&1");
    assert!(
        out.contains("Snapshot pre-upgrade-node1-") && out.contains("saved."),
        "{out}"
    );
    assert!(
        sh(&lab, n1, "k3s etcd-snapshot ls")
            .contains("file:///var/lib/rancher/k3s/server/db/snapshots/pre-upgrade-node1-")
    );
    lab.down().unwrap();
}
