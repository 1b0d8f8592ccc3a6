//! The phase runner. A phase is a stable id, a title, a set of hosts and a per-host step;
//! the runner runs the step on every host (in parallel up to a limit, or one at a time),
//! never stops at the first failure within a phase, reports every host's result as
//! events, records finished (phase, host) pairs in the journal, times each phase, and
//! stops the command after a phase in which any host failed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use crate::host::HostError;
use crate::report::{Event, HostOutcome, Reporter};

/// Something with a display name: a host in a phase.
pub trait Named {
    fn name(&self) -> &str;
}

/// A step that succeeded on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOk {
    pub outcome: HostOutcome,
    pub detail: Option<String>,
}

impl StepOk {
    pub fn changed(detail: impl Into<String>) -> Self {
        StepOk {
            outcome: HostOutcome::Changed,
            detail: Some(detail.into()),
        }
    }
    pub fn unchanged(detail: impl Into<String>) -> Self {
        StepOk {
            outcome: HostOutcome::Unchanged,
            detail: Some(detail.into()),
        }
    }
    pub fn skipped(detail: impl Into<String>) -> Self {
        StepOk {
            outcome: HostOutcome::Skipped,
            detail: Some(detail.into()),
        }
    }
}

/// A step that failed on one host: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub message: String,
    pub hint: Option<String>,
    /// The step was interrupted (Ctrl-C), not failed.
    pub interrupted: bool,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            hint: None,
            interrupted: false,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn interrupted() -> Self {
        StepError {
            message: "interrupted".into(),
            hint: None,
            interrupted: true,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<HostError> for StepError {
    fn from(e: HostError) -> Self {
        let interrupted = matches!(e, HostError::Cancelled { .. });
        StepError {
            message: e.to_string(),
            hint: e.hint(),
            interrupted,
        }
    }
}

/// A phase that failed on one or more hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseFailure {
    pub phase: String,
    pub title: String,
    /// Hosts that took part in the phase.
    pub total: usize,
    /// Every failed host with its error, in host order.
    pub failures: Vec<(String, StepError)>,
}

impl PhaseFailure {
    /// Whether the phase stopped because of Ctrl-C rather than a failure.
    pub fn interrupted(&self) -> bool {
        !self.failures.is_empty() && self.failures.iter().all(|(_, e)| e.interrupted)
    }
}

impl std::fmt::Display for PhaseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.interrupted() {
            return write!(f, "{}: interrupted", self.title);
        }
        let failed: Vec<_> = self
            .failures
            .iter()
            .filter(|(_, e)| !e.interrupted)
            .collect();
        write!(
            f,
            "{} failed on {} of {} host{}:",
            self.title,
            failed.len(),
            self.total,
            if self.total == 1 { "" } else { "s" }
        )?;
        for (host, err) in failed {
            write!(f, "\n  {host}: {}", err.message)?;
            if let Some(hint) = &err.hint {
                write!(f, "\n    hint: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PhaseFailure {}

/// Runs phases, one after another.
pub struct Runner {
    command: String,
    reporter: Reporter,
    journal: Option<Journal>,
    cancel: CancellationToken,
    started: Instant,
    timings: Vec<(String, f64)>,
}

impl Runner {
    pub fn new(
        command: impl Into<String>,
        reporter: Reporter,
        journal: Option<Journal>,
        cancel: CancellationToken,
    ) -> Self {
        Runner {
            command: command.into(),
            reporter,
            journal,
            cancel,
            started: Instant::now(),
            timings: Vec::new(),
        }
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Announces the command and its phases.
    pub fn start(&mut self, phases: &[&str], hosts: &[String]) {
        self.started = Instant::now();
        if let Some(j) = &self.journal {
            j.run_started(&self.command);
        }
        self.reporter.emit(Event::CommandStarted {
            command: self.command.clone(),
            phases: phases.iter().map(|p| p.to_string()).collect(),
            hosts: hosts.to_vec(),
        });
    }

    /// Ends the command: emits the summary with per-phase timings.
    pub fn finish(&mut self, ok: bool) {
        if let Some(j) = &self.journal {
            j.run_finished(&self.command, ok);
        }
        self.reporter.emit(Event::CommandFinished {
            command: self.command.clone(),
            ok,
            elapsed: self.started.elapsed(),
            phases: self.timings.clone(),
        });
    }

    /// Times each phase took so far.
    pub fn timings(&self) -> &[(String, f64)] {
        &self.timings
    }

    /// Runs `step` on every host, at most `limit` at a time (1 = strictly one after
    /// another, in order). Every host's result is reported; if any failed, the phase
    /// fails with all of them. Returns each host's value in host order.
    pub async fn phase<H, T, F, Fut>(
        &mut self,
        id: &str,
        title: &str,
        hosts: &[Arc<H>],
        limit: usize,
        step: F,
    ) -> Result<Vec<T>, PhaseFailure>
    where
        H: Named + Send + Sync + 'static,
        F: Fn(Arc<H>) -> Fut,
        Fut: Future<Output = Result<(StepOk, T), StepError>>,
    {
        let started = Instant::now();
        let names: Vec<String> = hosts.iter().map(|h| h.name().to_owned()).collect();
        self.reporter.emit(Event::PhaseStarted {
            phase: id.to_owned(),
            title: title.to_owned(),
            hosts: names.clone(),
        });
        let cancel = self.cancel.clone();
        let step = &step;
        type Indexed<T> = (usize, Result<(StepOk, T), StepError>);
        let results: Vec<Indexed<T>> = futures::stream::iter(hosts.iter().cloned().enumerate())
            .map(|(i, host)| {
                let cancel = cancel.clone();
                async move {
                    if cancel.is_cancelled() {
                        return (i, Err(StepError::interrupted()));
                    }
                    let r = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => Err(StepError::interrupted()),
                        r = step(host) => r,
                    };
                    (i, r)
                }
            })
            .buffer_unordered(limit.max(1))
            .collect()
            .await;
        let mut ordered: Vec<Option<Result<(StepOk, T), StepError>>> =
            (0..hosts.len()).map(|_| None).collect();
        for (i, r) in results {
            ordered[i] = Some(r);
        }
        let mut values = Vec::with_capacity(hosts.len());
        let mut failures = Vec::new();
        for (name, r) in names.iter().zip(ordered) {
            match r {
                Some(Ok((ok, value))) => {
                    if let Some(j) = &self.journal {
                        j.step_done(id, name, ok.outcome);
                    }
                    self.reporter.emit(Event::HostDone {
                        phase: id.to_owned(),
                        host: name.clone(),
                        outcome: ok.outcome,
                        detail: ok.detail,
                    });
                    values.push(value);
                }
                Some(Err(e)) => {
                    if let Some(j) = &self.journal {
                        j.step_failed(id, name, &e.message);
                    }
                    self.reporter.emit(Event::HostFailed {
                        phase: id.to_owned(),
                        host: name.clone(),
                        error: e.message.clone(),
                        hint: e.hint.clone(),
                    });
                    failures.push((name.clone(), e));
                }
                None => failures.push((name.clone(), StepError::new("the step did not run"))),
            }
        }
        let elapsed = started.elapsed();
        self.record_timing(id, elapsed);
        self.reporter.emit(Event::PhaseFinished {
            phase: id.to_owned(),
            elapsed,
            ok: failures.is_empty(),
        });
        if failures.is_empty() {
            Ok(values)
        } else {
            Err(PhaseFailure {
                phase: id.to_owned(),
                title: title.to_owned(),
                total: hosts.len(),
                failures,
            })
        }
    }

    /// Runs a step that concerns the cluster as a whole (reported under the name `cluster`).
    pub async fn cluster_step<T, Fut>(
        &mut self,
        id: &str,
        title: &str,
        step: Fut,
    ) -> Result<T, PhaseFailure>
    where
        Fut: Future<Output = Result<(StepOk, T), StepError>>,
    {
        struct Cluster;
        impl Named for Cluster {
            fn name(&self) -> &str {
                "cluster"
            }
        }
        let cell = std::sync::Mutex::new(Some(step));
        let mut out = self
            .phase(id, title, &[Arc::new(Cluster)], 1, |_| {
                let fut = cell.lock().ok().and_then(|mut c| c.take());
                async move {
                    match fut {
                        Some(f) => f.await,
                        None => Err(StepError::new("internal: cluster step polled twice")),
                    }
                }
            })
            .await?;
        out.pop().ok_or_else(|| PhaseFailure {
            phase: id.to_owned(),
            title: title.to_owned(),
            total: 1,
            failures: vec![("cluster".into(), StepError::new("no result"))],
        })
    }

    fn record_timing(&mut self, id: &str, elapsed: Duration) {
        let secs = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
        match self.timings.iter_mut().find(|(p, _)| p == id) {
            Some((_, t)) => *t += secs,
            None => self.timings.push((id.to_owned(), secs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::events::Collector;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct H(String);
    impl Named for H {
        fn name(&self) -> &str {
            &self.0
        }
    }

    fn hosts(n: usize) -> Vec<Arc<H>> {
        (1..=n).map(|i| Arc::new(H(format!("node{i}")))).collect()
    }

    fn runner() -> (Runner, Arc<Collector>) {
        let c = Arc::new(Collector::default());
        let r = Runner::new(
            "test",
            Reporter::new(vec![c.clone()]),
            None,
            CancellationToken::new(),
        );
        (r, c)
    }

    #[tokio::test]
    async fn every_host_runs_and_values_come_back_in_order() {
        let (mut r, c) = runner();
        let out = r
            .phase("p", "Phase", &hosts(4), 4, |h| async move {
                // Finish in reverse order to prove the ordering is restored.
                let n: u64 = h.0[4..].parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(40 - n * 10)).await;
                Ok((StepOk::changed("done"), h.0.clone()))
            })
            .await
            .unwrap();
        assert_eq!(out, vec!["node1", "node2", "node3", "node4"]);
        let done = c
            .events()
            .iter()
            .filter(|e| matches!(e, Event::HostDone { .. }))
            .count();
        assert_eq!(done, 4);
        assert_eq!(r.timings().len(), 1);
    }

    #[tokio::test]
    async fn a_failure_on_one_host_does_not_stop_the_others_and_all_are_reported() {
        let (mut r, _c) = runner();
        let ran = AtomicUsize::new(0);
        let err = r
            .phase("p", "Upload", &hosts(5), 2, |h| {
                ran.fetch_add(1, Ordering::SeqCst);
                async move {
                    if h.0 == "node2" || h.0 == "node5" {
                        Err(StepError::new("disk full").with_hint("free some space"))
                    } else {
                        Ok((StepOk::unchanged("ok"), ()))
                    }
                }
            })
            .await
            .unwrap_err();
        assert_eq!(ran.load(Ordering::SeqCst), 5);
        assert_eq!(err.failures.len(), 2);
        assert_eq!(
            err.to_string(),
            "Upload failed on 2 of 5 hosts:\n  node2: disk full\n    hint: free some space\n  node5: disk full\n    hint: free some space"
        );
    }

    #[tokio::test]
    async fn limit_one_runs_strictly_in_order() {
        let (mut r, _c) = runner();
        let order = std::sync::Mutex::new(Vec::new());
        let active = AtomicUsize::new(0);
        r.phase("join", "Join", &hosts(3), 1, |h| {
            let order = &order;
            let active = &active;
            async move {
                assert_eq!(active.fetch_add(1, Ordering::SeqCst), 0, "two at once");
                tokio::time::sleep(Duration::from_millis(5)).await;
                order.lock().unwrap().push(h.0.clone());
                active.fetch_sub(1, Ordering::SeqCst);
                Ok((StepOk::changed("joined"), ()))
            }
        })
        .await
        .unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["node1", "node2", "node3"]);
    }

    #[tokio::test]
    async fn cancellation_interrupts_running_steps() {
        let (mut r, _c) = runner();
        let token = r.cancel_token().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            token.cancel();
        });
        let err = r
            .phase("p", "Slow", &hosts(2), 2, |_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok((StepOk::changed("never"), ()))
            })
            .await
            .unwrap_err();
        assert!(err.interrupted());
        assert_eq!(err.to_string(), "Slow: interrupted");
    }

    #[tokio::test]
    async fn cluster_step_reports_under_cluster() {
        let (mut r, c) = runner();
        let v = r
            .cluster_step("gate", "Cluster gate", async {
                Ok((StepOk::changed("3 nodes Ready"), 3))
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
        assert!(
            c.events()
                .iter()
                .any(|e| matches!(e, Event::HostDone { host, .. } if host == "cluster"))
        );
    }
}
