//! The SSH layer against a real OpenSSH sshd on 127.0.0.1 (see `ssh_support`): logins,
//! host keys, commands, cancellation, uploads, reconnects, jump hosts and forwarding.
//! Users other than root and sudo are covered by `ssh_lab.rs` on lab nodes.

#![allow(clippy::unwrap_used)]

mod ssh_support;

use std::sync::Arc;
use std::time::Duration;

use installer::host::fanout::fan_out;
use installer::host::ssh::{
    AcceptedKeyStore, AuthMethod, ConnectionSpec, HostKeyDecision, HostKeyInfo, HostKeyPolicy,
    RetryPolicy, SshConfigSource, SshHost, SshPrompt,
};
use installer::host::{
    HostError, Remote, RemoteCommand, RemoteExt, Stdin, UploadOutcome, UploadSource, UploadTarget,
};
use installer::report::events::Collector;
use installer::report::{Event, Reporter, StreamKind};
use installer::secret::Secret;
use ssh_support::{PASSPHRASE, Sshd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn host(spec: ConnectionSpec) -> SshHost {
    SshHost::new(spec, Reporter::silent())
}

async fn id_u(h: &SshHost) -> String {
    h.run(RemoteCommand::new("id -u"))
        .await
        .unwrap()
        .stdout_str()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn key_file_logins_ed25519_ecdsa_rsa_and_encrypted() {
    let Some(sshd) = Sshd::start() else { return };
    for key in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let h = host(sshd.spec_with_key(key));
        assert_eq!(id_u(&h).await, "0", "{key}");
    }
    // Encrypted key with its passphrase.
    let mut spec = sshd.spec();
    spec.auth = vec![AuthMethod::KeyFile {
        path: sshd.path("id_encrypted"),
        passphrase: Some(Secret::new(PASSPHRASE)),
    }];
    assert_eq!(id_u(&host(spec)).await, "0");

    // Without it, and with a wrong one: each says why.
    let mut spec = sshd.spec();
    spec.auth = vec![
        AuthMethod::KeyFile {
            path: sshd.path("id_encrypted"),
            passphrase: None,
        },
        AuthMethod::KeyFile {
            path: sshd.path("id_encrypted"),
            passphrase: Some(Secret::new("not the passphrase")),
        },
    ];
    match host(spec).connect().await {
        Err(HostError::Auth { attempts, user, .. }) => {
            assert_eq!(user, "root");
            assert!(
                attempts[0].reason.contains("encrypted and no passphrase"),
                "{attempts:?}"
            );
            assert_eq!(attempts[1].reason, "wrong passphrase for the key");
        }
        other => panic!("{other:?}"),
    }
}

/// Asks nothing but answers passphrase questions: the wizard's role.
struct Prompter {
    decision: HostKeyDecision,
    seen: std::sync::Mutex<Vec<HostKeyInfo>>,
}

#[async_trait::async_trait]
impl SshPrompt for Prompter {
    async fn unknown_host_key(&self, _host: &str, key: &HostKeyInfo) -> HostKeyDecision {
        self.seen.lock().unwrap().push(key.clone());
        self.decision
    }
    async fn key_passphrase(&self, _host: &str, _path: &std::path::Path) -> Option<Secret> {
        Some(Secret::new(PASSPHRASE))
    }
}

#[tokio::test]
async fn passphrase_is_asked_when_not_given() {
    let Some(sshd) = Sshd::start() else { return };
    let mut spec = sshd.spec();
    spec.auth = vec![AuthMethod::KeyFile {
        path: sshd.path("id_encrypted"),
        passphrase: None,
    }];
    spec.prompt = Some(Arc::new(Prompter {
        decision: HostKeyDecision::Reject,
        seen: Default::default(),
    }));
    assert_eq!(id_u(&host(spec)).await, "0");
}

#[tokio::test]
async fn agent_login() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let sock = sshd.agent_with("id_ecdsa");
    let mut spec = sshd.spec();
    spec.auth = vec![AuthMethod::Agent { socket: Some(sock) }];
    assert_eq!(id_u(&host(spec)).await, "0");
}

