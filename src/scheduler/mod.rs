//! The scheduler service: keeps a window of future runs for every active schedule, creates each
//! slot's run exactly once (the store's unique `(schedule, slot)` key), and catches up slots
//! missed while no scheduler ran according to each schedule's `catchup` policy.
//!
//! It runs inside `pushpool up` and `pushpool controller`; several may run against one store.
//! Time comes from a [`Clock`], so tests drive it with a [`ManualClock`] and call
//! [`Scheduler::tick`] without waiting.

mod plan;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::Deployment;
use crate::schedule::Schedule;
use crate::store::{Result, ScheduleBatch, SlotRun, Store, StoreError};

pub use plan::{plan, Plan};

/// Where the scheduler's "now" comes from.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(at)))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How far ahead the scheduler keeps runs, and how it catches up.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Keep at least this many future runs per schedule (default 3) …
    pub min_runs: usize,
    /// … and runs at least this far ahead (default 1 hour),
    pub min_time: chrono::Duration,
    /// but never more than this many future runs (default 100) …
    pub max_runs: usize,
    /// … nor further ahead than this (default 100 days).
    pub max_time: chrono::Duration,
    /// `catchup: all` creates at most this many missed slots (the latest; default 100).
    pub catchup_limit: usize,
    /// Time between ticks (default 10 s).
    pub interval: Duration,
    /// Schedules read per page (default 1,000).
    pub page: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            min_runs: 3,
            min_time: chrono::Duration::hours(1),
            max_runs: 100,
            max_time: chrono::Duration::days(100),
            catchup_limit: 100,
            interval: Duration::from_secs(10),
            page: 1000,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Active schedules looked at.
    pub schedules: usize,
    /// Runs created (slots whose run already existed are not counted).
    pub created: u64,
    /// Of the planned slots, how many were missed ones (catch-up).
    pub missed: usize,
}

/// The scheduler service.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler on `store` with the system clock.
    pub fn new(store: Store, config: SchedulerConfig) -> Scheduler {
        Scheduler::with_clock(store, config, Arc::new(SystemClock))
    }

    /// A scheduler with its own clock (tests).
    pub fn with_clock(store: Store, config: SchedulerConfig, clock: Arc<dyn Clock>) -> Scheduler {
        Scheduler {
            store,
            config,
            clock,
        }
    }

    /// One pass over every active schedule: creates the runs its window and catch-up policy
    /// call for.
    pub async fn tick(&self) -> Result<TickReport> {
        let now = self.clock.now();
        let mut report = TickReport::default();
        let mut after: Option<Uuid> = None;
        loop {
            let (page, last) = self.store.active_schedules(after, self.config.page).await?;
            let Some(last) = last else { break };
            after = Some(last);
            report.schedules += page.len();
            let mut plans = Vec::new();
            for batch in &page {
                match plan(&batch.schedule, now, &self.config) {
                    Ok(Some(p)) => {
                        report.missed += p.missed;
                        plans.push(SlotRun {
                            batch,
                            slots: p.slots,
                            last_slot: Some(p.last_slot),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(schedule = %batch.schedule.id, error = %e, "schedule cannot be evaluated; skipped")
                    }
                }
            }
            report.created += self.store.create_slot_runs(&plans).await?;
        }
        Ok(report)
    }

    /// Ticks every `config.interval` until `stop` turns true; store errors are logged and the
    /// next tick tries again.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.tick().await {
                Ok(r) if r.created > 0 => {
                    tracing::debug!(
                        created = r.created,
                        schedules = r.schedules,
                        "scheduler tick"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduler tick failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Creates the runs of `deployment`'s slots in `[from, to]` (of one schedule or all of them),
/// at most `limit` slots per schedule; slots that already have a run keep it. Returns the slots
/// found and the runs created.
pub async fn backfill(
    store: &Store,
    deployment: &Deployment,
    schedules: &[Schedule],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Result<(usize, u64)> {
    let mut batches = vec![];
    let mut slots = vec![];
    for s in schedules {
        let rec = s.recurrence().map_err(|e| StoreError::Invalid {
            field: e.field.into(),
            message: e.message,
        })?;
        let found: Vec<DateTime<Utc>> = rec
            .between(from - chrono::Duration::microseconds(1), to, limit + 1)
            .iter()
            .map(|slot| slot.at)
            .collect();
        if found.len() > limit {
            return Err(StoreError::Invalid {
                field: "to".into(),
                message: format!(
                    "the range holds more than {limit} slots of schedule {}; backfill a shorter range",
                    s.id
                ),
            });
        }
        batches.push(ScheduleBatch {
            schedule: s.clone(),
            deployment: deployment.clone(),
        });
        slots.push(found);
    }
    let plans: Vec<SlotRun> = batches
        .iter()
        .zip(slots)
        .map(|(batch, slots)| SlotRun {
            batch,
            slots,
            last_slot: None,
        })
        .collect();
    let found = plans.iter().map(|p| p.slots.len()).sum();
    let created = store.create_slot_runs(&plans).await?;
    Ok((found, created))
}
