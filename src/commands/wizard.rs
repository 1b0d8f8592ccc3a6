//! `installer` with no arguments on a terminal: reuse an answer file found here, or run
//! the wizard (its logins tried on the hosts as they are given), then install what was
//! saved. A preflight finding the answer file can allow is asked about and written into the
//! file; every failure ends with the command that continues from the saved file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::config::answer_file::AnswerFile;
use crate::config::app::Declaration;
use crate::config::interpolate::{MapEnv, ProcessEnv};
use crate::config::validate::{Context, validate_text};
use crate::config::wizard::{self, Checked, LoginCheck, Problem, Refused, Relaxation};
use crate::error::Error;
use crate::host::ssh::{HostKeyDecision, HostKeyInfo, HostKeyPolicy, SshHost, SshPrompt};
use crate::host::{HostError, RemoteCommand, RemoteExt};
use crate::report::{Collector, Event, Output, Prompts};
use crate::secret::Secret;

use super::{guard_interrupt, hostkeys, install, load};

/// The wizard, or the reuse of `answers.yaml`, then the install.
pub fn run(out: &Output) -> Result<(), Error> {
    let decl = Declaration::embedded().map_err(|e| Error::failed(e, None))?;
    let prompts = out.prompts();
    let cwd = std::env::current_dir().map_err(|e| Error::failed(e, None))?;
    let existing = cwd.join(wizard::DEFAULT_FILE);
    if existing.is_file() {
        let reuse = guard_interrupt(|| {
            prompts.select(
                &format!(
                    "{} from an earlier run is here. Use it?",
                    wizard::DEFAULT_FILE
                ),
                &[
                    "yes: install from it (continues where the last run stopped)",
                    "no: start the wizard afresh (it will be replaced)",
                ],
                0,
            )
        })
        .map_err(io_error)?;
        if reuse == 0 {
            return install_saved(out, &existing, HashMap::new());
        }
    }
    let check = SshCheck {
        prompts: prompts.clone(),
        decl: &decl,
        cwd: cwd.clone(),
        decided: Mutex::default(),
    };
    let outcome = guard_interrupt(|| wizard::run(&prompts, &decl, &ProcessEnv, &cwd, &check))
        .map_err(io_error)?;
    out.log(&format!("wizard saved {}", outcome.path.display()));
    if !outcome.run_now {
        return Ok(());
    }
    install_saved(out, &outcome.path, outcome.secrets)
}

fn io_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::Interrupted => Error::Interrupted,
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::AlreadyExists => {
            Error::usage(e.to_string(), None)
        }
        _ => Error::failed(e, None),
    }
}

