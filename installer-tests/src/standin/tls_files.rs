//! The server's certificate files under `${data-dir}/server/tls`, the bootstrap data a joining
//! server receives, and the token and kubeconfig files k3s writes.
//!
//! Paths and modes follow `pkg/daemons/control/deps/deps.go` and `pkg/server/server.go`
//! (release-1.36): `server/tls/{server-ca,client-ca,request-header-ca}.{crt,key}`,
//! `server/tls/etcd/{server-ca,peer-ca}.{crt,key}`, `server/tls/service.key`,
//! `server/tls/client-admin.{crt,key}`, `server/cred/passwd`; `server/token` (0600,
//! `K10<hash>::server:<password>`), `server/node-token` (a symlink to `token`), `server/agent-token`
//! (its own file when an agent token is configured, else a symlink to `token`); and the admin
//! kubeconfig `/etc/rancher/k3s/k3s.yaml` (mode 0600 unless `write-kubeconfig-mode` says otherwise).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

use super::paths::Root;
use super::pki::{self, CertKey};

/// The cluster-wide CAs and keys (identical on every server).
#[derive(Clone, Debug)]
pub struct ClusterPki {
    pub server_ca: CertKey,
    pub client_ca: CertKey,
    pub request_header_ca: CertKey,
    pub etcd_server_ca: CertKey,
    pub etcd_peer_ca: CertKey,
    pub service_key: String,
}

/// File names, relative to `server/`, of everything in the bootstrap data.
const BOOTSTRAP_FILES: &[&str] = &[
    "tls/server-ca.crt",
    "tls/server-ca.key",
    "tls/client-ca.crt",
    "tls/client-ca.key",
    "tls/request-header-ca.crt",
    "tls/request-header-ca.key",
    "tls/etcd/server-ca.crt",
    "tls/etcd/server-ca.key",
    "tls/etcd/peer-ca.crt",
    "tls/etcd/peer-ca.key",
    "tls/service.key",
    "cred/passwd",
];

/// Write a file with a mode, creating parent directories (0700 as k3s creates them).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))?;
    }
    let tmp = path.with_extension("standin-tmp");
    std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

impl ClusterPki {
    /// Load the CAs from `server_dir` (already rooted), generating any that are missing.
    pub fn load_or_generate(server_dir: &Path) -> Result<ClusterPki> {
        let pair = |name: &str, cn: &str| -> Result<CertKey> {
            let crt = server_dir.join(format!("tls/{name}.crt"));
            let key = server_dir.join(format!("tls/{name}.key"));
            if crt.exists() && key.exists() {
                return Ok(CertKey {
                    cert_pem: read(&crt)?,
                    key_pem: read(&key)?,
                });
            }
            let ck = pki::new_ca(cn)?;
            write_file(&crt, ck.cert_pem.as_bytes(), 0o644)?;
            write_file(&key, ck.key_pem.as_bytes(), 0o600)?;
            Ok(ck)
        };
        let server_ca = pair("server-ca", "k3s-server-ca")?;
        let client_ca = pair("client-ca", "k3s-client-ca")?;
        let request_header_ca = pair("request-header-ca", "k3s-request-header-ca")?;
        let etcd_server_ca = pair("etcd/server-ca", "etcd-server-ca")?;
        let etcd_peer_ca = pair("etcd/peer-ca", "etcd-peer-ca")?;
        let sk = server_dir.join("tls/service.key");
        let service_key = if sk.exists() {
            read(&sk)?
        } else {
            let k = rcgen::KeyPair::generate()?.serialize_pem();
            write_file(&sk, k.as_bytes(), 0o600)?;
            k
        };
        Ok(ClusterPki {
            server_ca,
            client_ca,
            request_header_ca,
            etcd_server_ca,
            etcd_peer_ca,
            service_key,
        })
    }

    /// Whether the CA files exist (the server has been bootstrapped).
    pub fn exists(server_dir: &Path) -> bool {
        server_dir.join("tls/server-ca.crt").exists()
            && server_dir.join("tls/client-ca.key").exists()
    }
}

/// The bootstrap data (`/v1-k3s/server-bootstrap`): every CA file and the passwd file.
pub fn bootstrap_data(server_dir: &Path) -> Result<Value> {
    let mut files = serde_json::Map::new();
    for f in BOOTSTRAP_FILES {
        let p = server_dir.join(f);
        let data = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
        files.insert(
            (*f).to_string(),
            json!(base64::engine::general_purpose::STANDARD.encode(data)),
        );
    }
    Ok(json!({"files": files}))
}

/// Write bootstrap data received from another server.
pub fn write_bootstrap_data(server_dir: &Path, data: &Value) -> Result<()> {
    let files = data
        .get("files")
        .and_then(Value::as_object)
        .context("bootstrap data without files")?;
    for (name, content) in files {
        if !BOOTSTRAP_FILES.contains(&name.as_str()) {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content.as_str().unwrap_or_default())
            .context("bootstrap data encoding")?;
        let mode = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        write_file(&server_dir.join(name), &bytes, mode)?;
    }
    Ok(())
}

