//! Facts: what is observed on a host, gathered fresh on every run in one SSH round trip,
//! never written back into the plan. Phases decide what still needs doing from facts
//! (is k3s installed, with which binary, is the unit active, is this node an etcd member),
//! and preflight checks judge them.
//!
//! The gathering script is plain POSIX `sh`, tolerates missing commands (a minimal host
//! lacks `ss`, `timedatectl` or `getenforce`), and prints `key=value` lines; the parser
//! below is pure and unit-tested against outputs of real distributions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::{HostError, Remote, RemoteCommand, RemoteExt};

/// Where the gathering script measures free disk space: the k3s data directory,
/// or its nearest existing parent before the install created it.
pub const DATA_DIR: &str = "/var/lib/rancher";

/// The script run (as root) on every host. Every line it prints is `key=value`.
pub const GATHER_SCRIPT: &str = r#"
export LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
have() { command -v "$1" >/dev/null 2>&1; }
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-unknown}"
echo "os_version=${VERSION_ID:-unknown}"
echo "os_pretty=${PRETTY_NAME:-unknown}"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
awk '/^MemTotal:/ {print "mem_kb=" $2}' /proc/meminfo
d=/var/lib/rancher; while [ ! -e "$d" ]; do d=$(dirname "$d"); done
echo "disk_path=$d"
df -Pk "$d" 2>/dev/null | awk 'NR==2 {print "disk_free_kb=" $4; print "disk_total_kb=" $2}'
echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo unknown)"
echo "init=$(cat /proc/1/comm 2>/dev/null || echo unknown)"
if have getenforce; then echo "selinux=$(getenforce 2>/dev/null | tr 'A-Z' 'a-z')";
elif [ -r /sys/fs/selinux/enforce ]; then
  if [ "$(cat /sys/fs/selinux/enforce)" = 1 ]; then echo selinux=enforcing; else echo selinux=permissive; fi
else echo selinux=disabled; fi
if have systemctl; then
  for u in firewalld ufw nftables chronyd chrony systemd-timesyncd ntp ntpd k3s k3s-agent; do
    echo "unit_$u=$(systemctl is-active "$u" 2>/dev/null | head -n1)"
  done
fi
if have ufw; then ufw status 2>/dev/null | head -n1 | sed 's/^/ufw_status=/'; fi
if have nft; then echo "nft_rules=$(nft list ruleset 2>/dev/null | grep -c -E '^\s+(ip|tcp|udp|iif|oif|ct|meta|counter|drop|reject|accept)')"; fi
if have timedatectl; then echo "ntp_synced=$(timedatectl show -p NTPSynchronized --value 2>/dev/null)"; fi
echo "time_epoch=$(date +%s)"
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname)"
if [ -r /etc/machine-id ]; then echo "machine_id=$(cat /etc/machine-id)"; fi
if have ip; then
  ip -o addr show 2>/dev/null | awk '{print "addr=" $2 " " $4}'
  ip route show default 2>/dev/null | head -n1 | sed 's/^/default_route=/'
  ip -6 route show default 2>/dev/null | head -n1 | sed 's/^/default_route6=/'
  ip route show 2>/dev/null | awk '{print "route=" $1}'
fi
if have ss; then
  ss -Htlnp 2>/dev/null | awk '{n=split($4,a,":"); ad=substr($4,1,length($4)-length(a[n])-1); proc=$6; gsub(/users:\(\("/,"",proc); gsub(/".*/,"",proc); print "listen_tcp=" a[n] " " ad " " proc}'
  ss -Hulnp 2>/dev/null | awk '{n=split($4,a,":"); ad=substr($4,1,length($4)-length(a[n])-1); proc=$6; gsub(/users:\(\("/,"",proc); gsub(/".*/,"",proc); print "listen_udp=" a[n] " " ad " " proc}'
else
  echo "ss=missing"
fi
for t in python3 perl curl sha256sum; do if have $t; then echo "have_$t=yes"; else echo "have_$t=no"; fi; done
if [ -x /usr/local/bin/k3s ]; then
  echo "k3s_sha256=$(sha256sum /usr/local/bin/k3s | cut -d' ' -f1)"
  echo "k3s_version=$(/usr/local/bin/k3s --version 2>/dev/null | head -n1)"
