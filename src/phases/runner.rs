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
use crate::hint::Hint;
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

impl<E: Hint + std::fmt::Display> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError {
            message: e.to_string(),
            hint: e.hint(),
            interrupted: e.interrupted(),
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
    clean_ups: Vec<(String, CleanUp)>,
}

/// A clean-up registered with [`Runner::on_failure`].
pub type CleanUp = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<(), StepError>> + Send>> + Send,
>;

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
            clean_ups: Vec::new(),
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

    /// Starts journaling a command that began without a journal (an upgrade journals
    /// nothing until its checks passed: a refused upgrade changed nothing and leaves no
    /// unfinished run behind). Records the run's start.
    pub fn attach_journal(&mut self, journal: Option<Journal>) {
        if let Some(j) = &journal {
            j.run_started(&self.command);
        }
        self.journal = journal;
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
        let results = self.run_phase(id, title, hosts, limit, step).await;
        let mut values = Vec::with_capacity(hosts.len());
        let mut failures = Vec::new();
        for (h, r) in hosts.iter().zip(results) {
            match r {
                Ok(v) => values.push(v),
                Err(e) => failures.push((h.name().to_owned(), e)),
            }
        }
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

    /// Like [`Runner::phase`], but a host that fails does not fail the phase: every host's
    /// result comes back, in host order (a support bundle goes on without a dead node;
    /// `status` reports the hosts it could not reach). Failures are still reported and
    /// journaled as such.
    pub async fn phase_tolerant<H, T, F, Fut>(
        &mut self,
        id: &str,
        title: &str,
        hosts: &[Arc<H>],
        limit: usize,
        step: F,
    ) -> Vec<Result<T, StepError>>
    where
        H: Named + Send + Sync + 'static,
        F: Fn(Arc<H>) -> Fut,
        Fut: Future<Output = Result<(StepOk, T), StepError>>,
    {
        self.run_phase(id, title, hosts, limit, step).await
    }

    /// Registers a clean-up that undoes a temporary change if the command fails later (an
    /// upgrade uncordons what it cordoned). Clean-ups run, newest first, in
    /// [`Runner::clean_up`]; [`Runner::forget_clean_ups`] drops them once the change was
    /// made permanent or undone by the command itself.
    pub fn on_failure(&mut self, what: impl Into<String>, undo: CleanUp) {
        self.clean_ups.push((what.into(), undo));
    }

    /// Drops every registered clean-up (the guarded section succeeded).
    pub fn forget_clean_ups(&mut self) {
        self.clean_ups.clear();
    }

    /// Runs every registered clean-up, newest first, reporting each; a failing clean-up
    /// is reported and does not stop the others. Runs even after Ctrl-C.
    pub async fn clean_up(&mut self) {
        while let Some((what, undo)) = self.clean_ups.pop() {
            match undo().await {
                Ok(()) => self.reporter.info(None, format!("undone: {what}")),
                Err(e) => self.reporter.warn(
                    None,
                    format!(
                        "could not undo {what}: {}{}",
                        e.message,
                        e.hint.map(|h| format!(" (hint: {h})")).unwrap_or_default()
                    ),
                ),
            }
        }
    }

    async fn run_phase<H, T, F, Fut>(
        &mut self,
        id: &str,
        title: &str,
        hosts: &[Arc<H>],
        limit: usize,
        step: F,
    ) -> Vec<Result<T, StepError>>
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
        let mut out = Vec::with_capacity(hosts.len());
        let mut ok = true;
        for (name, r) in names.iter().zip(ordered) {
            match r.unwrap_or_else(|| Err(StepError::new("the step did not run"))) {
                Ok((done, value)) => {
                    if let Some(j) = &self.journal {
                        j.step_done(id, name, done.outcome);
                    }
                    self.reporter.emit(Event::HostDone {
                        phase: id.to_owned(),
                        host: name.clone(),
                        outcome: done.outcome,
                        detail: done.detail,
                    });
                    out.push(Ok(value));
                }
                Err(e) => {
                    ok = false;
                    if let Some(j) = &self.journal {
                        j.step_failed(id, name, &e.message);
                    }
                    self.reporter.emit(Event::HostFailed {
                        phase: id.to_owned(),
                        host: name.clone(),
                        error: e.message.clone(),
                        hint: e.hint.clone(),
                    });
                    out.push(Err(e));
                }
            }
        }
        let elapsed = started.elapsed();
        self.record_timing(id, elapsed);
        self.reporter.emit(Event::PhaseFinished {
            phase: id.to_owned(),
            elapsed,
            ok,
        });
        out
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
    async fn a_tolerant_phase_returns_every_host_and_goes_on() {
        let (mut r, c) = runner();
        let out = r
            .phase_tolerant("collect", "Collect", &hosts(3), 3, |h| async move {
                if h.0 == "node2" {
                    Err(StepError::new("unreachable"))
                } else {
                    Ok((StepOk::changed("collected"), h.0.clone()))
                }
            })
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_deref().ok(), Some("node1"));
        assert_eq!(
            out[1].as_ref().err().map(|e| e.message.as_str()),
            Some("unreachable")
        );
        assert_eq!(out[2].as_deref().ok(), Some("node3"));
        assert!(c.events().iter().any(
            |e| matches!(e, Event::PhaseFinished { ok: false, phase, .. } if phase == "collect")
        ));
    }

    #[tokio::test]
    async fn clean_ups_run_newest_first_and_a_failing_one_does_not_stop_the_rest() {
        let (mut r, c) = runner();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        for (name, fails) in [("uncordon node1", false), ("uncordon node2", true)] {
            let order = order.clone();
            r.on_failure(
                name,
                Box::new(move || {
                    Box::pin(async move {
                        order.lock().unwrap().push(name);
                        if fails {
                            Err(StepError::new("API down"))
                        } else {
                            Ok(())
                        }
                    })
                }),
            );
        }
        r.clean_up().await;
        assert_eq!(
            *order.lock().unwrap(),
            vec!["uncordon node2", "uncordon node1"]
        );
        let texts: Vec<String> = c
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::Message { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("could not undo uncordon node2: API down"))
        );
        assert!(texts.iter().any(|t| t == "undone: uncordon node1"));
        // Nothing runs twice; forgotten clean-ups never run.
        r.on_failure(
            "never",
            Box::new(|| Box::pin(async { Err(StepError::new("ran")) })),
        );
        r.forget_clean_ups();
        r.clean_up().await;
        assert!(
            !c.events()
                .iter()
                .any(|e| matches!(e, Event::Message { text, .. } if text.contains("ran")))
        );
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
