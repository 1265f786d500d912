//! Notification channels (webhook, Slack, email) of a workspace: create, list, read, test,
//! delete; and the deliveries of the outbox. Secrets are masked in every answer; a webhook's
//! generated signing secret is shown once, in the answer that creates it. See
//! docs/notifications.md.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::table::{handler, ws, Reply, Route};
use super::super::validate::{check_name, check_text};
use super::super::{
    Access, ApiError, ApiResult, AppState, AuditNote,
    AuditPolicy::{Always, DeniedOnly},
    Body, Caller, Json, OptionalBody, Query,
};
use crate::access::Scope;
use crate::notify::{self, ChannelKind, Notification, NotifyError, TargetError, MAX_RETRY_FOR};
use crate::redact::MASK;
use crate::store::{Delivery, NewChannel, StoredChannel};

/// The routes of this file.
pub const ROUTES: &[Route] = &[
    Route::post(ws!("/notification_channels"), handler!(create_channel))
        .summary("Create a notification channel (webhook, Slack or email)")
        .access(Access::Workspace(Scope::NotificationsWrite))
        .audit("notification_channel.create", Always)
        .body::<ChannelInput>()
        .created::<ChannelOut>()
        .errors(&[409]),
    Route::get(ws!("/notification_channels"), handler!(list_channels))
        .summary("List the workspace's notification channels (secrets masked)")
        .access(Access::Workspace(Scope::NotificationsRead))
        .audit("notification_channel.list", DeniedOnly)
        .ok::<Vec<ChannelOut>>(),
    Route::get(
        ws!("/notification_channels/{id_or_name}"),
        handler!(get_channel),
    )
    .summary("Get a notification channel (secrets masked)")
    .access(Access::Workspace(Scope::NotificationsRead))
    .audit("notification_channel.read", DeniedOnly)
    .ok::<ChannelOut>(),
    Route::delete(
        ws!("/notification_channels/{id_or_name}"),
        handler!(delete_channel),
    )
    .summary("Delete a notification channel")
    .access(Access::Workspace(Scope::NotificationsWrite))
    .audit("notification_channel.delete", Always)
    .no_content(),
    Route::post(
        ws!("/notification_channels/{id_or_name}/test"),
        handler!(test_channel),
    )
    .summary("Send a test notification through a channel (through the outbox)")
    .access(Access::Workspace(Scope::NotificationsWrite))
    .audit("notification_channel.test", Always)
    .optional_body::<TestInput>()
    .reply(Reply::json::<DeliveryOut>(202, "Enqueued")),
    Route::get(ws!("/notification_deliveries"), handler!(list_deliveries))
        .summary("The workspace's newest notification deliveries and their outcomes")
        .access(Access::Workspace(Scope::NotificationsRead))
        .audit("notification_delivery.list", DeniedOnly)
        .query::<DeliveriesQuery>()
        .ok::<Vec<DeliveryOut>>(),
    Route::get(ws!("/notification_deliveries/{id}"), handler!(get_delivery))
        .summary("One notification delivery and its outcome")
        .access(Access::Workspace(Scope::NotificationsRead))
        .audit("notification_delivery.read", DeniedOnly)
        .ok::<DeliveryOut>(),
];

/// Most custom headers of a webhook channel.
const MAX_HEADERS: usize = 20;
/// Most recipients of an email channel.
const MAX_RECIPIENTS: usize = 20;

/// SMTP transport security.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required; default, port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS (only for a relay on a trusted network; credentials travel in the clear).
    None,
}

impl SmtpTls {
    fn as_str(self) -> &'static str {
        match self {
            SmtpTls::Starttls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }
}

/// An email channel's SMTP settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpInput {
    /// SMTP server host name.
    pub host: String,
    /// Port (default 587 for STARTTLS and none, 465 for TLS).
    #[serde(default)]
    pub port: Option<u16>,
    /// Transport security (default `starttls`).
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    /// Login user.
    #[serde(default)]
    pub username: Option<String>,
    /// Login password (stored encrypted, never shown).
    #[serde(default)]
    pub password: Option<String>,
    /// Sender address, e.g. `pushpool <alerts@example.com>`.
    pub from: String,
    /// Recipients (1–20).
    pub to: Vec<String>,
}

