//! The small template language of notifications and inbound hooks: `{{ path }}` placeholders
//! whose path is a dotted walk into a JSON context (`payload.flow_run.name`, `body.items.0.id`).
//!
//! In text ([`render_text`]) a placeholder becomes the value's text (strings as they are, other
//! values as JSON, a missing value as nothing). In a JSON template ([`render_json`]) a string
//! that is exactly one placeholder becomes the value itself with its JSON type; other strings
//! interpolate as in text; object keys are not templated.

use serde_json::{Map, Value};

/// A template that cannot be rendered strictly: it names a value the context lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` is missing (the template uses it)")]
pub struct Missing {
    /// The dotted path of the missing value.
    pub path: String,
}

/// The value at a dotted `path` of `ctx` (`a.b.0.c`); `None` when absent.
pub fn lookup<'a>(ctx: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = ctx;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        at = match at {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// The pieces of a template: literal text and placeholder paths, in order.
enum Piece<'a> {
    Text(&'a str),
    Path(&'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = vec![];
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        out.push(Piece::Path(rest[start + 2..start + 2 + len].trim()));
        rest = &rest[start + 2 + len + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders `template` as text over `ctx`; missing values render as nothing.
pub fn render_text(template: &str, ctx: &Value) -> String {
    pieces(template)
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => t.to_string(),
            Piece::Path(path) => lookup(ctx, path).map(text_of).unwrap_or_default(),
        })
        .collect()
}

/// The placeholder paths `template` uses, in order.
pub fn paths(template: &str) -> Vec<String> {
    pieces(template)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Path(path) => Some(path.to_string()),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Renders a JSON template over `ctx`. With `strict`, a placeholder naming a missing value is an
/// error naming its path; otherwise it becomes `null` (whole) or nothing (in text).
pub fn render_json(template: &Value, ctx: &Value, strict: bool) -> Result<Value, Missing> {
    match template {
        Value::String(s) => {
            let parts = pieces(s);
            for p in &parts {
                if let Piece::Path(path) = p {
                    if strict && lookup(ctx, path).is_none() {
                        return Err(Missing {
                            path: path.to_string(),
                        });
                    }
                }
            }
            if let [Piece::Path(path)] = parts.as_slice() {
                return Ok(lookup(ctx, path).cloned().unwrap_or(Value::Null));
            }
            Ok(Value::String(render_text(s, ctx)))
        }
        Value::Array(items) => items
            .iter()
            .map(|x| render_json(x, ctx, strict))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, x) in map {
                out.insert(k.clone(), render_json(x, ctx, strict)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_json_templates_render_over_a_context() {
        let ctx = json!({"run": {"name": "etl-1", "n": 3}, "items": [{"id": "a"}]});
        assert_eq!(
            render_text("Run {{ run.name }} ({{run.n}}) {{ nope }}!", &ctx),
            "Run etl-1 (3) !"
        );
        assert_eq!(render_text("{{ items.0.id }}", &ctx), "a");
        assert_eq!(render_text("no {{ close", &ctx), "no {{ close");
        let t = json!({"n": "{{ run.n }}", "s": "x-{{ run.n }}", "l": ["{{ items }}"], "k": 1});
        assert_eq!(
            render_json(&t, &ctx, true).unwrap(),
            json!({"n": 3, "s": "x-3", "l": [[{"id": "a"}]], "k": 1})
        );
        let missing = render_json(&json!({"a": "{{ body.x }}"}), &ctx, true).unwrap_err();
        assert_eq!(missing.path, "body.x");
        assert_eq!(
            render_json(&json!({"a": "{{ body.x }}"}), &ctx, false).unwrap(),
            json!({"a": null})
        );
        assert_eq!(paths("{{a}} and {{ b.c }}"), vec!["a", "b.c"]);
    }
}
