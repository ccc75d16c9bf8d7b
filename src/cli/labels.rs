//! `labels`: set and remove a pipe's labels, or show them.

use std::process::ExitCode;

use clap::Args;

use super::json::pipe_json;
use super::{CliError, Client, Out, parse_label, pipe_of};
use crate::proto::SetPipeLabelsRequest;

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

/// `pgpipe labels`.
pub(super) async fn labels(
    client: &mut Client,
    args: LabelsArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
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
    Ok(ExitCode::SUCCESS)
}