/// A channel to create. `url` for `webhook` and `slack`; `secret` and `headers` for
/// `webhook`; `smtp` for `email`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    /// Name, unique in the workspace.
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: ChannelKind,
    /// The webhook or Slack incoming-webhook URL (http or https).
    #[serde(default)]
    pub url: Option<String>,
    /// The webhook's HMAC-SHA256 signing secret (16+ characters; generated and shown once when
    /// absent).
    #[serde(default)]
    pub secret: Option<String>,
    /// Extra HTTP headers of the webhook (stored encrypted, shown masked).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// The email channel's SMTP settings.
    #[serde(default)]
    pub smtp: Option<SmtpInput>,
    /// Subject template over the payload plus `subject` and `body` (default: the
    /// notification's subject).
    #[serde(default)]
    pub subject_template: Option<String>,
    /// Body template (default: the notification's body).
    #[serde(default)]
    pub body_template: Option<String>,
    /// How long a failing delivery is retried, in seconds (1–259200, default 3600).
    #[serde(default)]
    pub retry_for_seconds: Option<u64>,
}

/// A channel as the API shows it: secrets masked.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ChannelOut {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Target URL (a Slack URL, itself a credential, is masked but for its host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The signing secret: masked, except in the answer that generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Extra headers, values masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// SMTP settings, password masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<Value>,
    /// Subject template.
    pub subject_template: Option<String>,
    /// Body template.
    pub body_template: Option<String>,
    /// Retry window in seconds.
    pub retry_for_seconds: u64,
    /// Created.
    pub created: DateTime<Utc>,
    /// Last changed.
    pub updated: DateTime<Utc>,
}

/// A test notification (defaults name the channel).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// Subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Body.
    #[serde(default)]
    pub body: Option<String>,
}

/// Query of the deliveries list.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeliveriesQuery {
    /// How many (1–500, default 100).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<i64>,
}

/// A delivery as the API shows it (no headers, no body).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeliveryOut {
    /// Id (the `X-Pushpool-Delivery` header receivers see).
    pub id: Uuid,
    /// The channel, when it went to one.
    pub channel_id: Option<Uuid>,
    /// `webhook`, `slack`, `email` or `webhook_action`.
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The rendered subject (channel deliveries).
    pub subject: Option<String>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it is next tried (pending).
    pub next_attempt: DateTime<Utc>,
    /// When retrying stops.
    pub deadline: DateTime<Utc>,
    /// Enqueued.
    pub created: DateTime<Utc>,
    /// Delivered or given up.
    pub finished: Option<DateTime<Utc>>,
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Store(e) => e.into(),
            NotifyError::Target(e) => ApiError::unprocessable("url", e.to_string()),
            NotifyError::Header { name, rule } => {
                ApiError::unprocessable(&format!("headers.{name}"), rule)
            }
        }
    }
}

pub(crate) fn delivery_out(d: &Delivery) -> DeliveryOut {
    DeliveryOut {
        id: d.id,
        channel_id: d.channel_id,
        kind: d.kind.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        subject: d.request["subject"].as_str().map(str::to_string),
        last_error: d.last_error.clone(),
        next_attempt: d.next_attempt,
        deadline: d.deadline,
        created: d.created,
        finished: d.finished,
    }
}

/// `scheme://host/**********`: a URL that is itself a credential, shown without it.
fn masked_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}/{MASK}",
            u.scheme(),
            u.host_str().unwrap_or_default()
        ),
        Err(_) => MASK.to_string(),
    }
}

fn channel_out(c: &StoredChannel, new_secret: Option<String>) -> ChannelOut {
    let cfg = &c.config;
    let url = cfg["url"].as_str().map(|u| match c.kind.as_str() {
        "slack" => masked_url(u),
        _ => u.to_string(),
    });
    let headers = cfg["headers"].as_object().map(|h| {
        h.keys()
            .map(|k| (k.clone(), MASK.to_string()))
            .collect::<BTreeMap<_, _>>()
    });
    let smtp = cfg.get("smtp").filter(|s| s.is_object()).map(|s| {
        let mut s = s.clone();
        if !s["password"].is_null() {
            s["password"] = json!(MASK);
        }
        s
    });
    ChannelOut {
        id: c.id,
        name: c.name.clone(),
        kind: c.kind.clone(),
        url,
        secret: new_secret.or_else(|| cfg.get("secret").map(|_| MASK.to_string())),
        headers,
        smtp,
        subject_template: c.subject_template.clone(),
        body_template: c.body_template.clone(),
        retry_for_seconds: notify::retry_for(c).as_secs(),
        created: c.created,
        updated: c.updated,
    }
}

