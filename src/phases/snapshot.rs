//! The `snapshot` phase, of a whole-cluster `uninstall` (before any host is changed) and of an
//! `upgrade` (before the first restart): an etcd snapshot is taken on the first server (plan
//! order) whose k3s is active, streamed to the workstation over SSH into the cluster's state
//! directory (beside the journal), checked against `sha256sum` on the host, and the cluster
//! token copied beside it (a restore needs it). The snapshot is taken through the door
//! ([`Ops`]), so a dry run reports it and runs nothing. When no server's k3s is active the
//! snapshot cannot be taken and nothing is changed: the admin starts k3s on a server, or (for
//! uninstall) says `--no-snapshot` (docs/design.md, "Uninstall keeps a last snapshot",
//! "Upgrade").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::context::ConnectedHost;
use super::context::Context;
use super::ids::PhaseId;
use super::ops::Ops;
use super::runner::{Runner, StepError, StepOk};
use crate::host::{RemoteCommand, RemoteExt, shell_quote};
use crate::k3s::paths;
use crate::report::Event;

/// Which command takes the snapshot, and what its messages say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purpose {
    /// `--name` of the snapshot: k3s names the file `<name>-<node>-<unix time>`.
    pub name: &'static str,
    /// What is lost without one (the error when none can be taken).
    pub loss: &'static str,
    /// The hint when taking or copying it failed.
    pub retry: &'static str,
    /// The hint when no server's k3s is active.
    pub none_active: &'static str,
}

/// A whole-cluster uninstall's last snapshot.
pub const UNINSTALL: Purpose = Purpose {
    name: "pre-uninstall",
    loss: "uninstalling would lose the cluster's state (every object and Secret) for good",
    retry: "rerun, or rerun with --no-snapshot to uninstall without one",
    none_active: "start k3s on one server (`systemctl start k3s`) and rerun to copy a last snapshot first, or rerun with --no-snapshot to uninstall without one",
};

/// An upgrade's way back, taken before the first node restarts.
pub const UPGRADE: Purpose = Purpose {
    name: "pre-upgrade",
    loss: "an upgrade that fails half-way could not be rolled back to the cluster's state of now",
    retry: "no node has been restarted yet: rerun the upgrade once the server can take a snapshot (`k3s etcd-snapshot ls` on it lists what it has)",
    none_active: "start k3s on one server (`systemctl start k3s`) and rerun the upgrade",
};

/// Where the snapshot is written on the host, given explicitly (`--dir`) so that the file is
/// where the installer looks whatever the config says; it is k3s's default
/// (`${data-dir}/server/db/snapshots`), inside the data directory `clean` deletes.
pub const SNAPSHOT_DIR: &str = "/var/lib/rancher/k3s/server/db/snapshots";

/// The command the door runs on the chosen server.
pub fn save_command(purpose: Purpose) -> String {
    format!(
        "k3s etcd-snapshot save --name {} --dir {}",
        purpose.name,
        shell_quote(SNAPSHOT_DIR)
    )
}

/// A snapshot copied to the workstation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The server it was taken on (as the plan names it).
    pub host: String,
    /// The file on the host (deleted with k3s's data by `clean`).
    pub remote: String,
    /// The file on the workstation.
    pub path: PathBuf,
    pub bytes: u64,
    /// Its SHA-256, as `sha256sum` on the host reported it (and the copy matched).
    pub sha256: String,
    /// The cluster token beside it (mode 0600).
    pub token: PathBuf,
}

/// What became of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No server is to be uninstalled (nothing left, or every server refused): nothing to keep.
    NotNeeded,
    /// Copied.
    Saved(Saved),
    /// A dry run: what would be taken, or why a real run would stop.
    Planned { host: Option<String>, note: String },
    /// Not taken: nothing may change (the error names the host and why).
    Failed(StepError),
}

/// Which server the snapshot is taken on.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// No server among the hosts to uninstall.
    NoServer,
    /// The index (into the targets) of the first server, in plan order, whose k3s is active.
    Server(usize),
    /// Servers, but none with k3s active: each server's name and unit state.
    NoneActive(Vec<(String, String)>),
}

/// The pure decision: `hosts` are (name, is a server, `systemctl is-active k3s`) in plan order.
pub fn choose(hosts: &[(String, bool, Option<String>)]) -> Choice {
    if !hosts.iter().any(|h| h.1) {
        return Choice::NoServer;
    }
    if let Some(i) = hosts
        .iter()
        .position(|h| h.1 && h.2.as_deref() == Some("active"))
    {
        return Choice::Server(i);
    }
    Choice::NoneActive(
        hosts
            .iter()
            .filter(|h| h.1)
            .map(|h| {
                (
                    h.0.clone(),
                    h.2.clone().unwrap_or_else(|| "not installed".into()),
                )
            })
            .collect(),
    )
}

