//! The event log in the store (issue 14; docs/events.md), each test on SQLite and PostgreSQL:
//! Prefect-like names and related resources, the filters and cursor paging of a workspace's
//! events, the all-workspace feed with its settle rule for gaps in `seq`, and pruning.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use pushpool::model::{Deployment, Event, FlowRun};
use pushpool::state::{Proposal, StateType};
use pushpool::store::{
    EventFilter, EventPage, EventRow, NewDeployment, NewPool, NewRun, RunDefaults, Store,
    TransitionGuard, TransitionOutcome, EVENT_RETENTION_DAYS_SETTING,
};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::{json, Map};
use uuid::Uuid;

both_backends!(
    run_events_carry_prefect_names_labels_and_related_resources,
    filters_select_by_name_prefix_resource_related_and_time,
    paging_by_cursor_visits_every_event_once_in_both_directions,
    another_workspace_events_never_match,
    events_after_hands_out_every_event_once_in_seq_order,
    a_gap_in_seq_holds_readers_until_it_fills_or_settles,
    pruning_removes_old_events_and_seq_is_never_reused,
);

struct Fixture {
    store: Store,
    ws: Uuid,
    other: Uuid,
}

async fn fixture(db: &TestDb) -> Fixture {
    let store = connect(db, 4).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    let other = store.create_workspace("other").await.unwrap().id;
    for w in [ws, other] {
        store
            .create_pool(
                w,
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
    }
    Fixture { store, ws, other }
}

impl Fixture {
    async fn deployment(&self, ws: Uuid, name: &str, tags: &[&str]) -> Deployment {
        self.store
            .create_deployment_with(
                ws,
                NewDeployment {
                    name: name.into(),
                    work_pool: "p".into(),
                    work_queue: None,
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: None,
                    paused: false,
                },
                RunDefaults {
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    ..RunDefaults::default()
                },
            )
            .await
            .unwrap()
    }

    async fn run(&self, d: &Deployment) -> FlowRun {
        self.store.create_run(d, NewRun::default()).await.unwrap().0
    }

    /// Takes `run` through PENDING and RUNNING to `end`.
    async fn finish(&self, run: Uuid, end: StateType) {
        for step in [StateType::Pending, StateType::Running, end] {
            let out = self
                .store
                .propose_state(run, Proposal::new(step), TransitionGuard::default())
                .await
                .unwrap();
            assert!(matches!(out, TransitionOutcome::Accepted(_)), "{out:?}");
        }
    }

    async fn query(&self, filter: EventFilter) -> Vec<Event> {
        self.store
            .query_events(self.ws, &filter, EventPage::Newest, 1000)
            .await
            .unwrap()
    }
}

fn names(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.event.clone()).collect()
}

