//! Real containers: the kubelet runs the containers of images that carry a root filesystem with
//! `runc`, as containerd's CRI plugin and its runc shim do.
//!
//! Only `hostNetwork: true` pods run for real (they share the node's network namespace, so no
//! pod network is needed); other pods stay simulated ([`super::shim`]). For one container:
//!
//! 1. The image's layers are unpacked once per image ID into
//!    `${data-dir}/agent/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs`
//!    ([`crate::rootfs_images::unpack`], whiteouts honoured), and each container gets its own
//!    writable layer: an overlay mount with that directory as its lower layer.
//! 2. The OCI runtime config ([`oci_config`]) applies the image config (Entrypoint, Cmd, Env,
//!    WorkingDir, User) the way containerd does, then the pod spec: command and args with
//!    `$(VAR)` expansion, env (values, `valueFrom` fieldRef / configMapKeyRef / secretKeyRef /
//!    resourceFieldRef, envFrom) after the service variables the kubelet injects, volume mounts
//!    (hostPath, emptyDir, configMap, secret, projected, downwardAPI, the service-account volume),
//!    the securityContext (capabilities add/drop, privileged, runAsUser/runAsGroup,
//!    readOnlyRootFilesystem), CPU and memory limits, `/etc/hosts`, `/etc/resolv.conf` by
//!    dnsPolicy, `/dev/termination-log`; the cgroup path is the systemd driver's
//!    ([`super::cgroups`]).
//! 3. A shim process ([`shim_main`], argv[0] `containerd-shim-runc-v2` like the simulated shims,
//!    so `k3s-killall.sh` finds it and a k3s restart leaves it running) runs `runc run --keep` in
//!    the foreground, copies the container's stdout and stderr into the kubelet's CRI log file,
//!    turns SIGTERM into the container's graceful stop (SIGTERM, the grace period, SIGKILL),
//!    and when the container exits records its exit code, whether the memory limit killed it
//!    (`OOMKilled`) and its termination message, then deletes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::rootfs_images::{self, ImageInfo};
use crate::standin::log;

/// runc's state directory for the k8s.io namespace, as containerd uses it.
pub const RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

/// The capabilities containerd gives a container that asks for none (`oci.WithDefaultSpec`).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of Linux 6.x (what a privileged container gets).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the shim is asked to do (`runc.json` in the container's directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimSpec {
    /// runc's container ID.
    pub id: String,
    /// The OCI bundle (config.json, rootfs).
    pub bundle: PathBuf,
    /// The CRI log file of this run.
    pub log_path: PathBuf,
    /// The pod's termination grace period.
    pub grace_seconds: u64,
    /// The container's cgroup path (for the OOM count).
    pub cgroup: String,
    /// The host file bind-mounted at terminationMessagePath.
    pub termination_log: PathBuf,
    /// `FallbackToLogsOnError`: use the last log lines when the file is empty and it failed.
    pub fallback_to_logs: bool,
    /// The overlay mount to take down after the container is gone.
    pub rootfs: PathBuf,
}

/// What the shim reports (`runc-status.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The shim's pid.
    pub pid: u32,
    /// `running`, `exited` or `failed` (runc could not create it).
    pub state: String,
    pub started_at: String,
    pub finished_at: String,
    pub exit_code: i64,
    /// `Completed`, `Error`, `OOMKilled`, or runc's error for `failed`.
    pub reason: String,
    /// The termination message.
    pub message: String,
}

/// The container's state files live in the same directory as a simulated container's.
pub fn status(dir: &Path) -> Option<Status> {
    let s = std::fs::read_to_string(dir.join("runc-status.json")).ok()?;
    serde_json::from_str(&s).ok()
}

fn write_status(dir: &Path, st: &Status) {
    let tmp = dir.join("runc-status.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("runc-status.json"));
    }
}

/// Whether `dir` holds a real container (rather than a simulated one).
pub fn is_real(dir: &Path) -> bool {
    dir.join("runc.json").exists()
}

