//! The store suite: every test runs against SQLite and against PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pushpool::model::Deployment;
use pushpool::state::{Proposal, Rejection, StateType};
use pushpool::store::{
    NewDeployment, NewPool, NewQueue, NewRun, PoolPatch, PoolSelector, Store, StoreError,
    TransitionGuard, TransitionOutcome, WorkspaceQuota,
};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::{json, Map};
use uuid::Uuid;

both_backends!(
    pool_submit_rate_goes_from_none_to_a_value_and_back,
    pool_overridable_variables_are_kept_changed_and_cleared,
    migrations_are_applied_once_and_versioned,
    pool_names_are_unique_per_workspace,
    deployment_needs_an_existing_pool_and_queue,
    idempotency_key_returns_the_same_run,
    lifecycle_records_history_and_events,
    retried_transition_is_a_no_op,
    terminal_state_is_never_overwritten,
    compare_and_set_and_lease_owner_are_enforced,
    claim_orders_by_priority_then_schedule_and_skips_future_runs,
    claim_skips_paused_pools_queues_and_deployments,
    claims_take_workspaces_in_turn_within_their_quota,
    limits_hold_without_starving_free_runs,
    leases_renew_release_expire_and_adopt,
    logs_and_data_survive_reconnect,
    racing_claimers_claim_every_run_exactly_once,
    no_sequence_of_proposals_leaves_a_terminal_state_or_skips_history,
);

const OWNER: &str = "controller-a";
const LEASE: Duration = Duration::from_secs(30);

fn template() -> serde_json::Value {
    json!({"job_configuration": {"command": "{{ command }}"},
           "variables": {"type": "object", "properties": {"command": {"type": "string"}}}})
}

struct Fixture {
    store: Store,
    ws: Uuid,
}

async fn fixture(db: &TestDb) -> Fixture {
    let store = connect(db, 8).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    Fixture { store, ws }
}

impl Fixture {
    async fn pool(&self, name: &str, limit: Option<i64>) -> Uuid {
        self.store
            .create_pool(
                self.ws,
                NewPool {
                    name: name.into(),
                    pool_type: "process".into(),
                    description: None,
                    base_job_template: template(),
                    concurrency_limit: limit,
                    paused: false,
                    submit_rate: None,
                    overridable_variables: None,
                },
            )
            .await
            .unwrap()
            .id
    }

    async fn deployment(
        &self,
        name: &str,
        pool: &str,
        queue: Option<&str>,
        limit: Option<i64>,
    ) -> Deployment {
        self.store
            .create_deployment(
                self.ws,
                NewDeployment {
                    name: name.into(),
                    work_pool: pool.into(),
                    work_queue: queue.map(str::to_string),
                    job_variables: Map::new(),
                    parameters: Map::new(),
                    concurrency_limit: limit,
                    paused: false,
                },
            )
            .await
            .unwrap()
    }

    async fn run(&self, d: &Deployment, seconds_from_now: i64) -> Uuid {
        self.store
            .create_run(
                d,
                NewRun {
                    scheduled_time: Some(Utc::now() + chrono::Duration::seconds(seconds_from_now)),
                    ..NewRun::default()
                },
            )
            .await
            .unwrap()
            .0
            .id
    }

