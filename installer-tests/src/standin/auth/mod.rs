//! API identity: who a request is ([`authenticate`]) and what it may do ([`rbac`]).
//!
//! As kube-apiserver under k3s (`anonymous-auth=false`): a client certificate signed by the
//! cluster's client CA names the user (CN) and its groups (O); without one, an
//! `Authorization: Bearer` service-account token ([`jwt`]) does, verified against
//! `server/tls/service.key` on every server and, where the store is, checked against the live
//! ServiceAccount (and the pod it is bound to): a token of a deleted ServiceAccount or pod is
//! `401 Unauthorized`, as is an expired, foreign or malformed one. Every authenticated user is in
//! `system:authenticated`; a service account is
//! `system:serviceaccount:<ns>:<name>` in `system:serviceaccounts` and
//! `system:serviceaccounts:<ns>`.
//!
//! A joined server forwards API requests to the server that holds the store with the admin
//! certificate; it passes the caller's identity along as kube-apiserver's impersonation headers
//! (`Impersonate-User`, `Impersonate-Group`; a bearer token is passed as it came), which the store's
//! server honours from a forwarding `system:masters` client only.

pub mod jwt;
pub mod rbac;

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::api::ConnInfo;
use super::store::resources;
use super::store::{ApiError, Store};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with `groups` plus `system:authenticated`.
    pub fn new(name: &str, groups: &[String]) -> UserInfo {
        let mut groups = groups.to_vec();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo {
            name: name.to_string(),
            groups,
        }
    }

    /// The identity of a service account.
    pub fn service_account(ns: &str, name: &str) -> UserInfo {
        UserInfo::new(
            &format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ],
        )
    }

    /// In `system:masters` (every request allowed, as kube-apiserver's privileged group).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The header a joined server adds when it forwards a request.
