//! A pod's cgroup on the node: where the kubelet puts it, as nftables names it.
//!
//! Layouts (all under the cgroup v2 hierarchy, which is `/sys/fs/cgroup` on a pure v2 host and
//! `/sys/fs/cgroup/unified` on a hybrid one):
//! - systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
//!   (the UID's dashes written as underscores), Guaranteed pods one level up:
//!   `kubepods.slice/kubepods-pod<uid_>.slice`;
//! - cgroupfs driver: `kubepods/<qos>/pod<uid>`, Guaranteed `kubepods/pod<uid>`.
//!
//! nftables resolves a `socket cgroupv2` path relative to `/sys/fs/cgroup` when it parses the
//! batch and stores the cgroup's inode number, which is its id: a cgroup recreated at the same
//! path is a new id, so the caller re-applies when an inode changes ([`CgroupRef::inode`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One cgroup as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub struct CgroupRef {
    /// The path nft is given (relative to `/sys/fs/cgroup`, e.g. `unified/kubepods.slice/...`).
    pub nft_path: String,
    /// Its depth in the cgroup v2 hierarchy (`socket cgroupv2 level N`).
    pub level: u32,
    /// Its inode number (the cgroup id the kernel matches).
    pub inode: u64,
}

/// The node's cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    /// Where nft resolves paths: `/sys/fs/cgroup`.
    pub fs_root: PathBuf,
    /// `""` on a pure v2 host, `"unified"` on a hybrid one.
    pub v2_prefix: String,
    /// Extra components above the kubelet's tree (empty on a node; the root harness uses it).
    pub base: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no cgroup v2 hierarchy under {0} (neither {0}/cgroup.controllers nor {0}/unified/cgroup.controllers exists); hint: mount the host's /sys/fs/cgroup read-only at /sys/fs/cgroup"
)]
pub struct NoCgroup2(pub String);

