//! The bundled application: the vendor's workloads as data (`templates/app/`), rendered with
//! the answer file's values and the cluster's facts, validated, deployed and gated.
//!
//! Nothing here names a workload, a port or a value of the application: `app.yaml.tera`
//! declares what to generate, the deploy order and the endpoints; `manifests/*.yaml.tera`
//! are the objects. Replacing the application means replacing `templates/app/` and the
//! `app-images` entries of `assets/assets.lock` (docs/application.md).
//!
//! Entry points, in the order the install pipeline uses them:
//! - [`App::load`]: bundle + [`Values`] + [`ClusterFacts`] -> the rendered `app.yaml`;
//! - [`generated::ensure`]: secrets and TLS material, created once, read back on reruns;
//! - [`App::render`]: the manifests, validated ([`validate`]);
//! - [`deploy`]: server-side apply in order, each workload gated on its rollout;
//! - [`endpoints::check`]: the declared endpoints, from the workstation;
//! - [`dns`]: the host-network CoreDNS that comes before all of it, and its gate.

pub mod dns;
pub mod endpoints;
pub mod generated;
pub mod render;
pub mod spec;
pub mod tls;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::assets::{ArtifactKind, AssetLock};
use crate::kube::apply::{self, ApplyReport};
use crate::kube::rollout::{self, WorkloadId};
use crate::kube::{Cluster, KubeError};
use crate::report::events::Reporter;
use crate::secret::Secret;

pub use generated::Generated;
pub use render::{Manifest, Manifests};
pub use spec::AppSpec;
pub use validate::Problem;

mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_templates.rs"));
}

/// Where the application's files are shown to come from in messages.
pub const APP_ROOT: &str = "templates/app";
/// Where the cluster services' files are shown to come from in messages.
pub const CLUSTER_ROOT: &str = "templates/cluster";
/// The policy enforcer's manifests (`phases::enforcer`).
pub const ENFORCER_ROOT: &str = "templates/enforcer";
/// The application's metadata template inside its bundle.
pub const APP_SPEC_FILE: &str = "app.yaml.tera";

