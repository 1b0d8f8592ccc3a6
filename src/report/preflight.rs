//! Preflight's checks by name: which passed on which hosts, which warned, which failed.
//! Plain data (the JSON renderer writes it as it is) and the lines the human renderers show:
//! the passed checks compactly, one line per set of hosts they passed on; each warning on
//! its own line, a warning the same on several hosts once with the hosts named (one line
//! per host with `-v`). Failed checks are only named here: each host's failure is shown
//! once, by the host's own result.

use serde::Serialize;
use std::fmt::Write as _;

/// The result of every check on every host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreflightReport {
    /// Every host checked, in answer-file order.
    pub hosts: Vec<String>,
    /// Every check, in the order they run.
    pub checks: Vec<CheckResult>,
}

/// One check on every host. A host in none of the lists: the check did not run there (the
/// reachability check needs two hosts or more).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// Stable id (`ports-free`, `cgroup-v2`, ...).
    pub check: String,
    pub passed: Vec<String>,
    pub warned: Vec<CheckFinding>,
    pub failed: Vec<CheckFinding>,
}

/// What a check found on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckFinding {
    pub host: String,
    pub found: String,
    pub needed: String,
    pub hint: String,
}

impl PreflightReport {
    /// Passes every text from a host through the redactor.
    pub(crate) fn redact(&mut self) {
        use crate::secret::redact;
        for c in &mut self.checks {
            for f in c.warned.iter_mut().chain(c.failed.iter_mut()) {
                f.found = redact(&f.found);
                f.needed = redact(&f.needed);
                f.hint = redact(&f.hint);
            }
        }
    }

    /// `(passed, warned)` counts of `host`'s checks.
    pub fn counts(&self, host: &str) -> (usize, usize) {
        let passed = self
            .checks
            .iter()
            .filter(|c| c.passed.iter().any(|h| h == host))
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.warned.iter().any(|f| f.host == host))
            .count();
        (passed, warned)
    }
}

/// A line the renderers show: informational, or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Info(String),
    Warn(String),
}

/// Lines wrap before this many columns (names are never split), or the terminal's width.
pub const WIDTH: usize = 100;

/// The lines of the report at `verbosity` (quiet: the warnings only). Informational lines
/// start with `indent`; a warning is `warning: ...` and its indented `hint:` line.
pub fn lines(r: &PreflightReport, verbosity: i8, indent: &str, width: usize) -> Vec<Line> {
    let mut out = Vec::new();
    if verbosity >= 0 {
        // Checks grouped by the hosts they passed on, groups in check order.
        let mut groups: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
        for c in r.checks.iter().filter(|c| !c.passed.is_empty()) {
            match groups.iter_mut().find(|(hosts, _)| *hosts == c.passed) {
                Some((_, names)) => names.push(&c.check),
                None => groups.push((c.passed.clone(), vec![&c.check])),
            }
        }
        groups.sort_by_key(|(hosts, _)| std::cmp::Reverse(hosts.len()));
        for (hosts, names) in groups {
            let on = if hosts == r.hosts && r.hosts.len() > 1 {
                "every host".to_string()
            } else {
                hosts.join(", ")
            };
            out.push(Line::Info(wrap(
                indent,
                &format!("{} passed on {on}: ", count(names.len(), "check")),
                &names,
                width,
            )));
        }
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|c| !c.failed.is_empty())
            .map(|c| {
                let hosts: Vec<&str> = c.failed.iter().map(|f| f.host.as_str()).collect();
                format!("{} ({})", c.check, hosts.join(", "))
            })
            .collect();
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(String::as_str).collect();
            out.push(Line::Info(wrap(indent, "failed: ", &names, width)));
        }
        let not_run: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| c.passed.is_empty() && c.warned.is_empty() && c.failed.is_empty())
            .map(|c| c.check.as_str())
            .collect();
        if !not_run.is_empty() {
            out.push(Line::Info(wrap(indent, "not run: ", &not_run, width)));
        }
    }
    for c in &r.checks {
        if verbosity > 0 {
            for f in &c.warned {
                out.push(Line::Warn(warning(&c.check, &f.host, f)));
            }
            continue;
        }
        // The same finding on several hosts, once.
        let mut seen: Vec<(&CheckFinding, Vec<&str>)> = Vec::new();
        for f in &c.warned {
            match seen
                .iter_mut()
                .find(|(g, _)| (&g.found, &g.needed, &g.hint) == (&f.found, &f.needed, &f.hint))
            {
                Some((_, hosts)) => hosts.push(&f.host),
                None => seen.push((f, vec![&f.host])),
            }
        }
        for (f, hosts) in seen {
            out.push(Line::Warn(warning(&c.check, &hosts.join(", "), f)));
        }
    }
    out
}

