//! A scripted fake [`Remote`] for unit tests of phase logic: expected commands get canned
//! outputs, uploads are recorded (and kept as the host's files), and everything that was
//! asked of the host is logged for assertions.
//!
//! ```
//! # tokio_test_block_on(async {
//! use installer::host::fake::{FakeRemote, Reply};
//! use installer::host::{RemoteCommand, RemoteExt};
//!
//! let host = FakeRemote::new("node1")
//!     .expect("uname -m", Reply::ok("x86_64\n"))
//!     .on_contains("systemctl is-active", Reply::exit(3, "inactive\n", ""));
//! assert_eq!(host.run(RemoteCommand::new("uname -m")).await.unwrap().stdout_str(), "x86_64\n");
//! host.assert_done();
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Matching: each command is checked against the one-shot expectations (`expect*`) in the
//! order they were added, then against the standing ones (`on*`). A command nothing
//! matches fails with a [`HostError::Other`] naming it, and is logged, so a test sees
//! both the error and the stray command.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::host::{
    CommandOutput, HostError, Progress, Remote, RemoteCommand, Stdin, Tunnel, UploadOutcome,
    UploadSource, UploadTarget, read_file_script,
};

/// How an expectation recognises a command's script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Contains(String),
}

impl Matcher {
    fn matches(&self, script: &str) -> bool {
        match self {
            Matcher::Exact(s) => script == s,
            Matcher::Prefix(s) => script.starts_with(s.as_str()),
            Matcher::Contains(s) => script.contains(s.as_str()),
        }
    }
}

impl From<&str> for Matcher {
    fn from(s: &str) -> Self {
        Matcher::Exact(s.to_owned())
    }
}

impl From<String> for Matcher {
    fn from(s: String) -> Self {
        Matcher::Exact(s)
    }
}

/// What the fake host answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Output(CommandOutput),
    Error(HostError),
    /// No answer, ever: a host powered off under a connection that has not noticed yet.
    Hang,
}

impl Reply {
    /// Exit 0 with this stdout.
    pub fn ok(stdout: &str) -> Reply {
        Reply::exit(0, stdout, "")
    }

    /// This exit status, stdout and stderr.
    pub fn exit(status: u32, stdout: &str, stderr: &str) -> Reply {
        Reply::Output(CommandOutput {
            status: Some(status),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        })
    }

    /// An error instead of an output (a timeout, a dropped connection, ...).
    pub fn err(e: HostError) -> Reply {
        Reply::Error(e)
    }
}

struct Expectation {
    matcher: Matcher,
    reply: Reply,
    standing: bool,
    used: usize,
}

/// Something the code under test asked of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Exec {
        script: String,
        sudo: bool,
        /// Stdin bytes; a secret shows as `***`.
        stdin: Option<Vec<u8>>,
    },
    Upload {
        path: String,
    },
    Tunnel {
        host: String,
        port: u16,
    },
}

/// An upload as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedUpload {
    pub target: UploadTarget,
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// `false` when the host already had the same content.
    pub transferred: bool,
}

#[derive(Default)]
struct State {
    expectations: Vec<Expectation>,
    calls: Vec<Call>,
    uploads: Vec<RecordedUpload>,
    files: BTreeMap<String, Vec<u8>>,
    tunnels_echo: bool,
}

/// The fake host. Share it with `Arc` to keep a handle for assertions.
pub struct FakeRemote {
    name: String,
    state: Mutex<State>,
}

