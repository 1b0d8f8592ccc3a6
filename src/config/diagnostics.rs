//! Problems found in an answer file, and the report that lists them.
//!
//! Every problem carries the file, line and column, the field path, what is wrong and,
//! when there is something useful to say, a `hint:`. The report lists all of them at once,
//! in file order:
//!
//! ```text
//! answers.yaml:12:7: spec.hosts[2].address: duplicate address 10.0.0.11 (also spec.hosts[0])
//!   hint: each host must be listed once
//! ```

use super::yaml::{Loc, Path};
use serde::Serialize;
use std::fmt;

/// How many problems the report lists before "and N more".
pub const MAX_SHOWN: usize = 50;
/// The longest message or hint shown (a backstop: values are already cut where echoed).
const MAX_MESSAGE_CHARS: usize = 400;

/// `text` cut to `max` characters, saying how long it was.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((i, _)) => std::borrow::Cow::Owned(format!(
            "{}… ({} characters in all)",
            &text[..i],
            text.chars().count()
        )),
    }
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used: nothing runs.
    Error,
    /// The file works, but something deserves attention (a password in clear text).
    Warning,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub loc: Loc,
    pub path: Path,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(loc: Loc, path: Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            loc,
            path,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(loc: Loc, path: Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(loc, path, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:col: path: message` and, on the next line, `  hint: ...`.
    pub fn render(&self, file: &str) -> String {
        let mut out = format!(
            "{file}:{}:{}: {}{}: {}",
            self.loc.line,
            self.loc.column,
            if self.severity == Severity::Warning {
                "warning: "
            } else {
                ""
            },
            cut(&self.path.to_string(), MAX_MESSAGE_CHARS),
            cut(&self.message, MAX_MESSAGE_CHARS)
        );
        if let Some(h) = &self.hint {
            out.push_str("\n  hint: ");
            out.push_str(&cut(h, MAX_MESSAGE_CHARS));
        }
        out
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file as the user named it.
    pub file: String,
    pub items: Vec<Diagnostic>,
}

/// One problem in a machine-readable report (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticJson<'a> {
    pub severity: Severity,
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: &'a str,
    pub hint: Option<&'a str>,
}

impl Diagnostics {
    pub fn new(file: impl Into<String>, mut items: Vec<Diagnostic>) -> Diagnostics {
        // File order; equal problems reported once (the same shared setting can be wrong
        // for several hosts).
        items.sort_by(|a, b| {
            (a.loc, &a.path, &a.message, a.severity).cmp(&(b.loc, &b.path, &b.message, b.severity))
        });
        items.dedup_by(|a, b| a.loc == b.loc && a.path == b.path && a.message == b.message);
        Diagnostics {
            file: file.into(),
            items,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The report as JSON objects, one per problem.
    pub fn to_json(&self) -> Vec<DiagnosticJson<'_>> {
        self.items
            .iter()
            .map(|d| DiagnosticJson {
                severity: d.severity,
                file: &self.file,
                line: d.loc.line,
                column: d.loc.column,
                path: d.path.to_string(),
                message: &d.message,
                hint: d.hint.as_deref(),
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.items.iter().take(MAX_SHOWN) {
            writeln!(f, "{}", d.render(&self.file))?;
        }
        if self.items.len() > MAX_SHOWN {
            writeln!(
                f,
                "... and {} more problems (fix these first, or see them all with --output json)",
                self.items.len() - MAX_SHOWN
            )?;
        }
        let n = self.errors().count();
        if n > 0 {
            write!(
                f,
                "{n} {} in {}; nothing was changed on any host.",
                if n == 1 { "problem" } else { "problems" },
                self.file
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Returns the candidate closest to `word` (for "did you mean"), if one is close enough.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Nothing long is a typo of a field name (and the distance costs length squared).
    if word.len() > 64 {
        return None;
    }
    let word_l = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_l, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each cost 1 (so `agnet` is 1 away from `agent`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_sorted_deduplicated_and_counted() {
        let p = Path::parse("spec.hosts[2].address");
        let d = Diagnostics::new(
            "answers.yaml",
            vec![
                Diagnostic::error(
                    Loc {
                        line: 12,
                        column: 7,
                    },
                    p.clone(),
                    "duplicate",
                )
                .with_hint("list each host once"),
                Diagnostic::error(Loc { line: 3, column: 1 }, Path::parse("kind"), "wrong"),
                Diagnostic::error(
                    Loc {
                        line: 12,
                        column: 7,
                    },
                    p,
                    "duplicate",
                ),
            ],
        );
        assert_eq!(
            d.to_string(),
            "answers.yaml:3:1: kind: wrong\n\
             answers.yaml:12:7: spec.hosts[2].address: duplicate\n  hint: list each host once\n\
             2 problems in answers.yaml; nothing was changed on any host."
        );
    }

    #[test]
    fn closest_suggests_near_misses_only() {
        let fields = ["address", "role", "nodeName", "nodeIp"];
        assert_eq!(closest("adress", fields), Some("address"));
        assert_eq!(closest("nodename", fields), Some("nodeName"));
        assert_eq!(closest("zzzzzz", fields), None);
    }
}
