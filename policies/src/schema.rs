//! Checking a policy document against its upstream CRD schema.
//!
//! The typed resources refuse fields they do not know, but "unknown to this
//! lab" is not the same as "unknown to Cilium": a policy may use a field the
//! evaluator has no use for. The upstream OpenAPI schemas (strict: every
//! object says `additionalProperties: false`) settle that question the way
//! the Kubernetes API server would, and name the exact path of the mistake,
//! so a typo such as `toPort:` or an unquoted `port: 53` is refused here
//! rather than on a cluster.
//!
//! The schemas live in `policies/crds/` with the descriptions stripped
//! (see the README there). This module implements the subset of JSON Schema
//! those files use: `type`, `properties`, `additionalProperties`, `required`,
//! `items`, `enum`, `pattern`, length/size/range bounds, `oneOf`, `anyOf`,
//! `not`, the `cidr` format, and Kubernetes' `x-kubernetes-int-or-string` and
//! `x-kubernetes-preserve-unknown-fields`. CEL rules
//! (`x-kubernetes-validations`) are not evaluated.
//!
//! Why not the `jsonschema` crate: weighed and measured (0.37, default
//! features off) — it would add 46 crates to the build (the ICU/IDNA stack,
//! fancy-regex, num-*), about a minute of release build on two cores, to
//! replace some 250 lines. And it is not the validator the API server runs:
//! CRD schemas are Kubernetes *structural* schemas (OpenAPI v3 plus the
//! `x-kubernetes-*` extensions), where `preserve-unknown-fields` overrides
//! `additionalProperties` and formats such as `int32` or `idn-hostname` are
//! not what a JSON Schema draft says. Its messages are generic too ("not
//! valid under any of the schemas listed in the 'oneOf' keyword"), where
//! this one names the fields to choose from and says "quote it" for an
//! unquoted port. So the subset stays ours, tested on the committed CRDs
//! and fuzzed with the policy loader (`fuzz/fuzz_targets/policy_yaml.rs`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use thiserror::Error;

/// A document that does not fit its schema: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct SchemaError {
    /// `spec.egress[0].toPorts[0].ports[0].port`
    pub path: String,
    /// What does not fit there.
    pub message: String,
}

const CILIUM: &str = include_str!("../crds/cilium.io_v2_network-policy.json");
const AUTHORIZATION_POLICY: &str =
    include_str!("../crds/security.istio.io_v1_authorizationpolicy.json");
const PEER_AUTHENTICATION: &str =
    include_str!("../crds/security.istio.io_v1_peerauthentication.json");

/// The kinds with a schema here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    /// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy share one schema.
    Cilium,
    /// Istio's AuthorizationPolicy.
    AuthorizationPolicy,
    /// Istio's PeerAuthentication.
    PeerAuthentication,
}

fn schema(kind: SchemaKind) -> &'static Value {
    static CACHE: OnceLock<[Value; 3]> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [CILIUM, AUTHORIZATION_POLICY, PEER_AUTHENTICATION]
            .map(|text| serde_json::from_str(text).expect("a committed schema is valid JSON"))
    });
    &all[kind as usize]
}

/// Checks a resource's `spec` against the upstream schema of its kind.
pub fn validate_spec(kind: SchemaKind, spec: &Value) -> Result<(), SchemaError> {
    validate_spec_with(schema(kind), spec)
}

/// Checks `spec` against the `spec` property of a CRD's JSON Schema — for
/// resources whose schema lives elsewhere (the kind lab's Gateway API).
pub fn validate_spec_with(crd_schema: &Value, spec: &Value) -> Result<(), SchemaError> {
    check(spec, &crd_schema["properties"]["spec"], "spec")
}

