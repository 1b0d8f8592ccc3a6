//! Reporting: phases and host operations emit [`Event`]s through a [`Reporter`]; renderers
//! decide how they look (terminal with progress bars, plain lines, JSON lines), and every
//! event also goes, redacted, to the debug log file. Logic never prints.
//!
//! [`Output`] puts the pieces together for one run from the global flags: the renderer for
//! `--output`, colour (off with `NO_COLOR` or without a terminal), verbosity (`-v`/`-q`),
//! the log file, and [`Prompts`] that know which bars to suspend.

pub mod events;
pub mod handoff;
pub mod json;
pub mod logfile;
pub mod plain;
pub mod preflight;
pub mod prompt;
pub mod status;
pub mod terminal;
pub mod text;
pub mod trace;

pub use events::{
    ChangeAction, Collector, Event, EventSink, HostOutcome, Level, Reporter, StreamKind,
};
pub use logfile::LogFile;
pub use prompt::Prompts;

use crate::cli::OutputFormat;
use crate::error::Error;
use std::io::IsTerminal;
use std::sync::Arc;

/// Which renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Terminal,
    Plain,
    Json,
}

/// How output looks, resolved from the flags and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    pub mode: Mode,
    pub color: bool,
    /// -1 quiet, 0 normal, 1 `-v`, 2 `-vv`.
    pub verbosity: i8,
}

impl OutputSettings {
    /// `--output auto` means bars when stderr is a terminal (and `TERM` is not `dumb`),
    /// plain lines otherwise. Colour needs a terminal and no `NO_COLOR` (https://no-color.org).
    pub fn resolve(format: OutputFormat, verbose: u8, quiet: bool) -> OutputSettings {
        let tty =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let mode = match format {
            OutputFormat::Auto if tty => Mode::Terminal,
            OutputFormat::Auto | OutputFormat::Plain => Mode::Plain,
            OutputFormat::Json => Mode::Json,
        };
        OutputSettings {
            mode,
            color: tty && !no_color && mode == Mode::Terminal,
            verbosity: if quiet { -1 } else { verbose.min(2) as i8 },
        }
    }
}

/// The output of one run: the reporter and what sits behind it.
pub struct Output {
    pub settings: OutputSettings,
    pub reporter: Reporter,
    pub log: Option<Arc<LogFile>>,
    terminal: Option<Arc<TerminalRenderer>>,
    json: Option<Arc<json::JsonRenderer>>,
    shown: Arc<Shown>,
}

/// The hosts' failures the renderer has shown (`(phase, host)`), so the final error does
/// not print them again.
#[derive(Default)]
struct Shown(std::sync::Mutex<std::collections::HashSet<(String, String)>>);

impl EventSink for Shown {
    fn emit(&self, event: &Event) {
        if let Event::HostFailed { phase, host, .. } = event
            && let Ok(mut s) = self.0.lock()
        {
            s.insert((phase.clone(), host.clone()));
        }
    }
}

impl Shown {
    fn all(&self, phase: &str, hosts: &[&str]) -> bool {
        self.0.lock().is_ok_and(|s| {
            hosts
                .iter()
                .all(|h| s.contains(&(phase.to_owned(), (*h).to_owned())))
        })
    }
}

use terminal::TerminalRenderer;

impl Output {
    /// Sets up colour, the renderer and the log file sink.
    pub fn new(settings: OutputSettings, log: Option<Arc<LogFile>>) -> Output {
        console::set_colors_enabled(settings.color);
        console::set_colors_enabled_stderr(settings.color);
        let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
        let mut terminal = None;
        let mut json = None;
        match settings.mode {
            Mode::Terminal => {
                let t = Arc::new(TerminalRenderer::stderr(settings.verbosity));
                terminal = Some(t.clone());
                sinks.push(t);
            }
            Mode::Plain => sinks.push(Arc::new(plain::PlainRenderer::stdio(settings.verbosity))),
            Mode::Json => {
                let j = Arc::new(json::JsonRenderer::stdout(settings.verbosity));
                json = Some(j.clone());
                sinks.push(j);
            }
        }
        if let Some(l) = &log {
            sinks.push(l.clone());
        }
        let shown = Arc::new(Shown::default());
        sinks.push(shown.clone());
        Output {
            settings,
            reporter: Reporter::new(sinks),
            log,
            terminal,
            json,
            shown,
        }
    }

    /// Prompts that suspend this output's bars.
    pub fn prompts(&self) -> Prompts {
        Prompts::new(self.terminal.clone())
    }

    /// Writes a line to the log file only.
    pub fn log(&self, text: &str) {
        if let Some(l) = &self.log {
            l.line(text);
        }
    }

