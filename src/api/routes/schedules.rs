//! Deployment schedules: add, list, read, change (pause, resume), delete; the next slot times of
//! a deployment; backfill of a past range. The scheduler ([`crate::scheduler`]) makes the runs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::super::table::{handler, ws, Route};
use super::super::validate::{check_document_size, double_option};
use super::super::views::secret_variables;
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, Query,
};
use super::pools::prefix_field;
use crate::access::Scope;
use crate::job;
use crate::model::{Deployment, WorkPool};
use crate::redact;
use crate::schedule::{Catchup, Kind, Recurrence, Schedule};
use crate::store::{NewSchedule, SchedulePatch};

/// Longest schedule spec accepted, in bytes.
const MAX_SPEC: usize = 1000;
/// Most slots one backfill creates per schedule.
pub const BACKFILL_LIMIT: usize = 10_000;

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(
        ws!("/deployments/{id_or_name}/schedules"),
        handler!(create_schedule),
    )
    .summary("Add a schedule to a deployment")
    .access(Access::Workspace(Scope::DeploymentsWrite))
    .audit("schedule.create", Always)
    .body::<ScheduleInput>()
    .created::<Schedule>(),
    Route::get(
        ws!("/deployments/{id_or_name}/schedules"),
        handler!(list_schedules),
    )
    .summary("List a deployment's schedules")
    .access(Access::Workspace(Scope::DeploymentsRead))
    .audit("schedule.list", DeniedOnly)
    .ok::<Vec<Schedule>>(),
    Route::get(
        ws!("/deployments/{id_or_name}/schedules/{schedule_id}"),
        handler!(get_schedule),
    )
    .summary("Get a schedule")
    .access(Access::Workspace(Scope::DeploymentsRead))
    .audit("schedule.read", DeniedOnly)
    .ok::<Schedule>(),
    Route::patch(
        ws!("/deployments/{id_or_name}/schedules/{schedule_id}"),
        handler!(update_schedule),
    )
    .summary(
        "Change, pause or resume a schedule (its future runs that have not started are made anew)",
    )
    .access(Access::Workspace(Scope::DeploymentsWrite))
    .audit("schedule.update", Always)
    .body::<SchedulePatchInput>()
    .ok::<Schedule>(),
    Route::delete(
        ws!("/deployments/{id_or_name}/schedules/{schedule_id}"),
        handler!(delete_schedule),
    )
    .summary("Delete a schedule and its future runs that have not started")
    .access(Access::Workspace(Scope::DeploymentsWrite))
    .audit("schedule.delete", Always)
    .no_content(),
    Route::get(
        ws!("/deployments/{id_or_name}/upcoming"),
        handler!(upcoming),
    )
    .summary("The next slot times of a deployment's active schedules")
    .access(Access::Workspace(Scope::DeploymentsRead))
    .audit("deployment.upcoming", DeniedOnly)
    .query::<UpcomingQuery>()
    .ok::<Vec<UpcomingSlot>>(),
    Route::post(
        ws!("/deployments/{id_or_name}/backfill"),
        handler!(backfill),
    )
    .summary("Create the runs of a past range's slots (idempotent with the scheduler's)")
    .access(Access::Workspace(Scope::RunsCreate))
    .audit("deployment.backfill", Always)
    .body::<BackfillRequest>()
    .ok::<BackfillResult>(),
];

/// An interval: whole seconds, or an ISO 8601 duration such as `PT1H`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntervalInput {
    /// Seconds.
    Seconds(i64),
    /// ISO 8601 duration (weeks, days, hours, minutes, seconds).
    Duration(String),
}

impl IntervalInput {
    fn text(&self) -> String {
        match self {
            IntervalInput::Seconds(n) => n.to_string(),
            IntervalInput::Duration(s) => s.clone(),
        }
    }
}

