//! `pushpool automation create|ls|inspect|enable|disable|delete|firings` (docs/automations.md).

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{columns_table, field, key_values, pretty, time_field, Column};
use super::{create, delete, get_and_show, send_and_show, OutputFormat};

/// `pushpool automation …`
#[derive(clap::Args, Debug, Clone)]
pub struct AutomationArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AutomationCommand,
}

/// The automation commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AutomationCommand {
    /// Create an automation from a JSON file `{trigger, actions, description?, enabled?}`.
    Create {
        /// Name.
        name: String,
        /// The JSON file (`-` reads standard input).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List the workspace's automations.
    #[command(visible_alias = "list")]
    Ls,
    /// Show an automation.
    Inspect {
        /// Name or id.
        name: String,
    },
    /// Enable an automation (its count starts over).
    Enable {
        /// Name or id.
        name: String,
    },
    /// Disable an automation.
    Disable {
        /// Name or id.
        name: String,
    },
    /// Delete an automation.
    Delete {
        /// Name or id.
        name: String,
    },
    /// An automation's newest firings and their actions' outcomes.
    Firings {
        /// Name or id.
        name: String,
        /// How many (1–1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

const COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("ENABLED", "enabled"),
    Column::field("TRIGGER", "trigger_type"),
    Column::field("ACTIONS", "action_types"),
    Column::time("UPDATED", "updated"),
];

/// Adds the flattened `trigger_type` and `action_types` the table shows.
fn flatten(a: &Value) -> Value {
    let mut a = a.clone();
    a["trigger_type"] = a["trigger"]["type"].clone();
    let kinds: Vec<String> = a["actions"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| x["type"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    a["action_types"] = json!(kinds.join(","));
    a
}

fn details(a: &Value) -> String {
    let a = flatten(a);
    key_values(&[
        ("id", field(&a, "id")),
        ("name", field(&a, "name")),
        ("enabled", field(&a, "enabled")),
        ("description", field(&a, "description")),
        ("trigger", pretty(&a["trigger"])),
        ("actions", pretty(&a["actions"])),
        ("updated", time_field(&a, "updated")),
    ])
}

/// Runs an `automation` command.
pub(super) async fn automation(
    api: &Api,
    out: OutputFormat,
    command: AutomationCommand,
) -> Result<i32, CliError> {
    match command {
        AutomationCommand::Create {
            name,
            file,
            disabled,
        } => {
            let mut body = input::read_json_file("--file", &file)?;
            if !body.is_object() {
                return Err(CliError::Usage(
                    "the --file document must be an object {trigger, actions, …}".into(),
                ));
            }
            body["name"] = json!(name);
            if disabled {
                body["enabled"] = json!(false);
            }
            create(api, out, "automations", &body, details).await?;
        }
        AutomationCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["automations"]), |v| {
                let rows: Vec<Value> = v
                    .as_array()
                    .map(|l| l.iter().map(flatten).collect())
                    .unwrap_or_default();
                columns_table(&Value::Array(rows), COLUMNS)
            })
            .await?;
        }
        AutomationCommand::Inspect { name } => {
            get_and_show(api, out, api.ws_url(&["automations", &name]), details).await?;
        }
        AutomationCommand::Enable { name } => set_enabled(api, out, &name, true).await?,
        AutomationCommand::Disable { name } => set_enabled(api, out, &name, false).await?,
        AutomationCommand::Delete { name } => {
            let url = api.ws_url(&["automations", &name]);
            delete(api, out, url, &format!("deleted automation {name}")).await?;
        }
        AutomationCommand::Firings { name, limit } => firings(api, out, &name, limit).await?,
    }
    Ok(0)
}

async fn set_enabled(
    api: &Api,
    out: OutputFormat,
    name: &str,
    enabled: bool,
) -> Result<(), CliError> {
    let url = api.ws_url(&["automations", name]);
    let body = json!({ "enabled": enabled });
    send_and_show(api, out, Method::PATCH, url, Some(&body), |v| {
        format!(
            "automation {} {}",
            field(v, "name"),
            if enabled { "enabled" } else { "disabled" }
        )
    })
    .await?;
    Ok(())
}

/// A firing's row: its actions as `type:status` pairs.
fn firing_row(f: &Value) -> Value {
    let mut f = f.clone();
    let outcomes: Vec<String> = f["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    format!(
                        "{}:{}",
                        x["type"].as_str().unwrap_or("?"),
                        x["status"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    f["outcomes"] = json!(outcomes.join(","));
    f
}

async fn firings(api: &Api, out: OutputFormat, name: &str, limit: u32) -> Result<(), CliError> {
    let mut url = api.ws_url(&["automations", name, "firings"]);
    url.query_pairs_mut()
        .append_pair("limit", &limit.to_string());
    get_and_show(api, out, url, |v| {
        let rows: Vec<Value> = v
            .as_array()
            .map(|l| l.iter().map(firing_row).collect())
            .unwrap_or_default();
        columns_table(
            &Value::Array(rows),
            &[
                Column::time("FIRED", "fired"),
                Column::field("GROUP", "group_key"),
                Column::field("COUNT", "count"),
                Column::field("ACTIONS", "outcomes"),
            ],
        )
    })
    .await?;
    Ok(())
}
