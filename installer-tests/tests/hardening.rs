//! Issue 17: hostile input and hostile neighbours on the workstation, from the outside (the
//! binary) and through the library's writers.

#![allow(clippy::unwrap_used)] // test helpers: a failure is the test failing

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

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

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const HEAD: &str = "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  hosts: [{address: 10.0.0.1}]\n";

#[test]
fn alias_bomb_exits_2_without_expanding() {
    let home = tempfile::tempdir().unwrap();
    let mut s = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for w in names.windows(2) {
        let (p, n) = (w[0], w[1]);
        s.push_str(&format!(
            "{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        ));
    }
    let f = home.path().join("bomb.yaml");
    std::fs::write(&f, s).unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("aliases"), "{}", stderr(&o));
}

#[test]
fn hundred_thousand_keys_exit_2_with_a_capped_report() {
    let home = tempfile::tempdir().unwrap();
    let mut s = String::from(HEAD);
    for i in 0..100_000 {
        s.push_str(&format!("  k{i}: 1\n"));
    }
    let f = home.path().join("keys.yaml");
    std::fs::write(&f, s).unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.lines().count() < 200, "{} lines", err.lines().count());
    assert!(err.contains("more problems"), "{err:.2000}");
}

/// 100 000 unknown application values took 98 s (each key's line was found by a walk over
/// the mapping); now one lookup table. The figure is in the closing note of issue 17.
#[test]
fn hundred_thousand_application_values_exit_2_with_their_lines() {
    let home = tempfile::tempdir().unwrap();
    let mut s = String::from(HEAD);
    s.push_str("  app:\n    values:\n");
    for i in 0..100_000 {
        s.push_str(&format!("      k{i}: 1\n"));
    }
    let f = home.path().join("values.yaml");
    std::fs::write(&f, s).unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["validate", "-f"])
        .arg(&f)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // HEAD is 5 lines, then `app:` and `values:`: k99999 is on line 100 007, column 7.
    assert!(out.contains("100007"), "{:.2000}", out);
    assert!(out.contains("k99999"), "{:.2000}", out);
}

#[test]
fn fifty_megabyte_value_gives_an_error_line_under_1_kb() {
    let home = tempfile::tempdir().unwrap();
    let f = home.path().join("big.yaml");
    std::fs::write(
        &f,
        format!("{HEAD}  enforcer: {}\n", "x".repeat(50 * 1024 * 1024)),
    )
    .unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["validate", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.lines().all(|l| l.len() < 1024), "{err:.3000}");
    let log = std::fs::read_to_string(home.path().join("installer.log")).unwrap();
    assert!(
        log.lines().all(|l| l.len() < 2048),
        "a log line is too long"
    );
}

#[test]
fn log_file_option_does_not_destroy_an_existing_file() {
    let home = tempfile::tempdir().unwrap();
    let precious = home.path().join("passwd");
    std::fs::write(&precious, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let o = installer(home.path())
        .args(["version", "--log-file"])
        .arg(&precious)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\n"
    );
    assert!(!home.path().join("passwd.1").exists());
}

// ---- planted files and links, as another user ----

/// `nobody`'s uid and gid, when we are root. Not root: fails under `LAB_REQUIRED=1`.
fn other_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("LAB_REQUIRED").is_ok_and(|v| v.trim() == "1") {
            panic!("LAB_REQUIRED=1 but this test needs root (to plant files as another user)");
        }
        eprintln!(
            "SKIPPED: planting files as another user needs root. Set LAB_REQUIRED=1 to make this a failure."
        );
        return None;
    }
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

#[derive(Clone, Copy, Debug)]
enum Plant {
    /// A file of the other user, mode 0666.
    File,
    /// A link (owned by the other user) to a root-only file.
    Link,
    /// A dangling link into a root-only directory.
    Dangling,
}

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    victim: PathBuf,
    vault: PathBuf,
    uid: u32,
    gid: u32,
}

