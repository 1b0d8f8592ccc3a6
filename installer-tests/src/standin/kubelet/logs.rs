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
//! A pod's logs are removed once the pod is gone from the API.

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

/// Removes the logs of a pod that is gone (the kubelet's garbage collection of a deleted pod).
pub fn remove_pod(root: &Root, uid: &str) {
    let suffix = format!("_{uid}");
    for e in std::fs::read_dir(root.path("/var/log/pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(&suffix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
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
    /// Keep the stream open and send lines as they are written, until the run ends.
    pub follow: bool,
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
            follow: q.get("follow").is_some_and(|v| v == "true"),
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
        if self.follow {
            p.push("follow=true".to_string());
        }
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

/// The log of `container` of pod `ns/pod` on this node, as `GET /containerLogs` returns it
/// (without `follow`: see [`follow`]).
pub fn read(
    root: &Root,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
) -> Result<String, LogError> {
    let path = locate(root, ns, pod, container, q.previous)?;
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    Ok(render(&raw, q, jiff::Timestamp::now()))
}

/// What `follow` sends: the log so far (as [`read`] gives it), then each complete line as it is
/// written, until the run's file is gone or a newer run has begun (the container restarted),
/// polled every 200 ms. `limitBytes` applies to the first part only.
pub fn follow(
    root: &Root,
    ns: &str,
    pod: &str,
    container: &str,
    q: &Query,
) -> Result<impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + use<>, LogError> {
    let path = locate(root, ns, pod, container, false)?;
    let raw = std::fs::read(&path).unwrap_or_default();
    let head = render(&String::from_utf8_lossy(&raw), q, jiff::Timestamp::now());
    let rest = Query {
        timestamps: q.timestamps,
        ..Query::default()
    };
    let state = (Some(head), path, raw.len() as u64);
    Ok(futures::stream::unfold(
        state,
        move |(head, path, offset)| {
            let rest = rest.clone();
            async move {
                if let Some(h) = head {
                    return Some((Ok(bytes::Bytes::from(h)), (None, path, offset)));
                }
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    if !path.exists() || newer_run(&path) {
                        return None;
                    }
                    let data = std::fs::read(&path).ok()?;
                    let start = usize::try_from(offset).ok()?.min(data.len());
                    let Some(end) = data[start..].iter().rposition(|b| *b == b'\n') else {
                        continue;
                    };
                    let chunk = &data[start..start + end + 1];
                    let text = render(
                        &String::from_utf8_lossy(chunk),
                        &rest,
                        jiff::Timestamp::now(),
                    );
                    let next = offset + chunk.len() as u64;
                    if !text.is_empty() {
                        return Some((Ok(bytes::Bytes::from(text)), (None, path, next)));
                    }
                }
            }
        },
    ))
}

/// True when a run numbered after `path`'s exists beside it.
fn newer_run(path: &Path) -> bool {
    let run =
        |p: &Path| -> Option<u32> { p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok() };
    let Some(mine) = run(path) else {
        return false;
    };
    path.parent()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| run(&e.path()).is_some_and(|n| n > mine))
}

/// The file of the current run (or, with `previous`, the run before it).
fn locate(
    root: &Root,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<PathBuf, LogError> {
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
    let run = if previous {
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
    Ok(dir.join(format!("{run}.log")))
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
        let other = file(&root, "app", "web-2", "u2", "web", 0);
        append(&other, "stdout", "kept").unwrap();
        remove_pod(&root, "u2");
        assert!(!pod_dir(&root, "app", "web-2", "u2").exists());
        assert!(f1.exists(), "another pod's log was removed");
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

    #[tokio::test]
    async fn follow_sends_what_is_written_and_ends_when_the_container_restarts() {
        use futures::StreamExt;
        let d = tempfile::tempdir().unwrap();
        let root = Root::under(d.path());
        let f0 = file(&root, "app", "web-1", "u1", "web", 0);
        append(&f0, "stdout", "first").unwrap();
        let q = Query {
            follow: true,
            ..Query::default()
        };
        let mut s = Box::pin(follow(&root, "app", "web-1", "web", &q).unwrap());
        assert_eq!(s.next().await.unwrap().unwrap(), "first\n");
        append(&f0, "stdout", "second").unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "second\n");
        append(
            &file(&root, "app", "web-1", "u1", "web", 1),
            "stdout",
            "again",
        )
        .unwrap();
        assert!(s.next().await.is_none(), "the stream outlived its run");
    }

    #[test]
    fn query_round_trips_through_its_parameters() {
        let q = Query {
            follow: true,
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
