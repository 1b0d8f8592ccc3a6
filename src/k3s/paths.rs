//! Where k3s and the installer put things on a node: every path in one place, so the
//! install, uninstall, support-bundle and upgrade code agree. Each constant cites where
//! k3s (or its install.sh) defines it.

/// The k3s binary (`docs/installation/airgap.md`; install.sh `BIN_DIR`), mode 0755.
pub const K3S_BINARY: &str = "/usr/local/bin/k3s";

/// k3s's configuration directory (`pkg/configfilearg/defaultparser.go`).
pub const CONFIG_DIR: &str = "/etc/rancher/k3s";
/// The config file k3s reads by default, for `server` and `agent` alike.
pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
/// Drop-ins merged after [`CONFIG_FILE`] (`pkg/configfilearg/parser.go`). The installer
/// writes none; the uninstaller and support bundle look here.
pub const CONFIG_DROPIN_DIR: &str = "/etc/rancher/k3s/config.yaml.d";
/// The server join secret as the installer writes it (`token-file`), mode 0600: on the
/// first server the bare password, on joining servers the full `K10…::server:…` token.
pub const SERVER_TOKEN_FILE: &str = "/etc/rancher/k3s/server-token";
/// The agent join secret (`agent-token-file` on servers: the bare password; `token-file` on
/// agents: the full `K10…::node:…` token), mode 0600.
pub const AGENT_TOKEN_FILE: &str = "/etc/rancher/k3s/agent-token";
/// The admin kubeconfig k3s writes on servers, pointing at `https://127.0.0.1:6443`
/// (`pkg/server/server.go`); mode from `write-kubeconfig-mode`.
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
/// The node password k3s keeps across reinstalls (`pkg/nodepassword`); k3s-uninstall.sh
/// leaves it behind.
pub const NODE_PASSWORD: &str = "/etc/rancher/node/password";

/// k3s's data directory (default `data-dir`).
pub const DATA_DIR: &str = "/var/lib/rancher/k3s";
/// Image archives imported by containerd at start and at run time
/// (`pkg/agent/config/config.go`, `pkg/agent/containerd/watcher.go`).
pub const IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";
/// Touching this file makes the image-import cache survive restarts (k3s never creates it).
pub const IMAGES_CACHE_MARKER: &str = "/var/lib/rancher/k3s/agent/images/.cache.json";
/// The full server token k3s writes after the control plane starts (`pkg/server/server.go`).
pub const SERVER_TOKEN_GENERATED: &str = "/var/lib/rancher/k3s/server/token";
/// The full agent token (`K10…::node:…`) k3s writes on servers.
pub const AGENT_TOKEN_GENERATED: &str = "/var/lib/rancher/k3s/server/agent-token";
/// Symlink to [`SERVER_TOKEN_GENERATED`] kept for older tooling.
pub const NODE_TOKEN_GENERATED: &str = "/var/lib/rancher/k3s/server/node-token";
/// The cluster CA whose SHA-256 is the `K10<hash>` of every token (served at `/cacerts`).
pub const SERVER_CA_CERT: &str = "/var/lib/rancher/k3s/server/tls/server-ca.crt";
/// Embedded etcd's data; its presence means "this server is already a cluster member".
pub const ETCD_DB_DIR: &str = "/var/lib/rancher/k3s/server/db/etcd";
/// The agent's client-side load balancer state: every apiserver the agent knows.
pub const AGENT_LB_STATE: &str = "/var/lib/rancher/k3s/agent/etc/k3s-agent-load-balancer.json";
/// containerd's log, for support bundles.
pub const CONTAINERD_LOG: &str = "/var/lib/rancher/k3s/agent/containerd/containerd.log";

/// Where k3s re-links its bundled CNI plugins on every start (`cmd/k3s/main.go`).
pub const CNI_BUNDLED_DIR: &str = "/var/lib/rancher/k3s/data/cni";
/// Where containerd looks for CNI plugins when `flannel-backend: none`
/// (`pkg/agent/templates/templates.go`: no CNI section, so containerd's defaults apply).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Where containerd looks for the CNI network config in that case.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The node-local network config the installer writes once the node has a pod CIDR.
pub const CNI_CONFLIST: &str = "/etc/cni/net.d/10-local.conflist";
/// The plugins [`CNI_CONFLIST`] uses (plus loopback, which containerd itself needs).
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];
/// The bridge the conflist creates: `k3s-killall.sh` knows to remove `cni0`.
pub const CNI_BRIDGE: &str = "cni0";

/// The systemd unit directory install.sh uses (`SYSTEMD_DIR`).
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";
/// Unit name on servers (install.sh: `SYSTEM_NAME=k3s` for `server`).
pub const SERVER_UNIT: &str = "k3s.service";
/// Unit name on agents (install.sh: `SYSTEM_NAME=k3s-agent`).
pub const AGENT_UNIT: &str = "k3s-agent.service";

/// The supervisor and Kubernetes API port on servers (from the port table).
pub use super::ports::API_PORT;

/// `(link, target)` for every CNI plugin symlink to create in [`CNI_BIN_DIR`]
/// (k3s-host-network.md §1): `ln -sf <target> <link>`.
pub fn cni_plugin_links() -> Vec<(String, String)> {
    CNI_PLUGINS
        .iter()
        .map(|p| {
            (
                format!("{CNI_BIN_DIR}/{p}"),
                format!("{CNI_BUNDLED_DIR}/{p}"),
            )
        })
        .collect()
}

/// The systemd unit file path for a unit name.
pub fn unit_path(unit: &str) -> String {
    format!("{SYSTEMD_DIR}/{unit}")
}

/// The path an image archive lands at on a node.
pub fn image_archive_path(file: &str) -> String {
    format!("{IMAGES_DIR}/{file}")
}

/// Where `upgrade` stages the new k3s binary until the node's turn: beside
/// [`K3S_BINARY`], so the swap is a rename within one filesystem. systemd's unit runs
/// [`K3S_BINARY`] only, so a k3s restarted before its turn keeps the old release.
pub const K3S_BINARY_STAGED: &str = "/usr/local/bin/k3s.staged";
/// Where `upgrade` stages image archives until the node's turn: beside [`IMAGES_DIR`] (same
/// filesystem) and outside it, so a k3s restarted before its turn does not import them.
pub const IMAGES_STAGED_DIR: &str = "/var/lib/rancher/k3s/agent/images.staged";

/// The staged path of an image archive.
pub fn staged_image_archive_path(file: &str) -> String {
    format!("{IMAGES_STAGED_DIR}/{file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_links_point_into_the_bundled_dir() {
        let links = cni_plugin_links();
        assert_eq!(links.len(), 4);
        assert!(links.contains(&(
            "/opt/cni/bin/portmap".to_string(),
            "/var/lib/rancher/k3s/data/cni/portmap".to_string()
        )));
    }

    #[test]
    fn image_archives_land_in_the_images_dir() {
        assert_eq!(
            image_archive_path("k3s-airgap-images-amd64.tar.zst"),
            "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"
        );
    }
}
