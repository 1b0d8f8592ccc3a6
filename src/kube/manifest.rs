//! A rendered Kubernetes object and a list of them: what the application's templates
//! produce and what [`super::apply`] applies. Kept here, below the application layer, so
//! the cluster layer does not depend on the application.

use serde_json::Value;

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The template it came from, e.g. `templates/app/manifests/30-api.yaml.tera`.
    pub file: String,
    /// The object as JSON (`apiVersion`, `kind`, `metadata`, ...).
    pub object: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn api_version(&self) -> &str {
        self.object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }

    /// `Kind namespace/name` or `Kind name`.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// A rendered, ordered set of objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub items: Vec<Manifest>,
}

impl Manifests {
    /// The object of that kind, namespace and name.
    pub fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&Manifest> {
        self.items
            .iter()
            .find(|m| m.kind() == kind && m.name() == name && m.namespace() == namespace)
    }

    /// Every object as one multi-document YAML text (for `--dry-run` and snapshots).
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for m in &self.items {
            out.push_str(&format!("# Source: {}\n", m.file));
            match serde_saphyr::to_string(&m.object) {
                Ok(y) => out.push_str(&y),
                Err(e) => out.push_str(&format!("# (cannot show: {e})\n")),
            }
            out.push_str("---\n");
        }
        out
    }
}

/// Whether the object runs pods.
pub fn is_workload(obj: &Value) -> bool {
    matches!(
        obj.get("kind").and_then(Value::as_str),
        Some("Pod" | "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob")
    )
}
