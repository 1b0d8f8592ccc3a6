//! `k3s server`: bootstrap or join the cluster, serve the supervisor and the Kubernetes API on
//! 6443, tell systemd when ready, and run this node's agent.
//!
//! The sequence follows `pkg/cli/server/server.go`, `pkg/daemons/control/server.go` `prepare` and
//! `pkg/cluster/bootstrap.go` (k3s release-1.36):
//! 1. `Starting k3s v1.36.2+k3s1 (...)`.
//! 2. Bootstrap: a data dir that already holds cluster state restarts as it was ("Managed etcd
//!    cluster bootstrap already complete and initialized"; `server:` and `cluster-init` are then
//!    ignored). Otherwise with `server:` it joins (token required; CA hash checked against
//!    `/cacerts`; critical settings compared via `/v1-k3s/config`; CAs fetched from
//!    `/v1-k3s/server-bootstrap` with `server:<password>`; then the etcd learner join), with
//!    `cluster-init` it creates a new embedded-etcd cluster, and with neither it runs a single
//!    server on the embedded SQLite datastore, which other servers cannot join.
//! 3. The supervisor listener starts; `server/token`, `node-token`, `agent-token` and
//!    `/etc/rancher/k3s/k3s.yaml` are written.
//! 4. After etcd (for a joiner: after promotion from learner) and the apiserver are up — the
//!    configurable `startup-delay` — "Kube API server is now running", "k3s is up and running",
//!    and `READY=1` to systemd.
//! 5. The node's agent starts (unless `disable-agent`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::api::kube::{self, KubeCtx, KubeRequest};
use super::api::{self, ConnInfo};
use super::client;
use super::cluster::{JoinError, Membership};
use super::config::{self, ServerConfig, critical_mismatches};
use super::etcd::{Initial, LocalEtcd, MemberSpec};
use super::faults::{Faults, LiveFaults};
use super::flags::Flags;
use super::log;
use super::paths::Root;
use super::pki::{self, CertKey};
use super::store::admission::{ClusterParams, parse_cidr};
use super::store::{ApiError, Store};
use super::tls_files::{self, ClusterPki, Passwd};
use super::token;
use super::version;

/// How this server holds the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Holds the store: the first server (`etcd: true`) or a single SQLite server.
    Owner { etcd: bool },
    /// Joined an embedded-etcd cluster; the store is on `owner`.
    Member { owner: String },
}

/// Access to the store on another server.
pub struct Remote {
    pub url: String,
    pub client: reqwest::Client,
    pub stream_client: reqwest::Client,
}

/// A running server.
pub struct Server {
    pub root: Root,
    pub cfg: ServerConfig,
    pub faults: LiveFaults,
    pub server_dir: PathBuf,
    pub pki: ClusterPki,
    pub admin: CertKey,
    pub server_pw: String,
    pub node_pw: String,
    pub role: Role,
    pub store: Option<Arc<Store>>,
    pub membership: Option<Arc<Membership>>,
    /// This server's etcd member (embedded-etcd servers).
    pub etcd: Option<Arc<LocalEtcd>>,
    pub remote: Option<Remote>,
    pub ready: AtomicBool,
    pub member_name: String,
    pub local_url: String,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Signs and verifies service-account tokens with `server/tls/service.key`.
    pub signer: Arc<super::auth::jwt::Signer>,
}

/// A run error: logged as k3s's main does (`logrus.Fatalf("Error: %v", err)`).
pub struct Fatal(pub String);

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal(format!("{e:#}"))
    }
}

const PREPARE: &str = "starting kubernetes: preparing server";

fn bootstrap_err(msg: impl std::fmt::Display) -> Fatal {
    Fatal(format!(
        "{PREPARE}: failed to bootstrap cluster data: {msg}"
    ))
}

fn check_err(msg: impl std::fmt::Display) -> Fatal {
    bootstrap_err(format!(
        "failed to check if bootstrap data has been initialized: {msg}"
    ))
}

/// The error text k3s's client gives for a non-2xx response (`readBody`): the Status message
/// when the body is a Status, else `url: 401 Unauthorized`.
pub async fn response_error(url: &str, resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && v.get("kind").and_then(Value::as_str) == Some("Status")
        && let Some(m) = v.get("message").and_then(Value::as_str)
    {
        return m.to_string();
    }
    format!("{url}: {}", client::status_text(status))
}

fn status_response(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        400 => "BadRequest",
        503 => "ServiceUnavailable",
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    let e = ApiError {
        code,
        reason,
        message: message.to_string(),
        details: None,
    };
    kube::error_response(&e)
}