#[tokio::test]
async fn failed_login_names_host_user_and_every_method() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let sock = sshd.agent_with("id_unauthorized");
    let mut spec = sshd.spec();
    spec.auth = vec![
        AuthMethod::Agent {
            socket: Some(sock.clone()),
        },
        AuthMethod::KeyFile {
            path: sshd.path("id_unauthorized"),
            passphrase: None,
        },
        AuthMethod::KeyFile {
            path: sshd.path("no_such_key"),
            passphrase: None,
        },
        AuthMethod::Password(Secret::new("some-password")),
    ];
    let err = host(spec).connect().await.unwrap_err();
    let text = err.to_string();
    match &err {
        HostError::Auth {
            host,
            user,
            attempts,
        } => {
            assert_eq!(host, "local-sshd");
            assert_eq!(user, "root");
            assert_eq!(attempts.len(), 4, "{text}");
            assert!(attempts[0].method.starts_with("agent "), "{text}");
            assert!(
                attempts[0].reason.contains("refused the agent's key"),
                "{text}"
            );
            assert!(
                attempts[1]
                    .reason
                    .starts_with("the server refused the key (SHA256:"),
                "{text}"
            );
            assert_eq!(attempts[2].reason, "no such file");
            assert_eq!(
                attempts[3].reason,
                "the server does not accept passwords (it offers: publickey)"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        text.starts_with("local-sshd: SSH login as root failed; tried: agent"),
        "{text}"
    );
    assert!(err.hint().unwrap().contains("authorized_keys"));
}

#[tokio::test]
async fn unknown_host_key_is_refused_by_default_and_accept_new_writes_it() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.path("empty_known_hosts");
    let mut spec = sshd.spec();
    spec.known_hosts = vec![kh.clone()];
    match host(spec.clone()).connect().await {
        Err(HostError::HostKeyUnknown {
            key_type,
            fingerprint,
            ..
        }) => {
            assert_eq!(key_type, "ssh-ed25519");
            assert_eq!(fingerprint, sshd.fingerprint());
        }
        other => panic!("{other:?}"),
    }
    assert!(!kh.exists(), "nothing may be written when refusing");

    // accept-new: connects, warns, writes a plain line (new file, no HashKnownHosts).
    let collector = Arc::new(Collector::default());
    let mut accept = spec.clone();
    accept.host_key_policy = HostKeyPolicy::AcceptNew;
    let h = SshHost::new(accept, Reporter::new(vec![collector.clone()]));
    assert_eq!(id_u(&h).await, "0");
    let written = std::fs::read_to_string(&kh).unwrap();
    assert!(
        written.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{written}"
    );
    assert_eq!(
        h.accepted_host_key().unwrap().fingerprint,
        sshd.fingerprint()
    );
    assert!(collector.events().iter().any(|e| matches!(e,
        Event::Message { text, .. } if text.contains("accepted the new host key") && text.contains(&sshd.fingerprint()))));
    // Now the strict default trusts it.
    assert_eq!(id_u(&host(spec)).await, "0");
}

#[tokio::test]
async fn accept_new_appends_hashed_to_a_hashed_file() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.path("hashed_known_hosts");
    // A file that already hashes: an unrelated hashed entry.
    std::fs::write(
        &kh,
        "|1|24yA/1KzKr45RyvOBtko0ZAQ7Y0=|KoeFigZeOjbQmgSwjPAIJlbZrTg= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENdyBLvLS41M19jpIlhezqVCwU4oQjvVYSZ+tRTUEYz\n",
    )
    .unwrap();
    let mut spec = sshd.spec();
    spec.known_hosts = vec![kh.clone()];
    spec.host_key_policy = HostKeyPolicy::AcceptNew;
    host(spec.clone()).connect().await.unwrap();
    let text = std::fs::read_to_string(&kh).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1].starts_with("|1|"), "{text}");
    assert!(!text.contains("127.0.0.1"));
    // And OpenSSH itself recognises the entry.
    let out = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{}", sshd.port), "-f"])
        .arg(&kh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -F did not find it: {text}"
    );
    spec.host_key_policy = HostKeyPolicy::Strict;
    host(spec).connect().await.unwrap();
}

