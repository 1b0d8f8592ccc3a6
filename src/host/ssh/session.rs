//! Opening one SSH connection: resolving the spec through ssh_config, reaching the host
//! (directly or through jump hosts), verifying its host key, and logging in.
//!
//! Jump hosts: russh has no ProxyJump, so a hop is a `direct-tcpip` channel opened on the
//! previous hop's connection, and the next SSH session runs over that channel with
//! `client::connect_stream` (as crates.md notes). Each hop verifies its own host key and
//! logs in with its own credentials, exactly like `ssh -J`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{MethodKind, MethodSet};

use super::spec::{
    AcceptedKeyStore, AuthMethod, ConnectionSpec, HostKeyDecision, HostKeyInfo, HostKeyPolicy,
    SshPrompt,
};
use crate::host::known_hosts::{self, Verdict};
use crate::host::ssh_config::{HostSettings, SshConfigFiles, expand_tilde};
use crate::host::{AuthAttempt, HostError};
use crate::report::Reporter;
use crate::secret::Secret;

/// Jump-host chains longer than this are refused (they are almost always a `Host *`
/// ProxyJump that also matches the jump host itself).
const MAX_HOPS: usize = 5;

/// A spec with ssh_config and OpenSSH defaults applied: everything needed to connect.
#[derive(Clone)]
pub(crate) struct Resolved {
    /// Display name for errors and events.
    pub name: String,
    /// Address to connect to (as seen from the previous hop, if any).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: Vec<AuthMethod>,
    pub known_hosts: Vec<PathBuf>,
    /// Where accepted keys go, and whether to hash them there.
    pub write_accepted: Option<(PathBuf, bool)>,
    pub pin: Option<String>,
    pub policy: HostKeyPolicy,
    pub prompt: Option<Arc<dyn SshPrompt>>,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub bastion: Option<Box<Resolved>>,
}

