//! What each command decides, as pure functions of the pipe's current state
//! (its incarnation under the name, from the projection) and the request:
//! the events to record, or why not. [`super::Core`] runs them inside its
//! append-at-a-version loop, so a decision is made again on the new state
//! when something was recorded in between; the tests run them on a
//! projection folded from given events.

use std::collections::BTreeMap;

use super::CommandError;
use crate::domain::validate;
use crate::proto::{
    DeleteReason, Event, Pipe, PipeConfig, PipeCreated, PipeDeleted, PipeLabelsChanged, PipePaused,
    PipeResumed, PipeStatus, ResyncStarted, TableConfig, TableResyncRequested, TableState,
    TablesAdded, TablesRemoved, event::Payload,
};
use crate::store::event_log::new_event;

/// A name is free when no live pipe has it.
pub(super) fn name_free(current: Option<&Pipe>) -> Result<(), CommandError> {
    match current {
        Some(p) if p.status != PipeStatus::Deleted as i32 => {
            Err(CommandError::AlreadyExists(format!(
                "a pipe named {:?} already exists (id {}); pick another name or delete it first",
                p.name, p.id
            )))
        }
        _ => Ok(()),
    }
}

/// A new pipe `id` under `name`: refused while a live pipe has the name.
pub(super) fn create(
    current: Option<&Pipe>,
    id: &str,
    name: &str,
    config: &PipeConfig,
) -> Result<Vec<Event>, CommandError> {
    name_free(current)?;
    Ok(vec![new_event(
        id,
        Payload::PipeCreated(PipeCreated {
            name: name.to_owned(),
            config: Some(config.clone()),
            resync_of: String::new(),
        }),
    )])
}

pub(super) fn delete(
    name: &str,
    current: Option<&Pipe>,
    drop_tables: bool,
) -> Result<Vec<Event>, CommandError> {
    let p = live(name, current)?;
    Ok(vec![new_event(
        &p.id,
        Payload::PipeDeleted(PipeDeleted {
            reason: DeleteReason::User as i32,
            drop_destination_tables: drop_tables,
        }),
    )])
}

pub(super) fn pause(name: &str, current: Option<&Pipe>) -> Result<Vec<Event>, CommandError> {
    let p = live(name, current)?;
    match p.status() {
        PipeStatus::Paused => Err(CommandError::FailedPrecondition(format!(
            "pipe {name:?} is already paused; resume it with ResumePipe"
        ))),
        PipeStatus::Resync => Err(CommandError::FailedPrecondition(format!(
            "pipe {name:?} is swapping tables for a resync; pause it once it is RUNNING"
        ))),
        _ => Ok(vec![new_event(&p.id, Payload::PipePaused(PipePaused {}))]),
    }
}

pub(super) fn resume(name: &str, current: Option<&Pipe>) -> Result<Vec<Event>, CommandError> {
    let p = live(name, current)?;
    if p.status() != PipeStatus::Paused {
        return Err(CommandError::FailedPrecondition(format!(
            "pipe {name:?} is not paused (status {}); only a paused pipe can be resumed",
            status_name(p.status())
        )));
    }
    Ok(vec![new_event(&p.id, Payload::PipeResumed(PipeResumed {}))])
}

/// The live pipe a resync may start on: not already resyncing.
pub(super) fn resyncable<'a>(
    name: &str,
    current: Option<&'a Pipe>,
) -> Result<&'a Pipe, CommandError> {
    let p = live(name, current)?;
    if p.resyncing {
        return Err(CommandError::FailedPrecondition(format!(
            "a resync of pipe {name:?} is already in progress (status {}); \
             wait for it with WatchPipe, or delete the pipe to stop it",
            status_name(p.status())
        )));
    }
    Ok(p)
}

/// A resync of incarnation `old_id`: records the request, retires it and
/// creates `new_id` with every setting carried over (labels as they are
/// now).
pub(super) fn resync(
    name: &str,
    current: Option<&Pipe>,
    old_id: &str,
    new_id: &str,
    overrides: &[TableConfig],
    replace_columns: bool,
) -> Result<Vec<Event>, CommandError> {
    let p = resyncable(name, current)?;
    same_incarnation(name, p, old_id, "resync")?;
    let mut config = p.config.clone().unwrap_or_default();
    config.tables = validate::apply_overrides(&config.tables, overrides, replace_columns)?;
    config.labels = p.labels.clone();
    Ok(vec![
        new_event(
            &p.id,
            Payload::ResyncStarted(ResyncStarted {
                overrides: overrides.to_vec(),
                replace_column_options: replace_columns,
            }),
        ),
        new_event(
            &p.id,
            Payload::PipeDeleted(PipeDeleted {
                reason: DeleteReason::Resync as i32,
                drop_destination_tables: false,
            }),
        ),
        new_event(
            new_id,
            Payload::PipeCreated(PipeCreated {
                name: name.to_owned(),
                config: Some(config),
                resync_of: p.id.clone(),
            }),
        ),
    ])
}

