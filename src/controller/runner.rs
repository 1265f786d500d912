//! The runtime around [`reconcile`]: the claim loop ([`Controller::run`], one step of it is
//! [`Controller::tick`]) and one task per run in flight, which sleeps for what each reconcile
//! returns and wakes early on changes. A run never has two tasks in one controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::context::{Context, RunWork};
use super::plane::{Guard, PlaneError};
use super::reconcile::{error_policy, propose, reconcile};
use crate::model::FlowRun;
use crate::state::{Proposal, StateType};
use crate::store::WorkspaceQuota;

/// Orphaned runs looked at per tick.
const ORPHANS_PER_TICK: usize = 100;
/// Shortest pause between two full ticks (adoption, cancel scan); claims run as often as needed.
const FULL_TICK_EVERY: Duration = Duration::from_millis(250);

/// Summary of one [`Controller::tick`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Runs claimed.
    pub claimed: usize,
    /// Orphaned runs adopted.
    pub adopted: usize,
    /// Runs renamed `Late`.
    pub late: usize,
    /// Silent runs crashed.
    pub zombies: usize,
}

/// One run in flight: how to wake its task, and its workspace (for the per-workspace quota).
struct Slot {
    wake: Arc<Notify>,
    workspace: Uuid,
    /// The run's next attempt, claimed while this task was still finishing the previous one
    /// (a retry due at once): the task drives it next (one task per run, never two).
    next: Option<FlowRun>,
}

/// Runs in flight by run id.
type Slots = Arc<Mutex<HashMap<Uuid, Slot>>>;

/// A controller: the claim loop plus one task per run in flight.
#[derive(Clone)]
pub struct Controller {
    ctx: Arc<Context>,
    in_flight: Slots,
    /// Notified when a slot is freed, so a claim loop waiting for room wakes at once.
    freed: Arc<Notify>,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
    shutdown: watch::Sender<bool>,
    /// True while a provider sweep of leftover jobs runs ([`super::sweep`]).
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl Controller {
    /// A controller over this context.
    pub fn new(ctx: Context) -> Self {
        Controller {
            ctx: Arc::new(ctx),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            freed: Arc::new(Notify::new()),
            tasks: Arc::new(Mutex::new(tokio::task::JoinSet::new())),
            shutdown: watch::channel(false).0,
            sweeping: Arc::default(),
        }
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Runs this controller is driving now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Runs this controller is driving now, per workspace.
    pub fn in_flight_by_workspace(&self) -> HashMap<Uuid, usize> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut held: HashMap<Uuid, usize> = HashMap::new();
        for slot in map.values() {
            *held.entry(slot.workspace).or_default() += 1;
        }
        held
    }

    fn spawn_run(&self, run: FlowRun, adopted: bool) {
        let wake = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = map.get_mut(&run.id) {
                // One task per run, never two. A newer attempt claimed meanwhile is handed to
                // the running task, which drives it once the older attempt is done.
                if !adopted && slot.next.is_none() {
                    slot.next = Some(run);
                    slot.wake.notify_one();
                }
                return;
            }
            let wake = Arc::new(Notify::new());
            let slot = Slot {
                wake: wake.clone(),
                workspace: run.workspace_id,
                next: None,
            };
            map.insert(run.id, slot);
            wake
        };
        let ctx = self.ctx.clone();
        let slot = SlotGuard {
            in_flight: self.in_flight.clone(),
            freed: self.freed.clone(),
            run_id: run.id,
        };
        let shutdown = self.shutdown.subscribe();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.spawn(async move {
            // Moved in first, so it is dropped however the task ends (a panic included).
            let _slot = slot;
            let mut work = RunWork::new(run, adopted);
            loop {
                drive(ctx.clone(), work, wake.clone(), shutdown.clone()).await;
                match _slot.take_next() {
                    Some(next) => work = RunWork::new(next, false),
                    None => break,
                }
            }
        });
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }

    /// One step of the claim loop: adopt orphaned runs, wake runs asked to cancel, mark late
    /// runs, crash silent ones, claim due runs up to the free capacity and start a task for each,
    /// and let the providers sweep leftover jobs in the background.
    /// Tests call this directly.
    pub async fn tick(&self) -> Result<TickReport, PlaneError> {
        let mut report = TickReport::default();
        if *self.shutdown.borrow() {
            return Ok(report);
        }
        let plane = &self.ctx.plane;
        for orphan in plane.orphans(ORPHANS_PER_TICK).await? {
            if let Some(run) = plane.adopt(&orphan).await? {
                tracing::info!(run_id = %run.id, previous = ?orphan.lease_owner, "adopted an orphaned run");
                report.adopted += 1;
                self.spawn_run(run, true);
            }
        }
        for run in plane.cancellations().await? {
            let wake = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&run.id)
                .map(|slot| slot.wake.clone());
            match wake {
                Some(wake) if run.state.state_type == StateType::Cancelling => wake.notify_one(),
                Some(_) => {}
                None => self.spawn_run(run, true),
            }
        }
        report.late = plane.mark_late(self.ctx.config.late_after).await?;
        report.zombies = self.crash_silent_runs().await?;
        report.claimed = self.claim().await?;
        super::sweep::spawn(&self.ctx, &self.sweeping);
        Ok(report)
    }

    /// Crashes RUNNING runs whose job fell silent; returns how many.
    async fn crash_silent_runs(&self) -> Result<usize, PlaneError> {
        let silence = self.ctx.config.heartbeat_silence;
        let mut crashed = 0;
        for run in self.ctx.plane.silent_runs(silence).await? {
            let heard = run
                .last_heartbeat
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let message = format!(
                "the job stopped sending heartbeats: last heard from at {heard}, more than {}s ago",
                silence.as_secs()
            );
            let proposal = Proposal::new(StateType::Crashed).with_message(message);
            let guard = Guard::expecting(StateType::Running);
            let outcomes = self
                .ctx
                .plane
                .propose(run.id, vec![proposal], guard, None)
                .await?;
            if matches!(
                outcomes.first(),
                Some(crate::store::TransitionOutcome::Accepted(_))
            ) {
                crashed += 1;
            }
        }
        Ok(crashed)
    }

    /// Claims due runs up to the free capacity, no workspace past its quota, and starts a task
    /// for each; returns how many. Counting this controller's own slots needs no lock between
    /// replicas: each has its own quota, and one controller's claims never overlap.
    async fn claim(&self) -> Result<usize, PlaneError> {
        let capacity = self
            .ctx
            .config
            .max_in_flight
            .saturating_sub(self.in_flight());
        let limit = capacity.min(self.ctx.config.claim_batch);
        if limit == 0 {
            return Ok(0);
        }
        let quota = WorkspaceQuota::new(
            self.ctx.config.workspace_quota(),
            self.in_flight_by_workspace(),
        );
        let started = Instant::now();
        let claimed = self.ctx.plane.claim_due(limit, &quota).await?;
        self.ctx.metrics.claim_latency.observe(started.elapsed());
        let n = claimed.len();
        for run in claimed {
            self.spawn_run(run, false);
        }
        Ok(n)
    }

    /// Asks the controller to stop: no more claims; runs in flight are handed back or released.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Renews this controller's holds every third of a lease until shutdown.
    fn spawn_renewer(&self) -> tokio::task::JoinHandle<()> {
        let ctx = self.ctx.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let every = ctx.config.lease / 3;
            loop {
                if let Err(e) = ctx.plane.renew_all().await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
                if *shutdown.borrow() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {}
                }
            }
        })
    }

    /// How long the claim loop may sleep: until the next run falls due, at most `idle_max`, and
    /// at most 250 ms while runs are in flight (to see cancellations and orphans soon). Runs
    /// already due that the last claim left (a full limit, a workspace at its quota, no free
    /// slot) wait for a change or a freed slot, which wake the loop, not for a 5 ms poll that
    /// would rescan a large backlog continuously.
    async fn idle_time(&self) -> Duration {
        let idle_max = self.ctx.config.idle_max;
        let sleep_for = match self.ctx.plane.next_due().await {
            Ok(Some(next)) => match (next - Utc::now()).to_std() {
                Ok(wait) if !wait.is_zero() => wait.clamp(Duration::from_millis(5), idle_max),
                _ => FULL_TICK_EVERY.min(idle_max),
            },
            _ => idle_max,
        };
        if self.in_flight() > 0 {
            sleep_for.min(FULL_TICK_EVERY)
        } else {
            sleep_for
        }
    }

    /// Runs the claim loop until [`Controller::shutdown`], then waits for in-flight work to be
    /// handed back (bounded by `grace`).
    pub async fn run(&self, grace: Duration) {
        let changes = self.ctx.plane.changes();
        let renewer = self.spawn_renewer();
        // Runs this controller id held before a restart are resumed (as adopted: looked up first).
        if let Ok(mine) = self.ctx.plane.held_runs().await {
            for run in mine {
                self.spawn_run(run, true);
            }
        }
        let mut shutdown = self.shutdown.subscribe();
        let mut last_full_tick = Instant::now() - Duration::from_secs(3600);
        let mut failing_since: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let notified = changes.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let result = if last_full_tick.elapsed() >= FULL_TICK_EVERY {
                last_full_tick = Instant::now();
                self.tick().await.map(|r| r.claimed)
            } else {
                self.claim().await
            };
            let claimed = match result {
                Ok(n) => {
                    failing_since = None;
                    n
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(error = %e, failing_for = ?since.elapsed(), "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if claimed > 0 && self.in_flight() < self.ctx.config.max_in_flight {
                continue; // more may be due right now
            }
            let sleep_for = self.idle_time().await;
            tokio::select! {
                _ = &mut notified => {}
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
                _ = shutdown.changed() => {}
            }
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        self.ctx.logs.flush().await;
        renewer.abort();
    }
}

/// A run's in-flight slot: freed when the run's task ends by any path, a panic or an abort
/// included, so no bug can hold capacity for ever.
struct SlotGuard {
    in_flight: Slots,
    freed: Arc<Notify>,
    run_id: Uuid,
}

impl SlotGuard {
    /// The run's next attempt handed to this task, if any; otherwise frees the slot at once
    /// (under the same lock, so a claim either hands its run over or starts a new task).
    fn take_next(&self) -> Option<FlowRun> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let next = map.get_mut(&self.run_id).and_then(|slot| slot.next.take());
        if next.is_none() {
            map.remove(&self.run_id);
        }
        next
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.run_id);
        // A stored permit if the loop is not waiting yet: the wake-up is never lost.
        self.freed.notify_one();
    }
}

