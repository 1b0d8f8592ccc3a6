//! The SSH layer against the lab's real hosts (issue 4, "Tests against the lab's real
//! sshd"): key, agent and password logins; wrong key, wrong password, unknown and changed
//! host keys; sudo with and without a password and a wrong sudo password; a 200 MB
//! upload verified on the host; an upload interrupted by killing the connection and
//! completed on retry; a rerun that skips; a login through a bastion; a forwarded TCP
//! connection. Skips (with the reason) when the lab cannot run; `LAB_REQUIRED=1` fails.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use installer::host::ssh::{
    AuthMethod, ConnectionSpec, RetryPolicy, SshConfigSource, SshHost, SudoMode,
};
use installer::host::{
    HostError, Remote, RemoteCommand, RemoteExt, Stdin, UploadOutcome, UploadSource, UploadTarget,
};
use installer::report::Reporter;
use installer::report::events::Collector;
use installer::secret::Secret;
use installer_tests::lab::{self, Lab, Node};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A hermetic spec for `user` on `node` with the lab key and known_hosts.
fn spec(lab: &Lab, node: &Node, user: &str) -> ConnectionSpec {
    ConnectionSpec::new(node.addr.to_string())
        .name(node.name.clone())
        .user(user)
        .auth(AuthMethod::KeyFile {
            path: lab.key_path(),
            passphrase: None,
        })
        .known_hosts(lab.known_hosts_path())
        .ssh_config(SshConfigSource::Off)
}

fn host(spec: ConnectionSpec) -> SshHost {
    SshHost::new(spec, Reporter::silent())
}

async fn whoami(h: &SshHost, sudo: bool) -> Result<String, HostError> {
    let mut c = RemoteCommand::new("id -un");
    c.sudo = sudo;
    Ok(h.run(c).await?.stdout_str().trim().to_owned())
}

/// Kills the per-connection sshd processes on `node` (the listener survives): every open
/// SSH connection to it drops at once, as a network or host failure would.
fn kill_connections(lab: &Lab, node: &Node) {
    lab.exec(
        node,
        "main=$(systemctl show -p MainPID --value ssh.service); \
         for p in $(pgrep -x sshd); do [ \"$p\" = \"$main\" ] || kill -KILL \"$p\"; done",
    )
    .unwrap();
}

#[test]
fn key_agent_and_password_logins() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];
    rt().block_on(async {
        // Key files: ed25519 as root, RSA (SHA-2 signatures) as deploy, the encrypted key
        // with its passphrase as admin.
        assert_eq!(
            whoami(&host(spec(&lab, n, lab::ROOT_USER)), false)
                .await
                .unwrap(),
            "root"
        );
        let mut s = spec(&lab, n, lab::NOPASSWD_SUDO_USER);
        s.auth = vec![AuthMethod::KeyFile {
            path: lab.rsa_key_path(),
            passphrase: None,
        }];
        assert_eq!(whoami(&host(s), false).await.unwrap(), "deploy");
        let mut s = spec(&lab, n, lab::PASSWORD_SUDO_USER);
        s.auth = vec![AuthMethod::KeyFile {
            path: lab.encrypted_key_path(),
            passphrase: Some(Secret::new(lab::ENCRYPTED_KEY_PASSPHRASE)),
        }];
        assert_eq!(whoami(&host(s), false).await.unwrap(), "admin");

        // ssh-agent.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let mut agent = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let added = std::process::Command::new("ssh-add")
            .arg(lab.key_path())
            .env("SSH_AUTH_SOCK", &sock)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(added.success());
        let mut s = spec(&lab, n, lab::NOPASSWD_SUDO_USER);
        s.auth = vec![AuthMethod::Agent {
            socket: Some(sock.clone()),
        }];
        let r = whoami(&host(s), false).await;
        let _ = agent.kill();
        let _ = agent.wait();
        assert_eq!(r.unwrap(), "deploy");

        // Password login (only admin may).
        let mut s = spec(&lab, n, lab::PASSWORD_SUDO_USER);
        s.auth = vec![AuthMethod::Password(Secret::new(
            lab::PASSWORD_SUDO_USER_PASSWORD,
        ))];
        assert_eq!(whoami(&host(s), false).await.unwrap(), "admin");
    });
}

