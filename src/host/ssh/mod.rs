//! The SSH implementation of [`Remote`], on russh (pure Rust: no `ssh` binary needed).
//!
//! One [`SshHost`] per host holds one connection, opened on first use (or by
//! [`SshHost::connect`]) and reused by every operation; russh multiplexes concurrent
//! commands, uploads and tunnels over it as separate channels. Keepalives detect a dead
//! peer; a dropped connection is reopened and *idempotent* operations are retried with
//! exponential backoff ([`RetryPolicy`]). A non-idempotent command whose connection drops
//! after it started is reported as [`HostError::Disconnected`], never repeated.
//!
//! See the submodules: [`spec`] (what to connect to), `session` (connect, host keys,
//! login), `exec` (commands, sudo, kill), `upload` (verified, atomic, resumable uploads).

pub mod spec;

mod exec;
mod session;
mod upload;

pub use spec::{
    AcceptedKeyStore, AuthMethod, ConnectionSpec, HostKeyDecision, HostKeyInfo, HostKeyPolicy,
    RetryPolicy, SshConfigSource, SshPrompt, SudoMode,
};

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::host::{
    CommandOutput, HostError, Progress, Remote, RemoteCommand, Stdin, Tunnel, UploadOutcome,
    UploadSource, UploadTarget,
};
use crate::report::{Level, Reporter};
use exec::{RunError, RunOpts, StdinSource, SudoUse};
use session::{Conn, Resolved};

/// A host reached over SSH. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct SshHost {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ConnectionSpec,
    reporter: Reporter,
    cancel: CancellationToken,
    resolved: Mutex<Option<Arc<Resolved>>>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Set once sudo rejected the password: it is not tried again (account lockout).
    sudo_rejected: AtomicBool,
    host_key: Mutex<Option<HostKeyInfo>>,
    accepted: Mutex<Option<HostKeyInfo>>,
    /// How long the last (re)connect took: TCP, handshake, host key, login.
    last_connect: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for SshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHost")
            .field("name", &self.inner.spec.name)
            .finish()
    }
}

impl SshHost {
    /// A host to be reached as `spec` says; nothing is opened yet. Output lines, warnings
    /// (accepted host keys, reconnects) go to `reporter`.
    pub fn new(spec: ConnectionSpec, reporter: Reporter) -> SshHost {
        SshHost::with_cancel(spec, reporter, CancellationToken::new())
    }

    /// Like [`SshHost::new`], stopping (and killing on the host) every running command
    /// when `cancel` fires (Ctrl-C).
    pub fn with_cancel(
        spec: ConnectionSpec,
        reporter: Reporter,
        cancel: CancellationToken,
    ) -> SshHost {
        SshHost {
            inner: Arc::new(Inner {
                spec,
                reporter,
                cancel,
                resolved: Mutex::new(None),
                conn: tokio::sync::Mutex::new(None),
                sudo_rejected: AtomicBool::new(false),
                host_key: Mutex::new(None),
                accepted: Mutex::new(None),
                last_connect: Mutex::new(None),
            }),
        }
    }

    /// The spec this host was made from.
    pub fn spec(&self) -> &ConnectionSpec {
        &self.inner.spec
    }

    /// Opens the connection now (verifying the host key and logging in) if it is not
    /// open yet. Every operation does this by itself; calling it first gives clear
    /// connect and login errors before any work starts.
    pub async fn connect(&self) -> Result<(), HostError> {
        self.conn().await.map(|_| ())
    }

