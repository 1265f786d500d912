//! `run watch` and `deployment run --watch`: a live display of a run's state transitions.
//!
//! The run's state history is polled every 200 ms and every new entry is printed as one line, so a
//! transition that is over before the next poll (PENDING → RUNNING in a few milliseconds) still
//! shows. Elapsed times are measured from the watch start, or from the run's first recorded
//! transition when that is earlier (so an older run shows its own timeline).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::api::Api;
use super::output::{cell, default_state_name, emit, pretty};

/// How often the history is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long requests may keep failing before the user is told.
const QUIET_FAILURES: Duration = Duration::from_secs(5);
/// Spinner frames.
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// The exit code a run ending in `state_type` gives: 0 for COMPLETED, 2 for the other terminal
/// states, `None` while the run is not terminal.
pub fn exit_code_for(state_type: &str) -> Option<i32> {
    match state_type {
        "COMPLETED" => Some(0),
        "FAILED" | "CRASHED" | "CANCELLED" => Some(2),
        _ => None,
    }
}

/// A duration for people: `0.4s`, `12.3s`, `2m05.0s`, `1h02m03s`.
pub fn format_elapsed(elapsed: Duration) -> String {
    let tenths = elapsed.as_millis() / 100;
    let seconds = tenths / 10;
    if seconds < 60 {
        format!("{}.{}s", seconds, tenths % 10)
    } else if seconds < 3600 {
        format!("{}m{:02}.{}s", seconds / 60, seconds % 60, tenths % 10)
    } else {
        format!(
            "{}h{:02}m{:02}s",
            seconds / 3600,
            (seconds / 60) % 60,
            seconds % 60
        )
    }
}

/// Time from `origin` to `at`, zero when `at` is earlier.
fn since(origin: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - origin).to_std().unwrap_or(Duration::ZERO)
}

