//! Single-value checks shared by answer-file validation and the wizard (which checks each
//! answer as it is typed). Each returns the parsed value, or what is wrong plus a hint.

use std::net::IpAddr;

/// What is wrong with a value, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hint {
            Some(h) => write!(f, "{} (hint: {h})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A host address as written: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(IpAddr),
    Dns(String),
}

impl Address {
    /// The form used to compare addresses: the IP, or the lower-case name without a final dot.
    pub fn key(&self) -> String {
        match self {
            // `::ffff:10.0.0.1` is 10.0.0.1: the same host written another way.
            Address::Ip(ip) => ip.to_canonical().to_string(),
            Address::Dns(n) => n.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Dns(_) => None,
        }
    }
}

/// An IPv4 or IPv6 address, or a DNS name (RFC 1123). `10.0.0.256` is refused as a broken
/// IPv4 address rather than accepted as a name.
pub fn address(s: &str) -> Result<Address, Problem> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Problem::new("the address is empty"));
    }
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(Address::Ip(ip));
    }
    zone_id(unbracketed)?;
    if s.contains(':') {
        return Err(Problem::new(format!("`{s}` is not a valid IPv6 address")).hint(
            "write the address alone (no port: the SSH port goes in `ssh.port`), for example fd00::11",
        ));
    }
    let labels: Vec<&str> = s.trim_end_matches('.').split('.').collect();
    if labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Problem::new(format!("`{s}` is not a valid IPv4 address"))
            .hint("four numbers from 0 to 255, for example 10.0.0.11"));
    }
    dns_name(s).map(Address::Dns)
}

/// A DNS name (RFC 1123): labels of letters, digits and `-`, not starting or ending with `-`,
/// at most 63 characters each and 253 in all.
pub fn dns_name(s: &str) -> Result<String, Problem> {
    let hint = "a DNS name is letters, digits, `-` and `.`, for example node1.example.internal";
    let name = s.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(Problem::new(format!("`{s}` is not a valid DNS name")).hint(hint));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(
                Problem::new(format!("`{s}` is not a valid DNS name (label `{label}`)")).hint(hint),
            );
        }
    }
    Ok(name.to_owned())
}

/// The cluster's name: a DNS label.
pub fn cluster_name(s: &str) -> Result<String, Problem> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Problem::new(format!("`{s}` is not a valid cluster name"))
            .hint("use lower-case letters, digits and `-` (at most 63), for example `appliance`"))
    }
}

/// A Kubernetes node name: a lower-case RFC 1123 subdomain.
pub fn node_name(s: &str) -> Result<String, Problem> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Problem::new(format!("`{s}` is not a valid node name")).hint(
            "Kubernetes node names are lower-case letters, digits, `-` and `.`, for example `srv1`",
        ))
    }
}

/// Refuses an IPv6 address with a zone id (`fe80::1%eth0`), which the cluster cannot use.
fn zone_id(s: &str) -> Result<(), Problem> {
    if let Some((ip, zone)) = s.split_once('%')
        && ip.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err(Problem::new(format!(
            "`{s}` has an IPv6 zone id (`%{zone}`): zone ids are not supported"
        ))
        .hint("use a global or unique-local address of the host (not a link-local fe80:: one), without `%`"));
    }
    Ok(())
}

/// A node IP override: an IP address, nothing else.
pub fn node_ip(s: &str) -> Result<IpAddr, Problem> {
    zone_id(s.trim())?;
    s.trim().parse::<IpAddr>().map_err(|_| {
        Problem::new(format!("`{s}` is not an IP address"))
            .hint("nodeIp is the IPv4 or IPv6 address this host uses for cluster traffic, for example 10.0.0.11 (no name, no prefix length)")
    })
}

/// An SSH login user name.
pub fn user(s: &str) -> Result<String, Problem> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
        && !s.starts_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Problem::new(format!("`{s}` is not a valid user name"))
            .hint("a login name such as `admin` or `root`, without `@host`"))
    }
}

/// A pinned host-key fingerprint as OpenSSH prints it: `SHA256:` and 43 base64 characters.
pub fn host_key(s: &str) -> Result<String, Problem> {
    use base64::Engine;
    let hint = "copy it from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on the host, for example SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let Some(b64) = s.strip_prefix("SHA256:") else {
        return Err(Problem::new("a host key fingerprint starts with `SHA256:`").hint(hint));
    };
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('=')) {
        Ok(bytes) if bytes.len() == 32 => Ok(format!("SHA256:{}", b64.trim_end_matches('='))),
        _ => Err(Problem::new(format!(
            "`{s}` is not a SHA-256 fingerprint (43 base64 characters after `SHA256:`)"
        ))
        .hint(hint)),
    }
}

