//! Phases: the ordered steps of a command (install, upgrade, ...), run by one [`runner`]
//! that handles ordering, fan-out across hosts with a limit, collecting every host's
//! failure, events, timings and the [`journal`].

pub mod appliance;
pub mod install;
pub mod journal;
pub mod ops;
pub mod preflight;
pub mod reachability;
pub mod runner;

pub use journal::Journal;
pub use runner::{Named, PhaseFailure, Runner, StepError, StepOk};
