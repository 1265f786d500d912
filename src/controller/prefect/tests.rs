//! Unit tests of the Prefect plane against a tiny fake of Prefect's API (the orchestration rule
//! that makes PENDING the lock, terminal states final). The real server is exercised by
//! tests/prefect (end to end).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::controller::plane::{ControlPlane, Guard};
use crate::model::{Deployment, WorkPool};
use crate::state::{Proposal, StateType};
use crate::store::{TransitionOutcome, WorkspaceQuota};

#[derive(Default)]
struct Fake {
    runs: Mutex<HashMap<Uuid, Value>>,
    auth: Mutex<Vec<String>>,
}

type Shared = Arc<Fake>;

const POOL_ID: &str = "11111111-1111-1111-1111-111111111111";

fn pool_json() -> Value {
    json!({"id": POOL_ID, "name": "pool", "type": "process", "is_paused": false,
           "base_job_template": {"job_configuration": {"command": "{{ command }}", "env": "{{ env }}", "labels": "{{ labels }}", "name": "{{ name }}"},
                                 "variables": {"type": "object", "properties": {"command": {"type": "string"}, "env": {"type": "object"}, "labels": {"type": "object"}, "name": {"type": "string"}}}}})
}

fn seen(fake: &Fake, headers: &HeaderMap) {
    if let Some(h) = headers.get("authorization") {
        fake.auth
            .lock()
            .unwrap()
            .push(h.to_str().unwrap().to_string());
    }
}

