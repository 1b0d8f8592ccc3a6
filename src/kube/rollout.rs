//! Rollout gates: a workload counts as rolled out only when its controller has seen the
//! latest spec (`observedGeneration`) and every replica runs that spec and is ready
//! (Deployment: updated/ready/available; DaemonSet: a ready pod on every node it should run
//! on; StatefulSet: ready and on the update revision).
//!
//! When a gate gives up, [`diagnose`] explains why from the pods, events and nodes: which
//! pods are not ready, on which node, their waiting reason (ErrImageNeverPull,
//! ImagePullBackOff, Pending with the scheduler's message, CrashLoopBackOff, a failing
//! readiness probe), the last events, and what to do. It is a pure function over
//! k8s-openapi objects, so every message is tested (snapshots in `rollout/snapshots/`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodSpec, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;

use futures::StreamExt;
use futures::stream::FuturesOrdered;

use super::wait::{self, Probe};
use super::watch::Changes;
use super::{Cluster, KubeError};
use crate::report::events::Reporter;

/// The kinds of workload the gates understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }

    /// The lower-case name kubectl takes (`kubectl describe daemonset ...`).
    pub fn kubectl(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
}

/// A workload by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadId {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// Where a workload stands, read from its spec and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutState {
    pub id: WorkloadId,
    /// `metadata.generation` and `status.observedGeneration`.
    pub generation: i64,
    pub observed_generation: i64,
    /// Replicas wanted (DaemonSet: nodes it should run on, by its controller).
    pub desired: i32,
    /// Replicas running the latest spec.
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// All replicas, old and new.
    pub current: i32,
    /// DaemonSet: nodes that have its pod scheduled, and nodes that should not but do.
    pub scheduled: Option<i32>,
    pub misscheduled: Option<i32>,
    /// DaemonSet: nodes the installer expects it on (from node labels and taints).
    pub expected_nodes: Option<Vec<String>>,
    /// StatefulSet: the revisions (done when equal).
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
    /// The pod selector (`spec.selector.matchLabels`).
    pub selector: BTreeMap<String, String>,
    /// The object does not exist.
    pub missing: bool,
}

impl RolloutState {
    fn empty(id: WorkloadId) -> RolloutState {
        RolloutState {
            id,
            generation: 0,
            observed_generation: 0,
            desired: 0,
            updated: 0,
            ready: 0,
            available: 0,
            current: 0,
            scheduled: None,
            misscheduled: None,
            expected_nodes: None,
            current_revision: None,
            update_revision: None,
            selector: BTreeMap::new(),
            missing: true,
        }
    }

    /// From a Deployment.
    pub fn of_deployment(id: WorkloadId, d: &Deployment) -> RolloutState {
        let s = d.status.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        RolloutState {
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
            desired: spec.replicas.unwrap_or(1),
            updated: s.updated_replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            available: s.available_replicas.unwrap_or(0),
            current: s.replicas.unwrap_or(0),
            selector: spec.selector.match_labels.unwrap_or_default(),
            missing: false,
            ..RolloutState::empty(id)
        }
    }

    /// From a DaemonSet; `expected_nodes` are the nodes it should run on.
    pub fn of_daemonset(
        id: WorkloadId,
        d: &DaemonSet,
        expected_nodes: Option<Vec<String>>,
    ) -> RolloutState {
        let s = d.status.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        RolloutState {
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
            desired: s.desired_number_scheduled,
            updated: s.updated_number_scheduled.unwrap_or(0),
            ready: s.number_ready,
            available: s.number_available.unwrap_or(0),
            current: s.current_number_scheduled,
            scheduled: Some(s.current_number_scheduled),
            misscheduled: Some(s.number_misscheduled),
            expected_nodes,
            selector: spec.selector.match_labels.unwrap_or_default(),
            missing: false,
            ..RolloutState::empty(id)
        }
    }

