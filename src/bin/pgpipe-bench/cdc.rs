//! The CDC scenario: a steady write load at several rates, and a backlog,
//! against the raw decode limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::{
    CreatePipeRequest, DestinationConfig, PipeSettings, SourceConfig, TableConfig,
};
use tokio::task::JoinHandle;

use crate::peers::{CpuSplit, Footprint, Peers, ch_exec, pg_connect, settle, unique_name};
use crate::pgpipe_server::{Server, get_pipe, toggle, wait_cdc};
use crate::report::{Lat, Output, fmt_rate, lat, ms, print_grid, progress, row, x};
use crate::{Client, Res};

#[derive(Args)]
pub(crate) struct CdcArgs {
    /// Offered write rates in changed rows per second, comma-separated; 0 =
    /// as fast as the writers can go.
    #[arg(long, value_delimiter = ',', default_value = "2000,10000,30000,0")]
    rates: Vec<u64>,
    /// Seconds of writes per rate.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Concurrent writer connections.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// The pipe's cdc_sync_interval_ms.
    #[arg(long, default_value_t = 200)]
    sync_ms: u32,
    /// The pipe's cdc_batch_size (rows).
    #[arg(long, default_value_t = 10_000)]
    batch_size: u32,
    /// Sizes of the single-transaction runs (rows inserted by one
    /// transaction), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000,5000000")]
    big_tx: Vec<u64>,
    /// Two rates (2000, unthrottled) of 3 s each, one 100,000-row transaction.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    out: Output,
}

/// Inserts a probe row and returns its id: once ClickHouse has it, every
/// change committed before it is there too.
async fn insert_probe(pg: &tokio_postgres::Client, schema: &str) -> Res<i64> {
    Ok(pg
        .query_one(
            &format!("INSERT INTO {schema}.probe DEFAULT VALUES RETURNING id"),
            &[],
        )
        .await?
        .get(0))
}

/// Waits until ClickHouse has probe `last`, polling every `poll`; fails
/// with `late` once `deadline` passes.
async fn await_probe(
    ch: &clickhouse::Client,
    db: &str,
    last: i64,
    deadline: Instant,
    poll: Duration,
    late: impl Into<String>,
) -> Res<()> {
    loop {
        let top: i64 = ch
            .query(&format!("SELECT toInt64(max(id)) FROM {db}.probe"))
            .fetch_one::<i64>()
            .await?;
        if top >= last {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(late.into().into());
        }
        tokio::time::sleep(poll).await;
    }
}

/// Rows changed per writer transaction: 6 inserted, 3 updated, 1 deleted.
const CDC_TX_ROWS: u64 = 10;

/// One writer: transactions of [`CDC_TX_ROWS`] changes at `rate` rows/s
/// (0: unthrottled) until `stop`; returns the rows it changed.
async fn cdc_writer(
    pg_url: String,
    schema: String,
    rate: f64,
    seed: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Res<u64> {
    let pg = pg_connect(&pg_url).await?;
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift: cheap, and good enough to spread ids.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let max_id: i64 = pg
        .query_one(&format!("SELECT coalesce(max(id), 1) FROM {schema}.t"), &[])
        .await?
        .get(0);
    let mut changed = 0u64;
    let start = Instant::now();
    let mut txs = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(txs as f64 * CDC_TX_ROWS as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let pick = |r: u64| 1 + (r % max_id as u64) as i64;
        let (u1, u2, u3, d) = (pick(next()), pick(next()), pick(next()), pick(next()));
        let note = format!("w{seed}-{txs}");
        let sql = format!(
            "BEGIN;
             INSERT INTO {schema}.t (v, note) SELECT g, '{note}' FROM generate_series(1, 6) g;
             UPDATE {schema}.t SET v = v + 1, at = now() WHERE id IN ({u1}, {u2}, {u3});
             DELETE FROM {schema}.t WHERE id = {d};
             COMMIT;"
        );
        for m in pg.simple_query(&sql).await? {
            if let tokio_postgres::SimpleQueryMessage::CommandComplete(n) = m {
                changed += n;
            }
        }
        txs += 1;
    }
    Ok(changed)
}

/// Inserts one probe row every 50 ms until `stop`; returns (id, commit time).
async fn cdc_prober(
    pg_url: String,
    schema: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Res<Vec<(i64, Instant)>> {
    let pg = pg_connect(&pg_url).await?;
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let id = insert_probe(&pg, &schema).await?;
        sent.push((id, Instant::now()));
    }
    Ok(sent)
}

/// Lag of `slot` in bytes (WAL written but not confirmed by pgpipe).
async fn slot_lag(pg: &tokio_postgres::Client, slot: &str) -> Res<f64> {
    let r = pg
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(r.map_or(0.0, |r| r.get::<_, f64>(0)))
}

struct CdcRun {
    offered: u64,
    changed: u64,
    write_secs: f64,
    /// From the first write until the last probe was visible in ClickHouse.
    applied_secs: f64,
    latency: Lat,
    max_lag: f64,
    cpu: CpuSplit,
    peak_mb: f64,
}

/// Where the CDC runs happen: the source and its table's schema, the
/// ClickHouse database the pipe writes, and the processes measured beside
/// pgpipe.
#[derive(Clone, Copy)]
struct Setup<'a> {
    pg_url: &'a str,
    ch: &'a clickhouse::Client,
    schema: &'a str,
    db: &'a str,
    peers: &'a Peers,
}