/// Errors of the application layer. None carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A template does not render or does not parse (a bug in the bundle).
    #[error("{file}: {message}")]
    Template { file: String, message: String },
    /// Rendered objects break the appliance's rules.
    #[error("the application's manifests are not acceptable ({} problem{}):\n  {}",
        .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Problem>),
    /// What the cluster reported is not enough to render (a node without an address, ...).
    #[error("{0}")]
    Facts(String),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Apply(Box<apply::ApplyError>),
    /// A workload did not become ready in time; the text is the full diagnosis.
    #[error("{0}")]
    Rollout(Box<rollout::RolloutError>),
    /// Secrets or TLS material stored in the cluster cannot be used.
    #[error("{0}")]
    Generated(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<apply::ApplyError> for AppError {
    fn from(e: apply::ApplyError) -> Self {
        AppError::Apply(Box::new(e))
    }
}

impl AppError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            AppError::Template { .. } => Some(
                "the bundled application's templates are broken: fix templates/app (or report it to the vendor) and rebuild"
                    .into(),
            ),
            AppError::Invalid(_) => Some(
                "each problem names the template and workload; change the answer file's value or the template, then run the install again"
                    .into(),
            ),
            // The diagnosis already ends with its own "what to do" line.
            AppError::Rollout(_) => None,
            AppError::Generated(_) => Some(
                "the Secret was changed by hand; delete it to have the installer create it anew (the application restarts with new credentials)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// A set of template files (path relative to the bundle root -> content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    root: String,
    files: BTreeMap<String, String>,
}

impl Bundle {
    /// The application compiled into this binary (`templates/app/`).
    pub fn embedded() -> Bundle {
        Bundle::from_files(APP_ROOT, bundled::APP_FILES.iter().copied())
    }

    /// The installer's own cluster services (`templates/cluster/`).
    pub fn cluster_services() -> Bundle {
        Bundle::from_files(CLUSTER_ROOT, bundled::CLUSTER_FILES.iter().copied())
    }

    /// The policy enforcer's manifests (`templates/enforcer/`).
    pub fn enforcer() -> Bundle {
        Bundle::from_files(ENFORCER_ROOT, bundled::ENFORCER_FILES.iter().copied())
    }

    /// A bundle from files in memory (tests, or another application).
    pub fn from_files<'a>(
        root: &str,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Bundle {
        Bundle {
            root: root.to_owned(),
            files: files
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// Replaces or adds one file (tests: a broken variant of the real bundle).
    pub fn with_file(mut self, path: &str, content: &str) -> Bundle {
        self.files.insert(path.to_owned(), content.to_owned());
        self
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn file(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// The manifest templates (`manifests/*.yaml.tera`), in file-name order.
    pub fn manifest_templates(&self) -> Vec<&str> {
        self.files
            .keys()
            .filter(|k| k.starts_with("manifests/") && k.ends_with(".yaml.tera"))
            .map(String::as_str)
            .collect()
    }

    pub(crate) fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }
}

/// The application's values from the plan: plain values (visible to templates as
/// `values.<name>`) and secret values (never visible to templates; they reach the cluster
/// only as generated Secrets, through `fromValue` in app.yaml).
#[derive(Debug, Clone, Default)]
pub struct Values {
    plain: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Secret>,
}

impl Values {
    pub fn new() -> Values {
        Values::default()
    }

    /// Sets a plain value (string, number or bool).
    pub fn set(mut self, name: &str, value: impl Into<Value>) -> Values {
        self.plain.insert(name.to_owned(), value.into());
        self
    }

    /// Sets a secret value.
    pub fn set_secret(mut self, name: &str, value: Secret) -> Values {
        self.secrets.insert(name.to_owned(), value);
        self
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    pub fn plain(&self) -> &BTreeMap<String, Value> {
        &self.plain
    }
}

impl From<&crate::config::plan::AppValues> for Values {
    /// The plan's checked values: secrets stay secrets, everything else becomes a plain
    /// template value (ports and ints as numbers).
    fn from(v: &crate::config::plan::AppValues) -> Values {
        use crate::config::app::AppValue;
        let mut out = Values::new();
        for (name, value) in v.iter() {
            out = match value {
                AppValue::Secret(s) => out.set_secret(name, s.clone()),
                AppValue::String(s) | AppValue::Hostname(s) | AppValue::Email(s) => {
                    out.set(name, s.clone())
                }
                AppValue::Int(n) => out.set(name, *n),
                AppValue::Port(p) => out.set(name, *p),
                AppValue::Bool(b) => out.set(name, *b),
            };
        }
        out
    }
}

/// One port a workload holds on the nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostPort {
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// `Kind namespace/name (container c, template)`.
    pub owner: String,
}

/// One node as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFact {
    /// The Kubernetes node name.
    pub name: String,
    /// Its InternalIP: where host-network pods listen.
    pub address: IpAddr,
    /// A k3s server (control plane, etcd member).
    pub server: bool,
}

/// What rendering needs to know about the running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Sorted by name.
    pub nodes: Vec<NodeFact>,
    pub service_cidr: IpNet,
    /// The cluster domain (k3s default `cluster.local`).
    pub domain: String,
}

/// The label k3s puts on servers (`pkg/node/controller.go` / kubelet node-labels:
/// `node-role.kubernetes.io/control-plane=true`).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

impl ClusterFacts {
    /// From the cluster's Node objects: each node's InternalIP and whether it carries the
    /// control-plane label.
    pub fn from_nodes(nodes: &[Node], service_cidr: IpNet) -> Result<ClusterFacts, AppError> {
        let mut out = Vec::new();
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let addr = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone());
            let address = addr
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    AppError::Facts(format!(
                        "node {name} reports no InternalIP address (saw {addr:?})"
                    ))
                })?;
            let server = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CONTROL_PLANE_LABEL))
                .is_some_and(|v| v == "true");
            out.push(NodeFact {
                name,
                address,
                server,
            });
        }
        Ok(ClusterFacts::new(out, service_cidr))
    }

    pub fn new(mut nodes: Vec<NodeFact>, service_cidr: IpNet) -> ClusterFacts {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterFacts {
            nodes,
            service_cidr,
            domain: "cluster.local".into(),
        }
    }

    /// The `kube-dns` clusterIP k3s hands every kubelet (10th address of the service CIDR).
    pub fn dns_ip(&self) -> Result<IpAddr, AppError> {
        crate::k3s::ClusterSettings {
            service_cidr: self.service_cidr,
            ..Default::default()
        }
        .cluster_dns()
        .ok_or_else(|| AppError::Facts(format!("service CIDR {} is too small", self.service_cidr)))
    }

    /// The `kubernetes` Service's clusterIP (first address of the service CIDR).
    pub fn kubernetes_ip(&self) -> Option<IpAddr> {
        nth_address(self.service_cidr, 1)
    }

    pub fn servers(&self) -> impl Iterator<Item = &NodeFact> {
        self.nodes.iter().filter(|n| n.server)
    }

    /// The template context's `cluster`.
    pub fn context(&self) -> Result<Value, AppError> {
        let node = |n: &NodeFact| {
            json!({
                "name": n.name,
                "address": n.address.to_string(),
                "urlHost": url_host(n.address),
                "server": n.server,
            })
        };
        let dns = self.dns_ip()?;
        Ok(json!({
            "nodes": self.nodes.iter().map(node).collect::<Vec<_>>(),
            "servers": self.nodes.iter().filter(|n| n.server).map(node).collect::<Vec<_>>(),
            "agents": self.nodes.iter().filter(|n| !n.server).map(node).collect::<Vec<_>>(),
            "nodeCount": self.nodes.len(),
            "dnsIp": dns.to_string(),
            "dnsServer": url_host(dns),
            "kubernetesIp": self.kubernetes_ip().map(|i| i.to_string()).unwrap_or_default(),
            "serviceCidr": self.service_cidr.to_string(),
            "domain": self.domain,
        }))
    }
}

