//! Typed server and agent configuration, derived from parsed flags the way k3s derives it.
//!
//! Defaults and derived values follow `pkg/cli/cmds/server.go`, `agent.go` and
//! `pkg/cli/server/server.go` (release-1.36): cluster-cidr 10.42.0.0/16, service-cidr
//! 10.43.0.0/16, cluster-dns = the 10th address of the service range, cluster-domain
//! cluster.local, flannel-backend vxlan, https-listen-port 6443, data-dir /var/lib/rancher/k3s,
//! `token-file`/`agent-token-file` read at start, node name from the hostname (with a random
//! suffix under `with-node-id`), node IP from the interface holding the default route. The
//! "critical" settings that must match between servers are those of `CriticalControlArgs`
//! (`pkg/daemons/config/types.go`), compared as in `pkg/cluster/bootstrap.go` `compareConfig`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use installer::secret::Secret;
use serde_json::{Value, json};

use super::flags::Flags;
use super::paths::{Root, k3s};
use super::store::admission::parse_cidr;

/// Settings both servers and agents have.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub node_name: String,
    pub node_ips: Vec<String>,
    pub node_labels: Vec<String>,
    pub node_taints: Vec<String>,
    pub server_url: String,
    pub token: Option<Secret>,
    pub pause_image: String,
    pub debug: bool,
    /// `k3s.io/node-args`: the effective arguments with secrets omitted.
    pub node_args: Vec<String>,
}

/// Server-only settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node: NodeConfig,
    pub cluster_init: bool,
    pub agent_token: Option<Secret>,
    pub tls_san: Vec<String>,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub flannel_backend: String,
    pub disable: Vec<String>,
    pub disable_network_policy: bool,
    pub disable_helm_controller: bool,
    pub disable_cloud_controller: bool,
    pub disable_kube_proxy: bool,
    pub disable_agent: bool,
    pub disable_etcd: bool,
    pub write_kubeconfig: String,
    pub write_kubeconfig_mode: String,
    pub https_port: u16,
    pub bind_address: String,
    pub advertise_address: String,
    pub egress_selector_mode: String,
    pub secrets_encryption: bool,
    pub secrets_encryption_provider: String,
    pub embedded_registry: bool,
    pub supervisor_metrics: bool,
    pub flannel_ipv6_masq: bool,
    pub flannel_external_ip: bool,
    pub service_node_port_range: String,
    pub etcd_snapshot_dir: String,
    pub etcd_snapshot_retention: u32,
    pub cluster_reset: bool,
}

/// A configuration error, reported by k3s as fatal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Read a token file as k3s does (`util.ReadFile`: contents trimmed).
fn read_token_file(root: &Root, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(root.path(path))
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError(format!("open {path}: {}", io_msg(&e))))
}

/// Go-style text of an I/O error.
pub fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The hostname (lowercased, as k3s uses it for the node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// The IPv4 address of the interface holding the default route: a UDP socket "connected" to
/// the default gateway (this sends nothing) reports the source address the kernel would use.
pub fn default_route_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let gw = routes.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() > 2 && cols[1] == "00000000").then(|| cols[2].to_string())
    })?;
    let n = u32::from_str_radix(&gw, 16).ok()?;
    let gw = Ipv4Addr::from(n.swap_bytes());
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((gw, 9)).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

fn secret_flag(name: &str) -> bool {
    // pkg/nodeconfig/nodeconfig.go isSecret.
    matches!(
        name,
        "--token"
            | "-t"
            | "--agent-token"
            | "--datastore-endpoint"
            | "--etcd-s3-access-key"
            | "--etcd-s3-secret-key"
            | "--etcd-s3-session-token"
            | "--vpn-auth"
    )
}

fn node_args(cmd: &str, flags: &Flags) -> Vec<String> {
    let mut out = vec![cmd.to_string()];
    for (k, vs) in flags.entries() {
        for v in vs {
            let name = format!("--{k}");
            out.push(name.clone());
            out.push(if secret_flag(&name) {
                "********".into()
            } else {
                v.clone()
            });
        }
    }
    out
}

