//! Current state as a fold of the events.
//!
//! The same fold serves the service (all pipes, rebuilt by replay) and each
//! WatchPipe stream (one pipe name), so a watcher's view and GetPipe can never
//! disagree.

use std::collections::{BTreeMap, HashMap};

use crate::domain::validate::selector_matches;

use crate::proto::{
    DeleteReason, Event, PartitionsChanged, Pipe, PipeConfig, PipeStatus, SchemaChangeKind,
    SchemaChanged, SourceTableDetails, StepTiming, TableConfig, TableState, TableStats,
    event::Payload,
};

/// Name of an event's payload, as shown to humans and in logs.
pub fn event_kind(e: &Event) -> &'static str {
    match &e.payload {
        None => "unknown",
        Some(p) => match p {
            Payload::PipeCreated(_) => "pipe_created",
            Payload::PipeDeleted(_) => "pipe_deleted",
            Payload::ResyncStarted(_) => "resync_started",
            Payload::TablesPrepared(_) => "tables_prepared",
            Payload::SnapshotStarted(_) => "snapshot_started",
            Payload::SnapshotProgress(_) => "snapshot_progress",
            Payload::SnapshotTableCompleted(_) => "snapshot_table_completed",
            Payload::SnapshotCompleted(_) => "snapshot_completed",
            Payload::SoftDeletesTransferred(_) => "soft_deletes_transferred",
            Payload::SwapStarted(_) => "swap_started",
            Payload::TablesSwapped(_) => "tables_swapped",
            Payload::CdcStarted(_) => "cdc_started",
            Payload::CdcProgress(_) => "cdc_progress",
            Payload::PipePaused(_) => "pipe_paused",
            Payload::PipeResumed(_) => "pipe_resumed",
            Payload::PipeFailed(_) => "pipe_failed",
            Payload::PipeRecovered(_) => "pipe_recovered",
            Payload::StepStarted(_) => "step_started",
            Payload::SetupCompleted(_) => "setup_completed",
            Payload::SourceReleased(_) => "source_released",
            Payload::PipeLabelsChanged(_) => "pipe_labels_changed",
            Payload::TablesAdded(_) => "tables_added",
            Payload::TablesRemoved(_) => "tables_removed",
            Payload::TableResyncRequested(_) => "table_resync_requested",
            Payload::TableLoadStarted(_) => "table_load_started",
            Payload::TableLoadCompleted(_) => "table_load_completed",
            Payload::TableSwapped(_) => "table_swapped",
            Payload::SlotHealthWarning(_) => "slot_health_warning",
            Payload::SlotHealthRecovered(_) => "slot_health_recovered",
            Payload::PartitionsChanged(_) => "partitions_changed",
            Payload::SchemaChanged(_) => "schema_changed",
            Payload::TableFailed(_) => "table_failed",
        },
    }
}

/// True when a watcher of the pipe name should stop after this event: the
/// name's pipe was deleted for good (a resync deletion is followed by the
/// new incarnation, so the stream goes on).
pub(crate) fn ends_stream(e: &Event) -> bool {
    matches!(&e.payload, Some(Payload::PipeDeleted(d)) if d.reason() != DeleteReason::Resync)
}

const PAUSED_DETAIL: &str = "paused: the replication slot is kept, so the source retains WAL until the pipe is resumed or deleted";

/// A table's snapshot counts, started afresh (a redone snapshot, a load).
fn snapshot_afresh(t: &mut TableStats, partitions_total: u32) {
    t.snapshot_partitions_total = partitions_total;
    t.snapshot_partitions_done = 0;
    t.snapshot_rows = 0;
    t.snapshot_done = false;
}

fn table_stats_mut<'a>(pipe: &'a mut Pipe, source_table: &str) -> Option<&'a mut TableStats> {
    pipe.tables
        .iter_mut()
        .find(|t| t.source_table == source_table)
}

fn details_mut(t: &mut TableStats) -> &mut SourceTableDetails {
    t.source_details
        .get_or_insert_with(SourceTableDetails::default)
}

/// Left unset for a table without any (no empty details on every table).
fn set_generated(t: &mut TableStats, columns: &[String]) {
    if !columns.is_empty() || t.source_details.is_some() {
        details_mut(t).generated_columns = columns.to_vec();
    }
}

