//! Checks both ends of a pipe before anything is recorded: after a
//! CreatePipe or ResyncPipe is accepted there is no going back, so a wrong
//! password, a missing table or a bad ORDER BY must be refused up front.
//!
//! The same checks serve ValidatePipe and UpdatePipe's dry run, which want
//! every problem at once, and CreatePipe, UpdatePipe and ResyncPipe, which
//! stop at the first ([`Problems`]). Nothing here writes to either end.

use crate::domain::columns;
use crate::domain::validate::{QualifiedName, source_tables};
use crate::model::PgType;
use crate::proto::{PipeConfig, Problem, ProblemKind};
use crate::sink::types::repr_fits;
use crate::sink::{ChSink, SinkError};
use crate::source::{self, SourceError, TableReport};
use crate::store::PipeSecrets;

use super::problems::{Problems, Stop};

/// What the checked config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new pipe: existing destination tables must be compatible, as the
    /// pipe writes into them.
    Create,
    /// A resync rebuilds its tables next to the old ones, so those may
    /// differ from the source (that is often why one resyncs).
    Resync,
    /// A resync that replaces column options: as `Resync`, and the excluded
    /// and renamed columns must exist, as at create (a typo would replicate
    /// the column).
    ResyncNewColumns,
}

/// Problems at either end, in their own words: the kind says what is at
/// fault, the table and column where.
impl Problems {
    fn end(
        &mut self,
        kind: ProblemKind,
        table: &str,
        column: &str,
        message: String,
    ) -> Result<(), Stop> {
        self.at_the_ends(Problem {
            kind: kind as i32,
            table: table.to_owned(),
            column: column.to_owned(),
            message,
            ..Default::default()
        })
    }

    fn source(&mut self, table: &str, e: &SourceError) -> Result<(), Stop> {
        let (kind, column) = source_kind(e);
        self.end(kind, table, column, format!("source: {e}"))
    }
}

fn source_kind(e: &SourceError) -> (ProblemKind, &str) {
    let kind = match e {
        SourceError::InvalidConnectionString(_) => ProblemKind::InvalidRequest,
        SourceError::Unreachable { .. } | SourceError::Tls { .. } => ProblemKind::Unreachable,
        SourceError::AuthFailed { .. } | SourceError::DatabaseMissing { .. } => {
            ProblemKind::Credentials
        }
        SourceError::WalLevel { .. } => ProblemKind::WalLevel,
        SourceError::NoReplicationPrivilege { .. } => ProblemKind::ReplicationPrivilege,
        SourceError::TableMissing { .. } => ProblemKind::TableMissing,
        SourceError::NotATable { .. }
        | SourceError::UnloggedTable { .. }
        | SourceError::NoSelectPrivilege { .. } => ProblemKind::TableNotReplicable,
        SourceError::NoPrimaryKey { .. }
        | SourceError::PartitionedWithoutKey { .. }
        | SourceError::ReplicaIdentityFullWithoutKey { .. }
        | SourceError::ReplicaIdentityNothing { .. } => ProblemKind::NoKey,
        SourceError::UnsupportedType { column, .. } => {
            return (ProblemKind::UnsupportedType, column);
        }
        _ => ProblemKind::SourceServer,
    };
    (kind, "")
}

/// A table of the pipe that is a partition of another of its tables.
fn overlap_problem(names: &[QualifiedName], child: usize, root: usize) -> Option<Problem> {
    let (c, r) = (names.get(child)?.canonical(), names.get(root)?.canonical());
    Some(Problem {
        kind: ProblemKind::TableNotReplicable as i32,
        table: c.clone(),
        message: format!(
            "{c} is a partition of {r}, which the pipe also replicates: its changes arrive \
             through {r} (publish_via_partition_root), so {c} on its own would never change; \
             list only one of them"
        ),
        ..Default::default()
    })
}

