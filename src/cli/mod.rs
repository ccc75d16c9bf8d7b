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

mod format;
mod history;
mod json;
mod spec;
mod watch;

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::Value;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::pipe_service_client::PipeServiceClient;
use crate::proto::{
    CreatePipeRequest, DeletePipeRequest, DestinationConfig, GetPipeRequest, ListPipesRequest,
    PausePipeRequest, Pipe, PipeSettings, PipeStatus, ResumePipeRequest, ResyncPipeRequest,
    SetPipeLabelsRequest, SourceConfig, TableConfig, TableState, UpdatePipeRequest,
    ValidatePipeRequest, WatchPipeResponse,
};
use format::{
    code_name, conn_string_has_password, pipe_summary, pipes_table, problem_kind_label,
    problems_table, status_label,
};
use json::{create_request_from_json, pipe_json, watch_message_json};
use spec::{
    apply_column_options, merge_overrides, parse_dest_override, parse_exclude,
    parse_order_by_override, parse_rename, parse_table_spec, parse_type, resync_column_options,
};
use watch::{WatchOptions, follow_events, follow_pipe};

/// Exit code when the watched pipe failed (and is not retrying).
pub const EXIT_PIPE_FAILED: u8 = 1;
/// Exit code of `validate` when it found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code for every other error.
pub const EXIT_ERROR: u8 = 2;

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

#[derive(Subcommand, Debug)]
pub enum TablesCommand {
    /// Add tables: each gets its own initial load while CDC of the others
    /// goes on, then replicates. Same TABLE SPEC as `create --table`.
    Add(TablesAddArgs),
    /// Remove tables: they stop replicating (ClickHouse tables are kept).
    Remove(TablesRemoveArgs),
}

#[derive(Args, Debug)]
pub struct TablesAddArgs {
    /// Pipe name.
    pub name: String,
    /// Table spec: schema.table[:dest_table][:order_by_col1,col2].
    #[arg(required = true, value_name = "TABLE", value_parser = parse_table_spec)]
    pub tables: Vec<TableConfig>,
    /// Wait until every added table is loaded and replicating.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Check only (UpdatePipe validate_only): every problem, nothing
    /// changed; exit 1 when there is any.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the pipe as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TablesRemoveArgs {
    /// Pipe name.
    pub name: String,
    /// Source tables (schema.table).
    #[arg(required = true, value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Check only: every problem, nothing changed; exit 1 when there is any.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the pipe as JSON.
    #[arg(long)]
    pub json: bool,
}

