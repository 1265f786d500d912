//! The dashboard: late and failed runs first, runs per state over the last hour, day or week
//! (a server-side SVG chart), pools with their health, the newest events.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::client::Api;
use super::layout::{badge, esc, page, short, state_of, table, text, time, time_str, Nav};
use super::session::{Session, UiResult};
use super::Ui;
use crate::access::Scope;
use crate::model::{from_micros, to_micros, WorkPool};
use crate::state::StateType;

/// The chart's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 12 buckets of 5 minutes.
    Hour,
    /// 24 buckets of an hour.
    Day,
    /// 28 buckets of 6 hours.
    Week,
}

impl Window {
    fn parse(s: Option<&str>) -> Window {
        match s {
            Some("hour") => Window::Hour,
            Some("week") => Window::Week,
            _ => Window::Day,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        }
    }
    /// Bucket width and count.
    fn buckets(self) -> (Duration, i64) {
        match self {
            Window::Hour => (Duration::minutes(5), 12),
            Window::Day => (Duration::hours(1), 24),
            Window::Week => (Duration::hours(6), 28),
        }
    }
}

/// Bottom to top in the stacked bars.
const STACK: [StateType; 9] = [
    StateType::Completed,
    StateType::Running,
    StateType::Pending,
    StateType::Scheduled,
    StateType::Paused,
    StateType::Cancelling,
    StateType::Cancelled,
    StateType::Crashed,
    StateType::Failed,
];

/// Query of the dashboard.
#[derive(Debug, Deserialize)]
pub struct DashboardQuery {
    window: Option<String>,
}

/// `GET /ui`.
pub async fn page_handler(
    State(ui): State<Ui>,
    session: Session,
    Query(q): Query<DashboardQuery>,
) -> UiResult<Response> {
    let window = Window::parse(q.window.as_deref());
    let api = Api::new(&ui, &session);
    let now = Utc::now();
    let mut body = format!(
        "<div class=\"title-row\"><h1>Dashboard</h1><nav aria-label=\"Chart window\" class=\"tabs\">{}</nav></div>",
        ["hour", "day", "week"]
            .iter()
            .map(|w| {
                let current = if *w == window.name() {
                    " aria-current=\"true\""
                } else {
                    ""
                };
                format!("<a href=\"/ui?window={w}\"{current}>Last {w}</a>")
            })
            .collect::<String>()
    );
    body.push_str(&format!(
        "<div data-refresh=\"/ui?window={}\" id=\"dash\">",
        window.name()
    ));
    // Runs are listed by pool: a key that may not read pools sees its runs in the runs list.
    let pools: Vec<WorkPool> = if session.has(Scope::PoolsRead) {
        api.ws_get("/work_pools").await?
    } else {
        vec![]
    };
    if session.has(Scope::RunsRead) {
        body.push_str(&attention(&ui, &session, &pools, now).await?);
        body.push_str(&chart(&ui, &pools, window, now).await?);
    }
    if session.has(Scope::PoolsRead) {
        body.push_str(&pools_health(&ui, &session, &pools).await?);
    }
    if session.has(Scope::EventsRead) {
        body.push_str(&recent_events(&api).await?);
    }
    body.push_str("</div>");
    Ok(page(&session, Nav::Dashboard, "Dashboard", &body).into_response())
}

/// A table of runs (shared with the runs list).
pub fn run_rows(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap_or_default();
            format!(
                "<tr><td><a href=\"/ui/runs/{id}\"><code>{}</code></a></td><td><a href=\"/ui/deployments/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(short(id)),
                esc(&super::client::seg(r["deployment"].as_str().unwrap_or_default())),
                text(&r["deployment"]),
                text(&r["work_pool"]),
                badge(state_of(&r["state"]["type"]), r["state"]["name"].as_str().unwrap_or_default()),
                time_str(&r["scheduled_time"]),
                time_str(&r["state"]["timestamp"]),
            )
        })
        .collect()
}

