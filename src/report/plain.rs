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
            if verbosity < 0 {
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
        } => match hint {
            Some(h) => format!("{phase} {host}: FAILED: {error}\n  hint: {h}"),
            None => format!("{phase} {host}: FAILED: {error}"),
        },
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
                Level::Debug => 1,
                Level::Info => 0,
                Level::Warn | Level::Error => i8::MIN,
            };
            if verbosity < min {
                return None;
            }
            let prefix = match level {
                Level::Debug => "debug: ",
                Level::Info => "",
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
        Event::CommandFinished {
            command,
            ok,
            elapsed,
            phases,
        } => text::summary(command, *ok, *elapsed, phases)
            .trim_end()
            .to_owned(),
        Event::Handoff { handoff } => format!("\n{}", super::handoff::render(handoff, false)),
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
                if show
                    && self.verbosity >= 0
                    && let Some(l) = line(event, self.verbosity)
                {
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
