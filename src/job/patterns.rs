//! The regular expressions of a template's `variables` schema (issue 19 item 6): counted and
//! bounded in length, compiled with the linear-time `regex` engine so that no pattern and value
//! can make matching backtrack catastrophically.

use jsonschema::Validator;
use serde_json::Value;

use super::template::{error, fmt_path, pointer_segs, Seg, TemplateError};

/// Most regular expressions (`pattern` keywords and `patternProperties` keys, at any depth) in a
/// template's `variables` schema.
pub const MAX_TEMPLATE_PATTERNS: usize = 64;

/// Longest regular expression (`pattern` or `patternProperties` key), in bytes.
pub const MAX_PATTERN_BYTES: usize = 1_000;

/// Largest compiled form of one regular expression, in bytes (the `regex` crate's size limit):
/// bounds the memory and compile time of a short pattern with nested counted repetitions.
pub const MAX_PATTERN_COMPILED_BYTES: usize = 1 << 20;

/// Keywords whose value is data, not a schema: never searched for patterns.
const DATA_KEYWORDS: [&str; 4] = ["const", "enum", "default", "examples"];

/// Keywords whose value maps names to schemas (the names are not keywords).
const SCHEMA_MAPS: [&str; 5] = [
    "properties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",
];

/// Collects `(path, regex)` for every `pattern` keyword and `patternProperties` key in `schema`.
/// Recursion follows the schema's nesting, which the template's depth check bounds first.
fn collect_patterns(schema: &Value, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, String)>) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                match (k.as_str(), v) {
                    ("pattern", Value::String(p)) => out.push((path.clone(), p.clone())),
                    ("patternProperties", Value::Object(props)) => {
                        for (p, sub) in props {
                            path.push(Seg::Key(p.clone()));
                            out.push((path.clone(), p.clone()));
                            collect_patterns(sub, path, out);
                            path.pop();
                        }
                    }
                    (k, Value::Object(named)) if SCHEMA_MAPS.contains(&k) => {
                        for (name, sub) in named {
                            path.push(Seg::Key(name.clone()));
                            collect_patterns(sub, path, out);
                            path.pop();
                        }
                    }
                    (k, _) if DATA_KEYWORDS.contains(&k) => {}
                    (_, v) => collect_patterns(v, path, out),
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                collect_patterns(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Refuses more than [`MAX_TEMPLATE_PATTERNS`] patterns and any pattern longer than
/// [`MAX_PATTERN_BYTES`]; returns the patterns with their paths.
pub(super) fn check_patterns(variables: &Value) -> Result<Vec<(Vec<Seg>, String)>, TemplateError> {
    let mut patterns = Vec::new();
    collect_patterns(variables, &mut Vec::new(), &mut patterns);
    if let Some((path, _)) = patterns.get(MAX_TEMPLATE_PATTERNS) {
        return Err(error(
            fmt_path("base_job_template.variables", path),
            "too_many_patterns",
            format!(
                "`variables` has {} regular expressions (`pattern` and `patternProperties` keys); at most {MAX_TEMPLATE_PATTERNS}",
                patterns.len()
            ),
        ));
    }
    if let Some((path, p)) = patterns.iter().find(|(_, p)| p.len() > MAX_PATTERN_BYTES) {
        return Err(error(
            fmt_path("base_job_template.variables", path),
            "pattern_too_long",
            format!(
                "this regular expression is {} bytes long; at most {MAX_PATTERN_BYTES}",
                p.len()
            ),
        ));
    }
    Ok(patterns)
}

/// Compiles a `variables` schema with the linear-time `regex` engine: no backtracking, so no
/// pattern and value can make matching take more than time proportional to their sizes.
/// Lookaround and backreferences are refused, naming the pattern.
pub(super) fn compile_schema(
    schema: &Value,
    patterns: &[(Vec<Seg>, String)],
) -> Result<Validator, TemplateError> {
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex().size_limit(MAX_PATTERN_COMPILED_BYTES),
        )
        .build(schema)
        .map_err(|e| {
            let bad_regex = matches!(
                &e.kind,
                jsonschema::error::ValidationErrorKind::Format { format } if format == "regex"
            );
            // jsonschema names the schema holding the pattern; name the pattern itself.
            let unsupported = bad_regex
                .then(|| {
                    patterns.iter().find_map(|(path, p)| {
                        regex::RegexBuilder::new(p)
                            .size_limit(MAX_PATTERN_COMPILED_BYTES)
                            .build()
                            .err()
                            .map(|err| (path, err))
                    })
                })
                .flatten();
            if let Some((path, err)) = unsupported {
                let reason = err.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim().to_owned();
                return error(
                    fmt_path("base_job_template.variables", path),
                    "unsupported_pattern",
                    format!(
                        "this regular expression cannot be used: {reason} (patterns are matched by a linear-time engine: lookaround and backreferences are not supported)"
                    ),
                );
            }
            let segs = pointer_segs(schema, e.instance_path.as_str());
            error(
                fmt_path("base_job_template.variables", &segs),
                "invalid_template",
                format!("`variables` is not a valid JSON Schema: {e}"),
            )
        })
}

#[cfg(test)]
#[path = "patterns_tests.rs"]
mod tests;