const CREATE_HELP: &str = "\
TABLE SPEC:
  --table schema.table[:dest_table][:order_by_col1,col2]
    public.orders                   -> ClickHouse table `orders`, ORDER BY the primary key
    public.orders:orders_v2         -> ClickHouse table `orders_v2`
    public.orders::id,created_at    -> default destination, ORDER BY (id, created_at)
    public.orders:orders_v2:id
  Names may be double-quoted (\"My Schema\".\"Order:Items\"); `:`, `.` and `,`
  inside quotes are part of the name. Repeat --table for several tables.

COLUMNS:
  --exclude public.users=password_hash,token   -> these columns are not replicated
  --rename public.users=desc:description       -> column `desc` is `description` in ClickHouse
  --type public.users=born:String              -> column `born` stored as the chosen type
  --type 'public.t=price:Decimal(20, 4),d:Int32'
  All apply to the initial load, CDC and resyncs; ORDER BY columns are
  named as in the source. Key columns cannot be excluded. Types (README
  \"Column types\"): String (any column), numeric Float64 or Decimal(P, S),
  date Int32 (days since 1970-01-01), date/timestamp Clamp, json JSON.

PASSWORDS:
  Passwords are never taken from the command line (visible in `ps`): name an
  environment variable (--source-password-env PGPASS_VAR, --ch-password-env
  CH_PASS_VAR), or pipe one of them on stdin (--source-password-stdin or
  --ch-password-stdin). A password inside --source also works but is
  visible to other users; a warning is printed.

FILE:
  --file pipe.json reads a CreatePipeRequest as JSON (proto field names in
  snake_case or lowerCamelCase; a table may also be a SPEC string), e.g.
    {\"name\": \"orders\",
     \"source\": {\"connection_string\": \"host=db user=repl dbname=app\"},
     \"destination\": {\"url\": \"http://ch:8123\", \"database\": \"analytics\"},
     \"tables\": [\"public.orders::id\", {\"source_table\": \"public.items\"}],
     \"settings\": {\"snapshot_parallelism\": 8}}
  Options given on the command line override the file's fields (--table
  replaces the file's table list).

EXAMPLE:
  PGPASS=... pgpipe create orders --source 'host=db user=repl dbname=app' \\
      --source-password-env PGPASS --ch-url http://ch:8123 --ch-database analytics \\
      --table public.orders::id --table public.items --wait";

#[derive(Args, Debug)]
#[command(after_long_help = CREATE_HELP)]
pub struct CreateArgs {
    /// Pipe name (may come from --file instead).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,

    /// Read the CreatePipeRequest from a JSON file (`-` for stdin); command
    /// line options override its fields.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Source PostgreSQL connection string, without password, e.g.
    /// "host=db user=repl dbname=app" or postgres://repl@db/app.
    #[arg(long, value_name = "CONNSTR", required_unless_present = "file")]
    pub source: Option<String>,

    /// Environment variable holding the source password.
    #[arg(long, value_name = "VAR", conflicts_with = "source_password_stdin")]
    pub source_password_env: Option<String>,

    /// Read the source password from the first line of stdin.
    #[arg(long)]
    pub source_password_stdin: bool,

    /// ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.
    #[arg(long, value_name = "URL", required_unless_present = "file")]
    pub ch_url: Option<String>,

    /// ClickHouse database.
    #[arg(long, value_name = "DB", required_unless_present = "file")]
    pub ch_database: Option<String>,

    /// ClickHouse user.
    #[arg(long, value_name = "USER")]
    pub ch_user: Option<String>,

    /// For an https ClickHouse URL: a PEM file, on the pgpipe server, of the
    /// CA to trust (default: the server's system roots).
    #[arg(long, value_name = "FILE")]
    pub ch_ca_cert: Option<String>,

    /// Environment variable holding the ClickHouse password.
    #[arg(long, value_name = "VAR", conflicts_with = "ch_password_stdin")]
    pub ch_password_env: Option<String>,

    /// Read the ClickHouse password from the first line of stdin.
    #[arg(long, conflicts_with = "source_password_stdin")]
    pub ch_password_stdin: bool,

    /// Table to replicate: schema.table[:dest_table][:order_by_col1,col2].
    /// Repeatable. Details and examples in --help.
    #[arg(
        long = "table",
        value_name = "SPEC",
        required_unless_present = "file",
        value_parser = parse_table_spec
    )]
    pub tables: Vec<TableConfig>,

    /// Source columns not to replicate: SOURCE_TABLE=col1,col2 (a table
    /// given with --table or in --file). Repeatable.
    #[arg(long, value_name = "TABLE=COLS", value_parser = parse_exclude)]
    pub exclude: Vec<(String, Vec<String>)>,

    /// ClickHouse names for source columns: SOURCE_TABLE=old:new[,old2:new2]
    /// (a table given with --table or in --file). Repeatable.
    #[arg(long, value_name = "TABLE=OLD:NEW", value_parser = parse_rename)]
    pub rename: Vec<(String, Vec<(String, String)>)>,

    /// ClickHouse types chosen for source columns:
    /// SOURCE_TABLE=col:Type[,col2:Type] (String, Float64, Decimal(P, S),
    /// Int32, Clamp, JSON). Repeatable.
    #[arg(long = "type", value_name = "TABLE=COL:TYPE", value_parser = parse_type)]
    pub types: Vec<(String, Vec<(String, String)>)>,

    /// Parallel snapshot workers [server default: 4, at most 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallelism: Option<u32>,

    /// Rows per snapshot partition [server default: 500000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rows_per_partition: Option<u64>,

    /// Max changes per CDC batch [server default: 10000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,

    /// Max time between CDC flushes, in milliseconds [server default: 1000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(1..))]
    pub sync_interval_ms: Option<u32>,

    /// A column dropped at the source is dropped in ClickHouse too (with
    /// its values); by default it is kept and new rows read NULL (or the
    /// type's default).
    #[arg(long)]
    pub drop_dropped_columns: bool,

    /// Label `key=value` to start with; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// After creating, watch the pipe until it is RUNNING (exit 0) or
    /// FAILED (exit 1).
    #[arg(long)]
    pub wait: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Include deleted pipes.
    #[arg(long)]
    pub all: bool,

    /// Only pipes with label `key=value`; repeatable (all must match).
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,

    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["name", "id"])))]
