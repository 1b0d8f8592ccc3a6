//! The cluster, through one client layer: a kube-rs client reached through an SSH-forwarded
//! connection to a server's `127.0.0.1:6443` (so the installer needs nothing but SSH to
//! reach the API, on any network), and waits that say what they waited for and what they
//! saw last when they give up.

pub mod apply;
pub mod manifest;
pub mod rollout;
pub mod tunnel;
pub mod wait;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use crate::host::Remote;

pub use tunnel::Tunnel;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the kubeconfig written by k3s on {host} cannot be used: {reason}")]
    Kubeconfig { host: String, reason: String },
    #[error("cannot open a local port for the API tunnel: {0}")]
    Tunnel(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Timeout(String),
}

/// A connection to the cluster's API through one server.
pub struct Cluster {
    client: kube::Client,
    via: String,
    _tunnel: Tunnel,
}

impl Cluster {
    /// Connects to the API of the server behind `remote`, using the admin kubeconfig k3s
    /// wrote there (`/etc/rancher/k3s/k3s.yaml`, whose server is `https://127.0.0.1:6443`).
    pub async fn connect(
        remote: Arc<dyn Remote>,
        kubeconfig_yaml: &str,
    ) -> Result<Cluster, KubeError> {
        let host = remote.name().to_owned();
        let tunnel = Tunnel::start(remote, "127.0.0.1", 6443)
            .await
            .map_err(|e| KubeError::Tunnel(e.to_string()))?;
        let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml).map_err(|e| {
            KubeError::Kubeconfig {
                host: host.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| KubeError::Kubeconfig {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        // The certificate names 127.0.0.1 (k3s always adds it), so TLS verification holds
        // through the tunnel's local end.
        config.cluster_url = format!("https://127.0.0.1:{}", tunnel.local_port())
            .parse()
            .map_err(|e: http::uri::InvalidUri| KubeError::Kubeconfig {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(60));
        let client = kube::Client::try_from(config)?;
        Ok(Cluster {
            client,
            via: host,
            _tunnel: tunnel,
        })
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The server this connection goes through.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// `GET /readyz`: the apiserver's own readiness (true only on `ok`).
    pub async fn readyz(&self) -> Result<bool, KubeError> {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| KubeError::Tunnel(e.to_string()))?;
        match self.client.request_text(req).await {
            Ok(body) => Ok(body.trim() == "ok"),
            Err(kube::Error::Api(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, KubeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }

    pub async fn node(&self, name: &str) -> Result<Option<Node>, KubeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        Ok(api.get_opt(name).await?)
    }

    /// Applies a JSON merge patch to a node (cordon, uncordon).
    pub async fn patch_node(&self, name: &str, patch: &serde_json::Value) -> Result<(), KubeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await?;
        Ok(())
    }

    /// The embedded etcd's members, from k3s's `/db/info` (pkg/etcd/etcd.go `infoHandler`:
    /// allowed from loopback, which is where the tunnel's connections come from).
    pub async fn etcd_members(&self) -> Result<Vec<EtcdMember>, KubeError> {
        let req = http::Request::get("/db/info")
            .body(Vec::new())
            .map_err(|e| KubeError::Tunnel(e.to_string()))?;
        let text = self.client.request_text(req).await?;
        let info: DbInfo = serde_json::from_str(&text).map_err(|e| {
            KubeError::Timeout(format!(
                "unexpected /db/info answer ({e}): {}",
                crate::host::tail(&text, 3)
            ))
        })?;
        Ok(info.members)
    }
}

#[derive(Debug, Deserialize)]
struct DbInfo {
    #[serde(default)]
    members: Vec<EtcdMember>,
}

/// One etcd member as k3s reports it (etcdserverpb.Member's JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EtcdMember {
    /// `<node name>-<8 hex>` (pkg/etcd/etcd.go `setName`).
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(default, rename = "isLearner")]
    pub is_learner: bool,
}

impl EtcdMember {
    /// Whether this member belongs to the node named `node` (its name is `<node>-<8 hex>`).
    pub fn is_node(&self, node: &str) -> bool {
        self.name
            .strip_prefix(node)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|suffix| {
                suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_info_parses_the_k3s_shape() {
        let text = r#"{"members":[{"ID":1234,"name":"srv1-0a1b2c3d","peerURLs":["https://10.0.0.11:2380"],"clientURLs":["https://10.0.0.11:2379"]},{"ID":99,"name":"srv2-ffffffff","peerURLs":["https://10.0.0.12:2380"],"isLearner":true}]}"#;
        let info: DbInfo = serde_json::from_str(text).unwrap();
        assert_eq!(info.members.len(), 2);
        assert!(info.members[0].is_node("srv1"));
        assert!(!info.members[0].is_node("srv"));
        assert!(!info.members[0].is_learner);
        assert!(info.members[1].is_learner);
        assert!(!info.members[1].is_node("srv1"));
    }
}
