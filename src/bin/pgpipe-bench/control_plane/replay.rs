//! 2. Replay of a large log at start-up, in a child process per probe.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use pgpipe::domain::projection::Projection;
use pgpipe::proto::{
    CdcProgress, Event, PipeConfig, PipeCreated, PipeSettings, SnapshotProgress, SourceConfig,
    TableChangeCounts, TableConfig, event::Payload,
};
use pgpipe::store::EventLog;
use pgpipe::store::event_log::{decode_record, new_event};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Res;
use crate::control_plane::{Params, create_req, table_name};
use crate::machine::{rss_mb, tempdir_in};
use crate::report::{Row, fmt_rate, progress, row};

/// Opens the log in `dir` and replays it (as the service does at start-up).
pub(crate) async fn open_log(dir: &Path) -> Res<Arc<EventLog>> {
    let d = dir.to_owned();
    let log = tokio::task::spawn_blocking(move || EventLog::open(&d)).await??;
    log.replay(|_| {})?;
    Ok(log)
}

pub(crate) fn pipe_config(tables: usize) -> PipeConfig {
    let req = create_req("x", tables);
    PipeConfig {
        source: Some(SourceConfig {
            connection_string: "postgres://app@db.internal:5432/app?sslmode=require".into(),
            password: String::new(),
        }),
        destination: req.destination.map(|mut d| {
            d.password.clear();
            d
        }),
        tables: (0..tables)
            .map(|i| TableConfig {
                source_table: table_name(i),
                destination_table: table_name(i).replace('.', "_"),
                order_by: vec!["id".into()],
                ..Default::default()
            })
            .collect(),
        settings: Some(PipeSettings {
            snapshot_parallelism: 4,
            snapshot_rows_per_partition: 500_000,
            cdc_batch_size: 10_000,
            cdc_sync_interval_ms: 1_000,
            ..Default::default()
        }),
        labels: Default::default(),
    }
}

/// Event `i` (0-based) of a pipe's stream: created, then 20 % snapshot
/// progress, then CDC progress, over 3 tables.
fn replay_event(pipe: &str, id: &str, i: u64, per_pipe: u64) -> Event {
    const T: usize = 3;
    let payload = if i == 0 {
        Payload::PipeCreated(PipeCreated {
            name: pipe.into(),
            config: Some(pipe_config(T)),
            resync_of: String::new(),
        })
    } else if i <= per_pipe / 5 {
        Payload::SnapshotProgress(SnapshotProgress {
            source_table: table_name(i as usize % T),
            rows_copied: i * 500_000,
            partitions_done: (i / 3) as u32,
            partitions_total: (per_pipe / 5) as u32,
            ..Default::default()
        })
    } else {
        Payload::CdcProgress(CdcProgress {
            lsn: format!("{:X}/{:08X}", i >> 20, i.wrapping_mul(4_096)),
            lag_bytes: (i * 7_919) % 1_000_000,
            tables: (0..T)
                .map(|t| TableChangeCounts {
                    source_table: table_name(t),
                    inserted: i % 1_000,
                    updated: i % 97,
                    deleted: i % 13,
                })
                .collect(),
            ..Default::default()
        })
    };
    new_event(id, payload)
}

#[derive(Serialize, serde::Deserialize)]
pub(crate) struct WriteResult {
    seconds: f64,
    bytes_on_disk: u64,
    peak_rss_mb: f64,
}

