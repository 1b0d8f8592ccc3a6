//! A real etcd member, run the way k3s embeds it (`pkg/etcd/etcd.go`, k3s release-1.36), and a
//! client for it over etcd's v3 JSON gateway (gRPC-gateway on the client port).
//!
//! What k3s does and this module reproduces:
//! - the member is named `<node-name>-<8 hex>` (the caller passes the name kept in
//!   `server/db/etcd/name`), its data lives in `server/db/etcd`, it listens on 2379 (clients) and
//!   2380 (peers), both with client-certificate authentication;
//! - certificates under `server/tls/etcd/`: `server-client.{crt,key}` (serving and client,
//!   signed by `server-ca`), `peer-server-client.{crt,key}` (signed by `peer-ca`) and
//!   `client.{crt,key}` (what the apiserver and `etcdctl` present, signed by `server-ca`);
//! - a joining member is added as a learner (`MemberAddAsLearner`; etcd allows one learner at a
//!   time and answers a second with `etcdserver: too many learner members in cluster`), started
//!   with `--initial-cluster-state existing`, then promoted once it has caught up.
//!
//! Differences: the member runs as a child process (Debian's `etcd` 3.4 binary; k3s links etcd
//! 3.5 into its own process), and the Raft timers are shorter (heartbeat 25 ms, election 250 ms;
//! k3s uses etcd's defaults of 100 ms and 1 s) so that a new cluster is ready in about a quarter
//! of a second and a lost leader is replaced within one election timeout in the lab.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

use super::client;
use super::pki::{self, CertKey};
use super::tls_files::{self, ClusterPki};

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// Raft heartbeat interval (ms).
pub const HEARTBEAT_MS: u32 = 25;
/// Raft election timeout (ms).
pub const ELECTION_MS: u32 = 250;
/// The text etcd's client reports when a request outlives its deadline.
pub const DEADLINE_EXCEEDED: &str = "context deadline exceeded";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where and how one member runs.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// `<node-name>-<8 hex>`.
    pub name: String,
    /// `${data-dir}/server/db/etcd` (already rooted).
    pub data_dir: PathBuf,
    /// `${data-dir}/server/tls/etcd` (already rooted).
    pub tls_dir: PathBuf,
    /// The node's address (advertised and listened on).
    pub ip: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl MemberSpec {
    /// A member on the standard ports.
    pub fn new(name: &str, server_dir: &Path, ip: &str) -> MemberSpec {
        MemberSpec {
            name: name.to_string(),
            data_dir: server_dir.join("db/etcd"),
            tls_dir: server_dir.join("tls/etcd"),
            ip: ip.to_string(),
            client_port: CLIENT_PORT,
            peer_port: PEER_PORT,
        }
    }

    pub fn client_url(&self) -> String {
        format!("https://{}:{}", url_host(&self.ip), self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("https://{}:{}", url_host(&self.ip), self.peer_port)
    }

    /// Whether this member's data dir already holds a member (a restart, not a join).
    pub fn has_data(&self) -> bool {
        self.data_dir.join("member/wal").is_dir()
    }
}

fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The certificates a member and its clients use.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// `server-ca.crt`: what clients trust.
    pub server_ca_pem: String,
    /// `client.{crt,key}`: what the apiserver presents.
    pub client: CertKey,
}

