//! End to end (issue 15): `installer support-bundle` against a lab cluster installed with
//! the real installer (systemd, OpenSSH, the k3s stand-in): a healthy bundle, canaries that
//! must not survive, a hanging collector, a dead node, k3s stopped on every server.
//! Needs root; skips with the reason otherwise (fails instead under LAB_REQUIRED=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use installer_tests::e2e::{self, Env, Run};
use installer_tests::lab_or_skip;

const APP_CANARY: &str = "CANARY-app-7f3e9a1c-secret";
const JOURNAL_CANARY: &str = "CANARY-journal-5b2d8e4f";
const PROC_CANARY: &str = "CANARY-proc-9c1a7e3b";
const CM_CANARY: &str = "CANARY-configmap-3e8d1f6a";
const LOG_CANARY: &str = "CANARY-podlog-6a0c2d9e";

/// Runs the bundle into a fresh directory; returns the run, the archive and its extraction.
fn bundle(
    env: &Env,
    answers: &Path,
    name: &str,
    extra: &[&str],
) -> (Run, Option<PathBuf>, PathBuf, f64) {
    let out = env.work.path().join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut args = vec!["support-bundle", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let run = env.run(answers, &args).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let archive = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"));
    let x = out.join("x");
    if let Some(a) = &archive {
        std::fs::create_dir_all(&x).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(a)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success(), "tar cannot open {}", a.display());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let size = std::fs::metadata(a).unwrap().len();
        println!(
            "BUNDLE {name}: {secs:.1} s, {size} bytes compressed, exit {}",
            run.code
        );
    }
    let root = std::fs::read_dir(&x)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
        .unwrap_or(x);
    (run, archive, root, secs)
}

fn json(root: &Path, f: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join(f)).unwrap()).unwrap()
}

