//! The control-plane scenario: event appends, replay, WatchPipe fan-out
//! and GetPipe latency, each next to a baseline measured in the same run.

pub(crate) mod appends;
pub(crate) mod fanout;
pub(crate) mod get;
pub(crate) mod replay;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use pgpipe::proto::{CreatePipeRequest, DestinationConfig, SourceConfig, TableConfig};
use serde::Serialize;

use crate::control_plane::appends::bench_appends;
use crate::control_plane::fanout::bench_fanout;
use crate::control_plane::get::bench_get;
use crate::control_plane::replay::bench_replay;
use crate::machine::{Machine, rss_mb};
use crate::pgpipe_server::Server;
use crate::report::{Output, Row, print_grid, print_header, progress};
use crate::{Client, Res};

#[derive(Args)]
pub(crate) struct CpArgs {
    /// Smaller sizes and shorter runs (100k replay, 200 watchers, 5 rounds).
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    out: Output,
}

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Params {
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

/// A fresh server under `base`, a control client of it, and the pipe `name`
/// (three tables) created through that client.
pub(crate) async fn server_with_pipe(base: &Path, name: &str) -> Res<(Server, Client)> {
    let server = Server::start(base).await?;
    let mut ctl = Client::new(server.channel().await?);
    ctl.create_pipe(create_req(name, 3)).await?;
    Ok((server, ctl))
}

pub(crate) fn create_req(name: &str, tables: usize) -> CreatePipeRequest {
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

pub(crate) fn table_name(i: usize) -> String {
    TABLES[i % TABLES.len()].to_owned()
}

pub(crate) async fn control_plane(args: CpArgs) -> Res<()> {
    let p = Params::new(args.quick);
    let (base, m) = args.out.base()?;
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
    args.out.write_json(serde_json::json!({
        "benchmark": "control-plane",
        "quick": args.quick,
        "machine": m,
        "params": p,
        "elapsed_s": total.as_secs_f64(),
        "peak_rss_mb": peak_rss_mb,
        "rows": rows,
    }))?;
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
