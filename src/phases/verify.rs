//! `verify`: every endpoint the application declares answers from the workstation,
//! checked against the appliance CA only.

use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError, StepOk};
use crate::app::{App, endpoints, generated::Generated};

/// The `verify` phase.
pub async fn run(
    runner: &mut Runner,
    app: &App,
    generated: &Generated,
) -> Result<Vec<endpoints::EndpointResult>, PhaseFailure> {
    let id = PhaseId::Verify;
    runner
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
            let n = results.len();
            Ok((
                StepOk::unchanged(format!("{n} endpoint{} answering", if n == 1 { "" } else { "s" })),
                results,
            ))
        })
        .await
}
