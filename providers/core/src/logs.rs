//! Reading a job's own logs from the provider's log service (CloudWatch Logs, Cloud Logging):
//! the lines a provider hands back and the cursor that pages, deduplicates and bounds them.

use std::collections::{HashSet, VecDeque};

/// Most lines one run takes from its provider's log service.
pub const DEFAULT_MAX_LINES: usize = 5_000;
/// Most bytes one run takes from its provider's log service (1 MiB).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Most bytes of one provider line (longer ones are cut).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// How many entry ids the cursor remembers for deduplication.
const SEEN_IDS: usize = 4_096;

/// One line of the job's log as the provider's log service stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderLogLine {
    /// The service's id of the entry (CloudWatch `eventId`, Cloud Logging `insertId`); the
    /// cursor drops an id it has seen.
    pub id: String,
    /// When the service says the line was written (Unix microseconds).
    pub timestamp_micros: i64,
    /// The text, without trailing newline.
    pub line: String,
}

/// Where reading a run's provider logs stands: the time to read from, the provider's page
/// token, the ids already taken, and the budget left. The controller keeps one per run; the
/// provider moves it forward in [`crate::Provider::read_logs`].
#[derive(Debug, Clone)]
pub struct LogCursor {
    /// Read entries at or after this time (Unix microseconds); `None` = from the start.
    pub since_micros: Option<i64>,
    /// The provider's token for the next page of the current query, if it stopped mid-way.
    pub page_token: Option<String>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    lines_left: usize,
    bytes_left: usize,
    dropped: bool,
}

impl Default for LogCursor {
    fn default() -> Self {
        LogCursor::new(DEFAULT_MAX_LINES, DEFAULT_MAX_BYTES)
    }
}

impl LogCursor {
    /// A cursor at the start, allowed `max_lines` lines and `max_bytes` bytes in all.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogCursor {
            since_micros: None,
            page_token: None,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            lines_left: max_lines,
            bytes_left: max_bytes,
            dropped: false,
        }
    }

    /// True once the budget is spent: further reads are pointless.
    pub fn exhausted(&self) -> bool {
        self.lines_left == 0 || self.bytes_left == 0
    }

    /// True when a line was refused for the budget (say so once in the log).
    pub fn dropped_lines(&self) -> bool {
        self.dropped
    }

    /// Takes a line the provider read: `None` for an id already taken or past the budget. A
    /// taken line moves [`LogCursor::since_micros`] forward to its timestamp (the next query
    /// repeats that instant, and the ids drop the repeats).
    pub fn accept(&mut self, mut line: ProviderLogLine) -> Option<ProviderLogLine> {
        if self.seen.contains(&line.id) {
            return None;
        }
        if self.exhausted() {
            self.dropped = true;
            return None;
        }
        if line.line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.line.truncate(cut);
            line.line.push('…');
        }
        if line.line.len() > self.bytes_left {
            self.bytes_left = 0;
            self.dropped = true;
            return None;
        }
        self.bytes_left -= line.line.len();
        self.lines_left -= 1;
        self.remember(line.id.clone());
        self.since_micros = Some(
            self.since_micros
                .map_or(line.timestamp_micros, |s| s.max(line.timestamp_micros)),
        );
        Some(line)
    }

    fn remember(&mut self, id: String) {
        if self.seen_order.len() == SEEN_IDS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.clone());
        self.seen_order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, ts: i64, text: &str) -> ProviderLogLine {
        ProviderLogLine {
            id: id.into(),
            timestamp_micros: ts,
            line: text.into(),
        }
    }

    #[test]
    fn repeats_are_dropped_and_the_cursor_moves_to_the_newest_line() {
        let mut c = LogCursor::default();
        assert!(c.accept(line("a", 10, "one")).is_some());
        assert!(c.accept(line("b", 30, "two")).is_some());
        assert!(c.accept(line("a", 10, "one")).is_none());
        assert!(c.accept(line("c", 20, "late")).is_some());
        assert_eq!(c.since_micros, Some(30));
    }

    #[test]
    fn the_budget_bounds_lines_and_bytes() {
        let mut c = LogCursor::new(2, 1000);
        assert!(c.accept(line("a", 1, "x")).is_some());
        assert!(c.accept(line("b", 2, "y")).is_some());
        assert!(c.exhausted());
        assert!(c.accept(line("c", 3, "z")).is_none());
        assert!(c.dropped_lines());
        let mut c = LogCursor::new(100, 5);
        assert!(c.accept(line("a", 1, "abc")).is_some());
        assert!(c.accept(line("b", 2, "defg")).is_none());
        let mut c = LogCursor::default();
        let long = c.accept(line("l", 1, &"é".repeat(MAX_LINE_BYTES))).unwrap();
        assert!(long.line.len() <= MAX_LINE_BYTES + '…'.len_utf8());
    }
}
