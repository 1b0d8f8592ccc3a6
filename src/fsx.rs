//! Safe writes of the files the installer keeps on the workstation (kubeconfig, CA file,
//! answer file, journal, state, log).
//!
//! The installer often runs as root in a directory other users can reach, so every file is
//! written as if a hostile neighbour had prepared the ground:
//! - a whole file ([`write_atomic`]) goes to a new, randomly named temporary file created
//!   exclusively (`O_EXCL`, `O_NOFOLLOW`) in the target's directory, is given its mode,
//!   fsynced and renamed into place: nothing planted at a predictable name is ever reused;
//! - a file that grows ([`open_append`], [`create_new`]) is opened without following a
//!   symbolic link, and refused unless it is a regular file of ours with a single link;
//! - a target that is a symbolic link (dangling or not), or a directory that others can write
//!   to without the sticky bit, is refused with a message saying so.
//!
//! A file written here is always owned by the user the installer runs as.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing to write {}: {why}", path.display()),
    )
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The user the installer runs as.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The directory `path` is written into.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses a directory that others can write to without the sticky bit (anyone there could
/// swap the file between our check and our write), and a directory another user owns when we
/// are root.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    let m = std::fs::metadata(dir).map_err(|e| with_path(dir, e))?;
    if !m.is_dir() {
        return Err(refused(dir, "it is not a directory"));
    }
    let mode = m.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to write into {}: any user can write to this directory (mode {:o}, no sticky bit), so a file there could be replaced by someone else",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Refuses a target that is a symbolic link or not a regular file; `Ok(None)` if it does not
/// exist.
fn check_target(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(refused(
            path,
            "it is a symbolic link (remove it, or give the real path)",
        )),
        Ok(m) if !m.is_file() => Err(refused(path, "it is not a regular file")),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(path, e)),
    }
}

/// Refuses an open file that is not a regular file of ours with a single link (a hard link
/// planted to a file elsewhere).
fn check_open(path: &Path, f: &File) -> io::Result<()> {
    let m = f.metadata().map_err(|e| with_path(path, e))?;
    if !m.is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    if m.uid() != euid() {
        return Err(refused(
            path,
            &format!("it belongs to another user (uid {})", m.uid()),
        ));
    }
    if m.nlink() > 1 {
        return Err(refused(path, "it has other hard links"));
    }
    Ok(())
}

/// The directory `path` goes in, created (mode 0700) when missing; refused when others may
/// write to it, or when `path` itself is a link or not a regular file.
fn prepare(path: &Path) -> io::Result<PathBuf> {
    let dir = dir_of(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| with_path(&dir, e))?;
    }
    check_dir(&dir)?;
    check_target(path)?;
    Ok(dir)
}

/// Writes `bytes` to `path` atomically with `mode`: a new, randomly named temporary file in
/// the same directory (created exclusively, never through a link), fsynced, renamed over
/// `path`, and the directory fsynced. Creates missing parent directories (mode 0700).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = AtomicFile::create(path, mode)?;
    f.tmp
        .write_all(bytes)
        .map_err(|e| with_path(f.tmp.path(), e))?;
    // The target may have become a link since the check: rename replaces the link itself,
    // never what it points to.
    f.commit()
}

/// A whole file written as it streams in (a snapshot copied from a host): the same rules as
/// [`write_atomic`] (a new, randomly named temporary file in the target's directory, created
/// exclusively with `mode`, never through a link), renamed into place by [`AtomicFile::commit`]
/// once complete and fsynced. Dropped without a commit, the temporary file is removed: only a
/// complete file ever appears at `path`.
pub struct AtomicFile {
    path: PathBuf,
    dir: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// Starts `path` (creating missing parent directories, mode 0700).
    pub fn create(path: &Path, mode: u32) -> io::Result<AtomicFile> {
        let dir = prepare(path)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(&dir)
            .map_err(|e| with_path(&dir, e))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| with_path(tmp.path(), e))?;
        Ok(AtomicFile {
            path: path.to_owned(),
            dir,
            tmp,
        })
    }

    /// Fsyncs the file, renames it over `path` and fsyncs the directory.
    pub fn commit(self) -> io::Result<()> {
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| with_path(self.tmp.path(), e))?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| with_path(&self.path, e.error))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

/// Opens `path` for appending (creating it with `mode` if missing), refusing a symbolic link,
/// anything but a regular file, a file of another user, or a file with other hard links.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    prepare(path)?;
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| with_path(path, e))?;
    check_open(path, &f)?;
    Ok(f)
}

/// Creates `path` exclusively (it must not exist, not even as a dangling link) with `mode`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    let dir = dir_of(path);
    check_dir(&dir)?;
    check_target(path)?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| with_path(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| with_path(path, e))?;
    Ok(f)
}

/// Whether `path` is a regular file (not a link) that we own, with a single link: one the
/// installer may replace or rotate. `None` if it does not exist.
pub fn own_regular_file(path: &Path) -> io::Result<Option<bool>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.is_file() && m.uid() == euid() && m.nlink() == 1)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_write_sets_the_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kubeconfig.yaml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.uid(), euid());
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn planted_fixed_temp_name_is_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("demo-kubeconfig.yaml");
        let planted = d.path().join(".demo-kubeconfig.yaml.tmp");
        std::fs::write(&planted, "planted").unwrap();
        write_atomic(&p, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&planted).unwrap(), "planted");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }

    #[test]
    fn symlink_target_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let p = d.path().join("ca.crt");
        symlink(&victim, &p).unwrap();
        let e = write_atomic(&p, b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // Dangling too.
        let dangling = d.path().join("log");
        symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(open_append(&dangling, 0o600).is_err());
        assert!(create_new(&dangling, 0o600).is_err());
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn world_writable_directory_without_sticky_bit_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_atomic(&open.join("f"), b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("sticky"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        write_atomic(&open.join("f"), b"x", 0o600).unwrap();
    }

    #[test]
    fn a_streamed_file_appears_only_when_committed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("snap.db");
        let mut f = AtomicFile::create(&p, 0o600).unwrap();
        f.write_all(b"part").unwrap();
        assert!(!p.exists());
        drop(f);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let mut f = AtomicFile::create(&p, 0o600).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let link = d.path().join("link.db");
        symlink(&p, &link).unwrap();
        assert!(AtomicFile::create(&link, 0o600).is_err());
    }

    #[test]
    fn hard_linked_file_is_not_appended_to() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let p = d.path().join("journal");
        std::fs::hard_link(&victim, &p).unwrap();
        let e = open_append(&p, 0o600).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
    }
}
