//! `pushpool deployment …`: deployments, previews of their job configuration, and runs of them.

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{columns_table, emit, field, key_values, pretty, time_field, Column};
use super::retries::RetryFlags;
use super::runs::run_summary;
use super::watch::{self, Lines};
use super::{create, delete, get_and_show, show, OutputFormat};

/// `pushpool deployment …`
#[derive(clap::Args, Debug, Clone)]
pub struct DeploymentArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DeploymentCommand,
}

/// Deployment commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DeploymentCommand {
    /// Create a deployment.
    Create {
        /// Deployment name.
        name: String,
        /// Work pool to run on.
        #[arg(long, value_name = "POOL")]
        pool: String,
        /// Work queue of the pool (default: the pool's default queue).
        #[arg(long, value_name = "Q")]
        queue: Option<String>,
        /// Job variable (VALUE is JSON, else a plain string; dotted keys allowed). Repeatable.
        #[arg(long = "var", value_name = "KEY=JSON")]
        vars: Vec<String>,
        /// The job's command (shorthand for --var command="CMD").
        #[arg(long, value_name = "CMD")]
        command: Option<String>,
        /// Flow parameter (VALUE is JSON, else a plain string). Repeatable.
        #[arg(long = "param", value_name = "KEY=JSON")]
        params: Vec<String>,
        /// Most runs of this deployment in flight at once.
        #[arg(long, value_name = "N")]
        concurrency_limit: Option<u32>,
        /// Retries and tags (issue 13).
        #[command(flatten)]
        retry: Box<RetryFlags>,
        /// A schedule to add with it (issue 13).
        #[command(flatten)]
        schedule: Box<super::schedules::ScheduleFlags>,
    },
    /// List deployments.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one deployment.
    Inspect {
        /// Deployment name or id.
        name: String,
    },
    /// Print the job configuration a run would get (rendered and validated; creates nothing).
    Preview {
        /// Deployment name or id.
        name: String,
        /// Run-level job variable override. Repeatable.
        #[arg(long = "var", value_name = "KEY=JSON")]
        vars: Vec<String>,
    },
    /// Start a run of a deployment.
    Run {
        /// Deployment name or id.
        name: String,
        /// When the run is due (RFC 3339); default now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Run-level job variable override (needs the `runs:override` scope; the pool's
        /// `overridable_variables` may limit which). Repeatable.
        #[arg(long = "var", value_name = "KEY=JSON")]
        vars: Vec<String>,
        /// Flow parameter. Repeatable.
        #[arg(long = "param", value_name = "KEY=JSON")]
        params: Vec<String>,
        /// Idempotency key: repeating it returns the same run instead of a new one.
        #[arg(long, value_name = "K")]
        idempotency_key: Option<String>,
        /// Watch the run until it ends (exit 0 COMPLETED, 2 otherwise).
        #[arg(long)]
        watch: bool,
        /// Retries (replacing the deployment's) and tags (besides its own).
        #[command(flatten)]
        retry: Box<RetryFlags>,
    },
    /// Delete a deployment.
    Delete {
        /// Deployment name or id.
        name: String,
    },

    // Schedules (issue 13).
    /// A deployment's schedules: add, ls, pause, resume, delete.
    #[command(subcommand)]
    Schedule(super::schedules::ScheduleCommand),
    /// The next slot times of a deployment's active schedules.
    Upcoming {
        /// Deployment name or id.
        name: String,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Create the runs of a past range's slots (idempotent with the scheduler's own).
    Backfill {
        /// Deployment name or id.
        name: String,
        /// Start of the range (RFC 3339, inclusive).
        #[arg(long, value_name = "RFC3339")]
        from: String,
        /// End of the range (RFC 3339, inclusive).
        #[arg(long, value_name = "RFC3339")]
        to: String,
        /// Only this schedule (default: all of the deployment's).
        #[arg(long, value_name = "ID")]
        schedule: Option<String>,
    },
}

