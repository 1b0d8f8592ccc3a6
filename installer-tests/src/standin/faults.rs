//! Test knobs and injected faults, read from a file only tests write.
//!
//! The file is `/etc/k3s-standin/faults.yaml` on the node (under the test root prefix on
//! loopback). The installer never touches that path, and nothing here comes from `config.yaml`,
//! the unit or the environment the installer sets, so the installer needs no special case for the
//! stand-in. The file is re-read every second, so a test can inject a fault into a running node.
//!
//! ```yaml
//! startup-delay: 3s              # time until the API is ready (default 3s; 0 in fast tests)
//! crash-at-start: true           # exit 1 right after start, like a k3s that cannot start
//! never-ready: true              # never become ready: no READY=1, /readyz fails
//! refuse-joins: true             # (server) answer joins with etcd "unhealthy cluster" / 503
//! lose-node: true                # the node goes silent: no heartbeats, no API, pods' ports closed
//! learner-promotion-delay: 2s    # how long a joining server stays an etcd learner
//! node-monitor-grace-period: 40s # kube-controller-manager's grace before a silent node is Unknown
//! trace-writes: true             # (first server) log every write to the store, for debugging
//! unhealthy-containers: [nginx]  # containers of these names answer their probes with 503
//! ```

use std::path::Path;
use std::time::Duration;

use super::paths::{Root, k3s};

/// The knobs, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub startup_delay: Duration,
    pub crash_at_start: bool,
    pub never_ready: bool,
    pub refuse_joins: bool,
    pub lose_node: bool,
    pub learner_promotion_delay: Duration,
    pub node_monitor_grace_period: Duration,
    pub trace_writes: bool,
    /// Containers (by name) whose application fails its probes: an application-level fault
    /// (a bad configuration, a dependency down), so that the installer's readiness gates can
    /// be seen to fail the way they would with a real workload.
    pub unhealthy_containers: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            startup_delay: Duration::from_secs(3),
            crash_at_start: false,
            never_ready: false,
            refuse_joins: false,
            lose_node: false,
            learner_promotion_delay: Duration::from_secs(2),
            // kube-controller-manager `--node-monitor-grace-period` default (k8s 1.32+: 50s; k3s
            // does not change it). Tests shorten it.
            node_monitor_grace_period: Duration::from_secs(50),
            trace_writes: false,
            unhealthy_containers: Vec::new(),
        }
    }
}

/// Parse `3s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return (n >= 0.0).then(|| Duration::from_secs_f64(n));
    }
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.trim().parse().ok()?;
    if n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

impl Faults {
    /// Parse the file's text. Unknown keys are an error so a typo in a test shows up.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        if text.trim().is_empty() {
            return Ok(f);
        }
        let map: std::collections::BTreeMap<String, serde_json::Value> =
            serde_saphyr::from_str(text).map_err(|e| format!("faults file: {e}"))?;
        for (k, v) in map {
            let as_bool = || {
                v.as_bool()
                    .ok_or_else(|| format!("faults file: {k} must be true or false"))
            };
            let as_dur = || {
                let s = match &v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                parse_duration(&s).ok_or_else(|| format!("faults file: {k}: bad duration {s:?}"))
            };
            match k.as_str() {
                "startup-delay" => f.startup_delay = as_dur()?,
                "crash-at-start" => f.crash_at_start = as_bool()?,
                "never-ready" => f.never_ready = as_bool()?,
                "refuse-joins" => f.refuse_joins = as_bool()?,
                "lose-node" => f.lose_node = as_bool()?,
                "learner-promotion-delay" => f.learner_promotion_delay = as_dur()?,
                "node-monitor-grace-period" => f.node_monitor_grace_period = as_dur()?,
                "trace-writes" => f.trace_writes = as_bool()?,
                "unhealthy-containers" => {
                    f.unhealthy_containers = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .ok_or_else(|| {
                            format!("faults file: {k} must be a list of container names")
                        })?
                }
                other => return Err(format!("faults file: unknown key {other:?}")),
            }
        }
        Ok(f)
    }

    /// Read the node's fault file; defaults when it does not exist.
    pub fn load(root: &Root) -> Result<Faults, String> {
        Self::load_from(&root.path(k3s::FAULTS_FILE))
    }

    fn load_from(path: &Path) -> Result<Faults, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => Faults::parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Faults::default()),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }
}

/// The current knobs, re-read every second by a background task.
#[derive(Clone)]
pub struct LiveFaults {
    rx: tokio::sync::watch::Receiver<Faults>,
}

impl LiveFaults {
    /// Start watching the node's file (initial value already loaded).
    pub fn watch(root: Root, initial: Faults) -> LiveFaults {
        let (tx, rx) = tokio::sync::watch::channel(initial);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match Faults::load(&root) {
                    Ok(f) => {
                        tx.send_if_modified(|cur| {
                            if *cur != f {
                                *cur = f;
                                true
                            } else {
                                false
                            }
                        });
                    }
                    Err(e) => super::log::warn(format!("k3s-standin: ignoring fault file: {e}")),
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        LiveFaults { rx }
    }

    /// Fixed knobs (unit tests).
    pub fn fixed(f: Faults) -> LiveFaults {
        // A watch receiver keeps the last value after its sender is gone.
        let (_tx, rx) = tokio::sync::watch::channel(f);
        LiveFaults { rx }
    }

    /// A snapshot of the knobs now.
    pub fn get(&self) -> Faults {
        self.rx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        let f =
            Faults::parse("startup-delay: 0\nnever-ready: true\nlearner-promotion-delay: 500ms\n")
                .unwrap();
        assert_eq!(f.startup_delay, Duration::ZERO);
        assert!(f.never_ready);
        assert_eq!(f.learner_promotion_delay, Duration::from_millis(500));
        assert!(
            Faults::parse("nevr-ready: true")
                .unwrap_err()
                .contains("unknown key")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
    }
}
