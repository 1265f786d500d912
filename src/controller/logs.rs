//! Job log lines, written to the control plane in batches off the job's path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushpool_provider::{LogSink, LogStream, TailLine};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::plane::{ControlPlane, LogEntry};
use crate::model::now_micros;

/// Most lines buffered before new ones are dropped.
const BUFFER_LINES: usize = 50_000;
/// Most messages taken into one batch.
const BATCH_LINES: usize = 5000;

/// Writes job log lines to the control plane in batches, off the job's path.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<LogMsg>,
}

enum LogMsg {
    Line(Uuid, i64, &'static str, String),
    Flush(oneshot::Sender<()>),
}

/// Most lines a run's [`RunTail`] keeps.
const TAIL_LINES: usize = 60;

/// The last lines a run's job wrote (all streams), kept in memory for its error summary.
#[derive(Clone, Default)]
pub struct RunTail(Arc<Mutex<VecDeque<TailLine>>>);

impl RunTail {
    fn push(&self, stream: LogStream, line: &str) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(TailLine::new(stream, line));
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<TailLine> {
        let tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect()
    }
}

struct RunLogSink {
    run_id: Uuid,
    tx: mpsc::Sender<LogMsg>,
    tail: RunTail,
}

impl LogSink for RunLogSink {
    fn line(&self, stream: LogStream, line: String) {
        self.line_at(stream, now_micros(), line);
    }

    fn line_at(&self, stream: LogStream, timestamp_micros: i64, line: String) {
        self.tail.push(stream, &line);
        // A full buffer drops lines rather than stalling the job's output pipe.
        let _ = self.tx.try_send(LogMsg::Line(
            self.run_id,
            timestamp_micros,
            stream.as_str(),
            line,
        ));
    }
}

impl LogWriter {
    /// Starts the writer task.
    pub fn spawn(plane: Arc<dyn ControlPlane>) -> Self {
        let (tx, mut rx) = mpsc::channel::<LogMsg>(BUFFER_LINES);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch: HashMap<Uuid, Vec<LogEntry>> = HashMap::new();
                let mut flushes = vec![];
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(msg) = next.take() {
                    match msg {
                        LogMsg::Line(run, ts, stream, line) => batch
                            .entry(run)
                            .or_default()
                            .push((ts, stream.to_string(), line)),
                        LogMsg::Flush(done) => flushes.push(done),
                    }
                    taken += 1;
                    if taken < BATCH_LINES {
                        next = rx.try_recv().ok();
                    }
                }
                for (run, lines) in batch {
                    if let Err(e) = plane.append_logs(run, &lines).await {
                        tracing::warn!(run_id = %run, error = %e, "could not store log lines");
                    }
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
        });
        LogWriter { tx }
    }

    /// A sink for one run's lines.
    pub fn sink(&self, run_id: Uuid) -> Arc<dyn LogSink> {
        self.sink_with_tail(run_id).0
    }

    /// A sink for one run's lines, and the tail it keeps of them.
    pub fn sink_with_tail(&self, run_id: Uuid) -> (Arc<dyn LogSink>, RunTail) {
        let tail = RunTail::default();
        let sink = Arc::new(RunLogSink {
            run_id,
            tx: self.tx.clone(),
            tail: tail.clone(),
        });
        (sink, tail)
    }

    /// Waits until every line sent before this call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(LogMsg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}
