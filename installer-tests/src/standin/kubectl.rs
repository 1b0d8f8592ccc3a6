//! `k3s kubectl` (and a `kubectl` link to the binary): the read-only subset a support bundle
//! runs. k3s embeds kubectl and defaults it to `/etc/rancher/k3s/k3s.yaml` (`pkg/kubectl/main.go`).
//!
//! Supported: `get TYPE[,TYPE...] [NAME] [-n NS | -A] [-l SELECTOR] [-o json|yaml|name|wide]`
//! with the columns of the API's Table ([`super::api::table`]: nodes, pods, deployments,
//! daemonsets, statefulsets, services, events, namespaces; other types print NAME and AGE), `get --raw PATH`, `logs POD [-c C]
//! [--previous]`, and `version`. Anything else says it is not modelled and exits 1.

use serde_json::Value;

use super::api::table;
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

/// The columns the apiserver's Table carries for the type (the subset prints them as kubectl
/// prints a Table: names upper-cased, priority 1 columns only with `-o wide`).
fn columns(rt: &ResourceType, o: &Value, wide: bool) -> (Vec<String>, Vec<String>) {
    let defs = table::columns(rt);
    let cells = table::cells(rt, o);
    defs.iter()
        .zip(cells)
        .filter(|(d, _)| wide || d.priority == 0)
        .map(|(d, c)| {
            let v = match c {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (d.name.to_uppercase(), v)
        })
        .unzip()
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
                            let (mut cols, mut vals) = columns(rt, o, a.output == "wide");
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
