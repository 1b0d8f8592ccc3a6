//! The top-level error type and the exit codes it maps to.
//!
//! Exit codes (documented in README.md, docs/cli.md and `installer --help`):
//! 0 success, 1 failed, 2 bad input or usage, 130 interrupted.
//!
//! Errors are rendered once, by `main`: the message (with its cause chain) and a `hint:`
//! line when there is something the user can do.

use crate::config::Diagnostics;

/// Exit code: everything worked.
pub const EXIT_OK: i32 = 0;
/// Exit code: the command ran and failed (a host, a phase, a gate).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad input (answer file, flags) or usage; nothing was changed on any host.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `support-bundle` wrote its archive, but something is missing from it (a node
/// unreachable, the API down, a collector failed or timed out).
pub const EXIT_PARTIAL: i32 = 3;
/// Exit code: interrupted (Ctrl-C); a rerun continues where this one stopped.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The answer file has problems (all of them are listed). Exit 2.
    #[error("{0}")]
    Invalid(Diagnostics),

    /// Bad usage or unusable input other than the answer file's content. Exit 2.
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },

    /// The user pressed Ctrl-C. Exit 130.
    #[error("interrupted")]
    Interrupted,

    /// The command did part of its job (a support bundle written but incomplete). Exit 3.
    #[error("{message}")]
    Partial {
        message: String,
        hint: Option<String>,
    },

    /// The command ran and failed. Exit 1.
    #[error("{source:#}")]
    Failed {
        source: anyhow::Error,
        hint: Option<String>,
    },
}

impl Error {
    /// A failure with a hint.
    pub fn failed(source: impl Into<anyhow::Error>, hint: impl Into<Option<String>>) -> Error {
        Error::Failed {
            source: source.into(),
            hint: hint.into(),
        }
    }

    /// A usage error with a hint.
    pub fn usage(message: impl Into<String>, hint: impl Into<Option<String>>) -> Error {
        Error::Usage {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Usage { .. } => EXIT_USAGE,
            Error::Interrupted => EXIT_INTERRUPTED,
            Error::Failed { .. } => EXIT_FAILED,
            Error::Partial { .. } => EXIT_PARTIAL,
        }
    }

    /// What the user can do about it, if anything is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Invalid(_) => None,
            Error::Usage { hint, .. } | Error::Partial { hint, .. } => hint.clone(),
            Error::Interrupted => {
                Some("rerun the same command to continue where this run stopped".into())
            }
            Error::Failed { source, hint } => hint.clone().or_else(|| {
                source
                    .chain()
                    .find_map(|e| e.downcast_ref::<crate::host::HostError>())
                    .and_then(|h| h.hint())
            }),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::failed(e, None)
    }
}

impl From<crate::config::LoadError> for Error {
    fn from(e: crate::config::LoadError) -> Self {
        match e {
            crate::config::LoadError::Invalid(d) => Error::Invalid(d),
            read @ crate::config::LoadError::Read { .. } => Error::usage(
                read.to_string(),
                Some("check the path given with -f".to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_kind() {
        assert_eq!(Error::usage("x", None).exit_code(), EXIT_USAGE);
        assert_eq!(Error::Interrupted.exit_code(), EXIT_INTERRUPTED);
        assert_eq!(
            Error::failed(anyhow::anyhow!("boom"), None).exit_code(),
            EXIT_FAILED
        );
        assert_eq!(
            Error::Invalid(Diagnostics::new("a.yaml", vec![])).exit_code(),
            EXIT_USAGE
        );
    }

    #[test]
    fn host_errors_bring_their_hint() {
        let e = Error::from(anyhow::Error::new(crate::host::HostError::Disconnected {
            host: "h".into(),
            during: "upload".into(),
        }));
        assert!(e.hint().is_some_and(|h| h.contains("rerun")));
    }
}
