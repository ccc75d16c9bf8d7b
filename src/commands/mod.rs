//! Commands: decided against the projection, recorded as events.
//!
//! Each command reads the pipe's current state, decides, and appends with the
//! stream version it decided on. If another command got there first the
//! append fails with a version conflict and the command is decided again
//! against the new state (so of two racing ResyncPipe calls, the second one
//! sees the first and is refused).

mod checks;
mod decide;
mod problems;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use checks::Purpose;
use decide::{can_change_tables, can_resync_tables, live, not_found};
use problems::{Problems, Stop};

use crate::domain::projection::Projection;
use crate::domain::validate::{self, Invalid};
use crate::proto::{
    CreatePipeRequest, DestinationConfig, Event, Pipe, PipeConfig, PipeSettings, Problem,
    ProblemKind, SourceConfig, TableConfig, ValidatePipeRequest,
};
use crate::store::{EventLog, LogError, PipeSecrets, SecretStore};

const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// The write side of the service, shared by the gRPC layer and the workers.
/// Its state is private: every change goes through [`Core::append_when`]
/// (or a command built on it); readers get the log, the secrets and the
/// metrics through accessors.
pub struct Core {
    log: Arc<EventLog>,
    projection: Arc<RwLock<Projection>>,
    secrets: SecretStore,
    /// Check both ends before recording CreatePipe/ResyncPipe (off only for
    /// a control-plane-only server).
    preflight: bool,
    /// Prometheus registry: the engine and watch streams record, the
    /// metrics endpoint reads.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Core {
    /// `projection` must be the one the log's writer folds events into.
    pub fn new(
        log: Arc<EventLog>,
        projection: Arc<RwLock<Projection>>,
        secrets: SecretStore,
        preflight: bool,
    ) -> Self {
        Core {
            log,
            projection,
            secrets,
            preflight,
            metrics: Arc::default(),
        }
    }

    /// The event log (for readers: history, watch streams, metrics).
    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    /// The pipes' secrets (passwords), kept out of events.
    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The metrics exposition: the registry, with the pipes and the log as
    /// they are now.
    pub fn render_metrics(&self) -> String {
        let scrape = crate::metrics::Scrape {
            pipes: self.read(|p| p.list(true, &BTreeMap::new())),
            log_events: self.log.head(),
            log_size: self.log.db().size_on_disk(),
        };
        crate::metrics::render(&self.metrics, &scrape)
    }
}

/// The parts of a CreatePipe (or ValidatePipe) request.
struct Creation<'a> {
    name: &'a str,
    source: Option<&'a SourceConfig>,
    destination: Option<&'a DestinationConfig>,
    tables: &'a [TableConfig],
    settings: Option<&'a PipeSettings>,
    labels: &'a BTreeMap<String, String>,
}

/// The two requests carry the same fields (prost gives them no common type).
macro_rules! creation_of {
    ($($request:ty),*) => {$(
        impl $request {
            fn creation(&self) -> Creation<'_> {
                Creation {
                    name: &self.name,
                    source: self.source.as_ref(),
                    destination: self.destination.as_ref(),
                    tables: &self.tables,
                    settings: self.settings.as_ref(),
                    labels: &self.labels,
                }
            }
        }
    )*};
}
creation_of!(CreatePipeRequest, ValidatePipeRequest);

