//! `pushpool deployment schedule …`, `deployment upcoming`, `deployment backfill`, and the
//! schedule flags of `deployment create` (docs/schedules.md).

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::api::{Api, CliError};
use super::input;
use super::output::{columns_table, emit, field, key_values, time_field, Column};
use super::{get_and_show, send_and_show, show, OutputFormat};

/// The schedule of `deployment create` or `schedule add`: one of `--cron`, `--interval`,
/// `--rrule`, with its options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScheduleFlags {
    /// Cron expression (5 fields, or @hourly, @daily, @weekly, @monthly, @yearly).
    #[arg(long, value_name = "EXPR", group = "schedule_spec")]
    pub cron: Option<String>,
    /// Interval: seconds or an ISO 8601 duration such as PT1H (exact in UTC).
    #[arg(long, value_name = "SECS|DURATION", group = "schedule_spec")]
    pub interval: Option<String>,
    /// RFC 5545 RRULE, e.g. "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0;BYSECOND=0".
    #[arg(long, value_name = "RULE", group = "schedule_spec")]
    pub rrule: Option<String>,
    /// IANA time zone of the schedule's wall times (default UTC).
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// Where an interval counts from (RFC 3339); the default RRULE start.
    #[arg(long, value_name = "RFC3339")]
    pub anchor: Option<String>,
    /// Slots missed while no scheduler ran: none (default), latest, all.
    #[arg(long, value_name = "POLICY", value_parser = ["none", "latest", "all"])]
    pub catchup: Option<String>,
    /// At most this many of the schedule's runs active at once.
    #[arg(long, value_name = "N")]
    pub max_active_runs: Option<u32>,
}

