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
//! The semantics are Prefect 3.8.8's (`apply_values`, `resolve_for_flow_run`,
//! `from_template_and_values`; implemented in [`super::render`]), with the
//! deliberate differences listed in `docs/templates.md` ("Differences from
//! Prefect": JSON rather than Python spelling in partial placeholders, the
//! refusal of unknown or unused variables, conflicting dotted keys and
//! errors where Prefect raises) and checked by the differential test
//! (`scripts/template-diff`).

use std::collections::BTreeSet;
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::{Map, Value};

use super::patterns::{check_patterns, compile_schema};
pub use super::patterns::{MAX_PATTERN_BYTES, MAX_PATTERN_COMPILED_BYTES, MAX_TEMPLATE_PATTERNS};
use super::render::{self, placeholder_kind, PlaceholderKind, PLACEHOLDER};

/// First dotted segments of placeholders that the system fills at render
/// time; they need not (and should not) be declared in `variables`.
pub const BUILTIN_NAMESPACES: [&str; 4] = ["flow_run", "deployment", "work_pool", "pushpool"];

/// Deepest JSON nesting accepted in a base job template (the template object
/// itself is level 1).
pub const MAX_TEMPLATE_DEPTH: usize = 64;

/// Error with the JSON path of the offending field, the rule broken, and a
/// human message.
///
/// `field` is a dotted path (array items as `[i]`) rooted at
/// `base_job_template` for template problems and at `job_variables` for
/// problems with deployment or flow-run overrides. `rule` is one of
/// `invalid_template`, `too_many_patterns`, `pattern_too_long`,
/// `unsupported_pattern`, `undeclared_placeholder`, `unknown_variable`,
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

