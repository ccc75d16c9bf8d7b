//! Human command-line client for the pgpipe gRPC API.
//!
//! [`ClientOpts`] (server address, token) and [`ClientCommand`] (the
//! subcommands) are clap fragments for the binary to embed; [`run`] executes
//! one command and returns the process exit code:
//!
//! * 0: success (for `watch`: the server ended the stream because the pipe
//!   was deleted, or `--until-running` saw the pipe reach RUNNING);
//! * 1: the watched pipe failed for good (a PipeFailed event with
//!   `retrying == false`) under `--until-running` / `--wait`;
//! * 1 for `validate`: the request has problems (they are listed);
//! * 2: any other error (gRPC errors print as `error: <CODE>: <message>`).
//!
//! This file holds what every command shares (options, errors, `Out`,
//! connecting) and `execute`, a dispatch to one file per command group:
//! `create` (create, validate), `read` (list, get), `lifecycle` (delete,
//! pause, resume, resync), `tables` (tables add/remove), `labels`, `watch`
//! (watch, events) and `history` (history, throughput, load-summary).
//! `format`, `json` and `spec` render and parse for all of them.

mod create;
mod format;
mod history;
mod json;
mod labels;
mod lifecycle;
mod read;
mod spec;
mod tables;
mod watch;

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::Pipe;
use crate::proto::pipe_service_client::PipeServiceClient;
use format::code_name;

// Each command's arguments live with the command; the dispatch and the
// unit tests name them from here.
pub(crate) use create::CreateArgs;
#[cfg(test)]
use labels::LabelChange;
pub(crate) use labels::LabelsArgs;
pub(crate) use lifecycle::{DeleteArgs, NameArgs, ResyncArgs};
pub(crate) use read::{GetArgs, ListArgs};
pub(crate) use tables::TablesCommand;
pub(crate) use watch::{EventsArgs, WatchArgs};

/// Exit code when the watched pipe failed (and is not retrying).
pub(crate) const EXIT_PIPE_FAILED: u8 = 1;
/// Exit code of `validate` when it found problems.
pub(crate) const EXIT_PROBLEMS: u8 = 1;
/// Exit code for every other error.
pub(crate) const EXIT_ERROR: u8 = 2;

const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Where the server is and how to authenticate. Shared by all client
/// commands (the options are global: they may follow the subcommand).
#[derive(Args, Clone)]
pub struct ClientOpts {
    /// pgpipe server address (gRPC endpoint); `http://` is assumed when no
    /// scheme is given.
    #[arg(
        long,
        env = "PGPIPE_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL",
        global = true,
        help_heading = "Connection"
    )]
    pub server: String,

    /// Bearer token, sent as `authorization: Bearer <token>` on every call.
    /// Prefer the environment variable: command-line arguments are visible
    /// to other users of the machine (`ps`).
    #[arg(
        long,
        env = "PGPIPE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,

    /// PEM file of the CA that signed the server's TLS certificate (for an
    /// `https://` server; without it the system's roots are trusted).
    #[arg(
        long,
        env = "PGPIPE_CA_CERT",
        value_name = "FILE",
        global = true,
        help_heading = "Connection"
    )]
    pub ca_cert: Option<PathBuf>,
}

