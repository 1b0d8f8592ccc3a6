//! `k3s etcd-snapshot save|ls|delete|prune` and the server's `/db/snapshot` endpoint.
//!
//! As in k3s 1.36 (`pkg/cli/etcdsnapshot/etcd_snapshot.go`, `pkg/etcd/snapshot.go`): the command
//! reads the server token from `${data-dir}/server/token` (or `--etcd-token`), validates the
//! server at `--etcd-server` (default `https://127.0.0.1:6443`) against the token's CA hash, and
//! POSTs a snapshot request to `/db/snapshot` as user `server`. The server writes
//! `<name>-<node-name>-<unix time>` (name default `on-demand`) to `--etcd-snapshot-dir` (default
//! `${data-dir}/server/db/snapshots`) and answers with the names created; the command logs
//! `Snapshot <name> saved.`. `ls` prints `Name Location Size Created` in a tab-aligned table. A
//! snapshot holds the stand-in's store (JSON), not an etcd database.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use super::client;
use super::flags::{self, Command};
use super::log;
use super::paths::{Root, k3s};
use super::server::Server;
use super::token;

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn snapshot_dir(srv: &Server, req: &Value) -> PathBuf {
    let d = req["dir"]
        .as_str()
        .map(str::to_string)
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| srv.cfg.etcd_snapshot_dir.clone());
    if d.is_empty() {
        srv.server_dir.join("db/snapshots")
    } else {
        srv.root.path(d)
    }
}

fn list_dir(srv: &Server, dir: &Path) -> Vec<Value> {
    let mut items = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return items;
    };
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        let created = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| jiff::Timestamp::from_second(d.as_secs() as i64).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let logical = if srv.root.is_prefixed() {
            srv.cfg
                .node
                .data_dir
                .join("server/db/snapshots")
                .join(&name)
        } else {
            e.path()
        };
        items.push(json!({
            "spec": {"snapshotName": name, "nodeName": srv.cfg.node.node_name, "location": format!("file://{}", logical.display())},
            "status": {"size": meta.len().to_string(), "creationTime": created, "readyToUse": true},
        }));
    }
    items.sort_by(|a, b| {
        a["status"]["creationTime"]
            .as_str()
            .cmp(&b["status"]["creationTime"].as_str())
            .then(
                a["spec"]["snapshotName"]
                    .as_str()
                    .cmp(&b["spec"]["snapshotName"].as_str()),
            )
    });
    items
}

async fn store_state(srv: &Server) -> Result<Vec<u8>, String> {
    if let Some(s) = &srv.store {
        s.flush().map_err(|e| e.to_string())?;
        return std::fs::read(srv.server_dir.join("db/standin/state.json"))
            .map_err(|e| e.to_string());
    }
    let Some(r) = &srv.remote else {
        return Err("etcd datastore is not started".into());
    };
    let url = format!("{}/v1-k3s/standin/state", r.url);
    let resp = r
        .client
        .get(&url)
        .basic_auth("server", Some(&srv.server_pw))
        .send()
        .await
        .map_err(|e| client::go_error("GET", &url, &e))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: {}", client::status_text(resp.status())));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// `POST /db/snapshot` on a server.
pub async fn handle(srv: &Server, body: &[u8]) -> Response<Body> {
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    if matches!(srv.role, super::server::Role::Owner { etcd: false }) {
        return respond(
            StatusCode::BAD_REQUEST,
            &json!({"kind": "Status", "message": "etcd datastore disabled"}),
        );
    }
    let dir = snapshot_dir(srv, &req);
    match req["operation"].as_str().unwrap_or_default() {
        "save" => {
            let base = req["name"][0].as_str().unwrap_or("on-demand");
            let name = format!(
                "{base}-{}-{}",
                srv.cfg.node.node_name,
                jiff::Timestamp::now().as_second()
            );
            let data = match store_state(srv).await {
                Ok(d) => d,
                Err(e) => {
                    return respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"kind": "Status", "message": e}),
                    );
                }
            };
            if let Err(e) = super::tls_files::write_file(&dir.join(&name), &data, 0o600) {
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"kind": "Status", "message": e.to_string()}),
                );
            }
            log::info(format!(
                "Saving etcd snapshot to {}",
                dir.join(&name).display()
            ));
            respond(StatusCode::OK, &json!({"created": [name]}))
        }
        "list" => respond(
            StatusCode::OK,
            &json!({"apiVersion": "k3s.cattle.io/v1", "kind": "ETCDSnapshotFileList", "items": list_dir(srv, &dir)}),
        ),
        "delete" => {
            let mut deleted = Vec::new();
            for n in req["name"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !n.contains('/') && std::fs::remove_file(dir.join(n)).is_ok() {
                    deleted.push(n.to_string());
                }
            }
            respond(StatusCode::OK, &json!({"deleted": deleted}))
        }
        "prune" => {
            let base = req["name"][0].as_str().unwrap_or("on-demand").to_string();
            let keep = req["retention"]
                .as_u64()
                .unwrap_or(srv.cfg.etcd_snapshot_retention as u64) as usize;
            let mut mine: Vec<Value> = list_dir(srv, &dir)
                .into_iter()
                .filter(|i| {
                    i["spec"]["snapshotName"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{base}-")))
                })
                .collect();
            let mut deleted = Vec::new();
            while mine.len() > keep {
                let i = mine.remove(0);
                if let Some(n) = i["spec"]["snapshotName"].as_str()
                    && std::fs::remove_file(dir.join(n)).is_ok()
                {
                    deleted.push(n.to_string());
                }
            }
            respond(StatusCode::OK, &json!({"deleted": deleted}))
        }
        other => respond(
            StatusCode::BAD_REQUEST,
            &json!({"kind": "Status", "message": format!("unsupported snapshot operation {other:?}")}),
        ),
    }
}