/// Folds a partitioned table's leaf changes: replicated leaves are known
/// (a reset replaces the whole set), attached ones wait for their load,
/// detached ones are no longer part of the table.
fn apply_partitions_changed(d: &mut SourceTableDetails, c: &PartitionsChanged) {
    if c.reset {
        d.partitions.clear();
        d.partitions_loading.clear();
        d.partitions_detached.clear();
    }
    for leaf in &c.replicated {
        d.partitions_loading.retain(|l| l != leaf);
        d.partitions_detached.retain(|l| l != leaf);
        if !d.partitions.contains(leaf) {
            d.partitions.push(leaf.clone());
        }
    }
    for leaf in &c.attached {
        d.partitions_detached.retain(|l| l != leaf);
        if !d.partitions_loading.contains(leaf) && !d.partitions.contains(leaf) {
            d.partitions_loading.push(leaf.clone());
        }
    }
    for leaf in &c.detached {
        d.partitions.retain(|l| l != leaf);
        d.partitions_loading.retain(|l| l != leaf);
        if !d.partitions_detached.contains(leaf) {
            d.partitions_detached.push(leaf.clone());
        }
    }
    d.partitions.sort();
}

fn close_open_step(pipe: &mut Pipe, at: Option<prost_types::Timestamp>) {
    if let Some(step) = pipe.steps.last_mut()
        && step.finished_at.is_none()
    {
        step.duration_ms = match (&step.started_at, &at) {
            (Some(s), Some(f)) => {
                let ms = (f.seconds - s.seconds) * 1000 + i64::from(f.nanos - s.nanos) / 1_000_000;
                ms.max(0) as u64
            }
            _ => 0,
        };
        step.finished_at = at;
    }
}