/// Headers of [`run_rows`].
pub const RUN_HEADERS: &[&str] = &[
    "Run",
    "Deployment",
    "Pool",
    "State",
    "Scheduled",
    "State since",
];

/// Late runs (SCHEDULED more than 15 s past due; the longest late first) and the newest failed
/// or crashed runs of the last week, of the pools the session may see.
async fn attention(
    ui: &Ui,
    session: &Session,
    pools: &[WorkPool],
    now: DateTime<Utc>,
) -> UiResult<String> {
    let ws = session.caller.workspace()?;
    let ids: Vec<uuid::Uuid> = pools.iter().map(|p| p.id).collect();
    let store = &ui.app.store;
    let late_before = to_micros(now - Duration::seconds(15));
    let late = store
        .runs_by_pool_and_state(
            ws.id,
            &ids,
            &[StateType::Scheduled],
            0,
            late_before,
            true,
            10,
        )
        .await?;
    let week_ago = to_micros(now - Duration::days(7));
    let failed = store
        .runs_by_pool_and_state(
            ws.id,
            &ids,
            &[StateType::Failed, StateType::Crashed],
            week_ago,
            i64::MAX,
            false,
            10,
        )
        .await?;
    let json = |runs: Vec<crate::model::FlowRun>| -> Vec<Value> {
        runs.iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect()
    };
    Ok(format!(
        "<section aria-labelledby=\"late-h\" class=\"card\"><h2 id=\"late-h\">Late runs</h2>{}</section>\
         <section aria-labelledby=\"failed-h\" class=\"card\"><h2 id=\"failed-h\">Failed and crashed (last week)</h2>{}</section>",
        table("Late runs, the longest late first", RUN_HEADERS, &run_rows(&json(late)), "No late runs."),
        table("Failed runs, newest first", RUN_HEADERS, &run_rows(&json(failed)), "No failed runs in the last week."),
    ))
}

