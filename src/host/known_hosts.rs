//! OpenSSH `known_hosts` files: look a host's key up, and append keys the user accepted.
//!
//! russh ships a known_hosts reader, but it splits lines on single spaces, ignores
//! `@revoked`/`@cert-authority` markers and wildcard patterns, and fails the whole lookup
//! on one unparsable line. Admins' files contain all of those, so the SSH layer reads them
//! here, following sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT":
//! - fields are separated by spaces or tabs: `[marker] hostnames keytype base64 [comment]`;
//! - `hostnames` is a comma-separated list of patterns (`*`, `?`, `!negation`) or a
//!   single hashed entry `|1|base64(salt)|base64(HMAC-SHA1(salt, host))`
//!   (`HashKnownHosts yes`, the Debian and Ubuntu default);
//! - a host on a port other than 22 is written `[host]:port`.
//!
//! Lines this module cannot parse (unknown key types, `@cert-authority`) are skipped, as
//! OpenSSH does, never an error.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a host's name appears in known_hosts: `host` on port 22, `[host]:port` otherwise.
pub fn host_token(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The fingerprint as `ssh-keygen -l` shows it: `SHA256:<base64 without padding>`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Where an entry was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One usable known_hosts line that names the host.
#[derive(Debug, Clone)]
pub struct KnownKey {
    pub key: PublicKey,
    pub revoked: bool,
    pub location: Location,
}

/// The verdict of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An entry for the host holds exactly this key.
    Trusted(Location),
    /// The key is marked `@revoked`.
    Revoked(Location),
    /// The host is known, but with other key(s): `(fingerprint, where)` of each.
    Changed(Vec<(String, Location)>),
    /// No entry names the host.
    Unknown,
}

/// Every entry of `files` that names one of `names` (each already a [`host_token`]).
/// Missing files are skipped; an unreadable existing file is an error.
pub fn entries_for(files: &[PathBuf], names: &[String]) -> std::io::Result<Vec<KnownKey>> {
    let mut found = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        };
        for (i, line) in text.lines().enumerate() {
            let Some(parsed) = parse_line(line) else {
                continue;
            };
            if names.iter().any(|n| parsed.matches(n)) {
                found.push(KnownKey {
                    key: parsed.key,
                    revoked: parsed.revoked,
                    location: Location {
                        file: file.clone(),
                        line: i + 1,
                    },
                });
            }
        }
    }
    Ok(found)
}

/// Decides whether `key` is the known key of a host named by any of `names`.
///
/// A host that is known only with keys of *other* types counts as changed: the SSH layer
/// asks servers for the key types already recorded (as OpenSSH does), so a server that
/// offers another type is suspect.
pub fn verify(entries: &[KnownKey], key: &PublicKey) -> Verdict {
    if let Some(r) = entries
        .iter()
        .find(|e| e.revoked && e.key.key_data() == key.key_data())
    {
        return Verdict::Revoked(r.location.clone());
    }
    let live: Vec<&KnownKey> = entries.iter().filter(|e| !e.revoked).collect();
    if let Some(hit) = live.iter().find(|e| e.key.key_data() == key.key_data()) {
        return Verdict::Trusted(hit.location.clone());
    }
    if live.is_empty() {
        return Verdict::Unknown;
    }
    Verdict::Changed(
        live.iter()
            .map(|e| (fingerprint(&e.key), e.location.clone()))
            .collect(),
    )
}

/// The key algorithms recorded for the host, in file order, without repeats.
pub fn known_algorithms(entries: &[KnownKey]) -> Vec<Algorithm> {
    let mut out: Vec<Algorithm> = Vec::new();
    for e in entries.iter().filter(|e| !e.revoked) {
        let alg = e.key.algorithm();
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    out
}

/// Whether `path` hashes its host names: `Some(true)` if any entry is hashed,
/// `Some(false)` if it has only plain entries, `None` if it has no entries (or is absent).
pub fn uses_hashing(path: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut plain = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut hosts = fields.next().unwrap_or("");
        if hosts.starts_with('@') {
            hosts = fields.next().unwrap_or("");
        }
        if hosts.starts_with("|1|") {
            return Some(true);
        }
        plain = true;
    }
    plain.then_some(false)
}