impl ScheduleFlags {
    /// The schedule's JSON body, or `None` when no spec flag was given.
    pub fn body(&self) -> Result<Option<Map<String, Value>>, CliError> {
        let mut body = Map::new();
        if let Some(c) = &self.cron {
            body.insert("cron".into(), json!(c));
        } else if let Some(i) = &self.interval {
            match i.trim().parse::<i64>() {
                Ok(n) => body.insert("interval".into(), json!(n)),
                Err(_) => body.insert("interval".into(), json!(i)),
            };
        } else if let Some(r) = &self.rrule {
            body.insert("rrule".into(), json!(r.replace("\\n", "\n")));
        } else {
            if self.timezone.is_some() || self.anchor.is_some() || self.catchup.is_some() {
                return Err(CliError::Usage(
                    "--timezone, --anchor and --catchup need one of --cron, --interval, --rrule"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if let Some(tz) = &self.timezone {
            body.insert("timezone".into(), json!(tz));
        }
        if let Some(a) = &self.anchor {
            body.insert("anchor".into(), json!(input::parse_time("--anchor", a)?));
        }
        if let Some(c) = &self.catchup {
            body.insert("catchup".into(), json!(c));
        }
        if let Some(n) = self.max_active_runs {
            body.insert("max_active_runs".into(), json!(n));
        }
        Ok(Some(body))
    }
}

/// `pushpool deployment schedule …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ScheduleCommand {
    /// Add a schedule to a deployment.
    Add {
        /// Deployment name or id.
        name: String,
        #[command(flatten)]
        flags: Box<ScheduleFlags>,
        /// Flow parameter of this schedule's runs. Repeatable.
        #[arg(long = "param", value_name = "KEY=JSON")]
        params: Vec<String>,
        /// Job variable override of this schedule's runs. Repeatable.
        #[arg(long = "var", value_name = "KEY=JSON")]
        vars: Vec<String>,
        /// Add it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List a deployment's schedules.
    #[command(visible_alias = "list")]
    Ls {
        /// Deployment name or id.
        name: String,
    },
    /// Pause a schedule (its future runs that have not started are removed).
    Pause {
        /// Deployment name or id.
        name: String,
        /// Schedule id.
        id: String,
    },
    /// Resume a schedule (from now on: slots missed while paused are skipped).
    Resume {
        /// Deployment name or id.
        name: String,
        /// Schedule id.
        id: String,
    },
    /// Delete a schedule and its future runs that have not started.
    Delete {
        /// Deployment name or id.
        name: String,
        /// Schedule id.
        id: String,
    },
}

/// Runs a `deployment schedule` command.
pub(super) async fn schedule(
    api: &Api,
    out: OutputFormat,
    command: ScheduleCommand,
) -> Result<(), CliError> {
    match command {
        ScheduleCommand::Add {
            name,
            flags,
            params,
            vars,
            paused,
        } => {
            let mut body = flags
                .body()?
                .ok_or_else(|| CliError::Usage("give one of --cron, --interval, --rrule".into()))?;
            let parameters = input::parse_assignments("--param", &params)?;
            if !parameters.is_empty() {
                body.insert("parameters".into(), Value::Object(parameters));
            }
            let job_variables = input::parse_assignments("--var", &vars)?;
            if !job_variables.is_empty() {
                body.insert("job_variables".into(), Value::Object(job_variables));
            }
            if paused {
                body.insert("active".into(), json!(false));
            }
            let url = api.ws_url(&["deployments", &name, "schedules"]);
            send_and_show(
                api,
                out,
                Method::POST,
                url,
                Some(&Value::Object(body)),
                schedule_details,
            )
            .await?;
        }
        ScheduleCommand::Ls { name } => {
            let url = api.ws_url(&["deployments", &name, "schedules"]);
            get_and_show(api, out, url, |v| columns_table(v, SCHEDULE_COLUMNS)).await?;
        }
        ScheduleCommand::Pause { name, id } => set_active(api, out, &name, &id, false).await?,
        ScheduleCommand::Resume { name, id } => set_active(api, out, &name, &id, true).await?,
        ScheduleCommand::Delete { name, id } => {
            api.send(
                Method::DELETE,
                api.ws_url(&["deployments", &name, "schedules", &id]),
                None,
            )
            .await?;
            if out == OutputFormat::Table {
                emit(&format!("deleted schedule {id} of {name}"));
            }
        }
    }
    Ok(())
}

async fn set_active(
    api: &Api,
    out: OutputFormat,
    name: &str,
    id: &str,
    active: bool,
) -> Result<(), CliError> {
    let url = api.ws_url(&["deployments", name, "schedules", id]);
    let body = json!({ "active": active });
    send_and_show(api, out, Method::PATCH, url, Some(&body), schedule_details).await?;
    Ok(())
}

/// `deployment upcoming NAME`: the next slot times.
pub(super) async fn upcoming(
    api: &Api,
    out: OutputFormat,
    name: &str,
    limit: u32,
) -> Result<(), CliError> {
    let mut url = api.ws_url(&["deployments", name, "upcoming"]);
    url.query_pairs_mut()
        .append_pair("limit", &limit.to_string());
    get_and_show(api, out, url, |v| {
        columns_table(
            v,
            &[
                Column::time("SCHEDULED", "scheduled_time"),
                Column::field("SCHEDULE", "schedule_id"),
            ],
        )
    })
    .await?;
    Ok(())
}

/// `deployment backfill NAME --from T --to T [--schedule ID]`.
pub(super) async fn backfill(
    api: &Api,
    out: OutputFormat,
    name: &str,
    from: &str,
    to: &str,
    schedule: Option<String>,
) -> Result<(), CliError> {
    let mut body = json!({
        "from": input::parse_time("--from", from)?,
        "to": input::parse_time("--to", to)?,
    });
    if let Some(s) = schedule {
        body["schedule_id"] = json!(s);
    }
    let url = api.ws_url(&["deployments", name, "backfill"]);
    send_and_show(api, out, Method::POST, url, Some(&body), |v| {
        format!(
            "{} slots in range, {} runs created (the others existed already)",
            field(v, "slots"),
            field(v, "created")
        )
    })
    .await?;
    Ok(())
}

/// `deployment inspect`: the deployment with its schedules (JSON: a `schedules` key).
pub(super) async fn inspect(
    api: &Api,
    out: OutputFormat,
    name: &str,
    details: impl FnOnce(&Value) -> String,
) -> Result<(), CliError> {
    let mut deployment = api.get(api.ws_url(&["deployments", name])).await?;
    let schedules = api
        .get(api.ws_url(&["deployments", name, "schedules"]))
        .await?;
    let table = format!(
        "{}\n\nschedules:\n{}",
        details(&deployment),
        columns_table(&schedules, SCHEDULE_COLUMNS)
    );
    if let Some(obj) = deployment.as_object_mut() {
        obj.insert("schedules".into(), schedules);
    }
    show(out, &deployment, |_| table);
    Ok(())
}

/// The columns of `schedule ls`.
const SCHEDULE_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("KIND", "kind"),
    Column::field("SPEC", "spec"),
    Column::field("TIMEZONE", "timezone"),
    Column::field("ACTIVE", "active"),
    Column::field("CATCHUP", "catchup"),
    Column::field("MAX_ACTIVE", "max_active_runs"),
];

fn schedule_details(s: &Value) -> String {
    key_values(&[
        ("id", field(s, "id")),
        ("kind", field(s, "kind")),
        ("spec", field(s, "spec")),
        ("timezone", field(s, "timezone")),
        ("anchor", time_field(s, "anchor")),
        ("active", field(s, "active")),
        ("catchup", field(s, "catchup")),
        ("max_active_runs", field(s, "max_active_runs")),
        ("parameters", field(s, "parameters")),
        ("job_variables", field(s, "job_variables")),
    ])
}