fn fail(path: &str, message: impl Into<String>) -> Result<(), SchemaError> {
    Err(SchemaError {
        path: path.to_string(),
        message: message.into(),
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_fits(want: &str, value: &Value) -> bool {
    let got = type_name(value);
    got == want || (want == "number" && got == "integer")
}

fn check(value: &Value, schema: &Value, path: &str) -> Result<(), SchemaError> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !matches!(type_name(value), "integer" | "string") {
            return fail(
                path,
                format!(
                    "expected an integer or a string, found {}",
                    type_name(value)
                ),
            );
        }
    } else if let Some(want) = s.get("type").and_then(Value::as_str)
        && !type_fits(want, value)
    {
        let hint = match (want, value) {
            ("string", Value::Number(n)) => format!(" (quote it: \"{n}\")"),
            _ => String::new(),
        };
        return fail(
            path,
            format!("expected {want}, found {}{hint}", type_name(value)),
        );
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let listed: Vec<String> = options.iter().map(Value::to_string).collect();
        return fail(path, format!("{value} is not one of {}", listed.join(", ")));
    }
    match value {
        Value::Object(map) => check_object(map, s, path)?,
        Value::Array(items) => check_array(items, s, path)?,
        Value::String(text) => check_string(text, s, path)?,
        Value::Number(n) => check_number(n.as_f64().unwrap_or(0.0), s, path)?,
        _ => {}
    }
    check_combinators(value, s, path)
}

fn check_object(
    map: &serde_json::Map<String, Value>,
    s: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), SchemaError> {
    let properties = s.get("properties").and_then(Value::as_object);
    let preserve = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (key, field_value) in map {
        let field_path = format!("{path}.{key}");
        if let Some(field_schema) = properties.and_then(|p| p.get(key)) {
            check(field_value, field_schema, &field_path)?;
            continue;
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(false)) if !preserve => {
                let mut known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                known.sort_unstable();
                let expected = match known.is_empty() {
                    true => "no fields are allowed here".to_string(),
                    false => format!("expected one of: {}", known.join(", ")),
                };
                return fail(&field_path, format!("unknown field `{key}`; {expected}"));
            }
            Some(extra @ Value::Object(_)) => check(field_value, extra, &field_path)?,
            _ => {}
        }
    }
    for required in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(required) {
            return fail(path, format!("missing required field `{required}`"));
        }
    }
    bounds(
        map.len(),
        s,
        "minProperties",
        "maxProperties",
        "fields",
        path,
    )
}

