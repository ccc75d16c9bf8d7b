//! Step `snapshot`: the parallel initial load from one exported snapshot,
//! its rows at version `C - 1` (`docs/architecture.md`).

use std::sync::Arc;

use crate::domain::step::Step;
use crate::failpoint;
use crate::model::Lsn;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::source::SnapshotExport;

use crate::engine::copy::{CopyPlan, Progress, copy_partitions};
use crate::engine::partitions;
use crate::engine::worker::{Ends, EngineError, Result, Worker};

impl Worker {
    pub(in crate::engine) async fn snapshot(&mut self, ends: &Ends, pipe: &Pipe) -> Result<Pipe> {
        let settings = pipe
            .config
            .as_ref()
            .and_then(|c| c.settings)
            .unwrap_or_default();
        let consistent: Lsn = pipe
            .consistent_lsn
            .parse()
            .map_err(|e: crate::model::LsnParseError| EngineError::Fatal(e.to_string()))?;
        let version = consistent.0.saturating_sub(1);
        // Partition plan for every table.
        let mut work = Vec::new();
        let mut plans = Vec::new();
        // Partitioned tables' leaves, listed before the snapshot is exported.
        let mut listed = Vec::new();
        for (prep, view) in pipe.prepared.iter().zip(&ends.views) {
            // A redo must not keep rows of an earlier, partial copy.
            ends.ch.truncate(&prep.load_table).await?;
            let copy =
                partitions::plan_copy(&ends.pg, prep, view, settings.snapshot_rows_per_partition)
                    .await?;
            plans.push(copy.plan);
            work.extend(copy.work);
            listed.extend(copy.listed);
        }
        let mut started = vec![
            Payload::StepStarted(StepStarted {
                step: Step::Snapshot.name().into(),
            }),
            Payload::SnapshotStarted(SnapshotStarted {
                tables: plans.clone(),
            }),
        ];
        started.extend(listed);
        self.record(started).await?;
        failpoint::hit(failpoint::SNAPSHOT_STARTED).await;

        let (export, snapshot_name) =
            SnapshotExport::begin(&ends.conn, ends.secrets.source_password.as_deref()).await?;
        let progress = Arc::new(Progress::new(&plans));
        let plan = CopyPlan {
            conn: ends.conn.clone(),
            password: ends.secrets.source_password.clone(),
            snapshot_name,
            ch: ends.ch.clone(),
            version,
            parallelism: settings.snapshot_parallelism,
            failpoint: failpoint::SNAPSHOT_PARTITION_DONE,
        };
        let copied = copy_partitions(&self.facts(), plan, work, Arc::clone(&progress)).await;
        let _ = export.finish().await;
        copied?;
        let mut done: Vec<Payload> = progress.events();
        for plan in &plans {
            done.push(Payload::SnapshotTableCompleted(SnapshotTableCompleted {
                source_table: plan.source_table.clone(),
                rows: progress.rows(&plan.source_table),
            }));
        }
        done.push(Payload::SnapshotCompleted(SnapshotCompleted {}));
        self.record(done).await
    }
}
