//! Retries and tags in the store (issue 13; docs/retries.md), each test on SQLite and on
//! PostgreSQL: the retry rule in the transition's transaction, per-run overrides, cancellation,
//! tag inheritance and the run list's filters.

use chrono::{Duration, Utc};
use pushpool::model::{Deployment, FlowRun};
use pushpool::state::{
    names, Proposal, Rejection, RetryDelay, RetryOverride, RetryPolicy, StateType,
};
use pushpool::store::{
    DeploymentPatch, NewDeployment, NewPool, NewRun, PoolSelector, RunDefaults, RunFilter, Store,
    TransitionGuard, TransitionOutcome,
};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::{json, Map};
use uuid::Uuid;

both_backends!(
    a_failed_attempt_is_retried_in_the_same_transaction_until_retries_run_out,
    retry_on_and_run_overrides_decide_what_is_retried,
    a_cancelled_run_is_never_retried,
    a_repeated_failure_proposal_does_not_retry_twice,
    runs_inherit_tags_and_the_list_filters_by_tag_state_and_time,
    a_deployment_change_applies_to_later_runs_only,
    writes_for_an_earlier_attempt_are_refused,
);

struct Fixture {
    store: Store,
    ws: Uuid,
}

async fn fixture(db: &TestDb) -> Fixture {
    let store = connect(db, 4).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    store
        .create_pool(
            ws,
            NewPool {
                name: "p".into(),
                pool_type: "process".into(),
                description: None,
                base_job_template: json!({"job_configuration": {}, "variables": {"type": "object", "properties": {}}}),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await
        .unwrap();
    Fixture { store, ws }
}

fn policy(retries: i64, delay: RetryDelay) -> RetryPolicy {
    RetryPolicy {
        retries,
        retry_delay_seconds: delay,
        ..RetryPolicy::default()
    }
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

impl Fixture {
    async fn deployment(&self, name: &str, retry: RetryPolicy, tags: Vec<String>) -> Deployment {
        self.store
            .create_deployment_with(
                self.ws,
                NewDeployment {
                    name: name.into(),
                    work_pool: "p".into(),
                    work_queue: None,
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: None,
                    paused: false,
                },
                RunDefaults { retry, tags },
            )
            .await
            .unwrap()
    }

    async fn run(&self, d: &Deployment, retry: RetryOverride, tags: Vec<String>) -> FlowRun {
        let new = NewRun {
            retry,
            tags,
            ..NewRun::default()
        };
        self.store.create_run(d, new).await.unwrap().0
    }

    async fn propose(&self, run: Uuid, p: Proposal) -> TransitionOutcome {
        self.store
            .propose_state(run, p, TransitionGuard::default())
            .await
            .unwrap()
    }

    /// Claims (PENDING), records infrastructure, starts (RUNNING) and ends the current attempt
    /// with `end`; returns the run afterwards.
    async fn attempt_ending(&self, run: Uuid, end: StateType) -> FlowRun {
        for step in [StateType::Pending, StateType::Running] {
            let out = self.propose(run, Proposal::new(step)).await;
            assert!(matches!(out, TransitionOutcome::Accepted(_)), "{out:?}");
        }
        let out = self
            .propose(run, Proposal::new(end).with_message("exit code 1"))
            .await;
        let TransitionOutcome::Accepted(after) = out else {
            panic!("not accepted: {out:?}")
        };
        assert_eq!(after, self.store.run(run).await.unwrap());
        after
    }

    async fn history(&self, run: Uuid) -> Vec<(StateType, String)> {
        self.store
            .state_history(run)
            .await
            .unwrap()
            .into_iter()
            .map(|h| (h.state_type, h.name))
            .collect()
    }

    async fn ids(&self, filter: RunFilter) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .store
            .list_runs(self.ws, &filter)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }
}

async fn a_failed_attempt_is_retried_in_the_same_transaction_until_retries_run_out(db: TestDb) {
    let f = fixture(&db).await;
    let d = f
        .deployment(
            "d",
            policy(2, RetryDelay::PerAttempt(vec![2.0, 30.0])),
            vec![],
        )
        .await;
    assert_eq!(d.retry.retries, 2);
    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    assert_eq!(run.retry, d.retry, "the run gets the deployment's policy");

    let before = Utc::now();
    let first = f.attempt_ending(run.id, StateType::Failed).await;
    assert_eq!(first.state.state_type, StateType::Scheduled);
    assert_eq!(first.state.name, names::AWAITING_RETRY);
    assert_eq!(first.attempt, 2);
    assert_eq!(first.infrastructure_id, None);
    assert_eq!(first.lease_owner, None);
    assert!(first.scheduled_time >= before + Duration::seconds(2));
    assert!(first.scheduled_time <= Utc::now() + Duration::seconds(2));

    let second = f.attempt_ending(run.id, StateType::Crashed).await;
    assert_eq!(
        (second.state.name.as_str(), second.attempt),
        (names::AWAITING_RETRY, 3)
    );
    assert!(second.scheduled_time >= first.scheduled_time + Duration::seconds(28));

    let last = f.attempt_ending(run.id, StateType::Failed).await;
    assert_eq!(
        last.state.state_type,
        StateType::Failed,
        "retries exhausted"
    );
    assert_eq!(last.attempt, 3);
    assert_eq!(last.state.message.as_deref(), Some("exit code 1"));

    use StateType::*;
    let attempt = |end: StateType, end_name: &str| {
        vec![
            (Pending, "Pending".to_string()),
            (Running, "Running".to_string()),
            (end, end_name.to_string()),
        ]
    };
    let mut expected = vec![(Scheduled, "Scheduled".to_string())];
    expected.extend(attempt(Failed, "Failed"));
    expected.push((Scheduled, names::AWAITING_RETRY.to_string()));
    expected.extend(attempt(Crashed, "Crashed"));
    expected.push((Scheduled, names::AWAITING_RETRY.to_string()));
    expected.extend(attempt(Failed, "Failed"));
    assert_eq!(f.history(run.id).await, expected);
    let entries = f.store.state_history(run.id).await.unwrap();
    let retry_message = entries[4].message.clone().unwrap();
    assert!(
        retry_message.contains("attempt 1 ended FAILED; retry 1 of 2"),
        "{retry_message}"
    );
    assert_eq!(entries[3].message.as_deref(), Some("exit code 1"));
    let events = f.store.list_events(f.ws, 100).await.unwrap();
    let retried = events
        .iter()
        .filter(|e| {
            e.event.starts_with("pushpool.flow-run.")
                && e.resource.labels["pushpool.state-type"] == "SCHEDULED"
                && e.payload["from"] == "FAILED"
        })
        .count();
    assert_eq!(retried, 1, "one event per retry from FAILED");
}

async fn retry_on_and_run_overrides_decide_what_is_retried(db: TestDb) {
    let f = fixture(&db).await;
    let mut only_crashes = policy(1, RetryDelay::Seconds(0.0));
    only_crashes.retry_on = vec![StateType::Crashed];
    let d = f.deployment("d", only_crashes, vec![]).await;

    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    let end = f.attempt_ending(run.id, StateType::Failed).await;
    assert_eq!(
        end.state.state_type,
        StateType::Failed,
        "FAILED is not in retry_on"
    );

    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    let end = f.attempt_ending(run.id, StateType::Crashed).await;
    assert_eq!(
        (end.state.state_type, end.attempt),
        (StateType::Scheduled, 2)
    );

    let none = RetryOverride {
        retries: Some(0),
        ..RetryOverride::default()
    };
    let run = f.run(&d, none, vec![]).await;
    assert_eq!(run.retry.retries, 0);
    assert_eq!(
        run.retry.retry_on,
        vec![StateType::Crashed],
        "other fields kept"
    );
    let end = f.attempt_ending(run.id, StateType::Crashed).await;
    assert_eq!(end.state.state_type, StateType::Crashed);

    let failed_too = RetryOverride {
        retry_on: Some(vec![StateType::Failed]),
        ..RetryOverride::default()
    };
    let run = f.run(&d, failed_too, vec![]).await;
    let end = f.attempt_ending(run.id, StateType::Failed).await;
    assert_eq!(end.state.state_type, StateType::Scheduled);

    let bad = NewRun {
        retry: RetryOverride {
            retries: Some(1000),
            ..RetryOverride::default()
        },
        ..NewRun::default()
    };
    let err = f.store.create_run(&d, bad).await.unwrap_err();
    assert!(err.to_string().contains("retries"), "{err}");
}

async fn a_cancelled_run_is_never_retried(db: TestDb) {
    let f = fixture(&db).await;
    let d = f
        .deployment("d", policy(3, RetryDelay::Seconds(0.0)), vec![])
        .await;
    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    for step in [
        StateType::Pending,
        StateType::Running,
        StateType::Cancelling,
    ] {
        assert!(f.propose(run.id, Proposal::new(step)).await.is_recorded());
    }
    let crash = f.propose(run.id, Proposal::new(StateType::Crashed)).await;
    assert!(!crash.is_recorded(), "CANCELLING only moves to CANCELLED");
    let out = f.propose(run.id, Proposal::new(StateType::Cancelled)).await;
    let TransitionOutcome::Accepted(done) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (done.state.state_type, done.attempt),
        (StateType::Cancelled, 1)
    );
    // Cancelled before it started: also final.
    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    let out = f.propose(run.id, Proposal::new(StateType::Cancelled)).await;
    assert_eq!(out.run().state.state_type, StateType::Cancelled);
}

async fn a_repeated_failure_proposal_does_not_retry_twice(db: TestDb) {
    let f = fixture(&db).await;
    let d = f
        .deployment("d", policy(5, RetryDelay::Seconds(0.0)), vec![])
        .await;
    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    for step in [StateType::Pending, StateType::Running] {
        f.propose(run.id, Proposal::new(step)).await;
    }
    let failed = Proposal::new(StateType::Failed).with_transition_id("job-report-1");
    let first = f.propose(run.id, failed.clone()).await;
    assert_eq!(first.run().attempt, 2);
    let again = f.propose(run.id, failed).await;
    assert!(
        matches!(again, TransitionOutcome::Duplicate(_)),
        "{again:?}"
    );
    assert_eq!(f.store.run(run.id).await.unwrap().attempt, 2);
    assert_eq!(f.history(run.id).await.len(), 5);
}

async fn runs_inherit_tags_and_the_list_filters_by_tag_state_and_time(db: TestDb) {
    let f = fixture(&db).await;
    let etl = f
        .deployment("etl", RetryPolicy::default(), tags(&["prod", "etl"]))
        .await;
    assert_eq!(etl.tags, tags(&["prod", "etl"]));
    let other = f.deployment("other", RetryPolicy::default(), vec![]).await;
    let manual = f
        .run(&etl, RetryOverride::default(), tags(&["manual", "etl"]))
        .await;
    assert_eq!(manual.tags, tags(&["prod", "etl", "manual"]));
    let plain = f.run(&etl, RetryOverride::default(), vec![]).await;
    let untagged = f.run(&other, RetryOverride::default(), vec![]).await;
    assert!(untagged.tags.is_empty());
    f.propose(untagged.id, Proposal::new(StateType::Cancelled))
        .await;

    let by_tags = |t: &[&str]| RunFilter {
        tags: tags(t),
        ..RunFilter::default()
    };
    let mut both = vec![manual.id, plain.id];
    both.sort();
    assert_eq!(f.ids(by_tags(&["prod"])).await, both);
    assert_eq!(f.ids(by_tags(&["prod", "manual"])).await, vec![manual.id]);
    assert_eq!(f.ids(by_tags(&["nope"])).await, Vec::<Uuid>::new());

    let states = |s: Vec<StateType>| RunFilter {
        states: s,
        ..RunFilter::default()
    };
    assert_eq!(
        f.ids(states(vec![StateType::Cancelled, StateType::Failed]))
            .await,
        vec![untagged.id]
    );
    assert_eq!(f.ids(states(vec![StateType::Scheduled])).await, both);

    let later = NewRun {
        scheduled_time: Some(Utc::now() + Duration::hours(2)),
        ..NewRun::default()
    };
    let later = f.store.create_run(&other, later).await.unwrap().0;
    let window = RunFilter {
        since: Some(Utc::now() + Duration::hours(1)),
        ..RunFilter::default()
    };
    assert_eq!(f.ids(window).await, vec![later.id]);
    let before = RunFilter {
        until: Some(Utc::now() + Duration::hours(1)),
        ..RunFilter::default()
    };
    assert_eq!(f.ids(before).await.len(), 3);
    let exact = RunFilter {
        since: Some(later.scheduled_time),
        until: Some(later.scheduled_time + Duration::microseconds(1)),
        ..RunFilter::default()
    };
    assert_eq!(
        f.ids(exact).await,
        vec![later.id],
        "since inclusive, until exclusive"
    );
}

async fn a_deployment_change_applies_to_later_runs_only(db: TestDb) {
    let f = fixture(&db).await;
    let d = f
        .deployment("d", RetryPolicy::default(), tags(&["a"]))
        .await;
    let old = f.run(&d, RetryOverride::default(), vec![]).await;
    let patch = DeploymentPatch {
        retry: Some(policy(4, RetryDelay::Seconds(9.0))),
        tags: Some(tags(&["b"])),
        ..DeploymentPatch::default()
    };
    let d = f.store.update_deployment(f.ws, "d", patch).await.unwrap();
    assert_eq!(d.retry.retries, 4);
    assert_eq!(d.tags, tags(&["b"]));
    let read = f.store.deployment(f.ws, "d").await.unwrap();
    assert_eq!(read, d);
    let new = f.run(&d, RetryOverride::default(), vec![]).await;
    assert_eq!(new.retry.retries, 4);
    assert_eq!(new.tags, tags(&["b"]));
    let old = f.store.run(old.id).await.unwrap();
    assert_eq!((old.retry.retries, old.tags.clone()), (0, tags(&["a"])));
    let end = f.attempt_ending(old.id, StateType::Failed).await;
    assert_eq!(
        end.state.state_type,
        StateType::Failed,
        "the run's own policy counts"
    );
}

async fn writes_for_an_earlier_attempt_are_refused(db: TestDb) {
    let f = fixture(&db).await;
    let d = f
        .deployment("d", policy(1, RetryDelay::Seconds(0.0)), vec![])
        .await;
    let run = f.run(&d, RetryOverride::default(), vec![]).await;
    let claim = || async {
        let lease = std::time::Duration::from_secs(30);
        let claimed = f
            .store
            .claim_due(&PoolSelector::All, Utc::now(), 10, "ctl-a", lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        claimed[0].clone()
    };
    assert_eq!(claim().await.attempt, 1);
    // The job reports its failure itself; the same controller claims the retry at once.
    f.propose(run.id, Proposal::new(StateType::Failed)).await;
    let second = claim().await;
    assert_eq!(
        (second.attempt, second.state.state_type),
        (2, StateType::Pending)
    );
    // The first attempt's task, late, must not write to the second attempt.
    let stale = f
        .store
        .set_attempt_infrastructure(run.id, Some(1), "ctl-a", "job-of-attempt-1")
        .await
        .unwrap();
    assert!(!stale);
    let guard = |attempt| TransitionGuard {
        expected: Some(StateType::Pending),
        lease_owner: Some("ctl-a".into()),
        attempt: Some(attempt),
    };
    let out = f
        .store
        .propose_state(run.id, Proposal::new(StateType::Running), guard(1))
        .await
        .unwrap();
    let TransitionOutcome::Rejected { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        reason,
        Rejection::AttemptChanged {
            expected: 1,
            current: 2
        }
    );
    assert!(f
        .store
        .set_attempt_infrastructure(run.id, Some(2), "ctl-a", "job-of-attempt-2")
        .await
        .unwrap());
    let out = f
        .store
        .propose_state(run.id, Proposal::new(StateType::Running), guard(2))
        .await
        .unwrap();
    assert!(matches!(out, TransitionOutcome::Accepted(_)), "{out:?}");
    let now = f.store.run(run.id).await.unwrap();
    assert_eq!(now.infrastructure_id.as_deref(), Some("job-of-attempt-2"));
}
