//! `list` and `get`: pipes as a table, a summary or JSON.

use std::process::ExitCode;

use clap::{ArgGroup, Args};
use serde_json::Value;

use super::format::{pipe_summary, pipes_table};
use super::json::pipe_json;
use super::{CliError, Client, Out, get_pipe, parse_label};
use crate::proto::ListPipesRequest;

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

/// `pgpipe list`.
pub(super) async fn list(
    client: &mut Client,
    args: ListArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
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
    Ok(ExitCode::SUCCESS)
}

/// `pgpipe get`.
pub(super) async fn get(
    client: &mut Client,
    args: GetArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let pipe = get_pipe(
        client,
        args.name.unwrap_or_default(),
        args.id.unwrap_or_default(),
    )
    .await?;
    if args.json {
        out.json_pretty(&pipe_json(&pipe))?;
    } else {
        out.block(&pipe_summary(&pipe))?;
    }
    Ok(ExitCode::SUCCESS)
}
