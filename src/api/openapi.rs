//! The OpenAPI 3.1 document, generated from the route table: for every operation its
//! parameters, request body, success answers with their schemas and every error status with the
//! shared error schema. Schemas are derived from the Rust types with `schemars` (JSON Schema
//! 2020-12, OpenAPI 3.1's dialect): request types as they are deserialized, answers as they are
//! serialized.

use axum::http::StatusCode;
use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::routes;
use super::table::{Content, RequestBody, Route};
use super::{Access, ErrorBody};

/// The OpenAPI document of the route table (built once).
pub fn document() -> Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| build().0).clone()
}

/// Schema names a request type and an answer type both claim with different schemas; the
/// document keeps the answer's. A test asserts there are none.
pub fn schema_conflicts() -> Vec<String> {
    build().1
}

fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    }
    .into_generator()
}

fn build() -> (Value, Vec<String>) {
    let mut requests = generator(false);
    let mut answers = generator(true);
    let error = answers.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for route in routes::all() {
        let op = operation(route, &mut requests, &mut answers, &error);
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str()] = op;
    }
    let mut schemas = answers.take_definitions(true);
    let mut conflicts = vec![];
    for (name, schema) in requests.take_definitions(true) {
        match schemas.get(&name) {
            Some(existing) if *existing != schema => conflicts.push(name),
            Some(_) => {}
            None => {
                schemas.insert(name, schema);
            }
        }
    }
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pushpool API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs workflow runs on serverless infrastructure through push work pools. \
                Errors are `{\"error\", \"message\", \"field\"?}`; a known path asked with a method \
                it does not serve answers 405 with `Allow`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`pp_…`), or on `/api/runs/{id}` routes the run's job token (`ppr_…`)",
            }},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
    });
    (doc, conflicts)
}

fn operation(
    route: &Route,
    requests: &mut SchemaGenerator,
    answers: &mut SchemaGenerator,
    error: &Schema,
) -> Value {
    let mut parameters: Vec<Value> = route
        .path_params()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if let Some(query) = route.query {
        let schema = query(requests);
        parameters.extend(query_parameters(requests, schema.as_value()));
    }
    let mut responses = Map::new();
    for reply in route.replies.iter().flatten() {
        let mut answer = json!({"description": reply.description});
        match reply.content {
            Content::Empty => {}
            Content::Json(schema) => {
                answer["content"] = json!({"application/json": {"schema": schema(answers)}});
            }
            // A Server-Sent Events stream: the schema of each message, as OpenAPI 3.2's
            // `itemSchema` and schemathesis read it (docs/events.md).
            Content::Text("text/event-stream") => {
                answer["content"] = json!({"text/event-stream": {"schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The event's `seq`: resume with Last-Event-ID"},
                        "event": {"type": "string", "enum": ["event"]},
                        "data": {"type": "string", "description": "The event as JSON"},
                        "retry": {"type": "integer"}
                    },
                    "required": ["id", "event", "data"]
                }}});
            }
            Content::Text(media_type) => {
                answer["content"] = json!({media_type: {"schema": {"type": "string"}}});
            }
        }
        responses.insert(reply.status.to_string(), answer);
    }
    for status in route.error_statuses() {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        responses.insert(
            status.to_string(),
            json!({"description": reason, "content": {"application/json": {"schema": error}}}),
        );
    }
    let mut op = json!({
        "summary": route.summary,
        "operationId": format!(
            "{}_{}",
            route.method.as_str(),
            route.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")
        ),
        "parameters": parameters,
        "responses": responses,
        "x-pushpool-action": route.action,
    });
    match route.body {
        RequestBody::None => {}
        RequestBody::Json(schema) | RequestBody::OptionalJson(schema) => {
            op["requestBody"] = json!({
                "required": matches!(route.body, RequestBody::Json(_)),
                "content": {"application/json": {"schema": schema(requests)}},
            });
        }
    }
    match route.access {
        Access::Public => op["security"] = json!([]),
        Access::Workspace(scope) => {
            let mut description = format!("Authorization: {}", route.access.describe());
            if let Some((extra, when)) = route.conditional_scope {
                description.push_str(&format!(
                    "; also `{extra}` when {when} (403 naming it otherwise)"
                ));
                op["x-pushpool-conditional-scope"] = json!({"scope": extra.as_str(), "when": when});
            }
            op["description"] = json!(description);
            op["x-pushpool-scope"] = json!(scope.as_str());
        }
        other => op["description"] = json!(format!("Authorization: {}", other.describe())),
    }
    op
}

/// One query parameter per property of a query struct's schema (a `$ref` into `generator`).
fn query_parameters(generator: &SchemaGenerator, schema: &Value) -> Vec<Value> {
    let resolved = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| generator.definitions().get(name))
        .unwrap_or(schema);
    let required: Vec<&str> = resolved["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = resolved["properties"].as_object() else {
        return vec![];
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = without_null(property.clone());
            let description = property
                .as_object_mut()
                .and_then(|p| p.remove("description"));
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": property,
            });
            if let Some(d) = description {
                parameter["description"] = d;
            }
            parameter
        })
        .collect()
}

/// A schema without its `null` alternative: a query parameter is absent, never null.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    for key in ["anyOf", "oneOf"] {
        let Some(alternatives) = schema.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        alternatives.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
        if alternatives.len() == 1 {
            let only = alternatives[0].clone();
            let mut rest = schema.as_object().cloned().unwrap_or_default();
            rest.remove(key);
            let mut merged = only;
            if let Some(m) = merged.as_object_mut() {
                m.extend(rest);
            }
            return merged;
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer_schemas_never_share_a_name_with_different_shapes() {
        assert_eq!(schema_conflicts(), Vec::<String>::new());
    }

    #[test]
    fn null_is_dropped_from_query_parameters() {
        assert_eq!(
            without_null(json!({"type": ["string", "null"], "format": "uuid"})),
            json!({"type": "string", "format": "uuid"})
        );
        assert_eq!(
            without_null(
                json!({"anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}], "description": "d"})
            ),
            json!({"$ref": "#/components/schemas/X", "description": "d"})
        );
    }
}
