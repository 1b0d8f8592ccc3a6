//! The one door every change to a host goes through. Each mutation is named ("write
//! /etc/rancher/k3s/config.yaml") and reported as a step; unless the run's [`Goal`] is to
//! apply, it is reported as a typed [`Event::PlannedChange`] and nothing is sent to the
//! host. Temporary probes (preflight's test listeners) go through here too
//! ([`Ops::probe`]). Phases never call [`Remote::exec`] for a change directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::context::Goal;
use crate::host::{
    CommandOutput, HostError, Progress, Remote, RemoteCommand, RemoteExt, UploadOutcome,
    UploadSource, UploadTarget,
};
use crate::k3s::{RenderedFile, SecretFile};
use crate::report::{ChangeAction, Event, Reporter};

/// Changes to one host within one phase.
pub struct Ops {
    remote: Arc<dyn Remote>,
    host: String,
    phase: String,
    reporter: Reporter,
    goal: Goal,
    changed: AtomicBool,
}

/// The script that records a file the installer wrote in the host's changes log, with the
/// SHA-256 of its content as it is now, so that uninstall removes it only while unchanged.
/// A line is `file <sha256> <path>` (the path is the rest of the line).
pub fn record_file_script(path: &str) -> String {
    let log = super::prepare::CHANGES_LOG;
    let q = crate::host::shell_quote(path);
    format!(
        "set -e\nmkdir -p \"$(dirname {log})\"\nh=$(sha256sum < {q} | cut -d' ' -f1)\nprintf 'file %s %s\\n' \"$h\" {q} >> {log}\n"
    )
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Ops {
    pub fn new(remote: Arc<dyn Remote>, phase: &str, reporter: &Reporter, goal: Goal) -> Ops {
        Ops {
            host: remote.name().to_owned(),
            remote,
            phase: phase.to_owned(),
            reporter: reporter.clone(),
            goal,
            changed: AtomicBool::new(false),
        }
    }

    pub fn remote(&self) -> &Arc<dyn Remote> {
        &self.remote
    }

    /// Whether changes are only reported (the goal is not to apply).
    pub fn dry_run(&self) -> bool {
        !self.goal.applies()
    }

    pub fn goal(&self) -> Goal {
        self.goal
    }

    /// Whether anything was (or, in a dry run, would be) changed through this door.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::SeqCst)
    }

    /// Reports a step on this host.
    pub fn step(&self, message: impl Into<String>) {
        self.reporter.emit(Event::HostStep {
            phase: self.phase.clone(),
            host: self.host.clone(),
            message: message.into(),
        });
    }

    fn change(&self, action: ChangeAction, target: &str, what: &str) {
        self.changed.store(true, Ordering::SeqCst);
        if self.goal.applies() {
            self.step(what.to_owned());
        } else {
            self.plan(action, target, what);
        }
    }

    fn plan(&self, action: ChangeAction, target: &str, what: &str) {
        self.reporter.emit(Event::PlannedChange {
            phase: self.phase.clone(),
            host: self.host.clone(),
            action,
            target: target.to_owned(),
            summary: what.to_owned(),
        });
    }

    /// Reports a change that cannot be rendered yet (a dry run before the cluster exists:
    /// the token files depend on its secrets). Only valid when the goal is not to apply.
    pub fn planned(&self, action: ChangeAction, target: &str, what: &str) {
        self.changed.store(true, Ordering::SeqCst);
        self.plan(action, target, what);
    }

    /// Records a file just written in the host's changes log (with its content hash), for
    /// uninstall. Only called once the goal is to apply and the file was written.
    async fn record_file(&self, path: &str) -> Result<(), HostError> {
        self.remote
            .run(RemoteCommand::new(record_file_script(path)).sudo())
            .await
            .map(|_| ())
    }

    /// Runs a temporary probe (a test listener that exits on its own): run unless the goal
    /// is a dry run, which reports it instead. Probes do not count as changes.
    pub async fn probe(
        &self,
        what: &str,
        cmd: RemoteCommand,
    ) -> Result<Option<CommandOutput>, HostError> {
        if !self.goal.allows_probes() {
            self.plan(ChangeAction::Probe, what, what);
            return Ok(None);
        }
        self.remote.run(cmd).await.map(Some)
    }

    /// Runs a command that changes the host. In a dry run, only reports it.
    pub async fn run(
        &self,
        what: &str,
        cmd: RemoteCommand,
    ) -> Result<Option<CommandOutput>, HostError> {
        self.change(ChangeAction::Run, what, what);
        if !self.goal.applies() {
            return Ok(None);
        }
        self.remote.run(cmd).await.map(Some)
    }

    /// Writes a rendered file unless the host already has it with this content
    /// (`current_sha256` from facts, if known). Returns whether it changed.
    pub async fn write_file(
        &self,
        file: &RenderedFile,
        current_sha256: Option<&str>,
    ) -> Result<bool, HostError> {
        let want = sha256_hex(file.content.as_bytes());
        if current_sha256 == Some(want.as_str()) {
            return Ok(false);
        }
        let (verb, action) = if current_sha256.is_some() {
            ("update", ChangeAction::Update)
        } else {
            ("write", ChangeAction::Write)
        };
        if !self.goal.applies() {
            self.change(action, &file.path, &format!("{verb} {}", file.path));
            return Ok(true);
        }
        let outcome = self
            .remote
            .upload(
                &UploadSource::Bytes(Bytes::from(file.content.clone().into_bytes())),
                &UploadTarget::root(file.path.clone(), file.mode),
                None,
            )
            .await?;
        if matches!(outcome, UploadOutcome::Uploaded { .. }) {
            self.change(action, &file.path, &format!("{verb} {}", file.path));
            self.record_file(&file.path).await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Writes a secret file (a token) through stdin unless `exists` says it is there.
    pub async fn write_secret_file(
        &self,
        file: &SecretFile,
        exists: bool,
    ) -> Result<bool, HostError> {
        if exists {
            return Ok(false);
        }
        self.change(
            ChangeAction::WriteSecret,
            &file.path,
            &format!("write {} (mode 0600)", file.path),
        );
        if self.goal.applies() {
            self.remote.run(file.write_command()).await?;
            self.record_file(&file.path).await?;
        }
        Ok(true)
    }

    /// Uploads an artifact, skipped by the host layer when the destination already has
    /// the same checksum. Progress goes out as events.
    pub async fn upload(
        &self,
        what: &str,
        src: &UploadSource,
        target: &UploadTarget,
        already_present: bool,
    ) -> Result<bool, HostError> {
        if !self.goal.applies() {
            if already_present {
                self.step(format!(
                    "{} is present (checksum verified at install)",
                    target.path
                ));
                return Ok(false);
            }
            self.change(
                ChangeAction::Upload,
                &target.path,
                &format!("upload {what} to {}", target.path),
            );
            return Ok(true);
        }
        let reporter = self.reporter.clone();
        let (phase, host, label) = (self.phase.clone(), self.host.clone(), what.to_owned());
        let progress: Progress = Arc::new(move |done, total| {
            reporter.emit(Event::HostProgress {
                phase: phase.clone(),
                host: host.clone(),
                what: label.clone(),
                done,
                total,
            })
        });
        match self.remote.upload(src, target, Some(progress)).await? {
            UploadOutcome::Uploaded { bytes } => {
                self.change(
                    ChangeAction::Upload,
                    &target.path,
                    &format!(
                        "uploaded {what} to {} ({} MB, verified)",
                        target.path,
                        bytes / 1_000_000
                    ),
                );
                self.record_file(&target.path).await?;
                Ok(true)
            }
            UploadOutcome::AlreadyPresent => Ok(false),
        }
    }
}
