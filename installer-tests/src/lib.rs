//! Test support: the lab, the k3s stand-in, and helpers for end-to-end tests.

pub mod lab;
