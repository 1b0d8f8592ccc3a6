//! From a pod spec to a runc bundle: what the kubelet and containerd's CRI plugin compute for
//! one container of a host-network pod (see [`super::runc`] for the runtime side).
//!
//! Volumes are materialised where the kubelet keeps them,
//! `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~<kind>/<name>`; configMap and secret
//! volumes (with `items`, `defaultMode`, `optional`), downwardAPI and projected volumes are
//! written afresh before each start of a container. A pod that mounts no service-account
//! volume of its own gets the one the ServiceAccount admission plugin would add
//! (`/var/run/secrets/kubernetes.io/serviceaccount`: `token`, `ca.crt`, `namespace`) unless
//! `automountServiceAccountToken: false`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Value, json};

use super::Kube;
use super::cgroups;
use super::runc::{self, Bind, OciInput, ShimSpec};
use crate::rootfs_images::ImageInfo;
use crate::standin::controllers::util::{cpu_milli, mem_bytes};

/// The service-account volume's mount path.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Why a container could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepError {
    /// `CreateContainerConfigError` (a missing ConfigMap, Secret or key in env).
    Config(String),
    /// `FailedMount` (the container stays `ContainerCreating`).
    Mount(String),
    /// `CreateContainerError` / `RunContainerError`.
    Create(String),
}

/// The node-side facts a container needs.
pub struct NodeCtx<'a> {
    pub node_name: &'a str,
    pub node_ip: &'a str,
    /// The k3s data dir (`/var/lib/rancher/k3s`) as seen by this process.
    pub data_dir: PathBuf,
    /// `/var/lib/kubelet` as seen by this process.
    pub kubelet_dir: PathBuf,
    /// The container's state directory (shim files).
    pub dir: PathBuf,
    /// The cluster's CA (for the service-account volume).
    pub ca_pem: &'a str,
}

fn s(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn b64(v: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .unwrap_or_default()
}

async fn get_obj(kube: &Kube, path: &str) -> Result<Option<Value>, String> {
    match kube.req(reqwest::Method::GET, path, None, None).await {
        Ok((200, v)) => Ok(Some(v)),
        Ok((404, _)) => Ok(None),
        Ok((code, v)) => Err(format!(
            "HTTP {code}: {}",
            v["message"].as_str().unwrap_or_default()
        )),
        Err(e) => Err(e),
    }
}

/// The data of a ConfigMap or Secret as bytes by key.
fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(m) = obj["data"].as_object() {
        for (k, v) in m {
            let bytes = if secret {
                b64(v.as_str().unwrap_or_default())
            } else {
                v.as_str().unwrap_or_default().as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    if let Some(m) = obj["binaryData"].as_object() {
        for (k, v) in m {
            out.insert(k.clone(), b64(v.as_str().unwrap_or_default()));
        }
    }
    if secret && let Some(m) = obj["stringData"].as_object() {
        for (k, v) in m {
            out.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
    }
    out
}

/// A downward-API field of the pod (`fieldRef.fieldPath`).
pub fn field_ref(pod: &Value, path: &str, node_ip: &str) -> Option<String> {
    let label = |prefix: &str, key: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
            .and_then(|k| pod["metadata"][key][k].as_str().map(str::to_string))
    };
    Some(match path {
        "metadata.name" => s(pod, "/metadata/name"),
        "metadata.namespace" => s(pod, "/metadata/namespace"),
        "metadata.uid" => s(pod, "/metadata/uid"),
        "spec.nodeName" => s(pod, "/spec/nodeName"),
        "spec.serviceAccountName" => s(pod, "/spec/serviceAccountName"),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            let ip = s(pod, "/status/podIP");
            if ip.is_empty() && pod["spec"]["hostNetwork"].as_bool() == Some(true) {
                node_ip.to_string()
            } else {
                ip
            }
        }
        "metadata.labels" | "metadata.annotations" => {
            let key = if path == "metadata.labels" {
                "labels"
            } else {
                "annotations"
            };
            let mut lines: Vec<String> = pod["metadata"][key]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                .collect();
            lines.sort();
            lines.join("\n")
        }
        p if p.starts_with("metadata.labels[") => label("metadata.labels", "labels")?,
        p if p.starts_with("metadata.annotations[") => {
            label("metadata.annotations", "annotations")?
        }
        _ => return None,
    })
}

/// `resourceFieldRef` of a container (divisor 1).
fn resource_field(container: &Value, res: &str) -> String {
    let (kind, what) = res.split_once('.').unwrap_or(("limits", res));
    let q = container["resources"][kind][what]
        .as_str()
        .unwrap_or_default();
    match what {
        "cpu" => {
            let m = cpu_milli(q);
            if m == 0 {
                "0".into()
            } else {
                ((m + 999) / 1000).to_string()
            }
        }
        _ => mem_bytes(q).to_string(),
    }
}

/// Write `files` (relative path -> bytes) into `dir`, replacing what was there, with `mode`.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for (rel, data) in files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            continue;
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The files of a configMap/secret volume source (`items` select and rename keys).
fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: &Value,
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let Some(items) = items.as_array().filter(|a| !a.is_empty()) else {
        return Ok(data);
    };
    let mut out = BTreeMap::new();
    for it in items {
        let key = it["key"].as_str().unwrap_or_default();
        let path = it["path"].as_str().unwrap_or(key);
        match data.get(key) {
            Some(v) => {
                out.insert(path.to_string(), v.clone());
            }
            None => {
                return Err(format!(
                    "configmap references non-existent config key: {key} ({what})"
                ));
            }
        }
    }
    Ok(out)
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32).unwrap_or(default)
}

