//! End to end (issue 6): preflight failures are caught, each with its hint, before anything
//! is changed on any host. Each case breaks one thing on a 3-host lab, runs
//! `installer install`, checks the error names the host, what is wrong and what to do,
//! checks that every host is untouched, and undoes the fault. One 3-host lab serves every
//! case of the first test (issue 17 added UDP 1053 held, a hostname `Node_2`, and a node
//! 40 s slow to answer its facts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use installer_tests::e2e::{self, Env, Run};
use installer_tests::lab::Lab;
use installer_tests::lab_or_skip;

fn assert_stopped_untouched(lab: &Lab, run: &Run, want: &[&str]) {
    assert_eq!(run.code, 1, "{}", run.all());
    let failures = run.failures();
    for w in want {
        assert!(
            failures.contains(w),
            "no {w:?} in\n{failures}\n{}",
            run.all()
        );
    }
    // It stopped before any phase that changes a host.
    assert!(
        run.of("phase_started")
            .iter()
            .all(|p| p["phase"] == "connect" || p["phase"] == "preflight"),
        "{}",
        run.all()
    );
    for n in lab.nodes() {
        assert!(e2e::untouched(lab, n).unwrap(), "{} was changed", n.name);
    }
}

#[test]
fn preflight_failures_stop_the_install_with_a_hint_and_change_nothing() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let [n1, n2, n3] = [&lab.nodes()[0], &lab.nodes()[1], &lab.nodes()[2]];

    // A port k3s needs, taken on one node.
    {
        let guard = lab.occupy_port(n2, 6443).unwrap();
        let run = env.run(&answers, &["install"]).unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!("{}: ports-free: found TCP port 6443 is in use", n2.addr),
                "hint: stop or move the service listening on 6443",
            ],
        );
        // Only that node failed.
        assert!(
            !run.failures().contains(&format!("{}: ports-free", n1.addr)),
            "{}",
            run.all()
        );
        guard.restore().unwrap();
    }

    // Two hosts with the same hostname (and no nodeName to tell them apart).
    {
        let no_names = env
            .answers_variant(&lab, "no-node-names", |t| {
                t.lines()
                    .filter(|l| !l.trim_start().starts_with("nodeName:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap();
        lab.exec_ok(n3, "hostname node1").unwrap();
        let run = env.run(&no_names, &["install"]).unwrap();
        lab.exec_ok(n3, "hostname node3").unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                "unique-names: found 2 hosts would register as node \"node1\"",
                "hint: give each host its own hostname",
            ],
        );
    }

    // Issue 17: a UDP port the installer's CoreDNS needs (1053), held on one node. Preflight
    // gathered UDP listeners but never checked them, so k3s landed everywhere and CoreDNS
    // crash-looped with an error naming no port.
    {
        let unit = "lab-occupy-udp-1053";
        lab.exec_ok(
            n2,
            &format!(
                "cat > /run/{unit}.pl <<'EOF'\n\
                 my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => 1053, Proto => 'udp') or die \"bind: $!\\n\";\n\
                 while (1) {{ my $m; $s->recv($m, 512) }}\n\
                 EOF\n\
                 systemd-run --quiet --unit={unit} --description='lab fault: occupy UDP 1053' /usr/bin/perl -MIO::Socket::INET /run/{unit}.pl"
            ),
        )
        .unwrap();
        // Bound (a poll, not a sleep): the socket shows up in `ss` once perl holds it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lab
            .exec_ok(n2, "ss -Hulnp 'sport = :1053'")
            .unwrap()
            .contains("perl")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "perl never bound UDP 1053 on {}",
                n2.name
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let run = env.run(&answers, &["install"]).unwrap();
        lab.exec_ok(n2, &format!("systemctl stop {unit}; rm -f /run/{unit}.pl"))
            .unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!(
                    "{}: ports-free: found UDP port 1053 is in use by perl",
                    n2.addr
                ),
                "hint: stop or move the service bound to UDP 1053",
            ],
        );
        // Only that node, and only UDP.
        let f = run.failures();
        assert!(!f.contains(&format!("{}: ports-free", n1.addr)), "{f}");
        assert!(!f.contains(&format!("{}: ports-free", n3.addr)), "{f}");
        assert!(!f.contains("TCP port 1053"), "{f}");
    }

    // Issue 17: a hostname that is not a valid node name passed preflight ("18 checks
    // passed") and the install failed in join-servers with no hint to set nodeName.
    {
        let no_names = env
            .answers_variant(&lab, "no-node-names-invalid", |t| {
                t.lines()
                    .filter(|l| !l.trim_start().starts_with("nodeName:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap();
        // `hostname` refuses the name and /proc/sys is read-only in the container: call
        // sethostname(2) itself (170 on x86_64, 161 on aarch64), as a hand-set name would be.
        lab.exec_ok(
            n2,
            "case $(uname -m) in x86_64) n=170;; aarch64) n=161;; *) exit 3;; esac; \
             perl -e 'syscall($ARGV[0] + 0, $ARGV[1], length $ARGV[1]) == 0 or die \"sethostname: $!\\n\"' $n Node_2 && \
             test \"$(hostname)\" = Node_2",
        )
        .unwrap();
        let run = env.run(&no_names, &["install"]).unwrap();
        lab.exec_ok(n2, "hostname node2").unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!(
                    "{}: node-name: found node name \"node_2\", which Kubernetes refuses: '_' is not allowed",
                    n2.addr
                ),
                "hint: set hosts[].nodeName for",
                "\"node-2\"",
            ],
        );
        assert!(
            !run.failures().contains(&format!("{}: node-name", n1.addr)),
            "{}",
            run.all()
        );
    }

    // Issue 17: a node slow to answer the fact gathering (40 s here, inside the gathering's
    // 60 s limit) gave a false "clock is 41 s away" on every other host, because the
    // workstation's time was read after the slowest host answered. The delay is a `hostname`
    // that sleeps first, early on PATH, on one node only.
    {
        lab.exec_ok(
            n3,
            "printf '#!/bin/sh\\nsleep 40\\nexec /usr/bin/hostname \"$@\"\\n' > /usr/local/bin/hostname && chmod 755 /usr/local/bin/hostname && test -x /usr/bin/hostname",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let run = env.run(&answers, &["preflight"]).unwrap();
        let took = started.elapsed();
        lab.exec_ok(n3, "rm -f /usr/local/bin/hostname").unwrap();
        // The delay was in effect (else this proves nothing) ...
        assert!(
            took >= std::time::Duration::from_secs(40),
            "took {took:?}: no delay\n{}",
            run.all()
        );
        // ... and no host got a clock-skew finding.
        assert!(
            !run.all().contains("away from this workstation"),
            "{}",
            run.all()
        );
        assert!(run.ok(), "{}", run.all());
    }

    // A port blocked between nodes (a firewall in the path): etcd peers cannot talk.
    {
        lab.exec_ok(n2, "nft add table inet lab_block && nft add chain inet lab_block input '{ type filter hook input priority 0; }' && nft add rule inet lab_block input tcp dport 2380 drop").unwrap();
        let run = env.run(&answers, &["install"]).unwrap();
        lab.exec_ok(n2, "nft delete table inet lab_block").unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!(
                    "{}: reachability: found cannot connect to {} ({}) on TCP port 2380",
                    n1.addr, n2.addr, n2.addr
                ),
                &format!("hint: open TCP 2380 from {} to {}", n1.addr, n2.addr),
            ],
        );
    }

    // A wrong sudo password (the user needs one).
    {
        let sudo = env
            .answers_variant(&lab, "sudo", |t| {
                t.replace(
                    "user: root",
                    &format!("user: {}", installer_tests::lab::PASSWORD_SUDO_USER),
                )
                .replace(
                    "mode: none",
                    "mode: password\n      password: \"${LAB_SUDO_PW}\"",
                )
            })
            .unwrap();
        let run = env
            .run_with_env(&sudo, &["install"], &[("LAB_SUDO_PW", "not-the-password")])
            .unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!("{}: sudo rejected the password for admin", n1.addr),
                "hint: check the sudo password",
            ],
        );
        // Reported once per host, not as a hang or a generic failure.
        assert!(
            !run.failures().contains("timed out") && !run.failures().contains("did not finish"),
            "{}",
            run.all()
        );
        // And with the right password the same file passes preflight.
        let ok = env
            .run_with_env(
                &sudo,
                &["preflight"],
                &[(
                    "LAB_SUDO_PW",
                    installer_tests::lab::PASSWORD_SUDO_USER_PASSWORD,
                )],
            )
            .unwrap();
        assert!(ok.ok(), "{}", ok.all());
    }

    // An unreachable host.
    {
        lab.link_down(n3).unwrap();
        let run = env.run(&answers, &["install"]).unwrap();
        lab.link_up(n3).unwrap();
        assert_stopped_untouched(
            &lab,
            &run,
            &[
                &format!("{}: cannot connect", n3.addr),
                "hint: check that the host is up",
            ],
        );
    }
}

#[test]
fn too_little_disk_under_var_lib_rancher_is_caught() {
    // A 256 MiB /var/lib/rancher: smaller than twice the payload plus room for etcd.
    let Some(lab) = lab_or_skip!(Lab::builder(1).rancher_size_mib(256)) else {
        return;
    };
    let env = Env::new().unwrap();
    let run = env.run(&lab.answer_file_path(), &["install"]).unwrap();
    let n1 = &lab.nodes()[0];
    assert_stopped_untouched(
        &lab,
        &run,
        &[
            &format!("{}: disk: found 25", n1.addr),
            "free under /var/lib/rancher",
            "hint: free space on /var/lib/rancher or mount a larger disk at /var/lib/rancher",
        ],
    );
}
