//! Small SQL helpers every part of the store shares: placeholders, reading typed columns, mapping
//! "no row" and unique violations to the store's errors, and multi-row inserts.

use chrono::{DateTime, Utc};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, Row};
use uuid::Uuid;

use super::{is_unique_violation, Result, Store, StoreError, Tx};
use crate::model::from_micros;
use crate::state::{StateType, UnknownStateType};

/// A query on the `Any` driver.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

/// `$start, $start+1, …` for `n` values.
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A UUID column.
pub(crate) fn get_uuid(row: &AnyRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    parse_uuid(col, &s)
}

/// A nullable UUID column.
pub(crate) fn opt_uuid(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| parse_uuid(col, &s)).transpose()
}

fn parse_uuid(col: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

/// A nullable time column (microseconds).
pub(crate) fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_micros))
}

/// A boolean column (stored as 0/1).
pub(crate) fn get_bool(row: &AnyRow, col: &str) -> Result<bool> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// A state type column.
pub(crate) fn get_state_type(row: &AnyRow, col: &str) -> Result<StateType> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|e: UnknownStateType| StoreError::Corrupt(e.to_string()))
}

/// "`what` `key` not found".
pub(crate) fn not_found(what: &'static str, key: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        key: key.to_string(),
    }
}

/// A clash on `field` (a duplicate name, an object still in use).
pub(crate) fn conflict(field: &str, message: String) -> StoreError {
    StoreError::Conflict {
        field: Some(field.into()),
        message,
    }
}

/// An insert's error: a unique violation becomes a conflict on `field` worded by `message`,
/// anything else stays a database error.
pub(crate) fn unique_conflict(
    e: sqlx::Error,
    field: &str,
    message: impl FnOnce() -> String,
) -> StoreError {
    if is_unique_violation(&e) {
        conflict(field, message())
    } else {
        e.into()
    }
}

/// Inserts `rows` with multi-row statements of at most `chunk` rows: `head` is the statement up
/// to `VALUES` and `bind` binds the `columns` values of one row.
pub(crate) async fn insert_rows<T>(
    tx: &mut Tx,
    head: &str,
    columns: usize,
    chunk: usize,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &T) -> AnyQuery<'q>,
) -> Result<()> {
    for part in rows.chunks(chunk) {
        let values: Vec<String> = (0..part.len())
            .map(|i| format!("({})", placeholders(i * columns + 1, columns)))
            .collect();
        let sql = format!("{head} VALUES {}", values.join(", "));
        let mut q = sqlx::query(&sql);
        for row in part {
            q = bind(q, row);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Runs `query` for at most one row and reads it with `from_row`; no row is
    /// "`what` `key` not found".
    pub(crate) async fn fetch_found<T>(
        &self,
        query: AnyQuery<'_>,
        what: &'static str,
        key: impl ToString,
        from_row: impl FnOnce(&AnyRow) -> Result<T>,
    ) -> Result<T> {
        let row = query
            .fetch_optional(self.db())
            .await?
            .ok_or_else(|| not_found(what, key))?;
        from_row(&row)
    }

    /// Runs `query` and reads every row with `from_row`.
    pub(crate) async fn fetch_rows<T>(
        &self,
        query: AnyQuery<'_>,
        from_row: impl FnMut(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = query.fetch_all(self.db()).await?;
        rows.iter().map(from_row).collect()
    }
}

/// Binds `args` in order.
pub(crate) fn bind_all<'q>(
    mut query: AnyQuery<'q>,
    args: impl IntoIterator<Item = String>,
) -> AnyQuery<'q> {
    for arg in args {
        query = query.bind(arg);
    }
    query
}

/// Text as PostgreSQL can store it: the NUL character (U+0000), which neither its `TEXT` nor its
/// `JSONB` accepts, becomes U+FFFD. For text the store takes from jobs and providers (log lines,
/// state messages), which it keeps rather than refuses; API input with a NUL is refused at the
/// boundary instead.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}
