//! Prefect-style base job templates: parsing, checking, variable resolution
//! and rendering.
//!
//! A base job template is
//! `{"job_configuration": {...}, "variables": <JSON Schema object>}`.
//! Strings in `job_configuration` may contain `{{ name }}` placeholders that
//! are filled from the resolved job variables (defaults < deployment
//! `job_variables` < flow-run `job_variables`) and from the built-in
//! namespaces (`flow_run`, `deployment`, `work_pool`, `pushpool`).
//!
//! The semantics follow Prefect's `apply_values` exactly, with the deliberate
//! differences documented in `docs/templates.md` (non-string values
//! interpolated into a partial placeholder are printed as compact JSON, so
//! `true` rather than Python's `True`; overriding a declared but unused
//! variable is an error instead of being silently dropped).

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use jsonschema::Validator;
use regex::Regex;
use serde_json::{Map, Value};

/// First dotted segments of placeholders that the system fills at render
/// time; they need not (and should not) be declared in `variables`.
pub const BUILTIN_NAMESPACES: [&str; 4] = ["flow_run", "deployment", "work_pool", "pushpool"];

/// Deepest JSON nesting accepted in a base job template (the template object
/// itself is level 1).
pub const MAX_TEMPLATE_DEPTH: usize = 64;

/// `{{ name }}` with optional whitespace inside the braces.
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}").expect("placeholder regex is valid")
});

/// Error with the JSON path of the offending field, the rule broken, and a
/// human message.
///
/// `field` is a dotted path (array items as `[i]`) rooted at
/// `base_job_template` for template problems and at `job_variables` for
/// problems with deployment or flow-run overrides. `rule` is one of
/// `invalid_template`, `undeclared_placeholder`, `unknown_variable`,
/// `unused_variable`, `schema` and `required`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TemplateError {
    /// JSON path of the offending field, e.g. `job_variables.env.FOO` or
    /// `base_job_template.job_configuration.containers[0].image`.
    pub field: String,
    /// Machine-readable name of the rule that was broken.
    pub rule: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

