//! Templates in action fields: `{{ path }}` placeholders filled from a firing's context (the
//! event, the automation, the run, deployment and pool it concerns).
//!
//! A string that is exactly one placeholder becomes the value with its JSON type (a number stays
//! a number, an object an object); placeholders inside longer text are replaced by the value's
//! text (strings without quotes, other values as JSON). A path that leads nowhere gives `null`
//! (whole) or `""` (inside text). Paths are dotted keys (`event.payload.branch`), with numbers
//! for list items (`event.related.0.id`).

use serde_json::Value;

pub use crate::notify::template::lookup;

/// Fills the placeholders of every string in `template` (keys stay as they are).
pub fn render(template: &Value, context: &Value) -> Value {
    match template {
        Value::String(s) => render_str(s, context),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, context)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, context)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Fills a text's placeholders, always giving text.
pub fn render_text(template: &str, context: &Value) -> String {
    match render_str(template, context) {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A string that is one placeholder (surrounding blanks allowed) keeps the value's type; any
/// other string interpolates as notification templates do.
fn render_str(s: &str, context: &Value) -> Value {
    if let Some(path) = whole_placeholder(s.trim()) {
        return lookup(context, path).cloned().unwrap_or(Value::Null);
    }
    Value::String(crate::notify::template::render_text(s, context))
}

fn whole_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then(|| inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_placeholders_keep_their_type_partial_ones_interpolate() {
        let ctx = json!({"event": {"payload": {"n": 5, "branch": "main", "o": {"a": 1}},
                         "related": [{"id": "x"}]}});
        let t = json!({
            "n": "{{ event.payload.n }}",
            "o": "{{event.payload.o}}",
            "s": "branch {{ event.payload.branch }} n={{ event.payload.n }} {{ nope }}!",
            "list": ["{{ event.related.0.id }}", 3],
            "missing": "{{ event.payload.nope }}",
            "unclosed": "a {{ b",
        });
        assert_eq!(
            render(&t, &ctx),
            json!({"n": 5, "o": {"a": 1}, "s": "branch main n=5 !", "list": ["x", 3],
                   "missing": null, "unclosed": "a {{ b"})
        );
        assert_eq!(render_text("{{ event.payload.n }} runs", &ctx), "5 runs");
        assert_eq!(render_text("{{ event.payload.o }}", &ctx), r#"{"a":1}"#);
    }
}
