//! `enforcer`: the slot of the host-network policy enforcer, which must be Ready on every
//! node before any application workload starts. It is not part of this version: the phase
//! is reported as skipped, with a warning when the answer file asks for it.

use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepOk};
use crate::config::plan::EnforcerMode;

/// The `enforcer` phase.
/// `chosen`: the answer file sets the mode. Only a mode the user chose is warned about: the
/// default would warn on every run of every install.
pub async fn run(
    runner: &mut Runner,
    mode: EnforcerMode,
    chosen: bool,
) -> Result<(), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::Enforcer;
    runner
        .cluster_step(id.id(), id.title(), async {
            if mode == EnforcerMode::Enforce {
                let why = "NetworkPolicies are not enforced on host-network pods";
                if chosen {
                    reporter.warn(None, format!("the answer file asks for the policy enforcer in `enforce` mode, but this version does not carry it: {why}"));
                } else {
                    reporter.detail(None, format!("the policy enforcer (default mode `enforce`) is not part of this version: {why}"));
                }
            }
            Ok((StepOk::skipped("not part of this version"), ()))
        })
        .await
}
