//! The wizard: `installer` with no arguments on a terminal.
//!
//! It asks only what cannot be defaulted or discovered (the hosts, the SSH user, how to log
//! in and the secret for it, how to become root), checks each answer as it is typed with the
//! same checks the answer-file validation uses, then tries them on the hosts through
//! [`LoginCheck`] (host keys, login, sudo) and asks again only what a host refused. The rest
//! (the application's values, the file name) is one "change the defaults" step after the
//! plan is shown. It saves an [`AnswerFile`] (mode 0600). Secrets typed at a prompt are saved
//! as `${VAR}` references (or, only if the user insists, in clear text); the values stay in
//! memory so the install offered at the end can use them. The saved file is then loaded
//! back through the normal validation, so a wizard install and an unattended install of the
//! saved file are the same thing. [`Relaxation`] is what the file can allow when preflight
//! refuses the hosts (asked by the commands layer after a failed preflight).
//!
//! The wizard talks to the user only through [`Ask`], implemented on the terminal by
//! [`crate::report::Prompts`]; it is tested through a pseudo-terminal with real keystrokes.

use super::answer_file::{self as raw, API_VERSION, AnswerFile, KIND};
use super::app::{AppValue, Declaration, ValueType};
use super::check;
use super::interpolate::{Env, MapEnv};
use super::plan::{DEFAULT_CLUSTER_CIDR, DEFAULT_SERVICE_CIDR};
use super::validate::{Context, suggest_free, validate_text};
use crate::secret::Secret;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Questions and answers on the terminal.
pub trait Ask {
    /// A line of text; `check` runs on every attempt and its error is shown before asking again.
    fn input(
        &self,
        prompt: &str,
        default: Option<&str>,
        check: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> std::io::Result<String>;
    /// A hidden answer; empty allowed only when `optional`.
    fn secret(&self, prompt: &str, optional: bool) -> std::io::Result<Secret>;
    fn confirm(&self, prompt: &str, default: bool) -> std::io::Result<bool>;
    fn select(&self, prompt: &str, items: &[&str], default: usize) -> std::io::Result<usize>;
    fn say(&self, text: &str);
    /// Shows the plan the answers make (the presentation layer renders it).
    fn show_plan(&self, plan: &super::plan::PlanSummary);
}

/// What the wizard produced.
#[derive(Debug)]
pub struct Outcome {
    /// Where the answer file was saved.
    pub path: PathBuf,
    /// The user wants the install run now.
    pub run_now: bool,
    /// Values of the `${VAR}`s the saved file references, typed at prompts.
    pub secrets: HashMap<String, Secret>,
}

/// What a host refused when the wizard tried its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refused {
    /// No SSH connection (address, port, firewall).
    Connection,
    /// The host key was refused by the person.
    HostKey,
    /// The login (user, key, password).
    Login,
    /// Becoming root (sudo).
    Sudo,
}

/// One host's refusal, in words for the person.
#[derive(Debug, Clone)]
pub struct Problem {
    pub host: String,
    pub refused: Refused,
    pub message: String,
}

/// What trying the answers on the hosts found.
#[derive(Debug, Default)]
pub struct Checked {
    pub problems: Vec<Problem>,
    /// `(host, fingerprint)` the person chose to pin in the answer file.
    pub pins: Vec<(String, String)>,
}

/// Tries the hosts, the login and sudo as the answers give them (the host keys are shown
/// and decided there). Implemented by the commands layer over SSH.
pub trait LoginCheck {
    fn check(&self, answers: &AnswerFile, secrets: &HashMap<String, Secret>) -> Checked;
}

/// Environment variable names the wizard writes for secrets.
pub const SSH_PASSWORD_VAR: &str = "SSH_PASSWORD";
pub const SUDO_PASSWORD_VAR: &str = "SUDO_PASSWORD";
pub const KEY_PASSPHRASE_VAR: &str = "SSH_KEY_PASSPHRASE";

/// The file the wizard saves to unless told otherwise (and offers to reuse when present).
pub const DEFAULT_FILE: &str = "answers.yaml";

