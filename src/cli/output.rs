//! Rendering of API objects for people: aligned tables, key/value blocks, times in UTC.

use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Writes `text` and a newline to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Pretty JSON.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Columns separated by two spaces, each as wide as its widest cell, with a header row. The last
/// column is not padded, so lines carry no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < columns {
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines.join("\n")
}

/// `key:  value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let key = format!("{k}:");
            format!("{key:<width$}  {v}").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A time as RFC 3339 seconds in UTC (`2030-01-31T12:00:00Z`); `-` for null, the raw text when it
/// does not parse.
pub fn time(value: &Value) -> String {
    match value {
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            Err(_) => cell(s),
        },
        Value::Null => "-".to_string(),
        other => text(other),
    }
}

/// A value as one table cell: strings as is, null as `-`, anything else as compact JSON; control
/// characters (newlines) become spaces.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => cell(s),
        Value::Null => "-".to_string(),
        other => cell(&other.to_string()),
    }
}

/// Replaces control characters (newlines, tabs, escapes) with spaces so a cell stays on its line.
pub fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Untrusted text (job output) made safe to print on a terminal: every control character except
/// tab (C0 incl. ESC, DEL, C1, and a newline or carriage return inside one line) is written as a
/// visible escape (`\x1b`, `\n`, `\r`), so escape sequences never reach the terminal raw.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The default sub-state name of a state type: `RUNNING` → `Running`.
pub fn default_state_name(state_type: &str) -> String {
    let lower = state_type.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// The state's type, and its name when that is not the default: `RUNNING`, `SCHEDULED/Late`.
pub fn state_label(state: &Value) -> String {
    let state_type = state.get("type").and_then(Value::as_str).unwrap_or("?");
    match state.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() && name != default_state_name(state_type) => {
            format!("{state_type}/{}", cell(name))
        }
        _ => state_type.to_string(),
    }
}

/// Field `key` of `object` as a cell.
pub fn field(object: &Value, key: &str) -> String {
    text(object.get(key).unwrap_or(&Value::Null))
}

/// Field `key` of `object` as a time.
pub fn time_field(object: &Value, key: &str) -> String {
    time(object.get(key).unwrap_or(&Value::Null))
}

/// The items of a list answer (an empty list for anything else).
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A list answer as a [`table`] with these headers, one row per item.
pub fn list_table(list: &Value, headers: &[&str], row: impl Fn(&Value) -> Vec<String>) -> String {
    let rows: Vec<Vec<String>> = items(list).iter().map(row).collect();
    table(headers, &rows)
}

/// One column of a [`columns_table`]: its header and the item field it shows.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    header: &'static str,
    key: &'static str,
    is_time: bool,
}

impl Column {
    /// A column showing field `key` as text.
    pub const fn field(header: &'static str, key: &'static str) -> Self {
        Self {
            header,
            key,
            is_time: false,
        }
    }

    /// A column showing field `key` as a time.
    pub const fn time(header: &'static str, key: &'static str) -> Self {
        Self {
            header,
            key,
            is_time: true,
        }
    }

    fn cell(&self, item: &Value) -> String {
        if self.is_time {
            time_field(item, self.key)
        } else {
            field(item, self.key)
        }
    }
}

/// A list answer as a [`table`] of these columns, one row per item.
pub fn columns_table(list: &Value, columns: &[Column]) -> String {
    let headers: Vec<&str> = columns.iter().map(|c| c.header).collect();
    list_table(list, &headers, |item| {
        columns.iter().map(|c| c.cell(item)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rendered = table(
            &["NAME", "TYPE", "LIMIT"],
            &[
                vec!["a".into(), "process".into(), "-".into()],
                vec!["longer-name".into(), "aws-lambda:push".into(), "10".into()],
            ],
        );
        assert_eq!(
            rendered,
            "NAME         TYPE             LIMIT\n\
             a            process          -\n\
             longer-name  aws-lambda:push  10"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let rendered = table(
            &["A", "B"],
            &[vec!["é".into(), "x".into()], vec!["ab".into(), "".into()]],
        );
        assert_eq!(rendered, "A   B\né   x\nab");
    }

    #[test]
    fn empty_tables_have_just_the_header() {
        assert_eq!(table(&["ID", "STATE"], &[]), "ID  STATE");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("name", "p".into()), ("concurrency_limit", "-".into())]),
            "name:               p\nconcurrency_limit:  -"
        );
    }

    #[test]
    fn times_are_rfc3339_seconds_in_utc() {
        assert_eq!(
            time(&json!("2030-01-31T13:00:00.123456+01:00")),
            "2030-01-31T12:00:00Z"
        );
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(time(&json!("soon")), "soon");
    }

    #[test]
    fn state_labels_show_non_default_names() {
        assert_eq!(
            state_label(&json!({"type": "RUNNING", "name": "Running"})),
            "RUNNING"
        );
        assert_eq!(
            state_label(&json!({"type": "SCHEDULED", "name": "Late"})),
            "SCHEDULED/Late"
        );
        assert_eq!(default_state_name("CANCELLING"), "Cancelling");
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(text(&json!("a\nb")), "a b");
        assert_eq!(text(&json!({"k": 1})), r#"{"k":1}"#);
        assert_eq!(text(&json!("")), "-");
    }
}
