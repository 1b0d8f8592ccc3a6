//! The lab's fault helpers do what they say and are undone: stop/kill/start a node, link down/up,
//! kill sshd, occupy a TCP port, fill /var/lib/rancher. Needs root and the lab; skipped with the
//! reason otherwise (failed under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use installer_tests::lab::{self, Lab, Node};

fn reachable(n: &Node, port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((n.addr, port)),
        Duration::from_millis(700),
    )
    .is_ok()
}

fn login_works(lab: &Lab, n: &Node) -> bool {
    lab.ssh_as_timeout(lab::ROOT_USER, n, "true", Duration::from_secs(15))
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn stop_kill_start_and_link_faults() {
    let Some(lab) = installer_tests::lab_or_skip!(3) else {
        return;
    };
    let (n1, n2, n3) = (&lab.nodes()[0], &lab.nodes()[1], &lab.nodes()[2]);
    let layout = lab.layout().clone();

    // stop: clean halt; the node is gone from the network; start boots the same disk again.
    lab.ssh_ok(n2, "echo kept > /root/marker").unwrap();
    lab.stop_node(n2).unwrap();
    assert!(!lab.is_running(n2));
    assert!(!reachable(n2, 22));
    assert!(!login_works(&lab, n2));
    lab.start_node(n2).unwrap();
    assert!(lab.is_running(n2));
    assert_eq!(
        lab.ssh_ok(n2, "cat /root/marker").unwrap(),
        "kept\n",
        "the disk survives a stop"
    );
    // same host key: the strict login against the unchanged known_hosts works.
    assert!(login_works(&lab, n2));

    // reboot = clean halt + boot of the same disk.
    let before = lab
        .ssh_ok(
            n2,
            "systemctl show -p ActiveEnterTimestampMonotonic --value init.scope",
        )
        .unwrap();
    lab.reboot_node(n2).unwrap();
    let after = lab
        .ssh_ok(
            n2,
            "systemctl show -p ActiveEnterTimestampMonotonic --value init.scope",
        )
        .unwrap();
    assert_ne!(before, after, "node2's systemd did not start again");
    assert_eq!(lab.ssh_ok(n2, "cat /root/marker").unwrap(), "kept\n");

    // kill: no shutdown at all, every process gone at once; the node boots again afterwards.
    let boot_before = lab.ssh_ok(n3, "cat /proc/sys/kernel/random/boot_id; systemctl show -p ActiveEnterTimestampMonotonic --value init.scope").unwrap();
    lab.kill_node(n3).unwrap();
    assert!(!lab.is_running(n3));
    assert!(!reachable(n3, 22));
    lab.start_node(n3).unwrap();
    assert!(login_works(&lab, n3));
    let boot_after = lab.ssh_ok(n3, "cat /proc/sys/kernel/random/boot_id; systemctl show -p ActiveEnterTimestampMonotonic --value init.scope").unwrap();
    assert_ne!(boot_before, boot_after, "n3's systemd did not start again");
    // a killed node leaves nothing of a second instance behind
    assert_eq!(lab.ssh_ok(n3, "hostname").unwrap().trim(), "node3");

    // link down: unreachable from the host and from the other nodes; link up restores it.
    lab.link_down(n1).unwrap();
    assert!(
        !reachable(n1, 22),
        "node1 still reachable with its link down"
    );
    let out = lab.ssh(n2, &format!("ping -c 1 -W 1 {}", n1.addr)).unwrap();
    assert!(!out.status.success(), "node2 still reaches node1");
    // ... while node1 itself still runs and keeps its address (seen out of band).
    let addrs = lab.exec_ok(n1, "ip -4 -o addr show dev host0").unwrap();
    assert!(addrs.contains(&n1.addr.to_string()), "{addrs}");
    lab.link_up(n1).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if reachable(n1, 22) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "node1 unreachable after link up");
    lab.ssh_ok(n2, &format!("ping -c 1 -W 2 {}", n1.addr))
        .unwrap();

    lab.down().unwrap();
    // systemd removes a stopped machine's scope on its own schedule: poll, then name what is
    // left (a CI run once failed here with nothing said).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = lab::leftovers(&layout);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = lab::leftovers(&layout);
    }
    assert!(left.is_empty(), "left after down: {left:?}");
}

#[test]
fn sshd_port_and_disk_faults() {
    let Some(lab) = installer_tests::lab_or_skip!(Lab::builder(2).rancher_size_mib(16)) else {
        return;
    };
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);

    // kill sshd: new logins refused (connection refused, not a timeout), sshd not restarted by
    // systemd; the guard brings it back.
    let guard = lab.kill_sshd(n1).unwrap();
    assert!(!reachable(n1, 22));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!reachable(n1, 22), "systemd restarted sshd");
    let out = lab.ssh(n1, "true").unwrap();
    assert_eq!(out.status.code(), Some(255));
    guard.restore().unwrap();
    assert!(login_works(&lab, n1));
    // dropping the guard undoes it too
    {
        let _g = lab.kill_sshd(n1).unwrap();
        assert!(!reachable(n1, 22));
    }
    assert!(login_works(&lab, n1));

    // occupy a port: something listens on it (as ss shows); a second taker fails; drop frees it.
    {
        let g = lab.occupy_port(n2, 6443).unwrap();
        assert_eq!(g.port(), 6443);
        let ss = lab.ssh_ok(n2, "ss -Hltnp 'sport = :6443'").unwrap();
        assert!(ss.contains(":6443") && ss.contains("perl"), "{ss}");
        assert!(reachable(n2, 6443));
        assert!(
            lab.occupy_port(n2, 6443).is_err(),
            "the port was taken twice"
        );
    }
    let ss = lab.ssh_ok(n2, "ss -Hltn 'sport = :6443'").unwrap();
    assert!(ss.trim().is_empty(), "port still occupied: {ss}");
    assert!(!reachable(n2, 6443));

    // fill the disk: /var/lib/rancher is full, writes fail with ENOSPC; restore frees it.
    let df = lab
        .ssh_ok(n1, "df -k --output=size /var/lib/rancher | tail -n 1")
        .unwrap();
    assert!(
        df.trim().parse::<u64>().unwrap() <= 16 * 1024,
        "not size-limited: {df}"
    );
    let g = lab.fill_disk(n1).unwrap();
    let out = lab
        .ssh(n1, "head -c 100000 /dev/zero > /var/lib/rancher/more")
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "{out:?}"
    );
    // the other node's disk is its own
    lab.ssh_ok(n2, "head -c 100000 /dev/zero > /var/lib/rancher/more")
        .unwrap();
    g.restore().unwrap();
    lab.ssh_ok(n1, "head -c 100000 /dev/zero > /var/lib/rancher/more")
        .unwrap();

    lab.down().unwrap();
}