/// The answers about logging in, kept across attempts so none is lost when one is refused.
struct Login {
    hosts_text: String,
    user: String,
    /// 0 agent, 1 key file, 2 password.
    method: usize,
    key_file: Option<String>,
    /// 0 no password, 1 the SSH password, 2 another password.
    sudo: usize,
}

fn ask_hosts(ask: &dyn Ask, default: Option<&str>) -> std::io::Result<String> {
    ask.input(
        "Host addresses (1, 3, 4 or 5; IPs or DNS names, separated by spaces)",
        default,
        &mut |s| parse_hosts(s).map(|_| ()),
    )
}

fn ask_auth(
    ask: &dyn Ask,
    login: &mut Login,
    home: &Path,
    secrets: &mut HashMap<String, Secret>,
    choose: bool,
) -> std::io::Result<raw::Auth> {
    if choose {
        login.method = ask.select(
            "How does the installer log in?",
            &[
                "ssh-agent (keys loaded with ssh-add)",
                "a private key file",
                "a password",
            ],
            login.method,
        )?;
    }
    Ok(match login.method {
        0 => {
            secrets.remove(SSH_PASSWORD_VAR);
            raw::Auth::Agent {}
        }
        1 => {
            secrets.remove(SSH_PASSWORD_VAR);
            let default_key = login.key_file.clone().unwrap_or_else(|| {
                ["id_ed25519", "id_ecdsa", "id_rsa"]
                    .iter()
                    .map(|k| format!("~/.ssh/{k}"))
                    .find(|k| expand(k, home).is_file())
                    .unwrap_or_else(|| "~/.ssh/id_ed25519".into())
            });
            let key = ask.input("Private key file", Some(&default_key), &mut |s| {
                let p = expand(s, home);
                if !p.is_file() {
                    Err(format!("{} does not exist", p.display()))
                } else if p.extension().is_some_and(|e| e == "pub") {
                    Err("that is the public key; give the private key".into())
                } else {
                    Ok(())
                }
            })?;
            login.key_file = Some(key.clone());
            let passphrase = match key_is_encrypted(&expand(&key, home)) {
                Some(false) => None,
                Some(true) => Some(ask.secret("Key passphrase", false)?),
                None => {
                    if ask.confirm("Does the key have a passphrase?", false)? {
                        Some(ask.secret("Key passphrase", false)?)
                    } else {
                        None
                    }
                }
            };
            raw::Auth::Key {
                key_file: key,
                passphrase: passphrase.map(|p| {
                    secrets.insert(KEY_PASSPHRASE_VAR.into(), p);
                    format!("${{{KEY_PASSPHRASE_VAR}}}")
                }),
            }
        }
        _ => {
            let pw = ask.secret(&format!("SSH password for {}", login.user), false)?;
            secrets.insert(SSH_PASSWORD_VAR.into(), pw);
            raw::Auth::Password {
                password: Some(format!("${{{SSH_PASSWORD_VAR}}}")),
                password_file: None,
            }
        }
    })
}

fn ask_sudo(
    ask: &dyn Ask,
    login: &mut Login,
    secrets: &mut HashMap<String, Secret>,
    choose: bool,
) -> std::io::Result<Option<raw::Sudo>> {
    if login.user == "root" {
        return Ok(None);
    }
    let with_ssh_password = login.method == 2;
    if choose {
        let mut items = vec!["sudo without a password"];
        if with_ssh_password {
            items.push("sudo with the SSH password");
        }
        items.push("sudo with a password");
        let default = login.sudo.min(items.len() - 1);
        let c = ask.select(
            &format!("How does {} become root?", login.user),
            &items,
            default,
        )?;
        login.sudo = match (c, with_ssh_password) {
            (0, _) => 0,
            (1, true) => 1,
            _ => 2,
        };
    }
    Ok(Some(match login.sudo {
        0 => {
            secrets.remove(SUDO_PASSWORD_VAR);
            raw::Sudo {
                mode: raw::SudoMode::Passwordless,
                password: None,
                password_file: None,
            }
        }
        1 => {
            secrets.remove(SUDO_PASSWORD_VAR);
            raw::Sudo {
                mode: raw::SudoMode::Password,
                password: Some(format!("${{{SSH_PASSWORD_VAR}}}")),
                password_file: None,
            }
        }
        _ => {
            let pw = ask.secret(&format!("sudo password for {}", login.user), false)?;
            secrets.insert(SUDO_PASSWORD_VAR.into(), pw);
            raw::Sudo {
                mode: raw::SudoMode::Password,
                password: Some(format!("${{{SUDO_PASSWORD_VAR}}}")),
                password_file: None,
            }
        }
    }))
}