/// Writes `events` events over `pipes` streams through `EventLog::append`,
/// `batch` events per append, 4 streams at a time.
pub(crate) async fn write_replay_log(
    dir: &Path,
    events: u64,
    pipes: u64,
    batch: u64,
) -> Res<WriteResult> {
    let log = open_log(dir).await?;
    log.start_writer(Arc::new(|_| {}));
    let per_pipe = events / pipes;
    let start = Instant::now();
    let results: Vec<Res<()>> = futures::stream::iter(0..pipes)
        .map(|pi| {
            let log = Arc::clone(&log);
            async move {
                let name = format!("pipe-{pi:03}");
                let id = uuid::Uuid::new_v4().to_string();
                let mut next = 0;
                while next < per_pipe {
                    let end = (next + batch).min(per_pipe);
                    let events = (next..end)
                        .map(|i| replay_event(&name, &id, i, per_pipe))
                        .collect();
                    log.append(&name, next, events).await?;
                    next = end;
                }
                Ok(())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let took = start.elapsed();
    log.close().await?;
    drop(log);
    Ok(WriteResult {
        seconds: took.as_secs_f64(),
        bytes_on_disk: dir_size(dir),
        peak_rss_mb: rss_mb().1,
    })
}

/// Runs [`write_replay_log`] in a child process (this binary, hidden
/// subcommand), so its memory is not this process's.
async fn write_child(dir: &Path, p: &Params) -> Res<WriteResult> {
    let args = [
        "--events",
        &p.replay_events.to_string(),
        "--pipes",
        &p.replay_pipes.to_string(),
        "--batch",
        &p.replay_batch.to_string(),
    ];
    run_child("replay-write", dir, &args, "replay-write").await
}

/// Runs this binary's hidden subcommand `sub` on `dir` with `args` and reads
/// its JSON answer; `what` names it in the error.
async fn run_child<T: DeserializeOwned>(
    sub: &str,
    dir: &Path,
    args: &[&str],
    what: &str,
) -> Res<T> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg(sub)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// One way of reading the replay log, run in a child process each so its
/// time and peak memory are its own.
#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
pub(crate) enum ProbeKind {
    /// sled open + scan of the log tree, values untouched.
    Raw,
    /// + `decode_record` (crc + prost) of every value.
    Decode,
    /// + `Projection::apply` (no per-stream index, no seq checks).
    Project,
    /// `EventLog::open` + `replay` into a projection: what start-up does.
    Eventlog,
    /// The same with sled's cache capped at 64 MiB (`EventLog::with_db`).
    EventlogSmallCache,
}

const SMALL_CACHE: u64 = 64 << 20;

#[derive(Serialize, serde::Deserialize)]
pub(crate) struct ProbeResult {
    open_s: f64,
    scan_s: f64,
    peak_rss_mb: f64,
}

pub(crate) fn probe(dir: &Path, kind: ProbeKind, expect: u64) -> Res<ProbeResult> {
    let t = Instant::now();
    let mut n = 0u64;
    let (opened, scanned) = match kind {
        ProbeKind::Eventlog | ProbeKind::EventlogSmallCache => {
            let log = if kind == ProbeKind::Eventlog {
                EventLog::open(dir)?
            } else {
                EventLog::with_db(
                    sled::Config::new()
                        .path(dir)
                        .cache_capacity(SMALL_CACHE)
                        .open()?,
                )?
            };
            let opened = t.elapsed();
            let t = Instant::now();
            let mut projection = Projection::default();
            n = log.replay(|e| projection.apply(e))?.events;
            (opened, t.elapsed())
        }
        _ => {
            let db = sled::Config::new().path(dir).open()?;
            let tree = db.open_tree("log")?;
            let opened = t.elapsed();
            let t = Instant::now();
            let mut projection = Projection::default();
            let mut bytes = 0usize;
            for item in tree.scan_prefix([b'e']) {
                let (_, v) = item?;
                bytes += v.len();
                match kind {
                    ProbeKind::Decode => bytes += decode_record(&v)?.pipe_name.len(),
                    ProbeKind::Project => projection.apply(&decode_record(&v)?),
                    _ => {}
                }
                n += 1;
            }
            std::hint::black_box(bytes);
            (opened, t.elapsed())
        }
    };
    if n != expect {
        return Err(format!("{kind:?} saw {n} events, expected {expect}").into());
    }
    Ok(ProbeResult {
        open_s: opened.as_secs_f64(),
        scan_s: scanned.as_secs_f64(),
        peak_rss_mb: rss_mb().1,
    })
}

/// Runs [`probe`] in a child process (this binary, hidden subcommand).
async fn probe_child(dir: &Path, kind: ProbeKind, expect: u64) -> Res<ProbeResult> {
    let kind_arg = clap::ValueEnum::to_possible_value(&kind)
        .map(|v| v.get_name().to_owned())
        .ok_or("probe kind has no name")?;
    let args = ["--kind", &kind_arg, "--expect", &expect.to_string()];
    run_child(
        "replay-probe",
        dir,
        &args,
        &format!("replay probe {kind_arg}"),
    )
    .await
}

pub(crate) async fn bench_replay(p: &Params, base: &Path) -> Res<Vec<Row>> {
    let n = p.replay_events;
    let dir = tempdir_in(base)?;
    let data = dir.path().join("data");
    progress(format!(
        "2. replay: writing {n} events via EventLog::append"
    ));
    let w = write_child(&data, p).await?;
    let (write_took, size) = (w.seconds, w.bytes_on_disk);
    progress(format!(
        "2. replay: wrote in {write_took:.1} s ({} ev/s, {} per append), {:.0} MB on disk, writer peak RSS {:.0} MB",
        fmt_rate(n as f64 / write_took),
        p.replay_batch,
        size as f64 / 1e6,
        w.peak_rss_mb
    ));
    let kinds = [
        ProbeKind::Raw,
        ProbeKind::Decode,
        ProbeKind::Project,
        ProbeKind::Eventlog,
        ProbeKind::EventlogSmallCache,
    ];
    let mut results: Vec<Vec<ProbeResult>> = kinds.iter().map(|_| Vec::new()).collect();
    for rep in 0..p.replay_reps {
        progress(format!(
            "2. replay: round {}/{} (one child process per variant)",
            rep + 1,
            p.replay_reps
        ));
        for (i, kind) in kinds.iter().enumerate() {
            results[i].push(probe_child(&data, *kind, n).await?);
        }
    }
    // Median by total time.
    let med: Vec<ProbeResult> = results
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| (a.open_s + a.scan_s).total_cmp(&(b.open_s + b.scan_s)));
            v.swap_remove(v.len() / 2)
        })
        .collect();
    let total = |r: &ProbeResult| r.open_s + r.scan_s;
    let full_t = total(&med[3]);
    let show = |r: &ProbeResult| {
        format!(
            "{:.2} s  ({} ev/s; open {:.2} + scan {:.2} s; peak RSS {:.0} MB)",
            total(r),
            fmt_rate(n as f64 / total(r)),
            r.open_s,
            r.scan_s,
            r.peak_rss_mb
        )
    };
    let share = |r: &ProbeResult| format!("{:.0}% of replay time", 100.0 * total(r) / full_t);
    let mk = |name: &str, base: bool, r: &ProbeResult, vs: String| {
        row("2", name, base, show(r), vs)
            .val("seconds", total(r))
            .val("open_s", r.open_s)
            .val("scan_s", r.scan_s)
            .val("events_per_s", n as f64 / total(r))
            .val("peak_rss_mb", r.peak_rss_mb)
    };
    Ok(vec![
        mk(
            &format!("raw sled open + scan of the log tree, no decode ({n} ev)"),
            true,
            &med[0],
            share(&med[0]),
        )
        .val("bytes_on_disk", size as f64),
        mk(
            "sled scan + decode_record (crc + prost) only",
            true,
            &med[1],
            share(&med[1]),
        ),
        mk(
            "sled scan + decode + Projection::apply (no index/checks)",
            true,
            &med[2],
            share(&med[2]),
        ),
        mk(
            &format!(
                "EventLog::open + replay into Projection ({n} ev, median of {})",
                p.replay_reps
            ),
            false,
            &med[3],
            format!(
                "{:.2}x raw scan, {:.2}x decode-only",
                full_t / total(&med[0]),
                full_t / total(&med[1])
            ),
        )
        .val("setup_write_s", write_took)
        .val("setup_write_peak_rss_mb", w.peak_rss_mb),
        mk(
            "  alt config: same, sled cache_capacity 64 MiB",
            false,
            &med[4],
            format!(
                "{:.2}x time, {:.2}x peak RSS of EventLog::open",
                total(&med[4]) / full_t,
                med[4].peak_rss_mb / med[3].peak_rss_mb
            ),
        ),
    ])
}
