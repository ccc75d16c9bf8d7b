//! The initial snapshot: an exported snapshot shared by parallel COPY
//! workers, each reading page ranges (by CTID) of a table.

use std::pin::Pin;

use futures::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use super::copy_text::decode_copy_lines_into;
use super::{SourceError, connect, quote_ident, quote_literal};
use crate::model::{Row, RowBatch, SourceTable};

/// Holds the coordinator transaction whose snapshot the workers import.
/// Keep it until every [`SnapshotWorker`] has begun (importing needs the
/// exporting transaction to be open), then [`SnapshotExport::finish`] it.
pub struct SnapshotExport {
    client: Client,
    name: String,
}

impl SnapshotExport {
    /// Opens a connection, starts a `REPEATABLE READ READ ONLY`
    /// transaction and exports its snapshot. Returns the holder and the
    /// snapshot name to pass to [`SnapshotWorker::begin`].
    pub async fn begin(
        conn_str: &str,
        password: Option<&str>,
    ) -> Result<(SnapshotExport, String), SourceError> {
        let client = connect(conn_str, password).await?;
        let row = client
            .simple_query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot()",
            )
            .await
            .map_err(|e| SourceError::query("exporting a snapshot", &e))?
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| SourceError::Protocol {
                context: "exporting a snapshot".into(),
                reason: "pg_export_snapshot() returned no row".into(),
            })?;
        tracing::info!(snapshot = %row, "exported snapshot");
        Ok((
            SnapshotExport {
                client,
                name: row.clone(),
            },
            row,
        ))
    }

    /// The snapshot's name, for workers to import (`SET TRANSACTION SNAPSHOT`).
    pub fn snapshot_name(&self) -> &str {
        &self.name
    }

    /// Ends the exporting transaction (workers that already imported the
    /// snapshot keep it).
    pub async fn finish(self) -> Result<(), SourceError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| SourceError::query("ending the snapshot transaction", &e))
    }
}

/// A range of a table's heap pages: `[first_page, end_page)`, open-ended
/// when `end_page` is None. The last partition of a table is always
/// open-ended, so rows on pages beyond the planning-time size (the table
/// grew, or its page count was stale) are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// First heap page of the range.
    pub first_page: u64,
    /// Page after the range's last (None: to the table's end).
    pub end_page: Option<u64>,
}

impl Partition {
    /// The whole table as one partition.
    pub const WHOLE: Partition = Partition {
        first_page: 0,
        end_page: None,
    };

    /// Whether this partition is the whole table.
    pub fn is_whole_table(&self) -> bool {
        *self == Partition::WHOLE
    }

    /// The CTID condition selecting this partition's rows; None for the
    /// whole table.
    pub fn predicate(&self) -> Option<String> {
        match (self.first_page, self.end_page) {
            (0, None) => None,
            (a, None) => Some(format!("ctid >= '({a},0)'::tid")),
            (0, Some(b)) => Some(format!("ctid < '({b},0)'::tid")),
            (a, Some(b)) => Some(format!("ctid >= '({a},0)'::tid AND ctid < '({b},0)'::tid")),
        }
    }
}

/// Assumed density when the table was never analyzed (no row estimate).
const ASSUMED_ROWS_PER_PAGE: u64 = 100;

/// Splits a table into page ranges of about `rows_per_partition` rows
/// each (by the planner's estimates). A table that fits in one partition
/// (or has at most one page) is one partition without a CTID filter.
///
/// Note: CTID ranges are read with a TID Range Scan from PostgreSQL 14 on;
/// older servers scan the whole table for each partition, so there one
/// partition per table is cheaper.
pub fn plan_partitions(table: &SourceTable, rows_per_partition: u64) -> Vec<Partition> {
    let pages = table.pages;
    let rows = if table.estimated_rows > 0 {
        table.estimated_rows
    } else {
        pages.saturating_mul(ASSUMED_ROWS_PER_PAGE)
    };
    if rows_per_partition == 0 || pages <= 1 || rows <= rows_per_partition {
        return vec![Partition::WHOLE];
    }
    let rows_per_page = (rows / pages).max(1);
    let pages_per_partition = (rows_per_partition / rows_per_page).max(1);
    let n = pages.div_ceil(pages_per_partition);
    if n <= 1 {
        return vec![Partition::WHOLE];
    }
    (0..n)
        .map(|k| Partition {
            first_page: k * pages_per_partition,
            end_page: (k + 1 < n).then(|| (k + 1) * pages_per_partition),
        })
        .collect()
}

