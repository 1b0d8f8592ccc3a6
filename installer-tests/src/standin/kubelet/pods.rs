//! How the simulated kubelet decides a pod's fate and writes its status.
//!
//! Modelled on the kubelet (Kubernetes 1.36, `pkg/kubelet/kubelet_pods.go` `getPhase` and
//! `generateAPIPodStatus`, `pkg/kubelet/images/image_manager.go`, `pkg/kubelet/status/generate.go`):
//! - The sandbox needs the pause image (k3s: `docker.io/rancher/mirrored-pause:3.6`, `--pause-image`)
//!   to be present; in an airgap it can only come from the image archives, else
//!   `FailedCreatePodSandBox`.
//! - A pod without hostNetwork needs the CNI network (`NetworkNotReady`).
//! - Images: `imagePullPolicy: Never` and absent gives `ErrImageNeverPull`
//!   (`Container image "x" is not present with pull policy of Never`); `IfNotPresent` and absent,
//!   or `Always` (which pulls even when present), try the registry, fail without one
//!   (`ErrImagePull`) and back off (`ImagePullBackOff`, `Back-off pulling image "x"`).
//! - Phase: `Pending` while a container has not started, `Running` once all have (a crash-looping
//!   container counts as started), `Succeeded` when a run-to-completion pod's containers exit 0.
//! - Conditions `PodReadyToStartContainers`, `Initialized`, `ContainersReady`, `Ready`,
//!   `PodScheduled`, with the kubelet's reasons and messages.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::images::normalize;

/// The pause image k3s uses by default (`pkg/cli/cmds/agent.go` `PauseImage`).
pub const DEFAULT_PAUSE_IMAGE: &str = "rancher/mirrored-pause:3.6";

/// The registry a pull would go to for a normalised image name.
fn registry_host(image: &str) -> String {
    match image.split('/').next() {
        Some("docker.io") | None => "registry-1.docker.io".into(),
        Some(h) => h.to_string(),
    }
}

/// The containerd error for a pull without a registry (airgap: name resolution fails).
pub fn pull_error(image: &str) -> String {
    let n = normalize(image);
    let host = registry_host(&n);
    let (repo, tag) = match n.split_once('/') {
        Some((_, rest)) => match rest.rsplit_once(':') {
            Some((r, t)) => (r.to_string(), t.to_string()),
            None => (rest.to_string(), "latest".to_string()),
        },
        None => (n.clone(), "latest".into()),
    };
    format!(
        "failed to pull and unpack image \"{n}\": failed to resolve reference \"{n}\": failed to do request: Head \"https://{host}/v2/{repo}/manifests/{tag}\": dial tcp: lookup {host}: no such host"
    )
}

/// The state of an image for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    Present,
    NeverPull,
    PullFailed,
}

/// Decide an image's state from the pull policy and what the node has.
pub fn image_state(image: &str, policy: &str, present: &BTreeMap<String, u64>) -> ImageState {
    let have = present.contains_key(&normalize(image));
    match (policy, have) {
        ("Never", true) | ("IfNotPresent", true) => ImageState::Present,
        ("Never", false) => ImageState::NeverPull,
        // `Always` asks the registry even when the image is present; there is none in an airgap.
        _ => ImageState::PullFailed,
    }
}

/// What stops a pod's sandbox from being created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    SandboxImage(String),
    Network,
}

/// The per-pod decision.
#[derive(Debug, Clone)]
pub struct Plan {
    pub blocker: Option<Blocker>,
    pub init: Vec<(String, String, ImageState)>,
    pub containers: Vec<(String, String, ImageState)>,
}

fn containers_of(
    pod: &Value,
    list: &str,
    images: &BTreeMap<String, u64>,
) -> Vec<(String, String, ImageState)> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let policy = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
            let st = image_state(&image, policy, images);
            (name, image, st)
        })
        .collect()
}

/// Decide what can run for `pod` on a node with `images`, CNI state and pause image.
pub fn plan(
    pod: &Value,
    images: &BTreeMap<String, u64>,
    cni_ready: bool,
    pause_image: &str,
) -> Plan {
    let host_network = pod
        .pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pause = normalize(pause_image);
    let blocker = if !images.contains_key(&pause) {
        Some(Blocker::SandboxImage(format!(
            "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to start sandbox: failed to get sandbox image \"{pause}\": failed to pull image \"{pause}\": {}",
            pull_error(&pause)
        )))
    } else if !host_network && !cni_ready {
        Some(Blocker::Network)
    } else {
        None
    };
    Plan {
        blocker,
        init: containers_of(pod, "initContainers", images),
        containers: containers_of(pod, "containers", images),
    }
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
        ready: bool,
    },
    /// Crashed and waiting to restart.
    CrashLoop {
        message: String,
        last_started: String,
        last_finished: String,
    },
    Terminated {
        reason: String,
        exit_code: i64,
        started_at: String,
        finished_at: String,
    },
}

