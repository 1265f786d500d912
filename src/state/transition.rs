//! The decision on a proposed state, as a pure function of the run as read, the proposal and the
//! writer's guard. The store locks and reads the run, calls [`decide_sequence`], and writes the
//! row of the last accepted [`Transition`] (plus one history row and event per accepted one).

use chrono::{DateTime, Duration, Utc};

use super::{check_transition, names, Proposal, Rejection, StateType};
use crate::model::{FlowRun, State};

/// How long the lease lasts that an accepted PENDING proposal gives its writer (a claim through
/// `propose_state` rather than `claim_due`); the controller renews it from then on.
pub const PROPOSED_PENDING_LEASE: Duration = Duration::seconds(60);

/// Conditions a writer puts on its proposal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransitionGuard {
    /// Compare-and-set: the run must be in this state type.
    pub expected: Option<StateType>,
    /// The writer's controller id: the run must not be leased by another controller.
    pub lease_owner: Option<String>,
    /// The attempt the writer works on: the run must still be in it (a retry started the next
    /// attempt meanwhile otherwise; issue 13).
    pub attempt: Option<i64>,
}

impl TransitionGuard {
    /// A controller's guard: it must own the lease and expect `state`.
    pub fn owned(owner: &str, state: StateType) -> Self {
        TransitionGuard {
            expected: Some(state),
            lease_owner: Some(owner.to_string()),
            attempt: None,
        }
    }
}

/// The columns of a run that the transition rules read and that a transition writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The current state (type, name, message, when it was entered).
    pub state: State,
    /// The attempt number (1 for the first).
    pub attempt: i64,
    /// The controller holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease runs out.
    pub lease_expires: Option<DateTime<Utc>>,
    /// The provider's id of the job, once submitted.
    pub infrastructure_id: Option<String>,
}

impl RunRecord {
    /// The columns of `run` the transition rules read.
    pub fn of(run: &FlowRun) -> Self {
        RunRecord {
            state: run.state.clone(),
            attempt: run.attempt,
            lease_owner: run.lease_owner.clone(),
            lease_expires: run.lease_expires,
            infrastructure_id: run.infrastructure_id.clone(),
        }
    }
}

/// What an accepted transition does to the run's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEffect {
    /// Left as it was.
    Kept,
    /// Cleared: a terminal state or SCHEDULED (the run is nobody's any more).
    Cleared,
    /// Taken by the writer (a PENDING proposal is a claim).
    Taken {
        /// The writer's controller id, if the guard named one.
        owner: Option<String>,
        /// When the new lease runs out.
        expires: DateTime<Utc>,
    },
}

/// What an accepted transition does to the run's infrastructure id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfrastructureEffect {
    /// Left as it was.
    Kept,
    /// Cleared: back to SCHEDULED, the next attempt gets new infrastructure.
    Cleared,
    /// Recorded: the job the writer just submitted (only for a PENDING run without one).
    Recorded(String),
}

/// An accepted proposal: the run's row after it, and its side effects spelt out.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state type the run left.
    pub from: StateType,
    /// The row to write: the new state with every effect below applied.
    pub row: RunRecord,
    /// The lease after the transition.
    pub lease: LeaseEffect,
    /// The infrastructure id after the transition.
    pub infrastructure: InfrastructureEffect,
    /// True when this transition starts the next attempt (SCHEDULED named `AwaitingRetry`).
    pub next_attempt: bool,
    /// True when waiting controllers should look again (a run became claimable or must be
    /// cancelled).
    pub wakes_controllers: bool,
}

impl Transition {
    /// `run` after this transition: the decided row (state, lease, infrastructure id, attempt)
    /// written over it, updated when the new state was entered. Every writer applies an accepted
    /// transition this way, so a run looks the same whichever plane holds it.
    pub fn applied_to(&self, run: &FlowRun) -> FlowRun {
        let row = self.row.clone();
        FlowRun {
            updated: row.state.timestamp,
            state: row.state,
            attempt: row.attempt,
            lease_owner: row.lease_owner,
            lease_expires: row.lease_expires,
            infrastructure_id: row.infrastructure_id,
            ..run.clone()
        }
    }
}

/// The answer to one proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Accepted: write this.
    Accepted(Transition),
    /// Refused for this reason; nothing is written.
    Rejected(Rejection),
    /// The proposal's transition id is already in the run's history (a retried proposal):
    /// nothing is written.
    NoOp,
}

/// What a decision needs besides the run, the proposal and the guard.
#[derive(Debug, Clone, Copy)]
pub struct TransitionContext<'a> {
    /// The run's history already holds the proposal's transition id.
    pub already_recorded: bool,
    /// An infrastructure id to record if the run is PENDING without one (a job that was over by
    /// the time the provider accepted it).
    pub infrastructure_id: Option<&'a str>,
    /// The time of the transition.
    pub now: DateTime<Utc>,
}

