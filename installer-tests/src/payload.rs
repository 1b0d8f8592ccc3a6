//! The payload the lab hands the installer in place of the real artifacts: the k3s
//! stand-in in the k3s binary's position, a small k3s airgap image archive naming the
//! images k3s ships, and one small archive per application image archive of the asset
//! lock, naming the same images; plus an override lock (`--assets-lock`) with their own
//! checksums, under the names the installer asks for. Nothing in the installer knows
//! that these are not the real artifacts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::images::{ArchiveOptions, write_archive};

/// The images of the k3s v1.36 airgap archive that an install on the host network uses
/// (the pause sandbox image and CoreDNS; k3s's `scripts/airgap/image-list.txt`). The
/// other images of that archive belong to components the installer disables.
pub const K3S_AIRGAP_IMAGES: &[&str] = &[
    "docker.io/rancher/mirrored-pause:3.6",
    // The CoreDNS the installer deploys (templates/cluster/cluster.yaml; k3s v1.36 ships 1.14.4).
    "docker.io/rancher/mirrored-coredns-coredns:1.14.4",
    "docker.io/rancher/local-path-provisioner:v0.0.32",
    "docker.io/rancher/mirrored-metrics-server:v0.8.0",
    "docker.io/rancher/mirrored-library-busybox:1.37.0",
];

/// Sizes for a realistic payload (benchmarks); zero for fast tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sizes {
    /// Bytes added to the k3s binary's position (the real binary is about 70 MB).
    pub binary_padding: u64,
    /// Bytes added to the airgap archive.
    pub airgap_padding: u64,
    /// Bytes added to each application image archive.
    pub app_padding: u64,
}

/// A built payload: pass `--assets DIR --assets-lock LOCK` to the installer.
#[derive(Debug, Clone)]
pub struct Payload {
    pub dir: PathBuf,
    pub lock: PathBuf,
}

impl Payload {
    /// The installer arguments that select this payload.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--assets".into(),
            self.dir.display().to_string(),
            "--assets-lock".into(),
            self.lock.display().to_string(),
        ]
    }
}

/// Builds the payload in `dir` (created), with `standin` as the k3s binary.
/// `leave_out` names lock entries to omit (to test a missing archive).
pub fn build(dir: &Path, standin: &Path, sizes: Sizes, leave_out: &[&str]) -> Result<Payload> {
    fs_create(dir)?;
    let lock =
        installer::assets::AssetLock::parse(installer_assets::LOCK_JSON, "the built-in asset lock")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    for e in &lock.artifacts {
        if e.arch.is_some_and(|a| a != installer::assets::Arch::Amd64)
            || leave_out.contains(&e.name.as_str())
        {
            continue;
        }
        let path = dir.join(&e.file);
        match e.kind {
            installer::assets::ArtifactKind::K3sBinary => {
                std::fs::copy(standin, &path)
                    .with_context(|| format!("copy {} to {}", standin.display(), path.display()))?;
                if sizes.binary_padding > 0 {
                    pad_binary(&path, sizes.binary_padding)?;
                }
            }
            installer::assets::ArtifactKind::K3sAirgapImages => {
                let opts = ArchiveOptions {
                    padding_bytes: sizes.airgap_padding,
                    ..Default::default()
                };
                write_archive(&path, K3S_AIRGAP_IMAGES, &opts)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            installer::assets::ArtifactKind::AppImages
                if e.images
                    .iter()
                    .any(|i| i.reference == installer::phases::enforcer::IMAGE) =>
            {
                // The enforcer runs for real in the lab: its image, built from this workspace.
                let binary = workspace_binary("enforcer")?;
                let image =
                    crate::lab_images::enforcer(installer::phases::enforcer::IMAGE, &binary)?;
                crate::rootfs_images::write_archive(&path, &[image])
                    .with_context(|| format!("write {}", path.display()))?;
            }
            installer::assets::ArtifactKind::AppImages => {
                let names: Vec<String> = e.images.iter().map(|i| i.reference.clone()).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let opts = ArchiveOptions {
                    padding_bytes: sizes.app_padding,
                    ..Default::default()
                };
                write_archive(&path, &refs, &opts)
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
    }
    let mut test_lock = lock
        .with_checksums_of(dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pin_built_here_images(&mut test_lock, dir)?;
    let lock_path = dir.join("assets.lock");
    std::fs::write(&lock_path, test_lock.to_json())
        .with_context(|| format!("write {}", lock_path.display()))?;
    Ok(Payload {
        dir: dir.to_owned(),
        lock: lock_path,
    })
}

/// A release of the payload: the stand-in stamped to report `k3s_version` in the k3s
/// binary's position (`installer_tests::standin::version::stamp`), and a lock naming that
/// version as its `k3s_version` (what the installer upgrades to). Two of these with
/// different versions are two releases of the product.
pub fn build_release(dir: &Path, standin: &Path, k3s_version: &str) -> Result<Payload> {
    fs_create(dir)?;
    let stamped = dir.join(format!("k3s-standin-{k3s_version}"));
    crate::standin::version::stamp(standin, &stamped, k3s_version)
        .with_context(|| format!("stamp {}", stamped.display()))?;
    let payload = build(&dir.join("assets"), &stamped, Sizes::default(), &[])?;
    std::fs::remove_file(&stamped)?;
    let text = std::fs::read_to_string(&payload.lock)?;
    let mut lock = installer::assets::AssetLock::parse(&text, "the payload lock")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    lock.k3s_version = k3s_version.to_owned();
    for e in &mut lock.artifacts {
        if matches!(
            e.kind,
            installer::assets::ArtifactKind::K3sBinary
                | installer::assets::ArtifactKind::K3sAirgapImages
        ) {
            e.version = k3s_version.to_owned();
        }
    }
    std::fs::write(&payload.lock, lock.to_json())
        .with_context(|| format!("write {}", payload.lock.display()))?;
    Ok(payload)
}

/// An image this project builds itself (the policy enforcer's) has no digest in the built-in
/// lock until it is built; once its archive's checksum is recorded the lock wants it pinned.
/// The lab built that archive just now, so each such image takes the ID (config digest) it
/// has in the archive, as `docker save` of a locally built image reports it.
fn pin_built_here_images(lock: &mut installer::assets::AssetLock, dir: &Path) -> Result<()> {
    for e in &mut lock.artifacts {
        if !e.images.iter().any(|i| i.digest.is_empty()) {
            continue;
        }
        let path = dir.join(&e.file);
        let found = crate::rootfs_images::read_images(&path)
            .with_context(|| format!("read the images of {}", path.display()))?;
        for i in e.images.iter_mut().filter(|i| i.digest.is_empty()) {
            let want = crate::images::normalize(&i.reference);
            let image = found
                .iter()
                .find(|f| f.name == want)
                .with_context(|| format!("{} does not contain {}", path.display(), i.reference))?;
            i.digest = image.id.clone();
        }
    }
    Ok(())
}

fn fs_create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// Appends incompressible bytes to an executable (ELF ignores trailing data), then
/// re-stamps the stand-in's version trailer, which must stay last.
fn pad_binary(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let version = crate::standin::version::current().to_string();
    let tmp = path.with_extension("padded");
    std::fs::copy(path, &tmp)?;
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&tmp)?;
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            for chunk in buf.chunks_mut(8) {
                // xorshift: incompressible, so compression on the wire cannot cheat.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let b = state.to_le_bytes();
                chunk.copy_from_slice(&b[..chunk.len()]);
            }
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    crate::standin::version::stamp(&tmp, path, &version)?;
    std::fs::remove_file(&tmp)?;
    Ok(())
}

/// The path of a binary of this workspace, built (or brought up to date) once per process:
/// tests in `installer-tests` use the real `installer` binary, which `cargo test` of this
/// package does not build.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> or target/debug/<bin>
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    // Built (or found current) once per process: `cargo test -p installer-tests` does not
    // build the installer's binary, and a binary left by an earlier build of other sources was
    // used as it was (a local CI run on a reused target directory tested the previous upgrade).
    // Every binary of the workspace in one build: each `cargo build -p <one package>` resolves
    // its dependencies' features on its own, so building them one by one compiled the shared
    // dependencies once per package.
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let st = cargo_build(&["--workspace", "--bins"])
            .status()
            .context("run cargo build")?;
        anyhow::ensure!(
            st.success(),
            "cargo build --workspace --bins failed (wanted {name})"
        );
        *built = true;
    }
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

/// `cargo build ARGS`, without the variables cargo sets for the test it runs: build scripts that
/// track one of them (ring's tracks CARGO_MANIFEST_DIR) were dirty each time the outer cargo and
/// this one alternated, so every such build recompiled ring, rustls, russh, kube and the
/// workspace (about 25 s here, once per test binary and again for the demo).
fn cargo_build(args: &[&str]) -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.arg("build").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(set_by_cargo_for_a_test) {
            build.env_remove(&k);
        }
    }
    build
}

