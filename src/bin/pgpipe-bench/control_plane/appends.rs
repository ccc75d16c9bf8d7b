//! 1. Event appends: raw sled, the event log, and CreatePipe/Pause over gRPC.

use std::error::Error;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use pgpipe::domain::projection::Projection;
use pgpipe::proto::{PipeCreated, PipePaused, PipeResumed, event::Payload};
use pgpipe::store::event_log::new_event;
use prost::Message;

use crate::control_plane::replay::{open_log, pipe_config};
use crate::control_plane::{Params, create_req};
use crate::machine::tempdir_in;
use crate::pgpipe_server::{Server, toggle};
use crate::report::{Lat, Row, fmt_ms, fmt_rate, lat, ms, progress, row, x};
use crate::{Client, Res};

/// A representative stored record (a PipePaused event in the log's format).
fn sample_record() -> Vec<u8> {
    let mut e = new_event(
        &uuid::Uuid::new_v4().to_string(),
        Payload::PipePaused(PipePaused {}),
    );
    e.seq = 123_456;
    e.pipe_name = "pipe-017".into();
    e.stream_version = 42;
    e.schema_version = 1;
    e.at = Some(prost_types::Timestamp::from(SystemTime::now()));
    let payload = e.encode_to_vec();
    let mut v = vec![1u8];
    v.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    v.extend_from_slice(&payload);
    v
}

fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [b'e'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Raw sled, one insert at a time, optionally waiting for `flush_async`.
async fn raw_sled(base: &Path, flush: bool, secs: f64, cap: u64) -> Res<(f64, Lat)> {
    let dir = tempdir_in(base)?;
    let db = sled::Config::new().path(dir.path()).open()?;
    let tree = db.open_tree("log")?;
    let value = sample_record();
    let limit = Duration::from_secs_f64(secs);
    let mut lats = Vec::new();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        tree.insert(log_key(n + 1), value.as_slice())?;
        if flush {
            db.flush_async().await?;
        }
        n += 1;
        if flush || n.is_multiple_of(64) {
            lats.push(t.elapsed());
        }
        if (flush || n.is_multiple_of(256)) && (start.elapsed() >= limit || n >= cap) {
            break;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(tree);
    db.flush_async().await?;
    Ok((rate, lat(lats)))
}

/// Appends on `streams` streams concurrently (one appender each) for
/// `secs`, each append waiting for its group commit.
async fn log_appends(base: &Path, streams: usize, secs: f64) -> Res<(f64, Lat)> {
    let dir = tempdir_in(base)?;
    let log = open_log(dir.path()).await?;
    let projection = Arc::new(RwLock::new(Projection::default()));
    let hook = Arc::clone(&projection);
    log.start_writer(Arc::new(move |e| {
        if let Ok(mut p) = hook.write() {
            p.apply(e)
        }
    }));
    for s in 0..streams {
        let name = format!("pipe-{s:03}");
        let id = uuid::Uuid::new_v4().to_string();
        let created = new_event(
            &id,
            Payload::PipeCreated(PipeCreated {
                name: name.clone(),
                config: Some(pipe_config(3)),
                resync_of: String::new(),
            }),
        );
        log.append(&name, 0, vec![created]).await?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let name = format!("pipe-{s:03}");
            let id = log
                .read_stream(&name, 0, u64::MAX, 1)?
                .first()
                .map(|e| e.pipe_id.clone())
                .unwrap_or_default();
            let mut version = 1u64;
            let mut lats = Vec::new();
            while Instant::now() < deadline {
                let payload = if version % 2 == 1 {
                    Payload::PipePaused(PipePaused {})
                } else {
                    Payload::PipeResumed(PipeResumed {})
                };
                let t = Instant::now();
                log.append(&name, version, vec![new_event(&id, payload)])
                    .await?;
                lats.push(t.elapsed());
                version += 1;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(lats)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    log.close().await?;
    Ok((rate, lat(all)))
}

/// The same through the gRPC API: PausePipe/ResumePipe on one pipe per caller.
async fn grpc_appends(p: &Params, base: &Path) -> Res<(f64, Lat)> {
    let server = Server::start(base).await?;
    let chans = server.channels(p.grpc_channels).await?;
    let mut c = Client::new(chans[0].clone());
    for s in 0..p.concurrent_appenders {
        c.create_pipe(create_req(&format!("pipe-{s:03}"), 3))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(p.append_secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..p.concurrent_appenders {
        let mut client = Client::new(chans[s % chans.len()].clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("pipe-{s:03}");
            let mut lats = Vec::new();
            let mut pause = true;
            while Instant::now() < deadline {
                let t = Instant::now();
                toggle(&mut client, &name, pause).await?;
                lats.push(t.elapsed());
                pause = !pause;
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(lats)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    drop(chans);
    server.stop().await?;
    Ok((rate, lat(all)))
}

pub(crate) async fn bench_appends(p: &Params, base: &Path) -> Res<Vec<Row>> {
    let secs = p.append_secs;
    progress("1. appends: raw sled insert + flush_async");
    let (floor, floor_lat) = raw_sled(base, true, secs, u64::MAX).await?;
    progress("1. appends: raw sled insert, no flush");
    let (ceiling, ceil_lat) = raw_sled(base, false, secs, 500_000).await?;
    progress("1. appends: EventLog, 1 appender");
    let (one, one_lat) = log_appends(base, 1, secs).await?;
    progress(format!(
        "1. appends: EventLog, {} appenders",
        p.concurrent_appenders
    ));
    let (many, many_lat) = log_appends(base, p.concurrent_appenders, secs).await?;
    progress(format!(
        "1. appends: gRPC Pause/Resume, {} callers",
        p.concurrent_appenders
    ));
    let (grpc, grpc_lat) = grpc_appends(p, base).await?;

    let vs = |r: f64| {
        format!(
            "{} floor, {:.1}% of ceiling",
            x(r / floor),
            100.0 * r / ceiling
        )
    };
    let show = |r: f64, l: &Lat| format!("{} ev/s  (p50 {})", fmt_rate(r), fmt_ms(l.p50));
    let n = p.concurrent_appenders;
    Ok(vec![
        row(
            "1",
            "raw sled insert + flush_async per record (durability floor)",
            true,
            show(floor, &floor_lat),
            String::new(),
        )
        .val("per_s", floor)
        .val("p50_ms", ms(floor_lat.p50)),
        row(
            "1",
            "raw sled insert, no flush (memory ceiling)",
            true,
            format!("{} ev/s", fmt_rate(ceiling)),
            String::new(),
        )
        .val("per_s", ceiling)
        .val("p50_ms", ms(ceil_lat.p50)),
        row(
            "1a",
            "EventLog::append, 1 appender (waits for its flush)",
            false,
            show(one, &one_lat),
            vs(one),
        )
        .val("per_s", one),
        row(
            "1b",
            &format!("EventLog::append, {n} appenders, own streams (group commit)"),
            false,
            show(many, &many_lat),
            vs(many),
        )
        .val("per_s", many)
        .val("p50_ms", ms(many_lat.p50))
        .val("p99_ms", ms(many_lat.p99)),
        row(
            "1c",
            &format!(
                "gRPC PausePipe/ResumePipe, {n} callers on {n} pipes, {} conns",
                p.grpc_channels
            ),
            false,
            format!(
                "{} ev/s  (p50 {}, p99 {})",
                fmt_rate(grpc),
                fmt_ms(grpc_lat.p50),
                fmt_ms(grpc_lat.p99)
            ),
            format!("{}; {} of 1b", vs(grpc), x(grpc / many)),
        )
        .val("per_s", grpc)
        .val("p50_ms", ms(grpc_lat.p50))
        .val("p99_ms", ms(grpc_lat.p99)),
    ])
}
