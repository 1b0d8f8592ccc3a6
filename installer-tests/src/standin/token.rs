//! Join tokens as k3s parses, formats and checks them.
//!
//! Modelled on `pkg/clientaccess/token.go` (k3s release-1.36):
//! - `K10<sha256 hex of the CA bundle>::<user>:<password>`; a bare string is a password with no
//!   CA hash (`parseToken` turns it into `K10:::<password>`), a `abcdef.0123456789abcdef` string is
//!   a kubeadm-style bootstrap token.
//! - Errors: `token must not be empty`, `invalid token CA hash length`, `invalid token format`.
//! - `hashCA`: for a single-certificate bundle, the SHA-256 of the PEM file bytes.
//! - `validateCAHash`: `token CA hash does not match the Cluster CA certificate hash: %s != %s`;
//!   without a hash, the warning that the token does not include a CA hash.

use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "K10";
const CA_HASH_LEN: usize = 64;

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The CA hash, empty when the token has none.
    pub ca_hash: String,
    /// `server`, `node`, or empty for a bare password.
    pub username: String,
    /// The password (or the bootstrap token string).
    pub password: String,
    /// True for a kubeadm-style bootstrap token.
    pub bootstrap: bool,
}

impl std::fmt::Debug for TokenInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenInfo")
            .field("ca_hash", &self.ca_hash)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `kubeadm.NewBootstrapTokenString`: `[a-z0-9]{6}.[a-z0-9]{16}`.
fn is_bootstrap_token(s: &str) -> bool {
    let Some((id, secret)) = s.split_once('.') else {
        return false;
    };
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    ok(id, 6) && ok(secret, 16)
}

/// `parseToken`.
pub fn parse(token: &str) -> Result<TokenInfo, String> {
    if token.is_empty() {
        return Err("token must not be empty".into());
    }
    let full = if token.starts_with(TOKEN_PREFIX) {
        token.to_string()
    } else if is_bootstrap_token(token) {
        format!("{TOKEN_PREFIX}::{token}")
    } else {
        format!("{TOKEN_PREFIX}:::{token}")
    };
    let rest = &full[TOKEN_PREFIX.len()..];
    let (hash, creds) = match rest.split_once("::") {
        Some((h, c)) => {
            if !h.is_empty() && h.len() != CA_HASH_LEN {
                return Err("invalid token CA hash length".into());
            }
            (h.to_string(), c.to_string())
        }
        None => (String::new(), rest.to_string()),
    };
    if is_bootstrap_token(&creds) {
        return Ok(TokenInfo {
            ca_hash: hash,
            username: String::new(),
            password: creds,
            bootstrap: true,
        });
    }
    match creds.split_once(':') {
        Some((user, pw)) if !pw.is_empty() => Ok(TokenInfo {
            ca_hash: hash,
            username: user.to_string(),
            password: pw.to_string(),
            bootstrap: false,
        }),
        _ => Err("invalid token format".into()),
    }
}

/// `hashCA` for a single-certificate bundle: SHA-256 of the file bytes, hex.
pub fn hash_ca(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// `FormatTokenBytes`: `K10<hash>::<creds>`.
pub fn format(creds: &str, ca_pem: &[u8]) -> String {
    format!("{TOKEN_PREFIX}{}::{creds}", hash_ca(ca_pem))
}

/// The outcome of `validateCAHash` against the CA bundle a server returned from `/cacerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCheck {
    /// The hash matched.
    Ok,
    /// No hash in the token: k3s logs a warning and goes on without pinning the CA.
    NoHash,
    /// The error k3s returns.
    Mismatch(String),
}

/// `validateCAHash`.
pub fn check_ca(info: &TokenInfo, ca_pem: &[u8]) -> CaCheck {
    if info.ca_hash.is_empty() {
        return CaCheck::NoHash;
    }
    let got = hash_ca(ca_pem);
    if got == info.ca_hash {
        CaCheck::Ok
    } else {
        CaCheck::Mismatch(format!(
            "token CA hash does not match the Cluster CA certificate hash: {} != {}",
            info.ca_hash, got
        ))
    }
}

/// The warning k3s logs when the token has no CA hash (`validateCAHash`).
pub const NO_HASH_WARNING: &str = "Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. Use the full token from the server's node-token file to enable Cluster CA validation.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_short_and_bootstrap_tokens() {
        let h = "a".repeat(64);
        let t = parse(&format!("K10{h}::server:secret")).unwrap();
        assert_eq!(
            (t.ca_hash.as_str(), t.username.as_str(), t.password.as_str()),
            (h.as_str(), "server", "secret")
        );
        let t = parse("justapassword").unwrap();
        assert_eq!(
            (t.ca_hash.as_str(), t.username.as_str(), t.password.as_str()),
            ("", "", "justapassword")
        );
        let t = parse("abcdef.0123456789abcdef").unwrap();
        assert!(t.bootstrap);
        assert_eq!(parse("").unwrap_err(), "token must not be empty");
        assert_eq!(
            parse("K10abc::server:x").unwrap_err(),
            "invalid token CA hash length"
        );
        assert_eq!(
            parse(&format!("K10{h}::server:")).unwrap_err(),
            "invalid token format"
        );
        assert_eq!(
            parse(&format!("K10{h}::nocolon")).unwrap_err(),
            "invalid token format"
        );
    }

    #[test]
    fn ca_hash_is_sha256_of_the_pem_bytes() {
        let pem = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        let tok = format("server:pw", pem);
        let info = parse(&tok).unwrap();
        assert_eq!(check_ca(&info, pem), CaCheck::Ok);
        let CaCheck::Mismatch(msg) = check_ca(&info, b"other") else {
            panic!("expected a mismatch")
        };
        assert!(msg.starts_with("token CA hash does not match the Cluster CA certificate hash: "));
        assert_eq!(check_ca(&parse("pw").unwrap(), pem), CaCheck::NoHash);
    }
}
