//! Endpoint health from the workstation: every endpoint the application declares (for
//! example the gateway's `https://NODE:PORT/healthz` on every node) is requested with
//! reqwest, HTTPS checked against the appliance CA as the only trusted root (rustls with the
//! ring provider), with a timeout per attempt and a few retries. Used by the install's final
//! gate and by `installer status`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::spec::{AppSpec, NodeSet, Scheme};
use super::{AppError, ClusterFacts, url_host};

/// One endpoint on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The endpoint's name in app.yaml.
    pub name: String,
    /// The node it is checked on.
    pub node: String,
    pub address: IpAddr,
    pub url: String,
    pub scheme: Scheme,
    /// The workload that serves it (`Kind/name`), if declared.
    pub workload: Option<String>,
}

/// The endpoints of `spec` on the nodes of `facts`, one per (endpoint, node), in node order.
pub fn resolve(spec: &AppSpec, facts: &ClusterFacts) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for e in &spec.endpoints {
        for n in &facts.nodes {
            let wanted = match e.nodes {
                NodeSet::All => true,
                NodeSet::Servers => n.server,
                NodeSet::Agents => !n.server,
            };
            if !wanted {
                continue;
            }
            let scheme = match e.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            out.push(Endpoint {
                name: e.name.clone(),
                node: n.name.clone(),
                address: n.address,
                url: format!("{scheme}://{}:{}{}", url_host(n.address), e.port, e.path),
                scheme: e.scheme,
                workload: e.workload.clone(),
            });
        }
    }
    out
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Per request.
    pub timeout: Duration,
    /// Attempts before giving up on an endpoint.
    pub attempts: u32,
    /// Pause between attempts.
    pub interval: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            timeout: Duration::from_secs(5),
            attempts: 10,
            interval: Duration::from_secs(2),
        }
    }
}

/// How one endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointResult {
    pub endpoint: Endpoint,
    pub ok: bool,
    /// The HTTP status of the last answer, if there was one.
    pub status: Option<u16>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub attempts: u32,
    pub elapsed_ms: u64,
}

