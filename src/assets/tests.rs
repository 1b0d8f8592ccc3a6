#![allow(clippy::unwrap_used)] // test code

use super::*;

const FOO_SHA: &str = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"; // "foo\n"
const BAR_SHA: &str = "7d865e959b2466918c9863afca942d0fb89d7c9ac0c99bafc3749504ded97730"; // "bar\n"
static FOO: &[u8] = b"foo\n";

fn lock_with(k3s_sha: Option<&str>, extra: &str) -> AssetLock {
    let (sha, state) = match k3s_sha {
        Some(s) => (format!("\"{s}\""), "published"),
        None => ("null".into(), "unverified"),
    };
    let text = format!(
        r#"{{"schema": 1, "k3s_version": "v1.36.4+k3s1", "artifacts": [
        {{"name": "k3s-amd64", "kind": "k3s-binary", "arch": "amd64", "version": "v1.36.4+k3s1",
          "file": "k3s-amd64", "url": "https://example.invalid/k3s", "sha256": {sha}, "sha256_state": "{state}"}}
        {extra}]}}"#
    );
    AssetLock::parse(&text, "test lock").unwrap()
}

fn app_entry(name: &str, arch: Option<&str>, sha: &str) -> String {
    let arch = arch.map_or("null".to_string(), |a| format!("\"{a}\""));
    format!(
        r#",{{"name": "{name}", "kind": "app-images", "arch": {arch}, "version": "1.0", "file": "{name}.tar",
           "build": "true", "images": [{{"ref": "docker.io/x/{name}:1.0", "digest": "sha256:{FOO_SHA}"}}],
           "sha256": "{sha}", "sha256_state": "recorded"}}"#
    )
}

fn embedded_foo() -> Vec<EmbeddedArtifact> {
    vec![EmbeddedArtifact {
        name: "k3s-amd64",
        sha256: FOO_SHA,
        bytes: FOO,
    }]
}

#[test]
fn the_built_in_lock_is_valid_and_pins_k3s_1_36_for_both_arches() {
    let lock = AssetLock::parse(installer_assets::LOCK_JSON, "built-in").unwrap();
    assert!(
        lock.k3s_version.starts_with("v1.36."),
        "{}",
        lock.k3s_version
    );
    for arch in [Arch::Amd64, Arch::Arm64] {
        for kind in [ArtifactKind::K3sBinary, ArtifactKind::K3sAirgapImages] {
            let e = lock.k3s_entry(kind, arch).unwrap();
            assert_eq!(e.sha256_state, Sha256State::Published, "{}", e.name);
            assert!(e.sha256_source.as_deref().unwrap().contains("sha256sum-"));
        }
    }
}

#[test]
fn inventory_lists_every_lock_entry_and_agrees_with_the_build() {
    let inv = inventory();
    let names: Vec<&str> = inv.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"k3s-amd64"), "{names:?}");
    assert!(names.contains(&"k3s-airgap-images-arm64"), "{names:?}");
    for s in &inv {
        assert_eq!(s.embedded, installer_assets::find(&s.name).is_some());
        assert_eq!(s.embedded, missing_reason(&s.name).is_none(), "{}", s.name);
        // Entries not yet built (`sha256_state: unverified`, e.g. application image
        // archives) have no checksum and are never embedded.
        if s.sha256.is_empty() {
            assert!(!s.embedded, "{}", s.name);
        } else {
            assert_eq!(s.sha256.len(), 64);
        }
    }
}

#[test]
fn arch_from_uname() {
    assert_eq!(Arch::from_uname("x86_64\n"), Some(Arch::Amd64));
    assert_eq!(Arch::from_uname("aarch64"), Some(Arch::Arm64));
    assert_eq!(Arch::from_uname("armv7l"), None);
    assert_eq!(Arch::Arm64.to_string(), "arm64");
}

#[test]
fn a_file_from_the_assets_dir_is_verified_and_streamed_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "foo\n").unwrap();
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "test lock",
        Some(dir.path().into()),
        vec![],
    );
    let r = store.k3s_binary(Arch::Amd64).unwrap();
    assert_eq!(r.sha256, FOO_SHA);
    assert_eq!(r.size, 4);
    assert_eq!(r.host_path(), "/usr/local/bin/k3s");
    assert_eq!(r.host_mode(), 0o755);
    match &r.source {
        UploadSource::File { path, sha256 } => {
            assert_eq!(path, &dir.path().join("k3s-amd64"));
            assert_eq!(sha256.as_deref(), Some(FOO_SHA));
        }
        other => panic!("expected a file source, got {other:?}"),
    }
}

