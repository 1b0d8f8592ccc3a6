//! The application's metadata (`templates/app/app.yaml.tera`, rendered): what to generate
//! (secrets, TLS), in which order to deploy and gate the workloads, and which endpoints
//! prove it healthy. Parsed strictly (unknown keys are errors) and checked once.

use serde::{Deserialize, Serialize};

use super::AppError;
use crate::kube::rollout::{WorkloadId, WorkloadKind};

/// The rendered `app.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppSpec {
    /// The application's name (labels, the CA's file name).
    pub name: String,
    /// The namespace its objects and generated Secrets live in.
    pub namespace: String,
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// `Kind/name`, in deploy-and-gate order.
    pub workloads: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// What the install's last screen tells the admin (where it is, how to log in).
    #[serde(default)]
    pub handoff: Option<HandoffSpec>,
}

/// The appliance's own words for the hand-off screen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HandoffSpec {
    /// What is ready, in one line ("The appliance is ready").
    pub title: String,
    /// Where a person opens it: `scheme://<name or node>:port path`.
    pub scheme: Scheme,
    pub port: u16,
    pub path: String,
    /// The DNS name clients should use (a record the admin creates, pointing at the nodes).
    #[serde(default)]
    pub dns_name: Option<String>,
    #[serde(default)]
    pub login: Option<LoginSpec>,
}

/// How a person logs in: a user, and the generated Secret key holding the password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginSpec {
    pub user: String,
    pub password_secret: String,
    pub password_key: String,
}

/// A Secret the installer generates once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    pub name: String,
    pub keys: Vec<SecretKeySpec>,
}

/// One key of a generated Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeySpec {
    pub key: String,
    /// The answer-file value (a secret value) that sets this key when given.
    #[serde(default)]
    pub from_value: Option<String>,
    /// Otherwise a random value of this many characters, generated once.
    #[serde(default)]
    pub generate: Option<usize>,
}

/// The appliance CA and the certificates it issues.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret (type `kubernetes.io/tls`) holding the CA certificate and key.
    pub ca_secret: String,
    pub ca_common_name: String,
    #[serde(default)]
    pub certificates: Vec<CertSpec>,
}

/// A server certificate (Secret of type `kubernetes.io/tls`). Its names are `dnsNames` plus
/// every node's address and node name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertSpec {
    pub secret: String,
    pub common_name: String,
    #[serde(default)]
    pub dns_names: Vec<String>,
}

/// Which nodes an endpoint is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeSet {
    All,
    Servers,
    Agents,
}

/// `http` or `https` (checked against the appliance CA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// An endpoint the application declares: `scheme://NODE:port path` on each node of `nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub name: String,
    /// The workload that serves it (`Kind/name`), for messages.
    #[serde(default)]
    pub workload: Option<String>,
    pub scheme: Scheme,
    pub port: u16,
    pub path: String,
    pub nodes: NodeSet,
}