/// `SELECT "c1", "c2" FROM ONLY "s"."t" [WHERE <ctid range>]`: the query a
/// worker COPYs for a partition (the columns of `table`, in order).
pub fn copy_select_sql(table: &SourceTable, partition: &Partition) -> String {
    let cols = table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SELECT {cols} FROM ONLY {}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    if let Some(p) = partition.predicate() {
        sql.push_str(" WHERE ");
        sql.push_str(&p);
    }
    sql
}

/// A connection in a transaction that imported the exported snapshot; it
/// COPYs partitions one after the other.
pub struct SnapshotWorker {
    client: Client,
    /// Flush a batch at this many rows...
    pub batch_rows: usize,
    /// ...or at about this many bytes of COPY text.
    pub batch_bytes: usize,
}

impl SnapshotWorker {
    /// Connects and imports the exported snapshot `snapshot_name`, so every
    /// partition this worker copies sees the same data.
    pub async fn begin(
        conn_str: &str,
        password: Option<&str>,
        snapshot_name: &str,
    ) -> Result<SnapshotWorker, SourceError> {
        let client = connect(conn_str, password).await?;
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot_name)
        );
        client.batch_execute(&sql).await.map_err(|e| {
            let invalid = e
                .as_db_error()
                .is_some_and(|d| d.message().contains("snapshot") || d.code().code() == "22023");
            if invalid {
                SourceError::SnapshotGone {
                    snapshot: snapshot_name.into(),
                    reason: super::error_chain(&e),
                }
            } else {
                SourceError::query("importing the snapshot", &e)
            }
        })?;
        Ok(SnapshotWorker {
            client,
            batch_rows: 10_000,
            batch_bytes: 4 << 20,
        })
    }

    /// Starts COPYing one partition; read it with
    /// [`PartitionCopy::next_batch`] until it returns None.
    pub async fn copy_partition<'a>(
        &'a mut self,
        table: &SourceTable,
        partition: &Partition,
    ) -> Result<PartitionCopy<'a>, SourceError> {
        let sql = format!("COPY ({}) TO STDOUT", copy_select_sql(table, partition));
        let name = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let stream = self
            .client
            .copy_out(sql.as_str())
            .await
            .map_err(|e| SourceError::query(format!("starting to copy {name}"), &e))?;
        tracing::debug!(table = %name, partition = ?partition, "copying partition");
        Ok(PartitionCopy {
            stream: Box::pin(stream),
            ncols: table.columns.len(),
            pending: Vec::new(),
            done: false,
            rows: 0,
            batch_rows: self.batch_rows.max(1),
            batch_bytes: self.batch_bytes.max(1),
            table: name,
            _worker: std::marker::PhantomData,
        })
    }

    /// Ends the worker's transaction.
    pub async fn finish(self) -> Result<(), SourceError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| SourceError::query("ending a snapshot worker's transaction", &e))
    }
}

/// A partition being copied: batches of decoded rows, pulled on demand (the
/// server is held back by TCP flow control while a batch is processed, so
/// memory stays bounded by one batch).
pub struct PartitionCopy<'a> {
    stream: Pin<Box<CopyOutStream>>,
    ncols: usize,
    /// Bytes of an incomplete row carried over from the previous chunk.
    pending: Vec<u8>,
    done: bool,
    rows: u64,
    batch_rows: usize,
    batch_bytes: usize,
    table: String,
    _worker: std::marker::PhantomData<&'a mut SnapshotWorker>,
}

