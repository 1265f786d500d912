//! A run's provider logs and its error summary (docs/error-summaries.md).
//!
//! Providers whose jobs log to a service of their own (CloudWatch Logs, Cloud Logging) are read
//! on a background task of the run, at most every [`READ_EVERY`] while the run is active and
//! once more after it ended. A read never holds up a reconcile and never changes the run's
//! state: a failed read is one warning line in the run's log (`system` stream) and is tried again
//! at the next poll.
//!
//! The summary of a FAILED or CRASHED run is computed when the controller proposes that state,
//! from the state message and the run's last log lines, and travels with the proposal (so the
//! transition's event carries it). The final log read may sharpen it; a changed summary is
//! stored again (without a second event).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpool_provider::{
    DynProvider, Ending, ErrorSummary, LogCursor, LogSink, LogStream, RunEnd, TailLine,
    ValidatedJob,
};

use super::context::PreparedJob;
use super::logs::RunTail;
use super::plane::ControlPlane;
use crate::model::FlowRun;
use crate::state::{Proposal, StateType};

/// Least time between two reads of a run's provider logs while it is active.
pub(super) const READ_EVERY: Duration = Duration::from_secs(3);
/// Longest one read may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before the read after the end, so the log service has the last lines.
const FINAL_READ_DELAY: Duration = Duration::from_secs(2);

struct ReadState {
    cursor: LogCursor,
    /// The last read failed (its warning line was written; the next failure stays quiet).
    failing: bool,
    /// The budget-reached line was written.
    told_dropped: bool,
}

/// The last log lines of a run and the reading of its provider logs; shared by the clones of
/// a [`PreparedJob`].
#[derive(Clone)]
pub struct Follow {
    tail: RunTail,
    state: Arc<tokio::sync::Mutex<ReadState>>,
    busy: Arc<AtomicBool>,
    last_read: Arc<Mutex<Option<Instant>>>,
    finished: Arc<AtomicBool>,
}

impl Follow {
    /// Following nothing yet; `tail` is the run's log sink's tail.
    pub(super) fn new(tail: RunTail) -> Self {
        Follow {
            tail,
            state: Arc::new(tokio::sync::Mutex::new(ReadState {
                cursor: LogCursor::default(),
                failing: false,
                told_dropped: false,
            })),
            busy: Arc::default(),
            last_read: Arc::default(),
            finished: Arc::default(),
        }
    }

    /// While the run is active: starts a background read when the provider reads logs, none
    /// is running and [`READ_EVERY`] passed since the last.
    pub(super) fn poll(&self, job: &PreparedJob, infra: &str) {
        if !job.provider.reads_logs() || self.finished.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut last = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < READ_EVERY) {
                return;
            }
            if self.busy.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let reader = Reader::of(job, infra, self);
        let busy = self.busy.clone();
        tokio::spawn(async move {
            reader.read().await;
            busy.store(false, Ordering::Release);
        });
    }

    /// After the run ended (once): the last read of its provider logs, then, for a FAILED or
    /// CRASHED run, the summary again with the lines read; stored when it differs from
    /// `proposed` (the one its terminal state carried, if any).
    pub(super) fn finish(
        &self,
        job: &PreparedJob,
        infra: Option<&str>,
        plane: Arc<dyn ControlPlane>,
        run: &FlowRun,
        proposed: Option<ErrorSummary>,
    ) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let reads = job.provider.reads_logs() && infra.is_some();
        let ending = ending_of(run.state.state_type);
        if !reads && (ending.is_none() || proposed.is_some()) {
            return;
        }
        let reader = Reader::of(job, infra.unwrap_or_default(), self);
        let (run_id, attempt) = (run.id, run.attempt);
        let message = run.state.message.clone().unwrap_or_default();
        tokio::spawn(async move {
            if reads {
                tokio::time::sleep(FINAL_READ_DELAY).await;
                reader.read().await;
            }
            let Some(ending) = ending else { return };
            let summary = summarize_with(
                reader.provider.as_ref(),
                ending,
                &message,
                &reader.tail.lines(),
            );
            if proposed.as_ref() != Some(&summary) {
                if let Err(e) = plane.record_error_summary(run_id, attempt, &summary).await {
                    tracing::warn!(%run_id, error = %e, "could not store the error summary");
                }
            }
        });
    }
}

/// One read of a run's provider logs, off the reconcile path.
struct Reader {
    provider: Arc<dyn DynProvider>,
    job: ValidatedJob,
    infra: String,
    pool_type: String,
    sink: Arc<dyn LogSink>,
    tail: RunTail,
    state: Arc<tokio::sync::Mutex<ReadState>>,
}

impl Reader {
    fn of(job: &PreparedJob, infra: &str, follow: &Follow) -> Self {
        Reader {
            provider: job.provider.clone(),
            job: job.job.clone(),
            infra: infra.to_string(),
            pool_type: job.pool_type.clone(),
            sink: job.spec.logs.clone(),
            tail: follow.tail.clone(),
            state: follow.state.clone(),
        }
    }

    async fn read(&self) {
        let mut state = self.state.lock().await;
        if state.cursor.exhausted() {
            return;
        }
        let read = self
            .provider
            .read_logs(&self.infra, &self.job, &mut state.cursor);
        let error = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(lines)) => {
                state.failing = false;
                for l in lines {
                    self.sink
                        .line_at(LogStream::Provider, l.timestamp_micros, l.line);
                }
                if state.cursor.dropped_lines() && !state.told_dropped {
                    state.told_dropped = true;
                    self.sink.line(
                        LogStream::System,
                        format!("pushpool: this run's budget of lines read from the `{}` provider's log service is reached; further lines are not copied (read them there)", self.pool_type),
                    );
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", READ_TIMEOUT.as_secs()),
        };
        if !state.failing {
            state.failing = true;
            self.sink.line(
                LogStream::System,
                format!(
                    "warning: reading the job's logs from the `{}` provider failed: {error}; pushpool tries again later (the run's state does not depend on it)",
                    self.pool_type
                ),
            );
        }
    }
}

/// FAILED or CRASHED as an [`Ending`]; other states have none.
fn ending_of(state: StateType) -> Option<Ending> {
    match state {
        StateType::Failed => Some(Ending::Failed),
        StateType::Crashed => Some(Ending::Crashed),
        _ => None,
    }
}

fn summarize_with(
    provider: &dyn DynProvider,
    ending: Ending,
    message: &str,
    logs: &[TailLine],
) -> ErrorSummary {
    provider.summarize(&RunEnd {
        ending,
        message,
        logs,
    })
}

/// The error summary a FAILED or CRASHED proposal carries: the provider's rules over the
/// proposal's message and the run's last log lines, or the common rules alone when the run has
/// no prepared job (it could not be prepared). `None` for other states.
pub(super) fn summary_for(job: Option<&PreparedJob>, proposal: &Proposal) -> Option<ErrorSummary> {
    let ending = ending_of(proposal.state_type)?;
    let message = proposal.message.as_deref().unwrap_or_default();
    Some(match job {
        Some(job) => summarize_with(
            job.provider.as_ref(),
            ending,
            message,
            &job.follow.tail.lines(),
        ),
        None => pushpool_provider::summary::common(&RunEnd {
            ending,
            message,
            logs: &[],
        }),
    })
}
