//! The automation engine's durable state: one evaluation pass over the event log
//! ([`Store::evaluate_automations`]) and the queue of actions ([`Store::claim_automation_actions`],
//! [`Store::finish_automation_action`]).
//!
//! Exactly once: a pass holds the cursor row locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! a second controller skips the pass instead of waiting; SQLite's write transaction is
//! exclusive anyway) and writes the groups' state, the firings, their actions and the new
//! cursor in one transaction. A crash before the commit leaves nothing; the next pass reads
//! the same events again. Each firing's `(automation, occurrence)` is unique besides.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use super::super::objects::insert_event;
use super::super::sql::get_uuid;
use super::super::{Backend, Result, Store, StoreError, Tx};
use super::to_text;
use crate::automations::context::{build, FiringInfo};
use crate::automations::evaluate::{self, Fire, GroupState};
use crate::automations::{Action, Automation, EventFacts, EventTrigger};
use crate::model::{now_micros, Micros};

/// What one evaluation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvaluationReport {
    /// Another controller held the cursor: nothing done.
    pub busy: bool,
    /// Events read.
    pub events: usize,
    /// Firings recorded.
    pub fired: usize,
    /// Fewer events than the batch were left: the engine is caught up.
    pub caught_up: bool,
}

/// An action claimed for doing.
#[derive(Debug, Clone)]
pub struct ClaimedAction {
    /// The action row.
    pub id: Uuid,
    /// Its firing.
    pub firing_id: Uuid,
    /// Its automation.
    pub automation_id: Uuid,
    /// Its workspace.
    pub workspace_id: Uuid,
    /// Position in the automation's list.
    pub position: u32,
    /// What to do.
    pub action: Action,
    /// The firing's template context.
    pub context: Value,
    /// Tries, this one included.
    pub attempts: u32,
}

/// How a claimed action ended.
#[derive(Debug, Clone)]
pub enum ActionResult {
    /// Done; what it did.
    Succeeded(Value),
    /// Failed for good; why.
    Failed(String),
    /// Failed in a way that may pass (the store was busy): try again after the delay.
    Retry(String, Duration),
}

type Compiled = (Automation, EventTrigger);

/// The prefix of the engine's event names (`pushpool.automation.triggered`, …).
const EVENT_PREFIX: &str = "pushpool.automation.";

/// The resource id of an automation in events.
pub(crate) fn automation_resource(id: Uuid) -> String {
    format!("pushpool.automation.{id}")
}

/// One automation's group states read or changed during a pass.
#[derive(Default)]
struct Groups {
    states: HashMap<(Uuid, String), Option<GroupState>>,
    dirty: Vec<(Uuid, String)>,
}

impl Groups {
    async fn get(
        &mut self,
        tx: &mut Tx,
        automation: Uuid,
        key: &str,
    ) -> Result<Option<GroupState>> {
        let k = (automation, key.to_string());
        if let Some(s) = self.states.get(&k) {
            return Ok(s.clone());
        }
        let row = sqlx::query(
            "SELECT state FROM automation_groups WHERE automation_id = $1 AND group_key = $2",
        )
        .bind(automation.to_string())
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        let state = match row {
            Some(r) => serde_json::from_str(&r.try_get::<String, _>("state")?).ok(),
            None => None,
        };
        self.states.insert(k, state.clone());
        Ok(state)
    }

    fn set(&mut self, automation: Uuid, key: &str, state: Option<GroupState>) {
        let k = (automation, key.to_string());
        self.dirty.push(k.clone());
        self.states.insert(k, state);
    }

