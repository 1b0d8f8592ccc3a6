//! Preflight: a named list of checks over the facts of every host, each blocking or a
//! warning, each failure with the host, what was found, what is needed and a fix hint.
//! The checks here are pure functions of facts and the plan (unit-tested without hosts);
//! the cross-node reachability check, which needs temporary listeners on the hosts,
//! lives in [`super::reachability`].
//!
//! Sources for the numbers: k3s requirements (docs/installation/requirements.md: servers
//! 2 CPU / 2 GB, agents 1 CPU / 512 MB; "Inbound rules" and "Local ports"), the kubelet's
//! refusal of cgroup v1 from Kubernetes 1.35 (KEP-5573), and k0sctl's clock-skew check
//! (phase/validate_hosts.go, 30 s).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::host::facts::{Arch, Facts, Firewall};
use crate::k3s::ports;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Blocking,
}

/// One check that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id of the check (`ports-free`, `cgroup-v2`, ...).
    pub check: &'static str,
    /// The host, or None for a check about the whole cluster.
    pub host: Option<String>,
    pub severity: Severity,
    pub found: String,
    pub needed: String,
    pub hint: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Blocking => "blocking",
            Severity::Warning => "warning",
        };
        write!(f, "[{sev}] {}", self.check)?;
        if let Some(h) = &self.host {
            write!(f, " on {h}")?;
        }
        write!(
            f,
            ": found {}; needed {}\n    hint: {}",
            self.found, self.needed, self.hint
        )
    }
}

/// Every check, by id, with what it verifies (for docs and `--help`).
pub const CHECKS: &[(&str, &str)] = &[
    (
        "os-supported",
        "a Linux distribution the installer supports",
    ),
    ("arch", "a CPU architecture the installer carries k3s for"),
    ("init-systemd", "systemd as the init system"),
    (
        "cpu",
        "servers 2 CPUs, agents 1 CPU (more if the application asks)",
    ),
    (
        "memory",
        "servers 2 GiB, agents 512 MiB (more if the application asks)",
    ),
    (
        "disk",
        "free space under /var/lib/rancher for the payload and the data",
    ),
    (
        "cgroup-v2",
        "the unified cgroup v2 hierarchy (the kubelet refuses v1)",
    ),
    (
        "selinux",
        "SELinux not enforcing (the k3s SELinux policy is not carried)",
    ),
    (
        "node-name",
        "a node name Kubernetes accepts (the hostname, unless nodeName is set)",
    ),
    (
        "unique-names",
        "unique node names (hostnames, unless nodeName is set)",
    ),
    ("unique-machine-id", "unique /etc/machine-id"),
    (
        "default-route",
        "an IPv4 default route (k3s needs one, even airgapped)",
    ),
    ("node-ip", "the nodeIp override is an address of the host"),
    (
        "cidr-overlap",
        "cluster and service CIDRs not routed on the host and containing no host address",
    ),
    (
        "ports-free",
        "the TCP and UDP ports k3s, the cluster services and the application hold are free",
    ),
    ("time-sync", "a running time synchronisation daemon"),
    ("clock-skew", "host clocks within 30 s of the workstation"),
    (
        "firewall",
        "no active host firewall, or one the installer opens",
    ),
    (
        "existing-k3s",
        "k3s not installed, or installed by this installer",
    ),
    (
        "reachability",
        "every node reaches every other node on the cluster's ports",
    ),
];

/// What a host is in the plan, plus its facts.
#[derive(Debug, Clone)]
pub struct HostInput<'a> {
    /// The display name (address as written in the answer file).
    pub name: String,
    pub is_server: bool,
    /// The node name, if set in the answer file (else the hostname is used).
    pub node_name: Option<String>,
    pub node_ip: Option<IpAddr>,
    pub facts: &'a Facts,
    /// The workstation's clock (epoch seconds) when it asked this host for its facts and
    /// when the answer came back; the host read its clock in between.
    pub answered_between: Option<(i64, i64)>,
}

impl HostInput<'_> {
    pub fn effective_node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| self.facts.hostname.to_lowercase())
    }
}

