//! The installer library: everything the `installer` binary does, behind a thin `main.rs`.
//!
//! The shape of the program (see `docs/architecture.md`):
//! answer file or wizard -> [`config`] (raw, then validated into an immutable plan) ->
//! [`phases`] run by one runner against [`host`]s (SSH) and the cluster ([`kube`]) ->
//! [`report`] events -> a renderer (terminal, plain, json) and the redacted log file.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod app;
pub mod assets;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod fsx;
pub mod hint;
pub mod host;
pub mod k3s;
pub mod kube;
pub mod phases;
pub mod report;
pub mod secret;
