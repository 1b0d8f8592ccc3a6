//! The k3s stand-in: a test-only program that the lab tests install as `/usr/local/bin/k3s`.
//!
//! No k3s binary can be downloaded on the machines these tests run on, yet the installer's k3s
//! path (config, units, tokens, joins, readiness, workloads) must run end to end. The stand-in
//! behaves like k3s wherever the installer can see it, and fails the way k3s fails, so the
//! installer's mistakes show up in the lab rather than at a customer. Each behaviour cites the k3s
//! source file (release-1.36) or document it is modelled on; `docs/testing.md` ("The k3s stand-in") lists what is
//! modelled and what is not. It is never embedded in a release build of the installer.

pub mod agent;
pub mod api;
pub mod auth;
pub mod checkconfig;
pub mod client;
pub mod cluster;
pub mod config;
pub mod controllers;
pub mod dns;
pub mod etcd;
pub mod faults;
pub mod flags;
pub mod kubectl;
pub mod kubelet;
pub mod log;
pub mod manifests;
pub mod notify;
pub mod paths;
pub mod pki;
pub mod proxy;
pub mod secret_volumes;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod testing;
pub mod tls_files;
pub mod token;
pub mod version;

use flags::Command;
use paths::Root;

const USAGE: &str = "NAME:
   k3s - Kubernetes, but small and simple (k3s stand-in for tests)

USAGE:
   k3s [global options] command [command options]

COMMANDS:
   server         Run management server
   agent          Run node agent
   etcd-snapshot  Manage etcd snapshots (save, ls, delete, prune)
   check-config   Check the host for k3s requirements

GLOBAL OPTIONS:
   --version, -v  print the version
   --help, -h     show help
";

fn parse_or_die(root: &Root, cmd: Command, args: &[String]) -> flags::Flags {
    let mut warn = |w: String| log::warn(w.trim_end());
    match flags::load(root, cmd, args, &mut warn) {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            // urfave/cli prints the usage after "Incorrect Usage:", then k3s's main logs the error.
            eprintln!("Incorrect Usage: {e}\n\n{}", flags::usage(cmd));
            log::fatal(format!("Error: {e}"))
        }
        Err(e) => log::fatal(e.to_string()),
    }
}

/// The stand-in's `main`: dispatch on the subcommand. Returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let argv0 = args.first().cloned().unwrap_or_default();
    let rest: Vec<String> = args.iter().skip(1).cloned().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("k3s-standin: cannot start the runtime: {e}");
            return 1;
        }
    };
    client::install_crypto();
    let root = Root::from_env();
    if argv0.contains("containerd-shim")
        || rest.first().map(String::as_str) == Some("containerd-shim")
    {
        return runtime.block_on(kubelet::shim::main(&rest));
    }
    // k3s is a multicall binary: install.sh links kubectl, crictl and ctr to it, and the CNI
    // plugins in data/cni are links to its `cni` binary (cmd/k3s/main.go).
    let base = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match base.as_str() {
        "kubectl" => return runtime.block_on(kubectl::run(&root, &rest)),
        "crictl" | "ctr" | "cni" | "bridge" | "host-local" | "loopback" | "portmap"
        | "bandwidth" | "firewall" | "flannel" => {
            eprintln!("k3s-standin: `{base}` is not modelled by the k3s stand-in");
            return 1;
        }
        _ => {}
    }
    match rest.first().map(String::as_str) {
        None | Some("--help") | Some("-h") | Some("help") => {
            print!("{USAGE}");
            0
        }
        Some("--version") | Some("-v") | Some("version") => {
            println!("k3s version {} ({})", version::current(), version::COMMIT);
            println!("go version {}", version::GO_VERSION);
            0
        }
        Some("server") => {
            let f = parse_or_die(&root, Command::Server, &rest[1..]);
            runtime.block_on(server::run(root, f))
        }
        Some("agent") => {
            let f = parse_or_die(&root, Command::Agent, &rest[1..]);
            runtime.block_on(agent::run(root, f))
        }
        Some("etcd-snapshot") => {
            let sub = rest.get(1).cloned().unwrap_or_else(|| "ls".into());
            let sub_args: Vec<String> = rest.iter().skip(2).cloned().collect();
            runtime.block_on(snapshot::cli(root, &sub, &sub_args))
        }
        Some("check-config") => checkconfig::run(),
        Some("kubectl") => runtime.block_on(kubectl::run(&root, &rest[1..])),
        Some(
            other @ ("crictl" | "ctr" | "token" | "certificate" | "secrets-encrypt" | "completion"),
        ) => {
            eprintln!("k3s-standin: `k3s {other}` is not modelled by the k3s stand-in");
            1
        }
        Some(other) => {
            eprintln!("Incorrect Usage. No help topic for '{other}'\n\n{USAGE}");
            log::fatal(format!("Error: No help topic for '{other}'"))
        }
    }
}
