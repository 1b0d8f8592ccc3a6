//! `connect`: SSH to every host in parallel, gather facts in one round trip, and resolve
//! each host's identity as a node (name and IP). Every command starts here; `status`
//! calls [`connect_host`] for each host and keeps going past the ones it cannot reach.

use std::net::IpAddr;
use std::sync::Arc;

use super::context::{ConnectedHost, Connector, Context, HostSpec};
use super::ids::PhaseId;
use super::runner::{PhaseFailure, Runner, StepError, StepOk};
use crate::host::facts::{self, Facts};
use crate::report::{Event, Reporter};

/// Picks the node IP: the answer file's override; else the address the installer connects
/// to, when it is one of the host's own addresses; else the first IPv4 address of the
/// interface that carries the default route (what k3s itself would choose).
pub fn resolve_node_ip(spec: &HostSpec, facts: &Facts) -> Result<(IpAddr, String), StepError> {
    if let Some(ip) = spec.node_ip {
        return Ok((ip, "set by nodeIp in the answer file".into()));
    }
    let ips = facts.host_ips();
    if let Ok(ip) = spec.address.parse::<IpAddr>()
        && ips.contains(&ip)
    {
        return Ok((ip, "the address the installer connects to".into()));
    }
    let dev = facts.default_route.as_deref().and_then(|r| {
        let mut it = r.split_whitespace();
        it.position(|w| w == "dev").and_then(|_| it.next())
    });
    if let Some(dev) = dev
        && let Some(a) = facts
            .addresses
            .iter()
            .find(|a| a.interface == dev && a.addr.addr().is_ipv4())
    {
        return Ok((
            a.addr.addr(),
            format!("the first address of {dev}, the default route's interface"),
        ));
    }
    ips.first()
        .map(|ip| (*ip, "the host's first address".into()))
        .ok_or_else(|| {
            StepError::new("the host has no usable IP address")
                .with_hint("set hosts[].nodeIp in the answer file")
        })
}

/// Connects to one host, gathers its facts and resolves its node identity.
pub async fn connect_host(
    connector: &dyn Connector,
    spec: &HostSpec,
) -> Result<ConnectedHost, StepError> {
    let remote = connector.connect(spec).await?;
    let asked = epoch_now();
    let facts = facts::gather(remote.as_ref()).await?;
    let answered = epoch_now();
    let (node_ip, why) = resolve_node_ip(spec, &facts)?;
    let node_name = spec
        .node_name
        .clone()
        .unwrap_or_else(|| facts.hostname.to_lowercase());
    Ok(ConnectedHost {
        spec: spec.clone(),
        remote,
        facts,
        node_name,
        node_ip,
        node_ip_reason: why,
        facts_window: (asked, answered),
    })
}

/// The workstation's clock, in epoch seconds.
fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A one-line description of a connected host (OS, arch, size, k3s).
pub fn describe(h: &ConnectedHost) -> String {
    let f = &h.facts;
    format!(
        "{}, {}, {} CPU, {} MiB, k3s {}",
        f.os_pretty,
        f.arch.as_str(),
        f.cpus,
        f.mem_bytes / (1024 * 1024),
        f.k3s_version
            .as_deref()
            .map(|v| v.trim_start_matches("k3s version "))
            .unwrap_or("not installed")
    )
}

fn report_identity(reporter: &Reporter, h: &ConnectedHost) {
    reporter.emit(Event::HostStep {
        phase: PhaseId::Connect.id().into(),
        host: h.spec.name.clone(),
        message: format!(
            "node {}, IP {} ({})",
            h.node_name, h.node_ip, h.node_ip_reason
        ),
    });
}

/// The `connect` phase: every host of the context, or the command stops.
pub async fn run(
    runner: &mut Runner,
    ctx: &Context,
    connector: &dyn Connector,
) -> Result<Vec<Arc<ConnectedHost>>, PhaseFailure> {
    let specs: Vec<Arc<HostSpec>> = ctx.hosts.iter().cloned().map(Arc::new).collect();
    let reporter = runner.reporter().clone();
    runner
        .phase(
            PhaseId::Connect.id(),
            PhaseId::Connect.title(),
            &specs,
            ctx.concurrency,
            |spec| {
                let reporter = reporter.clone();
                async move {
                    let host = connect_host(connector, &spec).await?;
                    report_identity(&reporter, &host);
                    Ok((StepOk::unchanged(describe(&host)), Arc::new(host)))
                }
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_with(addrs: &[(&str, &str)], route: Option<&str>) -> Facts {
        let mut text = String::from(
            "os_id=debian\nos_version=12\ncpus=2\nmem_kb=1000\ndisk_free_kb=1\ndisk_total_kb=1\nhostname=h\ngather=done\n",
        );
        for (i, a) in addrs {
            text.push_str(&format!("addr={i} {a}\n"));
        }
        if let Some(r) = route {
            text.push_str(&format!("default_route={r}\n"));
        }
        facts::parse(&text).unwrap()
    }

    fn host(addr: &str) -> HostSpec {
        HostSpec {
            name: addr.into(),
            address: addr.into(),
            is_server: true,
            node_name: None,
            node_ip: None,
        }
    }

    #[test]
    fn node_ip_prefers_override_then_connect_address_then_default_route() {
        let f = facts_with(
            &[
                ("lo", "127.0.0.1/8"),
                ("eth0", "10.0.0.11/24"),
                ("eth1", "192.168.1.5/24"),
            ],
            Some("default via 192.168.1.1 dev eth1"),
        );
        let mut h = host("10.0.0.11");
        assert_eq!(
            resolve_node_ip(&h, &f).unwrap().0,
            "10.0.0.11".parse::<IpAddr>().unwrap()
        );
        h.node_ip = Some("192.168.1.5".parse().unwrap());
        assert_eq!(
            resolve_node_ip(&h, &f).unwrap().1,
            "set by nodeIp in the answer file"
        );
        // A DNS name or a NATed address: fall back to the default route's interface.
        let h = host("srv1.example.internal");
        let (ip, why) = resolve_node_ip(&h, &f).unwrap();
        assert_eq!(ip, "192.168.1.5".parse::<IpAddr>().unwrap());
        assert!(why.contains("eth1"), "{why}");
        let none = facts_with(&[("lo", "127.0.0.1/8")], None);
        assert!(resolve_node_ip(&h, &none).is_err());
    }
}