fn check_array(
    items: &[Value],
    s: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), SchemaError> {
    bounds(items.len(), s, "minItems", "maxItems", "entries", path)?;
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item, item_schema, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn bounds(
    len: usize,
    s: &serde_json::Map<String, Value>,
    min_key: &str,
    max_key: &str,
    unit: &str,
    path: &str,
) -> Result<(), SchemaError> {
    let limit = |key: &str| s.get(key).and_then(Value::as_u64).map(|n| n as usize);
    if let Some(min) = limit(min_key)
        && len < min
    {
        return fail(path, format!("needs at least {min} {unit}, has {len}"));
    }
    if let Some(max) = limit(max_key)
        && len > max
    {
        return fail(path, format!("allows at most {max} {unit}, has {len}"));
    }
    Ok(())
}

fn check_string(
    text: &str,
    s: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), SchemaError> {
    let chars = text.chars().count();
    bounds(chars, s, "minLength", "maxLength", "characters", path)?;
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
        && let Some(re) = compiled(pattern)
        && !re.is_match(text)
    {
        return fail(
            path,
            format!("\"{text}\" does not match the pattern {pattern}"),
        );
    }
    if s.get("format").and_then(Value::as_str) == Some("cidr")
        && text.parse::<ipnet::IpNet>().is_err()
    {
        return fail(
            path,
            format!("\"{text}\" is not a CIDR (write it as address/prefix, e.g. 10.0.0.0/8)"),
        );
    }
    Ok(())
}

fn check_number(n: f64, s: &serde_json::Map<String, Value>, path: &str) -> Result<(), SchemaError> {
    if let Some(min) = s.get("minimum").and_then(Value::as_f64)
        && n < min
    {
        return fail(path, format!("{n} is below the minimum {min}"));
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64)
        && n > max
    {
        return fail(path, format!("{n} is above the maximum {max}"));
    }
    Ok(())
}

fn check_combinators(
    value: &Value,
    s: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), SchemaError> {
    if let Some(branches) = s.get("oneOf").and_then(Value::as_array) {
        let fitting = branches
            .iter()
            .filter(|b| check(value, b, path).is_ok())
            .count();
        if fitting != 1 {
            let alternatives = alternatives(branches);
            let message = match fitting {
                0 => format!("needs exactly one of {alternatives}, has none"),
                _ => format!("allows only one of {alternatives}, has several"),
            };
            return fail(path, message);
        }
    }
    if let Some(branches) = s.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(|b| check(value, b, path).is_ok())
    {
        return fail(
            path,
            format!("needs at least one of {}", alternatives(branches)),
        );
    }
    if let Some(negated) = s.get("not")
        && check(value, negated, path).is_ok()
    {
        return fail(path, "has a combination of fields the schema forbids");
    }
    Ok(())
}

/// Names the alternatives of a `oneOf`/`anyOf` by their required fields,
/// which is how the CRDs encode "exactly one of these fields".
fn alternatives(branches: &[Value]) -> String {
    let names: Vec<String> = branches
        .iter()
        .map(|b| {
            let required: Vec<&str> = b["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match required.is_empty() {
                true => "(none of them)".to_string(),
                false => format!("`{}`", required.join("`+`")),
            }
        })
        .collect();
    names.join(", ")
}

fn compiled(pattern: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_committed_schemas_parse_and_have_a_spec() {
        for kind in [
            SchemaKind::Cilium,
            SchemaKind::AuthorizationPolicy,
            SchemaKind::PeerAuthentication,
        ] {
            assert!(schema(kind)["properties"]["spec"].is_object(), "{kind:?}");
        }
    }

    #[test]
    fn cilium_mistakes_are_named_by_path() {
        let cases = [
            (
                json!({"endpointSelector": {}, "egress": [{"toPort": []}]}),
                "spec.egress[0].toPort",
                "unknown field `toPort`",
            ),
            (
                json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": 53}]}]}]}),
                "spec.egress[0].toPorts[0].ports[0].port",
                "quote it",
            ),
            (
                json!({"endpointSelector": {}, "egress": [{"toEntities": ["internet"]}]}),
                "spec.egress[0].toEntities[0]",
                "is not one of",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"fromCIDR": ["10.0.0.0/33"]}]}),
                "spec.ingress[0].fromCIDR[0]",
                "not a CIDR",
            ),
            (
                json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "443"}], "serverNames": []}]}]}),
                "spec.egress[0].toPorts[0].serverNames",
                "at least 1",
            ),
            (
                json!({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{}]}}]}]}),
                "spec.egress[0].toPorts[0].rules.dns[0]",
                "exactly one of `matchName`, `matchPattern`",
            ),
        ];
        for (spec, path, message) in cases {
            let err = validate_spec(SchemaKind::Cilium, &spec).unwrap_err();
            assert_eq!(err.path, path, "{spec}");
            assert!(err.message.contains(message), "{err}");
        }
    }

    #[test]
    fn istio_mistakes_are_named_by_path() {
        let err = validate_spec(
            SchemaKind::AuthorizationPolicy,
            &json!({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}),
        )
        .unwrap_err();
        assert_eq!(err.path, "spec.rules[0].from[0].source.principal");
        let err = validate_spec(
            SchemaKind::PeerAuthentication,
            &json!({"mtls": {"mode": "STRICTER"}}),
        )
        .unwrap_err();
        assert_eq!(err.path, "spec.mtls.mode");
    }

    #[test]
    fn well_formed_specs_pass() {
        validate_spec(
            SchemaKind::Cilium,
            &json!({
                "endpointSelector": {"matchLabels": {"app": "hello-app"}},
                "egress": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}], "serverNames": ["api.github.com"]}]}],
                "enableDefaultDeny": {"ingress": false}
            }),
        )
        .unwrap();
        validate_spec(
            SchemaKind::AuthorizationPolicy,
            &json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["8000"]}}]}]}),
        )
        .unwrap();
    }
}