    /// From a StatefulSet.
    pub fn of_statefulset(id: WorkloadId, s: &StatefulSet) -> RolloutState {
        let st = s.status.clone().unwrap_or_default();
        let spec = s.spec.clone().unwrap_or_default();
        RolloutState {
            generation: s.metadata.generation.unwrap_or(0),
            observed_generation: st.observed_generation.unwrap_or(0),
            desired: spec.replicas.unwrap_or(1),
            updated: st.updated_replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            current: st.replicas,
            current_revision: st.current_revision,
            update_revision: st.update_revision,
            selector: spec.selector.match_labels.unwrap_or_default(),
            missing: false,
            ..RolloutState::empty(id)
        }
    }

    /// Whether the rollout is complete.
    pub fn is_done(&self) -> bool {
        if self.missing || self.observed_generation < self.generation {
            return false;
        }
        let all = self.updated == self.desired
            && self.ready == self.desired
            && self.available == self.desired
            && self.current == self.desired;
        match self.id.kind {
            WorkloadKind::Deployment => all,
            WorkloadKind::DaemonSet => {
                all && self.misscheduled.unwrap_or(0) == 0
                    && self.scheduled == Some(self.desired)
                    && self
                        .expected_nodes
                        .as_ref()
                        .is_none_or(|n| n.len() as i32 == self.desired)
            }
            WorkloadKind::StatefulSet => {
                self.ready == self.desired
                    && self.updated == self.desired
                    && self.current == self.desired
                    && (self.update_revision.is_none()
                        || self.current_revision == self.update_revision)
            }
        }
    }

    /// One line: `2 of 3 ready (updated 3, available 2)`.
    pub fn summary(&self) -> String {
        if self.missing {
            return "does not exist".into();
        }
        let mut s = format!("{} of {} ready", self.ready, self.desired);
        let mut parts = vec![format!("updated {}", self.updated)];
        if self.id.kind != WorkloadKind::StatefulSet {
            parts.push(format!("available {}", self.available));
        }
        if let Some(n) = &self.expected_nodes
            && n.len() as i32 != self.desired
        {
            parts.push(format!("expected on {} nodes", n.len()));
        }
        if self.misscheduled.unwrap_or(0) > 0 {
            parts.push(format!("misscheduled {}", self.misscheduled.unwrap_or(0)));
        }
        if self.current != self.desired {
            parts.push(format!("{} pods in all", self.current));
        }
        if self.observed_generation < self.generation {
            parts.push(format!(
                "controller has not seen generation {} yet",
                self.generation
            ));
        }
        s.push_str(&format!(" ({})", parts.join(", ")));
        s
    }
}

/// Taints every DaemonSet pod tolerates, added by the DaemonSet controller
/// (kubernetes `pkg/controller/daemon/util/daemonset_util.go` `AddOrUpdateDaemonPodTolerations`).
const DAEMONSET_TOLERATED: [&str; 7] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/network-unavailable",
];

fn tolerates(spec: &PodSpec, taint: &Taint) -> bool {
    if DAEMONSET_TOLERATED.contains(&taint.key.as_str()) {
        return true;
    }
    if taint.effect == "PreferNoSchedule" {
        return true;
    }
    spec.tolerations.iter().flatten().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let op = t.operator.as_deref().unwrap_or("Equal");
        let key_ok = match t.key.as_deref() {
            None | Some("") => op == "Exists",
            Some(k) => k == taint.key,
        };
        let value_ok = op == "Exists"
            || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        effect_ok && key_ok && value_ok
    })
}

/// The nodes a DaemonSet's pod should run on: its node selector matches the node's labels and
/// it tolerates the node's NoSchedule/NoExecute taints. (Node affinity is not evaluated; the
/// installer's DaemonSets do not use it.)
pub fn eligible_nodes(spec: Option<&PodSpec>, nodes: &[Node]) -> Vec<String> {
    let default = PodSpec::default();
    let spec = spec.unwrap_or(&default);
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let selected = spec
                .node_selector
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let taints_ok = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .all(|t| tolerates(spec, t));
            selected && taints_ok
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// What a pod is stuck on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum PodProblem {
    /// The image is not on the node (ErrImageNeverPull, ErrImagePull, ImagePullBackOff).
    ImageMissing {
        container: String,
        reason: String,
        image: String,
        message: String,
    },
    /// The scheduler cannot place it.
    Unschedulable { message: String },
    /// The container keeps exiting.
    CrashLoop {
        container: String,
        restarts: i32,
        last_exit: String,
    },
    /// The container runs but its readiness probe fails.
    NotReady { container: String, probe: String },
    /// It cannot be created (a missing Secret/ConfigMap, a bad command, ...).
    CannotStart {
        container: String,
        reason: String,
        message: String,
    },
    /// Still starting (ContainerCreating and the like); `detail` is the latest relevant event.
    Starting { detail: String },
    /// Being deleted.
    Terminating,
}

