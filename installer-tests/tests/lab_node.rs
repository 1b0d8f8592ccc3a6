//! What a lab node offers the tests that run against it: the users and their sudo rules, SSH password
//! login for exactly one user, the three lab keys, a systemd `Type=notify` service (the k3s stand-in
//! runs as one), /dev/kmsg, a plain-directory /var/lib/rancher, its own firewall tools, writable
//! cgroups, a real time-sync daemon that cannot touch the shared clock, a default route via the
//! bridge without the host forwarding anything (and the lab's own forward-drop table). Needs root and the lab; skipped with the reason
//! otherwise (failed under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use installer_tests::lab::{self, Lab, Node};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The system ssh, strict host key checking against the lab's known_hosts, answering prompts
/// (password or key passphrase) with `secret` through SSH_ASKPASS.
fn ssh_with_askpass(
    lab: &Lab,
    node: &Node,
    user: &str,
    extra: &[&str],
    secret: &str,
    cmd: &str,
) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\nprintf '%s\\n' '{secret}'\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.known_hosts_path().display()
        ))
        .args(extra)
        .arg(format!("{user}@{}", node.addr))
        .arg(cmd)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn key_login(lab: &Lab, node: &Node, key: &Path, user: &str) -> Output {
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .arg("-o")
    .arg(format!(
        "UserKnownHostsFile={}",
        lab.known_hosts_path().display()
    ))
    .arg("-i")
    .arg(key)
    .arg(format!("{user}@{}", node.addr))
    .arg("id -un");
    c.output().unwrap()
}

#[test]
fn users_sudo_password_login_and_key_types() {
    let Some(lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    let n = &lab.nodes()[0];

    // root and the passwordless-sudo user log in with the lab key; that user's sudo needs no password.
    assert_eq!(lab.ssh_ok(n, "id -u").unwrap().trim(), "0");
    let out = lab
        .ssh_as(lab::NOPASSWD_SUDO_USER, n, "sudo -n id -u")
        .unwrap();
    assert_eq!(text(&out.stdout), "0", "{out:?}");

    // The other user logs in with the key too, but sudo asks for the password.
    let out = lab
        .ssh_as(lab::PASSWORD_SUDO_USER, n, "sudo -n true")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("password is required"),
        "{out:?}"
    );
    let out = lab
        .ssh_as(
            lab::PASSWORD_SUDO_USER,
            n,
            &format!(
                "echo '{}' | sudo -S -p '' id -u",
                lab::PASSWORD_SUDO_USER_PASSWORD
            ),
        )
        .unwrap();
    assert_eq!(text(&out.stdout), "0", "{out:?}");
    let out = lab
        .ssh_as(
            lab::PASSWORD_SUDO_USER,
            n,
            "echo wrong | sudo -S -p '' id -u",
        )
        .unwrap();
    assert!(!out.status.success(), "sudo accepted a wrong password");

    // SSH password login: allowed for that user only.
    let pw_only = [
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
    ];
    let out = ssh_with_askpass(
        &lab,
        n,
        lab::PASSWORD_SUDO_USER,
        &pw_only,
        lab::PASSWORD_SUDO_USER_PASSWORD,
        "id -un",
    );
    assert_eq!(text(&out.stdout), lab::PASSWORD_SUDO_USER, "{out:?}");
    let out = ssh_with_askpass(
        &lab,
        n,
        lab::PASSWORD_SUDO_USER,
        &pw_only,
        "not-the-password",
        "id -un",
    );
    assert_eq!(
        out.status.code(),
        Some(255),
        "a wrong password logged in: {out:?}"
    );
    let out = ssh_with_askpass(
        &lab,
        n,
        lab::NOPASSWD_SUDO_USER,
        &pw_only,
        lab::PASSWORD_SUDO_USER_PASSWORD,
        "id -un",
    );
    assert_eq!(
        out.status.code(),
        Some(255),
        "password login must be off for {}: {out:?}",
        lab::NOPASSWD_SUDO_USER
    );

    // The three lab keys: ed25519, RSA, and the encrypted ed25519 copy (with its passphrase only).
    for (key, user) in [
        (lab.key_path(), lab::ROOT_USER),
        (lab.rsa_key_path(), lab::NOPASSWD_SUDO_USER),
    ] {
        let out = key_login(&lab, n, &key, user);
        assert_eq!(text(&out.stdout), user, "{}: {out:?}", key.display());
    }
    let rsa_pub = std::fs::read_to_string(lab.rsa_key_path().with_extension("pub")).unwrap();
    assert!(rsa_pub.starts_with("ssh-rsa "));
    let out = key_login(&lab, n, &lab.encrypted_key_path(), "root");
    assert_eq!(
        out.status.code(),
        Some(255),
        "an encrypted key must not load without its passphrase"
    );
    let key_only = [
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PreferredAuthentications=publickey",
        "-i",
    ];
    let enc = lab.encrypted_key_path();
    let mut extra: Vec<&str> = key_only.to_vec();
    let enc_s = enc.to_string_lossy().into_owned();
    extra.push(&enc_s);
    let out = ssh_with_askpass(
        &lab,
        n,
        "root",
        &extra,
        lab::ENCRYPTED_KEY_PASSPHRASE,
        "id -un",
    );
    assert_eq!(text(&out.stdout), "root", "{out:?}");

    // The installer's SSH layer may use SFTP: scp (SFTP protocol in OpenSSH 9) works.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "payload\n").unwrap();
    lab.cp(f.path(), n, "/tmp/payload").unwrap();
    assert_eq!(lab.ssh_ok(n, "cat /tmp/payload").unwrap(), "payload\n");

    lab.down().unwrap();
}

