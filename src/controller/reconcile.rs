//! [`reconcile`]: look at one run and move it one step towards a terminal state; and
//! [`error_policy`]: what a failed reconcile means. Both are pure of scheduling: the caller
//! (one task per run) sleeps for the returned [`Action`].

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use pushpool_provider::{CancelOutcome, JobStatus, Lookup, ProviderError};

use super::context::{Context, PreparedJob, RunWork};
use super::plane::{Guard, PlaneError};
use super::provider_logs;
use super::{Action, ControllerError};
use crate::state::{names, Proposal, StateType};
use crate::store::TransitionOutcome;

/// Looks at one run and moves it one step towards a terminal state.
pub async fn reconcile(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let state = work.run.state.state_type;
    if state.is_terminal() {
        // Ended by someone else (the job's own report, a cancel): the last read of its
        // provider logs and, when it failed, its error summary (once per job).
        if let Some(job) = &work.job {
            let infra = work.run.infrastructure_id.clone();
            job.follow
                .finish(job, infra.as_deref(), ctx.plane.clone(), &work.run, None);
        }
        cleanup(work).await;
        return Ok(Action::done());
    }
    if !ctx.plane.holds(&work.run) {
        // Another controller holds it now (or nobody does: rescue will pick it up).
        return Ok(Action::done());
    }
    match state {
        StateType::Scheduled | StateType::Paused => Ok(Action::done()),
        StateType::Cancelling => cancel_run(work, ctx).await,
        StateType::Pending if work.run.infrastructure_id.is_none() => submit_run(work, ctx).await,
        StateType::Pending | StateType::Running => track_run(work, ctx).await,
        _ => Ok(Action::done()),
    }
}

/// Decides what a failed reconcile means: control-plane trouble is retried; provider errors the
/// reconcile did not handle are retried while transient.
pub fn error_policy(work: &RunWork, error: &ControllerError, ctx: &Context) -> Action {
    tracing::warn!(run_id = %work.run.id, error = %error, kind = error.metric_label(), "reconcile failed; will retry");
    if let (ControllerError::Provider { source, .. }, Some(job)) = (error, &work.job) {
        ctx.note_throttled(&work.run, &job.pool_type, source);
    }
    match error {
        ControllerError::Plane(_) => Action::requeue(Duration::from_secs(1)),
        ControllerError::Provider { source, .. } => match source {
            ProviderError::Transient { retry_after, .. } => {
                Action::requeue(retry_after.unwrap_or(Duration::from_secs(2)))
            }
            _ => Action::requeue(Duration::from_secs(5)),
        },
    }
}

/// Removes what a finished job left behind (best effort).
pub(super) async fn cleanup(work: &RunWork) {
    if let (Some(job), Some(infra)) = (&work.job, &work.run.infrastructure_id) {
        if let Err(e) = job.provider.cleanup(infra, &job.job).await {
            tracing::warn!(run_id = %work.run.id, error = %e, "cleanup failed");
        }
    }
}

/// Prepares the run's job once per task; a job that cannot be prepared crashes the run.
async fn ensure_job(
    work: &mut RunWork,
    ctx: &Context,
) -> Result<Option<PreparedJob>, ControllerError> {
    if let Some(job) = &work.job {
        return Ok(Some(job.clone()));
    }
    match ctx.prepare(&work.run).await? {
        Ok(job) => {
            work.job = Some(job.clone());
            Ok(Some(job))
        }
        Err(_) if work.run.state.state_type == StateType::Cancelling => {
            // Nothing to stop; the cancel path records CANCELLED.
            Ok(None)
        }
        Err(e) => {
            crash(work, ctx, e.to_string()).await?;
            Ok(None)
        }
    }
}

/// Proposes a state as the holder, expecting the state the controller last saw. Returns whether
/// it was recorded; the run becomes the plane's answer either way.
pub(super) async fn propose(
    work: &mut RunWork,
    ctx: &Context,
    proposal: Proposal,
) -> Result<bool, PlaneError> {
    propose_all(work, ctx, vec![proposal], None).await
}