/// Write (or reuse) the member's certificates under `spec.tls_dir`, as k3s's `genETCDCerts`.
pub fn write_certs(spec: &MemberSpec, pki: &ClusterPki) -> Result<EtcdTls> {
    let dir = &spec.tls_dir;
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !sans.contains(&spec.ip) {
        sans.push(spec.ip.clone());
    }
    let load_or = |base: &str, make: &dyn Fn() -> Result<CertKey>| -> Result<CertKey> {
        let crt = dir.join(format!("{base}.crt"));
        let key = dir.join(format!("{base}.key"));
        if crt.exists() && key.exists() {
            return Ok(CertKey {
                cert_pem: std::fs::read_to_string(&crt)
                    .with_context(|| format!("read {}", crt.display()))?,
                key_pem: std::fs::read_to_string(&key)
                    .with_context(|| format!("read {}", key.display()))?,
            });
        }
        let ck = make()?;
        tls_files::write_file(&crt, ck.cert_pem.as_bytes(), 0o644)?;
        tls_files::write_file(&key, ck.key_pem.as_bytes(), 0o600)?;
        Ok(ck)
    };
    load_or("server-client", &|| {
        pki::issue_server_client(&pki.etcd_server_ca, "etcd-server", &sans)
    })?;
    load_or("peer-server-client", &|| {
        pki::issue_server_client(&pki.etcd_peer_ca, "etcd-peer", &sans)
    })?;
    let client = load_or("client", &|| {
        pki::issue_client(&pki.etcd_server_ca, "etcd-client", &[])
    })?;
    Ok(EtcdTls {
        server_ca_pem: pki.etcd_server_ca.cert_pem.clone(),
        client,
    })
}

/// How a member starts.
#[derive(Debug, Clone)]
pub enum Initial {
    /// "Starting etcd for new cluster": the only member.
    New,
    /// Joining (or rejoining) an existing cluster: every member's `name=peerURL`.
    Existing(Vec<(String, String)>),
    /// A restart from the data dir (etcd ignores the initial-cluster flags then).
    Restart,
    /// `--cluster-reset`: restart from the data dir as the only member (`--force-new-cluster`).
    ForceNewCluster,
}

/// The etcd binary (`K3S_STANDIN_ETCD` overrides, for tests).
pub fn binary() -> PathBuf {
    std::env::var_os("K3S_STANDIN_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// The command line of a member (without the binary).
pub fn args(spec: &MemberSpec, initial: &Initial) -> Vec<String> {
    let tls = |f: &str| spec.tls_dir.join(f).display().to_string();
    let mut client_urls = vec![spec.client_url()];
    // k3s also listens on loopback; on a loopback node address that would clash with the other
    // nodes of a loopback test cluster.
    let loopback: bool = spec
        .ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        client_urls.push(format!("https://127.0.0.1:{}", spec.client_port));
    }
    let mut a = vec![
        format!("--name={}", spec.name),
        format!("--data-dir={}", spec.data_dir.display()),
        format!("--listen-client-urls={}", client_urls.join(",")),
        format!("--advertise-client-urls={}", spec.client_url()),
        format!("--listen-peer-urls={}", spec.peer_url()),
        format!("--initial-advertise-peer-urls={}", spec.peer_url()),
        "--client-cert-auth".to_string(),
        format!("--trusted-ca-file={}", tls("server-ca.crt")),
        format!("--cert-file={}", tls("server-client.crt")),
        format!("--key-file={}", tls("server-client.key")),
        "--peer-client-cert-auth".to_string(),
        format!("--peer-trusted-ca-file={}", tls("peer-ca.crt")),
        format!("--peer-cert-file={}", tls("peer-server-client.crt")),
        format!("--peer-key-file={}", tls("peer-server-client.key")),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
        format!("--election-timeout={ELECTION_MS}"),
        "--logger=zap".to_string(),
        "--log-level=error".to_string(),
        "--log-outputs=stderr".to_string(),
        // k3s: `etcd-snapshot-*` are its own; etcd keeps a short history of revisions.
        "--auto-compaction-mode=periodic".to_string(),
        "--auto-compaction-retention=5m".to_string(),
    ];
    match initial {
        Initial::New => {
            a.push(format!(
                "--initial-cluster={}={}",
                spec.name,
                spec.peer_url()
            ));
            a.push("--initial-cluster-state=new".to_string());
        }
        Initial::Existing(members) => {
            let list: Vec<String> = members.iter().map(|(n, u)| format!("{n}={u}")).collect();
            a.push(format!("--initial-cluster={}", list.join(",")));
            a.push("--initial-cluster-state=existing".to_string());
        }
        Initial::Restart => {}
        Initial::ForceNewCluster => a.push("--force-new-cluster".to_string()),
    }
    a
}

/// This server's own member: its spec, certificates, a client of it, and the process.
pub struct LocalEtcd {
    pub spec: MemberSpec,
    pub tls: EtcdTls,
    /// A client of this member only (5 s deadline).
    pub client: EtcdClient,
    proc: tokio::sync::Mutex<Option<EtcdProcess>>,
}

impl LocalEtcd {
    /// Write the certificates; nothing runs yet.
    pub fn prepare(spec: MemberSpec, pki: &ClusterPki) -> Result<LocalEtcd> {
        let tls = write_certs(&spec, pki)?;
        let client = EtcdClient::new(&tls, vec![spec.client_url()], Duration::from_secs(5))?;
        Ok(LocalEtcd {
            spec,
            tls,
            client,
            proc: tokio::sync::Mutex::new(None),
        })
    }

    /// Start (or restart) the member.
    pub async fn start(&self, initial: &Initial) -> Result<()> {
        let mut p = self.proc.lock().await;
        if let Some(mut old) = p.take() {
            old.stop().await;
        }
        *p = Some(EtcdProcess::start(&self.spec, initial)?);
        Ok(())
    }

    /// Stop the member.
    pub async fn stop(&self) {
        if let Some(mut p) = self.proc.lock().await.take() {
            p.stop().await;
        }
    }

    /// Whether the process has exited (a data dir etcd refuses, a port in use, ...).
    pub async fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc
            .lock()
            .await
            .as_mut()
            .and_then(EtcdProcess::exited)
    }
}

