//! The Kubernetes API subset: paths, verbs, query parameters and response shapes of the
//! kube-apiserver (`k8s.io/apiserver/pkg/endpoints`), served from the [`Store`].
//!
//! Paths: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>` (discovery), and
//! `/api/v1[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]` (and the same under `/apis/<g>/<v>`).
//! Verbs: get, list (labelSelector, fieldSelector, limit/continue), watch (`?watch=true`, JSON
//! lines, resume from a resourceVersion, bookmarks, `sendInitialEvents`), create, update (PUT with
//! resourceVersion preconditions), patch (merge, strategic, JSON, apply with fieldManager and
//! force), delete (propagationPolicy, gracePeriodSeconds, preconditions), deletecollection, the
//! `status` and `scale` subresources, `pods/eviction` (honouring PodDisruptionBudgets), `pods/binding`
//! and `pods/log`. Lists carry their items without `kind`/`apiVersion`, as the apiserver's JSON does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use super::table;
use crate::standin::auth::{self, rbac};
use crate::standin::store::resources::{self, ResourceType};
use crate::standin::store::selectors::{FieldSelector, LabelSelector};
use crate::standin::store::{
    ApiError, DeleteOpts, Deleted, PatchKind, Store, Sub, WatchEvent, WriteOpts,
};
use crate::standin::version;

/// A request to the Kubernetes API, independent of the HTTP server.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub user_agent: String,
    /// The `Accept` header: a Table is answered when it asks for one (see [`super::table`]).
    pub accept: String,
    pub body: Bytes,
}

impl KubeRequest {
    /// Build from HTTP parts.
    pub fn from_parts(
        method: Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> KubeRequest {
        let query = uri.query().map(url_decode_pairs).unwrap_or_default();
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        KubeRequest {
            method,
            path: uri.path().to_string(),
            query,
            content_type: h("content-type"),
            user_agent: h("user-agent"),
            accept: h("accept"),
            body,
        }
    }

    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decode `a=b&c=d` (form encoding).
pub fn url_decode_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Static facts the API reports.
#[derive(Debug, Clone)]
pub struct KubeCtx {
    /// `ip:port` for `/api` `serverAddressByClientCIDRs`.
    pub server_address: String,
    /// The authenticated caller, authorized on every request (see [`crate::standin::auth`]).
    pub user: auth::UserInfo,
    /// Signs service-account tokens (the TokenRequest subresource).
    pub signer: Arc<auth::jwt::Signer>,
}

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    for w in warnings {
        if let Ok(h) = HeaderValue::from_str(&format!(
            "299 - {}",
            serde_json::to_string(w).unwrap_or_default()
        )) {
            r.headers_mut().append("warning", h);
        }
    }
    r
}

/// A `Status` error response.
pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
        &[],
    )
}

