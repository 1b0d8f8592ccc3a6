//! The embedding decision, shared by `build.rs` (which runs it) and the crate's unit tests
//! (which prove it): read the asset lock, look for each artifact in the cache directory,
//! verify its SHA-256, and decide per artifact whether it is embedded or missing and why.
//!
//! Rules (docs/assets.md):
//! - an artifact is embedded only when its file exists and its SHA-256 equals the lock's;
//! - a release build fails when a selected artifact is missing, mismatched, or has no
//!   checksum in the lock, unless `INSTALLER_ALLOW_MISSING_ASSETS=1`;
//! - a debug build never fails for a missing artifact; it records why it is missing, and
//!   `installer version` reports it.
//!
//! This file is compiled twice (as a module of `build.rs` and, under `cfg(test)`, of the
//! library), so it uses nothing but std, serde_json, sha2 and hex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The fields of a lock entry the build needs (the installer parses the full schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    pub file: String,
    pub sha256: Option<String>,
    pub state: String,
}

/// Parses the lock file text into entries, with a message naming the field on error.
pub fn parse_lock(text: &str) -> Result<Vec<Entry>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if doc.get("schema").and_then(|v| v.as_u64()) != Some(1) {
        return Err("`schema` must be 1".into());
    }
    let arts = doc
        .get("artifacts")
        .and_then(|v| v.as_array())
        .ok_or("`artifacts` must be a list")?;
    let mut out = Vec::new();
    for (i, a) in arts.iter().enumerate() {
        let field = |k: &str| a.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let name = field("name").ok_or(format!("artifacts[{i}]: `name` is missing"))?;
        let file = field("file").ok_or(format!("artifact {name}: `file` is missing"))?;
        if file.is_empty() || file.starts_with('.') || file.contains('/') || file.contains('\\') {
            return Err(format!(
                "artifact {name}: `file` must be a plain file name, not {file:?}"
            ));
        }
        let sha256 = field("sha256").filter(|s| !s.is_empty());
        if let Some(s) = &sha256
            && (s.len() != 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(format!(
                "artifact {name}: `sha256` must be 64 lower-case hex digits"
            ));
        }
        let state = field("sha256_state").unwrap_or_else(|| "unverified".into());
        match (&sha256, state.as_str()) {
            (Some(_), "published" | "recorded") | (None, "unverified") => {}
            (Some(_), "unverified") => {
                return Err(format!(
                    "artifact {name}: has a sha256 but sha256_state is `unverified`"
                ));
            }
            (None, _) => {
                return Err(format!(
                    "artifact {name}: no sha256, so sha256_state must be `unverified`"
                ));
            }
            (Some(_), other) => {
                return Err(format!(
                    "artifact {name}: unknown sha256_state {other:?} (published, recorded, unverified)"
                ));
            }
        }
        out.push(Entry {
            version: field("version").unwrap_or_default(),
            arch: field("arch"),
            name,
            file,
            sha256,
            state,
        });
    }
    Ok(out)
}

/// What the build does with one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Embed the file at `path` (verified).
    Embed { path: PathBuf, sha256: String },
    /// Not embedded; `reason` is shown by `installer version`.
    Missing { reason: String },
    /// Not wanted in this build (architecture not selected).
    Skipped { reason: String },
}

/// The settings a build runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where artifacts are looked for.
    pub dir: PathBuf,
    /// Architectures to embed (`INSTALLER_ASSETS_ARCHES`, default `amd64`); `all` selects every one.
    pub arches: Vec<String>,
    /// `PROFILE=release`.
    pub release: bool,
    /// `INSTALLER_ALLOW_MISSING_ASSETS=1`.
    pub allow_missing: bool,
}

/// Computes the SHA-256 of a file; the build passes a caching version of [`sha256_file`].
pub type Hasher<'a> = dyn FnMut(&Path) -> std::io::Result<String> + 'a;