fn items<'a>(m: &'a serde_json::Value, node: Option<&str>) -> Vec<&'a serde_json::Value> {
    m["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["node"].as_str() == node)
        .collect()
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn support_bundle_on_a_three_host_cluster() {
    let Some(lab) = lab_or_skip!(3) else { return };
    let env = Env::new().unwrap();
    let answers = env
        .answers_variant(&lab, "bundle", |t| {
            format!("{t}  app:\n    values:\n      adminPassword: {APP_CANARY:?}\n")
        })
        .unwrap();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let n = lab.nodes();

    // Canaries on the nodes: a journal line, a process argument, a known secret base64'd
    // in a file a collector reads.
    let token = lab
        .exec_ok(&n[0], "cat /var/lib/rancher/k3s/server/token")
        .unwrap()
        .trim()
        .to_owned();
    let b64 = base64_std(&token);
    lab.exec_ok(&n[0], &format!("logger token={JOURNAL_CANARY}"))
        .unwrap();
    lab.exec_ok(
        &n[1],
        &format!("systemd-run --unit bundle-canary sh -c 'sleep 900' --db-password={PROC_CANARY}"),
    )
    .unwrap();
    lab.exec_ok(
        &n[2],
        &format!("mkdir -p /var/lib/installer && echo {b64} > /var/lib/installer/canary.b64"),
    )
    .unwrap();

    // And one in a ConfigMap of the application's namespace, as an application's JSON setting.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(cluster_client(&answers));
    rt.block_on(async {
        use k8s_openapi::api::core::v1::ConfigMap;
        let ns = app_namespace(&client).await;
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bundle-canary", "namespace": ns},
            "data": {"settings.json": format!("{{\"apiKey\":\"{CM_CANARY}\"}}")}
        }))
        .unwrap();
        kube::Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &cm)
            .await
            .unwrap();
    });

    // And one in an application pod's log, as its program would print it (JSON logging): a
    // line appended to the container's CRI log file on its node, which the kubelet serves.
    let (pod_ns, pod_name, pod_uid, pod_node, pod_container) = rt.block_on(async {
        use k8s_openapi::api::core::v1::Pod;
        let ns = app_namespace(&client).await;
        let pods = kube::Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap();
        let p = pods
            .items
            .iter()
            .find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .expect("a scheduled application pod");
        let spec = p.spec.clone().unwrap();
        (
            ns,
            p.metadata.name.clone().unwrap(),
            p.metadata.uid.clone().unwrap(),
            spec.node_name.unwrap(),
            spec.containers[0].name.clone(),
        )
    });
    let log_node = n
        .iter()
        .find(|x| x.name == pod_node)
        .expect("the pod's node");
    lab.exec_ok(
        log_node,
        &format!(
            "f=$(ls -v /var/log/pods/{pod_ns}_{pod_name}_{pod_uid}/{pod_container}/*.log | tail -1) && \
             printf '%s stdout F {{\"level\":\"info\",\"apiKey\":\"{LOG_CANARY}\"}}\n' \
             \"$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z)\" >> \"$f\""
        ),
    )
    .unwrap();

    // 1. Healthy: every collector ok (or skipped where it does not apply), opens with tar.
    let (run, archive, root, secs) = bundle(&env, &answers, "healthy", &[]);
    let m = json(&root, "manifest.json");
    for i in m["items"].as_array().unwrap() {
        if i["status"] != "ok" {
            println!("NOT OK: {i}");
        }
    }
    assert_eq!(run.code, 0, "exit {}", run.code);
    assert!(archive.is_some());
    let m = json(&root, "manifest.json");
    assert_eq!(m["api"]["reachable"], true, "{m}");
    for node in [n[0].name.as_str(), n[1].name.as_str(), n[2].name.as_str()] {
        let its = items(&m, Some(node));
        assert!(its.len() >= 25, "{node}: {}", its.len());
        for i in its {
            let st = i["status"].as_str().unwrap();
            assert!(
                st == "ok" || (st == "skipped" && i["id"] == "pod-logs"),
                "{node}: {i}"
            );
        }
    }
    for i in items(&m, None) {
        assert_eq!(i["status"], "ok", "{i}");
    }
    assert!(
        items(&m, None)
            .iter()
            .any(|i| i["id"] == "cluster/nodes" && i["status"] == "ok"),
        "{m}"
    );
    assert!(root.join("cluster/nodes.json").exists() && root.join("installer/plan.json").exists());
    // Every node's policy enforcer: its /state as it answered, and its pod's log.
    for node in n {
        let state = json(&root, &format!("nodes/{}/enforcer/state.json", node.name));
        assert_eq!(state["node"], node.name.as_str(), "{state}");
        assert_eq!(state["mode"], "enforce", "{state}");
        assert_eq!(state["ready"], true, "{state}");
        assert!(state["stats"]["rules"].as_u64() > Some(0), "{state}");
        let log =
            std::fs::read_to_string(root.join(format!("nodes/{}/enforcer/log.txt", node.name)))
                .unwrap();
        assert!(log.contains("rules applied"), "{}: {log}", node.name);
    }
    println!("BUNDLE healthy-3: {secs:.1} s");

    // Canaries: none present in any form; counted.
    let mut files = Vec::new();
    all_files(&root, &mut files);
    let canaries = [
        APP_CANARY.to_owned(),
        token.clone(),
        JOURNAL_CANARY.into(),
        PROC_CANARY.into(),
        CM_CANARY.into(),
        LOG_CANARY.into(),
    ];
    let forms: Vec<String> = canaries
        .iter()
        .flat_map(|c| installer::secret::encoded_forms(c))
        .collect();
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "a canary form survives in {}",
                f.display()
            );
        }
    }
    let r = json(&root, "redactions.json");
    assert!(
        r["totals"]["known-secret"].as_u64().unwrap_or(0) >= 2,
        "{r}"
    );
    assert!(
        r["totals"]["key-value-inline"].as_u64().unwrap_or(0) >= 2,
        "{r}"
    );
    assert_eq!(r["selfcheck"], "passed");
    assert!(
        r["files"]["installer/answers.yaml"]["known-secret"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{r}"
    );
    assert!(
        r["files"][format!("nodes/{}/installer-on-node.txt", n[2].name)]["known-secret"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{r}"
    );
    assert!(
        r["files"][format!("nodes/{}/system/processes.txt", n[1].name)]["key-value-inline"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{r}"
    );
    assert!(
        r["files"][format!("nodes/{}/journal/system.log", n[0].name)]["key-value-inline"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{r}"
    );
    let cm_file = format!(
        "cluster/{}/configmaps.json",
        rt.block_on(app_namespace(&client))
    );
    let cm_masked: u64 = r["files"][&cm_file]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert!(cm_masked >= 1, "nothing masked in {cm_file}: {r}");
    assert!(
        std::fs::read_to_string(root.join(&cm_file))
            .unwrap()
            .contains("bundle-canary"),
        "the canary ConfigMap was not collected"
    );
    let pod_log = format!("cluster/{pod_ns}/logs/{pod_name}/{pod_container}.log");
    let text = std::fs::read_to_string(root.join(&pod_log))
        .unwrap_or_else(|e| panic!("{pod_log} not collected: {e}"));
    assert!(
        text.contains("simulated container") && text.contains(r#""apiKey":"#),
        "{pod_log}: {text}"
    );
    assert!(
        r["files"][&pod_log]["json-secret"].as_u64().unwrap_or(0) >= 1,
        "{pod_log} not counted: {r}"
    );
    let journal =
        std::fs::read_to_string(root.join(format!("nodes/{}/journal/system.log", n[0].name)))
            .unwrap();
    assert!(
        journal.contains("token=***"),
        "the journal canary line was not collected"
    );
    let procs =
        std::fs::read_to_string(root.join(format!("nodes/{}/system/processes.txt", n[1].name)))
            .unwrap();
    assert!(
        procs.contains("--db-password=***"),
        "the process canary was not collected"
    );
    let state =
        std::fs::read_to_string(root.join(format!("nodes/{}/installer-on-node.txt", n[2].name)))
            .unwrap();
    assert!(
        state.contains("canary.b64"),
        "the base64 canary file was not collected"
    );

    // 2. A hanging collector is cut at its limit; the rest still runs. (`lsblk`, which only
    //    the disks collector uses: a hung `nft` already stops connect's facts, which call it.)
    lab.exec_ok(
        &n[1],
        "printf '#!/bin/sh\\nsleep 1000\\n' > /usr/local/bin/lsblk && chmod 755 /usr/local/bin/lsblk",
    )
    .unwrap();
    let (run, _, root, secs) = bundle(&env, &answers, "hang", &[]);
    lab.exec_ok(&n[1], "rm -f /usr/local/bin/lsblk").unwrap();
    assert_eq!(run.code, 3, "{}", run.all());
    let m = json(&root, "manifest.json");
    for i in m["items"].as_array().unwrap() {
        if i["status"] != "ok" && i["status"] != "skipped" {
            println!("HANG NOT OK: {i}");
        }
    }
    let hung: Vec<_> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "timeout")
        .collect();
    assert_eq!(hung.len(), 1, "{hung:?}");
    assert_eq!(hung[0]["id"], "system/disks");
    assert!(
        hung[0]["duration_ms"].as_u64().unwrap() < 45_000,
        "{}",
        hung[0]
    );
    assert!(
        items(&m, Some(&n[1].name))
            .iter()
            .filter(|i| i["status"] == "ok")
            .count()
            >= 24
    );
    println!("BUNDLE hang: {secs:.1} s");

    // 3. One node powered off: unreachable, the others complete, within budget. Before it, a
    //    pod that crash-loops (its host port is sshd's) and a grace period short enough that
    //    the dead node turns NotReady: the analysis must flag both from the cluster's view.
    e2e::standin_knobs(&lab, "node-monitor-grace-period: 6s\n").unwrap();
    rt.block_on(crash_looping_pod(&client, &n[0].name));
    lab.kill_node(&n[2]).unwrap();
    rt.block_on(wait_node_not_ready(&client, &n[2].name));
    let (run, _, root, secs) = bundle(&env, &answers, "dead", &["--node-budget", "2m"]);
    assert_eq!(run.code, 3, "{}", run.all());
    let m = json(&root, "manifest.json");
    assert!(
        items(&m, Some(&n[2].name))
            .iter()
            .all(|i| i["status"] == "unreachable")
    );
    for node in [&n[0].name, &n[1].name] {
        assert!(
            items(&m, Some(node))
                .iter()
                .all(|i| i["status"] == "ok" || i["status"] == "skipped"),
            "{node}"
        );
    }
    assert!(secs < 120.0 + 60.0, "{secs}");
    let a = json(&root, "analysis.json");
    assert!(
        a.as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "node-unreachable" && f["node"] == n[2].name.as_str()),
        "{a}"
    );
    for (id, node) in [
        ("node-not-ready", n[2].name.as_str()),
        ("pod-crash-looping", n[0].name.as_str()),
    ] {
        assert!(
            a.as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id && f["node"] == node),
            "no {id} finding for {node}: {a}"
        );
    }
    println!("BUNDLE dead-node: {secs:.1} s");

    // 4. k3s stopped on every server: node collectors complete, cluster/ absent, partial.
    for node in &n[..2] {
        lab.exec_ok(node, "systemctl stop k3s").unwrap();
    }
    let (run, archive, root, _) = bundle(
        &env,
        &answers,
        "down",
        &["--nodes", &format!("{},{}", n[0].name, n[1].name)],
    );
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(archive.is_some());
    let m = json(&root, "manifest.json");
    assert_eq!(m["api"]["reachable"], false);
    assert!(m["api"]["reason"].as_str().unwrap().len() > 5);
    assert!(!root.join("cluster").exists());
    let a = json(&root, "analysis.json");
    let stopped = a
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "k3s-not-active")
        .count();
    assert_eq!(stopped, 2, "{a}");
    // With the API down, pod logs come from the nodes' /var/log/pods, redacted as well.
    for node in &n[..2] {
        let f = root.join(format!("nodes/{}/pod-logs.txt", node.name));
        let text = std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{} not collected: {e}", f.display()));
        assert!(text.contains("simulated container"), "{text}");
        assert!(!text.contains(LOG_CANARY), "{}", f.display());
    }
    assert!(run.stdout.contains("bundle_ready"), "{}", run.all());
}

