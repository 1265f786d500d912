//! Interval lengths: a number of seconds or an ISO 8601 duration of fixed length.

use chrono::Duration;

use super::SpecError;

/// Most seconds an interval may last (about 10 years).
const MAX_SECONDS: i64 = 10 * 366 * 86_400;

/// Parses an interval: whole seconds (`3600`) or an ISO 8601 duration of weeks, days, hours,
/// minutes and seconds (`PT1H`, `P1DT12H`, `PT0.5S` is refused: at least one whole second).
/// Years and months are refused: they have no fixed length, and intervals are exact in UTC.
pub fn parse_interval(spec: &str) -> Result<Duration, SpecError> {
    let spec = spec.trim();
    let bad = |m: String| SpecError::new("interval", m);
    let seconds = if let Ok(n) = spec.parse::<i64>() {
        n
    } else {
        iso8601(spec).ok_or_else(|| {
            bad(format!(
                "`{spec}` is neither a number of seconds nor an ISO 8601 duration such as PT1H or \
                 P1DT12H (years and months have no fixed length and are refused)"
            ))
        })?
    };
    if seconds < 1 {
        return Err(bad("an interval lasts at least 1 second".into()));
    }
    if seconds > MAX_SECONDS {
        return Err(bad(format!(
            "an interval lasts at most {MAX_SECONDS} seconds"
        )));
    }
    Ok(Duration::seconds(seconds))
}

/// `P[nW][nD][T[nH][nM][nS]]` in whole units, as seconds.
fn iso8601(spec: &str) -> Option<i64> {
    let upper = spec.to_ascii_uppercase();
    let rest = upper.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: i64 = 0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut number = String::new();
        let mut last_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let pos = units.iter().position(|(u, _)| *u == c)?;
            if number.is_empty() || pos < last_unit {
                return None;
            }
            last_unit = pos + 1;
            let n: i64 = number.parse().ok()?;
            total = total.checked_add(n.checked_mul(units[pos].1)?)?;
            number.clear();
            any = true;
        }
        number.is_empty().then_some(())
    };
    take(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return None;
        }
        take(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    any.then_some(total)
}
