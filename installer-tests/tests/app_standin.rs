//! The application layer against a k3s stand-in node on loopback (no lab, no root): CoreDNS
//! deployed and answering the DNS gate's real query (the stand-in's `dns-tcp` responder), the
//! bundled appliance applied by server-side apply, generated material created once and reused,
//! rollout gates passing, a rerun changing nothing, a changed value rolling out only what uses
//! it, and a missing image archive stopping the right gate with the node named; and three
//! servers running the appliance on every node.
//!
//! The final endpoint gate checks the gateway's HTTPS against the appliance CA: the stand-in's
//! container serves the certificate of the TLS Secret the gateway mounts.

mod standin_util;

use std::sync::Arc;
use std::time::Duration;

use installer::app::{self, App, Bundle, ClusterFacts, DeployTimeouts, Values};
use installer::host::{
    CommandOutput, HostError, Progress, Remote, RemoteCommand, Tunnel, UploadOutcome, UploadSource,
    UploadTarget,
};
use installer::kube::Cluster;
use installer::kube::apply::Change;
use installer::report::events::Reporter;
use installer_tests::images::{ArchiveOptions, write_archive};
use installer_tests::standin::testing::LocalNode;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;
use standin_util::*;
use std::future::Future;
use std::pin::Pin;

const PAUSE: &str = "docker.io/rancher/mirrored-pause:3.6";
const COREDNS: &str = "docker.io/rancher/mirrored-coredns-coredns:1.14.4";
const APP_IMAGES: [&str; 4] = [
    "registry.k8s.io/etcd:3.6.6-0",
    "docker.io/traefik/whoami:v1.11.0",
    "docker.io/library/busybox:1.37.0",
    "docker.io/library/nginx:1.28.0-alpine",
];

/// A "remote" that is this machine, standing for the node: commands run locally and TCP
/// connections go to the node's own loopback address. A stand-in node listens on its own
/// `127.x.y.z` rather than on 127.0.0.1, so `127.0.0.1` in a command or a tunnel target means
/// the node's address (the API tunnel's `127.0.0.1:6443`, the DNS query's `127.0.0.1:1053`).
struct Local {
    name: String,
    ip: String,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, HostError>> + Send + 'a>>;

// `Remote` is an `async_trait`; its methods are implemented here in the boxed form the macro
// produces, so this test needs no extra dependency.
impl Remote for Local {
    fn name(&self) -> &str {
        &self.name
    }

    fn exec<'a, 'b>(&'a self, cmd: RemoteCommand) -> Boxed<'b, CommandOutput>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let out = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd.script.replace("127.0.0.1", &self.ip))
                .output()
                .await
                .map_err(|e| HostError::Disconnected {
                    host: self.name.clone(),
                    during: e.to_string(),
                })?;
            Ok(CommandOutput {
                status: out.status.code().map(|c| c as u32),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        })
    }

    fn upload<'a, 'b, 'c, 'd>(
        &'a self,
        _: &'b UploadSource,
        _: &'c UploadTarget,
        _: Option<Progress>,
    ) -> Boxed<'d, UploadOutcome>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
    {
        Box::pin(async move {
            Err(HostError::Disconnected {
                host: self.name.clone(),
                during: "upload (not used here)".into(),
            })
        })
    }

    fn connect_tcp<'a, 'b, 'c>(&'a self, host: &'b str, port: u16) -> Boxed<'c, Tunnel>
    where
        'a: 'c,
        'b: 'c,
    {
        Box::pin(async move {
            let host = if host == "127.0.0.1" {
                self.ip.as_str()
            } else {
                host
            };
            let s = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| HostError::Connect {
                    host: self.name.clone(),
                    addr: format!("{host}:{port}"),
                    reason: e.to_string(),
                })?;
            Ok(Box::pin(s) as Tunnel)
        })
    }
}

/// Places the image archive and the CNI config on a node (what the installer's earlier phases do).
fn provision(n: &LocalNode, images: &[&str], pod_cidr: &str) {
    let p = n.path("/var/lib/rancher/k3s/agent/images/payload.tar.zst");
    std::fs::create_dir_all(p.parent().expect("images dir")).expect("images dir created");
    write_archive(&p, images, &ArchiveOptions::default()).expect("image archive written");
    n.write("/etc/cni/net.d/10-local.conflist", &conflist(pod_cidr));
}

