//! One node: its overlay root over the shared base, its per-node files (hostname, machine-id, network
//! address, fresh SSH host key, authorized_keys), its cgroup subtree, and the systemd-nspawn process
//! that boots systemd in it (recipe and flags from ../shared/docs/lab.md). Also the out-of-band ways
//! to reach a node without SSH (nsenter into its namespaces) and to kill it like a power cut.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cmd::{self, command};
use super::keys;
use super::layout::{Layout, PREFIX_LEN};
use super::state::{self, NodeRecord, Proc};

/// Directories of node `k`.
pub(crate) struct NodeDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub rancher: PathBuf,
    pub console: PathBuf,
}

impl NodeDirs {
    pub fn of(layout: &Layout, k: usize) -> Self {
        let dir = layout.node_dir(k);
        Self {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            rancher: dir.join("rancher"),
            console: dir.join("console.log"),
        }
    }
}

/// Creates node `k`'s directories, mounts its rancher tmpfs (if sized) and its overlay, recording
/// each step in `rec` as soon as it is done.
pub(crate) fn mount_node(
    layout: &Layout,
    k: usize,
    base: &Path,
    rancher_size_mib: Option<u64>,
    rec: &mut NodeRecord,
) -> Result<()> {
    let d = NodeDirs::of(layout, k);
    for p in [&d.upper, &d.work, &d.merged, &d.rancher] {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::set_permissions(&d.rancher, std::fs::Permissions::from_mode(0o755))?;
    if let Some(mib) = rancher_size_mib {
        cmd::run(
            command("mount")?
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755")])
                .arg(format!("{}-rancher", layout.machine(k)))
                .arg(&d.rancher),
        )
        .with_context(|| format!("mounting a {mib} MiB tmpfs for /var/lib/rancher of node{k}"))?;
        rec.rancher_mounted = true;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        d.upper.display(),
        d.work.display()
    );
    cmd::run(
        command("mount")?
            .args(["-t", "overlay", "-o", &opts])
            .arg(layout.machine(k))
            .arg(&d.merged),
    )
    .with_context(|| format!("mounting the overlay root of node{k}"))?;
    rec.overlay_mounted = true;
    // systemd-nspawn locks the root directory through /run/systemd/nspawn/locks/inode-DEV:INO
    // (src/shared/machine-image.c, `image_path_lock`); a killed nspawn leaves it behind.
    let md = std::fs::metadata(&d.merged)?;
    use std::os::unix::fs::MetadataExt;
    rec.nspawn_lock = Some(PathBuf::from(format!(
        "/run/systemd/nspawn/locks/inode-{}:{}",
        md.dev(),
        md.ino()
    )));
    Ok(())
}

/// Writes node `k`'s own files into its (mounted) root; returns its host public key line.
pub(crate) fn write_node_files(layout: &Layout, k: usize, authorized_keys: &str) -> Result<String> {
    let root = NodeDirs::of(layout, k).merged;
    let name = Layout::node_name(k);
    write_file(&root, "etc/hostname", &format!("{name}\n"), 0o644, None)?;
    write_file(
        &root,
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
        ),
        0o644,
        None,
    )?;
    let mid: [u8; 16] = rand::random();
    write_file(
        &root,
        "etc/machine-id",
        &format!("{}\n", hex::encode(mid)),
        0o444,
        None,
    )?;
    // Nothing answers DNS on the bridge: lookups fail fast, as on an isolated network.
    write_file(
        &root,
        "etc/resolv.conf",
        &format!("nameserver {}\n", layout.bridge_addr()),
        0o644,
        None,
    )?;
    write_file(
        &root,
        "etc/systemd/network/10-host0.network",
        &network_file(layout, k),
        0o644,
        None,
    )?;
    let ssh_dir = safe_dir(&root, "etc/ssh")?;
    let host_pub = keys::host_key(&ssh_dir, &name)?;
    for (user, uid, gid, home) in passwd_users(&root)? {
        if user == "root" || user == super::NOPASSWD_SUDO_USER || user == super::PASSWORD_SUDO_USER
        {
            let rel = format!("{}/.ssh/authorized_keys", home.trim_start_matches('/'));
            write_file(&root, &rel, authorized_keys, 0o600, Some((uid, gid)))?;
        }
    }
    Ok(host_pub)
}

