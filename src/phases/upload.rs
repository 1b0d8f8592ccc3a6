//! `upload`: the k3s binary, the airgap images and the application's image archives,
//! verified on arrival, skipped where the host already has them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::PipelineError;
use super::context::{ConnectedHost, Context};
use super::ids::PhaseId;
use super::ops::Ops;
use super::runner::{Runner, StepError, StepOk};
use crate::assets::{self, AssetError, AssetStore, ResolvedArtifact};
use crate::host::UploadTarget;

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

/// The `upload` phase. Returns, per host name, whether its k3s binary changed (k3s must
/// then restart).
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    artifacts: Artifacts,
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
                for a in list {
                    let path = a.host_path();
                    let present = match a.kind {
                        assets::ArtifactKind::K3sBinary => {
                            n.facts.k3s_sha256.as_deref() == Some(a.sha256.as_str())
                        }
                        _ => n
                            .facts
                            .image_files
                            .get(&path)
                            .is_some_and(|size| size == &a.size.to_string()),
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
