//! kube-proxy in iptables mode (k3s's default), as far as a host-network pod can see it: a
//! ClusterIP Service's `clusterIP:port` reaches one of its ready endpoints, and a Service
//! without ready endpoints refuses the connection.
//!
//! Every second the proxy lists the Services and EndpointSlices (as the `system:kube-proxy`
//! user k3s gives kube-proxy, so RBAC's `system:node-proxier` applies) and, when the rules it
//! would write changed or every 30 s (kube-proxy's `--iptables-sync-period`), writes them with
//! `iptables-restore --noflush` in the chains kube-proxy uses, with kube-proxy's chain names
//! (`KUBE-SVC-`/`KUBE-SEP-` plus the first 16 base32 characters of a SHA-256, so the
//! `kubernetes` Service's chain is `KUBE-SVC-NPX46M4PTMTKRN6Y` as on every cluster):
//!
//! - nat `KUBE-SERVICES` (jumped to from `PREROUTING` and `OUTPUT`): per Service port a match
//!   on `clusterIP/32`, protocol and port to `KUBE-SVC-…`, which marks traffic from outside the
//!   cluster CIDR for masquerade and picks an endpoint with `statistic --mode random` to a
//!   `KUBE-SEP-…` chain that DNATs to `ip:port`; `KUBE-POSTROUTING` masquerades marked traffic;
//! - filter `KUBE-SERVICES` (jumped to from `OUTPUT` and `FORWARD` for new connections): a
//!   Service port without ready endpoints is rejected with `icmp-port-unreachable` ("has no
//!   endpoints").
//!
//! Only on a real node (the lab's): under a test root several "nodes" share the workstation's
//! network namespace, and nothing here may change it. Not modelled: NodePorts, externalIPs and
//! LoadBalancer ingress IPs, session affinity, `internalTrafficPolicy`/`externalTrafficPolicy`,
//! terminating-endpoint fallback, IPv6, the nftables and IPVS modes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kubelet::Kube;
use super::log;

/// The nat and filter tables' entry jumps kube-proxy keeps (`iptables -C` then `-I`).
const JUMPS: &[(&str, &str, &[&str])] = &[
    (
        "nat",
        "PREROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        "nat",
        "OUTPUT",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        "nat",
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING",
        ],
    ),
    (
        "filter",
        "OUTPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
    (
        "filter",
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ],
    ),
];

/// How often the rules are rewritten even when nothing changed.
pub const SYNC_PERIOD: Duration = Duration::from_secs(30);

/// One Service port as kube-proxy programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name` (`namespace/name` when the port has no name).
    pub name: String,
    pub cluster_ip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: u16,
    /// Ready endpoints, `ip:port`, sorted.
    pub endpoints: Vec<String>,
}

/// kube-proxy's `portProtoHash`: base32 of SHA-256, first 16 characters.
fn hash16(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(s.as_bytes());
    let mut out = data_encoding::BASE32.encode(&h);
    out.truncate(16);
    out
}

/// `KUBE-SVC-…` of a Service port.
pub fn service_chain(name: &str, protocol: &str) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("{name}{protocol}")))
}

