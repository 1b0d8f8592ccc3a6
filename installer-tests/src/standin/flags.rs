//! Command-line flags and `config.yaml`, read the way k3s reads them.
//!
//! Modelled on k3s (release-1.36):
//! - `pkg/configfilearg/parser.go` `readConfigFile`: `config.yaml` is read first, then every
//!   `config.yaml.d/*.yaml|*.yml` drop-in in name order; each key becomes `--key=value` (a list
//!   becomes one `--key=item` per item); a `key+:` appends to the value so far; the config flags are
//!   inserted right after the subcommand, so real command-line flags come later and win.
//! - `pkg/configfilearg/parser.go` `stripInvalidFlags` with `defaultparser.go` `ValidFlags`: only
//!   `server` and `etcd-snapshot` filter config keys; for them an unknown key is logged as
//!   `Unknown flag --x found in config.yaml, skipping` and dropped.
//! - Every other command (notably `agent`) parses the inserted flags strictly (urfave/cli v2 on
//!   Go's `flag` package), so an unknown or server-only key is fatal:
//!   `Incorrect Usage: flag provided but not defined: -disable` (k3s issue #6565).
//! - Environment variables (`K3S_TOKEN`, `K3S_URL`, ...) fill flags that were not given
//!   (`pkg/cli/cmds/server.go`, `agent.go`, `EnvVars`).
//!
//! The flag table is `data/k3s-flags-v1.36.tsv` (see its provenance note), embedded at build time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::paths::Root;

/// The flag table, copied from the shared k3s reference data.
const FLAGS_TSV: &str = include_str!("../../data/k3s-flags-v1.36.tsv");

/// Which commands a flag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Server,
    Agent,
    Both,
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Value,
    Bool,
    Slice,
}

/// One flag.
#[derive(Debug, Clone)]
pub struct FlagSpec {
    pub name: String,
    pub scope: Scope,
    pub kind: Kind,
    pub aliases: Vec<&'static str>,
    pub env: Option<&'static str>,
}

/// Aliases, from `k3s-flags-v1.36-notes.txt` (`pkg/cli/cmds/*.go` `Aliases`).
fn aliases_of(name: &str) -> Vec<&'static str> {
    match name {
        "config" => vec!["c"],
        "log" => vec!["l"],
        "data-dir" => vec!["d"],
        "write-kubeconfig" => vec!["o"],
        "token" => vec!["t"],
        "server" => vec!["s"],
        "node-ip" => vec!["i"],
        _ => vec![],
    }
}

/// Environment variables, from `pkg/cli/cmds/server.go` and `agent.go` `EnvVars`.
fn env_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "config" => "K3S_CONFIG_FILE",
        "debug" => "K3S_DEBUG",
        "data-dir" => "K3S_DATA_DIR",
        "token" => "K3S_TOKEN",
        "token-file" => "K3S_TOKEN_FILE",
        "agent-token" => "K3S_AGENT_TOKEN",
        "agent-token-file" => "K3S_AGENT_TOKEN_FILE",
        "server" => "K3S_URL",
        "cluster-init" => "K3S_CLUSTER_INIT",
        "cluster-reset" => "K3S_CLUSTER_RESET",
        "write-kubeconfig" => "K3S_KUBECONFIG_OUTPUT",
        "write-kubeconfig-mode" => "K3S_KUBECONFIG_MODE",
        "write-kubeconfig-group" => "K3S_KUBECONFIG_GROUP",
        "node-name" => "K3S_NODE_NAME",
        "resolv-conf" => "K3S_RESOLV_CONF",
        "selinux" => "K3S_SELINUX",
        "lb-server-port" => "K3S_LB_SERVER_PORT",
        "supervisor-port" => "K3S_SUPERVISOR_PORT",
        "apiserver-port" => "K3S_APISERVER_PORT",
        "apiserver-bind-address" => "K3S_APISERVER_BIND_ADDRESS",
        "system-default-registry" => "K3S_SYSTEM_DEFAULT_REGISTRY",
        "datastore-endpoint" => "K3S_DATASTORE_ENDPOINT",
        "datastore-cafile" => "K3S_DATASTORE_CAFILE",
        "datastore-certfile" => "K3S_DATASTORE_CERTFILE",
        "datastore-keyfile" => "K3S_DATASTORE_KEYFILE",
        "vpn-auth" => "K3S_VPN_AUTH",
        "vpn-auth-file" => "K3S_VPN_AUTH_FILE",
        _ => return None,
    })
}