impl Resolved {
    /// `user@host:port`, for error messages.
    pub fn addr(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Applies ssh_config under the explicit values of `spec`.
pub(crate) fn resolve(spec: &ConnectionSpec) -> Result<Resolved, HostError> {
    let cfg = SshConfigFiles::load(&spec.ssh_config).map_err(|e| HostError::Connect {
        host: spec.name.clone(),
        addr: spec.address.clone(),
        reason: e,
    })?;
    resolve_with(spec, &cfg, 0)
}

pub(crate) fn resolve_with(
    spec: &ConnectionSpec,
    cfg: &SshConfigFiles,
    depth: usize,
) -> Result<Resolved, HostError> {
    let bad = |reason: String| HostError::Connect {
        host: spec.name.clone(),
        addr: spec.address.clone(),
        reason,
    };
    if depth > MAX_HOPS {
        return Err(bad(format!(
            "more than {MAX_HOPS} jump hosts: check ProxyJump in ~/.ssh/config (a `Host *` ProxyJump also applies to the jump host itself; exclude it with `Host * !bastion`)"
        )));
    }
    let s: HostSettings = cfg.resolve(&spec.address).map_err(bad)?;
    let host = s.host_name.clone().unwrap_or_else(|| spec.address.clone());
    let port = spec.port.or(s.port).unwrap_or(22);
    let user = match spec.user.clone().or(s.user.clone()) {
        Some(u) => u,
        None => local_user_name().ok_or_else(|| {
            bad(
                "no user given and the local user name is unknown; set `user:` for this host"
                    .into(),
            )
        })?,
    };

    let auth = if spec.auth.is_empty() {
        default_auth(&s)
    } else {
        spec.auth.clone()
    };

    let mut known_hosts: Vec<PathBuf> = if !spec.known_hosts.is_empty() {
        spec.known_hosts.clone()
    } else if !s.user_known_hosts_files.is_empty() {
        s.user_known_hosts_files.clone()
    } else {
        match std::env::home_dir() {
            Some(h) => vec![
                h.join(".ssh").join("known_hosts"),
                h.join(".ssh").join("known_hosts2"),
            ],
            None => Vec::new(),
        }
    };
    let write_accepted = match &spec.accepted_key_store {
        AcceptedKeyStore::ReportOnly => None,
        AcceptedKeyStore::KnownHosts(p) => {
            let path = p.clone().or_else(|| known_hosts.first().cloned());
            path.map(|p| {
                let hashed =
                    known_hosts::uses_hashing(&p).unwrap_or(s.hash_known_hosts.unwrap_or(false));
                (p, hashed)
            })
        }
    };
    let system = PathBuf::from("/etc/ssh/ssh_known_hosts");
    if !known_hosts.contains(&system) {
        known_hosts.push(system);
    }

    let bastion = match &spec.bastion {
        Some(b) => Some(Box::new(resolve_with(b, cfg, depth + 1)?)),
        None => match &s.proxy_jump {
            Some(hops) if !hops.is_empty() => {
                // `ProxyJump a,b`: connect to a, through a to b, through b to the host.
                let mut prev: Option<Box<Resolved>> = None;
                for hop in hops {
                    if hop.host == spec.address || Some(&hop.host) == s.host_name.as_ref() {
                        continue;
                    }
                    let mut j = ConnectionSpec::new(hop.host.clone());
                    j.name = format!("{} (jump host for {})", hop.host, spec.name);
                    j.port = hop.port;
                    j.user = hop.user.clone();
                    j.auth = spec.auth.clone();
                    j.known_hosts = spec.known_hosts.clone();
                    j.host_key_policy = spec.host_key_policy;
                    j.accepted_key_store = spec.accepted_key_store.clone();
                    j.keepalive = spec.keepalive;
                    j.connect_timeout = spec.connect_timeout;
                    j.prompt = spec.prompt.clone();
                    let mut r = resolve_with(&j, cfg, depth + 1)?;
                    if let Some(p) = prev.take() {
                        r.bastion = Some(p);
                    }
                    prev = Some(Box::new(r));
                }
                prev
            }
            _ => None,
        },
    };

    Ok(Resolved {
        name: spec.name.clone(),
        host,
        port,
        user,
        auth,
        known_hosts,
        write_accepted,
        pin: spec.host_key_pin.clone(),
        policy: spec.host_key_policy,
        prompt: spec.prompt.clone(),
        keepalive: spec.keepalive,
        connect_timeout: spec.connect_timeout,
        bastion,
    })
}

/// OpenSSH's defaults: the agent, then ssh_config's IdentityFiles, then the standard
/// key files that exist.
fn default_auth(s: &HostSettings) -> Vec<AuthMethod> {
    let mut v = Vec::new();
    match s.identity_agent.as_deref() {
        Some(a) if a.eq_ignore_ascii_case("none") => {}
        Some("SSH_AUTH_SOCK") | None => v.push(AuthMethod::Agent { socket: None }),
        Some(path) => v.push(AuthMethod::Agent {
            socket: Some(expand_tilde(path)),
        }),
    }
    for f in &s.identity_files {
        v.push(AuthMethod::KeyFile {
            path: f.clone(),
            passphrase: None,
        });
    }
    if s.identity_files.is_empty() {
        if let Some(home) = std::env::home_dir() {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let p = home.join(".ssh").join(name);
                if p.exists() {
                    v.push(AuthMethod::KeyFile {
                        path: p,
                        passphrase: None,
                    });
                }
            }
        }
    }
    v
}

fn local_user_name() -> Option<String> {
    std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| !u.is_empty())
        .or_else(|| {
            // Without USER/LOGNAME (cron, containers) the likely case is root; any other
            // uid needs `user:` in the answer file.
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let uid = std::fs::metadata("/proc/self").ok()?.uid();
                (uid == 0).then(|| "root".to_owned())
            }
            #[cfg(not(unix))]
            None
        })
}

/// Why the host key check refused a key (filled in by the handler, read after the
/// handshake fails).
#[derive(Debug, Clone)]
enum KeyRejection {
    Unknown(HostKeyInfo),
    Changed {
        expected: String,
        offered: HostKeyInfo,
        source: String,
    },
    Revoked {
        offered: HostKeyInfo,
        location: String,
    },
    Declined(HostKeyInfo),
    Certificate,
}

