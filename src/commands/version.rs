//! `installer version`: this installer's version and the version of every artifact it
//! carries, or `missing` for one this build does not embed.
//!
//! The artifact inventory is `installer::assets::inventory()`: every artifact of the lock
//! this binary was built with, and whether it is embedded.

use crate::assets::{ArtifactStatus, inventory};
use crate::error::Error;
use crate::report::{Mode, text};
use std::io::Write;

/// Renders the version report.
pub fn render(mode: Mode, artifacts: &[ArtifactStatus]) -> String {
    let version = env!("CARGO_PKG_VERSION");
    if mode == Mode::Json {
        return format!(
            "{}\n",
            serde_json::json!({ "installer": version, "artifacts": artifacts })
        );
    }
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                if a.version.is_empty() {
                    "-".into()
                } else {
                    a.version.clone()
                },
                if a.embedded {
                    "embedded".into()
                } else {
                    "missing".into()
                },
                a.sha256.chars().take(16).collect::<String>(),
            ]
        })
        .collect();
    let mut out = format!("installer {version}\n\n");
    out.push_str(&text::table(
        &["ARTIFACT", "VERSION", "STATUS", "SHA-256"],
        &rows,
    ));
    if artifacts.iter().any(|a| !a.embedded) {
        out.push_str(
            "\nA missing artifact must be given at run time with --assets DIR (see docs/assets.md).\n",
        );
    }
    out
}

/// Prints the version report.
pub fn run(mode: Mode, out: &mut dyn Write) -> Result<(), Error> {
    out.write_all(render(mode, &inventory()).as_bytes())
        .map_err(|e| Error::failed(e, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_and_missing_artifacts_are_both_shown() {
        let a = vec![
            ArtifactStatus {
                name: "k3s".into(),
                version: "v1.36.2+k3s1".into(),
                sha256: "0123456789abcdef0123".into(),
                embedded: true,
            },
            ArtifactStatus {
                name: "app-images".into(),
                version: "1.0.0".into(),
                sha256: "ffff".into(),
                embedded: false,
            },
        ];
        let t = render(Mode::Plain, &a);
        assert!(t.starts_with(&format!("installer {}\n", env!("CARGO_PKG_VERSION"))));
        assert!(
            t.contains("k3s         v1.36.2+k3s1  embedded  0123456789abcdef\n"),
            "{t}"
        );
        assert!(
            t.contains("app-images  1.0.0         missing   ffff\n"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&render(Mode::Json, &a)).unwrap();
        assert_eq!(j["artifacts"][0]["embedded"], true);
        assert_eq!(j["artifacts"][1]["name"], "app-images");
    }
}
