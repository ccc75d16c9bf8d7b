//! The engine: runs a worker for every active pipe incarnation and releases
//! the source objects of deleted ones.
//!
//! It reconciles the projection with what runs, on every committed event and
//! at start-up, so it needs no memory of its own: after a restart the
//! projection says what must run and each worker resumes at its first step
//! not recorded as done.

mod cdc;
mod copy;
mod guard;
mod partitions;
mod schema_change;
pub mod slot_health;
mod steps;
mod table_load;
pub(crate) mod worker;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::commands::Core;
use crate::domain::names;
use crate::proto::event::Payload;
use crate::proto::{Pipe, PipeStatus, SourceReleased};
use crate::sink::ChSink;
use crate::source;

/// The ClickHouse end of a pipe config.
pub(crate) fn sink_for(
    config: &crate::proto::PipeConfig,
    secrets: &crate::store::PipeSecrets,
) -> Result<ChSink, crate::sink::SinkError> {
    ChSink::for_destination(
        &config.destination.clone().unwrap_or_default(),
        secrets.destination_password.as_deref(),
    )
}

pub(crate) use crate::domain::validate::source_tables;

/// Starts the engine; it stops when `closing` turns true.
pub(crate) fn spawn(
    core: Arc<Core>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut workers: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut releasing: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut monitors: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut feed = core.log().subscribe();
        loop {
            reconcile(&core, &mut workers, &mut releasing);
            slot_health::reconcile(&core, &mut monitors);
            tokio::select! {
                r = feed.recv() => {
                    if let Err(RecvError::Closed) = r {
                        break;
                    }
                }
                _ = closing.wait_for(|c| *c) => break,
                // Restart workers that ended while still wanted.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        let all: Vec<JoinHandle<()>> = workers
            .into_values()
            .chain(releasing.into_values())
            .chain(monitors.into_values())
            .collect();
        for h in &all {
            h.abort();
        }
        // Awaited, so no worker holds the log (and its file lock) once the
        // engine has ended: a restart in the same process can open it.
        for h in all {
            let _ = h.await;
        }
    })
}

fn wants_worker(p: &Pipe) -> bool {
    matches!(
        p.status(),
        PipeStatus::Setup | PipeStatus::Snapshot | PipeStatus::Resync | PipeStatus::Running
    )
}

fn reconcile(
    core: &Arc<Core>,
    workers: &mut HashMap<String, JoinHandle<()>>,
    releasing: &mut HashMap<String, JoinHandle<()>>,
) {
    let (wanted, to_release): (HashSet<String>, Vec<Pipe>) = core.read(|p| {
        let wanted = p
            .list(false, &Default::default())
            .into_iter()
            .filter(wants_worker)
            .map(|p| p.id)
            .collect();
        let release = p
            .all()
            .filter(|p| p.status() == PipeStatus::Deleted && !p.source_released)
            .cloned()
            .collect();
        (wanted, release)
    });
    keep_tasks(core, workers, wanted, worker::run);
    releasing.retain(|_, h| !h.is_finished());
    for p in to_release {
        if workers.contains_key(&p.id) || releasing.contains_key(&p.id) {
            continue;
        }
        let span = tracing::info_span!("release", pipe = %p.name, pipe_id = %p.id);
        let core = Arc::clone(core);
        let id = p.id.clone();
        releasing.insert(id, tokio::spawn(release(core, p).instrument(span)));
    }
}

/// Keeps one running task per wanted id (started by `start`) in `tasks`:
/// the others, and finished ones, are aborted; the missing ones started.
pub(crate) fn keep_tasks<F>(
    core: &Arc<Core>,
    tasks: &mut HashMap<String, JoinHandle<()>>,
    wanted: HashSet<String>,
    start: impl Fn(Arc<Core>, String) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    tasks.retain(|id, h| {
        if wanted.contains(id) && !h.is_finished() {
            true
        } else {
            h.abort();
            false
        }
    });
    for id in wanted {
        tasks
            .entry(id.clone())
            .or_insert_with(|| tokio::spawn(start(Arc::clone(core), id)));
    }
}

/// Drops the slot and publication of a deleted incarnation (and its tables
/// when asked), retrying with backoff while a peer is down.
async fn release(core: Arc<Core>, pipe: Pipe) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match release_once(&core, &pipe).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not release the source objects yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn release_once(core: &Core, pipe: &Pipe) -> Result<(), worker::EngineError> {
    let config = pipe.config.clone().unwrap_or_default();
    let secrets = core.secrets().get(&pipe.id)?;
    let src = config.source.clone().unwrap_or_default();
    let slot = source::slot_name(&pipe.id);
    let publication = source::publication_name(&pipe.id);
    let pg = source::connect(&src.connection_string, secrets.source_password.as_deref()).await?;
    source::drop_slot(&pg, &slot).await?;
    source::drop_publication(&pg, &publication).await?;
    let mut dropped = false;
    if !pipe.resync_of.is_empty() && !pipe.swapped && pipe.tables_prepared {
        // A resync stopped before its swap: its `_resync` tables are scratch.
        let ch = sink_for(&config, &secrets)?;
        for t in &pipe.prepared {
            ch.drop_table_if_exists(&t.load_table).await?;
        }
    }
    if pipe.drop_destination_tables {
        let ch = sink_for(&config, &secrets)?;
        for t in &config.tables {
            ch.drop_table_if_exists(&t.destination_table).await?;
            ch.drop_table_if_exists(&names::resync_table(&t.destination_table))
                .await?;
        }
        dropped = true;
    }
    // Decided on the projection at a stream version: a release that raced
    // this one (e.g. spawned again before the first one's event was folded)
    // finds it recorded and appends nothing.
    guard::record(
        core,
        guard::Guard::Unreleased,
        &pipe.id,
        &pipe.name,
        &[Payload::SourceReleased(SourceReleased {
            slot_name: slot,
            publication_name: publication,
            destination_tables_dropped: dropped,
        })],
    )
    .await?;
    // The secrets of a released incarnation are no longer needed.
    let _ = core.secrets().remove(&pipe.id);
    tracing::info!("source objects released");
    Ok(())
}
