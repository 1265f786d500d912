//! Retry policies and tags as the store keeps them (issue 13): JSON text columns on
//! `deployments` and `flow_runs` (NULL for the default policy and no tags), and one
//! `flow_run_tags` row per tag of a run for the run list's `tag` filter.

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::sql::insert_rows;
use super::{Result, StoreError, Tx};
use crate::state::RetryPolicy;

/// The column text of a retry policy (NULL for the default).
pub(crate) fn policy_text(policy: &RetryPolicy) -> Option<String> {
    (*policy != RetryPolicy::default()).then(|| serde_json::to_string(policy).unwrap_or_default())
}

/// The column text of tags (NULL for none).
pub(crate) fn tags_text(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_default())
}

/// The retry policy in column `retry_policy` of `row`.
pub(crate) fn policy_from_row(row: &AnyRow) -> Result<RetryPolicy> {
    match row.try_get::<Option<String>, _>("retry_policy")? {
        None => Ok(RetryPolicy::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("retry_policy: {e}"))),
    }
}

/// The tags in column `tags` of `row`.
pub(crate) fn tags_from_row(row: &AnyRow) -> Result<Vec<String>> {
    match row.try_get::<Option<String>, _>("tags")? {
        None => Ok(vec![]),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))
        }
    }
}

/// Indexes a new run's tags.
pub(crate) async fn insert_run_tags(
    tx: &mut Tx,
    run_id: Uuid,
    workspace_id: Uuid,
    tags: &[String],
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let head = "INSERT INTO flow_run_tags (run_id, workspace_id, tag)";
    insert_rows(tx, head, 3, 500, tags, |q, tag| {
        q.bind(run_id.to_string())
            .bind(workspace_id.to_string())
            .bind(tag.clone())
    })
    .await
}
