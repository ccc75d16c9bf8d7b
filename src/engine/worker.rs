//! One pipe incarnation at work: setup, table preparation, snapshot, (for a
//! resync) soft-delete transfer and swap, then CDC.
//!
//! Every step is recorded as an event before it starts and after it ends,
//! and the worker always starts from the first step the projection does not
//! show as done, so a crash (kill -9) anywhere resumes or safely redoes the
//! step:
//! - setup: the slot is dropped and created again if the crash came before
//!   `SetupCompleted`;
//! - tables: `CREATE ... IF NOT EXISTS` / `CREATE OR REPLACE` are idempotent;
//! - snapshot: a redo truncates the load tables and copies again from a new
//!   exported snapshot. The slot has not moved (CDC has not started), and the
//!   new snapshot is taken after its consistent point, so the version
//!   argument below still holds;
//! - soft-delete transfer copies only keys missing from the `_resync` table,
//!   so a repeat copies nothing twice;
//! - swap: each `_resync` table's UUID is recorded when it is created; a redo
//!   skips tables whose original name already carries that UUID;
//! - CDC: the slot is confirmed only past transactions ClickHouse has whole.
//!
//! Versions (why the snapshot/CDC hand-off neither misses nor doubles a
//! change) and what a crash in CDC replays: `docs/architecture.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::commands::Core;
use crate::domain::columns::{self, Replicated};
use crate::domain::names;
use crate::domain::step::Step;
use crate::domain::validate;
use crate::failpoint;
use crate::metrics::RowKind;
use crate::model::{Cell, ChangeKind, Lsn, Row, SourceTable, TxItem};
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::{ChSink, CreateMode, SinkError};
use crate::source::{self, SourceError, StreamItem};

use super::copy::PROGRESS_EVERY;
#[path = "schema_change.rs"]
mod schema_change;
use super::guard::Guard;
use super::steps::drop_old_data;
use super::{partitions, table_load};
use crate::store::{LogError, PipeSecrets};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The incarnation was paused, deleted or replaced: stop quietly.
    #[error("stopped")]
    Stopped,
    /// Needs the user (usually a resync).
    #[error("{0}")]
    Fatal(String),
}

impl EngineError {
    fn is_transient(&self) -> bool {
        match self {
            EngineError::Source(e) => e.is_transient(),
            EngineError::Sink(e) => e.is_transient(),
            EngineError::Log(_) => true,
            EngineError::Stopped | EngineError::Fatal(_) => false,
        }
    }
}

pub(super) type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Runs an incarnation until it is stopped or fails for good.
pub async fn run(core: Arc<Core>, pipe_id: String) {
    let Some(pipe) = core.read(|p| p.by_id(&pipe_id).cloned()) else {
        return;
    };
    let span = tracing::info_span!("pipe", pipe = %pipe.name, pipe_id = %pipe.id);
    async move {
        let mut w = Worker {
            core,
            id: pipe_id,
            name: pipe.name.clone(),
            failing: None,
            step: Step::Setup,
            backoff: Duration::from_secs(1),
        };
        loop {
            let result = w.run_steps().await;
            let step = w.step;
            match result {
                Ok(()) | Err(EngineError::Stopped) => return,
                Err(e) if e.is_transient() => {
                    let backoff = w.backoff;
                    tracing::warn!(step = step.name(), error = %e, backoff_ms = backoff.as_millis() as u64, "step failed; retrying");
                    if w.report_failure(step.name(), &e.to_string(), true).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    w.backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(step = step.name(), error = %e, "pipe failed");
                    let _ = w.report_failure(step.name(), &e.to_string(), false).await;
                    return;
                }
            }
        }
    }
    .instrument(span)
    .await
}

pub(super) struct Worker {
    pub(super) core: Arc<Core>,
    pub(super) id: String,
    pub(super) name: String,
    /// The step whose failure was reported as retrying (to report recovery).
    failing: Option<String>,
    /// The step being run (named in failure events).
    step: Step,
    /// Delay before the next retry; reset once a step succeeds again.
    backoff: Duration,
}

/// Records facts about one incarnation; cloned into tasks that run beside
/// the worker (table loads).
#[derive(Clone)]
pub(super) struct Facts {
    pub core: Arc<Core>,
    pub id: String,
    pub name: String,
}

impl Facts {
    /// Appends facts about this incarnation, unless it stopped being active
    /// (then `Stopped`). Re-reads the stream version on a conflict: facts do
    /// not depend on what other commands did meanwhile.
    pub async fn record(&self, payloads: Vec<Payload>) -> Result<Pipe> {
        super::guard::record(&self.core, Guard::Active, &self.id, &self.name, &payloads)
            .await?
            .ok_or(EngineError::Stopped)
    }
}

/// Connections of one run of the steps.
pub(super) struct Ends {
    pub(super) pg: tokio_postgres::Client,
    pub(super) ch: ChSink,
    pub(super) conn: String,
    pub(super) secrets: PipeSecrets,
    pub(super) tables: Vec<SourceTable>,
    /// Per table (same order): the columns replicated, under their source
    /// and destination names (exclude_columns, rename_columns applied).
    pub(super) views: Vec<Replicated>,
}

impl Worker {
    pub(super) fn pipe(&self) -> Result<Pipe> {
        self.core
            .read(|p| p.by_id(&self.id).cloned())
            .ok_or(EngineError::Stopped)
    }

    pub(super) async fn record(&self, payloads: Vec<Payload>) -> Result<Pipe> {
        self.facts().record(payloads).await
    }

