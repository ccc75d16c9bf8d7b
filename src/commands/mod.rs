//! Commands: decided against the projection, recorded as events.
//!
//! Each command reads the pipe's current state, decides, and appends with the
//! stream version it decided on. If another command got there first the
//! append fails with a version conflict and the command is decided again
//! against the new state (so of two racing ResyncPipe calls, the second one
//! sees the first and is refused).

mod checks;
mod decide;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use checks::Purpose;
pub use decide::status_name;
use decide::{can_change_tables, can_resync_tables, live, not_found};

use crate::domain::projection::Projection;
use crate::domain::validate::{self, Invalid};
use crate::proto::{
    CreatePipeRequest, Event, Pipe, PipeConfig, Problem, ProblemKind, TableConfig,
    ValidatePipeRequest,
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
pub struct Core {
    pub log: Arc<EventLog>,
    pub projection: Arc<RwLock<Projection>>,
    pub secrets: SecretStore,
    /// Check both ends before recording CreatePipe/ResyncPipe (off only for
    /// a control-plane-only server).
    pub preflight: bool,
    /// Prometheus registry: the engine and watch streams record, the
    /// metrics endpoint reads.
    pub metrics: Arc<crate::metrics::Metrics>,
}

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
        validate::pipe_name(&req.name)?;
        let (mut config, secrets) = validate::pipe_config(
            req.source.as_ref(),
            req.destination.as_ref(),
            &req.tables,
            req.settings.as_ref(),
        )?;
        validate::labels("labels", &req.labels)?;
        config.labels = req.labels.clone();
        self.read(|p| decide::name_free(p.by_name(&req.name)))?;
        if self.preflight {
            checks::check_problem(&config, &secrets, Purpose::Create)
                .await
                .map_err(preflight_error)?;
        }
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
        let checked = validate::check_request(
            &req.name,
            req.source.as_ref(),
            req.destination.as_ref(),
            &req.tables,
            req.settings.as_ref(),
        );
        let mut problems: Vec<Problem> = checked
            .problems
            .into_iter()
            .map(|p| Problem {
                kind: if crate::domain::columns::is_column_field(&p.field) {
                    ProblemKind::Column as i32
                } else {
                    ProblemKind::InvalidRequest as i32
                },
                table: p.table,
                column: String::new(),
                message: p.invalid.0,
                field: p.field,
                warning: false,
            })
            .collect();
        if let Err(e) = validate::labels("labels", &req.labels) {
            problems.push(Problem {
                kind: ProblemKind::InvalidRequest as i32,
                message: e.0,
                field: "labels".into(),
                ..Default::default()
            });
        }
        if let Err(e) = self.read(|p| decide::name_free(p.by_name(&req.name))) {
            problems.push(Problem {
                kind: ProblemKind::NameTaken as i32,
                message: e.to_string(),
                field: "name".into(),
                ..Default::default()
            });
        }
        if !self.preflight {
            return problems;
        }
        let (source, source_password) = checked.source.unzip();
        let (destination, destination_password) = checked.destination.unzip();
        let config = PipeConfig {
            source,
            destination,
            tables: checked.tables,
            settings: None,
            labels: req.labels.clone(),
        };
        let secrets = PipeSecrets {
            source_password: source_password.flatten(),
            destination_password: destination_password.flatten(),
        };
        problems.extend(checks::problems(&config, &secrets).await);
        problems
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
            checks::check_problem(
                &config,
                &self.secrets.get(&old_id)?,
                if replace_columns {
                    Purpose::ResyncNewColumns
                } else {
                    Purpose::Resync
                },
            )
            .await
            .map_err(preflight_error)?;
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
        let current = p.config.clone().unwrap_or_default();
        let (added, removed) = validate::table_changes(&current.tables, add, remove)?;
        can_change_tables(&p)?;
        if self.preflight && !added.is_empty() {
            let mut config = current.clone();
            config.tables = added.clone();
            checks::check_problem(&config, &self.secrets.get(&p.id)?, Purpose::Create)
                .await
                .map_err(preflight_error)?;
            config.tables = tables_after(&current.tables, &added, &removed);
            checks::check_partition_overlaps(&config, &self.secrets.get(&p.id)?)
                .await
                .map_err(preflight_error)?;
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
        let current = p.config.clone().unwrap_or_default();
        let invalid = |message: String, field: &str| Problem {
            kind: ProblemKind::InvalidRequest as i32,
            message,
            field: field.to_owned(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        if let Err(CommandError::FailedPrecondition(m)) = can_change_tables(&p) {
            problems.push(invalid(m, "name"));
        }
        let (added, removed) = match validate::table_changes(&current.tables, add, remove) {
            Ok(changes) => changes,
            Err(e) => {
                problems.push(invalid(e.0, ""));
                (Vec::new(), Vec::new())
            }
        };
        if self.preflight && !added.is_empty() {
            let mut config = current.clone();
            let secrets = self.secrets.get(&p.id)?;
            config.tables = added;
            for mut problem in checks::problems(&config, &secrets).await {
                if let Some(rest) = problem.field.strip_prefix("tables[") {
                    problem.field = format!("add_tables[{rest}");
                }
                problems.push(problem);
            }
            config.tables = tables_after(&current.tables, &config.tables, &removed);
            if let Err(problem) = checks::check_partition_overlaps(&config, &secrets).await {
                problems.push(problem);
            }
        }
        Ok((p, problems))
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
            checks::check(&config, &self.secrets.get(&p.id)?, Purpose::Resync)
                .await
                .map_err(CommandError::FailedPrecondition)?;
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

/// A preflight problem as a command error: column options that do not fit
/// the source table are a bad request; the rest is the state of either end.
fn preflight_error(p: Problem) -> CommandError {
    if p.kind == ProblemKind::Column as i32 {
        CommandError::Invalid(Invalid(if p.field.is_empty() {
            p.message
        } else {
            format!("{}: {}", p.field, p.message)
        }))
    } else {
        CommandError::FailedPrecondition(p.message)
    }
}
