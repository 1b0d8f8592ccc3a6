//! `enforcer`: the host-network NetworkPolicy enforcer (see docs/enforcer.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use installer_enforcer::cgroup::CgroupFs;
use installer_enforcer::controller::{self, KubeStores, Source};
use installer_enforcer::model::{Config, Mode};
use installer_enforcer::nft::Nft;
use installer_enforcer::state::{self, State};

#[derive(Parser)]
#[command(
    name = "enforcer",
    version,
    about = "Enforces NetworkPolicies on host-network pods with nftables"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The node this enforcer programs.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// `enforce` drops; `audit` only counts and logs what would be dropped.
    #[arg(long, env = "ENFORCER_MODE", value_enum, default_value = "enforce")]
    mode: Mode,
    /// The SSH port the installer uses (always open, as is 22).
    #[arg(long, env = "ENFORCER_SSH_PORT", default_value_t = 22)]
    ssh_port: u16,
    /// More TCP ports always open (the installer's cluster services), comma-separated; empty
    /// means none (the DaemonSet always sets the variable).
    #[arg(long, env = "ENFORCER_EXTRA_TCP_PORTS", value_parser = port_list, default_value = "")]
    extra_tcp_ports: PortList,
    /// More UDP ports always open, comma-separated; empty means none.
    #[arg(long, env = "ENFORCER_EXTRA_UDP_PORTS", value_parser = port_list, default_value = "")]
    extra_udp_ports: PortList,
    /// The nftables table (family inet) the enforcer owns.
    #[arg(long, default_value = "installer_enforcer")]
    table: String,
    /// Where the host's cgroup filesystem is mounted (nft resolves paths under /sys/fs/cgroup).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Components above the kubelet's tree under the cgroup v2 root (tests only).
    #[arg(long, default_value = "", hide = true)]
    cgroup_base: String,
    /// Read snapshots from this JSON file instead of the API (tests, benchmarks, debugging).
    #[arg(long)]
    snapshot: Option<PathBuf>,
}

/// A comma-separated port list, as the DaemonSet passes it in one variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PortList(Vec<u16>);

/// `""` is no ports (an empty list renders as an empty variable), `"53, 9153"` two; anything
/// else names the bad item.
fn port_list(s: &str) -> Result<PortList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .map_err(|e| format!("{p:?} is not a port number: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(PortList)
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch the cluster and keep this node's rules applied.
    Run {
        #[command(flatten)]
        common: Common,
        /// The state endpoint (`/readyz`, `/healthz`, `/state`).
        #[arg(long, env = "ENFORCER_STATE_ADDR", default_value = "127.0.0.1:9648")]
        state_addr: std::net::SocketAddr,
        /// Run nft in this network namespace (`nsenter --net=PATH`; tests).
        #[arg(long, hide = true)]
        netns: Option<String>,
        /// Remove this taint (key) from the node once the first apply succeeded (the
        /// installer's `installer/enforcer-not-ready`); empty: none.
        #[arg(long, env = "ENFORCER_REMOVE_TAINT", default_value = "")]
        remove_taint: String,
        /// Reconcile at least this often, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
    },
    /// Print the rules a snapshot file compiles to on this node (no change is made).
    Compile {
        #[command(flatten)]
        common: Common,
    },
}

fn config(c: &Common, extra: &[u16]) -> Config {
    let mut tcp = c.extra_tcp_ports.0.clone();
    tcp.push(c.ssh_port);
    tcp.extend(extra);
    Config::new(&c.node_name, c.mode, &c.table, &tcp, &c.extra_udp_ports.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "enforcer stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Compile { common } => {
            let fs = CgroupFs::detect(&common.cgroup_root, &common.cgroup_base)?;
            let path = common
                .snapshot
                .clone()
                .ok_or_else(|| anyhow::anyhow!("compile needs --snapshot FILE"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let snap = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: line {}, column {}: {e}",
                    path.display(),
                    e.line(),
                    e.column()
                )
            })?;
            let cg = controller::resolve(&snap, &common.node_name, &fs);
            let rs = installer_enforcer::compile::compile(&snap, &config(&common, &[]), &cg);
            print!("{}", rs.text);
            for w in rs.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Cmd::Run {
            common,
            state_addr,
            netns,
            remove_taint,
            interval_ms,
        } => {
            let mut cfg = config(&common, &[state_addr.port()]);
            cfg.remove_taint = Some(remove_taint).filter(|k| !k.is_empty());
            let fs = CgroupFs::detect(&common.cgroup_root, &common.cgroup_base)?;
            let nft = Nft::new(&common.table, netns.as_deref());
            // Said (and shown in /state) before the API is reached, which may take long: rules
            // left by an earlier run stay in force, untouched, until the watchers have synced.
            let adopted = matches!(nft.listing(), Ok(Some(_)));
            if adopted {
                tracing::info!(table = %nft.table, "the rules of an earlier run are in the kernel: they stay in force, unchanged, until the watchers have synced");
            }
            let shared = Arc::new(Mutex::new(State {
                node: cfg.node_name.clone(),
                mode: cfg.mode.as_str().into(),
                taint: cfg.remove_taint.clone(),
                adopted,
                ..State::default()
            }));
            let server = tokio::spawn(state::serve(state_addr, shared.clone()));
            let changed = Arc::new(tokio::sync::Notify::new());
            let source = match &common.snapshot {
                Some(p) => Source::File(p.clone()),
                None => {
                    tracing::info!(
                        "waiting for the watchers on the API to sync (nothing is changed before)"
                    );
                    Source::Kube(KubeStores::start(changed.clone()).await?)
                }
            };
            tokio::select! {
                r = controller::run(cfg, fs, nft, shared, source, changed, Duration::from_millis(interval_ms)) => r,
                r = server => r.map_err(|e| anyhow::anyhow!("state endpoint: {e}"))?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the DaemonSet renders an empty list as `ENFORCER_EXTRA_TCP_PORTS: ""`, which
    /// the enforcer refused at start (`cannot parse integer from empty string`) and crash-looped
    /// (found by the lab's real containers, tests/real_containers.rs).
    #[test]
    fn an_empty_port_list_variable_means_no_ports() {
        let cli = Cli::try_parse_from([
            "enforcer",
            "run",
            "--node-name",
            "n1",
            "--extra-tcp-ports",
            "",
            "--extra-udp-ports",
            "53, 9153",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Cmd::Run { common, .. } = cli.cmd else {
            panic!("not run")
        };
        assert_eq!(common.extra_tcp_ports, PortList(vec![]));
        assert_eq!(common.extra_udp_ports, PortList(vec![53, 9153]));
        let err = port_list("53,x").unwrap_err();
        assert!(err.contains("\"x\" is not a port number"), "{err}");
    }
}
