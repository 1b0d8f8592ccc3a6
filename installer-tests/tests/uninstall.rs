//! End to end (issue 18): `installer uninstall` of a 4-host cluster (3 servers, 1 agent)
//! installed by the real installer with the k3s stand-in. One install serves every assertion
//! (lab time is scarce): no terminal and no --force changes nothing; a dry run changes nothing
//! (it plans the etcd snapshot on the first server and takes none); `--node` refuses a server
//! and uninstalls the agent, whose Node leaves the cluster (no snapshot); a planted bind
//! mount under the kubelet's pods refuses its host (the mount and its data survive) while the
//! other hosts are cleaned, after a last etcd snapshot of the first server was copied to the
//! cluster's state directory (mode 0600, its SHA-256 the host's, the token beside it); a file
//! the admin changed after install is kept and reported; once the mount is gone a rerun with
//! `--no-snapshot` cleans the last host and takes none; every host then matches its snapshot
//! from before the install, except the allow-list below; a last run changes nothing.
//! Needs root; skips with the reason otherwise (fails instead under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use installer_tests::e2e::{self, Env, Run};
use installer_tests::lab::{Lab, Node};
use installer_tests::lab_or_skip;

/// What a node looks like, one fact per line: every path under the directories the issue
/// names (type, mode, link target; content hash for files outside /var/lib and /run), the
/// firewall rules, links, namespaces, mount points and unit files.
const SNAPSHOT: &str = r#"
for d in /etc /var/lib /opt /usr/local /run; do
  find "$d" -xdev -printf 'path %y %m %p -> %l\n' 2>/dev/null
done
find /etc /opt /usr/local -xdev -type f -exec sha256sum {} + 2>/dev/null | sed 's/^/content /'
nft list ruleset 2>/dev/null | sed 's/^/nft /'
iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' | sed 's/^/iptables /'
ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' | sed 's/^/ip6tables /'
ip -o link show | awk -F': ' '{print "link " $2}' | cut -d@ -f1
ip netns list 2>/dev/null | sed 's/^/netns /'
awk '{print "mount " $5 " " $9}' /proc/self/mountinfo
systemctl list-unit-files --no-legend --no-pager 2>/dev/null | awk '{print "unit " $1 " " $2}'
true
"#;

/// What may differ after install and uninstall, and why. Anything else is a leftover.
const ALLOWED: &[(&str, &str)] = &[
    // systemd's and the login sessions' runtime state, which every SSH login changes.
    ("path d 755 /run/user", "login sessions"),
    ("/run/user/", "login sessions"),
    ("/run/systemd/", "systemd runtime state (sessions, units)"),
    ("/var/lib/systemd/", "systemd's timers and random seed"),
    ("/run/log/", "the journal"),
    ("/var/log/", "logs"),
    ("/run/utmp", "logins"),
    ("/run/sshd", "sshd"),
    // Created by the console's agetty the first time its login prompt waits for input
    // (util-linux `wait_for_term_input`, mode 0600), at a moment of the node's boot that may
    // come after the first snapshot: nothing of the installer's.
    (
        "/run/agetty.reload",
        "the console login prompt's reload trigger",
    ),
    // Kept by design: the application's data (--purge-data deletes it).
    (
        "/var/lib/appliance",
        "the application's data, kept without --purge-data",
    ),
];

fn snapshot(lab: &Lab, n: &Node) -> BTreeSet<String> {
    lab.exec_ok(n, SNAPSHOT)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn allowed(line: &str, extra: &[&str]) -> bool {
    let path = line
        .strip_prefix("path ")
        .and_then(|l| l.split(' ').nth(2))
        .or_else(|| {
            line.strip_prefix("content ")
                .and_then(|l| l.split_whitespace().nth(1))
        });
    ALLOWED.iter().any(|(p, _)| {
        line.starts_with(p)
            || path.is_some_and(|x| x == p.trim_end_matches('/') || x.starts_with(p))
    }) || path.is_some_and(|x| extra.contains(&x))
}

/// Lines only in `before` (gone) and only in `after` (new), minus the allow-list.
fn leftovers(before: &BTreeSet<String>, after: &BTreeSet<String>, extra: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = before
        .difference(after)
        .filter(|l| !allowed(l, extra))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        after
            .difference(before)
            .filter(|l| !allowed(l, extra))
            .map(|l| format!("+ {l}")),
    );
    out
}

/// A quick fingerprint of what the install left: to tell that a run changed nothing.
fn fingerprint(lab: &Lab, n: &Node) -> String {
    lab.exec_ok(
        n,
        "systemctl is-active k3s || true; sha256sum /var/lib/installer/changes.log /usr/local/bin/k3s /etc/rancher/k3s/config.yaml 2>&1; ls /var/lib/rancher/k3s /var/lib/kubelet 2>&1; true",
    )
    .unwrap()
}

