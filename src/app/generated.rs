//! Generated material: the application's random secrets, the appliance CA and the server
//! certificates it issues. Created on the first run, stored as Kubernetes Secrets in the
//! application's namespace, and read back from the cluster on every rerun: a secret is never
//! generated twice, and a certificate is issued anew only when it no longer covers every node
//! and the configured hostname (or is about to expire).
//!
//! Secret values never reach a log, an event or an error: they live in [`Secret`] wrappers
//! and go to the API server only as Secret data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::RngExt;
use rand::distr::Alphanumeric;
use serde_json::json;

use super::spec::{AppSpec, SecretSpec};
use super::tls::{self, Ca};
use super::{App, AppError, ClusterFacts, Values};
use crate::kube::apply::{Applied, ApplyReport, Change, FIELD_MANAGER};
use crate::kube::{Cluster, KubeError};
use crate::report::events::{Level, Reporter};
use crate::secret::Secret;

/// The Secret keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// What [`ensure`] produced or found.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// Secret name -> resourceVersion, for the workloads' config hashes.
    pub versions: BTreeMap<String, String>,
    /// The appliance CA certificate (PEM), when the application has TLS.
    pub ca_cert_pem: Option<String>,
    /// The file name the CA certificate gets beside the answer file.
    pub ca_file_name: Option<String>,
    /// Values the admin must learn once: keys with `fromValue` whose value the answer file
    /// did not give, generated in this run (value name, generated secret).
    pub shown_once: Vec<(String, Secret)>,
    /// What happened to each Secret.
    pub report: ApplyReport,
}

impl Generated {
    /// Secret name -> version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.versions.clone()
    }

    /// Material for rendering without a cluster (dry runs, tests): every Secret of `spec` at
    /// version `version`.
    pub fn placeholder(spec: &AppSpec, version: &str) -> Generated {
        let mut versions = BTreeMap::new();
        for s in &spec.secrets {
            versions.insert(s.name.clone(), version.to_owned());
        }
        if let Some(t) = &spec.tls {
            versions.insert(t.ca_secret.clone(), version.to_owned());
            for c in &t.certificates {
                versions.insert(c.secret.clone(), version.to_owned());
            }
        }
        Generated {
            versions,
            ..Generated::default()
        }
    }
}

/// A random string of `len` letters and digits (OS-seeded CSPRNG).
pub fn random_string(len: usize) -> Secret {
    let s: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    Secret::new(s)
}

/// What a generated Secret's keys should hold, given what the cluster has (`existing`: key ->
/// value) and the answer file's values. Pure. Returns the data and the values generated now
/// for `fromValue` keys (to show once).
pub fn plan_secret(
    spec: &SecretSpec,
    existing: &BTreeMap<String, Secret>,
    values: &Values,
    generate: &mut dyn FnMut(usize) -> Secret,
) -> (BTreeMap<String, Secret>, Vec<(String, Secret)>) {
    let mut data = BTreeMap::new();
    let mut shown = Vec::new();
    for k in &spec.keys {
        let given = k.from_value.as_ref().and_then(|v| {
            values.secret(v).cloned().or_else(|| {
                values
                    .plain()
                    .get(v)
                    .and_then(|p| p.as_str().map(Secret::new))
            })
        });
        let value = match (given, existing.get(&k.key)) {
            (Some(v), _) => v,
            (None, Some(old)) => old.clone(),
            (None, None) => {
                let v = generate(k.generate.unwrap_or(32));
                if let Some(name) = &k.from_value {
                    shown.push((name.clone(), v.clone()));
                }
                v
            }
        };
        data.insert(k.key.clone(), value);
    }
    (data, shown)
}