/// A token for the pod's ServiceAccount through the TokenRequest API (bound to the pod).
async fn sa_token(
    kube: &Kube,
    pod: &Value,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, String> {
    let ns = s(pod, "/metadata/namespace");
    let sa = match s(pod, "/spec/serviceAccountName") {
        x if x.is_empty() => "default".to_string(),
        x => x,
    };
    let mut spec = json!({
        "expirationSeconds": seconds,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": s(pod, "/metadata/name"), "uid": s(pod, "/metadata/uid")},
    });
    if let Some(a) = audience {
        spec["audiences"] = json!([a]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    match kube
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
            None,
            Some(&body),
        )
        .await
    {
        Ok((201 | 200, v)) => v["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "TokenRequest answered without a token".to_string()),
        Ok((code, v)) => Err(format!(
            "failed to fetch token: HTTP {code}: {}",
            v["message"].as_str().unwrap_or_default()
        )),
        Err(e) => Err(format!("failed to fetch token: {e}")),
    }
}

/// Materialise one pod volume; returns its host directory (or file, for hostPath files).
async fn volume(
    kube: &Kube,
    ctx: &NodeCtx<'_>,
    pod: &Value,
    vol: &Value,
) -> Result<PathBuf, PrepError> {
    let uid = s(pod, "/metadata/uid");
    let ns = s(pod, "/metadata/namespace");
    let name = vol["name"].as_str().unwrap_or_default();
    let base = ctx.kubelet_dir.join("pods").join(&uid).join("volumes");
    let mount_err = |m: String| {
        PrepError::Mount(format!(
            "MountVolume.SetUp failed for volume \"{name}\" : {m}"
        ))
    };
    if let Some(hp) = vol.get("hostPath") {
        let path = PathBuf::from(hp["path"].as_str().unwrap_or_default());
        match hp["type"].as_str().unwrap_or("") {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&path).map_err(|e| mount_err(e.to_string()))?;
            }
            "FileOrCreate" if !path.exists() => {
                if let Some(p) = path.parent() {
                    let _ = std::fs::create_dir_all(p);
                }
                std::fs::write(&path, b"").map_err(|e| mount_err(e.to_string()))?;
            }
            "Directory" if !path.is_dir() => {
                return Err(mount_err(format!(
                    "hostPath type check failed: {} is not a directory",
                    path.display()
                )));
            }
            "File" if !path.is_file() => {
                return Err(mount_err(format!(
                    "hostPath type check failed: {} is not a file",
                    path.display()
                )));
            }
            "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
                return Err(mount_err(format!(
                    "hostPath type check failed: {} does not exist",
                    path.display()
                )));
            }
            _ => {}
        }
        return Ok(path);
    }
    if vol.get("emptyDir").is_some() {
        let d = base.join("kubernetes.io~empty-dir").join(name);
        std::fs::create_dir_all(&d).map_err(|e| mount_err(e.to_string()))?;
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777));
        return Ok(d);
    }
    if let Some(cm) = vol.get("configMap") {
        let cname = cm["name"].as_str().unwrap_or_default();
        let optional = cm["optional"].as_bool() == Some(true);
        let d = base.join("kubernetes.io~configmap").join(name);
        let obj = get_obj(kube, &format!("/api/v1/namespaces/{ns}/configmaps/{cname}"))
            .await
            .map_err(mount_err)?;
        let data = match obj {
            Some(o) => {
                select_items(object_data(&o, false), &cm["items"], cname).map_err(mount_err)?
            }
            None if optional => BTreeMap::new(),
            None => return Err(mount_err(format!("configmap \"{cname}\" not found"))),
        };
        write_files(&d, &data, mode_of(&cm["defaultMode"], 0o644))
            .map_err(|e| mount_err(e.to_string()))?;
        return Ok(d);
    }
    if let Some(sec) = vol.get("secret") {
        let sname = sec["secretName"].as_str().unwrap_or_default();
        let optional = sec["optional"].as_bool() == Some(true);
        let d = base.join("kubernetes.io~secret").join(name);
        let obj = get_obj(kube, &format!("/api/v1/namespaces/{ns}/secrets/{sname}"))
            .await
            .map_err(mount_err)?;
        let data = match obj {
            Some(o) => {
                select_items(object_data(&o, true), &sec["items"], sname).map_err(mount_err)?
            }
            None if optional => BTreeMap::new(),
            None => return Err(mount_err(format!("secret \"{sname}\" not found"))),
        };
        write_files(&d, &data, mode_of(&sec["defaultMode"], 0o644))
            .map_err(|e| mount_err(e.to_string()))?;
        return Ok(d);
    }
    if let Some(da) = vol.get("downwardAPI") {
        let d = base.join("kubernetes.io~downward-api").join(name);
        let mut files = BTreeMap::new();
        for it in da["items"].as_array().into_iter().flatten() {
            let v = match it.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                Some(f) => field_ref(pod, f, ctx.node_ip).unwrap_or_default(),
                None => String::new(),
            };
            files.insert(
                it["path"].as_str().unwrap_or_default().to_string(),
                v.into_bytes(),
            );
        }
        write_files(&d, &files, mode_of(&da["defaultMode"], 0o644))
            .map_err(|e| mount_err(e.to_string()))?;
        return Ok(d);
    }
    if let Some(pr) = vol.get("projected") {
        let d = base.join("kubernetes.io~projected").join(name);
        let mut files = BTreeMap::new();
        for src in pr["sources"].as_array().into_iter().flatten() {
            if let Some(t) = src.get("serviceAccountToken") {
                let tok = sa_token(
                    kube,
                    pod,
                    t["audience"].as_str(),
                    t["expirationSeconds"].as_i64().unwrap_or(3607),
                )
                .await
                .map_err(mount_err)?;
                files.insert(
                    t["path"].as_str().unwrap_or("token").to_string(),
                    tok.into_bytes(),
                );
            }
            for (key, secret) in [("configMap", false), ("secret", true)] {
                if let Some(c) = src.get(key) {
                    let oname = c["name"].as_str().unwrap_or_default();
                    let kind = if secret { "secrets" } else { "configmaps" };
                    let obj = get_obj(kube, &format!("/api/v1/namespaces/{ns}/{kind}/{oname}"))
                        .await
                        .map_err(mount_err)?;
                    match obj {
                        Some(o) => files.extend(
                            select_items(object_data(&o, secret), &c["items"], oname)
                                .map_err(mount_err)?,
                        ),
                        None if c["optional"].as_bool() == Some(true) => {}
                        None => {
                            let what = if secret { "secret" } else { "configmap" };
                            return Err(mount_err(format!("{what} \"{oname}\" not found")));
                        }
                    }
                }
            }
            if let Some(da) = src.get("downwardAPI") {
                for it in da["items"].as_array().into_iter().flatten() {
                    let v = it
                        .pointer("/fieldRef/fieldPath")
                        .and_then(Value::as_str)
                        .and_then(|f| field_ref(pod, f, ctx.node_ip))
                        .unwrap_or_default();
                    files.insert(
                        it["path"].as_str().unwrap_or_default().to_string(),
                        v.into_bytes(),
                    );
                }
            }
        }
        write_files(&d, &files, mode_of(&pr["defaultMode"], 0o644))
            .map_err(|e| mount_err(e.to_string()))?;
        return Ok(d);
    }
    Err(mount_err(
        "unsupported volume type in the k3s stand-in".into(),
    ))
}

