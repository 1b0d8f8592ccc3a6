//! Commands: what each subcommand does, from parsed arguments to an exit code.
//!
//! [`dispatch`] sets up output (renderer, colour, verbosity, the log file), turns the answer
//! file into a validated plan (bad input: exit 2 with every problem, before anything else
//! happens), runs the command on a Tokio runtime with Ctrl-C mapped to exit 130, and shows
//! the error, if any, once.

pub mod appliance;
pub mod completions;
pub mod hostkeys;
pub mod install;
pub mod lock;
pub mod preflight;
pub mod schema;
pub mod session;
pub mod status;
pub mod support_bundle;
pub mod uninstall;
pub mod upgrade;
pub mod version;
pub mod wizard;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::app::Declaration;
use crate::config::interpolate::{MapEnv, ProcessEnv};
use crate::config::{Plan, load_file};
use crate::error::{EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Error};
use crate::report::{LogFile, Output, OutputSettings, logfile, prompt};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Runs the parsed command line; returns the process exit code.
pub fn dispatch(cli: Cli) -> i32 {
    let g = &cli.global;
    let settings = OutputSettings::resolve(g.output, g.verbose, g.quiet);
    match cli.command {
        None => {
            if prompt::interactive() {
                with_output(g, settings, None, wizard::run)
            } else {
                let help = Cli::command().render_help();
                #[allow(clippy::print_stderr, reason = "usage, before any renderer exists")]
                {
                    eprintln!(
                        "error: no command given, and no terminal to run the wizard on\n\n{help}"
                    );
                }
                EXIT_USAGE
            }
        }
        Some(Command::Schema) => simple(g, settings, |w| schema::run(w)),
        Some(Command::Version) => simple(g, settings, |w| version::run(settings.mode, w)),
        Some(Command::Completions { shell }) => {
            simple(g, settings, |w| completions::completions(shell, w))
        }
        Some(Command::Man) => simple(g, settings, |w| completions::man(w)),
        Some(Command::Install(args)) => {
            let file = args.answers.file.clone();
            with_output_then(g, settings, Some(&file), After::BundleOnFailure, |out| {
                let plan = load(out, &file, None)?;
                let mut opts = install::InstallOptions::from_args(&args);
                opts.log_file = out.log.as_ref().map(|l| l.path().to_owned());
                block_on(install::run(plan, opts, out.reporter.clone()))
            })
        }
        Some(Command::Upgrade(args)) => {
            let file = args.answers.file.clone();
            with_output_then(g, settings, Some(&file), After::BundleOnFailure, |out| {
                let plan = load(out, &file, None)?;
                block_on(upgrade::run(plan, args, out.reporter.clone()))
            })
        }
        Some(Command::Status(args)) => {
            let file = args.answers.file.clone();
            with_output(g, settings, Some(&file), |out| {
                let plan = load(out, &file, None)?;
                let opts = status::StatusOptions {
                    accept_new_host_keys: args.accept_new_host_keys,
                };
                block_on(status::run(plan, opts, out.reporter.clone()))
            })
        }
        Some(Command::SupportBundle(args)) => {
            let file = args.answers.file.clone();
            with_output(g, settings, Some(&file), |out| {
                let plan = load(out, &file, None)?;
                let log = out.log.as_ref().map(|l| l.path().to_owned());
                block_on(support_bundle::run(plan, args, log, out.reporter.clone()))
            })
        }
        Some(Command::Uninstall(args)) => {
            let file = args.answers.file.clone();
            with_output(g, settings, Some(&file), |out| {
                let plan = load(out, &file, None)?;
                let confirm = uninstall::TerminalConfirm(out.prompts());
                block_on(uninstall::run(plan, args, &confirm, out.reporter.clone()))
            })
        }
        Some(Command::Validate(args)) => {
            let file = args.answers.file.clone();
            with_output(g, settings, Some(&file), |out| {
                let plan = load(out, &file, None)?;
                out.reporter.emit(crate::report::Event::PlanReady {
                    plan: plan.summary(),
                });
                out.reporter.info(
                    None,
                    "the answer file is valid; no host was contacted (`installer install --dry-run` connects and shows what would change)",
                );
                Ok(())
            })
        }
        Some(Command::Preflight(args)) => {
            let file = args.answers.file.clone();
            with_output(g, settings, Some(&file), |out| {
                let plan = load(out, &file, None)?;
                let opts = preflight::PreflightOptions::from_args(&args);
                block_on(preflight::run(plan, opts, out.reporter.clone()))
            })
        }
    }
}

/// Commands that only print (schema, version, completions, man): no log file unless one
/// is asked for with `--log-file`.
fn simple(
    g: &GlobalArgs,
    settings: OutputSettings,
    f: impl FnOnce(&mut dyn std::io::Write) -> Result<(), Error>,
) -> i32 {
    let log = g
        .log_file
        .as_ref()
        .and_then(|p| LogFile::create(p).ok())
        .map(Arc::new);
    let out = Output::new(settings, log);
    let mut stdout = std::io::stdout().lock();
    match f(&mut stdout) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            out.error(&e);
            e.exit_code()
        }
    }
}

