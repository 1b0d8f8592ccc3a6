//! Rendering: tera templates (strict: an undefined variable is an error) -> YAML documents ->
//! objects, each remembering the template it came from so every later message can name it.
//!
//! After rendering, each workload's pod template gets an `installer/config-hash` annotation
//! computed from the ConfigMaps and generated Secrets it uses: a changed configuration rolls
//! the pods that read it, and only those; an unchanged one leaves them alone.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppError;

/// The annotation that makes a workload roll when its configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "installer/config-hash";

pub use crate::kube::manifest::{Manifest, Manifests, is_workload};

/// A tera engine over the `.tera` files of a bundle, strict about undefined variables (tera
/// refuses `{{ x }}` when `x` is missing).
pub(crate) fn engine(files: &BTreeMap<String, String>, root: &str) -> Result<tera::Tera, AppError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    let templates: Vec<(&str, &str)> = files
        .iter()
        .filter(|(name, _)| name.ends_with(".tera"))
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    t.add_raw_templates(templates)
        .map_err(|e| AppError::Template {
            file: root.to_owned(),
            message: error_chain(&e),
        })?;
    Ok(t)
}

/// Renders one template of `engine`; errors name `root/name`.
pub(crate) fn render_one(
    engine: &tera::Tera,
    root: &str,
    name: &str,
    context: &Value,
) -> Result<String, AppError> {
    let file = format!("{root}/{name}");
    let ctx = tera::Context::from_value(context.clone()).map_err(|e| AppError::Template {
        file: file.clone(),
        message: error_chain(&e),
    })?;
    engine.render(name, &ctx).map_err(|e| AppError::Template {
        file,
        message: error_chain(&e),
    })
}

/// Splits a rendered multi-document YAML text into objects. Empty documents (comments only)
/// are skipped; anything else must be a mapping with `apiVersion`, `kind` and
/// `metadata.name`.
pub(crate) fn parse_documents(file: &str, text: &str) -> Result<Vec<Manifest>, AppError> {
    let mut docs: Vec<String> = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let err = |message: String| AppError::Template {
            file: format!("{file} (document {})", i + 1),
            message,
        };
        let is_blank = doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if is_blank {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(err("expected a Kubernetes object (a mapping)".into()));
        }
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            if value
                .pointer(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(err(format!(
                    "`{}` is missing",
                    &field[1..].replace('/', ".")
                )));
            }
        }
        out.push(Manifest {
            file: file.to_owned(),
            object: value,
        });
    }
    Ok(out)
}

fn pod_template_mut(obj: &mut Value) -> Option<&mut Value> {
    let kind = obj.get("kind")?.as_str()?.to_owned();
    match kind.as_str() {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            obj.pointer_mut("/spec/template")
        }
        "CronJob" => obj.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The names of the ConfigMaps and Secrets a pod spec reads (volumes, projected volumes,
/// `env[].valueFrom`, `envFrom`), sorted.
pub fn referenced_config(pod_spec: &Value) -> (Vec<String>, Vec<String>) {
    let mut cms = std::collections::BTreeSet::new();
    let mut secrets = std::collections::BTreeSet::new();
    let add = |v: Option<&Value>, set: &mut std::collections::BTreeSet<String>| {
        if let Some(s) = v.and_then(Value::as_str) {
            set.insert(s.to_owned());
        }
    };
    for vol in pod_spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(vol.pointer("/configMap/name"), &mut cms);
        add(vol.pointer("/secret/secretName"), &mut secrets);
        for src in vol
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(src.pointer("/configMap/name"), &mut cms);
            add(src.pointer("/secret/name"), &mut secrets);
        }
    }
    for section in ["initContainers", "containers"] {
        for c in pod_spec
            .get(section)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                add(e.pointer("/valueFrom/configMapKeyRef/name"), &mut cms);
                add(e.pointer("/valueFrom/secretKeyRef/name"), &mut secrets);
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add(e.pointer("/configMapRef/name"), &mut cms);
                add(e.pointer("/secretRef/name"), &mut secrets);
            }
        }
    }
    (cms.into_iter().collect(), secrets.into_iter().collect())
}

