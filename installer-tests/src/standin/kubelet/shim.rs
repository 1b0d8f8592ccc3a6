//! Simulated containers: one small process per running container that has ports.
//!
//! For a hostNetwork pod, what the installer can observe of a real container is its sockets: the
//! ports it listens on, on the node. The shim binds the container's declared ports (and the
//! ports its probes use) on the node and answers the readiness, liveness and startup `httpGet`
//! paths with `200 ok` over HTTP or HTTPS as the probe's scheme says; other paths get `404`. If a
//! port is taken, the bind fails as the real application's would and the kubelet reports the
//! container crashing. The process is started with an argv[0] like containerd's runc shim
//! (`/var/lib/rancher/k3s/data/<hash>/bin/containerd-shim-runc-v2`), so that `k3s-killall.sh`
//! finds and kills it, and it is not tied to the k3s process: under `KillMode=process` a restart
//! of `k3s.service` leaves it running, as real containers keep running (docs/k3s-host-network.md
//! §3). A restarted stand-in adopts the shims it finds in its state directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::standin::log;

/// One port a shim listens on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimPort {
    pub port: u16,
    /// `TCP` or `UDP` (SCTP is treated as TCP).
    pub protocol: String,
    /// Serve HTTPS (a probe on this port says `scheme: HTTPS`).
    pub tls: bool,
    /// Paths answered with 200.
    pub paths: Vec<String>,
}

/// What a shim is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimSpec {
    /// `namespace/name` of the pod (for logs).
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub bind_ip: String,
    pub ports: Vec<ShimPort>,
    /// The container's cgroup path (the systemd driver's layout, [`super::cgroups`]); the shim
    /// moves itself there first. Empty under a test prefix (the host's cgroups are not the node's).
    #[serde(default)]
    pub cgroup: String,
}

/// What a shim reports in its status file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimStatus {
    pub pid: u32,
    /// `running` or `failed`.
    pub state: String,
    pub error: String,
}

/// The directory holding a container's shim files.
pub fn shim_dir(run_dir: &Path, uid: &str, container: &str) -> PathBuf {
    run_dir.join("pods").join(uid).join(container)
}

/// The argv[0] the shim runs under (what k3s-killall.sh looks for).
pub fn shim_argv0(data_dir: &Path) -> PathBuf {
    data_dir
        .join("data")
        .join(super::runtime::data_hash())
        .join("bin/containerd-shim-runc-v2")
}

/// Read a shim's status.
pub fn status(dir: &Path) -> Option<ShimStatus> {
    let s = std::fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&s).ok()
}

/// Whether `pid` is alive and is a shim for `dir`.
pub fn alive(pid: u32, dir: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(rest) = stat.rsplit(") ").next()
        && rest.starts_with('Z')
    {
        return false;
    }
    let cmd = String::from_utf8_lossy(&cmd);
    cmd.contains("containerd-shim") && cmd.contains(&*dir.to_string_lossy())
}

/// Start a shim for `spec`, with its files in `dir`.
pub fn start(spec: &ShimSpec, dir: &Path, argv0: &Path) -> std::io::Result<u32> {
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("status.json"));
    std::fs::write(
        dir.join("spec.json"),
        serde_json::to_vec(spec).unwrap_or_default(),
    )?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0(argv0.as_os_str())
        .arg("containerd-shim")
        .arg("-namespace")
        .arg("k8s.io")
        .arg("-id")
        .arg(format!("{}-{}", spec.uid, spec.container))
        .arg("-bundle")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // Reap it when it exits so it does not linger as a zombie of this process.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Stop a shim (SIGTERM).
