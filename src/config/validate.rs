//! Validation: an answer file's text -> a [`Plan`], with every problem reported at once.
//!
//! Three stages, each collecting problems instead of stopping at the first:
//! 1. parse into a span-carrying tree ([`super::yaml`]); a YAML syntax error ends here;
//! 2. the structural check against the JSON Schema ([`super::schema`]): unknown fields,
//!    wrong types, bad choices, missing fields; broken parts are left out and we go on;
//! 3. the semantic checks below, on the raw [`AnswerFile`]: addresses, duplicates, roles,
//!    CIDRs, files, `${VAR}`s, application values. Each problem is located through its path
//!    in the tree, so it carries a line and column too.
//!
//! Validation is a pure function of the text, the environment and any prompted secrets: it
//! touches no host. Passwords that are neither given nor referenced are asked through a
//! [`Prompter`] only once everything else is valid (no prompt before an error report).

use super::answer_file::{self as raw, AnswerFile};
use super::app::{AppValue, Declaration, distinct_ports};
use super::check::{self, Address, Problem};
use super::diagnostics::{Diagnostic, Diagnostics, closest};
use super::interpolate::{self, Env, InterpolateError};
use super::plan::*;
use super::yaml::{self, Node, Path};
use crate::secret::Secret;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

/// Asks for a secret that the answer file leaves to a prompt.
pub trait Prompter {
    /// `what` says which secret ("sudo password for admin (all hosts)"). `None`: not given.
    fn secret(&self, what: &str) -> Option<Secret>;
}

/// What validation needs besides the text.
pub struct Context<'a> {
    /// Where `${VAR}`s and `HOME` come from.
    pub env: &'a dyn Env,
    /// Relative paths in the file (`keyFile`, `passwordFile`, ...) are relative to this:
    /// the answer file's directory.
    pub base_dir: PathBuf,
    /// Asks for passwords the file leaves out; `None` when there is no terminal.
    pub prompter: Option<&'a dyn Prompter>,
    /// The application's value declaration.
    pub declaration: &'a Declaration,
}

/// A valid answer file: the raw document, its plan, and any warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub answers: AnswerFile,
    pub plan: Plan,
    /// Warnings (no errors), in file order.
    pub warnings: Diagnostics,
}

/// Validates an answer file's text. `file` is how the file is named in messages.
pub fn validate_text(
    file: &str,
    path: Option<&std::path::Path>,
    text: &str,
    ctx: &Context<'_>,
) -> Result<Loaded, Diagnostics> {
    let tree = match yaml::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let mut d = Diagnostic::error(e.loc, Path::root(), e.message);
            d.hint = e.hint;
            return Err(Diagnostics::new(file, vec![d]));
        }
    };
    let schema = super::schema::json_schema(ctx.declaration);
    let (json, mut diags) = super::schema::check(&tree, &schema);
    let answers: Option<AnswerFile> = serde_json::from_value(json).ok();
    let Some(answers) = answers else {
        if diags.is_empty() {
            diags.push(Diagnostic::error(
                tree.loc,
                Path::root(),
                "the document is not an answer file",
            ));
        }
        return Err(Diagnostics::new(file, diags));
    };

    let mut answered: HashMap<Path, Secret> = HashMap::new();
    // Round 1 finds what to ask; round 2 builds the plan with the answers.
    for round in 1..=2 {
        let mut v = Validator {
            tree: &tree,
            ctx,
            diags: Vec::new(),
            prompts: Vec::new(),
            answered: &answered,
            masks: answered.values().map(|s| s.expose().to_owned()).collect(),
            app_at: BTreeMap::new(),
        };
        let plan = v.plan(&answers, path);
        let mut all = diags.clone();
        all.append(&mut v.diags);
        mask(&mut all, &v.masks);
        let has_errors = all
            .iter()
            .any(|d| d.severity == super::diagnostics::Severity::Error);
        if has_errors {
            return Err(Diagnostics::new(file, all));
        }
        if !v.prompts.is_empty() {
            let prompts = std::mem::take(&mut v.prompts);
            let prompter = if round == 1 { ctx.prompter } else { None };
            let mut missing = Vec::new();
            for (p, what) in prompts {
                match prompter.and_then(|pr| pr.secret(&what)) {
                    Some(s) => {
                        answered.insert(p, s);
                    }
                    None => missing.push(
                        Diagnostic::error(tree.locate(&p), p, format!("no {what} given, and there is no terminal to ask on"))
                            .with_hint("write `password: ${SOME_VAR}` and export SOME_VAR, or `passwordFile: /path`, or run the installer on a terminal to be asked"),
                    ),
                }
            }
            if !missing.is_empty() {
                all.extend(missing);
                return Err(Diagnostics::new(file, all));
            }
            continue;
        }
        return match plan {
            Some(plan) => Ok(Loaded {
                answers,
                plan,
                warnings: Diagnostics::new(file, all),
            }),
            None => Err(Diagnostics::new(file, all)),
        };
    }
    // Not reached: round 2 either builds the plan or reports what is still missing.
    Err(Diagnostics::new(file, diags))
}

/// Why an answer file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the answer file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates an answer file; relative paths in it are taken from its directory.
pub fn load_file(
    path: &std::path::Path,
    env: &dyn Env,
    prompter: Option<&dyn Prompter>,
    declaration: &Declaration,
) -> Result<Loaded, LoadError> {
    let read_err = |e: std::io::Error| LoadError::Read {
        path: path.display().to_string(),
        source: e,
    };
    let file = fs_err::File::open(path).map_err(read_err)?;
    // Bounded read: a file far bigger than any answer file is refused without reading it all.
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        let limit = u64::try_from(yaml::MAX_FILE_BYTES).unwrap_or(u64::MAX) + 1;
        file.take(limit).read_to_end(&mut bytes).map_err(read_err)?;
    }
    let text = decode(&path.display().to_string(), &bytes).map_err(LoadError::Invalid)?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let ctx = Context {
        env,
        base_dir,
        prompter,
        declaration,
    };
    let mut loaded = validate_text(&path.display().to_string(), Some(path), &text, &ctx)
        .map_err(LoadError::Invalid)?;
    if let Some(w) = writable_by_others(path, crate::fsx::euid() == 0) {
        loaded.warnings.items.insert(0, w);
    }
    Ok(loaded)
}

