//! Job log lines of a run.

use sqlx::Row;
use uuid::Uuid;

use crate::model::{from_micros, LogLine, Micros};
use crate::store::sql::insert_rows;
use crate::store::{Result, Store};

impl Store {
    /// Appends log lines to a run.
    pub async fn append_logs(
        &self,
        run_id: Uuid,
        lines: &[(Micros, String, String)],
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let head = "INSERT INTO run_logs (id, run_id, timestamp, stream, line)";
        insert_rows(&mut tx, head, 5, 200, lines, |q, (ts, stream, line)| {
            q.bind(Uuid::now_v7().to_string())
                .bind(run_id.to_string())
                .bind(*ts)
                .bind(stream.clone())
                .bind(line.clone())
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A run's log lines, oldest first.
    pub async fn logs(&self, run_id: Uuid, limit: i64) -> Result<Vec<LogLine>> {
        let query = sqlx::query(
            "SELECT timestamp, stream, line FROM run_logs WHERE run_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(run_id.to_string())
        .bind(limit);
        self.fetch_rows(query, |row| {
            Ok(LogLine {
                timestamp: from_micros(row.try_get("timestamp")?),
                stream: row.try_get("stream")?,
                line: row.try_get("line")?,
            })
        })
        .await
    }
}
