//! Checks of request values shared by several resources; each refusal names the field and the
//! rule.

use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, MAX_DOCUMENT_BYTES};
use crate::controller::rate::{MAX_RATE as SUBMIT_RATE_MAX, MIN_RATE as SUBMIT_RATE_MIN};

pub(crate) fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            field,
            "must be 1–100 characters of letters, digits, `-`, `_` or `.`, not starting with `-` or `.`",
        ))
    }
}

/// Refuses a JSON document above [`MAX_DOCUMENT_BYTES`].
pub(crate) fn check_document_size(field: &str, value: &impl Serialize) -> ApiResult<()> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        return Err(ApiError::unprocessable(
            field,
            format!("is {size} bytes; at most {MAX_DOCUMENT_BYTES} bytes (serialized JSON)"),
        ));
    }
    Ok(())
}

/// Refuses free text longer than `max` characters.
pub(crate) fn check_text(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    if value.is_some_and(|v| v.chars().count() > max) {
        return Err(ApiError::unprocessable(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(())
}

/// Lowest (first claimed) accepted queue `priority`.
pub const PRIORITY_MIN: i64 = -1000;
/// Highest (last claimed) accepted queue `priority`.
pub const PRIORITY_MAX: i64 = 1000;

/// Refuses a `submit_rate` outside `SUBMIT_RATE_MIN..=SUBMIT_RATE_MAX` (or not a number).
pub(crate) fn check_rate(rate: Option<f64>) -> ApiResult<()> {
    match rate {
        Some(r) if !(SUBMIT_RATE_MIN..=SUBMIT_RATE_MAX).contains(&r) => {
            Err(ApiError::unprocessable(
                "submit_rate",
                format!(
                    "must be a number of submissions per second from {SUBMIT_RATE_MIN} to {SUBMIT_RATE_MAX}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses a queue `priority` outside `PRIORITY_MIN..=PRIORITY_MAX`, a sane range. (Priority only
/// orders runs within a workspace: claims take workspaces in turn, so no value of one workspace's
/// queues jumps another workspace's runs.)
pub(crate) fn check_priority(priority: i64) -> ApiResult<()> {
    if (PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "priority",
            format!("must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"),
        ))
    }
}

pub(crate) fn check_limit(limit: Option<i64>) -> ApiResult<()> {
    match limit {
        Some(n) if n < 0 => Err(ApiError::unprocessable(
            "concurrency_limit",
            "must be 0 or more",
        )),
        _ => Ok(()),
    }
}

/// Deserializes a field that may be absent (`None`), null (`Some(None)`) or a value.
pub(crate) fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A refused retry setting or tag (issue 13) as a 422 naming the field.
pub(crate) fn invalid_setting(e: crate::state::InvalidSetting) -> ApiError {
    ApiError::unprocessable(&e.field, e.message)
}

/// Checked tags of a request field (`tags`), without duplicates.
pub(crate) fn checked_tags(tags: Option<Vec<String>>) -> ApiResult<Option<Vec<String>>> {
    tags.map(|t| crate::state::check_tags("tags", &t))
        .transpose()
        .map_err(invalid_setting)
}