    async fn claim(&self, limit: usize) -> Vec<Uuid> {
        self.store
            .claim_due(&PoolSelector::All, Utc::now(), limit, OWNER, LEASE)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    async fn move_to(&self, run: Uuid, to: StateType) -> TransitionOutcome {
        self.store
            .propose_state(run, Proposal::new(to), TransitionGuard::default())
            .await
            .unwrap()
    }
}

async fn migrations_are_applied_once_and_versioned(db: TestDb) {
    let a = connect(&db, 2).await;
    assert_eq!(
        a.schema_version().await.unwrap(),
        pushpool::store::SCHEMA_VERSION
    );
    a.create_workspace("w").await.unwrap();
    // A second connect (another controller starting) must not re-run or fail.
    let b = connect(&db, 2).await;
    assert_eq!(
        b.schema_version().await.unwrap(),
        pushpool::store::SCHEMA_VERSION
    );
    assert_eq!(b.list_workspaces().await.unwrap().len(), 1);
}

async fn pool_names_are_unique_per_workspace(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let again = f
        .store
        .create_pool(
            f.ws,
            NewPool {
                name: "p".into(),
                pool_type: "process".into(),
                description: None,
                base_job_template: template(),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict { field: Some(ref f), .. }) if f == "name"));
    let other = f.store.create_workspace("other").await.unwrap();
    let in_other = f
        .store
        .create_pool(
            other.id,
            NewPool {
                name: "p".into(),
                pool_type: "process".into(),
                description: None,
                base_job_template: template(),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await
        .unwrap();
    let queues = f.store.list_queues(in_other.id).await.unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].name, "default");
    // The original pool is untouched by the refused duplicate.
    assert_eq!(f.store.list_pools(f.ws).await.unwrap().len(), 1);
}