async fn run_events_carry_prefect_names_labels_and_related_resources(db: TestDb) {
    let f = fixture(&db).await;
    let d = f.deployment(f.ws, "etl", &["nightly"]).await;
    let run = f.run(&d).await;
    f.finish(run.id, StateType::Failed).await;
    let events = f
        .query(EventFilter {
            resource: Some(format!("pushpool.flow-run.{}", run.id)),
            ..EventFilter::default()
        })
        .await;
    let mut seen = names(&events);
    seen.reverse();
    assert_eq!(
        seen,
        [
            "pushpool.flow-run.created",
            "pushpool.flow-run.Pending",
            "pushpool.flow-run.Running",
            "pushpool.flow-run.Failed"
        ],
    );
    let failed = &events[0];
    assert_eq!(failed.resource.labels["pushpool.state-type"], "FAILED");
    assert_eq!(failed.resource.labels["pushpool.state-name"], "Failed");
    assert_eq!(failed.payload["from"], "RUNNING");
    let related: BTreeSet<(String, String)> = failed
        .related
        .iter()
        .map(|r| (r.role.clone(), r.id.clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("deployment", format!("pushpool.deployment.{}", d.id)),
        (
            "work-pool",
            format!("pushpool.work-pool.{}", d.work_pool_id),
        ),
        (
            "work-queue",
            format!("pushpool.work-queue.{}", d.work_queue_id),
        ),
        ("workspace", format!("pushpool.workspace.{}", f.ws)),
        ("tag", "pushpool.tag.nightly".to_string()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    assert_eq!(related, expected);
    let deployment = failed
        .related
        .iter()
        .find(|r| r.role == "deployment")
        .unwrap();
    assert_eq!(deployment.labels["pushpool.resource.name"], "etl");
    // Mutations have documented names too.
    let pool_events = f
        .query(EventFilter {
            event: vec!["pushpool.work-pool.created".into()],
            ..EventFilter::default()
        })
        .await;
    assert_eq!(pool_events.len(), 1);
    assert!(pool_events[0]
        .resource
        .id
        .starts_with("pushpool.work-pool."));
}

async fn filters_select_by_name_prefix_resource_related_and_time(db: TestDb) {
    let f = fixture(&db).await;
    let etl = f.deployment(f.ws, "etl", &["nightly"]).await;
    let report = f.deployment(f.ws, "report", &["hourly"]).await;
    let a = f.run(&etl).await;
    let b = f.run(&report).await;
    f.finish(a.id, StateType::Failed).await;
    f.finish(b.id, StateType::Completed).await;

    // Exact names (any of them).
    let failed = f
        .query(EventFilter {
            event: vec![
                "pushpool.flow-run.Failed".into(),
                "pushpool.flow-run.Crashed".into(),
            ],
            ..EventFilter::default()
        })
        .await;
    assert_eq!(names(&failed), ["pushpool.flow-run.Failed"]);
    assert_eq!(failed[0].resource.id, format!("pushpool.flow-run.{}", a.id));

    // A prefix; LIKE's wildcards in it are taken literally.
    let runs = f
        .query(EventFilter {
            event_prefix: vec!["pushpool.flow-run.".into()],
            ..EventFilter::default()
        })
        .await;
    assert_eq!(runs.len(), 8, "{:?}", names(&runs));
    assert!(runs
        .iter()
        .all(|e| e.event.starts_with("pushpool.flow-run.")));
    let underscore = f
        .query(EventFilter {
            event_prefix: vec!["pushpool.flow_run".into(), "pushpool.%".into()],
            ..EventFilter::default()
        })
        .await;
    assert!(underscore.is_empty(), "{:?}", names(&underscore));

    // A related resource: the deployment, a tag.
    let of_etl = f
        .query(EventFilter {
            related: Some(format!("pushpool.deployment.{}", etl.id)),
            ..EventFilter::default()
        })
        .await;
    assert_eq!(of_etl.len(), 4, "{:?}", names(&of_etl));
    assert!(of_etl
        .iter()
        .all(|e| e.resource.id == format!("pushpool.flow-run.{}", a.id)));
    let hourly = f
        .query(EventFilter {
            related: Some("pushpool.tag.hourly".into()),
            event_prefix: vec!["pushpool.flow-run.".into()],
            ..EventFilter::default()
        })
        .await;
    assert!(hourly
        .iter()
        .all(|e| e.resource.id == format!("pushpool.flow-run.{}", b.id)));
    assert_eq!(hourly.len(), 4);
    let none = f
        .query(EventFilter {
            related: Some("pushpool.tag.hour".into()),
            ..EventFilter::default()
        })
        .await;
    assert!(
        none.is_empty(),
        "a related id matches exactly, not as a prefix"
    );

    // Time range on `occurred`.
    let t0 = Utc::now() - Duration::hours(3);
    let rows: Vec<EventRow> = (0..3)
        .map(|i| EventRow {
            occurred: (t0 + Duration::hours(i)).timestamp_micros(),
            ..EventRow::new(f.ws, "test.tick", &format!("tick-{i}"), json!({"i": i}))
        })
        .collect();
    f.store.record_events(&rows).await.unwrap();
    let middle = f
        .query(EventFilter {
            event: vec!["test.tick".into()],
            since: Some(t0 + Duration::minutes(30)),
            until: Some(t0 + Duration::minutes(90)),
            ..EventFilter::default()
        })
        .await;
    assert_eq!(middle.len(), 1);
    assert_eq!(middle[0].payload["i"], 1);
    assert_eq!(
        middle[0].resource.id, "tick-1",
        "unknown kinds keep their names"
    );
    let combined = f
        .query(EventFilter {
            event: vec!["test.tick".into()],
            since: Some(t0 + Duration::minutes(30)),
            resource: Some("tick-2".into()),
            ..EventFilter::default()
        })
        .await;
    assert_eq!(combined.len(), 1);
}

async fn paging_by_cursor_visits_every_event_once_in_both_directions(db: TestDb) {
    let f = fixture(&db).await;
    let rows: Vec<EventRow> = (0..23)
        .map(|i| EventRow::new(f.ws, "test.page", "p", json!({"i": i})))
        .collect();
    f.store.record_events(&rows).await.unwrap();
    let filter = EventFilter {
        event: vec!["test.page".into()],
        ..EventFilter::default()
    };
    // Newest first, page by page.
    let mut seen = Vec::new();
    let mut page = EventPage::Newest;
    loop {
        let got = f.store.query_events(f.ws, &filter, page, 5).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 5);
        page = EventPage::Before(got.last().unwrap().seq);
        seen.extend(got.iter().map(|e| e.payload["i"].as_i64().unwrap()));
    }
    assert_eq!(seen, (0..23).rev().collect::<Vec<_>>());
    // Oldest first after a cursor.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let got = f
            .store
            .query_events(f.ws, &filter, EventPage::After(after), 4)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        after = got.last().unwrap().seq;
        seen.extend(got.iter().map(|e| e.payload["i"].as_i64().unwrap()));
    }
    assert_eq!(seen, (0..23).collect::<Vec<_>>());
}

async fn another_workspace_events_never_match(db: TestDb) {
    let f = fixture(&db).await;
    let mine = f.deployment(f.ws, "etl", &["shared"]).await;
    let theirs = f.deployment(f.other, "etl", &["shared"]).await;
    f.run(&mine).await;
    let their_run = f.run(&theirs).await;
    f.finish(their_run.id, StateType::Failed).await;
    let filters = [
        EventFilter::default(),
        EventFilter {
            resource: Some(format!("pushpool.flow-run.{}", their_run.id)),
            ..EventFilter::default()
        },
        EventFilter {
            related: Some(format!("pushpool.deployment.{}", theirs.id)),
            ..EventFilter::default()
        },
        EventFilter {
            related: Some("pushpool.tag.shared".into()),
            ..EventFilter::default()
        },
        EventFilter {
            event: vec!["pushpool.flow-run.Failed".into()],
            ..EventFilter::default()
        },
    ];
    for filter in filters {
        for page in [
            EventPage::Newest,
            EventPage::Before(i64::MAX),
            EventPage::After(0),
        ] {
            let got = f
                .store
                .query_events(f.ws, &filter, page, 1000)
                .await
                .unwrap();
            assert!(
                got.iter().all(|e| e.workspace_id == f.ws),
                "{filter:?} {page:?}: {:?}",
                names(&got)
            );
            assert!(
                !got.iter()
                    .any(|e| e.resource.id.contains(&their_run.id.to_string())),
                "{filter:?}"
            );
        }
    }
}

async fn events_after_hands_out_every_event_once_in_seq_order(db: TestDb) {
    let f = fixture(&db).await;
    let start = f.store.latest_event_seq().await.unwrap();
    let d = f.deployment(f.ws, "etl", &[]).await;
    let e = f.deployment(f.other, "etl", &[]).await;
    let mut expected = 2; // the two deployments
    for _ in 0..4 {
        let a = f.run(&d).await;
        let b = f.run(&e).await;
        f.finish(a.id, StateType::Completed).await;
        f.finish(b.id, StateType::Crashed).await;
        expected += 8;
    }
    let mut cursor = start;
    let mut seen = Vec::new();
    loop {
        let got = f.store.events_after(cursor, 3).await.unwrap();
        if got.is_empty() {
            break;
        }
        for ev in got {
            assert!(ev.seq > cursor, "ascending seq");
            cursor = ev.seq;
            seen.push(ev);
        }
    }
    assert_eq!(seen.len(), expected);
    let ids: BTreeSet<Uuid> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), expected, "no event twice");
    let workspaces: BTreeSet<Uuid> = seen.iter().map(|e| e.workspace_id).collect();
    assert_eq!(
        workspaces,
        BTreeSet::from([f.ws, f.other]),
        "all workspaces"
    );
}

