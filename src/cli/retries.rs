//! The retry and tag flags of `deployment create` and `deployment run` (issue 13;
//! docs/retries.md), and how they go into a request body.

use serde_json::{json, Map, Value};

use super::api::CliError;

/// `--retries`, `--retry-delay`, `--retry-jitter`, `--retry-on`, `--tag`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RetryFlags {
    /// How many times a failed run is tried again (0–100).
    #[arg(long, value_name = "N")]
    pub retries: Option<i64>,
    /// Seconds before each retry: one number, or a comma list with one per retry (the last
    /// repeats), e.g. `10,60,300`.
    #[arg(long, value_name = "SECS[,SECS…]")]
    pub retry_delay: Option<String>,
    /// Adds up to this fraction of the delay at random (0–10), e.g. 0.2.
    #[arg(long, value_name = "F")]
    pub retry_jitter: Option<f64>,
    /// The end states retried: FAILED, CRASHED or FAILED,CRASHED (default both).
    #[arg(long, value_name = "TYPES")]
    pub retry_on: Option<String>,
    /// A tag (runs of a deployment inherit its tags). Repeatable.
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
}

/// The `--retry-delay` value as the API takes it: a number, or a list of numbers.
pub fn parse_delay(raw: &str) -> Result<Value, CliError> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    let mut delays = Vec::with_capacity(parts.len());
    for part in &parts {
        let seconds: f64 = part.parse().map_err(|_| {
            CliError::Usage(format!(
                "invalid --retry-delay `{raw}`: `{part}` is not a number of seconds; \
                 expected e.g. 10 or 10,60,300"
            ))
        })?;
        delays.push(seconds);
    }
    Ok(match delays.as_slice() {
        [one] if parts.len() == 1 => json!(one),
        _ => json!(delays),
    })
}

impl RetryFlags {
    /// Puts the given flags into `body` (fields the API names the same way).
    pub fn write_into(&self, body: &mut Map<String, Value>) -> Result<(), CliError> {
        if let Some(n) = self.retries {
            body.insert("retries".into(), json!(n));
        }
        if let Some(raw) = &self.retry_delay {
            body.insert("retry_delay_seconds".into(), parse_delay(raw)?);
        }
        if let Some(f) = self.retry_jitter {
            body.insert("retry_jitter_factor".into(), json!(f));
        }
        if let Some(raw) = &self.retry_on {
            let types: Vec<String> = raw
                .split(',')
                .map(|t| t.trim().to_ascii_uppercase())
                .filter(|t| !t.is_empty())
                .collect();
            body.insert("retry_on".into(), json!(types));
        }
        if !self.tags.is_empty() {
            body.insert("tags".into(), json!(self.tags));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_api_fields() {
        let flags = RetryFlags {
            retries: Some(2),
            retry_delay: Some("10, 20".into()),
            retry_jitter: Some(0.5),
            retry_on: Some("failed".into()),
            tags: vec!["etl".into(), "prod".into()],
        };
        let mut body = Map::new();
        flags.write_into(&mut body).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"retries": 2, "retry_delay_seconds": [10.0, 20.0], "retry_jitter_factor": 0.5,
                   "retry_on": ["FAILED"], "tags": ["etl", "prod"]})
        );
        assert_eq!(parse_delay("7").unwrap(), json!(7.0));
        assert!(parse_delay("7,x").is_err());
        let mut empty = Map::new();
        RetryFlags::default().write_into(&mut empty).unwrap();
        assert!(empty.is_empty());
    }
}