impl Site {
    fn new(uid: u32, gid: u32) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("site");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let vault = tmp.path().join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = vault.join("victim");
        std::fs::write(&victim, "root only\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            dir.join("cluster.yaml"),
            "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  hosts: [{address: 10.0.0.1}]\n",
        )
        .unwrap();
        Site {
            _tmp: tmp,
            dir,
            victim,
            vault,
            uid,
            gid,
        }
    }

    fn plant(&self, rel: &str, how: Plant) {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        match how {
            Plant::File => {
                std::fs::write(&p, "planted\n").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
            }
            Plant::Link => std::os::unix::fs::symlink(&self.victim, &p).unwrap(),
            Plant::Dangling => std::os::unix::fs::symlink(
                self.vault.join(format!("made-{}", rel.replace('/', "_"))),
                &p,
            )
            .unwrap(),
        }
        std::os::unix::fs::lchown(&p, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// Nothing followed, nothing reused, nothing the installer wrote is the other user's.
    fn check(&self, rel: &str, how: Plant) {
        assert_eq!(
            std::fs::read_to_string(&self.victim).unwrap(),
            "root only\n",
            "{rel} ({how:?}): the link was followed"
        );
        let m = std::fs::metadata(&self.victim).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o600,
            "{rel}: victim chmodded"
        );
        let made: Vec<_> = std::fs::read_dir(&self.vault)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "victim")
            .collect();
        assert!(
            made.is_empty(),
            "{rel} ({how:?}): created through a dangling link: {made:?}"
        );
        for entry in walk(&self.dir) {
            let m = std::fs::symlink_metadata(&entry).unwrap();
            if m.uid() == self.uid && m.is_file() {
                // Only an untouched plant may still belong to the other user.
                assert_eq!(
                    std::fs::read_to_string(&entry).unwrap(),
                    "planted\n",
                    "{rel} ({how:?}): {} was written while owned by the other user",
                    entry.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A path the installer writes, and how to make it write there.
type Writer<'a> = (&'a str, &'a dyn Fn(&Site));

#[test]
fn files_planted_by_another_user_are_neither_followed_nor_reused() {
    let Some((uid, gid)) = other_user() else {
        return;
    };
    // Every path written next to the answer file and in the state directory.
    let writes: &[Writer] = &[
        ("demo-kubeconfig.yaml", &|s: &Site| {
            let _ = installer::fsx::write_atomic(
                &s.dir.join("demo-kubeconfig.yaml"),
                b"kubeconfig\n",
                0o600,
            );
        }),
        (".demo-kubeconfig.yaml.tmp", &|s: &Site| {
            installer::fsx::write_atomic(
                &s.dir.join("demo-kubeconfig.yaml"),
                b"kubeconfig\n",
                0o600,
            )
            .unwrap();
        }),
        ("appliance-ca.crt", &|s: &Site| {
            let _ = installer::fsx::write_atomic(&s.dir.join("appliance-ca.crt"), b"ca\n", 0o644);
        }),
        (".appliance-ca.crt.tmp", &|s: &Site| {
            installer::fsx::write_atomic(&s.dir.join("appliance-ca.crt"), b"ca\n", 0o644).unwrap();
        }),
        ("answers.yaml", &|s: &Site| {
            let _ = installer::config::wizard::save(&s.dir.join("answers.yaml"), "saved: 1\n");
        }),
        ("answers.yaml.tmp", &|s: &Site| {
            installer::config::wizard::save(&s.dir.join("answers.yaml"), "saved: 1\n").unwrap();
        }),
        (".installer/demo/journal.jsonl", &|s: &Site| {
            if let Ok(j) = installer::phases::journal::Journal::open(
                &s.dir.join(".installer/demo/journal.jsonl"),
            ) {
                j.run_started("install");
            }
        }),
        ("installer.log", &run_validate),
        ("installer.log.1", &|s: &Site| {
            // An earlier log of ours, to be rotated onto the planted `.1`.
            let log = s.dir.join("installer.log");
            std::fs::write(&log, "2026-01-01T00:00:00.000Z earlier run\n").unwrap();
            std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).unwrap();
            run_validate(s);
        }),
    ];
    for how in [Plant::File, Plant::Link, Plant::Dangling] {
        for (rel, write) in writes {
            let site = Site::new(uid, gid);
            site.plant(rel, how);
            write(&site);
            site.check(rel, how);
        }
    }
}

fn run_validate(s: &Site) {
    // The working directory is root-only, so the fallback log does not land in the site.
    let home = tempfile::tempdir().unwrap();
    let o = installer(home.path())
        .current_dir(home.path())
        .args(["validate", "-f"])
        .arg(s.dir.join("cluster.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Issue 17: a `storePort` whose peer port (storePort + 1) collides with `apiPort` or etcd's
/// 2379, or `storePort: 65535`, were refused only when the templates were rendered, in errors
/// naming internal template files. Now `install` refuses them as bad input (exit 2, before any
/// host) at the answer file's line and field, with a hint.
#[test]
fn store_port_peer_port_problems_name_the_answer_file_line_not_a_template() {
    let home = tempfile::tempdir().unwrap();
    for (values, want) in [
        (
            "      apiPort: 8081\n      storePort: 8080\n",
            "which is also `apiPort`",
        ),
        (
            "      storePort: 2378\n",
            "which is taken by etcd on servers",
        ),
        ("      storePort: 65535\n", "above 65535"),
    ] {
        let answers = home.path().join("store.yaml");
        std::fs::write(
            &answers,
            format!("apiVersion: installer.dev/v1\nkind: Cluster\nmetadata: {{name: demo}}\nspec:\n  ssh: {{user: root}}\n  hosts: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}, {{address: 10.0.0.3}}]\n  app:\n    values:\n{values}"),
        )
        .unwrap();
        let o = installer(home.path())
            .args(["install", "-f"])
            .arg(&answers)
            .arg("--log-file")
            .arg(home.path().join("log"))
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{values}: {e}");
        let line = 8 + values.lines().count();
        assert!(
            e.contains(&format!(
                "store.yaml:{line}:18: spec.app.values.storePort: storePort"
            )),
            "{values}: {e}"
        );
        assert!(e.contains(want), "{values}: {e}");
        assert!(e.contains("hint: "), "{values}: {e}");
        assert!(
            !e.contains("templates/") && !e.contains(".tera"),
            "{values}: {e}"
        );
    }
}

/// Issue 17: "the JSON Schema accepts exactly what the installer accepts". One set of answer
/// files (`tests/fixtures/schema/`, plus the documented examples) goes through the installer's
/// validation and through an independent JSON Schema validator (the `jsonschema` crate, formats
/// asserted, as editors do) over the published `docs/answer-file.schema.json`; the two verdicts
/// must agree for every file except the ones listed in [`SCHEMA_EXCEPTIONS`], each with its
/// reason, and a listed file must really disagree (so the list cannot go stale).
mod schema_agreement {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Why a file is read differently.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// The installer refuses it for a reason no schema can state (a file on disk, another
        /// host's entry, a variable's value, a parse of the text); the schema accepts it.
        InstallerOnly,
        /// The installer reads a plain scalar by the schema's type (text where the schema says
        /// text); a schema-blind YAML 1.2 reading types it as a number first, so the schema
        /// refuses what the installer accepts. Quoting the value satisfies both.
        Reading,
    }

    /// The files on which the two may disagree, and why.
    const SCHEMA_EXCEPTIONS: &[(&str, Kind, &str)] = &[
        (
            "bad-duplicate-address.yaml",
            Kind::InstallerOnly,
            "two hosts with one address: the schema sees one host at a time",
        ),
        (
            "bad-mapped-ipv6-duplicate.yaml",
            Kind::InstallerOnly,
            "::ffff:10.0.0.11 is 10.0.0.11: a comparison across hosts",
        ),
        (
            "bad-missing-key-file.yaml",
            Kind::InstallerOnly,
            "whether keyFile exists is a fact of the workstation",
        ),
        (
            "bad-unset-variable.yaml",
            Kind::InstallerOnly,
            "${VAR} has a value only at run time",
        ),
        (
            "bad-cidr.yaml",
            Kind::InstallerOnly,
            "a prefix length above 32 needs an address parser, not a pattern",
        ),
        (
            "bad-mixed-families.yaml",
            Kind::InstallerOnly,
            "hosts' and networks' address families are compared across fields",
        ),
        (
            "bad-address-syntax.yaml",
            Kind::InstallerOnly,
            "an address is an IP or a DNS name, checked after ${VAR} interpolation",
        ),
        (
            "bad-cluster-name.yaml",
            Kind::InstallerOnly,
            "checked after ${VAR} interpolation, like every string",
        ),
        (
            "bad-app-reserved-port.yaml",
            Kind::InstallerOnly,
            "the ports k3s holds are the installer's table, not the schema's",
        ),
        (
            "bad-store-peer-port.yaml",
            Kind::InstallerOnly,
            "storePort + 1 is compared with another value",
        ),
        (
            "bad-timeout.yaml",
            Kind::InstallerOnly,
            "a duration is parsed (humantime), after ${VAR} interpolation",
        ),
        (
            "ok-text-that-looks-like-a-number.yaml",
            Kind::Reading,
            "`user: 0123` is the text 0123 for the installer, the integer 123 for a schema-blind reader",
        ),
    ];

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema")
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The installer's verdict, with its first problem when it refuses.
    fn installer_verdict(path: &Path, home: &Path) -> Result<(), String> {
        use installer::config::interpolate::MapEnv;
        let vars = [
            ("HOME", home.to_str().unwrap()),
            ("USER", "admin"),
            ("SSH_AUTH_SOCK", "/nonexistent/agent.sock"),
            ("GATEWAY_PORT", "9443"),
            ("ADMIN_PASSWORD", "fixture-admin-password"),
            ("APP_ADMIN_PASSWORD", "fixture-admin-password"),
            ("KEY_PASSPHRASE", "fixture-passphrase"),
            ("SUDO_PASSWORD", "fixture-sudo-password"),
            ("SSH_PORT", "22"),
        ];
        let env = MapEnv {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fallback: None,
        };
        let decl = installer::config::app::Declaration::embedded().unwrap();
        installer::config::load_file(path, &env, None, &decl)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The schema's verdict over the file read as YAML 1.2 core (what an editor's YAML
    /// language server validates), with its problems when it refuses.
    fn schema_verdict(validator: &jsonschema::Validator, text: &str) -> Result<(), String> {
        let tree = installer::config::yaml::parse(text).map_err(|e| e.message)?;
        let json = installer::config::core_json::core_json(&tree);
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    #[test]
    fn the_schema_accepts_exactly_what_the_installer_accepts() {
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join("docs/answer-file.schema.json")).unwrap(),
        )
        .unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();

        // The fixtures, with the files they name, in a private directory.
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/known_hosts"), "").unwrap();
        std::fs::write(home.join(".ssh/id_ed25519"), "not parsed by validation\n").unwrap();
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for e in std::fs::read_dir(fixtures()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            let to = dir.path().join(&name);
            std::fs::copy(&p, &to).unwrap();
            files.insert(name, to);
        }
        for e in std::fs::read_dir(workspace().join("docs/examples")).unwrap() {
            let p = e.unwrap().path();
            let name = format!("ok-example-{}", p.file_name().unwrap().to_str().unwrap());
            let to = dir.path().join(&name);
            std::fs::copy(&p, &to).unwrap();
            files.insert(name, to);
        }
        for (f, text) in [
            ("id_test", "not parsed by validation\n"),
            ("password", "pw\n"),
            ("known_hosts", ""),
        ] {
            let p = dir.path().join(f);
            std::fs::write(&p, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(files.len() > 40, "{files:?}");
        assert!(files.contains_key("ok-gateway-port-var.yaml"));

        let mut wrong = Vec::new();
        for (name, path) in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let installer = installer_verdict(path, &home);
            let schema = schema_verdict(&validator, &text);
            // The fixture's name says what the installer does with it.
            let want_ok = name.starts_with("ok-");
            assert!(
                want_ok || name.starts_with("bad-"),
                "{name}: name it ok-* or bad-*"
            );
            if installer.is_ok() != want_ok {
                wrong.push(format!("{name}: the installer says {installer:?}"));
                continue;
            }
            let exception = SCHEMA_EXCEPTIONS.iter().find(|(n, _, _)| n == name);
            match (installer.is_ok(), schema.is_ok(), exception) {
                (a, b, None) if a == b => {}
                (false, true, Some((_, Kind::InstallerOnly, _))) => {}
                (true, false, Some((_, Kind::Reading, _))) => {}
                (_, _, Some((_, kind, why))) => wrong.push(format!(
                    "{name}: listed as {kind:?} ({why}) but installer {installer:?}, schema {schema:?}"
                )),
                (_, _, None) => wrong.push(format!(
                    "{name}: installer {installer:?}, schema {schema:?}"
                )),
            }
        }
        for (n, _, _) in SCHEMA_EXCEPTIONS {
            assert!(
                files.contains_key(*n),
                "exception for a missing fixture {n}"
            );
        }
        assert!(
            wrong.is_empty(),
            "the schema and the installer disagree:\n{}",
            wrong.join("\n")
        );
    }
}