/// Applies one event to the state of the incarnation it is about.
/// `PipeCreated` makes a new state; other events need the existing one.
pub(crate) fn apply(pipe: Option<&mut Pipe>, e: &Event) -> Option<Pipe> {
    let at = e.at;
    match (&e.payload, pipe) {
        (Some(Payload::PipeCreated(c)), _) => {
            let config = c.config.clone().unwrap_or_default();
            let tables = config
                .tables
                .iter()
                .map(|t| TableStats {
                    source_table: t.source_table.clone(),
                    destination_table: t.destination_table.clone(),
                    ..Default::default()
                })
                .collect();
            Some(Pipe {
                id: e.pipe_id.clone(),
                name: c.name.clone(),
                labels: config.labels.clone(),
                status: PipeStatus::Setup as i32,
                config: Some(config),
                tables,
                created_at: at,
                updated_at: at,
                resync_of: c.resync_of.clone(),
                stream_version: e.stream_version,
                cursor: e.seq,
                resyncing: !c.resync_of.is_empty(),
                steps: vec![StepTiming {
                    step: super::step::Step::Setup.name().into(),
                    started_at: at,
                    ..Default::default()
                }],
                ..Default::default()
            })
        }
        (Some(payload), Some(p)) => {
            p.updated_at = at;
            p.stream_version = e.stream_version;
            p.cursor = e.seq;
            match payload {
                Payload::PipeCreated(_) => {}
                Payload::PipeDeleted(d) => {
                    close_open_step(p, at);
                    p.status = PipeStatus::Deleted as i32;
                    p.resyncing = false;
                    p.status_detail.clear();
                    p.drop_destination_tables = d.drop_destination_tables;
                    p.delete_reason = match d.reason() {
                        DeleteReason::Resync => "resync".into(),
                        _ => "user".into(),
                    };
                }
                Payload::ResyncStarted(_) => {
                    p.resyncing = true;
                    p.status_detail = "resync requested: this incarnation is being replaced".into();
                }
                // A step restarted after a crash keeps its first start.
                Payload::StepStarted(s)
                    if p.steps
                        .last()
                        .is_some_and(|l| l.step == s.step && l.finished_at.is_none()) => {}
                Payload::StepStarted(s) => {
                    close_open_step(p, at);
                    p.steps.push(StepTiming {
                        step: s.step.clone(),
                        started_at: at,
                        ..Default::default()
                    });
                }
                Payload::SetupCompleted(s) => {
                    p.slot_name = s.slot_name.clone();
                    p.publication_name = s.publication_name.clone();
                    p.consistent_lsn = s.consistent_lsn.clone();
                }
                Payload::SourceReleased(_) => p.source_released = true,
                Payload::TablesPrepared(t) => {
                    p.tables_prepared = true;
                    p.prepared = t.tables.clone();
                    for prepared in &t.tables {
                        if let Some(s) = table_stats_mut(p, &prepared.source_table) {
                            s.destination_table = prepared.destination_table.clone();
                            set_generated(s, &prepared.generated_columns);
                        }
                    }
                }
                Payload::SnapshotStarted(s) => {
                    p.status = PipeStatus::Snapshot as i32;
                    for plan in &s.tables {
                        if let Some(t) = table_stats_mut(p, &plan.source_table) {
                            // A redone snapshot starts its counts afresh.
                            snapshot_afresh(t, plan.partitions_total);
                        }
                    }
                }
                Payload::SnapshotProgress(s) => {
                    if let Some(t) = table_stats_mut(p, &s.source_table) {
                        t.snapshot_rows = s.rows_copied;
                        t.snapshot_partitions_done = s.partitions_done;
                        t.snapshot_partitions_total = s.partitions_total;
                    }
                }
                Payload::SnapshotTableCompleted(s) => {
                    if let Some(t) = table_stats_mut(p, &s.source_table) {
                        t.snapshot_rows = s.rows;
                        t.snapshot_done = true;
                        t.snapshot_partitions_done = t.snapshot_partitions_total;
                    }
                }
                Payload::SnapshotCompleted(_) => p.snapshot_done = true,
                Payload::SoftDeletesTransferred(s) => {
                    if let Some(t) = table_stats_mut(p, &s.source_table) {
                        t.soft_deletes_transferred = s.rows;
                    }
                }
                Payload::SwapStarted(_) => p.status = PipeStatus::Resync as i32,
                Payload::TablesSwapped(_) => p.swapped = true,
                Payload::CdcStarted(c) => {
                    close_open_step(p, at);
                    p.status = PipeStatus::Running as i32;
                    p.resyncing = false;
                    p.cdc_started = true;
                    if p.last_lsn.is_empty() {
                        p.last_lsn = c.start_lsn.clone();
                    }
                }
                Payload::CdcProgress(c) => {
                    p.last_lsn = c.lsn.clone();
                    p.lag_bytes = c.lag_bytes;
                    for counts in &c.tables {
                        if let Some(t) = table_stats_mut(p, &counts.source_table) {
                            t.rows_inserted += counts.inserted;
                            t.rows_updated += counts.updated;
                            t.rows_deleted += counts.deleted;
                        }
                    }
                }
                Payload::PipePaused(_) => {
                    if p.status != PipeStatus::Paused as i32 {
                        p.paused_from = p.status;
                    }
                    p.status = PipeStatus::Paused as i32;
                    p.status_detail = PAUSED_DETAIL.into();
                }
                Payload::PipeResumed(_) => {
                    p.status = match PipeStatus::try_from(p.paused_from) {
                        Ok(PipeStatus::Unspecified) | Err(_) => PipeStatus::Setup as i32,
                        Ok(s) => s as i32,
                    };
                    p.paused_from = PipeStatus::Unspecified as i32;
                    p.status_detail.clear();
                }
                Payload::PipeFailed(f) => {
                    p.error = f.reason.clone();
                    p.failed_step = f.step.clone();
                    if f.retrying {
                        p.status_detail = format!("retrying {} after an error", f.step);
                    } else {
                        p.status = PipeStatus::Failed as i32;
                        p.resyncing = false;
                        p.status_detail = "failed: resync the pipe to recover".into();
                    }
                }
                Payload::PipeLabelsChanged(l) => {
                    // Kept in the config too, so a resync copies them.
                    p.labels = l.labels.clone();
                    if let Some(c) = p.config.as_mut() {
                        c.labels = l.labels.clone();
                    }
                }
                Payload::TablesAdded(a) => {
                    for t in &a.tables {
                        if let Some(c) = p.config.as_mut() {
                            c.tables.push(t.clone());
                        }
                        p.tables.push(TableStats {
                            source_table: t.source_table.clone(),
                            destination_table: t.destination_table.clone(),
                            state: TableState::LoadPending as i32,
                            ..Default::default()
                        });
                    }
                }
                Payload::TablesRemoved(r) => {
                    let gone = |name: &String| r.source_tables.contains(name);
                    if let Some(c) = p.config.as_mut() {
                        c.tables.retain(|t| !gone(&t.source_table));
                    }
                    p.tables.retain(|t| !gone(&t.source_table));
                    p.prepared.retain(|t| !gone(&t.source_table));
                    p.table_loads.retain(|t| !gone(&t.source_table));
                }
                Payload::TableResyncRequested(r) => {
                    for name in &r.source_tables {
                        if let Some(t) = table_stats_mut(p, name) {
                            t.state = TableState::ResyncPending as i32;
                        }
                    }
                }
                Payload::TableLoadStarted(l) => {
                    if let Some(job) = &l.table {
                        let resync = job.load_table != job.destination_table;
                        p.table_loads.retain(|t| t.source_table != job.source_table);
                        p.table_loads.push(job.clone());
                        if let Some(t) = table_stats_mut(p, &job.source_table) {
                            t.state = if resync {
                                TableState::Resyncing
                            } else {
                                TableState::Loading
                            } as i32;
                            t.destination_table = job.destination_table.clone();
                            set_generated(t, &job.generated_columns);
                            snapshot_afresh(t, l.partitions_total);
                        }
                    }
                }
                Payload::TableLoadCompleted(l) => {
                    if let Some(t) = table_stats_mut(p, &l.source_table) {
                        t.snapshot_rows = l.rows;
                        t.snapshot_done = true;
                        t.snapshot_partitions_done = t.snapshot_partitions_total;
                    }
                    // An added table is now like any other; a resynced one
                    // waits for its swap.
                    let added = p.table_loads.iter().position(|t| {
                        t.source_table == l.source_table && t.load_table == t.destination_table
                    });
                    if let Some(i) = added {
                        let job = p.table_loads.remove(i);
                        p.prepared.retain(|t| t.source_table != job.source_table);
                        p.prepared.push(job);
                        if let Some(t) = table_stats_mut(p, &l.source_table) {
                            t.state = TableState::Replicating as i32;
                        }
                    }
                }
                Payload::PartitionsChanged(c) => {
                    if let Some(t) = table_stats_mut(p, &c.source_table) {
                        apply_partitions_changed(details_mut(t), c);
                    }
                }
                Payload::TableSwapped(s) => {
                    p.table_loads.retain(|t| t.source_table != s.source_table);
                    if let Some(t) = table_stats_mut(p, &s.source_table) {
                        t.state = TableState::Replicating as i32;
                        t.soft_deletes_transferred = s.soft_deletes_transferred;
                        // A table resync rebuilt a failed table.
                        t.error.clear();
                    }
                }
                Payload::SchemaChanged(c) => {
                    if c.kind() == SchemaChangeKind::RenameColumn
                        && let Some(cfg) = p.config.as_mut().and_then(|cfg| {
                            cfg.tables
                                .iter_mut()
                                .find(|t| t.source_table == c.source_table)
                        })
                    {
                        fold_rename(cfg, c);
                    }
                }
                Payload::TableFailed(f) => {
                    if let Some(t) = table_stats_mut(p, &f.source_table) {
                        t.state = TableState::Failed as i32;
                        t.error = f.reason.clone();
                    }
                }
                // Not a status change: a warning is not a failure.
                Payload::SlotHealthWarning(w) => {
                    p.slot_wal_status = w.wal_status.clone();
                    match p.slot_warnings.iter_mut().find(|x| x.kind == w.kind) {
                        Some(x) => *x = w.clone(),
                        None => p.slot_warnings.push(w.clone()),
                    }
                }
                Payload::SlotHealthRecovered(r) => {
                    p.slot_wal_status = r.wal_status.clone();
                    p.slot_warnings.retain(|x| x.kind != r.kind);
                }
                Payload::PipeRecovered(_) => {
                    p.error.clear();
                    p.failed_step.clear();
                    p.status_detail.clear();
                }
            }
            None
        }
        _ => None,
    }
}