    /// Closes the connection (it is reopened by the next operation).
    pub async fn disconnect(&self) {
        let conn = self.inner.conn.lock().await.take();
        if let Some(c) = conn {
            let _ = c
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    }

    /// The host key verified on the last connect.
    pub fn host_key(&self) -> Option<HostKeyInfo> {
        self.inner.host_key.lock().ok().and_then(|k| k.clone())
    }

    /// A host key that was *newly* accepted (policy `AcceptNew` or a person's yes), so the
    /// caller can pin it in the answer file.
    pub fn accepted_host_key(&self) -> Option<HostKeyInfo> {
        self.inner.accepted.lock().ok().and_then(|k| k.clone())
    }

    /// How long the last connect (TCP + handshake + host key + login) took.
    pub fn last_connect_time(&self) -> Option<Duration> {
        self.inner.last_connect.lock().ok().and_then(|d| *d)
    }

    /// The login user (after ssh_config), once resolved.
    pub fn login_user(&self) -> Result<String, HostError> {
        Ok(self.resolved()?.user.clone())
    }

    fn name(&self) -> &str {
        &self.inner.spec.name
    }

    fn resolved(&self) -> Result<Arc<Resolved>, HostError> {
        let mut g = self.inner.resolved.lock().map_err(|_| HostError::Other {
            host: self.name().to_owned(),
            message: "internal lock poisoned".into(),
        })?;
        if let Some(r) = g.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(session::resolve(&self.inner.spec)?);
        *g = Some(r.clone());
        Ok(r)
    }

    async fn conn(&self) -> Result<Arc<Conn>, HostError> {
        let mut g = self.inner.conn.lock().await;
        let reconnect = match g.as_ref() {
            Some(c) if !c.is_closed() => return Ok(c.clone()),
            Some(_) => true,
            None => false,
        };
        if self.inner.cancel.is_cancelled() {
            return Err(HostError::Cancelled {
                host: self.name().to_owned(),
            });
        }
        let resolved = self.resolved()?;
        let started = Instant::now();
        let conn = tokio::select! {
            c = session::connect(resolved, self.inner.reporter.clone()) => c?,
            _ = self.inner.cancel.cancelled() => {
                return Err(HostError::Cancelled { host: self.name().to_owned() });
            }
        };
        if let Ok(mut d) = self.inner.last_connect.lock() {
            *d = Some(started.elapsed());
        }
        if let Ok(mut k) = self.inner.host_key.lock() {
            *k = conn.host_key.clone();
        }
        if conn.accepted.is_some()
            && let Ok(mut a) = self.inner.accepted.lock()
        {
            *a = conn.accepted.clone();
        }
        if reconnect {
            self.inner
                .reporter
                .info(Some(self.name()), "SSH connection re-established");
        }
        let conn = Arc::new(conn);
        *g = Some(conn.clone());
        Ok(conn)
    }

    fn sudo_use(&self, wanted: bool) -> Result<SudoUse, HostError> {
        let user = self.resolved()?.user.clone();
        if !wanted || user == "root" {
            return Ok(SudoUse::No);
        }
        match &self.inner.spec.sudo {
            SudoMode::None => Err(HostError::SudoNotAllowed {
                host: self.name().to_owned(),
                user,
                detail: "sudo is turned off for this host and the login user is not root".into(),
            }),
            SudoMode::Passwordless => Ok(SudoUse::Passwordless),
            SudoMode::Password(pw) => {
                if self.inner.sudo_rejected.load(Ordering::SeqCst) {
                    return Err(HostError::SudoWrongPassword {
                        host: self.name().to_owned(),
                        user,
                    });
                }
                Ok(SudoUse::Password(pw.clone()))
            }
        }
    }

    fn opts(
        &self,
        sudo: SudoUse,
        timeout: Option<Duration>,
        label: String,
        emit: bool,
    ) -> Result<RunOpts, HostError> {
        Ok(RunOpts {
            host: self.name().to_owned(),
            user: self.resolved()?.user.clone(),
            sudo,
            timeout,
            cancel: self.inner.cancel.clone(),
            reporter: self.inner.reporter.clone(),
            emit_output: emit,
            label,
        })
    }

    fn note_error(&self, e: &HostError) {
        if matches!(e, HostError::SudoWrongPassword { .. }) {
            self.inner.sudo_rejected.store(true, Ordering::SeqCst);
        }
    }

    /// Waits before retry number `attempt` (1-based), unless cancelled.
    async fn backoff(&self, attempt: u32) -> Result<(), HostError> {
        let base = self.inner.spec.retry.backoff;
        let delay = base.saturating_mul(1u32 << (attempt - 1).min(6));
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.inner.cancel.cancelled() => Err(HostError::Cancelled { host: self.name().to_owned() }),
        }
    }

