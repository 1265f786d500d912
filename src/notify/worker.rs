//! The delivery worker inside `up` and `controller`: claims due deliveries from the outbox,
//! attempts each, and records the outcome. A retriable failure is tried again after an
//! exponential backoff ([`backon`]'s schedule, with jitter) until the delivery's deadline; then,
//! or at once for a failure retrying cannot cure (a refused target, a 4xx answer), the delivery
//! is recorded `failed` with an event. Several workers (controllers) on one PostgreSQL store
//! claim disjoint deliveries; a claim is a lease, so a crashed worker's deliveries are claimed
//! again when it expires.

use std::sync::OnceLock;
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio::sync::Notify;

use super::send;
use super::ssrf::TargetPolicy;
use crate::model::now_micros;
use crate::store::{AttemptOutcome, Delivery, Store, StoreError};

fn wakeup() -> &'static Notify {
    static WAKE: OnceLock<Notify> = OnceLock::new();
    WAKE.get_or_init(Notify::new)
}

/// Wakes this process's delivery workers (after enqueueing).
pub fn wake() {
    wakeup().notify_waiters();
    wakeup().notify_one();
}

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Which outbound targets are allowed (`--allow-private-targets`).
    pub policy: TargetPolicy,
    /// Longest wait between looks at the outbox.
    pub poll: Duration,
    /// How long a claim holds a delivery (longer than one attempt can take).
    pub lease: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Backoff after the first failed attempt.
    pub min_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Most deliveries attempted at once.
    pub batch: i64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            policy: TargetPolicy::default(),
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(120),
            timeout: Duration::from_secs(15),
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            batch: 16,
        }
    }
}

impl NotifyConfig {
    /// The wait before attempt `attempt + 1` after `attempt` failed ones (backon's exponential
    /// schedule: min, 2×min, 4×min, … up to max, with jitter).
    pub fn backoff(&self, attempt: i64) -> Duration {
        let mut schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let n = attempt.clamp(1, 64) as usize;
        schedule.nth(n - 1).unwrap_or(self.max_backoff)
    }
}

/// A delivery worker.
#[derive(Debug, Clone)]
pub struct Worker {
    store: Store,
    id: String,
    config: NotifyConfig,
    client: reqwest::Client,
}

impl Worker {
    /// A worker named `id` (the controller's id) on `store`.
    pub fn new(store: Store, id: impl Into<String>, config: NotifyConfig) -> Worker {
        let client = config.policy.client(config.timeout);
        Worker {
            store,
            id: id.into(),
            config,
            client,
        }
    }

    /// Claims the due deliveries and attempts them; how many it attempted.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let lease_until = now_micros() + self.config.lease.as_micros() as i64;
        let due = self
            .store
            .claim_deliveries(&self.id, lease_until, self.config.batch)
            .await?;
        let n = due.len();
        let results = futures::future::join_all(due.iter().map(|d| self.attempt(d))).await;
        for r in results {
            r?;
        }
        Ok(n)
    }

    async fn attempt(&self, d: &Delivery) -> Result<(), StoreError> {
        let result = send::deliver(
            &self.store,
            &self.client,
            self.config.policy,
            self.config.timeout,
            d,
        )
        .await;
        let outcome = match result {
            Ok(()) => AttemptOutcome::Delivered,
            Err(e) if !e.retriable => AttemptOutcome::Failed(e.message),
            Err(e) => {
                let now = now_micros();
                let deadline = d.deadline.timestamp_micros();
                if now >= deadline {
                    AttemptOutcome::Failed(format!(
                        "gave up after {} attempts (retry window ended): {}",
                        d.attempts, e.message
                    ))
                } else {
                    let next = now + self.config.backoff(d.attempts).as_micros() as i64;
                    AttemptOutcome::Retry(next.min(deadline), e.message)
                }
            }
        };
        match &outcome {
            AttemptOutcome::Delivered => {
                tracing::debug!(delivery = %d.id, kind = %d.kind, "notification delivered")
            }
            AttemptOutcome::Retry(_, e) => {
                tracing::info!(delivery = %d.id, kind = %d.kind, attempts = d.attempts, error = %e, "notification delivery failed; will retry")
            }
            AttemptOutcome::Failed(e) => {
                tracing::warn!(delivery = %d.id, kind = %d.kind, attempts = d.attempts, error = %e, "notification delivery failed")
            }
        }
        self.store.finish_delivery(d, &self.id, &outcome).await?;
        Ok(())
    }

    /// Runs until `stop` turns true: delivers what is due, then sleeps until the next delivery
    /// is due, something is enqueued in this process, or `poll` passes.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.tick().await {
                Ok(n) if n as i64 >= self.config.batch => Duration::ZERO,
                Ok(_) => match self.store.next_delivery_due().await {
                    Ok(Some(at)) => {
                        let micros = (at - now_micros()).max(0) as u64;
                        Duration::from_micros(micros).min(self.config.poll)
                    }
                    _ => self.config.poll,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "notification worker: store error; retrying");
                    self.config.poll
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = wakeup().notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = NotifyConfig {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..NotifyConfig::default()
        };
        let first = c.backoff(1);
        assert!(
            first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
            "{first:?}"
        );
        let third = c.backoff(3);
        assert!(third >= Duration::from_secs(4), "{third:?}");
        assert!(c.backoff(30) <= Duration::from_secs(20));
    }
}
