//! Unit tests of the embedding decision (`plan.rs`, the code `build.rs` runs).
#![allow(clippy::unwrap_used)] // test code: a failed fixture step should panic

use crate::plan::{self, Decision, Entry, Settings};
use std::path::{Path, PathBuf};

const SHA_A: &str = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"; // "foo\n"

fn lock(entries: &str) -> String {
    format!(r#"{{"schema": 1, "k3s_version": "v0", "artifacts": [{entries}]}}"#)
}

fn settings(dir: &Path, release: bool, allow_missing: bool) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        arches: vec!["amd64".into()],
        release,
        allow_missing,
    }
}

fn one(name: &str, arch: &str, sha: Option<&str>) -> String {
    let (sha, state) = match sha {
        Some(s) => (format!("\"{s}\""), "published"),
        None => ("null".into(), "unverified"),
    };
    format!(
        r#"{{"name": "{name}", "kind": "k3s-binary", "arch": "{arch}", "version": "v1", "file": "{name}.bin",
            "url": "https://example.invalid/{name}", "sha256": {sha}, "sha256_state": "{state}"}}"#
    )
}

fn run(
    text: &str,
    dir: &Path,
    release: bool,
    allow: bool,
) -> Result<Vec<(Entry, Decision)>, String> {
    let entries = plan::parse_lock(text)?;
    plan::plan(
        &entries,
        &settings(dir, release, allow),
        &mut plan::sha256_file,
    )
}

#[test]
fn the_committed_lock_parses_and_every_k3s_entry_has_a_published_checksum() {
    let text = include_str!("../assets.lock");
    let entries = plan::parse_lock(text).expect("the committed lock is valid");
    for name in [
        "k3s-amd64",
        "k3s-airgap-images-amd64",
        "k3s-arm64",
        "k3s-airgap-images-arm64",
    ] {
        let e = entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is in the lock"));
        assert_eq!(e.state, "published", "{name}");
        assert_eq!(e.sha256.as_deref().map(str::len), Some(64), "{name}");
        assert!(e.version.starts_with("v1.36."), "{name}: {}", e.version);
    }
}

#[test]
fn a_verified_file_is_embedded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64.bin"), "foo\n").unwrap();
    let d = run(
        &lock(&one("k3s-amd64", "amd64", Some(SHA_A))),
        dir.path(),
        true,
        false,
    )
    .unwrap();
    assert_eq!(
        d[0].1,
        Decision::Embed {
            path: dir.path().join("k3s-amd64.bin"),
            sha256: SHA_A.into()
        }
    );
}

#[test]
fn debug_build_without_artifacts_succeeds_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let text = lock(&format!(
        "{},{}",
        one("k3s-amd64", "amd64", Some(SHA_A)),
        one("app", "amd64", None)
    ));
    let d = run(&text, dir.path(), false, false).unwrap();
    match &d[0].1 {
        Decision::Missing { reason } => {
            assert!(reason.contains("not found"), "{reason}");
            assert!(reason.contains("assets/fetch.sh"), "{reason}");
        }
        other => panic!("expected missing, got {other:?}"),
    }
    match &d[1].1 {
        Decision::Missing { reason } => assert!(reason.contains("--update-lock"), "{reason}"),
        other => panic!("expected missing, got {other:?}"),
    }
}

#[test]
fn release_build_refuses_a_missing_artifact_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        &lock(&one("k3s-amd64", "amd64", Some(SHA_A))),
        dir.path(),
        true,
        false,
    )
    .unwrap_err();
    assert!(err.contains("k3s-amd64"), "{err}");
    assert!(err.contains("INSTALLER_ALLOW_MISSING_ASSETS=1"), "{err}");
}

#[test]
fn release_build_refuses_an_unverified_entry_even_when_its_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.bin"), "foo\n").unwrap();
    let err = run(&lock(&one("app", "amd64", None)), dir.path(), true, false).unwrap_err();
    assert!(err.contains("app"), "{err}");
    assert!(err.contains("no checksum"), "{err}");
}

#[test]
fn release_build_refuses_a_file_whose_checksum_differs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64.bin"), "tampered\n").unwrap();
    let err = run(
        &lock(&one("k3s-amd64", "amd64", Some(SHA_A))),
        dir.path(),
        true,
        false,
    )
    .unwrap_err();
    assert!(err.contains("the lock says"), "{err}");
}