/// The QoS class (`pkg/apis/core/v1/helper/qos`).
pub fn qos_class(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn condition(
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    old: &Value,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let prev = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let ltt = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": ltt});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

fn container_status(
    name: &str,
    image: &str,
    run: &Run,
    restarts: i64,
    last: Option<&Value>,
) -> Value {
    let n = normalize(image);
    let mut s = json!({
        "name": name,
        "image": n,
        "imageID": "",
        "ready": false,
        "restartCount": restarts,
        "started": false,
    });
    match run {
        Run::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            s["state"] = json!({"waiting": w});
        }
        Run::Running { started_at, ready } => {
            s["state"] = json!({"running": {"startedAt": started_at}});
            s["ready"] = json!(ready);
            s["started"] = json!(true);
            s["containerID"] = json!(format!(
                "containerd://{}",
                &hex::encode(sha2_digest(&format!("{name}{started_at}")))
            ));
            s["imageID"] = json!(format!("{n}@sha256:{}", hex::encode(sha2_digest(&n))));
        }
        Run::CrashLoop {
            message,
            last_started,
            last_finished,
        } => {
            s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
            s["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": last_started, "finishedAt": last_finished}});
            s["imageID"] = json!(format!("{n}@sha256:{}", hex::encode(sha2_digest(&n))));
        }
        Run::Terminated {
            reason,
            exit_code,
            started_at,
            finished_at,
        } => {
            s["state"] = json!({"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at}});
            s["imageID"] = json!(format!("{n}@sha256:{}", hex::encode(sha2_digest(&n))));
        }
    }
    if !matches!(run, Run::Waiting { .. }) || restarts > 0 {
        s["lastState"] = s.get("lastState").cloned().unwrap_or(json!({}));
    } else {
        s["lastState"] = json!({});
    }
    if let Some(last) = last {
        match run {
            Run::Terminated { .. } => {
                if let Some(m) = last["message"].as_str().filter(|m| !m.is_empty()) {
                    s["state"]["terminated"]["message"] = json!(m);
                }
            }
            _ if restarts > 0 || matches!(run, Run::CrashLoop { .. }) => {
                s["lastState"] = json!({"terminated": last});
            }
            _ => {}
        }
    }
    s
}

fn sha2_digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Inputs to [`build_status`].
pub struct StatusInput<'a> {
    pub pod: &'a Value,
    pub plan: &'a Plan,
    pub init_runs: &'a BTreeMap<String, Run>,
    pub runs: &'a BTreeMap<String, Run>,
    pub restarts: &'a BTreeMap<String, i64>,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub start_time: &'a str,
    pub now: &'a str,
    /// Real containers' last termination (`lastState.terminated`; for a container that ended for
    /// good, its `state.terminated` message), by container name.
    pub last_terminated: &'a BTreeMap<String, Value>,
}