pub fn stop(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

fn write_status(dir: &Path, st: &ShimStatus) {
    let tmp = dir.join("status.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("status.json"));
    }
}

/// `k3s containerd-shim -bundle <dir> ...`: the shim process itself.
pub async fn main(args: &[String]) -> i32 {
    let Some(dir) = args
        .iter()
        .position(|a| a == "-bundle")
        .and_then(|i| args.get(i + 1))
    else {
        return 2;
    };
    let dir = PathBuf::from(dir);
    if super::runc::is_real(&dir) {
        return super::runc::shim_main(&dir).await;
    }
    let spec: ShimSpec = match std::fs::read_to_string(dir.join("spec.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        Some(s) => s,
        None => return 2,
    };
    let pid = std::process::id();
    if !spec.cgroup.is_empty()
        && let Err(e) = super::cgroups::enter(Path::new("/sys/fs/cgroup"), &spec.cgroup, pid)
    {
        log::warn(format!("shim of {}: joining its cgroup: {e}", spec.pod));
    }
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for p in &spec.ports {
        let addr = format!("{}:{}", spec.bind_ip, p.port);
        let res = if p.protocol == "UDP" {
            tokio::net::UdpSocket::bind(&addr)
                .await
                .map(|s| udp.push(s))
        } else {
            tokio::net::TcpListener::bind(&addr)
                .await
                .map(|l| tcp.push((l, p.clone())))
        };
        if let Err(e) = res {
            let proto = if p.protocol == "UDP" { "udp" } else { "tcp" };
            let msg = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    format!("listen {proto} {addr}: bind: address already in use")
                }
                std::io::ErrorKind::PermissionDenied => {
                    format!("listen {proto} {addr}: bind: permission denied")
                }
                _ => format!("listen {proto} {addr}: bind: {e}"),
            };
            write_status(
                &dir,
                &ShimStatus {
                    pid,
                    state: "failed".into(),
                    error: msg,
                },
            );
            return 1;
        }
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), spec.bind_ip.clone()])
            .ok();
    // The pod's own TLS Secret when it mounts one (standin::secret_volumes), else self-signed.
    let pems = crate::standin::secret_volumes::read(&dir).or_else(|| {
        cert.as_ref()
            .map(|c| (c.cert.pem(), c.signing_key.serialize_pem()))
    });
    let dns = crate::standin::dns::DnsPorts::read(&dir);
    let udp = crate::standin::dns::serve_udp_ports(udp, &dns, &shutdown);
    for (listener, port) in tcp {
        if let Some(ip) = dns.answers_on(port.port) {
            tokio::spawn(crate::standin::dns::serve_tcp(
                listener,
                ip,
                shutdown.clone(),
            ));
            continue;
        }
        let paths = Arc::new(port.paths.clone());
        let name = spec.pod.clone();
        let router = Router::new().fallback(move |req: Request| {
            let paths = paths.clone();
            let name = name.clone();
            async move {
                let path = req.uri().path().to_string();
                let mut r = if paths.iter().any(|p| p == &path) {
                    Response::new(Body::from("ok"))
                } else {
                    let mut r = Response::new(Body::from(format!(
                        "404 page not found (k3s stand-in container of {name})\n"
                    )));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                r.headers_mut().insert(
                    "content-type",
                    axum::http::HeaderValue::from_static("text/plain"),
                );
                r
            }
        });
        let sd = shutdown.clone();
        match (&pems, port.tls) {
            (Some((cert_pem, key_pem)), true) => {
                let cfg = crate::standin::api::tls_config(cert_pem, key_pem, None);
                match cfg {
                    Ok(cfg) => {
                        tokio::spawn(crate::standin::api::serve_tls(listener, cfg, router, sd));
                    }
                    Err(e) => log::error(format!("shim TLS: {e}")),
                }
            }
            _ => {
                tokio::spawn(crate::standin::api::serve_plain(listener, router, sd));
            }
        }
    }
    write_status(
        &dir,
        &ShimStatus {
            pid,
            state: "running".into(),
            error: String::new(),
        },
    );
    crate::standin::server::shutdown_signal().await;
    shutdown.cancel();
    drop(udp);
    let _ = std::fs::remove_file(dir.join("status.json"));
    0
}