/// What the host key check concluded.
#[derive(Debug, Default)]
struct KeyCheck {
    rejection: Option<KeyRejection>,
    /// The verified key.
    key: Option<HostKeyInfo>,
    /// Set when the key was newly accepted (written or to be pinned by the caller).
    accepted: Option<HostKeyInfo>,
    /// A known_hosts file could not be written (the connection still proceeds).
    write_error: Option<String>,
}

pub(crate) struct Client {
    resolved: Arc<Resolved>,
    entries: Vec<known_hosts::KnownKey>,
    check: Arc<Mutex<KeyCheck>>,
}

fn info(key: &PublicKey) -> HostKeyInfo {
    let mut k = key.clone();
    k.set_comment("");
    HostKeyInfo {
        key_type: key.algorithm().as_str().to_owned(),
        fingerprint: known_hosts::fingerprint(key),
        openssh: k.to_openssh().unwrap_or_default(),
    }
}

fn normalize_pin(pin: &str) -> String {
    let p = pin.trim();
    // Accept `ssh-keygen -l` output pasted whole: `256 SHA256:xxx comment (ED25519)`.
    let p = p
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or(p);
    p.trim_end_matches('=').to_owned()
}

impl Client {
    async fn verify(&mut self, key: &PublicKey) -> bool {
        let r = self.resolved.clone();
        let offered = info(key);
        let reject = |check: &Arc<Mutex<KeyCheck>>, why: KeyRejection| {
            if let Ok(mut c) = check.lock() {
                c.rejection = Some(why);
            }
            false
        };
        if let Some(pin) = &r.pin {
            if normalize_pin(pin) == offered.fingerprint {
                if let Ok(mut c) = self.check.lock() {
                    c.key = Some(offered);
                }
                return true;
            }
            return reject(
                &self.check,
                KeyRejection::Changed {
                    expected: normalize_pin(pin),
                    offered,
                    source: "the host key pinned in the answer file".into(),
                },
            );
        }
        match known_hosts::verify(&self.entries, key) {
            Verdict::Trusted(_) => {
                if let Ok(mut c) = self.check.lock() {
                    c.key = Some(offered);
                }
                true
            }
            Verdict::Revoked(loc) => reject(
                &self.check,
                KeyRejection::Revoked {
                    offered,
                    location: loc.to_string(),
                },
            ),
            Verdict::Changed(list) => {
                let expected = list
                    .iter()
                    .map(|(fp, _)| fp.clone())
                    .collect::<Vec<_>>()
                    .join(", ");
                let source = list
                    .iter()
                    .map(|(_, loc)| loc.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                reject(
                    &self.check,
                    KeyRejection::Changed {
                        expected,
                        offered,
                        source,
                    },
                )
            }
            Verdict::Unknown => {
                let decision = match r.policy {
                    HostKeyPolicy::Strict => HostKeyDecision::Reject,
                    HostKeyPolicy::AcceptNew => HostKeyDecision::AcceptAndRemember,
                    HostKeyPolicy::Ask => match &r.prompt {
                        Some(p) => p.unknown_host_key(&r.name, &offered).await,
                        None => HostKeyDecision::Reject,
                    },
                };
                match decision {
                    HostKeyDecision::Reject => {
                        let why = if r.policy == HostKeyPolicy::Ask && r.prompt.is_some() {
                            KeyRejection::Declined(offered)
                        } else {
                            KeyRejection::Unknown(offered)
                        };
                        reject(&self.check, why)
                    }
                    HostKeyDecision::AcceptOnce | HostKeyDecision::AcceptAndRemember => {
                        let mut write_error = None;
                        if decision == HostKeyDecision::AcceptAndRemember {
                            if let Some((path, hashed)) = &r.write_accepted {
                                let token = known_hosts::host_token(&r.host, r.port);
                                if let Err(e) = known_hosts::append(path, &token, key, *hashed) {
                                    write_error = Some(format!(
                                        "could not add the key to {}: {e}",
                                        path.display()
                                    ));
                                }
                            }
                        }
                        if let Ok(mut c) = self.check.lock() {
                            c.key = Some(offered.clone());
                            c.accepted = Some(offered);
                            c.write_error = write_error;
                        }
                        true
                    }
                }
            }
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                let key = key.clone();
                Ok(self.verify(&key).await)
            }
            PublicKeyOrCertificate::Certificate(_) => {
                if let Ok(mut c) = self.check.lock() {
                    c.rejection = Some(KeyRejection::Certificate);
                }
                Ok(false)
            }
        }
    }
}

