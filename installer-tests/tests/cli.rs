//! The `installer` binary from the outside: help text, the JSON Schema, the example answer
//! files, the invalid-input report, exit codes, the log file, completions and the man page.

#![allow(clippy::unwrap_used)] // test helpers: a failure is the test failing

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    // The workspace root (this package is installer-tests/).
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The installer with a clean, predictable environment.
fn installer(home: &Path) -> Command {
    let mut c = Command::new(installer_tests::payload::workspace_binary("installer").unwrap());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("USER", "admin")
        .env("COLUMNS", "100")
        .env("SSH_AUTH_SOCK", home.join("agent.sock"));
    c
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn help_of_each_command() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["install", "--help"],
        vec!["preflight", "--help"],
        vec!["uninstall", "--help"],
        vec!["upgrade", "--help"],
        vec!["schema", "--help"],
        vec!["version", "--help"],
    ] {
        let o = installer(home.path()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let name = format!("help_{}", args.join("_").replace("--", ""));
        insta::assert_snapshot!(name, stdout(&o));
    }
}

#[test]
fn the_schema_is_printed_and_the_checked_in_copy_is_current() {
    let home = tempfile::tempdir().unwrap();
    let o = installer(home.path()).arg("schema").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let printed = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    insta::assert_snapshot!("answer_file_schema", printed);
    let checked_in =
        std::fs::read_to_string(root().join("docs/answer-file.schema.json")).unwrap_or_default();
    assert!(
        checked_in == printed,
        "docs/answer-file.schema.json is not what `installer schema` prints; regenerate it:\n  cargo run -q -- schema > docs/answer-file.schema.json"
    );
}

/// A home with the key file the examples name, and the variables they reference.
fn example_env(home: &Path) -> Command {
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "not a real key").unwrap();
    // A private key readable only by its owner, as OpenSSH wants (else a warning).
    std::fs::set_permissions(
        home.join(".ssh/id_ed25519"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut c = installer(home);
    c.env("SUDO_PASSWORD", "example-sudo-password")
        .env("APP_ADMIN_PASSWORD", "example-admin-password");
    c
}

#[test]
fn every_example_validates_and_dry_runs_to_a_plan() {
    let home = tempfile::tempdir().unwrap();
    let dir = root().join("docs/examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "five-hosts-bastion.yaml",
            "single-host.yaml",
            "three-hosts.yaml"
        ]
    );
    for (name, hosts, servers) in [
        ("single-host.yaml", 1, 1),
        ("three-hosts.yaml", 3, 3),
        ("five-hosts-bastion.yaml", 5, 3),
    ] {
        let o = example_env(home.path())
            .args(["validate", "--output", "json", "-f"])
            .arg(dir.join(name))
            .arg("--log-file")
            .arg(home.path().join("log"))
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let plan = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["event"] == "plan_ready")
            .unwrap_or_else(|| panic!("{name}: no plan"));
        let rows = plan["plan"]["hosts"].as_array().unwrap();
        assert_eq!(rows.len(), hosts, "{name}");
        assert_eq!(
            rows.iter().filter(|r| r["role"] == "server").count(),
            servers,
            "{name}"
        );
        // No warnings either: the examples are what we recommend.
        assert!(!stdout(&o).contains("\"warn\""), "{name}: {}", stdout(&o));
    }
}

