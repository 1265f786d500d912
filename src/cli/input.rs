//! Parsing of user input that clap leaves as text: `KEY=JSON` assignments, `--at` times, template
//! files, and where the API key comes from.

use std::io::Read as _;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::api::CliError;

/// Parses one `KEY=VALUE` assignment given to `flag` (e.g. `--var`).
///
/// The value is parsed as JSON; when that fails it is taken as a plain string, so
/// `image=python:3.12` works. The key is kept as is (dotted keys such as `env.FOO` are expanded by
/// the server).
pub fn parse_assignment(flag: &str, raw: &str) -> Result<(String, Value), CliError> {
    let Some((key, value)) = raw.split_once('=') else {
        return Err(CliError::Usage(format!(
            "invalid {flag} `{raw}`: expected KEY=VALUE (VALUE is JSON, or else a plain string)"
        )));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(CliError::Usage(format!(
            "invalid {flag} `{raw}`: the KEY before `=` is empty"
        )));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// Parses every assignment given to `flag` into one object; a repeated key keeps the last value.
pub fn parse_assignments(flag: &str, raws: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut map = Map::new();
    for raw in raws {
        let (key, value) = parse_assignment(flag, raw)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// Parses `--at`: an RFC 3339 time, returned normalised to UTC.
pub fn parse_at(raw: &str) -> Result<String, CliError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
        .map_err(|e| {
            CliError::Usage(format!(
                "invalid --at `{raw}`: {e}; expected an RFC 3339 time such as \
                 2030-01-31T12:00:00Z"
            ))
        })
}

/// Reads a JSON file given to `flag` (`-` reads standard input).
pub fn read_json_file(flag: &str, path: &Path) -> Result<Value, CliError> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Usage(format!("cannot read {flag} from standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read {flag} file {}: {e}", path.display()))
        })?
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{flag} file {} is not valid JSON: {e}",
            path.display()
        ))
    })
}

/// Where the API key comes from, in order: the explicit `--api-key`/`PUSHPOOL_API_KEY` value,
/// `<home>/owner.key` (when `PUSHPOOL_HOME` is set), `<local_home>/owner.key` (normally
/// `./.pushpool`). Files are trimmed; missing or empty ones are skipped. `None` sends no key.
pub fn resolve_api_key(
    explicit: Option<&str>,
    home: Option<&Path>,
    local_home: &Path,
) -> Result<Option<String>, CliError> {
    if let Some(key) = explicit.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(Some(key.to_string()));
    }
    for dir in home.into_iter().chain(std::iter::once(local_home)) {
        let file = dir.join("owner.key");
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let key = text.trim();
                if !key.is_empty() {
                    return Ok(Some(key.to_string()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "cannot read the API key file {}: {e}",
                    file.display()
                )))
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn var_values_are_json_else_strings() {
        assert_eq!(
            parse_assignment("--var", "cpu=2").unwrap(),
            ("cpu".into(), json!(2))
        );
        assert_eq!(
            parse_assignment("--var", r#"env={"A":"b"}"#).unwrap(),
            ("env".into(), json!({"A": "b"}))
        );
        assert_eq!(
            parse_assignment("--var", r#"name="quoted""#).unwrap(),
            ("name".into(), json!("quoted"))
        );
        assert_eq!(
            parse_assignment("--var", "image=python:3.12").unwrap(),
            ("image".into(), json!("python:3.12"))
        );
        assert_eq!(
            parse_assignment("--var", "command=echo a=b").unwrap(),
            ("command".into(), json!("echo a=b"))
        );
        assert_eq!(
            parse_assignment("--var", "empty=").unwrap(),
            ("empty".into(), json!(""))
        );
        assert_eq!(
            parse_assignment("--var", "keep=true").unwrap(),
            ("keep".into(), json!(true))
        );
    }

    #[test]
    fn dotted_keys_are_sent_as_is() {
        let map = parse_assignments("--var", &["env.FOO=bar".to_string(), "env.N=1".to_string()])
            .unwrap();
        assert_eq!(Value::Object(map), json!({"env.FOO": "bar", "env.N": 1}));
    }

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let map = parse_assignments("--param", &["x=1".to_string(), "x=2".to_string()]).unwrap();
        assert_eq!(Value::Object(map), json!({"x": 2}));
    }

    #[test]
    fn assignments_without_equals_are_usage_errors_naming_the_argument() {
        let e = parse_assignment("--var", "image").unwrap_err();
        assert!(matches!(e, CliError::Usage(_)));
        let text = e.to_string();
        assert!(text.contains("--var"), "{text}");
        assert!(text.contains("`image`"), "{text}");
        let e = parse_assignments("--param", &["a=1".into(), "=2".into()]).unwrap_err();
        assert!(e.to_string().contains("--param `=2`"), "{e}");
    }

    #[test]
    fn at_must_be_rfc3339() {
        assert_eq!(
            parse_at("2030-01-31T13:00:00+01:00").unwrap(),
            "2030-01-31T12:00:00Z"
        );
        let e = parse_at("tomorrow").unwrap_err();
        assert!(matches!(e, CliError::Usage(_)));
        assert!(e.to_string().contains("--at `tomorrow`"));
    }

    #[test]
    fn api_key_resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let local = dir.path().join("local");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&local).unwrap();

        // Nothing anywhere: no key.
        assert_eq!(resolve_api_key(None, Some(&home), &local).unwrap(), None);

        // The local file is used when nothing else is.
        std::fs::write(local.join("owner.key"), "local-key\n").unwrap();
        assert_eq!(
            resolve_api_key(None, Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("local-key")
        );
        assert_eq!(
            resolve_api_key(None, None, &local).unwrap().as_deref(),
            Some("local-key")
        );

        // $PUSHPOOL_HOME wins over the local file; an empty file there is skipped.
        std::fs::write(home.join("owner.key"), "  \n").unwrap();
        assert_eq!(
            resolve_api_key(None, Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("local-key")
        );
        std::fs::write(home.join("owner.key"), "  home-key \n").unwrap();
        assert_eq!(
            resolve_api_key(None, Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("home-key")
        );

        // The explicit key wins over both; a blank one does not count.
        assert_eq!(
            resolve_api_key(Some("flag-key"), Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("flag-key")
        );
        assert_eq!(
            resolve_api_key(Some(" "), Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("home-key")
        );
    }
}