/// One binary of the workspace built with the release profile, for a benchmark that measures it
/// (`cargo bench` runs from `target/release`, where [`workspace_binary`]'s debug build is not).
pub fn release_binary(package: &str, name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let target = dir.parent().map(Path::to_owned).unwrap_or_default();
    let st = cargo_build(&["--release", "-p", package, "--bin", name])
        .status()
        .context("run cargo build --release")?;
    anyhow::ensure!(
        st.success(),
        "cargo build --release -p {package} --bin {name} failed"
    );
    let path = target.join("release").join(name);
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

/// Whether `name` is one of the variables cargo sets for a test or a binary it runs (cargo's
/// "Environment variables Cargo sets for crates"), as opposed to one a user set to configure
/// cargo (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_PROFILE_*`, ...), which must stay.
fn set_by_cargo_for_a_test(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_variables_cargo_sets_for_a_test_are_left_out_of_the_inner_build() {
        for k in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_lab",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_a_test(k), "{k}");
        }
        for k in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_DEV_OPT_LEVEL",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_a_test(k), "{k}");
        }
    }

    /// Regression: the enforcer's lock entries (an image built here, no digest until built)
    /// made every lab payload's lock invalid once its archive had a recorded checksum, so every
    /// lab install stopped at `--assets-lock ... is not valid` before connecting.
    #[test]
    fn the_lab_payload_lock_is_valid_with_an_image_this_project_builds() {
        let dir = tempfile::tempdir().unwrap();
        let standin = dir.path().join("k3s-standin");
        std::fs::write(&standin, b"#!/bin/sh\n").unwrap();
        let payload = build(&dir.path().join("payload"), &standin, Sizes::default(), &[]).unwrap();
        let text = std::fs::read_to_string(&payload.lock).unwrap();
        let lock = installer::assets::AssetLock::parse(&text, "the lab payload lock")
            .unwrap_or_else(|e| panic!("{e}"));
        let enforcer = lock
            .entry("enforcer-amd64")
            .expect("the payload carries the enforcer's archive");
        assert!(
            enforcer
                .images
                .iter()
                .all(|i| i.digest.starts_with("sha256:")),
            "{:?}",
            enforcer.images
        );
        installer::assets::AssetStore::new(Some(&payload.dir), Some(&payload.lock))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
