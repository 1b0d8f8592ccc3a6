//! The appliance's own TLS: a CA generated once per appliance and server certificates it
//! issues (rcgen, ECDSA P-256). The CA is the only root the installer trusts when it checks
//! the appliance's endpoints, and the admin gets its certificate beside the answer file.
//!
//! Dates come from the workstation clock; certificates start one day back so that a node
//! whose clock is slightly behind still accepts them.

use k8s_openapi::jiff::{Timestamp, ToSpan, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use super::AppError;
use crate::secret::Secret;

/// How long the CA is valid.
pub const CA_YEARS: i16 = 10;
/// How long a server certificate is valid.
pub const SERVER_DAYS: i64 = 825;
/// A server certificate closer than this to its end is issued anew on the next run.
pub const RENEW_DAYS: i64 = 30;

/// A CA: its certificate (public) and key (secret).
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: Secret,
}

/// A server certificate and its key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: Secret,
    /// The names it is valid for (DNS names and IP addresses), sorted.
    pub names: Vec<String>,
    /// `YYYY-MM-DD` of its last valid day.
    pub not_after: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> AppError {
    AppError::Generated(format!("{what}: {e}"))
}

fn ymd(t: Timestamp, days: i64) -> Result<(i32, u8, u8), AppError> {
    let d = t
        .to_zoned(TimeZone::UTC)
        .checked_add(days.days())
        .map_err(|e| err("date arithmetic", e))?
        .date();
    Ok((i32::from(d.year()), d.month() as u8, d.day() as u8))
}

fn date_string((y, m, d): (i32, u8, u8)) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

/// A new CA named `common_name`, valid for [`CA_YEARS`] years from today.
pub fn new_ca(common_name: &str, now: Timestamp) -> Result<Ca, AppError> {
    let key = KeyPair::generate().map_err(|e| err("generating the CA key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (y, m, d) = ymd(now, -1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + i32::from(CA_YEARS), m, d.min(28));
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("signing the CA certificate", e))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

/// Checks that a stored CA's certificate and key belong together: issues a throwaway
/// certificate with the key and verifies it against the certificate.
pub fn load_ca(ca: &Ca, now: Timestamp) -> Result<(), AppError> {
    let probe = "ca-check.invalid".to_string();
    let cert = issue_server_cert(ca, &probe, std::slice::from_ref(&probe), now)?;
    verify(&ca.cert_pem, &cert.cert_pem, &probe, now).map_err(|e| {
        AppError::Generated(format!(
            "the stored CA key does not belong to the stored CA certificate: {e}"
        ))
    })
}

/// Verifies that `cert_pem` chains to `ca_pem` and is valid for `name` (a DNS name or an IP
/// address) at time `at`, the way a TLS client would (rustls' WebPKI verifier).
pub fn verify(ca_pem: &str, cert_pem: &str, name: &str, at: Timestamp) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("CA: {e}"))?;
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("certificate: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| format!("CA: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider,
    )
    .build()
    .map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
    let secs = u64::try_from(at.as_second()).unwrap_or(0);
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &server,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether a stored server certificate can be kept: it chains to the CA and is valid for
/// every name in `names` today and still in [`RENEW_DAYS`] days. `Err` says why not.
pub fn still_good(
    ca_pem: &str,
    cert_pem: &str,
    names: &[String],
    now: Timestamp,
) -> Result<(), String> {
    let later = now
        .checked_add((RENEW_DAYS * 24).hours())
        .map_err(|e| e.to_string())?;
    for name in names {
        verify(ca_pem, cert_pem, name, now).map_err(|e| format!("{name}: {e}"))?;
        verify(ca_pem, cert_pem, name, later)
            .map_err(|e| format!("{name} in {RENEW_DAYS} days: {e}"))?;
    }
    Ok(())
}

/// Issues a server certificate for `names` (each an IP address or a DNS name), valid
/// [`SERVER_DAYS`] days.
pub fn issue_server_cert(
    ca: &Ca,
    common_name: &str,
    names: &[String],
    now: Timestamp,
) -> Result<ServerCert, AppError> {
    let ca_key = KeyPair::from_pem(ca.key_pem.expose()).map_err(|e| err("the CA key", e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| err("the CA certificate", e))?;
    let key = KeyPair::generate().map_err(|e| err("generating a server key", e))?;
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| err(&format!("the certificate names {names:?}"), e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let start = ymd(now, -1)?;
    let end = ymd(now, SERVER_DAYS)?;
    params.not_before = rcgen::date_time_ymd(start.0, start.1, start.2);
    params.not_after = rcgen::date_time_ymd(end.0, end.1, end.2);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| err("signing the server certificate", e))?;
    let mut names = names.to_vec();
    names.sort();
    Ok(ServerCert {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
        names,
        not_after: date_string(end),
    })
}

/// SHA-256 of a PEM certificate's DER bytes (lower-case hex): identifies a CA in the
/// annotations of the certificates it issued.
pub fn fingerprint(cert_pem: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    match CertificateDer::from_pem_slice(cert_pem.as_bytes()) {
        Ok(der) => hex::encode(Sha256::digest(der.as_ref())),
        Err(_) => hex::encode(Sha256::digest(cert_pem.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_780_000_000).unwrap()
    }

    #[test]
    fn a_ca_issues_a_server_certificate_valid_for_addresses_and_names() {
        let ca = new_ca("appliance.example.internal appliance CA", now()).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(format!("{:?}", ca.key_pem), "***");
        load_ca(&ca, now()).unwrap();
        let names = vec![
            "appliance.example.internal".to_string(),
            "10.0.0.11".to_string(),
            "srv1".to_string(),
        ];
        let cert = issue_server_cert(&ca, "appliance.example.internal", &names, now()).unwrap();
        assert_eq!(
            cert.names,
            vec!["10.0.0.11", "appliance.example.internal", "srv1"]
        );
        assert_eq!(cert.not_after, "2028-08-30");
        still_good(&ca.cert_pem, &cert.cert_pem, &names, now()).unwrap();
        let e = verify(&ca.cert_pem, &cert.cert_pem, "10.0.0.12", now()).unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        let more = vec!["10.0.0.12".to_string()];
        assert!(still_good(&ca.cert_pem, &cert.cert_pem, &more, now()).is_err());
        let later = Timestamp::from_second(1_780_000_000 + 800 * 86_400).unwrap();
        let e = still_good(&ca.cert_pem, &cert.cert_pem, &names, later).unwrap_err();
        assert!(e.contains("in 30 days"), "{e}");
        assert_ne!(fingerprint(&ca.cert_pem), fingerprint(&cert.cert_pem));
        assert_eq!(fingerprint(&ca.cert_pem).len(), 64);
    }

    #[test]
    fn another_ca_or_a_mismatched_key_is_refused() {
        let a = new_ca("a", now()).unwrap();
        let b = new_ca("b", now()).unwrap();
        let names = vec!["x.example".to_string()];
        let cert = issue_server_cert(&a, "x.example", &names, now()).unwrap();
        assert!(still_good(&b.cert_pem, &cert.cert_pem, &names, now()).is_err());
        let mixed = Ca {
            cert_pem: a.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
        };
        let e = load_ca(&mixed, now()).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let garbage = Ca {
            cert_pem: a.cert_pem.clone(),
            key_pem: Secret::new("not a key at all"),
        };
        assert!(load_ca(&garbage, now()).is_err());
    }
}
