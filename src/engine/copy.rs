//! The parallel partition copy shared by a pipe's snapshot and by a table
//! load beside CDC: workers on one exported snapshot pop partitions from a
//! queue, write each to ClickHouse at one version, and count progress that
//! the caller's facts receive coalesced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::Instrument;

use super::worker::{EngineError, Facts};
use crate::domain::columns::Replicated;
use crate::failpoint;
use crate::metrics::RowKind;
use crate::model::RowBatch;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::ChSink;
use crate::source::{Partition, SnapshotWorker};

/// Progress events per table are coalesced to at most one per this period.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One partition of one table to copy.
pub(super) struct CopyWork {
    pub prepared: PreparedTable,
    /// Selected by source names, written by destination names.
    pub view: Replicated,
    pub part: Partition,
}

/// Where and how a copy runs.
pub(super) struct CopyPlan {
    pub conn: String,
    pub password: Option<String>,
    /// The exported snapshot every worker reads.
    pub snapshot_name: String,
    pub ch: ChSink,
    /// The version every copied row carries.
    pub version: u64,
    pub parallelism: u32,
    /// Hit after each partition ClickHouse acknowledged (crash tests).
    pub failpoint: failpoint::FailPoint,
}

/// Copies every partition of `work` with up to `plan.parallelism` workers,
/// recording `progress.events()` through `facts` at most once per
/// [`PROGRESS_EVERY`]. The first error stops all workers.
pub(super) async fn copy_partitions(
    facts: &Facts,
    plan: CopyPlan,
    work: Vec<CopyWork>,
    progress: Arc<Progress>,
) -> Result<(), EngineError> {
    let workers = (plan.parallelism.max(1) as usize).min(work.len().max(1));
    let queue = Arc::new(Mutex::new(work));
    let plan = Arc::new(plan);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let progress = Arc::clone(&progress);
        let plan = Arc::clone(&plan);
        let metrics = Arc::clone(facts.core.metrics());
        let pipe_name = facts.name.clone();
        set.spawn(
            async move {
                let mut worker = SnapshotWorker::begin(
                    &plan.conn,
                    plan.password.as_deref(),
                    &plan.snapshot_name,
                )
                .await?;
                // One batch buffer per worker, reused for every batch.
                let mut batch = RowBatch::default();
                loop {
                    let Some(CopyWork {
                        prepared,
                        view,
                        part,
                    }) = queue.lock().await.pop()
                    else {
                        break;
                    };
                    let table = &prepared.source_table;
                    let copying = Instant::now();
                    let mut writer = plan.ch.writer(&prepared.load_table, &view.dest).await?;
                    let mut copy = worker.copy_partition(&view.source, &part).await?;
                    let mut rows = 0u64;
                    while copy.next_rows(&mut batch).await? {
                        writer.write_rows(&batch, plan.version).await?;
                        progress.add_rows(table, batch.len() as u64);
                        rows += batch.len() as u64;
                    }
                    drop(copy);
                    writer.end().await?;
                    // Counted once ClickHouse acknowledged the partition.
                    metrics.rows_applied(&pipe_name, table, RowKind::Snapshot, rows);
                    progress.partition_done(table, copying.elapsed());
                    failpoint::hit(plan.failpoint).await;
                }
                worker.finish().await?;
                Ok::<_, EngineError>(())
            }
            .in_current_span(),
        );
    }
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                // Returning drops the set, which aborts the other workers.
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(join)) => {
                    return Err(EngineError::Fatal(format!("copy worker crashed: {join}")));
                }
            },
            _ = tick.tick() => {
                facts.record(progress.events()).await?;
            }
        }
    }
}

/// Snapshot counters shared by the copy workers.
pub(super) struct Progress {
    tables: HashMap<String, (AtomicU64, AtomicU64, u32)>,
    /// Per table: milliseconds spent on its finished partitions.
    partition_ms: HashMap<String, AtomicU64>,
}

impl Progress {
    pub(super) fn new(plans: &[SnapshotTablePlan]) -> Self {
        Self {
            tables: plans
                .iter()
                .map(|p| {
                    (
                        p.source_table.clone(),
                        (AtomicU64::new(0), AtomicU64::new(0), p.partitions_total),
                    )
                })
                .collect(),
            partition_ms: plans
                .iter()
                .map(|p| (p.source_table.clone(), AtomicU64::new(0)))
                .collect(),
        }
    }

    pub(super) fn add_rows(&self, table: &str, n: u64) {
        if let Some((rows, _, _)) = self.tables.get(table) {
            rows.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn partition_done(&self, table: &str, took: Duration) {
        if let Some(ms) = self.partition_ms.get(table) {
            ms.fetch_add(took.as_millis() as u64, Ordering::Relaxed);
        }
        if let Some((_, done, _)) = self.tables.get(table) {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn rows(&self, table: &str) -> u64 {
        self.tables
            .get(table)
            .map_or(0, |(r, _, _)| r.load(Ordering::Relaxed))
    }

    pub(super) fn events(&self) -> Vec<Payload> {
        let mut out: Vec<Payload> = self
            .tables
            .iter()
            .map(|(name, (rows, done, total))| {
                Payload::SnapshotProgress(SnapshotProgress {
                    source_table: name.clone(),
                    rows_copied: rows.load(Ordering::Relaxed),
                    partitions_done: done.load(Ordering::Relaxed) as u32,
                    partitions_total: *total,
                    partition_ms_total: self
                        .partition_ms
                        .get(name)
                        .map_or(0, |ms| ms.load(Ordering::Relaxed)),
                })
            })
            .collect();
        out.sort_by_key(|p| match p {
            Payload::SnapshotProgress(s) => s.source_table.clone(),
            _ => String::new(),
        });
        out
    }
}
