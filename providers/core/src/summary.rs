//! Error summaries: why a FAILED or CRASHED run ended, computed without a language model from the
//! provider's status message and the run's last log lines.
//!
//! A summary is a short, stable [`Cause`], a one-line explanation and a few evidence lines (the
//! last line of a Python traceback, Lambda's `errorType: errorMessage`, Cloud Run's condition
//! message, an exit code with its signal name). Each provider may add its own rules through
//! [`crate::Provider::summarize`]; the rules every provider shares live here in [`common`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::LogStream;

/// Most evidence lines a summary keeps.
pub const MAX_EVIDENCE: usize = 4;
/// Most characters of one evidence line (longer lines are cut, with `…`).
pub const MAX_EVIDENCE_CHARS: usize = 300;
/// Most characters of the explanation.
pub const MAX_EXPLANATION_CHARS: usize = 400;

/// Why a run failed, as a short stable word (it goes into events, notifications and scripts).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The job ran out of time (its own timeout, the provider's, or pushpool's watchdog).
    Timeout,
    /// The job ran out of memory.
    OutOfMemory,
    /// The job or pushpool lacked a permission.
    PermissionDenied,
    /// Something the job needs does not exist (the image, the function, a file).
    NotFound,
    /// The provider refused the work for now (rate or concurrency limits).
    Throttled,
    /// The job configuration is not usable.
    InvalidConfiguration,
    /// The job's own code failed (an exception, a non-zero exit code).
    UserCodeError,
    /// The infrastructure running the job went away, or pushpool lost sight of it.
    InfrastructureLost,
    /// The provider cancelled the job (not a pushpool cancellation).
    CancelledByProvider,
    /// None of the rules recognised what happened.
    Unknown,
}

impl Cause {
    /// Every cause, in declaration order.
    pub const ALL: &'static [Cause] = &[
        Cause::Timeout,
        Cause::OutOfMemory,
        Cause::PermissionDenied,
        Cause::NotFound,
        Cause::Throttled,
        Cause::InvalidConfiguration,
        Cause::UserCodeError,
        Cause::InfrastructureLost,
        Cause::CancelledByProvider,
        Cause::Unknown,
    ];

    /// The stable snake_case name (`timeout`, `out_of_memory`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::OutOfMemory => "out_of_memory",
            Cause::PermissionDenied => "permission_denied",
            Cause::NotFound => "not_found",
            Cause::Throttled => "throttled",
            Cause::InvalidConfiguration => "invalid_configuration",
            Cause::UserCodeError => "user_code_error",
            Cause::InfrastructureLost => "infrastructure_lost",
            Cause::CancelledByProvider => "cancelled_by_provider",
            Cause::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run failed: cause, one-line explanation, the few lines that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorSummary {
    /// The stable cause.
    pub cause: Cause,
    /// One line for a human.
    pub explanation: String,
    /// At most [`MAX_EVIDENCE`] lines from the status and the logs that show the cause.
    pub evidence: Vec<String>,
}

impl ErrorSummary {
    /// A summary with `cause` and `explanation` (cut to one line of at most
    /// [`MAX_EXPLANATION_CHARS`]) and no evidence yet.
    pub fn new(cause: Cause, explanation: impl Into<String>) -> Self {
        ErrorSummary {
            cause,
            explanation: one_line(&explanation.into(), MAX_EXPLANATION_CHARS),
            evidence: vec![],
        }
    }

    /// Adds an evidence line (cut to [`MAX_EVIDENCE_CHARS`]); blank lines, repeats and lines
    /// past [`MAX_EVIDENCE`] are skipped.
    pub fn with_evidence(mut self, line: impl AsRef<str>) -> Self {
        let line = one_line(line.as_ref(), MAX_EVIDENCE_CHARS);
        if !line.is_empty() && self.evidence.len() < MAX_EVIDENCE && !self.evidence.contains(&line)
        {
            self.evidence.push(line);
        }
        self
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// FAILED: the job itself failed.
    Failed,
    /// CRASHED: something outside the job ended it.
    Crashed,
}

/// One recent log line of the run (any stream), as the summary rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailLine {
    /// Where it came from.
    pub stream: LogStream,
    /// The text.
    pub line: String,
}

impl TailLine {
    /// A line of `stream`.
    pub fn new(stream: LogStream, line: impl Into<String>) -> Self {
        TailLine {
            stream,
            line: line.into(),
        }
    }
}

/// What the summary rules look at: how the run ended, the state message, the last log lines
/// (oldest first; pushpool's own `system` lines included).
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    /// FAILED or CRASHED.
    pub ending: Ending,
    /// The message of the terminal state.
    pub message: &'a str,
    /// The run's last log lines, oldest first.
    pub logs: &'a [TailLine],
}

