//! Cluster DNS on the host network. k3s's packaged CoreDNS is disabled (without an overlay its
//! pod IP would be reachable from its own node only), so the installer deploys CoreDNS itself
//! (`templates/cluster/`): a host-network DaemonSet answering on a port that is not 53 on every
//! node, behind the `kube-dns` Service whose clusterIP k3s gives every kubelet; kube-proxy
//! DNATs `<clusterIP>:53` to `<node>:<port>` (shared/docs/k3s-host-network.md §1).
//!
//! The gate, [`gate`], proves it answers: from every node (over SSH, through the
//! [`Remote`] trait) it sends a real DNS query for `kubernetes.default.svc.<domain>` over TCP
//! to `127.0.0.1:<port>` with a python3 or perl one-liner (one of them is on nearly every
//! server; Debian's `perl-base` is essential) and checks the answer here, with
//! [`parse_response`], for an A record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::render::{self, Manifests};
use super::{AppError, Bundle, ClusterFacts, validate};
use crate::host::{Remote, RemoteCommand, shell_quote};
use crate::kube::rollout::WorkloadId;
use crate::kube::wait::{self, Probe};
use crate::report::events::Reporter;

/// `templates/cluster/cluster.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterServices {
    pub dns: DnsService,
}

/// The CoreDNS deployment's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsService {
    pub namespace: String,
    /// `DaemonSet/coredns`.
    pub workload: String,
    /// The port CoreDNS answers on, on every node.
    pub port: u16,
    /// Its image (from k3s's airgap archive).
    pub image: String,
}

const SERVICES_FILE: &str = "cluster.yaml";
const DNS_TEMPLATE: &str = "coredns.yaml.tera";

impl ClusterServices {
    /// The settings compiled into this binary.
    pub fn embedded() -> Result<ClusterServices, AppError> {
        ClusterServices::from_bundle(&Bundle::cluster_services())
    }

    pub fn from_bundle(bundle: &Bundle) -> Result<ClusterServices, AppError> {
        let file = format!("{}/{SERVICES_FILE}", bundle.root());
        let text = bundle
            .file(SERVICES_FILE)
            .ok_or_else(|| AppError::Template {
                file: file.clone(),
                message: "missing".into(),
            })?;
        serde_saphyr::from_str(text).map_err(|e| AppError::Template {
            file,
            message: e.to_string(),
        })
    }

    /// The CoreDNS workload, for the rollout gate.
    pub fn dns_workload(&self) -> Result<WorkloadId, AppError> {
        super::spec::parse_workload(&self.dns.workload, &self.dns.namespace).map_err(|message| {
            AppError::Template {
                file: format!("{}/{SERVICES_FILE}", super::CLUSTER_ROOT),
                message,
            }
        })
    }
}

/// Renders the CoreDNS manifests for this cluster (the compiled-in templates), validated
/// like the application's (host network, ports, probes), with `dnsPolicy: Default`.
pub fn render(facts: &ClusterFacts) -> Result<Manifests, AppError> {
    render_bundle(&Bundle::cluster_services(), facts)
}

/// [`render`] from another bundle (tests).
pub fn render_bundle(bundle: &Bundle, facts: &ClusterFacts) -> Result<Manifests, AppError> {
    let services = ClusterServices::from_bundle(bundle)?;
    let engine = render::engine(bundle.files(), bundle.root())?;
    let ctx = serde_json::json!({
        "dns": {
            "namespace": services.dns.namespace,
            "port": services.dns.port,
            "image": services.dns.image,
        },
        "cluster": facts.context()?,
    });
    let text = render::render_one(&engine, bundle.root(), DNS_TEMPLATE, &ctx)?;
    let mut items = render::parse_documents(&format!("{}/{DNS_TEMPLATE}", bundle.root()), &text)?;
    render::annotate_config_hashes(&mut items, &Default::default());
    let manifests = Manifests { items };
    let rules = validate::Rules {
        dns_policies: vec!["Default".into()],
        images: Some([validate::normalize_image(&services.dns.image)].into()),
        node_count: Some(facts.nodes.len()),
        ..validate::Rules::default()
    };
    let problems = validate::check(&manifests, &rules);
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(AppError::Invalid(problems))
    }
}

