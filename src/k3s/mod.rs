//! k3s: the typed model of everything the installer writes for k3s on a node (config.yaml,
//! token files, systemd units, the node-local CNI config, the CNI plugin links), rendered
//! from `templates/k3s/` and validated against k3s's own flag list before it leaves the
//! workstation; plus join tokens and the admin kubeconfig rewrite.
//!
//! The reference for every choice here is `shared/docs/k3s-host-network.md` (host network,
//! no overlay, HA embedded etcd, airgap); docs/k3s-config.md explains the module.
//!
//! Nothing here touches a host: each function returns a [`RenderedFile`] (path, mode,
//! content) for the phases to upload through the `Remote` trait.

use std::sync::OnceLock;

use thiserror::Error;

pub mod cni;
pub mod config;
pub mod flags;
pub mod kubeconfig;
pub mod paths;
pub mod ports;
pub mod skew;
pub mod token;
pub mod units;

pub use config::{ClusterSettings, NodeRole, NodeSettings, render_config};
pub use flags::K3sCommand;
pub use token::{ClusterSecrets, JoinToken, SecretFile, TokenUser, token_files};

/// The k3s minor version the flag table and the templates were written for.
pub const K3S_MINOR: &str = "v1.36";

/// A file to write on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the node.
    pub path: String,
    /// File mode, e.g. `0o600`.
    pub mode: u32,
    pub content: String,
}

/// Errors of the k3s layer. None carries a secret.
#[derive(Debug, Error)]
pub enum K3sError {
    /// A value given to a renderer is not acceptable (caught before anything is rendered).
    #[error("{field}: {problem}")]
    InvalidInput { field: String, problem: String },

    /// A rendered config would not do what it says on k3s (a bug in a template or input
    /// that slipped through): it never leaves the workstation.
    #[error("the rendered {path} for `k3s {command}` is not valid for k3s {}:\n  {}", K3S_MINOR,
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    InvalidConfig {
        path: String,
        command: K3sCommand,
        problems: Vec<flags::FlagProblem>,
    },

    #[error("template {name}: {message}")]
    Template { name: String, message: String },

    #[error(transparent)]
    Token(#[from] token::TokenError),

    #[error("the kubeconfig from the server cannot be used: {0}")]
    Kubeconfig(String),
}

impl K3sError {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            K3sError::InvalidConfig { .. } | K3sError::Template { .. } => Some(
                "this is a bug in the installer's k3s templates: please report it with this message"
                    .into(),
            ),
            K3sError::Kubeconfig(_) => Some(format!(
                "check {} on the first server (is k3s running?)",
                paths::KUBECONFIG
            )),
            K3sError::Token(e) => e.hint(),
            K3sError::InvalidInput { .. } => None,
        }
    }
}

const TEMPLATES: [(&str, &str); 4] = [
    (
        "config.yaml",
        include_str!("../../templates/k3s/config.yaml.tera"),
    ),
    (
        "k3s.service",
        include_str!("../../templates/k3s/k3s.service.tera"),
    ),
    (
        "10-local.conflist",
        include_str!("../../templates/k3s/10-local.conflist.tera"),
    ),
    (
        "kubeconfig.yaml",
        include_str!("../../templates/k3s/kubeconfig.yaml.tera"),
    ),
];

fn engine() -> Result<&'static tera::Tera, K3sError> {
    static ENGINE: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut t = tera::Tera::default();
            // These are YAML, JSON and unit files: values are quoted with `json_encode`
            // in the templates, never HTML-escaped.
            t.autoescape_on(vec![]);
            t.add_raw_templates(TEMPLATES)
                .map_err(|e| error_chain(&e))?;
            Ok(t)
        })
        .as_ref()
        .map_err(|message| K3sError::Template {
            name: "templates/k3s".into(),
            message: message.clone(),
        })
}

/// Renders one of the embedded k3s templates with `context` (any `Serialize`).
pub(crate) fn render(name: &str, context: &impl serde::Serialize) -> Result<String, K3sError> {
    let err = |message: String| K3sError::Template {
        name: name.to_owned(),
        message,
    };
    let ctx = tera::Context::from_serialize(context).map_err(|e| err(error_chain(&e)))?;
    engine()?
        .render(name, &ctx)
        .map_err(|e| err(error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_parses() {
        assert!(super::engine().is_ok(), "{:?}", super::engine().err());
    }
}