fn host_done<'a>(run: &'a Run, phase: &str) -> Vec<&'a serde_json::Value> {
    run.of("host_done")
        .into_iter()
        .filter(|e| e["phase"] == phase)
        .collect()
}

fn messages(run: &Run, host: &str) -> Vec<String> {
    run.of("message")
        .into_iter()
        .filter(|m| m["host"] == host)
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

/// The last etcd snapshots uninstall copied into the cluster's state directory (beside the
/// journal), with their tokens: file names, sorted.
fn snapshots(state: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("pre-uninstall-"))
        .collect();
    v.sort();
    v
}

const CANARY: &str = "/var/lib/kubelet/pods/canary/volumes/kubernetes.io~nfs/data";

#[test]
fn uninstall_of_an_agent_then_the_cluster_leaves_every_host_as_before() {
    let Some(lab) = lab_or_skip!(4) else { return };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let nodes = lab.nodes();
    let before: Vec<BTreeSet<String>> = nodes.iter().map(|n| snapshot(&lab, n)).collect();
    for b in &before {
        assert!(
            b.iter().any(|l| l.starts_with("path f 644 /etc/hostname")),
            "{b:#?}"
        );
        assert!(
            b.iter().any(|l| l.starts_with("unit ssh.service")),
            "{b:#?}"
        );
    }
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let installed: Vec<String> = nodes.iter().map(|n| fingerprint(&lab, n)).collect();
    // Where uninstall copies the last etcd snapshot: the cluster's state directory.
    let state = answers
        .parent()
        .unwrap()
        .join(".installer")
        .join(format!("lab{}", lab.id()));
    for old in snapshots(&state) {
        std::fs::remove_file(state.join(old)).unwrap();
    }

    // Without a terminal and without --force: exit 2, no host contacted, nothing changed.
    let run = env.run(&answers, &["uninstall"]).unwrap();
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.failures().contains("--force"), "{}", run.all());
    assert!(run.of("phase_started").is_empty(), "{}", run.all());
    // A dry run reports each change as a typed event and makes none.
    let dry = env.run(&answers, &["uninstall", "--dry-run"]).unwrap();
    assert!(dry.ok(), "{}", dry.all());
    for n in nodes {
        let host = n.addr.to_string();
        let planned: Vec<String> = dry
            .of("planned_change")
            .into_iter()
            .filter(|c| c["host"] == host.as_str())
            .filter_map(|c| c["summary"].as_str().map(str::to_owned))
            .collect();
        for want in [
            "stop k3s (every k3s unit)",
            "remove /usr/local/bin/k3s (unchanged since the installer wrote it)",
            "delete /var/lib/rancher/k3s (on its own file system, crossing no mount)",
        ] {
            assert!(
                planned.iter().any(|p| p == want),
                "{host}: no {want:?} in {planned:#?}"
            );
        }
    }
    // The snapshot is planned on the first server and not taken.
    let first = nodes[0].addr.to_string();
    assert!(
        dry.of("planned_change")
            .into_iter()
            .any(|c| c["host"] == first.as_str()
                && c["phase"] == "snapshot"
                && c["summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("take an etcd snapshot"))),
        "{}",
        dry.all()
    );
    assert!(snapshots(&state).is_empty(), "{:?}", snapshots(&state));
    for (n, f) in nodes.iter().zip(&installed) {
        assert_eq!(&fingerprint(&lab, n), f, "{} changed", n.name);
    }

    // --node takes agents only; the agent's uninstall leaves the servers running and takes
    // its Node out of the cluster.
    let run = env
        .run(&answers, &["uninstall", "--force", "--node", "node1"])
        .unwrap();
    assert_eq!(run.code, 2, "{}", run.all());
    let n4 = &nodes[3];
    let run = env
        .run(&answers, &["uninstall", "--force", "--node", "node4"])
        .unwrap();
    assert!(run.ok(), "{}", run.all());
    assert_eq!(host_done(&run, "clean").len(), 1, "{}", run.all());
    assert_eq!(host_done(&run, "forget").len(), 1, "{}", run.all());
    // One agent holds no etcd: no snapshot.
    assert!(run.of("snapshot_saved").is_empty(), "{}", run.all());
    assert!(snapshots(&state).is_empty(), "{:?}", snapshots(&state));
    assert_ne!(e2e::unit_state(&lab, n4, "k3s-agent").unwrap(), "active");
    let names = lab
        .exec_ok(&nodes[0], "k3s kubectl get nodes -o name")
        .unwrap();
    assert!(!names.contains("node/node4"), "{names}");
    assert!(names.contains("node/node3"), "{names}");
    for n in &nodes[..3] {
        assert_eq!(
            e2e::unit_state(&lab, n, "k3s").unwrap(),
            "active",
            "{}",
            n.name
        );
    }
    let left = leftovers(&before[3], &snapshot(&lab, n4), &[]);
    assert!(
        left.is_empty(),
        "node4 differs from before the install:\n{}",
        left.join("\n")
    );

    // The admin changed a file the installer wrote; a volume is mounted under node3's pods.
    let (n1, n3) = (&nodes[0], &nodes[2]);
    lab.exec_ok(
        n1,
        "echo '# tuned by the admin' >> /etc/rancher/k3s/config.yaml",
    )
    .unwrap();
    lab.exec_ok(
        n3,
        &format!(
            "mkdir -p /srv/canary {CANARY} && echo precious > /srv/canary/data && mount --bind /srv/canary {CANARY}"
        ),
    )
    .unwrap();
    let run = env.run(&answers, &["uninstall", "--force"]).unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    // Before any host changed, the first server's etcd snapshot was copied here, mode 0600,
    // with the SHA-256 the host reported, and the cluster token beside it.
    let saved = run.saved_snapshot();
    assert_eq!(saved.host, first.as_str());
    assert_eq!(saved.path.parent(), Some(state.as_path()));
    assert!(!saved.bytes.is_empty());
    let bytes = saved.bytes;
    // The stand-in's snapshot is its store: the cluster's objects, nodes included.
    assert!(
        String::from_utf8_lossy(&bytes).contains("node1"),
        "not a snapshot of this cluster"
    );
    let name = saved.name;
    assert!(name.starts_with("pre-uninstall-node1-"), "{name}");
    assert_eq!(
        snapshots(&state),
        vec![name.clone(), format!("{name}.token")]
    );
    let ordered: Vec<&str> = run
        .of("phase_started")
        .into_iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(
        ordered,
        ["connect", "uninstall-check", "snapshot", "stop", "clean"],
        "{}",
        run.all()
    );
    // node3 is refused with the reason and left alone: the mount, its data and k3s are there.
    let refused: Vec<_> = run
        .of("host_failed")
        .into_iter()
        .filter(|e| e["phase"] == "uninstall-check")
        .collect();
    assert_eq!(refused.len(), 1, "{}", run.all());
    // node4 (uninstalled above) has nothing left.
    let nothing: Vec<_> = host_done(&run, "uninstall-check")
        .into_iter()
        .filter(|e| e["host"] == n4.addr.to_string().as_str())
        .collect();
    assert_eq!(nothing.len(), 1, "{}", run.all());
    assert_eq!(nothing[0]["outcome"], "unchanged");
    assert_eq!(refused[0]["host"], n3.addr.to_string().as_str());
    let why = refused[0]["error"].as_str().unwrap();
    assert!(why.contains(CANARY) && why.contains("mount"), "{why}");
    assert_eq!(
        lab.exec_ok(n3, &format!("mountpoint -q {CANARY} && cat {CANARY}/data"))
            .unwrap()
            .trim(),
        "precious"
    );
    assert_eq!(e2e::unit_state(&lab, n3, "k3s").unwrap(), "active");
    // The others are cleaned; node1's changed file is kept and reported.
    assert_eq!(host_done(&run, "clean").len(), 2, "{}", run.all());
    for n in &nodes[..2] {
        assert_ne!(e2e::unit_state(&lab, n, "k3s").unwrap(), "active");
    }
    let kept = lab.exec_ok(n1, "cat /etc/rancher/k3s/config.yaml").unwrap();
    assert!(kept.contains("# tuned by the admin"), "{kept}");
    let said = messages(&run, &n1.addr.to_string());
    assert!(
        said.iter()
            .any(|m| m.starts_with("kept /etc/rancher/k3s/config.yaml: changed since")),
        "{said:#?}"
    );

    // The admin releases the volume; a rerun cleans node3 and leaves the others as they are.
    lab.exec_ok(n3, &format!("umount {CANARY}")).unwrap();
    let run = env
        .run(&answers, &["uninstall", "--force", "--no-snapshot"])
        .unwrap();
    assert!(run.ok(), "{}", run.all());
    // --no-snapshot takes none, and says so.
    assert!(run.of("snapshot_saved").is_empty(), "{}", run.all());
    assert!(
        run.of("message").into_iter().any(|m| m["level"] == "warn"
            && m["text"]
                .as_str()
                .is_some_and(|t| t.contains("--no-snapshot"))),
        "{}",
        run.all()
    );
    assert_eq!(
        snapshots(&state),
        vec![name.clone(), format!("{name}.token")]
    );
    let cleaned: Vec<_> = host_done(&run, "clean");
    assert_eq!(cleaned.len(), 1, "{}", run.all());
    assert_eq!(cleaned[0]["host"], n3.addr.to_string().as_str());
    assert_eq!(
        lab.exec_ok(n3, "cat /srv/canary/data").unwrap().trim(),
        "precious"
    );
    // node1 keeps the changed file, and the changes log says so (and nothing else).
    let n1_kept = [
        "/etc/rancher",
        "/etc/rancher/k3s",
        "/etc/rancher/k3s/config.yaml",
        "/var/lib/installer",
        "/var/lib/installer/changes.log",
    ];
    assert_eq!(
        lab.exec_ok(n1, "cat /var/lib/installer/changes.log")
            .unwrap(),
        format!(
            "cluster lab{}\nuninstalled\nkept /etc/rancher/k3s/config.yaml\n",
            lab.id()
        )
    );
    for (i, n) in nodes.iter().enumerate() {
        let extra: &[&str] = if i == 0 { &n1_kept } else { &[] };
        let left = leftovers(&before[i], &snapshot(&lab, n), extra);
        assert!(
            left.is_empty(),
            "{} differs from before the install:\n{}",
            n.name,
            left.join("\n")
        );
    }

    // A last run is a no-op on every host.
    let run = env.run(&answers, &["uninstall", "--force"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.changes().is_empty(),
        "{:?}\n{}",
        run.changes(),
        run.all()
    );
    assert!(host_done(&run, "clean").is_empty(), "{}", run.all());
    // No server left to uninstall: no snapshot needed, none taken.
    assert!(run.of("snapshot_saved").is_empty(), "{}", run.all());
    assert_eq!(
        snapshots(&state),
        vec![name.clone(), format!("{name}.token")]
    );
}

/// The comparison itself, without a lab: a leftover is reported, the allow-list and the
/// expected kept files are not.
#[test]
fn the_snapshot_comparison_reports_leftovers_only() {
    let set = |l: &[&str]| {
        l.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    let before = set(&["path d 755 /etc -> ", "unit ssh.service enabled"]);
    let after = set(&[
        "path d 755 /etc -> ",
        "unit ssh.service enabled",
        "path f 644 /etc/cni/net.d/10-local.conflist -> ",
        "path d 755 /run/systemd/sessions -> ",
        "path f 600 /etc/rancher/k3s/config.yaml -> ",
        "content abc  /etc/rancher/k3s/config.yaml",
        "unit k3s.service enabled",
    ]);
    let left = leftovers(&before, &after, &["/etc/rancher/k3s/config.yaml"]);
    assert_eq!(
        left,
        vec![
            "+ path f 644 /etc/cni/net.d/10-local.conflist -> ".to_string(),
            "+ unit k3s.service enabled".to_string(),
        ]
    );
    assert_eq!(
        leftovers(&after, &before, &[]).len(),
        4,
        "{:?}",
        leftovers(&after, &before, &[])
    );
}

/// On a terminal the cluster's name must be typed back (no lab: the confirmation comes
/// before any host is contacted). A wrong name ends the run with exit 2 and contacts nothing;
/// the right one goes on to connect (here to a closed port: that host is reported as not
/// cleaned, exit 1).
#[test]
fn on_a_terminal_the_cluster_name_is_typed_back() {
    use installer_tests::pty::{ENTER, Pty};
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::create_dir_all(h.join(".ssh")).unwrap();
    std::fs::write(h.join(".ssh/id_ed25519"), "not a real key").unwrap();
    std::fs::set_permissions(
        h.join(".ssh/id_ed25519"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        h.join("answers.yaml"),
        format!(
            "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata:\n  name: pilot\nspec:\n  ssh:\n    user: root\n    port: 1\n    auth:\n      type: key\n      keyFile: {}\n  hosts:\n    - address: 127.0.0.1\n  app:\n    values:\n      hostname: appliance.example.internal\n      adminEmail: ops@example.internal\n",
            h.join(".ssh/id_ed25519").display()
        ),
    )
    .unwrap();
    let bin = installer_tests::payload::workspace_binary("installer").unwrap();
    let args = ["uninstall", "-f", "answers.yaml", "--output", "plain"];
    let mut p = Pty::spawn_args(&bin, h, &[("NO_COLOR", "1")], &args);
    p.expect("Type the cluster's name (pilot)");
    p.send("pilo");
    p.send(ENTER);
    p.expect("is not the cluster's name");
    assert_eq!(p.finish(), 2, "{}", p.seen);
    assert!(!p.seen.contains("Connect and gather facts"), "{}", p.seen);

    let mut p = Pty::spawn_args(&bin, h, &[("NO_COLOR", "1")], &args);
    p.expect("Type the cluster's name (pilot)");
    p.send("pilot");
    p.send(ENTER);
    p.expect_within("NOT cleaned (connect)", 60);
    assert_eq!(p.finish(), 1, "{}", p.seen);
}
