//! `installer install`: the list of phases, from a validated plan.
//!
//! The answer file has been parsed and validated before this is called (bad input never
//! gets here: it exits 2 with every problem listed). [`cluster_phases`] brings up the k3s
//! cluster (connect, preflight, prepare, upload, bootstrap, joins, cluster gate; `preflight`
//! stops after its second phase); [`appliance_phases`] deploys the cluster services and the
//! application on it. A dry run connects and gathers facts, then reports per host what
//! would change, as typed change events.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{self, Values};
use crate::assets::AssetStore;
use crate::cli::{ConnectArgs, InstallArgs};
use crate::commands::session::{self, SshConnector};
use crate::config::Plan;
use crate::error::Error;
use crate::kube::Cluster;
use crate::phases::join::JoinRole;
use crate::phases::k3s_node::K3sPlan;
use crate::phases::{self, ConnectedHost, Connector, Context, Goal, PipelineError, ids};
use crate::phases::{Journal, Runner, preflight};
use crate::report::{Event, Reporter};

/// How to run an install, from the command line.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Connect and gather facts, report what would change, change nothing.
    pub dry_run: bool,
    /// Trust and record host keys not yet known (a changed key is always refused).
    pub accept_new_host_keys: bool,
    /// Take the artifacts from this directory instead of the embedded ones.
    pub assets_dir: Option<PathBuf>,
    /// The lock file for `assets_dir`.
    pub assets_lock: Option<PathBuf>,
    /// Ask a person about unknown host keys (the wizard); pins chosen are written into
    /// the answer file.
    pub ask_host_keys: Option<std::sync::Arc<super::hostkeys::AskHostKeys>>,
    /// The debug log file of this run (named in the final summary).
    pub log_file: Option<PathBuf>,
}

impl InstallOptions {
    pub fn from_args(args: &InstallArgs) -> InstallOptions {
        let ConnectArgs {
            accept_new_host_keys,
            assets,
            assets_lock,
        } = args.connect.clone();
        InstallOptions {
            dry_run: args.dry_run,
            accept_new_host_keys,
            assets_dir: assets,
            assets_lock,
            ask_host_keys: None,
            log_file: None,
        }
    }
}

/// What the cluster phases hand to the application's.
pub struct Installed {
    pub hosts: Vec<Arc<ConnectedHost>>,
    /// The API connection (None unless the goal was to apply).
    pub cluster: Option<Cluster>,
    pub kubeconfig: Option<PathBuf>,
}