/// A client that trusts only `ca_pem` for HTTPS (no system roots), HTTP/1.1.
pub fn client(ca_pem: Option<&str>, timeout: Duration) -> Result<reqwest::Client, AppError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| AppError::Generated(format!("the appliance CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| AppError::Generated(format!("the appliance CA: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AppError::Generated(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| AppError::Generated(format!("HTTP client: {}", error_chain(&e))))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

async fn check_one(client: &reqwest::Client, e: Endpoint, opts: CheckOptions) -> EndpointResult {
    let start = Instant::now();
    let mut last_status = None;
    let mut last_error = None;
    let attempts = opts.attempts.max(1);
    for attempt in 1..=attempts {
        match client.get(&e.url).send().await {
            Ok(resp) if resp.status().is_success() => {
                return EndpointResult {
                    endpoint: e,
                    ok: true,
                    status: Some(resp.status().as_u16()),
                    error: None,
                    attempts: attempt,
                    elapsed_ms: start.elapsed().as_millis() as u64,
                };
            }
            Ok(resp) => {
                last_status = Some(resp.status().as_u16());
                last_error = Some(format!("answered {}", resp.status()));
            }
            Err(err) => {
                last_status = None;
                last_error = Some(error_chain(&err));
            }
        }
        if attempt < attempts {
            tokio::time::sleep(opts.interval).await;
        }
    }
    EndpointResult {
        endpoint: e,
        ok: false,
        status: last_status,
        error: last_error,
        attempts,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

/// Checks every endpoint concurrently; one result per endpoint, in the given order.
pub async fn check(
    endpoints: &[Endpoint],
    ca_pem: Option<&str>,
    opts: CheckOptions,
) -> Result<Vec<EndpointResult>, AppError> {
    let client = client(ca_pem, opts.timeout)?;
    let checks = endpoints
        .iter()
        .cloned()
        .map(|e| check_one(&client, e, opts));
    Ok(futures::future::join_all(checks).await)
}

/// The final gate's verdict: `Ok` when every endpoint answered, else a message naming each
/// failing endpoint, its node and why.
pub fn verdict(results: &[EndpointResult]) -> Result<(), String> {
    let failed: Vec<&EndpointResult> = results.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut s = format!(
        "{} of {} endpoints do not answer:",
        failed.len(),
        results.len()
    );
    for r in failed {
        s.push_str(&format!(
            "\n  {} on node {} ({}): {} after {} attempt{}",
            r.endpoint.name,
            r.endpoint.node,
            r.endpoint.url,
            r.error.as_deref().unwrap_or("no answer"),
            r.attempts,
            if r.attempts == 1 { "" } else { "s" }
        ));
    }
    Err(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::NodeFact;
    use crate::app::tls;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn facts() -> ClusterFacts {
        ClusterFacts::new(
            vec![
                NodeFact {
                    name: "srv1".into(),
                    address: "127.0.0.1".parse().unwrap(),
                    server: true,
                },
                NodeFact {
                    name: "agt1".into(),
                    address: "10.0.0.21".parse().unwrap(),
                    server: false,
                },
            ],
            "10.43.0.0/16".parse().unwrap(),
        )
    }

    #[test]
    fn endpoints_resolve_per_node() {
        let spec = AppSpec::parse(
            "name: a\nnamespace: a\nworkloads: [DaemonSet/gw]\ntls: {caSecret: ca, caCommonName: c}\nendpoints:\n  - {name: gw, workload: DaemonSet/gw, scheme: https, port: 8443, path: /healthz, nodes: all}\n  - {name: adm, scheme: http, port: 9000, path: /, nodes: servers}\n",
            "app.yaml",
        )
        .unwrap();
        let urls: Vec<String> = resolve(&spec, &facts())
            .iter()
            .map(|e| format!("{} {} {}", e.name, e.node, e.url))
            .collect();
        assert_eq!(
            urls,
            vec![
                "gw agt1 https://10.0.0.21:8443/healthz",
                "gw srv1 https://127.0.0.1:8443/healthz",
                "adm srv1 http://127.0.0.1:9000/",
            ]
        );
    }

    /// A TLS server on loopback (blocking rustls in a thread) answering `status` to every
    /// request, with a certificate from `ca` for 127.0.0.1.
    fn serve(ca: &tls::Ca, status: &'static str, names: &[&str]) -> u16 {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = tls::issue_server_cert(ca, "test", &names, k8s_openapi::jiff::Timestamp::now())
            .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.expose().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let config = config.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = write!(
                        tls,
                        "HTTP/1.1 {status}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        port
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            name: "gateway".into(),
            node: "srv1".into(),
            address: "127.0.0.1".parse().unwrap(),
            url: format!("https://127.0.0.1:{port}/healthz"),
            scheme: Scheme::Https,
            workload: Some("DaemonSet/gateway".into()),
        }
    }

    fn quick() -> CheckOptions {
        CheckOptions {
            timeout: Duration::from_secs(5),
            attempts: 2,
            interval: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn an_endpoint_with_a_certificate_from_the_appliance_ca_answers() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = tls::new_ca("test CA", now).unwrap();
        let port = serve(&ca, "200 OK", &["127.0.0.1"]);
        let results = check(&[endpoint(port)], Some(&ca.cert_pem), quick())
            .await
            .unwrap();
        assert!(results[0].ok, "{:?}", results[0]);
        assert_eq!(results[0].status, Some(200));
        assert_eq!(results[0].attempts, 1);
        assert_eq!(verdict(&results), Ok(()));
    }

    #[tokio::test]
    async fn another_ca_a_wrong_name_or_a_bad_status_fail_with_the_reason_and_node() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = tls::new_ca("test CA", now).unwrap();
        let other = tls::new_ca("other CA", now).unwrap();
        let foreign = serve(&other, "200 OK", &["127.0.0.1"]);
        let misnamed = serve(&ca, "200 OK", &["appliance.example.internal"]);
        let unhealthy = serve(&ca, "503 Service Unavailable", &["127.0.0.1"]);
        let results = check(
            &[endpoint(foreign), endpoint(misnamed), endpoint(unhealthy)],
            Some(&ca.cert_pem),
            quick(),
        )
        .await
        .unwrap();
        assert!(results.iter().all(|r| !r.ok), "{results:?}");
        assert!(
            results[0]
                .error
                .as_deref()
                .unwrap()
                .contains("invalid peer certificate"),
            "{:?}",
            results[0].error
        );
        assert!(
            results[1]
                .error
                .as_deref()
                .unwrap()
                .contains("not valid for name \"127.0.0.1\""),
            "{:?}",
            results[1].error
        );
        assert_eq!(results[2].status, Some(503));
        assert_eq!(results[2].attempts, 2);
        let v = verdict(&results).unwrap_err();
        assert!(v.starts_with("3 of 3 endpoints do not answer:"), "{v}");
        assert!(v.contains(&format!("gateway on node srv1 (https://127.0.0.1:{unhealthy}/healthz): answered 503 Service Unavailable after 2 attempts")), "{v}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_after_its_attempts() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let results = check(&[endpoint(port)], None, quick()).await.unwrap();
        assert!(!results[0].ok);
        assert_eq!(results[0].status, None);
        assert_eq!(results[0].attempts, 2);
        assert!(results[0].error.is_some());
    }
}
