//! The YAML 1.2 core schema as JSON: plain `true`, `12`, `null` are typed, quoted scalars
//! are strings. Used by the JSON Schema's reading of the answer file and by the
//! application's declaration, where no schema says what to expect.

use serde_json::Value;

use super::yaml::{Node, NodeKind, Style};

/// Converts a YAML tree to JSON with the YAML 1.2 core schema (plain `true`, `12`, `null`
/// are typed; quoted scalars are strings). Used where no schema says what to expect.
pub fn core_json(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.text.clone(), core_json(v)))
                .collect(),
        ),
        NodeKind::Seq(items) => Value::Array(items.iter().map(core_json).collect()),
        NodeKind::Scalar { text, style, tag } => {
            if *style != Style::Plain || tag.as_deref() == Some("str") {
                return Value::String(text.clone());
            }
            if node.is_null() {
                return Value::Null;
            }
            match text.as_str() {
                "true" | "True" | "TRUE" => return Value::Bool(true),
                "false" | "False" | "FALSE" => return Value::Bool(false),
                _ => {}
            }
            if let Some(n) = parse_int(text) {
                return Value::from(n);
            }
            if looks_like_float(text)
                && let Some(n) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
            {
                return Value::Number(n);
            }
            Value::String(text.clone())
        }
    }
}

pub(super) fn parse_int(text: &str) -> Option<i64> {
    let t = text.strip_prefix('+').unwrap_or(text);
    if let Some(h) = t.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok();
    }
    if let Some(o) = t.strip_prefix("0o") {
        return i64::from_str_radix(o, 8).ok();
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        t.parse().ok()
    } else {
        None
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['+', '-']);
    !t.is_empty()
        && t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
        })
}
