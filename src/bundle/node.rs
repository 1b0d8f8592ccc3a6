//! Running the collectors on one node: each under its time limit, all under the node's
//! budget; every outcome (and every absence) recorded in a manifest item.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::{HostError, Remote, RemoteCommand};

use super::collectors::{Applies, Collector};
use super::manifest::{Item, Status};

/// One file collected from a node (raw: redaction happens before anything is written).
pub struct Collected {
    pub item: Item,
    pub data: Vec<u8>,
}

/// What is known about the node going in.
pub struct NodeRun<'a> {
    pub name: &'a str,
    pub is_server: bool,
    pub api_up: bool,
    pub budget: Duration,
}

/// Parses the wrapper's stderr: the command's exit code and dd's raw byte count.
fn parse_trailer(stderr: &str) -> (Option<i32>, Option<u64>) {
    let mut rc = None;
    let mut bytes = None;
    for line in stderr.lines() {
        if let Some(v) = line.trim().strip_prefix("__bundle_rc=") {
            rc = v.trim().parse().ok();
        } else if let Some((n, rest)) = line.split_once(' ')
            && rest.starts_with("bytes")
        {
            bytes = n.parse().ok();
        }
    }
    (rc, bytes)
}

/// A collector not run, with why.
pub fn absent(node: &str, c: &Collector, status: Status, reason: impl Into<String>) -> Item {
    Item {
        id: c.id.clone(),
        node: Some(node.to_owned()),
        path: format!("nodes/{node}/{}", c.path),
        status,
        exit_code: None,
        duration_ms: 0,
        bytes_kept: 0,
        bytes_dropped: 0,
        reason: Some(reason.into()),
    }
}

/// Runs one collector.
pub async fn run_one(remote: &dyn Remote, node: &str, c: &Collector, limit: Duration) -> Collected {
    let started = Instant::now();
    let cmd = RemoteCommand::new(c.wrapped())
        .sudo()
        .quiet_output()
        .timeout(limit);
    let mut item = absent(node, c, Status::Ok, "");
    item.reason = None;
    let result = remote.exec(cmd).await;
    item.duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(out) => {
            let (rc, raw) = parse_trailer(&out.stderr_str());
            let kept = out.stdout.len() as u64;
            item.exit_code = rc;
            item.bytes_kept = kept;
            item.bytes_dropped = raw.map_or(0, |r| r.saturating_sub(kept));
            match rc {
                Some(0) => {}
                Some(124) | Some(137) => {
                    item.status = Status::Timeout;
                    item.reason = Some(format!(
                        "cut at its time limit of {} s (output so far kept)",
                        c.timeout.as_secs()
                    ));
                }
                Some(127) => {
                    item.status = Status::Skipped;
                    item.reason = Some("not applicable: a command it needs is not installed on this host (exit 127)".into());
                }
                Some(n) => {
                    item.status = Status::Failed;
                    item.reason = Some(format!("exit status {n}"));
                }
                None => {
                    item.status = Status::Failed;
                    item.reason = Some(format!(
                        "no exit status reported (sudo or sh failed?): {}",
                        crate::host::tail(&out.stderr_str(), 3)
                    ));
                }
            }
            Collected {
                item,
                data: out.stdout,
            }
        }
        Err(e) => {
            item.status = match e {
                HostError::Timeout { .. } => Status::Timeout,
                HostError::Disconnected { .. } | HostError::Connect { .. } => Status::Unreachable,
                _ => Status::Failed,
            };
            item.reason = Some(crate::secret::redact(&e.to_string()));
            Collected {
                item,
                data: Vec::new(),
            }
        }
    }
}