    pub(super) fn facts(&self) -> Facts {
        Facts {
            core: Arc::clone(&self.core),
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    async fn report_failure(&mut self, step: &str, reason: &str, retrying: bool) -> Result<()> {
        if retrying && self.failing.as_deref() == Some(step) {
            return Ok(());
        }
        self.failing = retrying.then(|| step.to_owned());
        // Decided again on a conflict: the slot health monitor appends too.
        let failed = Payload::PipeFailed(PipeFailed {
            step: step.into(),
            reason: reason.into(),
            retrying,
        });
        super::guard::record(
            &self.core,
            Guard::NotDeleted,
            &self.id,
            &self.name,
            &[failed],
        )
        .await?
        .map(|_| ())
        .ok_or(EngineError::Stopped)
    }

    pub(super) async fn recovered(&mut self) -> Result<()> {
        self.backoff = Duration::from_secs(1);
        if self.failing.take().is_some() {
            self.record(vec![Payload::PipeRecovered(PipeRecovered {})])
                .await?;
        }
        Ok(())
    }

    async fn connect(&self, pipe: &Pipe) -> Result<Ends> {
        let config = pipe.config.clone().unwrap_or_default();
        let secrets = self.core.secrets.get(&self.id)?;
        let src = config.source.clone().unwrap_or_default();
        let pg =
            source::connect(&src.connection_string, secrets.source_password.as_deref()).await?;
        let names = super::source_tables(&config).map_err(|e| EngineError::Fatal(e.0))?;
        let tables = source::describe_tables(&pg, &names).await?;
        let failed: Vec<&str> = pipe
            .tables
            .iter()
            .filter(|t| !t.error.is_empty())
            .map(|t| t.source_table.as_str())
            .collect();
        let views = replicated_views(&config.tables, &tables, &failed)?;
        let ch = super::sink_for(&config, &secrets)?;
        ch.ping().await?;
        Ok(Ends {
            pg,
            ch,
            conn: src.connection_string,
            secrets,
            tables,
            views,
        })
    }

    async fn run_steps(&mut self) -> Result<()> {
        let mut pipe = self.pipe()?;
        // Named if connecting fails.
        self.step = Step::first_open(&pipe);
        let ends = self.connect(&pipe).await?;
        let resync = !pipe.resync_of.is_empty();
        let mut swapped_now = false;
        loop {
            let step = Step::first_open(&pipe);
            self.step = step;
            let t = Instant::now();
            let next = match step {
                Step::Cdc => break,
                Step::Setup => self.setup(&ends).await?,
                Step::PrepareTables => self.prepare_tables(&ends, &pipe).await?,
                Step::Snapshot => self.snapshot(&ends, &pipe).await?,
                Step::Swap => {
                    swapped_now = true;
                    self.swap(&ends, &pipe).await?
                }
            };
            self.step_done(resync, t);
            if Step::first_open(&next) <= step {
                return Err(EngineError::Fatal(format!(
                    "step {step} ended without being recorded as done"
                )));
            }
            pipe = next;
        }
        if resync && !swapped_now && !pipe.cdc_started {
            // A crash came after the swap was recorded but maybe before the
            // old data was dropped.
            self.step = Step::Swap;
            drop_old_data(&ends, &pipe).await?;
        }
        self.step = Step::Cdc;
        if !pipe.cdc_started {
            pipe = self
                .record(vec![Payload::CdcStarted(CdcStarted {
                    start_lsn: pipe.consistent_lsn.clone(),
                })])
                .await?;
        }
        self.recovered().await?;
        self.cdc(ends, &pipe).await
    }

    /// The pipe's stream version in the projection (it moves with every
    /// event of the pipe, the CDC loop's own included).
    fn stream_version(&self) -> u64 {
        self.core.read(|p| p.stream_version(&self.name))
    }

    /// Records how long the current step took, for a resync's steps only
    /// (a resumed step counts from its resumption).
    fn step_done(&self, resync: bool, started: Instant) {
        if resync {
            self.core
                .metrics
                .set_resync_step(&self.name, self.step.name(), started.elapsed());
        }
    }

    pub(super) fn table_configs(pipe: &Pipe) -> Vec<TableConfig> {
        pipe.config
            .as_ref()
            .map(|c| c.tables.clone())
            .unwrap_or_default()
    }

    async fn cdc(&mut self, ends: Ends, pipe: &Pipe) -> Result<()> {
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
        let mut routes = Routes {
            described: table_columns(&ends, pipe),
            ..Routes::default()
        };
        for (t, v) in ends.tables.iter().zip(&ends.views) {
            let name = canonical(t);
            // A failed table is skipped until a table resync rebuilds it.
            if pipe
                .tables
                .iter()
                .any(|s| s.source_table == name && !s.error.is_empty())
            {
                continue;
            }
            if let Some(p) = pipe.prepared.iter().find(|p| p.source_table == name) {
                routes.by_oid.insert(
                    t.oid,
                    Route {
                        view: v.dest.clone(),
                        dest: p.destination_table.clone(),
                        source: name.clone(),
                        sort_key: p.order_by.clone(),
                    },
                );
            }
        }
        self.reconcile_at_start(&ends, &mut routes).await?;
        // Where the log says ClickHouse is: past the slot's confirmed
        // position when the last confirmations had not reached the server
        // (they go out within a second). Starting there skips transactions
        // already applied (the server starts at the greater of the two), so
        // a restart does not replay old Relation messages over newer columns.
        let recorded: Lsn = pipe.last_lsn.parse().unwrap_or_default();
        let start = confirmed_position(&ends.pg, &slot).await?.max(recorded);
        let mut stream = source::ChangeStream::start(source::StreamSpec {
            conn: &ends.conn,
            password: ends.secrets.source_password.as_deref(),
            slot: &slot,
            publication: &publication,
            start,
        })
        .await?;
        let mut progress = CdcReport {
            counts: HashMap::new(),
            lag: LagSample::default(),
            last_lsn: start.to_string(),
            last_report: Instant::now(),
        };
        let mut leaves_checked = Instant::now();
        let mut housekept: Option<Instant> = None;
        // The pipe's stream version routing was last brought in line with.
        let mut synced = self.stream_version();
        let mut batch = Batch::new(settings.cdc_batch_size as usize);
        // The transaction being streamed: its version and commit time.
        let mut open: Option<(Lsn, i64)> = None;
        loop {
            // Routing changes only between transactions and batches, so no
            // transaction is half-routed and no batch half-written.
            if open.is_none()
                && batch.is_empty()
                && housekept.is_none_or(|at| at.elapsed() >= interval)
            {
                synced = self.stream_version();
                self.sync_tables(&ends, &mut routes).await?;
                if leaves_checked.elapsed() >= partitions::LEAF_CHECK_EVERY {
                    self.sync_partitions(&ends, &mut routes).await?;
                    leaves_checked = Instant::now();
                }
                if progress.last_report.elapsed() >= PROGRESS_EVERY * 5 {
                    self.report_cdc(&ends, &slot, &mut progress).await?;
                }
                housekept = Some(Instant::now());
            }
            // A batch is written at most `interval` after it began.
            let wait = match batch.started {
                Some(at) if !batch.is_empty() => interval.saturating_sub(at.elapsed()),
                _ => interval,
            };
            let item = match tokio::time::timeout(wait, stream.next(&ends.pg)).await {
                Ok(item) => item?,
                Err(_) => {
                    if batch.is_empty() {
                        self.core.metrics.set_cdc_lag_seconds(&self.name, 0.0);
                    } else {
                        self.flush(&ends, &slot, &stream, &mut batch, &routes, &mut progress)
                            .await?;
                    }
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
                    if self.stream_version() != synced {
                        if !batch.is_empty() {
                            self.flush(&ends, &slot, &stream, &mut batch, &routes, &mut progress)
                                .await?;
                        }
                        synced = self.stream_version();
                        self.sync_tables(&ends, &mut routes).await?;
                    }
                    open = Some((commit_lsn, commit_time_us));
                    batch.begin(commit_lsn, commit_time_us);
                }
                StreamItem::Item(TxItem::Relation(rel)) => {
                    let version = open.map(|(v, _)| v).unwrap_or_default();
                    self.check_relation(&ends, &mut routes, &rel, version, &mut batch.pending)
                        .await?;
                }
                StreamItem::Item(TxItem::Change(c)) => {
                    let Some(Route {
                        source: source_table,
                        ..
                    }) = routes.by_oid.get(&c.relation_oid)
                    else {
                        continue;
                    };
                    let e = progress
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
                    let version = open.map(|(v, _)| v.0).unwrap_or_default();
                    let row = project_row(&routes.described, c.relation_oid, &c.row);
                    batch.push(source_table, c.relation_oid, c.kind, row, version);
                    if batch.is_full() {
                        // A transaction of any size is written in chunks:
                        // every row carries the commit's version, and the
                        // slot is confirmed only at its end.
                        self.flush(&ends, &slot, &stream, &mut batch, &routes, &mut progress)
                            .await?;
                    }
                }
                StreamItem::Item(TxItem::Truncate { relation_oids }) => {
                    // Truncate empties the destination table: rows before it
                    // in this batch are written first, so order is kept.
                    for oid in relation_oids {
                        if let Some(route) = routes.by_oid.get(&oid) {
                            if let Some(rows) = batch.pending.remove(&oid) {
                                routes.write(&ends, oid, route, rows).await?;
                            }
                            ends.ch.truncate(&route.dest).await?;
                            if let Some(also) = routes.loads.also.get(&oid) {
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
                    batch.commit(commit_lsn, end_lsn, commit_time_us);
                    if batch.is_full() || batch.started.is_some_and(|at| at.elapsed() >= interval) {
                        self.flush(&ends, &slot, &stream, &mut batch, &routes, &mut progress)
                            .await?;
                    }
                }
                StreamItem::Idle { wal_end } => {
                    // Nothing published is in flight: let the slot move so
                    // it does not pin WAL of unrelated activity.
                    if open.is_none() && batch.is_empty() {
                        stream.confirm(wal_end);
                    }
                }
            }
        }
    }

    /// Writes the batch's rows to ClickHouse and then confirms its finished
    /// transactions to the server: the slot never moves past a row
    /// ClickHouse has not acknowledged.
    async fn flush(
        &mut self,
        ends: &Ends,
        slot: &str,
        stream: &source::ChangeStream,
        batch: &mut Batch,
        routes: &Routes,
        progress: &mut CdcReport,
    ) -> Result<()> {
        let applying = Instant::now();
        for (oid, rows) in batch.pending.drain() {
            if let Some(route) = routes.by_oid.get(&oid) {
                routes.write(ends, oid, route, rows).await?;
            }
        }
        batch.rows = 0;
        batch.bytes = 0;
        if batch.committed_end.is_none() {
            // Mid-transaction: the next chunk starts its own time window.
            batch.started = None;
            failpoint::hit(failpoint::CDC_MID_TRANSACTION).await;
        }
        if let Some(end) = batch.committed_end {
            failpoint::hit(failpoint::CDC_BEFORE_ADVANCE).await;
            // ClickHouse has every row of these transactions.
            stream.confirm(end);
        }
        let metrics = &self.core.metrics;
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
        self.after_flush(ends, slot, batch, progress).await
    }

    /// After a flush: one CdcProgress event per batch that finished
    /// transactions with changes (the CDC history), and a fresh batch.
    async fn after_flush(
        &mut self,
        ends: &Ends,
        slot: &str,
        batch: &mut Batch,
        progress: &mut CdcReport,
    ) -> Result<()> {
        progress.last_report = Instant::now();
        let Some(end) = batch.committed_end else {
            // Only part of a transaction so far: its rows are counted when
            // it ends.
            return Ok(());
        };
        progress.last_lsn = end.to_string();
        if !progress.counts.is_empty() {
            let event = CdcProgress {
                start_lsn: batch
                    .first_commit
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                lsn: progress.last_lsn.clone(),
                duration_ms: batch
                    .started
                    .map_or(0, |at| at.elapsed().as_millis() as u64),
                transactions: batch.transactions,
                first_commit_at: batch.first_commit_time.map(pg_time),
                ..Default::default()
            };
            self.report_batch(ends, slot, progress, event).await?;
        }
        batch.reset();
        Ok(())
    }

    /// Records `batch` with the drained `counts`, its rows and the slot
    /// lag, measured again only when `lag` is older than PROGRESS_EVERY (two
    /// queries a batch would slow small batches down).
    async fn report_batch(
        &mut self,
        ends: &Ends,
        slot: &str,
        progress: &mut CdcReport,
        mut batch: CdcProgress,
    ) -> Result<()> {
        let lag = &mut progress.lag;
        if lag.at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
            let info = source::slot_info(&ends.pg, slot).await?;
            let wal = source::current_wal_lsn(&ends.pg).await?;
            let confirmed = info.map(|i| i.confirmed_flush).unwrap_or_default();
            lag.bytes = wal.0.saturating_sub(confirmed.0);
            lag.at = Some(Instant::now());
            self.core.metrics.set_cdc_lag_bytes(&self.name, lag.bytes);
        }
        batch.lag_bytes = lag.bytes;
        let mut tables: Vec<TableChangeCounts> = progress.counts.drain().map(|(_, c)| c).collect();
        tables.sort_by(|a, b| a.source_table.cmp(&b.source_table));
        batch.rows = tables
            .iter()
            .map(|c| c.inserted + c.updated + c.deleted)
            .sum();
        batch.tables = tables;
        self.record(vec![Payload::CdcProgress(batch)]).await?;
        Ok(())
    }

    async fn report_cdc(
        &mut self,
        ends: &Ends,
        slot: &str,
        progress: &mut CdcReport,
    ) -> Result<()> {
        progress.last_report = Instant::now();
        let info = source::slot_info(&ends.pg, slot).await?;
        let wal = source::current_wal_lsn(&ends.pg).await?;
        let confirmed = info.map(|i| i.confirmed_flush).unwrap_or_default();
        let lag = wal.0.saturating_sub(confirmed.0);
        self.core.metrics.set_cdc_lag_bytes(&self.name, lag);
        // What ClickHouse has: the last flushed transaction's end, or the
        // slot's position once an idle keepalive moved it further.
        let flushed: Lsn = progress.last_lsn.parse().unwrap_or_default();
        let lsn = confirmed.max(flushed).to_string();
        let p = self.pipe()?;
        if progress.counts.is_empty() && p.last_lsn == lsn && p.lag_bytes == lag {
            return Ok(());
        }
        let tables = progress.counts.drain().map(|(_, c)| c).collect();
        self.record(vec![Payload::CdcProgress(CdcProgress {
            lsn,
            lag_bytes: lag,
            tables,
            ..Default::default()
        })])
        .await?;
        Ok(())
    }

    /// Brings the CDC loop in line with the pipe's table list (between
    /// batches, so no batch is half-routed): removed tables stop, added
    /// tables and table resyncs start their loads, finished table resyncs
    /// are swapped in.
    async fn sync_tables(&mut self, ends: &Ends, routes: &mut Routes) -> Result<()> {
        let pipe = self.pipe()?;
        let configs = Self::table_configs(&pipe);
        let wanted: std::collections::HashSet<&str> =
            configs.iter().map(|c| c.source_table.as_str()).collect();

        // Removed tables: unpublished, unrouted, their loads stopped.
        let gone: Vec<u32> = routes
            .by_oid
            .iter()
            .filter(|(_, r)| !wanted.contains(r.source.as_str()))
            .map(|(oid, _)| *oid)
            .collect();
        if !gone.is_empty() {
            self.publish(ends, &pipe).await?;
            for oid in gone {
                if let Some(r) = routes.by_oid.remove(&oid) {
                    tracing::info!(table = %r.source, "table removed from the pipe");
                    // Its load and loads of its partitions.
                    routes.loads.restart(oid);
                }
                routes.described.remove(&oid);
                routes.loads.loading.remove(&oid);
                if let Some(scratch) = routes.loads.also.remove(&oid) {
                    ends.ch.drop_table_if_exists(&scratch).await?;
                }
            }
        }

        // Finished loads: an error ends the CDC run (the worker retries and
        // the load is redone).
        let finished: Vec<String> = routes
            .loads
            .running
            .iter()
            .filter(|(_, (h, _))| h.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in finished {
            let Some((handle, oid)) = routes.loads.running.remove(&name) else {
                continue;
            };
            routes.loads.loading.remove(&oid);
            match handle.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(join) if join.is_cancelled() => {}
                Err(join) => {
                    return Err(EngineError::Fatal(format!(
                        "the load of table {name} crashed: {join}"
                    )));
                }
            }
        }
        let pipe = self.pipe()?;

        for cfg in &configs {
            let name = cfg.source_table.as_str();
            if routes.loads.running.contains_key(name) {
                continue;
            }
            let Some(stats) = pipe.tables.iter().find(|t| t.source_table == name) else {
                continue;
            };
            let job = pipe.table_loads.iter().find(|t| t.source_table == name);
            // A failed table being rebuilt: routed again (from the source's
            // current structure), to its `_resync` table only.
            let failed = !stats.error.is_empty()
                && matches!(
                    stats.state(),
                    TableState::ResyncPending | TableState::Resyncing
                );
            if failed
                && !routes.by_oid.values().any(|r| r.source == name)
                && !self.route_rebuilt(ends, &pipe, cfg, routes).await?
            {
                continue;
            }
            match stats.state() {
                TableState::Replicating | TableState::Failed => {}
                TableState::LoadPending | TableState::Loading => {
                    self.start_add(ends, &pipe, cfg, job, routes).await?;
                }
                TableState::ResyncPending => {
                    self.start_table_resync(ends, &pipe, name, None, routes)
                        .await?;
                }
                TableState::Resyncing => match job {
                    Some(job) if stats.snapshot_done => {
                        self.swap_table(ends, job, routes).await?;
                    }
                    Some(job) => {
                        let job = job.clone();
                        self.start_table_resync(ends, &pipe, name, Some(job), routes)
                            .await?;
                    }
                    None => {}
                },
            }
            if failed {
                routes.rebuild_only(name);
            }
        }
        // Routes follow the projection: a rebuilt failed table writes to its
        // destination again once swapped in.
        let pipe = self.pipe()?;
        for r in routes.by_oid.values_mut() {
            let replicating = pipe
                .tables
                .iter()
                .any(|t| t.source_table == r.source && t.state() == TableState::Replicating);
            if let Some(p) = pipe.prepared.iter().find(|p| p.source_table == r.source)
                && replicating
                && r.dest != p.destination_table
            {
                r.dest.clone_from(&p.destination_table);
            }
        }
        Ok(())
    }

    /// Partitioned tables that replicate: leaves attached since they were
    /// listed are loaded beside CDC, detached ones recorded (see
    /// `partitions`).
    async fn sync_partitions(&mut self, ends: &Ends, routes: &mut Routes) -> Result<()> {
        let pipe = self.pipe()?;
        let Routes {
            by_oid,
            described,
            loads,
        } = routes;
        for (oid, Route { source: name, .. }) in by_oid.iter() {
            let Some(cols) = described.get(oid).filter(|c| c.described.partitioned) else {
                continue;
            };
            let key = format!("{name} (partitions)");
            let replicating =
                |t: &&TableStats| t.source_table == *name && t.state() == TableState::Replicating;
            let (Some(stats), Some(prepared)) = (
                pipe.tables.iter().find(replicating),
                pipe.prepared.iter().find(|p| p.source_table == *name),
            ) else {
                continue;
            };
            if loads.running.contains_key(&key) {
                continue;
            }
            let leaves = partitions::check_leaves(&self.facts(), &ends.pg, *oid, stats).await?;
            if leaves.is_empty() {
                continue;
            }
            let job = partitions::LeafLoad {
                facts: self.facts(),
                conn: ends.conn.clone(),
                password: ends.secrets.source_password.clone(),
                ch: ends.ch.clone(),
                settings: pipe
                    .config
                    .as_ref()
                    .and_then(|c| c.settings)
                    .unwrap_or_default(),
                prepared: prepared.clone(),
                view: cols.view.clone(),
                leaves,
            };
            // Rows of the leaves not loaded yet fill unchanged TOAST values
            // from the source, as for an added table.
            loads.loading.insert(*oid);
            let run = partitions::load_leaves(job);
            loads
                .running
                .insert(key, (tokio::spawn(run.in_current_span()), *oid));
        }
        Ok(())
    }

    /// Sets the publication to exactly the pipe's tables.
    async fn publish(&self, ends: &Ends, pipe: &Pipe) -> Result<()> {
        let names = super::source_tables(pipe.config.as_ref().unwrap_or(&PipeConfig::default()))
            .map_err(|e| EngineError::Fatal(e.0))?;
        source::ensure_publication(&ends.pg, &pipe.publication_name, &names).await?;
        Ok(())
    }

    /// Describes one table of the config (it may be newer than `ends`)
    /// with its replicated view.
    async fn describe(&self, ends: &Ends, pipe: &Pipe, source_table: &str) -> Result<TableColumns> {
        let configs = Self::table_configs(pipe);
        let Some((index, config)) = configs
            .into_iter()
            .enumerate()
            .find(|(_, c)| c.source_table == source_table)
        else {
            return Err(EngineError::Fatal(format!(
                "table {source_table} is not part of the pipe"
            )));
        };
        let table = match ends.tables.iter().find(|t| canonical(t) == source_table) {
            Some(t) => t.clone(),
            None => {
                let q = validate::qualified_name("source_table", source_table)
                    .map_err(|e| EngineError::Fatal(e.0))?;
                source::describe_tables(&ends.pg, &[q])
                    .await?
                    .pop()
                    .ok_or_else(|| {
                        EngineError::Fatal(format!("source table {source_table} is gone"))
                    })?
            }
        };
        let view = columns::replicated(index, &table, &config, false)
            .map_err(|p| column_error(&table, &p))?;
        Ok(TableColumns {
            described: table,
            view,
            config,
            index,
        })
    }

    fn load_job(
        &self,
        ends: &Ends,
        pipe: &Pipe,
        prepared: PreparedTable,
        view: Replicated,
    ) -> table_load::LoadJob {
        table_load::LoadJob {
            facts: self.facts(),
            conn: ends.conn.clone(),
            password: ends.secrets.source_password.clone(),
            ch: ends.ch.clone(),
            settings: pipe
                .config
                .as_ref()
                .and_then(|c| c.settings)
                .unwrap_or_default(),
            prepared,
            view,
        }
    }

    /// An added table: created (if missing), published and routed, then
    /// loaded beside CDC.
    async fn start_add(
        &mut self,
        ends: &Ends,
        pipe: &Pipe,
        cfg: &TableConfig,
        job: Option<&PreparedTable>,
        routes: &mut Routes,
    ) -> Result<()> {
        let cols = self.describe(ends, pipe, &cfg.source_table).await?;
        let dest_view = cols.view.dest.clone();
        let prepared = match job {
            Some(job) => job.clone(),
            None => {
                // ClickHouse sees destination names; order_by is given in
                // source names.
                let order_by: Vec<String> = if cfg.order_by.is_empty() {
                    dest_view
                        .key
                        .iter()
                        .map(|&i| dest_view.columns[i].name.clone())
                        .collect()
                } else {
                    columns::dest_order_by(cfg)
                };
                ends.ch
                    .create_table(
                        &cfg.destination_table,
                        &dest_view,
                        &order_by,
                        CreateMode::IfNotExists,
                    )
                    .await
                    .map_err(|e| match e {
                        SinkError::Schema(m) => EngineError::Fatal(m),
                        other => other.into(),
                    })?;
                // Like a pipe's own snapshot, the load starts from an empty
                // table: rows of an earlier replication of it (removed, then
                // added again) may have been deleted at the source since.
                // Not routed yet, so no CDC change is lost; a redo before
                // TableLoadStarted empties it again, and the new snapshot
                // holds whatever CDC had written.
                ends.ch.truncate(&cfg.destination_table).await?;
                PreparedTable {
                    source_table: cfg.source_table.clone(),
                    destination_table: cfg.destination_table.clone(),
                    load_table: cfg.destination_table.clone(),
                    load_table_uuid: table_uuid(&ends.ch, &cfg.destination_table).await?,
                    order_by,
                    generated_columns: cols.view.source.generated_columns.clone(),
                }
            }
        };
        // Published and routed before the load's temporary slot exists (see
        // table_load): every later commit reaches the table through CDC.
        self.publish(ends, pipe).await?;
        let oid = cols.described.oid;
        routes.by_oid.insert(
            oid,
            Route {
                view: dest_view,
                dest: prepared.destination_table.clone(),
                source: prepared.source_table.clone(),
                sort_key: prepared.order_by.clone(),
            },
        );
        let view = cols.view.clone();
        routes.described.insert(oid, cols);
        routes.loads.loading.insert(oid);
        failpoint::hit(failpoint::TABLE_ADD_ROUTED).await;
        tracing::info!(table = %prepared.source_table, "loading added table beside CDC");
        let name = prepared.source_table.clone();
        let run = table_load::run(self.load_job(ends, pipe, prepared, view));
        routes
            .loads
            .running
            .insert(name, (tokio::spawn(run.in_current_span()), oid));
        Ok(())
    }

    /// A table resync: `<destination>_resync` created (first time only: a
    /// redo keeps the CDC changes it already holds), written by CDC like the
    /// original, loaded beside CDC.
    async fn start_table_resync(
        &mut self,
        ends: &Ends,
        pipe: &Pipe,
        name: &str,
        job: Option<PreparedTable>,
        routes: &mut Routes,
    ) -> Result<()> {
        let Routes {
            by_oid,
            described,
            loads,
        } = routes;
        let Some((
            oid,
            Route {
                view: dest_view, ..
            },
        )) = by_oid.iter().find(|(_, r)| r.source == name)
        else {
            return Ok(());
        };
        let Some(cols) = described.get(oid) else {
            return Ok(());
        };
        let prepared = match job {
            Some(job) => {
                if !ends.ch.table_exists(&job.load_table).await? {
                    // Swapped and cleaned up before the swap was recorded.
                    return self.finish_swap(ends, &job, 0, loads, *oid).await;
                }
                job
            }
            None => {
                let Some(orig) = pipe.prepared.iter().find(|p| p.source_table == name) else {
                    return Ok(());
                };
                let load = names::resync_table(&orig.destination_table);
                ends.ch
                    .create_table(&load, dest_view, &orig.order_by, CreateMode::OrReplace)
                    .await
                    .map_err(|e| match e {
                        SinkError::Schema(m) => EngineError::Fatal(m),
                        other => other.into(),
                    })?;
                PreparedTable {
                    source_table: orig.source_table.clone(),
                    destination_table: orig.destination_table.clone(),
                    load_table_uuid: table_uuid(&ends.ch, &load).await?,
                    load_table: load,
                    order_by: orig.order_by.clone(),
                    generated_columns: cols.view.source.generated_columns.clone(),
                }
            }
        };
        loads.also.insert(*oid, prepared.load_table.clone());
        failpoint::hit(failpoint::TABLE_RESYNC_ROUTED).await;
        tracing::info!(table = %name, load_table = %prepared.load_table, "resyncing table beside CDC");
        let run = table_load::run(self.load_job(ends, pipe, prepared, cols.view.clone()));
        loads
            .running
            .insert(name.to_owned(), (tokio::spawn(run.in_current_span()), *oid));
        Ok(())
    }

    /// The end of a table resync, between CDC batches: soft-deleted rows of
    /// the original carried over, tables exchanged, old data dropped.
    async fn swap_table(
        &mut self,
        ends: &Ends,
        job: &PreparedTable,
        routes: &mut Routes,
    ) -> Result<()> {
        let Some((oid, Route { view: table, .. })) = routes
            .by_oid
            .iter()
            .find(|(_, r)| r.source == job.source_table)
        else {
            return Ok(());
        };
        let oid = *oid;
        let mut moved = 0;
        if table_uuid(&ends.ch, &job.destination_table).await? != job.load_table_uuid {
            let keys: Vec<String> = table
                .key
                .iter()
                .map(|&i| table.columns[i].name.clone())
                .collect();
            moved = ends
                .ch
                .transfer_soft_deletes(
                    &job.destination_table,
                    &job.load_table,
                    &keys,
                    &HashMap::new(),
                )
                .await?;
            failpoint::hit(failpoint::TABLE_SWAP_BEFORE_EXCHANGE).await;
            ends.ch
                .exchange_tables(&job.destination_table, &job.load_table)
                .await?;
        }
        failpoint::hit(failpoint::TABLE_SWAP_AFTER_EXCHANGE).await;
        self.finish_swap(ends, job, moved, &mut routes.loads, oid)
            .await
    }

    async fn finish_swap(
        &mut self,
        ends: &Ends,
        job: &PreparedTable,
        moved: u64,
        loads: &mut Loads,
        oid: u32,
    ) -> Result<()> {
        // Only once the destination carries the load's UUID is the
        // `_resync` name the old data.
        if table_uuid(&ends.ch, &job.destination_table).await? == job.load_table_uuid {
            ends.ch.drop_table_if_exists(&job.load_table).await?;
        }
        loads.also.remove(&oid);
        ends.ch.forget_schema(&job.destination_table);
        self.record(vec![Payload::TableSwapped(TableSwapped {
            source_table: job.source_table.clone(),
            destination_table: job.destination_table.clone(),
            soft_deletes_transferred: moved,
        })])
        .await?;
        tracing::info!(table = %job.source_table, soft_deletes = moved, "table resync swapped in");
        Ok(())
    }
}

/// A table as the source describes it (every column) and how it is
/// replicated: what CDC rows are projected with and Relation messages are
/// compared to.
#[derive(Clone)]
struct TableColumns {
    described: SourceTable,
    view: Replicated,
    config: TableConfig,
    /// Position of the table in the pipe's config (for error fields).
    index: usize,
}

/// Each table's [`TableColumns`] by relation oid.
fn table_columns(ends: &Ends, pipe: &Pipe) -> HashMap<u32, TableColumns> {
    let configs = Worker::table_configs(pipe);
    ends.tables
        .iter()
        .zip(&ends.views)
        .zip(configs)
        .enumerate()
        .map(|(index, ((t, v), config))| {
            (
                t.oid,
                TableColumns {
                    described: t.clone(),
                    view: v.clone(),
                    config,
                    index,
                },
            )
        })
        .collect()
}

/// A decoded row (every source column) cut down to the replicated ones.
fn project_row(described: &HashMap<u32, TableColumns>, oid: u32, row: &Row) -> Row {
    match described.get(&oid) {
        Some(t) => t.view.project(row),
        None => row.clone(),
    }
}

/// The replicated view of every table of a config, in order. A failed
/// table (`failed`, not routed by CDC) whose columns no longer fit its
/// options gets an empty view instead of stopping the pipe.
fn replicated_views(
    configs: &[TableConfig],
    tables: &[SourceTable],
    failed: &[&str],
) -> Result<Vec<Replicated>> {
    configs
        .iter()
        .zip(tables)
        .enumerate()
        .map(
            |(i, (cfg, t))| match columns::replicated(i, t, cfg, false) {
                Ok(v) => Ok(v),
                Err(_) if failed.contains(&cfg.source_table.as_str()) => {
                    let empty = SourceTable {
                        columns: Vec::new(),
                        key: Vec::new(),
                        ..t.clone()
                    };
                    Ok(Replicated {
                        kept: Vec::new(),
                        source: empty.clone(),
                        dest: empty,
                    })
                }
                Err(p) => Err(column_error(t, &p)),
            },
        )
        .collect()
}

/// Where the CDC loop sends one relation's changes.
#[derive(Debug, Clone)]
struct Route {
    /// The replicated columns under their source names: what ClickHouse
    /// has (rows are projected onto it as they are decoded).
    view: SourceTable,
    /// The ClickHouse table written.
    dest: String,
    /// The table's canonical `schema.table`, as in the pipe's config.
    source: String,
    /// The ClickHouse ORDER BY (empty: the source key), for tombstones.
    sort_key: Vec<String>,
}

/// The CDC loop's routing state, changed only between transactions: the
/// pipe's tables, then tables being loaded beside CDC (matched by name:
/// adds and removals reorder the lists).
#[derive(Default)]
struct Routes {
    by_oid: HashMap<u32, Route>,
    /// The source's description of each routed table.
    described: HashMap<u32, TableColumns>,
    /// Loads running beside CDC.
    loads: Loads,
}

impl Routes {
    /// Writes a relation's rows to its table (and to a table resync's
    /// `_resync` table).
    async fn write(
        &self,
        ends: &Ends,
        oid: u32,
        route: &Route,
        rows: Vec<(Row, u64, bool)>,
    ) -> Result<()> {
        let side = self.loads.side(oid, &ends.pg, &self.described);
        write_rows(
            &ends.ch,
            &route.dest,
            &route.view,
            &route.sort_key,
            rows,
            side,
        )
        .await
    }

    /// A failed table being rebuilt by a table resync: its CDC changes go to
    /// the `_resync` table only (the old table may not fit the source's new
    /// types; it is swapped out at the end).
    fn rebuild_only(&mut self, name: &str) {
        let Some((oid, route)) = self.by_oid.iter_mut().find(|(_, r)| r.source == name) else {
            return;
        };
        if let Some(load) = self.loads.also.remove(oid) {
            route.dest = load;
        }
    }
}

fn column_error(table: &SourceTable, problems: &[columns::ColumnProblem]) -> EngineError {
    let list: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    EngineError::Fatal(format!(
        "the columns of source table {}.{} no longer fit the pipe's column options ({}); \
         change the source table, or resync the pipe with new column options \
         (ResyncPipe replace_column_options, pgpipe resync --exclude/--rename)",
        table.schema,
        table.name,
        list.join("; ")
    ))
}

/// Writes one table's changes of a batch, in commit order: unchanged TOAST
/// values are filled from earlier rows or ClickHouse, then only the last
/// change per sorting key is sent (same-version rows would otherwise tie).
///
/// When `order_by` has columns outside the source key, a row's sorting key
/// can change while its source key stays, and a delete arrives with the key
/// alone: its tombstone would land under another sorting key and leave the
/// row live. So each change is preceded by a tombstone that copies the
/// key's previous row (from earlier in the batch or ClickHouse; none if the
/// key is new), and a delete is that copy.
async fn write_rows(
    ch: &ChSink,
    dest: &str,
    table: &SourceTable,
    order_by: &[String],
    rows: Vec<(Row, u64, bool)>,
    side: Side<'_>,
) -> Result<()> {
    let extra: Vec<usize> = order_by
        .iter()
        .filter_map(|name| table.columns.iter().position(|c| &c.name == name))
        .filter(|i| !table.key.contains(i))
        .collect();
    // (row, version, deleted, tombstone of a previous row that may not exist)
    let mut expanded: Vec<(Row, u64, bool, bool)> = Vec::with_capacity(rows.len());
    for (row, version, deleted) in rows {
        if extra.is_empty() {
            expanded.push((row, version, deleted, false));
            continue;
        }
        let previous: Row = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if table.key.contains(&i) {
                    c.clone()
                } else {
                    Cell::UnchangedToast
                }
            })
            .collect();
        if deleted {
            expanded.push((previous, version, true, false));
        } else {
            expanded.push((previous, version, true, true));
            expanded.push((row, version, false, false));
        }
    }
    let (mut cells, meta): (Vec<Row>, Vec<(u64, bool, bool)>) = expanded
        .into_iter()
        .map(|(r, v, d, t)| (r, (v, d, t)))
        .unzip();
    let mut keep_row = vec![true; cells.len()];
    if cells.iter().any(|r| r.contains(&Cell::UnchangedToast)) {
        if let (true, Some((pg, names))) = (extra.is_empty(), side.source) {
            // A table being loaded: rows the load has not written yet are
            // read from the source.
            let (_, missing) = ch.fill_from_previous(dest, table, &mut cells).await?;
            for (i, m) in missing.into_iter().enumerate() {
                if m.is_some() {
                    source::fill_from_source(pg, names, &mut cells[i]).await?;
                }
            }
        } else if extra.is_empty() {
            ch.fill_unchanged(dest, table, &mut cells).await?;
        } else {
            let (_, missing) = ch.fill_from_previous(dest, table, &mut cells).await?;
            for (i, m) in missing.into_iter().enumerate() {
                let Some(e) = m else { continue };
                match meta[i] {
                    // No previous row: nothing to bury.
                    (_, _, true) => keep_row[i] = false,
                    // A delete of a row ClickHouse never had: the key alone,
                    // as without a custom ORDER BY.
                    (_, true, false) => {
                        for c in cells[i].iter_mut() {
                            if *c == Cell::UnchangedToast {
                                *c = Cell::Null;
                            }
                        }
                    }
                    (_, false, false) => match side.source {
                        Some((pg, names)) => {
                            source::fill_from_source(pg, names, &mut cells[i]).await?;
                        }
                        None => return Err(e.into()),
                    },
                }
            }
        }
    }
    let mut last: HashMap<Vec<Cell>, usize> = HashMap::with_capacity(cells.len());
    for (i, row) in cells.iter().enumerate() {
        if !keep_row[i] {
            continue;
        }
        let key: Vec<Cell> = table
            .key
            .iter()
            .chain(&extra)
            .map(|&k| row.get(k).cloned().unwrap_or(Cell::Null))
            .collect();
        last.insert(key, i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    // A table being resynced gets the same rows in its `_resync` table.
    for target in std::iter::once(dest).chain(side.also) {
        let mut writer = ch.writer(target, table).await?;
        for &i in &keep {
            let (version, deleted, _) = meta[i];
            writer.write(&cells[i], version, deleted).await?;
        }
        writer.end().await?;
    }
    Ok(())
}

/// Where else a table's changes go while it is loaded beside CDC.
#[derive(Clone, Copy, Default)]
struct Side<'a> {
    /// The `_resync` table of a table resync (written like the original).
    also: Option<&'a str>,
    /// The source and the table's columns under their source names, for
    /// unchanged TOAST values of rows an added table's load (or the load
    /// of a partition attached to a partitioned table) has not written yet.
    source: Option<(&'a tokio_postgres::Client, &'a SourceTable)>,
}

/// Loads of single tables running beside the CDC loop (aborted with it).
#[derive(Default)]
struct Loads {
    /// By source table: the task and the table's OID.
    running: HashMap<String, (tokio::task::JoinHandle<Result<u64>>, u32)>,
    /// `_resync` tables of tables being resynced, by OID.
    also: HashMap<u32, String>,
    /// OIDs of added tables whose load has not finished.
    loading: std::collections::HashSet<u32>,
}

impl Loads {
    fn restart(&mut self, oid: u32) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(_, (_, o))| *o == oid)
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((handle, _)) = self.running.remove(&name) {
                handle.abort();
            }
        }
    }

