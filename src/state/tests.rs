//! Unit and property tests of the transition table and of the pure decision on proposals.

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::model::{from_micros, State};

#[test]
fn terminal_states_accept_nothing() {
    for from in ALL_STATE_TYPES.into_iter().filter(|s| s.is_terminal()) {
        for to in ALL_STATE_TYPES {
            assert_eq!(
                check_transition(from, to),
                Err(Rejection::AlreadyTerminal { current: from })
            );
        }
    }
}

#[test]
fn cancelling_only_goes_to_cancelled() {
    for to in ALL_STATE_TYPES {
        assert_eq!(
            check_transition(StateType::Cancelling, to).is_ok(),
            to == StateType::Cancelled
        );
    }
}

#[test]
fn a_second_pending_is_refused() {
    for from in [
        StateType::Pending,
        StateType::Running,
        StateType::Cancelling,
        StateType::Cancelled,
    ] {
        assert!(check_transition(from, StateType::Pending).is_err());
    }
    assert!(check_transition(StateType::Scheduled, StateType::Pending).is_ok());
}

#[test]
fn state_types_parse_case_insensitively() {
    assert_eq!("running".parse::<StateType>(), Ok(StateType::Running));
    assert!("DONE".parse::<StateType>().is_err());
}

fn any_state() -> impl Strategy<Value = StateType> {
    prop::sample::select(ALL_STATE_TYPES.to_vec())
}

proptest! {
    /// Applying any sequence of proposals through the table never leaves a terminal state.
    #[test]
    fn no_sequence_leaves_a_terminal_state(proposals in prop::collection::vec(any_state(), 0..40)) {
        let mut current = StateType::Scheduled;
        let mut history = vec![current];
        for to in proposals {
            if check_transition(current, to).is_ok() {
                prop_assert!(!current.is_terminal());
                current = to;
                history.push(current);
            }
        }
        if let Some(i) = history.iter().position(|s| s.is_terminal()) {
            prop_assert_eq!(i, history.len() - 1, "history continued after terminal: {:?}", history);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pure decision on proposals (`decide`, `decide_sequence`).

const NOW_MICROS: i64 = 1_800_000_000_000_000;

fn now() -> DateTime<Utc> {
    from_micros(NOW_MICROS)
}

fn any_owner() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(vec![
        "ctl-a".to_string(),
        "ctl-b".to_string(),
    ]))
}

fn any_state_name() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::sample::select(vec![
            names::LATE,
            names::AWAITING_RETRY,
            names::AWAITING_CONCURRENCY_SLOT,
            names::SUBMITTING,
            names::INFRASTRUCTURE_PENDING,
        ])
        .prop_map(str::to_string),
    )
}

prop_compose! {
    fn any_run()(
        state_type in any_state(),
        name in any_state_name(),
        attempt in 1i64..5,
        lease_owner in any_owner(),
        lease_expires in prop::option::of(0i64..NOW_MICROS),
        infrastructure_id in prop::option::of(Just("job-1".to_string())),
    ) -> RunRecord {
        RunRecord {
            state: State {
                state_type,
                name: name.unwrap_or_else(|| state_type.default_name().to_string()),
                message: None,
                timestamp: from_micros(NOW_MICROS - 1_000_000),
            },
            attempt,
            lease_owner,
            lease_expires: lease_expires.map(from_micros),
            infrastructure_id,
        }
    }
}

prop_compose! {
    fn any_proposal()(
        state_type in any_state(),
        name in any_state_name(),
        message in prop::option::of(Just("why".to_string())),
        transition_id in prop::sample::select(vec!["t1", "t2", "t3", "t4"]),
    ) -> Proposal {
        Proposal { state_type, name, message, transition_id: transition_id.to_string(), error_summary: None }
    }
}

prop_compose! {
    fn any_guard()(
        expected in prop::option::of(any_state()),
        lease_owner in any_owner(),
    ) -> TransitionGuard {
        TransitionGuard { expected, lease_owner, attempt: None }
    }
}

fn context(already_recorded: bool, infrastructure_id: Option<&str>) -> TransitionContext<'_> {
    TransitionContext {
        already_recorded,
        infrastructure_id,
        now: now(),
    }
}

/// The row a sequence of decisions leaves: the last accepted one's, else the run as read.
fn final_row<'a>(run: &'a RunRecord, decisions: &'a [Decision]) -> &'a RunRecord {
    decisions
        .iter()
        .rev()
        .find_map(|d| match d {
            Decision::Accepted(t) => Some(&t.row),
            _ => None,
        })
        .unwrap_or(run)
}

