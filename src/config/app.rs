//! The bundled application's value declaration (`templates/app/values.yaml`, embedded at
//! build time) and the checks of `spec.app.values` against it.
//!
//! Nothing in `src/` names an application value: replacing the application means replacing
//! `templates/app/`. The declaration is itself checked (names, types, defaults against the
//! same rules as answers), by a unit test at build time and again when it is loaded.

use super::check::{self, Problem};
use super::interpolate::{self, Env, InterpolateError};
use super::yaml;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The declaration as shipped in this binary.
pub const EMBEDDED_DECLARATION: &str = include_str!("../../templates/app/values.yaml");

/// The type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Int,
    Bool,
    /// A host port (1-65535, outside the NodePort range and the ports k3s uses).
    Port,
    /// A DNS name.
    Hostname,
    Email,
    /// A string never echoed or saved in clear text.
    Secret,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Int => "int",
            ValueType::Bool => "bool",
            ValueType::Port => "port",
            ValueType::Hostname => "hostname",
            ValueType::Email => "email",
            ValueType::Secret => "secret",
        }
    }
}

/// One declared value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueDecl {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ValueType,
    pub description: String,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// An int that may not exceed the number of hosts (a replica count: on the host
    /// network each replica holds its ports on a node of its own). A given value above it
    /// is refused; a default above it is lowered to it.
    #[serde(default, rename = "atMostHosts")]
    pub at_most_hosts: bool,
    #[serde(default)]
    secret: bool,
    /// For a port: the further host ports the templates derive from it (the store's peer
    /// port `storePort + 1`), so validation can refuse a value whose derived port is not a
    /// port, is taken by k3s, or is another value's port, at the answer file's line
    /// rather than as a render error naming a template.
    #[serde(default, rename = "alsoHolds")]
    pub also_holds: Vec<HeldPort>,
}

/// A host port a template derives from a port value: `value + offset`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldPort {
    /// Added to the value (`1`: the next port).
    pub offset: u16,
    /// What holds it, for messages ("the store members' peer port").
    pub what: String,
}

impl HeldPort {
    /// The derived port of `port`, or what is wrong with it.
    pub fn of(&self, port: u16) -> Result<u16, u32> {
        let p = u32::from(port) + u32::from(self.offset);
        u16::try_from(p).map_err(|_| p)
    }
}

/// A port value's derived ports (`alsoHolds`) checked against the ports k3s holds and the
/// other port values (`ports`: every port value by name). `None` when they are all free.
pub fn held_port_problem(d: &ValueDecl, port: u16, ports: &[(String, u16)]) -> Option<Problem> {
    for h in &d.also_holds {
        let name = &d.name;
        let derived = match h.of(port) {
            Ok(p) => p,
            Err(p) => {
                let max = 65535 - u32::from(h.offset);
                return Some(
                    Problem::new(format!(
                        "{name} {port} leaves no room for {} ({name} + {} = {p}, above 65535)",
                        h.what, h.offset
                    ))
                    .hint(format!(
                        "choose a {name} of at most {max}: {} is {name} + {}",
                        h.what, h.offset
                    )),
                );
            }
        };
        if let Some(what) = check::reserved_port(derived) {
            return Some(
                Problem::new(format!(
                    "{name} {port} puts {} on port {derived} ({name} + {}), which is taken by {what}",
                    h.what, h.offset
                ))
                .hint(format!(
                    "choose a {name} whose port + {} is free too: every pod uses the host network",
                    h.offset
                )),
            );
        }
        if let Some((other, _)) = ports.iter().find(|(n, p)| *p == derived && n != name) {
            return Some(
                Problem::new(format!(
                    "{name} {port} puts {} on port {derived} ({name} + {}), which is also `{other}`",
                    h.what, h.offset
                ))
                .hint(format!(
                    "give {name} and {other} ports further apart: {} is {name} + {}",
                    h.what, h.offset
                )),
            );
        }
    }
    None
}

