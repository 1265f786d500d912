//! `pushpool pool …`: work pools.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{columns_table, emit, field, key_values, pretty, time_field, Column};
use super::{create, delete, get_and_show, send_and_show, OutputFormat};

/// `pushpool pool …`
#[derive(clap::Args, Debug, Clone)]
pub struct PoolArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PoolCommand,
}

/// Which job variables a run may override (run-level `job_variables`); deployment-level job
/// variables are not restricted by it.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OverridableArgs {
    /// A job variable runs of this pool may override (`--var` of `deployment run`); repeatable.
    /// Without any, runs may override every variable.
    #[arg(long = "overridable-variable", value_name = "NAME", conflicts_with_all = ["no_run_overrides", "any_run_overrides"])]
    pub overridable_variables: Vec<String>,
    /// Runs of this pool may override no job variable (`overridable_variables: []`).
    #[arg(long, conflicts_with = "any_run_overrides")]
    pub no_run_overrides: bool,
    /// Runs of this pool may override any job variable again (`overridable_variables: null`).
    #[arg(long)]
    pub any_run_overrides: bool,
}

impl OverridableArgs {
    /// The `overridable_variables` value to send, if the flags set one.
    pub fn value(&self) -> Option<Value> {
        if self.no_run_overrides {
            Some(json!([]))
        } else if self.any_run_overrides {
            Some(Value::Null)
        } else if !self.overridable_variables.is_empty() {
            Some(json!(self.overridable_variables))
        } else {
            None
        }
    }
}

/// Work-pool commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PoolCommand {
    /// Create a work pool.
    Create {
        /// Pool name.
        name: String,
        /// Pool type (`process`, `aws-lambda:push`, `cloud-run-v2:push`).
        #[arg(long = "type", value_name = "TYPE")]
        pool_type: String,
        /// Base job template JSON file (`-` for stdin); default: the type's default template.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Most runs of this pool in flight at once.
        #[arg(long, value_name = "N")]
        concurrency_limit: Option<u32>,
        #[command(flatten)]
        overrides: OverridableArgs,
    },
    /// Change which job variables runs of a pool may override (`overridable_variables`).
    Update {
        /// Pool name.
        name: String,
        #[command(flatten)]
        overrides: OverridableArgs,
    },
    /// List work pools.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one work pool.
    Inspect {
        /// Pool name.
        name: String,
    },
    /// Stop submitting runs of a pool (they wait, SCHEDULED).
    Pause {
        /// Pool name.
        name: String,
    },
    /// Resume submitting runs of a paused pool.
    Resume {
        /// Pool name.
        name: String,
    },
    /// Delete a work pool.
    Delete {
        /// Pool name.
        name: String,
    },
    /// Print the default base job template of a pool type.
    DefaultTemplate {
        /// Pool type.
        #[arg(value_name = "TYPE")]
        pool_type: String,
    },
}

pub(super) async fn pool(
    api: &Api,
    out: OutputFormat,
    command: PoolCommand,
) -> Result<i32, CliError> {
    match command {
        PoolCommand::Create {
            name,
            pool_type,
            template,
            concurrency_limit,
            overrides,
        } => {
            let mut body = json!({"name": name, "type": pool_type});
            if let Some(path) = template {
                body["base_job_template"] = input::read_json_file("--template", &path)?;
            }
            if let Some(limit) = concurrency_limit {
                body["concurrency_limit"] = json!(limit);
            }
            if let Some(list) = overrides.value() {
                body["overridable_variables"] = list;
            }
            create(api, out, "work_pools", &body, pool_details).await?;
        }
        PoolCommand::Update { name, overrides } => {
            let Some(list) = overrides.value() else {
                return Err(CliError::Usage(
                    "nothing to change: give --overridable-variable NAME (repeatable), \
                     --no-run-overrides or --any-run-overrides"
                        .into(),
                ));
            };
            send_and_show(
                api,
                out,
                Method::PATCH,
                api.ws_url(&["work_pools", &name]),
                Some(&json!({ "overridable_variables": list })),
                pool_details,
            )
            .await?;
        }
        PoolCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["work_pools"]), |v| {
                columns_table(v, POOL_COLUMNS)
            })
            .await?;
        }
        PoolCommand::Inspect { name } => {
            get_and_show(api, out, api.ws_url(&["work_pools", &name]), pool_details).await?;
        }
        PoolCommand::Pause { name } => set_paused(api, out, &name, true).await?,
        PoolCommand::Resume { name } => set_paused(api, out, &name, false).await?,
        PoolCommand::Delete { name } => {
            delete(
                api,
                out,
                api.ws_url(&["work_pools", &name]),
                &format!("deleted pool {name}"),
            )
            .await?;
        }
        PoolCommand::DefaultTemplate { pool_type } => {
            let template = api
                .get(api.url(&["pool_types", &pool_type, "default_template"]))
                .await?;
            emit(&pretty(&template));
        }
    }
    Ok(0)
}

/// The columns of `pool ls`.
const POOL_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("TYPE", "type"),
    Column::field("PAUSED", "paused"),
    Column::field("LIMIT", "concurrency_limit"),
    Column::time("CREATED", "created"),
];

async fn set_paused(
    api: &Api,
    out: OutputFormat,
    name: &str,
    paused: bool,
) -> Result<(), CliError> {
    send_and_show(
        api,
        out,
        Method::PATCH,
        api.ws_url(&["work_pools", name]),
        Some(&json!({ "paused": paused })),
        |_| format!("{} pool {name}", if paused { "paused" } else { "resumed" }),
    )
    .await?;
    Ok(())
}

/// What runs of the pool may override: `any`, `none`, or the names.
fn overridable(pool: &Value) -> String {
    match pool.get("overridable_variables").and_then(Value::as_array) {
        None => "any (runs may override every job variable)".into(),
        Some(names) if names.is_empty() => "none".into(),
        Some(names) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| n.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn pool_details(pool: &Value) -> String {
    let mut pairs = vec![
        ("name", field(pool, "name")),
        ("id", field(pool, "id")),
        ("type", field(pool, "type")),
        ("description", field(pool, "description")),
        ("paused", field(pool, "paused")),
        ("concurrency_limit", field(pool, "concurrency_limit")),
        ("overridable_variables", overridable(pool)),
        ("created", time_field(pool, "created")),
        ("updated", time_field(pool, "updated")),
    ];
    if pool.get("aws_external_id").is_some_and(Value::is_string) {
        // The value the role's trust policy must require (docs/providers/aws-lambda.md).
        pairs.push(("aws_external_id", field(pool, "aws_external_id")));
    }
    let mut text = key_values(&pairs);
    if let Some(template) = pool.get("base_job_template").filter(|t| !t.is_null()) {
        text.push_str("\nbase_job_template:\n");
        text.push_str(&pretty(template));
    }
    text
}