/// Parses `Kind/name`.
pub fn parse_workload(s: &str, namespace: &str) -> Result<WorkloadId, String> {
    let (kind, name) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not `Kind/name`"))?;
    let kind = match kind {
        "Deployment" => WorkloadKind::Deployment,
        "DaemonSet" => WorkloadKind::DaemonSet,
        "StatefulSet" => WorkloadKind::StatefulSet,
        other => {
            return Err(format!(
                "`{other}` in `{s}` is not a Deployment, DaemonSet or StatefulSet"
            ));
        }
    };
    if !is_dns_label(name) {
        return Err(format!("`{name}` in `{s}` is not a valid object name"));
    }
    Ok(WorkloadId {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// A lower-case RFC 1123 label (names of namespaces, Secrets, ...).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl AppSpec {
    /// Parses the rendered `app.yaml` and checks it; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<AppSpec, AppError> {
        let spec: AppSpec = serde_saphyr::from_str(text).map_err(|e| AppError::Template {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        if !is_dns_label(&spec.name) {
            problems.push(format!("name `{}` is not a DNS label", spec.name));
        }
        if !is_dns_label(&spec.namespace) {
            problems.push(format!("namespace `{}` is not a DNS label", spec.namespace));
        }
        let mut secret_names = std::collections::BTreeSet::new();
        for s in &spec.secrets {
            if !is_dns_label(&s.name) {
                problems.push(format!("secret name `{}` is not a DNS label", s.name));
            }
            if !secret_names.insert(s.name.as_str()) {
                problems.push(format!("secret `{}` is declared twice", s.name));
            }
            if s.keys.is_empty() {
                problems.push(format!("secret `{}` has no keys", s.name));
            }
            for k in &s.keys {
                let key_ok = !k.key.is_empty()
                    && k.key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !key_ok {
                    problems.push(format!("secret `{}`: key `{}` is not valid", s.name, k.key));
                }
                match k.generate {
                    Some(n) if !(16..=256).contains(&n) => problems.push(format!(
                        "secret `{}` key `{}`: generate {n} characters? use 16 to 256",
                        s.name, k.key
                    )),
                    None if k.from_value.is_none() => problems.push(format!(
                        "secret `{}` key `{}`: give `fromValue`, `generate` or both",
                        s.name, k.key
                    )),
                    _ => {}
                }
            }
        }
        if let Some(tls) = &spec.tls {
            for name in
                std::iter::once(&tls.ca_secret).chain(tls.certificates.iter().map(|c| &c.secret))
            {
                if !is_dns_label(name) {
                    problems.push(format!("tls secret name `{name}` is not a DNS label"));
                }
                if !secret_names.insert(name.as_str()) {
                    problems.push(format!("secret `{name}` is declared twice"));
                }
            }
        }
        if spec.workloads.is_empty() {
            problems.push("no workloads listed".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in &spec.workloads {
            match parse_workload(w, &spec.namespace) {
                Ok(id) => {
                    if !seen.insert(id.to_string()) {
                        problems.push(format!("workload `{w}` is listed twice"));
                    }
                }
                Err(e) => problems.push(format!("workloads: {e}")),
            }
        }
        for e in &spec.endpoints {
            if e.port == 0 {
                problems.push(format!("endpoint `{}`: port 0", e.name));
            }
            if !e.path.starts_with('/') {
                problems.push(format!("endpoint `{}`: path must start with `/`", e.name));
            }
            if let Some(w) = &e.workload
                && !spec.workloads.contains(w)
            {
                problems.push(format!(
                    "endpoint `{}`: workload `{w}` is not in `workloads`",
                    e.name
                ));
            }
            if e.scheme == Scheme::Https && spec.tls.is_none() {
                problems.push(format!(
                    "endpoint `{}` is https but there is no `tls` section (no appliance CA to check it against)",
                    e.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(AppError::Template {
                file: file.to_owned(),
                message: problems.join("; "),
            })
        }
    }

    /// The workloads in deploy-and-gate order.
    pub fn workload_ids(&self) -> Vec<WorkloadId> {
        self.workloads
            .iter()
            .filter_map(|w| parse_workload(w, &self.namespace).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_and_bad_ones_say_why() {
        let ok = "name: a\nnamespace: b\nworkloads: [Deployment/api]\nendpoints:\n  - {name: e, scheme: http, port: 80, path: /h, nodes: all, workload: Deployment/api}\n";
        let spec = AppSpec::parse(ok, "app.yaml").unwrap();
        assert_eq!(spec.workload_ids()[0].to_string(), "Deployment b/api");
        let bad = "name: A\nnamespace: b\nsecrets:\n  - {name: s, keys: [{key: k}]}\nworkloads: [Job/x, Deployment/api, Deployment/api]\nendpoints:\n  - {name: e, scheme: https, port: 80, path: h, nodes: all, workload: DaemonSet/gw}\n";
        let err = AppSpec::parse(bad, "app.yaml").unwrap_err().to_string();
        for want in [
            "name `A` is not a DNS label",
            "give `fromValue`, `generate` or both",
            "`Job` in `Job/x` is not a Deployment",
            "`Deployment/api` is listed twice",
            "path must start with `/`",
            "workload `DaemonSet/gw` is not in `workloads`",
            "is https but there is no `tls` section",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        let unknown = "name: a\nnamespace: b\nworkloads: [Deployment/api]\ncolour: red\n";
        assert!(AppSpec::parse(unknown, "app.yaml").is_err());
    }
}
