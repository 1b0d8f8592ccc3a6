//! Image archives as k3s imports them from `/var/lib/rancher/k3s/agent/images/`.
//!
//! The lab and install tests need airgap payloads without real images: [`write_archive`] writes a
//! small but well-formed `docker save` archive (OCI `index.json` + `oci-layout` + `blobs/sha256/…`
//! and the Docker `manifest.json`, which is what `docker save` has produced since Docker 25)
//! naming the given images, optionally padded with incompressible bytes to a realistic size. The
//! k3s stand-in uses [`read_image_names`] to learn which images a node has.
//!
//! What k3s accepts (`pkg/agent/containerd/watcher.go`, wharfie `pkg/tarfile/tarfile.go`;
//! see docs/k3s-host-network.md §3): `.tar`, `.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`, `.tar.lz4`,
//! `.tar.bz2`/`.tbz`, plus `.txt` pull lists. This module reads `.tar`, `.tar.gz`/`.tgz` and
//! `.tar.zst`/`.tzst`; it reports lz4 and bzip2 archives as unsupported (the stand-in logs that it
//! cannot read them, so a test using them fails visibly rather than silently passing). Zstd frames
//! whose window is larger than 32 MiB (`--long` above 25) fail to decode, as in k3s.
//!
//! Names come from the OCI index annotations `io.containerd.image.name` (a full reference) or
//! `org.opencontainers.image.ref.name` (used only when it is a full reference, not a bare tag), and
//! from `manifest.json` `RepoTags`, all normalised the way containerd stores them
//! (`nginx` -> `docker.io/library/nginx:latest`).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// How an archive is compressed (from its file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: unsupported image archive type (the k3s stand-in reads .tar, .tar.gz, .tgz, .tar.zst, .tzst)"
    )]
    Unsupported { path: String },
    #[error("{path}: {what}: {msg}")]
    Bad {
        path: String,
        what: String,
        msg: String,
    },
}

/// The compression a file name implies, or `None` if it is not an archive this module reads.
/// Lz4 and bzip2 archives, which k3s also accepts, give `Err(Unsupported)`.
pub fn compression_for(path: &Path) -> Result<Option<Compression>, ImageError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(Some(if name.ends_with(".tar") {
        Compression::None
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Compression::Gzip
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Compression::Zstd
    } else if name.ends_with(".tar.lz4") || name.ends_with(".tar.bz2") || name.ends_with(".tbz") {
        return Err(ImageError::Unsupported {
            path: path.display().to_string(),
        });
    } else {
        return Ok(None);
    }))
}

/// Normalise an image reference as containerd stores it: registry `docker.io` when none is given,
/// `library/` for official images, `:latest` when there is neither tag nor digest.
pub fn normalize(reference: &str) -> String {
    let r = reference.trim();
    let (first, rest) = match r.split_once('/') {
        Some((f, rest)) => (f, Some(rest)),
        None => (r, None),
    };
    let (domain, path) = match rest {
        Some(rest) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        Some(_) => ("docker.io".to_string(), r.to_string()),
        None => ("docker.io".to_string(), r.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let last = path.rsplit('/').next().unwrap_or(&path);
    let has_tag = last.contains(':') || path.contains('@');
    if has_tag {
        format!("{domain}/{path}")
    } else {
        format!("{domain}/{path}:latest")
    }
}

/// Whether `s` looks like a full reference (has a repository, not only a tag).
fn is_full_reference(s: &str) -> bool {
    s.contains('/')
        || (s.contains(':')
            && !s.starts_with(':')
            && s.split(':').next().is_some_and(|p| !p.is_empty()))
}

/// Options for [`write_archive`].
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Compression; `None` means "from the file name".
    pub compression: Option<Compression>,
    /// Incompressible bytes added in one extra layer, to make the archive realistically large.
    pub padding_bytes: u64,
    /// zstd level (when compressing with zstd).
    pub zstd_level: i32,
    /// zstd long-distance window log (`--long=N`); `None` leaves it at the library default.
    pub zstd_window_log: Option<u32>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            compression: None,
            padding_bytes: 0,
            zstd_level: 3,
            zstd_window_log: None,
        }
    }
}

