//! Service-account tokens: ES256 JWTs signed with the cluster's service-account key.
//!
//! k3s generates `server/tls/service.key` (an ECDSA P-256 key, `pkg/daemons/control/deps`) and
//! runs kube-apiserver with `--service-account-key-file` and `--service-account-signing-key-file`
//! set to it, `--service-account-issuer=https://kubernetes.default.svc.<cluster-domain>` and
//! `--api-audiences=<issuer>,k3s`. The claims follow `pkg/serviceaccount/claims.go`: `iss`,
//! `sub` (`system:serviceaccount:<ns>:<sa>`), `aud`, `exp`, `iat`, `nbf`, `jti` and the private
//! `kubernetes.io` claim naming the namespace, the service account (name and uid) and, for a
//! token bound to a pod, the pod (and its node). The header's `kid` is kube-apiserver's key id:
//! the unpadded base64url SHA-256 of the public key's PKIX DER.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use sha2::Digest;

/// The private `kubernetes.io` claim of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// `(name, uid)` of the pod the token is bound to.
    pub pod: Option<(String, String)>,
    /// `(name, uid)` of the pod's node.
    pub node: Option<(String, String)>,
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub audiences: Vec<String>,
    pub expires: i64,
    pub issued: i64,
    pub id: String,
    pub bound: Bound,
}

/// Signs and verifies tokens with one key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    issuer: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// kube-apiserver's issuer (and first API audience) for a cluster domain.
pub fn issuer(cluster_domain: &str) -> String {
    let d = if cluster_domain.is_empty() {
        "cluster.local"
    } else {
        cluster_domain
    };
    format!("https://kubernetes.default.svc.{d}")
}

impl Signer {
    /// A signer over the PEM key `service.key` (PKCS#8 or SEC1 P-256), issuing as `issuer`.
    pub fn new(key_pem: &str, issuer: &str) -> Result<Signer, String> {
        let kp =
            rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("service account key: {e}"))?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &kp.serialize_der(),
            &rng,
        )
        .map_err(|e| format!("service account key is not an ECDSA P-256 key: {e}"))?;
        let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&kp),
        ));
        Ok(Signer {
            key,
            kid,
            issuer: issuer.to_string(),
        })
    }

    /// The issuer (`iss`), also the default audience.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API accepts (`--api-audiences`): the issuer and `k3s`.
    pub fn api_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone(), "k3s".to_string()]
    }

    /// Sign a token for `bound`, valid from `now` for `seconds`, for `audiences`.
    pub fn sign(
        &self,
        bound: &Bound,
        audiences: &[String],
        now: i64,
        seconds: i64,
    ) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let mut k8s = json!({
            "namespace": bound.namespace,
            "serviceaccount": {"name": bound.service_account, "uid": bound.service_account_uid},
        });
        if let Some((name, uid)) = &bound.pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        if let Some((name, uid)) = &bound.node {
            k8s["node"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": audiences,
            "exp": now + seconds,
            "iat": now,
            "iss": self.issuer,
            "jti": super::super::store::new_uid(),
            "kubernetes.io": k8s,
            "nbf": now,
            "sub": format!("system:serviceaccount:{}:{}", bound.namespace, bound.service_account),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Verify a token's signature, issuer, validity at `now` and audience (one of the API
    /// audiences). The error says why (kube-apiserver logs it; the client only sees 401).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed header")?;
        if header["alg"] != "ES256" {
            return Err("unexpected signing algorithm".into());
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "malformed signature")?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        let v: Value = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed claims")?;
        if v["iss"] != self.issuer.as_str() {
            return Err("token issuer is not recognised".into());
        }
        let num = |k: &str| v[k].as_i64().unwrap_or(0);
        let expires = num("exp");
        // kube-apiserver allows 60 s of clock skew on exp and nbf.
        if expires + 60 < now {
            return Err("token has expired".into());
        }
        if num("nbf") - 60 > now {
            return Err("token is not valid yet".into());
        }
        let audiences: Vec<String> = match &v["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let api = self.api_audiences();
        if !audiences.iter().any(|a| api.contains(a)) {
            return Err("token audiences is invalid for the target audiences".into());
        }
        let k = &v["kubernetes.io"];
        let s = |p: &str| k.pointer(p).and_then(Value::as_str).map(str::to_string);
        let pair = |o: &str| Some((s(&format!("/{o}/name"))?, s(&format!("/{o}/uid"))?));
        let bound = Bound {
            namespace: s("/namespace").ok_or("no namespace claim")?,
            service_account: s("/serviceaccount/name").ok_or("no service account claim")?,
            service_account_uid: s("/serviceaccount/uid").unwrap_or_default(),
            pod: pair("pod"),
            node: pair("node"),
        };
        if v["sub"]
            != format!(
                "system:serviceaccount:{}:{}",
                bound.namespace, bound.service_account
            )
            .as_str()
        {
            return Err("subject does not match the service account claim".into());
        }
        Ok(Claims {
            audiences,
            expires,
            issued: num("iat"),
            id: v["jti"].as_str().unwrap_or_default().to_string(),
            bound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let k = rcgen::KeyPair::generate().unwrap().serialize_pem();
        Signer::new(&k, &issuer("cluster.local")).unwrap()
    }

    fn bound() -> Bound {
        Bound {
            namespace: "ns".into(),
            service_account: "sa".into(),
            service_account_uid: "u1".into(),
            pod: Some(("p".into(), "u2".into())),
            node: None,
        }
    }

    #[test]
    fn signed_token_verifies_with_its_claims() {
        let s = signer();
        let t = s.sign(&bound(), &s.api_audiences(), 1000, 3600).unwrap();
        let c = s.verify(&t, 1100).unwrap();
        assert_eq!(c.bound, bound());
        assert_eq!(c.expires, 4600);
        assert_eq!(c.issued, 1000);
        assert_eq!(
            c.audiences,
            vec!["https://kubernetes.default.svc.cluster.local", "k3s"]
        );
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(claims["kubernetes.io"]["pod"]["uid"], "u2");
    }

    #[test]
    fn expired_tampered_foreign_and_wrong_audience_tokens_are_rejected() {
        let s = signer();
        let t = s.sign(&bound(), &s.api_audiences(), 1000, 600).unwrap();
        assert!(s.verify(&t, 1000 + 600 + 61).is_err(), "expired");
        assert!(s.verify(&t, 1000 + 600 + 59).is_ok(), "within skew");
        let other = signer();
        assert_eq!(
            other.verify(&t, 1100).unwrap_err(),
            "invalid signature",
            "another cluster's key"
        );
        // Change the claims but keep the signature.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["kubernetes.io"]["namespace"] = json!("kube-system");
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert_eq!(
            s.verify(&parts.join("."), 1100).unwrap_err(),
            "invalid signature"
        );
        let vault = s.sign(&bound(), &["vault".to_string()], 1000, 600).unwrap();
        assert!(s.verify(&vault, 1100).is_err(), "audience not the API's");
        assert!(s.verify("abc", 1100).is_err());
    }
}
