//! `lab bench upload`: the installer's SSH upload (russh, `Remote::upload`) against
//! OpenSSH `scp`, in the same run, to the same lab nodes, with the same file.
//!
//! What is measured, each as the median of `--runs` runs, russh and scp interleaved:
//! - connection setup: connect + log in + run `true` (russh `SshHost`, and `ssh ... true`);
//! - one node: upload the file from scratch, connection included. For russh that is the
//!   whole product path: hash the source, stream, hash on the host, fsync, set mode, rename.
//!   `scp` only copies;
//! - all nodes in parallel: the same to every node at once (aggregate MB/s).
//!
//! Peak RSS is this process's `VmHWM` after uploads of growing size (so a figure that
//! does not grow shows that memory does not depend on the file size). MB = 2^20 bytes.
//! The last line is `upload: russh <X> MB/s, scp <Y> MB/s, ratio <X/Y>` (one node).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab, Node};
use installer::host::ssh::{AuthMethod, ConnectionSpec, SshConfigSource, SshHost};
use installer::host::{
    Remote, RemoteCommand, RemoteExt, UploadOutcome, UploadSource, UploadTarget,
};
use installer::report::Reporter;

/// Options of `lab bench upload`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Size of the file to upload, in MiB.
    #[arg(long, default_value_t = 200)]
    pub size_mib: u64,
    /// Nodes for the parallel run (a lab of this many is started unless one is up).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Runs of each measurement (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const DIR: &str = "/root/bench-upload";
const MIB: f64 = 1024.0 * 1024.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// This process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Writes `mib` MiB of incompressible bytes (a xorshift stream) to `path`.
fn make_file(path: &Path, mib: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

struct Bench<'a> {
    lab: &'a Lab,
    file: PathBuf,
    bytes: u64,
}