/// Proposes states in order as the holder (see [`ControlPlane::propose`]). Returns whether every
/// one was recorded; the run becomes the plane's last answer.
///
/// [`ControlPlane::propose`]: super::ControlPlane::propose
async fn propose_all(
    work: &mut RunWork,
    ctx: &Context,
    mut proposals: Vec<Proposal>,
    infrastructure_id: Option<&str>,
) -> Result<bool, PlaneError> {
    let wanted = proposals.len();
    for p in &mut proposals {
        if p.error_summary.is_none() {
            p.error_summary = provider_logs::summary_for(work.job.as_ref(), p);
        }
    }
    let summary = proposals.last().and_then(|p| p.error_summary.clone());
    let attempt = work.run.attempt;
    let infra = (work.run.infrastructure_id.clone()).or(infrastructure_id.map(str::to_string));
    // Only for this task's attempt: a retry may have started the next one meanwhile (issue 13).
    let guard = Guard {
        attempt: Some(attempt),
        ..Guard::held_in(work.run.state.state_type)
    };
    let outcomes = ctx
        .plane
        .propose(work.run.id, proposals, guard, infrastructure_id)
        .await?;
    if let Some(last) = outcomes.last() {
        if let TransitionOutcome::Rejected { reason, .. } = last {
            tracing::debug!(run_id = %work.run.id, %reason, "proposal rejected");
        }
        work.run = last.run().clone();
    }
    let recorded = outcomes.len() == wanted && outcomes.iter().all(TransitionOutcome::is_recorded);
    if recorded && (work.run.state.state_type.is_terminal() || work.run.attempt > attempt) {
        if let Some(job) = &work.job {
            job.follow
                .finish(job, infra.as_deref(), ctx.plane.clone(), &work.run, summary);
        }
    }
    if work.run.attempt > attempt {
        // The attempt ended and the store scheduled a retry (docs/retries.md): the finished
        // attempt's infrastructure is cleaned up now, the next attempt is prepared afresh.
        if let (Some(job), Some(infra)) = (work.job.take(), infra) {
            if let Err(e) = job.provider.cleanup(&infra, &job.job).await {
                tracing::warn!(run_id = %work.run.id, error = %e, "cleanup failed");
            }
        }
    }
    Ok(recorded)
}

async fn crash(work: &mut RunWork, ctx: &Context, message: String) -> Result<bool, PlaneError> {
    propose(
        work,
        ctx,
        Proposal::new(StateType::Crashed).with_message(message),
    )
    .await
}

fn next_poll(work: &mut RunWork, ctx: &Context) -> Action {
    work.poll_delay = if work.poll_delay.is_zero() {
        ctx.config.poll_min
    } else {
        (work.poll_delay.mul_f64(1.5)).min(ctx.config.poll_max)
    };
    Action::requeue(work.poll_delay)
}

async fn cancel_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let mut message = "cancelled".to_string();
    if let Some(infra) = work.run.infrastructure_id.clone() {
        if let Some(job) = ensure_job(work, ctx).await? {
            match job.provider.cancel(&infra, &job.job, ctx.config.cancel_grace).await {
                Ok(CancelOutcome::Cancelled) => message = format!("cancelled; infrastructure `{infra}` stopped"),
                Ok(CancelOutcome::NotFound) => {
                    message = format!("cancelled; infrastructure `{infra}` had already ended")
                }
                Ok(CancelOutcome::Unsupported) => {
                    message = format!(
                        "cancelled; the `{}` provider cannot stop a started job, the job can see the cancellation through its run API",
                        job.pool_type
                    )
                }
                Err(e) if e.is_retriable() => {
                    ctx.metrics.provider_error(&job.pool_type, e.class());
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Err(e) => {
                    ctx.metrics.provider_error(&job.pool_type, e.class());
                    message = format!("cancelled; stopping infrastructure `{infra}` failed: {e}")
                }
            }
        }
    }
    ctx.logs.flush().await;
    propose(
        work,
        ctx,
        Proposal::new(StateType::Cancelled).with_message(message),
    )
    .await?;
    Ok(Action::done())
}

