//! CoreDNS manifests, the DNS wire format, and the gate's real query scripts (python3 and
//! perl) run against a DNS responder on loopback.

use super::*;
use crate::app::NodeFact;
use crate::host::{CommandOutput, HostError, Tunnel, UploadOutcome, UploadSource, UploadTarget};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn facts() -> ClusterFacts {
    ClusterFacts::new(
        (1..=3)
            .map(|i| NodeFact {
                name: format!("srv{i}"),
                address: format!("10.0.0.{}", 10 + i).parse().unwrap(),
                server: true,
            })
            .collect(),
        "10.43.0.0/16".parse().unwrap(),
    )
}

#[test]
fn coredns_renders_on_the_host_network_behind_kube_dns() {
    let m = render(&facts()).unwrap();
    let svc = m.find("Service", Some("kube-system"), "kube-dns").unwrap();
    assert_eq!(svc.object["spec"]["clusterIP"], "10.43.0.10");
    for p in svc.object["spec"]["ports"].as_array().unwrap() {
        assert_eq!(p["port"], 53);
        assert_eq!(p["targetPort"], 1053);
    }
    let ds = m.find("DaemonSet", Some("kube-system"), "coredns").unwrap();
    let spec = &ds.object["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "Default");
    let names: Vec<&str> = spec["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["dns", "dns-tcp", "health", "ready"]);
    assert_eq!(
        spec["containers"][0]["image"],
        "docker.io/rancher/mirrored-coredns-coredns:1.14.4"
    );
    let services = ClusterServices::embedded().unwrap();
    assert_eq!(
        services.dns_workload().unwrap().to_string(),
        "DaemonSet kube-system/coredns"
    );
    insta::assert_snapshot!("coredns", m.to_yaml());
}

#[test]
fn the_check_asks_for_the_kubernetes_service() {
    let c = DnsCheck::for_cluster(&facts()).unwrap();
    assert_eq!(c.name, "kubernetes.default.svc.cluster.local");
    assert_eq!(c.port, 1053);
    assert_eq!(c.expected, Some("10.43.0.1".parse().unwrap()));
}

/// A response to `query` with `answers` A records (or `rcode`), the name compressed.
fn respond(query: &[u8], answers: &[[u8; 4]], rcode: u8) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&query[0..2]);
    r.extend_from_slice(&[0x81, 0x80 | rcode]);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..]);
    for a in answers {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(a);
    }
    r
}

#[test]
fn queries_and_responses_follow_rfc_1035() {
    let q = build_query("kubernetes.default.svc.cluster.local", QUERY_ID);
    assert_eq!(&q[..12], &[0x4b, 0x1d, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(q[12], 10);
    assert_eq!(&q[13..23], b"kubernetes");
    assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
    let r = respond(&q, &[[10, 43, 0, 1], [10, 43, 0, 2]], 0);
    assert_eq!(
        parse_response(&r, QUERY_ID).unwrap(),
        vec![
            "10.43.0.1".parse::<IpAddr>().unwrap(),
            "10.43.0.2".parse().unwrap()
        ]
    );
    assert_eq!(
        parse_response(&respond(&q, &[], 3), QUERY_ID).unwrap_err(),
        "the server answered NXDOMAIN"
    );
    assert_eq!(
        parse_response(&r, 1).unwrap_err(),
        "the answer is for another query"
    );
    assert!(
        parse_response(&r[..r.len() - 2], QUERY_ID)
            .unwrap_err()
            .contains("truncated")
    );
    assert!(
        parse_response(&q, QUERY_ID)
            .unwrap_err()
            .contains("not a response")
    );
    assert!(parse_response(&[1, 2, 3], QUERY_ID).is_err());
    // A pointer loop is refused, not followed forever.
    let mut looped = respond(&q, &[[1, 2, 3, 4]], 0);
    let at = q.len();
    looped[at] = 0xc0;
    looped[at + 1] = at as u8;
    assert!(parse_response(&looped, QUERY_ID).is_err());
    assert_eq!(decode_hex_output("4b1d\n").unwrap(), vec![0x4b, 0x1d]);
    assert!(decode_hex_output("").unwrap_err().contains("no answer"));
    assert!(decode_hex_output("Traceback (most recent call last)").is_err());
}

/// A TCP DNS responder on loopback answering `name` with 10.43.0.1, anything else NXDOMAIN.
async fn responder(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                let want = build_query(name, u16::from_be_bytes([q[0], q[1]]));
                let r = if q[12..] == want[12..] {
                    respond(&q, &[[10, 43, 0, 1]], 0)
                } else {
                    respond(&q, &[], 3)
                };
                let _ = s.write_all(&(r.len() as u16).to_be_bytes()).await;
                let _ = s.write_all(&r).await;
            });
        }
    });
    port
}

/// Runs scripts with the local `sh`, optionally with a restricted PATH.
struct LocalShell {
    name: String,
    path: Option<String>,
}

