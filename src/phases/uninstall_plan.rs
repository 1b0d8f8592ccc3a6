//! What `uninstall` reads on a host and decides from it, as pure functions: the changes log
//! the installer keeps (`/var/lib/installer/changes.log`, written by `prepare` and by the
//! door, [`super::ops`]), the host's mounts (`/proc/self/mountinfo`), and the state of every
//! recorded path. [`decide`] turns them into a verdict: nothing to do, refused (with the
//! reason), or the work to do, in order. The scripts that carry it out are in
//! [`super::uninstall_scripts`].

use std::collections::{BTreeMap, BTreeSet};

use crate::host::shell_quote;
use crate::k3s::paths;

use super::prepare::CHANGES_LOG;

/// Where k3s (and its kubelet) keep what k3s's own uninstall removes or leaves: deleted on
/// one file system only, never across a mount.
pub const K3S_LEFTOVERS: &[&str] = &[
    paths::DATA_DIR,
    "/var/lib/kubelet",
    "/run/k3s",
    "/run/flannel",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    paths::CONFIG_DIR,
    "/etc/rancher/node",
    // Preflight's temporary listeners' directory.
    "/run/installer-reach",
];

/// Directories removed when empty once everything else is gone (k3s creates them; the
/// installer records the ones it created).
pub const EMPTY_PARENTS: &[&str] = &["/var/lib/rancher", "/etc/rancher"];

/// The application's data (the store's `hostPath`, `templates/app/manifests/20-store.yaml.tera`):
/// kept unless `--purge-data`.
pub const APP_DATA_DIRS: &[&str] = &["/var/lib/appliance/store"];
/// Removed when empty after a purge.
pub const APP_DATA_PARENTS: &[&str] = &["/var/lib/appliance"];

/// Signs that k3s is installed on a host.
pub const K3S_SIGNS: &[&str] = &[
    paths::K3S_BINARY,
    "/etc/systemd/system/k3s.service",
    "/etc/systemd/system/k3s-agent.service",
    paths::DATA_DIR,
];

/// The k3s units, as install.sh names them.
pub const UNITS: &[&str] = &["k3s.service", "k3s-agent.service"];

/// Network links k3s-killall.sh deletes (besides cni0's veths).
pub const LINKS: &[&str] = &[
    "cni0",
    "flannel.1",
    "flannel-v6.1",
    "kube-ipvs0",
    "flannel-wg",
    "flannel-wg-v6",
];

/// One line of the changes log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `cluster NAME`: the cluster the host was installed for.
    Cluster(String),
    /// `dir PATH`: a directory the installer created.
    Dir(String),
    /// `file SHA256 PATH` (or the older `file PATH`, without a hash).
    File {
        path: String,
        sha256: Option<String>,
    },
    /// `link PATH -> TARGET` (or the older `link PATH`).
    Link {
        path: String,
        target: Option<String>,
    },
    /// `firewalld-port 6443/tcp`.
    FirewalldPort(String),
    /// `firewalld-trusted 10.42.0.0/16`.
    FirewalldTrusted(String),
    /// `ufw 6443/tcp`.
    Ufw(String),
    /// `uninstalled`: an uninstall finished here; what follows was recorded after it.
    Uninstalled,
    /// `kept PATH`: a file that uninstall kept (changed since the installer wrote it).
    Kept(String),
    /// A line this version does not know: reported, never acted on.
    Unknown(String),
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses the changes log (blank lines ignored).
pub fn parse_changes(text: &str) -> Vec<Change> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (kind, rest) = l.split_once(' ').unwrap_or((l, ""));
            let rest = rest.trim_start();
            match kind {
                "cluster" if !rest.is_empty() => Change::Cluster(rest.to_owned()),
                "dir" if rest.starts_with('/') => Change::Dir(rest.to_owned()),
                "file" => match rest.split_once(' ') {
                    Some((h, p)) if is_sha256(h) && p.starts_with('/') => Change::File {
                        path: p.to_owned(),
                        sha256: Some(h.to_ascii_lowercase()),
                    },
                    _ if rest.starts_with('/') => Change::File {
                        path: rest.to_owned(),
                        sha256: None,
                    },
                    _ => Change::Unknown(l.to_owned()),
                },
                "link" if rest.starts_with('/') => match rest.split_once(" -> ") {
                    Some((p, t)) => Change::Link {
                        path: p.to_owned(),
                        target: Some(t.to_owned()),
                    },
                    None => Change::Link {
                        path: rest.to_owned(),
                        target: None,
                    },
                },
                "firewalld-port" if !rest.is_empty() => Change::FirewalldPort(rest.to_owned()),
                "firewalld-trusted" if !rest.is_empty() => {
                    Change::FirewalldTrusted(rest.to_owned())
                }
                "ufw" if !rest.is_empty() => Change::Ufw(rest.to_owned()),
                "uninstalled" if rest.is_empty() => Change::Uninstalled,
                "kept" if rest.starts_with('/') => Change::Kept(rest.to_owned()),
                _ => Change::Unknown(l.to_owned()),
            }
        })
        .collect()
}