/// Options from the answer file that relax what a host must pass.
#[derive(Debug, Clone, Default)]
pub struct Relaxations {
    /// Run the kubelet on cgroup v1 (`kubelet-arg: fail-cgroupv1=false`).
    pub allow_cgroup_v1: bool,
    /// Do not touch the host firewall: an active one is blocking, with the commands to run.
    pub leave_firewall: bool,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub hosts: Vec<HostInput<'a>>,
    pub cluster_cidr: IpNet,
    pub service_cidr: IpNet,
    /// Ports the application listens on, on every node: (name, port).
    pub app_ports: Vec<(String, u16)>,
    /// UDP ports the application and the cluster services hold on every node.
    pub app_udp_ports: Vec<(String, u16)>,
    /// Extra CPU and memory the application needs per node.
    pub app_cpus: u32,
    pub app_mem_bytes: u64,
    /// Bytes the upload phase will write under /var/lib/rancher on each host.
    pub payload_bytes: u64,
    /// Architectures for which the installer carries k3s.
    pub arches: Vec<Arch>,
    /// SHA-256 of the k3s binary the installer carries (to recognise its own install).
    pub k3s_sha256: Option<String>,
    /// The workstation's clock when the facts came back (seconds since the epoch).
    pub workstation_epoch: i64,
    pub relax: Relaxations,
}

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// Process names that mean "this port is held by k3s itself" (a rerun on an installed node).
fn is_k3s_process(p: Option<&str>) -> bool {
    matches!(p, Some("k3s" | "k3s-server" | "k3s-agent" | "containerd"))
        || p.is_some_and(|p| p.starts_with("k3s"))
}

const SUPPORTED_OS: &[&str] = &[
    "debian",
    "ubuntu",
    "rhel",
    "rocky",
    "almalinux",
    "centos",
    "ol",
    "sles",
    "opensuse-leap",
    "amzn",
    "fedora",
];

/// Runs every fact-based check and returns the findings (empty when all pass).
pub fn check(input: &Input) -> Vec<Finding> {
    let mut out = Vec::new();
    for h in &input.hosts {
        check_host(input, h, &mut out);
    }
    check_unique(input, &mut out);
    out
}

fn finding(
    check: &'static str,
    host: &HostInput,
    severity: Severity,
    found: impl Into<String>,
    needed: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check,
        host: Some(host.name.clone()),
        severity,
        found: found.into(),
        needed: needed.into(),
        hint: hint.into(),
    }
}

fn gib(b: u64) -> String {
    if b >= GIB {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    } else {
        format!("{} MiB", b / MIB)
    }
}

/// A node name close to `name` that Kubernetes accepts.
fn suggest_node_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '.').to_owned();
    if s.is_empty() { "node-1".into() } else { s }
}

/// Why Kubernetes refuses `name` as a node name (a DNS-1123 subdomain), if it does.
pub fn node_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > 253 {
        return Some(format!(
            "it is {} characters long (at most 253)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!("{c:?} is not allowed (only a-z, 0-9, '-' and '.')"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return Some("each part between dots must start and end with a letter or digit".into());
        }
    }
    None
}