fn text_response(code: StatusCode, s: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(s.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `/version`.
pub fn version_info() -> Value {
    let v = version::current();
    let (major, minor) = version::major_minor(v);
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": (minor.parse::<u32>().unwrap_or(1).saturating_sub(1)).to_string(),
        "gitVersion": v,
        "gitCommit": format!("{}0000000000000000000000000000000000", version::COMMIT),
        "gitTreeState": "clean",
        "buildDate": "2026-06-01T00:00:00Z",
        "goVersion": version::GO_VERSION,
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The health endpoints (`/readyz`, `/livez`, `/healthz`), with `?verbose` check lists.
pub fn health(path: &str, verbose: bool, ready: bool) -> Response<Body> {
    let name = path.trim_start_matches('/');
    let checks = [
        "ping",
        "log",
        "etcd",
        "etcd-readiness",
        "informer-sync",
        "poststarthook/start-apiserver-admission-initializer",
        "poststarthook/generic-apiserver-start-informers",
        "poststarthook/start-kube-apiserver-admission-initializer",
        "poststarthook/bootstrap-controller",
        "poststarthook/rbac/bootstrap-roles",
        "poststarthook/scheduling/bootstrap-system-priority-classes",
        "shutdown",
    ];
    if !ready {
        if verbose {
            let mut s = String::new();
            for c in checks {
                if c == "etcd" || c == "etcd-readiness" {
                    s.push_str(&format!("[-]{c} failed: reason withheld\n"));
                } else {
                    s.push_str(&format!("[+]{c} ok\n"));
                }
            }
            s.push_str(&format!("{name} check failed\n"));
            return text_response(StatusCode::INTERNAL_SERVER_ERROR, s);
        }
        return text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]etcd failed: reason withheld\n{name} check failed"),
        );
    }
    if verbose {
        let mut s = String::new();
        for c in checks {
            s.push_str(&format!("[+]{c} ok\n"));
        }
        s.push_str(&format!("{name} check passed\n"));
        return text_response(StatusCode::OK, s);
    }
    text_response(StatusCode::OK, "ok")
}

/// A parsed resource path.
#[derive(Debug)]
struct ResPath {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_res_path(group: &str, version: &str, rest: &[&str]) -> Option<ResPath> {
    let find = |p: &str| resources::find(group, version, p);
    match rest {
        ["namespaces", ns, plural, tail @ ..] if group.is_empty() || find(plural).is_some() => {
            if let Some(rt) = find(plural).filter(|r| r.namespaced) {
                return match tail {
                    [] => Some(ResPath {
                        rt,
                        namespace: Some(ns.to_string()),
                        name: None,
                        sub: None,
                    }),
                    [name] => Some(ResPath {
                        rt,
                        namespace: Some(ns.to_string()),
                        name: Some(name.to_string()),
                        sub: None,
                    }),
                    [name, sub] => Some(ResPath {
                        rt,
                        namespace: Some(ns.to_string()),
                        name: Some(name.to_string()),
                        sub: Some(sub.to_string()),
                    }),
                    _ => None,
                };
            }
            // `namespaces/<name>/<sub>` of the namespace object itself.
            if group.is_empty() && tail.is_empty() {
                return Some(ResPath {
                    rt: resources::core("namespaces"),
                    namespace: None,
                    name: Some(ns.to_string()),
                    sub: Some(plural.to_string()),
                });
            }
            None
        }
        [plural] => find(plural).map(|rt| ResPath {
            rt,
            namespace: None,
            name: None,
            sub: None,
        }),
        [plural, name] => find(plural).filter(|r| !r.namespaced).map(|rt| ResPath {
            rt,
            namespace: None,
            name: Some(name.to_string()),
            sub: None,
        }),
        [plural, name, sub] => find(plural).filter(|r| !r.namespaced).map(|rt| ResPath {
            rt,
            namespace: None,
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        }),
        _ => None,
    }
}

/// The authorization attributes of a request (`k8s.io/apiserver/pkg/endpoints/request`
/// `RequestInfoFactory`): the verb from the method (`list`/`watch` for collections), and for a
/// `namespaces/<name>` path the namespace is the name.
pub fn request_attrs(req: &KubeRequest) -> rbac::Attrs {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", g, _, rest @ ..] if !rest.is_empty() => (g, rest),
        _ => ("", &[]),
    };
    let watch = req.q("watch").is_some_and(|w| w == "true" || w == "1");
    if rest.is_empty() {
        return rbac::Attrs::non_resource(&req.method.as_str().to_lowercase(), &req.path);
    }
    let (namespace, tail): (String, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..]
            if !tail.is_empty() && !matches!(tail, ["status" | "finalize"]) =>
        {
            (ns.to_string(), tail)
        }
        ["namespaces", ns, ..] => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (resource, name, sub) = match tail {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s, ..] => (*r, *n, *s),
        [] => ("", "", ""),
    };
    let verb = match (&req.method, name.is_empty()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET | &Method::HEAD, true) => "list",
        (&Method::GET | &Method::HEAD, false) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        _ => "",
    };
    rbac::Attrs {
        verb: verb.to_string(),
        resource_request: true,
        group: group.to_string(),
        resource: resource.to_string(),
        subresource: sub.to_string(),
        namespace,
        name: name.to_string(),
        path: req.path.clone(),
    }
}