#[tokio::test]
async fn changed_host_key_is_always_refused() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.path("stale_known_hosts");
    let other = std::fs::read_to_string(sshd.path("id_ed25519.pub")).unwrap();
    let other = other
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&kh, format!("# old\n[127.0.0.1]:{} {other}\n", sshd.port)).unwrap();
    let mut spec = sshd.spec();
    spec.known_hosts = vec![kh.clone()];
    // Even with accept-new: a changed key is never accepted.
    spec.host_key_policy = HostKeyPolicy::AcceptNew;
    let err = host(spec).connect().await.unwrap_err();
    match &err {
        HostError::HostKeyChanged {
            offered,
            source_of_expected,
            ..
        } => {
            assert!(offered.contains(&sshd.fingerprint()), "{err}");
            assert_eq!(source_of_expected, &format!("{}:2", kh.display()));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("man-in-the-middle"));
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 2);
}

#[tokio::test]
async fn known_key_type_is_preferred_when_the_host_has_several() {
    let Some(sshd) = Sshd::start() else { return };
    // Only the server's ECDSA key is known: the client must ask for that type, not
    // declare the (preferred) ed25519 key unknown or changed.
    let kh = sshd.path("ecdsa_known_hosts");
    let key = std::fs::read_to_string(sshd.path("host_ecdsa.pub")).unwrap();
    let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {key}\n", sshd.port)).unwrap();
    let mut spec = sshd.spec();
    spec.known_hosts = vec![kh];
    let h = host(spec);
    h.connect().await.unwrap();
    assert_eq!(h.host_key().unwrap().key_type, "ecdsa-sha2-nistp256");
}

