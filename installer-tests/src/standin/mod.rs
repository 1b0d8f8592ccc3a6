//! The k3s stand-in: a test-only program that the lab tests install as `/usr/local/bin/k3s`.
//!
//! No k3s binary can be downloaded on the machines these tests run on, yet the installer's k3s
//! path (config, units, tokens, joins, readiness, workloads) must run end to end. The stand-in
//! behaves like k3s wherever the installer can see it, and fails the way k3s fails, so the
//! installer's mistakes show up in the lab rather than at a customer. Each behaviour cites the k3s
//! source file (release-1.36) or document it is modelled on; `docs/k3s-standin.md` lists what is
//! modelled and what is not. It is never embedded in a release build of the installer.

pub mod faults;
pub mod flags;
pub mod log;
pub mod notify;
pub mod paths;
pub mod pki;
pub mod token;
pub mod store;
pub mod version;
