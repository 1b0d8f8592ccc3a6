//! A tiny DNS responder for simulated containers that model the installer's CoreDNS.
//!
//! This models the **CoreDNS workload the installer deploys** (`templates/cluster/`), not k3s:
//! k3s's packaged CoreDNS is disabled on the appliance. When a host-network container declares a
//! port named `dns-tcp` (as the installer's CoreDNS DaemonSet does, and as k3s's own
//! `manifests/coredns.yaml` names it), its shim answers DNS on that port instead of HTTP: over
//! TCP (RFC 1035 §4.2.2, two-byte length prefix) and, on the UDP port of the same number, over
//! UDP. It knows one name, `kubernetes.default.svc.<domain>`, and answers its A query with the
//! `kubernetes` Service's address, the first address of the service CIDR: k3s's default
//! 10.43.0.0/16, which the lab uses (the simulated kubelet does not learn another); AAAA and other types
//! of that name get an empty NOERROR answer, every other name NXDOMAIN, as CoreDNS's
//! `kubernetes` plugin would for a cluster with only that Service. That is enough for the
//! installer's DNS gate (`installer::app::dns::gate`), which asks exactly that from every node.

use std::net::Ipv4Addr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// The one name answered (its domain part is accepted whatever it is).
const NAME_PREFIX: &str = "kubernetes.default.svc.";

/// The address the responder gives `kubernetes.default.svc.<domain>`: the first address of
/// k3s's default service CIDR (10.43.0.0/16, `pkg/cli/server/server.go`), which the lab uses.
pub const DEFAULT_KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);

/// The file beside a shim's `spec.json` naming its DNS ports.
const DNS_FILE: &str = "dns.json";

/// Which of a container's ports answer DNS: the port named `dns-tcp` (TCP) and the UDP port of
/// the same number. Written by the kubelet beside the shim's spec, read by the shim.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsPorts {
    pub port: Option<u16>,
    pub kubernetes_ip: Option<Ipv4Addr>,
}

impl DnsPorts {
    /// From a container spec (JSON), answering with `kubernetes_ip`.
    pub fn of_container(container: &serde_json::Value, kubernetes_ip: Ipv4Addr) -> DnsPorts {
        let port = container
            .get("ports")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str() == Some("dns-tcp"))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        DnsPorts {
            port,
            kubernetes_ip: port.map(|_| kubernetes_ip),
        }
    }

    /// Writes (or removes) `dns.json` in the shim directory `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        let path = dir.join(DNS_FILE);
        if self.port.is_none() {
            let _ = std::fs::remove_file(path);
        } else if let Ok(text) = serde_json::to_vec(self) {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(path, text);
        }
    }

    /// Reads `dns.json` from `dir` (none: no DNS ports).
    pub fn read(dir: &std::path::Path) -> DnsPorts {
        std::fs::read(dir.join(DNS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The address to answer with when `port` is the DNS port.
    pub fn answers_on(&self, port: u16) -> Option<Ipv4Addr> {
        (self.port == Some(port)).then_some(self.kubernetes_ip.unwrap_or(DEFAULT_KUBERNETES_IP))
    }
}

/// The question of a query: (name in lower case, type, end of the question section).
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

/// The response to `query` (`None` for something that is not a query with one question).
pub fn answer(query: &[u8], kubernetes_ip: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let (name, qtype, end) = question(query)?;
    let ours = name.starts_with(NAME_PREFIX) && name.len() > NAME_PREFIX.len();
    let rcode = if ours { 0 } else { 3 };
    let with_a = ours && qtype == 1;
    let mut r = Vec::with_capacity(end + 16);
    r.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD, AA; RA; rcode.
    r.push(0x80 | (query[2] & 0x79) | 0x04);
    r.push(0x80 | rcode);
    r.extend_from_slice(&[0, 1, 0, u8::from(with_a), 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..end]);
    if with_a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        r.extend_from_slice(&kubernetes_ip.octets());
    }
    Some(r)
}

/// Answers DNS over TCP on `listener` until `shutdown`.
pub async fn serve_tcp(listener: TcpListener, ip: Ipv4Addr, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut s, _)) = accepted else { continue };
        tokio::spawn(async move {
            // One connection may carry several queries.
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                let Some(r) = answer(&q, ip) else { return };
                let Ok(n) = u16::try_from(r.len()) else {
                    return;
                };
                if s.write_all(&n.to_be_bytes()).await.is_err() || s.write_all(&r).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Answers DNS over UDP on `socket` until `shutdown`.
pub async fn serve_udp(socket: UdpSocket, ip: Ipv4Addr, shutdown: CancellationToken) {
    let mut buf = [0u8; 512];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, peer)) = received else { continue };
        if let Some(r) = answer(&buf[..n], ip) {
            let _ = socket.send_to(&r, peer).await;
        }
    }
}

/// Starts [`serve_udp`] on the sockets bound to the DNS port and returns the others (which the
/// shim keeps bound without answering).
pub fn serve_udp_ports(
    sockets: Vec<UdpSocket>,
    dns: &DnsPorts,
    shutdown: &CancellationToken,
) -> Vec<UdpSocket> {
    let mut rest = Vec::new();
    for s in sockets {
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        match dns.answers_on(port) {
            Some(ip) => {
                tokio::spawn(serve_udp(s, ip, shutdown.clone()));
            }
            None => rest.push(s),
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn the_kubernetes_service_is_answered_and_nothing_else() {
        let ip = Ipv4Addr::new(10, 43, 0, 1);
        let r = answer(&query("kubernetes.default.svc.cluster.local", 1), ip).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 43, 0, 1]);
        let aaaa = answer(&query("Kubernetes.Default.svc.cluster.local", 28), ip).unwrap();
        assert_eq!((aaaa[3] & 0x0f, aaaa[7]), (0, 0), "NOERROR, no answer");
        let other = answer(&query("api.appliance.svc.cluster.local", 1), ip).unwrap();
        assert_eq!(other[3] & 0x0f, 3, "NXDOMAIN");
        assert!(answer(&[0; 5], ip).is_none());
        assert!(answer(&r, ip).is_none(), "a response is not answered");
    }

    #[tokio::test]
    async fn tcp_and_udp_are_served() {
        let ip = Ipv4Addr::new(10, 43, 0, 1);
        let shutdown = CancellationToken::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve_tcp(l, ip, shutdown.clone()));
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let q = query("kubernetes.default.svc.cluster.local", 1);
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(&r[r.len() - 4..], &[10, 43, 0, 1]);
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let uport = u.local_addr().unwrap().port();
        tokio::spawn(serve_udp(u, ip, shutdown.clone()));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&q, ("127.0.0.1", uport)).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = c.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[n - 4..n], &[10, 43, 0, 1]);
        shutdown.cancel();
    }
}