/// Submits a PENDING run without infrastructure: adopt-lookup (for a run taken over), the
/// leased attempt, then recording the outcome.
async fn submit_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let Some(prepared) = ensure_job(work, ctx).await? else {
        return Ok(Action::done());
    };
    // A pool stored before `--process-pools` refused it (or the setting changed since).
    if let Some(message) = ctx.process_refusal(&work.run, &prepared.pool_type).await? {
        crash(work, ctx, message).await?;
        return Ok(Action::done());
    }
    if work.adopted {
        if let Some(action) = adopt_lookup(work, ctx, &prepared).await? {
            return Ok(action);
        }
    }
    // A plane may hand out runs shortly before they fall due (Prefect's look-ahead), so the job
    // is ready and goes out at the scheduled time, not at the next poll.
    if let Ok(early) = (work.run.scheduled_time - chrono::Utc::now()).to_std() {
        tokio::time::sleep(early.min(Duration::from_secs(5))).await;
    }
    let started = Instant::now();
    let result = match leased_submit(work, ctx, &prepared, started).await {
        Ok(infra) => Ok(infra),
        Err(SubmitError::Provider(e)) => Err(e),
        Err(SubmitError::LostLease) => {
            tracing::info!(run_id = %work.run.id, "lost the lease before submitting; leaving the run to its new owner");
            return Ok(Action::done());
        }
        Err(SubmitError::Plane(e)) => return Err(ControllerError::Plane(e)),
    };
    ctx.metrics.submit_latency.observe(started.elapsed());
    match result {
        Ok(infra) => record_submitted(work, ctx, &prepared, infra).await,
        Err(e) => record_submit_failure(work, ctx, &prepared, &e, started.elapsed()).await,
    }
}

/// For a run taken over from a vanished controller: looks for a job that controller may have
/// started. `Some` ends this reconcile (adopted the job, or crashed because it cannot tell);
/// `None` means no job exists and submitting is safe.
async fn adopt_lookup(
    work: &mut RunWork,
    ctx: &Context,
    prepared: &PreparedJob,
) -> Result<Option<Action>, ControllerError> {
    let found = prepared
        .provider
        .lookup(&prepared.spec, &prepared.job)
        .await;
    match found {
        Ok(Lookup::Found(infra)) => {
            ctx.plane
                .record_attempt_infrastructure(&work.run, &infra)
                .await?;
            work.run = ctx.plane.run(work.run.id).await?;
            work.adopted = false;
            Ok(Some(Action::requeue(Duration::ZERO)))
        }
        Ok(Lookup::Absent) => Ok(None),
        Ok(Lookup::Unknown) => {
            let message = format!(
                "the controller submitting this run vanished, and the `{}` provider cannot tell whether the job started; not submitting it again so it never runs twice",
                prepared.pool_type
            );
            crash(work, ctx, message).await?;
            Ok(Some(Action::done()))
        }
        Err(e) => Err(ControllerError::Provider {
            run_id: work.run.id,
            source: e,
        }),
    }
}

/// Why one submit attempt did not go out.
#[derive(Debug, thiserror::Error)]
enum SubmitError {
    #[error("{0}")]
    Provider(ProviderError),
    #[error("the run's lease is held by another controller")]
    LostLease,
    #[error("control plane: {0}")]
    Plane(PlaneError),
}

impl SubmitError {
    fn is_retriable(&self) -> bool {
        match self {
            SubmitError::Provider(p) => p.is_retriable(),
            SubmitError::Plane(e) => e.is_retriable(),
            SubmitError::LostLease => false,
        }
    }
}

/// Submits with retries while the hold is valid. Exactly once: a submit call only starts with
/// at least half a lease left, and is cut off after a quarter lease, so a rescuer (which adopts
/// only after expiry and looks the job up first) never overlaps with it.
async fn leased_submit(
    work: &RunWork,
    ctx: &Context,
    prepared: &PreparedJob,
    started: Instant,
) -> Result<String, SubmitError> {
    let deadline = ctx.config.submit_deadline;
    let lease = ctx.config.lease;
    let run_id = work.run.id;
    // The hold this task knows to be valid: set by the claim (or adoption) and by its renewals.
    let valid_until = std::sync::Mutex::new(if work.adopted {
        Instant::now()
    } else {
        Instant::now() + lease
    });
    let bucket = prepared
        .rate_limit
        .map(|(pool_id, rate)| ctx.bucket_for(pool_id, rate));
    let attempt = || async {
        if let Some(bucket) = &bucket {
            bucket.acquire().await;
        }
        let until = *valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.saturating_duration_since(Instant::now()) < lease / 2 {
            match ctx.plane.renew(run_id).await {
                Ok(true) => {
                    *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + lease;
                }
                Ok(false) => return Err(SubmitError::LostLease),
                Err(e) => return Err(SubmitError::Plane(e)),
            }
        }
        let cap = deadline.saturating_sub(started.elapsed()).min(lease / 4);
        let submit = prepared.provider.submit(&prepared.spec, &prepared.job);
        match tokio::time::timeout(cap.max(Duration::from_millis(1)), submit).await {
            Ok(r) => r.map_err(SubmitError::Provider),
            Err(_) => Err(SubmitError::Provider(ProviderError::transient(format!(
                "submit did not answer within {}s",
                cap.as_secs_f64()
            )))),
        }
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(usize::MAX),
        )
        .when(|e: &SubmitError| e.is_retriable() && started.elapsed() < deadline)
        .notify(|e: &SubmitError, after: Duration| {
            if let SubmitError::Provider(p) = e {
                ctx.metrics.provider_error(&prepared.pool_type, p.class());
                ctx.note_throttled(&work.run, &prepared.pool_type, p);
            }
            tracing::info!(run_id = %run_id, error = %e, retry_in = ?after, "submit failed transiently; retrying");
        })
        .await
}