#[test]
fn a_scheduled_run_is_claimed_with_a_lease() {
    let run = RunRecord {
        state: State {
            state_type: StateType::Scheduled,
            name: "Scheduled".into(),
            message: None,
            timestamp: now(),
        },
        attempt: 1,
        lease_owner: None,
        lease_expires: None,
        infrastructure_id: None,
    };
    let guard = TransitionGuard {
        expected: None,
        lease_owner: Some("ctl-a".into()),
        attempt: None,
    };
    let proposal = Proposal::new(StateType::Pending).named(names::SUBMITTING);
    let Decision::Accepted(t) = decide(&run, &proposal, &guard, context(false, None)) else {
        panic!("a claim of a SCHEDULED run is accepted");
    };
    assert_eq!(
        t.lease,
        LeaseEffect::Taken {
            owner: Some("ctl-a".into()),
            expires: now() + PROPOSED_PENDING_LEASE,
        }
    );
    assert_eq!(t.row.lease_owner.as_deref(), Some("ctl-a"));
    assert_eq!(t.row.state.name, names::SUBMITTING);
    assert!(!t.next_attempt && !t.wakes_controllers);
}

#[test]
fn an_infrastructure_id_is_recorded_once_in_a_sequence() {
    let run = RunRecord {
        state: State {
            state_type: StateType::Pending,
            name: names::SUBMITTING.into(),
            message: None,
            timestamp: now(),
        },
        attempt: 1,
        lease_owner: Some("ctl-a".into()),
        lease_expires: Some(now()),
        infrastructure_id: None,
    };
    let proposals = [
        Proposal::new(StateType::Running),
        Proposal::new(StateType::Completed),
    ];
    let guard = TransitionGuard::owned("ctl-a", StateType::Pending);
    let decisions = decide_sequence(&run, &proposals, &guard, &[], Some("job-9"), now());
    let effects: Vec<_> = decisions
        .iter()
        .map(|d| match d {
            Decision::Accepted(t) => t.infrastructure.clone(),
            other => panic!("expected both accepted, got {other:?}"),
        })
        .collect();
    assert_eq!(
        effects,
        vec![
            InfrastructureEffect::Recorded("job-9".into()),
            InfrastructureEffect::Kept
        ]
    );
    let last = final_row(&run, &decisions);
    assert_eq!(last.infrastructure_id.as_deref(), Some("job-9"));
    assert_eq!(last.lease_owner, None, "a terminal state clears the lease");
}

