//! The per-table machine of the CDC loop, run between batches: tables
//! removed from the pipe stop, added ones and table resyncs are routed and
//! loaded beside CDC ([`Loads`](super::routes::Loads)), finished table resyncs are swapped in,
//! partitions attached to a partitioned table are loaded.

use std::collections::HashMap;

use tracing::Instrument;

use crate::domain::columns::{self, Replicated};
use crate::domain::names;
use crate::domain::validate;
use crate::failpoint;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::types::repr_fits;
use crate::sink::{CreateMode, SinkError};
use crate::source;

use crate::engine::worker::{Ends, EngineError, Result, Worker, column_error, table_uuid};
use crate::engine::{partitions, table_load};

use super::routes::{Route, Routes, Side, TableColumns, canonical};

impl Worker {
    /// Brings the CDC loop in line with the pipe's table list (between
    /// batches, so no batch is half-routed): removed tables stop, added
    /// tables and table resyncs start their loads, finished table resyncs
    /// are swapped in.
    pub(super) async fn sync_tables(&mut self, ends: &Ends, routes: &mut Routes) -> Result<()> {
        let pipe = self.pipe()?;
        let configs = Self::table_configs(&pipe);
        let wanted: std::collections::HashSet<&str> =
            configs.iter().map(|c| c.source_table.as_str()).collect();

        // Removed tables: unpublished, unrouted, their loads stopped.
        let gone: Vec<u32> = routes
            .by_oid
            .iter()
            .filter(|(_, r)| !wanted.contains(r.source.as_str()))
            .map(|(oid, _)| *oid)
            .collect();
        if !gone.is_empty() {
            self.publish(ends, &pipe).await?;
            for oid in gone {
                let Some(r) = routes.by_oid.remove(&oid) else {
                    continue;
                };
                tracing::info!(table = %r.source, "table removed from the pipe");
                // Its load and loads of its partitions.
                routes.loads.restart(oid);
                if let Some(scratch) = r.side.also {
                    ends.ch.drop_table_if_exists(&scratch).await?;
                }
            }
        }

        // Finished loads: an error ends the CDC run (the worker retries and
        // the load is redone).
        let finished: Vec<String> = routes
            .loads
            .running
            .iter()
            .filter(|(_, load)| load.handle.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in finished {
            let Some(load) = routes.loads.running.remove(&name) else {
                continue;
            };
            if let Some(r) = routes.by_oid.get_mut(&load.oid) {
                r.side.loading = false;
            }
            match load.handle.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(join) if join.is_cancelled() => {}
                Err(join) => {
                    return Err(EngineError::Fatal(format!(
                        "the load of table {name} crashed: {join}"
                    )));
                }
            }
        }
        let pipe = self.pipe()?;

        for cfg in &configs {
            let name = cfg.source_table.as_str();
            if routes.loads.running.contains_key(name) {
                continue;
            }
            let Some(stats) = pipe.tables.iter().find(|t| t.source_table == name) else {
                continue;
            };
            let job = pipe.table_loads.iter().find(|t| t.source_table == name);
            // A failed table being rebuilt: routed again (from the source's
            // current structure), to its `_resync` table only.
            let failed = !stats.error.is_empty()
                && matches!(
                    stats.state(),
                    TableState::ResyncPending | TableState::Resyncing
                );
            if failed
                && !routes.by_oid.values().any(|r| r.source == name)
                && !self.route_rebuilt(ends, &pipe, cfg, routes).await?
            {
                continue;
            }
            match stats.state() {
                TableState::Replicating | TableState::Failed => {}
                TableState::LoadPending | TableState::Loading => {
                    self.start_add(ends, &pipe, cfg, job, routes).await?;
                }
                TableState::ResyncPending => {
                    self.start_table_resync(ends, &pipe, name, None, routes)
                        .await?;
                }
                TableState::Resyncing => match job {
                    Some(job) if stats.snapshot_done => {
                        self.swap_table(ends, job, routes).await?;
                    }
                    Some(job) => {
                        let job = job.clone();
                        self.start_table_resync(ends, &pipe, name, Some(job), routes)
                            .await?;
                    }
                    None => {}
                },
            }
            if failed {
                routes.rebuild_only(name);
            }
        }
        // Routes follow the projection: a rebuilt failed table writes to its
        // destination again once swapped in.
        let pipe = self.pipe()?;
        for r in routes.by_oid.values_mut() {
            let replicating = pipe
                .tables
                .iter()
                .any(|t| t.source_table == r.source && t.state() == TableState::Replicating);
            if let Some(p) = pipe.prepared.iter().find(|p| p.source_table == r.source)
                && replicating
                && r.dest != p.destination_table
            {
                r.dest.clone_from(&p.destination_table);
            }
        }
        Ok(())
    }

