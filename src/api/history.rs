//! GetPipeHistory, GetPipeThroughput and GetLoadSummary: a pipe name's
//! events, read from the log through its per-stream index, filtered by kind
//! or folded (throughput buckets, initial-load summaries), and paged. No
//! second store: the log is the history; the folds are pure functions over
//! events.

use std::collections::HashMap;
use std::sync::Arc;

use prost_types::Timestamp;

use crate::proto::event::Payload;
use crate::proto::{
    Event, HistoryKind, SnapshotTableCompleted, TableLoadCompleted, TableLoadSummary,
    ThroughputPoint,
};
use crate::store::{EventLog, LogError};

/// Events per page when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page a request may ask for.
pub const MAX_PAGE: usize = 1000;
/// Events read from the log per step while a page is being filled.
const CHUNK: usize = 1000;

/// Whether `e` belongs to the history of `kind`.
pub fn matches(kind: HistoryKind, e: &Event) -> bool {
    let Some(p) = &e.payload else {
        // An event of a newer writer: only "all" shows it.
        return kind == HistoryKind::All;
    };
    match kind {
        HistoryKind::All => true,
        HistoryKind::Errors => matches!(p, Payload::PipeFailed(_) | Payload::PipeRecovered(_)),
        HistoryKind::Cdc => matches!(p, Payload::CdcStarted(_) | Payload::CdcProgress(_)),
        HistoryKind::Snapshot => matches!(
            p,
            Payload::SnapshotStarted(_)
                | Payload::SnapshotProgress(_)
                | Payload::SnapshotTableCompleted(_)
                | Payload::SnapshotCompleted(_)
                | Payload::TableLoadStarted(_)
                | Payload::TableLoadCompleted(_)
                | Payload::PartitionsChanged(_)
        ),
        HistoryKind::Schema => matches!(p, Payload::SchemaChanged(_) | Payload::TableFailed(_)),
        HistoryKind::SlotHealth => matches!(
            p,
            Payload::SlotHealthWarning(_) | Payload::SlotHealthRecovered(_)
        ),
    }
}

/// Up to `page` events of stream `name` after seq `after` that are of
/// `kind`, oldest first, and where the next page starts when this one is
/// full (None: the log's end was reached).
pub fn page(
    log: &EventLog,
    name: &str,
    kind: HistoryKind,
    after: u64,
    page: usize,
) -> Result<(Vec<Event>, Option<u64>), LogError> {
    let mut out = Vec::new();
    let mut next = None;
    walk(log, name, after, |e| {
        if matches(kind, &e) {
            out.push(Event::clone(&e));
            if out.len() >= page {
                next = Some(e.seq);
                return false;
            }
        }
        true
    })?;
    Ok((out, next))
}

/// Hands stream `name`'s events after seq `after`, up to the head as of the
/// call, oldest first, to `visit` (read `CHUNK` at a time) until it answers
/// false; true if it did (the walk stopped before the end).
fn walk(
    log: &EventLog,
    name: &str,
    after: u64,
    mut visit: impl FnMut(Arc<Event>) -> bool,
) -> Result<bool, LogError> {
    let head = log.head();
    let mut cursor = after;
    loop {
        let chunk = log.read_stream(name, cursor, head, CHUNK)?;
        if chunk.is_empty() {
            return Ok(false);
        }
        for e in chunk {
            cursor = e.seq;
            if !visit(e) {
                return Ok(true);
            }
        }
    }
}

/// Throughput bucket width when the request does not say (a minute).
pub const DEFAULT_BUCKET_SECONDS: u32 = 60;
/// Widest throughput bucket (a day).
pub const MAX_BUCKET_SECONDS: u32 = 86_400;

/// Folds CdcProgress events, oldest first, into throughput points of
/// `width` seconds; a page holds at most `page` points and never splits one.
/// Points follow the log's order: an event whose time falls in another
/// bucket than the previous one's starts a new point (so a clock stepping
/// back between events yields a second point for a bucket, never a merge
/// across the page boundary).
pub struct ThroughputFold {
    width: i64,
    page: usize,
    points: Vec<ThroughputPoint>,
    current: Option<i64>,
    last_seq: u64,
}

