//! The job module: layering, the built-in context, and one wording of every error.

use chrono::Utc;
use pushpool_provider::{DynProvider, Provider, Registry};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::*;
use crate::controller::tests::ScriptedProvider;
use crate::model::{Deployment, WorkPool};

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn pool(template: Value) -> WorkPool {
    WorkPool {
        id: Uuid::now_v7(),
        workspace_id: Uuid::nil(),
        name: "fakes".into(),
        pool_type: "fake".into(),
        description: None,
        base_job_template: template,
        concurrency_limit: None,
        paused: false,
        created: Utc::now(),
        updated: Utc::now(),
        submit_rate: None,
        overridable_variables: None,
        aws_external_id: None,
    }
}

fn deployment(pool: &WorkPool, job_variables: Value) -> Deployment {
    Deployment {
        id: Uuid::now_v7(),
        workspace_id: Uuid::nil(),
        name: "d".into(),
        work_pool: pool.name.clone(),
        work_pool_id: pool.id,
        work_queue: "default".into(),
        work_queue_id: Uuid::nil(),
        job_variables: map(job_variables),
        parameters: map(json!({"x": 1})),
        concurrency_limit: None,
        paused: false,
        created: Utc::now(),
        updated: Utc::now(),
        retry: Default::default(),
        tags: vec![],
    }
}

fn template() -> Value {
    json!({
        "job_configuration": {
            "command": "{{ command }}", "image": "{{ image }}",
            "id": "{{ flow_run.id }}", "attempt": "{{ flow_run.attempt }}",
            "params": "{{ flow_run.parameters }}", "pool": "{{ work_pool.name }}/{{ work_pool.type }}",
            "deployment": "{{ deployment.name }}",
            "api": "{{ pushpool.api_url }}", "token": "{{ pushpool.run_token }}"
        },
        "variables": {"type": "object", "required": ["image"], "properties": {
            "command": {"type": "string", "default": "echo default"},
            "image": {"type": "string"}
        }}
    })
}

fn render_with(deployment_vars: Value, run_vars: Value) -> Result<Value, JobError> {
    let pool = pool(template());
    let d = deployment(&pool, deployment_vars);
    let run_vars = map(run_vars);
    let run_id = Uuid::now_v7();
    let facts = RunFacts {
        run_id,
        attempt: 2,
        parameters: &d.parameters,
        job_variables: &run_vars,
        api_url: "http://api",
        run_token: "ppr_x",
    };
    let rendered = render(&parse_template(&pool)?, &pool, &d, &facts)?;
    assert_eq!(rendered["id"], json!(run_id.to_string()));
    Ok(rendered)
}

#[test]
fn variables_layer_defaults_then_deployment_then_run() {
    let r = render_with(json!({"image": "a"}), json!({})).unwrap();
    assert_eq!(
        (&r["command"], &r["image"]),
        (&json!("echo default"), &json!("a"))
    );
    let r = render_with(
        json!({"image": "a", "command": "d"}),
        json!({"command": "r"}),
    )
    .unwrap();
    assert_eq!((&r["command"], &r["image"]), (&json!("r"), &json!("a")));
    assert_eq!(r["attempt"], json!(2));
    assert_eq!(r["params"], json!({"x": 1}));
    assert_eq!(r["pool"], json!("fakes/fake"));
    assert_eq!(r["deployment"], json!("d"));
    assert_eq!(
        (&r["api"], &r["token"]),
        (&json!("http://api"), &json!("ppr_x"))
    );
}

#[test]
fn preview_facts_stand_in_for_a_run_not_created_yet() {
    let pool = pool(template());
    let d = deployment(&pool, json!({"image": "a"}));
    let none = Map::new();
    let facts = RunFacts::preview(&d, &none);
    let r = render(&parse_template(&pool).unwrap(), &pool, &d, &facts).unwrap();
    assert_eq!(r["id"], json!(Uuid::nil().to_string()));
    assert_eq!(
        (&r["api"], &r["token"]),
        (&json!("<api url>"), &json!("<run token>"))
    );
}

