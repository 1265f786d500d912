//! Prefect 3.8.8's rendering, step for step (`docs/templates.md`, "How Prefect renders"):
//! placeholders and their lookup (`prefect.utilities.templating.apply_values` with
//! `prefect.utilities.collections.get_from_dict`), the job-variable layers
//! (`BaseJobConfiguration.resolve_for_flow_run`), dotted keys
//! (`from_template_and_values` with `set_in_dict` and `deep_merge`) and the merge of `env` into
//! the job configuration.
//!
//! The only deliberate differences are listed in `docs/templates.md` ("Differences from
//! Prefect"); the differential test (`scripts/template-diff`) holds the engine to them.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::template::{error, TemplateError};

/// Prefect's `PLACEHOLDER_CAPTURE_REGEX`, `({{\s*([\w\.\-\[\]$]+)\s*}})`: `\w` and `\s` are
/// Unicode in both engines, so `{{ größe }}`, `{{ args[0] }}` and `{{ $HOME }}` are placeholders.
pub(super) static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*([\w.\-\[\]$]+)\s*\}\}").expect("placeholder regex is valid")
});

/// Prefix of block-document placeholders, resolved after rendering (left as they are here).
pub const BLOCK_PREFIX: &str = "prefect.blocks.";
/// Prefix of Prefect-variable placeholders, resolved after rendering (left as they are here).
pub const VARIABLE_PREFIX: &str = "prefect.variables.";
/// Prefix of environment-variable placeholders (`{{ $HOME }}`).
pub const ENV_PREFIX: &str = "$";

/// What a placeholder name refers to (Prefect's `PlaceholderType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderKind {
    /// A job variable or built-in namespace, looked up in the values.
    Standard,
    /// `prefect.blocks.<type>.<name>…`: left for the block resolver.
    Block,
    /// `prefect.variables.<name>`: left for the variable resolver.
    Variable,
    /// `$NAME`: read from the environment the caller passes.
    EnvVar,
}

/// Prefect's `determine_placeholder_type`.
pub fn placeholder_kind(name: &str) -> PlaceholderKind {
    if name.starts_with(BLOCK_PREFIX) {
        PlaceholderKind::Block
    } else if name.starts_with(VARIABLE_PREFIX) {
        PlaceholderKind::Variable
    } else if name.starts_with(ENV_PREFIX) {
        PlaceholderKind::EnvVar
    } else {
        PlaceholderKind::Standard
    }
}

/// The segments of a dotted name or key as Prefect splits them: `[` becomes `.`, `]` is dropped,
/// then split on `.` (`args[0]` → `args`, `0`; `a..b` → `a`, ``, `b`).
pub fn segments(name: &str) -> Vec<String> {
    name.replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(str::to_owned)
        .collect()
}

/// The variable a placeholder name or an override key is about: its first segment (for a key
/// only when it contains a `.`, as Prefect expands only those).
pub fn first_segment(name: &str) -> String {
    segments(name).swap_remove(0)
}

/// The variable an override key sets: its first segment when it contains a `.` (Prefect
/// expands only those: `env.FOO`, `env.a[0]`), else the key itself (`args[0]` is a variable of
/// that name).
pub fn key_variable(key: &str) -> String {
    if key.contains('.') {
        first_segment(key)
    } else {
        key.to_owned()
    }
}

/// Python's `int(s)` for the strings a placeholder segment can be: optional `-`, ASCII digits
/// with single `_` between them. `None` when Python would raise `ValueError` (or past `i64`,
/// where every index is out of range anyway).
fn py_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Python's `seq[i]` index, negative from the end; `None` when out of range.
fn py_index(len: usize, i: i64) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let j = if i < 0 { len + i } else { i };
    usize::try_from(j).ok().filter(|_| (0..len).contains(&j))
}

/// Prefect's `get_from_dict(values, name)`: each segment that Python's `int` accepts indexes a
/// list (negative from the end) or a string (one character) and never matches an object key;
/// any other segment is an object key. `None` when missing.
pub fn lookup(values: &Map<String, Value>, name: &str) -> Option<Value> {
    let mut cur: Option<&Value> = None;
    let mut chars: Option<String> = None;
    for (n, seg) in segments(name).iter().enumerate() {
        if chars.is_some() {
            // A one-character string indexed again: only 0 and -1 give the same character.
            let c = chars.take()?;
            let i = py_int(seg)?;
            py_index(1, i)?;
            chars = Some(c);
            continue;
        }
        let index = py_int(seg);
        let next = match (n, cur, index) {
            (0, _, Some(_)) => return None,
            (0, _, None) => values.get(seg.as_str())?,
            (_, Some(Value::Array(items)), Some(i)) => &items[py_index(items.len(), i)?],
            (_, Some(Value::String(s)), Some(i)) => {
                let all: Vec<char> = s.chars().collect();
                chars = Some(all[py_index(all.len(), i)?].to_string());
                continue;
            }
            (_, Some(Value::Object(map)), None) => map.get(seg.as_str())?,
            _ => return None,
        };
        cur = Some(next);
    }
    match chars {
        Some(c) => Some(Value::String(c)),
        None => cur.cloned(),
    }
}

