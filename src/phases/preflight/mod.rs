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
use crate::report::preflight::{CheckFinding, CheckResult, PreflightReport};
use crate::report::{Event, Reporter};

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

/// Which of a node's cross-node ports the reachability check probes: `(ports, busy,
/// protected)`. `in_use(p)` is `Some(loopback_only)` when a listener holds `p`.
/// - A port held by a listener bound to loopback only (a rerun: some k3s components) cannot be
///   tested from other nodes and is left out.
/// - An application port already held (a rerun) is the running appliance's: the policy
///   enforcer admits only the flows its NetworkPolicies allow, so another node's probe is
///   refused by design; it is left out and returned as `protected`.
/// - Other held ports (k3s's own, not policed) are probed against whatever listens on them
///   (`busy`); free ports get a temporary listener.
pub(crate) fn probe_ports(
    ports: Vec<u16>,
    app_ports: &[(String, u16)],
    in_use: impl Fn(u16) -> Option<bool>,
) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
    let mut probe = Vec::new();
    let mut busy = Vec::new();
    let mut protected = Vec::new();
    for p in ports {
        match in_use(p) {
            Some(true) => {}
            Some(false) if app_ports.iter().any(|(_, a)| *a == p) => protected.push(p),
            Some(false) => {
                busy.push(p);
                probe.push(p);
            }
            None => probe.push(p),
        }
    }
    (probe, busy, protected)
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
            let (ports, busy, protected) = probe_ports(
                ports::cross_node_numbers(n.spec.is_server, &ctx.app_ports),
                &ctx.app_ports,
                |p| n.facts.tcp_port_in_use(p).map(|l| l.loopback_only),
            );
            if !protected.is_empty() {
                let list: Vec<String> = protected.iter().map(u16::to_string).collect();
                reporter.detail(
                    Some(&n.spec.name),
                    format!(
                        "reachability: TCP {} not probed: the running appliance holds them and the policy enforcer admits only the flows its NetworkPolicies allow (the app phase's gates prove those)",
                        list.join(", ")
                    ),
                );
            }
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

/// Every check by name with the hosts it passed, warned or failed on. The reachability
/// check runs only between two hosts or more.
pub fn report(hosts: &[String], all: &[Finding]) -> PreflightReport {
    let checks = CHECKS
        .iter()
        .map(|(id, _)| {
            let mut r = CheckResult {
                check: (*id).to_owned(),
                passed: Vec::new(),
                warned: Vec::new(),
                failed: Vec::new(),
            };
            if *id == "reachability" && hosts.len() < 2 {
                return r;
            }
            for h in hosts {
                let mine: Vec<&Finding> = findings_of(all, h)
                    .into_iter()
                    .filter(|f| f.check == *id)
                    .collect();
                if mine.is_empty() {
                    r.passed.push(h.clone());
                }
                for f in mine {
                    let row = CheckFinding {
                        host: h.clone(),
                        found: f.found.clone(),
                        needed: f.needed.clone(),
                        hint: f.hint.clone(),
                    };
                    match f.severity {
                        Severity::Warning => r.warned.push(row),
                        Severity::Blocking => r.failed.push(row),
                    }
                }
            }
            r
        })
        .collect();
    PreflightReport {
        hosts: hosts.to_vec(),
        checks,
    }
}

/// The outcome of preflight on one host: how many checks passed and warned, and an error
/// if anything blocks.
fn verdict(mine: &[&Finding], (passed, warned): (usize, usize)) -> Result<StepOk, StepError> {
    let blocking: Vec<&&Finding> = mine
        .iter()
        .filter(|f| f.severity == Severity::Blocking)
        .collect();
    if blocking.is_empty() {
        return Ok(StepOk::unchanged(if warned == 0 {
            format!("{passed} checks passed")
        } else {
            format!("{passed} checks passed, {warned} warned")
        }));
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
    let cell: tokio::sync::OnceCell<(Vec<Finding>, PreflightReport)> = tokio::sync::OnceCell::new();
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
                    let (all, report) = cell
                        .get_or_init(|| async {
                            let all = findings(ctx, hosts, needs, &reporter).await;
                            let names: Vec<String> =
                                hosts.iter().map(|h| h.spec.name.clone()).collect();
                            let report = report(&names, &all);
                            // Once, before the hosts' results: every check by name, each
                            // warning with the hosts it concerns.
                            reporter.emit(Event::PreflightChecks {
                                report: report.clone(),
                            });
                            (all, report)
                        })
                        .await;
                    let mine = findings_of(all, &n.spec.name);
                    verdict(&mine, report.counts(&n.spec.name)).map(|ok| (ok, ()))
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
    fn the_report_names_every_check_with_its_hosts() {
        let hosts: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        let all = vec![
            finding("unique-names", "node1, node2", Severity::Blocking),
            finding("disk", "node3", Severity::Warning),
        ];
        let r = report(&hosts, &all);
        assert_eq!(r.checks.len(), CHECKS.len());
        let of = |id: &str| r.checks.iter().find(|c| c.check == id).unwrap();
        assert_eq!(of("cpu").passed, hosts);
        assert_eq!(of("disk").passed, ["node1", "node2"]);
        assert_eq!(of("disk").warned[0].host, "node3");
        let names: Vec<&str> = of("unique-names")
            .failed
            .iter()
            .map(|f| f.host.as_str())
            .collect();
        assert_eq!(names, ["node1", "node2"]);
        assert_eq!(of("unique-names").passed, ["node3"]);
        assert_eq!(r.counts("node3"), (CHECKS.len() - 1, 1));
        // One host: the reachability check does not run, and is not counted as passed.
        let one = report(&hosts[..1], &[]);
        assert!(
            one.checks
                .iter()
                .find(|c| c.check == "reachability")
                .unwrap()
                .passed
                .is_empty()
        );
        assert_eq!(one.counts("node1"), (CHECKS.len() - 1, 0));
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
        let ok = verdict(&[&w, &w], (18, 1)).unwrap();
        assert_eq!(ok.detail.as_deref(), Some("18 checks passed, 1 warned"));
        let ok = verdict(&[], (19, 0)).unwrap();
        assert_eq!(ok.detail.as_deref(), Some("19 checks passed"));
        let b1 = finding("ports-free", "n", Severity::Blocking);
        let b2 = finding("cgroup-v2", "n", Severity::Blocking);
        let e = verdict(&[&w, &b1, &b2], (16, 1)).unwrap_err();
        assert_eq!(
            e.message,
            "ports-free: found x; needed y; cgroup-v2: found x; needed y"
        );
        assert_eq!(e.hint.as_deref(), Some("z; z"));
    }
}

#[cfg(test)]
mod probe_ports_tests {
    use super::probe_ports;

    /// Regression: with the policy enforcer protecting the appliance, a rerun's reachability
    /// check probed the application's ports on the running pods from the other nodes, was
    /// refused by the enforcer (by design), and stopped the rerun at preflight.
    #[test]
    fn a_rerun_does_not_probe_the_running_appliances_ports() {
        let app = vec![("store".to_string(), 7379), ("api".to_string(), 8081)];
        // 6443 held by k3s, 7379 held by the store, 8081 free, 10248 held on loopback.
        let held = |p: u16| match p {
            6443 | 7379 => Some(false),
            10248 => Some(true),
            _ => None,
        };
        let (probe, busy, protected) = probe_ports(vec![6443, 7379, 8081, 10248], &app, held);
        assert_eq!(probe, [6443, 8081]);
        assert_eq!(busy, [6443]);
        assert_eq!(protected, [7379]);
    }
}
