//! The journal: a local, append-only record (JSON lines) of each run and of every finished
//! or failed (phase, host) step, kept beside the answer file. It tells the user where a
//! previous run stopped and lets `status` report it; it is never the only source of truth
//! (phases decide what to do from facts gathered on the hosts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::report::HostOutcome;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    RunStarted {
        run: String,
        time: String,
        command: String,
    },
    StepDone {
        run: String,
        time: String,
        phase: String,
        host: String,
        outcome: String,
    },
    StepFailed {
        run: String,
        time: String,
        phase: String,
        host: String,
        error: String,
    },
    RunFinished {
        run: String,
        time: String,
        command: String,
        ok: bool,
    },
    /// An upgrade brought every node to `k3s_version` (and the application was applied).
    Upgraded {
        run: String,
        time: String,
        k3s_version: String,
        /// Each node's version before the upgrade (`node=version`).
        from: Vec<String>,
    },
    /// The probe matrix a `verify` checked: its table as printed, and whether it passed.
    Matrix {
        run: String,
        time: String,
        table: String,
        ok: bool,
    },
}

/// What the journal says about the most recent run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run: String,
    pub command: String,
    pub started: String,
    /// `Some(ok)` if the run finished; `None` if it stopped without finishing (killed).
    pub finished: Option<bool>,
    /// Steps that finished, in order.
    pub done: Vec<(String, String)>,
    /// Steps that failed, in order, with their error.
    pub failed: Vec<(String, String, String)>,
}

impl RunSummary {
    /// A one-paragraph account of where the run stopped, or None if it succeeded.
    pub fn stopped_at(&self) -> Option<String> {
        match self.finished {
            Some(true) => None,
            _ => {
                let how = if self.finished.is_none() {
                    "was interrupted"
                } else {
                    "failed"
                };
                let mut s = format!(
                    "the last `{}` (started {}) {how}",
                    self.command, self.started
                );
                if let Some((phase, host, err)) = self.failed.last() {
                    s.push_str(&format!(" in phase {phase} on {host}: {err}"));
                } else if let Some((phase, host)) = self.done.last() {
                    s.push_str(&format!(" after phase {phase} finished on {host}"));
                }
                Some(s)
            }
        }
    }
}

