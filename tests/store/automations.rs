//! Automations against the store, on SQLite and PostgreSQL (issue 14): a threshold trigger fires
//! once for three failures of a deployment in its window and not for two; a proactive trigger
//! fires for a run left RUNNING past its window and not for one that completed in time; two
//! engines on one store fire exactly once per occurrence for 1,000 triggering events, also with
//! the events arriving while they run; the engine's state survives a restart.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use pushpool::automations::{Engine, EngineConfig, Trigger};
use pushpool::model::{Deployment, FlowRun};
use pushpool::scheduler::ManualClock;
use pushpool::state::{Proposal, StateType};
use pushpool::store::{NewAutomation, NewDeployment, NewPool, NewRun, Store, TransitionGuard};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::{json, Map, Value};
use uuid::Uuid;

both_backends!(
    three_failures_in_the_window_fire_once_and_two_do_not,
    a_run_left_running_past_the_window_fires_and_one_completed_in_time_does_not,
    two_engines_fire_exactly_once_per_occurrence_for_1000_events,
    group_state_survives_an_engine_restart,
);

struct Env {
    store: Store,
    ws: Uuid,
}

async fn env(db: &TestDb) -> Env {
    let store = connect(db, 8).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    let provider = pushpool_null::NullProvider::default();
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
    Env { store, ws }
}

fn engine(store: &Store, id: &str) -> Engine {
    Engine::new(store.clone(), config(id))
}

fn config(id: &str) -> EngineConfig {
    EngineConfig {
        id: id.into(),
        settle: Duration::ZERO,
        ..EngineConfig::default()
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

    async fn automation(&self, name: &str, trigger: Value, actions: Value) -> Uuid {
        let trigger: Trigger = serde_json::from_value(trigger).unwrap();
        trigger.compile().unwrap();
        self.store
            .create_automation(
                self.ws,
                NewAutomation {
                    name: name.into(),
                    description: String::new(),
                    enabled: true,
                    trigger,
                    actions: serde_json::from_value(actions).unwrap(),
                },
            )
            .await
            .unwrap()
            .id
    }

    async fn run(&self, d: &Deployment) -> FlowRun {
        self.store.create_run(d, NewRun::default()).await.unwrap().0
    }

    /// Moves `run` through `states`.
    async fn drive(&self, run: Uuid, states: &[StateType]) {
        for to in states {
            self.store
                .propose_state(run, Proposal::new(*to), TransitionGuard::default())
                .await
                .unwrap();
        }
    }

    async fn fail(&self, d: &Deployment) {
        let r = self.run(d).await;
        self.drive(
            r.id,
            &[StateType::Pending, StateType::Running, StateType::Failed],
        )
        .await;
    }
}

async fn three_failures_in_the_window_fire_once_and_two_do_not(db: TestDb) {
    let e = env(&db).await;
    let a = e.deployment("a").await;
    let b = e.deployment("b").await;
    let id = e
        .automation(
            "three-failures",
            json!({"type": "run-state", "states": ["Failed"], "for_each": "deployment",
                   "threshold": 3, "within": 3600}),
            json!([{"type": "pause-deployment"}]),
        )
        .await;
    let engine = engine(&e.store, "engine-a");
    for _ in 0..3 {
        e.fail(&a).await;
    }
    for _ in 0..2 {
        e.fail(&b).await;
    }
    // A completed run of b is not a failure.
    let ok = e.run(&b).await;
    e.drive(
        ok.id,
        &[StateType::Pending, StateType::Running, StateType::Completed],
    )
    .await;
    let report = engine.tick().await.unwrap();
    assert_eq!(report.fired, 1, "{report:?}");
    engine.tick().await.unwrap();
    let firings = e.store.automation_firings(id, 100).await.unwrap();
    assert_eq!(firings.len(), 1, "{firings:?}");
    assert_eq!(firings[0].count, 3);
    assert!(
        firings[0].group_key.ends_with(&a.id.to_string()),
        "{firings:?}"
    );
    assert_eq!(firings[0].actions[0].status, "succeeded", "{firings:?}");
    // The action paused deployment a (the event's), not b.
    assert!(e.store.deployment(e.ws, "a").await.unwrap().paused);
    assert!(!e.store.deployment(e.ws, "b").await.unwrap().paused);
    // The firing and the action's outcome are events.
    let names: Vec<String> = e
        .store
        .list_events(e.ws, 500)
        .await
        .unwrap()
        .into_iter()
        .map(|ev| ev.event)
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with("automation.triggered"))
            .count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with("automation.action.succeeded"))
            .count(),
        1,
        "{names:?}"
    );
}