impl ThroughputFold {
    pub fn new(width_seconds: u32, page: usize) -> Self {
        Self {
            width: i64::from(width_seconds.max(1)),
            page,
            points: Vec::new(),
            current: None,
            last_seq: 0,
        }
    }

    /// Adds `e`. False when `e` would open a bucket beyond a full page: it is
    /// left out, and the next page starts with it.
    pub fn push(&mut self, e: &Event) -> bool {
        let Some(Payload::CdcProgress(c)) = &e.payload else {
            self.last_seq = e.seq;
            return true;
        };
        let secs = e.at.as_ref().map_or(0, |t| t.seconds);
        let start = secs.div_euclid(self.width) * self.width;
        if self.current != Some(start) {
            if self.points.len() >= self.page {
                return false;
            }
            self.points.push(ThroughputPoint {
                start: Some(Timestamp {
                    seconds: start,
                    nanos: 0,
                }),
                ..Default::default()
            });
            self.current = Some(start);
        }
        self.last_seq = e.seq;
        let Some(p) = self.points.last_mut() else {
            return true;
        };
        for t in &c.tables {
            p.rows_inserted += t.inserted;
            p.rows_updated += t.updated;
            p.rows_deleted += t.deleted;
        }
        if c.tables
            .iter()
            .any(|t| t.inserted + t.updated + t.deleted > 0)
        {
            p.batches += 1;
        }
        p.lag_bytes = c.lag_bytes;
        p.max_lag_bytes = p.max_lag_bytes.max(c.lag_bytes);
        p.lsn = c.lsn.clone();
        true
    }

    /// The points, and the seq of the last event they hold when the page is
    /// full and more follow (where the next page resumes).
    pub fn finish(self, full: bool) -> (Vec<ThroughputPoint>, Option<u64>) {
        let next = full.then_some(self.last_seq);
        (self.points, next)
    }
}

/// Up to `page` throughput points of stream `name` from the events after
/// seq `after`, and the seq the next page resumes after (None: the log's
/// end was reached; the last point may still grow).
pub fn throughput_page(
    log: &EventLog,
    name: &str,
    width_seconds: u32,
    after: u64,
    page: usize,
) -> Result<(Vec<ThroughputPoint>, Option<u64>), LogError> {
    let mut fold = ThroughputFold::new(width_seconds, page);
    let full = walk(log, name, after, |e| fold.push(&e))?;
    Ok(fold.finish(full))
}

fn millis_between(from: &Timestamp, to: &Timestamp) -> u64 {
    let ms = (to.seconds - from.seconds) * 1000 + i64::from(to.nanos - from.nanos) / 1_000_000;
    ms.max(0) as u64
}

