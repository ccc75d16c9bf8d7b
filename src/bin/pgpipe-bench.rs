//! Benchmarks for pgpipe.
//!
//! `pgpipe-bench control-plane [--quick] [--json FILE] [--dir DIR]` measures
//! the control plane (event log, replay, WatchPipe fan-out, GetPipe) and
//! prints one table in which every figure sits next to a baseline measured
//! in the same run. Data directories are temporary, under `--dir` (default:
//! the system temp dir), so the baselines run on the same file system.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use pgpipe::domain::projection::Projection;
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::{
    CdcProgress, CreatePipeRequest, DestinationConfig, Event, GetPipeRequest, PausePipeRequest,
    PipeConfig, PipeCreated, PipePaused, PipeResumed, PipeSettings, ResumePipeRequest,
    SnapshotProgress, SourceConfig, TableChangeCounts, TableConfig, WatchPipeRequest,
    event::Payload,
};
use pgpipe::server::{self, ServeConfig};
use pgpipe::store::EventLog;
use pgpipe::store::event_log::{decode_record, new_event};
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;
type Client = PipeServiceClient<Channel>;

#[derive(Parser)]
#[command(name = "pgpipe-bench", about = "pgpipe benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Event appends, replay, WatchPipe fan-out and GetPipe latency, each
    /// with a baseline measured in the same run.
    ControlPlane(CpArgs),
    /// Initial load (snapshot) of one Postgres table into ClickHouse, against
    /// source-read, destination-write, psql|curl and postgresql() baselines
    /// measured in the same run. Needs the dev env (dev/env up).
    InitialLoad(IlArgs),
    /// CDC under a steady write load at several rates: rows/s applied,
    /// commit-to-visible latency, slot lag, against the raw decode limit
    /// measured in the same run. Needs the dev env (dev/env up).
    Cdc(CdcArgs),
    /// (internal) One replay measurement, printed as JSON.
    #[command(hide = true)]
    ReplayProbe {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        kind: ProbeKind,
        #[arg(long)]
        expect: u64,
    },
    /// (internal) Writes the replay log, prints JSON.
    #[command(hide = true)]
    ReplayWrite {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        pipes: u64,
        #[arg(long, default_value_t = 5_000)]
        batch: u64,
    },
}

#[derive(Args)]
struct CpArgs {
    /// Smaller sizes and shorter runs (100k replay, 200 watchers, 5 rounds).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the temporary data directories go (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
struct Params {
    append_secs: f64,
    concurrent_appenders: usize,
    grpc_channels: usize,
    replay_events: u64,
    replay_pipes: u64,
    replay_batch: u64,
    replay_reps: usize,
    watchers: usize,
    watchers_per_channel: usize,
    watch_rounds: usize,
    get_callers: usize,
    get_secs: f64,
    background_appenders: usize,
}

impl Params {
    fn new(quick: bool) -> Self {
        Self {
            append_secs: if quick { 1.0 } else { 3.0 },
            concurrent_appenders: 64,
            grpc_channels: 8,
            replay_events: if quick { 100_000 } else { 1_000_000 },
            replay_pipes: 100,
            replay_batch: 5_000,
            replay_reps: 3,
            watchers: if quick { 200 } else { 1_000 },
            watchers_per_channel: 100,
            watch_rounds: if quick { 5 } else { 20 },
            get_callers: 16,
            get_secs: if quick { 2.0 } else { 5.0 },
            background_appenders: 16,
        }
    }
}

/// One line of the table (and of the JSON copy).
#[derive(Debug, Clone, Serialize)]
struct Row {
    section: String,
    name: String,
    baseline: bool,
    result: String,
    vs: String,
    values: BTreeMap<String, f64>,
}

fn row(section: &str, name: &str, baseline: bool, result: String, vs: String) -> Row {
    Row {
        section: section.into(),
        name: name.into(),
        baseline,
        result,
        vs,
        values: BTreeMap::new(),
    }
}

impl Row {
    fn val(mut self, k: &str, v: f64) -> Self {
        self.values.insert(k.into(), v);
        self
    }
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::ControlPlane(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(control_plane(args))
        }
        Cmd::InitialLoad(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(initial_load(args))
        }
        Cmd::Cdc(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(cdc(args))
        }
        Cmd::ReplayWrite {
            dir,
            events,
            pipes,
            batch,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(write_replay_log(&dir, events, pipes, batch))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::ReplayProbe { dir, kind, expect } => {
            let r = probe(&dir, kind, expect)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

// ------------------------------------------------------------------ helpers

fn progress(msg: impl std::fmt::Display) {
    let (rss, peak) = rss_mb();
    eprintln!("[bench] {msg}  (rss {rss:.0} MB, peak {peak:.0} MB)");
}

/// Current and peak resident set size of this process, in MB (Linux).
fn rss_mb() -> (f64, f64) {
    let kb = |k: &str| {
        proc_field("/proc/self/status", k)
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS"), kb("VmHWM"))
}

/// CPU seconds (user + system) this process has used so far (Linux).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Footprint of one scenario: peak RSS (reset at the start, Linux's
/// clear_refs) and CPU seconds of this process, which hosts the service.
struct Footprint<'p> {
    peers: &'p Peers,
    cpu0: CpuSplit,
}

impl Footprint<'_> {
    fn start(peers: &Peers) -> Footprint<'_> {
        // "5" resets the peak RSS (VmHWM) to the current RSS.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Footprint {
            peers,
            cpu0: peers.now(),
        }
    }

