//! How claims stay exclusive: each live pushpool controller takes its own share of a pool's
//! runs ([`PrefectPlane::peers`]), and after Prefect accepted a PENDING proposal the claimer
//! checks it was the first ([`PrefectPlane::first_pending`]).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{lock, PrefectPlane, PEERS_TTL};
use crate::controller::plane::PlaneResult;
use crate::controller::prefect::client::segment;
use crate::controller::prefect::convert::PfState;

impl PrefectPlane {
    /// True when `ours` is the first PENDING state since the run was last SCHEDULED. Prefect's
    /// rule that aborts a second PENDING proposal is the claim's lock, but a Prefect server on
    /// SQLite (no row locks) was seen accepting two proposals made at the same moment, 280 ms
    /// apart. Every claimer checks the history after its accepted proposal and only the first
    /// PENDING goes on: a later one sees the earlier in the history; an earlier one may not see
    /// a later one yet, and does not need to.
    pub(super) async fn first_pending(
        &self,
        run_id: Uuid,
        ours: Option<&PfState>,
    ) -> PlaneResult<bool> {
        let Some(ours) = ours.and_then(|s| s.id) else {
            return Ok(true); // a server that does not say which state it set: trust the rule
        };
        let states = self
            .client
            .get(&format!("/flow_run_states/?flow_run_id={run_id}"))
            .await?;
        let mut states: Vec<PfState> = states
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_value(s.clone()).ok())
            .collect();
        states.sort_by_key(|s| (s.timestamp, s.id));
        let since = states
            .iter()
            .rposition(|s| s.state_type == "SCHEDULED")
            .map_or(0, |i| i + 1);
        let first = states[since.min(states.len())..]
            .iter()
            .find(|s| s.state_type == "PENDING")
            .and_then(|s| s.id);
        Ok(first.is_none_or(|f| f == ours))
    }

    /// Live pushpool controllers of a pool (fresh heartbeats), sorted; this one included.
    pub(super) async fn live_controllers(&self, pool: &str) -> PlaneResult<Vec<String>> {
        let path = format!("/work_pools/{}/workers/filter", segment(pool));
        let answer = self.client.post(&path, &json!({})).await?;
        let fresh = chrono::Duration::from_std(self.settings.orphan_after).unwrap_or_default();
        let now = Utc::now();
        let mut live: Vec<String> = answer
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| {
                w.get("last_heartbeat_time")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| now - t.with_timezone(&Utc) < fresh)
            })
            .filter_map(|w| w.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if !live.contains(&self.id) {
            live.push(self.id.clone());
        }
        live.sort();
        Ok(live)
    }

    /// The pushpool controllers serving `pool` now (names starting with `pushpool`, and this
    /// one), sorted; listed at most every [`PEERS_TTL`].
    pub(super) async fn peers(&self, pool: &str) -> PlaneResult<Vec<String>> {
        if let Some((at, peers)) = lock(&self.peers).get(pool) {
            if at.elapsed() < PEERS_TTL {
                return Ok(peers.clone());
            }
        }
        let peers: Vec<String> = self
            .live_controllers(pool)
            .await?
            .into_iter()
            .filter(|n| n.starts_with("pushpool") || *n == self.id)
            .collect();
        lock(&self.peers).insert(pool.to_string(), (std::time::Instant::now(), peers.clone()));
        Ok(peers)
    }
}