/// The parsed flag table.
pub fn table() -> &'static [FlagSpec] {
    static TABLE: OnceLock<Vec<FlagSpec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        FLAGS_TSV
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let mut cols = l.split('\t');
                let name = cols.next()?.trim().to_string();
                let scope = match cols.next()?.trim() {
                    "server" => Scope::Server,
                    "agent" => Scope::Agent,
                    _ => Scope::Both,
                };
                let kind = match cols.next()?.trim() {
                    "bool" => Kind::Bool,
                    "slice" => Kind::Slice,
                    _ => Kind::Value,
                };
                Some(FlagSpec {
                    aliases: aliases_of(&name),
                    env: env_of(&name),
                    name,
                    scope,
                    kind,
                })
            })
            .collect()
    })
}

/// `pkg/cli/cmds/etcd_snapshot.go` `EtcdSnapshotFlags` (not in the TSV, which lists server and
/// agent flags only).
fn etcd_snapshot_table() -> &'static [FlagSpec] {
    static TABLE: OnceLock<Vec<FlagSpec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let v = |name: &str, kind: Kind, aliases: Vec<&'static str>, env: Option<&'static str>| {
            FlagSpec {
                name: name.to_string(),
                scope: Scope::Server,
                kind,
                aliases,
                env,
            }
        };
        let mut t = vec![
            v("debug", Kind::Bool, vec![], Some("K3S_DEBUG")),
            v("config", Kind::Value, vec!["c"], Some("K3S_CONFIG_FILE")),
            v("log", Kind::Value, vec!["l"], None),
            v("alsologtostderr", Kind::Bool, vec![], None),
            v("node-name", Kind::Value, vec![], Some("K3S_NODE_NAME")),
            v("data-dir", Kind::Value, vec!["d"], Some("K3S_DATA_DIR")),
            v("etcd-token", Kind::Value, vec!["t"], None),
            v("etcd-server", Kind::Value, vec!["s"], None),
            v("dir", Kind::Value, vec!["etcd-snapshot-dir"], None),
            v("name", Kind::Value, vec![], None),
            v(
                "snapshot-compress",
                Kind::Bool,
                vec!["etcd-snapshot-compress"],
                None,
            ),
            v(
                "snapshot-retention",
                Kind::Value,
                vec!["etcd-snapshot-retention"],
                None,
            ),
            v("output", Kind::Value, vec!["o"], None),
        ];
        for s3 in [
            "s3",
            "s3-endpoint",
            "s3-endpoint-ca",
            "s3-skip-ssl-verify",
            "s3-access-key",
            "s3-secret-key",
            "s3-session-token",
            "s3-bucket",
            "s3-bucket-lookup-type",
            "s3-region",
            "s3-retention",
            "s3-folder",
            "s3-proxy",
            "s3-config-secret",
            "s3-insecure",
            "s3-timeout",
        ] {
            let alias: &'static str = Box::leak(format!("etcd-{s3}").into_boxed_str());
            let kind = if matches!(s3, "s3" | "s3-skip-ssl-verify" | "s3-insecure") {
                Kind::Bool
            } else {
                Kind::Value
            };
            t.push(v(s3, kind, vec![alias], None));
        }
        t
    })
}

/// The command whose flags are being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Server,
    Agent,
    EtcdSnapshot,
}

impl Command {
    /// The flags this command defines.
    pub fn flags(self) -> Vec<&'static FlagSpec> {
        match self {
            Command::Server => table().iter().filter(|f| f.scope != Scope::Agent).collect(),
            Command::Agent => table()
                .iter()
                .filter(|f| f.scope != Scope::Server)
                .collect(),
            Command::EtcdSnapshot => etcd_snapshot_table().iter().collect(),
        }
    }

    fn lookup(self, name: &str) -> Option<&'static FlagSpec> {
        self.flags()
            .into_iter()
            .find(|f| f.name == name || f.aliases.contains(&name))
    }

    /// `defaultparser.go` `ValidFlags`: only these commands drop unknown config keys.
    fn filters_config(self) -> bool {
        matches!(self, Command::Server | Command::EtcdSnapshot)
    }

    fn usage_name(self) -> &'static str {
        match self {
            Command::Server => "server",
            Command::Agent => "agent",
            Command::EtcdSnapshot => "etcd-snapshot",
        }
    }
}

/// An error reading the config file (k3s exits with it, `logrus.Fatal(err)` in `MustParse`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Yaml(String),
}