/// One live SSH connection (and the jump-host connections it runs over).
pub(crate) struct Conn {
    pub handle: client::Handle<Client>,
    /// Kept alive for as long as this connection runs over it.
    _bastion: Option<Arc<Conn>>,
    pub host_key: Option<HostKeyInfo>,
    pub accepted: Option<HostKeyInfo>,
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

fn client_config(r: &Resolved, known: &[Algorithm]) -> client::Config {
    let mut preferred = russh::Preferred::default();
    // AES-GCM is faster than chacha20-poly1305 wherever the CPU has AES instructions
    // (see crates.md: 345 vs 339 MB/s for russh, 278 vs 220 for scp); keep chacha first
    // where it does not.
    if has_aes_instructions() {
        preferred.cipher = std::borrow::Cow::Owned(vec![
            russh::cipher::AES_256_GCM,
            russh::cipher::AES_128_GCM,
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_CTR,
            russh::cipher::AES_128_CTR,
        ]);
    }
    if !known.is_empty() {
        // Ask for the key types already recorded for this host first, so that a host
        // with several keys offers the one we know (OpenSSH does the same).
        let mut keys: Vec<Algorithm> = Vec::new();
        for k in known {
            keys.push(k.clone());
            if matches!(k, Algorithm::Rsa { .. }) {
                keys.push(Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                });
                keys.push(Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                });
            }
        }
        for k in preferred.key.iter() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        preferred.key = std::borrow::Cow::Owned(keys);
    }
    client::Config {
        preferred,
        nodelay: true,
        keepalive_interval: Some(r.keepalive),
        keepalive_max: 3,
        // Bigger windows keep a 200 MB upload from stalling on window adjustments.
        window_size: 8 * 1024 * 1024,
        ..Default::default()
    }
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Opens, verifies and authenticates a connection (recursively through jump hosts).
pub(crate) fn connect(
    r: Arc<Resolved>,
    reporter: Reporter,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Conn, HostError>> + Send>> {
    Box::pin(async move {
        let limit = r.connect_timeout;
        let name = r.name.clone();
        let addr = r.addr();
        match tokio::time::timeout(limit, connect_inner(r, reporter)).await {
            Ok(res) => res,
            Err(_) => Err(HostError::Connect {
                host: name,
                addr,
                reason: format!(
                    "no answer within {} (connect, handshake and login)",
                    humantime::format_duration(limit)
                ),
            }),
        }
    })
}

async fn connect_inner(r: Arc<Resolved>, reporter: Reporter) -> Result<Conn, HostError> {
    let connect_err = |reason: String| HostError::Connect {
        host: r.name.clone(),
        addr: format!("{}:{}", r.host, r.port),
        reason,
    };
    let token = known_hosts::host_token(&r.host, r.port);
    let entries = known_hosts::entries_for(&r.known_hosts, std::slice::from_ref(&token))
        .map_err(|e| connect_err(format!("cannot check the host key: {e}")))?;
    let config = Arc::new(client_config(&r, &known_hosts::known_algorithms(&entries)));
    let check = Arc::new(Mutex::new(KeyCheck::default()));
    let handler = Client {
        resolved: r.clone(),
        entries,
        check: check.clone(),
    };

    let (result, bastion) = match &r.bastion {
        Some(b) => {
            let jump = Arc::new(connect(Arc::new((**b).clone()), reporter.clone()).await?);
            let channel = jump
                .handle
                .channel_open_direct_tcpip(r.host.clone(), u32::from(r.port), "127.0.0.1", 0)
                .await
                .map_err(|e| {
                    connect_err(format!(
                        "the jump host {} could not open a connection to {}:{}: {e} (is AllowTcpForwarding enabled there, and can it reach this host?)",
                        b.name, r.host, r.port
                    ))
                })?;
            let stream = channel.into_stream();
            (
                client::connect_stream(config, stream, handler).await,
                Some(jump),
            )
        }
        None => {
            let tcp = tokio::net::TcpStream::connect((r.host.as_str(), r.port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            (client::connect_stream(config, tcp, handler).await, None)
        }
    };

    let mut handle = match result {
        Ok(h) => h,
        Err(e) => {
            let rejection = check.lock().ok().and_then(|c| c.rejection.clone());
            return Err(match rejection {
                Some(KeyRejection::Unknown(k)) => HostError::HostKeyUnknown {
                    host: r.name.clone(),
                    key_type: k.key_type,
                    fingerprint: k.fingerprint,
                },
                Some(KeyRejection::Declined(k)) => HostError::Other {
                    host: r.name.clone(),
                    message: format!(
                        "the host key {} {} was not accepted",
                        k.key_type, k.fingerprint
                    ),
                },
                Some(KeyRejection::Changed {
                    expected,
                    offered,
                    source,
                }) => HostError::HostKeyChanged {
                    host: r.name.clone(),
                    expected,
                    offered: format!("{} {}", offered.key_type, offered.fingerprint),
                    source_of_expected: source,
                },
                Some(KeyRejection::Revoked { offered, location }) => HostError::HostKeyChanged {
                    host: r.name.clone(),
                    expected: format!("any key but the revoked {}", offered.fingerprint),
                    offered: format!(
                        "{} {} (marked @revoked)",
                        offered.key_type, offered.fingerprint
                    ),
                    source_of_expected: location,
                },
                Some(KeyRejection::Certificate) => connect_err(
                    "the host presented an SSH certificate, which this installer does not verify"
                        .into(),
                ),
                None => connect_err(describe_russh_error(&e)),
            });
        }
    };

    let (host_key, accepted, write_error) = match check.lock() {
        Ok(mut c) => (c.key.take(), c.accepted.take(), c.write_error.take()),
        Err(_) => (None, None, None),
    };
    if let Some(k) = &accepted {
        let where_ = match (&r.write_accepted, &write_error) {
            (_, Some(e)) => format!("; {e}"),
            (Some((p, _)), None) => format!(", added to {}", p.display()),
            (None, None) => String::new(),
        };
        let note = format!(
            "accepted the new host key {} {}{where_}",
            k.key_type, k.fingerprint
        );
        reporter.warn(Some(&r.name), note);
    }

    authenticate(&mut handle, &r).await?;

    Ok(Conn {
        handle,
        _bastion: bastion,
        host_key,
        accepted,
    })
}

fn describe_russh_error(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io.to_string(),
        russh::Error::NoCommonAlgo { kind, .. } => format!(
            "no {kind:?} algorithm in common with the server (it may be very old or locked down)"
        ),
        russh::Error::Disconnect => "the server closed the connection during the handshake".into(),
        other => other.to_string(),
    }
}

fn method_name(m: &MethodKind) -> &'static str {
    match m {
        MethodKind::None => "none",
        MethodKind::Password => "password",
        MethodKind::PublicKey => "publickey",
        MethodKind::HostBased => "hostbased",
        MethodKind::KeyboardInteractive => "keyboard-interactive",
        MethodKind::GssapiWithMic => "gssapi-with-mic",
    }
}

fn offers(methods: &MethodSet) -> String {
    if methods.is_empty() {
        return "nothing".into();
    }
    methods
        .iter()
        .map(method_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Tries each method in turn; on failure, names every method and why it failed.
async fn authenticate(handle: &mut client::Handle<Client>, r: &Resolved) -> Result<(), HostError> {
    let mut attempts: Vec<AuthAttempt> = Vec::new();
    let io_err = |e: russh::Error| HostError::Connect {
        host: r.name.clone(),
        addr: r.addr(),
        reason: format!("during login: {}", describe_russh_error(&e)),
    };

    // Like OpenSSH, ask with `none` first: it tells which methods the server accepts.
    let mut allowed = match handle
        .authenticate_none(r.user.clone())
        .await
        .map_err(io_err)?
    {
        AuthResult::Success => return Ok(()),
        AuthResult::Failure {
            remaining_methods, ..
        } => remaining_methods,
    };

    for method in &r.auth {
        if handle.is_closed() {
            attempts.push(AuthAttempt {
                method: describe_method(method),
                reason: "not tried: the server closed the connection (too many failed attempts? sshd's MaxAuthTries counts every key offered)".into(),
            });
            continue;
        }
        let outcome = match method {
            AuthMethod::Agent { socket } => {
                if !allowed.is_empty() && !allowed.contains(&MethodKind::PublicKey) {
                    Err(format!(
                        "the server does not accept public keys (it offers: {})",
                        offers(&allowed)
                    ))
                } else {
                    auth_agent(handle, r, socket.as_deref(), &mut allowed).await
                }
            }
            AuthMethod::KeyFile { path, passphrase } => {
                if !allowed.is_empty() && !allowed.contains(&MethodKind::PublicKey) {
                    Err(format!(
                        "the server does not accept public keys (it offers: {})",
                        offers(&allowed)
                    ))
                } else {
                    auth_key_file(handle, r, path, passphrase.as_ref(), &mut allowed).await
                }
            }
            AuthMethod::Password(pw) => auth_password(handle, r, pw, &mut allowed).await,
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(reason) => attempts.push(AuthAttempt {
                method: describe_method(method),
                reason,
            }),
        }
    }
    Err(HostError::Auth {
        host: r.name.clone(),
        user: r.user.clone(),
        attempts,
    })
}

fn describe_method(m: &AuthMethod) -> String {
    match m {
        AuthMethod::Agent { socket: Some(s) } => format!("agent {}", s.display()),
        AuthMethod::Agent { socket: None } => "agent".into(),
        AuthMethod::KeyFile { path, .. } => format!("publickey {}", display_path(path)),
        AuthMethod::Password(_) => "password".into(),
    }
}

/// `~/x` for paths in the home directory (shorter errors).
fn display_path(p: &Path) -> String {
    if let Some(home) = std::env::home_dir() {
        if let Ok(rest) = p.strip_prefix(&home) {
            return format!("~/{}", rest.display());
        }
    }
    p.display().to_string()
}

fn failure(res: AuthResult, allowed: &mut MethodSet) -> bool {
    match res {
        AuthResult::Success => true,
        AuthResult::Failure {
            remaining_methods, ..
        } => {
            *allowed = remaining_methods;
            false
        }
    }
}

async fn rsa_hash(handle: &client::Handle<Client>) -> Option<HashAlg> {
    match handle.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        // No server-sig-algs extension: every OpenSSH since 7.2 takes SHA-2 anyway.
        _ => Some(HashAlg::Sha512),
    }
}

async fn auth_agent(
    handle: &mut client::Handle<Client>,
    r: &Resolved,
    socket: Option<&Path>,
    allowed: &mut MethodSet,
) -> Result<(), String> {
    let path: PathBuf = match socket {
        Some(p) => p.to_owned(),
        None => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => return Err("SSH_AUTH_SOCK is not set (no ssh-agent)".into()),
        },
    };
    let mut agent = AgentClient::connect_uds(&path)
        .await
        .map_err(|e| format!("cannot reach the agent at {}: {e}", path.display()))?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| format!("the agent at {} did not answer: {e}", path.display()))?;
    let keys: Vec<PublicKey> = identities
        .into_iter()
        .filter_map(|id| match id {
            AgentIdentity::PublicKey { key, .. } => Some(key),
            AgentIdentity::Certificate { .. } => None,
        })
        .collect();
    if keys.is_empty() {
        return Err("the agent holds no keys (`ssh-add -l`)".into());
    }
    let mut tried = Vec::new();
    for key in keys {
        if handle.is_closed() {
            break;
        }
        let hash = if key.algorithm().is_rsa() {
            rsa_hash(handle).await
        } else {
            None
        };
        tried.push(known_hosts::fingerprint(&key));
        match handle
            .authenticate_publickey_with(r.user.clone(), key, hash, &mut agent)
            .await
        {
            Ok(res) => {
                if failure(res, allowed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(format!("the agent could not sign: {e}")),
        }
    }
    Err(format!(
        "the server refused the agent's key{} ({})",
        if tried.len() == 1 { "" } else { "s" },
        tried.join(", ")
    ))
}

async fn auth_key_file(
    handle: &mut client::Handle<Client>,
    r: &Resolved,
    path: &Path,
    passphrase: Option<&Secret>,
    allowed: &mut MethodSet,
) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no such file".into());
        }
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let key = match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => k,
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let pw = match passphrase.cloned() {
                Some(p) => Some(p),
                None => match &r.prompt {
                    Some(p) => p.key_passphrase(&r.name, path).await,
                    None => None,
                },
            };
            let Some(pw) = pw else {
                return Err(
                    "the key is encrypted and no passphrase was given (set it in the answer file's environment variable, or load the key into ssh-agent)".into(),
                );
            };
            russh::keys::decode_secret_key(&text, Some(pw.expose()))
                .map_err(|_| "wrong passphrase for the key".to_string())?
        }
        Err(e) => return Err(format!("cannot load the key: {e}")),
    };
    let hash = if key.algorithm().is_rsa() {
        rsa_hash(handle).await
    } else {
        None
    };
    let fp = known_hosts::fingerprint(key.public_key());
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
    let res = handle
        .authenticate_publickey(r.user.clone(), key)
        .await
        .map_err(|e| format!("error while offering the key: {e}"))?;
    if failure(res, allowed) {
        Ok(())
    } else {
        Err(format!("the server refused the key ({fp})"))
    }
}