/// etcd is part of the k3s process on a real server, so `ss -tlnp` shows 2379 and 2380 held by
/// `k3s` (the installer's preflight accepts ports held by k3s on a rerun). Running etcd through a
/// symlink named `k3s` (`server/db/standin/bin/k3s`) gives the child the same process name.
fn comm_link(spec: &MemberSpec, bin: &Path) -> Result<PathBuf> {
    let dir = spec
        .data_dir
        .parent()
        .unwrap_or(&spec.data_dir)
        .join("standin/bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let link = dir.join("k3s");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin, &link)
        .with_context(|| format!("link {} to {}", link.display(), bin.display()))?;
    Ok(link)
}

/// A running member (killed when dropped, and when the stand-in dies: `setpriv --pdeathsig`).
pub struct EtcdProcess {
    child: tokio::process::Child,
}

impl EtcdProcess {
    /// Start the member; it is not yet healthy (see [`EtcdClient::wait_healthy`]).
    pub fn start(spec: &MemberSpec, initial: &Initial) -> Result<EtcdProcess> {
        // etcd wants its data dir private (`pkg/fileutil`: "The recommended permission is
        // -rwx------").
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("create {}", spec.data_dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&spec.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", spec.data_dir.display()))?;
        let bin = binary();
        let link = comm_link(spec, &bin)?;
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.arg("--pdeathsig=KILL")
            .arg(&link)
            .args(args(spec, initial))
            .stdin(std::process::Stdio::null())
            // etcd tells systemd READY=1 when it is up; that is k3s's to say, not etcd's.
            .env_remove("NOTIFY_SOCKET")
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("start etcd ({})", bin.display()))?;
        Ok(EtcdProcess { child })
    }

    /// The process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stop the member (SIGKILL: the stand-in's own shutdown is also abrupt for etcd's purposes).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// One member as etcd's `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty for a member added but not yet started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberInfo {
    fn from_json(v: &Value) -> Option<MemberInfo> {
        let id = match &v["ID"] {
            Value::String(s) => s.parse().ok()?,
            Value::Number(n) => n.as_u64()?,
            _ => return None,
        };
        let urls = |f: &str| -> Vec<String> {
            v[f].as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        Some(MemberInfo {
            id,
            name: v["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: urls("peerURLs"),
            client_urls: urls("clientURLs"),
            is_learner: v["isLearner"].as_bool().unwrap_or(false),
        })
    }

    /// etcd's `Member` JSON (what `/db/info` answers with).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ID": self.id,
            "name": self.name,
            "peerURLs": self.peer_urls,
            "clientURLs": self.client_urls,
        });
        if self.is_learner {
            v["isLearner"] = json!(true);
        }
        v
    }
}

