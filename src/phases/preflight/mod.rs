//! `preflight`: the fact checks ([`checks`], pure functions over facts) and the cross-node
//! reachability check ([`reachability`], temporary listeners through the door), reported
//! per host; a blocking finding stops the command before anything is changed.

pub mod checks;
pub mod reachability;

pub use checks::{
    CHECKS, Finding, HostInput, Input, Relaxations, Severity, blocking, check, firewall_commands,
    required_ports,
};

use std::sync::Arc;

use super::context::{ConnectedHost, Context};
use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError, StepOk};
use crate::assets::{self, AssetStore};
use crate::host::facts;
use crate::k3s::ports;
use crate::report::Reporter;

/// What preflight needs besides the context: the payload it will upload and what the
/// application asks of each node.
pub struct Needs<'a> {
    pub store: &'a AssetStore,
    pub app_cpus: u32,
    pub app_mem_bytes: u64,
}

/// Bytes the upload phase writes on each host (for the disk check).
pub fn payload_size(store: &AssetStore, hosts: &[Arc<ConnectedHost>]) -> u64 {
    let Some(arch) = hosts
        .first()
        .and_then(|n| assets::Arch::from_facts(&n.facts.arch))
    else {
        return 0;
    };
    let mut total = 0;
    if let Ok(a) = store.k3s_binary(arch) {
        total += a.size;
    }
    if let Ok(a) = store.airgap_images(arch) {
        total += a.size;
    }
    if let Ok(v) = store.app_image_archives(arch) {
        total += v.iter().map(|a| a.size).sum::<u64>();
    }
    total
}

/// Every finding of the fact checks and the reachability check.
pub async fn findings(
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    needs: &Needs<'_>,
    reporter: &Reporter,
) -> Vec<Finding> {
    let store = needs.store;
    let k3s_sha = hosts
        .first()
        .and_then(|n| assets::Arch::from_facts(&n.facts.arch))
        .and_then(|a| store.k3s_binary(a).ok())
        .map(|a| a.sha256);
    let input = Input {
        hosts: hosts
            .iter()
            .map(|n| HostInput {
                name: n.spec.name.clone(),
                is_server: n.spec.is_server,
                node_name: Some(n.node_name.clone()),
                node_ip: n.spec.node_ip,
                facts: &n.facts,
                answered_between: Some(n.facts_window),
            })
            .collect(),
        cluster_cidr: ctx.cluster.cluster_cidr,
        service_cidr: ctx.cluster.service_cidr,
        app_ports: ctx.app_ports.clone(),
        app_udp_ports: ctx.app_udp_ports.clone(),
        app_cpus: needs.app_cpus,
        app_mem_bytes: needs.app_mem_bytes,
        payload_bytes: payload_size(store, hosts),
        arches: store
            .available_arches()
            .into_iter()
            .map(Into::into)
            .collect(),
        k3s_sha256: k3s_sha,
        workstation_epoch: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        relax: ctx.relax.clone(),
    };
    let mut findings = check(&input);
    if hosts.len() > 1 {
        findings.extend(reachability_findings(ctx, hosts, reporter).await);
    }
    findings
}

/// Cross-node reachability (needs two hosts or more).
async fn reachability_findings(
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    reporter: &Reporter,
) -> Vec<Finding> {
    let rnodes: Vec<reachability::Node> = hosts
        .iter()
        .map(|n| {
            // A port already held by a listener bound to loopback only (a rerun: some k3s
            // components) cannot be tested from other nodes and is left out; other held
            // ports are tested against whatever listens on them.
            let ports: Vec<u16> = ports::cross_node_numbers(n.spec.is_server, &ctx.app_ports)
                .into_iter()
                .filter(|p| !n.facts.tcp_port_in_use(*p).is_some_and(|l| l.loopback_only))
                .collect();
            let busy = ports
                .iter()
                .copied()
                .filter(|p| n.facts.tcp_port_in_use(*p).is_some())
                .collect();
            reachability::Node {
                remote: n.remote.clone(),
                ip: n.node_ip,
                ports,
                busy,
                have_python3: n.facts.have_python3,
                have_perl: n.facts.have_perl,
            }
        })
        .collect();
    let mut out = Vec::new();
    match reachability::check(&rnodes, ctx.goal, reporter).await {
        Ok(None) => {}
        Ok(Some(unreachable)) => {
            for u in unreachable {
                let managed_fw = hosts.iter().find(|n| n.spec.name == u.to).is_some_and(|n| {
                    n.facts.firewall != facts::Firewall::None && !ctx.relax.leave_firewall
                });
                out.push(Finding {
                    check: "reachability",
                    host: Some(u.from.clone()),
                    severity: if managed_fw { Severity::Warning } else { Severity::Blocking },
                    found: format!("cannot connect to {} ({}) on TCP port {}: {}", u.to, u.to_ip, u.port, u.reason),
                    needed: format!("TCP {} open from every node to {}", u.port, u.to),
                    hint: if managed_fw {
                        "the installer opens this port in the host firewall during prepare".into()
                    } else {
                        format!("open TCP {} from {} to {} in the firewalls or security groups between them", u.port, u.from, u.to)
                    },
                });
            }
        }
        Err(e) => out.push(Finding {
            check: "reachability",
            host: Some(e.host().to_owned()),
            severity: Severity::Warning,
            found: format!("the check could not run: {e}"),
            needed: "python3 or perl on the host for temporary listeners".into(),
            hint: "reachability between nodes was not verified; joins may fail if a firewall blocks them".into(),
        }),
    }
    out
}