/// The runc binary (Debian installs it in /usr/sbin).
pub fn runc_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A container ID as containerd makes them (64 hex digits).
pub fn container_id(uid: &str, container: &str, restart: i64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format!("{uid}/{container}/{restart}/{}", std::process::id()).as_bytes());
    h.update(jiff::Timestamp::now().as_nanosecond().to_le_bytes());
    hex::encode(h.finalize())
}

/// Unpack `image` from `archive` once, under `snapshots`; returns its root filesystem.
pub fn image_rootfs(
    snapshots: &Path,
    archive: &Path,
    image: &ImageInfo,
) -> Result<PathBuf, String> {
    let id = image.id.trim_start_matches("sha256:");
    let dir = snapshots.join(id);
    let fs = dir.join("fs");
    if dir.join("unpacked").exists() {
        return Ok(fs);
    }
    let tmp = snapshots.join(format!("{id}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    rootfs_images::unpack(archive, image, &tmp.join("fs")).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!("failed to extract layer for image {}: {e}", image.name)
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::write(dir.join("unpacked"), image.name.as_bytes());
    Ok(fs)
}

/// Mount the container's writable layer over the image's root filesystem at `target`.
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<(), String> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let out = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(target)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed to mount rootfs component: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn unmount(target: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(target)
        .output();
}

/// A resolved user: uid, gid, supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

fn lookup(file: &Path, name: &str, field: usize) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| f.get(field)?.parse().ok())
            .flatten()
    })
}

/// The user a container runs as: the image's `User` (`name`, `uid`, `name:group`, `uid:gid`,
/// resolved in the image's `/etc/passwd` and `/etc/group`), overridden by runAsUser/runAsGroup.
pub fn resolve_user(
    rootfs: &Path,
    image_user: Option<&str>,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
) -> Result<User, String> {
    let passwd = rootfs.join("etc/passwd");
    let group = rootfs.join("etc/group");
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image_user.filter(|u| !u.is_empty()) {
        let (user, grp) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        uid = match user.parse() {
            Ok(n) => n,
            Err(_) => lookup(&passwd, user, 2).ok_or_else(|| {
                format!("unable to find user {user}: no matching entries in passwd file")
            })?,
        };
        gid = match grp {
            Some(g) => match g.parse() {
                Ok(n) => n,
                Err(_) => lookup(&group, g, 2).ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
            },
            None => {
                let text = std::fs::read_to_string(&passwd).unwrap_or_default();
                text.lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(uid))
                            .then(|| f.get(3)?.parse().ok())
                            .flatten()
                    })
                    .unwrap_or(0)
            }
        };
    }
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).map_err(|_| format!("invalid runAsUser {u}"))?;
        if run_as_group.is_none() && image_user.is_none() {
            gid = 0;
        }
    }
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).map_err(|_| format!("invalid runAsGroup {g}"))?;
    }
    Ok(User {
        uid,
        gid,
        groups: vec![gid],
    })
}

/// Capabilities after securityContext `capabilities` (names with or without `CAP_`, `ALL`).
pub fn capabilities(sc: &Value) -> Vec<String> {
    if sc["privileged"].as_bool() == Some(true) {
        return ALL_CAPS.iter().map(|s| s.to_string()).collect();
    }
    let norm = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c == "ALL" || c.starts_with("CAP_") {
                    c
                } else {
                    format!("CAP_{c}")
                }
            })
            .collect()
    };
    let add = norm(&sc["capabilities"]["add"]);
    let drop = norm(&sc["capabilities"]["drop"]);
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        let mut c: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        c.extend(add.into_iter().filter(|a| ALL_CAPS.contains(&a.as_str())));
        c
    };
    if drop.iter().any(|c| c == "ALL") {
        // Drop ALL, then the explicit adds (kubelet semantics: adds win over ALL).
        caps = norm(&sc["capabilities"]["add"])
            .into_iter()
            .filter(|a| ALL_CAPS.contains(&a.as_str()))
            .collect();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    caps.sort();
    caps.dedup();
    caps
}

