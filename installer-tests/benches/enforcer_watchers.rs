//! `cargo bench -p installer-tests --bench enforcer_watchers` (root, nft, ip): the policy
//! enforcer's resident memory with its API watchers live, against the same binary reading the
//! same objects from a snapshot file, in the same run (issue 12: target under 50 MB).
//!
//! A k3s stand-in server on a loopback address is the API. It gets the shape of the enforcer's
//! compile/apply benchmark (`src/enforcer/benches/common`): three Node objects `n0`..`n2`,
//! 100 host-network pods spread over them and 50 NetworkPolicies, then 200 more pods, so the
//! figure's growth with the cluster's objects shows. No kubelet runs for those nodes (their pods
//! stay as created), which is all the enforcer reads. The release build of `enforcer` runs as
//! node `n0` with `KUBECONFIG` pointing at the stand-in (the same client code as in-cluster),
//! programming its own table in a network namespace of its own; its `VmRSS` is read from `/proc`
//! once its `/state` shows that it applied rules for every pod the API holds. The reference is the
//! same binary with `--snapshot` (no watchers), given the objects as the API listed them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use installer_tests::standin::testing::LocalNode;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const NODES: usize = 3;
const POLICIES: usize = 50;
const ROLES: usize = 10;

const SERVER: &str = "token: standin-bench-token-0123456789abcdef
node-name: {name}
node-ip: {ip}
bind-address: {ip}
flannel-backend: none
disable-network-policy: true
disable-helm-controller: true
disable: [coredns, servicelb, traefik, local-storage, metrics-server]
write-kubeconfig-mode: \"0600\"
";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "app", "name": format!("p{i}"),
                     "labels": {"role": format!("r{}", i % ROLES), "idx": i.to_string()}},
        "spec": {"nodeName": format!("n{}", i % NODES), "hostNetwork": true,
                 "containers": [{"name": "c", "image": "bench.example/app:1",
                                 "ports": [{"name": "main", "containerPort": 10000 + i},
                                           {"name": "aux", "containerPort": 20000 + i, "protocol": "UDP"}]}]}
    }))
    .unwrap()
}

fn policy(i: usize) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "app", "name": format!("pol{i}")}, "spec": {
        "podSelector": {"matchLabels": {"role": format!("r{}", i % ROLES)}},
        "policyTypes": if i.is_multiple_of(5) { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) },
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("r{}", (i + 1) % ROLES)}}},
                              {"ipBlock": {"cidr": "192.168.0.0/16", "except": [format!("192.168.{i}.0/24")]}}],
                     "ports": [{"port": "main"}, {"port": 30000, "endPort": 30010}]}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"role": format!("r{}", (i + 2) % ROLES)}}}], "ports": [{"port": "main"}]}]
    }}))
    .unwrap()
}

