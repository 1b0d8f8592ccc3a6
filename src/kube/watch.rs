//! Watches that wake the gates: a plain `Api::watch` per resource (kube's `runtime` feature
//! is not enabled, docs/design.md "Gates"), resumed from the last resourceVersion it saw and
//! re-listed when the server says that version is gone (410 Gone / `Expired`, as the
//! apiserver reports it inside the stream) or the stream breaks.
//!
//! A [`Changes`] holds any number of such watches and bumps one counter on every event; a
//! gate subscribes and re-reads what it waits for as soon as the counter moves
//! ([`super::wait::until_changed`]). Every (re)list bumps the counter too, so a change that
//! happened before the watch started is not missed: the gate's next probe sees it.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The pause before a watch is opened again after its list or watch request failed (the
/// tunnel reconnecting, the apiserver restarting). Events are never lost over it: the
/// watch resumes from the last resourceVersion, or re-lists and wakes the gate.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(200);

/// How long one watch request lasts on the server side (`timeoutSeconds`; kube-rs allows
/// less than 295): it is then resumed from the last resourceVersion.
const WATCH_SECONDS: u32 = 240;

/// Watches whose events bump one change counter.
pub struct Changes {
    tx: Arc<watch::Sender<u64>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

impl Changes {
    pub fn new() -> Changes {
        let (tx, _) = watch::channel(0u64);
        Changes {
            tx: Arc::new(tx),
            tasks: Vec::new(),
        }
    }

    /// Adds a watch on `api`'s objects, narrowed by a field selector (`metadata.name=x`) if
    /// given. It runs until the [`Changes`] is dropped.
    pub fn watch<K>(&mut self, api: Api<K>, fields: Option<&str>)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut lp = ListParams::default().limit(1);
        let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
        if let Some(f) = fields {
            lp = lp.fields(f);
            wp = wp.fields(f);
        }
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(run(api, lp, wp, tx)));
    }

    /// A receiver that sees every later change ([`super::wait::until_changed`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Bumps the counter by hand (for tests and for callers that learn of a change in
    /// another way).
    pub fn poke(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|v| *v = v.wrapping_add(1));
}

/// What ended one watch request.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The server closed it (its timeout) or the connection broke: resume from the last
    /// resourceVersion.
    Resume,
    /// The resourceVersion is too old (410) or the server sent another error: list again.
    Relist,
}

async fn run<K>(api: Api<K>, lp: ListParams, wp: WatchParams, tx: Arc<watch::Sender<u64>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    loop {
        // The list is only the starting point: its resourceVersion. The gate reads the
        // objects itself; the bump makes it look again.
        let mut rv = match api.list(&lp).await {
            Ok(list) => list.metadata.resource_version.unwrap_or_default(),
            Err(e) => {
                tracing::debug!("watch: list failed, again in {RECONNECT_AFTER:?}: {e}");
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        };
        bump(&tx);
        // Resume from the last resourceVersion until the server wants a new list.
        while watch_once(&api, &wp, &mut rv, &tx).await == Ended::Resume {}
    }
}

async fn watch_once<K>(
    api: &Api<K>,
    wp: &WatchParams,
    rv: &mut String,
    tx: &watch::Sender<u64>,
) -> Ended
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = match api.watch(wp, rv).await {
        Ok(s) => s,
        Err(kube::Error::Api(s)) if s.code == 410 => return Ended::Relist,
        Err(e) => {
            tracing::debug!("watch: cannot open, again in {RECONNECT_AFTER:?}: {e}");
            tokio::time::sleep(RECONNECT_AFTER).await;
            return Ended::Resume;
        }
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => {
                if let Some(v) = o.resource_version() {
                    *rv = v;
                }
                bump(tx);
            }
            Ok(WatchEvent::Bookmark(b)) => *rv = b.metadata.resource_version,
            Ok(WatchEvent::Error(s)) => {
                tracing::debug!("watch: the server ended it ({}): {}", s.code, s.message);
                return Ended::Relist;
            }
            Err(e) => {
                tracing::debug!("watch: stream broke, resuming in {RECONNECT_AFTER:?}: {e}");
                tokio::time::sleep(RECONNECT_AFTER).await;
                return Ended::Resume;
            }
        }
    }
    Ended::Resume
}