/// `$(VAR)` expansion as the kubelet does it (`$$` escapes, unknown names left as written).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The process arguments (containerd's rules): `command` replaces the Entrypoint and drops the
/// image's Cmd; `args` alone replaces the Cmd.
pub fn process_args(
    image: &rootfs_images::ImageConfig,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
) -> Vec<String> {
    match command {
        Some(c) if !c.is_empty() => {
            let mut v = c;
            v.extend(args.unwrap_or_default());
            v
        }
        _ => {
            let mut v = image.entrypoint.clone().unwrap_or_default();
            match args {
                Some(a) if !a.is_empty() => v.extend(a),
                _ => v.extend(image.cmd.clone().unwrap_or_default()),
            }
            v
        }
    }
}

/// One bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Everything [`oci_config`] needs.
pub struct OciInput<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub caps: Vec<String>,
    pub privileged: bool,
    pub readonly_root: bool,
    pub binds: &'a [Bind],
    pub cgroups_path: String,
    pub memory_limit: Option<i64>,
    pub cpu_milli_limit: Option<i64>,
    pub cpu_milli_request: Option<i64>,
    pub host_pid: bool,
    pub host_ipc: bool,
}

/// The OCI runtime config for a host-network container.
pub fn oci_config(inp: &OciInput<'_>) -> Value {
    let mut namespaces = vec![json!({"type": "mount"})];
    if !inp.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if !inp.host_ipc {
        namespaces.push(json!({"type": "ipc"}));
    }
    // A host-network pod shares the node's network and UTS namespaces (CRI NamespaceMode NODE).
    let sys_opts = if inp.privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for b in inp.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": opts}));
    }
    let caps = &inp.caps;
    let mut resources = json!({
        "devices": [{"allow": inp.privileged, "access": "rwm"}],
    });
    if let Some(m) = inp.memory_limit.filter(|m| *m > 0) {
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(c) = inp.cpu_milli_limit.filter(|c| *c > 0) {
        cpu.insert("quota".into(), json!(c * 100));
        cpu.insert("period".into(), json!(100_000));
    }
    // cpu.shares from the request, as the kubelet computes them (min 2).
    let shares = inp
        .cpu_milli_request
        .map(|r| (r * 1024 / 1000).max(2))
        .unwrap_or(2);
    cpu.insert("shares".into(), json!(shares));
    resources["cpu"] = Value::Object(cpu);
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": inp.cgroups_path,
        "resources": resources,
    });
    if !inp.privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": inp.user.uid, "gid": inp.user.gid, "additionalGids": inp.user.groups},
            "args": inp.args,
            "env": inp.env,
            "cwd": if inp.cwd.is_empty() { "/" } else { inp.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [],
            "noNewPrivileges": false,
            "oomScoreAdj": 1000,
        },
        "root": {"path": "rootfs", "readonly": inp.readonly_root},
        "hostname": "",
        "mounts": mounts,
        "linux": linux,
    })
}

/// Start the shim for a prepared container directory (`runc.json` written).
pub fn start_shim(dir: &Path, argv0: &Path, id: &str) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let _ = std::fs::remove_file(dir.join("runc-status.json"));
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0(argv0.as_os_str())
        .arg("containerd-shim")
        .arg("-namespace")
        .arg("k8s.io")
        .arg("-id")
        .arg(id)
        .arg("-bundle")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own session: a signal to the kubelet's process group does not reach it.
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

fn runc_cmd() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(runc_bin().unwrap_or_else(|| PathBuf::from("runc")));
    c.arg("--root").arg(RUNC_ROOT);
    // k3s.service is Type=notify: with NOTIFY_SOCKET inherited, runc would proxy sd_notify for
    // the container through a socket under its state dir (a path too long to bind), and
    // containerd never hands it on either.
    c.env_remove("NOTIFY_SOCKET");
    c
}

