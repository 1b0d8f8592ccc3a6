//! The answer file's JSON Schema, and the structural check of a document against it.
//!
//! The schema is generated from the raw types ([`super::answer_file`], via schemars) with
//! `spec.app.values` filled in from the application's declaration, so the published schema
//! (`installer schema`, `docs/answer-file.schema.json`) and the checker cannot drift apart:
//! the checker *is* driven by that schema. It walks the span-carrying YAML tree, reports every
//! unknown field, missing field, wrong type and invalid choice with its line and column (serde
//! would stop at the first), and returns the document as JSON with the broken parts left out
//! so that validation can go on and find the semantic problems in the same run.

use super::answer_file::{API_VERSION, AnswerFile, KIND};
use super::app::Declaration;
use super::core_json::{core_json, parse_int};
use super::diagnostics::{Diagnostic, closest};
use super::yaml::{Node, NodeKind, Path, Seg, Style};
use serde_json::{Map, Value};

/// The answer file's JSON Schema (draft 2020-12).
pub fn json_schema(decl: &Declaration) -> Value {
    let mut s = serde_json::to_value(schemars::schema_for!(AnswerFile)).unwrap_or_default();
    s["$id"] = "https://installer.dev/schemas/answer-file-v1.json".into();
    s["properties"]["apiVersion"]["const"] = API_VERSION.into();
    s["properties"]["kind"]["const"] = KIND.into();
    s["$defs"]["App"]["properties"]["values"] = decl.json_schema();
    // 1, 3, 4 or 5 hosts (two servers cannot keep a quorum when one fails).
    let hosts = &mut s["$defs"]["Spec"]["properties"]["hosts"];
    hosts["minItems"] = 1.into();
    hosts["maxItems"] = 5.into();
    hosts["not"] = serde_json::json!({"minItems": 2, "maxItems": 2});
    fix_ports(&mut s);
    let defs = s.get("$defs").cloned().unwrap_or_default();
    allow_empty_sections(&mut s, &defs);
    s
}

/// An optional section with everything under it commented out (`network:` alone) is the
/// same as leaving it out, as the installer reads it: say so in the schema, which would
/// otherwise refuse the null.
fn allow_empty_sections(v: &mut Value, defs: &Value) {
    let Value::Object(m) = v else {
        if let Value::Array(a) = v {
            a.iter_mut().for_each(|c| allow_empty_sections(c, defs));
        }
        return;
    };
    let required: Vec<String> = m
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if required.contains(name) || !is_object_schema(prop, defs) || nullable(prop) {
                continue;
            }
            let description = prop.as_object_mut().and_then(|p| p.remove("description"));
            let mut wrapped = serde_json::json!({"anyOf": [prop.clone(), {"type": "null"}]});
            if let Some(d) = description {
                wrapped["description"] = d;
            }
            *prop = wrapped;
        }
    }
    for (k, child) in m.iter_mut() {
        if k != "properties" {
            allow_empty_sections(child, defs);
        }
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for child in props.values_mut() {
            allow_empty_sections(child, defs);
        }
    }
}

/// Whether `schema` (through a `$ref`, or any `anyOf` branch) is a mapping.
fn is_object_schema(schema: &Value, defs: &Value) -> bool {
    let mut schema = schema;
    for _ in 0..16 {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            Some(name) => match defs.get(name) {
                Some(d) => schema = d,
                None => return false,
            },
            None => break,
        }
    }
    if type_names(schema).contains(&"object") {
        return true;
    }
    schema
        .get("anyOf")
        .and_then(Value::as_array)
        .is_some_and(|b| b.iter().any(|b| is_object_schema(b, defs)))
}

fn nullable(schema: &Value) -> bool {
    type_names(schema).contains(&"null")
        || schema
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|b| b.iter().any(|b| type_names(b).contains(&"null")))
}