#[async_trait]
impl Remote for LocalShell {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec(&self, cmd: RemoteCommand) -> Result<CommandOutput, HostError> {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(&cmd.script);
        if let Some(p) = &self.path {
            c.env("PATH", p);
        }
        let out = c.output().await.map_err(|e| HostError::Disconnected {
            host: self.name.clone(),
            during: e.to_string(),
        })?;
        Ok(CommandOutput {
            status: out.status.code().map(|c| c as u32),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn upload(
        &self,
        _: &UploadSource,
        _: &UploadTarget,
        _: Option<crate::host::Progress>,
    ) -> Result<UploadOutcome, HostError> {
        Err(HostError::Disconnected {
            host: self.name.clone(),
            during: "upload (not in this test)".into(),
        })
    }

    async fn connect_tcp(&self, _: &str, _: u16) -> Result<Tunnel, HostError> {
        Err(HostError::Disconnected {
            host: self.name.clone(),
            during: "connect (not in this test)".into(),
        })
    }
}

fn check(port: u16) -> DnsCheck {
    DnsCheck {
        name: "kubernetes.default.svc.cluster.local".into(),
        port,
        expected: Some("10.43.0.1".parse().unwrap()),
    }
}

fn have(program: &str) -> bool {
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_python_query_gets_an_a_record() {
    if !have("python3") {
        skip("python3 is not installed here (the perl test covers the fallback)");
        return;
    }
    let port = responder("kubernetes.default.svc.cluster.local").await;
    let node = LocalShell {
        name: "srv1".into(),
        path: None,
    };
    let addrs = lookup(&node, &check(port)).await.unwrap();
    assert_eq!(addrs, vec!["10.43.0.1".parse::<IpAddr>().unwrap()]);
}

#[tokio::test]
async fn the_perl_query_gets_an_a_record_where_there_is_no_python() {
    let Ok(perl) = which("perl") else {
        skip("perl is not installed here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(perl, dir.path().join("perl")).unwrap();
    let port = responder("kubernetes.default.svc.cluster.local").await;
    let node = LocalShell {
        name: "srv1".into(),
        path: Some(dir.path().display().to_string()),
    };
    let addrs = lookup(&node, &check(port)).await.unwrap();
    assert_eq!(addrs, vec!["10.43.0.1".parse::<IpAddr>().unwrap()]);
    // Neither interpreter: a clear message.
    let empty = tempfile::tempdir().unwrap();
    let bare = LocalShell {
        name: "srv2".into(),
        path: Some(empty.path().display().to_string()),
    };
    let e = lookup(&bare, &check(port)).await.unwrap_err();
    assert_eq!(e, "neither python3 nor perl is installed on this node");
}

/// A missing tool skips the test here, but fails it where tests must run (`LAB_REQUIRED=1`,
/// as in CI, where python3 and perl are installed).
fn skip(why: &str) {
    assert!(
        std::env::var_os("LAB_REQUIRED").is_none(),
        "LAB_REQUIRED is set, so this test may not skip: {why}"
    );
    #[allow(clippy::print_stderr, reason = "a test's skip notice")]
    {
        skip("{why}");
    }
}

fn which(program: &str) -> Result<String, ()> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map_err(|_| ())?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && p.starts_with('/') {
        Ok(p)
    } else {
        Err(())
    }
}

#[tokio::test]
async fn a_wrong_answer_is_not_accepted() {
    if !have("python3") && !have("perl") {
        skip("neither python3 nor perl is installed here");
        return;
    }
    let port = responder("something.else").await;
    let node = LocalShell {
        name: "srv1".into(),
        path: None,
    };
    let e = lookup(&node, &check(port)).await.unwrap_err();
    assert_eq!(e, "the server answered NXDOMAIN");
}

#[tokio::test]
async fn the_gate_passes_on_every_node_or_names_each_failing_one() {
    if !have("python3") && !have("perl") {
        skip("neither python3 nor perl is installed here");
        return;
    }
    let port = responder("kubernetes.default.svc.cluster.local").await;
    let nodes: Vec<Arc<dyn Remote>> = vec![
        Arc::new(LocalShell {
            name: "srv1".into(),
            path: None,
        }),
        Arc::new(LocalShell {
            name: "srv2".into(),
            path: None,
        }),
    ];
    let answers = gate(
        &nodes,
        &check(port),
        Duration::from_secs(10),
        Duration::from_millis(50),
        &Reporter::silent(),
    )
    .await
    .unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1].node, "srv2");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = gate(
        &nodes,
        &check(closed),
        Duration::from_millis(200),
        Duration::from_millis(50),
        &Reporter::silent(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.failures.len(), 2);
    let text = e.to_string();
    assert!(
        text.starts_with("cluster DNS does not answer on 2 of 2 nodes:\n  srv1: gave up after"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "a DNS answer for kubernetes.default.svc.cluster.local from 127.0.0.1:{closed} on srv2"
        )),
        "{text}"
    );
    assert!(
        text.contains("what to do: check the CoreDNS pod on srv1, srv2"),
        "{text}"
    );
}

#[test]
fn the_query_script_is_plain_posix_sh_with_no_secret() {
    let s = query_script("kubernetes.default.svc.cluster.local", 1053);
    insta::assert_snapshot!("query_script", s);
}