/// Looks up an environment variable for `{{ $NAME }}`.
pub type Environ<'a> = &'a dyn Fn(&str) -> Option<String>;

/// No environment: every `{{ $NAME }}` is missing (pushpool's own control plane).
pub fn no_environ(_: &str) -> Option<String> {
    None
}

/// Python's truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn render_string(s: &str, values: &Map<String, Value>, environ: Environ<'_>) -> Option<Value> {
    if let Some(caps) = PLACEHOLDER.captures(s) {
        let whole = caps
            .get(0)
            .is_some_and(|m| m.start() == 0 && m.end() == s.len());
        if whole && placeholder_kind(&caps[1]) == PlaceholderKind::Standard {
            return lookup(values, &caps[1]);
        }
    } else {
        return Some(Value::String(s.to_owned()));
    }
    let rendered = PLACEHOLDER.replace_all(s, |caps: &regex::Captures<'_>| {
        let name = &caps[1];
        match placeholder_kind(name) {
            PlaceholderKind::Standard => match lookup(values, name) {
                Some(Value::String(v)) => v,
                Some(v) => v.to_string(),
                None => String::new(),
            },
            PlaceholderKind::EnvVar => environ(name.trim_start_matches('$')).unwrap_or_default(),
            PlaceholderKind::Block | PlaceholderKind::Variable => caps[0].to_owned(),
        }
    });
    Some(Value::String(rendered.into_owned()))
}

