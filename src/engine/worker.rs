//! One pipe incarnation at work: setup, table preparation, snapshot, (for a
//! resync) soft-delete transfer and swap, then CDC. This file holds the run
//! loop (retries, failure reports, connections); the steps are in
//! `engine/steps/`, CDC in `engine/cdc/`.
//!
//! Every step is recorded as an event before it starts and after it ends,
//! and the worker always starts from the first step the projection does not
//! show as done, so a crash (kill -9) anywhere resumes or safely redoes the
//! step:
//! - setup: the slot is dropped and created again if the crash came before
//!   `SetupCompleted`;
//! - tables: `CREATE ... IF NOT EXISTS` / `CREATE OR REPLACE` are idempotent;
//! - snapshot: a redo truncates the load tables and copies again from a new
//!   exported snapshot. The slot has not moved (CDC has not started), and the
//!   new snapshot is taken after its consistent point, so the version
//!   argument below still holds;
//! - soft-delete transfer copies only keys missing from the `_resync` table,
//!   so a repeat copies nothing twice;
//! - swap: each `_resync` table's UUID is recorded when it is created; a redo
//!   skips tables whose original name already carries that UUID;
//! - CDC: the slot is confirmed only past transactions ClickHouse has whole.
//!
//! Versions (why the snapshot/CDC hand-off neither misses nor doubles a
//! change) and what a crash in CDC replays: `docs/architecture.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::commands::Core;
use crate::domain::columns::{self, Replicated};
use crate::domain::step::Step;
use crate::model::SourceTable;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::sink::types::repr_fits;
use crate::sink::{ChSink, SinkError};
use crate::source::{self, SourceError};

use super::guard::Guard;
use super::steps::drop_old_data;
use crate::store::{LogError, PipeSecrets};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The incarnation was paused, deleted or replaced: stop quietly.
    #[error("stopped")]
    Stopped,
    /// Needs the user (usually a resync).
    #[error("{0}")]
    Fatal(String),
}

impl EngineError {
    fn is_transient(&self) -> bool {
        match self {
            EngineError::Source(e) => e.is_transient(),
            EngineError::Sink(e) => e.is_transient(),
            EngineError::Log(_) => true,
            EngineError::Stopped | EngineError::Fatal(_) => false,
        }
    }
}

pub(super) type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Runs an incarnation until it is stopped or fails for good.
pub async fn run(core: Arc<Core>, pipe_id: String) {
    let Some(pipe) = core.read(|p| p.by_id(&pipe_id).cloned()) else {
        return;
    };
    let span = tracing::info_span!("pipe", pipe = %pipe.name, pipe_id = %pipe.id);
    async move {
        let mut w = Worker {
            core,
            id: pipe_id,
            name: pipe.name.clone(),
            failing: None,
            step: Step::Setup,
            backoff: Duration::from_secs(1),
        };
        loop {
            let result = w.run_steps().await;
            let step = w.step;
            match result {
                Ok(()) | Err(EngineError::Stopped) => return,
                Err(e) if e.is_transient() => {
                    let backoff = w.backoff;
                    tracing::warn!(step = step.name(), error = %e, backoff_ms = backoff.as_millis() as u64, "step failed; retrying");
                    if w.report_failure(step.name(), &e.to_string(), true).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    w.backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(step = step.name(), error = %e, "pipe failed");
                    let _ = w.report_failure(step.name(), &e.to_string(), false).await;
                    return;
                }
            }
        }
    }
    .instrument(span)
    .await
}

pub(super) struct Worker {
    pub(super) core: Arc<Core>,
    pub(super) id: String,
    pub(super) name: String,
    /// The step whose failure was reported as retrying (to report recovery).
    failing: Option<String>,
    /// The step being run (named in failure events).
    step: Step,
    /// Delay before the next retry; reset once a step succeeds again.
    backoff: Duration,
}

/// Records facts about one incarnation; cloned into tasks that run beside
/// the worker (table loads).
#[derive(Clone)]
pub(super) struct Facts {
    pub core: Arc<Core>,
    pub id: String,
    pub name: String,
}

impl Facts {
    /// Appends facts about this incarnation, unless it stopped being active
    /// (then `Stopped`). Re-reads the stream version on a conflict: facts do
    /// not depend on what other commands did meanwhile.
    pub async fn record(&self, payloads: Vec<Payload>) -> Result<Pipe> {
        super::guard::record(&self.core, Guard::Active, &self.id, &self.name, &payloads)
            .await?
            .ok_or(EngineError::Stopped)
    }
}

