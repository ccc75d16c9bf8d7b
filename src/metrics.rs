//! Prometheus metrics: a small registry the engine and the watch streams
//! record into through cheap calls, and its rendering in the text
//! exposition format (0.0.4) for `GET /metrics` (see [`endpoint`]).
//!
//! Data flows one way: recorders only add or set values; the endpoint only
//! reads them (and, at scrape time, the projection and the log's size).
//! Labels are limited to pipe name, table, kind, step and status, so the
//! number of series follows the number of pipes and tables, nothing more.

pub(crate) mod endpoint;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::proto::{Pipe, PipeStatus, SlotWarningKind};

/// Upper bounds (seconds) of the CDC batch apply latency histogram.
const APPLY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What a replicated row was: a snapshot copy or a CDC change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RowKind {
    Snapshot,
    Insert,
    Update,
    Delete,
}

impl RowKind {
    const ALL: [RowKind; 4] = [
        RowKind::Snapshot,
        RowKind::Insert,
        RowKind::Update,
        RowKind::Delete,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RowKind::Snapshot => "snapshot",
            RowKind::Insert => "insert",
            RowKind::Update => "update",
            RowKind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket of `APPLY_BUCKETS`, then +Inf.
    buckets: [u64; APPLY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        let i = APPLY_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(APPLY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// The registry. One per service (`commands::Core::metrics`); every method is a
/// short critical section or an atomic, safe to call on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// pipe -> table -> rows applied by kind (indexed by `RowKind`).
    rows: Mutex<BTreeMap<String, BTreeMap<String, [u64; RowKind::ALL.len()]>>>,
    /// pipe -> bytes of WAL the slot's confirmed position trails the server.
    lag_bytes: Mutex<BTreeMap<String, u64>>,
    /// pipe -> seconds between the last applied transaction's commit and
    /// its apply (0 once nothing waits).
    lag_seconds: Mutex<BTreeMap<String, f64>>,
    /// pipe -> CDC batch apply latency.
    apply: Mutex<BTreeMap<String, Histogram>>,
    /// (pipe, step) -> seconds the last run of a resync step took.
    resync_steps: Mutex<BTreeMap<(String, &'static str), f64>>,
    watchers: AtomicI64,
}

/// A poisoned lock still holds valid counters (every update is a single
/// assignment), so metrics keep working after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `f` to `key`'s entry. Looked up by &str first: the series
/// exists almost always, so the hot path allocates nothing.
fn with_entry<T: Default>(map: &mut BTreeMap<String, T>, key: &str, f: impl FnOnce(&mut T)) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_owned()).or_default()),
    }
}

impl Metrics {
    pub fn rows_applied(&self, pipe: &str, table: &str, kind: RowKind, n: u64) {
        if n == 0 {
            return;
        }
        with_entry(&mut lock(&self.rows), pipe, |tables| {
            with_entry(tables, table, |counts| counts[kind as usize] += n)
        });
    }

    pub fn set_cdc_lag_bytes(&self, pipe: &str, bytes: u64) {
        with_entry(&mut lock(&self.lag_bytes), pipe, |v| *v = bytes);
    }

    pub fn set_cdc_lag_seconds(&self, pipe: &str, seconds: f64) {
        with_entry(&mut lock(&self.lag_seconds), pipe, |v| *v = seconds);
    }

    pub fn observe_batch_apply(&self, pipe: &str, took: Duration) {
        with_entry(&mut lock(&self.apply), pipe, |h| {
            h.observe(took.as_secs_f64())
        });
    }

    pub fn set_resync_step(&self, pipe: &str, step: &'static str, took: Duration) {
        lock(&self.resync_steps).insert((pipe.to_owned(), step), took.as_secs_f64());
    }

    /// Counts a watch stream until the guard is dropped.
    pub fn watcher(self: &std::sync::Arc<Self>) -> WatcherGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(std::sync::Arc::clone(self))
    }

    /// Rows applied so far for one series (for the unit tests).
    #[cfg(test)]
    pub fn rows(&self, pipe: &str, table: &str, kind: RowKind) -> u64 {
        lock(&self.rows)
            .get(pipe)
            .and_then(|t| t.get(table))
            .map_or(0, |c| c[kind as usize])
    }

    pub fn watchers(&self) -> i64 {
        self.watchers.load(Ordering::Relaxed)
    }
}

