//! The workspace's events (docs/events.md): a filtered list with cursor paging, and a live
//! Server-Sent Events stream with the same filters that resumes from a cursor.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::Stream;
use schemars::JsonSchema;
use serde::Deserialize;

use super::super::table::{handler, ws, Route};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditPolicy::DeniedOnly, Caller, Json, Query,
};
use crate::access::{event_read_scope, Scope};
use crate::model::Event;
use crate::store::{EventFilter, EventPage, Store};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::get(ws!("/events"), handler!(list_events))
        .summary("The workspace's events (event, event_prefix, resource, related, since, until, limit, cursor, after)")
        .access(Access::Workspace(Scope::EventsRead))
        .audit("event.list", DeniedOnly)
        .query::<EventQuery>()
        .ok::<Vec<Event>>(),
    Route::get(ws!("/events/stream"), handler!(stream_events))
        .summary("Follow the workspace's events live (Server-Sent Events; resume with Last-Event-ID or cursor)")
        .access(Access::Workspace(Scope::EventsRead))
        .audit("event.stream", DeniedOnly)
        .query::<StreamQuery>()
        .text("text/event-stream"),
];

/// Filters and paging of the event list; empty values are ignored.
#[derive(Deserialize, JsonSchema, Default)]
pub struct EventQuery {
    /// Exact event names, comma-separated (any of them), e.g. `pushpool.flow-run.Failed`.
    event: Option<String>,
    /// Event name prefixes, comma-separated (any of them), e.g. `pushpool.flow-run.`.
    event_prefix: Option<String>,
    /// The resource id, e.g. `pushpool.flow-run.<uuid>`.
    resource: Option<String>,
    /// A related resource id, e.g. `pushpool.deployment.<uuid>` or `pushpool.tag.nightly`.
    related: Option<String>,
    /// Only events that occurred at or after this RFC 3339 time.
    #[schemars(with = "Option<DateTime<Utc>>")]
    since: Option<String>,
    /// Only events that occurred before this RFC 3339 time.
    #[schemars(with = "Option<DateTime<Utc>>")]
    until: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
    /// Newest first, older than this `seq` (the last `seq` of the previous page).
    #[schemars(with = "Option<i64>")]
    cursor: Option<String>,
    /// Oldest first, newer than this `seq`, up to the settled watermark (docs/events.md); not
    /// with `cursor`.
    #[schemars(with = "Option<i64>")]
    after: Option<String>,
}

/// Filters of the stream and where it starts; empty values are ignored.
#[derive(Deserialize, JsonSchema, Default)]
pub struct StreamQuery {
    /// Exact event names, comma-separated (any of them).
    event: Option<String>,
    /// Event name prefixes, comma-separated (any of them).
    event_prefix: Option<String>,
    /// The resource id.
    resource: Option<String>,
    /// A related resource id.
    related: Option<String>,
    /// Resume after this `seq` (as the `Last-Event-ID` header does, which wins when both are
    /// given); without either the stream starts with events written from now on.
    #[schemars(with = "Option<i64>")]
    cursor: Option<String>,
    /// Close the stream after this many seconds, 1–86400 (default: when the client leaves).
    #[schemars(range(min = 1, max = 86400))]
    max_seconds: Option<u64>,
}

const MAX_TEXT: usize = 500;

fn list(field: &str, value: &Option<String>) -> ApiResult<Vec<String>> {
    let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() > 20 || items.iter().any(|s| s.len() > MAX_TEXT) {
        return Err(ApiError::unprocessable(
            field,
            format!("at most 20 comma-separated values of at most {MAX_TEXT} characters"),
        ));
    }
    Ok(items)
}

fn text(field: &str, value: &Option<String>) -> ApiResult<Option<String>> {
    match value.as_deref().filter(|v| !v.is_empty()) {
        Some(v) if v.len() > MAX_TEXT => Err(ApiError::unprocessable(
            field,
            format!("at most {MAX_TEXT} characters"),
        )),
        other => Ok(other.map(str::to_string)),
    }
}

fn time(field: &str, value: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
    match value.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                ApiError::unprocessable(
                    field,
                    "must be an RFC 3339 time, e.g. 2026-11-22T08:00:00Z",
                )
            }),
    }
}

fn seq(field: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::unprocessable(field, "must be an event `seq` (0 or more)")),
    }
}

