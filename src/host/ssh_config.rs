//! `~/.ssh/config` support: what OpenSSH would use for a host the answer file names.
//!
//! Field lesson 1 is "plain `ssh` works but the installer can't log in" (see
//! `docs/ssh.md`): the usual cause is an alias, user, port, key or jump host that lives in
//! the admin's `~/.ssh/config`. The SSH layer therefore resolves each host through
//! ssh_config and fills whatever the answer file left unset.
//!
//! Parsing is done by the `ssh2-config` crate (maintained; handles `Host` patterns with
//! negation, `Include`, `Key=value`, quoting and OpenSSH's first-value-wins rule). What
//! it does not do is handled here:
//! - `Match` blocks are not evaluated: they are skipped whole (with a warning), so their
//!   settings are never applied to the wrong host;
//! - the `%h`, `%p`, `%r` and `%%` tokens are expanded in `HostName`;
//! - the user file is consulted before `/etc/ssh/ssh_config`, each value taken from the
//!   first file that sets it (`IdentityFile` accumulates, as in OpenSSH).
//!
//! Settings read: `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`,
//! `IdentityAgent`, `ProxyJump`, `UserKnownHostsFile`, `HashKnownHosts`.
//! `StrictHostKeyChecking` is deliberately ignored: host-key policy is the installer's
//! (`--accept-new-host-keys`), never silently relaxed by a config file.

use ssh2_config::{HostParams, ParseRule, SshConfig};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::host::ssh::SshConfigSource;

/// What ssh_config says about one host. Every field is `None`/empty when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: Option<bool>,
    /// `IdentityAgent`: a socket path, `SSH_AUTH_SOCK` or `none`.
    pub identity_agent: Option<String>,
    /// `ProxyJump`: jump hosts in order (the first is connected to first).
    /// `Some(vec![])` is `ProxyJump none`.
    pub proxy_jump: Option<Vec<JumpHost>>,
    pub user_known_hosts_files: Vec<PathBuf>,
    pub hash_known_hosts: Option<bool>,
}

