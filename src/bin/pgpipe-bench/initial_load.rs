//! The initial-load scenario: one Postgres table snapshotted into ClickHouse
//! against source-read, destination-write, psql|curl and postgresql() baselines.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::{
    CreatePipeRequest, DestinationConfig, GetPipeRequest, PipeSettings, SourceConfig, TableConfig,
    event::Payload,
};
use serde::Serialize;

use crate::machine::tempdir_in;
use crate::peers::{
    CpuSplit, Footprint, Peers, ch_client, ch_count, ch_exec, pg_connect, settle, unique_name,
};
use crate::pgpipe_server::{Server, get_pipe, wait_cdc};
use crate::report::{Output, Row, fmt_rate, fmt_secs, goal, print_grid, progress, row, x};
use crate::{Client, Res};

#[derive(Args)]
pub(crate) struct IlArgs {
    /// Rows in the source table (default 5,000,000; 200,000 with --quick).
    #[arg(long)]
    rows: Option<u64>,
    /// Snapshot parallelism values to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    parallelism: Vec<u32>,
    /// 200,000 rows instead of 5,000,000.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    out: Output,
    /// Only pgpipe's loads, no baselines and no table (for profiling).
    #[arg(long)]
    pgpipe_only: bool,
}

/// Source columns, as selected on both sides.
const IL_COLS: &str = "id, amount, note, at, doc, n";

/// One timed load: seconds and rows.
#[derive(Debug, Clone, Serialize)]
struct Load {
    secs: f64,
    rows: u64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

async fn make_source(pg: &tokio_postgres::Client, schema: &str, rows: u64) -> Res<()> {
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.t (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL,
             note text NOT NULL, at timestamptz NOT NULL, doc jsonb NOT NULL, n int NOT NULL);
         INSERT INTO {schema}.t
           SELECT g, (g % 10000000) / 100.0, rpad(md5(g::text), 96, md5((g * 7)::text)),
                  timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
                  jsonb_build_object('k', g % 1000, 'tag', 'tag-' || (g % 17), 'ok', g % 2 = 0),
                  (g % 1000000)::int
           FROM generate_series(1, {rows}) g;
         ANALYZE {schema}.t;"
    ))
    .await?;
    Ok(())
}

/// (a) `COPY (SELECT ...) TO STDOUT (FORMAT binary)` drained to nowhere.
async fn copy_out_binary(pg_url: &str, schema: &str) -> Res<(Load, u64)> {
    let pg = pg_connect(pg_url).await?;
    let start = Instant::now();
    let stream = pg
        .copy_out(&format!(
            "COPY (SELECT {IL_COLS} FROM {schema}.t) TO STDOUT (FORMAT binary)"
        ))
        .await?;
    futures::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let rows = pg
        .query_one(&format!("SELECT count(*) FROM {schema}.t"), &[])
        .await?
        .get::<_, i64>(0) as u64;
    Ok((Load { secs, rows }, bytes))
}