/// The snapshot's file name from what `k3s etcd-snapshot save` logs (`Snapshot <name> saved.`,
/// through logrus: `time="…" level=info msg="Snapshot pre-uninstall-node1-1767225600 saved."`).
/// Only a plain file name is accepted.
pub fn parse_saved(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let rest = &l[l.find("Snapshot ")? + "Snapshot ".len()..];
        let name = rest.split_once(" saved.")?.0;
        (!name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        .then(|| name.to_owned())
    })
}

/// `sha256sum` and size of a file on the host: (hex, bytes) from `stat -c %s` then `sha256sum`.
fn parse_sum(out: &str) -> Option<(String, u64)> {
    let mut lines = out.lines();
    let size = lines.next()?.trim().parse().ok()?;
    let sum = lines
        .next()?
        .split_whitespace()
        .next()?
        .to_ascii_lowercase();
    (sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit())).then_some((sum, size))
}

/// The snapshots earlier runs left in `dir` (for the hint when none can be taken now).
pub fn earlier(dir: &Path, purpose: Purpose) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&format!("{}-", purpose.name)) && !n.ends_with(".token"))
        .collect();
    v.sort();
    v
}

/// A writer that hashes and counts what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn local_error(path: &Path, e: std::io::Error) -> StepError {
    StepError::new(format!("cannot write {}: {e}", path.display())).with_hint(
        "make room or fix the directory beside the answer file, then rerun (nothing was changed on any host)",
    )
}

/// Takes the snapshot on `t` and copies it and the token into `dir` (through the door: a dry
/// run reports it and returns `None`).
pub async fn take(
    ops: &Ops,
    t: &ConnectedHost,
    dir: &Path,
    purpose: Purpose,
) -> Result<Option<Saved>, StepError> {
    let host = t.spec.name.as_str();
    let r = t.remote.as_ref();
    let what = format!(
        "take an etcd snapshot (k3s etcd-snapshot save --name {}) and copy it with the cluster token to {}",
        purpose.name,
        dir.display()
    );
    let Some(out) = ops
        .run(
            &what,
            RemoteCommand::new(save_command(purpose))
                .sudo()
                .timeout(Duration::from_secs(150))
                .not_idempotent(),
        )
        .await
        .map_err(|e| {
            let e = StepError::from(e);
            if e.hint.is_some() || e.interrupted {
                e
            } else {
                e.with_hint(purpose.retry)
            }
        })?
    else {
        return Ok(None);
    };
    let said = format!("{}\n{}", out.stderr_str(), out.stdout_str());
    let name = parse_saved(&said).ok_or_else(|| {
        StepError::new(format!(
            "k3s etcd-snapshot save did not say which snapshot it wrote: {}",
            crate::host::tail(said.trim(), 5)
        ))
        .with_hint(format!(
            "look at `k3s etcd-snapshot ls` on the host; {}",
            purpose.retry
        ))
    })?;
    let remote = format!("{SNAPSHOT_DIR}/{name}");
    let q = shell_quote(&remote);
    let sum = r
        .run(RemoteCommand::new(format!("stat -c %s -- {q} && sha256sum -- {q}")).sudo())
        .await?;
    let (want, size) = parse_sum(&sum.stdout_str()).ok_or_else(|| {
        StepError::new(format!(
            "cannot read the size and SHA-256 of {remote}: {}",
            sum.stdout_str().trim()
        ))
    })?;
    ops.step(format!("snapshot {remote} written ({size} bytes)"));
    let path = dir.join(&name);
    let file = crate::fsx::AtomicFile::create(&path, 0o600).map_err(|e| local_error(&path, e))?;
    let mut sink = Hashing {
        inner: file,
        hash: Sha256::new(),
        bytes: 0,
    };
    r.exec_to(
        RemoteCommand::new(format!("cat -- {q}"))
            .sudo()
            .timeout(Duration::from_secs(3600)),
        &mut sink,
    )
    .await
    .and_then(|o| {
        if o.success() {
            Ok(())
        } else {
            Err(crate::host::HostError::CommandFailed {
                host: host.to_owned(),
                command: format!("cat -- {q}"),
                status: o.status,
                stderr: crate::host::tail(&o.stderr_str(), 20),
            })
        }
    })?;
    let got = hex::encode(sink.hash.finalize_reset());
    if got != want || sink.bytes != size {
        // Dropping the file removes the partial copy: nothing is left on the workstation.
        return Err(StepError::new(format!(
            "the copy of {remote} does not match the host's: {} bytes with SHA-256 {got} arrived, sha256sum on the host says {size} bytes with {want}; nothing was kept on the workstation",
            sink.bytes
        ))
        .with_hint("rerun (the snapshot is taken again); if it happens again, check the SSH link and the workstation's disk"));
    }
    sink.inner.commit().map_err(|e| local_error(&path, e))?;
    let token = r
        .read_file(paths::SERVER_TOKEN_GENERATED, true)
        .await?
        .ok_or_else(|| {
            StepError::new(format!(
                "{} is missing, so the snapshot {} could not be restored",
                paths::SERVER_TOKEN_GENERATED,
                path.display()
            ))
            .with_hint(purpose.retry)
        })?;
    // Registered, so that it is masked should it ever reach a line of output.
    let _registered = crate::secret::Secret::new(String::from_utf8_lossy(&token).trim().to_owned());
    let token_path = dir.join(format!("{name}.token"));
    crate::fsx::write_atomic(&token_path, &token, 0o600)
        .map_err(|e| local_error(&token_path, e))?;
    Ok(Some(Saved {
        host: host.to_owned(),
        remote,
        path,
        bytes: size,
        sha256: want,
        token: token_path,
    }))
}