/// The findings about one host (a finding may name several, comma-separated).
fn findings_of<'a>(all: &'a [Finding], host: &str) -> Vec<&'a Finding> {
    all.iter()
        .filter(|f| {
            f.host
                .as_deref()
                .is_some_and(|h| h.split(", ").any(|x| x == host))
        })
        .collect()
}

/// The outcome of preflight on one host: its warnings, and an error if anything blocks.
fn verdict(mine: &[&Finding]) -> Result<StepOk, StepError> {
    let blocking: Vec<&&Finding> = mine
        .iter()
        .filter(|f| f.severity == Severity::Blocking)
        .collect();
    if blocking.is_empty() {
        // Checks with a finding here (a check may have several).
        let mut ids: Vec<&str> = mine.iter().map(|f| f.check).collect();
        ids.sort_unstable();
        ids.dedup();
        return Ok(StepOk::unchanged(format!(
            "{} checks passed",
            CHECKS.len().saturating_sub(ids.len())
        )));
    }
    let message = blocking
        .iter()
        .map(|f| format!("{}: found {}; needed {}", f.check, f.found, f.needed))
        .collect::<Vec<_>>()
        .join("; ");
    let hint = blocking
        .iter()
        .map(|f| f.hint.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Err(StepError::new(message).with_hint(hint))
}

/// The `preflight` phase.
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    hosts: &[Arc<ConnectedHost>],
    needs: &Needs<'_>,
) -> Result<(), PhaseFailure> {
    // Computed once, by whichever host's step gets there first, inside the phase (so the
    // phase's time includes the reachability check).
    let cell: tokio::sync::OnceCell<Vec<Finding>> = tokio::sync::OnceCell::new();
    let cell = &cell;
    let reporter = runner.reporter().clone();
    runner
        .phase(
            PhaseId::Preflight.id(),
            PhaseId::Preflight.title(),
            hosts,
            ctx.concurrency,
            |n| {
                let reporter = reporter.clone();
                async move {
                    let all = cell
                        .get_or_init(|| findings(ctx, hosts, needs, &reporter))
                        .await;
                    let mine = findings_of(all, &n.spec.name);
                    for w in mine.iter().filter(|f| f.severity == Severity::Warning) {
                        reporter.warn(Some(&n.spec.name), w.to_string());
                    }
                    verdict(&mine).map(|ok| (ok, ()))
                }
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(check: &'static str, host: &str, severity: Severity) -> Finding {
        Finding {
            check,
            host: Some(host.into()),
            severity,
            found: "x".into(),
            needed: "y".into(),
            hint: "z".into(),
        }
    }

    #[test]
    fn a_finding_naming_several_hosts_belongs_to_each() {
        let all = vec![
            finding("unique-names", "node1, node2", Severity::Blocking),
            finding("disk", "node3", Severity::Warning),
        ];
        assert_eq!(findings_of(&all, "node2").len(), 1);
        assert_eq!(findings_of(&all, "node3").len(), 1);
        assert!(findings_of(&all, "node").is_empty());
    }

    #[test]
    fn warnings_pass_and_blocking_findings_fail_with_every_hint() {
        let w = finding("disk", "n", Severity::Warning);
        let ok = verdict(&[&w, &w]).unwrap();
        assert_eq!(
            ok.detail.as_deref(),
            Some(format!("{} checks passed", CHECKS.len() - 1).as_str())
        );
        let b1 = finding("ports-free", "n", Severity::Blocking);
        let b2 = finding("cgroup-v2", "n", Severity::Blocking);
        let e = verdict(&[&w, &b1, &b2]).unwrap_err();
        assert_eq!(
            e.message,
            "ports-free: found x; needed y; cgroup-v2: found x; needed y"
        );
        assert_eq!(e.hint.as_deref(), Some("z; z"));
    }
}