/// Records a submitted job: its infrastructure id, or (a job already over when submit returned,
/// e.g. fast jobs and the null provider) the id, RUNNING and its end in one step.
async fn record_submitted(
    work: &mut RunWork,
    ctx: &Context,
    prepared: &PreparedJob,
    infra: String,
) -> Result<Action, ControllerError> {
    ctx.metrics
        .submitted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match early_status(prepared, &infra).await {
        Some(JobStatus::Running) => {
            // Started as submit returned (a child process, a synchronous invoke): the id and
            // RUNNING in one write, not the id now and RUNNING at the next poll.
            let proposals = vec![Proposal::new(StateType::Running)];
            if propose_all(work, ctx, proposals, Some(&infra)).await? {
                return Ok(next_poll(work, ctx));
            }
            // Refused (the run changed meanwhile): the path below records or stops the job.
        }
        Some(end) => {
            ctx.logs.flush().await;
            let proposals = vec![Proposal::new(StateType::Running), end_proposal(end)];
            if propose_all(work, ctx, proposals, Some(&infra)).await? {
                cleanup(work).await;
                return Ok(Action::done());
            }
        }
        None => {}
    }
    if ctx
        .plane
        .record_attempt_infrastructure(&work.run, &infra)
        .await?
    {
        work.run.infrastructure_id = Some(infra);
        work.run.state.name = names::INFRASTRUCTURE_PENDING.into();
        Ok(next_poll(work, ctx))
    } else {
        // The run changed while we submitted (cancelled before it had infrastructure): stop the
        // job we just started so it does not run unobserved.
        let _ = prepared
            .provider
            .cancel(&infra, &prepared.job, ctx.config.cancel_grace)
            .await;
        work.run = ctx.plane.run(work.run.id).await?;
        Ok(Action::requeue(Duration::ZERO))
    }
}

/// The status of a job right after its submit call returned, when it is already running
/// ([`JobStatus::Running`]) or already over ([`JobStatus::Completed`], [`JobStatus::Failed`]).
async fn early_status(prepared: &PreparedJob, infra: &str) -> Option<JobStatus> {
    match prepared.provider.status(infra, &prepared.job).await {
        Ok(s @ (JobStatus::Running | JobStatus::Completed { .. } | JobStatus::Failed { .. })) => {
            Some(s)
        }
        _ => None,
    }
}

/// A job's end reported by [`early_status`] as a proposal.
fn end_proposal(end: JobStatus) -> Proposal {
    match end {
        JobStatus::Failed { message } => Proposal::new(StateType::Failed).with_message(message),
        JobStatus::Completed { summary } => {
            let mut p = Proposal::new(StateType::Completed);
            p.message = summary;
            p
        }
        other => crashed(format!("unexpected early status {other:?}")),
    }
}

/// A submit that failed for good (or for too long) crashes the run, saying what to do.
async fn record_submit_failure(
    work: &mut RunWork,
    ctx: &Context,
    prepared: &PreparedJob,
    error: &ProviderError,
    waited: Duration,
) -> Result<Action, ControllerError> {
    ctx.metrics
        .provider_error(&prepared.pool_type, error.class());
    let message = submit_failure_message(error, &prepared.pool_type, waited);
    ctx.logs.flush().await;
    crash(work, ctx, message).await?;
    Ok(Action::done())
}

