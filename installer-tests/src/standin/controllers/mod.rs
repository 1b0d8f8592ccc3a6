//! The control loops that run on the server holding the store: scheduler, workload controllers,
//! node lifecycle and housekeeping. They run in one thread, a full pass every 200 ms, which for
//! a cluster of a few nodes converges within a second of any change.

pub mod core;
pub mod endpoints;
pub mod scheduler;
pub mod skew;
pub mod util;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use super::faults::LiveFaults;
use super::server::Server;
use super::store::Store;

/// Start the controllers for `srv`'s store.
pub fn spawn(store: Arc<Store>, srv: &Arc<Server>, faults: LiveFaults) {
    let cfg = srv.cfg.clone();
    let ca = srv.pki.server_ca.cert_pem.clone();
    let membership = srv.membership.clone();
    let shutdown = srv.shutdown.clone();
    let advertise = cfg.advertise_ip();
    core::bootstrap(
        &store,
        &cfg.first_service_ip(),
        std::slice::from_ref(&advertise),
        cfg.https_port,
        &ca,
    );
    let servicelb = !cfg.disable.iter().any(|d| d == "servicelb");
    let mut skew = skew::SkewWatch::new(&srv.server_dir);
    std::thread::spawn(move || {
        let rec = util::Recorder::default();
        let mut last_ips: Vec<String> = Vec::new();
        let mut known_nodes: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut next_expiry = std::time::Instant::now();
        while !shutdown.is_cancelled() {
            let f = faults.get();
            store
                .trace
                .store(f.trace_writes, std::sync::atomic::Ordering::Relaxed);
            if !f.lose_node {
                core::namespaces(&store, &ca);
                if servicelb {
                    core::servicelb(&store);
                }
                workloads::deployments(&store, &rec);
                workloads::replicasets(&store, &rec);
                workloads::daemonsets(&store, &rec);
                workloads::statefulsets(&store, &rec);
                workloads::jobs(&store, &rec);
                scheduler::run(&store, &rec);
                core::nodes(
                    &store,
                    &rec,
                    &cfg.cluster_cidr,
                    f.node_monitor_grace_period.as_secs() as i64,
                );
                endpoints::run(&store);
                core::garbage_collect(&store);
                skew.check(&store);
                if std::time::Instant::now() >= next_expiry {
                    core::expire_events(&store);
                    next_expiry = std::time::Instant::now() + Duration::from_secs(60);
                }
                workloads::pdbs(&store);
                // The kubernetes Endpoints follow the etcd voters; deleted nodes leave etcd.
                let nodes: std::collections::BTreeSet<String> = store
                    .all(super::store::resources::core("nodes"))
                    .iter()
                    .map(|n| util::meta(n, "name").to_string())
                    .collect();
                if let Some(m) = &membership {
                    for gone in known_nodes.difference(&nodes) {
                        if *gone != cfg.node.node_name {
                            m.remove_node(gone);
                        }
                    }
                    let ips: Vec<String> = m
                        .members()
                        .iter()
                        .filter(|x| !x.is_learner)
                        .map(|x| x.address.clone())
                        .collect();
                    if ips != last_ips && !ips.is_empty() {
                        core::endpoints(&store, &ips, cfg.https_port);
                        last_ips = ips;
                    }
                }
                known_nodes = nodes;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}