/// Opens the log file: `--log-file`, else beside the answer file, else the working directory.
fn open_log(
    g: &GlobalArgs,
    answer_file: Option<&Path>,
) -> Result<(Option<Arc<LogFile>>, Option<String>), Error> {
    if let Some(p) = &g.log_file {
        return LogFile::create(p)
            .map(|l| (Some(Arc::new(l)), None))
            .map_err(|e| {
                Error::usage(
                    format!("cannot write the log file {}: {e}", p.display()),
                    Some("give a writable path with --log-file".to_string()),
                )
            });
    }
    let first = logfile::default_path(answer_file);
    match LogFile::create(&first) {
        Ok(l) => Ok((Some(Arc::new(l)), None)),
        Err(e1) => {
            let second = logfile::default_path(None);
            match LogFile::create(&second) {
                Ok(l) if second != first => Ok((
                    Some(Arc::new(l)),
                    Some(format!(
                        "cannot write {}: {e1}; logging to {}",
                        first.display(),
                        second.display()
                    )),
                )),
                _ => Ok((
                    None,
                    Some(format!(
                        "cannot write the log file {}: {e1}; running without one",
                        first.display()
                    )),
                )),
            }
        }
    }
}

/// What a command adds after its last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// When it failed on the hosts (not bad input, not Ctrl-C): how to collect a support
    /// bundle, the one archive the vendor's support asks for.
    BundleOnFailure,
}

/// Runs `f` with output and the log file set up, and shows its error once.
fn with_output(
    g: &GlobalArgs,
    settings: OutputSettings,
    answer_file: Option<&Path>,
    f: impl FnOnce(&Output) -> Result<(), Error>,
) -> i32 {
    with_output_then(g, settings, answer_file, After::Nothing, f)
}

/// The line that says how to collect a support bundle after `command` failed on the hosts.
fn bundle_pointer(answer_file: &Path) -> String {
    format!(
        "To send support what happened: `installer support-bundle -f {}` writes one archive (secrets removed).",
        answer_file.display()
    )
}

/// [`with_output`], then `after`.
fn with_output_then(
    g: &GlobalArgs,
    settings: OutputSettings,
    answer_file: Option<&Path>,
    after: After,
    f: impl FnOnce(&Output) -> Result<(), Error>,
) -> i32 {
    let (log, warning) = match open_log(g, answer_file) {
        Ok(x) => x,
        Err(e) => {
            let out = Output::new(settings, None);
            out.error(&e);
            return e.exit_code();
        }
    };
    if let Some(l) = &log {
        crate::report::trace::install(l.clone());
    }
    let out = Output::new(settings, log);
    let args: Vec<String> = std::env::args().collect();
    out.log(&format!(
        "installer {} ({}): {}",
        env!("CARGO_PKG_VERSION"),
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        args.join(" ")
    ));
    if let Some(w) = warning {
        out.reporter.warn(None, w);
    }
    let result = f(&out);
    match result {
        Ok(()) => {
            out.finish();
            out.log("exit 0");
            // The last line of every run names its log (the one file support asks for).
            if let Some(l) = &out.log
                && settings.verbosity >= 0
                && settings.mode != crate::report::Mode::Json
            {
                #[allow(clippy::print_stderr, reason = "after the renderer finished")]
                {
                    eprintln!("The debug log is in {}", l.path().display());
                }
            }
            EXIT_OK
        }
        Err(e) => {
            out.error(&e);
            if let Some(l) = &out.log
                && !matches!(e, Error::Invalid(_) | Error::Usage { .. })
                && settings.verbosity >= 0
                && settings.mode != crate::report::Mode::Json
            {
                #[allow(clippy::print_stderr, reason = "after the renderer finished")]
                {
                    eprintln!("The debug log is in {}", l.path().display());
                }
            }
            if after == After::BundleOnFailure
                && matches!(e, Error::Failed { .. })
                && settings.verbosity >= 0
                && settings.mode != crate::report::Mode::Json
                && let Some(file) = answer_file
            {
                #[allow(clippy::print_stderr, reason = "after the renderer finished")]
                {
                    eprintln!("{}", bundle_pointer(file));
                }
            }
            e.exit_code()
        }
    }
}

/// Renders the application's templates for the plan's hosts (with stand-in addresses where
/// the answer file gives names), so that a values combination the templates refuse (two
/// workloads on one port, say) is bad input, reported before any host is contacted.
fn check_app(plan: &Plan) -> Result<(), Error> {
    use crate::config::plan::Role;
    let nodes: Vec<(String, std::net::IpAddr, bool)> = plan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let ip = h
                .node_ip
                .or_else(|| h.ssh.address.parse().ok())
                // TEST-NET-1 (RFC 5737): only a placeholder for rendering, never contacted.
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    192,
                    0,
                    2,
                    10 + i as u8,
                )));
            let name = h
                .node_name
                .clone()
                .unwrap_or_else(|| format!("host{}", i + 1));
            (name, ip, h.role == Role::Server)
        })
        .collect();
    crate::phases::app::host_ports(
        &crate::app::Values::from(&plan.app),
        plan.network.service_cidr,
        &nodes,
    )
    .map(|_| ())
    .map_err(|e| {
        let hint = e.hint();
        let file = plan
            .answer_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let text = e.to_string();
        Error::usage(
            match value_behind(plan, &text) {
                Some((name, port, (line, col))) => format!(
                    "{file}:{line}:{col}: spec.app.values.{name}: the application cannot be rendered with {name} {port}: {text}"
                ),
                None => format!("{file}: the application cannot be rendered with these values: {text}"),
            },
            hint,
        )
    })
}