impl Core {
    /// Reads the projection (a poisoned lock means a panic elsewhere; the
    /// data is still the last consistent fold).
    pub fn read<T>(&self, f: impl FnOnce(&Projection) -> T) -> T {
        match self.projection.read() {
            Ok(p) => f(&p),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    pub fn get_by_name(&self, name: &str) -> Result<Pipe, CommandError> {
        self.read(|p| p.by_name(name).cloned())
            .ok_or_else(|| not_found(name))
    }

    pub fn get_by_id(&self, id: &str) -> Result<Pipe, CommandError> {
        self.read(|p| p.by_id(id).cloned())
            .ok_or_else(|| CommandError::NotFound(format!("no pipe has id {id:?}")))
    }

    /// The one way state changes (as in cqrs-es: load, handle, commit):
    /// reads the projection and `stream`'s version together, lets `decide`
    /// choose the events, and appends them at that version. The append
    /// fails if anything was recorded in between (a deletion, say), and
    /// then `decide` runs again on the new state, up to `attempts` times.
    /// No events: nothing is appended. Returns what was stored.
    pub async fn append_when<E: From<LogError>>(
        &self,
        stream: &str,
        attempts: usize,
        decide: impl Fn(&Projection, u64) -> Result<Vec<Event>, E>,
    ) -> Result<Vec<Arc<Event>>, E> {
        let mut conflict = None;
        for _ in 0..attempts.max(1) {
            let (events, version) = self.read(|p| {
                let version = p.stream_version(stream);
                decide(p, version).map(|e| (e, version))
            })?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            match self.log.append(stream, version, events).await {
                Ok(stored) => return Ok(stored),
                Err(e @ LogError::VersionConflict { .. }) => {
                    conflict = Some(e);
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict
            .unwrap_or(LogError::VersionConflict {
                stream: stream.to_owned(),
                expected: 0,
                actual: 0,
            })
            .into())
    }

    /// A command: decided and appended through [`Core::append_when`].
    /// Returns the state of the pipe the last event is about.
    async fn execute(
        &self,
        name: &str,
        decide: impl Fn(Option<&Pipe>) -> Result<Vec<Event>, CommandError>,
    ) -> Result<Pipe, CommandError> {
        let stored = self
            .append_when(name, MAX_ATTEMPTS, |p, _| decide(p.by_name(name)))
            .await
            .map_err(|e| match e {
                CommandError::Log(e @ LogError::VersionConflict { .. }) => {
                    CommandError::Conflict(format!(
                        "pipe {name:?} kept changing while the command was applied ({e}); retry"
                    ))
                }
                other => other,
            })?;
        // Nothing to record (e.g. labels already as asked): no event.
        match stored.last() {
            Some(e) => self.get_by_id(&e.pipe_id),
            None => self.get_by_name(name),
        }
    }

    pub async fn create(&self, req: CreatePipeRequest) -> Result<Pipe, CommandError> {
        let mut found = Problems::first();
        let Ok((config, secrets)) = self.check_create(&req.creation(), &mut found).await else {
            return Err(found.stopped());
        };
        let id = uuid::Uuid::new_v4().to_string();
        // Secrets first: the append's flush makes them durable together, and
        // a secret without a pipe (append refused) is inert.
        self.secrets.put(&id, &secrets)?;
        let name = req.name.clone();
        let result = self
            .execute(&name, |current| {
                decide::create(current, &id, &name, &config)
            })
            .await;
        if result.is_err() {
            let _ = self.secrets.remove(&id);
        }
        result
    }

    /// A dry run of [`Core::create`]: every problem it would meet, found
    /// without recording, storing or creating anything.
    pub async fn validate(&self, req: &ValidatePipeRequest) -> Vec<Problem> {
        let mut found = Problems::all();
        let _ = self.check_create(&req.creation(), &mut found).await;
        found.into_list()
    }

    /// The checks of a new pipe, for [`Core::create`] and its dry run: the
    /// request's fields, the name, then both ends. Returns the config to
    /// record and the passwords kept apart.
    async fn check_create(
        &self,
        req: &Creation<'_>,
        found: &mut Problems,
    ) -> Result<(PipeConfig, PipeSecrets), Stop> {
        let checked = validate::check_request(
            req.name,
            req.source,
            req.destination,
            req.tables,
            req.settings,
            req.labels,
        );
        for p in &checked.problems {
            found.invalid(&p.field, &p.table, p.invalid.clone())?;
        }
        if let Err(e) = self.read(|p| decide::name_free(p.by_name(req.name))) {
            found.refused(ProblemKind::NameTaken, "name", e)?;
        }
        let (mut config, secrets) = checked.config();
        config.labels = req.labels.clone();
        if self.preflight {
            checks::run(&config, &secrets, Purpose::Create, found).await?;
        }
        Ok((config, secrets))
    }

    pub async fn delete(&self, name: &str, drop_tables: bool) -> Result<Pipe, CommandError> {
        self.execute(name, |current| decide::delete(name, current, drop_tables))
            .await
    }

    pub async fn pause(&self, name: &str) -> Result<Pipe, CommandError> {
        self.execute(name, |current| decide::pause(name, current))
            .await
    }

    pub async fn resume(&self, name: &str) -> Result<Pipe, CommandError> {
        self.execute(name, |current| decide::resume(name, current))
            .await
    }

    /// Starts a resync: validates the overrides against the pipe, records
    /// the request, retires the current incarnation and creates the new one
    /// with every setting carried over.
    pub async fn resync(
        &self,
        name: &str,
        overrides: &[TableConfig],
        replace_columns: bool,
    ) -> Result<Pipe, CommandError> {
        let new_id = uuid::Uuid::new_v4().to_string();
        // The new incarnation connects with the old one's credentials; copy
        // them before the events exist so a crash cannot leave it without.
        let old =
            decide::resyncable(name, self.read(|p| p.by_name(name).cloned()).as_ref())?.clone();
        let old_id = old.id.clone();
        if self.preflight {
            // Validation happens before the old incarnation is dropped.
            let mut config = old.config.clone().unwrap_or_default();
            config.tables = validate::apply_overrides(&config.tables, overrides, replace_columns)?;
            let purpose = if replace_columns {
                Purpose::ResyncNewColumns
            } else {
                Purpose::Resync
            };
            let mut found = Problems::first();
            let secrets = self.secrets.get(&old_id)?;
            if checks::run(&config, &secrets, purpose, &mut found)
                .await
                .is_err()
            {
                return Err(found.stopped());
            }
        }
        self.secrets.put(&new_id, &self.secrets.get(&old_id)?)?;
        let result = self
            .execute(name, |current| {
                decide::resync(name, current, &old_id, &new_id, overrides, replace_columns)
            })
            .await;
        if result.is_err() {
            let _ = self.secrets.remove(&new_id);
        }
        result
    }
}

impl Core {
    /// Sets and removes labels of the pipe's current incarnation. Records
    /// one PipeLabelsChanged, or nothing when the labels would not change.
    pub async fn set_labels(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Pipe, CommandError> {
        validate::label_pairs("labels", set)?;
        for key in remove {
            validate::label_key("remove_keys", key)?;
            if set.contains_key(key) {
                return Err(Invalid(format!(
                    "remove_keys: key {key:?} is also in labels; set it or remove it, not both"
                ))
                .into());
            }
        }
        self.execute(name, |current| decide::labels(name, current, set, remove))
            .await
    }
}

impl Core {
    /// Adds and removes tables of a running (or paused) pipe. Added tables
    /// are checked against both ends like CreatePipe's; the worker loads
    /// them while CDC goes on.
    pub async fn update_tables(
        &self,
        name: &str,
        add: &[TableConfig],
        remove: &[String],
    ) -> Result<Pipe, CommandError> {
        let p = live(name, self.read(|p| p.by_name(name).cloned()).as_ref())?.clone();
        let secrets = self.secrets.get(&p.id)?;
        let mut found = Problems::first();
        if self
            .check_update(&p, add, remove, &secrets, &mut found)
            .await
            .is_err()
        {
            return Err(found.stopped());
        }
        self.execute(name, |current| {
            decide::update_tables(name, current, &p.id, add, remove)
        })
        .await
    }

    /// A dry run of [`Core::update_tables`]: every problem it would meet,
    /// nothing recorded. A missing pipe is still `NotFound`.
    pub async fn validate_update(
        &self,
        name: &str,
        add: &[TableConfig],
        remove: &[String],
    ) -> Result<(Pipe, Vec<Problem>), CommandError> {
        let p = live(name, self.read(|p| p.by_name(name).cloned()).as_ref())?.clone();
        let secrets = self.secrets.get(&p.id)?;
        let mut found = Problems::all();
        let _ = self
            .check_update(&p, add, remove, &secrets, &mut found)
            .await;
        Ok((p, found.into_list()))
    }

    /// The checks of a table change of pipe `p`, for
    /// [`Core::update_tables`] and its dry run: the change against the
    /// pipe's tables, the pipe's state, then both ends for the added tables
    /// and the partition trees of the tables after the change.
    async fn check_update(
        &self,
        p: &Pipe,
        add: &[TableConfig],
        remove: &[String],
        secrets: &PipeSecrets,
        found: &mut Problems,
    ) -> Result<(), Stop> {
        let current = p.config.clone().unwrap_or_default();
        let (added, removed) = match validate::table_changes(&current.tables, add, remove) {
            Ok(changes) => changes,
            Err(e) => {
                found.invalid("", "", e)?;
                (Vec::new(), Vec::new())
            }
        };
        if let Err(e) = can_change_tables(p) {
            found.refused(ProblemKind::InvalidRequest, "name", e)?;
        }
        if self.preflight && !added.is_empty() {
            let mut config = current.clone();
            config.tables = added;
            // The checked config's tables are the request's add_tables.
            found.name_tables("add_tables");
            checks::run(&config, secrets, Purpose::Create, found).await?;
            found.name_tables("tables");
            config.tables = tables_after(&current.tables, &config.tables, &removed);
            checks::partition_overlaps(&config, secrets, found).await?;
        }
        Ok(())
    }

    /// Rebuilds some tables of a running pipe while CDC of the others goes
    /// on (the worker loads `<destination>_resync` and swaps it in).
    pub async fn resync_tables(&self, name: &str, tables: &[String]) -> Result<Pipe, CommandError> {
        let p = live(name, self.read(|p| p.by_name(name).cloned()).as_ref())?.clone();
        let current = p.config.clone().unwrap_or_default();
        let wanted = validate::resync_tables(&current.tables, tables)?;
        can_resync_tables(&p, &wanted)?;
        if self.preflight {
            let mut config = current.clone();
            config.tables.retain(|t| wanted.contains(&t.source_table));
            let mut found = Problems::first();
            let secrets = self.secrets.get(&p.id)?;
            if checks::run(&config, &secrets, Purpose::Resync, &mut found)
                .await
                .is_err()
            {
                // The pipe's own tables: whatever is found is the state of
                // either end, never a bad request.
                let first = found.into_list().into_iter().next();
                return Err(CommandError::FailedPrecondition(
                    first.map(|p| p.message).unwrap_or_default(),
                ));
            }
        }
        self.execute(name, |current| {
            decide::resync_tables(name, current, &p.id, &wanted)
        })
        .await
    }
}

/// A pipe's tables after an update: the current ones not removed, then
/// the added ones.
fn tables_after(
    current: &[TableConfig],
    added: &[TableConfig],
    remove: &[String],
) -> Vec<TableConfig> {
    current
        .iter()
        .filter(|t| !remove.contains(&t.source_table))
        .chain(added)
        .cloned()
        .collect()
}
