//! The lab: 1 to 5 real Linux hosts on one machine, for end-to-end tests, CI and the demo.
//!
//! Each node is a systemd-nspawn machine booting systemd from its own overlay over a shared Debian
//! base, with its own address on a lab bridge, hostname, fresh SSH host key, cgroup subtree and a plain
//! directory for `/var/lib/rancher` (recipe measured in ../shared/docs/lab.md; figures and limits in
//! docs/testing.md). `LAB_ID` (0..=9) keeps concurrent labs apart.
//!
//! ```no_run
//! use installer_tests::lab::Lab;
//! # fn t() -> anyhow::Result<()> {
//! let Some(lab) = installer_tests::lab_or_skip!(3) else { return Ok(()) };
//! let out = lab.ssh(&lab.nodes()[0], "hostname")?;
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node1");
//! // lab.answer_file_path(), lab.key_path(), lab.known_hosts_path() describe the lab to the installer.
//! # Ok(()) }
//! ```
//!
//! Users on every node: [`ROOT_USER`] and [`NOPASSWD_SUDO_USER`] log in with the lab key;
//! [`PASSWORD_SUDO_USER`] logs in with the lab key or with [`PASSWORD_SUDO_USER_PASSWORD`] (the only
//! user with SSH password login) and needs that password for sudo.

mod answer;
mod cmd;
mod faults;
mod keys;
mod layout;
mod lock;
mod net;
mod node;
mod prereq;
mod recipe;
mod state;
mod teardown;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use faults::{DiskFillGuard, PortGuard, SshdGuard};
pub use keys::fingerprint;
pub use layout::{Layout, MAX_LAB_ID, MAX_NODES};
pub use prereq::{is_root, require_lab, require_root, skip_reason};
pub use recipe::{BaseOutcome, SUITE, recipe_hash};
pub use teardown::leftovers;

use lock::FileLock;
use state::{NodeRecord, Owner, Proc, State};

/// Root logs in with the lab key (ed25519 or RSA).
pub const ROOT_USER: &str = "root";
/// A user with passwordless sudo; logs in with the lab key.
pub const NOPASSWD_SUDO_USER: &str = "deploy";
/// A user whose sudo asks for [`PASSWORD_SUDO_USER_PASSWORD`]; logs in with the lab key, and is the only
/// user allowed SSH password login (with that same password).
pub const PASSWORD_SUDO_USER: &str = "admin";
/// The password of [`PASSWORD_SUDO_USER`] (sudo and SSH password login). A test constant, not a secret.
pub const PASSWORD_SUDO_USER_PASSWORD: &str = "lab-admin-password";
/// The passphrase of [`Lab::encrypted_key_path`]. A test constant, not a secret.
pub const ENCRYPTED_KEY_PASSPHRASE: &str = "lab-key-passphrase";

/// Default time a node has to boot and accept an SSH login.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Default bound on one `Lab::ssh` command.
const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(600);

/// One node of a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 1-based number.
    pub index: usize,
    /// `node1` .. `node5`: the CLI's name for it.
    pub name: String,
    /// The node's hostname (same as `name`).
    pub hostname: String,
    /// The systemd-nspawn machine name, unique across labs: `lab<ID>-node<k>`.
    pub machine: String,
    /// The node's address on the lab bridge.
    pub addr: Ipv4Addr,
    /// The node's ed25519 host public key line, as in its /etc/ssh/ssh_host_ed25519_key.pub.
    pub host_public_key: String,
    /// `SHA256:...` fingerprint of the host key, as OpenSSH prints it.
    pub host_key_fingerprint: String,
}

/// Options of a lab; [`LabBuilder::up`] starts it.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    nodes: usize,
    rancher_size_mib: Option<u64>,
    boot_timeout: Duration,
    cli_owned: bool,
    forward_guard: bool,
}