/// A warning when root runs an answer file others can change (they would choose what root
/// runs on every host).
pub(crate) fn writable_by_others(path: &std::path::Path, root: bool) -> Option<Diagnostic> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(path).ok()?;
    let mode = m.permissions().mode() & 0o777;
    let others = mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0);
    (root && others).then(|| {
        Diagnostic::warning(
            yaml::Loc { line: 1, column: 1 },
            Path::root(),
            format!(
                "the answer file can be changed by other users (mode {mode:o}, owner uid {}), and the installer runs as root",
                m.uid()
            ),
        )
        .with_hint(format!("`chmod go-w {}`", path.display()))
    })
}

/// The file's bytes as UTF-8 text, or a problem naming the line of the first invalid byte
/// (and the encoding, when the file is recognisably UTF-16 or UTF-32).
pub fn decode(file: &str, bytes: &[u8]) -> Result<String, Diagnostics> {
    let at = |line: usize, column: usize, msg: String, hint: &str| {
        Diagnostics::new(
            file,
            vec![Diagnostic::error(yaml::Loc { line, column }, Path::root(), msg).with_hint(hint)],
        )
    };
    let resave = "save the file as UTF-8 (most editors offer it under \"Save as\" or \"Encoding\"), e.g. `iconv -f <encoding> -t UTF-8`";
    let named = if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) || bytes.starts_with(&[0, 0, 0xFE, 0xFF])
    {
        Some("UTF-32")
    } else if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        Some("UTF-16")
    } else if bytes.len() >= 4 && (bytes[1] == 0 && bytes[3] == 0 || bytes[0] == 0 && bytes[2] == 0)
    {
        Some("UTF-16 (without byte order mark)")
    } else {
        None
    };
    if let Some(enc) = named {
        return Err(at(
            1,
            1,
            format!("the file is encoded as {enc}, not UTF-8"),
            resave,
        ));
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => Ok(t.strip_prefix('\u{feff}').unwrap_or(t).to_owned()),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            let bad = bytes[e.valid_up_to()];
            Err(at(
                line,
                column,
                format!("the file is not valid UTF-8 (byte 0x{bad:02x} at this position)"),
                &format!(
                    "the file may be in another encoding, such as Latin-1 (ISO-8859-1) or Windows-1252: {resave}"
                ),
            ))
        }
    }
}

struct Validator<'a> {
    tree: &'a Node,
    ctx: &'a Context<'a>,
    diags: Vec<Diagnostic>,
    /// Secrets to ask for: (where the answer belongs, what to call it).
    prompts: Vec<(Path, String)>,
    answered: &'a HashMap<Path, Secret>,
    /// Secret values seen (secret fields, password files, secret-named `${VAR}`s): masked in
    /// every message, whatever field they ended up in.
    masks: Vec<String>,
    /// Where the file gives each application value (for errors found when rendering).
    app_at: BTreeMap<String, super::yaml::Loc>,
}

/// Every secret value in `diags` replaced by `***`.
fn mask(diags: &mut [Diagnostic], masks: &[String]) {
    let mut masks: Vec<&str> = masks
        .iter()
        .map(String::as_str)
        .filter(|m| !m.trim().is_empty())
        .collect();
    // Longest first, so a secret holding another is masked whole.
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    masks.dedup();
    if masks.is_empty() {
        return;
    }
    let apply = |s: &mut String| {
        for m in &masks {
            if s.contains(m) {
                *s = s.replace(m, "***");
            }
        }
    };
    for d in diags {
        apply(&mut d.message);
        if let Some(h) = &mut d.hint {
            apply(h);
        }
    }
}

/// A validated per-level sudo setting, with where it came from.
#[derive(Clone)]
struct SudoAt {
    plan: Option<SudoPlan>,
    mode: raw::SudoMode,
    path: Path,
}

/// Validated SSH settings of one level (shared or per host); `None`: not set at this level.
#[derive(Clone, Default)]
struct SshLevel {
    user: Option<String>,
    port: Option<u16>,
    /// `Some(None)`: set, but invalid (already reported).
    auth: Option<Option<AuthMethod>>,
    sudo: Option<SudoAt>,
    known_hosts: Option<PathBuf>,
    bastion: Option<Option<BastionLevel>>,
}

#[derive(Clone)]
struct BastionLevel {
    address: String,
    port: u16,
    user: Option<String>,
    auth: Option<Option<AuthMethod>>,
    host_key: Option<String>,
}

impl<'a> Validator<'a> {
    /// Where a problem about `path` points: a scalar's value, or the key of a list or mapping
    /// (the line that names it).
    fn loc(&self, path: &Path) -> super::yaml::Loc {
        match self.tree.get(path).map(|n| &n.kind) {
            Some(super::yaml::NodeKind::Map(_) | super::yaml::NodeKind::Seq(_)) => {
                self.tree.locate_key(path)
            }
            _ => self.tree.locate(path),
        }
    }

    fn error(&mut self, path: &Path, p: Problem) {
        let mut d = Diagnostic::error(self.loc(path), path.clone(), p.message);
        d.hint = p.hint;
        self.diags.push(d);
    }

    fn warn(&mut self, path: &Path, message: String, hint: &str) {
        self.diags
            .push(Diagnostic::warning(self.loc(path), path.clone(), message).with_hint(hint));
    }