/// One pod that is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodFinding {
    pub pod: String,
    pub node: Option<String>,
    pub problem: PodProblem,
}

impl fmt::Display for PodFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {}", self.pod)?;
        match &self.node {
            Some(n) => write!(f, " on node {n}: ")?,
            None => write!(f, " (not scheduled): ")?,
        }
        match &self.problem {
            PodProblem::ImageMissing {
                container,
                reason,
                message,
                ..
            } => {
                write!(f, "container {container} waiting: {reason}: {message}")
            }
            PodProblem::Unschedulable { message } => write!(f, "Pending: {message}"),
            PodProblem::CrashLoop {
                container,
                restarts,
                last_exit,
            } => write!(
                f,
                "container {container} CrashLoopBackOff: restarted {restarts} times, last exit: {last_exit}"
            ),
            PodProblem::NotReady { container, probe } => {
                write!(f, "container {container} running but not ready: {probe}")
            }
            PodProblem::CannotStart {
                container,
                reason,
                message,
            } => {
                write!(f, "container {container} cannot start: {reason}: {message}")
            }
            PodProblem::Starting { detail } => write!(f, "still starting: {detail}"),
            PodProblem::Terminating => write!(f, "terminating"),
        }
    }
}

/// A rollout gate that gave up, with everything the operator needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutError {
    pub workload: WorkloadId,
    pub state: String,
    pub waited: Duration,
    pub findings: Vec<PodFinding>,
    /// Nodes that should run a DaemonSet pod but have none.
    pub nodes_without_pod: Vec<String>,
    /// The last relevant events, oldest first, formatted.
    pub events: Vec<String>,
    pub what_to_do: String,
}

impl std::error::Error for RolloutError {}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not ready after {}: {}",
            self.workload,
            humantime::format_duration(Duration::from_secs(self.waited.as_secs())),
            self.state
        )?;
        for finding in &self.findings {
            write!(f, "\n  {finding}")?;
        }
        if !self.nodes_without_pod.is_empty() {
            write!(
                f,
                "\n  no pod on node{} {}",
                plural(self.nodes_without_pod.len()),
                self.nodes_without_pod.join(", ")
            )?;
        }
        if !self.events.is_empty() {
            write!(f, "\n  last events:")?;
            for e in &self.events {
                write!(f, "\n    {e}")?;
            }
        }
        write!(f, "\n  what to do: {}", self.what_to_do)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn age(now: Timestamp, then: Option<Timestamp>) -> String {
    let Some(then) = then else {
        return "?".into();
    };
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Whether an event is about the workload or one of its pods / ReplicaSets.
fn concerns(e: &Event, id: &WorkloadId, pods: &[String]) -> bool {
    let name = e.involved_object.name.as_deref().unwrap_or("");
    e.involved_object
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == id.namespace)
        && (name == id.name
            || pods.iter().any(|p| p == name)
            || (e.involved_object.kind.as_deref() == Some("ReplicaSet")
                && name.starts_with(&format!("{}-", id.name)))
            || (e.involved_object.kind.as_deref() == Some("Pod")
                && name.starts_with(&format!("{}-", id.name))))
}