/// The systemd-networkd file of node `k`: fixed address, default route via the bridge. Carrier loss
/// (the `link_down` fault) keeps the address, like a cut cable on a host with static addressing.
pub(crate) fn network_file(layout: &Layout, k: usize) -> String {
    format!(
        "# Written by the installer lab.\n[Match]\nName=host0\n\n[Network]\nAddress={}/{PREFIX_LEN}\nGateway={}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\nIgnoreCarrierLoss=yes\n",
        layout.node_addr(k),
        layout.bridge_addr()
    )
}

/// (name, uid, gid, home) of every user in the root's /etc/passwd.
fn passwd_users(root: &Path) -> Result<Vec<(String, u32, u32, String)>> {
    let text = std::fs::read_to_string(root.join("etc/passwd"))
        .context("reading the node's /etc/passwd")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5)?.to_string(),
            ))
        })
        .collect())
}

/// `root/rel` as a directory, refusing symlinks on the way (a symlink inside a node's root points
/// into the host when followed from outside).
fn safe_dir(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!("{} is a symlink; refusing to write through it", p.display())
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is not a directory", p.display()),
            Err(_) => {
                std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?
            }
        }
    }
    Ok(p)
}

/// Writes `root/rel` as a new regular file (an existing file or symlink there is removed first).
fn write_file(
    root: &Path,
    rel: &str,
    content: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let rel = Path::new(rel);
    let dir = safe_dir(
        root,
        &rel.parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )?;
    let path = dir.join(rel.file_name().context("empty file name")?);
    if std::fs::symlink_metadata(&path).is_ok() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Every cgroup hierarchy mounted under /sys/fs/cgroup: (mount point, is cgroup2, is cpuset).
fn cgroup_hierarchies() -> Result<Vec<(PathBuf, bool, bool)>> {
    Ok(state::mounts()?
        .into_iter()
        .filter(|m| {
            (m.fs_type == "cgroup" || m.fs_type == "cgroup2")
                && m.mount_point.starts_with("/sys/fs/cgroup")
        })
        .map(|m| {
            let cpuset = m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "cpuset");
            (m.mount_point, m.fs_type == "cgroup2", cpuset)
        })
        .collect())
}

/// Creates node `k`'s cgroup in every hierarchy (recorded one by one in `rec`).
pub(crate) fn create_cgroups(layout: &Layout, k: usize, rec: &mut NodeRecord) -> Result<()> {
    let name = layout.machine(k);
    for (mp, _v2, cpuset) in cgroup_hierarchies()? {
        let dir = mp.join(&name);
        if dir.exists() {
            bail!(
                "cgroup {} already exists\nhint: a leftover of a lab killed with its state; run `lab down`",
                dir.display()
            );
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        rec.cgroups.push(dir.clone());
        if cpuset {
            // A new cpuset cgroup starts empty and refuses tasks: copy the parent's CPUs and memory nodes.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(mp.join(f))?;
                std::fs::write(dir.join(f), v.trim())
                    .with_context(|| format!("writing {}", dir.join(f).display()))?;
            }
        }
    }
    Ok(())
}

/// The systemd-nspawn command line for node `k` (../shared/docs/lab.md, "Start").
pub(crate) fn nspawn_args(layout: &Layout, k: usize) -> Vec<String> {
    let d = NodeDirs::of(layout, k);
    vec![
        format!("--directory={}", d.merged.display()),
        format!("--machine={}", layout.machine(k)),
        // Without systemd as PID 1 on the host, these two make nspawn work (no machined, no scope unit).
        "--register=no".into(),
        "--keep-unit".into(),
        "--boot".into(),
        format!("--network-bridge={}", layout.bridge()),
        "--console=read-only".into(),
        "--capability=all".into(),
        // The nodes share the host's clock: none of them may set it (chrony runs with -x).
        "--drop-capability=CAP_SYS_TIME".into(),
        "--system-call-filter=@keyring bpf".into(),
        "--bind=/dev/kmsg".into(),
        format!("--bind={}:/var/lib/rancher", d.rancher.display()),
        "--resolv-conf=off".into(),
        "--timezone=off".into(),
        "--link-journal=no".into(),
    ]
}

