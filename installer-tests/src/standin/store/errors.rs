//! API errors as `metav1.Status` objects, with the apiserver's reasons and wording
//! (`k8s.io/apimachinery/pkg/api/errors/errors.go`).

use serde_json::{Value, json};

use super::resources::ResourceType;

/// An error the API returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    fn details(rt: &ResourceType, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        d
    }

    /// `404 NotFound`: `pods "x" not found`.
    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", rt.qualified(), name),
            details: Some(Self::details(rt, name)),
        }
    }

    /// `409 AlreadyExists`.
    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{}\" already exists", rt.qualified(), name),
            details: Some(Self::details(rt, name)),
        }
    }

    /// `409 Conflict` for a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified(),
                name
            ),
            details: Some(Self::details(rt, name)),
        }
    }

    /// `409 Conflict` for a server-side apply conflict.
    pub fn apply_conflicts(conflicts: &[(String, String)], api_version: &str) -> ApiError {
        let n = conflicts.len();
        let mut msg = format!(
            "Apply failed with {n} conflict{}: ",
            if n == 1 { "" } else { "s" }
        );
        let parts: Vec<String> = conflicts
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\" using {api_version}: {f}"))
            .collect();
        msg.push_str(&parts.join("\n"));
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {api_version}"), "field": f}))
            .collect();
        ApiError {
            code: 409,
            reason: "Conflict",
            message: msg,
            details: Some(json!({"causes": causes})),
        }
    }

    /// `422 Invalid`: `Deployment.apps "x" is invalid: <field>: <detail>`.
    pub fn invalid(rt: &ResourceType, name: &str, causes: &[(String, String)]) -> ApiError {
        let joined: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if joined.len() == 1 {
            format!(
                "{} \"{}\" is invalid: {}",
                rt.qualified_kind(),
                name,
                joined[0]
            )
        } else {
            format!(
                "{} \"{}\" is invalid: [{}]",
                rt.qualified_kind(),
                name,
                joined.join(", ")
            )
        };
        let mut details = Self::details(rt, name);
        details["kind"] = json!(rt.kind);
        details["causes"] = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(details),
        }
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// `403 Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: message.into(),
            details: None,
        }
    }

    /// `401 Unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed(what: &str) -> ApiError {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!(
                "the server does not allow this method on the requested resource ({what})"
            ),
            details: None,
        }
    }

    /// `410 Expired` for a too old resourceVersion.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message: message.into(),
            details: None,
        }
    }

    /// `500 InternalError`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// `503 ServiceUnavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 503,
            reason: "ServiceUnavailable",
            message: message.into(),
            details: None,
        }
    }

    /// `429 TooManyRequests` (an eviction blocked by a PodDisruptionBudget).
    pub fn too_many_requests(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 429,
            reason: "TooManyRequests",
            message: message.into(),
            details: None,
        }
    }
}