/// The `snapshot` phase over `targets` (the hosts to uninstall, or every host of an upgrade, in
/// plan order).
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    targets: &[Arc<ConnectedHost>],
    dir: &Path,
    purpose: Purpose,
) -> Outcome {
    let reporter = runner.reporter().clone();
    let id = PhaseId::Snapshot;
    let hosts: Vec<(String, bool, Option<String>)> = targets
        .iter()
        .map(|t| {
            (
                t.spec.name.clone(),
                t.spec.is_server,
                t.facts.k3s_unit.clone(),
            )
        })
        .collect();
    match choose(&hosts) {
        Choice::NoServer => Outcome::NotNeeded,
        Choice::NoneActive(servers) => {
            let states: Vec<String> = servers.iter().map(|(n, s)| format!("{n}: {s}")).collect();
            let mut e = StepError::new(format!(
                "no etcd snapshot can be taken: k3s is not running on any server ({}), and `k3s etcd-snapshot save` needs a running server; {}, so nothing was changed",
                states.join(", "),
                purpose.loss
            ));
            let before = earlier(dir, purpose);
            let mut hint = purpose.none_active.to_string();
            if let Some(last) = before.last() {
                hint.push_str(&format!(
                    "; an earlier snapshot is in {}: {last}",
                    dir.display()
                ));
            }
            e = e.with_hint(hint);
            if !ctx.goal.applies() {
                reporter.warn(
                    None,
                    format!(
                        "a real run would stop before changing anything: {}",
                        e.message
                    ),
                );
                return Outcome::Planned {
                    host: None,
                    note: e.message,
                };
            }
            let failed = runner
                .cluster_step(id.id(), id.title(), async { Err::<(StepOk, ()), _>(e) })
                .await;
            match failed {
                Ok(()) => Outcome::NotNeeded,
                Err(f) => Outcome::Failed(
                    f.failures
                        .into_iter()
                        .next()
                        .map(|(_, e)| e)
                        .unwrap_or_else(|| StepError::new("no etcd snapshot was taken")),
                ),
            }
        }
        Choice::Server(i) => {
            let chosen = [targets[i].clone()];
            let r = runner
                .phase(id.id(), id.title(), &chosen, 1, |t| {
                    let ops = Ops::new(t.remote.clone(), id.id(), &reporter, ctx.goal);
                    let reporter = reporter.clone();
                    async move {
                        match take(&ops, &t, dir, purpose).await? {
                            None => Ok((
                                StepOk::changed("would take a snapshot and copy it here"),
                                None,
                            )),
                            Some(s) => {
                                reporter.emit(Event::SnapshotSaved {
                                    host: s.host.clone(),
                                    path: s.path.display().to_string(),
                                    bytes: s.bytes,
                                    sha256: s.sha256.clone(),
                                    token: s.token.display().to_string(),
                                });
                                Ok((
                                    StepOk::changed(format!(
                                        "snapshot copied to {} ({} bytes, SHA-256 verified)",
                                        s.path.display(),
                                        s.bytes
                                    )),
                                    Some(s),
                                ))
                            }
                        }
                    }
                })
                .await;
            match r {
                Ok(mut v) => match v.pop().flatten() {
                    Some(s) => Outcome::Saved(s),
                    None => Outcome::Planned {
                        host: Some(targets[i].spec.name.clone()),
                        note: format!(
                            "a snapshot would be taken on {} and copied to {}",
                            targets[i].spec.name,
                            dir.display()
                        ),
                    },
                },
                Err(f) => Outcome::Failed(
                    f.failures
                        .into_iter()
                        .next()
                        .map(|(h, e)| {
                            if e.message.starts_with(&h) {
                                e
                            } else {
                                StepError {
                                    message: format!("{h}: {}", e.message),
                                    ..e
                                }
                            }
                        })
                        .unwrap_or_else(|| StepError::new("no etcd snapshot was taken")),
                ),
            }
        }
    }
}
