//! The retention pruner: deletes events older than the `events.retention_days` setting (default
//! 30), once at start and then every [`PRUNE_EVERY`], inside `pushpool up` and `pushpool
//! controller`. Several controllers pruning at once is harmless (deletes are idempotent).

use std::time::Duration;

use chrono::Utc;

use crate::store::Store;

/// How often the pruner runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Rows deleted per transaction.
const BATCH: i64 = 5_000;

/// One pruning pass: deletes events recorded more than the retention period ago; how many.
pub async fn prune_once(store: &Store) -> crate::store::Result<u64> {
    let days = store.event_retention_days().await?;
    store
        .prune_events(Utc::now() - chrono::Duration::days(days), BATCH)
        .await
}

/// The environment variable that sets the retention (days, 1–36500) for the whole instance
/// when `up` or `controller` starts; without it the stored setting (default 30) stays.
pub const RETENTION_ENV: &str = "PUSHPOOL_EVENT_RETENTION_DAYS";

/// Stores the retention given in [`RETENTION_ENV`], if any (an invalid value is reported and
/// ignored).
async fn apply_env_retention(store: &Store) {
    let Ok(raw) = std::env::var(RETENTION_ENV) else {
        return;
    };
    match raw.trim().parse::<i64>() {
        Ok(days) if (1..=36_500).contains(&days) => {
            if let Err(e) = store
                .set_setting(
                    crate::store::EVENT_RETENTION_DAYS_SETTING,
                    &days.to_string(),
                )
                .await
            {
                tracing::warn!(error = %e, "cannot store the event retention");
            }
        }
        _ => {
            tracing::warn!(value = %raw, "{RETENTION_ENV} must be a number of days from 1 to 36500; ignored")
        }
    }
}

/// Prunes now and every [`PRUNE_EVERY`] until `stop` turns true.
pub async fn run(store: Store, mut stop: tokio::sync::watch::Receiver<bool>) {
    apply_env_retention(&store).await;
    loop {
        match prune_once(&store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old events; trying again later"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
