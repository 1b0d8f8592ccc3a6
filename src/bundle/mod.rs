//! `installer support-bundle`: one redacted archive from every node over SSH, whether the
//! cluster is up or down (see docs/support-bundle.md).
//!
//! [`collect`] takes hosts already connected (or the reason they are not) and, when the API
//! answered, a cluster client; it runs the node collectors ([`collectors`]) under their
//! limits and each node's budget, the cluster collectors ([`cluster`]), redacts everything
//! in memory ([`redact`]), analyses it ([`analysis`]), writes one `.tar.gz` ([`archive`])
//! and scans it back for every known secret.

pub mod analysis;
pub mod archive;
pub mod cluster;
pub mod collectors;
pub mod manifest;
pub mod node;
pub mod redact;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::host::{Remote, RemoteExt};
use crate::k3s::paths;
use crate::kube::Cluster;
use crate::report::{Event, HostOutcome, Reporter};

use analysis::Finding;
use archive::Entry;
use collectors::{Collector, Context};
use manifest::{ApiEntry, Item, Manifest, NodeEntry, Status};
use node::{Collected, NodeRun};
use redact::Redactor;

/// Exit code of `support-bundle` when the archive was written but something is missing.
pub const EXIT_PARTIAL: i32 = 3;

/// A host going in: connected, or why not.
pub struct NodeInput {
    pub name: String,
    pub is_server: bool,
    pub address: String,
    pub remote: Result<Arc<dyn Remote>, String>,
}

/// How to collect.
#[derive(Debug, Clone)]
pub struct Options {
    pub out_dir: PathBuf,
    /// Journals and logs from this long ago.
    pub since: Duration,
    /// Per node: what is left when it runs out is recorded as `timeout`.
    pub node_budget: Duration,
    pub cluster_budget: Duration,
    pub redact: bool,
    /// Ports checked between nodes besides the cluster's own.
    pub app_ports: Vec<u16>,
    /// Servers in the answer file (the etcd member count to expect).
    pub expected_servers: usize,
    /// Appended to the built-in node collectors (tests; vendor additions).
    pub extra_collectors: Vec<Collector>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out_dir: PathBuf::from("."),
            since: Duration::from_secs(7 * 86400),
            node_budget: Duration::from_secs(8 * 60),
            cluster_budget: Duration::from_secs(3 * 60),
            redact: true,
            app_ports: Vec::new(),
            expected_servers: 0,
            extra_collectors: Vec::new(),
        }
    }
}

/// Everything the bundle starts from.
pub struct Input<'a> {
    pub cluster_name: String,
    pub nodes: Vec<NodeInput>,
    /// The API client, or why there is none.
    pub cluster: Result<&'a Cluster, String>,
    /// Workstation files for `installer/` (path under it, content): redacted like the rest.
    pub workstation: Vec<(String, Vec<u8>)>,
    pub options: Options,
}

/// What `support-bundle` shows at the end (no secret: paths, counts, findings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub path: String,
    pub bytes: u64,
    pub complete: bool,
    pub seconds: f64,
    pub nodes: Vec<(String, String)>,
    pub api: String,
    pub counts: Vec<(String, usize)>,
    pub redactions: usize,
    pub findings: Vec<Finding>,
}