/// Per incarnation and table, the initial load told by the Snapshot*
/// events among `events` (oldest first): incarnations in order, tables in
/// plan order. A SnapshotStarted again (a restarted load) starts the
/// incarnation's tables over.
pub fn load_summaries<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<TableLoadSummary> {
    let mut out: Vec<TableLoadSummary> = Vec::new();
    let mut at: HashMap<(String, String), usize> = HashMap::new();
    // Per incarnation: the time of its latest load event.
    let mut latest: HashMap<String, Timestamp> = HashMap::new();
    for e in events {
        let Some(p) = &e.payload else { continue };
        let when = e.at.unwrap_or_default();
        let key = |table: &str| (e.pipe_id.clone(), table.to_owned());
        match p {
            Payload::SnapshotStarted(s) => {
                for plan in &s.tables {
                    let row = TableLoadSummary {
                        pipe_id: e.pipe_id.clone(),
                        source_table: plan.source_table.clone(),
                        partitions_total: plan.partitions_total,
                        started_at: Some(when),
                        ..Default::default()
                    };
                    match at.get(&key(&plan.source_table)) {
                        Some(&i) => out[i] = row,
                        None => {
                            at.insert(key(&plan.source_table), out.len());
                            out.push(row);
                        }
                    }
                }
            }
            Payload::SnapshotProgress(s) => {
                if let Some(&i) = at.get(&key(&s.source_table)) {
                    let row = &mut out[i];
                    row.rows = s.rows_copied;
                    row.partitions_done = s.partitions_done;
                    row.partitions_total = s.partitions_total;
                    row.avg_partition_ms = s
                        .partition_ms_total
                        .checked_div(u64::from(s.partitions_done))
                        .unwrap_or(0);
                }
            }
            Payload::SnapshotTableCompleted(SnapshotTableCompleted { source_table, rows })
            | Payload::TableLoadCompleted(TableLoadCompleted { source_table, rows }) => {
                if let Some(&i) = at.get(&key(source_table)) {
                    let row = &mut out[i];
                    row.rows = *rows;
                    row.partitions_done = row.partitions_total;
                    row.done = true;
                    row.finished_at = Some(when);
                }
            }
            // A table loaded beside CDC (added, or a table resync): a new
            // row, unless it redoes a load that did not finish.
            Payload::TableLoadStarted(l) => {
                let table = l.table.clone().unwrap_or_default().source_table;
                let row = TableLoadSummary {
                    pipe_id: e.pipe_id.clone(),
                    source_table: table.clone(),
                    partitions_total: l.partitions_total,
                    started_at: Some(when),
                    ..Default::default()
                };
                match at.get(&key(&table)) {
                    Some(&i) if !out[i].done => out[i] = row,
                    _ => {
                        at.insert(key(&table), out.len());
                        out.push(row);
                    }
                }
            }
            _ => continue,
        }
        latest.insert(e.pipe_id.clone(), when);
    }
    for row in &mut out {
        let end = row
            .finished_at
            .or_else(|| latest.get(&row.pipe_id).copied());
        if let (Some(from), Some(to)) = (row.started_at.as_ref(), end.as_ref()) {
            row.duration_ms = millis_between(from, to);
        }
    }
    out
}