async fn a_run_left_running_past_the_window_fires_and_one_completed_in_time_does_not(db: TestDb) {
    let e = env(&db).await;
    let d = e.deployment("etl").await;
    let id = e
        .automation(
            "stuck-running",
            json!({"type": "event", "posture": "proactive",
                   "after": ["pushpool.flow-run.Running"],
                   "expect": ["pushpool.flow-run.Completed", "pushpool.flow-run.Failed",
                              "pushpool.flow-run.Crashed", "pushpool.flow-run.Cancelled"],
                   "for_each": "resource", "within": 1800}),
            json!([{"type": "cancel-flow-run"}]),
        )
        .await;
    let clock = ManualClock::new(Utc::now());
    let engine = Engine::with_clock(e.store.clone(), config("engine-a"), clock.clone());
    let slow = e.run(&d).await;
    let quick = e.run(&d).await;
    e.drive(slow.id, &[StateType::Pending, StateType::Running])
        .await;
    e.drive(
        quick.id,
        &[StateType::Pending, StateType::Running, StateType::Completed],
    )
    .await;
    assert_eq!(engine.tick().await.unwrap().fired, 0);
    clock.advance(TimeDelta::minutes(29));
    assert_eq!(engine.tick().await.unwrap().fired, 0);
    clock.advance(TimeDelta::minutes(2));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.fired, 1, "{report:?}");
    clock.advance(TimeDelta::hours(2));
    assert_eq!(engine.tick().await.unwrap().fired, 0);
    let firings = e.store.automation_firings(id, 10).await.unwrap();
    assert_eq!(firings.len(), 1);
    assert!(
        firings[0].group_key.ends_with(&slow.id.to_string()),
        "{firings:?}"
    );
    // Its action cancelled the stuck run; the quick one stays COMPLETED.
    let slow = e.store.run(slow.id).await.unwrap();
    assert!(
        matches!(
            slow.state.state_type,
            StateType::Cancelling | StateType::Cancelled
        ),
        "{:?}",
        slow.state
    );
    assert_eq!(
        e.store.run(quick.id).await.unwrap().state.state_type,
        StateType::Completed
    );
}

async fn two_engines_fire_exactly_once_per_occurrence_for_1000_events(db: TestDb) {
    let e = env(&db).await;
    let d = e.deployment("etl").await;
    let follow = e.deployment("follow-up").await;
    let id = e
        .automation(
            "on-cancel",
            json!({"type": "run-state", "states": ["Cancelled"], "deployments": ["etl"]}),
            json!([{"type": "run-deployment", "deployment": "follow-up",
                    "parameters": {"cause": "{{ flow_run.id }}"}}]),
        )
        .await;
    let n = 1000;
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(e.run(&d).await.id);
    }
    // Two engines on their own connections, racing while the events arrive.
    let engines: Vec<Engine> = vec![
        engine(&connect(&db, 4).await, "engine-a"),
        engine(&connect(&db, 4).await, "engine-b"),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = vec![];
    for en in engines.clone() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut fired = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                fired += en.tick().await.unwrap().fired;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fired
        }));
    }
    for chunk in runs.chunks(100) {
        for r in chunk {
            e.drive(*r, &[StateType::Cancelled]).await;
        }
    }
    // Until every occurrence fired and every action ran.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = e.store.automation_firings(id, 1000).await.unwrap();
        let all_done = done.len() == n
            && done
                .iter()
                .all(|f| f.actions.iter().all(|a| a.status != "pending"));
        if all_done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} fired",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut fired = vec![];
    for t in tasks {
        fired.push(t.await.unwrap());
    }
    assert_eq!(fired.iter().sum::<usize>(), n, "per engine: {fired:?}");
    for en in &engines {
        en.tick().await.unwrap();
    }
    assert_eq!(e.store.automation_firing_count(id).await.unwrap(), n as i64);
    let firings = e.store.automation_firings(id, 1000).await.unwrap();
    let occurrences: std::collections::BTreeSet<_> =
        firings.iter().map(|f| f.group_key.clone()).collect();
    assert_eq!(occurrences.len(), n, "one firing per run");
    assert!(firings
        .iter()
        .all(|f| f.actions.len() == 1 && f.actions[0].status == "succeeded"));
    // Each action ran once: one follow-up run per cancelled run.
    let follow_ups: Vec<FlowRun> = e
        .store
        .all_runs(e.ws)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.deployment_id == follow.id)
        .collect();
    assert_eq!(follow_ups.len(), n);
    let causes: std::collections::BTreeSet<String> = follow_ups
        .iter()
        .map(|r| r.parameters["cause"].as_str().unwrap().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = runs.iter().map(|r| r.to_string()).collect();
    assert_eq!(causes, expected);
}

async fn group_state_survives_an_engine_restart(db: TestDb) {
    let e = env(&db).await;
    let a = e.deployment("a").await;
    let id = e
        .automation(
            "three-failures",
            json!({"type": "run-state", "states": ["Failed"], "threshold": 3, "within": 3600}),
            json!([{"type": "pause-work-pool", "work_pool": "nulls"}]),
        )
        .await;
    e.fail(&a).await;
    e.fail(&a).await;
    assert_eq!(engine(&e.store, "first").tick().await.unwrap().fired, 0);
    // A new engine on a new connection: the two failures are remembered.
    let store = connect(&db, 4).await;
    let second = engine(&store, "second");
    assert_eq!(second.tick().await.unwrap().fired, 0);
    e.fail(&a).await;
    assert_eq!(second.tick().await.unwrap().fired, 1);
    assert_eq!(e.store.automation_firing_count(id).await.unwrap(), 1);
    assert!(e.store.pool(e.ws, "nulls").await.unwrap().paused);
}
