//! Step `swap` (a resync only): soft deletes carried over from the
//! originals, `_resync` tables exchanged in, old data dropped.

use std::collections::HashMap;

use crate::domain::columns;
use crate::domain::step::Step;
use crate::failpoint;
use crate::proto::event::Payload;
use crate::proto::*;

use crate::engine::worker::{Ends, Result, Worker, table_uuid};

impl Worker {
    pub(in crate::engine) async fn swap(&mut self, ends: &Ends, pipe: &Pipe) -> Result<Pipe> {
        self.record(vec![
            Payload::StepStarted(StepStarted {
                step: Step::Swap.name().into(),
            }),
            Payload::SwapStarted(SwapStarted {}),
        ])
        .await?;
        // The column options of the incarnation that wrote the originals
        // name their columns.
        let old_tables = self
            .core
            .read(|pr| pr.config_of_live_tables(&pipe.resync_of).cloned())
            .map(|c| c.tables)
            .unwrap_or_default();
        for (prep, view) in pipe.prepared.iter().zip(&ends.views) {
            let table = &view.dest;
            let swapped =
                table_uuid(&ends.ch, &prep.destination_table).await? == prep.load_table_uuid;
            if swapped || !ends.ch.table_exists(&prep.destination_table).await? {
                continue;
            }
            let keys: Vec<String> = table
                .key
                .iter()
                .map(|&i| table.columns[i].name.clone())
                .collect();
            let renamed = match old_tables
                .iter()
                .find(|t| t.source_table == prep.source_table)
            {
                Some(old) => columns::renamed_since(view, old),
                None => HashMap::new(),
            };
            let rows = ends
                .ch
                .transfer_soft_deletes(&prep.destination_table, &prep.load_table, &keys, &renamed)
                .await?;
            self.record(vec![Payload::SoftDeletesTransferred(
                SoftDeletesTransferred {
                    source_table: prep.source_table.clone(),
                    rows,
                },
            )])
            .await?;
        }
        failpoint::hit(failpoint::SWAP_BEFORE_EXCHANGE).await;
        let mut names = Vec::new();
        for prep in &pipe.prepared {
            let current = table_uuid(&ends.ch, &prep.destination_table).await?;
            if current == prep.load_table_uuid {
                continue; // swapped before a crash
            }
            if current.is_empty() {
                // No original (a table added since): a rename is the swap.
                ends.ch
                    .rename_table(&prep.load_table, &prep.destination_table)
                    .await?;
            } else {
                ends.ch
                    .exchange_tables(&prep.destination_table, &prep.load_table)
                    .await?;
            }
            failpoint::hit(failpoint::SWAP_AFTER_EXCHANGE).await;
            names.push(prep.destination_table.clone());
        }
        let pipe = self
            .record(vec![Payload::TablesSwapped(TablesSwapped {
                destination_tables: names,
            })])
            .await?;
        failpoint::hit(failpoint::SWAP_BEFORE_DROP).await;
        drop_old_data(ends, &pipe).await?;
        Ok(pipe)
    }
}

/// Drops a swapped resync's old data, which now sits under `_resync`. Only
/// once the swap is recorded: before that the `_resync` tables may be the
/// new load.
pub(in crate::engine) async fn drop_old_data(ends: &Ends, pipe: &Pipe) -> Result<()> {
    for prep in &pipe.prepared {
        ends.ch.drop_table_if_exists(&prep.load_table).await?;
    }
    Ok(())
}
