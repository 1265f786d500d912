//! `/docs`: the API reference, rendered on the server from the OpenAPI document (no script, no
//! CDN; the same embedded stylesheet as the dashboard). Every operation shows its summary, who
//! may call it, its parameters, request body and answers; schemas are linked by name and listed
//! at the end.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::layout::{esc, CSP};

fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A schema in one line: its `$ref` name linked, or its type, or the JSON.
fn schema_brief(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), esc(name));
    }
    if let Some(items) = s.get("items") {
        return format!("array of {}", schema_brief(items));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(list) = s[key].as_array() {
            return list
                .iter()
                .map(schema_brief)
                .collect::<Vec<_>>()
                .join(" or ");
        }
    }
    match &s["type"] {
        Value::String(t) => esc(t),
        Value::Array(ts) => esc(&ts
            .iter()
            .filter_map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" or ")),
        _ => "any".into(),
    }
}

fn operation(path: &str, method: &str, op: &Value) -> String {
    let id = anchor(&format!("{method}-{path}"));
    let params: String = op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(p["name"].as_str().unwrap_or_default()),
                        esc(p["in"].as_str().unwrap_or_default()),
                        schema_brief(&p["schema"]),
                        esc(p["description"].as_str().unwrap_or_default())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let params = if params.is_empty() {
        String::new()
    } else {
        format!("<h4>Parameters</h4><div class=\"scroll\"><table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">In</th><th scope=\"col\">Type</th><th scope=\"col\">Description</th></tr></thead><tbody>{params}</tbody></table></div>")
    };
    let body = op["requestBody"]["content"]["application/json"]["schema"]
        .as_object()
        .map(|_| {
            format!(
                "<h4>Request body</h4><p>JSON: {}{}</p>",
                schema_brief(&op["requestBody"]["content"]["application/json"]["schema"]),
                if op["requestBody"]["required"] == Value::Bool(false) {
                    " (optional)"
                } else {
                    ""
                }
            )
        })
        .unwrap_or_default();
    let responses: String = op["responses"]
        .as_object()
        .map(|rs| {
            rs.iter()
                .map(|(status, r)| {
                    let content = r["content"]
                        .as_object()
                        .and_then(|c| c.iter().next())
                        .map(|(media, c)| format!("{} {}", esc(media), schema_brief(&c["schema"])))
                        .unwrap_or_default();
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{content}</td></tr>",
                        esc(status),
                        esc(r["description"].as_str().unwrap_or_default())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        r#"<section class="op" id="{id}"><h3><span class="method m-{method}">{upper}</span> <code>{p}</code></h3>
<p>{summary}</p><p class="muted">{desc}</p>{params}{body}
<h4>Answers</h4><div class="scroll"><table><thead><tr><th scope="col">Status</th><th scope="col">When</th><th scope="col">Body</th></tr></thead><tbody>{responses}</tbody></table></div></section>"#,
        upper = method.to_uppercase(),
        p = esc(path),
        summary = esc(op["summary"].as_str().unwrap_or_default()),
        desc = esc(op["description"].as_str().unwrap_or_default()),
    )
}

/// The reference page's HTML.
pub fn reference_html(doc: &Value) -> String {
    let mut toc = String::new();
    let mut ops = String::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, methods) in paths {
            for (method, op) in methods.as_object().into_iter().flatten() {
                toc.push_str(&format!(
                    "<li><a href=\"#{}\"><span class=\"method m-{method}\">{}</span> {}</a></li>",
                    anchor(&format!("{method}-{path}")),
                    method.to_uppercase(),
                    esc(path)
                ));
                ops.push_str(&operation(path, method, op));
            }
        }
    }
    let schemas: String = doc["components"]["schemas"]
        .as_object()
        .map(|s| {
            s.iter()
                .map(|(name, schema)| {
                    format!(
                        "<details id=\"schema-{}\"><summary><code>{}</code></summary><pre class=\"json\"><code>{}</code></pre></details>",
                        anchor(name),
                        esc(name),
                        esc(&serde_json::to_string_pretty(schema).unwrap_or_default())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>pushpool API reference</title>
<link rel="stylesheet" href="/ui/assets/ui.css"></head>
<body><a class="skip" href="#main">Skip to content</a>
<header class="top"><a class="brand" href="/ui">pushpool</a><nav aria-label="Main"><ul><li><a href="/ui">Dashboard</a></li><li><a href="/docs" aria-current="page">API reference</a></li></ul></nav></header>
<main id="main" class="docs"><h1>{title} <span class="muted">{version}</span></h1>
<p>{intro}</p>
<p>Machine-readable: <a href="/api/openapi.json">/api/openapi.json</a> (OpenAPI 3.1). Authenticate with <code>Authorization: Bearer &lt;API key&gt;</code>.</p>
<nav aria-label="Operations" class="toc"><h2>Operations</h2><ul>{toc}</ul></nav>
<h2>Operations</h2>{ops}
<h2>Schemas</h2>{schemas}
</main></body></html>"##,
        title = esc(doc["info"]["title"].as_str().unwrap_or("API")),
        version = esc(doc["info"]["version"].as_str().unwrap_or_default()),
        intro = esc(doc["info"]["description"].as_str().unwrap_or_default()),
    )
}

/// `GET /docs`.
pub fn reference() -> Response {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let html = PAGE.get_or_init(|| reference_html(&crate::api::openapi::document()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        html.clone(),
    )
        .into_response()
}