impl RunEnd<'_> {
    /// The job's own lines (stdout, stderr, provider), oldest first.
    pub fn job_lines(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.logs
            .iter()
            .filter(|l| l.stream != LogStream::System)
            .map(|l| l.line.as_str())
    }
}

/// Collapses whitespace runs (newlines included) to one space, trims, and cuts to `max` chars.
pub fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn has_any(haystack: &str, needles: &[&str]) -> bool {
    let lower = haystack.to_ascii_lowercase();
    needles.iter().any(|n| lower.contains(n))
}

/// The name of a POSIX signal number (`9` → `SIGKILL`).
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// The last exception line of the last Python traceback in `lines` (`ValueError: boom`), with
/// its exception type; `None` when there is no traceback.
pub fn python_exception<'a>(
    lines: impl DoubleEndedIterator<Item = &'a str>,
) -> Option<(String, String)> {
    let lines: Vec<&str> = lines.collect();
    let start = lines.iter().rposition(|l| {
        l.trim_start()
            .starts_with("Traceback (most recent call last):")
    })?;
    // The exception line is the first unindented line after the frames (`  File …`, code lines).
    let line = lines[start + 1..]
        .iter()
        .map(|l| l.trim_end())
        .find(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('\t'))?;
    let kind = line
        .split(':')
        .next()
        .unwrap_or(line)
        .trim()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let looks_like_type = !kind.is_empty()
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && kind.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    looks_like_type.then(|| (kind, line.to_string()))
}

