//! Writing the archive safely: a random temporary name created exclusively (never following
//! a symlink), mode 0600, fsynced, then renamed into place.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why no archive could be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot write the bundle in {dir}: {reason}")]
    Write { dir: String, reason: String },
}

/// One file of the bundle (already redacted), by its path under the top directory.
pub struct Entry {
    pub path: String,
    pub data: Vec<u8>,
}

fn err(dir: &Path, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Write {
        dir: dir.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `entries` as `<dir>/<name>.tar.gz` under the top directory `<name>/`, sorted.
/// Returns the final path.
pub fn write(
    dir: &Path,
    name: &str,
    mut entries: Vec<Entry>,
    mtime: u64,
) -> Result<PathBuf, ArchiveError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{name}.{suffix:016x}.partial"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| err(dir, format!("{}: {e}", tmp.display())))?;
    let result = (|| -> std::io::Result<()> {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for e in &entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(e.data.len() as u64);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, format!("{name}/{}", e.path), e.data.as_slice())?;
        }
        let gz = tar.into_inner()?;
        let mut file = gz.finish()?;
        file.flush()?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(dir, e));
    }
    let mut target = dir.join(format!("{name}.tar.gz"));
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        target = dir.join(format!("{name}-{n}.tar.gz"));
        n += 1;
    }
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(dir, e)
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_archive_is_0600_sorted_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let e = || {
            vec![
                Entry {
                    path: "b.txt".into(),
                    data: b"b".to_vec(),
                },
                Entry {
                    path: "a/x.json".into(),
                    data: b"{}".to_vec(),
                },
            ]
        };
        let p = write(dir.path(), "sb", e(), 0).unwrap();
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let p2 = write(dir.path(), "sb", e(), 0).unwrap();
        assert_ne!(p, p2);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&p).unwrap(),
        ));
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["sb/a/x.json", "sb/b.txt"]);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_target_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("sb.tar.gz")).unwrap();
        let p = write(dir.path(), "sb", vec![], 0).unwrap();
        assert_ne!(p, dir.path().join("sb.tar.gz"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