/// connect, preflight, then (when the goal goes further) prepare, upload, bootstrap, the
/// joins and the cluster gate. The application's templates are rendered for the connected
/// nodes, so preflight and the firewall know every port they hold.
pub async fn cluster_phases(
    runner: &mut Runner,
    plan: &Plan,
    ctx: &Context,
    connector: &dyn Connector,
    store: &AssetStore,
) -> Result<Installed, PipelineError> {
    let hosts = phases::connect::run(runner, ctx, connector).await?;
    let mut ctx = ctx.clone();
    {
        let values = Values::from(&plan.app);
        let list: Vec<(String, IpAddr, bool)> = hosts
            .iter()
            .map(|n| (n.node_name.clone(), n.node_ip, n.spec.is_server))
            .collect();
        let ports =
            phases::app::host_ports(&values, ctx.cluster.service_cidr, &list).map_err(|e| {
                PipelineError::Setup {
                    message: format!("the application's templates: {e}"),
                    hint: e.hint(),
                }
            })?;
        ctx.app_ports = ports.tcp;
        ctx.app_udp_ports = ports.udp;
    }
    let ctx = &ctx;
    // Every artifact is resolved and checked against the lock before preflight, so a
    // tampered or missing one stops the run before anything changes (exit 2). `preflight`
    // alone reports a build without the artifacts as a finding instead.
    let artifacts = match phases::upload::artifacts(store, &hosts) {
        Ok(a) => Some(a),
        Err(crate::assets::AssetError::Missing { .. }) if ctx.goal == Goal::Preflight => None,
        Err(e) => {
            return Err(PipelineError::Input {
                message: e.to_string(),
                hint: crate::hint::Hint::hint(&e),
            });
        }
    };
    let needs = preflight::Needs {
        store,
        app_cpus: 0,
        app_mem_bytes: 0,
    };
    preflight::run(runner, ctx, &hosts, &needs).await?;
    let nothing = |hosts| Installed {
        hosts,
        cluster: None,
        kubeconfig: None,
    };
    if ctx.goal == Goal::Preflight {
        return Ok(nothing(hosts));
    }
    let artifacts = artifacts.unwrap_or_default();
    phases::prepare::run(runner, ctx, &hosts).await?;
    let binary_changed = phases::upload::run(
        runner,
        ctx,
        &hosts,
        artifacts,
        phases::upload::Destination::Final,
    )
    .await?;
    let k3s = K3sPlan::new(ctx, &hosts, binary_changed).ok_or(PipelineError::Setup {
        message: "the plan has no server".into(),
        hint: Some("give at least one host `role: server` in the answer file".into()),
    })?;
    let servers = phases::context::servers(&hosts);
    let agents = phases::context::agents(&hosts);
    let boot = phases::bootstrap::run(runner, &k3s).await?;
    phases::join::run(runner, &k3s, boot.as_ref(), &servers[1..], JoinRole::Server).await?;
    phases::join::run(runner, &k3s, boot.as_ref(), &agents, JoinRole::Agent).await?;
    let Some(boot) = boot else {
        return Ok(nothing(hosts));
    };
    let kubeconfig_out = session::kubeconfig_path(plan);
    let kubeconfig =
        phases::cluster_gate::run(runner, &k3s, &boot, &hosts, &kubeconfig_out).await?;
    Ok(Installed {
        hosts,
        cluster: Some(boot.cluster),
        kubeconfig: Some(kubeconfig),
    })
}

/// What the application's phases report back for the final summary.
pub struct Deployed {
    /// The application's metadata (its `handoff` says what the last screen shows).
    pub app: app::spec::AppSpec,
    pub endpoints: Vec<app::endpoints::EndpointResult>,
    pub ca_file: Option<PathBuf>,
    /// Values generated in this run that the admin must learn once (name, value).
    pub shown_once: Vec<(String, crate::secret::Secret)>,
}

/// dns, enforcer, app and verify, on the Ready cluster.
pub async fn appliance_phases(
    runner: &mut Runner,
    plan: &Plan,
    cluster: &Cluster,
    hosts: &[Arc<ConnectedHost>],
) -> Result<Deployed, PipelineError> {
    let service_cidr = plan.network.service_cidr;
    let values = Values::from(&plan.app);
    // What does not depend on cluster DNS is prepared while CoreDNS rolls out.
    let reporter = runner.reporter().clone();
    let prepare = phases::app::prepare(cluster, &values, service_cidr, &reporter);
    let (dns, prepared) = tokio::join!(
        phases::dns::run(runner, cluster, hosts, service_cidr, plan.rollout_timeout),
        prepare
    );
    dns?;
    let mut ssh_ports: Vec<u16> = plan.hosts.iter().map(|h| h.ssh.port).collect();
    ssh_ports.sort_unstable();
    ssh_ports.dedup();
    phases::enforcer::run(
        runner,
        cluster,
        hosts,
        ssh_ports,
        plan.enforcer,
        prepared.as_ref().ok(),
        service_cidr,
        plan.rollout_timeout,
    )
    .await?;
    let timeouts = app::DeployTimeouts {
        per_workload: plan.rollout_timeout,
        ..Default::default()
    };
    let (app, generated) = phases::app::run(runner, cluster, prepared, timeouts).await?;
    let ca_file = match &plan.answer_file {
        Some(f) => app::generated::write_ca_file(&generated, f).unwrap_or_else(|e| {
            runner
                .reporter()
                .warn(None, format!("cannot write the CA certificate: {e}"));
            None
        }),
        None => None,
    };
    let verified =
        phases::verify::run(runner, &app, &generated, cluster, hosts, plan.enforcer).await?;
    let endpoints = verified.endpoints;
    Ok(Deployed {
        app: app.spec().clone(),
        endpoints,
        ca_file,
        shown_once: generated.shown_once.clone(),
    })
}

