//! The fault-injection suite's Rust side: seeding runs and checking invariants afterwards
//! (`pushpool chaos-seed`, `pushpool chaos-check`; `scripts/chaos` orchestrates processes).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Map;
use uuid::Uuid;

use pushpool::state::StateType;
use pushpool::store::{NewDeployment, NewPool, NewRun, Store, StoreError};
use pushpool_null::read_journal;

/// Workspace the chaos suite uses.
pub const WORKSPACE: &str = "chaos";

/// Creates the chaos workspace, a `null` pool and deployment, and `runs` runs due now.
pub async fn seed(store: &Store, runs: usize) -> Result<(), StoreError> {
    let ws = match store.workspace(WORKSPACE).await {
        Ok(ws) => ws,
        Err(StoreError::NotFound { .. }) => store.create_workspace(WORKSPACE).await?,
        Err(e) => return Err(e),
    };
    let provider = pushpool_null::NullProvider::default();
    if store.pool(ws.id, "chaos").await.is_err() {
        store
            .create_pool(
                ws.id,
                NewPool {
                    name: "chaos".into(),
                    pool_type: pushpool_null::POOL_TYPE.into(),
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
            .await?;
    }
    let deployment = match store.deployment(ws.id, "chaos").await {
        Ok(d) => d,
        Err(_) => {
            store
                .create_deployment(
                    ws.id,
                    NewDeployment {
                        name: "chaos".into(),
                        work_pool: "chaos".into(),
                        work_queue: None,
                        job_variables: Map::new(),
                        parameters: Map::new(),
                        concurrency_limit: None,
                        paused: false,
                    },
                )
                .await?
        }
    };
    for _ in 0..runs {
        store.create_run(&deployment, NewRun::default()).await?;
    }
    Ok(())
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ChaosReport {
    /// Runs in the chaos workspace.
    pub runs: usize,
    /// Runs in a terminal state.
    pub terminal: usize,
    /// Runs that ended in a terminal state other than COMPLETED (the null jobs always succeed, so
    /// any such end means pushpool lost track of the run).
    pub lost: usize,
    /// Run attempts the provider received more than once.
    pub double_submits: usize,
    /// Runs not terminal.
    pub stuck: usize,
    /// Runs whose history continues after a terminal state, or holds two terminal states.
    pub overwritten_terminal: usize,
    /// COMPLETED runs the provider's journal has no submission for (the check itself is broken).
    pub unjournaled: usize,
    /// A few examples of lost or stuck runs: state and message.
    #[serde(skip)]
    pub examples: Vec<String>,
}

impl ChaosReport {
    /// True when every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.double_submits == 0
            && self.stuck == 0
            && self.overwritten_terminal == 0
            && self.unjournaled == 0
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        format!(
            "runs={} terminal={} lost={} double_submits={} stuck={} overwritten_terminal={} unjournaled={}",
            self.runs,
            self.terminal,
            self.lost,
            self.double_submits,
            self.stuck,
            self.overwritten_terminal,
            self.unjournaled
        )
    }
}

/// Reads the store and the null provider's journal and checks the invariants.
pub async fn check(store: &Store, journal_dir: &Path) -> Result<ChaosReport, StoreError> {
    let ws = store.workspace(WORKSPACE).await?;
    let mut report = ChaosReport::default();
    let mut completed_ids = vec![];
    for run in &store.all_runs(ws.id).await? {
        report.runs += 1;
        let t = run.state.state_type;
        if t == StateType::Completed {
            completed_ids.push(run.id);
        }
        if t.is_terminal() {
            report.terminal += 1;
            if t != StateType::Completed {
                report.lost += 1;
            }
        } else {
            report.stuck += 1;
        }
        if t != StateType::Completed && report.examples.len() < 10 {
            report.examples.push(format!(
                "{} {}/{}: {}",
                run.id,
                t,
                run.state.name,
                run.state.message.clone().unwrap_or_default()
            ));
        }
    }
    let mut per_run: HashMap<Uuid, Vec<StateType>> = HashMap::new();
    for (run, t) in store.workspace_history(ws.id).await? {
        per_run.entry(run).or_default().push(t);
    }
    report.overwritten_terminal = per_run
        .values()
        .filter(|h| match h.iter().position(|t| t.is_terminal()) {
            Some(i) => i != h.len() - 1,
            None => false,
        })
        .count();
    let mut submissions: HashMap<(Uuid, u32), usize> = HashMap::new();
    for e in read_journal(journal_dir) {
        *submissions.entry((e.run_id, e.attempt)).or_default() += 1;
    }
    report.double_submits = submissions.values().filter(|n| **n > 1).count();
    let journaled: std::collections::HashSet<Uuid> =
        submissions.keys().map(|(run, _)| *run).collect();
    report.unjournaled = completed_ids
        .iter()
        .filter(|id| !journaled.contains(id))
        .count();
    Ok(report)
}