/// Deploys CoreDNS (render, server-side apply, then its rollout gate: a ready pod on every
/// node). The lookup gate, [`gate`], comes next.
pub async fn deploy(
    cluster: &crate::kube::Cluster,
    facts: &ClusterFacts,
    reporter: &Reporter,
    timeout: Duration,
) -> Result<crate::kube::apply::ApplyReport, AppError> {
    let manifests = render(facts)?;
    let report = crate::kube::apply::apply_all(cluster, &manifests, reporter).await?;
    let id = ClusterServices::embedded()?.dns_workload()?;
    let recheck = crate::kube::rollout::RECHECK;
    crate::kube::rollout::gate(cluster, &[id], timeout, recheck, reporter)
        .await
        .map_err(|e| match e {
            crate::kube::rollout::GateError::Rollout(r) => AppError::Rollout(r),
            crate::kube::rollout::GateError::Kube(k) => AppError::Kube(k),
        })?;
    Ok(report)
}

/// What the DNS gate asks and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCheck {
    /// `kubernetes.default.svc.cluster.local`.
    pub name: String,
    /// CoreDNS's port on the nodes.
    pub port: u16,
    /// The address the answer must contain (the `kubernetes` Service's clusterIP), if known.
    pub expected: Option<IpAddr>,
}

impl DnsCheck {
    /// The check for this cluster with the compiled-in CoreDNS settings.
    pub fn for_cluster(facts: &ClusterFacts) -> Result<DnsCheck, AppError> {
        let services = ClusterServices::embedded()?;
        Ok(DnsCheck {
            name: format!("kubernetes.default.svc.{}", facts.domain),
            port: services.dns.port,
            expected: facts.kubernetes_ip(),
        })
    }
}

/// The DNS query id the scripts use.
pub const QUERY_ID: u16 = 0x4b1d;

/// A DNS query (RFC 1035 §4.1) for the A records of `name`, recursion desired.
pub fn build_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The shell script run on each node: sends the query over TCP to `127.0.0.1:<port>` and
/// prints the response in hex (python3, else perl). Nothing secret goes in it.
pub fn query_script(name: &str, port: u16) -> String {
    // python3: argv[1] = name, argv[2] = port.
    let py = r#"import socket,struct,sys,binascii
n=sys.argv[1];p=int(sys.argv[2])
q=struct.pack(">HHHHHH",0x4b1d,0x0100,1,0,0,0)+b"".join(bytes([len(l)])+l.encode() for l in n.split("."))+b"\0"+struct.pack(">HH",1,1)
s=socket.create_connection(("127.0.0.1",p),5)
s.settimeout(5)
s.sendall(struct.pack(">H",len(q))+q)
b=b""
while len(b)<2 or len(b)<2+struct.unpack(">H",b[:2])[0]:
  c=s.recv(4096)
  if not c: break
  b+=c
print(binascii.hexlify(b[2:]).decode())
"#;
    let pl = r#"use IO::Socket::INET;my($n,$p)=@ARGV;
my $q=pack("nnnnnn",0x4b1d,0x0100,1,0,0,0);$q.=pack("C",length($_)).$_ for split(/\./,$n);$q.=pack("Cnn",0,1,1);
my $s=IO::Socket::INET->new(PeerAddr=>"127.0.0.1",PeerPort=>$p,Proto=>"tcp",Timeout=>5) or die "connect 127.0.0.1:$p: $!\n";
print $s pack("n",length($q)).$q;
my $b="";while(1){my $c;my $r=sysread($s,$c,4096);last unless $r;$b.=$c;last if length($b)>=2 && length($b)>=2+unpack("n",$b);}
print unpack("H*",substr($b,2)),"\n";
"#;
    format!(
        "if command -v python3 >/dev/null 2>&1; then exec python3 -c {} {} {}; \
         elif command -v perl >/dev/null 2>&1; then exec perl -e {} {} {}; \
         else echo 'neither python3 nor perl is installed on this node' >&2; exit 127; fi",
        shell_quote(py),
        shell_quote(name),
        port,
        shell_quote(pl),
        shell_quote(name),
        port
    )
}

fn read_name(msg: &[u8], mut pos: usize) -> Result<usize, String> {
    // Returns the position after the name (following at most one pointer chain for length).
    let mut jumps = 0;
    let mut end: Option<usize> = None;
    loop {
        let len = *msg.get(pos).ok_or("truncated name")? as usize;
        if len & 0xc0 == 0xc0 {
            let next = *msg.get(pos + 1).ok_or("truncated pointer")? as usize;
            if end.is_none() {
                end = Some(pos + 2);
            }
            pos = ((len & 0x3f) << 8) | next;
            jumps += 1;
            if jumps > 32 {
                return Err("name compression loop".into());
            }
        } else if len == 0 {
            return Ok(end.unwrap_or(pos + 1));
        } else {
            pos += 1 + len;
        }
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, String> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "truncated message".into())
}