pub(super) fn error(
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
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Formats `prefix` followed by `segs` as `prefix.key[3].other`.
pub(super) fn fmt_path(prefix: &str, segs: &[Seg]) -> String {
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
pub(super) fn pointer_segs(root: &Value, pointer: &str) -> Vec<Seg> {
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

/// Applies one layer of job variables onto `base` the way Prefect's
/// `from_template_and_values` applies them onto the defaults: dotted keys
/// expanded first, plain keys on top, then each resulting variable replaces
/// the one in `base` (`labels.team` alone replaces a default `labels`). The
/// layer should have passed [`render::check_dotted_conflicts`].
pub fn apply_overrides(base: &mut Map<String, Value>, overrides: &Map<String, Value>) {
    render::apply_layer(base, overrides);
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
    render::apply_values(template, values, &render::no_environ).unwrap_or(Value::Null)
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

        let patterns = check_patterns(&variables)?;
        let validator = compile_schema(&variables, &patterns)?;
        let mut no_required = variables.clone();
        strip_required(&mut no_required);
        let validator_no_required = compile_schema(&no_required, &patterns)?;

        let mut found = Vec::new();
        collect_placeholders(&job_configuration, &mut Vec::new(), &mut found);
        let mut used = BTreeSet::new();
        for (name, path) in found {
            if placeholder_kind(&name) != PlaceholderKind::Standard {
                continue;
            }
            let first = render::first_segment(&name);
            let first = first.as_str();
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

    /// True when `name` is a property of the `variables` schema.
    pub fn declares(&self, name: &str) -> bool {
        self.properties().is_some_and(|p| p.contains_key(name))
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

    /// True when a job variable `var` can change the rendered job: a
    /// placeholder of the template uses it, or one of the `env` entries that
    /// Prefect merges into the job and renders (`env_used`, from
    /// [`Self::env_placeholders`]), or it is `env` and Prefect merges `env`
    /// into the job configuration (the template's `env` is an object, or the
    /// `env` default is truthy and so becomes the job's `env`).
    fn has_effect(&self, var: &str, env_used: &BTreeSet<String>) -> bool {
        if self.used.contains(var) || env_used.contains(var) {
            return true;
        }
        var == "env"
            && (self
                .job_configuration
                .get("env")
                .is_some_and(Value::is_object)
                || self.defaults().get("env").is_some_and(render::truthy))
    }

    /// First segments of the value placeholders in the `env` object that the
    /// job gets once `deployment` and `run` are applied (their own `env`
    /// entries are rendered too); empty when that cannot be worked out.
    fn env_placeholders(
        &self,
        deployment: &Map<String, Value>,
        run: &Map<String, Value>,
    ) -> BTreeSet<String> {
        let Ok(layers) = render::merge_layers(deployment, run) else {
            return BTreeSet::new();
        };
        let defaults = self.defaults();
        let mut values = defaults.clone();
        apply_overrides(&mut values, &layers);
        let Ok(base) = render::merge_env(&self.job_configuration, &defaults, &values) else {
            return BTreeSet::new();
        };
        let mut found = Vec::new();
        if let Some(env @ Value::Object(_)) = base.get("env") {
            collect_placeholders(env, &mut Vec::new(), &mut found);
        }
        found
            .into_iter()
            .filter(|(name, _)| placeholder_kind(name) == PlaceholderKind::Standard)
            .map(|(name, _)| render::first_segment(&name))
            .collect()
    }

    /// Refuses override keys whose variable is undeclared or unused.
    fn check_layer(
        &self,
        overrides: &Map<String, Value>,
        env_used: &BTreeSet<String>,
    ) -> Result<(), TemplateError> {
        let mut keys: Vec<&String> = overrides.keys().collect();
        keys.sort();
        for key in keys {
            let var = render::key_variable(key);
            let var = var.as_str();
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
            if !self.has_effect(var, env_used) {
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

    /// Checks a deployment's overrides: unknown/unused variables and
    /// conflicting dotted keys refused, validated ignoring `required`.
    ///
    /// The instance validated is the defaults with the overrides applied (as
    /// [`apply_overrides`] does), so `env.FOO` is checked inside `env`.
    pub fn validate_deployment_overrides(
        &self,
        overrides: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        let env_used = self.env_placeholders(overrides, &Map::new());
        self.check_layer(overrides, &env_used)?;
        render::check_dotted_conflicts(overrides)?;
        let defaults = self.defaults();
        let mut values = defaults.clone();
        apply_overrides(&mut values, overrides);
        render::merge_env(&self.job_configuration, &defaults, &values)?;
        self.check_env_references(overrides, &values)?;
        match schema_error(
            &self.validator_no_required,
            &Value::Object(values),
            "job_variables",
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Prefect's layering (`docs/templates.md`): the run's job variables
    /// over the deployment's ([`render::merge_layers`]), expanded, over the
    /// defaults; checks unknown/unused keys in both layers and conflicting
    /// dotted keys, validates the result WITH `required`. Returns the final
    /// variable values.
    pub fn resolve(
        &self,
        deployment: &Map<String, Value>,
        run: &Map<String, Value>,
    ) -> Result<Map<String, Value>, TemplateError> {
        let env_used = self.env_placeholders(deployment, run);
        self.check_layer(deployment, &env_used)?;
        self.check_layer(run, &env_used)?;
        self.resolve_unchecked(deployment, run)
    }

    /// [`Self::resolve`] without the refusal of unknown and unused
    /// variables: the values Prefect would render with (the differential
    /// test compares them; `docs/templates.md`, class `unused_variable`).
    pub fn resolve_unchecked(
        &self,
        deployment: &Map<String, Value>,
        run: &Map<String, Value>,
    ) -> Result<Map<String, Value>, TemplateError> {
        let layers = render::merge_layers(deployment, run)?;
        render::check_dotted_conflicts(&layers)?;
        let defaults = self.defaults();
        let mut values = defaults.clone();
        apply_overrides(&mut values, &layers);
        render::merge_env(&self.job_configuration, &defaults, &values)?;
        self.check_env_references(&layers, &values)?;
        match schema_error(
            &self.validator,
            &Value::Object(values.clone()),
            "job_variables",
        ) {
            Some(e) => Err(e),
            None => Ok(values),
        }
    }

    /// [`render::check_env_references`] for the `env` entries of `layers`.
    fn check_env_references(
        &self,
        layers: &Map<String, Value>,
        values: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        let secret = crate::redact::schema_secret_variables(&self.variables);
        render::check_env_references(render::expand(layers).get("env"), values, &secret)
    }

    /// Renders job_configuration with `values` plus built-in `context`
    /// (e.g. {"flow_run": {"id": ..}, "pushpool": {...}}); pure, never fails.
    /// Every `{{ $NAME }}` is missing (see [`Self::render_with_environ`]).
    ///
    /// A `context` key wins over a variable of the same name.
    pub fn render(&self, values: &Map<String, Value>, context: &Map<String, Value>) -> Value {
        self.render_with_environ(values, context, &render::no_environ)
    }

    /// [`Self::render`] with `{{ $NAME }}` read from `environ` (Prefect's
    /// workers read their own process environment). Pass an allow-list, not
    /// the whole process environment: job variables' `env` entries may carry
    /// `{{ $NAME }}` placeholders too. `values` should come
    /// from [`Self::resolve`]; an `env` that cannot be merged (which
    /// `resolve` refuses) is left out of the merge.
    pub fn render_with_environ(
        &self,
        values: &Map<String, Value>,
        context: &Map<String, Value>,
        environ: render::Environ<'_>,
    ) -> Value {
        let base = render::merge_env(&self.job_configuration, &self.defaults(), values)
            .unwrap_or_else(|_| self.job_configuration.clone());
        let mut all = values.clone();
        for (k, v) in context {
            all.insert(k.clone(), v.clone());
        }
        render::apply_values(&base, &all, environ).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
pub(crate) mod tests;
