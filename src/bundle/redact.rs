//! Redaction of everything collected, on the workstation, before anything is written; the
//! `redactions.json` report (rules, counts per file: never a value); and the final scan of
//! the finished archive for every secret the installer knows.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::secret;

/// What was redacted where. Counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Redactions {
    pub rules: Vec<Rule>,
    pub files: BTreeMap<String, BTreeMap<String, usize>>,
    pub totals: BTreeMap<String, usize>,
    /// Files not included because they could not be redacted safely (binary).
    pub dropped: Vec<Dropped>,
    pub never_read: Vec<String>,
    pub selfcheck: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub path: String,
    pub reason: String,
}

/// Redacts collected files and keeps the counts.
pub struct Redactor {
    /// Literals known only to this run (tokens read from a node into memory).
    extra: Vec<String>,
    pub report: Redactions,
    enabled: bool,
}

impl Redactor {
    pub fn new(extra: Vec<String>, enabled: bool) -> Redactor {
        Redactor {
            extra,
            enabled,
            report: Redactions {
                rules: secret::RULES
                    .iter()
                    .map(|(id, d)| Rule {
                        id: (*id).into(),
                        description: (*d).into(),
                    })
                    .collect(),
                never_read: super::collectors::NEVER_READ
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                selfcheck: "not run".into(),
                ..Default::default()
            },
        }
    }

    /// Adds a secret learnt during the run (it is matched in all its forms too).
    pub fn learn(&mut self, value: &str) {
        if !value.is_empty() && !self.extra.iter().any(|v| v == value) {
            self.extra.push(value.to_owned());
        }
    }

    /// The literals learnt so far (to merge per-node redactors into one).
    pub fn literals_learnt(&self) -> Vec<String> {
        self.extra.clone()
    }

    /// The literals the final scan looks for: registered secrets and learnt ones.
    pub fn literals(&self) -> Vec<String> {
        let mut all = secret::registered();
        all.extend(self.extra.iter().cloned());
        all
    }

    /// The redacted bytes of a file, or `None` when it is dropped (binary content cannot
    /// be redacted line by line, so it is never passed through).
    pub fn file(&mut self, path: &str, data: &[u8]) -> Option<Vec<u8>> {
        if data.contains(&0) {
            self.report.dropped.push(Dropped {
                path: path.into(),
                reason: "binary content (NUL bytes) cannot be redacted".into(),
            });
            return None;
        }
        if !self.enabled {
            return Some(data.to_vec());
        }
        let text = String::from_utf8_lossy(data);
        let (out, counts) = secret::redact_counted(&text, &self.extra);
        for (rule, n) in counts {
            *self
                .report
                .files
                .entry(path.into())
                .or_default()
                .entry(rule.into())
                .or_default() += n;
            *self.report.totals.entry(rule.into()).or_default() += n;
        }
        Some(out.into_bytes())
    }
}

/// A known secret found in the finished archive.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "a known secret survived redaction in {path} (rule forms: raw/base64/URL/JSON); the archive was deleted"
    )]
    Leak { path: String },
    #[error("cannot read back the archive for the final secret scan: {0}")]
    Read(String),
}

/// Reads the archive back and looks for every form of every literal. Never prints a value.
pub fn scan_archive(archive: &Path, literals: &[String]) -> Result<(), ScanError> {
    let forms: Vec<String> = literals
        .iter()
        .filter(|l| l.len() >= 6)
        .flat_map(|l| secret::encoded_forms(l))
        .collect();
    let file = std::fs::File::open(archive).map_err(|e| ScanError::Read(e.to_string()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar.entries().map_err(|e| ScanError::Read(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ScanError::Read(e.to_string()))?;
        let path = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| ScanError::Read(e.to_string()))?;
        let text = String::from_utf8_lossy(&data);
        if forms.iter().any(|f| text.contains(f.as_str())) {
            return Err(ScanError::Leak { path });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_file_and_rule_never_values() {
        let mut r = Redactor::new(vec!["learnt-token-value-1".into()], true);
        let out = r
            .file(
                "nodes/a/x.txt",
                b"a learnt-token-value-1 b\npassword: pw-123456\n",
            )
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("learnt-token-value-1") && !out.contains("pw-123456"),
            "{out}"
        );
        assert_eq!(r.report.files["nodes/a/x.txt"]["known-secret"], 1);
        assert_eq!(r.report.totals["key-value"], 1);
        let json = serde_json::to_string(&r.report).unwrap();
        assert!(!json.contains("learnt-token") && !json.contains("pw-123456"));
    }

    #[test]
    fn binary_files_are_dropped_and_listed() {
        let mut r = Redactor::new(vec![], true);
        assert!(r.file("x.bin", b"ab\0cd").is_none());
        assert_eq!(r.report.dropped[0].path, "x.bin");
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn the_final_scan_finds_a_surviving_secret_in_any_form() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let secret = "scan-canary-0123456789";
        let ok = super::super::archive::write(
            dir.path(),
            "ok",
            vec![super::super::archive::Entry {
                path: "a.txt".into(),
                data: b"nothing here".to_vec(),
            }],
            0,
        )
        .unwrap();
        assert!(scan_archive(&ok, &[secret.into()]).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let bad = super::super::archive::write(
            dir.path(),
            "bad",
            vec![super::super::archive::Entry {
                path: "nodes/a/f.txt".into(),
                data: format!("x {b64} y").into_bytes(),
            }],
            0,
        )
        .unwrap();
        match scan_archive(&bad, &[secret.into()]) {
            Err(ScanError::Leak { path }) => {
                assert_eq!(path, "bad/nodes/a/f.txt");
                assert!(!ScanError::Leak { path }.to_string().contains(secret));
            }
            other => panic!("{other:?}"),
        }
    }
}