#[tokio::test]
async fn pinned_fingerprints_decide() {
    let Some(sshd) = Sshd::start() else { return };
    let mut spec = sshd.spec();
    spec.known_hosts = vec![sshd.path("nothing_here")];
    spec.host_key_pin = Some(sshd.fingerprint());
    host(spec.clone()).connect().await.unwrap();
    spec.host_key_pin = Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    match host(spec).connect().await {
        Err(HostError::HostKeyChanged {
            source_of_expected, ..
        }) => assert!(source_of_expected.contains("answer file")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_wizard_is_asked_about_unknown_keys() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.path("wizard_known_hosts");
    let prompter = Arc::new(Prompter {
        decision: HostKeyDecision::AcceptOnce,
        seen: Default::default(),
    });
    let mut spec = sshd.spec();
    spec.known_hosts = vec![kh.clone()];
    spec.host_key_policy = HostKeyPolicy::Ask;
    spec.prompt = Some(prompter.clone());
    let h = host(spec.clone());
    h.connect().await.unwrap();
    assert_eq!(
        prompter.seen.lock().unwrap()[0].fingerprint,
        sshd.fingerprint()
    );
    // Accept once: nothing written, the caller pins it from accepted_host_key().
    assert!(!kh.exists());
    assert_eq!(
        h.accepted_host_key().unwrap().fingerprint,
        sshd.fingerprint()
    );

    let no = Arc::new(Prompter {
        decision: HostKeyDecision::Reject,
        seen: Default::default(),
    });
    spec.prompt = Some(no);
    let err = host(spec.clone()).connect().await.unwrap_err();
    assert!(err.to_string().contains("was not accepted"), "{err}");

    spec.accepted_key_store = AcceptedKeyStore::KnownHosts(Some(kh.clone()));
    spec.prompt = Some(Arc::new(Prompter {
        decision: HostKeyDecision::AcceptAndRemember,
        seen: Default::default(),
    }));
    host(spec).connect().await.unwrap();
    assert!(
        std::fs::read_to_string(&kh)
            .unwrap()
            .contains("ssh-ed25519")
    );
}

#[tokio::test]
async fn exec_streams_lines_and_returns_status_output_and_stdin() {
    let Some(sshd) = Sshd::start() else { return };
    let collector = Arc::new(Collector::default());
    let h = SshHost::new(sshd.spec(), Reporter::new(vec![collector.clone()]));
    let out = h
        .exec(RemoteCommand::new(
            "echo one; echo two >&2; printf three; exit 4",
        ))
        .await
        .unwrap();
    assert_eq!(out.status, Some(4));
    assert_eq!(out.stdout_str(), "one\nthree");
    assert_eq!(out.stderr_str(), "two\n");
    let lines: Vec<(StreamKind, String)> = collector
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::HostOutput { stream, line, host } => {
                assert_eq!(host, "local-sshd");
                Some((stream, line))
            }
            _ => None,
        })
        .collect();
    assert!(lines.contains(&(StreamKind::Stdout, "one".into())));
    assert!(lines.contains(&(StreamKind::Stderr, "two".into())));
    assert!(lines.contains(&(StreamKind::Stdout, "three".into())));

    // Stdin, and a secret on stdin that never shows in events.
    let out = h
        .run(RemoteCommand::new("tr a-z A-Z").stdin(Stdin::Bytes(b"abc\n".to_vec())))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ABC\n");
    let secret = Secret::new("s3cret-from-stdin");
    let out = h
        .run(RemoteCommand::new("read x; echo \"got $x\"").stdin(Stdin::Secret(secret)))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "got s3cret-from-stdin\n");
    for e in collector.events() {
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("s3cret-from-stdin"), "{json}");
    }
    // sbin directories are on PATH and the locale is C.
    let out = h
        .run(RemoteCommand::new("command -v sysctl; echo $LC_ALL"))
        .await
        .unwrap();
    assert!(
        out.stdout_str().ends_with("sbin/sysctl\nC\n"),
        "{}",
        out.stdout_str()
    );
    // Non-zero exit through RemoteExt::run.
    let err = h
        .run(RemoteCommand::new("echo bad >&2; exit 2"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "local-sshd: `echo bad >&2; exit 2` failed (exit status 2): bad"
    );
}

/// Waits (without blocking the runtime: cleanup runs as a task) until no process
/// matches `marker`, for up to 5 s.
async fn gone(marker: &str) -> bool {
    for _ in 0..50 {
        if !Sshd::process_running(marker) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_its_children() {
    let Some(sshd) = Sshd::start() else { return };
    let h = host(sshd.spec());
    let started = std::time::Instant::now();
    let err = h
        .exec(
            RemoteCommand::new("sleep 3101 & sleep 3102; echo never")
                .timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(gone("sleep 310[12]").await, "the command was left running");
    // The connection is still usable.
    assert_eq!(id_u(&h).await, "0");
}

#[tokio::test]
async fn cancellation_and_dropped_futures_leave_nothing_running() {
    let Some(sshd) = Sshd::start() else { return };
    let cancel = tokio_util::sync::CancellationToken::new();
    let h = SshHost::with_cancel(sshd.spec(), Reporter::silent(), cancel.clone());
    h.connect().await.unwrap();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c2.cancel();
    });
    let err = h
        .exec(RemoteCommand::new("sleep 3201 & sleep 3202").timeout(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Cancelled { .. }), "{err}");
    assert!(gone("sleep 320[12]").await);

    // A caller that simply drops the future (select!, timeout) gets the same cleanup.
    let h = host(sshd.spec());
    h.connect().await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(700),
        h.exec(RemoteCommand::new("sleep 3301").timeout(Duration::from_secs(60))),
    )
    .await;
    assert!(r.is_err());
    assert!(
        gone("sleep 3301").await,
        "a dropped exec left its command running"
    );
}

