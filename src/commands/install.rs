//! `installer install`: the install pipeline, from a validated plan.
//!
//! The answer file has been parsed and validated before this is called (bad input never
//! gets here: it exits 2 with every problem listed). Part 1 (`phases::install`) brings up
//! the k3s cluster; part 2 (`phases::appliance`) deploys the application on it. A dry run
//! connects and gathers facts, then reports per host what would change.

use std::sync::Arc;

use crate::assets::AssetStore;
use crate::cli::{ConnectArgs, InstallArgs};
use crate::commands::session::{self, SshConnector};
use crate::config::Plan;
use crate::error::Error;
use crate::phases::appliance::{self, ApplianceSpec};
use crate::phases::install::{self, InstallError};
use crate::phases::{Journal, Runner};
use crate::report::{Event, Reporter};
use std::path::PathBuf;

/// How to run an install, from the command line.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Connect and gather facts, report what would change, change nothing.
    pub dry_run: bool,
    /// Trust and record host keys not yet known (a changed key is always refused).
    pub accept_new_host_keys: bool,
    /// Take the artifacts from this directory instead of the embedded ones.
    pub assets_dir: Option<PathBuf>,
    /// The lock file for `assets_dir`.
    pub assets_lock: Option<PathBuf>,
    /// Ask a person about unknown host keys (the wizard); pins chosen are written into
    /// the answer file.
    pub ask_host_keys: Option<std::sync::Arc<super::hostkeys::AskHostKeys>>,
    /// The debug log file of this run (named in the final summary).
    pub log_file: Option<PathBuf>,
}

impl InstallOptions {
    pub fn from_args(args: &InstallArgs) -> InstallOptions {
        let ConnectArgs {
            accept_new_host_keys,
            assets,
            assets_lock,
        } = args.connect.clone();
        InstallOptions {
            dry_run: args.dry_run,
            accept_new_host_keys,
            assets_dir: assets,
            assets_lock,
            ask_host_keys: None,
            log_file: None,
        }
    }
}

/// The phases of an install, in order (for the progress header and `status`).
pub const PHASES: &[&str] = &[
    "connect",
    "preflight",
    "prepare",
    "upload",
    "bootstrap",
    "join-servers",
    "join-agents",
    "cluster",
    "dns",
    "enforcer",
    "app",
    "verify",
];

/// Opens the asset store (hashing `--assets` files happens later, per artifact).
pub fn asset_store(
    dir: Option<&PathBuf>,
    lock: Option<&PathBuf>,
) -> Result<Arc<AssetStore>, Error> {
    AssetStore::new(dir.map(|p| p.as_path()), lock.map(|p| p.as_path()))
        .map(Arc::new)
        .map_err(|e| {
            let hint = e.hint();
            Error::usage(e.to_string(), hint)
        })
}

/// Maps a failed pipeline to the command's error (interrupted: exit 130).
pub fn pipeline_error(e: InstallError) -> Error {
    if e.interrupted() {
        Error::Interrupted
    } else {
        Error::failed(anyhow::Error::new(e), Some("fix what is reported above and rerun the same command: finished steps are not repeated".to_string()))
    }
}

/// Opens the journal and tells the user where a previous run stopped, if it did.
pub fn open_journal(plan: &Plan, reporter: &Reporter) -> Option<Journal> {
    let path = session::state_dir(plan).join("journal.jsonl");
    if let Ok(Some(last)) = Journal::last_run(&path)
        && let Some(stopped) = last.stopped_at()
    {
        reporter.info(None, format!("{stopped}; continuing from there"));
    }
    match Journal::open(&path) {
        Ok(j) => Some(j),
        Err(e) => {
            reporter.warn(None, format!("cannot write the journal: {e}"));
            None
        }
    }
}

/// Runs an install of `plan`.
pub async fn run(plan: Plan, opts: InstallOptions, reporter: Reporter) -> Result<(), Error> {
    reporter.emit(Event::PlanReady {
        plan: plan.summary(),
    });
    let store = asset_store(opts.assets_dir.as_ref(), opts.assets_lock.as_ref())?;
    let spec = session::install_spec(&plan, opts.dry_run, false);
    let mut connector = SshConnector::new(&plan, opts.accept_new_host_keys, reporter.clone());
    if let Some(ask) = &opts.ask_host_keys {
        connector = connector.with_prompt(ask.clone());
    }
    let journal = if opts.dry_run {
        None
    } else {
        open_journal(&plan, &reporter)
    };
    let command = if opts.dry_run {
        "install --dry-run"
    } else {
        "install"
    };
    let mut runner = Runner::new(command, reporter.clone(), journal, session::cancel_token());
    let hosts: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    runner.start(PHASES, &hosts);
    let result = install::run(&mut runner, &spec, &connector, &store).await;
    let result = match result {
        Ok(installed) => match (&installed.cluster, opts.dry_run) {
            (Some(cluster), false) => {
                let aspec = ApplianceSpec {
                    values: crate::app::Values::from(&plan.app),
                    service_cidr: plan.network.service_cidr,
                    enforcer: plan.enforcer,
                    answer_file: plan.answer_file.clone(),
                    timeouts: crate::app::DeployTimeouts {
                        per_workload: plan.rollout_timeout,
                        ..Default::default()
                    },
                    dns_timeout: plan.rollout_timeout,
                };
                appliance::run(&mut runner, &aspec, cluster, &installed.nodes)
                    .await
                    .map(|d| (installed, Some(d)))
            }
            _ => Ok((installed, None)),
        },
        Err(e) => Err(e),
    };
    runner.finish(result.is_ok());
    // Host keys the person chose to pin go into the answer file, whatever happened after.
    if let (Some(ask), Some(file)) = (&opts.ask_host_keys, &plan.answer_file) {
        let pins = ask.pins();
        match super::hostkeys::write_pins(file, &pins) {
            Ok(missed) if missed.is_empty() => {
                if !pins.is_empty() {
                    reporter.info(
                        None,
                        format!("pinned {} host key(s) in {}", pins.len(), file.display()),
                    );
                }
            }
            Ok(missed) => reporter.warn(
                None,
                format!(
                    "add these host keys to {} by hand (hosts[].hostKey): {}",
                    file.display(),
                    missed.join(", ")
                ),
            ),
            Err(e) => reporter.warn(
                None,
                format!("cannot pin the host keys in {}: {e}", file.display()),
            ),
        }
    }
    let (installed, deployed) = result.map_err(pipeline_error)?;
    if opts.dry_run {
        reporter.info(None, "dry run: nothing was changed on any host");
        return Ok(());
    }
    let mut lines = vec!["the cluster and the application are Ready".to_string()];
    if let Some(d) = &deployed {
        for e in &d.endpoints {
            lines.push(format!(
                "  {} on {}: {}",
                e.endpoint.name, e.endpoint.node, e.endpoint.url
            ));
        }
        if let Some(ca) = &d.ca_file {
            lines.push(format!("  appliance CA certificate: {}", ca.display()));
        }
        for (name, _) in &d.shown_once {
            lines.push(format!(
                "  {name} was generated: read it with `kubectl get secret` in the application's namespace, or set it in the answer file"
            ));
        }
    }
    if let Some(k) = &installed.kubeconfig {
        lines.push(format!("  admin kubeconfig: {}", k.display()));
    }
    lines.push(format!(
        "  state and journal: {}",
        session::state_dir(&plan).display()
    ));
    reporter.info(None, lines.join("\n"));
    Ok(())
}