/// Refuses a host that is (or resolves to) an internal address unless the instance allows
/// it; a host that does not resolve now is accepted (the worker checks again on delivery).
async fn check_target(state: &AppState, field: &str, host: &str, port: u16) -> ApiResult<()> {
    let resolved = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        state.target_policy.resolve(host, port),
    )
    .await;
    match resolved {
        Ok(Err(e @ TargetError::Private { .. })) => {
            Err(ApiError::unprocessable(field, e.to_string()))
        }
        _ => Ok(()),
    }
}

async fn check_url(state: &AppState, url: Option<&str>, kind: ChannelKind) -> ApiResult<String> {
    let url = url.ok_or_else(|| {
        ApiError::unprocessable("url", format!("a {} channel needs a url", kind.as_str()))
    })?;
    if url.len() > 2000 {
        return Err(ApiError::unprocessable("url", "at most 2000 characters"));
    }
    let parsed = notify::ssrf::parse_http_url(url)
        .map_err(|e| ApiError::unprocessable("url", e.to_string()))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    check_target(state, "url", &host, port).await?;
    Ok(url.to_string())
}

fn refuse_for(kind: ChannelKind, field: &str, given: bool) -> ApiResult<()> {
    if given {
        return Err(ApiError::unprocessable(
            field,
            format!("not used by a {} channel", kind.as_str()),
        ));
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> ApiResult<()> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::unprocessable(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for name in headers.keys() {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-pushpool-")
            || [
                "host",
                "content-type",
                "content-length",
                "transfer-encoding",
                "connection",
            ]
            .contains(&lower.as_str())
        {
            return Err(ApiError::unprocessable(
                &format!("headers.{name}"),
                "is set by pushpool itself",
            ));
        }
    }
    notify::check_webhook("http://x/", headers)?;
    Ok(())
}

async fn check_smtp(state: &AppState, smtp: &SmtpInput) -> ApiResult<Value> {
    use lettre::message::Mailbox;
    let host = smtp.host.trim();
    if host.is_empty() || host.len() > 253 || host.contains(['/', ' ', '@']) {
        return Err(ApiError::unprocessable(
            "smtp.host",
            "must be a host name or address",
        ));
    }
    let tls = smtp.tls.unwrap_or_default();
    let port = smtp
        .port
        .unwrap_or(if tls == SmtpTls::Tls { 465 } else { 587 });
    if port == 0 {
        return Err(ApiError::unprocessable("smtp.port", "must be 1–65535"));
    }
    if smtp.password.is_some() && smtp.username.is_none() {
        return Err(ApiError::unprocessable(
            "smtp.password",
            "a password needs a username",
        ));
    }
    check_text("smtp.username", smtp.username.as_deref(), 200)?;
    check_text("smtp.password", smtp.password.as_deref(), 500)?;
    smtp.from
        .parse::<Mailbox>()
        .map_err(|e| ApiError::unprocessable("smtp.from", format!("not an email address: {e}")))?;
    if smtp.to.is_empty() || smtp.to.len() > MAX_RECIPIENTS {
        return Err(ApiError::unprocessable(
            "smtp.to",
            format!("give 1–{MAX_RECIPIENTS} recipients"),
        ));
    }
    for (i, to) in smtp.to.iter().enumerate() {
        to.parse::<Mailbox>().map_err(|e| {
            ApiError::unprocessable(
                &format!("smtp.to[{i}]"),
                format!("not an email address: {e}"),
            )
        })?;
    }
    check_target(state, "smtp.host", host, port).await?;
    Ok(json!({
        "host": host,
        "port": port,
        "tls": tls.as_str(),
        "username": smtp.username,
        "password": smtp.password,
        "from": smtp.from,
        "to": smtp.to,
    }))
}

async fn create_channel(
    State(state): State<AppState>,
    caller: Caller,
    note: AuditNote,
    Body(input): Body<ChannelInput>,
) -> ApiResult<(StatusCode, Json<ChannelOut>)> {
    let ws = caller.workspace()?;
    check_name("name", &input.name)?;
    check_text("subject_template", input.subject_template.as_deref(), 4000)?;
    check_text("body_template", input.body_template.as_deref(), 4000)?;
    let kind = input.kind;
    let mut config = json!({});
    let mut secret_paths = vec![];
    let mut new_secret = None;
    if let Some(r) = input.retry_for_seconds {
        if r == 0 || r > MAX_RETRY_FOR.as_secs() {
            return Err(ApiError::unprocessable(
                "retry_for_seconds",
                format!("must be 1–{}", MAX_RETRY_FOR.as_secs()),
            ));
        }
        config["retry_for_seconds"] = json!(r);
    }
    match kind {
        ChannelKind::Webhook => {
            refuse_for(kind, "smtp", input.smtp.is_some())?;
            config["url"] = json!(check_url(&state, input.url.as_deref(), kind).await?);
            let secret = match input.secret {
                Some(s) if s.chars().count() < 16 || s.len() > 500 => {
                    return Err(ApiError::unprocessable(
                        "secret",
                        "must be 16–500 characters",
                    ))
                }
                Some(s) => s,
                None => {
                    let s = format!("whsec_{}", crate::auth::random_base62(32));
                    new_secret = Some(s.clone());
                    s
                }
            };
            config["secret"] = json!(secret);
            secret_paths.push("/secret".to_string());
            if let Some(h) = &input.headers {
                check_headers(h)?;
                config["headers"] = json!(h);
                secret_paths.push("/headers".to_string());
            }
        }
        ChannelKind::Slack => {
            refuse_for(kind, "smtp", input.smtp.is_some())?;
            refuse_for(kind, "secret", input.secret.is_some())?;
            refuse_for(kind, "headers", input.headers.is_some())?;
            config["url"] = json!(check_url(&state, input.url.as_deref(), kind).await?);
            secret_paths.push("/url".to_string());
        }
        ChannelKind::Email => {
            refuse_for(kind, "url", input.url.is_some())?;
            refuse_for(kind, "secret", input.secret.is_some())?;
            refuse_for(kind, "headers", input.headers.is_some())?;
            let smtp = input
                .smtp
                .as_ref()
                .ok_or_else(|| ApiError::unprocessable("smtp", "an email channel needs smtp"))?;
            config["smtp"] = check_smtp(&state, smtp).await?;
            secret_paths.push("/smtp/password".to_string());
        }
    }
    let channel = state
        .store
        .create_channel(
            ws.id,
            NewChannel {
                name: input.name.clone(),
                kind: kind.as_str().to_string(),
                config,
                secret_paths,
                subject_template: input.subject_template,
                body_template: input.body_template,
            },
        )
        .await?;
    note.target("notification_channel", channel.id);
    note.detail(json!({"name": channel.name, "kind": channel.kind}));
    Ok((StatusCode::CREATED, Json(channel_out(&channel, new_secret))))
}

async fn list_channels(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ChannelOut>>> {
    let ws = caller.workspace()?;
    let list = state.store.channels(ws.id).await?;
    Ok(Json(list.iter().map(|c| channel_out(c, None)).collect()))
}

async fn get_channel(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<ChannelOut>> {
    let ws = caller.workspace()?;
    let c = state.store.channel(ws.id, &id).await?;
    Ok(Json(channel_out(&c, None)))
}

async fn delete_channel(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
) -> ApiResult<StatusCode> {
    let ws = caller.workspace()?;
    let c = state.store.delete_channel(ws.id, &id).await?;
    note.target("notification_channel", c.id);
    note.detail(json!({"name": c.name}));
    Ok(StatusCode::NO_CONTENT)
}

async fn test_channel(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
    note: AuditNote,
    OptionalBody(input): OptionalBody<TestInput>,
) -> ApiResult<(StatusCode, Json<DeliveryOut>)> {
    let ws = caller.workspace()?;
    check_text("subject", input.subject.as_deref(), 1000)?;
    check_text("body", input.body.as_deref(), 4000)?;
    let c = state.store.channel(ws.id, &id).await?;
    let n = Notification {
        subject: input
            .subject
            .unwrap_or_else(|| "pushpool test notification ({{ channel }})".into()),
        body: input.body.unwrap_or_else(|| {
            "This is a test of the notification channel `{{ channel }}` of workspace \
             `{{ workspace }}`."
                .into()
        }),
        payload: json!({"test": true, "channel": c.name, "workspace": ws.name}),
    };
    let id = notify::enqueue(&state.store, ws.id, c.id, n).await?;
    note.target("notification_channel", c.id);
    note.detail(json!({"name": c.name, "delivery": id.0}));
    let d = state.store.delivery(ws.id, &id.to_string()).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_out(&d))))
}

async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Json<Vec<DeliveryOut>>> {
    let ws = caller.workspace()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::unprocessable("limit", "must be 1–500"));
    }
    let list = state.store.deliveries(ws.id, limit).await?;
    Ok(Json(list.iter().map(delivery_out).collect()))
}

async fn get_delivery(
    State(state): State<AppState>,
    Path((_ws, id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<DeliveryOut>> {
    let ws = caller.workspace()?;
    let d = state.store.delivery(ws.id, &id).await?;
    Ok(Json(delivery_out(&d)))
}
