//! Schedules and the scheduler, driven by a manual clock on SQLite and PostgreSQL: two schedulers
//! racing (and one killed mid-way) make every slot's run exactly once; catch-up after downtime
//! follows each schedule's policy and the runs then execute; edits and backfills keep one run per
//! slot.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use pushpool::auth::RunTokens;
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::model::Deployment;
use pushpool::schedule::{Catchup, Kind};
use pushpool::scheduler::{backfill, ManualClock, Scheduler, SchedulerConfig};
use pushpool::state::Proposal;
use pushpool::state::StateType;
use pushpool::store::{
    DeploymentPatch, NewDeployment, NewPool, NewSchedule, PoolSelector, SchedulePatch, Store,
    TransitionGuard,
};
use pushpool_null::NullProvider;
use pushpool_provider::Registry;
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::Map;
use uuid::Uuid;

both_backends!(
    racing_schedulers_make_every_slot_exactly_once_even_when_one_dies,
    catch_up_follows_each_policy_and_the_runs_execute,
    editing_a_schedule_replaces_its_future_runs_and_backfill_is_idempotent,
    max_active_runs_holds_a_schedules_due_runs_back,
    paused_deployments_are_skipped_without_ending_the_scan,
);

struct Env {
    store: Store,
    ws: Uuid,
    provider: NullProvider,
}

