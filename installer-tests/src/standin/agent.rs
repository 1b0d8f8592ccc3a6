//! `k3s agent`: join a cluster as a worker.
//!
//! As `pkg/cli/agent/agent.go` and `pkg/agent/run.go` (k3s release-1.36): `--token is required`
//! and `--server is required`; then, every 2 s until it works, the token is parsed and the server's
//! CA (from `/cacerts`) checked against the token's hash — failures are logged as
//! `Failed to validate connection to cluster at <url>: <error>` (for instance
//! `token CA hash does not match the Cluster CA certificate hash: ...`) and retried forever; a
//! token without a hash logs k3s's warning and goes on without pinning. The agent then fetches its
//! configuration (`Waiting to retrieve agent configuration; ...` on 401/403/503, every 5 s), and
//! sends `READY=1` once the apiserver answers (`k3s agent is up and running`).

use std::time::Duration;

use super::client;
use super::config;
use super::faults::{Faults, LiveFaults};
use super::flags::Flags;
use super::kubelet::{self, AgentSetup};
use super::log;
use super::paths::Root;
use super::token;
use super::version;

/// Run `k3s agent` until SIGTERM. Returns the exit code.
pub async fn run(root: Root, flags: Flags) -> i32 {
    let cfg = match config::agent(&root, &flags) {
        Ok(c) => c,
        Err(e) => log::fatal(format!("Error: {}", e.0)),
    };
    log::set_debug(cfg.debug);
    log::info(format!(
        "Starting k3s agent {} ({})",
        version::current(),
        version::COMMIT
    ));
    let initial = match Faults::load(&root) {
        Ok(f) => f,
        Err(e) => log::fatal(format!("Error: {e}")),
    };
    if initial.crash_at_start {
        log::fatal("Error: k3s-standin fault injected: crash at start");
    }
    let faults = LiveFaults::watch(root.clone(), initial);
    let Some(tok) = cfg.token.clone() else {
        log::fatal("Error: --token is required");
    };
    if cfg.server_url.is_empty() {
        log::fatal("Error: --server is required");
    }
    let url = cfg.server_url.trim_end_matches('/').to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    // setupTunnelAndRunAgent: validate the token against the server's CA every 2 s.
    let (ca, info) = loop {
        let attempt = async {
            let info = token::parse(tok.expose())?;
            let ca = client::get_cacerts(&url).await?;
            match token::check_ca(&info, &ca) {
                token::CaCheck::Ok => {}
                token::CaCheck::NoHash => log::warn(token::NO_HASH_WARNING),
                token::CaCheck::Mismatch(m) => return Err(m),
            }
            Ok::<_, String>((ca, info))
        };
        match attempt.await {
            Ok(x) => break x,
            Err(e) => log::error(format!(
                "Failed to validate connection to cluster at {url}: {e}"
            )),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = super::server::shutdown_signal() => return 0,
        }
    };
    let setup = AgentSetup {
        root: root.clone(),
        node: cfg.clone(),
        server_url: url,
        ca_pem: String::from_utf8_lossy(&ca).to_string(),
        node_pw: info.password.clone(),
        server_roles: false,
        control_plane: false,
        faults,
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(kubelet::run_agent_notify(setup));
    super::server::shutdown_signal().await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    0
}
