//! Running the system tools the lab is built from (systemd-nspawn, ip, mount, ssh, ...): finding
//! them even when `/usr/sbin` is not on `PATH`, failing with the command line and its stderr, and
//! bounding how long a command may run so that a stuck node cannot hang a test forever.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Directories searched after `PATH` (root's tools live in sbin, which a test's PATH may lack).
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Environment variables never passed to the tools: the first would let nodes change host-wide
/// sysctls (../shared/docs/lab.md, "Pitfalls"); the second would make nspawn notify our own supervisor.
const SCRUBBED_ENV: &[&str] = &["SYSTEMD_NSPAWN_API_VFS_WRITABLE", "NOTIFY_SOCKET"];

/// The absolute path of tool `name`, or None.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The Debian package that provides tool `name`, for error messages and skip reasons.
pub(crate) fn package_of(name: &str) -> &'static str {
    match name {
        "systemd-nspawn" => "systemd-container",
        "ssh" | "scp" | "ssh-keygen" => "openssh-client",
        "ip" => "iproute2",
        "nft" => "nftables",
        "zstd" => "zstd",
        "debootstrap" => "debootstrap",
        "tar" => "tar",
        _ => "util-linux",
    }
}

/// A `Command` for tool `name` with the dangerous variables removed.
pub(crate) fn command(name: &str) -> Result<Command> {
    let path = find_tool(name).ok_or_else(|| {
        anyhow!(
            "`{name}` not found\nhint: install the Debian package {}",
            package_of(name)
        )
    })?;
    let mut cmd = Command::new(path);
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    Ok(cmd)
}

/// The command line, for messages (lab commands carry no secrets in their arguments).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; fails unless it exits 0. Returns stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    check(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with the command line, exit status and stderr unless `out` is a success.
pub(crate) fn check(cmd: &Command, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let detail = if stderr.trim().is_empty() {
        stdout.trim().to_string()
    } else {
        stderr.trim().to_string()
    };
    bail!("`{}` failed ({}): {}", describe(cmd), out.status, detail)
}

/// Runs `cmd` with stdin closed, captures its output, and kills it if it runs longer than `timeout`.
pub(crate) fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    wait_output(child, timeout).with_context(|| describe(cmd))
}

/// Waits for a child started with piped stdout/stderr, killing it after `timeout`.
pub(crate) fn wait_output(mut child: Child, timeout: Duration) -> Result<Output> {
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let t_err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_the_writable_api_vfs_variable() {
        let cmd = command("sh").unwrap();
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_owned())
            .collect();
        assert!(
            removed
                .iter()
                .any(|k| k == "SYSTEMD_NSPAWN_API_VFS_WRITABLE")
        );
    }

    #[test]
    fn failing_commands_report_their_stderr() {
        let mut cmd = command("sh").unwrap();
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = run(&mut cmd).unwrap_err().to_string();
        assert!(
            err.contains("boom") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[test]
    fn slow_commands_are_killed() {
        let mut cmd = command("sleep").unwrap();
        cmd.arg("5");
        let t = Instant::now();
        let err = output_timeout(&mut cmd, Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err:#}").contains("timed out"));
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
