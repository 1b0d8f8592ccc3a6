//! Cluster membership kept by the first server: the embedded-etcd member list, the learner rule,
//! node passwords, and the `/db/info` document.
//!
//! Modelled on `pkg/etcd/etcd.go` (k3s release-1.36):
//! - Member names are `<node-name>-<8 hex>` (`setName`), kept in `${data-dir}/server/db/etcd/name`.
//! - A joining server is added with `MemberAddAsLearner`; etcd allows one learner at a time, so a
//!   second join fails with `etcdserver: too many learner members in cluster`, which k3s retries
//!   every second logging `Waiting for other members to finish joining etcd cluster: ...`
//!   (`pollJoin`). The leader promotes learners in `manageLearners` once they have caught up
//!   (modelled as the `learner-promotion-delay` knob).
//! - A member whose node-name prefix equals the joiner's node name, under a different member
//!   name, fails the join with `duplicate node name found, please use a unique name for this node`.
//! - `/db/info` answers `{"members":[...]}` in etcd's `Member` JSON shape (`ID`, `name`,
//!   `peerURLs`, `clientURLs`, `isLearner`).
//!
//! Node passwords follow `pkg/nodepassword`: the first time a node registers, the hash of its
//! `/etc/rancher/node/password` is stored in the Secret `kube-system/<node>.node-password.k3s`; a
//! node registering under the same name with a different password gets `403`, which the agent
//! reports as `Node password rejected, duplicate hostname or contents of ...`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::faults::LiveFaults;
use super::log;
use super::store::{Store, WriteOpts, resources};

const MEMBERS_KEY: &str = "etcd-members";

/// One etcd member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub node_name: String,
    pub address: String,
    pub is_learner: bool,
    /// Unix seconds when it was added (learner) or became a voter.
    pub since: i64,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// Retryable etcd errors (`too many learner members`, `unhealthy cluster`).
    Retry(String),
    /// Fatal for the joiner.
    Fatal(String),
}

/// `ErrTooManyLearners` text.
pub const TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";
/// `ErrUnhealthy` text (used for the `refuse-joins` fault).
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
/// The duplicate-name error text.
pub const DUPLICATE_NAME: &str =
    "duplicate node name found, please use a unique name for this node";

/// Membership operations on the first server's store.
pub struct Membership {
    pub store: Arc<Store>,
    /// The real etcd cluster (through the first server's member), when one runs: learners are
    /// promoted there, and members the list no longer holds (a deleted Node) are removed there.
    pub etcd: Option<super::etcd::EtcdClient>,
}

/// A member's peer URL from its address.
pub fn peer_url(address: &str) -> String {
    super::etcd::MemberSpec::new("", std::path::Path::new(""), address).peer_url()
}

fn member_node_name(name: &str) -> &str {
    // etcd.go join: the node name is the member name up to its last hyphen.
    match name.rfind('-') {
        Some(i) if i > 1 => &name[..i],
        _ => name,
    }
}

