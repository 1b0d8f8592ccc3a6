//! Secrets: values that must never reach a log line, an error, an event, a support bundle
//! or a process argument list.
//!
//! Two mechanisms work together:
//! - [`Secret`] wraps a value so that `Debug` and `Display` print `***` instead of it;
//!   the only way to the value is [`Secret::expose`], which is easy to grep for.
//! - Every secret created through [`Secret::new`] is also *registered*, and [`redact`]
//!   replaces each registered value (and a few well-known secret shapes such as k3s
//!   tokens and private-key PEM blocks) in any text. The log file writer and the
//!   support bundle pass every line through [`redact`], so a secret that slips into a
//!   command's output is still caught.

use std::fmt;
use std::sync::{Mutex, OnceLock};

/// The text that replaces a secret wherever one would have appeared.
pub const MASK: &str = "***";

/// Secrets shorter than this are not registered for text replacement: replacing every
/// occurrence of a 3-character password in a log would mangle unrelated text and, worse,
/// reveal the password by where the masks appear.
const MIN_REGISTERED_LEN: usize = 6;

fn registry() -> &'static Mutex<Vec<String>> {
    static REG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers `value` so that [`redact`] masks it from now on.
pub fn register(value: &str) {
    if value.len() < MIN_REGISTERED_LEN {
        return;
    }
    if let Ok(mut reg) = registry().lock()
        && !reg.iter().any(|v| v == value)
    {
        reg.push(value.to_owned());
        // Longest first, so a secret that contains another is masked whole.
        reg.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// A value that is never printed. `Clone` is allowed; `Serialize` is deliberately not.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps and registers a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The secret itself. Every call site is a place where a secret leaves its wrapper.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Masks every registered secret and every well-known secret shape in `text`:
/// - k3s tokens `K10<64 hex>::user:password` (the whole token);
/// - PEM private-key blocks (`-----BEGIN ... PRIVATE KEY-----` to the matching END);
/// - kubeconfig `client-key-data:` and `token:` values;
/// - `password`/`passphrase`/`token` values in `key: value` or `key=value` form.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    if let Ok(reg) = registry().lock() {
        for secret in reg.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
    }
    out = redact_k3s_tokens(&out);
    out = redact_pem_private_keys(&out);
    redact_key_values(&out)
}

fn redact_k3s_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("K10") {
        out.push_str(&rest[..pos]);
        let cand = &rest[pos..];
        let hex_len = cand[3..]
            .bytes()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if hex_len == 64 && cand[3 + 64..].starts_with("::") {
            let end = cand
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(cand.len());
            out.push_str(MASK);
            rest = &cand[end..];
        } else {
            out.push_str("K10");
            rest = &cand[3..];
        }
    }
    out.push_str(rest);
    out
}

fn redact_pem_private_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let header_end = match rest[start..]
            .find("-----\n")
            .or(rest[start + 11..].find("-----").map(|p| p + 11))
        {
            Some(p) => start + p,
            None => break,
        };
        let header = &rest[start..header_end];
        if !header.contains("PRIVATE KEY") {
            out.push_str(&rest[..header_end]);
            rest = &rest[header_end..];
            continue;
        }
        out.push_str(&rest[..start]);
        match rest[header_end..].find("-----END ") {
            Some(end_rel) => {
                let end_start = header_end + end_rel;
                let end = rest[end_start + 9..]
                    .find("-----")
                    .map(|p| end_start + 9 + p + 5)
                    .unwrap_or(rest.len());
                out.push_str("-----BEGIN PRIVATE KEY-----\n");
                out.push_str(MASK);
                out.push_str("\n-----END PRIVATE KEY-----");
                rest = &rest[end..];
            }
            None => {
                out.push_str(MASK);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

const SECRET_KEYS: &[&str] = &[
    "client-key-data",
    "password",
    "passphrase",
    "token",
    "agent-token",
    "K3S_TOKEN",
    "K3S_AGENT_TOKEN",
];

fn redact_key_values(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        lines.push(redact_key_value_line(line));
    }
    lines.concat()
}

fn redact_key_value_line(line: &str) -> String {
    let trimmed = line.trim_start();
    for key in SECRET_KEYS {
        for sep in [": ", "=", ":"] {
            let prefix = format!("{key}{sep}");
            let stripped = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            let stripped = stripped.strip_prefix("--").unwrap_or(stripped);
            if let Some(value) = stripped.strip_prefix(prefix.as_str()) {
                let value = value.trim_end_matches(['\n', '\r']);
                if value.trim().is_empty()
                    || value.trim() == MASK
                    || value.trim().starts_with("${")
                    || value.trim() == "|"
                    || value.trim().starts_with('/')
                {
                    return line.to_owned();
                }
                let head_len = line.len() - stripped.len() + prefix.len();
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                return format!("{}{}{}", &line[..head_len], MASK, nl);
            }
        }
    }
    line.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(format!("{s}"), MASK);
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn registered_secrets_are_masked_in_any_text() {
        let _s = Secret::new("correct-horse-battery");
        let out = redact("sudo said: correct-horse-battery is wrong");
        assert_eq!(out, "sudo said: *** is wrong");
    }

    #[test]
    fn short_secrets_are_not_registered() {
        let _s = Secret::new("abc");
        assert_eq!(redact("abc def"), "abc def");
    }

    #[test]
    fn k3s_tokens_are_masked() {
        let tok = format!("K10{}::server:s3cr3tpassword", "a".repeat(64));
        let out = redact(&format!("joining with {tok} now"));
        assert_eq!(out, "joining with *** now");
        // Not a token: too short a hash.
        assert_eq!(redact("K10abc::x"), "K10abc::x");
    }

    #[test]
    fn pem_private_keys_are_masked() {
        let text = "before\n-----BEGIN OPENSSH PRIVATE KEY-----\nAAAABBBB\nCCCC\n-----END OPENSSH PRIVATE KEY-----\nafter";
        let out = redact(text);
        assert!(!out.contains("AAAABBBB"), "{out}");
        assert!(out.starts_with("before\n"));
        assert!(out.ends_with("\nafter"));
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert_eq!(redact(cert), cert);
    }

    #[test]
    fn key_value_secrets_are_masked() {
        assert_eq!(
            redact("    client-key-data: LS0tLS1CRUdJTi\n"),
            "    client-key-data: ***\n"
        );
        assert_eq!(redact("token: abcdefgh"), "token: ***");
        assert_eq!(redact("--token=abcdefgh"), "--token=***");
        assert_eq!(
            redact("token-file: /etc/rancher/k3s/server-token"),
            "token-file: /etc/rancher/k3s/server-token"
        );
        assert_eq!(redact("password: ${SUDO_PW}"), "password: ${SUDO_PW}");
    }
}
