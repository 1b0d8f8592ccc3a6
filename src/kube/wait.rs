//! Waiting with a deadline that explains itself: every wait names what it waited for and,
//! when it gives up, what it saw last (a condition message, a pod's waiting reason).

use std::future::Future;
use std::time::Duration;

// tokio's clock, so tests with paused time see the deadlines move.
use tokio::time::Instant;

use k8s_openapi::api::core::v1::Node;

/// One look at the thing being waited for.
pub enum Probe<T> {
    Done(T),
    /// Not there yet; the text says what was seen.
    NotYet(String),
    /// It will not get there whatever the wait (a unit that keeps dying with a fatal line,
    /// a host that stopped answering): stop now; the text says why.
    Hopeless(String),
}

/// A wait that gave up: at its deadline, or early because waiting could not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct WaitTimeout {
    pub what: String,
    pub after: Duration,
    pub last: String,
    /// Stopped before the deadline: what was seen cannot resolve by waiting.
    pub hopeless: bool,
}

impl WaitTimeout {
    fn describe(&self) -> String {
        let after = humantime::format_duration(self.after);
        if self.hopeless {
            format!(
                "stopped waiting for {} after {after}, since waiting cannot help: {}",
                self.what, self.last
            )
        } else {
            format!(
                "gave up after {after} waiting for {}; last seen: {}",
                self.what, self.last
            )
        }
    }
}

/// Probes every `interval` until `probe` is done or `timeout` passes.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T, WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe<T>>,
{
    let start = Instant::now();
    loop {
        let (last, hopeless) = match probe().await {
            Probe::Done(v) => return Ok(v),
            Probe::NotYet(seen) => (seen, false),
            Probe::Hopeless(why) => (why, true),
        };
        if hopeless || start.elapsed() >= timeout {
            return Err(WaitTimeout {
                what: what.to_owned(),
                after: Duration::from_secs(start.elapsed().as_secs()),
                last,
                hopeless,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Like [`until`], but driven by `changes` (a [`super::watch::Changes`] subscription): the
/// probe runs at once, then again as soon as the watched objects change, so a state is seen
/// within a round trip of the event. `recheck` is the longest pause between probes when
/// nothing changes: it bounds how late the parts of a probe that cannot be watched (a host's
/// SSH liveness, a grace period running out) are looked at again.
pub async fn until_changed<T, F, Fut>(
    what: &str,
    timeout: Duration,
    recheck: Duration,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    mut probe: F,
) -> Result<T, WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe<T>>,
{
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Whatever changed before this probe is seen by it.
        changes.borrow_and_update();
        let (last, hopeless) = match probe().await {
            Probe::Done(v) => return Ok(v),
            Probe::NotYet(seen) => (seen, false),
            Probe::Hopeless(why) => (why, true),
        };
        if hopeless || start.elapsed() >= timeout {
            return Err(WaitTimeout {
                what: what.to_owned(),
                after: Duration::from_secs(start.elapsed().as_secs()),
                last,
                hopeless,
            });
        }
        let wake = (tokio::time::Instant::now() + recheck).min(deadline);
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    // The watches are gone (the gate is ending): fall back to the recheck pace.
                    tokio::time::sleep_until(wake).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Whether a node is Ready, and if not, why (the Ready condition's reason and message,
/// plus its taints), in words fit for an operator.
pub fn node_readiness(node: &Node) -> (bool, String) {
    let conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    let ready = conds.iter().find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => (true, "Ready".into()),
        Some(c) => {
            let mut s = format!(
                "NotReady ({}: {})",
                c.reason.as_deref().unwrap_or("no reason"),
                c.message.as_deref().unwrap_or("no message")
            );
            let taints: Vec<String> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .map(|t| {
                    t.iter()
                        .map(|t| format!("{}:{}", t.key, t.effect))
                        .collect()
                })
                .unwrap_or_default();
            if !taints.is_empty() {
                s.push_str(&format!("; taints {}", taints.join(", ")));
            }
            (false, s)
        }
        None => (false, "no Ready condition reported yet".into()),
    }
}

/// The pod CIDR kube-controller-manager assigned to the node, if any yet.
pub fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn until_returns_when_done_and_explains_a_timeout() {
        let n = AtomicU32::new(0);
        let v = until(
            "three",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || async {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if i >= 2 {
                    Probe::Done(i)
                } else {
                    Probe::NotYet(format!("saw {i}"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 2);
        let e = until::<(), _, _>(
            "the moon",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Probe::NotYet("clouds".into()) },
        )
        .await
        .unwrap_err();
        assert_eq!(e.what, "the moon");
        assert_eq!(e.last, "clouds");
        assert!(e.to_string().starts_with("gave up after"), "{e}");
        assert!(
            e.to_string()
                .ends_with("waiting for the moon; last seen: clouds"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn until_changed_probes_again_on_a_change_not_at_the_recheck_pace() {
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        let n = AtomicU32::new(0);
        let started = Instant::now();
        let bump = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send_modify(|v| *v += 1);
            }
            tx
        });
        let v = until_changed(
            "three changes",
            Duration::from_secs(30),
            Duration::from_secs(20),
            &mut rx,
            || async {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if i >= 3 {
                    Probe::Done(i)
                } else {
                    Probe::NotYet(format!("saw {i}"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        // Woken by the three changes, not by the 20 s recheck.
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(bump.await.unwrap());
    }

    #[tokio::test]
    async fn until_changed_rechecks_without_changes_and_stops_when_hopeless() {
        let (_tx, mut rx) = tokio::sync::watch::channel(0u64);
        let n = AtomicU32::new(0);
        let e = until_changed::<(), _, _>(
            "a host",
            Duration::from_secs(30),
            Duration::from_millis(5),
            &mut rx,
            || async {
                if n.fetch_add(1, Ordering::SeqCst) >= 2 {
                    Probe::Hopeless("it stopped answering".into())
                } else {
                    Probe::NotYet("starting".into())
                }
            },
        )
        .await
        .unwrap_err();
        assert!(e.hopeless);
        assert_eq!(e.last, "it stopped answering");
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn node_readiness_explains_not_ready() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "srv1"},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                "message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"}]}
        })).unwrap();
        let (ok, why) = node_readiness(&node);
        assert!(!ok);
        assert!(why.contains("cni plugin not initialized"), "{why}");
        assert!(
            why.ends_with("taints node.kubernetes.io/not-ready:NoSchedule"),
            "{why}"
        );
        let ready: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "srv1"},
            "spec": {"podCIDR": "10.42.0.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(node_readiness(&ready), (true, "Ready".to_string()));
        assert_eq!(pod_cidr(&ready).as_deref(), Some("10.42.0.0/24"));
    }
}