fn format_event(e: &Event, now: Timestamp) -> String {
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1);
    let times = if count > 1 {
        format!(" (x{count})")
    } else {
        String::new()
    };
    format!(
        "{} ago {} {} {}/{}: {}{}",
        age(now, event_time(e)),
        e.type_.as_deref().unwrap_or("Normal"),
        e.reason.as_deref().unwrap_or("?"),
        e.involved_object
            .kind
            .as_deref()
            .unwrap_or("?")
            .to_lowercase(),
        e.involved_object.name.as_deref().unwrap_or("?"),
        e.message.as_deref().unwrap_or("").trim(),
        times
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The latest event about `pod` with one of `reasons`.
fn latest_event<'a>(events: &'a [Event], pod: &str, reasons: &[&str]) -> Option<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod)
                && e.reason.as_deref().is_some_and(|r| reasons.contains(&r))
        })
        .max_by_key(|e| event_time(e))
}

fn finding_for(p: &Pod, events: &[Event]) -> Option<PodFinding> {
    if is_ready(p) {
        return None;
    }
    let pod = p.metadata.name.clone().unwrap_or_default();
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = p.status.clone().unwrap_or_default();
    let finding = |problem| {
        Some(PodFinding {
            pod: pod.clone(),
            node: node.clone(),
            problem,
        })
    };
    if p.metadata.deletion_timestamp.is_some() {
        return finding(PodProblem::Terminating);
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        let message = c
            .message
            .clone()
            .or_else(|| {
                latest_event(events, &pod, &["FailedScheduling"]).and_then(|e| e.message.clone())
            })
            .unwrap_or_else(|| c.reason.clone().unwrap_or_else(|| "not scheduled".into()));
        return finding(PodProblem::Unschedulable { message });
    }
    let statuses: Vec<_> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let spec_image = |name: &str| {
        p.spec
            .as_ref()
            .and_then(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
                    .find(|c| c.name == name)
                    .and_then(|c| c.image.clone())
            })
            .unwrap_or_default()
    };
    for cs in &statuses {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        let message = w.message.clone().unwrap_or_default();
        match reason.as_str() {
            "ErrImageNeverPull" | "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
                let image = if cs.image.is_empty() {
                    spec_image(&cs.name)
                } else {
                    cs.image.clone()
                };
                let message = if message.is_empty() {
                    latest_event(events, &pod, &["Failed", "ErrImageNeverPull"])
                        .and_then(|e| e.message.clone())
                        .unwrap_or_default()
                } else {
                    message
                };
                return finding(PodProblem::ImageMissing {
                    container: cs.name.clone(),
                    reason,
                    image,
                    message,
                });
            }
            "CrashLoopBackOff" => {
                let last =
                    cs.last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| {
                            let mut s = format!("exit code {}", t.exit_code);
                            if let Some(r) = &t.reason {
                                s.push_str(&format!(" ({r})"));
                            }
                            // The last line of the termination message (with
                            // `terminationMessagePolicy: FallbackToLogsOnError`, the log's tail).
                            if let Some(m) = t.message.as_deref().and_then(|m| {
                                m.lines().rev().map(str::trim).find(|l| !l.is_empty())
                            }) {
                                s.push_str(&format!(": {m}"));
                            }
                            s
                        })
                        .unwrap_or_else(|| "unknown".into());
                return finding(PodProblem::CrashLoop {
                    container: cs.name.clone(),
                    restarts: cs.restart_count,
                    last_exit: last,
                });
            }
            "CreateContainerConfigError"
            | "CreateContainerError"
            | "RunContainerError"
            | "PreCreateHookError"
            | "PostStartHookError" => {
                return finding(PodProblem::CannotStart {
                    container: cs.name.clone(),
                    reason,
                    message,
                });
            }
            _ => {}
        }
    }
    for cs in &statuses {
        let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
        if running && !cs.ready {
            let probe = latest_event(events, &pod, &["Unhealthy"])
                .and_then(|e| e.message.clone())
                .map(|m| m.trim().to_owned())
                .unwrap_or_else(|| "its readiness probe has not succeeded yet".into());
            return finding(PodProblem::NotReady {
                container: cs.name.clone(),
                probe,
            });
        }
    }
    let detail = latest_event(
        events,
        &pod,
        &["FailedMount", "FailedCreatePodSandBox", "Failed", "BackOff"],
    )
    .and_then(|e| e.message.clone())
    .or_else(|| {
        statuses
            .iter()
            .find_map(|cs| cs.state.as_ref()?.waiting.as_ref()?.reason.clone())
    })
    .unwrap_or_else(|| format!("phase {}", status.phase.as_deref().unwrap_or("Pending")));
    finding(PodProblem::Starting { detail })
}

