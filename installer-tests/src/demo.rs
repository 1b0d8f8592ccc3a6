//! `lab demo` and `lab bench install`: the README's main job and the install benchmark.
//!
//! The demo builds what it needs (the installer, the k3s stand-in, the lab's base root
//! filesystem), brings up a 3-host lab, runs `installer install` unattended against it with
//! the stand-in and the lab's image archives, and ends with `installer status`. The lab is
//! then taken down, so the test command can follow on the same `LAB_ID`; with `--keep` it is
//! left running so it can be looked at (`lab ssh node1`, `lab down` when done).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab};
use crate::payload::{self, Sizes};

/// Builds the installer and the stand-in (a no-op when they are current): the debug build
/// for the demo, the release build for benchmarks (which allows the missing artifacts:
/// the lab hands them over with `--assets`).
pub fn build_binaries(release: bool) -> Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(&cargo);
    c.args(["build", "--locked", "-p", "installer", "--bin", "installer"])
        .args(["-p", "installer-tests", "--bin", "k3s-standin"]);
    if release {
        c.arg("--release")
            .env("INSTALLER_ALLOW_MISSING_ASSETS", "1");
    }
    let st = c.status().context("run cargo build")?;
    if !st.success() {
        bail!("building the installer and the k3s stand-in failed");
    }
    if !release {
        return Ok((
            payload::workspace_binary("installer")?,
            payload::workspace_binary("k3s-standin")?,
        ));
    }
    // target/<profile>/lab -> target/release/...
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .context("cannot find the target directory")?;
    Ok((target.join("installer"), target.join("k3s-standin")))
}

fn banner(text: &str) {
    eprintln!("\n==> {text}");
}

/// Starts a lab of `n` nodes for a command that owns it, taking down a previous lab of
/// this `LAB_ID` first (the demo's own, from an earlier run).
fn fresh_lab(n: usize) -> Result<Lab> {
    if lab::down_from_state()? {
        eprintln!("(took down the lab left by an earlier run)");
    }
    Lab::builder(n).cli_owned().up()
}

/// `lab demo [--keep]`.
pub fn demo(keep: bool) -> Result<bool> {
    lab::require_root()?;
    let t = Instant::now();
    banner("building the installer and the k3s stand-in");
    let (installer, standin) = build_binaries(false)?;
    banner("building the lab's base root filesystem (cached after the first time)");
    let (_, outcome, _) = Lab::build(false)?;
    eprintln!("base root filesystem: {outcome:?}");
    banner("starting a 3-host lab (systemd-nspawn hosts with their own addresses and sshd)");
    let lab = fresh_lab(3)?;
    for n in lab.nodes() {
        eprintln!("  {}  {}  {}", n.name, n.addr, n.host_key_fingerprint);
    }
    let state = lab
        .answer_file_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    banner(
        "preparing the payload (the k3s stand-in in the k3s binary's place, the lab's image archives)",
    );
    let p = payload::build(&state.join("payload"), &standin, Sizes::default(), &[])?;
    let answers = lab.answer_file_path();
    banner(&format!(
        "installer install -f {} {}",
        answers.display(),
        p.args().join(" ")
    ));
    let st = Command::new(&installer)
        .args(["install", "-f"])
        .arg(&answers)
        .args(p.args())
        .status()
        .context("run the installer")?;
    let installed = st.success();
    banner(&format!("installer status -f {}", answers.display()));
    let status = Command::new(&installer)
        .args(["status", "-f"])
        .arg(&answers)
        .status()
        .context("run installer status")?;
    let id = lab.id();
    let outcome = if installed && status.success() {
        "succeeded"
    } else {
        "FAILED"
    };
    if keep {
        lab.detach()?;
        eprintln!(
            "\ndemo {outcome} in {:.0?}; the lab is still up: `LAB_ID={id} cargo run -p installer-tests --bin lab -- ssh node1`, and `... -- down` when done",
            t.elapsed()
        );
    } else {
        lab.down()?;
        eprintln!(
            "\ndemo {outcome} in {:.0?}; the lab is taken down (`lab demo --keep` leaves it up to look at)",
            t.elapsed()
        );
    }
    Ok(installed && status.success())
}