/// The service-account volume the admission plugin would add, if the pod has none.
fn implicit_sa_volume(pod: &Value, container: &Value) -> Option<Value> {
    if pod["spec"]["automountServiceAccountToken"].as_bool() == Some(false) {
        return None;
    }
    let mounted = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["mountPath"].as_str() == Some(SA_MOUNT));
    if mounted {
        return None;
    }
    Some(json!({
        "name": "kube-api-access-standin",
        "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}
    }))
}

/// The environment of a container: service variables, then the container's env and envFrom
/// (with `$(VAR)` expansion over what is defined before), over the image's Env.
async fn environment(
    kube: &Kube,
    ctx: &NodeCtx<'_>,
    pod: &Value,
    container: &Value,
    image_env: &[String],
) -> Result<Vec<String>, PrepError> {
    let ns = s(pod, "/metadata/namespace");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let set =
        |vars: &mut BTreeMap<String, String>, order: &mut Vec<String>, k: String, v: String| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
    // The `kubernetes` Service's variables (the kubelet's master services), and with
    // enableServiceLinks the namespace's Services.
    let links = pod["spec"]["enableServiceLinks"].as_bool() != Some(false);
    if let Ok(Some(list)) = get_obj(kube, "/api/v1/services").await {
        for svc in list["items"].as_array().into_iter().flatten() {
            let sns = s(svc, "/metadata/namespace");
            let sname = s(svc, "/metadata/name");
            let ip = s(svc, "/spec/clusterIP");
            if ip.is_empty() || ip == "None" {
                continue;
            }
            let master = sns == "default" && sname == "kubernetes";
            if !(master || (links && sns == ns)) {
                continue;
            }
            let prefix = sname.to_ascii_uppercase().replace('-', "_");
            let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
            let Some(first) = ports.first() else { continue };
            set(
                &mut vars,
                &mut order,
                format!("{prefix}_SERVICE_HOST"),
                ip.clone(),
            );
            set(
                &mut vars,
                &mut order,
                format!("{prefix}_SERVICE_PORT"),
                first["port"].to_string(),
            );
            for p in &ports {
                if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    set(
                        &mut vars,
                        &mut order,
                        format!(
                            "{prefix}_SERVICE_PORT_{}",
                            pn.to_ascii_uppercase().replace('-', "_")
                        ),
                        p["port"].to_string(),
                    );
                }
            }
            let proto = first["protocol"]
                .as_str()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            set(
                &mut vars,
                &mut order,
                format!("{prefix}_PORT"),
                format!("{proto}://{ip}:{}", first["port"]),
            );
            for p in &ports {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                let pre = format!("{prefix}_PORT_{}_{proto}", p["port"]);
                let lp = proto.to_ascii_lowercase();
                set(
                    &mut vars,
                    &mut order,
                    pre.clone(),
                    format!("{lp}://{ip}:{}", p["port"]),
                );
                set(&mut vars, &mut order, format!("{pre}_PROTO"), lp);
                set(
                    &mut vars,
                    &mut order,
                    format!("{pre}_PORT"),
                    p["port"].to_string(),
                );
                set(&mut vars, &mut order, format!("{pre}_ADDR"), ip.clone());
            }
        }
    }
    for ef in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = ef["prefix"].as_str().unwrap_or_default();
        for (key, secret) in [("configMapRef", false), ("secretRef", true)] {
            if let Some(r) = ef.get(key) {
                let oname = r["name"].as_str().unwrap_or_default();
                let kind = if secret { "secrets" } else { "configmaps" };
                let obj = get_obj(kube, &format!("/api/v1/namespaces/{ns}/{kind}/{oname}"))
                    .await
                    .map_err(PrepError::Config)?;
                match obj {
                    Some(o) => {
                        for (k, v) in object_data(&o, secret) {
                            set(
                                &mut vars,
                                &mut order,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v).to_string(),
                            );
                        }
                    }
                    None if r["optional"].as_bool() == Some(true) => {}
                    None => {
                        let what = if secret { "secret" } else { "configmap" };
                        return Err(PrepError::Config(format!("{what} \"{oname}\" not found")));
                    }
                }
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            runc::expand(v, &vars)
        } else if let Some(vf) = e.get("valueFrom") {
            if let Some(f) = vf.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                field_ref(pod, f, ctx.node_ip).unwrap_or_default()
            } else if let Some(r) = vf
                .pointer("/resourceFieldRef/resource")
                .and_then(Value::as_str)
            {
                resource_field(container, r)
            } else {
                let (key, secret) = if vf.get("secretKeyRef").is_some() {
                    ("secretKeyRef", true)
                } else {
                    ("configMapKeyRef", false)
                };
                let r = &vf[key];
                let oname = r["name"].as_str().unwrap_or_default();
                let k = r["key"].as_str().unwrap_or_default();
                let optional = r["optional"].as_bool() == Some(true);
                let kind = if secret { "secrets" } else { "configmaps" };
                let what = if secret { "secret" } else { "configmap" };
                let obj = get_obj(kube, &format!("/api/v1/namespaces/{ns}/{kind}/{oname}"))
                    .await
                    .map_err(PrepError::Config)?;
                match obj.map(|o| object_data(&o, secret)) {
                    Some(d) => match d.get(k) {
                        Some(v) => String::from_utf8_lossy(v).to_string(),
                        None if optional => continue,
                        None => {
                            let kind_title = if secret { "Secret" } else { "ConfigMap" };
                            return Err(PrepError::Config(format!(
                                "couldn't find key {k} in {kind_title} {ns}/{oname}"
                            )));
                        }
                    },
                    None if optional => continue,
                    None => return Err(PrepError::Config(format!("{what} \"{oname}\" not found"))),
                }
            }
        } else {
            String::new()
        };
        set(&mut vars, &mut order, name, value);
    }
    // The image's Env comes first; the container's entries replace same-named ones.
    let mut env: Vec<String> = image_env
        .iter()
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or_default();
            !vars.contains_key(k)
        })
        .cloned()
        .collect();
    if !image_env.iter().any(|kv| kv.starts_with("PATH=")) && !vars.contains_key("PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.push(format!("HOSTNAME={}", ctx.node_name));
    for k in order {
        if let Some(v) = vars.get(&k) {
            env.push(format!("{k}={v}"));
        }
    }
    Ok(env)
}

