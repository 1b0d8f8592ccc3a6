//! `k3s kubectl` (and a `kubectl` link to the binary): the read-only subset a support bundle
//! runs. k3s embeds kubectl and defaults it to `/etc/rancher/k3s/k3s.yaml` (`pkg/kubectl/main.go`).
//!
//! Supported: `get TYPE[,TYPE...] [NAME] [-n NS | -A] [-l SELECTOR] [-o json|yaml|name|wide]`
//! with kubectl's default columns for nodes, pods, deployments, daemonsets, statefulsets,
//! services and events (other types print NAME and AGE), `get --raw PATH`, `logs POD [-c C]
//! [--previous]`, and `version`. Anything else says it is not modelled and exits 1.

use serde_json::Value;

use super::paths::{Root, k3s};
use super::pki::CertKey;
use super::store::resources::{self, ResourceType};

struct Args {
    positional: Vec<String>,
    namespace: Option<String>,
    all_namespaces: bool,
    selector: Option<String>,
    output: String,
    kubeconfig: Option<String>,
    raw: Option<String>,
    container: Option<String>,
    previous: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        positional: vec![],
        namespace: None,
        all_namespaces: false,
        selector: None,
        output: String::new(),
        kubeconfig: None,
        raw: None,
        container: None,
        previous: false,
    };
    let mut i = 0;
    while i < args.len() {
        let s = args[i].as_str();
        let (flag, inline) = match s.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (s, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: {flag}"))
        };
        match flag {
            "-n" | "--namespace" => a.namespace = Some(value()?),
            "-A" | "--all-namespaces" => a.all_namespaces = true,
            "-l" | "--selector" => a.selector = Some(value()?),
            "-o" | "--output" => a.output = value()?,
            "--kubeconfig" => a.kubeconfig = Some(value()?),
            "--raw" => a.raw = Some(value()?),
            "-c" | "--container" => a.container = Some(value()?),
            "-p" | "--previous" => a.previous = true,
            "--sort-by" | "--request-timeout" | "--tail" | "--since" => {
                let _ = value()?;
            }
            f if f.starts_with('-') => return Err(format!("unknown flag: {f}")),
            _ => a.positional.push(s.to_string()),
        }
        i += 1;
    }
    Ok(a)
}

struct Conn {
    server: String,
    client: reqwest::Client,
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default()
}

