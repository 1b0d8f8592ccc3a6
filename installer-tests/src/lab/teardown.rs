//! `down`: removes everything a lab's state says it created (processes by PID and start time, mounts,
//! cgroups, nftables table, bridge, files) and nothing else, tolerating parts that are already gone,
//! so that `down` twice, `down` after a crash and the cleanup of a failed `up` all work. Then
//! [`leftovers`] looks for anything of this `LAB_ID` still on the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Result, anyhow};

use super::cmd::{self, command};
use super::layout::Layout;
use super::net;
use super::node::{self, NodeDirs};
use super::state::{self, State};

/// Tears down the lab described by `st`. `children` are nspawn processes this process started (reaped
/// here so no zombie is left). Continues past failures and reports them all at the end.
pub(crate) fn teardown(
    layout: &Layout,
    st: &mut State,
    children: &mut BTreeMap<usize, Child>,
) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let same_boot = st.same_boot();

    // 1. Halt every running node at once (SIGTERM: systemd shuts down cleanly in about 2 s).
    let running: Vec<(usize, state::Proc)> = if same_boot {
        st.nodes
            .iter()
            .filter_map(|n| n.nspawn.filter(|p| p.alive()).map(|p| (n.index, p)))
            .collect()
    } else {
        Vec::new()
    };
    for (_, p) in &running {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for (k, p) in &running {
        if let Some(c) = children.get_mut(k) {
            node::wait_child(c, Duration::from_secs(15));
        }
        p.wait_gone(Duration::from_secs(15));
    }
    for n in &mut st.nodes {
        // 2. Whatever is still in the node's cgroups (a hung halt, a killed nspawn's orphans) is killed.
        if let Err(e) = node::kill_all(n) {
            errors.push(format!("node{}: {e:#}", n.index));
        }
        if let Some(mut c) = children.remove(&n.index) {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.nspawn = None;
        let d = NodeDirs::of(layout, n.index);
        // 3. Unmount the overlay root and the rancher tmpfs.
        if n.overlay_mounted {
            match unmount(&d.merged) {
                Ok(()) => n.overlay_mounted = false,
                Err(e) => errors.push(format!("node{}: {e:#}", n.index)),
            }
        }
        if n.rancher_mounted {
            match unmount(&d.rancher) {
                Ok(()) => n.rancher_mounted = false,
                Err(e) => errors.push(format!("node{}: {e:#}", n.index)),
            }
        }
        // 4. Remove the node's cgroups (with the sub-cgroups the node's systemd made).
        let mut left = Vec::new();
        for cg in std::mem::take(&mut n.cgroups) {
            if let Err(e) = node::remove_cgroup(&cg) {
                errors.push(format!("node{}: {e:#}", n.index));
                left.push(cg);
            }
        }
        n.cgroups = left;
        // 5. What nspawn leaves in /run when it is killed rather than halted: only this machine's entries.
        let propagate =
            PathBuf::from("/run/systemd/nspawn/propagate").join(layout.machine(n.index));
        if let Err(e) = state::remove_tree(&propagate) {
            errors.push(format!("node{}: {e:#}", n.index));
        }
        if let Some(lock) = n.nspawn_lock.take()
            && lock.is_file()
        {
            let _ = std::fs::remove_file(&lock);
        }
    }
    // 6. Network: the forward-drop table and the bridge (the veths went with the nodes).
    if st.nft_table {
        match net::delete_nft_table(layout) {
            Ok(()) => st.nft_table = false,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if st.bridge {
        match net::delete_bridge(layout) {
            Ok(()) => st.bridge = false,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // 7. The state directory, unless something is still mounted in it.
    if errors.is_empty() {
        if let Err(e) = state::remove_tree(&layout.state_dir()) {
            errors.push(format!("{e:#}"));
        }
    } else if layout.state_dir().is_dir() {
        let _ = st.save(layout);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "lab {} was not fully removed:\n  {}",
            layout.id(),
            errors.join("\n  ")
        ))
    }
}

/// Unmounts `path` if it is a mount point, retrying briefly while it is busy.
fn unmount(path: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        if !state::is_mount_point(path)? {
            return Ok(());
        }
        match cmd::run(command("umount")?.arg(path)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| anyhow!("could not unmount {}", path.display())))
}

/// Everything of lab `layout` still present on the machine, described one per line: mounts, cgroups,
/// network interfaces, nftables table, systemd-nspawn processes, nspawn runtime entries, state
/// directory. Empty after a complete `down`. (The lock file is kept on purpose.)
pub fn leftovers(layout: &Layout) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = layout.machine_prefix();
    let state_dir = layout.state_dir();
    if let Ok(ms) = state::mounts() {
        for m in ms {
            if m.mount_point.starts_with(&state_dir)
                || m.source.starts_with(&prefix)
                || m.mount_point.to_string_lossy().contains(&prefix)
            {
                out.push(format!(
                    "mount: {} ({} {})",
                    m.mount_point.display(),
                    m.fs_type,
                    m.source
                ));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            if let Ok(inner) = std::fs::read_dir(h.path()) {
                for e in inner.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        out.push(format!("cgroup: {}", e.path().display()));
                    }
                }
            }
            // pure cgroup2: the lab cgroups sit directly in /sys/fs/cgroup
            if h.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(format!("cgroup: {}", h.path().display()));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        let veth = format!("vb-{prefix}");
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == layout.bridge() || n.starts_with(&veth) {
                out.push(format!("network interface: {n}"));
            }
        }
    }
    if net::nft_table_exists(layout) {
        out.push(format!("nftables table: inet {}", layout.nft_table()));
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_nspawn = args.first().is_some_and(|a| a.ends_with("systemd-nspawn"));
            let is_ours = args.iter().any(|a| {
                a.strip_prefix("--machine=")
                    .or_else(|| a.strip_prefix("-M"))
                    .is_some_and(|m| m.starts_with(&prefix))
            });
            if is_nspawn && is_ours {
                out.push(format!("process: {pid} {}", args.join(" ")));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/systemd/nspawn/propagate") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(format!("nspawn runtime: {}", e.path().display()));
            }
        }
    }
    if state_dir.exists() {
        out.push(format!("state directory: {}", state_dir.display()));
    }
    out
}
