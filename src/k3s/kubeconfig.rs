//! The admin kubeconfig for the workstation, made from a server's `/etc/rancher/k3s/k3s.yaml`.
//!
//! k3s writes that file pointing at `https://127.0.0.1:6443`, with one cluster, context and
//! user all named `default` (`pkg/server/server.go`, k3s-host-network.md §8). The
//! workstation needs it pointing at a server address it can reach (or at a local SSH tunnel
//! port: 127.0.0.1 is always in the k3s serving certificate), named after the cluster so it
//! can sit beside other kubeconfigs. The CA and client certificate and key are kept as they
//! are; the result is a [`Secret`] because it holds the admin's private key.

use serde::{Deserialize, Serialize};

use super::K3sError;
use crate::secret::Secret;

#[derive(Deserialize)]
struct RawKubeconfig {
    #[serde(default)]
    clusters: Vec<RawNamedCluster>,
    #[serde(default)]
    users: Vec<RawNamedUser>,
}

#[derive(Deserialize)]
struct RawNamedCluster {
    cluster: RawCluster,
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize)]
struct RawNamedUser {
    user: RawUser,
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data")]
    client_key_data: Option<String>,
}

#[derive(Serialize)]
struct KubeconfigContext<'a> {
    name: &'a str,
    server: &'a str,
    certificate_authority_data: &'a str,
    client_certificate_data: &'a str,
    client_key_data: &'a str,
}

fn base64_field(value: Option<&str>, field: &str) -> Result<String, K3sError> {
    let v = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| K3sError::Kubeconfig(format!("it has no {field}")))?;
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    {
        return Err(K3sError::Kubeconfig(format!("{field} is not base64")));
    }
    Ok(v.to_owned())
}

/// Rewrites k3s.yaml for the workstation: `server` is the API URL to use
/// (`https://10.0.0.11:6443`, or `https://127.0.0.1:<tunnel port>`), `cluster_name` names
/// the cluster, context and user. Error messages never include the key.
pub fn rewrite_kubeconfig(
    k3s_yaml: &str,
    server: &str,
    cluster_name: &str,
) -> Result<Secret, K3sError> {
    if !server.starts_with("https://") || server.contains(char::is_whitespace) {
        return Err(K3sError::InvalidInput {
            field: "server".into(),
            problem: format!("{server:?} must be an https:// URL"),
        });
    }
    let name_ok = !cluster_name.is_empty()
        && cluster_name.len() <= 63
        && cluster_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(K3sError::InvalidInput {
            field: "cluster name".into(),
            problem: format!("{cluster_name:?} is not a DNS label"),
        });
    }
    let raw: RawKubeconfig = serde_saphyr::from_str(k3s_yaml).map_err(|e| {
        // serde-saphyr errors quote the offending line; the key must not reach a log.
        let _ = e;
        K3sError::Kubeconfig("it is not a kubeconfig (YAML parse error)".into())
    })?;
    let [cluster] = &raw.clusters[..] else {
        return Err(K3sError::Kubeconfig(format!(
            "expected exactly one cluster, found {}",
            raw.clusters.len()
        )));
    };
    let [user] = &raw.users[..] else {
        return Err(K3sError::Kubeconfig(format!(
            "expected exactly one user, found {}",
            raw.users.len()
        )));
    };
    let ca = base64_field(
        cluster.cluster.certificate_authority_data.as_deref(),
        "certificate-authority-data",
    )?;
    let cert = base64_field(
        user.user.client_certificate_data.as_deref(),
        "client-certificate-data",
    )?;
    // Registered for redaction as soon as it is read.
    let key = Secret::new(base64_field(
        user.user.client_key_data.as_deref(),
        "client-key-data",
    )?);
    let ctx = KubeconfigContext {
        name: cluster_name,
        server,
        certificate_authority_data: &ca,
        client_certificate_data: &cert,
        client_key_data: key.expose(),
    };
    Ok(Secret::new(super::render("kubeconfig.yaml", &ctx)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Shaped like k3s.yaml; the data fields are stand-ins, not real keys.
    const K3S_YAML: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EtUEVNLVNUQU5ELUlO
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVC1TVEFORC1JTg==
    client-key-data: S0VZLVNUQU5ELUlOLXRlc3Qtb25seQ==
";

    #[test]
    fn rewritten_kubeconfig() {
        let out = rewrite_kubeconfig(K3S_YAML, "https://10.0.0.11:6443", "demo").unwrap();
        // The fixture key is a stand-in, but keys never go into snapshots on principle.
        insta::with_settings!({filters => vec![(r"client-key-data: .*", "client-key-data: [key]")]}, {
            insta::assert_snapshot!(out.expose());
        });
    }

    #[test]
    fn the_rewrite_keeps_the_credentials_and_renames_everything() {
        let out = rewrite_kubeconfig(K3S_YAML, "https://127.0.0.1:40123", "demo").unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(out.expose()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:40123"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0EtUEVNLVNUQU5ELUlO"
        );
        assert_eq!(
            v["users"][0]["user"]["client-key-data"],
            "S0VZLVNUQU5ELUlOLXRlc3Qtb25seQ=="
        );
        assert_eq!(v["current-context"], "demo");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "demo");
        assert_eq!(v["contexts"][0]["context"]["user"], "demo");
        assert_eq!(v["users"][0]["name"], "demo");
        assert_eq!(format!("{out:?}"), "***");
    }

    #[test]
    fn a_file_without_a_key_is_refused_by_field() {
        let no_key = K3S_YAML.replace(
            "    client-key-data: S0VZLVNUQU5ELUlOLXRlc3Qtb25seQ==\n",
            "",
        );
        let err = rewrite_kubeconfig(&no_key, "https://10.0.0.11:6443", "demo").unwrap_err();
        assert!(err.to_string().contains("client-key-data"), "{err}");
    }

    #[test]
    fn parse_errors_do_not_echo_the_file() {
        let broken = format!("{K3S_YAML}\n  : : [");
        let err = rewrite_kubeconfig(&broken, "https://10.0.0.11:6443", "demo").unwrap_err();
        assert!(!err.to_string().contains("S0VZ"), "{err}");
    }

    #[test]
    fn bad_server_or_name_is_refused() {
        assert!(rewrite_kubeconfig(K3S_YAML, "10.0.0.11:6443", "demo").is_err());
        assert!(rewrite_kubeconfig(K3S_YAML, "https://10.0.0.11:6443", "Demo_1").is_err());
    }
}