fn not_found_path(path: &str) -> Response<Body> {
    let e = ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: Some(
            json!({"causes": [{"reason": "UnexpectedServerResponse", "message": format!("404 page not found: {path}")}]}),
        ),
    };
    error_response(&e)
}

fn parse_body(req: &KubeRequest) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Ok(Value::Null);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(&req.body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn manager_for(req: &KubeRequest) -> String {
    if let Some(m) = req.q("fieldManager")
        && !m.is_empty()
    {
        return m.to_string();
    }
    // The apiserver defaults the manager to the user agent's first segment.
    req.user_agent
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn write_opts(req: &KubeRequest) -> WriteOpts {
    WriteOpts {
        manager: manager_for(req),
        dry_run: req.q("dryRun") == Some("All"),
        force: req.q("force") == Some("true"),
        strict: req.q("fieldValidation") == Some("Strict"),
    }
}

fn strip_type_meta(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn list_kind(rt: &ResourceType) -> String {
    format!("{}List", rt.kind)
}

/// Serve one Kubernetes API request from the store.
pub async fn handle(store: &Arc<Store>, req: KubeRequest, ctx: &KubeCtx) -> Response<Body> {
    let attrs = request_attrs(&req);
    if let Err(reason) = rbac::authorize(store, &ctx.user, &attrs) {
        return error_response(&rbac::forbidden(&ctx.user, &attrs, &reason));
    }
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let post = req.method == Method::POST;
    match segs.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "serviceaccounts",
            sa,
            "token",
        ] if post => {
            let r = parse_body(&req).and_then(|b| {
                auth::token_request(store, &ctx.signer, ns, sa, &b, auth::unix_now())
            });
            return match r {
                Ok(v) => json_response(StatusCode::CREATED, &v, &[]),
                Err(e) => error_response(&e),
            };
        }
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if post => {
            return match parse_body(&req) {
                Ok(b) => json_response(
                    StatusCode::CREATED,
                    &rbac::self_subject_access_review(store, &ctx.user, &b),
                    &[],
                ),
                Err(e) => error_response(&e),
            };
        }
        _ => {}
    }
    match handle_inner(store, &req, ctx).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn handle_inner(
    store: &Arc<Store>,
    req: &KubeRequest,
    ctx: &KubeCtx,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => return Ok(json_response(StatusCode::OK, &version_info(), &[])),
        ["api"] if get => {
            return Ok(json_response(
                StatusCode::OK,
                &resources::api_versions(&ctx.server_address),
                &[],
            ));
        }
        ["apis"] if get => {
            return Ok(json_response(
                StatusCode::OK,
                &resources::api_group_list(),
                &[],
            ));
        }
        ["api", "v1"] if get => {
            return Ok(json_response(
                StatusCode::OK,
                &resources::api_resource_list("", "v1").unwrap_or_default(),
                &[],
            ));
        }
        ["apis", g] if get => {
            return match resources::api_group(g) {
                Some(v) => Ok(json_response(StatusCode::OK, &v, &[])),
                None => Ok(not_found_path(&req.path)),
            };
        }
        ["apis", g, v] if get => {
            return match resources::api_resource_list(g, v) {
                Some(v) => Ok(json_response(StatusCode::OK, &v, &[])),
                None => Ok(not_found_path(&req.path)),
            };
        }
        _ => {}
    }
    let rp = match segs.as_slice() {
        ["api", "v1", rest @ ..] => parse_res_path("", "v1", rest),
        ["apis", g, v, rest @ ..] => parse_res_path(g, v, rest),
        _ => None,
    };
    let Some(rp) = rp else {
        return Ok(not_found_path(&req.path));
    };
    let rt = rp.rt;
    let ns = rp.namespace.clone().unwrap_or_default();
    if rt.namespaced && rp.name.is_some() && rp.namespace.is_none() {
        return Ok(not_found_path(&req.path));
    }
    match (&req.method, rp.name.as_deref(), rp.sub.as_deref()) {
        (&Method::GET, None, None) => {
            if req.q("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(store, req, rt, rp.namespace.as_deref());
            }
            list(store, req, rt, rp.namespace.as_deref())
        }
        (&Method::POST, None, None) => {
            let body = parse_body(req)?;
            if rt.namespaced && rp.namespace.is_none() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            if let Some(bns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
                && rt.namespaced
                && !bns.is_empty()
                && bns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let w = store.create(rt, &ns, body, &write_opts(req))?;
            Ok(json_response(StatusCode::CREATED, &w.object, &w.warnings))
        }
        (&Method::DELETE, None, None) => delete_collection(store, req, rt, rp.namespace.as_deref()),
        (&Method::GET, Some(name), None) => match store.get(rt, &ns, name) {
            Some(o) => match table::wanted(&req.accept) {
                Some(v) => {
                    let include = table::include_object(req.q("includeObject"))
                        .map_err(ApiError::bad_request)?;
                    let rv = o
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or_default();
                    let t = table::table(rt, v, &[o], json!({"resourceVersion": rv}), include);
                    Ok(json_response(StatusCode::OK, &t, &[]))
                }
                None => Ok(json_response(StatusCode::OK, &o, &[])),
            },
            None => Err(ApiError::not_found(rt, name)),
        },
        (&Method::GET, Some(name), Some("status")) if rt.status => match store.get(rt, &ns, name) {
            Some(o) => Ok(json_response(StatusCode::OK, &o, &[])),
            None => Err(ApiError::not_found(rt, name)),
        },
        (&Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            let sub = if sub == Some("status") {
                Sub::Status
            } else {
                Sub::Main
            };
            if sub == Sub::Status && !rt.status {
                return Ok(not_found_path(&req.path));
            }
            let body = parse_body(req)?;
            let w = store.replace(rt, &ns, name, body, sub, &write_opts(req))?;
            Ok(json_response(StatusCode::OK, &w.object, &w.warnings))
        }
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let sub = if sub == Some("status") {
                Sub::Status
            } else {
                Sub::Main
            };
            if sub == Sub::Status && !rt.status {
                return Ok(not_found_path(&req.path));
            }
            let kind = patch_kind(&req.content_type)?;
            let body = parse_body(req)?;
            let mut opts = write_opts(req);
            if kind == PatchKind::Apply && req.q("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            if kind != PatchKind::Apply && opts.force {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            opts.force = opts.force && kind == PatchKind::Apply;
            let w = store.patch(rt, &ns, name, kind, &body, sub, &opts)?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &w.object, &w.warnings))
        }
        (&Method::DELETE, Some(name), None) => {
            let opts = delete_opts(req)?;
            match store.delete(rt, &ns, name, &opts)? {
                Deleted::Pending(o) => Ok(json_response(StatusCode::OK, &o, &[])),
                Deleted::Gone(o) => {
                    // The apiserver returns the object for most types; a Status for immediate
                    // deletion of objects without finalizers is also accepted by clients.
                    Ok(json_response(StatusCode::OK, &o, &[]))
                }
            }
        }
        (method, Some(name), Some("scale")) if rt.scale => scale(store, req, method, rt, &ns, name),
        (&Method::POST, Some(name), Some("eviction")) if rt.key() == "core/pods" => {
            evict(store, req, &ns, name)
        }
        (&Method::POST, Some(name), Some("binding")) if rt.key() == "core/pods" => {
            let body = parse_body(req)?;
            let node = body
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            store.update_with(rt, &ns, name, Sub::Main, &manager_for(req), |p| {
                p["spec"]["nodeName"] = json!(node);
            })?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        (&Method::GET, Some(name), Some("log")) if rt.key() == "core/pods" => {
            let pod = store
                .get(rt, &ns, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            let containers: Vec<String> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect();
            let container = match req.q("container") {
                Some(c) => c.to_string(),
                None if containers.len() == 1 => containers[0].clone(),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    )));
                }
            };
            if !containers.contains(&container) {
                return Err(ApiError::bad_request(format!(
                    "container {container} is not valid for pod {name}"
                )));
            }
            // As the apiserver: ask the kubelet of the pod's node, at its InternalIP.
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            let ip = super::super::store::resources::find("", "v1", "nodes")
                .and_then(|nrt| store.get(nrt, "", node))
                .and_then(|n| {
                    n.pointer("/status/addresses")?
                        .as_array()?
                        .iter()
                        .find(|a| a["type"] == "InternalIP")?["address"]
                        .as_str()
                        .map(str::to_string)
                })
                .ok_or_else(|| {
                    ApiError::internal(format!("no InternalIP known for node \"{node}\""))
                })?;
            let q = crate::standin::kubelet::logs::Query::from_params(&req.query);
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            let url = format!(
                "https://{host}:10250/containerLogs/{ns}/{name}/{container}?{}",
                q.to_params()
            );
            // A followed log stays open as long as the container runs.
            let limit = if q.follow { 86_400 } else { 10 };
            let http =
                super::super::client::insecure_with_timeout(std::time::Duration::from_secs(limit))
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() && q.follow => {
                    let mut r = Response::new(Body::from_stream(resp.bytes_stream()));
                    r.headers_mut().insert(
                        "content-type",
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok(r)
                }
                Ok(resp) => {
                    let code = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if code.is_success() {
                        Ok(text_response(StatusCode::OK, text))
                    } else {
                        Err(ApiError::bad_request(text))
                    }
                }
                Err(e) => Err(ApiError::internal(super::super::client::go_error(
                    "GET", &url, &e,
                ))),
            }
        }
        _ => Err(ApiError::method_not_allowed(&format!(
            "{} {}",
            req.method, req.path
        ))),
    }
}