/// Issue 19 item 5: a pool's `overridable_variables` bounds what a run may override, wherever a
/// job is built (run creation, preview, the controller, the claim API).
#[test]
fn a_pool_bounds_which_variables_a_run_overrides() {
    let mut p = pool(template());
    let d = deployment(&p, json!({"image": "a", "command": "deployment's"}));
    let t = parse_template(&p).unwrap();
    let run_vars = map(json!({"command": "id"}));
    let facts = RunFacts::preview(&d, &run_vars);
    assert_eq!(render(&t, &p, &d, &facts).unwrap()["command"], "id");
    p.overridable_variables = Some(vec!["image".into()]);
    let e = render(&t, &p, &d, &facts).unwrap_err();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("job_variables.command", "not_overridable")
    );
    assert!(e.to_string().contains("lists only `image`"), "{e}");
    // The deployment's own values are not run-level overrides.
    let none = Map::new();
    let r = render(&t, &p, &d, &RunFacts::preview(&d, &none)).unwrap();
    assert_eq!(r["command"], "deployment's");
    let image = map(json!({"image": "b"}));
    assert!(render(&t, &p, &d, &RunFacts::preview(&d, &image)).is_ok());
    p.overridable_variables = Some(vec![]);
    let e = render(&t, &p, &d, &RunFacts::preview(&d, &image)).unwrap_err();
    assert_eq!(e.field(), "job_variables.image");
    assert!(e.to_string().contains("lists none"), "{e}");
    assert!(render(&t, &p, &d, &RunFacts::preview(&d, &none)).is_ok());
    // A dotted key overrides its first segment.
    p.overridable_variables = Some(vec!["image".into()]);
    let dotted = map(json!({"command.x": "y"}));
    let e = check_run_overrides(&p, &dotted).unwrap_err();
    assert_eq!(e.field, "job_variables.command.x");
    // Split as the engine splits it: `image[0].x` sets `image`; `image[0]` (no `.`) does not.
    assert!(check_run_overrides(&p, &map(json!({"image[0].x": "y"}))).is_ok());
    assert!(check_run_overrides(&p, &map(json!({"image[0]": "y"}))).is_err());
}

#[test]
fn variable_errors_name_the_field_the_rule_and_the_fix() {
    let e = render_with(json!({"image": "a"}), json!({"nope": 1})).unwrap_err();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("job_variables.nope", "unknown_variable")
    );
    assert!(
        e.to_string().starts_with(
            "the job variables are invalid at `job_variables.nope`: unknown job variable `nope`"
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with("; fix the deployment's or the run's job_variables"),
        "{e}"
    );

    let e = render_with(json!({}), json!({})).unwrap_err();
    assert_eq!(e.rule(), "required", "{e}");
    assert!(e.field().starts_with("job_variables"), "{e}");

    let e = render_with(json!({"image": 5}), json!({})).unwrap_err();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("job_variables.image", "schema"),
        "{e}"
    );
}

#[test]
fn a_broken_pool_template_names_the_pool() {
    let p = pool(
        json!({"job_configuration": {"a": "{{ undeclared }}"}, "variables": {"properties": {}}}),
    );
    let e = parse_template(&p).unwrap_err();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("work_pool", "undeclared_placeholder")
    );
    assert!(e.to_string().starts_with("the base job template of work pool `fakes` is invalid at `base_job_template.job_configuration.a`"), "{e}");
    assert!(e.to_string().ends_with("; fix the pool's template"), "{e}");
}

#[test]
fn provider_verdicts_name_the_job_configuration_field() {
    let provider = ScriptedProvider::default();
    let e = validate(&provider, &json!({"command": ""})).unwrap_err();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("job_configuration.command", "provider_config")
    );
    assert_eq!(
        e.to_string(),
        "the `fake` provider cannot use this job configuration at `job_configuration.command`: must not be empty; fix the job variable or template field that produces it"
    );
    let e = validate(&provider, &json!({})).unwrap_err();
    assert_eq!(e.field(), "job_configuration");
    assert!(validate(&provider, &json!({"command": "true"})).is_ok());

    let template = Provider::default_base_job_template(&provider);
    let p = pool(template);
    let d = deployment(&p, json!({}));
    let none = Map::new();
    let t = parse_template(&p).unwrap();
    assert!(prepare(&t, &provider, &p, &d, &RunFacts::preview(&d, &none)).is_ok());
    assert_eq!(DynProvider::pool_type(&provider), "fake");
}

#[test]
fn a_pool_type_without_provider_says_what_is_served() {
    let mut registry = Registry::new();
    registry.register(std::sync::Arc::new(ScriptedProvider::default()));
    let e = provider_for(&registry, "mainframe").err().unwrap();
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("type", "unknown_pool_type")
    );
    assert_eq!(
        e.to_string(),
        "no provider for pool type `mainframe` here (this build serves: fake); build pushpool with that provider's feature"
    );
    assert!(provider_for(&registry, "fake").is_ok());
    assert_eq!(
        JobError::pool_gone("p").to_string(),
        "work pool `p` no longer exists"
    );
    assert_eq!(JobError::deployment_gone("d").field(), "deployment");
}

#[tokio::test]
async fn template_work_past_its_budget_is_a_422_on_the_job_variables() {
    // The work waits until released, so it is still running when the (zero) budget is up.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let over = bounded_within(std::time::Duration::ZERO, move || wait.recv().is_ok())
        .await
        .expect_err("over budget");
    release.send(()).unwrap();
    let e = JobError::from(over);
    assert_eq!(
        (e.field().as_str(), e.rule()),
        ("job_variables", "time_budget")
    );
    assert!(e.to_string().contains("time budget of 10 s"), "{e}");
    // Within its budget the work's answer comes back.
    assert_eq!(bounded(|| 7).await, Ok(7));
}