async fn deployment_needs_an_existing_pool_and_queue(db: TestDb) {
    let f = fixture(&db).await;
    let missing = f
        .store
        .create_deployment(
            f.ws,
            NewDeployment {
                name: "d".into(),
                work_pool: "nope".into(),
                work_queue: None,
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await;
    assert!(matches!(
        missing,
        Err(StoreError::NotFound {
            what: "work pool",
            ..
        })
    ));
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    assert_eq!(d.work_queue, "default");
    assert_eq!(
        f.store
            .deployment(f.ws, &d.id.to_string())
            .await
            .unwrap()
            .name,
        "d"
    );
    assert!(matches!(
        f.store.delete_pool(f.ws, "p").await,
        Err(StoreError::Conflict { .. })
    ));
}

async fn idempotency_key_returns_the_same_run(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let new = NewRun {
        idempotency_key: Some("nightly-2026-11-22".into()),
        ..NewRun::default()
    };
    let (first, created) = f.store.create_run(&d, new.clone()).await.unwrap();
    assert!(created);
    let (second, created_again) = f.store.create_run(&d, new).await.unwrap();
    assert!(!created_again);
    assert_eq!(first.id, second.id);
    // UUID v7 ids.
    assert_eq!(first.id.get_version_num(), 7);
}

async fn lifecycle_records_history_and_events(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let id = f.run(&d, -1).await;
    assert_eq!(f.claim(10).await, vec![id]);
    assert!(f
        .store
        .set_infrastructure(id, OWNER, "process:42")
        .await
        .unwrap());
    let run = f.store.run(id).await.unwrap();
    assert_eq!(run.state.name, "InfrastructurePending");
    assert_eq!(run.infrastructure_id.as_deref(), Some("process:42"));
    let guard = |s| TransitionGuard::owned(OWNER, s);
    let out = f
        .store
        .propose_state(
            id,
            Proposal::new(StateType::Running),
            guard(StateType::Pending),
        )
        .await
        .unwrap();
    assert!(matches!(out, TransitionOutcome::Accepted(_)));
    let out = f
        .store
        .propose_state(
            id,
            Proposal::new(StateType::Completed),
            guard(StateType::Running),
        )
        .await
        .unwrap();
    let TransitionOutcome::Accepted(done) = out else {
        panic!("not accepted: {out:?}")
    };
    assert_eq!(done.state.state_type, StateType::Completed);
    assert_eq!(done.lease_owner, None, "terminal runs release their lease");
    let types: Vec<StateType> = f
        .store
        .state_history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.state_type)
        .collect();
    assert_eq!(
        types,
        vec![
            StateType::Scheduled,
            StateType::Pending,
            StateType::Running,
            StateType::Completed
        ]
    );
    let events: Vec<String> = f
        .store
        .list_events(f.ws, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.resource.id == format!("pushpool.flow-run.{id}"))
        .map(|e| e.event)
        .collect();
    for expected in [
        "pushpool.flow-run.created",
        "pushpool.flow-run.Submitting",
        "pushpool.flow-run.infrastructure-assigned",
        "pushpool.flow-run.Running",
        "pushpool.flow-run.Completed",
    ] {
        assert!(
            events.contains(&expected.to_string()),
            "missing {expected} in {events:?}"
        );
    }
}

async fn retried_transition_is_a_no_op(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let id = f.run(&d, -1).await;
    f.claim(1).await;
    let p = Proposal::new(StateType::Running).with_transition_id("t-1");
    let first = f
        .store
        .propose_state(id, p.clone(), TransitionGuard::default())
        .await
        .unwrap();
    assert!(matches!(first, TransitionOutcome::Accepted(_)));
    let second = f
        .store
        .propose_state(id, p, TransitionGuard::default())
        .await
        .unwrap();
    assert!(
        matches!(second, TransitionOutcome::Duplicate(ref r) if r.state.state_type == StateType::Running)
    );
    assert_eq!(f.store.state_history(id).await.unwrap().len(), 3);
}

async fn terminal_state_is_never_overwritten(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let id = f.run(&d, -1).await;
    f.claim(1).await;
    f.move_to(id, StateType::Running).await;
    f.move_to(id, StateType::Completed).await;
    for late in [
        StateType::Crashed,
        StateType::Failed,
        StateType::Running,
        StateType::Cancelled,
        StateType::Scheduled,
    ] {
        let out = f
            .store
            .propose_state(
                id,
                Proposal::new(late).with_message("late writer"),
                TransitionGuard::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            TransitionOutcome::Rejected {
                reason: Rejection::AlreadyTerminal {
                    current: StateType::Completed
                },
                run: f.store.run(id).await.unwrap()
            }
        );
    }
    assert_eq!(
        f.store.run(id).await.unwrap().state.state_type,
        StateType::Completed
    );
    assert_eq!(f.store.state_history(id).await.unwrap().len(), 4);
}

async fn compare_and_set_and_lease_owner_are_enforced(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let id = f.run(&d, -1).await;
    f.claim(1).await;
    let out = f
        .store
        .propose_state(
            id,
            Proposal::new(StateType::Completed),
            TransitionGuard::owned(OWNER, StateType::Running),
        )
        .await
        .unwrap();
    assert!(matches!(
        out,
        TransitionOutcome::Rejected {
            reason: Rejection::StateChanged {
                expected: StateType::Running,
                current: StateType::Pending
            },
            ..
        }
    ));
    let out = f
        .store
        .propose_state(
            id,
            Proposal::new(StateType::Running),
            TransitionGuard::owned("intruder", StateType::Pending),
        )
        .await
        .unwrap();
    assert!(
        matches!(out, TransitionOutcome::Rejected { reason: Rejection::NotLeaseOwner { owner: Some(ref o) }, .. } if o == OWNER)
    );
    assert!(!f
        .store
        .set_infrastructure(id, "intruder", "x")
        .await
        .unwrap());
    // A second PENDING proposal (a second claim) is refused.
    let out = f.move_to(id, StateType::Pending).await;
    assert!(matches!(
        out,
        TransitionOutcome::Rejected {
            reason: Rejection::IllegalTransition { .. },
            ..
        }
    ));
    // CANCELLING accepts only CANCELLED.
    f.move_to(id, StateType::Cancelling).await;
    assert!(!f.move_to(id, StateType::Completed).await.is_recorded());
    assert!(f.move_to(id, StateType::Cancelled).await.is_recorded());
}

async fn claim_orders_by_priority_then_schedule_and_skips_future_runs(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    f.store
        .create_queue(
            f.ws,
            "p",
            NewQueue {
                name: "urgent".into(),
                priority: 0,
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    let normal = f.deployment("normal", "p", None, None).await;
    let urgent = f.deployment("urgent", "p", Some("urgent"), None).await;
    let old = f.run(&normal, -60).await;
    let newer = f.run(&normal, -30).await;
    let hot = f.run(&urgent, -1).await;
    let _future = f.run(&normal, 3600).await;
    assert_eq!(f.claim(2).await, vec![hot, old]);
    assert_eq!(f.claim(10).await, vec![newer]);
    assert!(f.claim(10).await.is_empty(), "a future run is not due");
    let next = f.store.next_due(&PoolSelector::All).await.unwrap().unwrap();
    assert!(next > Utc::now() + chrono::Duration::seconds(3500));
}

/// Issue 19, item 7: priority orders runs within a workspace only; workspaces take turns, a
/// backlog larger than the claim's scan window hides no other workspace's run, and a workspace at
/// its quota gets nothing while the others still do.
async fn claims_take_workspaces_in_turn_within_their_quota(db: TestDb) {
    let a = fixture(&db).await;
    a.pool("p", None).await;
    a.store
        .create_queue(
            a.ws,
            "p",
            NewQueue {
                name: "urgent".into(),
                priority: 0,
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    let flood = a.deployment("flood", "p", Some("urgent"), None).await;
    let mut a_runs = vec![];
    // More than the scan window of a small claim (64 rows), all earlier and of a higher priority.
    for _ in 0..100 {
        a_runs.push(a.run(&flood, -60).await);
    }
    let b = Fixture {
        store: a.store.clone(),
        ws: a.store.create_workspace("b").await.unwrap().id,
    };
    b.pool("p", None).await;
    let d = b.deployment("d", "p", None, None).await;
    let (b1, b2, b3) = (
        b.run(&d, -1).await,
        b.run(&d, -1).await,
        b.run(&d, -1).await,
    );

    assert_eq!(
        a.claim(2).await,
        vec![a_runs[0], b1],
        "one run of each workspace, not two of the flooding one"
    );
    let within = |per_workspace: usize, held: &[(Uuid, usize)], limit: usize| {
        let quota = WorkspaceQuota::new(per_workspace, held.iter().copied().collect());
        let store = a.store.clone();
        async move {
            store
                .claim_due_within(&PoolSelector::All, Utc::now(), limit, OWNER, LEASE, &quota)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    // Each holds 1 of 2: one more of each, though A has 99 due.
    assert_eq!(
        within(2, &[(a.ws, 1), (b.ws, 1)], 10).await,
        vec![a_runs[1], b2]
    );
    // A at its quota: only B's run, however many of A's are due.
    assert!(within(2, &[(a.ws, 2), (b.ws, 2)], 10).await.is_empty());
    assert_eq!(within(3, &[(a.ws, 3), (b.ws, 2)], 10).await, vec![b3]);
    // Without a quota, A's backlog goes on in order.
    assert_eq!(a.claim(3).await, a_runs[2..5].to_vec());
}

async fn claim_skips_paused_pools_queues_and_deployments(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("paused-pool", None).await;
    f.pool("open", None).await;
    f.store
        .create_queue(
            f.ws,
            "open",
            NewQueue {
                name: "held".into(),
                priority: 1,
                concurrency_limit: None,
                paused: true,
            },
        )
        .await
        .unwrap();
    let a = f.deployment("a", "paused-pool", None, None).await;
    let b = f.deployment("b", "open", Some("held"), None).await;
    let c = f.deployment("c", "open", None, None).await;
    let e = f.deployment("e", "open", None, None).await;
    f.store
        .update_deployment(
            f.ws,
            "c",
            pushpool::store::DeploymentPatch {
                paused: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.store
        .update_pool(
            f.ws,
            "paused-pool",
            PoolPatch {
                paused: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ra = f.run(&a, -1).await;
    f.run(&b, -1).await;
    f.run(&c, -1).await;
    let re = f.run(&e, -1).await;
    assert_eq!(f.claim(10).await, vec![re]);
    f.store
        .update_pool(
            f.ws,
            "paused-pool",
            PoolPatch {
                paused: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(f.claim(10).await, vec![ra]);
}

async fn limits_hold_without_starving_free_runs(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", Some(3)).await;
    let limited = f.deployment("limited", "p", None, Some(1)).await;
    let free = f.deployment("free", "p", None, None).await;
    // Ten runs of the limited deployment are due first; they must not block the free one.
    let mut limited_runs = vec![];
    for i in 0..10 {
        limited_runs.push(f.run(&limited, -100 + i).await);
    }
    let free_runs = [
        f.run(&free, -5).await,
        f.run(&free, -4).await,
        f.run(&free, -3).await,
    ];
    let first = f.claim(10).await;
    assert_eq!(
        first,
        vec![limited_runs[0], free_runs[0], free_runs[1]],
        "pool limit 3, deployment limit 1"
    );
    assert!(f.claim(10).await.is_empty(), "pool is full");
    // Finishing the free run frees a pool slot, which goes to the next free run (the limited
    // deployment is still at its own limit).
    f.move_to(free_runs[0], StateType::Running).await;
    f.move_to(free_runs[0], StateType::Completed).await;
    assert_eq!(f.claim(10).await, vec![free_runs[2]]);
    f.move_to(limited_runs[0], StateType::Crashed).await;
    assert_eq!(f.claim(10).await, vec![limited_runs[1]]);
}

async fn leases_renew_release_expire_and_adopt(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let a = f.run(&d, -2).await;
    let b = f.run(&d, -1).await;
    let claimed = f
        .store
        .claim_due(
            &PoolSelector::All,
            Utc::now(),
            10,
            OWNER,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(f
        .store
        .expired_leases(&PoolSelector::All, Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        f.store
            .renew_leases(OWNER, Duration::from_secs(60))
            .await
            .unwrap(),
        2
    );
    assert!(f.store.release_lease(b, OWNER).await.unwrap());
    assert!(
        !f.store.release_lease(b, OWNER).await.unwrap(),
        "not held any more"
    );
    let orphans = f
        .store
        .expired_leases(&PoolSelector::All, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(orphans.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
    // Two rescuers race for the orphan: exactly one wins.
    let (x, y) = tokio::join!(
        f.store.adopt(b, "rescuer-1", LEASE),
        f.store.adopt(b, "rescuer-2", LEASE)
    );
    assert_eq!(x.unwrap().is_some() as u8 + y.unwrap().is_some() as u8, 1);
    // An expired lease is found too, and the run is adoptable while the live one is not.
    assert!(f
        .store
        .renew_lease(a, OWNER, Duration::from_millis(1))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let orphans = f
        .store
        .expired_leases(&PoolSelector::All, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(orphans.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a]);
    let adopted = f.store.adopt(a, "rescuer-3", LEASE).await.unwrap().unwrap();
    assert_eq!(adopted.lease_owner.as_deref(), Some("rescuer-3"));
    assert!(f
        .store
        .adopt(a, "rescuer-4", LEASE)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        f.store
            .runs_owned_by("rescuer-3", None)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn logs_and_data_survive_reconnect(db: TestDb) {
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let id = f.run(&d, -1).await;
    let now = pushpool::model::now_micros();
    f.store
        .append_logs(
            id,
            &[
                (now, "stdout".into(), "hello".into()),
                (now, "stderr".into(), "world".into()),
            ],
        )
        .await
        .unwrap();
    f.store.close().await;
    let again = connect(&db, 2).await;
    let logs = again.logs(id, 100).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        vec!["hello", "world"]
    );
    assert_eq!(again.run(id).await.unwrap().deployment, "d");
    assert_eq!(again.list_deployments(f.ws).await.unwrap().len(), 1);
}

/// 8 claimers, each with its own connections, race over 10,000 due runs in two pools: one without
/// limits and one with a pool limit and deployment limits. Each claimer completes what it claims.
/// A monitor checks the limits in every snapshot it reads.
async fn racing_claimers_claim_every_run_exactly_once(db: TestDb) {
    const RUNS: usize = 10_000;
    const CLAIMERS: usize = 8;
    let f = fixture(&db).await;
    f.pool("open", None).await;
    f.pool("limited", Some(12)).await;
    let open = f.deployment("open-d", "open", None, None).await;
    let capped = [
        f.deployment("capped-1", "limited", None, Some(4)).await,
        f.deployment("capped-2", "limited", None, Some(4)).await,
        f.deployment("uncapped", "limited", None, None).await,
    ];
    let setup_started = std::time::Instant::now();
    // Create runs in parallel batches to keep setup short.
    let mut tasks = vec![];
    for worker in 0..4 {
        let store = f.store.clone();
        let open = open.clone();
        let capped = capped.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = vec![];
            for i in (worker..RUNS).step_by(4) {
                let d = if i % 10 < 7 { &open } else { &capped[i % 3] };
                let new = NewRun {
                    scheduled_time: Some(Utc::now() - chrono::Duration::seconds(1)),
                    ..NewRun::default()
                };
                ids.push(store.create_run(d, new).await.unwrap().0.id);
            }
            ids
        }));
    }
    let mut all: HashSet<Uuid> = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    eprintln!("created {RUNS} runs in {:?}", setup_started.elapsed());
    let race_started = std::time::Instant::now();
    assert_eq!(all.len(), RUNS);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let store = connect(&db, 1).await;
        let stop = stop.clone();
        let limited_deployments: Vec<String> =
            capped[..2].iter().map(|d| d.id.to_string()).collect();
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let counts = store.count_active_by_deployment().await.unwrap();
                let pool_total: i64 = counts
                    .iter()
                    .filter(|(pool, _, _)| pool == "limited")
                    .map(|(_, _, n)| n)
                    .sum();
                assert!(pool_total <= 12, "pool limit exceeded: {pool_total}");
                for (_, dep, n) in &counts {
                    if limited_deployments.contains(dep) {
                        assert!(*n <= 4, "deployment limit exceeded: {n}");
                    }
                }
                checks += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            checks
        })
    };

    let mut claimers = vec![];
    for c in 0..CLAIMERS {
        let store = connect(&db, 2).await;
        let owner = format!("claimer-{c}");
        claimers.push(tokio::spawn(async move {
            let mut mine = vec![];
            let mut empty_rounds = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(240);
            while empty_rounds < 20 && std::time::Instant::now() < deadline {
                let runs = store
                    .claim_due(&PoolSelector::All, Utc::now(), 50, &owner, LEASE)
                    .await
                    .unwrap();
                if runs.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                empty_rounds = 0;
                for run in runs {
                    assert_eq!(run.state.state_type, StateType::Pending);
                    let out = store
                        .propose_state(
                            run.id,
                            Proposal::new(StateType::Completed),
                            TransitionGuard::owned(&owner, StateType::Pending),
                        )
                        .await
                        .unwrap();
                    assert!(matches!(out, TransitionOutcome::Accepted(_)), "{out:?}");
                    mine.push(run.id);
                }
            }
            mine
        }));
    }
    let mut claimed: HashMap<Uuid, usize> = HashMap::new();
    for c in claimers {
        for id in c.await.unwrap() {
            *claimed.entry(id).or_default() += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("claimed and completed in {:?}", race_started.elapsed());
    let checks = monitor.await.unwrap();
    assert!(
        checks > 10,
        "the monitor must have looked ({checks} checks)"
    );
    let doubles: Vec<_> = claimed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "claimed twice: {doubles:?}");
    assert_eq!(claimed.len(), RUNS, "every claimable run was claimed");
    let leftover = f
        .store
        .list_runs(
            f.ws,
            &pushpool::store::RunFilter {
                state: Some(StateType::Scheduled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(leftover.is_empty());
    // Each run has exactly one PENDING in its history.
    for id in all.iter().take(200) {
        let pendings = f
            .store
            .state_history(*id)
            .await
            .unwrap()
            .iter()
            .filter(|h| h.state_type == StateType::Pending)
            .count();
        assert_eq!(pendings, 1);
    }
}

/// Property: whatever sequence of proposals (any type, with retried transition ids) reaches the
/// store, a terminal state is never left, and the history holds exactly the accepted states in order.
async fn no_sequence_of_proposals_leaves_a_terminal_state_or_skips_history(db: TestDb) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let f = fixture(&db).await;
    f.pool("p", None).await;
    let d = f.deployment("d", "p", None, None).await;
    let handle = tokio::runtime::Handle::current();
    let types = pushpool::state::ALL_STATE_TYPES.to_vec();
    let strategy =
        prop::collection::vec((prop::sample::select(types), 0u8..4, any::<bool>()), 1..25);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let result = runner.run(&strategy, |steps| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let id = f.run(&d, -1).await;
                let mut expected = vec![StateType::Scheduled];
                let mut terminal_seen: Option<StateType> = None;
                for (to, tid, claim_first) in steps {
                    if claim_first && to == StateType::Pending {
                        // A claim is the only way into PENDING.
                        let claimed = f.claim(100).await;
                        if claimed.contains(&id) {
                            expected.push(StateType::Pending);
                        }
                        continue;
                    }
                    // Transition ids from a small set, so some proposals are retries.
                    let p = Proposal::new(to).with_transition_id(format!("{id}-{tid}"));
                    let out = f
                        .store
                        .propose_state(id, p, TransitionGuard::default())
                        .await
                        .unwrap();
                    match out {
                        TransitionOutcome::Accepted(run) => {
                            prop_assert!(
                                terminal_seen.is_none(),
                                "left terminal {:?} for {:?}",
                                terminal_seen,
                                to
                            );
                            prop_assert_eq!(run.state.state_type, to);
                            expected.push(to);
                            if to.is_terminal() {
                                terminal_seen = Some(to);
                            }
                        }
                        TransitionOutcome::Duplicate(_) | TransitionOutcome::Rejected { .. } => {}
                    }
                }
                let history: Vec<StateType> = f
                    .store
                    .state_history(id)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|h| h.state_type)
                    .collect();
                prop_assert_eq!(history, expected);
                if let Some(t) = terminal_seen {
                    prop_assert_eq!(f.store.run(id).await.unwrap().state.state_type, t);
                }
                Ok(())
            })
        })
    });
    result.unwrap();
}

/// sqlx's `Any` driver types a NULL `f64` as `float4`; PostgreSQL then refused the next non-NULL
/// rate on the same cached statement ("incorrect binary data format", found by tests/fuzz.rs).
async fn pool_submit_rate_goes_from_none_to_a_value_and_back(db: TestDb) {
    let store = connect(&db, 1).await;
    let ws = store.create_workspace("w").await.unwrap();
    for (i, rate) in [None, Some(1.5), None, Some(0.25)].into_iter().enumerate() {
        let pool = store
            .create_pool(
                ws.id,
                pushpool::store::NewPool {
                    name: format!("p{i}"),
                    pool_type: "process".into(),
                    description: None,
                    base_job_template: serde_json::json!({"job_configuration": {}, "variables": {"type": "object", "properties": {}}}),
                    concurrency_limit: None,
                    paused: false,
                    submit_rate: rate,
                    overridable_variables: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(pool.submit_rate, rate);
        for next in [Some(Some(2.0)), Some(None), Some(Some(3.5))] {
            let patched = store
                .update_pool(
                    ws.id,
                    &pool.name,
                    pushpool::store::PoolPatch {
                        submit_rate: next,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(patched.submit_rate, next.unwrap());
        }
    }
}

/// `overridable_variables` (issue 19 item 5): `None` (any), a list and `[]` (none) are three
/// different things and each is read back as written; a patch without it keeps it.
async fn pool_overridable_variables_are_kept_changed_and_cleared(db: TestDb) {
    let store = connect(&db, 1).await;
    let ws = store.create_workspace("w").await.unwrap();
    let lists = [None, Some(vec!["env".to_string()]), Some(vec![])];
    for (i, list) in lists.iter().enumerate() {
        let pool = store
            .create_pool(
                ws.id,
                NewPool {
                    name: format!("p{i}"),
                    pool_type: "process".into(),
                    description: None,
                    base_job_template: json!({"job_configuration": {}, "variables": {"type": "object", "properties": {}}}),
                    concurrency_limit: None,
                    paused: false,
                    submit_rate: None,
                    overridable_variables: list.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(&pool.overridable_variables, list);
        for next in lists.iter().rev() {
            let patched = store
                .update_pool(
                    ws.id,
                    &pool.name,
                    PoolPatch {
                        overridable_variables: Some(next.clone()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(&patched.overridable_variables, next);
            let kept = store
                .update_pool(
                    ws.id,
                    &pool.name,
                    PoolPatch {
                        paused: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                &kept.overridable_variables, next,
                "a patch without it keeps it"
            );
        }
    }
}