/// Runs the wizard. `env` supplies `HOME`, `USER` and `SSH_AUTH_SOCK`; `cwd` is where a
/// relative save path lands; `hosts` tries the login answers on the hosts.
pub fn run(
    ask: &dyn Ask,
    decl: &Declaration,
    env: &dyn Env,
    cwd: &Path,
    hosts_check: &dyn LoginCheck,
) -> std::io::Result<Outcome> {
    let mut secrets: HashMap<String, Secret> = HashMap::new();
    ask.say(
        "This wizard asks how to reach the hosts, tries that at once, shows the plan, and saves an \
         answer file you can rerun unattended (`installer install -f FILE`). Ctrl-C stops it; \
         nothing is changed on any host before you confirm.",
    );
    let home = env
        .var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let default_user = env
        .var("USER")
        .filter(|u| check::user(u).is_ok())
        .unwrap_or_else(|| "root".into());

    // 1-4. Hosts, user, login, sudo; then tried on the hosts, and only what a host refused
    // is asked again (the other answers are kept).
    let mut login = Login {
        hosts_text: String::new(),
        user: default_user,
        method: if env.var("SSH_AUTH_SOCK").is_some() {
            0
        } else {
            1
        },
        key_file: None,
        sudo: 0,
    };
    let (mut ask_h, mut ask_u, mut ask_a, mut ask_s) = (true, true, true, true);
    let mut choose_auth = true;
    let mut choose_sudo = true;
    let mut auth = raw::Auth::Agent {};
    let mut sudo = None;
    let (answers_base, pins) = loop {
        if ask_h {
            let prev = (!login.hosts_text.is_empty()).then(|| login.hosts_text.clone());
            login.hosts_text = ask_hosts(ask, prev.as_deref())?;
        }
        if ask_u {
            let u = login.user.clone();
            login.user = ask.input("SSH user on the hosts", Some(&u), &mut |s| {
                check::user(s).map(|_| ()).map_err(|p| p.to_string())
            })?;
        }
        if ask_a {
            auth = ask_auth(ask, &mut login, &home, &mut secrets, choose_auth)?;
        }
        if ask_s || ask_u {
            sudo = ask_sudo(ask, &mut login, &mut secrets, choose_sudo || ask_u)?;
        }
        let hosts = parse_hosts(&login.hosts_text).map_err(std::io::Error::other)?;
        let answers = base_answers(decl, &hosts, &login.user, &auth, &sudo);
        let checked = hosts_check.check(&answers, &secrets);
        if checked.problems.is_empty() {
            break (answers, checked.pins);
        }
        for p in &checked.problems {
            ask.say(&format!("✗ {}", p.message));
        }
        let worst = checked
            .problems
            .iter()
            .map(|p| p.refused)
            .min()
            .unwrap_or(Refused::Login);
        (ask_h, ask_u, ask_a, ask_s) = (false, false, false, false);
        (choose_auth, choose_sudo) = (false, false);
        match worst {
            Refused::Connection | Refused::HostKey => {
                let c = ask.select(
                    "What now?",
                    &[
                        "change the host addresses",
                        "keep them (the install tries again)",
                    ],
                    0,
                )?;
                if c == 1 {
                    break (answers, checked.pins);
                }
                ask_h = true;
            }
            Refused::Login => {
                // A password is asked again as such; another method is chosen again.
                ask_a = true;
                choose_auth = login.method != 2;
            }
            Refused::Sudo => {
                ask_s = true;
                choose_sudo = login.sudo != 2;
            }
        }
    };
    let mut answers = answers_base;
    for (host, fp) in &pins {
        if let Some(h) = answers.spec.hosts.iter_mut().find(|h| &h.address == host) {
            h.host_key = Some(fp.clone());
        }
    }
    let hosts: Vec<String> = answers
        .spec
        .hosts
        .iter()
        .map(|h| h.address.clone())
        .collect();

    // 5. Networks: only if a host sits inside a k3s default range (said, not asked).
    answers.spec.network = pick_networks(&hosts, ask);

    // 6. The plan on defaults; the rest is one "change the defaults?" step.
    let mut path_text = DEFAULT_FILE.to_string();
    let mut clear = false;
    let run_now = loop {
        show(ask, decl, env, cwd, &answers, &secrets)?;
        let c = ask.select(
            "Install now with these settings?",
            &[
                "yes, install now",
                "change the defaults first (application settings, file name)",
                "save the answer file and stop",
            ],
            0,
        )?;
        if c == 1 {
            change_defaults(
                ask,
                decl,
                &mut answers,
                &mut secrets,
                &mut path_text,
                &mut clear,
                cwd,
            )?;
            continue;
        }
        break c == 0;
    };

    // 7. Save.
    let path = cwd.join(&path_text);
    save(&path, &to_yaml(&answers, clear, &secrets))?;
    let mut note = format!("Saved {path_text} (readable only by you).");
    if !secrets.is_empty() && !clear {
        let mut names: Vec<&String> = secrets.keys().collect();
        names.sort();
        note.push_str(&format!(
            " It references {}: export {} before running it unattended.",
            names
                .iter()
                .map(|n| format!("${{{n}}}"))
                .collect::<Vec<_>>()
                .join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ));
    }
    ask.say(&note);
    Ok(Outcome {
        path,
        run_now,
        secrets,
    })
}

