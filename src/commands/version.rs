//! `installer version`: this installer's version and the version of every artifact it
//! carries, or `missing` for one this build does not embed.
//!
//! The artifact inventory comes from the `installer-assets` crate through
//! `installer::assets::inventory()` (interface agreed with the assets work). Until that
//! lands on main, [`inventory`] below is a local stand-in that reports the artifacts the
//! product carries, all `missing`, which is the truth for a build without them.

use crate::error::Error;
use crate::report::{Mode, text};
use serde::Serialize;
use std::io::Write;

/// One artifact and whether this binary carries it (the agreed shape of
/// `installer::assets::ArtifactStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactStatus {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub embedded: bool,
}

/// Stand-in for `installer::assets::inventory()`: nothing is embedded in this build.
pub fn inventory() -> Vec<ArtifactStatus> {
    ["k3s", "k3s-airgap-images", "app-images"]
        .iter()
        .map(|n| ArtifactStatus {
            name: (*n).to_owned(),
            version: String::new(),
            sha256: String::new(),
            embedded: false,
        })
        .collect()
}

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