fn warning(check: &str, hosts: &str, f: &CheckFinding) -> String {
    format!(
        "warning: {check} on {hosts}: found {}; needed {}\n    hint: {}",
        f.found, f.needed, f.hint
    )
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `indent` + `head` + the names comma-separated, wrapped onto lines indented two more
/// than `indent`.
fn wrap(indent: &str, head: &str, names: &[&str], width: usize) -> String {
    let lead = indent.chars().count() + 2;
    let mut s = format!("{indent}{head}");
    let mut col = indent.chars().count() + head.chars().count();
    for (i, n) in names.iter().enumerate() {
        let piece = if i + 1 < names.len() {
            format!("{n},")
        } else {
            (*n).to_string()
        };
        let w = piece.chars().count();
        if i > 0 {
            if col + 1 + w > width {
                let _ = write!(s, "\n{:lead$}", "");
                col = lead;
            } else {
                s.push(' ');
                col += 1;
            }
        }
        s.push_str(&piece);
        col += w;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(host: &str, found: &str) -> CheckFinding {
        CheckFinding {
            host: host.into(),
            found: found.into(),
            needed: "cgroup2fs".into(),
            hint: "allowed by the answer file".into(),
        }
    }

    fn report() -> PreflightReport {
        let hosts: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        let all = hosts.clone();
        let mut checks: Vec<CheckResult> = [
            "os-supported",
            "arch",
            "init-systemd",
            "cpu",
            "memory",
            "disk",
            "selinux",
            "node-name",
            "unique-names",
            "unique-machine-id",
            "default-route",
            "node-ip",
            "cidr-overlap",
        ]
        .iter()
        .map(|c| CheckResult {
            check: (*c).into(),
            passed: all.clone(),
            warned: vec![],
            failed: vec![],
        })
        .collect();
        checks.push(CheckResult {
            check: "cgroup-v2".into(),
            passed: vec![],
            warned: vec![
                f("node1", "/sys/fs/cgroup is tmpfs"),
                f("node2", "/sys/fs/cgroup is tmpfs"),
                f("node3", "/sys/fs/cgroup is tmpfs"),
            ],
            failed: vec![],
        });
        checks.push(CheckResult {
            check: "time-sync".into(),
            passed: vec!["node1".into(), "node2".into()],
            warned: vec![CheckFinding {
                host: "node3".into(),
                found: "no chrony, systemd-timesyncd or ntpd running".into(),
                needed: "a time synchronisation daemon".into(),
                hint: "install chrony".into(),
            }],
            failed: vec![],
        });
        checks.push(CheckResult {
            check: "ports-free".into(),
            passed: vec!["node1".into(), "node3".into()],
            warned: vec![],
            failed: vec![CheckFinding {
                host: "node2".into(),
                found: "TCP 6443 held by nginx".into(),
                needed: "free".into(),
                hint: "stop nginx".into(),
            }],
        });
        checks.push(CheckResult {
            check: "reachability".into(),
            passed: vec![],
            warned: vec![],
            failed: vec![],
        });
        PreflightReport { hosts, checks }
    }

    fn text(lines: Vec<Line>) -> String {
        lines
            .into_iter()
            .map(|l| match l {
                Line::Info(s) => s,
                Line::Warn(s) => format!("[warn] {s}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn checks_are_named_and_a_warning_on_every_host_is_shown_once() {
        let t = text(lines(&report(), 0, "", WIDTH));
        insta::assert_snapshot!(t);
        assert_eq!(t.matches("warning: cgroup-v2").count(), 1, "{t}");
        for c in report().checks {
            assert!(t.contains(&c.check), "{} not named:\n{t}", c.check);
        }
    }

    #[test]
    fn verbose_shows_each_hosts_warning_and_quiet_only_warnings() {
        let t = text(lines(&report(), 1, "  ", WIDTH));
        assert_eq!(t.matches("warning: cgroup-v2 on node").count(), 3, "{t}");
        let q = text(lines(&report(), -1, "", WIDTH));
        assert!(!q.contains("passed"), "{q}");
        assert!(q.contains("warning: time-sync on node3"), "{q}");
    }

    #[test]
    fn counts_per_host() {
        let r = report();
        assert_eq!(r.counts("node2"), (14, 1));
        assert_eq!(r.counts("node3"), (14, 2));
    }

    #[test]
    fn long_lists_wrap_under_the_first_name() {
        let names = ["aaaaaaaaaaaaaaaaaaaa"; 8];
        let s = wrap("  ", "8 checks passed on every host: ", &names, WIDTH);
        assert!(s.lines().all(|l| l.chars().count() <= WIDTH), "{s}");
        let second = s.lines().nth(1).unwrap_or_default();
        assert!(second.starts_with("    a"), "{s}");
    }
}
