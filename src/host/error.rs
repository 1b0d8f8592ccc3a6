//! Errors of the host layer. Each names the host and what was being done, and most carry
//! a hint for the operator; none ever carries a secret.

use std::time::Duration;
use thiserror::Error;

/// One authentication method tried during login, and why it did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    /// `agent`, `publickey <path>`, `password`, ...
    pub method: String,
    /// Why it failed, in words an operator understands.
    pub reason: String,
}

#[derive(Debug, Clone, Error)]
pub enum HostError {
    #[error("{host}: cannot connect to {addr}: {reason}")]
    Connect {
        host: String,
        addr: String,
        reason: String,
    },

    #[error("{host}: SSH login as {user} failed; tried: {}", format_attempts(.attempts))]
    Auth {
        host: String,
        user: String,
        attempts: Vec<AuthAttempt>,
    },

    #[error("{host}: the SSH host key is not known ({key_type} {fingerprint})")]
    HostKeyUnknown {
        host: String,
        key_type: String,
        fingerprint: String,
    },

    #[error(
        "{host}: WARNING: THE SSH HOST KEY HAS CHANGED: expected {expected}, the host offered {offered}. \
         Someone could be intercepting the connection (man-in-the-middle), or the host was reinstalled"
    )]
    HostKeyChanged {
        host: String,
        expected: String,
        offered: String,
        /// Where the expected key came from (a known_hosts file and line, or the answer file pin).
        source_of_expected: String,
    },

    #[error("{host}: sudo rejected the password for {user}")]
    SudoWrongPassword { host: String, user: String },

    #[error("{host}: {user} needs a password for sudo, and none was given")]
    SudoPasswordRequired { host: String, user: String },

    #[error("{host}: {user} may not use sudo: {detail}")]
    SudoNotAllowed {
        host: String,
        user: String,
        detail: String,
    },

    #[error("{host}: `{command}` did not finish within {}", humantime::format_duration(*.after))]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },

    #[error("{host}: the connection dropped during {during}")]
    Disconnected { host: String, during: String },

    #[error("{host}: `{command}` failed ({}){}", status.map_or("killed by a signal".to_string(), |s| format!("exit status {s}")), if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    CommandFailed {
        host: String,
        command: String,
        status: Option<u32>,
        stderr: String,
    },

    #[error("{host}: upload to {path} failed: {reason}")]
    Upload {
        host: String,
        path: String,
        reason: String,
    },

    #[error("{host}: cannot open a forwarded connection to {target}: {reason}")]
    Forward {
        host: String,
        target: String,
        reason: String,
    },

    #[error("{host}: interrupted")]
    Cancelled { host: String },

    #[error("{host}: {message}")]
    Other { host: String, message: String },
}