fn big_file(dir: &std::path::Path, mb: usize) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join(format!("payload-{mb}"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    let mut block = vec![0u8; 1024 * 1024];
    for i in 0..mb {
        for (j, b) in block.iter_mut().enumerate() {
            *b = ((i * 31 + j * 7) % 251) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    p
}

async fn remote_sha(h: &SshHost, path: &str) -> String {
    h.run(RemoteCommand::new(format!("sha256sum {path}")))
        .await
        .unwrap()
        .stdout_str()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn local_sha(p: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A sink that refuses everything after `left` bytes (a full disk on the workstation).
struct FailAfter {
    left: usize,
}

impl std::io::Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            return Err(std::io::Error::other("disk full"));
        }
        self.left -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn exec_to_streams_a_file_to_the_sink_and_a_failing_sink_stops_the_command() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = big_file(dir.path(), 24);
    let collector = Arc::new(Collector::default());
    let h = SshHost::new(sshd.spec(), Reporter::new(vec![collector.clone()]));
    let mut got: Vec<u8> = Vec::new();
    let out = h
        .exec_to(
            RemoteCommand::new(format!("cat -- {}", src.display())),
            &mut got,
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(0));
    assert!(out.stdout.is_empty(), "stdout was kept as well");
    assert_eq!(got.len(), 24 * 1024 * 1024);
    assert_eq!(got, std::fs::read(&src).unwrap());
    assert!(
        !collector
            .events()
            .iter()
            .any(|e| matches!(e, Event::HostOutput { .. })),
        "streamed output reached the events"
    );
    // A sink that fails stops the command on the host, even one that would write forever
    // (the marker is in the wrapper's command line).
    // Without draining the abandoned channel while the kill runs, this stalled the whole
    // connection for good: the time limit makes that a failure, not a hang.
    let started = std::time::Instant::now();
    let mut failing = FailAfter { left: 1024 * 1024 };
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        h.exec_to(
            RemoteCommand::new(format!(
                "while cat -- {}; do :; done # marker-3401",
                src.display()
            )),
            &mut failing,
        ),
    )
    .await
    .expect("the connection stalled")
    .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(gone("marker-3401").await, "the command was left running");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(id_u(&h).await, "0");
}

#[tokio::test]
async fn upload_200mb_verified_then_rerun_skips() {
    let Some(sshd) = Sshd::start() else { return };
    let src_dir = tempfile::tempdir().unwrap();
    let file = big_file(src_dir.path(), 200);
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = dst_dir
        .path()
        .join("sub/dir/payload.bin")
        .display()
        .to_string();
    let h = host(sshd.spec());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let s2 = seen.clone();
    let progress: installer::host::Progress = Arc::new(move |d, t| s2.lock().unwrap().push((d, t)));
    let src = UploadSource::File {
        path: file.clone(),
        sha256: None,
    };
    let target = UploadTarget {
        path: dst.clone(),
        mode: 0o750,
        owner: Some("daemon:daemon".into()),
        sudo: true,
    };
    let out = h.upload(&src, &target, Some(progress)).await.unwrap();
    assert_eq!(out, UploadOutcome::Uploaded { bytes: 200 << 20 });
    assert_eq!(remote_sha(&h, &dst).await, local_sha(&file));
    let st = h
        .run(RemoteCommand::new(format!(
            "stat -c '%a %U:%G' {dst}; ls -a $(dirname {dst})"
        )))
        .await
        .unwrap()
        .stdout_str();
    assert!(st.starts_with("750 daemon:daemon\n"), "{st}");
    assert!(!st.contains(".part"), "temporary file left behind: {st}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&(0, 200 << 20)));
    assert_eq!(seen.last(), Some(&(200 << 20, 200 << 20)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));

    // A rerun with the checksum known up front sends nothing.
    let src = UploadSource::File {
        path: file.clone(),
        sha256: Some(local_sha(&file)),
    };
    assert_eq!(
        h.upload(&src, &target, None).await.unwrap(),
        UploadOutcome::AlreadyPresent
    );
}

#[tokio::test]
async fn upload_from_embedded_bytes() {
    let Some(sshd) = Sshd::start() else { return };
    static DATA: &[u8] = include_bytes!("ssh_local.rs");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("copy.rs").display().to_string();
    let h = host(sshd.spec());
    let src = UploadSource::Static {
        bytes: DATA,
        sha256: None,
    };
    let t = UploadTarget {
        path: dst.clone(),
        mode: 0o644,
        owner: None,
        sudo: false,
    };
    h.upload(&src, &t, None).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), DATA);
    // Different content to the same path replaces it atomically.
    let src = UploadSource::Bytes(bytes::Bytes::from_static(b"new content\n"));
    h.upload(&src, &t, None).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), b"new content\n");
}