fn submit_failure_message(e: &ProviderError, pool_type: &str, waited: Duration) -> String {
    match e {
        ProviderError::InvalidConfig { field, message } => format!(
            "the `{pool_type}` provider rejected the job configuration at `{field}`: {message}; fix the job variable or template field that produces it"
        ),
        ProviderError::Transient { message, .. } => format!(
            "submitting to the `{pool_type}` provider kept failing for {}s, the last error: {message}; the provider may be throttling or down, run again later",
            waited.as_secs()
        ),
        ProviderError::Permanent { message } => format!(
            "submitting to the `{pool_type}` provider failed: {message}; fix the pool or deployment configuration (or the provider's credentials) and run again"
        ),
        ProviderError::NotFound { message } => format!(
            "submitting to the `{pool_type}` provider failed, something it needs does not exist: {message}"
        ),
        other => format!("submitting to the `{pool_type}` provider failed: {other}"),
    }
}

/// Records a job's end. A job that finished has run: RUNNING is recorded first (same step) so
/// the history tells the truth.
async fn finish(
    work: &mut RunWork,
    ctx: &Context,
    proposal: Proposal,
) -> Result<Action, ControllerError> {
    ctx.logs.flush().await;
    let mut proposals = vec![];
    if work.run.state.state_type == StateType::Pending
        && matches!(
            proposal.state_type,
            StateType::Completed | StateType::Failed
        )
    {
        proposals.push(Proposal::new(StateType::Running));
    }
    proposals.push(proposal);
    if !propose_all(work, ctx, proposals, None).await? {
        return Ok(Action::requeue(Duration::ZERO));
    }
    cleanup(work).await;
    Ok(Action::done())
}

fn crashed(message: String) -> Proposal {
    Proposal::new(StateType::Crashed).with_message(message)
}

/// Polls a submitted job and records what it reports.
async fn track_run(work: &mut RunWork, ctx: &Context) -> Result<Action, ControllerError> {
    let Some(prepared) = ensure_job(work, ctx).await? else {
        return Ok(Action::done());
    };
    let infra = work.run.infrastructure_id.clone().unwrap_or_default();
    let status = match prepared.provider.status(&infra, &prepared.job).await {
        Ok(s) => {
            work.status_failing_since = None;
            s
        }
        Err(ProviderError::NotFound { .. }) => JobStatus::NotFound,
        Err(e) if e.is_retriable() => {
            ctx.metrics.provider_error(&prepared.pool_type, e.class());
            let since = *work.status_failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() < ctx.config.status_deadline {
                return Ok(next_poll(work, ctx));
            }
            let message = format!(
                "lost contact with the `{}` provider for {}s while watching `{infra}`; last error: {e}",
                prepared.pool_type,
                since.elapsed().as_secs()
            );
            return finish(work, ctx, crashed(message)).await;
        }
        Err(e) => {
            ctx.metrics.provider_error(&prepared.pool_type, e.class());
            let message = format!("watching `{infra}` failed: {e}");
            return finish(work, ctx, crashed(message)).await;
        }
    };
    if !status.is_final() {
        prepared.follow.poll(&prepared, &infra);
    }
    let end = match status {
        JobStatus::Pending => return Ok(next_poll(work, ctx)),
        JobStatus::Running => {
            if work.run.state.state_type == StateType::Pending
                && !propose(work, ctx, Proposal::new(StateType::Running)).await?
            {
                return Ok(Action::requeue(Duration::ZERO));
            }
            return Ok(next_poll(work, ctx));
        }
        JobStatus::Unobservable => return Ok(Action::requeue(ctx.config.poll_max)),
        JobStatus::Completed { summary } => {
            let mut p = Proposal::new(StateType::Completed);
            p.message = summary;
            p
        }
        JobStatus::Failed { message } => Proposal::new(StateType::Failed).with_message(message),
        JobStatus::Crashed { message } => crashed(message),
        JobStatus::Cancelled => Proposal::new(StateType::Cancelled)
            .with_message("the infrastructure reports the job cancelled"),
        JobStatus::NotFound => crashed(format!(
            "infrastructure `{infra}` no longer exists at the `{}` provider (removed outside pushpool, or lost with a controller restart); the job's outcome is unknown",
            prepared.pool_type
        )),
    };
    finish(work, ctx, end).await
}
