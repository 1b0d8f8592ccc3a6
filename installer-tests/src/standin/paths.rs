//! Where the stand-in reads and writes files: the one place that knows about the test-only root
//! prefix.
//!
//! On a lab node the stand-in uses the same absolute paths as k3s (`/etc/rancher/k3s/config.yaml`,
//! `/var/lib/rancher/k3s/...`, `/etc/cni/net.d`, `/etc/rancher/node/password`). The stand-in's own
//! tests run several "nodes" as plain processes on loopback, each in its own temporary directory;
//! for them, and only for them, the environment variable [`ROOT_ENV`] names a directory that every
//! absolute path is resolved under. The installer never sets it. Every file access in the stand-in
//! goes through [`Root::path`], so this module is the only place that knows about the prefix.

use std::path::{Component, Path, PathBuf};

/// The environment variable naming the test-only root prefix. Set only by the stand-in's tests.
pub const ROOT_ENV: &str = "K3S_STANDIN_ROOT";

/// The directory under which the stand-in resolves absolute paths.
#[derive(Debug, Clone, Default)]
pub struct Root {
    prefix: Option<PathBuf>,
}

impl Root {
    /// The real root `/` (what a lab node uses).
    pub fn system() -> Self {
        Root { prefix: None }
    }

    /// A root under `dir` (tests).
    pub fn under(dir: impl Into<PathBuf>) -> Self {
        Root {
            prefix: Some(dir.into()),
        }
    }

    /// The root named by [`ROOT_ENV`], or the real root when it is unset or empty.
    pub fn from_env() -> Self {
        match std::env::var_os(ROOT_ENV) {
            Some(v) if !v.is_empty() => Root::under(PathBuf::from(v)),
            _ => Root::system(),
        }
    }

    /// True when a test prefix is in use.
    pub fn is_prefixed(&self) -> bool {
        self.prefix.is_some()
    }

    /// The prefix, if any (to pass on to child processes).
    pub fn prefix(&self) -> Option<&Path> {
        self.prefix.as_deref()
    }

    /// The address a node-local listener binds (the kubelet's ports, a hostNetwork pod's ports).
    /// On a real node that is what k3s binds (`normal`: `0.0.0.0` or `127.0.0.1`); under a test
    /// prefix several "nodes" share the host's loopback, each with its own 127.x address, so they
    /// bind their node IP instead.
    pub fn host_bind_ip(&self, node_ip: &str, normal: &str) -> String {
        if self.is_prefixed() {
            node_ip.to_string()
        } else {
            normal.to_string()
        }
    }

    /// Resolve `p` (a path as k3s would use it) to the file the stand-in touches.
    /// Relative paths are returned unchanged.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        match &self.prefix {
            Some(prefix) if p.is_absolute() => {
                let mut out = prefix.clone();
                for c in p.components() {
                    if let Component::Normal(part) = c {
                        out.push(part);
                    }
                }
                out
            }
            _ => p.to_path_buf(),
        }
    }
}

/// The well-known k3s paths, relative to nothing (absolute, as k3s uses them).
pub mod k3s {
    /// `pkg/configfilearg/defaultparser.go`: `DefaultConfig`.
    pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
    /// `pkg/cli/cmds/server.go`: default `--data-dir` for root.
    pub const DATA_DIR: &str = "/var/lib/rancher/k3s";
    /// `pkg/server/server.go` `HomeKubeConfig`: the kubeconfig written for root.
    pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
    /// `pkg/agent/config/config.go`: the node password file.
    pub const NODE_PASSWORD: &str = "/etc/rancher/node/password";
    /// containerd's default CNI config dir when k3s does not set one (flannel-backend none).
    pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
    /// The stand-in's fault and knob file, written only by tests.
    pub const FAULTS_FILE: &str = "/etc/k3s-standin/faults.yaml";
    /// Runtime state of the simulated container runtime (pod shims).
    pub const RUN_DIR: &str = "/run/k3s/standin";
    /// `/etc/machine-id`, read for nodeInfo.
    pub const MACHINE_ID: &str = "/etc/machine-id";
    /// `/etc/os-release`, read for nodeInfo.osImage.
    pub const OS_RELEASE: &str = "/etc/os-release";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_root_leaves_paths_alone() {
        let r = Root::system();
        assert_eq!(
            r.path("/etc/rancher/k3s/config.yaml"),
            PathBuf::from("/etc/rancher/k3s/config.yaml")
        );
        assert!(!r.is_prefixed());
    }

    #[test]
    fn prefixed_root_maps_absolute_paths_only() {
        let r = Root::under("/tmp/x");
        assert_eq!(
            r.path("/etc/rancher/k3s/config.yaml"),
            PathBuf::from("/tmp/x/etc/rancher/k3s/config.yaml")
        );
        assert_eq!(r.path("rel/file"), PathBuf::from("rel/file"));
    }
}
