//! `prepare`: the k3s directories, the CNI plugin links, and the host firewall openings
//! (from the port table), each recorded in the host's changes log for uninstall.

use std::sync::Arc;
use std::time::Duration;

use super::context::{ConnectedHost, Context};
use super::ids::PhaseId;
use super::ops::Ops;
use super::runner::{PhaseFailure, Runner, StepOk};
use crate::host::facts::Firewall;
use crate::host::{RemoteCommand, RemoteExt};
use crate::k3s::{paths, ports};

/// The record of changes the installer made on a host, for uninstall.
pub const CHANGES_LOG: &str = "/var/lib/installer/changes.log";

/// The changes log's line naming the cluster the host belongs to (uninstall refuses a host
/// whose recorded cluster is not the answer file's).
pub fn cluster_line(cluster_name: &str) -> String {
    format!("cluster {cluster_name}")
}

fn check_script(cluster_name: &str) -> String {
    let mut s = String::from("ok=1\n");
    s.push_str(&format!(
        "grep -qxF {} {CHANGES_LOG} 2>/dev/null || ok=0\n",
        crate::host::shell_quote(&cluster_line(cluster_name))
    ));
    for d in [
        paths::CONFIG_DIR,
        paths::IMAGES_DIR,
        paths::CNI_BIN_DIR,
        paths::CNI_CONF_DIR,
    ] {
        s.push_str(&format!("[ -d {d} ] || ok=0\n"));
    }
    for (link, target) in paths::cni_plugin_links() {
        s.push_str(&format!("[ \"$(readlink {link})\" = {target} ] || ok=0\n"));
    }
    s.push_str(&format!("[ -f {} ] || ok=0\n", paths::IMAGES_CACHE_MARKER));
    s.push_str("[ $ok = 1 ] && echo ready || echo missing\n");
    s
}

fn prepare_script(cluster_name: &str) -> String {
    // Each directory created is recorded (parents first), so uninstall removes exactly
    // those, and only when empty.
    let mut s = format!(
        "set -e\nmkdir -p $(dirname {CHANGES_LOG})\nmkd() {{ [ -d \"$1\" ] && return 0; mkd \"$(dirname \"$1\")\"; mkdir \"$1\"; echo \"dir $1\" >> {CHANGES_LOG}; }}\n"
    );
    let line = crate::host::shell_quote(&cluster_line(cluster_name));
    s.push_str(&format!(
        "grep -qxF {line} {CHANGES_LOG} 2>/dev/null || echo {line} >> {CHANGES_LOG}\n"
    ));
    for d in [
        paths::CONFIG_DIR,
        paths::IMAGES_DIR,
        paths::CNI_BIN_DIR,
        paths::CNI_CONF_DIR,
    ] {
        s.push_str(&format!("mkd {d}\n"));
    }
    for (link, target) in paths::cni_plugin_links() {
        s.push_str(&format!(
            "if [ \"$(readlink {link})\" != {target} ]; then ln -sfn {target} {link}; echo \"link {link} -> {target}\" >> {CHANGES_LOG}; fi\n"
        ));
    }
    // k3s never creates it; with it the image import cache survives restarts
    // (k3s-host-network.md §3).
    s.push_str(&format!(
        "[ -f {m} ] || {{ touch {m}; echo \"file $(sha256sum < {m} | cut -d' ' -f1) {m}\" >> {CHANGES_LOG}; }}\n",
        m = paths::IMAGES_CACHE_MARKER
    ));
    s
}

/// The script that opens what other nodes must reach (the port table) in the host's
/// firewall, each opening recorded; None when the installer leaves the firewall alone.
pub fn firewall_script(fw: Firewall, is_server: bool, ctx: &Context) -> Option<String> {
    let openings = ports::firewall_openings(is_server, &ctx.app_ports);
    match fw {
        Firewall::Firewalld => {
            let mut s = String::from("set -e\n");
            for p in &openings {
                s.push_str(&format!(
                    "if ! firewall-cmd --permanent --query-port={p}/tcp >/dev/null; then firewall-cmd --permanent --add-port={p}/tcp; echo \"firewalld-port {p}/tcp\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            for cidr in [ctx.cluster.cluster_cidr, ctx.cluster.service_cidr] {
                s.push_str(&format!(
                    "if ! firewall-cmd --permanent --zone=trusted --query-source={cidr} >/dev/null; then firewall-cmd --permanent --zone=trusted --add-source={cidr}; echo \"firewalld-trusted {cidr}\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            s.push_str("firewall-cmd --reload\n");
            Some(s)
        }
        Firewall::Ufw => {
            let mut s = String::from("set -e\n");
            for p in &openings {
                let p = p.replace('-', ":");
                s.push_str(&format!(
                    "if ! ufw status | grep -q \"^{p}/tcp \"; then ufw allow {p}/tcp; echo \"ufw {p}/tcp\" >> {CHANGES_LOG}; fi\n"
                ));
            }
            Some(s)
        }
        // A hand-written nftables ruleset is the admin's: preflight told them what to open.
        Firewall::Nftables | Firewall::None => None,
    }
}

/// A step's outcome from what went through the door.
pub fn outcome(ops: &Ops, changed: &str, unchanged: &str) -> StepOk {
    match (ops.changed(), ops.dry_run()) {
        (true, true) => StepOk::changed(format!("would be {changed}")),
        (true, false) => StepOk::changed(changed),
        (false, _) => StepOk::unchanged(unchanged),
    }
}

/// The `prepare` phase.
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
) -> Result<(), PhaseFailure> {
    let reporter = runner.reporter().clone();
    let id = PhaseId::Prepare;
    runner
        .phase(id.id(), id.title(), hosts, ctx.concurrency, |n| {
            let ops = Ops::new(n.remote.clone(), id.id(), &reporter, ctx.goal);
            async move {
                let check = n
                    .remote
                    .run(RemoteCommand::new(check_script(&ctx.cluster_name)).sudo())
                    .await?;
                if check.stdout_str().trim() != "ready" {
                    ops.run(
                        "create the k3s directories and link the CNI plugins into /opt/cni/bin",
                        RemoteCommand::new(prepare_script(&ctx.cluster_name))
                            .sudo()
                            .not_idempotent(),
                    )
                    .await?;
                }
                if !ctx.relax.leave_firewall
                    && let Some(script) = firewall_script(n.facts.firewall, n.spec.is_server, ctx)
                {
                    ops.run(
                        &format!("open the cluster's ports in {:?}", n.facts.firewall),
                        RemoteCommand::new(script)
                            .sudo()
                            .timeout(Duration::from_secs(120)),
                    )
                    .await?;
                }
                Ok((outcome(&ops, "prepared", "already prepared"), ()))
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_scripts_are_valid_sh() {
        for s in [check_script("lab"), prepare_script("lab")] {
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .unwrap();
            assert!(st.success(), "{s}");
        }
    }
}
