//! The terminal renderer (`--output auto` on a terminal): indicatif bars on stderr.
//!
//! - A line per host per phase, with a spinner and the host's current step.
//! - Byte bars with rate and ETA for [`Event::HostProgress`] (uploads).
//! - When a phase ends well its host lines fold into one line with its time; a failed
//!   phase keeps every host's line (and the failed hosts' errors and hints).
//! - Messages print above the bars; the dry-run plan goes to stdout with the bars suspended.
//! - On [`Event::CommandFinished`], a summary table with each phase's time.
//!
//! Prompts must go through [`TerminalRenderer::suspend`] (see [`super::prompt`]) so they do
//! not fight the bars for the cursor.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a renderer: presenting to the terminal is its job"
)]

use super::events::{Event, EventSink, HostOutcome, Level};
use super::{plain, text};
use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Renders events as progress bars.
pub struct TerminalRenderer {
    mp: MultiProgress,
    verbosity: i8,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Width of the host column.
    host_width: usize,
    titles: HashMap<String, String>,
    headers: HashMap<String, ProgressBar>,
    bars: HashMap<(String, String), ProgressBar>,
    /// Hosts that failed in each phase (their lines stay).
    failed: HashMap<String, Vec<String>>,
    /// The last line of each finished host step, printed when its phase ends.
    finals: HashMap<(String, String), String>,
    /// Lines printed under a phase's line when it ends (preflight's checks by name).
    notes: HashMap<String, Vec<String>>,
    /// The hint of each failed host step, printed under its line when its phase ends.
    hints: HashMap<(String, String), String>,
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} {prefix} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn header_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {spinner} {prefix} {msg} [{bar:24}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Stops a host line's spinner and shows its result, without finishing the bar (finished
/// bars left in a MultiProgress upset its line accounting when lines are printed above).
fn settle(pb: &ProgressBar, msg: &str) {
    pb.disable_steady_tick();
    pb.set_style(done_style());
    pb.set_message(msg.to_owned());
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("    {prefix} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl TerminalRenderer {
    /// Bars on stderr.
    pub fn stderr(verbosity: i8) -> TerminalRenderer {
        TerminalRenderer::with_target(ProgressDrawTarget::stderr(), verbosity)
    }

    pub fn with_target(target: ProgressDrawTarget, verbosity: i8) -> TerminalRenderer {
        TerminalRenderer {
            mp: MultiProgress::with_draw_target(target),
            verbosity,
            state: Mutex::new(State::default()),
        }
    }

    /// Runs `f` with the bars cleared (for prompts and data printed to stdout).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.mp.suspend(f)
    }

    fn println(&self, line: &str) {
        if self.mp.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.mp.println(line);
        }
    }

    fn host_bar(&self, st: &mut State, phase: &str, host: &str) -> ProgressBar {
        if let Some(b) = st.bars.get(&(phase.to_owned(), host.to_owned())) {
            return b.clone();
        }
        let pb = self.mp.add(ProgressBar::new_spinner());
        pb.set_style(spinner_style());
        pb.set_prefix(format!("{:<w$}", text::sanitize(host), w = st.host_width));
        pb.enable_steady_tick(Duration::from_millis(120));
        st.bars
            .insert((phase.to_owned(), host.to_owned()), pb.clone());
        pb
    }
}

