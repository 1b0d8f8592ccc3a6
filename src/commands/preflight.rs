//! `installer preflight`: connect, gather facts and run every check; change nothing, and
//! exit non-zero on a blocking finding.

use crate::cli::PreflightArgs;
use crate::commands::install::{asset_store, cluster_phases, pipeline_error};
use crate::commands::session::{self, SshConnector};
use crate::config::Plan;
use crate::error::Error;
use crate::phases::{Goal, Runner, ids};
use crate::report::Reporter;
use std::path::PathBuf;

/// How to run preflight, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightOptions {
    pub accept_new_host_keys: bool,
    pub assets_dir: Option<PathBuf>,
    pub assets_lock: Option<PathBuf>,
}

impl PreflightOptions {
    pub fn from_args(args: &PreflightArgs) -> PreflightOptions {
        PreflightOptions {
            accept_new_host_keys: args.connect.accept_new_host_keys,
            assets_dir: args.connect.assets.clone(),
            assets_lock: args.connect.assets_lock.clone(),
        }
    }
}

/// Runs the checks against the hosts of `plan`.
pub async fn run(plan: Plan, opts: PreflightOptions, reporter: Reporter) -> Result<(), Error> {
    let store = asset_store(opts.assets_dir.as_ref(), opts.assets_lock.as_ref())?;
    let ctx = session::context(&plan, Goal::Preflight);
    let connector = SshConnector::new(&plan, opts.accept_new_host_keys, reporter.clone());
    // Its test listeners would take the ports a running install needs.
    let _lock = session::lock(&plan, "preflight")?;
    let mut runner = Runner::new("preflight", reporter.clone(), None, session::cancel_token());
    let hosts: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    runner.start(&ids::PhaseId::ids(ids::PREFLIGHT), &hosts);
    let result = cluster_phases(&mut runner, &plan, &ctx, &connector, &store).await;
    runner.finish(result.is_ok());
    result.map_err(pipeline_error)?;
    reporter.info(None, "every host passed preflight; nothing was changed");
    Ok(())
}