    /// (CPU seconds used by each side, peak RSS of this process in MB)
    /// since start.
    fn end(&self) -> (CpuSplit, f64) {
        (self.peers.now() - self.cpu0, rss_mb().1)
    }
}

/// (utime + stime, cutime + cstime) of a process, in seconds.
fn proc_cpu(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (t(11) + t(12), t(13) + t(14))
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The dev env's peers, to charge CPU time to each side: Postgres' postmaster
/// (its children's time lands in its cutime when they exit) and the
/// ClickHouse front's process.
struct Peers {
    postmaster: Option<u32>,
    chfront: Option<u32>,
}

/// CPU seconds used so far by pgpipe (this process), Postgres and ClickHouse.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    pgpipe: f64,
    pg: f64,
    ch: f64,
}

impl Peers {
    async fn find(pg: &tokio_postgres::Client, ch_url: &str) -> Peers {
        let backend = pg
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()
            .map(|r| r.get::<_, i32>(0) as u32);
        let postmaster = backend.and_then(proc_ppid);
        let port = url::Url::parse(ch_url).ok().and_then(|u| u.port());
        let chfront = port.and_then(|port| {
            all_pids().into_iter().find(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                args.iter().any(|a| a.ends_with(b"chfront.py"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"--port" && w[1] == port.to_string().as_bytes())
            })
        });
        Peers {
            postmaster,
            chfront,
        }
    }

    fn now(&self) -> CpuSplit {
        let pg = self.postmaster.map_or(0.0, |pm| {
            let (own, reaped) = proc_cpu(pm);
            let live: f64 = all_pids()
                .into_iter()
                .filter(|p| proc_ppid(*p) == Some(pm))
                .map(|p| proc_cpu(p).0)
                .sum();
            own + reaped + live
        });
        CpuSplit {
            pgpipe: cpu_secs(),
            pg,
            ch: self.chfront.map_or(0.0, |p| proc_cpu(p).0),
        }
    }
}

impl std::ops::Sub for CpuSplit {
    type Output = CpuSplit;
    fn sub(self, o: CpuSplit) -> CpuSplit {
        CpuSplit {
            pgpipe: self.pgpipe - o.pgpipe,
            pg: self.pg - o.pg,
            ch: self.ch - o.ch,
        }
    }
}

impl CpuSplit {
    fn show(&self) -> String {
        format!(
            "CPU s: pgpipe {:.2}, Postgres {:.2}, ClickHouse {:.2}",
            self.pgpipe, self.pg, self.ch
        )
    }
}

fn tempdir_in(base: &Path) -> Res<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("pgpipe-bench-")
        .tempdir_in(base)?)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(d: Duration) -> String {
    let m = ms(d);
    if m < 1.0 {
        format!("{:.0} µs", m * 1e3)
    } else if m < 10.0 {
        format!("{m:.2} ms")
    } else {
        format!("{m:.1} ms")
    }
}

/// A ratio, e.g. "0.031x", "2.4x".
fn x(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}x")
    } else if r < 10.0 {
        format!("{r:.2}x")
    } else {
        format!("{r:.0}x")
    }
}

fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Lat {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn lat(mut v: Vec<Duration>) -> Lat {
    v.sort_unstable();
    Lat {
        p50: pct(&v, 0.50),
        p99: pct(&v, 0.99),
        max: v.last().copied().unwrap_or_default(),
        n: v.len(),
    }
}

impl Lat {
    fn show(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.max)
        )
    }

    fn into_row(self, r: Row) -> Row {
        r.val("p50_ms", ms(self.p50))
            .val("p99_ms", ms(self.p99))
            .val("max_ms", ms(self.max))
            .val("samples", self.n as f64)
    }
}

/// An in-process pgpipe server (control plane only) over loopback.
struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Res<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(base: &Path) -> Res<Self> {
        Self::start_with(base, false).await
    }

    /// `engine`: also run the data plane (snapshots, CDC).
    async fn start_with(base: &Path, engine: bool) -> Res<Self> {
        let dir = tempdir_in(base)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cfg = ServeConfig {
            listen: addr,
            data_dir: dir.path().join("data"),
            token: None,
            engine,
            tls: None,
            metrics_listen: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_on(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| -> Box<dyn Error + Send + Sync> { Box::new(e) })
        });
        let url = format!("http://{addr}");
        let s = Self {
            url,
            stop: Some(stop),
            task,
            _dir: dir,
        };
        s.wait_serving().await?;
        Ok(s)
    }

    async fn wait_serving(&self) -> Res<()> {
        for _ in 0..800 {
            if let Ok(ch) = self.channel().await {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                let r = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "pgpipe.v1.PipeService".into(),
                    })
                    .await;
                if r.is_ok_and(|r| r.into_inner().status == 1) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("the in-process server never reported SERVING".into())
    }

    /// A new HTTP/2 connection.
    async fn channel(&self) -> Res<Channel> {
        Ok(Channel::from_shared(self.url.clone())?.connect().await?)
    }

    async fn channels(&self, n: usize) -> Res<Vec<Channel>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.channel().await?);
        }
        Ok(v)
    }

    async fn stop(mut self) -> Res<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