const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// The A and AAAA addresses in a DNS response (RFC 1035 §4.1, name compression included).
/// `Err` says what is wrong: another id, not a response, an error code, garbage.
pub fn parse_response(msg: &[u8], id: u16) -> Result<Vec<IpAddr>, String> {
    if msg.len() < 12 {
        return Err(format!("a {}-byte answer is not a DNS message", msg.len()));
    }
    if u16_at(msg, 0)? != id {
        return Err("the answer is for another query".into());
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    let rcode = (flags & 0x000f) as usize;
    if rcode != 0 {
        return Err(format!(
            "the server answered {}",
            RCODES.get(rcode).copied().unwrap_or("an error")
        ));
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(msg, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = read_name(msg, pos)?;
        let ty = u16_at(msg, pos)?;
        let len = u16_at(msg, pos + 8)? as usize;
        let data = msg
            .get(pos + 10..pos + 10 + len)
            .ok_or("truncated record")?;
        match (ty, len) {
            (1, 4) => out.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (28, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        pos += 10 + len;
    }
    Ok(out)
}

/// Decodes the script's hex output.
pub fn decode_hex_output(stdout: &str) -> Result<Vec<u8>, String> {
    let text = stdout.trim();
    if text.is_empty() {
        return Err("no answer (the connection closed without a response)".into());
    }
    hex::decode(text).map_err(|_| format!("unexpected output: {}", crate::host::tail(text, 1)))
}

/// One node's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsAnswer {
    pub node: String,
    pub addresses: Vec<IpAddr>,
}

/// Asks once from one node; `Ok` when the answer has an A record (the expected one, if
/// given).
pub async fn lookup(remote: &dyn Remote, check: &DnsCheck) -> Result<Vec<IpAddr>, String> {
    let cmd =
        RemoteCommand::new(query_script(&check.name, check.port)).timeout(Duration::from_secs(20));
    let out = remote.exec(cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        let err = out.stderr_str();
        let err = crate::host::tail(err.trim(), 2);
        return Err(if err.is_empty() {
            format!("the query script exited with {:?}", out.status)
        } else {
            err
        });
    }
    let bytes = decode_hex_output(&out.stdout_str())?;
    let addrs = parse_response(&bytes, QUERY_ID)?;
    if !addrs.iter().any(IpAddr::is_ipv4) && !addrs.iter().any(IpAddr::is_ipv6) {
        return Err(format!("the answer for {} has no address", check.name));
    }
    if let Some(want) = check.expected
        && !addrs.contains(&want)
    {
        return Err(format!(
            "{} resolved to {}, not to the kubernetes Service's {want}",
            check.name,
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(addrs)
}

/// The DNS gate gave up on some nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster DNS does not answer on {} of {total} node{}:\n{}\n  what to do: check the CoreDNS pod on {} (`kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide`, its log), and that nothing else listens on port {port} there (`ss -ltnup`)",
    .failures.len(), if *.total == 1 { "" } else { "s" },
    .failures.iter().map(|(n, why)| format!("  {n}: {why}")).collect::<Vec<_>>().join("\n"),
    .failures.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "))]
pub struct DnsGateError {
    /// (node, why)
    pub failures: Vec<(String, String)>,
    pub total: usize,
    pub port: u16,
}

/// Waits until every node gets an A answer from CoreDNS on `127.0.0.1:<port>`, each node
/// within `timeout`. All nodes are asked concurrently.
pub async fn gate(
    nodes: &[Arc<dyn Remote>],
    check: &DnsCheck,
    timeout: Duration,
    interval: Duration,
    reporter: &Reporter,
) -> Result<Vec<DnsAnswer>, DnsGateError> {
    let waits = nodes.iter().map(|remote| {
        let remote = remote.clone();
        async move {
            let what = format!(
                "a DNS answer for {} from 127.0.0.1:{} on {}",
                check.name,
                check.port,
                remote.name()
            );
            let r = wait::until(&what, timeout, interval, || {
                let remote = remote.clone();
                async move {
                    match lookup(remote.as_ref(), check).await {
                        Ok(a) => Probe::Done(a),
                        Err(e) => Probe::NotYet(e),
                    }
                }
            })
            .await;
            (remote.name().to_owned(), r)
        }
    });
    let results = futures::future::join_all(waits).await;
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (node, r) in results {
        match r {
            Ok(addresses) => {
                reporter.detail(
                    Some(&node),
                    format!(
                        "cluster DNS answers: {} is {}",
                        check.name,
                        addresses
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                answers.push(DnsAnswer { node, addresses });
            }
            Err(e) => failures.push((node, e.to_string())),
        }
    }
    if failures.is_empty() {
        Ok(answers)
    } else {
        Err(DnsGateError {
            failures,
            total: nodes.len(),
            port: check.port,
        })
    }
}

#[cfg(test)]
mod tests;