pub const FORWARDED_BY: &str = "x-k3s-standin-forwarded-by";

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get("authorization")?.to_str().ok()?;
    let (scheme, tok) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim())
        .filter(|t| !t.is_empty())
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn ts_seconds(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Authenticate a request: `None` is `401 Unauthorized`. `store` is given on the server that
/// holds the cluster state (tokens are then checked against the live objects).
pub fn authenticate(
    headers: &HeaderMap,
    conn: &ConnInfo,
    signer: &jwt::Signer,
    store: Option<&Store>,
) -> Option<UserInfo> {
    if let Some(c) = &conn.client {
        let user = UserInfo::new(&c.common_name, &c.organizations);
        if user.is_master() && headers.contains_key(FORWARDED_BY) {
            if let Some(name) = headers
                .get("impersonate-user")
                .and_then(|v| v.to_str().ok())
            {
                let groups: Vec<String> = headers
                    .get_all("impersonate-group")
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                return Some(UserInfo::new(name, &groups));
            }
            if let Some(t) = bearer(headers) {
                return authenticate_token(t, signer, store, unix_now());
            }
        }
        return Some(user);
    }
    authenticate_token(bearer(headers)?, signer, store, unix_now())
}

/// Verify a service-account token and (with `store`) that its ServiceAccount and pod still exist.
pub fn authenticate_token(
    token: &str,
    signer: &jwt::Signer,
    store: Option<&Store>,
    now: i64,
) -> Option<UserInfo> {
    let claims = match signer.verify(token, now) {
        Ok(c) => c,
        Err(e) => {
            super::log::debug(format!("Unable to authenticate the request: {e}"));
            return None;
        }
    };
    let b = &claims.bound;
    if let Some(store) = store {
        let uid = |o: &Value| {
            o.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let sa = store.get(
            resources::core("serviceaccounts"),
            &b.namespace,
            &b.service_account,
        )?;
        if !b.service_account_uid.is_empty() && uid(&sa) != b.service_account_uid {
            return None;
        }
        if let Some((pod_name, pod_uid)) = &b.pod {
            let pod = store.get(resources::core("pods"), &b.namespace, pod_name)?;
            if &uid(&pod) != pod_uid {
                return None;
            }
            // pkg/serviceaccount/claims.go: a pod deleted more than 60 s ago invalidates it.
            if let Some(d) = pod
                .pointer("/metadata/deletionTimestamp")
                .and_then(Value::as_str)
                .and_then(ts_seconds)
                && d + 60 < now
            {
                return None;
            }
        }
    }
    Some(UserInfo::service_account(&b.namespace, &b.service_account))
}

/// The headers a joined server forwards with (see the module doc): the caller's identity as
/// impersonation headers, or its bearer token.
pub fn forward_headers(headers: &HeaderMap, conn: &ConnInfo) -> HeaderMap {
    let mut h = headers.clone();
    for k in ["impersonate-user", "impersonate-group", "authorization"] {
        h.remove(k);
    }
    match &conn.client {
        Some(c) => {
            if let Ok(v) = HeaderValue::from_str(&c.common_name) {
                h.insert("impersonate-user", v);
            }
            for o in &c.organizations {
                if let Ok(v) = HeaderValue::from_str(o) {
                    h.append("impersonate-group", v);
                }
            }
        }
        None => {
            if let Some(v) = headers.get("authorization") {
                h.insert("authorization", v.clone());
            }
        }
    }
    h
}

/// The TokenRequest subresource (`POST .../serviceaccounts/<sa>/token`,
/// `pkg/registry/core/serviceaccount/storage/token.go`): audiences (default: the API's),
/// `expirationSeconds` (default 3600, at least 600), and a `boundObjectRef` to a Pod of the same
/// namespace running as that service account.
pub fn token_request(
    store: &Store,
    signer: &jwt::Signer,
    ns: &str,
    sa_name: &str,
    body: &Value,
    now: i64,
) -> Result<Value, ApiError> {
    let sa_rt = resources::core("serviceaccounts");
    let sa = store
        .get(sa_rt, ns, sa_name)
        .ok_or_else(|| ApiError::not_found(sa_rt, sa_name))?;
    let invalid = |field: &str, msg: String| {
        let message =
            format!("TokenRequest.authentication.k8s.io \"{sa_name}\" is invalid: {field}: {msg}");
        ApiError {
            code: 422,
            reason: "Invalid",
            details: Some(
                json!({"name": sa_name, "group": "authentication.k8s.io", "kind": "TokenRequest",
                "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}]}),
            ),
            message,
        }
    };
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if seconds < 600 {
        return Err(invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            format!(
                "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if audiences.is_empty() {
        audiences = signer.api_audiences();
    }
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut bound = jwt::Bound {
        namespace: ns.to_string(),
        service_account: sa_name.to_string(),
        service_account_uid: s(&sa, "/metadata/uid"),
        pod: None,
        node: None,
    };
    if let Some(r) = spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        let kind = s(r, "/kind");
        let name = s(r, "/name");
        if kind != "Pod" {
            return Err(invalid(
                "spec.boundObjectRef.kind",
                format!("Unsupported value: \"{kind}\": supported values: \"Pod\""),
            ));
        }
        let pods = resources::core("pods");
        let pod = store
            .get(pods, ns, &name)
            .ok_or_else(|| ApiError::not_found(pods, &name))?;
        let uid = s(&pod, "/metadata/uid");
        let want = s(r, "/uid");
        if !want.is_empty() && want != uid {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on pods \"{name}\": the UID in the bound object reference ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                ),
                details: None,
            });
        }
        let pod_sa = match s(&pod, "/spec/serviceAccountName") {
            x if x.is_empty() => "default".to_string(),
            x => x,
        };
        if pod_sa != sa_name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount \"{sa_name}\" to pod running with different serviceaccount name."
            )));
        }
        let node = s(&pod, "/spec/nodeName");
        if !node.is_empty() {
            let node_uid = store
                .get(resources::core("nodes"), "", &node)
                .map(|n| s(&n, "/metadata/uid"))
                .unwrap_or_default();
            bound.node = Some((node, node_uid));
        }
        bound.pod = Some((name, uid));
    }
    let token = signer
        .sign(&bound, &audiences, now, seconds)
        .map_err(ApiError::internal)?;
    let exp = jiff::Timestamp::from_second(now + seconds)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut out_spec =
        json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": null});
    if let Some(r) = spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        out_spec["boundObjectRef"] = r.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": exp},
    }))
}