/// The `${VAR}` names an answer file's text references.
pub fn referenced_vars(text: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => {
                let mut rest = s.replace("$${", "");
                while let Some(i) = rest.find("${") {
                    let after = rest[i + 2..].to_owned();
                    match after.find('}') {
                        Some(j) => {
                            let name = after[..j].to_owned();
                            if !name.is_empty() && !out.contains(&name) {
                                out.push(name);
                            }
                            rest = after[j + 1..].to_owned();
                        }
                        None => break,
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(tree) = serde_saphyr::from_str::<serde_json::Value>(text) {
        walk(&tree, &mut out);
    }
    // In the order the file names them (the tree's maps are sorted by key).
    out.sort_by_key(|v| text.find(&format!("${{{v}}}")).unwrap_or(usize::MAX));
    out
}

/// The command that continues from the saved file, with the variables it needs named.
pub fn continue_command(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let vars = referenced_vars(&text);
    let mut s = format!(
        "continue from the saved answers with `installer install -f {}`",
        file.display()
    );
    if !vars.is_empty() {
        let names: Vec<String> = vars.iter().map(|v| format!("${{{v}}}")).collect();
        s.push_str(&format!(
            " (it asks for {} on a terminal; export {} to run it unattended)",
            names.join(", "),
            vars.join(", ")
        ));
    }
    s.push_str(", or run `installer` again in this directory");
    s
}

/// Installs from the saved file; a preflight finding the file can allow is asked about,
/// written into the file, and the install goes on.
fn install_saved(out: &Output, path: &Path, secrets: HashMap<String, Secret>) -> Result<(), Error> {
    let mut vars: HashMap<String, String> = secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    let prompts = out.prompts();
    let mut asked: Vec<Relaxation> = Vec::new();
    let ask_keys = hostkeys::AskHostKeys::new(out.prompts());
    loop {
        let overlay = MapEnv {
            vars: vars.clone(),
            fallback: Some(&ProcessEnv),
        };
        let (plan, typed) = match load_asking(out, path, &overlay) {
            Ok(p) => p,
            Err(e) => return Err(with_continue(e, path)),
        };
        vars.extend(typed);
        let collector = Arc::new(Collector::default());
        let reporter = out.reporter.with_sink(collector.clone());
        let opts = install::InstallOptions {
            ask_host_keys: Some(ask_keys.clone()),
            // As `install --assets/--assets-lock` read them (the wizard takes no flags).
            assets_dir: std::env::var_os("INSTALLER_ASSETS").map(Into::into),
            assets_lock: std::env::var_os("INSTALLER_ASSETS_LOCK").map(Into::into),
            log_file: out.log.as_ref().map(|l| l.path().to_owned()),
            ..Default::default()
        };
        let result = super::block_on(install::run(plan, opts, reporter));
        let Err(e) = result else { return Ok(()) };
        let found = relaxable(&collector.events(), &asked);
        let Some(relax) = found else {
            return Err(with_continue(e, path));
        };
        asked.push(relax);
        let yes = guard_interrupt(|| prompts.confirm(relax.question(), true)).map_err(io_error)?;
        if !yes {
            return Err(with_continue(e, path));
        }
        let text = fs_err::read_to_string(path).map_err(|e| Error::failed(e, None))?;
        let patched = relax.apply(&text).map_err(|m| {
            Error::failed(
                anyhow::anyhow!("cannot update {}: {m}", path.display()),
                None,
            )
        })?;
        wizard::save(path, &patched).map_err(|e| Error::failed(e, None))?;
        prompts.say(&format!("Written into {}; continuing.", path.display()));
    }
}

/// The first relaxation a failed preflight asks for that was not asked about yet.
fn relaxable(events: &[Event], asked: &[Relaxation]) -> Option<Relaxation> {
    Relaxation::ALL.iter().find_map(|(r, id)| {
        let hit = events.iter().any(|e| {
            matches!(e, Event::HostFailed { phase, error, .. }
                if phase == "preflight" && error.contains(&format!("{id}:")))
        });
        (hit && !asked.contains(r)).then_some(*r)
    })
}

/// Loads the file, asking on the terminal for `${VAR}`s not set; returns what was typed.
fn load_asking(
    out: &Output,
    path: &Path,
    overlay: &MapEnv<'_>,
) -> Result<(crate::config::Plan, HashMap<String, String>), Error> {
    let typed = super::ask_unset_vars(out, path, overlay)?;
    let mut vars = overlay.vars.clone();
    vars.extend(typed.clone());
    let env = MapEnv {
        vars,
        fallback: Some(&ProcessEnv),
    };
    Ok((load(out, path, Some(&env))?, typed))
}

/// Adds the continuation command to a failure's hint (an interrupt keeps its exit code;
/// the command is said before the error).
fn with_continue(e: Error, path: &Path) -> Error {
    let cont = continue_command(path);
    match e {
        Error::Failed { source, hint } => Error::Failed {
            source,
            hint: Some(match hint {
                Some(h) => format!("{h}\nthen {cont}"),
                None => cont,
            }),
        },
        Error::Usage { message, hint } => Error::Usage {
            message,
            hint: Some(match hint {
                Some(h) => format!("{h}\nthen {cont}"),
                None => cont,
            }),
        },
        Error::Interrupted => {
            #[allow(
                clippy::print_stderr,
                reason = "before the error line, after the renderer"
            )]
            {
                eprintln!("To {cont}.");
            }
            Error::Interrupted
        }
        other => other,
    }
}

/// Tries the wizard's login answers on the hosts over SSH: the host keys (all shown
/// together, accepted with one answer), the login, and sudo.
struct SshCheck<'a> {
    prompts: Prompts,
    decl: &'a Declaration,
    cwd: PathBuf,
    /// Host keys decided so far: a key is asked about once, whatever is asked again.
    decided: Mutex<Vec<(String, String, HostKeyDecision)>>,
}