fn check_host(input: &Input, h: &HostInput, out: &mut Vec<Finding>) {
    use Severity::*;
    let f = h.facts;
    let node_name = h.effective_node_name();
    if let Some(why) = node_name_problem(&node_name) {
        let source = if h.node_name.is_some() {
            format!("node name {node_name:?}")
        } else {
            format!("hostname {:?} (node name {node_name:?})", f.hostname)
        };
        out.push(finding(
            "node-name",
            h,
            Blocking,
            format!("{source}, which Kubernetes refuses: {why}"),
            "a node name of lowercase letters, digits, '-' and '.'",
            format!(
                "set hosts[].nodeName for {} in the answer file (for example {:?}), or rename the host",
                h.name,
                suggest_node_name(&node_name)
            ),
        ));
    }
    if !SUPPORTED_OS.contains(&f.os_id.as_str()) {
        out.push(finding(
            "os-supported",
            h,
            Warning,
            format!("{} ({})", f.os_pretty, f.os_id),
            format!("one of {}", SUPPORTED_OS.join(", ")),
            "the install may still work; report the outcome to the vendor",
        ));
    }
    if input.arches.is_empty() {
        out.push(finding("arch", h, Blocking, "this installer carries no k3s binary (a development build)",
            "an installer built with its artifacts, or --assets DIR",
            "use the release build (it embeds k3s and the images), or pass --assets DIR with the artifacts of assets/assets.lock"));
    } else if !input.arches.contains(&f.arch) {
        out.push(finding(
            "arch",
            h,
            Blocking,
            f.arch.as_str().to_owned(),
            input
                .arches
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            "use a host of a supported architecture",
        ));
    }
    if f.init != "systemd" {
        out.push(finding(
            "init-systemd",
            h,
            Blocking,
            format!("PID 1 is {}", f.init),
            "systemd",
            "k3s runs as a systemd service; use a host booted with systemd",
        ));
    }
    let (min_cpu, min_mem) = if h.is_server {
        (2, 2 * GIB)
    } else {
        (1, 512 * MIB)
    };
    let need_cpu = min_cpu + input.app_cpus;
    let need_mem = min_mem + input.app_mem_bytes;
    if f.cpus < need_cpu {
        out.push(finding(
            "cpu",
            h,
            Blocking,
            format!("{} CPU", f.cpus),
            format!("at least {need_cpu} CPU for a {}", role(h)),
            "give the host more CPUs, or make it an agent (role: agent) if it is a server",
        ));
    }
    if f.mem_bytes < need_mem {
        out.push(finding(
            "memory",
            h,
            Blocking,
            gib(f.mem_bytes),
            format!("at least {} for a {}", gib(need_mem), role(h)),
            "give the host more memory",
        ));
    }
    // The payload lands once in the images directory and is imported once by containerd;
    // etcd and logs need room beyond it.
    let need_disk = 2 * input.payload_bytes + GIB;
    if f.disk_free_bytes < need_disk {
        out.push(finding(
            "disk",
            h,
            Blocking,
            format!("{} free on {}", gib(f.disk_free_bytes), f.disk_path),
            format!("at least {} free under /var/lib/rancher", gib(need_disk)),
            format!(
                "free space on {} or mount a larger disk at /var/lib/rancher",
                f.disk_path
            ),
        ));
    }
    if f.cgroup_fs != "cgroup2fs" {
        if input.relax.allow_cgroup_v1 {
            out.push(finding("cgroup-v2", h, Warning, format!("/sys/fs/cgroup is {}", f.cgroup_fs), "cgroup2fs",
                "allowed by the answer file (the kubelet runs with fail-cgroupv1=false); plan a move to cgroup v2"));
        } else {
            out.push(finding("cgroup-v2", h, Blocking, format!("/sys/fs/cgroup is {}", f.cgroup_fs), "cgroup2fs (the unified hierarchy)",
                "boot the host with systemd.unified_cgroup_hierarchy=1 (RHEL 8, Ubuntu 20.04), or set spec.k3s.allowCgroupV1: true in the answer file"));
        }
    }
    if f.selinux == "enforcing" {
        out.push(finding("selinux", h, Blocking, "SELinux enforcing", "permissive or disabled",
            "the k3s SELinux policy (k3s-selinux) is not carried: `setenforce 0` and set SELINUX=permissive in /etc/selinux/config"));
    }
    if f.default_route.is_none() {
        out.push(finding("default-route", h, Blocking, "no IPv4 default route", "a default route",
            "k3s needs a default route even without internet access: `ip route add default via <gateway>` (or a dummy interface), made persistent in the network configuration"));
    }
    if let Some(ip) = h.node_ip
        && !f.host_ips().contains(&ip)
    {
        out.push(finding(
            "node-ip",
            h,
            Blocking,
            format!(
                "{ip} is not an address of this host (it has {})",
                list_ips(&f.host_ips())
            ),
            "nodeIp set to one of the host's addresses",
            "correct hosts[].nodeIp in the answer file",
        ));
    }
    for (what, cidr) in [
        ("cluster", input.cluster_cidr),
        ("service", input.service_cidr),
    ] {
        if let Some(r) = f
            .routes
            .iter()
            .find(|r| r.contains(&cidr.network()) || cidr.contains(&r.network()))
        {
            out.push(finding(
                "cidr-overlap",
                h,
                Blocking,
                format!("the {what} CIDR {cidr} overlaps the route {r}"),
                format!("a {what} CIDR not routed on any host"),
                format!("choose another spec.network.{what}Cidr in the answer file"),
            ));
        } else if let Some(ip) = f.host_ips().into_iter().find(|ip| cidr.contains(ip)) {
            out.push(finding(
                "cidr-overlap",
                h,
                Blocking,
                format!("the {what} CIDR {cidr} contains the host address {ip}"),
                format!("a {what} CIDR that contains no host address"),
                format!("choose another spec.network.{what}Cidr in the answer file"),
            ));
        }
    }
    check_ports(input, h, out);
    if !f.time_sync_active && f.ntp_synced != Some(true) {
        out.push(finding("time-sync", h, Warning, "no chrony, systemd-timesyncd or ntpd running", "a time synchronisation daemon",
            "install and enable chrony or systemd-timesyncd: etcd and fresh certificates need clocks within a second or two"));
    }
    if let Some(t) = f.time_epoch {
        // The host read its clock while the workstation waited for its answer: compare with
        // that window (the round trip accounted for), not with a time taken after the
        // slowest host answered.
        let (from, to) = h
            .answered_between
            .unwrap_or((input.workstation_epoch, input.workstation_epoch));
        let skew = if t < from {
            from - t
        } else if t > to {
            t - to
        } else {
            0
        };
        if skew > 30 {
            out.push(finding(
                "clock-skew",
                h,
                Blocking,
                format!("the clock is {skew} s away from this workstation's"),
                "at most 30 s",
                "synchronise the host's clock (chrony/timesyncd) and rerun",
            ));
        }
    }
    match f.firewall {
        Firewall::None => {}
        fw => {
            let cmd = firewall_commands(fw, h.is_server, &input.app_ports);
            if input.relax.leave_firewall {
                out.push(finding(
                    "firewall",
                    h,
                    Blocking,
                    format!("{fw:?} is active"),
                    "the cluster's ports open",
                    format!("the answer file says not to touch the firewall; run: {cmd}"),
                ));
            } else {
                out.push(finding(
                    "firewall",
                    h,
                    Warning,
                    format!("{fw:?} is active"),
                    "the cluster's ports open",
                    "the installer will open them (recorded for uninstall)",
                ));
            }
        }
    }
    if let (Some(have), Some(ours)) = (&f.k3s_sha256, &input.k3s_sha256)
        && have != ours
    {
        out.push(finding(
            "existing-k3s",
            h,
            Warning,
            format!(
                "a different k3s binary is installed ({})",
                f.k3s_version.as_deref().unwrap_or("unknown version")
            ),
            "the k3s this installer carries",
            "the install will replace the binary; use `installer upgrade` for a running cluster",
        ));
    }
}