#[test]
fn wrong_key_wrong_password_unknown_and_changed_host_keys_each_say_so() {
    let Some(lab) = installer_tests::lab_or_skip!(2) else {
        return;
    };
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("id_stranger");
    assert!(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .status()
            .unwrap()
            .success()
    );
    rt().block_on(async {
        // Wrong key.
        let mut s = spec(&lab, n1, lab::ROOT_USER);
        s.auth = vec![AuthMethod::KeyFile {
            path: stranger.clone(),
            passphrase: None,
        }];
        let e = host(s).connect().await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: SSH login as root failed; tried: publickey ",
                n1.name
            )),
            "{text}"
        );
        assert!(
            text.contains("the server refused the key (SHA256:"),
            "{text}"
        );

        // Wrong password.
        let mut s = spec(&lab, n1, lab::PASSWORD_SUDO_USER);
        s.auth = vec![AuthMethod::Password(Secret::new("not-the-password"))];
        match host(s).connect().await.unwrap_err() {
            HostError::Auth { user, attempts, .. } => {
                assert_eq!(user, "admin");
                assert_eq!(attempts.len(), 1);
                assert_eq!(attempts[0].method, "password");
                assert_eq!(attempts[0].reason, "the server rejected the password");
            }
            other => panic!("{other}"),
        }

        // Unknown host key (nothing vouches for it): its fingerprint is shown.
        let mut s = spec(&lab, n1, lab::ROOT_USER);
        s.known_hosts = vec![dir.path().join("empty")];
        match host(s).connect().await.unwrap_err() {
            HostError::HostKeyUnknown { fingerprint, .. } => {
                assert_eq!(fingerprint, n1.host_key_fingerprint)
            }
            other => panic!("{other}"),
        }

        // Changed host key: node2's key recorded for node1's address.
        let kh = dir.path().join("known_hosts_changed");
        std::fs::write(&kh, format!("{} {}\n", n1.addr, n2.host_public_key)).unwrap();
        let mut s = spec(&lab, n1, lab::ROOT_USER);
        s.known_hosts = vec![kh.clone()];
        let e = host(s).connect().await.unwrap_err();
        match &e {
            HostError::HostKeyChanged {
                expected,
                offered,
                source_of_expected,
                ..
            } => {
                assert_eq!(expected, &n2.host_key_fingerprint);
                assert!(offered.contains(&n1.host_key_fingerprint));
                assert_eq!(source_of_expected, &format!("{}:1", kh.display()));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("HOST KEY HAS CHANGED"));
        assert!(e.hint().unwrap().contains(&kh.display().to_string()));
    });
}

