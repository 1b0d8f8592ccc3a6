//! The kubelet's side of real containers: starting them through [`super::container`] and
//! [`super::runc`], reading their exits, restarts with the kubelet's back-off (10 s doubling to
//! 300 s), `CrashLoopBackOff` with `lastState.terminated` (exit code, reason, message),
//! restartPolicy, and probes against the real process (exec probes run inside the container; a
//! failing liveness probe restarts it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::container::{self, NodeCtx, PrepError};
use super::pods::Run;
use super::{Kubelet, PodLocal, logs, runc, shim};
use crate::rootfs_images::ImageInfo;

/// Per real container bookkeeping.
#[derive(Default, Clone)]
pub(super) struct RealState {
    /// `started_at` of the last exit already counted.
    accounted: String,
    /// The last termination (`lastState.terminated`).
    pub(super) last: Option<Value>,
    backoff: u64,
    retry_at: Option<Instant>,
    /// Ended for good (restartPolicy says no restart).
    done: bool,
    live_fail: u32,
    ready_fail: u32,
    ready_ok: u32,
    ready: bool,
    last_probe: Option<Instant>,
    last_live: Option<Instant>,
}

type Events = Vec<(String, String, String, Option<String>)>;

fn ev(events: &mut Events, ty: &str, reason: &str, msg: String, c: &str) {
    events.push((ty.into(), reason.into(), msg, Some(c.to_string())));
}

impl Kubelet {
    fn kubelet_dir(&self) -> PathBuf {
        self.setup.root.path("/var/lib/kubelet")
    }

