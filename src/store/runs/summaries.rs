//! Error summaries of FAILED and CRASHED runs (docs/error-summaries.md): one row per run, for
//! its latest failed attempt, written with the transition that ended the attempt (or later,
//! when the final log read sharpens it).

use pushpool_provider::ErrorSummary;
use sqlx::Row;
use uuid::Uuid;

use crate::model::{now_micros, FlowRun};
use crate::state::StateType;
use crate::store::sql::storable;
use crate::store::{Result, Store, StoreError, Tx};

/// Writes (or replaces) the summary of `run_id`'s attempt `attempt` inside `tx`.
pub(super) async fn write_summary(
    tx: &mut Tx,
    run_id: Uuid,
    attempt: i64,
    summary: &ErrorSummary,
) -> Result<()> {
    let text = serde_json::to_string(summary).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO run_error_summaries (run_id, attempt, summary, updated) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt, summary = excluded.summary, \
         updated = excluded.updated",
    )
    .bind(run_id.to_string())
    .bind(attempt)
    .bind(storable(&text).into_owned())
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records why attempt `attempt` of a run failed (replacing an earlier summary).
    pub async fn record_error_summary(
        &self,
        run_id: Uuid,
        attempt: i64,
        summary: &ErrorSummary,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        write_summary(&mut tx, run_id, attempt, summary).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored summary of a run's latest failed attempt, with that attempt.
    pub async fn error_summary(&self, run_id: Uuid) -> Result<Option<(i64, ErrorSummary)>> {
        let row = sqlx::query("SELECT attempt, summary FROM run_error_summaries WHERE run_id = $1")
            .bind(run_id.to_string())
            .fetch_optional(self.db())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("summary")?;
        let summary =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some((row.try_get("attempt")?, summary)))
    }

    /// `run` with its error summary filled in when it is FAILED or CRASHED in the attempt the
    /// summary is about.
    pub async fn with_error_summary(&self, mut run: FlowRun) -> Result<FlowRun> {
        if matches!(run.state.state_type, StateType::Failed | StateType::Crashed) {
            if let Some((attempt, summary)) = self.error_summary(run.id).await? {
                if attempt == run.attempt {
                    run.error_summary = Some(summary);
                }
            }
        }
        Ok(run)
    }
}
