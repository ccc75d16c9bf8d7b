//! Command decisions as given (events) / when (command) / then (events or
//! refusal), over a projection folded from the given events.

use std::collections::BTreeMap;

use super::CommandError;
use super::decide;
use crate::domain::projection::{Projection, event_kind};
use crate::proto::{
    CdcStarted, Event, Pipe, PipeConfig, PipeCreated, PipeDeleted, PipeLabelsChanged, PipePaused,
    ResyncStarted, TableConfig, event::Payload,
};

const NAME: &str = "orders";

fn table(source: &str, destination: &str) -> TableConfig {
    TableConfig {
        source_table: source.into(),
        destination_table: destination.into(),
        ..Default::default()
    }
}

fn event(id: &str, payload: Payload) -> Event {
    Event {
        pipe_id: id.into(),
        pipe_name: NAME.into(),
        payload: Some(payload),
        ..Default::default()
    }
}

fn created(id: &str) -> Event {
    event(
        id,
        Payload::PipeCreated(PipeCreated {
            name: NAME.into(),
            config: Some(PipeConfig {
                tables: vec![table("public.a", "a")],
                ..Default::default()
            }),
            resync_of: String::new(),
        }),
    )
}

fn replicating(id: &str) -> Event {
    event(id, Payload::CdcStarted(CdcStarted::default()))
}

fn paused(id: &str) -> Event {
    event(id, Payload::PipePaused(PipePaused {}))
}

fn deleted(id: &str) -> Event {
    event(id, Payload::PipeDeleted(PipeDeleted::default()))
}

/// The projection after `events`, as the log would have stored them.
fn given(events: &[Event]) -> Projection {
    let mut p = Projection::default();
    for (i, e) in events.iter().enumerate() {
        let mut e = e.clone();
        e.seq = i as u64 + 1;
        e.stream_version = i as u64 + 1;
        p.apply(&e);
    }
    p
}

/// What a command decides: events to record, or a refusal.
type Decided = Result<Vec<Event>, CommandError>;

/// Given `events`, `command` records events of `kinds` (returned).
#[track_caller]
fn decides(
    events: &[Event],
    command: impl FnOnce(Option<&Pipe>) -> Decided,
    kinds: &[&str],
) -> Vec<Event> {
    then_events(command(given(events).by_name(NAME)), kinds)
}

/// Given `events`, `command` is refused with `code`, saying `says`.
#[track_caller]
fn refuses(
    events: &[Event],
    command: impl FnOnce(Option<&Pipe>) -> Decided,
    code: &str,
    says: &str,
) {
    let message = then_refused(command(given(events).by_name(NAME)), code);
    assert!(message.contains(says), "{message}");
}

#[track_caller]
fn then_events(decided: Decided, kinds: &[&str]) -> Vec<Event> {
    let events = match decided {
        Ok(events) => events,
        Err(e) => panic!("expected {kinds:?}, refused: {e:?}"),
    };
    let got: Vec<&str> = events.iter().map(event_kind).collect();
    assert_eq!(got, kinds);
    events
}

