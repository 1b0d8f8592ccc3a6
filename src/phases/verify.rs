//! `verify`: every endpoint the application declares answers from the workstation, checked
//! against the appliance CA only; then the probe matrix (issue 12): every flow between the
//! appliance's workloads, the workstation and the nodes' host processes is tried with a real
//! connection and must do what the NetworkPolicies say ([`super::enforcer::probe`]).

use std::sync::Arc;

use super::ConnectedHost;
use super::enforcer::{matrix, probe, render_policies};
use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError, StepOk};
use crate::app::{App, endpoints, generated::Generated};
use crate::config::answer_file::EnforcerMode;
use crate::kube::Cluster;

const MATRIX_HINT: &str = "`installer status` shows each node's enforcer and the last matrix; \
     the enforcer's log: `k3s kubectl -n kube-system logs ds/installer-enforcer` on a server";

/// What `verify` found.
pub struct Verified {
    pub endpoints: Vec<endpoints::EndpointResult>,
    /// The probe matrix as printed.
    pub matrix: String,
}

/// The `verify` phase.
pub async fn run(
    runner: &mut Runner,
    app: &App,
    generated: &Generated,
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
    mode: EnforcerMode,
) -> Result<Verified, PhaseFailure> {
    let id = PhaseId::Verify;
    let reporter = runner.reporter().clone();
    // The matrix goes into the journal whether the gate passes or not (after the step, which
    // holds the runner).
    let kept: std::sync::Mutex<Option<(String, bool)>> = std::sync::Mutex::new(None);
    let result = runner
        .cluster_step(id.id(), id.title(), async {
            let results = endpoints::check(
                &app.endpoints(),
                generated.ca_cert_pem.as_deref(),
                Default::default(),
            )
            .await?;
            endpoints::verdict(&results).map_err(|e| {
                StepError::new(e).with_hint(
                    "the workstation must reach every node on the application's ports; `installer status` checks them again",
                )
            })?;
            let manifests = app.render(generated)?;
            let policies = matrix::policies(&render_policies(app)?).map_err(StepError::new)?;
            let workloads = matrix::workloads(&manifests);
            let checked = probe::check(
                cluster,
                hosts,
                &workloads,
                &policies,
                mode == EnforcerMode::Audit,
            )
            .await
            .map_err(|e| StepError::new(format!("the probe matrix: {e}")).with_hint(MATRIX_HINT))?;
            let table = checked.render();
            let verdict = checked.verdict();
            if let Ok(mut k) = kept.lock() {
                *k = Some((table.clone(), verdict.is_ok()));
            }
            reporter.info(None, format!("probe matrix:\n{table}"));
            verdict.map_err(|e| StepError::new(e).with_hint(MATRIX_HINT))?;
            let (made, denied) = checked.counts();
            let n = results.len();
            Ok((
                StepOk::unchanged(format!(
                    "{n} endpoint{} answering; probe matrix: {made} connections as the policies say ({denied} denied)",
                    if n == 1 { "" } else { "s" }
                )),
                Verified {
                    endpoints: results,
                    matrix: table,
                },
            ))
        })
        .await;
    if let (Some(j), Ok(Some((table, ok)))) = (runner.journal(), kept.into_inner()) {
        j.matrix(&table, ok);
    }
    result
}