fi
for f in /etc/rancher/k3s/config.yaml /etc/systemd/system/k3s.service /etc/systemd/system/k3s-agent.service /etc/cni/net.d/10-local.conflist; do
  if [ -f "$f" ]; then echo "file_sha256=$(sha256sum "$f" | cut -d' ' -f1) $f"; fi
done
[ -d /var/lib/rancher/k3s/server/db/etcd ] && echo "etcd_data=yes"
[ -s /etc/rancher/k3s/server-token ] && echo "server_token_file=yes"
[ -s /etc/rancher/k3s/agent-token ] && echo "agent_token_file=yes"
[ -f /etc/rancher/k3s/k3s.yaml ] && echo "kubeconfig=yes"
[ -f /var/lib/rancher/k3s/server/token ] && echo "server_token=yes"
for f in /var/lib/rancher/k3s/agent/images/*; do
  [ -f "$f" ] && echo "image_file=$(stat -c %s "$f") $f"
done
echo "gather=done"
"#;

/// Normalised CPU architecture, as k3s names its artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    Other(String),
}

impl Arch {
    fn parse(uname_m: &str) -> Arch {
        match uname_m {
            "x86_64" | "amd64" => Arch::Amd64,
            "aarch64" | "arm64" => Arch::Arm64,
            other => Arch::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Other(s) => s,
        }
    }
}

/// A host firewall that would block k3s or the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firewall {
    None,
    Firewalld,
    Ufw,
    /// An nftables ruleset with rules that nobody manages through firewalld or ufw.
    Nftables,
}

/// One address configured on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceAddr {
    pub interface: String,
    pub addr: IpNet,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub port: u16,
    /// The owning process name, when visible.
    pub process: Option<String>,
    /// Whether it listens only on a loopback address (unreachable from other hosts).
    pub loopback_only: bool,
}

/// Everything observed on one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    pub os_id: String,
    pub os_version: String,
    pub os_pretty: String,
    pub kernel: String,
    pub arch: Arch,
    pub cpus: u32,
    pub mem_bytes: u64,
    /// The path whose filesystem was measured (the data dir or its nearest parent).
    pub disk_path: String,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    /// `cgroup2fs` on a cgroup v2 host.
    pub cgroup_fs: String,
    /// The name of PID 1 (`systemd` on a supported host).
    pub init: String,
    /// `enforcing`, `permissive` or `disabled`.
    pub selinux: String,
    pub firewall: Firewall,
    /// Some time synchronisation daemon is active.
    pub time_sync_active: bool,
    /// `timedatectl` reports the clock synchronised (None when it cannot tell).
    pub ntp_synced: Option<bool>,
    /// The host's clock when the facts were printed (seconds since the epoch).
    pub time_epoch: Option<i64>,
    pub hostname: String,
    pub machine_id: Option<String>,
    pub addresses: Vec<InterfaceAddr>,
    /// The IPv4 default route line, e.g. `default via 10.0.0.1 dev eth0`.
    pub default_route: Option<String>,
    pub default_route6: Option<String>,
    /// Destinations of the main routing table (`default` excluded).
    pub routes: Vec<IpNet>,
    pub tcp_listeners: Vec<Listener>,
    pub udp_listeners: Vec<Listener>,
    /// `ss` was missing, so the listeners are unknown.
    pub listeners_unknown: bool,
    pub have_python3: bool,
    pub have_perl: bool,
    pub have_curl: bool,
    /// SHA-256 of /usr/local/bin/k3s, if present.
    pub k3s_sha256: Option<String>,
    /// First line of `k3s --version`, if present.
    pub k3s_version: Option<String>,
    /// `systemctl is-active` of k3s and k3s-agent.
    pub k3s_unit: Option<String>,
    pub k3s_agent_unit: Option<String>,
    /// SHA-256 of files the installer writes, by path.
    pub file_sha256: BTreeMap<String, String>,
    /// Size in bytes of each file in the airgap images directory, by path.
    pub image_files: BTreeMap<String, String>,
    /// This host has an embedded etcd data directory (it is or was a server).
    pub etcd_data: bool,
    /// The k3s server token file exists.
    pub server_token: bool,
    /// The installer's token files exist (`/etc/rancher/k3s/{server,agent}-token`).
    pub server_token_file: bool,
    pub agent_token_file: bool,
    /// k3s wrote its admin kubeconfig (`/etc/rancher/k3s/k3s.yaml`).
    pub kubeconfig: bool,
}

impl Facts {
    /// Whether `port` has a TCP listener.
    pub fn tcp_port_in_use(&self, port: u16) -> Option<&Listener> {
        self.tcp_listeners.iter().find(|l| l.port == port)
    }

    /// Every IP address of the host except loopback and link-local.
    pub fn host_ips(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .map(|a| a.addr.addr())
            .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
            .collect()
    }

    /// Whether k3s (server or agent) is running.
    pub fn k3s_running(&self) -> bool {
        self.k3s_unit.as_deref() == Some("active")
            || self.k3s_agent_unit.as_deref() == Some("active")
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Why facts could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FactsError {
    #[error(
        "the facts script did not finish (no `gather=done` line); the host may lack /bin/sh or a basic command"
    )]
    Incomplete,
    #[error("{key}: cannot read {value:?}")]
    Bad { key: String, value: String },
}

/// Runs [`GATHER_SCRIPT`] on `host` (as root) and parses its output.
pub async fn gather(host: &dyn Remote) -> Result<Facts, HostError> {
    let out = host
        .run(
            RemoteCommand::new(GATHER_SCRIPT)
                .sudo()
                .timeout(Duration::from_secs(60)),
        )
        .await?;
    parse(&out.stdout_str()).map_err(|e| HostError::Other {
        host: host.name().to_owned(),
        message: format!("gathering facts: {e}"),
    })
}

/// Parses the output of [`GATHER_SCRIPT`].
pub fn parse(output: &str) -> Result<Facts, FactsError> {
    let mut single: BTreeMap<&str, &str> = BTreeMap::new();
    let mut multi: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in output.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k {
            "addr" | "route" | "listen_tcp" | "listen_udp" | "file_sha256" | "image_file" => {
                multi.entry(k).or_default().push(v)
            }
            _ => {
                single.insert(k, v);
            }
        }
    }
    if single.get("gather") != Some(&"done") {
        return Err(FactsError::Incomplete);
    }
    let get = |k: &str| single.get(k).copied().unwrap_or("").to_owned();
    let num = |k: &str| -> Result<u64, FactsError> {
        let v = single.get(k).copied().unwrap_or("");
        v.parse::<u64>().map_err(|_| FactsError::Bad {
            key: k.to_owned(),
            value: v.to_owned(),
        })
    };
    let unit = |u: &str| {
        single
            .get(format!("unit_{u}").as_str())
            .map(|s| s.to_string())
    };
    let active = |u: &str| unit(u).as_deref() == Some("active");

    let firewall = if active("firewalld") {
        Firewall::Firewalld
    } else if active("ufw")
        && single
            .get("ufw_status")
            .is_some_and(|s| s.contains("Status: active"))
    {
        Firewall::Ufw
    } else if single
        .get("nft_rules")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        && active("nftables")
    {
        Firewall::Nftables
    } else {
        Firewall::None
    };

    let addresses = multi
        .get("addr")
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let (iface, cidr) = l.split_once(' ')?;
            Some(InterfaceAddr {
                interface: iface.trim_end_matches(':').to_owned(),
                addr: cidr.parse().ok()?,
            })
        })
        .collect();
    let routes = multi
        .get("route")
        .into_iter()
        .flatten()
        .filter_map(|r| {
            r.parse::<IpNet>()
                .ok()
                .or_else(|| r.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect();
    let listeners = |key: &str| -> Vec<Listener> {
        let mut v: Vec<Listener> = multi
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|l| {
                // `<port> <address> <process>`; the process is empty when not visible.
                let mut it = l.splitn(3, ' ');
                let port = it.next()?.parse().ok()?;
                let addr = it.next().unwrap_or("").trim_matches(['[', ']']);
                let proc = it.next().unwrap_or("").trim();
                let loopback = addr.starts_with("127.") || addr == "::1";
                Some(Listener {
                    port,
                    process: (!proc.is_empty()).then(|| proc.to_owned()),
                    loopback_only: loopback,
                })
            })
            .collect();
        v.sort_by_key(|l| l.port);
        // One port may have several sockets (IPv4 and IPv6, loopback and the node IP):
        // it is loopback-only when every one of them is.
        let mut merged: Vec<Listener> = Vec::new();
        for l in v {
            match merged.last_mut() {
                Some(m) if m.port == l.port => m.loopback_only &= l.loopback_only,
                _ => merged.push(l),
            }
        }
        merged
    };
    let sha_map = |key: &str| -> BTreeMap<String, String> {
        multi
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let (sha, path) = l.split_once(' ')?;
                Some((path.to_owned(), sha.to_owned()))
            })
            .collect()
    };
    let nonempty = |k: &str| {
        single
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    };

    Ok(Facts {
        os_id: get("os_id"),
        os_version: get("os_version"),
        os_pretty: get("os_pretty").trim_matches('"').to_owned(),
        kernel: get("kernel"),
        arch: Arch::parse(&get("arch")),
        cpus: num("cpus")? as u32,
        mem_bytes: num("mem_kb")? * 1024,
        disk_path: get("disk_path"),
        disk_free_bytes: num("disk_free_kb")? * 1024,
        disk_total_bytes: num("disk_total_kb")? * 1024,
        cgroup_fs: get("cgroup_fs"),
        init: get("init"),
        selinux: get("selinux"),
        firewall,
        time_sync_active: ["chronyd", "chrony", "systemd-timesyncd", "ntp", "ntpd"]
            .iter()
            .any(|u| active(u)),
        ntp_synced: match single.get("ntp_synced") {
            Some(&"yes") => Some(true),
            Some(&"no") => Some(false),
            _ => None,
        },
        time_epoch: single.get("time_epoch").and_then(|v| v.parse().ok()),
        hostname: get("hostname"),
        machine_id: nonempty("machine_id"),
        addresses,
        default_route: nonempty("default_route"),
        default_route6: nonempty("default_route6"),
        routes,
        tcp_listeners: listeners("listen_tcp"),
        udp_listeners: listeners("listen_udp"),
        listeners_unknown: single.get("ss") == Some(&"missing"),
        have_python3: single.get("have_python3") == Some(&"yes"),
        have_perl: single.get("have_perl") == Some(&"yes"),
        have_curl: single.get("have_curl") == Some(&"yes"),
        k3s_sha256: nonempty("k3s_sha256"),
        k3s_version: nonempty("k3s_version"),
        k3s_unit: unit("k3s"),
        k3s_agent_unit: unit("k3s-agent"),
        file_sha256: sha_map("file_sha256"),
        image_files: sha_map("image_file"),
        etcd_data: single.get("etcd_data") == Some(&"yes"),
        server_token: single.get("server_token") == Some(&"yes"),
        server_token_file: single.get("server_token_file") == Some(&"yes"),
        agent_token_file: single.get("agent_token_file") == Some(&"yes"),
        kubeconfig: single.get("kubeconfig") == Some(&"yes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN12: &str = r#"os_id=debian
os_version=12
os_pretty=Debian GNU/Linux 12 (bookworm)
kernel=6.1.0-18-amd64
arch=x86_64
cpus=4
mem_kb=8130000
disk_path=/var/lib
disk_free_kb=51200000
disk_total_kb=102400000
cgroup_fs=cgroup2fs
init=systemd
selinux=disabled
unit_firewalld=inactive
unit_ufw=inactive
unit_nftables=inactive
unit_chronyd=inactive
unit_chrony=active
unit_systemd-timesyncd=inactive
unit_ntp=inactive
unit_ntpd=inactive
unit_k3s=inactive
unit_k3s-agent=inactive
nft_rules=0
ntp_synced=yes
time_epoch=1790000000
hostname=srv1
machine_id=0123456789abcdef0123456789abcdef
addr=lo 127.0.0.1/8
addr=eth0 10.0.0.11/24
addr=eth0 fe80::1/64
addr=eth1 192.168.5.11/24
default_route=default via 10.0.0.1 dev eth0 proto static
route=default
route=10.0.0.0/24
route=192.168.5.0/24
listen_tcp=22 0.0.0.0 sshd
listen_tcp=22 [::] sshd
listen_tcp=6443 * k3s-server
listen_tcp=2379 127.0.0.1 k3s-server
listen_tcp=2379 10.0.0.11 k3s-server
listen_tcp=10248 127.0.0.1 k3s-server
listen_udp=323 127.0.0.1 chronyd
have_python3=yes
have_perl=yes
have_curl=yes
have_sha256sum=yes
file_sha256=abc /etc/rancher/k3s/config.yaml
gather=done
"#;

    #[test]
    fn parses_a_debian_host() {
        let f = parse(DEBIAN12).unwrap();
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.arch, Arch::Amd64);
        assert_eq!(f.cpus, 4);
        assert_eq!(f.mem_bytes, 8_130_000 * 1024);
        assert_eq!(f.disk_free_bytes, 51_200_000 * 1024);
        assert_eq!(f.cgroup_fs, "cgroup2fs");
        assert_eq!(f.firewall, Firewall::None);
        assert!(f.time_sync_active);
        assert_eq!(f.ntp_synced, Some(true));
        assert_eq!(f.hostname, "srv1");
        assert_eq!(f.addresses.len(), 4);
        assert_eq!(
            f.host_ips(),
            vec![
                "10.0.0.11".parse::<IpAddr>().unwrap(),
                "192.168.5.11".parse().unwrap()
            ]
        );
        assert_eq!(f.routes.len(), 2, "default is not a destination");
        assert_eq!(f.tcp_listeners.len(), 4, "duplicate listeners collapse");
        assert!(!f.tcp_port_in_use(2379).unwrap().loopback_only);
        assert!(f.tcp_port_in_use(10248).unwrap().loopback_only);
        assert!(!f.tcp_port_in_use(22).unwrap().loopback_only);
        assert_eq!(
            f.tcp_port_in_use(6443).and_then(|l| l.process.as_deref()),
            Some("k3s-server")
        );
        assert!(f.tcp_port_in_use(10250).is_none());
        assert_eq!(f.k3s_sha256, None);
        assert!(!f.k3s_running());
        assert_eq!(
            f.file_sha256
                .get("/etc/rancher/k3s/config.yaml")
                .map(String::as_str),
            Some("abc")
        );
    }

    #[test]
    fn firewalld_and_missing_tools_are_recognised() {
        let text = DEBIAN12
            .replace("unit_firewalld=inactive", "unit_firewalld=active")
            .replace("listen_tcp=6443 * k3s-server\n", "")
            .replace("ntp_synced=yes", "ntp_synced=no");
        let f = parse(&text).unwrap();
        assert_eq!(f.firewall, Firewall::Firewalld);
        assert_eq!(f.ntp_synced, Some(false));
    }

    #[test]
    fn incomplete_output_is_an_error() {
        assert_eq!(parse("os_id=debian\n"), Err(FactsError::Incomplete));
        let bad = DEBIAN12.replace("cpus=4", "cpus=four");
        assert!(matches!(parse(&bad), Err(FactsError::Bad { key, .. }) if key == "cpus"));
    }

    #[test]
    fn the_script_is_valid_sh() {
        // `sh -n` parses without running: catches a quoting mistake before any host does.
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(GATHER_SCRIPT)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn the_script_runs_on_this_machine_and_parses() {
        // Not root-only: without root some values are missing, but the output must parse.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(GATHER_SCRIPT)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let f = parse(&text).unwrap();
        assert!(f.cpus >= 1);
        assert!(f.mem_bytes > 0);
        assert!(!f.hostname.is_empty());
    }
}