/// What to tell the operator, from the most telling finding.
fn advice(
    id: &WorkloadId,
    findings: &[PodFinding],
    missing_nodes: &[String],
    state: &RolloutState,
) -> String {
    let kubectl_describe = format!(
        "`kubectl -n {} describe {} {}`",
        id.namespace,
        id.kind.kubectl(),
        id.name
    );
    let rank = |p: &PodProblem| match p {
        PodProblem::ImageMissing { .. } => 0,
        PodProblem::Unschedulable { .. } => 1,
        PodProblem::CannotStart { .. } => 2,
        PodProblem::CrashLoop { .. } => 3,
        PodProblem::NotReady { .. } => 4,
        PodProblem::Starting { .. } => 5,
        PodProblem::Terminating => 6,
    };
    let Some(top) = findings.iter().min_by_key(|f| rank(&f.problem)) else {
        if state.missing {
            return format!(
                "the {} was not created; run the install again",
                id.kind.as_str()
            );
        }
        if !missing_nodes.is_empty() {
            return format!(
                "no pod was created on {}: check those nodes' taints and labels against the {}'s tolerations and node selector ({kubectl_describe})",
                missing_nodes.join(", "),
                id.kind.as_str()
            );
        }
        return format!(
            "no pod is failing, but the controller has not finished: read the workload's events ({kubectl_describe})"
        );
    };
    let node = top.node.clone().unwrap_or_else(|| "the node".into());
    let nodes_with = |pred: &dyn Fn(&PodProblem) -> bool| {
        let mut n: Vec<String> = findings
            .iter()
            .filter(|f| pred(&f.problem))
            .filter_map(|f| f.node.clone())
            .collect();
        n.sort();
        n.dedup();
        if n.is_empty() {
            node.clone()
        } else {
            n.join(", ")
        }
    };
    match &top.problem {
        PodProblem::ImageMissing { image, .. } => format!(
            "the image {image} is not on {}: its archive did not reach the node or did not load. Check that {}/ on that node holds the application's image archives (a rerun of the install uploads missing ones) and that assets/assets.lock lists {image}; `k3s ctr images ls` on the node shows what containerd has",
            nodes_with(&|p| matches!(p, PodProblem::ImageMissing { .. })),
            crate::k3s::paths::IMAGES_DIR
        ),
        PodProblem::Unschedulable { message } if message.contains("free ports") => {
            "a port this pod needs is already taken on the nodes (by another host-network pod, or by a process on the node): give every workload its own ports in the answer file, or find the listener with `ss -ltnp` on the nodes".to_string()
        }
        PodProblem::Unschedulable { .. } => {
            "the scheduler cannot place the pod (its message is above): check node labels, taints and free resources (`kubectl describe nodes`)".to_string()
        }
        PodProblem::CannotStart { container, .. } => format!(
            "the container cannot be created: the message above names what is missing (a Secret, a ConfigMap, a command); `kubectl -n {} describe pod {}` shows the container {container}'s spec",
            id.namespace, top.pod
        ),
        PodProblem::CrashLoop { last_exit, .. }
            if last_exit.contains("already in use") =>
        {
            format!(
                "the container cannot bind its port on {}: another process (or a pod outside the appliance) holds it. Find it with `ss -ltnp` on the node and stop it, or move the appliance's port in the answer file",
                nodes_with(&|p| matches!(p, PodProblem::CrashLoop { .. }))
            )
        }
        PodProblem::CrashLoop { container, .. } => format!(
            "the container exits: read its log with `kubectl -n {} logs {} -c {container} --previous` (on {node})",
            id.namespace, top.pod
        ),
        PodProblem::NotReady { container, .. } => format!(
            "the container runs but its readiness probe fails: read its log with `kubectl -n {} logs {} -c {container}` and check that it listens on the probed port on {}",
            id.namespace,
            top.pod,
            nodes_with(&|p| matches!(p, PodProblem::NotReady { .. }))
        ),
        PodProblem::Starting { .. } => format!(
            "the pod is still being created on {node}: the detail above says what it waits for; `kubectl -n {} describe pod {}` has more",
            id.namespace, top.pod
        ),
        PodProblem::Terminating => format!(
            "an old pod is still terminating on {node}; if it hangs, the node's kubelet may be unreachable (`kubectl get nodes`)"
        ),
    }
}