/// A raw connection to the test database, to write rows the store would not.
async fn raw(db: &TestDb) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap()
}

/// Inserts an event row with an explicit `seq` and `recorded` time.
async fn insert_at(pool: &sqlx::AnyPool, ws: Uuid, seq: i64, recorded: i64) {
    sqlx::query(
        "INSERT INTO events (seq, id, workspace_id, occurred, recorded, event, resource_id, \
         resource_labels, related, payload) VALUES ($1, $2, $3, $4, $4, 'test.gap', 'g', '{}', '[]', '{}')",
    )
    .bind(seq)
    .bind(Uuid::now_v7().to_string())
    .bind(ws.to_string())
    .bind(recorded)
    .execute(pool)
    .await
    .unwrap();
    // PostgreSQL's identity does not see explicit values: move it past them, as SQLite's
    // AUTOINCREMENT does by itself.
    if pool
        .connect_options()
        .database_url
        .scheme()
        .starts_with("postgres")
    {
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('events', 'seq'), (SELECT MAX(seq) FROM events))",
        )
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn a_gap_in_seq_holds_readers_until_it_fills_or_settles(db: TestDb) {
    let f = fixture(&db).await;
    let pool = raw(&db).await;
    let top = f.store.latest_event_seq().await.unwrap();
    let now = Utc::now().timestamp_micros();
    // seq top+1 is missing and the row after it is fresh: readers stop before the gap.
    insert_at(&pool, f.ws, top + 2, now).await;
    assert!(f.store.events_after(top, 100).await.unwrap().is_empty());
    assert_eq!(f.store.event_watermark(top, 100).await.unwrap(), top);
    let page = f
        .store
        .query_events(f.ws, &EventFilter::default(), EventPage::After(top), 100)
        .await
        .unwrap();
    assert!(page.is_empty(), "the workspace query waits for the gap too");
    // The gap fills (the writer commits): both are handed out, in order.
    insert_at(&pool, f.ws, top + 1, now).await;
    let got = f.store.events_after(top, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [top + 1, top + 2]
    );
    // A gap whose next row is older than the settle lag is passed (a rolled-back writer).
    let old = now - 60_000_000;
    insert_at(&pool, f.ws, top + 4, old).await;
    let got = f.store.events_after(top + 2, 100).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [top + 4]);

    if db.url.starts_with("postgres") {
        // A real writer that took its seq and has not committed yet, while a later one has.
        let mut open = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (id, workspace_id, occurred, recorded, event, resource_id, \
             resource_labels, related, payload) VALUES ($1, $2, $3, $3, 'test.slow', 's', '{}', '[]', '{}')",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(f.ws.to_string())
        .bind(Utc::now().timestamp_micros())
        .execute(&mut *open)
        .await
        .unwrap();
        let before = f.store.latest_event_seq().await.unwrap();
        f.store
            .record_events(&[EventRow::new(f.ws, "test.fast", "s", json!({}))])
            .await
            .unwrap();
        let got = f.store.events_after(before, 100).await.unwrap();
        assert!(
            got.is_empty(),
            "held behind the open writer: {:?}",
            names(&got)
        );
        open.commit().await.unwrap();
        let got = f.store.events_after(before, 100).await.unwrap();
        assert_eq!(names(&got), ["test.slow", "test.fast"]);
    }
}