/// Appends `key` for `token` (see [`host_token`]) to `path`, hashed or plain, creating
/// the file (and a missing `~/.ssh`, mode 0700) if needed. Returns the line written.
pub fn append(path: &Path, token: &str, key: &PublicKey, hashed: bool) -> std::io::Result<String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
            set_mode(parent, 0o700);
        }
    }
    let mut key = key.clone();
    key.set_comment("");
    let openssh = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(format!("cannot encode the key: {e}")))?;
    let host_field = if hashed {
        hash_host(token, &rand::random::<[u8; 20]>())
    } else {
        token.to_owned()
    };
    let line = format!("{host_field} {}", openssh.trim_end());
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut needs_newline = false;
    if file.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        if file.read_exact(&mut last).is_ok() {
            needs_newline = last[0] != b'\n';
        }
    }
    let mut buf = String::new();
    if needs_newline {
        buf.push('\n');
    }
    buf.push_str(&line);
    buf.push('\n');
    file.write_all(buf.as_bytes())?;
    file.sync_all()?;
    Ok(line)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) {}

/// `|1|salt|hmac` for `token`, as `ssh-keygen -H` writes it.
pub fn hash_host(token: &str, salt: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
    let tag = ring::hmac::sign(&key, token.as_bytes());
    format!("|1|{}|{}", B64.encode(salt), B64.encode(tag.as_ref()))
}

struct Line {
    revoked: bool,
    patterns: Patterns,
    key: PublicKey,
}

enum Patterns {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    List(Vec<(bool, String)>),
}

impl Line {
    fn matches(&self, token: &str) -> bool {
        match &self.patterns {
            Patterns::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, token.as_bytes(), hash).is_ok()
            }
            Patterns::List(list) => {
                let token = token.to_ascii_lowercase();
                let mut hit = false;
                for (negated, pattern) in list {
                    if wildcard_match(pattern, &token) {
                        if *negated {
                            return false;
                        }
                        hit = true;
                    }
                }
                hit
            }
        }
    }
}

fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut hosts = fields.next()?;
    let mut revoked = false;
    if let Some(marker) = hosts.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            // Host certificates are not supported: skip, as an unknown line would be.
            _ => return None,
        }
        hosts = fields.next()?;
    }
    let key_type = fields.next()?;
    let data = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{key_type} {data}")).ok()?;
    let patterns = if let Some(rest) = hosts.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        Patterns::Hashed {
            salt: B64.decode(salt).ok()?,
            hash: B64.decode(hash).ok()?,
        }
    } else {
        Patterns::List(
            hosts
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.strip_prefix('!') {
                    Some(neg) => (true, neg.to_ascii_lowercase()),
                    None => (false, p.to_ascii_lowercase()),
                })
                .collect(),
        )
    };
    Some(Line {
        revoked,
        patterns,
        key,
    })
}

