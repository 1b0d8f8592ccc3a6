//! One run at a time against a cluster: commands that change hosts take an exclusive lock
//! on `.installer/<cluster>/lock` beside the answer file. The lock is the operating
//! system's (`flock` through [`std::fs::File::try_lock`]), held for the life of the process:
//! a run killed with SIGKILL, or a workstation that rebooted, leaves no stale lock behind,
//! and the next run takes it over at once. Who holds it (command, workstation, process,
//! start time) is written into the file for the refusal message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub command: String,
    pub workstation: String,
    pub pid: u32,
    pub started: String,
}

impl Holder {
    /// This process, running `command`.
    pub fn me(command: &str) -> Holder {
        Holder {
            command: command.to_owned(),
            workstation: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "this workstation".into()),
            pid: std::process::id(),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// A held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run holds the lock {}: `installer {}` started {} on {} (process {})", path.display(), holder.command, holder.started, holder.workstation, holder.pid)]
    Held { path: PathBuf, holder: Holder },
    #[error("another run holds the lock {} (its holder is not recorded)", path.display())]
    HeldUnknown { path: PathBuf },
    #[error("cannot use the lock file {}: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
}

impl LockError {
    /// The command's error: nothing was changed, so bad usage (exit 2), with what to do.
    pub fn into_error(self) -> Error {
        let hint = match &self {
            LockError::Held { .. } | LockError::HeldUnknown { .. } => {
                "wait for it to finish (or stop it), then run this command again; a run that was killed leaves no lock behind".to_string()
            }
            LockError::Unusable { .. } => {
                "the state directory beside the answer file must be writable by you and not a symlink".to_string()
            }
        };
        Error::usage(self.to_string(), Some(hint))
    }
}

/// Takes the lock at `path` for `holder`, or says who has it.
pub fn acquire(path: &Path, holder: &Holder) -> Result<RunLock, LockError> {
    let unusable = |reason: String| LockError::Unusable {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| unusable(e.to_string()))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(unusable("it is a symbolic link".into()));
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(|e| unusable(e.to_string()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(match serde_json::from_str::<Holder>(&text) {
                Ok(holder) => LockError::Held {
                    path: path.to_owned(),
                    holder,
                },
                Err(_) => LockError::HeldUnknown {
                    path: path.to_owned(),
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(unusable(e.to_string())),
    }
    let json = serde_json::to_string(holder).map_err(|e| unusable(e.to_string()))?;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(json.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(|e| unusable(e.to_string()))?;
    Ok(RunLock {
        _file: file,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_refused_with_the_holder_named_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".installer/c/lock");
        let first = acquire(&path, &Holder::me("install")).unwrap();
        let e = acquire(&path, &Holder::me("install")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`installer install` started"), "{text}");
        assert!(
            text.contains(&format!("(process {})", std::process::id())),
            "{text}"
        );
        assert_eq!(e.into_error().exit_code(), crate::error::EXIT_USAGE);
        drop(first);
        acquire(&path, &Holder::me("install")).unwrap();
    }

    #[test]
    fn a_lock_left_by_a_killed_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "{not json").unwrap();
        // Another process holds it, then is killed with SIGKILL. One process that takes
        // flock(2) itself: util-linux `flock CMD` forks CMD, and a kill landing before the
        // child closed its copy of the descriptor left the lock held by `sleep` (a flaky test).
        let mut child = match std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\ntime.sleep(30)",
            ])
            .arg(&path)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("python3 is needed for this test: {e}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match acquire(&path, &Holder::me("install")) {
                // python has it (the file still names this test's last holder).
                Err(LockError::HeldUnknown { .. } | LockError::Held { .. }) => break,
                Ok(l) => {
                    drop(l);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the other process never took the lock"
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let lock = acquire(&path, &Holder::me("install")).unwrap();
        let held: Holder =
            serde_json::from_str(&std::fs::read_to_string(lock.path()).unwrap()).unwrap();
        assert_eq!(held.pid, std::process::id());
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = acquire(&path, &Holder::me("install")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
