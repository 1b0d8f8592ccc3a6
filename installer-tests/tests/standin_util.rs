//! Shared helpers for the stand-in's integration tests (included with `mod standin_util;`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use installer_tests::standin::testing::LocalNode;

/// The stand-in binary built by cargo for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_k3s-standin"))
}

/// A first server's config (cluster-init), host-network style as the installer writes it.
pub const FIRST_SERVER: &str = "cluster-init: true
token: standin-test-token-0123456789abcdef
node-name: {name}
node-ip: {ip}
bind-address: {ip}
flannel-backend: none
disable-network-policy: true
disable-helm-controller: true
disable: [coredns, servicelb, traefik, local-storage, metrics-server]
write-kubeconfig-mode: \"0600\"
";

/// A kube client from the node's `/etc/rancher/k3s/k3s.yaml`, as the installer would build it.
pub async fn client(node: &LocalNode) -> kube::Client {
    let text = node
        .read("/etc/rancher/k3s/k3s.yaml")
        .expect("k3s.yaml written");
    let kc = kube::config::Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig usable");
    kube::Client::try_from(cfg).expect("client")
}

/// Like [`client`], without kube-rs's default retries of 429/503/504 (to see such answers).
pub async fn client_no_retry(node: &LocalNode) -> kube::Client {
    let text = node
        .read("/etc/rancher/k3s/k3s.yaml")
        .expect("k3s.yaml written");
    let kc = kube::config::Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig usable");
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("client")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Start a first server and wait until it reports up.
pub fn first_server(name: &str, extra: &str) -> LocalNode {
    installer_tests::standin::client::install_crypto();
    let mut n = LocalNode::prepare(
        &bin(),
        name,
        "server",
        &format!("{FIRST_SERVER}{extra}"),
        None,
    );
    n.start();
    n.wait_log("k3s is up and running", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    n
}

/// The CNI conflist the installer writes (docs/k3s-host-network.md §1).
pub fn conflist(pod_cidr: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"local","plugins":[{{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{pod_cidr}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
    )
}

/// A real `kubectl` on PATH; without one, None after saying why (a failure under LAB_REQUIRED=1).
#[allow(dead_code)]
pub fn real_kubectl_or_skip() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("LAB_REQUIRED").is_ok_and(|v| v.trim() == "1") {
            panic!("LAB_REQUIRED=1 but no kubectl on PATH (Debian package kubernetes-client)");
        }
        eprintln!(
            "SKIPPED: no kubectl on PATH (Debian package kubernetes-client). Set LAB_REQUIRED=1 to make this a failure."
        );
    }
    found
}

/// A real kubectl against one kubeconfig, with a HOME of its own (no cache or config of the
/// workstation's user).
#[allow(dead_code)]
pub struct KubectlRun {
    bin: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    home: tempfile::TempDir,
}

#[allow(dead_code)]
impl KubectlRun {
    pub fn new(bin: std::path::PathBuf, kubeconfig: std::path::PathBuf) -> KubectlRun {
        KubectlRun {
            bin,
            kubeconfig,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `kubectl ARGS`; its stdout, or a panic with its stderr.
    pub fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(&self.bin)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
