//! Several stand-in nodes on loopback forming a cluster: server joins (one learner at a time),
//! token and CA-hash checks, critical settings, duplicate names, agents, faults, snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod standin_util;

use std::process::Command;
use std::time::Duration;

use installer_tests::standin::paths::ROOT_ENV;
use installer_tests::standin::testing::LocalNode;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use standin_util::*;

const JOIN_SERVER: &str = "server: {server}
token: {token}
node-name: {name}
node-ip: {ip}
bind-address: {ip}
flannel-backend: none
disable-network-policy: true
disable-helm-controller: true
disable: [coredns, servicelb, traefik, local-storage, metrics-server]
";

const AGENT: &str = "server: {server}
token: {token}
node-name: {name}
node-ip: {ip}
";

fn token_of(n: &LocalNode) -> String {
    n.read("/var/lib/rancher/k3s/server/token")
        .unwrap()
        .trim()
        .to_string()
}

fn joiner(
    template: &str,
    name: &str,
    cmd: &str,
    first: &LocalNode,
    token: &str,
    faults: Option<&str>,
) -> LocalNode {
    let cfg = template
        .replace("{server}", &first.url())
        .replace("{token}", token);
    LocalNode::prepare(&bin(), name, cmd, &cfg, faults)
}

async fn node_names(c: &kube::Client) -> Vec<String> {
    let nodes: Api<Node> = Api::all(c.clone());
    let mut v: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn db_info(n: &LocalNode) -> serde_json::Value {
    let http = installer_tests::standin::client::insecure().unwrap();
    http.get(format!("{}/db/info", n.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_joins_and_serves_the_same_cluster() {
    let srv1 = first_server("srv1", "");
    let mut srv2 = joiner(JOIN_SERVER, "srv2", "server", &srv1, &token_of(&srv1), None);
    srv2.start();
    srv2.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    assert!(srv2.notified_ready());
    let logs = srv2.logs();
    assert!(
        logs.contains("Managed etcd cluster not yet initialized"),
        "{logs}"
    );
    let info = db_info(&srv1).await;
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{info}");
    assert!(
        members.iter().all(|m| m.get("isLearner").is_none()),
        "{info}"
    );
    // Real etcd members: `<node>-<8 hex>`, each with an etcd data dir of its own.
    let mut names: Vec<&str> = Vec::new();
    for m in members {
        let name = m["name"].as_str().unwrap();
        let (prefix, hex) = name.rsplit_once('-').unwrap();
        assert!(
            hex.len() == 8 && u32::from_str_radix(hex, 16).is_ok(),
            "{info}"
        );
        names.push(prefix);
        assert!(
            m["peerURLs"][0].as_str().unwrap().ends_with(":2380"),
            "{info}"
        );
    }
    names.sort();
    assert_eq!(names, ["srv1", "srv2"], "{info}");
    for n in [&srv1, &srv2] {
        let wal = n.path("/var/lib/rancher/k3s/server/db/etcd/member/wal");
        assert!(wal.is_dir(), "{} missing", wal.display());
    }
    // srv2's API (its own kubeconfig, its own certificate SANs) shows the whole cluster.
    let c2 = client(&srv2).await;
    let names = wait_for("both nodes", Duration::from_secs(20), || {
        let c2 = c2.clone();
        async move { Some(node_names(&c2).await).filter(|n| n.len() == 2) }
    })
    .await;
    assert_eq!(names, vec!["srv1".to_string(), "srv2".to_string()]);
    // /db/info from srv2's loopback is forwarded to the cluster and shows the same members.
    assert_eq!(db_info(&srv2).await["members"].as_array().unwrap().len(), 2);
    // Same CA everywhere: the token written on srv2 has the same hash.
    assert_eq!(token_of(&srv2), token_of(&srv1));
    // A restart of srv2 is a restart, not a new join (server: is ignored once initialized).
    srv2.stop();
    srv2.start();
    srv2.wait_log(
        "Managed etcd cluster bootstrap already complete and initialized",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(db_info(&srv1).await["members"].as_array().unwrap().len(), 2);
    // Deleting a server's Node removes its etcd member (pkg/etcd/member_controller.go); with
    // two members both must be up for the removal to reach quorum. srv2's kubelet is stopped
    // first (lose-node) so that it does not register its Node again before the removal.
    srv2.write("/etc/k3s-standin/faults.yaml", "lose-node: true\n");
    srv2.wait_log("node lost", Duration::from_secs(20)).unwrap();
    let c1 = client(&srv1).await;
    Api::<Node>::all(c1)
        .delete("srv2", &Default::default())
        .await
        .unwrap();
    let left = wait_for("srv2's member removed", Duration::from_secs(20), || {
        let srv1 = &srv1;
        async move {
            let info = db_info(srv1).await;
            let m = info["members"].as_array().cloned().unwrap_or_default();
            (m.len() == 1).then_some(m)
        }
    })
    .await;
    assert!(left[0]["name"].as_str().unwrap().starts_with("srv1-"));
    srv2.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_joining_together_wait_for_the_learner_to_be_promoted() {
    let mut srv1 = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        FIRST_SERVER,
        Some("startup-delay: 0\nlearner-promotion-delay: 4s\n"),
    );
    srv1.start();
    srv1.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    let tok = token_of(&srv1);
    let mut srv2 = joiner(JOIN_SERVER, "srv2", "server", &srv1, &tok, None);
    let mut srv3 = joiner(JOIN_SERVER, "srv3", "server", &srv1, &tok, None);
    srv2.start();
    srv3.start();
    srv2.wait_log("k3s is up and running", Duration::from_secs(40))
        .unwrap();
    srv3.wait_log("k3s is up and running", Duration::from_secs(40))
        .unwrap();
    let waited = [&srv2, &srv3].iter().any(|n| {
        n.logs()
            .contains("Waiting for other members to finish joining etcd cluster: etcdserver: too many learner members in cluster")
    });
    assert!(
        waited,
        "one joiner hit the one-learner rule:\n{}\n{}",
        srv2.logs(),
        srv3.logs()
    );
    let info = db_info(&srv1).await;
    assert_eq!(info["members"].as_array().unwrap().len(), 3);
    assert!(
        srv1.logs().contains("Promoted learner srv"),
        "{}",
        srv1.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_config_mismatch_fails_the_join() {
    let srv1 = first_server("srv1", "");
    let cfg = JOIN_SERVER.replace("flannel-backend: none\ndisable-network-policy: true\n", "");
    let mut srv2 = joiner(&cfg, "srv2", "server", &srv1, &token_of(&srv1), None);
    srv2.start();
    assert_eq!(
        srv2.wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(1)
    );
    let logs = srv2.logs();
    assert!(
        logs.contains(
            "level=warning msg=\"critical configuration mismatched: disable-network-policy\""
        ),
        "{logs}"
    );
    assert!(
        logs.contains("level=warning msg=\"critical configuration mismatched: flannel-backend\""),
        "{logs}"
    );
    assert!(
        logs.contains("Error: starting kubernetes: preparing server: failed to bootstrap cluster data: failed to validate server configuration: critical configuration value mismatch between servers"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_hash_and_wrong_password_fail_a_server_join() {
    let srv1 = first_server("srv1", "");
    let good = token_of(&srv1);
    let pw = good.split("::").nth(1).unwrap().to_string();
    let bad_hash = format!("K10{}::{pw}", "0".repeat(64));
    let mut a = joiner(JOIN_SERVER, "srv2", "server", &srv1, &bad_hash, None);
    a.start();
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(a.logs().contains("failed to validate token: token CA hash does not match the Cluster CA certificate hash: 0000"), "{}", a.logs());
    let hash = good.split("::").next().unwrap();
    let mut b = joiner(
        JOIN_SERVER,
        "srv3",
        "server",
        &srv1,
        &format!("{hash}::server:wrong-password"),
        None,
    );
    b.start();
    assert_eq!(
        b.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(1)
    );
    let logs = b.logs();
    assert!(
        logs.contains("Skipping cluster configuration validation: not authorized"),
        "{logs}"
    );
    assert!(logs.contains("Error: starting kubernetes: preparing server: failed to bootstrap cluster data: not authorized"), "{logs}");
    // A joiner whose server is not up exits too (systemd restarts it).
    let mut c = LocalNode::prepare(
        &bin(),
        "srv4",
        "server",
        &JOIN_SERVER
            .replace("{server}", "https://127.0.0.1:1")
            .replace("{token}", &good),
        None,
    );
    c.start();
    assert_eq!(
        c.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        c.logs().contains(r#"failed to get CA certs: Get \"https://127.0.0.1:1/cacerts\": dial tcp 127.0.0.1:1: connect: connection refused"#),
        "{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_retry_forever_on_bad_tokens_and_join_with_good_ones() {
    let srv1 = first_server("srv1", "agent-token: agent-secret-0123456789\n");
    let server_tok = token_of(&srv1);
    let agent_tok = srv1
        .read("/var/lib/rancher/k3s/server/agent-token")
        .unwrap()
        .trim()
        .to_string();
    assert!(
        agent_tok.ends_with("::node:agent-secret-0123456789"),
        "{agent_tok}"
    );
    let pw = agent_tok.split("::").nth(1).unwrap();
    // Wrong CA hash: logged every 2 s, the agent keeps running.
    let mut bad = joiner(
        AGENT,
        "agt1",
        "agent",
        &srv1,
        &format!("K10{}::{pw}", "f".repeat(64)),
        None,
    );
    bad.start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(bad.running());
    let n = bad
        .logs()
        .matches("token CA hash does not match the Cluster CA certificate hash")
        .count();
    assert!(n >= 2, "retried: {}", bad.logs());
    assert!(bad.logs().contains(&format!(
        "Failed to validate connection to cluster at {}: token CA hash does not match",
        srv1.url()
    )));
    // The server token when an agent token is set: the node password is the agent token's.
    let mut wrong = joiner(AGENT, "agt2", "agent", &srv1, &server_tok, None);
    wrong.start();
    wrong
        .wait_log(
            &format!("Waiting to retrieve agent configuration; server is not ready: {}/v1-k3s/serving-kubelet.crt: 401 Unauthorized", srv1.url()),
            Duration::from_secs(15),
        )
        .unwrap();
    assert!(wrong.running());
    // The agent token joins; a short token (no CA hash) joins with k3s's warning.
    let mut good = joiner(AGENT, "agt3", "agent", &srv1, &agent_tok, None);
    good.start();
    good.wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    assert!(good.notified_ready());
    let mut short = joiner(
        AGENT,
        "agt4",
        "agent",
        &srv1,
        "agent-secret-0123456789",
        None,
    );
    short.start();
    short
        .wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    assert!(
        short
            .logs()
            .contains("the token does not include a CA hash"),
        "{}",
        short.logs()
    );
    let c = client(&srv1).await;
    let names = wait_for("agents registered", Duration::from_secs(20), || {
        let c = c.clone();
        async move { Some(node_names(&c).await).filter(|n| n.len() == 3) }
    })
    .await;
    assert_eq!(
        names,
        vec!["agt3".to_string(), "agt4".to_string(), "srv1".to_string()]
    );
    let nodes: Api<Node> = Api::all(c.clone());
    let a = nodes.get("agt3").await.unwrap();
    let labels = a.metadata.labels.unwrap();
    assert!(!labels.contains_key("node-role.kubernetes.io/control-plane"));
    let addr = &a.status.unwrap().addresses.unwrap()[0];
    assert_eq!(
        (addr.type_.as_str(), addr.address.as_str()),
        ("InternalIP", good.ip.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_node_names_are_refused_like_k3s() {
    let srv1 = first_server("srv1", "");
    let tok = token_of(&srv1);
    // A server named like an etcd member: the etcd join fails, k3s logs it and exits.
    let mut dup = joiner(JOIN_SERVER, "srv1", "server", &srv1, &tok, None);
    dup.start();
    let st = dup.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(st.code(), Some(0), "k3s exits through its shutdown handler");
    assert!(
        dup.logs().contains("Shutdown request received: \\\"etcd cluster join failed: duplicate node name found, please use a unique name for this node\\\""),
        "{}",
        dup.logs()
    );
    // Two agents with the same name and different node passwords.
    let mut a1 = joiner(AGENT, "agt1", "agent", &srv1, &tok, None);
    a1.start();
    a1.wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    let mut a2 = joiner(AGENT, "agt1", "agent", &srv1, &tok, None);
    a2.start();
    a2.wait_log(
        "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag",
        Duration::from_secs(15),
    )
    .unwrap();
    assert!(a2.running(), "agents retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_sqlite_server_cannot_be_joined_by_servers() {
    let srv1 = first_server("srv1", "cluster-init: false\n");
    assert!(srv1.logs().contains("sqlite"), "{}", srv1.logs());
    let mut srv2 = joiner(JOIN_SERVER, "srv2", "server", &srv1, &token_of(&srv1), None);
    srv2.start();
    assert_eq!(
        srv2.wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        srv2.logs()
            .contains("failed to bootstrap cluster data: etcd disabled"),
        "{}",
        srv2.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_joins_and_lose_node_faults() {
    let mut srv1 = LocalNode::prepare(
        &bin(),
        "srv1",
        "server",
        FIRST_SERVER,
        Some("startup-delay: 0\nrefuse-joins: true\nnode-monitor-grace-period: 3s\n"),
    );
    srv1.start();
    srv1.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    let tok = token_of(&srv1);
    let mut srv2 = joiner(JOIN_SERVER, "srv2", "server", &srv1, &tok, None);
    srv2.start();
    srv2.wait_log(
        "Waiting for other members to finish joining etcd cluster: etcdserver: unhealthy cluster",
        Duration::from_secs(15),
    )
    .unwrap();
    assert!(!srv2.notified_ready());
    // Lift the fault: the join completes.
    srv1.write(
        "/etc/k3s-standin/faults.yaml",
        "startup-delay: 0\nnode-monitor-grace-period: 3s\nlearner-promotion-delay: 500ms\n",
    );
    srv2.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    // Lose an agent: its node goes Unknown with the unreachable taint.
    let mut agt = joiner(AGENT, "agt1", "agent", &srv1, &tok, None);
    agt.start();
    agt.wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    let c = client(&srv1).await;
    let nodes: Api<Node> = Api::all(c.clone());
    wait_for("agt1 registered", Duration::from_secs(15), || {
        let nodes = nodes.clone();
        async move { nodes.get_opt("agt1").await.ok().flatten() }
    })
    .await;
    agt.write("/etc/k3s-standin/faults.yaml", "lose-node: true\n");
    let node =
        wait_for("agt1 unreachable", Duration::from_secs(30), || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("agt1").await.ok()?;
                let tainted =
                    n.spec.as_ref()?.taints.as_ref()?.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    });
                tainted.then_some(n)
            }
        })
        .await;
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_snapshot_save_and_ls() {
    let srv1 = first_server("srv1", "");
    let run = |args: &[&str]| {
        Command::new(bin())
            .env(ROOT_ENV, srv1.root.path())
            .arg("etcd-snapshot")
            .args(args)
            .args(["--etcd-server", &srv1.url()])
            .output()
            .unwrap()
    };
    let out = run(&["save", "--name", "pre-upgrade"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("level=info msg=\"Snapshot pre-upgrade-srv1-"),
        "{err}"
    );
    assert!(err.contains(" saved.\""), "{err}");
    let out = run(&["ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("Name")
            && header.contains("Location")
            && header.contains("Size")
            && header.ends_with("Created"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("pre-upgrade-srv1-"), "{table}");
    assert!(
        row.contains("file:///var/lib/rancher/k3s/server/db/snapshots/pre-upgrade-srv1-"),
        "{table}"
    );
    // The snapshot warns about config keys etcd-snapshot does not take, as k3s does.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Unknown flag --cluster-init found in config.yaml, skipping")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_cluster_init_server_starts_a_cluster_of_its_own() {
    // cluster-init belongs on the first server only: a second one with it and no `server:` does
    // not join, it bootstraps a separate cluster with its own CA.
    let srv1 = first_server("srv1", "");
    let srv2 = first_server("srv2", "");
    assert_ne!(
        srv1.read("/var/lib/rancher/k3s/server/tls/server-ca.crt"),
        srv2.read("/var/lib/rancher/k3s/server/tls/server-ca.crt")
    );
    assert_eq!(db_info(&srv1).await["members"].as_array().unwrap().len(), 1);
    assert_eq!(db_info(&srv2).await["members"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_reset_leaves_the_server_as_the_only_etcd_member() {
    let mut srv1 = first_server("srv1", "");
    let mut srv2 = joiner(JOIN_SERVER, "srv2", "server", &srv1, &token_of(&srv1), None);
    srv2.start();
    srv2.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap();
    assert_eq!(db_info(&srv1).await["members"].as_array().unwrap().len(), 2);
    // Both servers down; the survivor is reset (pkg/cluster/managed.go) and exits.
    srv2.stop();
    srv1.stop();
    let reset = "/etc/rancher/k3s/config.yaml.d/90-reset.yaml";
    srv1.write(reset, "cluster-reset: true\n");
    srv1.start();
    let status = srv1.wait_exit(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", srv1.logs());
    assert!(
        srv1.logs()
            .contains("Managed etcd cluster membership has been reset"),
        "{}",
        srv1.logs()
    );
    std::fs::remove_file(srv1.path(reset)).unwrap();
    // Restarted without the flag: a cluster of one real member, with quorum on its own.
    srv1.start();
    let members = wait_for("srv1 alone in etcd", Duration::from_secs(30), || {
        let srv1 = &srv1;
        async move {
            let http = installer_tests::standin::client::insecure().ok()?;
            let v: serde_json::Value = http
                .get(format!("{}/db/info", srv1.url()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["members"].as_array().cloned()
        }
    })
    .await;
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0]["name"].as_str().unwrap().starts_with("srv1-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_newer_than_every_server_is_recorded_as_skew() {
    let srv1 = first_server("srv1", "");
    let skew = "/var/lib/rancher/k3s/server/db/standin/skew.jsonl";
    // An agent on the same release: nothing recorded.
    let mut same = joiner(AGENT, "agt1", "agent", &srv1, &token_of(&srv1), None);
    same.start();
    same.wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    // An agent on the next minor: a kubelet newer than every apiserver.
    let d = tempfile::tempdir().unwrap();
    let newer = d.path().join("k3s");
    installer_tests::standin::version::stamp(&bin(), &newer, "v1.37.0+k3s1").unwrap();
    let cfg = AGENT
        .replace("{server}", &srv1.url())
        .replace("{token}", &token_of(&srv1));
    let mut agt2 = LocalNode::prepare(&newer, "agt2", "agent", &cfg, None);
    agt2.start();
    agt2.wait_log("k3s agent is up and running", Duration::from_secs(20))
        .unwrap();
    let line = wait_for("a skew record", Duration::from_secs(20), || {
        let text = srv1.read(skew).unwrap_or_default();
        async move {
            text.lines()
                .find(|l| l.contains("kubelet-newer-than-apiservers"))
                .map(str::to_string)
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["node"], "agt2", "{line}");
    assert_eq!(v["kubelet"], "v1.37.0+k3s1", "{line}");
    let all = srv1.read(skew).unwrap_or_default();
    assert!(!all.contains("\"agt1\""), "{all}");
}
