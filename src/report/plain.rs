//! The plain renderer: one line per event on stderr, no colour, no cursor movement, so the
//! output reads the same in a CI log, a pipe or a file. Data (the dry-run plan) goes to
//! stdout. Byte progress is thinned to one line per quarter of each transfer.

use super::events::{Event, EventSink, HostOutcome, Level, StreamKind};
use super::text;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

/// Where a renderer writes: progress (stderr) and data (stdout).
pub type Writer = Box<dyn Write + Send>;

/// Renders events as plain lines.
pub struct PlainRenderer {
    err: Mutex<Writer>,
    out: Mutex<Writer>,
    verbosity: i8,
    /// Last quarter reported per (phase, host, what).
    quarters: Mutex<HashMap<(String, String, String), u64>>,
    /// The last failed host's (phase, hint): the same hint for the next host is said once.
    last_hint: Mutex<Option<(String, String)>>,
}

impl PlainRenderer {
    /// A renderer on the process's stderr and stdout.
    pub fn stdio(verbosity: i8) -> PlainRenderer {
        PlainRenderer::new(
            Box::new(std::io::stderr()),
            Box::new(std::io::stdout()),
            verbosity,
        )
    }

    /// A renderer on the given writers (tests).
    pub fn new(err: Writer, out: Writer, verbosity: i8) -> PlainRenderer {
        PlainRenderer {
            err: Mutex::new(err),
            out: Mutex::new(out),
            verbosity,
            quarters: Mutex::new(HashMap::new()),
            last_hint: Mutex::new(None),
        }
    }

    fn err(&self, line: &str) {
        if let Ok(mut w) = self.err.lock() {
            let _ = writeln!(w, "{}", text::sanitize(line));
            let _ = w.flush();
        }
    }

    fn out(&self, text: &str) {
        if let Ok(mut w) = self.out.lock() {
            let _ = write!(w, "{}", text::sanitize(text));
            let _ = w.flush();
        }
    }
}

/// Transfers smaller than this show no progress lines without `-v`.
const SMALL_TRANSFER: u64 = 1024 * 1024;

/// `error` without a leading `host: ` (a host's error often names its host, which the line
/// already names).
pub fn without_host<'a>(error: &'a str, host: &str) -> &'a str {
    error
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(error)
}

/// The one line an event becomes (`None`: not shown at this verbosity), control characters
/// escaped ([`text::sanitize`]). Shared with the terminal renderer for messages printed above
/// its bars.
pub fn line(event: &Event, verbosity: i8) -> Option<String> {
    raw_line(event, verbosity).map(|l| text::sanitize(&l).into_owned())
}

