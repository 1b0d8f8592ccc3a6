//! The lab's life cycle on real nodes (issue 3, "Done when"): `up 5`, an SSH login to each node that
//! verifies its host key against the written known_hosts, `systemctl is-system-running` answering
//! `running` or `degraded` on each, then `down` leaving no mount, cgroup, bridge, process or state.
//! Also: `down` twice, `up` after `down`, a failed `up` cleaning up, and the refusals (bridge or
//! subnet taken by someone else). One test function: its steps must not interleave with another lab
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
    assert!(ip(&["link", "add", &bridge, "type", "bridge"]).success());
    let err = Lab::up(1).expect_err("up must refuse a foreign bridge");
    let shown = format!("{err:#}");
    assert!(shown.contains(&bridge), "{shown}");
    assert!(
        std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "up removed a bridge it did not create"
    );
    assert!(ip(&["link", "del", &bridge]).success());

    // Refuses when an address of its subnet is taken elsewhere.
    let dummy = format!("labtest{}", layout.id());
    let addr = format!("10.77.{}.200/24", layout.id());
    assert!(ip(&["link", "add", &dummy, "type", "bridge"]).success());
    assert!(ip(&["addr", "add", &addr, "dev", &dummy]).success());
    let err = Lab::up(1)
        .map(|_| ())
        .expect_err("up must refuse a taken subnet");
    assert!(
        format!("{err:#}").contains("inside the lab subnet"),
        "{err:#}"
    );
    assert!(ip(&["link", "del", &dummy]).success());
    assert!(lab::leftovers(&layout).is_empty());

    // up after down works.
    let lab = Lab::up(1).expect("up after down");
    let out = lab.ssh_ok(&lab.nodes()[0], "hostname").unwrap();
    assert_eq!(out.trim(), "node1");
    lab.down().expect("down");
    assert!(lab::leftovers(&layout).is_empty());
}
