//! The answer file `up` writes, describing the lab to `installer install -f`. It follows the v1 baseline
//! contract (/work/briefs/answer-file-contract.md): key auth with the lab key, the lab's known_hosts,
//! user root, one host per node. The config schema is still being written elsewhere, so the whole
//! shape is in this one function: adjust it here when the schema moves.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// What the answer file needs to know about the lab.
pub(crate) struct AnswerInput<'a> {
    pub lab_id: u8,
    pub key_path: &'a Path,
    pub known_hosts_path: &'a Path,
    /// (node name, address, host key fingerprint)
    pub hosts: Vec<(String, Ipv4Addr, String)>,
}

/// Renders the answer file.
pub(crate) fn render(input: &AnswerInput<'_>) -> String {
    let mut s = String::new();
    // `writeln!` into a String cannot fail.
    let _ = writeln!(
        s,
        "# Written by `lab up` (installer-tests, LAB_ID={}). Removed by `lab down`.",
        input.lab_id
    );
    let _ = writeln!(s, "apiVersion: installer.dev/v1");
    let _ = writeln!(s, "kind: Cluster");
    let _ = writeln!(s, "metadata:");
    let _ = writeln!(s, "  name: lab{}", input.lab_id);
    let _ = writeln!(s, "spec:");
    let _ = writeln!(s, "  ssh:");
    let _ = writeln!(s, "    user: root");
    let _ = writeln!(s, "    port: 22");
    let _ = writeln!(s, "    auth:");
    let _ = writeln!(s, "      type: key");
    let _ = writeln!(
        s,
        "      keyFile: {}",
        quote(&input.key_path.to_string_lossy())
    );
    let _ = writeln!(s, "    sudo:");
    let _ = writeln!(s, "      mode: none");
    let _ = writeln!(
        s,
        "    knownHostsFile: {}",
        quote(&input.known_hosts_path.to_string_lossy())
    );
    // The lab's nodes share the host's cgroup hierarchy, which is not the unified v2 one on
    // every CI machine: relax it through the answer file, as a customer with cgroup v1
    // hosts would (docs/testing.md, "What the lab cannot model").
    let _ = writeln!(s, "  k3s:");
    let _ = writeln!(s, "    allowCgroupV1: true");
    let _ = writeln!(s, "  hosts:");
    for (name, addr, fp) in &input.hosts {
        let _ = writeln!(s, "    - address: {addr}");
        let _ = writeln!(s, "      nodeName: {name}");
        let _ = writeln!(s, "      hostKey: {}", quote(fp));
    }
    s
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answer_file_describes_the_lab() {
        let text = render(&AnswerInput {
            lab_id: 1,
            key_path: Path::new("/var/tmp/installer-lab/1/id_ed25519"),
            known_hosts_path: Path::new("/var/tmp/installer-lab/1/known_hosts"),
            hosts: vec![
                (
                    "node1".into(),
                    Ipv4Addr::new(10, 77, 1, 11),
                    "SHA256:aaa".into(),
                ),
                (
                    "node2".into(),
                    Ipv4Addr::new(10, 77, 1, 12),
                    "SHA256:bbb".into(),
                ),
            ],
        });
        insta::assert_snapshot!(text);
        // It parses as YAML with the contract's field names.
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["spec"]["ssh"]["auth"]["type"], "key");
        assert_eq!(
            v["spec"]["ssh"]["auth"]["keyFile"],
            "/var/tmp/installer-lab/1/id_ed25519"
        );
        assert_eq!(v["spec"]["hosts"][1]["address"], "10.77.1.12");
        assert_eq!(v["spec"]["hosts"].as_array().unwrap().len(), 2);
    }
}
