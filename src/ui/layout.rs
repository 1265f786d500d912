//! The page shell (header, navigation, sign-out), and small HTML pieces every page uses:
//! escaping, times (UTC in the page, the browser's zone once the script ran, UTC on hover),
//! state badges, durations, JSON blocks.

use axum::response::Html;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::session::Session;
use crate::access::Scope;
use crate::state::StateType;

/// The dashboard's Content-Security-Policy: this origin only, no inline script.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// HTML-escapes text (also for attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time: UTC in the page; the script shows it in the browser's zone, UTC stays on hover.
pub fn time(t: &DateTime<Utc>) -> String {
    let utc = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    format!(
        "<time datetime=\"{}\" title=\"{utc}\">{utc}</time>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

/// A time from an RFC 3339 string in a JSON answer.
pub fn time_str(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => time(&t.with_timezone(&Utc)),
        None => "—".into(),
    }
}

/// A state badge: the sub-state's name, coloured by its type.
pub fn badge(state_type: StateType, name: &str) -> String {
    let name = if name.is_empty() {
        state_type.as_str()
    } else {
        name
    };
    format!(
        "<span class=\"state s-{}\" title=\"{}\">{}</span>",
        state_type.as_str().to_ascii_lowercase(),
        state_type.as_str(),
        esc(name)
    )
}

/// A duration such as `2h 03m`, `4m 05s` or `1.2s`.
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    if s >= 86_400 {
        format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// A JSON document, pretty-printed.
pub fn json_block(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\"><code>{}</code></pre>", esc(&text))
}

/// The last 8 characters of an id (UUID v7 ids begin with their time, so the tail tells runs
/// created together apart).
pub fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Dashboard.
    Dashboard,
    /// Runs.
    Runs,
    /// Deployments.
    Deployments,
    /// Pools.
    Pools,
    /// Events.
    Events,
    /// Automations.
    Automations,
    /// Audit log.
    Audit,
    /// Keys.
    Keys,
    /// Members.
    Members,
}

fn head(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{} · pushpool</title>
<link rel="stylesheet" href="/ui/assets/ui.css">
<script src="/ui/assets/ui.js" defer></script>
</head>"#,
        esc(title)
    )
}

/// A page of a signed-in session.
pub fn page(session: &Session, nav: Nav, title: &str, body: &str) -> Html<String> {
    let mut links = vec![
        (Nav::Dashboard, "/ui", "Dashboard", true),
        (Nav::Runs, "/ui/runs", "Runs", session.has(Scope::RunsRead)),
        (
            Nav::Deployments,
            "/ui/deployments",
            "Deployments",
            session.has(Scope::DeploymentsRead),
        ),
        (
            Nav::Pools,
            "/ui/pools",
            "Pools",
            session.has(Scope::PoolsRead),
        ),
        (
            Nav::Events,
            "/ui/events",
            "Events",
            session.has(Scope::EventsRead),
        ),
        (
            Nav::Automations,
            "/ui/automations",
            "Automations",
            session.has(Scope::AutomationsRead),
        ),
        (
            Nav::Audit,
            "/ui/audit",
            "Audit log",
            session.has(Scope::AuditRead),
        ),
        (Nav::Keys, "/ui/keys", "Keys", session.has(Scope::KeysSelf)),
        (
            Nav::Members,
            "/ui/members",
            "Members",
            session.has(Scope::MembersRead),
        ),
    ];
    links.retain(|l| l.3);
    let nav_html: String = links
        .iter()
        .map(|(n, href, label, _)| {
            let current = if *n == nav {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<li><a href=\"{href}\"{current}>{label}</a></li>")
        })
        .collect();
    Html(format!(
        r##"{head}
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/ui">pushpool</a>
<nav aria-label="Main"><ul>{nav_html}</ul></nav>
<div class="who"><span title="workspace">{ws}</span> · <span>{who}</span>
<form method="post" action="/ui/signout" class="inline">{csrf}<button type="submit" class="link">Sign out</button></form>
<a href="/docs">API</a></div>
</header>
<main id="main">
{body}
</main>
</body></html>"##,
        head = head(title),
        ws = esc(&session.workspace),
        who = esc(&session.who()),
        csrf = session.csrf_field(),
    ))
}

/// A page without a session (sign-in, errors).
pub fn page_bare(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r##"{head}
<body>
<header class="top"><a class="brand" href="/ui">pushpool</a><nav aria-label="Main"><ul><li><a href="/docs">API reference</a></li></ul></nav></header>
<main id="main" class="narrow">
{body}
</main>
</body></html>"##,
        head = head(title)
    ))
}

/// A table inside a horizontally scrolling box (phones), or a note when there are no rows.
pub fn table(caption: &str, headers: &[&str], rows: &[String], empty: &str) -> String {
    if rows.is_empty() {
        return format!(
            "<p class=\"empty\">{}</p>",
            if empty.is_empty() {
                "Nothing yet."
            } else {
                empty
            }
        );
    }
    let th: String = headers
        .iter()
        .map(|h| format!("<th scope=\"col\">{h}</th>"))
        .collect();
    format!(
        "<div class=\"scroll\"><table><caption class=\"sr-only\">{}</caption><thead><tr>{th}</tr></thead><tbody>{}</tbody></table></div>",
        esc(caption),
        rows.concat()
    )
}

/// A POST button form with the session's CSRF token.
pub fn button(session: &Session, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button type=\"submit\" class=\"{class}\">{}</button></form>",
        esc(action),
        session.csrf_field(),
        esc(label)
    )
}

/// `Yes`/`No`.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A JSON value as short text (strings without quotes, `—` for null).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// A state type read from a JSON answer.
pub fn state_of(v: &Value) -> StateType {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(StateType::Scheduled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_durations() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(duration(chrono::Duration::milliseconds(1234)), "1.2s");
        assert_eq!(duration(chrono::Duration::seconds(65)), "1m 05s");
        assert_eq!(
            duration(chrono::Duration::seconds(3 * 3600 + 120)),
            "3h 02m"
        );
        assert_eq!(duration(chrono::Duration::seconds(90_000)), "1d 01h");
    }
}
