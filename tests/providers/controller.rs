//! The controller driven tick by tick on both backends with the null provider.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pushpool::auth::RunTokens;
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::model::Deployment;
use pushpool::state::{Proposal, StateType};
use pushpool::store::{
    NewDeployment, NewPool, NewRun, PoolPatch, PoolSelector, Store, TransitionGuard,
};
use pushpool_null::NullProvider;
use pushpool_provider::Registry;
use pushpool_testkit::{both_backends, connect, sqlite_db, TestDb};
use serde_json::{json, Map};
use uuid::Uuid;

both_backends!(
    late_runs_are_marked_and_stay_claimable,
    silent_runs_are_crashed_with_when_last_heard,
    orphan_without_infrastructure_is_submitted_once,
    orphan_with_infrastructure_is_adopted_not_resubmitted,
    transient_submit_errors_are_retried_then_completed,
    run_cancelled_before_submission_goes_straight_to_cancelled,
    shutdown_hands_back_unsubmitted_runs,
    a_flooding_workspace_does_not_starve_another,
);

struct Env {
    store: Store,
    provider: NullProvider,
    deployment: Deployment,
    ws: Uuid,
}

async fn env(db: &TestDb, provider: NullProvider) -> Env {
    let store = connect(db, 8).await;
    let ws = store.create_workspace("default").await.unwrap().id;
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
    let deployment = store
        .create_deployment(
            ws,
            NewDeployment {
                name: "d".into(),
                work_pool: "nulls".into(),
                work_queue: None,
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    Env {
        store,
        provider,
        deployment,
        ws,
    }
}

impl Env {
    fn controller(&self, id: &str, tweak: impl FnOnce(&mut ControllerConfig)) -> Controller {
        let mut registry = Registry::new();
        registry.register(Arc::new(self.provider.clone()));
        let mut config = ControllerConfig {
            id: id.into(),
            ..ControllerConfig::default()
        };
        tweak(&mut config);
        Controller::new(Context::new(
            self.store.clone(),
            registry,
            config,
            RunTokens::new(b"t".to_vec()),
            Arc::new(Metrics::default()),
        ))
    }

    async fn run_at(&self, seconds_from_now: i64) -> Uuid {
        let new = NewRun {
            scheduled_time: Some(Utc::now() + chrono::Duration::seconds(seconds_from_now)),
            ..NewRun::default()
        };
        self.store
            .create_run(&self.deployment, new)
            .await
            .unwrap()
            .0
            .id
    }

    async fn wait_for(&self, id: Uuid, state: StateType) -> pushpool::model::FlowRun {
        let start = Instant::now();
        loop {
            let run = self.store.run(id).await.unwrap();
            if run.state.state_type == state {
                return run;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "run stuck in {:?}, wanted {state}",
                run.state
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn late_runs_are_marked_and_stay_claimable(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let late = e.run_at(-60).await;
    let on_time = e.run_at(-1).await;
    e.store
        .update_pool(
            e.ws,
            "nulls",
            PoolPatch {
                paused: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let c = e.controller("c1", |_| {});
    let report = c.tick().await.unwrap();
    assert_eq!((report.late, report.claimed), (1, 0));
    let run = e.store.run(late).await.unwrap();
    assert_eq!(
        (run.state.state_type, run.state.name.as_str()),
        (StateType::Scheduled, "Late")
    );
    assert_eq!(e.store.run(on_time).await.unwrap().state.name, "Scheduled");
    e.store
        .update_pool(
            e.ws,
            "nulls",
            PoolPatch {
                paused: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.tick().await.unwrap().claimed,
        2,
        "late runs stay claimable"
    );
    e.wait_for(late, StateType::Completed).await;
    let names: Vec<String> = e
        .store
        .state_history(late)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names[..2], ["Scheduled".to_string(), "Late".to_string()]);
}

async fn silent_runs_are_crashed_with_when_last_heard(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let id = e.run_at(-1).await;
    e.store
        .claim_due(
            &PoolSelector::All,
            Utc::now(),
            1,
            "someone",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    e.store
        .propose_state(
            id,
            Proposal::new(StateType::Running),
            TransitionGuard::default(),
        )
        .await
        .unwrap();
    e.store.heartbeat(id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let c = e.controller("c1", |cfg| {
        cfg.heartbeat_silence = Duration::from_millis(10)
    });
    assert_eq!(c.tick().await.unwrap().zombies, 1);
    let run = e.store.run(id).await.unwrap();
    assert_eq!(run.state.state_type, StateType::Crashed);
    assert!(run.state.message.unwrap().contains("last heard from at"));
}

async fn orphan_without_infrastructure_is_submitted_once(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let id = e.run_at(-1).await;
    // A controller claimed it and vanished before submitting (its lease runs out).
    e.store
        .claim_due(
            &PoolSelector::All,
            Utc::now(),
            1,
            "vanished",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c = e.controller("rescuer", |_| {});
    assert_eq!(c.tick().await.unwrap().adopted, 1);
    e.wait_for(id, StateType::Completed).await;
    assert_eq!(e.provider.total_submissions(), 1);
    assert_eq!(e.provider.double_submits(), 0);
}

async fn orphan_with_infrastructure_is_adopted_not_resubmitted(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let mut vars = Map::new();
    vars.insert("duration_ms".into(), serde_json::json!(700));
    let id = e
        .store
        .create_run(
            &e.deployment,
            NewRun {
                job_variables: vars,
                ..NewRun::default()
            },
        )
        .await
        .unwrap()
        .0
        .id;
    // The first controller submits and records the infrastructure id, then leaves.
    let first = e.controller("first", |cfg| cfg.shutdown_drain = Duration::ZERO);
    first.tick().await.unwrap();
    let start = Instant::now();
    while e.store.run(id).await.unwrap().infrastructure_id.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.shutdown();
    while e.store.run(id).await.unwrap().lease_owner.is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lease never released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = e.controller("second", |_| {});
    assert_eq!(second.tick().await.unwrap().adopted, 1);
    e.wait_for(id, StateType::Completed).await;
    assert_eq!(
        e.provider.total_submissions(),
        1,
        "adopted and tracked, not submitted again"
    );
    // And a lookup-based adoption: a PENDING run whose attempt the provider already knows.
    let id2 = e.run_at(-1).await;
    let claimed = e
        .store
        .claim_due(
            &PoolSelector::All,
            Utc::now(),
            1,
            "ghost",
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    assert_eq!(claimed[0].id, id2);
    let spec_run = claimed[0].clone();
    let spec = pushpool_provider::RunSpec {
        run_id: spec_run.id,
        attempt: 1,
        workspace: String::new(),
        work_pool: String::new(),
        deployment: String::new(),
        parameters: serde_json::Value::Null,
        api_url: String::new(),
        run_token: pushpool_provider::Secret::new("x"),
        logs: Arc::new(pushpool_provider::DiscardLogs),
    };
    let job = pushpool_provider::Provider::validate(&e.provider, &serde_json::json!({})).unwrap();
    pushpool_provider::Provider::submit(&e.provider, &spec, &job)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c = e.controller("rescuer", |_| {});
    assert_eq!(c.tick().await.unwrap().adopted, 1);
    let run = e.wait_for(id2, StateType::Completed).await;
    assert!(run
        .infrastructure_id
        .unwrap()
        .starts_with(&format!("null:{id2}:1:")));
    assert_eq!(
        e.provider.double_submits(),
        0,
        "the ghost's submission was adopted, not repeated"
    );
}

async fn transient_submit_errors_are_retried_then_completed(db: TestDb) {
    let e = env(&db, NullProvider::default().with_transient_failures(0.5)).await;
    let ids = [e.run_at(-1).await, e.run_at(-1).await, e.run_at(-1).await];
    let c = e.controller("c1", |cfg| cfg.poll_max = Duration::from_millis(50));
    c.tick().await.unwrap();
    for id in ids {
        e.wait_for(id, StateType::Completed).await;
    }
    assert_eq!(e.provider.double_submits(), 0);
}

async fn run_cancelled_before_submission_goes_straight_to_cancelled(db: TestDb) {
    let e = env(&db, NullProvider::new(Duration::from_millis(300))).await;
    let id = e.run_at(-1).await;
    let c = e.controller("c1", |_| {});
    c.tick().await.unwrap();
    // While the provider is still accepting the submission, the user cancels.
    let out = e
        .store
        .propose_state(
            id,
            Proposal::new(StateType::Cancelled).with_message("user"),
            TransitionGuard {
                expected: Some(StateType::Pending),
                lease_owner: None,
                attempt: None,
            },
        )
        .await
        .unwrap();
    assert!(out.is_recorded());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let run = e.store.run(id).await.unwrap();
    assert_eq!(run.state.state_type, StateType::Cancelled);
    assert_eq!(
        run.infrastructure_id, None,
        "the late infrastructure id is not recorded on a terminal run"
    );
}

async fn shutdown_hands_back_unsubmitted_runs(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let id = e.run_at(-1).await;
    // Claimed by a controller that then shuts down before its task ran.
    let c = e.controller("leaving", |_| {});
    e.store
        .claim_due(
            &PoolSelector::All,
            Utc::now(),
            1,
            "leaving",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    c.shutdown();
    c.run(Duration::from_secs(5)).await;
    let run = e.store.run(id).await.unwrap();
    assert_eq!(
        run.state.state_type,
        StateType::Scheduled,
        "{:?}",
        run.state
    );
    assert_eq!(run.lease_owner, None);
    let next = e.controller("next", |_| {});
    next.tick().await.unwrap();
    e.wait_for(id, StateType::Completed).await;
    assert_eq!(e.provider.total_submissions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_submit_rate_smooths_a_burst() {
    let db = sqlite_db();
    let e = env(&db, NullProvider::default()).await;
    e.store
        .update_pool(
            e.ws,
            "nulls",
            PoolPatch {
                submit_rate: Some(Some(5.0)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut ids = vec![];
    for _ in 0..10 {
        ids.push(e.run_at(-1).await);
    }
    let c = e.controller("c1", |_| {});
    assert_eq!(c.tick().await.unwrap().claimed, 10);
    for id in &ids {
        e.wait_for(*id, StateType::Completed).await;
    }
    let mut times: Vec<_> = e.provider.first_submits().into_values().collect();
    times.sort();
    let span = (*times.last().unwrap() - times[0]).num_milliseconds();
    // A burst of 5 goes at once, the other 5 at 5/s: at least ~1 s from first to last.
    assert!(span >= 900, "10 submissions at 5/s took only {span} ms");
    let within_first_half_second = times
        .iter()
        .filter(|t| (**t - times[0]).num_milliseconds() < 500)
        .count();
    assert!(
        within_first_half_second <= 7,
        "{within_first_half_second} submissions in the first 0.5 s"
    );
}

/// Copies run `template` `n` times with fresh ids in a few multi-row SQL inserts (10,000 API
/// calls would take minutes); the copies have no history rows, which claims do not need.
async fn copy_run(db: &TestDb, template: Uuid, n: usize) {
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1000);
        left -= chunk;
        // Fresh v7 ids are plain hex and dashes: safe to inline.
        let ids = (0..chunk)
            .map(|_| format!("('{}')", Uuid::now_v7()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO flow_runs (id, workspace_id, deployment_id, deployment_name, pool_id, \
             pool_name, queue_id, queue_name, parameters, job_variables, scheduled_time, state_type, \
             state_name, state_timestamp, attempt, created, updated) \
             SELECT v.column1, t.workspace_id, t.deployment_id, t.deployment_name, t.pool_id, \
             t.pool_name, t.queue_id, t.queue_name, t.parameters, t.job_variables, t.scheduled_time, \
             t.state_type, t.state_name, t.state_timestamp, t.attempt, t.created, t.updated \
             FROM flow_runs t, (VALUES {ids}) AS v WHERE t.id = $1"
        );
        sqlx::query(&sql)
            .bind(template.to_string())
            .execute(&raw)
            .await
            .unwrap();
    }
    raw.close().await;
}

/// Issue 19, item 7 (acceptance): workspace A floods 10,000 due runs whose jobs never finish;
/// workspace B's run, created after, starts within 1 s. The controller runs with the real
/// defaults (`max_in_flight` 2,000, so A's backlog is five times its capacity).
async fn a_flooding_workspace_does_not_starve_another(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let slow = e
        .store
        .create_deployment(
            e.ws,
            NewDeployment {
                name: "slow".into(),
                work_pool: "nulls".into(),
                work_queue: None,
                // An hour: longer than the test, so A's runs never give a slot back.
                job_variables: json!({"duration_ms": 3_600_000})
                    .as_object()
                    .unwrap()
                    .clone(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    let due = NewRun {
        scheduled_time: Some(Utc::now() - chrono::Duration::seconds(1)),
        ..NewRun::default()
    };
    let first = e.store.create_run(&slow, due).await.unwrap().0;
    copy_run(&db, first.id, 9_999).await;

    let ws_b = e.store.create_workspace("b").await.unwrap().id;
    let template = pushpool_provider::Provider::default_base_job_template(&e.provider);
    e.store
        .create_pool(
            ws_b,
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
    let dep_b = e
        .store
        .create_deployment(
            ws_b,
            NewDeployment {
                name: "d".into(),
                work_pool: "nulls".into(),
                work_queue: None,
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();

    let c = e.controller("c1", |c| c.shutdown_drain = Duration::ZERO);
    let runner = c.clone();
    let loop_task = tokio::spawn(async move { runner.run(Duration::from_secs(5)).await });
    // Let A take every slot it can: at least its quota in flight, all submitted (RUNNING), and
    // no more claimed for a second (a slow claim under load must not pass for "settled").
    let quota = ControllerConfig::default().workspace_quota();
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let n = c.in_flight();
        if n != last.0 {
            last = (n, Instant::now());
        }
        let running = e
            .store
            .count_by_state()
            .await
            .unwrap()
            .into_iter()
            .find(|(s, _)| *s == StateType::Running)
            .map_or(0, |(_, n)| n);
        let all_running = usize::try_from(running).unwrap() == n;
        if n >= quota && all_running && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "workspace A's runs did not settle: {n} in flight, {running} RUNNING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_in_flight = c.in_flight();

    let created = Instant::now();
    let b_run = e
        .store
        .create_run(&dep_b, NewRun::default())
        .await
        .unwrap()
        .0;
    loop {
        let run = e.store.run(b_run.id).await.unwrap();
        if matches!(
            run.state.state_type,
            StateType::Pending | StateType::Running | StateType::Completed
        ) {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "workspace B's run was still {} ({}) 1 s after it was created: workspace A's \
             backlog of 10,000 due runs holds {a_in_flight} of the controller's {} in-flight slots",
            run.state.state_type,
            run.state.name,
            ControllerConfig::default().max_in_flight,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "workspace B's run started {:?} after it was created",
        created.elapsed()
    );
    assert_eq!(
        a_in_flight, quota,
        "workspace A holds its quota (half of max_in_flight), no more"
    );
    c.shutdown();
    loop_task.abort();
}