    /// Partitioned tables that replicate: leaves attached since they were
    /// listed are loaded beside CDC, detached ones recorded (see
    /// `partitions`).
    pub(super) async fn sync_partitions(&mut self, ends: &Ends, routes: &mut Routes) -> Result<()> {
        let pipe = self.pipe()?;
        let Routes { by_oid, loads } = routes;
        for (oid, route) in by_oid.iter_mut() {
            if !route.table.described.partitioned {
                continue;
            }
            let name = &route.source;
            let key = format!("{name} (partitions)");
            let replicating =
                |t: &&TableStats| t.source_table == *name && t.state() == TableState::Replicating;
            let (Some(stats), Some(prepared)) = (
                pipe.tables.iter().find(replicating),
                pipe.prepared.iter().find(|p| p.source_table == *name),
            ) else {
                continue;
            };
            if loads.running.contains_key(&key) {
                continue;
            }
            let leaves = partitions::check_leaves(&self.facts(), &ends.pg, *oid, stats).await?;
            if leaves.is_empty() {
                continue;
            }
            let job = table_load::LeafLoad {
                table: self.load_job(ends, &pipe, prepared.clone(), route.table.view.clone()),
                leaves,
            };
            // Rows of the leaves not loaded yet fill unchanged TOAST values
            // from the source, as for an added table.
            route.side.loading = true;
            let run = table_load::load_leaves(job);
            loads.start(key, tokio::spawn(run.in_current_span()), *oid);
        }
        Ok(())
    }

    /// Sets the publication to exactly the pipe's tables.
    async fn publish(&self, ends: &Ends, pipe: &Pipe) -> Result<()> {
        let names =
            super::super::source_tables(pipe.config.as_ref().unwrap_or(&PipeConfig::default()))
                .map_err(|e| EngineError::Fatal(e.0))?;
        source::ensure_publication(&ends.pg, &pipe.publication_name, &names).await?;
        Ok(())
    }

    /// Describes one table of the config (it may be newer than `ends`)
    /// with its replicated view.
    async fn describe(&self, ends: &Ends, pipe: &Pipe, source_table: &str) -> Result<TableColumns> {
        let configs = Self::table_configs(pipe);
        let Some((index, config)) = configs
            .into_iter()
            .enumerate()
            .find(|(_, c)| c.source_table == source_table)
        else {
            return Err(EngineError::Fatal(format!(
                "table {source_table} is not part of the pipe"
            )));
        };
        let table = match ends.tables.iter().find(|t| canonical(t) == source_table) {
            Some(t) => t.clone(),
            None => {
                let q = validate::qualified_name("source_table", source_table)
                    .map_err(|e| EngineError::Fatal(e.0))?;
                source::describe_tables(&ends.pg, &[q])
                    .await?
                    .pop()
                    .ok_or_else(|| {
                        EngineError::Fatal(format!("source table {source_table} is gone"))
                    })?
            }
        };
        let view = columns::replicated(index, &table, &config, false, repr_fits)
            .map_err(|p| column_error(&table, &p))?;
        Ok(TableColumns {
            described: table,
            view,
            config,
            index,
        })
    }

    fn load_job(
        &self,
        ends: &Ends,
        pipe: &Pipe,
        prepared: PreparedTable,
        view: Replicated,
    ) -> table_load::LoadJob {
        table_load::LoadJob {
            facts: self.facts(),
            conn: ends.conn.clone(),
            password: ends.secrets.source_password.clone(),
            ch: ends.ch.clone(),
            settings: pipe
                .config
                .as_ref()
                .and_then(|c| c.settings)
                .unwrap_or_default(),
            prepared,
            view,
        }
    }

    /// An added table: created (if missing), published and routed, then
    /// loaded beside CDC.
    async fn start_add(
        &mut self,
        ends: &Ends,
        pipe: &Pipe,
        cfg: &TableConfig,
        job: Option<&PreparedTable>,
        routes: &mut Routes,
    ) -> Result<()> {
        let cols = self.describe(ends, pipe, &cfg.source_table).await?;
        let dest_view = cols.view.dest.clone();
        let prepared = match job {
            Some(job) => job.clone(),
            None => {
                let order_by = columns::dest_order_by(cfg, &cols.view);
                ends.ch
                    .create_table(
                        &cfg.destination_table,
                        &dest_view,
                        &order_by,
                        CreateMode::IfNotExists,
                    )
                    .await
                    .map_err(|e| match e {
                        SinkError::Schema(m) => EngineError::Fatal(m),
                        other => other.into(),
                    })?;
                // Like a pipe's own snapshot, the load starts from an empty
                // table: rows of an earlier replication of it (removed, then
                // added again) may have been deleted at the source since.
                // Not routed yet, so no CDC change is lost; a redo before
                // TableLoadStarted empties it again, and the new snapshot
                // holds whatever CDC had written.
                ends.ch.truncate(&cfg.destination_table).await?;
                PreparedTable {
                    source_table: cfg.source_table.clone(),
                    destination_table: cfg.destination_table.clone(),
                    load_table: cfg.destination_table.clone(),
                    load_table_uuid: table_uuid(&ends.ch, &cfg.destination_table).await?,
                    order_by,
                    generated_columns: cols.view.source.generated_columns.clone(),
                }
            }
        };
        // Published and routed before the load's temporary slot exists (see
        // table_load): every later commit reaches the table through CDC.
        self.publish(ends, pipe).await?;
        let oid = cols.described.oid;
        let view = cols.view.clone();
        routes.insert(
            oid,
            Route {
                source: prepared.source_table.clone(),
                table: cols,
                dest: prepared.destination_table.clone(),
                sort_key: prepared.order_by.clone(),
                side: Side::default(),
            },
        );
        if let Some(r) = routes.by_oid.get_mut(&oid) {
            r.side.loading = true;
        }
        failpoint::hit(failpoint::TABLE_ADD_ROUTED).await;
        tracing::info!(table = %prepared.source_table, "loading added table beside CDC");
        let name = prepared.source_table.clone();
        let run = table_load::run(self.load_job(ends, pipe, prepared, view));
        routes
            .loads
            .start(name, tokio::spawn(run.in_current_span()), oid);
        Ok(())
    }