struct PipeRun {
    load: Load,
    db: String,
    /// CPU seconds of each side; peak RSS (MB) of the process hosting the
    /// service.
    cpu: CpuSplit,
    peak_mb: f64,
    /// Each step's time, from the pipe's events.
    steps: Vec<(&'static str, f64)>,
    resync: Option<ResyncRun>,
}

/// A resync of the loaded pipe: total time and each step's share, from the
/// new incarnation's events (their `at` times).
struct ResyncRun {
    secs: f64,
    steps: Vec<(&'static str, f64)>,
    cpu: CpuSplit,
    peak_mb: f64,
}

/// What every pgpipe load of a run shares: where the service keeps its
/// data, the source (URL, schema, rows), ClickHouse, and the processes
/// measured beside pgpipe.
#[derive(Clone, Copy)]
struct Setup<'a> {
    base: &'a Path,
    pg_url: &'a str,
    ch_url: &'a str,
    schema: &'a str,
    rows: u64,
    peers: &'a Peers,
}

/// One pgpipe initial load: in-process server (engine on), CreatePipe until
/// snapshot_done (or RUNNING), then the ClickHouse row count is checked.
async fn pgpipe_load(setup: Setup<'_>, par: u32, resync: bool) -> Res<PipeRun> {
    let Setup {
        base,
        pg_url,
        ch_url,
        schema,
        rows,
        peers,
    } = setup;
    let srv = Server::start_with(base, true).await?;
    let mut c = PipeServiceClient::new(srv.channel().await?);
    let db = unique_name(&format!("bench_il_p{par}"));
    let name = db.replace('_', "-");
    let req = CreatePipeRequest {
        name: name.clone(),
        source: Some(SourceConfig {
            connection_string: pg_url.into(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: ch_url.into(),
            database: db.clone(),
            user: "default".into(),
            password: String::new(),
            ca_cert: String::new(),
        }),
        tables: vec![TableConfig {
            source_table: format!("{schema}.t"),
            ..Default::default()
        }],
        settings: Some(PipeSettings {
            snapshot_parallelism: par,
            snapshot_rows_per_partition: (rows / (2 * u64::from(par))).max(1),
            cdc_batch_size: 10_000,
            cdc_sync_interval_ms: 100,
            ..Default::default()
        }),
        labels: Default::default(),
    };
    let fp = Footprint::start(peers);
    let start = Instant::now();
    c.create_pipe(req).await?;
    let deadline = start + Duration::from_secs(3_600);
    loop {
        let p = c
            .get_pipe(GetPipeRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .pipe
            .ok_or("GetPipe returned no pipe")?;
        let st = pgpipe::proto::PipeStatus::try_from(p.status)
            .unwrap_or(pgpipe::proto::PipeStatus::Unspecified);
        if p.snapshot_done || st == pgpipe::proto::PipeStatus::Running {
            break;
        }
        if st == pgpipe::proto::PipeStatus::Failed {
            return Err(format!("pipe {name} failed: {} ({})", p.error, p.failed_step).into());
        }
        if Instant::now() > deadline {
            return Err(format!("pipe {name}: no snapshot after an hour").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (cpu, peak_mb) = fp.end();
    let got = ch_count(&ch_client(ch_url), &format!("{db}.t")).await?;
    if got != rows {
        return Err(format!("pipe {name}: ClickHouse has {got} rows, expected {rows}").into());
    }
    let id = get_pipe(&mut c, &name).await?.id;
    let steps = step_times(&mut c, &name, &id)
        .await?
        .into_iter()
        .filter(|(s, _)| !s.starts_with("resume"))
        .collect();
    let resync = if resync {
        Some(resync_run(&mut c, &name, ch_url, &db, rows, peers).await?)
    } else {
        None
    };
    c.delete_pipe(pgpipe::proto::DeletePipeRequest {
        name: name.clone(),
        drop_destination_tables: false,
    })
    .await?;
    // Let the engine drop the slot and publication before the server stops.
    for _ in 0..200 {
        let done = match c
            .get_pipe(GetPipeRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().pipe.is_none_or(|p| p.source_released),
            Err(_) => true,
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await?;
    Ok(PipeRun {
        load: Load { secs, rows: got },
        db,
        cpu,
        peak_mb,
        steps,
        resync,
    })
}

/// How long each step of incarnation `id` of `name` took, from its events'
/// `at` times (each step ends with the event named).
async fn step_times(c: &mut Client, name: &str, id: &str) -> Res<Vec<(&'static str, f64)>> {
    let mut events = c
        .watch_events(pgpipe::proto::WatchEventsRequest {
            after_cursor: Some(0),
            pipe_name: name.into(),
            label_selector: Default::default(),
        })
        .await?
        .into_inner();
    let mut marks: Vec<(&'static str, f64)> = Vec::new();
    while let Some(item) = events.message().await? {
        use pgpipe::proto::watch_events_response::Item;
        let e = match item.item {
            Some(Item::Event(e)) => e,
            _ => break, // caught up: the history is complete
        };
        if e.pipe_id != id {
            continue;
        }
        let at =
            e.at.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
                .unwrap_or(0.0);
        let step = match e.payload {
            Some(Payload::PipeCreated(_)) => "start",
            Some(Payload::SetupCompleted(_)) => "setup (slot, snapshot export)",
            Some(Payload::TablesPrepared(_)) => "create destination tables",
            Some(Payload::SnapshotStarted(_)) => "plan partitions",
            Some(Payload::SnapshotCompleted(_)) => "copy (the initial load proper)",
            Some(Payload::SoftDeletesTransferred(_)) => "move soft deletes",
            Some(Payload::TablesSwapped(_)) => "swap",
            Some(Payload::CdcStarted(_)) => "resume CDC",
            _ => continue,
        };
        marks.push((step, at));
    }
    Ok(marks
        .windows(2)
        .map(|w| (w[1].0, w[1].1 - w[0].1))
        .collect())
}

/// ResyncPipe on a running pipe, until the new incarnation runs CDC; the
/// step times come from its events.
async fn resync_run(
    c: &mut Client,
    name: &str,
    ch_url: &str,
    db: &str,
    rows: u64,
    peers: &Peers,
) -> Res<ResyncRun> {
    let old = wait_cdc(c, name, None).await?;
    let fp = Footprint::start(peers);
    let start = Instant::now();
    c.resync_pipe(pgpipe::proto::ResyncPipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await?;
    let new = wait_cdc(c, name, Some(&old)).await?;
    let secs = start.elapsed().as_secs_f64();
    let (cpu, peak_mb) = fp.end();
    let got = ch_count(&ch_client(ch_url), &format!("{db}.t")).await?;
    if got != rows {
        return Err(format!("resync of {name}: ClickHouse has {got} rows, expected {rows}").into());
    }
    let steps = step_times(c, name, &new).await?;
    Ok(ResyncRun {
        secs,
        steps,
        cpu,
        peak_mb,
    })
}

/// A MergeTree table `db.table` with the column types pgpipe chose.
async fn like_pgpipe(ch: &clickhouse::Client, src_db: &str, db: &str, table: &str) -> Res<()> {
    ch_exec(ch, &format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
    ch_exec(
        ch,
        &format!(
            "CREATE TABLE {db}.{table} ENGINE = MergeTree ORDER BY id AS \
             SELECT {IL_COLS} FROM {src_db}.t WHERE 0"
        ),
    )
    .await
}

/// A fresh database (named after `prefix`) for a baseline, with a table `t`
/// like the first pgpipe load's, once ClickHouse has settled.
async fn like_first_load(ch: &clickhouse::Client, src_db: &str, prefix: &str) -> Res<String> {
    let db = unique_name(prefix);
    like_pgpipe(ch, src_db, &db, "t").await?;
    settle(ch).await?;
    Ok(db)
}

/// (b) POST a prepared RowBinary file to ClickHouse.
async fn post_rowbinary(ch_url: &str, file: &Path, db: &str, rows: u64) -> Res<Load> {
    let data = prost::bytes::Bytes::from(std::fs::read(file)?);
    let ch = ch_client(ch_url);
    let start = Instant::now();
    let mut ins =
        ch.insert_formatted_with(format!("INSERT INTO {db}.t ({IL_COLS}) FORMAT RowBinary"));
    const CHUNK: usize = 1 << 20;
    let mut off = 0;
    while off < data.len() {
        let end = (off + CHUNK).min(data.len());
        ins.send(data.slice(off..end)).await?;
        off = end;
    }
    ins.end().await?;
    let secs = start.elapsed().as_secs_f64();
    check_count(&ch, db, rows).await?;
    Ok(Load { secs, rows })
}

async fn check_count(ch: &clickhouse::Client, db: &str, rows: u64) -> Res<()> {
    let got = ch_count(ch, &format!("{db}.t")).await?;
    if got != rows {
        return Err(format!("{db}.t has {got} rows, expected {rows}").into());
    }
    Ok(())
}

/// (c) psql \copy ... CSV | curl --data-binary @- ... FORMAT CSV.
async fn psql_curl(pg_url: &str, ch_url: &str, schema: &str, db: &str, rows: u64) -> Res<Load> {
    let script = format!(
        "set -o pipefail; PGTZ=UTC psql '{pg_url}' -X -q -v ON_ERROR_STOP=1 \
         -c '\\copy (SELECT {IL_COLS} FROM {schema}.t) TO STDOUT WITH CSV' \
         | curl -sS --fail-with-body --data-binary @- \
         '{ch_url}/?date_time_input_format=best_effort&query=INSERT%20INTO%20{db}.t%20FORMAT%20CSV'"
    );
    let start = Instant::now();
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .await?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "psql | curl failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    check_count(&ch_client(ch_url), db, rows).await?;
    Ok(Load { secs, rows })
}

/// (d) ClickHouse pulling the table itself with postgresql().
async fn ch_pull(pg_url: &str, ch_url: &str, schema: &str, db: &str, rows: u64) -> Res<Load> {
    let u = url::Url::parse(pg_url)?;
    let hostport = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432)
    );
    let pgdb = u.path().trim_start_matches('/');
    let user = if u.username().is_empty() {
        "postgres"
    } else {
        u.username()
    };
    let pw = u.password().unwrap_or("");
    let ch = ch_client(ch_url);
    let start = Instant::now();
    ch_exec(
        &ch,
        &format!(
            "INSERT INTO {db}.t ({IL_COLS}) SELECT {IL_COLS} FROM \
             postgresql('{hostport}', '{pgdb}', 't', '{user}', '{pw}', '{schema}')"
        ),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    check_count(&ch, db, rows).await?;
    Ok(Load { secs, rows })
}

fn load_result(l: &Load, mb: f64) -> String {
    format!(
        "{}  {} rows/s  {:.1} MB/s",
        fmt_secs(l.secs),
        fmt_rate(l.rate()),
        mb / l.secs
    )
}

fn load_row(section: &str, name: &str, baseline: bool, l: &Load, mb: f64, vs: String) -> Row {
    row(section, name, baseline, load_result(l, mb), vs)
        .val("secs", l.secs)
        .val("rows", l.rows as f64)
        .val("rows_per_s", l.rate())
        .val("mb_per_s", mb / l.secs)
}

pub(crate) async fn initial_load(args: IlArgs) -> Res<()> {
    let rows = args
        .rows
        .unwrap_or(if args.quick { 200_000 } else { 5_000_000 });
    if rows == 0 || args.parallelism.is_empty() || args.parallelism.contains(&0) {
        return Err("--rows and every --parallelism must be > 0".into());
    }
    let what = format!(
        "initial-load of {rows} rows, parallelism {:?}",
        args.parallelism
    );
    let (s, pg, ch) = args.out.start(what).await?;
    let schema = unique_name("bench_il");
    make_source(&pg, &schema, rows).await?;
    let rel_bytes = pg
        .query_one(
            &format!("SELECT pg_total_relation_size('{schema}.t')::bigint"),
            &[],
        )
        .await?
        .get::<_, i64>(0) as u64;
    let rel_mb = rel_bytes as f64 / 1e6;
    progress(format!("source {schema}.t: {rows} rows, {rel_mb:.1} MB"));

    let peers = Peers::find(&pg, &s.ch_url).await;
    let mut feet: Vec<(String, CpuSplit, f64, f64)> = Vec::new();
    // A baseline's CPU split (no RSS: pgpipe is not running), and its time.
    let base_done = |feet: &mut Vec<_>, name: &str, c0: CpuSplit, l: &Load| {
        feet.push((name.to_string(), peers.now() - c0, f64::NAN, l.secs));
        progress(format!("{name}: {:.2} s", l.secs));
    };

    // (a) warm once (untimed), then measure.
    copy_out_binary(&s.pg_url, &schema).await?;
    settle(&ch).await?;
    let c0 = peers.now();
    let (a, copy_bytes) = copy_out_binary(&s.pg_url, &schema).await?;
    base_done(&mut feet, "(a) COPY binary", c0, &a);

    let mut runs: Vec<(u32, Load)> = Vec::new();
    let mut load_steps: Vec<Vec<(&'static str, f64)>> = Vec::new();
    let mut dbs = Vec::new();
    let mut resync = None;
    let last = args.parallelism.len() - 1;
    for (i, &par) in args.parallelism.iter().enumerate() {
        // The last (usually the widest) load is resynced too.
        settle(&ch).await?;
        let setup = Setup {
            base: &s.base,
            pg_url: &s.pg_url,
            ch_url: &s.ch_url,
            schema: &schema,
            rows,
            peers: &peers,
        };
        let r = pgpipe_load(setup, par, i == last).await?;
        progress(format!("pgpipe parallelism {par}: {:.2} s", r.load.secs));
        feet.push((
            format!("pgpipe initial load, parallelism {par}"),
            r.cpu,
            r.peak_mb,
            r.load.secs,
        ));
        if let Some(rs) = r.resync {
            progress(format!("pgpipe resync: {:.2} s", rs.secs));
            feet.push((
                format!("pgpipe resync, parallelism {par}"),
                rs.cpu,
                rs.peak_mb,
                rs.secs,
            ));
            resync = Some((par, rs));
        }
        runs.push((par, r.load));
        load_steps.push(r.steps);
        dbs.push(r.db);
    }

    if args.pgpipe_only {
        for db in &dbs {
            let _ = ch_exec(&ch, &format!("DROP DATABASE IF EXISTS {db}")).await;
        }
        let _ = pg
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
        return Ok(());
    }

    // (b) RowBinary file exported (untimed) from the first pgpipe load.
    let tmp = tempdir_in(&s.base)?;
    let file = tmp.path().join("t.rowbinary");
    {
        let mut cur = ch
            .query(&format!("SELECT {IL_COLS} FROM {}.t", dbs[0]))
            .fetch_bytes("RowBinary")?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        while let Some(chunk) = cur.next().await? {
            std::io::Write::write_all(&mut f, &chunk)?;
        }
        std::io::Write::flush(&mut f)?;
    }
    let rb_bytes = std::fs::metadata(&file)?.len();
    let db_b = like_first_load(&ch, &dbs[0], "bench_il_b").await?;
    let c0 = peers.now();
    let b = post_rowbinary(&s.ch_url, &file, &db_b, rows).await?;
    base_done(&mut feet, "(b) RowBinary POST", c0, &b);

    let db_c = like_first_load(&ch, &dbs[0], "bench_il_c").await?;
    let c0 = peers.now();
    let c = psql_curl(&s.pg_url, &s.ch_url, &schema, &db_c, rows).await?;
    base_done(&mut feet, "(c) psql | curl", c0, &c);

    let db_d = like_first_load(&ch, &dbs[0], "bench_il_d").await?;
    let c0 = peers.now();
    let d = ch_pull(&s.pg_url, &s.ch_url, &schema, &db_d, rows).await?;
    base_done(&mut feet, "(d) postgresql()", c0, &d);

    // Table.
    let ab = a.secs.max(b.secs);
    let mut out = Vec::new();
    for (i, (par, l)) in runs.iter().enumerate() {
        let vs = format!(
            "{} of (d) [goal <=1: {}] | {} of max(a,b) [<=1.5: {}] | {} of (c) [<=0.33: {}]",
            x(l.secs / d.secs),
            goal(l.secs <= d.secs),
            x(l.secs / ab),
            goal(l.secs <= 1.5 * ab),
            x(l.secs / c.secs),
            goal(l.secs * 3.0 <= c.secs),
        );
        out.push(
            load_row(
                "1",
                &format!("pgpipe snapshot, parallelism {par}"),
                false,
                l,
                rel_mb,
                vs,
            )
            .val("parallelism", f64::from(*par))
            .val("vs_d", l.secs / d.secs)
            .val("vs_max_ab", l.secs / ab)
            .val("vs_c", l.secs / c.secs),
        );
        for (step, secs) in &load_steps[i] {
            out.push(
                row(
                    "1",
                    &format!("  step: {step}"),
                    false,
                    format!("{secs:.3} s"),
                    format!("{:.1}% of the load", 100.0 * secs / l.secs),
                )
                .val("secs", *secs),
            );
        }
    }
    out.push(load_row(
        "2",
        "(a) source read: COPY binary to nowhere",
        true,
        &a,
        rel_mb,
        format!("{:.1} MB of COPY binary", copy_bytes as f64 / 1e6),
    ));
    out.push(load_row(
        "2",
        "(b) dest write: POST RowBinary file",
        true,
        &b,
        rel_mb,
        format!("{:.1} MB of RowBinary", rb_bytes as f64 / 1e6),
    ));
    out.push(load_row(
        "2",
        "(c) psql \\copy CSV | curl FORMAT CSV",
        true,
        &c,
        rel_mb,
        String::new(),
    ));
    out.push(load_row(
        "2",
        "(d) ClickHouse INSERT SELECT postgresql()",
        true,
        &d,
        rel_mb,
        String::new(),
    ));
    if let Some((par, rs)) = &resync {
        let load = runs
            .iter()
            .find(|(p, _)| p == par)
            .map_or(f64::NAN, |(_, l)| l.secs);
        out.push(
            row(
                "3",
                &format!("pgpipe resync (all steps), parallelism {par}"),
                false,
                format!("{:.2} s", rs.secs),
                format!("{} of its initial load ({:.2} s)", x(rs.secs / load), load),
            )
            .val("secs", rs.secs)
            .val("vs_initial_load", rs.secs / load),
        );
        for (step, secs) in &rs.steps {
            out.push(
                row(
                    "3",
                    &format!("  step: {step}"),
                    false,
                    format!("{:.3} s", secs),
                    format!("{:.1}% of the resync", 100.0 * secs / rs.secs),
                )
                .val("secs", *secs),
            );
        }
    }
    let per_m = 1e6 / rows as f64;
    for (what, cpu, peak, secs) in &feet {
        out.push(
            row(
                "4",
                &format!("footprint: {what}"),
                !what.starts_with("pgpipe"),
                if peak.is_nan() {
                    format!("{:.2} s", secs)
                } else {
                    format!(
                        "peak RSS {peak:.0} MB, {:.2} CPU s/M rows",
                        cpu.pgpipe * per_m
                    )
                },
                format!(
                    "{}; {:.0}% of {} cores busy",
                    cpu.show(),
                    100.0 * (cpu.pgpipe + cpu.pg + cpu.ch) / (secs * s.cores() as f64),
                    s.cores()
                ),
            )
            .val("peak_rss_mb", *peak)
            .val("cpu_pgpipe_s", cpu.pgpipe)
            .val("cpu_postgres_s", cpu.pg)
            .val("cpu_clickhouse_s", cpu.ch)
            .val("pgpipe_cpu_s_per_million_rows", cpu.pgpipe * per_m),
        );
    }

    let (total, peak, machine) = s.finish("initial-load", args.quick);
    println!(
        "source {schema}.t: {rows} rows (id bigint PK, numeric(12,2), text ~96 chars, timestamptz, jsonb, int); \
         load average at start {}",
        machine.loadavg_at_start
    );
    println!(
        "MB/s = pg_total_relation_size ({rel_mb:.1} MB, heap+toast+PK index) / time; \
         COPY binary {:.1} MB, RowBinary {:.1} MB",
        copy_bytes as f64 / 1e6,
        rb_bytes as f64 / 1e6
    );
    println!(
        "pgpipe: CreatePipe until GetPipe snapshot_done, rows_per_partition = rows/(2*parallelism); \
         ratios are pgpipe time / baseline time"
    );
    print_grid(&out);
    println!(
        "total bench time {:.1} s, peak RSS {peak:.0} MB (includes the in-process server)",
        total.as_secs_f64()
    );

    args.out.write_json(serde_json::json!({
        "benchmark": "initial-load",
        "quick": args.quick,
        "machine": machine,
        "rows": rows,
        "parallelism": args.parallelism,
        "relation_bytes": rel_bytes,
        "copy_binary_bytes": copy_bytes,
        "rowbinary_bytes": rb_bytes,
        "elapsed_s": total.as_secs_f64(),
        "peak_rss_mb": peak,
        "results": out,
    }))?;

    // Clean up (best effort).
    for db in dbs.iter().chain([&db_b, &db_c, &db_d]) {
        let _ = ch_exec(&ch, &format!("DROP DATABASE IF EXISTS {db}")).await;
    }
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
    Ok(())
}