    /// Interpolates `${VAR}`s in a string field.
    fn string(&mut self, path: &Path, raw: &str) -> Option<String> {
        for name in interpolate::references(raw) {
            if interpolate::is_secret_name(name)
                && let Some(v) = self.ctx.env.var(name)
            {
                self.masks.push(v);
            }
        }
        match interpolate::interpolate(raw, self.ctx.env) {
            Ok(s) => Some(s),
            Err(InterpolateError::Unset(vars)) => {
                let first = vars.first().cloned().unwrap_or_default();
                self.error(
                    path,
                    Problem::new(format!(
                        "environment variable{} {} not set",
                        if vars.len() == 1 { "" } else { "s" },
                        vars.iter()
                            .map(|v| format!("${{{v}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .hint(format!("export {first}=... before running the installer")),
                );
                None
            }
            Err(InterpolateError::Malformed(m)) => {
                self.error(path, Problem::new(m).hint("write `$${` for a literal `${`"));
                None
            }
        }
    }

    /// A secret field: interpolated, wrapped, and flagged when written in clear text.
    fn secret(&mut self, path: &Path, raw: &str) -> Option<Secret> {
        let clear = !interpolate::has_reference(raw);
        let value = self.string(path, raw)?;
        self.masks.push(value.clone());
        if clear {
            self.warn(
                path,
                "a secret is written in the file in clear text".into(),
                "write `${SOME_VAR}` and export SOME_VAR instead, so the file can be shared",
            );
        }
        if value.is_empty() {
            self.error(path, Problem::new("the secret is empty"));
            return None;
        }
        Some(Secret::new(value))
    }

    fn home(&self) -> PathBuf {
        self.ctx
            .env
            .var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// A path field: interpolated, `~/` expanded, relative to the answer file's directory.
    fn file_path(&mut self, path: &Path, raw: &str) -> Option<PathBuf> {
        let s = self.string(path, raw)?;
        if s.is_empty() {
            self.error(path, Problem::new("the path is empty"));
            return None;
        }
        let p = if s == "~" {
            self.home()
        } else if let Some(rest) = s.strip_prefix("~/") {
            self.home().join(rest)
        } else if s.starts_with('~') {
            self.error(
                path,
                Problem::new(format!("`{s}`: only `~/` (your own home) is expanded"))
                    .hint("write the full path"),
            );
            return None;
        } else {
            let p = PathBuf::from(&s);
            if p.is_absolute() {
                p
            } else {
                self.ctx.base_dir.join(p)
            }
        };
        Some(p)
    }

    /// A file that must exist and be a regular file.
    fn existing_file(&mut self, path: &Path, raw: &str, what: &str) -> Option<PathBuf> {
        let p = self.file_path(path, raw)?;
        // A path built from `${VAR}`s is shown as written: the variable may hold a secret
        // put in the wrong field by mistake.
        let shown_path = if interpolate::has_reference(raw) {
            yaml::shown(raw)
        } else {
            yaml::shown(&p.display().to_string())
        };
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 && (what == "key file" || what == "password file") {
                    self.warn(
                        path,
                        format!(
                            "the {what} {shown_path} can be read by other users (mode {mode:o})"
                        ),
                        &format!(
                            "`chmod 600 {shown_path}`: OpenSSH refuses private keys others can read"
                        ),
                    );
                }
                Some(p)
            }
            Ok(_) => {
                self.error(
                    path,
                    Problem::new(format!("the {what} {shown_path} is not a file")),
                );
                None
            }
            Err(e) => {
                self.error(
                    path,
                    Problem::new(format!("the {what} {shown_path} {}", if e.kind() == std::io::ErrorKind::NotFound { "does not exist".to_string() } else { format!("cannot be read: {e}") }))
                        .hint("check the path; a relative path is taken from the answer file's directory, `~/` from your home"),
                );
                None
            }
        }
    }

    /// A password taken from the first line of a file.
    fn secret_file(&mut self, path: &Path, raw: &str) -> Option<Secret> {
        let p = self.existing_file(path, raw, "password file")?;
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let line = text.lines().next().unwrap_or_default().to_owned();
                self.masks.push(line.clone());
                if line.is_empty() {
                    self.error(
                        path,
                        Problem::new(format!("the password file {} is empty", p.display())),
                    );
                    None
                } else {
                    Some(Secret::new(line))
                }
            }
            Err(e) => {
                self.error(
                    path,
                    Problem::new(format!("cannot read {}: {e}", p.display())),
                );
                None
            }
        }
    }

    fn prompt(&mut self, path: Path, what: String) -> Option<Secret> {
        if let Some(s) = self.answered.get(&path) {
            return Some(s.clone());
        }
        self.prompts.push((path, what));
        None
    }

    fn scope(path: &Path) -> String {
        match path.0.get(1) {
            Some(yaml::Seg::Key(k)) if k == "hosts" => match path.0.get(2) {
                Some(yaml::Seg::Index(i)) => format!("spec.hosts[{i}]"),
                _ => "all hosts".into(),
            },
            _ => "all hosts".into(),
        }
    }

    fn auth(&mut self, path: &Path, auth: &raw::Auth) -> Option<AuthMethod> {
        match auth {
            raw::Auth::Agent {} => {
                if self.ctx.env.var("SSH_AUTH_SOCK").is_none() {
                    self.warn(
                        &path.key("type"),
                        "SSH_AUTH_SOCK is not set, so there is no ssh-agent to log in with".into(),
                        "start ssh-agent and `ssh-add` your key, or use `type: key` with `keyFile:`",
                    );
                }
                Some(AuthMethod::Agent)
            }
            raw::Auth::Key {
                key_file,
                passphrase,
            } => {
                let kp = path.key("keyFile");
                let file = self.existing_file(&kp, key_file, "key file");
                if let Some(f) = &file
                    && f.extension().is_some_and(|e| e == "pub")
                {
                    self.error(
                        &kp,
                        Problem::new(format!("{} is a public key", f.display()))
                            .hint("name the private key (the same path without `.pub`)"),
                    );
                    return None;
                }
                let pass = match passphrase {
                    Some(p) => Some(self.secret(&path.key("passphrase"), p)?),
                    None => None,
                };
                Some(AuthMethod::KeyFile {
                    path: file?,
                    passphrase: pass,
                })
            }
            raw::Auth::Password {
                password,
                password_file,
            } => {
                let what = format!("SSH password ({})", Self::scope(path));
                self.password(path, password.as_ref(), password_file.as_ref(), what)
                    .map(AuthMethod::Password)
            }
        }
    }

    /// A password given in the file (`password`, `${VAR}` allowed), read from a file
    /// (`passwordFile`), or asked for when neither is given; never both.
    fn password(
        &mut self,
        path: &Path,
        password: Option<&String>,
        password_file: Option<&String>,
        what: String,
    ) -> Option<Secret> {
        match (password, password_file) {
            (Some(_), Some(_)) => {
                self.error(
                    &path.key("passwordFile"),
                    Problem::new("give either `password` or `passwordFile`, not both"),
                );
                None
            }
            (Some(p), None) => self.secret(&path.key("password"), p),
            (None, Some(f)) => self.secret_file(&path.key("passwordFile"), f),
            (None, None) => self.prompt(path.key("password"), what),
        }
    }

    fn sudo(&mut self, path: &Path, sudo: &raw::Sudo) -> SudoAt {
        let mode_path = path.key("mode");
        let plan = match sudo.mode {
            raw::SudoMode::None | raw::SudoMode::Passwordless => {
                for (field, set) in [
                    ("password", sudo.password.is_some()),
                    ("passwordFile", sudo.password_file.is_some()),
                ] {
                    if set {
                        self.error(
                            &path.key(field),
                            Problem::new(format!("`{field}` is only used with `mode: password`"))
                                .hint("set `mode: password`, or remove it"),
                        );
                    }
                }
                Some(if sudo.mode == raw::SudoMode::None {
                    SudoPlan::None
                } else {
                    SudoPlan::Passwordless
                })
            }
            raw::SudoMode::Password => {
                let what = format!("sudo password ({})", Self::scope(path));
                self.password(
                    path,
                    sudo.password.as_ref(),
                    sudo.password_file.as_ref(),
                    what,
                )
                .map(SudoPlan::Password)
            }
        };
        SudoAt {
            plan,
            mode: sudo.mode,
            path: mode_path,
        }
    }

    fn user(&mut self, path: &Path, raw: &str) -> Option<String> {
        let s = self.string(path, raw)?;
        match check::user(&s) {
            Ok(u) => Some(u),
            Err(p) => {
                self.error(path, p);
                None
            }
        }
    }

    fn port(&mut self, path: &Path, port: Option<u16>) -> Option<u16> {
        // The schema already refused 0 and anything above 65535.
        port.inspect(|p| {
            if *p == 0 {
                self.error(path, Problem::new("0 is not a port"));
            }
        })
    }

    fn host_key(&mut self, path: &Path, raw: &str) -> Option<String> {
        let s = self.string(path, raw)?;
        match check::host_key(&s) {
            Ok(k) => Some(k),
            Err(p) => {
                self.error(path, p);
                None
            }
        }
    }

    fn bastion(&mut self, path: &Path, b: &raw::Bastion) -> Option<BastionLevel> {
        let ap = path.key("address");
        let address = self
            .string(&ap, &b.address)
            .and_then(|a| match check::address(&a) {
                Ok(_) => Some(
                    a.trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                ),
                Err(p) => {
                    self.error(&ap, p);
                    None
                }
            });
        let user = b.user.as_ref().map(|u| self.user(&path.key("user"), u));
        let auth = b.auth.as_ref().map(|a| self.auth(&path.key("auth"), a));
        let host_key = b
            .host_key
            .as_ref()
            .map(|k| self.host_key(&path.key("hostKey"), k));
        let port = self.port(&path.key("port"), b.port);
        Some(BastionLevel {
            address: address?,
            port: port.unwrap_or(DEFAULT_SSH_PORT),
            user: match user {
                Some(u) => Some(u?),
                None => None,
            },
            auth,
            host_key: match host_key {
                Some(k) => Some(k?),
                None => None,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn ssh_level(
        &mut self,
        path: &Path,
        user: Option<&String>,
        port: Option<u16>,
        auth: Option<&raw::Auth>,
        sudo: Option<&raw::Sudo>,
        known_hosts: Option<&String>,
        bastion: Option<&raw::Bastion>,
    ) -> (SshLevel, bool) {
        let mut ok = true;
        let mut level = SshLevel::default();
        if let Some(u) = user {
            level.user = self.user(&path.key("user"), u);
            ok &= level.user.is_some();
        }
        level.port = self.port(&path.key("port"), port);
        if let Some(a) = auth {
            let m = self.auth(&path.key("auth"), a);
            ok &= m.is_some();
            level.auth = Some(m);
        }
        if let Some(s) = sudo {
            let at = self.sudo(&path.key("sudo"), s);
            ok &= at.plan.is_some();
            level.sudo = Some(at);
        }
        if let Some(k) = known_hosts {
            let kp = path.key("knownHostsFile");
            level.known_hosts = self.file_path(&kp, k).filter(|p| {
                // It may not exist yet (it is created), but what exists must be a file.
                match std::fs::metadata(p) {
                    Ok(m) if !m.is_file() => {
                        self.error(
                            &kp,
                            Problem::new(format!(
                                "the known-hosts file {} is not a regular file",
                                yaml::shown(&p.display().to_string())
                            ))
                            .hint("give the path of a file (it is created if it does not exist), not a directory or a device"),
                        );
                        false
                    }
                    _ => true,
                }
            });
            ok &= level.known_hosts.is_some();
        }
        if let Some(b) = bastion {
            let bl = self.bastion(&path.key("bastion"), b);
            ok &= bl.is_some();
            level.bastion = Some(bl);
        }
        (level, ok)
    }

    fn default_user(&self) -> String {
        self.ctx
            .env
            .var("USER")
            .or_else(|| self.ctx.env.var("LOGNAME"))
            .filter(|u| check::user(u).is_ok())
            .unwrap_or_else(|| "root".into())
    }

    fn plan(&mut self, a: &AnswerFile, file: Option<&std::path::Path>) -> Option<Plan> {
        let mut ok = true;
        let name_path = Path::parse("metadata.name");
        let cluster_name =
            self.string(&name_path, &a.metadata.name)
                .and_then(|n| match check::cluster_name(&n) {
                    Ok(n) => Some(n),
                    Err(p) => {
                        self.error(&name_path, p);
                        None
                    }
                });

        // Shared SSH settings, validated once.
        let sp = Path::parse("spec.ssh");
        let s = &a.spec.ssh;
        let (shared, shared_ok) = self.ssh_level(
            &sp,
            s.user.as_ref(),
            s.port,
            s.auth.as_ref(),
            s.sudo.as_ref(),
            s.known_hosts_file.as_ref(),
            s.bastion.as_ref(),
        );
        ok &= shared_ok;

        // Host count and roles.
        let hp = Path::parse("spec.hosts");
        let n = a.spec.hosts.len();
        let count_ok = matches!(n, 1 | 3 | 4 | 5);
        if !count_ok {
            self.error(
                &hp,
                Problem::new(format!(
                    "{n} host{}: the installer supports 1, 3, 4 or 5 hosts",
                    if n == 1 { "" } else { "s" }
                ))
                .hint(if n == 2 {
                    "2 hosts cannot form a highly available cluster (etcd needs 3 servers): use 1 host, or add a third"
                } else {
                    "1 host makes a single-server cluster; 3 to 5 hosts make a highly available one"
                }),
            );
            ok = false;
        }
        let roles = resolve_roles(&a.spec.hosts);
        let servers = roles.iter().filter(|r| **r == Role::Server).count();
        if n > 0 && servers == 0 {
            self.error(
                &hp,
                Problem::new("no host is a server")
                    .hint("a cluster needs 1, 3 or 5 servers: set `role: server` or `role: auto`"),
            );
            ok = false;
        } else if count_ok && servers % 2 == 0 {
            let which: Vec<String> = a
                .spec
                .hosts
                .iter()
                .zip(&roles)
                .enumerate()
                .filter(|(_, (_, r))| **r == Role::Server)
                .map(|(i, (h, _))| format!("spec.hosts[{i}] {}", h.address))
                .collect();
            let last = a
                .spec
                .hosts
                .iter()
                .zip(&roles)
                .enumerate()
                .filter(|(_, (_, r))| **r == Role::Server)
                .map(|(i, _)| i)
                .next_back()
                .unwrap_or(0);
            self.error(
                &hp.index(last).key("role"),
                Problem::new(format!(
                    "an even number of servers ({servers}: {})",
                    which.join(", ")
                ))
                .hint("etcd needs a majority of servers up: 2 servers survive no failure and 4 survive one, like 1 and 3; use 1, 3 or 5 servers (make one of these `role: agent`)"),
            );
            ok = false;
        }

        // Hosts.
        let mut seen_addr: HashMap<String, usize> = HashMap::new();
        let mut seen_name: HashMap<String, usize> = HashMap::new();
        let mut seen_ip: HashMap<IpAddr, usize> = HashMap::new();
        let mut host_ips: Vec<(IpAddr, Path)> = Vec::new();
        // The address each node uses for cluster traffic: `nodeIp`, else an IP `address`.
        let mut cluster_ips: Vec<(IpAddr, Path)> = Vec::new();
        let mut node_ips: Vec<(usize, IpAddr, Path)> = Vec::new();
        let mut hosts = Vec::new();
        for (i, (h, role)) in a.spec.hosts.iter().zip(&roles).enumerate() {
            let p = hp.index(i);
            let ap = p.key("address");
            let address = self
                .string(&ap, &h.address)
                .and_then(|s| match check::address(&s) {
                    Ok(addr) => Some((
                        s.trim()
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned(),
                        addr,
                    )),
                    Err(pr) => {
                        self.error(&ap, pr);
                        None
                    }
                });
            if let Some((_, addr)) = &address {
                if let Some(j) = seen_addr.insert(addr.key(), i) {
                    self.error(
                        &ap,
                        Problem::new(format!(
                            "duplicate address {} (also spec.hosts[{j}])",
                            addr.key()
                        ))
                        .hint("list each host once"),
                    );
                    ok = false;
                }
                if let Address::Ip(ip) = addr {
                    host_ips.push((*ip, ap.clone()));
                }
            }
            let node_name = h.node_name.as_ref().and_then(|nn| {
                let np = p.key("nodeName");
                let s = self.string(&np, nn)?;
                match check::node_name(&s) {
                    Ok(s) => {
                        if let Some(j) = seen_name.insert(s.clone(), i) {
                            self.error(
                                &np,
                                Problem::new(format!(
                                    "duplicate node name {s} (also spec.hosts[{j}])"
                                ))
                                .hint("each node needs its own name"),
                            );
                        }
                        Some(s)
                    }
                    Err(pr) => {
                        self.error(&np, pr);
                        None
                    }
                }
            });
            let node_ip = h.node_ip.as_ref().and_then(|raw| {
                let ip_path = p.key("nodeIp");
                let s = self.string(&ip_path, raw)?;
                match check::node_ip(&s) {
                    Ok(ip) => {
                        if let Some(j) = seen_ip.insert(ip, i) {
                            self.error(
                                &ip_path,
                                Problem::new(format!(
                                    "duplicate node IP {ip} (also spec.hosts[{j}])"
                                ))
                                .hint("each node needs its own IP address"),
                            );
                        }
                        host_ips.push((ip, ip_path.clone()));
                        node_ips.push((i, ip, ip_path));
                        Some(ip)
                    }
                    Err(pr) => {
                        self.error(&ip_path, pr);
                        None
                    }
                }
            });
            ok &= h.node_name.is_none() || node_name.is_some();
            ok &= h.node_ip.is_none() || node_ip.is_some();
            match (node_ip, &address) {
                (Some(ip), _) => cluster_ips.push((ip, p.key("nodeIp"))),
                (None, Some((_, Address::Ip(ip)))) => cluster_ips.push((*ip, ap.clone())),
                _ => {}
            }
            let host_key = match &h.host_key {
                Some(k) => {
                    let r = self.host_key(&p.key("hostKey"), k);
                    ok &= r.is_some();
                    r
                }
                None => None,
            };

            // Per-host SSH overrides, then the merge with the shared settings.
            let hs = h.ssh.clone().unwrap_or_default();
            let (own, own_ok) = self.ssh_level(
                &p.key("ssh"),
                hs.user.as_ref(),
                hs.port,
                hs.auth.as_ref(),
                hs.sudo.as_ref(),
                hs.known_hosts_file.as_ref(),
                hs.bastion.as_ref(),
            );
            ok &= own_ok;
            let user_from_host = own.user.is_some();
            let user = own
                .user
                .clone()
                .or(shared.user.clone())
                .unwrap_or_else(|| self.default_user());
            let auth = own
                .auth
                .clone()
                .or(shared.auth.clone())
                .unwrap_or(Some(AuthMethod::Agent));
            let sudo_at = own.sudo.clone().or(shared.sudo.clone());
            let sudo = match &sudo_at {
                Some(at) => {
                    if at.mode == raw::SudoMode::None && user != "root" {
                        let where_user = if user_from_host {
                            format!(" (spec.hosts[{i}].ssh.user)")
                        } else {
                            String::new()
                        };
                        self.error(
                            &at.path,
                            Problem::new(format!(
                                "sudo mode `none` means the login user is root, but it is `{user}`{where_user}"
                            ))
                            .hint("use `mode: passwordless` or `mode: password`, or log in as root"),
                        );
                        ok = false;
                    }
                    at.plan.clone()
                }
                None if user == "root" => Some(SudoPlan::None),
                None => Some(SudoPlan::Passwordless),
            };
            let known_hosts = own
                .known_hosts
                .clone()
                .or(shared.known_hosts.clone())
                .unwrap_or_else(|| self.home().join(".ssh/known_hosts"));
            let port = own.port.or(shared.port).unwrap_or(DEFAULT_SSH_PORT);
            let bastion = match own.bastion.clone().or(shared.bastion.clone()) {
                None => Some(None),
                Some(None) => None,
                Some(Some(b)) => {
                    let bauth = match b.auth {
                        Some(a) => a,
                        None => auth.clone(),
                    };
                    bauth.map(|bauth| {
                        Some(SshTarget {
                            address: b.address,
                            port: b.port,
                            user: b.user.unwrap_or_else(|| user.clone()),
                            auth: bauth,
                            known_hosts_file: known_hosts.clone(),
                            host_key: b.host_key,
                        })
                    })
                }
            };
            if let (Some((name, _)), Some(auth), Some(sudo), Some(bastion)) =
                (address, auth, sudo, bastion)
            {
                hosts.push(HostPlan {
                    name: name.clone(),
                    index: i,
                    role: *role,
                    node_name,
                    node_ip,
                    ssh: SshTarget {
                        address: name,
                        port,
                        user,
                        auth,
                        known_hosts_file: known_hosts,
                        host_key,
                    },
                    bastion,
                    sudo,
                });
            } else {
                ok = false;
            }
        }

        // A `nodeIp` that is another host's address: two nodes would claim one address.
        for (i, ip, path) in &node_ips {
            if let Some(j) = seen_addr.get(&ip.to_canonical().to_string())
                && j != i
            {
                self.error(
                    path,
                    Problem::new(format!("node IP {ip} is the address of spec.hosts[{j}]"))
                        .hint("nodeIp is this host's own address for cluster traffic"),
                );
                ok = false;
            }
        }
        let network = self.network(a, &host_ips, &cluster_ips);
        let tp = Path::parse("spec.timeouts");
        let node_timeout = self.duration(&tp.key("node"), a.spec.timeouts.node.as_ref());
        let rollout_timeout = self.duration(&tp.key("rollout"), a.spec.timeouts.rollout.as_ref());
        let enforcer = a.spec.enforcer.mode.unwrap_or_default();
        let app = self.app_values(a);

        if ok
            && self
                .diags
                .iter()
                .all(|d| d.severity != super::diagnostics::Severity::Error)
        {
            Some(Plan {
                answer_file: file.map(PathBuf::from),
                cluster_name: cluster_name?,
                hosts,
                network: network?,
                enforcer,
                enforcer_chosen: a.spec.enforcer.mode.is_some(),
                allow_cgroup_v1: a.spec.k3s.allow_cgroup_v1.unwrap_or(false),
                node_timeout: node_timeout?,
                rollout_timeout: rollout_timeout?,
                app: app?,
                app_value_at: std::mem::take(&mut self.app_at)
                    .into_iter()
                    .map(|(n, l)| (n, (l.line, l.column)))
                    .collect(),
            })
        } else {
            None
        }
    }

    /// A duration such as `90s` or `5m`, at least 10 s; the default when not given.
    fn duration(&mut self, path: &Path, raw: Option<&String>) -> Option<std::time::Duration> {
        let Some(raw) = raw else {
            return Some(super::plan::DEFAULT_TIMEOUT);
        };
        let text = self.string(path, raw)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= std::time::Duration::from_secs(10) => Some(d),
            Ok(_) => {
                self.error(
                    path,
                    Problem::new(format!("`{text}` is too short"))
                        .hint("at least 10s; the default is 5m"),
                );
                None
            }
            Err(_) => {
                self.error(
                    path,
                    Problem::new(format!("`{text}` is not a duration"))
                        .hint("write it as 90s, 5m or 1h"),
                );
                None
            }
        }
    }

    fn cidr(&mut self, path: &Path, raw: Option<&String>, default: &str) -> Option<(IpNet, bool)> {
        let (text, given) = match raw {
            Some(r) => (self.string(path, r)?, true),
            None => (default.to_owned(), false),
        };
        let net: IpNet = match text.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                self.error(
                    path,
                    Problem::new(format!("`{text}` is not a network in CIDR form"))
                        .hint(format!("for example {default} (address/prefix length)")),
                );
                return None;
            }
        };
        if net.trunc() != net {
            self.error(
                path,
                Problem::new(format!("`{net}` has bits set after the prefix"))
                    .hint(format!("did you mean {}?", net.trunc())),
            );
            return None;
        }
        Some((net, given))
    }

    fn network(
        &mut self,
        a: &AnswerFile,
        host_ips: &[(IpAddr, Path)],
        cluster_ips: &[(IpAddr, Path)],
    ) -> Option<NetworkPlan> {
        let np = Path::parse("spec.network");
        let cp = np.key("clusterCidr");
        let sp = np.key("serviceCidr");
        let cluster = self.cidr(
            &cp,
            a.spec.network.cluster_cidr.as_ref(),
            DEFAULT_CLUSTER_CIDR,
        );
        let service = self.cidr(
            &sp,
            a.spec.network.service_cidr.as_ref(),
            DEFAULT_SERVICE_CIDR,
        );
        let hosts = a.spec.hosts.len().max(1) as u32;
        let mut ok = cluster.is_some() && service.is_some();
        // Room for one per-node pod range: k3s's node-cidr-mask-size defaults to /24 (IPv4)
        // and /64 (IPv6) (kube-controller-manager `--node-cidr-mask-size`).
        if let Some((c, given)) = &cluster {
            let node_mask: u8 = if c.addr().is_ipv4() { 24 } else { 64 };
            let room = node_mask
                .checked_sub(c.prefix_len())
                .map(|b| if b >= 31 { u32::MAX } else { 1u32 << b });
            if room.is_none_or(|r| r < hosts) {
                let p = if *given { cp.clone() } else { np.clone() };
                self.error(
                    &p,
                    Problem::new(format!("the pod network {c} is too small for {hosts} nodes (each node takes a /{node_mask})"))
                        .hint("use a /16, for example 10.42.0.0/16"),
                );
                ok = false;
            }
        }
        // kube-apiserver refuses a service range above 2^20 addresses (IPv4 /12, IPv6 /108);
        // k3s puts cluster DNS at the 10th address, so the range must hold it.
        if let Some((s, given)) = &service {
            let (min, max) = if s.addr().is_ipv4() {
                (12, 28)
            } else {
                (108, 124)
            };
            if s.prefix_len() < min || s.prefix_len() > max {
                let p = if *given { sp.clone() } else { np.clone() };
                self.error(
                    &p,
                    Problem::new(format!(
                        "the service network {s} must have a prefix length from /{min} to /{max}"
                    ))
                    .hint("for example 10.43.0.0/16"),
                );
                ok = false;
            }
        }
        if let (Some((c, cg)), Some((s, sg))) = (&cluster, &service) {
            if c.addr().is_ipv4() != s.addr().is_ipv4() {
                self.error(
                    &sp,
                    Problem::new("the pod and service networks must be the same IP family")
                        .hint("dual-stack is not supported: use two IPv4 or two IPv6 networks"),
                );
                ok = false;
            } else if c.contains(&s.network()) || s.contains(&c.network()) {
                let p = if *sg {
                    sp.clone()
                } else if *cg {
                    cp.clone()
                } else {
                    np.clone()
                };
                self.error(
                    &p,
                    Problem::new(format!(
                        "the service network {s} overlaps the pod network {c}"
                    ))
                    .hint("give them separate ranges, for example 10.42.0.0/16 and 10.43.0.0/16"),
                );
                ok = false;
            }
            // kube-apiserver refuses node addresses of another family than its networks.
            let v4 = c.addr().is_ipv4();
            for (ip, path) in cluster_ips {
                if ip.to_canonical().is_ipv4() != v4 {
                    self.error(
                        path,
                        Problem::new(format!(
                            "{ip} is an {} address, but the cluster networks are {} ({c}, {s})",
                            if v4 { "IPv6" } else { "IPv4" },
                            if v4 { "IPv4" } else { "IPv6" }
                        ))
                        .hint(if v4 {
                            "dual-stack is not supported: give the host an IPv4 `nodeIp`, or set spec.network.clusterCidr and serviceCidr to IPv6 ranges (for example fd42::/56 and fd43::/112)"
                        } else {
                            "dual-stack is not supported: give the host an IPv6 `nodeIp`, or use IPv4 networks"
                        }),
                    );
                    ok = false;
                }
            }
            let mut avoid: Vec<IpNet> = host_ips.iter().map(|(ip, _)| IpNet::from(*ip)).collect();
            avoid.push(*c);
            avoid.push(*s);
            for (net, given, path, what, field) in [
                (c, cg, &cp, "pod", "clusterCidr"),
                (s, sg, &sp, "service", "serviceCidr"),
            ] {
                let mut inside: Vec<String> = Vec::new();
                let mut seen: Vec<IpAddr> = Vec::new();
                for (ip, hpath) in host_ips {
                    if net.contains(ip) && !seen.contains(ip) {
                        seen.push(*ip);
                        inside.push(format!("{ip} ({hpath})"));
                    }
                }
                if inside.is_empty() {
                    continue;
                }
                let where_ = if *given { path.clone() } else { np.clone() };
                let suggestion = suggest_free(net, &avoid);
                if let Some(sug) = suggestion {
                    avoid.push(sug);
                }
                self.error(
                    &where_,
                    Problem::new(format!(
                        "the {}{what} network {net} contains the host address{} {}",
                        if *given { "" } else { "default " },
                        if inside.len() == 1 { "" } else { "es" },
                        inside.join(", ")
                    ))
                    .hint(format!(
                        "set spec.network.{field} to a range no host is in{}",
                        suggestion
                            .map(|n| format!(", for example {n}"))
                            .unwrap_or_default()
                    )),
                );
                ok = false;
            }
        }
        if ok {
            Some(NetworkPlan {
                cluster_cidr: cluster?.0,
                service_cidr: service?.0,
                host_firewall: a.spec.network.host_firewall.unwrap_or_default(),
            })
        } else {
            None
        }
    }

    fn app_values(&mut self, a: &AnswerFile) -> Option<AppValues> {
        let decl = self.ctx.declaration;
        let vp = Path::parse("spec.app.values");
        let mut out: BTreeMap<String, AppValue> = BTreeMap::new();
        let mut paths: BTreeMap<String, Path> = BTreeMap::new();
        let mut ok = true;
        // Where each key of `spec.app.values` is, looked up once: finding a key in a mapping
        // is a walk over it, and 100 000 unknown values made that quadratic (98 s).
        let key_at: std::collections::HashMap<&str, super::yaml::Loc> =
            match self.tree.get(&vp).map(|n| &n.kind) {
                Some(super::yaml::NodeKind::Map(entries)) => entries
                    .iter()
                    .map(|(k, _)| (k.text.as_str(), k.loc))
                    .collect(),
                _ => Default::default(),
            };
        for (name, raw) in &a.spec.app.values {
            let p = vp.key(name);
            let Some(d) = decl.get(name) else {
                let names: Vec<&str> = decl.values.iter().map(|v| v.name.as_str()).collect();
                let mut hint = match closest(name, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? "),
                    None => String::new(),
                };
                hint.push_str(&format!("the application declares: {}", names.join(", ")));
                let at = match key_at.get(name.as_str()) {
                    Some(l) => *l,
                    None => self.tree.locate_key(&p),
                };
                let mut diag =
                    Diagnostic::error(at, p, format!("unknown application value `{name}`"));
                diag.hint = Some(hint);
                self.diags.push(diag);
                ok = false;
                continue;
            };
            if d.is_secret()
                && let serde_json::Value::String(s) = raw
                && !interpolate::has_reference(s)
            {
                self.warn(
                    &p,
                    "a secret is written in the file in clear text".into(),
                    &format!(
                        "write `${{{}}}` and export it instead, so the file can be shared",
                        d.env_var()
                    ),
                );
            }
            match d.check(raw, self.ctx.env) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                    paths.insert(name.clone(), p);
                }
                Err(pr) => {
                    let pr = match pr.hint.clone() {
                        Some(h) => match d.default_text() {
                            Some(def) => pr.hint(format!("{h} (the default is {def})")),
                            None => pr.hint(h),
                        },
                        None => pr.hint(pr_hint(d)),
                    };
                    self.error(&p, pr);
                    ok = false;
                }
            }
        }
        for d in &decl.values {
            if out.contains_key(&d.name) || a.spec.app.values.contains_key(&d.name) {
                continue;
            }
            match &d.default {
                Some(def) => match d.check(def, &interpolate::MapEnv::default()) {
                    Ok(v) => {
                        out.insert(d.name.clone(), v);
                    }
                    Err(pr) => {
                        self.error(
                            &vp,
                            Problem::new(format!(
                                "the default of `{}` is invalid: {}",
                                d.name, pr.message
                            )),
                        );
                        ok = false;
                    }
                },
                None if d.required => {
                    self.error(
                        &vp,
                        Problem::new(format!("missing application value `{}`", d.name)).hint(
                            format!(
                                "{}: add `{}: ...` under spec.app.values",
                                d.description, d.name
                            ),
                        ),
                    );
                    ok = false;
                }
                None => {}
            }
        }
        // Replica counts bounded by the number of hosts.
        let hosts = a.spec.hosts.len() as i64;
        for d in decl.values.iter().filter(|d| d.at_most_hosts) {
            let Some(AppValue::Int(n)) = out.get(&d.name).cloned() else {
                continue;
            };
            if n <= hosts || hosts == 0 {
                continue;
            }
            match paths.get(&d.name) {
                Some(p) => {
                    let p = p.clone();
                    self.error(
                        &p,
                        Problem::new(format!(
                            "{n} is more than the {hosts} host{} of spec.hosts",
                            if hosts == 1 { "" } else { "s" }
                        ))
                        .hint(format!(
                            "every pod uses the host network, so each replica needs a node of its own: set {} to {hosts} or less",
                            d.name
                        )),
                    );
                    ok = false;
                }
                // The default was written for a bigger cluster: use every host.
                None => {
                    out.insert(d.name.clone(), AppValue::Int(hosts));
                }
            }
        }
        // Two ports on the same host port: point at the one given in the file.
        let ports: Vec<(String, u16)> = out
            .iter()
            .filter_map(|(k, v)| v.as_port().map(|p| (k.clone(), p)))
            .collect();
        if distinct_ports(out.iter()).is_err() {
            let mut seen: BTreeMap<u16, &String> = BTreeMap::new();
            for (name, port) in &ports {
                if let Some(other) = seen.insert(*port, name) {
                    let (here, there) = if paths.contains_key(name) {
                        (name, other)
                    } else {
                        (other, name)
                    };
                    let p = paths.get(here).cloned().unwrap_or_else(|| vp.clone());
                    self.error(
                        &p,
                        Problem::new(format!("port {port} is also used by `{there}`")).hint(
                            "every pod uses the host network: give each port value its own port",
                        ),
                    );
                    ok = false;
                }
            }
        }
        // Ports the templates derive from a port value (the store's peer port, storePort + 1):
        // refused here, at the value's line, not as a render error naming a template.
        for d in decl.values.iter().filter(|d| !d.also_holds.is_empty()) {
            let Some(port) = out.get(&d.name).and_then(AppValue::as_port) else {
                continue;
            };
            let Some(pr) = super::app::held_port_problem(d, port, &ports) else {
                continue;
            };
            // Point at the value the file gives: this one, or else the one it collides with.
            let p = paths
                .get(&d.name)
                .or_else(|| {
                    ports
                        .iter()
                        .find(|(n, _)| n != &d.name && pr.message.ends_with(&format!("`{n}`")))
                        .and_then(|(n, _)| paths.get(n))
                })
                .cloned()
                .unwrap_or_else(|| vp.clone());
            self.error(&p, pr);
            ok = false;
        }
        let at = paths
            .iter()
            .map(|(n, p)| (n.clone(), self.loc(p)))
            .collect();
        self.app_at = at;
        ok.then_some(AppValues(out))
    }
}

