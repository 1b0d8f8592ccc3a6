//! Running one command on an SSH session channel: the wrapper that makes it killable,
//! the sudo handshake, streaming output, timeouts and cancellation.
//!
//! ## The wrapper
//! The command line sent to sshd is
//! `exec /bin/sh -c '<wrapper>' installer-session '<script>'`. sshd starts every
//! non-pty session in a new session (`setsid()` in `session.c`, `do_exec_no_pty`), so the
//! wrapper's PID is also the session id of everything the script starts. The wrapper
//! first prints `@@installer-pid <pid>` on stderr; to stop a command (timeout, Ctrl-C, a
//! dropped future) a second channel runs `pkill -s <pid>` (through sudo when the command
//! ran as root), which ends the whole tree. Closing the channel alone would not: without a
//! pty, sshd does not signal the command.
//!
//! ## sudo
//! - passwordless: `sudo -n`, which fails at once ("a password is required") instead of
//!   waiting for a password;
//! - with a password: `sudo -S -p '<marker prompt>'`. The password is written to the
//!   channel's stdin only after that exact prompt arrives on stderr, so it never reaches
//!   the command (with cached credentials sudo asks nothing, and nothing is written). A
//!   second prompt means the password was wrong: the channel is closed at once (sudo sees
//!   EOF and gives up) and [`HostError::SudoWrongPassword`] is reported; the host
//!   remembers it and does not try that password again.
//!
//! In both modes the root shell prints `@@installer-run` on stderr before the script
//! starts; stderr before that marker belongs to sudo (and is classified into
//! `SudoPasswordRequired`, `SudoNotAllowed`, ...), stderr after it to the script. The
//! command's own stdin (uploads) is sent only once sudo is done reading the password.

use bytes::Bytes;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use russh::ChannelMsg;

use super::session::Conn;
use crate::host::{CommandOutput, HostError, shell_quote};
use crate::report::{Event, Reporter, StreamKind};
use crate::secret::Secret;

const PID_MARK: &str = "@@installer-pid";
const RUN_MARK: &str = "@@installer-run";
const SUDO_PROMPT: &str = "@@installer-sudo-prompt@@";
/// Debian and others leave the sbin directories out of a non-root user's PATH; the tools
/// the installer needs (`ip`, `sysctl`, `nft`) live there (field lesson 6).
const PATH_EXTRA: &str = ":/usr/local/sbin:/usr/sbin:/sbin";
/// Lines longer than this are cut in output events (the full output is still returned).
const MAX_EVENT_LINE: usize = 2000;

/// How a command becomes root.
#[derive(Clone)]
pub(crate) enum SudoUse {
    No,
    Passwordless,
    Password(Secret),
}

impl SudoUse {
    pub fn is_sudo(&self) -> bool {
        !matches!(self, SudoUse::No)
    }
}

/// A stream of owned chunks for a command's stdin.
pub(crate) type ChunkStream =
    Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// Called with the number of bytes handed to the channel so far.
pub(crate) type SentCallback = Box<dyn FnMut(u64) + Send + 'static>;

/// One step of a stdin dialogue with the command (see [`StdinSource::Dialogue`]).
pub(crate) enum Reply {
    /// Not a line for us: keep listening.
    Ignore,
    /// Send this, and keep listening for the next line.
    More(ChunkStream),
    /// Send this (reporting progress), then EOF: the dialogue is over.
    Last(ChunkStream, Option<SentCallback>),
}

/// Answers the command's `@@` lines on stdout, one at a time.
pub(crate) type Dialogue = Box<dyn FnMut(&str) -> Reply + Send + 'static>;

/// What to feed the command's stdin.
pub(crate) enum StdinSource {
    None,
    Bytes(Bytes),
    Secret(Secret),
    /// The command leads: each stdout line starting with `@@` is passed to the closure,
    /// which says what to write to stdin, until it gives the last part (then EOF). Used by
    /// uploads, whose remote side asks whether to skip and from which offset to send.
    Dialogue(Dialogue),
}

/// Per-run settings.
pub(crate) struct RunOpts {
    pub host: String,
    pub user: String,
    pub sudo: SudoUse,
    pub timeout: Option<Duration>,
    pub cancel: CancellationToken,
    pub reporter: Reporter,
    /// Emit output lines as [`Event::HostOutput`].
    pub emit_output: bool,
    /// What to call the command in errors.
    pub label: String,
}