/// A deterministic, incompressible byte stream (xorshift64*) of a given length.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        let mut i = 0;
        while i < n {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = (n - i).min(8);
            buf[i..i + take].copy_from_slice(&v[..take]);
            i += take;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashing writer: SHA-256 and length of what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Blob {
    digest: String,
    size: u64,
    file: tempfile::NamedTempFile,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write a layer tar holding one file into a temp file, returning its digest.
fn layer_blob(file_name: &str, data: &mut dyn Read, size: u64) -> std::io::Result<Blob> {
    let tmp = tempfile::NamedTempFile::new()?;
    let mut h = Hashing {
        inner: std::io::BufWriter::new(tmp.reopen()?),
        hash: Sha256::new(),
        len: 0,
    };
    {
        let mut b = tar::Builder::new(&mut h);
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        b.append_data(&mut header, file_name, data)?;
        b.finish()?;
    }
    h.flush()?;
    Ok(Blob {
        digest: hex::encode(h.hash.finalize()),
        size: h.len,
        file: tmp,
    })
}

fn json_blob(v: &serde_json::Value) -> (String, Vec<u8>) {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    (hex::encode(Sha256::digest(&bytes)), bytes)
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    b.append_data(&mut header, name, data)
}

/// Docker's "familiar" form of a normalised reference, as `docker save` writes in `RepoTags`.
pub(crate) fn familiar(normalized: &str) -> String {
    normalized
        .strip_prefix("docker.io/library/")
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(normalized)
        .to_string()
}

/// Write an image archive at `path` naming `images`, in the `docker save` layout.
pub fn write_archive(
    path: &Path,
    images: &[&str],
    opts: &ArchiveOptions,
) -> Result<(), ImageError> {
    let compression = match opts.compression {
        Some(c) => c,
        None => compression_for(path)?.unwrap_or(Compression::None),
    };
    let e = io_err(path);
    let out = std::fs::File::create(path).map_err(&e)?;
    let out = std::io::BufWriter::new(out);
    match compression {
        Compression::None => {
            let mut w = out;
            write_tar(&mut w, images, opts).map_err(&e)?;
            w.flush().map_err(&e)?;
        }
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            write_tar(&mut w, images, opts).map_err(&e)?;
            w.finish().map_err(&e)?.flush().map_err(&e)?;
        }
        Compression::Zstd => {
            let mut w = zstd::stream::write::Encoder::new(out, opts.zstd_level).map_err(&e)?;
            if let Some(wl) = opts.zstd_window_log {
                w.long_distance_matching(true).map_err(&e)?;
                w.window_log(wl).map_err(&e)?;
            }
            write_tar(&mut w, images, opts).map_err(&e)?;
            w.finish().map_err(&e)?.flush().map_err(&e)?;
        }
    }
    Ok(())
}

fn write_tar<W: Write>(w: &mut W, images: &[&str], opts: &ArchiveOptions) -> std::io::Result<()> {
    let mut b = tar::Builder::new(w);
    let mut index_manifests = Vec::new();
    let mut docker_manifest = Vec::new();
    let padding = if opts.padding_bytes > 0 {
        let mut noise = Noise {
            state: 0x9E37_79B9_7F4A_7C15,
            left: opts.padding_bytes,
        };
        Some(layer_blob("padding.bin", &mut noise, opts.padding_bytes)?)
    } else {
        None
    };
    let mut written = std::collections::BTreeSet::new();
    if let Some(p) = &padding {
        let mut f = p.file.reopen()?;
        let mut header = tar::Header::new_gnu();
        header.set_size(p.size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        b.append_data(&mut header, format!("blobs/sha256/{}", p.digest), &mut f)?;
        written.insert(p.digest.clone());
    }
    for (i, image) in images.iter().enumerate() {
        let name = normalize(image);
        let content = format!("k3s stand-in image {name}\n");
        let layer = layer_blob(
            "standin-image.txt",
            &mut content.as_bytes(),
            content.len() as u64,
        )?;
        let mut layers = vec![(layer.digest.clone(), layer.size)];
        if let Some(p) = &padding
            && i == 0
        {
            layers.push((p.digest.clone(), p.size));
        }
        if written.insert(layer.digest.clone()) {
            let mut f = layer.file.reopen()?;
            let mut header = tar::Header::new_gnu();
            header.set_size(layer.size);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            b.append_data(
                &mut header,
                format!("blobs/sha256/{}", layer.digest),
                &mut f,
            )?;
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"io.k3s.standin.image": name}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| format!("sha256:{d}")).collect::<Vec<_>>()},
        });
        let (config_digest, config_bytes) = json_blob(&config);
        if written.insert(config_digest.clone()) {
            append_bytes(
                &mut b,
                &format!("blobs/sha256/{config_digest}"),
                &config_bytes,
            )?;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_bytes.len()},
            "layers": layers.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{d}"), "size": s})).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_bytes) = json_blob(&manifest);
        if written.insert(manifest_digest.clone()) {
            append_bytes(
                &mut b,
                &format!("blobs/sha256/{manifest_digest}"),
                &manifest_bytes,
            )?;
        }
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        index_manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }));
        docker_manifest.push(serde_json::json!({
            "Config": format!("blobs/sha256/{config_digest}"),
            "RepoTags": [familiar(&name)],
            "Layers": layers.iter().map(|(d, _)| format!("blobs/sha256/{d}")).collect::<Vec<_>>(),
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_manifests,
    });
    append_bytes(
        &mut b,
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )?;
    append_bytes(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&serde_json::Value::Array(docker_manifest)).unwrap_or_default(),
    )?;
    append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    b.finish()
}

