//! HTTPS clients the stand-in uses between nodes (joins, the kubelet, forwarding to the store),
//! and Go-style error texts for what fails, so log lines read like k3s's
//! (`Get "https://10.0.0.11:6443/cacerts": dial tcp 10.0.0.11:6443: connect: connection refused`).
//!
//! Like k3s's `pkg/clientaccess/token.go`, the CA bundle is first fetched from `/cacerts` without
//! verification, then every further request verifies the server against that bundle.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::pki::{self, CertKey};

/// Install the ring crypto provider (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
}

/// A client that does not verify the server (only for fetching `/cacerts`).
pub fn insecure() -> Result<reqwest::Client> {
    insecure_with_timeout(Duration::from_secs(15))
}

/// An unverified client with a chosen timeout (the kubelet's probes, which skip verification
/// as the kubelet does for HTTPS probes).
pub fn insecure_with_timeout(timeout: Duration) -> Result<reqwest::Client> {
    install_crypto();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    builder()
        .timeout(timeout)
        .tls_backend_preconfigured(cfg)
        .build()
        .context("build HTTP client")
}

/// A client that trusts `ca_pem` and presents `identity` if given.
pub fn with_ca(ca_pem: &str, identity: Option<&CertKey>) -> Result<reqwest::Client> {
    with_ca_timeout(ca_pem, identity, Some(Duration::from_secs(15)))
}

/// Like [`with_ca`], with a chosen overall timeout (`None` for streaming requests such as watches).
pub fn with_ca_timeout(
    ca_pem: &str,
    identity: Option<&CertKey>,
    timeout: Option<Duration>,
) -> Result<reqwest::Client> {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::pem_certs(ca_pem)? {
        roots.add(c).context("add CA certificate")?;
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match identity {
        Some(id) => b
            .with_client_auth_cert(pki::pem_certs(&id.cert_pem)?, pki::pem_key(&id.key_pem)?)
            .context("client certificate")?,
        None => b.with_no_client_auth(),
    };
    let mut cb = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5));
    if let Some(t) = timeout {
        cb = cb.timeout(t);
    }
    cb.tls_backend_preconfigured(cfg)
        .build()
        .context("build HTTP client")
}

/// Go's `net/http` wording for a failed request: `Get "url": dial tcp host:port: connect: ...`.
pub fn go_error(method: &str, url: &str, e: &reqwest::Error) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    let mut text = e.to_string();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
            text = io.to_string();
        }
        src = s.source();
    }
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    let method = match method {
        "GET" => "Get",
        "POST" => "Post",
        "PUT" => "Put",
        other => other,
    };
    let detail = if e.is_timeout() {
        "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".to_string()
    } else {
        match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => {
                format!("dial tcp {hostport}: connect: connection refused")
            }
            Some(std::io::ErrorKind::HostUnreachable) => {
                format!("dial tcp {hostport}: connect: no route to host")
            }
            Some(std::io::ErrorKind::NetworkUnreachable) => {
                format!("dial tcp {hostport}: connect: network is unreachable")
            }
            Some(std::io::ErrorKind::ConnectionReset) => {
                "read: connection reset by peer".to_string()
            }
            Some(std::io::ErrorKind::UnexpectedEof) => "EOF".to_string(),
            _ if e.is_connect() => format!("dial tcp {hostport}: {text}"),
            _ => text,
        }
    };
    format!("{method} \"{url}\": {detail}")
}

/// `getCACerts`: the CA bundle a server hands out on `/cacerts`.
pub async fn get_cacerts(server_url: &str) -> Result<Vec<u8>, String> {
    let url = format!("{}/cacerts", server_url.trim_end_matches('/'));
    let client = insecure().map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("failed to get CA certs: {}", go_error("GET", &url, &e)))?;
    if !resp.status().is_success() {
        return Err(format!(
            "failed to get CA certs: {url}: {}",
            status_text(resp.status())
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("failed to get CA certs: {e}"))?;
    // Validate the server against the bundle it returned, as k3s does.
    let pem = String::from_utf8_lossy(&body).to_string();
    let verified = with_ca(&pem, None).map_err(|e| format!("CA cert validation failed: {e}"))?;
    verified
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("CA cert validation failed: {}", go_error("GET", &url, &e)))?;
    Ok(body.to_vec())
}

/// `404 Not Found`-style status text as Go prints `resp.Status`.
pub fn status_text(s: reqwest::StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}
