//! The event log: writing events (most writes of the store append some), reading a workspace's
//! events with filters and cursor paging, the all-workspace feed for internal consumers
//! ([`Store::events_after`]), and pruning (docs/events.md).
//!
//! ## The cursor and commit order
//! Every event gets `seq` from the database when it is inserted. On SQLite writers are serialized,
//! so rows become visible in `seq` order. On PostgreSQL they need not: a transaction that took
//! `seq` 9 may commit after the one that took 10, and a reader that saw 10 and moved its cursor
//! past 9 would never see 9. So readers that resume from a cursor read through
//! [`Store::event_watermark`]: rows are handed out in `seq` order up to the first gap, and a gap
//! is passed only once the row after it was recorded more than [`EVENT_SETTLE`] ago (then the
//! number belongs to a transaction that rolled back, or to rows pruned since). Writers commit
//! within milliseconds of inserting their events, well inside the settle lag.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::sql::{get_uuid, insert_rows, storable};
use super::{Result, Store, StoreError, Tx};
use crate::model::{
    from_micros, now_micros, to_micros, Event, EventResource, Micros, RelatedResource,
};

/// What [`Store::events_after`] returns: an event with its cursor (`seq`) and workspace.
pub type StoredEvent = Event;

/// How long a gap in `seq` may stay open before readers pass it (see the module docs).
pub const EVENT_SETTLE: Duration = Duration::from_secs(5);

/// The setting holding how many days events are kept (default 30; docs/events.md).
pub const EVENT_RETENTION_DAYS_SETTING: &str = "events.retention_days";

/// One event to write. Build it with [`EventRow::new`] (or a struct literal ending in
/// `..Default::default()`), so fields added later keep old writers compiling.
#[derive(Debug, Clone, Default)]
pub struct EventRow {
    /// The workspace it happened in.
    pub workspace_id: Uuid,
    /// When.
    pub occurred: Micros,
    /// What: a documented name such as `pushpool.flow-run.Failed`, or a short one such as
    /// `work_pool.created` ([`crate::events::canonical`] turns it into `pushpool.work-pool.created`).
    pub event: String,
    /// The object it happened to: `pushpool.<kind>.<id>`, or for a short name its plain id or name.
    pub resource_id: String,
    /// Facts about it.
    pub payload: Value,
    /// Labels of the resource.
    pub resource_labels: BTreeMap<String, String>,
    /// Other resources it concerns.
    pub related: Vec<RelatedResource>,
}

impl EventRow {
    /// An event happening now, with no labels or related resources.
    pub fn new(workspace_id: Uuid, event: &str, resource_id: &str, payload: Value) -> EventRow {
        EventRow {
            workspace_id,
            occurred: now_micros(),
            event: event.to_string(),
            resource_id: resource_id.to_string(),
            payload,
            ..Default::default()
        }
    }
}

/// Appends an event inside `tx`.
pub(crate) async fn insert_event(
    tx: &mut Tx,
    workspace_id: Uuid,
    event: &str,
    resource_id: &str,
    payload: &Value,
) -> Result<()> {
    let row = EventRow::new(workspace_id, event, resource_id, payload.clone());
    insert_event_rows(tx, &[row]).await
}

/// Appends events inside `tx` with multi-row statements (names made canonical).
pub(crate) async fn insert_event_rows(tx: &mut Tx, rows: &[EventRow]) -> Result<()> {
    let head = "INSERT INTO events (id, workspace_id, occurred, recorded, event, resource_id, \
                resource_labels, related, payload)";
    let recorded = now_micros();
    insert_rows(tx, head, 9, 300, rows, |q, row| {
        let (event, resource_id) =
            crate::events::canonical(&row.event, &row.resource_id, &row.payload);
        q.bind(Uuid::now_v7().to_string())
            .bind(row.workspace_id.to_string())
            .bind(row.occurred)
            .bind(recorded)
            .bind(storable(&event).into_owned())
            .bind(storable(&resource_id).into_owned())
            .bind(to_json(&row.resource_labels))
            .bind(to_json(&row.related))
            .bind(storable(&row.payload.to_string()).into_owned())
    })
    .await
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    storable(&serde_json::to_string(value).unwrap_or_default()).into_owned()
}

