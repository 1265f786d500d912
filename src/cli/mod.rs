//! The client half of the command line: `pool`, `deployment`, `run` and `workspace` commands, and
//! the access-control commands `key`, `service-account`, `user`, `member`, `role` and `audit`,
//! that talk to the pushpool REST API.
//!
//! Exit codes: 0 success; 1 usage or API error (the message is printed on stderr as
//! `error: …`); 2 when `run watch`/`deployment run --watch` sees the run end in a terminal state
//! other than COMPLETED.

mod access;
mod api;
mod input;
mod output;
mod watch;

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use api::{Api, CliError};
use output::{emit, field, items, key_values, pretty, state_label, table, time_field};
use watch::Lines;

/// Options shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the pushpool API.
    #[arg(
        long,
        env = "PUSHPOOL_API_URL",
        default_value = "http://127.0.0.1:4300",
        global = true
    )]
    pub api: String,
    /// API key (else the workspace's key file keys/<WORKSPACE>.key, else owner.key, looked up
    /// in $PUSHPOOL_HOME and then ./.pushpool).
    #[arg(long, env = "PUSHPOOL_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Workspace to work in.
    #[arg(
        long,
        env = "PUSHPOOL_WORKSPACE",
        default_value = "default",
        global = true
    )]
    pub workspace: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: OutputFormat,
}

/// How client commands print what the API answered.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns / key-value lines for people.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// The client commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Work pools: where and how runs are executed.
    Pool(PoolArgs),
    /// Deployments: what to run on a pool, and starting runs of it.
    Deployment(DeploymentArgs),
    /// Flow runs: list, inspect, watch, cancel, logs.
    Run(RunArgs),
    /// Workspaces.
    Workspace(WorkspaceArgs),
    /// API keys: create, list, revoke, rotate.
    Key(access::KeyArgs),
    /// Service accounts: non-human principals with a role and their own keys.
    ServiceAccount(access::ServiceAccountArgs),
    /// Users of this pushpool instance (administrators only).
    User(access::UserArgs),
    /// Members of the workspace and their roles.
    Member(access::MemberArgs),
    /// Roles: built-in ones and custom ones made of permission scopes.
    Role(access::RoleArgs),
    /// The workspace's audit log.
    Audit(access::AuditArgs),
}

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
        /// Run-level job variable override. Repeatable.
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
    },
    /// Delete a deployment.
    Delete {
        /// Deployment name or id.
        name: String,
    },
}

/// `pushpool run …`
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RunCommand,
}

/// Flow-run commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RunCommand {
    /// List runs, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only runs in this state type (e.g. RUNNING, FAILED).
        #[arg(long, value_name = "TYPE")]
        state: Option<String>,
        /// Only runs of this work pool.
        #[arg(long, value_name = "P")]
        pool: Option<String>,
        /// Only runs of this deployment (name or id).
        #[arg(long, value_name = "D")]
        deployment: Option<String>,
        /// At most this many runs (1–1000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show one run and its state history.
    Inspect {
        /// Run id.
        id: String,
    },
    /// Follow a run's state transitions until it ends (exit 0 COMPLETED, 2 otherwise).
    Watch {
        /// Run id.
        id: String,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        id: String,
    },
    /// Print a run's log lines.
    Logs {
        /// Run id.
        id: String,
    },
}

/// `pushpool workspace …`
#[derive(clap::Args, Debug, Clone)]
pub struct WorkspaceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: WorkspaceCommand,
}

/// Workspace commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum WorkspaceCommand {
    /// Create a workspace; its owner key is saved to $PUSHPOOL_HOME/keys/<NAME>.key (else
    /// ./.pushpool/keys/<NAME>.key).
    Create {
        /// Workspace name.
        name: String,
    },
    /// List the workspaces the API key's principal belongs to, with its role (`*`: the key's own).
    #[command(visible_alias = "list")]
    Ls,
}

