//! The version the stand-in reports, in k3s's format.
//!
//! `k3s --version` prints `k3s version v1.36.2+k3s1 (<8-hex commit>)` and `go version go1.x`
//! (`pkg/cli/cmds/root.go`, `pkg/version`); the node's `kubeletVersion` is the same
//! `v1.36.2+k3s1`. Upgrade tests need two stand-ins with different versions: [`stamp`] copies the
//! binary and appends a trailer naming another version, which [`current`] reads back.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::OnceLock;

/// The version a plain build reports (the k3s release the flag table was read from).
pub const DEFAULT_VERSION: &str = "v1.36.2+k3s1";
/// The commit shown in `--version` (k3s prints the first 8 hex digits of its commit).
pub const COMMIT: &str = "5a1a4d4e";
/// The Go version k3s 1.36 is built with.
pub const GO_VERSION: &str = "go1.25.7";

const TRAILER_MAGIC: &[u8; 16] = b"K3SSTANDINVER01\n";
const TRAILER_LEN: usize = 64;

/// The version this binary reports.
pub fn current() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| read_trailer(&p))
            .unwrap_or_else(|| DEFAULT_VERSION.to_string())
    })
}

/// `v1.36.2+k3s1` -> `(1, 36)`.
pub fn major_minor(v: &str) -> (String, String) {
    let core = v.trim_start_matches('v');
    let mut it = core.split(['.', '+', '-']);
    let major = it.next().unwrap_or("1").to_string();
    let minor = it.next().unwrap_or("0").to_string();
    (major, minor)
}

fn read_trailer(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < TRAILER_LEN as u64 {
        return None;
    }
    f.seek(SeekFrom::End(-(TRAILER_LEN as i64))).ok()?;
    let mut buf = [0u8; TRAILER_LEN];
    f.read_exact(&mut buf).ok()?;
    if &buf[..16] != TRAILER_MAGIC {
        return None;
    }
    let v = String::from_utf8_lossy(&buf[16..])
        .trim_end_matches(['\0', '\n'])
        .to_string();
    (!v.is_empty()).then_some(v)
}

/// Copy the stand-in binary `src` to `dst`, stamped to report `version` (at most 48 bytes).
pub fn stamp(src: &Path, dst: &Path, version: &str) -> std::io::Result<()> {
    if version.len() > TRAILER_LEN - 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "version string too long",
        ));
    }
    let mut data = std::fs::read(src)?;
    if data.len() >= TRAILER_LEN
        && &data[data.len() - TRAILER_LEN..data.len() - TRAILER_LEN + 16] == TRAILER_MAGIC
    {
        data.truncate(data.len() - TRAILER_LEN);
    }
    data.extend_from_slice(TRAILER_MAGIC);
    let mut v = version.as_bytes().to_vec();
    v.resize(TRAILER_LEN - 16, 0);
    data.extend_from_slice(&v);
    std::fs::write(dst, data)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a");
        std::fs::write(&src, vec![7u8; 100]).unwrap();
        let dst = d.path().join("b");
        stamp(&src, &dst, "v1.36.3+k3s1").unwrap();
        assert_eq!(read_trailer(&dst).as_deref(), Some("v1.36.3+k3s1"));
        assert_eq!(read_trailer(&src), None);
        let dst2 = d.path().join("c");
        stamp(&dst, &dst2, "v1.37.0+k3s1").unwrap();
        assert_eq!(std::fs::metadata(&dst2).unwrap().len(), 164);
        assert_eq!(read_trailer(&dst2).as_deref(), Some("v1.37.0+k3s1"));
    }

    #[test]
    fn major_minor_split() {
        assert_eq!(
            major_minor("v1.36.2+k3s1"),
            ("1".to_string(), "36".to_string())
        );
    }
}
