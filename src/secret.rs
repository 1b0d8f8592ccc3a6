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

/// Every registered secret, longest first (for the support bundle's literal matching and
/// its final scan). The values stay in memory; callers must never write them anywhere.
pub fn registered() -> Vec<String> {
    registry().lock().map(|r| r.clone()).unwrap_or_default()
}

/// The forms in which `value` may appear in collected text: raw, base64 (standard and
/// URL-safe alphabets, at each of the 3 byte offsets, so a secret inside a larger encoded
/// blob is found too), percent-encoded and JSON-escaped. Deduplicated; fragments shorter
/// than [`MIN_REGISTERED_LEN`] are left out (they would match unrelated text).
pub fn encoded_forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = vec![value.to_owned()];
    let bytes = value.as_bytes();
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut input = vec![0u8; offset];
            input.extend_from_slice(bytes);
            let enc = engine.encode(&input);
            // The characters that depend only on the value's bytes: skip those mixing in
            // the leading filler and the trailing partial sextet.
            let start = [0, 2, 3][offset];
            let end = (input.len() * 8) / 6;
            if end > start && end - start >= MIN_REGISTERED_LEN {
                forms.push(enc[start..end].to_owned());
            }
        }
    }
    let mut pct = String::new();
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            pct.push(char::from(*b));
        } else {
            pct.push_str(&format!("%{b:02X}"));
        }
    }
    forms.push(pct.clone());
    forms.push(pct.to_ascii_lowercase().replace("%20", "+"));
    if let Ok(json) = serde_json::to_string(value) {
        let inner = json.trim_matches('"').to_owned();
        // Escaped twice, as in a JSON string that holds JSON (a log line in a pod log).
        if let Ok(twice) = serde_json::to_string(&inner) {
            forms.push(twice.trim_matches('"').to_owned());
        }
        forms.push(inner);
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

/// Masks every registered secret and every well-known secret shape in `text`:
/// - every registered secret, in each of its [`encoded_forms`];
/// - k3s tokens `K10<64 hex>::user:password` (the whole token);
/// - PEM private-key blocks (`-----BEGIN ... PRIVATE KEY-----` to the matching END);
/// - kubeconfig `client-key-data:` and `token:` values;
/// - `password`/`passphrase`/`token` values in `key: value` or `key=value` form.
pub fn redact(text: &str) -> String {
    redact_counted(text, &[]).0
}

/// How many replacements each rule of [`redact_counted`] made.
pub type RuleCounts = std::collections::BTreeMap<&'static str, usize>;

/// [`redact`], also masking `extra` literals (in all their forms) and counting what each
/// rule replaced (the support bundle's `redactions.json`: counts only, never values).
///
/// Rules: `known-secret`, `k3s-token`, `pem-private-key`, `key-value`.
pub fn redact_counted(text: &str, extra: &[String]) -> (String, RuleCounts) {
    let mut counts = RuleCounts::new();
    let mut literals: Vec<String> = registered();
    literals.extend(
        extra
            .iter()
            .filter(|e| e.len() >= MIN_REGISTERED_LEN)
            .cloned(),
    );
    let mut out = text.to_owned();
    let mut forms: Vec<String> = literals.iter().flat_map(|l| encoded_forms(l)).collect();
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    for form in &forms {
        let n = out.matches(form.as_str()).count();
        if n > 0 {
            out = out.replace(form.as_str(), MASK);
            *counts.entry("known-secret").or_default() += n;
        }
    }
    let mut stage = |name: &'static str, out: &mut String, f: fn(&str) -> String| {
        let before = out.matches(MASK).count();
        let next = f(out);
        let after = next.matches(MASK).count();
        if after > before {
            *counts.entry(name).or_default() += after - before;
        }
        *out = next;
    };
    stage("k3s-token", &mut out, redact_k3s_tokens);
    stage("pem-private-key", &mut out, redact_pem_private_keys);
    stage("key-value", &mut out, redact_key_values);
    for rule in patterns() {
        let mut n = 0usize;
        let next = rule.re.replace_all(&out, |c: &regex::Captures<'_>| {
            let whole = c.get(0).map_or("", |m| m.as_str());
            let value = c.name("v").map_or(whole, |m| m.as_str());
            let pre = c.name("pre").map_or("", |m| m.as_str());
            if !(rule.keep)(pre, value) {
                return whole.to_owned();
            }
            n += 1;
            let post = c.name("post").map_or("", |m| m.as_str());
            format!("{pre}{MASK}{post}")
        });
        if n > 0 {
            out = next.into_owned();
            *counts.entry(rule.id).or_default() += n;
        }
    }
    (out, counts)
}