/// Labels set and removed: one PipeLabelsChanged, or nothing when the
/// labels would not change.
pub(super) fn labels(
    name: &str,
    current: Option<&Pipe>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<Vec<Event>, CommandError> {
    let p = live(name, current)?;
    let mut labels = p.labels.clone();
    let mut changed = BTreeMap::new();
    for (k, v) in set {
        if labels.get(k) != Some(v) {
            changed.insert(k.clone(), v.clone());
            labels.insert(k.clone(), v.clone());
        }
    }
    let removed: Vec<String> = remove
        .iter()
        .filter(|k| labels.remove(k.as_str()).is_some())
        .cloned()
        .collect();
    validate::label_count("labels", labels.len())?;
    if changed.is_empty() && removed.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![new_event(
        &p.id,
        Payload::PipeLabelsChanged(PipeLabelsChanged {
            set: changed,
            removed,
            labels,
        }),
    )])
}

/// Tables added to and removed from incarnation `id` (the one the request
/// was checked against).
pub(super) fn update_tables(
    name: &str,
    current: Option<&Pipe>,
    id: &str,
    add: &[TableConfig],
    remove: &[String],
) -> Result<Vec<Event>, CommandError> {
    let now = live(name, current)?;
    same_incarnation(name, now, id, "change")?;
    can_change_tables(now)?;
    let tables = now
        .config
        .as_ref()
        .map(|c| c.tables.as_slice())
        .unwrap_or(&[]);
    let (added, removed) = validate::table_changes(tables, add, remove)?;
    let mut events = Vec::new();
    if !removed.is_empty() {
        events.push(new_event(
            &now.id,
            Payload::TablesRemoved(TablesRemoved {
                source_tables: removed,
            }),
        ));
    }
    if !added.is_empty() {
        events.push(new_event(
            &now.id,
            Payload::TablesAdded(TablesAdded { tables: added }),
        ));
    }
    Ok(events)
}

/// A resync of some tables (canonical names) of incarnation `id`.
pub(super) fn resync_tables(
    name: &str,
    current: Option<&Pipe>,
    id: &str,
    wanted: &[String],
) -> Result<Vec<Event>, CommandError> {
    let now = live(name, current)?;
    same_incarnation(name, now, id, "resync")?;
    can_resync_tables(now, wanted)?;
    Ok(vec![new_event(
        &now.id,
        Payload::TableResyncRequested(TableResyncRequested {
            source_tables: wanted.to_vec(),
        }),
    )])
}

/// Tables change only once the pipe replicates (CDC started): before, the
/// pipe's own initial load owns the table list.
pub(super) fn can_change_tables(p: &Pipe) -> Result<(), CommandError> {
    let status = p.status();
    let ok =
        p.cdc_started && !p.resyncing && matches!(status, PipeStatus::Running | PipeStatus::Paused);
    if ok {
        return Ok(());
    }
    Err(CommandError::FailedPrecondition(format!(
        "pipe {:?} is {}{}; tables can be added or removed once it is RUNNING (or PAUSED): wait for it with WatchPipe{}",
        p.name,
        status_name(status),
        if p.resyncing { " (resyncing)" } else { "" },
        if status == PipeStatus::Failed {
            ", or resync it first"
        } else {
            ""
        }
    )))
}

pub(super) fn can_resync_tables(p: &Pipe, tables: &[String]) -> Result<(), CommandError> {
    can_change_tables(p)?;
    for name in tables {
        // A FAILED table is what a table resync repairs.
        if let Some(t) = p.tables.iter().find(|t| &t.source_table == name)
            && !matches!(t.state(), TableState::Replicating | TableState::Failed)
        {
            return Err(CommandError::FailedPrecondition(format!(
                "table {name} of pipe {:?} is {}; wait until it replicates again (WatchPipe) before resyncing it",
                p.name,
                t.state().words()
            )));
        }
    }
    Ok(())
}

pub(super) fn not_found(name: &str) -> CommandError {
    CommandError::NotFound(format!(
        "no pipe named {name:?}; ListPipes shows the existing ones"
    ))
}

/// Refuses a request decided against incarnation `id` when `now` is
/// another one (the pipe was deleted and created again meanwhile).
fn same_incarnation(name: &str, now: &Pipe, id: &str, what: &str) -> Result<(), CommandError> {
    if now.id != id {
        return Err(CommandError::Conflict(format!(
            "pipe {name:?} was replaced while the {what} was requested; retry"
        )));
    }
    Ok(())
}

/// The pipe, if it exists and is not deleted.
pub(super) fn live<'a>(name: &str, current: Option<&'a Pipe>) -> Result<&'a Pipe, CommandError> {
    match current {
        Some(p) if p.status != PipeStatus::Deleted as i32 => Ok(p),
        Some(_) => Err(CommandError::NotFound(format!(
            "pipe {name:?} was deleted; create it again with CreatePipe"
        ))),
        None => Err(not_found(name)),
    }
}

pub fn status_name(s: PipeStatus) -> &'static str {
    s.as_str_name()
        .strip_prefix("PIPE_STATUS_")
        .unwrap_or(s.as_str_name())
}
