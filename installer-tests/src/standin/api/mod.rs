//! The HTTPS listener on port 6443 and request plumbing.
//!
//! k3s serves the supervisor (`/ping`, `/cacerts`, `/v1-k3s/...`, `/db/info`) and the
//! kube-apiserver on the same port through its dynamiclistener (`pkg/server/handlers/router.go`).
//! Client certificates are optional at the TLS layer (the supervisor endpoints use no auth or
//! basic auth), and the Kubernetes API rejects requests without a client certificate signed by
//! the cluster's client CA with `401 Unauthorized` (k3s runs the apiserver with
//! `anonymous-auth=false`). The TLS accept loop here records each connection's peer address and
//! certificate subject so handlers can apply those rules.

pub mod kube;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

use super::pki;

/// The subject of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: String,
    pub organizations: Vec<String>,
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub client: Option<ClientIdentity>,
}

/// A TLS server configuration: serving certificate, and optional client CA (certificates are
/// requested but not required).
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>> {
    super::client::install_crypto();
    let certs = pki::pem_certs(cert_pem)?;
    let key = pki::pem_key(key_pem)?;
    let builder = rustls::ServerConfig::builder();
    let mut cfg = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pki::pem_certs(ca)? {
                roots.add(c).context("client CA")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .context("client verifier")?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key),
    }
    .context("TLS server config")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serve `router` over TLS on `listener` until `shutdown` is cancelled. Each request carries a
/// [`ConnInfo`] extension.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| pki::subject_of(c))
                .map(|(cn, orgs)| ClientIdentity {
                    common_name: cn,
                    organizations: orgs,
                });
            let info = ConnInfo { peer, client };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let router = router.clone();
                    async move { router.oneshot(req.map(axum::body::Body::new)).await }
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Serve `router` over plain HTTP (pod probe listeners).
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let info = ConnInfo { peer, client: None };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let router = router.clone();
                    async move { router.oneshot(req.map(axum::body::Body::new)).await }
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