/// An exit code stated in `text`: `exit code 3`, `exited with code 3`, `exit status 3`,
/// `exit(3)`, `exit code of 3`.
pub fn exit_code(text: &str) -> Option<i32> {
    let lower = text.to_ascii_lowercase();
    for marker in [
        "exit code of ",
        "exit code ",
        "exited with code ",
        "exit status ",
        "exit(",
        "exit code: ",
    ] {
        if let Some(pos) = lower.rfind(marker) {
            let digits: String = lower[pos + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            if let Ok(code) = digits.parse() {
                return Some(code);
            }
        }
    }
    None
}

/// A signal stated in `text`: `signal 9`, `signal: killed`, `killed by signal SIGKILL`,
/// `terminated on signal 9`.
pub fn signal(text: &str) -> Option<i32> {
    let lower = text.to_ascii_lowercase();
    let pos = lower.rfind("signal")?;
    let rest = lower[pos + "signal".len()..].trim_start_matches([' ', ':']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if let Ok(n) = digits.parse() {
        return Some(n);
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let word = word.trim_start_matches("sig");
    (1..=15).find(|n| {
        signal_name(*n).is_some_and(|name| name[3..].eq_ignore_ascii_case(word))
            || (word == "killed" && *n == 9)
            || (word == "terminated" && *n == 15)
    })
}

/// `exit code 137 (SIGKILL)`: an exit code with the signal it stands for (shells report a job
/// killed by signal n as 128 + n).
pub fn describe_exit(code: i32) -> String {
    match code
        .checked_sub(128)
        .filter(|n| *n > 0)
        .and_then(signal_name)
    {
        Some(name) => format!("exit code {code} ({name})"),
        None => format!("exit code {code}"),
    }
}

fn log_matching<'a>(end: &'a RunEnd<'_>, needles: &[&str]) -> Option<&'a str> {
    end.job_lines().rev().find(|l| has_any(l, needles))
}

const TIMEOUT: &[&str] = &["timed out", "timeout was reached", "deadline exceeded"];
const OUT_OF_MEMORY: &[&str] = &[
    "out of memory",
    "outofmemory",
    "oomkilled",
    "memory limit of",
    "cannot allocate memory",
];
const LOST: &[&str] = &[
    "lost contact",
    "no longer exists at the",
    "outcome is unknown",
    "outcome unknown",
    "vanished",
];
const THROTTLED: &[&str] = &[
    "throttl",
    "toomanyrequests",
    "too many requests",
    "rate exceeded",
    "resource_exhausted",
    "http 429",
];
const DENIED: &[&str] = &[
    "accessdenied",
    "access denied",
    "permission_denied",
    "permission denied",
    "not authorized",
    "forbidden",
    "unauthorized",
];
const INVALID: &[&str] = &[
    "invalid job configuration",
    "rejected the job configuration",
    "invalid_argument",
    "invalidparametervalue",
    "validationexception",
];
const MISSING: &[&str] = &[
    "resourcenotfound",
    "not_found",
    "not found",
    "does not exist",
    "manifest unknown",
];

/// The summary a rule table gives `text`, if one of its entries matches.
fn by_message(text: &str) -> Option<ErrorSummary> {
    let rules: [(&[&str], Cause, &str); 7] = [
        (
            TIMEOUT,
            Cause::Timeout,
            "the job ran longer than it was allowed to and was stopped",
        ),
        (
            OUT_OF_MEMORY,
            Cause::OutOfMemory,
            "the job ran out of memory; give it more or make it use less",
        ),
        (
            LOST,
            Cause::InfrastructureLost,
            "pushpool lost sight of the infrastructure running the job; its outcome is unknown",
        ),
        (
            THROTTLED,
            Cause::Throttled,
            "the provider refused the work because a rate or concurrency limit was reached",
        ),
        (
            DENIED,
            Cause::PermissionDenied,
            "a call was refused for lack of permission; check the credentials and their roles",
        ),
        (
            INVALID,
            Cause::InvalidConfiguration,
            "the job configuration is not usable; fix the job variable or template field it names",
        ),
        (
            MISSING,
            Cause::NotFound,
            "something the job needs does not exist (the image, the function, a file)",
        ),
    ];
    rules
        .iter()
        .find(|(needles, _, _)| has_any(text, needles))
        .map(|(_, cause, why)| ErrorSummary::new(*cause, *why).with_evidence(text))
}

/// Rules shared by every provider, in order: what the state message says (timeout, out of
/// memory, lost infrastructure, throttling, permissions, invalid configuration, missing things);
/// a Python exception in the logs; timeout or out-of-memory lines in the logs; an exit code or
/// signal in the message; a cancellation by the provider. Falls back to [`Cause::Unknown`] with
/// the state message and the last error line as evidence.
pub fn common(end: &RunEnd<'_>) -> ErrorSummary {
    let exit = exit_code(end.message);
    let exit_line = exit.filter(|c| *c != 0).map(describe_exit);
    if let Some(summary) = by_message(end.message) {
        return summary;
    }
    if let Some((kind, line)) = python_exception(end.job_lines()) {
        let (cause, why) = match kind.as_str() {
            "MemoryError" => (
                Cause::OutOfMemory,
                "the job's Python code ran out of memory (MemoryError)".to_string(),
            ),
            _ => (
                Cause::UserCodeError,
                format!("the job's Python code raised {kind}"),
            ),
        };
        return ErrorSummary::new(cause, why)
            .with_evidence(line)
            .with_evidence(exit_line.unwrap_or_default());
    }
    if let Some(line) = log_matching(end, TIMEOUT) {
        return ErrorSummary::new(
            Cause::Timeout,
            "the job ran longer than it was allowed to and was stopped",
        )
        .with_evidence(line);
    }
    if let Some(line) = log_matching(end, OUT_OF_MEMORY) {
        return ErrorSummary::new(
            Cause::OutOfMemory,
            "the job ran out of memory; give it more or make it use less",
        )
        .with_evidence(line);
    }
    let by_signal = signal(end.message).or_else(|| {
        exit.and_then(|c| c.checked_sub(128))
            .filter(|n| signal_name(*n).is_some())
    });
    if let Some(n) = by_signal {
        let name = signal_name(n).unwrap_or("a signal");
        let what = exit_line.unwrap_or_else(|| format!("signal {n} ({name})"));
        return ErrorSummary::new(
            Cause::Unknown,
            format!("the job was killed by {name} from outside it (the out-of-memory killer, a stop, or its host going away)"),
        )
        .with_evidence(what)
        .with_evidence(last_job_line(end).unwrap_or_default());
    }
    if let Some(what) = exit_line {
        return ErrorSummary::new(
            Cause::UserCodeError,
            format!("the job's command ended with {what}"),
        )
        .with_evidence(what)
        .with_evidence(last_error_line(end).unwrap_or_default());
    }
    if has_any(end.message, &["cancelled", "canceled"]) {
        return ErrorSummary::new(
            Cause::CancelledByProvider,
            "the provider cancelled the job (not pushpool)",
        )
        .with_evidence(end.message);
    }
    ErrorSummary::new(
        Cause::Unknown,
        "no rule recognised why the job failed; see the message and the logs",
    )
    .with_evidence(end.message)
    .with_evidence(last_error_line(end).unwrap_or_default())
}

/// The job's last line of stderr (or of any stream when it wrote none to stderr).
pub fn last_error_line<'a>(end: &'a RunEnd<'_>) -> Option<&'a str> {
    end.logs
        .iter()
        .rev()
        .find(|l| l.stream == LogStream::Stderr && !l.line.trim().is_empty())
        .map(|l| l.line.as_str())
        .or_else(|| last_job_line(end))
}

/// The job's last non-blank line, of any stream but pushpool's own.
pub fn last_job_line<'a>(end: &'a RunEnd<'_>) -> Option<&'a str> {
    end.job_lines().rev().find(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests;
