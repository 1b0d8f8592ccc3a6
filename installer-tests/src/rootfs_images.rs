//! Image archives that carry a real root filesystem, and reading them back as containerd does.
//!
//! [`crate::images`] writes marker archives: they name images but hold no programs, and the
//! stand-in's kubelet simulates their containers. This module writes archives in the same
//! `docker save` layout (OCI `index.json` + Docker `manifest.json`) whose layers are real root
//! filesystems and whose config carries `Entrypoint`, `Cmd`, `Env`, `WorkingDir` and `User`; and
//! it reads any such archive back: [`read_images`] lists the images with their configs and
//! layers, [`unpack`] applies the layers in order onto a directory, whiteouts honoured
//! (`.wh.NAME` deletes `NAME`, `.wh..wh..opq` empties the directory), as containerd's
//! `archive.Apply` does.
//!
//! An image counts as runnable ([`ImageInfo::runnable`]) when its config names a program
//! (`Entrypoint` or `Cmd`): every real application image does, the marker archives do not.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::images::{self, Compression, ImageError};

/// The part of an OCI image config the runtime applies (`config` in the config blob).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// One image of an archive, as [`read_images`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalised reference (`docker.io/library/busybox:1.37.0`).
    pub name: String,
    /// The config blob's digest (`sha256:…`): the image ID containerd shows.
    pub id: String,
    pub config: ImageConfig,
    /// Layer blob paths inside the archive, bottom first.
    pub layers: Vec<String>,
}

impl ImageInfo {
    /// Whether the image names a program to run (see the module doc).
    pub fn runnable(&self) -> bool {
        self.config
            .entrypoint
            .as_ref()
            .is_some_and(|e| !e.is_empty())
            || self.config.cmd.as_ref().is_some_and(|c| !c.is_empty())
    }
}

/// A root filesystem layer being built: a deterministic tar (owner root, mtime 0).
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
    dirs: std::collections::BTreeSet<String>,
    libs: std::collections::BTreeSet<PathBuf>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
            dirs: Default::default(),
            libs: Default::default(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let mut acc = String::new();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
                self.builder
                    .append_data(&mut h, format!("{acc}/"), std::io::empty())?;
            }
        }
        Ok(())
    }

    /// A directory (and its parents) with `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<&mut Self> {
        let p = path.trim_matches('/').to_string();
        self.parents(&format!("{p}/x"))?;
        if self.dirs.insert(p.clone()) {
            let mut h = Self::header(tar::EntryType::Directory, mode, 0);
            self.builder
                .append_data(&mut h, format!("{p}/"), std::io::empty())?;
        }
        Ok(self)
    }

    /// A regular file with the given content and mode.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> std::io::Result<&mut Self> {
        let p = path.trim_matches('/');
        self.parents(p)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut h, p, data)?;
        Ok(self)
    }

    /// A copy of a file of this machine (its mode kept).
    pub fn host_file(&mut self, path: &str, host: &Path) -> std::io::Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", host.display())))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(path, &data, mode)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<&mut Self> {
        let p = path.trim_matches('/');
        self.parents(p)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut h, p, target)?;
        Ok(self)
    }

    /// A whiteout: `path` is deleted when this layer is applied over a lower one.
    pub fn whiteout(&mut self, path: &str) -> std::io::Result<&mut Self> {
        let p = Path::new(path.trim_matches('/'));
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let wh = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => format!("{}/.wh.{name}", d.display()),
            _ => format!(".wh.{name}"),
        };
        self.file(&wh, b"", 0o644)
    }

    /// An ELF program of this machine and every shared library `ldd` says it loads, at the
    /// same paths, so it runs in the image as it runs here.
    pub fn host_program(&mut self, path: &str, host: &Path) -> std::io::Result<&mut Self> {
        self.host_file(path, host)?;
        for lib in shared_libraries(host)? {
            let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone());
            if self.libs.insert(lib.clone()) {
                self.host_file(&lib.display().to_string(), &real)?;
            }
        }
        Ok(self)
    }

    /// The finished layer tar.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

