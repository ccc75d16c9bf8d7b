//! Column changes at the source, seen by CDC in pgoutput Relation messages,
//! applied to ClickHouse while the pipe keeps running.
//!
//! A Relation message names each column and its type, not its attnum, so
//! the message is matched to the catalog (which has the attnums) and
//! compared with the table as pgpipe knew it, attnum by attnum: a column
//! that keeps its attnum under another name was renamed, one that is gone
//! was dropped, a new attnum was added.
//!
//! What cannot be applied (a narrowing or incompatible type change, a key
//! change, a volatile default, ...) fails only that table: `TableFailed`,
//! CDC skips the table, the others go on; a table resync repairs it.
//!
//! Each ALTER is safe to run twice (`IF [NOT] EXISTS`, or skipped when
//! `system.columns` shows it done); events are recorded after the ALTERs
//! of a Relation message, so a crash in between redoes them harmlessly.

use std::collections::HashMap;

use crate::domain::columns;
use crate::model::{ColumnRepr, Lsn, Relation, SourceColumn};
use crate::proto::event::Payload;
use crate::proto::{SchemaChangeKind, SchemaChanged, TableFailed};
use crate::sink::types::Kind;
use crate::sink::types::repr_fits;
use crate::sink::{Change, ColumnAlter};
use crate::source::{self, AddedValue};

use super::cdc::{Route, Routes, Side, TableColumns};
use super::worker::{Ends, EngineError, Result, Worker};

pub(super) mod diff;

use diff::same_shape;
use diff::{ColumnChange, RelationDiff, diff, kind_of_ch_type, widens};

/// Comment of a ClickHouse column kept after its source column was dropped.
const DROPPED_MARK: &str = "pgpipe: dropped at the source; kept with its old values";

/// Whether `t` already has the added column (an ALTER redone after a crash
/// or a restart): Ok(true) when it has it with the same type; a different
/// type, or a column kept from an earlier DROP COLUMN, fails the table
/// (its old rows would keep the old values).
async fn already_added(
    ends: &Ends,
    t: &str,
    col: &SourceColumn,
    source_table: &str,
) -> Result<bool, Failure> {
    let existing = ends.ch.columns(t).await?.unwrap_or_default();
    let Some(have) = existing.iter().find(|c| c.name == col.name) else {
        return Ok(false);
    };
    let comments = ends.ch.column_comments(t).await?;
    let kind = Kind::for_column(col).ok();
    let fits =
        kind.is_some_and(|k| have.ch_type == k.ch_type(!col.not_null && k.can_be_nullable()));
    if comments.get(&col.name).map(String::as_str) == Some(DROPPED_MARK) || !fits {
        return Err(Failure::Table(format!(
            "column {:?} was added to {source_table}, but ClickHouse table {t} already has a \
             column {:?} ({}, kept after an earlier DROP COLUMN?): its old rows would keep \
             the old values",
            col.name, col.name, have.ch_type
        )));
    }
    Ok(true)
}

/// Checks the table's new shape against its column options (renames
/// folded in, as the projection will) before anything is altered.
fn fits_options(cols: &TableColumns, d: &RelationDiff, source_table: &str) -> Result<(), String> {
    let mut cfg = cols.config.clone();
    for c in &d.changes {
        if let ColumnChange::Renamed { old, new } = c {
            let to = cfg
                .rename_columns
                .get(&old.name)
                .cloned()
                .unwrap_or_else(|| new.name.clone());
            crate::domain::projection::fold_rename(
                &mut cfg,
                &SchemaChanged {
                    column: old.name.clone(),
                    new_column: new.name.clone(),
                    destination_column: to,
                    ..Default::default()
                },
            );
        }
    }
    columns::replicated(cols.index, &d.now, &cfg, false, repr_fits)
        .map(|_| ())
        .map_err(|problems| {
            let list: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            format!(
                "the columns of source table {source_table} no longer fit the pipe's column \
                 options ({})",
                list.join("; ")
            )
        })
}

/// Why a table stopped, with the way out.
fn resync_hint(what: &str, pipe: &str) -> String {
    format!(
        "; the other tables keep replicating: resync this table to rebuild it from the \
         source's current structure (ResyncPipe with tables: [{what:?}], or \
         pgpipe resync {pipe} --table {what})"
    )
}

