//! Advisory file locks (flock through `std::fs::File::lock`): one per `LAB_ID`, held for a lab's whole
//! life by `Lab::up`, so tests in parallel threads or binaries that use the same id take turns; and
//! one for the shared base-image cache while it is built or unpacked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use anyhow::{Context, Result};

/// An exclusive lock, released when dropped (the file is closed).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path`, waiting (and saying so on stderr) while someone else holds it.
    pub fn exclusive(path: &Path, what: &str) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!(
                    "lab: waiting for {what} (lock {} is held by another test or lab command)",
                    path.display()
                );
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = FileLock::exclusive(&path, "test").unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let got2 = got.clone();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            let _second = FileLock::exclusive(&p2, "test").unwrap();
            got2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !got.load(Ordering::SeqCst),
            "second lock taken while the first is held"
        );
        drop(first);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }
}