    /// After a reconnect, stops what an interrupted attempt left running.
    async fn clean_up(&self, conn: &Arc<Conn>, pid: Option<u32>, opts: &RunOpts) {
        if let Some(pid) = pid {
            let _ = exec::kill_session(
                conn,
                pid,
                opts.host.clone(),
                opts.user.clone(),
                opts.sudo.clone(),
                Reporter::silent(),
            )
            .await;
        }
    }

    /// Gets a connection, retrying transient connect failures when `retry` allows.
    async fn conn_retrying(&self, attempt: &mut u32) -> Result<Arc<Conn>, HostError> {
        loop {
            match self.conn().await {
                Ok(c) => return Ok(c),
                Err(e) if e.is_transient() && *attempt < self.inner.spec.retry.attempts => {
                    *attempt += 1;
                    self.backoff(*attempt).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Remote for SshHost {
    fn name(&self) -> &str {
        &self.inner.spec.name
    }

    async fn exec(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError> {
        let sudo = self.sudo_use(cmd.sudo)?;
        let opts = self.opts(
            sudo,
            Some(cmd.timeout),
            cmd.script.clone(),
            !cmd.quiet_output,
        )?;
        self.inner.reporter.message(
            Level::Debug,
            Some(self.name()),
            format!("{} {}", if cmd.sudo { "sudo$" } else { "$" }, cmd.script),
        );
        let mut attempt = 0u32;
        let mut leftover: Option<u32> = None;
        loop {
            let conn = self.conn_retrying(&mut attempt).await?;
            if leftover.is_some() {
                self.clean_up(&conn, leftover.take(), &opts).await;
            }
            let stdin = match &cmd.stdin {
                None => StdinSource::None,
                Some(Stdin::Bytes(b)) => StdinSource::Bytes(bytes::Bytes::from(b.clone())),
                Some(Stdin::Secret(s)) => StdinSource::Secret(s.clone()),
            };
            match exec::run(&conn, &cmd.script, stdin, &opts).await {
                Ok(out) => return Ok(out),
                Err(RunError::Host(e)) => {
                    self.note_error(&e);
                    return Err(e);
                }
                Err(RunError::Dropped { started, pid }) => {
                    let may_retry = cmd.idempotent || !started;
                    if !may_retry || attempt >= self.inner.spec.retry.attempts {
                        return Err(HostError::Disconnected {
                            host: self.name().to_owned(),
                            during: format!("`{}`", cmd.script),
                        });
                    }
                    attempt += 1;
                    leftover = pid;
                    self.inner.reporter.warn(
                        Some(self.name()),
                        format!(
                            "SSH connection lost; retrying `{}` (attempt {attempt})",
                            cmd.script
                        ),
                    );
                    self.backoff(attempt).await?;
                }
            }
        }
    }

    async fn upload(
        &self,
        src: &UploadSource,
        target: &UploadTarget,
        progress: Option<Progress>,
    ) -> Result<UploadOutcome, HostError> {
        let sudo = self.sudo_use(target.sudo)?;
        let prep = upload::prepare(src, self.name(), &target.path).await?;
        // No timeout for the whole transfer (it depends on the file and the link); a dead
        // link is caught by keepalives, a person by Ctrl-C.
        let opts = self.opts(sudo, None, format!("upload {}", target.path), false)?;
        self.inner.reporter.message(
            Level::Debug,
            Some(self.name()),
            format!(
                "upload {} bytes (sha256 {}) to {}",
                prep.total,
                prep.sha256.as_deref().unwrap_or("computed while sending"),
                target.path
            ),
        );
        let mut attempt = 0u32;
        let mut restarted = false;
        let mut leftover: Option<u32> = None;
        loop {
            let conn = self.conn_retrying(&mut attempt).await?;
            if leftover.is_some() {
                self.clean_up(&conn, leftover.take(), &opts).await;
            }
            match upload::attempt(&conn, &opts, src, target, &prep, progress.clone()).await {
                Ok(upload::Attempt::Done(o)) => return Ok(o),
                Ok(upload::Attempt::Mismatch { offset, got }) => {
                    if offset > 0 && !restarted {
                        // The part file left by an earlier attempt was not a prefix of
                        // this content after all: it is gone now; start from zero.
                        restarted = true;
                        continue;
                    }
                    return Err(HostError::Upload {
                        host: self.name().to_owned(),
                        path: target.path.clone(),
                        reason: format!(
                            "the SHA-256 of the file on the host ({got}) is not the source's (did the source change during the upload?); the partial file was removed"
                        ),
                    });
                }
                Err(RunError::Host(e)) => {
                    self.note_error(&e);
                    return Err(e);
                }
                Err(RunError::Dropped { pid, .. }) => {
                    // Uploads are idempotent by construction (temporary file, verified,
                    // renamed): retry, resuming where the host's part file ends.
                    if attempt >= self.inner.spec.retry.attempts {
                        return Err(HostError::Disconnected {
                            host: self.name().to_owned(),
                            during: format!("the upload to {}", target.path),
                        });
                    }
                    attempt += 1;
                    leftover = pid;
                    self.inner.reporter.warn(
                        Some(self.name()),
                        format!(
                            "SSH connection lost during the upload to {}; resuming (attempt {attempt})",
                            target.path
                        ),
                    );
                    self.backoff(attempt).await?;
                }
            }
        }
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<Tunnel, HostError> {
        let mut attempt = 0u32;
        loop {
            let conn = self.conn_retrying(&mut attempt).await?;
            match conn
                .handle
                .channel_open_direct_tcpip(host.to_owned(), u32::from(port), "127.0.0.1", 0)
                .await
            {
                Ok(ch) => return Ok(Box::pin(ch.into_stream())),
                Err(_) if conn.is_closed() && attempt < self.inner.spec.retry.attempts => {
                    attempt += 1;
                    self.backoff(attempt).await?;
                }
                Err(e) => {
                    let reason = match &e {
                        russh::Error::ChannelOpenFailure(f) => format!(
                            "the host refused ({f:?}): nothing listens there, or sshd has AllowTcpForwarding off"
                        ),
                        other => other.to_string(),
                    };
                    return Err(HostError::Forward {
                        host: self.name().to_owned(),
                        target: format!("{host}:{port}"),
                        reason,
                    });
                }
            }
        }
    }

    async fn exec_to(
        &self,
        cmd: RemoteCommand,
        sink: &mut (dyn std::io::Write + Send),
    ) -> Result<CommandOutput, HostError> {
        let sudo = self.sudo_use(cmd.sudo)?;
        let opts = self.opts(sudo, Some(cmd.timeout), cmd.script.clone(), false)?;
        self.inner.reporter.message(
            Level::Debug,
            Some(self.name()),
            format!(
                "{} {} (output streamed to the workstation)",
                if cmd.sudo { "sudo$" } else { "$" },
                cmd.script
            ),
        );
        let mut attempt = 0u32;
        let conn = self.conn_retrying(&mut attempt).await?;
        match exec::run_to(&conn, &cmd.script, &opts, sink).await {
            Ok(out) => Ok(out),
            Err(RunError::Host(e)) => {
                self.note_error(&e);
                Err(e)
            }
            Err(RunError::Dropped { .. }) => Err(HostError::Disconnected {
                host: self.name().to_owned(),
                during: format!("`{}`", cmd.script),
            }),
        }
    }
}