/// Why an etcd request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// etcd answered with an error (`etcdserver: too many learner members in cluster`, ...).
    #[error("{0}")]
    Server(String),
    /// No member answered in time (`context deadline exceeded`).
    #[error("{DEADLINE_EXCEEDED}")]
    Deadline,
    /// No member could be reached.
    #[error("{0}")]
    Unavailable(String),
}

/// A key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_from_json(v: &Value) -> Option<KeyValue> {
    let dec = |f: &str| -> Option<Vec<u8>> {
        match v[f].as_str() {
            Some(s) => B64.decode(s).ok(),
            None => Some(Vec::new()),
        }
    };
    Some(KeyValue {
        key: dec("key")?,
        value: dec("value")?,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
    })
}

/// A client of the v3 JSON gateway, trying each endpoint in turn (as clientv3's balancer).
#[derive(Clone)]
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
}

impl EtcdClient {
    /// A client of `endpoints` (`https://ip:2379`) with the given request deadline.
    pub fn new(tls: &EtcdTls, endpoints: Vec<String>, deadline: Duration) -> Result<EtcdClient> {
        let http = client::with_ca_timeout(&tls.server_ca_pem, Some(&tls.client), Some(deadline))?;
        Ok(EtcdClient { http, endpoints })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn call_one(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let url = format!("{endpoint}{path}");
        let resp = self.http.post(&url).json(body).send().await.map_err(|e| {
            if e.is_timeout() {
                EtcdError::Deadline
            } else {
                EtcdError::Unavailable(client::go_error("POST", &url, &e))
            }
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| {
            if e.is_timeout() {
                EtcdError::Deadline
            } else {
                EtcdError::Unavailable(format!("{url}: {e}"))
            }
        })?;
        if !status.is_success() || v.get("error").is_some() {
            let msg = v["error"]
                .as_str()
                .or(v["message"].as_str())
                .unwrap_or("etcd error")
                .to_string();
            return Err(EtcdError::Server(msg));
        }
        Ok(v)
    }

    /// Send a request to the first endpoint that answers; an answer that is an error is final.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = EtcdError::Unavailable("no etcd endpoints".to_string());
        for ep in &self.endpoints {
            match self.call_one(ep, path, &body).await {
                Ok(v) => return Ok(v),
                Err(e @ EtcdError::Server(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `/health` of each endpoint, in order: whether it answers `{"health":"true"}`.
    pub async fn endpoint_health(&self, endpoint: &str) -> bool {
        let url = format!("{endpoint}/health");
        match self.http.get(&url).send().await {
            Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["health"] == "true"),
            Err(_) => false,
        }
    }

    /// Poll the first endpoint's `/health` until it is healthy or `timeout` passes.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let ep = self.endpoints.first().context("no etcd endpoint")?.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.endpoint_health(&ep).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("etcd at {ep} not healthy after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `MemberList`.
    pub async fn member_list(&self) -> Result<Vec<MemberInfo>, EtcdError> {
        let v = self.call("/v3/cluster/member/list", json!({})).await?;
        Ok(v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(MemberInfo::from_json)
            .collect())
    }

    /// `MemberAddAsLearner`: the new member and the whole list.
    pub async fn member_add_learner(
        &self,
        peer_url: &str,
    ) -> Result<(MemberInfo, Vec<MemberInfo>), EtcdError> {
        let v = self
            .call(
                "/v3/cluster/member/add",
                json!({"peerURLs": [peer_url], "isLearner": true}),
            )
            .await?;
        let member = MemberInfo::from_json(&v["member"])
            .ok_or_else(|| EtcdError::Server("member add: no member in the answer".into()))?;
        let all = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(MemberInfo::from_json)
            .collect();
        Ok((member, all))
    }

    /// `MemberPromote` (fails with `etcdserver: can only promote a learner member which is in
    /// sync with leader` until it has caught up).
    pub async fn member_promote(&self, id: u64) -> Result<(), EtcdError> {
        self.call("/v3/cluster/member/promote", json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// `MemberRemove`.
    pub async fn member_remove(&self, id: u64) -> Result<(), EtcdError> {
        self.call("/v3/cluster/member/remove", json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// `Put`: the revision of the write.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/kv/put",
                json!({"key": B64.encode(key), "value": B64.encode(value)}),
            )
            .await?;
        Ok(num(&v["header"]["revision"]))
    }

    /// `Range` of one key (linearizable read).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self
            .call("/v3/kv/range", json!({"key": B64.encode(key)}))
            .await?;
        Ok(v["kvs"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(kv_from_json))
    }

    /// `Range` of every key under `prefix`, and the store's revision.
    pub async fn list_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))}),
            )
            .await?;
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(kv_from_json)
            .collect();
        Ok((kvs, num(&v["header"]["revision"])))
    }

    /// `DeleteRange` of one key: the revision after the delete.
    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await?;
        Ok(num(&v["header"]["revision"]))
    }
}

