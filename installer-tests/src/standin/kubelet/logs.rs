//! Container logs, kept as the kubelet and containerd keep them, and served as the kubelet serves
//! them to the apiserver.
//!
//! - Files: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart count>.log` (the kubelet's
//!   `BuildContainerLogsDirectory`, `pkg/kubelet/kuberuntime/helpers.go`), one line per write in
//!   the CRI format `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>` (`F` a full line, `P` a
//!   partial one continued by the next: `pkg/kubelet/kuberuntime/logs/logs.go`).
//! - The kubelet's `GET /containerLogs/{namespace}/{pod}/{container}` on its port 10250, with
//!   `previous`, `tailLines`, `limitBytes`, `timestamps` and `sinceSeconds`, as the apiserver's
//!   `pods/log` asks for them; the current container's log is its highest-numbered file, the
//!   previous one the file before it.
//!
//! What writes them: the stand-in's simulated containers have no program of their own, so the
//! kubelet writes what a container's start and crash would show (its listeners, its bind error).
//! A test may append lines to a container's file, standing for what the program would print.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::standin::paths::Root;

/// The directory of all logs of one pod.
pub fn pod_dir(root: &Root, ns: &str, pod: &str, uid: &str) -> PathBuf {
    root.path(format!("/var/log/pods/{ns}_{pod}_{uid}"))
}

/// The log file of one run (`restart` = the container's restart count) of a container.
pub fn file(root: &Root, ns: &str, pod: &str, uid: &str, container: &str, restart: u32) -> PathBuf {
    pod_dir(root, ns, pod, uid)
        .join(container)
        .join(format!("{restart}.log"))
}

/// Appends `text` to a container's log, one full CRI line per line of text.
pub fn append(path: &Path, stream: &str, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let ts = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%9fZ");
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&format!("{ts} {stream} F {line}\n"));
    }
    f.write_all(out.as_bytes())
}

/// What the apiserver asks the kubelet for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
}

impl Query {
    /// From the query parameters of `pods/log` or `containerLogs` (unknown ones ignored).
    pub fn from_params(q: &std::collections::BTreeMap<String, String>) -> Query {
        let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
        Query {
            previous: q.get("previous").is_some_and(|v| v == "true"),
            tail_lines: num("tailLines").and_then(|n| usize::try_from(n).ok()),
            limit_bytes: num("limitBytes").and_then(|n| usize::try_from(n).ok()),
            timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
            since_seconds: num("sinceSeconds"),
        }
    }

    /// The same parameters, as a query string (without `?`).
    pub fn to_params(&self) -> String {
        let mut p = Vec::new();
        if self.previous {
            p.push("previous=true".to_string());
        }
        if let Some(n) = self.tail_lines {
            p.push(format!("tailLines={n}"));
        }
        if let Some(n) = self.limit_bytes {
            p.push(format!("limitBytes={n}"));
        }
        if self.timestamps {
            p.push("timestamps=true".to_string());
        }
        if let Some(n) = self.since_seconds {
            p.push(format!("sinceSeconds={n}"));
        }
        p.join("&")
    }
}

/// Why a log cannot be given (the kubelet's texts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// 404 from the kubelet.
    NotFound(String),
    /// 400 from the kubelet (`previous terminated container ... not found`).
    BadRequest(String),
}

/// The log of `container` of pod `ns/pod` on this node, as `GET /containerLogs` returns it.
pub fn read(
    root: &Root,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
) -> Result<String, LogError> {
    let base = root.path("/var/log/pods");
    let prefix = format!("{ns}_{pod}_");
    // The newest directory of that pod (a pod recreated under the same name has a new uid).
    let dir = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path().join(container))
        .ok_or_else(|| {
            LogError::NotFound(format!(
                "container \"{container}\" in pod \"{pod}\" is not available"
            ))
        })?;
    let mut runs: Vec<u32> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    runs.sort_unstable();
    let run = if q.previous {
        runs.iter().rev().nth(1).copied().ok_or_else(|| {
            LogError::BadRequest(format!(
                "previous terminated container \"{container}\" in pod \"{pod}\" not found"
            ))
        })?
    } else {
        runs.last().copied().ok_or_else(|| {
            LogError::NotFound(format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start"
            ))
        })?
    };
    let raw = std::fs::read_to_string(dir.join(format!("{run}.log"))).unwrap_or_default();
    Ok(render(&raw, q, jiff::Timestamp::now()))
}