fn raw_line(event: &Event, verbosity: i8) -> Option<String> {
    Some(match event {
        Event::CommandStarted {
            command,
            phases,
            hosts,
        } => {
            if verbosity < 0 {
                return None;
            }
            format!(
                "{command}: {} phase{} on {} host{} ({})",
                phases.len(),
                if phases.len() == 1 { "" } else { "s" },
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" },
                hosts.join(", ")
            )
        }
        Event::PhaseStarted {
            phase,
            title,
            hosts,
        } => {
            if verbosity < 0 {
                return None;
            }
            format!(
                "{phase}: {title} ({} host{})",
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" }
            )
        }
        Event::HostStep {
            phase,
            host,
            message,
        } => {
            // Each file written, each unit started: the host's result line sums them up.
            if verbosity < 1 {
                return None;
            }
            format!("{phase} {host}: {message}")
        }
        Event::PlannedChange {
            phase,
            host,
            summary,
            ..
        } => {
            if verbosity < 0 {
                return None;
            }
            format!("{phase} {host}: would {summary}")
        }
        Event::HostProgress {
            phase,
            host,
            what,
            done,
            total,
        } => format!(
            "{phase} {host}: {what} {}% ({} of {})",
            if *total == 0 {
                100
            } else {
                done.saturating_mul(100) / total
            },
            text::bytes(*done),
            text::bytes(*total)
        ),
        Event::HostOutput { host, stream, line } => {
            if verbosity < 2 {
                return None;
            }
            let s = match stream {
                StreamKind::Stdout => "out",
                StreamKind::Stderr => "err",
            };
            format!("{host} {s}| {line}")
        }
        Event::HostDone {
            phase,
            host,
            outcome,
            detail,
        } => {
            if verbosity < 0 {
                return None;
            }
            let o = match outcome {
                HostOutcome::Changed => "done",
                HostOutcome::Unchanged => "ok",
                HostOutcome::Skipped => "skipped",
            };
            match detail {
                Some(d) => format!("{phase} {host}: {o}: {d}"),
                None => format!("{phase} {host}: {o}"),
            }
        }
        Event::HostFailed {
            phase,
            host,
            error,
            hint,
        } => {
            let error = without_host(error, host);
            match hint {
                Some(h) => format!("{phase} {host}: FAILED: {error}\n  hint: {h}"),
                None => format!("{phase} {host}: FAILED: {error}"),
            }
        }
        Event::PhaseFinished { phase, elapsed, ok } => {
            if verbosity < 0 && *ok {
                return None;
            }
            format!(
                "{phase}: {} in {}",
                if *ok { "done" } else { "FAILED" },
                text::secs(*elapsed)
            )
        }
        Event::Message { level, host, text } => {
            let min = match level {
                Level::Debug | Level::Detail => 1,
                Level::Info => 0,
                Level::Warn | Level::Error => i8::MIN,
            };
            if verbosity < min {
                return None;
            }
            let prefix = match level {
                Level::Debug => "debug: ",
                Level::Detail | Level::Info => "",
                Level::Warn => "warning: ",
                Level::Error => "error: ",
            };
            match host {
                Some(h) => format!("{prefix}{h}: {text}"),
                None => format!("{prefix}{text}"),
            }
        }
        Event::PlanReady { .. } | Event::StatusReady { .. } | Event::BundleReady { .. } => {
            return None;
        }
        Event::PreflightChecks { report } => {
            let lines =
                super::preflight::lines(report, verbosity, "preflight: ", super::preflight::WIDTH);
            if lines.is_empty() {
                return None;
            }
            lines
                .into_iter()
                .map(|l| match l {
                    super::preflight::Line::Info(s) | super::preflight::Line::Warn(s) => s,
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Event::CommandFinished {
            command,
            ok,
            elapsed,
            phases,
        } => text::summary(command, *ok, *elapsed, phases)
            .trim_end()
            .to_owned(),
        Event::Handoff { handoff } => format!("\n{}", super::handoff::render(handoff, false)),
        Event::SnapshotSaved {
            host,
            path,
            bytes,
            token,
            ..
        } => format!(
            "snapshot {host}: etcd snapshot saved to {path} ({}), the cluster token beside it ({token})",
            text::bytes(*bytes)
        ),
    })
}

impl EventSink for PlainRenderer {
    fn emit(&self, event: &Event) {
        match event {
            Event::PlanReady { plan } => self.out(&text::plan(plan)),
            Event::StatusReady { status } => self.out(&text::status(status)),
            // A generated password is shown where a person watches the output, never
            // when it goes to a file or a pipe.
            Event::Handoff { handoff } => self.err(&format!(
                "\n{}",
                super::handoff::render(handoff, console::Term::stderr().is_term())
            )),
            Event::BundleReady { summary } => self.out(&text::bundle(summary)),
            Event::HostProgress {
                phase,
                host,
                what,
                done,
                total,
            } => {
                let q = if *total == 0 {
                    4
                } else {
                    done.saturating_mul(4) / total
                };
                let key = (phase.clone(), host.clone(), what.clone());
                let show = match self.quarters.lock() {
                    Ok(mut m) => {
                        let prev = m.insert(key, q);
                        prev != Some(q) && (q > 0 || prev.is_none())
                    }
                    Err(_) => true,
                };
                // A small file's progress says nothing its result line does not.
                let small = *total < SMALL_TRANSFER && self.verbosity < 1;
                if show
                    && !small
                    && self.verbosity >= 0
                    && let Some(l) = line(event, self.verbosity)
                {
                    self.err(&l);
                }
            }
            Event::HostFailed {
                phase,
                host,
                error,
                hint: Some(h),
            } if self.verbosity < 1 => {
                let repeated = match self.last_hint.lock() {
                    Ok(mut last) => {
                        let now = (phase.clone(), h.clone());
                        let same = last.as_ref() == Some(&now);
                        *last = Some(now);
                        same
                    }
                    Err(_) => false,
                };
                let shown = Event::HostFailed {
                    phase: phase.clone(),
                    host: host.clone(),
                    error: error.clone(),
                    hint: Some(if repeated {
                        "as above".into()
                    } else {
                        h.clone()
                    }),
                };
                if let Some(l) = line(&shown, self.verbosity) {
                    self.err(&l);
                }
            }
            _ => {
                if let Some(l) = line(event, self.verbosity) {
                    self.err(&l);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reporter;
    use std::sync::Arc;
    use std::time::Duration;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    pub struct Buf(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn run(verbosity: i8) -> (String, String) {
        let err = Buf::default();
        let out = Buf::default();
        let r = Reporter::new(vec![Arc::new(PlainRenderer::new(
            Box::new(err.clone()),
            Box::new(out.clone()),
            verbosity,
        ))]);
        r.emit(Event::CommandStarted {
            command: "install".into(),
            phases: vec!["upload".into()],
            hosts: vec!["h1".into(), "h2".into()],
        });
        r.emit(Event::PhaseStarted {
            phase: "upload".into(),
            title: "Upload artifacts".into(),
            hosts: vec!["h1".into(), "h2".into()],
        });
        for done in [0u64, 10, 30, 50, 60, 100] {
            r.emit(Event::HostProgress {
                phase: "upload".into(),
                host: "h1".into(),
                what: "k3s".into(),
                done: done * 1024 * 1024,
                total: 100 * 1024 * 1024,
            });
        }
        r.emit(Event::HostOutput {
            host: "h1".into(),
            stream: StreamKind::Stderr,
            line: "verbose only".into(),
        });
        r.emit(Event::HostDone {
            phase: "upload".into(),
            host: "h1".into(),
            outcome: HostOutcome::Changed,
            detail: Some("k3s 100.0 MiB".into()),
        });
        r.emit(Event::HostFailed {
            phase: "upload".into(),
            host: "h2".into(),
            error: "disk full".into(),
            hint: Some("free 2 GiB in /var/lib".into()),
        });
        r.emit(Event::PhaseFinished {
            phase: "upload".into(),
            elapsed: Duration::from_millis(3400),
            ok: false,
        });
        r.warn(None, "something to know");
        r.emit(Event::CommandFinished {
            command: "install".into(),
            ok: false,
            elapsed: Duration::from_millis(3500),
            phases: vec![("upload".into(), 3.4)],
        });
        r.finish();
        (err.text(), out.text())
    }

    #[test]
    fn one_line_per_event_without_colour_or_cursor_movement() {
        let (err, out) = run(0);
        assert!(out.is_empty());
        assert!(!err.contains('\u{1b}'), "no escape sequences");
        insta::assert_snapshot!(err);
    }

    #[test]
    fn quiet_keeps_failures_warnings_and_the_result() {
        let (err, _) = run(-1);
        insta::assert_snapshot!(err);
    }

    /// A successful install's kind of events: steps, objects, small and large uploads,
    /// preflight's checks; at the default verbosity only what sums them up.
    fn quiet_success(verbosity: i8) -> String {
        let err = Buf::default();
        let r = Reporter::new(vec![Arc::new(PlainRenderer::new(
            Box::new(err.clone()),
            Box::new(Buf::default()),
            verbosity,
        ))]);
        let hosts: Vec<String> = vec!["h1".into(), "h2".into()];
        r.emit(Event::PhaseStarted {
            phase: "preflight".into(),
            title: "Preflight checks".into(),
            hosts: hosts.clone(),
        });
        let finding = |host: &str| crate::report::preflight::CheckFinding {
            host: host.into(),
            found: "/sys/fs/cgroup is tmpfs".into(),
            needed: "cgroup2fs".into(),
            hint: "allowed by the answer file".into(),
        };
        r.emit(Event::PreflightChecks {
            report: crate::report::preflight::PreflightReport {
                hosts: hosts.clone(),
                checks: vec![
                    crate::report::preflight::CheckResult {
                        check: "cpu".into(),
                        passed: hosts.clone(),
                        warned: vec![],
                        failed: vec![],
                    },
                    crate::report::preflight::CheckResult {
                        check: "cgroup-v2".into(),
                        passed: vec![],
                        warned: vec![finding("h1"), finding("h2")],
                        failed: vec![],
                    },
                ],
            },
        });
        for h in &hosts {
            r.emit(Event::HostDone {
                phase: "preflight".into(),
                host: h.clone(),
                outcome: HostOutcome::Unchanged,
                detail: Some("1 checks passed, 1 warned".into()),
            });
        }
        r.emit(Event::HostStep {
            phase: "bootstrap".into(),
            host: "h1".into(),
            message: "write /etc/rancher/k3s/config.yaml".into(),
        });
        for (what, total) in [("k3s", 64 * 1024 * 1024), ("app-api.tar.zst", 748)] {
            for done in [0, total] {
                r.emit(Event::HostProgress {
                    phase: "upload".into(),
                    host: "h1".into(),
                    what: what.into(),
                    done,
                    total,
                });
            }
        }
        r.detail(None, "Deployment appliance/api: created");
        r.detail(None, "Deployment appliance/api is rolled out: 2 of 2 ready");
        r.emit(Event::HostDone {
            phase: "app".into(),
            host: "cluster".into(),
            outcome: HostOutcome::Changed,
            detail: Some("1 created, 0 updated, 0 unchanged; every workload rolled out".into()),
        });
        r.emit(Event::HostFailed {
            phase: "connect".into(),
            host: "h2".into(),
            error: "h2: cannot connect to h2:22: Connection refused".into(),
            hint: None,
        });
        err.text()
    }

    #[test]
    fn success_is_quiet_without_v_and_each_item_shows_with_it() {
        let quiet = quiet_success(0);
        insta::assert_snapshot!(quiet);
        for hidden in [
            "write /etc/rancher",
            "appliance/api: created",
            "is rolled out",
            "app-api.tar.zst",
        ] {
            assert!(!quiet.contains(hidden), "{hidden}:\n{quiet}");
        }
        assert_eq!(quiet.matches("warning: cgroup-v2").count(), 1, "{quiet}");
        assert!(
            quiet.contains("connect h2: FAILED: cannot connect to h2:22"),
            "{quiet}"
        );
        let verbose = quiet_success(1);
        for shown in [
            "write /etc/rancher",
            "appliance/api: created",
            "is rolled out",
            "app-api.tar.zst 100%",
        ] {
            assert!(verbose.contains(shown), "{shown}:\n{verbose}");
        }
        assert_eq!(
            verbose.matches("warning: cgroup-v2 on h").count(),
            2,
            "{verbose}"
        );
    }

    #[test]
    fn the_same_hint_for_several_hosts_is_said_once() {
        let text = |verbosity: i8| {
            let err = Buf::default();
            let r = Reporter::new(vec![Arc::new(PlainRenderer::new(
                Box::new(err.clone()),
                Box::new(Buf::default()),
                verbosity,
            ))]);
            for (host, hint) in [
                ("h1", "check the host"),
                ("h2", "check the host"),
                ("h3", "other"),
            ] {
                r.emit(Event::HostFailed {
                    phase: "connect".into(),
                    host: host.into(),
                    error: format!("{host}: cannot connect"),
                    hint: Some(hint.into()),
                });
            }
            err.text()
        };
        insta::assert_snapshot!(text(0));
        assert_eq!(text(1).matches("hint: check the host").count(), 2);
    }

    #[test]
    fn very_verbose_shows_remote_output() {
        let (err, _) = run(2);
        assert!(err.contains("h1 err| verbose only"));
    }

    #[test]
    fn escape_sequences_in_host_strings_reach_the_terminal_escaped() {
        let err = Buf::default();
        let out = Buf::default();
        let r = Reporter::new(vec![Arc::new(PlainRenderer::new(
            Box::new(err.clone()),
            Box::new(out.clone()),
            0,
        ))]);
        r.emit(Event::HostFailed {
            phase: "preflight".into(),
            host: "h1".into(),
            error: "port 6443 held by \u{1b}]0;owned\u{7}\u{1b}[2J".into(),
            hint: Some("stop \u{1b}[2J".into()),
        });
        r.warn(Some("h1"), "process \u{1b}[31mred");
        r.finish();
        let text = err.text();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}]0;owned"), "{text}");
    }
}