/// How many events a diagnosis shows.
pub const EVENTS_SHOWN: usize = 8;

/// Explains why `state`'s workload is not rolled out, from its pods, the namespace's events
/// and the cluster's nodes. Pure: `now` dates the events.
pub fn diagnose(
    state: &RolloutState,
    pods: &[Pod],
    events: &[Event],
    now: Timestamp,
    waited: Duration,
) -> RolloutError {
    let id = &state.id;
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.metadata.name.clone());
    let findings: Vec<PodFinding> = pods.iter().filter_map(|p| finding_for(p, events)).collect();
    let nodes_without_pod: Vec<String> = state
        .expected_nodes
        .iter()
        .flatten()
        .filter(|n| {
            !pods
                .iter()
                .any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n.as_str()))
        })
        .cloned()
        .collect();
    let pod_names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let mut relevant: Vec<&Event> = events
        .iter()
        .filter(|e| concerns(e, id, &pod_names))
        .collect();
    relevant.sort_by_key(|e| event_time(e));
    let start = relevant.len().saturating_sub(EVENTS_SHOWN);
    let events = relevant[start..]
        .iter()
        .map(|e| format_event(e, now))
        .collect();
    let what_to_do = advice(id, &findings, &nodes_without_pod, state);
    RolloutError {
        workload: id.clone(),
        state: state.summary(),
        waited,
        findings,
        nodes_without_pod,
        events,
        what_to_do,
    }
}

/// Why a gate failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Rollout(Box<RolloutError>),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Reads a workload's rollout state (DaemonSets: with the nodes it should run on).
pub async fn state(cluster: &Cluster, id: &WorkloadId) -> Result<RolloutState, KubeError> {
    let client = cluster.client().clone();
    Ok(match id.kind {
        WorkloadKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(client, &id.namespace);
            match api.get_opt(&id.name).await? {
                Some(d) => RolloutState::of_deployment(id.clone(), &d),
                None => RolloutState::empty(id.clone()),
            }
        }
        WorkloadKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(client, &id.namespace);
            match api.get_opt(&id.name).await? {
                Some(s) => RolloutState::of_statefulset(id.clone(), &s),
                None => RolloutState::empty(id.clone()),
            }
        }
        WorkloadKind::DaemonSet => {
            let api: Api<DaemonSet> = Api::namespaced(client, &id.namespace);
            match api.get_opt(&id.name).await? {
                Some(d) => {
                    let nodes = cluster.nodes().await?;
                    let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                    RolloutState::of_daemonset(id.clone(), &d, Some(eligible_nodes(spec, &nodes)))
                }
                None => RolloutState::empty(id.clone()),
            }
        }
    })
}

/// The pods of a workload (by its selector) and the events of its namespace.
pub async fn pods_and_events(
    cluster: &Cluster,
    state: &RolloutState,
) -> Result<(Vec<Pod>, Vec<Event>), KubeError> {
    let client = cluster.client().clone();
    let pods = if state.selector.is_empty() {
        Vec::new()
    } else {
        let sel = state
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let api: Api<Pod> = Api::namespaced(client.clone(), &state.id.namespace);
        api.list(&ListParams::default().labels(&sel)).await?.items
    };
    let api: Api<Event> = Api::namespaced(client, &state.id.namespace);
    let events = api.list(&ListParams::default()).await?.items;
    Ok((pods, events))
}

/// How long every not-ready pod must have been stuck on something waiting cannot fix
/// before a gate gives up early (an image missing on the node, a pod the scheduler cannot
/// place): long enough for a slow node to catch up, far shorter than the timeout.
pub const HOPELESS_GRACE: Duration = Duration::from_secs(20);

