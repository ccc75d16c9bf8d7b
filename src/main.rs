//! The `pgpipe` binary: `pgpipe serve` runs the service, `pgpipe repair`
//! mends a torn log, and the other subcommands are the gRPC client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use pgpipe::cli;
use pgpipe::server::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "pgpipe",
    version,
    about = "Replicate PostgreSQL tables into ClickHouse"
)]
struct Args {
    #[command(flatten)]
    client: cli::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Truncate a corrupt event log to its last valid event (the service
    /// refuses to start on a corrupt log rather than drop events silently).
    Repair {
        #[arg(long, env = "PGPIPE_DATA_DIR", default_value = "pgpipe-data")]
        data_dir: PathBuf,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the gRPC server.
    #[arg(long, env = "PGPIPE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the event log (sled).
    #[arg(long, env = "PGPIPE_DATA_DIR", default_value = "pgpipe-data")]
    data_dir: PathBuf,
    /// Log filter, e.g. `info` or `pgpipe=debug`.
    #[arg(long, env = "PGPIPE_LOG", default_value = "info")]
    log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "PGPIPE_LOG_JSON")]
    log_json: bool,
    /// Require `authorization: Bearer <token>` on every RPC but health.
    /// Prefer the environment variable: arguments are visible in `ps`.
    #[arg(long, env = "PGPIPE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve the control plane only (events, API, watch) without moving
    /// data or connecting to any database.
    #[arg(long, env = "PGPIPE_CONTROL_PLANE_ONLY")]
    control_plane_only: bool,
    /// Serve gRPC over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(
        long,
        env = "PGPIPE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "PGPIPE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
    /// address. Off unless given.
    #[arg(long, env = "PGPIPE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

fn init_tracing(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    pgpipe::alloc::tune_malloc();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("pgpipe: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    pgpipe::tls::install_default_provider();
    let args = Args::parse();
    match args.command {
        Command::Client(cmd) => cli::run(args.client, cmd).await,
        Command::Serve(a) => {
            init_tracing(&a.log_level, a.log_json);
            let cfg = ServeConfig {
                listen: a.listen,
                data_dir: a.data_dir,
                token: a.token.filter(|t| !t.is_empty()),
                engine: !a.control_plane_only,
                tls: match (a.tls_cert, a.tls_key) {
                    (Some(cert), Some(key)) => Some(server::TlsFiles { cert, key }),
                    _ => None,
                },
                metrics_listen: a.metrics_listen,
            };
            match server::serve(cfg, server::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "pgpipe stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Repair { data_dir } => match pgpipe::store::event_log::repair(&data_dir) {
            Ok(0) => {
                println!(
                    "the event log in {} is valid; nothing cut",
                    data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Ok(n) => {
                println!(
                    "cut {n} invalid event record(s) from the tail of the log in {}",
                    data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
