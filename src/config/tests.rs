//! Validation tests: each feeds an answer file's text and checks the plan or the problems
//! (with their positions) that come out.

use super::app::{AppValue, Declaration};
use super::interpolate::MapEnv;
use super::plan::*;
use super::validate::{Context, Prompter, validate_text};
use super::{Diagnostics, Loaded};
use crate::secret::Secret;
use std::cell::RefCell;

struct Fixture {
    dir: tempfile::TempDir,
    decl: Declaration,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            decl: Declaration::embedded().unwrap(),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> MapEnv<'static> {
        let mut vars: std::collections::HashMap<String, String> = [
            ("HOME", self.dir.path().to_str().unwrap()),
            ("USER", "admin"),
            ("SSH_AUTH_SOCK", "/tmp/agent.sock"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        MapEnv {
            vars,
            fallback: None,
        }
    }

    fn run_with(
        &self,
        text: &str,
        extra: &[(&str, &str)],
        prompter: Option<&dyn Prompter>,
    ) -> Result<Loaded, Diagnostics> {
        let env = self.env(extra);
        let ctx = Context {
            env: &env,
            base_dir: self.dir.path().to_path_buf(),
            prompter,
            declaration: &self.decl,
        };
        validate_text("answers.yaml", None, text, &ctx)
    }

    fn ok(&self, text: &str) -> Loaded {
        match self.run_with(text, &[], None) {
            Ok(l) => l,
            Err(d) => panic!("expected a valid file, got:\n{d}"),
        }
    }

    fn errors(&self, text: &str) -> Vec<String> {
        self.errors_env(text, &[])
    }

    fn errors_env(&self, text: &str, extra: &[(&str, &str)]) -> Vec<String> {
        match self.run_with(text, extra, None) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(d) => d
                .errors()
                .map(|e| format!("{}:{} {}: {}", e.loc.line, e.loc.column, e.path, e.message))
                .collect(),
        }
    }
}

fn doc(spec: &str) -> String {
    format!("apiVersion: installer.dev/v1\nkind: Cluster\nmetadata:\n  name: demo\nspec:\n{spec}")
}

fn hosts(n: usize) -> String {
    let mut s = String::from("  hosts:\n");
    for i in 0..n {
        s.push_str(&format!("    - address: 10.0.0.{}\n", 11 + i));
    }
    s
}

#[test]
fn a_single_host_is_a_single_server_with_defaults() {
    let f = Fixture::new();
    let l = f.ok(&doc(&hosts(1)));
    let p = &l.plan;
    assert_eq!(p.cluster_name, "demo");
    assert_eq!(p.hosts.len(), 1);
    let h = &p.hosts[0];
    assert_eq!(h.name, "10.0.0.11");
    assert_eq!(h.role, Role::Server);
    assert_eq!(h.ssh.port, 22);
    assert_eq!(h.ssh.user, "admin");
    assert!(matches!(h.ssh.auth, AuthMethod::Agent));
    assert!(matches!(h.sudo, SudoPlan::Passwordless));
    assert_eq!(
        h.ssh.known_hosts_file,
        f.dir.path().join(".ssh/known_hosts")
    );
    assert_eq!(p.network.cluster_cidr.to_string(), "10.42.0.0/16");
    assert_eq!(p.network.service_cidr.to_string(), "10.43.0.0/16");
    assert_eq!(p.enforcer, EnforcerMode::Enforce);
    assert_eq!(p.app.get("gatewayPort"), Some(&AppValue::Port(8443)));
    assert_eq!(p.app.get("adminPassword"), None);
    assert_eq!(
        p.app_ports(),
        vec![
            ("apiPort".to_string(), 8081),
            ("gatewayPort".into(), 8443),
            ("storePort".into(), 7379)
        ]
    );
    assert_eq!(l.warnings.items.len(), 0);
}

