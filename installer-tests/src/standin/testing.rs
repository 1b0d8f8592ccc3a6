//! Running stand-in "nodes" as local processes, for the stand-in's own tests.
//!
//! Each [`LocalNode`] is a `k3s-standin server|agent` process with its own temporary root (the
//! test-only [`ROOT_ENV`](super::paths::ROOT_ENV) prefix) and its own loopback address
//! (`127.x.y.z`, all of which reach the host's loopback on Linux), so several nodes can form a
//! cluster on one machine without the lab and without sending traffic anywhere but loopback. The
//! process runs in its own process group with its simulated containers; dropping the node kills
//! the group. `NOTIFY_SOCKET` points at a datagram socket the test can read, as systemd's would.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::paths::ROOT_ENV;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh loopback address for a test node (`127.<a>.<b>.<c>`), unique within this process and
/// unlikely to collide with concurrently running test processes.
pub fn loopback_ip() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        20 + (pid % 200),
        (pid / 200) % 250,
        2 + (n % 250)
    )
}

/// One stand-in process.
pub struct LocalNode {
    pub name: String,
    pub ip: String,
    pub root: tempfile::TempDir,
    bin: PathBuf,
    cmd: String,
    child: Option<Child>,
    log: PathBuf,
    notify: Option<std::os::unix::net::UnixDatagram>,
    notify_path: PathBuf,
}

impl LocalNode {
    /// Prepare a node: write `config_yaml` as its `/etc/rancher/k3s/config.yaml` and `faults_yaml`
    /// (default: no startup delay) as its fault file. Call [`start`](Self::start) to run it.
    pub fn prepare(
        bin: &Path,
        name: &str,
        cmd: &str,
        config_yaml: &str,
        faults_yaml: Option<&str>,
    ) -> LocalNode {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ip = loopback_ip();
        let node = LocalNode {
            name: name.to_string(),
            ip,
            log: root.path().join("k3s.log"),
            notify_path: root.path().join("notify.sock"),
            root,
            bin: bin.to_path_buf(),
            cmd: cmd.to_string(),
            child: None,
            notify: None,
        };
        let config = config_yaml
            .replace("{ip}", &node.ip)
            .replace("{name}", name);
        node.write("/etc/rancher/k3s/config.yaml", &config);
        node.write(
            "/etc/k3s-standin/faults.yaml",
            faults_yaml.unwrap_or("startup-delay: 0\nlearner-promotion-delay: 500ms\n"),
        );
        node
    }

    /// The path of `p` (a node path such as `/var/lib/rancher/k3s/server/token`) on the host.
    pub fn path(&self, p: &str) -> PathBuf {
        super::paths::Root::under(self.root.path()).path(p)
    }

    /// Write a file on the node.
    pub fn write(&self, p: &str, content: &str) {
        let path = self.path(p);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Read a file on the node.
    pub fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    /// Start (or restart) the process.
    pub fn start(&mut self) {
        let _ = std::fs::remove_file(&self.notify_path);
        let sock = std::os::unix::net::UnixDatagram::bind(&self.notify_path)
            .unwrap_or_else(|e| panic!("notify socket: {e}"));
        let _ = sock.set_nonblocking(true);
        self.notify = Some(sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log: {e}"));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(&self.bin)
            .arg(&self.cmd)
            .env(ROOT_ENV, self.root.path())
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env_remove("K3S_TOKEN")
            .env_remove("K3S_URL")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.logs().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{}: no log line containing {needle:?} after {timeout:?}; log:\n{}",
            self.name,
            self.logs()
        ))
    }

    /// Whether `READY=1` arrived on the notify socket (consumes pending messages).
    pub fn notified_ready(&self) -> bool {
        let Some(s) = &self.notify else { return false };
        let mut buf = [0u8; 256];
        let mut ready = false;
        while let Ok(n) = s.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                ready = true;
            }
        }
        ready
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM the k3s process only (like `systemctl stop` with `KillMode=process`), and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node's `https://<ip>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:6443", self.ip)
    }

    /// The process group id (for killing simulated containers too).
    fn kill_group(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            let _ = c.wait();
        }
        // Shims adopted from an earlier process of this node may be in an older group.
        let pods = self.path("/run/k3s/standin/pods");
        if let Ok(rd) = std::fs::read_dir(&pods) {
            for pod in rd.flatten() {
                for c in std::fs::read_dir(pod.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Some(st) = super::kubelet::shim::status(&c.path())
                        && super::kubelet::shim::alive(st.pid, &c.path())
                        && let Some(p) = rustix::process::Pid::from_raw(st.pid as i32)
                    {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                }
            }
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill_group();
        if std::env::var_os("K3S_STANDIN_KEEP_LOGS").is_some() {
            let _ = std::fs::copy(
                &self.log,
                std::env::temp_dir().join(format!("standin-{}-{}.log", self.name, self.ip)),
            );
        }
    }
}
