//! Flat cost at scale (issue 17): the claim's scan, the API's run page and the late-run sweep
//! read an index of `flow_runs` that matches them, never the whole table, on a store holding
//! many old terminal runs and runs scheduled far ahead (as a long-lived store does). Checked on
//! the plans each database chooses (`EXPLAIN`), with fresh statistics on PostgreSQL.

use chrono::Utc;
use pushpool::store::{Backend, NewDeployment, NewPool, NewRun, PoolSelector, RunFilter};
use pushpool_testkit::{both_backends, connect, TestDb};
use serde_json::{json, Map};

both_backends!(hot_queries_read_a_matching_index_on_a_large_store);

/// Old terminal runs; a tenth as many are scheduled ahead, and a few are due now.
const OLD_RUNS: u64 = 20_000;

/// The plan's lines about `flow_runs` (its alias `r` included) that read the whole table.
fn full_scans(plan: &str) -> Vec<&str> {
    plan.lines()
        .filter(|l| {
            // SQLite: "SCAN r" / "SCAN flow_runs" (a "SCAN … USING INDEX" walks a whole index:
            // just as bad); PostgreSQL: "Seq Scan on flow_runs".
            let l = l.trim();
            l.starts_with("SCAN r")
                || l.starts_with("SCAN flow_runs")
                || l.contains("Seq Scan on flow_runs")
        })
        .collect()
}

/// Asserts `plan` reads one of `indexes` and never the whole of `flow_runs`.
fn assert_uses(plan: &str, what: &str, indexes: &[&str]) {
    eprintln!("{what}:\n{plan}\n");
    assert!(
        full_scans(plan).is_empty(),
        "{what} scans flow_runs:\n{plan}"
    );
    assert!(
        indexes.iter().any(|i| plan.contains(i)),
        "{what} reads none of the indexes {indexes:?}:\n{plan}"
    );
}

/// Asserts the index read by `plan` is bounded by the due time (it reads due runs only, not the
/// runs scheduled ahead as well).
fn assert_due_only(plan: &str, what: &str) {
    // A read of the SCHEDULED runs' index by state alone reads those scheduled ahead too.
    let unbounded: Vec<&str> = plan
        .lines()
        .filter(|l| {
            l.contains("(state_type=?)")
                || l.trim() == "Index Cond: (state_type = 'SCHEDULED'::text)"
        })
        .collect();
    assert!(
        unbounded.is_empty(),
        "{what} reads every SCHEDULED run:\n{plan}"
    );
    let bounded = plan.lines().any(|l| {
        (l.contains("USING INDEX flow_runs_scheduled") && l.contains("scheduled_time<"))
            || (l.contains("Index Cond") && l.contains("scheduled_time <"))
    });
    assert!(
        bounded,
        "{what} does not bound the index by the due time:\n{plan}"
    );
}

async fn hot_queries_read_a_matching_index_on_a_large_store(db: TestDb) {
    let store = connect(&db, 4).await;
    let ws = store.create_workspace("default").await.unwrap().id;
    store
        .create_pool(
            ws,
            NewPool {
                name: "p".into(),
                pool_type: "process".into(),
                description: None,
                base_job_template: json!({"job_configuration": {}, "variables": {}}),
                concurrency_limit: None,
                paused: false,
                submit_rate: None,
                overridable_variables: None,
            },
        )
        .await
        .unwrap();
    let d = store
        .create_deployment(
            ws,
            NewDeployment {
                name: "d".into(),
                work_pool: "p".into(),
                work_queue: None,
                job_variables: Map::new(),
                parameters: Map::new(),
                concurrency_limit: None,
                paused: false,
            },
        )
        .await
        .unwrap();
    let (template, _) = store.create_run(&d, NewRun::default()).await.unwrap();
    store
        .preload_runs(template.id, OLD_RUNS, OLD_RUNS / 10)
        .await
        .unwrap();
    for _ in 0..20 {
        store.create_run(&d, NewRun::default()).await.unwrap();
    }
    store.vacuum_analyze().await.unwrap();
    let pools = PoolSelector::Types(vec!["process".into()]);

    let claim = store.explain_claim(&pools).await.unwrap();
    let late = store.explain_mark_late(&pools).await.unwrap();
    if store.backend() == Backend::Sqlite {
        assert_uses(&claim, "the claim", &["flow_runs_scheduled"]);
        assert_due_only(&claim, "the claim");
        assert_uses(&late, "the late-run sweep", &["flow_runs_scheduled"]);
        assert_due_only(&late, "the late-run sweep");
    } else {
        // PostgreSQL estimates the due fraction of SCHEDULED runs from the whole table's
        // scheduled times (mostly past: the finished runs'), so it expects most SCHEDULED runs
        // to be due and reads them all through an index (docs/benchmarks.md, "Flat cost"):
        // no sequential scan, but not bounded by the due time either.
        assert_uses(
            &claim,
            "the claim",
            &[
                "flow_runs_scheduled",
                "flow_runs_due",
                "flow_runs_active_deployment",
            ],
        );
        assert_uses(
            &late,
            "the late-run sweep",
            &["flow_runs_scheduled", "flow_runs_due"],
        );
    }

    let page = store
        .explain_list_runs(ws, &RunFilter::default())
        .await
        .unwrap();
    // Newest first from the workspace's index, or (PostgreSQL, whose statistics say this one
    // workspace holds every run) backwards along the primary key, the same order: either stops
    // after the page's rows.
    let newest_first = [
        "flow_runs_workspace",
        "Index Scan Backward using flow_runs_pkey",
    ];
    assert_uses(&page, "the run page", &newest_first);
    let next = RunFilter {
        cursor: Some(template.id),
        ..RunFilter::default()
    };
    let page = store.explain_list_runs(ws, &next).await.unwrap();
    assert_uses(&page, "the run page after a cursor", &newest_first);
    // The sweep and the claim find the due runs among the old ones (the plans are not vacuous).
    let late = store
        .mark_late(&pools, std::time::Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(
        late.len(),
        21,
        "the template run and the 20 due runs are late"
    );
    let claimed = store
        .claim_due(
            &pools,
            Utc::now(),
            100,
            "c",
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 21);
}