/// Decides one proposal. In order: a repeated transition id is a no-op; a terminal run refuses
/// everything; the guard's expected state must match; a writer naming a lease owner must hold
/// the lease of an active run; the transition must be in [`check_transition`]'s table. An
/// accepted proposal clears the lease on a terminal state or SCHEDULED, takes it on PENDING,
/// clears the infrastructure id on SCHEDULED (and starts the next attempt when named
/// `AwaitingRetry`), and records the context's infrastructure id on a PENDING run without one.
pub fn decide(
    run: &RunRecord,
    proposal: &Proposal,
    guard: &TransitionGuard,
    context: TransitionContext<'_>,
) -> Decision {
    if context.already_recorded {
        return Decision::NoOp;
    }
    match refusal(run, proposal.state_type, guard) {
        Some(reason) => Decision::Rejected(reason),
        None => Decision::Accepted(transition(run, proposal, guard, context)),
    }
}

/// Why `run` may not move to `to` under `guard`, if it may not.
fn refusal(run: &RunRecord, to: StateType, guard: &TransitionGuard) -> Option<Rejection> {
    let from = run.state.state_type;
    if from.is_terminal() {
        return Some(Rejection::AlreadyTerminal { current: from });
    }
    if let Some(expected) = guard.attempt.filter(|a| *a != run.attempt) {
        return Some(Rejection::AttemptChanged {
            expected,
            current: run.attempt,
        });
    }
    if let Some(expected) = guard.expected.filter(|e| *e != from) {
        return Some(Rejection::StateChanged {
            expected,
            current: from,
        });
    }
    let foreign_lease = guard
        .lease_owner
        .as_deref()
        .is_some_and(|owner| run.lease_owner.as_deref() != Some(owner));
    if foreign_lease && from.is_active() {
        return Some(Rejection::NotLeaseOwner {
            owner: run.lease_owner.clone(),
        });
    }
    check_transition(from, to).err()
}

/// The accepted transition of `run` to the proposed state, with its side effects.
fn transition(
    run: &RunRecord,
    proposal: &Proposal,
    guard: &TransitionGuard,
    context: TransitionContext<'_>,
) -> Transition {
    let from = run.state.state_type;
    let to = proposal.state_type;
    let lease = if to.is_terminal() || to == StateType::Scheduled {
        LeaseEffect::Cleared
    } else if to == StateType::Pending {
        LeaseEffect::Taken {
            owner: guard.lease_owner.clone(),
            expires: context.now + PROPOSED_PENDING_LEASE,
        }
    } else {
        LeaseEffect::Kept
    };
    let infrastructure = match context.infrastructure_id {
        _ if to == StateType::Scheduled => InfrastructureEffect::Cleared,
        Some(id) if from == StateType::Pending && run.infrastructure_id.is_none() => {
            InfrastructureEffect::Recorded(id.to_string())
        }
        _ => InfrastructureEffect::Kept,
    };
    let next_attempt =
        to == StateType::Scheduled && proposal.name.as_deref() == Some(names::AWAITING_RETRY);
    let mut row = RunRecord {
        state: State {
            state_type: to,
            name: proposal.state_name(),
            message: proposal.message.clone(),
            timestamp: context.now,
        },
        ..run.clone()
    };
    match &lease {
        LeaseEffect::Kept => {}
        LeaseEffect::Cleared => {
            row.lease_owner = None;
            row.lease_expires = None;
        }
        LeaseEffect::Taken { owner, expires } => {
            row.lease_owner = owner.clone();
            row.lease_expires = Some(*expires);
        }
    }
    match &infrastructure {
        InfrastructureEffect::Kept => {}
        InfrastructureEffect::Cleared => row.infrastructure_id = None,
        InfrastructureEffect::Recorded(id) => row.infrastructure_id = Some(id.clone()),
    }
    if next_attempt {
        row.attempt += 1;
    }
    Transition {
        from,
        row,
        lease,
        infrastructure,
        next_attempt,
        wakes_controllers: matches!(to, StateType::Scheduled | StateType::Cancelling),
    }
}

/// Decides proposals in order, as one transaction applies them: each proposal is decided against
/// the row the previous accepted one produced; after the first, each expects the state the
/// previous one named (accepted or repeated); an infrastructure id is recorded at most once; the
/// first rejection ends the sequence (so the answer may be shorter than `proposals`).
/// `recorded` holds the transition ids the run's history held before.
pub fn decide_sequence(
    run: &RunRecord,
    proposals: &[Proposal],
    guard: &TransitionGuard,
    recorded: &[String],
    infrastructure_id: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut current = run.clone();
    let mut guard = guard.clone();
    let mut infrastructure_id = infrastructure_id;
    let mut decisions = Vec::with_capacity(proposals.len());
    for proposal in proposals {
        let context = TransitionContext {
            already_recorded: recorded.contains(&proposal.transition_id),
            infrastructure_id,
            now,
        };
        let decision = decide(&current, proposal, &guard, context);
        match &decision {
            Decision::Rejected(_) => {
                decisions.push(decision);
                break;
            }
            Decision::NoOp => {}
            Decision::Accepted(t) => {
                if matches!(t.infrastructure, InfrastructureEffect::Recorded(_)) {
                    infrastructure_id = None;
                }
                current = t.row.clone();
            }
        }
        guard.expected = Some(proposal.state_type);
        decisions.push(decision);
    }
    decisions
}
