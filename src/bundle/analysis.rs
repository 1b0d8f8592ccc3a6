//! The analysis: obvious problems in what was collected, each with the bundle path of its
//! evidence. Pure functions over collected text and objects.

use serde::Serialize;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::manifest::NodeEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fail,
    Warn,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: String,
    pub severity: Severity,
    pub node: Option<String>,
    pub message: String,
    pub evidence: Vec<String>,
}

fn f(id: &str, severity: Severity, node: Option<&str>, message: String, evidence: &str) -> Finding {
    Finding {
        id: id.into(),
        severity,
        node: node.map(str::to_owned),
        message,
        evidence: vec![evidence.into()],
    }
}

/// The nftables table the policy enforcer programs on every node (its `--table` default).
pub const ENFORCER_TABLE: &str = "installer_enforcer";

/// The enforcer's rules on a node, from `nft -a list ruleset`: without its table, no
/// NetworkPolicy is enforced for the host-network pods there.
pub fn enforcer(node: &str, ruleset: &str) -> Option<Finding> {
    let has_table = ruleset.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("table") && w.next() == Some("inet") && w.next() == Some(ENFORCER_TABLE)
    });
    (!has_table).then(|| {
        f(
            "enforcer-rules-missing",
            Severity::Fail,
            Some(node),
            format!(
                "no `table inet {ENFORCER_TABLE}` in the node's nftables ruleset: NetworkPolicies are not enforced on this node"
            ),
            &format!("nodes/{node}/network/nftables.txt"),
        )
    })
}

