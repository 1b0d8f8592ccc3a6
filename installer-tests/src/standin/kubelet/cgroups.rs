//! Pod cgroups as the kubelet's systemd cgroup driver lays them out, in the node's cgroup
//! hierarchies: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice`
//! (Guaranteed pods one level up, `kubepods.slice/kubepods-pod<uid>.slice`), each container in
//! `cri-containerd-<id>.scope`. On a hybrid host (cgroup v1 controllers plus cgroup2 at
//! `/sys/fs/cgroup/unified`) the same path exists in every hierarchy, as runc creates it; on a
//! pure cgroup v2 host in the one hierarchy.
//!
//! Real containers get theirs from runc ([`super::runc`]), with the path given here; simulated
//! containers' shims move themselves into the same layout ([`enter`]), so every pod, real or
//! simulated, has its cgroup (what the policy enforcer identifies pods by).

use std::path::{Path, PathBuf};

/// The pod's cgroup path (absolute, from the hierarchy's root).
pub fn pod_path(qos: &str, uid: &str) -> String {
    let u = uid.replace('-', "_");
    match qos {
        "Guaranteed" => format!("/kubepods.slice/kubepods-pod{u}.slice"),
        "Burstable" => {
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")
        }
        _ => format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
    }
}

/// A container's cgroup path inside its pod's.
pub fn container_path(qos: &str, uid: &str, container_id: &str) -> String {
    format!("{}/cri-containerd-{container_id}.scope", pod_path(qos, uid))
}

/// The mounted hierarchies under `/sys/fs/cgroup`: the directory itself on a pure v2 host,
/// else every controller directory and `unified`.
pub fn hierarchies(base: &Path) -> Vec<PathBuf> {
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    let Ok(rd) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        // Only mounted hierarchies (a cgroup.procs file), not the cpu,cpuacct symlinks.
        .filter(|p| !p.is_symlink() && p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// The cgroup v2 directory of `path` (the unified hierarchy on a hybrid host).
pub fn v2_dir(base: &Path, path: &str) -> Option<PathBuf> {
    let root = if base.join("cgroup.controllers").exists() {
        base.to_path_buf()
    } else if base.join("unified/cgroup.controllers").exists() {
        base.join("unified")
    } else {
        return None;
    };
    Some(root.join(path.trim_start_matches('/')))
}

/// Move process `pid` into `path` in every hierarchy (created as needed). Errors name the
/// hierarchy that refused.
pub fn enter(base: &Path, path: &str, pid: u32) -> std::io::Result<()> {
    for h in hierarchies(base) {
        let dir = h.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        // cpuset needs its cpus and mems before a process may join (cgroup v1).
        if h.file_name().is_some_and(|n| n == "cpuset") {
            let mut acc = h.clone();
            for part in path.trim_matches('/').split('/') {
                let parent = acc.clone();
                acc = acc.join(part);
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let cur = std::fs::read_to_string(acc.join(f)).unwrap_or_default();
                    if cur.trim().is_empty() {
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        let _ = std::fs::write(acc.join(f), v.trim());
                    }
                }
            }
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Remove a pod's cgroup directories (children first) once nothing runs in them.
pub fn remove_pod(base: &Path, qos_paths: &[String]) {
    for h in hierarchies(base) {
        for p in qos_paths {
            let dir = h.join(p.trim_start_matches('/'));
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for c in rd.flatten() {
                    if c.path().is_dir() {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_systemd_driver() {
        let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        assert_eq!(
            pod_path("BestEffort", uid),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
        );
        assert_eq!(
            pod_path("Burstable", uid),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
        );
        assert_eq!(
            pod_path("Guaranteed", uid),
            "/kubepods.slice/kubepods-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice"
        );
        assert!(
            container_path("Guaranteed", uid, "abc").ends_with(".slice/cri-containerd-abc.scope")
        );
    }
}
