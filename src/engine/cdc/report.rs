//! The CDC loop's progress: a `CdcProgress` event for the batches written
//! in the last few seconds, and one now and then while nothing is written
//! (lag, position). Both measure
//! the slot's lag with the same query ([`Worker::slot_lag`]).

use std::time::Instant;

use crate::model::Lsn;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::{failpoint, source};

use crate::engine::copy::PROGRESS_EVERY;
use crate::engine::worker::{Ends, Result, Worker};

use super::{CdcReport, Session};

/// Where the slot stands against the server's WAL.
struct SlotLag {
    /// The slot's confirmed position.
    confirmed: Lsn,
    /// WAL bytes written since that position.
    bytes: u64,
}

impl Worker {
    /// Records `batch` with the drained `counts`, its rows and the slot
    /// lag, measured again only when `lag` is older than PROGRESS_EVERY (two
    /// queries a batch would slow small batches down).
    pub(super) async fn report_batch(
        &mut self,
        ends: &Ends,
        slot: &str,
        progress: &mut CdcReport,
        mut batch: CdcProgress,
    ) -> Result<()> {
        let lag = &mut progress.lag;
        if lag.at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
            lag.bytes = self.slot_lag(ends, slot).await?.bytes;
            lag.at = Some(Instant::now());
        }
        batch.lag_bytes = lag.bytes;
        let mut tables: Vec<TableChangeCounts> = progress.counts.drain().map(|(_, c)| c).collect();
        tables.sort_by(|a, b| a.source_table.cmp(&b.source_table));
        batch.rows = tables
            .iter()
            .map(|c| c.inserted + c.updated + c.deleted)
            .sum();
        batch.tables = tables;
        self.record(vec![Payload::CdcProgress(batch)]).await?;
        Ok(())
    }

    /// Records the batches written since the last CdcProgress event, then
    /// confirms them to the server. Confirming only what is recorded keeps
    /// the history exact: after a crash, pause or restart, what was written
    /// but not recorded is streamed again (re-writing it is harmless: same
    /// versions) and counted once; what is recorded is not streamed again
    /// (CDC resumes at the log's last position).
    pub(super) async fn record_history(&mut self, ends: &Ends, s: &mut Session) -> Result<()> {
        let Session {
            slot,
            reader,
            progress,
            ..
        } = s;
        if let Some(history) = progress.history.take() {
            self.report_batch(ends, slot, progress, history).await?;
        }
        if let Some(end) = progress.written_end.take() {
            failpoint::hit(failpoint::CDC_BEFORE_ADVANCE).await;
            // ClickHouse has every row of these transactions.
            reader.confirm(end);
        }
        progress.last_report = Instant::now();
        Ok(())
    }

    /// Records the position and lag while no batch is written (when they
    /// changed), with the counts not reported yet.
    pub(super) async fn report_cdc(
        &mut self,
        ends: &Ends,
        slot: &str,
        progress: &mut CdcReport,
    ) -> Result<()> {
        progress.last_report = Instant::now();
        let SlotLag {
            confirmed,
            bytes: lag,
        } = self.slot_lag(ends, slot).await?;
        // What ClickHouse has: the last flushed transaction's end, or the
        // slot's position once an idle keepalive moved it further.
        let flushed: Lsn = progress.last_lsn.parse().unwrap_or_default();
        let lsn = confirmed.max(flushed).to_string();
        let p = self.pipe()?;
        if progress.counts.is_empty() && p.last_lsn == lsn && p.lag_bytes == lag {
            return Ok(());
        }
        let tables = progress.counts.drain().map(|(_, c)| c).collect();
        self.record(vec![Payload::CdcProgress(CdcProgress {
            lsn,
            lag_bytes: lag,
            tables,
            ..Default::default()
        })])
        .await?;
        Ok(())
    }

    /// The slot's lag, measured now (and set as the lag metric). Bounded in
    /// time: a query connection that stopped answering (the network
    /// dropping packets) is a lost connection the worker retries, not a
    /// CDC loop stuck for good.
    async fn slot_lag(&self, ends: &Ends, slot: &str) -> Result<SlotLag> {
        let measure = async {
            let info = source::slot_info(&ends.pg, slot).await?;
            let wal = source::current_wal_lsn(&ends.pg).await?;
            Ok::<_, source::SourceError>((info, wal))
        };
        let (info, wal) = source::bounded(measure, |reason| source::SourceError::ConnectionLost {
            context: format!("measuring the lag of slot {slot:?}"),
            reason,
        })
        .await?;
        let confirmed = info.map(|i| i.confirmed_flush).unwrap_or_default();
        let bytes = wal.0.saturating_sub(confirmed.0);
        self.core.metrics().set_cdc_lag_bytes(&self.name, bytes);
        Ok(SlotLag { confirmed, bytes })
    }
}