/// A client through the kubeconfig the install wrote beside `answers`.
async fn cluster_client(answers: &Path) -> kube::Client {
    let dir = answers.parent().unwrap();
    let path = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-kubeconfig.yaml"))
        .unwrap_or_else(|| panic!("no kubeconfig in {}", dir.display()));
    let text = std::fs::read_to_string(path).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// The application's namespace: that of a pod outside kube-system.
async fn app_namespace(client: &kube::Client) -> String {
    use k8s_openapi::api::core::v1::Pod;
    kube::Api::<Pod>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .find_map(|p| p.metadata.namespace.clone().filter(|n| n != "kube-system"))
        .expect("an application pod")
}

/// A host-network pod on `node` whose port is sshd's: it cannot bind, so it crash-loops.
/// Waits until the API reports CrashLoopBackOff.
async fn crash_looping_pod(client: &kube::Client, node: &str) {
    use k8s_openapi::api::core::v1::Pod;
    // In the application's namespace, with an image every node holds: an application pod's.
    let ns = app_namespace(client).await;
    let image = kube::Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .find_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
        .expect("an application pod with an image");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bundle-crasher", "namespace": ns},
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "containers": [{"name": "crasher", "image": image, "ports": [{"containerPort": 22}]}]
        }
    }))
    .unwrap();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    api.create(&Default::default(), &pod).await.unwrap();
    poll("bundle-crasher in CrashLoopBackOff", || async {
        let p = api.get("bundle-crasher").await.ok()?;
        let waiting = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?
            .reason?;
        (waiting == "CrashLoopBackOff").then_some(())
    })
    .await;
}