/// The pod status the kubelet would report.
pub fn build_status(inp: &StatusInput<'_>) -> Value {
    let pod = inp.pod;
    let sandbox_ok = inp.plan.blocker.is_none();
    let init_done = inp.plan.init.iter().all(|(n, _, _)| {
        matches!(
            inp.init_runs.get(n),
            Some(Run::Terminated { exit_code: 0, .. })
        )
    });
    let init_statuses: Vec<Value> = inp
        .plan
        .init
        .iter()
        .map(|(n, img, _)| {
            let run = inp.init_runs.get(n).cloned().unwrap_or(Run::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            });
            container_status(
                n,
                img,
                &run,
                *inp.restarts.get(n).unwrap_or(&0),
                inp.last_terminated.get(n),
            )
        })
        .collect();
    let statuses: Vec<Value> = inp
        .plan
        .containers
        .iter()
        .map(|(n, img, _)| {
            let default = if !sandbox_ok || !init_done {
                Run::Waiting {
                    reason: if init_done {
                        "ContainerCreating"
                    } else {
                        "PodInitializing"
                    }
                    .into(),
                    message: String::new(),
                }
            } else {
                Run::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                }
            };
            let run = inp.runs.get(n).cloned().unwrap_or(default);
            container_status(
                n,
                img,
                &run,
                *inp.restarts.get(n).unwrap_or(&0),
                inp.last_terminated.get(n),
            )
        })
        .collect();
    let not_ready: Vec<String> = inp
        .plan
        .containers
        .iter()
        .filter(|(n, _, _)| !matches!(inp.runs.get(n), Some(Run::Running { ready: true, .. })))
        .map(|(n, _, _)| n.clone())
        .collect();
    // getPhase
    let restart_policy = pod
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    let mut waiting = 0;
    let mut running = 0;
    let mut succeeded = 0;
    let mut failed = 0;
    for (n, _, _) in &inp.plan.containers {
        match inp.runs.get(n) {
            Some(Run::Running { .. }) | Some(Run::CrashLoop { .. }) => running += 1,
            Some(Run::Terminated { exit_code: 0, .. }) => succeeded += 1,
            Some(Run::Terminated { .. }) => failed += 1,
            _ => waiting += 1,
        }
    }
    let total = inp.plan.containers.len();
    let phase = if !init_done || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if succeeded == total && total > 0 {
        if restart_policy == "Always" {
            "Running"
        } else {
            "Succeeded"
        }
    } else if failed > 0 && restart_policy == "Never" {
        "Failed"
    } else {
        "Running"
    };
    let now = inp.now;
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ok,
            None,
            None,
            pod,
            now,
        ),
        if init_done {
            condition("Initialized", true, None, None, pod, now)
        } else {
            let names: Vec<&str> = inp
                .plan
                .init
                .iter()
                .filter(|(n, _, _)| {
                    !matches!(
                        inp.init_runs.get(n),
                        Some(Run::Terminated { exit_code: 0, .. })
                    )
                })
                .map(|(n, _, _)| n.as_str())
                .collect();
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    names.join(" ")
                )),
                pod,
                now,
            )
        },
    ];
    let done = phase == "Succeeded" || phase == "Failed";
    let ready = not_ready.is_empty() && !done;
    let (reason, msg) = if done {
        (Some("PodCompleted"), None)
    } else if ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            )),
        )
    };
    conditions.push(condition(
        "ContainersReady",
        ready,
        reason,
        msg.clone(),
        pod,
        now,
    ));
    conditions.push(condition("Ready", ready, reason, msg, pod, now));
    if let Some(ps) = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
    {
        conditions.push(ps.clone());
    } else {
        conditions.push(condition("PodScheduled", true, None, None, pod, now));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": inp.host_ip,
        "hostIPs": [{"ip": inp.host_ip}],
        "startTime": inp.start_time,
        "containerStatuses": statuses,
        "qosClass": qos_class(pod),
    });
    if let Some(g) = pod.pointer("/metadata/generation") {
        status["observedGeneration"] = g.clone();
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if sandbox_ok && !inp.pod_ip.is_empty() {
        status["podIP"] = json!(inp.pod_ip);
        status["podIPs"] = json!([{"ip": inp.pod_ip}]);
    }
    status
}

/// Resolve a probe's port (number or container port name).
pub fn probe_port(container: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().map(|n| n as u16),
        Value::String(s) => s.parse().ok().or_else(|| {
            container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p["name"] == s.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .map(|n| n as u16)
        }),
        _ => None,
    }
}