/// CRI lines to what `kubectl logs` prints: the text (with its time when asked), partial lines
/// joined, then `sinceSeconds`, `tailLines` and `limitBytes` applied in the kubelet's order.
pub fn render(raw: &str, q: &Query, now: jiff::Timestamp) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for l in raw.lines() {
        let mut parts = l.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = parts.next().unwrap_or("");
        if let (Some(since), Ok(t)) = (q.since_seconds, ts.parse::<jiff::Timestamp>())
            && now.as_second() - t.as_second() > since
        {
            continue;
        }
        if partial.is_empty() && q.timestamps {
            partial.push_str(ts);
            partial.push(' ');
        }
        partial.push_str(text);
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    if let Some(n) = q.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Some(max) = q.limit_bytes
        && out.len() > max
    {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "2026-12-03T06:00:00.000000001Z stdout F one\n\
2026-12-03T06:00:01.000000001Z stderr P tw\n\
2026-12-03T06:00:01.000000002Z stderr F o\n\
2026-12-03T06:00:59.000000001Z stdout F three\n";

    fn now() -> jiff::Timestamp {
        "2026-12-03T06:01:00Z".parse().unwrap()
    }

    #[test]
    fn partial_lines_are_joined_and_the_cri_prefix_dropped() {
        assert_eq!(render(RAW, &Query::default(), now()), "one\ntwo\nthree\n");
    }

    #[test]
    fn tail_since_limit_and_timestamps_as_the_kubelet_applies_them() {
        let tail = Query {
            tail_lines: Some(2),
            ..Query::default()
        };
        assert_eq!(render(RAW, &tail, now()), "two\nthree\n");
        let since = Query {
            since_seconds: Some(30),
            ..Query::default()
        };
        assert_eq!(render(RAW, &since, now()), "three\n");
        let limit = Query {
            limit_bytes: Some(6),
            ..Query::default()
        };
        assert_eq!(render(RAW, &limit, now()), "one\ntw");
        let ts = Query {
            timestamps: true,
            tail_lines: Some(1),
            ..Query::default()
        };
        assert_eq!(
            render(RAW, &ts, now()),
            "2026-12-03T06:00:59.000000001Z three\n"
        );
    }

    #[test]
    fn current_and_previous_runs_are_the_last_two_files() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::under(d.path());
        let f0 = file(&root, "app", "web-1", "u1", "web", 0);
        let f1 = file(&root, "app", "web-1", "u1", "web", 1);
        append(&f0, "stderr", "bind: address already in use").unwrap();
        append(&f1, "stdout", "listening on :8080\nready").unwrap();
        let q = Query::default();
        assert_eq!(
            read(&root, "app", "web-1", "web", &q).unwrap(),
            "listening on :8080\nready\n"
        );
        let prev = Query {
            previous: true,
            ..Query::default()
        };
        assert_eq!(
            read(&root, "app", "web-1", "web", &prev).unwrap(),
            "bind: address already in use\n"
        );
        std::fs::remove_file(&f0).unwrap();
        assert_eq!(
            read(&root, "app", "web-1", "web", &prev),
            Err(LogError::BadRequest(
                "previous terminated container \"web\" in pod \"web-1\" not found".into()
            ))
        );
        assert!(matches!(
            read(&root, "app", "nope", "web", &q),
            Err(LogError::NotFound(_))
        ));
    }

    #[test]
    fn query_round_trips_through_its_parameters() {
        let q = Query {
            previous: true,
            tail_lines: Some(10),
            limit_bytes: Some(100),
            timestamps: true,
            since_seconds: Some(60),
        };
        let params = crate::standin::api::kube::url_decode_pairs(&q.to_params());
        assert_eq!(Query::from_params(&params), q);
    }
}
