//! The lab's life cycle on real nodes (issue 3, "Done when"): `up 5`, an SSH login to each node that
//! verifies its host key against the written known_hosts, `systemctl is-system-running` answering
//! `running` or `degraded` on each, then `down` leaving no mount, cgroup, bridge, process or state.
//! The answer file `up` writes validates with the installer's loader. Also: `down` twice, `up`
//! after `down`, a failed `up` cleaning up, recovery after a crashed owner, and the refusals (bridge
//! or subnet taken by someone else). One test function: its steps must not interleave with another lab
//! of the same LAB_ID. Needs root and the lab; skipped with the reason otherwise (failed under
//! LAB_REQUIRED=1).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use installer_tests::lab::{self, Lab};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ip(args: &[&str]) -> std::process::ExitStatus {
    Command::new("ip").args(args).status().expect("run ip")
}

/// A network interface this test creates, deleted even when an assertion fails (a leftover bridge
/// would make every later `up` of this LAB_ID refuse).
struct TestLink(String);

impl TestLink {
    fn bridge(name: &str) -> TestLink {
        assert!(
            ip(&["link", "add", name, "type", "bridge"]).success(),
            "cannot create {name}"
        );
        TestLink(name.to_string())
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn lab_up_login_verify_host_keys_down_leaves_nothing() {
    let t = Instant::now();
    let Some(lab) = installer_tests::lab_or_skip!(5) else {
        return;
    };
    eprintln!("up 5 took {:.1?}", t.elapsed());
    let layout = lab.layout().clone();
    assert_eq!(lab.nodes().len(), 5);
    let known_hosts = std::fs::read_to_string(lab.known_hosts_path()).unwrap();

    for node in lab.nodes() {
        // Lab::ssh runs the system ssh with StrictHostKeyChecking=yes against the lab's known_hosts
        // only, so a successful login proves the node's host key matched.
        let out = lab
            .ssh(
                node,
                "hostname; systemctl is-system-running; cat /etc/ssh/ssh_host_ed25519_key.pub",
            )
            .unwrap();
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "{out:?}"
        );
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], node.hostname, "{stdout}");
        assert!(
            lines[1] == "running" || lines[1] == "degraded",
            "{}: systemd is {:?}",
            node.name,
            lines[1]
        );
        // The key the node really serves is the one written to known_hosts for its address.
        let served: Vec<&str> = lines[2].split_whitespace().take(2).collect();
        let expected = format!("{} {} {}", node.addr, served[0], served[1]);
        assert!(
            known_hosts.lines().any(|l| l == expected),
            "{expected} not in known_hosts:\n{known_hosts}"
        );
        assert_eq!(
            lab::fingerprint(lines[2]).unwrap(),
            node.host_key_fingerprint
        );
    }

    // Host key checking is real: node1's address with node2's key in known_hosts is refused.
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let bad = lab.state_dir().join("known_hosts.wrong");
    let n2_key: Vec<&str> = n2.host_public_key.split_whitespace().take(2).collect();
    std::fs::write(&bad, format!("{} {} {}\n", n1.addr, n2_key[0], n2_key[1])).unwrap();
    let out = Command::new("ssh")
        .args([
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
        .arg(format!("UserKnownHostsFile={}", bad.display()))
        .arg("-i")
        .arg(lab.key_path())
        .arg(format!("root@{}", n1.addr))
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "login with a wrong known_hosts must fail: {out:?}"
    );
    assert!(
        text(&out.stderr).contains("IDENTIFICATION HAS CHANGED"),
        "{}",
        text(&out.stderr)
    );

    // The answer file validates with the installer's own loader and describes exactly these nodes.
    let decl = installer::config::app::Declaration::embedded().unwrap();
    let loaded = installer::config::load_file(
        &lab.answer_file_path(),
        &installer::config::interpolate::ProcessEnv,
        None,
        &decl,
    )
    .unwrap_or_else(|e| panic!("the lab's answer file does not validate: {e}"));
    assert_eq!(loaded.plan.hosts.len(), 5);
    for (h, n) in loaded.plan.hosts.iter().zip(lab.nodes()) {
        assert_eq!(h.ssh.address, n.addr.to_string());
        assert_eq!(h.ssh.user, "root");
        assert_eq!(h.node_name.as_deref(), Some(n.name.as_str()));
        assert_eq!(
            h.ssh.host_key.as_deref(),
            Some(n.host_key_fingerprint.as_str())
        );
        assert_eq!(h.ssh.known_hosts_file, lab.known_hosts_path());
    }

    // Every node has its own host key and address.
    let mut keys: Vec<&str> = lab
        .nodes()
        .iter()
        .map(|n| n.host_public_key.as_str())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5);

    lab.down().expect("down");
    let left = lab::leftovers(&layout);
    assert!(left.is_empty(), "left behind after down: {left:#?}");
    // down twice: nothing to do, not an error.
    assert!(
        !lab::down_from_state().expect("second down"),
        "a second down found something to remove"
    );

    // A failed up cleans up after itself (here: nodes cannot boot in 1 ms).
    let err = Lab::builder(2)
        .boot_timeout(Duration::from_millis(1))
        .up()
        .expect_err("up must fail");
    assert!(
        format!("{err:#}").contains("did not come up (cleaned up)"),
        "{err:#}"
    );
    let left = lab::leftovers(&layout);
    assert!(left.is_empty(), "a failed up left behind: {left:#?}");

    // Refuses a bridge it did not create, and leaves it alone.
    let bridge = layout.bridge();
    let foreign = TestLink::bridge(&bridge);
    let err = Lab::up(1).expect_err("up must refuse a foreign bridge");
    let shown = format!("{err:#}");
    assert!(shown.contains(&bridge), "{shown}");
    assert!(
        std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "up removed a bridge it did not create"
    );
    drop(foreign);

    // Refuses when an address of its subnet is taken elsewhere.
    let other = TestLink::bridge(&format!("labtest{}", layout.id()));
    let addr = format!("10.77.{}.200/24", layout.id());
    assert!(ip(&["addr", "add", &addr, "dev", &other.0]).success());
    let err = Lab::up(1)
        .map(|_| ())
        .expect_err("up must refuse a taken subnet");
    assert!(
        format!("{err:#}").contains("inside the lab subnet"),
        "{err:#}"
    );
    drop(other);
    assert!(lab::leftovers(&layout).is_empty());

    // A test process that dies without tearing its lab down (exit skips Drop): the next up of the
    // same LAB_ID removes what it left and starts cleanly.
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_up_one_node_then_exit_without_teardown",
            "--nocapture",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "helper failed: {status}");
    let left = lab::leftovers(&layout);
    assert!(
        left.iter().any(|l| l.starts_with("process:")),
        "the helper's node should still run: {left:#?}"
    );

    // up after down (and after a crashed owner) works.
    let lab = Lab::up(1).expect("up after down");
    let out = lab.ssh_ok(&lab.nodes()[0], "hostname").unwrap();
    assert_eq!(out.trim(), "node1");
    lab.down().expect("down");
    assert!(lab::leftovers(&layout).is_empty());

    // A lab started with `lab up` (or `lab demo --keep`) is refused while its hosts run, and is a
    // leftover once none runs (a CI run failed with "lab 0 is already up" and nothing running).
    Lab::builder(1)
        .cli_owned()
        .up()
        .expect("cli-owned up")
        .detach()
        .expect("detach");
    let err = Lab::up(1)
        .map(|_| ())
        .expect_err("up must refuse a running cli-owned lab");
    assert!(format!("{err:#}").contains("is already up"), "{err:#}");
    let cli_lab = Lab::attach().expect("attach");
    cli_lab
        .kill_node(&cli_lab.nodes()[0])
        .expect("kill the cli lab's node");
    drop(cli_lab);
    let lab = Lab::up(1).expect("up after a cli-owned lab whose hosts are gone");
    let out = lab.ssh_ok(&lab.nodes()[0], "hostname").unwrap();
    assert_eq!(out.trim(), "node1");
    lab.down().expect("down");
    assert!(lab::leftovers(&layout).is_empty());
}

/// Run by the test above as a child process: starts a lab and exits without dropping it.
#[test]
#[ignore = "helper for lab_up_login_verify_host_keys_down_leaves_nothing"]
fn helper_up_one_node_then_exit_without_teardown() {
    let lab = Lab::up(1).unwrap();
    assert!(lab.ssh(&lab.nodes()[0], "true").unwrap().status.success());
    std::process::exit(0);
}