/// Run a command inside a running container (exec probes): exit code and combined output.
pub async fn exec(id: &str, argv: &[String], timeout: Duration) -> Result<(i32, String), String> {
    let mut c = runc_cmd();
    c.arg("exec").arg(id).args(argv).kill_on_drop(true);
    match tokio::time::timeout(timeout, c.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.code().unwrap_or(-1), text))
        }
        Ok(Err(e)) => Err(format!("runc exec: {e}")),
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
    }
}

/// Signal the container through runc (`TERM`, `KILL`).
pub async fn kill(id: &str, signal: &str) {
    let _ = runc_cmd().args(["kill", id, signal]).output().await;
}

/// The OOM-kill count of a container's memory cgroup (v1 `memory.oom_control`, v2
/// `memory.events`).
fn oom_kills(cgroup: &str) -> u64 {
    let base = Path::new("/sys/fs/cgroup");
    let rel = cgroup.trim_start_matches('/');
    let v1 = base.join("memory").join(rel).join("memory.oom_control");
    let v2 = super::cgroups::v2_dir(base, cgroup).map(|d| d.join("memory.events"));
    for f in [Some(v1), v2].into_iter().flatten() {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for l in text.lines() {
                if let Some(n) = l.strip_prefix("oom_kill ") {
                    return n.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

fn last_log_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| {
            // `<time> <stream> <F|P> <text>`
            let mut it = l.splitn(4, ' ');
            it.next()?;
            it.next()?;
            it.next()?;
            Some(it.next().unwrap_or("").to_string())
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `k3s containerd-shim -bundle <dir>` for a real container: the shim process itself.
pub async fn shim_main(dir: &Path) -> i32 {
    let spec: ShimSpec = match std::fs::read_to_string(dir.join("runc.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        Some(s) => s,
        None => return 2,
    };
    let pid = std::process::id();
    let started_at = crate::standin::store::now();
    let mut st = Status {
        pid,
        state: "running".into(),
        started_at: started_at.clone(),
        ..Default::default()
    };
    let _ = std::fs::create_dir_all(RUNC_ROOT);
    let mut cmd = runc_cmd();
    cmd.arg("run")
        .arg("--keep")
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg(&spec.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            st.state = "failed".into();
            st.reason = format!("failed to start runc: {e}");
            write_status(dir, &st);
            return 1;
        }
    };
    let copy = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
                name: &'static str| {
        let path = spec.log_path.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let Some(s) = stream else { return };
            let mut lines = tokio::io::BufReader::new(s).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = super::logs::append(&path, name, &l);
            }
        })
    };
    let out = copy(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        "stdout",
    );
    let err = copy(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        "stderr",
    );
    write_status(dir, &st);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut stopping: Option<tokio::time::Instant> = None;
    let code = loop {
        let deadline = stopping.map(|t| t + Duration::from_secs(spec.grace_seconds));
        tokio::select! {
            r = child.wait() => break r.ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|g| 128 + g))
            }).unwrap_or(-1),
            _ = async {
                match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await }
            }, if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now());
                kill(&spec.id, "TERM").await;
            }
            _ = async {
                match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await }
            }, if deadline.is_some() => {
                kill(&spec.id, "KILL").await;
                stopping = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    };
    let _ = out.await;
    let _ = err.await;
    let ooms = oom_kills(&spec.cgroup);
    let _ = runc_cmd()
        .args(["delete", "--force", &spec.id])
        .output()
        .await;
    unmount(&spec.rootfs);
    let mut message = std::fs::read_to_string(&spec.termination_log).unwrap_or_default();
    if message.len() > 4096 {
        message.truncate(4096);
    }
    st.state = "exited".into();
    st.exit_code = i64::from(code);
    st.finished_at = crate::standin::store::now();
    st.reason = if ooms > 0 {
        "OOMKilled".into()
    } else if code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    if message.trim().is_empty() && spec.fallback_to_logs && code != 0 {
        // The kubelet's FallbackToLogsOnError: the last 80 lines, at most 2048 bytes.
        let mut tail = last_log_lines(&spec.log_path, 80);
        if tail.len() > 2048 {
            let cut = tail.len() - 2048;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(cut);
            tail = tail[cut..].to_string();
        }
        message = tail;
    }
    st.message = message;
    write_status(dir, &st);
    log::info(format!(
        "container {} exited with code {code} ({})",
        spec.id, st.reason
    ));
    0
}

