//! Where the CDC loop sends each relation's changes: a [`Route`] per
//! relation OID, held with the tables' descriptions and the loads running
//! beside CDC in [`Routes`].

use std::collections::HashMap;

use crate::domain::columns::Replicated;
use crate::domain::validate;
use crate::model::{Cell, Row, SourceTable};
use crate::proto::*;
use crate::sink::ChSink;
use crate::source;

use super::super::worker::{Ends, Result, Worker};
use super::tables::{Loads, Side};

/// A table as the source describes it (every column) and how it is
/// replicated: what CDC rows are projected with and Relation messages are
/// compared to.
#[derive(Clone)]
pub(in crate::engine) struct TableColumns {
    pub(in crate::engine) described: SourceTable,
    pub(in crate::engine) view: Replicated,
    pub(in crate::engine) config: TableConfig,
    /// Position of the table in the pipe's config (for error fields).
    pub(in crate::engine) index: usize,
}

/// Each table's [`TableColumns`] by relation oid.
pub(in crate::engine) fn table_columns(ends: &Ends, pipe: &Pipe) -> HashMap<u32, TableColumns> {
    let configs = Worker::table_configs(pipe);
    ends.tables
        .iter()
        .zip(&ends.views)
        .zip(configs)
        .enumerate()
        .map(|(index, ((t, v), config))| {
            (
                t.oid,
                TableColumns {
                    described: t.clone(),
                    view: v.clone(),
                    config,
                    index,
                },
            )
        })
        .collect()
}

/// A decoded row (every source column) cut down to the replicated ones.
pub(in crate::engine) fn project_row(
    described: &HashMap<u32, TableColumns>,
    oid: u32,
    row: &Row,
) -> Row {
    match described.get(&oid) {
        Some(t) => t.view.project(row),
        None => row.clone(),
    }
}

/// Where the CDC loop sends one relation's changes.
#[derive(Debug, Clone)]
pub(in crate::engine) struct Route {
    /// The replicated columns under their source names: what ClickHouse
    /// has (rows are projected onto it as they are decoded).
    pub(in crate::engine) view: SourceTable,
    /// The ClickHouse table written.
    pub(in crate::engine) dest: String,
    /// The table's canonical `schema.table`, as in the pipe's config.
    pub(in crate::engine) source: String,
    /// The ClickHouse ORDER BY (empty: the source key), for tombstones.
    pub(in crate::engine) sort_key: Vec<String>,
}

/// The CDC loop's routing state, changed only between transactions: the
/// pipe's tables, then tables being loaded beside CDC (matched by name:
/// adds and removals reorder the lists).
#[derive(Default)]
pub(in crate::engine) struct Routes {
    pub(in crate::engine) by_oid: HashMap<u32, Route>,
    /// The source's description of each routed table.
    pub(in crate::engine) described: HashMap<u32, TableColumns>,
    /// Loads running beside CDC.
    pub(in crate::engine) loads: Loads,
}

impl Routes {
    /// Writes a relation's rows to its table (and to a table resync's
    /// `_resync` table).
    pub(in crate::engine) async fn write(
        &self,
        ends: &Ends,
        oid: u32,
        route: &Route,
        rows: Vec<(Row, u64, bool)>,
    ) -> Result<()> {
        let side = self.loads.side(oid, &ends.pg, &self.described);
        write_rows(
            &ends.ch,
            &route.dest,
            &route.view,
            &route.sort_key,
            rows,
            side,
        )
        .await
    }

    /// A failed table being rebuilt by a table resync: its CDC changes go to
    /// the `_resync` table only (the old table may not fit the source's new
    /// types; it is swapped out at the end).
    pub(in crate::engine) fn rebuild_only(&mut self, name: &str) {
        let Some((oid, route)) = self.by_oid.iter_mut().find(|(_, r)| r.source == name) else {
            return;
        };
        if let Some(load) = self.loads.also.remove(oid) {
            route.dest = load;
        }
    }
}

/// A described table's canonical `schema.table`, as in the pipe's config.
pub(in crate::engine) fn canonical(t: &SourceTable) -> String {
    validate::QualifiedName {
        schema: t.schema.clone(),
        table: t.name.clone(),
    }
    .canonical()
}