proptest! {
    /// A terminal run refuses every proposal that is not a repeat, whatever the guard.
    #[test]
    fn terminal_runs_never_leave(
        run in any_run(),
        proposal in any_proposal(),
        guard in any_guard(),
    ) {
        prop_assume!(run.state.state_type.is_terminal());
        let decision = decide(&run, &proposal, &guard, context(false, Some("job-2")));
        prop_assert_eq!(
            decision,
            Decision::Rejected(Rejection::AlreadyTerminal { current: run.state.state_type })
        );
    }

    /// A proposal whose transition id the history holds is a no-op, and a sequence of such
    /// proposals leaves the row as it was read.
    #[test]
    fn a_repeated_transition_id_writes_nothing(
        run in any_run(),
        proposals in prop::collection::vec(any_proposal(), 1..6),
        guard in any_guard(),
    ) {
        prop_assert_eq!(
            decide(&run, &proposals[0], &guard, context(true, Some("job-2"))),
            Decision::NoOp
        );
        let recorded: Vec<String> = proposals.iter().map(|p| p.transition_id.clone()).collect();
        let decisions = decide_sequence(&run, &proposals, &guard, &recorded, Some("job-2"), now());
        prop_assert!(decisions.iter().all(|d| *d == Decision::NoOp));
        prop_assert_eq!(final_row(&run, &decisions), &run);
    }

    /// A writer naming a lease owner other than the holder of an active run's lease is refused.
    #[test]
    fn a_foreign_lease_is_always_rejected(
        run in any_run(),
        proposal in any_proposal(),
        expected in prop::option::of(any_state()),
        writer in prop::sample::select(vec!["ctl-a", "ctl-b"]),
    ) {
        prop_assume!(run.state.state_type.is_active());
        prop_assume!(run.lease_owner.as_deref() != Some(writer));
        let guard = TransitionGuard { expected, lease_owner: Some(writer.to_string()), attempt: None };
        let decision = decide(&run, &proposal, &guard, context(false, None));
        let from = run.state.state_type;
        if expected.is_none_or(|e| e == from) {
            prop_assert_eq!(
                decision,
                Decision::Rejected(Rejection::NotLeaseOwner { owner: run.lease_owner.clone() })
            );
        } else {
            let changed = matches!(decision, Decision::Rejected(Rejection::StateChanged { .. }));
            prop_assert!(changed, "expected StateChanged, got {:?}", decision);
        }
    }

    /// Without a guard or a repeat, the decision is exactly the transition table's.
    #[test]
    fn the_outcome_agrees_with_check_transition(
        run in any_run(),
        proposal in any_proposal(),
    ) {
        let decision = decide(&run, &proposal, &TransitionGuard::default(), context(false, None));
        match check_transition(run.state.state_type, proposal.state_type) {
            Ok(()) => prop_assert!(matches!(decision, Decision::Accepted(_))),
            Err(reason) => prop_assert_eq!(decision, Decision::Rejected(reason)),
        }
    }

    /// The attempt grows by one exactly on SCHEDULED named `AwaitingRetry`, and never otherwise.
    #[test]
    fn attempt_only_increments_on_a_retry(
        run in any_run(),
        proposal in any_proposal(),
        guard in any_guard(),
    ) {
        if let Decision::Accepted(t) = decide(&run, &proposal, &guard, context(false, None)) {
            let retry = proposal.state_type == StateType::Scheduled
                && proposal.name.as_deref() == Some(names::AWAITING_RETRY);
            prop_assert_eq!(t.next_attempt, retry);
            prop_assert_eq!(t.row.attempt, run.attempt + i64::from(retry));
        }
    }

    /// An accepted row carries the proposed state at `now`, and its lease and infrastructure id
    /// are what the named effects say.
    #[test]
    fn accepted_rows_match_their_effects(
        run in any_run(),
        proposal in any_proposal(),
        guard in any_guard(),
        infrastructure_id in prop::option::of(Just("job-2")),
    ) {
        let decision = decide(&run, &proposal, &guard, context(false, infrastructure_id));
        let Decision::Accepted(t) = decision else { return Ok(()) };
        let (from, to) = (run.state.state_type, proposal.state_type);
        prop_assert_eq!(t.from, from);
        prop_assert_eq!(&t.row.state, &State {
            state_type: to,
            name: proposal.state_name(),
            message: proposal.message.clone(),
            timestamp: now(),
        });
        let expected_lease = if to.is_terminal() || to == StateType::Scheduled {
            LeaseEffect::Cleared
        } else if to == StateType::Pending {
            LeaseEffect::Taken {
                owner: guard.lease_owner.clone(),
                expires: now() + PROPOSED_PENDING_LEASE,
            }
        } else {
            LeaseEffect::Kept
        };
        prop_assert_eq!(&t.lease, &expected_lease);
        let (owner, expires) = match &t.lease {
            LeaseEffect::Kept => (run.lease_owner.clone(), run.lease_expires),
            LeaseEffect::Cleared => (None, None),
            LeaseEffect::Taken { owner, expires } => (owner.clone(), Some(*expires)),
        };
        prop_assert_eq!((&t.row.lease_owner, t.row.lease_expires), (&owner, expires));
        let records = to != StateType::Scheduled
            && from == StateType::Pending
            && run.infrastructure_id.is_none()
            && infrastructure_id.is_some();
        let expected_infrastructure = if to == StateType::Scheduled {
            InfrastructureEffect::Cleared
        } else if records {
            InfrastructureEffect::Recorded("job-2".into())
        } else {
            InfrastructureEffect::Kept
        };
        prop_assert_eq!(&t.infrastructure, &expected_infrastructure);
        let infrastructure = match &t.infrastructure {
            InfrastructureEffect::Kept => run.infrastructure_id.clone(),
            InfrastructureEffect::Cleared => None,
            InfrastructureEffect::Recorded(id) => Some(id.clone()),
        };
        prop_assert_eq!(&t.row.infrastructure_id, &infrastructure);
        prop_assert_eq!(
            t.wakes_controllers,
            matches!(to, StateType::Scheduled | StateType::Cancelling)
        );
    }

    /// A sequence is decided step by step: each proposal against the row the previous accepted
    /// one left, expecting the state the previous one named; the first rejection ends it; no
    /// accepted step leaves a terminal state.
    #[test]
    fn sequences_are_decided_step_by_step(
        run in any_run(),
        proposals in prop::collection::vec(any_proposal(), 0..8),
        guard in any_guard(),
        recorded in prop::collection::vec(
            prop::sample::select(vec!["t1".to_string(), "t3".to_string()]), 0..2),
    ) {
        let decisions = decide_sequence(&run, &proposals, &guard, &recorded, Some("job-2"), now());
        prop_assert!(decisions.len() <= proposals.len());
        let mut current = run.clone();
        let mut step_guard = guard.clone();
        let mut infrastructure_id = Some("job-2");
        for (i, (decision, proposal)) in decisions.iter().zip(&proposals).enumerate() {
            let ctx = context(recorded.contains(&proposal.transition_id), infrastructure_id);
            prop_assert_eq!(decision, &decide(&current, proposal, &step_guard, ctx));
            match decision {
                Decision::Rejected(_) => prop_assert_eq!(i + 1, decisions.len()),
                Decision::NoOp => {}
                Decision::Accepted(t) => {
                    prop_assert!(!current.state.state_type.is_terminal());
                    if matches!(t.infrastructure, InfrastructureEffect::Recorded(_)) {
                        infrastructure_id = None;
                    }
                    current = t.row.clone();
                }
            }
            step_guard.expected = Some(proposal.state_type);
        }
        if decisions.len() < proposals.len() {
            prop_assert!(matches!(decisions.last(), Some(Decision::Rejected(_))));
        }
        prop_assert_eq!(final_row(&run, &decisions), &current);
    }
}
