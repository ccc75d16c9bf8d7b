//! Loading one table while the pipe's CDC goes on: a table added by
//! UpdatePipe, a table rebuilt by a table resync (ResyncPipe with tables),
//! or partitions attached to a partitioned table ([`load_leaves`], see
//! `partitions`).
//!
//! Why no change is lost or doubled (the same version argument as the
//! pipe's own snapshot, see `docs/architecture.md`):
//! 1. Before the load starts, the CDC loop routes the table: it is in the
//!    publication (an added table) and its changes are applied to the load
//!    table (for a table resync, to the original too). From then on every
//!    transaction that commits is decoded with the table published, because
//!    decoding reads the publication through the catalog as of each commit.
//! 2. The load creates a temporary slot, at consistent point C, and exports
//!    its snapshot after that: it holds every transaction committed before C.
//!    C is after step 1, so every transaction committed at or after C reaches
//!    the load table through CDC with its commit LSN (>= C) as version.
//! 3. Snapshot rows carry version C - 1. ReplacingMergeTree keeps, per key,
//!    the highest version: a change seen both in the snapshot and in CDC
//!    collapses, and a change after the snapshot wins over its older row.
//!
//! A redo after a crash loads again with a new temporary slot into the same
//! table, without truncating it (it holds CDC changes that the pipe's slot
//! has already moved past): older partial rows lose to newer versions.

use std::sync::Arc;

use super::copy::{CopyPlan, CopyWork, Progress, copy_partitions};
use super::partitions::{self, leaf_work};
use super::worker::{EngineError, Facts};
use crate::domain::columns::Replicated;
use crate::failpoint;
use crate::model::Lsn;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::ChSink;
use crate::source::{self, Leaf, SnapshotExport};

/// What a load needs, owned (it runs as its own task).
pub(super) struct LoadJob {
    pub facts: Facts,
    pub conn: String,
    pub password: Option<String>,
    pub ch: ChSink,
    pub settings: PipeSettings,
    pub prepared: PreparedTable,
    /// The table's replicated columns: copied by source names, written by
    /// destination names.
    pub view: Replicated,
}

/// Loads the table; records TableLoadStarted, progress and
/// TableLoadCompleted. Returns the rows copied.
pub(super) async fn run(job: LoadJob) -> Result<u64, EngineError> {
    let pg = job.connect().await?;
    let prepared = &job.prepared;
    // Listed before the slot and the snapshot (see `partitions`).
    let copy = partitions::plan_copy(
        &pg,
        prepared,
        &job.view,
        job.settings.snapshot_rows_per_partition,
    )
    .await?;
    let snap = job.snapshot(pg, "load").await?;
    let plan = copy.plan;
    let mut started = vec![Payload::TableLoadStarted(TableLoadStarted {
        table: Some(prepared.clone()),
        partitions_total: plan.partitions_total,
        estimated_rows: plan.estimated_rows,
        consistent_lsn: snap.consistent.to_string(),
    })];
    started.extend(copy.listed);
    job.facts.record(started).await?;
    failpoint::hit(failpoint::TABLE_LOAD_STARTED).await;
    let progress = Arc::new(Progress::new(std::slice::from_ref(&plan)));
    job.copy(
        snap,
        copy.work,
        &progress,
        failpoint::TABLE_LOAD_PARTITION_DONE,
    )
    .await?;
    let rows = progress.rows(&prepared.source_table);
    let mut done = progress.events();
    done.push(Payload::TableLoadCompleted(TableLoadCompleted {
        source_table: prepared.source_table.clone(),
        rows,
    }));
    job.facts.record(done).await?;
    tracing::info!(table = %prepared.source_table, rows, "table loaded");
    Ok(rows)
}

/// A snapshot exported right after a temporary slot's consistent point, for
/// a load beside CDC: rows copied from it are versioned just below that
/// point, so every change CDC applies for them wins.
pub(super) struct BesideCdc {
    pub consistent: Lsn,
    export: SnapshotExport,
    snapshot_name: String,
}

/// The steps every load beside CDC shares (a table's here, some leaves' in
/// `partitions::load_leaves`): one place for how the snapshot is fixed and
/// how rows are versioned against it.
impl LoadJob {
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, EngineError> {
        Ok(source::connect(&self.conn, self.password.as_deref()).await?)
    }