async fn fake_server(fake: Shared) -> String {
    let app = Router::new()
        .route(
            "/api/work_pools/filter",
            post(|State(f): State<Shared>, h: HeaderMap| async move {
                seen(&f, &h);
                Json(json!([pool_json()]))
            }),
        )
        .route("/api/work_pools/{name}", get(|| async { Json(pool_json()) }))
        .route(
            "/api/work_pools/{name}/get_scheduled_flow_runs",
            post(|State(f): State<Shared>| async move {
                let runs = f.runs.lock().unwrap();
                let due: Vec<Value> = runs
                    .values()
                    .filter(|r| r["state_type"] == "SCHEDULED")
                    .map(|r| json!({"work_pool_id": POOL_ID, "flow_run": r}))
                    .collect();
                Json(Value::Array(due))
            }),
        )
        .route(
            "/api/work_pools/{name}/workers/heartbeat",
            post(|State(f): State<Shared>, h: HeaderMap| async move {
                seen(&f, &h);
                StatusCode::NO_CONTENT
            }),
        )
        .route("/api/flow_runs/filter", post(|| async { Json(json!([])) }))
        .route(
            "/api/work_pools/{name}/workers/filter",
            post(|| async { Json(json!([])) }),
        )
        .route(
            "/api/flow_runs/{id}",
            get(|State(f): State<Shared>, Path(id): Path<Uuid>| async move {
                f.runs.lock().unwrap().get(&id).cloned().map(Json).ok_or(StatusCode::NOT_FOUND)
            })
            .patch(
                |State(f): State<Shared>, Path(id): Path<Uuid>, Json(body): Json<Value>| async move {
                    let mut runs = f.runs.lock().unwrap();
                    let run = runs.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
                    run["infrastructure_pid"] = body["infrastructure_pid"].clone();
                    Ok::<_, StatusCode>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route(
            "/api/flow_runs/{id}/set_state",
            post(
                |State(f): State<Shared>, Path(id): Path<Uuid>, Json(body): Json<Value>| async move {
                    let mut runs = f.runs.lock().unwrap();
                    let run = runs.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
                    let from = run["state_type"].as_str().unwrap_or_default().to_string();
                    let to = body["state"]["type"].as_str().unwrap_or_default().to_string();
                    let terminal = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].contains(&from.as_str());
                    let second_pending = to == "PENDING" && ["PENDING", "RUNNING", "CANCELLING"].contains(&from.as_str());
                    if terminal || second_pending {
                        return Ok(Json(json!({"status": "ABORT", "state": run["state"], "details": {"reason": "no"}})));
                    }
                    let state = json!({"type": to, "name": body["state"]["name"], "message": body["state"]["message"], "timestamp": chrono::Utc::now()});
                    run["state"] = state.clone();
                    run["state_type"] = json!(to);
                    Ok::<_, StatusCode>(Json(json!({"status": "ACCEPT", "state": state})))
                },
            ),
        )
        .route(
            "/api/variables/name/{name}",
            get(|Path(name): Path<String>| async move {
                match name.as_str() {
                    "region" => Ok(Json(json!({"name": "region", "value": "eu-west-1"}))),
                    _ => Err(StatusCode::NOT_FOUND),
                }
            }),
        )
        .route(
            "/api/block_documents/{id}",
            get(|| async { Json(json!({"data": {"service_account_info": {"private_key": "s3cret"}}})) }),
        )
        .route(
            "/api/flows/{id}",
            get(|| async { Json(json!({"name": "etl"})) }),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api")
}

fn add_runs(fake: &Fake, n: usize) -> Vec<Uuid> {
    let mut ids = vec![];
    for i in 0..n {
        let id = Uuid::new_v4();
        fake.runs.lock().unwrap().insert(
            id,
            json!({"id": id, "name": format!("run-{i}"), "flow_id": Uuid::new_v4(), "deployment_id": Uuid::new_v4(),
                   "work_pool_name": "pool", "work_pool_id": POOL_ID, "state_type": "SCHEDULED",
                   "state": {"type": "SCHEDULED", "name": "Scheduled"}, "run_count": 0,
                   "next_scheduled_start_time": chrono::Utc::now() - chrono::Duration::seconds(1)}),
        );
        ids.push(id);
    }
    ids
}

fn plane(url: &str, id: &str, auth: PrefectAuth) -> PrefectPlane {
    let mut settings = PrefectSettings::new(url, auth);
    settings.start_grace = std::time::Duration::ZERO;
    PrefectPlane::new(settings, id, vec!["process".into()]).unwrap()
}

async fn claim_all(p: &PrefectPlane, quota: &WorkspaceQuota) -> Vec<crate::model::FlowRun> {
    let mut all = vec![];
    loop {
        let batch = p.claim_due(1000, quota).await.unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[tokio::test]
async fn two_controllers_claim_every_due_run_exactly_once() {
    let fake: Shared = Arc::default();
    let url = fake_server(fake.clone()).await;
    let ids = add_runs(&fake, 100);
    let (a, b) = (
        plane(&url, "a", PrefectAuth::None),
        plane(&url, "b", PrefectAuth::None),
    );
    let quota = WorkspaceQuota::unlimited();
    // Both claim at once, batch after batch, until nothing is left.
    let (ra, rb) = tokio::join!(claim_all(&a, &quota), claim_all(&b, &quota));
    let sa: HashSet<Uuid> = ra.iter().map(|r| r.id).collect();
    let sb: HashSet<Uuid> = rb.iter().map(|r| r.id).collect();
    assert!(sa.is_disjoint(&sb), "a run was claimed by both");
    assert_eq!(sa.len() + sb.len(), ids.len());
    for r in &ra {
        assert_eq!(r.state.state_type, StateType::Pending);
        assert!(a.holds(r) && !b.holds(r));
        assert_eq!(r.lease_owner.as_deref(), Some("a"));
    }
    // Each claim names its controller in the PENDING state's message.
    let run = a.run(ra.first().or(rb.first()).unwrap().id).await.unwrap();
    assert!(plane::claimer(run.state.message.as_deref()).is_some());
}

#[tokio::test]
async fn the_flow_reports_its_own_states_and_a_terminal_run_is_never_overwritten() {
    let fake: Shared = Arc::default();
    let url = fake_server(fake.clone()).await;
    add_runs(&fake, 2);
    let p = plane(&url, "a", PrefectAuth::None);
    let runs = p.claim_due(10, &WorkspaceQuota::unlimited()).await.unwrap();
    let (one, two) = (runs[0].id, runs[1].id);

    // RUNNING is not sent (the flow engine reports it); the run stays as Prefect has it.
    let out = p
        .propose(
            one,
            vec![Proposal::new(StateType::Running)],
            Guard::held_in(StateType::Pending),
            Some("process:1"),
        )
        .await
        .unwrap();
    assert!(out[0].is_recorded());
    assert_eq!(fake.runs.lock().unwrap()[&one]["state_type"], "PENDING");
    assert_eq!(
        fake.runs.lock().unwrap()[&one]["infrastructure_pid"],
        "process:1"
    );

    // The job ended while the flow never reported: CRASHED, with the provider's reason.
    let end = Proposal::new(StateType::Failed).with_message("exit code 127");
    let out = p
        .propose(
            one,
            vec![Proposal::new(StateType::Running), end],
            Guard::held_in(StateType::Pending),
            None,
        )
        .await
        .unwrap();
    assert!(out.iter().all(TransitionOutcome::is_recorded));
    let run = p.run(one).await.unwrap();
    assert_eq!(run.state.state_type, StateType::Crashed);
    assert!(run.state.message.unwrap().contains("exit code 127"));

    // The flow reported COMPLETED itself: the job's end changes nothing.
    {
        let mut runs = fake.runs.lock().unwrap();
        runs.get_mut(&two).unwrap()["state_type"] = json!("COMPLETED");
        runs.get_mut(&two).unwrap()["state"] = json!({"type": "COMPLETED", "name": "Completed"});
    }
    let crash = Proposal::new(StateType::Crashed).with_message("late");
    let out = p
        .propose(two, vec![crash], Guard::default(), None)
        .await
        .unwrap();
    assert!(!out[0].is_recorded());
    assert_eq!(
        p.run(two).await.unwrap().state.state_type,
        StateType::Completed
    );
}

#[tokio::test]
async fn credentials_go_as_bearer_or_basic() {
    let fake: Shared = Arc::default();
    let url = fake_server(fake.clone()).await;
    plane(&url, "a", PrefectAuth::ApiKey("pnu_key".into()))
        .renew_all()
        .await
        .unwrap();
    plane(&url, "b", PrefectAuth::AuthString("admin:pass".into()))
        .renew_all()
        .await
        .unwrap();
    let seen = fake.auth.lock().unwrap().clone();
    assert!(seen.contains(&"Bearer pnu_key".to_string()), "{seen:?}");
    assert!(
        seen.contains(&"Basic YWRtaW46cGFzcw==".to_string()),
        "{seen:?}"
    );
    assert!(!format!("{:?}", PrefectAuth::ApiKey("pnu_key".into())).contains("pnu_key"));
}

#[tokio::test]
async fn the_job_gets_prefects_preparation_and_resolved_references() {
    let fake: Shared = Arc::default();
    let url = fake_server(fake.clone()).await;
    add_runs(&fake, 1);
    let p = plane(&url, "a", PrefectAuth::ApiKey("k".into()));
    let run = p
        .claim_due(1, &WorkspaceQuota::unlimited())
        .await
        .unwrap()
        .remove(0);
    let mut pool: WorkPool = p.pool_of(&run).await.unwrap();
    pool.base_job_template["job_configuration"]["credentials"] = json!("{{ credentials }}");
    let deployment = Deployment {
        id: Uuid::new_v4(),
        workspace_id: run.workspace_id,
        name: "nightly".into(),
        work_pool: "pool".into(),
        work_pool_id: pool.id,
        work_queue: "default".into(),
        work_queue_id: Uuid::nil(),
        job_variables: Default::default(),
        parameters: Default::default(),
        concurrency_limit: None,
        paused: false,
        created: chrono::Utc::now(),
        updated: chrono::Utc::now(),
        retry: Default::default(),
        tags: vec![],
    };
    let rendered = json!({
        "env": {"REGION": "{{ prefect.variables.region }}", "MISSING": "x{{ prefect.variables.nope }}y"},
        "credentials": {"$ref": {"block_document_id": Uuid::new_v4()}},
        "labels": {"team": "data"},
    });
    let job = p
        .finish_job(&run, &pool, &deployment, rendered)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job["env"]["REGION"], "eu-west-1");
    assert_eq!(job["env"]["MISSING"], "xy");
    assert_eq!(job["env"]["PREFECT_API_URL"], url);
    assert_eq!(job["env"]["PREFECT_API_KEY"], "k");
    assert_eq!(job["env"]["PREFECT__FLOW_RUN_ID"], run.id.to_string());
    assert_eq!(
        job["credentials"]["service_account_info"]["private_key"],
        "s3cret"
    );
    assert_eq!(job["labels"]["prefect.io/flow-run-id"], run.id.to_string());
    assert_eq!(job["labels"]["prefect.io/flow-name"], "etl");
    assert_eq!(job["labels"]["prefect.io/deployment-name"], "nightly");
    assert_eq!(job["labels"]["team"], "data");
    assert_eq!(job["command"], prepare::DEFAULT_COMMAND);
    assert!(job["name"].as_str().unwrap().starts_with("run-"));
}