fn entry_time(entry: &Value) -> Option<DateTime<Utc>> {
    entry
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn entry_type(entry: &Value) -> &str {
    entry.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// One line for a history entry:
/// `HH:MM:SS  +<elapsed>  <TYPE>  <name if not the default>  <message>` (time in UTC).
pub fn watch_line(entry: &Value, origin: DateTime<Utc>) -> String {
    let state_type = entry_type(entry);
    let (clock, elapsed) = match entry_time(entry) {
        Some(at) => (
            at.format("%H:%M:%S").to_string(),
            format!("+{}", format_elapsed(since(origin, at))),
        ),
        None => ("--:--:--".to_string(), "+?".to_string()),
    };
    let mut line = format!("{clock}  {elapsed:<8}  {state_type:<10}");
    if let Some(name) = entry.get("name").and_then(Value::as_str) {
        if !name.is_empty() && name != default_state_name(state_type) {
            line.push_str("  ");
            line.push_str(&cell(name));
        }
    }
    if let Some(message) = entry.get("message").and_then(Value::as_str) {
        let message = cell(message);
        if !message.trim().is_empty() {
            line.push_str("  ");
            line.push_str(message.trim());
        }
    }
    line.trim_end().to_string()
}

/// The final line: `run <id> COMPLETED in 3.4s`.
pub fn summary_line(id: &str, state_type: &str, elapsed: Duration) -> String {
    format!("run {id} {state_type} in {}", format_elapsed(elapsed))
}

/// Where the transition lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Transition and summary lines on stdout (table mode).
    Stdout,
    /// Transition and summary lines on stderr; the final run JSON on stdout (`-o json`).
    StderrThenJson,
}

/// The spinner line on stderr, only when stderr is a terminal.
struct Spinner {
    enabled: bool,
    frame: usize,
    shown: bool,
}

impl Spinner {
    fn draw(&mut self, state: &str, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let frame = FRAMES[self.frame % FRAMES.len()];
        self.frame += 1;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{frame} {state}  {}", format_elapsed(elapsed));
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

fn say(lines: Lines, text: &str) {
    match lines {
        Lines::Stdout => emit(text),
        Lines::StderrThenJson => eprintln!("{text}"),
    }
}

/// Watches run `id` until it is terminal; returns the exit code (0 COMPLETED, 2 another terminal
/// state, 1 when the run is gone or the API refuses).
pub async fn watch(api: &Api, id: &str, lines: Lines) -> i32 {
    let started = Instant::now();
    let started_at = Utc::now();
    let url = api.ws_url(&["flow_runs", id, "states"]);
    let mut spinner = Spinner {
        enabled: std::io::stderr().is_terminal(),
        frame: 0,
        shown: false,
    };
    let mut origin: Option<DateTime<Utc>> = None;
    let mut seen = 0usize;
    let mut current = String::from("waiting");
    let mut failing_since: Option<Instant> = None;
    let mut warned = false;
    loop {
        match api.get(url.clone()).await {
            Ok(history) => {
                if warned {
                    spinner.clear();
                    eprintln!("reconnected to the pushpool API");
                }
                failing_since = None;
                warned = false;
                let Some(entries) = history.as_array() else {
                    spinner.clear();
                    eprintln!(
                        "error: the API answered the state history with something else than a list"
                    );
                    return 1;
                };
                let origin = *origin.get_or_insert_with(|| {
                    entries
                        .first()
                        .and_then(entry_time)
                        .map_or(started_at, |first| first.min(started_at))
                });
                if entries.len() < seen {
                    seen = 0;
                }
                for entry in &entries[seen..] {
                    spinner.clear();
                    say(lines, &watch_line(entry, origin));
                }
                seen = entries.len();
                if let Some(last) = entries.last() {
                    current = entry_type(last).to_string();
                    if let Some(code) = exit_code_for(&current) {
                        spinner.clear();
                        let elapsed = entry_time(last)
                            .map_or_else(|| started.elapsed(), |at| since(origin, at));
                        say(lines, &summary_line(id, &current, elapsed));
                        if lines == Lines::StderrThenJson {
                            match api.get(api.ws_url(&["flow_runs", id])).await {
                                Ok(run) => emit(&pretty(&run)),
                                Err(e) => {
                                    eprintln!("error: {e}");
                                    return 1;
                                }
                            }
                        }
                        return code;
                    }
                }
            }
            Err(e) if e.is_transient() => {
                let first = *failing_since.get_or_insert_with(Instant::now);
                if !warned && first.elapsed() >= QUIET_FAILURES {
                    spinner.clear();
                    eprintln!(
                        "warning: {e}; still retrying (failing for {})",
                        format_elapsed(first.elapsed())
                    );
                    warned = true;
                }
            }
            Err(e) => {
                spinner.clear();
                eprintln!("error: {e}");
                return 1;
            }
        }
        let elapsed = origin.map_or_else(|| started.elapsed(), |o| since(o, Utc::now()));
        spinner.draw(&current, elapsed);
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn elapsed_times_read_well() {
        assert_eq!(format_elapsed(Duration::from_millis(0)), "0.0s");
        assert_eq!(format_elapsed(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_elapsed(Duration::from_millis(59_990)), "59.9s");
        assert_eq!(format_elapsed(Duration::from_millis(125_000)), "2m05.0s");
        assert_eq!(format_elapsed(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn watch_lines_show_type_name_and_message() {
        let entry = json!({"type": "RUNNING", "name": "Running", "message": null,
                           "timestamp": "2030-01-31T12:00:01.234Z", "transition_id": "t"});
        assert_eq!(watch_line(&entry, origin()), "12:00:01  +1.2s     RUNNING");
        let entry = json!({"type": "SCHEDULED", "name": "Late", "message": "due 3s ago",
                           "timestamp": "2030-01-31T13:00:03+01:00", "transition_id": "t"});
        assert_eq!(
            watch_line(&entry, origin()),
            "12:00:03  +3.0s     SCHEDULED   Late  due 3s ago"
        );
        let entry = json!({"type": "FAILED", "name": "Failed", "message": "exit code 1\nboom",
                           "timestamp": "2030-01-31T12:01:05Z", "transition_id": "t"});
        assert_eq!(
            watch_line(&entry, origin()),
            "12:01:05  +1m05.0s  FAILED      exit code 1 boom"
        );
    }

    #[test]
    fn entries_before_the_origin_show_zero() {
        let entry = json!({"type": "PENDING", "name": "Pending",
                           "timestamp": "2030-01-31T11:59:59Z"});
        assert_eq!(watch_line(&entry, origin()), "11:59:59  +0.0s     PENDING");
    }

    #[test]
    fn summary_lines() {
        assert_eq!(
            summary_line("0191", "COMPLETED", Duration::from_millis(3400)),
            "run 0191 COMPLETED in 3.4s"
        );
    }

    #[test]
    fn exit_codes_from_terminal_states() {
        assert_eq!(exit_code_for("COMPLETED"), Some(0));
        for state in ["FAILED", "CRASHED", "CANCELLED"] {
            assert_eq!(exit_code_for(state), Some(2), "{state}");
        }
        for state in ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"] {
            assert_eq!(exit_code_for(state), None, "{state}");
        }
    }
}
