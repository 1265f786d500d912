//! Prefect's cloud push pools served by pushpool: `cloud-run-v2:push` against the Cloud Run fake
//! and `aws-lambda:push` against moto (behind the recording Lambda fake). The job bodies carry
//! Prefect's env and labels; a block-reference `credentials` and a Prefect variable in `env`
//! are resolved.

use std::time::{Duration, Instant};

use pushpool_testkit::aws_lambda_fake::LambdaFake;
use pushpool_testkit::cloud_run_fake::{CloudRunFake, Outcome};
use serde_json::{json, Value};

use crate::harness::{unique, ControllerProcess, PrefectServer};

/// A block type, schema and document on the server; the document's id.
async fn create_block(server: &PrefectServer, name: &str, data: Value) -> anyhow::Result<String> {
    let slug = unique("pushpool-creds");
    let bt = server
        .post("/block_types/", json!({"name": slug, "slug": slug}))
        .await?;
    let fields = json!({"title": "Creds", "type": "object", "properties": {},
                        "secret_fields": [], "block_schema_references": {}});
    let bs = server
        .post(
            "/block_schemas/",
            json!({"block_type_id": bt["id"], "fields": fields, "capabilities": []}),
        )
        .await?;
    let doc = server
        .post(
            "/block_documents/",
            json!({"name": name, "block_type_id": bt["id"], "block_schema_id": bs["id"], "data": data}),
        )
        .await?;
    Ok(doc["id"].as_str().unwrap_or_default().to_string())
}

async fn wait_until(what: &str, within: Duration, f: impl Fn() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !f() {
        anyhow::ensure!(
            started.elapsed() < within,
            "{what} not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_run_jobs_carry_prefects_env_labels_and_resolved_references() -> anyhow::Result<()> {
    let Some(venv) = crate::harness::venv() else {
        return Ok(());
    };
    let server = PrefectServer::start(&venv).await?;
    let fake = CloudRunFake::start().await;
    fake.auto(Outcome::Succeeded);
    let pool = unique("cr");
    server.create_pool(&pool, "cloud-run-v2:push").await?;
    let block = create_block(
        &server,
        "gcp",
        json!({"project": "test-project", "anonymous": true}),
    )
    .await?;
    let variable = unique("greeting").replace('-', "_");
    server
        .post(
            "/variables/",
            json!({"name": variable, "value": "from-a-variable"}),
        )
        .await?;
    let deployment = server
        .api_deployment(
            &pool,
            &pool,
            json!({
                "image": "us-docker.pkg.dev/test-project/jobs/etl:1",
                "project": "test-project", "region": "us-central1", "endpoint_url": fake.url,
                "credentials": {"$ref": {"block_document_id": block}},
                "env": {"GREETING": format!("{{{{ prefect.variables.{variable} }}}}")},
                "labels": {"team": "data"},
            }),
        )
        .await?;
    // The preview renders and prepares without resolving (references may hold secrets).
    let preview = std::process::Command::new(env!("CARGO_BIN_EXE_pushpool"))
        .args(["prefect", "pool", "preview", &deployment])
        .env("PREFECT_API_URL", &server.api_url)
        .output()?;
    anyhow::ensure!(
        preview.status.success(),
        "{}",
        String::from_utf8_lossy(&preview.stderr)
    );
    let preview: Value = serde_json::from_slice(&preview.stdout)?;
    assert_eq!(
        preview["credentials"]["$ref"]["block_document_id"],
        json!(block),
        "{preview}"
    );
    assert_eq!(
        preview["env"]["GREETING"],
        json!(format!("{{{{ prefect.variables.{variable} }}}}"))
    );
    assert!(
        preview["labels"].get("prefect-io-flow-run-id").is_some(),
        "{preview}"
    );

    let _controller = ControllerProcess::start(&server, &pool, 30)?;
    let id = server.run_deployment(&deployment).await?;
    wait_until("the Cloud Run job", Duration::from_secs(60), || {
        !fake.created_bodies().is_empty()
    })
    .await?;
    let body = fake.created_bodies()[0].1.clone();
    let env: Vec<Value> = body["template"]["template"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        var("GREETING").as_deref(),
        Some("from-a-variable"),
        "{body}"
    );
    assert_eq!(
        var("PREFECT__FLOW_RUN_ID").as_deref(),
        Some(id.as_str()),
        "{body}"
    );
    assert_eq!(
        var("PREFECT_API_URL").as_deref(),
        Some(server.api_url.as_str()),
        "{body}"
    );
    assert_eq!(
        body["template"]["template"]["containers"][0]["command"],
        json!(["prefect", "flow-run", "execute"]),
        "{body}"
    );
    let labels = &body["labels"];
    assert_eq!(labels["prefect-io-flow-run-id"], json!(id), "{body}");
    assert_eq!(labels["team"], "data", "{body}");
    assert!(labels.get("prefect-io-flow-run-name").is_some(), "{body}");
    // The job ended without its flow reporting (the fake runs no container): CRASHED, with the
    // infrastructure recorded.
    let run = server
        .wait_for(&id, &["CRASHED", "COMPLETED"], Duration::from_secs(60))
        .await?;
    assert!(
        run["infrastructure_pid"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{run}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_invocations_carry_prefects_env() -> anyhow::Result<()> {
    let Some(venv) = crate::harness::venv() else {
        return Ok(());
    };
    let Ok(moto) = std::env::var("PUSHPOOL_TEST_MOTO_URL") else {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PUSHPOOL_TEST_MOTO_URL is not set (scripts/test-emulators.sh)"
        );
        eprintln!("skipped: PUSHPOOL_TEST_MOTO_URL not set");
        return Ok(());
    };
    let server = PrefectServer::start(&venv).await?;
    let fake = LambdaFake::start(Some(moto.clone())).await;
    let function = unique("prefect-fn");
    crate::lambda::create_function(&moto, &function).await?;
    let pool = unique("lambda");
    server.create_pool(&pool, "aws-lambda:push").await?;
    let variable = unique("region").replace('-', "_");
    server
        .post(
            "/variables/",
            json!({"name": variable, "value": "eu-central-1"}),
        )
        .await?;
    let deployment = server
        .api_deployment(
            &pool,
            &pool,
            json!({"function_name": function, "region": "us-east-1", "endpoint_url": fake.url,
                   "env": {"TARGET_REGION": format!("{{{{ prefect.variables.{variable} }}}}")}}),
        )
        .await?;
    let _controller = ControllerProcess::start(&server, &pool, 30)?;
    let id = server.run_deployment(&deployment).await?;
    wait_until("the invocation", Duration::from_secs(60), || {
        !fake.invocations(&function).is_empty()
    })
    .await?;
    let payload = fake.invocations(&function)[0].payload.clone();
    let text = payload.to_string();
    assert!(text.contains(&id), "the flow run id travels: {payload}");
    assert!(text.contains("PREFECT__FLOW_RUN_ID"), "{payload}");
    assert!(
        text.contains("eu-central-1"),
        "the variable is resolved: {payload}"
    );
    assert!(text.contains(&server.api_url), "{payload}");
    server
        .wait_for(&id, &["CRASHED", "COMPLETED"], Duration::from_secs(60))
        .await?;
    Ok(())
}