/// `10.0.0.1` or `[fd00::1]`: an address as it goes into a URL or a `host:port`.
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn nth_address(net: IpNet, n: u32) -> Option<IpAddr> {
    match net {
        IpNet::V4(v4) => {
            let ip = std::net::Ipv4Addr::from(u32::from(v4.network()).checked_add(n)?);
            v4.contains(&ip).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v6) => {
            let ip = std::net::Ipv6Addr::from(u128::from(v6.network()).checked_add(u128::from(n))?);
            v6.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

/// Every image reference the nodes will have: the `app-images` entries of `lock`, plus the
/// images of the installer's cluster services (CoreDNS, from k3s's airgap archive).
pub fn available_images(lock: &AssetLock) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = lock
        .artifacts
        .iter()
        .filter(|e| e.kind == ArtifactKind::AppImages)
        .flat_map(|e| {
            e.images
                .iter()
                .map(|i| validate::normalize_image(&i.reference))
        })
        .collect();
    if let Ok(s) = dns::ClusterServices::embedded() {
        set.insert(validate::normalize_image(&s.dns.image));
    }
    set
}

/// The asset lock compiled into this binary.
pub fn builtin_lock() -> Result<AssetLock, AppError> {
    AssetLock::parse(installer_assets::LOCK_JSON, "the built-in asset lock").map_err(|e| {
        AppError::Template {
            file: "assets/assets.lock".into(),
            message: e.to_string(),
        }
    })
}

/// The application, loaded for one cluster and one set of values.
#[derive(Debug, Clone)]
pub struct App {
    bundle: Bundle,
    values: Values,
    facts: ClusterFacts,
    spec: AppSpec,
    images: Option<BTreeSet<String>>,
}

impl App {
    /// Renders and checks `app.yaml.tera`. The images the manifests may use default to
    /// those of the built-in asset lock ([`App::with_images`] to change).
    pub fn load(bundle: Bundle, values: Values, facts: ClusterFacts) -> Result<App, AppError> {
        let engine = render::engine(bundle.files(), bundle.root())?;
        if bundle.file(APP_SPEC_FILE).is_none() {
            return Err(AppError::Template {
                file: format!("{}/{APP_SPEC_FILE}", bundle.root()),
                message: "missing: the application must declare its metadata here".into(),
            });
        }
        let ctx = json!({
            "values": values.plain(),
            "cluster": facts.context()?,
        });
        let text = render::render_one(&engine, bundle.root(), APP_SPEC_FILE, &ctx)
            .map_err(|e| secret_value_hint(e, &values))?;
        let spec = AppSpec::parse(&text, &format!("{}/{APP_SPEC_FILE}", bundle.root()))?;
        let images = builtin_lock().ok().map(|l| available_images(&l));
        Ok(App {
            bundle,
            values,
            facts,
            spec,
            images,
        })
    }

    /// Checks images against this set (normalized references) instead; `None` skips the check.
    pub fn with_images(mut self, images: Option<BTreeSet<String>>) -> App {
        self.images = images;
        self
    }

    pub fn spec(&self) -> &AppSpec {
        &self.spec
    }

    pub fn values(&self) -> &Values {
        &self.values
    }

    pub fn facts(&self) -> &ClusterFacts {
        &self.facts
    }

    /// The workloads in deploy-and-gate order.
    pub fn workloads(&self) -> Vec<WorkloadId> {
        self.spec.workload_ids()
    }

    /// The endpoints to check, one per (endpoint, node).
    pub fn endpoints(&self) -> Vec<endpoints::Endpoint> {
        endpoints::resolve(&self.spec, &self.facts)
    }

    /// Renders every manifest template, adds the config-hash annotations and validates the
    /// result (against the cluster services' ports too). All problems are reported at once.
    pub fn render(&self, generated: &Generated) -> Result<Manifests, AppError> {
        let engine = render::engine(self.bundle.files(), self.bundle.root())?;
        let ctx = json!({
            "values": self.values.plain(),
            "cluster": self.facts.context()?,
            "app": {"name": self.spec.name, "namespace": self.spec.namespace},
            "generated": {"versions": generated.versions()},
        });
        let mut items = Vec::new();
        for name in self.bundle.manifest_templates() {
            let text = render::render_one(&engine, self.bundle.root(), name, &ctx)
                .map_err(|e| secret_value_hint(e, &self.values))?;
            items.extend(render::parse_documents(
                &format!("{}/{name}", self.bundle.root()),
                &text,
            )?);
        }
        render::annotate_config_hashes(&mut items, &generated.versions());
        let manifests = Manifests { items };
        let cluster = dns::render(&self.facts)?;
        let rules = validate::Rules {
            images: self.images.clone(),
            node_count: Some(self.facts.nodes.len()),
            taken: validate::declared_ports(&cluster),
            ..validate::Rules::default()
        };
        let mut problems = validate::check(&manifests, &rules);
        problems.extend(self.check_listed_workloads(&manifests));
        if problems.is_empty() {
            Ok(manifests)
        } else {
            Err(AppError::Invalid(problems))
        }
    }

    /// Every port the application and the cluster services will hold on the nodes (the
    /// answer file's port values plus the ports the templates fix, such as the store's peer
    /// port and CoreDNS's), for preflight port checks and firewall openings. Renders with
    /// placeholder generated material, so it needs no cluster.
    pub fn host_ports(&self) -> Result<Vec<HostPort>, AppError> {
        let manifests = self.render(&Generated::placeholder(&self.spec, "0"))?;
        let mut all = validate::declared_ports(&dns::render(&self.facts)?);
        for (k, v) in validate::declared_ports(&manifests) {
            all.entry(k).or_insert(v);
        }
        Ok(all
            .into_iter()
            .map(|((port, protocol), owner)| HostPort {
                port,
                protocol,
                owner,
            })
            .collect())
    }

    /// Every workload object is listed in app.yaml's `workloads` and every listed one exists.
    fn check_listed_workloads(&self, manifests: &Manifests) -> Vec<Problem> {
        let file = format!("{}/{APP_SPEC_FILE}", self.bundle.root());
        let listed = self.workloads();
        let mut problems = Vec::new();
        for w in &listed {
            if manifests
                .find(w.kind.as_str(), Some(&w.namespace), &w.name)
                .is_none()
            {
                problems.push(Problem {
                    file: file.clone(),
                    object: Some(w.to_string()),
                    message: "listed under `workloads` but no template renders it".into(),
                    hint: Some(
                        "list only workloads the manifests define, in the namespace of app.yaml"
                            .into(),
                    ),
                });
            }
        }
        for m in &manifests.items {
            if matches!(m.kind(), "Deployment" | "DaemonSet" | "StatefulSet")
                && !listed.iter().any(|w| {
                    w.kind.as_str() == m.kind()
                        && Some(w.namespace.as_str()) == m.namespace()
                        && w.name == m.name()
                })
            {
                problems.push(Problem {
                    file: m.file.clone(),
                    object: Some(m.describe()),
                    message: format!(
                        "not listed under `workloads` in {file}, so it would never be gated"
                    ),
                    hint: Some("add it to `workloads` (in dependency order)".into()),
                });
            }
        }
        problems
    }
}

fn secret_value_hint(e: AppError, values: &Values) -> AppError {
    match e {
        AppError::Template { file, message } => {
            let secret = values
                .secrets
                .keys()
                .find(|k| message.contains(&format!("values.{k}")));
            match secret {
                Some(k) => AppError::Template {
                    file,
                    message: format!(
                        "{message} (`{k}` is a secret value: templates never see it; use it through a generated Secret, `fromValue: {k}` in app.yaml)"
                    ),
                },
                None => AppError::Template { file, message },
            }
        }
        other => other,
    }
}

/// What `installer status` shows of the application.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observation {
    pub workloads: Vec<rollout::WorkloadStatus>,
    pub endpoints: Vec<endpoints::EndpointResult>,
}

impl Observation {
    /// Every workload rolled out and every endpoint answering.
    pub fn healthy(&self) -> bool {
        self.workloads.iter().all(|w| w.rolled_out) && self.endpoints.iter().all(|e| e.ok)
    }
}

/// Reads the application's state without changing anything (for `installer status`): each
/// workload's rollout, restarts and problems, and each endpoint checked once (no retries)
/// against the CA stored in the cluster. Also covers CoreDNS, first in the list.
pub async fn observe(
    cluster: &Cluster,
    values: Values,
    service_cidr: IpNet,
) -> Result<Observation, AppError> {
    let facts = ClusterFacts::from_nodes(&cluster.nodes().await?, service_cidr)?;
    let app = App::load(Bundle::embedded(), values, facts)?;
    let mut ids = vec![dns::ClusterServices::embedded()?.dns_workload()?];
    ids.extend(app.workloads());
    let workloads = rollout::status(cluster, &ids).await?;
    let ca = generated::read_ca_cert(cluster, &app).await?;
    let opts = endpoints::CheckOptions {
        attempts: 1,
        ..Default::default()
    };
    let endpoints = endpoints::check(&app.endpoints(), ca.as_deref(), opts).await?;
    Ok(Observation {
        workloads,
        endpoints,
    })
}

/// Timeouts of [`deploy`].
#[derive(Debug, Clone, Copy)]
pub struct DeployTimeouts {
    /// How long each workload may take to roll out (counted from the moment they are all
    /// applied: they roll out together).
    pub per_workload: Duration,
    /// The longest pause between two looks at a workload when its watches report no change
    /// ([`rollout::RECHECK`] by default): only the early give-up's grace period depends on it.
    pub interval: Duration,
}

impl Default for DeployTimeouts {
    fn default() -> Self {
        DeployTimeouts {
            per_workload: Duration::from_secs(300),
            interval: rollout::RECHECK,
        }
    }
}

/// Applies the application: namespaces, then configuration and Secrets, then every
/// workload at once, and gates them together on their rollouts ([`rollout::gate`]). A
/// workload whose dependency is not ready yet simply is not ready either (its probes fail,
/// its pods retry), so nothing is gained by holding it back; the gates report in `app.yaml`
/// order (store before API before gateway), so a failure names the first workload in that
/// order that did not roll out, with the diagnosis. Returns what changed.
pub async fn deploy(
    cluster: &Cluster,
    app: &App,
    manifests: &Manifests,
    reporter: &Reporter,
    timeouts: DeployTimeouts,
) -> Result<ApplyReport, AppError> {
    let mut report = apply_setup(cluster, app, manifests, reporter).await?;
    report.extend(roll_out(cluster, app, manifests, reporter, timeouts).await?);
    Ok(report)
}

/// The first half of [`deploy`]: the objects that are not workloads (namespaces,
/// configuration, Secrets, Services). Nothing runs from them, so they need no cluster DNS
/// and may be applied while CoreDNS rolls out.
pub async fn apply_setup(
    cluster: &Cluster,
    app: &App,
    manifests: &Manifests,
    reporter: &Reporter,
) -> Result<ApplyReport, AppError> {
    let (setup, _) = apply::split_workloads(manifests, &app.workloads());
    Ok(apply::apply_all(cluster, &setup, reporter).await?)
}

/// The second half of [`deploy`]: every workload applied at once, then gated together.
pub async fn roll_out(
    cluster: &Cluster,
    app: &App,
    manifests: &Manifests,
    reporter: &Reporter,
    timeouts: DeployTimeouts,
) -> Result<ApplyReport, AppError> {
    let (_, workloads) = apply::split_workloads(manifests, &app.workloads());
    let (ids, items): (Vec<WorkloadId>, Vec<Manifest>) = workloads.into_iter().unzip();
    let report = apply::apply_all(cluster, &Manifests { items }, reporter).await?;
    rollout::gate(
        cluster,
        &ids,
        timeouts.per_workload,
        timeouts.interval,
        reporter,
    )
    .await
    .map_err(|e| match e {
        rollout::GateError::Rollout(r) => AppError::Rollout(r),
        rollout::GateError::Kube(k) => AppError::Kube(k),
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests;
