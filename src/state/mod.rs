//! The flow-run state machine: Prefect's state types, their named sub-states, the one table of
//! legal transitions, and the pure decision on a proposal ([`decide`]) that every writer goes
//! through (documented in `docs/states.md`).
//!
//! Nothing here touches a database or a clock: the store locks and reads a run, asks
//! [`decide_sequence`] what to do with the proposals, and writes exactly the row it is handed back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod retry;
mod transition;

pub use retry::{
    check_tags, inherit_tags, retry_after, InvalidSetting, Retry, RetryDelay, RetryOverride,
    RetryPolicy, MAX_TAGS,
};

pub use transition::{
    decide, decide_sequence, Decision, InfrastructureEffect, LeaseEffect, RunRecord, Transition,
    TransitionContext, TransitionGuard, PROPOSED_PENDING_LEASE,
};

/// Prefect's state types. Named sub-states (`Late`, `Submitting`, …) keep their type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateType {
    /// Waiting for its scheduled time (names: Scheduled, Late, AwaitingRetry, AwaitingConcurrencySlot).
    Scheduled,
    /// Claimed by a controller; being submitted or waiting for infrastructure (Submitting, InfrastructurePending).
    Pending,
    /// The job runs.
    Running,
    /// Terminal: the job succeeded.
    Completed,
    /// Terminal: the job itself failed.
    Failed,
    /// Terminal: the infrastructure or pushpool failed the job.
    Crashed,
    /// A cancellation was asked for; the controller is stopping the infrastructure.
    Cancelling,
    /// Terminal: cancelled.
    Cancelled,
    /// Paused by the job; resumes to RUNNING or is rescheduled.
    Paused,
}

/// All state types, in lifecycle order.
pub const ALL_STATE_TYPES: [StateType; 9] = [
    StateType::Scheduled,
    StateType::Pending,
    StateType::Running,
    StateType::Completed,
    StateType::Failed,
    StateType::Crashed,
    StateType::Cancelling,
    StateType::Cancelled,
    StateType::Paused,
];

impl StateType {
    /// The wire name, e.g. `SCHEDULED`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateType::Scheduled => "SCHEDULED",
            StateType::Pending => "PENDING",
            StateType::Running => "RUNNING",
            StateType::Completed => "COMPLETED",
            StateType::Failed => "FAILED",
            StateType::Crashed => "CRASHED",
            StateType::Cancelling => "CANCELLING",
            StateType::Cancelled => "CANCELLED",
            StateType::Paused => "PAUSED",
        }
    }

    /// True for COMPLETED, FAILED, CRASHED and CANCELLED: nothing ever leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateType::Completed | StateType::Failed | StateType::Crashed | StateType::Cancelled
        )
    }

    /// True for the states that hold a concurrency slot (PENDING, RUNNING, CANCELLING).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            StateType::Pending | StateType::Running | StateType::Cancelling
        )
    }

    /// The default name of a state of this type (`Scheduled`, `Pending`, …).
    pub fn default_name(self) -> &'static str {
        match self {
            StateType::Scheduled => "Scheduled",
            StateType::Pending => "Pending",
            StateType::Running => "Running",
            StateType::Completed => "Completed",
            StateType::Failed => "Failed",
            StateType::Crashed => "Crashed",
            StateType::Cancelling => "Cancelling",
            StateType::Cancelled => "Cancelled",
            StateType::Paused => "Paused",
        }
    }
}

impl fmt::Display for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a state type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a state type (one of SCHEDULED PENDING RUNNING COMPLETED FAILED CRASHED CANCELLING CANCELLED PAUSED)")]
pub struct UnknownStateType(pub String);

impl FromStr for StateType {
    type Err = UnknownStateType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATE_TYPES
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStateType(s.to_string()))
    }
}

/// Sub-state names pushpool itself uses.
pub mod names {
    /// SCHEDULED, past due by the late threshold.
    pub const LATE: &str = "Late";
    /// SCHEDULED again after a failed attempt, waiting for the retry.
    pub const AWAITING_RETRY: &str = "AwaitingRetry";
    /// SCHEDULED, held back by a full concurrency limit.
    pub const AWAITING_CONCURRENCY_SLOT: &str = "AwaitingConcurrencySlot";
    /// PENDING: claimed, the controller is submitting it.
    pub const SUBMITTING: &str = "Submitting";
    /// PENDING: the provider accepted the job; waiting for it to start.
    pub const INFRASTRUCTURE_PENDING: &str = "InfrastructurePending";
}