    /// Fixes the snapshot. `pg` is the session that creates the temporary
    /// slot; it is closed here, which drops the slot (its own session cannot
    /// drop it while holding it), once the snapshot is fixed.
    pub(super) async fn snapshot(
        &self,
        pg: tokio_postgres::Client,
        purpose: &str,
    ) -> Result<BesideCdc, EngineError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let slot = format!("pgpipe_{purpose}_{}", id.get(..16).unwrap_or("0"));
        let consistent = source::create_temporary_slot(&pg, &slot).await?;
        let (export, snapshot_name) =
            SnapshotExport::begin(&self.conn, self.password.as_deref()).await?;
        drop(pg);
        Ok(BesideCdc {
            consistent,
            export,
            snapshot_name,
        })
    }

    /// Copies `work` from `snap` at version C - 1; the export ends whether
    /// or not the copy succeeded.
    pub(super) async fn copy(
        &self,
        snap: BesideCdc,
        work: Vec<CopyWork>,
        progress: &Arc<Progress>,
        failpoint: failpoint::FailPoint,
    ) -> Result<(), EngineError> {
        let plan = CopyPlan {
            conn: self.conn.clone(),
            password: self.password.clone(),
            snapshot_name: snap.snapshot_name,
            ch: self.ch.clone(),
            version: snap.consistent.0.saturating_sub(1),
            parallelism: self.settings.snapshot_parallelism,
            failpoint,
        };
        let copied = copy_partitions(&self.facts, plan, work, Arc::clone(progress)).await;
        let _ = snap.export.finish().await;
        copied
    }
}

/// A load of some leaves of a partitioned table beside CDC.
pub(super) struct LeafLoad {
    /// The partitioned table's load: rows go to its destination.
    pub table: LoadJob,
    /// Leaves to load, canonical names.
    pub leaves: Vec<String>,
}

/// Loads the leaves' rows into the table's destination (see `partitions`
/// for why versions make this safe beside CDC); records their end as
/// `PartitionsChanged` (replicated). Returns the rows copied.
pub(super) async fn load_leaves(job: LeafLoad) -> Result<u64, EngineError> {
    let LeafLoad { table, leaves } = job;
    let (prepared, view) = (&table.prepared, &table.view);
    let pg = table.connect().await?;
    let listed = source::leaf_partitions(&pg, view.source.oid).await?;
    let wanted: Vec<Leaf> = listed
        .into_iter()
        .filter(|l| leaves.contains(&l.canonical()))
        .collect();
    let snap = table.snapshot(pg, "leaf").await?;
    // Progress is counted per leaf (its own name), apart from the table's
    // snapshot counts.
    let mut work = Vec::new();
    let mut plans = Vec::new();
    for leaf in &wanted {
        let mut as_leaf = prepared.clone();
        as_leaf.source_table = leaf.canonical();
        let leaf_work = leaf_work(
            &as_leaf,
            view,
            std::slice::from_ref(leaf),
            table.settings.snapshot_rows_per_partition,
        );
        plans.push(SnapshotTablePlan {
            source_table: as_leaf.source_table.clone(),
            partitions_total: leaf_work.len() as u32,
            estimated_rows: leaf.estimated_rows,
        });
        work.extend(leaf_work);
    }
    tracing::info!(table = %prepared.source_table, partitions = ?leaves, consistent_point = %snap.consistent, "loading partitions beside CDC");
    let progress = Arc::new(Progress::new(&plans));
    table
        .copy(
            snap,
            work,
            &progress,
            failpoint::PARTITION_LOAD_PARTITION_DONE,
        )
        .await?;
    failpoint::hit(failpoint::PARTITION_LOAD_COPIED).await;
    let rows = plans.iter().map(|p| progress.rows(&p.source_table)).sum();
    table
        .facts
        .record(vec![Payload::PartitionsChanged(PartitionsChanged {
            source_table: prepared.source_table.clone(),
            replicated: wanted.iter().map(Leaf::canonical).collect(),
            rows,
            ..Default::default()
        })])
        .await?;
    tracing::info!(table = %prepared.source_table, rows, "partitions loaded");
    Ok(rows)
}