impl ValueDecl {
    /// Whether the value is a secret (type `secret`, or flagged).
    pub fn is_secret(&self) -> bool {
        self.secret || self.ty == ValueType::Secret
    }

    /// The default as text, for prompts and docs.
    pub fn default_text(&self) -> Option<String> {
        self.default.as_ref().map(json_text)
    }

    /// The environment variable the wizard writes for a secret value: `APP_` and the name in
    /// upper snake case (`adminPassword` -> `APP_ADMIN_PASSWORD`).
    pub fn env_var(&self) -> String {
        let mut out = String::from("APP_");
        for c in self.name.chars() {
            if c.is_ascii_uppercase() {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    /// Checks one given value (interpolating `${VAR}` in text) and returns it typed.
    pub fn check(&self, raw: &serde_json::Value, env: &dyn Env) -> Result<AppValue, Problem> {
        let text = match raw {
            serde_json::Value::String(s) => {
                interpolate::interpolate(s, env).map_err(|e| match e {
                    InterpolateError::Unset(vars) => unset_problem(&vars),
                    InterpolateError::Malformed(m) => Problem::new(m),
                })?
            }
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => {
                return Err(Problem::new("no value given").hint(format!(
                    "give a {} or remove the key to take the default",
                    self.ty.as_str()
                )));
            }
            _ => {
                return Err(Problem::new(format!(
                    "expected a single {}, found a list or a mapping",
                    self.ty.as_str()
                )));
            }
        };
        self.check_text(&text)
    }

    /// Checks a value typed as text (the wizard's answers, and interpolated answer-file values).
    pub fn check_text(&self, text: &str) -> Result<AppValue, Problem> {
        let t = text.trim();
        let value = match self.ty {
            ValueType::String => {
                if let Some(choices) = &self.choices
                    && !choices.iter().any(|c| c == t)
                {
                    return Err(Problem::new(format!(
                        "`{t}` is not one of {}",
                        choices.join(", ")
                    )));
                }
                if self.is_secret() {
                    AppValue::Secret(Secret::new(text))
                } else {
                    AppValue::String(text.to_owned())
                }
            }
            ValueType::Secret => AppValue::Secret(Secret::new(text)),
            ValueType::Bool => match t {
                "true" => AppValue::Bool(true),
                "false" => AppValue::Bool(false),
                _ => return Err(Problem::new(format!("expected true or false, found `{t}`"))),
            },
            ValueType::Int => {
                let n: i64 = t
                    .parse()
                    .map_err(|_| Problem::new(format!("expected a whole number, found `{t}`")))?;
                self.check_bounds(n)?;
                AppValue::Int(n)
            }
            ValueType::Port => {
                let n: i64 = t
                    .parse()
                    .map_err(|_| Problem::new(format!("expected a port number, found `{t}`")))?;
                AppValue::Port(check::app_port(n)?)
            }
            ValueType::Hostname => AppValue::Hostname(check::dns_name(t)?.to_ascii_lowercase()),
            ValueType::Email => AppValue::Email(check::email(t)?),
        };
        Ok(value)
    }

    fn check_bounds(&self, n: i64) -> Result<(), Problem> {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) if n < lo || n > hi => {
                Err(Problem::new(format!("{n} is outside {lo}..={hi}")))
            }
            (Some(lo), None) if n < lo => Err(Problem::new(format!("{n} is below {lo}"))),
            (None, Some(hi)) if n > hi => Err(Problem::new(format!("{n} is above {hi}"))),
            _ => Ok(()),
        }
    }
}

fn unset_problem(vars: &[String]) -> Problem {
    Problem::new(format!(
        "environment variable{} {} not set",
        if vars.len() == 1 { "" } else { "s" },
        vars.iter()
            .map(|v| format!("${{{v}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .hint(format!(
        "export {}=... before running the installer (or write the value itself)",
        vars.first().map(String::as_str).unwrap_or("VAR")
    ))
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A checked application value.
#[derive(Clone, PartialEq, Eq)]
pub enum AppValue {
    String(String),
    Int(i64),
    Bool(bool),
    Port(u16),
    Hostname(String),
    Email(String),
    Secret(Secret),
}

impl fmt::Debug for AppValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for AppValue {
    /// How a value is shown (secrets as `***`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppValue::String(s) | AppValue::Hostname(s) | AppValue::Email(s) => f.write_str(s),
            AppValue::Int(n) => write!(f, "{n}"),
            AppValue::Bool(b) => write!(f, "{b}"),
            AppValue::Port(p) => write!(f, "{p}"),
            AppValue::Secret(s) => write!(f, "{s}"),
        }
    }
}

impl AppValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AppValue::String(s) | AppValue::Hostname(s) | AppValue::Email(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            AppValue::Int(n) => Some(*n),
            AppValue::Port(p) => Some(i64::from(*p)),
            _ => None,
        }
    }