/// The cluster DNS address (the `kube-dns` Service's ClusterIP), for ClusterFirst pods.
async fn cluster_dns(kube: &Kube) -> Option<String> {
    let svc = get_obj(kube, "/api/v1/namespaces/kube-system/services/kube-dns")
        .await
        .ok()??;
    Some(s(&svc, "/spec/clusterIP")).filter(|ip| !ip.is_empty() && ip != "None")
}

/// `/etc/resolv.conf` for the pod by its dnsPolicy (host-network pods: `ClusterFirst` means the
/// node's file; `ClusterFirstWithHostNet` the cluster DNS).
async fn resolv_conf(kube: &Kube, pod: &Value) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    if policy != "ClusterFirstWithHostNet" {
        return host;
    }
    let ns = s(pod, "/metadata/namespace");
    let dns = cluster_dns(kube)
        .await
        .unwrap_or_else(|| "10.43.0.10".into());
    let host_search: Vec<&str> = host
        .lines()
        .filter_map(|l| l.strip_prefix("search "))
        .flat_map(str::split_whitespace)
        .collect();
    format!(
        "search {ns}.svc.cluster.local svc.cluster.local cluster.local{}\nnameserver {dns}\noptions ndots:5\n",
        host_search
            .iter()
            .map(|s| format!(" {s}"))
            .collect::<String>()
    )
}

