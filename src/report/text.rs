//! Text shared by the terminal and plain renderers: tables (the dry-run plan, the per-phase
//! time summary) and sizes. Pure functions, so they are snapshot-tested without a terminal.

use crate::config::plan::PlanSummary;
use std::fmt::Write as _;
use std::time::Duration;

/// Left-aligned columns separated by two spaces; no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{c:<w$}", w = widths.get(i).copied().unwrap_or(0));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The support bundle's closing note: the archive, per-node reachability, item counts and
/// the analysis as a short table.
pub fn bundle(s: &crate::bundle::Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Support bundle {} ({}, {:.1} s): {}",
        s.path,
        bytes(s.bytes),
        s.seconds,
        if s.complete { "complete" } else { "PARTIAL" }
    );
    let counts: Vec<String> = s
        .counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let _ = writeln!(out, "  items: {}; API {}", counts.join(", "), s.api);
    let nodes: Vec<String> = s.nodes.iter().map(|(n, st)| format!("{n} {st}")).collect();
    let _ = writeln!(out, "  nodes: {}", nodes.join(", "));
    let _ = writeln!(
        out,
        "  {} values redacted (see redactions.json); review before sending",
        s.redactions
    );
    if s.findings.is_empty() {
        let _ = writeln!(out, "  analysis: no problem found");
    } else {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .findings
            .iter()
            .map(|f| {
                vec![
                    format!("{:?}", f.severity).to_lowercase(),
                    f.node.clone().unwrap_or_else(|| "-".into()),
                    f.message.clone(),
                    f.evidence.join(" "),
                ]
            })
            .collect();
        out.push_str(&table(&["SEVERITY", "NODE", "FINDING", "EVIDENCE"], &rows));
    }
    out
}