fn create_req(name: &str, tables: usize) -> CreatePipeRequest {
    CreatePipeRequest {
        name: name.into(),
        source: Some(SourceConfig {
            connection_string: "postgres://app:pw@127.0.0.1:5432/app".into(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "analytics".into(),
            user: "default".into(),
            password: "pw".into(),
            ca_cert: String::new(),
        }),
        tables: (0..tables)
            .map(|i| TableConfig {
                source_table: table_name(i),
                ..Default::default()
            })
            .collect(),
        settings: None,
        labels: Default::default(),
    }
}

const TABLES: [&str; 4] = [
    "public.orders",
    "public.customers",
    "public.order_items",
    "billing.invoices",
];

fn table_name(i: usize) -> String {
    TABLES[i % TABLES.len()].to_owned()
}

/// Pause/Resume toggling on one pipe: each call is one durable event.
async fn toggle(client: &mut Client, name: &str, pause: bool) -> Res<()> {
    if pause {
        client
            .pause_pipe(PausePipeRequest { name: name.into() })
            .await?;
    } else {
        client
            .resume_pipe(ResumePipeRequest { name: name.into() })
            .await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ machine

#[derive(Serialize)]
struct Machine {
    date_utc: String,
    cores: usize,
    cpu: String,
    mem_total: String,
    kernel: String,
    /// /proc/loadavg at start: other work on the machine skews the figures.
    loadavg_at_start: String,
    data_dir: String,
    data_fs: String,
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn fs_type(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} ({dev} on {mnt})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

fn machine(base: &Path) -> Machine {
    Machine {
        date_utc: utc_now(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        mem_total: proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into()),
        data_dir: base.display().to_string(),
        data_fs: fs_type(base),
    }
}

// ------------------------------------------------------------------ main flow

async fn control_plane(args: CpArgs) -> Res<()> {
    let p = Params::new(args.quick);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let m = machine(&base);
    let started = Instant::now();
    progress(format!(
        "control-plane{} on {} cores, data under {} [{}]",
        if args.quick { " --quick" } else { "" },
        m.cores,
        m.data_dir,
        m.data_fs
    ));

    let mut rows = Vec::new();
    rows.extend(bench_appends(&p, &base).await?);
    rows.extend(bench_replay(&p, &base).await?);
    rows.extend(bench_fanout(&p, &base).await?);
    rows.extend(bench_get(&p, &base).await?);

    let total = started.elapsed();
    let peak_rss_mb = rss_mb().1;
    print_table(&m, &p, args.quick, &rows, total, peak_rss_mb);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "benchmark": "control-plane",
            "quick": args.quick,
            "machine": m,
            "params": p,
            "elapsed_s": total.as_secs_f64(),
            "peak_rss_mb": peak_rss_mb,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        progress(format!("JSON written to {}", path.display()));
    }
    Ok(())
}

fn print_table(m: &Machine, p: &Params, quick: bool, rows: &[Row], total: Duration, peak: f64) {
    println!();
    print_header("control-plane", quick, m);
    println!(
        "data dirs: {} on {}  |  load average at start {}",
        m.data_dir, m.data_fs, m.loadavg_at_start
    );
    println!(
        "sizes: {} events replayed, {} watchers x {} rounds, {} GetPipe callers x {} s, appends {} s each",
        p.replay_events, p.watchers, p.watch_rounds, p.get_callers, p.get_secs, p.append_secs
    );
    print_grid(rows);
    println!(
        "total bench time {:.1} s, peak RSS {peak:.0} MB",
        total.as_secs_f64()
    );
}

/// The first line of a scenario's output: what ran, where.
fn print_header(scenario: &str, quick: bool, m: &Machine) {
    println!(
        "pgpipe-bench {scenario}{}  |  {}  |  {} cores ({})  |  mem {}  |  kernel {}",
        if quick { " --quick" } else { "" },
        m.date_utc,
        m.cores,
        m.cpu,
        m.mem_total,
        m.kernel
    );
}

/// The rows as one text table, sections separated by rules.
fn print_grid(rows: &[Row]) {
    let heads = ["#", "measurement", "result", "vs baseline (same run)"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.section.clone(),
                format!("{}{}", if r.baseline { "[base] " } else { "" }, r.name),
                r.result.clone(),
                r.vs.clone(),
            ]
        })
        .collect();
    let mut w = heads.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 4]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            let pad = w[i] - v.chars().count();
            s.push_str(&format!("| {v}{} ", " ".repeat(pad)));
        }
        s.push('|');
        s
    };
    let sep = {
        let mut s = String::new();
        for wi in w {
            s.push_str(&format!("|{}", "-".repeat(wi + 2)));
        }
        s.push('|');
        s
    };
    println!("{}", line(heads));
    println!("{sep}");
    let mut last_section = String::new();
    for c in &cells {
        let sec: String = c[0].chars().take_while(char::is_ascii_digit).collect();
        if !last_section.is_empty() && sec != last_section {
            println!("{sep}");
        }
        last_section = sec;
        println!("{}", line([&c[0], &c[1], &c[2], &c[3]]));
    }
}