fn role(h: &HostInput) -> &'static str {
    if h.is_server { "server" } else { "agent" }
}

fn list_ips(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none".into();
    }
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ports a host must have free, with what needs them.
pub fn required_ports(is_server: bool, app_ports: &[(String, u16)]) -> Vec<(u16, String)> {
    let mut ports: Vec<(u16, String)> = ports::held(is_server)
        .into_iter()
        .map(|(p, w)| (p, w.to_string()))
        .collect();
    ports.extend(
        app_ports
            .iter()
            .map(|(n, p)| (*p, format!("application: {n}"))),
    );
    ports.sort();
    ports
}

fn check_ports(input: &Input, h: &HostInput, out: &mut Vec<Finding>) {
    let f = h.facts;
    if f.listeners_unknown {
        out.push(finding(
            "ports-free",
            h,
            Severity::Warning,
            "`ss` is not installed",
            "a list of listening ports",
            "install iproute2 so that port conflicts can be detected before the install",
        ));
        return;
    }
    let k3s_here = f.k3s_running();
    for (port, what) in required_ports(h.is_server, &input.app_ports) {
        let Some(l) = f.tcp_port_in_use(port) else {
            continue;
        };
        let is_app = what.starts_with("application");
        // A rerun on an installed node: k3s holds its own ports, and the application its own.
        if is_k3s_process(l.process.as_deref()) || (k3s_here && is_app) {
            continue;
        }
        let by = l
            .process
            .clone()
            .unwrap_or_else(|| "an unknown process".into());
        out.push(finding("ports-free", h, Severity::Blocking, format!("TCP port {port} is in use by {by}"),
            format!("port {port} free ({what})"),
            format!("stop or move the service listening on {port} (`ss -tlnp 'sport = :{port}'` shows it){}",
                if is_app { ", or choose another port in the answer file's application values" } else { "" })));
    }
    // k3s itself holds no UDP port with `flannel-backend: none`; CoreDNS and the
    // application may.
    for (owner, port) in &input.app_udp_ports {
        let Some(l) = f.udp_listeners.iter().find(|l| l.port == *port) else {
            continue;
        };
        if is_k3s_process(l.process.as_deref()) || k3s_here {
            continue;
        }
        let by = l
            .process
            .clone()
            .unwrap_or_else(|| "an unknown process".into());
        out.push(finding(
            "ports-free",
            h,
            Severity::Blocking,
            format!("UDP port {port} is in use by {by}"),
            format!("UDP port {port} free ({owner})"),
            format!("stop or move the service bound to UDP {port} (`ss -ulnp 'sport = :{port}'` shows it)"),
        ));
    }
}