async fn pruning_removes_old_events_and_seq_is_never_reused(db: TestDb) {
    let f = fixture(&db).await;
    assert_eq!(f.store.event_retention_days().await.unwrap(), 30);
    f.store
        .set_setting(EVENT_RETENTION_DAYS_SETTING, "7")
        .await
        .unwrap();
    assert_eq!(f.store.event_retention_days().await.unwrap(), 7);
    let pool = raw(&db).await;
    let top = f.store.latest_event_seq().await.unwrap();
    let old = (Utc::now() - Duration::days(40)).timestamp_micros();
    // Old rows, numbered far above the identity's next value so default numbering never collides.
    for i in 0..5 {
        insert_at(&pool, f.ws, top + 1_000 + i, old).await;
    }
    let deleted = f
        .store
        .prune_events(Utc::now() - Duration::days(30), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 5, "only the old rows, in batches");
    let left = f.query(EventFilter::default()).await;
    assert!(!left.is_empty() && left.iter().all(|e| e.event != "test.gap"));
    // Everything pruned: the next event still gets a new number.
    let max = f.store.latest_event_seq().await.unwrap();
    f.store
        .prune_events(Utc::now() + Duration::days(1), 1000)
        .await
        .unwrap();
    assert_eq!(f.store.latest_event_seq().await.unwrap(), 0);
    f.store
        .record_events(&[EventRow::new(f.ws, "test.after", "a", json!({}))])
        .await
        .unwrap();
    let next = f.store.latest_event_seq().await.unwrap();
    assert!(next > max, "a number is never reused: {next} after {max}");
}