fn format_attempts(attempts: &[AuthAttempt]) -> String {
    if attempts.is_empty() {
        return "no authentication method was available".into();
    }
    attempts
        .iter()
        .map(|a| format!("{} ({})", a.method, a.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The hint for a failed login, matching the methods that were tried: a refused password
/// is a wrong password (or password login switched off), not a missing key.
fn auth_hint(user: &str, attempts: &[AuthAttempt]) -> String {
    let password = |a: &AuthAttempt| a.method == "password";
    if !attempts.is_empty() && attempts.iter().all(password) {
        let refused_by_config = attempts
            .iter()
            .all(|a| a.reason.contains("does not accept passwords"));
        if refused_by_config {
            return format!(
                "the host does not allow password login: enable `PasswordAuthentication yes` in its sshd_config, or log in as {user} with a key (`auth: {{type: key}}`)"
            );
        }
        return format!(
            "the password for {user} is wrong: check it (the one typed, or the environment variable the answer file names for `auth.password`)"
        );
    }
    format!(
        "check that {user}'s public key is in ~/.ssh/authorized_keys on the host, that ssh-agent holds the key (`ssh-add -l`), or set `auth:` for this host in the answer file"
    )
}

impl HostError {
    /// The host this error is about.
    pub fn host(&self) -> &str {
        match self {
            HostError::Connect { host, .. }
            | HostError::Auth { host, .. }
            | HostError::HostKeyUnknown { host, .. }
            | HostError::HostKeyChanged { host, .. }
            | HostError::SudoWrongPassword { host, .. }
            | HostError::SudoPasswordRequired { host, .. }
            | HostError::SudoNotAllowed { host, .. }
            | HostError::Timeout { host, .. }
            | HostError::Disconnected { host, .. }
            | HostError::CommandFailed { host, .. }
            | HostError::Upload { host, .. }
            | HostError::Forward { host, .. }
            | HostError::Cancelled { host }
            | HostError::Other { host, .. } => host,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            HostError::Connect { .. } => "check that the host is up, that the address and port are right, and that no firewall blocks SSH from this workstation (try `ssh -v` to the same address)".into(),
            HostError::Auth { user, attempts, .. } => auth_hint(user, attempts),
            HostError::HostKeyUnknown { .. } => "compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host; then pin it in the answer file (`hostKey:`), add it to ~/.ssh/known_hosts, or rerun with --accept-new-host-keys".into(),
            HostError::HostKeyChanged { source_of_expected, .. } => format!("if the host was reinstalled, remove the old key from {source_of_expected} and rerun; otherwise do not continue and ask your network team"),
            HostError::SudoWrongPassword { .. } => "check the sudo password (answer file `sudo.password`, or the environment variable it names)".into(),
            HostError::SudoPasswordRequired { .. } => "set `sudo: {mode: password}` for this host and give the password through an environment variable or a prompt".into(),
            HostError::SudoNotAllowed { user, .. } => format!("add {user} to the sudoers on the host, or log in as root"),
            HostError::Timeout { .. } => "the host may be overloaded or a step is stuck; the log file has the command's last output".into(),
            HostError::Disconnected { .. } => "the network or the host dropped the SSH connection; rerun the same command to continue".into(),
            _ => return None,
        })
    }

    /// Whether retrying the same idempotent operation after reconnecting may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HostError::Connect { .. } | HostError::Disconnected { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_error_names_host_user_and_each_method() {
        let e = HostError::Auth {
            host: "10.0.0.1".into(),
            user: "admin".into(),
            attempts: vec![
                AuthAttempt {
                    method: "agent".into(),
                    reason: "SSH_AUTH_SOCK is not set".into(),
                },
                AuthAttempt {
                    method: "publickey ~/.ssh/id_ed25519".into(),
                    reason: "the server refused the key".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "10.0.0.1: SSH login as admin failed; tried: agent (SSH_AUTH_SOCK is not set); publickey ~/.ssh/id_ed25519 (the server refused the key)"
        );
        assert_eq!(e.host(), "10.0.0.1");
        assert!(e.hint().is_some());
    }

    #[test]
    fn a_refused_password_is_hinted_as_a_wrong_password_not_a_missing_key() {
        let e = HostError::Auth {
            host: "10.0.0.1".into(),
            user: "admin".into(),
            attempts: vec![AuthAttempt {
                method: "password".into(),
                reason: "the server rejected the password".into(),
            }],
        };
        let hint = e.hint().unwrap();
        assert!(hint.contains("password for admin is wrong"), "{hint}");
        assert!(
            !hint.contains("authorized_keys") && !hint.contains("ssh-agent"),
            "{hint}"
        );
        let off = HostError::Auth {
            host: "10.0.0.1".into(),
            user: "admin".into(),
            attempts: vec![AuthAttempt {
                method: "password".into(),
                reason: "the server does not accept passwords (it offers: publickey)".into(),
            }],
        };
        assert!(off.hint().unwrap().contains("PasswordAuthentication"));
    }

    #[test]
    fn command_failed_shows_status_and_stderr() {
        let e = HostError::CommandFailed {
            host: "h".into(),
            command: "false".into(),
            status: Some(1),
            stderr: "boom".into(),
        };
        assert_eq!(e.to_string(), "h: `false` failed (exit status 1): boom");
    }
}