pub(super) async fn deployment(
    api: &Api,
    out: OutputFormat,
    command: DeploymentCommand,
) -> Result<i32, CliError> {
    match command {
        DeploymentCommand::Create {
            name,
            pool,
            queue,
            vars,
            command,
            params,
            concurrency_limit,
            retry,
            schedule,
        } => {
            let mut job_variables = input::parse_assignments("--var", &vars)?;
            if let Some(command) = command {
                job_variables.insert("command".to_string(), Value::String(command));
            }
            let parameters = input::parse_assignments("--param", &params)?;
            let mut body = json!({"name": name, "work_pool": pool});
            if let Some(queue) = queue {
                body["work_queue"] = json!(queue);
            }
            if !job_variables.is_empty() {
                body["job_variables"] = Value::Object(job_variables);
            }
            if !parameters.is_empty() {
                body["parameters"] = Value::Object(parameters);
            }
            if let Some(limit) = concurrency_limit {
                body["concurrency_limit"] = json!(limit);
            }
            if let Value::Object(fields) = &mut body {
                retry.write_into(fields)?;
            }
            if let Some(s) = schedule.body()? {
                body["schedules"] = json!([s]);
            }
            create(api, out, "deployments", &body, deployment_details).await?;
        }
        DeploymentCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["deployments"]), |v| {
                columns_table(v, DEPLOYMENT_COLUMNS)
            })
            .await?;
        }
        DeploymentCommand::Inspect { name } => {
            super::schedules::inspect(api, out, &name, deployment_details).await?;
        }
        DeploymentCommand::Preview { name, vars } => {
            let job_variables = input::parse_assignments("--var", &vars)?;
            let body = if job_variables.is_empty() {
                json!({})
            } else {
                json!({ "job_variables": job_variables })
            };
            let answer = api
                .send(
                    Method::POST,
                    api.ws_url(&["deployments", &name, "preview"]),
                    Some(&body),
                )
                .await?
                .body;
            // Pretty for a person at a terminal; one compact line for scripts and pipes.
            let config = answer.get("job_configuration").unwrap_or(&Value::Null);
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                emit(&pretty(config));
            } else {
                emit(&config.to_string());
            }
            // The variables rendered fine; the provider's objection is a warning (a run would be
            // refused with this message), not a failure of the preview itself.
            if let Some(problem) = answer.get("provider_error").filter(|p| !p.is_null()) {
                let message = problem
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider cannot use this job configuration");
                match problem.get("field").and_then(Value::as_str) {
                    Some(f) => eprintln!("warning: {message} (field: {f}); a run would be refused"),
                    None => eprintln!("warning: {message}; a run would be refused"),
                }
            }
        }
        DeploymentCommand::Run {
            name,
            at,
            vars,
            params,
            idempotency_key,
            watch,
            retry,
        } => {
            let mut body = Map::new();
            retry.write_into(&mut body)?;
            if let Some(at) = at {
                body.insert("scheduled_time".into(), json!(input::parse_at(&at)?));
            }
            let parameters = input::parse_assignments("--param", &params)?;
            if !parameters.is_empty() {
                body.insert("parameters".into(), Value::Object(parameters));
            }
            let job_variables = input::parse_assignments("--var", &vars)?;
            if !job_variables.is_empty() {
                body.insert("job_variables".into(), Value::Object(job_variables));
            }
            if let Some(key) = idempotency_key {
                body.insert("idempotency_key".into(), json!(key));
            }
            let answer = api
                .send(
                    Method::POST,
                    api.ws_url(&["deployments", &name, "runs"]),
                    Some(&Value::Object(body)),
                )
                .await?;
            let run = answer.body;
            let id = run
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| CliError::Response("the API's run has no `id`".into()))?
                .to_string();
            if answer.status == StatusCode::OK {
                eprintln!("note: a run with this idempotency key already exists; showing it");
            }
            if !watch {
                show(out, &run, run_summary);
                return Ok(0);
            }
            return Ok(match out {
                OutputFormat::Table => {
                    emit(&run_summary(&run));
                    emit("");
                    watch::watch(api, &id, Lines::Stdout).await
                }
                OutputFormat::Json => watch::watch(api, &id, Lines::StderrThenJson).await,
            });
        }
        DeploymentCommand::Delete { name } => {
            delete(
                api,
                out,
                api.ws_url(&["deployments", &name]),
                &format!("deleted deployment {name}"),
            )
            .await?;
        }
        DeploymentCommand::Schedule(command) => {
            super::schedules::schedule(api, out, command).await?;
        }
        DeploymentCommand::Upcoming { name, limit } => {
            super::schedules::upcoming(api, out, &name, limit).await?;
        }
        DeploymentCommand::Backfill {
            name,
            from,
            to,
            schedule,
        } => {
            super::schedules::backfill(api, out, &name, &from, &to, schedule).await?;
        }
    }
    Ok(0)
}

/// The columns of `deployment ls`.
const DEPLOYMENT_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("POOL", "work_pool"),
    Column::field("QUEUE", "work_queue"),
    Column::field("PAUSED", "paused"),
    Column::field("LIMIT", "concurrency_limit"),
    Column::time("CREATED", "created"),
];

fn deployment_details(deployment: &Value) -> String {
    key_values(&[
        ("name", field(deployment, "name")),
        ("id", field(deployment, "id")),
        ("work_pool", field(deployment, "work_pool")),
        ("work_queue", field(deployment, "work_queue")),
        ("paused", field(deployment, "paused")),
        ("concurrency_limit", field(deployment, "concurrency_limit")),
        ("retries", field(deployment, "retries")),
        (
            "retry_delay_seconds",
            field(deployment, "retry_delay_seconds"),
        ),
        (
            "retry_jitter_factor",
            field(deployment, "retry_jitter_factor"),
        ),
        ("retry_on", field(deployment, "retry_on")),
        ("tags", field(deployment, "tags")),
        ("job_variables", field(deployment, "job_variables")),
        ("parameters", field(deployment, "parameters")),
        ("created", time_field(deployment, "created")),
        ("updated", time_field(deployment, "updated")),
    ])
}
