//! The wizard: `installer` with no arguments on a terminal.
//!
//! It asks the fewest questions that can work (the hosts, the SSH user and how to log in,
//! how to become root, then the application's values with their defaults pre-filled),
//! checks each answer as it is typed with the same checks the answer-file validation uses,
//! shows the plan, and saves an [`AnswerFile`] (mode 0600). Secrets typed at a prompt are
//! saved as `${VAR}` references (or, only if the user insists, in clear text); the values
//! stay in memory so the install offered at the end can use them. The saved file is then
//! loaded back through the normal validation, so a wizard install and an unattended install
//! of the saved file are the same thing.
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

/// Environment variable names the wizard writes for secrets.
pub const SSH_PASSWORD_VAR: &str = "SSH_PASSWORD";
pub const SUDO_PASSWORD_VAR: &str = "SUDO_PASSWORD";
pub const KEY_PASSPHRASE_VAR: &str = "SSH_KEY_PASSPHRASE";

/// Runs the wizard. `env` supplies `HOME`, `USER` and `SSH_AUTH_SOCK`; `cwd` is where a
/// relative save path lands.
pub fn run(
    ask: &dyn Ask,
    decl: &Declaration,
    env: &dyn Env,
    cwd: &Path,
) -> std::io::Result<Outcome> {
    let mut secrets: HashMap<String, Secret> = HashMap::new();
    ask.say(
        "This wizard asks a few questions, shows the plan, and saves an answer file you can rerun \
         unattended (`installer install -f FILE`). Ctrl-C stops it; nothing is changed on any host \
         before you confirm.",
    );

    // 1. Hosts.
    let hosts_text = ask.input(
        "Host addresses (1, 3, 4 or 5; IPs or DNS names, separated by spaces)",
        None,
        &mut |s| parse_hosts(s).map(|_| ()),
    )?;
    let hosts = parse_hosts(&hosts_text).map_err(std::io::Error::other)?;

    // 2. SSH user.
    let default_user = env
        .var("USER")
        .filter(|u| check::user(u).is_ok())
        .unwrap_or_else(|| "root".into());
    let user = ask.input("SSH user on the hosts", Some(&default_user), &mut |s| {
        check::user(s).map(|_| ()).map_err(|p| p.to_string())
    })?;

    // 3. How to log in.
    let home = env
        .var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let has_agent = env.var("SSH_AUTH_SOCK").is_some();
    let choice = ask.select(
        "How does the installer log in?",
        &[
            "ssh-agent (keys loaded with ssh-add)",
            "a private key file",
            "a password",
        ],
        if has_agent { 0 } else { 1 },
    )?;
    let auth = match choice {
        0 => raw::Auth::Agent {},
        1 => {
            let default_key = ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|k| format!("~/.ssh/{k}"))
                .find(|k| expand(k, &home).is_file())
                .unwrap_or_else(|| "~/.ssh/id_ed25519".into());
            let key = ask.input("Private key file", Some(&default_key), &mut |s| {
                let p = expand(s, &home);
                if !p.is_file() {
                    Err(format!("{} does not exist", p.display()))
                } else if p.extension().is_some_and(|e| e == "pub") {
                    Err("that is the public key; give the private key".into())
                } else {
                    Ok(())
                }
            })?;
            let passphrase = match key_is_encrypted(&expand(&key, &home)) {
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
            let pw = ask.secret(&format!("SSH password for {user}"), false)?;
            secrets.insert(SSH_PASSWORD_VAR.into(), pw);
            raw::Auth::Password {
                password: Some(format!("${{{SSH_PASSWORD_VAR}}}")),
                password_file: None,
            }
        }
    };

    // 4. Becoming root.
    let sudo = if user == "root" {
        None
    } else {
        let c = ask.select(
            &format!("How does {user} become root?"),
            &["sudo without a password", "sudo with a password"],
            0,
        )?;
        if c == 0 {
            Some(raw::Sudo {
                mode: raw::SudoMode::Passwordless,
                password: None,
                password_file: None,
            })
        } else {
            let same = match secrets.get(SSH_PASSWORD_VAR) {
                Some(_) => ask.confirm("Is the sudo password the SSH password?", true)?,
                None => false,
            };
            let var = if same {
                SSH_PASSWORD_VAR.to_owned()
            } else {
                let pw = ask.secret(&format!("sudo password for {user}"), false)?;
                secrets.insert(SUDO_PASSWORD_VAR.into(), pw);
                SUDO_PASSWORD_VAR.to_owned()
            };
            Some(raw::Sudo {
                mode: raw::SudoMode::Password,
                password: Some(format!("${{{var}}}")),
                password_file: None,
            })
        }
    };

    // 5. Networks: only if a host sits inside a k3s default range.
    let network = pick_networks(&hosts, ask);

    // 6. Application values, defaults pre-filled, each checked as typed.
    let mut values: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    ask.say(&format!("Settings of {}:", decl.application));
    for v in &decl.values {
        if v.is_secret() {
            let s = ask.secret(
                &format!(
                    "{} ({}; empty: {})",
                    v.name,
                    v.description,
                    if v.required {
                        "required"
                    } else {
                        "leave unset"
                    }
                ),
                !v.required,
            )?;
            if !s.is_empty() {
                let var = v.env_var();
                values.insert(v.name.clone(), format!("${{{var}}}").into());
                secrets.insert(var, s);
            }
            continue;
        }
        let host_count = hosts.len() as i64;
        let mut default = v.default_text();
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

    let name = check::cluster_name(&decl.application).unwrap_or_else(|_| "cluster".into());
    let answers = AnswerFile {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: raw::Metadata { name },
        spec: raw::Spec {
            ssh: raw::SshSettings {
                user: Some(user),
                port: None,
                auth: Some(auth),
                sudo,
                known_hosts_file: None,
                bastion: None,
            },
            hosts: hosts.iter().map(|h| raw::Host::new(h.clone())).collect(),
            network,
            enforcer: raw::Enforcer::default(),
            k3s: raw::K3s::default(),
            timeouts: raw::Timeouts::default(),
            app: raw::App { values },
        },
    };

    // 7. The plan, from the same validation an answer file goes through.
    let text = to_yaml(&answers, false, &secrets);
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
        }
        Err(d) => {
            // The answers were checked one by one; a problem here is across answers.
            ask.say(&d.to_string());
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the answers do not make a valid install",
            ));
        }
    }

    // 8. Save.
    let path_text = ask.input("Save the answer file as", Some("answers.yaml"), &mut |s| {
        let p = cwd.join(s);
        match p.parent() {
            Some(d) if d.is_dir() => Ok(()),
            _ => Err("that directory does not exist".into()),
        }
    })?;
    let path = cwd.join(&path_text);
    if path.exists() && !ask.confirm(&format!("{} exists. Replace it?", path_text), false)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{path_text} exists and was kept"),
        ));
    }
    let clear = !secrets.is_empty()
        && ask.confirm(
            "Write the passwords into the file in clear text? (not recommended: anyone who can read the file can log in)",
            false,
        )?;
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

    let run_now = ask.confirm(
        "Install now? (connects to the hosts and installs; `installer install -f FILE` does the same later)",
        true,
    )?;
    Ok(Outcome {
        path,
        run_now,
        secrets,
    })
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