/// Runs every applicable collector on a node, in order, within the node's budget: once the
/// budget is spent, what is left is recorded as `timeout`. A dropped connection marks what
/// is left `unreachable` rather than waiting on each.
pub async fn run_node(
    remote: Arc<dyn Remote>,
    run: &NodeRun<'_>,
    collectors: &[Collector],
) -> Vec<Collected> {
    let deadline = Instant::now() + run.budget;
    let mut out = Vec::new();
    let mut lost: Option<String> = None;
    for c in collectors {
        let skip = match c.applies {
            Applies::Servers if !run.is_server => Some("servers only"),
            Applies::ApiDown if run.api_up => Some("the API answered: pod logs are under cluster/"),
            _ => None,
        };
        if let Some(why) = skip {
            out.push(Collected {
                item: absent(run.name, c, Status::Skipped, why),
                data: Vec::new(),
            });
            continue;
        }
        if let Some(why) = &lost {
            out.push(Collected {
                item: absent(run.name, c, Status::Unreachable, why.clone()),
                data: Vec::new(),
            });
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.push(Collected {
                item: absent(
                    run.name,
                    c,
                    Status::Timeout,
                    format!("the node's budget of {} s was spent", run.budget.as_secs()),
                ),
                data: Vec::new(),
            });
            continue;
        }
        // The host-side `timeout` cuts first; the client-side limit covers a hung channel.
        let limit = (c.timeout + Duration::from_secs(10)).min(left);
        let got = run_one(remote.as_ref(), run.name, c, limit).await;
        if got.item.status == Status::Unreachable {
            lost = Some(format!("the connection was lost during {}", got.item.id));
        }
        out.push(got);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeRemote, Reply};

    fn c(id: &str, t: u64) -> Collector {
        Collector::new(id, format!("echo {id}"), t, 8)
    }

    #[test]
    fn the_trailer_gives_exit_code_and_raw_bytes() {
        let (rc, n) = parse_trailer(
            "__bundle_rc=124\n2+1 records in\n2+1 records out\n70000 bytes (70 kB, 68 KiB) copied, 0.1 s, 1 MB/s\n",
        );
        assert_eq!((rc, n), (Some(124), Some(70000)));
    }

    #[tokio::test]
    async fn statuses_follow_the_exit_codes_and_caps_count_dropped_bytes() {
        let fake = FakeRemote::new("a")
            .on_contains(
                "echo ok",
                Reply::exit(0, "12345678", "__bundle_rc=0\n20 bytes copied\n"),
            )
            .on_contains(
                "echo slow",
                Reply::exit(0, "partial", "__bundle_rc=124\n7 bytes copied\n"),
            )
            .on_contains(
                "echo bad",
                Reply::exit(0, "", "__bundle_rc=2\n0 bytes copied\n"),
            );
        let remote: Arc<dyn Remote> = Arc::new(fake);
        let run = NodeRun {
            name: "a",
            is_server: false,
            api_up: true,
            budget: Duration::from_secs(60),
        };
        let mut etcd = c("etcd", 1);
        etcd.applies = Applies::Servers;
        let got = run_node(remote, &run, &[c("ok", 1), c("slow", 1), c("bad", 1), etcd]).await;
        let s: Vec<(Status, u64, u64)> = got
            .iter()
            .map(|g| (g.item.status, g.item.bytes_kept, g.item.bytes_dropped))
            .collect();
        assert_eq!(
            s,
            vec![
                (Status::Ok, 8, 12),
                (Status::Timeout, 7, 0),
                (Status::Failed, 0, 0),
                (Status::Skipped, 0, 0)
            ]
        );
        assert!(
            got.iter()
                .all(|g| g.item.status == Status::Ok || g.item.reason.is_some())
        );
    }

    #[tokio::test]
    async fn a_spent_budget_records_the_rest_as_timeout() {
        let fake = FakeRemote::new("a").on_contains("echo", Reply::exit(0, "x", "__bundle_rc=0\n"));
        let remote: Arc<dyn Remote> = Arc::new(fake);
        let run = NodeRun {
            name: "a",
            is_server: true,
            api_up: true,
            budget: Duration::ZERO,
        };
        let got = run_node(remote, &run, &[c("one", 1), c("two", 1)]).await;
        assert!(got.iter().all(|g| g.item.status == Status::Timeout));
        assert!(
            got[0]
                .item
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("budget")
        );
    }
}
