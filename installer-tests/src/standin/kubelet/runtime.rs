//! What containerd would know on this node: which images are imported, and whether a CNI
//! network is configured.
//!
//! - Images: every archive in `${data-dir}/agent/images/` is read (at start and whenever a file
//!   appears or changes, as k3s's image watcher does, `pkg/agent/containerd/watcher.go`); the names
//!   it holds count as present. `.txt` pull lists name images k3s would try to pull, which fails
//!   without a registry, so they add nothing. Unreadable archives are logged like k3s's import
//!   errors.
//! - CNI: with `flannel-backend: none`, containerd looks in `/etc/cni/net.d` (docs/k3s-host-network.md
//!   §1); the network is ready once a `.conf`, `.conflist` or `.json` file there parses and names
//!   a plugin. Until then the runtime reports `NetworkReady=false reason:NetworkPluginNotReady
//!   message:Network plugin returns error: cni plugin not initialized`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::images;
use crate::standin::log;

/// The containerd message when no CNI config is loaded.
pub const CNI_NOT_READY: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

/// Whether `dir` holds a loadable CNI network config (libcni `ConfFiles` + parse).
pub fn cni_ready(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
        })
        .collect();
    files.sort();
    files.iter().any(|f| {
        let Ok(text) = std::fs::read_to_string(f) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let has_plugins = v
            .get("plugins")
            .and_then(|p| p.as_array())
            .is_some_and(|a| !a.is_empty() && a.iter().all(|p| p.get("type").is_some()));
        let is_conf = v.get("type").and_then(|t| t.as_str()).is_some();
        (has_plugins || is_conf) && v.get("name").is_some()
    })
}

/// The images imported from the node's image directory.
#[derive(Default)]
pub struct ImageStore {
    seen: BTreeMap<PathBuf, (SystemTime, u64, Vec<String>)>,
    warned: BTreeSet<PathBuf>,
    /// Images that carry a root filesystem and name a program, with the archive holding them
    /// (the kubelet runs their containers with runc, [`super::runc`]).
    runnable: BTreeMap<String, (PathBuf, crate::rootfs_images::ImageInfo)>,
}

impl ImageStore {
    /// Rescan the directory; returns the names present and their archive sizes.
    pub fn scan(&mut self, dir: &Path) -> BTreeMap<String, u64> {
        let mut present = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return present;
        };
        let mut live = BTreeSet::new();
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            live.insert(p.clone());
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let size = meta.len();
            let fresh = self
                .seen
                .get(&p)
                .is_some_and(|(t, s, _)| *t == mtime && *s == size);
            if !fresh {
                let names = if p.extension().and_then(|x| x.to_str()) == Some("txt") {
                    if self.warned.insert(p.clone()) {
                        log::error(format!(
                            "Failed to pull images from {}: no registry is reachable from this node (airgap)",
                            p.display()
                        ));
                    }
                    Vec::new()
                } else {
                    match images::compression_for(&p) {
                        Ok(None) => Vec::new(),
                        Ok(Some(_)) | Err(_) => match images::read_image_names(&p) {
                            Ok(n) => {
                                log::info(format!("Imported images from {}", p.display()));
                                self.runnable.retain(|_, (a, _)| *a != p);
                                match crate::rootfs_images::read_images(&p) {
                                    Ok(infos) => {
                                        for i in infos.into_iter().filter(|i| i.runnable()) {
                                            self.runnable.insert(i.name.clone(), (p.clone(), i));
                                        }
                                    }
                                    Err(err) => log::error(format!(
                                        "Error reading image configs from {}: {err}",
                                        p.display()
                                    )),
                                }
                                n
                            }
                            Err(err) => {
                                log::error(format!(
                                    "Error importing images from {}: {err}",
                                    p.display()
                                ));
                                Vec::new()
                            }
                        },
                    }
                };
                self.seen.insert(p.clone(), (mtime, size, names));
            }
            if let Some((_, size, names)) = self.seen.get(&p) {
                let share = if names.is_empty() {
                    0
                } else {
                    size / names.len() as u64
                };
                for n in names {
                    present.insert(n.clone(), share);
                }
            }
        }
        self.seen.retain(|p, _| live.contains(p));
        self.runnable.retain(|_, (a, _)| live.contains(a));
        present
    }

    /// The archive and config of an image that carries a program, if `name` is one.
    pub fn runnable(&self, name: &str) -> Option<&(PathBuf, crate::rootfs_images::ImageInfo)> {
        self.runnable.get(name)
    }
}

