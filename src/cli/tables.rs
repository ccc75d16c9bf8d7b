//! `tables add` and `tables remove` (UpdatePipe), and waiting for tables to
//! replicate (also `resync --table --wait`).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::create::print_problems;
use super::format::status_label;
use super::json::pipe_json;
use super::spec::parse_table_spec;
use super::{CliError, Client, Out, get_pipe, pipe_of};
use crate::proto::{Pipe, PipeStatus, TableConfig, TableState, UpdatePipeRequest};

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

/// `pgpipe tables add`.
pub(super) async fn add(
    client: &mut Client,
    args: TablesAddArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let names: Vec<String> = args.tables.iter().map(|t| t.source_table.clone()).collect();
    let request = UpdatePipeRequest {
        name: args.name,
        add_tables: args.tables,
        remove_tables: Vec::new(),
        validate_only: args.dry_run,
    };
    update_tables(client, request, args.wait.then_some(names), args.json, out).await
}

/// `pgpipe tables remove`.
pub(super) async fn remove(
    client: &mut Client,
    args: TablesRemoveArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let request = UpdatePipeRequest {
        name: args.name,
        add_tables: Vec::new(),
        remove_tables: args.tables,
        validate_only: args.dry_run,
    };
    update_tables(client, request, None, args.json, out).await
}

/// Sends an UpdatePipe (a dry run prints the problems found) and prints the
/// tables, after waiting for `wait_for` to replicate when given.
async fn update_tables(
    client: &mut Client,
    request: UpdatePipeRequest,
    wait_for: Option<Vec<String>>,
    json: bool,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let name = request.name.clone();
    let dry_run = request.validate_only;
    let answer = client.update_pipe(request).await?.into_inner();
    if dry_run {
        return print_problems(out, answer.ok, &answer.problems, json);
    }
    let mut pipe = pipe_of(answer.pipe, "UpdatePipe")?;
    if let Some(names) = wait_for {
        pipe = wait_tables(client, &name, &names).await?;
    }
    print_tables_change(out, &pipe, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Polls the pipe until the named tables (or, when empty, all) replicate.
pub(super) async fn wait_tables(
    client: &mut Client,
    name: &str,
    tables: &[String],
) -> Result<Pipe, CliError> {
    loop {
        let pipe = get_pipe(client, name.to_owned(), String::new()).await?;
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

pub(super) fn print_tables_change(out: &mut Out, pipe: &Pipe, json: bool) -> Result<(), CliError> {
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