fn text(code: StatusCode, s: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(s.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

fn json_ok(v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// `user:password` from a basic Authorization header.
fn basic_auth(h: &HeaderMap) -> Option<(String, String)> {
    let v = h.get("authorization")?.to_str().ok()?;
    let b = v.strip_prefix("Basic ")?;
    let dec = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(dec).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Server {
    fn is_server_auth(&self, h: &HeaderMap) -> bool {
        basic_auth(h).is_some_and(|(u, p)| u == "server" && p == self.server_pw)
    }

    fn is_node_auth(&self, h: &HeaderMap, conn: &ConnInfo) -> bool {
        basic_auth(h).is_some_and(|(u, p)| u == "node" && p == self.node_pw)
            || conn
                .client
                .as_ref()
                .is_some_and(|c| c.organizations.iter().any(|o| o == "system:nodes"))
    }

    /// Whether the apiserver is ready (and, on a joined server, the store is reachable).
    pub fn api_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.faults.get().never_ready
    }

    async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        stream: bool,
    ) -> Response<Body> {
        let Some(remote) = &self.remote else {
            return status_response(503, "apiserver not ready");
        };
        let url = format!("{}{}", remote.url, path_and_query);
        let c = if stream {
            &remote.stream_client
        } else {
            &remote.client
        };
        let mut rb = c.request(method.clone(), &url).body(body);
        for h in [
            "content-type",
            "accept",
            "user-agent",
            "authorization",
            "impersonate-user",
            "impersonate-group",
        ] {
            for v in headers.get_all(h) {
                rb = rb.header(h, v.clone());
            }
        }
        // Tell the first server which node forwarded (for `/db/info` locality and logs).
        rb = rb.header(
            "x-k3s-standin-forwarded-by",
            self.cfg.node.node_name.clone(),
        );
        match rb.send().await {
            Ok(resp) => {
                let mut out = Response::builder().status(resp.status().as_u16());
                for (k, v) in resp.headers() {
                    if matches!(k.as_str(), "content-type" | "warning" | "cache-control") {
                        out = out.header(k.clone(), v.clone());
                    }
                }
                let stream = futures::StreamExt::map(resp.bytes_stream(), |r| {
                    r.map_err(std::io::Error::other)
                });
                out.body(Body::from_stream(stream))
                    .unwrap_or_else(|_| status_response(500, "forward"))
            }
            Err(e) => status_response(
                503,
                &format!(
                    "etcd cluster is unavailable: {}",
                    client::go_error(method.as_str(), &url, &e)
                ),
            ),
        }
    }

    /// The HTTP handler for everything on 6443.
    async fn dispatch(self: Arc<Self>, req: Request) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let conn = parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or(ConnInfo {
                peer: SocketAddr::from(([0, 0, 0, 0], 0)),
                client: None,
            });
        let body = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| path.clone());
        let faults = self.faults.get();
        if faults.lose_node {
            // A lost node answers nothing; closing the connection is the closest thing.
            return status_response(503, "node lost");
        }
        match (parts.method.clone(), path.as_str()) {
            (Method::GET, "/ping") => return text(StatusCode::OK, "pong"),
            (Method::GET, "/cacerts") => {
                return text(StatusCode::OK, self.pki.server_ca.cert_pem.clone());
            }
            (_, "/db/info") => {
                let local = conn.peer.ip().is_loopback()
                    && parts.headers.get("x-k3s-standin-forwarded-by").is_none();
                if !(local || self.is_server_auth(&parts.headers)) {
                    return status_response(401, "not authorized");
                }
                return match (&self.role, &self.membership) {
                    (Role::Owner { etcd: true }, Some(m)) => match &self.etcd {
                        Some(e) => match e.client.member_list().await {
                            Ok(list) => json_ok(&json!({
                                "members": list.iter().map(|x| x.to_json()).collect::<Vec<_>>()
                            })),
                            Err(err) => status_response(503, &err.to_string()),
                        },
                        None => json_ok(&m.info()),
                    },
                    (Role::Owner { etcd: false }, _) => kube::error_response(&ApiError::not_found(
                        super::store::resources::core("namespaces"),
                        "db",
                    )),
                    _ => {
                        let mut h = parts.headers.clone();
                        if !self.is_server_auth(&h) {
                            let v = base64::engine::general_purpose::STANDARD
                                .encode(format!("server:{}", self.server_pw));
                            if let Ok(v) = HeaderValue::from_str(&format!("Basic {v}")) {
                                h.insert("authorization", v);
                            }
                        }
                        self.forward(parts.method, &pq, &h, body, false).await
                    }
                };
            }
            (Method::POST, "/db/snapshot") => {
                if !self.is_server_auth(&parts.headers) {
                    return status_response(401, "not authorized");
                }
                return super::snapshot::handle(&self, &body).await;
            }
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("/v1-k3s/") {
            return self
                .supervisor(parts.method, rest, &pq, &parts.headers, &conn, body)
                .await;
        }
        // The Kubernetes API: client certificates or service-account tokens
        // (anonymous-auth=false); see `auth`.
        let Some(user) =
            super::auth::authenticate(&parts.headers, &conn, &self.signer, self.store.as_deref())
        else {
            return kube::error_response(&ApiError::unauthorized());
        };
        if matches!(path.as_str(), "/readyz" | "/livez" | "/healthz") {
            let verbose = parts.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "verbose" || p.starts_with("verbose="))
            });
            // The etcd checks follow this server's own member (etcd's /health: a leader, and
            // not a learner); without quorum /readyz fails naming them, as on k3s.
            let etcd_ok = match (&self.etcd, path.as_str()) {
                (Some(e), "/readyz") => e.client.endpoint_health(&e.spec.client_url()).await,
                _ => true,
            };
            let ready = path == "/livez" || (self.api_ready() && etcd_ok);
            return kube::health(&path, verbose, ready);
        }
        if !self.api_ready() {
            return status_response(503, "apiserver not ready");
        }
        match &self.store {
            Some(store) => {
                let req = KubeRequest::from_parts(parts.method, &parts.uri, &parts.headers, body);
                let ctx = KubeCtx {
                    server_address: format!("{}:{}", self.cfg.advertise_ip(), self.cfg.https_port),
                    user,
                    signer: self.signer.clone(),
                };
                kube::handle(store, req, &ctx).await
            }
            None => {
                let stream = parts
                    .uri
                    .query()
                    .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
                let h = super::auth::forward_headers(&parts.headers, &conn);
                self.forward(parts.method, &pq, &h, body, stream).await
            }
        }
    }

    async fn supervisor(
        &self,
        method: Method,
        rest: &str,
        pq: &str,
        headers: &HeaderMap,
        conn: &ConnInfo,
        body: Bytes,
    ) -> Response<Body> {
        let peer = conn.peer;
        let deny = |code: u16, msg: &str| {
            log::error(format!("Sending HTTP/1.1 {code} response to {peer}: {msg}"));
            status_response(code, msg)
        };
        match rest {
            "readyz" => {
                if !self.is_node_auth(headers, conn) {
                    return deny(401, "not authorized");
                }
                if self.api_ready() {
                    text(StatusCode::OK, "ok")
                } else {
                    status_response(503, "runtime core not ready")
                }
            }
            "config" => {
                if !self.is_node_auth(headers, conn) {
                    return deny(401, "not authorized");
                }
                json_ok(
                    &json!({"CriticalControlArgs": self.cfg.critical(), "ClusterInit": self.cfg.cluster_init, "DisableKubeProxy": self.cfg.disable_kube_proxy}),
                )
            }
            "client-kube-proxy.crt" => {
                // k3s's agent fetches kube-proxy's client certificate (CN system:kube-proxy,
                // bound to system:node-proxier) with the node password.
                if !self.is_node_auth(headers, conn) {
                    return deny(401, "not authorized");
                }
                if !self.api_ready() {
                    return deny(503, "runtime core not ready");
                }
                match pki::issue_client(&self.pki.client_ca, "system:kube-proxy", &[]) {
                    Ok(ck) => json_ok(
                        &json!({"cert": ck.cert_pem, "key": ck.key_pem, "ca": self.pki.server_ca.cert_pem}),
                    ),
                    Err(e) => deny(500, &e.to_string()),
                }
            }
            "apiservers" => {
                if !self.is_node_auth(headers, conn) {
                    return deny(401, "not authorized");
                }
                let list: Vec<String> = match &self.membership {
                    Some(m) => m
                        .members()
                        .iter()
                        .map(|x| format!("{}:{}", x.address, self.cfg.https_port))
                        .collect(),
                    None => vec![format!(
                        "{}:{}",
                        self.cfg.advertise_ip(),
                        self.cfg.https_port
                    )],
                };
                json_ok(&json!(list))
            }
            "server-bootstrap" => {
                if !self.is_server_auth(headers) {
                    return deny(401, "not authorized");
                }
                if self.role == (Role::Owner { etcd: false }) {
                    log::warn(format!(
                        "Received HTTP bootstrap request from {peer}, but embedded etcd is not enabled."
                    ));
                    return deny(400, "etcd disabled");
                }
                match tls_files::bootstrap_data(&self.server_dir) {
                    Ok(mut v) => {
                        let owner = match &self.role {
                            Role::Member { owner } => owner.clone(),
                            Role::Owner { .. } => format!(
                                "https://{}:{}",
                                self.cfg.advertise_ip(),
                                self.cfg.https_port
                            ),
                        };
                        v["standin"] = json!({"owner": owner});
                        json_ok(&v)
                    }
                    Err(e) => deny(500, &e.to_string()),
                }
            }
            "serving-kubelet.crt" | "client-kubelet.crt" => {
                if !self.is_node_auth(headers, conn) {
                    return deny(401, "not authorized");
                }
                if self.faults.get().refuse_joins {
                    return deny(503, "runtime core not ready");
                }
                if !self.api_ready() {
                    return deny(503, "runtime core not ready");
                }
                let node = headers
                    .get("k3s-node-name")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let pw = headers
                    .get("k3s-node-password")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if node.is_empty() || pw.is_empty() {
                    return deny(400, "node name and password are required");
                }
                let check = match &self.membership {
                    Some(m) => m.check_node_password(&node, &pw),
                    None => match &self.remote {
                        Some(r) => {
                            let url = format!("{}/v1-k3s/standin/node-password", r.url);
                            let res = r
                                .client
                                .post(&url)
                                .basic_auth("server", Some(&self.server_pw))
                                .json(&json!({"node": node, "password": pw}))
                                .send()
                                .await;
                            match res {
                                Ok(resp) if resp.status().is_success() => Ok(()),
                                Ok(resp) if resp.status().as_u16() == 403 => {
                                    Err("hash does not match".to_string())
                                }
                                Ok(resp) => return deny(503, &response_error(&url, resp).await),
                                Err(e) => return deny(503, &client::go_error("POST", &url, &e)),
                            }
                        }
                        None => Ok(()),
                    },
                };
                if let Err(e) = check {
                    return deny(
                        403,
                        &format!("unable to verify password for node '{node}': {e}"),
                    );
                }
                match pki::issue_client(
                    &self.pki.client_ca,
                    &format!("system:node:{node}"),
                    &["system:nodes"],
                ) {
                    Ok(ck) => json_ok(
                        &json!({"cert": ck.cert_pem, "key": ck.key_pem, "ca": self.pki.server_ca.cert_pem}),
                    ),
                    Err(e) => deny(500, &e.to_string()),
                }
            }
            "standin/node-password" => {
                if !self.is_server_auth(headers) {
                    return deny(401, "not authorized");
                }
                let Some(m) = &self.membership else {
                    return self.forward(method, pq, headers, body, false).await;
                };
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let node = v["node"].as_str().unwrap_or_default();
                let pw = v["password"].as_str().unwrap_or_default();
                match m.check_node_password(node, pw) {
                    Ok(()) => json_ok(&json!({})),
                    Err(e) => status_response(403, &e),
                }
            }
            "standin/etcd-join" | "standin/etcd-member" => {
                if !self.is_server_auth(headers) {
                    return deny(401, "not authorized");
                }
                if rest == "standin/etcd-join" && self.faults.get().refuse_joins {
                    return json_response(409, &json!({"retry": super::cluster::UNHEALTHY}));
                }
                let Some(m) = &self.membership else {
                    if self.role == (Role::Owner { etcd: false }) {
                        return deny(400, "etcd disabled");
                    }
                    return self.forward(method, pq, headers, body, false).await;
                };
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let name = v["name"].as_str().unwrap_or_default();
                if rest == "standin/etcd-member" {
                    return match m.member(name) {
                        Some(x) => json_ok(&serde_json::to_value(x).unwrap_or_default()),
                        None => status_response(404, "member not found"),
                    };
                }
                match m.join(
                    name,
                    v["node_name"].as_str().unwrap_or_default(),
                    v["address"].as_str().unwrap_or_default(),
                    false,
                ) {
                    Ok(x) => match &self.etcd {
                        Some(e) => match real_join(e, &x).await {
                            Ok(initial) => {
                                let mut out = serde_json::to_value(&x).unwrap_or_default();
                                out["initial_cluster"] = json!(initial);
                                json_ok(&out)
                            }
                            Err(msg) => json_response(409, &json!({"retry": msg})),
                        },
                        None => json_ok(&serde_json::to_value(x).unwrap_or_default()),
                    },
                    Err(JoinError::Retry(msg)) => json_response(409, &json!({"retry": msg})),
                    Err(JoinError::Fatal(msg)) => json_response(409, &json!({"fatal": msg})),
                }
            }
            "standin/state" => {
                if !self.is_server_auth(headers) {
                    return deny(401, "not authorized");
                }
                match &self.store {
                    Some(s) => {
                        let _ = s.flush();
                        let p = self.server_dir.join("db/standin/state.json");
                        match std::fs::read(&p) {
                            Ok(b) => {
                                let mut r = Response::new(Body::from(b));
                                r.headers_mut().insert(
                                    "content-type",
                                    HeaderValue::from_static("application/json"),
                                );
                                r
                            }
                            Err(e) => deny(500, &e.to_string()),
                        }
                    }
                    None => self.forward(method, pq, headers, body, false).await,
                }
            }
            _ => status_response(404, "not found"),
        }
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = json_ok(v);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// `MemberAddAsLearner` on the real cluster for a member the modelled list accepted (unless it is
/// already in), and the `name=peerURL` list the joiner starts with.
async fn real_join(
    e: &LocalEtcd,
    x: &super::cluster::Member,
) -> Result<Vec<(String, String)>, String> {
    let url = super::cluster::peer_url(&x.address);
    let list = e.client.member_list().await.map_err(|e| e.to_string())?;
    let list = if list.iter().any(|m| m.peer_urls.contains(&url)) {
        list
    } else {
        e.client
            .member_add_learner(&url)
            .await
            .map_err(|e| e.to_string())?
            .1
    };
    Ok(list
        .iter()
        .map(|m| {
            let name = if m.peer_urls.contains(&url) {
                x.name.clone()
            } else {
                m.name.clone()
            };
            (name, m.peer_urls.first().cloned().unwrap_or_default())
        })
        .filter(|(n, _)| !n.is_empty())
        .collect())
}

/// Start this server's member and wait (boundedly) until it is healthy.
async fn start_member(e: &LocalEtcd, initial: &Initial, wait: Duration) {
    if let Err(err) = e.start(initial).await {
        log::error(format!("Failed to start etcd: {err:#}"));
        return;
    }
    if let Err(err) = e.client.wait_healthy(wait).await {
        log::warn(format!(
            "Waiting for etcd server to become available: {err:#}"
        ));
    }
}

/// Where a server keeps its role.
fn role_file(server_dir: &std::path::Path) -> PathBuf {
    server_dir.join("db/standin/role.json")
}

/// The etcd member name file (`pkg/etcd/etcd.go` `nameFile`).
fn name_file(server_dir: &std::path::Path) -> PathBuf {
    server_dir.join("db/etcd/name")
}

fn member_name(server_dir: &std::path::Path, node_name: &str) -> String {
    if let Ok(n) = std::fs::read_to_string(name_file(server_dir))
        && !n.trim().is_empty()
    {
        return n.trim().to_string();
    }
    let n = format!("{node_name}-{}", &hex::encode(rand::random::<[u8; 4]>()));
    let _ = tls_files::write_file(&name_file(server_dir), n.as_bytes(), 0o600);
    n
}

/// What a successful join hands over.
struct Joined {
    owner: String,
}

/// The join sequence of `pkg/cluster/bootstrap.go` (`shouldBootstrapLoad`, `compareConfig`,
/// `httpBootstrap`).
async fn join_bootstrap(
    cfg: &ServerConfig,
    server_dir: &std::path::Path,
    token_str: Option<&str>,
) -> Result<Joined, Fatal> {
    let Some(tok) = token_str else {
        return Err(check_err("token is required to join a cluster"));
    };
    let info =
        token::parse(tok).map_err(|e| check_err(format!("failed to validate token: {e}")))?;
    let url = cfg.node.server_url.trim_end_matches('/').to_string();
    if !url.starts_with("https://") {
        return Err(check_err(format!(
            "failed to validate token: only https:// URLs are supported, invalid scheme: {url}"
        )));
    }
    let ca = client::get_cacerts(&url)
        .await
        .map_err(|e| check_err(format!("failed to validate token: {e}")))?;
    match token::check_ca(&info, &ca) {
        token::CaCheck::Ok => {}
        token::CaCheck::NoHash => log::warn(token::NO_HASH_WARNING),
        token::CaCheck::Mismatch(m) => {
            return Err(check_err(format!("failed to validate token: {m}")));
        }
    }
    log::info("Managed etcd cluster not yet initialized");
    let ca_pem = String::from_utf8_lossy(&ca).to_string();
    let http = client::with_ca(&ca_pem, None).map_err(bootstrap_err)?;
    // compareConfig: as user "node" with the agent token if configured, else the token.
    let node_pw = match &cfg.agent_token {
        Some(a) => token::parse(a.expose())
            .map(|i| i.password)
            .unwrap_or_else(|_| a.expose().to_string()),
        None => info.password.clone(),
    };
    let config_url = format!("{url}/v1-k3s/config");
    match http
        .get(&config_url)
        .basic_auth("node", Some(&node_pw))
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => {
            let v: Value = resp.json().await.unwrap_or_default();
            let mism = critical_mismatches(&cfg.critical(), &v["CriticalControlArgs"]);
            if !mism.is_empty() {
                for m in &mism {
                    log::warn(format!("critical configuration mismatched: {m}"));
                }
                return Err(bootstrap_err(
                    "failed to validate server configuration: critical configuration value mismatch between servers",
                ));
            }
        }
        Ok(resp) => log::warn(format!(
            "Skipping cluster configuration validation: {}",
            response_error(&config_url, resp).await
        )),
        Err(e) => log::warn(format!(
            "Skipping cluster configuration validation: {}",
            client::go_error("GET", &config_url, &e)
        )),
    }
    let boot_url = format!("{url}/v1-k3s/server-bootstrap");
    let resp = http
        .get(&boot_url)
        .basic_auth("server", Some(&info.password))
        .send()
        .await
        .map_err(|e| bootstrap_err(client::go_error("GET", &boot_url, &e)))?;
    if !resp.status().is_success() {
        return Err(bootstrap_err(response_error(&boot_url, resp).await));
    }
    let data: Value = resp.json().await.map_err(bootstrap_err)?;
    tls_files::write_bootstrap_data(server_dir, &data)
        .map_err(|e| bootstrap_err(format!("{e:#}")))?;
    let owner = data
        .pointer("/standin/owner")
        .and_then(Value::as_str)
        .unwrap_or(&url)
        .to_string();
    Ok(Joined { owner })
}