/// Waits until `node`'s Ready condition is no longer True.
async fn wait_node_not_ready(client: &kube::Client, node: &str) {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    poll(&format!("{node} NotReady"), || async {
        let n = api.get(node).await.ok()?;
        let ready = n
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.status != "True").then_some(())
    })
    .await;
}

/// Polls `f` every 250 ms until it gives `Some`, for at most 90 s.
async fn poll<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let t = Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(90) {
        if f().await.is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{what}: not seen within 90 s");
}

fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn a_node_whose_var_lib_rancher_is_full_still_gives_its_bundle() {
    // A 1.25 GiB /var/lib/rancher (a tmpfs in the lab; preflight wants 1.1 GiB free), filled to the last block after the install.
    let Some(lab) = lab_or_skip!(installer_tests::lab::Lab::builder(1).rancher_size_mib(1280))
    else {
        return;
    };
    let env = Env::new().unwrap();
    let answers = lab.answer_file_path();
    let run = env.run(&answers, &["install"]).unwrap();
    assert!(run.ok(), "{}", run.all());
    let n1 = &lab.nodes()[0];
    // dd stops with "No space left on device": that is the point.
    lab.exec_ok(
        n1,
        "dd if=/dev/zero of=/var/lib/rancher/fill bs=1M 2>/dev/null; sync",
    )
    .unwrap();
    let avail = lab
        .exec_ok(n1, "df --output=avail -B1 /var/lib/rancher | tail -1")
        .unwrap();
    assert_eq!(avail.trim(), "0", "/var/lib/rancher is not full");

    let (run, archive, root, secs) = bundle(&env, &answers, "full", &[]);
    assert!(archive.is_some(), "{}", run.all());
    let m = json(&root, "manifest.json");
    let its = items(&m, Some(&n1.name));
    assert!(its.len() >= 25, "{}", its.len());
    for i in its {
        let st = i["status"].as_str().unwrap();
        assert!(
            st == "ok" || (st == "skipped" && i["id"] == "pod-logs"),
            "{i}"
        );
    }
    let disks =
        std::fs::read_to_string(root.join(format!("nodes/{}/system/resources.txt", n1.name)))
            .unwrap();
    assert!(disks.contains("/var/lib/rancher"), "{disks}");
    println!("BUNDLE full-rancher: {secs:.1} s, exit {}", run.code);
}