fn node_config(root: &Root, cmd: &str, flags: &Flags) -> Result<NodeConfig, ConfigError> {
    let data_dir = PathBuf::from(flags.get("data-dir").unwrap_or(k3s::DATA_DIR));
    let mut node_name = flags
        .get("node-name")
        .map(str::to_string)
        .unwrap_or_else(hostname);
    if flags.bool("with-node-id") {
        let id_file = root.path(data_dir.join("agent/node-id"));
        let id = match std::fs::read_to_string(&id_file) {
            Ok(s) => s.trim().to_string(),
            Err(_) => {
                let id = hex::encode(rand::random::<[u8; 4]>());
                if let Some(p) = id_file.parent() {
                    let _ = std::fs::create_dir_all(p);
                }
                let _ = std::fs::write(&id_file, format!("{id}\n"));
                id
            }
        };
        node_name = format!("{node_name}-{id}");
    }
    let mut node_ips = flags.slice("node-ip");
    if node_ips.is_empty() {
        node_ips.push(default_route_ip().ok_or_else(|| {
            ConfigError(
                "failed to get node name and addresses: unable to select an IP from default routes.".into(),
            )
        })?);
    }
    let token = match (flags.get("token"), flags.get("token-file")) {
        (Some(t), _) if !t.is_empty() => Some(Secret::new(t)),
        (_, Some(f)) if !f.is_empty() => Some(Secret::new(read_token_file(root, f)?)),
        _ => None,
    };
    Ok(NodeConfig {
        data_dir,
        node_name,
        node_ips,
        node_labels: flags.slice("node-label"),
        node_taints: flags.slice("node-taint"),
        server_url: flags.string("server"),
        token,
        pause_image: flags
            .get("pause-image")
            .unwrap_or("rancher/mirrored-pause:3.6")
            .to_string(),
        debug: flags.bool("debug"),
        node_args: node_args(cmd, flags),
    })
}

/// The agent's configuration.
pub fn agent(root: &Root, flags: &Flags) -> Result<NodeConfig, ConfigError> {
    node_config(root, "agent", flags)
}

/// The server's configuration.
pub fn server(root: &Root, flags: &Flags) -> Result<ServerConfig, ConfigError> {
    let node = node_config(root, "server", flags)?;
    let agent_token = match (flags.get("agent-token"), flags.get("agent-token-file")) {
        (Some(t), _) if !t.is_empty() => Some(Secret::new(t)),
        (_, Some(f)) if !f.is_empty() => Some(Secret::new(read_token_file(root, f)?)),
        _ => None,
    };
    let cluster_cidr = flags
        .slice("cluster-cidr")
        .first()
        .cloned()
        .unwrap_or_else(|| "10.42.0.0/16".into());
    let service_cidr = flags
        .slice("service-cidr")
        .first()
        .cloned()
        .unwrap_or_else(|| "10.43.0.0/16".into());
    for (name, v) in [
        ("cluster-cidr", &cluster_cidr),
        ("service-cidr", &service_cidr),
    ] {
        if parse_cidr(v).is_none() {
            return Err(ConfigError(format!(
                "invalid {name}: invalid CIDR address: {v}"
            )));
        }
    }
    let cluster_dns = match flags.slice("cluster-dns").first() {
        Some(d) => d.clone(),
        None => {
            let (net, _) = parse_cidr(&service_cidr).unwrap_or((Ipv4Addr::new(10, 43, 0, 0), 16));
            Ipv4Addr::from(u32::from(net) + 10).to_string()
        }
    };
    let mut disable = flags.slice("disable");
    disable.sort();
    disable.dedup();
    Ok(ServerConfig {
        cluster_init: flags.bool("cluster-init"),
        agent_token,
        tls_san: flags.slice("tls-san"),
        cluster_cidr,
        service_cidr,
        cluster_dns,
        cluster_domain: flags
            .get("cluster-domain")
            .unwrap_or("cluster.local")
            .to_string(),
        flannel_backend: flags.get("flannel-backend").unwrap_or("vxlan").to_string(),
        disable,
        disable_network_policy: flags.bool("disable-network-policy"),
        disable_helm_controller: flags.bool("disable-helm-controller"),
        disable_cloud_controller: flags.bool("disable-cloud-controller"),
        disable_kube_proxy: flags.bool("disable-kube-proxy"),
        disable_agent: flags.bool("disable-agent"),
        disable_etcd: flags.bool("disable-etcd"),
        write_kubeconfig: flags.string("write-kubeconfig"),
        write_kubeconfig_mode: flags.string("write-kubeconfig-mode"),
        https_port: flags
            .get("https-listen-port")
            .map(|p| {
                p.parse().map_err(|_| {
                    ConfigError(format!(
                        "invalid value \"{p}\" for flag -https-listen-port: parse error"
                    ))
                })
            })
            .transpose()?
            .unwrap_or(6443),
        bind_address: flags.string("bind-address"),
        advertise_address: flags.string("advertise-address"),
        egress_selector_mode: flags
            .get("egress-selector-mode")
            .unwrap_or("agent")
            .to_string(),
        secrets_encryption: flags.bool("secrets-encryption"),
        secrets_encryption_provider: flags
            .get("secrets-encryption-provider")
            .unwrap_or("aescbc")
            .to_string(),
        embedded_registry: flags.bool("embedded-registry"),
        supervisor_metrics: flags.bool("supervisor-metrics"),
        flannel_ipv6_masq: flags.bool("flannel-ipv6-masq"),
        flannel_external_ip: flags.bool("flannel-external-ip"),
        service_node_port_range: flags
            .get("service-node-port-range")
            .unwrap_or("30000-32767")
            .to_string(),
        etcd_snapshot_dir: flags.string("etcd-snapshot-dir"),
        etcd_snapshot_retention: flags
            .get("etcd-snapshot-retention")
            .and_then(|r| r.parse().ok())
            .unwrap_or(5),
        cluster_reset: flags.bool("cluster-reset"),
        node,
    })
}