#[test]
fn nodes_run_notify_services_and_have_what_k3s_needs() {
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    // forward_guard: the forward-drop nftables table is added although this host may not forward.
    let Some(lab) = installer_tests::lab_or_skip!(Lab::builder(2).forward_guard(true)) else {
        return;
    };
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let layout = lab.layout().clone();
    let table = Command::new("nft")
        .args(["list", "table", "inet", &layout.nft_table()])
        .output()
        .unwrap();
    let rules = text(&table.stdout);
    let b = layout.bridge();
    assert!(
        rules.contains(&format!("iifname \"{b}\" oifname != \"{b}\" drop")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("oifname \"{b}\" iifname != \"{b}\" drop")),
        "{rules}"
    );

    // Regression: `Lab::exec` (nsenter) ran scripts in the host's cgroup namespace, unlike an SSH
    // login, so a fault helper's nftables rule on a cgroup path of the node never matched.
    let ns = "readlink /proc/self/ns/cgroup";
    let over_ssh = text(&lab.ssh(n1, ns).unwrap().stdout);
    let by_exec = text(&lab.exec(n1, ns).unwrap().stdout);
    assert!(over_ssh.starts_with("cgroup:["), "{over_ssh}");
    assert_eq!(
        by_exec, over_ssh,
        "Lab::exec and SSH see different cgroup namespaces"
    );

    // A Type=notify service (the k3s stand-in runs as k3s.service): active only after READY=1.
    let unit = r#"cat > /etc/systemd/system/notify-probe.service <<'EOF'
[Service]
Type=notify
ExecStart=/usr/bin/perl -MIO::Socket::UNIX -e 'sleep 1; $s = IO::Socket::UNIX->new(Type => SOCK_DGRAM(), Peer => $ENV{NOTIFY_SOCKET}) or die "notify: $!"; $s->send("READY=1"); sleep'
EOF
systemctl daemon-reload && systemctl start notify-probe.service && systemctl show -p Type,ActiveState,SubState notify-probe.service"#;
    let out = lab.ssh_ok(n1, unit).unwrap();
    assert!(
        out.contains("Type=notify")
            && out.contains("ActiveState=active")
            && out.contains("SubState=running"),
        "{out}"
    );

    // /dev/kmsg is there (k3s' kubelet opens it).
    lab.ssh_ok(n1, "test -c /dev/kmsg").unwrap();

    // /var/lib/rancher is a plain directory bind-mounted from the host, not the overlay.
    let fstype = lab
        .ssh_ok(n1, "findmnt -n -o FSTYPE /var/lib/rancher")
        .unwrap();
    assert!(!["overlay", "tmpfs"].contains(&fstype.trim()), "{fstype}");
    lab.ssh_ok(n1, "echo from-node > /var/lib/rancher/probe")
        .unwrap();
    let host_side = lab.state_dir().join("node1/rancher/probe");
    assert_eq!(std::fs::read_to_string(host_side).unwrap(), "from-node\n");

    // Firewall tools of its own, and writable cgroups for a container runtime.
    lab.ssh_ok(
        n1,
        "nft list ruleset >/dev/null && iptables -L -n >/dev/null",
    )
    .unwrap();
    lab.ssh_ok(
        n1,
        "mkdir /sys/fs/cgroup/pids/labprobe && rmdir /sys/fs/cgroup/pids/labprobe",
    )
    .unwrap();

    // A real time-sync daemon runs, but no node may set the clock the host shares.
    assert_eq!(
        lab.ssh_ok(n1, "systemctl is-active chrony").unwrap().trim(),
        "active"
    );
    let out = lab.ssh(n1, "date -s '2001-01-01 00:00:00'").unwrap();
    assert!(!out.status.success(), "a node changed the host clock");
    assert!(text(&out.stderr).contains("not permitted"), "{out:?}");

    // Each node: its own machine-id; default route via the bridge; nodes reach each other.
    let m1 = lab.ssh_ok(n1, "cat /etc/machine-id").unwrap();
    let m2 = lab.ssh_ok(n2, "cat /etc/machine-id").unwrap();
    assert_ne!(m1, m2);
    let route = lab.ssh_ok(n1, "ip -4 route show default").unwrap();
    assert!(
        route.contains(&format!("via {}", lab.bridge_addr())),
        "{route}"
    );
    lab.ssh_ok(n1, &format!("ping -c 1 -W 2 {}", n2.addr))
        .unwrap();

    // The lab did not change how the host forwards.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forward_before
    );

    // fill_disk needs a size-limited /var/lib/rancher: refused with a hint on a default lab.
    let err = lab.fill_disk(n1).map(|_| ()).unwrap_err();
    assert!(format!("{err:#}").contains("rancher_size_mib"), "{err:#}");

    lab.down().unwrap();
    assert!(
        lab::leftovers(&layout).is_empty(),
        "{:?}",
        lab::leftovers(&layout)
    );
}

#[test]
fn refuses_bad_node_counts_before_touching_anything() {
    for n in [0, 6] {
        let err = Lab::up(n).unwrap_err();
        assert!(err.to_string().contains("1 to 5 nodes"), "{err:#}");
    }
}
