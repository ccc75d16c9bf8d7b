//! Streaming RowBinary inserts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clickhouse::insert_formatted::BufInsertFormatted;

use super::codec::{CellRef, encode_default, encode_ref};
use super::ident::quote_ident;
use super::types::Kind;
use super::{ChSink, ColumnPlan, METADATA_COLUMNS, SinkError};
use crate::model::{Cell, Row, RowBatch, SourceTable};

/// Tuning of a [`TableWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes buffered before a chunk is compressed and sent.
    /// Memory use is about twice this (one chunk buffering, one in flight).
    pub chunk_bytes: usize,
    /// Longest wait to hand one chunk to the connection.
    pub send_timeout: Option<Duration>,
    /// Longest wait for the server to finish the insert in `end()`.
    pub end_timeout: Option<Duration>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_bytes: 4 << 20,
            send_timeout: Some(Duration::from_secs(120)),
            end_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// What a finished [`TableWriter`] wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteStats {
    /// Rows written.
    pub rows: u64,
    /// RowBinary bytes before compression.
    pub bytes: u64,
    /// Time from the start of the insert to its end.
    pub elapsed: Duration,
}

/// One streaming `INSERT ... FORMAT RowBinary` into a destination table.
///
/// Rows are encoded as they come and sent in chunks of
/// [`WriterOptions::chunk_bytes`]; [`TableWriter::end`] finishes the insert
/// and reports the server's answer. Dropping a writer without `end()`
/// aborts the insert; chunks the server already processed may stay
/// (harmless: re-writing the same versions is idempotent under
/// `ReplacingMergeTree`).
///
/// A row whose value cannot be converted is rejected with
/// [`SinkError::Value`] and nothing of it is sent: the writer stays usable.
/// After a server or network error the writer is dead.
pub struct TableWriter {
    table: String,
    sink: ChSink,
    insert: BufInsertFormatted,
    columns: Arc<[ColumnPlan]>,
    row: Vec<u8>,
    chunk_bytes: usize,
    rows: u64,
    bytes: u64,
    started: Instant,
    failed: Option<String>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl ChSink {
    /// A writer for the destination `table` of `source`, with default
    /// options. Checks the destination's columns (cached) against the
    /// source first.
    pub async fn writer(
        &self,
        table: &str,
        source: &SourceTable,
    ) -> Result<TableWriter, SinkError> {
        self.writer_with(table, source, WriterOptions::default())
            .await
    }

    /// Starts an insert into `table` with explicit chunk size and timeouts.
    pub async fn writer_with(
        &self,
        table: &str,
        source: &SourceTable,
        options: WriterOptions,
    ) -> Result<TableWriter, SinkError> {
        let columns: Arc<[ColumnPlan]> = self.plan(table, source).await?.into();
        let names: Vec<String> = columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .chain(METADATA_COLUMNS.iter().map(|(m, _)| quote_ident(m)))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            self.qualified(table),
            names.join(", ")
        );
        let chunk_bytes = options.chunk_bytes.max(4096);
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(options.send_timeout, options.end_timeout);
        // JSON columns are sent as their text (only then: older servers do
        // not know the setting).
        if columns.iter().any(|c| c.kind == Kind::Json) {
            insert = insert.with_setting("input_format_binary_read_json_as_string", "1");
        }
        let insert = insert.buffered_with_capacity(chunk_bytes);
        Ok(TableWriter {
            table: table.to_string(),
            sink: self.clone(),
            insert,
            columns,
            row: Vec::with_capacity(1024),
            chunk_bytes,
            rows: 0,
            bytes: 0,
            started: Instant::now(),
            failed: None,
        })
    }
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rows and bytes are in the error a failed insert returns.
        f.debug_struct("TableWriter")
            .field("table", &self.table)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl TableWriter {
    /// Encodes one row (`row` has one cell per source column, in source
    /// order) with its version and soft-delete flag.
    pub async fn write(
        &mut self,
        row: &[Cell],
        version: u64,
        is_deleted: bool,
    ) -> Result<(), SinkError> {
        self.check_alive()?;
        self.encode(
            row.iter().map(CellRef::from),
            version,
            is_deleted,
            now_micros(),
        )?;
        self.push().await
    }

    /// [`TableWriter::write`] for a batch of `(row, version, is_deleted)`.
    pub async fn write_batch(&mut self, batch: &[(Row, u64, bool)]) -> Result<(), SinkError> {
        self.check_alive()?;
        let synced_at = now_micros();
        for (row, version, is_deleted) in batch {
            self.encode(
                row.iter().map(CellRef::from),
                *version,
                *is_deleted,
                synced_at,
            )?;
            self.push().await?;
        }
        Ok(())
    }

    /// Writes every row of `batch` (a snapshot's rows: not deleted) at
    /// `version`, encoding straight from the batch's buffers.
    pub async fn write_rows(&mut self, batch: &RowBatch, version: u64) -> Result<(), SinkError> {
        self.check_alive()?;
        let synced_at = now_micros();
        for i in 0..batch.len() {
            self.encode(batch.row(i).map(CellRef::from), version, false, synced_at)?;
            self.push().await?;
        }
        Ok(())
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Sends what is buffered and waits for the server to accept the insert.
    pub async fn end(mut self) -> Result<WriteStats, SinkError> {
        self.check_alive()?;
        if let Err(e) = self.insert.end().await {
            return Err(self.fail(e));
        }
        let stats = WriteStats {
            rows: self.rows,
            bytes: self.bytes,
            elapsed: self.started.elapsed(),
        };
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        tracing::debug!(
            database = %self.sink.database, table = %self.table, rows = stats.rows,
            bytes = stats.bytes, elapsed_ms = stats.elapsed.as_millis() as u64,
            rows_per_sec = (stats.rows as f64 / secs) as u64,
            "clickhouse insert finished"
        );
        Ok(stats)
    }

    fn check_alive(&self) -> Result<(), SinkError> {
        match &self.failed {
            Some(m) => Err(SinkError::WriterFailed {
                table: self.table.clone(),
                message: m.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: clickhouse::error::Error) -> SinkError {
        let e = self.sink.map_err(e);
        self.failed = Some(e.to_string());
        // The table may have changed under us.
        self.sink.forget_schema(&self.table);
        tracing::warn!(database = %self.sink.database, table = %self.table, error = %e, "clickhouse insert failed");
        e
    }

    fn encode<'c>(
        &mut self,
        row: impl ExactSizeIterator<Item = CellRef<'c>>,
        version: u64,
        is_deleted: bool,
        synced_at: i64,
    ) -> Result<(), SinkError> {
        if row.len() != self.columns.len() {
            return Err(SinkError::RowWidth {
                table: self.table.clone(),
                got: row.len(),
                want: self.columns.len(),
            });
        }
        self.row.clear();
        for (cell, col) in row.zip(self.columns.iter()) {
            if is_deleted && !col.nullable && matches!(cell, CellRef::Null) {
                encode_default(&col.kind, &mut self.row);
                continue;
            }
            encode_ref(&col.kind, col.nullable, cell, &mut self.row).map_err(|message| {
                SinkError::Value {
                    table: self.table.clone(),
                    column: col.name.clone(),
                    message,
                }
            })?;
        }
        self.row.extend_from_slice(&version.to_le_bytes());
        self.row.push(u8::from(is_deleted));
        self.row.extend_from_slice(&synced_at.to_le_bytes());
        Ok(())
    }

    async fn push(&mut self) -> Result<(), SinkError> {
        self.insert.write_buffered(&self.row);
        self.rows += 1;
        self.bytes += self.row.len() as u64;
        if self.insert.buf_len() >= self.chunk_bytes
            && let Err(e) = self.insert.flush().await
        {
            return Err(self.fail(e));
        }
        Ok(())
    }
}