#[test]
fn auto_roles_make_three_servers_then_agents() {
    let f = Fixture::new();
    for (n, servers) in [(3, 3), (4, 3), (5, 3)] {
        let p = f.ok(&doc(&hosts(n))).plan;
        assert_eq!(p.servers().count(), servers, "{n} hosts");
        assert_eq!(p.agents().count(), n - servers);
        // The first three are the servers.
        assert!(p.hosts[..3].iter().all(|h| h.role == Role::Server));
    }
    let five_servers = doc(
        "  hosts:\n    - {address: a1.example, role: server}\n    - {address: a2.example, role: server}\n    - {address: a3.example, role: server}\n    - {address: a4.example, role: server}\n    - {address: a5.example, role: server}\n",
    );
    assert_eq!(f.ok(&five_servers).plan.servers().count(), 5);
}

#[test]
fn host_counts_outside_1_3_4_5_are_refused() {
    let f = Fixture::new();
    let e = f.errors(&doc(&hosts(2)));
    assert!(
        e.contains(
            &"6:3 spec.hosts: 2 hosts: the installer supports 1, 3, 4 or 5 hosts".to_string()
        ),
        "{e:?}"
    );
    let e = f.errors(&doc(&hosts(6)));
    assert!(e.iter().any(|m| m.contains("6 hosts")), "{e:?}");
    let e = f.errors(&doc("  hosts: []\n"));
    assert!(e.iter().any(|m| m.contains("0 hosts")), "{e:?}");
}

#[test]
fn an_even_number_of_servers_is_refused() {
    let f = Fixture::new();
    let text = doc(
        "  hosts:\n    - {address: 10.0.0.1, role: server}\n    - {address: 10.0.0.2, role: server}\n    - {address: 10.0.0.3, role: server}\n    - {address: 10.0.0.4, role: server}\n",
    );
    let e = f.errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("10:33 spec.hosts[3].role: an even number of servers (4:"),
        "{e:?}"
    );
}

#[test]
fn duplicates_and_bad_node_fields_are_each_reported() {
    let f = Fixture::new();
    let text = doc(concat!(
        "  hosts:\n",
        "    - {address: 10.0.0.11, nodeName: srv1, nodeIp: 10.1.0.1}\n",
        "    - {address: node2.example, nodeName: srv1, nodeIp: 10.1.0.1}\n",
        "    - {address: 10.0.0.11, nodeIp: 10.1.0.300}\n",
    ));
    let e = f.errors(&text);
    assert_eq!(
        e,
        vec![
            "8:42 spec.hosts[1].nodeName: duplicate node name srv1 (also spec.hosts[0])",
            "8:56 spec.hosts[1].nodeIp: duplicate node IP 10.1.0.1 (also spec.hosts[0])",
            "9:17 spec.hosts[2].address: duplicate address 10.0.0.11 (also spec.hosts[0])",
            "9:36 spec.hosts[2].nodeIp: `10.1.0.300` is not an IP address",
        ]
    );
}