impl PartitionCopy<'_> {
    /// Rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The next batch of rows, or None when the partition is done.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Row>>, SourceError> {
        let mut batch = RowBatch::new(self.ncols);
        if !self.next_rows(&mut batch).await? {
            return Ok(None);
        }
        Ok(Some((0..batch.len()).map(|i| batch.to_row(i)).collect()))
    }

    /// Replaces `batch`'s rows with the next batch (reusing its buffers);
    /// false when the partition is done.
    pub async fn next_rows(&mut self, batch: &mut RowBatch) -> Result<bool, SourceError> {
        batch.clear();
        batch.ncols = self.ncols;
        if self.done {
            return Ok(false);
        }
        while batch.len() < self.batch_rows && batch.data.len() < self.batch_bytes {
            let Some(chunk) = self.stream.next().await else {
                self.done = true;
                if !self.pending.is_empty() {
                    // Unterminated last row (the server always ends rows
                    // with a newline, but be lenient).
                    self.pending.push(b'\n');
                    let pending = std::mem::take(&mut self.pending);
                    decode_copy_lines_into(&pending, batch).map_err(|e| self.format(e))?;
                }
                break;
            };
            let chunk =
                chunk.map_err(|e| SourceError::query(format!("copying {}", self.table), &e))?;
            if self.pending.is_empty() {
                // Fast path: Postgres sends one row per CopyData message.
                let used = decode_copy_lines_into(&chunk, batch).map_err(|e| self.format(e))?;
                self.pending.extend_from_slice(&chunk[used..]);
            } else {
                self.pending.extend_from_slice(&chunk);
                let used =
                    decode_copy_lines_into(&self.pending, batch).map_err(|e| self.format(e))?;
                self.pending.drain(..used);
            }
        }
        self.rows += batch.len() as u64;
        Ok(!(batch.is_empty() && self.done))
    }

    fn format(&self, e: super::CopyFormatError) -> SourceError {
        SourceError::Protocol {
            context: format!("decoding COPY data of {}", self.table),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: u64, pages: u64) -> SourceTable {
        SourceTable {
            schema: "s".into(),
            name: "t".into(),
            oid: 1,
            columns: vec![],
            key: vec![0],
            estimated_rows: rows,
            pages,
            partitioned: false,
            generated_columns: Vec::new(),
        }
    }

    fn check_cover(parts: &[Partition]) {
        assert_eq!(parts[0].first_page, 0);
        for w in parts.windows(2) {
            assert_eq!(w[0].end_page, Some(w[1].first_page));
        }
        assert_eq!(parts.last().and_then(|p| p.end_page), None);
    }

    #[test]
    fn small_tables_are_one_unfiltered_partition() {
        assert_eq!(plan_partitions(&table(0, 0), 1000), vec![Partition::WHOLE]);
        assert_eq!(
            plan_partitions(&table(999, 10), 1000),
            vec![Partition::WHOLE]
        );
        assert_eq!(
            plan_partitions(&table(1_000_000, 1), 1000),
            vec![Partition::WHOLE]
        );
        assert_eq!(Partition::WHOLE.predicate(), None);
    }

    #[test]
    fn large_tables_split_into_contiguous_page_ranges() {
        let parts = plan_partitions(&table(1_000_000, 10_000), 100_000);
        assert_eq!(parts.len(), 10);
        check_cover(&parts);
        assert_eq!(parts[1].first_page, 1000);
        assert_eq!(
            parts[1].predicate().as_deref(),
            Some("ctid >= '(1000,0)'::tid AND ctid < '(2000,0)'::tid")
        );
        assert_eq!(
            parts[0].predicate().as_deref(),
            Some("ctid < '(1000,0)'::tid")
        );
        assert_eq!(
            parts[9].predicate().as_deref(),
            Some("ctid >= '(9000,0)'::tid")
        );
        // Uneven split; rows wider than a partition's share of a page.
        let parts = plan_partitions(&table(1_234_567, 7_777), 50_000);
        check_cover(&parts);
        let parts = plan_partitions(&table(10_000, 10_000), 10);
        check_cover(&parts);
        assert_eq!(parts.len(), 1000);
    }

    #[test]
    fn never_analyzed_tables_are_split_by_assumed_density() {
        let parts = plan_partitions(&table(0, 5_000), 100_000);
        assert_eq!(parts.len(), 5);
        check_cover(&parts);
    }

    #[test]
    fn copy_sql_quotes_everything() {
        let mut t = table(0, 0);
        t.schema = "My \"S\"".into();
        t.columns = vec![crate::model::SourceColumn {
            name: "a b".into(),
            type_name: "text".into(),
            type_oid: 25,
            pg_type: crate::model::PgType::Text,
            not_null: false,
            repr: None,
            attnum: 1,
            typmod: -1,
        }];
        assert_eq!(
            copy_select_sql(&t, &Partition::WHOLE),
            "SELECT \"a b\" FROM ONLY \"My \"\"S\"\"\".\"t\""
        );
    }
}