pub struct GetArgs {
    /// Pipe name (its current incarnation).
    pub name: Option<String>,

    /// Pipe id (any incarnation, including deleted ones).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Pipe name.
    pub name: String,

    /// Also drop the destination tables in ClickHouse.
    #[arg(long)]
    pub drop_tables: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// Pipe name.
    pub name: String,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ResyncArgs {
    /// Pipe name.
    pub name: String,

    /// New ClickHouse ORDER BY for a table: SOURCE_TABLE=col1,col2.
    /// Repeatable.
    #[arg(long, value_name = "TABLE=COLS", value_parser = parse_order_by_override)]
    pub order_by: Vec<(String, Vec<String>)>,

    /// New destination table for a table: SOURCE_TABLE=dest_table.
    /// Repeatable.
    #[arg(long, value_name = "TABLE=NAME", value_parser = parse_dest_override)]
    pub dest: Vec<(String, String)>,

    /// Source columns not to replicate from now on: SOURCE_TABLE=col1,col2
    /// (replaces the table's exclusions). Repeatable.
    #[arg(long, value_name = "TABLE=COLS", value_parser = parse_exclude)]
    pub exclude: Vec<(String, Vec<String>)>,

    /// ClickHouse names for source columns from now on:
    /// SOURCE_TABLE=old:new[,old2:new2] (replaces the table's renames).
    /// Repeatable.
    #[arg(long, value_name = "TABLE=OLD:NEW", value_parser = parse_rename)]
    pub rename: Vec<(String, Vec<(String, String)>)>,

    /// ClickHouse types for source columns from now on:
    /// SOURCE_TABLE=col:Type[,col2:Type] (replaces the table's column types).
    /// Repeatable.
    #[arg(long = "type", value_name = "TABLE=COL:TYPE", value_parser = parse_type)]
    pub types: Vec<(String, Vec<(String, String)>)>,

    /// Drop a table's exclusions, renames and column types (then
    /// --exclude/--rename/--type, if given, set new ones). Repeatable.
    #[arg(long, value_name = "TABLE")]
    pub reset_columns: Vec<String>,

    /// Rebuild only this source table while CDC of the others goes on (the
    /// pipe stays RUNNING). Repeatable; not with --order-by/--dest or column
    /// options.
    #[arg(long = "table", value_name = "TABLE",
          conflicts_with_all = ["order_by", "dest", "exclude", "rename", "types", "reset_columns"])]
    pub tables: Vec<String>,

    /// Watch the new incarnation until it is RUNNING (exit 0) or FAILED
    /// (exit 1).
    #[arg(long)]
    pub wait: bool,

    /// Print JSON instead of text (with --wait: one object per line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Pipe name (followed across resyncs).
    pub name: String,

    /// Resume after this cursor (from an earlier message) instead of
    /// starting with the current state.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<u64>,

    /// One JSON object per message per line, no progress bars.
    #[arg(long)]
    pub json: bool,

    /// Exit 0 once the pipe is RUNNING after having been seen not running
    /// (or resyncing); exit 1 if it fails without retrying.
    #[arg(long)]
    pub until_running: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Replay events after this cursor first (0: the whole log); without it,
    /// only new events.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<u64>,

    /// Only events of this pipe name.
    #[arg(long, value_name = "NAME")]
    pub pipe: Option<String>,

    /// Only events of pipes with label `key=value` (as of each event);
    /// repeatable (all must match).
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,

    /// One JSON object per event per line, and {"caught_up": CURSOR} once
    /// the replay reached the head of the log.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LabelsArgs {
    /// Pipe name.
    pub name: String,

    /// `key=value` sets a label, `key-` removes one. Without any, prints
    /// the pipe's labels.
    #[arg(value_name = "CHANGE", value_parser = parse_label_change)]
    pub changes: Vec<LabelChange>,

    /// Print the pipe as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

