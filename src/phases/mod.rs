//! Phases: the ordered steps of a command (install, preflight, upgrade, uninstall, and the coming
//! node operations; support bundle reuses connect), one module per phase, each a public function over
//! the shared [`context::Context`] and the hosts [`connect`] hands on. One [`runner`]
//! handles ordering, fan-out across hosts with a limit, collecting every host's failure,
//! events, timings, clean-ups and the [`journal`]; every host change goes through the door
//! in [`ops`]. A command is a list of calls to these functions.

pub mod app;
pub mod bootstrap;
pub mod cluster_gate;
pub mod connect;
pub mod context;
pub mod dns;
pub mod enforcer;
pub mod ids;
pub mod join;
pub mod journal;
pub mod k3s_node;
pub mod ops;
pub mod preflight;
pub mod prepare;
pub mod runner;
pub mod snapshot;
pub mod uninstall;
pub mod uninstall_plan;
pub mod uninstall_scripts;
pub mod upgrade;
pub mod upload;
pub mod verify;

pub use context::{ConnectedHost, Connector, Context, Goal, HostSpec, Timeouts};
pub use ids::PhaseId;
pub use journal::Journal;
pub use runner::{Named, PhaseFailure, Runner, StepError, StepOk};

use crate::hint::Hint;

/// Why a list of phases stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Phase(#[from] PhaseFailure),
    /// Something the phases need could not be set up (an artifact, the templates), with
    /// what to do about it.
    #[error("{message}")]
    Setup {
        message: String,
        hint: Option<String>,
    },
    /// What the installer was given cannot be used (an artifact that is not the one the
    /// lock names), found before any host was changed: exit 2.
    #[error("{message}")]
    Input {
        message: String,
        hint: Option<String>,
    },
}

impl PipelineError {
    /// A set-up error from any layer's error, its hint kept.
    pub fn setup(e: impl Hint + std::fmt::Display) -> PipelineError {
        PipelineError::Setup {
            message: e.to_string(),
            hint: e.hint(),
        }
    }

    pub fn interrupted(&self) -> bool {
        matches!(self, PipelineError::Phase(p) if p.interrupted())
    }
}

impl Hint for PipelineError {
    fn hint(&self) -> Option<String> {
        match self {
            PipelineError::Phase(_) => None,
            PipelineError::Setup { hint, .. } | PipelineError::Input { hint, .. } => hint.clone(),
        }
    }
    fn interrupted(&self) -> bool {
        PipelineError::interrupted(self)
    }
}

#[cfg(test)]
mod tests;
