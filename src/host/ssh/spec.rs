//! How to reach one host: the connection spec the SSH layer consumes.
//!
//! This type is deliberately independent of the answer file: the configuration layer
//! validates the answer file into a plan, and the plan is converted into one
//! [`ConnectionSpec`] per host. Fields left unset (`None`, empty) are filled from
//! `~/.ssh/config` (see [`crate::host::ssh_config`]) and then from OpenSSH's defaults, so
//! that an admin whose plain `ssh host` works gets the same behaviour here.

use async_trait::async_trait;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;

/// Everything needed to open (and reopen) the SSH connection to one host.
#[derive(Clone)]
pub struct ConnectionSpec {
    /// The host's display name (as the answer file names it); used in every error and event.
    pub name: String,
    /// Where to connect: an IP address, a DNS name or a `Host` alias of `~/.ssh/config`.
    pub address: String,
    /// TCP port; `None` means `Port` from ssh_config, else 22.
    pub port: Option<u16>,
    /// Login user; `None` means `User` from ssh_config, else the local user name.
    pub user: Option<String>,
    /// Authentication methods, tried in order. Empty means OpenSSH's defaults: the agent
    /// (when `SSH_AUTH_SOCK` is set), then ssh_config's `IdentityFile`s, then
    /// `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa` when they exist.
    pub auth: Vec<AuthMethod>,
    /// How commands marked `sudo` become root when the login user is not root.
    pub sudo: SudoMode,
    /// A jump host to connect through; `None` means ssh_config's `ProxyJump`, if any.
    pub bastion: Option<Box<ConnectionSpec>>,
    /// known_hosts files to verify against. Empty means ssh_config's `UserKnownHostsFile`,
    /// else `~/.ssh/known_hosts` and `~/.ssh/known_hosts2`; `/etc/ssh/ssh_known_hosts`
    /// is always consulted too (read-only).
    pub known_hosts: Vec<PathBuf>,
    /// A host-key fingerprint pinned in the answer file (`SHA256:...`, as `ssh-keygen -l`
    /// prints it). When set, it alone decides: the offered key must have it.
    pub host_key_pin: Option<String>,
    /// What to do with a host key that is neither pinned nor in a known_hosts file.
    pub host_key_policy: HostKeyPolicy,
    /// Where keys accepted under [`HostKeyPolicy::AcceptNew`] or remembered through
    /// [`SshPrompt`] are appended. `None` means the first of `known_hosts` (or
    /// `~/.ssh/known_hosts`); [`AcceptedKeyStore::ReportOnly`] writes nowhere, so the
    /// caller can pin the key in the answer file instead (see `SshHost::accepted_host_key`).
    pub accepted_key_store: AcceptedKeyStore,
    /// Interval of SSH keepalives; the connection is declared dead after 3 unanswered.
    pub keepalive: Duration,
    /// Limit for TCP connect + SSH handshake + authentication.
    pub connect_timeout: Duration,
    /// Which ssh_config to apply under the explicit values.
    pub ssh_config: SshConfigSource,
    /// How idempotent operations are retried after the connection drops.
    pub retry: RetryPolicy,
    /// Answers questions that need a person: unknown host keys (with
    /// [`HostKeyPolicy::Ask`]) and key passphrases. `None` is unattended: nothing is asked.
    pub prompt: Option<Arc<dyn SshPrompt>>,
}

impl fmt::Debug for ConnectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSpec")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("auth", &self.auth)
            .field("sudo", &self.sudo)
            .field("bastion", &self.bastion)
            .field("known_hosts", &self.known_hosts)
            .field("host_key_pin", &self.host_key_pin)
            .field("host_key_policy", &self.host_key_policy)
            .field("accepted_key_store", &self.accepted_key_store)
            .field("keepalive", &self.keepalive)
            .field("connect_timeout", &self.connect_timeout)
            .field("ssh_config", &self.ssh_config)
            .field("retry", &self.retry)
            .field("prompt", &self.prompt.as_ref().map(|_| "..."))
            .finish()
    }
}

