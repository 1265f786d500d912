//! The controller's events (issue 14; docs/events.md), driven tick by tick with the null provider
//! on SQLite and PostgreSQL: a late run, a throttling provider (one event a minute per pool, not
//! one per retry), a rescued lease, and controller start/stop written by the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pushpool::auth::RunTokens;
use pushpool::controller::{Context, Controller, ControllerConfig};
use pushpool::metrics::Metrics;
use pushpool::model::{Deployment, Event};
use pushpool::state::StateType;
use pushpool::store::{
    EventFilter, EventPage, NewDeployment, NewPool, NewRun, PoolSelector, Store,
};
use pushpool_null::NullProvider;
use pushpool_provider::Registry;
use pushpool_testkit::{both_backends, connect, serve_fresh, TestDb};
use serde_json::Map;
use uuid::Uuid;

both_backends!(
    a_late_run_writes_a_late_event_with_its_deployment,
    a_throttling_provider_writes_one_throttled_event_per_pool,
    a_rescued_lease_writes_a_lease_rescued_event,
    the_server_writes_controller_started_and_stopped,
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

    async fn wait_for(&self, id: Uuid, state: StateType) {
        let start = Instant::now();
        while self.store.run(id).await.unwrap().state.state_type != state {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "run never reached {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let filter = EventFilter {
            event: vec![name.to_string()],
            ..EventFilter::default()
        };
        self.store
            .query_events(self.ws, &filter, EventPage::Newest, 1000)
            .await
            .unwrap()
    }
}

async fn a_late_run_writes_a_late_event_with_its_deployment(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let late = e.run_at(-60).await;
    let c = e.controller("c1", |_| {});
    c.tick().await.unwrap();
    e.wait_for(late, StateType::Completed).await;
    let events = e.events("pushpool.flow-run.Late").await;
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev.resource.id, format!("pushpool.flow-run.{late}"));
    assert_eq!(ev.resource.labels["pushpool.state-type"], "SCHEDULED");
    assert!(ev
        .related
        .iter()
        .any(|r| r.role == "deployment"
            && r.id == format!("pushpool.deployment.{}", e.deployment.id)));
}

async fn a_throttling_provider_writes_one_throttled_event_per_pool(db: TestDb) {
    let e = env(&db, NullProvider::default().with_throttling(0.4)).await;
    let ids = [e.run_at(-1).await, e.run_at(-1).await, e.run_at(-1).await];
    let c = e.controller("c1", |cfg| cfg.poll_max = Duration::from_millis(50));
    c.tick().await.unwrap();
    for id in ids {
        e.wait_for(id, StateType::Completed).await;
    }
    // The event is written in the background.
    let start = Instant::now();
    let events = loop {
        let events = e.events("pushpool.work-pool.throttled").await;
        if !events.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        events.len(),
        1,
        "one per pool per minute, however many retries"
    );
    let ev = &events[0];
    assert_eq!(
        ev.resource.id,
        format!("pushpool.work-pool.{}", e.deployment.work_pool_id)
    );
    assert_eq!(ev.resource.labels["pushpool.resource.name"], "nulls");
    assert_eq!(ev.payload["controller"], "c1");
    assert!(ev.payload["message"].as_str().unwrap().contains("429"));
    assert!(ev.related.iter().any(|r| r.role == "flow-run"));
}

async fn a_rescued_lease_writes_a_lease_rescued_event(db: TestDb) {
    let e = env(&db, NullProvider::default()).await;
    let id = e.run_at(-1).await;
    // A controller that claimed the run and vanished: its lease runs out.
    let pools = PoolSelector::Types(vec!["null".into()]);
    let claimed = e
        .store
        .claim_due(&pools, Utc::now(), 10, "ghost", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let c = e.controller("rescuer", |_| {});
    assert_eq!(c.tick().await.unwrap().adopted, 1);
    e.wait_for(id, StateType::Completed).await;
    let events = e.events("pushpool.flow-run.lease-rescued").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].resource.id, format!("pushpool.flow-run.{id}"));
    assert_eq!(events[0].payload["controller"], "rescuer");
    assert_eq!(events[0].payload["previous_owner"], "ghost");
}

async fn the_server_writes_controller_started_and_stopped(db: TestDb) {
    let served = serve_fresh(&db.url, true).await;
    let store = served.store.clone();
    let ws = store.workspace("default").await.unwrap().id;
    let named = |name: &str| EventFilter {
        event: vec![name.to_string()],
        ..EventFilter::default()
    };
    let start = Instant::now();
    let started = loop {
        let got = store
            .query_events(
                ws,
                &named("pushpool.controller.started"),
                EventPage::Newest,
                10,
            )
            .await
            .unwrap();
        if !got.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(started.len(), 1);
    assert!(started[0].resource.id.starts_with("pushpool.controller."));
    drop(served);
    let start = Instant::now();
    loop {
        let got = store
            .query_events(
                ws,
                &named("pushpool.controller.stopped"),
                EventPage::Newest,
                10,
            )
            .await
            .unwrap();
        if !got.is_empty() {
            assert_eq!(got[0].resource.id, started[0].resource.id);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no stopped event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
