//! Hosts: the [`Remote`] trait every phase talks to, its SSH implementation, and the facts
//! gathered from a host.
//!
//! A phase never runs a shell command any other way than through [`Remote::exec`], and never
//! writes a file any other way than through [`Remote::upload`]; that is what lets `--dry-run`
//! print every change and the tests substitute a scripted fake.

use async_trait::async_trait;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::secret::Secret;

pub mod error;
pub mod facts;
pub mod fake;
pub mod fanout;
pub mod known_hosts;
pub mod ssh;
pub mod ssh_config;
pub use error::{AuthAttempt, HostError};

/// A shell command to run on a host.
///
/// `script` is passed to `sh -c` on the host. It must never contain a secret: secrets
/// travel on `stdin`, which is never logged and never appears in a process list.
#[derive(Debug, Clone)]
pub struct RemoteCommand {
    pub script: String,
    /// Run as root (through sudo when the login user is not root).
    pub sudo: bool,
    /// Bytes fed to the command's standard input, then EOF.
    pub stdin: Option<Stdin>,
    /// Give up (and kill the command on the host) after this long.
    pub timeout: Duration,
    /// Safe to run again if the connection drops mid-way. Non-idempotent commands that
    /// lose their connection are reported as [`HostError::Disconnected`], never retried.
    pub idempotent: bool,
    /// The output may hold a secret (a token file, a kubeconfig): it is returned to the
    /// caller but never streamed to events or the log.
    pub quiet_output: bool,
}

/// Standard input for a remote command.
#[derive(Debug, Clone)]
pub enum Stdin {
    Bytes(Vec<u8>),
    /// A secret, fed on stdin and never logged.
    Secret(Secret),
}

impl RemoteCommand {
    /// A read-only (idempotent) command run as the login user, with a 60 s timeout.
    pub fn new(script: impl Into<String>) -> Self {
        RemoteCommand {
            script: script.into(),
            sudo: false,
            stdin: None,
            timeout: Duration::from_secs(60),
            idempotent: true,
            quiet_output: false,
        }
    }

    pub fn sudo(mut self) -> Self {
        self.sudo = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn stdin(mut self, stdin: Stdin) -> Self {
        self.stdin = Some(stdin);
        self
    }

    /// Keeps the output out of events and the log (it may hold a secret).
    pub fn quiet_output(mut self) -> Self {
        self.quiet_output = true;
        self
    }

    /// Marks the command as one that must not be repeated blindly after a dropped connection.
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
}

/// What a remote command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status; `None` when the command died from a signal.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Where the bytes of an upload come from. `Debug` shows sizes, never content.
#[derive(Clone)]
pub enum UploadSource {
    /// Bytes embedded in the installer binary (`include_bytes!`): streamed, never copied.
    Static {
        bytes: &'static [u8],
        /// The SHA-256 (lower-case hex) recorded at build time, if known.
        sha256: Option<String>,
    },
    /// A file on the workstation: streamed from disk.
    File {
        path: PathBuf,
        /// The SHA-256 if already known (for example verified against the asset lock).
        sha256: Option<String>,
    },
    /// Small generated content (configuration files, units).
    Bytes(bytes::Bytes),
}

impl std::fmt::Debug for UploadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadSource::Static { bytes, sha256 } => {
                write!(f, "Static({} bytes, sha256 {:?})", bytes.len(), sha256)
            }
            UploadSource::File { path, sha256 } => {
                write!(f, "File({}, sha256 {:?})", path.display(), sha256)
            }
            UploadSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

impl UploadSource {
    /// The length in bytes, when it is known without I/O.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            UploadSource::Static { bytes, .. } => Some(bytes.len() as u64),
            UploadSource::File { .. } => None,
            UploadSource::Bytes(b) => Some(b.len() as u64),
        }
    }
}

/// Where and how an upload lands on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// Absolute path of the final file.
    pub path: String,
    /// File mode, for example `0o644`.
    pub mode: u32,
    /// `user:group` to chown to, if any (requires sudo unless it is the login user).
    pub owner: Option<String>,
    /// Write as root (through sudo when the login user is not root).
    pub sudo: bool,
}