// ------------------------------------------------------------------ 1. appends

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

async fn open_log(dir: &Path) -> Res<Arc<EventLog>> {
    let d = dir.to_owned();
    let log = tokio::task::spawn_blocking(move || EventLog::open(&d)).await??;
    log.replay(|_| {})?;
    Ok(log)
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

async fn bench_appends(p: &Params, base: &Path) -> Res<Vec<Row>> {
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

// ------------------------------------------------------------------ 2. replay

fn pipe_config(tables: usize) -> PipeConfig {
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
struct WriteResult {
    seconds: f64,
    bytes_on_disk: u64,
    peak_rss_mb: f64,
}

/// Writes `events` events over `pipes` streams through `EventLog::append`,
/// `batch` events per append, 4 streams at a time.
async fn write_replay_log(dir: &Path, events: u64, pipes: u64, batch: u64) -> Res<WriteResult> {
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
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("replay-write")
        .arg("--dir")
        .arg(dir)
        .args(["--events", &p.replay_events.to_string()])
        .args(["--pipes", &p.replay_pipes.to_string()])
        .args(["--batch", &p.replay_batch.to_string()])
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "replay-write failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
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
enum ProbeKind {
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
struct ProbeResult {
    open_s: f64,
    scan_s: f64,
    peak_rss_mb: f64,
}

fn probe(dir: &Path, kind: ProbeKind, expect: u64) -> Res<ProbeResult> {
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
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("replay-probe")
        .arg("--dir")
        .arg(dir)
        .args(["--kind", &kind_arg, "--expect", &expect.to_string()])
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "replay probe {kind_arg} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn bench_replay(p: &Params, base: &Path) -> Res<Vec<Row>> {
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

// ------------------------------------------------------------------ 3. fan-out

struct FanoutResult {
    per_delivery: Lat,
    last_watcher: Lat,
    rpc: Lat,
    connect: Duration,
}

async fn fanout(p: &Params, base: &Path, watchers: usize) -> Res<FanoutResult> {
    let server = Server::start(base).await?;
    let mut ctl = Client::new(server.channel().await?);
    let name = "fanout";
    ctl.create_pipe(create_req(name, 3)).await?;
    let nchan = watchers.div_ceil(p.watchers_per_channel);
    let chans = server.channels(nchan).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut client = Client::new(chans[i / p.watchers_per_channel].clone());
        let tx = tx.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client
                .watch_pipe(WatchPipeRequest {
                    name: name.into(),
                    after_cursor: None,
                })
                .await?
                .into_inner();
            s.message().await?;
            let _ = ready.send(());
            while let Some(m) = s.message().await? {
                let _ = tx.send((m.cursor, Instant::now()));
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await?
            .ok_or("a watcher failed to start")?;
    }
    let connect = t.elapsed();
    let mut per = Vec::new();
    let mut last = Vec::new();
    let mut rpc = Vec::new();
    for round in 0..p.watch_rounds {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        let pipe = if round % 2 == 0 {
            ctl.pause_pipe(PausePipeRequest { name: name.into() })
                .await?
                .into_inner()
                .pipe
        } else {
            ctl.resume_pipe(ResumePipeRequest { name: name.into() })
                .await?
                .into_inner()
                .pipe
        };
        rpc.push(t0.elapsed());
        let cursor = pipe.map(|p| p.cursor).ok_or("no pipe in response")?;
        let mut got = 0;
        let mut round_max = Duration::ZERO;
        while got < watchers {
            let (c, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await?
                .ok_or("watchers ended")?;
            if c != cursor {
                continue;
            }
            let d = at.saturating_duration_since(t0);
            round_max = round_max.max(d);
            per.push(d);
            got += 1;
        }
        last.push(round_max);
    }
    for t in &tasks {
        t.abort();
    }
    drop(chans);
    server.stop().await?;
    Ok(FanoutResult {
        per_delivery: lat(per),
        last_watcher: lat(last),
        rpc: lat(rpc),
        connect,
    })
}

async fn bench_fanout(p: &Params, base: &Path) -> Res<Vec<Row>> {
    progress("3. fan-out: 1 watcher");
    let one = fanout(p, base, 1).await?;
    progress(format!("3. fan-out: {} watchers", p.watchers));
    let many = fanout(p, base, p.watchers).await?;
    let n = p.watchers;
    let chans = n.div_ceil(p.watchers_per_channel);
    let rounds = p.watch_rounds;
    let vs = format!(
        "p50 {}, max {} 1 watcher",
        x(ms(many.per_delivery.p50) / ms(one.per_delivery.p50)),
        x(ms(many.per_delivery.max) / ms(one.per_delivery.max))
    );
    let one_res = one.per_delivery.show();
    let one_rpc = one.rpc.show();
    let many_res = many.per_delivery.show();
    let last_res = many.last_watcher.show();
    let last_vs = format!("PausePipe RPC alone: p50 {}", fmt_ms(many.rpc.p50));
    Ok(vec![
        one.per_delivery.into_row(row(
            "3",
            &format!("WatchPipe, 1 watcher: PausePipe sent -> event received ({rounds} rounds)"),
            true,
            one_res,
            String::new(),
        )),
        one.rpc.into_row(row(
            "3",
            "  same run: the PausePipe RPC round trip alone",
            true,
            one_rpc,
            String::new(),
        )),
        many.per_delivery
            .into_row(row(
                "3",
                &format!(
                    "WatchPipe, {n} watchers ({chans} conns x {}): each delivery",
                    p.watchers_per_channel
                ),
                false,
                many_res,
                vs,
            ))
            .val("connect_all_ms", ms(many.connect)),
        many.last_watcher.into_row(row(
            "3",
            &format!("  same run: until the last of {n} watchers has it"),
            false,
            last_res,
            last_vs,
        )),
    ])
}

// ------------------------------------------------------------------ 4. GetPipe

struct GetResult {
    lat: Lat,
    rps: f64,
    bg_rate: f64,
}

async fn get_load(p: &Params, base: &Path, background: bool) -> Res<GetResult> {
    let server = Server::start(base).await?;
    let mut ctl = Client::new(server.channel().await?);
    ctl.create_pipe(create_req("target", 3)).await?;
    for b in 0..p.background_appenders {
        ctl.create_pipe(create_req(&format!("bg-{b:02}"), 3))
            .await?;
    }
    let chans = server.channels(p.get_callers.div_ceil(4)).await?;
    let bg_chan = server.channel().await?;
    let warm = Instant::now() + Duration::from_millis(300);
    let deadline = warm + Duration::from_secs_f64(p.get_secs);
    let bg_tasks: Vec<_> = if background {
        (0..p.background_appenders)
            .map(|b| {
                let mut c = Client::new(bg_chan.clone());
                tokio::spawn(async move {
                    let name = format!("bg-{b:02}");
                    let mut n = 0u64;
                    let mut pause = true;
                    while Instant::now() < deadline {
                        toggle(&mut c, &name, pause).await?;
                        pause = !pause;
                        if Instant::now() >= warm {
                            n += 1;
                        }
                    }
                    Ok::<_, Box<dyn Error + Send + Sync>>(n)
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut callers = Vec::new();
    for i in 0..p.get_callers {
        let mut c = Client::new(chans[i / 4].clone());
        callers.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                c.get_pipe(GetPipeRequest {
                    name: "target".into(),
                    id: String::new(),
                })
                .await?;
                if t >= warm {
                    lats.push(t.elapsed());
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(lats)
        }));
    }
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await??);
    }
    let mut bg = 0;
    for t in bg_tasks {
        bg += t.await??;
    }
    drop(chans);
    drop(bg_chan);
    server.stop().await?;
    Ok(GetResult {
        rps: all.len() as f64 / p.get_secs,
        bg_rate: bg as f64 / p.get_secs,
        lat: lat(all),
    })
}

async fn bench_get(p: &Params, base: &Path) -> Res<Vec<Row>> {
    progress("4. GetPipe: no background appends");
    let idle = get_load(p, base, false).await?;
    progress(format!(
        "4. GetPipe: with {} background Pause/Resume callers",
        p.background_appenders
    ));
    let busy = get_load(p, base, true).await?;
    let c = p.get_callers;
    let vs = format!(
        "p50 {}, p99 {}; {:.0}% of idle RPS",
        x(ms(busy.lat.p50) / ms(idle.lat.p50)),
        x(ms(busy.lat.p99) / ms(idle.lat.p99)),
        100.0 * busy.rps / idle.rps
    );
    let idle_res = format!("{}  ({} RPS)", idle.lat.show(), fmt_rate(idle.rps));
    let busy_res = format!(
        "{}  ({} RPS; bg {} appends/s)",
        busy.lat.show(),
        fmt_rate(busy.rps),
        fmt_rate(busy.bg_rate)
    );
    Ok(vec![
        idle.lat
            .into_row(row(
                "4",
                &format!("GetPipe, {c} concurrent callers, no appends"),
                true,
                idle_res,
                String::new(),
            ))
            .val("rps", idle.rps),
        busy.lat
            .into_row(row(
                "4",
                &format!(
                    "GetPipe, {c} callers + {} gRPC appenders in background",
                    p.background_appenders
                ),
                false,
                busy_res,
                vs,
            ))
            .val("rps", busy.rps)
            .val("bg_appends_per_s", busy.bg_rate),
    ])
}

// ------------------------------------------------------------------ initial load

#[derive(Args)]
struct IlArgs {
    /// Rows in the source table (default 5,000,000; 200,000 with --quick).
    #[arg(long)]
    rows: Option<u64>,
    /// Snapshot parallelism values to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    parallelism: Vec<u32>,
    /// 200,000 rows instead of 5,000,000.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the temporary data directories go (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only pgpipe's loads, no baselines and no table (for profiling).
    #[arg(long)]
    pgpipe_only: bool,
}

/// Source columns, as selected on both sides.
const IL_COLS: &str = "id, amount, note, at, doc, n";

fn dev_env() -> Res<(String, String)> {
    match (
        std::env::var("PGPIPE_TEST_PG_URL"),
        std::env::var("PGPIPE_TEST_CH_URL"),
    ) {
        (Ok(pg), Ok(ch)) if !pg.is_empty() && !ch.is_empty() => Ok((pg, ch)),
        _ => Err(
            "PGPIPE_TEST_PG_URL / PGPIPE_TEST_CH_URL unset: run dev/env up and source .dev/env.sh"
                .into(),
        ),
    }
}

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn pg_connect(url: &str) -> Res<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Compressed like pgpipe's own client would be for this URL (LZ4 only
/// across a network), so baseline (b) sends what pgpipe sends.
fn ch_client(url: &str) -> clickhouse::Client {
    let loopback = url::Url::parse(url).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    });
    let c = clickhouse::Client::default().with_url(url);
    if loopback {
        c.with_compression(clickhouse::Compression::None)
    } else {
        c
    }
}

async fn ch_exec(ch: &clickhouse::Client, sql: &str) -> Res<()> {
    ch.query(sql).execute().await?;
    Ok(())
}

async fn ch_count(ch: &clickhouse::Client, table: &str) -> Res<u64> {
    Ok(ch
        .query(&format!("SELECT toUInt64(count()) FROM {table}"))
        .fetch_one::<u64>()
        .await?)
}

/// Waits (up to a minute) until ClickHouse has no merge running, so that
/// one measurement's background merges do not slow the next one down.
async fn settle(ch: &clickhouse::Client) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let running = ch
            .query("SELECT toUInt64(count()) FROM system.merges")
            .fetch_one::<u64>()
            .await?;
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

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

/// One pgpipe initial load: in-process server (engine on), CreatePipe until
/// snapshot_done (or RUNNING), then the ClickHouse row count is checked.
#[allow(clippy::too_many_arguments)]
async fn pgpipe_load(
    base: &Path,
    pg_url: &str,
    ch_url: &str,
    schema: &str,
    rows: u64,
    par: u32,
    resync: bool,
    peers: &Peers,
) -> Res<PipeRun> {
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

async fn get_pipe(c: &mut Client, name: &str) -> Res<pgpipe::proto::Pipe> {
    Ok(c.get_pipe(GetPipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .pipe
    .ok_or("GetPipe returned no pipe")?)
}

/// Waits until `name` is RUNNING with CDC started (and, if `not_id` is set,
/// is a different incarnation than `not_id`); returns its id.
async fn wait_cdc(c: &mut Client, name: &str, not_id: Option<&str>) -> Res<String> {
    let deadline = Instant::now() + Duration::from_secs(3_600);
    loop {
        let p = get_pipe(c, name).await?;
        let st = pgpipe::proto::PipeStatus::try_from(p.status)
            .unwrap_or(pgpipe::proto::PipeStatus::Unspecified);
        if st == pgpipe::proto::PipeStatus::Failed {
            return Err(format!("pipe {name} failed: {} ({})", p.error, p.failed_step).into());
        }
        if st == pgpipe::proto::PipeStatus::Running
            && p.cdc_started
            && not_id.is_none_or(|old| old != p.id)
        {
            return Ok(p.id);
        }
        if Instant::now() > deadline {
            return Err(format!("pipe {name}: not running after an hour").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
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

fn goal(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

async fn initial_load(args: IlArgs) -> Res<()> {
    let (pg_url, ch_url) = dev_env()?;
    let rows = args
        .rows
        .unwrap_or(if args.quick { 200_000 } else { 5_000_000 });
    if rows == 0 || args.parallelism.is_empty() || args.parallelism.contains(&0) {
        return Err("--rows and every --parallelism must be > 0".into());
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let m = machine(&base);
    let started = Instant::now();
    progress(format!(
        "initial-load of {rows} rows, parallelism {:?}, on {} cores",
        args.parallelism, m.cores
    ));

    let pg = pg_connect(&pg_url).await?;
    let ch = ch_client(&ch_url);
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

    let peers = Peers::find(&pg, &ch_url).await;
    let mut feet: Vec<(String, CpuSplit, f64, f64)> = Vec::new();
    // A baseline's CPU split (no RSS: pgpipe is not running).
    let base_cpu = |feet: &mut Vec<_>, name: &str, c0: CpuSplit, l: &Load| {
        feet.push((name.to_string(), peers.now() - c0, f64::NAN, l.secs));
    };

    // (a) warm once (untimed), then measure.
    copy_out_binary(&pg_url, &schema).await?;
    settle(&ch).await?;
    let c0 = peers.now();
    let (a, copy_bytes) = copy_out_binary(&pg_url, &schema).await?;
    base_cpu(&mut feet, "(a) COPY binary", c0, &a);
    progress(format!("(a) COPY binary: {:.2} s", a.secs));

    let mut runs: Vec<(u32, Load)> = Vec::new();
    let mut load_steps: Vec<Vec<(&'static str, f64)>> = Vec::new();
    let mut dbs = Vec::new();
    let mut resync = None;
    let last = args.parallelism.len() - 1;
    for (i, &par) in args.parallelism.iter().enumerate() {
        // The last (usually the widest) load is resynced too.
        settle(&ch).await?;
        let r = pgpipe_load(
            &base,
            &pg_url,
            &ch_url,
            &schema,
            rows,
            par,
            i == last,
            &peers,
        )
        .await?;
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
    let tmp = tempdir_in(&base)?;
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
    let db_b = unique_name("bench_il_b");
    like_pgpipe(&ch, &dbs[0], &db_b, "t").await?;
    settle(&ch).await?;
    let c0 = peers.now();
    let b = post_rowbinary(&ch_url, &file, &db_b, rows).await?;
    base_cpu(&mut feet, "(b) RowBinary POST", c0, &b);
    progress(format!("(b) RowBinary POST: {:.2} s", b.secs));

    let db_c = unique_name("bench_il_c");
    like_pgpipe(&ch, &dbs[0], &db_c, "t").await?;
    settle(&ch).await?;
    let c0 = peers.now();
    let c = psql_curl(&pg_url, &ch_url, &schema, &db_c, rows).await?;
    base_cpu(&mut feet, "(c) psql | curl", c0, &c);
    progress(format!("(c) psql | curl: {:.2} s", c.secs));

    let db_d = unique_name("bench_il_d");
    like_pgpipe(&ch, &dbs[0], &db_d, "t").await?;
    settle(&ch).await?;
    let c0 = peers.now();
    let d = ch_pull(&pg_url, &ch_url, &schema, &db_d, rows).await?;
    base_cpu(&mut feet, "(d) postgresql()", c0, &d);
    progress(format!("(d) postgresql(): {:.2} s", d.secs));

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
                    100.0 * (cpu.pgpipe + cpu.pg + cpu.ch) / (secs * m.cores as f64),
                    m.cores
                ),
            )
            .val("peak_rss_mb", *peak)
            .val("cpu_pgpipe_s", cpu.pgpipe)
            .val("cpu_postgres_s", cpu.pg)
            .val("cpu_clickhouse_s", cpu.ch)
            .val("pgpipe_cpu_s_per_million_rows", cpu.pgpipe * per_m),
        );
    }

    let total = started.elapsed();
    let peak = rss_mb().1;
    println!();
    print_header("initial-load", args.quick, &m);
    println!(
        "source {schema}.t: {rows} rows (id bigint PK, numeric(12,2), text ~96 chars, timestamptz, jsonb, int); \
         load average at start {}",
        m.loadavg_at_start
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

    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "benchmark": "initial-load",
            "quick": args.quick,
            "machine": m,
            "rows": rows,
            "parallelism": args.parallelism,
            "relation_bytes": rel_bytes,
            "copy_binary_bytes": copy_bytes,
            "rowbinary_bytes": rb_bytes,
            "elapsed_s": total.as_secs_f64(),
            "peak_rss_mb": peak,
            "results": out,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        progress(format!("JSON written to {}", path.display()));
    }

    // Clean up (best effort).
    for db in dbs.iter().chain([&db_b, &db_c, &db_d]) {
        let _ = ch_exec(&ch, &format!("DROP DATABASE IF EXISTS {db}")).await;
    }
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
    Ok(())
}

// ---------------------------------------------------------------------- cdc

#[derive(Args)]
struct CdcArgs {
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
    /// Two rates (2000, unthrottled) of 3 s each.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the temporary data directory goes (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
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
    use std::sync::atomic::Ordering;
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
        let id: i64 = pg
            .query_one(
                &format!("INSERT INTO {schema}.probe DEFAULT VALUES RETURNING id"),
                &[],
            )
            .await?
            .get(0);
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

#[allow(clippy::too_many_arguments)]
async fn cdc_rate(
    pg_url: &str,
    ch: &clickhouse::Client,
    schema: &str,
    db: &str,
    slot: &str,
    rate: u64,
    args: &CdcArgs,
    secs: f64,
    peers: &Peers,
) -> Res<CdcRun> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pg = pg_connect(pg_url).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let fp = Footprint::start(peers);
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..args.writers {
        writers.push(tokio::spawn(cdc_writer(
            pg_url.to_string(),
            schema.to_string(),
            rate as f64 / args.writers as f64,
            (rate + 1) * 1000 + w as u64,
            Arc::clone(&stop),
        )));
    }
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
            stop.store(true, Ordering::Relaxed);
            for w in writers.drain(..) {
                changed += w.await??;
            }
            // A probe committed after every write: when it is visible,
            // everything before it is.
            let last: i64 = pg
                .query_one(
                    &format!("INSERT INTO {schema}.probe DEFAULT VALUES RETURNING id"),
                    &[],
                )
                .await?
                .get(0);
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

/// The decode limit: the same changes read raw from a slot of its own with
/// `pg_logical_slot_get_binary_changes` (pgoutput), in changes per second.
async fn raw_decode(pg: &tokio_postgres::Client, slot: &str, publication: &str) -> Res<(f64, u64)> {
    let start = Instant::now();
    let msgs: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await?
        .get(0);
    Ok((start.elapsed().as_secs_f64(), msgs as u64))
}

/// pgpipe's CDC apply limit: a backlog written while the pipe is paused
/// (unthrottled writers for `secs`), then drained after ResumePipe; the same
/// changes are then decoded raw from a slot created just before them.
/// Returns (changes, pgpipe drain secs, raw decode secs, pgoutput messages,
/// CPU split and peak RSS of the drain).
#[allow(clippy::too_many_arguments)]
async fn cdc_backlog(
    c: &mut Client,
    name: &str,
    pg_url: &str,
    ch: &clickhouse::Client,
    schema: &str,
    db: &str,
    writers: usize,
    secs: f64,
    peers: &Peers,
) -> Res<(u64, f64, f64, u64, CpuSplit, f64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pg = pg_connect(pg_url).await?;
    toggle(c, name, true).await?;
    loop {
        let p = get_pipe(c, name).await?;
        if p.status == pgpipe::proto::PipeStatus::Paused as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raw_slot = format!("{schema}_raw");
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&raw_slot],
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            tokio::spawn(cdc_writer(
                pg_url.to_string(),
                schema.to_string(),
                0.0,
                7_000 + w as u64,
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut changed = 0;
    for t in tasks {
        changed += t.await??;
    }
    let last: i64 = pg
        .query_one(
            &format!("INSERT INTO {schema}.probe DEFAULT VALUES RETURNING id"),
            &[],
        )
        .await?
        .get(0);
    settle(ch).await?;
    let fp = Footprint::start(peers);
    let start = Instant::now();
    toggle(c, name, false).await?;
    let deadline = start + Duration::from_secs(600);
    loop {
        let top: i64 = ch
            .query(&format!("SELECT toInt64(max(id)) FROM {db}.probe"))
            .fetch_one::<i64>()
            .await?;
        if top >= last {
            break;
        }
        if Instant::now() > deadline {
            return Err("CDC backlog not drained after 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = start.elapsed().as_secs_f64();
    let (cpu, peak) = fp.end();
    let (raw_secs, msgs) = raw_decode(&pg, &raw_slot, &format!("{schema}_raw")).await?;
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&raw_slot])
        .await?;
    Ok((changed, drain, raw_secs, msgs, cpu, peak))
}

async fn cdc(args: CdcArgs) -> Res<()> {
    let (pg_url, ch_url) = dev_env()?;
    let rates = if args.quick {
        vec![2000, 0]
    } else {
        args.rates.clone()
    };
    let secs = if args.quick { 3.0 } else { args.secs };
    if rates.is_empty() || secs <= 0.0 || args.writers == 0 {
        return Err("--rates, --secs and --writers must be set and positive".into());
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let m = machine(&base);
    let started = Instant::now();
    progress(format!(
        "cdc: rates {rates:?} rows/s, {secs} s each, {} writers, on {} cores",
        args.writers, m.cores
    ));
    let pg = pg_connect(&pg_url).await?;
    let ch = ch_client(&ch_url);
    let peers = Peers::find(&pg, &ch_url).await;
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
    let srv = Server::start_with(&base, true).await?;
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
            connection_string: pg_url.clone(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: ch_url.clone(),
            database: db.clone(),
            user: "default".into(),
            password: String::new(),
            ca_cert: String::new(),
        }),
        tables: vec![table("t"), table("probe")],
        settings: Some(PipeSettings {
            snapshot_parallelism: 2,
            snapshot_rows_per_partition: 0,
            cdc_batch_size: 10_000,
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
    for &rate in &rates {
        settle(&ch).await?;
        let r = cdc_rate(&pg_url, &ch, &schema, &db, &slot, rate, &args, secs, &peers).await?;
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
    let (bl_rows, bl_drain, raw_secs, raw_msgs, bl_cpu, bl_peak) = cdc_backlog(
        &mut c,
        &name,
        &pg_url,
        &ch,
        &schema,
        &db,
        args.writers,
        secs,
        &peers,
    )
    .await?;
    progress(format!(
        "backlog of {bl_rows} changes: pgpipe drained it in {bl_drain:.2} s, raw decode {raw_secs:.2} s"
    ));

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

    let total = started.elapsed();
    let peak = rss_mb().1;
    println!();
    print_header("cdc", args.quick, &m);
    println!(
        "{} writers, transactions of 6 inserts + 3 updates + 1 delete, {secs} s per rate; \
         cdc_sync_interval_ms {}; latency = probe row commit in Postgres -> visible in ClickHouse (10 ms polls)",
        args.writers, args.sync_ms
    );
    print_grid(&out);
    println!(
        "total bench time {:.1} s, peak RSS {peak:.0} MB (includes the in-process server)",
        total.as_secs_f64()
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "benchmark": "cdc",
            "quick": args.quick,
            "machine": m,
            "rates": rates,
            "secs": secs,
            "writers": args.writers,
            "sync_ms": args.sync_ms,
            "elapsed_s": total.as_secs_f64(),
            "results": out,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        progress(format!("JSON written to {}", path.display()));
    }

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