/// Runs one client command; returns the process exit code (0 ok; 1 usage/API error, message
/// already printed on stderr; 2 for watch ending in a non-COMPLETED terminal state).
pub async fn execute(args: &ClientArgs, command: ClientCommand) -> i32 {
    match run(args, command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run(args: &ClientArgs, command: ClientCommand) -> Result<i32, CliError> {
    let home = std::env::var_os("PUSHPOOL_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let local_home = Path::new(".pushpool");
    let key = input::resolve_api_key(
        args.api_key.as_deref(),
        &args.workspace,
        home.as_deref(),
        local_home,
    )?;
    let api = Api::new(&args.api, key, &args.workspace)?;
    let out = args.output;
    match command {
        ClientCommand::Pool(p) => pool(&api, out, p.command).await,
        ClientCommand::Deployment(d) => deployment(&api, out, d.command).await,
        ClientCommand::Run(r) => flow_run(&api, out, r.command).await,
        ClientCommand::Workspace(w) => {
            let key_home = home.as_deref().unwrap_or(local_home);
            workspace(&api, out, key_home, w.command).await
        }
        ClientCommand::Key(k) => access::key(&api, out, k.command).await,
        ClientCommand::ServiceAccount(s) => access::service_account(&api, out, s.command).await,
        ClientCommand::User(u) => access::user(&api, out, u.command).await,
        ClientCommand::Member(m) => access::member(&api, out, m.command).await,
        ClientCommand::Role(r) => access::role(&api, out, r.command).await,
        ClientCommand::Audit(a) => access::audit(&api, out, a.command).await,
    }
}

/// Prints `value` as JSON, or as `render(value)` in table mode.
fn show(out: OutputFormat, value: &Value, render: impl FnOnce(&Value) -> String) {
    match out {
        OutputFormat::Json => emit(&pretty(value)),
        OutputFormat::Table => emit(&render(value)),
    }
}

async fn pool(api: &Api, out: OutputFormat, command: PoolCommand) -> Result<i32, CliError> {
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
            let pool = api
                .send(Method::POST, api.ws_url(&["work_pools"]), Some(&body))
                .await?
                .body;
            show(out, &pool, pool_details);
        }
        PoolCommand::Ls => {
            let pools = api.get(api.ws_url(&["work_pools"])).await?;
            show(out, &pools, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|p| {
                        vec![
                            field(p, "name"),
                            field(p, "type"),
                            field(p, "paused"),
                            field(p, "concurrency_limit"),
                            time_field(p, "created"),
                        ]
                    })
                    .collect();
                table(&["NAME", "TYPE", "PAUSED", "LIMIT", "CREATED"], &rows)
            });
        }
        PoolCommand::Inspect { name } => {
            let pool = api.get(api.ws_url(&["work_pools", &name])).await?;
            show(out, &pool, pool_details);
        }
        PoolCommand::Pause { name } => set_paused(api, out, &name, true).await?,
        PoolCommand::Resume { name } => set_paused(api, out, &name, false).await?,
        PoolCommand::Delete { name } => {
            api.send(Method::DELETE, api.ws_url(&["work_pools", &name]), None)
                .await?;
            if out == OutputFormat::Table {
                emit(&format!("deleted pool {name}"));
            }
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

async fn set_paused(
    api: &Api,
    out: OutputFormat,
    name: &str,
    paused: bool,
) -> Result<(), CliError> {
    let pool = api
        .send(
            Method::PATCH,
            api.ws_url(&["work_pools", name]),
            Some(&json!({ "paused": paused })),
        )
        .await?
        .body;
    show(out, &pool, |_| {
        format!("{} pool {name}", if paused { "paused" } else { "resumed" })
    });
    Ok(())
}

fn pool_details(pool: &Value) -> String {
    let mut text = key_values(&[
        ("name", field(pool, "name")),
        ("id", field(pool, "id")),
        ("type", field(pool, "type")),
        ("description", field(pool, "description")),
        ("paused", field(pool, "paused")),
        ("concurrency_limit", field(pool, "concurrency_limit")),
        ("created", time_field(pool, "created")),
        ("updated", time_field(pool, "updated")),
    ]);
    if let Some(template) = pool.get("base_job_template").filter(|t| !t.is_null()) {
        text.push_str("\nbase_job_template:\n");
        text.push_str(&pretty(template));
    }
    text
}

async fn deployment(
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
            let deployment = api
                .send(Method::POST, api.ws_url(&["deployments"]), Some(&body))
                .await?
                .body;
            show(out, &deployment, deployment_details);
        }
        DeploymentCommand::Ls => {
            let deployments = api.get(api.ws_url(&["deployments"])).await?;
            show(out, &deployments, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|d| {
                        vec![
                            field(d, "name"),
                            field(d, "work_pool"),
                            field(d, "work_queue"),
                            field(d, "paused"),
                            field(d, "concurrency_limit"),
                            time_field(d, "created"),
                        ]
                    })
                    .collect();
                table(
                    &["NAME", "POOL", "QUEUE", "PAUSED", "LIMIT", "CREATED"],
                    &rows,
                )
            });
        }
        DeploymentCommand::Inspect { name } => {
            let deployment = api.get(api.ws_url(&["deployments", &name])).await?;
            show(out, &deployment, deployment_details);
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
        } => {
            let mut body = Map::new();
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
            api.send(Method::DELETE, api.ws_url(&["deployments", &name]), None)
                .await?;
            if out == OutputFormat::Table {
                emit(&format!("deleted deployment {name}"));
            }
        }
    }
    Ok(0)
}