/// Answers for the host keys already decided (by this person, in this wizard), and
/// records (and refuses) any other key offered, to be shown together.
#[derive(Default)]
struct KeyVote {
    decided: Vec<(String, String, HostKeyDecision)>,
    seen: Mutex<Vec<(String, HostKeyInfo)>>,
}

#[async_trait]
impl SshPrompt for KeyVote {
    async fn unknown_host_key(&self, host: &str, key: &HostKeyInfo) -> HostKeyDecision {
        // Only the key that was shown: another one now is shown again.
        if let Some((_, _, d)) = self
            .decided
            .iter()
            .find(|(h, fp, _)| h == host && fp == &key.fingerprint)
        {
            return *d;
        }
        if let Ok(mut s) = self.seen.lock() {
            s.push((host.to_owned(), key.clone()));
        }
        HostKeyDecision::Reject
    }
}

fn problem(e: &HostError) -> Problem {
    let refused = match e {
        HostError::Connect { .. } | HostError::Disconnected { .. } | HostError::Timeout { .. } => {
            Refused::Connection
        }
        HostError::HostKeyUnknown { .. } | HostError::HostKeyChanged { .. } => Refused::HostKey,
        HostError::Auth { .. } => Refused::Login,
        HostError::SudoWrongPassword { .. }
        | HostError::SudoPasswordRequired { .. }
        | HostError::SudoNotAllowed { .. } => Refused::Sudo,
        _ => Refused::Connection,
    };
    let mut message = e.to_string();
    if let Some(h) = e.hint() {
        message.push_str(&format!("\n  hint: {h}"));
    }
    Problem {
        host: e.host().to_owned(),
        refused,
        message,
    }
}

impl SshCheck<'_> {
    async fn try_hosts(
        plan: &crate::config::Plan,
        prompt: Arc<KeyVote>,
        only: Option<&[String]>,
    ) -> Vec<(String, Result<(), HostError>)> {
        let tries = plan
            .hosts
            .iter()
            .filter(|h| only.is_none_or(|o| o.contains(&h.name)))
            .map(|h| {
                let spec = super::session::connection_spec(h, false)
                    .host_key_policy(HostKeyPolicy::Ask)
                    .prompt(prompt.clone());
                let name = h.name.clone();
                let sudo = !matches!(h.sudo, crate::config::plan::SudoPlan::None);
                async move {
                    let host = SshHost::new(spec, crate::report::Reporter::silent());
                    let mut r = host.connect().await;
                    if r.is_ok() && sudo {
                        r = host
                            .run(
                                RemoteCommand::new("true")
                                    .sudo()
                                    .timeout(std::time::Duration::from_secs(20)),
                            )
                            .await
                            .map(|_| ());
                    }
                    host.disconnect().await;
                    (name, r)
                }
            });
        futures::future::join_all(tries).await
    }
}

