//! The reconcile loop: watchers (or a snapshot file), cgroup resolution, compile, apply.
//!
//! Nothing is changed before every watcher has synced. Then, on every change and every
//! `interval`: compile; apply when the rules or a cgroup id changed, or when the kernel's table
//! is no longer the one applied (drift). An unreachable API keeps the stores as they were, so the
//! last good rules stay; a refused batch leaves the previous table and is retried.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::cgroup::{CgroupFs, CgroupRef};
use crate::compile::{Cgroups, compile};
use crate::model::{Config, Snapshot};
use crate::nft::Nft;
use crate::state::Shared;

/// Where snapshots come from.
pub enum Source {
    Kube(KubeStores),
    /// A JSON [`Snapshot`] re-read at every tick (tests, benchmarks, debugging).
    File(PathBuf),
}

pub struct KubeStores {
    client: Client,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    nodes: Store<Node>,
}

fn spawn_reflector<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "watch failed; keeping the last rules and retrying");
                }
                changed.notify_one();
                std::future::ready(())
            })
            .await;
    });
    reader
}

impl KubeStores {
    /// Starts the four watchers (in-cluster configuration) and waits until each has listed.
    pub async fn start(changed: Arc<Notify>) -> anyhow::Result<Self> {
        let client = Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("no Kubernetes client configuration: {e}; hint: run in a pod with a service account, or set KUBECONFIG")
        })?;
        let s = KubeStores {
            pods: spawn_reflector(Api::<Pod>::all(client.clone()), changed.clone()),
            namespaces: spawn_reflector(Api::<Namespace>::all(client.clone()), changed.clone()),
            policies: spawn_reflector(Api::<NetworkPolicy>::all(client.clone()), changed.clone()),
            nodes: spawn_reflector(Api::<Node>::all(client.clone()), changed),
            client,
        };
        s.pods.wait_until_ready().await?;
        s.namespaces.wait_until_ready().await?;
        s.policies.wait_until_ready().await?;
        s.nodes.wait_until_ready().await?;
        Ok(s)
    }

    /// Removes `key` from this node's taints when it carries it (see [`crate::taint`]).
    /// `Ok(true)`: the node is now seen without it.
    async fn lift_taint(&self, node: &str, key: &str) -> anyhow::Result<bool> {
        let Some(n) = self.nodes.get(&reflector::ObjectRef::new(node)) else {
            return Err(anyhow::anyhow!(
                "the node {node} is not in the watched nodes"
            ));
        };
        let Some(patch) = crate::taint::removal_patch(&n, key) else {
            return Ok(true);
        };
        let api = Api::<Node>::all(self.client.clone());
        api.patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| anyhow::anyhow!("removing the taint {key} from the node {node}: {e}"))?;
        tracing::info!(
            node,
            taint = key,
            "rules applied: taint removed from the node"
        );
        Ok(true)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pods: self.pods.state().iter().map(|p| (**p).clone()).collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .map(|p| (**p).clone())
                .collect(),
            policies: self
                .policies
                .state()
                .iter()
                .map(|p| (**p).clone())
                .collect(),
            nodes: self.nodes.state().iter().map(|p| (**p).clone()).collect(),
        }
    }
}

impl Source {
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        match self {
            Source::Kube(k) => Ok(k.snapshot()),
            Source::File(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: line {}, column {}: {e}",
                        p.display(),
                        e.line(),
                        e.column()
                    )
                })
            }
        }
    }
}

/// Resolves every local host-network pod's cgroup.
pub fn resolve(snap: &Snapshot, node: &str, fs: &CgroupFs) -> Cgroups {
    let mut pods = BTreeMap::new();
    for p in &snap.pods {
        let Some(spec) = &p.spec else { continue };
        if spec.node_name.as_deref() != Some(node) || spec.host_network != Some(true) {
            continue;
        }
        let Some(uid) = &p.metadata.uid else { continue };
        let qos = p.status.as_ref().and_then(|s| s.qos_class.as_deref());
        if let Some(c) = fs.resolve(uid, qos) {
            pods.insert(uid.clone(), c);
        }
    }
    Cgroups {
        pods,
        roots: fs.roots(),
    }
}