impl ServerConfig {
    /// The first IPv4 address of `service-cidr` (the `kubernetes` Service).
    pub fn first_service_ip(&self) -> String {
        let (net, _) = parse_cidr(&self.service_cidr).unwrap_or((Ipv4Addr::new(10, 43, 0, 0), 16));
        Ipv4Addr::from(u32::from(net) + 1).to_string()
    }

    /// The address clients use for this server (advertise-address, else the first node IP).
    pub fn advertise_ip(&self) -> String {
        if !self.advertise_address.is_empty() {
            return self.advertise_address.clone();
        }
        self.node
            .node_ips
            .first()
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// `CriticalControlArgs` as the supervisor's `/v1-k3s/config` reports them.
    pub fn critical(&self) -> Value {
        json!({
            "ClusterDNSs": [self.cluster_dns],
            "ClusterIPRanges": [self.cluster_cidr],
            "ClusterDNS": self.cluster_dns,
            "ClusterDomain": self.cluster_domain,
            "ClusterIPRange": self.cluster_cidr,
            "DisableCCM": self.disable_cloud_controller,
            "DisableHelmController": self.disable_helm_controller,
            "DisableNPC": self.disable_network_policy,
            "DisableServiceLB": self.disable.iter().any(|d| d == "servicelb"),
            "EncryptSecrets": self.secrets_encryption,
            "EncryptProvider": self.secrets_encryption_provider,
            "EmbeddedRegistry": self.embedded_registry,
            "FlannelBackend": self.flannel_backend,
            "FlannelIPv6Masq": self.flannel_ipv6_masq,
            "FlannelExternalIP": self.flannel_external_ip,
            "EgressSelectorMode": self.egress_selector_mode,
            "ServiceIPRange": self.service_cidr,
            "ServiceIPRanges": [self.service_cidr],
            "SupervisorMetrics": self.supervisor_metrics,
        })
    }
}

/// The CLI names of the `CriticalControlArgs` fields, in struct order (`cli:` tags).
const CRITICAL_FIELDS: &[(&str, &str)] = &[
    ("ClusterDNSs", "cluster-dns"),
    ("ClusterIPRanges", "cluster-cidr"),
    ("ClusterDNS", "cluster-dns"),
    ("ClusterDomain", "cluster-domain"),
    ("ClusterIPRange", "cluster-cidr"),
    ("DisableCCM", "disable-cloud-controller"),
    ("DisableHelmController", "disable-helm-controller"),
    ("DisableNPC", "disable-network-policy"),
    ("DisableServiceLB", "disable-service-lb"),
    ("EncryptSecrets", "secrets-encryption"),
    ("EncryptProvider", "secrets-encryption-provider"),
    ("EmbeddedRegistry", "embedded-registry"),
    ("FlannelBackend", "flannel-backend"),
    ("FlannelIPv6Masq", "flannel-ipv6-masq"),
    ("FlannelExternalIP", "flannel-external-ip"),
    ("EgressSelectorMode", "egress-selector-mode"),
    ("ServiceIPRange", "service-cidr"),
    ("ServiceIPRanges", "service-cidr"),
    ("SupervisorMetrics", "supervisor-metrics"),
];

/// `compareConfig`: the CLI names of the mismatched fields (one per differing struct field).
pub fn critical_mismatches(local: &Value, cluster: &Value) -> Vec<&'static str> {
    CRITICAL_FIELDS
        .iter()
        .filter(|(field, _)| local.get(field) != cluster.get(field))
        .map(|(_, cli)| *cli)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::flags::{Command, parse};