/// A source column rename in the table's column options (keyed by source
/// name): exclusion, order_by and the destination name follow the column.
/// The destination name is the event's `destination_column` (kept when
/// ClickHouse could not rename it); a column not replicated stays so.
pub(crate) fn fold_rename(cfg: &mut TableConfig, c: &SchemaChanged) {
    let (old, new) = (&c.column, &c.new_column);
    for x in cfg.exclude_columns.iter_mut().filter(|x| *x == old) {
        x.clone_from(new);
    }
    for o in cfg.order_by.iter_mut().filter(|o| *o == old) {
        o.clone_from(new);
    }
    cfg.rename_columns.remove(old);
    if let Some(ty) = cfg.column_types.remove(old) {
        cfg.column_types.insert(new.clone(), ty);
    }
    if !c.destination_column.is_empty() && c.destination_column != *new {
        cfg.rename_columns
            .insert(new.clone(), c.destination_column.clone());
    }
}

/// All pipes: every incarnation by id, and the current one by name.
#[derive(Debug, Default, Clone)]
pub struct Projection {
    by_id: HashMap<String, Pipe>,
    current: HashMap<String, String>,
    /// Events per pipe name's stream (all incarnations).
    streams: HashMap<String, u64>,
    head: u64,
}

impl Projection {
    /// Folds one event in (events must come in seq order).
    pub fn apply(&mut self, e: &Event) {
        self.head = e.seq;
        match self.streams.get_mut(e.pipe_name.as_str()) {
            Some(v) => *v = e.stream_version,
            None => {
                self.streams.insert(e.pipe_name.clone(), e.stream_version);
            }
        }
        let existing = self.by_id.get_mut(&e.pipe_id);
        if let Some(created) = apply(existing, e) {
            self.current
                .insert(created.name.clone(), created.id.clone());
            self.by_id.insert(created.id.clone(), created);
        }
    }