/// The partition-tree check over all of a pipe's tables (an UpdatePipe
/// checks only the added ones otherwise).
pub(super) async fn partition_overlaps(
    config: &PipeConfig,
    secrets: &PipeSecrets,
    found: &mut Problems,
) -> Result<(), Stop> {
    let Some(src) = &config.source else {
        return Ok(());
    };
    let names = match source_tables(config) {
        Ok(names) => names,
        Err(e) => return found.end(ProblemKind::InvalidRequest, "", "", e.0),
    };
    let pg = match source::connect(&src.connection_string, secrets.source_password.as_deref()).await
    {
        Ok(pg) => pg,
        Err(e) => return found.end(source_kind(&e).0, "", "", format!("source: {e}")),
    };
    match source::partition_overlaps(&pg, &names).await {
        Ok(pairs) => match pairs.first() {
            Some(&(c, r)) => match overlap_problem(&names, c, r) {
                Some(p) => found.at_the_ends(p),
                None => Ok(()),
            },
            None => Ok(()),
        },
        Err(e) => found.end(source_kind(&e).0, "", "", format!("source: {e}")),
    }
}

fn sink_kind(e: &SinkError) -> ProblemKind {
    match e {
        SinkError::InvalidUrl { .. } => ProblemKind::InvalidRequest,
        SinkError::Unreachable { .. } | SinkError::Tls { .. } => ProblemKind::Unreachable,
        SinkError::Auth { .. } => ProblemKind::Credentials,
        _ => ProblemKind::Destination,
    }
}

/// Connects to both ends and checks `config` for `purpose`.
/// `config.source` or `config.destination` absent (invalid in the request)
/// skips that end; `config.tables` holds the valid table entries only.
pub(super) async fn run(
    config: &PipeConfig,
    secrets: &PipeSecrets,
    purpose: Purpose,
    found: &mut Problems,
) -> Result<(), Stop> {
    // Tables described without a problem, for the destination checks.
    let mut described: Vec<(usize, TableReport)> = Vec::new();
    if let Some(src) = &config.source {
        described = check_source(config, &src.connection_string, secrets, purpose, found).await?;
    }
    let Some(dst) = &config.destination else {
        return Ok(());
    };
    let ch = match ChSink::for_destination(dst, secrets.destination_password.as_deref()) {
        Ok(ch) => ch,
        Err(e) => return found.end(sink_kind(&e), "", "", format!("destination: {e}")),
    };
    if let Err(e) = ch.ping().await {
        return found.end(sink_kind(&e), "", "", format!("destination: {e}"));
    }
    if purpose != Purpose::Create {
        return Ok(());
    }
    for (i, report) in described {
        let Some(cfg) = config.tables.get(i) else {
            continue;
        };
        match ch
            .check_existing(&cfg.destination_table, &report.table)
            .await
        {
            Ok(_) => {}
            Err(SinkError::Schema(m)) => found.end(
                ProblemKind::DestinationTable,
                &cfg.source_table,
                "",
                format!(
                    "destination table {:?} exists and does not fit {}: {m}; \
                     drop it or pick another destination_table",
                    cfg.destination_table, cfg.source_table
                ),
            )?,
            Err(e) => found.end(
                sink_kind(&e),
                &cfg.source_table,
                "",
                format!("destination: {e}"),
            )?,
        }
    }
    Ok(())
}