#[test]
fn sudo_with_and_without_a_password_and_a_wrong_one() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];
    rt().block_on(async {
        // Passwordless sudo.
        let deploy = host(spec(&lab, n, lab::NOPASSWD_SUDO_USER).sudo(SudoMode::Passwordless));
        assert_eq!(whoami(&deploy, true).await.unwrap(), "root");

        // Sudo with a password: works, and the password is in no process's arguments or
        // environment while the command runs, and in no event.
        let collector = Arc::new(Collector::default());
        let admin = SshHost::new(
            spec(&lab, n, lab::PASSWORD_SUDO_USER).sudo(SudoMode::Password(Secret::new(
                lab::PASSWORD_SUDO_USER_PASSWORD,
            ))),
            Reporter::new(vec![collector.clone()]),
        );
        assert_eq!(whoami(&admin, true).await.unwrap(), "root");
        let a2 = admin.clone();
        let long = tokio::spawn(async move {
            a2.run(RemoteCommand::new("sleep 3; echo slept").sudo())
                .await
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ps = lab
            .exec(
                n,
                "cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
            )
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        assert!(ps.contains("sleep 3"), "the command should be running");
        assert!(
            !ps.contains(lab::PASSWORD_SUDO_USER_PASSWORD),
            "password visible on the host"
        );
        assert_eq!(long.await.unwrap().unwrap().stdout_str(), "slept\n");
        // A command that needs stdin of its own still gets it (not the password).
        let out = admin
            .run(
                RemoteCommand::new("cat")
                    .sudo()
                    .stdin(Stdin::Bytes(b"data on stdin\n".to_vec())),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "data on stdin\n");
        for e in collector.events() {
            let json = serde_json::to_string(&e).unwrap();
            assert!(!json.contains(lab::PASSWORD_SUDO_USER_PASSWORD), "{json}");
        }

        // A user who needs a password, with passwordless mode: said so, no hang.
        let h = host(spec(&lab, n, lab::PASSWORD_SUDO_USER).sudo(SudoMode::Passwordless));
        let t = std::time::Instant::now();
        match whoami(&h, true).await.unwrap_err() {
            HostError::SudoPasswordRequired { user, .. } => assert_eq!(user, "admin"),
            other => panic!("{other}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));

        // A wrong sudo password: reported as such, once; later sudo commands fail at once
        // without trying the password again (no account lockout).
        let before = failures(&lab, n);
        let h = host(
            spec(&lab, n, lab::PASSWORD_SUDO_USER)
                .sudo(SudoMode::Password(Secret::new("wrong-sudo-password"))),
        );
        let t = std::time::Instant::now();
        let e = whoami(&h, true).await.unwrap_err();
        assert!(matches!(e, HostError::SudoWrongPassword { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: sudo rejected the password for admin", n.name)
        );
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "took {:?}",
            t.elapsed()
        );
        let e2 = whoami(&h, true).await.unwrap_err();
        assert!(matches!(e2, HostError::SudoWrongPassword { .. }));
        // Commands without sudo still work.
        assert_eq!(whoami(&h, false).await.unwrap(), "admin");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            failures(&lab, n),
            before + 1,
            "sudo was asked more than once"
        );
    });
}

/// Failed sudo password attempts the node's journal recorded so far.
fn failures(lab: &Lab, n: &Node) -> usize {
    let out = lab
        .exec(n, "journalctl -q --no-pager _COMM=sudo 2>/dev/null | grep -c 'incorrect password attempt' || true")
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn timeouts_kill_commands_run_through_either_sudo() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];
    rt().block_on(async {
        for (i, h) in [
            host(spec(&lab, n, lab::NOPASSWD_SUDO_USER).sudo(SudoMode::Passwordless)),
            host(
                spec(&lab, n, lab::PASSWORD_SUDO_USER).sudo(SudoMode::Password(Secret::new(
                    lab::PASSWORD_SUDO_USER_PASSWORD,
                ))),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let marker = format!("sleep 47{i}1");
            let e = h
                .exec(
                    RemoteCommand::new(format!("{marker} & sleep 47{i}2"))
                        .sudo()
                        .timeout(Duration::from_secs(2)),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, HostError::Timeout { .. }), "{e}");
            // (`slee[p]`: the pattern must not match this very shell command.)
            let left = lab
                .exec(n, &format!("pgrep -af 'slee[p] 47{i}' || true"))
                .unwrap();
            let left = String::from_utf8_lossy(&left.stdout).into_owned();
            assert!(
                left.trim().is_empty(),
                "left running after the timeout: {left}"
            );
        }
    });
}

fn payload(dir: &std::path::Path, mb: usize) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("payload.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mb {
        for (j, b) in block.iter_mut().enumerate() {
            *b = ((i * 131 + j * 17) % 253) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    p
}

fn sha256_file(p: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

fn sha256_on(lab: &Lab, n: &Node, path: &str) -> String {
    let out = lab.exec(n, &format!("sha256sum {path}")).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(64)
        .collect()
}

#[test]
fn upload_200mb_verified_on_the_host_then_a_rerun_skips() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];
    let dir = tempfile::tempdir().unwrap();
    let file = payload(dir.path(), 200);
    let want = sha256_file(&file);
    rt().block_on(async {
        // As a sudo user with a password: the password and 200 MB share stdin.
        let h = host(
            spec(&lab, n, lab::PASSWORD_SUDO_USER).sudo(SudoMode::Password(Secret::new(
                lab::PASSWORD_SUDO_USER_PASSWORD,
            ))),
        );
        let target = UploadTarget::root("/opt/installer-test/payload.bin", 0o600);
        let src = UploadSource::File {
            path: file.clone(),
            sha256: None,
        };
        let out = h.upload(&src, &target, None).await.unwrap();
        assert_eq!(out, UploadOutcome::Uploaded { bytes: 200 << 20 });
        assert_eq!(sha256_on(&lab, n, &target.path), want);
        let st = lab
            .exec(
                n,
                "stat -c '%a %U:%G %s' /opt/installer-test/payload.bin; ls -a /opt/installer-test",
            )
            .unwrap();
        let st = String::from_utf8_lossy(&st.stdout).into_owned();
        assert!(
            st.starts_with(&format!("600 root:root {}\n", 200 << 20)),
            "{st}"
        );
        assert!(!st.contains(".part"), "{st}");
        // The rerun (checksum known, as for embedded assets) sends nothing.
        let again = UploadSource::File {
            path: file.clone(),
            sha256: Some(want.clone()),
        };
        assert_eq!(
            h.upload(&again, &target, None).await.unwrap(),
            UploadOutcome::AlreadyPresent
        );
    });
}

#[test]
fn upload_interrupted_by_killing_the_connection_completes_on_retry() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = lab.nodes()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = payload(dir.path(), 150);
    let want = sha256_file(&file);
    let target = UploadTarget::root("/opt/installer-test/resume.bin", 0o644);
    let src = UploadSource::File {
        path: file.clone(),
        sha256: None,
    };
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let lab_ref = &lab;
        let n_ref = &n;
        scope.spawn(move || {
            while kill_rx.recv().is_ok() {
                kill_connections(lab_ref, n_ref);
            }
        });
        rt().block_on(async {
            let killer = |tx: std::sync::mpsc::Sender<()>| -> installer::host::Progress {
                let fired = std::sync::atomic::AtomicBool::new(false);
                let tx = std::sync::Mutex::new(tx);
                Arc::new(move |done, _| {
                    if done >= 50 << 20 && !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        let _ = tx.lock().unwrap().send(());
                    }
                })
            };
            let mut s = spec(&lab, &n, lab::NOPASSWD_SUDO_USER).sudo(SudoMode::Passwordless);
            s.retry = RetryPolicy {
                attempts: 0,
                backoff: Duration::from_millis(200),
            };
            let h = host(s);
            let e = h
                .upload(&src, &target, Some(killer(kill_tx.clone())))
                .await
                .unwrap_err();
            assert!(matches!(e, HostError::Disconnected { .. }), "{e}");
            // The retry resumes from what the host already has.
            match h.upload(&src, &target, None).await.unwrap() {
                UploadOutcome::Uploaded { bytes } => {
                    assert!(bytes <= 110 << 20, "sent {bytes} bytes again: no resume")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(sha256_on(&lab, &n, &target.path), want);

            // With the default retry policy one call rides over the drop.
            lab.exec(&n, "rm -f /opt/installer-test/resume.bin")
                .unwrap();
            let h = host(spec(&lab, &n, lab::NOPASSWD_SUDO_USER).sudo(SudoMode::Passwordless));
            let out = h
                .upload(&src, &target, Some(killer(kill_tx.clone())))
                .await
                .unwrap();
            assert!(matches!(out, UploadOutcome::Uploaded { bytes } if bytes < 150 << 20));
            assert_eq!(sha256_on(&lab, &n, &target.path), want);
        });
        drop(kill_tx);
    });
    let left = lab.exec(&n, "pgrep -ax tee || true").unwrap();
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    assert!(left.trim().is_empty(), "left running: {left}");
}