/// Opens the asset store (hashing `--assets` files happens later, per artifact).
pub fn asset_store(
    dir: Option<&PathBuf>,
    lock: Option<&PathBuf>,
) -> Result<Arc<AssetStore>, Error> {
    AssetStore::new(dir.map(|p| p.as_path()), lock.map(|p| p.as_path()))
        .map(Arc::new)
        .map_err(|e| {
            let hint = e.hint();
            Error::usage(e.to_string(), hint)
        })
}

/// Maps a failed pipeline to the command's error (interrupted: exit 130).
pub fn pipeline_error(e: PipelineError) -> Error {
    use crate::hint::Hint;
    if e.interrupted() {
        return Error::Interrupted;
    }
    if let PipelineError::Input { message, hint } = e {
        return Error::usage(message, hint);
    }
    let hint = e.hint().unwrap_or_else(|| {
        "fix what is reported above and rerun the same command: finished steps are not repeated"
            .to_string()
    });
    Error::failed(anyhow::Error::new(e), Some(hint))
}

/// Opens the journal and tells the user where a previous run stopped, if it did.
pub fn open_journal(plan: &Plan, reporter: &Reporter) -> Option<Journal> {
    let path = session::state_dir(plan).join("journal.jsonl");
    if let Ok(Some(last)) = Journal::last_run(&path)
        && let Some(stopped) = last.stopped_at()
    {
        reporter.info(None, format!("{stopped}; continuing from there"));
    }
    match Journal::open(&path) {
        Ok(j) => Some(j),
        Err(e) => {
            reporter.warn(None, format!("cannot write the journal: {e}"));
            None
        }
    }
}

/// The start of a run that may change hosts: one run at a time against this cluster (a
/// dry run changes nothing and takes no lock), its journal, and the runner, named `command`
/// or `command --dry-run`. Install and uninstall begin the same way.
pub fn changing_run(
    plan: &Plan,
    command: &str,
    dry_run: bool,
    reporter: &Reporter,
) -> Result<(Option<super::lock::RunLock>, Runner), Error> {
    let (lock, journal, name) = if dry_run {
        (None, None, format!("{command} --dry-run"))
    } else {
        (
            Some(session::lock(plan, command)?),
            open_journal(plan, reporter),
            command.to_owned(),
        )
    };
    let runner = Runner::new(name, reporter.clone(), journal, session::cancel_token());
    Ok((lock, runner))
}

/// Runs an install of `plan`.
pub async fn run(plan: Plan, opts: InstallOptions, reporter: Reporter) -> Result<(), Error> {
    reporter.emit(Event::PlanReady {
        plan: plan.summary(),
    });
    let store = asset_store(opts.assets_dir.as_ref(), opts.assets_lock.as_ref())?;
    let goal = if opts.dry_run {
        Goal::DryRun
    } else {
        Goal::Apply
    };
    let ctx = session::context(&plan, goal);
    let mut connector = SshConnector::new(&plan, opts.accept_new_host_keys, reporter.clone());
    if let Some(ask) = &opts.ask_host_keys {
        connector = connector.with_prompt(ask.clone());
    }
    let (_lock, mut runner) = changing_run(&plan, "install", opts.dry_run, &reporter)?;
    let hosts: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    runner.start(&ids::PhaseId::ids(ids::INSTALL), &hosts);
    let result = cluster_phases(&mut runner, &plan, &ctx, &connector, &store).await;
    let result = match result {
        Ok(installed) => match &installed.cluster {
            Some(cluster) => appliance_phases(&mut runner, &plan, cluster, &installed.hosts)
                .await
                .map(|d| (installed, Some(d))),
            None => Ok((installed, None)),
        },
        Err(e) => Err(e),
    };
    runner.finish(result.is_ok());
    // Host keys the person chose to pin go into the answer file, whatever happened after.
    if let (Some(ask), Some(file)) = (&opts.ask_host_keys, &plan.answer_file) {
        let pins = ask.pins();
        match super::hostkeys::write_pins(file, &pins) {
            Ok(missed) if missed.is_empty() => {
                if !pins.is_empty() {
                    reporter.info(
                        None,
                        format!("pinned {} host key(s) in {}", pins.len(), file.display()),
                    );
                }
            }
            Ok(missed) => reporter.warn(
                None,
                format!(
                    "add these host keys to {} by hand (hosts[].hostKey): {}",
                    file.display(),
                    missed.join(", ")
                ),
            ),
            Err(e) => reporter.warn(
                None,
                format!("cannot pin the host keys in {}: {e}", file.display()),
            ),
        }
    }
    let (installed, deployed) = result.map_err(pipeline_error)?;
    if opts.dry_run {
        reporter.info(None, "dry run: nothing was changed on any host");
        return Ok(());
    }
    let mut next = vec![format!(
        "installer status -f {}   (nodes, workloads and endpoints, at any time)",
        answer_display(&plan)
    )];
    if let Some(l) = &opts.log_file {
        next.push(format!("the debug log of this run: {}", l.display()));
    }
    let handoff = handoff(&plan, &installed, deployed.as_ref(), next);
    reporter.emit(Event::Handoff { handoff });
    Ok(())
}

