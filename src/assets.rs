//! The artifacts the installer carries (k3s binary, k3s airgap images, application image
//! archives) and where each one comes from at run time.
//!
//! The asset lock (`assets/assets.lock`, see docs/assets.md) names every artifact with its
//! SHA-256. A build that found them verified embeds them (crate `installer-assets`); a
//! build without them still works and takes them from `--assets DIR`, verified against the
//! lock, or against an override lock given with `--assets-lock FILE` (how the lab hands the
//! installer the k3s stand-in and small test image archives: same names, own checksums).
//!
//! The [`AssetStore`] turns "the k3s binary for arm64" into an [`UploadSource`] plus its
//! checksum. Embedded bytes are streamed from the binary as they are; files are streamed
//! from disk. Nothing is extracted, and no file is ever read into memory whole.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

use crate::host::UploadSource;
use crate::k3s::paths;

/// What `installer version` shows for each artifact of the built-in lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactStatus {
    pub name: String,
    pub version: String,
    /// The lock's SHA-256, empty when the lock has none (unverified).
    pub sha256: String,
    /// Whether this binary carries it.
    pub embedded: bool,
}

/// Every artifact of the lock this binary was built with, embedded or not.
pub fn inventory() -> Vec<ArtifactStatus> {
    match AssetLock::parse(installer_assets::LOCK_JSON, "the built-in asset lock") {
        Ok(lock) => lock
            .artifacts
            .iter()
            .map(|e| ArtifactStatus {
                name: e.name.clone(),
                version: e.version.clone(),
                sha256: e.sha256.clone().unwrap_or_default(),
                embedded: installer_assets::find(&e.name).is_some(),
            })
            .collect(),
        // Unreachable in practice (the build validated the same text); list what we carry.
        Err(_) => installer_assets::EMBEDDED
            .iter()
            .map(|e| ArtifactStatus {
                name: e.name.into(),
                version: e.version.into(),
                sha256: e.sha256.into(),
                embedded: true,
            })
            .collect(),
    }
}

/// Why this build does not carry the artifact `name` (for `installer version`).
pub fn missing_reason(name: &str) -> Option<&'static str> {
    installer_assets::not_embedded_reason(name)
}

/// A CPU architecture, named as k3s names its release assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// From `uname -m` (`x86_64`, `aarch64`) or a k3s name (`amd64`, `arm64`);
    /// install.sh `setup_verify_arch` maps them the same way.
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::Amd64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The artifact architecture for a host's gathered architecture (`None` for one the
    /// installer has no k3s for).
    pub fn from_facts(arch: &crate::host::facts::Arch) -> Option<Arch> {
        match arch {
            crate::host::facts::Arch::Amd64 => Some(Arch::Amd64),
            crate::host::facts::Arch::Arm64 => Some(Arch::Arm64),
            crate::host::facts::Arch::Other(_) => None,
        }
    }
}

impl From<Arch> for crate::host::facts::Arch {
    fn from(a: Arch) -> Self {
        match a {
            Arch::Amd64 => crate::host::facts::Arch::Amd64,
            Arch::Arm64 => crate::host::facts::Arch::Arm64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an artifact is, which decides where it lands on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// `/usr/local/bin/k3s`.
    K3sBinary,
    /// k3s's own images, into the images directory.
    K3sAirgapImages,
    /// An application image archive, into the images directory.
    AppImages,
}

/// How far a lock entry's checksum can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sha256State {
    /// Copied from the upstream's own checksum file (`sha256_source` says which).
    Published,
    /// Recorded from a first download by `assets/fetch.sh --update-lock`.
    Recorded,
    /// No checksum yet; a release build refuses the entry and nothing verifies against it.
    Unverified,
}

/// A container image an application archive contains, pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// For example `docker.io/library/nginx:1.27.3`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `sha256:<64 hex>`. Empty (left out) only for an image this project builds itself (an
    /// entry with a `build` recipe and no checksum yet, such as the policy enforcer's): its
    /// digest exists only once it is built.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// One artifact of the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// Unique name, e.g. `k3s-amd64`, `k3s-airgap-images-amd64`, `app-gateway-amd64`.
    pub name: String,
    pub kind: ArtifactKind,
    /// `None` for architecture-independent artifacts.
    #[serde(default)]
    pub arch: Option<Arch>,
    pub version: String,
    /// File name in `assets/cache/` and `--assets DIR`; for images also the name on the node
    /// (its extension tells k3s how to decompress it).
    pub file: String,
    /// Where `assets/fetch.sh` downloads it from ...
    #[serde(default)]
    pub url: Option<String>,
    /// ... or the bash recipe that builds it (writes to `$OUT`).
    #[serde(default)]
    pub build: Option<String>,
    /// The images an image archive contains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    pub sha256_state: Sha256State,
    #[serde(default)]
    pub sha256_source: Option<String>,
}