impl Membership {
    /// The member list.
    pub fn members(&self) -> Vec<Member> {
        self.store
            .extra(MEMBERS_KEY)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    fn save(&self, m: &[Member]) {
        self.store
            .set_extra(MEMBERS_KEY, serde_json::to_value(m).unwrap_or(Value::Null));
    }

    /// The first server adds itself as the only voting member ("Starting etcd for new cluster").
    pub fn init_first(&self, name: &str, node_name: &str, address: &str) {
        let mut m = self.members();
        if m.iter().any(|x| x.name == name) {
            return;
        }
        m.push(Member {
            id: rand::random::<u64>() >> 1,
            name: name.to_string(),
            node_name: node_name.to_string(),
            address: address.to_string(),
            is_learner: false,
            since: jiff::Timestamp::now().as_second(),
        });
        self.save(&m);
    }

    /// `join`: add a member as a learner, or accept a member that is already in.
    pub fn join(
        &self,
        name: &str,
        node_name: &str,
        address: &str,
        refuse: bool,
    ) -> Result<Member, JoinError> {
        if refuse {
            return Err(JoinError::Retry(UNHEALTHY.into()));
        }
        let mut m = self.members();
        for x in &m {
            if x.name != name && member_node_name(&x.name) == node_name {
                return Err(JoinError::Fatal(DUPLICATE_NAME.into()));
            }
        }
        if let Some(x) = m.iter().find(|x| x.name == name) {
            return Ok(x.clone());
        }
        if m.iter().any(|x| x.is_learner) {
            return Err(JoinError::Retry(TOO_MANY_LEARNERS.into()));
        }
        let cluster: Vec<String> = m
            .iter()
            .map(|x| format!("{}=https://{}:2380", x.name, x.address))
            .collect();
        log::info(format!(
            "Adding member {name}=https://{address}:2380 to etcd cluster [{}]",
            cluster.join(" ")
        ));
        let member = Member {
            id: rand::random::<u64>() >> 1,
            name: name.to_string(),
            node_name: node_name.to_string(),
            address: address.to_string(),
            is_learner: true,
            since: jiff::Timestamp::now().as_second(),
        };
        m.push(member.clone());
        self.save(&m);
        Ok(member)
    }

    /// The member named `name`, if any.
    pub fn member(&self, name: &str) -> Option<Member> {
        self.members().into_iter().find(|x| x.name == name)
    }

    /// Remove the member of a node (its Node object was deleted; `pkg/etcd/member_controller.go`).
    pub fn remove_node(&self, node_name: &str) {
        let mut m = self.members();
        let before = m.len();
        m.retain(|x| x.node_name != node_name);
        if m.len() != before {
            log::info(format!("Removed etcd member for deleted node {node_name}"));
            self.save(&m);
        }
    }

    /// `/db/info`.
    pub fn info(&self) -> Value {
        let members: Vec<Value> = self
            .members()
            .iter()
            .map(|x| {
                let mut v = json!({
                    "ID": x.id,
                    "name": x.name,
                    "peerURLs": [format!("https://{}:2380", x.address)],
                    "clientURLs": [format!("https://{}:2379", x.address)],
                });
                if x.is_learner {
                    v["isLearner"] = json!(true);
                }
                v
            })
            .collect();
        json!({"members": members})
    }

    /// `manageLearners`: promote learners that have caught up.
    pub fn spawn_promoter(self: &Arc<Self>, faults: LiveFaults) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let delay = faults.get().learner_promotion_delay;
                let now = jiff::Timestamp::now().as_second();
                let mut m = me.members();
                let mut changed = false;
                let real = match &me.etcd {
                    Some(c) => match c.member_list().await {
                        Ok(l) => Some(l),
                        Err(_) => continue,
                    },
                    None => None,
                };
                if let (Some(c), Some(real)) = (&me.etcd, &real) {
                    // pkg/etcd/member_controller.go: a member whose node is gone is removed.
                    for r in real {
                        let known = m
                            .iter()
                            .any(|x| r.peer_urls.iter().any(|u| *u == peer_url(&x.address)));
                        if !known && c.member_remove(r.id).await.is_ok() {
                            log::info(format!("Removed etcd member {}", r.name));
                        }
                    }
                }
                for x in m.iter_mut() {
                    if x.is_learner && now - x.since >= delay.as_secs() as i64 {
                        if let (Some(c), Some(real)) = (&me.etcd, &real) {
                            let url = peer_url(&x.address);
                            let Some(r) = real.iter().find(|r| r.peer_urls.contains(&url)) else {
                                continue;
                            };
                            // Promotion fails until the learner has caught up; retried next tick.
                            if r.is_learner && c.member_promote(r.id).await.is_err() {
                                continue;
                            }
                        }
                        x.is_learner = false;
                        x.since = now;
                        changed = true;
                        log::info(format!("Promoted learner {}", x.name));
                    }
                }
                if changed {
                    me.save(&m);
                }
            }
        });
    }

    /// Check a node's password (`pkg/nodepassword/nodepassword.go` `Ensure`): stored as a hash in
    /// `kube-system/<node>.node-password.k3s` on first use; a different password is refused.
    pub fn check_node_password(&self, node_name: &str, password: &str) -> Result<(), String> {
        let secrets = resources::core("secrets");
        let name = format!("{node_name}.node-password.k3s");
        let hash = hex::encode(Sha256::digest(password.as_bytes()));
        match self.store.get(secrets, "kube-system", &name) {
            Some(s) => {
                use base64::Engine;
                let stored = s
                    .pointer("/data/hash")
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).to_string())
                    .unwrap_or_default();
                if stored == hash {
                    Ok(())
                } else {
                    Err(format!(
                        "unable to verify password for node '{node_name}': hash does not match"
                    ))
                }
            }
            None => {
                use base64::Engine;
                let body = json!({
                    "metadata": {"name": name, "namespace": "kube-system", "labels": {"k3s.io/node-password": "true"}},
                    "type": "k3s.cattle.io/node-password",
                    "immutable": true,
                    "data": {"hash": base64::engine::general_purpose::STANDARD.encode(&hash)},
                });
                let opts = WriteOpts {
                    manager: "k3s-supervisor".into(),
                    ..Default::default()
                };
                self.store
                    .create(secrets, "kube-system", body, &opts)
                    .map(|_| ())
                    .map_err(|e| e.message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::store::admission::ClusterParams;

    fn membership() -> Membership {
        let store = Store::open(None, ClusterParams::default()).unwrap();
        store
            .create(
                resources::core("namespaces"),
                "",
                json!({"metadata": {"name": "kube-system"}}),
                &WriteOpts::default(),
            )
            .unwrap();
        Membership { store, etcd: None }
    }

    #[test]
    fn one_learner_at_a_time_and_duplicate_names() {
        let m = membership();
        m.init_first("srv1-aaaaaaaa", "srv1", "10.0.0.11");
        let l = m.join("srv2-bbbbbbbb", "srv2", "10.0.0.12", false).unwrap();
        assert!(l.is_learner);
        assert_eq!(
            m.join("srv3-cccccccc", "srv3", "10.0.0.13", false),
            Err(JoinError::Retry(TOO_MANY_LEARNERS.into()))
        );
        assert_eq!(
            m.join("srv2-dddddddd", "srv2", "10.0.0.14", false),
            Err(JoinError::Fatal(DUPLICATE_NAME.into()))
        );
        // The same member rejoining (a restart) is fine.
        assert!(m.join("srv2-bbbbbbbb", "srv2", "10.0.0.12", false).is_ok());
        assert_eq!(
            m.join("srv3-cccccccc", "srv3", "10.0.0.13", true),
            Err(JoinError::Retry(UNHEALTHY.into()))
        );
        let info = m.info();
        assert_eq!(info["members"].as_array().unwrap().len(), 2);
        assert_eq!(info["members"][1]["isLearner"], true);
        assert!(info["members"][0].get("isLearner").is_none());
        assert_eq!(info["members"][0]["peerURLs"][0], "https://10.0.0.11:2380");
    }

    #[test]
    fn node_passwords() {
        let m = membership();
        m.check_node_password("agt1", "pw1").unwrap();
        m.check_node_password("agt1", "pw1").unwrap();
        assert!(m.check_node_password("agt1", "other").is_err());
    }
}