async fn ready_node(images: &[&str]) -> (LocalNode, Cluster) {
    let n = first_server("srv1", "");
    provision(&n, images, "10.42.0.0/24");
    let kubeconfig = n
        .read("/etc/rancher/k3s/k3s.yaml")
        .expect("k3s.yaml written");
    let remote: Arc<dyn Remote> = Arc::new(Local {
        name: "srv1".into(),
        ip: n.ip.clone(),
    });
    let cluster = Cluster::connect(remote, &kubeconfig)
        .await
        .expect("connected to the API");
    wait_for("node Ready", Duration::from_secs(30), || async {
        let nodes = cluster.nodes().await.ok()?;
        let node = nodes.first()?;
        let (ready, _) = installer::kube::wait::node_readiness(node);
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
        (ready && !tainted).then_some(())
    })
    .await;
    (n, cluster)
}

fn values(api_port: u16) -> Values {
    Values::new()
        .set("hostname", "appliance.example.internal")
        .set("gatewayPort", 8443)
        .set("apiPort", api_port)
        .set("storePort", 7379)
        .set("apiReplicas", 1)
        .set("adminEmail", "admin@example.internal")
}

async fn facts(cluster: &Cluster) -> ClusterFacts {
    let nodes = cluster.nodes().await.expect("nodes listed");
    ClusterFacts::from_nodes(&nodes, "10.43.0.0/16".parse().expect("a CIDR")).expect("facts")
}