/// A flag-parsing error, with urfave/cli's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// Go `flag`: `flag provided but not defined: -x`.
    #[error("flag provided but not defined: -{0}")]
    NotDefined(String),
    /// Go `flag`: `flag needs an argument: -x`.
    #[error("flag needs an argument: -{0}")]
    NeedsArgument(String),
    /// Go `flag`: `invalid boolean value "x" for -y: parse error`.
    #[error("invalid boolean value {value:?} for -{name}: parse error")]
    InvalidBool { name: String, value: String },
}

/// A YAML mapping read in document order (k3s uses `yaml.MapSlice`, which keeps the order).
struct Ordered(Vec<(serde_json::Value, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<serde_json::Value, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_none<E>(self) -> Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's `convert.ToString` as wrangler does it for scalar YAML values.
fn to_go_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_yaml_file(path: &Path, text: &str) -> Result<Ordered, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Ordered(Vec::new()));
    }
    // k3s uses gopkg.in/yaml.v2 (YAML 1.1) into a MapSlice: `0644` is octal, and a repeated key
    // is kept in order, so the later value wins.
    let opts = serde_saphyr::options! {
        legacy_octal_numbers: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<Ordered>(text, opts)
        .map_err(|e| ConfigError::Yaml(format!("{}: {e}", path.display())))
}

/// `dotDFiles`: the drop-ins next to `file`, `*.yaml`/`*.yml` (case-insensitive), in name order.
fn drop_in_files(file: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = file.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::Io(format!("open {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// `readConfigFile`: the flags a config file (and its drop-ins) stand for, in key order.
/// Returns `None` when neither the file nor any drop-in exists (k3s then ignores the config).
pub fn read_config_args(file: &Path) -> Result<Option<Vec<String>>, ConfigError> {
    let mut files = drop_in_files(file)?;
    match std::fs::metadata(file) {
        Ok(_) => files.insert(0, file.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if files.is_empty() {
                return Ok(None);
            }
        }
        Err(e) => return Err(ConfigError::Io(format!("stat {}: {e}", file.display()))),
    }
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| ConfigError::Io(format!("open {}: {e}", f.display())))?;
        let data = parse_yaml_file(f, &text)?;
        for (k, v) in data.0 {
            let key = to_go_string(&k);
            let append = key.ends_with('+');
            let key = key.trim_end_matches('+').to_string();
            if !order.contains(&key) {
                order.push(key.clone());
            }
            match values.get_mut(&key) {
                Some(old) if append => {
                    let mut list = to_list(old);
                    list.extend(to_list(&v));
                    *old = serde_json::Value::Array(list);
                }
                _ => {
                    values.insert(key, v);
                }
            }
        }
    }
    let mut out = Vec::new();
    for k in order {
        let Some(v) = values.get(&k) else { continue };
        let prefix = if k.chars().count() == 1 { "-" } else { "--" };
        match v {
            serde_json::Value::Array(items) => {
                for item in items {
                    out.push(format!("{prefix}{k}={}", to_go_string(item)));
                }
            }
            other => out.push(format!("{prefix}{k}={}", to_go_string(other))),
        }
    }
    Ok(Some(out))
}

/// `toSlice` in parser.go.
fn to_list(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::String(s) => vec![serde_json::Value::String(s.clone())],
        other => {
            let s = to_go_string(other).trim().to_string();
            if s.is_empty() {
                vec![]
            } else {
                vec![serde_json::Value::String(s)]
            }
        }
    }
}

/// `stripInvalidFlags`: drop config flags the command does not define, with k3s's warning.
pub fn strip_invalid(cmd: Command, args: Vec<String>, warn: &mut dyn FnMut(String)) -> Vec<String> {
    if !cmd.filters_config() {
        return args;
    }
    let mut out = Vec::new();
    for arg in args {
        let name = arg.trim_start_matches('-');
        let name = name.split('=').next().unwrap_or(name);
        if cmd.lookup(name).is_some() {
            out.push(arg);
        } else {
            let shown = arg.split('=').next().unwrap_or(&arg).to_string();
            warn(format!(
                "Unknown flag {shown} found in config.yaml, skipping\n"
            ));
        }
    }
    out
}

/// Where the config file is: `$K3S_CONFIG_FILE`, else `--config/-c` on the command line, else the
/// default (`findConfigFileFlag`).
pub fn config_file_flag(args: &[String]) -> PathBuf {
    if let Ok(v) = std::env::var("K3S_CONFIG_FILE")
        && !v.is_empty()
    {
        return PathBuf::from(v);
    }
    for (i, a) in args.iter().enumerate() {
        for flag in ["--config", "-c"] {
            if a == flag {
                return args.get(i + 1).map(PathBuf::from).unwrap_or_default();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return PathBuf::from(v);
            }
        }
    }
    PathBuf::from(super::paths::k3s::CONFIG_FILE)
}

