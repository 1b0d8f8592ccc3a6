//! End to end: `installer install` on a 1-host lab, unattended, with the k3s stand-in as k3s.

use std::process::Command;

use installer_tests::lab::Lab;
use installer_tests::lab_or_skip;
use installer_tests::payload::{self, Sizes};

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn install(lab: &Lab, payload: &payload::Payload) -> (i32, Vec<serde_json::Value>, String) {
    let bin = payload::workspace_binary("installer").unwrap();
    let out = Command::new(bin)
        .args(["install", "--output", "json", "-f"])
        .arg(lab.answer_file_path())
        .args(payload.args())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        events(&stdout),
        format!("{stdout}\n{stderr}"),
    )
}

#[test]
fn single_host_install_reaches_ready_and_a_rerun_changes_nothing() {
    let Some(lab) = lab_or_skip!(1) else { return };
    let work = tempfile::tempdir().unwrap();
    let standin = payload::workspace_binary("k3s-standin").unwrap();
    let payload = payload::build(work.path(), &standin, Sizes::default(), &[]).unwrap();
    let (code, ev, all) = install(&lab, &payload);
    assert_eq!(code, 0, "{all}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "command_finished" && e["ok"] == true),
        "{all}"
    );
    let node = &lab.nodes()[0];
    let active = lab.ssh(node, "systemctl is-active k3s").unwrap();
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");

    // A second run on the finished cluster changes nothing and uploads nothing.
    let (code, ev, all) = install(&lab, &payload);
    assert_eq!(code, 0, "{all}");
    let changed: Vec<&serde_json::Value> = ev
        .iter()
        .filter(|e| e["event"] == "host_done" && e["outcome"] == "changed")
        .filter(|e| e["phase"] != "cluster")
        .collect();
    assert!(
        changed.is_empty(),
        "a rerun changed something: {changed:?}\n{all}"
    );
    assert!(
        !ev.iter().any(|e| e["event"] == "host_progress"),
        "a rerun uploaded bytes\n{all}"
    );
}