/// A port k3s or the node itself uses, with what uses it, or `None` if the port is free for
/// the application. All pods use the host network, so an application port is a host port.
///
/// Source: k3s docs `docs/installation/requirements.md` "Inbound Rules" and k3s source, as
/// summarized in docs/k3s-host-network.md §1 "Ports apps must avoid".
pub fn reserved_port(port: u16) -> Option<&'static str> {
    Some(match port {
        22 => "SSH, which the installer itself uses",
        2379..=2382 => "etcd on servers (2379-2382)",
        6443 => "the Kubernetes API server on servers",
        6444 => "the k3s supervisor/API load balancer on every node",
        10010 => "containerd's stream server on every node",
        10248 => "the kubelet health endpoint on every node",
        10249 => "kube-proxy metrics on every node",
        10250 => "the kubelet API on every node",
        10256 => "kube-proxy health on every node",
        10257..=10259 => {
            "the controller manager, cloud controller and scheduler on servers (10257-10259)"
        }
        NODE_PORT_MIN..=NODE_PORT_MAX => {
            "the Kubernetes NodePort range (30000-32767), which kube-proxy owns on every node"
        }
        _ => return None,
    })
}

/// The Kubernetes NodePort range (k3s default `service-node-port-range`).
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

/// An application (host) port.
pub fn app_port(port: i64) -> Result<u16, Problem> {
    let Ok(p) = u16::try_from(port) else {
        return Err(
            Problem::new(format!("{port} is not a port number")).hint("a port is 1 to 65535")
        );
    };
    if p == 0 {
        return Err(Problem::new("0 is not a port number").hint("a port is 1 to 65535"));
    }
    if let Some(what) = reserved_port(p) {
        return Err(Problem::new(format!("port {p} is taken by {what}")).hint(
            "every pod uses the host network, so an application port is a port on every node: pick one below 30000 that k3s does not use",
        ));
    }
    Ok(p)
}

/// An e-mail address (simple form: `local@domain`, the domain a DNS name).
pub fn email(s: &str) -> Result<String, Problem> {
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !local.contains(char::is_whitespace)
                && dns_name(domain).is_ok()
                && domain.contains('.') =>
        {
            Ok(s.to_owned())
        }
        _ => Err(Problem::new(format!("`{s}` is not an e-mail address"))
            .hint("for example admin@example.com")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            address("10.0.0.1").unwrap(),
            Address::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            address("fd00::1").unwrap(),
            Address::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            address("[fd00::1]").unwrap(),
            Address::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(address("Node1.Example.").unwrap().key(), "node1.example");
        assert!(address("10.0.0.256").unwrap_err().message.contains("IPv4"));
        assert!(address("10.0.0.1:22").is_err());
        assert!(address("bad_name").is_err());
        assert!(address("-x.example").is_err());
        assert!(address("").is_err());
    }

    #[test]
    fn names_and_keys() {
        assert!(cluster_name("demo-1").is_ok());
        assert!(cluster_name("Demo").is_err());
        assert!(node_name("srv1.lab").is_ok());
        assert!(node_name("Srv1").is_err());
        assert!(user("admin").is_ok());
        assert!(user("admin@host").is_err());
        assert!(host_key("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU").is_ok());
        assert!(host_key("SHA256:abc").is_err());
        assert!(host_key("MD5:aa:bb").is_err());
        assert!(node_ip("10.0.0.1").is_ok());
        assert!(node_ip("10.0.0.1/24").is_err());
        assert!(email("a@example.com").is_ok());
        assert!(email("a@b").is_err());
    }

    #[test]
    fn app_ports_avoid_node_ports_and_k3s_ports() {
        assert_eq!(app_port(8443), Ok(8443));
        assert!(app_port(30000).unwrap_err().message.contains("NodePort"));
        assert!(app_port(32767).is_err());
        assert!(app_port(32768).is_ok());
        for p in [
            6443, 6444, 2379, 2382, 10250, 10248, 10249, 10256, 10010, 10257, 10259,
        ] {
            assert!(app_port(p).is_err(), "{p}");
        }
        assert!(app_port(0).is_err());
        assert!(app_port(70000).is_err());
    }
}
