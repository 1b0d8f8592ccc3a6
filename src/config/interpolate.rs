//! `${VAR}` references in answer-file strings, so secrets never have to be written in the file.
//!
//! Any string value may be, or contain, `${NAME}` (NAME: letters, digits, `_`, not starting
//! with a digit). `$${` writes a literal `${`. A reference to an unset variable is an error
//! (never silently empty); a `$` not followed by `{` is kept as is.

use std::collections::HashMap;

/// Where variables come from: the process environment, plus values the wizard holds in
/// memory (a password typed at a prompt that the saved file references as `${VAR}`).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables consulted before a fallback environment.
#[derive(Default)]
pub struct MapEnv<'a> {
    pub vars: HashMap<String, String>,
    pub fallback: Option<&'a dyn Env>,
}

impl std::fmt::Debug for MapEnv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        write!(f, "MapEnv({names:?})")
    }
}

impl Env for MapEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| self.fallback.and_then(|f| f.var(name)))
    }
}

/// What was wrong with a string's references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// These variables are referenced but not set.
    Unset(Vec<String>),
    /// A `${` without its `}` or with a name that is not a variable name.
    Malformed(String),
}

/// Whether `s` holds at least one `${VAR}` reference.
pub fn has_reference(s: &str) -> bool {
    s.replace("$${", "").contains("${")
}

/// The names of the variables `s` references (well-formed `${NAME}`s only).
pub fn references(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            rest = lit;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    out.push(&body[..end]);
                    rest = &body[end + 1..];
                }
                None => break,
            }
        } else {
            rest = after;
        }
    }
    out
}

/// Whether a variable's name says it holds a secret (`SUDO_PASSWORD`, `API_TOKEN`, ...):
/// its value is masked wherever it would be echoed, whatever field it was put in.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASS", "TOKEN", "SECRET", "KEY", "CREDENTIAL", "PRIVATE"]
        .iter()
        .any(|w| n.contains(w))
}

/// Replaces every `${VAR}` in `s`.
pub fn interpolate(s: &str, env: &dyn Env) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(InterpolateError::Malformed(format!(
                    "`${{` without a closing `}}` in {s:?}"
                )));
            };
            let name = &body[..end];
            if !is_var_name(name) {
                return Err(InterpolateError::Malformed(format!(
                    "`${{{name}}}` is not a variable reference (names are letters, digits and `_`)"
                )));
            }
            match env.var(name) {
                Some(v) => out.push_str(&v),
                None => unset.push(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(InterpolateError::Unset(unset))
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> MapEnv<'static> {
        MapEnv {
            vars: [
                ("A".to_string(), "one".to_string()),
                ("B_2".into(), "two".into()),
            ]
            .into_iter()
            .collect(),
            fallback: None,
        }
    }

    #[test]
    fn whole_and_embedded_references() {
        assert_eq!(interpolate("${A}", &env()).unwrap(), "one");
        assert_eq!(interpolate("x-${A}-${B_2}", &env()).unwrap(), "x-one-two");
        assert_eq!(interpolate("no refs $5", &env()).unwrap(), "no refs $5");
        assert_eq!(interpolate("$${A}", &env()).unwrap(), "${A}");
    }

    #[test]
    fn unset_variables_are_all_named() {
        assert_eq!(
            interpolate("${X}${A}${Y}", &env()),
            Err(InterpolateError::Unset(vec!["X".into(), "Y".into()]))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            interpolate("${A", &env()),
            Err(InterpolateError::Malformed(_))
        ));
        assert!(matches!(
            interpolate("${1A}", &env()),
            Err(InterpolateError::Malformed(_))
        ));
        assert!(has_reference("a${B}"));
        assert!(!has_reference("a$${B}"));
    }
}
