//! The command line (clap types only). What each command does lives in
//! [`crate::commands`]; how output looks in [`crate::report`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Run without a command on a terminal to start the wizard, which asks a few questions, saves an
answer file and offers to run it.

Exit codes:
  0    success
  1    the command ran and failed (a host, a phase, a check)
  2    bad input or usage: nothing was changed on any host
  3    support-bundle: the archive was written but is partial
  130  interrupted (Ctrl-C): rerun the same command to continue

Environment:
  NO_COLOR    when set (to anything but empty), no colours
  ${VAR}      any string in an answer file may reference an environment variable";

/// Installs a highly available k3s cluster and the bundled application on 1 or 3 to 5 Linux
/// hosts over SSH.
#[derive(Debug, Parser)]
#[command(
    name = "installer",
    version,
    about = "Installs a highly available k3s cluster and the bundled application on 1 or 3 to 5 Linux hosts over SSH",
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// How to show progress: `auto` (bars on a terminal, else plain lines), `plain` (one line
    /// per event, no colour, no cursor movement) or `json` (one JSON object per line on stdout)
    #[arg(long, value_enum, default_value_t = OutputFormat::Auto, global = true, help_heading = "Global options")]
    pub output: OutputFormat,

    /// Show more detail (-vv: remote command output too)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,

    /// Show only warnings, errors and the result
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// Write the debug log here (default: installer.log beside the answer file, else in the
    /// working directory). Always written, secrets redacted
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub log_file: Option<PathBuf>,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Auto,
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install (or converge) the cluster and the application described by an answer file
    Install(InstallArgs),
    /// Run only the checks: connect to every host and report what would stop an install
    Preflight(PreflightArgs),
    /// Upgrade the cluster to this installer's k3s and application, one node at a time
    Upgrade(UpgradeArgs),
    /// Show the cluster's health: hosts, nodes, workloads, endpoints, the last run
    Status(StatusArgs),
    /// Collect one redacted .tar.gz from every host and the cluster, for a support ticket
    SupportBundle(SupportBundleArgs),
    /// Remove k3s and everything the installer set up from every host (or one agent), keeping
    /// the application's data unless --purge-data
    Uninstall(UninstallArgs),
    /// Check an answer file and print the plan, without connecting to any host
    Validate(ValidateArgs),
    /// Print the answer file's JSON Schema
    Schema,
    /// Print this installer's version and the version of every artifact it carries
    Version,
    /// Print a shell completion script
    #[command(hide = true)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    #[command(hide = true)]
    Man,
}

/// The answer file argument.
#[derive(Debug, Clone, Args)]
pub struct AnswerFileArg {
    /// The answer file (see `installer schema` and docs/answer-file.md)
    #[arg(short = 'f', long = "file", value_name = "ANSWERS.yaml")]
    pub file: PathBuf,
}

/// Options of commands that connect to the hosts.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Trust and record host keys not yet in known_hosts nor pinned in the answer file
    /// (a changed key is always refused)
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// Take the artifacts (k3s, images) from this directory instead of the embedded ones
    #[arg(long, value_name = "DIR", env = "INSTALLER_ASSETS")]
    pub assets: Option<PathBuf>,

    /// The lock file listing the artifacts and their SHA-256 (with --assets)
    #[arg(long, value_name = "FILE", env = "INSTALLER_ASSETS_LOCK")]
    pub assets_lock: Option<PathBuf>,
}

/// `installer install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    /// Connect and gather facts, then print every action the install would take on each
    /// host; change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `installer upgrade`.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    /// Connect, read the cluster, run the checks, then print every node in the order it would
    /// be upgraded and what would change on it; change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `installer status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    /// Trust and record host keys not yet in known_hosts nor pinned in the answer file
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `installer support-bundle`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 complete, 3 written but partial (a node unreachable, the API down, \
a collector failed or timed out: manifest.json says which and why), 1 no archive written."
)]
pub struct SupportBundleArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    /// Write the archive in this directory
    #[arg(short = 'o', long = "out-dir", value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,

    /// Journals and logs from this long ago (`7d`, `12h`)
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,

    /// Only these hosts (as named in the answer file, or their node names), comma-separated
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// Time budget per host: what is left when it runs out is recorded as `timeout`
    #[arg(long, value_name = "DURATION", default_value = "8m", value_parser = humantime::parse_duration)]
    pub node_budget: std::time::Duration,

    /// Do not contact the Kubernetes API (node collectors only, pod logs read on the nodes)
    #[arg(long)]
    pub no_cluster: bool,

    /// Trust and record host keys not yet in known_hosts nor pinned in the answer file
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `installer uninstall`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit codes: 0 every host cleaned (or nothing left on it), 1 a host was not cleaned \
(unreachable, refused, or a step failed: the summary names each and why; rerun once fixed), 2 bad \
input, not confirmed, or no terminal and no --force: nothing was changed, 130 interrupted."
)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    /// Do not ask for the cluster's name (required without a terminal)
    #[arg(long)]
    pub force: bool,

    /// Also delete the application's data (/var/lib/appliance/store) on the hosts
    #[arg(long)]
    pub purge_data: bool,

    /// Do not copy a last etcd snapshot and the cluster token to the workstation first
    /// (without it, uninstall stops when no server's k3s is running)
    #[arg(long)]
    pub no_snapshot: bool,

    /// Only this agent (as the answer file names it, or its node name); its Node is then
    /// deleted from the cluster, which keeps running
    #[arg(long, value_name = "HOST")]
    pub node: Option<String>,

    /// Connect and read the hosts, then print every change uninstall would make; change
    /// nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Trust and record host keys not yet in known_hosts nor pinned in the answer file
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `installer validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,
}

/// `installer preflight`.
#[derive(Debug, Clone, Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub answers: AnswerFileArg,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Cli {
    /// The clap command (for completions, the man page and help tests).
    pub fn command() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
    }
}