fn connect(root: &Root, a: &Args) -> Result<Conn, String> {
    let path = a
        .kubeconfig
        .clone()
        .or_else(|| std::env::var("KUBECONFIG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| k3s::KUBECONFIG.to_string());
    let text = std::fs::read_to_string(root.path(&path))
        .map_err(|e| format!("error loading config file \"{path}\": {e}"))?;
    let kc: Value = serde_saphyr::from_str(&text)
        .map_err(|e| format!("error loading config file \"{path}\": {e}"))?;
    let cluster = &kc["clusters"][0]["cluster"];
    let user = &kc["users"][0]["user"];
    let id = CertKey {
        cert_pem: b64(&user["client-certificate-data"]),
        key_pem: b64(&user["client-key-data"]),
    };
    let client = super::client::with_ca(&b64(&cluster["certificate-authority-data"]), Some(&id))
        .map_err(|e| e.to_string())?;
    Ok(Conn {
        server: cluster["server"]
            .as_str()
            .unwrap_or("https://127.0.0.1:6443")
            .trim_end_matches('/')
            .to_string(),
        client,
    })
}

fn find_type(name: &str) -> Option<&'static ResourceType> {
    let n = name.to_lowercase();
    let n = n.split('.').next().unwrap_or(&n).to_string();
    // Prefer the core/apps types over events.k8s.io for `events`.
    resources::RESOURCES.iter().find(|r| {
        r.plural == n
            || r.singular == n
            || r.kind.to_lowercase() == n
            || r.short_names.contains(&n.as_str())
    })
}

fn age(ts: &str) -> String {
    let Some(t) = super::store::parse_time(ts) else {
        return "<unknown>".into();
    };
    let s = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn columns(rt: &ResourceType, o: &Value, wide: bool) -> (Vec<&'static str>, Vec<String>) {
    let name = o
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let created = age(o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or_default());
    let i = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match rt.key().as_str() {
        "core/nodes" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let mut roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let roles = if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            };
            let mut cols = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
            let mut vals = vec![
                name,
                status,
                roles,
                created,
                s("/status/nodeInfo/kubeletVersion"),
            ];
            if wide {
                let ip = o
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                    .and_then(|x| x["address"].as_str())
                    .unwrap_or("<none>")
                    .to_string();
                cols.extend([
                    "INTERNAL-IP",
                    "EXTERNAL-IP",
                    "OS-IMAGE",
                    "KERNEL-VERSION",
                    "CONTAINER-RUNTIME",
                ]);
                vals.extend([
                    ip,
                    "<none>".into(),
                    s("/status/nodeInfo/osImage"),
                    s("/status/nodeInfo/kernelVersion"),
                    s("/status/nodeInfo/containerRuntimeVersion"),
                ]);
            }
            (cols, vals)
        }
        "core/pods" => {
            let cs = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let waiting = cs.iter().find_map(|c| {
                c.pointer("/state/waiting/reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                waiting.unwrap_or_else(|| s("/status/phase"))
            };
            let mut cols = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            let mut vals = vec![
                name,
                format!("{ready}/{total}"),
                status,
                restarts.to_string(),
                created,
            ];
            if wide {
                cols.extend(["IP", "NODE"]);
                let ip = s("/status/podIP");
                let node = s("/spec/nodeName");
                vals.extend([
                    if ip.is_empty() { "<none>".into() } else { ip },
                    if node.is_empty() {
                        "<none>".into()
                    } else {
                        node
                    },
                ]);
            }
            (cols, vals)
        }
        "apps/deployments" => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec![
                name,
                format!("{}/{}", i("/status/readyReplicas"), i("/spec/replicas")),
                i("/status/updatedReplicas").to_string(),
                i("/status/availableReplicas").to_string(),
                created,
            ],
        ),
        "apps/daemonsets" => (
            vec![
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
            ],
            vec![
                name,
                i("/status/desiredNumberScheduled").to_string(),
                i("/status/currentNumberScheduled").to_string(),
                i("/status/numberReady").to_string(),
                i("/status/updatedNumberScheduled").to_string(),
                i("/status/numberAvailable").to_string(),
                created,
            ],
        ),
        "apps/statefulsets" => (
            vec!["NAME", "READY", "AGE"],
            vec![
                name,
                format!("{}/{}", i("/status/readyReplicas"), i("/spec/replicas")),
                created,
            ],
        ),
        "core/services" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            (
                vec![
                    "NAME",
                    "TYPE",
                    "CLUSTER-IP",
                    "EXTERNAL-IP",
                    "PORT(S)",
                    "AGE",
                ],
                vec![
                    name,
                    s("/spec/type"),
                    s("/spec/clusterIP"),
                    "<none>".into(),
                    ports.join(","),
                    created,
                ],
            )
        }
        "core/events" => (
            vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            vec![
                age(&s("/lastTimestamp")),
                s("/type"),
                s("/reason"),
                format!(
                    "{}/{}",
                    s("/involvedObject/kind").to_lowercase(),
                    s("/involvedObject/name")
                ),
                s("/message"),
            ],
        ),
        _ => (vec!["NAME", "AGE"], vec![name, created]),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(String::len).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, v) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(v);
            } else {
                line.push_str(&format!("{:<w$}   ", v, w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn get_json(conn: &Conn, path: &str) -> Result<Value, String> {
    let resp = conn
        .client
        .get(format!("{}{path}", conn.server))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !code.is_success() {
        return Err(format!(
            "Error from server ({}): {}",
            v["reason"].as_str().unwrap_or("Unknown"),
            v["message"].as_str().unwrap_or("unknown error")
        ));
    }
    Ok(v)
}

/// Run `kubectl ARGS`. Returns the exit code.
pub async fn run(root: &Root, args: &[String]) -> i32 {
    match run_inner(root, args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn run_inner(root: &Root, args: &[String]) -> Result<(), String> {
    let Some(verb) = args.first() else {
        return Err("kubectl controls the Kubernetes cluster manager (k3s stand-in subset: get, logs, version)".into());
    };
    let a = parse(&args[1..])?;
    let conn = connect(root, &a)?;
    match verb.as_str() {
        "version" => {
            let v = get_json(&conn, "/version").await?;
            println!("Client Version: {}", super::version::current());
            println!("Kustomize Version: v5.7.1");
            println!(
                "Server Version: {}",
                v["gitVersion"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        "get" if a.raw.is_some() => {
            let path = a.raw.clone().unwrap_or_default();
            let resp = conn
                .client
                .get(format!("{}{path}", conn.server))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = resp.status().is_success();
            let body = resp.text().await.unwrap_or_default();
            if ok {
                print!("{body}");
                Ok(())
            } else {
                Err(format!("Error from server: {}", body.trim()))
            }
        }
        "get" => {
            let Some(types) = a.positional.first() else {
                return Err("error: you must specify the type of resource to get".into());
            };
            let name = a.positional.get(1).cloned();
            let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
            let mut all_items: Vec<Value> = Vec::new();
            let mut out = String::new();
            for t in types.split(',') {
                let rt = find_type(t).ok_or_else(|| {
                    format!("error: the server doesn't have a resource type \"{t}\"")
                })?;
                let prefix = if rt.group.is_empty() {
                    "/api/v1".to_string()
                } else {
                    format!("/apis/{}", rt.api_version())
                };
                let base = if rt.namespaced && !a.all_namespaces {
                    format!("{prefix}/namespaces/{ns}/{}", rt.plural)
                } else {
                    format!("{prefix}/{}", rt.plural)
                };
                let items: Vec<Value> = match &name {
                    Some(n) => vec![get_json(&conn, &format!("{base}/{n}")).await?],
                    None => {
                        let q = a
                            .selector
                            .as_ref()
                            .map(|s| {
                                format!(
                                    "?labelSelector={}",
                                    s.replace('=', "%3D").replace(',', "%2C")
                                )
                            })
                            .unwrap_or_default();
                        let l = get_json(&conn, &format!("{base}{q}")).await?;
                        l["items"].as_array().cloned().unwrap_or_default()
                    }
                };
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|mut o| {
                        o["apiVersion"] = Value::String(rt.api_version());
                        o["kind"] = Value::String(rt.kind.to_string());
                        o
                    })
                    .collect();
                match a.output.as_str() {
                    "json" | "yaml" => all_items.extend(items),
                    "name" => {
                        for o in &items {
                            out.push_str(&format!(
                                "{}/{}\n",
                                rt.singular,
                                o.pointer("/metadata/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                            ));
                        }
                    }
                    "" | "wide" => {
                        if items.is_empty() {
                            continue;
                        }
                        let mut rows = Vec::new();
                        for (k, o) in items.iter().enumerate() {
                            let (cols, mut vals) = columns(rt, o, a.output == "wide");
                            let mut cols: Vec<String> =
                                cols.into_iter().map(str::to_string).collect();
                            if a.all_namespaces && rt.namespaced {
                                cols.insert(0, "NAMESPACE".into());
                                vals.insert(
                                    0,
                                    o.pointer("/metadata/namespace")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_string(),
                                );
                            }
                            if k == 0 {
                                rows.push(cols);
                            }
                            rows.push(vals);
                        }
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(&table(&rows));
                    }
                    other => {
                        return Err(format!(
                            "error: unable to match a printer suitable for the output format \"{other}\""
                        ));
                    }
                }
            }
            match a.output.as_str() {
                "json" | "yaml" => {
                    let v = if name.is_some() && all_items.len() == 1 {
                        all_items.remove(0)
                    } else {
                        serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": all_items})
                    };
                    if a.output == "json" {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        print!("{}", serde_saphyr::to_string(&v).unwrap_or_default());
                    }
                }
                _ => {
                    if out.is_empty() {
                        if a.all_namespaces {
                            eprintln!("No resources found");
                        } else {
                            eprintln!("No resources found in {ns} namespace.");
                        }
                    }
                    print!("{out}");
                }
            }
            Ok(())
        }
        "logs" => {
            let pod = a
                .positional
                .first()
                .ok_or("error: expected 'logs [-f] [-p] (POD | TYPE/NAME) [-c CONTAINER]'.")?;
            let pod = pod.trim_start_matches("pod/").trim_start_matches("pods/");
            let ns = a.namespace.clone().unwrap_or_else(|| "default".into());
            let mut q = Vec::new();
            if let Some(c) = &a.container {
                q.push(format!("container={c}"));
            }
            if a.previous {
                q.push("previous=true".into());
            }
            let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/log?{}", q.join("&"));
            let resp = conn
                .client
                .get(format!("{}{path}", conn.server))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = resp.status().is_success();
            let body = resp.text().await.unwrap_or_default();
            if ok {
                print!("{body}");
                Ok(())
            } else {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                Err(format!(
                    "Error from server ({}): {}",
                    v["reason"].as_str().unwrap_or("BadRequest"),
                    v["message"].as_str().unwrap_or(body.trim())
                ))
            }
        }
        other => Err(format!(
            "k3s-standin: `kubectl {other}` is not modelled by the k3s stand-in"
        )),
    }
}