fn deployment_details(deployment: &Value) -> String {
    key_values(&[
        ("name", field(deployment, "name")),
        ("id", field(deployment, "id")),
        ("work_pool", field(deployment, "work_pool")),
        ("work_queue", field(deployment, "work_queue")),
        ("paused", field(deployment, "paused")),
        ("concurrency_limit", field(deployment, "concurrency_limit")),
        ("job_variables", field(deployment, "job_variables")),
        ("parameters", field(deployment, "parameters")),
        ("created", time_field(deployment, "created")),
        ("updated", time_field(deployment, "updated")),
    ])
}

/// The short view of a run: what `deployment run` and `run cancel` print.
fn run_summary(run: &Value) -> String {
    let state = run.get("state").unwrap_or(&Value::Null);
    key_values(&[
        ("id", field(run, "id")),
        ("deployment", field(run, "deployment")),
        ("work_pool", field(run, "work_pool")),
        ("state", state_label(state)),
        ("message", field(state, "message")),
        ("scheduled", time_field(run, "scheduled_time")),
        ("attempt", field(run, "attempt")),
    ])
}

fn run_details(run: &Value) -> String {
    let state = run.get("state").unwrap_or(&Value::Null);
    let mut text = key_values(&[
        ("id", field(run, "id")),
        ("deployment", field(run, "deployment")),
        ("deployment_id", field(run, "deployment_id")),
        ("work_pool", field(run, "work_pool")),
        ("work_queue", field(run, "work_queue")),
        ("state", state_label(state)),
        ("message", field(state, "message")),
        ("state_since", time_field(state, "timestamp")),
        ("scheduled", time_field(run, "scheduled_time")),
        ("attempt", field(run, "attempt")),
        ("infrastructure_id", field(run, "infrastructure_id")),
        ("idempotency_key", field(run, "idempotency_key")),
        ("lease_owner", field(run, "lease_owner")),
        ("lease_expires", time_field(run, "lease_expires")),
        ("last_heartbeat", time_field(run, "last_heartbeat")),
        ("parameters", field(run, "parameters")),
        ("job_variables", field(run, "job_variables")),
        ("created", time_field(run, "created")),
        ("updated", time_field(run, "updated")),
    ]);
    if let Some(history) = run.get("state_history") {
        let rows: Vec<Vec<String>> = items(history)
            .iter()
            .map(|h| {
                vec![
                    time_field(h, "timestamp"),
                    field(h, "type"),
                    field(h, "name"),
                    field(h, "message"),
                ]
            })
            .collect();
        text.push_str("\n\n");
        text.push_str(&table(&["TIME", "TYPE", "NAME", "MESSAGE"], &rows));
    }
    text
}