/// The answer file on defaults for these login answers.
fn base_answers(
    decl: &Declaration,
    hosts: &[String],
    user: &str,
    auth: &raw::Auth,
    sudo: &Option<raw::Sudo>,
) -> AnswerFile {
    let name = check::cluster_name(&decl.application).unwrap_or_else(|_| "cluster".into());
    AnswerFile {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: raw::Metadata { name },
        spec: raw::Spec {
            ssh: raw::SshSettings {
                user: Some(user.to_owned()),
                port: None,
                auth: Some(auth.clone()),
                sudo: sudo.clone(),
                known_hosts_file: None,
                bastion: None,
            },
            hosts: hosts.iter().map(|h| raw::Host::new(h.clone())).collect(),
            network: raw::Network::default(),
            enforcer: raw::Enforcer::default(),
            k3s: raw::K3s::default(),
            timeouts: raw::Timeouts::default(),
            app: raw::App {
                values: BTreeMap::new(),
            },
        },
    }
}

/// Validates the answers as an answer file would be, and shows the plan they make.
fn show(
    ask: &dyn Ask,
    decl: &Declaration,
    env: &dyn Env,
    cwd: &Path,
    answers: &AnswerFile,
    secrets: &HashMap<String, Secret>,
) -> std::io::Result<()> {
    let text = to_yaml(answers, false, secrets);
    let vars: HashMap<String, String> = secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    let overlay = MapEnv {
        vars,
        fallback: Some(env),
    };
    let ctx = Context {
        env: &overlay,
        base_dir: cwd.to_path_buf(),
        prompter: None,
        declaration: decl,
    };
    match validate_text("(wizard answers)", None, &text, &ctx) {
        Ok(loaded) => {
            ask.show_plan(&loaded.plan.summary());
            Ok(())
        }
        Err(d) => {
            // The answers were checked one by one; a problem here is across answers.
            ask.say(&d.to_string());
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the answers do not make a valid install",
            ))
        }
    }
}

