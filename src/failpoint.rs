//! Named crash points for tests: `PGPIPE_FAILPOINTS="step.a=abort;step.b=sleep(500)"`.
//!
//! `abort` ends the process at once, like SIGKILL (no destructors, no
//! flush), so tests can prove that every step resumes from the log.
//! `sleep(ms)` delays the step (e.g. to observe a state that is normally
//! too short to see). Unset in production: one environment lookup, cached.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// A named fail-point. Only the consts below exist, so a misspelt name
/// fails to compile; the names themselves are what `PGPIPE_FAILPOINTS`
/// and the tests use, and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPoint(&'static str);

impl FailPoint {
    pub fn name(self) -> &'static str {
        self.0
    }
}

/// At start-up, before the event log is opened and replayed.
pub const REPLAY_BEFORE: FailPoint = FailPoint("replay.before");
/// Setup: the publication exists, the slot is not created yet.
pub const SETUP_BEFORE_SLOT: FailPoint = FailPoint("setup.before_slot");
/// Setup: the slot is created, `SetupCompleted` not recorded yet.
pub const SETUP_AFTER_SLOT: FailPoint = FailPoint("setup.after_slot");
/// Prepare: the load tables exist, `TablesPrepared` not recorded yet.
pub const PREPARE_AFTER_CREATE: FailPoint = FailPoint("prepare.after_create");
/// Snapshot: when the initial load starts.
pub const SNAPSHOT_STARTED: FailPoint = FailPoint("snapshot.started");
/// Snapshot: after each partition ClickHouse acknowledged.
pub const SNAPSHOT_PARTITION_DONE: FailPoint = FailPoint("snapshot.partition_done");
/// Swap: before the tables are exchanged.
pub const SWAP_BEFORE_EXCHANGE: FailPoint = FailPoint("swap.before_exchange");
/// Swap: after each table's exchange, before the swap is recorded.
pub const SWAP_AFTER_EXCHANGE: FailPoint = FailPoint("swap.after_exchange");
/// Swap: recorded, the old data not dropped yet.
pub const SWAP_BEFORE_DROP: FailPoint = FailPoint("swap.before_drop");
/// CDC: ClickHouse has the batch, the slot has not advanced yet.
pub const CDC_BEFORE_ADVANCE: FailPoint = FailPoint("cdc.before_advance");
/// CDC: a chunk of a transaction larger than the batch is in ClickHouse,
/// the rest of the transaction is not (the slot has not moved past it).
pub const CDC_MID_TRANSACTION: FailPoint = FailPoint("cdc.mid_transaction");
/// A table added beside CDC: its changes are routed, its load not started.
pub const TABLE_ADD_ROUTED: FailPoint = FailPoint("table_add.routed");
/// A table resynced beside CDC: its changes are routed, its load not started.
pub const TABLE_RESYNC_ROUTED: FailPoint = FailPoint("table_resync.routed");
/// A table load beside CDC: when it starts.
pub const TABLE_LOAD_STARTED: FailPoint = FailPoint("table_load.started");
/// A table load beside CDC: after each partition.
pub const TABLE_LOAD_PARTITION_DONE: FailPoint = FailPoint("table_load.partition_done");
/// A table load beside CDC: before its exchange.
pub const TABLE_SWAP_BEFORE_EXCHANGE: FailPoint = FailPoint("table_swap.before_exchange");
/// A table load beside CDC: after its exchange.
pub const TABLE_SWAP_AFTER_EXCHANGE: FailPoint = FailPoint("table_swap.after_exchange");
/// A partition attached while running: after each part ClickHouse acknowledged.
pub const PARTITION_LOAD_PARTITION_DONE: FailPoint = FailPoint("partition_load.partition_done");
/// A partition attached while running: copied, not recorded yet.
pub const PARTITION_LOAD_COPIED: FailPoint = FailPoint("partition_load.copied");
/// A schema change: applied, before it is recorded.
pub const SCHEMA_CHANGE_BEFORE_RECORD: FailPoint = FailPoint("schema_change.before_record");

/// Every fail-point (the README lists them; a unit test keeps it true).
#[cfg(test)]
pub const ALL: &[FailPoint] = &[
    REPLAY_BEFORE,
    SETUP_BEFORE_SLOT,
    SETUP_AFTER_SLOT,
    PREPARE_AFTER_CREATE,
    SNAPSHOT_STARTED,
    SNAPSHOT_PARTITION_DONE,
    SWAP_BEFORE_EXCHANGE,
    SWAP_AFTER_EXCHANGE,
    SWAP_BEFORE_DROP,
    CDC_BEFORE_ADVANCE,
    CDC_MID_TRANSACTION,
    TABLE_ADD_ROUTED,
    TABLE_RESYNC_ROUTED,
    TABLE_LOAD_STARTED,
    TABLE_LOAD_PARTITION_DONE,
    TABLE_SWAP_BEFORE_EXCHANGE,
    TABLE_SWAP_AFTER_EXCHANGE,
    PARTITION_LOAD_PARTITION_DONE,
    PARTITION_LOAD_COPIED,
    SCHEMA_CHANGE_BEFORE_RECORD,
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Sleep(Duration),
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(';')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = action.trim();
            let action = if action == "abort" {
                Action::Abort
            } else {
                let ms = action.strip_prefix("sleep(")?.strip_suffix(')')?;
                Action::Sleep(Duration::from_millis(ms.trim().parse().ok()?))
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("PGPIPE_FAILPOINTS")
            .map(|s| parse(&s))
            .unwrap_or_default()
    })
}

/// Runs the action configured for `point`, if any.
pub async fn hit(point: FailPoint) {
    let name = point.name();
    match points().get(name) {
        None => {}
        Some(Action::Abort) => {
            tracing::warn!(failpoint = name, "failpoint: aborting the process");
            std::process::abort();
        }
        Some(Action::Sleep(d)) => {
            tracing::warn!(
                failpoint = name,
                ms = d.as_millis() as u64,
                "failpoint: sleeping"
            );
            tokio::time::sleep(*d).await;
        }
    }
}

/// Blocking variant for code outside the runtime.
pub fn hit_blocking(point: FailPoint) {
    match points().get(point.name()) {
        None => {}
        Some(Action::Abort) => std::process::abort(),
        Some(Action::Sleep(d)) => std::thread::sleep(*d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_abort_and_sleep_and_ignores_garbage() {
        let p = parse("a=abort; b=sleep(250);c=explode;=;d");
        assert_eq!(p.get("a"), Some(&Action::Abort));
        assert_eq!(p.get("b"), Some(&Action::Sleep(Duration::from_millis(250))));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn names_are_unique_and_the_readme_lists_each() {
        let readme = include_str!("../README.md");
        let mut seen = std::collections::HashSet::new();
        for point in ALL {
            assert!(seen.insert(point.name()), "{} twice", point.name());
            assert!(
                readme.contains(&format!("`{}`", point.name())),
                "README's fail-point list lacks `{}`",
                point.name()
            );
        }
    }
}