/// Source checks; returns the tables (by index in `config.tables`) that
/// were described without a problem.
async fn check_source(
    config: &PipeConfig,
    conn: &str,
    secrets: &PipeSecrets,
    purpose: Purpose,
    found: &mut Problems,
) -> Result<Vec<(usize, TableReport)>, Stop> {
    let pg = match source::connect(conn, secrets.source_password.as_deref()).await {
        Ok(pg) => pg,
        Err(e) => {
            found.source("", &e)?;
            return Ok(Vec::new());
        }
    };
    match source::server_problems(&pg).await {
        Ok((_, problems)) => {
            for p in &problems {
                found.source("", p)?;
            }
        }
        Err(e) => {
            found.source("", &e)?;
            return Ok(Vec::new());
        }
    }
    let names = match source_tables(config) {
        Ok(n) => n,
        Err(e) => {
            found.end(ProblemKind::InvalidRequest, "", "", e.0)?;
            return Ok(Vec::new());
        }
    };
    match source::partition_overlaps(&pg, &names).await {
        Ok(pairs) => {
            for (child, root) in pairs {
                if let Some(p) = overlap_problem(&names, child, root) {
                    found.at_the_ends(p)?;
                }
            }
        }
        Err(e) => found.source("", &e)?,
    }
    let reports = match source::describe_table_problems(&pg, &names).await {
        Ok(r) => r,
        Err(e) => {
            found.source("", &e)?;
            return Ok(Vec::new());
        }
    };
    // Every table's description problems first, then ORDER BY and types,
    // as CreatePipe always reported them.
    let mut usable = Vec::new();
    for (i, (cfg, report)) in config.tables.iter().zip(reports).enumerate() {
        match report {
            Err(e) => found.source(&cfg.source_table, &e)?,
            Ok(mut r) => {
                // An excluded column's type does not matter.
                r.problems.retain(|p| {
                    !matches!(p, source::SourceError::UnsupportedType { column, .. }
                        if cfg.exclude_columns.contains(column))
                });
                for p in &r.problems {
                    found.source(&cfg.source_table, p)?;
                }
                usable.push((i, r));
            }
        }
    }
    let mut clean = Vec::new();
    for (i, mut r) in usable {
        let Some(cfg) = config.tables.get(i) else {
            continue;
        };
        let before = found.list.len();
        for col in &r.table.generated_columns {
            found.warn(Problem {
                kind: ProblemKind::GeneratedColumn as i32,
                table: cfg.source_table.clone(),
                column: col.clone(),
                message: format!(
                    "column {col:?} of {} is a stored generated column: it is left out of the \
                     ClickHouse table, because logical replication sends generated columns \
                     only from PostgreSQL 18 on (publish_generated_columns); compute it in \
                     ClickHouse if you need it (e.g. a view over the table)",
                    cfg.source_table
                ),
                ..Default::default()
            });
        }
        for col in &cfg.order_by {
            if !r.all_columns.iter().any(|c| c == col) {
                found.end(
                    ProblemKind::OrderByColumn,
                    &cfg.source_table,
                    col,
                    format!(
                        "order_by of {} names column {col:?}, which {}; its columns are: {}",
                        cfg.source_table,
                        if r.table.generated_columns.contains(col) {
                            "is a generated column, not replicated before PostgreSQL 18"
                        } else {
                            "the table does not have"
                        },
                        r.all_columns.join(", ")
                    ),
                )?;
            }
        }
        // ReplacingMergeTree deduplicates by the sorting key: without every
        // key column in it, rows with different keys would collapse into one
        // (otherwise only found when the tables are created, after setup).
        if !cfg.order_by.is_empty() && r.problems.is_empty() {
            for &k in &r.table.key {
                let Some(key_col) = r.table.columns.get(k) else {
                    continue;
                };
                if !cfg.order_by.contains(&key_col.name) {
                    found.end(
                        ProblemKind::OrderByColumn,
                        &cfg.source_table,
                        &key_col.name,
                        format!(
                            "order_by of {} lacks key column {:?}: it must include every primary key \
                             (or replica identity) column, or rows with different keys would be \
                             merged into one; add {:?} to order_by",
                            cfg.source_table, key_col.name, key_col.name
                        ),
                    )?;
                }
            }
        }
        // A new pipe's excluded and renamed columns must exist (a typo would
        // replicate the column); a resync's source may have dropped them.
        let strict = purpose != Purpose::Resync && r.problems.is_empty();
        match columns::replicated(i, &r.table, cfg, strict, repr_fits) {
            // The destination checks compare ClickHouse with what is
            // replicated, under the destination names.
            Ok(view) => r.table = view.dest,
            Err(problems) => {
                // A kept unsupported column was reported above, by type.
                for p in problems.into_iter().filter(|p| !p.unsupported_type) {
                    found.at_the_ends(Problem {
                        kind: ProblemKind::Column as i32,
                        table: cfg.source_table.clone(),
                        column: p.column,
                        message: p.message,
                        field: p.field,
                        ..Default::default()
                    })?;
                }
            }
        }
        // (Unsupported types were reported with the table's description.)
        for col in r
            .table
            .columns
            .iter()
            .filter(|c| c.pg_type != PgType::Unsupported)
        {
            if let Err(e) = crate::sink::clickhouse_type(col) {
                found.end(
                    ProblemKind::UnsupportedType,
                    &cfg.source_table,
                    &col.name,
                    format!(
                        "column {:?} of {} cannot be replicated: {e}",
                        col.name, cfg.source_table
                    ),
                )?;
            }
        }
        if r.problems.is_empty() && found.list.len() == before {
            clean.push((i, r));
        }
    }
    Ok(clean)
}