/// One `ProxyJump` hop: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl JumpHost {
    /// Parses one hop.
    pub fn parse(text: &str) -> Result<JumpHost, String> {
        let t = text.trim();
        let t = t.strip_prefix("ssh://").unwrap_or(t);
        let (user, rest) = match t.rsplit_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, t),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: missing `]`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(parse_port(p, text)?),
                None if after.is_empty() => None,
                None => return Err(format!("`{text}`: unexpected `{after}`")),
            };
            (h.to_owned(), port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(parse_port(p, text)?)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}`: no host name"));
        }
        Ok(JumpHost { user, host, port })
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    p.trim_end_matches('/')
        .parse::<u16>()
        .map_err(|_| format!("`{whole}`: `{p}` is not a port number"))
}

/// The parsed ssh_config file(s), ready to answer queries.
#[derive(Debug, Clone, Default)]
pub struct SshConfigFiles {
    files: Vec<(PathBuf, SshConfig)>,
    /// Things that were ignored, for the log (`Match` blocks).
    pub warnings: Vec<String>,
}

impl SshConfigFiles {
    /// Reads the files `source` names. Missing files are fine; a file that exists but
    /// cannot be read or parsed is an error that names it.
    pub fn load(source: &SshConfigSource) -> Result<SshConfigFiles, String> {
        let paths: Vec<PathBuf> = match source {
            SshConfigSource::Off => Vec::new(),
            SshConfigSource::File(p) => vec![p.clone()],
            SshConfigSource::Default => {
                let mut v = Vec::new();
                if let Some(home) = std::env::home_dir() {
                    v.push(home.join(".ssh").join("config"));
                }
                v.push(PathBuf::from("/etc/ssh/ssh_config"));
                v
            }
        };
        let mut out = SshConfigFiles::default();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let cfg = parse_text(&path, &text, &mut out.warnings)?;
            out.files.push((path, cfg));
        }
        Ok(out)
    }

    /// Parses one file's text (for tests and for callers that hold the text).
    pub fn from_text(path: &Path, text: &str) -> Result<SshConfigFiles, String> {
        let mut out = SshConfigFiles::default();
        let cfg = parse_text(path, text, &mut out.warnings)?;
        out.files.push((path.to_owned(), cfg));
        Ok(out)
    }

    /// What the files say about `host` (the name as typed: an alias or an address).
    pub fn resolve(&self, host: &str) -> Result<HostSettings, String> {
        let mut s = HostSettings::default();
        for (path, cfg) in &self.files {
            let p = cfg.query(host);
            merge(&mut s, &p, host).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(s)
    }
}

fn parse_text(path: &Path, text: &str, warnings: &mut Vec<String>) -> Result<SshConfig, String> {
    let mut cleaned = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let first = line
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .unwrap_or("");
        if first.eq_ignore_ascii_case("match") {
            warnings.push(format!(
                "{}:{}: `Match` blocks are not evaluated; this block is ignored",
                path.display(),
                i + 1
            ));
            // A host block no real host name matches keeps the block's lines away from
            // every host.
            cleaned.push_str("Host installer.ignored-match-block.invalid\n");
        } else {
            cleaned.push_str(line);
            cleaned.push('\n');
        }
    }
    let mut reader = BufReader::new(cleaned.as_bytes());
    SshConfig::default()
        .parse(
            &mut reader,
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

fn first_arg(p: &HostParams, field: &str) -> Option<String> {
    p.unsupported_fields
        .get(field)
        .or_else(|| p.ignored_fields.get(field))
        .and_then(|args| args.first().cloned())
}

fn all_args(p: &HostParams, field: &str) -> Vec<String> {
    p.unsupported_fields
        .get(field)
        .or_else(|| p.ignored_fields.get(field))
        .cloned()
        .unwrap_or_default()
}

fn yes_no(v: Option<String>) -> Option<bool> {
    v.map(|v| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true"))
}

fn merge(s: &mut HostSettings, p: &HostParams, original: &str) -> Result<(), String> {
    if s.host_name.is_none() {
        s.host_name = p.host_name.clone();
    }
    if s.user.is_none() {
        s.user = p.user.clone();
    }
    if s.port.is_none() {
        s.port = p.port;
    }
    if let Some(files) = &p.identity_file {
        for f in files {
            if !s.identity_files.contains(f) {
                s.identity_files.push(f.clone());
            }
        }
    }
    if s.identities_only.is_none() {
        s.identities_only = yes_no(first_arg(p, "identitiesonly"));
    }
    if s.identity_agent.is_none() {
        s.identity_agent = first_arg(p, "identityagent");
    }
    if s.proxy_jump.is_none() {
        if let Some(hops) = &p.proxy_jump {
            if hops.len() == 1 && hops[0].eq_ignore_ascii_case("none") {
                s.proxy_jump = Some(Vec::new());
            } else {
                s.proxy_jump = Some(
                    hops.iter()
                        .map(|h| JumpHost::parse(h))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("ProxyJump {e}"))?,
                );
            }
        }
    }
    if s.user_known_hosts_files.is_empty() {
        s.user_known_hosts_files = all_args(p, "userknownhostsfile")
            .iter()
            .flat_map(|a| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|a| !a.eq_ignore_ascii_case("none"))
            .map(|a| expand_tilde(&a))
            .collect();
    }
    if s.hash_known_hosts.is_none() {
        s.hash_known_hosts = yes_no(first_arg(p, "hashknownhosts"));
    }
    if let Some(h) = &s.host_name {
        if h.contains('%') {
            s.host_name = Some(expand_tokens(h, original, s.port, s.user.as_deref()));
        }
    }
    Ok(())
}

/// Expands `%h` (the name as typed), `%p`, `%r` and `%%` as ssh_config(5) TOKENS does.
fn expand_tokens(value: &str, host: &str, port: Option<u16>, user: Option<&str>) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(&port.unwrap_or(22).to_string()),
            Some('r') => out.push_str(user.unwrap_or("")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `~/x` to `$HOME/x`.
pub fn expand_tilde(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::home_dir() {
            return home.join(rest);
        }
    }
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(text: &str) -> SshConfigFiles {
        SshConfigFiles::from_text(Path::new("/test/config"), text).unwrap()
    }

    #[test]
    fn host_alias_user_port_identity_and_jump() {
        let f = files(
            "# workstation config\n\
             Host db1\n\
             \tHostName 10.20.0.11\n\
             \tUser=admin\n\
             \tPort 2222\n\
             \tIdentityFile /keys/db\n\
             \tProxyJump jump@bastion.corp:2200\n\
             Host *\n\
             \tIdentityFile /keys/default\n\
             \tUser nobody\n\
             \tHashKnownHosts yes\n\
             \tUserKnownHostsFile /kh/one /kh/two\n",
        );
        let s = f.resolve("db1").unwrap();
        assert_eq!(s.host_name.as_deref(), Some("10.20.0.11"));
        assert_eq!(s.user.as_deref(), Some("admin"));
        assert_eq!(s.port, Some(2222));
        assert_eq!(
            s.identity_files,
            vec![PathBuf::from("/keys/db"), PathBuf::from("/keys/default")]
        );
        assert_eq!(
            s.proxy_jump,
            Some(vec![JumpHost {
                user: Some("jump".into()),
                host: "bastion.corp".into(),
                port: Some(2200)
            }])
        );
        assert_eq!(s.hash_known_hosts, Some(true));
        assert_eq!(
            s.user_known_hosts_files,
            vec![PathBuf::from("/kh/one"), PathBuf::from("/kh/two")]
        );
        // Another host only gets the `Host *` values.
        let o = f.resolve("10.0.0.9").unwrap();
        assert_eq!(o.host_name, None);
        assert_eq!(o.user.as_deref(), Some("nobody"));
        assert_eq!(o.proxy_jump, None);
    }

    #[test]
    fn match_blocks_are_skipped_not_misapplied() {
        let f = files(
            "Host a\n  User alice\nMatch host a exec \"true\"\n  User mallory\n  Port 9\nHost b\n  User bob\n",
        );
        let a = f.resolve("a").unwrap();
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert_eq!(a.port, None);
        assert_eq!(f.resolve("b").unwrap().user.as_deref(), Some("bob"));
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("/test/config:3"), "{:?}", f.warnings);
    }

    #[test]
    fn hostname_tokens_and_proxyjump_none() {
        let f = files("Host *.lab\n  HostName %h.example.net\n  ProxyJump none\n");
        let s = f.resolve("n1.lab").unwrap();
        assert_eq!(s.host_name.as_deref(), Some("n1.lab.example.net"));
        assert_eq!(s.proxy_jump, Some(vec![]));
    }

    #[test]
    fn jump_host_forms() {
        assert_eq!(
            JumpHost::parse("ssh://u@[fe80::1]:22").unwrap(),
            JumpHost {
                user: Some("u".into()),
                host: "fe80::1".into(),
                port: Some(22)
            }
        );
        assert_eq!(
            JumpHost::parse("bastion").unwrap(),
            JumpHost {
                user: None,
                host: "bastion".into(),
                port: None
            }
        );
        assert!(JumpHost::parse("h:notaport").is_err());
    }

    #[test]
    fn first_file_wins() {
        let mut a = files("Host x\n  User first\n");
        let b = files("Host x\n  User second\n  Port 23\n");
        a.files.extend(b.files);
        let s = a.resolve("x").unwrap();
        assert_eq!(s.user.as_deref(), Some("first"));
        assert_eq!(s.port, Some(23));
    }
}
