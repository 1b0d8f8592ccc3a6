//! Driving an interactive program through a pseudo-terminal with real keystrokes
//! (expectrl), for the wizard's tests.

use expectrl::process::Termios;
use expectrl::{Eof, Expect, Needle, Session};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const DOWN: &str = "\x1b[B";
pub const ENTER: &str = "\r";

pub struct Pty {
    pub s: expectrl::session::OsSession,
    /// Everything the wizard printed so far.
    pub seen: String,
    /// How long [`Pty::expect`] waits.
    timeout: Duration,
    /// The pty's master side (a duplicate), to sleep in poll(2) until it has output.
    master: File,
}

impl Pty {
    /// Starts `program` in `home` (also its HOME), with only PATH, TERM and `extra_env`.
    pub fn spawn(program: &Path, home: &Path, extra_env: &[(&str, &str)]) -> Pty {
        Pty::spawn_args(program, home, extra_env, &[])
    }

    /// [`Pty::spawn`] with command-line arguments.
    pub fn spawn_args(
        program: &Path,
        home: &Path,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Pty {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.current_dir(home)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("TERM", "xterm-256color");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut s = Session::spawn(cmd).expect("spawn the installer in a pty");
        let _ = s.get_process_mut().set_window_size(120, 40);
        // ptyprocess starts the child's terminal with echo off; a terminal a person types on
        // has it on. `send_secret` relies on it: a password prompt is recognised by echo going
        // off. The spawn returns once the program has exec'd, after the child's own setting.
        s.set_echo(true).expect("turn the pty's echo on");
        let master = s
            .get_process()
            .get_raw_handle()
            .expect("the pty's master descriptor");
        Pty {
            s,
            seen: String::new(),
            timeout: Duration::from_secs(30),
            master,
        }
    }

    /// Waits for `text`, keeping what came before it. Sleeps in poll(2) while the program
    /// prints nothing (expectrl's own expect spins a core, which the lab's nodes need).
    pub fn expect(&mut self, text: &str) {
        let before = self.wait(|| text, text);
        self.seen.push_str(&before);
        self.seen.push_str(text);
    }

    /// Waits until `needle` matches; returns what came before it.
    fn wait<N: Needle>(&mut self, needle: impl Fn() -> N, text: &str) -> String {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.s.check(needle()) {
                Ok(c) if !c.is_empty() => return String::from_utf8_lossy(c.before()).into_owned(),
                Ok(_) => {}
                Err(e) => self.fail(text, &e.to_string()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let waited = format!("nothing matched in {} s", self.timeout.as_secs());
                self.fail(text, &waited);
            }
            let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
            let wait = Timespec::try_from(left.min(Duration::from_secs(1))).ok();
            match poll(&mut fds, wait.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => self.fail(text, &format!("poll: {e}")),
            }
        }
    }

    fn fail(&mut self, text: &str, why: &str) -> ! {
        let pending = self.pending();
        panic!(
            "waiting for {text:?}: {why}\n--- output so far ---\n{}\n--- printed since the last match ---\n{pending}",
            self.seen
        )
    }

    /// What the program printed that no `expect` has taken yet (for a failure's message).
    fn pending(&mut self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.s.try_read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// [`Pty::expect`] with a longer wait (an install).
    pub fn expect_within(&mut self, text: &str, secs: u64) {
        let usual = std::mem::replace(&mut self.timeout, Duration::from_secs(secs));
        self.expect(text);
        self.timeout = usual;
    }

    pub fn send(&mut self, keys: &str) {
        self.s.send(keys).expect("send keys");
    }

    /// Types a hidden answer. A password prompt turns echo off with TCSAFLUSH, which drops
    /// input that arrived before it: wait until the terminal's echo is off, then type.
    pub fn send_secret(&mut self, text: &str) {
        for _ in 0..1000 {
            if matches!(self.s.get_process().get_echo(), Ok(false)) {
                self.send(text);
                self.send(ENTER);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the password prompt never turned echo off\n{}", self.seen);
    }

    pub fn finish(&mut self) -> i32 {
        let rest = self.wait(|| Eof, "the end of the output");
        self.seen.push_str(&rest);
        match self.s.get_process().wait() {
            Ok(expectrl::process::unix::WaitStatus::Exited(_, code)) => code,
            other => panic!("the installer did not exit normally: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stop 23's CI failure: the password was typed while the pty still had ptyprocess's
    /// initial echo-off, so the prompt's TCSAFLUSH threw it away and the prompt waited forever.
    /// Python's getpass flushes as dialoguer's does; the pause before it is the window.
    #[test]
    fn a_secret_typed_at_a_prompt_that_flushes_input_is_not_lost() {
        let home = tempfile::tempdir().unwrap();
        let mut p = Pty::spawn_args(
            Path::new("/usr/bin/python3"),
            home.path(),
            &[],
            &[
                "-c",
                "import getpass, time\nprint('ready', flush=True)\ntime.sleep(0.5)\nprint('got:' + getpass.getpass('pw? '))",
            ],
        );
        p.expect("ready");
        p.send_secret("s3cret");
        p.expect("got:s3cret");
        assert_eq!(p.finish(), 0, "{}", p.seen);
        assert!(!p.seen.contains("s3cret\r\n"), "echoed: {}", p.seen);
    }
}