/// The asset lock: which k3s, which artifacts, which checksums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetLock {
    pub schema: u32,
    #[serde(default)]
    pub about: Option<String>,
    /// The k3s release every `k3s-*` entry belongs to, e.g. `v1.36.4+k3s1`.
    pub k3s_version: String,
    pub artifacts: Vec<LockEntry>,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl AssetLock {
    /// Parses and validates a lock; `origin` names it in errors ("--assets-lock lab.lock").
    /// Every problem is reported at once.
    pub fn parse(text: &str, origin: &str) -> Result<AssetLock, AssetError> {
        let lock: AssetLock = serde_json::from_str(text).map_err(|e| AssetError::LockInvalid {
            origin: origin.to_owned(),
            problems: vec![format!("line {}, column {}: {e}", e.line(), e.column())],
        })?;
        let problems = lock.problems();
        if problems.is_empty() {
            Ok(lock)
        } else {
            Err(AssetError::LockInvalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.schema != 1 {
            p.push(format!(
                "schema {} is not supported (expected 1)",
                self.schema
            ));
        }
        let mut names = BTreeSet::new();
        let mut k3s_slots = BTreeSet::new();
        for e in &self.artifacts {
            let n = &e.name;
            if !names.insert(n.as_str()) {
                p.push(format!("artifact {n}: the name is used twice"));
            }
            if e.file.is_empty()
                || e.file.starts_with('.')
                || e.file.contains('/')
                || e.file.contains('\\')
            {
                p.push(format!(
                    "artifact {n}: `file` must be a plain file name, not {:?}",
                    e.file
                ));
            }
            match (&e.sha256, e.sha256_state) {
                (Some(s), _) if !is_sha256_hex(s) => p.push(format!(
                    "artifact {n}: `sha256` must be 64 lower-case hex digits"
                )),
                (Some(_), Sha256State::Unverified) => p.push(format!(
                    "artifact {n}: has a sha256 but sha256_state is `unverified`"
                )),
                (None, Sha256State::Published | Sha256State::Recorded) => p.push(format!(
                    "artifact {n}: no sha256, so sha256_state must be `unverified`"
                )),
                _ => {}
            }
            if e.url.is_none() && e.build.is_none() {
                p.push(format!(
                    "artifact {n}: give `url` or `build` (how to get it)"
                ));
            }
            match e.kind {
                ArtifactKind::K3sBinary | ArtifactKind::K3sAirgapImages => {
                    if e.version != self.k3s_version {
                        p.push(format!(
                            "artifact {n}: version {} differs from k3s_version {}",
                            e.version, self.k3s_version
                        ));
                    }
                    match e.arch {
                        None => p.push(format!("artifact {n}: a k3s artifact needs `arch`")),
                        Some(a) => {
                            if !k3s_slots.insert((e.kind == ArtifactKind::K3sBinary, a)) {
                                p.push(format!(
                                    "artifact {n}: a second {:?} entry for {a}",
                                    e.kind
                                ));
                            }
                        }
                    }
                }
                ArtifactKind::AppImages => {
                    if e.images.is_empty() {
                        p.push(format!(
                            "artifact {n}: list the `images` the archive contains"
                        ));
                    }
                    for i in &e.images {
                        let built_here =
                            i.digest.is_empty() && e.build.is_some() && e.sha256.is_none();
                        let ok = built_here
                            || i.digest.strip_prefix("sha256:").is_some_and(is_sha256_hex);
                        if !ok {
                            p.push(format!(
                                "artifact {n}: image {} needs a digest `sha256:<64 hex>`",
                                i.reference
                            ));
                        }
                    }
                }
            }
        }
        p
    }

    /// A lock for the files of `dir` under this lock's names: every entry whose file is in
    /// `dir` gets that file's checksum and size (`sha256_state: recorded`); entries whose
    /// file is absent are dropped. This is how a test harness describes its stand-in k3s
    /// binary and small image archives (`--assets-lock`), keeping the names the installer
    /// asks for. Hashes by streaming; blocking I/O.
    pub fn with_checksums_of(&self, dir: &Path) -> Result<AssetLock, AssetError> {
        let mut artifacts = Vec::new();
        for e in &self.artifacts {
            let path = dir.join(&e.file);
            if !path.is_file() {
                continue;
            }
            let (sha256, size) = sha256_file(&path)?;
            artifacts.push(LockEntry {
                sha256: Some(sha256),
                size: Some(size),
                sha256_state: Sha256State::Recorded,
                sha256_source: Some(format!("test artifact {}", path.display())),
                ..e.clone()
            });
        }
        Ok(AssetLock {
            artifacts,
            about: Some(format!("generated for the files in {}", dir.display())),
            ..self.clone()
        })
    }

    /// The lock as JSON (the format of `assets/assets.lock`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The entry of that name.
    pub fn entry(&self, name: &str) -> Option<&LockEntry> {
        self.artifacts.iter().find(|e| e.name == name)
    }

    fn k3s_entry(&self, kind: ArtifactKind, arch: Arch) -> Option<&LockEntry> {
        self.artifacts
            .iter()
            .find(|e| e.kind == kind && e.arch == Some(arch))
    }
}

/// Where a resolved artifact's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactOrigin {
    /// Embedded in this binary.
    Embedded,
    /// A verified file from `--assets DIR`.
    File(PathBuf),
}

/// An artifact ready to upload: its source, verified checksum and destination.
#[derive(Debug, Clone)]
pub struct ResolvedArtifact {
    pub name: String,
    pub kind: ArtifactKind,
    pub version: String,
    pub file: String,
    /// Verified SHA-256 (lower-case hex).
    pub sha256: String,
    pub size: u64,
    pub source: UploadSource,
    pub origin: ArtifactOrigin,
}

impl ResolvedArtifact {
    /// Where it lands on a node: the binary at `/usr/local/bin/k3s`, archives in the
    /// images directory under their own file name.
    pub fn host_path(&self) -> String {
        match self.kind {
            ArtifactKind::K3sBinary => paths::K3S_BINARY.to_owned(),
            ArtifactKind::K3sAirgapImages | ArtifactKind::AppImages => {
                paths::image_archive_path(&self.file)
            }
        }
    }

    /// Where `upgrade` stages it until the node's turn ([`paths::K3S_BINARY_STAGED`],
    /// [`paths::IMAGES_STAGED_DIR`]): the same filesystem as [`Self::host_path`], never read
    /// by k3s.
    pub fn staged_path(&self) -> String {
        match self.kind {
            ArtifactKind::K3sBinary => paths::K3S_BINARY_STAGED.to_owned(),
            ArtifactKind::K3sAirgapImages | ArtifactKind::AppImages => {
                paths::staged_image_archive_path(&self.file)
            }
        }
    }

    /// The file mode on the node.
    pub fn host_mode(&self) -> u32 {
        match self.kind {
            ArtifactKind::K3sBinary => 0o755,
            _ => 0o644,
        }
    }
}

/// An artifact embedded in the binary, as the store sees it.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedArtifact {
    pub name: &'static str,
    pub sha256: &'static str,
    pub bytes: &'static [u8],
}