impl EventSink for TerminalRenderer {
    fn emit(&self, event: &Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match event {
            Event::CommandStarted { hosts, .. } => {
                st.host_width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
                if let Some(l) = plain::line(event, self.verbosity) {
                    self.println(&style(l).bold().for_stderr().to_string());
                }
            }
            Event::PhaseStarted {
                phase,
                title,
                hosts,
            } => {
                let title = &text::sanitize(title).into_owned();
                st.titles.insert(phase.clone(), title.clone());
                let w = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
                st.host_width = st.host_width.max(w);
                let header = self.mp.add(ProgressBar::new_spinner());
                header.set_style(header_style());
                header.set_message(style(title).bold().for_stderr().to_string());
                header.enable_steady_tick(Duration::from_millis(120));
                st.headers.insert(phase.clone(), header);
                for h in hosts {
                    let pb = self.host_bar(&mut st, phase, h);
                    pb.set_message(style("waiting").dim().for_stderr().to_string());
                }
            }
            Event::HostStep {
                phase,
                host,
                message,
            } => {
                let pb = self.host_bar(&mut st, phase, host);
                pb.set_style(spinner_style());
                pb.set_message(text::sanitize(message).into_owned());
            }
            Event::PlannedChange {
                phase,
                host,
                summary,
                ..
            } => {
                let pb = self.host_bar(&mut st, phase, host);
                pb.set_style(spinner_style());
                pb.set_message(format!("would {summary}"));
            }
            Event::HostProgress {
                phase,
                host,
                what,
                done,
                total,
            } => {
                let pb = self.host_bar(&mut st, phase, host);
                if pb.length() != Some(*total) {
                    pb.set_style(bytes_style());
                    pb.set_length(*total);
                    pb.reset_eta();
                }
                pb.set_message(text::sanitize(what).into_owned());
                pb.set_position(*done);
            }
            Event::HostOutput { .. } => {
                if let Some(l) = plain::line(event, self.verbosity) {
                    self.println(&style(l).dim().for_stderr().to_string());
                }
            }
            Event::HostDone {
                phase,
                host,
                outcome,
                detail,
            } => {
                let pb = self.host_bar(&mut st, phase, host);
                let (mark, word) = match outcome {
                    HostOutcome::Changed => (style("✓").green(), "done"),
                    HostOutcome::Unchanged => (style("✓").green(), "ok"),
                    HostOutcome::Skipped => (style("-").dim(), "skipped"),
                };
                let d = detail
                    .as_deref()
                    .map(|d| format!(": {}", text::sanitize(d)))
                    .unwrap_or_default();
                let msg = format!("{} {word}{d}", mark.for_stderr());
                settle(&pb, &msg);
                let line = format!("    {} {msg}", pb.prefix());
                st.finals.insert((phase.clone(), host.clone()), line);
            }
            Event::HostFailed {
                phase,
                host,
                error,
                hint,
            } => {
                let pb = self.host_bar(&mut st, phase, host);
                let msg = format!(
                    "{} {}",
                    style("✗").red().bold().for_stderr(),
                    text::sanitize(plain::without_host(error, host))
                );
                settle(&pb, &msg);
                let line = format!("    {} {msg}", pb.prefix());
                if let Some(h) = hint {
                    st.hints.insert(
                        (phase.clone(), host.clone()),
                        text::sanitize(h).into_owned(),
                    );
                }
                st.finals.insert((phase.clone(), host.clone()), line);
                st.failed
                    .entry(phase.clone())
                    .or_default()
                    .push(host.clone());
            }
            Event::PhaseFinished { phase, elapsed, ok } => {
                // Finished work leaves the bars and is printed as plain lines above them:
                // only running work stays in the MultiProgress.
                let title = st
                    .titles
                    .get(phase)
                    .cloned()
                    .unwrap_or_else(|| phase.clone());
                let failed = st.failed.get(phase).cloned().unwrap_or_default();
                let mut hosts: Vec<(String, ProgressBar)> = st
                    .bars
                    .iter()
                    .filter(|((p, _), _)| p == phase)
                    .map(|((_, h), b)| (h.clone(), b.clone()))
                    .collect();
                hosts.sort_by(|a, b| a.0.cmp(&b.0));
                let n = hosts.len();
                let mut lines = Vec::new();
                let mark = if *ok {
                    style("✓").green().for_stderr()
                } else {
                    style("✗").red().bold().for_stderr()
                };
                let count = if n > 0 {
                    format!(" ({n} host{})", if n == 1 { "" } else { "s" })
                } else {
                    String::new()
                };
                lines.push(format!(
                    "{mark} {title}{count} {}",
                    style(text::secs(*elapsed)).dim().for_stderr()
                ));
                lines.extend(st.notes.remove(phase).unwrap_or_default());
                let mut last_hint: Option<String> = None;
                for (host, pb) in hosts {
                    let key = (phase.clone(), host.clone());
                    let fin = st.finals.remove(&key);
                    let hint = st.hints.remove(&key);
                    if !*ok || failed.contains(&host) || self.verbosity > 0 {
                        lines.push(
                            fin.unwrap_or_else(|| format!("    {} (no result)", pb.prefix())),
                        );
                        if let Some(h) = hint {
                            // The same hint for the next host: said once (all with -v).
                            let shown = if last_hint.as_ref() == Some(&h) && self.verbosity < 1 {
                                "as above".to_string()
                            } else {
                                h.clone()
                            };
                            lines.push(format!(
                                "    {:w$} {} {shown}",
                                "",
                                style("hint:").yellow().for_stderr(),
                                w = st.host_width
                            ));
                            last_hint = Some(h);
                        }
                    }
                    pb.finish_and_clear();
                    self.mp.remove(&pb);
                    st.bars.remove(&key);
                }
                if let Some(h) = st.headers.remove(phase) {
                    h.finish_and_clear();
                    self.mp.remove(&h);
                }
                self.println(&lines.join("\n"));
            }
            Event::Message { level, .. } => {
                if let Some(l) = plain::line(event, self.verbosity) {
                    let styled = match level {
                        Level::Error => style(l).red().for_stderr().to_string(),
                        Level::Warn => style(l).yellow().for_stderr().to_string(),
                        Level::Debug | Level::Detail => style(l).dim().for_stderr().to_string(),
                        Level::Info => l,
                    };
                    self.println(&styled);
                }
            }
            Event::PreflightChecks { report } => {
                let width =
                    (console::Term::stderr().size().1 as usize).clamp(40, super::preflight::WIDTH);
                let notes: Vec<String> =
                    super::preflight::lines(report, self.verbosity, "    ", width)
                        .into_iter()
                        .map(|l| match l {
                            super::preflight::Line::Info(s) => text::sanitize(&s).into_owned(),
                            super::preflight::Line::Warn(s) => {
                                let s = text::sanitize(&s).replace('\n', "\n    ");
                                style(format!("    {s}")).yellow().for_stderr().to_string()
                            }
                        })
                        .collect();
                st.notes
                    .entry("preflight".into())
                    .or_default()
                    .extend(notes);
            }
            Event::PlanReady { plan } => {
                let t = text::sanitize(&text::plan(plan)).into_owned();
                self.mp.suspend(|| print!("{t}"));
            }
            Event::StatusReady { status } => {
                let t = text::sanitize(&text::status(status)).into_owned();
                self.mp.suspend(|| print!("{t}"));
            }
            Event::Handoff { handoff } => {
                let t = super::handoff::render(handoff, true);
                self.println(&format!("\n{}", style(t).for_stderr()));
            }
            Event::SnapshotSaved { .. } => {
                if let Some(l) = plain::line(event, self.verbosity) {
                    self.println(&l);
                }
            }
            Event::BundleReady { summary } => {
                let t = text::bundle(summary);
                self.mp.suspend(|| print!("{t}"));
            }
            Event::CommandFinished {
                command,
                ok,
                elapsed,
                phases,
            } => {
                let s = text::summary(command, *ok, *elapsed, phases);
                let mut lines: Vec<String> = s.lines().map(str::to_owned).collect();
                if let Some(last) = lines.last_mut() {
                    *last = if *ok {
                        style(last.as_str()).green().bold().for_stderr().to_string()
                    } else {
                        style(last.as_str()).red().bold().for_stderr().to_string()
                    };
                }
                self.println(&format!("\n{}", lines.join("\n")));
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            let bars: Vec<ProgressBar> = st.bars.drain().map(|(_, b)| b).collect();
            let headers: Vec<ProgressBar> = st.headers.drain().map(|(_, b)| b).collect();
            for pb in bars.into_iter().chain(headers) {
                pb.finish_and_clear();
                self.mp.remove(&pb);
            }
            let _ = self.mp.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reporter;
    use std::sync::Arc;

    /// The renderer's bookkeeping through a whole phase, drawn nowhere: bars are created per
    /// host, folded when the phase ends well, and kept for a failed host.
    #[test]
    fn bars_follow_the_phase_and_fold_when_it_ends_well() {
        let t = Arc::new(TerminalRenderer::with_target(
            ProgressDrawTarget::hidden(),
            0,
        ));
        let r = Reporter::new(vec![t.clone()]);
        let hosts = vec!["h1".to_string(), "h2".to_string()];
        r.emit(Event::CommandStarted {
            command: "install".into(),
            phases: vec!["upload".into()],
            hosts: hosts.clone(),
        });
        r.emit(Event::PhaseStarted {
            phase: "upload".into(),
            title: "Upload".into(),
            hosts: hosts.clone(),
        });
        assert_eq!(t.state.lock().unwrap().bars.len(), 2);
        r.emit(Event::HostProgress {
            phase: "upload".into(),
            host: "h1".into(),
            what: "k3s".into(),
            done: 50,
            total: 100,
        });
        {
            let st = t.state.lock().unwrap();
            let b = &st.bars[&("upload".to_string(), "h1".to_string())];
            assert_eq!((b.position(), b.length()), (50, Some(100)));
        }
        r.emit(Event::HostDone {
            phase: "upload".into(),
            host: "h1".into(),
            outcome: HostOutcome::Changed,
            detail: None,
        });
        r.emit(Event::HostFailed {
            phase: "upload".into(),
            host: "h2".into(),
            error: "disk full".into(),
            hint: None,
        });
        r.emit(Event::PhaseFinished {
            phase: "upload".into(),
            elapsed: Duration::from_secs(1),
            ok: false,
        });
        let st = t.state.lock().unwrap();
        assert!(st.bars.is_empty());
        assert!(st.headers.is_empty());
        assert_eq!(st.failed["upload"], vec!["h2".to_string()]);
    }

    /// Preflight's checks by name wait for the phase's line and are printed under it.
    #[test]
    fn preflight_checks_are_printed_under_their_phase_line() {
        let t = Arc::new(TerminalRenderer::with_target(
            ProgressDrawTarget::hidden(),
            0,
        ));
        let r = Reporter::new(vec![t.clone()]);
        let hosts = vec!["h1".to_string()];
        r.emit(Event::PhaseStarted {
            phase: "preflight".into(),
            title: "Preflight checks".into(),
            hosts: hosts.clone(),
        });
        r.emit(Event::PreflightChecks {
            report: crate::report::preflight::PreflightReport {
                hosts: hosts.clone(),
                checks: vec![crate::report::preflight::CheckResult {
                    check: "cpu".into(),
                    passed: hosts.clone(),
                    warned: vec![],
                    failed: vec![],
                }],
            },
        });
        {
            let st = t.state.lock().unwrap();
            let notes = st.notes["preflight"].join("\n");
            assert!(notes.contains("1 check passed on h1: cpu"), "{notes}");
        }
        r.emit(Event::PhaseFinished {
            phase: "preflight".into(),
            elapsed: Duration::from_secs(1),
            ok: true,
        });
        assert!(t.state.lock().unwrap().notes.is_empty());
    }
}
