//! k3s: the typed model of everything the installer writes for k3s on a node (config.yaml,
//! token files, systemd units, the node-local CNI config, the CNI plugin links), rendered
//! from `templates/k3s/` and validated against k3s's own flag list before it leaves the
//! workstation; plus join tokens and the kubeconfig rewrite.
//!
//! The reference for every choice here is `shared/docs/k3s-host-network.md` (host network,
//! no overlay, HA embedded etcd, airgap); docs/k3s-config.md explains the module.

pub mod paths;
