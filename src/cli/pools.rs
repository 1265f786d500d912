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
        } => {
            let mut body = json!({"name": name, "type": pool_type});
            if let Some(path) = template {
                body["base_job_template"] = input::read_json_file("--template", &path)?;
            }
            if let Some(limit) = concurrency_limit {
                body["concurrency_limit"] = json!(limit);
            }
            create(api, out, "work_pools", &body, pool_details).await?;
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

fn pool_details(pool: &Value) -> String {
    let mut pairs = vec![
        ("name", field(pool, "name")),
        ("id", field(pool, "id")),
        ("type", field(pool, "type")),
        ("description", field(pool, "description")),
        ("paused", field(pool, "paused")),
        ("concurrency_limit", field(pool, "concurrency_limit")),
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