    /// Shows the error that ends the run (once): the invalid-input report, or the message
    /// with its cause chain and a `hint:`. With `--output json`, a JSON object on stdout.
    pub fn error(&self, err: &Error) {
        self.reporter.finish();
        let text = render_error(err);
        self.log(&format!("error (exit {}): {text}", err.exit_code()));
        if let Some(j) = &self.json {
            let v = match err {
                Error::Invalid(d) => serde_json::json!({
                    "event": "invalid_input",
                    "exit_code": err.exit_code(),
                    "problems": d.to_json(),
                }),
                other => serde_json::json!({
                    "event": "error",
                    "exit_code": other.exit_code(),
                    "message": crate::secret::redact(&other.to_string()),
                    "hint": other.hint(),
                }),
            };
            j.value(&v);
            return;
        }
        // A phase's failures are on screen already, each with its host and hint: the
        // final error says which phase stopped the run and what to do, not all of it again.
        // (The log has the full text above.)
        let text = match phase_failure(err) {
            Some(p) if self.shown.all(&p.phase, &failed_hosts(p)) => {
                crate::secret::redact(&short_error(p, err.hint().as_deref()))
            }
            _ => text,
        };
        let colored = if self.settings.color {
            let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
            let first = match err {
                Error::Invalid(_) => first.to_string(),
                _ => console::style(first).red().bold().for_stderr().to_string(),
            };
            if rest.is_empty() {
                first
            } else {
                format!("{first}\n{rest}")
            }
        } else {
            text
        };
        #[allow(clippy::print_stderr, reason = "the one place an error is shown")]
        {
            eprintln!("{colored}");
        }
    }

    /// Ends the output (clears bars).
    pub fn finish(&self) {
        self.reporter.finish();
    }
}

/// The failed phase behind `err`, if a phase stopped the run.
fn phase_failure(err: &Error) -> Option<&crate::phases::PhaseFailure> {
    let Error::Failed { source, .. } = err else {
        return None;
    };
    source.chain().find_map(|e| {
        e.downcast_ref::<crate::phases::PhaseFailure>().or_else(|| {
            match e.downcast_ref::<crate::phases::PipelineError>() {
                Some(crate::phases::PipelineError::Phase(p)) => Some(p),
                _ => None,
            }
        })
    })
}

/// The hosts that failed (not those only interrupted).
fn failed_hosts(p: &crate::phases::PhaseFailure) -> Vec<&str> {
    p.failures
        .iter()
        .filter(|(_, e)| !e.interrupted)
        .map(|(h, _)| h.as_str())
        .collect()
}

/// The final error of a phase whose failures were shown: the phase, how many hosts, which
/// ones, and the hint.
fn short_error(p: &crate::phases::PhaseFailure, hint: Option<&str>) -> String {
    let hosts = failed_hosts(p);
    let mut s = format!(
        "error: {} failed on {} of {} host{} ({}; each error is shown above)",
        p.title,
        hosts.len(),
        p.total,
        if p.total == 1 { "" } else { "s" },
        hosts.join(", ")
    );
    if let Some(h) = hint {
        s.push_str(&format!("\n  hint: {h}"));
    }
    s
}

/// The text of a final error: `error: message` (with its causes) and `hint: ...`, or the
/// full invalid-input report. Secrets redacted.
pub fn render_error(err: &Error) -> String {
    let text = match err {
        Error::Invalid(d) => d.to_string(),
        other => {
            let mut s = format!("error: {other}");
            if let Some(h) = other.hint() {
                s.push_str(&format!("\n  hint: {h}"));
            }
            s
        }
    };
    crate::secret::redact(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::{PhaseFailure, PipelineError, StepError};

    fn failed() -> Error {
        let p = PhaseFailure {
            phase: "connect".into(),
            title: "Connect and gather facts".into(),
            total: 3,
            failures: vec![
                (
                    "h1".into(),
                    StepError::new("h1: cannot connect").with_hint("check the host"),
                ),
                (
                    "h3".into(),
                    StepError::new("h3: cannot connect").with_hint("check the host"),
                ),
            ],
        };
        Error::failed(
            anyhow::Error::new(PipelineError::Phase(p)),
            Some("fix what is reported above and rerun the same command".to_string()),
        )
    }

    #[test]
    fn a_failure_shown_by_its_host_is_not_repeated_by_the_final_error() {
        let err = failed();
        let full = render_error(&err);
        assert_eq!(full.matches("h1: cannot connect").count(), 1, "{full}");
        let p = phase_failure(&err).unwrap();
        let shown = Shown::default();
        shown.emit(&Event::HostFailed {
            phase: "connect".into(),
            host: "h1".into(),
            error: "h1: cannot connect".into(),
            hint: None,
        });
        // One host's error not shown yet: the full text.
        assert!(!shown.all(&p.phase, &failed_hosts(p)));
        shown.emit(&Event::HostFailed {
            phase: "connect".into(),
            host: "h3".into(),
            error: "h3: cannot connect".into(),
            hint: None,
        });
        assert!(shown.all(&p.phase, &failed_hosts(p)));
        let short = short_error(p, err.hint().as_deref());
        insta::assert_snapshot!(short);
        assert!(!short.contains("cannot connect"), "{short}");
    }
}