/// The shared libraries (absolute paths, the dynamic loader included) `ldd` lists for `prog`;
/// none for a static program.
pub fn shared_libraries(prog: &Path) -> std::io::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd").arg(prog).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path
            && p.starts_with('/')
        {
            libs.push(PathBuf::from(p));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// One image to write with [`write_archive`].
pub struct LayeredImage {
    /// Any reference; it is normalised as containerd stores it.
    pub name: String,
    /// Layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
    pub config: ImageConfig,
}

fn append<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data)
}

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Write `images` into one archive at `path` (compression from the file name).
pub fn write_archive(path: &Path, images: &[LayeredImage]) -> Result<(), ImageError> {
    let e = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    let compression = images::compression_for(path)?.unwrap_or(Compression::None);
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let mut written = std::collections::BTreeSet::new();
        let mut index = Vec::new();
        let mut docker = Vec::new();
        for img in images {
            let name = images::normalize(&img.name);
            let mut layer_digests = Vec::new();
            for l in &img.layers {
                let d = digest(l);
                if written.insert(d.clone()) {
                    append(&mut b, &format!("blobs/sha256/{d}"), l).map_err(e)?;
                }
                layer_digests.push((d, l.len()));
            }
            let config = serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": img.config,
                "rootfs": {"type": "layers", "diff_ids": layer_digests.iter().map(|(d, _)| format!("sha256:{d}")).collect::<Vec<_>>()},
            });
            let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
            let config_digest = digest(&config_bytes);
            if written.insert(config_digest.clone()) {
                append(
                    &mut b,
                    &format!("blobs/sha256/{config_digest}"),
                    &config_bytes,
                )
                .map_err(e)?;
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_bytes.len()},
                "layers": layer_digests.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{d}"), "size": s})).collect::<Vec<_>>(),
            });
            let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
            let manifest_digest = digest(&manifest_bytes);
            if written.insert(manifest_digest.clone()) {
                append(
                    &mut b,
                    &format!("blobs/sha256/{manifest_digest}"),
                    &manifest_bytes,
                )
                .map_err(e)?;
            }
            let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            index.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_bytes.len(),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }));
            docker.push(serde_json::json!({
                "Config": format!("blobs/sha256/{config_digest}"),
                "RepoTags": [images::familiar(&name)],
                "Layers": layer_digests.iter().map(|(d, _)| format!("blobs/sha256/{d}")).collect::<Vec<_>>(),
            }));
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index});
        append(
            &mut b,
            "index.json",
            &serde_json::to_vec(&index).unwrap_or_default(),
        )
        .map_err(e)?;
        append(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&docker).unwrap_or_default(),
        )
        .map_err(e)?;
        append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(e)?;
        b.finish().map_err(e)?;
    }
    let tmp = path.with_extension("tmp-write");
    {
        let out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(e)?);
        match compression {
            Compression::None => {
                let mut w = out;
                w.write_all(&tar_bytes).map_err(e)?;
                w.flush().map_err(e)?;
            }
            Compression::Gzip => {
                let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                w.write_all(&tar_bytes).map_err(e)?;
                w.finish().map_err(e)?.flush().map_err(e)?;
            }
            Compression::Zstd => {
                let mut w = zstd::stream::write::Encoder::new(out, 3).map_err(e)?;
                w.write_all(&tar_bytes).map_err(e)?;
                w.finish().map_err(e)?.flush().map_err(e)?;
            }
        }
    }
    std::fs::rename(&tmp, path).map_err(e)
}

fn open(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let e = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    let Some(compression) = images::compression_for(path)? else {
        return Err(ImageError::Unsupported {
            path: path.display().to_string(),
        });
    };
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(e)?);
    Ok(match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(f).map_err(e)?;
            d.window_log_max(images::ZSTD_WINDOW_LOG_MAX).map_err(e)?;
            Box::new(d)
        }
    })
}

