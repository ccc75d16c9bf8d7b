//! Benchmarks for pgpipe.
//!
//! `pgpipe-bench control-plane [--quick] [--json FILE] [--dir DIR]` measures
//! the control plane (event log, replay, WatchPipe fan-out, GetPipe) and
//! prints one table in which every figure sits next to a baseline measured
//! in the same run. Data directories are temporary, under `--dir` (default:
//! the system temp dir), so the baselines run on the same file system.
//!
//! One module per scenario (`control_plane/`, `initial_load`, `cdc`); what
//! they share is in `machine` (the host and this process's footprint),
//! `peers` (the dev env's Postgres and ClickHouse), `pgpipe_server` (an
//! in-process server and client calls) and `report` (figures and tables).

mod cdc;
mod control_plane;
mod initial_load;
mod machine;
mod peers;
mod pgpipe_server;
mod report;

use std::error::Error;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use tonic::transport::Channel;

use crate::cdc::{CdcArgs, cdc};
use crate::control_plane::replay::{ProbeKind, probe, write_replay_log};
use crate::control_plane::{CpArgs, control_plane};
use crate::initial_load::{IlArgs, initial_load};

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

/// The multi-threaded runtime every scenario runs on (the service's kind).
fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> Res<()> {
    // The allocator as the service has it (RSS figures).
    pgpipe::alloc::tune_malloc();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::ControlPlane(args) => runtime()?.block_on(control_plane(args)),
        Cmd::InitialLoad(args) => runtime()?.block_on(initial_load(args)),
        Cmd::Cdc(args) => runtime()?.block_on(cdc(args)),
        Cmd::ReplayWrite {
            dir,
            events,
            pipes,
            batch,
        } => {
            let r = runtime()?.block_on(write_replay_log(&dir, events, pipes, batch))?;
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