/// The "change the defaults" step: the application's values (defaults pre-filled, each
/// checked as typed), the file name, and whether secrets go into it in clear text.
fn change_defaults(
    ask: &dyn Ask,
    decl: &Declaration,
    answers: &mut AnswerFile,
    secrets: &mut HashMap<String, Secret>,
    path_text: &mut String,
    clear: &mut bool,
    cwd: &Path,
) -> std::io::Result<()> {
    let host_count = answers.spec.hosts.len() as i64;
    let mut values: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    ask.say(&format!("Settings of {}:", decl.application));
    for v in &decl.values {
        let current = answers.spec.app.values.get(&v.name).map(|j| match j {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if v.is_secret() {
            let s = ask.secret(
                &format!(
                    "{} ({}; empty: {})",
                    v.name,
                    v.description,
                    if v.required {
                        "required"
                    } else {
                        "generated and shown once"
                    }
                ),
                !v.required,
            )?;
            let var = v.env_var();
            if !s.is_empty() {
                values.insert(v.name.clone(), format!("${{{var}}}").into());
                secrets.insert(var, s);
            } else {
                secrets.remove(&var);
            }
            continue;
        }
        let mut default = current.or_else(|| v.default_text());
        // A replica count defaults to at most one per host.
        if v.at_most_hosts
            && let Some(AppValue::Int(n)) = default.as_deref().and_then(|d| v.check_text(d).ok())
            && n > host_count
        {
            default = Some(host_count.to_string());
        }
        let answer = ask.input(
            &format!("{} ({})", v.name, v.description),
            default.as_deref(),
            &mut |s| {
                if s.is_empty() && !v.required {
                    return Ok(());
                }
                match v.check_text(s) {
                    Ok(AppValue::Port(p)) => match ports.get(&p) {
                        Some(other) => Err(format!("port {p} is already {other}")),
                        None => Ok(()),
                    },
                    Ok(AppValue::Int(n)) if v.at_most_hosts && n > host_count => Err(format!(
                        "at most {host_count}: each replica needs a host of its own"
                    )),
                    Ok(_) => Ok(()),
                    Err(p) => Err(p.to_string()),
                }
            },
        )?;
        if answer.is_empty() {
            continue;
        }
        if let Ok(AppValue::Port(p)) = v.check_text(&answer) {
            ports.insert(p, v.name.clone());
        }
        // A value left at its default is not written: the file stays short.
        if Some(&answer) == v.default_text().as_ref() {
            continue;
        }
        let json = match v.ty {
            ValueType::Int | ValueType::Port => answer
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| answer.clone().into()),
            ValueType::Bool => serde_json::Value::Bool(answer == "true"),
            _ => answer.clone().into(),
        };
        values.insert(v.name.clone(), json);
    }
    answers.spec.app.values = values;
    let prev = path_text.clone();
    *path_text = ask.input("Save the answer file as", Some(&prev), &mut |s| {
        let p = cwd.join(s);
        match p.parent() {
            Some(d) if d.is_dir() => Ok(()),
            _ => Err("that directory does not exist".into()),
        }
    })?;
    *clear = !secrets.is_empty()
        && ask.confirm(
            "Write the passwords into the file in clear text? (not recommended: anyone who can read the file can log in)",
            false,
        )?;
    Ok(())
}

/// Options the answer file offers to relax a preflight check the hosts failed; each
/// explained in one sentence for the wizard to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relaxation {
    /// `spec.k3s.allowCgroupV1: true`.
    CgroupV1,
}

impl Relaxation {
    /// Every relaxation, with the preflight check id it answers.
    pub const ALL: &[(Relaxation, &'static str)] = &[(Relaxation::CgroupV1, "cgroup-v2")];

    /// The question, in one sentence.
    pub fn question(self) -> &'static str {
        match self {
            Relaxation::CgroupV1 => {
                "The hosts boot with cgroup v1, which Kubernetes refuses by default; the kubelet can be told to accept it (spec.k3s.allowCgroupV1: true; plan a move to cgroup v2). Allow it and continue?"
            }
        }
    }

    /// Writes the relaxation into an answer file's text (keeping the rest as it is).
    pub fn apply(self, text: &str) -> Result<String, String> {
        let mut tree: AnswerFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        match self {
            Relaxation::CgroupV1 => tree.spec.k3s.allow_cgroup_v1 = Some(true),
        }
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let body = serde_saphyr::to_string(&tree).map_err(|e| e.to_string())?;
        Ok(format!("{header}{body}"))
    }
}

/// Splits and checks the hosts answer: 1, 3, 4 or 5 distinct addresses.
pub fn parse_hosts(s: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .collect();
    let mut seen = HashMap::new();
    for (i, p) in parts.iter().enumerate() {
        let a = check::address(p).map_err(|e| e.to_string())?;
        if let Some(j) = seen.insert(a.key(), i) {
            return Err(format!("{p} is listed twice (#{} and #{})", j + 1, i + 1));
        }
    }
    match parts.len() {
        1 | 3 | 4 | 5 => Ok(parts.into_iter().map(str::to_owned).collect()),
        2 => Err("2 hosts cannot form a highly available cluster: give 1, or 3 to 5".into()),
        0 => Err("give at least one address".into()),
        n => Err(format!("{n} hosts: the installer supports 1, 3, 4 or 5")),
    }
}

fn expand(s: &str, home: &Path) -> PathBuf {
    match s.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(s),
    }
}

