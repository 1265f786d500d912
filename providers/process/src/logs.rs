//! Forwarding a child's output to the run's [`LogSink`], line by line and bounded.

use std::sync::{Arc, Mutex};

use pushpool_provider::{LogSink, LogStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The log byte budget of one job, shared by its stdout and stderr readers.
#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: usize,
    truncated: bool,
}

/// What a reader may do with the line it holds.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// Forward it.
    Forward,
    /// The budget just ran out: send the truncation marker (only one reader gets this).
    Truncate,
    /// The budget ran out earlier: drop it.
    Drop,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget {
            max,
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// Reserves `bytes` of the budget.
    fn take(&self, bytes: usize) -> Take {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.truncated {
            return Take::Drop;
        }
        match st.used.checked_add(bytes) {
            Some(total) if total <= self.max => {
                st.used = total;
                Take::Forward
            }
            _ => {
                st.truncated = true;
                Take::Truncate
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .truncated
    }

    /// The line sent once when output is dropped.
    pub(crate) fn marker(&self) -> String {
        format!("[log output truncated after {} bytes]", self.max)
    }
}

/// Reads `reader` to its end and forwards each line to `sink` while the budget lasts; the rest is
/// read and discarded so that the child never blocks on a full pipe.
///
/// A line costs its length plus one byte for the newline. A line that does not fit the remaining
/// budget is not forwarded; it ends forwarding for the job and produces the truncation marker.
pub(crate) async fn forward<R: AsyncRead + Unpin>(
    reader: R,
    stream: LogStream,
    sink: Arc<dyn LogSink>,
    budget: Arc<Budget>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(err) => {
                tracing::debug!(stream = stream.as_str(), %err, "reading job output failed");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let available = buf.len();
        if budget.exhausted() {
            reader.consume(available);
            line.clear();
            continue;
        }
        // Memory stays bounded: a line longer than the budget can never be forwarded, so at most
        // `max + 1` bytes of it are kept, which is enough for `emit` to see that it does not fit.
        let room = (budget.max + 1).saturating_sub(line.len());
        match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                line.extend_from_slice(&buf[..pos.min(room)]);
                reader.consume(pos + 1);
                emit(&mut line, stream, sink.as_ref(), &budget);
            }
            None => {
                line.extend_from_slice(&buf[..available.min(room)]);
                reader.consume(available);
                if line.len() > budget.max {
                    emit(&mut line, stream, sink.as_ref(), &budget);
                }
            }
        }
    }
    if !line.is_empty() && !budget.exhausted() {
        emit(&mut line, stream, sink.as_ref(), &budget);
    }
}

fn emit(line: &mut Vec<u8>, stream: LogStream, sink: &dyn LogSink, budget: &Budget) {
    match budget.take(line.len() + 1) {
        Take::Forward => {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            sink.line(stream, String::from_utf8_lossy(line).into_owned());
        }
        Take::Truncate => sink.line(LogStream::System, budget.marker()),
        Take::Drop => {}
    }
    line.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(LogStream, String)>>);
    impl LogSink for Collect {
        fn line(&self, stream: LogStream, line: String) {
            self.0.lock().unwrap().push((stream, line));
        }
    }

    async fn run(input: &[u8], max: usize) -> Vec<(LogStream, String)> {
        let sink = Arc::new(Collect::default());
        forward(
            input,
            LogStream::Stdout,
            sink.clone(),
            Arc::new(Budget::new(max)),
        )
        .await;
        let lines = sink.0.lock().unwrap().clone();
        lines
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_last_partial_line() {
        let lines = run(b"a\r\nb\n\nc", 100).await;
        let texts: Vec<_> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["a", "b", "", "c"]);
    }

    #[tokio::test]
    async fn truncates_once_with_marker() {
        let lines = run(b"12345\n12345\n12345\n", 12).await;
        assert_eq!(
            lines,
            vec![
                (LogStream::Stdout, "12345".to_string()),
                (LogStream::Stdout, "12345".to_string()),
                (
                    LogStream::System,
                    "[log output truncated after 12 bytes]".to_string()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn overlong_line_is_not_buffered_without_bound() {
        let input = vec![b'x'; 100_000];
        let lines = run(&input, 1024).await;
        assert_eq!(
            lines,
            vec![(
                LogStream::System,
                "[log output truncated after 1024 bytes]".to_string()
            )]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced() {
        let lines = run(b"a\xffb\n", 100).await;
        assert_eq!(lines[0].1, "a\u{fffd}b");
    }
}