/// The names a server certificate must cover: its `dnsNames`, then every node's name and
/// address; lower-case, sorted, without duplicates.
pub fn certificate_names(dns_names: &[String], facts: &ClusterFacts) -> Vec<String> {
    let mut names: Vec<String> = dns_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .chain(facts.nodes.iter().map(|n| n.name.to_ascii_lowercase()))
        .chain(facts.nodes.iter().map(|n| n.address.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn secret_data(s: &KubeSecret) -> BTreeMap<String, Secret> {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            String::from_utf8(v.0.clone())
                .ok()
                .map(|text| (k.clone(), Secret::new(text)))
        })
        .collect()
}

fn secret_object(
    name: &str,
    namespace: &str,
    app: &str,
    type_: &str,
    data: &BTreeMap<String, Secret>,
) -> KubeSecret {
    KubeSecret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    ("app.kubernetes.io/part-of".to_string(), app.to_owned()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "installer".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.expose().as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

struct Store<'a> {
    api: Api<KubeSecret>,
    app: &'a str,
    namespace: &'a str,
    report: ApplyReport,
    versions: BTreeMap<String, String>,
}

impl Store<'_> {
    async fn read(&self, name: &str) -> Result<Option<KubeSecret>, AppError> {
        Ok(self.api.get_opt(name).await.map_err(KubeError::from)?)
    }

    /// Server-side applies the Secret; records created/updated/unchanged and its version.
    async fn write(
        &mut self,
        name: &str,
        type_: &str,
        data: &BTreeMap<String, Secret>,
        before: Option<&KubeSecret>,
        reporter: &Reporter,
    ) -> Result<(), AppError> {
        let obj = secret_object(name, self.namespace, self.app, type_, data);
        let after = self
            .api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|e| match e {
                // The API's message names fields, never Secret data.
                kube::Error::Api(s) => AppError::Generated(format!(
                    "cannot store Secret {}/{name}: {} ({})",
                    self.namespace, s.message, s.reason
                )),
                other => AppError::Kube(other.into()),
            })?;
        let change = match before {
            None => Change::Created,
            Some(b) if b.metadata.resource_version != after.metadata.resource_version => {
                Change::Updated
            }
            Some(_) => Change::Unchanged,
        };
        let object = format!("Secret {}/{name}", self.namespace);
        let level = if change == Change::Unchanged {
            Level::Debug
        } else {
            Level::Detail
        };
        let word = match change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        };
        reporter.message(level, None, format!("{object}: {word}"));
        self.report.items.push(Applied {
            object,
            file: "generated".into(),
            change,
        });
        self.versions.insert(
            name.to_owned(),
            after.metadata.resource_version.unwrap_or_default(),
        );
        Ok(())
    }
}