/// Which of a workspace's events to read; every field given must match (AND).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Exact event names; any of them.
    pub event: Vec<String>,
    /// Event name prefixes (e.g. `pushpool.flow-run.`); any of them.
    pub event_prefix: Vec<String>,
    /// The resource id, exactly (`pushpool.flow-run.<uuid>`).
    pub resource: Option<String>,
    /// A related resource id, exactly (`pushpool.deployment.<uuid>`, `pushpool.tag.nightly`).
    pub related: Option<String>,
    /// Occurred at or after.
    pub since: Option<DateTime<Utc>>,
    /// Occurred before.
    pub until: Option<DateTime<Utc>>,
}

/// Which page of events to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPage {
    /// The newest events, newest first.
    Newest,
    /// Events with `seq` below this, newest first (the next page of [`EventPage::Newest`]).
    Before(i64),
    /// Events with `seq` above this, oldest first, only up to the settled watermark
    /// ([`Store::event_watermark`]), so a reader that moves its cursor along misses none.
    After(i64),
    /// Events with `seq` above the first and at most the second, oldest first (a reader that
    /// computed the watermark itself).
    Range(i64, i64),
}

enum Arg {
    Text(String),
    Int(i64),
}

/// A WHERE clause being built: conditions and their arguments, numbered in order.
struct Where {
    conds: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    /// `cond` with its `?` numbered for `arg` (which is kept); not yet added.
    fn arg(&mut self, cond: &str, arg: Arg) -> String {
        self.args.push(arg);
        cond.replace('?', &format!("${}", self.args.len()))
    }

    /// Adds `cond` with its argument.
    fn add(&mut self, cond: &str, arg: Arg) {
        let cond = self.arg(cond, arg);
        self.conds.push(cond);
    }
}

