//! `delete`, `pause`, `resume` and `resync`: a pipe's lifecycle.

use std::process::ExitCode;

use clap::Args;

use super::format::status_label;
use super::json::pipe_json;
use super::spec::{
    ColumnFlags, merge_overrides, parse_dest_override, parse_order_by_override,
    resync_column_options,
};
use super::tables::{print_tables_change, wait_tables};
use super::watch::{state_message, wait_running};
use super::{CliError, Client, ClientOpts, Out, connect, get_pipe, pipe_of};
use crate::proto::{
    DeletePipeRequest, PausePipeRequest, Pipe, ResumePipeRequest, ResyncPipeRequest,
};

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

    #[command(flatten)]
    pub columns: ColumnFlags,

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

/// `pgpipe delete`.
pub(super) async fn delete(
    client: &mut Client,
    args: DeleteArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
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
    Ok(ExitCode::SUCCESS)
}

/// `pgpipe pause` (`pause` true) or `pgpipe resume` (false): PausePipe or
/// ResumePipe, then the new status.
pub(super) async fn pause_or_resume(
    client: &mut Client,
    args: NameArgs,
    out: &mut Out,
    pause: bool,
) -> Result<ExitCode, CliError> {
    let name = args.name;
    let (pipe, rpc, verb) = if pause {
        let answer = client.pause_pipe(PausePipeRequest { name }).await?;
        (answer.into_inner().pipe, "PausePipe", "paused")
    } else {
        let answer = client.resume_pipe(ResumePipeRequest { name }).await?;
        (answer.into_inner().pipe, "ResumePipe", "resumed")
    };
    print_transition(out, &pipe_of(pipe, rpc)?, verb, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `pgpipe resync`: the whole pipe (a new incarnation) or, with `--table`,
/// some tables of the running one.
pub(super) async fn resync(
    opts: &ClientOpts,
    args: ResyncArgs,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    let mut overrides = merge_overrides(&args.order_by, &args.dest);
    let mut client = connect(opts).await?;
    let mut replace_column_options = false;
    if !(args.columns.is_empty() && args.reset_columns.is_empty()) {
        let current = get_pipe(&mut client, args.name.clone(), String::new()).await?;
        let tables = current.config.map(|c| c.tables).unwrap_or_default();
        replace_column_options =
            resync_column_options(&tables, &mut overrides, &args.columns, &args.reset_columns)
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
        return wait_running(&mut client, &args.name, pipe.cursor, args.json, bars, out).await;
    }
    Ok(ExitCode::SUCCESS)
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
