//! k3s join secrets: generated passwords and the `K10<ca-hash>::<user>:<password>` token
//! format (`pkg/clientaccess/token.go`, `docs/cli/token.md`).
//!
//! - The first server gets the bare server password (its CA does not exist yet); k3s then
//!   writes the full token `K10<sha256 of the CA PEM>::server:<pw>` to `server/token`.
//! - Joining servers get that full token, so they pin the cluster CA.
//! - Servers get the bare agent password as `agent-token-file`; agents get the full
//!   `K10…::node:<pw>` from `server/agent-token`. A separate agent token stops agents
//!   from joining as servers.
//!
//! Every password and token lives in a [`Secret`]: never logged, never in an argument list.

use std::fmt;

use rand::RngExt;
use sha2::Digest;
use thiserror::Error;

use crate::secret::Secret;

/// Prefix of a full k3s token (`pkg/clientaccess/token.go`: `tokenPrefix = "K10"`).
pub const TOKEN_PREFIX: &str = "K10";

/// Length of the passwords [`generate_password`] makes (k3s needs none in particular;
/// k3s-host-network.md asks for at least 32).
pub const PASSWORD_LEN: usize = 48;

/// A new random password: [`PASSWORD_LEN`] letters and digits from the OS-seeded CSPRNG,
/// so it needs no quoting in YAML, shells or the token format.
pub fn generate_password() -> Secret {
    let pw: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect();
    Secret::new(pw)
}

/// The SHA-256 (lower-case hex) of the cluster CA, as k3s puts it in tokens: the hash of
/// the exact bytes `/cacerts` serves (`server/tls/server-ca.crt`).
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(ca_pem))
}

/// Who a token authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUser {
    /// `server`: joins a server.
    Server,
    /// `node`: joins an agent.
    Node,
}

impl TokenUser {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUser::Server => "server",
            TokenUser::Node => "node",
        }
    }
}

/// A full k3s token. `Debug` shows the CA hash and user, never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_hash: String,
    user: TokenUser,
    password: Secret,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

impl JoinToken {
    /// The token for `password` on the cluster whose CA is `ca_pem`.
    pub fn new(ca_pem: &[u8], user: TokenUser, password: &Secret) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash(ca_pem),
            user,
            password: password.clone(),
        }
    }

    /// Parses a full token (as read from `server/token` or `server/agent-token`). Surrounding
    /// whitespace (a trailing newline) is ignored. Errors never contain the token.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix(TOKEN_PREFIX) else {
            return Err(TokenError::NotFullForm);
        };
        let Some((hash, creds)) = rest.split_once("::") else {
            return Err(TokenError::Malformed("no `::` after the CA hash"));
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed("the CA hash is not 64 hex digits"));
        }
        let Some((user, password)) = creds.split_once(':') else {
            return Err(TokenError::Malformed("no `user:password` after `::`"));
        };
        let user = match user {
            "server" => TokenUser::Server,
            "node" => TokenUser::Node,
            _ => {
                return Err(TokenError::Malformed(
                    "the user is neither `server` nor `node`",
                ));
            }
        };
        if password.is_empty() || password.contains(char::is_whitespace) {
            return Err(TokenError::Malformed(
                "the password is empty or has whitespace",
            ));
        }
        // Register the whole token and its password for redaction before anything else.
        let _whole = Secret::new(text);
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            user,
            password: Secret::new(password),
        })
    }

    /// The full token text `K10<hash>::<user>:<password>`.
    pub fn to_secret(&self) -> Secret {
        Secret::new(format!(
            "{TOKEN_PREFIX}{}::{}:{}",
            self.ca_hash,
            self.user.as_str(),
            self.password.expose()
        ))
    }

    pub fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    pub fn user(&self) -> TokenUser {
        self.user
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// Checks that the token was made for the cluster whose CA is `ca_pem` (what a joining
    /// node checks against `/cacerts` before it trusts the server).
    pub fn verify_ca(&self, ca_pem: &[u8]) -> Result<(), TokenError> {
        let actual = ca_hash(ca_pem);
        if actual == self.ca_hash {
            Ok(())
        } else {
            Err(TokenError::CaMismatch {
                expected: self.ca_hash.clone(),
                actual,
            })
        }
    }

    /// Checks that the token carries `password` (the one the installer generated).
    pub fn has_password(&self, password: &Secret) -> bool {
        self.password.expose() == password.expose()
    }
}

/// Why a token cannot be used. Never contains the token or its password.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not in the full `K10<ca-hash>::<user>:<password>` form")]
    NotFullForm,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the cluster CA is needed to make a full token, and none was given")]
    NoCa,
    #[error(
        "token CA hash does not match the cluster CA certificate hash (token {expected}, cluster CA {actual})"
    )]
    CaMismatch { expected: String, actual: String },
}