/// The dry-run plan: cluster settings, a per-host table, the application values.
pub fn plan(p: &PlanSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Plan for cluster `{}`{}",
        p.cluster,
        p.answer_file
            .as_ref()
            .map(|f| format!(" (from {f})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  pod network {}, service network {}, enforcer {}\n",
        p.cluster_cidr, p.service_cidr, p.enforcer
    );
    let via = p.hosts.iter().any(|h| h.bastion.is_some());
    let rows: Vec<Vec<String>> = p
        .hosts
        .iter()
        .map(|h| {
            let addr = if h.port == 22 {
                h.address.clone()
            } else {
                format!("{}:{}", h.address, h.port)
            };
            let mut row = vec![
                addr,
                h.role.clone(),
                h.node_name.clone(),
                h.node_ip.clone().unwrap_or_else(|| "(default)".into()),
                h.user.clone(),
                h.auth.clone(),
                h.sudo.clone(),
            ];
            if via {
                row.push(h.bastion.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header = vec![
        "HOST",
        "ROLE",
        "NODE NAME",
        "NODE IP",
        "USER",
        "AUTH",
        "SUDO",
    ];
    if via {
        header.push("VIA");
    }
    out.push_str(&table(&header, &rows));
    if !p.app.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = p
            .app
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        out.push_str(&table(&["APPLICATION VALUE", "VALUE"], &rows));
    }
    out
}

/// Seconds with one decimal (`1.2s`), minutes past a minute (`2m03s`).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// The end-of-command summary: each phase's time, then the total and the result.
pub fn summary(command: &str, ok: bool, elapsed: Duration, phases: &[(String, f64)]) -> String {
    let mut out = String::new();
    if !phases.is_empty() {
        let mut rows: Vec<Vec<String>> = phases
            .iter()
            .map(|(p, t)| vec![p.clone(), secs(Duration::from_secs_f64(t.max(0.0)))])
            .collect();
        rows.push(vec!["total".into(), secs(elapsed)]);
        out.push_str(&table(&["PHASE", "TIME"], &rows));
    }
    let _ = writeln!(
        out,
        "{command} {} in {}",
        if ok { "succeeded" } else { "failed" },
        secs(elapsed)
    );
    out
}

/// A byte count in binary units with one decimal (`12.5 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `installer status`: hosts, nodes, workloads, endpoints, then the verdict.
pub fn status(s: &crate::report::status::StatusSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cluster `{}`: {}\n",
        s.cluster,
        if s.healthy { "healthy" } else { "NOT healthy" }
    );
    let hosts: Vec<Vec<String>> = s
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                h.role.clone(),
                if h.reachable {
                    "yes".into()
                } else {
                    "NO".into()
                },
                h.unit.clone().unwrap_or_else(|| "-".into()),
                h.k3s_version.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &["HOST", "ROLE", "SSH", "K3S UNIT", "K3S VERSION"],
        &hosts,
    ));
    if !s.nodes.is_empty() {
        out.push('\n');
        let nodes: Vec<Vec<String>> = s
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.role.clone(),
                    n.version.clone(),
                    if n.ready {
                        "Ready".into()
                    } else {
                        "NotReady".into()
                    },
                    match n.etcd_member {
                        Some(true) => "voting".into(),
                        Some(false) => "NO".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["NODE", "ROLE", "VERSION", "STATUS", "ETCD"],
            &nodes,
        ));
    }
    if !s.workloads.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .workloads
            .iter()
            .map(|w| {
                vec![
                    w.workload.clone(),
                    format!("{}/{}", w.ready, w.desired),
                    w.restarts.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["WORKLOAD", "READY", "RESTARTS"], &rows));
    }
    if !s.endpoints.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .endpoints
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    e.url.clone(),
                    if e.ok { "ok".into() } else { e.detail.clone() },
                ]
            })
            .collect();
        out.push_str(&table(&["ENDPOINT", "URL", "ANSWER"], &rows));
    }
    if !s.enforcers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .enforcers
            .iter()
            .map(|e| {
                vec![
                    e.host.clone(),
                    match (&e.mode, e.ready) {
                        (Some(_), true) => "ready".into(),
                        (Some(_), false) => "NOT ready".into(),
                        (None, _) => "NO STATE".into(),
                    },
                    e.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["ENFORCER", "STATE", "DETAIL"], &rows));
    }
    if let Some(m) = &s.matrix {
        let _ = writeln!(
            out,
            "\nprobe matrix ({}, checked {}):",
            if m.ok {
                "as the policies say"
            } else {
                "DIFFERS from the policies"
            },
            m.time
        );
        for l in m.table.lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    if let Some(l) = &s.last_run {
        let _ = writeln!(out, "\nlast run: {l}");
    }
    if !s.problems.is_empty() {
        out.push('\n');
        for p in &s.problems {
            let _ = writeln!(out, "problem: {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::plan::PlanHostRow;

    #[test]
    fn plan_table() {
        let p = PlanSummary {
            cluster: "demo".into(),
            answer_file: Some("answers.yaml".into()),
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            enforcer: "enforce".into(),
            hosts: vec![
                PlanHostRow {
                    address: "10.0.0.11".into(),
                    port: 22,
                    role: "server".into(),
                    node_name: "srv1".into(),
                    node_ip: None,
                    user: "root".into(),
                    auth: "agent".into(),
                    sudo: "none (root)".into(),
                    bastion: None,
                    host_key: None,
                },
                PlanHostRow {
                    address: "node2.example".into(),
                    port: 2222,
                    role: "agent".into(),
                    node_name: "(its hostname)".into(),
                    node_ip: Some("10.1.0.2".into()),
                    user: "admin".into(),
                    auth: "password".into(),
                    sudo: "password".into(),
                    bastion: Some("jump@10.0.0.254:22".into()),
                    host_key: None,
                },
            ],
            app: vec![("adminPassword".into(), "***".into())],
        };
        insta::assert_snapshot!(plan(&p));
    }

    #[test]
    fn summary_and_units() {
        let s = summary(
            "install",
            true,
            Duration::from_secs_f64(125.2),
            &[("preflight".into(), 1.23), ("upload".into(), 64.0)],
        );
        insta::assert_snapshot!(s);
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(secs(Duration::from_millis(1250)), "1.2s");
    }
}

/// `s` with every control character but newline and tab escaped (`\u{1b}`), so a string
/// from a host or a file (a process name, a log line, a value) cannot move the cursor,
/// retitle the terminal or clear the screen. The JSON output escapes them already.
pub fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod sanitize_tests {
    use super::sanitize;

    #[test]
    fn escape_sequences_from_hosts_are_made_inert() {
        let s = sanitize("ok \u{1b}]0;title\u{7}\u{1b}[2J\r\u{9b}x\nnext\tcol");
        assert_eq!(
            s,
            "ok \\u{1b}]0;title\\u{7}\\u{1b}[2J\\u{d}\\u{9b}x\nnext\tcol"
        );
    }
}