/// What was applied last: the text and the cgroup ids it was parsed against.
#[derive(PartialEq, Eq, Clone)]
struct Applied {
    text: String,
    ids: Vec<CgroupRef>,
    listing: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, crate::state::State> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The loop. Runs until the process ends.
pub async fn run(
    cfg: Config,
    fs: CgroupFs,
    nft: Nft,
    state: Shared,
    source: Source,
    changed: Arc<Notify>,
    interval: Duration,
) -> anyhow::Result<()> {
    {
        let mut s = lock(&state);
        s.synced = true;
        s.adopted = matches!(nft.listing(), Ok(Some(_)));
    }
    if lock(&state).adopted {
        tracing::info!(table = %nft.table, "adopting the rules already in the kernel until the first apply");
    }
    let mut last: Option<Applied> = None;
    loop {
        tick(&cfg, &fs, &nft, &state, &source, &mut last);
        lift_taint(&cfg, &state, &source).await;
        tokio::select! {
            _ = changed.notified() => {},
            _ = tokio::time::sleep(interval) => {},
        }
    }
}

/// After a successful apply, the installer's taint is removed from this node (and again
/// whenever the node shows it, e.g. after it registered anew). Never before: until the rules are
/// in the kernel, no application pod may be scheduled here.
async fn lift_taint(cfg: &Config, state: &Shared, source: &Source) {
    let (Some(key), Source::Kube(k)) = (cfg.remove_taint.as_deref(), source) else {
        return;
    };
    if !lock(state).ready {
        return;
    }
    let r = k.lift_taint(&cfg.node_name, key).await;
    let mut s = lock(state);
    match r {
        Ok(seen_without) => {
            s.taint_removed = seen_without;
            s.taint_error = None;
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot remove the taint yet; retrying");
            s.taint_error = Some(format!("{e:#}"));
        }
    }
}

fn tick(
    cfg: &Config,
    fs: &CgroupFs,
    nft: &Nft,
    state: &Shared,
    source: &Source,
    last: &mut Option<Applied>,
) {
    let started = Instant::now();
    let snap = match source.snapshot() {
        Ok(s) => s,
        Err(e) => {
            let mut s = lock(state);
            s.last_error = Some(format!("{e:#}"));
            tracing::warn!(error = %format!("{e:#}"), "no snapshot; keeping the last rules");
            return;
        }
    };
    let cg = resolve(&snap, &cfg.node_name, fs);
    let rs = compile(&snap, cfg, &cg);
    let mut ids: Vec<CgroupRef> = cg
        .pods
        .values()
        .cloned()
        .chain(cg.roots.iter().cloned())
        .collect();
    ids.sort();
    let listing = nft.listing().ok().flatten();
    let counters = nft.counters().unwrap_or_default();
    let unchanged = last
        .as_ref()
        .is_some_and(|l| l.text == rs.text && l.ids == ids);
    let drifted = last.as_ref().is_some_and(|l| l.listing != listing);
    {
        let mut s = lock(state);
        s.dropped_packets = s.counter_base.dropped_packets + counters.dropped_packets;
        s.would_drop_packets = s.counter_base.would_drop_packets + counters.would_drop_packets;
    }
    if unchanged && !drifted {
        return;
    }
    if unchanged && drifted {
        tracing::warn!(table = %nft.table, "the kernel's table differs from the one applied; re-applying");
    }
    match nft.apply(&rs.text) {
        Ok(()) => {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let listing = nft.listing().ok().flatten();
            let mut s = lock(state);
            s.counter_base.dropped_packets += counters.dropped_packets;
            s.counter_base.would_drop_packets += counters.would_drop_packets;
            if unchanged && drifted {
                s.drift_repairs += 1;
            }
            s.ready = true;
            s.adopted = false;
            s.stats = rs.stats.clone();
            s.warnings = rs.warnings.clone();
            s.applies += 1;
            s.last_apply_unix = Some(now_unix());
            s.last_apply_ms = Some(ms);
            s.last_error = None;
            tracing::info!(
                rules = rs.stats.rules,
                pods = rs.stats.pods,
                policies = rs.stats.policies,
                unresolved = rs.stats.unresolved_pods,
                ms,
                "rules applied"
            );
            for w in &rs.warnings {
                tracing::warn!(warning = %w, "not enforceable as written");
            }
            *last = Some(Applied {
                text: rs.text,
                ids,
                listing,
            });
        }
        Err(e) => {
            let mut s = lock(state);
            s.apply_errors += 1;
            s.last_error = Some(e.to_string());
            tracing::error!(error = %e, "apply failed; the previous rules stay");
        }
    }
}