/// Creates the application's namespace if it does not exist yet (its labels are applied later
/// with the manifests; a separate field manager keeps the two from fighting).
async fn ensure_namespace(cluster: &Cluster, name: &str) -> Result<(), AppError> {
    let api: Api<Namespace> = Api::all(cluster.client().clone());
    if api.get_opt(name).await.map_err(KubeError::from)?.is_some() {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
        .map_err(|e| AppError::Generated(e.to_string()))?;
    let pp = PostParams {
        field_manager: Some(format!("{FIELD_MANAGER}-bootstrap")),
        ..Default::default()
    };
    match api.create(&pp, &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(AppError::Kube(e.into())),
    }
}

/// Makes sure every generated Secret of the application exists and is current, reading back
/// what the cluster already has: random values are kept, values the answer file gives are
/// applied, the CA is kept, and server certificates are kept while they cover every node and
/// hostname for [`tls::RENEW_DAYS`] more days.
pub async fn ensure(
    cluster: &Cluster,
    app: &App,
    reporter: &Reporter,
) -> Result<Generated, AppError> {
    let spec = app.spec();
    ensure_namespace(cluster, &spec.namespace).await?;
    let mut store = Store {
        api: Api::namespaced(cluster.client().clone(), &spec.namespace),
        app: &spec.name,
        namespace: &spec.namespace,
        report: ApplyReport::default(),
        versions: BTreeMap::new(),
    };
    let mut shown_once = Vec::new();
    for s in &spec.secrets {
        let before = store.read(&s.name).await?;
        let existing = before.as_ref().map(secret_data).unwrap_or_default();
        let (data, shown) = plan_secret(s, &existing, app.values(), &mut |n| random_string(n));
        shown_once.extend(shown);
        store
            .write(&s.name, "Opaque", &data, before.as_ref(), reporter)
            .await?;
    }
    let mut ca_cert_pem = None;
    if let Some(t) = &spec.tls {
        let now = Timestamp::now();
        let before = store.read(&t.ca_secret).await?;
        let stored = before.as_ref().map(secret_data).unwrap_or_default();
        let ca = match (stored.get(TLS_CERT_KEY), stored.get(TLS_KEY_KEY)) {
            (Some(cert), Some(key)) => {
                let ca = Ca {
                    cert_pem: cert.expose().to_owned(),
                    key_pem: key.clone(),
                };
                tls::load_ca(&ca, now).map_err(|e| {
                    AppError::Generated(format!("Secret {}/{}: {e}", spec.namespace, t.ca_secret))
                })?;
                ca
            }
            _ => tls::new_ca(&t.ca_common_name, now)?,
        };
        let data: BTreeMap<String, Secret> = [
            (TLS_CERT_KEY.to_string(), Secret::new(ca.cert_pem.clone())),
            (TLS_KEY_KEY.to_string(), ca.key_pem.clone()),
        ]
        .into();
        store
            .write(
                &t.ca_secret,
                "kubernetes.io/tls",
                &data,
                before.as_ref(),
                reporter,
            )
            .await?;
        for c in &t.certificates {
            let names = certificate_names(&c.dns_names, app.facts());
            let before = store.read(&c.secret).await?;
            let stored = before.as_ref().map(secret_data).unwrap_or_default();
            let keep = match (stored.get(TLS_CERT_KEY), stored.get(TLS_KEY_KEY)) {
                (Some(cert), Some(key)) => {
                    match tls::still_good(&ca.cert_pem, cert.expose(), &names, now) {
                        Ok(()) => Some((cert.clone(), key.clone())),
                        Err(why) => {
                            reporter.info(
                                None,
                                format!(
                                    "issuing a new certificate for Secret {}/{}: {why}",
                                    spec.namespace, c.secret
                                ),
                            );
                            None
                        }
                    }
                }
                _ => None,
            };
            let (cert, key) = match keep {
                Some(pair) => pair,
                None => {
                    let issued = tls::issue_server_cert(&ca, &c.common_name, &names, now)?;
                    (Secret::new(issued.cert_pem), issued.key_pem)
                }
            };
            let data: BTreeMap<String, Secret> = [
                (TLS_CERT_KEY.to_string(), cert),
                (TLS_KEY_KEY.to_string(), key),
            ]
            .into();
            store
                .write(
                    &c.secret,
                    "kubernetes.io/tls",
                    &data,
                    before.as_ref(),
                    reporter,
                )
                .await?;
        }
        ca_cert_pem = Some(ca.cert_pem);
    }
    Ok(Generated {
        versions: store.versions,
        ca_cert_pem,
        ca_file_name: spec.tls.as_ref().map(|_| ca_file_name(spec)),
        shown_once,
        report: store.report,
    })
}

/// The appliance CA certificate as stored in the cluster, without creating or changing
/// anything (for `installer status`); `None` when the application has no TLS or the Secret
/// does not exist yet.
pub async fn read_ca_cert(cluster: &Cluster, app: &App) -> Result<Option<String>, AppError> {
    let spec = app.spec();
    let Some(t) = &spec.tls else {
        return Ok(None);
    };
    let api: Api<KubeSecret> = Api::namespaced(cluster.client().clone(), &spec.namespace);
    let secret = api.get_opt(&t.ca_secret).await.map_err(KubeError::from)?;
    // A certificate is public: read it without wrapping it as a secret.
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|d| d.get(TLS_CERT_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok()))
}

/// `<application>-ca.crt`.
pub fn ca_file_name(spec: &AppSpec) -> String {
    format!("{}-ca.crt", spec.name)
}

