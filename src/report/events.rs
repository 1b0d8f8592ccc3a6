//! The events that phases and host operations emit, and the [`Reporter`] handle that
//! carries them to whatever renders them.
//!
//! Events are plain data (serializable, so the JSON renderer is a one-liner) and never
//! carry a secret: strings placed in events are passed through [`crate::secret::redact`]
//! by the reporter before any sink sees them.

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Severity of a free-form message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    /// One item of many (an object applied, a workload rolled out, a node's answer): the
    /// phase's own line sums them up, so human renderers show these only with `-v`.
    Detail,
    Info,
    Warn,
    Error,
}

/// Which stream of a remote command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// How a host came out of a phase step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOutcome {
    /// The step changed something on the host.
    Changed,
    /// The host was already in the target state; nothing was changed.
    Unchanged,
    /// The step did not apply to this host (for example an agent in a server phase).
    Skipped,
}

/// What kind of change a [`Event::PlannedChange`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    /// A command that changes the host (start a unit, create directories, ...).
    Run,
    /// A new file.
    Write,
    /// A file whose content changes.
    Update,
    /// A secret file (a token), written through stdin.
    WriteSecret,
    /// An artifact uploaded and verified.
    Upload,
    /// A temporary probe (preflight's test listeners), gone within a minute.
    Probe,
    /// An object applied to the cluster.
    Apply,
}

/// Everything a renderer can be told. `phase` is a stable id (`"preflight"`), `host` the
/// host's display name as the user wrote it in the answer file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A command (install, preflight, ...) starts: the phases it will run, in order.
    CommandStarted {
        command: String,
        phases: Vec<String>,
        hosts: Vec<String>,
    },
    PhaseStarted {
        phase: String,
        title: String,
        hosts: Vec<String>,
    },
    /// A human-readable step on one host ("write /etc/rancher/k3s/config.yaml").
    HostStep {
        phase: String,
        host: String,
        message: String,
    },
    /// A change a dry run would make on a host (or, with `host: "cluster"`, in the
    /// cluster): typed, so the plain, JSON and terminal renderers and a plan table show
    /// the same data. `summary` is the sentence (`upload k3s-amd64 to /usr/local/bin/k3s`).
    PlannedChange {
        phase: String,
        host: String,
        action: ChangeAction,
        target: String,
        summary: String,
    },
    /// Byte progress of a transfer on one host.
    HostProgress {
        phase: String,
        host: String,
        what: String,
        done: u64,
        total: u64,
    },
    /// One line of a remote command's output (debug detail; terminal renderers hide it).
    HostOutput {
        host: String,
        stream: StreamKind,
        line: String,
    },
    HostDone {
        phase: String,
        host: String,
        outcome: HostOutcome,
        detail: Option<String>,
    },
    HostFailed {
        phase: String,
        host: String,
        error: String,
        hint: Option<String>,
    },
    PhaseFinished {
        phase: String,
        #[serde(with = "duration_secs")]
        elapsed: Duration,
        ok: bool,
    },
    /// A free-form message, optionally about one host.
    Message {
        level: Level,
        host: Option<String>,
        text: String,
    },
    /// The validated plan (`install --dry-run`): data, so renderers print it on stdout.
    /// Holds no secret (a [`crate::config::plan::PlanSummary`] is plain strings).
    PlanReady {
        plan: crate::config::plan::PlanSummary,
    },
    /// Every preflight check by name with the hosts it passed, warned or failed on (sent
    /// once, when the checks have run, before the hosts' results).
    PreflightChecks {
        report: crate::report::preflight::PreflightReport,
    },
    /// The install's last screen (where the appliance is, how to log in); a generated
    /// password rides along unserialized and is shown on a terminal only.
    Handoff {
        handoff: crate::report::handoff::Handoff,
    },
    /// The result of `installer status`: data, printed on stdout.
    StatusReady {
        status: crate::report::status::StatusSummary,
    },
    /// The result of `installer support-bundle`: where the archive is, what it holds, what
    /// the analysis found (paths, counts and findings: no secret).
    BundleReady { summary: crate::bundle::Summary },
    /// `uninstall` copied a last etcd snapshot to the workstation (`path`, `bytes`, the
    /// SHA-256 the host reported and the copy matched), with the cluster token at `token`.
    SnapshotSaved {
        host: String,
        path: String,
        bytes: u64,
        sha256: String,
        token: String,
    },
    /// The command is over; `ok` says whether it succeeded.
    CommandFinished {
        command: String,
        ok: bool,
        #[serde(with = "duration_secs")]
        elapsed: Duration,
        /// Time each phase took, in order.
        phases: Vec<(String, f64)>,
    },
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
    }
}