/// `key=value` (the value may contain `=`; the server checks the key).
pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// `key=value` or `key-`.
pub(crate) fn parse_label_change(s: &str) -> Result<LabelChange, String> {
    if !s.contains('=')
        && let Some(key) = s.strip_suffix('-')
        && !key.is_empty()
    {
        return Ok(LabelChange::Remove(key.to_owned()));
    }
    parse_label(s)
        .map(|(k, v)| LabelChange::Set(k, v))
        .map_err(|_| format!("{s:?}: expected KEY=VALUE to set or KEY- to remove"))
}

/// Errors of the client; all exit with [`EXIT_ERROR`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
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

pub(crate) async fn execute(
    opts: &ClientOpts,
    cmd: ClientCommand,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    match cmd {
        ClientCommand::Create(args) => {
            // Everything local (files, env, stdin) before the network.
            let stdin = io::stdin();
            let request =
                build_create_request(&args, &|var| std::env::var_os(var), &mut stdin.lock())?;
            let name = request.name.clone();
            let mut client = connect(opts).await?;
            let pipe = pipe_of(
                client.create_pipe(request).await?.into_inner().pipe,
                "CreatePipe",
            )?;
            if args.wait {
                if args.json {
                    out.json_line(&state_message(&pipe))?;
                } else {
                    out.line(&format!(
                        "pipe {} created (id {}), waiting until it is running",
                        pipe.name, pipe.id
                    ))?;
                }
                return wait_running(&mut client, &name, pipe.cursor, args.json, bars, out).await;
            }
            if args.json {
                out.json_pretty(&pipe_json(&pipe))?;
            } else {
                out.line(&format!("pipe {} created", pipe.name))?;
                out.block(&pipe_summary(&pipe))?;
                out.line(&format!("\nfollow it with: pgpipe watch {}", pipe.name))?;
            }
        }
        ClientCommand::Validate(args) => {
            if args.wait {
                return Err(CliError::Usage(
                    "--wait is for create; validate creates nothing to wait for".to_owned(),
                ));
            }
            let stdin = io::stdin();
            let r = build_create_request(&args, &|var| std::env::var_os(var), &mut stdin.lock())?;
            let mut client = connect(opts).await?;
            let answer = client
                .validate_pipe(ValidatePipeRequest {
                    name: r.name,
                    source: r.source,
                    destination: r.destination,
                    tables: r.tables,
                    settings: r.settings,
                    labels: r.labels,
                })
                .await?
                .into_inner();
            return print_problems(out, answer.ok, &answer.problems, args.json);
        }
        ClientCommand::List(args) => {
            let mut client = connect(opts).await?;
            let pipes = client
                .list_pipes(ListPipesRequest {
                    include_deleted: args.all,
                    label_selector: args.selector.iter().cloned().collect(),
                })
                .await?
                .into_inner()
                .pipes;
            if args.json {
                out.json_pretty(&Value::Array(pipes.iter().map(pipe_json).collect()))?;
            } else if pipes.is_empty() {
                out.line(if args.all {
                    "no pipes"
                } else {
                    "no pipes (--all includes deleted ones)"
                })?;
            } else {
                out.block(&pipes_table(&pipes))?;
            }
        }
        ClientCommand::Get(args) => {
            let mut client = connect(opts).await?;
            let pipe = pipe_of(
                client
                    .get_pipe(GetPipeRequest {
                        name: args.name.unwrap_or_default(),
                        id: args.id.unwrap_or_default(),
                    })
                    .await?
                    .into_inner()
                    .pipe,
                "GetPipe",
            )?;
            if args.json {
                out.json_pretty(&pipe_json(&pipe))?;
            } else {
                out.block(&pipe_summary(&pipe))?;
            }
        }
        ClientCommand::Delete(args) => {
            let mut client = connect(opts).await?;
            let pipe = pipe_of(
                client
                    .delete_pipe(DeletePipeRequest {
                        name: args.name,
                        drop_destination_tables: args.drop_tables,
                    })
                    .await?
                    .into_inner()
                    .pipe,
                "DeletePipe",
            )?;
            if args.json {
                out.json_pretty(&pipe_json(&pipe))?;
            } else {
                out.line(&format!(
                    "pipe {} deleted (id {}); destination tables {}",
                    pipe.name,
                    pipe.id,
                    if args.drop_tables {
                        "dropped"
                    } else {
                        "kept (--drop-tables removes them)"
                    }
                ))?;
            }
        }
        ClientCommand::Pause(args) => {
            let mut client = connect(opts).await?;
            let pipe = pipe_of(
                client
                    .pause_pipe(PausePipeRequest { name: args.name })
                    .await?
                    .into_inner()
                    .pipe,
                "PausePipe",
            )?;
            print_transition(out, &pipe, "paused", args.json)?;
        }
        ClientCommand::Resume(args) => {
            let mut client = connect(opts).await?;
            let pipe = pipe_of(
                client
                    .resume_pipe(ResumePipeRequest { name: args.name })
                    .await?
                    .into_inner()
                    .pipe,
                "ResumePipe",
            )?;
            print_transition(out, &pipe, "resumed", args.json)?;
        }
        ClientCommand::Resync(args) => {
            let mut overrides = merge_overrides(&args.order_by, &args.dest);
            let mut client = connect(opts).await?;
            let mut replace_column_options = false;
            if !(args.exclude.is_empty()
                && args.rename.is_empty()
                && args.types.is_empty()
                && args.reset_columns.is_empty())
            {
                let current = pipe_of(
                    client
                        .get_pipe(GetPipeRequest {
                            name: args.name.clone(),
                            ..Default::default()
                        })
                        .await?
                        .into_inner()
                        .pipe,
                    "GetPipe",
                )?;
                let tables = current.config.map(|c| c.tables).unwrap_or_default();
                replace_column_options = resync_column_options(
                    &tables,
                    &mut overrides,
                    &args.exclude,
                    &args.rename,
                    &args.types,
                    &args.reset_columns,
                )
                .map_err(CliError::Usage)?;
            }
            let pipe = pipe_of(
                client
                    .resync_pipe(ResyncPipeRequest {
                        name: args.name.clone(),
                        overrides,
                        tables: args.tables.clone(),
                        replace_column_options,
                    })
                    .await?
                    .into_inner()
                    .pipe,
                "ResyncPipe",
            )?;
            if !args.tables.is_empty() {
                // A table resync: same incarnation, the pipe keeps running.
                let pipe = if args.wait {
                    wait_tables(&mut client, &args.name, &args.tables).await?
                } else {
                    pipe
                };
                if !args.json && !args.wait {
                    out.line(&format!(
                        "table resync of {} requested on pipe {}",
                        args.tables.join(", "),
                        pipe.name
                    ))?;
                }
                print_tables_change(out, &pipe, args.json)?;
                return Ok(ExitCode::SUCCESS);
            }
            if args.json {
                if args.wait {
                    out.json_line(&state_message(&pipe))?;
                } else {
                    out.json_pretty(&pipe_json(&pipe))?;
                }
            } else {
                let replaces = if pipe.resync_of.is_empty() {
                    String::new()
                } else {
                    format!(" replacing {}", pipe.resync_of)
                };
                out.line(&format!(
                    "resync of {} started: new incarnation {}{replaces}, status {}",
                    pipe.name,
                    pipe.id,
                    status_label(pipe.status)
                ))?;
                if !args.wait {
                    out.line(&format!("follow it with: pgpipe watch {}", pipe.name))?;
                }
            }
            if args.wait {
                // The response's pipe is the new incarnation; its cursor is
                // the last event the resync wrote: follow from right after.
                return wait_running(&mut client, &args.name, pipe.cursor, args.json, bars, out)
                    .await;
            }
        }
        ClientCommand::Watch(args) => {
            let mut client = connect(opts).await?;
            let options = WatchOptions {
                json: args.json,
                until_running: args.until_running,
                bars,
            };
            return follow_pipe(&mut client, &args.name, args.after, &options, out).await;
        }
        ClientCommand::Events(args) => {
            let mut client = connect(opts).await?;
            return follow_events(
                &mut client,
                args.after,
                args.pipe.as_deref(),
                &args.selector.iter().cloned().collect(),
                args.json,
                out,
            )
            .await;
        }
        ClientCommand::Tables(TablesCommand::Add(args)) => {
            let mut client = connect(opts).await?;
            let names: Vec<String> = args.tables.iter().map(|t| t.source_table.clone()).collect();
            let answer = client
                .update_pipe(UpdatePipeRequest {
                    name: args.name.clone(),
                    add_tables: args.tables,
                    remove_tables: Vec::new(),
                    validate_only: args.dry_run,
                })
                .await?
                .into_inner();
            if args.dry_run {
                return print_problems(out, answer.ok, &answer.problems, args.json);
            }
            let pipe = pipe_of(answer.pipe, "UpdatePipe")?;
            let pipe = if args.wait {
                wait_tables(&mut client, &args.name, &names).await?
            } else {
                pipe
            };
            print_tables_change(out, &pipe, args.json)?;
        }
        ClientCommand::Tables(TablesCommand::Remove(args)) => {
            let mut client = connect(opts).await?;
            let answer = client
                .update_pipe(UpdatePipeRequest {
                    name: args.name,
                    add_tables: Vec::new(),
                    remove_tables: args.tables,
                    validate_only: args.dry_run,
                })
                .await?
                .into_inner();
            if args.dry_run {
                return print_problems(out, answer.ok, &answer.problems, args.json);
            }
            let pipe = pipe_of(answer.pipe, "UpdatePipe")?;
            print_tables_change(out, &pipe, args.json)?;
        }
        ClientCommand::Labels(args) => {
            let mut client = connect(opts).await?;
            let mut request = SetPipeLabelsRequest {
                name: args.name,
                ..Default::default()
            };
            for change in args.changes {
                match change {
                    LabelChange::Set(k, v) => {
                        request.labels.insert(k, v);
                    }
                    LabelChange::Remove(k) => request.remove_keys.push(k),
                }
            }
            // No change asked: SetPipeLabels records nothing and returns the
            // pipe, so this doubles as "show labels".
            let pipe = pipe_of(
                client.set_pipe_labels(request).await?.into_inner().pipe,
                "SetPipeLabels",
            )?;
            if args.json {
                out.json_pretty(&pipe_json(&pipe))?;
            } else if pipe.labels.is_empty() {
                out.line(&format!("pipe {} has no labels", pipe.name))?;
            } else {
                for (k, v) in &pipe.labels {
                    out.line(&format!("{k}={v}"))?;
                }
            }
        }
        ClientCommand::History(args) => {
            history::history(&mut connect(opts).await?, args, out).await?;
        }
        ClientCommand::Throughput(args) => {
            history::throughput(&mut connect(opts).await?, args, out).await?;
        }
        ClientCommand::LoadSummary(args) => {
            history::load_summary(&mut connect(opts).await?, args, out).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A dry run's answer: `ok`, or every problem (exit 1).
fn print_problems(
    out: &mut Out,
    ok: bool,
    problems: &[crate::proto::Problem],
    json: bool,
) -> Result<ExitCode, CliError> {
    if json {
        let list: Vec<Value> = problems
            .iter()
            .map(|p| {
                serde_json::json!({
                    "kind": problem_kind_label(p.kind),
                    "table": p.table,
                    "column": p.column,
                    "field": p.field,
                    "message": p.message,
                    "warning": p.warning,
                })
            })
            .collect();
        out.json_pretty(&serde_json::json!({"ok": ok, "problems": list}))?;
    } else if ok && problems.is_empty() {
        out.line("ok")?;
    } else if ok {
        // Warnings only: the pipe can be created, with what they say.
        out.line(&format!("ok, {} warning(s):", problems.len()))?;
        out.block(&problems_table(problems))?;
    } else {
        out.line(&format!("{} problem(s):", problems.len()))?;
        out.block(&problems_table(problems))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    })
}

/// Polls the pipe until the named tables (or, when empty, all) replicate.
async fn wait_tables(client: &mut Client, name: &str, tables: &[String]) -> Result<Pipe, CliError> {
    loop {
        let pipe = pipe_of(
            client
                .get_pipe(GetPipeRequest {
                    name: name.to_owned(),
                    id: String::new(),
                })
                .await?
                .into_inner()
                .pipe,
            "GetPipe",
        )?;
        if pipe.status() == PipeStatus::Failed || pipe.status() == PipeStatus::Deleted {
            return Err(CliError::Watch(format!(
                "pipe {name} is {}: {}",
                status_label(pipe.status),
                pipe.error
            )));
        }
        let busy = pipe.tables.iter().any(|t| {
            (tables.is_empty() || tables.iter().any(|n| table_matches(n, &t.source_table)))
                && !matches!(t.state(), TableState::Replicating | TableState::Failed)
        });
        if !busy {
            return Ok(pipe);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A user's table name against a canonical one (`public.` may be left out).
fn table_matches(given: &str, canonical: &str) -> bool {
    given == canonical || format!("public.{given}") == canonical
}

fn print_tables_change(out: &mut Out, pipe: &Pipe, json: bool) -> Result<(), CliError> {
    if json {
        return out.json_pretty(&pipe_json(pipe));
    }
    for t in &pipe.tables {
        let state = t.state().words();
        out.line(&format!(
            "{} → {}  {}",
            t.source_table, t.destination_table, state
        ))?;
    }
    Ok(())
}

/// The `watch --json` shape for a state without an event.
fn state_message(pipe: &Pipe) -> Value {
    watch_message_json(&WatchPipeResponse {
        cursor: pipe.cursor,
        pipe: Some(pipe.clone()),
        event: None,
    })
}

async fn wait_running(
    client: &mut Client,
    name: &str,
    after: u64,
    json: bool,
    bars: bool,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let options = WatchOptions {
        json,
        until_running: true,
        bars,
    };
    follow_pipe(client, name, Some(after), &options, out).await
}

fn print_transition(out: &mut Out, pipe: &Pipe, verb: &str, json: bool) -> Result<(), CliError> {
    if json {
        return out.json_pretty(&pipe_json(pipe));
    }
    out.line(&format!(
        "pipe {} {verb}: status {}",
        pipe.name,
        status_label(pipe.status)
    ))?;
    if !pipe.status_detail.is_empty() {
        out.line(&format!("note: {}", pipe.status_detail))?;
    }
    Ok(())
}

/// Reads one line (a password) from `input`, without its line ending.
fn read_secret_line(input: &mut dyn BufRead, what: &str) -> Result<String, CliError> {
    let mut line = String::new();
    let n = input.read_line(&mut line).map_err(|source| CliError::Io {
        what: format!("reading the {what} from stdin"),
        source,
    })?;
    if n == 0 {
        return Err(CliError::Usage(format!(
            "no {what} on stdin (expected one line)"
        )));
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(trimmed.to_owned())
}

fn secret_from_env(
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    var: &str,
    flag: &str,
) -> Result<String, CliError> {
    match env(var) {
        None => Err(CliError::Usage(format!(
            "environment variable {var} (named by {flag}) is not set"
        ))),
        Some(value) => value
            .into_string()
            .map_err(|_| CliError::Usage(format!("environment variable {var} is not valid UTF-8"))),
    }
}

/// Assembles the CreatePipeRequest from `--file` (if any) and the options,
/// which take precedence. Secrets come from `env` / `stdin` only.
fn build_create_request(
    args: &CreateArgs,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    stdin: &mut dyn BufRead,
) -> Result<CreatePipeRequest, CliError> {
    let from_stdin = args.source_password_stdin || args.ch_password_stdin;
    let mut req = match &args.file {
        None => CreatePipeRequest::default(),
        Some(path) => {
            let is_stdin = path.as_os_str() == "-";
            if is_stdin && from_stdin {
                return Err(CliError::Usage(
                    "--file - and --*-password-stdin cannot both read stdin".to_owned(),
                ));
            }
            let text = if is_stdin {
                io::read_to_string(&mut *stdin).map_err(|source| CliError::Io {
                    what: "reading the request from stdin".to_owned(),
                    source,
                })?
            } else {
                std::fs::read_to_string(path).map_err(|source| CliError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })?
            };
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{}: invalid JSON: {e}", path.display())))?;
            create_request_from_json(&value)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        }
    };

    if let Some(name) = &args.name {
        req.name = name.clone();
    }
    if req.name.trim().is_empty() {
        return Err(CliError::Usage("the pipe needs a name".to_owned()));
    }

    let source = req.source.get_or_insert_with(SourceConfig::default);
    if let Some(conn) = &args.source {
        if conn_string_has_password(conn) {
            eprintln!(
                "warning: the --source connection string contains a password, which other \
                 users can see in the process list; prefer --source-password-env"
            );
        }
        source.connection_string = conn.clone();
    }
    if let Some(var) = &args.source_password_env {
        source.password = secret_from_env(env, var, "--source-password-env")?;
    } else if args.source_password_stdin {
        source.password = read_secret_line(stdin, "source password")?;
    }

    let dest = req
        .destination
        .get_or_insert_with(DestinationConfig::default);
    if let Some(url) = &args.ch_url {
        dest.url = url.clone();
    }
    if let Some(db) = &args.ch_database {
        dest.database = db.clone();
    }
    if let Some(ca) = &args.ch_ca_cert {
        dest.ca_cert = ca.clone();
    }
    if let Some(user) = &args.ch_user {
        dest.user = user.clone();
    }
    if let Some(var) = &args.ch_password_env {
        dest.password = secret_from_env(env, var, "--ch-password-env")?;
    } else if args.ch_password_stdin {
        dest.password = read_secret_line(stdin, "ClickHouse password")?;
    }

    if !args.tables.is_empty() {
        req.tables = args.tables.clone();
    }
    apply_column_options(&mut req.tables, &args.exclude, &args.rename, &args.types)
        .map_err(CliError::Usage)?;
    // --label adds to (or overrides) the file's labels.
    for (k, v) in &args.labels {
        req.labels.insert(k.clone(), v.clone());
    }

    let settings = req.settings.get_or_insert_with(PipeSettings::default);
    if let Some(n) = args.parallelism {
        settings.snapshot_parallelism = n;
    }
    if let Some(n) = args.rows_per_partition {
        settings.snapshot_rows_per_partition = n;
    }
    if let Some(n) = args.batch_size {
        settings.cdc_batch_size = n;
    }
    if let Some(n) = args.sync_interval_ms {
        settings.cdc_sync_interval_ms = n;
    }
    if args.drop_dropped_columns {
        settings.drop_dropped_columns = true;
    }
    Ok(req)
}

#[cfg(test)]
mod tests;