#[test]
fn cidrs_must_not_overlap_or_contain_hosts() {
    let f = Fixture::new();
    let e = f.errors(&doc(&format!(
        "{}  network:\n    clusterCidr: 10.0.0.0/16\n    serviceCidr: 10.0.128.0/17\n",
        hosts(1)
    )));
    assert!(e.contains(&"10:18 spec.network.serviceCidr: the service network 10.0.128.0/17 overlaps the pod network 10.0.0.0/16".to_string()), "{e:?}");
    assert!(e.contains(&"9:18 spec.network.clusterCidr: the pod network 10.0.0.0/16 contains the host address 10.0.0.11 (spec.hosts[0].address)".to_string()), "{e:?}");

    // A default network that contains a host points at spec and suggests a free range.
    let r = f
        .run_with(&doc("  hosts:\n    - address: 10.42.0.5\n"), &[], None)
        .unwrap_err();
    let d = r.errors().next().unwrap();
    assert_eq!(d.path.to_string(), "spec.network");
    assert!(
        d.message
            .contains("default pod network 10.42.0.0/16 contains the host address 10.42.0.5"),
        "{}",
        d.message
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("set spec.network.clusterCidr to a range no host is in, for example 10.44.0.0/16")
    );

    let e = f.errors(&doc(&format!(
        "{}  network:\n    clusterCidr: 10.42.1.0/16\n",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec!["9:18 spec.network.clusterCidr: `10.42.1.0/16` has bits set after the prefix"]
    );
    let e = f.errors(&doc(&format!(
        "{}  network:\n    serviceCidr: banana\n",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec!["9:18 spec.network.serviceCidr: `banana` is not a network in CIDR form"]
    );
}

#[test]
fn app_ports_in_the_node_port_range_or_on_k3s_ports_are_refused() {
    let f = Fixture::new();
    let e = f.errors(&doc(&format!(
        "{}  app:\n    values:\n      gatewayPort: 30443\n      apiPort: 10250\n      colour: blue\n",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec![
            "10:20 spec.app.values.gatewayPort: port 30443 is taken by the Kubernetes NodePort range (30000-32767), which kube-proxy owns on every node",
            "11:16 spec.app.values.apiPort: port 10250 is taken by the kubelet API on every node",
            "12:7 spec.app.values.colour: unknown application value `colour`",
        ]
    );
    // A given port on another value's default port.
    let e = f.errors(&doc(&format!(
        "{}  app:\n    values:\n      storePort: 8443\n",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec!["10:18 spec.app.values.storePort: port 8443 is also used by `gatewayPort`"]
    );
}

/// Issue 17: the store's peer port (storePort + 1) collided with apiPort, or with etcd's
/// 2379, or did not exist (storePort 65535), and it was found only when the templates were
/// rendered, in an error naming a template file. Now validation names the answer file's line
/// and field, with a hint.
#[test]
fn a_store_port_whose_peer_port_collides_or_overflows_is_refused_at_its_line() {
    let f = Fixture::new();
    let with = |values: &str| doc(&format!("{}  app:\n    values:\n{values}", hosts(1)));
    let problems = |values: &str| match f.run_with(&with(values), &[], None) {
        Ok(_) => panic!("expected problems with {values}"),
        Err(d) => d.errors().cloned().collect::<Vec<_>>(),
    };

    // The peer port on apiPort (both written in the file): the storePort line.
    let p = problems("      apiPort: 8081\n      storePort: 8080\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].loc.line, p[0].path.to_string()),
        (11, "spec.app.values.storePort".into())
    );
    assert_eq!(
        p[0].message,
        "storePort 8080 puts the store members' peer port on port 8081 (storePort + 1), which is also `apiPort`"
    );
    assert!(
        p[0].hint.as_deref().unwrap().contains("further apart"),
        "{:?}",
        p[0].hint
    );
    assert!(!p[0].message.contains("templates/"), "{}", p[0].message);

    // apiPort written on the default storePort's peer port: the apiPort line.
    let p = problems("      apiPort: 7380\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].loc.line, p[0].path.to_string()),
        (10, "spec.app.values.apiPort".into())
    );
    assert!(
        p[0].message.contains("which is also `apiPort`"),
        "{}",
        p[0].message
    );

    // The peer port on etcd's client port.
    let p = problems("      storePort: 2378\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].loc.line, p[0].loc.column), (10, 18));
    assert_eq!(
        p[0].message,
        "storePort 2378 puts the store members' peer port on port 2379 (storePort + 1), which is taken by etcd on servers (2379-2382)"
    );
    assert!(
        p[0].hint.as_deref().unwrap().contains("port + 1 is free"),
        "{:?}",
        p[0].hint
    );

    // No port above 65535.
    let p = problems("      storePort: 65535\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path.to_string(), "spec.app.values.storePort");
    assert!(
        p[0].message.contains("65536, above 65535"),
        "{}",
        p[0].message
    );
    assert!(
        p[0].hint.as_deref().unwrap().contains("at most 65534"),
        "{:?}",
        p[0].hint
    );

    // The edges that are fine.
    f.ok(&with("      storePort: 65534\n"));
    f.ok(&with("      apiPort: 8082\n      storePort: 8080\n"));
}

/// The declaration's `alsoHolds` says what the templates derive: keep the two in step.
#[test]
fn the_declared_peer_port_is_the_one_the_store_template_uses() {
    let decl = Declaration::embedded().unwrap();
    let store = decl.get("storePort").unwrap();
    assert_eq!(store.also_holds.len(), 1);
    let offset = store.also_holds[0].offset;
    let template = include_str!("../../templates/app/manifests/20-store.yaml.tera");
    assert!(
        template.contains(&format!("set peer_port = values.storePort + {offset}")),
        "templates/app/manifests/20-store.yaml.tera no longer derives the peer port as storePort + {offset}"
    );
    // A declaration with a derived port on a non-port value is a bundle bug.
    let bad = "application: x\nvalues:\n  - {name: n, type: int, description: d, alsoHolds: [{offset: 1, what: w}]}\n";
    assert!(
        Declaration::parse(bad)
            .unwrap_err()
            .to_string()
            .contains("`alsoHolds` is for port values")
    );
}

#[test]
fn timeouts_are_durations_with_a_floor() {
    let f = Fixture::new();
    let l = f.ok(&doc(&hosts(1)));
    assert_eq!(l.plan.rollout_timeout, std::time::Duration::from_secs(300));
    let l = f.ok(&doc(&format!(
        "{}  timeouts:\n    node: 90s\n    rollout: 2m\n",
        hosts(1)
    )));
    assert_eq!(l.plan.node_timeout, std::time::Duration::from_secs(90));
    assert_eq!(l.plan.rollout_timeout, std::time::Duration::from_secs(120));
    let e = f.errors(&doc(&format!(
        "{}  timeouts:\n    node: soon\n    rollout: 1s\n",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec![
            "9:11 spec.timeouts.node: `soon` is not a duration",
            "10:14 spec.timeouts.rollout: `1s` is too short",
        ]
    );
}

#[test]
fn replica_counts_are_bounded_by_the_hosts() {
    let f = Fixture::new();
    // The default (2) is lowered for a single host...
    let l = f.ok(&doc(&hosts(1)));
    assert_eq!(l.plan.app.get("apiReplicas"), Some(&AppValue::Int(1)));
    // ...kept for three...
    let l = f.ok(&doc(&hosts(3)));
    assert_eq!(l.plan.app.get("apiReplicas"), Some(&AppValue::Int(2)));
    // ...and a given value above the host count is refused where it is written.
    let e = f.errors(&doc(&format!(
        "{}  app:
    values:
      apiReplicas: 4
",
        hosts(3)
    )));
    assert_eq!(
        e,
        vec!["12:20 spec.app.values.apiReplicas: 4 is more than the 3 hosts of spec.hosts"]
    );
}

#[test]
fn unset_variables_are_errors_and_set_ones_are_used() {
    let f = Fixture::new();
    let text = doc(&format!(
        "  ssh:\n    user: ${{SSH_USER}}\n    sudo: {{mode: password, password: \"${{SUDO_PW}}\"}}\n{}  app:\n    values:\n      adminPassword: ${{ADMIN_PW}}\n      gatewayPort: ${{GW_PORT}}\n",
        hosts(1)
    ));
    let e = f.errors(&text);
    assert_eq!(
        e,
        vec![
            "7:11 spec.ssh.user: environment variable ${SSH_USER} not set",
            "8:38 spec.ssh.sudo.password: environment variable ${SUDO_PW} not set",
            "13:22 spec.app.values.adminPassword: environment variable ${ADMIN_PW} not set",
            "14:20 spec.app.values.gatewayPort: environment variable ${GW_PORT} not set",
        ]
    );
    let l = f
        .run_with(
            &text,
            &[
                ("SSH_USER", "ops"),
                ("SUDO_PW", "sudo-pass-1"),
                ("ADMIN_PW", "admin-pass-1"),
                ("GW_PORT", "9443"),
            ],
            None,
        )
        .unwrap();
    let h = &l.plan.hosts[0];
    assert_eq!(h.ssh.user, "ops");
    match &h.sudo {
        SudoPlan::Password(s) => assert_eq!(s.expose(), "sudo-pass-1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.plan.app.get("gatewayPort"), Some(&AppValue::Port(9443)));
    assert_eq!(
        l.plan
            .app
            .get("adminPassword")
            .and_then(AppValue::as_secret)
            .map(Secret::expose),
        Some("admin-pass-1")
    );
    // The secrets never show in the plan's debug output or summary.
    let dbg = format!("{:?} {:?}", l.plan, l.plan.summary());
    assert!(
        !dbg.contains("sudo-pass-1") && !dbg.contains("admin-pass-1"),
        "{dbg}"
    );
}

#[test]
fn key_files_must_exist_and_relative_paths_start_at_the_answer_file() {
    let f = Fixture::new();
    let text = doc(&format!(
        "  ssh:\n    auth: {{type: key, keyFile: keys/id_ed25519}}\n{}",
        hosts(1)
    ));
    let e = f.errors(&text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("7:32 spec.ssh.auth.keyFile: the key file "),
        "{e:?}"
    );
    assert!(e[0].ends_with("keys/id_ed25519 does not exist"), "{e:?}");
    std::fs::create_dir(f.dir.path().join("keys")).unwrap();
    std::fs::write(f.dir.path().join("keys/id_ed25519"), "k").unwrap();
    let p = f.ok(&text).plan;
    match &p.hosts[0].ssh.auth {
        AuthMethod::KeyFile { path, passphrase } => {
            assert_eq!(path, &f.dir.path().join("keys/id_ed25519"));
            assert!(passphrase.is_none());
        }
        other => panic!("{other:?}"),
    }
    // `~/` is the home directory.
    std::fs::create_dir(f.dir.path().join(".ssh")).unwrap();
    std::fs::write(f.dir.path().join(".ssh/id_rsa.pub"), "k").unwrap();
    let e = f.errors(&doc(&format!(
        "  ssh:\n    auth: {{type: key, keyFile: ~/.ssh/id_rsa.pub}}\n{}",
        hosts(1)
    )));
    assert!(e[0].contains("is a public key"), "{e:?}");
}

#[test]
fn per_host_settings_override_the_shared_ones_and_bastions_inherit() {
    let f = Fixture::new();
    let text = doc(concat!(
        "  ssh:\n",
        "    user: ops\n",
        "    auth: {type: password, password: \"${PW}\"}\n",
        "    bastion: {address: jump.example, hostKey: \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"}\n",
        "  hosts:\n",
        "    - address: 10.0.0.11\n",
        "    - address: 10.0.0.12\n",
        "      ssh: {port: 2222, user: root, sudo: {mode: none}}\n",
        "    - address: fd00::13\n",
        // Reached over IPv6, in the (IPv4) cluster with an IPv4 node address.
        "      nodeIp: 10.0.0.13\n",
    ));
    let p = f
        .run_with(&text, &[("PW", "ssh-pass-123")], None)
        .unwrap()
        .plan;
    assert_eq!(p.hosts[0].ssh.user, "ops");
    assert!(matches!(p.hosts[0].sudo, SudoPlan::Passwordless));
    assert_eq!(p.hosts[1].ssh.port, 2222);
    assert_eq!(p.hosts[1].ssh.user, "root");
    assert!(matches!(p.hosts[1].sudo, SudoPlan::None));
    assert_eq!(p.hosts[2].name, "fd00::13");
    let b = p.hosts[1].bastion.as_ref().unwrap();
    assert_eq!(
        (b.address.as_str(), b.port, b.user.as_str()),
        ("jump.example", 22, "root")
    );
    assert!(matches!(b.auth, AuthMethod::Password(_)));
    assert!(b.host_key.is_some());
}

#[test]
fn sudo_none_needs_root() {
    let f = Fixture::new();
    let e = f.errors(&doc(&format!(
        "  ssh:\n    sudo: {{mode: none}}\n{}",
        hosts(1)
    )));
    assert_eq!(
        e,
        vec![
            "7:18 spec.ssh.sudo.mode: sudo mode `none` means the login user is root, but it is `admin`"
        ]
    );
}

struct Answers(RefCell<Vec<String>>);
impl Prompter for Answers {
    fn secret(&self, what: &str) -> Option<Secret> {
        self.0.borrow_mut().push(what.to_owned());
        Some(Secret::new("prompted-pass"))
    }
}

#[test]
fn missing_passwords_are_asked_once_and_only_when_all_else_is_valid() {
    let f = Fixture::new();
    let text = doc(&format!(
        "  ssh:\n    sudo: {{mode: password}}\n{}",
        hosts(3)
    ));
    // No terminal: an error that says how to give it.
    let e = f.errors(&text);
    assert_eq!(
        e,
        vec![
            "7:11 spec.ssh.sudo.password: no sudo password (all hosts) given, and there is no terminal to ask on"
        ]
    );
    // With a prompter: asked once for all three hosts.
    let asked = Answers(RefCell::new(Vec::new()));
    let p = f.run_with(&text, &[], Some(&asked)).unwrap().plan;
    assert_eq!(asked.0.borrow().as_slice(), ["sudo password (all hosts)"]);
    assert!(
        p.hosts
            .iter()
            .all(|h| matches!(&h.sudo, SudoPlan::Password(s) if s.expose() == "prompted-pass"))
    );
    // Never asked when something else is wrong.
    let asked = Answers(RefCell::new(Vec::new()));
    let bad = text.replace("10.0.0.13", "10.0.0.11");
    assert!(f.run_with(&bad, &[], Some(&asked)).is_err());
    assert!(asked.0.borrow().is_empty());
}

#[test]
fn secrets_in_clear_text_are_a_warning() {
    let f = Fixture::new();
    let l = f
        .run_with(
            &doc(&format!(
                "  ssh:\n    sudo: {{mode: password, password: hunter2-long}}\n{}",
                hosts(1)
            )),
            &[],
            None,
        )
        .unwrap();
    let w: Vec<String> = l
        .warnings
        .warnings()
        .map(|d| format!("{} {}", d.path, d.message))
        .collect();
    assert_eq!(
        w,
        vec!["spec.ssh.sudo.password a secret is written in the file in clear text"]
    );
}

#[test]
fn bad_values_everywhere_are_all_reported_together() {
    let f = Fixture::new();
    let text = concat!(
        "apiVersion: installer.dev/v1\n",
        "kind: Cluster\n",
        "metadata: {name: Demo_1}\n",
        "spec:\n",
        "  ssh: {user: ops, hostKey: x}\n",
        "  hosts:\n",
        "    - {address: 10.0.0.11, hostKey: \"SHA256:short\"}\n",
        "    - {address: 10.0.0.11}\n",
        "  enforcer: {mode: strict}\n",
    );
    let e = f.errors(text);
    assert_eq!(
        e,
        vec![
            "3:18 metadata.name: `Demo_1` is not a valid cluster name",
            "5:20 spec.ssh.hostKey: unknown field `hostKey`",
            "6:3 spec.hosts: 2 hosts: the installer supports 1, 3, 4 or 5 hosts",
            "7:37 spec.hosts[0].hostKey: `SHA256:short` is not a SHA-256 fingerprint (43 base64 characters after `SHA256:`)",
            "8:17 spec.hosts[1].address: duplicate address 10.0.0.11 (also spec.hosts[0])",
            "9:20 spec.enforcer.mode: `strict` is not one of enforce, audit",
        ]
    );
}

// ---- issue 17: hostile and careless input ----

#[test]
fn secret_put_in_password_file_field_is_not_echoed() {
    let f = Fixture::new();
    let text = doc(&format!(
        "{}  ssh:\n    sudo: {{mode: password, passwordFile: \"${{SUDO_PASSWORD}}\"}}\n",
        hosts(1)
    ));
    let d = f
        .run_with(&text, &[("SUDO_PASSWORD", "hunter2-topsecret")], None)
        .unwrap_err();
    let shown = d.to_string();
    assert!(!shown.contains("hunter2-topsecret"), "{shown}");
    assert!(shown.contains("passwordFile"), "{shown}");
}

#[test]
fn secret_named_variable_is_masked_in_any_field() {
    let f = Fixture::new();
    // A secret-named variable in a field that echoes its value (a user name).
    let text = doc(&format!(
        "{}  ssh:\n    user: \"${{API_TOKEN}}\"\n",
        hosts(1)
    ));
    match f.run_with(&text, &[("API_TOKEN", "bad user!tok3n-value")], None) {
        Ok(_) => {}
        Err(d) => {
            let shown = d.to_string();
            assert!(!shown.contains("tok3n-value"), "{shown}");
        }
    }
}

#[test]
fn directory_as_known_hosts_file_is_refused() {
    let f = Fixture::new();
    let text = doc(&format!(
        "{}  ssh:\n    knownHostsFile: {}\n",
        hosts(1),
        f.dir.path().display()
    ));
    let errs = f.errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("knownHostsFile") && e.contains("not a regular file")),
        "{errs:?}"
    );
}

#[test]
fn many_unknown_fields_report_is_capped() {
    let f = Fixture::new();
    let mut spec = hosts(1);
    for i in 0..10_000 {
        spec.push_str(&format!("  unknown{i}: 1\n"));
    }
    let d = f.run_with(&doc(&spec), &[], None).unwrap_err();
    let shown = d.to_string();
    assert!(
        shown.lines().count() < 150,
        "{} lines",
        shown.lines().count()
    );
    assert!(shown.contains("more problems"), "{shown:.500}");
}

#[test]
fn huge_value_is_cut_in_the_error_line() {
    let f = Fixture::new();
    let big = "x".repeat(500_000);
    let text = doc(&format!("{}  enforcer: {big}\n", hosts(1)));
    let d = f.run_with(&text, &[], None).unwrap_err();
    let shown = d.to_string();
    for line in shown.lines() {
        assert!(line.len() < 1024, "line of {} bytes", line.len());
    }
    assert!(shown.contains("500000 characters"), "{shown}");
}

#[test]
fn invalid_utf8_names_the_line_and_latin1() {
    let d = super::validate::decode("a.yaml", b"a: 1\nb: caf\xe9\n").unwrap_err();
    let e = &d.items[0];
    assert_eq!(e.loc.line, 2);
    assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
    assert!(e.hint.as_deref().unwrap_or("").contains("Latin-1"));
}

#[test]
fn utf16_file_is_named_as_utf16() {
    let bytes: Vec<u8> = [0xFFu8, 0xFE]
        .into_iter()
        .chain("a: 1\n".encode_utf16().flat_map(|u| u.to_le_bytes()))
        .collect();
    let d = super::validate::decode("a.yaml", &bytes).unwrap_err();
    assert!(
        d.items[0].message.contains("UTF-16"),
        "{}",
        d.items[0].message
    );
}

#[test]
fn ipv6_host_with_the_default_ipv4_networks_is_refused_as_dual_stack() {
    let f = Fixture::new();
    let errs = f.errors(&doc("  hosts:\n    - address: fd00::11\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("fd00::11 is an IPv6 address, but the cluster networks are IPv4")),
        "{errs:?}"
    );
    let errs = f.errors(&doc(
        "  hosts:\n    - address: 10.0.0.11\n      nodeIp: fd00::11\n",
    ));
    assert!(errs.iter().any(|e| e.contains("nodeIp")), "{errs:?}");
}

#[test]
fn same_host_written_as_ipv4_mapped_ipv6_is_a_duplicate() {
    let f = Fixture::new();
    let errs = f.errors(&doc("  hosts:\n    - address: 10.0.0.11\n    - address: \"::ffff:10.0.0.11\"\n    - address: 10.0.0.13\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("duplicate address 10.0.0.11")),
        "{errs:?}"
    );
}

#[test]
fn node_ip_that_is_another_hosts_address_is_refused() {
    let f = Fixture::new();
    let errs = f.errors(&doc("  hosts:\n    - address: 10.0.0.11\n      nodeIp: 10.0.0.12\n    - address: 10.0.0.12\n    - address: 10.0.0.13\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("hosts[0].nodeIp") && e.contains("address of spec.hosts[1]")),
        "{errs:?}"
    );
}

#[test]
fn ipv6_zone_id_says_it_is_unsupported() {
    let f = Fixture::new();
    let errs = f.errors(&doc("  hosts:\n    - address: \"fe80::1%eth0\"\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("zone ids are not supported")),
        "{errs:?}"
    );
}

#[test]
fn yaml_1_2_capitalised_booleans_are_booleans() {
    let f = Fixture::new();
    for (text, want) in [
        ("True", true),
        ("TRUE", true),
        ("False", false),
        ("true", true),
    ] {
        let l = f.ok(&doc(&format!(
            "{}  k3s:\n    allowCgroupV1: {text}\n",
            hosts(1)
        )));
        assert_eq!(l.plan.allow_cgroup_v1, want, "{text}");
    }
}

#[test]
fn quoted_number_says_it_was_quoted() {
    let f = Fixture::new();
    let errs = f.errors(&doc(&format!("{}  ssh:\n    port: \"22\"\n", hosts(1))));
    assert!(
        errs.iter().any(|e| e.contains("written in quotes")),
        "{errs:?}"
    );
}

#[test]
fn private_key_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let key = f.dir.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = f.ok(&doc(&format!(
        "  ssh:\n    auth: {{type: key, keyFile: {}}}\n{}",
        key.display(),
        hosts(1)
    )));
    assert!(
        l.warnings
            .items
            .iter()
            .any(|w| w.message.contains("can be read by other users")),
        "{:?}",
        l.warnings.items
    );
}

#[test]
fn password_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let pw = f.dir.path().join("sudo-password");
    std::fs::write(&pw, "Hunter2-sudo\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let l = f.ok(&doc(&format!(
        "  ssh:\n    user: admin\n    sudo: {{mode: password, passwordFile: {}}}\n{}",
        pw.display(),
        hosts(1)
    )));
    let w: Vec<_> = l.warnings.items.iter().map(|w| w.message.clone()).collect();
    assert!(
        w.iter()
            .any(|m| m.contains("password file") && m.contains("can be read by other users")),
        "{w:?}"
    );
    assert!(w.iter().all(|m| !m.contains("Hunter2-sudo")), "{w:?}");
}

#[test]
fn answer_file_writable_by_others_is_warned_about_when_root() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("answers.yaml");
    std::fs::write(&p, "x").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(super::validate::writable_by_others(&p, true).is_some());
    assert!(super::validate::writable_by_others(&p, false).is_none());
}

mod reader_properties {
    //! The answer-file reader over arbitrary input: never a panic, and bounded (the case
    //! count and sizes are small and the seed fixed, so this runs in seconds in CI).
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Fragments of answer files, so the input reaches past the YAML parser.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("apiVersion: installer.dev/v1\n".to_string()),
            Just("kind: Cluster\n".to_string()),
            Just("metadata: {name: demo}\n".to_string()),
            Just("spec:\n".to_string()),
            Just("  hosts:\n".to_string()),
            Just("    - address: 10.0.0.11\n".to_string()),
            Just("      nodeIp: fd00::1\n".to_string()),
            Just("  ssh: {port: \"22\", sudo: {mode: password, passwordFile: ${X}}}\n".to_string()),
            Just("  app:\n    values:\n      gatewayPort: ${GATEWAY_PORT}\n".to_string()),
            Just("a: &a [*a]\n".to_string()),
            Just("b: &b [1, 2]\nc: [*b, *b]\n".to_string()),
            Just("<<: {}\n".to_string()),
            Just("---\n".to_string()),
            "[ -~\t\n]{0,40}".prop_map(|s| s),
            proptest::collection::vec(any::<char>(), 0..20).prop_map(|v| v.into_iter().collect()),
        ]
    }

    #[test]
    fn arbitrary_answer_files_never_panic() {
        let f = Fixture::new();
        let config = Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[17; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner
            .run(&proptest::collection::vec(fragment(), 0..24), |parts| {
                let text = parts.concat();
                let _ = f.run_with(&text, &[("GATEWAY_PORT", "8443"), ("X", "x")], None);
                let _ = super::super::validate::decode("a.yaml", text.as_bytes());
                Ok(())
            })
            .unwrap();
    }
}
