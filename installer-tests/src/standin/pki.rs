//! The cluster's certificate authorities and the certificates a k3s server issues.
//!
//! Modelled on `pkg/daemons/control/deps/deps.go` (k3s release-1.36): separate server and client
//! CAs (`server-ca`, `client-ca`, plus `request-header-ca` and the etcd CAs), an admin client
//! certificate `CN=system:admin, O=system:masters` for the kubeconfig, kubelet client certificates
//! `CN=system:node:<name>, O=system:nodes`, and a serving certificate for port 6443 signed by the
//! server CA whose SANs are those of k3s's dynamiclistener: `kubernetes`,
//! `kubernetes.default`, `kubernetes.default.svc`, `kubernetes.default.svc.<cluster-domain>`,
//! `localhost`, `127.0.0.1`, `::1`, the first service IP, the node's addresses, its hostname and
//! every `tls-san`. Keys are ECDSA P-256, as k3s generates them.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem.len())
            .finish()
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Generate a self-signed CA named like k3s's (`k3s-server-ca@<unix time>`).
pub fn new_ca(name: &str) -> Result<CertKey> {
    let key = KeyPair::generate().context("generate CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let now = jiff::Timestamp::now().as_second();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name}@{now}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key).context("self-sign CA")?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(
    ca: &CertKey,
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("parse CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("parse CA certificate")?;
    let key = KeyPair::generate().context("generate key")?;
    let mut params = CertificateParams::new(sans.to_vec()).context("certificate SANs")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 365);
    let cert = params
        .signed_by(&key, &issuer)
        .context("sign certificate")?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `sans` (IP addresses and DNS names), signed by `ca`.
pub fn issue_server(ca: &CertKey, cn: &str, sans: &[String]) -> Result<CertKey> {
    issue(
        ca,
        cn,
        &["k3s"],
        sans,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )
}

/// A certificate for both ends of a connection (etcd's `server-client` and `peer-server-client`
/// certificates, which etcd presents as a server and as a client to its peers).
pub fn issue_server_client(ca: &CertKey, cn: &str, sans: &[String]) -> Result<CertKey> {
    issue(
        ca,
        cn,
        &["k3s"],
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// A client certificate `CN=cn, O=orgs...`, signed by `ca`.
pub fn issue_client(ca: &CertKey, cn: &str, orgs: &[&str]) -> Result<CertKey> {
    issue(ca, cn, orgs, &[], vec![ExtendedKeyUsagePurpose::ClientAuth])
}

/// The subject of a client certificate (DER): common name and organizations.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let orgs = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, orgs))
}

/// The SANs k3s's dynamiclistener puts on the 6443 serving certificate.
pub fn serving_sans(
    node_ips: &[String],
    hostname: &str,
    tls_sans: &[String],
    bind_address: Option<&str>,
    cluster_domain: &str,
    first_service_ip: &str,
) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{cluster_domain}"),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        first_service_ip.to_string(),
    ];
    out.extend(node_ips.iter().cloned());
    if let Some(b) = bind_address
        && !b.is_empty()
        && b != "0.0.0.0"
    {
        out.push(b.to_string());
    }
    if !hostname.is_empty() {
        out.push(hostname.to_string());
    }
    out.extend(tls_sans.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    out
}

/// Parse every certificate in a PEM bundle to DER.
pub fn pem_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parse PEM certificates")
}

/// Parse a PEM private key to DER.
pub fn pem_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .context("parse PEM private key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certs_carry_the_subject() {
        let ca = new_ca("k3s-client-ca").unwrap();
        let c = issue_client(&ca, "system:admin", &["system:masters"]).unwrap();
        let der = pem_certs(&c.cert_pem).unwrap();
        let (cn, orgs) = subject_of(&der[0]).unwrap();
        assert_eq!(cn, "system:admin");
        assert_eq!(orgs, vec!["system:masters".to_string()]);
    }

    #[test]
    fn serving_sans_cover_loopback_node_and_tls_sans() {
        let s = serving_sans(
            &["10.0.0.11".into()],
            "srv1",
            &["10.0.0.12".into(), "srv2".into()],
            None,
            "cluster.local",
            "10.43.0.1",
        );
        for want in [
            "127.0.0.1",
            "localhost",
            "10.0.0.11",
            "10.0.0.12",
            "srv2",
            "kubernetes.default.svc",
            "10.43.0.1",
        ] {
            assert!(s.contains(&want.to_string()), "{want} missing from {s:?}");
        }
        let ca = new_ca("k3s-server-ca").unwrap();
        issue_server(&ca, "k3s", &s).unwrap();
    }
}
