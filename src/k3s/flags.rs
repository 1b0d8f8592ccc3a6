//! k3s's own list of config.yaml keys, and the check every config the installer writes
//! must pass before it reaches a node.
//!
//! Why this matters (`pkg/configfilearg/parser.go`, k3s#6565): keys become `--key=value`
//! flags. `k3s server` filters them and only *warns* about an unknown key
//! (`Unknown flag --x found in config.yaml, skipping`): a silent misconfiguration, so for
//! us an unknown server key is an error. `k3s agent` does not filter: any key that is not
//! an agent flag kills it with `flag provided but not defined: -x`. So an agent config may
//! hold only `agent`/`both` keys.
//!
//! The table is embedded from `k3s-flags-v1.36.tsv` and `k3s-flags-v1.36-notes.txt` beside
//! this file (copies of shared/data, with a provenance header).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

const FLAGS_TSV: &str = include_str!("k3s-flags-v1.36.tsv");
const NOTES_TXT: &str = include_str!("k3s-flags-v1.36-notes.txt");

/// The k3s subcommand a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum K3sCommand {
    Server,
    Agent,
}

impl K3sCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            K3sCommand::Server => "server",
            K3sCommand::Agent => "agent",
        }
    }
}

impl fmt::Display for K3sCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which subcommands accept a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Server,
    Agent,
    Both,
}

impl Scope {
    pub fn allows(self, cmd: K3sCommand) -> bool {
        matches!(
            (self, cmd),
            (Scope::Both, _)
                | (Scope::Server, K3sCommand::Server)
                | (Scope::Agent, K3sCommand::Agent)
        )
    }
}

/// The shape of a flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `true`/`false`.
    Bool,
    /// One value (string or number).
    Value,
    /// A list, or one value.
    Slice,
}

/// One k3s flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub scope: Scope,
    pub kind: ValueKind,
    /// Hidden flags work but are not documented by `k3s --help`.
    pub hidden: bool,
    pub aliases: Vec<String>,
}

/// The flag table of the embedded k3s version.
#[derive(Debug)]
pub struct FlagTable {
    flags: Vec<Flag>,
    by_name: HashMap<String, usize>,
}

impl FlagTable {
    /// Parses the TSV and notes formats (lines starting with `#` are comments).
    pub fn parse(tsv: &str, notes: &str) -> Result<FlagTable, String> {
        let mut flags = Vec::new();
        for (i, line) in tsv.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let [name, scope, kind] = cols[..] else {
                return Err(format!(
                    "flags line {}: expected 3 tab-separated columns",
                    i + 1
                ));
            };
            let scope = match scope {
                "server" => Scope::Server,
                "agent" => Scope::Agent,
                "both" => Scope::Both,
                other => return Err(format!("flags line {}: unknown scope {other:?}", i + 1)),
            };
            let kind = match kind {
                "bool" => ValueKind::Bool,
                "takes-value" => ValueKind::Value,
                "slice" => ValueKind::Slice,
                other => return Err(format!("flags line {}: unknown kind {other:?}", i + 1)),
            };
            flags.push(Flag {
                name: name.to_owned(),
                scope,
                kind,
                hidden: false,
                aliases: Vec::new(),
            });
        }
        let mut by_name: HashMap<String, usize> = flags
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        for (i, line) in notes.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((name, note)) = line.split_once('\t') else {
                return Err(format!("notes line {}: expected name<TAB>note", i + 1));
            };
            let Some(&idx) = by_name.get(name) else {
                return Err(format!(
                    "notes line {}: {name} is not in the flag list",
                    i + 1
                ));
            };
            if note == "hidden" {
                flags[idx].hidden = true;
            } else if let Some(list) = note.strip_prefix("aliases=") {
                flags[idx].aliases = list.split(',').map(str::to_owned).collect();
            } else {
                return Err(format!("notes line {}: unknown note {note:?}", i + 1));
            }
        }
        for (idx, f) in flags.iter().enumerate() {
            for a in &f.aliases {
                if by_name.insert(a.clone(), idx).is_some() {
                    return Err(format!("alias {a} of {} is also another flag", f.name));
                }
            }
        }
        Ok(FlagTable { flags, by_name })
    }

    /// Every flag, in k3s's order.
    pub fn flags(&self) -> &[Flag] {
        &self.flags
    }

    /// The flag a config key names (by name or alias; a trailing `+`, k3s's "append"
    /// syntax, is ignored).
    pub fn lookup(&self, key: &str) -> Option<&Flag> {
        let key = key.strip_suffix('+').unwrap_or(key);
        self.by_name.get(key).map(|&i| &self.flags[i])
    }
}

/// The flag table of k3s v1.36, parsed once.
pub fn table() -> &'static FlagTable {
    static TABLE: OnceLock<FlagTable> = OnceLock::new();
    TABLE.get_or_init(|| match FlagTable::parse(FLAGS_TSV, NOTES_TXT) {
        Ok(t) => t,
        // The files are compiled in and parsed by a unit test; this cannot happen in a
        // tested build, and an empty table would reject every config, loudly.
        Err(_) => FlagTable {
            flags: Vec::new(),
            by_name: HashMap::new(),
        },
    })
}