/// `KUBE-SEP-…` of one endpoint of a Service port.
pub fn endpoint_chain(name: &str, protocol: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{name}{protocol}{endpoint}"))
    )
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// The Service ports to program, from lists of Services and EndpointSlices (API JSON).
pub fn service_ports(services: &[Value], slices: &[Value]) -> Vec<ServicePort> {
    // (namespace, service) -> slices
    let mut by_service: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
    for s in slices {
        let svc = str_at(s, "/metadata/labels/kubernetes.io~1service-name");
        if svc.is_empty() || str_at(s, "/addressType") != "IPv4" {
            continue;
        }
        by_service
            .entry((str_at(s, "/metadata/namespace"), svc))
            .or_default()
            .push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let ip = str_at(svc, "/spec/clusterIP");
        if ip.is_empty() || ip == "None" || ip.parse::<std::net::Ipv4Addr>().is_err() {
            continue;
        }
        if str_at(svc, "/spec/type") == "ExternalName" {
            continue;
        }
        let ns = str_at(svc, "/metadata/namespace");
        let name = str_at(svc, "/metadata/name");
        let mine = by_service.get(&(ns, name)).cloned().unwrap_or_default();
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            if protocol != "TCP" && protocol != "UDP" {
                continue;
            }
            let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let pname = p["name"].as_str().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in &mine {
                let Some(sp) = slice
                    .pointer("/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|sp| {
                        sp["name"].as_str().unwrap_or_default() == pname
                            && sp["protocol"].as_str().unwrap_or("TCP") == protocol
                    })
                else {
                    continue;
                };
                let Some(target) = sp["port"].as_u64() else {
                    continue;
                };
                for ep in slice
                    .pointer("/endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    // kube-proxy routes to ready endpoints (a missing condition means ready).
                    if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                        continue;
                    }
                    if let Some(addr) = ep
                        .pointer("/addresses/0")
                        .and_then(Value::as_str)
                        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                    {
                        endpoints.insert(format!("{addr}:{target}"));
                    }
                }
            }
            out.push(ServicePort {
                name: if pname.is_empty() {
                    format!("{ns}/{name}")
                } else {
                    format!("{ns}/{name}:{pname}")
                },
                cluster_ip: ip.to_string(),
                protocol: protocol.to_ascii_lowercase(),
                port,
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.protocol.cmp(&b.protocol)));
    out
}

