//! Fan-out: run one async step on many hosts at once, with a concurrency limit, and
//! collect *every* host's result.
//!
//! A failure on one host never cancels the others (an admin fixing a cluster wants the
//! whole list of what is wrong, "failed on 2 of 5 hosts: ...", not the first item of it).
//! Results come back in the order the hosts were given, whatever order they finished in.

use futures::StreamExt;
use std::fmt;
use std::future::Future;

use crate::host::Remote;

/// One host's result.
#[derive(Debug)]
pub struct HostResult<T, E> {
    pub host: String,
    pub result: Result<T, E>,
}

/// Every host's result, in input order.
#[derive(Debug)]
pub struct FanOut<T, E> {
    pub results: Vec<HostResult<T, E>>,
}

impl<T, E: fmt::Display> FanOut<T, E> {
    /// Whether every host succeeded.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|r| r.result.is_ok())
    }

    /// The hosts that failed, with their errors.
    pub fn failures(&self) -> Vec<(&str, &E)> {
        self.results
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| (r.host.as_str(), e)))
            .collect()
    }

    /// `failed on 2 of 5 hosts: a: ...; b: ...`, or `None` when all succeeded.
    pub fn summary(&self) -> Option<String> {
        let failed = self.failures();
        if failed.is_empty() {
            return None;
        }
        Some(format!(
            "failed on {} of {} host{}: {}",
            failed.len(),
            self.results.len(),
            if self.results.len() == 1 { "" } else { "s" },
            failed
                .iter()
                .map(|(h, e)| {
                    let text = e.to_string();
                    // Errors usually start with the host name already.
                    if text.starts_with(&format!("{h}:")) {
                        text
                    } else {
                        format!("{h}: {text}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }

    /// The successes, or the whole list of failures.
    pub fn into_result(self) -> Result<Vec<(String, T)>, Vec<(String, E)>> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for r in self.results {
            match r.result {
                Ok(v) => ok.push((r.host, v)),
                Err(e) => bad.push((r.host, e)),
            }
        }
        if bad.is_empty() { Ok(ok) } else { Err(bad) }
    }
}

/// Runs `step` on every host, at most `limit` at a time (a `limit` of 0 counts as 1).
pub async fn fan_out<H, T, E, F, Fut>(hosts: &[H], limit: usize, step: F) -> FanOut<T, E>
where
    H: Remote + Clone,
    F: Fn(H) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    fan_out_named(
        hosts.iter().map(|h| (h.name().to_owned(), h.clone())),
        limit,
        step,
    )
    .await
}

/// [`fan_out`] over anything named (hosts not yet connected, specs, ...).
pub async fn fan_out_named<I, X, T, E, F, Fut>(items: I, limit: usize, step: F) -> FanOut<T, E>
where
    I: IntoIterator<Item = (String, X)>,
    F: Fn(X) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let step = &step;
    let mut done: Vec<(usize, HostResult<T, E>)> =
        futures::stream::iter(items.into_iter().enumerate())
            .map(|(i, (host, x))| async move {
                let result = step(x).await;
                (i, HostResult { host, result })
            })
            .buffer_unordered(limit.max(1))
            .collect()
            .await;
    done.sort_by_key(|(i, _)| *i);
    FanOut {
        results: done.into_iter().map(|(_, r)| r).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn every_result_is_collected_in_order_within_the_limit() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let items: Vec<(String, u64)> = (0..7).map(|i| (format!("h{i}"), i)).collect();
        let out = fan_out_named(items, 3, |i| {
            let running = running.clone();
            let peak = peak.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Later hosts finish first.
                tokio::time::sleep(Duration::from_millis(40 - i * 5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if i % 3 == 1 {
                    Err(format!("boom {i}"))
                } else {
                    Ok(i * 10)
                }
            }
        })
        .await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let hosts: Vec<&str> = out.results.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["h0", "h1", "h2", "h3", "h4", "h5", "h6"]);
        assert!(!out.all_ok());
        assert_eq!(
            out.summary().unwrap(),
            "failed on 2 of 7 hosts: h1: boom 1; h4: boom 4"
        );
        let bad = out.into_result().unwrap_err();
        assert_eq!(bad.len(), 2);
    }

    #[tokio::test]
    async fn fan_out_over_remotes_uses_their_names() {
        use crate::host::fake::{FakeRemote, Reply};
        use crate::host::{RemoteCommand, RemoteExt};
        let hosts: Vec<Arc<FakeRemote>> = vec![
            Arc::new(FakeRemote::new("a").on("hostname", Reply::ok("a\n"))),
            Arc::new(FakeRemote::new("b").on("hostname", Reply::exit(1, "", "no"))),
        ];
        let out = fan_out(&hosts, 0, |h| async move {
            h.run(RemoteCommand::new("hostname"))
                .await
                .map(|o| o.stdout_str())
        })
        .await;
        assert_eq!(out.results[0].result.as_deref().ok(), Some("a\n"));
        assert_eq!(out.failures()[0].0, "b");
        assert!(
            out.summary()
                .unwrap()
                .starts_with("failed on 1 of 2 hosts: b: `hostname` failed")
        );
    }
}