impl LabBuilder {
    /// A lab of `nodes` nodes (1 to 5; checked by `up`).
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            rancher_size_mib: None,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            cli_owned: false,
            forward_guard: false,
        }
    }

    /// Mount a tmpfs of `mib` MiB on each node's /var/lib/rancher instead of a plain directory, so
    /// [`Lab::fill_disk`] can fill it (the disk-full fault).
    pub fn rancher_size_mib(mut self, mib: u64) -> Self {
        self.rancher_size_mib = Some(mib);
        self
    }

    /// How long each node may take to boot and accept SSH (default 90 s).
    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// Add the nftables table that drops forwarded lab traffic even when the host does not forward
    /// (it is always added when the host forwards). Needs nftables.
    pub fn forward_guard(mut self, always: bool) -> Self {
        self.forward_guard = always;
        self
    }

    /// Used by the `lab` CLI: the lab outlives this process and a later `Lab::up` refuses to touch it.
    #[doc(hidden)]
    pub fn cli_owned(mut self) -> Self {
        self.cli_owned = true;
        self
    }

    /// Starts the lab (see [`Lab::up`]).
    pub fn up(self) -> Result<Lab> {
        Lab::start(self)
    }
}

/// Lets `lab_or_skip!` take a node count or a builder.
pub trait IntoLabBuilder {
    /// The builder.
    fn into_lab_builder(self) -> LabBuilder;
}
impl IntoLabBuilder for LabBuilder {
    fn into_lab_builder(self) -> LabBuilder {
        self
    }
}
impl IntoLabBuilder for i32 {
    fn into_lab_builder(self) -> LabBuilder {
        LabBuilder::new(usize::try_from(self).unwrap_or(0))
    }
}
impl IntoLabBuilder for usize {
    fn into_lab_builder(self) -> LabBuilder {
        LabBuilder::new(self)
    }
}

/// Starts a lab for a test, or skips the test with the reason printed (fails it under
/// `LAB_REQUIRED=1`). Takes a node count or a [`LabBuilder`]; evaluates to `Option<Lab>`.
/// A failing `up` fails the test.
///
/// ```no_run
/// # fn t() {
/// let Some(lab) = installer_tests::lab_or_skip!(3) else { return };
/// # }
/// ```
#[macro_export]
macro_rules! lab_or_skip {
    ($nodes_or_builder:expr) => {
        if $crate::lab::require_lab() {
            match $crate::lab::IntoLabBuilder::into_lab_builder($nodes_or_builder).up() {
                Ok(lab) => Some(lab),
                Err(e) => panic!("lab up failed: {e:#}"),
            }
        } else {
            None
        }
    };
}