/// A secret-shaped pattern: `v` (or the whole match) is masked, `pre` and `post` kept.
struct Pattern {
    id: &'static str,
    re: regex::Regex,
    /// Whether a matched value really is to be masked (not already a mask, not a path).
    keep: fn(&str, &str) -> bool,
}

fn real_value(_pre: &str, v: &str) -> bool {
    let v = v.trim_matches(['"', '\'', ' ']);
    !(v.is_empty() || v.starts_with(MASK) || v.starts_with('/') || v.starts_with("${"))
}

/// For `key: value` anywhere in a line: a real value, unless the key is one of the answer
/// file's field paths (`spec.ssh.sudo.password: environment variable ... not set`): those
/// are the installer's own messages about a field, never its value (a value is masked by
/// what it is, through the registered secrets).
fn inline_value(pre: &str, v: &str) -> bool {
    let key = pre.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    real_value(pre, v) && !key.starts_with("spec.")
}

fn base64_private_key(_pre: &str, v: &str) -> bool {
    use base64::Engine as _;
    let cut = &v[..v.len() - v.len() % 4];
    base64::engine::general_purpose::STANDARD
        .decode(cut)
        .map(|d| String::from_utf8_lossy(&d).contains("PRIVATE KEY"))
        .unwrap_or(true)
}

