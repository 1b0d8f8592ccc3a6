//! The libraries' own diagnostics (russh through the `log` crate, kube-rs and hyper through
//! `tracing`) into the debug log, redacted like every other line: one `tracing` subscriber
//! for the process, whose only layer writes to the run's [`LogFile`]. Nothing reaches the
//! terminal this way; logic reports through events.
//!
//! The filter is `info` everywhere and `debug` for russh (but its per-packet lines),
//! kube-rs and the installer itself;
//! `INSTALLER_LOG` (an `EnvFilter` directive such as `debug` or `russh=trace`) overrides it.

use std::fmt::Write as _;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::logfile::LogFile;

/// The default filter.
/// russh's per-packet lines (`sshbuffer`, `cipher`, `client::encrypted`) stay at info: an
/// upload would write one per packet.
pub const DEFAULT_FILTER: &str = "info,russh=debug,russh::sshbuffer=info,russh::cipher=info,russh::client::encrypted=info,kube=debug,kube_client=debug,installer=debug";

/// A layer that writes each event as one line of the log file.
pub struct LogLayer {
    log: Arc<LogFile>,
}

#[derive(Default)]
struct Fields(String, Option<String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else if !field.name().starts_with("log.") {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else if field.name() == "log.target" {
            // A record bridged from the `log` crate (russh): its real target.
            self.1 = Some(value.to_owned());
        } else if !field.name().starts_with("log.") {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// The line written for one event: `trace <LEVEL> <target>: <message> <fields>`.
fn line(level: &tracing::Level, target: &str, fields: &str) -> String {
    format!("trace {level} {target}: {fields}")
}

impl<S> Layer<S> for LogLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        // The fields of the spans it happens in (kube-rs puts the request's method and URL
        // on its span), outermost first.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(sf) = span.extensions().get::<Fields>() {
                    let _ = write!(f.0, " [{}{}]", span.name(), sf.0);
                }
            }
        }
        let meta = event.metadata();
        let target = f.1.as_deref().unwrap_or(meta.target());
        self.log.line(&line(meta.level(), target, &f.0));
    }
}

/// Installs the process-wide subscriber that writes to `log` (the first call wins; later
/// ones, as in tests that run several commands in one process, are ignored).
pub fn install(log: Arc<LogFile>) {
    let filter = std::env::var("INSTALLER_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::registry()
        .with(LogLayer { log }.with_filter(filter))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_events_reach_the_log_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = Arc::new(LogFile::create(&path).unwrap());
        let layer = LogLayer { log }.with_filter(EnvFilter::new(DEFAULT_FILTER));
        let subscriber = tracing_subscriber::registry().with(layer);
        let tok = format!("K10{}::server:bbbbbbbbbbbbbbbb", "a".repeat(64));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "russh::negotiation", "strict kex enabled");
            tracing::debug!(target: "hyper::proto", "not at debug: filtered out");
            let span = tracing::debug_span!("HTTP", http.url = "/api/v1/nodes");
            let _g = span.enter();
            tracing::debug!(target: "kube_client::client", "requesting with {tok}");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("trace DEBUG russh::negotiation: strict kex enabled"),
            "{text}"
        );
        assert!(text.contains("[HTTP http.url=/api/v1/nodes]"), "{text}");
        assert!(!text.contains("filtered out"), "{text}");
        assert!(
            !text.contains("bbbbbbbbbbbbbbbb"),
            "a token reached the log: {text}"
        );
    }
}
