//! The wizard against real hosts (the lab), through a pseudo-terminal: it installs what it
//! saved, asks about each host key nothing vouches for (showing the fingerprint), writes
//! the pins the person chose into the answer file, and that file then runs unattended.
//! Needs root (fails instead of skipping under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used)]

use installer_tests::e2e::Env;
use installer_tests::lab_or_skip;
use installer_tests::pty::{ENTER, Pty};

const UP: &str = "\x1b[A";

#[test]
fn the_wizard_asks_about_unknown_host_keys_and_pins_them_in_the_answer_file() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let home = tempfile::tempdir().unwrap();
    let installer = installer_tests::payload::workspace_binary("installer").unwrap();
    let payload_dir = env.payload.dir.display().to_string();
    let payload_lock = env.payload.lock.display().to_string();
    let mut p = Pty::spawn(
        &installer,
        home.path(),
        &[
            ("USER", "root"),
            ("NO_COLOR", "1"),
            ("INSTALLER_ASSETS", &payload_dir),
            ("INSTALLER_ASSETS_LOCK", &payload_lock),
        ],
    );
    let addrs: Vec<String> = lab.nodes().iter().map(|n| n.addr.to_string()).collect();
    p.expect("Host addresses");
    p.send(&addrs.join(" "));
    p.send(ENTER);
    p.expect("SSH user on the hosts");
    p.send(ENTER); // root
    p.expect("How does the installer log in?");
    p.send(ENTER); // a private key file (no agent)
    p.expect("Private key file");
    p.send(&lab.key_path().display().to_string());
    p.send(ENTER);
    for v in [
        "hostname (",
        "gatewayPort (",
        "apiPort (",
        "storePort (",
        "apiReplicas (",
        "adminEmail (",
    ] {
        p.expect(v);
        p.send(ENTER);
    }
    p.expect("adminPassword (");
    p.send_secret("");
    p.expect("Save the answer file as");
    p.send(ENTER);
    p.expect("Install now?");
    p.send("y");
    // Three questions, one per host, in whatever order the connections come.
    let mut asked = Vec::new();
    for i in 0..3 {
        p.expect("offers an SSH host key nothing vouches for");
        let tail: String = p
            .seen
            .chars()
            .rev()
            .take(200)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        asked.push(tail);
        p.expect("What to do?");
        if i == 0 {
            // Remember the first in known_hosts...
            p.send(UP);
            p.send(UP);
        } else {
            // ...and pin the others in the answer file.
            p.send(UP);
        }
        p.send(ENTER);
    }
    // The lab's nodes boot with cgroup v1, which the wizard's file does not allow:
    // preflight stops the install (nothing changed), after the keys were decided.
    p.expect("cgroup-v2");
    let code = p.finish();
    assert_eq!(code, 1, "{}", p.seen);
    for n in lab.nodes() {
        assert!(
            p.seen.contains(&n.host_key_fingerprint),
            "fingerprint of {} not shown:\n{}",
            n.name,
            p.seen
        );
    }

    // Two pins in the answer file, one key in known_hosts: together, all three hosts.
    let answers = home.path().join("answers.yaml");
    let text = std::fs::read_to_string(&answers).unwrap();
    let pinned: Vec<&str> = lab
        .nodes()
        .iter()
        .filter(|n| text.contains(&format!("hostKey: \"{}\"", n.host_key_fingerprint)))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(pinned.len(), 2, "{text}");
    let known = std::fs::read_to_string(home.path().join(".ssh/known_hosts")).unwrap_or_default();
    let remembered: Vec<&str> = lab
        .nodes()
        .iter()
        .filter(|n| known.contains(n.host_public_key.split_whitespace().nth(1).unwrap_or("-")))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(remembered.len(), 1, "{known}");
    assert!(!pinned.contains(&remembered[0]));

    // The same file, allowed to run on these hosts, now runs unattended: no question, no
    // --accept-new-host-keys, every key vouched for.
    std::fs::write(&answers, format!("{text}  k3s:\n    allowCgroupV1: true\n")).unwrap();
    let out = std::process::Command::new(&installer)
        .current_dir(home.path())
        .env("HOME", home.path())
        .args(["preflight", "--output", "plain", "-f", "answers.yaml"])
        .args(env.payload.args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