/// Whether a private key file is encrypted, when that can be told from the file: OpenSSH
/// keys name their cipher (`none` when not encrypted, see OpenSSH's PROTOCOL.key), legacy
/// PEM keys carry `Proc-Type: 4,ENCRYPTED`.
pub fn key_is_encrypted(path: &Path) -> Option<bool> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).ok()?;
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Some(true);
    }
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .ok()?;
        let rest = bytes.strip_prefix(b"openssh-key-v1\0")?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let cipher = rest.get(4..4 + len)?;
        return Some(cipher != b"none");
    }
    if text.contains("PRIVATE KEY-----") {
        return Some(text.contains("ENCRYPTED PRIVATE KEY"));
    }
    None
}

/// k3s's default networks, or free ones when a host address is inside them.
fn pick_networks(hosts: &[String], ask: &dyn Ask) -> raw::Network {
    let ips: Vec<IpNet> = hosts
        .iter()
        .filter_map(|h| check::address(h).ok()?.ip())
        .map(IpNet::from)
        .collect();
    let mut network = raw::Network::default();
    let mut avoid = ips.clone();
    for (default, slot, what) in [
        (DEFAULT_CLUSTER_CIDR, 0, "pod"),
        (DEFAULT_SERVICE_CIDR, 1, "service"),
    ] {
        let Ok(net) = default.parse::<IpNet>() else {
            continue;
        };
        if ips.iter().any(|ip| net.contains(&ip.network())) {
            avoid.push(net);
            if let Some(free) = suggest_free(&net, &avoid) {
                ask.say(&format!(
                    "A host is inside k3s's default {what} network {net}; using {free} instead."
                ));
                avoid.push(free);
                if slot == 0 {
                    network.cluster_cidr = Some(free.to_string());
                } else {
                    network.service_cidr = Some(free.to_string());
                }
            }
        } else {
            avoid.push(net);
        }
    }
    network
}

/// The answer file as YAML with a header; `${VAR}`s replaced by their values when `clear`.
pub fn to_yaml(answers: &AnswerFile, clear: bool, secrets: &HashMap<String, Secret>) -> String {
    let mut a = answers.clone();
    if clear {
        let sub = |s: &mut Option<String>| {
            if let Some(v) = s {
                for (k, secret) in secrets {
                    *v = v.replace(&format!("${{{k}}}"), secret.expose());
                }
            }
        };
        if let Some(auth) = &mut a.spec.ssh.auth {
            match auth {
                raw::Auth::Key { passphrase, .. } => sub(passphrase),
                raw::Auth::Password { password, .. } => sub(password),
                raw::Auth::Agent {} => {}
            }
        }
        if let Some(sudo) = &mut a.spec.ssh.sudo {
            sub(&mut sudo.password);
        }
        for v in a.spec.app.values.values_mut() {
            if let serde_json::Value::String(s) = v {
                let mut o = Some(s.clone());
                sub(&mut o);
                *s = o.unwrap_or_default();
            }
        }
    }
    let body = serde_saphyr::to_string(&a).unwrap_or_default();
    format!(
        "# Answer file written by the installer's wizard.\n\
         # Rerun this install unattended: installer install -f <this file>\n\
         # Reference: docs/answer-file.md; schema: installer schema\n{body}"
    )
}