/// A schedule: exactly one of `cron`, `interval`, `rrule`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// 5-field cron expression or macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    #[serde(default)]
    cron: Option<String>,
    /// Seconds or an ISO 8601 duration; exact in UTC, counted from `anchor`.
    #[serde(default)]
    interval: Option<IntervalInput>,
    /// RFC 5545 RRULE, optionally after a `DTSTART:YYYYMMDDTHHMMSS` line (wall time in
    /// `timezone`).
    #[serde(default)]
    rrule: Option<String>,
    /// IANA time zone (default `UTC`).
    #[serde(default)]
    timezone: Option<String>,
    /// Where intervals count from and the default RRULE start (default: midnight of today in
    /// the zone).
    #[serde(default)]
    anchor: Option<DateTime<Utc>>,
    /// Create runs (default true).
    #[serde(default)]
    active: Option<bool>,
    /// Parameters merged over the deployment's.
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Job-variable overrides of this schedule's runs.
    #[serde(default)]
    job_variables: Map<String, Value>,
    /// At most this many of this schedule's runs active at once (1 or more).
    #[serde(default)]
    max_active_runs: Option<i64>,
    /// Slots missed while no scheduler ran: `none` (default), `latest`, `all` (bounded).
    #[serde(default)]
    catchup: Option<Catchup>,
}

/// Changes to a schedule; absent fields stay. At most one of `cron`, `interval`, `rrule`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatchInput {
    /// New cron expression.
    #[serde(default)]
    cron: Option<String>,
    /// New interval.
    #[serde(default)]
    interval: Option<IntervalInput>,
    /// New RRULE.
    #[serde(default)]
    rrule: Option<String>,
    /// New time zone.
    #[serde(default)]
    timezone: Option<String>,
    /// New anchor.
    #[serde(default)]
    anchor: Option<DateTime<Utc>>,
    /// `false` pauses, `true` resumes (from now: slots missed while paused are skipped).
    #[serde(default)]
    active: Option<bool>,
    /// New parameter overrides.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// New job-variable overrides.
    #[serde(default)]
    job_variables: Option<Map<String, Value>>,
    /// New limit; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    max_active_runs: Option<Option<i64>>,
    /// New missed-slot policy.
    #[serde(default)]
    catchup: Option<Catchup>,
}

/// Query of the upcoming slots.
#[derive(Deserialize, JsonSchema)]
pub struct UpcomingQuery {
    /// How many slot times (1–1000, default 10).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
    /// Only this schedule's.
    schedule: Option<Uuid>,
}

/// One upcoming slot.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UpcomingSlot {
    /// The schedule it belongs to.
    pub schedule_id: Uuid,
    /// When its run is due.
    pub scheduled_time: DateTime<Utc>,
}

/// A past range to create the runs of.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Start of the range (inclusive).
    from: DateTime<Utc>,
    /// End of the range (inclusive).
    to: DateTime<Utc>,
    /// Only this schedule (default: every schedule of the deployment, active or not).
    #[serde(default)]
    schedule_id: Option<Uuid>,
}

/// What a backfill did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackfillResult {
    /// Slots in the range.
    pub slots: usize,
    /// Runs created (the other slots already had theirs).
    pub created: u64,
}

