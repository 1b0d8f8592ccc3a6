//! The debug log file: every event and every error of a run, one timestamped line each,
//! every line passed through [`crate::secret::redact`]. Always written (beside the answer
//! file, else in the working directory) so that a failed run can be diagnosed afterwards and
//! collected by a support bundle. The previous run's log is kept as `<name>.1`.

use super::events::{Event, EventSink};
use crate::secret::redact;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The log file's name when none is given.
pub const DEFAULT_NAME: &str = "installer.log";

/// Where the log goes by default: beside the answer file, else in the working directory.
pub fn default_path(answer_file: Option<&Path>) -> PathBuf {
    match answer_file.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DEFAULT_NAME),
        _ => PathBuf::from(DEFAULT_NAME),
    }
}

/// An open log file.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogFile({})", self.path.display())
    }
}

impl LogFile {
    /// Creates (mode 0600) the log at `path`, keeping a previous one as `<path>.1`.
    pub fn create(path: &Path) -> std::io::Result<LogFile> {
        if path.exists() {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            let _ = std::fs::rename(path, PathBuf::from(old));
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (or several, each timestamped), redacted.
    pub fn line(&self, text: &str) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let clean = redact(text);
        if let Ok(mut f) = self.file.lock() {
            for l in clean.lines() {
                let _ = writeln!(f, "{ts} {l}");
            }
            let _ = f.flush();
        }
    }
}

impl EventSink for LogFile {
    fn emit(&self, event: &Event) {
        match serde_json::to_string(event) {
            Ok(json) => self.line(&json),
            Err(e) => self.line(&format!("(event not serializable: {e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Level, Reporter};
    use std::sync::Arc;

    #[test]
    fn every_line_is_redacted_timestamped_and_the_previous_log_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer.log");
        std::fs::write(&path, "old run\n").unwrap();
        let log = Arc::new(LogFile::create(&path).unwrap());
        let _s = crate::secret::Secret::new("log-secret-value");
        log.line("raw line with log-secret-value\npassword: hunter22");
        let r = Reporter::new(vec![log.clone()]);
        r.message(Level::Info, Some("h1"), "event with log-secret-value");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("log-secret-value"), "{text}");
        assert!(!text.contains("hunter22"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.lines()
                .all(|l| l.len() > 24 && l.as_bytes()[4] == b'-')
        );
        assert!(text.contains(r#""event":"message""#));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("installer.log.1")).unwrap(),
            "old run\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn default_path_is_beside_the_answer_file() {
        assert_eq!(
            default_path(Some(Path::new("/etc/app/answers.yaml"))),
            PathBuf::from("/etc/app/installer.log")
        );
        assert_eq!(
            default_path(Some(Path::new("answers.yaml"))),
            PathBuf::from("installer.log")
        );
        assert_eq!(default_path(None), PathBuf::from("installer.log"));
    }
}