fn entry_name(entry: &tar::Entry<'_, Box<dyn Read>>) -> String {
    entry
        .path()
        .map(|p| p.to_string_lossy().trim_start_matches("./").to_string())
        .unwrap_or_default()
}

/// Every image of an archive with its config and layers (from `manifest.json`, the layout
/// `docker save` and k3s's airgap archives share).
pub fn read_images(path: &Path) -> Result<Vec<ImageInfo>, ImageError> {
    let e = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    let bad = |what: &str, msg: String| ImageError::Bad {
        path: path.display().to_string(),
        what: what.to_string(),
        msg,
    };
    let mut archive = tar::Archive::new(open(path)?);
    let mut manifest: Option<serde_json::Value> = None;
    let mut jsons: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries().map_err(e)? {
        let mut entry = entry.map_err(e)?;
        let name = entry_name(&entry);
        // Config blobs are small JSON documents; layers are not kept.
        if name == "manifest.json" {
            let mut s = String::new();
            entry.read_to_string(&mut s).map_err(e)?;
            manifest = Some(
                serde_json::from_str(&s).map_err(|err| bad("manifest.json", err.to_string()))?,
            );
        } else if entry.size() < 1 << 20 {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(e)?;
            if buf.first() == Some(&b'{') {
                jsons.insert(name, buf);
            }
        }
    }
    let Some(manifest) = manifest else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in manifest.as_array().into_iter().flatten() {
        let Some(cfg_path) = m.get("Config").and_then(|c| c.as_str()) else {
            continue;
        };
        let cfg: serde_json::Value = jsons
            .get(cfg_path)
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let config: ImageConfig = cfg
            .get("config")
            .cloned()
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let id = format!(
            "sha256:{}",
            jsons.get(cfg_path).map(|b| digest(b)).unwrap_or_default()
        );
        let layers: Vec<String> = m
            .get("Layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
        for t in m
            .get("RepoTags")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
        {
            out.push(ImageInfo {
                name: images::normalize(t),
                id: id.clone(),
                config: config.clone(),
                layers: layers.clone(),
            });
        }
    }
    Ok(out)
}

/// Whether `p` stays inside the directory it is joined to (no `..`, no root).
fn confined(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Apply `image`'s layers from the archive at `path` onto `dest`, bottom first.
pub fn unpack(path: &Path, image: &ImageInfo, dest: &Path) -> Result<(), ImageError> {
    let e = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(e)?;
    // Layers in archive order are not necessarily bottom first: keep them in temp files, then
    // apply in the manifest's order.
    let tmp = tempfile::tempdir().map_err(e)?;
    let mut archive = tar::Archive::new(open(path)?);
    for entry in archive.entries().map_err(e)? {
        let mut entry = entry.map_err(e)?;
        let name = entry_name(&entry);
        if let Some(i) = image.layers.iter().position(|l| *l == name) {
            let mut f = std::fs::File::create(tmp.path().join(i.to_string())).map_err(e)?;
            std::io::copy(&mut entry, &mut f).map_err(e)?;
        }
    }
    for i in 0..image.layers.len() {
        let lp = tmp.path().join(i.to_string());
        let f = std::fs::File::open(&lp).map_err(|source| ImageError::Bad {
            path: path.display().to_string(),
            what: image.layers[i].clone(),
            msg: format!("layer missing from the archive: {source}"),
        })?;
        apply_layer(Box::new(std::io::BufReader::new(f)), dest).map_err(e)?;
    }
    Ok(())
}

/// Apply one layer tar onto `dest` (whiteouts honoured).
pub fn apply_layer(layer: Box<dyn Read>, dest: &Path) -> std::io::Result<()> {
    let mut a = tar::Archive::new(layer);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.to_path_buf();
        if !confined(&rel) {
            continue;
        }
        let fname = rel
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if fname == ".wh..wh..opq" {
            let d = dest.join(&parent);
            if let Ok(rd) = std::fs::read_dir(&d) {
                for c in rd.flatten() {
                    let p = c.path();
                    if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            continue;
        }
        if let Some(victim) = fname.strip_prefix(".wh.") {
            let p = dest.join(&parent).join(victim);
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?;
            } else if p.symlink_metadata().is_ok() {
                std::fs::remove_file(&p)?;
            }
            continue;
        }
        // A file replacing a directory (or the reverse) removes what was there first.
        let target = dest.join(&rel);
        if let Ok(md) = target.symlink_metadata() {
            let is_dir_entry = entry.header().entry_type().is_dir();
            if md.is_dir() && !is_dir_entry {
                std::fs::remove_dir_all(&target)?;
            } else if !md.is_dir() && is_dir_entry {
                std::fs::remove_file(&target)?;
            }
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            env: Some(vec!["PATH=/bin".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut low = Layer::new();
        low.file("etc/keep", b"keep", 0o644).unwrap();
        low.file("etc/gone", b"gone", 0o644).unwrap();
        low.file("data/a", b"a", 0o600).unwrap();
        low.file("data/b", b"b", 0o600).unwrap();
        low.symlink("bin/sh", "busybox").unwrap();
        let mut up = Layer::new();
        up.whiteout("etc/gone").unwrap();
        up.file("data/.wh..wh..opq", b"", 0o644).unwrap();
        up.file("data/c", b"c", 0o644).unwrap();
        up.file("etc/keep", b"changed", 0o640).unwrap();
        let archive = dir.path().join("img.tar.zst");
        write_archive(
            &archive,
            &[LayeredImage {
                name: "busybox:1.37.0".into(),
                layers: vec![low.finish().unwrap(), up.finish().unwrap()],
                config: config(&["sh"]),
            }],
        )
        .unwrap();
        let imgs = read_images(&archive).unwrap();
        assert_eq!(imgs.len(), 1);
        assert_eq!(imgs[0].name, "docker.io/library/busybox:1.37.0");
        assert!(imgs[0].runnable());
        assert_eq!(imgs[0].layers.len(), 2);
        assert!(imgs[0].id.starts_with("sha256:") && imgs[0].id.len() == 71);
        let root = dir.path().join("root");
        unpack(&archive, &imgs[0], &root).unwrap();
        assert_eq!(std::fs::read(root.join("etc/keep")).unwrap(), b"changed");
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("data/a").exists() && !root.join("data/b").exists());
        assert_eq!(std::fs::read(root.join("data/c")).unwrap(), b"c");
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            PathBuf::from("busybox")
        );
        // The names the stand-in's image scan sees are the same.
        assert_eq!(
            images::read_image_names(&archive).unwrap(),
            vec!["docker.io/library/busybox:1.37.0".to_string()]
        );
    }

    #[test]
    fn marker_archives_are_not_runnable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.tar");
        images::write_archive(&p, &["registry.example/app:1"], &Default::default()).unwrap();
        let imgs = read_images(&p).unwrap();
        assert_eq!(imgs.len(), 1);
        assert!(!imgs[0].runnable());
    }

    #[test]
    fn a_layer_cannot_write_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // `append_data` refuses `..`; write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        raw.append(&h, &b"x"[..]).unwrap();
        let bytes = raw.into_inner().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        apply_layer(Box::new(std::io::Cursor::new(bytes)), &root).unwrap();
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn host_program_brings_its_libraries() {
        let sh = Path::new("/bin/sh");
        let libs = shared_libraries(sh).unwrap();
        // dash links libc and the dynamic loader on Debian.
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        let mut l = Layer::new();
        l.host_program("bin/sh", sh).unwrap();
        let bytes = l.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        apply_layer(Box::new(std::io::Cursor::new(bytes)), dir.path()).unwrap();
        for lib in &libs {
            let inside = dir.path().join(lib.strip_prefix("/").unwrap());
            assert!(inside.exists(), "{} missing", inside.display());
        }
    }
}