impl LoginCheck for SshCheck<'_> {
    fn check(&self, answers: &AnswerFile, secrets: &HashMap<String, Secret>) -> Checked {
        let mut checked = Checked::default();
        let text = wizard::to_yaml(answers, false, secrets);
        let vars: HashMap<String, String> = secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        let env = MapEnv {
            vars,
            fallback: Some(&ProcessEnv),
        };
        let ctx = Context {
            env: &env,
            base_dir: self.cwd.clone(),
            prompter: None,
            declaration: self.decl,
        };
        let plan = match validate_text("(wizard answers)", None, &text, &ctx) {
            Ok(l) => l.plan,
            Err(d) => {
                checked.problems.push(Problem {
                    host: "the answers".into(),
                    refused: Refused::Login,
                    message: d.to_string(),
                });
                return checked;
            }
        };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return checked;
        };
        self.prompts.say(&format!(
            "Trying SSH login and sudo on {} host(s)...",
            plan.hosts.len()
        ));
        let decided = self.decided.lock().map(|d| d.clone()).unwrap_or_default();
        let first = Arc::new(KeyVote {
            decided: decided.clone(),
            seen: Mutex::default(),
        });
        let results = rt.block_on(Self::try_hosts(&plan, first.clone(), None));
        let seen = first.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut results = results;
        if !seen.is_empty() {
            // Every key nothing vouches for, shown together; one answer for all.
            let mut text = format!(
                "{} host(s) offer an SSH host key nothing vouches for:",
                seen.len()
            );
            for (h, k) in &seen {
                text.push_str(&format!("\n  {h}  {} {}", k.key_type, k.fingerprint));
            }
            text.push_str(
                "\nCompare them with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on each host.",
            );
            self.prompts.say(&text);
            let choice = self
                .prompts
                .select(
                    "Trust these host keys?",
                    &[
                        "trust them and pin them in the answer file",
                        "trust them and remember them in ~/.ssh/known_hosts",
                        "refuse them",
                    ],
                    0,
                )
                .unwrap_or(2);
            let decision = match choice {
                0 => HostKeyDecision::AcceptOnce,
                1 => HostKeyDecision::AcceptAndRemember,
                _ => HostKeyDecision::Reject,
            };
            let mut all = decided.clone();
            if decision != HostKeyDecision::Reject {
                all.extend(
                    seen.iter()
                        .map(|(h, k)| (h.clone(), k.fingerprint.clone(), decision)),
                );
                if let Ok(mut d) = self.decided.lock() {
                    *d = all.clone();
                }
                let retry: Vec<String> = seen.iter().map(|(h, _)| h.clone()).collect();
                let second = Arc::new(KeyVote {
                    decided: all,
                    seen: Mutex::default(),
                });
                let again = rt.block_on(Self::try_hosts(&plan, second, Some(&retry)));
                for (name, r) in again {
                    if let Some(slot) = results.iter_mut().find(|(n, _)| n == &name) {
                        slot.1 = r;
                    }
                }
            } else {
                for (h, _) in &seen {
                    if let Some(slot) = results.iter_mut().find(|(n, _)| n == h) {
                        slot.1 = Err(HostError::Other {
                            host: h.clone(),
                            message: "host key refused".into(),
                        });
                    }
                }
            }
        }
        for (_, r) in results {
            if let Err(e) = r {
                let mut p = problem(&e);
                if matches!(e, HostError::Other { .. }) {
                    p.refused = Refused::HostKey;
                }
                checked.problems.push(p);
            }
        }
        let decided = self.decided.lock().map(|d| d.clone()).unwrap_or_default();
        checked.pins = decided
            .into_iter()
            .filter(|(h, _, d)| {
                *d == HostKeyDecision::AcceptOnce && plan.hosts.iter().any(|p| &p.name == h)
            })
            .map(|(h, fp, _)| (h, fp))
            .collect();
        checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_variables_are_found_in_values_not_comments() {
        let text = "# NOT_THIS\nspec:\n  ssh:\n    auth:\n      password: \"${SSH_PASSWORD}\"\n    sudo:\n      password: ${SSH_PASSWORD}\n  app:\n    values:\n      a: \"x-${APP_A}-$${LITERAL}\"\n";
        assert_eq!(referenced_vars(text), vec!["SSH_PASSWORD", "APP_A"]);
    }

    #[test]
    fn the_continue_command_names_the_file_and_its_variables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("answers.yaml");
        std::fs::write(
            &p,
            "spec:\n  ssh:\n    auth:\n      password: ${SSH_PASSWORD}\n",
        )
        .unwrap();
        let c = continue_command(&p);
        assert!(
            c.contains(&format!("installer install -f {}", p.display())),
            "{c}"
        );
        assert!(c.contains("export SSH_PASSWORD"), "{c}");
    }

    #[test]
    fn a_cgroup_v1_preflight_failure_is_offered_once() {
        let ev = Event::HostFailed {
            phase: "preflight".into(),
            host: "10.0.0.1".into(),
            error: "cgroup-v2: found /sys/fs/cgroup is tmpfs; needed cgroup2fs".into(),
            hint: None,
        };
        assert_eq!(
            relaxable(std::slice::from_ref(&ev), &[]),
            Some(Relaxation::CgroupV1)
        );
        assert_eq!(relaxable(&[ev], &[Relaxation::CgroupV1]), None);
    }
}
