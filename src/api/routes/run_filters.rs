//! The run list's repeatable filters (issue 13): `state` (repeated or a comma list: any of
//! them), `tag` (repeated: every one of them), `since` and `until` (RFC 3339, on the scheduled
//! time). Read from the raw query string because a typed query refuses repeated keys.

use axum::http::Uri;
use chrono::{DateTime, Utc};

use super::super::{ApiError, ApiResult};
use crate::state::StateType;

/// The filters read from a query string, and the query string without them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RepeatedFilters {
    /// Any of these state types.
    pub states: Vec<StateType>,
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Scheduled at or after.
    pub since: Option<DateTime<Utc>>,
    /// Scheduled before.
    pub until: Option<DateTime<Utc>>,
    /// The other parameters, for the typed query.
    pub rest: Uri,
}

fn time(field: &str, value: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::unprocessable(
                field,
                format!("`{value}` is not an RFC 3339 time such as 2026-12-01T09:00:00Z: {e}"),
            )
        })
}

/// Splits `state`, `tag`, `since` and `until` off `query`; empty values are ignored.
pub(crate) fn split(query: Option<&str>) -> ApiResult<RepeatedFilters> {
    let mut out = RepeatedFilters::default();
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "state" => {
                for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let t = part
                        .parse::<StateType>()
                        .map_err(|e| ApiError::unprocessable("state", e.to_string()))?;
                    if !out.states.contains(&t) {
                        out.states.push(t);
                    }
                }
            }
            "tag" if !value.is_empty() => {
                if out.tags.len() >= crate::state::MAX_TAGS {
                    return Err(ApiError::unprocessable("tag", "at most 50 tags"));
                }
                out.tags.push(value.into_owned());
            }
            "since" if !value.is_empty() => out.since = Some(time("since", &value)?),
            "until" if !value.is_empty() => out.until = Some(time("until", &value)?),
            "tag" | "since" | "until" => {}
            _ => {
                rest.append_pair(&key, &value);
            }
        }
    }
    if let (Some(since), Some(until)) = (out.since, out.until) {
        if until < since {
            return Err(ApiError::unprocessable(
                "until",
                "must not be before `since`",
            ));
        }
    }
    out.rest = format!("/?{}", rest.finish())
        .parse()
        .map_err(|_| ApiError::unprocessable("query", "not a valid query string"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_repeat_or_come_as_a_list_tags_repeat() {
        let f = split(Some(
            "state=failed,CRASHED&state=Failed&tag=a&tag=b%20c&limit=5&since=2026-01-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!(f.states, vec![StateType::Failed, StateType::Crashed]);
        assert_eq!(f.tags, vec!["a".to_string(), "b c".to_string()]);
        assert_eq!(f.since.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(f.rest.query(), Some("limit=5"));
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let field = |q: &str| split(Some(q)).unwrap_err().field;
        assert_eq!(field("state=RUNNING,NOPE"), Some("state".into()));
        assert_eq!(field("since=yesterday"), Some("since".into()));
        assert_eq!(
            field("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z"),
            Some("until".into())
        );
        assert!(split(Some("state=&tag=&since=")).is_ok());
    }
}