/// The text of a panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Ends a run whose processing panicked as CRASHED with the panic's message: retrying would
/// panic again (after every restart too), holding the run for ever.
async fn crash_after_panic(ctx: &Context, work: &mut RunWork, text: &str) {
    tracing::error!(run_id = %work.run.id, panic = text, "processing the run panicked; crashing it");
    // The panic may have struck after a write: propose from what is stored now.
    if let Ok(run) = ctx.plane.run(work.run.id).await {
        work.run = run;
    }
    if work.run.state.state_type.is_terminal() {
        return;
    }
    let message = format!("the controller panicked while processing this run: {text}");
    let proposal = Proposal::new(StateType::Crashed).with_message(message);
    if let Err(e) = propose(work, ctx, proposal).await {
        tracing::warn!(run_id = %work.run.id, error = %e, "could not crash the run after a panic");
    }
}

/// One run's task: reconcile, sleep for the returned action (woken early by changes), repeat
/// until done; at shutdown, drain briefly or hand the run back.
async fn drive(
    ctx: Arc<Context>,
    mut work: RunWork,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut fresh = true;
    let mut needs_read = false;
    let mut last_read = Instant::now();
    // Set at shutdown for runs that already have infrastructure: keep recording their progress
    // until this deadline, then release the hold for another controller.
    let mut drain_until: Option<Instant> = None;
    let mut end_signalled = false;
    // A retried run's next attempt is a new piece of work: this task stops driving it (the slot
    // hands a claimed next attempt to a fresh `drive`).
    let attempt = work.run.attempt;
    loop {
        if *shutdown.borrow() {
            match drain_until {
                None if work.run.infrastructure_id.is_some()
                    && !ctx.config.shutdown_drain.is_zero() =>
                {
                    drain_until = Some(Instant::now() + ctx.config.shutdown_drain);
                }
                Some(deadline) if Instant::now() < deadline => {}
                _ => {
                    hand_back(&ctx, &mut work).await;
                    return;
                }
            }
        }
        // The run in memory is what this task last wrote or read; read again when woken (a cancel,
        // a change by someone else), after a refused write, or at least every second.
        if !fresh && (needs_read || last_read.elapsed() >= Duration::from_secs(1)) {
            last_read = Instant::now();
            needs_read = false;
            match ctx.plane.run(work.run.id).await {
                Ok(run) if run.attempt > attempt => {
                    // Retried behind this task's back (the job reported its own failure): what
                    // the ended attempt left behind goes.
                    if work.run.attempt == attempt {
                        super::reconcile::cleanup(&work).await;
                    }
                    return;
                }
                Ok(run) => work.run = run,
                Err(e) => {
                    tracing::warn!(run_id = %work.run.id, error = %e, "cannot read run; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        fresh = false;
        if work.run.attempt != attempt {
            return; // the run was retried: the next attempt is another task's work
        }
        // A panic (a provider's or our bug) is caught here, not left to kill the task silently.
        let outcome = std::panic::AssertUnwindSafe(reconcile(&mut work, &ctx))
            .catch_unwind()
            .await;
        let action = match outcome {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => error_policy(&work, &e, &ctx),
            Err(payload) => {
                crash_after_panic(&ctx, &mut work, panic_text(payload.as_ref())).await;
                return;
            }
        };
        let Some(delay) = action.requeue_after() else {
            return;
        };
        if delay.is_zero() {
            needs_read = true;
        } else {
            let delay = match drain_until {
                Some(deadline) => delay.min(deadline.saturating_duration_since(Instant::now())),
                None => delay,
            };
            // A provider that learns the job's end by itself says so at once (once per task:
            // after that, polling, so a reconcile that keeps failing cannot spin on it).
            let ended = job_ended(&work, !end_signalled);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => needs_read = true,
                _ = shutdown.changed(), if drain_until.is_none() => needs_read = true,
                _ = ended => end_signalled = true,
            }
        }
    }
}

/// Resolves when the provider reports the run's submitted job ended (see
/// [`pushpool_provider::Provider::wait_ended`]); never when `armed` is false, the run has no
/// job yet, or the provider cannot tell.
async fn job_ended(work: &RunWork, armed: bool) {
    let tracked = matches!(
        work.run.state.state_type,
        StateType::Pending | StateType::Running
    );
    if let (true, true, Some(job), Some(infra)) =
        (armed, tracked, &work.job, &work.run.infrastructure_id)
    {
        if job.provider.wait_ended(infra, &job.job).await {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// On shutdown: a run not yet submitted goes back to SCHEDULED for another controller; a submitted
/// one keeps running and its hold is released so a live controller adopts it at once.
async fn hand_back(ctx: &Context, work: &mut RunWork) {
    let Ok(run) = ctx.plane.run(work.run.id).await else {
        return;
    };
    work.run = run;
    if !ctx.plane.holds(&work.run) || work.run.state.state_type.is_terminal() {
        return;
    }
    if work.run.state.state_type == StateType::Pending && work.run.infrastructure_id.is_none() {
        let p = Proposal::new(StateType::Scheduled).with_message(format!(
            "handed back by controller {} on shutdown",
            ctx.config.id
        ));
        if let Err(e) = propose(work, ctx, p).await {
            tracing::warn!(run_id = %work.run.id, error = %e, "could not hand the run back");
        }
    } else if let Err(e) = ctx.plane.release(work.run.id).await {
        tracing::warn!(run_id = %work.run.id, error = %e, "could not release the lease");
    }
}
