//! Change data capture: the loop that streams the slot and writes batches
//! to ClickHouse (this file: [`Batch`], its state between writes, and
//! [`CdcReport`], what it reports between events), the routing of
//! relations to tables ([`routes`]), the per-table machine for tables added,
//! removed and resynced beside CDC ([`tables`]), and its progress events
//! ([`report`]). Streaming, chunks and what a crash replays:
//! `docs/architecture.md` ("CDC: streaming, chunks, and what a crash
//! replays").

mod reader;
mod report;
mod routes;
mod tables;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::failpoint;
use crate::metrics::RowKind;
use crate::model::{Cell, ChangeKind, Lsn, Row, TxItem};
use crate::proto::*;
use crate::sink::Change;
use crate::source::{self, SourceError, StreamItem};

use super::partitions;
use super::schema_change::diff::same_shape;
use super::worker::{Ends, Result, Worker};

use reader::Reader;
pub(super) use routes::{Route, Routes, Side, TableColumns};

impl Worker {
    pub(in crate::engine) async fn cdc(&mut self, ends: Ends, pipe: &Pipe) -> Result<()> {
        let settings = pipe
            .config
            .as_ref()
            .and_then(|c| c.settings)
            .unwrap_or_default();
        let slot = pipe.slot_name.clone();
        let publication = pipe.publication_name.clone();
        let interval = Duration::from_millis(u64::from(settings.cdc_sync_interval_ms));
        // Routes by relation OID: the pipe's tables, then tables being loaded
        // beside CDC (matched by name: adds and removals reorder the lists).
        // Each route holds the replicated view of its table (what ClickHouse
        // has); rows are projected onto it as they are decoded.
        let mut routes = Routes::at_start(&ends, pipe);
        self.reconcile_at_start(&ends, &mut routes).await?;
        // Where the log says ClickHouse is: past the slot's confirmed
        // position when the last confirmations had not reached the server
        // (they go out within a second). Starting there skips transactions
        // already applied (the server starts at the greater of the two), so
        // a restart does not replay old Relation messages over newer columns.
        let recorded: Lsn = pipe.last_lsn.parse().unwrap_or_default();
        let start = confirmed_position(&ends.pg, &slot).await?.max(recorded);
        let stream = source::ChangeStream::start(source::StreamSpec {
            conn: &ends.conn,
            password: ends.secrets.source_password.as_deref(),
            slot: &slot,
            publication: &publication,
            start,
        })
        .await?;
        let batch = Batch::new(settings.cdc_batch_size as usize);
        let mut s = Session {
            reader: Reader::new(stream, &slot),
            slot,
            batch,
            progress: CdcReport {
                counts: HashMap::new(),
                lag: LagSample::default(),
                last_lsn: start.to_string(),
                last_report: Instant::now(),
                history: None,
                written_end: None,
            },
        };
        let mut housekeeping = Housekeeping {
            synced: self.stream_version(),
            leaves_checked: Instant::now(),
            at: None,
        };
        // The commit LSN (the rows' version) of the transaction being
        // streamed.
        let mut open: Option<Lsn> = None;
        loop {
            // Routing changes only between transactions and batches, so no
            // transaction is half-routed and no batch half-written.
            if open.is_none()
                && s.batch.is_empty()
                && housekeeping.at.is_none_or(|at| at.elapsed() >= interval)
            {
                housekeeping.synced = self.stream_version();
                self.sync_tables(&ends, &mut routes).await?;
                if housekeeping.leaves_checked.elapsed() >= partitions::LEAF_CHECK_EVERY {
                    self.sync_partitions(&ends, &mut routes).await?;
                    housekeeping.leaves_checked = Instant::now();
                }
                if s.progress.last_report.elapsed() >= CDC_REPORT_EVERY {
                    if s.progress.written_end.is_some() {
                        self.record_history(&ends, &mut s).await?;
                    } else {
                        self.report_cdc(&ends, &s.slot, &mut s.progress).await?;
                    }
                }
                housekeeping.at = Some(Instant::now());
            }
            // A batch is written at most `interval` after it began.
            let wait = match s.batch.started {
                Some(at) if !s.batch.is_empty() => interval.saturating_sub(at.elapsed()),
                _ => interval,
            };
            let item = match s.reader.next_within(wait, &ends.pg).await? {
                Some(item) => item,
                None => {
                    if s.batch.is_empty() {
                        self.core.metrics().set_cdc_lag_seconds(&self.name, 0.0);
                    } else {
                        self.flush(&ends, &routes, &mut s).await?;
                    }
                    // A silent connection may be a dead one.
                    s.reader.probe_if_silent(&ends.pg).await?;
                    continue;
                }
            };
            match item {
                StreamItem::Begin {
                    commit_lsn,
                    commit_time_us,
                    ..
                } => {
                    // A table list changed since routing was synced (e.g.
                    // a table removed just before this transaction
                    // committed): routed again before this transaction, the
                    // batch so far written first.
                    if self.stream_version() != housekeeping.synced {
                        if !s.batch.is_empty() {
                            self.flush(&ends, &routes, &mut s).await?;
                        }
                        housekeeping.synced = self.stream_version();
                        self.sync_tables(&ends, &mut routes).await?;
                    }
                    open = Some(commit_lsn);
                    s.batch.begin(commit_lsn, commit_time_us);
                }
                StreamItem::Item(TxItem::Relation(rel)) => {
                    // A table's shape changes: what is written so far is
                    // recorded and confirmed first, so no later session
                    // streams the transactions before the change again
                    // (their Relation messages carry the old shape, which
                    // ClickHouse no longer has).
                    if routes
                        .by_oid
                        .get(&rel.oid)
                        .is_some_and(|r| !same_shape(&r.table.described, &rel))
                    {
                        if !s.batch.is_empty() {
                            self.flush(&ends, &routes, &mut s).await?;
                        }
                        self.record_history(&ends, &mut s).await?;
                    }
                    let version = open.unwrap_or_default();
                    self.check_relation(&ends, &mut routes, &rel, version, &mut s.batch.pending)
                        .await?;
                }
                StreamItem::Item(TxItem::Change(c)) => {
                    let Some(route) = routes.by_oid.get(&c.relation_oid) else {
                        continue;
                    };
                    let source_table = &route.source;
                    let e = s
                        .progress
                        .counts
                        .entry(source_table.clone())
                        .or_insert_with(|| TableChangeCounts {
                            source_table: source_table.clone(),
                            ..Default::default()
                        });
                    match c.kind {
                        ChangeKind::Insert => e.inserted += 1,
                        ChangeKind::Update => e.updated += 1,
                        ChangeKind::Delete => e.deleted += 1,
                    }
                    let version = open.map(|v| v.0).unwrap_or_default();
                    // Every source column, cut down to the replicated ones.
                    let row = route.table.view.project(&c.row);
                    s.batch
                        .push(source_table, c.relation_oid, c.kind, row, version);
                    if s.batch.is_full() {
                        // A transaction of any size is written in chunks:
                        // every row carries the commit's version, and the
                        // slot is confirmed only at its end.
                        self.flush(&ends, &routes, &mut s).await?;
                    }
                }
                StreamItem::Item(TxItem::Truncate { relation_oids }) => {
                    // Truncate empties the destination table: rows before it
                    // in this batch are written first, so order is kept.
                    for oid in relation_oids {
                        if let Some(route) = routes.by_oid.get(&oid) {
                            if let Some(rows) = s.batch.pending.remove(&oid) {
                                route.write(&ends, rows).await?;
                            }
                            ends.ch.truncate(&route.dest).await?;
                            if let Some(also) = &route.side.also {
                                ends.ch.truncate(also).await?;
                            }
                            // A load under way copies rows from before the
                            // truncate: start it again after it.
                            routes.loads.restart(oid);
                        }
                    }
                }
                StreamItem::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time_us,
                } => {
                    open = None;
                    s.batch.commit(commit_lsn, end_lsn, commit_time_us);
                    if s.batch.is_full()
                        || s.batch.started.is_some_and(|at| at.elapsed() >= interval)
                    {
                        self.flush(&ends, &routes, &mut s).await?;
                    }
                }
                StreamItem::Idle { wal_end } => {
                    // Nothing published is in flight: let the slot move so
                    // it does not pin WAL of unrelated activity.
                    if open.is_none() && s.batch.is_empty() && s.progress.written_end.is_none() {
                        s.reader.confirm(wal_end);
                    }
                }
            }
        }
    }

    /// Writes the batch's rows to ClickHouse and then confirms its finished
    /// transactions to the server: the slot never moves past a row
    /// ClickHouse has not acknowledged.
    async fn flush(&mut self, ends: &Ends, routes: &Routes, s: &mut Session) -> Result<()> {
        let batch = &mut s.batch;
        let applying = Instant::now();
        for (oid, rows) in batch.pending.drain() {
            if let Some(route) = routes.by_oid.get(&oid) {
                route.write(ends, rows).await?;
            }
        }
        batch.rows = 0;
        batch.bytes = 0;
        if batch.committed_end.is_none() {
            // Mid-transaction: the next chunk starts its own time window.
            batch.started = None;
            failpoint::hit(failpoint::CDC_MID_TRANSACTION).await;
        }
        let metrics = self.core.metrics();
        metrics.observe_batch_apply(&self.name, applying.elapsed());
        if let Some(t) = batch.last_commit_time {
            metrics.set_cdc_lag_seconds(&self.name, crate::metrics::seconds_since_pg_time(t));
        }
        for (table, n) in batch.table_rows.drain() {
            for (kind, count) in [RowKind::Insert, RowKind::Update, RowKind::Delete]
                .into_iter()
                .zip(n)
            {
                metrics.rows_applied(&self.name, &table, kind, count);
            }
        }
        self.after_flush(ends, s).await
    }

    /// After a flush that ended at a transaction boundary: the batch joins
    /// the CDC history not yet recorded, which is recorded (one CdcProgress
    /// event) at most every [`CDC_REPORT_EVERY`]; a fresh batch starts.
    async fn after_flush(&mut self, ends: &Ends, s: &mut Session) -> Result<()> {
        let Session {
            reader,
            batch,
            progress,
            ..
        } = s;
        let Some(end) = batch.committed_end else {
            // Only part of a transaction so far: its rows are counted when
            // it ends.
            return Ok(());
        };
        progress.last_lsn = end.to_string();
        progress.written_end = Some(end);
        if !progress.counts.is_empty() {
            progress.add_batch(batch);
        }
        batch.reset();
        if progress.history.is_none() {
            // Nothing to count: ClickHouse has every row, confirm now.
            failpoint::hit(failpoint::CDC_BEFORE_ADVANCE).await;
            reader.confirm(end);
            progress.written_end = None;
        } else if progress.last_report.elapsed() >= CDC_REPORT_EVERY {
            self.record_history(ends, s).await?;
        }
        Ok(())
    }
}

