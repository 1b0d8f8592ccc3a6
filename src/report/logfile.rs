//! The debug log file: every event and every error of a run, one timestamped line each,
//! every line passed through [`crate::secret::redact`]. Always written (beside the answer
//! file, else in the working directory) so that a failed run can be diagnosed afterwards and
//! collected by a support bundle. The previous runs' logs are kept as `<name>.1` (the
//! newest) to `<name>.9` (the oldest), so a few `status` runs never take the log of the
//! install before them.

use super::events::{Event, EventSink};
use crate::secret::redact;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The log file's name when none is given.
pub const DEFAULT_NAME: &str = "installer.log";

/// How many earlier runs' logs are kept beside the current one (`.1` to `.9`).
pub const KEEP: usize = 9;

/// Where the log goes by default: beside the answer file, else in the working directory.
pub fn default_path(answer_file: Option<&Path>) -> PathBuf {
    match answer_file.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DEFAULT_NAME),
        _ => PathBuf::from(DEFAULT_NAME),
    }
}

/// Whether the file at `path` is one of the installer's logs: empty, or its first line
/// starts with the timestamp every log line starts with.
pub fn is_installer_log(path: &Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::new();
    if f.take(64).read_to_end(&mut head).is_err() {
        return false;
    }
    if head.is_empty() {
        return true;
    }
    let first = String::from_utf8_lossy(&head);
    first
        .split_once(' ')
        .is_some_and(|(ts, _)| humantime::parse_rfc3339(ts).is_ok())
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
    ///
    /// Only the installer's own logs are touched: an existing file at `path` that is not one
    /// (a symbolic link, even dangling, a device such as `/dev/null`, a file of another user,
    /// a file whose first line is not a log line) is refused, never renamed or replaced. The
    /// previous log is kept as `<path>.1` only if `<path>.1` is absent or is itself one of
    /// its logs; otherwise the run is appended to the existing log.
    pub fn create(path: &Path) -> std::io::Result<LogFile> {
        let refuse = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} {why}; the installer only replaces its own logs (give another path with --log-file)",
                    path.display()
                ),
            )
        };
        let file = match crate::fsx::own_regular_file(path)? {
            None => crate::fsx::create_new(path, 0o600)?,
            Some(false) => {
                return Err(refuse(
                    "exists and is not a regular file of yours (a link, a device, another user's file or a hard link)",
                ));
            }
            Some(true) if !is_installer_log(path) => {
                return Err(refuse("exists and is not an installer log"));
            }
            Some(true) => {
                let numbered = |n: usize| {
                    let mut p = path.as_os_str().to_owned();
                    p.push(format!(".{n}"));
                    PathBuf::from(p)
                };
                // Only the installer's own logs move; a foreign file stops nothing but is
                // never renamed or overwritten.
                let ours_or_absent = |p: &Path| -> std::io::Result<bool> {
                    Ok(match crate::fsx::own_regular_file(p)? {
                        None => true,
                        Some(true) => is_installer_log(p),
                        Some(false) => false,
                    })
                };
                for n in (1..KEEP).rev() {
                    let (from, to) = (numbered(n), numbered(n + 1));
                    if crate::fsx::own_regular_file(&from)? == Some(true)
                        && is_installer_log(&from)
                        && ours_or_absent(&to)?
                    {
                        let _ = std::fs::rename(&from, &to);
                    }
                }
                let old = numbered(1);
                let may_rotate =
                    ours_or_absent(&old)? && crate::fsx::own_regular_file(&old)?.is_none();
                if may_rotate && std::fs::rename(path, &old).is_ok() {
                    crate::fsx::create_new(path, 0o600)?
                } else {
                    crate::fsx::open_append(path, 0o600)?
                }
            }
        };
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (or several, each timestamped), redacted, control characters escaped.
    pub fn line(&self, text: &str) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let clean = redact(text);
        if let Ok(mut f) = self.file.lock() {
            for l in clean.lines() {
                let _ = writeln!(f, "{ts} {}", super::text::sanitize(l));
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
        std::fs::write(&path, "2026-01-01T00:00:00.000Z old run\n").unwrap();
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
            "2026-01-01T00:00:00.000Z old run\n"
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

    #[test]
    fn log_file_option_never_replaces_a_file_that_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let e = LogFile::create(&passwd).unwrap_err();
        assert!(e.to_string().contains("not an installer log"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&passwd).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\n"
        );
        assert!(!dir.path().join("passwd.1").exists());
        // A device.
        assert!(LogFile::create(Path::new("/dev/null")).is_err());
    }

    #[test]
    fn dangling_log_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("root-only").join("created");
        std::fs::create_dir(dir.path().join("root-only")).unwrap();
        let link = dir.path().join("installer.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(LogFile::create(&link).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn two_status_runs_after_an_install_keep_the_install_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("installer.log");
        LogFile::create(&p).unwrap().line("the install");
        LogFile::create(&p).unwrap().line("status one");
        LogFile::create(&p).unwrap().line("status two");
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert!(read("installer.log").contains("status two"));
        assert!(read("installer.log.1").contains("status one"));
        assert!(read("installer.log.2").contains("the install"));
        // Bounded: after KEEP more runs the oldest is gone, nothing beyond .KEEP exists.
        for i in 0..KEEP {
            LogFile::create(&p).unwrap().line(&format!("run {i}"));
        }
        assert!(
            !dir.path()
                .join(format!("installer.log.{}", KEEP + 1))
                .exists()
        );
        let all: String = (1..=KEEP)
            .map(|n| read(&format!("installer.log.{n}")))
            .collect();
        assert!(!all.contains("the install"), "the oldest log was dropped");
    }

    #[test]
    fn rotation_does_not_overwrite_a_foreign_dot_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer.log");
        std::fs::write(&path, "2026-01-01T00:00:00.000Z previous\n").unwrap();
        let one = dir.path().join("installer.log.1");
        std::fs::write(&one, "precious\n").unwrap();
        let log = LogFile::create(&path).unwrap();
        log.line("this run");
        assert_eq!(std::fs::read_to_string(&one).unwrap(), "precious\n");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("previous") && text.contains("this run"),
            "{text}"
        );
    }

    #[test]
    fn control_characters_from_hosts_are_escaped_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer.log");
        let log = LogFile::create(&path).unwrap();
        log.line("process \u{1b}]0;pwned\u{7}\u{1b}[2J holds port 6443");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("pwned"), "{text}");
    }
}
