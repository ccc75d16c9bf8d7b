//! Where the CDC loop sends each relation's changes: a [`Route`] per
//! relation OID, held with the tables' descriptions and the loads running
//! beside CDC in [`Routes`].

use std::collections::HashMap;

use crate::domain::columns::Replicated;
use crate::domain::validate;
use crate::model::{Row, SourceTable};
use crate::proto::*;
use crate::sink::{ApplyTo, Change, RowLookup};
use crate::source;

use super::super::worker::{Ends, EngineError, Result, Worker};
use super::tables::Loads;

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
        changes: Vec<Change>,
    ) -> Result<()> {
        let side = self.loads.side(oid, &ends.pg, &self.described);
        let to = ApplyTo {
            dest: &route.dest,
            table: &route.view,
            order_by: &route.sort_key,
            also: side.also,
        };
        ends.ch
            .apply_changes(&to, changes, side.source.as_ref())
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

/// The source, for unchanged TOAST values of rows ClickHouse does not have
/// yet (see `Side`).
#[derive(Clone, Copy)]
pub(in crate::engine) struct SourceRows<'a> {
    pub(in crate::engine) pg: &'a tokio_postgres::Client,
    /// The table's replicated columns under their source names.
    pub(in crate::engine) table: &'a SourceTable,
}

impl RowLookup for SourceRows<'_> {
    type Error = EngineError;

    async fn fill(&self, row: &mut Row) -> Result<()> {
        source::fill_from_source(self.pg, self.table, row).await?;
        Ok(())
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