fn error(
    field: impl Into<String>,
    rule: &'static str,
    message: impl Into<String>,
) -> TemplateError {
    TemplateError {
        field: field.into(),
        rule,
        message: message.into(),
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Formats `prefix` followed by `segs` as `prefix.key[3].other`.
fn fmt_path(prefix: &str, segs: &[Seg]) -> String {
    let mut out = String::from(prefix);
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Turns a JSON pointer into segments, using `root` to tell array indices
/// from object keys that look like numbers.
fn pointer_segs(root: &Value, pointer: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut cur = Some(root);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match cur {
            Some(Value::Array(items)) => match token.parse::<usize>() {
                Ok(i) => {
                    cur = items.get(i);
                    segs.push(Seg::Index(i));
                }
                Err(_) => {
                    cur = None;
                    segs.push(Seg::Key(token));
                }
            },
            Some(Value::Object(map)) => {
                cur = map.get(&token);
                segs.push(Seg::Key(token));
            }
            _ => {
                cur = None;
                segs.push(Seg::Key(token));
            }
        }
    }
    segs
}

/// Splits a dotted override key (`env.FOO`) into its segments; `None` for a
/// plain key or one with an empty segment (kept literal).
fn dotted_segments(key: &str) -> Option<Vec<&str>> {
    if !key.contains('.') {
        return None;
    }
    let segs: Vec<&str> = key.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(segs)
}

/// Builds `{"b": {"c": value}}` from segments `["b", "c"]`.
fn nest(segs: &[&str], value: Value) -> Value {
    segs.iter().rev().fold(value, |acc, seg| {
        let mut map = Map::new();
        map.insert((*seg).to_owned(), acc);
        Value::Object(map)
    })
}

/// Merges `over` into `base`: objects merge key by key (recursively),
/// anything else replaces.
fn deep_merge(base: &mut Value, over: Value) {
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

fn merge_into(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get_mut(key) {
        Some(existing) => deep_merge(existing, value),
        None => {
            map.insert(key.to_owned(), value);
        }
    }
}

/// Expands dotted keys ("env.FOO") into nested objects, deep-merging.
///
/// Plain keys are copied first, then every dotted key is expanded and
/// deep-merged on top, so `{"env": {"A": "1"}, "env.A": "2"}` gives
/// `{"env": {"A": "2"}}` whatever the map's key order. Keys with an empty
/// segment (`"a..b"`, `".a"`, `"a."`) are kept literally. Only top-level keys
/// are expanded.
pub fn expand_dotted(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in map {
        if dotted_segments(k).is_none() {
            out.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in map {
        if let Some(segs) = dotted_segments(k) {
            merge_into(&mut out, segs[0], nest(&segs[1..], v.clone()));
        }
    }
    out
}

/// Applies one override layer onto `base` (env deep-merged, dotted expanded,
/// others replaced).
///
/// Plain keys are applied first: `env` is deep-merged into the existing
/// `env`, any other plain key replaces the existing value wholesale. Then
/// each dotted key (`"env.FOO"`, `"labels.team"`) is expanded and deep-merged
/// into what is there.
pub fn apply_overrides(base: &mut Map<String, Value>, overrides: &Map<String, Value>) {
    for (k, v) in overrides {
        if dotted_segments(k).is_some() {
            continue;
        }
        if k == "env" {
            merge_into(base, k, v.clone());
        } else {
            base.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in overrides {
        if let Some(segs) = dotted_segments(k) {
            merge_into(base, segs[0], nest(&segs[1..], v.clone()));
        }
    }
}

/// Looks a dotted placeholder name up in `values` (`a.b` reads
/// `values["a"]["b"]`); only objects are traversed.
fn lookup<'a>(values: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut segs = name.split('.');
    let mut cur = values.get(segs.next()?)?;
    for seg in segs {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// The placeholder name if `s` is exactly one placeholder (nothing outside
/// the braces), as Prefect requires for a whole-value placeholder.
fn whole_placeholder(s: &str) -> Option<&str> {
    let caps = PLACEHOLDER.captures(s)?;
    let m = caps.get(0)?;
    if m.start() == 0 && m.end() == s.len() {
        caps.get(1).map(|n| n.as_str())
    } else {
        None
    }
}

fn render_string(s: &str, values: &Map<String, Value>) -> Option<Value> {
    if let Some(name) = whole_placeholder(s) {
        return lookup(values, name).cloned();
    }
    if !PLACEHOLDER.is_match(s) {
        return Some(Value::String(s.to_owned()));
    }
    let rendered = PLACEHOLDER.replace_all(s, |caps: &regex::Captures<'_>| {
        match lookup(values, &caps[1]) {
            Some(Value::String(v)) => v.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    });
    Some(Value::String(rendered.into_owned()))
}

/// `None` means "missing: remove this key or item".
fn render_inner(template: &Value, values: &Map<String, Value>) -> Option<Value> {
    match template {
        Value::String(s) => render_string(s, values),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|i| render_inner(i, values))
                .collect(),
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| render_inner(v, values).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Pure Prefect rendering of any JSON value with the given values (the
/// engine under [`BaseJobTemplate::render`]).
///
/// A string that is exactly one placeholder is replaced by the value with its
/// JSON type, or removed from its object or array when the value is missing;
/// placeholders inside a longer string are interpolated (strings raw, other
/// values as compact JSON, missing ones as `""`). Object keys are not
/// templated. A top-level whole placeholder with a missing value renders to
/// `null`. Recursion follows the template's nesting, so callers should bound
/// it ([`BaseJobTemplate::parse`] refuses more than [`MAX_TEMPLATE_DEPTH`]).
pub fn render_value(template: &Value, values: &Map<String, Value>) -> Value {
    render_inner(template, values).unwrap_or(Value::Null)
}

/// Refuses nesting deeper than [`MAX_TEMPLATE_DEPTH`] without recursing.
fn check_depth(root: &Value) -> Result<(), TemplateError> {
    let mut stack: Vec<(&Value, usize, Vec<Seg>)> = vec![(root, 1, Vec::new())];
    while let Some((value, depth, path)) = stack.pop() {
        let is_container = value.is_object() || value.is_array();
        if !is_container {
            continue;
        }
        if depth > MAX_TEMPLATE_DEPTH {
            return Err(error(
                fmt_path("base_job_template", &path),
                "invalid_template",
                format!("base job template is nested deeper than {MAX_TEMPLATE_DEPTH} levels"),
            ));
        }
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if v.is_object() || v.is_array() {
                        let mut p = path.clone();
                        p.push(Seg::Key(k.clone()));
                        stack.push((v, depth + 1, p));
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    if v.is_object() || v.is_array() {
                        let mut p = path.clone();
                        p.push(Seg::Index(i));
                        stack.push((v, depth + 1, p));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Collects `(placeholder name, path)` for every placeholder in string
/// values of `value` (object keys are not templated).
fn collect_placeholders(value: &Value, path: &mut Vec<Seg>, out: &mut Vec<(String, Vec<Seg>)>) {
    match value {
        Value::String(s) => {
            for caps in PLACEHOLDER.captures_iter(s) {
                out.push((caps[1].to_owned(), path.clone()));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                collect_placeholders(v, path, out);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                collect_placeholders(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn first_segment(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

fn is_builtin(first: &str) -> bool {
    BUILTIN_NAMESPACES.contains(&first)
}

/// Removes every `required` keyword whose value is an array, at any depth,
/// without touching data keywords (`const`, `enum`, `default`, `examples`).
fn strip_required(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("required").is_some_and(Value::is_array) {
                map.remove("required");
            }
            for (k, v) in map.iter_mut() {
                if !matches!(k.as_str(), "const" | "enum" | "default" | "examples") {
                    strip_required(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_required),
        _ => {}
    }
}

/// Validates `instance` and converts the first failure into a
/// [`TemplateError`] whose field is `prefix` plus the instance path.
fn schema_error(validator: &Validator, instance: &Value, prefix: &str) -> Option<TemplateError> {
    let mut errors = validator.iter_errors(instance);
    let first = errors.next()?;
    let more = errors.count();
    let mut segs = pointer_segs(instance, first.instance_path.as_str());
    let rule = match &first.kind {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            segs.push(Seg::Key(name));
            "required"
        }
        _ => "schema",
    };
    let mut message = first.to_string();
    if rule == "required" {
        message.push_str(" (no default, deployment or flow-run value supplies it)");
    }
    if more > 0 {
        message.push_str(&format!(" (and {more} more problem(s))"));
    }
    Some(error(fmt_path(prefix, &segs), rule, message))
}

/// A parsed, checked base job template.
#[derive(Debug, Clone)]
pub struct BaseJobTemplate {
    job_configuration: Value,
    variables: Value,
    validator: Arc<Validator>,
    validator_no_required: Arc<Validator>,
    used: BTreeSet<String>,
}

impl BaseJobTemplate {
    /// Parses and checks: object with `job_configuration` (object) and
    /// `variables` (object schema; `properties` object; missing `variables` =
    /// empty schema), schema compiles, every placeholder declared, every
    /// default valid against its property schema.
    ///
    /// Also refuses: other top-level keys, nesting deeper than
    /// [`MAX_TEMPLATE_DEPTH`], a `variables.type` other than `"object"`,
    /// property names that are empty or contain `.`, and property schemas
    /// that are neither objects nor booleans. Defaults that are `null` are
    /// not checked (they mean "no default").
    pub fn parse(value: &Value) -> Result<Self, TemplateError> {
        let Some(obj) = value.as_object() else {
            return Err(error(
                "base_job_template",
                "invalid_template",
                "base job template must be a JSON object with `job_configuration` and `variables`",
            ));
        };
        check_depth(value)?;
        if let Some(k) = obj
            .keys()
            .find(|k| k.as_str() != "job_configuration" && k.as_str() != "variables")
        {
            return Err(error(
                format!("base_job_template.{k}"),
                "invalid_template",
                format!(
                    "unexpected key `{k}`: only `job_configuration` and `variables` are allowed"
                ),
            ));
        }
        let job_configuration = match obj.get("job_configuration") {
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(error(
                    "base_job_template.job_configuration",
                    "invalid_template",
                    "`job_configuration` must be a JSON object",
                ))
            }
            None => {
                return Err(error(
                    "base_job_template.job_configuration",
                    "invalid_template",
                    "`job_configuration` is missing",
                ))
            }
        };
        let variables = match obj.get("variables") {
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(error(
                    "base_job_template.variables",
                    "invalid_template",
                    "`variables` must be a JSON Schema object",
                ))
            }
            None => serde_json::json!({"type": "object", "properties": {}}),
        };
        if let Some(t) = variables.get("type") {
            if t != "object" {
                return Err(error(
                    "base_job_template.variables.type",
                    "invalid_template",
                    "`variables` must be a schema of type \"object\"",
                ));
            }
        }
        let empty = Map::new();
        let properties = match variables.get("properties") {
            Some(Value::Object(p)) => p,
            Some(_) => {
                return Err(error(
                    "base_job_template.variables.properties",
                    "invalid_template",
                    "`variables.properties` must be a JSON object",
                ))
            }
            None => &empty,
        };
        for (name, schema) in properties {
            let field = format!("base_job_template.variables.properties.{name}");
            if name.is_empty() || name.contains('.') {
                return Err(error(
                    field,
                    "invalid_template",
                    format!("variable name `{name}` must be non-empty and must not contain `.`"),
                ));
            }
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(error(
                    field,
                    "invalid_template",
                    format!("the schema of variable `{name}` must be a JSON object"),
                ));
            }
        }

        let compile = |schema: &Value| {
            jsonschema::validator_for(schema).map_err(|e| {
                let segs = pointer_segs(schema, e.instance_path.as_str());
                error(
                    fmt_path("base_job_template.variables", &segs),
                    "invalid_template",
                    format!("`variables` is not a valid JSON Schema: {e}"),
                )
            })
        };
        let validator = compile(&variables)?;
        let mut no_required = variables.clone();
        strip_required(&mut no_required);
        let validator_no_required = compile(&no_required)?;

        let mut found = Vec::new();
        collect_placeholders(&job_configuration, &mut Vec::new(), &mut found);
        let mut used = BTreeSet::new();
        for (name, path) in found {
            let first = first_segment(&name);
            if is_builtin(first) {
                continue;
            }
            if !properties.contains_key(first) {
                return Err(error(
                    fmt_path("base_job_template.job_configuration", &path),
                    "undeclared_placeholder",
                    format!(
                        "placeholder `{{{{ {name} }}}}` uses variable `{first}`, which is not declared in `variables.properties` (built-in namespaces: {})",
                        BUILTIN_NAMESPACES.join(", ")
                    ),
                ));
            }
            used.insert(first.to_owned());
        }

        let template = BaseJobTemplate {
            job_configuration,
            variables,
            validator: Arc::new(validator),
            validator_no_required: Arc::new(validator_no_required),
            used,
        };

        let defaults = Value::Object(template.defaults());
        for e in template.validator_no_required.iter_errors(&defaults) {
            let segs = pointer_segs(&defaults, e.instance_path.as_str());
            // Errors about the defaults object as a whole (e.g. `minProperties`)
            // are not about any one default.
            let Some((Seg::Key(var), rest)) = segs.split_first() else {
                continue;
            };
            return Err(error(
                fmt_path(
                    &format!("base_job_template.variables.properties.{var}.default"),
                    rest,
                ),
                "schema",
                format!("default of variable `{var}` does not match its schema: {e}"),
            ));
        }
        Ok(template)
    }

    /// The `job_configuration` object, placeholders unrendered.
    pub fn job_configuration(&self) -> &Value {
        &self.job_configuration
    }

    /// The `variables` JSON Schema (`{"type": "object", "properties": {}}`
    /// when the template had none).
    pub fn variables_schema(&self) -> &Value {
        &self.variables
    }

    /// The original JSON (`{"job_configuration":..,"variables":..}`).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "job_configuration": self.job_configuration,
            "variables": self.variables,
        })
    }

    /// First segments of all placeholders used in job_configuration
    /// (excluding built-in namespaces).
    pub fn used_variables(&self) -> BTreeSet<String> {
        self.used.clone()
    }

    fn properties(&self) -> Option<&Map<String, Value>> {
        self.variables.get("properties").and_then(Value::as_object)
    }

    /// Defaults from the schema, null ones dropped.
    pub fn defaults(&self) -> Map<String, Value> {
        self.properties()
            .into_iter()
            .flatten()
            .filter_map(|(name, schema)| match schema.get("default") {
                Some(Value::Null) | None => None,
                Some(v) => Some((name.clone(), v.clone())),
            })
            .collect()
    }

    /// Refuses override keys whose variable is undeclared or unused.
    fn check_layer(&self, overrides: &Map<String, Value>) -> Result<(), TemplateError> {
        let mut keys: Vec<&String> = overrides.keys().collect();
        keys.sort();
        for key in keys {
            let var = match dotted_segments(key) {
                Some(segs) => segs[0],
                None => key.as_str(),
            };
            let field = format!("job_variables.{key}");
            let declared = self.properties().is_some_and(|p| p.contains_key(var));
            if !declared {
                return Err(error(
                    field,
                    "unknown_variable",
                    format!(
                        "unknown job variable `{var}`: it is not declared in the work pool's base job template `variables.properties`"
                    ),
                ));
            }
            if !self.used.contains(var) {
                return Err(error(
                    field,
                    "unused_variable",
                    format!(
                        "job variable `{var}` is declared but no placeholder in `job_configuration` uses it, so it would have no effect (Prefect silently drops it, see Prefect issue #20131)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a deployment's overrides: dotted keys expanded, unknown/unused
    /// variables refused, validated ignoring `required`.
    ///
    /// The instance validated is the defaults with the overrides applied (as
    /// [`apply_overrides`] does), so `env.FOO` is checked inside `env`.
    pub fn validate_deployment_overrides(
        &self,
        overrides: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        self.check_layer(overrides)?;
        let mut values = self.defaults();
        apply_overrides(&mut values, overrides);
        match schema_error(
            &self.validator_no_required,
            &Value::Object(values),
            "job_variables",
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// defaults < deployment < run (with the merge rules above), checks
    /// unknown/unused in both layers, validates the result WITH `required`.
    /// Returns the final variable values.
    pub fn resolve(
        &self,
        deployment: &Map<String, Value>,
        run: &Map<String, Value>,
    ) -> Result<Map<String, Value>, TemplateError> {
        self.check_layer(deployment)?;
        self.check_layer(run)?;
        let mut values = self.defaults();
        apply_overrides(&mut values, deployment);
        apply_overrides(&mut values, run);
        match schema_error(
            &self.validator,
            &Value::Object(values.clone()),
            "job_variables",
        ) {
            Some(e) => Err(e),
            None => Ok(values),
        }
    }

    /// Renders job_configuration with `values` plus built-in `context`
    /// (e.g. {"flow_run": {"id": ..}, "pushpool": {...}}); pure, never fails.
    ///
    /// A `context` key wins over a variable of the same name.
    pub fn render(&self, values: &Map<String, Value>, context: &Map<String, Value>) -> Value {
        let mut all = values.clone();
        for (k, v) in context {
            all.insert(k.clone(), v.clone());
        }
        render_value(&self.job_configuration, &all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn tpl(v: Value) -> BaseJobTemplate {
        BaseJobTemplate::parse(&v).expect("template parses")
    }

    fn parse_err(v: Value) -> TemplateError {
        BaseJobTemplate::parse(&v).expect_err("template must be refused")
    }

    /// A template exercising most features.
    fn sample() -> BaseJobTemplate {
        tpl(json!({
            "job_configuration": {
                "image": "{{ image }}",
                "command": "{{ command }}",
                "cpu": "{{ cpu }}",
                "args": "{{ args }}",
                "env": "{{ env }}",
                "labels": "{{ labels }}",
                "name": "run-{{ flow_run.id }}",
                "token": "{{ pushpool.run_token }}",
            },
            "variables": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string"},
                    "command": {"type": ["string", "null"], "default": null},
                    "cpu": {"type": "integer", "default": 1, "minimum": 1},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "default": {"BASE": "0"}
                    },
                    "labels": {"type": "object", "default": {"team": "a"}},
                    "unused": {"type": "string"}
                }
            }
        }))
    }

    #[test]
    fn canonical_example() {
        let template = json!({
            "a": "{{ x }}",
            "b": "pre-{{ x }}-{{ y }}",
            "c": ["{{ y }}", "{{ x }}"],
            "d": {"e": "{{ y }}"}
        });
        let out = render_value(&template, &map(json!({"x": 5})));
        assert_eq!(out, json!({"a": 5, "b": "pre-5-", "c": [5], "d": {}}));
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"a":5,"b":"pre-5-","c":[5],"d":{}}"#
        );
    }

    #[test]
    fn whole_placeholder_keeps_json_type() {
        for v in [
            json!(5),
            json!(-1.5),
            json!("text"),
            json!(true),
            json!(false),
            json!(null),
            json!([1, "two", null]),
            json!({"a": {"b": [1]}}),
        ] {
            let values = map(json!({ "x": v.clone() }));
            for t in ["{{ x }}", "{{x}}", "{{   x\t}}"] {
                assert_eq!(
                    render_value(&json!({ "k": t }), &values),
                    json!({ "k": v.clone() }),
                    "template {t:?}"
                );
            }
        }
    }

    #[test]
    fn partial_placeholder_interpolates_as_text() {
        let cases = [
            (json!("abc"), "p-abc"),
            (json!(5), "p-5"),
            (json!(1.5), "p-1.5"),
            (json!(true), "p-true"),
            (json!(false), "p-false"),
            (json!(null), "p-null"),
            (json!([1, "a"]), r#"p-[1,"a"]"#),
            (json!({"a": 1, "b": [true]}), r#"p-{"a":1,"b":[true]}"#),
        ];
        for (v, want) in cases {
            let values = map(json!({ "x": v }));
            assert_eq!(
                render_value(&json!({"k": "p-{{ x }}"}), &values),
                json!({ "k": want })
            );
        }
        // Text outside the braces makes it partial, even whitespace.
        let values = map(json!({"x": 5}));
        assert_eq!(
            render_value(&json!([" {{ x }}", "{{ x }}{{ x }}"]), &values),
            json!([" 5", "55"])
        );
        // Values are inserted once; placeholders inside them are not expanded.
        let values = map(json!({"x": "{{ y }}", "y": 1}));
        assert_eq!(render_value(&json!("a{{ x }}"), &values), json!("a{{ y }}"));
    }

    #[test]
    fn missing_values_remove_keys_and_items() {
        let template = json!({
            "keep": "plain",
            "gone": "{{ nope }}",
            "list": ["{{ nope }}", 1, "{{ nope.deeper }}", "x{{ nope }}y"],
            "nested": {"gone": "{{ nope }}", "n": null, "b": false},
            "{{ nope }}": "keys are not templated"
        });
        assert_eq!(
            render_value(&template, &Map::new()),
            json!({
                "keep": "plain",
                "list": [1, "xy"],
                "nested": {"n": null, "b": false},
                "{{ nope }}": "keys are not templated"
            })
        );
        assert_eq!(render_value(&json!("{{ nope }}"), &Map::new()), Value::Null);
    }

    #[test]
    fn dotted_lookups_read_nested_objects() {
        let values = map(json!({"a": {"b": {"c": 7}, "s": "str"}, "l": [1]}));
        let template = json!({
            "c": "{{ a.b.c }}",
            "b": "{{ a.b }}",
            "p": "v{{ a.b.c }}",
            "missing": "{{ a.x.c }}",
            "through_string": "{{ a.s.len }}",
            "through_list": "{{ l.0 }}"
        });
        assert_eq!(
            render_value(&template, &values),
            json!({"c": 7, "b": {"c": 7}, "p": "v7"})
        );
    }

    #[test]
    fn null_default_is_dropped() {
        let t = sample();
        let defaults = t.defaults();
        assert!(!defaults.contains_key("command"));
        assert_eq!(defaults.get("cpu"), Some(&json!(1)));
        let values = t
            .resolve(&Map::new(), &map(json!({"image": "busybox"})))
            .unwrap();
        assert!(!values.contains_key("command"));
        let out = t.render(&values, &Map::new());
        assert!(out.get("command").is_none());
        // An explicit null override is kept and rendered as null.
        let values = t
            .resolve(&map(json!({"command": null})), &map(json!({"image": "i"})))
            .unwrap();
        assert_eq!(t.render(&values, &Map::new())["command"], Value::Null);
    }

    #[test]
    fn null_default_need_not_match_type() {
        tpl(json!({
            "job_configuration": {"n": "{{ n }}"},
            "variables": {"properties": {"n": {"type": "integer", "default": null}}}
        }));
    }

    #[test]
    fn expand_dotted_nests_and_merges() {
        let m = map(
            json!({"env": {"A": "1", "B": "x"}, "env.B": "2", "a.b.c": 1, "a.b.d": 2, "x..y": 3}),
        );
        assert_eq!(
            Value::Object(expand_dotted(&m)),
            json!({"env": {"A": "1", "B": "2"}, "a": {"b": {"c": 1, "d": 2}}, "x..y": 3})
        );
    }

    #[test]
    fn env_and_dotted_keys_merge_across_three_layers() {
        let t = sample();
        let deployment = map(json!({
            "image": "dep",
            "env": {"A": "1", "SHARED": "dep"},
            "env.B": "2",
            "labels": {"owner": "dep"},
            "cpu": 2
        }));
        let run = map(json!({
            "env": {"SHARED": "run", "C": "3"},
            "env.D": "4",
            "labels.extra": "run"
        }));
        let values = t.resolve(&deployment, &run).unwrap();
        assert_eq!(values["image"], json!("dep"));
        assert_eq!(values["cpu"], json!(2));
        assert_eq!(
            values["env"],
            json!({"BASE": "0", "A": "1", "B": "2", "SHARED": "run", "C": "3", "D": "4"})
        );
        // `labels` replaced wholesale by the deployment (default team dropped),
        // then the run's dotted key merged into it.
        assert_eq!(values["labels"], json!({"owner": "dep", "extra": "run"}));

        let mut base = map(json!({"env": {"A": "1"}, "x": {"keep": 1}}));
        apply_overrides(&mut base, &map(json!({"env": {"B": "2"}, "x": {"new": 2}})));
        assert_eq!(
            Value::Object(base),
            json!({"env": {"A": "1", "B": "2"}, "x": {"new": 2}})
        );
    }

    #[test]
    fn render_with_builtin_context() {
        let t = sample();
        let values = t.resolve(&Map::new(), &map(json!({"image": "i"}))).unwrap();
        let context = map(json!({
            "flow_run": {"id": "fr-1"},
            "pushpool": {"run_token": "tok"}
        }));
        let out = t.render(&values, &context);
        assert_eq!(
            out,
            json!({
                "image": "i",
                "cpu": 1,
                "env": {"BASE": "0"},
                "labels": {"team": "a"},
                "name": "run-fr-1",
                "token": "tok"
            })
        );
        // Without context, built-ins are missing like anything else.
        let out = t.render(&values, &Map::new());
        assert_eq!(out["name"], json!("run-"));
        assert!(out.get("token").is_none());
    }

    #[test]
    fn builtin_namespaces_need_no_declaration() {
        let t = tpl(json!({
            "job_configuration": {
                "a": "{{ flow_run.id }}",
                "b": "{{ deployment.name }}",
                "c": "{{ work_pool.name }}",
                "d": "{{ pushpool.run_token }}"
            }
        }));
        assert!(t.used_variables().is_empty());
        assert_eq!(
            t.variables_schema(),
            &json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn undeclared_placeholder_names_its_path() {
        let e = parse_err(json!({
            "job_configuration": {"containers": [{"image": "x"}, {"image": "{{ img.tag }}"}]},
            "variables": {"properties": {"image": {"type": "string"}}}
        }));
        assert_eq!(e.rule, "undeclared_placeholder");
        assert_eq!(
            e.field,
            "base_job_template.job_configuration.containers[1].image"
        );
        assert!(e.message.contains("img"), "{}", e.message);
    }

    #[test]
    fn unknown_override_is_refused() {
        let t = sample();
        for key in ["nope", "nope.x"] {
            let overrides = map(json!({ key: "v" }));
            let e = t.validate_deployment_overrides(&overrides).unwrap_err();
            assert_eq!(e.rule, "unknown_variable");
            assert_eq!(e.field, format!("job_variables.{key}"));
            assert!(e.message.contains("unknown job variable `nope`"));
            let e = t
                .resolve(&Map::new(), &map(json!({"image": "i", key: "v"})))
                .unwrap_err();
            assert_eq!(e.rule, "unknown_variable");
            let e = t
                .resolve(&overrides, &map(json!({"image": "i"})))
                .unwrap_err();
            assert_eq!(e.rule, "unknown_variable");
        }
    }

    #[test]
    fn unused_override_is_refused() {
        let t = sample();
        assert!(!t.used_variables().contains("unused"));
        let e = t
            .validate_deployment_overrides(&map(json!({"unused": "v"})))
            .unwrap_err();
        assert_eq!(e.rule, "unused_variable");
        assert_eq!(e.field, "job_variables.unused");
        assert!(e.message.contains("`unused`") && e.message.contains("#20131"));
        let e = t
            .resolve(&Map::new(), &map(json!({"image": "i", "unused": "v"})))
            .unwrap_err();
        assert_eq!(e.rule, "unused_variable");
        assert_eq!(e.field, "job_variables.unused");
    }

    #[test]
    fn schema_failures_name_the_variable_path() {
        let t = sample();
        let cases = [
            (json!({"cpu": "lots"}), "job_variables.cpu"),
            (json!({"cpu": 0}), "job_variables.cpu"),
            (json!({"args": ["ok", 1]}), "job_variables.args[1]"),
            (json!({"env.FOO": 5}), "job_variables.env.FOO"),
            (json!({"env": {"0": 5}}), "job_variables.env.0"),
            (json!({"image": 3}), "job_variables.image"),
        ];
        for (overrides, field) in cases {
            let e = t
                .validate_deployment_overrides(&map(overrides.clone()))
                .unwrap_err();
            assert_eq!((e.rule, e.field.as_str()), ("schema", field), "{overrides}");
            let mut run = map(overrides.clone());
            run.entry("image").or_insert(json!("i"));
            let e = t.resolve(&Map::new(), &run).unwrap_err();
            assert_eq!((e.rule, e.field.as_str()), ("schema", field), "{overrides}");
            assert!(e.to_string().starts_with(&format!("{field}: ")));
        }
    }

    #[test]
    fn required_is_enforced_only_on_resolved_values() {
        let t = sample();
        t.validate_deployment_overrides(&map(json!({"cpu": 4})))
            .expect("deployment may leave `image` to the run");
        let e = t.resolve(&map(json!({"cpu": 4})), &Map::new()).unwrap_err();
        assert_eq!(e.rule, "required");
        assert_eq!(e.field, "job_variables.image");
        let values = t
            .resolve(&map(json!({"cpu": 4})), &map(json!({"image": "i"})))
            .unwrap();
        assert_eq!(values["cpu"], json!(4));

        // Nested `required` is ignored for deployments too.
        let t = tpl(json!({
            "job_configuration": {"o": "{{ o }}"},
            "variables": {"properties": {"o": {
                "type": "object",
                "required": ["must"],
                "properties": {"must": {"type": "string"}}
            }}}
        }));
        t.validate_deployment_overrides(&map(json!({"o": {}})))
            .unwrap();
        let e = t.resolve(&map(json!({"o": {}})), &Map::new()).unwrap_err();
        assert_eq!(
            (e.rule, e.field.as_str()),
            ("required", "job_variables.o.must")
        );
    }

    #[test]
    fn strip_required_keeps_data_keywords() {
        let mut s = json!({
            "required": ["a"],
            "properties": {
                "required": {"type": "string"},
                "x": {"const": {"required": ["k"]}, "items": [{"required": ["z"]}]}
            }
        });
        strip_required(&mut s);
        assert_eq!(
            s,
            json!({
                "properties": {
                    "required": {"type": "string"},
                    "x": {"const": {"required": ["k"]}, "items": [{}]}
                }
            })
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        let cases = [
            (json!([]), "base_job_template"),
            (
                json!({"variables": {}}),
                "base_job_template.job_configuration",
            ),
            (
                json!({"job_configuration": []}),
                "base_job_template.job_configuration",
            ),
            (
                json!({"job_configuration": {}, "variables": []}),
                "base_job_template.variables",
            ),
            (
                json!({"job_configuration": {}, "variables": {"type": "array"}}),
                "base_job_template.variables.type",
            ),
            (
                json!({"job_configuration": {}, "variables": {"properties": []}}),
                "base_job_template.variables.properties",
            ),
            (
                json!({"job_configuration": {}, "variables": {"properties": {"a.b": {}}}}),
                "base_job_template.variables.properties.a.b",
            ),
            (
                json!({"job_configuration": {}, "variables": {"properties": {"a": 3}}}),
                "base_job_template.variables.properties.a",
            ),
            (
                json!({"job_configuration": {}, "extra": 1}),
                "base_job_template.extra",
            ),
        ];
        for (v, field) in cases {
            let e = parse_err(v.clone());
            assert_eq!(
                (e.rule, e.field.as_str()),
                ("invalid_template", field),
                "{v}"
            );
        }
        let e = parse_err(json!({
            "job_configuration": {},
            "variables": {"properties": {"a": {"type": 5}}}
        }));
        assert_eq!(e.rule, "invalid_template");
        assert!(e.field.starts_with("base_job_template.variables"), "{e:?}");
    }

    #[test]
    fn invalid_default_is_refused() {
        let e = parse_err(json!({
            "job_configuration": {"cpu": "{{ cpu }}"},
            "variables": {"properties": {"cpu": {"type": "integer", "default": "x"}}}
        }));
        assert_eq!(e.rule, "schema");
        assert_eq!(
            e.field,
            "base_job_template.variables.properties.cpu.default"
        );
        let e = parse_err(json!({
            "job_configuration": {},
            "variables": {"properties": {"args": {
                "type": "array", "items": {"type": "string"}, "default": ["a", 2]
            }}}
        }));
        assert_eq!(
            e.field,
            "base_job_template.variables.properties.args.default[1]"
        );
        // `$ref`s resolve against the whole variables schema.
        tpl(json!({
            "job_configuration": {"r": "{{ r }}"},
            "variables": {
                "definitions": {"Res": {"type": "object", "properties": {"cpu": {"type": "integer"}}}},
                "properties": {"r": {"$ref": "#/definitions/Res", "default": {"cpu": 1}}}
            }
        }));
    }

    #[test]
    fn deep_templates_are_refused_without_overflow() {
        let mut deep = json!("leaf");
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        let e = parse_err(json!({"job_configuration": {"deep": deep}}));
        assert_eq!(e.rule, "invalid_template");
        assert!(e
            .field
            .starts_with("base_job_template.job_configuration.deep[0][0]"));

        // Exactly the limit is fine: the template object is level 1,
        // `job_configuration` level 2, the innermost `{}` level 64.
        let mut ok = json!({});
        for _ in 0..(MAX_TEMPLATE_DEPTH - 3) {
            ok = json!([ok]);
        }
        tpl(json!({"job_configuration": {"x": ok}}));
        let mut too_deep = json!({});
        for _ in 0..(MAX_TEMPLATE_DEPTH - 2) {
            too_deep = json!([too_deep]);
        }
        parse_err(json!({"job_configuration": {"x": too_deep}}));
    }

    /// The example in `docs/templates.md`.
    #[test]
    fn docs_example() {
        let t = tpl(json!({
            "job_configuration": {
                "image": "{{ image }}",
                "command": "{{ command }}",
                "cpu": "{{ cpu }}",
                "env": "{{ env }}",
                "name": "run-{{ flow_run.id }}"
            },
            "variables": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string"},
                    "command": {"type": ["string", "null"], "default": null},
                    "cpu": {"type": "integer", "minimum": 1, "default": 1},
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "default": {"BASE": "0"}
                    }
                }
            }
        }));
        assert_eq!(
            Value::Object(t.defaults()),
            json!({"cpu": 1, "env": {"BASE": "0"}})
        );
        let deployment = map(json!({"image": "app:1", "cpu": 2, "env": {"A": "1"}, "env.B": "2"}));
        let run = map(json!({"env": {"B": "3", "C": "4"}}));
        t.validate_deployment_overrides(&deployment).unwrap();
        let values = t.resolve(&deployment, &run).unwrap();
        assert_eq!(
            Value::Object(values.clone()),
            json!({"image": "app:1", "cpu": 2, "env": {"BASE": "0", "A": "1", "B": "3", "C": "4"}})
        );
        let out = t.render(&values, &map(json!({"flow_run": {"id": "42"}})));
        assert_eq!(
            out,
            json!({
                "image": "app:1",
                "cpu": 2,
                "env": {"BASE": "0", "A": "1", "B": "3", "C": "4"},
                "name": "run-42"
            })
        );
        let e = t.resolve(&Map::new(), &Map::new()).unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("job_variables.image"));
    }

    #[test]
    fn accessors_round_trip() {
        let raw = json!({
            "job_configuration": {"a": "{{ a.b }}", "b": ["{{ c }}-{{ flow_run.id }}"]},
            "variables": {"properties": {"a": {"type": "object"}, "c": {"default": 1}}}
        });
        let t = tpl(raw.clone());
        assert_eq!(t.to_value(), raw);
        assert_eq!(t.job_configuration(), &raw["job_configuration"]);
        assert_eq!(t.variables_schema(), &raw["variables"]);
        assert_eq!(
            t.used_variables().into_iter().collect::<Vec<_>>(),
            vec!["a".to_owned(), "c".to_owned()]
        );
        assert_eq!(Value::Object(t.defaults()), json!({"c": 1}));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A template plus what it must render to with no values (`None`: removed).
    fn arb_template() -> impl Strategy<Value = (Value, Option<Value>)> {
        let name = "[a-z_]{1,3}(\\.[a-z0-9]{1,3}){0,2}";
        let leaf = prop_oneof![
            (name, "[ \t]{0,2}", "[ \t]{0,2}")
                .prop_map(|(n, l, r)| (Value::String(format!("{{{{{l}{n}{r}}}}}")), None)),
            ("[a-z -]{1,3}", name, "[a-z -]{0,3}", name).prop_map(|(p, n, s, m)| (
                Value::String(format!("{p}{{{{ {n} }}}}{s}{{{{{m}}}}}")),
                Some(Value::String(format!("{p}{s}")))
            )),
            "[a-z {]{0,5}".prop_map(|s| (Value::String(s.clone()), Some(Value::String(s)))),
            any::<i64>().prop_map(|n| (Value::from(n), Some(Value::from(n)))),
            any::<bool>().prop_map(|b| (Value::Bool(b), Some(Value::Bool(b)))),
            Just((Value::Null, Some(Value::Null))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                    let t = items.iter().map(|(t, _)| t.clone()).collect();
                    let e = items.into_iter().filter_map(|(_, e)| e).collect();
                    (Value::Array(t), Some(Value::Array(e)))
                }),
                prop::collection::btree_map("[a-z{}]{0,4}", inner, 0..4).prop_map(|m| {
                    let t = m.iter().map(|(k, (t, _))| (k.clone(), t.clone())).collect();
                    let e = m
                        .into_iter()
                        .filter_map(|(k, (_, e))| e.map(|e| (k, e)))
                        .collect();
                    (Value::Object(t), Some(Value::Object(e)))
                }),
            ]
        })
    }

    type Layer = (
        std::collections::BTreeMap<&'static str, String>,
        std::collections::BTreeMap<&'static str, String>,
        bool,
    );

    fn arb_layer() -> impl Strategy<Value = Layer> {
        (
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c"]),
                "[a-z]{0,4}",
                0..=3,
            ),
            prop::collection::btree_map(
                prop::sample::select(vec!["A", "B", "C", "D"]),
                "[a-z]{0,4}",
                0..=4,
            ),
            any::<bool>(),
        )
    }

    /// Override map for a layer: env as one `env` object or as `env.X` keys.
    fn layer_map(layer: &Layer) -> Map<String, Value> {
        let (vars, env, dotted) = layer;
        let mut m: Map<String, Value> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        if *dotted {
            for (k, v) in env {
                m.insert(format!("env.{k}"), json!(v));
            }
        } else if !env.is_empty() {
            m.insert(
                "env".into(),
                Value::Object(
                    env.iter()
                        .map(|(k, v)| ((*k).to_owned(), json!(v)))
                        .collect(),
                ),
            );
        }
        m
    }

    proptest! {
        #[test]
        fn prop_whole_placeholder_preserves_type(v in arb_json()) {
            let values = map(json!({ "x": v.clone() }));
            prop_assert_eq!(
                render_value(&json!({"k": "{{ x }}"}), &values),
                json!({ "k": v })
            );
        }

        #[test]
        fn prop_missing_values_removed_and_partials_emptied((t, expected) in arb_template()) {
            let out = render_value(&json!({ "root": t }), &Map::new());
            let want = match expected {
                Some(e) => json!({ "root": e }),
                None => json!({}),
            };
            prop_assert_eq!(out, want);
        }

        #[test]
        fn prop_override_order(defaults in arb_layer(), dep in arb_layer(), run in arb_layer()) {
            let mut props = Map::new();
            for k in ["a", "b", "c"] {
                let mut schema = json!({"type": "string"});
                if let Some(d) = defaults.0.get(k) {
                    schema["default"] = json!(d);
                }
                props.insert(k.to_owned(), schema);
            }
            let default_env: Map<String, Value> = defaults
                .1
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            props.insert(
                "env".into(),
                json!({
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "default": default_env
                }),
            );
            let t = tpl(json!({
                "job_configuration": {"a": "{{ a }}", "b": "{{ b }}", "c": "{{ c }}", "env": "{{ env }}"},
                "variables": {"type": "object", "properties": props}
            }));
            let (dep_map, run_map) = (layer_map(&dep), layer_map(&run));
            prop_assert!(t.validate_deployment_overrides(&dep_map).is_ok());
            let values = t.resolve(&dep_map, &run_map).unwrap();
            for k in ["a", "b", "c"] {
                let want = run.0.get(k).or(dep.0.get(k)).or(defaults.0.get(k));
                let want = want.map(|s| json!(s));
                prop_assert_eq!(values.get(k), want.as_ref(), "key {}", k);
            }
            let mut env = std::collections::BTreeMap::new();
            for layer in [&defaults, &dep, &run] {
                env.extend(layer.1.iter().map(|(k, v)| (k.to_string(), json!(v))));
            }
            let want_env: Map<String, Value> = env.into_iter().collect();
            prop_assert_eq!(&values["env"], &Value::Object(want_env));
            let rendered = t.render(&values, &Map::new());
            prop_assert_eq!(&rendered["env"], &values["env"]);
        }
    }
}
