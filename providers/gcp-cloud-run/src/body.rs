//! The Cloud Run v2 `Job` body of a job configuration, normalised the way Prefect's
//! `cloud-run-v2` worker does it (launch stage, timeout, retries, empty blocks, command lines).

use std::collections::BTreeMap;

use pushpool_provider::{ensure, ProviderError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::LAUNCH_STAGES;

/// Path of the task template inside the job body.
const TASK: &str = "job_body.template.template";
/// Path of the first container inside the job body.
const CONTAINER: &str = "job_body.template.template.containers[0]";

/// Where an `env_from_secrets` variable comes from: a Secret Manager secret and version.
#[derive(Deserialize)]
pub(crate) struct SecretSource {
    secret: Option<String>,
    version: Option<String>,
}

/// Normalises `job_body` for a task timeout of `timeout_seconds` and adds the
/// `env_from_secrets` variables to the first container; answers the body and its `maxRetries`.
pub(crate) fn normalise(
    mut job_body: Map<String, Value>,
    timeout_seconds: u64,
    env_from_secrets: Option<BTreeMap<String, SecretSource>>,
) -> Result<(Map<String, Value>, u64), ProviderError> {
    if let Some(stage) = job_body.get("launchStage") {
        match stage.as_str() {
            Some("" | "LAUNCH_TAG_UNSPECIFIED" | "LAUNCH_STAGE_UNSPECIFIED") => {
                job_body.remove("launchStage");
            }
            Some(s) if LAUNCH_STAGES.contains(&s) => {}
            _ => {
                return Err(ProviderError::invalid(
                    "job_body.launchStage",
                    format!("must be one of {}", LAUNCH_STAGES.join(", ")),
                ))
            }
        }
    }
    let task = job_body
        .get_mut("template")
        .and_then(|t| t.get_mut("template"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            ProviderError::invalid(
                TASK,
                "is required: the task template (containers, timeout, maxRetries, …)",
            )
        })?;
    task.insert("timeout".into(), json!(format!("{timeout_seconds}s")));
    let max_retries = match task.get("maxRetries") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n <= 10)
            .ok_or_else(|| {
                ProviderError::invalid(
                    format!("{TASK}.maxRetries"),
                    "must be an integer between 0 and 10",
                )
            })?,
    };
    task.insert("maxRetries".into(), json!(max_retries));
    drop_empty_settings(task);
    let containers = task
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ProviderError::invalid(
                format!("{TASK}.containers"),
                "must list at least one container",
            )
        })?;
    let first = containers[0]
        .as_object_mut()
        .ok_or_else(|| ProviderError::invalid(CONTAINER, "must be a JSON object"))?;
    ensure(
        first
            .get("image")
            .and_then(Value::as_str)
            .is_some_and(|i| !i.trim().is_empty()),
        "image",
        "is required: the container image of the Cloud Run job (job_body.template.template.containers[0].image)",
    )?;
    for key in ["command", "args"] {
        match command_line(first.get(key), &format!("{CONTAINER}.{key}"))? {
            Some(words) => first.insert(key.into(), json!(words)),
            None => first.remove(key),
        };
    }
    check_env(first.get("env"))?;
    if let Some(secrets) = env_from_secrets {
        add_secret_env(first, secrets)?;
    }
    Ok((job_body, max_retries))
}

/// Prefect's rules: unset optional settings, and a `vpcAccess` block without a connector, go away.
fn drop_empty_settings(task: &mut Map<String, Value>) {
    for key in ["serviceAccount", "executionEnvironment", "encryptionKey"] {
        if task.get(key).is_some_and(|v| v.is_null() || v == "") {
            task.remove(key);
        }
    }
    let drop_vpc = match task.get("vpcAccess") {
        None => false,
        Some(Value::Object(v)) => {
            v.is_empty()
                || (v.len() == 1 && v.get("connector").is_some_and(|c| c.is_null() || c == ""))
        }
        Some(v) => v.is_null() || v == "",
    };
    if drop_vpc {
        task.remove("vpcAccess");
    }
}

/// A container's `command` or `args`: a list of strings, or (Prefect's rule) a string split like
/// a shell would; empty means unset.
fn command_line(value: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, ProviderError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => shell_split(s)
            .map(Some)
            .ok_or_else(|| ProviderError::invalid(field, "has an unclosed quote")),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ProviderError::invalid(field, "must be a list of strings")),
        Some(_) => Err(ProviderError::invalid(
            field,
            "must be a string or a list of strings",
        )),
    }
}

fn check_env(env: Option<&Value>) -> Result<(), ProviderError> {
    let field = format!("{CONTAINER}.env");
    match env {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => ensure(
            items
                .iter()
                .all(|i| i.get("name").and_then(Value::as_str).is_some()),
            &field,
            "items must be objects with a `name`",
        ),
        Some(_) => Err(ProviderError::invalid(
            field,
            "must be a list of {name, value} objects",
        )),
    }
}

fn add_secret_env(
    container: &mut Map<String, Value>,
    secrets: BTreeMap<String, SecretSource>,
) -> Result<(), ProviderError> {
    let env_list = container.entry("env").or_insert_with(|| json!([]));
    if env_list.is_null() {
        *env_list = json!([]);
    }
    for (name, source) in secrets {
        let secret = source.secret.ok_or_else(|| {
            ProviderError::invalid(format!("env_from_secrets.{name}.secret"), "is required")
        })?;
        let version = source.version.unwrap_or_else(|| "latest".into());
        if let Some(list) = env_list.as_array_mut() {
            list.push(json!({"name": name, "valueSource": {"secretKeyRef": {"secret": secret, "version": version}}}));
        }
    }
    Ok(())
}

/// Splits a command line like a POSIX shell (quotes and backslashes; no expansion).
pub fn shell_split(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}
