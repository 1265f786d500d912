//! Job log lines of a run, bounded in bytes: per run on write ([`RUN_LOG_QUOTA_BYTES`]) and per
//! page on read ([`LOG_PAGE_BYTES`]).

use sqlx::Row;
use uuid::Uuid;

use crate::model::{from_micros, LogLine, Micros};
use crate::store::sql::{insert_rows, storable};
use crate::store::{Backend, Result, Store};

/// Most bytes of log lines one run keeps (10 MiB). Lines past it are dropped, one
/// [`quota_marker`] line says so. Every path that appends logs (job-reported through the run
/// token, the controller's log sink) goes through [`Store::append_logs`], so it holds for all.
pub const RUN_LOG_QUOTA_BYTES: i64 = 10 * 1024 * 1024;

/// Most bytes of log lines one page read returns (1 MiB; a page always holds at least one line).
pub const LOG_PAGE_BYTES: i64 = 1024 * 1024;

/// The stream of the line that says the quota was reached.
const MARKER_STREAM: &str = "stderr";

/// The line stored once, when a run's log quota is reached.
pub fn quota_marker() -> String {
    format!("pushpool: this run's log quota of {RUN_LOG_QUOTA_BYTES} bytes is reached; further lines are dropped")
}

impl Store {
    /// Appends log lines to a run, within its byte quota; returns how many lines were kept.
    pub async fn append_logs(
        &self,
        run_id: Uuid,
        lines: &[(Micros, String, String)],
    ) -> Result<usize> {
        if lines.is_empty() {
            return Ok(0);
        }
        let marker = quota_marker();
        let mut tx = self.begin().await?;
        let usage = format!(
            "SELECT COALESCE(SUM({}), 0) AS used, \
             COALESCE(SUM(CASE WHEN line = $2 THEN 1 ELSE 0 END), 0) AS markers \
             FROM run_logs WHERE run_id = $1",
            self.byte_length("line")
        );
        let row = sqlx::query(&usage)
            .bind(run_id.to_string())
            .bind(marker.clone())
            .fetch_one(&mut *tx)
            .await?;
        let mut used: i64 = row.try_get("used")?;
        let markers: i64 = row.try_get("markers")?;
        let mut kept: Vec<(Micros, String, String)> = Vec::with_capacity(lines.len());
        if markers == 0 {
            for (ts, stream, line) in lines {
                let size = line.len() as i64;
                if used + size > RUN_LOG_QUOTA_BYTES {
                    kept.push((*ts, MARKER_STREAM.to_string(), marker.clone()));
                    break;
                }
                used += size;
                kept.push((
                    *ts,
                    storable(stream).into_owned(),
                    storable(line).into_owned(),
                ));
            }
        }
        let accepted = kept.iter().filter(|(_, _, l)| *l != marker).count();
        let head = "INSERT INTO run_logs (id, run_id, timestamp, stream, line)";
        insert_rows(&mut tx, head, 5, 200, &kept, |q, (ts, stream, line)| {
            q.bind(Uuid::now_v7().to_string())
                .bind(run_id.to_string())
                .bind(*ts)
                .bind(stream.clone())
                .bind(line.clone())
        })
        .await?;
        tx.commit().await?;
        Ok(accepted)
    }

    /// A run's log lines, oldest first: at most `limit` lines and, past the first line, at most
    /// [`LOG_PAGE_BYTES`] bytes (the database adds up the sizes, so a page of long lines is never
    /// loaded whole).
    pub async fn logs(&self, run_id: Uuid, limit: i64) -> Result<Vec<LogLine>> {
        self.logs_after(run_id, None, limit).await
    }

    /// Like [`Store::logs`], only lines stored after the line with id `after` (the follow
    /// cursor: ids are UUID v7, increasing in the order lines were stored).
    pub async fn logs_after(
        &self,
        run_id: Uuid,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LogLine>> {
        let len = self.byte_length("line");
        let sql = format!(
            "SELECT id, timestamp, stream, line FROM ( \
               SELECT id, timestamp, stream, line, \
                 SUM({len}) OVER (ORDER BY id) - {len} AS before_bytes \
               FROM run_logs WHERE run_id = $1 AND id > $4 \
             ) page WHERE before_bytes < $2 ORDER BY id LIMIT $3"
        );
        let query = sqlx::query(&sql)
            .bind(run_id.to_string())
            .bind(LOG_PAGE_BYTES)
            .bind(limit)
            .bind(after.unwrap_or("").to_string());
        self.fetch_rows(query, |row| {
            Ok(LogLine {
                id: row.try_get("id")?,
                timestamp: from_micros(row.try_get("timestamp")?),
                stream: row.try_get("stream")?,
                line: row.try_get("line")?,
            })
        })
        .await
    }

    /// SQL for the size in bytes (not characters) of a text column.
    fn byte_length(&self, column: &str) -> String {
        match self.backend() {
            Backend::Postgres => format!("octet_length({column})"),
            Backend::Sqlite => format!("length(CAST({column} AS BLOB))"),
        }
    }
}
