//! The control plane over a Prefect 3 server or Prefect Cloud workspace ([`PrefectPlane`]):
//! pushpool serves Prefect's push work pools the way a Prefect worker would, without one.
//!
//! - **Claim** as Prefect's workers do: `POST /work_pools/{name}/get_scheduled_flow_runs`, then
//!   a PENDING proposal through `POST /flow_runs/{id}/set_state`; Prefect's orchestration rules
//!   make that proposal the lock (an ABORT or REJECT means another controller or worker has the
//!   run). The PENDING state's message names the claiming controller
//!   (`pushpool controller `<id>` claimed this run`).
//! - **Heartbeats**: `POST /work_pools/{name}/workers/heartbeat` with the controller id as the
//!   worker name, so the pool shows ready in Prefect's UI.
//! - **The job**: the pool's `base_job_template` rendered by pushpool's engine
//!   ([`crate::job`]) with the deployment's and the flow run's `job_variables`, then Prefect's
//!   own preparation ([`prepare`]).
//! - **States**: the flow reports RUNNING, COMPLETED and FAILED itself from inside the job, so
//!   the controller's RUNNING proposals are not sent, and a job that *ended* (successfully or
//!   not) while the run is not terminal is proposed CRASHED with the provider's reason. A
//!   terminal run is never written (read first; Prefect also aborts a proposal from a terminal
//!   state).
//! - **Crash safety** (a controller killed between the PENDING proposal and the submit, Prefect
//!   #20485): see [`PrefectPlane::orphans`].

pub mod client;
pub mod convert;
mod plane;
pub mod pools;
pub mod prepare;
pub mod serve;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::{PrefectAuth, PrefectClient, PrefectError};
pub use plane::PrefectPlane;

/// How a [`PrefectPlane`] talks to Prefect.
#[derive(Debug, Clone)]
pub struct PrefectSettings {
    /// The API's base URL (`PREFECT_API_URL`): `http://host:4200/api`, or Prefect Cloud's
    /// `https://api.prefect.cloud/api/accounts/{account}/workspaces/{workspace}`.
    pub api_url: String,
    /// The credentials (`PREFECT_API_KEY` or `PREFECT_API_AUTH_STRING`).
    pub auth: PrefectAuth,
    /// The work pools to serve; empty: every pool whose type has a provider here.
    pub pools: Vec<String>,
    /// `PREFECT_API_URL` as the jobs should see it (default: `api_url`).
    pub job_api_url: Option<String>,
    /// How far ahead runs are read, so the controller sleeps until the next one is due.
    pub lookahead: Duration,
    /// How often the controller asks for new due runs when none is known to be coming.
    pub poll: Duration,
    /// How long before its scheduled time a run is claimed and its job prepared (it is
    /// submitted at the scheduled time).
    pub early: Duration,
    /// A new controller claims nothing this long after it starts, so its peers (which list the
    /// live controllers every 2 s) know it before it takes its share of the runs.
    pub start_grace: Duration,
    /// A run left PENDING by a controller whose heartbeat is this old is adopted.
    pub orphan_after: Duration,
}

impl PrefectSettings {
    /// Settings for the API at `api_url` with the defaults (look-ahead 10 s, poll 250 ms, claims 2 s
    /// early, a start grace of 3 s, orphans after 30 s).
    pub fn new(api_url: impl Into<String>, auth: PrefectAuth) -> Self {
        PrefectSettings {
            api_url: api_url.into(),
            auth,
            pools: Vec::new(),
            job_api_url: None,
            lookahead: Duration::from_secs(10),
            poll: Duration::from_millis(250),
            early: Duration::from_secs(2),
            start_grace: Duration::from_secs(3),
            orphan_after: Duration::from_secs(30),
        }
    }
}
