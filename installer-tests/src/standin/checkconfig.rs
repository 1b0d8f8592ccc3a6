//! `k3s check-config`: a short, honest report.
//!
//! k3s runs `contrib/util/check-config.sh`, which checks binaries, iptables, swap, routes for the
//! cluster and service CIDRs, cgroups and the kernel's `CONFIG_*` options. The stand-in checks what
//! it can observe on the node (cgroup v2, swap, default routes overlapping 10.42/10.43, iptables
//! presence) and says plainly that it does not inspect the kernel configuration.

use super::log;

fn line(ok: bool, what: &str, detail: &str) -> String {
    format!(
        "- {what}: {}{}",
        if ok { "ok" } else { "fail" },
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        }
    )
}

/// Run the checks; returns the exit code (1 if a required check fails).
pub fn run() -> i32 {
    let mut out = Vec::new();
    let mut failed = false;
    out.push("Verifying the k3s stand-in's view of this host:".to_string());
    out.push(String::new());
    out.push("System:".to_string());
    let cgroup2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    failed |= !cgroup2;
    out.push(line(
        cgroup2,
        "cgroup hierarchy",
        if cgroup2 {
            "cgroups V2 mounted"
        } else {
            "cgroups V2 not mounted; kubelet 1.35+ refuses cgroup v1"
        },
    ));
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let swap_on = swaps.lines().count() > 1;
    out.push(format!(
        "- swap: {}",
        if swap_on {
            "should be disabled"
        } else {
            "disabled"
        }
    ));
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let overlap = routes.lines().skip(1).any(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        c.len() > 1 && (c[1] == "00002A0A" || c[1] == "00002B0A")
    });
    out.push(line(
        !overlap,
        "routes",
        if overlap {
            "10.42.0.0/16 or 10.43.0.0/16 is already routed"
        } else {
            ""
        },
    ));
    let iptables = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    out.push(format!(
        "- iptables: {}",
        if iptables {
            "found"
        } else {
            "not found (k3s would use its bundled iptables)"
        }
    ));
    out.push(String::new());
    out.push("This is the k3s stand-in used by the installer's tests: kernel configuration (CONFIG_*) checks are not performed.".into());
    out.push(String::new());
    out.push(format!(
        "STATUS: {}",
        if failed { "1 (fail)" } else { "pass" }
    ));
    println!("{}", out.join("\n"));
    if failed {
        log::warn("check-config found problems");
        1
    } else {
        0
    }
}
