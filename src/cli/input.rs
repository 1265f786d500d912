//! Parsing of user input that clap leaves as text: `KEY=JSON` assignments, `--at` times,
//! `--expires-in` durations, template files, where the API key comes from, and saving new
//! workspace keys.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
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
    parse_time("--at", raw)
}

/// Parses an RFC 3339 time given to `flag` (`--at`, `--expires-at`, `--since`), returned
/// normalised to UTC.
pub fn parse_time(flag: &str, raw: &str) -> Result<String, CliError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
        .map_err(|e| {
            CliError::Usage(format!(
                "invalid {flag} `{raw}`: {e}; expected an RFC 3339 time such as \
                 2030-01-31T12:00:00Z"
            ))
        })
}

/// Parses `--expires-in`: a positive whole number followed by a unit, `s` (seconds), `m`
/// (minutes), `h` (hours), `d` (days) or `w` (weeks), e.g. `90m`, `12h`, `30d`.
pub fn parse_duration(flag: &str, raw: &str) -> Result<Duration, CliError> {
    let usage = |why: &str| {
        CliError::Usage(format!(
            "invalid {flag} `{raw}`: {why}; expected a number and a unit (s, m, h, d or w) \
             such as 90m, 12h or 30d"
        ))
    };
    let text = raw.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| usage("the unit is missing"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(usage("the number is missing"));
    }
    let n: i64 = number
        .parse()
        .map_err(|_| usage("the number is too large"))?;
    if n == 0 {
        return Err(usage("the duration must be longer than zero"));
    }
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(usage(&format!("unknown unit `{unit}`"))),
    };
    n.checked_mul(seconds_per_unit)
        .and_then(Duration::try_seconds)
        .ok_or_else(|| usage("the duration is too long"))
}