/// Whether a pod is stuck on something that waiting cannot fix: an image that is not on
/// the node (`ErrImageNeverPull`; or `ErrImagePull`/`ImagePullBackOff`, since an airgapped
/// install carries every image it needs and pulls nothing: an image that did not arrive in
/// an archive will not arrive from a registry either), an invalid image name, a container
/// that cannot be configured, or a pod the scheduler cannot place (`Unschedulable`).
pub fn hopeless(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let unschedulable = status.conditions.iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if unschedulable {
        return true;
    }
    let waiting: Vec<&str> = status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| !c.ready)
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .collect();
    !waiting.is_empty()
        && waiting.iter().all(|r| {
            matches!(
                *r,
                "ErrImageNeverPull"
                    | "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
            )
        })
}

/// How often a rollout gate looks again when nothing it watches changed: the
/// [`HOPELESS_GRACE`] period is timed, not watched, so an early give-up comes at most this
/// late.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The watches that wake the gates of `workloads`: each (kind, namespace) of workload, the
/// pods of each namespace, and the nodes when a DaemonSet is among them (the nodes it should
/// run on come from their labels and taints).
pub fn watches(cluster: &Cluster, workloads: &[WorkloadId]) -> Changes {
    let client = cluster.client().clone();
    let mut changes = Changes::new();
    let kinds: BTreeSet<(WorkloadKind, &str)> = workloads
        .iter()
        .map(|w| (w.kind, w.namespace.as_str()))
        .collect();
    let namespaces: BTreeSet<&str> = workloads.iter().map(|w| w.namespace.as_str()).collect();
    for (kind, ns) in &kinds {
        match kind {
            WorkloadKind::Deployment => {
                changes.watch(Api::<Deployment>::namespaced(client.clone(), ns), None)
            }
            WorkloadKind::DaemonSet => {
                changes.watch(Api::<DaemonSet>::namespaced(client.clone(), ns), None)
            }
            WorkloadKind::StatefulSet => {
                changes.watch(Api::<StatefulSet>::namespaced(client.clone(), ns), None)
            }
        }
    }
    for ns in namespaces {
        changes.watch(Api::<Pod>::namespaced(client.clone(), ns), None);
    }
    if kinds.iter().any(|(k, _)| *k == WorkloadKind::DaemonSet) {
        changes.watch(Api::<Node>::all(client), None);
    }
    changes
}

/// Gates `workloads` on their rollouts, together: each has `timeout` from the start, and is
/// looked at again as soon as its object, its namespace's pods or (DaemonSets) the nodes
/// change, and at least every `recheck`. Results are taken in the given (dependency) order,
/// so a failure names the first workload in that order that did not roll out, even when a
/// later one gave up sooner; progress is reported in that order too. A workload gives up on
/// a timeout, or as soon as every pod of it that is not ready has been [`hopeless`] for
/// [`HOPELESS_GRACE`]; the error is the [`diagnose`]d reason.
pub async fn gate(
    cluster: &Cluster,
    workloads: &[WorkloadId],
    timeout: Duration,
    recheck: Duration,
    reporter: &Reporter,
) -> Result<Vec<RolloutState>, GateError> {
    let changes = watches(cluster, workloads);
    let mut pending: FuturesOrdered<_> = workloads
        .iter()
        .map(|id| gate_one(cluster, id, timeout, recheck, changes.subscribe()))
        .collect();
    let mut done = Vec::new();
    while let Some(r) = pending.next().await {
        let s = r?;
        reporter.detail(None, format!("{} is rolled out: {}", s.id, s.summary()));
        done.push(s);
    }
    Ok(done)
}

/// The pods of a workload, by its selector.
async fn pods_of(cluster: &Cluster, state: &RolloutState) -> Result<Vec<Pod>, KubeError> {
    if state.selector.is_empty() {
        return Ok(Vec::new());
    }
    let sel = state
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(cluster.client().clone(), &state.id.namespace);
    Ok(api.list(&ListParams::default().labels(&sel)).await?.items)
}