/// The `iptables-restore --noflush` input for these Service ports. `existing_nat` lists the
/// nat table's `KUBE-SVC-`/`KUBE-SEP-` chains present now: those no longer used are flushed
/// and deleted, as kube-proxy deletes stale chains.
pub fn render(ports: &[ServicePort], cluster_cidr: &str, existing_nat: &[String]) -> String {
    let mut filter = String::new();
    let mut nat_chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-POSTROUTING".to_string(),
        "KUBE-MARK-MASQ".to_string(),
    ];
    let mut nat = String::new();
    nat.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    nat.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    nat.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    nat.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for sp in ports {
        let (ip, proto, port, name) = (&sp.cluster_ip, &sp.protocol, sp.port, &sp.name);
        if sp.endpoints.is_empty() {
            let _ = writeln!(
                filter,
                "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment \"{name} has no endpoints\" -m {proto} --dport {port} -j REJECT --reject-with icmp-port-unreachable"
            );
            continue;
        }
        let svc = service_chain(name, proto);
        nat_chains.push(svc.clone());
        let _ = writeln!(
            nat,
            "-A KUBE-SERVICES -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j {svc}"
        );
        if !cluster_cidr.is_empty() {
            let _ = writeln!(
                nat,
                "-A {svc} ! -s {cluster_cidr} -d {ip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {port} -j KUBE-MARK-MASQ"
            );
        }
        let n = sp.endpoints.len();
        for (i, ep) in sp.endpoints.iter().enumerate() {
            let sep = endpoint_chain(name, proto, ep);
            nat_chains.push(sep.clone());
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    nat,
                    "-A {svc} -m comment --comment \"{name} -> {ep}\" -m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    nat,
                    "-A {svc} -m comment --comment \"{name} -> {ep}\" -j {sep}"
                );
            }
            let ep_ip = ep.rsplit_once(':').map(|(a, _)| a).unwrap_or(ep);
            let _ = writeln!(
                nat,
                "-A {sep} -s {ep_ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                nat,
                "-A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {ep}"
            );
        }
    }
    let used: BTreeSet<&String> = nat_chains.iter().collect();
    let stale: Vec<&String> = existing_nat
        .iter()
        .filter(|c| (c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-")) && !used.contains(c))
        .collect();
    let mut out = String::from("*filter\n:KUBE-SERVICES - [0:0]\n");
    out.push_str(&filter);
    out.push_str("COMMIT\n*nat\n");
    for c in nat_chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&nat);
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The chain names an `iptables-save -t nat` output declares.
pub fn chains_of(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn run_cmd(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let Some((prog, rest)) = args.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(rest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|e| format!("{prog}: {e}"))?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(input.as_bytes())
            .map_err(|e| format!("{prog}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ensure_jumps() -> Result<(), String> {
    for (table, chain, rule) in JUMPS {
        let mut check = vec!["iptables", "-w", "-t", table, "-C", chain];
        check.extend_from_slice(rule);
        if run_cmd(&check, None).is_ok() {
            continue;
        }
        // The chain must exist before a rule can jump to it.
        let target = rule.last().copied().unwrap_or_default();
        let _ = run_cmd(&["iptables", "-w", "-t", table, "-N", target], None);
        let mut insert = vec!["iptables", "-w", "-t", table, "-I", chain];
        insert.extend_from_slice(rule);
        run_cmd(&insert, None)?;
    }
    Ok(())
}

async fn list(kube: &Kube, path: &str) -> Result<Vec<Value>, String> {
    match kube.req(reqwest::Method::GET, path, None, None).await? {
        (200, v) => Ok(v["items"].as_array().cloned().unwrap_or_default()),
        (code, v) => Err(format!(
            "GET {path}: {code} {}",
            v["message"].as_str().unwrap_or_default()
        )),
    }
}

/// Runs until `shutdown`: the sync loop described in the module doc.
pub async fn run(kube: Kube, cluster_cidr: String, shutdown: tokio_util::sync::CancellationToken) {
    log::info("Starting kube-proxy (iptables mode)");
    let mut last: Option<String> = None;
    let mut last_sync = Instant::now();
    let mut last_error = String::new();
    loop {
        let result = async {
            let services = list(&kube, "/api/v1/services").await?;
            let slices = list(&kube, "/apis/discovery.k8s.io/v1/endpointslices").await?;
            let ports = service_ports(&services, &slices);
            let key = format!("{ports:?}");
            if last.as_deref() == Some(key.as_str()) && last_sync.elapsed() < SYNC_PERIOD {
                return Ok(());
            }
            let (p, cidr) = (ports.clone(), cluster_cidr.clone());
            tokio::task::spawn_blocking(move || {
                ensure_jumps()?;
                let existing = chains_of(&run_cmd(&["iptables-save", "-t", "nat"], None)?);
                let input = render(&p, &cidr, &existing);
                run_cmd(&["iptables-restore", "-w", "--noflush"], Some(&input))
            })
            .await
            .map_err(|e| e.to_string())??;
            log::info(format!(
                "kube-proxy: synced {} service ports ({} with endpoints)",
                ports.len(),
                ports.iter().filter(|p| !p.endpoints.is_empty()).count()
            ));
            last = Some(key);
            last_sync = Instant::now();
            Ok::<(), String>(())
        }
        .await;
        match result {
            Ok(()) => last_error.clear(),
            Err(e) if e != last_error => {
                log::error(format!("Failed to execute iptables-restore: {e}"));
                last_error = e;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chain_names_are_kube_proxys() {
        // The chain every cluster has for `default/kubernetes:https` (kube-proxy's
        // servicePortChainName).
        assert_eq!(
            service_chain("default/kubernetes:https", "tcp"),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
        assert_ne!(
            endpoint_chain("default/kubernetes:https", "tcp", "10.0.0.1:6443"),
            endpoint_chain("default/kubernetes:https", "tcp", "10.0.0.2:6443")
        );
    }

    fn svc(ns: &str, name: &str, ip: &str, ports: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": ports}})
    }

    fn slice(ns: &str, svc: &str, eps: Value, ports: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": format!("{svc}-abcde"), "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4", "endpoints": eps, "ports": ports})
    }

    #[test]
    fn ready_endpoints_of_the_matching_port_are_used_and_headless_services_skipped() {
        let services = vec![
            svc(
                "app",
                "api",
                "10.43.0.20",
                json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8081},
                       {"name": "dns", "port": 53, "protocol": "UDP"}]),
            ),
            svc("app", "headless", "None", json!([{"port": 1}])),
            svc(
                "app",
                "empty",
                "10.43.0.21",
                json!([{"port": 7379, "protocol": "TCP"}]),
            ),
        ];
        let slices = vec![slice(
            "app",
            "api",
            json!([{"addresses": ["10.77.0.12"], "conditions": {"ready": true}},
                   {"addresses": ["10.77.0.11"]},
                   {"addresses": ["10.77.0.13"], "conditions": {"ready": false}}]),
            json!([{"name": "http", "port": 8081, "protocol": "TCP"}]),
        )];
        let ports = service_ports(&services, &slices);
        let names: Vec<(&str, &str)> = ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("app/api:dns", "udp"),
                ("app/api:http", "tcp"),
                ("app/empty", "tcp")
            ]
        );
        assert_eq!(ports[1].endpoints, ["10.77.0.11:8081", "10.77.0.12:8081"]);
        assert!(ports[0].endpoints.is_empty(), "{:?}", ports[0]);
        assert!(ports[2].endpoints.is_empty(), "{:?}", ports[2]);
    }

    #[test]
    fn rules_dnat_to_every_endpoint_reject_without_endpoints_and_drop_stale_chains() {
        let ports = vec![
            ServicePort {
                name: "default/kubernetes:https".into(),
                cluster_ip: "10.43.0.1".into(),
                protocol: "tcp".into(),
                port: 443,
                endpoints: vec![
                    "10.77.0.11:6443".into(),
                    "10.77.0.12:6443".into(),
                    "10.77.0.13:6443".into(),
                ],
            },
            ServicePort {
                name: "app/store".into(),
                cluster_ip: "10.43.0.30".into(),
                protocol: "tcp".into(),
                port: 7379,
                endpoints: vec![],
            },
        ];
        let stale = "KUBE-SVC-AAAAAAAAAAAAAAAA".to_string();
        let text = render(
            &ports,
            "10.42.0.0/16",
            &["KUBE-SERVICES".into(), stale.clone()],
        );
        let svc = "KUBE-SVC-NPX46M4PTMTKRN6Y";
        assert!(text.contains(&format!("-A KUBE-SERVICES -d 10.43.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j {svc}")), "{text}");
        // Three endpoints: 1/3, then 1/2, then the rest.
        assert!(
            text.contains("--probability 0.3333333333 -j KUBE-SEP-"),
            "{text}"
        );
        assert!(
            text.contains("--probability 0.5000000000 -j KUBE-SEP-"),
            "{text}"
        );
        for ep in ["10.77.0.11:6443", "10.77.0.12:6443", "10.77.0.13:6443"] {
            let sep = endpoint_chain("default/kubernetes:https", "tcp", ep);
            assert!(text.contains(&format!(":{sep} - [0:0]")), "{text}");
            assert!(
                text.contains(&format!("-A {sep} -p tcp -m comment --comment \"default/kubernetes:https\" -m tcp -j DNAT --to-destination {ep}")),
                "{text}"
            );
        }
        assert!(text.contains("-A KUBE-SERVICES -d 10.43.0.30/32 -p tcp -m comment --comment \"app/store has no endpoints\" -m tcp --dport 7379 -j REJECT"), "{text}");
        assert!(text.contains(&format!("-X {stale}")), "{text}");
        assert!(!text.contains("-X KUBE-SERVICES"), "{text}");
        // filter first, then nat, each committed.
        assert_eq!(text.matches("COMMIT").count(), 2, "{text}");
        assert!(text.starts_with("*filter\n"));
    }

    #[test]
    fn chains_are_read_from_iptables_save() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(chains_of(save), ["PREROUTING", "KUBE-SVC-X"]);
    }
}