impl Bench<'_> {
    fn spec(&self, n: &Node) -> ConnectionSpec {
        ConnectionSpec::new(n.addr.to_string())
            .name(n.name.clone())
            .user(lab::ROOT_USER)
            .auth(AuthMethod::KeyFile {
                path: self.lab.key_path(),
                passphrase: None,
            })
            .known_hosts(self.lab.known_hosts_path())
            .ssh_config(SshConfigSource::Off)
    }

    fn ssh_args(&self) -> Vec<String> {
        vec![
            "-q".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.lab.known_hosts_path().display()
            ),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            self.lab.key_path().display().to_string(),
            "-F".into(),
            "/dev/null".into(),
        ]
    }

    fn clean(&self, nodes: &[Node]) -> Result<()> {
        for n in nodes {
            self.lab
                .exec(n, &format!("rm -rf {DIR}; mkdir -p {DIR}"))
                .with_context(|| format!("cleaning {DIR} on {}", n.name))?;
        }
        Ok(())
    }

    async fn russh_setup(&self, n: &Node) -> Result<f64> {
        let t = Instant::now();
        let h = SshHost::new(self.spec(n), Reporter::silent());
        h.run(RemoteCommand::new("true")).await?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn ssh_setup(&self, n: &Node) -> Result<f64> {
        let t = Instant::now();
        let st = Command::new("ssh")
            .args(self.ssh_args())
            .arg(format!("root@{}", n.addr))
            .arg("true")
            .status()
            .context("running ssh")?;
        if !st.success() {
            bail!("ssh to {} failed", n.name);
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// Uploads to `n`; returns when the data started to flow and when it had all been
    /// handed to the channel, in seconds from the start.
    async fn russh_upload(&self, n: &Node, name: &str) -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let marks = std::sync::Arc::new(std::sync::Mutex::new((None::<f64>, None::<f64>)));
        let m2 = marks.clone();
        let progress: installer::host::Progress = std::sync::Arc::new(move |done, total| {
            if let Ok(mut m) = m2.lock() {
                let now = t0.elapsed().as_secs_f64();
                if m.0.is_none() {
                    m.0 = Some(now);
                }
                if done == total {
                    m.1 = Some(now);
                }
            }
        });
        let h = SshHost::new(self.spec(n), Reporter::silent());
        let src = UploadSource::File {
            path: self.file.clone(),
            sha256: None,
        };
        let target = UploadTarget {
            path: format!("{DIR}/{name}"),
            mode: 0o644,
            owner: None,
            sudo: false,
        };
        match h.upload(&src, &target, Some(progress)).await? {
            UploadOutcome::Uploaded { bytes } if bytes == self.bytes => {}
            other => bail!("{}: unexpected upload outcome {other:?}", n.name),
        }
        let m = *marks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok((m.0.unwrap_or(0.0), m.1.unwrap_or(0.0)))
    }

    fn scp_spawn(&self, n: &Node, name: &str, cipher: Option<&str>) -> Result<std::process::Child> {
        let mut c = Command::new("scp");
        c.args(self.ssh_args());
        if let Some(ci) = cipher {
            c.args(["-c", ci]);
        }
        c.arg(&self.file)
            .arg(format!("root@{}:{DIR}/{name}", n.addr))
            .stdin(Stdio::null());
        c.spawn().context("running scp")
    }

    fn scp_wait(children: Vec<std::process::Child>) -> Result<()> {
        for mut ch in children {
            let st = ch.wait()?;
            if !st.success() {
                bail!("scp failed: {st}");
            }
        }
        Ok(())
    }
}

/// Runs the benchmark and prints its report.
pub fn run(args: &Args) -> Result<()> {
    lab::require_root()?;
    if args.size_mib == 0 || args.runs == 0 {
        bail!("--size-mib and --runs must be at least 1");
    }
    for bin in ["scp", "ssh"] {
        if Command::new(bin)
            .arg("-V")
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("`{bin}` is missing\nhint: apt-get install openssh-client");
        }
    }
    let (lab, started) = match Lab::attach() {
        Ok(l) => (l, false),
        Err(_) => {
            let n = args.nodes.clamp(1, lab::MAX_NODES);
            println!("starting a lab of {n} nodes (LAB_ID from the environment)...");
            (Lab::up(n)?, true)
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(&lab, args));
    if started {
        lab.down()?;
    }
    result
}

async fn bench(lab: &Lab, args: &Args) -> Result<()> {
    let nodes: Vec<Node> = lab
        .nodes()
        .iter()
        .take(args.nodes.max(1))
        .cloned()
        .collect();
    let n1 = nodes[0].clone();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("payload.bin");
    make_file(&file, args.size_mib)?;
    let b = Bench {
        lab,
        file: file.clone(),
        bytes: args.size_mib << 20,
    };
    let size_mb = b.bytes as f64 / MIB;
    println!(
        "lab bench upload: {} MiB file, lab {} ({} node(s) in the parallel run), {} run(s) each, median; MB = 2^20 bytes",
        args.size_mib,
        lab.id(),
        nodes.len(),
        args.runs
    );
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build, where russh's ciphers run several times slower; measure with `cargo build --release -p installer-tests --bin lab`"
        );
    }
    println!(
        "russh prefers aes256-gcm@openssh.com when the CPU has AES instructions; scp uses OpenSSH's default (chacha20-poly1305@openssh.com)"
    );

    // Connection setup.
    let (mut r, mut s) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(5) {
        r.push(b.russh_setup(&n1).await?);
        s.push(b.ssh_setup(&n1)?);
    }
    let (setup_r, setup_s) = (median(r), median(s));
    println!(
        "connection setup (connect, host key, login, run `true`): russh {:.0} ms, ssh {:.0} ms",
        setup_r * 1e3,
        setup_s * 1e3
    );

    // Memory does not grow with the file: a small upload first, then the big ones.
    let rss_start = peak_rss_mib();
    let small = dir.path().join("small.bin");
    make_file(&small, (args.size_mib / 8).max(1))?;
    b.clean(&nodes)?;
    {
        let bs = Bench {
            lab,
            file: small.clone(),
            bytes: (args.size_mib / 8).max(1) << 20,
        };
        bs.russh_upload(&n1, "small-russh").await?;
    }
    let rss_small = peak_rss_mib();

    // One node.
    let (mut r, mut s, mut s_gcm) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first, mut sent) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        b.clean(&nodes)?;
        let t = Instant::now();
        let (f, a) = b.russh_upload(&n1, &format!("russh-{i}")).await?;
        let total = t.elapsed().as_secs_f64();
        r.push(total);
        first.push(f);
        sent.push(a - f);
        b.clean(&nodes)?;
        let t = Instant::now();
        Bench::scp_wait(vec![b.scp_spawn(&n1, &format!("scp-{i}"), None)?])?;
        s.push(t.elapsed().as_secs_f64());
        b.clean(&nodes)?;
        let t = Instant::now();
        Bench::scp_wait(vec![b.scp_spawn(
            &n1,
            &format!("scp-gcm-{i}"),
            Some("aes256-gcm@openssh.com"),
        )?])?;
        s_gcm.push(t.elapsed().as_secs_f64());
    }
    let rss_big = peak_rss_mib();
    let (one_r, one_s, one_g) = (median(r), median(s), median(s_gcm));
    let (mbps_r, mbps_s, mbps_g) = (size_mb / one_r, size_mb / one_s, size_mb / one_g);
    println!(
        "1 node:  russh {mbps_r:.0} MB/s ({one_r:.2} s), scp {mbps_s:.0} MB/s ({one_s:.2} s), ratio {:.2}",
        mbps_r / mbps_s
    );
    let (first, sent) = (median(first), median(sent));
    println!(
        "1 node, russh phases: connect and probe {:.2} s, stream {:.2} s ({:.0} MB/s), fsync + verify + rename {:.2} s",
        first,
        sent,
        size_mb / sent.max(1e-9),
        (one_r - first - sent).max(0.0)
    );
    println!(
        "1 node, scp with russh's cipher (-c aes256-gcm@openssh.com): {mbps_g:.0} MB/s ({one_g:.2} s), russh/that {:.2}",
        mbps_r / mbps_g
    );

    // All nodes at once.
    if nodes.len() > 1 {
        let (mut r, mut s) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            b.clean(&nodes)?;
            let t = Instant::now();
            let name = format!("par-russh-{i}");
            let results =
                futures::future::join_all(nodes.iter().map(|n| b.russh_upload(n, &name))).await;
            for res in results {
                res?;
            }
            r.push(t.elapsed().as_secs_f64());
            b.clean(&nodes)?;
            let t = Instant::now();
            let children = nodes
                .iter()
                .map(|n| b.scp_spawn(n, &format!("par-scp-{i}"), None))
                .collect::<Result<Vec<_>>>()?;
            Bench::scp_wait(children)?;
            s.push(t.elapsed().as_secs_f64());
        }
        let k = nodes.len() as f64;
        let (par_r, par_s) = (median(r), median(s));
        println!(
            "{} nodes in parallel: russh {:.0} MB/s aggregate ({par_r:.2} s), scp {:.0} MB/s aggregate ({par_s:.2} s), ratio {:.2}",
            nodes.len(),
            k * size_mb / par_r,
            k * size_mb / par_s,
            par_s / par_r
        );
    }
    let rss_par = peak_rss_mib();
    println!(
        "peak RSS of this process: {rss_start:.1} MiB before uploading, {rss_small:.1} MiB after a {} MiB upload, {rss_big:.1} MiB after {} MiB uploads, {rss_par:.1} MiB after the parallel run",
        (args.size_mib / 8).max(1),
        args.size_mib
    );
    b.clean(&nodes)?;
    for n in &nodes {
        let _ = lab.exec(n, &format!("rm -rf {DIR}"));
    }
    println!(
        "upload: russh {mbps_r:.0} MB/s, scp {mbps_s:.0} MB/s, ratio {:.2}",
        mbps_r / mbps_s
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn file_is_incompressible_and_sized() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        make_file(&p, 2).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 2 << 20);
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &data).unwrap();
        let packed = z.finish().unwrap();
        assert!(
            packed.len() > data.len() * 99 / 100,
            "compressible: {}",
            packed.len()
        );
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_mib() > 0.0);
    }
}
