//! Tests of `assets/fetch.sh` offline: the "downloads" are `file://` URLs of files the test
//! writes, so the verification and lock-update logic runs exactly as it would against
//! GitHub, without any network. Needs bash, curl, sha256sum and jq (Debian: `jq`).

#![allow(clippy::unwrap_used)] // test code: a failed fixture step should panic

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch.sh")
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(entries: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let f = Fixture { dir };
        let text = format!(
            r#"{{"schema": 1, "k3s_version": "v0", "artifacts": [{}]}}"#,
            entries.replace("@SRC@", f.src().to_str().unwrap())
        );
        std::fs::write(f.lock(), text).unwrap();
        f
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn lock(&self) -> PathBuf {
        self.dir.path().join("assets.lock")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn run(&self, extra: &[&str]) -> Output {
        let out = Command::new("bash")
            .arg(script())
            .arg("--lock")
            .arg(self.lock())
            .arg("--dir")
            .arg(self.cache())
            .args(extra)
            .env_remove("INSTALLER_ASSETS_DIR")
            .env_remove("INSTALLER_ASSETS_ARCHES")
            .output()
            .expect("bash runs");
        if String::from_utf8_lossy(&out.stderr).contains("is required") {
            panic!(
                "fetch.sh needs curl, sha256sum and jq: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }
    fn lock_json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.lock()).unwrap()).unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn entry(name: &str, arch: &str, file: &str, sha: Option<&str>) -> String {
    let (sha, state) = match sha {
        Some(s) => (format!("\"{s}\""), "published"),
        None => ("null".into(), "unverified"),
    };
    format!(
        r#"{{"name": "{name}", "kind": "k3s-binary", "arch": "{arch}", "version": "v1", "file": "{file}",
            "url": "file://@SRC@/{file}", "sha256": {sha}, "sha256_state": "{state}"}}"#
    )
}

#[test]
fn downloads_and_verifies_a_published_checksum() {
    let f = Fixture::new(&entry("k3s-amd64", "amd64", "k3s", Some(&sha(b"binary\n"))));
    std::fs::write(f.src().join("k3s"), "binary\n").unwrap();
    let out = f.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(f.cache().join("k3s")).unwrap(), b"binary\n");
    // Second run: served from the cache, still verified.
    let out = f.run(&[]);
    assert!(
        text(&out).contains("cached, sha256 verified"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_download_with_the_wrong_checksum_is_deleted_and_fails() {
    let f = Fixture::new(&entry("k3s-amd64", "amd64", "k3s", Some(&sha(b"binary\n"))));
    std::fs::write(f.src().join("k3s"), "evil\n").unwrap();
    let out = f.run(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sha256 mismatch"), "{}", text(&out));
    assert!(!f.cache().join("k3s").exists());
    assert!(!f.cache().join("k3s.part").exists());
}

#[test]
fn a_missing_checksum_fails_unless_update_lock_records_it() {
    let f = Fixture::new(&entry("app", "amd64", "app.tar", None));
    std::fs::write(f.src().join("app.tar"), "image archive\n").unwrap();
    let out = f.run(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--update-lock"), "{}", text(&out));
    assert!(!f.cache().join("app.tar").exists());

    let out = f.run(&["--update-lock"]);
    assert!(out.status.success(), "{}", text(&out));
    let lock = f.lock_json();
    let e = &lock["artifacts"][0];
    assert_eq!(e["sha256"], sha(b"image archive\n"));
    assert_eq!(e["sha256_state"], "recorded");
    assert_eq!(e["size"], 14);
    assert!(
        e["sha256_source"]
            .as_str()
            .unwrap()
            .contains("first download")
    );

    // From now on the recorded checksum is enforced like a published one.
    std::fs::remove_file(f.cache().join("app.tar")).unwrap();
    std::fs::write(f.src().join("app.tar"), "changed upstream\n").unwrap();
    let out = f.run(&["--update-lock"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("sha256 mismatch"), "{}", text(&out));
    assert_eq!(
        f.lock_json()["artifacts"][0]["sha256"],
        sha(b"image archive\n")
    );
}

#[test]
fn verify_only_detects_a_tampered_cache_file_without_downloading() {
    let f = Fixture::new(&entry("k3s-amd64", "amd64", "k3s", Some(&sha(b"binary\n"))));
    std::fs::create_dir_all(f.cache()).unwrap();
    std::fs::write(f.cache().join("k3s"), "tampered\n").unwrap();
    std::fs::write(f.src().join("k3s"), "binary\n").unwrap();
    let out = f.run(&["--verify-only"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
    assert_eq!(std::fs::read(f.cache().join("k3s")).unwrap(), b"tampered\n");
}

#[test]
fn only_the_selected_architectures_are_fetched() {
    let f = Fixture::new(&format!(
        "{},{}",
        entry("k3s-amd64", "amd64", "k3s", Some(&sha(b"a\n"))),
        entry("k3s-arm64", "arm64", "k3s-arm64", Some(&sha(b"b\n")))
    ));
    std::fs::write(f.src().join("k3s"), "a\n").unwrap();
    let out = f.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!f.cache().join("k3s-arm64").exists());
    // arm64's source is absent: asking for every arch fails on it, by name.
    let out = f.run(&["--arch", "all"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("FAIL  k3s-arm64"), "{}", text(&out));
}

#[test]
fn a_build_recipe_writes_to_out_and_is_verified() {
    let recipe = r#"{"name": "app", "kind": "app-images", "version": "1", "file": "app.tar",
        "build": "printf 'built\\n' > \"$OUT\"", "sha256": "@SHA@", "sha256_state": "published"}"#
        .replace("@SHA@", &sha(b"built\n"));
    let f = Fixture::new(&recipe);
    let out = f.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(f.cache().join("app.tar")).unwrap(),
        b"built\n"
    );
}

#[test]
fn a_path_in_a_file_name_is_refused() {
    let f = Fixture::new(&entry("x", "amd64", "../escape", Some(&sha(b"x"))));
    let out = f.run(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad file name"), "{}", text(&out));
}