async fn env(db: &TestDb) -> Env {
    let store = connect(db, 8).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    let provider = NullProvider::default();
    let template = pushpool_provider::Provider::default_base_job_template(&provider);
    store
        .create_pool(
            ws,
            NewPool {
                name: "nulls".into(),
                pool_type: "null".into(),
                description: None,
                base_job_template: template,
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await
        .unwrap();
    Env {
        store,
        ws,
        provider,
    }
}

fn schedule(kind: Kind, spec: &str, catchup: Catchup) -> NewSchedule {
    NewSchedule {
        kind,
        spec: spec.into(),
        timezone: None,
        anchor: None,
        active: true,
        parameters: Map::new(),
        job_variables: Map::new(),
        max_active_runs: None,
        catchup,
    }
}

impl Env {
    async fn deployment(&self, name: &str) -> Deployment {
        self.store
            .create_deployment(
                self.ws,
                NewDeployment {
                    name: name.into(),
                    work_pool: "nulls".into(),
                    work_queue: None,
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: None,
                    paused: false,
                },
            )
            .await
            .unwrap()
    }

    /// Scheduled times of every run, per deployment.
    async fn slots(&self) -> HashMap<Uuid, Vec<DateTime<Utc>>> {
        let mut out: HashMap<Uuid, Vec<DateTime<Utc>>> = HashMap::new();
        for run in self.store.all_runs(self.ws).await.unwrap() {
            out.entry(run.deployment_id)
                .or_default()
                .push(run.scheduled_time);
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}

/// A minute boundary a day ago, plus 30 s (runs are due in real time, so a controller takes them).
fn start() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(1))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap()
        + TimeDelta::seconds(30)
}

fn minutes(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut t = from.duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::minutes(1);
    let mut out = vec![];
    while t <= to {
        out.push(t);
        t += TimeDelta::minutes(1);
    }
    out
}

async fn racing_schedulers_make_every_slot_exactly_once_even_when_one_dies(db: TestDb) {
    let e = env(&db).await;
    let n = 1000;
    for i in 0..n {
        let d = e.deployment(&format!("d{i:04}")).await;
        e.store
            .create_schedule(&d, schedule(Kind::Cron, "* * * * *", Catchup::None))
            .await
            .unwrap();
    }
    let t0 = start();
    let config = SchedulerConfig {
        min_runs: 3,
        min_time: TimeDelta::minutes(10),
        ..SchedulerConfig::default()
    };
    let clock = ManualClock::new(t0);
    // Two schedulers, each with its own connections, one clock.
    let other = connect(&db, 8).await;
    let a = Scheduler::with_clock(e.store.clone(), config.clone(), clock.clone());
    let mut b = Some(Scheduler::with_clock(other, config, clock.clone()));
    for minute in 0..=60 {
        if minute == 30 {
            b = None; // killed mid-way
        }
        match &b {
            Some(b) => {
                let (ra, rb) = tokio::join!(a.tick(), b.tick());
                ra.unwrap();
                rb.unwrap();
            }
            None => {
                a.tick().await.unwrap();
            }
        }
        clock.advance(TimeDelta::minutes(1));
    }
    let end = t0 + TimeDelta::minutes(60);
    let expected = minutes(t0, end + TimeDelta::minutes(10));
    assert_eq!(expected.len(), 70);
    let slots = e.slots().await;
    assert_eq!(slots.len(), n);
    for (d, got) in &slots {
        assert_eq!(got, &expected, "deployment {d}");
    }
}

async fn catch_up_follows_each_policy_and_the_runs_execute(db: TestDb) {
    let e = env(&db).await;
    let mut by_policy = vec![];
    for (name, policy) in [
        ("none", Catchup::None),
        ("latest", Catchup::Latest),
        ("all", Catchup::All),
    ] {
        let d = e.deployment(name).await;
        e.store
            .create_schedule(&d, schedule(Kind::Cron, "* * * * *", policy))
            .await
            .unwrap();
        by_policy.push((d.id, name));
    }
    let t0 = start();
    let config = SchedulerConfig {
        min_runs: 1,
        min_time: TimeDelta::zero(),
        ..SchedulerConfig::default()
    };
    let clock = ManualClock::new(t0);
    let scheduler = Scheduler::with_clock(e.store.clone(), config, clock.clone());
    scheduler.tick().await.unwrap();
    // Every schedule has its next slot and nothing before.
    for runs in e.slots().await.values() {
        assert_eq!(runs, &[t0 + TimeDelta::seconds(30)]);
    }
    // The scheduler is stopped while 10 more slots pass (t0+1m30s … t0+10m30s), then ticks.
    clock.advance(TimeDelta::minutes(11));
    let now = clock_now(&clock);
    let report = scheduler.tick().await.unwrap();
    assert_eq!(report.missed, 11);
    let slots = e.slots().await;
    for (id, name) in &by_policy {
        let past_new: Vec<_> = slots[id]
            .iter()
            .filter(|t| **t > t0 + TimeDelta::seconds(30) && **t < now)
            .collect();
        let want = match *name {
            "none" => 0,
            "latest" => 1,
            _ => 10,
        };
        assert_eq!(past_new.len(), want, "{name}");
        if *name == "latest" {
            assert_eq!(*past_new[0], now - TimeDelta::seconds(30));
        }
        // And the next slot ahead.
        assert_eq!(slots[id].last(), Some(&(now + TimeDelta::seconds(30))));
    }
    // The runs then execute: a controller on the null provider takes every due run.
    let total: usize = slots.values().map(Vec::len).sum();
    // Three first slots, none + 1 (latest) + 10 (all) caught up, three next slots.
    assert_eq!(total, 3 + 1 + 10 + 3);
    let mut registry = Registry::new();
    registry.register(Arc::new(e.provider.clone()));
    let controller = Controller::new(Context::new(
        e.store.clone(),
        registry,
        ControllerConfig {
            id: "c1".into(),
            ..ControllerConfig::default()
        },
        RunTokens::new(b"t".to_vec()),
        Arc::new(Metrics::default()),
    ));
    let began = Instant::now();
    loop {
        controller.tick().await.unwrap();
        let runs = e.store.all_runs(e.ws).await.unwrap();
        if runs
            .iter()
            .all(|r| r.state.state_type == StateType::Completed)
        {
            assert_eq!(runs.len(), total);
            // A slot run has no history row for its creation; its history still starts with
            // SCHEDULED at the run's creation, then every accepted state, exactly once each.
            let run = &runs[0];
            let history = e.store.state_history(run.id).await.unwrap();
            // (A slot that was already due when made is renamed Late first: a second SCHEDULED.)
            let types: Vec<StateType> = history.iter().map(|h| h.state_type).collect();
            assert_eq!(types[0], StateType::Scheduled);
            assert_eq!(history[0].name, "Scheduled");
            assert_eq!(
                types[types.len() - 3..],
                [StateType::Pending, StateType::Running, StateType::Completed]
            );
            let created = format!("create-{}", run.id);
            assert_eq!(history[0].transition_id, created);
            assert_eq!(
                history
                    .iter()
                    .filter(|h| h.transition_id == created)
                    .count(),
                1
            );
            assert_eq!(history[0].timestamp, run.created);
            let journal = e.store.workspace_history(e.ws).await.unwrap();
            for r in &runs {
                let of_run: Vec<StateType> = journal
                    .iter()
                    .filter(|(id, _)| *id == r.id)
                    .map(|(_, t)| *t)
                    .collect();
                assert_eq!(of_run.first(), Some(&StateType::Scheduled), "{}", r.id);
                assert_eq!(of_run.last(), Some(&StateType::Completed), "{}", r.id);
                let history = e.store.state_history(r.id).await.unwrap();
                assert_eq!(of_run.len(), history.len(), "{}", r.id);
            }
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "runs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    pushpool::scheduler::Clock::now(clock)
}

async fn editing_a_schedule_replaces_its_future_runs_and_backfill_is_idempotent(db: TestDb) {
    let e = env(&db).await;
    let d = e.deployment("edited").await;
    let s = e
        .store
        .create_schedule(&d, schedule(Kind::Interval, "PT5M", Catchup::None))
        .await
        .unwrap();
    // Intervals count from the anchor: midnight today, so slots fall on 5-minute marks.
    let now = Utc::now();
    let clock = ManualClock::new(now);
    let config = SchedulerConfig::default();
    let scheduler = Scheduler::with_clock(e.store.clone(), config, clock.clone());
    scheduler.tick().await.unwrap();
    let before = e.slots().await[&d.id].clone();
    assert_eq!(before.len(), 12, "an hour of 5-minute slots");
    assert!(before.iter().all(|t| t.timestamp() % 300 == 0 && *t > now));
    // A second tick and a second scheduler add nothing.
    assert_eq!(scheduler.tick().await.unwrap().created, 0);
    // Changing the spec removes the future runs and the next tick makes the new ones.
    e.store
        .update_schedule(
            &d,
            &s.id.to_string(),
            SchedulePatch {
                spec: Some((Kind::Cron, "*/20 * * * *".into())),
                ..SchedulePatch::default()
            },
        )
        .await
        .unwrap();
    assert!(e.slots().await.get(&d.id).is_none_or(Vec::is_empty));
    scheduler.tick().await.unwrap();
    let after = e.slots().await[&d.id].clone();
    assert!(after.len() >= 3 && after.iter().all(|t| t.timestamp() % 1200 == 0));
    // Pausing removes them; the scheduler leaves a paused schedule alone.
    let paused = e
        .store
        .update_schedule(
            &d,
            &s.id.to_string(),
            SchedulePatch {
                active: Some(false),
                ..SchedulePatch::default()
            },
        )
        .await
        .unwrap();
    assert!(!paused.active);
    scheduler.tick().await.unwrap();
    assert!(e.slots().await.get(&d.id).is_none_or(Vec::is_empty));
    // Backfill of a past day: 72 slots, once, whatever is asked twice.
    let from = now - TimeDelta::days(2);
    let to = from + TimeDelta::hours(24) - TimeDelta::seconds(1);
    let schedules = e.store.schedules_of(d.id).await.unwrap();
    let (found, created) = backfill(&e.store, &d, &schedules, from, to, 1000)
        .await
        .unwrap();
    assert_eq!((found, created), (72, 72));
    let (found, created) = backfill(&e.store, &d, &schedules, from, to, 1000)
        .await
        .unwrap();
    assert_eq!((found, created), (72, 0));
    let set: BTreeSet<_> = e.slots().await[&d.id].iter().copied().collect();
    assert_eq!(set.len(), 72);
    // Deleting the schedule keeps past runs.
    e.store
        .delete_schedule(&d, &s.id.to_string())
        .await
        .unwrap();
    assert_eq!(e.slots().await[&d.id].len(), 72);
    assert!(e.store.schedules_of(d.id).await.unwrap().is_empty());
}

async fn max_active_runs_holds_a_schedules_due_runs_back(db: TestDb) {
    let e = env(&db).await;
    let d = e.deployment("limited").await;
    let mut new = schedule(Kind::Cron, "0 * * * *", Catchup::None);
    new.max_active_runs = Some(1);
    let limited = e.store.create_schedule(&d, new).await.unwrap();
    let free = e
        .store
        .create_schedule(&d, schedule(Kind::Cron, "30 * * * *", Catchup::None))
        .await
        .unwrap();
    // Three past slots of each schedule are due.
    let to = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(1);
    let from = to - TimeDelta::hours(3) + TimeDelta::seconds(1);
    let (found, _) = backfill(&e.store, &d, &[limited.clone(), free], from, to, 10)
        .await
        .unwrap();
    assert_eq!(found, 6);
    let claim = || {
        e.store.claim_due(
            &PoolSelector::All,
            Utc::now(),
            10,
            "c1",
            Duration::from_secs(30),
        )
    };
    let first = claim().await.unwrap();
    let of_limited: Vec<_> = first
        .iter()
        .filter(|r| {
            r.idempotency_key
                .as_deref()
                .unwrap()
                .contains(&limited.id.to_string())
        })
        .collect();
    assert_eq!(first.len(), 4, "one limited run and the three free ones");
    assert_eq!(of_limited.len(), 1);
    assert!(claim().await.unwrap().is_empty(), "the limit holds");
    // When it ends, the next one goes.
    let done = of_limited[0].id;
    for state in [StateType::Running, StateType::Completed] {
        e.store
            .propose_state(done, Proposal::new(state), TransitionGuard::default())
            .await
            .unwrap();
    }
    let next = claim().await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].id, done);
}

async fn paused_deployments_are_skipped_without_ending_the_scan(db: TestDb) {
    let e = env(&db).await;
    let mut ids = vec![];
    for i in 0..5 {
        let d = e.deployment(&format!("p{i}")).await;
        e.store
            .create_schedule(&d, schedule(Kind::Cron, "@hourly", Catchup::None))
            .await
            .unwrap();
        ids.push(d.id);
    }
    // The first two (in schedule id order) are paused: a page of two holds only them.
    for name in ["p0", "p1"] {
        e.store
            .update_deployment(
                e.ws,
                name,
                DeploymentPatch {
                    paused: Some(true),
                    ..DeploymentPatch::default()
                },
            )
            .await
            .unwrap();
    }
    let config = SchedulerConfig {
        page: 2,
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::with_clock(e.store.clone(), config, ManualClock::new(Utc::now()));
    let report = scheduler.tick().await.unwrap();
    assert_eq!(report.schedules, 3);
    let slots = e.slots().await;
    assert!(!slots.contains_key(&ids[0]) && !slots.contains_key(&ids[1]));
    for id in &ids[2..] {
        assert_eq!(slots[id].len(), 3, "three hourly runs ahead");
    }
}
