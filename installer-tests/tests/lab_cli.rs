//! The `lab` command's bad-input handling, which needs no running lab: node counts outside 1..5, a bad
//! LAB_ID, a bad `cp` destination (checked before anything else), and the refusal to run without root (checked by dropping to
//! `nobody` when the test runs as root).

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use predicates::prelude::*;

fn lab() -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.env("LAB_ID", "9");
    c
}

#[test]
fn up_refuses_node_counts_outside_one_to_five() {
    for n in ["0", "6"] {
        lab().args(["up", n]).assert().failure().stderr(
            predicate::str::contains("a lab has 1 to 5 nodes")
                .and(predicate::str::contains("hint:")),
        );
    }
    lab()
        .args(["up", "three"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid value"));
}

#[test]
fn refuses_a_lab_id_out_of_range() {
    lab()
        .env("LAB_ID", "12")
        .arg("status")
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("LAB_ID 12 is out of range")
                .and(predicate::str::contains("0 to 9")),
        );
}

#[test]
fn cp_wants_node_colon_path() {
    lab()
        .args(["cp", "/etc/hostname", "node1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("NODE:PATH"));
}

#[test]
fn refuses_to_run_without_root() {
    let bin = assert_cmd::cargo::cargo_bin("lab");
    let mut c = if installer_tests::lab::is_root() {
        // Run the same binary as nobody.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    c.env("LAB_ID", "9")
        .args(["up", "1"])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("the lab needs root").and(predicate::str::contains("hint:")),
        );
}

#[test]
fn help_lists_the_subcommands() {
    let out = lab()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for sub in [
        "build",
        "up",
        "down",
        "status",
        "ssh",
        "cp",
        "stop",
        "kill",
        "start",
        "link-down",
        "link-up",
    ] {
        assert!(
            text.contains(&format!("  {sub} ")),
            "{sub} missing from:\n{text}"
        );
    }
}