impl TokenError {
    pub fn hint(&self) -> Option<String> {
        match self {
            TokenError::CaMismatch { .. } => Some(
                "the token belongs to another cluster (or the CA was rotated): read it again from the first server's /var/lib/rancher/k3s/server/token".into(),
            ),
            _ => Some("read the token again from /var/lib/rancher/k3s/server/token on a server".into()),
        }
    }
}

/// The secrets a cluster's join needs: generated once, stored by the installer, reused on
/// every rerun.
#[derive(Debug, Clone)]
pub struct ClusterSecrets {
    /// The server join password (short form of the server token).
    pub server_password: Secret,
    /// The agent join password (short form of the agent token).
    pub agent_password: Secret,
}

impl ClusterSecrets {
    /// Two fresh random passwords.
    pub fn generate() -> ClusterSecrets {
        ClusterSecrets {
            server_password: generate_password(),
            agent_password: generate_password(),
        }
    }
}

/// A file whose whole content is a secret (a token file). `Debug` hides the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: String,
    /// Always 0600.
    pub mode: u32,
    pub content: Secret,
}

impl SecretFile {
    fn new(path: &str, content: &str) -> SecretFile {
        SecretFile {
            path: path.to_owned(),
            mode: 0o600,
            content: Secret::new(format!("{content}\n")),
        }
    }

    /// The command that writes it as root: the content travels on stdin (never in the
    /// script, an argument list or a log), lands in a 0600 temporary file and is renamed
    /// into place. Do not upload secrets through `UploadSource::Bytes`: its `Debug` shows
    /// the bytes.
    pub fn write_command(&self) -> crate::host::RemoteCommand {
        let path = crate::host::shell_quote(&self.path);
        let dir = crate::host::shell_quote(
            std::path::Path::new(&self.path)
                .parent()
                .and_then(|p| p.to_str())
                .unwrap_or("/"),
        );
        crate::host::RemoteCommand::new(format!(
            "umask 077 && mkdir -p {dir} && cat > {path}.tmp && chmod {:o} {path}.tmp && mv -f {path}.tmp {path}",
            self.mode
        ))
        .sudo()
        .stdin(crate::host::Stdin::Secret(self.content.clone()))
    }
}