/// The secret shapes beyond the hand-written ones above (ids appear in `redactions.json`).
fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        const KEYS: &str = r"pass(?:word|wd|phrase)?|secret|token|api[_-]?key|credentials?|private[_-]?key";
        // (rule id, regex, whether a match is a real value and not a placeholder)
        type Rule = (&'static str, String, fn(&str, &str) -> bool);
        let table: [Rule; 8] = [
            ("jwt", r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}".into(), real_value),
            ("auth-header", r"(?i)(?P<pre>(?:authorization|proxy-authorization)[\x22']?\s*[:=]\s*[\x22']?(?:bearer|basic)\s+)(?P<v>[A-Za-z0-9._~+/=-]+)".into(), real_value),
            ("url-credentials", r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://)(?P<v>[^/\s:@]+:[^/\s@]+)(?P<post>@)".into(), real_value),
            ("json-secret", format!(r#"(?i)(?P<pre>"[A-Za-z0-9_.-]*(?:{KEYS})"\s*:\s*")(?P<v>(?:[^"\\]|\\.)+)(?P<post>")"#), real_value),
            ("json-escaped-secret", format!(r#"(?i)(?P<pre>\\+"[A-Za-z0-9_.-]*(?:{KEYS})\\+"\s*:\s*\\+")(?P<v>[^"\\]+)(?P<post>\\+")"#), real_value),
            ("key-value-inline", format!(r#"(?i)(?P<pre>(?:^|[\s,;&?({{])-{{0,2}}[A-Za-z0-9_.-]*(?:{KEYS})\s*[=:]\s*)(?P<v>"[^"\n]*"|'[^'\n]*'|[^\s"',;&)}}]+)"#), inline_value),
            ("base64-private-key", r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]{16,}".into(), base64_private_key),
            ("aws-access-key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b".into(), real_value),
        ];
        table
            .into_iter()
            .filter_map(|(id, re, keep)| {
                regex::Regex::new(&re).ok().map(|re| Pattern { id, re, keep })
            })
            .collect()
    })
}

/// The ids of every rule [`redact_counted`] applies, with what each masks.
pub const RULES: &[(&str, &str)] = &[
    (
        "known-secret",
        "a secret the installer knows (answer file, generated, k3s token), raw, base64, URL-encoded or JSON-escaped",
    ),
    ("k3s-token", "a k3s join token K10<hash>::user:password"),
    ("pem-private-key", "a PEM private-key block"),
    (
        "key-value",
        "a password/token/client-key-data value at the start of a line",
    ),
    ("jwt", "a JSON Web Token (service-account tokens)"),
    (
        "auth-header",
        "the credentials of a Bearer or Basic Authorization header",
    ),
    ("url-credentials", "user:password in a URL"),
    (
        "json-secret",
        "a JSON value whose key names a password, token, secret or API key",
    ),
    (
        "json-escaped-secret",
        "the same inside an escaped JSON string",
    ),
    (
        "key-value-inline",
        "password=, token:, apiKey= ... values anywhere in a line",
    ),
    ("base64-private-key", "a base64-encoded PEM private key"),
    ("aws-access-key", "an AWS access key id"),
];

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
    fn registered_secrets_are_masked_in_every_encoding() {
        use base64::Engine as _;
        let s = "canary-Pa ss/w\"rd+1";
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x{s}yz"));
        let url = "canary-Pa%20ss%2Fw%22rd%2B1";
        let json = serde_json::to_string(s).unwrap();
        for text in [
            s.to_owned(),
            b64.clone(),
            url.to_owned(),
            json.clone(),
            serde_json::to_string(&json).unwrap(),
        ] {
            let (out, counts) = redact_counted(&text, &[s.to_owned()]);
            assert!(
                counts.get("known-secret").copied().unwrap_or(0) >= 1,
                "{text} -> {out}"
            );
            assert!(
                !out.contains(s) && !out.contains(&b64[4..20]),
                "{text} -> {out}"
            );
        }
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
    fn every_pattern_compiles_and_is_documented() {
        assert_eq!(patterns().len(), 8);
        for p in patterns() {
            assert!(RULES.iter().any(|(id, _)| *id == p.id), "{}", p.id);
        }
    }

    #[test]
    fn secret_shapes_are_masked_and_counted() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "jwt",
                "tok eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ end",
                "c2lnbmF0dXJl",
            ),
            (
                "auth-header",
                "Authorization: Bearer abcDEF123456789",
                "abcDEF123456789",
            ),
            (
                "auth-header",
                "authorization: basic dXNlcjpwYXNzd29yZA==",
                "dXNlcjpwYXNzd29yZA",
            ),
            (
                "url-credentials",
                "datastore https://admin:hunter2hunter@db:5432/k3s",
                "hunter2hunter",
            ),
            (
                "json-secret",
                r#"{"level":"info","apiKey":"ak-123456789","x":1}"#,
                "ak-123456789",
            ),
            (
                "json-escaped-secret",
                r#"{"log":"{\"apiKey\":\"ak-987654321\"}"}"#,
                "ak-987654321",
            ),
            (
                "key-value-inline",
                "Dec 02 host root[1]: token=tk-5555555555 done",
                "tk-5555555555",
            ),
            (
                "key-value-inline",
                "/usr/bin/app --db-password=pw-7777777 --x",
                "pw-7777777",
            ),
            ("key-value-inline", "sudo password: letmein", "letmein"),
            (
                "aws-access-key",
                "key AKIAABCDEFGHIJKLMNOP",
                "AKIAABCDEFGHIJKLMNOP",
            ),
        ];
        // The installer's own words after a field named `password` stay readable.
        let msg = "answers.yaml:15:17: spec.ssh.sudo.password: environment variable ${X} not set";
        assert_eq!(redact(msg), msg);
        for (rule, text, secret) in cases {
            let (out, counts) = redact_counted(text, &[]);
            assert!(!out.contains(secret), "{rule}: {text} -> {out}");
            assert!(
                counts.get(rule).copied().unwrap_or(0) >= 1,
                "{rule}: {counts:?} {out}"
            );
        }
        // Paths and placeholders are not secrets.
        let (out, _) = redact_counted("agent-token-file=/etc/rancher/k3s/agent-token", &[]);
        assert_eq!(out, "agent-token-file=/etc/rancher/k3s/agent-token");
        // A base64 certificate stays; a base64 private key goes.
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIabc\n-----END EC PRIVATE KEY-----\n");
        let cert = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nMIIBabc\n-----END CERTIFICATE-----\n");
        assert!(!redact(&format!("x: {key}")).contains(&key[..30]));
        assert!(redact(&format!("certificate-authority-data: {cert}")).contains(&cert));
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