/// The CLI: `k3s etcd-snapshot <sub> [flags]`. Returns the exit code.
pub async fn cli(root: Root, sub: &str, args: &[String]) -> i32 {
    let mut warn = |w: String| log::warn(w.trim_end());
    let f = match flags::load(&root, Command::EtcdSnapshot, args, &mut warn) {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            eprintln!(
                "Incorrect Usage: {e}\n\n{}",
                flags::usage(Command::EtcdSnapshot)
            );
            log::fatal(format!("Error: {e}"));
        }
        Err(e) => log::fatal(e.to_string()),
    };
    let op = match sub {
        "save" => "save",
        "ls" | "list" | "l" => "list",
        "delete" => "delete",
        "prune" => "prune",
        other => {
            eprintln!("No help topic for '{other}'");
            return 3;
        }
    };
    let data_dir = PathBuf::from(f.get("data-dir").unwrap_or(k3s::DATA_DIR));
    let tok = match f.get("etcd-token") {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => {
            let p = data_dir.join("server/token");
            match std::fs::read_to_string(root.path(&p)) {
                Ok(t) => t.trim_end_matches('\n').to_string(),
                Err(e) => log::fatal(format!(
                    "Error: open {}: {}",
                    p.display(),
                    super::config::io_msg(&e)
                )),
            }
        }
    };
    let info = match token::parse(&tok) {
        Ok(i) => i,
        Err(e) => log::fatal(format!("Error: {e}")),
    };
    let server = f
        .get("etcd-server")
        .unwrap_or("https://127.0.0.1:6443")
        .trim_end_matches('/')
        .to_string();
    let ca = match client::get_cacerts(&server).await {
        Ok(c) => c,
        Err(e) => log::fatal(format!("Error: {e}")),
    };
    if let token::CaCheck::Mismatch(m) = token::check_ca(&info, &ca) {
        log::fatal(format!("Error: {m}"));
    }
    let mut req = json!({"operation": op});
    if op == "save" || op == "prune" {
        req["name"] = json!([f.get("name").unwrap_or("on-demand")]);
    }
    if op == "delete" {
        req["name"] = json!(f.args);
    }
    if f.is_set("dir") {
        req["dir"] = json!(f.string("dir"));
    }
    if op == "prune"
        && let Some(r) = f
            .get("snapshot-retention")
            .and_then(|r| r.parse::<u64>().ok())
    {
        req["retention"] = json!(r);
    }
    let http = match client::with_ca_timeout(
        &String::from_utf8_lossy(&ca),
        None,
        Some(std::time::Duration::from_secs(120)),
    ) {
        Ok(c) => c,
        Err(e) => log::fatal(format!("Error: {e}")),
    };
    let url = format!("{server}/db/snapshot");
    let resp = match http
        .post(&url)
        .basic_auth("server", Some(&info.password))
        .json(&req)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => log::fatal(format!(
            "Error: see server log for details: {}",
            client::go_error("POST", &url, &e)
        )),
    };
    if !resp.status().is_success() {
        let e = super::server::response_error(&url, resp).await;
        log::fatal(format!("Error: see server log for details: {e}"));
    }
    let v: Value = resp.json().await.unwrap_or_default();
    match op {
        "save" => {
            for n in v["created"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                log::info(format!("Snapshot {n} saved."));
            }
        }
        "list" => {
            let rows: Vec<[String; 4]> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    [
                        i["spec"]["snapshotName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        i["spec"]["location"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        i["status"]["size"].as_str().unwrap_or_default().to_string(),
                        i["status"]["creationTime"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&rows));
        }
        _ => {
            for n in v["deleted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                log::info(format!("Snapshot {n} deleted."));
            }
        }
    }
    0
}

/// Go's `tabwriter` with padding 1: columns separated by at least one space.
fn table(rows: &[[String; 4]]) -> String {
    let header = [
        "Name".to_string(),
        "Location".to_string(),
        "Size".to_string(),
        "Created".to_string(),
    ];
    let all: Vec<&[String; 4]> = std::iter::once(&header).chain(rows.iter()).collect();
    let widths: Vec<usize> = (0..3)
        .map(|c| all.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        for c in 0..3 {
            out.push_str(&format!("{:<w$} ", r[c], w = widths[c]));
        }
        out.push_str(&r[3]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_tab_aligned() {
        let t = table(&[[
            "on-demand-srv1-1".into(),
            "file:///x".into(),
            "12".into(),
            "2026-01-01T00:00:00Z".into(),
        ]]);
        assert_eq!(
            t,
            "Name             Location  Size Created\non-demand-srv1-1 file:///x 12   2026-01-01T00:00:00Z\n"
        );
    }
}