/// Everything the kubelet prepared for one container run.
pub struct Prepared {
    pub id: String,
    pub shim: ShimSpec,
}

/// Prepare a container of a host-network pod: the bundle (config.json, rootfs mounted) and the
/// shim's spec, written into `ctx.dir`.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    kube: &Kube,
    ctx: &NodeCtx<'_>,
    pod: &Value,
    container: &Value,
    image: &ImageInfo,
    archive: &Path,
    restart: i64,
    log_path: &Path,
) -> Result<Prepared, PrepError> {
    let uid = s(pod, "/metadata/uid");
    let cname = container["name"].as_str().unwrap_or_default();
    let snapshots = ctx
        .data_dir
        .join("agent/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots");
    std::fs::create_dir_all(&snapshots).map_err(|e| PrepError::Create(e.to_string()))?;
    let lower = runc::image_rootfs(&snapshots, archive, image).map_err(PrepError::Create)?;
    // Volumes the container mounts.
    let mut vols: BTreeMap<String, Value> = BTreeMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        vols.insert(
            v["name"].as_str().unwrap_or_default().to_string(),
            v.clone(),
        );
    }
    let mut mounts: Vec<Value> = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(sa) = implicit_sa_volume(pod, container) {
        mounts.push(json!({"name": sa["name"], "mountPath": SA_MOUNT, "readOnly": true}));
        vols.insert(sa["name"].as_str().unwrap_or_default().to_string(), sa);
    }
    let mut binds = Vec::new();
    let mut host_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for m in &mounts {
        let vname = m["name"].as_str().unwrap_or_default();
        let Some(vol) = vols.get(vname) else {
            return Err(PrepError::Config(format!(
                "cannot find volume \"{vname}\" to mount into container \"{cname}\""
            )));
        };
        let src = match host_dirs.get(vname) {
            Some(p) => p.clone(),
            None => {
                let p = volume(kube, ctx, pod, vol).await?;
                host_dirs.insert(vname.to_string(), p.clone());
                p
            }
        };
        let src = match m["subPath"].as_str().filter(|p| !p.is_empty()) {
            Some(sp) if !sp.split('/').any(|c| c == "..") => {
                let p = src.join(sp);
                if !p.exists() {
                    let _ = std::fs::create_dir_all(&p);
                }
                p
            }
            Some(sp) => {
                return Err(PrepError::Create(format!("invalid subPath \"{sp}\"")));
            }
            None => src,
        };
        binds.push(Bind {
            source: src,
            destination: m["mountPath"].as_str().unwrap_or_default().to_string(),
            // configMap, secret, downwardAPI and projected volumes are always read-only.
            readonly: m["readOnly"].as_bool() == Some(true)
                || ["configMap", "secret", "downwardAPI", "projected"]
                    .iter()
                    .any(|k| vol.get(*k).is_some()),
        });
    }
    // /etc/hosts (a host-network pod gets the node's), /etc/resolv.conf, /etc/hostname, the
    // termination log.
    let pod_dir = ctx.kubelet_dir.join("pods").join(&uid);
    std::fs::create_dir_all(pod_dir.join("containers").join(cname))
        .map_err(|e| PrepError::Create(e.to_string()))?;
    let hosts = pod_dir.join("etc-hosts");
    let _ = std::fs::write(&hosts, std::fs::read("/etc/hosts").unwrap_or_default());
    let resolv = pod_dir.join("resolv.conf");
    let _ = std::fs::write(&resolv, resolv_conf(kube, pod).await);
    let hostname = pod_dir.join("hostname");
    let _ = std::fs::write(&hostname, format!("{}\n", ctx.node_name));
    let id = runc::container_id(&uid, cname, restart);
    let term = pod_dir.join("containers").join(cname).join(&id[..8]);
    let _ = std::fs::write(&term, b"");
    let _ = std::fs::set_permissions(&term, std::fs::Permissions::from_mode(0o666));
    let term_path = container["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log")
        .to_string();
    for (src, dst) in [
        (hosts, "/etc/hosts".to_string()),
        (resolv, "/etc/resolv.conf".to_string()),
        (hostname, "/etc/hostname".to_string()),
        (term.clone(), term_path),
    ] {
        binds.push(Bind {
            source: src,
            destination: dst,
            readonly: false,
        });
    }
    let env = environment(
        kube,
        ctx,
        pod,
        container,
        image.config.env.as_deref().unwrap_or(&[]),
    )
    .await?;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .map(|x| runc::expand(x.as_str().unwrap_or_default(), &vars))
                .collect()
        })
    };
    let args = runc::process_args(
        &image.config,
        strings(&container["command"]),
        strings(&container["args"]),
    );
    if args.is_empty() {
        return Err(PrepError::Create("no command specified".into()));
    }
    // The writable layer, new for every run.
    let layers = ctx.dir.join("layer");
    if let Ok(prev) = std::fs::read_to_string(&layers) {
        let _ = std::fs::remove_dir_all(prev.trim());
    }
    let cdir = snapshots.join(format!("c-{id}"));
    let bundle = ctx.dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    runc::mount_overlay(&lower, &cdir.join("fs"), &cdir.join("work"), &rootfs)
        .map_err(PrepError::Create)?;
    let _ = std::fs::write(&layers, cdir.display().to_string());
    let psc = &pod["spec"]["securityContext"];
    let sc = &container["securityContext"];
    let user = runc::resolve_user(
        &lower,
        image.config.user.as_deref(),
        sc["runAsUser"].as_i64().or(psc["runAsUser"].as_i64()),
        sc["runAsGroup"].as_i64().or(psc["runAsGroup"].as_i64()),
    )
    .map_err(PrepError::Create)?;
    let qos = super::pods::qos_class(pod);
    let cgroup = cgroups::container_path(qos, &uid, &id);
    let limits = &container["resources"]["limits"];
    let requests = &container["resources"]["requests"];
    let privileged = sc["privileged"].as_bool() == Some(true);
    let cfg = runc::oci_config(&OciInput {
        args,
        env,
        cwd: container["workingDir"]
            .as_str()
            .map(str::to_string)
            .or_else(|| image.config.working_dir.clone())
            .unwrap_or_default(),
        user,
        caps: runc::capabilities(sc),
        privileged,
        readonly_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        binds: &binds,
        cgroups_path: cgroup.clone(),
        memory_limit: limits["memory"].as_str().map(mem_bytes),
        cpu_milli_limit: limits["cpu"].as_str().map(cpu_milli),
        cpu_milli_request: requests["cpu"]
            .as_str()
            .or(limits["cpu"].as_str())
            .map(cpu_milli),
        host_pid: pod["spec"]["hostPID"].as_bool() == Some(true),
        host_ipc: pod["spec"]["hostIPC"].as_bool() == Some(true),
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap_or_default(),
    )
    .map_err(|e| PrepError::Create(e.to_string()))?;
    let shim = ShimSpec {
        id: id.clone(),
        bundle,
        log_path: log_path.to_path_buf(),
        grace_seconds: pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
        cgroup,
        termination_log: term,
        fallback_to_logs: container["terminationMessagePolicy"].as_str()
            == Some("FallbackToLogsOnError"),
        rootfs,
    };
    std::fs::write(
        ctx.dir.join("runc.json"),
        serde_json::to_vec(&shim).unwrap_or_default(),
    )
    .map_err(|e| PrepError::Create(e.to_string()))?;
    Ok(Prepared { id, shim })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "1", "b": "2"}},
            "spec": {"nodeName": "node1", "hostNetwork": true, "serviceAccountName": "sa"}, "status": {}});
        assert_eq!(field_ref(&pod, "metadata.name", "10.0.0.1").unwrap(), "p");
        assert_eq!(
            field_ref(&pod, "spec.nodeName", "10.0.0.1").unwrap(),
            "node1"
        );
        assert_eq!(
            field_ref(&pod, "status.podIP", "10.0.0.1").unwrap(),
            "10.0.0.1"
        );
        assert_eq!(field_ref(&pod, "metadata.labels['b']", "x").unwrap(), "2");
        assert_eq!(
            field_ref(&pod, "metadata.labels", "x").unwrap(),
            "a=\"1\"\nb=\"2\""
        );
        assert_eq!(field_ref(&pod, "spec.unknown", "x"), None);
    }

    #[test]
    fn items_select_and_rename_keys() {
        let mut d = BTreeMap::new();
        d.insert("a".to_string(), b"1".to_vec());
        d.insert("b".to_string(), b"2".to_vec());
        let sel = select_items(d.clone(), &json!([{"key": "a", "path": "dir/x"}]), "cm").unwrap();
        assert_eq!(sel.keys().collect::<Vec<_>>(), vec!["dir/x"]);
        assert!(
            select_items(d, &json!([{"key": "zz"}]), "cm")
                .unwrap_err()
                .contains("zz")
        );
    }

    #[test]
    fn the_service_account_volume_is_added_unless_opted_out() {
        let c = json!({"name": "c"});
        assert!(implicit_sa_volume(&json!({"spec": {}}), &c).is_some());
        assert!(
            implicit_sa_volume(
                &json!({"spec": {"automountServiceAccountToken": false}}),
                &c
            )
            .is_none()
        );
        let own = json!({"name": "c", "volumeMounts": [{"name": "x", "mountPath": SA_MOUNT}]});
        assert!(implicit_sa_volume(&json!({"spec": {}}), &own).is_none());
    }
}