    async fn write(&mut self, tx: &mut Tx, triggers: &HashMap<Uuid, &EventTrigger>) -> Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        for k in dirty {
            let state = self.states.get(&k).cloned().flatten();
            match (state, triggers.get(&k.0)) {
                (Some(s), Some(t)) => {
                    sqlx::query(
                        "INSERT INTO automation_groups (automation_id, group_key, state, due) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (automation_id, group_key) \
                         DO UPDATE SET state = excluded.state, due = excluded.due",
                    )
                    .bind(k.0.to_string())
                    .bind(&k.1)
                    .bind(to_text(&s))
                    .bind(evaluate::due_at(t, &s))
                    .execute(&mut **tx)
                    .await?;
                }
                _ => {
                    sqlx::query(
                        "DELETE FROM automation_groups WHERE automation_id = $1 AND group_key = $2",
                    )
                    .bind(k.0.to_string())
                    .bind(&k.1)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Locks the engine's cursor for this transaction; `None` when another pass holds it.
    async fn lock_cursor(&self, tx: &mut Tx) -> Result<Option<i64>> {
        let sql = match self.backend() {
            Backend::Postgres => {
                "SELECT seq FROM automation_cursor WHERE name = 'engine' FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => "SELECT seq FROM automation_cursor WHERE name = 'engine'",
        };
        let row = sqlx::query(sql).fetch_optional(&mut **tx).await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("seq")?),
            None => None,
        })
    }

    /// One evaluation pass: reads up to `batch` events after the cursor, moves every enabled
    /// automation's group state, closes proactive windows that ended by the horizon (`now` less
    /// `settle`, the time by which every event is in the log), and records the firings with
    /// their actions; all in one transaction that also moves the cursor.
    pub async fn evaluate_automations(
        &self,
        batch: i64,
        now: Micros,
        settle: Duration,
    ) -> Result<EvaluationReport> {
        let mut tx = self.begin().await?;
        let Some(cursor) = self.lock_cursor(&mut tx).await? else {
            return Ok(EvaluationReport {
                busy: true,
                ..EvaluationReport::default()
            });
        };
        let compiled: Vec<Compiled> = self
            .enabled_automations()
            .await?
            .into_iter()
            .filter_map(|a| {
                let t = a.trigger.compile().ok()?;
                Some((a, t))
            })
            .collect();
        let mut by_ws: HashMap<Uuid, Vec<&Compiled>> = HashMap::new();
        for c in &compiled {
            by_ws.entry(c.0.workspace_id).or_default().push(c);
        }
        let triggers: HashMap<Uuid, &EventTrigger> =
            compiled.iter().map(|(a, t)| (a.id, t)).collect();
        let by_id: HashMap<Uuid, &Automation> = compiled.iter().map(|(a, _)| (a.id, a)).collect();

        let events = self.automation_events_after(cursor, batch).await?;
        let caught_up = (events.len() as i64) < batch;
        let mut groups = Groups::default();
        let mut fires: Vec<(Uuid, String, Fire)> = vec![];
        let mut last_seq = cursor;
        let mut last_occurred = None;
        for ev in &events {
            last_seq = last_seq.max(ev.seq);
            last_occurred = Some(ev.occurred.timestamp_micros());
            let Some(list) = by_ws.get(&ev.workspace_id) else {
                continue;
            };
            for (a, t) in list.iter().map(|c| (&c.0, &c.1)) {
                // An automation never triggers itself through its own events, nor counts events
                // from before it existed.
                if ev.resource_id.ends_with(&a.id.to_string()) || ev.occurred < a.created {
                    continue;
                }
                let rel = t.relevance(ev);
                if !rel.any() {
                    continue;
                }
                let Some(key) = t.group_key(ev) else { continue };
                let state = groups.get(&mut tx, a.id, &key).await?;
                let step = evaluate::on_event(t, state, ev, rel);
                groups.set(a.id, &key, step.state);
                if let Some(f) = step.fire {
                    fires.push((a.id, key, f));
                }
            }
        }
        groups.write(&mut tx, &triggers).await?;

        let settled = now.saturating_sub(i64::try_from(settle.as_micros()).unwrap_or(0));
        let horizon = match (caught_up, last_occurred) {
            (true, _) => settled,
            (false, Some(at)) => at.min(settled),
            (false, None) => settled,
        };
        let due = sqlx::query(
            "SELECT automation_id, group_key, state FROM automation_groups \
             WHERE due IS NOT NULL AND due <= $1 ORDER BY due LIMIT 1000",
        )
        .bind(horizon)
        .fetch_all(&mut *tx)
        .await?;
        for row in due {
            let id = get_uuid(&row, "automation_id")?;
            let key: String = row.try_get("group_key")?;
            let Some(t) = triggers.get(&id) else {
                // Disabled since, or gone: its state goes.
                groups.set(id, &key, None);
                continue;
            };
            let Ok(state) = serde_json::from_str::<GroupState>(&row.try_get::<String, _>("state")?)
            else {
                groups.set(id, &key, None);
                continue;
            };
            let step = evaluate::on_time(t, &key, state, horizon);
            groups.set(id, &key, step.state);
            if let Some(f) = step.fire {
                fires.push((id, key, f));
            }
        }
        groups.write(&mut tx, &triggers).await?;

        let mut fired = 0;
        for (id, key, fire) in fires {
            if let Some(a) = by_id.get(&id) {
                if record_firing(&mut tx, a, &key, &fire).await? {
                    fired += 1;
                }
            }
        }
        sqlx::query("UPDATE automation_cursor SET seq = $1, updated = $2 WHERE name = 'engine'")
            .bind(last_seq)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(EvaluationReport {
            busy: false,
            events: events.len(),
            fired,
            caught_up,
        })
    }

    /// Claims up to `limit` actions that are due, for `lease`: the first action of each firing
    /// not yet done (a firing's actions run in order).
    pub async fn claim_automation_actions(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedAction>> {
        let now = now_micros();
        let mut tx = self.begin().await?;
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "SELECT a.id FROM automation_actions a WHERE a.status = 'pending' AND a.not_before <= $1 \
             AND (a.lease_until IS NULL OR a.lease_until < $1) \
             AND NOT EXISTS (SELECT 1 FROM automation_actions b WHERE b.firing_id = a.firing_id \
                             AND b.position < a.position AND b.status = 'pending') \
             ORDER BY a.created, a.position LIMIT $2{lock}"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4));
        let mut out = vec![];
        for row in rows {
            let id: String = row.try_get("id")?;
            sqlx::query(
                "UPDATE automation_actions SET lease_owner = $1, lease_until = $2, \
                 attempts = attempts + 1, updated = $3 WHERE id = $4",
            )
            .bind(owner)
            .bind(until)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            let r = sqlx::query(
                "SELECT a.id, a.firing_id, a.automation_id, a.workspace_id, a.position, a.action, \
                 a.attempts, f.context FROM automation_actions a \
                 JOIN automation_firings f ON f.id = a.firing_id WHERE a.id = $1",
            )
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            let action: String = r.try_get("action")?;
            let context: String = r.try_get("context")?;
            out.push(ClaimedAction {
                id: get_uuid(&r, "id")?,
                firing_id: get_uuid(&r, "firing_id")?,
                automation_id: get_uuid(&r, "automation_id")?,
                workspace_id: get_uuid(&r, "workspace_id")?,
                position: r.try_get::<i64, _>("position")? as u32,
                action: serde_json::from_str(&action)
                    .map_err(|e| StoreError::Corrupt(format!("automation action: {e}")))?,
                context: serde_json::from_str(&context).unwrap_or(Value::Null),
                attempts: r.try_get::<i64, _>("attempts")? as u32,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records how a claimed action ended (if `owner` still holds it), with its event
    /// `automation.action.succeeded` or `automation.action.failed`; a retry keeps it pending.
    /// False when the lease was lost (another controller took it over).
    pub async fn finish_automation_action(
        &self,
        claimed: &ClaimedAction,
        owner: &str,
        result: ActionResult,
        max_attempts: u32,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = self
            .mark_automation_action(&mut tx, claimed, owner, result, max_attempts)
            .await?;
        if done {
            tx.commit().await?;
        }
        Ok(done)
    }

    /// [`Store::finish_automation_action`] inside `tx` (which the caller commits, e.g. with the
    /// notification the action enqueued in it).
    pub(crate) async fn mark_automation_action(
        &self,
        tx: &mut Tx,
        claimed: &ClaimedAction,
        owner: &str,
        result: ActionResult,
        max_attempts: u32,
    ) -> Result<bool> {
        let now = now_micros();
        let (status, text, not_before) = match &result {
            ActionResult::Succeeded(v) => ("succeeded", v.clone(), now),
            ActionResult::Failed(e) => ("failed", json!({"error": e}), now),
            ActionResult::Retry(e, after) if claimed.attempts < max_attempts => (
                "pending",
                json!({"error": e, "retrying": true}),
                now.saturating_add(i64::try_from(after.as_micros()).unwrap_or(0)),
            ),
            ActionResult::Retry(e, _) => ("failed", json!({"error": e}), now),
        };
        let done = sqlx::query(
            "UPDATE automation_actions SET status = $1, result = $2, not_before = $3, \
             lease_owner = NULL, lease_until = NULL, updated = $4 \
             WHERE id = $5 AND lease_owner = $6 AND status = 'pending'",
        )
        .bind(status)
        .bind(text.to_string())
        .bind(not_before)
        .bind(now)
        .bind(claimed.id.to_string())
        .bind(owner)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if status != "pending" {
            let mut payload = json!({
                "firing_id": claimed.firing_id,
                "position": claimed.position,
                "type": claimed.action.kind(),
                "attempts": claimed.attempts,
            });
            if status == "succeeded" {
                payload["result"] = text;
            } else {
                payload["error"] = text["error"].clone();
            }
            insert_event(
                tx,
                claimed.workspace_id,
                &format!("{EVENT_PREFIX}action.{status}"),
                &automation_resource(claimed.automation_id),
                &payload,
            )
            .await?;
        }
        Ok(true)
    }

    /// Events after `seq` in the log's order, as triggers see them.
    /// Handed out by [`Store::events_after`], whose settle rule makes sure a cursor moved past
    /// an event never skips one committed later with a lower `seq` (docs/events.md).
    async fn automation_events_after(&self, seq: i64, limit: i64) -> Result<Vec<EventFacts>> {
        Ok(self
            .events_after(seq, limit)
            .await?
            .iter()
            .map(EventFacts::from)
            .collect())
    }
}

/// Records a firing unless its occurrence already fired, with its actions and its event
/// `automation.triggered`; true when recorded.
async fn record_firing(tx: &mut Tx, a: &Automation, key: &str, fire: &Fire) -> Result<bool> {
    let id = Uuid::now_v7();
    let now = now_micros();
    let context = build(&FiringInfo {
        id,
        automation_id: a.id,
        automation_name: &a.name,
        occurrence: &fire.occurrence,
        group: key,
        count: fire.count,
        event: fire.event.as_ref(),
    });
    let inserted = sqlx::query(
        "INSERT INTO automation_firings (id, automation_id, workspace_id, occurrence, group_key, \
         event_id, count, context, fired) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (automation_id, occurrence) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(a.id.to_string())
    .bind(a.workspace_id.to_string())
    .bind(&fire.occurrence)
    .bind(key)
    .bind(fire.event_id.clone())
    .bind(fire.count as i64)
    .bind(context.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    for (i, action) in a.actions.iter().enumerate() {
        sqlx::query(
            "INSERT INTO automation_actions (id, firing_id, automation_id, workspace_id, position, \
             action, status, attempts, not_before, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(id.to_string())
        .bind(a.id.to_string())
        .bind(a.workspace_id.to_string())
        .bind(i as i64)
        .bind(to_text(action))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    insert_event(
        tx,
        a.workspace_id,
        &format!("{EVENT_PREFIX}triggered"),
        &automation_resource(a.id),
        &json!({
            "name": a.name,
            "firing_id": id,
            "occurrence": fire.occurrence,
            "group": key,
            "count": fire.count,
            "triggering_event": fire.event_id,
            "actions": a.actions.len(),
        }),
    )
    .await?;
    Ok(true)
}