#[track_caller]
fn then_refused(decided: Decided, expected: &str) -> String {
    match decided {
        Ok(events) => panic!("expected {expected}, decided {events:?}"),
        Err(e) => {
            let got = match &e {
                CommandError::Invalid(_) => "INVALID_ARGUMENT",
                CommandError::NotFound(_) => "NOT_FOUND",
                CommandError::AlreadyExists(_) => "ALREADY_EXISTS",
                CommandError::FailedPrecondition(_) => "FAILED_PRECONDITION",
                CommandError::Conflict(_) => "ABORTED",
                CommandError::Log(_) => "LOG",
            };
            assert_eq!(got, expected, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn create_on_a_live_name_is_already_exists() {
    let config = PipeConfig::default();
    refuses(
        &[created("a")],
        |cur| decide::create(cur, "b", NAME, &config),
        "ALREADY_EXISTS",
        "(id a)",
    );
}

#[test]
fn create_on_a_deleted_name_records_a_new_incarnation() {
    let config = PipeConfig::default();
    let events = decides(
        &[created("a"), deleted("a")],
        |cur| decide::create(cur, "b", NAME, &config),
        &["pipe_created"],
    );
    assert_eq!(events[0].pipe_id, "b");
}

#[test]
fn delete_of_a_deleted_pipe_is_not_found() {
    refuses(
        &[created("a"), deleted("a")],
        |cur| decide::delete(NAME, cur, false),
        "NOT_FOUND",
        "was deleted",
    );
}

#[test]
fn delete_of_an_unknown_name_is_not_found() {
    refuses(
        &[],
        |cur| decide::delete(NAME, cur, false),
        "NOT_FOUND",
        "ListPipes",
    );
}

#[test]
fn pause_of_a_running_pipe_records_pipe_paused() {
    decides(
        &[created("a"), replicating("a")],
        |cur| decide::pause(NAME, cur),
        &["pipe_paused"],
    );
}

#[test]
fn pause_of_a_paused_pipe_is_failed_precondition() {
    refuses(
        &[created("a"), replicating("a"), paused("a")],
        |cur| decide::pause(NAME, cur),
        "FAILED_PRECONDITION",
        "",
    );
}

#[test]
fn resume_of_a_running_pipe_is_failed_precondition() {
    refuses(
        &[created("a"), replicating("a")],
        |cur| decide::resume(NAME, cur),
        "FAILED_PRECONDITION",
        "status RUNNING",
    );
}

#[test]
fn resync_of_a_paused_pipe_retires_it_for_a_new_incarnation() {
    let events = decides(
        &[created("a"), replicating("a"), paused("a")],
        |cur| decide::resync(NAME, cur, "a", "b", &[], false),
        &["resync_started", "pipe_deleted", "pipe_created"],
    );
    let Some(Payload::PipeCreated(c)) = &events[2].payload else {
        panic!("{events:?}")
    };
    assert_eq!(
        (events[2].pipe_id.as_str(), c.resync_of.as_str()),
        ("b", "a")
    );
}

#[test]
fn resync_while_one_runs_is_failed_precondition() {
    let resyncing = event("a", Payload::ResyncStarted(ResyncStarted::default()));
    refuses(
        &[created("a"), replicating("a"), resyncing],
        |cur| decide::resync(NAME, cur, "a", "b", &[], false),
        "FAILED_PRECONDITION",
        "already in progress",
    );
}

#[test]
fn update_adding_a_table_records_tables_added() {
    let events = decides(
        &[created("a"), replicating("a")],
        |cur| decide::update_tables(NAME, cur, "a", &[table("b", "")], &[]),
        &["tables_added"],
    );
    let Some(Payload::TablesAdded(t)) = &events[0].payload else {
        panic!("{events:?}")
    };
    assert_eq!(t.tables[0].source_table, "public.b");
}

#[test]
fn update_removing_a_table_and_adding_another_records_both() {
    decides(
        &[created("a"), replicating("a")],
        |cur| decide::update_tables(NAME, cur, "a", &[table("b", "")], &["a".into()]),
        &["tables_removed", "tables_added"],
    );
}

#[test]
fn update_before_cdc_started_is_failed_precondition() {
    refuses(
        &[created("a")],
        |cur| decide::update_tables(NAME, cur, "a", &[table("b", "")], &[]),
        "FAILED_PRECONDITION",
        "once it is RUNNING",
    );
}

#[test]
fn update_of_a_replaced_incarnation_is_aborted() {
    refuses(
        &[created("a"), deleted("a"), created("b"), replicating("b")],
        |cur| decide::update_tables(NAME, cur, "a", &[table("c", "")], &[]),
        "ABORTED",
        "",
    );
}

#[test]
fn a_new_label_records_pipe_labels_changed() {
    let set = BTreeMap::from([("team".to_owned(), "db".to_owned())]);
    let events = decides(
        &[created("a")],
        |cur| decide::labels(NAME, cur, &set, &[]),
        &["pipe_labels_changed"],
    );
    let Some(Payload::PipeLabelsChanged(l)) = &events[0].payload else {
        panic!("{events:?}")
    };
    assert_eq!(l.labels, set);
}

#[test]
fn labels_already_as_asked_record_nothing() {
    let set = BTreeMap::from([("team".to_owned(), "db".to_owned())]);
    let labelled = event(
        "a",
        Payload::PipeLabelsChanged(PipeLabelsChanged {
            set: set.clone(),
            removed: Vec::new(),
            labels: set.clone(),
        }),
    );
    decides(
        &[created("a"), labelled],
        |cur| decide::labels(NAME, cur, &set, &[]),
        &[],
    );
}