/// The ports a container's process would listen on: its declared container ports, plus the
/// ports its probes target (with TLS and paths for httpGet probes).
pub fn listen_ports(container: &Value) -> Vec<super::shim::ShimPort> {
    let mut out: Vec<super::shim::ShimPort> = Vec::new();
    for p in container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(port) = p["containerPort"].as_u64() {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
            if !out
                .iter()
                .any(|o| o.port == port as u16 && o.protocol == proto)
            {
                out.push(super::shim::ShimPort {
                    port: port as u16,
                    protocol: proto,
                    tls: false,
                    paths: vec![],
                });
            }
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(pr) = container.get(probe) else {
            continue;
        };
        if let Some(hg) = pr.get("httpGet") {
            let Some(port) = probe_port(container, &hg["port"]) else {
                continue;
            };
            let tls = hg["scheme"].as_str() == Some("HTTPS");
            let path = hg["path"].as_str().unwrap_or("/").to_string();
            match out
                .iter_mut()
                .find(|o| o.port == port && o.protocol == "TCP")
            {
                Some(o) => {
                    o.tls |= tls;
                    if !o.paths.contains(&path) {
                        o.paths.push(path);
                    }
                }
                None => out.push(super::shim::ShimPort {
                    port,
                    protocol: "TCP".into(),
                    tls,
                    paths: vec![path],
                }),
            }
        } else if let Some(ts) = pr.get("tcpSocket")
            && let Some(port) = probe_port(container, &ts["port"])
            && !out.iter().any(|o| o.port == port && o.protocol == "TCP")
        {
            out.push(super::shim::ShimPort {
                port,
                protocol: "TCP".into(),
                tls: false,
                paths: vec![],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(image: &str, policy: &str, host_network: bool) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"hostNetwork": host_network, "restartPolicy": "Always", "containers": [{"name": "app", "image": image, "imagePullPolicy": policy}]}})
    }

    fn imgs(names: &[&str]) -> BTreeMap<String, u64> {
        names.iter().map(|n| (normalize(n), 1)).collect()
    }

    #[test]
    fn image_rules() {
        let have = imgs(&["registry.example/app/api:1.0"]);
        assert_eq!(
            image_state("registry.example/app/api:1.0", "IfNotPresent", &have),
            ImageState::Present
        );
        assert_eq!(
            image_state("registry.example/app/api:1.0", "Always", &have),
            ImageState::PullFailed
        );
        assert_eq!(
            image_state("registry.example/app/api:2.0", "Never", &have),
            ImageState::NeverPull
        );
        assert_eq!(
            image_state("registry.example/app/api:2.0", "IfNotPresent", &have),
            ImageState::PullFailed
        );
    }

    #[test]
    fn sandbox_needs_pause_and_network() {
        let p = pod("x:1", "IfNotPresent", false);
        let none = imgs(&[]);
        assert!(matches!(
            plan(&p, &none, true, DEFAULT_PAUSE_IMAGE).blocker,
            Some(Blocker::SandboxImage(_))
        ));
        let pause = imgs(&[DEFAULT_PAUSE_IMAGE]);
        assert_eq!(
            plan(&p, &pause, false, DEFAULT_PAUSE_IMAGE).blocker,
            Some(Blocker::Network)
        );
        let hp = pod("x:1", "IfNotPresent", true);
        assert_eq!(plan(&hp, &pause, false, DEFAULT_PAUSE_IMAGE).blocker, None);
    }

    #[test]
    fn missing_image_never_pull_status() {
        let p = pod("registry.example/app/api:9", "Never", true);
        let have = imgs(&[DEFAULT_PAUSE_IMAGE]);
        let pl = plan(&p, &have, true, DEFAULT_PAUSE_IMAGE);
        let mut runs = BTreeMap::new();
        runs.insert(
            "app".to_string(),
            Run::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: "Container image \"registry.example/app/api:9\" is not present with pull policy of Never".into(),
            },
        );
        let st = build_status(&StatusInput {
            last_terminated: &BTreeMap::new(),
            pod: &p,
            plan: &pl,
            init_runs: &BTreeMap::new(),
            runs: &runs,
            restarts: &BTreeMap::new(),
            host_ip: "10.0.0.11",
            pod_ip: "10.0.0.11",
            start_time: "2026-01-01T00:00:00Z",
            now: "2026-01-01T00:00:00Z",
        });
        assert_eq!(st["phase"], "Pending");
        assert_eq!(
            st["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ErrImageNeverPull"
        );
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [app]");
    }

    #[test]
    fn running_and_ready() {
        let p = pod("registry.example/app/api:1", "IfNotPresent", true);
        let have = imgs(&[DEFAULT_PAUSE_IMAGE, "registry.example/app/api:1"]);
        let pl = plan(&p, &have, true, DEFAULT_PAUSE_IMAGE);
        let mut runs = BTreeMap::new();
        runs.insert(
            "app".to_string(),
            Run::Running {
                started_at: "2026-01-01T00:00:00Z".into(),
                ready: true,
            },
        );
        let st = build_status(&StatusInput {
            last_terminated: &BTreeMap::new(),
            pod: &p,
            plan: &pl,
            init_runs: &BTreeMap::new(),
            runs: &runs,
            restarts: &BTreeMap::new(),
            host_ip: "10.0.0.11",
            pod_ip: "10.0.0.11",
            start_time: "2026-01-01T00:00:00Z",
            now: "2026-01-01T00:00:00Z",
        });
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["podIP"], "10.0.0.11");
        assert_eq!(st["qosClass"], "BestEffort");
        assert!(
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] == "True")
        );
    }

    #[test]
    fn probe_ports_are_listened_on() {
        let c = json!({"name": "a", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], "readinessProbe": {"httpGet": {"port": "http", "path": "/ready", "scheme": "HTTP"}}, "livenessProbe": {"httpGet": {"port": 8443, "path": "/live", "scheme": "HTTPS"}}});
        let ports = listen_ports(&c);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].port, 8080);
        assert_eq!(ports[0].paths, vec!["/ready".to_string()]);
        assert!(ports[1].tls);
        assert_eq!(ports[1].paths, vec!["/live".to_string()]);
    }

    #[test]
    fn pull_error_text() {
        assert_eq!(
            pull_error("registry.example/app/api:1.0"),
            "failed to pull and unpack image \"registry.example/app/api:1.0\": failed to resolve reference \"registry.example/app/api:1.0\": failed to do request: Head \"https://registry.example/v2/app/api/manifests/1.0\": dial tcp: lookup registry.example: no such host"
        );
    }
}
