//! The wizard, driven through a pseudo-terminal with real keystrokes (expectrl): it must
//! check answers as they are typed, try the login on the hosts (here loopback addresses
//! where nothing listens: the refusal is reported per host and the person may keep them),
//! offer everything else as one "change the defaults" step, and save an answer file (mode
//! 0600, secrets as `${VAR}` references) that validates. The saved file must then work
//! unattended, and `installer` run again beside it offers to reuse it.

#![allow(clippy::unwrap_used)] // test helpers: a failure is the test failing

use installer_tests::pty::{DOWN, ENTER, Pty};
use std::process::Command;

fn installer() -> std::path::PathBuf {
    installer_tests::payload::workspace_binary("installer").unwrap()
}

/// Whether `s` holds an SGR colour sequence (ESC [ 3x / 9x / 38 ... m).
fn has_colour(s: &str) -> bool {
    s.split("\x1b[").skip(1).any(|rest| {
        let params: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .collect();
        rest[params.len()..].starts_with('m')
            && params.split(';').any(|p| {
                matches!(p.len(), 2)
                    && (p.starts_with('3') || p.starts_with('9') || p.starts_with('4'))
            })
    })
}

#[test]
fn the_wizard_saves_a_file_that_validates_and_dry_runs_it() {
    let home = tempfile::tempdir().unwrap();
    let mut p = Pty::spawn(
        &installer(),
        home.path(),
        &[("USER", "admin"), ("NO_COLOR", "1")],
    );

    p.expect("Host addresses");
    // Two hosts are refused as typed, with the reason; then three.
    p.send("127.0.0.11 127.0.0.12");
    p.send(ENTER);
    p.expect("2 hosts cannot form a highly available cluster");
    p.send("127.0.0.11 127.0.0.12 127.0.0.13");
    p.send(ENTER);

    p.expect("SSH user on the hosts");
    p.send(ENTER); // default: $USER (admin)

    p.expect("How does the installer log in?");
    p.send(DOWN); // from "a private key file" (no agent) to "a password"
    p.send(ENTER);
    p.expect("SSH password for admin");
    p.send_secret("wizard-ssh-password");

    p.expect("How does admin become root?");
    p.send(DOWN); // "sudo with the SSH password"
    p.send(ENTER);

    // Tried at once: nothing listens on these loopback addresses, each host is named.
    p.expect("What now?");
    for h in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
        assert!(
            p.seen.contains(&format!("✗ {h}: cannot connect")),
            "{h} not reported:\n{}",
            p.seen
        );
    }
    p.send(DOWN); // keep them
    p.send(ENTER);

    // The plan on defaults, then the one step for everything else.
    p.expect("Plan for cluster `appliance`");
    p.expect("127.0.0.13");
    p.expect("Install now with these settings?");
    p.send(DOWN); // change the defaults first
    p.send(ENTER);
    p.expect("hostname (");
    p.send("appliance.test.internal");
    p.send(ENTER);
    p.expect("gatewayPort (");
    p.send("30443"); // in the NodePort range: refused as typed
    p.send(ENTER);
    p.expect("NodePort range");
    p.send("9443");
    p.send(ENTER);
    p.expect("apiPort (");
    p.send(ENTER);
    p.expect("storePort (");
    p.send(ENTER);
    p.expect("apiReplicas (");
    p.send("3");
    p.send(ENTER);
    p.expect("adminEmail (");
    p.send(ENTER);
    p.expect("adminPassword (");
    p.send_secret("wizard-admin-password");
    p.expect("Save the answer file as");
    p.send(ENTER);
    p.expect("clear text?");
    p.send("n");
    p.expect("Install now with these settings?");
    p.send(DOWN);
    p.send(DOWN); // save and stop
    p.send(ENTER);
    p.expect("Saved answers.yaml");
    let code = p.finish();
    assert_eq!(code, 0, "{}", p.seen);
    assert!(
        !has_colour(&p.seen),
        "NO_COLOR is set, yet colours were printed"
    );
    // Typed secrets are never echoed.
    assert!(!p.seen.contains("wizard-ssh-password"));
    assert!(!p.seen.contains("wizard-admin-password"));

    // The saved file: 0600, references instead of secrets.
    let path = home.path().join("answers.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        !saved.contains("wizard-ssh-password") && !saved.contains("wizard-admin-password"),
        "{saved}"
    );
    assert!(
        saved.contains("${SSH_PASSWORD}") && saved.contains("${APP_ADMIN_PASSWORD}"),
        "{saved}"
    );

    // And it runs unattended.
    let o = Command::new(installer())
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("SSH_PASSWORD", "wizard-ssh-password")
        .env("APP_ADMIN_PASSWORD", "wizard-admin-password")
        .args(["validate", "--output", "json", "-f", "answers.yaml"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let plan = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "plan_ready")
        .expect("a plan");
    let hosts: Vec<&str> = plan["plan"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["address"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let h0 = &plan["plan"]["hosts"][0];
    assert_eq!(
        (
            h0["user"].as_str(),
            h0["auth"].as_str(),
            h0["sudo"].as_str()
        ),
        (Some("admin"), Some("password"), Some("password"))
    );
    let app: Vec<(String, String)> = serde_json::from_value(plan["plan"]["app"].clone()).unwrap();
    assert!(
        app.contains(&("gatewayPort".into(), "9443".into())),
        "{app:?}"
    );
    assert!(app.contains(&("apiReplicas".into(), "3".into())), "{app:?}");
    assert!(
        app.contains(&("adminPassword".into(), "***".into())),
        "{app:?}"
    );
    // Without the variables it names, the saved file is refused (exit 2), not run half-set.
    let o = Command::new(installer())
        .current_dir(home.path())
        .env_remove("SSH_PASSWORD")
        .env_remove("APP_ADMIN_PASSWORD")
        .args(["install", "--dry-run", "-f", "answers.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("${SSH_PASSWORD} not set"));

    // On a terminal, the same variables are asked for instead (hidden, once each).
    let mut p = Pty::spawn_args(
        &installer(),
        home.path(),
        &[("NO_COLOR", "1")],
        &["validate", "-f", "answers.yaml"],
    );
    p.expect("references ${SSH_PASSWORD}, which is not set");
    p.send_secret("wizard-ssh-password");
    p.expect("references ${APP_ADMIN_PASSWORD}, which is not set");
    p.send_secret("wizard-admin-password");
    p.expect("the answer file is valid");
    assert_eq!(p.finish(), 0, "{}", p.seen);
    // Asked once: dialoguer draws a prompt, then its answered line (`✔ ... · ****`).
    assert_eq!(
        p.seen.matches("${SSH_PASSWORD}, which is not set").count(),
        2
    );
    assert!(!p.seen.contains("wizard-ssh-password"));
}

/// `install`, `preflight` and `status` on a terminal ask for a `${VAR}` the answer file
/// references and the environment lacks (`validate` is above), then run with it: here they
/// get as far as connecting (nothing listens on the port: exit 1, not the refusal's 2).
#[test]
fn commands_that_connect_ask_for_an_unset_variable_on_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("answers.yaml"),
        "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh:\n    user: admin\n    port: 1\n    auth: {type: password, password: \"${SSH_PASSWORD}\"}\n  hosts: [{address: 127.0.0.1}]\n",
    )
    .unwrap();
    for command in ["install", "preflight", "status"] {
        let mut p = Pty::spawn_args(
            &installer(),
            home.path(),
            &[("NO_COLOR", "1")],
            &[command, "-f", "answers.yaml"],
        );
        p.expect("references ${SSH_PASSWORD}, which is not set");
        p.send_secret("typed-ssh-password");
        p.expect("cannot connect to 127.0.0.1:1");
        assert_eq!(p.finish(), 1, "{command}: {}", p.seen);
        assert!(!p.seen.contains("typed-ssh-password"), "{}", p.seen);
    }
}

#[test]
fn ctrl_c_at_a_prompt_exits_130_and_saves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let mut p = Pty::spawn(&installer(), home.path(), &[("USER", "root")]);
    p.expect("Host addresses");
    p.send("10.0.0.5");
    p.send("\x03");
    let code = p.finish();
    assert_eq!(code, 130, "{}", p.seen);
    assert!(!home.path().join("answers.yaml").exists());
}

#[test]
fn a_single_root_host_with_the_agent_needs_few_questions() {
    let home = tempfile::tempdir().unwrap();
    let mut p = Pty::spawn(
        &installer(),
        home.path(),
        &[
            ("USER", "root"),
            ("SSH_AUTH_SOCK", "/nonexistent/agent.sock"),
        ],
    );
    p.expect("Host addresses");
    p.send("127.0.0.5");
    p.send(ENTER);
    p.expect("SSH user on the hosts");
    p.send(ENTER);
    p.expect("How does the installer log in?");
    p.send(ENTER); // the agent is the default when SSH_AUTH_SOCK is set
    // root: no sudo question. The login is tried (nothing listens there).
    p.expect("What now?");
    p.send(DOWN);
    p.send(ENTER);
    // The application's values are defaults, not questions.
    p.expect("Install now with these settings?");
    p.send(DOWN);
    p.send(DOWN);
    p.send(ENTER);
    p.expect("Saved answers.yaml");
    let code = p.finish();
    assert_eq!(code, 0, "{}", p.seen);
    assert!(!p.seen.contains("become root"), "{}", p.seen);
    assert!(!p.seen.contains("clear text"), "no secrets, no question");
    // Without NO_COLOR the prompts are coloured (so the NO_COLOR check above can fail).
    assert!(has_colour(&p.seen));
    assert!(
        !p.seen.contains("hostname ("),
        "values were asked:\n{}",
        p.seen
    );
    let saved = std::fs::read_to_string(home.path().join("answers.yaml")).unwrap();
    assert!(saved.contains("type: agent"), "{saved}");
    assert!(!saved.contains("adminPassword"), "{saved}");

    // `installer` again here offers to reuse the saved answers; declining starts afresh.
    let mut p = Pty::spawn(&installer(), home.path(), &[("USER", "root")]);
    p.expect("answers.yaml from an earlier run is here. Use it?");
    p.send(DOWN);
    p.send(ENTER);
    p.expect("Host addresses");
    p.send("\x03");
    assert_eq!(p.finish(), 130, "{}", p.seen);
}