fn filter_of(
    event: &Option<String>,
    event_prefix: &Option<String>,
    resource: &Option<String>,
    related: &Option<String>,
) -> ApiResult<EventFilter> {
    Ok(EventFilter {
        event: list("event", event)?,
        event_prefix: list("event_prefix", event_prefix)?,
        resource: text("resource", resource)?,
        related: text("related", related)?,
        since: None,
        until: None,
    })
}

/// `GET …/events`: newest first (paging with `cursor`), or oldest first after `after`. Each event
/// is shown only to readers who may read what it is about.
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let ws = caller.workspace()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let mut filter = filter_of(&q.event, &q.event_prefix, &q.resource, &q.related)?;
    filter.since = time("since", &q.since)?;
    filter.until = time("until", &q.until)?;
    let page = match (
        seq("cursor", q.cursor.as_deref())?,
        seq("after", q.after.as_deref())?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "after",
                "not together with `cursor`",
            ))
        }
        (Some(c), None) => EventPage::Before(c),
        (None, Some(a)) => EventPage::After(a),
        (None, None) => EventPage::Newest,
    };
    let mut events = state
        .store
        .query_events(ws.id, &filter, page, limit)
        .await?;
    events.retain(|e| caller.has(event_read_scope(&e.event)));
    Ok(Json(events))
}

/// How often the stream looks for new events (a store notification wakes it sooner).
const POLL: Duration = Duration::from_millis(250);

/// `GET …/events/stream`: Server-Sent Events, one `event: event` message per event with `id:` its
/// `seq` and `data:` the event's JSON. A client that reconnects with `Last-Event-ID` (or
/// `?cursor=`) set to the last `id` it received gets every later event exactly once.
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    let ws = caller.workspace()?;
    let filter = filter_of(&q.event, &q.event_prefix, &q.resource, &q.related)?;
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("x").to_string());
    let resume = match header {
        Some(h) => seq("Last-Event-ID", Some(&h))?,
        None => seq("cursor", q.cursor.as_deref())?,
    };
    if let Some(s) = q.max_seconds {
        if !(1..=86_400).contains(&s) {
            return Err(ApiError::unprocessable(
                "max_seconds",
                "must be between 1 and 86400",
            ));
        }
    }
    let start = match resume {
        Some(c) => c,
        None => state.store.latest_event_seq().await?,
    };
    let follow = Follow {
        store: state.store.clone(),
        workspace: ws.id,
        caller,
        filter,
        position: start,
        deadline: q
            .max_seconds
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s)),
    };
    Ok(Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One stream's state: where it is in `seq` and what it shows.
struct Follow {
    store: Store,
    workspace: uuid::Uuid,
    caller: Caller,
    filter: EventFilter,
    /// Every event at or below this was sent or does not match.
    position: i64,
    deadline: Option<tokio::time::Instant>,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures::stream::unfold(
            (self, std::collections::VecDeque::<Event>::new()),
            |(mut f, mut ready)| async move {
                loop {
                    if let Some(e) = ready.pop_front() {
                        let data = serde_json::to_string(&e).unwrap_or_default();
                        let msg = SseEvent::default()
                            .id(e.seq.to_string())
                            .event("event")
                            .data(data);
                        return Some((Ok(msg), (f, ready)));
                    }
                    if f.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return None;
                    }
                    match f.next_batch().await {
                        Ok(batch) if !batch.is_empty() => ready.extend(batch),
                        Ok(_) => f.wait().await,
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: cannot read events; retrying");
                            f.wait().await;
                        }
                    }
                }
            },
        )
    }

    /// The next events after the position, up to the settled watermark, that the caller may see.
    async fn next_batch(&mut self) -> crate::store::Result<Vec<Event>> {
        let mark = self.store.event_watermark(self.position, 5_000).await?;
        if mark <= self.position {
            return Ok(Vec::new());
        }
        let events = self
            .store
            .query_events(
                self.workspace,
                &self.filter,
                EventPage::Range(self.position, mark),
                500,
            )
            .await?;
        // A full page: continue after its last event; else everything up to the watermark is done.
        self.position = match events.last() {
            Some(last) if events.len() == 500 => last.seq,
            _ => mark,
        };
        Ok(events
            .into_iter()
            .filter(|e| self.caller.has(event_read_scope(&e.event)))
            .collect())
    }

    async fn wait(&self) {
        let changes = self.store.changes();
        let sleep = match self.deadline {
            Some(d) => d.min(tokio::time::Instant::now() + POLL),
            None => tokio::time::Instant::now() + POLL,
        };
        tokio::select! {
            _ = changes.notified() => {}
            _ = tokio::time::sleep_until(sleep) => {}
        }
    }
}
