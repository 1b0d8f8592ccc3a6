//! The scripts `uninstall` sends to a host (POSIX `sh`), as pure functions: deletion on one
//! file system that refuses across a mount, k3s-killall.sh's steps (units, shims, k3s's own
//! mounts, network state), and the changes log's last form. What they act on is decided in
//! [`super::uninstall_plan`].

use crate::host::shell_quote;
use crate::k3s::paths;

use super::prepare::CHANGES_LOG;
use super::uninstall_plan::{LINKS, at_or_under};

/// Escapes `p` for `find -path` (a glob).
fn glob_escape(p: &str) -> String {
    let mut s = String::new();
    for c in p.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Deletes `dir` on its own file system only, sparing `keep`: it stops (exit 7) if anything
/// is mounted at or under `dir` (a bind mount from the same file system would not be seen by
/// `-xdev`), then removes every non-directory `find -xdev` sees and the directories left
/// empty. Prints `remains` when something is left (a kept file).
pub fn delete_script(dir: &str, keep: &[String]) -> String {
    let q = shell_quote(dir);
    let mut spare = String::new();
    for k in keep.iter().filter(|k| at_or_under(k, dir)) {
        spare.push_str(&format!(" ! -path {}", shell_quote(&glob_escape(k))));
    }
    format!(
        "set -e\nd={q}\n[ -e \"$d\" ] || [ -L \"$d\" ] || exit 0\n\
         if awk -v d=\"$d\" '{{ if ($5 == d || index($5, d \"/\") == 1) {{ print $5; f = 1 }} }} END {{ exit !f }}' /proc/self/mountinfo >&2; then echo \"mounted under $d: not deleted\" >&2; exit 7; fi\n\
         find \"$d\" -xdev -depth ! -type d{spare} -exec rm -f -- {{}} +\n\
         find \"$d\" -xdev -depth -type d -exec rmdir -- {{}} + 2>/dev/null || true\n\
         if [ -e \"$d\" ]; then echo remains; fi\n"
    )
}

/// The changes log's last form when uninstall kept files: the cluster, `uninstalled`, and
/// each kept file, so that a rerun knows there is nothing left to undo (and says what was
/// kept) instead of taking a kept k3s binary for a k3s nobody recorded.
pub fn tombstone_script(cluster: &str, kept: &[String]) -> String {
    let mut lines = vec![format!("cluster {cluster}"), "uninstalled".to_owned()];
    lines.extend(kept.iter().map(|k| format!("kept {k}")));
    let args: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
    format!(
        "printf '%s\\n' {} > {CHANGES_LOG}.new && mv -f {CHANGES_LOG}.new {CHANGES_LOG}",
        args.join(" ")
    )
}

/// Stops every k3s unit (and any other `k3s*` unit, as k3s-killall.sh does).
pub fn stop_units_script() -> String {
    "for u in /etc/systemd/system/k3s*.service; do [ -e \"$u\" ] || continue; systemctl stop \"$(basename \"$u\")\" || true; done\n\
     for u in k3s.service k3s-agent.service; do systemctl stop \"$u\" 2>/dev/null || true; done\n"
        .to_owned()
}

/// Kills containerd's shims under k3s's data directory and their process trees
/// (k3s-killall.sh `killtree $(getshims)`), from /proc, so no `ps` is needed. Only a
/// process's argv[0] is matched: this script's own command line holds the pattern too.
pub fn kill_shims_script() -> String {
    format!(
        "tree() {{ for p in \"$@\"; do echo \"$p\"; tree $(cat /proc/\"$p\"/task/*/children 2>/dev/null); done; }}\n\
         shims=\"\"\n\
         for p in /proc/[0-9]*; do [ \"${{p#/proc/}}\" = \"$$\" ] && continue; c=$(tr '\\0' '\\n' < \"$p/cmdline\" 2>/dev/null | head -n1) || continue; case \"$c\" in {data}/data/*/bin/containerd-shim*) shims=\"$shims ${{p#/proc/}}\";; esac; done\n\
         [ -n \"$shims\" ] || exit 0\n\
         kill -9 $(tree $shims) 2>/dev/null || true\n\
         echo killed\n",
        data = paths::DATA_DIR
    )
}

/// runc's state directory for containerd's `k8s.io` namespace (containerd's runc shim default
/// root), where k3s's containers leave their state when their shims are killed.
pub const RUNC_K8S_ROOT: &str = "/run/containerd/runc/k8s.io";

/// Removes the runc state of k3s's containers after their shims were killed: only the entries
/// whose state names a path under k3s's directories (another containerd on the host keeps
/// its own), then the parent directories if that left them empty. Prints one line per entry.
pub fn runc_state_script() -> String {
    format!(
        "[ -d {root} ] || exit 0\n\
         for d in {root}/*/; do [ -f \"$d/state.json\" ] || continue; \
         if grep -qE '\"({data}|{run})/' \"$d/state.json\"; then rm -rf -- \"$d\" && echo \"runc state $(basename \"$d\")\"; fi; done\n\
         rmdir {root} /run/containerd/runc /run/containerd 2>/dev/null || true\n",
        root = RUNC_K8S_ROOT,
        data = paths::DATA_DIR,
        run = "/run/k3s",
    )
}

/// Whether the shim script found anything to kill.
pub fn killed_something(stdout: &str) -> bool {
    stdout.lines().any(|l| l.trim() == "killed")
}

/// The nftables table (family inet) the policy enforcer owns (its `--table` default).
pub const ENFORCER_TABLE: &str = "installer_enforcer";

/// Removes the network state k3s leaves (k3s-killall.sh): `cni-*` namespaces, `cni0`'s
/// veths and the CNI/flannel links, kube-proxy's iptables rules and nftables tables, and the
/// policy enforcer's table.
/// Prints what it removed, one per line (nothing: nothing was there). Exact deletions only;
/// the iptables filter keeps every rule that is not k3s's.
pub fn network_script() -> String {
    let mut s = String::from(
        "command -v ip >/dev/null 2>&1 && {\n\
         for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-'); do ip netns delete \"$n\" && echo \"netns $n\"; done\n\
         for v in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link delete \"$v\" && echo \"link $v\"; done\n",
    );
    for l in LINKS {
        s.push_str(&format!(
            "if ip link show {l} >/dev/null 2>&1; then ip link delete {l} && echo \"link {l}\"; fi\n"
        ));
    }
    s.push_str("}\n");
    for (save, restore, family) in [
        ("iptables-save", "iptables-restore", "ip"),
        ("ip6tables-save", "ip6tables-restore", "ip6"),
    ] {
        let tables = empty_tables_script(save, family);
        s.push_str(&format!(
            "if command -v {save} >/dev/null 2>&1 && {save} 2>/dev/null | grep -qE 'KUBE-|CNI-|flannel'; then {save} | grep -v KUBE- | grep -v CNI- | grep -iv flannel | {restore} && echo \"{save} k3s rules\"\n{tables}fi\n"
        ));
    }
    s.push_str(
        "if command -v nft >/dev/null 2>&1; then for fam in ip ip6 inet; do if nft list table $fam kube-proxy >/dev/null 2>&1; then nft delete table $fam kube-proxy && echo \"nft table $fam kube-proxy\"; fi; done; fi\n",
    );
    // The policy enforcer's table: it never removes it itself (fail-closed when it stops).
    s.push_str(&format!(
        "if command -v nft >/dev/null 2>&1 && nft list table inet {ENFORCER_TABLE} >/dev/null 2>&1; then nft delete table inet {ENFORCER_TABLE} && echo \"nft table inet {ENFORCER_TABLE}\"; fi\n"
    ));
    s
}

/// After k3s's iptables rules are filtered out: with the nf_tables backend, a table left with
/// nothing but built-in chains whose policy is ACCEPT (the tables kube-proxy's rules created)
/// is deleted, so the host's ruleset is what it was; a table with any rule, any other chain
/// or another policy is kept. (The legacy backend's tables cannot be deleted; they stay empty.)
fn empty_tables_script(save: &str, family: &str) -> String {
    let iptables = save.trim_end_matches("-save");
    format!(
        "if {iptables} -V 2>/dev/null | grep -q nf_tables; then for t in $({save} 2>/dev/null | sed -n 's/^\\*//p'); do \
         if ! {save} -t \"$t\" 2>/dev/null | grep -qvE '^(#|\\*|COMMIT$|:[A-Z]+ ACCEPT )'; then nft delete table {family} \"$t\" 2>/dev/null && echo \"nft table {family} $t (left empty)\"; fi; done; fi\n"
    )
}

/// Unmounts k3s's own volatile mounts (the list, deepest first), falling back to a lazy
/// unmount (they hold nothing to keep).
pub fn release_script(points: &[String]) -> String {
    let mut v: Vec<&String> = points.iter().collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.len()));
    v.dedup();
    let mut s = String::new();
    for p in v {
        let q = shell_quote(p);
        s.push_str(&format!("umount {q} 2>/dev/null || umount -l {q}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::uninstall_plan::{Undo, probe_paths_script};
    use super::*;

    fn sh_ok(s: &str) {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", s])
            .status()
            .unwrap();
        assert!(st.success(), "{s}");
    }

    #[test]
    fn scripts_are_valid_sh() {
        sh_ok(&delete_script(
            "/etc/rancher/k3s",
            &["/etc/rancher/k3s/config.yaml".into()],
        ));
        sh_ok(&stop_units_script());
        sh_ok(&kill_shims_script());
        sh_ok(&network_script());
        sh_ok(&runc_state_script());
        sh_ok(&release_script(&[
            "/run/k3s/a".into(),
            "/run/k3s/a/b c".into(),
        ]));
        sh_ok(&probe_paths_script(&["/a", "/b c"]));
        for u in [
            Undo::RemoveFile("/a".into()),
            Undo::RemoveDirIfEmpty("/d".into()),
            Undo::FirewalldPort("6443/tcp".into()),
            Undo::FirewalldTrusted("10.42.0.0/16".into()),
            Undo::Ufw("2379:2380/tcp".into()),
        ] {
            sh_ok(&u.script());
        }
    }

    /// Runs the delete script on a scratch tree: the kept file and its directory stay,
    /// everything else goes, and a directory that is a symlink elsewhere is not followed.
    #[test]
    fn the_delete_script_spares_kept_files_and_follows_no_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("k3s");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "x").unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(root.join("config.yaml"), "admin's").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        let keep = root.join("config.yaml").display().to_string();
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &delete_script(&root.display().to_string(), std::slice::from_ref(&keep)),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("remains"));
        assert!(std::path::Path::new(&keep).exists());
        assert!(!root.join("a").exists());
        assert!(outside.join("precious").exists());
        // Without anything kept the directory goes entirely.
        let out = std::process::Command::new("sh")
            .args(["-c", &delete_script(&root.display().to_string(), &[])])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!root.exists());
    }
}
