//! The node collectors, as data: what runs on each node, under which limits, and where its
//! output lands in the bundle. Every command only reads; nothing is written on the node
//! (output streams back over SSH and is capped on the node by `tail -c`, so the newest bytes
//! are kept).

use std::time::Duration;

use crate::host::shell_quote;

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

/// Which nodes a collector applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    All,
    Servers,
    /// Only when the Kubernetes API did not answer (pod logs read from the node).
    ApiDown,
}

/// One command run on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    /// Stable id (`system/os`); also the manifest's key.
    pub id: String,
    /// Where the output goes, under `nodes/<name>/`.
    pub path: String,
    /// Shell script (run by `sh -c` under sudo). Never holds a secret.
    pub script: String,
    pub timeout: Duration,
    /// Bytes kept (the newest); what is beyond is counted as dropped.
    pub cap: u64,
    pub applies: Applies,
}

impl Collector {
    pub fn new(id: &str, script: impl Into<String>, timeout_s: u64, cap: u64) -> Collector {
        Collector {
            id: id.into(),
            path: format!("{id}.txt"),
            script: script.into(),
            timeout: Duration::from_secs(timeout_s),
            cap,
            applies: Applies::All,
        }
    }

    fn at(mut self, path: &str) -> Collector {
        self.path = path.into();
        self
    }

    fn only(mut self, applies: Applies) -> Collector {
        self.applies = applies;
        self
    }

    /// The script actually sent: the command under `timeout` (killed 5 s later if it
    /// ignores TERM), niced, stderr merged, its exit code and the raw byte count reported
    /// on stderr (`__bundle_rc=N`, dd's `N bytes`), the newest `cap` bytes on stdout.
    pub fn wrapped(&self) -> String {
        format!(
            "LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export LC_ALL PATH; {{ nice -n 19 timeout -k 5 {t} sh -c {s} 2>&1 </dev/null; echo \"__bundle_rc=$?\" >&2; }} | dd bs=65536 2>&2 | tail -c {cap}",
            t = self.timeout.as_secs().max(1),
            s = shell_quote(&self.script),
            cap = self.cap,
        )
    }
}

/// What the node collectors need to know about the cluster.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `journalctl --since` as a UNIX time.
    pub since_epoch: i64,
    /// The other nodes' addresses (reachability checks).
    pub peers: Vec<(String, String)>,
    /// TCP ports to check on every peer (the cluster's and the application's).
    pub ports: Vec<u16>,
}

/// The ports k3s with embedded etcd listens on between nodes.
pub const CLUSTER_PORTS: [u16; 4] = [6443, 2379, 2380, 10250];

/// Files the bundle never reads, whatever a collector asks: join tokens, private keys,
/// kubeconfigs, the node password, k3s's credentials and the etcd database.
pub const NEVER_READ: &[&str] = &[
    "/etc/rancher/k3s/server-token",
    "/etc/rancher/k3s/agent-token",
    "/etc/rancher/k3s/k3s.yaml",
    "/etc/rancher/node/password",
    "/var/lib/rancher/k3s/server/token",
    "/var/lib/rancher/k3s/server/agent-token",
    "/var/lib/rancher/k3s/server/node-token",
    "/var/lib/rancher/k3s/server/cred/",
    "/var/lib/rancher/k3s/server/db/",
    "/var/lib/rancher/k3s/agent/*.kubeconfig",
    "*.key",
    "/root/.ssh/",
];

