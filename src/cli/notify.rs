//! `pushpool channel …` (notification channels: webhook, Slack, email) and `pushpool hook …`
//! (inbound webhooks). See docs/notifications.md.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::api::{Api, CliError};
use super::output::{columns_table, field, key_values, pretty, time_field, Column};
use super::{create, delete, get_and_show, send_and_show, OutputFormat};

/// `pushpool channel …`
#[derive(clap::Args, Debug, Clone)]
pub struct ChannelArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ChannelCommand,
}

/// Channel kinds on the command line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindArg {
    /// Signed JSON webhook.
    Webhook,
    /// Slack-compatible incoming webhook.
    Slack,
    /// Email over SMTP.
    Email,
}

/// Notification-channel commands.
#[derive(clap::Subcommand, Debug, Clone)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ChannelCommand {
    /// Create a channel. A webhook's generated signing secret is printed once.
    Create {
        /// Channel name.
        name: String,
        /// `webhook`, `slack` or `email`.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Webhook or Slack incoming-webhook URL.
        #[arg(long)]
        url: Option<String>,
        /// Webhook signing secret (16+ characters; default: generated).
        #[arg(long, env = "PUSHPOOL_CHANNEL_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Webhook header `NAME=VALUE` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// SMTP server host (email).
        #[arg(long)]
        smtp_host: Option<String>,
        /// SMTP port (default 587; 465 with `--smtp-tls tls`).
        #[arg(long)]
        smtp_port: Option<u16>,
        /// `starttls` (default), `tls` or `none`.
        #[arg(long)]
        smtp_tls: Option<String>,
        /// SMTP user.
        #[arg(long)]
        smtp_username: Option<String>,
        /// SMTP password (prefer the variable).
        #[arg(long, env = "PUSHPOOL_SMTP_PASSWORD", hide_env_values = true)]
        smtp_password: Option<String>,
        /// Sender address (email).
        #[arg(long)]
        from: Option<String>,
        /// Recipient (email; repeatable).
        #[arg(long)]
        to: Vec<String>,
        /// Subject template, e.g. `[prod] {{ subject }}`.
        #[arg(long)]
        subject_template: Option<String>,
        /// Body template.
        #[arg(long)]
        body_template: Option<String>,
        /// How long failing deliveries are retried, in seconds (default 3600).
        #[arg(long)]
        retry_for_seconds: Option<u64>,
    },
    /// List channels (secrets masked).
    #[command(visible_alias = "list")]
    Ls,
    /// Show one channel.
    Inspect {
        /// Channel name or id.
        name: String,
    },
    /// Delete a channel.
    Delete {
        /// Channel name or id.
        name: String,
    },
    /// Send a test notification; with `--wait`, wait for its outcome (exit 2 when it failed).
    Test {
        /// Channel name or id.
        name: String,
        /// Subject.
        #[arg(long)]
        subject: Option<String>,
        /// Body.
        #[arg(long)]
        body: Option<String>,
        /// Wait up to this many seconds for the delivery to be delivered or failed.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// The newest deliveries and their outcomes.
    Deliveries {
        /// How many (default 20).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// `pushpool hook …`
#[derive(clap::Args, Debug, Clone)]
pub struct HookArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: HookCommand,
}

/// Inbound-webhook commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum HookCommand {
    /// Create an inbound webhook; its URL (and signing secret) are printed once.
    Create {
        /// Hook name.
        name: String,
        /// Event name template, e.g. `github.{{ body.action }}`.
        #[arg(long)]
        event: Option<String>,
        /// Resource id template, e.g. `github.repo.{{ body.repository.id }}`.
        #[arg(long)]
        resource: Option<String>,
        /// Payload template (JSON), e.g. `{"ref": "{{ body.ref }}"}`.
        #[arg(long)]
        payload: Option<String>,
        /// Require HMAC-SHA256 signatures of the body.
        #[arg(long)]
        signed: bool,
    },
    /// List inbound webhooks.
    #[command(visible_alias = "list")]
    Ls,
    /// Delete an inbound webhook.
    Delete {
        /// Hook name or id.
        name: String,
    },
}

const CHANNEL_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("KIND", "kind"),
    Column::field("URL", "url"),
    Column::field("RETRY_FOR_S", "retry_for_seconds"),
    Column::time("CREATED", "created"),
];

const DELIVERY_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("KIND", "kind"),
    Column::field("STATUS", "status"),
    Column::field("ATTEMPTS", "attempts"),
    Column::field("SUBJECT", "subject"),
    Column::field("LAST_ERROR", "last_error"),
    Column::time("CREATED", "created"),
];

const HOOK_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("SLUG", "slug_prefix"),
    Column::field("SIGNED", "signed"),
    Column::field("EVENT", "event"),
    Column::time("CREATED", "created"),
];

fn channel_details(c: &Value) -> String {
    let mut pairs = vec![
        ("name", field(c, "name")),
        ("id", field(c, "id")),
        ("kind", field(c, "kind")),
    ];
    for key in ["url", "secret", "subject_template", "body_template"] {
        if c.get(key).is_some_and(|v| !v.is_null()) {
            pairs.push((key, field(c, key)));
        }
    }
    pairs.push(("retry_for_seconds", field(c, "retry_for_seconds")));
    pairs.push(("created", time_field(c, "created")));
    let mut text = key_values(&pairs);
    for key in ["headers", "smtp"] {
        if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
            text.push_str(&format!("\n{key}:\n{}", pretty(v)));
        }
    }
    text
}

fn delivery_details(d: &Value) -> String {
    key_values(&[
        ("id", field(d, "id")),
        ("kind", field(d, "kind")),
        ("status", field(d, "status")),
        ("attempts", field(d, "attempts")),
        ("subject", field(d, "subject")),
        ("last_error", field(d, "last_error")),
        ("created", time_field(d, "created")),
        ("finished", time_field(d, "finished")),
    ])
}