/// The zstd window limit the stand-in decodes with (2^25 = 32 MiB), as k3s does.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// The normalised image names an archive holds, sorted and deduplicated.
pub fn read_image_names(path: &Path) -> Result<Vec<String>, ImageError> {
    let e = io_err(path);
    let Some(compression) = compression_for(path)? else {
        return Err(ImageError::Unsupported {
            path: path.display().to_string(),
        });
    };
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(&e)?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(f).map_err(&e)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(&e)?;
            Box::new(d)
        }
    };
    let mut archive = tar::Archive::new(reader);
    let mut names = std::collections::BTreeSet::new();
    let bad = |what: &str, msg: String| ImageError::Bad {
        path: path.display().to_string(),
        what: what.to_string(),
        msg,
    };
    for entry in archive.entries().map_err(&e)? {
        let mut entry = entry.map_err(&e)?;
        let entry_path = entry
            .path()
            .map_err(&e)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        match entry_path.as_str() {
            "index.json" => {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(&e)?;
                let v: serde_json::Value =
                    serde_json::from_str(&s).map_err(|err| bad("index.json", err.to_string()))?;
                for m in v
                    .get("manifests")
                    .and_then(|m| m.as_array())
                    .into_iter()
                    .flatten()
                {
                    let ann = m.get("annotations");
                    let get = |k: &str| ann.and_then(|a| a.get(k)).and_then(|v| v.as_str());
                    if let Some(n) = get("io.containerd.image.name") {
                        names.insert(normalize(n));
                    } else if let Some(n) = get("org.opencontainers.image.ref.name")
                        && is_full_reference(n)
                    {
                        names.insert(normalize(n));
                    }
                }
            }
            "manifest.json" => {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(&e)?;
                let v: serde_json::Value = serde_json::from_str(&s)
                    .map_err(|err| bad("manifest.json", err.to_string()))?;
                for m in v.as_array().into_iter().flatten() {
                    for t in m
                        .get("RepoTags")
                        .and_then(|t| t.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if let Some(t) = t.as_str() {
                            names.insert(normalize(t));
                        }
                    }
                }
            }
            _ => {
                // Skip the data (tar does it when the entry is dropped, reading through it).
            }
        }
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_containerd() {
        assert_eq!(normalize("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            normalize("rancher/mirrored-pause:3.6"),
            "docker.io/rancher/mirrored-pause:3.6"
        );
        assert_eq!(
            normalize("docker.io/rancher/mirrored-pause:3.6"),
            "docker.io/rancher/mirrored-pause:3.6"
        );
        assert_eq!(
            normalize("registry.example/app/api:1.0"),
            "registry.example/app/api:1.0"
        );
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(
            normalize("busybox@sha256:abc"),
            "docker.io/library/busybox@sha256:abc"
        );
    }

    #[test]
    fn every_format_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let imgs = [
            "docker.io/rancher/mirrored-pause:3.6",
            "registry.example/app/api:1.0",
        ];
        for name in ["a.tar", "b.tar.gz", "c.tgz", "d.tar.zst", "e.tzst"] {
            let p = d.path().join(name);
            write_archive(&p, &imgs, &ArchiveOptions::default()).unwrap();
            let got = read_image_names(&p).unwrap();
            assert_eq!(
                got,
                vec![
                    "docker.io/rancher/mirrored-pause:3.6".to_string(),
                    "registry.example/app/api:1.0".to_string()
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn padding_makes_it_big_even_compressed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.tar.zst");
        let opts = ArchiveOptions {
            padding_bytes: 3 << 20,
            ..Default::default()
        };
        write_archive(&p, &["nginx:1.27"], &opts).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 3 << 20);
        assert_eq!(
            read_image_names(&p).unwrap(),
            vec!["docker.io/library/nginx:1.27".to_string()]
        );
    }

    #[test]
    fn oversized_zstd_window_fails_like_k3s() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("long.tar.zst");
        let opts = ArchiveOptions {
            padding_bytes: 1 << 20,
            zstd_window_log: Some(27),
            ..Default::default()
        };
        write_archive(&p, &["nginx:1.27"], &opts).unwrap();
        assert!(read_image_names(&p).is_err());
        let ok = d.path().join("ok.tar.zst");
        let opts = ArchiveOptions {
            zstd_window_log: Some(25),
            ..opts
        };
        write_archive(&ok, &["nginx:1.27"], &opts).unwrap();
        assert!(read_image_names(&ok).is_ok());
    }

    #[test]
    fn lz4_and_bzip2_are_reported_unsupported() {
        assert!(matches!(
            compression_for(Path::new("x.tar.lz4")),
            Err(ImageError::Unsupported { .. })
        ));
        assert!(matches!(
            compression_for(Path::new("x.tar.bz2")),
            Err(ImageError::Unsupported { .. })
        ));
        assert!(matches!(compression_for(Path::new("x.txt")), Ok(None)));
    }
}