    fn side<'a>(
        &'a self,
        oid: u32,
        pg: &'a tokio_postgres::Client,
        described: &'a HashMap<u32, TableColumns>,
    ) -> Side<'a> {
        Side {
            also: self.also.get(&oid).map(String::as_str),
            // A partitioned table too: rows of a partition attached since
            // the last leaf check are not in ClickHouse yet.
            source: described
                .get(&oid)
                .filter(|t| self.loading.contains(&oid) || t.described.partitioned)
                .map(|t| (pg, &t.view.source)),
        }
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        for (handle, _) in self.running.values() {
            handle.abort();
        }
    }
}

/// A described table's canonical `schema.table`, as in the pipe's config.
fn canonical(t: &SourceTable) -> String {
    validate::QualifiedName {
        schema: t.schema.clone(),
        table: t.name.clone(),
    }
    .canonical()
}

/// The ClickHouse UUID of a table ("" when it does not exist).
pub(super) async fn table_uuid(ch: &ChSink, table: &str) -> Result<String> {
    Ok(ch.table_uuid(table).await?.unwrap_or_default())
}

/// The last slot lag measured by the CDC loop.
/// The rows read since the last write to ClickHouse (the CDC loop's
/// state between flushes). It holds at most about `limit` rows or
/// [`BATCH_BYTES`], whatever the size of the transactions streaming in.
struct Batch {
    /// Rows per relation OID: (row, version, deleted).
    pending: HashMap<u32, Vec<(Row, u64, bool)>>,
    rows: usize,
    bytes: usize,
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
        self.pending
            .entry(oid)
            .or_default()
            .push((row, version, kind == ChangeKind::Delete));
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
    last_report: Instant,
}

