//! `upload`: the k3s binary, the airgap images and the application's image archives,
//! verified on arrival, skipped where the host already has them.
//!
//! Where they go is the caller's [`Destination`]: `install` writes them at their final
//! paths (nothing runs yet); `upgrade` stages them at side paths that nothing running
//! reads ([`ResolvedArtifact::staged_path`]), and [`swap_staged`] renames them into place
//! in the node's turn, right before its restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::PipelineError;
use super::context::{ConnectedHost, Context};
use super::ids::PhaseId;
use super::ops::Ops;
use super::runner::{Runner, StepError, StepOk};
use crate::assets::{self, AssetError, AssetStore, ResolvedArtifact};
use crate::host::{HostError, Remote, RemoteCommand, UploadTarget, shell_quote};

/// The artifacts to upload, by architecture.
pub type Artifacts = BTreeMap<String, Vec<ResolvedArtifact>>;

/// Every artifact each architecture among the hosts needs, resolved (and, for files from
/// `--assets`, hashed) before any transfer starts.
pub fn artifacts(
    store: &AssetStore,
    hosts: &[Arc<ConnectedHost>],
) -> Result<Artifacts, AssetError> {
    let mut by_arch: BTreeMap<String, Vec<ResolvedArtifact>> = BTreeMap::new();
    for n in hosts {
        let Some(arch) = assets::Arch::from_facts(&n.facts.arch) else {
            continue;
        };
        if by_arch.contains_key(arch.as_str()) {
            continue;
        }
        let mut list = vec![store.k3s_binary(arch)?, store.airgap_images(arch)?];
        list.extend(store.app_image_archives(arch)?);
        by_arch.insert(arch.as_str().to_owned(), list);
    }
    Ok(by_arch)
}

/// Where the upload phase puts each artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// At its final path ([`ResolvedArtifact::host_path`]): `install`, where nothing runs yet.
    Final,
    /// At its side path ([`ResolvedArtifact::staged_path`]), unless the final path already
    /// holds it: `upgrade`, where a k3s restarted before its node's turn must come back on
    /// the old release.
    Staged,
}

/// The script that prints `<sha256> <path>` for each of `paths` that is a file (read-only).
pub fn sha256_script(paths: &[String]) -> String {
    let list: Vec<String> = paths.iter().map(|p| shell_quote(p)).collect();
    format!(
        "for f in {}; do if [ -f \"$f\" ]; then printf '%s %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" \"$f\"; fi; done\n",
        list.join(" ")
    )
}

/// SHA-256 of each of `paths` that exists on the host, by path: read from the host now,
/// never remembered.
pub async fn sha256_of(
    remote: &Arc<dyn Remote>,
    paths: &[String],
) -> Result<BTreeMap<String, String>, HostError> {
    let out = remote
        .exec(
            RemoteCommand::new(sha256_script(paths))
                .sudo()
                .timeout(std::time::Duration::from_secs(300)),
        )
        .await?;
    Ok(out
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(h, p)| (p.to_owned(), h.to_owned()))
        .collect())
}