    /// Run (or follow) a container of a host-network pod whose image carries a program.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_real(
        &mut self,
        pod: &Value,
        uid: &str,
        local: &mut PodLocal,
        cname: &str,
        cspec: &Value,
        image: (PathBuf, ImageInfo),
        events: &mut Events,
    ) -> Run {
        let pns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pname = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dir = shim::shim_dir(&self.run_dir, uid, cname);
        let policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let mut rs = local.real.remove(cname).unwrap_or_default();
        let st = runc::status(&dir);
        let run = 'run: {
            if let Some(st) = st.as_ref().filter(|s| s.state == "running")
                && shim::alive(st.pid, &dir)
            {
                local.shims.insert(cname.to_string(), (st.pid, dir.clone()));
                local
                    .started
                    .insert(cname.to_string(), st.started_at.clone());
                let ready = self
                    .real_probes(cspec, &st.started_at, &mut rs, &dir, cname, events)
                    .await;
                break 'run Run::Running {
                    started_at: st.started_at.clone(),
                    ready,
                };
            }
            if let Some(st) = st
                .as_ref()
                .filter(|s| s.state == "exited" || s.state == "failed")
                && st.started_at != rs.accounted
            {
                rs.accounted = st.started_at.clone();
                local.shims.remove(cname);
                rs.ready = false;
                rs.live_fail = 0;
                let (code, reason) = if st.state == "failed" {
                    ev(
                        events,
                        "Warning",
                        "Failed",
                        format!("Error: {}", st.reason),
                        cname,
                    );
                    (128, "StartError".to_string())
                } else {
                    (st.exit_code, st.reason.clone())
                };
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": st.started_at, "finishedAt": st.finished_at, "containerID": format!("containerd://{}", dir_id(&dir))});
                if !st.message.is_empty() {
                    t["message"] = json!(st.message);
                }
                rs.last = Some(t);
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    rs.backoff = if rs.backoff == 0 {
                        10
                    } else {
                        (rs.backoff * 2).min(300)
                    };
                    rs.retry_at = Some(Instant::now() + Duration::from_secs(rs.backoff));
                    *local.restarts.entry(cname.to_string()).or_insert(0) += 1;
                    ev(
                        events,
                        "Warning",
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {cname} in pod {pname}_{pns}({uid})"
                        ),
                        cname,
                    );
                } else {
                    rs.done = true;
                }
            }
            if rs.done
                && let Some(t) = &rs.last
            {
                break 'run Run::Terminated {
                    reason: t["reason"].as_str().unwrap_or_default().to_string(),
                    exit_code: t["exitCode"].as_i64().unwrap_or(0),
                    started_at: t["startedAt"].as_str().unwrap_or_default().to_string(),
                    finished_at: t["finishedAt"].as_str().unwrap_or_default().to_string(),
                };
            }
            if let (Some(retry), Some(t)) = (rs.retry_at, &rs.last)
                && Instant::now() < retry
            {
                break 'run Run::CrashLoop {
                    message: format!(
                        "back-off {}s restarting failed container={cname} pod={pname}_{pns}({uid})",
                        rs.backoff
                    ),
                    last_started: t["startedAt"].as_str().unwrap_or_default().to_string(),
                    last_finished: t["finishedAt"].as_str().unwrap_or_default().to_string(),
                };
            }
            // A new run.
            if runc::runc_bin().is_none() {
                break 'run Run::Waiting {
                    reason: "CreateContainerError".into(),
                    message: "runc not found on this node (the lab's base installs Debian's runc)"
                        .into(),
                };
            }
            let restart = local.restarts.get(cname).copied().unwrap_or(0);
            let log_path = logs::file(
                &self.setup.root,
                &pns,
                &pname,
                uid,
                cname,
                u32::try_from(restart).unwrap_or(0),
            );
            let _ = std::fs::create_dir_all(&dir);
            let ctx = NodeCtx {
                node_name: &self.setup.node.node_name,
                node_ip: &self.node_ip,
                data_dir: self.setup.root.path(&self.setup.node.data_dir),
                kubelet_dir: self.kubelet_dir(),
                dir: dir.clone(),
                ca_pem: &self.setup.ca_pem,
            };
            let prepared = container::prepare(
                &self.kube, &ctx, pod, cspec, &image.1, &image.0, restart, &log_path,
            )
            .await;
            let prepared = match prepared {
                Ok(p) => p,
                Err(PrepError::Config(m)) => {
                    ev(events, "Warning", "Failed", format!("Error: {m}"), cname);
                    break 'run Run::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: m,
                    };
                }
                Err(PrepError::Mount(m)) => {
                    events.push(("Warning".into(), "FailedMount".into(), m, None));
                    break 'run Run::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    };
                }
                Err(PrepError::Create(m)) => {
                    ev(events, "Warning", "Failed", format!("Error: {m}"), cname);
                    break 'run Run::Waiting {
                        reason: "CreateContainerError".into(),
                        message: m,
                    };
                }
            };
            let argv0 = shim::shim_argv0(&self.setup.node.data_dir);
            if let Err(e) = runc::start_shim(&dir, &argv0, &prepared.id) {
                ev(
                    events,
                    "Warning",
                    "Failed",
                    format!("Error: failed to start the runc shim: {e}"),
                    cname,
                );
                break 'run Run::Waiting {
                    reason: "CreateContainerError".into(),
                    message: e.to_string(),
                };
            }
            ev(
                events,
                "Normal",
                "Created",
                format!("Created container: {cname}"),
                cname,
            );
            // Until runc has created it, the container is still being created.
            let mut started = None;
            for _ in 0..80 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                if let Some(s) = runc::status(&dir) {
                    started = Some(s);
                    break;
                }
            }
            match started {
                Some(s) if s.state == "running" => {
                    ev(
                        events,
                        "Normal",
                        "Started",
                        format!("Started container {cname}"),
                        cname,
                    );
                    local
                        .started
                        .insert(cname.to_string(), s.started_at.clone());
                    rs.retry_at = None;
                    rs.ready_ok = 0;
                    rs.ready_fail = 0;
                    rs.last_probe = None;
                    rs.last_live = None;
                    Run::Running {
                        started_at: s.started_at,
                        ready: cspec.get("readinessProbe").is_none(),
                    }
                }
                _ => Run::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
            }
        };
        if let Some(l) = &rs.last {
            local.last_terminated.insert(cname.to_string(), l.clone());
        }
        local.ready.insert(
            cname.to_string(),
            matches!(run, Run::Running { ready: true, .. }),
        );
        local.real.insert(cname.to_string(), rs);
        run
    }

    /// One probe against the real process: httpGet/tcpSocket to its sockets on the node, exec
    /// inside the container.
    async fn real_probe_once(
        &self,
        cspec: &Value,
        probe: &Value,
        dir: &Path,
    ) -> Result<(), String> {
        if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
            let argv: Vec<String> = cmd
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
            let id = dir_id(dir);
            return match runc::exec(&id, &argv, timeout).await {
                Ok((0, _)) => Ok(()),
                Ok((code, out)) => Err(format!(
                    "command {argv:?} exited with {code}: {}",
                    out.trim()
                )),
                Err(e) => Err(e),
            };
        }
        self.probe_ok(cspec, probe).await
    }

    /// Readiness and liveness of a running real container, with their periods and thresholds;
    /// a liveness failure past its threshold stops the container (the shim's graceful stop) so
    /// that it restarts. Returns readiness.
    async fn real_probes(
        &self,
        cspec: &Value,
        started_at: &str,
        rs: &mut RealState,
        dir: &Path,
        cname: &str,
        events: &mut Events,
    ) -> bool {
        let since = crate::standin::store::parse_time(started_at)
            .map(|s| jiff::Timestamp::now().as_second() - s.as_second())
            .unwrap_or(0);
        let due = |p: &Value, last: Option<Instant>| {
            let delay = p["initialDelaySeconds"].as_i64().unwrap_or(0);
            let period = p["periodSeconds"].as_u64().unwrap_or(10).max(1);
            since >= delay && last.is_none_or(|l| l.elapsed() >= Duration::from_secs(period))
        };
        if let Some(p) = cspec.get("livenessProbe")
            && due(p, rs.last_live)
        {
            rs.last_live = Some(Instant::now());
            match self.real_probe_once(cspec, p, dir).await {
                Ok(()) => rs.live_fail = 0,
                Err(e) => {
                    rs.live_fail += 1;
                    ev(
                        events,
                        "Warning",
                        "Unhealthy",
                        format!("Liveness probe failed: {e}"),
                        cname,
                    );
                    let threshold = p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32;
                    if rs.live_fail >= threshold {
                        ev(
                            events,
                            "Normal",
                            "Killing",
                            format!("Container {cname} failed liveness probe, will be restarted"),
                            cname,
                        );
                        if let Some(st) = runc::status(dir) {
                            shim::stop(st.pid);
                        }
                        rs.live_fail = 0;
                        return false;
                    }
                }
            }
        }
        match cspec.get("readinessProbe") {
            None => true,
            Some(p) => {
                if due(p, rs.last_probe) {
                    rs.last_probe = Some(Instant::now());
                    match self.real_probe_once(cspec, p, dir).await {
                        Ok(()) => {
                            rs.ready_fail = 0;
                            rs.ready_ok += 1;
                            if rs.ready_ok
                                >= p["successThreshold"].as_u64().unwrap_or(1).max(1) as u32
                            {
                                rs.ready = true;
                            }
                        }
                        Err(e) => {
                            rs.ready_ok = 0;
                            rs.ready_fail += 1;
                            ev(
                                events,
                                "Warning",
                                "Unhealthy",
                                format!("Readiness probe failed: {e}"),
                                cname,
                            );
                            if rs.ready_fail
                                >= p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32
                                || !rs.ready
                            {
                                rs.ready = false;
                            }
                        }
                    }
                }
                rs.ready
            }
        }
    }
}

/// The runc container ID of a container directory (from its shim spec).
pub(super) fn dir_id(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("runc.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<runc::ShimSpec>(&s).ok())
        .map(|s| s.id)
        .unwrap_or_default()
}

/// Whether the container directory's real container is still running (its shim alive).
pub(super) fn real_alive(dir: &Path) -> bool {
    runc::shim_alive(dir)
}
