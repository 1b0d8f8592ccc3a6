//! Label selectors (matchLabels and matchExpressions), as Kubernetes evaluates them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `selector` selects an object with `labels`. An empty selector selects everything;
/// an unknown operator selects nothing (and is reported by [`problems`]).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let Some(exprs) = &selector.match_expressions else {
        return true;
    };
    exprs.iter().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    })
}

/// Operators the enforcer does not know, for the compile report.
pub fn problems(selector: &LabelSelector) -> Vec<String> {
    selector
        .match_expressions
        .iter()
        .flatten()
        .filter(|e| {
            !matches!(
                e.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            )
        })
        .map(|e| {
            format!(
                "unknown selector operator {:?} on key {:?}",
                e.operator, e.key
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }
    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selects_all_and_expressions_work() {
        let l = labels(&[("app", "api"), ("tier", "back")]);
        assert!(matches(&sel(json!({})), &l));
        assert!(matches(&sel(json!({"matchLabels": {"app": "api"}})), &l));
        assert!(!matches(&sel(json!({"matchLabels": {"app": "store"}})), &l));
        assert!(matches(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["api", "x"]}]})
            ),
            &l
        ));
        assert!(!matches(
            &sel(
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["api"]}]})
            ),
            &l
        ));
        assert!(matches(
            &sel(json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})),
            &l
        ));
        assert!(!matches(
            &sel(json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})),
            &l
        ));
        let bad = sel(json!({"matchExpressions": [{"key": "app", "operator": "Like"}]}));
        assert!(!matches(&bad, &l));
        assert_eq!(problems(&bad).len(), 1);
    }
}