impl fmt::Debug for ClientOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOpts")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// Client commands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create a pipe replicating PostgreSQL tables into ClickHouse.
    Create(Box<CreateArgs>),
    /// Check a pipe as `create` would, creating nothing: lists every
    /// problem (exit 1) or says ok (exit 0). Takes the same options.
    Validate(Box<CreateArgs>),
    /// List pipes.
    List(ListArgs),
    /// Show one pipe: status, configuration, per-table statistics, steps.
    Get(GetArgs),
    /// Delete a pipe (stops replication; ClickHouse tables are kept unless
    /// --drop-tables).
    Delete(DeleteArgs),
    /// Pause a pipe's replication (the source keeps WAL for it meanwhile).
    Pause(NameArgs),
    /// Resume a paused pipe.
    Resume(NameArgs),
    /// Rebuild a pipe from scratch under the same name, optionally with new
    /// per-table ORDER BY / destination.
    Resync(ResyncArgs),
    /// Follow one pipe live: status line, per-table progress bars and one
    /// line per lifecycle event.
    Watch(WatchArgs),
    /// Follow the global event log (all pipes, or one).
    Events(EventsArgs),
    /// Set (`key=value`) and remove (`key-`) labels of a pipe.
    Labels(LabelsArgs),
    /// A pipe name's past from the event log: errors, CDC batches (LSN
    /// range, rows, duration, per-table counts), initial-load progress.
    History(history::HistoryArgs),
    /// A pipe name's CDC rows and slot lag per time bucket (default a
    /// minute).
    Throughput(history::ThroughputArgs),
    /// A pipe name's initial loads per table: partitions, rows, average
    /// partition time, duration.
    LoadSummary(history::LoadSummaryArgs),
    /// Add tables to or remove tables from a running pipe (UpdatePipe).
    #[command(subcommand)]
    Tables(TablesCommand),
}

/// `key=value` (the value may contain `=`; the server checks the key).
pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Errors of the client; all exit with [`EXIT_ERROR`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// An error status from the server (or the transport under it).
    #[error("{}", rpc_message(.0))]
    Rpc(Box<tonic::Status>),
    #[error("invalid server address {server:?}: {reason}")]
    InvalidServer { server: String, reason: String },
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("invalid token: it must be visible ASCII characters")]
    InvalidToken,
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
    #[error("the server's {0} response has no pipe")]
    MissingPipe(&'static str),
    #[error("{0}")]
    Watch(String),
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(Box::new(status))
    }
}

fn rpc_message(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        code_name(status.code()).to_owned()
    } else {
        format!("{}: {}", code_name(status.code()), status.message())
    }
}

/// `error: source: source's source ...`, skipping repeated messages.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Standard output (or a buffer in tests), one line at a time.
pub(crate) struct Out {
    w: Box<dyn Write + Send>,
}

impl Out {
    fn stdout() -> Self {
        Self {
            w: Box::new(io::stdout()),
        }
    }

    pub(crate) fn line(&mut self, s: &str) -> Result<(), CliError> {
        writeln!(self.w, "{s}")
            .and_then(|()| self.w.flush())
            .map_err(CliError::Output)
    }

    /// Writes `s` as is (a block that already ends with a newline).
    fn block(&mut self, s: &str) -> Result<(), CliError> {
        self.w
            .write_all(s.as_bytes())
            .and_then(|()| self.w.flush())
            .map_err(CliError::Output)
    }

    pub(crate) fn json_line(&mut self, v: &Value) -> Result<(), CliError> {
        self.line(&v.to_string())
    }

    fn json_pretty(&mut self, v: &Value) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        self.line(&text)
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub(crate) struct AuthInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl AuthInterceptor {
    fn new(token: Option<&str>) -> Result<Self, CliError> {
        let header = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| CliError::InvalidToken)?;
                // Keeps it out of HPACK tables (and of Debug output).
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self { header })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type Client = PipeServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// `127.0.0.1:50051` -> `http://127.0.0.1:50051`.
fn normalize_server(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

/// TLS settings for an `https://` server: its certificate must chain to the
/// `--ca-cert` file, or to a system root without one. A CA file with an
/// `http://` server is refused rather than ignored, which would send the
/// token in the clear.
fn client_tls(
    server: &str,
    ca_cert: Option<&std::path::Path>,
) -> Result<Option<ClientTlsConfig>, CliError> {
    let https = server.starts_with("https://");
    match (https, ca_cert) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(CliError::Usage(format!(
            "--ca-cert is given but the server address {server} is not https://; use https://HOST:PORT"
        ))),
        (true, None) => Ok(Some(ClientTlsConfig::new().with_native_roots())),
        (true, Some(path)) => {
            let pem = std::fs::read(path).map_err(|source| CliError::Io {
                what: format!("reading the CA certificate file {}", path.display()),
                source,
            })?;
            Ok(Some(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            ))
        }
    }
}

async fn connect(opts: &ClientOpts) -> Result<Client, CliError> {
    crate::tls::install_default_provider();
    let interceptor = AuthInterceptor::new(opts.token.as_deref())?;
    let server = normalize_server(&opts.server);
    let mut endpoint =
        Endpoint::from_shared(server.clone()).map_err(|e| CliError::InvalidServer {
            server: server.clone(),
            reason: error_chain(&e),
        })?;
    if let Some(tls) = client_tls(&server, opts.ca_cert.as_deref())? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CliError::InvalidServer {
                server: server.clone(),
                reason: error_chain(&e),
            })?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // Detects a dead peer during a long, quiet watch.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| CliError::Connect {
        server: server.clone(),
        reason: error_chain(&e),
    })?;
    Ok(PipeServiceClient::with_interceptor(channel, interceptor))
}