/// An open journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    run: String,
    file: Mutex<Option<std::fs::File>>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` for a new run.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let file = crate::fsx::open_append(path, 0o600)?;
        let run = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id()
        );
        Ok(Journal {
            path: path.to_owned(),
            run,
            file: Mutex::new(Some(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, entry: &Entry) {
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        let Some(file) = guard.as_mut() else { return };
        let line = match serde_json::to_string(entry) {
            Ok(l) => crate::secret::redact(&l),
            Err(_) => return,
        };
        if let Err(e) = writeln!(file, "{line}").and_then(|_| file.sync_data()) {
            tracing::warn!("cannot write the journal {}: {e}", self.path.display());
            *guard = None;
        }
    }

    pub fn run_started(&self, command: &str) {
        self.append(&Entry::RunStarted {
            run: self.run.clone(),
            time: now(),
            command: command.to_owned(),
        });
    }

    pub fn step_done(&self, phase: &str, host: &str, outcome: HostOutcome) {
        let outcome = match outcome {
            HostOutcome::Changed => "changed",
            HostOutcome::Unchanged => "unchanged",
            HostOutcome::Skipped => "skipped",
        };
        self.append(&Entry::StepDone {
            run: self.run.clone(),
            time: now(),
            phase: phase.to_owned(),
            host: host.to_owned(),
            outcome: outcome.to_owned(),
        });
    }

    pub fn step_failed(&self, phase: &str, host: &str, error: &str) {
        self.append(&Entry::StepFailed {
            run: self.run.clone(),
            time: now(),
            phase: phase.to_owned(),
            host: host.to_owned(),
            error: error.to_owned(),
        });
    }

    /// Records a finished upgrade: the version every node now runs, and what they ran before.
    pub fn upgraded(&self, k3s_version: &str, from: Vec<String>) {
        self.append(&Entry::Upgraded {
            run: self.run.clone(),
            time: now(),
            k3s_version: k3s_version.to_owned(),
            from,
        });
    }

    /// Records the probe matrix `verify` checked.
    pub fn matrix(&self, table: &str, ok: bool) {
        self.append(&Entry::Matrix {
            run: self.run.clone(),
            time: now(),
            table: table.to_owned(),
            ok,
        });
    }

    /// The most recent probe matrix recorded at `path`: (time, table, passed), if any.
    pub fn last_matrix(path: &Path) -> std::io::Result<Option<(String, String, bool)>> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .rev()
            .find_map(|l| match serde_json::from_str::<Entry>(l) {
                Ok(Entry::Matrix {
                    time, table, ok, ..
                }) => Some((time, table, ok)),
                _ => None,
            }))
    }

    /// The most recent upgrade recorded at `path`: (time, k3s version), if any.
    pub fn last_upgrade(path: &Path) -> std::io::Result<Option<(String, String)>> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .rev()
            .find_map(|l| match serde_json::from_str::<Entry>(l) {
                Ok(Entry::Upgraded {
                    time, k3s_version, ..
                }) => Some((time, k3s_version)),
                _ => None,
            }))
    }

    pub fn run_finished(&self, command: &str, ok: bool) {
        self.append(&Entry::RunFinished {
            run: self.run.clone(),
            time: now(),
            command: command.to_owned(),
            ok,
        });
    }

    /// Reads the most recent run recorded at `path` (None if there is no journal yet).
    /// Lines that do not parse (a torn last line after a crash) are skipped.
    pub fn last_run(path: &Path) -> std::io::Result<Option<RunSummary>> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut summary: Option<RunSummary> = None;
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<Entry>(line) else {
                continue;
            };
            match entry {
                Entry::RunStarted { run, time, command } => {
                    summary = Some(RunSummary {
                        run,
                        command,
                        started: time,
                        finished: None,
                        done: Vec::new(),
                        failed: Vec::new(),
                    })
                }
                Entry::StepDone {
                    run, phase, host, ..
                } => {
                    if let Some(s) = summary.as_mut().filter(|s| s.run == run) {
                        s.done.push((phase, host));
                    }
                }
                Entry::StepFailed {
                    run,
                    phase,
                    host,
                    error,
                    ..
                } => {
                    if let Some(s) = summary.as_mut().filter(|s| s.run == run) {
                        s.failed.push((phase, host, error));
                    }
                }
                Entry::RunFinished { run, ok, .. } => {
                    if let Some(s) = summary.as_mut().filter(|s| s.run == run) {
                        s.finished = Some(ok);
                    }
                }
                Entry::Upgraded { .. } | Entry::Matrix { .. } => {}
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_the_last_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/journal.jsonl");
        {
            let j = Journal::open(&path).unwrap();
            j.run_started("install");
            j.step_done("upload", "node1", HostOutcome::Changed);
            j.run_finished("install", true);
        }
        let j = Journal::open(&path).unwrap();
        j.run_started("install");
        j.step_done("upload", "node1", HostOutcome::Unchanged);
        j.step_failed("join-servers", "node2", "k3s did not become ready");
        // No run_finished: the run was killed.
        drop(j);
        let last = Journal::last_run(&path).unwrap().unwrap();
        assert_eq!(last.finished, None);
        assert_eq!(last.done, vec![("upload".to_string(), "node1".to_string())]);
        let msg = last.stopped_at().unwrap();
        assert!(
            msg.contains(
                "was interrupted in phase join-servers on node2: k3s did not become ready"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::open(&path).unwrap();
        j.run_started("install");
        j.run_finished("install", true);
        drop(j);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\":\"step_do");
        std::fs::write(&path, text).unwrap();
        let last = Journal::last_run(&path).unwrap().unwrap();
        assert_eq!(last.finished, Some(true));
        assert_eq!(last.stopped_at(), None);
    }

    #[test]
    fn no_journal_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::last_run(&dir.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn secrets_do_not_reach_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let _s = crate::secret::Secret::new("journal-secret-value");
        let j = Journal::open(&path).unwrap();
        j.step_failed("p", "h", "bad token journal-secret-value");
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("journal-secret-value"));
    }
}