    /// Version of a pipe name's stream: what the next append must expect.
    pub fn stream_version(&self, name: &str) -> u64 {
        self.streams.get(name).copied().unwrap_or(0)
    }

    /// Seq of the last applied event.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The current incarnation of `name` (possibly DELETED).
    pub fn by_name(&self, name: &str) -> Option<&Pipe> {
        self.current.get(name).and_then(|id| self.by_id.get(id))
    }

    /// An incarnation by id, deleted ones included.
    pub fn by_id(&self, id: &str) -> Option<&Pipe> {
        self.by_id.get(id)
    }

    /// Every incarnation, deleted ones included.
    pub fn all(&self) -> impl Iterator<Item = &Pipe> {
        self.by_id.values()
    }

    /// The config of the incarnation whose tables are live in ClickHouse,
    /// seen from `id` back along the resync chain: the first that swapped
    /// its tables in, or the chain's first incarnation, which created them
    /// (a resync that failed before its swap wrote nothing there).
    pub(crate) fn config_of_live_tables(&self, id: &str) -> Option<&PipeConfig> {
        let mut id = id;
        // Bounded: a chain is at most every incarnation long.
        for _ in 0..self.by_id.len() {
            let p = self.by_id.get(id)?;
            if p.resync_of.is_empty() || p.swapped {
                return p.config.as_ref();
            }
            id = &p.resync_of;
        }
        None
    }

    /// Current incarnations, by name, with labels matching `selector`.
    pub fn list(&self, include_deleted: bool, selector: &BTreeMap<String, String>) -> Vec<Pipe> {
        let mut out: Vec<Pipe> = self
            .current
            .values()
            .filter_map(|id| self.by_id.get(id))
            .filter(|p| include_deleted || p.status != PipeStatus::Deleted as i32)
            .filter(|p| selector_matches(selector, &p.labels))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PipeCreated, TableConfig, TablesSwapped};

