//! Log lines in the shape k3s writes them, so journal-reading code in the installer sees the
//! same text it would see from k3s.
//!
//! k3s logs through logrus with its text formatter; under systemd (no TTY) every line looks like
//! `time="2026-01-02T03:04:05.123456789Z" level=info msg="Starting k3s v1.36.2+k3s1 (…)"`
//! (see the journal excerpts quoted in k3s issues #4579 and #6565). `fatal` exits with status 1,
//! as `logrus.Fatal` does.

use std::io::Write;

/// Log levels, named as logrus names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turn debug lines on (`--debug`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Quote a message as logrus's text formatter does (Go `%q`-like escaping).
pub fn quote(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 2);
    out.push('"');
    for c in msg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Format one line (without the newline).
pub fn format_line(level: Level, msg: &str) -> String {
    let now = jiff::Timestamp::now();
    format!("time=\"{}\" level={} msg={}", now, level.name(), quote(msg))
}

/// Write one line to stderr.
pub fn log(level: Level, msg: &str) {
    if level == Level::Debug && !DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let line = format_line(level, msg);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// `logrus.Info`.
pub fn info(msg: impl AsRef<str>) {
    log(Level::Info, msg.as_ref());
}
/// `logrus.Warn`.
pub fn warn(msg: impl AsRef<str>) {
    log(Level::Warn, msg.as_ref());
}
/// `logrus.Error`.
pub fn error(msg: impl AsRef<str>) {
    log(Level::Error, msg.as_ref());
}
/// `logrus.Debug`.
pub fn debug(msg: impl AsRef<str>) {
    log(Level::Debug, msg.as_ref());
}
/// `logrus.Fatal`: log and exit 1.
pub fn fatal(msg: impl AsRef<str>) -> ! {
    log(Level::Fatal, msg.as_ref());
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_look_like_logrus_text() {
        let l = format_line(
            Level::Warn,
            "Unknown flag --x found in config.yaml, skipping\n",
        );
        assert!(l.starts_with("time=\""), "{l}");
        assert!(
            l.ends_with("level=warning msg=\"Unknown flag --x found in config.yaml, skipping\\n\""),
            "{l}"
        );
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quote("a \"b\""), "\"a \\\"b\\\"\"");
    }
}
