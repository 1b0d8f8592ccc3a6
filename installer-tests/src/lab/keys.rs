//! SSH keys of a lab: the client keys the tests log in with (ed25519, the same key encrypted with a
//! documented passphrase, and RSA, so the SSH layer's tests cover key types), each node's fresh ed25519
//! host key, and the known_hosts file built from those host keys. Made with the system `ssh-keygen`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::cmd::{self, command};
use super::layout::Layout;

/// Generates the ed25519 lab key and its encrypted copy (fast).
pub(crate) fn generate_ed25519(layout: &Layout) -> Result<()> {
    let key = layout.key_path();
    cmd::run(
        command("ssh-keygen")?
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("lab{}", layout.id()))
            .arg("-f")
            .arg(&key),
    )
    .context("generating the lab key")?;
    let enc = layout.encrypted_key_path();
    std::fs::copy(&key, &enc)
        .with_context(|| format!("copying {} to {}", key.display(), enc.display()))?;
    std::fs::copy(key.with_extension("pub"), enc.with_extension("pub"))?;
    // The passphrase is a documented test constant, not a secret, so argv is acceptable here.
    cmd::run(
        command("ssh-keygen")?
            .args([
                "-q",
                "-p",
                "-P",
                "",
                "-N",
                super::ENCRYPTED_KEY_PASSPHRASE,
                "-f",
            ])
            .arg(&enc),
    )
    .context("encrypting the copy of the lab key")?;
    Ok(())
}

/// Generates the RSA lab key (about half a second: run it on a thread while the nodes are prepared).
pub(crate) fn generate_rsa(layout: &Layout) -> Result<()> {
    cmd::run(
        command("ssh-keygen")?
            .args(["-q", "-t", "rsa", "-b", "3072", "-N", "", "-C"])
            .arg(format!("lab{}-rsa", layout.id()))
            .arg("-f")
            .arg(layout.rsa_key_path()),
    )
    .context("generating the RSA lab key")?;
    Ok(())
}

/// The authorized_keys content for every node user: the ed25519 and the RSA public keys.
pub(crate) fn authorized_keys(layout: &Layout) -> Result<String> {
    let mut s = String::new();
    for k in [layout.key_path(), layout.rsa_key_path()] {
        let p = k.with_extension("pub");
        s.push_str(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim(),
        );
        s.push('\n');
    }
    Ok(s)
}

/// Generates a fresh ed25519 host key at `dir/ssh_host_ed25519_key`; returns the public key line.
pub(crate) fn host_key(dir: &Path, hostname: &str) -> Result<String> {
    let key = dir.join("ssh_host_ed25519_key");
    for p in [key.clone(), key.with_extension("pub")] {
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    cmd::run(
        command("ssh-keygen")?
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("root@{hostname}"))
            .arg("-f")
            .arg(&key),
    )
    .with_context(|| format!("generating the host key of {hostname}"))?;
    let pubp = key.with_extension("pub");
    Ok(std::fs::read_to_string(&pubp)
        .with_context(|| format!("reading {}", pubp.display()))?
        .trim()
        .to_string())
}

/// One known_hosts line: `ADDR TYPE BASE64` (the comment is dropped).
pub(crate) fn known_hosts_line(addr: &str, public_key_line: &str) -> Result<String> {
    let mut w = public_key_line.split_whitespace();
    match (w.next(), w.next()) {
        (Some(t), Some(b)) => Ok(format!("{addr} {t} {b}")),
        _ => bail!("not an OpenSSH public key line: {public_key_line:?}"),
    }
}

/// The fingerprint OpenSSH prints for a public key line: `SHA256:` + unpadded base64 of the
/// SHA-256 of the key blob (ssh-keygen -l; sshkey.c `sshkey_fingerprint`).
pub fn fingerprint(public_key_line: &str) -> Result<String> {
    let b64 = public_key_line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("not an OpenSSH public key line: {public_key_line:?}"))?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("decoding the public key")?;
    let digest = Sha256::digest(&blob);
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let Some(_) = cmd::find_tool("ssh-keygen") else {
            eprintln!("skipped: ssh-keygen not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let line = host_key(dir.path(), "nodex").unwrap();
        assert!(
            line.starts_with("ssh-ed25519 ") && line.ends_with("root@nodex"),
            "{line}"
        );
        let out = cmd::run(
            command("ssh-keygen")
                .unwrap()
                .arg("-lf")
                .arg(dir.path().join("ssh_host_ed25519_key.pub")),
        )
        .unwrap();
        let theirs = out.split_whitespace().nth(1).unwrap().to_string();
        assert_eq!(fingerprint(&line).unwrap(), theirs);
        // a second key is a different key
        let line2 = host_key(dir.path(), "nodex").unwrap();
        assert_ne!(line, line2);
    }

    #[test]
    fn known_hosts_lines_drop_the_comment() {
        assert_eq!(
            known_hosts_line("10.77.1.11", "ssh-ed25519 AAAAC3 root@node1").unwrap(),
            "10.77.1.11 ssh-ed25519 AAAAC3"
        );
        assert!(known_hosts_line("10.77.1.11", "garbage").is_err());
    }
}