/// The end of a prefix range (`clientv3.GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }

    #[test]
    fn a_new_member_lists_only_itself_and_a_joiner_lists_everyone() {
        let spec = MemberSpec::new("node1-0123abcd", Path::new("/d/server"), "10.0.0.11");
        let a = args(&spec, &Initial::New);
        assert!(a.contains(&"--initial-cluster=node1-0123abcd=https://10.0.0.11:2380".to_string()));
        assert!(a.contains(&"--initial-cluster-state=new".to_string()));
        assert!(a.contains(
            &"--listen-client-urls=https://10.0.0.11:2379,https://127.0.0.1:2379".to_string()
        ));
        assert!(a.contains(&"--data-dir=/d/server/db/etcd".to_string()));
        let j = args(
            &spec,
            &Initial::Existing(vec![
                ("node0-ffffffff".into(), "https://10.0.0.10:2380".into()),
                ("node1-0123abcd".into(), "https://10.0.0.11:2380".into()),
            ]),
        );
        assert!(j.contains(
            &"--initial-cluster=node0-ffffffff=https://10.0.0.10:2380,node1-0123abcd=https://10.0.0.11:2380"
                .to_string()
        ));
        assert!(j.contains(&"--initial-cluster-state=existing".to_string()));
        let r = args(&spec, &Initial::Restart);
        assert!(!r.iter().any(|x| x.starts_with("--initial-cluster")));
    }

    #[test]
    fn a_loopback_member_listens_only_on_its_own_address() {
        let spec = MemberSpec::new("n-1", Path::new("/d/server"), "127.0.0.7");
        let a = args(&spec, &Initial::New);
        assert!(a.contains(&"--listen-client-urls=https://127.0.0.7:2379".to_string()));
    }

    #[test]
    fn member_json_round_trips_ids_as_etcd_prints_them() {
        let v = json!({"ID": "11417610130673999598", "name": "n1-deadbeef",
            "peerURLs": ["https://10.0.0.11:2380"], "clientURLs": [], "isLearner": true});
        let m = MemberInfo::from_json(&v).unwrap();
        assert_eq!(m.id, 11417610130673999598);
        assert!(m.is_learner);
        assert_eq!(m.to_json()["isLearner"], json!(true));
    }
}