fn patch_kind(ct: &str) -> Result<PatchKind, ApiError> {
    let ct = ct.split(';').next().unwrap_or_default().trim();
    Ok(match ct {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        "application/json-patch+json" => PatchKind::Json,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
        other => {
            return Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
                details: None,
            });
        }
    })
}

fn delete_opts(req: &KubeRequest) -> Result<DeleteOpts, ApiError> {
    let body = parse_body(req)?;
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| req.q("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let propagation = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| req.q("propagationPolicy").map(str::to_string))
        .or_else(|| {
            body.get("orphanDependents")
                .and_then(Value::as_bool)
                .map(|o| if o { "Orphan" } else { "Background" }.to_string())
        });
    let dry_run = req.q("dryRun") == Some("All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOpts {
        grace_seconds: grace,
        propagation,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run,
    })
}

fn selectors(
    req: &KubeRequest,
    rt: &ResourceType,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = match req.q("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    let fields = match req.q("fieldSelector") {
        Some(s) => FieldSelector::parse(s, &rt.key()).map_err(ApiError::bad_request)?,
        None => FieldSelector::default(),
    };
    Ok((labels, fields))
}

fn list(
    store: &Arc<Store>,
    req: &KubeRequest,
    rt: &ResourceType,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(req, rt)?;
    let (items, rv) = store.list(rt, ns, &labels, &fields);
    let limit: usize = req
        .q("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let start: usize = match req.q("continue").filter(|c| !c.is_empty()) {
        Some(c) => c
            .strip_prefix("standin:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?,
        None => 0,
    };
    let total = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(limit)
        .map(strip_type_meta)
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    let next = start + page.len();
    if next < total {
        meta["continue"] = json!(format!("standin:{next}"));
        meta["remainingItemCount"] = json!(total - next);
    }
    if let Some(v) = table::wanted(&req.accept) {
        let include =
            table::include_object(req.q("includeObject")).map_err(ApiError::bad_request)?;
        let t = table::table(rt, v, &page, meta, include);
        return Ok(json_response(StatusCode::OK, &t, &[]));
    }
    let out = json!({"kind": list_kind(rt), "apiVersion": rt.api_version(), "metadata": meta, "items": page});
    Ok(json_response(StatusCode::OK, &out, &[]))
}

fn delete_collection(
    store: &Arc<Store>,
    req: &KubeRequest,
    rt: &ResourceType,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(req, rt)?;
    let opts = delete_opts(req)?;
    let (items, _) = store.list(rt, ns, &labels, &fields);
    let mut out = Vec::new();
    for o in items {
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ons = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match store.delete(rt, &ons, &name, &opts) {
            Ok(Deleted::Gone(v)) | Ok(Deleted::Pending(v)) => out.push(strip_type_meta(v)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rv = store.resource_version();
    let list = json!({"kind": list_kind(rt), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": out});
    Ok(json_response(StatusCode::OK, &list, &[]))
}

fn scale_object(rt: &ResourceType, o: &Value) -> Value {
    let meta = &o["metadata"];
    let selector = o
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let _ = rt;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn scale(
    store: &Arc<Store>,
    req: &KubeRequest,
    method: &Method,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let o = store
        .get(rt, ns, name)
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let mut sc = scale_object(rt, &o);
    match *method {
        Method::GET => Ok(json_response(StatusCode::OK, &sc, &[])),
        Method::PUT | Method::PATCH => {
            let body = parse_body(req)?;
            if *method == Method::PUT {
                sc = body;
            } else {
                match patch_kind(&req.content_type)? {
                    PatchKind::Json => crate::standin::store::patch::json_patch(&mut sc, &body)
                        .map_err(ApiError::bad_request)?,
                    _ => crate::standin::store::patch::merge_patch(&mut sc, &body),
                }
            }
            let replicas = sc
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &[(
                        "spec.replicas".into(),
                        format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    )],
                ));
            }
            let w = store.patch(
                rt,
                ns,
                name,
                PatchKind::Merge,
                &json!({"spec": {"replicas": replicas}}),
                Sub::Main,
                &write_opts(req),
            )?;
            Ok(json_response(
                StatusCode::OK,
                &scale_object(rt, &w.object),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed("scale")),
    }
}

/// `pods/eviction`: refused with 429 when a PodDisruptionBudget would be violated
/// (`pkg/registry/core/pod/storage/eviction.go`).
fn evict(
    store: &Arc<Store>,
    req: &KubeRequest,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pods = resources::core("pods");
    let pod = store
        .get(pods, ns, name)
        .ok_or_else(|| ApiError::not_found(pods, name))?;
    let pdbs = resources::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("no pdb type"))?;
    let (list, _) = store.list(
        pdbs,
        Some(ns),
        &LabelSelector::default(),
        &FieldSelector::default(),
    );
    let labels = pod.pointer("/metadata/labels");
    let healthy = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    for pdb in list {
        let sel = LabelSelector::from_object(pdb.pointer("/spec/selector").unwrap_or(&Value::Null));
        if !sel.matches(labels) {
            continue;
        }
        let allowed = pdb
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if healthy && allowed <= 0 {
            return Err(ApiError::too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
            ));
        }
    }
    let body = parse_body(req)?;
    let opts = DeleteOpts {
        grace_seconds: body
            .pointer("/deleteOptions/gracePeriodSeconds")
            .and_then(Value::as_i64),
        ..Default::default()
    };
    store.delete(pods, ns, name, &opts)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

fn event_matches(
    ev: &WatchEvent,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> (bool, bool) {
    if ev.type_key != rt.key() || ns.is_some_and(|n| n != ev.namespace) {
        return (false, false);
    }
    let now = labels.matches(ev.object.pointer("/metadata/labels")) && fields.matches(&ev.object);
    let before = ev
        .prev
        .as_ref()
        .is_some_and(|p| labels.matches(p.pointer("/metadata/labels")) && fields.matches(p));
    (now, before)
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn watch(
    store: &Arc<Store>,
    req: &KubeRequest,
    rt: &'static ResourceType,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(req, rt)?;
    let timeout = req
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = req.q("allowWatchBookmarks") == Some("true");
    let send_initial = req.q("sendInitialEvents") == Some("true");
    let rv_param = req.q("resourceVersion").unwrap_or_default().to_string();
    // Subscribe before reading the starting point so nothing falls in between.
    let mut live = store.subscribe();
    let mut initial: Vec<Bytes> = Vec::new();
    let mut last_rv;
    if send_initial || rv_param.is_empty() || rv_param == "0" {
        let (items, rv) = store.list(rt, ns, &labels, &fields);
        for o in items {
            initial.push(event_line("ADDED", &o));
        }
        last_rv = rv;
        if send_initial {
            let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            initial.push(event_line("BOOKMARK", &bm));
        }
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param}")))?;
        match store.events_since(rv) {
            Ok(evs) => {
                last_rv = rv;
                for ev in evs {
                    last_rv = ev.rv;
                    if let Some(line) = render_event(&ev, rt, ns, &labels, &fields) {
                        initial.push(line);
                    }
                }
                last_rv = last_rv.max(rv);
            }
            Err(e) => {
                // The apiserver reports an expired resourceVersion inside the watch stream.
                let line = event_line("ERROR", &e.status());
                let mut r = Response::new(Body::from(line));
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                return Ok(r);
            }
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let ns_owned = ns.map(str::to_string);
    let kind = rt.kind;
    let api_version = rt.api_version();
    let store2 = store.clone();
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = store2.resource_version().max(last_rv);
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_rv { continue; }
                        last_rv = ev.rv;
                        if let Some(line) = render_event(&ev, rt, ns_owned.as_deref(), &labels, &fields)
                            && tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired("too old resource version: watch fell behind");
                        let _ = tx.send(event_line("ERROR", &e.status())).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

fn render_event(
    ev: &WatchEvent,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<Bytes> {
    let (now, before) = event_matches(ev, rt, ns, labels, fields);
    let kind = match (ev.kind, now, before) {
        ("DELETED", true, _) => "DELETED",
        ("ADDED", true, _) => "ADDED",
        ("MODIFIED", true, true) => "MODIFIED",
        ("MODIFIED", true, false) if ev.prev.is_some() => "ADDED",
        ("MODIFIED", true, false) => "MODIFIED",
        ("MODIFIED", false, true) => "DELETED",
        _ => return None,
    };
    Some(event_line(kind, &ev.object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = url_decode_pairs("labelSelector=app%3Dweb%2Ctier%20in%20(a)&watch=true&x");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "");
    }

    #[test]
    fn paths() {
        let p =
            parse_res_path("", "v1", &["namespaces", "default", "pods", "x", "status"]).unwrap();
        assert_eq!(
            (
                p.rt.plural,
                p.namespace.as_deref(),
                p.name.as_deref(),
                p.sub.as_deref()
            ),
            ("pods", Some("default"), Some("x"), Some("status"))
        );
        let p = parse_res_path("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (p.rt.plural, p.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let p = parse_res_path("", "v1", &["namespaces"]).unwrap();
        assert_eq!(p.rt.plural, "namespaces");
        let p = parse_res_path("", "v1", &["pods"]).unwrap();
        assert!(p.namespace.is_none() && p.name.is_none());
        let p = parse_res_path(
            "apps",
            "v1",
            &["namespaces", "x", "deployments", "d", "scale"],
        )
        .unwrap();
        assert_eq!(p.sub.as_deref(), Some("scale"));
        assert!(parse_res_path("", "v1", &["nodes", "n1"]).is_some());
    }
}