/// Writes `text` to `path` with mode 0600, owned by the user running the wizard (also when
/// replacing an existing file), atomically and safely ([`crate::fsx`]).
pub fn save(path: &Path, text: &str) -> std::io::Result<()> {
    crate::fsx::write_atomic(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_answers_are_checked() {
        assert_eq!(parse_hosts("10.0.0.1").unwrap(), vec!["10.0.0.1"]);
        assert_eq!(
            parse_hosts("a.example, b.example  c.example")
                .unwrap()
                .len(),
            3
        );
        assert!(
            parse_hosts("10.0.0.1 10.0.0.2")
                .unwrap_err()
                .contains("2 hosts")
        );
        assert!(
            parse_hosts("10.0.0.1 10.0.0.1 10.0.0.3")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_hosts("10.0.0.300").is_err());
        assert!(parse_hosts("").is_err());
    }

    #[test]
    fn the_saved_yaml_round_trips_and_keeps_secrets_out() {
        let mut secrets = HashMap::new();
        secrets.insert("SSH_PASSWORD".to_string(), Secret::new("wizard-pass-1"));
        let a = AnswerFile {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: raw::Metadata {
                name: "demo".into(),
            },
            spec: raw::Spec {
                ssh: raw::SshSettings {
                    user: Some("admin".into()),
                    auth: Some(raw::Auth::Password {
                        password: Some("${SSH_PASSWORD}".into()),
                        password_file: None,
                    }),
                    ..Default::default()
                },
                hosts: vec![raw::Host::new("10.0.0.1")],
                network: raw::Network::default(),
                enforcer: raw::Enforcer::default(),
                k3s: raw::K3s::default(),
                timeouts: raw::Timeouts::default(),
                app: raw::App {
                    values: [("gatewayPort".to_string(), serde_json::Value::from(9443))]
                        .into_iter()
                        .collect(),
                },
            },
        };
        let y = to_yaml(&a, false, &secrets);
        assert!(!y.contains("wizard-pass-1"));
        assert!(y.contains("${SSH_PASSWORD}"), "{y}");
        insta::assert_snapshot!(y);
        let clear = to_yaml(&a, true, &secrets);
        assert!(clear.contains("wizard-pass-1"));
        // What the wizard writes, validation reads back to the same document.
        let decl = Declaration::embedded().unwrap();
        let env = MapEnv {
            vars: [("SSH_PASSWORD".to_string(), "wizard-pass-1".to_string())]
                .into_iter()
                .collect(),
            fallback: None,
        };
        let ctx = Context {
            env: &env,
            base_dir: PathBuf::from("."),
            prompter: None,
            declaration: &decl,
        };
        let loaded = validate_text("x", None, &y, &ctx).unwrap();
        let mut expected = a.clone();
        expected
            .spec
            .app
            .values
            .insert("gatewayPort".into(), "9443".into());
        assert_eq!(loaded.answers, expected);
    }

    #[test]
    fn the_cgroup_v1_escape_is_written_into_the_file_and_the_rest_kept() {
        let text = "# Answer file written by the installer's wizard.\napiVersion: installer.dev/v1\nkind: Cluster\nmetadata:\n  name: demo\nspec:\n  ssh:\n    user: admin\n  hosts:\n    - address: 10.0.0.1\n      hostKey: SHA256:abc\n";
        let out = Relaxation::CgroupV1.apply(text).unwrap();
        assert!(out.starts_with("# Answer file written"), "{out}");
        let tree: AnswerFile = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(tree.spec.k3s.allow_cgroup_v1, Some(true));
        assert_eq!(tree.spec.hosts[0].host_key.as_deref(), Some("SHA256:abc"));
        assert_eq!(tree.spec.ssh.user.as_deref(), Some("admin"));
    }

    #[test]
    fn key_encryption_is_read_from_the_key() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let mk = |cipher: &str| {
            let mut b = b"openssh-key-v1\0".to_vec();
            b.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
            b.extend_from_slice(cipher.as_bytes());
            format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        };
        let plain = dir.path().join("k1");
        std::fs::write(&plain, mk("none")).unwrap();
        let enc = dir.path().join("k2");
        std::fs::write(&enc, mk("aes256-ctr")).unwrap();
        assert_eq!(key_is_encrypted(&plain), Some(false));
        assert_eq!(key_is_encrypted(&enc), Some(true));
        let other = dir.path().join("k3");
        std::fs::write(&other, "garbage").unwrap();
        assert_eq!(key_is_encrypted(&other), None);
    }
}
