//! The state endpoint: `/readyz` (ready after the first successful apply), `/healthz`, and
//! `/state` (counters as JSON) on a local HTTP port.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

use crate::compile::Stats;
use crate::nft::Counters;

/// What `/state` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct State {
    pub node: String,
    pub mode: String,
    /// True once this process applied its rules.
    pub ready: bool,
    /// The watchers have synced (nothing is changed before).
    pub synced: bool,
    /// A table of ours was already there at start (kept until the first apply).
    pub adopted: bool,
    pub stats: Stats,
    /// Unix time (seconds) of the last successful apply.
    pub last_apply_unix: Option<u64>,
    /// How long the last compile and apply took, in milliseconds.
    pub last_apply_ms: Option<f64>,
    pub applies: u64,
    pub apply_errors: u64,
    pub last_error: Option<String>,
    /// Re-applies because the kernel's table differed from ours.
    pub drift_repairs: u64,
    /// Packets dropped (enforce) since start, across re-applies.
    pub dropped_packets: u64,
    /// Packets that would have been dropped (audit) since start.
    pub would_drop_packets: u64,
    pub warnings: Vec<String>,
    /// The taint this enforcer removes from its node after its first apply (`--remove-taint`),
    /// if any.
    pub taint: Option<String>,
    /// The node was seen without that taint after a successful apply (removed by this
    /// enforcer, or not there).
    pub taint_removed: bool,
    /// Why the last attempt to remove it failed.
    pub taint_error: Option<String>,
    /// Counters at the last apply's start (the table's counters restart at each apply).
    #[serde(skip)]
    pub counter_base: Counters,
}

pub type Shared = Arc<Mutex<State>>;

fn read(s: &Shared) -> State {
    match s.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// The HTTP routes.
pub fn router(state: Shared) -> axum::Router {
    let r1 = state.clone();
    let r2 = state;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let s = read(&r1);
                async move {
                    if s.ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no rules applied yet",
                        )
                    }
                }
            }),
        )
        .route(
            "/state",
            get(move || {
                let s = read(&r2);
                async move { Json(s) }
            }),
        )
}

/// Serves the endpoint until the process ends.
pub async fn serve(addr: std::net::SocketAddr, state: Shared) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "state endpoint: cannot listen on {addr}: {e}; hint: choose another --state-addr"
        )
    })?;
    axum::serve(listener, router(state)).await?;
    Ok(())
}