/// schemars bounds a `u16` to 0..=65535; port 0 is not a port.
fn fix_ports(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("format").and_then(Value::as_str) == Some("uint16") {
                m.insert("minimum".into(), 1.into());
            }
            for child in m.values_mut() {
                fix_ports(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(fix_ports),
        _ => {}
    }
}

/// The path whose values the application declaration checks (not the schema walker), so
/// that `${VAR}` works for numbers there and errors come from one place.
fn is_app_values(path: &Path) -> bool {
    path.0
        == [
            Seg::Key("spec".into()),
            Seg::Key("app".into()),
            Seg::Key("values".into()),
        ]
}

/// Walks `tree` against `schema`. Returns the document as JSON (fields with errors left
/// out) and every structural problem.
pub fn check(tree: &Node, schema: &Value) -> (Value, Vec<Diagnostic>) {
    let mut w = Walker {
        root: schema,
        diags: Vec::new(),
    };
    let v = w
        .walk(tree, schema, &Path::root(), None)
        .unwrap_or(Value::Null);
    (v, w.diags)
}

struct Walker<'s> {
    root: &'s Value,
    diags: Vec<Diagnostic>,
}

fn found(node: &Node) -> String {
    match &node.kind {
        NodeKind::Map(_) => "a mapping".into(),
        NodeKind::Seq(_) => "a list".into(),
        NodeKind::Scalar { .. } if node.is_null() => "nothing".into(),
        NodeKind::Scalar { text, .. } => format!("`{}`", super::yaml::shown(text)),
    }
}

fn required_here(schema: &Value, key: &str) -> bool {
    schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(key)))
}