/// The decision for every lock entry, in lock order.
pub fn plan(
    entries: &[Entry],
    settings: &Settings,
    hasher: &mut Hasher<'_>,
) -> Result<Vec<(Entry, Decision)>, String> {
    let mut out = Vec::new();
    let mut blocking = Vec::new();
    for e in entries {
        let wanted = match &e.arch {
            None => true,
            Some(a) => settings.arches.iter().any(|s| s == "all" || s == a),
        };
        if !wanted {
            out.push((
                e.clone(),
                Decision::Skipped {
                    reason: format!(
                        "architecture {} not selected for this build (INSTALLER_ASSETS_ARCHES={})",
                        e.arch.as_deref().unwrap_or("-"),
                        settings.arches.join(",")
                    ),
                },
            ));
            continue;
        }
        let path = settings.dir.join(&e.file);
        let decision = match &e.sha256 {
            None => Decision::Missing {
                reason: format!(
                    "the lock has no checksum for it (sha256_state: {}); run `assets/fetch.sh --update-lock --only {}`",
                    e.state, e.name
                ),
            },
            Some(expected) => {
                if !path.is_file() {
                    Decision::Missing {
                        reason: format!(
                            "{} not found; run `assets/fetch.sh` and rebuild, or pass `--assets DIR`",
                            path.display()
                        ),
                    }
                } else {
                    let actual = hasher(&path)
                        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
                    if &actual == expected {
                        Decision::Embed {
                            path: path.clone(),
                            sha256: actual,
                        }
                    } else {
                        Decision::Missing {
                            reason: format!(
                                "{} has SHA-256 {actual}, the lock says {expected}; delete it and run `assets/fetch.sh`",
                                path.display()
                            ),
                        }
                    }
                }
            }
        };
        if let Decision::Missing { reason } = &decision {
            blocking.push(format!("  {} ({}): {reason}", e.name, e.version));
        }
        out.push((e.clone(), decision));
    }
    if settings.release && !settings.allow_missing && !blocking.is_empty() {
        return Err(format!(
            "a release build must embed every artifact of the asset lock, and these are missing or unverified:\n{}\n\
             hint: run `assets/fetch.sh` (on a machine with internet) and build again; \
             to build a release without them anyway (benchmarks, CI), set INSTALLER_ALLOW_MISSING_ASSETS=1",
            blocking.join("\n")
        ));
    }
    Ok(out)
}

/// The Rust source the build writes to `$OUT_DIR/embedded.rs`.
pub fn generate(lock_path: &Path, decisions: &[(Entry, Decision)]) -> Result<String, String> {
    let lit = |p: &Path| -> Result<String, String> {
        p.to_str()
            .map(|s| format!("{s:?}"))
            .ok_or_else(|| format!("path is not UTF-8: {}", p.display()))
    };
    let mut s =
        String::from("// @generated by assets/build.rs from the asset lock. Do not edit.\n");
    let _ = writeln!(s, "/// The asset lock this build used.");
    let _ = writeln!(
        s,
        "pub const LOCK_JSON: &str = include_str!({});",
        lit(lock_path)?
    );
    let _ = writeln!(s, "/// The artifacts embedded in this build.");
    let _ = writeln!(s, "pub static EMBEDDED: &[Embedded] = &[");
    for (e, d) in decisions {
        if let Decision::Embed { path, sha256 } = d {
            let _ = writeln!(
                s,
                "    Embedded {{ name: {:?}, version: {:?}, file: {:?}, sha256: {:?}, bytes: include_bytes!({}) }},",
                e.name,
                e.version,
                e.file,
                sha256,
                lit(path)?
            );
        }
    }
    let _ = writeln!(s, "];");
    let _ = writeln!(s, "/// The lock entries this build did not embed, and why.");
    let _ = writeln!(s, "pub static NOT_EMBEDDED: &[NotEmbedded] = &[");
    for (e, d) in decisions {
        if let Decision::Missing { reason } | Decision::Skipped { reason } = d {
            let _ = writeln!(
                s,
                "    NotEmbedded {{ name: {:?}, reason: {:?} }},",
                e.name, reason
            );
        }
    }
    let _ = writeln!(s, "];");
    Ok(s)
}

/// Streams a file through SHA-256 (1 MiB at a time; never the whole file in memory).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A cache of verified checksums keyed by (path, length, mtime), kept in `$OUT_DIR` so a
/// rebuild does not hash 300 MB again when nothing changed.
#[derive(Debug, Default)]
pub struct HashCache {
    entries: BTreeMap<String, (u64, u128, String)>,
}

impl HashCache {
    /// Loads the cache file; a missing or unreadable cache is an empty one.
    pub fn load(path: &Path) -> Self {
        let mut entries = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let parts: Vec<&str> = line.splitn(4, '\t').collect();
                if let [len, mtime, sha, p] = parts[..]
                    && let (Ok(len), Ok(mtime)) = (len.parse(), mtime.parse())
                {
                    entries.insert(p.to_owned(), (len, mtime, sha.to_owned()));
                }
            }
        }
        HashCache { entries }
    }

    /// Writes the cache file (best effort).
    pub fn save(&self, path: &Path) {
        let mut s = String::new();
        for (p, (len, mtime, sha)) in &self.entries {
            let _ = writeln!(s, "{len}\t{mtime}\t{sha}\t{p}");
        }
        let _ = std::fs::write(path, s);
    }

    /// The file's SHA-256, from the cache when its length and mtime are unchanged.
    pub fn sha256(&mut self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = path.display().to_string();
        if let Some((len, m, sha)) = self.entries.get(&key)
            && *len == meta.len()
            && *m == mtime
            && mtime != 0
        {
            return Ok(sha.clone());
        }
        let sha = sha256_file(path)?;
        self.entries.insert(key, (meta.len(), mtime, sha.clone()));
        Ok(sha)
    }
}
