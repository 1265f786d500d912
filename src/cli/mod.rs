//! The client half of the command line: `pool`, `deployment`, `run` and `workspace` commands, and
//! the access-control commands `key`, `service-account`, `user`, `member`, `role` and `audit`,
//! and `events`, that talk to the pushpool REST API.
//!
//! Exit codes: 0 success; 1 usage or API error (the message is printed on stderr as
//! `error: …`); 2 when `run watch`/`deployment run --watch` sees the run end in a terminal state
//! other than COMPLETED.

mod access;
mod api;
mod deployments;
mod events;
mod input;
mod notify;
mod output;
mod pools;
pub mod prefect;
mod retries;
mod runs;
mod schedules;
#[cfg(test)]
mod tests;
mod watch;
mod workspaces;

use std::path::{Path, PathBuf};

use reqwest::{Method, Url};
use serde_json::Value;

use api::{Api, CliError};
use output::{emit, pretty};

pub use deployments::DeploymentArgs;
pub use pools::PoolArgs;
pub use runs::RunArgs;
pub use workspaces::WorkspaceArgs;

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
    /// The workspace's events: list them, or follow them live.
    Events(events::EventsArgs),
    /// Notification channels: signed webhooks, Slack, email; test them, see deliveries.
    Channel(notify::ChannelArgs),
    /// Inbound webhooks: `POST /hooks/{slug}` turns a JSON body into an event.
    Hook(notify::HookArgs),
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
        ClientCommand::Pool(p) => pools::pool(&api, out, p.command).await,
        ClientCommand::Deployment(d) => deployments::deployment(&api, out, d.command).await,
        ClientCommand::Run(r) => runs::flow_run(&api, out, r.command).await,
        ClientCommand::Workspace(w) => {
            let key_home = home.as_deref().unwrap_or(local_home);
            workspaces::workspace(&api, out, key_home, w.command).await
        }
        ClientCommand::Key(k) => access::key(&api, out, k.command).await,
        ClientCommand::ServiceAccount(s) => access::service_account(&api, out, s.command).await,
        ClientCommand::User(u) => access::user(&api, out, u.command).await,
        ClientCommand::Member(m) => access::member(&api, out, m.command).await,
        ClientCommand::Role(r) => access::role(&api, out, r.command).await,
        ClientCommand::Audit(a) => access::audit(&api, out, a.command).await,
        ClientCommand::Events(e) => events::events(&api, out, e.command).await,
        ClientCommand::Channel(c) => notify::channel(&api, out, c.command).await,
        ClientCommand::Hook(h) => notify::hook(&api, out, h.command).await,
    }
}

/// Prints `value` as JSON, or as `render(value)` in table mode.
fn show(out: OutputFormat, value: &Value, render: impl FnOnce(&Value) -> String) {
    match out {
        OutputFormat::Json => emit(&pretty(value)),
        OutputFormat::Table => emit(&render(value)),
    }
}

/// DELETEs `url`; in table mode then prints `done` (e.g. `deleted pool etl`).
async fn delete(api: &Api, out: OutputFormat, url: Url, done: &str) -> Result<(), CliError> {
    api.send(Method::DELETE, url, None).await?;
    if out == OutputFormat::Table {
        emit(done);
    }
    Ok(())
}

/// Sends `method url` with `body`, shows the answer (JSON, or `render` of it in table mode) and
/// hands it back.
async fn send_and_show(
    api: &Api,
    out: OutputFormat,
    method: Method,
    url: Url,
    body: Option<&Value>,
    render: impl FnOnce(&Value) -> String,
) -> Result<Value, CliError> {
    let answer = api.send(method, url, body).await?.body;
    show(out, &answer, render);
    Ok(answer)
}

/// POSTs `body` to the workspace's `collection` and shows what was created (JSON, or `render`
/// of it in table mode).
async fn create(
    api: &Api,
    out: OutputFormat,
    collection: &str,
    body: &Value,
    render: impl FnOnce(&Value) -> String,
) -> Result<Value, CliError> {
    let url = api.ws_url(&[collection]);
    send_and_show(api, out, Method::POST, url, Some(body), render).await
}

/// GETs `url` and shows the answer (JSON, or `render` of it in table mode).
async fn get_and_show(
    api: &Api,
    out: OutputFormat,
    url: Url,
    render: impl FnOnce(&Value) -> String,
) -> Result<Value, CliError> {
    send_and_show(api, out, Method::GET, url, None, render).await
}