/// Decrements the watcher gauge when the stream's task ends.
pub(crate) struct WatcherGuard(std::sync::Arc<Metrics>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every metric family: (name, type, help). Each is always rendered with
/// HELP and TYPE, even with no series yet, so dashboards see the names.
pub const FAMILIES: [(&str, &str, &str); 10] = [
    (
        "pgpipe_rows_applied_total",
        "counter",
        "Rows written to ClickHouse, by pipe, source table and kind (snapshot, insert, update, delete).",
    ),
    (
        "pgpipe_cdc_lag_bytes",
        "gauge",
        "Bytes of WAL between the source's current position and the slot's confirmed position.",
    ),
    (
        "pgpipe_cdc_lag_seconds",
        "gauge",
        "Seconds between the commit of the last applied transaction (source clock) and its apply; 0 when the slot is drained.",
    ),
    (
        "pgpipe_cdc_batch_apply_duration_seconds",
        "histogram",
        "Time to write one CDC batch to ClickHouse and advance the slot.",
    ),
    (
        "pgpipe_resync_step_duration_seconds",
        "gauge",
        "Duration of the last run of each resync step (setup, prepare_tables, snapshot, swap).",
    ),
    (
        "pgpipe_slot_warning",
        "gauge",
        "1 while a slot health warning of the kind (lag, stalled, wal_status) holds for the pipe's replication slot, else 0.",
    ),
    (
        "pgpipe_watchers",
        "gauge",
        "Open WatchPipe and WatchEvents streams.",
    ),
    (
        "pgpipe_event_log_events",
        "gauge",
        "Events in the durable event log (sequence number of the last one).",
    ),
    (
        "pgpipe_event_log_size_bytes",
        "gauge",
        "Size on disk of the event log's database.",
    ),
    (
        "pgpipe_pipes",
        "gauge",
        "Current pipe incarnations by status.",
    ),
];

/// Seconds from a Postgres commit time (microseconds since 2000-01-01 UTC)
/// to now; 0 if the source's clock is ahead of ours.
pub(crate) fn seconds_since_pg_time(pg_us: i64) -> f64 {
    // 2000-01-01 in Unix microseconds.
    const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    (now_us - (pg_us + PG_EPOCH_UNIX_US)).max(0) as f64 / 1e6
}

/// Label value escaping of the text format: backslash, quote, newline.
fn esc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str) {
    if let Some((_, kind, help)) = FAMILIES.iter().find(|(n, _, _)| *n == name) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }
}

/// What a scrape shows besides the registry, read by the caller (the
/// commands' `Core`) at scrape time: metrics only render, so they need
/// not know the projection or the log.
pub(crate) struct Scrape {
    /// Every pipe, deleted ones too (`Projection::list(true, ..)`).
    pub pipes: Vec<Pipe>,
    /// The event log's head.
    pub log_events: u64,
    /// The event log's size on disk.
    pub log_size: Result<u64, sled::Error>,
}

fn live_pipe(p: &Pipe) -> bool {
    p.status() != PipeStatus::Deleted
}