/// Peak resident memory of a running process, sampled until it exits.
fn run_measuring_rss(cmd: &mut Command) -> Result<(std::process::ExitStatus, u64)> {
    let mut child = cmd.spawn().context("spawn")?;
    let pid = child.id();
    let mut peak_kb = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if let Some(st) = child.try_wait()? {
            return Ok((st, peak_kb));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lab bench install`.
pub fn bench_install() -> Result<()> {
    lab::require_root()?;
    let (installer, standin) = build_binaries(true)?;
    Lab::build(false)?;
    let lab = fresh_lab(5)?;
    let state = lab
        .answer_file_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    // A payload of realistic size: about 70 MB in the k3s binary's position and about
    // 200 MB of image archives (a 150 MB airgap archive, 4 application archives of 12.5 MB).
    let sizes = Sizes {
        binary_padding: 70_000_000u64.saturating_sub(std::fs::metadata(&standin)?.len()),
        airgap_padding: 150_000_000,
        app_padding: 12_500_000,
    };
    let p = payload::build(&state.join("payload"), &standin, sizes, &[])?;
    let files: Vec<PathBuf> = std::fs::read_dir(&p.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.file_name().is_some_and(|n| n != "assets.lock"))
        .collect();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "payload: {} files, {:.1} MB",
        files.len(),
        total as f64 / 1e6
    );
    // The stand-in starts at once, so the figure is the installer's own time.
    crate::e2e::standin_knobs(&lab, "startup-delay: 0s\nlearner-promotion-delay: 0s\n")?;

    // Reference: OpenSSH scp of the same payload to the 5 hosts in parallel.
    let t = Instant::now();
    let mut children = Vec::new();
    for n in lab.nodes() {
        let mut c = Command::new("scp");
        c.args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.known_hosts_path().display()
        ))
        .arg("-i")
        .arg(lab.key_path())
        .args(&files)
        .arg(format!("root@{}:/var/tmp/", n.addr))
        .stdout(Stdio::null());
        children.push(c.spawn().context("spawn scp")?);
    }
    for mut c in children {
        if !c.wait()?.success() {
            bail!("scp failed");
        }
    }
    let scp = t.elapsed().as_secs_f64();
    for n in lab.nodes() {
        lab.exec_ok(n, "rm -f /var/tmp/k3s-* /var/tmp/app-*")?;
    }

    let answers = lab.answer_file_path();
    let events = state.join("bench-install.jsonl");
    let mut cmd = Command::new(&installer);
    cmd.args(["install", "--output", "json", "-f"])
        .arg(&answers)
        .args(p.args())
        .stdout(std::fs::File::create(&events)?)
        .stderr(Stdio::null());
    let t = Instant::now();
    let (st, peak_kb) = run_measuring_rss(&mut cmd)?;
    let install = t.elapsed().as_secs_f64();
    // The installer's own per-phase times.
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if v["event"] == "command_finished" {
            let phases: Vec<String> = v["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} {:.1}s",
                        p[0].as_str().unwrap_or(""),
                        p[1].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            println!("phases: {}", phases.join(", "));
        }
    }
    if !st.success() {
        bail!(
            "the install failed: see {}",
            state.join("installer.log").display()
        );
    }
    let mut cmd = Command::new(&installer);
    cmd.args(["install", "--output", "plain", "-q", "-f"])
        .arg(&answers)
        .args(p.args())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let (st, _) = run_measuring_rss(&mut cmd)?;
    let rerun = t.elapsed().as_secs_f64();
    if !st.success() {
        bail!(
            "the rerun failed: see {}",
            state.join("installer.log").display()
        );
    }
    lab.down()?;
    println!("payload {:.0} MB to 5 hosts", total as f64 / 1e6);
    println!(
        "install: {install:.1} s, scp {scp:.1} s, ratio {:.2}, peak RSS {:.0} MB, rerun {rerun:.1} s",
        install / scp,
        peak_kb as f64 / 1024.0
    );
    Ok(())
}