/// Why a run did not produce an output.
#[derive(Debug)]
pub(crate) enum RunError {
    Host(HostError),
    /// The connection went away. `started` is false when the command certainly never
    /// ran (so even a non-idempotent command may be retried); `pid` is its session, if
    /// known, for cleaning up after reconnecting.
    Dropped {
        started: bool,
        pid: Option<u32>,
    },
}

impl From<HostError> for RunError {
    fn from(e: HostError) -> Self {
        RunError::Host(e)
    }
}

/// The command line sent in the SSH `exec` request.
pub(crate) fn command_line(script: &str, sudo: &SudoUse) -> String {
    let env = format!("export LC_ALL=C PATH=\"$PATH{PATH_EXTRA}\"");
    let pid = format!("printf '%s %s\\n' {PID_MARK} \"$$\" >&2");
    let run = format!("printf '%s\\n' {RUN_MARK} >&2");
    // `rc=$?; exit $rc` keeps the wrapper alive (and its command line, with the marker,
    // visible in /proc) while the script runs: shells may otherwise exec the last command.
    let wrapper = match sudo {
        SudoUse::No => format!("{pid}; {env}; {run}; /bin/sh -c \"$1\"; rc=$?; exit $rc"),
        SudoUse::Passwordless | SudoUse::Password(_) => {
            let inner = format!("{run}; {env}; exec /bin/sh -c \"$1\"");
            let how = match sudo {
                SudoUse::Password(_) => format!("-S -p {}", shell_quote(SUDO_PROMPT)),
                _ => "-n".to_owned(),
            };
            format!(
                "{pid}; LC_ALL=C sudo {how} -- /bin/sh -c {} installer \"$1\"; rc=$?; exit $rc",
                shell_quote(&inner)
            )
        }
    };
    format!(
        "exec /bin/sh -c {} installer-session {}",
        shell_quote(&wrapper),
        shell_quote(script)
    )
}

/// The shell script that stops the session of a command started by [`command_line`].
pub(crate) fn kill_script(pid: u32) -> String {
    // Only touch the session if its leader is still our wrapper (the PID may have been
    // reused after a reconnect); then TERM, wait up to 3 s, KILL.
    format!(
        "P={pid}; grep -q {PID_MARK} /proc/$P/cmdline 2>/dev/null || exit 0; \
         alive() {{ pgrep -s $P >/dev/null 2>&1 || kill -0 -- -$P 2>/dev/null; }}; \
         pkill -TERM -s $P 2>/dev/null || kill -TERM -- -$P 2>/dev/null; \
         i=0; while alive && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; \
         pkill -KILL -s $P 2>/dev/null; kill -KILL -- -$P 2>/dev/null; exit 0"
    )
}

enum WriterCmd {
    Password(Secret),
    /// Send, and keep stdin open.
    Part(StdinData),
    /// Send, then EOF.
    Data(StdinData),
    Close,
}

enum StdinData {
    None,
    Bytes(Bytes),
    Stream(ChunkStream, Option<SentCallback>),
}

async fn writer(
    tx: russh::ChannelWriteHalf<russh::client::Msg>,
    mut cmds: mpsc::UnboundedReceiver<WriterCmd>,
) -> Result<(), String> {
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            WriterCmd::Password(pw) => {
                let mut line = pw.expose().as_bytes().to_vec();
                line.push(b'\n');
                tx.data_bytes(Bytes::from(line))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            WriterCmd::Part(data) => send(&tx, data).await?,
            WriterCmd::Data(data) => {
                send(&tx, data).await?;
                tx.eof().await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            WriterCmd::Close => {
                let _ = tx.close().await;
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn send(
    tx: &russh::ChannelWriteHalf<russh::client::Msg>,
    data: StdinData,
) -> Result<(), String> {
    match data {
        StdinData::None => {}
        StdinData::Bytes(b) => tx.data_bytes(b).await.map_err(|e| e.to_string())?,
        StdinData::Stream(mut s, mut sent) => {
            let mut total = 0u64;
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| format!("reading the source: {e}"))?;
                total += chunk.len() as u64;
                tx.data_bytes(chunk).await.map_err(|e| e.to_string())?;
                if let Some(cb) = sent.as_mut() {
                    cb(total);
                }
            }
        }
    }
    Ok(())
}

/// Splits a byte stream into lines for output events.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..pos]);
            emit_line(&self.partial, &mut emit);
            self.partial.clear();
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > 64 * 1024 {
            emit_line(&self.partial, &mut emit);
            self.partial.clear();
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            emit_line(&self.partial, &mut emit);
            self.partial.clear();
        }
    }
}