async fn flow_run(api: &Api, out: OutputFormat, command: RunCommand) -> Result<i32, CliError> {
    match command {
        RunCommand::Ls {
            state,
            pool,
            deployment,
            limit,
        } => {
            let mut url = api.ws_url(&["flow_runs"]);
            {
                let mut query = url.query_pairs_mut();
                if let Some(state) = state {
                    query.append_pair("state", &state.trim().to_ascii_uppercase());
                }
                if let Some(pool) = pool {
                    query.append_pair("work_pool", &pool);
                }
                if let Some(deployment) = deployment {
                    query.append_pair("deployment", &deployment);
                }
                if let Some(limit) = limit {
                    query.append_pair("limit", &limit.to_string());
                }
            }
            if url.query() == Some("") {
                url.set_query(None);
            }
            let runs = api.get(url).await?;
            show(out, &runs, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|r| {
                        vec![
                            field(r, "id"),
                            field(r, "deployment"),
                            field(r, "work_pool"),
                            state_label(r.get("state").unwrap_or(&Value::Null)),
                            time_field(r, "scheduled_time"),
                            field(r, "attempt"),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "DEPLOYMENT", "POOL", "STATE", "SCHEDULED", "ATTEMPT"],
                    &rows,
                )
            });
        }
        RunCommand::Inspect { id } => {
            let run = api.get(api.ws_url(&["flow_runs", &id])).await?;
            show(out, &run, run_details);
        }
        RunCommand::Watch { id } => {
            let lines = match out {
                OutputFormat::Table => Lines::Stdout,
                OutputFormat::Json => Lines::StderrThenJson,
            };
            return Ok(watch::watch(api, &id, lines).await);
        }
        RunCommand::Cancel { id } => {
            let run = api
                .send(
                    Method::POST,
                    api.ws_url(&["flow_runs", &id, "cancel"]),
                    None,
                )
                .await?
                .body;
            show(out, &run, run_summary);
        }
        RunCommand::Logs { id } => {
            let logs = api.get(api.ws_url(&["flow_runs", &id, "logs"])).await?;
            show(out, &logs, |v| {
                items(v)
                    .iter()
                    .map(|l| {
                        l.get("line")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(0)
}

async fn workspace(
    api: &Api,
    out: OutputFormat,
    key_home: &Path,
    command: WorkspaceCommand,
) -> Result<i32, CliError> {
    match command {
        WorkspaceCommand::Create { name } => {
            let workspace = api
                .send(
                    Method::POST,
                    api.url(&["workspaces"]),
                    Some(&json!({ "name": name })),
                )
                .await?
                .body;
            show(out, &workspace, |w| {
                key_values(&[
                    ("name", field(w, "name")),
                    ("id", field(w, "id")),
                    ("role", field(w, "role")),
                    ("created", time_field(w, "created")),
                ])
            });
            let secret = workspace
                .get("api_key")
                .and_then(|k| k.get("key"))
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty());
            let Some(secret) = secret else {
                eprintln!("warning: the API sent no owner key for the new workspace");
                return Ok(0);
            };
            let ws_name = workspace
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&name);
            save_owner_key(out, key_home, ws_name, secret);
        }
        WorkspaceCommand::Ls => {
            let workspaces = api.get(api.url(&["workspaces"])).await?;
            show(out, &workspaces, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|w| {
                        let current = w.get("current").and_then(Value::as_bool) == Some(true);
                        vec![
                            if current { "*" } else { "" }.to_string(),
                            field(w, "name"),
                            field(w, "role"),
                            field(w, "id"),
                            time_field(w, "created"),
                        ]
                    })
                    .collect();
                table(&["CURRENT", "NAME", "ROLE", "ID", "CREATED"], &rows)
            });
        }
    }
    Ok(0)
}

/// Saves a new workspace's owner key under `key_home/keys/` and says where. When it cannot be
/// saved (a file is already there, or writing fails) the key is printed instead, once, so it is
/// not lost. With `-o json` the key is already in the JSON on stdout and notes go to stderr.
fn save_owner_key(out: OutputFormat, key_home: &Path, workspace: &str, secret: &str) {
    let note = |text: &str| match out {
        OutputFormat::Table => emit(text),
        OutputFormat::Json => eprintln!("{text}"),
    };
    let problem = match input::save_key_file(key_home, workspace, secret) {
        Ok(input::Saved::Written(path)) => {
            note(&format!(
                "\nThe owner API key of `{workspace}` was saved to {} (mode 0600); the CLI uses \
                 it with --workspace {workspace}. It cannot be retrieved again.",
                path.display()
            ));
            return;
        }
        Ok(input::Saved::Exists(path)) => format!(
            "note: {} already exists and was left alone; the new owner key was not saved",
            path.display()
        ),
        Err(e) => format!("warning: the new owner key was not saved: {e}"),
    };
    eprintln!("{problem}");
    if out == OutputFormat::Table {
        emit(&format!(
            "\nThe owner API key of `{workspace}` is shown once and cannot be retrieved again; \
             store it now:\n{secret}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    /// The way `src/main.rs` embeds the client: flattened args and flattened subcommands.
    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TestCommand {
        /// A server command.
        Up,
        #[command(flatten)]
        Client(ClientCommand),
    }

    #[test]
    fn the_command_line_is_well_formed() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere_and_vars_repeat() {
        let cli = TestCli::try_parse_from([
            "pushpool",
            "deployment",
            "run",
            "etl",
            "--var",
            "image=python:3.12",
            "--var",
            "env.FOO=bar",
            "-o",
            "json",
            "--workspace",
            "team",
            "--watch",
        ])
        .unwrap();
        assert_eq!(cli.client.output, OutputFormat::Json);
        assert_eq!(cli.client.workspace, "team");
        match cli.command {
            TestCommand::Client(ClientCommand::Deployment(DeploymentArgs {
                command:
                    DeploymentCommand::Run {
                        name, vars, watch, ..
                    },
            })) => {
                assert_eq!(name, "etl");
                assert_eq!(vars, ["image=python:3.12", "env.FOO=bar"]);
                assert!(watch);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = TestCli::try_parse_from([
            "pushpool",
            "pool",
            "create",
            "p",
            "--type",
            "process",
            "--concurrency-limit",
            "3",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            TestCommand::Client(ClientCommand::Pool(PoolArgs {
                command: PoolCommand::Create {
                    concurrency_limit: Some(3),
                    ..
                }
            }))
        ));
        assert!(
            TestCli::try_parse_from(["pushpool", "pool", "default-template", "process"]).is_ok()
        );
        assert!(TestCli::try_parse_from([
            "pushpool", "run", "ls", "--state", "FAILED", "--limit", "5"
        ])
        .is_ok());
        assert!(TestCli::try_parse_from(["pushpool", "workspace", "ls"]).is_ok());
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        let cli = TestCli::try_parse_from(std::iter::once("pushpool").chain(args.iter().copied()))?;
        match cli.command {
            TestCommand::Client(command) => Ok(command),
            TestCommand::Up => panic!("parsed as `up`"),
        }
    }

    #[test]
    fn key_commands_parse() {
        use access::{KeyArgs, KeyCommand};
        match parse(&[
            "key",
            "create",
            "ci",
            "--role",
            "viewer",
            "--service-account",
            "deployer",
            "--expires-in",
            "30d",
        ])
        .unwrap()
        {
            ClientCommand::Key(KeyArgs {
                command:
                    KeyCommand::Create {
                        name,
                        role,
                        service_account,
                        user,
                        expires_at,
                        expires_in,
                    },
            }) => {
                assert_eq!(name, "ci");
                assert_eq!(role.as_deref(), Some("viewer"));
                assert_eq!(service_account.as_deref(), Some("deployer"));
                assert_eq!(user, None);
                assert_eq!(expires_at, None);
                assert_eq!(expires_in.as_deref(), Some("30d"));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            parse(&[
                "key",
                "create",
                "mine",
                "--user",
                "alice",
                "--expires-at",
                "2030-01-01T00:00:00Z"
            ])
            .unwrap(),
            ClientCommand::Key(KeyArgs {
                command: KeyCommand::Create {
                    user: Some(_),
                    expires_at: Some(_),
                    ..
                }
            })
        ));
        // One principal and one expiry at most; a name is required.
        assert!(parse(&[
            "key",
            "create",
            "k",
            "--user",
            "a",
            "--service-account",
            "b"
        ])
        .is_err());
        assert!(parse(&[
            "key",
            "create",
            "k",
            "--expires-at",
            "2030-01-01T00:00:00Z",
            "--expires-in",
            "1d"
        ])
        .is_err());
        assert!(parse(&["key", "create"]).is_err());
        assert!(matches!(
            parse(&["key", "ls", "-o", "json"]).unwrap(),
            ClientCommand::Key(KeyArgs {
                command: KeyCommand::Ls
            })
        ));
        assert!(matches!(
            parse(&["key", "revoke", "0190"]).unwrap(),
            ClientCommand::Key(KeyArgs {
                command: KeyCommand::Revoke { .. }
            })
        ));
        assert!(matches!(
            parse(&["key", "rotate", "0190", "--grace-seconds", "60"]).unwrap(),
            ClientCommand::Key(KeyArgs {
                command: KeyCommand::Rotate {
                    grace_seconds: Some(60),
                    ..
                }
            })
        ));
        assert!(parse(&["key", "rotate", "0190", "--grace-seconds", "-1"]).is_err());
    }

    #[test]
    fn service_account_commands_parse() {
        use access::{ServiceAccountArgs, ServiceAccountCommand};
        match parse(&[
            "service-account",
            "create",
            "deployer",
            "--role",
            "operator",
        ])
        .unwrap()
        {
            ClientCommand::ServiceAccount(ServiceAccountArgs {
                command: ServiceAccountCommand::Create { name, role },
            }) => assert_eq!((name.as_str(), role.as_str()), ("deployer", "operator")),
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["service-account", "create", "deployer"]).is_err());
        assert!(parse(&["service-account", "ls"]).is_ok());
        match parse(&["service-account", "set-role", "deployer", "viewer"]).unwrap() {
            ClientCommand::ServiceAccount(ServiceAccountArgs {
                command: ServiceAccountCommand::SetRole { id_or_name, role },
            }) => assert_eq!((id_or_name.as_str(), role.as_str()), ("deployer", "viewer")),
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            parse(&["service-account", "delete", "deployer"]).unwrap(),
            ClientCommand::ServiceAccount(ServiceAccountArgs {
                command: ServiceAccountCommand::Delete { .. }
            })
        ));
    }

    #[test]
    fn user_member_and_role_commands_parse() {
        use access::{MemberArgs, MemberCommand, RoleArgs, RoleCommand, UserArgs, UserCommand};
        assert!(matches!(
            parse(&["user", "create", "alice", "--admin"]).unwrap(),
            ClientCommand::User(UserArgs {
                command: UserCommand::Create { admin: true, .. }
            })
        ));
        assert!(matches!(
            parse(&["user", "create", "bob"]).unwrap(),
            ClientCommand::User(UserArgs {
                command: UserCommand::Create { admin: false, .. }
            })
        ));
        assert!(parse(&["user", "ls"]).is_ok());
        match parse(&["member", "add", "alice", "--role", "viewer"]).unwrap() {
            ClientCommand::Member(MemberArgs {
                command: MemberCommand::Add { user, role },
            }) => assert_eq!((user.as_str(), role.as_str()), ("alice", "viewer")),
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["member", "add", "alice"]).is_err());
        assert!(parse(&["member", "ls"]).is_ok());
        assert!(matches!(
            parse(&["member", "set-role", "alice", "operator"]).unwrap(),
            ClientCommand::Member(MemberArgs {
                command: MemberCommand::SetRole { .. }
            })
        ));
        assert!(matches!(
            parse(&["member", "remove", "alice"]).unwrap(),
            ClientCommand::Member(MemberArgs {
                command: MemberCommand::Remove { .. }
            })
        ));
        match parse(&[
            "role",
            "create",
            "reader",
            "--scope",
            "runs:read",
            "--scope",
            "pools:read",
            "--description",
            "reads",
        ])
        .unwrap()
        {
            ClientCommand::Role(RoleArgs {
                command:
                    RoleCommand::Create {
                        name,
                        scopes,
                        description,
                    },
            }) => {
                assert_eq!(name, "reader");
                assert_eq!(scopes, ["runs:read", "pools:read"]);
                assert_eq!(description.as_deref(), Some("reads"));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["role", "create", "empty"]).is_err());
        assert!(parse(&["role", "ls"]).is_ok());
        assert!(parse(&["role", "delete", "reader"]).is_ok());
    }

    #[test]
    fn audit_and_workspace_commands_parse() {
        use access::{AuditArgs, AuditCommand};
        match parse(&[
            "audit",
            "ls",
            "--actor",
            "admin",
            "--action",
            "api_key.create",
            "--outcome",
            "denied",
            "--since",
            "2030-01-01T00:00:00Z",
            "--limit",
            "20",
        ])
        .unwrap()
        {
            ClientCommand::Audit(AuditArgs {
                command:
                    AuditCommand::Ls {
                        actor,
                        action,
                        outcome,
                        since,
                        limit,
                        cursor,
                    },
            }) => {
                assert_eq!(actor.as_deref(), Some("admin"));
                assert_eq!(action.as_deref(), Some("api_key.create"));
                assert_eq!(outcome.as_deref(), Some("denied"));
                assert_eq!(since.as_deref(), Some("2030-01-01T00:00:00Z"));
                assert_eq!(limit, Some(20));
                assert_eq!(cursor, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["audit", "ls", "--limit", "many"]).is_err());
        assert!(matches!(
            parse(&["workspace", "create", "team"]).unwrap(),
            ClientCommand::Workspace(WorkspaceArgs {
                command: WorkspaceCommand::Create { .. }
            })
        ));
    }
}