/// The `server/cred/passwd` file: `password,user,uid,groups` lines (`pkg/passwd`).
#[derive(Debug, Clone, Default)]
pub struct Passwd {
    pub server: Option<String>,
    pub node: Option<String>,
}

impl Passwd {
    /// Read it, if present.
    pub fn read(server_dir: &Path) -> Passwd {
        let mut p = Passwd::default();
        if let Ok(text) = std::fs::read_to_string(server_dir.join("cred/passwd")) {
            for line in text.lines() {
                let cols: Vec<&str> = line.split(',').collect();
                if cols.len() >= 2 {
                    match cols[1] {
                        "server" => p.server = Some(cols[0].to_string()),
                        "node" => p.node = Some(cols[0].to_string()),
                        _ => {}
                    }
                }
            }
        }
        p
    }

    /// Write it (0600).
    pub fn write(&self, server_dir: &Path) -> Result<()> {
        let mut s = String::new();
        if let Some(n) = &self.node {
            s.push_str(&format!("{n},node,node,k3s:agent\n"));
        }
        if let Some(sv) = &self.server {
            s.push_str(&format!("{sv},server,server,k3s:server\n"));
        }
        write_file(&server_dir.join("cred/passwd"), s.as_bytes(), 0o600)
    }
}

/// Write `server/token`, `server/node-token` and `server/agent-token` (`printTokens`).
pub fn write_tokens(
    server_dir: &Path,
    ca_pem: &str,
    server_pw: &str,
    agent_pw: Option<&str>,
) -> Result<()> {
    let token = super::token::format(&format!("server:{server_pw}"), ca_pem.as_bytes());
    let token_file = server_dir.join("token");
    write_file(&token_file, format!("{token}\n").as_bytes(), 0o600)?;
    let symlink = |link: PathBuf| -> Result<()> {
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(());
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&token_file, &link)
            .with_context(|| format!("symlink {}", link.display()))
    };
    symlink(server_dir.join("node-token"))?;
    let agent_file = server_dir.join("agent-token");
    match agent_pw {
        Some(pw) => {
            if std::fs::symlink_metadata(&agent_file).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::remove_file(&agent_file)?;
            }
            let t = super::token::format(&format!("node:{pw}"), ca_pem.as_bytes());
            write_file(&agent_file, format!("{t}\n").as_bytes(), 0o600)?;
        }
        None => symlink(agent_file)?,
    }
    Ok(())
}

/// Render a kubeconfig (`clientaccess.WriteClientKubeConfig`).
pub fn kubeconfig(url: &str, ca_pem: &str, client: &CertKey) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {url}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b(ca_pem),
        b(&client.cert_pem),
        b(&client.key_pem)
    )
}

/// Write the admin kubeconfig with k3s's mode rules (`writeKubeConfig`): the configured mode
/// parsed as octal, else 0600. Returns the path written.
pub fn write_kubeconfig(root: &Root, path: &str, content: &str, mode: &str) -> Result<PathBuf> {
    let p = root.path(path);
    let m = if mode.is_empty() {
        0o600
    } else {
        match u32::from_str_radix(mode, 8) {
            Ok(m) => m,
            Err(_) => {
                super::log::error(format!("Failed to set {path} to mode {mode}: invalid mode"));
                0o600
            }
        }
    };
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&p, content)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let server = d.path().join("server");
        let pki = ClusterPki::load_or_generate(&server).unwrap();
        write_tokens(&server, &pki.server_ca.cert_pem, "pw", None).unwrap();
        let t = std::fs::read_to_string(server.join("token")).unwrap();
        assert!(t.starts_with("K10") && t.trim_end().ends_with("::server:pw"));
        let info = crate::standin::token::parse(t.trim()).unwrap();
        assert_eq!(
            crate::standin::token::check_ca(&info, pki.server_ca.cert_pem.as_bytes()),
            crate::standin::token::CaCheck::Ok
        );
        assert!(
            std::fs::symlink_metadata(server.join("node-token"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::symlink_metadata(server.join("agent-token"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = std::fs::metadata(server.join("token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        write_tokens(&server, &pki.server_ca.cert_pem, "pw", Some("apw")).unwrap();
        let a = std::fs::read_to_string(server.join("agent-token")).unwrap();
        assert!(a.trim_end().ends_with("::node:apw"));
        assert!(
            !std::fs::symlink_metadata(server.join("agent-token"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn bootstrap_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a/server");
        let b = d.path().join("b/server");
        let pki = ClusterPki::load_or_generate(&a).unwrap();
        Passwd {
            server: Some("s".into()),
            node: Some("n".into()),
        }
        .write(&a)
        .unwrap();
        let data = bootstrap_data(&a).unwrap();
        write_bootstrap_data(&b, &data).unwrap();
        let pki_b = ClusterPki::load_or_generate(&b).unwrap();
        assert_eq!(pki.server_ca.cert_pem, pki_b.server_ca.cert_pem);
        assert_eq!(Passwd::read(&b).server.as_deref(), Some("s"));
    }
}
