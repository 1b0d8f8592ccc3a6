//! The installer's "not protected yet" taint (docs/enforcer.md, "The taint handshake").
//!
//! Every node registers with a `NoSchedule` taint (k3s `node-taint`, the kubelet's
//! `--register-with-taints`), which the enforcer tolerates and the application does not. Once
//! the enforcer's first apply on its node succeeded, it removes the taint from its own Node, so
//! no application pod is scheduled on a node before its rules are in the kernel. The taint is
//! never put back: a killed or crashed enforcer leaves its rules in place (fail-closed), so the
//! node stays protected, and tainting a node on every restart would block scheduling during a
//! rolling update for nothing. A node that registers again (its Node object deleted) comes back
//! with the taint, which the enforcer removes again after its next apply.

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

/// The merge patch that removes every taint with `key` from `node`, or `None` when the node
/// does not carry it. The patch names the node's resourceVersion, so it is refused (409) when
/// the node changed in between (the next tick looks again) instead of overwriting a taint
/// someone else added meanwhile: a merge patch replaces the whole list.
pub fn removal_patch(node: &Node, key: &str) -> Option<Value> {
    let taints = node.spec.as_ref()?.taints.as_ref()?;
    if !taints.iter().any(|t| t.key == key) {
        return None;
    }
    let kept: Vec<Value> = taints
        .iter()
        .filter(|t| t.key != key)
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    let mut patch = json!({"spec": {"taints": kept}});
    if let Some(rv) = &node.metadata.resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Some(patch)
}

/// Whether `node` carries a taint with `key`.
pub fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "installer/enforcer-not-ready";

    fn node(taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "resourceVersion": "42"},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    #[test]
    fn the_patch_removes_only_the_installers_taint_and_names_the_resource_version() {
        let n = node(json!([
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
            {"key": KEY, "value": "true", "effect": "NoSchedule"}
        ]));
        assert!(has_taint(&n, KEY));
        let p = removal_patch(&n, KEY).expect("a patch");
        assert_eq!(
            p,
            json!({
                "metadata": {"resourceVersion": "42"},
                "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}
            })
        );
    }

    #[test]
    fn a_node_without_the_taint_needs_no_patch() {
        let n = node(json!([{"key": "other", "effect": "NoSchedule"}]));
        assert!(!has_taint(&n, KEY));
        assert_eq!(removal_patch(&n, KEY), None);
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        assert_eq!(removal_patch(&bare, KEY), None);
    }

    #[test]
    fn the_last_taint_removed_leaves_an_empty_list() {
        let n = node(json!([{"key": KEY, "value": "true", "effect": "NoSchedule"}]));
        assert_eq!(removal_patch(&n, KEY).unwrap()["spec"]["taints"], json!([]));
    }
}
