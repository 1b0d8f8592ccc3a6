//! Helpers for end-to-end tests: run the real `installer` binary against a lab with the
//! stand-in payload, read its JSON events, inspect the hosts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

use crate::lab::{Lab, Node};
use crate::payload::{self, Payload, Sizes};

/// The outcome of one installer run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub events: Vec<serde_json::Value>,
    pub stdout: String,
    pub stderr: String,
}

/// An etcd snapshot a run copied to the workstation ([`Run::saved_snapshot`]).
#[derive(Debug)]
pub struct SavedSnapshot {
    /// The server it was taken on, as the plan names it.
    pub host: String,
    pub path: PathBuf,
    /// Its file name (`pre-upgrade-node1-1767225600`).
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Run {
    /// Everything it printed, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// A value of the application as the run's plan printed it (`apiPort`, `storePort`, ...).
    pub fn app_value(&self, key: &str) -> u16 {
        let plan = self
            .of("plan_ready")
            .first()
            .map(|e| e["plan"]["app"].clone())
            .unwrap_or_else(|| panic!("no plan in\n{}", self.all()));
        plan.as_array()
            .and_then(|kvs| kvs.iter().find(|kv| kv[0] == serde_json::json!(key)))
            .and_then(|kv| kv[1].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {plan}"))
    }

    /// Events of one kind (`host_done`, `phase_started`, ...).
    pub fn of(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    /// The one etcd snapshot the run copied to the workstation, checked as every command that
    /// keeps one must leave it: the file's SHA-256 and size are the ones the `snapshot_saved`
    /// event reports (the host's `sha256sum`), the file and the token beside it are regular
    /// files of mode 0600, and the token never reached the output. Panics otherwise.
    pub fn saved_snapshot(&self) -> SavedSnapshot {
        use sha2::Digest;
        use std::os::unix::fs::PermissionsExt;
        let saved = self.of("snapshot_saved");
        assert_eq!(saved.len(), 1, "{}", self.all());
        let field = |k: &str| saved[0][k].as_str().unwrap_or_default().to_owned();
        let (path, token) = (PathBuf::from(field("path")), PathBuf::from(field("token")));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(saved[0]["bytes"], bytes.len() as u64, "{}", self.all());
        assert_eq!(field("sha256"), hex::encode(sha2::Sha256::digest(&bytes)));
        for f in [&path, &token] {
            let m = std::fs::symlink_metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(m.is_file(), "{}", f.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
        let token_text = std::fs::read_to_string(&token).unwrap_or_default();
        assert!(token_text.starts_with("K10"), "{token_text:.3}");
        assert!(
            !self.all().contains(token_text.trim()),
            "the token was printed"
        );
        SavedSnapshot {
            host: field("host"),
            name: path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned(),
            path,
            bytes,
        }
    }

    /// `host_done` events that changed something.
    pub fn changes(&self) -> Vec<&serde_json::Value> {
        self.of("host_done")
            .into_iter()
            .filter(|e| e["outcome"] == "changed")
            .collect()
    }

    /// The failures as a person reads them: `host: error` and `hint: ...` lines from the
    /// `host_failed` events, then the final error's message and hint.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for e in self.of("host_failed") {
            out.push_str(&format!(
                "{}: {}\n",
                e["host"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or("")
            ));
            if let Some(h) = e["hint"].as_str() {
                out.push_str(&format!("  hint: {h}\n"));
            }
        }
        for e in self.of("error") {
            out.push_str(e["message"].as_str().unwrap_or(""));
            out.push('\n');
            if let Some(h) = e["hint"].as_str() {
                out.push_str(&format!("hint: {h}\n"));
            }
        }
        out
    }

    /// Bytes reported as uploaded.
    pub fn uploaded_anything(&self) -> bool {
        !self.of("host_progress").is_empty()
    }

    /// Whether the command finished with ok.
    pub fn ok(&self) -> bool {
        self.code == 0 && self.of("command_finished").iter().any(|e| e["ok"] == true)
    }
}

/// A lab plus the stand-in payload, ready to run the installer against.
pub struct Env {
    pub work: tempfile::TempDir,
    pub payload: Payload,
}

impl Env {
    pub fn new() -> Result<Env> {
        Env::with_sizes(Sizes::default(), &[])
    }

    pub fn with_sizes(sizes: Sizes, leave_out: &[&str]) -> Result<Env> {
        let work = tempfile::tempdir()?;
        let standin = payload::workspace_binary("k3s-standin")?;
        let payload = payload::build(&work.path().join("payload"), &standin, sizes, leave_out)?;
        Ok(Env { work, payload })
    }

    /// An environment whose payload is a release reporting `k3s_version`
    /// ([`payload::build_release`]); [`Env::release`] mints further ones.
    pub fn with_release(k3s_version: &str) -> Result<Env> {
        let work = tempfile::tempdir()?;
        let payload = Env::mint(&work, k3s_version)?;
        Ok(Env { work, payload })
    }

    /// Mints another release of the payload in this environment (it does not replace
    /// `self.payload`: assign it to run the installer of that release).
    pub fn release(&self, k3s_version: &str) -> Result<Payload> {
        Env::mint(&self.work, k3s_version)
    }

    fn mint(work: &tempfile::TempDir, k3s_version: &str) -> Result<Payload> {
        let standin = payload::workspace_binary("k3s-standin")?;
        payload::build_release(
            &work.path().join(format!("release-{k3s_version}")),
            &standin,
            k3s_version,
        )
    }

    /// The installer command for `args` (plus `-f answers --output json` and the payload).
    pub fn command(&self, answers: &Path, args: &[&str]) -> Result<Command> {
        let bin = payload::workspace_binary("installer")?;
        let mut c = Command::new(bin);
        c.args(args)
            .arg("-f")
            .arg(answers)
            .args(["--output", "json"])
            .env("NO_COLOR", "1");
        // Only the commands that upload take the payload.
        if matches!(
            args.first(),
            Some(&"install") | Some(&"preflight") | Some(&"upgrade")
        ) {
            c.args(self.payload.args());
        }
        Ok(c)
    }

    /// Runs `installer <args> -f answers` to the end.
    pub fn run(&self, answers: &Path, args: &[&str]) -> Result<Run> {
        self.run_with_env(answers, args, &[])
    }

    /// Like [`Env::run`], with extra environment variables.
    pub fn run_with_env(&self, answers: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
        let mut cmd = self.command(answers, args)?;
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().context("run the installer")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            events: stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts the installer in the background, stdout piped (JSON events).
    pub fn spawn(&self, answers: &Path, args: &[&str]) -> Result<Child> {
        self.command(answers, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the installer")
    }

    /// Writes a variant of the lab's answer file (its text passed through `edit`).
    pub fn answers_variant(
        &self,
        lab: &Lab,
        name: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<PathBuf> {
        let text = std::fs::read_to_string(lab.answer_file_path())?;
        // Beside the lab's own file, so that the key and known_hosts paths stay valid and
        // the log, journal and kubeconfig land in the lab's state directory.
        let dir = lab
            .answer_file_path()
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default()
            .join(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("answers.yaml");
        std::fs::write(&path, edit(text))?;
        Ok(path)
    }
}

/// Writes the stand-in's test knobs on every node (a file only tests write).
pub fn standin_knobs(lab: &Lab, yaml: &str) -> Result<()> {
    for n in lab.nodes() {
        lab.exec_ok(
            n,
            &format!(
                "mkdir -p /etc/k3s-standin && printf '%s' '{}' > /etc/k3s-standin/faults.yaml",
                yaml.replace('\'', "")
            ),
        )?;
    }
    Ok(())
}

/// The nftables table of [`block_pods_from_api`].
pub const API_BLOCK_TABLE: &str = "lab_block_api";

/// A host firewall on `node` that drops what the node's pods send to the Kubernetes API (6443,
/// and 6444, the agent's load balancer), as a customer's firewall may: a table of its own
/// whose output chain matches the pods' cgroup (`kubepods.slice` in the cgroup v2 hierarchy,
/// created first when no pod ran there yet), so the node's k3s itself keeps its API. A drop in
/// any base chain is final, whatever the enforcer's table accepts. It is seen after
/// kube-proxy's DNAT, so a pod's connection to the `kubernetes` Service is dropped too.
pub fn block_pods_from_api(lab: &Lab, node: &Node) -> Result<()> {
    lab.exec_ok(
        node,
        &format!(
            r#"set -e
p=kubepods.slice
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || p=unified/kubepods.slice
mkdir -p /sys/fs/cgroup/$p
nft -f - <<RULES
table inet {API_BLOCK_TABLE} {{
  chain out {{
    type filter hook output priority filter - 10; policy accept;
    tcp dport {{ 6443, 6444 }} socket cgroupv2 level 1 "$p" counter drop
  }}
}}
RULES
"#
        ),
    )
    .with_context(|| format!("block {}'s pods from the API", node.name))?;
    Ok(())
}

/// Removes [`block_pods_from_api`]'s table.
pub fn unblock_pods_from_api(lab: &Lab, node: &Node) -> Result<()> {
    lab.exec_ok(node, &format!("nft delete table inet {API_BLOCK_TABLE}"))
        .with_context(|| format!("unblock {}'s pods from the API", node.name))?;
    Ok(())
}

/// Whether the installer left any trace of itself on the node (for "changes nothing").
pub fn untouched(lab: &Lab, node: &Node) -> Result<bool> {
    let out = lab.exec_ok(
        node,
        "for p in /usr/local/bin/k3s /etc/rancher/k3s /var/lib/rancher/k3s /etc/systemd/system/k3s.service /etc/cni/net.d/10-local.conflist /run/installer-reach /var/lib/installer; do [ -e $p ] && echo $p; done; true",
    )?;
    Ok(out.trim().is_empty())
}

/// `systemctl is-active UNIT` on a node.
pub fn unit_state(lab: &Lab, node: &Node, unit: &str) -> Result<String> {
    Ok(lab
        .exec_ok(node, &format!("systemctl is-active {unit} || true"))?
        .trim()
        .to_owned())
}

/// The kubeconfig the install wrote beside the lab's answer file.
pub fn kubeconfig(lab: &Lab) -> PathBuf {
    let dir = lab
        .answer_file_path()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let name = format!("lab{}-kubeconfig.yaml", lab.id());
    dir.join(name)
}

/// A kube-rs client from the kubeconfig the install wrote beside the lab's answer file.
pub async fn kube_client(lab: &Lab) -> Result<kube::Client> {
    let path = kubeconfig(lab);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Polls `f` every 250 ms until it gives `Ok`, or panics naming `what` and the last state.
pub async fn poll<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let t = std::time::Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
}
