//! `pushpool run …`: flow runs.

use reqwest::Method;
use serde_json::Value;

use super::api::{Api, CliError};
use super::input;
use super::output::{field, items, key_values, list_table, state_label, terminal_safe, time_field};
use super::watch::{self, Lines};
use super::{get_and_show, send_and_show, OutputFormat};

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
        /// Only runs in these state types (e.g. RUNNING, or FAILED,CRASHED). Repeatable.
        #[arg(long, value_name = "TYPE")]
        state: Vec<String>,
        /// Only runs with this tag. Repeatable (runs with every one).
        #[arg(long, value_name = "T")]
        tag: Vec<String>,
        /// Only runs scheduled at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only runs scheduled before this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
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
        /// Keep printing new lines while the run is active (and its last lines after it ends).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// The short view of a run: what `deployment run` and `run cancel` print.
pub(super) fn run_summary(run: &Value) -> String {
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
        ("retries", field(run, "retries")),
        ("tags", field(run, "tags")),
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
    if let Some(summary) = error_summary_text(run) {
        text.push_str("\n\n");
        text.push_str(&summary);
    }
    if let Some(history) = run.get("state_history") {
        text.push_str("\n\n");
        text.push_str(&list_table(
            history,
            &["TIME", "TYPE", "NAME", "MESSAGE"],
            |h| {
                vec![
                    time_field(h, "timestamp"),
                    field(h, "type"),
                    field(h, "name"),
                    field(h, "message"),
                ]
            },
        ));
    }
    text
}

pub(super) async fn flow_run(
    api: &Api,
    out: OutputFormat,
    command: RunCommand,
) -> Result<i32, CliError> {
    match command {
        RunCommand::Ls {
            state,
            tag,
            since,
            until,
            pool,
            deployment,
            limit,
        } => {
            let since = since
                .map(|t| input::parse_time("--since", &t))
                .transpose()?;
            let until = until
                .map(|t| input::parse_time("--until", &t))
                .transpose()?;
            let mut url = api.ws_url(&["flow_runs"]);
            {
                let mut query = url.query_pairs_mut();
                for state in state {
                    query.append_pair("state", &state.trim().to_ascii_uppercase());
                }
                for tag in tag {
                    query.append_pair("tag", &tag);
                }
                if let Some(since) = since {
                    query.append_pair("since", &since);
                }
                if let Some(until) = until {
                    query.append_pair("until", &until);
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
            get_and_show(api, out, url, |v| {
                list_table(
                    v,
                    &["ID", "DEPLOYMENT", "POOL", "STATE", "SCHEDULED", "ATTEMPT"],
                    |r| {
                        vec![
                            field(r, "id"),
                            field(r, "deployment"),
                            field(r, "work_pool"),
                            state_label(r.get("state").unwrap_or(&Value::Null)),
                            time_field(r, "scheduled_time"),
                            field(r, "attempt"),
                        ]
                    },
                )
            })
            .await?;
        }
        RunCommand::Inspect { id } => {
            get_and_show(api, out, api.ws_url(&["flow_runs", &id]), run_details).await?;
        }
        RunCommand::Watch { id } => {
            let lines = match out {
                OutputFormat::Table => Lines::Stdout,
                OutputFormat::Json => Lines::StderrThenJson,
            };
            return Ok(watch::watch(api, &id, lines).await);
        }
        RunCommand::Cancel { id } => {
            send_and_show(
                api,
                out,
                Method::POST,
                api.ws_url(&["flow_runs", &id, "cancel"]),
                None,
                run_summary,
            )
            .await?;
        }
        RunCommand::Logs { id, follow: false } => {
            get_and_show(api, out, api.ws_url(&["flow_runs", &id, "logs"]), log_lines).await?;
        }
        RunCommand::Logs { id, follow: true } => follow_logs(api, out, &id).await?,
    }
    Ok(0)
}

/// Seconds one long-poll of `run logs --follow` waits for new lines.
const FOLLOW_WAIT_SECONDS: u64 = 20;
/// How long `--follow` keeps reading after the run ended: the controller reads the provider's
/// log service once more a few seconds after the end.
const FOLLOW_AFTER_END: std::time::Duration = std::time::Duration::from_secs(8);

/// `run logs ID --follow`: long-polls the logs route with `after` and `wait` until the run is
/// terminal and no line came for [`FOLLOW_AFTER_END`]. Table output prints the text of each line,
/// JSON output one JSON object per line.
async fn follow_logs(api: &Api, out: OutputFormat, id: &str) -> Result<(), CliError> {
    let mut after = String::new();
    let mut ended_at: Option<std::time::Instant> = None;
    loop {
        let wait = if ended_at.is_some() {
            1
        } else {
            FOLLOW_WAIT_SECONDS
        };
        let mut url = api.ws_url(&["flow_runs", id, "logs"]);
        url.query_pairs_mut()
            .append_pair("after", &after)
            .append_pair("wait", &wait.to_string());
        let page = api.get(url).await?;
        let lines = items(&page);
        for l in lines {
            match out {
                OutputFormat::Table => {
                    println!(
                        "{}",
                        terminal_safe(l.get("line").and_then(Value::as_str).unwrap_or(""))
                    )
                }
                OutputFormat::Json => println!("{l}"),
            }
        }
        if let Some(last) = lines
            .last()
            .and_then(|l| l.get("id"))
            .and_then(Value::as_str)
        {
            after = last.to_string();
        }
        if !lines.is_empty() {
            continue;
        }
        match ended_at {
            Some(t) if t.elapsed() >= FOLLOW_AFTER_END => return Ok(()),
            Some(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            None => {
                let run = api.get(api.ws_url(&["flow_runs", id])).await?;
                let state = run["state"]["type"].as_str().unwrap_or_default();
                if matches!(state, "COMPLETED" | "FAILED" | "CRASHED" | "CANCELLED") {
                    ended_at = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// The error summary of a FAILED/CRASHED run (`run inspect`): cause, explanation, evidence.
fn error_summary_text(run: &Value) -> Option<String> {
    let summary = run.get("error_summary").filter(|s| s.is_object())?;
    let mut text = format!(
        "error summary: {} — {}",
        terminal_safe(summary["cause"].as_str().unwrap_or("unknown")),
        terminal_safe(summary["explanation"].as_str().unwrap_or(""))
    );
    for line in summary["evidence"].as_array().into_iter().flatten() {
        text.push_str("\n  | ");
        text.push_str(&terminal_safe(line.as_str().unwrap_or("")));
    }
    Some(text)
}

/// The text of a page of log lines, one per line. Job output is untrusted: it is shown through
/// [`terminal_safe`] so a job's escape codes never reach the viewer's terminal raw.
pub(super) fn log_lines(page: &Value) -> String {
    items(page)
        .iter()
        .map(|l| terminal_safe(l.get("line").and_then(Value::as_str).unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n")
}
