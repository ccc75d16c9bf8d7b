//! Where the CDC loop sends each relation's changes: a [`Route`] per
//! relation OID (its table's description, destination and [`Side`]), held
//! with the loads running beside CDC in [`Routes`].

use std::collections::HashMap;

use crate::domain::columns::Replicated;
use crate::domain::validate;
use crate::model::{Row, SourceTable};
use crate::proto::*;
use crate::sink::{ApplyTo, Change, RowLookup};
use crate::source;

use crate::engine::worker::{Ends, EngineError, Result, Worker};

/// A table as the source describes it (every column) and how it is
/// replicated: what CDC rows are projected with and Relation messages are
/// compared to.
#[derive(Debug, Clone)]
pub(in crate::engine) struct TableColumns {
    /// Every column, as the source describes the table.
    pub(in crate::engine) described: SourceTable,
    /// The columns replicated (exclude_columns, rename_columns applied).
    pub(in crate::engine) view: Replicated,
    /// The table's entry in the pipe's config, as the projection folded it
    /// (column renames included).
    pub(in crate::engine) config: TableConfig,
    /// Position of the table in the pipe's config (for error fields).
    pub(in crate::engine) index: usize,
}

/// Where the CDC loop sends one relation's changes.
#[derive(Debug, Clone)]
pub(in crate::engine) struct Route {
    /// The table's canonical `schema.table`, as in the pipe's config.
    pub(in crate::engine) source: String,
    /// The table as the source describes it and as it is replicated: rows
    /// are projected onto its view as they are decoded, Relation messages
    /// are compared to its description.
    pub(in crate::engine) table: TableColumns,
    /// The ClickHouse table written.
    pub(in crate::engine) dest: String,
    /// The ClickHouse ORDER BY (empty: the source key), for tombstones.
    pub(in crate::engine) sort_key: Vec<String>,
    /// Where else its changes go while it is loaded beside CDC.
    pub(in crate::engine) side: Side,
}

/// A routed table's part in a load running beside CDC.
#[derive(Debug, Clone, Default)]
pub(in crate::engine) struct Side {
    /// The `_resync` table of a table resync (written like the original).
    pub(in crate::engine) also: Option<String>,
    /// An added table's load (or the load of partitions attached to a
    /// partitioned table) has not finished: unchanged TOAST values of rows
    /// it has not written yet are read from the source.
    pub(in crate::engine) loading: bool,
}

impl Route {
    /// The replicated columns under their destination names: what
    /// ClickHouse has.
    pub(in crate::engine) fn view(&self) -> &SourceTable {
        &self.table.view.dest
    }

    /// Writes a relation's rows to its table (and to a table resync's
    /// `_resync` table).
    pub(in crate::engine) async fn write(&self, ends: &Ends, changes: Vec<Change>) -> Result<()> {
        let to = ApplyTo {
            dest: &self.dest,
            table: self.view(),
            order_by: &self.sort_key,
            also: self.side.also.as_deref(),
        };
        // A partitioned table too: rows of a partition attached since the
        // last leaf check are not in ClickHouse yet.
        let lookup =
            (self.side.loading || self.table.described.partitioned).then_some(SourceRows {
                pg: &ends.pg,
                table: &self.table.view.source,
            });
        ends.ch.apply_changes(&to, changes, lookup.as_ref()).await
    }
}

/// The CDC loop's routing state, changed only between transactions: the
/// pipe's tables, then tables being loaded beside CDC (matched by name:
/// adds and removals reorder the lists).
#[derive(Default)]
pub(in crate::engine) struct Routes {
    pub(in crate::engine) by_oid: HashMap<u32, Route>,
    /// Loads running beside CDC.
    pub(in crate::engine) loads: Loads,
}

impl Routes {
    /// The pipe's tables at the start of CDC (a failed table is skipped
    /// until a table resync rebuilds it).
    pub(in crate::engine) fn at_start(ends: &Ends, pipe: &Pipe) -> Routes {
        let mut routes = Routes::default();
        let configs = Worker::table_configs(pipe);
        for (index, ((t, v), config)) in
            ends.tables.iter().zip(&ends.views).zip(configs).enumerate()
        {
            let name = canonical(t);
            if pipe
                .tables
                .iter()
                .any(|s| s.source_table == name && !s.error.is_empty())
            {
                continue;
            }
            if let Some(p) = pipe.prepared.iter().find(|p| p.source_table == name) {
                routes.by_oid.insert(
                    t.oid,
                    Route {
                        source: name.clone(),
                        table: TableColumns {
                            described: t.clone(),
                            view: v.clone(),
                            config,
                            index,
                        },
                        dest: p.destination_table.clone(),
                        sort_key: p.order_by.clone(),
                        side: Side::default(),
                    },
                );
            }
        }
        routes
    }

    /// Routes a table, keeping its part in a load already under way.
    pub(in crate::engine) fn insert(&mut self, oid: u32, mut route: Route) {
        if let Some(old) = self.by_oid.remove(&oid) {
            route.side = old.side;
        }
        self.by_oid.insert(oid, route);
    }

    /// A failed table being rebuilt by a table resync: its CDC changes go to
    /// the `_resync` table only (the old table may not fit the source's new
    /// types; it is swapped out at the end).
    pub(in crate::engine) fn rebuild_only(&mut self, name: &str) {
        let Some(route) = self.by_oid.values_mut().find(|r| r.source == name) else {
            return;
        };
        if let Some(load) = route.side.also.take() {
            route.dest = load;
        }
    }
}

/// The source, for unchanged TOAST values of rows ClickHouse does not have
/// yet (see [`Side::loading`]).
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

/// A load running beside the CDC loop.
pub(in crate::engine) struct RunningLoad {
    pub(in crate::engine) handle: tokio::task::JoinHandle<Result<u64>>,
    /// The OID of the table loaded.
    pub(in crate::engine) oid: u32,
}

/// Loads of single tables running beside the CDC loop (aborted with it).
#[derive(Default)]
pub(in crate::engine) struct Loads {
    /// By source table (or `<table> (partitions)`).
    pub(in crate::engine) running: HashMap<String, RunningLoad>,
}

impl Loads {
    pub(super) fn start(
        &mut self,
        name: String,
        handle: tokio::task::JoinHandle<Result<u64>>,
        oid: u32,
    ) {
        self.running.insert(name, RunningLoad { handle, oid });
    }

    /// Aborts the loads of a table (its own and its partitions'); the next
    /// routing sync starts them again if still wanted.
    pub(in crate::engine) fn restart(&mut self, oid: u32) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(_, load)| load.oid == oid)
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(load) = self.running.remove(&name) {
                load.handle.abort();
            }
        }
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        for load in self.running.values() {
            load.handle.abort();
        }
    }
}
