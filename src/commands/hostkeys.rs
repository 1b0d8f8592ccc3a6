//! Asking a person about an SSH host key nothing vouches for (the wizard's install, and an
//! `installer install` run on a terminal): the key's type and fingerprint are shown, and the
//! person trusts it (remembered in known_hosts, or pinned in the answer file) or refuses.
//! Unattended runs never ask: they refuse unknown keys unless `--accept-new-host-keys`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::host::ssh::{HostKeyDecision, HostKeyInfo, SshPrompt};
use crate::report::Prompts;

/// The prompt, and the pins the person chose (written into the answer file afterwards).
#[derive(Debug)]
pub struct AskHostKeys {
    prompts: Prompts,
    pins: Mutex<Vec<(String, String)>>,
    /// Hosts are connected in parallel; their questions are asked one at a time.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl AskHostKeys {
    pub fn new(prompts: Prompts) -> Arc<AskHostKeys> {
        Arc::new(AskHostKeys {
            prompts,
            pins: Mutex::new(Vec::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// `(host, fingerprint)` pairs to pin in the answer file.
    pub fn pins(&self) -> Vec<(String, String)> {
        self.pins.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

const CHOICES: &[&str] = &[
    "trust it and remember it in known_hosts",
    "trust it and pin it in the answer file",
    "refuse it (stop)",
];

#[async_trait]
impl SshPrompt for AskHostKeys {
    async fn unknown_host_key(&self, host: &str, key: &HostKeyInfo) -> HostKeyDecision {
        let _turn = self.one_at_a_time.lock().await;
        let prompts = self.prompts.clone();
        let question = format!(
            "{host} offers an SSH host key nothing vouches for:\n  {} {}\nCompare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host. What to do?",
            key.key_type, key.fingerprint
        );
        let choice = tokio::task::spawn_blocking(move || prompts.select(&question, CHOICES, 2))
            .await
            .ok()
            .and_then(Result::ok);
        match choice {
            Some(0) => HostKeyDecision::AcceptAndRemember,
            Some(1) => {
                if let Ok(mut p) = self.pins.lock() {
                    p.push((host.to_owned(), key.fingerprint.clone()));
                }
                HostKeyDecision::AcceptOnce
            }
            _ => HostKeyDecision::Reject,
        }
    }
}

/// Adds `hostKey: <fingerprint>` to the host whose `address` is `host` in an answer file's
/// text (hosts written as `- address: X` block items, as the wizard and the examples do).
/// Returns None when the host is not found in that form or already has a `hostKey`.
pub fn pin_host_key(text: &str, host: &str, fingerprint: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    let mut done = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push(line.to_owned());
        let trimmed = line.trim_start();
        if !done
            && let Some(rest) = trimmed.strip_prefix("- address:")
            && rest.trim().trim_matches(['"', '\'']) == host
        {
            let indent = line.len() - trimmed.len() + 2;
            // The item's other keys: stop if one of them is already a hostKey.
            let mut j = i + 1;
            while j < lines.len() {
                let l = lines[j];
                let t = l.trim_start();
                if t.is_empty() || l.len() - t.len() != indent || t.starts_with('-') {
                    break;
                }
                if t.starts_with("hostKey:") {
                    return None;
                }
                j += 1;
            }
            out.push(format!("{}hostKey: \"{fingerprint}\"", " ".repeat(indent)));
            done = true;
        }
        i += 1;
    }
    done.then(|| {
        let mut s = out.join("\n");
        if text.ends_with('\n') {
            s.push('\n');
        }
        s
    })
}

/// Writes the chosen pins into the answer file (keeping its mode); returns what it could
/// not pin (a host written in another form), for the caller to report.
pub fn write_pins(answer_file: &Path, pins: &[(String, String)]) -> std::io::Result<Vec<String>> {
    if pins.is_empty() {
        return Ok(Vec::new());
    }
    let mut text = fs_err::read_to_string(answer_file)?;
    let mut missed = Vec::new();
    for (host, fp) in pins {
        match pin_host_key(&text, host, fp) {
            Some(t) => text = t,
            None => missed.push(format!("{host} {fp}")),
        }
    }
    let mode = std::fs::metadata(answer_file).map_or(0o600, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777 & !0o022
    });
    crate::fsx::write_atomic(answer_file, text.as_bytes(), mode)?;
    Ok(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: installer.dev/v1\nkind: Cluster\nmetadata:\n  name: demo\nspec:\n  hosts:\n    - address: 10.0.0.11\n      nodeName: srv1\n    - address: \"10.0.0.12\"\n  app:\n    values:\n      gatewayPort: 9443\n";

    #[test]
    fn a_pin_lands_in_the_right_host_item() {
        let out = pin_host_key(FILE, "10.0.0.12", "SHA256:abc").unwrap();
        assert!(
            out.contains("    - address: \"10.0.0.12\"\n      hostKey: \"SHA256:abc\"\n  app:"),
            "{out}"
        );
        let out = pin_host_key(&out, "10.0.0.11", "SHA256:def").unwrap();
        assert!(
            out.contains(
                "    - address: 10.0.0.11\n      hostKey: \"SHA256:def\"\n      nodeName: srv1\n"
            ),
            "{out}"
        );
        // Already pinned, or not there: nothing to do.
        assert_eq!(pin_host_key(&out, "10.0.0.11", "SHA256:xyz"), None);
        assert_eq!(pin_host_key(FILE, "10.9.9.9", "SHA256:xyz"), None);
    }

    #[test]
    fn pins_are_written_and_the_file_still_validates_its_shape() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("answers.yaml");
        std::fs::write(&p, FILE).unwrap();
        let missed = write_pins(
            &p,
            &[
                ("10.0.0.11".into(), "SHA256:AAAA".into()),
                ("h".into(), "SHA256:B".into()),
            ],
        )
        .unwrap();
        assert_eq!(missed, vec!["h SHA256:B".to_string()]);
        let text = std::fs::read_to_string(&p).unwrap();
        let tree: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(tree["spec"]["hosts"][0]["hostKey"], "SHA256:AAAA");
    }
}
