//! Secret volumes, as far as a simulated container's TLS needs them.
//!
//! A real container that serves HTTPS uses the certificate its pod mounts (the installer's
//! gateway mounts the `kubernetes.io/tls` Secret `gateway-tls`, issued by the appliance CA), and
//! a client that trusts only that CA (the installer's final endpoint gate) accepts nothing else.
//! So when a container mounts a Secret volume holding `tls.crt` and `tls.key`, the kubelet reads
//! that Secret from the API (as the kubelet's secret volume plugin does,
//! kubernetes `pkg/volume/secret`) and hands the pair to the container's shim, which serves its
//! HTTPS ports with it instead of a self-signed certificate. Other Secret contents are not
//! materialized.

use std::path::Path;

use base64::Engine;
use serde_json::Value;

use super::kubelet::Kube;

const CERT_FILE: &str = "tls.crt";
const KEY_FILE: &str = "tls.key";

/// The volumes of `pod` that `container` mounts and that are Secret volumes: Secret names.
pub fn mounted_secrets(pod: &Value, container: &Value) -> Vec<String> {
    let mounts: Vec<&str> = container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["name"].as_str().is_some_and(|n| mounts.contains(&n)))
        .filter_map(|v| v.pointer("/secret/secretName").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// `tls.crt` and `tls.key` of a Secret object (base64 `data`), if it has both.
pub fn tls_pair_of(secret: &Value) -> Option<(String, String)> {
    let get = |k: &str| {
        let b64 = secret.get("data")?.get(k)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str()?)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((get(CERT_FILE)?, get(KEY_FILE)?))
}

/// The TLS pair of the first Secret volume `container` mounts that holds one.
pub async fn tls_pair(kube: &Kube, pod: &Value, container: &Value) -> Option<(String, String)> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    for name in mounted_secrets(pod, container) {
        let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
        if let Ok((200, secret)) = kube.req(reqwest::Method::GET, &path, None, None).await
            && let Some(pair) = tls_pair_of(&secret)
        {
            return Some(pair);
        }
    }
    None
}

/// Writes the pair beside the shim's spec in `dir` (mode 0600), or removes it.
pub fn write(dir: &Path, pair: Option<&(String, String)>) {
    match pair {
        Some((cert, key)) => {
            let _ = super::tls_files::write_file(&dir.join(CERT_FILE), cert.as_bytes(), 0o644);
            let _ = super::tls_files::write_file(&dir.join(KEY_FILE), key.as_bytes(), 0o600);
        }
        None => {
            let _ = std::fs::remove_file(dir.join(CERT_FILE));
            let _ = std::fs::remove_file(dir.join(KEY_FILE));
        }
    }
}

/// The pair the kubelet wrote for this shim, if any.
pub fn read(dir: &Path) -> Option<(String, String)> {
    let cert = std::fs::read_to_string(dir.join(CERT_FILE)).ok()?;
    let key = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
    Some((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_mounted_tls_secret_is_found_and_decoded() {
        let pod = json!({"metadata": {"namespace": "appliance"}, "spec": {"volumes": [
            {"name": "config", "configMap": {"name": "gateway-nginx"}},
            {"name": "tls", "secret": {"secretName": "gateway-tls"}},
            {"name": "other", "secret": {"secretName": "not-mounted"}}
        ]}});
        let container =
            json!({"name": "nginx", "volumeMounts": [{"name": "config"}, {"name": "tls"}]});
        assert_eq!(mounted_secrets(&pod, &container), vec!["gateway-tls"]);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let secret = json!({"data": {"tls.crt": b64("CERT"), "tls.key": b64("KEY")}});
        assert_eq!(tls_pair_of(&secret), Some(("CERT".into(), "KEY".into())));
        assert_eq!(
            tls_pair_of(&json!({"data": {"tls.crt": b64("CERT")}})),
            None
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), Some(&("CERT".into(), "KEY".into())));
        assert_eq!(read(dir.path()), Some(("CERT".into(), "KEY".into())));
        write(dir.path(), None);
        assert_eq!(read(dir.path()), None);
    }
}
