//! The automation service inside `pushpool up` and `pushpool controller`: evaluates triggers
//! over the event log ([`Store::evaluate_automations`]) and does the firings' actions. Several
//! may run against one store; see the module documentation of [`super`] for why each
//! occurrence fires once. Time comes from a [`Clock`], so tests move it by hand and call
//! [`Engine::tick`].

use std::sync::Arc;
use std::time::Duration;

use crate::model::to_micros;
use crate::scheduler::{Clock, SystemClock};
use crate::store::{EvaluationReport, Result, Store};

/// How the engine works.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Who holds claimed actions (the controller id).
    pub id: String,
    /// Time between passes when nothing wakes it (default 500 ms).
    pub interval: Duration,
    /// Events read per pass (default 1,000).
    pub batch: i64,
    /// How long after an event happened it is surely in the log; proactive windows close only
    /// this long after their end (default: the event log's settle lag plus 1 s).
    pub settle: Duration,
    /// How long a claimed action is held before another controller may take it over (60 s).
    pub lease: Duration,
    /// Tries of an action that keeps failing in a retriable way (default 5).
    pub max_attempts: u32,
    /// Passes per tick at most, when far behind (default 20).
    pub max_passes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            id: format!("automations-{}", uuid::Uuid::new_v4().simple()),
            interval: Duration::from_millis(500),
            batch: 1000,
            settle: crate::store::EVENT_SETTLE + Duration::from_secs(1),
            lease: Duration::from_secs(60),
            max_attempts: 5,
            max_passes: 20,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Events evaluated.
    pub events: usize,
    /// Firings recorded.
    pub fired: usize,
    /// Actions done (succeeded, failed or put back for a retry).
    pub actions: usize,
    /// Passes skipped because another engine held the cursor.
    pub busy: usize,
}

/// The automation service.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on `store` with the system clock.
    pub fn new(store: Store, config: EngineConfig) -> Engine {
        Engine::with_clock(store, config, Arc::new(SystemClock))
    }

    /// An engine with its own clock (tests).
    pub fn with_clock(store: Store, config: EngineConfig, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            store,
            config,
            clock,
        }
    }

    /// One evaluation pass.
    pub async fn evaluate(&self) -> Result<EvaluationReport> {
        self.store
            .evaluate_automations(
                self.config.batch,
                to_micros(self.clock.now()),
                self.config.settle,
            )
            .await
    }

    /// Claims and does due actions until none is left (at most 100 per call).
    pub async fn do_actions(&self) -> Result<usize> {
        let mut done = 0;
        while done < 100 {
            let claimed = self
                .store
                .claim_automation_actions(&self.config.id, self.config.lease, 10)
                .await?;
            if claimed.is_empty() {
                break;
            }
            for c in claimed {
                if matches!(
                    c.action,
                    super::Action::SendNotification { .. } | super::Action::CallWebhook { .. }
                ) {
                    super::notify_bridge::deliver(
                        &self.store,
                        &c,
                        &self.config.id,
                        self.config.max_attempts,
                    )
                    .await?;
                    done += 1;
                    continue;
                }
                let result = super::execute::execute(&self.store, &c).await;
                if let crate::store::ActionResult::Failed(e) = &result {
                    tracing::warn!(automation = %c.automation_id, action = c.action.kind(), error = %e, "automation action failed");
                }
                self.store
                    .finish_automation_action(&c, &self.config.id, result, self.config.max_attempts)
                    .await?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// Evaluates until caught up (or `max_passes`), then does the due actions.
    pub async fn tick(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        for _ in 0..self.config.max_passes.max(1) {
            let pass = self.evaluate().await?;
            if pass.busy {
                report.busy += 1;
                break;
            }
            report.events += pass.events;
            report.fired += pass.fired;
            if pass.caught_up {
                break;
            }
        }
        report.actions = self.do_actions().await?;
        Ok(report)
    }

    /// Ticks every `interval` (sooner when the store signals changes) until `stop` turns true.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let changes = self.store.changes();
        loop {
            if *stop.borrow() {
                return;
            }
            match self.tick().await {
                Ok(r) if r.fired > 0 || r.actions > 0 => {
                    tracing::debug!(
                        events = r.events,
                        fired = r.fired,
                        actions = r.actions,
                        "automations tick"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "automations tick failed; retrying"),
            }
            let woken = tokio::select! {
                r = stop.changed() => {
                    if r.is_err() {
                        return;
                    }
                    false
                }
                _ = changes.notified() => true,
                _ = tokio::time::sleep(self.config.interval) => false,
            };
            if woken {
                // Let the change's events commit and batch up.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