/// Why no archive was written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error(transparent)]
    Leak(#[from] redact::ScanError),
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads the join tokens and the admin kubeconfig into memory only, so that they and their
/// parts (the token's password, the kubeconfig's key) are matched in every form.
async fn learn_node_secrets(remote: &dyn Remote, redactor: &mut Redactor) {
    let files = [
        paths::SERVER_TOKEN_FILE,
        paths::AGENT_TOKEN_FILE,
        paths::SERVER_TOKEN_GENERATED,
        paths::AGENT_TOKEN_GENERATED,
        paths::KUBECONFIG,
        paths::NODE_PASSWORD,
    ];
    for f in files {
        let read = tokio::time::timeout(Duration::from_secs(20), remote.read_file(f, true)).await;
        let Ok(Ok(Some(bytes))) = read else { continue };
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if f == paths::KUBECONFIG {
            for line in text.lines() {
                let t = line.trim();
                for key in [
                    "client-key-data:",
                    "client-certificate-data:",
                    "token:",
                    "password:",
                ] {
                    if let Some(v) = t.strip_prefix(key) {
                        let v = v.trim();
                        redactor.learn(v);
                        use base64::Engine as _;
                        if let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(v) {
                            let pem = String::from_utf8_lossy(&pem).into_owned();
                            // The key's body lines, one by one (they are what a leak shows).
                            for l in pem
                                .lines()
                                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                            {
                                redactor.learn(l);
                            }
                        }
                    }
                }
            }
            continue;
        }
        redactor.learn(&text);
        if let Ok(t) = crate::k3s::token::JoinToken::parse(&text) {
            redactor.learn(t.password().expose());
        }
        if let Some((_, pw)) = text.rsplit_once(':') {
            redactor.learn(pw);
        }
    }
}

fn clock_offset(c: &Collected, t0: i64, t1: i64) -> Option<i64> {
    let first = String::from_utf8_lossy(&c.data)
        .lines()
        .next()?
        .trim()
        .to_owned();
    let remote: f64 = first.parse().ok()?;
    Some((remote * 1000.0) as i64 - (t0 + t1) / 2)
}

/// Collects, redacts, analyses and writes the bundle. `Err` only when no archive exists.
pub async fn collect(input: Input<'_>, reporter: &Reporter) -> Result<Summary, BundleError> {
    let started = Instant::now();
    let opts = &input.options;
    let now = unix_ms() / 1000;
    let since_epoch = now - opts.since.as_secs() as i64;
    let mut redactor = Redactor::new(Vec::new(), opts.redact);
    let api_up = input.cluster.is_ok();

    let mut ports: Vec<u16> = collectors::CLUSTER_PORTS.to_vec();
    ports.extend(opts.app_ports.iter().copied());
    ports.sort_unstable();
    ports.dedup();

    // Nodes in parallel; each node's collectors in order, within its budget.
    let runs = input.nodes.iter().map(|n| {
        let ctx = Context {
            since_epoch,
            peers: input
                .nodes
                .iter()
                .filter(|p| p.name != n.name)
                .map(|p| (p.name.clone(), p.address.clone()))
                .collect(),
            ports: ports.clone(),
        };
        let mut list = collectors::node_collectors(&ctx);
        list.extend(opts.extra_collectors.iter().cloned());
        async move {
            let t = Instant::now();
            let mut learnt = Redactor::new(Vec::new(), true);
            let result = match &n.remote {
                Err(e) => {
                    let items = list
                        .iter()
                        .map(|c| Collected {
                            item: node::absent(&n.name, c, Status::Unreachable, e.clone()),
                            data: Vec::new(),
                        })
                        .collect();
                    (items, None)
                }
                Ok(remote) => {
                    reporter.emit(Event::HostStep {
                        phase: "support-bundle".into(),
                        host: n.name.clone(),
                        message: format!("collecting {} items", list.len()),
                    });
                    learn_node_secrets(remote.as_ref(), &mut learnt).await;
                    let run = NodeRun {
                        name: &n.name,
                        is_server: n.is_server,
                        api_up,
                        budget: opts.node_budget,
                    };
                    // The clock first and alone, to stamp its send and receive times.
                    let (clock, rest): (Vec<Collector>, Vec<Collector>) =
                        list.into_iter().partition(|c| c.id == "system/clock");
                    let t0 = unix_ms();
                    let mut items = node::run_node(remote.clone(), &run, &clock).await;
                    let t1 = unix_ms();
                    let offset = items.first().and_then(|c| clock_offset(c, t0, t1));
                    items.extend(node::run_node(remote.clone(), &run, &rest).await);
                    reporter.emit(Event::HostDone {
                        phase: "support-bundle".into(),
                        host: n.name.clone(),
                        outcome: HostOutcome::Unchanged,
                        detail: Some(format!(
                            "{} of {} ok",
                            items.iter().filter(|i| i.item.status == Status::Ok).count(),
                            items.len()
                        )),
                    });
                    (items, offset)
                }
            };
            (result, learnt.literals_learnt(), t.elapsed())
        }
    });
    let results = futures::future::join_all(runs).await;

    let (cluster_files, cluster_data, api) = match input.cluster {
        Ok(c) => {
            reporter.emit(Event::HostStep {
                phase: "support-bundle".into(),
                host: c.via().to_owned(),
                message: "collecting from the Kubernetes API".into(),
            });
            let (files, data) = cluster::collect(c, opts.since, opts.cluster_budget).await;
            (
                files,
                Some(data),
                ApiEntry {
                    reachable: true,
                    via: Some(c.via().to_owned()),
                    reason: None,
                },
            )
        }
        Err(e) => (
            Vec::new(),
            None,
            ApiEntry {
                reachable: false,
                via: None,
                reason: Some(crate::secret::redact(&e)),
            },
        ),
    };

    let mut entries: Vec<Entry> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut node_entries = Vec::new();
    let mut findings: Vec<Finding> = Vec::new();
    for (_, learnt, _) in &results {
        for l in learnt {
            redactor.learn(l);
        }
    }
    for (n, ((collected, offset), _, took)) in input.nodes.iter().zip(results) {
        node_entries.push(NodeEntry {
            name: n.name.clone(),
            role: if n.is_server { "server" } else { "agent" }.into(),
            address: n.address.clone(),
            ssh: if n.remote.is_ok() {
                "ok"
            } else {
                "unreachable"
            }
            .into(),
            error: n.remote.as_ref().err().map(|e| crate::secret::redact(e)),
            clock_offset_ms: offset,
            duration_ms: took.as_millis() as u64,
        });
        for c in collected {
            let text = String::from_utf8_lossy(&c.data).into_owned();
            match c.item.id.as_str() {
                "system/resources" => findings.extend(analysis::disk(&n.name, &text)),
                "network/nftables" if c.item.status == Status::Ok => {
                    findings.extend(analysis::enforcer(&n.name, &text))
                }
                "system/services" if c.item.status == Status::Ok || !text.is_empty() => {
                    findings.extend(analysis::k3s_unit(&n.name, n.is_server, &text))
                }
                "k3s/certificates" => findings.extend(analysis::certificates(&n.name, &text, now)),
                _ => {}
            }
            add(&mut entries, &mut items, &mut redactor, c);
        }
    }
    findings.extend(analysis::nodes(&node_entries));
    if let Some(d) = &cluster_data {
        findings.extend(analysis::cluster(
            &d.nodes,
            &d.pods,
            d.etcd_members,
            opts.expected_servers,
        ));
    }
    for c in cluster_files {
        add(&mut entries, &mut items, &mut redactor, c);
    }
    for (path, data) in &input.workstation {
        let p = format!("installer/{path}");
        let started = Instant::now();
        let c = Collected {
            item: Item {
                id: format!("installer/{path}"),
                node: None,
                path: p.clone(),
                status: Status::Ok,
                exit_code: None,
                duration_ms: started.elapsed().as_millis() as u64,
                bytes_kept: data.len() as u64,
                bytes_dropped: 0,
                reason: None,
            },
            data: data.clone(),
        };
        add(&mut entries, &mut items, &mut redactor, c);
    }

    let manifest = Manifest {
        format: 1,
        installer_version: env!("CARGO_PKG_VERSION").into(),
        cluster: input.cluster_name.clone(),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        since_epoch,
        redaction: opts.redact,
        api: api.clone(),
        nodes: node_entries.clone(),
        items,
    };
    findings.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.id.cmp(&b.id)));
    redactor.report.selfcheck = "passed".into();
    let json = |v: &dyn erased::Json| v.to_json();
    entries.push(Entry {
        path: "manifest.json".into(),
        data: json(&manifest),
    });
    entries.push(Entry {
        path: "analysis.json".into(),
        data: json(&findings),
    });
    entries.push(Entry {
        path: "redactions.json".into(),
        data: json(&redactor.report),
    });

    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let name = format!(
        "support-bundle-{}-{}",
        input.cluster_name,
        stamp.trim_end_matches('Z')
    );
    let path = archive::write(&opts.out_dir, &format!("{name}Z"), entries, now as u64)?;
    if opts.redact
        && let Err(e) = redact::scan_archive(&path, &redactor.literals())
    {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    Ok(Summary {
        path: path.display().to_string(),
        bytes,
        complete: manifest.complete(),
        seconds: started.elapsed().as_secs_f64(),
        nodes: node_entries
            .iter()
            .map(|n| (n.name.clone(), n.ssh.clone()))
            .collect(),
        api: match &api.via {
            Some(v) => format!("answered through {v}"),
            None => format!("not reachable: {}", api.reason.as_deref().unwrap_or("?")),
        },
        counts: manifest
            .counts()
            .iter()
            .map(|(s, n)| (format!("{s:?}").to_lowercase(), *n))
            .collect(),
        redactions: redactor.report.totals.values().sum(),
        findings,
    })
}

/// Redacts one collected file into the archive and records its item.
fn add(entries: &mut Vec<Entry>, items: &mut Vec<Item>, redactor: &mut Redactor, c: Collected) {
    let mut item = c.item;
    if !c.data.is_empty() {
        match redactor.file(&item.path, &c.data) {
            Some(data) => entries.push(Entry {
                path: item.path.clone(),
                data,
            }),
            None => {
                item.status = Status::Failed;
                item.reason = Some("binary output dropped (cannot be redacted)".into());
            }
        }
    }
    items.push(item);
}

mod erased {
    /// Pretty JSON of anything serializable (the bundle's own records).
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).unwrap_or_default()
        }
    }
}