#[tokio::test]
async fn interrupted_upload_resumes_on_retry() {
    let Some(sshd) = Sshd::start() else { return };
    let sshd = Arc::new(sshd);
    let src_dir = tempfile::tempdir().unwrap();
    let file = big_file(src_dir.path(), 120);
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = dst_dir.path().join("payload.bin").display().to_string();
    let target = UploadTarget {
        path: dst.clone(),
        mode: 0o644,
        owner: None,
        sudo: false,
    };
    let src = UploadSource::File {
        path: file.clone(),
        sha256: None,
    };
    // Kills the connection once 40 MB have gone.
    let killer = |sshd: Arc<Sshd>| -> installer::host::Progress {
        let fired = std::sync::atomic::AtomicBool::new(false);
        Arc::new(move |done, _| {
            if done >= 40 << 20 && !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                sshd.kill_connections();
            }
        })
    };

    // 1. No automatic retry: the call reports the drop; a second call resumes.
    let mut spec = sshd.spec();
    spec.retry = RetryPolicy {
        attempts: 0,
        backoff: Duration::from_millis(100),
    };
    let h = host(spec);
    let err = h
        .upload(&src, &target, Some(killer(sshd.clone())))
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Disconnected { .. }), "{err}");
    match h.upload(&src, &target, None).await.unwrap() {
        UploadOutcome::Uploaded { bytes } => {
            assert!(
                bytes < 100 << 20,
                "did not resume: sent {bytes} bytes again"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(local_sha(std::path::Path::new(&dst)), local_sha(&file));

    // 2. With the default policy one call rides over the drop.
    std::fs::remove_file(&dst).unwrap();
    let collector = Arc::new(Collector::default());
    let h = SshHost::new(sshd.spec(), Reporter::new(vec![collector.clone()]));
    match h
        .upload(&src, &target, Some(killer(sshd.clone())))
        .await
        .unwrap()
    {
        UploadOutcome::Uploaded { bytes } => assert!(bytes < 100 << 20, "sent {bytes}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(local_sha(std::path::Path::new(&dst)), local_sha(&file));
    assert!(collector.events().iter().any(|e| matches!(e,
        Event::Message { text, .. } if text.contains("resuming"))));
    assert!(gone("tee -a -- .*payload.bin").await);
}

#[tokio::test]
async fn dropped_connections_retry_idempotent_commands_only() {
    let Some(sshd) = Sshd::start() else { return };
    let sshd = Arc::new(sshd);
    let h = host(sshd.spec());
    h.connect().await.unwrap();
    sshd.kill_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Idempotent: silently reconnected.
    assert_eq!(id_u(&h).await, "0");

    // Non-idempotent and already running when the connection drops: reported.
    let s2 = sshd.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        s2.kill_connections();
    });
    let err = h
        .exec(RemoteCommand::new("sleep 2; echo once >> /tmp/never-twice").not_idempotent())
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Disconnected { .. }), "{err}");
    assert!(
        err.to_string().contains("connection dropped during"),
        "{err}"
    );

    // Idempotent and running when it drops: retried to completion.
    let s3 = sshd.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s3.kill_connections();
    });
    let out = h
        .run(RemoteCommand::new("sleep 1.5; echo finished"))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "finished\n");
}