/// Starts systemd-nspawn for node `k` in the background, inside the node's cgroups (a shell moves
/// itself into them, then execs nspawn, so no process of the node ever runs outside them).
pub(crate) fn spawn(layout: &Layout, k: usize, rec: &NodeRecord) -> Result<Child> {
    let d = NodeDirs::of(layout, k);
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&d.console)
        .with_context(|| format!("opening {}", d.console.display()))?;
    let nspawn = cmd::find_tool("systemd-nspawn").ok_or_else(|| {
        anyhow!("systemd-nspawn not found\nhint: install the Debian package systemd-container")
    })?;
    let procs: Vec<String> = rec
        .cgroups
        .iter()
        .map(|c| c.join("cgroup.procs").display().to_string())
        .collect();
    let mut c = command("sh")?;
    c.arg("-c")
        .arg(r#"for p in $LAB_CGROUP_PROCS; do echo $$ > "$p" || exit 97; done; exec "$@""#)
        .arg(layout.machine(k))
        .arg(nspawn)
        .args(nspawn_args(layout, k))
        .env("LAB_CGROUP_PROCS", procs.join(" "))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // Its own process group: a Ctrl-C meant for the test does not reach the node.
        .process_group(0);
    c.spawn()
        .with_context(|| format!("starting systemd-nspawn for node{k}"))
}

