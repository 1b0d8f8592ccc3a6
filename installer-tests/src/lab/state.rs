//! What a lab created, written to `state.json` in its state directory step by step during `up`,
//! so that `down` (from the same process, from the CLI, or from the next test after a crash) removes
//! exactly what was created and nothing else. Also the small `/proc` readers the lab relies on:
//! process identity (PID plus start time, so a recycled PID is never killed), boot id, mount table.

use std::fs::File;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::Layout;

const STATE_VERSION: u32 = 1;

/// Who started the lab, which decides what a later `up` may do with a leftover.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Owner {
    /// `lab up`: the lab stays until `lab down`.
    Cli,
    /// A test process through `Lab::up`: torn down on drop; a leftover of a dead process is cleaned.
    Process(Proc),
}

/// A process identified by PID and start time (clock ticks since boot, /proc/PID/stat field 22).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Proc {
    pub pid: u32,
    pub start_time: u64,
}

impl Proc {
    /// The identity of a live process.
    pub fn of(pid: u32) -> Result<Proc> {
        let (start_time, _) = stat(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
        Ok(Proc { pid, start_time })
    }

    /// The identity of this process.
    pub fn me() -> Result<Proc> {
        Self::of(std::process::id())
    }

    /// True while this very process (not a later one reusing the PID) exists and is not a zombie.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Ok((t, state)) if t == self.start_time && state != 'Z' && state != 'X')
    }

    /// Waits until the process is gone; true if it went within `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.alive() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// (start time, state letter) of a PID.
fn stat(pid: u32) -> Result<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = fields.first().and_then(|f| f.chars().next()).unwrap_or('?');
    let start = fields.get(19).context("short /proc stat")?.parse::<u64>()?;
    Ok((start, state))
}

/// The kernel's boot id: PIDs and mounts recorded under another boot id are void.
pub(crate) fn boot_id() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// One node's record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    /// 1-based node number.
    pub index: usize,
    pub addr: Ipv4Addr,
    /// The node's ed25519 host public key line (`ssh-ed25519 AAAA... root@node1`).
    pub host_public_key: String,
    /// A size-limited tmpfs is mounted on the node's `rancher` directory.
    pub rancher_mounted: bool,
    /// The node's overlay is mounted on its `merged` directory.
    pub overlay_mounted: bool,
    /// Cgroup directories created for the node (one per hierarchy).
    pub cgroups: Vec<PathBuf>,
    /// nspawn's lock file for the node's root directory (`/run/systemd/nspawn/locks/inode-DEV:INO`).
    pub nspawn_lock: Option<PathBuf>,
    /// The running systemd-nspawn process, if started.
    pub nspawn: Option<Proc>,
}

/// Everything one lab created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct State {
    pub version: u32,
    pub id: u8,
    pub boot_id: String,
    pub owner: Owner,
    /// The shared base root filesystem used as every node's lower directory.
    pub base: PathBuf,
    /// The bridge was created by this lab.
    pub bridge: bool,
    /// The forward-drop nftables table was created by this lab.
    pub nft_table: bool,
    /// Size of the per-node tmpfs on /var/lib/rancher, if any.
    pub rancher_size_mib: Option<u64>,
    pub nodes: Vec<NodeRecord>,
}

impl State {
    pub fn new(
        layout: &Layout,
        owner: Owner,
        base: PathBuf,
        rancher_size_mib: Option<u64>,
    ) -> Result<Self> {
        Ok(Self {
            version: STATE_VERSION,
            id: layout.id(),
            boot_id: boot_id()?,
            owner,
            base,
            bridge: false,
            nft_table: false,
            rancher_size_mib,
            nodes: Vec::new(),
        })
    }

    /// Reads the state of `layout`'s lab, if there is one.
    pub fn load(layout: &Layout) -> Result<Option<State>> {
        let path = layout.state_file();
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let st = serde_json::from_str(&s).with_context(|| {
                    format!(
                        "{} is not a lab state file\nhint: if no lab is running, remove {}",
                        path.display(),
                        layout.state_dir().display()
                    )
                })?;
                Ok(Some(st))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state atomically (temporary file, then rename).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        File::open(&tmp).and_then(|f| f.sync_all()).ok();
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// True when the PIDs and mounts recorded here belong to the running kernel.
    pub fn same_boot(&self) -> bool {
        boot_id().map(|b| b == self.boot_id).unwrap_or(false)
    }

    pub fn node(&self, k: usize) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.index == k)
    }

    pub fn node_mut(&mut self, k: usize) -> Option<&mut NodeRecord> {
        self.nodes.iter_mut().find(|n| n.index == k)
    }
}

/// One line of /proc/self/mountinfo, the fields the lab needs.
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// The mount table of this process's mount namespace.
pub(crate) fn mounts() -> Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    Some(Mount {
        mount_point: PathBuf::from(unescape(l.get(4)?)),
        fs_type: r.first()?.to_string(),
        source: unescape(r.get(1)?),
        super_options: r.get(2).map(|s| s.to_string()).unwrap_or_default(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `path` is a mount point.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mounts()?.iter().any(|m| m.mount_point == path))
}

/// Mount points at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    Ok(v)
}

/// Removes a directory tree, refusing if anything is mounted inside it (removing across a mount
/// point would delete files that are not the lab's).
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let inside = mounts_under(dir)?;
    if !inside.is_empty() {
        anyhow::bail!(
            "not removing {}: still mounted inside it: {}",
            dir.display(),
            inside
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let line = r"36 35 0:39 / /var/tmp/installer-lab/1/node1/merged rw,relatime - overlay lab1-node1 rw,lowerdir=/x\040y,upperdir=/u";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(
            m.mount_point,
            PathBuf::from("/var/tmp/installer-lab/1/node1/merged")
        );
        assert_eq!(m.fs_type, "overlay");
        assert_eq!(m.source, "lab1-node1");
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_start_time_is_not() {
        let me = Proc::me().unwrap();
        assert!(me.alive());
        let other = Proc {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(
            !other.alive(),
            "a recycled PID must not count as the recorded process"
        );
    }

    #[test]
    fn state_round_trips() {
        let st = State {
            version: STATE_VERSION,
            id: 4,
            boot_id: "b".into(),
            owner: Owner::Process(Proc {
                pid: 7,
                start_time: 9,
            }),
            base: PathBuf::from("/base"),
            bridge: true,
            nft_table: false,
            rancher_size_mib: Some(64),
            nodes: vec![NodeRecord {
                index: 1,
                addr: Ipv4Addr::new(10, 77, 4, 11),
                host_public_key: "ssh-ed25519 AAAA root@node1".into(),
                rancher_mounted: true,
                overlay_mounted: true,
                cgroups: vec![PathBuf::from("/sys/fs/cgroup/pids/lab4-node1")],
                nspawn_lock: None,
                nspawn: Some(Proc {
                    pid: 10,
                    start_time: 11,
                }),
            }],
        };
        let text = serde_json::to_string(&st).unwrap();
        assert!(text.contains(r#""kind":"process""#), "{text}");
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, st);
    }
}