#[test]
fn a_malformed_file_gets_every_problem_with_its_line_in_one_run() {
    let home = tempfile::tempdir().unwrap();
    let o = installer(home.path())
        .current_dir(root().join("installer-tests/tests/fixtures"))
        .args(["install", "--dry-run", "-f", "malformed.yaml", "--log-file"])
        .arg(home.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
    let report = stderr(&o);
    insta::assert_snapshot!("malformed_report", report);
    // The same problems as JSON.
    let o = installer(home.path())
        .current_dir(root().join("installer-tests/tests/fixtures"))
        .args([
            "install",
            "--dry-run",
            "--output",
            "json",
            "-f",
            "malformed.yaml",
            "--log-file",
        ])
        .arg(home.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["event"], "invalid_input");
    let problems = v["problems"].as_array().unwrap();
    let text_count = report
        .lines()
        .filter(|l| l.starts_with("malformed.yaml:"))
        .count();
    assert_eq!(problems.len(), text_count);
    assert!(
        problems
            .iter()
            .all(|p| p["line"].as_u64().unwrap() > 0 && p["column"].as_u64().unwrap() > 0)
    );
}

#[test]
fn yaml_syntax_errors_have_a_position_and_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let f = home.path().join("broken.yaml");
    std::fs::write(
        &f,
        "apiVersion: installer.dev/v1\nspec:\n  hosts: [10.0.0.1\n",
    )
    .unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["install", "-f", "broken.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.starts_with("broken.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn exit_codes() {
    let home = tempfile::tempdir().unwrap();
    // No command and no terminal: usage, exit 2.
    let o = installer(home.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no command given, and no terminal"));
    assert!(stderr(&o).contains("Usage: installer"));
    // Unknown flag: 2. Missing answer file: 2.
    assert_eq!(
        installer(home.path())
            .arg("--bogus")
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["install", "-f", "nope.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot read the answer file nope.yaml"),
        "{}",
        stderr(&o)
    );
    // A valid file whose host cannot be reached (loopback, a port nothing listens on):
    // the install stops in its first phase with the host named, exit 1.
    let answers = home.path().join("unreachable.yaml");
    std::fs::write(
        &answers,
        "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh: {user: root, port: 1}\n  hosts: [{address: 127.0.0.1}]\n",
    )
    .unwrap();
    let o = example_env(home.path())
        .current_dir(home.path())
        .arg("install")
        .arg("-f")
        .arg(&answers)
        .arg("--log-file")
        .arg(home.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("connect 127.0.0.1: FAILED: cannot connect"),
        "{e}"
    );
    assert!(e.contains("hint: "));
    // Each failure once: the host's line has it; the final error names the phase and the
    // host, not the error again.
    assert_eq!(e.matches("cannot connect").count(), 1, "{e}");
    assert!(
        e.contains("error: Connect and gather facts failed on 1 of 1 host (127.0.0.1; each error is shown above)"),
        "{e}"
    );
    // The debug log keeps the whole final error.
    let log = std::fs::read_to_string(home.path().join("log")).unwrap();
    assert!(
        log.contains("error (exit 1): error: Connect and gather facts failed on 1 of 1 host:\n"),
        "{log}"
    );
    // The last line says how to collect what support needs, with this answer file.
    assert!(
        e.trim_end().ends_with(&format!(
            "`installer support-bundle -f {}` writes one archive (secrets removed).",
            answers.display()
        )),
        "{e}"
    );
    // Bad input is not a failure on the hosts: no such line.
    let o = example_env(home.path())
        .current_dir(home.path())
        .args(["install", "-f", "nope.yaml"])
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("support-bundle"), "{}", stderr(&o));
}

#[test]
fn install_without_a_terminal_refuses_an_unset_variable_naming_it_before_connecting() {
    let home = tempfile::tempdir().unwrap();
    // Port 1 on loopback: a run that connected would fail there with exit 1.
    std::fs::write(
        home.path().join("answers.yaml"),
        "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh:\n    user: admin\n    port: 1\n    auth: {type: password, password: \"${SSH_PASSWORD}\"}\n  hosts: [{address: 127.0.0.1}]\n",
    )
    .unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["install", "-f", "answers.yaml"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("${SSH_PASSWORD} not set"), "{e}");
    assert!(
        !e.contains("cannot connect") && !e.contains("connect:"),
        "{e}"
    );
}

#[test]
fn the_log_file_is_written_beside_the_answer_file_redacted() {
    let home = tempfile::tempdir().unwrap();
    let work = home.path().join("site");
    std::fs::create_dir(&work).unwrap();
    let answers = work.join("answers.yaml");
    std::fs::write(
        &answers,
        "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh:\n    sudo: {mode: password, password: \"${SUDO_PW}\"}\n  hosts: [{address: 10.0.0.1}]\n",
    )
    .unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .env("SUDO_PW", "very-secret-sudo-pw")
        .args(["validate", "-v", "-f", "site/answers.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log = std::fs::read_to_string(work.join("installer.log")).unwrap();
    assert!(log.contains("plan_ready"), "{log}");
    assert!(log.contains("exit 0"));
    assert!(!log.contains("very-secret-sudo-pw"));
    assert!(!stdout(&o).contains("very-secret-sudo-pw"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.join("installer.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The plain renderer: the plan on stdout, the note on stderr, no escape sequences.
    assert!(stdout(&o).contains("HOST "), "{}", stdout(&o));
    assert!(stderr(&o).contains("the answer file is valid; no host was contacted"));
    assert!(!stderr(&o).contains('\u{1b}') && !stdout(&o).contains('\u{1b}'));
}

#[test]
fn version_lists_the_artifacts() {
    let home = tempfile::tempdir().unwrap();
    let o = installer(home.path()).arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let s = stdout(&o);
    assert!(
        s.starts_with(&format!("installer {}\n", env!("CARGO_PKG_VERSION"))),
        "{s}"
    );
    assert!(s.contains("k3s"), "{s}");
    let o = installer(home.path())
        .args(["version", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["installer"], env!("CARGO_PKG_VERSION"));
    assert!(v["artifacts"].as_array().is_some_and(|a| !a.is_empty()));
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = installer(home.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let s = stdout(&o);
        assert!(
            s.contains("dry-run") && s.contains("accept-new-host-keys"),
            "{shell}: {s}"
        );
    }
    let o = installer(home.path()).arg("man").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let s = stdout(&o);
    assert!(
        s.starts_with(".ie \\n(.g .ds Aq") || s.contains(".TH installer"),
        "{s}"
    );
    assert!(s.contains("preflight") && s.contains("\\-\\-output"), "{s}");
    // Hidden from the help, so users see only what they need.
    let help = stdout(&installer(home.path()).arg("--help").output().unwrap());
    assert!(!help.contains("completions"));
}

#[test]
fn docs_list_the_application_values_of_the_declaration() {
    let decl = installer::config::app::Declaration::embedded().unwrap();
    let path = root().join("docs/answer-file.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = doc.find("<!-- BEGIN app-values").expect("begin marker");
    let begin_end = begin + doc[begin..].find("-->\n").expect("end of begin marker") + 4;
    let end = doc.find("<!-- END app-values -->").expect("end marker");
    let expected = decl.markdown_table();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{}{}", &doc[..begin_end], expected, &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        doc[begin_end..end] == expected,
        "docs/answer-file.md lists other application values than templates/app/values.yaml; run\n  UPDATE_DOCS=1 cargo test -p installer --test cli docs"
    );
}

#[test]
fn values_the_application_templates_refuse_are_bad_input() {
    // apiPort on the port the worker's template fixes for its health endpoint: the answer
    // file alone is valid, the rendered application is not. Exit 2, before any host.
    let home = tempfile::tempdir().unwrap();
    let answers = home.path().join("clash.yaml");
    std::fs::write(
        &answers,
        "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  ssh: {user: root}\n  hosts: [{address: 10.0.0.1}, {address: 10.0.0.2}, {address: 10.0.0.3}]\n  app:\n    values:\n      apiPort: 8090\n",
    )
    .unwrap();
    let o = installer(home.path())
        .args(["install", "-f"])
        .arg(&answers)
        .arg("--log-file")
        .arg(home.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("port 8090/TCP is also used by Deployment appliance/api"),
        "{e}"
    );
    assert!(e.contains("Deployment appliance/worker"), "{e}");
    assert!(e.contains("hint: "), "{e}");
    // The error points at the value in the answer file that caused it.
    assert!(
        e.contains("clash.yaml:9:16: spec.app.values.apiPort: the application cannot be rendered with apiPort 8090"),
        "{e}"
    );
}