    fn new_event(pipe_id: &str, payload: Payload) -> Event {
        Event {
            pipe_id: pipe_id.to_owned(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn created(p: &mut Projection, id: &str, resync_of: &str, exclude: &str) {
        let config = PipeConfig {
            tables: vec![TableConfig {
                source_table: "public.t".into(),
                exclude_columns: vec![exclude.into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut e = new_event(
            id,
            Payload::PipeCreated(PipeCreated {
                name: "p".into(),
                config: Some(config),
                resync_of: resync_of.into(),
            }),
        );
        e.pipe_name = "p".into();
        p.apply(&e);
    }

    fn excluded(p: &Projection, id: &str) -> Option<String> {
        p.config_of_live_tables(id)
            .map(|c| c.tables[0].exclude_columns[0].clone())
    }

    #[test]
    fn the_live_tables_were_written_by_the_last_resync_that_swapped() {
        let mut p = Projection::default();
        created(&mut p, "a", "", "x");
        created(&mut p, "b", "a", "y");
        // b has not swapped (it failed before): a's tables are live.
        created(&mut p, "c", "b", "z");
        assert_eq!(excluded(&p, "b").as_deref(), Some("x"));
        let mut e = new_event(
            "b",
            Payload::TablesSwapped(TablesSwapped {
                destination_tables: vec!["t".into()],
            }),
        );
        e.pipe_name = "p".into();
        p.apply(&e);
        assert_eq!(excluded(&p, "b").as_deref(), Some("y"));
        assert_eq!(excluded(&p, "a").as_deref(), Some("x"));
        assert_eq!(excluded(&p, "nope"), None);
    }

    fn apply_to(p: &mut Projection, payload: Payload) -> Pipe {
        let mut e = new_event("a", payload);
        e.pipe_name = "p".into();
        p.apply(&e);
        p.by_id("a").cloned().unwrap()
    }

    #[test]
    fn a_source_rename_carries_the_tables_column_options_over() {
        let mut p = Projection::default();
        created(&mut p, "a", "", "secret");
        let rename = |from: &str, to: &str, dest: &str| {
            Payload::SchemaChanged(SchemaChanged {
                source_table: "public.t".into(),
                kind: SchemaChangeKind::RenameColumn as i32,
                column: from.into(),
                new_column: to.into(),
                destination_column: dest.into(),
                ..Default::default()
            })
        };
        // Excluded: stays excluded under the new name.
        let pipe = apply_to(&mut p, rename("secret", "hidden", ""));
        let cfg = &pipe.config.unwrap().tables[0];
        assert_eq!(cfg.exclude_columns, ["hidden"]);
        // Kept under its ClickHouse name (a sorting-key column): mapped.
        let pipe = apply_to(&mut p, rename("id", "ident", "id"));
        let cfg = &pipe.config.unwrap().tables[0];
        assert_eq!(
            cfg.rename_columns.get("ident").map(String::as_str),
            Some("id")
        );
        // Renamed again, now in ClickHouse too: no mapping left.
        let pipe = apply_to(&mut p, rename("ident", "key", "key"));
        assert!(pipe.config.unwrap().tables[0].rename_columns.is_empty());
    }

    #[test]
    fn a_failed_table_is_failed_until_its_resync_swaps_in() {
        let mut p = Projection::default();
        created(&mut p, "a", "", "x");
        let pipe = apply_to(
            &mut p,
            Payload::TableFailed(crate::proto::TableFailed {
                source_table: "public.t".into(),
                reason: "why; resync this table".into(),
                lsn: "0/1".into(),
            }),
        );
        assert_eq!(pipe.tables[0].state(), TableState::Failed);
        assert_eq!(pipe.tables[0].error, "why; resync this table");
        let pipe = apply_to(
            &mut p,
            Payload::TableSwapped(crate::proto::TableSwapped {
                source_table: "public.t".into(),
                ..Default::default()
            }),
        );
        assert_eq!(pipe.tables[0].state(), TableState::Replicating);
        assert!(pipe.tables[0].error.is_empty());
    }
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    fn changed(c: PartitionsChanged) -> SourceTableDetails {
        let mut d = SourceTableDetails::default();
        apply_partitions_changed(&mut d, &c);
        d
    }

    #[test]
    fn leaves_are_listed_attached_loaded_and_detached() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut d = changed(PartitionsChanged {
            replicated: names(&["s.p2", "s.p1"]),
            reset: true,
            ..Default::default()
        });
        assert_eq!(d.partitions, names(&["s.p1", "s.p2"]));
        let attached = PartitionsChanged {
            attached: names(&["s.p3"]),
            detached: names(&["s.p1"]),
            ..Default::default()
        };
        apply_partitions_changed(&mut d, &attached);
        assert_eq!(d.partitions, names(&["s.p2"]));
        assert_eq!(d.partitions_loading, names(&["s.p3"]));
        assert_eq!(d.partitions_detached, names(&["s.p1"]));
        let loaded = PartitionsChanged {
            replicated: names(&["s.p3"]),
            rows: 10,
            ..Default::default()
        };
        apply_partitions_changed(&mut d, &loaded);
        assert_eq!(d.partitions, names(&["s.p2", "s.p3"]));
        assert!(d.partitions_loading.is_empty());
        // A reload of the whole table (resync) starts the set afresh.
        let reset = PartitionsChanged {
            replicated: names(&["s.p2"]),
            reset: true,
            ..Default::default()
        };
        apply_partitions_changed(&mut d, &reset);
        assert_eq!(d.partitions, names(&["s.p2"]));
        assert!(d.partitions_detached.is_empty());
    }
}
