//! `enforcer`: the slot of the host-network policy enforcer, which must be Ready on every
//! node before any application workload starts. It is not part of this version: the phase
//! is reported as skipped, with a warning when the answer file asks for it.

use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepOk};
use crate::config::plan::EnforcerMode;

/// The `enforcer` phase.
pub async fn run(runner: &mut Runner, mode: EnforcerMode) -> Result<(), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::Enforcer;
    runner
        .cluster_step(id.id(), id.title(), async {
            if mode == EnforcerMode::Enforce {
                reporter.warn(
                    None,
                    "the answer file asks for the policy enforcer in `enforce` mode, but this version does not carry it: NetworkPolicies are not enforced on host-network pods",
                );
            }
            Ok((StepOk::skipped("not part of this version"), ()))
        })
        .await
}
