//! One delivery attempt: a signed JSON webhook, a Slack-compatible message, an email over SMTP
//! (`lettre`, STARTTLS or implicit TLS, with authentication), or an automation's webhook call.
//! Errors say whether retrying may help; their text never holds a secret (no Slack URL, no
//! header value, no password).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::ssrf::{TargetError, TargetPolicy};
use super::{signature, DELIVERY_HEADER, SIGNATURE_HEADER};
use crate::store::{Delivery, Store, StoreError, StoredChannel};

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether a later attempt may succeed (connection refused, 5xx, 429, timeouts).
    pub retriable: bool,
    /// What happened (no secrets).
    pub message: String,
}

impl SendError {
    fn retry(message: impl Into<String>) -> SendError {
        SendError {
            retriable: true,
            message: message.into(),
        }
    }
    fn fail(message: impl Into<String>) -> SendError {
        SendError {
            retriable: false,
            message: message.into(),
        }
    }
}

impl From<TargetError> for SendError {
    fn from(e: TargetError) -> Self {
        match e {
            // DNS may come back; a refused or malformed target will not.
            TargetError::Unresolvable { .. } => SendError::retry(e.to_string()),
            other => SendError::fail(other.to_string()),
        }
    }
}

impl From<StoreError> for SendError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => {
                SendError::fail("the notification channel was deleted before delivery")
            }
            other => SendError::retry(format!("store: {other}")),
        }
    }
}

/// Delivers `d` once.
pub async fn deliver(
    store: &Store,
    client: &reqwest::Client,
    policy: TargetPolicy,
    timeout: Duration,
    d: &Delivery,
) -> Result<(), SendError> {
    if d.kind == "webhook_action" {
        let url = d.request["url"].as_str().unwrap_or_default();
        let headers: BTreeMap<String, String> =
            serde_json::from_value(d.request["headers"].clone()).unwrap_or_default();
        let body = serde_json::to_vec(&d.request["body"]).unwrap_or_default();
        return post(client, policy, url, &headers, &d.id.to_string(), body, None).await;
    }
    let channel_id = d
        .channel_id
        .ok_or_else(|| SendError::fail("the delivery names no channel"))?;
    let channel = store
        .channel(d.workspace_id, &channel_id.to_string())
        .await?;
    let subject = d.request["subject"].as_str().unwrap_or_default();
    let text = d.request["body"].as_str().unwrap_or_default();
    match channel.kind.as_str() {
        "webhook" => {
            let body = json!({
                "id": d.id,
                "channel": channel.name,
                "subject": subject,
                "body": text,
                "payload": d.request["payload"],
                "created": d.created,
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let secret = channel.config["secret"].as_str().unwrap_or_default();
            let sig = signature(secret, &body);
            let headers: BTreeMap<String, String> =
                serde_json::from_value(channel.config["headers"].clone()).unwrap_or_default();
            let url = channel.config["url"].as_str().unwrap_or_default();
            post(
                client,
                policy,
                url,
                &headers,
                &d.id.to_string(),
                body,
                Some(sig),
            )
            .await
        }
        "slack" => {
            let body = serde_json::to_vec(&slack_body(subject, text)).unwrap_or_default();
            let url = channel.config["url"].as_str().unwrap_or_default();
            post(
                client,
                policy,
                url,
                &BTreeMap::new(),
                &d.id.to_string(),
                body,
                None,
            )
            .await
        }
        "email" => email(&channel, policy, timeout, subject, text).await,
        other => Err(SendError::fail(format!("unknown channel kind `{other}`"))),
    }
}

/// The JSON a Slack-compatible incoming webhook receives: `text` (the fallback every
/// compatible receiver reads) and the same as `blocks` (a bold heading and the body).
pub fn slack_body(subject: &str, body: &str) -> Value {
    let text = if body.is_empty() {
        format!("*{subject}*")
    } else {
        format!("*{subject}*\n{body}")
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        ],
    })
}

async fn post(
    client: &reqwest::Client,
    policy: TargetPolicy,
    url: &str,
    headers: &BTreeMap<String, String>,
    delivery_id: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> Result<(), SendError> {
    // Checked here for a clear error; the client's resolver checks the address it connects to.
    let parsed = policy.check_url(url).await?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let mut req = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_HEADER, delivery_id);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(sig) = signature {
        req = req.header(SIGNATURE_HEADER, sig);
    }
    let answer = req.body(body).send().await.map_err(|e| {
        // Without the URL: a Slack URL is a credential.
        let e = e.without_url();
        let mut message = format!("POST to {host} failed: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        if message.contains("refused: `") {
            SendError::fail(message)
        } else {
            SendError::retry(message)
        }
    })?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let message = format!("{host} answered HTTP {}", status.as_u16());
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(SendError::retry(message))
    } else {
        Err(SendError::fail(message))
    }
}

async fn email(
    channel: &StoredChannel,
    policy: TargetPolicy,
    timeout: Duration,
    subject: &str,
    body: &str,
) -> Result<(), SendError> {
    use lettre::message::header::ContentType;
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

    let smtp = &channel.config["smtp"];
    let host = smtp["host"].as_str().unwrap_or_default().to_string();
    let tls_mode = smtp["tls"].as_str().unwrap_or("starttls");
    let port = smtp["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(if tls_mode == "tls" { 465 } else { 587 });
    let addrs = policy.resolve(&host, port).await?;
    let tls = match tls_mode {
        "none" => Tls::None,
        mode => {
            let params = TlsParameters::new(host.clone())
                .map_err(|e| SendError::fail(format!("smtp.host: {e}")))?;
            if mode == "tls" {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    // Connect to the address the guard checked; TLS still verifies the certificate for `host`.
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addrs[0].ip().to_string())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
    if let Some(user) = smtp["username"].as_str() {
        let password = smtp["password"].as_str().unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.to_string(), password.to_string()));
    }
    let transport = builder.build();
    let mailbox = |s: &str, field: &str| {
        s.parse::<Mailbox>()
            .map_err(|e| SendError::fail(format!("{field}: {e}")))
    };
    let mut message = Message::builder()
        .from(mailbox(
            smtp["from"].as_str().unwrap_or_default(),
            "smtp.from",
        )?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in smtp["to"].as_array().into_iter().flatten() {
        message = message.to(mailbox(to.as_str().unwrap_or_default(), "smtp.to")?);
    }
    let message = message
        .body(body.to_string())
        .map_err(|e| SendError::fail(format!("building the email: {e}")))?;
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::fail(format!(
            "the SMTP server {host} refused the email: {e}"
        ))),
        Err(e) => Err(SendError::retry(format!("SMTP to {host} failed: {e}"))),
    }
}