/// Prefect's `apply_values`; `None` means "missing: remove this key or item".
pub(super) fn apply_values(
    template: &Value,
    values: &Map<String, Value>,
    environ: Environ<'_>,
) -> Option<Value> {
    match template {
        Value::String(s) => render_string(s, values, environ),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|i| apply_values(i, values, environ))
                .collect(),
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| apply_values(v, values, environ).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Prefect's `deep_merge`: objects merge key by key (recursively), anything else replaces.
pub(super) fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base_map), Value::Object(over_map)) => {
            for (k, v) in over_map {
                match base_map.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        base_map.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn env_error(message: &str) -> TemplateError {
    error(
        "job_variables.env",
        "env_not_object",
        format!("`env` must be an object here: {message} (Prefect raises a TypeError)"),
    )
}

/// `resolve_for_flow_run`'s layering of the flow run's `job_variables` over the deployment's:
/// when the deployment's `env` is an object the run's `env` is merged into it (one level);
/// every other run key replaces the deployment's key of the same spelling (so a run's `env.A`
/// replaces a deployment's `env.A`, but loses to a deployment's plain `env` later on).
pub fn merge_layers(
    deployment: &Map<String, Value>,
    run: &Map<String, Value>,
) -> Result<Map<String, Value>, TemplateError> {
    let mut out = deployment.clone();
    if let Some(Value::Object(env)) = out.get_mut("env") {
        match run.get("env") {
            None => {}
            Some(Value::Object(run_env)) => env.extend(run_env.clone()),
            Some(_) => {
                return Err(env_error(
                    "the deployment's `env` is an object, the run's not",
                ))
            }
        }
        for (k, v) in run {
            if k != "env" {
                out.insert(k.clone(), v.clone());
            }
        }
    } else {
        out.extend(run.clone());
    }
    Ok(out)
}

/// Segments of each dotted key (keys containing `.`), sorted by key.
fn dotted_keys(layer: &Map<String, Value>) -> Vec<(&String, Vec<String>)> {
    layer
        .keys()
        .filter(|k| k.contains('.'))
        .map(|k| (k, segments(k)))
        .collect()
}

/// Refuses two dotted keys of which one's path is the other's or leads into it (`a.b` and
/// `a.b.c`, or `a.b.c` and `a.b[c]`): Prefect's result depends on the keys' order, which JSON
/// objects do not keep (and raises in one of the orders).
pub fn check_dotted_conflicts(layer: &Map<String, Value>) -> Result<(), TemplateError> {
    let mut keys = dotted_keys(layer);
    // Sorted by path, a path that leads into another is directly followed by one it leads
    // into, so comparing neighbours finds every conflict in O(n log n).
    keys.sort_by(|a, b| a.1.cmp(&b.1));
    for pair in keys.windows(2) {
        let ((k1, s1), (k2, s2)) = (&pair[0], &pair[1]);
        if s2.len() >= s1.len() && s2[..s1.len()] == s1[..] {
            return Err(error(
                format!("job_variables.{k2}"),
                "dotted_conflict",
                format!(
                    "job variable keys `{k1}` and `{k2}` set the same path or one inside the other; their effect would depend on their order (use one nested object instead)"
                ),
            ));
        }
    }
    Ok(())
}

/// `from_template_and_values`' expansion of one set of job variables: dotted keys first
/// (`set_in_dict`), then plain keys on top (an object deep-merged into an object the dotted keys
/// built, anything else replacing). Callers check [`check_dotted_conflicts`] first; here a later
/// key (in sorted order) wins.
pub fn expand(layer: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, segs) in dotted_keys(layer) {
        let value = &layer[key.as_str()];
        let (last, parents) = segs
            .split_last()
            .expect("split yields one segment at least");
        let mut cur = &mut out;
        for p in parents {
            let slot = cur
                .entry(p.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = slot.as_object_mut().expect("made an object above");
        }
        cur.insert(last.clone(), value.clone());
    }
    for (k, v) in layer {
        if k.contains('.') {
            continue;
        }
        match out.get_mut(k) {
            Some(existing @ Value::Object(_)) if v.is_object() => deep_merge(existing, v.clone()),
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The variables a job is rendered with: the defaults, then the expanded job variables on top
/// (one level: `labels.team` alone replaces a default `labels` object).
pub fn apply_layer(defaults: &mut Map<String, Value>, layer: &Map<String, Value>) {
    defaults.extend(expand(layer));
}

/// Refuses placeholders in the `env` entries that job variables supply (`layer_env`, the
/// expanded layers' `env`) that would copy a secret into the job: Prefect renders those entries,
/// so without this a deployment's `{"env": {"K": "{{ credentials }}"}}` would hand the pool's
/// stored credentials to the job. A placeholder is refused when a segment of its name is a
/// secret key (`crate::redact::is_secret_key`), its variable is marked secret by the schema
/// (`secret_variables`), or its variable's value holds a secret (`crate::redact::secret_strings`).
pub fn check_env_references(
    layer_env: Option<&Value>,
    values: &Map<String, Value>,
    secret_variables: &[String],
) -> Result<(), TemplateError> {
    let Some(Value::Object(env)) = layer_env else {
        return Ok(());
    };
    for (key, entry) in env {
        let Value::String(text) = entry else {
            continue;
        };
        for caps in PLACEHOLDER.captures_iter(text) {
            let name = &caps[1];
            if placeholder_kind(name) != PlaceholderKind::Standard {
                continue;
            }
            let segs = segments(name);
            let var = &segs[0];
            let secret = segs.iter().any(|s| crate::redact::is_secret_key(s))
                || secret_variables.iter().any(|v| v == var)
                || values.get(var.as_str()).is_some_and(|v| {
                    !crate::redact::secret_strings(
                        &Value::Object(Map::from_iter([(var.clone(), v.clone())])),
                        &[],
                    )
                    .is_empty()
                });
            if secret {
                return Err(error(
                    format!("job_variables.env.{key}"),
                    "secret_reference",
                    format!(
                        "the `env` entry `{key}` reads `{name}`, which holds a secret; job variables may not copy secrets into the job's environment"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where `from_template_and_values` merges `env` into the job configuration before rendering:
/// a truthy `env` default is merged into an object `env` of the template (or replaces a
/// non-object one, or is added), then a truthy final `env` is merged into an object `env`.
/// Merged entries are rendered like the rest of the template.
pub fn merge_env(
    job_configuration: &Value,
    defaults: &Map<String, Value>,
    values: &Map<String, Value>,
) -> Result<Value, TemplateError> {
    let mut base = job_configuration.clone();
    let Some(config) = base.as_object_mut() else {
        return Ok(base);
    };
    if let Some(default_env) = defaults.get("env").filter(|e| truthy(e)) {
        match (config.get_mut("env"), default_env) {
            (Some(Value::Object(env)), Value::Object(d)) => env.extend(d.clone()),
            (Some(Value::Object(_)), _) => {
                return Err(env_error(
                    "the template's `env` is an object, the variable's default is not",
                ))
            }
            _ => {
                config.insert("env".to_owned(), default_env.clone());
            }
        }
    }
    if let Some(Value::Object(env)) = config.get_mut("env") {
        if let Some(final_env) = values.get("env").filter(|e| truthy(e)) {
            match final_env {
                Value::Object(f) => env.extend(f.clone()),
                _ => {
                    return Err(env_error(
                        "the template's `env` is an object, the job variable `env` is not",
                    ))
                }
            }
        }
    }
    Ok(base)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
