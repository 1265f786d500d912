//! The authorization matrix's requests for the automation routes (issue 14): a fresh automation
//! of the workspace where the call reads, changes or deletes one. The bodies say "matrix", which
//! must never show up in the other workspace.

use serde_json::{json, Value};

use super::{uniq, Env, Ws};

/// True for the routes this file builds requests for.
pub(super) fn covers(tail: &str) -> bool {
    tail.starts_with("/automations")
}

/// An automation whose only action needs no scope beyond `automations:write`.
fn body(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "description": description,
        "enabled": false,
        "trigger": {"type": "run-state", "states": ["Failed"]},
        "actions": [{"type": "call-webhook", "url": "https://hooks.example.com/pushpool"}],
    })
}

async fn fresh_automation(env: &Env, ws: &Ws) -> String {
    let name = uniq("automation");
    env.ws_setup(ws, "post", "/automations", body(&name, "made for the case"))
        .await;
    env.made(ws, &name)
}

/// (path, body, success status) of an automation route in `ws`.
pub(super) async fn case(
    env: &Env,
    method: &str,
    tail: &str,
    ws: &Ws,
) -> (String, Option<Value>, u16) {
    let base = format!("/api/workspaces/{}/automations", ws.name);
    match (method, tail) {
        ("post", "/automations") => (base, Some(body(&uniq("matrix"), "from the matrix")), 201),
        ("get", "/automations") => (base, None, 200),
        ("get", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}"), None, 200)
        }
        ("patch", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (
                format!("{base}/{a}"),
                Some(json!({"description": "changed by the matrix"})),
                200,
            )
        }
        ("delete", "/automations/{id_or_name}") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}"), None, 204)
        }
        ("get", "/automations/{id_or_name}/firings") => {
            let a = fresh_automation(env, ws).await;
            (format!("{base}/{a}/firings"), None, 200)
        }
        other => panic!("no automation case for {other:?}"),
    }
}

// Tenant isolation of the engine: events of one workspace never trigger another's automation,
// and an automation's actions find objects of its own workspace only.
pushpool_testkit::both_backends!(events_of_another_workspace_never_trigger_and_actions_stay_home);

async fn workspace_with_etl(store: &pushpool::store::Store, name: &str) -> uuid::Uuid {
    let ws = store.create_workspace(name).await.unwrap().id;
    let provider = pushpool_null::NullProvider::default();
    store
        .create_pool(
            ws,
            pushpool::store::NewPool {
                name: "nulls".into(),
                pool_type: "null".into(),
                description: None,
                base_job_template: pushpool_provider::Provider::default_base_job_template(
                    &provider,
                ),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await
        .unwrap();
    for d in ["etl", &format!("only-in-{name}")] {
        store
            .create_deployment(
                ws,
                pushpool::store::NewDeployment {
                    name: d.to_string(),
                    work_pool: "nulls".into(),
                    work_queue: None,
                    job_variables: Default::default(),
                    parameters: Default::default(),
                    concurrency_limit: None,
                    paused: false,
                },
            )
            .await
            .unwrap();
    }
    ws
}

async fn fail_a_run(store: &pushpool::store::Store, ws: uuid::Uuid) {
    use pushpool::state::{Proposal, StateType};
    let d = store.deployment(ws, "etl").await.unwrap();
    let run = store
        .create_run(&d, pushpool::store::NewRun::default())
        .await
        .unwrap()
        .0;
    for to in [StateType::Pending, StateType::Running, StateType::Failed] {
        store
            .propose_state(
                run.id,
                Proposal::new(to),
                pushpool::store::TransitionGuard::default(),
            )
            .await
            .unwrap();
    }
}

async fn events_of_another_workspace_never_trigger_and_actions_stay_home(
    db: pushpool_testkit::TestDb,
) {
    use pushpool::automations::{Engine, EngineConfig};
    let store = pushpool_testkit::connect(&db, 8).await;
    let alpha = workspace_with_etl(&store, "alpha").await;
    let bravo = workspace_with_etl(&store, "bravo").await;
    let automation = store
        .create_automation(
            alpha,
            pushpool::store::NewAutomation {
                name: "on-failure".into(),
                description: String::new(),
                enabled: true,
                trigger: serde_json::from_value(json!({"type": "run-state", "states": ["Failed"]}))
                    .unwrap(),
                // `etl` exists in both workspaces, `only-in-bravo` in bravo only.
                actions: serde_json::from_value(json!([
                    {"type": "pause-deployment", "deployment": "etl"},
                    {"type": "run-deployment", "deployment": "only-in-bravo"},
                ]))
                .unwrap(),
            },
        )
        .await
        .unwrap();
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            settle: std::time::Duration::ZERO,
            ..EngineConfig::default()
        },
    );
    for _ in 0..3 {
        fail_a_run(&store, bravo).await;
    }
    assert_eq!(engine.tick().await.unwrap().fired, 0, "bravo's failures");
    assert_eq!(
        store.automation_firing_count(automation.id).await.unwrap(),
        0
    );
    fail_a_run(&store, alpha).await;
    assert_eq!(engine.tick().await.unwrap().fired, 1);
    engine.tick().await.unwrap();
    let firing = &store.automation_firings(automation.id, 10).await.unwrap()[0];
    assert_eq!(firing.actions[0].status, "succeeded", "{firing:?}");
    assert_eq!(firing.actions[1].status, "failed", "{firing:?}");
    assert!(
        firing.actions[1].result.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{firing:?}"
    );
    assert!(store.deployment(alpha, "etl").await.unwrap().paused);
    assert!(!store.deployment(bravo, "etl").await.unwrap().paused);
    let bravo_only = store.deployment(bravo, "only-in-bravo").await.unwrap();
    assert!(store
        .all_runs(bravo)
        .await
        .unwrap()
        .iter()
        .all(|r| r.deployment_id != bravo_only.id));
}
