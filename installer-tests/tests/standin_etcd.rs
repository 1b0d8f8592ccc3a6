//! The real etcd members the stand-in runs (`standin::etcd`), on loopback: a three-member
//! cluster built the way k3s builds it (one learner at a time, then promoted) keeps taking writes
//! with one member down, refuses them with etcd's error with two down, and a member that comes
//! back catches up. Needs Debian's `etcd-server` (`/usr/bin/etcd`); without it the test fails
//! under `LAB_REQUIRED=1` and says why otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use installer_tests::standin::cluster::{TOO_MANY_LEARNERS, UNHEALTHY};
use installer_tests::standin::etcd::{
    self, EtcdClient, EtcdError, EtcdProcess, EtcdTls, Initial, MemberSpec,
};
use installer_tests::standin::testing::loopback_ip;
use installer_tests::standin::tls_files::{self, ClusterPki};

fn etcd_available() -> bool {
    if etcd::binary().exists() {
        return true;
    }
    let msg = format!(
        "{} missing: install Debian's etcd-server",
        etcd::binary().display()
    );
    assert!(std::env::var_os("LAB_REQUIRED").is_none(), "{msg}");
    eprintln!("skipping: {msg}");
    false
}

struct Member {
    spec: MemberSpec,
    proc: Option<EtcdProcess>,
    tls: EtcdTls,
    _dir: tempfile::TempDir,
}

impl Member {
    fn prepare(node: &str, pki: &ClusterPki) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server");
        // What a joining server receives in its bootstrap data: the etcd CAs.
        for (f, ck) in [
            ("server-ca", &pki.etcd_server_ca),
            ("peer-ca", &pki.etcd_peer_ca),
        ] {
            tls_files::write_file(
                &server.join(format!("tls/etcd/{f}.crt")),
                ck.cert_pem.as_bytes(),
                0o644,
            )
            .unwrap();
        }
        let name = format!("{node}-{:08x}", rand::random::<u32>());
        let spec = MemberSpec::new(&name, &server, &loopback_ip());
        let tls = etcd::write_certs(&spec, pki).unwrap();
        Member {
            spec,
            proc: None,
            tls,
            _dir: dir,
        }
    }

    fn start(&mut self, initial: &Initial) {
        self.proc = Some(EtcdProcess::start(&self.spec, initial).unwrap());
    }

    async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop().await;
        }
    }

    fn client(&self, deadline: Duration) -> EtcdClient {
        EtcdClient::new(&self.tls, vec![self.spec.client_url()], deadline).unwrap()
    }
}

/// Add `m` as a learner through `via`, start it, and promote it once it has caught up.
async fn join(via: &EtcdClient, m: &mut Member) {
    // k3s's pollJoin retries etcd's "unhealthy cluster" (a member joined moments ago).
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        match via.member_add_learner(&m.spec.peer_url()).await {
            Ok(a) => break a,
            Err(EtcdError::Server(e)) if e == UNHEALTHY && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("add {}: {e}", m.spec.name),
        }
    };
    start_and_promote(via, m, added).await;
}