/// `text` with LIKE's wildcards escaped (for `LIKE … ESCAPE '\'`).
fn like_escaped(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

const EVENT_COLUMNS: &str = "seq, id, workspace_id, occurred, event, resource_id, \
                             resource_labels, related, payload";

fn event_from_row(row: &AnyRow) -> Result<Event> {
    let text = |col: &str| -> Result<String> { Ok(row.try_get::<String, _>(col)?) };
    let corrupt = |col: &str, e: serde_json::Error| StoreError::Corrupt(format!("{col}: {e}"));
    Ok(Event {
        id: get_uuid(row, "id")?,
        seq: row.try_get("seq")?,
        workspace_id: get_uuid(row, "workspace_id")?,
        occurred: from_micros(row.try_get("occurred")?),
        event: text("event")?,
        resource: EventResource {
            id: text("resource_id")?,
            labels: serde_json::from_str(&text("resource_labels")?)
                .map_err(|e| corrupt("resource_labels", e))?,
        },
        related: serde_json::from_str(&text("related")?).map_err(|e| corrupt("related", e))?,
        payload: serde_json::from_str(&text("payload")?).unwrap_or(Value::Null),
    })
}

impl Store {
    /// Writes events in one transaction of their own (for writers outside a store transaction:
    /// the controller's own events, inbound webhooks).
    pub async fn record_events(&self, rows: &[EventRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        insert_event_rows(&mut tx, rows).await?;
        tx.commit().await
    }

    /// A workspace's newest events, newest first.
    pub async fn list_events(&self, workspace_id: Uuid, limit: i64) -> Result<Vec<Event>> {
        self.query_events(
            workspace_id,
            &EventFilter::default(),
            EventPage::Newest,
            limit,
        )
        .await
    }

    /// A page of a workspace's events matching `filter`.
    pub async fn query_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: EventPage,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let mut w = Where {
            conds: vec!["workspace_id = $1".to_string()],
            args: vec![Arg::Text(workspace_id.to_string())],
        };
        if !filter.event.is_empty() || !filter.event_prefix.is_empty() {
            let mut any = Vec::new();
            for name in &filter.event {
                any.push(w.arg("event = ?", Arg::Text(name.clone())));
            }
            for prefix in &filter.event_prefix {
                let pattern = format!("{}%", like_escaped(prefix));
                any.push(w.arg("event LIKE ? ESCAPE '\\'", Arg::Text(pattern)));
            }
            w.conds.push(format!("({})", any.join(" OR ")));
        }
        if let Some(resource) = &filter.resource {
            w.add("resource_id = ?", Arg::Text(resource.clone()));
        }
        if let Some(related) = &filter.related {
            // The stored array is compact JSON: `{"id":"<id>",…}`, the id JSON-escaped.
            let quoted = serde_json::to_string(related).unwrap_or_default();
            let pattern = format!("%\"id\":{}%", like_escaped(&quoted));
            w.add("related LIKE ? ESCAPE '\\'", Arg::Text(pattern));
        }
        if let Some(since) = filter.since {
            w.add("occurred >= ?", Arg::Int(to_micros(since)));
        }
        if let Some(until) = filter.until {
            w.add("occurred < ?", Arg::Int(to_micros(until)));
        }
        let order = match page {
            EventPage::Newest => "DESC",
            EventPage::Before(seq) => {
                w.add("seq < ?", Arg::Int(seq));
                "DESC"
            }
            EventPage::After(seq) => {
                let mark = self.event_watermark(seq, 10_000).await?;
                w.add("seq > ?", Arg::Int(seq));
                w.add("seq <= ?", Arg::Int(mark));
                "ASC"
            }
            EventPage::Range(after, upto) => {
                w.add("seq > ?", Arg::Int(after));
                w.add("seq <= ?", Arg::Int(upto));
                "ASC"
            }
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE {} ORDER BY seq {order} LIMIT {}",
            w.conds.join(" AND "),
            limit.clamp(0, 10_000)
        );
        let mut query = sqlx::query(&sql);
        for arg in w.args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        self.fetch_rows(query, event_from_row).await
    }

    /// Events of every workspace with `seq` above `after_seq`, oldest first, at most `limit`,
    /// and only up to the first gap in `seq` that has not settled (module docs): a consumer that
    /// stores the last `seq` it handled and asks again from there sees every event once.
    pub async fn events_after(&self, after_seq: i64, limit: i64) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, recorded FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        );
        let query = sqlx::query(&sql)
            .bind(after_seq)
            .bind(limit.clamp(0, 10_000));
        let rows = query.fetch_all(self.db()).await?;
        let settled_before = now_micros() - EVENT_SETTLE.as_micros() as i64;
        let mut mark = after_seq;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let recorded: i64 = row.try_get("recorded")?;
            if seq != mark + 1 && recorded > settled_before {
                break;
            }
            mark = seq;
            out.push(event_from_row(row)?);
        }
        Ok(out)
    }

    /// The settled watermark from `from`: the highest `seq` such that every event at or below it
    /// and above `from` is visible now or never will be (module docs). Reads at most `max_rows`
    /// rows' `seq`, so a reader far behind catches up in steps. `from` when nothing is newer.
    pub async fn event_watermark(&self, from: i64, max_rows: i64) -> Result<i64> {
        let rows =
            sqlx::query("SELECT seq, recorded FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(from)
                .bind(max_rows.max(1))
                .fetch_all(self.db())
                .await?;
        let settled_before = now_micros() - EVENT_SETTLE.as_micros() as i64;
        let mut mark = from;
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            let recorded: i64 = row.try_get(1)?;
            if seq != mark + 1 && recorded > settled_before {
                break;
            }
            mark = seq;
        }
        Ok(mark)
    }

    /// The highest `seq` written so far (0 for none): where a stream that starts "now" begins
    /// (it then waits for any gap below newer rows like every reader).
    pub async fn latest_event_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(seq) FROM events")
            .fetch_one(self.db())
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Deletes events recorded before `before`, in batches of `batch` rows (each its own
    /// transaction, so writers are not held up). Returns how many were deleted.
    pub async fn prune_events(&self, before: DateTime<Utc>, batch: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let done = sqlx::query(
                "DELETE FROM events WHERE seq IN \
                 (SELECT seq FROM events WHERE recorded < $1 ORDER BY seq LIMIT $2)",
            )
            .bind(to_micros(before))
            .bind(batch.max(1))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            total += done;
            if done < batch.max(1) as u64 {
                return Ok(total);
            }
        }
    }

    /// How many days events are kept: the [`EVENT_RETENTION_DAYS_SETTING`] setting, default 30.
    pub async fn event_retention_days(&self) -> Result<i64> {
        Ok(self
            .setting(EVENT_RETENTION_DAYS_SETTING)
            .await?
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|d| *d > 0)
            .unwrap_or(30))
    }
}
