//! The cross-node reachability check of preflight: every node must reach every other node
//! on the ports the cluster uses between nodes (6443 and 2379-2380 on servers, 10250 and
//! every application port on all nodes). Peers' users hit firewalls between nodes only at
//! join time (field lessons §2-§3: Gravity and EC check this up front; kismatic#928 shows
//! port checks must survive a rerun), so we prove it before changing anything.
//!
//! How: on each node, a temporary listener (python3, else perl) binds every port of the
//! set that is free on that node and exits on its own after a deadline (and is killed as
//! soon as the check ends); ports already held by k3s (a rerun) are tested against k3s
//! itself. Then every node connects to every other node's ports (bash `/dev/tcp`, with a
//! timeout). Nothing is left behind on any host.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::host::{Remote, RemoteCommand, RemoteExt, shell_quote};
use crate::phases::context::Goal;
use crate::phases::ids::PhaseId;
use crate::phases::ops::Ops;
use crate::report::Reporter;

/// A node taking part in the check.
#[derive(Clone)]
pub struct Node {
    pub remote: Arc<dyn Remote>,
    /// The address other nodes use to reach it (its node IP).
    pub ip: IpAddr,
    /// Ports other nodes must reach on it.
    pub ports: Vec<u16>,
    /// Of those, the ports that already have a listener (left alone, connected to as is).
    pub busy: Vec<u16>,
    pub have_python3: bool,
    pub have_perl: bool,
}

/// A connection that failed: from, to, port, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub from: String,
    pub to: String,
    pub to_ip: IpAddr,
    pub port: u16,
    pub reason: String,
}

/// Seconds a temporary listener lives at most, whatever happens to the installer.
const LISTENER_DEADLINE_S: u64 = 60;
/// The marker file a listener writes once bound; removed with the listener.
const READY_DIR: &str = "/run/installer-reach";

fn python_listener(ports: &[u16]) -> String {
    let list = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"import socket,select,time
ss=[]
for p in [{list}]:
    try:
        s=socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)
        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
        s.bind(("::",p))
    except OSError:
        s=socket.socket(socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
        s.bind(("0.0.0.0",p))
    s.listen(64); ss.append(s)
open("{READY_DIR}/ready","w").write("ok")
end=time.time()+{LISTENER_DEADLINE_S}
while time.time()<end:
    r,_,_=select.select(ss,[],[],0.5)
    for s in r:
        c,_=s.accept(); c.close()
"#
    )
}

fn perl_listener(ports: &[u16]) -> String {
    let list = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"use IO::Socket::INET; use IO::Select;
my $sel=IO::Select->new;
for my $p ({list}) {{ my $s=IO::Socket::INET->new(LocalAddr=>"0.0.0.0",LocalPort=>$p,Listen=>64,ReuseAddr=>1) or die "bind $p: $!"; $sel->add($s); }}
open(my $f,">","{READY_DIR}/ready"); print $f "ok"; close $f;
my $end=time+{LISTENER_DEADLINE_S};
while (time<$end) {{ for my $s ($sel->can_read(0.5)) {{ my $c=$s->accept; close $c if $c; }} }}
"#
    )
}

/// The script that starts a listener in the background and waits until it is bound.
fn start_script(node: &Node, ports: &[u16]) -> Option<String> {
    let (interp, prog) = if node.have_python3 {
        ("python3", python_listener(ports))
    } else if node.have_perl {
        ("perl", perl_listener(ports))
    } else {
        return None;
    };
    let flag = if interp == "python3" { "-c" } else { "-e" };
    Some(format!(
        "mkdir -p {READY_DIR} && rm -f {READY_DIR}/ready {READY_DIR}/pid\n\
         nohup {interp} {flag} {prog} >{READY_DIR}/log 2>&1 </dev/null &\n\
         echo $! > {READY_DIR}/pid\n\
         i=0; while [ ! -f {READY_DIR}/ready ]; do\n\
           if ! kill -0 $(cat {READY_DIR}/pid) 2>/dev/null; then cat {READY_DIR}/log >&2; exit 1; fi\n\
           i=$((i+1)); [ $i -gt 100 ] && {{ echo 'listener did not start' >&2; exit 1; }}; sleep 0.1\n\
         done",
        prog = shell_quote(&prog)
    ))
}

const STOP_SCRIPT: &str = "if [ -f /run/installer-reach/pid ]; then kill $(cat /run/installer-reach/pid) 2>/dev/null; fi; rm -rf /run/installer-reach";

/// The script that connects to each (ip, port) and prints `ok ip port` or `fail ip port`.
fn connect_script(targets: &[(IpAddr, u16)]) -> String {
    let mut s = String::new();
    for (ip, port) in targets {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string(),
        };
        s.push_str(&format!(
            "if timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null; then echo 'ok {host} {port}'; else echo 'fail {host} {port}'; fi\n"
        ));
    }
    s
}