fn hook_details(h: &Value) -> String {
    let mut pairs = vec![("name", field(h, "name")), ("id", field(h, "id"))];
    if h.get("path").is_some_and(Value::is_string) {
        pairs.push(("path (shown once)", field(h, "path")));
    }
    pairs.push(("signed", field(h, "signed")));
    if h["signed"] == true {
        pairs.push(("secret", field(h, "secret")));
    }
    pairs.push(("event", field(h, "event")));
    pairs.push(("resource", field(h, "resource")));
    key_values(&pairs)
}

fn usage(message: &str) -> CliError {
    CliError::Usage(message.to_string())
}

pub(super) async fn channel(
    api: &Api,
    out: OutputFormat,
    command: ChannelCommand,
) -> Result<i32, CliError> {
    match command {
        ChannelCommand::Create {
            name,
            kind,
            url,
            secret,
            headers,
            smtp_host,
            smtp_port,
            smtp_tls,
            smtp_username,
            smtp_password,
            from,
            to,
            subject_template,
            body_template,
            retry_for_seconds,
        } => {
            let kind_name = match kind {
                KindArg::Webhook => "webhook",
                KindArg::Slack => "slack",
                KindArg::Email => "email",
            };
            let mut body = json!({"name": name, "kind": kind_name});
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    body[k] = v;
                }
            };
            set("url", url.map(Value::from));
            set("secret", secret.map(Value::from));
            set("subject_template", subject_template.map(Value::from));
            set("body_template", body_template.map(Value::from));
            set("retry_for_seconds", retry_for_seconds.map(Value::from));
            if !headers.is_empty() {
                let mut map = serde_json::Map::new();
                for h in &headers {
                    let (k, v) = h
                        .split_once('=')
                        .ok_or_else(|| usage(&format!("--header {h}: expected NAME=VALUE")))?;
                    map.insert(k.to_string(), json!(v));
                }
                body["headers"] = Value::Object(map);
            }
            if kind == KindArg::Email {
                let host = smtp_host.ok_or_else(|| usage("an email channel needs --smtp-host"))?;
                let from = from.ok_or_else(|| usage("an email channel needs --from"))?;
                let mut smtp = json!({"host": host, "from": from, "to": to});
                if let Some(p) = smtp_port {
                    smtp["port"] = json!(p);
                }
                if let Some(t) = smtp_tls {
                    smtp["tls"] = json!(t);
                }
                if let Some(u) = smtp_username {
                    smtp["username"] = json!(u);
                }
                if let Some(p) = smtp_password {
                    smtp["password"] = json!(p);
                }
                body["smtp"] = smtp;
            }
            create(api, out, "notification_channels", &body, channel_details).await?;
        }
        ChannelCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["notification_channels"]), |v| {
                columns_table(v, CHANNEL_COLUMNS)
            })
            .await?;
        }
        ChannelCommand::Inspect { name } => {
            let url = api.ws_url(&["notification_channels", &name]);
            get_and_show(api, out, url, channel_details).await?;
        }
        ChannelCommand::Delete { name } => {
            let url = api.ws_url(&["notification_channels", &name]);
            delete(api, out, url, &format!("deleted channel {name}")).await?;
        }
        ChannelCommand::Test {
            name,
            subject,
            body,
            wait,
        } => {
            let mut req = json!({});
            if let Some(s) = subject {
                req["subject"] = json!(s);
            }
            if let Some(b) = body {
                req["body"] = json!(b);
            }
            let url = api.ws_url(&["notification_channels", &name, "test"]);
            let Some(seconds) = wait else {
                send_and_show(api, out, Method::POST, url, Some(&req), delivery_details).await?;
                return Ok(0);
            };
            let d = api.send(Method::POST, url, Some(&req)).await?.body;
            let id = d["id"].as_str().unwrap_or_default().to_string();
            let deadline = Instant::now() + Duration::from_secs(seconds);
            loop {
                let d = api
                    .get(api.ws_url(&["notification_deliveries", &id]))
                    .await?;
                if d["status"] != "pending" || Instant::now() >= deadline {
                    super::show(out, &d, delivery_details);
                    return Ok(if d["status"] == "delivered" { 0 } else { 2 });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        ChannelCommand::Deliveries { limit } => {
            let mut url = api.ws_url(&["notification_deliveries"]);
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
            get_and_show(api, out, url, |v| columns_table(v, DELIVERY_COLUMNS)).await?;
        }
    }
    Ok(0)
}

pub(super) async fn hook(
    api: &Api,
    out: OutputFormat,
    command: HookCommand,
) -> Result<i32, CliError> {
    match command {
        HookCommand::Create {
            name,
            event,
            resource,
            payload,
            signed,
        } => {
            let mut body = json!({"name": name, "signed": signed});
            if let Some(e) = event {
                body["event"] = json!(e);
            }
            if let Some(r) = resource {
                body["resource"] = json!(r);
            }
            if let Some(p) = payload {
                body["payload"] = serde_json::from_str(&p)
                    .map_err(|e| usage(&format!("--payload: not JSON ({e})")))?;
            }
            create(api, out, "inbound_hooks", &body, hook_details).await?;
        }
        HookCommand::Ls => {
            get_and_show(api, out, api.ws_url(&["inbound_hooks"]), |v| {
                columns_table(v, HOOK_COLUMNS)
            })
            .await?;
        }
        HookCommand::Delete { name } => {
            let url = api.ws_url(&["inbound_hooks", &name]);
            delete(api, out, url, &format!("deleted hook {name}")).await?;
        }
    }
    Ok(0)
}