/// The values of parsed flags, by canonical flag name.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    values: BTreeMap<String, Vec<String>>,
    /// Names set explicitly (flag, config or environment), as urfave's `IsSet`.
    set: Vec<String>,
    /// Positional arguments after the flags.
    pub args: Vec<String>,
}

impl Flags {
    /// The last value of a value flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// A value flag, or `""`.
    pub fn string(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_string()
    }

    /// A bool flag (false when absent).
    pub fn bool(&self, name: &str) -> bool {
        self.get(name)
            .map(|v| parse_go_bool(v) == Some(true))
            .unwrap_or(false)
    }

    /// A slice flag, each value split on commas (k3s splits these with `util.SplitStringSlice`).
    pub fn slice(&self, name: &str) -> Vec<String> {
        self.values
            .get(name)
            .map(|vs| {
                vs.iter()
                    .flat_map(|v| v.split(','))
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the flag was given (command line, config or environment).
    pub fn is_set(&self, name: &str) -> bool {
        self.set.iter().any(|n| n == name)
    }

    /// Every set flag and its values (for the node-args annotation).
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.values.iter()
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parse flags for `cmd` as Go's `flag` package does (one or two dashes, `=value` or a separate
/// value, bools take no separate value, parsing stops at the first non-flag or `--`).
pub fn parse(cmd: Command, args: &[String]) -> Result<Flags, FlagError> {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            flags.args.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            flags.args.extend(args[i..].iter().cloned());
            break;
        }
        let body = a.strip_prefix("--").unwrap_or_else(|| &a[1..]);
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(spec) = cmd.lookup(name) else {
            return Err(FlagError::NotDefined(name.to_string()));
        };
        let value = match (spec.kind, inline) {
            (Kind::Bool, Some(v)) => match parse_go_bool(&v) {
                Some(b) => b.to_string(),
                None => {
                    return Err(FlagError::InvalidBool {
                        name: name.to_string(),
                        value: v,
                    });
                }
            },
            (Kind::Bool, None) => "true".to_string(),
            (_, Some(v)) => v,
            (_, None) => {
                i += 1;
                match args.get(i) {
                    Some(v) => v.clone(),
                    None => return Err(FlagError::NeedsArgument(name.to_string())),
                }
            }
        };
        let entry = flags.values.entry(spec.name.clone()).or_default();
        if spec.kind == Kind::Slice {
            entry.push(value);
        } else {
            *entry = vec![value];
        }
        if !flags.set.contains(&spec.name) {
            flags.set.push(spec.name.clone());
        }
        i += 1;
    }
    // Environment variables fill flags that were not given.
    for spec in cmd.flags() {
        if flags.is_set(&spec.name) {
            continue;
        }
        if let Some(env) = spec.env
            && let Ok(v) = std::env::var(env)
            && !v.is_empty()
        {
            flags.values.insert(spec.name.clone(), vec![v]);
            flags.set.push(spec.name.clone());
        }
    }
    Ok(flags)
}

/// The usage text urfave/cli prints after `Incorrect Usage:` (abridged to the flag names).
pub fn usage(cmd: Command) -> String {
    let title = match cmd {
        Command::Server => "Run management server",
        Command::Agent => "Run node agent",
        Command::EtcdSnapshot => "Manage etcd snapshots",
    };
    let mut s = format!(
        "NAME:\n   k3s {} - {title}\n\nUSAGE:\n   k3s {} [OPTIONS]\n\nOPTIONS:\n",
        cmd.usage_name(),
        cmd.usage_name()
    );
    for f in cmd.flags() {
        let mut names = vec![format!("--{}", f.name)];
        names.extend(f.aliases.iter().map(|a| format!("-{a}")));
        let names = names.join(", ");
        let value = if f.kind == Kind::Bool { "" } else { " value" };
        s.push_str(&format!("   {names}{value}\n"));
    }
    s
}

/// Everything k3s does before a command runs: find the config file, turn it into flags after the
/// subcommand, drop unknown keys for `server`/`etcd-snapshot`, then parse strictly.
///
/// `cmd_args` are the arguments after the subcommand (for `etcd-snapshot save`, after `save`).
pub fn load(
    root: &Root,
    cmd: Command,
    cmd_args: &[String],
    warn: &mut dyn FnMut(String),
) -> Result<Result<Flags, FlagError>, ConfigError> {
    let config = config_file_flag(cmd_args);
    let mut all = Vec::new();
    if !config.as_os_str().is_empty()
        && let Some(cfg_args) = read_config_args(&root.path(&config))?
    {
        all.extend(strip_invalid(cmd, cfg_args, warn));
    }
    all.extend(cmd_args.iter().cloned());
    Ok(parse(cmd, &all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn table_has_the_documented_counts() {
        let t = table();
        assert_eq!(t.len(), 125);
        assert_eq!(t.iter().filter(|f| f.scope == Scope::Server).count(), 79);
        assert_eq!(t.iter().filter(|f| f.scope == Scope::Both).count(), 45);
        assert_eq!(t.iter().filter(|f| f.scope == Scope::Agent).count(), 1);
    }

    #[test]
    fn config_becomes_flags_with_drop_ins_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            "cluster-init: true\nnode-name: srv1\ntls-san: [10.0.0.11, srv1]\ndisable:\n- coredns\nwrite-kubeconfig-mode: \"0644\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/10-a.yaml"),
            "tls-san+: [srv2]\nnode-name: srv9\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/20-ignored.txt"),
            "node-name: nope\n",
        )
        .unwrap();
        let args = read_config_args(&cfg).unwrap().unwrap();
        assert_eq!(
            args,
            s(&[
                "--cluster-init=true",
                "--node-name=srv9",
                "--tls-san=10.0.0.11",
                "--tls-san=srv1",
                "--tls-san=srv2",
                "--disable=coredns",
                "--write-kubeconfig-mode=0644",
            ])
        );
    }

