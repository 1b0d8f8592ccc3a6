//! `cargo bench -p installer-enforcer --bench compile_apply`: compile and apply time for 100
//! pods and 50 policies (target: under 1 s). Apply needs root, nft and ip (a private network
//! namespace and a private cgroup base are created and removed); without them only compile
//! time is printed.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use installer_enforcer::cgroup::CgroupFs;
use installer_enforcer::compile::compile;
use installer_enforcer::controller::resolve;
use installer_enforcer::model::{Config, Mode};
use installer_enforcer::nft::Nft;

mod common;
use common::{NODES, PODS, POLICIES, median, snapshot};

fn main() {
    let snap = snapshot();
    let cfg = Config::new("n0", Mode::Enforce, "enfbench", &[], &[]);
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let base = format!("enfbench{}", std::process::id());
    let setup = is_root && Command::new("nft").arg("--version").output().is_ok();
    let (fs, v2dir) = if setup {
        let fs = CgroupFs::detect(std::path::Path::new("/sys/fs/cgroup"), &base).unwrap();
        let v2 = if fs.v2_prefix.is_empty() {
            "/sys/fs/cgroup".to_string()
        } else {
            format!("/sys/fs/cgroup/{}", fs.v2_prefix)
        };
        let dir = format!("{v2}/{base}");
        for i in (0..PODS).filter(|i| i % NODES == 0) {
            std::fs::create_dir_all(format!("{dir}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0000_bench_{i}.slice")).unwrap();
        }
        (Some(fs), Some(dir))
    } else {
        (None, None)
    };
    let cg = fs
        .as_ref()
        .map(|f| resolve(&snap, "n0", f))
        .unwrap_or_default();
    let mut times = Vec::new();
    let mut rs = compile(&snap, &cfg, &cg);
    for _ in 0..20 {
        let t = Instant::now();
        rs = compile(&snap, &cfg, &cg);
        times.push(t.elapsed());
    }
    println!(
        "enforcer bench: {PODS} pods on {NODES} nodes, {POLICIES} policies; node n0: {} local pods ({} cgroups resolved), {} rules, {} bytes of nft text",
        rs.stats.local_pods,
        cg.pods.len(),
        rs.stats.rules,
        rs.text.len()
    );
    println!(
        "compile (snapshot -> rules), median of 20: {:.2} ms",
        median(times).as_secs_f64() * 1e3
    );
    let (Some(_), Some(dir)) = (fs, v2dir) else {
        println!("apply: not measured (needs root and nft)");
        return;
    };
    let ns = format!("enfbench{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "add", &ns]).status();
    let nft = Nft::new("enfbench", Some(&format!("/run/netns/{ns}")));
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let rs = compile(
            &snap,
            &cfg,
            &resolve(
                &snap,
                "n0",
                &CgroupFs::detect(std::path::Path::new("/sys/fs/cgroup"), &base).unwrap(),
            ),
        );
        nft.apply(&rs.text).unwrap();
        times.push(t.elapsed());
    }
    println!(
        "resolve + compile + apply (one nft -f transaction), median of 10: {:.2} ms (target < 1000 ms)",
        median(times).as_secs_f64() * 1e3
    );
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("find {dir} -depth -type d -exec rmdir {{}} \\;"),
        ])
        .status();
}
