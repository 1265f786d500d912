//! Keeps provider credentials out of API answers.
//!
//! Job variables and templates may carry provider credentials (a GCP service-account key, an
//! AWS external id, …). They are stored as given and handed to the provider, but every API
//! answer shows them as [`MASK`]. A value is secret when its key names a secret
//! ([`is_secret_key`]: a name secret for everyone such as `password` or `token`, or a field a
//! compiled-in provider declares secret, such as `service_account_info` or `external_id` — see
//! [`crate::registry::secret_fields`]) or when the pool's variables schema marks the variable
//! `writeOnly: true` or `format: password`. A client that reads a deployment and writes it back with the mask in
//! place keeps the stored secret ([`restore`]).

use serde_json::{Map, Value};

/// What a secret value looks like in an API answer.
pub const MASK: &str = "**********";

/// True for object keys whose values are secrets: names secret for every provider, and the
/// fields the compiled-in providers declare ([`crate::registry::secret_fields`]).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "client_secret",
        "private_key",
    ];
    EXACT.contains(&k.as_str())
        || crate::registry::secret_fields().contains(&k.as_str())
        || k.ends_with("_secret")
        || k.ends_with("_password")
        || k.ends_with("_token")
        || k.ends_with("_api_key")
        || k.ends_with("_private_key")
}

/// The top-level variables a variables schema marks secret (`writeOnly` or `format: password`).
pub fn schema_secret_variables(variables_schema: &Value) -> Vec<String> {
    variables_schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .filter(|(_, p)| p["writeOnly"] == Value::Bool(true) || p["format"] == "password")
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn mask_value(v: &mut Value) {
    if !v.is_null() {
        *v = Value::String(MASK.into());
    }
}

/// Masks, in place, every value under a secret key at any depth, and the top-level keys in
/// `extra` (variables a schema marks secret).
pub fn mask(value: &mut Value, extra: &[String]) {
    if let Value::Object(map) = value {
        for (k, v) in map.iter_mut() {
            if is_secret_key(k) || extra.iter().any(|e| e == k) {
                mask_value(v);
            } else {
                mask(v, &[]);
            }
        }
    } else if let Value::Array(items) = value {
        for v in items {
            mask(v, &[]);
        }
    }
}

/// [`mask`] on a map.
pub fn mask_map(map: &mut Map<String, Value>, extra: &[String]) {
    let mut v = Value::Object(std::mem::take(map));
    mask(&mut v, extra);
    if let Value::Object(m) = v {
        *map = m;
    }
}

/// The secret strings inside `value` (under secret keys, or the top-level `extra` keys).
pub fn secret_strings(value: &Value, extra: &[String]) -> Vec<String> {
    fn leaves(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.len() >= 4 && s != MASK => out.push(s.clone()),
            Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
            Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
            _ => {}
        }
    }
    fn walk(v: &Value, extra: &[String], out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if is_secret_key(k) || extra.iter().any(|e| e == k) {
                        leaves(x, out);
                    } else {
                        walk(x, &[], out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, &[], out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(value, extra, &mut out);
    out
}

/// The secret strings a job rendered from `template` (a base job template) with these
/// variable layers may carry: secret values of the layers and of the variables' defaults.
pub fn render_secrets(template: &Value, layers: &[&Map<String, Value>]) -> Vec<String> {
    let extra = schema_secret_variables(&template["variables"]);
    let mut out = vec![];
    for layer in layers {
        out.extend(secret_strings(&Value::Object((*layer).clone()), &extra));
    }
    if let Some(props) = template["variables"]["properties"].as_object() {
        let defaults: Map<String, Value> = props
            .iter()
            .filter_map(|(k, p)| p.get("default").map(|d| (k.clone(), d.clone())))
            .collect();
        out.extend(secret_strings(&Value::Object(defaults), &extra));
    }
    out
}

/// Masks a rendered job configuration: secret keys, plus any string that contains one of
/// `secrets` (a secret variable rendered under an innocent name).
pub fn mask_rendered(rendered: &mut Value, secrets: &[String]) {
    mask(rendered, &[]);
    fn scrub(v: &mut Value, secrets: &[String]) {
        match v {
            Value::String(s) if secrets.iter().any(|x| s.contains(x.as_str())) => {
                *s = MASK.into();
            }
            Value::Object(m) => m.values_mut().for_each(|x| scrub(x, secrets)),
            Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
            _ => {}
        }
    }
    scrub(rendered, secrets);
}

/// A write that sends [`MASK`] back where a secret was keeps the stored value.
pub fn restore(new: &mut Value, old: &Value) {
    restore_collecting(new, old, &mut vec![]);
}

/// [`restore`], adding the strings it put back to `restored` (for [`scrub`]).
pub fn restore_collecting(new: &mut Value, old: &Value, restored: &mut Vec<String>) {
    match new {
        Value::String(s) if s == MASK && !old.is_null() => {
            string_leaves(old, restored);
            *new = old.clone();
        }
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                restore_collecting(v, old.get(k).unwrap_or(&Value::Null), restored);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                restore_collecting(v, old.get(i).unwrap_or(&Value::Null), restored);
            }
        }
        _ => {}
    }
}

/// [`restore`] on maps.
pub fn restore_map(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    restore_map_collecting(new, old, &mut vec![]);
}

/// [`restore_collecting`] on maps.
pub fn restore_map_collecting(
    new: &mut Map<String, Value>,
    old: &Map<String, Value>,
    restored: &mut Vec<String>,
) {
    let mut new_value = Value::Object(std::mem::take(new));
    restore_collecting(&mut new_value, &Value::Object(old.clone()), restored);
    if let Value::Object(m) = new_value {
        *new = m;
    }
}

/// Every string inside `value`.
fn string_leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Object(m) => m.values().for_each(|x| string_leaves(x, out)),
        Value::Array(a) => a.iter().for_each(|x| string_leaves(x, out)),
        _ => {}
    }
}

