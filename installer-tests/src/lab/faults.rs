//! Faults for reliability tests, each undoable: stop, kill (power cut) and start a node; cut a node off
//! the network and restore it; kill a node's sshd; occupy a TCP port on a node; fill a node's
//! /var/lib/rancher. The ones that change a running node return a guard that undoes the fault when
//! dropped (or explicitly with `restore`). Nothing here touches what the host kernel shares (clock,
//! sysctls, modules): docs/testing.md lists what the lab cannot fake.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::net;
use super::node;
use super::{Lab, Node};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

impl Lab {
    /// Halts `node` cleanly (SIGTERM to nspawn: systemd shuts down, about 2 s), like `poweroff`.
    /// Its disk (overlay) stays; [`Lab::start_node`] boots it again.
    pub fn stop_node(&self, node: &Node) -> Result<()> {
        let p = self.running_nspawn(node)?;
        let clean = node::terminate(p, Duration::from_secs(20));
        let rec = self.node_record(node.index)?;
        if !clean {
            node::kill_all(&rec)?;
        }
        self.after_exit(node)?;
        if !clean {
            bail!("{} did not halt within 20 s and was killed", node.name);
        }
        Ok(())
    }

    /// Kills every process of `node` at once, like pulling its power cord (no shutdown, no sync).
    /// [`Lab::start_node`] boots it again.
    pub fn kill_node(&self, node: &Node) -> Result<()> {
        self.running_nspawn(node)?;
        let rec = self.node_record(node.index)?;
        node::kill_all(&rec)?;
        self.after_exit(node)
    }