fn pr_hint(d: &super::app::ValueDecl) -> String {
    let mut h = format!("{}: {}", d.name, d.description);
    if let Some(def) = d.default_text() {
        h.push_str(&format!(" (default {def})"));
    }
    h
}

/// Resolves `auto` roles: a single host is a server; otherwise `auto` hosts become servers
/// in file order until there are three servers, then agents.
pub fn resolve_roles(hosts: &[raw::Host]) -> Vec<Role> {
    if hosts.len() == 1 {
        return vec![match hosts[0].role {
            raw::Role::Agent => Role::Agent,
            _ => Role::Server,
        }];
    }
    let mut servers = hosts.iter().filter(|h| h.role == raw::Role::Server).count();
    hosts
        .iter()
        .map(|h| match h.role {
            raw::Role::Server => Role::Server,
            raw::Role::Agent => Role::Agent,
            raw::Role::Auto if servers < 3 => {
                servers += 1;
                Role::Server
            }
            raw::Role::Auto => Role::Agent,
        })
        .collect()
}

/// A private range of the same size as `net` that overlaps nothing in `avoid`.
pub fn suggest_free(net: &IpNet, avoid: &[IpNet]) -> Option<IpNet> {
    let IpNet::V4(v4) = net else { return None };
    let prefix = v4.prefix_len().max(8);
    (42u8..=250).find_map(|second| {
        let cand: IpNet = format!("10.{second}.0.0/{prefix}")
            .parse::<IpNet>()
            .ok()?
            .trunc();
        (!avoid
            .iter()
            .any(|a| a.contains(&cand.network()) || cand.contains(&a.network())))
        .then_some(cand)
    })
}