#[tokio::test]
async fn jump_host_and_its_own_host_key_check() {
    let Some(sshd) = Sshd::start() else { return };
    let target = sshd.spec().bastion(sshd.spec().name("jump"));
    let h = host(target.clone());
    assert_eq!(id_u(&h).await, "0");
    // Through the jump, the target sees a connection from the jump's sshd.
    let out = h
        .run(RemoteCommand::new("echo $SSH_CONNECTION"))
        .await
        .unwrap();
    assert!(
        out.stdout_str().starts_with("127.0.0.1 "),
        "{}",
        out.stdout_str()
    );

    // The jump host's key is checked on its own: an unknown jump host stops the login.
    let mut bad_jump = sshd.spec().name("jump");
    bad_jump.known_hosts = vec![sshd.path("none")];
    let err = host(sshd.spec().bastion(bad_jump))
        .connect()
        .await
        .unwrap_err();
    match err {
        HostError::HostKeyUnknown { host, .. } => assert_eq!(host, "jump"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ssh_config_alias_user_port_key_and_proxyjump() {
    let Some(sshd) = Sshd::start() else { return };
    let cfg = sshd.path("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host jumpbox\n  HostName 127.0.0.1\n  Port {p}\n  User root\n  IdentityFile {k}\n\
             Host db1\n  HostName 127.0.0.1\n  Port {p}\n  User root\n  IdentityFile {k}\n  ProxyJump jumpbox\n\
             Host *\n  User nobody\n",
            p = sshd.port,
            k = sshd.path("id_rsa").display()
        ),
    )
    .unwrap();
    // The answer file names only "db1": everything else comes from ssh_config.
    let mut spec = ConnectionSpec::new("db1");
    spec.known_hosts = vec![sshd.known_hosts()];
    spec.ssh_config = SshConfigSource::File(cfg.clone());
    spec.auth = vec![];
    let h = host(spec.clone());
    assert_eq!(h.login_user().unwrap(), "root");
    assert_eq!(id_u(&h).await, "0");
    // Explicit values win over ssh_config. (This sshd takes the same keys for every user;
    // `nobody` gets in, and its nologin shell refuses to run anything.)
    spec.user = Some("nobody".into());
    let h = host(spec);
    assert_eq!(h.login_user().unwrap(), "nobody");
    let err = h.run(RemoteCommand::new("id -u")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the login shell of nobody did not run `id -u`"),
        "{text}"
    );
    assert!(text.contains("not available"), "{text}");
}

#[tokio::test]
async fn forwarded_tcp_connection() {
    let Some(sshd) = Sshd::start() else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong:").await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let h = host(sshd.spec());
    let mut t = h.connect_tcp("127.0.0.1", port).await.unwrap();
    t.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"pong:hello");

    // Nothing listening: a Forward error naming the target.
    drop(t);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = match h.connect_tcp("127.0.0.1", closed).await {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(
        matches!(&err, HostError::Forward { target, .. } if target == &format!("127.0.0.1:{closed}")),
        "{err}"
    );
}

#[tokio::test]
async fn fan_out_collects_every_host() {
    let Some(sshd) = Sshd::start() else { return };
    let mut hosts = Vec::new();
    for i in 0..4 {
        hosts.push(Arc::new(host(sshd.spec().name(format!("h{i}")))));
    }
    let out = fan_out(&hosts, 2, |h| async move {
        let n = h.name().trim_start_matches('h').to_owned();
        h.run(RemoteCommand::new(format!("test {n} -ne 2 && echo {n}")))
            .await
    })
    .await;
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].0, "h2");
    assert_eq!(out.results[3].result.as_ref().unwrap().stdout_str(), "3\n");
    assert!(
        out.summary()
            .unwrap()
            .starts_with("failed on 1 of 4 hosts: h2: ")
    );
}