/// `now + duration` as an RFC 3339 UTC time (what `--expires-in` sends as `expires_at`).
pub fn time_after(now: DateTime<Utc>, duration: Duration) -> Result<String, CliError> {
    now.checked_add_signed(duration)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .ok_or_else(|| CliError::Usage("the expiry time is out of range".into()))
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

/// Whether `workspace` can be used as a key file name (`<workspace>.key`): not empty, no path
/// separators, not starting with `.`, no control characters. Server-side workspace names always
/// can; anything else given to `--workspace` simply has no key file.
fn is_plain_file_name(workspace: &str) -> bool {
    !workspace.is_empty()
        && workspace.len() <= 200
        && !workspace.starts_with('.')
        && !workspace
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// The key file of `workspace` under a pushpool home: `<home>/keys/<workspace>.key`; `None` when
/// the workspace name cannot be a file name.
pub fn workspace_key_file(home: &Path, workspace: &str) -> Option<PathBuf> {
    is_plain_file_name(workspace).then(|| home.join("keys").join(format!("{workspace}.key")))
}

/// Where the API key comes from, in order: the explicit `--api-key`/`PUSHPOOL_API_KEY` value;
/// the workspace's own key file `keys/<workspace>.key` under `home` (`PUSHPOOL_HOME`, when set)
/// and then under `local_home` (normally `./.pushpool`); `owner.key` under `home` and then under
/// `local_home`. Files are trimmed; missing or empty ones are skipped. `None` sends no key.
pub fn resolve_api_key(
    explicit: Option<&str>,
    workspace: &str,
    home: Option<&Path>,
    local_home: &Path,
) -> Result<Option<String>, CliError> {
    if let Some(key) = explicit.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(Some(key.to_string()));
    }
    let homes: Vec<&Path> = home
        .into_iter()
        .chain(std::iter::once(local_home))
        .collect();
    let workspace_files = homes
        .iter()
        .filter_map(|dir| workspace_key_file(dir, workspace));
    let owner_files = homes.iter().map(|dir| dir.join("owner.key"));
    for file in workspace_files.chain(owner_files) {
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

/// What [`save_key_file`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    /// The key was written to this new file (mode 0600).
    Written(PathBuf),
    /// A file already exists there; it was left alone and the key was not written.
    Exists(PathBuf),
}

/// Saves the owner key of a new workspace to `<home>/keys/<workspace>.key`: creates the
/// directory (mode 0700 when new), writes the file with mode 0600, and never replaces an
/// existing file.
pub fn save_key_file(home: &Path, workspace: &str, key: &str) -> Result<Saved, CliError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let file = workspace_key_file(home, workspace).ok_or_else(|| {
        CliError::Usage(format!(
            "the workspace name `{workspace}` cannot be used as a key file name"
        ))
    })?;
    let dir = home.join("keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Saved::Exists(file)),
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot create {}: {e}",
                file.display()
            )))
        }
    };
    if let Err(e) = f
        .write_all(key.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
    {
        // A half-written key file would be picked up later as a broken key.
        drop(f);
        let _ = std::fs::remove_file(&file);
        return Err(CliError::Usage(format!(
            "cannot write {}: {e}",
            file.display()
        )));
    }
    Ok(Saved::Written(file))
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
    fn times_name_their_flag() {
        assert_eq!(
            parse_time("--expires-at", "2030-01-31T12:00:00Z").unwrap(),
            "2030-01-31T12:00:00Z"
        );
        let e = parse_time("--since", "yesterday").unwrap_err();
        assert!(e.to_string().contains("--since `yesterday`"), "{e}");
    }

    #[test]
    fn durations_take_a_number_and_a_unit() {
        let d = |raw| parse_duration("--expires-in", raw);
        assert_eq!(d("30d").unwrap(), Duration::days(30));
        assert_eq!(d("12h").unwrap(), Duration::hours(12));
        assert_eq!(d("90m").unwrap(), Duration::minutes(90));
        assert_eq!(d("45s").unwrap(), Duration::seconds(45));
        assert_eq!(d("2w").unwrap(), Duration::weeks(2));
        assert_eq!(d(" 1h ").unwrap(), Duration::hours(1));
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "-1d",
            "1.5h",
            "1 h",
            "10y",
            "1H",
            "30dd",
            "h30",
            "99999999999999999999d",
            "9223372036854775807w",
        ] {
            let e = d(bad).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{bad}");
            assert!(e.to_string().contains("--expires-in"), "{bad}: {e}");
        }
    }

    #[test]
    fn expiry_is_now_plus_the_duration() {
        let now = DateTime::parse_from_rfc3339("2030-01-31T12:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            time_after(now, Duration::days(30)).unwrap(),
            "2030-03-02T12:00:00Z"
        );
    }

    #[test]
    fn api_key_resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let local = dir.path().join("local");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&local).unwrap();

        // Nothing anywhere: no key.
        assert_eq!(
            resolve_api_key(None, "default", Some(&home), &local).unwrap(),
            None
        );

        // The local file is used when nothing else is.
        std::fs::write(local.join("owner.key"), "local-key\n").unwrap();
        assert_eq!(
            resolve_api_key(None, "default", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("local-key")
        );
        assert_eq!(
            resolve_api_key(None, "default", None, &local)
                .unwrap()
                .as_deref(),
            Some("local-key")
        );

        // $PUSHPOOL_HOME wins over the local file; an empty file there is skipped.
        std::fs::write(home.join("owner.key"), "  \n").unwrap();
        assert_eq!(
            resolve_api_key(None, "default", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("local-key")
        );
        std::fs::write(home.join("owner.key"), "  home-key \n").unwrap();
        assert_eq!(
            resolve_api_key(None, "default", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("home-key")
        );

        // The explicit key wins over both; a blank one does not count.
        assert_eq!(
            resolve_api_key(Some("flag-key"), "default", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("flag-key")
        );
        assert_eq!(
            resolve_api_key(Some(" "), "default", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("home-key")
        );
    }

    #[test]
    fn a_workspace_key_file_wins_over_the_owner_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let local = dir.path().join("local");
        std::fs::create_dir_all(home.join("keys")).unwrap();
        std::fs::create_dir_all(local.join("keys")).unwrap();
        std::fs::write(home.join("owner.key"), "owner-key\n").unwrap();
        let resolve =
            |ws: &str, home: Option<&Path>| resolve_api_key(None, ws, home, &local).unwrap();

        // No key file of the workspace: the owner key, as before.
        assert_eq!(resolve("team", Some(&home)).as_deref(), Some("owner-key"));

        // A key file of the workspace in the local home beats the owner key anywhere.
        std::fs::write(local.join("keys/team.key"), "local-team\n").unwrap();
        assert_eq!(resolve("team", Some(&home)).as_deref(), Some("local-team"));
        assert_eq!(resolve("team", None).as_deref(), Some("local-team"));

        // One under $PUSHPOOL_HOME beats the local one; an empty one is skipped.
        std::fs::write(home.join("keys/team.key"), "\n").unwrap();
        assert_eq!(resolve("team", Some(&home)).as_deref(), Some("local-team"));
        std::fs::write(home.join("keys/team.key"), " home-team \n").unwrap();
        assert_eq!(resolve("team", Some(&home)).as_deref(), Some("home-team"));

        // Other workspaces are not affected; the explicit key still wins.
        assert_eq!(
            resolve("default", Some(&home)).as_deref(),
            Some("owner-key")
        );
        assert_eq!(
            resolve_api_key(Some("flag-key"), "team", Some(&home), &local)
                .unwrap()
                .as_deref(),
            Some("flag-key")
        );

        // Workspace names that are not plain file names never reach outside `keys/`.
        std::fs::write(home.join("keys/x.key"), "nope\n").unwrap();
        assert_eq!(
            resolve("../keys/x", Some(&home)).as_deref(),
            Some("owner-key")
        );
        assert_eq!(
            resolve(".hidden", Some(&home)).as_deref(),
            Some("owner-key")
        );
        assert_eq!(workspace_key_file(&home, ""), None);
        assert_eq!(
            workspace_key_file(&home, "team"),
            Some(home.join("keys").join("team.key"))
        );
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("nested/home");

        // The directory is created; the file is written with mode 0600.
        let saved = save_key_file(&home, "team", "pp_first").unwrap();
        let file = home.join("keys/team.key");
        assert_eq!(saved, Saved::Written(file.clone()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "pp_first\n");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dir_mode = std::fs::metadata(home.join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0, "{dir_mode:o}");

        // A second save leaves the existing file alone.
        assert_eq!(
            save_key_file(&home, "team", "pp_second").unwrap(),
            Saved::Exists(file.clone())
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "pp_first\n");

        // The saved key is what the CLI then uses for that workspace.
        assert_eq!(
            resolve_api_key(None, "team", Some(&home), &dir.path().join("none"))
                .unwrap()
                .as_deref(),
            Some("pp_first")
        );

        // Names that are not plain file names are refused.
        assert!(matches!(
            save_key_file(&home, "../evil", "k"),
            Err(CliError::Usage(_))
        ));
        assert!(!home.join("evil.key").exists());
    }
}