/// One streaming session of the slot: the stream read, the batch not yet
/// written and what is not yet reported (the CDC loop's state between
/// items).
struct Session {
    slot: String,
    reader: Reader,
    batch: Batch,
    progress: CdcReport,
}

/// When the CDC loop last brought routing in line with the pipe (between
/// transactions and batches).
struct Housekeeping {
    /// The pipe's stream version routing was last brought in line with.
    synced: u64,
    /// When partitioned tables' leaves were last checked.
    leaves_checked: Instant,
    /// When routing was last synced (None: not yet in this run).
    at: Option<Instant>,
}

/// The rows read since the last write to ClickHouse (the CDC loop's
/// state between flushes). It holds at most about `limit` rows or
/// [`BATCH_BYTES`], whatever the size of the transactions streaming in.
struct Batch {
    /// Changes per relation OID, in commit order.
    pending: HashMap<u32, Vec<Change>>,
    /// Rows pending, and about how much memory they take.
    rows: usize,
    bytes: usize,
    /// `cdc_batch_size` (10,000 when unset).
    limit: usize,
    /// Rows per source table by kind (insert, update, delete), for metrics.
    table_rows: HashMap<String, [u64; 3]>,
    /// When the first item of the batch arrived.
    started: Option<Instant>,
    /// Transactions finished in this batch: the first one's commit LSN and
    /// time, the last one's end (what may be confirmed), and how many.
    first_commit: Option<Lsn>,
    first_commit_time: Option<i64>,
    committed_end: Option<Lsn>,
    last_commit_time: Option<i64>,
    transactions: u32,
}