fn quick() -> DeployTimeouts {
    DeployTimeouts {
        per_workload: Duration::from_secs(60),
        interval: Duration::from_millis(300),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_appliance_deploys_and_a_rerun_changes_nothing() {
    let mut images = vec![PAUSE, COREDNS];
    images.extend(APP_IMAGES);
    let (node, cluster) = ready_node(&images).await;
    let reporter = Reporter::silent();
    let facts = facts(&cluster).await;
    assert_eq!(facts.servers().count(), 1);

    let dns = app::dns::deploy(&cluster, &facts, &reporter, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(dns.count(Change::Created) >= 5, "{}", dns.summary());
    let remotes: Vec<Arc<dyn Remote>> = vec![Arc::new(Local {
        name: "srv1".into(),
        ip: node.ip.clone(),
    })];
    let check = app::dns::DnsCheck::for_cluster(&facts).unwrap();
    let answers = app::dns::gate(
        &remotes,
        &check,
        Duration::from_secs(20),
        Duration::from_millis(200),
        &reporter,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        answers[0].addresses,
        vec!["10.43.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    let app = App::load(Bundle::embedded(), values(8081), facts.clone()).unwrap();
    let generated = app::generated::ensure(&cluster, &app, &reporter)
        .await
        .unwrap();
    assert_eq!(generated.shown_once.len(), 1, "adminPassword was generated");
    assert_eq!(generated.report.count(Change::Created), 3);
    let manifests = app.render(&generated).unwrap();
    let report = app::deploy(&cluster, &app, &manifests, &reporter, quick())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.count(Change::Updated),
        1,
        "the namespace gets its labels: {report:?}"
    );
    assert!(report.count(Change::Created) > 10, "{}", report.summary());

    // The final gate: the gateway answers on every node, checked against the appliance CA only.
    let endpoints = app.endpoints();
    assert_eq!(endpoints.len(), 1);
    let ca = generated.ca_cert_pem.as_deref();
    let results = app::endpoints::check(&endpoints, ca, Default::default())
        .await
        .unwrap();
    app::endpoints::verdict(&results).unwrap_or_else(|e| panic!("{e}"));
    let stored_ca = app::generated::read_ca_cert(&cluster, &app).await.unwrap();
    assert_eq!(stored_ca.as_deref(), ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = app::generated::write_ca_file(&generated, &dir.path().join("appliance.yaml"))
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read_to_string(ca_file).unwrap(), ca.unwrap());

    // The Secrets hold what was generated, and a rerun reads them back.
    let secrets: Api<KubeSecret> = Api::namespaced(cluster.client().clone(), "appliance");
    let first = secrets.get("app-secrets").await.unwrap();
    let generated2 = app::generated::ensure(&cluster, &app, &reporter)
        .await
        .unwrap();
    assert!(generated2.shown_once.is_empty(), "nothing generated twice");
    assert!(
        generated2.report.unchanged(),
        "{}",
        generated2.report.summary()
    );
    assert_eq!(generated2.versions, generated.versions);
    assert_eq!(generated2.ca_cert_pem, generated.ca_cert_pem);
    assert_eq!(secrets.get("app-secrets").await.unwrap().data, first.data);
    let manifests2 = app.render(&generated2).unwrap();
    assert_eq!(manifests2, manifests);
    let rerun = app::deploy(&cluster, &app, &manifests2, &reporter, quick())
        .await
        .unwrap();
    assert!(rerun.unchanged(), "{:?}", rerun);

    // A changed port rolls out only what uses it.
    let app3 = App::load(Bundle::embedded(), values(8082), facts.clone()).unwrap();
    let g3 = app::generated::ensure(&cluster, &app3, &reporter)
        .await
        .unwrap();
    assert!(g3.report.unchanged());
    let m3 = app3.render(&g3).unwrap();
    let changed = app::deploy(&cluster, &app3, &m3, &reporter, quick())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let updated: Vec<&str> = changed
        .items
        .iter()
        .filter(|i| i.change != Change::Unchanged)
        .map(|i| i.object.as_str())
        .collect();
    assert_eq!(
        updated,
        vec![
            "ConfigMap appliance/gateway-nginx",
            "Service appliance/api",
            "Deployment appliance/api",
            "Deployment appliance/worker",
            "DaemonSet appliance/gateway",
        ]
    );
    let seen = app::observe(&cluster, values(8082), "10.43.0.0/16".parse().unwrap())
        .await
        .unwrap();
    assert!(seen.healthy(), "{seen:?}");
    assert_eq!(seen.workloads.len(), 5, "CoreDNS and the four workloads");
    assert_eq!(seen.endpoints.len(), 1);
    let status = installer::kube::rollout::status(&cluster, &app3.workloads())
        .await
        .unwrap();
    assert!(
        status.iter().all(|s| s.rolled_out && s.problems.is_empty()),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_archive_stops_the_gate_of_its_workload_naming_the_node() {
    // Everything but the gateway's image.
    let mut images = vec![PAUSE, COREDNS];
    images.extend(&APP_IMAGES[..3]);
    let (_node, cluster) = ready_node(&images).await;
    let reporter = Reporter::silent();
    let facts = facts(&cluster).await;
    app::dns::deploy(&cluster, &facts, &reporter, Duration::from_secs(60))
        .await
        .unwrap();
    let app = App::load(Bundle::embedded(), values(8081), facts).unwrap();
    let generated = app::generated::ensure(&cluster, &app, &reporter)
        .await
        .unwrap();
    let manifests = app.render(&generated).unwrap();
    let timeouts = DeployTimeouts {
        per_workload: Duration::from_secs(8),
        interval: Duration::from_millis(300),
    };
    let err = app::deploy(&cluster, &app, &manifests, &reporter, timeouts)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("DaemonSet appliance/gateway is not ready after"),
        "{text}"
    );
    assert!(
        text.contains("on node srv1: container nginx waiting: "),
        "{text}"
    );
    assert!(
        text.contains("docker.io/library/nginx:1.28.0-alpine"),
        "{text}"
    );
    assert!(
        text.contains("what to do: the image docker.io/library/nginx:1.28.0-alpine is not on srv1"),
        "{text}"
    );
    let seen = app::observe(&cluster, values(8081), "10.43.0.0/16".parse().unwrap())
        .await
        .unwrap();
    assert!(!seen.healthy());
    let gw = seen
        .workloads
        .iter()
        .find(|w| w.workload.name == "gateway")
        .unwrap();
    assert_eq!((gw.ready, gw.desired), (0, 1));
    assert!(gw.problems[0].contains("on node srv1"), "{:?}", gw.problems);
    assert!(!seen.endpoints[0].ok);
}

#[test]
fn the_lab_payload_carries_the_coredns_image_the_installer_deploys() {
    let services = app::dns::ClusterServices::embedded().expect("cluster services");
    assert!(
        installer_tests::payload::K3S_AIRGAP_IMAGES.contains(&services.dns.image.as_str()),
        "{} is not in the lab's k3s airgap archive",
        services.dns.image
    );
    assert_eq!(COREDNS, services.dns.image, "the image these tests import");
}

/// A joining server's config (the installer's shape), for [`LocalNode::prepare`].
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

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_run_the_appliance_on_every_node() {
    let mut images = vec![PAUSE, COREDNS];
    images.extend(APP_IMAGES);
    let srv1 = first_server("srv1", "");
    provision(&srv1, &images, "10.42.0.0/24");
    let token = srv1
        .read("/var/lib/rancher/k3s/server/token")
        .expect("server token")
        .trim()
        .to_string();
    let mut nodes = vec![srv1];
    for (i, name) in ["srv2", "srv3"].iter().enumerate() {
        // One server at a time (k3s-host-network.md §2).
        let cfg = JOIN_SERVER
            .replace("{server}", &nodes[0].url())
            .replace("{token}", &token);
        let mut n = LocalNode::prepare(&bin(), name, "server", &cfg, None);
        n.start();
        n.wait_log("k3s is up and running", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        provision(&n, &images, &format!("10.42.{}.0/24", i + 1));
        nodes.push(n);
    }
    let kubeconfig = nodes[0]
        .read("/etc/rancher/k3s/k3s.yaml")
        .expect("k3s.yaml written");
    let remotes: Vec<Arc<dyn Remote>> = nodes
        .iter()
        .map(|n| {
            Arc::new(Local {
                name: n.name.clone(),
                ip: n.ip.clone(),
            }) as Arc<dyn Remote>
        })
        .collect();
    let cluster = Cluster::connect(remotes[0].clone(), &kubeconfig)
        .await
        .expect("connected");
    wait_for("three Ready nodes", Duration::from_secs(60), || async {
        let ns = cluster.nodes().await.ok()?;
        let ready = ns
            .iter()
            .filter(|n| installer::kube::wait::node_readiness(n).0)
            .count();
        (ready == 3).then_some(())
    })
    .await;
    let reporter = Reporter::silent();
    let facts = facts(&cluster).await;
    assert_eq!(facts.servers().count(), 3);

    app::dns::deploy(&cluster, &facts, &reporter, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let check = app::dns::DnsCheck::for_cluster(&facts).unwrap();
    let answers = app::dns::gate(
        &remotes,
        &check,
        Duration::from_secs(30),
        Duration::from_millis(300),
        &reporter,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answers.len(), 3);

    let values = values(8081).set("apiReplicas", 2);
    let app = App::load(Bundle::embedded(), values, facts).unwrap();
    let generated = app::generated::ensure(&cluster, &app, &reporter)
        .await
        .unwrap();
    let manifests = app.render(&generated).unwrap();
    let timeouts = DeployTimeouts {
        per_workload: Duration::from_secs(90),
        interval: Duration::from_millis(500),
    };
    app::deploy(&cluster, &app, &manifests, &reporter, timeouts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = installer::kube::rollout::status(&cluster, &app.workloads())
        .await
        .unwrap();
    let seen: Vec<String> = status
        .iter()
        .map(|s| format!("{} {}/{}", s.workload, s.ready, s.desired))
        .collect();
    assert_eq!(
        seen,
        vec![
            "StatefulSet appliance/store 3/3",
            "Deployment appliance/api 2/2",
            "Deployment appliance/worker 1/1",
            "DaemonSet appliance/gateway 3/3",
        ]
    );
    let endpoints = app.endpoints();
    assert_eq!(endpoints.len(), 3, "the gateway on every node");
    let results = app::endpoints::check(
        &endpoints,
        generated.ca_cert_pem.as_deref(),
        Default::default(),
    )
    .await
    .unwrap();
    app::endpoints::verdict(&results).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_wakes_its_subscriber_when_a_watched_object_changes() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let (_node, cluster) = ready_node(&[PAUSE]).await;
    let mut changes = installer::kube::watch::Changes::new();
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().clone(), "default");
    changes.watch(api.clone(), Some("metadata.name=watched"));
    let mut rx = changes.subscribe();
    // The first list wakes it (a change from before the watch is never missed).
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("woken by the first list")
        .unwrap();
    rx.borrow_and_update();
    // An object outside the field selector does not wake it; the watched one does.
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {"k": "v"}
        }))
        .unwrap()
    };
    api.create(&Default::default(), &cm("other")).await.unwrap();
    api.create(&Default::default(), &cm("watched"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("woken by the change")
        .unwrap();
    rx.borrow_and_update();
    api.delete("other", &Default::default()).await.unwrap();
    api.delete("watched", &Default::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("woken by the deletion")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_gated_together_name_the_first_broken_one_in_order_even_when_a_later_one_gives_up_sooner()
 {
    // The gateway's image is missing (it gives up after the 20 s grace); the store, first in
    // the order, never becomes ready (it times out later, at 35 s).
    let mut images = vec![PAUSE, COREDNS];
    images.extend(&APP_IMAGES[..3]);
    let (node, cluster) = ready_node(&images).await;
    node.write(
        "/etc/k3s-standin/faults.yaml",
        "startup-delay: 0s\nunhealthy-containers: [etcd]\n",
    );
    let reporter = Reporter::silent();
    let facts = facts(&cluster).await;
    app::dns::deploy(&cluster, &facts, &reporter, Duration::from_secs(60))
        .await
        .unwrap();
    let app = App::load(Bundle::embedded(), values(8081), facts).unwrap();
    let generated = app::generated::ensure(&cluster, &app, &reporter)
        .await
        .unwrap();
    let manifests = app.render(&generated).unwrap();
    let timeouts = DeployTimeouts {
        per_workload: Duration::from_secs(35),
        interval: Duration::from_millis(300),
    };
    let err = app::deploy(&cluster, &app, &manifests, &reporter, timeouts)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("StatefulSet appliance/store is not ready after"),
        "{text}"
    );
    assert!(
        text.contains("container etcd running but not ready"),
        "{text}"
    );
    // Every workload was applied at once, the gateway too.
    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(cluster.client().clone(), "appliance");
    assert!(ds.get_opt("gateway").await.unwrap().is_some());
}