    fn flags(args: &[&str]) -> Flags {
        parse(
            Command::Server,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_derived_values() {
        let root = Root::under("/nonexistent");
        let c = server(&root, &flags(&["--node-ip=10.0.0.11", "--node-name=srv1"])).unwrap();
        assert_eq!(c.cluster_cidr, "10.42.0.0/16");
        assert_eq!(c.cluster_dns, "10.43.0.10");
        assert_eq!(c.first_service_ip(), "10.43.0.1");
        assert_eq!(c.https_port, 6443);
        assert_eq!(c.flannel_backend, "vxlan");
        let c = server(
            &root,
            &flags(&["--node-ip=10.0.0.11", "--service-cidr=10.96.0.0/12"]),
        )
        .unwrap();
        assert_eq!(c.cluster_dns, "10.96.0.10");
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::under(d.path());
        std::fs::create_dir_all(d.path().join("etc/rancher/k3s")).unwrap();
        std::fs::write(d.path().join("etc/rancher/k3s/server-token"), "sekrit\n").unwrap();
        let c = server(
            &root,
            &flags(&[
                "--node-ip=10.0.0.11",
                "--token-file=/etc/rancher/k3s/server-token",
            ]),
        )
        .unwrap();
        assert_eq!(
            c.node.token.as_ref().map(|t| t.expose().to_string()),
            Some("sekrit".to_string())
        );
        let e = server(
            &root,
            &flags(&[
                "--node-ip=10.0.0.11",
                "--agent-token-file=/etc/rancher/k3s/nope",
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /etc/rancher/k3s/nope: no such file or directory"
        );
    }

    #[test]
    fn critical_mismatch_names_fields_like_k3s() {
        let root = Root::under("/nonexistent");
        let a = server(
            &root,
            &flags(&[
                "--node-ip=10.0.0.11",
                "--flannel-backend=none",
                "--disable-network-policy",
            ]),
        )
        .unwrap();
        let b = server(&root, &flags(&["--node-ip=10.0.0.12"])).unwrap();
        assert_eq!(
            critical_mismatches(&b.critical(), &a.critical()),
            vec!["disable-network-policy", "flannel-backend"]
        );
        assert!(critical_mismatches(&a.critical(), &a.critical()).is_empty());
        let c = server(
            &root,
            &flags(&[
                "--node-ip=10.0.0.12",
                "--flannel-backend=none",
                "--disable-network-policy",
                "--disable=servicelb",
            ]),
        )
        .unwrap();
        assert_eq!(
            critical_mismatches(&c.critical(), &a.critical()),
            vec!["disable-service-lb"]
        );
    }

    #[test]
    fn node_args_hide_secrets() {
        let f = flags(&["--token=abc", "--node-name=x"]);
        let a = node_args("server", &f);
        assert!(a.contains(&"********".to_string()));
        assert!(!a.contains(&"abc".to_string()));
    }
}
