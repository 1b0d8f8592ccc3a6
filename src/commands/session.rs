//! What `install`, `preflight` and `status` share: the plan turned into SSH connection
//! specs and the phases' context, the local state directory, and Ctrl-C as a cancellation
//! token that phases observe (so an interrupted run records where it stopped).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::Plan;
use crate::config::plan::{AuthMethod, HostFirewall, HostPlan, Role, SshTarget, SudoPlan};
use crate::host::ssh::{self, ConnectionSpec, HostKeyPolicy, SshHost, SudoMode};
use crate::host::{HostError, Remote};
use crate::k3s::config::ClusterSettings;
use crate::phases::preflight::Relaxations;
use crate::phases::{Connector, Context, Goal, HostSpec, Timeouts};
use crate::report::Reporter;

/// The process-wide cancellation token, fired by the first Ctrl-C.
pub fn cancel_token() -> CancellationToken {
    static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
    TOKEN.get_or_init(CancellationToken::new).clone()
}

fn auth(a: &AuthMethod) -> ssh::AuthMethod {
    match a {
        AuthMethod::Agent => ssh::AuthMethod::Agent { socket: None },
        AuthMethod::KeyFile { path, passphrase } => ssh::AuthMethod::KeyFile {
            path: path.clone(),
            passphrase: passphrase.clone(),
        },
        AuthMethod::Password(p) => ssh::AuthMethod::Password(p.clone()),
    }
}

fn target_spec(name: &str, t: &SshTarget, policy: HostKeyPolicy) -> ConnectionSpec {
    let mut s = ConnectionSpec::new(t.address.clone())
        .name(name)
        .port(t.port)
        .user(t.user.clone())
        .auth(auth(&t.auth))
        .known_hosts(t.known_hosts_file.clone())
        .host_key_policy(policy);
    if let Some(pin) = &t.host_key {
        s = s.host_key_pin(pin.clone());
    }
    s
}

/// The SSH connection spec for a host of the plan.
pub fn connection_spec(h: &HostPlan, accept_new_host_keys: bool) -> ConnectionSpec {
    let policy = if accept_new_host_keys {
        HostKeyPolicy::AcceptNew
    } else {
        HostKeyPolicy::Strict
    };
    let mut s = target_spec(&h.name, &h.ssh, policy).sudo(match &h.sudo {
        SudoPlan::None => SudoMode::None,
        SudoPlan::Passwordless => SudoMode::Passwordless,
        SudoPlan::Password(p) => SudoMode::Password(p.clone()),
    });
    if let Some(b) = &h.bastion {
        s = s.bastion(
            target_spec(&format!("{} (bastion)", b.address), b, policy).sudo(SudoMode::None),
        );
    }
    s
}

/// Connects to the plan's hosts over SSH.
pub struct SshConnector {
    specs: Vec<(String, ConnectionSpec)>,
    reporter: Reporter,
    cancel: CancellationToken,
}

impl SshConnector {
    /// Asks `prompt` about host keys nothing vouches for (instead of refusing them).
    pub fn with_prompt(mut self, prompt: Arc<dyn ssh::SshPrompt>) -> SshConnector {
        for (_, spec) in self.specs.iter_mut() {
            *spec = spec
                .clone()
                .host_key_policy(HostKeyPolicy::Ask)
                .prompt(prompt.clone());
        }
        self
    }

    pub fn new(plan: &Plan, accept_new_host_keys: bool, reporter: Reporter) -> SshConnector {
        SshConnector {
            specs: plan
                .hosts
                .iter()
                .map(|h| (h.name.clone(), connection_spec(h, accept_new_host_keys)))
                .collect(),
            reporter,
            cancel: cancel_token(),
        }
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn connect(&self, host: &HostSpec) -> Result<Arc<dyn Remote>, HostError> {
        let spec = self
            .specs
            .iter()
            .find(|(n, _)| n == &host.name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| HostError::Other {
                host: host.name.clone(),
                message: "not in the plan".into(),
            })?;
        let h = SshHost::with_cancel(spec, self.reporter.clone(), self.cancel.clone());
        h.connect().await?;
        Ok(Arc::new(h))
    }
}

/// Where the installer keeps its local state for a cluster (journal): beside the answer
/// file, in `.installer/<cluster>/`.
pub fn state_dir(plan: &Plan) -> PathBuf {
    base_dir(plan).join(".installer").join(&plan.cluster_name)
}

/// Takes the run lock of the plan's cluster for `command` (see [`super::lock`]).
pub fn lock(plan: &Plan, command: &str) -> Result<super::lock::RunLock, crate::error::Error> {
    super::lock::acquire(
        &state_dir(plan).join("lock"),
        &super::lock::Holder::me(command),
    )
    .map_err(super::lock::LockError::into_error)
}

/// The directory of the answer file (or the working directory).
pub fn base_dir(plan: &Plan) -> PathBuf {
    plan.answer_file
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The admin kubeconfig the install writes: `<cluster>-kubeconfig.yaml` beside the answer file.
pub fn kubeconfig_path(plan: &Plan) -> PathBuf {
    base_dir(plan).join(format!("{}-kubeconfig.yaml", plan.cluster_name))
}

/// The plan's hosts as the phases see them.
pub fn host_specs(plan: &Plan) -> Vec<HostSpec> {
    plan.hosts
        .iter()
        .map(|h| HostSpec {
            name: h.name.clone(),
            address: h.ssh.address.clone(),
            is_server: h.role == Role::Server,
            node_name: h.node_name.clone(),
            node_ip: h.node_ip,
        })
        .collect()
}

/// The phases' context for a run of `plan` towards `goal`.
pub fn context(plan: &Plan, goal: Goal) -> Context {
    let cluster = ClusterSettings {
        cluster_cidr: plan.network.cluster_cidr,
        service_cidr: plan.network.service_cidr,
        // Not schedulable for the application until the policy enforcer protects the node.
        node_taints: vec![crate::k3s::config::ENFORCER_TAINT_SPEC.to_owned()],
        ..ClusterSettings::default()
    };
    Context {
        goal,
        cluster_name: plan.cluster_name.clone(),
        hosts: host_specs(plan),
        cluster,
        relax: Relaxations {
            allow_cgroup_v1: plan.allow_cgroup_v1,
            leave_firewall: plan.network.host_firewall == HostFirewall::Leave,
        },
        app_ports: plan.app_ports(),
        app_udp_ports: Vec::new(),
        concurrency: 5,
        timeouts: Timeouts {
            server: plan.node_timeout,
            agent: plan.node_timeout,
            ..Timeouts::default()
        },
    }
}