/// Resolves the artifacts an install needs. Cheap to share (`Arc<AssetStore>`); resolving
/// hashes `--assets DIR` files once and remembers the result.
///
/// Resolving is blocking I/O (it may hash a few hundred MB): from async code call it
/// through `tokio::task::spawn_blocking`, or resolve everything before the phases start.
pub struct AssetStore {
    lock: AssetLock,
    lock_origin: String,
    dir: Option<PathBuf>,
    embedded: Vec<EmbeddedArtifact>,
    resolved: Mutex<HashMap<String, ResolvedArtifact>>,
}

impl fmt::Debug for AssetStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssetStore")
            .field("lock_origin", &self.lock_origin)
            .field("k3s_version", &self.lock.k3s_version)
            .field("dir", &self.dir)
            .field(
                "embedded",
                &self.embedded.iter().map(|e| e.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AssetStore {
    /// The store for this run: the built-in lock unless `lock_override` (`--assets-lock`)
    /// names another, the embedded artifacts, and `assets_dir` (`--assets`) if given.
    pub fn new(
        assets_dir: Option<&Path>,
        lock_override: Option<&Path>,
    ) -> Result<Self, AssetError> {
        let (lock, origin) = match lock_override {
            Some(path) => {
                let origin = format!("--assets-lock {}", path.display());
                let text = std::fs::read_to_string(path).map_err(|source| AssetError::Io {
                    path: path.to_owned(),
                    action: "read the asset lock",
                    source,
                })?;
                (AssetLock::parse(&text, &origin)?, origin)
            }
            None => {
                let origin = "the built-in asset lock".to_owned();
                (
                    AssetLock::parse(installer_assets::LOCK_JSON, &origin)?,
                    origin,
                )
            }
        };
        if let Some(dir) = assets_dir
            && !dir.is_dir()
        {
            return Err(AssetError::NoSuchDir {
                dir: dir.to_owned(),
            });
        }
        let embedded = installer_assets::EMBEDDED
            .iter()
            .map(|e| EmbeddedArtifact {
                name: e.name,
                sha256: e.sha256,
                bytes: e.bytes,
            })
            .collect();
        Ok(Self::from_parts(
            lock,
            origin,
            assets_dir.map(Path::to_owned),
            embedded,
        ))
    }

    /// A store from explicit parts (tests, tools).
    pub fn from_parts(
        lock: AssetLock,
        lock_origin: impl Into<String>,
        dir: Option<PathBuf>,
        embedded: Vec<EmbeddedArtifact>,
    ) -> Self {
        AssetStore {
            lock,
            lock_origin: lock_origin.into(),
            dir,
            embedded,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The lock in effect.
    pub fn lock(&self) -> &AssetLock {
        &self.lock
    }

    /// The k3s release this store installs.
    pub fn k3s_version(&self) -> &str {
        &self.lock.k3s_version
    }

    /// The architectures this run can install: those whose k3s binary and airgap images
    /// are embedded (with the lock's checksum) or present in `--assets DIR`. Cheap: nothing
    /// is hashed here (resolving verifies). Preflight checks every host's architecture
    /// against this list.
    pub fn available_arches(&self) -> Vec<Arch> {
        let present = |e: &LockEntry| {
            let Some(sha) = &e.sha256 else { return false };
            self.embedded
                .iter()
                .any(|x| x.name == e.name && x.sha256 == sha)
                || self.dir.as_ref().is_some_and(|d| d.join(&e.file).is_file())
        };
        let mut out = Vec::new();
        for arch in [Arch::Amd64, Arch::Arm64] {
            let both = [ArtifactKind::K3sBinary, ArtifactKind::K3sAirgapImages]
                .into_iter()
                .all(|k| self.lock.k3s_entry(k, arch).is_some_and(present));
            if both {
                out.push(arch);
            }
        }
        out
    }

    /// The k3s binary for `arch`.
    pub fn k3s_binary(&self, arch: Arch) -> Result<ResolvedArtifact, AssetError> {
        let e = self
            .lock
            .k3s_entry(ArtifactKind::K3sBinary, arch)
            .ok_or_else(|| self.not_in_lock(format!("the k3s binary for {arch}")))?;
        self.resolve(&e.name)
    }

    /// k3s's airgap image archive for `arch`.
    pub fn airgap_images(&self, arch: Arch) -> Result<ResolvedArtifact, AssetError> {
        let e = self
            .lock
            .k3s_entry(ArtifactKind::K3sAirgapImages, arch)
            .ok_or_else(|| self.not_in_lock(format!("the k3s airgap images for {arch}")))?;
        self.resolve(&e.name)
    }

    /// Every application image archive for `arch` (and the architecture-independent ones),
    /// in lock order.
    pub fn app_image_archives(&self, arch: Arch) -> Result<Vec<ResolvedArtifact>, AssetError> {
        self.lock
            .artifacts
            .iter()
            .filter(|e| e.kind == ArtifactKind::AppImages && e.arch.is_none_or(|a| a == arch))
            .map(|e| self.resolve(&e.name))
            .collect()
    }

    /// Resolves one artifact by lock name: a verified file from `--assets DIR` if there is
    /// one, else the embedded copy if its checksum matches the lock in effect.
    pub fn resolve(&self, name: &str) -> Result<ResolvedArtifact, AssetError> {
        if let Ok(cache) = self.resolved.lock()
            && let Some(r) = cache.get(name)
        {
            return Ok(r.clone());
        }
        let r = self.resolve_uncached(name)?;
        if let Ok(mut cache) = self.resolved.lock() {
            cache.insert(name.to_owned(), r.clone());
        }
        Ok(r)
    }

    fn not_in_lock(&self, what: String) -> AssetError {
        AssetError::NotInLock {
            what,
            origin: self.lock_origin.clone(),
        }
    }

    fn resolve_uncached(&self, name: &str) -> Result<ResolvedArtifact, AssetError> {
        let e = self
            .lock
            .entry(name)
            .ok_or_else(|| self.not_in_lock(format!("artifact {name}")))?;
        let Some(expected) = e.sha256.clone() else {
            return Err(AssetError::Unverified {
                name: e.name.clone(),
                origin: self.lock_origin.clone(),
            });
        };
        let done = |source, size, origin| ResolvedArtifact {
            name: e.name.clone(),
            kind: e.kind,
            version: e.version.clone(),
            file: e.file.clone(),
            sha256: expected.clone(),
            size,
            source,
            origin,
        };

        if let Some(dir) = &self.dir {
            let path = dir.join(&e.file);
            if path.is_file() {
                let (actual, size) = sha256_file(&path)?;
                if actual != expected {
                    return Err(AssetError::Mismatch {
                        name: e.name.clone(),
                        path,
                        expected,
                        actual,
                        origin: self.lock_origin.clone(),
                    });
                }
                let source = UploadSource::File {
                    path: path.clone(),
                    sha256: Some(expected.clone()),
                };
                return Ok(done(source, size, ArtifactOrigin::File(path)));
            }
        }

        let embedded = self.embedded.iter().find(|x| x.name == e.name);
        if let Some(x) = embedded
            && x.sha256 == expected
        {
            let source = UploadSource::Static {
                bytes: x.bytes,
                sha256: Some(expected.clone()),
            };
            return Ok(done(source, x.bytes.len() as u64, ArtifactOrigin::Embedded));
        }
        Err(AssetError::Missing {
            name: e.name.clone(),
            file: e.file.clone(),
            dir: self.dir.clone(),
            embedded_differs: embedded.is_some(),
            reason: installer_assets::not_embedded_reason(&e.name).map(str::to_owned),
        })
    }
}

/// Streams a file through SHA-256 (1 MiB at a time); returns the hex digest and the length.
pub fn sha256_file(path: &Path) -> Result<(String, u64), AssetError> {
    let io = |source| AssetError::Io {
        path: path.to_owned(),
        action: "read",
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(h.finalize()), len))
}

/// Everything that can go wrong finding an artifact. Each names the artifact or file;
/// [`AssetError::hint`] says what to do.
#[derive(Debug, Error)]
pub enum AssetError {
    #[error("{origin} is not valid:\n  {}", problems.join("\n  "))]
    LockInvalid {
        origin: String,
        problems: Vec<String>,
    },

    #[error("no entry for {what} in {origin}")]
    NotInLock { what: String, origin: String },

    #[error(
        "artifact {name} has no checksum in {origin} (sha256_state: unverified), so it cannot be verified"
    )]
    Unverified { name: String, origin: String },

    #[error("artifact {name}: {} has SHA-256 {actual}, but {origin} says {expected}", path.display())]
    Mismatch {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
        origin: String,
    },

    #[error("artifact {name} ({file}) is not embedded in this installer{}{}",
        match dir { Some(d) => format!(" and not in {}", d.display()), None => String::new() },
        if *embedded_differs { " (the embedded copy does not match the lock in effect)" } else { "" })]
    Missing {
        name: String,
        file: String,
        dir: Option<PathBuf>,
        embedded_differs: bool,
        /// Why the build did not embed it.
        reason: Option<String>,
    },

    #[error("--assets {}: no such directory", dir.display())]
    NoSuchDir { dir: PathBuf },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl AssetError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            AssetError::LockInvalid { .. } => {
                "fix the lock file (format: docs/assets.md), or run without --assets-lock to use the built-in one".into()
            }
            AssetError::NotInLock { .. } => {
                "add the entry to the asset lock (docs/assets.md) or use an installer built for this architecture".into()
            }
            AssetError::Unverified { name, .. } => format!(
                "record its checksum with `assets/fetch.sh --update-lock --only {name}` (or write it into the lock), then rebuild"
            ),
            AssetError::Mismatch { path, .. } => format!(
                "{} is not the file the lock names: replace it with the right one, or give the lock that describes it with --assets-lock",
                path.display()
            ),
            AssetError::Missing { file, reason, .. } => {
                let mut h = format!(
                    "put {file} into a directory and pass `--assets DIR`, or run `assets/fetch.sh` and rebuild the installer to embed it"
                );
                if let Some(r) = reason {
                    h.push_str(&format!(" (build: {r})"));
                }
                h
            }
            AssetError::NoSuchDir { .. } => "check the --assets path".into(),
            AssetError::Io { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests;