fn type_names(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn describe_type(t: &str, schema: &Value) -> String {
    match t {
        "object" => "a mapping (`key: value` lines)".into(),
        "array" => "a list (`- item` lines)".into(),
        "string" => "text".into(),
        "boolean" => "true or false".into(),
        "integer" => match (
            schema.get("minimum").and_then(Value::as_i64),
            schema.get("maximum").and_then(Value::as_i64),
        ) {
            (Some(lo), Some(hi)) => format!("a whole number from {lo} to {hi}"),
            _ => "a whole number".into(),
        },
        other => other.to_owned(),
    }
}

impl<'s> Walker<'s> {
    fn resolve(&self, mut schema: &'s Value) -> &'s Value {
        for _ in 0..16 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                return schema;
            };
            let Some(name) = r.strip_prefix("#/$defs/") else {
                return schema;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(s) => schema = s,
                None => return schema,
            }
        }
        schema
    }

    fn error(&mut self, node: &Node, path: &Path, message: String, hint: Option<&str>) {
        let mut d = Diagnostic::error(node.loc, path.clone(), message);
        d.hint = hint.map(str::to_owned);
        self.diags.push(d);
    }

    fn walk(
        &mut self,
        node: &Node,
        schema: &'s Value,
        path: &Path,
        hint: Option<&'s str>,
    ) -> Option<Value> {
        let hint = schema.get("description").and_then(Value::as_str).or(hint);
        let schema = self.resolve(schema);
        let hint = hint.or(schema.get("description").and_then(Value::as_str));

        if is_app_values(path) {
            return match &node.kind {
                NodeKind::Map(entries) => Some(Value::Object(
                    entries
                        .iter()
                        .map(|(k, v)| {
                            let val = match &v.kind {
                                NodeKind::Scalar { text, .. } if !v.is_null() => {
                                    Value::String(text.clone())
                                }
                                _ => core_json(v),
                            };
                            (k.text.clone(), val)
                        })
                        .collect(),
                )),
                _ if node.is_null() => Some(Value::Object(Map::new())),
                _ => {
                    self.error(
                        node,
                        path,
                        format!("expected a mapping of values, found {}", found(node)),
                        hint,
                    );
                    None
                }
            };
        }

        if let Some(Value::Array(branches)) = schema.get("anyOf") {
            let is_null_branch = |b: &Value| b.get("type").and_then(Value::as_str) == Some("null");
            if node.is_null() && branches.iter().any(is_null_branch) {
                return Some(Value::Null);
            }
            let rest: Vec<&'s Value> = branches.iter().filter(|b| !is_null_branch(b)).collect();
            if let Some(first) = rest.first() {
                return self.walk(node, first, path, hint);
            }
        }

        if let Some(Value::Array(branches)) = schema.get("oneOf") {
            return self.one_of(node, branches, path, hint);
        }

        let types = type_names(schema);
        let value = if node.is_null() && types.contains(&"null") {
            Some(Value::Null)
        } else if let (NodeKind::Map(entries), true) = (&node.kind, types.contains(&"object")) {
            self.object(node, entries, schema, path, hint)
        } else if let (NodeKind::Seq(items), true) = (&node.kind, types.contains(&"array")) {
            let item_schema = schema.get("items");
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let v = match item_schema {
                    Some(s) => self.walk(item, s, &path.index(i), None),
                    None => Some(core_json(item)),
                };
                match v {
                    Some(v) => out.push(v),
                    None => ok = false,
                }
            }
            // A list with a broken item is kept whole-minus-item only if nothing depends on
            // positions; hosts do (roles), so drop the list and let the item errors speak.
            if ok { Some(Value::Array(out)) } else { None }
        } else if let NodeKind::Scalar { text, style, .. } = &node.kind {
            self.scalar(node, text, *style, &types, schema, path, hint)
        } else {
            None
        };

        let Some(value) = value else {
            if !self.reported_at_or_below(path) {
                let expected: Vec<String> = types
                    .iter()
                    .filter(|t| **t != "null")
                    .map(|t| describe_type(t, schema))
                    .collect();
                // A number or a boolean written in quotes is text.
                let quoted = match &node.kind {
                    NodeKind::Scalar {
                        text,
                        style: Style::Quoted,
                        ..
                    } => {
                        (types.contains(&"integer") && parse_int(text).is_some())
                            || (types.contains(&"boolean")
                                && matches!(text.to_ascii_lowercase().as_str(), "true" | "false"))
                    }
                    _ => false,
                };
                let msg = format!("expected {}, found {}", expected.join(" or "), found(node));
                if quoted {
                    self.error(
                        node,
                        path,
                        format!("{msg} (written in quotes, so it is text)"),
                        Some("remove the quotes"),
                    );
                } else {
                    self.error(node, path, msg, hint);
                }
            }
            return None;
        };
        if let Some(c) = schema.get("const")
            && &value != c
        {
            let want = c
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| c.to_string());
            self.error(
                node,
                path,
                format!("must be `{want}`, found {}", found(node)),
                hint,
            );
            return None;
        }
        Some(value)
    }

    fn reported_at_or_below(&self, path: &Path) -> bool {
        self.diags
            .iter()
            .any(|d| d.path.0.len() >= path.0.len() && d.path.0[..path.0.len()] == path.0[..])
    }

    #[allow(clippy::too_many_arguments)]
    fn scalar(
        &mut self,
        node: &Node,
        text: &str,
        style: Style,
        types: &[&str],
        schema: &Value,
        path: &Path,
        hint: Option<&str>,
    ) -> Option<Value> {
        if node.is_null() {
            return None;
        }
        if types.contains(&"string") {
            return Some(Value::String(text.to_owned()));
        }
        if types.contains(&"integer")
            && style == Style::Plain
            && let Some(n) = parse_int(text)
        {
            let lo = schema.get("minimum").and_then(Value::as_i64);
            let hi = schema.get("maximum").and_then(Value::as_i64);
            if lo.is_some_and(|lo| n < lo) || hi.is_some_and(|hi| n > hi) {
                self.error(
                    node,
                    path,
                    format!(
                        "{n} is out of range: expected {}",
                        describe_type("integer", schema)
                    ),
                    hint,
                );
                return None;
            }
            return Some(Value::from(n));
        }
        if types.contains(&"boolean") && style == Style::Plain {
            // YAML 1.2 core schema: true|True|TRUE, false|False|FALSE.
            match text {
                "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
                "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
                _ => {}
            }
        }
        None
    }

    fn object(
        &mut self,
        node: &Node,
        entries: &[(super::yaml::Key, Node)],
        schema: &'s Value,
        path: &Path,
        hint: Option<&'s str>,
    ) -> Option<Value> {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let mut out = Map::new();
        for (key, child) in entries {
            let child_path = path.key(&key.text);
            match props.and_then(|p| p.get(&key.text)) {
                // `network:` with everything under it commented out: the same as leaving it out.
                Some(prop)
                    if child.is_null()
                        && !required_here(schema, &key.text)
                        && is_object_schema(
                            prop,
                            self.root.get("$defs").unwrap_or(&Value::Null),
                        ) => {}
                Some(prop) => {
                    if let Some(v) = self.walk(child, prop, &child_path, None) {
                        out.insert(key.text.clone(), v);
                    }
                }
                None => match additional {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = props
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        // "Did you mean" only for the first few: a report lists 50 anyway.
                        let guess = if self.diags.len() < crate::config::diagnostics::MAX_SHOWN * 2
                        {
                            closest(&key.text, known.iter().copied())
                        } else {
                            None
                        };
                        let mut msg_hint = match guess {
                            Some(c) => format!("did you mean `{c}`? "),
                            None => String::new(),
                        };
                        if known.is_empty() {
                            msg_hint.push_str("no fields are allowed here");
                        } else {
                            msg_hint
                                .push_str(&format!("the fields here are: {}", known.join(", ")));
                        }
                        self.diags.push(
                            Diagnostic::error(
                                key.loc,
                                child_path,
                                format!("unknown field `{}`", super::yaml::shown(&key.text)),
                            )
                            .with_hint(msg_hint),
                        );
                    }
                    Some(s @ Value::Object(_)) => {
                        if let Some(v) = self.walk(child, s, &child_path, None) {
                            out.insert(key.text.clone(), v);
                        }
                    }
                    _ => {
                        out.insert(key.text.clone(), core_json(child));
                    }
                },
            }
        }
        if let Some(Value::Array(required)) = schema.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !entries.iter().any(|(k, _)| k.text == r) {
                    let rhint = props
                        .and_then(|p| p.get(r))
                        .and_then(|p| p.get("description"))
                        .and_then(Value::as_str)
                        .or(hint);
                    self.error(node, &path.key(r), format!("missing field `{r}`"), rhint);
                }
            }
        }
        Some(Value::Object(out))
    }

    fn one_of(
        &mut self,
        node: &Node,
        branches: &'s [Value],
        path: &Path,
        hint: Option<&'s str>,
    ) -> Option<Value> {
        // A string enum: every branch is a `const`.
        let consts: Vec<&str> = branches
            .iter()
            .filter_map(|b| b.get("const").and_then(Value::as_str))
            .collect();
        if consts.len() == branches.len() {
            let choices = branches
                .iter()
                .map(|b| {
                    let c = b.get("const").and_then(Value::as_str).unwrap_or_default();
                    match b.get("description").and_then(Value::as_str) {
                        Some(d) => format!("`{c}` ({})", d.trim_end_matches('.')),
                        None => format!("`{c}`"),
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            if let Some(text) = node.as_scalar().filter(|_| !node.is_null()) {
                if consts.contains(&text) {
                    return Some(Value::String(text.to_owned()));
                }
                let mut msg = format!(
                    "`{}` is not one of {}",
                    super::yaml::shown(text),
                    consts.join(", ")
                );
                if let Some(c) = closest(text, consts.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{c}`?)"));
                }
                self.error(node, path, msg, Some(&choices));
            } else {
                self.error(
                    node,
                    path,
                    format!(
                        "expected one of {}, found {}",
                        consts.join(", "),
                        found(node)
                    ),
                    Some(&choices),
                );
            }
            return None;
        }
        // A tagged mapping: each branch has `properties.type.const`.
        let tags: Vec<(&str, &'s Value)> = branches
            .iter()
            .filter_map(|b| {
                let t = b
                    .pointer("/properties/type/const")
                    .and_then(Value::as_str)?;
                Some((t, b))
            })
            .collect();
        let tag_list = tags.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ");
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node,
                path,
                format!(
                    "expected a mapping with `type: {tag_list}`, found {}",
                    found(node)
                ),
                hint,
            );
            return None;
        };
        let Some((_, tnode)) = entries.iter().find(|(k, _)| k.text == "type") else {
            self.error(
                node,
                &path.key("type"),
                format!("missing field `type` (one of {tag_list})"),
                hint,
            );
            return None;
        };
        let t = tnode.as_scalar().unwrap_or_default();
        match tags.iter().find(|(name, _)| *name == t) {
            Some((_, branch)) => self.walk(node, branch, path, hint),
            None => {
                let mut msg = format!("`{}` is not one of {tag_list}", super::yaml::shown(t));
                if let Some(c) = closest(t, tags.iter().map(|(n, _)| *n)) {
                    msg.push_str(&format!(" (did you mean `{c}`?)"));
                }
                self.error(tnode, &path.key("type"), msg, hint);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    fn run(text: &str) -> (Value, Vec<Diagnostic>) {
        let decl = Declaration::embedded().unwrap();
        let schema = json_schema(&decl);
        let tree = yaml::parse(text).unwrap();
        check(&tree, &schema)
    }

    fn messages(d: &[Diagnostic]) -> Vec<String> {
        d.iter()
            .map(|d| format!("{}:{} {}: {}", d.loc.line, d.loc.column, d.path, d.message))
            .collect()
    }

    #[test]
    fn a_good_document_passes_and_is_typed_by_the_schema() {
        let (v, d) = run(
            "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh: {port: 2222, user: 0123}\n  hosts:\n    - address: 10.0.0.1\n      role: server\n  app:\n    values: {gatewayPort: 9443}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(v["spec"]["ssh"]["port"], 2222);
        // A string field keeps the text as written, even when it looks like a number.
        assert_eq!(v["spec"]["ssh"]["user"], "0123");
        assert_eq!(v["spec"]["app"]["values"]["gatewayPort"], "9443");
    }

    #[test]
    fn every_structural_problem_is_reported_with_its_position() {
        let (v, d) = run(concat!(
            "apiVersion: installer.dev/v2\n",
            "kind: Cluster\n",
            "metadata: {name: demo, colour: red}\n",
            "spec:\n",
            "  ssh:\n",
            "    port: twenty-two\n",
            "    auth: {type: agnet}\n",
            "    sudo: {mode: passwordless, pasword: x}\n",
            "  hosts:\n",
            "    - adress: 10.0.0.1\n",
            "      role: master\n",
        ));
        let m = messages(&d);
        assert_eq!(
            m,
            vec![
                "1:13 apiVersion: must be `installer.dev/v1`, found `installer.dev/v2`",
                "3:24 metadata.colour: unknown field `colour`",
                "6:11 spec.ssh.port: expected a whole number from 1 to 65535, found `twenty-two`",
                "7:18 spec.ssh.auth.type: `agnet` is not one of agent, key, password (did you mean `agent`?)",
                "8:32 spec.ssh.sudo.pasword: unknown field `pasword`",
                "10:7 spec.hosts[0].adress: unknown field `adress`",
                "11:13 spec.hosts[0].role: `master` is not one of auto, server, agent",
                "10:7 spec.hosts[0].address: missing field `address`",
            ]
        );
        assert_eq!(
            d[5].hint
                .as_deref()
                .map(|h| h.starts_with("did you mean `address`?")),
            Some(true)
        );
        // The broken port is left out; the rest survives for semantic checks.
        assert!(v["spec"]["ssh"].get("port").is_none());
        assert_eq!(v["kind"], "Cluster");
    }

    #[test]
    fn empty_optional_sections_are_like_absent_ones() {
        let (v, d) = run(
            "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh:\n  network:\n  hosts:\n    - address: 10.0.0.1\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert!(v["spec"].get("network").is_none());
        // A required section cannot be empty.
        let (_, d) =
            run("apiVersion: installer.dev/v1\nkind: Cluster\nmetadata:\nspec:\n  hosts: []\n");
        assert_eq!(
            messages(&d),
            vec!["3:9 metadata: expected a mapping (`key: value` lines), found nothing"]
        );
    }

    #[test]
    fn missing_sections_and_wrong_shapes() {
        let (_, d) = run("apiVersion: installer.dev/v1\nkind: Cluster\nspec:\n  hosts: 10.0.0.1\n");
        let m = messages(&d);
        assert!(
            m.iter()
                .any(|m| m.contains("metadata: missing field `metadata`")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.contains("spec.hosts: expected a list")),
            "{m:?}"
        );
    }
}