/// Whether the shim of `dir` still runs.
pub fn shim_alive(dir: &Path) -> bool {
    status(dir).is_some_and(|s| s.state == "running" && super::shim::alive(s.pid, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_containerd() {
        let img = rootfs_images::ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["--default".into()]),
            ..Default::default()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(process_args(&img, None, None), s(&["/entry", "--default"]));
        assert_eq!(
            process_args(&img, None, Some(s(&["--x"]))),
            s(&["/entry", "--x"])
        );
        assert_eq!(process_args(&img, Some(s(&["sh"])), None), s(&["sh"]));
        assert_eq!(
            process_args(&img, Some(s(&["sh"])), Some(s(&["-c", "true"]))),
            s(&["sh", "-c", "true"])
        );
    }

    #[test]
    fn expansion_is_the_kubelets() {
        let mut v = BTreeMap::new();
        v.insert("NODE_NAME".to_string(), "node1".to_string());
        assert_eq!(expand("--name=$(NODE_NAME)", &v), "--name=node1");
        assert_eq!(expand("$(MISSING)/x", &v), "$(MISSING)/x");
        assert_eq!(expand("$$(NODE_NAME)", &v), "$(NODE_NAME)");
        assert_eq!(expand("a$b", &v), "a$b");
        assert_eq!(expand("ünï $(NODE_NAME)", &v), "ünï node1");
    }

    #[test]
    fn capabilities_add_drop_and_privileged() {
        let d = capabilities(&json!({}));
        assert_eq!(d.len(), DEFAULT_CAPS.len());
        let c = capabilities(&json!({"capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]}}));
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_NET_RAW".to_string()));
        let only = capabilities(&json!({"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}));
        assert_eq!(only, vec!["CAP_NET_ADMIN".to_string()]);
        assert_eq!(
            capabilities(&json!({"privileged": true})).len(),
            ALL_CAPS.len()
        );
    }

    #[test]
    fn users_resolve_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnginx:x:101:101::/:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nnginx:x:101:\nwww:x:33:\n",
        )
        .unwrap();
        let u = resolve_user(d.path(), Some("nginx"), None, None).unwrap();
        assert_eq!((u.uid, u.gid), (101, 101));
        let u = resolve_user(d.path(), Some("nginx:www"), None, None).unwrap();
        assert_eq!((u.uid, u.gid), (101, 33));
        let u = resolve_user(d.path(), Some("nginx"), Some(1000), Some(2000)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let e = resolve_user(d.path(), Some("nobody"), None, None).unwrap_err();
        assert!(e.contains("unable to find user nobody"), "{e}");
        let u = resolve_user(d.path(), None, None, None).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
    }

    #[test]
    fn the_oci_config_shares_the_host_network() {
        let cfg = oci_config(&OciInput {
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            user: User {
                uid: 0,
                gid: 0,
                groups: vec![0],
            },
            caps: DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
            privileged: false,
            readonly_root: true,
            binds: &[Bind {
                source: "/tmp/x".into(),
                destination: "/etc/x".into(),
                readonly: true,
            }],
            cgroups_path: "/kubepods.slice/x.scope".into(),
            memory_limit: Some(64 << 20),
            cpu_milli_limit: Some(500),
            cpu_milli_request: Some(100),
            host_pid: false,
            host_ipc: false,
        });
        let ns: Vec<&str> = cfg["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"network") && !ns.contains(&"uts"), "{ns:?}");
        assert_eq!(cfg["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(cfg["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(cfg["linux"]["resources"]["cpu"]["shares"], 102);
        assert_eq!(cfg["root"]["readonly"], true);
        assert_eq!(cfg["process"]["cwd"], "/");
        assert!(
            cfg["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/etc/x"
                    && m["options"].as_array().unwrap().contains(&json!("ro")))
        );
    }
}