/// The answer file as the admin would type it in a command.
pub(crate) fn answer_display(plan: &Plan) -> String {
    plan.answer_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "answers.yaml".into())
}

/// The hand-off screen, from the application's own `handoff` metadata.
fn handoff(
    plan: &Plan,
    installed: &Installed,
    deployed: Option<&Deployed>,
    next: Vec<String>,
) -> crate::report::handoff::Handoff {
    use crate::report::handoff::Handoff;
    let mut h = Handoff {
        title: "The cluster and the application are ready".into(),
        kubeconfig: installed
            .kubeconfig
            .as_ref()
            .map(|k| k.display().to_string()),
        answer_file: plan.answer_file.as_ref().map(|p| p.display().to_string()),
        state_dir: Some(session::state_dir(plan).display().to_string()),
        next,
        ..Handoff::default()
    };
    let Some(d) = deployed else { return h };
    h.ca_file = d.ca_file.as_ref().map(|c| c.display().to_string());
    let Some(spec) = &d.app.handoff else { return h };
    h.title = spec.title.clone();
    let scheme = match spec.scheme {
        app::spec::Scheme::Http => "http",
        app::spec::Scheme::Https => "https",
    };
    let url = |host: &str| {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("{scheme}://{host}:{}{}", spec.port, spec.path)
    };
    h.url = spec.dns_name.as_deref().map(url);
    h.dns_name = spec.dns_name.clone();
    h.node_urls = installed
        .hosts
        .iter()
        .map(|n| url(&n.spec.address))
        .collect();
    if let Some(login) = &spec.login {
        h.user = Some(login.user.clone());
        // The answer-file value that sets the password, if the application has one.
        let from_value = d
            .app
            .secrets
            .iter()
            .filter(|s| s.name == login.password_secret)
            .flat_map(|s| &s.keys)
            .find(|k| k.key == login.password_key)
            .and_then(|k| k.from_value.clone());
        let kubectl = format!(
            "`kubectl --kubeconfig {} -n {} get secret {} -o jsonpath='{{.data.{}}}' | base64 -d`",
            h.kubeconfig.as_deref().unwrap_or("KUBECONFIG"),
            d.app.namespace,
            login.password_secret,
            login.password_key
        );
        h.password = from_value.as_ref().and_then(|v| {
            d.shown_once
                .iter()
                .find(|(name, _)| name == v)
                .map(|(_, s)| s.clone())
        });
        let in_file = from_value
            .as_ref()
            .is_some_and(|v| Values::from(&plan.app).secret(v).is_some());
        h.password_note = Some(match (&from_value, in_file) {
            (Some(v), true) => format!("the one set as `{v}` in the answer file"),
            _ => format!("printed by {kubectl}"),
        });
    }
    h
}