/// The `upload` phase. Returns, per host name, whether its k3s binary changes (k3s must
/// then restart): with [`Destination::Final`], the binary was replaced; with
/// [`Destination::Staged`], the final path does not hold the new binary yet (it is staged
/// for the node's turn).
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    artifacts: Artifacts,
    dest: Destination,
) -> Result<BTreeMap<String, bool>, PipelineError> {
    let by_arch = Arc::new(artifacts);
    let reporter = runner.reporter().clone();
    let id = PhaseId::Upload;
    let changed = runner
        .phase(id.id(), id.title(), hosts, ctx.concurrency, |n| {
            let ops = Ops::new(n.remote.clone(), id.id(), &reporter, ctx.goal);
            let by_arch = by_arch.clone();
            async move {
                let arch = n.facts.arch.as_str().to_owned();
                let list = by_arch.get(&arch).ok_or_else(|| {
                    StepError::new(format!("no k3s artifacts for architecture {arch}"))
                })?;
                let mut binary_changed = false;
                let mut sent = 0u64;
                // Staging: what the final paths hold, hashed on the host (the facts only
                // have the images' sizes).
                let in_place = match dest {
                    Destination::Final => BTreeMap::new(),
                    Destination::Staged => {
                        let finals: Vec<String> = list.iter().map(|a| a.host_path()).collect();
                        sha256_of(&n.remote, &finals).await?
                    }
                };
                for a in list {
                    let path = a.host_path();
                    let (present, path) = match dest {
                        Destination::Final => (
                            match a.kind {
                                assets::ArtifactKind::K3sBinary => {
                                    n.facts.k3s_sha256.as_deref() == Some(a.sha256.as_str())
                                }
                                _ => n
                                    .facts
                                    .image_files
                                    .get(&path)
                                    .is_some_and(|size| size == &a.size.to_string()),
                            },
                            path,
                        ),
                        // In place already: nothing to stage. Otherwise the host layer skips
                        // a side path that already holds these bytes (a rerun).
                        Destination::Staged => {
                            if in_place.get(&path) == Some(&a.sha256) {
                                continue;
                            }
                            if a.kind == assets::ArtifactKind::K3sBinary {
                                binary_changed = true;
                            }
                            (false, a.staged_path())
                        }
                    };
                    let target = UploadTarget::root(path, a.host_mode());
                    if ops.upload(&a.file, &a.source, &target, present).await? {
                        sent += a.size;
                        if a.kind == assets::ArtifactKind::K3sBinary {
                            binary_changed = true;
                        }
                    }
                }
                let ok = if ops.changed() {
                    StepOk::changed(format!(
                        "{} MB {}",
                        sent / 1_000_000,
                        if ops.dry_run() {
                            "to send"
                        } else {
                            "sent and verified"
                        }
                    ))
                } else {
                    StepOk::unchanged("every artifact already present")
                };
                Ok((ok, (n.spec.name.clone(), binary_changed)))
            }
        })
        .await?;
    Ok(changed.into_iter().collect())
}

/// What [`swap_staged`] did on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swapped {
    /// Final paths that received their staged file.
    pub swapped: Vec<String>,
    /// Final paths that already held the artifact.
    pub in_place: Vec<String>,
}

/// The node's turn: renames each staged artifact onto its final path (one filesystem: an
/// atomic rename), through the door, right before the restart. What is staged and what is
/// in place is read from the host now (SHA-256 of both paths), so a rerun after a partial
/// swap does the rest; a side path left beside an artifact already in place is removed.
/// An artifact neither in place nor staged is an error (the upload phase did not run).
pub async fn swap_staged(ops: &Ops, list: &[ResolvedArtifact]) -> Result<Swapped, StepError> {
    let mut paths = Vec::new();
    for a in list {
        paths.push(a.host_path());
        paths.push(a.staged_path());
    }
    let seen = sha256_of(ops.remote(), &paths).await?;
    let mut done = Swapped::default();
    for a in list {
        let (fin, staged) = (a.host_path(), a.staged_path());
        let want = Some(&a.sha256);
        if seen.get(&fin) == want {
            if seen.contains_key(&staged) {
                ops.run(
                    &format!("remove {staged} ({fin} already holds it)"),
                    RemoteCommand::new(format!("rm -f -- {}", shell_quote(&staged))).sudo(),
                )
                .await?;
            }
            done.in_place.push(fin);
            continue;
        }
        if seen.get(&staged) != want && !ops.dry_run() {
            return Err(StepError::new(format!(
                "{} is not staged: {staged} {}",
                a.file,
                if seen.contains_key(&staged) {
                    "holds other bytes"
                } else {
                    "is missing"
                }
            ))
            .with_hint("run the upgrade again: its upload phase stages every artifact before any node is restarted"));
        }
        // The images' side directory goes once its last archive is in place (the binary's
        // side path is a file beside it, in /usr/local/bin).
        let tidy = match a.kind {
            assets::ArtifactKind::K3sBinary => String::new(),
            _ => format!(
                "rmdir --ignore-fail-on-non-empty -- {} 2>/dev/null || true\n",
                shell_quote(crate::k3s::paths::IMAGES_STAGED_DIR)
            ),
        };
        let script = format!(
            "set -e\nmv -f -- {s} {f}\n{tidy}{record}",
            s = shell_quote(&staged),
            f = shell_quote(&fin),
            record = super::ops::record_file_script(&fin)
        );
        ops.run(
            &format!("swap {staged} into place at {fin}"),
            RemoteCommand::new(script).sudo(),
        )
        .await?;
        done.swapped.push(fin);
    }
    Ok(done)
}
