//! `installer install`: the entry the install pipeline hangs from.
//!
//! The answer file has been parsed and validated before this is called (bad input never
//! gets here: it exits 2 with every problem listed). In this version only `--dry-run` works:
//! it prints the validated plan. The pipeline itself (SSH, facts, phases) is not built yet,
//! and a real run says so and exits 1 without touching any host.

use crate::cli::{ConnectArgs, InstallArgs};
use crate::config::Plan;
use crate::error::Error;
use crate::report::{Event, Reporter};
use std::path::PathBuf;

/// How to run an install, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// Trust and record host keys not yet known (a changed key is always refused).
    pub accept_new_host_keys: bool,
    /// Take the artifacts from this directory instead of the embedded ones.
    pub assets_dir: Option<PathBuf>,
    /// The lock file for `assets_dir`.
    pub assets_lock: Option<PathBuf>,
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
        }
    }
}

/// Runs an install of `plan`.
pub async fn run(plan: Plan, opts: InstallOptions, reporter: Reporter) -> Result<(), Error> {
    if opts.dry_run {
        reporter.emit(Event::PlanReady {
            plan: plan.summary(),
        });
        reporter.info(
            None,
            "dry run: the answer file is valid; nothing was changed on any host",
        );
        return Ok(());
    }
    Err(Error::failed(
        anyhow::anyhow!(
            "the install pipeline is not built in this version of the installer; nothing was changed on any host"
        ),
        Some(
            "`installer install --dry-run -f FILE` checks the answer file and prints the plan"
                .to_string(),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::events::Collector;
    use std::sync::Arc;

    fn plan() -> Plan {
        let decl = crate::config::app::Declaration::embedded().unwrap();
        let env = crate::config::interpolate::MapEnv::default();
        let ctx = crate::config::Context {
            env: &env,
            base_dir: PathBuf::from("."),
            prompter: None,
            declaration: &decl,
        };
        crate::config::validate_text(
            "a.yaml",
            None,
            "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  ssh: {user: root}\n  hosts: [{address: 10.0.0.1}]\n",
            &ctx,
        )
        .unwrap()
        .plan
    }

    #[tokio::test]
    async fn dry_run_emits_the_plan_and_a_real_run_refuses() {
        let c = Arc::new(Collector::default());
        let r = Reporter::new(vec![c.clone()]);
        let opts = InstallOptions {
            dry_run: true,
            ..Default::default()
        };
        run(plan(), opts, r.clone()).await.unwrap();
        let ev = c.events();
        match &ev[0] {
            Event::PlanReady { plan } => {
                assert_eq!(plan.hosts[0].address, "10.0.0.1");
                assert_eq!(plan.hosts[0].role, "server");
            }
            other => panic!("{other:?}"),
        }
        let e = run(plan(), InstallOptions::default(), r).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_FAILED);
        assert!(e.to_string().contains("not built"));
    }
}