#[test]
fn a_file_that_does_not_match_the_lock_is_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "bar\n").unwrap();
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "--assets-lock lab.lock",
        Some(dir.path().into()),
        embedded_foo(),
    );
    let err = store.k3s_binary(Arch::Amd64).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("k3s-amd64"), "{msg}");
    assert!(msg.contains(BAR_SHA), "{msg}");
    assert!(msg.contains("--assets-lock lab.lock"), "{msg}");
    assert!(err.hint().unwrap().contains("--assets-lock"));
}

#[test]
fn embedded_bytes_are_used_when_the_lock_matches() {
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "built-in",
        None,
        embedded_foo(),
    );
    let r = store.k3s_binary(Arch::Amd64).unwrap();
    assert_eq!(r.origin, ArtifactOrigin::Embedded);
    match r.source {
        UploadSource::Static { bytes, sha256 } => {
            assert_eq!(bytes, FOO);
            assert!(
                std::ptr::eq(bytes, FOO),
                "streamed from the static, not copied"
            );
            assert_eq!(sha256.as_deref(), Some(FOO_SHA));
        }
        other => panic!("expected static, got {other:?}"),
    }
}

#[test]
fn an_assets_dir_file_wins_over_the_embedded_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "foo\n").unwrap();
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "built-in",
        Some(dir.path().into()),
        embedded_foo(),
    );
    let r = store.k3s_binary(Arch::Amd64).unwrap();
    assert!(
        matches!(r.origin, ArtifactOrigin::File(_)),
        "{:?}",
        r.origin
    );
}

#[test]
fn an_override_lock_with_other_checksums_does_not_use_the_embedded_copy() {
    let store = AssetStore::from_parts(
        lock_with(Some(BAR_SHA), ""),
        "--assets-lock lab.lock",
        None,
        embedded_foo(),
    );
    let err = store.k3s_binary(Arch::Amd64).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("does not match the lock in effect"), "{msg}");
}

#[test]
fn a_missing_artifact_names_itself_and_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "built-in",
        Some(dir.path().into()),
        vec![],
    );
    let err = store.k3s_binary(Arch::Amd64).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("artifact k3s-amd64 (k3s-amd64)"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    let hint = err.hint().unwrap();
    assert!(hint.contains("--assets DIR"), "{hint}");
    assert!(hint.contains("assets/fetch.sh"), "{hint}");
}

#[test]
fn an_unverified_entry_is_never_used_even_if_the_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "foo\n").unwrap();
    let store = AssetStore::from_parts(
        lock_with(None, ""),
        "built-in",
        Some(dir.path().into()),
        vec![],
    );
    let err = store.k3s_binary(Arch::Amd64).unwrap_err();
    assert!(matches!(err, AssetError::Unverified { .. }), "{err}");
    assert!(err.hint().unwrap().contains("--update-lock"));
}

#[test]
fn an_architecture_the_lock_lacks_is_reported() {
    let store = AssetStore::from_parts(lock_with(Some(FOO_SHA), ""), "built-in", None, vec![]);
    let err = store.airgap_images(Arch::Arm64).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no entry for the k3s airgap images for arm64 in built-in"
    );
}

#[test]
fn app_archives_are_chosen_by_architecture() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["gw-amd64.tar", "gw-arm64.tar", "common.tar"] {
        std::fs::write(dir.path().join(f), "foo\n").unwrap();
    }
    let extra = format!(
        "{}{}{}",
        app_entry("gw-amd64", Some("amd64"), FOO_SHA),
        app_entry("gw-arm64", Some("arm64"), FOO_SHA),
        app_entry("common", None, FOO_SHA)
    );
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), &extra),
        "t",
        Some(dir.path().into()),
        vec![],
    );
    let names: Vec<String> = store
        .app_image_archives(Arch::Amd64)
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["gw-amd64", "common"]);
    let r = store.resolve("common").unwrap();
    assert_eq!(
        r.host_path(),
        "/var/lib/rancher/k3s/agent/images/common.tar"
    );
    assert_eq!(r.host_mode(), 0o644);
}

