//! The invocation payload: filling in the built-in placeholders at submit time, and reading what a
//! function returned.

use pushpool_provider::{ProviderError, RunSpec};
use serde_json::{Map, Value};

/// The placeholders a payload may use (filled in from the run at submit time).
pub const PAYLOAD_PLACEHOLDERS: &[&str] = &[
    "flow_run.id",
    "flow_run.attempt",
    "flow_run.parameters",
    "pushpool.api_url",
    "pushpool.run_id",
    "pushpool.run_token",
    "deployment.name",
    "work_pool.name",
];

/// Longest result summary kept on the run's final state.
pub const SUMMARY_LIMIT: usize = 500;

/// Splits a string into literal text and placeholder names.
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = rest[start + 2..start + 2 + len].trim();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            out.push(Piece::Text(&rest[..start + 2]));
            rest = &rest[start + 2..];
            continue;
        }
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        out.push(Piece::Placeholder(name));
        rest = &rest[start + 2 + len + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Checks that every placeholder in `value` is one of [`PAYLOAD_PLACEHOLDERS`]; `path` names the
/// field in errors.
pub fn check_placeholders(value: &Value, path: &str) -> Result<(), ProviderError> {
    match value {
        Value::String(s) => {
            for piece in pieces(s) {
                if let Piece::Placeholder(name) = piece {
                    if !PAYLOAD_PLACEHOLDERS.contains(&name) {
                        return Err(ProviderError::invalid(
                            path,
                            format!(
                                "unknown placeholder `{{{{ {name} }}}}` in the payload; it may use {}",
                                PAYLOAD_PLACEHOLDERS.join(", ")
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_placeholders(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_placeholders(v, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

fn builtin(name: &str, run: &RunSpec) -> Value {
    match name {
        "flow_run.id" | "pushpool.run_id" => Value::String(run.run_id.to_string()),
        "flow_run.attempt" => Value::from(run.attempt),
        "flow_run.parameters" => run.parameters.clone(),
        "pushpool.api_url" => Value::String(run.api_url.clone()),
        "pushpool.run_token" => Value::String(run.run_token.expose().to_string()),
        "deployment.name" => Value::String(run.deployment.clone()),
        "work_pool.name" => Value::String(run.work_pool.clone()),
        _ => Value::Null,
    }
}

/// Fills the built-in placeholders of a payload template: a whole-value placeholder keeps the
/// value's JSON type, a partial one is interpolated as text (the rules of the base job template).
pub fn render(template: &Value, run: &RunSpec) -> Value {
    match template {
        Value::String(s) => {
            let parts = pieces(s);
            if let [Piece::Placeholder(name)] = parts.as_slice() {
                return builtin(name, run);
            }
            let mut out = String::new();
            for part in parts {
                match part {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Placeholder(name) => match builtin(name, run) {
                        Value::String(v) => out.push_str(&v),
                        other => out.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, run)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, run)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The bytes sent to the function: the rendered payload plus its `env` object (the job's `env`
/// merged into any `env` object the payload already has, then `PUSHPOOL_API_URL`,
/// `PUSHPOOL_RUN_ID` and `PUSHPOOL_RUN_TOKEN`, which win).
pub fn build(
    template: &Map<String, Value>,
    env: &std::collections::BTreeMap<String, String>,
    run: &RunSpec,
) -> Vec<u8> {
    let mut payload = match render(&Value::Object(template.clone()), run) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut merged = match payload.remove("env") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in env {
        merged.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, v) in run.pushpool_env() {
        merged.insert(k, Value::String(v));
    }
    payload.insert("env".into(), Value::Object(merged));
    serde_json::to_vec(&Value::Object(payload)).unwrap_or_else(|_| b"{}".to_vec())
}

/// Replaces pushpool run tokens (`ppr_…`) in text that will be shown on a run (a function that
/// echoes its input would otherwise publish its token in the state message).
pub fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("ppr_") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        if len == 0 {
            out.push_str("ppr_");
        } else {
            out.push_str("ppr_[redacted]");
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Cuts `text` to at most `limit` characters, marking the cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let cut: String = text.chars().take(limit).collect();
    format!("{cut}… (truncated)")
}

/// The state message of a function error: `errorType: errorMessage` from the payload when it
/// has them, else the error kind and the (truncated) payload.
pub fn function_error_message(kind: &str, payload: &[u8]) -> String {
    let redacted = redact_tokens(&String::from_utf8_lossy(payload));
    let payload = redacted.as_bytes();
    let parsed: Option<Value> = serde_json::from_slice(payload).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (field("errorType"), field("errorMessage")) {
        (Some(t), Some(m)) => truncate(&format!("{t}: {m}"), SUMMARY_LIMIT),
        (None, Some(m)) => truncate(&m, SUMMARY_LIMIT),
        (Some(t), None) => t,
        (None, None) => {
            let text = String::from_utf8_lossy(payload);
            if text.trim().is_empty() {
                format!("function error ({kind}) without a payload")
            } else {
                format!(
                    "function error ({kind}): {}",
                    truncate(text.trim(), SUMMARY_LIMIT)
                )
            }
        }
    }
}

/// The summary kept on a COMPLETED run: what the function returned, truncated.
pub fn result_summary(function: &str, payload: &[u8]) -> String {
    let text = redact_tokens(&String::from_utf8_lossy(payload));
    let text = text.trim();
    if text.is_empty() || text == "null" {
        format!("Lambda function `{function}` returned no result")
    } else {
        format!(
            "Lambda function `{function}` returned: {}",
            truncate(text, SUMMARY_LIMIT)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpool_provider::{DiscardLogs, Secret};
    use serde_json::json;
    use std::sync::Arc;

    fn run() -> RunSpec {
        RunSpec {
            run_id: uuid::Uuid::nil(),
            attempt: 2,
            workspace: "w".into(),
            work_pool: "pool".into(),
            deployment: "dep".into(),
            parameters: json!({"n": 1}),
            api_url: "http://api".into(),
            run_token: Secret::new("tok"),
            logs: Arc::new(DiscardLogs),
        }
    }

    #[test]
    fn whole_and_partial_placeholders() {
        let t = json!({
            "id": "{{ flow_run.id }}", "n": "{{flow_run.attempt}}", "p": "{{ flow_run.parameters }}",
            "s": "run {{ flow_run.id }} try {{ flow_run.attempt }} {{ flow_run.parameters }}",
            "list": ["{{ work_pool.name }}", 3, "{x}", "{{ bad name }}"], "t": "{{ pushpool.run_token }}"
        });
        let out = render(&t, &run());
        let nil = uuid::Uuid::nil().to_string();
        assert_eq!(out["id"], nil);
        assert_eq!(out["n"], 2);
        assert_eq!(out["p"], json!({"n": 1}));
        assert_eq!(out["s"], format!("run {nil} try 2 {{\"n\":1}}"));
        assert_eq!(out["list"], json!(["pool", 3, "{x}", "{{ bad name }}"]));
        assert_eq!(out["t"], "tok");
    }

    #[test]
    fn env_is_added_and_pushpool_vars_win() {
        let t = json!({"env": {"KEEP": "1", "PUSHPOOL_RUN_ID": "spoofed"}, "a": 1});
        let env = [("USER_VAR".to_string(), "x".to_string())].into();
        let bytes = build(t.as_object().unwrap(), &env, &run());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["env"]["KEEP"], "1");
        assert_eq!(v["env"]["USER_VAR"], "x");
        assert_eq!(v["env"]["PUSHPOOL_RUN_ID"], uuid::Uuid::nil().to_string());
        assert_eq!(v["env"]["PUSHPOOL_RUN_TOKEN"], "tok");
        assert_eq!(v["env"]["PUSHPOOL_API_URL"], "http://api");
    }

    #[test]
    fn unknown_placeholders_are_refused_with_their_path() {
        let err =
            check_placeholders(&json!({"a": ["x", "{{ flow_run.name }}"]}), "payload").unwrap_err();
        let (field, message) = pushpool_provider::conformance::field_and_rule(err);
        assert_eq!(field, "payload.a[1]");
        assert!(message.contains("flow_run.name"), "{message}");
    }

    #[test]
    fn function_errors_and_summaries() {
        assert_eq!(
            function_error_message(
                "Unhandled",
                br#"{"errorType":"ValueError","errorMessage":"bad input","trace":[]}"#
            ),
            "ValueError: bad input"
        );
        assert_eq!(
            function_error_message("Handled", b"boom"),
            "function error (Handled): boom"
        );
        assert_eq!(
            function_error_message("Unhandled", b""),
            "function error (Unhandled) without a payload"
        );
        assert_eq!(
            result_summary("f", b"{\"ok\":true}"),
            "Lambda function `f` returned: {\"ok\":true}"
        );
        assert_eq!(
            result_summary("f", br#"{"t":"ppr_0123abc_1_ffee","u":"ppr_"}"#),
            "Lambda function `f` returned: {\"t\":\"ppr_[redacted]\",\"u\":\"ppr_\"}"
        );
        let long = "x".repeat(2000);
        let s = result_summary("f", long.as_bytes());
        assert!(s.len() < 600 && s.ends_with("(truncated)"), "{s}");
    }
}
