//! A throwaway OpenSSH server on 127.0.0.1 for fast tests of the SSH layer.
//!
//! Each [`Sshd`] has its own temporary directory: host key, client keys (ed25519, ECDSA,
//! RSA, and an ed25519 key encrypted with a passphrase), `authorized_keys`, a config that
//! listens on a free loopback port, and the `sshd -D` process, killed on drop. It logs in
//! as root (the process owner), so it covers everything but other users and sudo, which
//! the lab tests cover on real nodes.
//!
//! Needs root (sshd's privilege separation) and the `openssh-server` and
//! `openssh-client` Debian packages; [`Sshd::start`] returns `None` with the reason
//! printed when they are missing, and panics instead when `LAB_REQUIRED=1`.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use installer::host::ssh::{AuthMethod, ConnectionSpec, SshConfigSource};

pub const PASSPHRASE: &str = "correct horse battery staple";

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    agent: Option<Child>,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn keygen(path: &Path, kind: &str, passphrase: &str) -> Result<(), String> {
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", kind, "-N", passphrase, "-C", "", "-f"])
        .arg(path);
    if kind == "rsa" {
        c.args(["-b", "2048"]);
    }
    run(&mut c)
}

/// Why the fixture cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            return Some("not root (sshd needs root for privilege separation)".into());
        }
    }
    for bin in [
        "/usr/sbin/sshd",
        "/usr/bin/ssh-keygen",
        "/usr/bin/ssh-agent",
    ] {
        if !Path::new(bin).exists() {
            return Some(format!(
                "{bin} is missing (install openssh-server and openssh-client)"
            ));
        }
    }
    None
}

/// Skips (returns `None`) with a message, or panics under `LAB_REQUIRED=1`.
pub fn skip(reason: &str) {
    if std::env::var("LAB_REQUIRED").as_deref() == Ok("1") {
        panic!("LAB_REQUIRED=1 but the SSH test server cannot run: {reason}");
    }
    eprintln!("SKIPPED: the SSH test server cannot run: {reason}");
}

impl Sshd {
    pub fn start() -> Option<Sshd> {
        if let Some(why) = unavailable() {
            skip(&why);
            return None;
        }
        match Sshd::try_start() {
            Ok(s) => Some(s),
            Err(e) => panic!("cannot start the test sshd: {e}"),
        }
    }

    fn try_start() -> Result<Sshd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        keygen(&d.join("host_ed25519"), "ed25519", "")?;
        keygen(&d.join("host_ecdsa"), "ecdsa", "")?;
        keygen(&d.join("id_ed25519"), "ed25519", "")?;
        keygen(&d.join("id_ecdsa"), "ecdsa", "")?;
        keygen(&d.join("id_rsa"), "rsa", "")?;
        keygen(&d.join("id_encrypted"), "ed25519", PASSPHRASE)?;
        keygen(&d.join("id_unauthorized"), "ed25519", "")?;
        let mut auth = String::new();
        for k in ["id_ed25519", "id_ecdsa", "id_rsa", "id_encrypted"] {
            auth.push_str(
                &std::fs::read_to_string(d.join(format!("{k}.pub"))).map_err(|e| e.to_string())?,
            );
        }
        std::fs::write(d.join("authorized_keys"), auth).map_err(|e| e.to_string())?;
        let port = free_port()?;
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nHostKey {d}/host_ecdsa\n\
             PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n\
             MaxStartups 100\nMaxSessions 100\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), cfg).map_err(|e| e.to_string())?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
        let s = Sshd {
            dir,
            port,
            child,
            agent: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("sshd did not start listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts file trusting this server's ed25519 key (plain entry).
    pub fn known_hosts(&self) -> PathBuf {
        let p = self.path("known_hosts");
        if !p.exists() {
            let key = std::fs::read_to_string(self.path("host_ed25519.pub")).unwrap();
            let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            std::fs::write(&p, format!("[127.0.0.1]:{} {key}\n", self.port)).unwrap();
        }
        p
    }

    /// The server's ed25519 host key fingerprint (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.path("host_ed25519.pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }

    /// A hermetic spec: root, key `id_ed25519`, this server's known_hosts, no ssh_config.
    pub fn spec(&self) -> ConnectionSpec {
        self.spec_with_key("id_ed25519")
    }

    pub fn spec_with_key(&self, key: &str) -> ConnectionSpec {
        ConnectionSpec::new("127.0.0.1")
            .name("local-sshd")
            .port(self.port)
            .user("root")
            .auth(AuthMethod::KeyFile {
                path: self.path(key),
                passphrase: None,
            })
            .known_hosts(self.known_hosts())
            .ssh_config(SshConfigSource::Off)
    }

    /// Starts an ssh-agent holding `key`; returns its socket.
    pub fn agent_with(&mut self, key: &str) -> PathBuf {
        let sock = self.path("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        run(Command::new("ssh-add")
            .arg(self.path(key))
            .env("SSH_AUTH_SOCK", &sock)
            .stdin(Stdio::null()))
        .unwrap();
        sock
    }

    /// Kills every per-connection sshd process (dropping all client connections) and
    /// leaves the listener running. The commands those connections ran are not touched.
    pub fn kill_connections(&self) {
        let mut todo = vec![self.child.id()];
        let mut sshds = Vec::new();
        while let Some(parent) = todo.pop() {
            let out = Command::new("pgrep")
                .args(["-P", &parent.to_string()])
                .output()
                .unwrap();
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let Ok(pid) = pid.parse::<u32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sshd" {
                    sshds.push(pid);
                    todo.push(pid);
                }
            }
        }
        for pid in sshds {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Whether a process whose command line contains `needle` is running.
    pub fn process_running(needle: &str) -> bool {
        Command::new("pgrep")
            .args(["-f", needle])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_connections();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(a) = self.agent.as_mut() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}
