//! Embeds the verified artifacts of the asset lock with `include_bytes!`.
//!
//! Inputs (all documented in docs/assets.md):
//! - `assets/assets.lock`, or the file named by `INSTALLER_ASSETS_LOCK`;
//! - the artifacts in `assets/cache/`, or in the directory named by `INSTALLER_ASSETS_DIR`
//!   (filled by `assets/fetch.sh`);
//! - `INSTALLER_ASSETS_ARCHES` (comma list, default `amd64`, or `all`): which architectures
//!   this build carries;
//! - `INSTALLER_ALLOW_MISSING_ASSETS=1`: let a release build finish without them.
//!
//! Output: `$OUT_DIR/embedded.rs`, included by `src/lib.rs`. The decision logic lives in
//! `src/plan.rs` so the crate's unit tests exercise exactly what runs here.

#[path = "src/plan.rs"]
#[allow(dead_code)]
mod plan;

use std::path::{Path, PathBuf};

fn main() {
    if let Err(msg) = run() {
        // A build script reports a fatal error by failing; cargo shows stderr.
        eprintln!("\nerror: installer-assets: {msg}\n");
        std::process::exit(1);
    }
}

fn env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").map_err(|_| "CARGO_MANIFEST_DIR is not set")?,
    );
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|_| "OUT_DIR is not set")?);

    let lock_path = env("INSTALLER_ASSETS_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("assets.lock"));
    let lock_path = absolute(&lock_path)?;
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let dir = env("INSTALLER_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("cache"));
    let dir = absolute(&dir)?;
    // Watch the directory itself (cargo then notices files appearing or changing in it).
    // When it does not exist yet, watch the crate directory, where assets/cache/ appears.
    if dir.is_dir() {
        println!("cargo:rerun-if-changed={}", dir.display());
    } else {
        println!("cargo:rerun-if-changed={}", manifest_dir.display());
    }

    let settings = plan::Settings {
        dir,
        arches: env("INSTALLER_ASSETS_ARCHES")
            .unwrap_or_else(|| "amd64".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        release: std::env::var("PROFILE").as_deref() == Ok("release"),
        allow_missing: env("INSTALLER_ALLOW_MISSING_ASSETS").as_deref() == Some("1"),
    };

    let text = std::fs::read_to_string(&lock_path)
        .map_err(|e| format!("cannot read the asset lock {}: {e}", lock_path.display()))?;
    let entries =
        plan::parse_lock(&text).map_err(|e| format!("asset lock {}: {e}", lock_path.display()))?;

    let cache_path = out_dir.join("verified-sha256.tsv");
    let mut cache = plan::HashCache::load(&cache_path);
    let decisions = plan::plan(&entries, &settings, &mut |p: &Path| cache.sha256(p))?;
    cache.save(&cache_path);

    // Debug builds stay quiet (`installer version` lists what is missing); a release build
    // that got here with INSTALLER_ALLOW_MISSING_ASSETS=1 says what it lacks.
    for (e, d) in decisions.iter().filter(|_| settings.release) {
        if let plan::Decision::Missing { reason } = d {
            println!("cargo:warning=asset {} not embedded: {reason}", e.name);
        }
    }
    let code = plan::generate(&lock_path, &decisions)?;
    let target = out_dir.join("embedded.rs");
    // Rewrite only on change, so an unchanged plan does not recompile the crate.
    if std::fs::read_to_string(&target).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&target, code)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))
}