/// Start a member added as a learner and promote it once it has caught up.
async fn start_and_promote(
    via: &EtcdClient,
    m: &mut Member,
    (added, all): (etcd::MemberInfo, Vec<etcd::MemberInfo>),
) {
    assert!(added.is_learner);
    let initial: Vec<(String, String)> = all
        .iter()
        .map(|x| {
            let name = if x.id == added.id {
                m.spec.name.clone()
            } else {
                x.name.clone()
            };
            (name, x.peer_urls[0].clone())
        })
        .collect();
    m.start(&Initial::Existing(initial));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match via.member_promote(added.id).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "promotion of {}: {e}",
                    m.spec.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Retry `put` until it succeeds (a new leader is being elected) or `within` passes.
async fn put_eventually(c: &EtcdClient, key: &str, value: &[u8], within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        match c.put(key, value).await {
            Ok(rev) => return rev,
            Err(e) => {
                assert!(Instant::now() < deadline, "put {key}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_one_loss_refuse_writes_without_quorum_and_catch_up() {
    if !etcd_available() {
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_generate(&pki_dir.path().join("server")).unwrap();
    let mut m1 = Member::prepare("node1", &pki);
    let mut m2 = Member::prepare("node2", &pki);
    let mut m3 = Member::prepare("node3", &pki);

    let t0 = Instant::now();
    m1.start(&Initial::New);
    let c1 = m1.client(Duration::from_secs(2));
    c1.wait_healthy(Duration::from_secs(20)).await.unwrap();
    eprintln!(
        "figure: new single-member cluster healthy in {:?}",
        t0.elapsed()
    );
    assert!(m1.spec.has_data());
    // Regression: `ss -tlnp` must show 2379/2380 held by `k3s`, as etcd is part of k3s's process
    // (the installer's preflight refused a rerun when they were held by `etcd`).
    let pid = m1.proc.as_ref().unwrap().id().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "k3s");

    let rev = c1.put("/registry/test/a", b"one").await.unwrap();
    assert!(rev > 1);

    // One learner at a time, as k3s's joins see it.
    let t1 = Instant::now();
    let learner = c1.member_add_learner(&m2.spec.peer_url()).await.unwrap();
    let second = c1.member_add_learner(&m3.spec.peer_url()).await;
    assert_eq!(
        second,
        Err(EtcdError::Server(TOO_MANY_LEARNERS.to_string()))
    );
    start_and_promote(&c1, &mut m2, learner).await;
    eprintln!(
        "figure: second member joined and promoted in {:?}",
        t1.elapsed()
    );
    join(&c1, &mut m3).await;
    let members = c1.member_list().await.unwrap();
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    let mut want = vec![
        m1.spec.name.clone(),
        m2.spec.name.clone(),
        m3.spec.name.clone(),
    ];
    want.sort();
    assert_eq!(names, want);
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    // Replicated: the first write is on the joiners.
    let got = m3
        .client(Duration::from_secs(2))
        .get("/registry/test/a")
        .await
        .unwrap();
    assert_eq!(got.map(|kv| kv.value), Some(b"one".to_vec()));

    // One of three down: a client of all endpoints keeps writing.
    m1.kill().await;
    let all = EtcdClient::new(
        &m2.tls,
        vec![
            m1.spec.client_url(),
            m2.spec.client_url(),
            m3.spec.client_url(),
        ],
        Duration::from_secs(2),
    )
    .unwrap();
    let t2 = Instant::now();
    put_eventually(&all, "/registry/test/b", b"two", Duration::from_secs(20)).await;
    eprintln!(
        "figure: first write after losing a member in {:?}",
        t2.elapsed()
    );

    // Two of three down: writes fail with etcd's error within the deadline.
    m2.kill().await;
    let c3 = m3.client(Duration::from_secs(3));
    let t3 = Instant::now();
    let err = c3.put("/registry/test/c", b"three").await.unwrap_err();
    assert!(t3.elapsed() < Duration::from_secs(10));
    let text = err.to_string();
    assert!(
        text == etcd::DEADLINE_EXCEEDED
            || text.contains("etcdserver: request timed out")
            || text.contains("etcdserver: no leader"),
        "{text}"
    );
    assert!(!c3.endpoint_health(&m3.spec.client_url()).await);

    // A member comes back: quorum again, and it sees what was written while it was down.
    m1.start(&Initial::Restart);
    put_eventually(&c3, "/registry/test/c", b"three", Duration::from_secs(20)).await;
    let c1 = m1.client(Duration::from_secs(2));
    c1.wait_healthy(Duration::from_secs(20)).await.unwrap();
    let b = c1.get("/registry/test/b").await.unwrap().map(|kv| kv.value);
    assert_eq!(b, Some(b"two".to_vec()));
    let (kvs, _) = c1.list_prefix("/registry/test/").await.unwrap();
    assert_eq!(kvs.len(), 3);

    m1.kill().await;
    m3.kill().await;
}
