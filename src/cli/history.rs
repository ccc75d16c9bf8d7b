//! `pgpipe history`, `pgpipe throughput` and `pgpipe load-summary`: a pipe
//! name's past from GetPipeHistory, GetPipeThroughput and GetLoadSummary,
//! every page read, as a table or JSON.

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::format::{
    format_bytes, format_count, format_duration_ms, format_lsn, format_timestamp, render_table,
};
use super::json::{event_json, load_summary_json, throughput_point_json};
use super::{CliError, Client, Out};
use crate::proto::event::Payload;
use crate::proto::{
    CdcProgress, Event, GetLoadSummaryRequest, GetPipeHistoryRequest, GetPipeThroughputRequest,
    HistoryKind, TableLoadSummary, ThroughputPoint,
};

/// Largest page the server gives; fewer round trips.
const PAGE: u32 = 1000;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Pipe name (every incarnation under it).
    pub name: String,

    /// Which events: errors (failures and recoveries), cdc (one per applied
    /// batch, plus lag updates), snapshot (initial-load progress) or all.
    #[arg(long, value_enum, default_value_t = Kind::All)]
    pub kind: Kind,

    /// Only the newest N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Print a JSON array of events instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    All,
    Errors,
    Cdc,
    Snapshot,
    /// Column changes applied while replicating, and tables they failed.
    Schema,
}

impl From<Kind> for HistoryKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::All => HistoryKind::All,
            Kind::Errors => HistoryKind::Errors,
            Kind::Cdc => HistoryKind::Cdc,
            Kind::Snapshot => HistoryKind::Snapshot,
            Kind::Schema => HistoryKind::Schema,
        }
    }
}

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    /// Pipe name (every incarnation under it).
    pub name: String,

    /// Width of a row: seconds, or with a unit (30s, 5m, 1h, 1d).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_bucket)]
    pub bucket: u32,

    /// Only the newest N rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Print a JSON array of points instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LoadSummaryArgs {
    /// Pipe name (every incarnation under it).
    pub name: String,

    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `90`, `90s`, `5m`, `1h`, `1d` as seconds (1 s to 1 day).
pub(crate) fn parse_bucket(s: &str) -> Result<u32, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: expected e.g. 60s, 5m, 1h or 1d")),
    };
    let n: u32 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 60s, 5m, 1h or 1d"))?;
    match n.checked_mul(scale) {
        Some(secs @ 1..=86_400) => Ok(secs),
        _ => Err(format!("{s:?}: a bucket is 1s to 1d")),
    }
}

/// Keeps the newest `limit` items.
fn tail<T>(mut items: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        let cut = items.len().saturating_sub(n);
        items.drain(..cut);
    }
    items
}

pub(crate) async fn history(
    client: &mut Client,
    args: HistoryArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_pipe_history(GetPipeHistoryRequest {
                name: args.name.clone(),
                kind: HistoryKind::from(args.kind) as i32,
                page_size: PAGE,
                page_token: token,
            })
            .await?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let events = tail(events, args.limit);
    if args.json {
        return out.json_pretty(&Value::Array(events.iter().map(event_json).collect()));
    }
    if events.is_empty() {
        return out.line(&format!(
            "no {} history for {}",
            kind_word(args.kind),
            args.name
        ));
    }
    out.block(&history_table(args.kind, &events))
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::All => "",
        Kind::Errors => "error",
        Kind::Cdc => "cdc",
        Kind::Snapshot => "snapshot",
        Kind::Schema => "schema",
    }
}

fn time_cell(e: &Event) -> String {
    e.at.as_ref()
        .map_or_else(|| "-".to_owned(), |t| format_timestamp(t, false))
}

/// `public.t +3 ~1 -2, public.u +1`: a batch's changes per table.
fn counts_cell(c: &CdcProgress) -> String {
    if c.tables.is_empty() {
        return "-".to_owned();
    }
    c.tables
        .iter()
        .map(|t| {
            format!(
                "{} +{} ~{} -{}",
                t.source_table, t.inserted, t.updated, t.deleted
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table view of `events` for `kind`.
pub(crate) fn history_table(kind: Kind, events: &[Event]) -> String {
    match kind {
        Kind::All | Kind::Schema => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        time_cell(e),
                        super::json::event_kind(e).to_owned(),
                        super::format::event_text(e),
                    ]
                })
                .collect();
            render_table(&["TIME", "EVENT", "DETAILS"], &rows)
        }
        Kind::Errors => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| match &e.payload {
                    Some(Payload::PipeFailed(f)) => vec![
                        time_cell(e),
                        if f.step.is_empty() { "-" } else { &f.step }.to_owned(),
                        if f.retrying { "yes" } else { "no" }.to_owned(),
                        f.reason.clone(),
                    ],
                    _ => vec![
                        time_cell(e),
                        "-".into(),
                        "-".into(),
                        super::format::event_text(e),
                    ],
                })
                .collect();
            render_table(&["TIME", "STEP", "RETRYING", "REASON"], &rows)
        }
        Kind::Cdc => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| match &e.payload {
                    Some(Payload::CdcProgress(c)) => vec![
                        time_cell(e),
                        if c.start_lsn.is_empty() {
                            format_lsn(&c.lsn).to_owned()
                        } else {
                            format!("{}..{}", c.start_lsn, format_lsn(&c.lsn))
                        },
                        format_count(c.rows),
                        c.transactions.to_string(),
                        format_duration_ms(c.duration_ms),
                        format_bytes(c.lag_bytes),
                        counts_cell(c),
                    ],
                    _ => vec![
                        time_cell(e),
                        super::format::event_text(e),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ],
                })
                .collect();
            render_table(
                &["TIME", "LSN", "ROWS", "TX", "DURATION", "LAG", "TABLES"],
                &rows,
            )
        }
        Kind::Snapshot => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let (table, parts, rows) = match &e.payload {
                        Some(Payload::SnapshotProgress(p)) => (
                            p.source_table.clone(),
                            format!("{}/{}", p.partitions_done, p.partitions_total),
                            format_count(p.rows_copied),
                        ),
                        Some(Payload::SnapshotTableCompleted(p)) => {
                            (p.source_table.clone(), "-".into(), format_count(p.rows))
                        }
                        _ => ("-".into(), "-".into(), "-".into()),
                    };
                    vec![
                        time_cell(e),
                        super::json::event_kind(e).to_owned(),
                        table,
                        parts,
                        rows,
                    ]
                })
                .collect();
            render_table(&["TIME", "EVENT", "TABLE", "PARTITIONS", "ROWS"], &rows)
        }
    }
}