/// Disk space and inodes from `df -PT` then `df -Pi` (separated by a blank line).
pub fn disk(node: &str, resources: &str) -> Vec<Finding> {
    let path = format!("nodes/{node}/system/resources.txt");
    let mut out = Vec::new();
    let mut section = 0;
    for line in resources.lines() {
        if line.trim().is_empty() {
            section += 1;
            continue;
        }
        if section > 1 {
            break;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(pos) = cols.iter().position(|c| c.ends_with('%') && c.len() > 1) else {
            continue;
        };
        let Ok(pct) = cols[pos].trim_end_matches('%').parse::<u32>() else {
            continue;
        };
        let mount = cols[pos + 1..].join(" ");
        let fs = cols.first().copied().unwrap_or("");
        let ty = if section == 0 {
            cols.get(1).copied().unwrap_or("")
        } else {
            ""
        };
        let pseudo = [
            "tmpfs", "devtmpfs", "overlay", "squashfs", "shm", "proc", "sysfs", "udev",
        ];
        if pseudo.contains(&fs)
            || pseudo.contains(&ty)
            || !(mount == "/" || mount.starts_with("/var"))
        {
            continue;
        }
        let what = if section == 0 { "disk" } else { "inodes" };
        if pct >= 85 {
            let sev = if pct >= 95 {
                Severity::Fail
            } else {
                Severity::Warn
            };
            out.push(f(
                &format!("{what}-full"),
                sev,
                Some(node),
                format!("{what} on {mount} {pct}% used"),
                &path,
            ));
        }
    }
    out
}

/// k3s's unit state from `systemctl show -p Id,ActiveState,...,NRestarts`.
pub fn k3s_unit(node: &str, is_server: bool, services: &str) -> Vec<Finding> {
    let path = format!("nodes/{node}/system/services.txt");
    let want = if is_server {
        "k3s.service"
    } else {
        "k3s-agent.service"
    };
    let mut out = Vec::new();
    let mut id = "";
    for line in services.lines() {
        if let Some(v) = line.strip_prefix("Id=") {
            id = v.trim();
        } else if id == want {
            if let Some(v) = line.strip_prefix("ActiveState=")
                && v.trim() != "active"
            {
                out.push(f(
                    "k3s-not-active",
                    Severity::Fail,
                    Some(node),
                    format!("{want} is {}", v.trim()),
                    &path,
                ));
            } else if let Some(v) = line.strip_prefix("NRestarts=")
                && let Ok(n) = v.trim().parse::<u32>()
                && n > 3
            {
                out.push(f(
                    "k3s-restarting",
                    Severity::Warn,
                    Some(node),
                    format!("{want} restarted {n} times"),
                    &path,
                ));
            }
        }
    }
    out
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `notAfter=Dec  2 12:00:00 2027 GMT` as a UNIX time.
pub fn parse_not_after(s: &str) -> Option<i64> {
    let s = s.split_once("notAfter=")?.1;
    let p: Vec<&str> = s.split_whitespace().collect();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let first = *p.first()?;
    let m = months.iter().position(|x| *x == first)? as i64 + 1;
    let d: i64 = p.get(1)?.parse().ok()?;
    let hms: Vec<i64> = p
        .get(2)?
        .split(':')
        .filter_map(|x| x.parse().ok())
        .collect();
    let y: i64 = p.get(3)?.parse().ok()?;
    if hms.len() != 3 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Certificates expiring within 30 days (or expired).
pub fn certificates(node: &str, text: &str, now: i64) -> Vec<Finding> {
    let path = format!("nodes/{node}/k3s/certificates.txt");
    text.lines()
        .filter_map(|l| {
            let end = parse_not_after(l)?;
            let days = (end - now).div_euclid(86400);
            let cert = l.split_whitespace().next().unwrap_or("?");
            (days < 30).then(|| {
                let sev = if days < 0 {
                    Severity::Fail
                } else {
                    Severity::Warn
                };
                let msg = if days < 0 {
                    format!("{cert} has expired")
                } else {
                    format!("{cert} expires in {days} days")
                };
                f("certificate-expiry", sev, Some(node), msg, &path)
            })
        })
        .collect()
}

/// Nodes unreachable and clocks that disagree by more than a second.
pub fn nodes(entries: &[NodeEntry]) -> Vec<Finding> {
    let mut out: Vec<Finding> = entries
        .iter()
        .filter(|n| n.ssh != "ok")
        .map(|n| {
            f(
                "node-unreachable",
                Severity::Fail,
                Some(&n.name),
                format!(
                    "not reachable over SSH: {}",
                    n.error.as_deref().unwrap_or("?")
                ),
                "manifest.json",
            )
        })
        .collect();
    let offsets: Vec<(&str, i64)> = entries
        .iter()
        .filter_map(|n| Some((n.name.as_str(), n.clock_offset_ms?)))
        .collect();
    if let (Some(min), Some(max)) = (
        offsets.iter().min_by_key(|o| o.1),
        offsets.iter().max_by_key(|o| o.1),
    ) && max.1 - min.1 > 1000
    {
        out.push(Finding {
            id: "clock-skew".into(),
            severity: Severity::Warn,
            node: None,
            message: format!(
                "clocks differ by {} ms between {} and {}",
                max.1 - min.1,
                max.0,
                min.0
            ),
            evidence: vec![
                format!("nodes/{}/system/clock.txt", max.0),
                format!("nodes/{}/system/clock.txt", min.0),
            ],
        });
    }
    out
}

/// NotReady nodes, crash-looping pods and missing images, etcd members vs servers.
pub fn cluster(
    nodes: &[Node],
    pods: &[Pod],
    etcd_members: Option<usize>,
    servers: usize,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let (ready, why) = crate::kube::wait::node_readiness(n);
        if !ready {
            out.push(f(
                "node-not-ready",
                Severity::Fail,
                Some(&name),
                format!("node {name} is NotReady: {why}"),
                "cluster/nodes.json",
            ));
        }
    }
    for p in pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let statuses = p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten());
        for c in statuses {
            let reason = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .unwrap_or_default();
            let id = match reason.as_str() {
                "CrashLoopBackOff" => "pod-crash-looping",
                "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" => "pod-image-missing",
                _ => continue,
            };
            out.push(f(
                id,
                Severity::Fail,
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                format!(
                    "{ns}/{name} container {}: {reason} ({} restarts)",
                    c.name, c.restart_count
                ),
                &format!("cluster/{ns}/pods.json"),
            ));
        }
    }
    if let Some(m) = etcd_members
        && m != servers
    {
        out.push(f(
            "etcd-members",
            Severity::Fail,
            None,
            format!("etcd has {m} voting members, the answer file has {servers} servers"),
            "cluster/etcd-members.json",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_and_inodes_are_found_on_the_node_filesystems_only() {
        let text = "Filesystem Type 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 ext4 100 90 10 90% /\ntmpfs tmpfs 10 10 0 100% /run\n/dev/sdb ext4 100 96 4 96% /var/lib/rancher\n\nFilesystem Inodes IUsed IFree IUse% Mounted on\n/dev/sda1 100 10 90 10% /\n/dev/sdb 100 99 1 99% /var/lib/rancher\n";
        let got: Vec<(String, Severity)> = disk("a", text)
            .into_iter()
            .map(|f| (f.message, f.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                ("disk on / 90% used".into(), Severity::Warn),
                ("disk on /var/lib/rancher 96% used".into(), Severity::Fail),
                ("inodes on /var/lib/rancher 99% used".into(), Severity::Fail),
            ]
        );
    }

    #[test]
    fn a_stopped_or_restarting_k3s_is_flagged() {
        let text = "Id=k3s.service\nActiveState=inactive\nNRestarts=0\n\nId=k3s-agent.service\nActiveState=inactive\n";
        let got = k3s_unit("a", true, text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message, "k3s.service is inactive");
        assert_eq!(got[0].evidence, vec!["nodes/a/system/services.txt"]);
        assert!(
            k3s_unit(
                "a",
                false,
                "Id=k3s-agent.service\nActiveState=active\nNRestarts=9\n"
            )[0]
            .id == "k3s-restarting"
        );
        assert!(
            k3s_unit(
                "a",
                true,
                "Id=k3s.service\nActiveState=active\nNRestarts=1\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn certificates_near_expiry() {
        let now = parse_not_after("notAfter=Dec  2 12:00:00 2026 GMT").unwrap();
        assert_eq!(now, 1_796_212_800);
        let text = "/x/a.crt notAfter=Dec 12 12:00:00 2026 GMT\n/x/b.crt notAfter=Dec  2 12:00:00 2027 GMT\n/x/c.crt notAfter=Nov  2 12:00:00 2026 GMT\n";
        let got: Vec<String> = certificates("n", text, now)
            .into_iter()
            .map(|f| f.message)
            .collect();
        assert_eq!(
            got,
            vec!["/x/a.crt expires in 10 days", "/x/c.crt has expired"]
        );
    }

    #[test]
    fn unreachable_nodes_and_clock_skew() {
        let e = |name: &str, ssh: &str, off: Option<i64>| NodeEntry {
            name: name.into(),
            role: "server".into(),
            address: "x".into(),
            ssh: ssh.into(),
            error: None,
            clock_offset_ms: off,
            duration_ms: 0,
        };
        let got = nodes(&[
            e("a", "ok", Some(0)),
            e("b", "ok", Some(1500)),
            e("c", "unreachable", None),
        ]);
        let ids: Vec<&str> = got.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, vec!["node-unreachable", "clock-skew"]);
        assert!(nodes(&[e("a", "ok", Some(0)), e("b", "ok", Some(900))]).is_empty());
    }

    #[test]
    fn a_ruleset_without_the_enforcers_table_is_flagged() {
        let with = "table inet filter { # handle 1\n}\ntable inet installer_enforcer { # handle 7\n\tchain input { # handle 1\n\t}\n}\n";
        assert_eq!(enforcer("n1", with), None);
        let without = "table inet filter { # handle 1\n}\ntable ip installer_enforcer { # handle 2\n}\n# table inet installer_enforcer\n";
        let got = enforcer("n1", without).expect("flagged");
        assert_eq!(got.id, "enforcer-rules-missing");
        assert_eq!(
            got.evidence,
            vec!["nodes/n1/network/nftables.txt".to_string()]
        );
        // The name the enforcer programs by default.
        assert!(
            include_str!("../enforcer/src/main.rs")
                .contains(&format!("default_value = \"{ENFORCER_TABLE}\"")),
            "the enforcer's default table is not {ENFORCER_TABLE}"
        );
    }

    #[test]
    fn not_ready_nodes_crash_loops_and_etcd_count() {
        let node: Node = serde_json::from_value(serde_json::json!({"metadata":{"name":"n1"},"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady"}]}})).unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata":{"name":"p","namespace":"app"},"status":{"containerStatuses":[{"name":"c","image":"i","imageID":"","ready":false,"restartCount":7,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}})).unwrap();
        let got: Vec<String> = cluster(&[node], &[pod], Some(2), 3)
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(
            got,
            vec!["node-not-ready", "pod-crash-looping", "etcd-members"]
        );
    }
}
