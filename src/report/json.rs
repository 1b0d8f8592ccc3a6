//! The JSON renderer: every event as one JSON object per line on stdout (`--output json`),
//! for scripts and CI. The objects are the [`Event`] serialization: a `"event"` tag plus
//! the event's fields. Remote command output is included only with `-vv`.

use super::events::{Event, EventSink};
use super::plain::Writer;
use std::io::Write;
use std::sync::Mutex;

/// Renders events as JSON lines.
pub struct JsonRenderer {
    out: Mutex<Writer>,
    verbosity: i8,
}

impl JsonRenderer {
    pub fn stdout(verbosity: i8) -> JsonRenderer {
        JsonRenderer::new(Box::new(std::io::stdout()), verbosity)
    }

    pub fn new(out: Writer, verbosity: i8) -> JsonRenderer {
        JsonRenderer {
            out: Mutex::new(out),
            verbosity,
        }
    }

    /// Writes one arbitrary JSON value as a line (used for the invalid-input report).
    pub fn value(&self, v: &serde_json::Value) {
        if let Ok(mut w) = self.out.lock() {
            let _ = writeln!(w, "{v}");
            let _ = w.flush();
        }
    }
}

impl EventSink for JsonRenderer {
    fn emit(&self, event: &Event) {
        if matches!(event, Event::HostOutput { .. }) && self.verbosity < 2 {
            return;
        }
        if let (Ok(json), Ok(mut w)) = (serde_json::to_string(event), self.out.lock()) {
            let _ = writeln!(w, "{json}");
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reporter;
    use std::sync::{Arc, Mutex as M};

    #[derive(Clone, Default)]
    struct Buf(Arc<M<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_object_per_line_and_each_parses() {
        let buf = Buf::default();
        let r = Reporter::new(vec![Arc::new(JsonRenderer::new(Box::new(buf.clone()), 0))]);
        r.info(Some("h1"), "hello");
        r.emit(Event::HostOutput {
            host: "h1".into(),
            stream: crate::report::StreamKind::Stdout,
            line: "hidden".into(),
        });
        r.emit(Event::PhaseStarted {
            phase: "p".into(),
            title: "P".into(),
            hosts: vec!["h1".into()],
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "message");
        assert_eq!(lines[0]["text"], "hello");
        assert_eq!(lines[1]["event"], "phase_started");
    }
}