/// `/state` of the enforcer listening on `port`, once it answers.
fn state(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.write_all(b"GET /state HTTP/1.0\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    serde_json::from_str(s.split_once("\r\n\r\n")?.1).ok()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// One enforcer process as node n0, killed when dropped.
struct Enforcer {
    child: Child,
    port: u16,
}

impl Enforcer {
    fn start(
        bin: &Path,
        netns: &str,
        cgroup_base: &str,
        table: &str,
        port: u16,
        source: Source<'_>,
    ) -> Enforcer {
        let mut c = Command::new(bin);
        c.args(["run", "--node-name", "n0", "--table", table])
            .args(["--cgroup-base", cgroup_base])
            .args(["--netns", &format!("/run/netns/{netns}")])
            .args(["--state-addr", &format!("127.0.0.1:{port}")])
            .args(["--interval-ms", "500"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match source {
            Source::Api(kubeconfig) => c.env("KUBECONFIG", kubeconfig),
            Source::File(f) => c.arg("--snapshot").arg(f).env_remove("KUBECONFIG"),
        };
        Enforcer {
            child: c.spawn().unwrap(),
            port,
        }
    }

    /// Waits until its last apply covered `pods` pods, then its RSS in MB.
    fn rss_once_applied(&mut self, pods: usize) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = state(self.port)
                && st["ready"] == true
                && st["stats"]["pods"].as_u64() == Some(pods as u64)
                && st["stats"]["unresolved_pods"].as_u64() == Some(0)
            {
                // The allocator settles after the apply; the figure is read a moment later,
                // as a scrape would see it.
                std::thread::sleep(Duration::from_millis(500));
                return rss_mb(self.child.id());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the enforcer exited ({st}) before applying rules for {pods} pods");
            }
            assert!(
                Instant::now() < deadline,
                "the enforcer did not apply rules for {pods} pods within 60 s: {:?}",
                state(self.port)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cleanup {
    netns: String,
    cg_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sh(&format!("ip netns del {}", self.netns));
        sh(&format!(
            "find {} -depth -type d -exec rmdir {{}} \\;",
            self.cg_dir.display()
        ));
    }
}

enum Source<'a> {
    Api(&'a Path),
    File(&'a Path),
}

/// The objects the enforcer watches, as the API lists them, in the enforcer's snapshot format.
async fn snapshot_file(client: &kube::Client, path: &Path) {
    let lp = ListParams::default();
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items;
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items;
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items;
    let snap =
        json!({"pods": pods, "namespaces": namespaces, "policies": policies, "nodes": nodes});
    std::fs::write(path, serde_json::to_vec(&snap).unwrap()).unwrap();
}

/// A kubelet-shaped cgroup (systemd driver, the pod's QoS class) for each of n0's pods, under `base`, so
/// the enforcer resolves them all and compiles its full rules.
async fn pod_cgroups(client: &kube::Client, base: &Path) -> Vec<PathBuf> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut made = Vec::new();
    for p in pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n0"))
    {
        let uid = p.metadata.uid.as_deref().unwrap().replace('-', "_");
        // The QoS class the API gave the pod (BestEffort: these pods ask for no resources).
        let qos = p
            .status
            .as_ref()
            .and_then(|s| s.qos_class.as_deref())
            .unwrap_or("BestEffort")
            .to_lowercase();
        let dir = base.join(format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"
        ));
        std::fs::create_dir_all(&dir).unwrap();
        made.push(dir);
    }
    made
}

async fn create_pods(client: &kube::Client, range: std::ops::Range<usize>) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "app");
    let pp = PostParams::default();
    for i in range {
        api.create(&pp, &pod(i)).await.unwrap();
    }
}

async fn pods_in_api(client: &kube::Client) -> usize {
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::main]
async fn main() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root
        || !["nft", "ip"]
            .iter()
            .all(|t| sh(&format!("command -v {t} >/dev/null")))
    {
        println!("enforcer_watchers bench: not measured (needs root, nft and ip)");
        return;
    }
    installer_tests::standin::client::install_crypto();
    let enforcer = installer_tests::payload::release_binary("installer-enforcer", "enforcer")
        .expect("the enforcer's release build");
    let standin = PathBuf::from(env!("CARGO_BIN_EXE_k3s-standin"));
    let mut server = LocalNode::prepare(&standin, "standin", "server", SERVER, None);
    server.start();
    server
        .wait_log("k3s is up and running", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = server.path("/etc/rancher/k3s/k3s.yaml");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();

    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in 0..NODES {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": format!("n{n}")}})).unwrap();
        nodes.create(&pp, &node).await.unwrap();
        // The address the enforcer uses for a remote pod (a host-network pod's is its node's).
        nodes
            .patch_status(
                &format!("n{n}"),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": format!("10.254.0.{}", n + 1)}]}})),
            )
            .await
            .unwrap();
    }
    let pols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "app");
    for i in 0..POLICIES {
        pols.create(&pp, &policy(i)).await.unwrap();
    }
    create_pods(&client, 0..100).await;

    let pid = std::process::id();
    let netns = format!("enfw{pid}");
    assert!(sh(&format!(
        "ip netns del {netns} 2>/dev/null; ip netns add {netns} && ip -n {netns} link set lo up"
    )));
    // The pods' cgroups go under a tree of the bench's own (the unified hierarchy of a hybrid
    // host, or the cgroup v2 root).
    let v2 = if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup/unified")
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let base = format!("enfw{pid}");
    let cg_dir = v2.join(&base);
    // Whatever happens while measuring, the namespace (and the tables in it) and the cgroups go.
    let _cleanup = Cleanup {
        netns: netns.clone(),
        cg_dir: cg_dir.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let port = 20000 + (pid % 20000) as u16;
    let measured = async {
        let mut figures = Vec::new();
        for (step, pods) in [(0, 100), (1, 300)] {
            if step == 1 {
                create_pods(&client, 100..300).await;
            }
            pod_cgroups(&client, &cg_dir).await;
            let total = pods_in_api(&client).await;
            assert!(total >= pods, "the API holds {total} pods, {pods} created");
            snapshot_file(&client, &file).await;
            let file_rss = {
                let mut e =
                    Enforcer::start(&enforcer, &netns, &base, "enfwf", port, Source::File(&file));
                e.rss_once_applied(total)
            };
            let live_rss = {
                let mut e = Enforcer::start(
                    &enforcer,
                    &netns,
                    &base,
                    "enfwa",
                    port + 1,
                    Source::Api(&kubeconfig),
                );
                e.rss_once_applied(total)
            };
            println!(
                "{total} pods, {POLICIES} policies, {NODES} nodes: RSS with the API watchers {live_rss:.1} MB, from a snapshot file {file_rss:.1} MB (target < 50 MB)"
            );
            figures.push((total, live_rss, file_rss));
        }
        figures
    };
    let figures = measured.await;
    drop(server);
    if let [(p0, a0, f0), (p1, a1, f1)] = figures[..] {
        let per_pod = |a: f64, b: f64| (b - a) * 1024.0 / (p1 - p0) as f64;
        println!(
            "RSS grows by {:.1} kB per pod with the watchers ({p0} -> {p1} pods: {a0:.1} -> {a1:.1} MB), {:.1} kB per pod from a file (the rules' share)",
            per_pod(a0, a1),
            per_pod(f0, f1)
        );
    }
}