/// The last lines of node `k`'s console log, for error messages.
pub(crate) fn console_tail(layout: &Layout, k: usize, n: usize) -> String {
    let text = std::fs::read_to_string(NodeDirs::of(layout, k).console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until node `k` accepts an SSH login and systemd finished booting; returns the
/// `systemctl is-system-running` answer (`running` or `degraded`).
pub(crate) fn wait_ready(
    layout: &Layout,
    k: usize,
    nspawn: Proc,
    ssh: impl Fn(&str, Duration) -> Result<Output>,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((layout.node_addr(k), 22));
    let gone = |what: &str| {
        anyhow!(
            "node{k}: systemd-nspawn exited {what}; last console lines:\n{}",
            console_tail(layout, k, 20)
        )
    };
    loop {
        if !nspawn.alive() {
            return Err(gone("while booting"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "node{k}: sshd did not listen on {addr} within {timeout:?}; last console lines:\n{}",
                console_tail(layout, k, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut last = String::new();
    while Instant::now() < deadline {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match ssh("systemctl is-system-running --wait", left) {
            Ok(out) => {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(state);
                }
                last = format!("{state} {}", String::from_utf8_lossy(&out.stderr).trim());
                if out.status.code() != Some(255)
                    && !state.is_empty()
                    && state != "starting"
                    && state != "initializing"
                {
                    bail!("node{k}: systemd is {state:?} after boot");
                }
            }
            Err(e) => last = format!("{e:#}"),
        }
        if !nspawn.alive() {
            return Err(gone("after sshd started"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("node{k}: no SSH login within {timeout:?}; last attempt: {last}")
}

/// The host PID of the node's init (systemd), the direct child of its nspawn process.
pub(crate) fn init_pid(nspawn: Proc) -> Result<u32> {
    if !nspawn.alive() {
        bail!("the node is not running");
    }
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nspawn.pid))?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .next()
        .context("systemd-nspawn has no child process (the node is starting or stopping)")
}

/// Runs `sh -c script` inside the node's namespaces through nsenter: works while sshd is down or the
/// network is cut. Output is captured; bounded by `timeout`.
pub(crate) fn nsenter(nspawn: Proc, script: &str, timeout: Duration) -> Result<Output> {
    let pid = init_pid(nspawn)?;
    let mut c = command("nsenter")?;
    c.args([
        "-t",
        &pid.to_string(),
        "-m",
        "-u",
        "-i",
        "-n",
        "-p",
        // The node's cgroup namespace too, as an SSH login has: without it a cgroup path such
        // a script hands to the kernel (`nft ... socket cgroupv2 level 1 "kubepods.slice"`)
        // was resolved against the host's root, and its rule never matched.
        "-C",
        "--",
        "/bin/sh",
        "-c",
        script,
    ])
    .env_clear()
    .env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("LANG", "C.UTF-8");
    cmd::output_timeout(&mut c, timeout)
}

/// Sends SIGTERM to nspawn (which halts the node's systemd cleanly, about 2 s); true if it exited
/// within `timeout`.
pub(crate) fn terminate(nspawn: Proc, timeout: Duration) -> bool {
    if nspawn.alive() {
        let _ = kill(Pid::from_raw(nspawn.pid as i32), Signal::SIGTERM);
    }
    nspawn.wait_gone(timeout)
}

/// Kills every process of the node at once, like a power cut: `cgroup.kill` of its cgroup2
/// directory (Linux 5.14+), else SIGKILL to every PID in its cgroups until none is left.
/// Killing nspawn alone would not do: the node's systemd survives it.
pub(crate) fn kill_all(rec: &NodeRecord) -> Result<()> {
    for cg in &rec.cgroups {
        let f = cg.join("cgroup.kill");
        if f.exists() {
            std::fs::write(&f, "1").with_context(|| format!("writing {}", f.display()))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = procs_in(&rec.cgroups);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {pids:?} of node{} survived SIGKILL", rec.index);
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every PID in the given cgroups and their descendants.
pub(crate) fn procs_in(cgroups: &[PathBuf]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = cgroups.iter().filter(|p| p.is_dir()).cloned().collect();
    while let Some(d) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Removes a cgroup directory and the sub-cgroups systemd made inside it, deepest first.
pub(crate) fn remove_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            let subs: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect();
            dirs.extend(subs);
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        // rmdir on a cgroup can fail with EBUSY for a moment after its last process exited.
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if tries < 50 => {
                    let _ = e;
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("removing cgroup {}", d.display()));
                }
            }
        }
    }
    Ok(())
}

/// Reaps `child`, waiting at most `timeout`; true if it exited.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn network_file_sets_address_gateway_and_keeps_it_on_carrier_loss() {
        let f = network_file(&Layout::new(1).unwrap(), 2);
        assert!(f.contains("Name=host0"));
        assert!(f.contains("Address=10.77.1.12/24"));
        assert!(f.contains("Gateway=10.77.1.1"));
        assert!(f.contains("IgnoreCarrierLoss=yes"));
    }

    #[test]
    fn nspawn_args_follow_the_measured_recipe_and_never_make_the_api_vfs_writable() {
        let a = nspawn_args(&Layout::new(1).unwrap(), 3);
        for want in [
            "--machine=lab1-node3",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--network-bridge=ilab1",
            "--bind=/dev/kmsg",
            "--drop-capability=CAP_SYS_TIME",
            "--bind=/var/tmp/installer-lab/1/node3/rancher:/var/lib/rancher",
        ] {
            assert!(a.iter().any(|x| x == want), "missing {want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("API_VFS")));
    }

    #[test]
    fn write_file_replaces_symlinks_instead_of_following_them() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("etc/resolv.conf")).unwrap();
        write_file(
            root.path(),
            "etc/resolv.conf",
            "nameserver 10.77.1.1\n",
            0o644,
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 10.77.1.1\n"
        );
        // a symlinked directory on the way is refused
        std::os::unix::fs::symlink(outside.path(), root.path().join("root")).unwrap();
        assert!(write_file(root.path(), "root/.ssh/authorized_keys", "k", 0o600, None).is_err());
    }
}