/// The etcd learner join (`pollJoin`), then wait for promotion.
async fn etcd_join(srv: &Arc<Server>) -> Result<(), Fatal> {
    let Some(remote) = &srv.remote else {
        return Ok(());
    };
    let initial: Vec<(String, String)>;
    let address = srv.cfg.advertise_ip();
    let join_url = format!("{}/v1-k3s/standin/etcd-join", remote.url);
    let body =
        json!({"name": srv.member_name, "node_name": srv.cfg.node.node_name, "address": address});
    loop {
        if srv.shutdown.is_cancelled() {
            return Ok(());
        }
        let res = remote
            .client
            .post(&join_url)
            .basic_auth("server", Some(&srv.server_pw))
            .json(&body)
            .send()
            .await;
        match res {
            Ok(resp) if resp.status().is_success() => {
                let m: Value = resp.json().await.unwrap_or_default();
                if m["is_learner"].as_bool() == Some(true) {
                    log::info(format!(
                        "Starting etcd to join cluster with members as learner {}",
                        srv.member_name
                    ));
                }
                initial = serde_json::from_value(m["initial_cluster"].clone()).unwrap_or_default();
                break;
            }
            Ok(resp) if resp.status().as_u16() == 409 => {
                let v: Value = resp.json().await.unwrap_or_default();
                if let Some(f) = v["fatal"].as_str() {
                    let _ = std::fs::remove_file(name_file(&srv.server_dir));
                    return Err(Fatal(format!("etcd cluster join failed: {f}")));
                }
                let msg = v["retry"]
                    .as_str()
                    .unwrap_or("etcdserver: unhealthy cluster");
                log::info(format!(
                    "Waiting for other members to finish joining etcd cluster: {msg}"
                ));
            }
            Ok(resp) => {
                let e = response_error(&join_url, resp).await;
                log::info(format!(
                    "Waiting to retrieve etcd cluster member list: failed to get MemberList from server: {e}"
                ));
            }
            Err(e) => log::info(format!(
                "Waiting to retrieve etcd cluster member list: failed to get MemberList from server: {}",
                client::go_error("POST", &join_url, &e)
            )),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(e) = &srv.etcd {
        let how = if e.spec.has_data() || initial.is_empty() {
            Initial::Restart
        } else {
            Initial::Existing(initial)
        };
        if let Err(err) = e.start(&how).await {
            return Err(Fatal(format!("etcd cluster join failed: {err:#}")));
        }
    }
    // Wait for promotion from learner to voting member.
    let member_url = format!("{}/v1-k3s/standin/etcd-member", remote.url);
    let mut last_log = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        if srv.shutdown.is_cancelled() {
            return Ok(());
        }
        let res = remote
            .client
            .post(&member_url)
            .basic_auth("server", Some(&srv.server_pw))
            .json(&json!({"name": srv.member_name}))
            .send()
            .await;
        if let Ok(resp) = res
            && resp.status().is_success()
        {
            let m: Value = resp.json().await.unwrap_or_default();
            if m["is_learner"].as_bool() == Some(false) {
                if let Some(e) = &srv.etcd
                    && let Err(err) = e.client.wait_healthy(Duration::from_secs(10)).await
                {
                    log::warn(format!(
                        "Waiting for etcd server to become available: {err:#}"
                    ));
                }
                return Ok(());
            }
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            log::info(
                "Waiting for etcd server to become available: this server has not yet been promoted from learner to voting member",
            );
            last_log = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn server_password(cfg: &ServerConfig, passwd: &Passwd) -> String {
    // deps.go getServerPass: the configured token (its password part), else the stored one,
    // else a random one.
    if let Some(t) = &cfg.node.token {
        return token::parse(t.expose())
            .map(|i| i.password)
            .unwrap_or_else(|_| t.expose().to_string());
    }
    if let Some(p) = &passwd.server {
        return p.clone();
    }
    hex::encode(rand::random::<[u8; 16]>())
}

/// Run `k3s server` until SIGTERM. Returns the exit code.
pub async fn run(root: Root, flags: Flags) -> i32 {
    match run_inner(root, flags).await {
        Ok(code) => code,
        Err(Fatal(msg)) => log::fatal(format!("Error: {msg}")),
    }
}

async fn run_inner(root: Root, flags: Flags) -> Result<i32, Fatal> {
    let cfg = config::server(&root, &flags).map_err(|e| Fatal(e.0))?;
    log::set_debug(cfg.node.debug);
    log::info(format!(
        "Starting k3s {} ({})",
        version::current(),
        version::COMMIT
    ));
    let initial_faults = Faults::load(&root).map_err(Fatal)?;
    if initial_faults.crash_at_start {
        return Err(Fatal("k3s-standin fault injected: crash at start".into()));
    }
    let faults = LiveFaults::watch(root.clone(), initial_faults);
    let server_dir = root.path(cfg.node.data_dir.join("server"));
    let role_path = role_file(&server_dir);
    let mut role: Option<Role> = std::fs::read_to_string(&role_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let token_str = cfg.node.token.as_ref().map(|t| t.expose().to_string());

    if cfg.cluster_reset {
        return cluster_reset(&root, &cfg, &server_dir, role.as_ref()).await;
    }

    match &role {
        Some(Role::Owner { etcd: true }) | Some(Role::Member { .. }) => {
            log::info("Managed etcd cluster bootstrap already complete and initialized")
        }
        Some(Role::Owner { etcd: false }) => {
            log::info("Database tables and indexes are up to date")
        }
        None => {}
    }
    if role.is_none() {
        if !cfg.node.server_url.is_empty() {
            let joined = join_bootstrap(&cfg, &server_dir, token_str.as_deref()).await?;
            role = Some(Role::Member {
                owner: joined.owner,
            });
        } else if cfg.cluster_init {
            log::info("Managed etcd cluster initializing");
            role = Some(Role::Owner { etcd: true });
        } else {
            log::info(
                "Configuring sqlite3 database connection pooling: maxIdleConns=2, maxOpenConns=0, connMaxLifetime=0s",
            );
            role = Some(Role::Owner { etcd: false });
        }
    }
    let role = role.unwrap_or(Role::Owner { etcd: false });
    let pki = ClusterPki::load_or_generate(&server_dir).map_err(|e| {
        Fatal(format!(
            "{PREPARE}: failed to generate server dependencies: {e:#}"
        ))
    })?;
    tls_files::write_file(
        &role_path,
        serde_json::to_string(&role).unwrap_or_default().as_bytes(),
        0o600,
    )?;
    let mut passwd = Passwd::read(&server_dir);
    let server_pw = server_password(&cfg, &passwd);
    let agent_pw = cfg.agent_token.as_ref().map(|a| {
        token::parse(a.expose())
            .map(|i| i.password)
            .unwrap_or_else(|_| a.expose().to_string())
    });
    let node_pw = agent_pw.clone().unwrap_or_else(|| server_pw.clone());
    passwd.server = Some(server_pw.clone());
    passwd.node = Some(node_pw.clone());
    passwd.write(&server_dir)?;

    let admin = match (
        std::fs::read_to_string(server_dir.join("tls/client-admin.crt")),
        std::fs::read_to_string(server_dir.join("tls/client-admin.key")),
    ) {
        (Ok(c), Ok(k)) => CertKey {
            cert_pem: c,
            key_pem: k,
        },
        _ => {
            let ck = pki::issue_client(&pki.client_ca, "system:admin", &["system:masters"])?;
            tls_files::write_file(
                &server_dir.join("tls/client-admin.crt"),
                ck.cert_pem.as_bytes(),
                0o644,
            )?;
            tls_files::write_file(
                &server_dir.join("tls/client-admin.key"),
                ck.key_pem.as_bytes(),
                0o600,
            )?;
            ck
        }
    };
    let sans = pki::serving_sans(
        &cfg.node.node_ips,
        &config::hostname(),
        &cfg.tls_san,
        Some(cfg.bind_address.as_str()),
        &cfg.cluster_domain,
        &cfg.first_service_ip(),
    );
    let mut sans = sans;
    if !cfg.advertise_address.is_empty() {
        sans.push(cfg.advertise_address.clone());
    }
    let serving = pki::issue_server(&pki.server_ca, "k3s", &sans)?;
    tls_files::write_file(
        &server_dir.join("tls/serving-kube-apiserver.crt"),
        serving.cert_pem.as_bytes(),
        0o644,
    )?;
    tls_files::write_file(
        &server_dir.join("tls/serving-kube-apiserver.key"),
        serving.key_pem.as_bytes(),
        0o600,
    )?;

    let loopback = if cfg.bind_address.is_empty() || cfg.bind_address == "0.0.0.0" {
        "127.0.0.1".to_string()
    } else {
        cfg.bind_address.clone()
    };
    let local_url = format!("https://{loopback}:{}", cfg.https_port);
    let params = ClusterParams {
        service_cidr: parse_cidr(&cfg.service_cidr)
            .unwrap_or((std::net::Ipv4Addr::new(10, 43, 0, 0), 16)),
        node_port_range: cfg
            .service_node_port_range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or((30000, 32767)),
    };
    let member_name = member_name(&server_dir, &cfg.node.node_name);
    let local_etcd = match &role {
        Role::Owner { etcd: false } => None,
        _ => Some(Arc::new(
            LocalEtcd::prepare(
                MemberSpec::new(&member_name, &server_dir, &cfg.advertise_ip()),
                &pki,
            )
            .map_err(|e| Fatal(format!("{PREPARE}: etcd certificates: {e:#}")))?,
        )),
    };
    let (store, membership, remote) = match &role {
        Role::Owner { etcd } => {
            let store = Store::open(Some(server_dir.join("db/standin/state.json")), params)
                .map_err(|e| Fatal(format!("{PREPARE}: creating storage endpoint: {e:#}")))?;
            store.spawn_persister();
            let membership = etcd.then(|| {
                Arc::new(Membership {
                    store: store.clone(),
                    etcd: local_etcd.as_ref().map(|e| e.client.clone()),
                })
            });
            (Some(store), membership, None)
        }
        Role::Member { owner } => {
            let client = client::with_ca(&pki.server_ca.cert_pem, Some(&admin))?;
            let stream_client =
                client::with_ca_timeout(&pki.server_ca.cert_pem, Some(&admin), None)?;
            (
                None,
                None,
                Some(Remote {
                    url: owner.clone(),
                    client,
                    stream_client,
                }),
            )
        }
    };
    let signer = Arc::new(
        super::auth::jwt::Signer::new(
            &pki.service_key,
            &super::auth::jwt::issuer(&cfg.cluster_domain),
        )
        .map_err(|e| Fatal(format!("{PREPARE}: {e}")))?,
    );
    let srv = Arc::new(Server {
        root: root.clone(),
        cfg: cfg.clone(),
        faults: faults.clone(),
        server_dir: server_dir.clone(),
        pki: pki.clone(),
        admin: admin.clone(),
        server_pw: server_pw.clone(),
        node_pw: node_pw.clone(),
        role: role.clone(),
        store: store.clone(),
        membership: membership.clone(),
        etcd: local_etcd.clone(),
        remote,
        ready: AtomicBool::new(false),
        member_name: member_name.clone(),
        local_url: local_url.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        signer,
    });

    // The supervisor listener.
    let bind_ip = if cfg.bind_address.is_empty() {
        "0.0.0.0".to_string()
    } else {
        cfg.bind_address.clone()
    };
    let bind = format!("{bind_ip}:{}", cfg.https_port);
    let listener = tokio::net::TcpListener::bind(&bind).await.map_err(|e| {
        Fatal(format!(
            "{PREPARE}: failed to start supervisor listener: listen tcp {bind}: bind: {}",
            config::io_msg(&e).replace(
                "Address already in use (os error 98)",
                "address already in use"
            )
        ))
    })?;
    let tls = api::tls_config(
        &serving.cert_pem,
        &serving.key_pem,
        Some(&pki.client_ca.cert_pem),
    )?;
    let srv2 = srv.clone();
    let router = Router::new()
        .fallback(
            move |State(s): State<Arc<Server>>, req: Request| async move { s.dispatch(req).await },
        )
        .with_state(srv2);
    tokio::spawn(api::serve_tls(listener, tls, router, srv.shutdown.clone()));

    if let (Some(store), Some(m)) = (&store, &membership) {
        if let Some(e) = &local_etcd {
            let how = if e.spec.has_data() {
                Initial::Restart
            } else {
                log::info("Starting etcd for new cluster");
                Initial::New
            };
            start_member(e, &how, Duration::from_secs(10)).await;
        }
        m.init_first(&member_name, &cfg.node.node_name, &cfg.advertise_ip());
        m.spawn_promoter(faults.clone());
        let _ = store;
    }
    if let Some(store) = &store {
        super::controllers::spawn(store.clone(), &srv, faults.clone());
    }

    // Tokens and the kubeconfig exist before the API is ready, as in k3s.
    tls_files::write_tokens(
        &server_dir,
        &pki.server_ca.cert_pem,
        &server_pw,
        agent_pw.as_deref(),
    )?;
    log::info(format!(
        "Server node token is available at {}",
        cfg.node.data_dir.join("server/token").display()
    ));
    let kc_path = if cfg.write_kubeconfig.is_empty() {
        super::paths::k3s::KUBECONFIG.to_string()
    } else {
        cfg.write_kubeconfig.clone()
    };
    let kc = tls_files::kubeconfig(&local_url, &pki.server_ca.cert_pem, &admin);
    tls_files::write_kubeconfig(&root, &kc_path, &kc, &cfg.write_kubeconfig_mode)?;
    log::info(format!("Wrote kubeconfig {kc_path}"));

    // Join etcd as a learner and wait for promotion.
    if matches!(role, Role::Member { .. }) {
        let joined = tokio::select! {
            r = etcd_join(&srv) => r,
            _ = shutdown_signal() => return Ok(0),
        };
        if let Err(Fatal(msg)) = joined {
            log::error(format!(
                "Shutdown request received: {}",
                serde_json::to_string(&msg).unwrap_or_default()
            ));
            return Ok(0);
        }
    }
    if !matches!(role, Role::Owner { etcd: false }) {
        log::info("ETCD server is now running");
    }
    // The time the apiserver and controllers take to start.
    let delay = faults.get().startup_delay;
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown_signal() => return Ok(0),
    }
    // Never-ready: keep running without ever reporting ready.
    let notify_srv = srv.clone();
    let notifier = tokio::spawn(async move {
        loop {
            if !notify_srv.faults.get().never_ready {
                notify_srv.ready.store(true, Ordering::SeqCst);
                log::info("Kube API server is now running");
                log::info("k3s is up and running");
                if let Err(e) = super::notify::ready() {
                    log::warn(format!("Failed to notify systemd: {e}"));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    if !cfg.disable_agent {
        let agent_cfg = super::kubelet::AgentSetup {
            root: root.clone(),
            node: cfg.node.clone(),
            server_url: local_url.clone(),
            ca_pem: pki.server_ca.cert_pem.clone(),
            node_pw: node_pw.clone(),
            server_roles: !matches!(role, Role::Owner { etcd: false }),
            control_plane: true,
            faults: faults.clone(),
            shutdown: srv.shutdown.clone(),
        };
        tokio::spawn(super::kubelet::run_agent(agent_cfg));
    }
    tokio::spawn(super::manifests::run(srv.clone()));

    shutdown_signal().await;
    notifier.abort();
    srv.shutdown.cancel();
    if let Some(s) = &store {
        let _ = s.flush();
    }
    if let Some(e) = &local_etcd {
        e.stop().await;
    }
    Ok(0)
}

/// `--cluster-reset` (`pkg/cluster/managed.go`): on the first server, shrink the etcd membership
/// to this member and exit, telling the operator to restart without the flag.
async fn cluster_reset(
    root: &Root,
    cfg: &ServerConfig,
    server_dir: &std::path::Path,
    role: Option<&Role>,
) -> Result<i32, Fatal> {
    let _ = root;
    if !cfg.node.server_url.is_empty() {
        return Err(Fatal(
            "cannot perform cluster-reset while server URL is set - remove server from configuration before resetting".into(),
        ));
    }
    match role {
        Some(Role::Owner { etcd: true }) => {
            let store = Store::open(
                Some(server_dir.join("db/standin/state.json")),
                ClusterParams::default(),
            )?;
            let m = Membership {
                store: store.clone(),
                etcd: None,
            };
            let name = member_name(server_dir, &cfg.node.node_name);
            // The real member: restarted once as the only member of a new cluster.
            let pki = ClusterPki::load_or_generate(server_dir)?;
            let e = LocalEtcd::prepare(
                MemberSpec::new(&name, server_dir, &cfg.advertise_ip()),
                &pki,
            )?;
            if e.spec.has_data() {
                e.start(&Initial::ForceNewCluster).await?;
                let healthy = e.client.wait_healthy(Duration::from_secs(30)).await;
                e.stop().await;
                healthy?;
            }
            let keep: Vec<_> = m.members().into_iter().filter(|x| x.name == name).collect();
            store.set_extra(
                "etcd-members",
                serde_json::to_value(keep).unwrap_or_default(),
            );
            store.flush()?;
            log::info(
                "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes",
            );
            Ok(0)
        }
        _ => Err(Fatal(
            "k3s-standin: --cluster-reset is only modelled on the first (cluster-init) server"
                .into(),
        )),
    }
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
