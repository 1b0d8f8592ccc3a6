//! The probe matrix's expectation: the appliance's own policies (snapshot of the table, and the
//! flows issue 12 names), and each NetworkPolicy feature on small hand-written policies.

use super::*;
use crate::app::generated::Generated;
use crate::app::{App, Bundle, ClusterFacts, NodeFact, Values};

fn facts() -> ClusterFacts {
    let nodes = (1..=3)
        .map(|i| NodeFact {
            name: format!("srv{i}"),
            address: format!("10.0.0.{}", 10 + i).parse().unwrap(),
            server: true,
        })
        .collect();
    ClusterFacts::new(nodes, "10.43.0.0/16".parse().unwrap())
}

fn appliance() -> (Vec<Workload>, Vec<NetworkPolicy>) {
    let values = Values::new()
        .set("hostname", "appliance.example.internal")
        .set("gatewayPort", 8443)
        .set("apiPort", 8081)
        .set("storePort", 7379)
        .set("apiReplicas", 2)
        .set("adminEmail", "admin@example.internal");
    let app = App::load(Bundle::embedded(), values, facts()).unwrap();
    let manifests = app
        .render(&Generated::placeholder(app.spec(), "1"))
        .unwrap();
    let pols = policies(&crate::phases::enforcer::render_policies(&app).unwrap()).unwrap();
    (workloads(&manifests), pols)
}

fn verdict(cells: &[Cell], source: Source, dest: &str, port: u16) -> Verdict {
    cells
        .iter()
        .find(|c| c.source == source && c.destination == dest && c.port == port)
        .unwrap_or_else(|| panic!("no cell {source} -> {dest}:{port}"))
        .verdict
}

fn w(name: &str) -> Source {
    Source::Workload(name.into())
}

#[test]
fn the_appliances_matrix_admits_exactly_the_flows_it_needs() {
    let (ws, pols) = appliance();
    let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["store", "api", "worker", "gateway"], "{ws:?}");
    let addrs = Addresses {
        outside: Some("192.168.50.1".parse().unwrap()),
        other_node: Some("10.0.0.12".parse().unwrap()),
    };
    let cells = expected(&ws, &ws, &pols, &Namespaces::new(), addrs);
    insta::assert_snapshot!(render(&cells));
    use Verdict::*;
    // The gateway from anywhere; the API from the gateway and the worker; the store from the
    // worker and between its members.
    assert_eq!(verdict(&cells, Source::Outside, "gateway", 8443), Allow);
    assert_eq!(verdict(&cells, w("gateway"), "api", 8081), Allow);
    assert_eq!(verdict(&cells, w("worker"), "api", 8081), Allow);
    assert_eq!(verdict(&cells, w("worker"), "store", 7379), Allow);
    assert_eq!(verdict(&cells, w("store"), "store", 7380), Allow);
    // What issue 12 says must be refused from the workstation, and flows nobody needs.
    assert_eq!(verdict(&cells, Source::Outside, "store", 7379), Deny);
    assert_eq!(verdict(&cells, Source::Outside, "api", 8081), Deny);
    assert_eq!(verdict(&cells, w("gateway"), "store", 7379), Deny);
    assert_eq!(verdict(&cells, w("api"), "store", 7379), Deny);
    assert_eq!(verdict(&cells, w("worker"), "store", 7380), Deny);
    assert_eq!(verdict(&cells, Source::HostOtherNode, "api", 8081), Deny);
    // The gateway's ingress has no `from`: every source, the other node's processes too.
    assert_eq!(
        verdict(&cells, Source::HostOtherNode, "gateway", 8443),
        Allow
    );
    // The kubelet's probes: a host process on the pod's own node is always admitted.
    assert!(
        cells
            .iter()
            .filter(|c| c.source == Source::HostSameNode)
            .all(|c| c.verdict == Allow)
    );
}

fn policy(yaml: &str) -> NetworkPolicy {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    serde_json::from_value(v).unwrap()
}

fn workload(
    name: &str,
    ns: &str,
    labels: &[(&str, &str)],
    ports: &[(u16, &str, &str)],
) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ports: ports
            .iter()
            .map(|(p, proto, n)| (*p, (*proto).into(), Some((*n).into())))
            .collect(),
    }
}