#[test]
fn login_through_a_bastion_reaches_a_host_the_workstation_cannot() {
    let Some(lab) = installer_tests::lab_or_skip!(2) else {
        return;
    };
    let (jump, target) = (&lab.nodes()[0], &lab.nodes()[1]);
    // The target drops SSH from the workstation (the bridge address): only the jump host
    // can reach it.
    lab.exec(
        target,
        &format!(
            "nft add table inet sshtest && nft add chain inet sshtest in '{{ type filter hook input priority 0; }}' && \
             nft add rule inet sshtest in ip saddr {} tcp dport 22 drop",
            lab.bridge_addr()
        ),
    )
    .unwrap();
    rt().block_on(async {
        let mut direct = spec(&lab, target, lab::ROOT_USER);
        direct.connect_timeout = Duration::from_secs(3);
        assert!(matches!(
            host(direct).connect().await,
            Err(HostError::Connect { .. })
        ));
        let via = spec(&lab, target, lab::NOPASSWD_SUDO_USER)
            .sudo(SudoMode::Passwordless)
            .bastion(spec(&lab, jump, lab::NOPASSWD_SUDO_USER).name("bastion"));
        let h = host(via);
        assert_eq!(whoami(&h, true).await.unwrap(), "root");
        let out = h
            .run(RemoteCommand::new("hostname; echo $SSH_CONNECTION"))
            .await
            .unwrap();
        let text = out.stdout_str();
        assert!(
            text.starts_with(&format!("{}\n{} ", target.hostname, jump.addr)),
            "{text}"
        );
    });
    lab.exec(target, "nft delete table inet sshtest").unwrap();
}