    /// A table resync: `<destination>_resync` created (first time only: a
    /// redo keeps the CDC changes it already holds), written by CDC like the
    /// original, loaded beside CDC.
    async fn start_table_resync(
        &mut self,
        ends: &Ends,
        pipe: &Pipe,
        name: &str,
        job: Option<PreparedTable>,
        routes: &mut Routes,
    ) -> Result<()> {
        let Some((&oid, route)) = routes.by_oid.iter().find(|(_, r)| r.source == name) else {
            return Ok(());
        };
        let (dest_view, view) = (route.view().clone(), route.table.view.clone());
        let prepared = match job {
            Some(job) => {
                if !ends.ch.table_exists(&job.load_table).await? {
                    // Swapped and cleaned up before the swap was recorded.
                    return self.finish_swap(ends, &job, 0, routes, oid).await;
                }
                job
            }
            None => {
                let Some(orig) = pipe.prepared.iter().find(|p| p.source_table == name) else {
                    return Ok(());
                };
                let load = names::resync_table(&orig.destination_table);
                ends.ch
                    .create_table(&load, &dest_view, &orig.order_by, CreateMode::OrReplace)
                    .await
                    .map_err(|e| match e {
                        SinkError::Schema(m) => EngineError::Fatal(m),
                        other => other.into(),
                    })?;
                PreparedTable {
                    source_table: orig.source_table.clone(),
                    destination_table: orig.destination_table.clone(),
                    load_table_uuid: table_uuid(&ends.ch, &load).await?,
                    load_table: load,
                    order_by: orig.order_by.clone(),
                    generated_columns: view.source.generated_columns.clone(),
                }
            }
        };
        if let Some(r) = routes.by_oid.get_mut(&oid) {
            r.side.also = Some(prepared.load_table.clone());
        }
        failpoint::hit(failpoint::TABLE_RESYNC_ROUTED).await;
        tracing::info!(table = %name, load_table = %prepared.load_table, "resyncing table beside CDC");
        let run = table_load::run(self.load_job(ends, pipe, prepared, view));
        routes
            .loads
            .start(name.to_owned(), tokio::spawn(run.in_current_span()), oid);
        Ok(())
    }

    /// The end of a table resync, between CDC batches: soft-deleted rows of
    /// the original carried over, tables exchanged, old data dropped.
    async fn swap_table(
        &mut self,
        ends: &Ends,
        job: &PreparedTable,
        routes: &mut Routes,
    ) -> Result<()> {
        let Some((&oid, route)) = routes
            .by_oid
            .iter()
            .find(|(_, r)| r.source == job.source_table)
        else {
            return Ok(());
        };
        let table = route.view();
        let mut moved = 0;
        if table_uuid(&ends.ch, &job.destination_table).await? != job.load_table_uuid {
            let keys: Vec<String> = table
                .key
                .iter()
                .map(|&i| table.columns[i].name.clone())
                .collect();
            moved = ends
                .ch
                .transfer_soft_deletes(
                    &job.destination_table,
                    &job.load_table,
                    &keys,
                    &HashMap::new(),
                )
                .await?;
            failpoint::hit(failpoint::TABLE_SWAP_BEFORE_EXCHANGE).await;
            ends.ch
                .exchange_tables(&job.destination_table, &job.load_table)
                .await?;
        }
        failpoint::hit(failpoint::TABLE_SWAP_AFTER_EXCHANGE).await;
        self.finish_swap(ends, job, moved, routes, oid).await
    }

    async fn finish_swap(
        &mut self,
        ends: &Ends,
        job: &PreparedTable,
        moved: u64,
        routes: &mut Routes,
        oid: u32,
    ) -> Result<()> {
        // Only once the destination carries the load's UUID is the
        // `_resync` name the old data.
        if table_uuid(&ends.ch, &job.destination_table).await? == job.load_table_uuid {
            ends.ch.drop_table_if_exists(&job.load_table).await?;
        }
        if let Some(r) = routes.by_oid.get_mut(&oid) {
            r.side.also = None;
        }
        ends.ch.forget_schema(&job.destination_table);
        self.record(vec![Payload::TableSwapped(TableSwapped {
            source_table: job.source_table.clone(),
            destination_table: job.destination_table.clone(),
            soft_deletes_transferred: moved,
        })])
        .await?;
        tracing::info!(table = %job.source_table, soft_deletes = moved, "table resync swapped in");
        Ok(())
    }
}