impl FakeRemote {
    pub fn new(name: impl Into<String>) -> FakeRemote {
        FakeRemote {
            name: name.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn add(self, matcher: Matcher, reply: Reply, standing: bool) -> Self {
        if let Ok(mut s) = self.state.lock() {
            s.expectations.push(Expectation {
                matcher,
                reply,
                standing,
                used: 0,
            });
        }
        self
    }

    /// Expects this command exactly once (in order with other `expect*` calls).
    pub fn expect(self, script: impl Into<Matcher>, reply: Reply) -> Self {
        self.add(script.into(), reply, false)
    }

    /// Expects, once, a command containing `part`.
    pub fn expect_contains(self, part: &str, reply: Reply) -> Self {
        self.add(Matcher::Contains(part.to_owned()), reply, false)
    }

    /// Answers this command every time it comes.
    pub fn on(self, script: impl Into<Matcher>, reply: Reply) -> Self {
        self.add(script.into(), reply, true)
    }

    /// Answers every command containing `part`.
    pub fn on_contains(self, part: &str, reply: Reply) -> Self {
        self.add(Matcher::Contains(part.to_owned()), reply, true)
    }

    /// A file the host already has: `read_file` returns it, and an upload of the same
    /// content reports [`UploadOutcome::AlreadyPresent`].
    pub fn with_file(self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        if let Ok(mut s) = self.state.lock() {
            s.files.insert(path.to_owned(), content.into());
        }
        self
    }

    /// `connect_tcp` returns a stream that echoes what is written to it.
    pub fn with_echo_tunnels(self) -> Self {
        if let Ok(mut s) = self.state.lock() {
            s.tunnels_echo = true;
        }
        self
    }

    /// Everything asked of the host, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    /// The scripts run, in order.
    pub fn scripts(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Exec { script, .. } => Some(script),
                _ => None,
            })
            .collect()
    }

    /// Every upload, in order.
    pub fn uploads(&self) -> Vec<RecordedUpload> {
        self.state
            .lock()
            .map(|s| s.uploads.clone())
            .unwrap_or_default()
    }

    /// The host's current content of `path` (uploaded or given with `with_file`).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.files.get(path).cloned())
    }

    /// One-shot expectations that were never met.
    pub fn unmet(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| {
                s.expectations
                    .iter()
                    .filter(|e| !e.standing && e.used == 0)
                    .map(|e| format!("{:?}", e.matcher))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Panics (in a test) if a one-shot expectation was not met or a command was not
    /// expected.
    pub fn assert_done(&self) {
        let unmet = self.unmet();
        assert!(
            unmet.is_empty(),
            "{}: expected but not run: {unmet:?}",
            self.name
        );
    }
}

impl FakeRemote {
    /// The scripted reply to `cmd`, recording the call.
    fn answer(&self, cmd: &RemoteCommand) -> Reply {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => {
                return Reply::Error(HostError::Other {
                    host: self.name.clone(),
                    message: "fake: poisoned".into(),
                });
            }
        };
        s.calls.push(Call::Exec {
            script: cmd.script.clone(),
            sudo: cmd.sudo,
            stdin: cmd.stdin.as_ref().map(|i| match i {
                Stdin::Bytes(b) => b.clone(),
                Stdin::Secret(_) => crate::secret::MASK.as_bytes().to_vec(),
            }),
        });
        let once = s
            .expectations
            .iter()
            .position(|e| !e.standing && e.used == 0 && e.matcher.matches(&cmd.script));
        let standing = || {
            s.expectations
                .iter()
                .position(|e| e.standing && e.matcher.matches(&cmd.script))
        };
        let idx = once.or_else(standing);
        if let Some(i) = idx {
            let e = &mut s.expectations[i];
            e.used += 1;
            return e.reply.clone();
        }
        // `read_file` of a known file.
        for (path, content) in &s.files {
            if cmd.script == read_file_script(path) {
                return Reply::Output(CommandOutput {
                    status: Some(0),
                    stdout: content.clone(),
                    stderr: Vec::new(),
                });
            }
        }
        Reply::Error(HostError::Other {
            host: self.name.clone(),
            message: format!("fake host: unexpected command `{}`", cmd.script),
        })
    }
}