/// Runs one client command; prints errors to stderr and returns the exit
/// code (see the module documentation).
pub async fn run(opts: ClientOpts, cmd: ClientCommand) -> ExitCode {
    let mut out = Out::stdout();
    let bars = io::stderr().is_terminal();
    match execute(&opts, cmd, &mut out, bars).await {
        Ok(code) => code,
        // The reader went away (`pgpipe events | head`): nothing to say.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_ERROR)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn pipe_of(pipe: Option<Pipe>, what: &'static str) -> Result<Pipe, CliError> {
    pipe.ok_or(CliError::MissingPipe(what))
}

/// GetPipe by name or by id (the other left empty).
async fn get_pipe(client: &mut Client, name: String, id: String) -> Result<Pipe, CliError> {
    let answer = client
        .get_pipe(crate::proto::GetPipeRequest { name, id })
        .await?
        .into_inner();
    pipe_of(answer.pipe, "GetPipe")
}

/// Runs `cmd`, writing to `out`; `bars`: progress bars may be drawn on
/// stderr.
pub(crate) async fn execute(
    opts: &ClientOpts,
    cmd: ClientCommand,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    match cmd {
        ClientCommand::Create(args) => create::create(opts, &args, out, bars).await,
        ClientCommand::Validate(args) => create::validate(opts, &args, out).await,
        ClientCommand::List(args) => read::list(&mut connect(opts).await?, args, out).await,
        ClientCommand::Get(args) => read::get(&mut connect(opts).await?, args, out).await,
        ClientCommand::Delete(args) => {
            lifecycle::delete(&mut connect(opts).await?, args, out).await
        }
        ClientCommand::Pause(args) => {
            lifecycle::pause_or_resume(&mut connect(opts).await?, args, out, true).await
        }
        ClientCommand::Resume(args) => {
            lifecycle::pause_or_resume(&mut connect(opts).await?, args, out, false).await
        }
        ClientCommand::Resync(args) => lifecycle::resync(opts, args, out, bars).await,
        ClientCommand::Watch(args) => {
            watch::watch(&mut connect(opts).await?, args, out, bars).await
        }
        ClientCommand::Events(args) => watch::events(&mut connect(opts).await?, args, out).await,
        ClientCommand::Tables(TablesCommand::Add(args)) => {
            tables::add(&mut connect(opts).await?, args, out).await
        }
        ClientCommand::Tables(TablesCommand::Remove(args)) => {
            tables::remove(&mut connect(opts).await?, args, out).await
        }
        ClientCommand::Labels(args) => labels::labels(&mut connect(opts).await?, args, out).await,
        ClientCommand::History(args) => {
            history::history(&mut connect(opts).await?, args, out).await?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Throughput(args) => {
            history::throughput(&mut connect(opts).await?, args, out).await?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::LoadSummary(args) => {
            history::load_summary(&mut connect(opts).await?, args, out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests;