impl UploadTarget {
    /// A root-owned file written through sudo.
    pub fn root(path: impl Into<String>, mode: u32) -> Self {
        UploadTarget {
            path: path.into(),
            mode,
            owner: Some("root:root".into()),
            sudo: true,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The bytes were sent and verified on the host.
    Uploaded { bytes: u64 },
    /// The destination already had the same SHA-256; nothing was sent (mode and owner
    /// were still made right).
    AlreadyPresent,
}

/// Byte progress callback: `(done, total)`.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A bidirectional byte stream (a TCP connection forwarded through SSH).
pub trait TunnelStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelStream for T {}
pub type Tunnel = Pin<Box<dyn TunnelStream>>;

/// A host the installer can act on.
#[async_trait]
pub trait Remote: Send + Sync {
    /// The host's display name (the address as the answer file names it).
    fn name(&self) -> &str;

    /// Runs a command; output lines are also streamed to the reporter and the log.
    /// A non-zero exit is *not* an error here: see [`RemoteExt::run`].
    async fn exec(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError>;

    /// Streams `src` to a temporary name beside `target.path`, fsyncs, verifies its
    /// SHA-256 on the host, sets mode and owner and renames it into place. Skips the
    /// transfer when the destination already has the same checksum.
    async fn upload(
        &self,
        src: &UploadSource,
        target: &UploadTarget,
        progress: Option<Progress>,
    ) -> Result<UploadOutcome, HostError>;

    /// Opens a TCP connection from the host to `host:port` (SSH direct-tcpip).
    async fn connect_tcp(&self, host: &str, port: u16) -> Result<Tunnel, HostError>;

    /// Runs a command whose standard output is written to `sink` as it arrives (a file read
    /// back from the host, streamed to the workstation): never kept in memory, never in
    /// events or the log. The returned output's stdout is empty. Not retried after a dropped
    /// connection (the sink already holds part of the output). This default, for hosts that
    /// are not streams (the scripted fake), runs [`Remote::exec`] quietly and writes its
    /// output at once.
    async fn exec_to(
        &self,
        cmd: RemoteCommand,
        sink: &mut (dyn std::io::Write + Send),
    ) -> Result<CommandOutput, HostError> {
        let mut out = self.exec(cmd.quiet_output()).await?;
        sink.write_all(&out.stdout).map_err(|e| HostError::Other {
            host: self.name().to_owned(),
            message: format!("writing a command's output on the workstation failed: {e}"),
        })?;
        out.stdout.clear();
        Ok(out)
    }
}

/// Conveniences built on [`Remote`], available for every implementation.
#[async_trait]
pub trait RemoteExt: Remote {
    /// Runs a command and fails with [`HostError::CommandFailed`] on a non-zero exit.
    async fn run(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError> {
        let script = cmd.script.clone();
        let out = self.exec(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(HostError::CommandFailed {
                host: self.name().to_owned(),
                command: script,
                status: out.status,
                stderr: tail(&out.stderr_str(), 20),
            })
        }
    }

    /// Reads a file, or `None` if it does not exist.
    async fn read_file(&self, path: &str, sudo: bool) -> Result<Option<Vec<u8>>, HostError> {
        // Files read back are tokens, kubeconfigs, certificates: never stream them.
        let mut cmd = RemoteCommand::new(read_file_script(path)).quiet_output();
        cmd.sudo = sudo;
        let out = self.exec(cmd).await?;
        match out.status {
            Some(0) => Ok(Some(out.stdout)),
            Some(3) => Ok(None),
            status => Err(HostError::CommandFailed {
                host: self.name().to_owned(),
                command: format!("cat {path}"),
                status,
                stderr: tail(&out.stderr_str(), 20),
            }),
        }
    }
}

impl<T: Remote + ?Sized> RemoteExt for T {}

/// A shared host is a host: lets `Arc<dyn Remote>` (and `Arc<SshHost>`) go wherever a
/// `Remote` is expected, for example [`fanout::fan_out`].
#[async_trait]
impl<T: Remote + ?Sized> Remote for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn exec(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError> {
        (**self).exec(cmd).await
    }

    async fn upload(
        &self,
        src: &UploadSource,
        target: &UploadTarget,
        progress: Option<Progress>,
    ) -> Result<UploadOutcome, HostError> {
        (**self).upload(src, target, progress).await
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<Tunnel, HostError> {
        (**self).connect_tcp(host, port).await
    }

    async fn exec_to(
        &self,
        cmd: RemoteCommand,
        sink: &mut (dyn std::io::Write + Send),
    ) -> Result<CommandOutput, HostError> {
        (**self).exec_to(cmd, sink).await
    }
}

/// The script [`RemoteExt::read_file`] runs (exit 3: no such file).
pub fn read_file_script(path: &str) -> String {
    let quoted = shell_quote(path);
    format!("if [ -e {quoted} ]; then cat {quoted}; else exit 3; fi")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Quotes `s` for a POSIX shell (single quotes, with embedded quotes escaped).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/etc/rancher/k3s"), "/etc/rancher/k3s");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn upload_source_debug_never_shows_content() {
        let src = UploadSource::Bytes(bytes::Bytes::from_static(b"secret-token-content"));
        assert_eq!(format!("{src:?}"), "Bytes(20 bytes)");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