/// A batch is written once its rows take about this much memory.
const BATCH_BYTES: usize = 32 << 20;

impl Batch {
    fn new(limit: usize) -> Self {
        Batch {
            pending: HashMap::new(),
            rows: 0,
            bytes: 0,
            limit: if limit == 0 { 10_000 } else { limit },
            table_rows: HashMap::new(),
            started: None,
            first_commit: None,
            first_commit_time: None,
            committed_end: None,
            last_commit_time: None,
            transactions: 0,
        }
    }

    /// Nothing to write and nothing to confirm.
    fn is_empty(&self) -> bool {
        self.rows == 0 && self.committed_end.is_none() && self.pending.is_empty()
    }

    fn is_full(&self) -> bool {
        self.rows >= self.limit || self.bytes >= BATCH_BYTES
    }

    fn begin(&mut self, commit_lsn: Lsn, commit_time_us: i64) {
        self.started.get_or_insert_with(Instant::now);
        self.first_commit.get_or_insert(commit_lsn);
        self.first_commit_time.get_or_insert(commit_time_us);
    }

    fn push(&mut self, table: &str, oid: u32, kind: ChangeKind, row: Row, version: u64) {
        let k = match kind {
            ChangeKind::Insert => 0,
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
        };
        match self.table_rows.get_mut(table) {
            Some(n) => n[k] += 1,
            None => {
                let mut n = [0; 3];
                n[k] = 1;
                self.table_rows.insert(table.to_owned(), n);
            }
        }
        self.rows += 1;
        self.bytes += row_bytes(&row);
        self.started.get_or_insert_with(Instant::now);
        self.pending.entry(oid).or_default().push(Change {
            row,
            version,
            deleted: kind == ChangeKind::Delete,
        });
    }

    fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn, commit_time_us: i64) {
        self.started.get_or_insert_with(Instant::now);
        // (A transaction begun before the last write of a chunk.)
        self.first_commit.get_or_insert(commit_lsn);
        self.first_commit_time.get_or_insert(commit_time_us);
        self.committed_end = Some(end_lsn);
        self.last_commit_time = Some(commit_time_us);
        self.transactions += 1;
    }

    /// Starts the next batch after a write that ended at a transaction
    /// boundary.
    fn reset(&mut self) {
        *self = Batch::new(self.limit);
    }
}

/// About how much memory a row takes.
fn row_bytes(row: &Row) -> usize {
    row.iter()
        .map(|c| match c {
            Cell::Text(b) => b.len() + 32,
            _ => 32,
        })
        .sum::<usize>()
        + 48
}

/// The slot's confirmed position, where streaming resumes.
async fn confirmed_position(pg: &tokio_postgres::Client, slot: &str) -> Result<Lsn> {
    let info = source::slot_info(pg, slot)
        .await?
        .ok_or_else(|| SourceError::SlotLost {
            slot: slot.into(),
            reason: "the slot does not exist (it was dropped)".into(),
        })?;
    if info.is_lost() {
        return Err(SourceError::SlotLost {
            slot: slot.into(),
            reason: "the slot was invalidated (wal_status = lost): the server removed WAL it still needed, see max_slot_wal_keep_size".into(),
        }
        .into());
    }
    Ok(info.confirmed_flush)
}

/// What the CDC loop reports, between events.
struct CdcReport {
    /// Rows per source table since the last CdcProgress event.
    counts: HashMap<String, TableChangeCounts>,
    lag: LagSample,
    /// The end of the last transaction ClickHouse has whole.
    last_lsn: String,
    /// When the last CdcProgress event was recorded.
    last_report: Instant,
    /// The batches written since then, merged into one history record
    /// (LSN range, transactions, time spent writing); None when they
    /// changed no routed rows.
    history: Option<CdcProgress>,
    /// The end of the last transaction written but not yet confirmed to
    /// the server (it is confirmed once recorded).
    written_end: Option<Lsn>,
}

/// How often the CDC loop records a CdcProgress event: the CDC history's
/// resolution. One event per written batch (every 200 ms on a busy pipe)
/// grew the event log, and the memory sled holds for it, without bound.
const CDC_REPORT_EVERY: Duration = Duration::from_secs(5);

impl CdcReport {
    /// Merges a batch that ended at a transaction boundary into the
    /// history not yet recorded.
    fn add_batch(&mut self, batch: &Batch) {
        let h = self.history.get_or_insert_with(|| CdcProgress {
            start_lsn: batch
                .first_commit
                .map(|l| l.to_string())
                .unwrap_or_default(),
            first_commit_at: batch.first_commit_time.map(pg_time),
            ..Default::default()
        });
        h.lsn = self.last_lsn.clone();
        h.duration_ms += batch
            .started
            .map_or(0, |at| at.elapsed().as_millis() as u64);
        h.transactions += batch.transactions;
    }
}

/// The last slot lag measured by the CDC loop.
#[derive(Default)]
struct LagSample {
    /// WAL bytes the slot's confirmed position is behind.
    bytes: u64,
    /// When it was measured (None: not yet).
    at: Option<Instant>,
}

/// A Postgres timestamp (microseconds since 2000-01-01) as a protobuf one.
fn pg_time(pg_us: i64) -> prost_types::Timestamp {
    const PG_EPOCH_UNIX_S: i64 = 946_684_800;
    prost_types::Timestamp {
        seconds: PG_EPOCH_UNIX_S + pg_us.div_euclid(1_000_000),
        nanos: (pg_us.rem_euclid(1_000_000) * 1000) as i32,
    }
}
