//! Whether the lab can run here, and the skip-or-fail rule for tests that need it: outside CI a test
//! without its prerequisites is skipped with the reason printed; with `LAB_REQUIRED=1` (CI sets it)
//! the same test fails, so CI can never skip lab tests silently.

use anyhow::{Result, bail};

use super::cmd;
use super::recipe;

/// Tools the lab runs, with the Debian package of each.
const TOOLS: &[&str] = &[
    "systemd-nspawn",
    "ssh",
    "scp",
    "ssh-keygen",
    "ip",
    "nsenter",
    "mount",
    "umount",
    "tar",
    "zstd",
];

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "the lab needs root: it runs systemd-nspawn, mounts overlays, creates cgroups and a bridge\nhint: run it as root (for example `sudo -E env PATH=$PATH cargo run -p installer-tests --bin lab -- ...`)"
        );
    }
    Ok(())
}

/// Why the lab cannot run on this machine, or None when it can. Checks root, the tools, overlayfs,
/// cgroups, and that a base root filesystem is cached or can be built.
pub fn skip_reason() -> Option<String> {
    let mut reasons = Vec::new();
    if !is_root() {
        reasons.push("root (this test is running as an unprivileged user)".to_string());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|t| cmd::find_tool(t).is_none())
        .map(|t| format!("`{t}` (Debian package {})", cmd::package_of(t)))
        .collect();
    if !missing.is_empty() {
        reasons.push(format!("the tools {}", missing.join(", ")));
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| {
        l.trim_end().ends_with("\toverlay") || l.split_whitespace().last() == Some("overlay")
    }) {
        reasons.push("overlayfs support in the kernel".to_string());
    }
    if !std::path::Path::new("/sys/fs/cgroup").is_dir() {
        reasons.push("a mounted /sys/fs/cgroup".to_string());
    }
    if !recipe::is_cached() && cmd::find_tool("debootstrap").is_none() {
        reasons.push("a cached base root filesystem or `debootstrap` (Debian package debootstrap) to build one".to_string());
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// For tests: true when the lab can run. Otherwise prints why the test is skipped and returns false,
/// or panics (fails the test) when `LAB_REQUIRED=1`.
pub fn require_lab() -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            if std::env::var("LAB_REQUIRED").is_ok_and(|v| v.trim() == "1") {
                panic!("LAB_REQUIRED=1 but the lab cannot run here: it needs {why}");
            }
            eprintln!(
                "SKIPPED (lab test): the lab needs {why}. Set LAB_REQUIRED=1 to make this a failure."
            );
            false
        }
    }
}