fn check_unique(input: &Input, out: &mut Vec<Finding>) {
    let mut names: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut ids: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for h in &input.hosts {
        names
            .entry(h.effective_node_name())
            .or_default()
            .push(&h.name);
        if let Some(id) = &h.facts.machine_id {
            ids.entry(id.as_str()).or_default().push(&h.name);
        }
    }
    for (name, hosts) in names.into_iter().filter(|(_, v)| v.len() > 1) {
        out.push(Finding {
            check: "unique-names",
            host: Some(hosts.join(", ")),
            severity: Severity::Blocking,
            found: format!("{} hosts would register as node {name:?}", hosts.len()),
            needed: "a unique node name per host".into(),
            hint: "give each host its own hostname (`hostnamectl set-hostname`), or set hosts[].nodeName in the answer file; k3s rejects a duplicate (\"Node password rejected, duplicate hostname\")".into(),
        });
    }
    for (id, hosts) in ids.into_iter().filter(|(_, v)| v.len() > 1) {
        out.push(Finding {
            check: "unique-machine-id",
            host: Some(hosts.join(", ")),
            severity: Severity::Warning,
            found: format!("{} hosts share /etc/machine-id {}…", hosts.len(), &id[..id.len().min(8)]),
            needed: "a unique machine id per host".into(),
            hint: "the hosts were cloned from one image: run `rm /etc/machine-id && systemd-machine-id-setup` on each".into(),
        });
    }
}

/// The commands that open the cluster's ports in a host firewall.
pub fn firewall_commands(fw: Firewall, is_server: bool, app_ports: &[(String, u16)]) -> String {
    let tcp = ports::firewall_openings(is_server, app_ports);
    match fw {
        Firewall::Firewalld => {
            let mut s: Vec<String> = tcp
                .iter()
                .map(|p| format!("firewall-cmd --permanent --add-port={p}/tcp"))
                .collect();
            s.push("firewall-cmd --permanent --zone=trusted --add-source=<cluster CIDR> --add-source=<service CIDR>".into());
            s.push("firewall-cmd --reload".into());
            s.join(" && ")
        }
        Firewall::Ufw => tcp
            .iter()
            .map(|p| format!("ufw allow {}/tcp", p.replace('-', ":")))
            .collect::<Vec<_>>()
            .join(" && "),
        Firewall::Nftables => format!(
            "add accept rules for TCP ports {} to your nftables input chain",
            tcp.join(", ")
        ),
        Firewall::None => String::new(),
    }
}