async fn chart(
    ui: &Ui,
    pools: &[WorkPool],
    window: Window,
    now: DateTime<Utc>,
) -> UiResult<String> {
    let ids: Vec<uuid::Uuid> = pools.iter().map(|p| p.id).collect();
    let (width, n) = window.buckets();
    let w_us = width.num_microseconds().unwrap_or(1);
    let end = (to_micros(now) / w_us + 1) * w_us;
    let since = end - w_us * n;
    let rows = ui
        .app
        .store
        .run_counts_by_bucket(&ids, since, w_us, n)
        .await?;
    let mut counts: HashMap<(i64, StateType), i64> = HashMap::new();
    let mut totals: HashMap<StateType, i64> = HashMap::new();
    for (b, s, c) in rows {
        *counts.entry((b, s)).or_default() += c;
        *totals.entry(s).or_default() += c;
    }
    let per_bucket: Vec<i64> = (0..n)
        .map(|b| {
            STACK
                .iter()
                .map(|s| counts.get(&(b, *s)).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = per_bucket.iter().copied().max().unwrap_or(0).max(1);
    let (vw, vh, pad) = (720.0_f64, 200.0_f64, 4.0_f64);
    let bw = vw / n as f64;
    let mut bars = String::new();
    for b in 0..n {
        let x = b as f64 * bw + pad / 2.0;
        let mut y = vh;
        let start = from_micros(since + b * w_us);
        for s in STACK {
            let c = counts.get(&(b, s)).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let h = (c as f64 / max as f64) * (vh - 10.0);
            y -= h;
            bars.push_str(&format!(
                "<rect class=\"bar s-{}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{} {}: {c}</title></rect>",
                s.as_str().to_ascii_lowercase(),
                (bw - pad).max(1.0),
                start.format("%Y-%m-%d %H:%M UTC"),
                s.as_str(),
            ));
        }
    }
    let total: i64 = totals.values().sum();
    let legend: String = STACK
        .iter()
        .rev()
        .map(|s| {
            format!(
                "<li><span class=\"swatch s-{}\" aria-hidden=\"true\"></span>{} <strong>{}</strong></li>",
                s.as_str().to_ascii_lowercase(),
                s.as_str(),
                totals.get(s).copied().unwrap_or(0)
            )
        })
        .collect();
    let summary = STACK
        .iter()
        .map(|s| format!("{} {}", s.as_str(), totals.get(s).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let mid = from_micros(since + w_us * n / 2);
    Ok(format!(
        r#"<section aria-labelledby="chart-h" class="card wide"><h2 id="chart-h">Runs per state, last {name} <span class="muted">({total} runs by scheduled time)</span></h2>
<figure class="chart"><svg viewBox="0 0 {vw} {vh}" preserveAspectRatio="none" role="img" aria-label="Runs per state over the last {name}: {summary}"><line class="axis" x1="0" y1="{vh}" x2="{vw}" y2="{vh}"/>{bars}</svg>
<div class="axis-labels"><span>{a}</span><span>{m}</span><span>{z}</span></div>
<figcaption><span class="muted">Tallest bar: {max} runs.</span><ul class="legend">{legend}</ul></figcaption></figure></section>"#,
        name = window.name(),
        a = time(&from_micros(since)),
        m = time(&mid),
        z = time(&from_micros(end)),
        summary = esc(&summary),
    ))
}

async fn pools_health(ui: &Ui, session: &Session, pools: &[WorkPool]) -> UiResult<String> {
    let active = active_by_pool(ui, session, pools).await?;
    let rows: Vec<String> = pools
        .iter()
        .map(|p| {
            let n = active.get(&p.id).copied().unwrap_or(0);
            let limit = p.concurrency_limit.map(|l| l.to_string()).unwrap_or_else(|| "∞".into());
            let full = p.concurrency_limit.is_some_and(|l| n >= l);
            let health = if p.paused {
                "<span class=\"pill warn\">paused</span>"
            } else if full {
                "<span class=\"pill warn\">at limit</span>"
            } else {
                "<span class=\"pill ok\">ready</span>"
            };
            format!(
                "<tr><td><a href=\"/ui/pools/{}\">{}</a></td><td>{}</td><td>{health}</td><td>{n} / {limit}</td><td>{}</td></tr>",
                esc(&super::client::seg(&p.name)),
                esc(&p.name),
                esc(&p.pool_type),
                p.submit_rate.map(|r| format!("{r}/s")).unwrap_or_else(|| "provider default".into()),
            )
        })
        .collect();
    Ok(format!(
        "<section aria-labelledby=\"pools-h\" class=\"card\"><h2 id=\"pools-h\">Pools</h2>{}</section>",
        table(
            "Pools and their health",
            &["Pool", "Type", "Health", "In flight / limit", "Submit rate"],
            &rows,
            "No pools yet."
        )
    ))
}

async fn recent_events(api: &Api<'_>) -> UiResult<String> {
    let events: Vec<Value> = api.ws_get("/events?limit=10").await?;
    let rows: Vec<String> = events
        .iter()
        .take(10)
        .map(super::admin::event_row_brief)
        .collect();
    Ok(format!(
        "<section aria-labelledby=\"events-h\" class=\"card\"><h2 id=\"events-h\">Recent events</h2>{}<p><a href=\"/ui/events\">All events</a></p></section>",
        table("Recent events", &["When", "Event", "Resource"], &rows, "No events yet.")
    ))
}

/// Runs in flight per pool (empty without `runs:read`).
pub async fn active_by_pool(
    ui: &Ui,
    session: &Session,
    pools: &[WorkPool],
) -> UiResult<HashMap<uuid::Uuid, i64>> {
    if !session.has(Scope::RunsRead) {
        return Ok(HashMap::new());
    }
    let ids: Vec<uuid::Uuid> = pools.iter().map(|p| p.id).collect();
    Ok(ui
        .app
        .store
        .active_runs_by_pool(&ids)
        .await?
        .into_iter()
        .collect())
}