    pub fn as_port(&self) -> Option<u16> {
        match self {
            AppValue::Port(p) => Some(*p),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AppValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_secret(&self) -> Option<&Secret> {
        match self {
            AppValue::Secret(s) => Some(s),
            _ => None,
        }
    }
}

/// The application's declared values, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    /// The application's name.
    pub application: String,
    pub values: Vec<ValueDecl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclarationFile {
    application: String,
    values: Vec<ValueDecl>,
}

/// Why a declaration is unusable (a bug in the bundle, not in the user's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("templates/app/values.yaml (the application's value declaration) is invalid:\n{}", .0.join("\n"))]
pub struct DeclarationError(pub Vec<String>);

impl Declaration {
    /// The declaration embedded in this binary.
    pub fn embedded() -> Result<Declaration, DeclarationError> {
        Declaration::parse(EMBEDDED_DECLARATION)
    }

    /// Parses and checks a declaration.
    pub fn parse(text: &str) -> Result<Declaration, DeclarationError> {
        let tree = yaml::parse(text)
            .map_err(|e| DeclarationError(vec![format!("{}: {}", e.loc, e.message)]))?;
        let json = super::core_json::core_json(&tree);
        let file: DeclarationFile =
            serde_json::from_value(json).map_err(|e| DeclarationError(vec![e.to_string()]))?;
        let decl = Declaration {
            application: file.application,
            values: file.values,
        };
        decl.check()?;
        Ok(decl)
    }

    fn check(&self) -> Result<(), DeclarationError> {
        let mut problems = Vec::new();
        let mut seen = HashMap::new();
        let no_env = interpolate::MapEnv::default();
        for (i, v) in self.values.iter().enumerate() {
            let ok_name = v
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase())
                && v.name.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok_name {
                problems.push(format!("values[{i}]: `{}` is not a camelCase name", v.name));
            }
            if let Some(j) = seen.insert(v.name.clone(), i) {
                problems.push(format!("values[{i}]: `{}` is also values[{j}]", v.name));
            }
            if v.description.trim().is_empty() {
                problems.push(format!("values[{i}] {}: no description", v.name));
            }
            if (v.min.is_some() || v.max.is_some()) && v.ty != ValueType::Int {
                problems.push(format!(
                    "values[{i}] {}: min/max apply to type int only",
                    v.name
                ));
            }
            if let (Some(lo), Some(hi)) = (v.min, v.max)
                && lo > hi
            {
                problems.push(format!("values[{i}] {}: min {lo} > max {hi}", v.name));
            }
            if v.choices.is_some() && v.ty != ValueType::String {
                problems.push(format!(
                    "values[{i}] {}: choices apply to type string only",
                    v.name
                ));
            }
            if let Some(d) = &v.default {
                if v.is_secret() {
                    problems.push(format!(
                        "values[{i}] {}: a secret must not have a default (it would be shipped in clear text)",
                        v.name
                    ));
                } else if let Err(p) = v.check(d, &no_env) {
                    problems.push(format!("values[{i}] {}: default: {p}", v.name));
                }
            }
            if v.required && v.default.is_some() {
                problems.push(format!(
                    "values[{i}] {}: `required` with a default is contradictory",
                    v.name
                ));
            }
        }
        if let Err(p) = distinct_ports(self.defaults_as_values().iter()) {
            problems.push(format!("defaults: {p}"));
        }
        let defaults: Vec<(String, u16)> = self
            .defaults_as_values()
            .iter()
            .filter_map(|(k, v)| v.as_port().map(|p| (k.clone(), p)))
            .collect();
        for (i, v) in self.values.iter().enumerate() {
            if !v.also_holds.is_empty() && v.ty != ValueType::Port {
                problems.push(format!(
                    "values[{i}] {}: `alsoHolds` is for port values",
                    v.name
                ));
            }
            if let Some((_, p)) = defaults.iter().find(|(n, _)| *n == v.name)
                && let Some(pr) = held_port_problem(v, *p, &defaults)
            {
                problems.push(format!("values[{i}] {}: default: {pr}", v.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DeclarationError(problems))
        }
    }

    fn defaults_as_values(&self) -> BTreeMap<String, AppValue> {
        let no_env = interpolate::MapEnv::default();
        self.values
            .iter()
            .filter_map(|v| {
                let d = v.default.as_ref()?;
                Some((v.name.clone(), v.check(d, &no_env).ok()?))
            })
            .collect()
    }

    /// The declared values as a Markdown table (for docs/answer-file.md).
    pub fn markdown_table(&self) -> String {
        let mut out = String::from("| value | type | default | description |\n|---|---|---|---|\n");
        for v in &self.values {
            let mut ty = v.ty.as_str().to_owned();
            if let (Some(lo), Some(hi)) = (v.min, v.max) {
                ty.push_str(&format!(" ({lo}-{hi})"));
            }
            if v.is_secret() && v.ty != ValueType::Secret {
                ty.push_str(", secret");
            }
            let default = match (&v.default_text(), v.required) {
                (Some(d), _) => format!("`{d}`"),
                (None, true) => "required".into(),
                (None, false) => "unset".into(),
            };
            out.push_str(&format!(
                "| `{}` | {ty} | {default} | {} |\n",
                v.name,
                v.description.replace('|', "\\|")
            ));
        }
        out
    }

    pub fn get(&self, name: &str) -> Option<&ValueDecl> {
        self.values.iter().find(|v| v.name == name)
    }

    /// The JSON Schema of `spec.app.values` built from the declaration.
    pub fn json_schema(&self) -> serde_json::Value {
        let mut props = serde_json::Map::new();
        for v in &self.values {
            let mut p = serde_json::Map::new();
            p.insert("description".into(), v.description.clone().into());
            let ty = match v.ty {
                ValueType::Int | ValueType::Port => "integer",
                ValueType::Bool => "boolean",
                _ => "string",
            };
            p.insert("type".into(), ty.into());
            match v.ty {
                ValueType::Port => {
                    p.insert("minimum".into(), 1.into());
                    p.insert("maximum".into(), 65535.into());
                }
                ValueType::Hostname => {
                    p.insert("format".into(), "hostname".into());
                }
                ValueType::Email => {
                    p.insert("format".into(), "email".into());
                }
                _ => {}
            }
            if let Some(lo) = v.min {
                p.insert("minimum".into(), lo.into());
            }
            if let Some(hi) = v.max {
                p.insert("maximum".into(), hi.into());
            }
            if let Some(c) = &v.choices {
                p.insert("enum".into(), c.clone().into());
            }
            if let Some(d) = &v.default {
                p.insert("default".into(), d.clone());
            }
            if v.is_secret() {
                p.insert("writeOnly".into(), true.into());
            }
            // A number or a boolean may also be a `${VAR}` reference (checked once
            // interpolated), as the installer accepts: `gatewayPort: ${GATEWAY_PORT}`.
            let p: serde_json::Value = if ty == "string" {
                p.into()
            } else {
                let description = p.remove("description").unwrap_or_default();
                let default = p.remove("default");
                let mut wrapped = serde_json::json!({
                    "description": description,
                    "anyOf": [
                        p,
                        {
                            "type": "string",
                            "pattern": text_pattern(v),
                            "description": "the value as text, or a ${VAR} reference to an environment variable holding it"
                        }
                    ]
                });
                if let Some(d) = default {
                    wrapped["default"] = d;
                }
                wrapped
            };
            props.insert(v.name.clone(), p);
        }
        let required: Vec<serde_json::Value> = self
            .values
            .iter()
            .filter(|v| v.required)
            .map(|v| v.name.clone().into())
            .collect();
        let mut schema = serde_json::json!({
            "description": format!(
                "Values declared by the bundled application ({}). Values left out take their defaults. Any string may be a ${{VAR}} reference.",
                self.application
            ),
            "type": "object",
            "properties": props,
            "additionalProperties": false,
        });
        if !required.is_empty() {
            schema["required"] = required.into();
        }
        schema
    }
}

/// The pattern of a number or boolean value written as text: the same bounds as the value
/// (a number in quotes is read as the number, so `"70000"` is no more a port than 70000), or
/// a `${VAR}` reference, checked once interpolated.
fn text_pattern(v: &ValueDecl) -> String {
    const VAR: &str = r"\$\{[A-Za-z_][A-Za-z0-9_]*\}";
    let bounds = match v.ty {
        ValueType::Bool => return format!(r"^\s*(true|false)\s*$|{VAR}"),
        ValueType::Port => Some((1, 65535)),
        _ => match (v.min, v.max) {
            (Some(lo), Some(hi)) => u64::try_from(lo).ok().zip(u64::try_from(hi).ok()),
            _ => None,
        },
    };
    match bounds {
        Some((lo, hi)) if lo <= hi => {
            format!(r"^\s*\+?0*(?:{})\s*$|{VAR}", range_regex(lo, hi))
        }
        _ => format!(r"^\s*[+-]?[0-9]+\s*$|{VAR}"),
    }
}

/// A regular expression (without anchors or leading zeros) matching the decimal numbers
/// from `lo` to `hi`.
fn range_regex(lo: u64, hi: u64) -> String {
    let mut alts = Vec::new();
    let (lo_len, hi_len) = (lo.to_string().len(), hi.to_string().len());
    for len in lo_len..=hi_len {
        let floor = if len == 1 {
            0
        } else {
            10u64.pow(len as u32 - 1)
        };
        let ceil = 10u64.pow(len as u32) - 1;
        let (a, b) = (lo.max(floor), hi.min(ceil));
        if a <= b {
            alts.push(same_length(&a.to_string(), &b.to_string()));
        }
    }
    alts.join("|")
}

/// Numbers of one length from `a` to `b` (`a <= b`).
fn same_length(a: &str, b: &str) -> String {
    let (Some(a0), Some(b0)) = (a.chars().next(), b.chars().next()) else {
        return String::new();
    };
    let (ar, br) = (&a[1..], &b[1..]);
    let n = ar.len();
    if n == 0 {
        return if a0 == b0 {
            a0.to_string()
        } else {
            format!("[{a0}-{b0}]")
        };
    }
    if ar.bytes().all(|c| c == b'0') && br.bytes().all(|c| c == b'9') {
        return if a0 == b0 {
            format!("{a0}[0-9]{{{n}}}")
        } else {
            format!("[{a0}-{b0}][0-9]{{{n}}}")
        };
    }
    if a0 == b0 {
        return format!("{a0}(?:{})", same_length(ar, br));
    }
    let nines = "9".repeat(n);
    let zeros = "0".repeat(n);
    let mut alts = vec![format!("{a0}(?:{})", same_length(ar, &nines))];
    let (da, db) = (a0 as u8 - b'0', b0 as u8 - b'0');
    if db > da + 1 {
        alts.push(format!("[{}-{}][0-9]{{{n}}}", da + 1, db - 1));
    }
    alts.push(format!("{b0}(?:{})", same_length(&zeros, br)));
    alts.join("|")
}

/// Two port values must not name the same port: they all bind on the host network.
pub fn distinct_ports<'a>(
    values: impl Iterator<Item = (&'a String, &'a AppValue)>,
) -> Result<(), Problem> {
    let mut seen: BTreeMap<u16, &String> = BTreeMap::new();
    for (name, v) in values {
        if let AppValue::Port(p) = v
            && let Some(other) = seen.insert(*p, name)
        {
            return Err(Problem::new(format!("port {p} is also {other}"))
                .hint("every pod uses the host network: give each port value its own port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_declaration_is_valid() {
        let d = Declaration::embedded().unwrap();
        assert!(d.get("gatewayPort").is_some());
        assert!(d.get("hostname").is_some());
        assert!(d.get("adminPassword").unwrap().is_secret());
        assert_eq!(
            d.get("adminPassword").unwrap().env_var(),
            "APP_ADMIN_PASSWORD"
        );
    }

    #[test]
    fn text_patterns_bound_numbers_like_the_numbers() {
        let re = |lo, hi| regex::Regex::new(&format!("^(?:{})$", range_regex(lo, hi))).unwrap();
        for (lo, hi) in [
            (1u64, 65535u64),
            (1, 5),
            (0, 9),
            (7, 1234),
            (10, 10),
            (99, 101),
        ] {
            let r = re(lo, hi);
            for n in 0..70000u64 {
                assert_eq!(
                    r.is_match(&n.to_string()),
                    (lo..=hi).contains(&n),
                    "{n} in {lo}..={hi}: {r}"
                );
            }
        }
    }

    #[test]
    fn a_declaration_with_a_node_port_default_is_refused() {
        let text = "application: x\nvalues:\n  - {name: p, type: port, description: d, default: 30080}\n  - {name: q, type: port, description: d, default: 8080}\n  - {name: r, type: port, description: d, default: 8080}\n  - {name: s, type: secret, description: d, default: hunter2}\n  - {name: Bad, type: int, description: d}\n";
        let err = Declaration::parse(text).unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("NodePort"), "{all}");
        assert!(all.contains("port 8080 is also"), "{all}");
        assert!(all.contains("secret must not have a default"), "{all}");
        assert!(all.contains("camelCase"), "{all}");
        let unknown =
            "application: x\nvalues:\n  - {name: p, type: port, description: d, colour: red}\n";
        assert!(Declaration::parse(unknown).is_err());
    }

    #[test]
    fn values_are_typed_and_checked() {
        let d = Declaration::embedded().unwrap();
        let env = interpolate::MapEnv {
            vars: [("PW".to_string(), "s3cret-value".to_string())]
                .into_iter()
                .collect(),
            fallback: None,
        };
        let port = d.get("gatewayPort").unwrap();
        assert_eq!(
            port.check(&8443.into(), &env).unwrap(),
            AppValue::Port(8443)
        );
        assert_eq!(
            port.check(&"9443".into(), &env).unwrap(),
            AppValue::Port(9443)
        );
        assert!(port.check(&31000.into(), &env).is_err());
        assert!(port.check(&10250.into(), &env).is_err());
        assert!(port.check(&"x".into(), &env).is_err());
        let reps = d.get("apiReplicas").unwrap();
        assert!(reps.check(&0.into(), &env).is_err());
        assert_eq!(reps.check(&3.into(), &env).unwrap(), AppValue::Int(3));
        let pw = d.get("adminPassword").unwrap();
        let v = pw.check(&"${PW}".into(), &env).unwrap();
        assert_eq!(v.as_secret().map(Secret::expose), Some("s3cret-value"));
        assert_eq!(format!("{v}"), "***");
        let err = pw.check(&"${NOPE}".into(), &env).unwrap_err();
        assert!(err.message.contains("${NOPE}"), "{}", err.message);
    }
}
