//! Driving an interactive program through a pseudo-terminal with real keystrokes
//! (expectrl), for the wizard's tests.

use expectrl::{Eof, Expect, Session};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const DOWN: &str = "\x1b[B";
pub const ENTER: &str = "\r";

pub struct Pty {
    pub s: expectrl::session::OsSession,
    /// Everything the wizard printed so far.
    pub seen: String,
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
        s.set_expect_timeout(Some(Duration::from_secs(30)));
        Pty {
            s,
            seen: String::new(),
        }
    }

    /// Waits for `text`, keeping what came before it.
    pub fn expect(&mut self, text: &str) {
        match self.s.expect(text) {
            Ok(c) => {
                self.seen.push_str(&String::from_utf8_lossy(c.before()));
                self.seen.push_str(text);
            }
            Err(e) => panic!(
                "waiting for {text:?}: {e}\n--- output so far ---\n{}",
                self.seen
            ),
        }
    }

    /// [`Pty::expect`] with a longer wait (an install).
    pub fn expect_within(&mut self, text: &str, secs: u64) {
        self.s.set_expect_timeout(Some(Duration::from_secs(secs)));
        self.expect(text);
        self.s.set_expect_timeout(Some(Duration::from_secs(30)));
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
        if let Ok(c) = self.s.expect(Eof) {
            self.seen.push_str(&String::from_utf8_lossy(c.before()));
        }
        match self.s.get_process().wait() {
            Ok(expectrl::process::unix::WaitStatus::Exited(_, code)) => code,
            other => panic!("the installer did not exit normally: {other:?}"),
        }
    }
}