/// Writes one table's changes of a batch, in commit order: unchanged TOAST
/// values are filled from earlier rows or ClickHouse, then only the last
/// change per sorting key is sent (same-version rows would otherwise tie).
///
/// When `order_by` has columns outside the source key, a row's sorting key
/// can change while its source key stays, and a delete arrives with the key
/// alone: its tombstone would land under another sorting key and leave the
/// row live. So each change is preceded by a tombstone that copies the
/// key's previous row (from earlier in the batch or ClickHouse; none if the
/// key is new), and a delete is that copy.
async fn write_rows(
    ch: &ChSink,
    dest: &str,
    table: &SourceTable,
    order_by: &[String],
    rows: Vec<(Row, u64, bool)>,
    side: Side<'_>,
) -> Result<()> {
    let extra: Vec<usize> = order_by
        .iter()
        .filter_map(|name| table.columns.iter().position(|c| &c.name == name))
        .filter(|i| !table.key.contains(i))
        .collect();
    // (row, version, deleted, tombstone of a previous row that may not exist)
    let mut expanded: Vec<(Row, u64, bool, bool)> = Vec::with_capacity(rows.len());
    for (row, version, deleted) in rows {
        if extra.is_empty() {
            expanded.push((row, version, deleted, false));
            continue;
        }
        let previous: Row = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if table.key.contains(&i) {
                    c.clone()
                } else {
                    Cell::UnchangedToast
                }
            })
            .collect();
        if deleted {
            expanded.push((previous, version, true, false));
        } else {
            expanded.push((previous, version, true, true));
            expanded.push((row, version, false, false));
        }
    }
    let (mut cells, meta): (Vec<Row>, Vec<(u64, bool, bool)>) = expanded
        .into_iter()
        .map(|(r, v, d, t)| (r, (v, d, t)))
        .unzip();
    let mut keep_row = vec![true; cells.len()];
    if cells.iter().any(|r| r.contains(&Cell::UnchangedToast)) {
        if let (true, Some((pg, names))) = (extra.is_empty(), side.source) {
            // A table being loaded: rows the load has not written yet are
            // read from the source.
            let (_, missing) = ch.fill_from_previous(dest, table, &mut cells).await?;
            for (i, m) in missing.into_iter().enumerate() {
                if m.is_some() {
                    source::fill_from_source(pg, names, &mut cells[i]).await?;
                }
            }
        } else if extra.is_empty() {
            ch.fill_unchanged(dest, table, &mut cells).await?;
        } else {
            let (_, missing) = ch.fill_from_previous(dest, table, &mut cells).await?;
            for (i, m) in missing.into_iter().enumerate() {
                let Some(e) = m else { continue };
                match meta[i] {
                    // No previous row: nothing to bury.
                    (_, _, true) => keep_row[i] = false,
                    // A delete of a row ClickHouse never had: the key alone,
                    // as without a custom ORDER BY.
                    (_, true, false) => {
                        for c in cells[i].iter_mut() {
                            if *c == Cell::UnchangedToast {
                                *c = Cell::Null;
                            }
                        }
                    }
                    (_, false, false) => match side.source {
                        Some((pg, names)) => {
                            source::fill_from_source(pg, names, &mut cells[i]).await?;
                        }
                        None => return Err(e.into()),
                    },
                }
            }
        }
    }
    let mut last: HashMap<Vec<Cell>, usize> = HashMap::with_capacity(cells.len());
    for (i, row) in cells.iter().enumerate() {
        if !keep_row[i] {
            continue;
        }
        let key: Vec<Cell> = table
            .key
            .iter()
            .chain(&extra)
            .map(|&k| row.get(k).cloned().unwrap_or(Cell::Null))
            .collect();
        last.insert(key, i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    // A table being resynced gets the same rows in its `_resync` table.
    for target in std::iter::once(dest).chain(side.also) {
        let mut writer = ch.writer(target, table).await?;
        for &i in &keep {
            let (version, deleted, _) = meta[i];
            writer.write(&cells[i], version, deleted).await?;
        }
        writer.end().await?;
    }
    Ok(())
}