/// The port value the answer file gives that a render error is about (`port N/TCP`), with
/// where the file gives it.
fn value_behind<'p>(plan: &'p Plan, error: &str) -> Option<(&'p str, u16, (usize, usize))> {
    plan.app.iter().find_map(|(name, v)| {
        let port = v.as_port()?;
        let at = *plan.app_value_at.get(name)?;
        let named = ["TCP", "UDP"]
            .iter()
            .any(|proto| error.contains(&format!("port {port}/{proto}")));
        named.then_some((name.as_str(), port, at))
    })
}

/// Loads and validates the answer file; warnings are shown, problems end the run (exit 2).
fn load(out: &Output, file: &Path, overlay: Option<&MapEnv<'_>>) -> Result<Plan, Error> {
    let decl = Declaration::embedded().map_err(|e| Error::failed(e, None))?;
    let prompts = out.prompts();
    let prompter: Option<&dyn crate::config::Prompter> = if prompt::interactive() {
        Some(&prompts)
    } else {
        None
    };
    let base: &dyn crate::config::interpolate::Env = match overlay {
        Some(o) => o,
        None => &ProcessEnv,
    };
    // On a terminal, a `${VAR}` the file references and nobody set is asked for.
    let typed = ask_unset_vars(out, file, base)?;
    let asked = MapEnv {
        vars: typed,
        fallback: Some(base),
    };
    let loaded = guard_interrupt(|| load_file(file, &asked, prompter, &decl))?;
    for w in loaded.warnings.warnings() {
        out.reporter.warn(None, w.render(&loaded.warnings.file));
    }
    check_app(&loaded.plan)?;
    Ok(loaded.plan)
}

/// Asks on the terminal (hidden, once per variable) for each `${VAR}` the answer file
/// references that `env` does not set. Without a terminal nothing is asked: validation
/// then refuses the file, naming the variable (exit 2).
fn ask_unset_vars(
    out: &Output,
    file: &Path,
    env: &dyn crate::config::interpolate::Env,
) -> Result<std::collections::HashMap<String, String>, Error> {
    let mut typed = std::collections::HashMap::new();
    if !prompt::interactive() {
        return Ok(typed);
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(typed);
    };
    let prompts = out.prompts();
    for var in wizard::referenced_vars(&text) {
        if env.var(&var).is_some() {
            continue;
        }
        let question = format!(
            "{} references ${{{var}}}, which is not set; type its value",
            file.display()
        );
        let value = guard_interrupt(|| prompts.password(&question, false)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Interrupted {
                Error::Interrupted
            } else {
                Error::failed(e, None)
            }
        })?;
        // `password` wraps it in a `Secret`: registered, so it is masked wherever it shows.
        typed.insert(var, value.expose().to_owned());
    }
    Ok(typed)
}

/// Runs a command's future on a fresh runtime; Ctrl-C ends it with [`Error::Interrupted`].
pub fn block_on(fut: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed(e, None))?;
    rt.block_on(async {
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = tokio::signal::ctrl_c() => {
                // First Ctrl-C: ask the phases to stop (they kill what runs on the hosts
                // and record where they stopped), and give them a moment to do so. A
                // second Ctrl-C, or the grace period, ends the run at once.
                session::cancel_token().cancel();
                tokio::select! {
                    r = &mut fut => match r {
                        Ok(()) => Ok(()),
                        Err(_) => Err(Error::Interrupted),
                    },
                    _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => Err(Error::Interrupted),
                }
            }
        }
    })
}

/// Runs blocking prompt code so that a Ctrl-C ends the process with exit code 130 and the
/// cursor restored, rather than a death by signal. (Inside a prompt in raw mode the key
/// arrives as input and dialoguer returns `Interrupted`; in line mode it is a SIGINT.)
fn guard_interrupt<R>(f: impl FnOnce() -> R) -> R {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            let _ = ready_tx.send(());
            return;
        };
        rt.block_on(async move {
            // The handler is installed when `signal` returns: only then may prompts start.
            let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
            let _ = ready_tx.send(());
            let Ok(mut sig) = sig else { return };
            tokio::select! {
                Some(()) = sig.recv() => {
                    let _ = console::Term::stderr().show_cursor();
                    #[allow(clippy::print_stderr, reason = "ends the line a prompt left open")]
                    {
                        eprintln!();
                    }
                    std::process::exit(EXIT_INTERRUPTED);
                }
                _ = stop_rx => {}
            }
        });
    });
    let _ = ready_rx.recv();
    let r = f();
    let _ = stop_tx.send(());
    let _ = watcher.join();
    r
}
