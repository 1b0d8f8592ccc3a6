//! `lab`: starts, inspects and removes the lab of 1 to 5 real Linux hosts (systemd-nspawn machines)
//! that the end-to-end tests, CI and the demo run against. `LAB_ID` (0..=9) selects which lab.
//! A test tool, so it prints directly. See docs/testing.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use installer_tests::lab::{self, Lab, Layout};

/// `println!` that ignores a closed stdout (`lab status | head -1` must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// The lab: several real Linux hosts on this machine (needs root).
#[derive(Parser, Debug)]
#[command(name = "lab", version, about, long_about = None)]
#[command(after_help = "The lab number comes from LAB_ID (0 to 9, default 0).")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build (once) the cached Debian base root filesystem the nodes boot from.
    Build {
        /// Rebuild even if the recipe's tarball is cached.
        #[arg(long)]
        force: bool,
    },
    /// Start N nodes (1 to 5) and wait until each accepts an SSH login.
    Up {
        /// Number of nodes.
        n: usize,
        /// Mount a tmpfs of this many MiB on each node's /var/lib/rancher (for the disk-full fault).
        #[arg(long, value_name = "MIB")]
        rancher_size_mib: Option<u64>,
    },
    /// Stop every node and remove everything the lab created.
    Down,
    /// Show each node's name, address and state.
    Status,
    /// Run a command on a node over SSH (an interactive shell without COMMAND).
    Ssh {
        /// Log in as this user (root, deploy or admin).
        #[arg(long, short = 'u', default_value = lab::ROOT_USER)]
        user: String,
        /// node1 .. node5
        node: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy a local file onto a node: `lab cp FILE node2:/path`.
    Cp {
        /// The local file.
        file: PathBuf,
        /// NODE:PATH on the lab.
        dest: String,
    },
    /// Halt a node cleanly (its disk stays; `start` boots it again).
    Stop { node: String },
    /// Kill every process of a node at once, like a power cut.
    Kill { node: String },
    /// Boot a stopped or killed node again.
    Start { node: String },
    /// Cut a node off the network (host side of its veth down).
    LinkDown { node: String },
    /// Reconnect a node cut off with link-down.
    LinkUp { node: String },
    /// The README's main job: build, start a 3-host lab, install the cluster and the
    /// application on it unattended, and print `installer status`. The lab is taken down at
    /// the end unless `--keep` is given.
    Demo {
        /// Leave the lab running afterwards, to look at it (`lab ssh node1`; `lab down` when done).
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks, each printing its figures (see docs/testing.md).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Write the payload the installer takes in the lab (the k3s stand-in as k3s, small
    /// image archives, an override lock) into DIR and print the installer arguments for it.
    Payload {
        /// Where to write it.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// A full install on 5 hosts against OpenSSH scp of the same payload, peak RSS, rerun.
    Install,
    /// The installer's SSH upload against OpenSSH scp (one node, then all in parallel).
    Upload(installer_tests::bench::upload::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Demo { keep } => {
            if !installer_tests::demo::demo(keep)? {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Bench { what } => match what {
            Bench::Install => installer_tests::demo::bench_install()?,
            Bench::Upload(args) => installer_tests::bench::upload::run(&args)?,
        },
        Cmd::Payload { dir } => {
            let standin = installer_tests::payload::workspace_binary("k3s-standin")?;
            let p = installer_tests::payload::build(
                &dir,
                &standin,
                installer_tests::payload::Sizes::default(),
                &[],
            )?;
            say!("{}", p.args().join(" "));
        }
        Cmd::Build { force } => {
            let t = Instant::now();
            let (path, outcome, pruned) = Lab::build(force)?;
            let what = match outcome {
                lab::BaseOutcome::Cached => "already cached",
                lab::BaseOutcome::Unpacked => "unpacked from the cached tarball",
                lab::BaseOutcome::Built => "built",
            };
            say!(
                "base root filesystem {what} in {:.1?}: {} (recipe {})",
                t.elapsed(),
                path.display(),
                lab::recipe_hash()
            );
            for p in pruned {
                say!("removed the cached base of another recipe: {}", p.display());
            }
        }
        Cmd::Up {
            n,
            rancher_size_mib,
        } => {
            if !(1..=lab::MAX_NODES).contains(&n) {
                bail!(
                    "a lab has 1 to {} nodes, not {n}\nhint: `lab up 3`",
                    lab::MAX_NODES
                );
            }
            let t = Instant::now();
            let mut b = Lab::builder(n).cli_owned();
            if let Some(m) = rancher_size_mib {
                b = b.rancher_size_mib(m);
            }
            let lab = b.up()?;
            let mut text = format!("lab {}: {n} node(s) up in {:.1?}\n", lab.id(), t.elapsed());
            text.push_str(&nodes_table(&lab, true));
            text.push_str(&format!("key:          {}\n", lab.key_path().display()));
            text.push_str(&format!(
                "known_hosts:  {}\n",
                lab.known_hosts_path().display()
            ));
            text.push_str(&format!(
                "answer file:  {}\n",
                lab.answer_file_path().display()
            ));
            text.push_str(&format!(
                "log in:       LAB_ID={} lab ssh node1\n",
                lab.id()
            ));
            // Hand the lab over to `lab down` before printing: a closed stdout must not take it down.
            lab.detach()?;
            out(&text);
        }
        Cmd::Down => {
            let t = Instant::now();
            let layout = Layout::from_env()?;
            if lab::down_from_state()? {
                say!(
                    "lab {}: down in {:.1?}, nothing left behind",
                    layout.id(),
                    t.elapsed()
                );
            } else {
                say!("lab {}: not up, nothing to do", layout.id());
            }
        }
        Cmd::Status => {
            let layout = Layout::from_env()?;
            match Lab::attach() {
                Ok(lab) => {
                    say!(
                        "lab {}: bridge {} {}",
                        lab.id(),
                        layout.bridge(),
                        lab.bridge_addr()
                    );
                    out(&nodes_table(&lab, false));
                }
                Err(_) => say!("lab {}: not up", layout.id()),
            }
        }
        Cmd::Ssh {
            user,
            node,
            command,
        } => {
            lab::require_root()?;
            let lab = Lab::attach()?;
            let node = lab.node(&node)?;
            let mut c = lab.ssh_command(&user, node)?;
            if command.is_empty() {
                c.arg("-t");
            } else {
                c.arg(command.join(" "));
            }
            let status = c.status().context("running ssh")?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(255).clamp(0, 255) as u8
            ));
        }
        Cmd::Cp { file, dest } => {
            let (node, path) = dest.split_once(':').with_context(|| {
                format!("{dest:?} is not NODE:PATH\nhint: lab cp ./file node2:/tmp/file")
            })?;
            if path.is_empty() {
                bail!("{dest:?} has no path after the colon\nhint: lab cp ./file node2:/tmp/file");
            }
            lab::require_root()?;
            let lab = Lab::attach()?;
            let node = lab.node(node)?;
            lab.cp(&file, node, path)?;
        }
        Cmd::Stop { node } => fault(&node, |lab, n| lab.stop_node(n))?,
        Cmd::Kill { node } => fault(&node, |lab, n| lab.kill_node(n))?,
        Cmd::Start { node } => fault(&node, |lab, n| lab.start_node(n))?,
        Cmd::LinkDown { node } => fault(&node, |lab, n| lab.link_down(n))?,
        Cmd::LinkUp { node } => fault(&node, |lab, n| lab.link_up(n))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn fault(node: &str, f: impl FnOnce(&Lab, &lab::Node) -> Result<()>) -> Result<()> {
    lab::require_root()?;
    let lab = Lab::attach()?;
    let n = lab.node(node)?.clone();
    f(&lab, &n)
}

/// Prints to stdout, ignoring a closed pipe (`lab status | head -1`).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn nodes_table(lab: &Lab, fresh: bool) -> String {
    let mut s = format!(
        "{:<6} {:<12} {:<10} {:<10} host key\n",
        "NODE", "ADDRESS", "NSPAWN", "SYSTEMD"
    );
    for (i, n) in lab.nodes().iter().enumerate() {
        let running = lab.is_running(n);
        let systemd = if !running {
            "-".to_string()
        } else if fresh {
            lab.boot_states().get(i).cloned().unwrap_or_default()
        } else {
            lab.exec(n, "systemctl is-system-running")
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        s.push_str(&format!(
            "{:<6} {:<12} {:<10} {:<10} {}\n",
            n.name,
            n.addr.to_string(),
            if running { "running" } else { "stopped" },
            systemd,
            n.host_key_fingerprint
        ));
    }
    s
}