/// Writes the appliance CA certificate beside the answer file (`<dir>/<app>-ca.crt`, mode
/// 0644) and returns its path; `None` when the application has no TLS. Rewrites the file only
/// when its content differs.
pub fn write_ca_file(
    generated: &Generated,
    answer_file: &Path,
) -> Result<Option<PathBuf>, AppError> {
    let (Some(pem), Some(name)) = (&generated.ca_cert_pem, &generated.ca_file_name) else {
        return Ok(None);
    };
    let dir = match answer_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let path = dir.join(name);
    let io = |source| AppError::Io {
        path: path.display().to_string(),
        source,
    };
    // Only a regular file of ours counts as already written (never a planted link or file).
    if crate::fsx::own_regular_file(&path).ok().flatten() == Some(true)
        && std::fs::read_to_string(&path).ok().as_deref() == Some(pem.as_str())
    {
        return Ok(Some(path));
    }
    crate::fsx::write_atomic(&path, pem.as_bytes(), 0o644).map_err(io)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::NodeFact;
    use crate::app::spec::SecretKeySpec;

    fn spec() -> SecretSpec {
        SecretSpec {
            name: "app-secrets".into(),
            keys: vec![
                SecretKeySpec {
                    key: "admin-password".into(),
                    from_value: Some("adminPassword".into()),
                    generate: Some(24),
                },
                SecretKeySpec {
                    key: "api-token".into(),
                    from_value: None,
                    generate: Some(40),
                },
            ],
        }
    }

    fn counter() -> impl FnMut(usize) -> Secret {
        let mut n = 0;
        move |len| {
            n += 1;
            Secret::new(format!("generated-{n}-{len}"))
        }
    }

    fn exposed(d: &BTreeMap<String, Secret>) -> BTreeMap<String, String> {
        d.iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect()
    }

    #[test]
    fn first_run_generates_and_shows_the_admin_value_once() {
        let (data, shown) = plan_secret(&spec(), &BTreeMap::new(), &Values::new(), &mut counter());
        assert_eq!(
            exposed(&data),
            BTreeMap::from([
                ("admin-password".to_string(), "generated-1-24".to_string()),
                ("api-token".to_string(), "generated-2-40".to_string()),
            ])
        );
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].0, "adminPassword");
        assert_eq!(shown[0].1.expose(), "generated-1-24");
    }

    #[test]
    fn a_rerun_reuses_what_the_cluster_has_and_never_regenerates() {
        let existing: BTreeMap<String, Secret> = [
            ("admin-password".to_string(), Secret::new("kept-password-1")),
            ("api-token".to_string(), Secret::new("kept-token-abcdef")),
        ]
        .into();
        let mut never = |_: usize| -> Secret { panic!("must not generate") };
        let (data, shown) = plan_secret(&spec(), &existing, &Values::new(), &mut never);
        assert_eq!(exposed(&data)["admin-password"], "kept-password-1");
        assert_eq!(exposed(&data)["api-token"], "kept-token-abcdef");
        assert!(shown.is_empty());
        // The answer file's value wins over the stored one (a changed password is applied).
        let values = Values::new().set_secret("adminPassword", Secret::new("from-the-answer-file"));
        let (data, shown) = plan_secret(&spec(), &existing, &values, &mut never);
        assert_eq!(exposed(&data)["admin-password"], "from-the-answer-file");
        assert_eq!(exposed(&data)["api-token"], "kept-token-abcdef");
        assert!(shown.is_empty());
    }

    #[test]
    fn random_strings_are_long_and_different() {
        let a = random_string(40);
        let b = random_string(40);
        assert_eq!(a.expose().len(), 40);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn certificate_names_cover_the_hostname_and_every_node() {
        let facts = ClusterFacts::new(
            vec![
                NodeFact {
                    name: "srv2".into(),
                    address: "10.0.0.12".parse().unwrap(),
                    server: true,
                },
                NodeFact {
                    name: "SRV1".into(),
                    address: "10.0.0.11".parse().unwrap(),
                    server: true,
                },
            ],
            "10.43.0.0/16".parse().unwrap(),
        );
        let names = certificate_names(
            &["Appliance.Example.Internal".to_string(), "srv1".to_string()],
            &facts,
        );
        assert_eq!(
            names,
            vec![
                "10.0.0.11",
                "10.0.0.12",
                "appliance.example.internal",
                "srv1",
                "srv2"
            ]
        );
    }

    #[test]
    fn the_ca_file_lands_beside_the_answer_file() {
        let dir = tempfile::tempdir().unwrap();
        let answer = dir.path().join("appliance.yaml");
        let g = Generated {
            ca_cert_pem: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
            ca_file_name: Some("appliance-ca.crt".into()),
            ..Generated::default()
        };
        let path = write_ca_file(&g, &answer).unwrap().unwrap();
        assert_eq!(path, dir.path().join("appliance-ca.crt"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            g.ca_cert_pem.clone().unwrap()
        );
        assert!(
            write_ca_file(&Generated::default(), &answer)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn secret_objects_never_debug_print_their_values_through_the_wrapper() {
        let data: BTreeMap<String, Secret> =
            [("k".to_string(), Secret::new("super-secret-value-1"))].into();
        assert!(!format!("{data:?}").contains("super-secret-value-1"));
        let obj = secret_object("s", "ns", "app", "Opaque", &data);
        assert_eq!(obj.data.unwrap()["k"].0, b"super-secret-value-1".to_vec());
    }
}
