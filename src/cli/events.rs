//! `pushpool events …`: list the workspace's events, or follow them live (docs/events.md).

use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use super::api::{Api, CliError};
use super::input;
use super::output::{emit, field, list_table, terminal_safe, time_field};
use super::{get_and_show, OutputFormat};

/// `pushpool events …`
#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// Filters shared by `ls` and `tail`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EventFilterArgs {
    /// Only events with this exact name (e.g. pushpool.flow-run.Failed). Repeatable (any).
    #[arg(long, value_name = "NAME")]
    event: Vec<String>,
    /// Only events whose name starts with this (e.g. pushpool.flow-run.). Repeatable (any).
    #[arg(long, value_name = "PREFIX")]
    prefix: Vec<String>,
    /// Only events about this resource (e.g. pushpool.flow-run.<id>).
    #[arg(long, value_name = "ID")]
    resource: Option<String>,
    /// Only events related to this resource (e.g. pushpool.deployment.<id>, pushpool.tag.nightly).
    #[arg(long, value_name = "ID")]
    related: Option<String>,
}

/// Event commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum EventsCommand {
    /// List events, newest first (or oldest first with --after).
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// Only events that occurred at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only events that occurred before this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
        /// At most this many events (1–1000, default 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// The next page: events older than this seq (the last SEQ shown).
        #[arg(long, value_name = "SEQ", conflicts_with = "after")]
        cursor: Option<i64>,
        /// Events newer than this seq, oldest first.
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
    },
    /// Follow events as they happen; reconnects by itself and resumes where it was, so no event
    /// is lost or shown twice. Stops on Ctrl-C (or after --max-seconds).
    Tail {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// Start after this seq (default: with events from now on).
        #[arg(long, value_name = "SEQ")]
        cursor: Option<i64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "N")]
        max_seconds: Option<u64>,
    },
}

fn add_filter(url: &mut Url, filter: &EventFilterArgs) {
    let mut query = url.query_pairs_mut();
    if !filter.event.is_empty() {
        query.append_pair("event", &filter.event.join(","));
    }
    if !filter.prefix.is_empty() {
        query.append_pair("event_prefix", &filter.prefix.join(","));
    }
    if let Some(r) = &filter.resource {
        query.append_pair("resource", r);
    }
    if let Some(r) = &filter.related {
        query.append_pair("related", r);
    }
}

/// One event as a table row: SEQ, OCCURRED, EVENT, RESOURCE.
fn row(e: &Value) -> Vec<String> {
    vec![
        field(e, "seq"),
        time_field(e, "occurred"),
        terminal_safe(&field(e, "event")),
        terminal_safe(&field(e.get("resource").unwrap_or(&Value::Null), "id")),
    ]
}

const HEADERS: [&str; 4] = ["SEQ", "OCCURRED", "EVENT", "RESOURCE"];

pub(super) async fn events(
    api: &Api,
    out: OutputFormat,
    command: EventsCommand,
) -> Result<i32, CliError> {
    match command {
        EventsCommand::Ls {
            filter,
            since,
            until,
            limit,
            cursor,
            after,
        } => {
            let mut url = api.ws_url(&["events"]);
            add_filter(&mut url, &filter);
            {
                let mut query = url.query_pairs_mut();
                if let Some(t) = since {
                    query.append_pair("since", &input::parse_time("--since", &t)?);
                }
                if let Some(t) = until {
                    query.append_pair("until", &input::parse_time("--until", &t)?);
                }
                if let Some(n) = limit {
                    query.append_pair("limit", &n.to_string());
                }
                if let Some(c) = cursor {
                    query.append_pair("cursor", &c.to_string());
                }
                if let Some(a) = after {
                    query.append_pair("after", &a.to_string());
                }
            }
            if url.query() == Some("") {
                url.set_query(None);
            }
            get_and_show(api, out, url, |v| list_table(v, &HEADERS, row)).await?;
            Ok(0)
        }
        EventsCommand::Tail {
            filter,
            cursor,
            max_seconds,
        } => {
            let mut url = api.ws_url(&["events", "stream"]);
            add_filter(&mut url, &filter);
            tail(api, out, url, cursor, max_seconds).await
        }
    }
}

/// Follows the stream at `url`, printing each event; on a dropped connection it reconnects with
/// `Last-Event-ID` set to the last seq printed.
async fn tail(
    api: &Api,
    out: OutputFormat,
    url: Url,
    mut last: Option<i64>,
    max_seconds: Option<u64>,
) -> Result<i32, CliError> {
    let deadline = max_seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut first = true;
    let mut failures = 0u32;
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return Ok(0);
        }
        let mut url = url.clone();
        if let Some(r) = remaining {
            url.query_pairs_mut()
                .append_pair("max_seconds", &r.as_secs().max(1).to_string());
        }
        let response = match api.open_stream(url, last).await {
            Ok(r) => r,
            // An answer such as 403 or 422 will not change by retrying.
            Err(e) if first || !e.is_transient() => return Err(e),
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(10)))).await;
                continue;
            }
        };
        if first && out == OutputFormat::Table {
            emit(&HEADERS.join("  "));
        }
        first = false;
        failures = 0;
        match read_stream(response, out, &mut last).await {
            // The server closed the stream: at the deadline, or it went away; resume.
            Ok(()) if deadline.is_some() => {}
            Ok(()) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Prints the events of one stream connection until it ends; `last` follows the seq printed.
async fn read_stream(
    mut response: reqwest::Response,
    out: OutputFormat,
    last: &mut Option<i64>,
) -> Result<(), reqwest::Error> {
    let mut buf = String::new();
    while let Some(chunk) = response.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block = buf[..end].to_string();
            buf.drain(..end + 2);
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let (Some(id), Ok(event)) = (id, serde_json::from_str::<Value>(&data)) else {
                continue;
            };
            if last.is_some_and(|l| id <= l) {
                continue;
            }
            *last = Some(id);
            match out {
                OutputFormat::Json => emit(&event.to_string()),
                OutputFormat::Table => emit(&row(&event).join("  ")),
            }
        }
    }
    Ok(())
}