#[test]
fn allow_missing_lets_a_release_build_through_without_embedding() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64.bin"), "tampered\n").unwrap();
    let d = run(
        &lock(&one("k3s-amd64", "amd64", Some(SHA_A))),
        dir.path(),
        true,
        true,
    )
    .unwrap();
    assert!(matches!(d[0].1, Decision::Missing { .. }), "{:?}", d[0].1);
}

#[test]
fn other_architectures_are_skipped_not_required() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k3s-amd64.bin"), "foo\n").unwrap();
    let text = lock(&format!(
        "{},{}",
        one("k3s-amd64", "amd64", Some(SHA_A)),
        one("k3s-arm64", "arm64", Some(SHA_A))
    ));
    let d = run(&text, dir.path(), true, false).unwrap();
    assert!(matches!(d[0].1, Decision::Embed { .. }));
    assert!(matches!(d[1].1, Decision::Skipped { .. }), "{:?}", d[1].1);
}

#[test]
fn lock_errors_name_the_artifact_and_field() {
    let bad_state =
        lock(r#"{"name": "x", "file": "x", "sha256": null, "sha256_state": "published"}"#);
    assert!(
        plan::parse_lock(&bad_state)
            .unwrap_err()
            .contains("artifact x")
    );
    let bad_file = lock(r#"{"name": "y", "file": "../etc/passwd", "sha256_state": "unverified"}"#);
    assert!(
        plan::parse_lock(&bad_file)
            .unwrap_err()
            .contains("plain file name")
    );
    let bad_sha =
        lock(r#"{"name": "z", "file": "z", "sha256": "ABC", "sha256_state": "published"}"#);
    assert!(
        plan::parse_lock(&bad_sha)
            .unwrap_err()
            .contains("64 lower-case hex")
    );
}

#[test]
fn generated_code_includes_the_file_and_lists_the_missing() {
    let decisions = vec![
        (
            Entry {
                name: "a".into(),
                version: "1".into(),
                arch: None,
                file: "a.bin".into(),
                sha256: Some(SHA_A.into()),
                state: "published".into(),
            },
            Decision::Embed {
                path: PathBuf::from("/cache/a.bin"),
                sha256: SHA_A.into(),
            },
        ),
        (
            Entry {
                name: "b".into(),
                version: "2".into(),
                arch: None,
                file: "b.bin".into(),
                sha256: None,
                state: "unverified".into(),
            },
            Decision::Missing {
                reason: "no \"checksum\"".into(),
            },
        ),
    ];
    let code = plan::generate(Path::new("/x/assets.lock"), &decisions).unwrap();
    assert!(code.contains(r#"include_bytes!("/cache/a.bin")"#), "{code}");
    assert!(code.contains(r#"include_str!("/x/assets.lock")"#), "{code}");
    assert!(
        code.contains(r#"NotEmbedded { name: "b", reason: "no \"checksum\"" }"#),
        "{code}"
    );
}

#[test]
fn hash_cache_reuses_a_checksum_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, "foo\n").unwrap();
    let mut cache = plan::HashCache::default();
    assert_eq!(cache.sha256(&f).unwrap(), SHA_A);
    let store = dir.path().join("cache.tsv");
    cache.save(&store);
    let mut loaded = plan::HashCache::load(&store);
    assert_eq!(loaded.sha256(&f).unwrap(), SHA_A);
    std::fs::write(&f, "bar and more\n").unwrap();
    assert_ne!(loaded.sha256(&f).unwrap(), SHA_A);
}

#[test]
fn this_debug_build_reports_every_lock_entry_as_embedded_or_not() {
    // Whatever this build found, each entry of the lock it used is accounted for exactly once.
    let entries = plan::parse_lock(crate::LOCK_JSON).unwrap();
    for e in &entries {
        let embedded = crate::find(&e.name).is_some();
        let missing = crate::not_embedded_reason(&e.name).is_some();
        assert!(
            embedded ^ missing,
            "{}: embedded={embedded} missing={missing}",
            e.name
        );
    }
}