/// One workload's gate (see [`gate`]).
async fn gate_one(
    cluster: &Cluster,
    id: &WorkloadId,
    timeout: Duration,
    recheck: Duration,
    mut changes: tokio::sync::watch::Receiver<u64>,
) -> Result<RolloutState, GateError> {
    let started = std::time::Instant::now();
    // What the probes saw, kept for the diagnosis (a Mutex: the probe's future borrows it).
    let last: Mutex<Option<RolloutState>> = Mutex::new(None);
    let api_error: Mutex<Option<String>> = Mutex::new(None);
    let hopeless_since: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let result = wait::until_changed(
        &format!("{id} to roll out"),
        timeout,
        recheck,
        &mut changes,
        || {
            let id = id.clone();
            let (last, api_error, hopeless_since) = (&last, &api_error, &hopeless_since);
            async move {
                let s = match state(cluster, &id).await {
                    Ok(s) if s.is_done() => return Probe::Done(Ok(s)),
                    Ok(s) => s,
                    Err(e) => {
                        if let Ok(mut a) = api_error.lock() {
                            *a = Some(e.to_string());
                        }
                        return Probe::NotYet(format!("cannot read it: {e}"));
                    }
                };
                // Give up early when nothing can get better by waiting.
                let stuck = match pods_of(cluster, &s).await {
                    Ok(pods) => {
                        let unready: Vec<&Pod> = pods.iter().filter(|p| !is_ready(p)).collect();
                        !unready.is_empty() && unready.iter().all(|p| hopeless(p))
                    }
                    Err(_) => false,
                };
                let give_up = match hopeless_since.lock() {
                    Ok(mut since) if stuck => {
                        since.get_or_insert_with(std::time::Instant::now).elapsed()
                            >= HOPELESS_GRACE
                    }
                    Ok(mut since) => {
                        *since = None;
                        false
                    }
                    Err(_) => false,
                };
                if give_up {
                    return Probe::Done(Err(s));
                }
                let summary = s.summary();
                if let Ok(mut l) = last.lock() {
                    *l = Some(s);
                }
                Probe::NotYet(summary)
            }
        },
    )
    .await;
    let last = last.lock().ok().and_then(|mut l| l.take());
    let api_error = api_error.lock().ok().and_then(|mut a| a.take());
    let s = match result {
        Ok(Ok(s)) => return Ok(s),
        Ok(Err(s)) => s,
        Err(_timeout) => match (last, api_error) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                return Err(GateError::Kube(KubeError::Timeout(format!(
                    "{id}: gave up after {} without reading it: {e}",
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                ))));
            }
            (None, None) => RolloutState::empty(id.clone()),
        },
    };
    let (pods, events) = pods_and_events(cluster, &s).await?;
    let now = Timestamp::now();
    Err(GateError::Rollout(Box::new(diagnose(
        &s,
        &pods,
        &events,
        now,
        started.elapsed(),
    ))))
}

/// One workload as `installer status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadStatus {
    pub workload: WorkloadId,
    pub ready: i32,
    pub desired: i32,
    /// Container restarts summed over its pods.
    pub restarts: i32,
    pub rolled_out: bool,
    pub summary: String,
    /// Why it is not ready (empty when it is): one line per pod that is not ready.
    pub problems: Vec<String>,
}

/// The status of each workload, for `installer status`.
pub async fn status(
    cluster: &Cluster,
    workloads: &[WorkloadId],
) -> Result<Vec<WorkloadStatus>, KubeError> {
    let mut out = Vec::new();
    for id in workloads {
        let s = state(cluster, id).await?;
        let (pods, events) = pods_and_events(cluster, &s).await?;
        out.push(workload_status(&s, &pods, &events));
    }
    Ok(out)
}

/// [`WorkloadStatus`] from already-read objects (pure).
pub fn workload_status(s: &RolloutState, pods: &[Pod], events: &[Event]) -> WorkloadStatus {
    let restarts = pods
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    let problems = pods
        .iter()
        .filter_map(|p| finding_for(p, events))
        .map(|f| f.to_string())
        .collect();
    WorkloadStatus {
        workload: s.id.clone(),
        ready: s.ready,
        desired: s.desired,
        restarts,
        rolled_out: s.is_done(),
        summary: s.summary(),
        problems,
    }
}

#[cfg(test)]
mod tests;