/// Picks the one spec of a schedule; `prefix` is the field path before it (`schedules[0].`).
fn one_spec(
    cron: &Option<String>,
    interval: &Option<IntervalInput>,
    rrule: &Option<String>,
    prefix: &str,
) -> ApiResult<Option<(Kind, String)>> {
    let given: Vec<(Kind, String)> = [
        cron.clone().map(|c| (Kind::Cron, c)),
        interval.as_ref().map(|i| (Kind::Interval, i.text())),
        rrule.clone().map(|r| (Kind::Rrule, r)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(ApiError::unprocessable(
            &format!("{prefix}{}", given[1].0.as_str()),
            "give exactly one of cron, interval, rrule",
        ));
    }
    if let Some((kind, spec)) = given.first() {
        if spec.len() > MAX_SPEC || spec.contains('\0') {
            return Err(ApiError::unprocessable(
                &format!("{prefix}{}", kind.as_str()),
                format!("must be at most {MAX_SPEC} bytes, without NUL characters"),
            ));
        }
    }
    Ok(given.into_iter().next())
}

/// Checks a spec as the store will, answering 422 at `prefix` + the field.
fn check_spec(
    kind: Kind,
    spec: &str,
    timezone: &str,
    anchor: Option<DateTime<Utc>>,
    prefix: &str,
) -> ApiResult<()> {
    Recurrence::new(kind, spec, timezone, anchor.unwrap_or_else(Utc::now))
        .and_then(|r| r.check_usable(Utc::now()))
        .map_err(|e| ApiError::unprocessable(&format!("{prefix}{}", e.field), e.message))
}

/// Checks a schedule's job variables against the pool's template (as deployment overrides).
async fn check_variables(
    pool: &WorkPool,
    vars: Map<String, Value>,
    field: String,
) -> ApiResult<Map<String, Value>> {
    check_document_size(&field, &vars)?;
    if vars.is_empty() {
        return Ok(vars);
    }
    let pool = pool.clone();
    let (checked, vars) = job::bounded(move || {
        let checked = job::parse_template(&pool).map(|template| {
            template
                .validate_deployment_overrides(&vars)
                .map_err(|e| prefix_field(e, &field))
        });
        (checked, vars)
    })
    .await
    .map_err(|over| ApiError::from(job::JobError::from(over)))?;
    checked??;
    Ok(vars)
}

/// A checked new schedule from its input; `prefix` names it in errors (`schedules[0].` when it
/// comes with a deployment, empty on its own route).
pub(crate) async fn new_schedule(
    pool: &WorkPool,
    input: ScheduleInput,
    prefix: &str,
) -> ApiResult<NewSchedule> {
    let (kind, spec) =
        one_spec(&input.cron, &input.interval, &input.rrule, prefix)?.ok_or_else(|| {
            ApiError::unprocessable(
                &format!("{prefix}cron"),
                "a schedule needs one of cron, interval, rrule",
            )
        })?;
    let timezone = input.timezone.clone().unwrap_or_else(|| "UTC".into());
    check_spec(kind, &spec, &timezone, input.anchor, prefix)?;
    if let Some(n) = input.max_active_runs {
        if n < 1 {
            return Err(ApiError::unprocessable(
                &format!("{prefix}max_active_runs"),
                "must be 1 or more (null for no limit)",
            ));
        }
    }
    check_document_size(&format!("{prefix}parameters"), &input.parameters)?;
    let job_variables =
        check_variables(pool, input.job_variables, format!("{prefix}job_variables")).await?;
    Ok(NewSchedule {
        kind,
        spec,
        timezone: Some(timezone),
        anchor: input.anchor,
        active: input.active.unwrap_or(true),
        parameters: input.parameters,
        job_variables,
        max_active_runs: input.max_active_runs,
        catchup: input.catchup.unwrap_or_default(),
    })
}

/// A schedule as the API shows it: secret job variables and parameters masked.
pub(crate) fn schedule_out(s: &Schedule, secret_vars: &[String]) -> Schedule {
    let mut out = s.clone();
    redact::mask_map(&mut out.job_variables, secret_vars);
    redact::mask_map(&mut out.parameters, &[]);
    out
}

async fn deployment_and_pool(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(Deployment, WorkPool)> {
    let ws = caller.workspace()?;
    let d = state.store.deployment(ws.id, id).await?;
    let pool = state.store.pool_by_id(d.work_pool_id).await?;
    Ok((d, pool))
}

async fn create_schedule(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(input): Body<ScheduleInput>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let (d, pool) = deployment_and_pool(&state, &caller, &id).await?;
    let new = new_schedule(&pool, input, "").await?;
    let s = state.store.create_schedule(&d, new).await?;
    note.target("schedule", s.id);
    note.detail(
        json!({"deployment": d.name, "kind": s.kind, "spec": s.spec, "timezone": s.timezone}),
    );
    Ok((
        StatusCode::CREATED,
        Json(schedule_out(&s, &secret_variables(&pool))),
    ))
}

async fn list_schedules(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Vec<Schedule>>> {
    let (d, pool) = deployment_and_pool(&state, &caller, &id).await?;
    let secrets = secret_variables(&pool);
    let list = state.store.schedules_of(d.id).await?;
    Ok(Json(
        list.iter().map(|s| schedule_out(s, &secrets)).collect(),
    ))
}

async fn get_schedule(
    State(state): State<AppState>,
    Path((_ws, id, schedule_id)): Path<(String, String, String)>,
    caller: Caller,
) -> ApiResult<Json<Schedule>> {
    let (d, pool) = deployment_and_pool(&state, &caller, &id).await?;
    let s = state.store.schedule(&d, &schedule_id).await?;
    Ok(Json(schedule_out(&s, &secret_variables(&pool))))
}

async fn update_schedule(
    State(state): State<AppState>,
    Path((_ws, id, schedule_id)): Path<(String, String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(mut input): Body<SchedulePatchInput>,
) -> ApiResult<Json<Schedule>> {
    let (d, pool) = deployment_and_pool(&state, &caller, &id).await?;
    let current = state.store.schedule(&d, &schedule_id).await?;
    let spec = one_spec(&input.cron, &input.interval, &input.rrule, "")?;
    let timezone = input.timezone.clone().unwrap_or(current.timezone.clone());
    let (kind, text) = match &spec {
        Some((k, s)) => (*k, s.clone()),
        None => (
            current
                .kind()
                .map_err(|e| ApiError::unprocessable(e.field, e.message))?,
            current.spec.clone(),
        ),
    };
    check_spec(
        kind,
        &text,
        &timezone,
        Some(input.anchor.unwrap_or(current.anchor)),
        "",
    )?;
    if let Some(Some(n)) = input.max_active_runs {
        if n < 1 {
            return Err(ApiError::unprocessable(
                "max_active_runs",
                "must be 1 or more (null for no limit)",
            ));
        }
    }
    // Masked secrets read from the API and written back keep their values.
    let mut restored = vec![];
    if let Some(vars) = input.job_variables.as_mut() {
        redact::restore_map_collecting(vars, &current.job_variables, &mut restored);
    }
    if let Some(params) = input.parameters.as_mut() {
        check_document_size("parameters", params)?;
        redact::restore_map_collecting(params, &current.parameters, &mut restored);
    }
    let job_variables = match input.job_variables.take() {
        Some(vars) => Some(
            check_variables(&pool, vars, "job_variables".into())
                .await
                .map_err(|e| e.scrubbed(&restored))?,
        ),
        None => None,
    };
    let patch = SchedulePatch {
        spec,
        timezone: input.timezone,
        anchor: input.anchor,
        active: input.active,
        parameters: input.parameters,
        job_variables,
        max_active_runs: input.max_active_runs,
        catchup: input.catchup,
    };
    let s = state.store.update_schedule(&d, &schedule_id, patch).await?;
    note.target("schedule", s.id);
    note.detail(json!({"deployment": d.name, "active": s.active, "kind": s.kind, "spec": s.spec}));
    Ok(Json(schedule_out(&s, &secret_variables(&pool))))
}

async fn delete_schedule(
    State(state): State<AppState>,
    Path((_ws, id, schedule_id)): Path<(String, String, String)>,
    caller: Caller,
    note: AuditNote,
) -> ApiResult<StatusCode> {
    let (d, _) = deployment_and_pool(&state, &caller, &id).await?;
    state.store.delete_schedule(&d, &schedule_id).await?;
    note.target("schedule", &schedule_id);
    note.detail(json!({"deployment": d.name}));
    Ok(StatusCode::NO_CONTENT)
}

async fn upcoming(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    Query(q): Query<UpcomingQuery>,
) -> ApiResult<Json<Vec<UpcomingSlot>>> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable("limit", "must be 1–1000"));
    }
    let (d, _) = deployment_and_pool(&state, &caller, &id).await?;
    let now = Utc::now();
    let mut out = vec![];
    for s in state.store.schedules_of(d.id).await? {
        if !s.active || q.schedule.is_some_and(|only| only != s.id) {
            continue;
        }
        let Ok(rec) = s.recurrence() else { continue };
        out.extend(
            rec.next_n(now, limit as usize)
                .into_iter()
                .map(|slot| UpcomingSlot {
                    schedule_id: s.id,
                    scheduled_time: slot.at,
                }),
        );
    }
    out.sort_by_key(|u| (u.scheduled_time, u.schedule_id));
    out.truncate(limit as usize);
    Ok(Json(out))
}

async fn backfill(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    Body(request): Body<BackfillRequest>,
) -> ApiResult<Json<BackfillResult>> {
    if request.to < request.from {
        return Err(ApiError::unprocessable("to", "must not be before `from`"));
    }
    let (d, _) = deployment_and_pool(&state, &caller, &id).await?;
    let schedules = match request.schedule_id {
        Some(sid) => vec![state.store.schedule(&d, &sid.to_string()).await?],
        None => state.store.schedules_of(d.id).await?,
    };
    let (slots, created) = crate::scheduler::backfill(
        &state.store,
        &d,
        &schedules,
        request.from,
        request.to,
        BACKFILL_LIMIT,
    )
    .await?;
    note.target("deployment", &d.name);
    note.detail(
        json!({"from": request.from, "to": request.to, "slots": slots, "created": created}),
    );
    Ok(Json(BackfillResult { slots, created }))
}
