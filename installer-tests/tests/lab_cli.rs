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

/// A copy of `bin` that the unprivileged user can run even when the checkout is not readable by it
/// (CI may clone under /root).
fn copy_for_nobody(bin: &std::path::Path) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("lab-cli-test")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join(bin.file_name().unwrap());
    std::fs::copy(bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
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
    let (_dir, bin) = copy_for_nobody(&assert_cmd::cargo::cargo_bin("lab"));
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

/// Runs the helper below as an unprivileged user (nobody when we are root), so the lab's
/// prerequisites are missing; returns (success, stderr).
fn run_skip_helper(required: bool) -> (bool, String) {
    let (_dir, exe) = copy_for_nobody(&std::env::current_exe().unwrap());
    let mut c = if installer_tests::lab::is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe);
        c
    } else {
        std::process::Command::new(&exe)
    };
    c.args([
        "--ignored",
        "--exact",
        "helper_lab_test_without_prerequisites",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LAB_ID", "9")
    .env_remove("LAB_REQUIRED");
    if required {
        c.env("LAB_REQUIRED", "1");
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lab_tests_skip_with_a_reason_and_fail_under_lab_required() {
    let (ok, stderr) = run_skip_helper(false);
    assert!(
        ok,
        "without LAB_REQUIRED the test must skip, not fail: {stderr}"
    );
    assert!(
        stderr.contains("SKIPPED (lab test): the lab needs root"),
        "{stderr}"
    );
    let (ok, stderr) = run_skip_helper(true);
    assert!(
        !ok,
        "with LAB_REQUIRED=1 a missing prerequisite must fail the test"
    );
    assert!(
        stderr.contains("LAB_REQUIRED=1 but the lab cannot run here: it needs root"),
        "{stderr}"
    );
}

/// Helper for the test above: an ordinary lab test.
#[test]
#[ignore = "helper for lab_tests_skip_with_a_reason_and_fail_under_lab_required"]
fn helper_lab_test_without_prerequisites() {
    let Some(_lab) = installer_tests::lab_or_skip!(1) else {
        return;
    };
    panic!("the lab came up without its prerequisites");
}