impl Event {
    /// Returns the event with every free-text field passed through the redactor.
    fn redacted(mut self) -> Self {
        use crate::secret::redact;
        match &mut self {
            Event::HostStep { message, .. } => *message = redact(message),
            Event::PlannedChange {
                target, summary, ..
            } => {
                *target = redact(target);
                *summary = redact(summary);
            }
            Event::HostOutput { line, .. } => *line = redact(line),
            Event::HostDone {
                detail: Some(d), ..
            } => *d = redact(d),
            Event::HostFailed { error, hint, .. } => {
                *error = redact(error);
                if let Some(h) = hint {
                    *h = redact(h)
                }
            }
            Event::Message { text, .. } => *text = redact(text),
            Event::PreflightChecks { report } => report.redact(),
            _ => {}
        }
        self
    }
}

/// Something that presents events: a renderer, the log file, a test collector.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
    /// Called once when the command is over, so a renderer can clear bars and flush.
    fn finish(&self) {}
}

/// A cheap, cloneable handle that phases and host operations use to emit events.
/// It redacts every event and hands it to each sink in turn.
#[derive(Clone, Default)]
pub struct Reporter {
    sinks: Arc<Vec<Arc<dyn EventSink>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reporter({} sinks)", self.sinks.len())
    }
}

impl Reporter {
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> Self {
        Reporter {
            sinks: Arc::new(sinks),
        }
    }

    /// The same sinks plus `sink` (a command that watches its own events, as the
    /// wizard's install does for preflight findings it can offer to allow).
    pub fn with_sink(&self, sink: Arc<dyn EventSink>) -> Self {
        let mut sinks: Vec<Arc<dyn EventSink>> = self.sinks.iter().cloned().collect();
        sinks.push(sink);
        Reporter::new(sinks)
    }

    /// A reporter that drops every event (for library users and tests that do not care).
    pub fn silent() -> Self {
        Reporter::default()
    }

    pub fn emit(&self, event: Event) {
        let event = event.redacted();
        for sink in self.sinks.iter() {
            sink.emit(&event);
        }
    }

    pub fn finish(&self) {
        for sink in self.sinks.iter() {
            sink.finish();
        }
    }

    pub fn message(&self, level: Level, host: Option<&str>, text: impl Into<String>) {
        self.emit(Event::Message {
            level,
            host: host.map(str::to_owned),
            text: text.into(),
        });
    }

    pub fn warn(&self, host: Option<&str>, text: impl Into<String>) {
        self.message(Level::Warn, host, text)
    }

    pub fn info(&self, host: Option<&str>, text: impl Into<String>) {
        self.message(Level::Info, host, text)
    }

    /// One item of many ([`Level::Detail`]): shown with `-v`, always in JSON and the log.
    pub fn detail(&self, host: Option<&str>, text: impl Into<String>) {
        self.message(Level::Detail, host, text)
    }
}

/// A sink that keeps every event, for tests.
#[derive(Default)]
pub struct Collector {
    events: std::sync::Mutex<Vec<Event>>,
}

impl Collector {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for Collector {
    fn emit(&self, event: &Event) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_redacts_before_sinks_see_events() {
        let collector = Arc::new(Collector::default());
        let reporter = Reporter::new(vec![collector.clone()]);
        let _s = crate::secret::Secret::new("super-secret-join-token");
        reporter.emit(Event::HostOutput {
            host: "node1".into(),
            stream: StreamKind::Stderr,
            line: "using super-secret-join-token".into(),
        });
        let events = collector.events();
        assert_eq!(events.len(), 1);
        match &events[0] {
            Event::HostOutput { line, .. } => assert_eq!(line, "using ***"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn events_serialize_with_a_tag() {
        let ev = Event::PhaseFinished {
            phase: "upload".into(),
            elapsed: Duration::from_millis(1500),
            ok: true,
        };
        let json = serde_json::to_string(&ev).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"event":"phase_finished","phase":"upload","elapsed":1.5,"ok":true}"#
        );
    }
}