async fn auth_password(
    handle: &mut client::Handle<Client>,
    r: &Resolved,
    pw: &Secret,
    allowed: &mut MethodSet,
) -> Result<(), String> {
    let password_ok = allowed.is_empty() || allowed.contains(&MethodKind::Password);
    let kbd_ok = allowed.contains(&MethodKind::KeyboardInteractive);
    if !password_ok && !kbd_ok {
        return Err(format!(
            "the server does not accept passwords (it offers: {})",
            offers(allowed)
        ));
    }
    if password_ok {
        let res = handle
            .authenticate_password(r.user.clone(), pw.expose())
            .await
            .map_err(|e| format!("error while sending the password: {e}"))?;
        if failure(res, allowed) {
            return Ok(());
        }
        if !allowed.contains(&MethodKind::KeyboardInteractive) {
            return Err("the server rejected the password".into());
        }
    }
    // keyboard-interactive (PAM): answer every password-like prompt with the password.
    let mut resp = handle
        .authenticate_keyboard_interactive_start(r.user.clone(), None)
        .await
        .map_err(|e| format!("error during keyboard-interactive login: {e}"))?;
    for _round in 0..5 {
        match resp {
            client::KeyboardInteractiveAuthResponse::Success => return Ok(()),
            client::KeyboardInteractiveAuthResponse::Failure {
                remaining_methods, ..
            } => {
                *allowed = remaining_methods;
                return Err("the server rejected the password".into());
            }
            client::KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let answers = prompts
                    .iter()
                    .map(|p| {
                        if p.echo {
                            String::new()
                        } else {
                            pw.expose().to_owned()
                        }
                    })
                    .collect();
                resp = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .map_err(|e| format!("error during keyboard-interactive login: {e}"))?;
            }
        }
    }
    Err("the server kept asking questions during keyboard-interactive login".into())
}
