//! `pgpipe history`, `pgpipe throughput` and `pgpipe load-summary`: a pipe
//! name's past from GetPipeHistory, GetPipeThroughput and GetLoadSummary,
//! every page read, as a table or JSON.

use clap::{Args, ValueEnum};
use serde_json::Value;
use tonic::Status;

use super::format::{
    format_bytes, format_count, format_duration_ms, format_lsn, format_timestamp, table_of,
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
    let events = all_pages(|page_token| {
        let request = GetPipeHistoryRequest {
            name: args.name.clone(),
            kind: HistoryKind::from(args.kind) as i32,
            page_size: PAGE,
            page_token,
        };
        let mut client = client.clone();
        async move {
            let page = client.get_pipe_history(request).await?.into_inner();
            Ok((page.events, page.next_page_token))
        }
    })
    .await?;
    let events = tail(events, args.limit);
    let empty = format!("no {} history for {}", kind_word(args.kind), args.name);
    print_list(out, args.json, &events, event_json, &empty, |e| {
        history_table(args.kind, e)
    })
}

/// Every page of a paged RPC, in order: `fetch` is given the page token
/// (empty: the first page) and answers the page's items and the next token
/// (empty: that was the last page). Callers hand each page's future a clone
/// of the client (the same channel), so that the future owns what it uses.
async fn all_pages<T, F: Future<Output = Result<(Vec<T>, String), Status>>>(
    mut fetch: impl FnMut(String) -> F,
) -> Result<Vec<T>, CliError> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// `items` as a JSON array, the `empty` line when there are none, or the
/// table `table` draws.
fn print_list<T>(
    out: &mut Out,
    json: bool,
    items: &[T],
    to_json: fn(&T) -> Value,
    empty: &str,
    table: impl FnOnce(&[T]) -> String,
) -> Result<(), CliError> {
    if json {
        return out.json_pretty(&Value::Array(items.iter().map(to_json).collect()));
    }
    if items.is_empty() {
        return out.line(empty);
    }
    out.block(&table(items))
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
        Kind::All | Kind::Schema => table_of(&["TIME", "EVENT", "DETAILS"], events, |e| {
            vec![
                time_cell(e),
                super::json::event_kind(e).to_owned(),
                super::format::event_text(e),
            ]
        }),
        Kind::Errors => table_of(
            &["TIME", "STEP", "RETRYING", "REASON"],
            events,
            |e| match &e.payload {
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
            },
        ),
        Kind::Cdc => table_of(
            &["TIME", "LSN", "ROWS", "TX", "DURATION", "LAG", "TABLES"],
            events,
            |e| match &e.payload {
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
            },
        ),
        Kind::Snapshot => table_of(
            &["TIME", "EVENT", "TABLE", "PARTITIONS", "ROWS"],
            events,
            |e| {
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
            },
        ),
    }
}

pub(crate) async fn throughput(
    client: &mut Client,
    args: ThroughputArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let points = all_pages(|page_token| {
        let request = GetPipeThroughputRequest {
            name: args.name.clone(),
            bucket_seconds: args.bucket,
            page_size: PAGE,
            page_token,
        };
        let mut client = client.clone();
        async move {
            let page = client.get_pipe_throughput(request).await?.into_inner();
            Ok((page.points, page.next_page_token))
        }
    })
    .await?;
    let points = tail(points, args.limit);
    let empty = format!("no cdc history for {}", args.name);
    print_list(
        out,
        args.json,
        &points,
        throughput_point_json,
        &empty,
        throughput_table,
    )
}

/// One row per bucket: changes by kind, batches, lag.
pub(crate) fn throughput_table(points: &[ThroughputPoint]) -> String {
    table_of(
        &[
            "START", "ROWS", "INSERTED", "UPDATED", "DELETED", "BATCHES", "LAG", "MAX LAG", "LSN",
        ],
        points,
        |p| {
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
        },
    )
}

pub(crate) async fn load_summary(
    client: &mut Client,
    args: LoadSummaryArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let tables = all_pages(|page_token| {
        let request = GetLoadSummaryRequest {
            name: args.name.clone(),
            page_size: PAGE,
            page_token,
        };
        let mut client = client.clone();
        async move {
            let page = client.get_load_summary(request).await?.into_inner();
            Ok((page.tables, page.next_page_token))
        }
    })
    .await?;
    let empty = format!("no initial load recorded for {}", args.name);
    print_list(
        out,
        args.json,
        &tables,
        load_summary_json,
        &empty,
        load_summary_table,
    )
}

/// One row per incarnation and table.
pub(crate) fn load_summary_table(tables: &[TableLoadSummary]) -> String {
    table_of(
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
        tables,
        |t| {
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
        },
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