/// A running lab. Dropping a lab started by [`Lab::up`] tears it down (prefer [`Lab::down`] to see
/// errors); a lab from [`Lab::attach`] is left running.
pub struct Lab {
    layout: Layout,
    nodes: Vec<Node>,
    state: Mutex<State>,
    children: Mutex<BTreeMap<usize, Child>>,
    _lock: Option<FileLock>,
    owned: bool,
    boot_states: Vec<String>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.layout.id())
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Lab {
    /// Starts a lab of `n` nodes (1 to 5) with default options, for the `LAB_ID` of the environment.
    /// Waits for every node to accept an SSH login and finish booting. Blocks while another user of the
    /// same `LAB_ID` holds it. Builds the base root filesystem first if it is not cached.
    pub fn up(n: usize) -> Result<Lab> {
        LabBuilder::new(n).up()
    }

    /// Options for a lab of `n` nodes.
    pub fn builder(n: usize) -> LabBuilder {
        LabBuilder::new(n)
    }

    /// Builds (or unpacks) the cached base root filesystem; `force` rebuilds it from scratch. Then
    /// removes cached bases of other recipes that no running lab uses (listed in the result).
    pub fn build(force: bool) -> Result<(PathBuf, BaseOutcome, Vec<PathBuf>)> {
        require_root()?;
        let (path, outcome) = recipe::ensure_base(force)?;
        Ok((path, outcome, recipe::prune_cache()))
    }

    /// The running lab of this `LAB_ID` (e.g. one started with `lab up`), without owning it: dropping
    /// the returned value leaves the lab running.
    pub fn attach() -> Result<Lab> {
        let layout = Layout::from_env()?;
        let st = State::load(&layout)?
            .filter(State::same_boot)
            .with_context(|| {
                format!(
                    "lab {} is not up\nhint: start it with `LAB_ID={0} lab up 3`",
                    layout.id()
                )
            })?;
        let nodes = st
            .nodes
            .iter()
            .map(|r| node_of(&layout, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Lab {
            boot_states: vec![String::new(); nodes.len()],
            layout,
            nodes,
            state: Mutex::new(st),
            children: Mutex::new(BTreeMap::new()),
            _lock: None,
            owned: false,
        })
    }

    fn start(b: LabBuilder) -> Result<Lab> {
        if !(1..=MAX_NODES).contains(&b.nodes) {
            bail!(
                "a lab has 1 to {MAX_NODES} nodes, not {}\nhint: `lab up 3`",
                b.nodes
            );
        }
        require_root()?;
        let layout = Layout::from_env()?;
        let lock = FileLock::exclusive(&layout.lock_path(), &format!("lab {}", layout.id()))?;
        clear_leftover(&layout)?;
        let stray = teardown::leftovers(&layout);
        if !stray.is_empty() {
            bail!(
                "lab {} is not up, yet these of its resources exist:\n  {}\nhint: they are not recorded in a state file, so the lab will not touch them; remove them by hand or use another LAB_ID",
                layout.id(),
                stray.join("\n  ")
            );
        }
        net::check_free(&layout, false)?;
        let (base, _) = recipe::ensure_base(false)?;
        std::fs::create_dir_all(layout.state_dir())
            .with_context(|| format!("creating {}", layout.state_dir().display()))?;
        let owner = if b.cli_owned {
            Owner::Cli
        } else {
            Owner::Process(Proc::me()?)
        };
        let st = State::new(&layout, owner, base, b.rancher_size_mib)?;
        st.save(&layout)?;
        let mut lab = Lab {
            layout,
            nodes: Vec::new(),
            state: Mutex::new(st),
            children: Mutex::new(BTreeMap::new()),
            _lock: Some(lock),
            owned: true,
            boot_states: Vec::new(),
        };
        match lab.bring_up(&b) {
            Ok(()) => Ok(lab),
            Err(e) => {
                lab.owned = false;
                match lab.teardown() {
                    Ok(()) => Err(e.context(format!(
                        "lab {} did not come up (cleaned up)",
                        lab.layout.id()
                    ))),
                    Err(t) => Err(e.context(format!(
                        "lab {} did not come up, and cleaning up failed too: {t:#}",
                        lab.layout.id()
                    ))),
                }
            }
        }
    }

    fn bring_up(&mut self, b: &LabBuilder) -> Result<()> {
        let layout = self.layout.clone();
        let t0 = Instant::now();
        keys::generate_ed25519(&layout)?;
        let rsa_layout = layout.clone();
        let rsa = std::thread::spawn(move || keys::generate_rsa(&rsa_layout));

        net::create_bridge(&layout)?;
        self.update(|st| st.bridge = true)?;
        net::configure_bridge(&layout)?;
        if b.forward_guard || net::host_forwards() {
            net::add_nft_table(&layout)?;
            self.update(|st| st.nft_table = true)?;
        }

        let base = self.st().base.clone();
        for k in 1..=b.nodes {
            let rec = NodeRecord {
                index: k,
                addr: layout.node_addr(k),
                host_public_key: String::new(),
                rancher_mounted: false,
                overlay_mounted: false,
                cgroups: Vec::new(),
                nspawn_lock: None,
                nspawn: None,
            };
            self.update(|st| st.nodes.push(rec))?;
            let mut rec = self.node_record(k)?;
            let r = node::mount_node(&layout, k, &base, b.rancher_size_mib, &mut rec);
            self.update(|st| replace_node(st, rec))?;
            r?;
        }
        rsa.join()
            .map_err(|_| anyhow::anyhow!("the RSA key generator panicked"))??;
        let authorized = keys::authorized_keys(&layout)?;
        let mut known_hosts = String::new();
        for k in 1..=b.nodes {
            let host_pub = node::write_node_files(&layout, k, &authorized)?;
            known_hosts.push_str(&keys::known_hosts_line(
                &layout.node_addr(k).to_string(),
                &host_pub,
            )?);
            known_hosts.push('\n');
            let mut rec = self.node_record(k)?;
            rec.host_public_key = host_pub;
            let r = node::create_cgroups(&layout, k, &mut rec);
            self.update(|st| replace_node(st, rec))?;
            r?;
        }
        std::fs::write(layout.known_hosts_path(), &known_hosts)?;
        let records = self.st().nodes.clone();
        self.nodes = records
            .iter()
            .map(|r| node_of(&layout, r))
            .collect::<Result<_>>()?;
        std::fs::write(layout.answer_file_path(), self.render_answer_file())?;

        for k in 1..=b.nodes {
            self.spawn_node(k)?;
        }
        self.boot_states = self.wait_all_ready(b.boot_timeout)?;
        if std::env::var_os("LAB_VERBOSE").is_some() {
            eprintln!(
                "lab {}: {} nodes up in {:.1?}",
                layout.id(),
                b.nodes,
                t0.elapsed()
            );
        }
        Ok(())
    }

    fn render_answer_file(&self) -> String {
        answer::render(&answer::AnswerInput {
            lab_id: self.layout.id(),
            key_path: &self.layout.key_path(),
            known_hosts_path: &self.layout.known_hosts_path(),
            hosts: self
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addr, n.host_key_fingerprint.clone()))
                .collect(),
        })
    }

    fn spawn_node(&self, k: usize) -> Result<Proc> {
        let rec = self.node_record(k)?;
        let child = node::spawn(&self.layout, k, &rec)?;
        let p = Proc::of(child.id())?;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, child);
        self.update(|st| {
            if let Some(n) = st.node_mut(k) {
                n.nspawn = Some(p);
            }
        })?;
        Ok(p)
    }

    fn wait_all_ready(&self, timeout: Duration) -> Result<Vec<String>> {
        let idx: Vec<usize> = self.nodes.iter().map(|n| n.index).collect();
        let results: Vec<Result<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = idx
                .iter()
                .map(|&k| s.spawn(move || self.wait_node_ready(k, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("waiting thread panicked")))
                })
                .collect()
        });
        let mut states = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(s) => states.push(s),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(states)
    }

    fn wait_node_ready(&self, k: usize, timeout: Duration) -> Result<String> {
        let rec = self.node_record(k)?;
        let p = rec.nspawn.context("node was not started")?;
        let node = self.node_by_index(k)?;
        node::wait_ready(
            &self.layout,
            k,
            p,
            |c, t| self.ssh_as_timeout(ROOT_USER, node, c, t),
            timeout,
        )
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and saves it at once (so a crash leaves an accurate record).
    fn update(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut st = self.st();
        f(&mut st);
        st.save(&self.layout)
    }

    fn node_record(&self, k: usize) -> Result<NodeRecord> {
        self.st()
            .node(k)
            .cloned()
            .with_context(|| format!("node{k} is not part of lab {}", self.layout.id()))
    }

    fn node_by_index(&self, k: usize) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.index == k)
            .with_context(|| format!("node{k} is not part of lab {}", self.layout.id()))
    }

    fn teardown(&self) -> Result<()> {
        let mut st = self.st();
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        teardown::teardown(&self.layout, &mut st, &mut children)
    }

    /// Tears the lab down (works for an attached lab too), then checks that nothing of it is left
    /// (no mount, cgroup, interface, nftables table, nspawn process or state). Errors list what is left.
    pub fn down(mut self) -> Result<()> {
        self.owned = false;
        self.teardown()?;
        let left = leftovers(&self.layout);
        if !left.is_empty() {
            bail!(
                "after down, lab {} left behind:\n  {}",
                self.layout.id(),
                left.join("\n  ")
            );
        }
        Ok(())
    }

    /// Leaves the lab running after this value is dropped, owned by the CLI (`lab down` removes it).
    pub fn detach(mut self) -> Result<()> {
        self.update(|st| st.owner = Owner::Cli)?;
        self.owned = false;
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// The lab's `LAB_ID`.
    pub fn id(&self) -> u8 {
        self.layout.id()
    }

    /// Names, addresses and paths of this lab.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name` (`node2` or `2`).
    pub fn node(&self, name: &str) -> Result<&Node> {
        Layout::parse_node_name(name)
            .and_then(|k| self.nodes.iter().find(|n| n.index == k))
            .with_context(|| {
                format!(
                    "no node {name:?} in lab {} (it has node1 to node{})",
                    self.layout.id(),
                    self.nodes.len()
                )
            })
    }

    /// `systemctl is-system-running` of each node right after `up` (`running` or `degraded`).
    pub fn boot_states(&self) -> &[String] {
        &self.boot_states
    }

    /// The lab's private key: ed25519, no passphrase. Authorized for every node user.
    pub fn key_path(&self) -> PathBuf {
        self.layout.key_path()
    }

    /// The same ed25519 key encrypted with [`ENCRYPTED_KEY_PASSPHRASE`].
    pub fn encrypted_key_path(&self) -> PathBuf {
        self.layout.encrypted_key_path()
    }

    /// An RSA (3072-bit, no passphrase) key, also authorized for every node user.
    pub fn rsa_key_path(&self) -> PathBuf {
        self.layout.rsa_key_path()
    }

    /// known_hosts with every node's real host key (by address).
    pub fn known_hosts_path(&self) -> PathBuf {
        self.layout.known_hosts_path()
    }

    /// The answer file describing the lab (root over SSH with the lab key and known_hosts).
    pub fn answer_file_path(&self) -> PathBuf {
        self.layout.answer_file_path()
    }

    /// The host's address on the lab bridge (the nodes' gateway).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.layout.bridge_addr()
    }

    /// The lab's state directory (keys, known_hosts, answer file, node overlays, console logs).
    pub fn state_dir(&self) -> PathBuf {
        self.layout.state_dir()
    }

    /// The console log (nspawn and systemd boot output) of a node.
    pub fn console_log_path(&self, node: &Node) -> PathBuf {
        node::NodeDirs::of(&self.layout, node.index).console
    }

    /// A system `ssh` command to `node` as `user` with the lab key and strict host key checking
    /// against the lab's known_hosts; append the remote command as one argument.
    pub fn ssh_command(&self, user: &str, node: &Node) -> Result<Command> {
        let mut c = cmd::command("ssh")?;
        c.args(["-F", "/dev/null", "-i"])
            .arg(self.layout.key_path())
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.layout.known_hosts_path().display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
            ])
            .args([
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-l", user])
            .arg(node.addr.to_string());
        Ok(c)
    }

    /// Runs `command` (a shell command line) on `node` as root over SSH. A non-zero exit is not an
    /// error: look at `Output::status` (255 means SSH itself failed).
    pub fn ssh(&self, node: &Node, command: &str) -> Result<Output> {
        self.ssh_as(ROOT_USER, node, command)
    }

    /// Like [`Lab::ssh`], as another user.
    pub fn ssh_as(&self, user: &str, node: &Node, command: &str) -> Result<Output> {
        self.ssh_as_timeout(user, node, command, DEFAULT_SSH_TIMEOUT)
    }

    /// Like [`Lab::ssh_as`], killing the command after `timeout`.
    pub fn ssh_as_timeout(
        &self,
        user: &str,
        node: &Node,
        command: &str,
        timeout: Duration,
    ) -> Result<Output> {
        let mut c = self.ssh_command(user, node)?;
        c.arg(command);
        cmd::output_timeout(&mut c, timeout)
            .with_context(|| format!("ssh {user}@{} ({})", node.addr, node.name))
    }

    /// Runs `command` on `node` as root and returns its stdout; fails (with stderr) on a non-zero exit.
    pub fn ssh_ok(&self, node: &Node, command: &str) -> Result<String> {
        let out = self.ssh(node, command)?;
        if !out.status.success() {
            bail!(
                "`{command}` on {} failed ({}): {}",
                node.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies the local file `local` to `remote_path` on `node` (as root, with scp).
    pub fn cp(&self, local: &Path, node: &Node, remote_path: &str) -> Result<()> {
        let mut c = cmd::command("scp")?;
        c.args(["-q", "-F", "/dev/null", "-i"])
            .arg(self.layout.key_path())
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.layout.known_hosts_path().display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(local)
            .arg(format!("{ROOT_USER}@{}:{remote_path}", node.addr));
        let out = cmd::output_timeout(&mut c, DEFAULT_SSH_TIMEOUT)?;
        cmd::check(&c, &out)
            .with_context(|| format!("copying {} to {}:{remote_path}", local.display(), node.name))
    }

    /// Runs `script` with `sh -c` inside `node`'s namespaces without SSH (nsenter): works while its
    /// sshd is down or its link is cut. For test plumbing and fault helpers; the installer itself
    /// only ever uses SSH.
    pub fn exec(&self, node: &Node, script: &str) -> Result<Output> {
        let p = self.running_nspawn(node)?;
        node::nsenter(p, script, Duration::from_secs(120))
            .with_context(|| format!("nsenter into {}", node.name))
    }

    /// True while the node's systemd-nspawn process runs.
    pub fn is_running(&self, node: &Node) -> bool {
        self.st()
            .node(node.index)
            .and_then(|r| r.nspawn)
            .is_some_and(|p| p.alive())
    }

    fn running_nspawn(&self, node: &Node) -> Result<Proc> {
        self.st()
            .node(node.index)
            .and_then(|r| r.nspawn)
            .filter(|p| p.alive())
            .with_context(|| format!("{} is not running", node.name))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.owned = false;
            if let Err(e) = self.teardown() {
                eprintln!("lab {}: teardown on drop failed: {e:#}", self.layout.id());
            }
        }
        // The lock (a field) is released after this body: after the teardown.
    }
}

fn replace_node(st: &mut State, rec: NodeRecord) {
    if let Some(n) = st.node_mut(rec.index) {
        *n = rec;
    }
}

fn node_of(layout: &Layout, r: &NodeRecord) -> Result<Node> {
    let name = Layout::node_name(r.index);
    Ok(Node {
        index: r.index,
        hostname: name.clone(),
        name,
        machine: layout.machine(r.index),
        addr: r.addr,
        host_key_fingerprint: fingerprint(&r.host_public_key)?,
        host_public_key: r.host_public_key.clone(),
    })
}

/// Deals with a state file found at `up` (the caller holds the lab lock): a leftover of a dead test
/// process or of an earlier boot is torn down; a lab started with `lab up` is refused.
fn clear_leftover(layout: &Layout) -> Result<()> {
    let Some(mut st) = State::load(layout)? else {
        // A state directory without a state file (a crash between creating it and the first save)
        // holds nothing of value; remove_tree refuses if anything is mounted inside.
        if layout.state_dir().is_dir() {
            state::remove_tree(&layout.state_dir())?;
        }
        return Ok(());
    };
    if st.same_boot() {
        match &st.owner {
            // A lab started with `lab up` (or `lab demo --keep`) is refused while any of its
            // hosts runs. One whose hosts are all gone (killed, or a machine restored without
            // its processes) holds nothing that could be brought back: it is a leftover.
            Owner::Cli if hosts_running(layout) => bail!(
                "lab {0} is already up (started with `lab up` or `lab demo --keep`)\nhint: run `LAB_ID={0} lab down` first, or use another LAB_ID",
                layout.id()
            ),
            Owner::Cli => {
                eprintln!(
                    "lab {}: removing a lab started with `lab up` whose hosts are no longer running",
                    layout.id()
                );
            }
            Owner::Process(p) if p.alive() => bail!(
                "lab {} is in use by process {} (its lock was not held: was the Lab leaked?)",
                layout.id(),
                p.pid
            ),
            Owner::Process(p) => {
                eprintln!(
                    "lab {}: removing what process {} (now gone) left behind",
                    layout.id(),
                    p.pid
                );
            }
        }
    }
    teardown::teardown(layout, &mut st, &mut BTreeMap::new())
}

/// True when a systemd-nspawn process of one of this lab's hosts is running.
fn hosts_running(layout: &Layout) -> bool {
    leftovers(layout).iter().any(|l| l.starts_with("process:"))
}

/// Tears down the lab of this `LAB_ID` from its state file (the CLI's `down`). Waits for the lab lock,
/// so a test's lab is not pulled from under it. Returns false when there was nothing to do.
pub fn down_from_state() -> Result<bool> {
    require_root()?;
    let layout = Layout::from_env()?;
    let _lock = FileLock::exclusive(&layout.lock_path(), &format!("lab {}", layout.id()))?;
    let Some(mut st) = State::load(&layout)? else {
        let left = leftovers(&layout);
        if !left.is_empty() {
            bail!(
                "lab {} has no state file, yet these of its resources exist:\n  {}\nhint: the lab only removes what its state records; remove them by hand",
                layout.id(),
                left.join("\n  ")
            );
        }
        return Ok(false);
    };
    teardown::teardown(&layout, &mut st, &mut BTreeMap::new())?;
    let left = leftovers(&layout);
    if !left.is_empty() {
        bail!(
            "after down, lab {} left behind:\n  {}",
            layout.id(),
            left.join("\n  ")
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Lab>();
        send_sync::<Node>();
    }

    #[test]
    fn the_macro_takes_counts_and_builders() {
        assert_eq!(3.into_lab_builder().nodes, 3);
        assert_eq!(
            Lab::builder(2)
                .rancher_size_mib(8)
                .into_lab_builder()
                .rancher_size_mib,
            Some(8)
        );
    }
}