/// The whole exposition: the registry `m` and what `s` read.
pub(crate) fn render(m: &Metrics, s: &Scrape) -> String {
    let mut out = String::with_capacity(4096);
    // Gauges of a deleted pipe say nothing any more: only pipes that exist
    // are shown (counters and the histogram stay, as counters do).
    let pipes: Vec<PipeStatus> = s.pipes.iter().map(|x| x.status()).collect();
    let live: std::collections::HashSet<String> = s
        .pipes
        .iter()
        .filter(|x| live_pipe(x))
        .map(|x| x.name.clone())
        .collect();

    header(&mut out, "pgpipe_rows_applied_total");
    for (pipe, tables) in lock(&m.rows).iter() {
        for (table, counts) in tables {
            for kind in RowKind::ALL {
                let _ = writeln!(
                    out,
                    "pgpipe_rows_applied_total{{pipe=\"{}\",table=\"{}\",kind=\"{}\"}} {}",
                    esc(pipe),
                    esc(table),
                    kind.as_str(),
                    counts[kind as usize]
                );
            }
        }
    }

    header(&mut out, "pgpipe_cdc_lag_bytes");
    for (pipe, v) in lock(&m.lag_bytes).iter().filter(|(p, _)| live.contains(*p)) {
        let _ = writeln!(out, "pgpipe_cdc_lag_bytes{{pipe=\"{}\"}} {v}", esc(pipe));
    }

    header(&mut out, "pgpipe_cdc_lag_seconds");
    for (pipe, v) in lock(&m.lag_seconds)
        .iter()
        .filter(|(p, _)| live.contains(*p))
    {
        let _ = writeln!(out, "pgpipe_cdc_lag_seconds{{pipe=\"{}\"}} {v}", esc(pipe));
    }

    let name = "pgpipe_cdc_batch_apply_duration_seconds";
    header(&mut out, name);
    for (pipe, h) in lock(&m.apply).iter() {
        let pipe = esc(pipe);
        let mut cumulative = 0;
        for (i, bound) in APPLY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i];
            let _ = writeln!(
                out,
                "{name}_bucket{{pipe=\"{pipe}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{pipe=\"{pipe}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{pipe=\"{pipe}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{pipe=\"{pipe}\"}} {}", h.count);
    }

    header(&mut out, "pgpipe_resync_step_duration_seconds");
    for ((pipe, step), v) in lock(&m.resync_steps)
        .iter()
        .filter(|((p, _), _)| live.contains(p))
    {
        let _ = writeln!(
            out,
            "pgpipe_resync_step_duration_seconds{{pipe=\"{}\",step=\"{step}\"}} {v}",
            esc(pipe)
        );
    }

    header(&mut out, "pgpipe_slot_warning");
    let warnings = s
        .pipes
        .iter()
        .filter(|x| live_pipe(x) && x.cdc_started)
        .map(|x| {
            let holding: Vec<i32> = x.slot_warnings.iter().map(|w| w.kind).collect();
            (&x.name, holding)
        });
    for (pipe, holding) in warnings {
        for kind in [
            SlotWarningKind::Lag,
            SlotWarningKind::Stalled,
            SlotWarningKind::WalStatus,
        ] {
            let label = kind.label();
            let v = u8::from(holding.contains(&(kind as i32)));
            let _ = writeln!(
                out,
                "pgpipe_slot_warning{{pipe=\"{}\",kind=\"{label}\"}} {v}",
                esc(pipe)
            );
        }
    }

    header(&mut out, "pgpipe_watchers");
    let _ = writeln!(out, "pgpipe_watchers {}", m.watchers());

    header(&mut out, "pgpipe_event_log_events");
    let _ = writeln!(out, "pgpipe_event_log_events {}", s.log_events);

    header(&mut out, "pgpipe_event_log_size_bytes");
    match &s.log_size {
        Ok(bytes) => {
            let _ = writeln!(out, "pgpipe_event_log_size_bytes {bytes}");
        }
        // A missing sample is better than a wrong one; the scrape goes on.
        Err(e) => tracing::warn!(error = %e, "cannot read the event log's size on disk"),
    }

    header(&mut out, "pgpipe_pipes");
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for s in [
        PipeStatus::Setup,
        PipeStatus::Snapshot,
        PipeStatus::Running,
        PipeStatus::Paused,
        PipeStatus::Resync,
        PipeStatus::Failed,
        PipeStatus::Deleted,
    ] {
        by_status.insert(s.label(), 0);
    }
    for s in pipes {
        *by_status.entry(s.label()).or_default() += 1;
    }
    for (status, n) in by_status {
        let _ = writeln!(out, "pgpipe_pipes{{status=\"{status}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_when_rendered() {
        let mut h = Histogram::default();
        h.observe(0.001);
        h.observe(0.2);
        h.observe(100.0);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 1);
        assert_eq!(h.buckets[APPLY_BUCKETS.len()], 1);
    }

    #[test]
    fn seconds_since_a_postgres_commit_time() {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let pg_us = unix_us - 946_684_800_000_000 - 3_000_000;
        let s = seconds_since_pg_time(pg_us);
        assert!((3.0..4.0).contains(&s), "{s}");
        // A source clock ahead of ours is no negative lag.
        assert_eq!(seconds_since_pg_time(pg_us + 60_000_000), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn row_counters_add_up_per_series() {
        let m = Metrics::default();
        m.rows_applied("p", "s.t", RowKind::Insert, 2);
        m.rows_applied("p", "s.t", RowKind::Insert, 3);
        m.rows_applied("p", "s.t", RowKind::Delete, 1);
        assert_eq!(m.rows("p", "s.t", RowKind::Insert), 5);
        assert_eq!(m.rows("p", "s.t", RowKind::Delete), 1);
        assert_eq!(m.rows("p", "s.u", RowKind::Insert), 0);
    }
}
