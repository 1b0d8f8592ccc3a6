//! End-to-end check of `build.rs` wiring (profile detection, environment variables, the
//! generated code): runs real `cargo build --release -p installer-assets` in a separate
//! target directory (`target/assets-build-test`, so it never disturbs the normal build).
//! The first run compiles the build script's dependencies in release mode (~20 s).

#![allow(clippy::unwrap_used)] // test code

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo_release(envs: &[(&str, &Path)], allow_missing: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace())
        .args(["build", "--release", "--offline", "-p", "installer-assets"])
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target/assets-build-test"),
        )
        .env_remove("INSTALLER_ASSETS_DIR")
        .env_remove("INSTALLER_ASSETS_LOCK")
        .env_remove("INSTALLER_ASSETS_ARCHES")
        .env_remove("INSTALLER_ALLOW_MISSING_ASSETS");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if allow_missing {
        cmd.env("INSTALLER_ALLOW_MISSING_ASSETS", "1");
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn release_builds_refuse_missing_artifacts_allow_the_override_and_embed_verified_ones() {
    let empty = tempfile::tempdir().unwrap();

    // 1. The committed lock, no artifacts: refused, naming them and the way out.
    let out = cargo_release(&[("INSTALLER_ASSETS_DIR", empty.path())], false);
    assert!(
        !out.status.success(),
        "a release build without artifacts must fail"
    );
    let err = stderr(&out);
    assert!(err.contains("k3s-amd64 (v1.36."), "{err}");
    assert!(err.contains("k3s-airgap-images-amd64"), "{err}");
    assert!(
        !err.contains("k3s-arm64 ("),
        "arm64 is not selected by default: {err}"
    );
    assert!(err.contains("INSTALLER_ALLOW_MISSING_ASSETS=1"), "{err}");

    // 2. The documented override lets it through, saying what is missing.
    let out = cargo_release(&[("INSTALLER_ASSETS_DIR", empty.path())], true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("asset k3s-amd64 not embedded"),
        "{}",
        stderr(&out)
    );

    // 3. A verified artifact (own lock via INSTALLER_ASSETS_LOCK) is embedded.
    let dir = tempfile::tempdir().unwrap();
    let data = b"stand-in k3s binary\n";
    std::fs::write(dir.path().join("k3s-amd64"), data).unwrap();
    let lock = dir.path().join("test.lock");
    std::fs::write(
        &lock,
        format!(
            r#"{{"schema": 1, "k3s_version": "v0", "artifacts": [{{"name": "k3s-amd64", "kind": "k3s-binary",
            "arch": "amd64", "version": "v0", "file": "k3s-amd64", "url": "file:///x",
            "sha256": "{}", "sha256_state": "recorded"}}]}}"#,
            hex::encode(sha2::Sha256::digest(data))
        ),
    )
    .unwrap();
    let out = cargo_release(
        &[
            ("INSTALLER_ASSETS_DIR", dir.path()),
            ("INSTALLER_ASSETS_LOCK", &lock),
        ],
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let generated = find_generated(&workspace().join("target/assets-build-test/release/build"));
    assert!(
        generated.contains(&format!(
            "include_bytes!({:?})",
            dir.path().join("k3s-amd64").to_str().unwrap()
        )),
        "{generated}"
    );

    // 4. The same file, changed: refused.
    std::fs::write(dir.path().join("k3s-amd64"), b"tampered\n").unwrap();
    let out = cargo_release(
        &[
            ("INSTALLER_ASSETS_DIR", dir.path()),
            ("INSTALLER_ASSETS_LOCK", &lock),
        ],
        false,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the lock says"), "{}", stderr(&out));
}

/// The most recently written `embedded.rs` of the installer-assets build script.
fn find_generated(build_dir: &Path) -> String {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(build_dir).unwrap().flatten() {
        let p = entry.path().join("out/embedded.rs");
        if let Ok(meta) = std::fs::metadata(&p) {
            let t = meta.modified().unwrap();
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, p));
            }
        }
    }
    std::fs::read_to_string(newest.unwrap().1).unwrap()
}