impl CgroupFs {
    /// Finds the cgroup v2 hierarchy under `fs_root` (pure v2 or hybrid).
    pub fn detect(fs_root: &Path, base: &str) -> Result<Self, NoCgroup2> {
        let v2_prefix = if fs_root.join("cgroup.controllers").exists() {
            String::new()
        } else if fs_root.join("unified/cgroup.controllers").exists() {
            "unified".to_string()
        } else {
            return Err(NoCgroup2(fs_root.display().to_string()));
        };
        Ok(CgroupFs {
            fs_root: fs_root.to_path_buf(),
            v2_prefix,
            base: base
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// The pod's cgroup candidates, in the order tried, as components under the v2 root.
    pub fn candidates(uid: &str, qos: Option<&str>) -> Vec<Vec<String>> {
        let u = uid.replace('-', "_");
        let mut out = Vec::new();
        let qos_list: Vec<&str> = match qos {
            Some("Guaranteed") => vec!["guaranteed"],
            Some("Burstable") => vec!["burstable"],
            Some("BestEffort") => vec!["besteffort"],
            _ => vec!["burstable", "besteffort", "guaranteed"],
        };
        for q in qos_list {
            if q == "guaranteed" {
                out.push(vec![
                    "kubepods.slice".into(),
                    format!("kubepods-pod{u}.slice"),
                ]);
                out.push(vec!["kubepods".into(), format!("pod{uid}")]);
            } else {
                out.push(vec![
                    "kubepods.slice".into(),
                    format!("kubepods-{q}.slice"),
                    format!("kubepods-{q}-pod{u}.slice"),
                ]);
                out.push(vec!["kubepods".into(), q.into(), format!("pod{uid}")]);
            }
        }
        out
    }

    fn make_ref(&self, components: &[String]) -> Option<CgroupRef> {
        let mut all: Vec<&str> = self.base.iter().map(String::as_str).collect();
        all.extend(components.iter().map(String::as_str));
        let rel = all.join("/");
        let nft_path = if self.v2_prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.v2_prefix)
        };
        // A path nft's quoting cannot carry (a uid from the API is not trusted to be a UUID) is
        // never resolved: the pod stays denied, and the batch stays valid for every other pod.
        if nft_path.contains(['"', '\\', '\n']) {
            return None;
        }
        let meta = std::fs::metadata(self.fs_root.join(&nft_path)).ok()?;
        if !meta.is_dir() {
            return None;
        }
        Some(CgroupRef {
            nft_path,
            level: u32::try_from(all.len()).ok()?,
            inode: meta.ino(),
        })
    }

    /// The pod's cgroup if it exists now.
    pub fn resolve(&self, uid: &str, qos: Option<&str>) -> Option<CgroupRef> {
        Self::candidates(uid, qos)
            .iter()
            .find_map(|c| self.make_ref(c))
    }

    /// The kubelet's top cgroups that exist (`kubepods.slice`, `kubepods`): every pod is under one.
    pub fn roots(&self) -> Vec<CgroupRef> {
        ["kubepods.slice", "kubepods"]
            .iter()
            .filter_map(|r| self.make_ref(&[r.to_string()]))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        t
    }

    const UID: &str = "0b1c2d3e-aaaa-bbbb-cccc-123456789abc";

    #[test]
    fn systemd_driver_on_pure_v2() {
        let t = tree(&[
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c2d3e_aaaa_bbbb_cccc_123456789abc.slice",
        ]);
        std::fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        let fs = CgroupFs::detect(t.path(), "").unwrap();
        let r = fs.resolve(UID, Some("Burstable")).unwrap();
        assert_eq!(
            r.nft_path,
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c2d3e_aaaa_bbbb_cccc_123456789abc.slice"
        );
        assert_eq!(r.level, 3);
        assert_eq!(fs.roots().len(), 1);
        assert_eq!(fs.roots()[0].level, 1);
    }

    #[test]
    fn guaranteed_pod_is_one_level_up_on_a_hybrid_host() {
        let t = tree(&[
            "unified/kubepods.slice/kubepods-pod0b1c2d3e_aaaa_bbbb_cccc_123456789abc.slice",
        ]);
        std::fs::write(t.path().join("unified/cgroup.controllers"), "").unwrap();
        let fs = CgroupFs::detect(t.path(), "").unwrap();
        let r = fs.resolve(UID, Some("Guaranteed")).unwrap();
        assert_eq!(
            r.nft_path,
            "unified/kubepods.slice/kubepods-pod0b1c2d3e_aaaa_bbbb_cccc_123456789abc.slice"
        );
        assert_eq!(r.level, 2);
        // Unknown QoS still finds it.
        assert_eq!(fs.resolve(UID, None).unwrap(), r);
    }

    #[test]
    fn cgroupfs_driver_keeps_dashes() {
        let t = tree(&[
            &format!("kubepods/besteffort/pod{UID}"),
            &format!("kubepods/pod{UID}x"),
        ]);
        std::fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        let fs = CgroupFs::detect(t.path(), "base/x").unwrap();
        assert!(
            fs.resolve(UID, Some("BestEffort")).is_none(),
            "base prefix is honoured"
        );
        let fs = CgroupFs::detect(t.path(), "").unwrap();
        let r = fs.resolve(UID, Some("BestEffort")).unwrap();
        assert_eq!(r.nft_path, format!("kubepods/besteffort/pod{UID}"));
        assert_eq!(r.level, 3);
    }

    #[test]
    fn missing_pod_cgroup_is_unresolved_until_it_appears() {
        let t = tree(&["kubepods.slice"]);
        std::fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        let fs = CgroupFs::detect(t.path(), "").unwrap();
        assert!(fs.resolve(UID, None).is_none());
        let p = t
            .path()
            .join("kubepods.slice/kubepods-pod0b1c2d3e_aaaa_bbbb_cccc_123456789abc.slice");
        std::fs::create_dir(&p).unwrap();
        assert_eq!(fs.resolve(UID, None).unwrap().level, 2);
        // (A recreated cgroup's new id is proven on the real cgroup fs by the root harness.)
    }

    /// A uid nft's quoting cannot carry is never resolved, even when such a directory exists:
    /// written into the batch, it would end the string early and change the rules.
    #[test]
    fn a_uid_with_a_quote_is_never_resolved() {
        let uid = "x\" accept; \"y";
        let t = tree(&[&format!("kubepods/besteffort/pod{uid}")]);
        std::fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        let fs = CgroupFs::detect(t.path(), "").unwrap();
        assert!(
            t.path()
                .join(format!("kubepods/besteffort/pod{uid}"))
                .is_dir()
        );
        assert!(fs.resolve(uid, Some("BestEffort")).is_none());
    }

    #[test]
    fn no_cgroup2_is_a_clear_error() {
        let t = tree(&[]);
        let e = CgroupFs::detect(t.path(), "").unwrap_err().to_string();
        assert!(e.contains("cgroup.controllers"), "{e}");
    }
}
