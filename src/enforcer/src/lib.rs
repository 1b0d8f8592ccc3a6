//! The host-network policy enforcer: Kubernetes NetworkPolicies applied to `hostNetwork: true`
//! pods with nftables, identifying pods by their cgroup (`socket cgroupv2 level N`).
//!
//! - [`model`]: the snapshot the controller watches (pods, namespaces, policies, nodes);
//! - [`cgroup`]: pod UID to its cgroup on every layout the kubelet produces;
//! - [`compile`]: snapshot to one nftables table (pure, golden-tested);
//! - [`nft`]: the applier (one `nft -f` transaction), drift check, counters;
//! - [`state`]: the state endpoint (readiness, counters as JSON);
//! - [`controller`]: the kube-rs watchers and the reconcile loop;
//! - [`taint`]: the installer's "not protected yet" taint, removed after the first apply.
//!
//! See docs/enforcer.md.

pub mod cgroup;
pub mod compile;
pub mod controller;
pub mod model;
pub mod nft;
pub mod select;
pub mod state;
pub mod taint;
