//! The one table of k3s's ports: number (or range), protocol, who listens, and who must
//! reach it. Preflight (ports that must be free, the reachability check and its hints),
//! prepare (host firewall openings, recorded in the changes log) and, later, uninstall
//! and the policy enforcer's always-open list all read it, so they cannot drift apart.
//!
//! Sources: k3s docs/installation/requirements.md ("Inbound rules", "Local ports") and
//! pkg/agent (kubelet 10250/10248, kube-proxy 10249/10256, containerd stream 10010, the
//! agent's apiserver load balancer 6444); k3s-host-network.md §2 (etcd 2379-2382).

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Which nodes hold the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    EveryNode,
    Servers,
}

/// Who must be able to connect to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReachedBy {
    /// Every other node of the cluster (opened in host firewalls, tested by preflight).
    OtherNodes,
    /// Only the node itself (loopback): must be free, never opened.
    Local,
}

/// One port (or a contiguous range) of k3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub first: u16,
    pub last: u16,
    pub protocol: Protocol,
    pub on: On,
    pub reached_by: ReachedBy,
    pub what: &'static str,
}

impl Port {
    const fn tcp(n: u16, on: On, reached_by: ReachedBy, what: &'static str) -> Port {
        Port {
            first: n,
            last: n,
            protocol: Protocol::Tcp,
            on,
            reached_by,
            what,
        }
    }

    /// Whether a node of this role holds the port.
    pub fn held_by(&self, is_server: bool) -> bool {
        is_server || self.on == On::EveryNode
    }

    /// Every port number of the range.
    pub fn numbers(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    /// `6443` or `2379-2380`.
    pub fn range_str(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

/// The Kubernetes API (the installer's SSH tunnel ends here too).
pub const API_PORT: u16 = 6443;

use On::{EveryNode, Servers};
use ReachedBy::{Local, OtherNodes};

/// Every port k3s holds, in the order the hints list them.
pub const PORTS: &[Port] = &[
    Port::tcp(API_PORT, Servers, OtherNodes, "Kubernetes API"),
    Port {
        first: 2379,
        last: 2380,
        protocol: Protocol::Tcp,
        on: Servers,
        reached_by: OtherNodes,
        what: "etcd client and peer",
    },
    Port::tcp(2381, Servers, Local, "etcd metrics"),
    Port::tcp(2382, Servers, Local, "etcd client (learner)"),
    Port::tcp(10250, EveryNode, OtherNodes, "kubelet API"),
    Port::tcp(6444, EveryNode, Local, "k3s supervisor load balancer"),
    Port::tcp(10010, EveryNode, Local, "containerd stream server"),
    Port::tcp(10248, EveryNode, Local, "kubelet healthz"),
    Port::tcp(10249, EveryNode, Local, "kube-proxy metrics"),
    Port::tcp(10256, EveryNode, Local, "kube-proxy healthz"),
    Port::tcp(10257, Servers, Local, "kube-controller-manager"),
    Port::tcp(10258, Servers, Local, "cloud-controller-manager"),
    Port::tcp(10259, Servers, Local, "kube-scheduler"),
];

/// Every single TCP port a node of this role holds, with what holds it (ports-free check).
pub fn held(is_server: bool) -> Vec<(u16, &'static str)> {
    PORTS
        .iter()
        .filter(|p| p.held_by(is_server) && p.protocol == Protocol::Tcp)
        .flat_map(|p| p.numbers().map(move |n| (n, p.what)))
        .collect()
}

/// The k3s ports other nodes must reach on a node of this role.
pub fn cross_node(is_server: bool) -> impl Iterator<Item = &'static Port> {
    PORTS
        .iter()
        .filter(move |p| p.held_by(is_server) && p.reached_by == OtherNodes)
}

/// TCP ports (single or ranges, as `6443` or `2379-2380`) other nodes must reach on a node
/// of this role, the application's ports included: what a host firewall must open.
pub fn firewall_openings(is_server: bool, app_ports: &[(String, u16)]) -> Vec<String> {
    let mut v: Vec<(u16, String)> = cross_node(is_server)
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| (p.first, p.range_str()))
        .collect();
    for (_, p) in app_ports {
        if !v.iter().any(|(first, _)| first == p) {
            v.push((*p, p.to_string()));
        }
    }
    v.sort();
    v.into_iter().map(|(_, s)| s).collect()
}

/// Single ports other nodes must reach on a node (the reachability check's set).
pub fn cross_node_numbers(is_server: bool, app_ports: &[(String, u16)]) -> Vec<u16> {
    let mut p: Vec<u16> = cross_node(is_server).flat_map(|p| p.numbers()).collect();
    p.extend(app_ports.iter().map(|(_, p)| *p));
    p.sort_unstable();
    p.dedup();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_node_ports_cover_k3s_and_the_application() {
        let app = vec![("gateway".to_string(), 8443u16)];
        assert_eq!(
            cross_node_numbers(true, &app),
            vec![2379, 2380, 6443, 8443, 10250]
        );
        assert_eq!(cross_node_numbers(false, &app), vec![8443, 10250]);
    }

    #[test]
    fn firewall_openings_match_what_other_nodes_must_reach() {
        let app = vec![("gateway".to_string(), 8443u16)];
        assert_eq!(
            firewall_openings(true, &app),
            vec!["2379-2380", "6443", "8443", "10250"]
        );
        assert_eq!(firewall_openings(false, &app), vec!["8443", "10250"]);
        // Every number the reachability check tests is covered by an opening.
        for is_server in [true, false] {
            let open = firewall_openings(is_server, &app);
            for n in cross_node_numbers(is_server, &app) {
                assert!(
                    open.iter().any(|o| match o.split_once('-') {
                        Some((a, b)) =>
                            (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&n),
                        None => o.parse::<u16>().unwrap() == n,
                    }),
                    "{n} not opened"
                );
            }
        }
    }

    #[test]
    fn agents_hold_no_server_port() {
        let agent: Vec<u16> = held(false).into_iter().map(|(n, _)| n).collect();
        assert!(agent.contains(&10250) && agent.contains(&6444));
        assert!(!agent.contains(&6443) && !agent.contains(&2379));
        let server: Vec<u16> = held(true).into_iter().map(|(n, _)| n).collect();
        assert!(server.contains(&2380) && server.contains(&10259));
    }
}
