//! Step `prepare_tables`: the destination tables (or a resync's `_resync`
//! tables) created, their UUIDs recorded for the swap.

use crate::domain::columns;
use crate::domain::names;
use crate::domain::step::Step;
use crate::failpoint;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::{CreateMode, SinkError};

use crate::engine::worker::{Ends, EngineError, Result, Worker, table_uuid};

impl Worker {
    pub(in crate::engine) async fn prepare_tables(
        &mut self,
        ends: &Ends,
        pipe: &Pipe,
    ) -> Result<Pipe> {
        self.record(vec![Payload::StepStarted(StepStarted {
            step: Step::PrepareTables.name().into(),
        })])
        .await?;
        let resync = !pipe.resync_of.is_empty();
        let mut prepared = Vec::new();
        for (cfg, view) in Self::table_configs(pipe).iter().zip(&ends.views) {
            // ClickHouse sees the replicated columns under their
            // destination names.
            let table = &view.dest;
            let order_by = columns::dest_order_by(cfg, view);
            let load_table = if resync {
                names::resync_table(&cfg.destination_table)
            } else {
                cfg.destination_table.clone()
            };
            let mode = if resync {
                CreateMode::OrReplace
            } else {
                CreateMode::IfNotExists
            };
            ends.ch
                .create_table(&load_table, table, &order_by, mode)
                .await
                .map_err(|e| match e {
                    SinkError::Schema(m) => EngineError::Fatal(m),
                    other => other.into(),
                })?;
            let uuid = table_uuid(&ends.ch, &load_table).await?;
            prepared.push(PreparedTable {
                source_table: cfg.source_table.clone(),
                destination_table: cfg.destination_table.clone(),
                load_table,
                order_by,
                load_table_uuid: uuid,
                generated_columns: view.source.generated_columns.clone(),
            });
        }
        failpoint::hit(failpoint::PREPARE_AFTER_CREATE).await;
        self.record(vec![Payload::TablesPrepared(TablesPrepared {
            tables: prepared,
        })])
        .await
    }
}