/// The token files a node needs, by role (k3s-host-network.md §1–§2):
/// - first server: `server-token` = the bare server password (its CA does not exist yet),
///   `agent-token` = the bare agent password;
/// - joining server: `server-token` = the full `K10…::server:…` token (pins the CA),
///   `agent-token` = the bare agent password (the same on every server);
/// - agent: `agent-token` = the full `K10…::node:…` token.
///
/// `ca_pem` is the cluster CA (`server/tls/server-ca.crt` or `/cacerts` of a live server);
/// it is needed for every role but the first server.
pub fn token_files(
    role: &super::NodeRole,
    secrets: &ClusterSecrets,
    ca_pem: Option<&[u8]>,
) -> Result<Vec<SecretFile>, TokenError> {
    use super::NodeRole;
    use super::paths::{AGENT_TOKEN_FILE, SERVER_TOKEN_FILE};
    let full = |user, pw: &Secret| -> Result<Secret, TokenError> {
        let ca = ca_pem.ok_or(TokenError::NoCa)?;
        Ok(JoinToken::new(ca, user, pw).to_secret())
    };
    Ok(match role {
        NodeRole::FirstServer => vec![
            SecretFile::new(SERVER_TOKEN_FILE, secrets.server_password.expose()),
            SecretFile::new(AGENT_TOKEN_FILE, secrets.agent_password.expose()),
        ],
        NodeRole::JoiningServer { .. } => vec![
            SecretFile::new(
                SERVER_TOKEN_FILE,
                full(TokenUser::Server, &secrets.server_password)?.expose(),
            ),
            SecretFile::new(AGENT_TOKEN_FILE, secrets.agent_password.expose()),
        ],
        NodeRole::Agent { .. } => vec![SecretFile::new(
            AGENT_TOKEN_FILE,
            full(TokenUser::Node, &secrets.agent_password)?.expose(),
        )],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

    #[test]
    fn generated_passwords_are_long_random_and_plain() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn format_then_parse_round_trips() {
        let pw = generate_password();
        let t = JoinToken::new(CA, TokenUser::Server, &pw);
        let text = t.to_secret();
        assert!(text.expose().starts_with("K10"));
        assert!(text.expose().contains("::server:"));
        assert_eq!(text.expose().len(), 3 + 64 + 2 + 6 + 1 + PASSWORD_LEN);
        let back = JoinToken::parse(&format!("{}\n", text.expose())).unwrap();
        assert_eq!(back, t);
        assert!(back.has_password(&pw));
        assert_eq!(back.user(), TokenUser::Server);
    }

    #[test]
    fn node_tokens_parse() {
        let text = format!("K10{}::node:abcdefghijklmnop", ca_hash(CA));
        let t = JoinToken::parse(&text).unwrap();
        assert_eq!(t.user(), TokenUser::Node);
        assert!(t.verify_ca(CA).is_ok());
    }

    #[test]
    fn the_ca_hash_is_checked_against_the_ca_pem() {
        let t = JoinToken::new(CA, TokenUser::Node, &Secret::new("pw-pw-pw-pw"));
        assert_eq!(t.ca_hash(), ca_hash(CA));
        let other = b"-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n";
        let err = t.verify_ca(other).unwrap_err();
        assert!(matches!(err, TokenError::CaMismatch { .. }));
        assert!(err.to_string().contains("does not match"));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let secretish = "hunter2hunter2";
        for bad in [
            secretish.to_string(),
            format!("K10abc::server:{secretish}"),
            format!("K10{}:server:{secretish}", "a".repeat(64)),
            format!("K10{}::admin:{secretish}", "a".repeat(64)),
            format!("K10{}::server:", "a".repeat(64)),
        ] {
            let err = JoinToken::parse(&bad).unwrap_err();
            assert!(!err.to_string().contains(secretish), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let t = JoinToken::new(CA, TokenUser::Server, &Secret::new("very-secret-password"));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("very-secret-password"), "{dbg}");
        assert!(dbg.contains(&ca_hash(CA)));
        assert_eq!(format!("{}", t.to_secret()), "***");
    }

    #[test]
    fn token_files_follow_the_role() {
        use crate::k3s::NodeRole;
        let secrets = ClusterSecrets::generate();
        let first = token_files(&NodeRole::FirstServer, &secrets, None).unwrap();
        assert_eq!(first[0].path, "/etc/rancher/k3s/server-token");
        assert_eq!(
            first[0].content.expose(),
            format!("{}\n", secrets.server_password.expose())
        );
        assert_eq!(first[1].path, "/etc/rancher/k3s/agent-token");
        assert!(first.iter().all(|f| f.mode == 0o600));

        let url = "https://10.0.0.11:6443".to_string();
        let join = NodeRole::JoiningServer {
            server_url: url.clone(),
        };
        assert_eq!(
            token_files(&join, &secrets, None).unwrap_err(),
            TokenError::NoCa
        );
        let files = token_files(&join, &secrets, Some(CA)).unwrap();
        let t = JoinToken::parse(files[0].content.expose()).unwrap();
        assert_eq!(t.user(), TokenUser::Server);
        assert!(t.has_password(&secrets.server_password));
        t.verify_ca(CA).unwrap();
        assert_eq!(
            files[1].content.expose(),
            format!("{}\n", secrets.agent_password.expose())
        );

        let agent = token_files(&NodeRole::Agent { server_url: url }, &secrets, Some(CA)).unwrap();
        assert_eq!(agent.len(), 1);
        assert_eq!(agent[0].path, "/etc/rancher/k3s/agent-token");
        let t = JoinToken::parse(agent[0].content.expose()).unwrap();
        assert_eq!(t.user(), TokenUser::Node);
        assert!(t.has_password(&secrets.agent_password));
    }

    #[test]
    fn secret_files_are_written_over_stdin_not_in_the_script() {
        let secrets = ClusterSecrets::generate();
        let files = token_files(&crate::k3s::NodeRole::FirstServer, &secrets, None).unwrap();
        let cmd = files[0].write_command();
        assert!(cmd.sudo);
        assert!(
            !cmd.script.contains(secrets.server_password.expose()),
            "{}",
            cmd.script
        );
        assert!(cmd.script.contains("umask 077"));
        assert!(
            cmd.script
                .contains("chmod 600 /etc/rancher/k3s/server-token.tmp")
        );
        match &cmd.stdin {
            Some(crate::host::Stdin::Secret(s)) => assert_eq!(s, &files[0].content),
            other => panic!("expected a secret on stdin, got {other:?}"),
        }
        assert!(!format!("{:?}", files[0]).contains(secrets.server_password.expose()));
    }

    #[test]
    fn tokens_are_redacted_from_logs_once_created() {
        let pw = generate_password();
        let t = JoinToken::new(CA, TokenUser::Node, &pw).to_secret();
        let line = format!("k3s said: bad token {}", t.expose());
        let red = crate::secret::redact(&line);
        assert!(!red.contains(pw.expose()), "{red}");
    }
}