/// One mount, from a line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point (octal escapes decoded).
    pub point: String,
    /// The root of the mount within its file system (`/` unless a bind of a subtree).
    pub root: String,
    pub fstype: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push(u8::try_from(d(1) * 64 + d(2) * 8 + d(3)).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` (proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            if sep < 6 || f.len() < sep + 3 {
                return None;
            }
            Some(Mount {
                root: unescape(f[3]),
                point: unescape(f[4]),
                fstype: f[sep + 1].to_owned(),
                source: unescape(f[sep + 2]),
            })
        })
        .collect()
}

/// Whether `path` is `dir` or inside it.
pub fn at_or_under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a mount is one k3s made and that holds nothing to keep: containerd's and the
/// kubelet's volatile mounts (tmpfs secret volumes, shm, the containers' overlay root file
/// systems under `/run/k3s`, network namespaces). Everything else (a bind mount, a remote
/// or block-device volume) may hold data someone needs, and is never released by uninstall.
pub fn k3s_owned(m: &Mount) -> bool {
    match m.fstype.as_str() {
        "tmpfs" | "nsfs" | "shm" | "mqueue" | "devpts" | "proc" | "sysfs" => true,
        "overlay" => at_or_under(&m.point, "/run/k3s"),
        _ => false,
    }
}

/// The mounts at or under the directories uninstall deletes.
pub fn guarded_mounts<'a>(mounts: &'a [Mount], guarded: &[&str]) -> Vec<&'a Mount> {
    mounts
        .iter()
        .filter(|m| guarded.iter().any(|d| at_or_under(&m.point, d)))
        .collect()
}

/// The directories whose mounts are checked: every one uninstall deletes from.
pub fn guarded_dirs(purge_data: bool) -> Vec<&'static str> {
    let mut v: Vec<&str> = K3S_LEFTOVERS.to_vec();
    if purge_data {
        v.extend(APP_DATA_DIRS);
    }
    v
}

/// What a path recorded in the changes log is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    Missing,
    /// A regular file with this SHA-256.
    File(String),
    /// A symbolic link to this target.
    Link(String),
    /// A directory.
    Dir,
    /// Something else (a device, a socket).
    Other,
}

/// The script that reports the state of `paths`, one per line: `KIND<TAB>PATH[<TAB>VALUE]`.
pub fn probe_paths_script(paths: &[&str]) -> String {
    let mut s = String::new();
    for p in paths {
        let q = shell_quote(p);
        s.push_str(&format!(
            "p={q}; if [ -L \"$p\" ]; then printf 'link\\t%s\\t%s\\n' \"$p\" \"$(readlink \"$p\")\"; \
             elif [ -f \"$p\" ]; then printf 'file\\t%s\\t%s\\n' \"$p\" \"$(sha256sum < \"$p\" | cut -d' ' -f1)\"; \
             elif [ -d \"$p\" ]; then printf 'dir\\t%s\\n' \"$p\"; \
             elif [ -e \"$p\" ]; then printf 'other\\t%s\\n' \"$p\"; \
             else printf 'missing\\t%s\\n' \"$p\"; fi\n"
        ));
    }
    s
}

/// Parses what [`probe_paths_script`] printed.
pub fn parse_path_states(text: &str) -> BTreeMap<String, PathState> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let kind = it.next()?;
            let path = it.next()?.to_owned();
            let value = it.next().unwrap_or("").to_owned();
            let st = match kind {
                "link" => PathState::Link(value),
                "file" => PathState::File(value),
                "dir" => PathState::Dir,
                "other" => PathState::Other,
                "missing" => PathState::Missing,
                _ => return None,
            };
            Some((path, st))
        })
        .collect()
}

/// Every path whose state [`decide`] needs: the log's files, links and directories, the
/// signs of k3s and the leftovers.
pub fn paths_to_probe(changes: &[Change]) -> Vec<String> {
    let mut set = BTreeSet::new();
    for c in changes {
        match c {
            Change::Dir(p) | Change::File { path: p, .. } | Change::Link { path: p, .. } => {
                set.insert(p.clone());
            }
            _ => {}
        }
    }
    for p in K3S_SIGNS
        .iter()
        .chain(K3S_LEFTOVERS)
        .chain(EMPTY_PARENTS)
        .chain(APP_DATA_DIRS)
        .chain(APP_DATA_PARENTS)
        .chain(&[CHANGES_LOG])
    {
        set.insert((*p).to_owned());
    }
    for u in UNITS {
        set.insert(paths::unit_path(u));
    }
    set.into_iter().collect()
}

/// What uninstall found on one host.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// The changes log, parsed; None when there is none.
    pub changes: Option<Vec<Change>>,
    pub paths: BTreeMap<String, PathState>,
    pub mounts: Vec<Mount>,
}

impl HostState {
    fn state(&self, p: &str) -> &PathState {
        self.paths.get(p).unwrap_or(&PathState::Missing)
    }

    fn exists(&self, p: &str) -> bool {
        self.state(p) != &PathState::Missing
    }
}

/// One step of undoing the changes log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// A file unchanged since the installer wrote it.
    RemoveFile(String),
    /// A link still pointing where the installer pointed it.
    RemoveLink(String),
    /// A directory the installer created, removed only if empty.
    RemoveDirIfEmpty(String),
    FirewalldPort(String),
    FirewalldTrusted(String),
    Ufw(String),
}

impl Undo {
    /// What the step does, as the admin reads it (also the change's name in a dry run).
    pub fn describe(&self) -> String {
        match self {
            Undo::RemoveFile(p) => format!("remove {p} (unchanged since the installer wrote it)"),
            Undo::RemoveLink(p) => format!("remove the link {p}"),
            Undo::RemoveDirIfEmpty(p) => format!("remove the directory {p} if empty"),
            Undo::FirewalldPort(p) => format!("close {p} in firewalld (opened by the installer)"),
            Undo::FirewalldTrusted(c) => {
                format!("remove {c} from firewalld's trusted zone (added by the installer)")
            }
            Undo::Ufw(p) => format!("delete the ufw rule allowing {p} (added by the installer)"),
        }
    }

    /// The exact inverse, as a script. Directories: `kept` printed when not empty.
    pub fn script(&self) -> String {
        match self {
            Undo::RemoveFile(p) | Undo::RemoveLink(p) => format!("rm -f -- {}", shell_quote(p)),
            Undo::RemoveDirIfEmpty(p) => {
                let q = shell_quote(p);
                format!("[ ! -d {q} ] || rmdir -- {q} 2>/dev/null || echo kept")
            }
            Undo::FirewalldPort(p) => format!(
                "if firewall-cmd --permanent --query-port={p} >/dev/null 2>&1; then firewall-cmd --permanent --remove-port={p} && firewall-cmd --reload; fi",
                p = shell_quote(p)
            ),
            Undo::FirewalldTrusted(c) => format!(
                "if firewall-cmd --permanent --zone=trusted --query-source={c} >/dev/null 2>&1; then firewall-cmd --permanent --zone=trusted --remove-source={c} && firewall-cmd --reload; fi",
                c = shell_quote(c)
            ),
            Undo::Ufw(p) => format!("ufw delete allow {}", shell_quote(p)),
        }
    }
}

/// The work on one host, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Work {
    /// k3s units whose unit file is there (to stop and disable).
    pub units: Vec<String>,
    /// Recorded files and links to remove first (hash- and target-guarded).
    pub remove_first: Vec<Undo>,
    /// Files kept, with why (changed since the installer wrote them).
    pub kept: Vec<(String, String)>,
    /// k3s's directories to delete, on one file system, sparing `kept`.
    pub leftovers: Vec<String>,
    /// The rest of the log in reverse: firewall inverses, then directories.
    pub then: Vec<Undo>,
    /// Application data directories to delete (`--purge-data`).
    pub purge: Vec<String>,
    /// Directories removed if empty at the end.
    pub empty_parents: Vec<String>,
    /// Whether the changes log exists (removed last).
    pub has_log: bool,
    /// Notes for the admin (an old log without a cluster name, unknown lines).
    pub notes: Vec<String>,
}

/// What to do with one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Neither the installer nor k3s left anything: a second run.
    Nothing,
    /// Left alone, with the reason and what to do.
    Refuse {
        reason: String,
        hint: String,
    },
    Proceed(Box<Work>),
}

/// Decides what to do with a host of cluster `cluster`.
pub fn decide(cluster: &str, st: &HostState, purge_data: bool) -> Verdict {
    let k3s_signs: Vec<&str> = K3S_SIGNS.iter().copied().filter(|p| st.exists(p)).collect();
    let Some(changes) = &st.changes else {
        if k3s_signs.is_empty() {
            return Verdict::Nothing;
        }
        return Verdict::Refuse {
            reason: format!(
                "k3s is installed ({}) but this installer has no record of installing it ({CHANGES_LOG} is missing)",
                k3s_signs.join(", ")
            ),
            hint: "this host was not set up by the installer (or was cleaned by hand); remove k3s with its own k3s-uninstall.sh if it is yours to remove".into(),
        };
    };
    let mut work = Work {
        has_log: true,
        ..Work::default()
    };
    let recorded: BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Cluster(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    if recorded.iter().any(|n| *n != cluster) {
        let names: Vec<&str> = recorded.into_iter().collect();
        return Verdict::Refuse {
            reason: format!(
                "this host belongs to cluster `{}` ({CHANGES_LOG}), not `{cluster}` as the answer file says",
                names.join("`, `")
            ),
            hint: "check that the answer file is the one this host was installed from; nothing was changed on this host".into(),
        };
    }
    if recorded.is_empty() {
        work.notes.push(format!(
            "{CHANGES_LOG} names no cluster (written by an older installer); going by the answer file"
        ));
    }
    // After an uninstall that kept files, the log holds only what it kept; a later install
    // appends after that line.
    let live = match changes.iter().rposition(|c| *c == Change::Uninstalled) {
        Some(i) => {
            let live = &changes[i + 1..];
            if live
                .iter()
                .all(|c| matches!(c, Change::Cluster(_) | Change::Kept(_)))
            {
                return Verdict::Nothing;
            }
            live
        }
        None => &changes[..],
    };
    let foreign: Vec<&Mount> = guarded_mounts(&st.mounts, &guarded_dirs(purge_data))
        .into_iter()
        .filter(|m| !k3s_owned(m))
        .collect();
    if !foreign.is_empty() {
        let list: Vec<String> = foreign
            .iter()
            .map(|m| format!("{} ({} from {})", m.point, m.fstype, m.source))
            .collect();
        return Verdict::Refuse {
            reason: format!(
                "mounted under a directory uninstall would delete: {}; the installer never deletes across a mount",
                list.join(", ")
            ),
            hint: "unmount it once nothing needs it (its data stays where it is), then rerun; nothing was changed on this host".into(),
        };
    }
    for u in UNITS {
        if st.exists(&paths::unit_path(u)) {
            work.units.push((*u).to_owned());
        }
    }
    // The newest record of a path wins (a file rewritten by a later install).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut dirs = Vec::new();
    for c in live.iter().rev() {
        match c {
            Change::File { path, sha256 } => {
                if !seen.insert(path.clone()) {
                    continue;
                }
                match (st.state(path), sha256) {
                    (PathState::Missing, _) => {}
                    (PathState::File(now), Some(want)) if now == want => {
                        work.remove_first.push(Undo::RemoveFile(path.clone()))
                    }
                    (PathState::File(now), Some(want)) => work.kept.push((
                        path.clone(),
                        format!(
                            "changed since the installer wrote it (sha256 {} then, {} now)",
                            &want[..12],
                            now.get(..12).unwrap_or(now)
                        ),
                    )),
                    (PathState::File(_), None) => work.kept.push((
                        path.clone(),
                        "recorded without a content hash (older installer), so it cannot be told unchanged".into(),
                    )),
                    (_, _) => work.kept.push((
                        path.clone(),
                        "no longer a regular file".into(),
                    )),
                }
            }
            Change::Link { path, target } => {
                if !seen.insert(path.clone()) {
                    continue;
                }
                match (st.state(path), target) {
                    (PathState::Missing, _) => {}
                    (PathState::Link(now), Some(want)) if now == want => {
                        work.remove_first.push(Undo::RemoveLink(path.clone()))
                    }
                    (PathState::Link(now), None) if now.starts_with(paths::DATA_DIR) => {
                        work.remove_first.push(Undo::RemoveLink(path.clone()))
                    }
                    (PathState::Link(now), _) => work.kept.push((
                        path.clone(),
                        format!("the link now points to {now}, not where the installer pointed it"),
                    )),
                    _ => work
                        .kept
                        .push((path.clone(), "no longer a symbolic link".into())),
                }
            }
            Change::Dir(p) => {
                if seen.insert(p.clone()) && st.exists(p) {
                    dirs.push(Undo::RemoveDirIfEmpty(p.clone()));
                }
            }
            Change::FirewalldPort(p) => {
                if seen.insert(format!("firewalld-port {p}")) {
                    work.then.push(Undo::FirewalldPort(p.clone()))
                }
            }
            Change::FirewalldTrusted(c) => {
                if seen.insert(format!("firewalld-trusted {c}")) {
                    work.then.push(Undo::FirewalldTrusted(c.clone()))
                }
            }
            Change::Ufw(p) => {
                if seen.insert(format!("ufw {p}")) {
                    work.then.push(Undo::Ufw(p.clone()))
                }
            }
            Change::Unknown(l) => work.notes.push(format!(
                "left as it is: a line of {CHANGES_LOG} this installer does not know: {l}"
            )),
            Change::Cluster(_) | Change::Uninstalled | Change::Kept(_) => {}
        }
    }
    // Deepest first, whatever order they were recorded in.
    dirs.sort_by(|a, b| match (a, b) {
        (Undo::RemoveDirIfEmpty(x), Undo::RemoveDirIfEmpty(y)) => y.len().cmp(&x.len()),
        _ => std::cmp::Ordering::Equal,
    });
    work.then.extend(dirs);
    work.leftovers = K3S_LEFTOVERS
        .iter()
        .filter(|d| st.exists(d))
        .map(|d| (*d).to_owned())
        .collect();
    if purge_data {
        work.purge = APP_DATA_DIRS
            .iter()
            .filter(|d| st.exists(d))
            .map(|d| (*d).to_owned())
            .collect();
    }
    let mut parents: Vec<&str> = EMPTY_PARENTS.to_vec();
    if purge_data {
        parents.extend(APP_DATA_PARENTS);
    }
    work.empty_parents = parents
        .into_iter()
        .filter(|d| st.exists(d) && !work.then.contains(&Undo::RemoveDirIfEmpty((*d).to_owned())))
        .map(str::to_owned)
        .collect();
    Verdict::Proceed(Box::new(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn log() -> String {
        format!(
            "cluster lab\ndir /etc/rancher\ndir /etc/rancher/k3s\ndir /etc/cni\ndir /etc/cni/net.d\n\
             link /opt/cni/bin/bridge -> /var/lib/rancher/k3s/data/cni/bridge\n\
             file {H1} /usr/local/bin/k3s\nfile {H1} /etc/rancher/k3s/config.yaml\n\
             file {H2} /etc/rancher/k3s/config.yaml\nfile {H1} /etc/cni/net.d/10-local.conflist\n\
             firewalld-port 6443/tcp\nufw 2379:2380/tcp\nfirewalld-trusted 10.42.0.0/16\nfrobnicate x\n"
        )
    }

    fn state(log: &str) -> HostState {
        let mut paths = BTreeMap::new();
        for (p, s) in [
            ("/usr/local/bin/k3s", PathState::File(H1.into())),
            // Rewritten by a later install (H2), then changed by the admin.
            ("/etc/rancher/k3s/config.yaml", PathState::File(H1.into())),
            (
                "/etc/cni/net.d/10-local.conflist",
                PathState::File(H1.into()),
            ),
            (
                "/opt/cni/bin/bridge",
                PathState::Link("/var/lib/rancher/k3s/data/cni/bridge".into()),
            ),
            ("/etc/rancher", PathState::Dir),
            ("/etc/rancher/k3s", PathState::Dir),
            ("/etc/cni", PathState::Dir),
            ("/etc/cni/net.d", PathState::Dir),
            ("/var/lib/rancher/k3s", PathState::Dir),
            ("/var/lib/kubelet", PathState::Dir),
            (
                "/etc/systemd/system/k3s.service",
                PathState::File(H1.into()),
            ),
            ("/var/lib/appliance/store", PathState::Dir),
        ] {
            paths.insert(p.to_string(), s);
        }
        HostState {
            changes: Some(parse_changes(log)),
            paths,
            mounts: parse_mountinfo(
                "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
                 30 22 0:40 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/t rw - tmpfs tmpfs rw\n\
                 31 22 0:41 / /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/x/rootfs rw - overlay overlay rw\n",
            ),
        }
    }

    #[test]
    fn the_changes_log_parses_every_kind_and_the_older_forms() {
        let c = parse_changes(&format!(
            "cluster lab\nfile {H1} /a b\nfile /old\nlink /l -> /t\nlink /l2\n\n"
        ));
        assert_eq!(
            c,
            vec![
                Change::Cluster("lab".into()),
                Change::File {
                    path: "/a b".into(),
                    sha256: Some(H1.into())
                },
                Change::File {
                    path: "/old".into(),
                    sha256: None
                },
                Change::Link {
                    path: "/l".into(),
                    target: Some("/t".into())
                },
                Change::Link {
                    path: "/l2".into(),
                    target: None
                },
            ]
        );
    }

    #[test]
    fn mountinfo_escapes_and_optional_fields_are_read() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw\nbroken line\n",
        );
        assert_eq!(
            m,
            vec![Mount {
                point: "/mnt/with space".into(),
                root: "/mnt1".into(),
                fstype: "ext3".into(),
                source: "/dev/root".into()
            }]
        );
    }

    #[test]
    fn a_changed_file_is_kept_and_an_unchanged_one_removed() {
        let Verdict::Proceed(w) = decide("lab", &state(&log()), false) else {
            panic!("refused")
        };
        assert!(
            w.remove_first
                .contains(&Undo::RemoveFile("/usr/local/bin/k3s".into()))
        );
        assert!(
            w.remove_first
                .contains(&Undo::RemoveLink("/opt/cni/bin/bridge".into()))
        );
        // The newest record (H2) is what counts: the file (H1 now) changed since.
        assert_eq!(w.kept.len(), 1, "{:?}", w.kept);
        assert_eq!(w.kept[0].0, "/etc/rancher/k3s/config.yaml");
        assert!(
            !w.remove_first
                .contains(&Undo::RemoveFile("/etc/rancher/k3s/config.yaml".into()))
        );
        // Firewall inverses in reverse order of the log, then directories deepest first.
        assert_eq!(
            w.then,
            vec![
                Undo::FirewalldTrusted("10.42.0.0/16".into()),
                Undo::Ufw("2379:2380/tcp".into()),
                Undo::FirewalldPort("6443/tcp".into()),
                Undo::RemoveDirIfEmpty("/etc/rancher/k3s".into()),
                Undo::RemoveDirIfEmpty("/etc/cni/net.d".into()),
                Undo::RemoveDirIfEmpty("/etc/rancher".into()),
                Undo::RemoveDirIfEmpty("/etc/cni".into()),
            ]
        );
        assert_eq!(w.units, vec!["k3s.service".to_string()]);
        assert!(w.leftovers.contains(&"/var/lib/kubelet".to_string()));
        // Application data stays without --purge-data.
        assert!(w.purge.is_empty());
        assert!(w.notes.iter().any(|n| n.contains("frobnicate")));
    }

    #[test]
    fn application_data_goes_only_with_purge_data() {
        let Verdict::Proceed(w) = decide("lab", &state(&log()), true) else {
            panic!("refused")
        };
        assert_eq!(w.purge, vec!["/var/lib/appliance/store".to_string()]);
    }

    #[test]
    fn a_host_of_another_cluster_is_refused() {
        match decide("prod", &state(&log()), false) {
            Verdict::Refuse { reason, .. } => {
                assert!(
                    reason.contains("`lab`") && reason.contains("`prod`"),
                    "{reason}"
                )
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_bind_mount_under_the_kubelet_refuses_the_host_and_k3s_tmpfs_does_not() {
        let mut st = state(&log());
        st.mounts.extend(parse_mountinfo(
            "40 22 8:1 /srv/canary /var/lib/kubelet/pods/x/volumes/kubernetes.io~nfs/y rw - ext4 /dev/sda1 rw\n",
        ));
        match decide("lab", &st, false) {
            Verdict::Refuse { reason, .. } => {
                assert!(
                    reason.contains("/var/lib/kubelet/pods/x/volumes"),
                    "{reason}"
                );
                assert!(!reason.contains("secret"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        // A mount of the application's data matters only when it is to be purged.
        let mut st = state(&log());
        st.mounts.extend(parse_mountinfo(
            "41 22 8:2 / /var/lib/appliance/store rw - xfs /dev/sdb1 rw\n",
        ));
        assert!(matches!(decide("lab", &st, false), Verdict::Proceed(_)));
        assert!(matches!(decide("lab", &st, true), Verdict::Refuse { .. }));
    }

    #[test]
    fn nothing_recorded_and_no_k3s_is_a_no_op_and_k3s_without_a_record_is_refused() {
        let none = HostState::default();
        assert_eq!(decide("lab", &none, false), Verdict::Nothing);
        let mut k3s = HostState::default();
        k3s.paths
            .insert("/usr/local/bin/k3s".into(), PathState::File(H1.into()));
        assert!(matches!(decide("lab", &k3s, false), Verdict::Refuse { .. }));
    }

    #[test]
    fn after_an_uninstall_that_kept_files_a_rerun_is_a_no_op_and_a_reinstall_counts_again() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("changes.log");
        let script = super::super::uninstall_scripts::tombstone_script(
            "lab",
            &["/usr/local/bin/k3s".into()],
        )
        .replace(CHANGES_LOG, &log.display().to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "cluster lab\nuninstalled\nkept /usr/local/bin/k3s\n");
        // The kept binary is not taken for a k3s nobody recorded.
        let mut st = state(&text);
        assert_eq!(decide("lab", &st, false), Verdict::Nothing);
        // Another cluster's host is still refused.
        assert!(matches!(decide("prod", &st, false), Verdict::Refuse { .. }));
        // A later install appends: its changes are undone, the earlier ones are not replayed.
        st.changes = Some(parse_changes(&format!(
            "{text}cluster lab\nfile {H1} /etc/cni/net.d/10-local.conflist\n"
        )));
        let Verdict::Proceed(w) = decide("lab", &st, false) else {
            panic!()
        };
        assert_eq!(
            w.remove_first,
            vec![Undo::RemoveFile("/etc/cni/net.d/10-local.conflist".into())]
        );
    }

    #[test]
    fn a_relinked_link_is_kept() {
        let mut st = state(&log());
        st.paths.insert(
            "/opt/cni/bin/bridge".into(),
            PathState::Link("/usr/lib/cni/bridge".into()),
        );
        let Verdict::Proceed(w) = decide("lab", &st, false) else {
            panic!()
        };
        assert!(w.kept.iter().any(|(p, _)| p == "/opt/cni/bin/bridge"));
    }
}