pub(crate) async fn throughput(
    client: &mut Client,
    args: ThroughputArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut points = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_pipe_throughput(GetPipeThroughputRequest {
                name: args.name.clone(),
                bucket_seconds: args.bucket,
                page_size: PAGE,
                page_token: token,
            })
            .await?
            .into_inner();
        points.extend(page.points);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let points = tail(points, args.limit);
    if args.json {
        return out.json_pretty(&Value::Array(
            points.iter().map(throughput_point_json).collect(),
        ));
    }
    if points.is_empty() {
        return out.line(&format!("no cdc history for {}", args.name));
    }
    out.block(&throughput_table(&points))
}

/// One row per bucket: changes by kind, batches, lag.
pub(crate) fn throughput_table(points: &[ThroughputPoint]) -> String {
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.start
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| format_timestamp(t, false)),
                format_count(p.rows_inserted + p.rows_updated + p.rows_deleted),
                format_count(p.rows_inserted),
                format_count(p.rows_updated),
                format_count(p.rows_deleted),
                p.batches.to_string(),
                format_bytes(p.lag_bytes),
                format_bytes(p.max_lag_bytes),
                format_lsn(&p.lsn).to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "START", "ROWS", "INSERTED", "UPDATED", "DELETED", "BATCHES", "LAG", "MAX LAG", "LSN",
        ],
        &rows,
    )
}

pub(crate) async fn load_summary(
    client: &mut Client,
    args: LoadSummaryArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut tables = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_load_summary(GetLoadSummaryRequest {
                name: args.name.clone(),
                page_size: PAGE,
                page_token: token,
            })
            .await?
            .into_inner();
        tables.extend(page.tables);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if args.json {
        return out.json_pretty(&Value::Array(
            tables.iter().map(load_summary_json).collect(),
        ));
    }
    if tables.is_empty() {
        return out.line(&format!("no initial load recorded for {}", args.name));
    }
    out.block(&load_summary_table(&tables))
}

/// One row per incarnation and table.
pub(crate) fn load_summary_table(tables: &[TableLoadSummary]) -> String {
    let rows: Vec<Vec<String>> = tables
        .iter()
        .map(|t| {
            vec![
                t.pipe_id.clone(),
                t.source_table.clone(),
                format!("{}/{}", t.partitions_done, t.partitions_total),
                format_count(t.rows),
                format_duration_ms(t.avg_partition_ms),
                t.started_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| format_timestamp(s, false)),
                format_duration_ms(t.duration_ms),
                if t.done { "done" } else { "loading" }.to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "PIPE ID",
            "TABLE",
            "PARTITIONS",
            "ROWS",
            "AVG PARTITION",
            "STARTED",
            "DURATION",
            "STATUS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PipeFailed, TableChangeCounts};

    #[test]
    fn a_bucket_takes_seconds_or_a_unit() {
        assert_eq!(parse_bucket("90"), Ok(90));
        assert_eq!(parse_bucket("60s"), Ok(60));
        assert_eq!(parse_bucket("5m"), Ok(300));
        assert_eq!(parse_bucket("1d"), Ok(86_400));
        assert!(parse_bucket("0s").is_err());
        assert!(parse_bucket("2d").is_err());
        assert!(parse_bucket("5 minutes").is_err());
    }

    #[test]
    fn the_cdc_view_shows_a_batch_per_row() {
        let e = Event {
            payload: Some(Payload::CdcProgress(CdcProgress {
                start_lsn: "0/10".into(),
                lsn: "0/20".into(),
                rows: 4,
                transactions: 2,
                duration_ms: 12,
                tables: vec![TableChangeCounts {
                    source_table: "public.t".into(),
                    inserted: 3,
                    updated: 1,
                    deleted: 0,
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let text = history_table(Kind::Cdc, &[e]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("0/10..0/20"), "{text}");
        assert!(row.contains("public.t +3 ~1 -0"), "{text}");
        assert!(row.contains("12ms"), "{text}");
    }

    #[test]
    fn the_errors_view_shows_step_retrying_and_reason() {
        let e = Event {
            payload: Some(Payload::PipeFailed(PipeFailed {
                step: "cdc".into(),
                reason: "connection refused".into(),
                retrying: true,
            })),
            ..Default::default()
        };
        let text = history_table(Kind::Errors, &[e]);
        assert!(text.starts_with("TIME"), "{text}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("cdc") && row.contains("yes"), "{text}");
        assert!(row.ends_with("connection refused"), "{text}");
    }
}
