use chrono::{Duration, TimeZone, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn ended(state_type: StateType, attempt: i64) -> RunRecord {
    RunRecord {
        state: State {
            state_type,
            name: state_type.default_name().into(),
            message: Some("exit code 1".into()),
            timestamp: t0(),
        },
        attempt,
        lease_owner: None,
        lease_expires: None,
        infrastructure_id: Some("proc-1".into()),
    }
}

fn policy(retries: i64, delay: RetryDelay) -> RetryPolicy {
    RetryPolicy {
        retries,
        retry_delay_seconds: delay,
        ..RetryPolicy::default()
    }
}

#[test]
fn a_failed_attempt_with_retries_left_becomes_awaiting_retry() {
    let p = policy(2, RetryDelay::Seconds(10.0));
    let retry = retry_after(
        &ended(StateType::Failed, 1),
        StateType::Running,
        &p,
        t0(),
        0.5,
    )
    .expect("retried");
    let row = &retry.transition.row;
    assert_eq!(row.state.state_type, StateType::Scheduled);
    assert_eq!(row.state.name, names::AWAITING_RETRY);
    assert_eq!(row.attempt, 2);
    assert_eq!(row.infrastructure_id, None);
    assert_eq!(row.lease_owner, None);
    assert_eq!(retry.transition.from, StateType::Failed);
    assert!(retry.transition.next_attempt);
    assert_eq!(retry.scheduled_time, t0() + Duration::seconds(10));
    let message = row.state.message.as_deref().unwrap();
    assert!(
        message.contains("attempt 1 ended FAILED; retry 1 of 2"),
        "{message}"
    );
}

#[test]
fn the_last_allowed_attempt_is_not_retried() {
    let p = policy(2, RetryDelay::Seconds(0.0));
    assert!(retry_after(
        &ended(StateType::Failed, 2),
        StateType::Running,
        &p,
        t0(),
        0.0
    )
    .is_some());
    assert!(retry_after(
        &ended(StateType::Failed, 3),
        StateType::Running,
        &p,
        t0(),
        0.0
    )
    .is_none());
    let none = RetryPolicy::default();
    assert!(retry_after(
        &ended(StateType::Crashed, 1),
        StateType::Pending,
        &none,
        t0(),
        0.0
    )
    .is_none());
}

#[test]
fn only_the_listed_end_states_are_retried() {
    let mut p = policy(3, RetryDelay::Seconds(0.0));
    p.retry_on = vec![StateType::Crashed];
    assert!(retry_after(
        &ended(StateType::Failed, 1),
        StateType::Running,
        &p,
        t0(),
        0.0
    )
    .is_none());
    assert!(retry_after(
        &ended(StateType::Crashed, 1),
        StateType::Running,
        &p,
        t0(),
        0.0
    )
    .is_some());
    for end in [
        StateType::Completed,
        StateType::Cancelled,
        StateType::Running,
    ] {
        let p = policy(3, RetryDelay::Seconds(0.0));
        assert!(retry_after(&ended(end, 1), StateType::Running, &p, t0(), 0.0).is_none());
    }
}

#[test]
fn a_run_being_cancelled_is_never_retried() {
    let p = policy(3, RetryDelay::Seconds(0.0));
    assert!(retry_after(
        &ended(StateType::Crashed, 1),
        StateType::Cancelling,
        &p,
        t0(),
        0.0
    )
    .is_none());
}

#[test]
fn per_attempt_delays_repeat_their_last_entry() {
    let d = RetryDelay::PerAttempt(vec![1.0, 5.0, 30.0]);
    assert_eq!(
        [d.before(1), d.before(2), d.before(3), d.before(9)],
        [1.0, 5.0, 30.0, 30.0]
    );
    let p = policy(5, d);
    let second = retry_after(
        &ended(StateType::Failed, 2),
        StateType::Running,
        &p,
        t0(),
        0.0,
    )
    .unwrap();
    assert_eq!(second.scheduled_time, t0() + Duration::seconds(5));
}

#[test]
fn jitter_only_lengthens_the_delay_within_its_factor() {
    let mut p = policy(1, RetryDelay::Seconds(10.0));
    p.retry_jitter_factor = Some(0.5);
    assert_eq!(p.delay(1, 0.0), Duration::seconds(10));
    assert_eq!(p.delay(1, 1.0), Duration::seconds(15));
    for i in 0..100 {
        let d = p.delay(1, f64::from(i) / 100.0);
        assert!(
            d >= Duration::seconds(10) && d <= Duration::seconds(15),
            "{d}"
        );
    }
}

#[test]
fn validation_names_the_field() {
    let field = |p: RetryPolicy| p.validate().unwrap_err().field;
    assert_eq!(field(policy(-1, RetryDelay::default())), "retries");
    assert_eq!(field(policy(101, RetryDelay::default())), "retries");
    assert_eq!(
        field(policy(1, RetryDelay::Seconds(-1.0))),
        "retry_delay_seconds"
    );
    assert_eq!(
        field(policy(1, RetryDelay::PerAttempt(vec![1.0, f64::NAN]))),
        "retry_delay_seconds[1]"
    );
    assert_eq!(
        field(policy(1, RetryDelay::PerAttempt(vec![]))),
        "retry_delay_seconds"
    );
    let mut p = policy(1, RetryDelay::default());
    p.retry_jitter_factor = Some(-0.1);
    assert_eq!(field(p), "retry_jitter_factor");
    let mut p = policy(1, RetryDelay::default());
    p.retry_on = vec![StateType::Failed, StateType::Completed];
    assert_eq!(field(p), "retry_on[1]");
    assert!(policy(100, RetryDelay::PerAttempt(vec![0.0, 604_800.0]))
        .validate()
        .is_ok());
}

#[test]
fn an_override_replaces_only_the_fields_it_gives() {
    let base = RetryPolicy {
        retries: 2,
        retry_delay_seconds: RetryDelay::Seconds(5.0),
        retry_jitter_factor: Some(0.1),
        retry_on: vec![StateType::Failed],
    };
    let o = RetryOverride {
        retries: Some(4),
        ..RetryOverride::default()
    };
    let p = o.apply(&base).unwrap();
    assert_eq!(p.retries, 4);
    assert_eq!(p.retry_delay_seconds, RetryDelay::Seconds(5.0));
    assert_eq!(p.retry_on, vec![StateType::Failed]);
    let bad = RetryOverride {
        retries: Some(-3),
        ..RetryOverride::default()
    };
    assert_eq!(bad.apply(&base).unwrap_err().field, "retries");
}

#[test]
fn the_delay_deserializes_from_a_number_or_a_list() {
    let p: RetryPolicy =
        serde_json::from_str(r#"{"retries": 2, "retry_delay_seconds": [1, 2.5]}"#).unwrap();
    assert_eq!(
        p.retry_delay_seconds,
        RetryDelay::PerAttempt(vec![1.0, 2.5])
    );
    assert_eq!(p.retry_on, vec![StateType::Failed, StateType::Crashed]);
    let p: RetryPolicy = serde_json::from_str(r#"{"retry_delay_seconds": 3}"#).unwrap();
    assert_eq!(p.retry_delay_seconds, RetryDelay::Seconds(3.0));
    assert_eq!(p.retries, 0);
}

#[test]
fn tags_are_checked_and_deduplicated_and_inherited() {
    let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        check_tags("tags", &tags(&["a", "b", "a"])).unwrap(),
        tags(&["a", "b"])
    );
    assert_eq!(
        check_tags("tags", &tags(&["ok", "a,b"])).unwrap_err().field,
        "tags[1]"
    );
    assert_eq!(
        check_tags("tags", &tags(&[""])).unwrap_err().field,
        "tags[0]"
    );
    assert_eq!(
        check_tags("tags", &tags(&[" x"])).unwrap_err().field,
        "tags[0]"
    );
    let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    assert_eq!(check_tags("tags", &many).unwrap_err().field, "tags");
    assert_eq!(
        inherit_tags(&tags(&["prod", "etl"]), &tags(&["etl", "manual"])),
        tags(&["prod", "etl", "manual"])
    );
}

#[test]
fn a_writer_of_an_earlier_attempt_is_refused() {
    use crate::state::{decide, Decision, Proposal, Rejection, TransitionContext, TransitionGuard};
    let mut run = ended(StateType::Pending, 2);
    run.lease_owner = Some("ctl-a".into());
    let guard = |attempt| TransitionGuard {
        expected: Some(StateType::Pending),
        lease_owner: Some("ctl-a".into()),
        attempt: Some(attempt),
    };
    let context = TransitionContext {
        already_recorded: false,
        infrastructure_id: None,
        now: t0(),
    };
    let proposal = Proposal::new(StateType::Running);
    assert_eq!(
        decide(&run, &proposal, &guard(1), context),
        Decision::Rejected(Rejection::AttemptChanged {
            expected: 1,
            current: 2
        })
    );
    assert!(matches!(
        decide(&run, &proposal, &guard(2), context),
        Decision::Accepted(_)
    ));
}