/// Starts `n` writers of `rate` rows/s each (0: as fast as they can), the
/// `w`-th seeded with `seed + w`, until `stop` is set.
fn spawn_writers(
    setup: Setup<'_>,
    n: usize,
    rate: f64,
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Res<u64>>> {
    (0..n)
        .map(|w| {
            tokio::spawn(cdc_writer(
                setup.pg_url.to_string(),
                setup.schema.to_string(),
                rate,
                seed + w as u64,
                Arc::clone(stop),
            ))
        })
        .collect()
}

/// Stops the writers and sums the rows they changed.
async fn stop_writers(stop: &AtomicBool, writers: Vec<JoinHandle<Res<u64>>>) -> Res<u64> {
    stop.store(true, Ordering::Relaxed);
    let mut changed = 0;
    for w in writers {
        changed += w.await??;
    }
    Ok(changed)
}

async fn cdc_rate(
    setup: Setup<'_>,
    slot: &str,
    rate: u64,
    args: &CdcArgs,
    secs: f64,
) -> Res<CdcRun> {
    let Setup {
        pg_url,
        ch,
        schema,
        db,
        peers,
    } = setup;
    let pg = pg_connect(pg_url).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let fp = Footprint::start(peers);
    let start = Instant::now();
    let mut writers = spawn_writers(
        setup,
        args.writers,
        rate as f64 / args.writers as f64,
        (rate + 1) * 1000,
        &stop,
    );
    let prober = tokio::spawn(cdc_prober(
        pg_url.to_string(),
        schema.to_string(),
        Arc::clone(&stop),
    ));
    // Poll ClickHouse for probes; sample the slot lag.
    let mut seen: Vec<(i64, Instant)> = Vec::new();
    let mut max_lag = 0f64;
    let mut last_lag = Instant::now();
    let mut done_writing: Option<(f64, i64)> = None;
    let mut changed = 0u64;
    let deadline = start + Duration::from_secs_f64(secs + 120.0);
    loop {
        let top: i64 = ch
            .query(&format!("SELECT toInt64(max(id)) FROM {db}.probe"))
            .fetch_one::<i64>()
            .await?;
        let now = Instant::now();
        if seen.last().is_none_or(|(id, _)| top > *id) {
            seen.push((top, now));
        }
        if last_lag.elapsed() >= Duration::from_millis(250) {
            max_lag = max_lag.max(slot_lag(&pg, slot).await?);
            last_lag = now;
        }
        if done_writing.is_none() && start.elapsed().as_secs_f64() >= secs {
            changed += stop_writers(&stop, std::mem::take(&mut writers)).await?;
            // A probe committed after every write: when it is visible,
            // everything before it is.
            let last = insert_probe(&pg, schema).await?;
            done_writing = Some((start.elapsed().as_secs_f64(), last));
        }
        if let Some((_, last)) = done_writing
            && top >= last
        {
            break;
        }
        if now > deadline {
            return Err(
                format!("CDC at {rate} rows/s: not caught up 2 minutes after the writes").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied_secs = start.elapsed().as_secs_f64();
    let (cpu, peak_mb) = fp.end();
    let sent = prober.await??;
    // Each probe's latency: first poll that saw its id (or a later one).
    let mut lats = Vec::new();
    let mut j = 0;
    for (id, at) in &sent {
        while j < seen.len() && seen[j].0 < *id {
            j += 1;
        }
        if let Some((_, vis)) = seen.get(j) {
            lats.push(vis.saturating_duration_since(*at));
        }
    }
    Ok(CdcRun {
        offered: rate,
        changed,
        write_secs: done_writing.map_or(secs, |(s, _)| s),
        applied_secs,
        latency: lat(lats),
        max_lag,
        cpu,
        peak_mb,
    })
}

/// A pgoutput slot of its own, created before the changes to decode raw.
async fn create_raw_slot(pg: &tokio_postgres::Client, slot: &str) -> Res<()> {
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await?;
    Ok(())
}

/// The decode limit: the same changes read raw from a slot of its own with
/// `pg_logical_slot_get_binary_changes` (pgoutput) through the schema's
/// `_raw` publication, as (seconds, messages); the slot is dropped after.
async fn raw_decode(pg: &tokio_postgres::Client, slot: &str, schema: &str) -> Res<(f64, u64)> {
    let start = Instant::now();
    let publication = format!("{schema}_raw");
    let msgs: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await?
        .get(0);
    let secs = start.elapsed().as_secs_f64();
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    Ok((secs, msgs as u64))
}

/// pgpipe's CDC apply limit: a backlog written while the pipe is paused
/// (unthrottled writers for `secs`), then drained after ResumePipe; the same
/// changes are then decoded raw from a slot created just before them.
/// Returns (changes, pgpipe drain secs, raw decode secs, pgoutput messages,
/// CPU split and peak RSS of the drain).
async fn cdc_backlog(
    c: &mut Client,
    name: &str,
    setup: Setup<'_>,
    writers: usize,
    secs: f64,
) -> Res<(u64, f64, f64, u64, CpuSplit, f64)> {
    let Setup {
        ch,
        schema,
        db,
        peers,
        ..
    } = setup;
    let pg = pg_connect(setup.pg_url).await?;
    toggle(c, name, true).await?;
    loop {
        let p = get_pipe(c, name).await?;
        if p.status == pgpipe::proto::PipeStatus::Paused as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raw_slot = format!("{schema}_raw");
    create_raw_slot(&pg, &raw_slot).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_writers(setup, writers, 0.0, 7_000, &stop);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let changed = stop_writers(&stop, tasks).await?;
    let last = insert_probe(&pg, schema).await?;
    settle(ch).await?;
    let fp = Footprint::start(peers);
    let start = Instant::now();
    toggle(c, name, false).await?;
    let deadline = start + Duration::from_secs(600);
    await_probe(
        ch,
        db,
        last,
        deadline,
        Duration::from_millis(10),
        "CDC backlog not drained after 10 minutes",
    )
    .await?;
    let drain = start.elapsed().as_secs_f64();
    let (cpu, peak) = fp.end();
    let (raw_secs, msgs) = raw_decode(&pg, &raw_slot, schema).await?;
    Ok((changed, drain, raw_secs, msgs, cpu, peak))
}

struct BigTx {
    rows: u64,
    /// The INSERT ... COMMIT itself.
    commit_secs: f64,
    /// From the commit until a probe committed after it is visible.
    visible_secs: f64,
    /// The same transaction decoded raw from a slot of its own.
    raw_secs: f64,
    cpu: CpuSplit,
    peak_mb: f64,
}

/// One transaction inserting `rows` rows while the pipe runs: time from its
/// commit until ClickHouse shows it, next to the time Postgres takes to
/// decode it (pgoutput, a slot created just before), and pgpipe's peak RSS.
async fn cdc_big_tx(
    pg_url: &str,
    ch: &clickhouse::Client,
    schema: &str,
    db: &str,
    rows: u64,
    peers: &Peers,
) -> Res<BigTx> {
    let pg = pg_connect(pg_url).await?;
    let raw_slot = format!("{schema}_big");
    create_raw_slot(&pg, &raw_slot).await?;
    settle(ch).await?;
    let fp = Footprint::start(peers);
    let t0 = Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.t (v, note) SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
    ))
    .await?;
    let committed = Instant::now();
    let commit_secs = (committed - t0).as_secs_f64();
    let last = insert_probe(&pg, schema).await?;
    let deadline = committed + Duration::from_secs(1800);
    await_probe(
        ch,
        db,
        last,
        deadline,
        Duration::from_millis(20),
        format!("a {rows}-row transaction not visible after 30 minutes"),
    )
    .await?;
    let visible_secs = committed.elapsed().as_secs_f64();
    let (cpu, peak_mb) = fp.end();
    let (raw_secs, _) = raw_decode(&pg, &raw_slot, schema).await?;
    Ok(BigTx {
        rows,
        commit_secs,
        visible_secs,
        raw_secs,
        cpu,
        peak_mb,
    })
}

pub(crate) async fn cdc(args: CdcArgs) -> Res<()> {
    let rates = if args.quick {
        vec![2000, 0]
    } else {
        args.rates.clone()
    };
    let secs = if args.quick { 3.0 } else { args.secs };
    if rates.is_empty() || secs <= 0.0 || args.writers == 0 {
        return Err("--rates, --secs and --writers must be set and positive".into());
    }
    let (s, pg, ch) = args
        .out
        .start(format!(
            "cdc: rates {rates:?} rows/s, {secs} s each, {} writers",
            args.writers
        ))
        .await?;
    let peers = Peers::find(&pg, &s.ch_url).await;
    let schema = unique_name("bench_cdc");
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.t (id bigserial PRIMARY KEY, v int NOT NULL, note text,
             at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {schema}.t (v, note) SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
         CREATE TABLE {schema}.probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE PUBLICATION {schema}_raw FOR TABLE {schema}.t, {schema}.probe;"
    ))
    .await?;
    let srv = Server::start_with(&s.base, true).await?;
    let mut c = PipeServiceClient::new(srv.channel().await?);
    let db = schema.clone();
    let name = db.replace('_', "-");
    let table = |t: &str| TableConfig {
        source_table: format!("{schema}.{t}"),
        ..Default::default()
    };
    c.create_pipe(CreatePipeRequest {
        name: name.clone(),
        source: Some(SourceConfig {
            connection_string: s.pg_url.clone(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: s.ch_url.clone(),
            database: db.clone(),
            user: "default".into(),
            password: String::new(),
            ca_cert: String::new(),
        }),
        tables: vec![table("t"), table("probe")],
        settings: Some(PipeSettings {
            snapshot_parallelism: 2,
            snapshot_rows_per_partition: 0,
            cdc_batch_size: args.batch_size,
            cdc_sync_interval_ms: args.sync_ms,
            ..Default::default()
        }),
        labels: Default::default(),
    })
    .await?;
    wait_cdc(&mut c, &name, None).await?;
    let slot = get_pipe(&mut c, &name).await?.slot_name;
    progress(format!("pipe {name} running CDC (slot {slot})"));

    let mut runs = Vec::new();
    let setup = Setup {
        pg_url: &s.pg_url,
        ch: &ch,
        schema: &schema,
        db: &db,
        peers: &peers,
    };
    for &rate in &rates {
        settle(&ch).await?;
        let r = cdc_rate(setup, &slot, rate, &args, secs).await?;
        progress(format!(
            "offered {}: {} rows changed in {:.1} s, applied by {:.1} s, latency {}",
            if rate == 0 {
                "max".to_string()
            } else {
                rate.to_string()
            },
            r.changed,
            r.write_secs,
            r.applied_secs,
            r.latency.show()
        ));
        runs.push(r);
    }
    let (bl_rows, bl_drain, raw_secs, raw_msgs, bl_cpu, bl_peak) =
        cdc_backlog(&mut c, &name, setup, args.writers, secs).await?;
    progress(format!(
        "backlog of {bl_rows} changes: pgpipe drained it in {bl_drain:.2} s, raw decode {raw_secs:.2} s"
    ));
    let sizes = if args.quick {
        vec![100_000]
    } else {
        args.big_tx.clone()
    };
    let mut bigs = Vec::new();
    for rows in sizes {
        let b = cdc_big_tx(&s.pg_url, &ch, &schema, &db, rows, &peers).await?;
        progress(format!(
            "one {rows}-row transaction: visible {:.2} s after its commit, raw decode {:.2} s, peak RSS {:.0} MB",
            b.visible_secs, b.raw_secs, b.peak_mb
        ));
        bigs.push(b);
    }

    // Row-by-row sanity: live rows in ClickHouse equal the source's.
    let pg_rows: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {schema}.t"), &[])
        .await?
        .get(0);
    let ch_rows = ch
        .query(&format!(
            "SELECT toUInt64(count()) FROM {db}.t FINAL WHERE _pgpipe_is_deleted = 0"
        ))
        .fetch_one::<u64>()
        .await?;
    if ch_rows != pg_rows as u64 {
        return Err(
            format!("after CDC: ClickHouse has {ch_rows} live rows, Postgres {pg_rows}").into(),
        );
    }

    let mut out = Vec::new();
    let offered_name = |r: &CdcRun| {
        if r.offered == 0 {
            format!(
                "max ({} rows/s achieved)",
                fmt_rate(r.changed as f64 / r.write_secs)
            )
        } else {
            format!("{} rows/s", fmt_rate(r.offered as f64))
        }
    };
    for r in &runs {
        let applied = r.changed as f64 / r.applied_secs;
        let behind = r.applied_secs - r.write_secs;
        out.push(
            row(
                "1",
                &format!("pgpipe CDC, offered {}", offered_name(r)),
                false,
                format!(
                    "{} rows/s applied; latency {}",
                    fmt_rate(applied),
                    r.latency.show()
                ),
                format!(
                    "caught up {:.2} s after the writes ({}); slot lag max {:.1} MB",
                    behind,
                    if behind > 2.0 {
                        "falling behind"
                    } else {
                        "keeping up"
                    },
                    r.max_lag / 1e6,
                ),
            )
            .val("offered_rows_per_s", r.offered as f64)
            .val("changed_rows", r.changed as f64)
            .val("applied_rows_per_s", applied)
            .val("caught_up_after_s", behind)
            .val("max_slot_lag_bytes", r.max_lag)
            .val("latency_p50_ms", ms(r.latency.p50))
            .val("latency_p99_ms", ms(r.latency.p99))
            .val("latency_max_ms", ms(r.latency.max))
            .val("latency_samples", r.latency.n as f64)
            .val("peak_rss_mb", r.peak_mb),
        );
    }
    let drain_rate = bl_rows as f64 / bl_drain;
    let raw_rate = bl_rows as f64 / raw_secs;
    out.push(
        row(
            "2",
            "pgpipe CDC apply limit: drain a paused pipe's backlog",
            false,
            format!(
                "{} rows/s ({bl_rows} changes in {bl_drain:.2} s)",
                fmt_rate(drain_rate)
            ),
            format!("{} of the decode limit's time", x(bl_drain / raw_secs)),
        )
        .val("rows_per_s", drain_rate)
        .val("secs", bl_drain)
        .val("vs_decode_limit", bl_drain / raw_secs),
    );
    out.push(
        row(
            "2",
            "(decode limit) pg_logical_slot_get_binary_changes, same backlog",
            true,
            format!("{} rows/s ({raw_secs:.2} s)", fmt_rate(raw_rate)),
            format!("{raw_msgs} pgoutput messages, counted server-side"),
        )
        .val("rows_per_s", raw_rate)
        .val("secs", raw_secs),
    );
    out.push(
        row(
            "2",
            "Postgres CPU for the backlog drain (walsender decoding once)",
            false,
            format!(
                "{:.2} CPU s per million changes",
                bl_cpu.pg * 1e6 / bl_rows.max(1) as f64
            ),
            format!("{:.2} CPU s in all", bl_cpu.pg),
        )
        .val(
            "pg_cpu_s_per_million_changes",
            bl_cpu.pg * 1e6 / bl_rows.max(1) as f64,
        ),
    );
    for b in &bigs {
        out.push(
            row(
                "4",
                &format!("pgpipe: one transaction of {} rows", b.rows),
                false,
                format!(
                    "visible {:.2} s after commit ({} rows/s); peak RSS {:.0} MB",
                    b.visible_secs,
                    fmt_rate(b.rows as f64 / b.visible_secs),
                    b.peak_mb
                ),
                format!(
                    "{} of the decode limit's time; the INSERT itself took {:.2} s",
                    x(b.visible_secs / b.raw_secs),
                    b.commit_secs
                ),
            )
            .val("rows", b.rows as f64)
            .val("visible_after_commit_s", b.visible_secs)
            .val("vs_decode_limit", b.visible_secs / b.raw_secs)
            .val("peak_rss_mb", b.peak_mb)
            .val("pg_cpu_s", b.cpu.pg),
        );
        out.push(
            row(
                "4",
                &format!(
                    "(decode limit) pg_logical_slot_get_binary_changes, the same {} rows",
                    b.rows
                ),
                true,
                format!("{:.2} s", b.raw_secs),
                String::new(),
            )
            .val("secs", b.raw_secs),
        );
    }
    let mut feet: Vec<(String, CpuSplit, f64, u64)> = runs
        .iter()
        .map(|r| {
            (
                format!("CDC at {}", offered_name(r)),
                r.cpu,
                r.peak_mb,
                r.changed,
            )
        })
        .collect();
    feet.push(("backlog drain".into(), bl_cpu, bl_peak, bl_rows));
    for (what, cpu, peak, n) in &feet {
        let per_m = 1e6 / (*n).max(1) as f64;
        out.push(
            row(
                "3",
                &format!("footprint: {what}"),
                false,
                format!(
                    "peak RSS {peak:.0} MB, {:.2} CPU s/M rows",
                    cpu.pgpipe * per_m
                ),
                cpu.show(),
            )
            .val("peak_rss_mb", *peak)
            .val("pgpipe_cpu_s_per_million_rows", cpu.pgpipe * per_m),
        );
    }

    let (total, peak, machine) = s.finish("cdc", args.quick);
    println!(
        "{} writers, transactions of 6 inserts + 3 updates + 1 delete, {secs} s per rate; \
         cdc_sync_interval_ms {}, cdc_batch_size {}; latency = probe row commit in Postgres -> visible in ClickHouse (10 ms polls)",
        args.writers, args.sync_ms, args.batch_size
    );
    print_grid(&out);
    println!(
        "total bench time {:.1} s, peak RSS {peak:.0} MB (includes the in-process server)",
        total.as_secs_f64()
    );
    args.out.write_json(serde_json::json!({
        "benchmark": "cdc",
        "quick": args.quick,
        "machine": machine,
        "rates": rates,
        "secs": secs,
        "writers": args.writers,
        "sync_ms": args.sync_ms,
        "elapsed_s": total.as_secs_f64(),
        "results": out,
    }))?;

    c.delete_pipe(pgpipe::proto::DeletePipeRequest {
        name: name.clone(),
        drop_destination_tables: true,
    })
    .await?;
    for _ in 0..200 {
        match get_pipe(&mut c, &name).await {
            Ok(p) if !p.source_released => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => break,
        }
    }
    srv.stop().await?;
    let _ = ch_exec(&ch, &format!("DROP DATABASE IF EXISTS {db}")).await;
    let _ = pg
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {schema}_raw; DROP SCHEMA {schema} CASCADE"
        ))
        .await;
    Ok(())
}
