//! Partitioned tables: one ClickHouse table for the partitioned parent.
//!
//! - The publication publishes through the root
//!   (`publish_via_partition_root`, see `source::ensure_publication`), so the
//!   changes of every partition, including partitions created or attached
//!   later, arrive under the parent's relation and its routing.
//! - The parent has no storage: a snapshot or table load copies each leaf
//!   partition (in CTID page ranges, in parallel) into the one destination
//!   table. The leaves are listed before the snapshot is exported and
//!   recorded (`PartitionsChanged`, reset): every listed leaf's rows are in
//!   the snapshot.
//! - A partition ATTACHed with rows while the pipe runs brings rows that are
//!   in no WAL the slot decodes. The CDC loop compares the table's leaves
//!   with the recorded ones now and then ([`LEAF_CHECK_EVERY`]); a new leaf
//!   is recorded as attached and its rows are loaded beside CDC exactly like
//!   a table added to a running pipe (`table_load`): a temporary slot fixes
//!   a consistent point C after the leaf is published through the root, the
//!   snapshot exported after it holds every commit before C, its rows carry
//!   version C - 1, and CDC changes (>= C) win. The load's end is recorded;
//!   a crash before it loads the leaf again (the projection lists it under
//!   `partitions_loading`). A partition created empty is loaded the same
//!   way, at the cost of an empty copy.
//! - A leaf DETACHed (or dropped) is recorded as detached with a warning in
//!   the log: its rows stay in ClickHouse, as Postgres emits no deletes.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use super::copy::CopyWork;
use super::worker::{EngineError, Facts};
use crate::domain::columns::Replicated;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::source::{self, Leaf};

/// How often the CDC loop compares a partitioned table's leaves with the
/// recorded ones.
pub(super) const LEAF_CHECK_EVERY: Duration = Duration::from_secs(2);

/// One table's share of a copy.
pub(super) struct TableCopy {
    pub work: Vec<CopyWork>,
    pub plan: SnapshotTablePlan,
    /// For a partitioned table: the leaves the copy covers (to record
    /// before the snapshot is exported).
    pub listed: Option<Payload>,
}

/// Plans the copy of one table: its CTID page ranges, or for a partitioned
/// table every leaf's. Call before the snapshot is exported (see the module
/// docs: a leaf attached after the listing is found by the CDC loop).
pub(super) async fn plan_copy(
    pg: &Client,
    prepared: &PreparedTable,
    view: &Replicated,
    rows_per_partition: u64,
) -> Result<TableCopy, EngineError> {
    if !view.source.partitioned {
        let parts = source::plan_partitions(&view.source, rows_per_partition);
        return Ok(TableCopy {
            plan: SnapshotTablePlan {
                source_table: prepared.source_table.clone(),
                partitions_total: parts.len() as u32,
                estimated_rows: view.source.estimated_rows,
            },
            work: parts
                .into_iter()
                .map(|part| CopyWork {
                    prepared: prepared.clone(),
                    view: view.clone(),
                    part,
                })
                .collect(),
            listed: None,
        });
    }
    let leaves = source::leaf_partitions(pg, view.source.oid).await?;
    let work = leaf_work(prepared, view, &leaves, rows_per_partition);
    Ok(TableCopy {
        plan: SnapshotTablePlan {
            source_table: prepared.source_table.clone(),
            partitions_total: work.len() as u32,
            estimated_rows: leaves.iter().map(|l| l.estimated_rows).sum(),
        },
        work,
        listed: Some(Payload::PartitionsChanged(PartitionsChanged {
            source_table: prepared.source_table.clone(),
            replicated: leaves.iter().map(Leaf::canonical).collect(),
            reset: true,
            ..Default::default()
        })),
    })
}

/// The page ranges of each leaf, copied into `prepared`'s load table.
pub(super) fn leaf_work(
    prepared: &PreparedTable,
    view: &Replicated,
    leaves: &[Leaf],
    rows_per_partition: u64,
) -> Vec<CopyWork> {
    let mut work = Vec::new();
    for leaf in leaves {
        // The same columns, selected by name from the leaf (its attribute
        // order may differ from the parent's).
        let mut leaf_view = view.clone();
        leaf_view.source.schema = leaf.schema.clone();
        leaf_view.source.name = leaf.name.clone();
        leaf_view.source.estimated_rows = leaf.estimated_rows;
        leaf_view.source.pages = leaf.pages;
        leaf_view.source.partitioned = false;
        for part in source::plan_partitions(&leaf_view.source, rows_per_partition) {
            work.push(CopyWork {
                prepared: prepared.clone(),
                view: leaf_view.clone(),
                part,
            });
        }
    }
    work
}

/// Compares a partitioned table's leaves with what the pipe recorded:
/// records new leaves as attached and gone ones as detached, and returns
/// the leaves whose rows must be loaded (new ones and those of a load a
/// crash interrupted). Empty when there is nothing to load.
pub(super) async fn check_leaves(
    facts: &Facts,
    pg: &Client,
    oid: u32,
    stats: &TableStats,
) -> Result<Vec<String>, EngineError> {
    let current: BTreeSet<String> = source::leaf_partitions(pg, oid)
        .await?
        .iter()
        .map(Leaf::canonical)
        .collect();
    let details = stats.source_details.clone().unwrap_or_default();
    let known: BTreeSet<&String> = details
        .partitions
        .iter()
        .chain(&details.partitions_loading)
        .collect();
    let attached: Vec<String> = current
        .iter()
        .filter(|l| !known.contains(l))
        .cloned()
        .collect();
    let detached: Vec<String> = known
        .iter()
        .filter(|l| !current.contains(l.as_str()))
        .map(|l| (*l).clone())
        .collect();
    if !attached.is_empty() || !detached.is_empty() {
        for leaf in &attached {
            tracing::info!(table = %stats.source_table, partition = %leaf, "new partition: loading its rows beside CDC");
        }
        for leaf in &detached {
            tracing::warn!(table = %stats.source_table, partition = %leaf,
                "partition detached or dropped: its rows stay in ClickHouse (Postgres sends no deletes for them)");
        }
        facts
            .record(vec![Payload::PartitionsChanged(PartitionsChanged {
                source_table: stats.source_table.clone(),
                attached: attached.clone(),
                detached: detached.clone(),
                ..Default::default()
            })])
            .await?;
    }
    let mut load: Vec<String> = details
        .partitions_loading
        .iter()
        .filter(|l| current.contains(l.as_str()))
        .cloned()
        .collect();
    load.extend(attached);
    Ok(load)
}