fn emit_line(raw: &[u8], emit: &mut impl FnMut(&str)) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = String::from_utf8_lossy(raw);
    if text.len() > MAX_EVENT_LINE {
        let mut cut = MAX_EVENT_LINE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        emit(&format!("{}...", &text[..cut]));
    } else {
        emit(&text);
    }
}

/// Where the stderr parser stands.
#[derive(PartialEq, Eq)]
enum Phase {
    /// Before the run marker: stderr belongs to the wrapper and sudo.
    Pre,
    Running,
}

/// Disarms on success; otherwise kills the remote session when dropped (a caller that
/// dropped the future, for example on Ctrl-C).
struct KillOnDrop {
    conn: Arc<Conn>,
    opts: Option<(String, String, SudoUse, Reporter)>,
    pid: Option<u32>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let (Some(pid), Some((host, user, sudo, reporter))) = (self.pid, self.opts.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let conn = self.conn.clone();
            rt.spawn(async move {
                let _ = kill_session(&conn, pid, host, user, sudo, reporter).await;
            });
        }
    }
}

/// Stops the session `pid` started by an earlier run.
pub(crate) async fn kill_session(
    conn: &Arc<Conn>,
    pid: u32,
    host: String,
    user: String,
    sudo: SudoUse,
    reporter: Reporter,
) -> Result<(), RunError> {
    let opts = RunOpts {
        host,
        user,
        sudo,
        timeout: Some(Duration::from_secs(20)),
        cancel: CancellationToken::new(),
        reporter,
        emit_output: false,
        label: format!("stop the command (session {pid})"),
    };
    Box::pin(run_inner(
        conn,
        &kill_script(pid),
        StdinSource::None,
        &opts,
        false,
        None,
    ))
    .await
    .map(|_| ())
}

/// Runs `script` on `conn`.
pub(crate) async fn run(
    conn: &Arc<Conn>,
    script: &str,
    stdin: StdinSource,
    opts: &RunOpts,
) -> Result<CommandOutput, RunError> {
    run_inner(conn, script, stdin, opts, true, None).await
}

/// Runs `script` on `conn`, writing its standard output to `sink` as it arrives instead of
/// keeping it (the returned output's stdout is empty; nothing of it reaches events or the
/// log). A write error stops the command on the host.
pub(crate) async fn run_to(
    conn: &Arc<Conn>,
    script: &str,
    opts: &RunOpts,
    sink: &mut (dyn std::io::Write + Send),
) -> Result<CommandOutput, RunError> {
    run_inner(conn, script, StdinSource::None, opts, true, Some(sink)).await
}