impl ConnectionSpec {
    /// A spec with OpenSSH-like defaults: everything not given comes from ssh_config.
    pub fn new(address: impl Into<String>) -> Self {
        let address = address.into();
        ConnectionSpec {
            name: address.clone(),
            address,
            port: None,
            user: None,
            auth: Vec::new(),
            sudo: SudoMode::Passwordless,
            bastion: None,
            known_hosts: Vec::new(),
            host_key_pin: None,
            host_key_policy: HostKeyPolicy::Strict,
            accepted_key_store: AcceptedKeyStore::KnownHosts(None),
            keepalive: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(20),
            ssh_config: SshConfigSource::Default,
            retry: RetryPolicy::default(),
            prompt: None,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn auth(mut self, method: AuthMethod) -> Self {
        self.auth.push(method);
        self
    }

    pub fn sudo(mut self, sudo: SudoMode) -> Self {
        self.sudo = sudo;
        self
    }

    pub fn bastion(mut self, bastion: ConnectionSpec) -> Self {
        self.bastion = Some(Box::new(bastion));
        self
    }

    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts.push(path.into());
        self
    }

    pub fn host_key_pin(mut self, fingerprint: impl Into<String>) -> Self {
        self.host_key_pin = Some(fingerprint.into());
        self
    }

    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.host_key_policy = policy;
        self
    }

    pub fn ssh_config(mut self, source: SshConfigSource) -> Self {
        self.ssh_config = source;
        self
    }

    pub fn prompt(mut self, prompt: Arc<dyn SshPrompt>) -> Self {
        self.prompt = Some(prompt);
        self
    }
}

/// One way to authenticate.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// Keys held by an ssh-agent: the socket given, else `SSH_AUTH_SOCK`.
    Agent { socket: Option<PathBuf> },
    /// A private key file (OpenSSH, PEM or PKCS#8; ed25519, ECDSA or RSA, which signs with
    /// SHA-2). An encrypted key uses `passphrase`, else asks the [`SshPrompt`].
    KeyFile {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    /// A login password (SSH `password`, or `keyboard-interactive` when that is all the
    /// server offers).
    Password(Secret),
}

/// How a non-root login user becomes root.
#[derive(Debug, Clone)]
pub enum SudoMode {
    /// Never use sudo: commands that need root fail unless the login user is root.
    None,
    /// `sudo -n`: the user may run sudo without a password.
    Passwordless,
    /// `sudo -S`: the password is written to sudo's standard input when sudo asks for
    /// it, never placed in a command line or an environment variable.
    Password(Secret),
}

/// What to do with a host key that nothing vouches for (neither a pin nor a known_hosts
/// entry). A key that *contradicts* a pin or a known_hosts entry is always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse it ([`crate::host::HostError::HostKeyUnknown`]): the unattended default.
    Strict,
    /// Accept and remember it (OpenSSH `StrictHostKeyChecking accept-new`,
    /// `--accept-new-host-keys`).
    AcceptNew,
    /// Ask the spec's [`SshPrompt`] (the wizard); refuse when there is none.
    Ask,
}

/// Where accepted host keys are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedKeyStore {
    /// Append to this known_hosts file (`None`: the spec's first known_hosts file, else
    /// `~/.ssh/known_hosts`), hashed when the file already hashes its entries.
    KnownHosts(Option<PathBuf>),
    /// Write nowhere; the caller reads `SshHost::accepted_host_key` and pins it.
    ReportOnly,
}

/// Which ssh_config file(s) fill the values a spec leaves unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshConfigSource {
    /// `~/.ssh/config`, then `/etc/ssh/ssh_config` (first value wins, as in OpenSSH).
    Default,
    /// Only this file.
    File(PathBuf),
    /// None at all.
    Off,
}

/// Reconnect-and-retry policy for idempotent operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times an idempotent operation is retried after a dropped connection.
    pub attempts: u32,
    /// Delay before the first retry; doubled for each next one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

/// A host key offered by a host, as shown to a person or pinned in the answer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyInfo {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, ...
    pub key_type: String,
    /// `SHA256:...` (as `ssh-keygen -l` prints it).
    pub fingerprint: String,
    /// The public key in OpenSSH format (`ssh-ed25519 AAAA...`).
    pub openssh: String,
}

/// What a person decided about an unknown host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyDecision {
    /// Do not connect.
    Reject,
    /// Connect, and append the key to known_hosts (per [`AcceptedKeyStore`]).
    AcceptAndRemember,
    /// Connect, write nothing; the caller pins [`HostKeyInfo::fingerprint`] in the
    /// answer file.
    AcceptOnce,
}

/// Questions the SSH layer may need a person to answer; the wizard implements it.
/// It is called from inside the SSH handshake, so it must not block the async runtime
/// (wrap a blocking dialog in `tokio::task::spawn_blocking`).
#[async_trait]
pub trait SshPrompt: Send + Sync {
    /// The host offered a key nothing vouches for: accept it?
    async fn unknown_host_key(&self, host: &str, key: &HostKeyInfo) -> HostKeyDecision;

    /// The passphrase of an encrypted key file, or `None` to skip the key.
    async fn key_passphrase(&self, _host: &str, _path: &std::path::Path) -> Option<Secret> {
        None
    }
}