#[async_trait]
impl Remote for FakeRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError> {
        match self.answer(&cmd) {
            Reply::Output(o) => Ok(o),
            Reply::Error(e) => Err(e),
            Reply::Hang => std::future::pending().await,
        }
    }

    async fn upload(
        &self,
        src: &UploadSource,
        target: &UploadTarget,
        progress: Option<Progress>,
    ) -> Result<UploadOutcome, HostError> {
        let bytes: Vec<u8> = match src {
            UploadSource::Static { bytes, .. } => bytes.to_vec(),
            UploadSource::Bytes(b) => b.to_vec(),
            UploadSource::File { path, .. } => {
                tokio::fs::read(path).await.map_err(|e| HostError::Upload {
                    host: self.name.clone(),
                    path: target.path.clone(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?
            }
        };
        let sha = hex::encode(Sha256::digest(&bytes));
        let total = bytes.len() as u64;
        let mut s = self.state.lock().map_err(|_| HostError::Other {
            host: self.name.clone(),
            message: "fake: poisoned".into(),
        })?;
        s.calls.push(Call::Upload {
            path: target.path.clone(),
        });
        let same = s
            .files
            .get(&target.path)
            .map(|b| b == &bytes)
            .unwrap_or(false);
        s.uploads.push(RecordedUpload {
            target: target.clone(),
            bytes: bytes.clone(),
            sha256: sha,
            transferred: !same,
        });
        if same {
            return Ok(UploadOutcome::AlreadyPresent);
        }
        s.files.insert(target.path.clone(), bytes);
        drop(s);
        if let Some(p) = progress {
            p(total, total);
        }
        Ok(UploadOutcome::Uploaded { bytes: total })
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<Tunnel, HostError> {
        let echo = {
            let mut s = self.state.lock().map_err(|_| HostError::Other {
                host: self.name.clone(),
                message: "fake: poisoned".into(),
            })?;
            s.calls.push(Call::Tunnel {
                host: host.to_owned(),
                port,
            });
            s.tunnels_echo
        };
        if !echo {
            return Err(HostError::Forward {
                host: self.name.clone(),
                target: format!("{host}:{port}"),
                reason: "fake host: no tunnels configured".into(),
            });
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        Ok(Box::pin(ours))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RemoteExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn expectations_are_consumed_in_order_and_standing_ones_repeat() {
        let f = FakeRemote::new("n1")
            .expect("step", Reply::ok("first\n"))
            .expect("step", Reply::ok("second\n"))
            .on("step", Reply::ok("always\n"));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(
                f.exec(RemoteCommand::new("step"))
                    .await
                    .unwrap()
                    .stdout_str(),
            );
        }
        assert_eq!(got, ["first\n", "second\n", "always\n", "always\n"]);
        f.assert_done();
    }

    #[tokio::test]
    async fn unexpected_commands_fail_and_are_logged() {
        let f = FakeRemote::new("n1").expect("a", Reply::ok(""));
        let e = f.exec(RemoteCommand::new("rm -rf /")).await.unwrap_err();
        assert!(
            e.to_string().contains("unexpected command `rm -rf /`"),
            "{e}"
        );
        assert_eq!(f.scripts(), ["rm -rf /"]);
        assert_eq!(f.unmet().len(), 1);
    }

    #[tokio::test]
    async fn errors_secrets_files_and_uploads() {
        let f = FakeRemote::new("n1")
            .on_contains(
                "k3s",
                Reply::err(HostError::Disconnected {
                    host: "n1".into(),
                    during: "x".into(),
                }),
            )
            .on("sudo-thing", Reply::ok(""))
            .with_file("/etc/hostname", "n1\n");
        assert!(matches!(
            f.exec(RemoteCommand::new("systemctl start k3s")).await,
            Err(HostError::Disconnected { .. })
        ));
        let cmd = RemoteCommand::new("sudo-thing")
            .sudo()
            .stdin(Stdin::Secret(crate::secret::Secret::new("a-long-secret")));
        f.exec(cmd).await.unwrap();
        assert!(matches!(
            &f.calls()[1],
            Call::Exec { sudo: true, stdin: Some(s), .. } if s == b"***"
        ));
        assert_eq!(
            f.read_file("/etc/hostname", false).await.unwrap(),
            Some(b"n1\n".to_vec())
        );
        let target = UploadTarget::root("/etc/x.conf", 0o600);
        let src = UploadSource::Bytes(bytes::Bytes::from_static(b"abc"));
        assert_eq!(
            f.upload(&src, &target, None).await.unwrap(),
            UploadOutcome::Uploaded { bytes: 3 }
        );
        assert_eq!(
            f.upload(&src, &target, None).await.unwrap(),
            UploadOutcome::AlreadyPresent
        );
        let ups = f.uploads();
        assert_eq!(ups.len(), 2);
        assert!(ups[0].transferred && !ups[1].transferred);
        assert_eq!(f.file("/etc/x.conf"), Some(b"abc".to_vec()));
    }

    #[tokio::test]
    async fn echo_tunnels() {
        let f = FakeRemote::new("n1").with_echo_tunnels();
        let mut t = f.connect_tcp("127.0.0.1", 6443).await.unwrap();
        t.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(FakeRemote::new("x").connect_tcp("h", 1).await.is_err());
    }
}