/// One reason a config would not work as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for FlagProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Checks a parsed config (top-level key -> value) against the table for `cmd`.
pub fn check_keys(
    table: &FlagTable,
    cmd: K3sCommand,
    config: &BTreeMap<String, serde_json::Value>,
) -> Vec<FlagProblem> {
    let mut problems = Vec::new();
    for (key, value) in config {
        let problem = |message: String| FlagProblem {
            key: key.clone(),
            message,
        };
        let Some(flag) = table.lookup(key) else {
            problems.push(problem(match cmd {
                K3sCommand::Server => "not a k3s v1.36 flag: `k3s server` would only warn \
                    `Unknown flag` and ignore it"
                    .into(),
                K3sCommand::Agent => {
                    format!("not a k3s v1.36 flag: `k3s agent` would exit with `flag provided but not defined: -{key}`")
                }
            }));
            continue;
        };
        if !flag.scope.allows(cmd) {
            problems.push(problem(match cmd {
                K3sCommand::Agent => format!(
                    "a server-only flag: `k3s agent` would exit with `flag provided but not defined: -{}`",
                    flag.name
                ),
                K3sCommand::Server => format!(
                    "an agent-only flag: `k3s server` would ignore it (`Unknown flag --{}`)",
                    flag.name
                ),
            }));
            continue;
        }
        let scalar = |v: &serde_json::Value| {
            matches!(
                v,
                serde_json::Value::String(_)
                    | serde_json::Value::Number(_)
                    | serde_json::Value::Bool(_)
            )
        };
        let ok = match flag.kind {
            ValueKind::Bool => value.is_boolean(),
            ValueKind::Value => scalar(value) && !value.is_boolean(),
            ValueKind::Slice => match value {
                serde_json::Value::Array(items) => items.iter().all(scalar),
                v => scalar(v),
            },
        };
        if !ok {
            let want = match flag.kind {
                ValueKind::Bool => "true or false",
                ValueKind::Value => "a single string or number",
                ValueKind::Slice => "a list of strings (or one string)",
            };
            problems.push(problem(format!("expects {want}, got {value}")));
        }
    }
    problems
}

/// Parses a rendered config.yaml and checks it against the k3s v1.36 table for `cmd`.
pub fn validate_config_yaml(cmd: K3sCommand, yaml: &str) -> Result<(), Vec<FlagProblem>> {
    let parsed: Result<BTreeMap<String, serde_json::Value>, _> = serde_saphyr::from_str(yaml);
    let config = parsed.map_err(|e| {
        vec![FlagProblem {
            key: "(document)".into(),
            message: format!("not a YAML mapping of keys to values: {e}"),
        }]
    })?;
    let problems = check_keys(table(), cmd, &config);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_embedded_table_has_k3s_1_36s_125_flags() {
        let t = FlagTable::parse(FLAGS_TSV, NOTES_TXT).unwrap();
        assert_eq!(t.flags().len(), 125);
        let count = |s| t.flags().iter().filter(|f| f.scope == s).count();
        assert_eq!(
            (
                count(Scope::Server),
                count(Scope::Both),
                count(Scope::Agent)
            ),
            (79, 45, 1)
        );
        assert_eq!(table().flags().len(), 125);
    }

    #[test]
    fn aliases_hidden_flags_and_append_keys_resolve() {
        let t = table();
        assert_eq!(t.lookup("i").unwrap().name, "node-ip");
        assert_eq!(t.lookup("s").unwrap().name, "server");
        assert!(t.lookup("disable-etcd").unwrap().hidden);
        assert_eq!(t.lookup("node-label+").unwrap().name, "node-label");
        assert!(t.lookup("no-such-flag").is_none());
    }

    #[test]
    fn a_server_only_key_in_an_agent_config_is_caught() {
        let yaml = "server: https://10.0.0.11:6443\ntoken-file: /etc/rancher/k3s/agent-token\ndisable: [traefik]\n";
        let problems = validate_config_yaml(K3sCommand::Agent, yaml).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "disable");
        assert!(
            problems[0]
                .message
                .contains("flag provided but not defined: -disable"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn every_server_only_flag_is_refused_for_agents() {
        let t = table();
        for f in t.flags().iter().filter(|f| f.scope == Scope::Server) {
            let config = BTreeMap::from([(f.name.clone(), serde_json::json!(true))]);
            let problems = check_keys(t, K3sCommand::Agent, &config);
            assert_eq!(problems.len(), 1, "{} passed for an agent", f.name);
        }
    }

    #[test]
    fn an_unknown_server_key_is_an_error_not_a_warning() {
        let problems =
            validate_config_yaml(K3sCommand::Server, "flannel-backed: none\n").unwrap_err();
        assert_eq!(problems[0].key, "flannel-backed");
        assert!(
            problems[0].message.contains("Unknown flag"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn the_agent_only_flag_is_refused_for_servers() {
        let problems =
            validate_config_yaml(K3sCommand::Server, "disable-apiserver-lb: true\n").unwrap_err();
        assert!(
            problems[0].message.contains("agent-only"),
            "{}",
            problems[0]
        );
        assert!(validate_config_yaml(K3sCommand::Agent, "disable-apiserver-lb: true\n").is_ok());
    }

    #[test]
    fn value_shapes_are_checked() {
        let yaml = "cluster-init: \"yes\"\nnode-name: [a, b]\ntls-san: [10.0.0.1, srv1]\nkubelet-arg: fail-cgroupv1=false\netcd-snapshot-retention: 10\n";
        let problems = validate_config_yaml(K3sCommand::Server, yaml).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["cluster-init", "node-name"], "{problems:?}");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_refused() {
        assert!(validate_config_yaml(K3sCommand::Server, "- a\n- b\n").is_err());
    }
}