/// Connections of one run of the steps.
pub(super) struct Ends {
    pub(super) pg: tokio_postgres::Client,
    pub(super) ch: ChSink,
    pub(super) conn: String,
    pub(super) secrets: PipeSecrets,
    pub(super) tables: Vec<SourceTable>,
    /// Per table (same order): the columns replicated, under their source
    /// and destination names (exclude_columns, rename_columns applied).
    pub(super) views: Vec<Replicated>,
}

impl Worker {
    pub(super) fn pipe(&self) -> Result<Pipe> {
        self.core
            .read(|p| p.by_id(&self.id).cloned())
            .ok_or(EngineError::Stopped)
    }

    pub(super) async fn record(&self, payloads: Vec<Payload>) -> Result<Pipe> {
        self.facts().record(payloads).await
    }

    pub(super) fn facts(&self) -> Facts {
        Facts {
            core: Arc::clone(&self.core),
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    async fn report_failure(&mut self, step: &str, reason: &str, retrying: bool) -> Result<()> {
        if retrying && self.failing.as_deref() == Some(step) {
            return Ok(());
        }
        self.failing = retrying.then(|| step.to_owned());
        // Decided again on a conflict: the slot health monitor appends too.
        let failed = Payload::PipeFailed(PipeFailed {
            step: step.into(),
            reason: reason.into(),
            retrying,
        });
        super::guard::record(
            &self.core,
            Guard::NotDeleted,
            &self.id,
            &self.name,
            &[failed],
        )
        .await?
        .map(|_| ())
        .ok_or(EngineError::Stopped)
    }

    pub(super) async fn recovered(&mut self) -> Result<()> {
        self.backoff = Duration::from_secs(1);
        if self.failing.take().is_some() {
            self.record(vec![Payload::PipeRecovered(PipeRecovered {})])
                .await?;
        }
        Ok(())
    }

    async fn connect(&self, pipe: &Pipe) -> Result<Ends> {
        let config = pipe.config.clone().unwrap_or_default();
        let secrets = self.core.secrets().get(&self.id)?;
        let src = config.source.clone().unwrap_or_default();
        let pg =
            source::connect(&src.connection_string, secrets.source_password.as_deref()).await?;
        let names = super::source_tables(&config).map_err(|e| EngineError::Fatal(e.0))?;
        let tables = source::describe_tables(&pg, &names).await?;
        let failed: Vec<&str> = pipe
            .tables
            .iter()
            .filter(|t| !t.error.is_empty())
            .map(|t| t.source_table.as_str())
            .collect();
        let views = replicated_views(&config.tables, &tables, &failed)?;
        let ch = super::sink_for(&config, &secrets)?;
        ch.ping().await?;
        Ok(Ends {
            pg,
            ch,
            conn: src.connection_string,
            secrets,
            tables,
            views,
        })
    }

    async fn run_steps(&mut self) -> Result<()> {
        let mut pipe = self.pipe()?;
        // Named if connecting fails.
        self.step = Step::first_open(&pipe);
        let ends = self.connect(&pipe).await?;
        let resync = !pipe.resync_of.is_empty();
        let mut swapped_now = false;
        loop {
            let step = Step::first_open(&pipe);
            self.step = step;
            let t = Instant::now();
            let next = match step {
                Step::Cdc => break,
                Step::Setup => self.setup(&ends).await?,
                Step::PrepareTables => self.prepare_tables(&ends, &pipe).await?,
                Step::Snapshot => self.snapshot(&ends, &pipe).await?,
                Step::Swap => {
                    swapped_now = true;
                    self.swap(&ends, &pipe).await?
                }
            };
            self.step_done(resync, t);
            if Step::first_open(&next) <= step {
                return Err(EngineError::Fatal(format!(
                    "step {step} ended without being recorded as done"
                )));
            }
            pipe = next;
        }
        if resync && !swapped_now && !pipe.cdc_started {
            // A crash came after the swap was recorded but maybe before the
            // old data was dropped.
            self.step = Step::Swap;
            drop_old_data(&ends, &pipe).await?;
        }
        self.step = Step::Cdc;
        if !pipe.cdc_started {
            pipe = self
                .record(vec![Payload::CdcStarted(CdcStarted {
                    start_lsn: pipe.consistent_lsn.clone(),
                })])
                .await?;
        }
        self.recovered().await?;
        self.cdc(ends, &pipe).await
    }

    /// The pipe's stream version in the projection (it moves with every
    /// event of the pipe, the CDC loop's own included).
    pub(super) fn stream_version(&self) -> u64 {
        self.core.read(|p| p.stream_version(&self.name))
    }

    /// Records how long the current step took, for a resync's steps only
    /// (a resumed step counts from its resumption).
    fn step_done(&self, resync: bool, started: Instant) {
        if resync {
            self.core
                .metrics()
                .set_resync_step(&self.name, self.step.name(), started.elapsed());
        }
    }

    pub(super) fn table_configs(pipe: &Pipe) -> Vec<TableConfig> {
        pipe.config
            .as_ref()
            .map(|c| c.tables.clone())
            .unwrap_or_default()
    }
}

/// The replicated view of every table of a config, in order. A failed
/// table (`failed`, not routed by CDC) whose columns no longer fit its
/// options gets an empty view instead of stopping the pipe.
fn replicated_views(
    configs: &[TableConfig],
    tables: &[SourceTable],
    failed: &[&str],
) -> Result<Vec<Replicated>> {
    configs
        .iter()
        .zip(tables)
        .enumerate()
        .map(
            |(i, (cfg, t))| match columns::replicated(i, t, cfg, false, repr_fits) {
                Ok(v) => Ok(v),
                Err(_) if failed.contains(&cfg.source_table.as_str()) => {
                    let empty = SourceTable {
                        columns: Vec::new(),
                        key: Vec::new(),
                        ..t.clone()
                    };
                    Ok(Replicated {
                        kept: Vec::new(),
                        source: empty.clone(),
                        dest: empty,
                    })
                }
                Err(p) => Err(column_error(t, &p)),
            },
        )
        .collect()
}

pub(super) fn column_error(
    table: &SourceTable,
    problems: &[columns::ColumnProblem],
) -> EngineError {
    let list: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    EngineError::Fatal(format!(
        "the columns of source table {}.{} no longer fit the pipe's column options ({}); \
         change the source table, or resync the pipe with new column options \
         (ResyncPipe replace_column_options, pgpipe resync --exclude/--rename)",
        table.schema,
        table.name,
        list.join("; ")
    ))
}

/// The ClickHouse UUID of a table ("" when it does not exist).
pub(super) async fn table_uuid(ch: &ChSink, table: &str) -> Result<String> {
    Ok(ch.table_uuid(table).await?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event_log::new_event;

    /// A deletion racing with the worker's appends: nothing of the
    /// incarnation may be recorded after its `PipeDeleted`. (Before the fix
    /// the status check and the stream version were read apart, and an
    /// append could land right after the deletion.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nothing_is_recorded_after_the_incarnation_is_deleted() {
        const ROUNDS: u64 = 150;
        const RECORDERS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = crate::server::open_core(dir.path().join("data"), false)
            .await
            .unwrap();
        for round in 0..ROUNDS {
            let name = format!("p{round}");
            let id = format!("id-{round}");
            let created = Payload::PipeCreated(PipeCreated {
                name: name.clone(),
                config: Some(PipeConfig::default()),
                resync_of: String::new(),
            });
            core.log()
                .append(&name, 0, vec![new_event(&id, created)])
                .await
                .unwrap();
            let recorders: Vec<_> = (0..RECORDERS)
                .map(|_| {
                    let w = Worker {
                        core: Arc::clone(&core),
                        id: id.clone(),
                        name: name.clone(),
                        failing: None,
                        step: Step::Cdc,
                        backoff: Duration::from_secs(1),
                    };
                    tokio::spawn(async move {
                        loop {
                            let progress = Payload::CdcProgress(CdcProgress::default());
                            match w.record(vec![progress]).await {
                                Ok(_) => tokio::task::yield_now().await,
                                Err(EngineError::Stopped) => return,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_micros(round * 37 % 3_000)).await;
            // As the DeletePipe command does: at the projection's version.
            loop {
                let version = core.read(|p| p.stream_version(&name));
                let deleted = Payload::PipeDeleted(PipeDeleted::default());
                match core
                    .log()
                    .append(&name, version, vec![new_event(&id, deleted)])
                    .await
                {
                    Ok(_) => break,
                    Err(LogError::VersionConflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            for r in recorders {
                r.await.unwrap();
            }
            let events = core
                .log()
                .read_stream(&name, 0, u64::MAX, usize::MAX)
                .unwrap();
            let kinds: Vec<_> = events
                .iter()
                .map(|e| crate::domain::projection::event_kind(e))
                .collect();
            assert_eq!(
                kinds.last(),
                Some(&"pipe_deleted"),
                "round {round}: recorded after the deletion: {:?}",
                &kinds[kinds.len().saturating_sub(4)..]
            );
        }
    }
}