#[test]
fn forwarded_tcp_connection_to_a_port_only_the_host_can_reach() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];
    // An echo server on the node's loopback only (like k3s's 127.0.0.1:6443 seen from outside).
    lab.exec(
        n,
        "cat > /run/echo.pl <<'EOF'\n\
         use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 16443, Listen => 4, ReuseAddr => 1) or die;\n\
         while (my $c = $s->accept) { while (my $l = <$c>) { print $c \"echo: $l\" } close $c }\n\
         EOF\n\
         systemd-run --quiet --unit=ssh-test-echo /usr/bin/perl /run/echo.pl; sleep 0.5",
    )
    .unwrap();
    rt().block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let h = host(spec(&lab, n, lab::NOPASSWD_SUDO_USER));
        let t = h.connect_tcp("127.0.0.1", 16443).await.unwrap();
        let (r, mut w) = tokio::io::split(t);
        w.write_all(b"hello 6443\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        assert_eq!(line, "echo: hello 6443\n");
        // A port where nothing listens: a Forward error, not a hang.
        let e = match h.connect_tcp("127.0.0.1", 16444).await {
            Err(e) => e,
            Ok(_) => panic!("connected to a closed port"),
        };
        assert!(matches!(e, HostError::Forward { .. }), "{e}");
    });
    lab.exec(n, "systemctl stop ssh-test-echo").unwrap();
}

#[test]
fn a_silently_dead_link_is_found_by_keepalives_and_the_next_command_reconnects() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = lab.nodes()[0].clone();
    std::thread::scope(|scope| {
        let (lab_ref, n_ref) = (&lab, &n);
        // Cut the link 1 s into the command, restore it 8 s later: no FIN, no RST, just
        // silence, as when a switch or a VPN dies.
        let cutter = scope.spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            lab_ref.link_down(n_ref).unwrap();
            std::thread::sleep(Duration::from_secs(8));
            lab_ref.link_up(n_ref).unwrap();
        });
        rt().block_on(async {
            let mut s = spec(&lab, &n, lab::ROOT_USER);
            s.keepalive = Duration::from_secs(1);
            s.connect_timeout = Duration::from_secs(3);
            s.retry = RetryPolicy {
                attempts: 6,
                backoff: Duration::from_millis(500),
            };
            let h = host(s);
            h.connect().await.unwrap();
            let t = std::time::Instant::now();
            let e = h
                .exec(
                    RemoteCommand::new("sleep 30; echo done")
                        .not_idempotent()
                        .timeout(Duration::from_secs(120)),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, HostError::Disconnected { .. }), "{e}");
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "the dead link took {:?} to notice",
                t.elapsed()
            );
            // An idempotent command retries (with backoff) until the link is back.
            assert_eq!(whoami(&h, false).await.unwrap(), "root");
        });
        cutter.join().unwrap();
    });
}