/// Runs the check across `nodes` and returns every connection that failed.
/// Errors (a host that cannot run the check at all) come back as `Err` with the host named.
/// Runs the check. The temporary listeners go through the door for host changes: in a
/// dry run they are reported as probes that would run, and the check returns `None`.
pub async fn check(
    nodes: &[Node],
    goal: Goal,
    reporter: &Reporter,
) -> Result<Option<Vec<Unreachable>>, crate::host::HostError> {
    let mut started: Vec<(&Node, Ops)> = Vec::new();
    let mut result = Ok(Vec::new());
    for node in nodes {
        let free: Vec<u16> = node
            .ports
            .iter()
            .copied()
            .filter(|p| !node.busy.contains(p))
            .collect();
        if free.is_empty() {
            continue;
        }
        let Some(script) = start_script(node, &free) else {
            result = Err(crate::host::HostError::Other {
                host: node.remote.name().to_owned(),
                message: "neither python3 nor perl is installed, so the reachability check cannot open test listeners".into(),
            });
            break;
        };
        let ops = Ops::new(node.remote.clone(), PhaseId::Preflight.id(), reporter, goal);
        let what = format!(
            "open temporary test listeners on TCP {} (gone within {LISTENER_DEADLINE_S} s)",
            free.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        match ops
            .probe(
                &what,
                RemoteCommand::new(script)
                    .sudo()
                    .timeout(Duration::from_secs(30)),
            )
            .await
        {
            Ok(Some(_)) => started.push((node, ops)),
            Ok(None) => {}
            Err(e) => {
                // It may have started before failing: stop it too.
                started.push((node, ops));
                result = Err(e);
                break;
            }
        }
    }
    if !goal.allows_probes() {
        return result.map(|_| None);
    }
    if result.is_ok() {
        let checks = nodes.iter().map(|from| {
            let targets: Vec<(IpAddr, u16)> = nodes
                .iter()
                .filter(|to| to.ip != from.ip)
                .flat_map(|to| to.ports.iter().map(move |p| (to.ip, *p)))
                .collect();
            async move {
                let out = from
                    .remote
                    .run(
                        RemoteCommand::new(connect_script(&targets))
                            .timeout(Duration::from_secs(10 + 4 * targets.len() as u64)),
                    )
                    .await?;
                Ok::<_, crate::host::HostError>(parse_connect_output(
                    from.remote.name(),
                    &out.stdout_str(),
                    nodes,
                ))
            }
        });
        result = futures::future::join_all(checks)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect());
    }
    // Always stop every listener that was started, even after a failure.
    for (_, ops) in started {
        let _ = ops
            .probe(
                "stop the temporary test listeners",
                RemoteCommand::new(STOP_SCRIPT)
                    .sudo()
                    .timeout(Duration::from_secs(15)),
            )
            .await;
    }
    result.map(Some)
}

fn parse_connect_output(from: &str, out: &str, nodes: &[Node]) -> Vec<Unreachable> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (status, ip, port) = (it.next()?, it.next()?, it.next()?);
            if status != "fail" {
                return None;
            }
            let ip: IpAddr = ip.parse().ok()?;
            let to = nodes.iter().find(|n| n.ip == ip)?;
            Some(Unreachable {
                from: from.to_owned(),
                to: to.remote.name().to_owned(),
                to_ip: ip,
                port: port.parse().ok()?,
                reason: "connection refused or timed out".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_valid_sh_and_the_listener_runs_here() {
        let node_py = |py| Node {
            remote: Arc::new(NoRemote),
            ip: "127.0.0.1".parse().unwrap(),
            ports: vec![1],
            busy: vec![],
            have_python3: py,
            have_perl: !py,
        };
        for py in [true, false] {
            let s = start_script(&node_py(py), &[1]).unwrap();
            let st = std::process::Command::new("sh")
                .args(["-n", "-c", &s])
                .status()
                .unwrap();
            assert!(st.success());
        }
        let st = std::process::Command::new("sh")
            .args([
                "-n",
                "-c",
                &connect_script(&[("10.0.0.1".parse().unwrap(), 6443)]),
            ])
            .status()
            .unwrap();
        assert!(st.success());
        // The python program itself compiles (catches a formatting slip in the template).
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_ok()
        {
            let st = std::process::Command::new("python3")
                .args([
                    "-c",
                    &format!(
                        "import ast; ast.parse({:?})",
                        python_listener(&[8443, 10250])
                    ),
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    #[test]
    fn parse_connect_output_names_both_ends() {
        let nodes = vec![Node {
            remote: Arc::new(NoRemote),
            ip: "10.0.0.12".parse().unwrap(),
            ports: vec![6443],
            busy: vec![],
            have_python3: true,
            have_perl: true,
        }];
        let out = "ok 10.0.0.12 10250\nfail 10.0.0.12 6443\n";
        let u = parse_connect_output("10.0.0.11", out, &nodes);
        assert_eq!(
            u,
            vec![Unreachable {
                from: "10.0.0.11".into(),
                to: "norem".into(),
                to_ip: "10.0.0.12".parse().unwrap(),
                port: 6443,
                reason: "connection refused or timed out".into()
            }]
        );
    }

    struct NoRemote;
    #[async_trait::async_trait]
    impl Remote for NoRemote {
        fn name(&self) -> &str {
            "norem"
        }
        async fn exec(
            &self,
            _: RemoteCommand,
        ) -> Result<crate::host::CommandOutput, crate::host::HostError> {
            Err(crate::host::HostError::Other {
                host: "norem".into(),
                message: "no".into(),
            })
        }
        async fn upload(
            &self,
            _: &crate::host::UploadSource,
            _: &crate::host::UploadTarget,
            _: Option<crate::host::Progress>,
        ) -> Result<crate::host::UploadOutcome, crate::host::HostError> {
            Err(crate::host::HostError::Other {
                host: "norem".into(),
                message: "no".into(),
            })
        }
        async fn connect_tcp(
            &self,
            _: &str,
            _: u16,
        ) -> Result<crate::host::Tunnel, crate::host::HostError> {
            Err(crate::host::HostError::Other {
                host: "norem".into(),
                message: "no".into(),
            })
        }
    }
}