async fn run_inner(
    conn: &Arc<Conn>,
    script: &str,
    stdin: StdinSource,
    opts: &RunOpts,
    killable: bool,
    mut sink: Option<&mut (dyn std::io::Write + Send)>,
) -> Result<CommandOutput, RunError> {
    let host = opts.host.clone();
    let not_started = |e: russh::Error| {
        if conn.is_closed() {
            RunError::Dropped {
                started: false,
                pid: None,
            }
        } else {
            RunError::Host(HostError::Other {
                host: host.clone(),
                message: format!("cannot open an SSH session channel: {e}"),
            })
        }
    };
    let channel = conn
        .handle
        .channel_open_session()
        .await
        .map_err(not_started)?;
    channel
        .exec(true, command_line(script, &opts.sudo))
        .await
        .map_err(not_started)?;
    let (mut rx, tx) = channel.split();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer(tx, cmd_rx));

    let password = match &opts.sudo {
        SudoUse::Password(p) => Some(p.clone()),
        _ => None,
    };
    // What stdin gets, and when.
    let mut dialogue: Option<Dialogue> = None;
    let mut pending: Option<StdinData> = None;
    match stdin {
        StdinSource::None => pending = Some(StdinData::None),
        StdinSource::Bytes(b) => pending = Some(StdinData::Bytes(b)),
        StdinSource::Secret(s) => {
            let mut v = s.expose().as_bytes().to_vec();
            v.push(b'\n');
            pending = Some(StdinData::Bytes(Bytes::from(v)));
        }
        StdinSource::Dialogue(f) => dialogue = Some(f),
    }
    // Without a sudo password nothing else reads stdin: send it right away.
    if password.is_none()
        && let Some(d) = pending.take()
    {
        let _ = cmd_tx.send(WriterCmd::Data(d));
    }

    let mut guard = KillOnDrop {
        conn: conn.clone(),
        opts: killable.then(|| {
            (
                opts.host.clone(),
                opts.user.clone(),
                opts.sudo.clone(),
                opts.reporter.clone(),
            )
        }),
        pid: None,
    };

    let mut phase = Phase::Pre;
    let mut pre = String::new();
    let mut sudo_lines: Vec<String> = Vec::new();
    let mut prompts = 0usize;
    let mut out = CommandOutput::default();
    let mut got_exit = false;
    let mut signal: Option<String> = None;
    let mut out_lines = Lines::default();
    let mut err_lines = Lines::default();
    let mut gate_buf: Vec<u8> = Vec::new();
    let emit = |stream: StreamKind, line: &str| {
        if opts.emit_output {
            opts.reporter.emit(Event::HostOutput {
                host: opts.host.clone(),
                stream,
                line: line.to_owned(),
            });
        }
    };

    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    enum Stop {
        Timeout,
        Cancelled,
        WrongPassword,
        /// Writing the output to the sink failed.
        Sink(std::io::Error),
    }
    let mut stop: Option<Stop> = None;

    loop {
        let msg = tokio::select! {
            m = rx.wait() => m,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            } => { stop = Some(Stop::Timeout); break; }
            _ = opts.cancel.cancelled() => { stop = Some(Stop::Cancelled); break; }
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } => {
                // Before the run mark, stdout is kept for the diagnosis of a refused login.
                if phase == Phase::Running
                    && let Some(s) = sink.as_mut()
                {
                    if let Err(e) = s.write_all(&data) {
                        stop = Some(Stop::Sink(e));
                        break;
                    }
                    continue;
                }
                out.stdout.extend_from_slice(&data);
                out_lines.push(&data, |l| emit(StreamKind::Stdout, l));
                if dialogue.is_some() {
                    gate_buf.extend_from_slice(&data);
                    while let Some(pos) = gate_buf.iter().position(|&b| b == b'\n') {
                        let line = String::from_utf8_lossy(&gate_buf[..pos]).into_owned();
                        gate_buf.drain(..=pos);
                        if !line.starts_with("@@") {
                            continue;
                        }
                        let Some(f) = dialogue.as_mut() else { break };
                        match f(&line) {
                            Reply::Ignore => {}
                            Reply::More(s) => {
                                let _ = cmd_tx.send(WriterCmd::Part(StdinData::Stream(s, None)));
                            }
                            Reply::Last(s, cb) => {
                                let _ = cmd_tx.send(WriterCmd::Data(StdinData::Stream(s, cb)));
                                dialogue = None;
                                break;
                            }
                        }
                    }
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                if phase == Phase::Running {
                    out.stderr.extend_from_slice(&data);
                    err_lines.push(&data, |l| emit(StreamKind::Stderr, l));
                    continue;
                }
                pre.push_str(&String::from_utf8_lossy(&data));
                loop {
                    if let Some(idx) = pre.find(SUDO_PROMPT) {
                        let before: String = pre[..idx].to_owned();
                        pre = pre[idx + SUDO_PROMPT.len()..].to_owned();
                        for l in before.lines() {
                            pre_line(l, &mut guard.pid, &mut sudo_lines);
                        }
                        prompts += 1;
                        match (&password, prompts) {
                            (Some(pw), 1) => {
                                let _ = cmd_tx.send(WriterCmd::Password(pw.clone()));
                            }
                            _ => {
                                stop = Some(Stop::WrongPassword);
                                break;
                            }
                        }
                        continue;
                    }
                    let Some(nl) = pre.find('\n') else { break };
                    let line: String = pre[..nl].to_owned();
                    pre = pre[nl + 1..].to_owned();
                    if line.trim_end() == RUN_MARK {
                        phase = Phase::Running;
                        // Output that overtook the mark (stdout and stderr are separate
                        // channels) is the script's: it goes to the sink first.
                        if let Some(s) = sink.as_mut()
                            && !out.stdout.is_empty()
                            && let Err(e) = s.write_all(&std::mem::take(&mut out.stdout))
                        {
                            stop = Some(Stop::Sink(e));
                            break;
                        }
                        if let Some(d) = pending.take() {
                            let _ = cmd_tx.send(WriterCmd::Data(d));
                        }
                        let rest = std::mem::take(&mut pre);
                        if !rest.is_empty() {
                            out.stderr.extend_from_slice(rest.as_bytes());
                            err_lines.push(rest.as_bytes(), |l| emit(StreamKind::Stderr, l));
                        }
                        break;
                    }
                    pre_line(&line, &mut guard.pid, &mut sudo_lines);
                    if password.is_some()
                        && (line.contains("Sorry, try again")
                            || line.contains("incorrect password"))
                    {
                        stop = Some(Stop::WrongPassword);
                        break;
                    }
                }
                if stop.is_some() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, .. } => {
                out.stderr.extend_from_slice(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => {
                got_exit = true;
                out.status = Some(exit_status);
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                got_exit = true;
                signal = Some(format!("{signal_name:?}"));
            }
            ChannelMsg::Failure => {
                guard.pid = None;
                writer_task.abort();
                return Err(RunError::Host(HostError::Other {
                    host: opts.host.clone(),
                    message: "the SSH server refused to run a command (is the account restricted to a forced command or SFTP only?)".into(),
                }));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    out_lines.finish(|l| emit(StreamKind::Stdout, l));
    err_lines.finish(|l| emit(StreamKind::Stderr, l));

    if let Some(stop) = stop {
        let _ = cmd_tx.send(WriterCmd::Close);
        if let Stop::WrongPassword = stop {
            // sudo reads EOF and gives up; nothing of the script ran.
            guard.pid = None;
            return Err(RunError::Host(HostError::SudoWrongPassword {
                host: opts.host.clone(),
                user: opts.user.clone(),
            }));
        }
        // Learn the PID if the wrapper has not said it yet (a very early stop).
        if guard.pid.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while guard.pid.is_none() {
                    match rx.wait().await {
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            pre.push_str(&String::from_utf8_lossy(&data));
                            for l in pre.lines() {
                                pre_line(l, &mut guard.pid, &mut sudo_lines);
                            }
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            })
            .await;
        }
        if let Some(pid) = guard.pid.take() {
            writer_task.abort();
            let kill = kill_session(
                conn,
                pid,
                opts.host.clone(),
                opts.user.clone(),
                opts.sudo.clone(),
                opts.reporter.clone(),
            );
            // Keep reading the abandoned channel while the kill runs: a command still
            // writing (a sink that failed mid-file) would otherwise fill the channel's
            // buffer and stall the whole connection, the kill's channel included.
            let drain = tokio::time::timeout(Duration::from_secs(25), async {
                while rx.wait().await.is_some() {}
            });
            let _ = tokio::join!(kill, drain);
        }
        return Err(RunError::Host(match stop {
            Stop::Timeout => HostError::Timeout {
                host: opts.host.clone(),
                command: opts.label.clone(),
                after: opts.timeout.unwrap_or_default(),
            },
            Stop::Sink(e) => HostError::Other {
                host: opts.host.clone(),
                message: format!(
                    "`{}`: writing its output on the workstation failed: {e}",
                    opts.label
                ),
            },
            _ => HostError::Cancelled {
                host: opts.host.clone(),
            },
        }));
    }

    // The channel is over: the remote side is done (or gone).
    let pid = guard.pid.take();
    // A writer still running now can never finish (it may wait forever for window space
    // on a dead connection, or feed a command that exited without reading its input).
    let writer_result = if writer_task.is_finished() {
        writer_task.await.unwrap_or(Ok(()))
    } else {
        writer_task.abort();
        Ok(())
    };
    if !got_exit {
        if conn.is_closed() {
            return Err(RunError::Dropped { started: true, pid });
        }
        return Err(RunError::Host(HostError::Other {
            host: opts.host.clone(),
            message: format!("`{}` ended without an exit status", opts.label),
        }));
    }
    if phase == Phase::Pre {
        return Err(RunError::Host(classify_pre(
            opts,
            &sudo_lines,
            &pre,
            &out.stdout_str(),
        )));
    }
    if let Err(e) = writer_result {
        // The command finished but could not take all of its input: report it as the
        // command's failure (the caller sees the exit status and stderr too).
        if out.status == Some(0) {
            return Err(RunError::Host(HostError::Other {
                host: opts.host.clone(),
                message: format!("`{}`: sending its input failed: {e}", opts.label),
            }));
        }
    }
    if signal.is_some() {
        out.status = None;
    }
    Ok(out)
}

fn pre_line(line: &str, pid: &mut Option<u32>, sudo_lines: &mut Vec<String>) {
    if let Some(rest) = line.trim().strip_prefix(PID_MARK) {
        if let Ok(p) = rest.trim().parse::<u32>() {
            *pid = Some(p);
        }
        return;
    }
    if !line.trim().is_empty() {
        sudo_lines.push(line.trim().to_owned());
    }
}

/// The command never started: say why, from what sudo or the login shell printed.
fn classify_pre(opts: &RunOpts, lines: &[String], rest: &str, stdout: &str) -> HostError {
    let mut all: Vec<String> = lines.to_vec();
    if !rest.trim().is_empty() {
        all.push(rest.trim().to_owned());
    }
    // Some refusals go to stdout (nologin's "This account is currently not available.").
    for l in crate::host::tail(stdout, 5).lines() {
        if !l.trim().is_empty() {
            all.push(l.trim().to_owned());
        }
    }
    let text = all.join("\n");
    let host = opts.host.clone();
    let user = opts.user.clone();
    let find = |needle: &str| all.iter().find(|l| l.contains(needle)).cloned();
    if opts.sudo.is_sudo() {
        if text.contains("a password is required") || text.contains("a terminal is required") {
            return HostError::SudoPasswordRequired { host, user };
        }
        if text.contains("incorrect password") || text.contains("Sorry, try again") {
            return HostError::SudoWrongPassword { host, user };
        }
        if let Some(l) = find("must have a tty") {
            return HostError::SudoNotAllowed {
                host,
                user,
                detail: format!(
                    "{l} (sudoers has `Defaults requiretty`; remove it for this user: `Defaults:{} !requiretty`)",
                    opts.user
                ),
            };
        }
        for needle in [
            "not in the sudoers",
            "is not allowed to",
            "may not run sudo",
            "not allowed to execute",
        ] {
            if let Some(l) = find(needle) {
                return HostError::SudoNotAllowed {
                    host,
                    user,
                    detail: l,
                };
            }
        }
        if text.contains("sudo: not found") || text.contains("sudo: command not found") {
            return HostError::SudoNotAllowed {
                host,
                user,
                detail: "sudo is not installed on the host".into(),
            };
        }
        return HostError::Other {
            host,
            message: format!(
                "sudo did not run `{}`: {}",
                opts.label,
                if text.is_empty() {
                    "it printed nothing".to_string()
                } else {
                    text
                }
            ),
        };
    }
    HostError::Other {
        host,
        message: format!(
            "the login shell of {user} did not run `{}`{}",
            opts.label,
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_runs_the_script_and_reports_pid_and_start() {
        let script = "echo \"it's $((1+1))\"; echo err >&2; exit 7";
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command_line(script, &SudoUse::No))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's 2\n");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[0].starts_with("@@installer-pid "), "{err}");
        assert_eq!(lines[1], RUN_MARK);
        assert_eq!(lines[2], "err");
    }

    #[test]
    fn sudo_command_lines_never_contain_the_password() {
        let pw = Secret::new("hunter2-sudo-pass");
        let line = command_line("id -u", &SudoUse::Password(pw));
        assert!(!line.contains("hunter2"));
        assert!(line.contains("sudo -S -p"));
        assert!(command_line("id -u", &SudoUse::Passwordless).contains("sudo -n --"));
    }

    #[test]
    fn kill_script_is_valid_shell_and_spares_unrelated_processes() {
        // PID 1 is not our wrapper: the script must exit 0 without touching it.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(kill_script(1))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }

    #[test]
    fn lines_split_and_cut() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        l.push(b"a\nb", |s| got.push(s.to_owned()));
        l.push(b"c\r\n", |s| got.push(s.to_owned()));
        l.push(&vec![b'x'; 3000], |s| got.push(s.to_owned()));
        l.finish(|s| got.push(s.to_owned()));
        assert_eq!(got[0], "a");
        assert_eq!(got[1], "bc");
        assert_eq!(got[2].len(), MAX_EVENT_LINE + 3);
    }
}