    #[test]
    fn unquoted_octal_mode_is_read_as_yaml_1_1_does() {
        // yaml.v2 reads 0644 as the octal number 420; k3s then parses "420" as octal.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, "write-kubeconfig-mode: 0644\n").unwrap();
        let args = read_config_args(&cfg).unwrap().unwrap();
        assert_eq!(args, s(&["--write-kubeconfig-mode=420"]));
    }

    #[test]
    fn a_repeated_key_takes_the_later_value() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            "cluster-init: true\nnode-name: a\ncluster-init: false\n",
        )
        .unwrap();
        let args = read_config_args(&cfg).unwrap().unwrap();
        assert_eq!(args, s(&["--cluster-init=false", "--node-name=a"]));
    }

    #[test]
    fn missing_config_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_config_args(&dir.path().join("nope.yaml"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn server_warns_and_skips_unknown_keys() {
        let mut warnings = Vec::new();
        let out = strip_invalid(
            Command::Server,
            s(&[
                "--cluster-init=true",
                "--bogus=1",
                "--disable-apiserver-lb=true",
            ]),
            &mut |w| warnings.push(w),
        );
        assert_eq!(out, s(&["--cluster-init=true"]));
        assert_eq!(
            warnings,
            vec![
                "Unknown flag --bogus found in config.yaml, skipping\n".to_string(),
                "Unknown flag --disable-apiserver-lb found in config.yaml, skipping\n".to_string()
            ]
        );
    }

    #[test]
    fn agent_rejects_server_only_keys_with_gos_message() {
        let mut warnings = Vec::new();
        let args = strip_invalid(
            Command::Agent,
            s(&["--server=https://x:6443", "--disable=coredns"]),
            &mut |w| warnings.push(w),
        );
        assert!(warnings.is_empty());
        let err = parse(Command::Agent, &args).unwrap_err();
        assert_eq!(err.to_string(), "flag provided but not defined: -disable");
    }

    #[test]
    fn go_flag_syntax() {
        let f = parse(
            Command::Server,
            &s(&[
                "-t",
                "abc",
                "--cluster-init",
                "--tls-san=a,b",
                "--tls-san",
                "c",
                "--debug=false",
                "extra",
            ]),
        )
        .unwrap();
        assert_eq!(f.get("token"), Some("abc"));
        assert!(f.bool("cluster-init"));
        assert!(!f.bool("debug"));
        assert_eq!(f.slice("tls-san"), s(&["a", "b", "c"]));
        assert_eq!(f.args, s(&["extra"]));
        assert_eq!(
            parse(Command::Server, &s(&["--cluster-init=yes"]))
                .unwrap_err()
                .to_string(),
            "invalid boolean value \"yes\" for -cluster-init: parse error"
        );
        assert_eq!(
            parse(Command::Server, &s(&["--token"]))
                .unwrap_err()
                .to_string(),
            "flag needs an argument: -token"
        );
    }
}