/// Rows `offset..offset + page` of stream `name`'s load summaries, and the
/// offset of the next page when more follow.
pub fn load_summary_page(
    log: &EventLog,
    name: &str,
    offset: usize,
    page: usize,
) -> Result<(Vec<TableLoadSummary>, Option<usize>), LogError> {
    let mut events = Vec::new();
    walk(log, name, 0, |e| {
        if matches(HistoryKind::Snapshot, &e) {
            events.push(e);
        }
        true
    })?;
    let all = load_summaries(events.iter().map(|e| e.as_ref()));
    let end = offset.saturating_add(page).min(all.len());
    let rows = all.get(offset..end).map(<[_]>::to_vec).unwrap_or_default();
    Ok((rows, (end < all.len()).then_some(end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        CdcProgress, PipeFailed, PipePaused, SnapshotCompleted, SnapshotProgress, SnapshotStarted,
        SnapshotTableCompleted, SnapshotTablePlan, TableChangeCounts,
    };

    fn ev(p: Payload) -> Event {
        Event {
            payload: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_keeps_its_own_events() {
        let failed = ev(Payload::PipeFailed(PipeFailed::default()));
        let cdc = ev(Payload::CdcProgress(CdcProgress::default()));
        let snap = ev(Payload::SnapshotCompleted(SnapshotCompleted::default()));
        let paused = ev(Payload::PipePaused(PipePaused::default()));
        assert!(matches(HistoryKind::Errors, &failed));
        assert!(!matches(HistoryKind::Errors, &cdc));
        assert!(matches(HistoryKind::Cdc, &cdc));
        assert!(!matches(HistoryKind::Cdc, &snap));
        assert!(matches(HistoryKind::Snapshot, &snap));
        assert!(!matches(HistoryKind::Snapshot, &paused));
        for e in [&failed, &cdc, &snap, &paused] {
            assert!(matches(HistoryKind::All, e));
        }
    }

    #[test]
    fn an_event_of_a_newer_writer_is_only_in_all() {
        let unknown = Event::default();
        assert!(matches(HistoryKind::All, &unknown));
        assert!(!matches(HistoryKind::Errors, &unknown));
    }

    fn at(seq: u64, secs: i64, p: Payload) -> Event {
        Event {
            seq,
            pipe_id: "p1".into(),
            at: Some(Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            payload: Some(p),
            ..Default::default()
        }
    }

    fn batch(inserted: u64, lag: u64) -> Payload {
        Payload::CdcProgress(CdcProgress {
            lsn: format!("0/{inserted:X}"),
            lag_bytes: lag,
            tables: vec![TableChangeCounts {
                source_table: "public.t".into(),
                inserted,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn throughput_sums_each_bucket_and_keeps_its_last_lag() {
        let mut f = ThroughputFold::new(60, 10);
        for e in [
            at(1, 600, batch(3, 10)),
            at(2, 659, batch(4, 50)),
            at(3, 660, batch(5, 20)),
            at(
                4,
                700,
                Payload::CdcProgress(CdcProgress {
                    lag_bytes: 7,
                    ..Default::default()
                }),
            ),
        ] {
            assert!(f.push(&e));
        }
        let (points, next) = f.finish(false);
        assert_eq!(next, None);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].start.unwrap().seconds, 600);
        assert_eq!((points[0].rows_inserted, points[0].batches), (7, 2));
        assert_eq!((points[0].lag_bytes, points[0].max_lag_bytes), (50, 50));
        assert_eq!((points[1].rows_inserted, points[1].batches), (5, 1));
        assert_eq!((points[1].lag_bytes, points[1].max_lag_bytes), (7, 20));
    }

    #[test]
    fn a_full_throughput_page_stops_before_the_next_bucket() {
        let mut f = ThroughputFold::new(60, 1);
        assert!(f.push(&at(1, 0, batch(1, 0))));
        assert!(f.push(&at(2, 30, batch(1, 0))));
        assert!(f.push(&at(3, 40, Payload::PipePaused(PipePaused {}))));
        assert!(!f.push(&at(4, 60, batch(1, 0))));
        let (points, next) = f.finish(true);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].rows_inserted, 2);
        assert_eq!(
            next,
            Some(3),
            "the next page starts after the last event read"
        );
    }

    #[test]
    fn load_summary_folds_partitions_rows_and_times() {
        let plan = |t: &str, n| SnapshotTablePlan {
            source_table: t.into(),
            partitions_total: n,
            ..Default::default()
        };
        let progress = |t: &str, rows, done, ms| {
            Payload::SnapshotProgress(SnapshotProgress {
                source_table: t.into(),
                rows_copied: rows,
                partitions_done: done,
                partitions_total: 4,
                partition_ms_total: ms,
            })
        };
        let events = [
            at(
                1,
                100,
                Payload::SnapshotStarted(SnapshotStarted {
                    tables: vec![plan("a", 4), plan("b", 4)],
                }),
            ),
            at(2, 101, progress("a", 50, 2, 300)),
            at(3, 103, progress("a", 90, 4, 800)),
            at(
                4,
                103,
                Payload::SnapshotTableCompleted(SnapshotTableCompleted {
                    source_table: "a".into(),
                    rows: 90,
                }),
            ),
            at(5, 105, progress("b", 10, 1, 70)),
        ];
        let rows = load_summaries(&events);
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a.source_table, "a");
        assert!(a.done);
        assert_eq!((a.partitions_done, a.partitions_total, a.rows), (4, 4, 90));
        assert_eq!(a.avg_partition_ms, 200);
        assert_eq!(a.duration_ms, 3000);
        let b = &rows[1];
        assert!(!b.done);
        assert_eq!((b.partitions_done, b.rows, b.avg_partition_ms), (1, 10, 70));
        assert_eq!(b.duration_ms, 5000, "so far: up to the latest load event");
        assert!(b.finished_at.is_none());
    }

    #[test]
    fn a_restarted_load_starts_its_tables_over() {
        let started = || {
            Payload::SnapshotStarted(SnapshotStarted {
                tables: vec![SnapshotTablePlan {
                    source_table: "a".into(),
                    partitions_total: 2,
                    ..Default::default()
                }],
            })
        };
        let events = [
            at(1, 0, started()),
            at(
                2,
                1,
                Payload::SnapshotProgress(SnapshotProgress {
                    source_table: "a".into(),
                    rows_copied: 5,
                    partitions_done: 1,
                    partitions_total: 2,
                    partition_ms_total: 10,
                }),
            ),
            at(3, 9, started()),
        ];
        let rows = load_summaries(&events);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].rows, rows[0].partitions_done), (0, 0));
        assert_eq!(rows[0].started_at.unwrap().seconds, 9);
    }
}
