//! Parsing and checking of cron expressions, RRULEs and time zone names.

use chrono::NaiveDateTime;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A spec that does not parse or breaks a rule; `field` names the part at fault (`cron`,
/// `interval`, `rrule`, `timezone`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field at fault.
    pub field: &'static str,
    /// The rule it breaks.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> SpecError {
        SpecError {
            field,
            message: message.into(),
        }
    }
}

/// An IANA time zone name such as `Europe/Berlin` (`UTC` too).
pub fn parse_timezone(name: &str) -> Result<Tz, SpecError> {
    name.parse::<Tz>().map_err(|_| {
        SpecError::new(
            "timezone",
            format!("`{name}` is not an IANA time zone name (such as `Europe/Berlin` or `UTC`)"),
        )
    })
}

/// A 5-field cron expression (minute hour day-of-month month day-of-week) or a macro
/// (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`).
/// Day of month and day of week combine with OR, as in Vixie cron.
pub(crate) fn cron(spec: &str) -> Result<Cron, SpecError> {
    let spec = spec.trim();
    let fields = spec.split_whitespace().count();
    if !spec.starts_with('@') && fields != 5 {
        return Err(SpecError::new(
            "cron",
            format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or is a \
                 macro such as @daily; `{spec}` has {fields}"
            ),
        ));
    }
    let spec = if spec.eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        spec
    };
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(spec)
        .map_err(|e| {
            SpecError::new(
                "cron",
                format!("`{spec}` is not a valid cron expression: {e}"),
            )
        })
}

/// An RFC 5545 recurrence: an `RRULE` (with or without the `RRULE:` prefix), optionally after a
/// `DTSTART:YYYYMMDDTHHMMSS` line in the schedule's wall time (no `TZID`, no `Z`: the schedule's
/// `timezone` says the zone). Without `DTSTART` the rule starts at `default_start`. The set is
/// built on wall times written as UTC; [`super::Recurrence`] resolves them in the zone.
pub(crate) fn rrule(
    spec: &str,
    default_start: NaiveDateTime,
) -> Result<rrule::RRuleSet, SpecError> {
    let bad = |m: String| SpecError::new("rrule", m);
    let mut start = default_start;
    let mut rules = vec![];
    for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let upper = line.to_ascii_uppercase();
        if let Some(value) = upper.strip_prefix("DTSTART:") {
            start = NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S").map_err(|_| {
                bad(format!(
                    "DTSTART `{value}` must be a wall time YYYYMMDDTHHMMSS (no TZID or Z: the \
                     schedule's timezone applies)"
                ))
            })?;
        } else if upper.starts_with("DTSTART") {
            return Err(bad(
                "DTSTART takes no parameters (no TZID): the schedule's timezone applies".into(),
            ));
        } else {
            let body = upper.strip_prefix("RRULE:").unwrap_or(&upper).to_string();
            if body.contains(':') {
                return Err(bad(format!(
                    "only RRULE and DTSTART lines are accepted, not `{line}`"
                )));
            }
            rules.push(body);
        }
    }
    if rules.is_empty() {
        return Err(bad(
            "an RRULE such as FREQ=DAILY;BYHOUR=9 is required".into()
        ));
    }
    let mut text = format!("DTSTART:{}Z", start.format("%Y%m%dT%H%M%S"));
    for r in &rules {
        if r.contains("UNTIL=")
            && !r
                .split(';')
                .any(|p| p.starts_with("UNTIL=") && p.ends_with('Z'))
        {
            // UNTIL is a wall time like DTSTART; the set is written in UTC, so it needs the Z.
            let fixed: Vec<String> = r
                .split(';')
                .map(|p| {
                    if p.starts_with("UNTIL=") && !p.ends_with('Z') {
                        format!("{p}Z")
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            text.push_str(&format!("\nRRULE:{}", fixed.join(";")));
        } else {
            text.push_str(&format!("\nRRULE:{r}"));
        }
    }
    text.parse::<rrule::RRuleSet>()
        .map_err(|e| bad(format!("not a valid RFC 5545 recurrence: {e}")))
}