/// The name of the stand-in's directory under `${data-dir}/data/` (k3s uses the SHA-256 of its
/// bundled userspace; here, of the version string).
pub fn data_hash() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        super::super::version::current().as_bytes(),
    ))
}

/// Stage `${data-dir}/data` as k3s does on every start (`cmd/k3s/main.go` `extract`):
/// `data/<hash>/bin` holding its binaries (here links to this executable), `data/current`
/// pointing at it, and `data/cni/<plugin>` links to the multicall `cni` binary, which the
/// installer links into `/opt/cni/bin`.
pub fn stage_data_dir(root: &crate::standin::paths::Root, data_dir: &Path) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let hash = data_hash();
    let data = root.path(data_dir.join("data"));
    let bin = data.join(&hash).join("bin");
    std::fs::create_dir_all(&bin)?;
    let link = |target: &Path, at: &Path| -> std::io::Result<()> {
        if std::fs::symlink_metadata(at).is_ok() {
            std::fs::remove_file(at)?;
        }
        std::os::unix::fs::symlink(target, at)
    };
    for b in ["cni", "containerd-shim-runc-v2", "kubectl", "crictl", "ctr"] {
        link(&exe, &bin.join(b))?;
    }
    link(Path::new(&hash), &data.join("current"))?;
    let cni = data.join("cni");
    std::fs::create_dir_all(&cni)?;
    for p in [
        "bandwidth",
        "bridge",
        "firewall",
        "flannel",
        "host-local",
        "loopback",
        "portmap",
    ] {
        link(&Path::new("..").join(&hash).join("bin/cni"), &cni.join(p))?;
    }
    Ok(())
}

/// Append containerd's import lines for newly imported images to
/// `${data-dir}/agent/containerd/containerd.log` (collected by support bundles).
pub fn log_imports(log: &Path, names: &[String]) {
    if names.is_empty() {
        return;
    }
    if let Some(d) = log.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let mut text = String::new();
    for n in names {
        text.push_str(&crate::standin::log::format_line(
            crate::standin::log::Level::Info,
            &format!("ImageCreate event name:\"{n}\" labels:{{key:\"io.cri-containerd.image\" value:\"managed\"}}"),
        ));
        text.push('\n');
    }
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_needs_a_parsable_config() {
        let d = tempfile::tempdir().unwrap();
        assert!(!cni_ready(d.path()));
        std::fs::write(d.path().join("10-local.conflist"), "{not json").unwrap();
        assert!(!cni_ready(d.path()));
        std::fs::write(
            d.path().join("10-local.conflist"),
            r#"{"cniVersion":"1.0.0","name":"local","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        assert!(cni_ready(d.path()));
        assert!(!cni_ready(&d.path().join("missing")));
    }

    #[test]
    fn images_are_picked_up_and_dropped() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ImageStore::default();
        assert!(s.scan(d.path()).is_empty());
        images::write_archive(
            &d.path().join("a.tar"),
            &["registry.example/app/api:1.0"],
            &Default::default(),
        )
        .unwrap();
        let got = s.scan(d.path());
        assert!(got.contains_key("registry.example/app/api:1.0"));
        std::fs::remove_file(d.path().join("a.tar")).unwrap();
        assert!(s.scan(d.path()).is_empty());
    }
}