/// Why a proposal was not accepted. Always returned as a value: a rejected proposal is never lost silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// The table has no edge from the current state to the proposed one.
    IllegalTransition {
        /// Current state type.
        from: StateType,
        /// Proposed state type.
        to: StateType,
    },
    /// The run is terminal; a late writer never overwrites it.
    AlreadyTerminal {
        /// The terminal state the run is in.
        current: StateType,
    },
    /// The writer expected another current state (compare-and-set failed).
    StateChanged {
        /// What the writer expected.
        expected: StateType,
        /// What the run is in.
        current: StateType,
    },
    /// The writer works on an earlier attempt; the run was retried since (issue 13).
    AttemptChanged {
        /// The writer's attempt.
        expected: i64,
        /// The run's attempt.
        current: i64,
    },
    /// The writer does not hold the run's lease.
    NotLeaseOwner {
        /// Who holds it, if anyone.
        owner: Option<String>,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::IllegalTransition { from, to } => {
                write!(f, "a run in {from} cannot move to {to}")
            }
            Rejection::AlreadyTerminal { current } => {
                write!(f, "the run is already {current}, a terminal state")
            }
            Rejection::StateChanged { expected, current } => {
                write!(f, "expected the run in {expected} but it is {current}")
            }
            Rejection::AttemptChanged { expected, current } => {
                write!(
                    f,
                    "attempt {expected} is over; the run is on attempt {current}"
                )
            }
            Rejection::NotLeaseOwner { owner: Some(o) } => {
                write!(f, "the run is leased by another controller ({o})")
            }
            Rejection::NotLeaseOwner { owner: None } => {
                write!(f, "the run is not leased by this controller")
            }
        }
    }
}

/// Checks one proposal against the transition table. This is the only definition of legal moves.
///
/// | from \ to   | allowed                                                        |
/// |-------------|----------------------------------------------------------------|
/// | SCHEDULED   | SCHEDULED (rename/reschedule), PENDING (claim), CANCELLED, PAUSED |
/// | PENDING     | RUNNING, COMPLETED, FAILED, CRASHED, CANCELLING, CANCELLED, SCHEDULED (hand back / retry) |
/// | RUNNING     | COMPLETED, FAILED, CRASHED, CANCELLING, CANCELLED, PAUSED, SCHEDULED (retry) |
/// | PAUSED      | RUNNING, SCHEDULED, CANCELLING, CANCELLED, CRASHED, FAILED       |
/// | CANCELLING  | CANCELLED                                                      |
/// | terminal    | nothing                                                        |
pub fn check_transition(from: StateType, to: StateType) -> Result<(), Rejection> {
    use StateType::*;
    if from.is_terminal() {
        return Err(Rejection::AlreadyTerminal { current: from });
    }
    let allowed = match from {
        Scheduled => matches!(to, Scheduled | Pending | Cancelled | Paused),
        Pending => matches!(
            to,
            Running | Completed | Failed | Crashed | Cancelling | Cancelled | Scheduled
        ),
        Running => matches!(
            to,
            Completed | Failed | Crashed | Cancelling | Cancelled | Paused | Scheduled
        ),
        Paused => matches!(
            to,
            Running | Scheduled | Cancelling | Cancelled | Crashed | Failed
        ),
        Cancelling => matches!(to, Cancelled),
        Completed | Failed | Crashed | Cancelled => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Rejection::IllegalTransition { from, to })
    }
}

/// A proposed state for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposed state type.
    #[serde(rename = "type")]
    pub state_type: StateType,
    /// Sub-state name; the type's default name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Human message (why it failed, what to fix).
    #[serde(default)]
    pub message: Option<String>,
    /// Idempotency id of this proposal: a retried proposal with the same id is a no-op.
    pub transition_id: String,
    /// Why the run failed, with a FAILED or CRASHED proposal: stored with the run and put into
    /// the transition's event (docs/error-summaries.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_summary: Option<pushpool_provider::ErrorSummary>,
}

impl Proposal {
    /// A proposal with a fresh transition id.
    pub fn new(state_type: StateType) -> Self {
        Proposal {
            state_type,
            name: None,
            message: None,
            transition_id: uuid::Uuid::now_v7().to_string(),
            error_summary: None,
        }
    }
    /// Sets the error summary.
    pub fn with_summary(mut self, summary: Option<pushpool_provider::ErrorSummary>) -> Self {
        self.error_summary = summary;
        self
    }
    /// Sets the sub-state name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
    /// Sets the transition id.
    pub fn with_transition_id(mut self, id: impl Into<String>) -> Self {
        self.transition_id = id.into();
        self
    }
    /// The name that will be stored.
    pub fn state_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.state_type.default_name().to_string())
    }
}

#[cfg(test)]
mod tests;