#[derive(Default)]
struct LagSample {
    bytes: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event_log::new_event;

    /// A deletion racing with the worker's appends: nothing of the
    /// incarnation may be recorded after its `PipeDeleted`. (Before the fix
    /// the status check and the stream version were read apart, and an
    /// append could land right after the deletion.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nothing_is_recorded_after_the_incarnation_is_deleted() {
        const ROUNDS: u64 = 150;
        const RECORDERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = crate::server::open_core(dir.path().join("data"), false)
            .await
            .unwrap();
        for round in 0..ROUNDS {
            let name = format!("p{round}");
            let id = format!("id-{round}");
            let created = Payload::PipeCreated(PipeCreated {
                name: name.clone(),
                config: Some(PipeConfig::default()),
                resync_of: String::new(),
            });
            core.log
                .append(&name, 0, vec![new_event(&id, created)])
                .await
                .unwrap();
            let recorders: Vec<_> = (0..RECORDERS)
                .map(|_| {
                    let w = Worker {
                        core: Arc::clone(&core),
                        id: id.clone(),
                        name: name.clone(),
                        failing: None,
                        step: Step::Cdc,
                        backoff: Duration::from_secs(1),
                    };
                    tokio::spawn(async move {
                        loop {
                            let progress = Payload::CdcProgress(CdcProgress::default());
                            match w.record(vec![progress]).await {
                                Ok(_) => tokio::task::yield_now().await,
                                Err(EngineError::Stopped) => return,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_micros(round * 37 % 3_000)).await;
            // As the DeletePipe command does: at the projection's version.
            loop {
                let version = core.read(|p| p.stream_version(&name));
                let deleted = Payload::PipeDeleted(PipeDeleted::default());
                match core
                    .log
                    .append(&name, version, vec![new_event(&id, deleted)])
                    .await
                {
                    Ok(_) => break,
                    Err(LogError::VersionConflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            for r in recorders {
                r.await.unwrap();
            }
            let events = core
                .log
                .read_stream(&name, 0, u64::MAX, usize::MAX)
                .unwrap();
            let kinds: Vec<_> = events
                .iter()
                .map(|e| crate::domain::projection::event_kind(e))
                .collect();
            assert_eq!(
                kinds.last(),
                Some(&"pipe_deleted"),
                "round {round}: recorded after the deletion: {:?}",
                &kinds[kinds.len().saturating_sub(4)..]
            );
        }
    }
}
