//! The controller's own events: provider throttling and controller start/stop (docs/events.md).
//! Builders here are pure; the callers write them (best effort: an event that cannot be written
//! is logged, never a reason to stop).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pushpool_provider::ProviderError;
use serde_json::{json, Value};
use uuid::Uuid;

use super::names::{flow_run_related, resource_id};
use crate::model::{FlowRun, RelatedResource};
use crate::store::{EventRow, Result, Store};

/// True when a provider error says the provider throttled the call (HTTP 429, a throttling or
/// quota error code, or a `Retry-After` it asked for).
pub fn is_throttling(error: &ProviderError) -> bool {
    let ProviderError::Transient {
        message,
        retry_after,
    } = error
    else {
        return false;
    };
    let lower = message.to_ascii_lowercase();
    retry_after.is_some()
        || [
            "429",
            "throttl",
            "toomanyrequests",
            "too many requests",
            "resource_exhausted",
            "rate exceeded",
            "quota",
        ]
        .iter()
        .any(|needle| lower.contains(needle))
}

/// `pushpool.work-pool.throttled` about `run`'s pool: the provider of `pool_type` throttled a
/// call for `run` and controller `controller` backs off.
pub fn throttled_event(
    run: &FlowRun,
    pool_type: &str,
    error: &ProviderError,
    controller: &str,
) -> EventRow {
    let (message, retry_after) = match error {
        ProviderError::Transient {
            message,
            retry_after,
        } => (message.clone(), retry_after.map(|d| d.as_secs_f64())),
        other => (other.to_string(), None),
    };
    let mut related: Vec<RelatedResource> = flow_run_related(run)
        .into_iter()
        .filter(|r| r.role != "work-pool")
        .collect();
    related.insert(
        0,
        RelatedResource {
            id: resource_id("flow-run", &run.id.to_string()),
            role: "flow-run".into(),
            labels: BTreeMap::new(),
        },
    );
    EventRow {
        resource_labels: BTreeMap::from([
            ("pushpool.resource.name".to_string(), run.work_pool.clone()),
            ("pushpool.pool-type".to_string(), pool_type.to_string()),
        ]),
        related,
        ..EventRow::new(
            run.workspace_id,
            "pushpool.work-pool.throttled",
            &resource_id("work-pool", &run.work_pool_id.to_string()),
            json!({
                "pool_type": pool_type,
                "message": message,
                "retry_after_seconds": retry_after,
                "flow_run_id": run.id,
                "controller": controller,
            }),
        )
    }
}

/// Throttling events are written at most once per pool per this long by one controller.
pub const THROTTLE_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Remembers when each pool's last throttling event was written, so sustained throttling writes
/// one event a minute, not one per retry.
#[derive(Debug, Default)]
pub struct ThrottleNotes {
    last: Mutex<HashMap<Uuid, Instant>>,
}

impl ThrottleNotes {
    /// True (and noted) when no event for `pool` was written in the last [`THROTTLE_EVENT_EVERY`].
    pub fn due(&self, pool: Uuid) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(&pool) {
            Some(at) if now.duration_since(*at) < THROTTLE_EVENT_EVERY => false,
            _ => {
                last.insert(pool, now);
                true
            }
        }
    }
}

/// Writes `pushpool.controller.<what>` (`started`, `stopped`) about controller `id` into every
/// workspace: a controller serves the pools of its types in all of them.
pub async fn record_controller(store: &Store, id: &str, what: &str, payload: Value) -> Result<()> {
    let rows: Vec<EventRow> = store
        .list_workspaces()
        .await?
        .into_iter()
        .map(|ws| {
            EventRow::new(
                ws.id,
                &format!("pushpool.controller.{what}"),
                &resource_id("controller", id),
                payload.clone(),
            )
        })
        .collect();
    store.record_events(&rows).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_told_from_other_transient_errors() {
        let t = |m: &str, r: Option<Duration>| ProviderError::Transient {
            message: m.into(),
            retry_after: r,
        };
        assert!(is_throttling(&t(
            "TooManyRequestsException (HTTP 429): slow down",
            None
        )));
        assert!(is_throttling(&t("RESOURCE_EXHAUSTED: quota", None)));
        assert!(is_throttling(&t("busy", Some(Duration::from_secs(3)))));
        assert!(!is_throttling(&t("connection reset", None)));
        assert!(!is_throttling(&ProviderError::Permanent {
            message: "429".into()
        }));
        let notes = ThrottleNotes::default();
        let pool = Uuid::now_v7();
        assert!(notes.due(pool));
        assert!(!notes.due(pool), "once a minute per pool");
        assert!(notes.due(Uuid::now_v7()));
    }
}