#[test]
fn no_policy_admits_everything_and_an_isolating_one_only_its_rules() {
    let a = workload("a", "x", &[("app", "a")], &[]);
    let b = workload(
        "b",
        "x",
        &[("app", "b")],
        &[(80, "TCP", "http"), (53, "UDP", "dns")],
    );
    let ws = [a, b];
    let cells = expected(&ws, &ws[1..], &[], &Namespaces::new(), Addresses::default());
    assert!(
        cells.iter().all(|c| c.verdict == Verdict::Allow),
        "{cells:?}"
    );
    // Named port, TCP only, from `app=a` in the same namespace.
    let p = policy(
        "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: [{port: http}]\n",
    );
    let cells = expected(
        &ws,
        &ws[1..],
        &[p],
        &Namespaces::new(),
        Addresses::default(),
    );
    assert_eq!(verdict(&cells, w("a"), "b", 80), Verdict::Allow);
    assert_eq!(verdict(&cells, w("a"), "b", 53), Verdict::Deny);
    assert_eq!(verdict(&cells, w("b"), "b", 80), Verdict::Deny);
    assert_eq!(verdict(&cells, Source::Outside, "b", 80), Verdict::Deny);
    assert_eq!(
        verdict(&cells, Source::HostSameNode, "b", 53),
        Verdict::Allow
    );
}

#[test]
fn namespace_selectors_ip_blocks_with_except_end_ports_and_expressions() {
    let a = workload("a", "other", &[("app", "a"), ("tier", "x")], &[]);
    let b = workload(
        "b",
        "x",
        &[("app", "b")],
        &[
            (8000, "TCP", "p0"),
            (8005, "TCP", "p5"),
            (9000, "TCP", "p9"),
        ],
    );
    let ws = [a, b];
    let mut ns = Namespaces::new();
    ns.insert(
        "other".into(),
        BTreeMap::from([("team".into(), "red".into())]),
    );
    let p = policy(
        "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: red}}\n      podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [blue]}]}\n    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.9.0/24]}\n    ports: [{port: 8000, endPort: 8005}]\n",
    );
    let addrs = |ip: &str| Addresses {
        outside: Some(ip.parse().unwrap()),
        other_node: Some("10.0.0.12".parse().unwrap()),
    };
    let ps = [p];
    let cells = expected(&ws, &ws[1..], &ps, &ns, addrs("192.168.1.1"));
    assert_eq!(verdict(&cells, w("a"), "b", 8000), Verdict::Allow);
    assert_eq!(verdict(&cells, w("a"), "b", 8005), Verdict::Allow);
    assert_eq!(verdict(&cells, w("a"), "b", 9000), Verdict::Deny);
    assert_eq!(verdict(&cells, Source::Outside, "b", 8005), Verdict::Allow);
    assert_eq!(
        verdict(&cells, Source::HostOtherNode, "b", 8000),
        Verdict::Deny
    );
    // In the except range, and a namespace without the label.
    let cells = expected(&ws, &ws[1..], &ps, &ns, addrs("192.168.9.7"));
    assert_eq!(verdict(&cells, Source::Outside, "b", 8000), Verdict::Deny);
    let cells = expected(&ws, &ws[1..], &ps, &Namespaces::new(), addrs("192.168.1.1"));
    assert_eq!(verdict(&cells, w("a"), "b", 8000), Verdict::Deny);
}

#[test]
fn egress_isolation_of_the_source_denies_what_the_destination_admits() {
    let a = workload("a", "x", &[("app", "a")], &[]);
    let b = workload("b", "x", &[("app", "b")], &[(80, "TCP", "http")]);
    let c = workload("c", "x", &[("app", "c")], &[(81, "TCP", "http")]);
    let ws = [a, b, c];
    // `a` may only reach `c`; neither `b` nor `c` isolates ingress.
    let p = policy(
        "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  egress:\n  - to: [{podSelector: {matchLabels: {app: c}}}]\n",
    );
    let cells = expected(
        &ws,
        &ws[1..],
        &[p],
        &Namespaces::new(),
        Addresses::default(),
    );
    assert_eq!(verdict(&cells, w("a"), "b", 80), Verdict::Deny);
    assert_eq!(verdict(&cells, w("a"), "c", 81), Verdict::Allow);
    assert_eq!(verdict(&cells, w("b"), "c", 81), Verdict::Allow);
}

#[test]
fn the_rendered_table_has_a_row_per_source_and_a_column_per_port() {
    let cells = vec![
        Cell {
            source: Source::Outside,
            destination: "b".into(),
            port: 80,
            protocol: "TCP".into(),
            verdict: Verdict::Deny,
        },
        Cell {
            source: Source::HostSameNode,
            destination: "b".into(),
            port: 80,
            protocol: "TCP".into(),
            verdict: Verdict::Allow,
        },
    ];
    assert_eq!(
        render(&cells),
        "from \\ to         b:80/TCP\noutside           deny\nhost (same node)  allow\n"
    );
}
