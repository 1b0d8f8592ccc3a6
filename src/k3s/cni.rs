//! The node-local CNI network for `flannel-backend: none` (k3s-host-network.md §1).
//!
//! Without a CNI config the node never goes Ready (containerd reports `cni plugin not
//! initialized`). With host networking for every workload, a minimal node-local network is
//! enough: a `cni0` bridge with host-local IPAM over the node's `.spec.podCIDR`, plus
//! portmap. The plugins are k3s's own (its multicall `cni` binary), linked from the
//! directory k3s refreshes on every start into `/opt/cni/bin`, where containerd looks.
//! Write the file after the node registered (it needs the pod CIDR); containerd picks it up
//! live. The bridge is named `cni0` so `k3s-killall.sh` cleans it up.

use ipnet::IpNet;
use serde::Serialize;

use super::{K3sError, RenderedFile, paths};

pub use super::paths::cni_plugin_links as plugin_links;

#[derive(Serialize)]
struct CniContext {
    bridge: &'static str,
    pod_cidrs: Vec<String>,
    default_routes: Vec<&'static str>,
}

/// Renders `/etc/cni/net.d/10-local.conflist` for the node's pod CIDRs
/// (`.spec.podCIDRs`: one, or one per family on a dual-stack cluster).
pub fn render_conflist(pod_cidrs: &[IpNet]) -> Result<RenderedFile, K3sError> {
    if pod_cidrs.is_empty() {
        return Err(K3sError::InvalidInput {
            field: "podCIDR".into(),
            problem: "the node has no pod CIDR yet (kube-controller-manager assigns one after the node registers)".into(),
        });
    }
    let mut default_routes = Vec::new();
    for c in pod_cidrs {
        let route = match c {
            IpNet::V4(_) => "0.0.0.0/0",
            IpNet::V6(_) => "::/0",
        };
        if default_routes.contains(&route) {
            return Err(K3sError::InvalidInput {
                field: "podCIDR".into(),
                problem: format!("two pod CIDRs of one address family: {pod_cidrs:?}"),
            });
        }
        default_routes.push(route);
    }
    let ctx = CniContext {
        bridge: paths::CNI_BRIDGE,
        pod_cidrs: pod_cidrs.iter().map(|c| c.trunc().to_string()).collect(),
        default_routes,
    };
    Ok(RenderedFile {
        path: paths::CNI_CONFLIST.into(),
        mode: 0o644,
        content: super::render("10-local.conflist", &ctx)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn conflist_for_one_pod_cidr() {
        let f = render_conflist(&["10.42.1.0/24".parse().unwrap()]).unwrap();
        assert_eq!(f.path, "/etc/cni/net.d/10-local.conflist");
        insta::assert_snapshot!(f.content);
        let v: serde_json::Value = serde_json::from_str(&f.content).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.1.0/24");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn conflist_for_dual_stack() {
        let f = render_conflist(&[
            "10.42.1.0/24".parse().unwrap(),
            "fd42:0:0:1::/64".parse().unwrap(),
        ])
        .unwrap();
        insta::assert_snapshot!(f.content);
        let v: serde_json::Value = serde_json::from_str(&f.content).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["routes"][1]["dst"], "::/0");
    }

    #[test]
    fn no_pod_cidr_is_an_error_and_host_bits_are_dropped() {
        assert!(render_conflist(&[]).is_err());
        let f = render_conflist(&["10.42.1.7/24".parse().unwrap()]).unwrap();
        assert!(f.content.contains("\"10.42.1.0/24\""));
    }

    #[test]
    fn plugin_links_cover_what_the_conflist_uses() {
        let links = plugin_links();
        for p in ["bridge", "host-local", "portmap", "loopback"] {
            assert!(
                links.iter().any(|(l, _)| l == &format!("/opt/cni/bin/{p}")),
                "{p}"
            );
        }
    }
}