/// The node collectors, in the order they run.
pub fn node_collectors(ctx: &Context) -> Vec<Collector> {
    let since = format!(
        "--since @{} --no-pager -o short-iso-precise --utc",
        ctx.since_epoch
    );
    let mut reach = String::from("for t in");
    for (name, addr) in &ctx.peers {
        for p in &ctx.ports {
            reach.push_str(&format!(" {}", shell_quote(&format!("{name},{addr},{p}"))));
        }
    }
    reach.push_str(
        "; do IFS=, read n a p <<EOT\n$t\nEOT\nif timeout 3 bash -c \"</dev/tcp/$a/$p\" 2>/dev/null; then echo \"$n $a:$p open\"; else echo \"$n $a:$p closed\"; fi; done",
    );
    let tls = "/var/lib/rancher/k3s/server/tls/*.crt /var/lib/rancher/k3s/server/tls/etcd/*.crt /var/lib/rancher/k3s/agent/*.crt";
    vec![
        Collector::new("system/os", "uname -a; cat /etc/os-release; uptime; hostnamectl 2>/dev/null || true", 10, 64 * K),
        Collector::new("system/clock", "date -u +%s.%N; timedatectl show 2>/dev/null; chronyc tracking 2>/dev/null || true", 10, 64 * K),
        Collector::new("system/resources", "df -PT; echo; df -Pi; echo; free -m; cat /proc/meminfo; for f in /proc/pressure/*; do echo \"$f: $(cat $f)\"; done 2>/dev/null; nproc", 15, 256 * K),
        Collector::new("system/disks", "lsblk -f 2>/dev/null; findmnt -l; du -sxh /var/lib/rancher/k3s/* /var/log 2>/dev/null; true", 30, 256 * K),
        Collector::new("system/processes", "ps -eo pid,ppid,user,stat,lstart,rss,args --forest", 15, 2 * M),
        Collector::new("system/failed-units", "systemctl list-units --failed --all --no-pager", 15, 256 * K),
        Collector::new("system/services", "systemctl show -p Id,ActiveState,SubState,NRestarts,ExecMainStatus,ActiveEnterTimestamp k3s.service k3s-agent.service; systemctl status k3s k3s-agent -l --no-pager; true", 15, M),
        Collector::new("system/kernel", format!("cat /proc/cmdline; lsmod; sysctl -a 2>/dev/null | grep -E '^net\\.(ipv4\\.(ip_forward|conf\\.all)|bridge|netfilter\\.nf_conntrack_(count|max))'; journalctl -k {since}"), 30, 10 * M),
        Collector::new("k3s/version", "k3s --version", 15, 64 * K),
        Collector::new("k3s/check-config", "k3s check-config; echo \"check-config exit status: $?\"", 60, 512 * K),
        Collector::new("k3s/certificates", format!("for f in {tls}; do [ -f \"$f\" ] && echo \"$f $(openssl x509 -noout -enddate -in \"$f\")\"; done; true"), 30, 256 * K),
        Collector::new("k3s/config", "for f in /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/*.yaml /etc/rancher/k3s/registries.yaml; do [ -f \"$f\" ] && { echo \"--- $f\"; cat \"$f\"; }; done; systemctl cat k3s.service k3s-agent.service --no-pager 2>/dev/null; true", 10, 512 * K),
        Collector::new("k3s/images", "ls -la /var/lib/rancher/k3s/agent/images; k3s crictl images 2>/dev/null; true", 20, 256 * K),
        Collector::new("k3s/manifests", "ls -la /var/lib/rancher/k3s/server/manifests 2>/dev/null; ls -la /var/lib/rancher/k3s/server/tls 2>/dev/null; true", 10, 256 * K),
        Collector::new("k3s/containerd", "f=/var/lib/rancher/k3s/agent/containerd/containerd.log; if [ -f $f ]; then tail -c 20971520 $f; else echo \"$f: absent\"; fi", 15, 20 * M).at("k3s/containerd.log"),
        Collector::new("etcd/health", "c=/var/lib/rancher/k3s/server/tls/etcd; for p in health v3/cluster/member/list v3/maintenance/status; do echo \"--- $p\"; curl -sS -m 5 --cacert $c/server-ca.crt --cert $c/server-client.crt --key $c/server-client.key -X POST https://127.0.0.1:2379/$p 2>&1; echo; done; echo '--- /db/info'; curl -sSk -m 5 https://127.0.0.1:6443/db/info", 30, M).only(Applies::Servers),
        Collector::new("journal/k3s", format!("journalctl -u k3s.service -u k3s-agent.service {since}"), 120, 50 * M).at("journal/k3s.log"),
        // The policy enforcer runs as a DaemonSet pod: its `/state` on the node's loopback and
        // its container logs as the kubelet writes them.
        Collector::new("enforcer/state", crate::phases::enforcer::state_script(crate::phases::enforcer::STATE_PORT), 20, M).at("enforcer/state.json"),
        Collector::new("enforcer/log", "found=0; for f in /var/log/pods/kube-system_installer-enforcer-*/*/*.log; do [ -f \"$f\" ] || continue; found=1; echo \"--- $f\"; tail -c 10485760 \"$f\"; done; [ $found = 1 ] || echo 'no enforcer pod log on this node'", 30, 20 * M).at("enforcer/log.txt"),
        Collector::new("journal/system", format!("journalctl {since}"), 120, 20 * M).at("journal/system.log"),
        Collector::new("network/addresses", "ip -d addr; ip -d link", 15, M),
        Collector::new("network/routes", "ip route show table all; ip -6 route show table all; ip rule", 15, M),
        Collector::new("network/nftables", "nft -a list ruleset", 15, 5 * M),
        Collector::new("network/sockets", "ss -tulpna", 15, 2 * M),
        Collector::new("network/cni", "ls -la /etc/cni/net.d; for f in /etc/cni/net.d/*; do [ -f \"$f\" ] && { echo \"--- $f\"; cat \"$f\"; }; done; true", 10, 512 * K),
        Collector::new("network/reachability", reach, 60, 64 * K),
        Collector::new("installer/state", "ls -laR /var/lib/installer; find /var/lib/installer -type f ! -name '*.key' ! -name '*token*' ! -name '*kubeconfig*' -size -5M -exec sh -c 'echo \"--- $1\"; cat \"$1\"' _ {} \\;", 15, 20 * M).at("installer-on-node.txt"),
        Collector::new("pod-logs", format!("find /var/log/pods -name '*.log' -newermt @{} 2>/dev/null | while read -r f; do echo \"=== $f\"; tail -c 1048576 \"$f\"; done", ctx.since_epoch), 120, 100 * M).at("pod-logs.txt").only(Applies::ApiDown),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            since_epoch: 1_700_000_000,
            peers: vec![("b".into(), "10.0.0.2".into())],
            ports: CLUSTER_PORTS.to_vec(),
        }
    }

    #[test]
    fn ids_and_paths_are_unique_and_limits_set() {
        let all = node_collectors(&ctx());
        let mut ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
        let mut paths: Vec<&str> = all.iter().map(|c| c.path.as_str()).collect();
        ids.sort();
        ids.dedup();
        paths.sort();
        paths.dedup();
        assert_eq!(ids.len(), all.len());
        assert_eq!(paths.len(), all.len());
        for c in &all {
            assert!(c.timeout.as_secs() > 0 && c.cap > 0, "{}", c.id);
            let w = c.wrapped();
            assert!(
                w.contains("timeout -k 5") && w.contains(&format!("tail -c {}", c.cap)),
                "{w}"
            );
        }
    }

    #[test]
    fn no_collector_reads_a_never_read_file() {
        for c in node_collectors(&ctx()) {
            for p in NEVER_READ {
                let p = p.trim_start_matches('*').trim_end_matches('/');
                // Listing a directory's names is allowed; naming the file in a read is not.
                for reader in ["cat ", "tail -c 20971520 ", "cat \"", "--key "] {
                    assert!(
                        !c.script.contains(&format!("{reader}{p}")),
                        "{} reads {p}",
                        c.id
                    );
                }
            }
            assert!(!c.script.contains("k3s.yaml"), "{}", c.id);
            assert!(!c.script.contains("server/token"), "{}", c.id);
        }
    }

    #[test]
    fn reachability_checks_every_peer_port() {
        let all = node_collectors(&ctx());
        let r = all.iter().find(|c| c.id == "network/reachability").unwrap();
        for p in CLUSTER_PORTS {
            assert!(
                r.script.contains(&format!("b,10.0.0.2,{p}")),
                "{}",
                r.script
            );
        }
    }
}