    fn after_exit(&self, node: &Node) -> Result<()> {
        if let Some(mut c) = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node.index)
        {
            let _ = c.wait();
        }
        let rec = self.node_record(node.index)?;
        node::kill_all(&rec)?;
        self.update(|st| {
            if let Some(n) = st.node_mut(node.index) {
                n.nspawn = None;
            }
        })
    }

    /// Boots a stopped or killed `node` again (same disk, same host key) and waits for its SSH login.
    pub fn start_node(&self, node: &Node) -> Result<()> {
        if self.is_running(node) {
            bail!("{} is already running", node.name);
        }
        self.spawn_node(node.index)?;
        self.wait_node_ready(node.index, Duration::from_secs(90))?;
        Ok(())
    }

    /// Reboots `node`: a clean halt, then a boot of the same disk (a `reboot` inside a node only
    /// stops it, since nothing restarts the nspawn process). Waits for the SSH login.
    pub fn reboot_node(&self, node: &Node) -> Result<()> {
        self.stop_node(node)?;
        self.start_node(node)
    }

    /// Cuts `node` off the network: the host side of its veth goes down. The node keeps its address
    /// and routes; no packet reaches it or leaves it. Undo with [`Lab::link_up`].
    pub fn link_down(&self, node: &Node) -> Result<()> {
        self.running_nspawn(node)?;
        net::set_veth(&self.layout, node.index, false)
    }

    /// Reconnects a node cut off by [`Lab::link_down`].
    pub fn link_up(&self, node: &Node) -> Result<()> {
        self.running_nspawn(node)?;
        net::set_veth(&self.layout, node.index, true)
    }

    /// Kills `node`'s sshd listener with SIGKILL and keeps systemd from restarting it, like an sshd
    /// crash: existing sessions survive, new logins are refused. The guard starts sshd again.
    pub fn kill_sshd(&self, node: &Node) -> Result<SshdGuard<'_>> {
        let script = "set -e; mkdir -p /run/systemd/system/ssh.service.d; \
             printf '[Service]\\nRestart=no\\n' > /run/systemd/system/ssh.service.d/lab-fault.conf; \
             systemctl daemon-reload; systemctl kill --kill-whom=main --signal=SIGKILL ssh.service";
        self.exec_ok(node, script)?;
        wait_port(node, 22, false, Duration::from_secs(10))
            .context("sshd still accepts connections")?;
        Ok(SshdGuard {
            lab: self,
            node: node.clone(),
            restored: false,
        })
    }

    /// Makes a process on `node` listen on TCP `port` (all addresses), as another program would.
    /// Fails if the port is already taken. The guard stops it.
    pub fn occupy_port(&self, node: &Node, port: u16) -> Result<PortGuard<'_>> {
        let unit = format!("lab-occupy-{port}");
        // perl-base is in every Debian; the listener accepts and closes connections. The program is
        // a file: systemd would expand the `$` of an inline one (systemd.service(5), "Command lines").
        let script = format!(
            "cat > /run/{unit}.pl <<'EOF'\n\
             my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => {port}, Listen => 16, ReuseAddr => 1)\n\
             \x20   or die \"bind: $!\\n\";\n\
             while (1) {{ my $c = $s->accept; close $c if $c }}\n\
             EOF\n\
             systemd-run --quiet --unit={unit} --description='lab fault: occupy TCP {port}' /usr/bin/perl -MIO::Socket::INET /run/{unit}.pl"
        );
        self.exec_ok(node, &script)?;
        let guard = PortGuard {
            lab: self,
            node: node.clone(),
            port,
            restored: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Ours only if the listening socket belongs to the unit's main process (the port may
            // be taken by something else, and then perl fails to bind).
            let out = self.exec(
                node,
                &format!(
                    "echo state=$(systemctl is-active {unit}.service) pid=$(systemctl show -p MainPID --value {unit}.service); ss -Hltnp 'sport = :{port}'"
                ),
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let pid = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))
                .unwrap_or("0")
                .to_string();
            if text.contains("state=active") && pid != "0" && text.contains(&format!("pid={pid},"))
            {
                return Ok(guard);
            }
            if text.contains("state=failed")
                || text.contains("state=inactive")
                || Instant::now() >= deadline
            {
                let log = self
                    .exec(node, &format!("journalctl -q -u {unit} -n 5 --no-pager"))
                    .ok();
                let log = log
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                bail!(
                    "could not occupy TCP {port} on {}: {}",
                    node.name,
                    log.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fills `node`'s /var/lib/rancher until writes fail with "No space left on device". Needs a lab
    /// built with [`super::LabBuilder::rancher_size_mib`] (the host's disk is never filled). The guard
    /// deletes the filler file.
    pub fn fill_disk(&self, node: &Node) -> Result<DiskFillGuard<'_>> {
        if self.st().rancher_size_mib.is_none() {
            bail!(
                "fill_disk needs a size-limited /var/lib/rancher\nhint: start the lab with Lab::builder(n).rancher_size_mib(64).up()"
            );
        }
        // Written from the host side of the node's tmpfs: works whether the node runs or not.
        let path = filler_path(self, node);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let guard = DiskFillGuard {
            lab: self,
            node: node.clone(),
            restored: false,
        };
        let chunk = vec![0u8; 1 << 20];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        // The last partial chunk may have left a few bytes: fill them one page at a time.
        let page = vec![0u8; 4096];
        while f.write_all(&page).is_ok() {}
        Ok(guard)
    }

    /// [`Lab::exec`], failing on a non-zero exit.
    pub fn exec_ok(&self, node: &Node, script: &str) -> Result<String> {
        let out = self.exec(node, script)?;
        if !out.status.success() {
            bail!(
                "`{script}` in {} failed ({}): {}",
                node.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The filler file, seen from the host (the node sees it as /var/lib/rancher/.lab-disk-fill).
fn filler_path(lab: &Lab, node: &Node) -> std::path::PathBuf {
    node::NodeDirs::of(&lab.layout, node.index)
        .rancher
        .join(".lab-disk-fill")
}

/// Waits until TCP `port` on `node` accepts (`open`) or refuses (`!open`) connections.
fn wait_port(node: &Node, port: u16, open: bool, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((node.addr, port));
    let deadline = Instant::now() + timeout;
    loop {
        let is_open = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok();
        if is_open == open {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{addr} is still {} after {timeout:?}",
                if is_open { "open" } else { "closed" }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Undoes [`Lab::kill_sshd`]: sshd runs again (and systemd may restart it again).
#[must_use = "dropping the guard restarts sshd at once"]
pub struct SshdGuard<'a> {
    lab: &'a Lab,
    node: Node,
    restored: bool,
}

impl SshdGuard<'_> {
    /// Starts sshd again and waits until it accepts connections.
    pub fn restore(mut self) -> Result<()> {
        self.restored = true;
        self.do_restore()
    }

    fn do_restore(&self) -> Result<()> {
        self.lab.exec_ok(
            &self.node,
            "rm -f /run/systemd/system/ssh.service.d/lab-fault.conf; rmdir /run/systemd/system/ssh.service.d 2>/dev/null; \
             systemctl daemon-reload; systemctl reset-failed ssh.service; systemctl start ssh.service",
        )?;
        wait_port(&self.node, 22, true, CMD_TIMEOUT)
    }
}

impl Drop for SshdGuard<'_> {
    fn drop(&mut self) {
        if !self.restored
            && self.lab.is_running(&self.node)
            && let Err(e) = self.do_restore()
        {
            eprintln!("lab: could not restart sshd on {}: {e:#}", self.node.name);
        }
    }
}

/// Undoes [`Lab::occupy_port`].
#[must_use = "dropping the guard frees the port at once"]
pub struct PortGuard<'a> {
    lab: &'a Lab,
    node: Node,
    port: u16,
    restored: bool,
}

impl PortGuard<'_> {
    /// The occupied port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the listener.
    pub fn restore(mut self) -> Result<()> {
        self.restored = true;
        self.do_restore()
    }

    fn do_restore(&self) -> Result<()> {
        self.lab
            .exec_ok(
                &self.node,
                &format!(
                    "systemctl stop lab-occupy-{0}.service; systemctl reset-failed lab-occupy-{0}.service 2>/dev/null; rm -f /run/lab-occupy-{0}.pl",
                    self.port
                ),
            )
            .map(|_| ())
    }
}

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        if !self.restored
            && self.lab.is_running(&self.node)
            && let Err(e) = self.do_restore()
        {
            eprintln!(
                "lab: could not free TCP {} on {}: {e:#}",
                self.port, self.node.name
            );
        }
    }
}

/// Undoes [`Lab::fill_disk`].
#[must_use = "dropping the guard frees the space at once"]
pub struct DiskFillGuard<'a> {
    lab: &'a Lab,
    node: Node,
    restored: bool,
}

impl DiskFillGuard<'_> {
    /// Deletes the filler file.
    pub fn restore(mut self) -> Result<()> {
        self.restored = true;
        self.do_restore()
    }

    fn do_restore(&self) -> Result<()> {
        let path = filler_path(self.lab, &self.node);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

impl Drop for DiskFillGuard<'_> {
    fn drop(&mut self) {
        if !self.restored
            && let Err(e) = self.do_restore()
        {
            eprintln!("lab: could not free the disk of {}: {e:#}", self.node.name);
        }
    }
}