/// Adds [`CONFIG_HASH_ANNOTATION`] to every workload's pod template: a digest over the data of
/// each ConfigMap (and Secret) of the set it reads, and the version of each generated Secret
/// it reads (`generated`: Secret name -> version, in the workload's namespace). References to
/// objects in neither are left out (they are not the installer's to track).
pub fn annotate_config_hashes(items: &mut [Manifest], generated: &BTreeMap<String, String>) {
    let data_of = |items: &[Manifest], kind: &str, ns: Option<&str>, name: &str| {
        items
            .iter()
            .find(|m| m.kind() == kind && m.namespace() == ns && m.name() == name)
            .map(|m| {
                let mut d = serde_json::Map::new();
                for k in ["data", "binaryData", "stringData"] {
                    if let Some(v) = m.object.get(k) {
                        d.insert(k.into(), v.clone());
                    }
                }
                serde_json::to_string(&Value::Object(d)).unwrap_or_default()
            })
    };
    let mut hashes = Vec::new();
    for (i, m) in items.iter().enumerate() {
        if !is_workload(&m.object) {
            continue;
        }
        let Some(spec) = super::validate::pod_spec_of(&m.object) else {
            continue;
        };
        let (cms, secrets) = referenced_config(spec);
        let ns = m.namespace();
        let mut h = Sha256::new();
        let mut any = false;
        for name in &cms {
            if let Some(d) = data_of(items, "ConfigMap", ns, name) {
                h.update(format!("configmap/{name}\n{d}\n"));
                any = true;
            }
        }
        for name in &secrets {
            if let Some(v) = generated.get(name) {
                h.update(format!("generated-secret/{name}\n{v}\n"));
                any = true;
            } else if let Some(d) = data_of(items, "Secret", ns, name) {
                h.update(format!("secret/{name}\n{d}\n"));
                any = true;
            }
        }
        if any {
            hashes.push((i, hex::encode(&h.finalize()[..12])));
        }
    }
    for (i, hash) in hashes {
        if let Some(t) = pod_template_mut(&mut items[i].object) {
            let meta = t.as_object_mut().map(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
            });
            if let Some(Value::Object(meta)) = meta {
                let ann = meta
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(ann) = ann {
                    ann.insert(CONFIG_HASH_ANNOTATION.into(), Value::String(hash));
                }
            }
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_split_and_checked() {
        let text = "# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
        let docs = parse_documents("f.yaml.tera", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].describe(), "ConfigMap a");
        assert_eq!(docs[1].kind(), "Namespace");
        let err = parse_documents("f.yaml.tera", "apiVersion: v1\nkind: ConfigMap\n---\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "f.yaml.tera (document 1): `metadata.name` is missing");
        let err = parse_documents("f.yaml.tera", "a: [1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("f.yaml.tera (document 1): "), "{err}");
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_template() {
        let files: BTreeMap<String, String> = [(
            "m.yaml.tera".to_string(),
            "x: {{ values.nope }}\n".to_string(),
        )]
        .into();
        let e = engine(&files, "templates/app").unwrap();
        let err = render_one(&e, "templates/app", "m.yaml.tera", &json!({"values": {}}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("templates/app/m.yaml.tera: "), "{err}");
        assert!(err.contains("values.nope"), "{err}");
    }

    fn workload(name: &str, cm: &str, secret: &str) -> Manifest {
        Manifest {
            file: "w".into(),
            object: json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
                "volumes": [{"name": "v", "configMap": {"name": cm}}]
            }}}}),
        }
    }

    fn cm(name: &str, data: &str) -> Manifest {
        Manifest {
            file: "c".into(),
            object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"k": data}}),
        }
    }

    fn hash_of(items: &[Manifest], name: &str) -> Option<String> {
        items
            .iter()
            .find(|m| m.name() == name && m.kind() == "Deployment")
            .and_then(|m| {
                m.object
                    .pointer("/spec/template/metadata/annotations")
                    .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
    }

    #[test]
    fn config_hashes_follow_exactly_the_config_a_workload_reads() {
        let gen1: BTreeMap<String, String> = [("s".to_string(), "100".to_string())].into();
        let build = |a: &str, b: &str, g: &BTreeMap<String, String>| {
            let mut items = vec![
                cm("one", a),
                cm("two", b),
                workload("w1", "one", "s"),
                workload("w2", "two", "other"),
            ];
            annotate_config_hashes(&mut items, g);
            (
                hash_of(&items, "w1").unwrap(),
                hash_of(&items, "w2").unwrap(),
            )
        };
        let (a1, b1) = build("x", "y", &gen1);
        let (a2, b2) = build("x", "y", &gen1);
        assert_eq!((a1.clone(), b1.clone()), (a2, b2), "deterministic");
        let (a3, b3) = build("x", "changed", &gen1);
        assert_eq!(a3, a1, "w1 does not read `two`");
        assert_ne!(b3, b1, "w2 reads `two`");
        let gen2: BTreeMap<String, String> = [("s".to_string(), "101".to_string())].into();
        let (a4, b4) = build("x", "y", &gen2);
        assert_ne!(a4, a1, "w1 reads the generated secret `s`");
        assert_eq!(b4, b1);
    }

    #[test]
    fn references_are_found_everywhere() {
        let spec = json!({
            "volumes": [{"projected": {"sources": [{"configMap": {"name": "p"}}, {"secret": {"name": "ps"}}]}},
                        {"secret": {"secretName": "vs"}}],
            "initContainers": [{"envFrom": [{"configMapRef": {"name": "ef"}}, {"secretRef": {"name": "es"}}]}],
            "containers": [{"env": [{"valueFrom": {"configMapKeyRef": {"name": "ek"}}}]}]
        });
        let (cms, secrets) = referenced_config(&spec);
        assert_eq!(cms, vec!["ef", "ek", "p"]);
        assert_eq!(secrets, vec!["es", "ps", "vs"]);
    }
}