/// OpenSSH's `match_pattern`: `*` matches any run of characters, `?` exactly one.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Public keys made with `ssh-keygen -t ed25519` for these tests only.
    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENdyBLvLS41M19jpIlhezqVCwU4oQjvVYSZ+tRTUEYz";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOgM8Xs1wu7s3CP3MlVgiuKsCvuap1oKpVtbJnkkrMnA";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("known_hosts");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn plain_entry_with_port_and_tabs_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("# comment\n\n[10.0.0.1]:2222,other\t{ED_A} c\n"),
        );
        let names = vec![host_token("10.0.0.1", 2222)];
        let e = entries_for(&[p.clone()], &names).unwrap();
        assert_eq!(
            verify(&e, &key(ED_A)),
            Verdict::Trusted(Location { file: p, line: 3 })
        );
        // The same host on port 22 is not that entry.
        let e = entries_for(&[dir.path().join("known_hosts")], &["10.0.0.1".into()]).unwrap();
        assert_eq!(verify(&e, &key(ED_A)), Verdict::Unknown);
    }

    #[test]
    fn a_different_key_for_a_known_host_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, &format!("node1 {ED_A}\n"));
        let e = entries_for(&[p], &["node1".into()]).unwrap();
        match verify(&e, &key(ED_B)) {
            Verdict::Changed(list) => {
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].0, fingerprint(&key(ED_A)));
                assert_eq!(list[0].1.line, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hashed_entries_match_their_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = host_token("192.168.1.5", 22);
        let line = format!("{} {ED_A}\n", hash_host(&token, b"0123456789abcdefghij"));
        let p = write(&dir, &line);
        assert_eq!(uses_hashing(&p), Some(true));
        let e = entries_for(std::slice::from_ref(&p), &[token]).unwrap();
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Trusted(_)));
        let e = entries_for(&[p], &["192.168.1.6".into()]).unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn hashing_matches_ssh_keygen() {
        // Written by `ssh-keygen -H` from the plain line `[node7.lab]:2222 <ED_A>`.
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!("|1|24yA/1KzKr45RyvOBtko0ZAQ7Y0=|KoeFigZeOjbQmgSwjPAIJlbZrTg= {ED_A}\n"),
        );
        let e = entries_for(std::slice::from_ref(&p), &[host_token("node7.lab", 2222)]).unwrap();
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Trusted(_)));
        let e = entries_for(&[p], &[host_token("node7.lab", 22)]).unwrap();
        assert!(e.is_empty());
        // And our own hashing reproduces ssh-keygen's for the same salt.
        let salt = B64.decode("24yA/1KzKr45RyvOBtko0ZAQ7Y0=").unwrap();
        assert_eq!(
            hash_host("[node7.lab]:2222", &salt),
            "|1|24yA/1KzKr45RyvOBtko0ZAQ7Y0=|KoeFigZeOjbQmgSwjPAIJlbZrTg="
        );
    }

    #[test]
    fn wildcards_negation_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!(
                "*.lab,!bad.lab {ED_A}\n@revoked * {ED_B}\n@cert-authority *.lab {ED_B}\nnot a key line\n"
            ),
        );
        let e = entries_for(std::slice::from_ref(&p), &["n1.lab".into()]).unwrap();
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Trusted(_)));
        assert!(matches!(verify(&e, &key(ED_B)), Verdict::Revoked(_)));
        let e = entries_for(&[p], &["bad.lab".into()]).unwrap();
        // Only the @revoked line names bad.lab: the host is not otherwise known.
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Unknown));
    }

    #[test]
    fn append_keeps_the_file_style_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, &format!("old {ED_B}")); // no trailing newline
        assert_eq!(uses_hashing(&p), Some(false));
        append(&p, &host_token("10.1.1.1", 2200), &key(ED_A), false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("old {ED_B}\n[10.1.1.1]:2200 {ED_A}\n"));
        let e = entries_for(std::slice::from_ref(&p), &["[10.1.1.1]:2200".into()]).unwrap();
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Trusted(_)));

        let h = dir.path().join("sub/known_hosts_hashed");
        append(&h, "10.1.1.2", &key(ED_A), true).unwrap();
        assert_eq!(uses_hashing(&h), Some(true));
        let e = entries_for(&[h], &["10.1.1.2".into()]).unwrap();
        assert!(matches!(verify(&e, &key(ED_A)), Verdict::Trusted(_)));
    }

    #[test]
    fn known_algorithms_lists_types_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, &format!("h {ED_A}\nh {ED_B}\n"));
        let e = entries_for(&[p], &["h".into()]).unwrap();
        assert_eq!(known_algorithms(&e), vec![Algorithm::Ed25519]);
    }

    #[test]
    fn wildcard_matcher() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("10.0.0.?", "10.0.0.7"));
        assert!(!wildcard_match("10.0.0.?", "10.0.0.17"));
        assert!(wildcard_match("*.example.*", "a.example.com"));
        assert!(!wildcard_match("a*b", "ac"));
    }
}
