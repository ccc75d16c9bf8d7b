//! `create` and `validate`: the CreatePipeRequest assembled from `--file`
//! and the options (secrets from the environment or stdin only), and the
//! list of problems a dry run answers (also `tables add/remove --dry-run`).

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::format::{conn_string_has_password, pipe_summary, problem_kind_label, problems_table};
use super::json::{create_request_from_json, pipe_json};
use super::spec::{ColumnFlags, apply_column_options, parse_table_spec};
use super::watch::{state_message, wait_running};
use super::{CliError, ClientOpts, EXIT_PROBLEMS, Out, connect, parse_label, pipe_of};
use crate::proto::{
    CreatePipeRequest, DestinationConfig, PipeSettings, SourceConfig, TableConfig,
    ValidatePipeRequest,
};

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

    #[command(flatten)]
    pub columns: ColumnFlags,

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

/// `pgpipe create`.
pub(super) async fn create(
    opts: &ClientOpts,
    args: &CreateArgs,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    // Everything local (files, env, stdin) before the network.
    let stdin = io::stdin();
    let request = build_create_request(args, &|var| std::env::var_os(var), &mut stdin.lock())?;
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
    Ok(ExitCode::SUCCESS)
}

/// `pgpipe validate`.
pub(super) async fn validate(
    opts: &ClientOpts,
    args: &CreateArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    if args.wait {
        return Err(CliError::Usage(
            "--wait is for create; validate creates nothing to wait for".to_owned(),
        ));
    }
    let stdin = io::stdin();
    let r = build_create_request(args, &|var| std::env::var_os(var), &mut stdin.lock())?;
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
    print_problems(out, answer.ok, &answer.problems, args.json)
}

/// A dry run's answer: `ok`, or every problem (exit 1).
pub(super) fn print_problems(
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
pub(super) fn build_create_request(
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
    apply_column_options(&mut req.tables, &args.columns).map_err(CliError::Usage)?;
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