/// Whether any finding blocks the install.
pub fn blocking(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Blocking)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::{InterfaceAddr, Listener};

    fn facts(name: &str, ip: &str) -> Facts {
        Facts {
            os_id: "debian".into(),
            os_version: "12".into(),
            os_pretty: "Debian GNU/Linux 12".into(),
            kernel: "6.1".into(),
            arch: Arch::Amd64,
            cpus: 4,
            mem_bytes: 8 * GIB,
            disk_path: "/var/lib".into(),
            disk_free_bytes: 50 * GIB,
            disk_total_bytes: 100 * GIB,
            cgroup_fs: "cgroup2fs".into(),
            init: "systemd".into(),
            selinux: "disabled".into(),
            firewall: Firewall::None,
            time_sync_active: true,
            ntp_synced: Some(true),
            time_epoch: Some(1_000_000),
            hostname: name.into(),
            machine_id: Some(format!("{name}-machine-id")),
            addresses: vec![InterfaceAddr {
                interface: "eth0".into(),
                addr: format!("{ip}/24").parse().unwrap(),
            }],
            default_route: Some("default via 10.0.0.1 dev eth0".into()),
            default_route6: None,
            routes: vec!["10.0.0.0/24".parse().unwrap()],
            tcp_listeners: vec![Listener {
                port: 22,
                process: Some("sshd".into()),
                loopback_only: false,
            }],
            udp_listeners: vec![],
            listeners_unknown: false,
            have_python3: true,
            have_perl: true,
            have_curl: true,
            k3s_sha256: None,
            k3s_version: None,
            k3s_unit: Some("inactive".into()),
            k3s_agent_unit: Some("inactive".into()),
            file_sha256: Default::default(),
            image_files: Default::default(),
            etcd_data: false,
            server_token: false,
            server_token_file: false,
            agent_token_file: false,
            kubeconfig: false,
        }
    }

    fn input(f: &[Facts]) -> Input<'_> {
        Input {
            hosts: f
                .iter()
                .enumerate()
                .map(|(i, f)| HostInput {
                    name: format!("10.0.0.{}", 11 + i),
                    is_server: i < 3,
                    node_name: None,
                    node_ip: None,
                    facts: f,
                    answered_between: None,
                })
                .collect(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
            app_ports: vec![("gateway".into(), 8443)],
            app_udp_ports: vec![("coredns".into(), 1053)],
            app_cpus: 0,
            app_mem_bytes: 0,
            payload_bytes: 300 * MIB,
            arches: vec![Arch::Amd64],
            k3s_sha256: Some("abc".into()),
            workstation_epoch: 1_000_000,
            relax: Relaxations::default(),
        }
    }

    fn healthy() -> Vec<Facts> {
        (1..=3)
            .map(|i| facts(&format!("srv{i}"), &format!("10.0.0.{}", 10 + i)))
            .collect()
    }

    fn ids(fs: &[Finding]) -> Vec<(&str, Severity)> {
        fs.iter().map(|f| (f.check, f.severity)).collect()
    }

    #[test]
    fn healthy_hosts_pass() {
        let f = healthy();
        assert_eq!(check(&input(&f)), vec![]);
    }

    #[test]
    fn a_taken_port_is_blocking_with_the_process_named() {
        let mut f = healthy();
        f[1].tcp_listeners.push(Listener {
            port: 8443,
            process: Some("nginx".into()),
            loopback_only: false,
        });
        f[2].tcp_listeners.push(Listener {
            port: 6443,
            process: Some("k3s-server".into()),
            loopback_only: false,
        });
        let out = check(&input(&f));
        assert_eq!(ids(&out), vec![("ports-free", Severity::Blocking)]);
        assert_eq!(out[0].host.as_deref(), Some("10.0.0.12"));
        assert!(
            out[0].found.contains("8443 is in use by nginx"),
            "{}",
            out[0]
        );
        assert!(out[0].hint.contains("application values"));
    }

    #[test]
    fn a_udp_port_coredns_needs_held_on_a_node_is_blocking_with_host_port_and_protocol() {
        let mut f = healthy();
        f[1].udp_listeners.push(Listener {
            port: 1053,
            process: Some("dnsmasq".into()),
            loopback_only: false,
        });
        let out = check(&input(&f));
        assert_eq!(ids(&out), vec![("ports-free", Severity::Blocking)]);
        assert_eq!(out[0].host.as_deref(), Some("10.0.0.12"));
        assert!(
            out[0].found.contains("UDP port 1053 is in use by dnsmasq"),
            "{}",
            out[0]
        );
        assert!(out[0].needed.contains("coredns"), "{}", out[0]);
    }

    #[test]
    fn a_hostname_that_is_not_a_valid_node_name_is_blocking_with_the_node_name_hint() {
        let mut f = healthy();
        f[1].hostname = "Node_2".into();
        let out = check(&input(&f));
        assert_eq!(ids(&out), vec![("node-name", Severity::Blocking)]);
        assert!(out[0].found.contains("\"Node_2\""), "{}", out[0]);
        assert!(out[0].found.contains("'_' is not allowed"), "{}", out[0]);
        assert!(out[0].hint.contains("hosts[].nodeName"), "{}", out[0]);
        assert!(out[0].hint.contains("\"node-2\""), "{}", out[0]);
        // With a valid nodeName, it passes.
        let mut inp = input(&f);
        inp.hosts[1].node_name = Some("node-2".into());
        assert_eq!(check(&inp), vec![]);
        for (name, ok) in [
            ("srv1", true),
            ("a.b-c", true),
            ("-a", false),
            ("a..b", false),
            ("", false),
        ] {
            assert_eq!(node_name_problem(name).is_none(), ok, "{name}");
        }
    }

    #[test]
    fn a_host_slow_to_answer_its_facts_gets_no_false_clock_skew() {
        // The host read its clock at 1 000 000; its answer took 40 s to arrive, and the
        // slowest host made the workstation's single reading 41 s later still.
        let f = healthy();
        let mut inp = input(&f);
        inp.workstation_epoch = 1_000_081;
        for h in &mut inp.hosts {
            h.answered_between = Some((999_999, 1_000_040));
        }
        assert_eq!(check(&inp), vec![]);
        // A clock 45 s behind the window is still found.
        inp.hosts[0].answered_between = Some((1_000_045, 1_000_046));
        let out = check(&inp);
        assert_eq!(ids(&out), vec![("clock-skew", Severity::Blocking)]);
        assert!(out[0].found.contains("45 s away"), "{}", out[0]);
    }

    #[test]
    fn duplicate_hostnames_are_blocking_unless_node_names_differ() {
        let mut f = healthy();
        f[2].hostname = "srv1".into();
        let out = check(&input(&f));
        assert_eq!(ids(&out), vec![("unique-names", Severity::Blocking)]);
        assert_eq!(out[0].host.as_deref(), Some("10.0.0.11, 10.0.0.13"));
        let mut inp = input(&f);
        inp.hosts[2].node_name = Some("srv3".into());
        assert_eq!(check(&inp), vec![]);
    }

    #[test]
    fn too_little_disk_cpu_memory() {
        let mut f = healthy();
        f[0].disk_free_bytes = 100 * MIB;
        f[1].cpus = 1;
        f[2].mem_bytes = GIB;
        let out = check(&input(&f));
        assert_eq!(
            ids(&out),
            vec![
                ("disk", Severity::Blocking),
                ("cpu", Severity::Blocking),
                ("memory", Severity::Blocking)
            ]
        );
        assert!(out[0].needed.contains("1.6 GiB"), "{}", out[0]);
    }

    #[test]
    fn agents_need_less() {
        let mut f: Vec<Facts> = (1..=4)
            .map(|i| facts(&format!("n{i}"), &format!("10.0.0.{}", 10 + i)))
            .collect();
        f[3].cpus = 1;
        f[3].mem_bytes = 600 * MIB;
        assert_eq!(check(&input(&f)), vec![]);
    }

    #[test]
    fn cgroup_v1_blocks_unless_allowed() {
        let mut f = healthy();
        f[0].cgroup_fs = "tmpfs".into();
        assert_eq!(
            ids(&check(&input(&f))),
            vec![("cgroup-v2", Severity::Blocking)]
        );
        let mut inp = input(&f);
        inp.relax.allow_cgroup_v1 = true;
        assert_eq!(ids(&check(&inp)), vec![("cgroup-v2", Severity::Warning)]);
    }

    #[test]
    fn cidr_overlaps_are_caught() {
        let mut f = healthy();
        f[0].routes.push("10.42.5.0/24".parse().unwrap());
        f[1].addresses.push(InterfaceAddr {
            interface: "eth1".into(),
            addr: "10.43.0.9/24".parse().unwrap(),
        });
        let out = check(&input(&f));
        assert_eq!(
            ids(&out),
            vec![
                ("cidr-overlap", Severity::Blocking),
                ("cidr-overlap", Severity::Blocking)
            ]
        );
        assert!(out[0].found.contains("overlaps the route 10.42.5.0/24"));
        assert!(out[1].found.contains("contains the host address 10.43.0.9"));
    }

    #[test]
    fn node_ip_must_belong_to_the_host() {
        let f = healthy();
        let mut inp = input(&f);
        inp.hosts[0].node_ip = Some("10.0.0.99".parse().unwrap());
        let out = check(&inp);
        assert_eq!(ids(&out), vec![("node-ip", Severity::Blocking)]);
        assert!(out[0].found.contains("10.0.0.11"));
    }

    #[test]
    fn clock_skew_time_sync_default_route_selinux_firewall() {
        let mut f = healthy();
        f[0].time_epoch = Some(1_000_100);
        f[1].time_sync_active = false;
        f[1].ntp_synced = None;
        f[1].default_route = None;
        f[2].selinux = "enforcing".into();
        f[2].firewall = Firewall::Firewalld;
        let out = check(&input(&f));
        assert_eq!(
            ids(&out),
            vec![
                ("clock-skew", Severity::Blocking),
                ("default-route", Severity::Blocking),
                ("time-sync", Severity::Warning),
                ("selinux", Severity::Blocking),
                ("firewall", Severity::Warning),
            ]
        );
        let mut inp = input(&f);
        inp.relax.leave_firewall = true;
        let fw = check(&inp)
            .into_iter()
            .find(|x| x.check == "firewall")
            .unwrap();
        assert_eq!(fw.severity, Severity::Blocking);
        assert!(
            fw.hint
                .contains("firewall-cmd --permanent --add-port=6443/tcp"),
            "{}",
            fw.hint
        );
        assert!(fw.hint.contains("--add-port=8443/tcp"));
    }

    #[test]
    fn rerun_on_an_installed_node_accepts_its_own_listeners() {
        let mut f = healthy();
        for x in f.iter_mut() {
            x.k3s_unit = Some("active".into());
            x.k3s_sha256 = Some("abc".into());
            x.tcp_listeners.push(Listener {
                port: 6443,
                process: Some("k3s-server".into()),
                loopback_only: false,
            });
            x.tcp_listeners.push(Listener {
                port: 10250,
                process: Some("k3s-server".into()),
                loopback_only: false,
            });
            x.tcp_listeners.push(Listener {
                port: 8443,
                process: Some("gateway".into()),
                loopback_only: false,
            });
        }
        assert_eq!(check(&input(&f)), vec![]);
    }

    #[test]
    fn finding_display_has_found_needed_hint() {
        let mut f = healthy();
        f[0].disk_free_bytes = 0;
        let out = check(&input(&f));
        assert_eq!(
            out[0].to_string(),
            "[blocking] disk on 10.0.0.11: found 0 MiB free on /var/lib; needed at least 1.6 GiB free under /var/lib/rancher\n    hint: free space on /var/lib or mount a larger disk at /var/lib/rancher"
        );
    }
}