/// `text` (an error message, an audit detail) with every non-empty one of `secrets` replaced
/// by [`MASK`]: a message names the field and the rule, never a secret value.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets
        .iter()
        .filter(|s| !s.is_empty() && s.as_str() != MASK)
    {
        out = out.replace(secret.as_str(), MASK);
        // A validator may quote the value JSON-escaped.
        let quoted = Value::String(secret.clone()).to_string();
        out = out.replace(&quoted[1..quoted.len() - 1], MASK);
    }
    out
}

/// Masks a base job template: defaults of secret variables and literal secrets in the job
/// configuration.
pub fn mask_template(template: &mut Value) {
    let extra = schema_secret_variables(&template["variables"]);
    if let Some(props) = template
        .pointer_mut("/variables/properties")
        .and_then(Value::as_object_mut)
    {
        for (name, prop) in props.iter_mut() {
            if let Some(default) = prop.get_mut("default") {
                if is_secret_key(name) || extra.contains(name) {
                    mask_value(default);
                } else {
                    mask(default, &[]);
                }
            }
        }
    }
    if let Some(jc) = template.get_mut("job_configuration") {
        // Placeholders are not secrets; literal values under secret keys are.
        fn walk(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m.iter_mut() {
                        let placeholder = x.as_str().is_some_and(|s| s.contains("{{"));
                        if is_secret_key(k) && !placeholder {
                            mask_value(x);
                        } else {
                            walk(x);
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(walk),
                _ => {}
            }
        }
        walk(jc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_at_any_depth_and_restored_on_write_back() {
        let stored = json!({
            "image": "img",
            "credentials": {"project": "p", "service_account_info": {"private_key": "-----BEGIN", "client_email": "a@b"}},
            "env": {"DB_PASSWORD": "hunter2", "PLAIN": "x"},
            "role": {"external_id": "ext-123"},
            "vault": "v-secret-value"
        });
        let mut shown = stored.clone();
        mask(&mut shown, &["vault".to_string()]);
        assert_eq!(shown["credentials"]["service_account_info"], MASK);
        assert_eq!(shown["credentials"]["project"], "p");
        assert_eq!(shown["env"]["DB_PASSWORD"], MASK);
        assert_eq!(shown["env"]["PLAIN"], "x");
        assert_eq!(shown["role"]["external_id"], MASK);
        assert_eq!(shown["vault"], MASK);
        assert!(!shown.to_string().contains("hunter2"));
        // Written back as shown (one field changed): the secrets are kept.
        let mut back = shown.clone();
        back["image"] = json!("img2");
        restore(&mut back, &stored);
        assert_eq!(back["credentials"], stored["credentials"]);
        assert_eq!(back["env"]["DB_PASSWORD"], "hunter2");
        assert_eq!(back["image"], "img2");
    }

    #[test]
    fn rendered_configuration_hides_secret_values_under_any_name() {
        let vars = json!({"api_password": "s3cr3t-v4lue", "x": 1});
        let secrets = secret_strings(&vars, &[]);
        let mut rendered =
            json!({"command": "run --pw s3cr3t-v4lue", "env": {"A": "s3cr3t-v4lue"}, "n": 1});
        mask_rendered(&mut rendered, &secrets);
        assert!(!rendered.to_string().contains("s3cr3t"), "{rendered}");
        assert_eq!(rendered["n"], 1);
    }

    #[test]
    fn template_defaults_and_literals_are_masked_but_placeholders_stay() {
        let mut t = json!({
            "job_configuration": {"token": "{{ token }}", "password": "literal-pw", "image": "{{ image }}"},
            "variables": {"properties": {
                "token": {"type": "string", "default": "tok-123"},
                "hidden": {"type": "string", "writeOnly": true, "default": "h-456"},
                "image": {"type": "string", "default": "img"}
            }}
        });
        mask_template(&mut t);
        assert_eq!(t["job_configuration"]["token"], "{{ token }}");
        assert_eq!(t["job_configuration"]["password"], MASK);
        assert_eq!(t["variables"]["properties"]["token"]["default"], MASK);
        assert_eq!(t["variables"]["properties"]["hidden"]["default"], MASK);
        assert_eq!(t["variables"]["properties"]["image"]["default"], "img");
    }
}