/// The table a Relation message's column changes are applied to.
struct AlterTarget<'a> {
    /// Its description and column options before the change.
    cols: &'a TableColumns,
    /// The ClickHouse table.
    dest: &'a str,
    /// A table resync's `_resync` table, altered alike.
    also: Option<&'a str>,
    /// Its canonical `schema.table` (in events and messages).
    source_table: &'a str,
    /// Where the Relation message was read (recorded with the changes).
    lsn: Lsn,
}

/// The outcome of applying a Relation message's changes.
struct Applied {
    events: Vec<SchemaChanged>,
}

impl Worker {
    /// A Relation message: the same columns are fine; otherwise the changes
    /// are applied to ClickHouse (see the module docs), or the table fails.
    pub(super) async fn check_relation(
        &mut self,
        ends: &Ends,
        routes: &mut Routes,
        rel: &Relation,
        lsn: Lsn,
        pending: &mut HashMap<u32, Vec<Change>>,
    ) -> Result<()> {
        let Some(route) = routes.by_oid.get(&rel.oid) else {
            return Ok(());
        };
        let cols = &route.table;
        if same_shape(&cols.described, rel) {
            return Ok(());
        }
        // Rows of the old shape go out before the table changes.
        if let Some(rows) = pending.remove(&rel.oid) {
            route.write(ends, rows).await?;
        }
        let (dest, source_table) = (route.dest.clone(), route.source.clone());
        let cols = cols.clone();
        let known = cols.described.clone();
        let q = crate::domain::validate::QualifiedName {
            schema: known.schema.clone(),
            table: known.name.clone(),
        };
        let fresh = match source::describe_tables(&ends.pg, &[q]).await {
            Ok(mut t) => t.pop(),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                let reason = format!("{e}{}", resync_hint(&source_table, &self.name));
                return self
                    .fail_table(routes, pending, rel.oid, &source_table, reason, lsn)
                    .await;
            }
        };
        let Some(fresh) = fresh else {
            return Ok(());
        };
        let outcome = match diff(&known, &fresh, rel) {
            Ok(d) => match fits_options(&cols, &d, &source_table) {
                Err(reason) => Err(Failure::Table(reason)),
                Ok(()) => {
                    let also = route.side.also.clone();
                    let target = AlterTarget {
                        cols: &cols,
                        dest: &dest,
                        also: also.as_deref(),
                        source_table: &source_table,
                        lsn,
                    };
                    self.apply_changes(ends, &target, &d).await.map(|a| (d, a))
                }
            },
            Err(reason) => Err(Failure::Table(reason)),
        };
        let (d, applied) = match outcome {
            Ok(x) => x,
            Err(Failure::Engine(e)) => return Err(e),
            Err(Failure::Table(reason)) => {
                let reason = format!("{reason}{}", resync_hint(&source_table, &self.name));
                return self
                    .fail_table(routes, pending, rel.oid, &source_table, reason, lsn)
                    .await;
            }
        };
        crate::failpoint::hit(crate::failpoint::SCHEMA_CHANGE_BEFORE_RECORD).await;
        let pipe = if applied.events.is_empty() {
            self.pipe()?
        } else {
            self.record(
                applied
                    .events
                    .into_iter()
                    .map(Payload::SchemaChanged)
                    .collect(),
            )
            .await?
        };
        // The config as the projection folded it (renames).
        let config = Self::table_configs(&pipe)
            .into_iter()
            .find(|c| c.source_table == source_table)
            .unwrap_or_else(|| cols.config.clone());
        let index = cols.index;
        let view = match columns::replicated(index, &d.now, &config, false, repr_fits) {
            Ok(v) => v,
            Err(problems) => {
                let list: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
                let reason = format!(
                    "after a change of its columns, source table {source_table} no longer fits \
                     the pipe's column options ({}){}",
                    list.join("; "),
                    resync_hint(&source_table, &self.name)
                );
                return self
                    .fail_table(routes, pending, rel.oid, &source_table, reason, lsn)
                    .await;
            }
        };
        ends.ch.forget_schema(&dest);
        if let Some(entry) = routes.by_oid.get_mut(&rel.oid) {
            if let Some(also) = &entry.side.also {
                ends.ch.forget_schema(also);
            }
            entry.table.described = d.now;
            entry.table.view = view;
            entry.table.config = config;
        }
        Ok(())
    }

    /// At the start of CDC, brings each routed ClickHouse table in line
    /// with the source's current columns (the worker's baseline): changes
    /// made while pgpipe was not reading (paused, stopped), or whose ALTER
    /// a crash interrupted, are applied and recorded like those seen in a
    /// Relation message (columns added, types widened; columns no longer at
    /// the source are left as they are). A column missing in ClickHouse
    /// while another is no longer at the source could be a rename or a drop
    /// and an add: the table fails rather than guess.
    pub(super) async fn reconcile_at_start(
        &mut self,
        ends: &Ends,
        routes: &mut Routes,
    ) -> Result<()> {
        let mut oids: Vec<u32> = routes.by_oid.keys().copied().collect();
        oids.sort_unstable();
        for oid in oids {
            let Some(Route {
                dest,
                source: source_table,
                table: cols,
                ..
            }) = routes.by_oid.get(&oid).cloned()
            else {
                continue;
            };
            match self
                .reconcile_table(ends, &cols, &dest, &source_table)
                .await
            {
                Ok(events) if events.is_empty() => {}
                Ok(events) => {
                    self.record(events.into_iter().map(Payload::SchemaChanged).collect())
                        .await?;
                }
                Err(Failure::Engine(e)) => return Err(e),
                Err(Failure::Table(reason)) => {
                    let reason = format!("{reason}{}", resync_hint(&source_table, &self.name));
                    let mut pending = HashMap::new();
                    self.fail_table(
                        routes,
                        &mut pending,
                        oid,
                        &source_table,
                        reason,
                        Lsn::default(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn reconcile_table(
        &self,
        ends: &Ends,
        cols: &TableColumns,
        dest: &str,
        source_table: &str,
    ) -> Result<Vec<SchemaChanged>, Failure> {
        let Some(have) = ends.ch.columns(dest).await? else {
            return Ok(Vec::new());
        };
        let have: Vec<_> = have
            .into_iter()
            .filter(|c| !c.name.starts_with(columns::RESERVED_PREFIX))
            .collect();
        let view = &cols.view;
        let missing: Vec<(usize, &SourceColumn)> = view
            .dest
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !have.iter().any(|h| h.name == c.name))
            .collect();
        let comments = ends.ch.column_comments(dest).await?;
        let gone: Vec<&str> = have
            .iter()
            .filter(|h| !view.dest.columns.iter().any(|c| c.name == h.name))
            .filter(|h| comments.get(&h.name).map(String::as_str) != Some(DROPPED_MARK))
            .map(|h| h.name.as_str())
            .collect();
        let mut events = Vec::new();
        let event = |kind: SchemaChangeKind, column: &str| SchemaChanged {
            source_table: source_table.to_owned(),
            kind: kind as i32,
            column: column.to_owned(),
            ..Default::default()
        };
        if !missing.is_empty() && !gone.is_empty() {
            let names: Vec<&str> = missing.iter().map(|(_, c)| c.name.as_str()).collect();
            return Err(Failure::Table(format!(
                "while pgpipe was not reading, ClickHouse columns {gone:?} of {dest} left the \
                 source and {names:?} appeared: renamed, or dropped and added, pgpipe cannot \
                 tell"
            )));
        }
        // Columns no longer at the source are left as they are (they may be
        // the user's own): a drop while pgpipe was not reading keeps them.
        for (i, col) in missing {
            let Some(src) = view.source.columns.get(i) else {
                continue;
            };
            let default =
                match source::added_column_value(&ends.pg, view.source.oid, src.attnum).await? {
                    AddedValue::Missing(v) => Some(v),
                    AddedValue::Null => None,
                    AddedValue::Unknown(expr) => {
                        return Err(Failure::Table(format!(
                            "column {:?} was added to {source_table} with default {expr}, which \
                         Postgres computed for each existing row: pgpipe cannot know the values",
                            src.name
                        )));
                    }
                };
            let sql = ends
                .ch
                .add_column(dest, col, default.as_deref())
                .await
                .map_err(schema_failure)?;
            let mut ev = event(SchemaChangeKind::AddColumn, &src.name);
            ev.new_type = src.type_name.clone();
            ev.destination_column = col.name.clone();
            ev.clickhouse = format!("{sql} (found at start)");
            events.push(ev);
        }
        for (src, col) in view.source.columns.iter().zip(&view.dest.columns) {
            let Some(h) = have.iter().find(|h| h.name == col.name) else {
                continue;
            };
            let Ok(to) = Kind::for_column(col) else {
                continue;
            };
            if h.ch_type == to.ch_type(false) || h.ch_type == to.ch_type(true) {
                continue;
            }
            let nullable = h.ch_type.starts_with("Nullable(");
            let bare = h
                .ch_type
                .strip_prefix("Nullable(")
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(&h.ch_type);
            let widened = kind_of_ch_type(bare).is_some_and(|from| widens(&from, &to));
            if !widened {
                return Err(Failure::Table(format!(
                    "column {:?} of {source_table} is {} at the source now, which ClickHouse's \
                     {} cannot become without loss",
                    src.name, src.type_name, h.ch_type
                )));
            }
            let ty = to.ch_type(nullable && to.can_be_nullable());
            let sql = ends
                .ch
                .alter_column(
                    dest,
                    ColumnAlter::Modify {
                        column: &col.name,
                        ch_type: &ty,
                    },
                )
                .await
                .map_err(schema_failure)?;
            let mut ev = event(SchemaChangeKind::RetypeColumn, &src.name);
            ev.old_type = h.ch_type.clone();
            ev.new_type = src.type_name.clone();
            ev.destination_column = col.name.clone();
            ev.clickhouse = format!("{sql} (found at start)");
            events.push(ev);
        }
        ends.ch.forget_schema(dest);
        Ok(events)
    }

    /// Routes a failed table again for its rebuild, described from the
    /// source's current structure under its (folded) config. False when
    /// the table cannot be rebuilt as configured: it is failed again with
    /// the reason.
    pub(super) async fn route_rebuilt(
        &mut self,
        ends: &Ends,
        pipe: &crate::proto::Pipe,
        cfg: &crate::proto::TableConfig,
        routes: &mut Routes,
    ) -> Result<bool> {
        let name = &cfg.source_table;
        let Some(prep) = pipe.prepared.iter().find(|p| &p.source_table == name) else {
            return Ok(false);
        };
        let Some(index) = Self::table_configs(pipe)
            .iter()
            .position(|c| &c.source_table == name)
        else {
            return Ok(false);
        };
        let q = crate::domain::validate::qualified_name("source_table", name)
            .map_err(|e| EngineError::Fatal(e.0))?;
        let fresh = match source::describe_tables(&ends.pg, &[q]).await {
            Ok(mut t) => t.pop(),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => return self.refail(name, e.to_string()).await,
        };
        let Some(fresh) = fresh else {
            return Ok(false);
        };
        let view = match columns::replicated(index, &fresh, cfg, false, repr_fits) {
            Ok(v) => v,
            Err(problems) => {
                let list: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
                return self.refail(name, list.join("; ")).await;
            }
        };
        let oid = fresh.oid;
        routes.insert(
            oid,
            Route {
                source: name.clone(),
                table: TableColumns {
                    described: fresh,
                    view,
                    config: cfg.clone(),
                    index,
                },
                dest: prep.destination_table.clone(),
                sort_key: prep.order_by.clone(),
                side: Side::default(),
            },
        );
        Ok(true)
    }

    /// A failed table whose rebuild cannot start: failed again, saying why.
    async fn refail(&mut self, name: &str, why: String) -> Result<bool> {
        let reason = format!(
            "the table resync of {name} cannot start: {why}; fix the source table or resync it \
             with new column options (ResyncPipe replace_column_options, pgpipe resync {} \
             --table {name} --exclude/--rename)",
            self.name
        );
        self.record(vec![Payload::TableFailed(TableFailed {
            source_table: name.to_owned(),
            reason,
            lsn: String::new(),
        })])
        .await?;
        Ok(false)
    }

    /// Records `TableFailed` and stops routing the table's changes.
    async fn fail_table(
        &mut self,
        routes: &mut Routes,
        pending: &mut HashMap<u32, Vec<Change>>,
        oid: u32,
        source_table: &str,
        reason: String,
        lsn: Lsn,
    ) -> Result<()> {
        tracing::warn!(table = %source_table, %reason, "table failed");
        self.record(vec![Payload::TableFailed(TableFailed {
            source_table: source_table.to_owned(),
            reason,
            lsn: lsn.to_string(),
        })])
        .await?;
        routes.by_oid.remove(&oid);
        pending.remove(&oid);
        routes.loads.restart(oid);
        Ok(())
    }

    /// Applies each change to the destination table (and to the table
    /// resync's `_resync` table, `also`): the events to record.
    async fn apply_changes(
        &self,
        ends: &Ends,
        target: &AlterTarget<'_>,
        d: &RelationDiff,
    ) -> Result<Applied, Failure> {
        let &AlterTarget {
            cols,
            dest,
            also,
            source_table,
            lsn,
        } = target;
        let cfg = &cols.config;
        let drop_dropped = self
            .pipe()?
            .config
            .and_then(|c| c.settings)
            .is_some_and(|s| s.drop_dropped_columns);
        let sorting = ends.ch.sorting_key(dest).await?.unwrap_or_default();
        let excluded = |name: &str| cfg.exclude_columns.iter().any(|x| x == name);
        let dest_name = |name: &str| -> String { columns::Replicated::dest_name(cfg, name).into() };
        let targets: Vec<&str> = std::iter::once(dest).chain(also).collect();
        let mut events = Vec::new();
        for change in &d.changes {
            let mut ev = SchemaChanged {
                source_table: source_table.to_owned(),
                lsn: lsn.to_string(),
                ..change.event()
            };
            // An excluded column is in no ClickHouse table, whatever changed.
            if excluded(&ev.column) {
                ev.clickhouse = "nothing: the column is in exclude_columns".into();
            } else {
                match change {
                    ColumnChange::Added(col) => {
                        let name = dest_name(&col.name);
                        let value =
                            source::added_column_value(&ends.pg, d.now.oid, col.attnum).await?;
                        let default = match &value {
                            AddedValue::Missing(v) => Some(v.as_slice()),
                            AddedValue::Null => None,
                            AddedValue::Unknown(expr) => {
                                return Err(Failure::Table(format!(
                                    "column {:?} was added to {source_table} with default \
                                     {expr}, which Postgres computed for each existing row \
                                     (a volatile default such as now() or random(), or the \
                                     table was rewritten since): pgpipe cannot know the values \
                                     the existing rows got",
                                    col.name
                                )));
                            }
                        };
                        let added = SourceColumn {
                            name: name.clone(),
                            ..col.clone()
                        };
                        let mut done = Vec::new();
                        for t in &targets {
                            if already_added(ends, t, &added, source_table).await? {
                                done.push(format!("{t}: already added"));
                                continue;
                            }
                            done.push(
                                ends.ch
                                    .add_column(t, &added, default)
                                    .await
                                    .map_err(schema_failure)?,
                            );
                        }
                        ev.destination_column = name;
                        ev.clickhouse = done.join("; ");
                    }
                    ColumnChange::Dropped(col) => {
                        let name = dest_name(&col.name);
                        if sorting.contains(&name) {
                            return Err(Failure::Table(format!(
                                "column {:?} was dropped from {source_table}, but ClickHouse \
                                 column {name:?} is part of the table's ORDER BY",
                                col.name
                            )));
                        }
                        if drop_dropped {
                            let mut done = Vec::new();
                            for t in &targets {
                                done.push(ends.ch.alter_column(t, ColumnAlter::Drop(&name)).await?);
                            }
                            ev.clickhouse = done.join("; ");
                        } else {
                            let ty = ch_type(ends, dest, &name).await?;
                            // Marked, so a column added later under
                            // this name is not taken for it.
                            for t in &targets {
                                let mark = ColumnAlter::Comment {
                                    column: &name,
                                    comment: DROPPED_MARK,
                                };
                                ends.ch.alter_column(t, mark).await?;
                            }
                            ev.destination_column = name.clone();
                            ev.clickhouse = if ty.contains("Nullable(") {
                                format!("column {name:?} kept; new rows read NULL")
                            } else {
                                format!(
                                    "column {name:?} kept; new rows read its default \
                                     ({ty} is not Nullable)"
                                )
                            };
                        }
                    }
                    ColumnChange::Renamed { old, new } => {
                        if let Some(to) = cfg.rename_columns.get(&old.name) {
                            ev.destination_column = to.clone();
                            ev.clickhouse = format!(
                                "nothing: rename_columns maps it to {to:?}, now under its new name"
                            );
                        } else if sorting.contains(&old.name) {
                            ev.destination_column = old.name.clone();
                            ev.clickhouse = format!(
                                "column {:?} kept (ClickHouse cannot rename ORDER BY columns); \
                             rename_columns maps {:?} to it",
                                old.name, new.name
                            );
                        } else {
                            let mut done = Vec::new();
                            for t in &targets {
                                let existing = ends.ch.columns(t).await?.unwrap_or_default();
                                let has = |n: &str| existing.iter().any(|c| c.name == n);
                                match (has(&old.name), has(&new.name)) {
                                    (true, true) => {
                                        return Err(Failure::Table(format!(
                                            "column {:?} of {source_table} was renamed to {:?}, but \
                                         ClickHouse table {t} already has a column {:?}",
                                            old.name, new.name, new.name
                                        )));
                                    }
                                    // Renamed before a crash.
                                    (false, true) => done.push(format!("{t}: already renamed")),
                                    _ => done.push({
                                        let rename = ColumnAlter::Rename {
                                            from: &old.name,
                                            to: &new.name,
                                        };
                                        ends.ch.alter_column(t, rename).await?
                                    }),
                                }
                            }
                            ev.destination_column = new.name.clone();
                            ev.clickhouse = done.join("; ");
                        }
                    }
                    ColumnChange::Retyped { old, new } => {
                        let name = dest_name(&new.name);
                        let refuse = |why: &str| {
                            Failure::Table(format!(
                                "column {:?} of {source_table} changed type from {} to {}: {why}",
                                new.name, old.type_name, new.type_name
                            ))
                        };
                        // A column_types choice holds across the change (e.g. String
                        // for any numeric stays String).
                        let repr = cfg
                            .column_types
                            .get(&new.name)
                            .and_then(|t| t.parse::<ColumnRepr>().ok());
                        let (Ok(from), Ok(to)) = (
                            Kind::for_type(&old.pg_type, repr),
                            Kind::for_type(&new.pg_type, repr),
                        ) else {
                            return Err(refuse("pgpipe cannot replicate the new type"));
                        };
                        ev.destination_column = name.clone();
                        if from == to {
                            ev.clickhouse =
                                format!("nothing: both map to {} in ClickHouse", to.ch_type(false));
                        } else if !widens(&from, &to) {
                            return Err(refuse(&format!(
                                "not every value of the new type fits ClickHouse's {} (only \
                                 widening changes are applied in place)",
                                from.ch_type(false)
                            )));
                        } else if sorting.contains(&name) {
                            return Err(refuse(
                                "the column is part of the ClickHouse table's ORDER BY, whose \
                                 types ClickHouse cannot change",
                            ));
                        } else {
                            let mut done = Vec::new();
                            for t in &targets {
                                let current = ch_type(ends, t, &name).await?;
                                let nullable = current.contains("Nullable(");
                                let ty = to.ch_type(nullable && to.can_be_nullable());
                                if current == ty {
                                    done.push(format!("{t}: already {ty}"));
                                } else {
                                    done.push(
                                        ends.ch
                                            .alter_column(
                                                t,
                                                ColumnAlter::Modify {
                                                    column: &name,
                                                    ch_type: &ty,
                                                },
                                            )
                                            .await
                                            .map_err(schema_failure)?,
                                    );
                                }
                            }
                            ev.clickhouse = done.join("; ");
                        }
                    }
                }
            }
            tracing::info!(table = %source_table, change = ?ev.kind(), column = %ev.column, clickhouse = %ev.clickhouse, "schema change applied");
            events.push(ev);
        }
        Ok(Applied { events })
    }
}

/// The ClickHouse type of `column` in `table`; empty when either is missing.
async fn ch_type(
    ends: &Ends,
    table: &str,
    column: &str,
) -> std::result::Result<String, crate::sink::SinkError> {
    let columns = ends.ch.columns(table).await?.unwrap_or_default();
    Ok(columns
        .into_iter()
        .find(|c| c.name == column)
        .map(|c| c.ch_type)
        .unwrap_or_default())
}

/// Why applying a change stopped.
enum Failure {
    /// The change cannot be applied: the table fails.
    Table(String),
    /// Anything else (e.g. ClickHouse unreachable): as for any step.
    Engine(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Engine(e)
    }
}

impl From<crate::sink::SinkError> for Failure {
    fn from(e: crate::sink::SinkError) -> Self {
        Failure::Engine(e.into())
    }
}

impl From<crate::source::SourceError> for Failure {
    fn from(e: crate::source::SourceError) -> Self {
        Failure::Engine(e.into())
    }
}

/// A DDL ClickHouse refused (not a transient error) fails the table.
fn schema_failure(e: crate::sink::SinkError) -> Failure {
    if e.is_transient() {
        Failure::Engine(e.into())
    } else {
        Failure::Table(format!("ClickHouse refused the change: {e}"))
    }
}