#[test]
fn resolving_twice_hashes_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k3s-amd64");
    std::fs::write(&f, "foo\n").unwrap();
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), ""),
        "t",
        Some(dir.path().into()),
        vec![],
    );
    store.k3s_binary(Arch::Amd64).unwrap();
    // Had it hashed again, the changed file would now fail verification.
    std::fs::write(&f, "changed\n").unwrap();
    assert_eq!(store.k3s_binary(Arch::Amd64).unwrap().sha256, FOO_SHA);
}

#[test]
fn lock_validation_reports_every_problem_at_once() {
    let text = format!(
        r#"{{"schema": 1, "k3s_version": "v1.36.4+k3s1", "artifacts": [
        {{"name": "a", "kind": "k3s-binary", "arch": "amd64", "version": "v1.35.0+k3s1", "file": "../a",
          "url": "u", "sha256": null, "sha256_state": "published"}},
        {{"name": "a", "kind": "app-images", "version": "1", "file": "a.tar",
          "images": [{{"ref": "x", "digest": "latest"}}], "sha256": "{FOO_SHA}", "sha256_state": "recorded"}}
        ]}}"#
    );
    let err = AssetLock::parse(&text, "lab.lock").unwrap_err();
    let msg = err.to_string();
    for needle in [
        "lab.lock is not valid",
        "plain file name",
        "sha256_state must be `unverified`",
        "differs from k3s_version",
        "used twice",
        "give `url` or `build`",
        "needs a digest",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
}

#[test]
fn unknown_lock_fields_are_refused_with_a_position() {
    let err = AssetLock::parse(
        r#"{"schema": 1, "k3s_version": "v", "artifacts": [], "extra": 1}"#,
        "x",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn store_new_reads_an_override_lock_and_checks_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let lock_path = dir.path().join("lab.lock");
    std::fs::write(
        &lock_path,
        serde_json::to_string(&lock_with(Some(FOO_SHA), "")).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "foo\n").unwrap();
    let store = AssetStore::new(Some(dir.path()), Some(&lock_path)).unwrap();
    assert_eq!(store.k3s_version(), "v1.36.4+k3s1");
    assert!(store.k3s_binary(Arch::Amd64).is_ok());
    let err = AssetStore::new(Some(&dir.path().join("nope")), None).unwrap_err();
    assert!(err.to_string().contains("no such directory"), "{err}");
}

#[test]
fn a_test_lock_for_a_directory_keeps_the_names_and_takes_the_files_checksums() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64"), "bar\n").unwrap();
    let builtin = AssetLock::parse(installer_assets::LOCK_JSON, "built-in").unwrap();
    let lab = builtin.with_checksums_of(dir.path()).unwrap();
    assert_eq!(lab.k3s_version, builtin.k3s_version);
    assert_eq!(lab.artifacts.len(), 1, "entries without a file are dropped");
    assert_eq!(lab.artifacts[0].sha256.as_deref(), Some(BAR_SHA));
    assert_eq!(lab.artifacts[0].sha256_state, Sha256State::Recorded);
    // It round-trips through the lock format and then verifies the directory.
    let path = dir.path().join("lab.lock");
    std::fs::write(&path, lab.to_json()).unwrap();
    let store = AssetStore::new(Some(dir.path()), Some(&path)).unwrap();
    let r = store.k3s_binary(Arch::Amd64).unwrap();
    assert_eq!(r.sha256, BAR_SHA);
}

#[test]
fn available_arches_need_both_k3s_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let images =
        r#",{"name": "k3s-airgap-images-amd64", "kind": "k3s-airgap-images", "arch": "amd64",
        "version": "v1.36.4+k3s1", "file": "images.tar.zst", "url": "u",
        "sha256": "@SHA@", "sha256_state": "published"}"#
            .replace("@SHA@", FOO_SHA);
    let store = AssetStore::from_parts(
        lock_with(Some(FOO_SHA), &images),
        "t",
        Some(dir.path().into()),
        embedded_foo(),
    );
    assert_eq!(store.available_arches(), vec![], "images missing");
    std::fs::write(dir.path().join("images.tar.zst"), "foo\n").unwrap();
    assert_eq!(store.available_arches(), vec![Arch::Amd64]);
}

#[test]
fn arch_converts_from_and_to_host_facts() {
    use crate::host::facts::Arch as HostArch;
    assert_eq!(Arch::from_facts(&HostArch::Arm64), Some(Arch::Arm64));
    assert_eq!(Arch::from_facts(&HostArch::Other("riscv64".into())), None);
    assert_eq!(HostArch::from(Arch::Amd64), HostArch::Amd64);
}
