//! The sled event log: durability, optimistic concurrency, corruption.

use std::sync::{Arc, Mutex};

use pgpipe::domain::projection::Projection;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;
use pgpipe::store::event_log::{self, new_event};
use pgpipe::store::{EventLog, LogError};
use proptest::prelude::*;

fn created(name: &str) -> Event {
    new_event(
        &format!("id-{name}"),
        Payload::PipeCreated(PipeCreated {
            name: name.into(),
            config: Some(PipeConfig {
                tables: vec![TableConfig {
                    source_table: "public.t".into(),
                    destination_table: "t".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            resync_of: String::new(),
        }),
    )
}

fn progress(name: &str, rows: u64) -> Event {
    new_event(
        &format!("id-{name}"),
        Payload::SnapshotProgress(SnapshotProgress {
            source_table: "public.t".into(),
            rows_copied: rows,
            partitions_done: 0,
            partitions_total: 4,
            ..Default::default()
        }),
    )
}

/// Retries `open` while the files are still locked: sled lets go of them
/// in its background threads a moment after the last handle of a closed
/// log drops (a test reopening at once can be faster under load).
fn when_unlocked<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(t) => return t,
            Err(e)
                if format!("{e:?}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open: {e:?}"),
        }
    }
}

/// Opens the log in `dir` again after a close.
fn reopen(dir: &std::path::Path) -> Arc<EventLog> {
    when_unlocked(|| EventLog::open(dir))
}

fn open(dir: &std::path::Path) -> (Arc<EventLog>, Arc<Mutex<Projection>>) {
    let log = EventLog::open(dir).unwrap();
    let projection = Arc::new(Mutex::new(Projection::default()));
    {
        let mut p = projection.lock().unwrap();
        log.replay(|e| p.apply(e)).unwrap();
    }
    let hook = Arc::clone(&projection);
    log.start_writer(Arc::new(move |e| hook.lock().unwrap().apply(e)));
    (log, projection)
}

#[tokio::test]
async fn appended_events_replay_in_order_with_seqs_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    log.append("a", 0, vec![created("a")]).await.unwrap();
    log.append("b", 0, vec![created("b")]).await.unwrap();
    let stored = log
        .append("a", 1, vec![progress("a", 10), progress("a", 20)])
        .await
        .unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(
        stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [2, 3]
    );
    log.close().await.unwrap();
    drop(log);

    let log = reopen(dir.path());
    let mut seen = Vec::new();
    let stats = log
        .replay(|e| seen.push((e.seq, e.pipe_name.clone(), e.stream_version)))
        .unwrap();
    assert_eq!(stats.head, 4);
    assert_eq!(
        seen,
        [
            (1, "a".into(), 1),
            (2, "b".into(), 1),
            (3, "a".into(), 2),
            (4, "a".into(), 3)
        ]
    );
    assert_eq!(log.stream_version("a"), 3);
}

#[tokio::test]
async fn appends_are_durable_when_acknowledged_even_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    log.append("a", 0, vec![created("a")]).await.unwrap();
    // Copy the files as they are now, as a crash would leave them.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let reopened = EventLog::open(copy.path()).unwrap();
    assert_eq!(reopened.replay(|_| {}).unwrap().events, 1);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn concurrent_appends_with_the_same_expected_version_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    log.append("p", 0, vec![created("p")]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            log.append("p", 1, vec![progress("p", i)]).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(LogError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(log.stream_version("p"), 2);
}

#[tokio::test]
async fn a_corrupt_tail_is_reported_and_repair_cuts_exactly_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = open(dir.path());
        log.append("a", 0, vec![created("a")]).await.unwrap();
        log.append("a", 1, vec![progress("a", 1), progress("a", 2)])
            .await
            .unwrap();
        log.close().await.unwrap();
    }
    {
        // Flip a byte of the last record's payload, as a torn write would.
        let db = when_unlocked(|| sled::open(dir.path()));
        let tree = db.open_tree("log").unwrap();
        let (k, v) = tree.last().unwrap().unwrap();
        let mut bad = v.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        tree.insert(k, bad).unwrap();
        db.flush().unwrap();
    }
    let log = reopen(dir.path());
    let err = log.replay(|_| {}).unwrap_err();
    match &err {
        LogError::Corrupt {
            seq: 3, valid: 2, ..
        } => {}
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("pgpipe repair"), "{err}");
    drop(log);

    assert_eq!(event_log::repair(dir.path()).unwrap(), 1);
    let log = reopen(dir.path());
    assert_eq!(log.replay(|_| {}).unwrap().events, 2);
    drop(log);
    assert_eq!(event_log::repair(dir.path()).unwrap(), 0);
}

#[tokio::test]
async fn a_gap_in_sequences_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = open(dir.path());
        log.append(
            "a",
            0,
            vec![created("a"), progress("a", 1), progress("a", 2)],
        )
        .await
        .unwrap();
        log.close().await.unwrap();
    }
    {
        let db = when_unlocked(|| sled::open(dir.path()));
        let tree = db.open_tree("log").unwrap();
        let mut key = vec![b'e'];
        key.extend_from_slice(&2u64.to_be_bytes());
        tree.remove(key).unwrap();
        db.flush().unwrap();
    }
    let log = reopen(dir.path());
    assert!(matches!(
        log.replay(|_| {}),
        Err(LogError::Corrupt { seq: 2, .. })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Pause(u8),
    Resume(u8),
    Progress(u8, u64),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Create),
        (0u8..3).prop_map(Op::Pause),
        (0u8..3).prop_map(Op::Resume),
        ((0u8..3), any::<u64>()).prop_map(|(p, r)| Op::Progress(p, r)),
        (0u8..3).prop_map(Op::Delete),
    ]
}

fn event_for(op: &Op) -> (String, Event) {
    let name = |p: &u8| format!("p{p}");
    match op {
        Op::Create(p) => (name(p), created(&name(p))),
        Op::Pause(p) => (
            name(p),
            new_event(
                &format!("id-{}", name(p)),
                Payload::PipePaused(PipePaused {}),
            ),
        ),
        Op::Resume(p) => (
            name(p),
            new_event(
                &format!("id-{}", name(p)),
                Payload::PipeResumed(PipeResumed {}),
            ),
        ),
        Op::Progress(p, r) => (name(p), progress(&name(p), *r)),
        Op::Delete(p) => (
            name(p),
            new_event(
                &format!("id-{}", name(p)),
                Payload::PipeDeleted(PipeDeleted {
                    reason: DeleteReason::User as i32,
                    drop_destination_tables: false,
                }),
            ),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn replay_rebuilds_the_same_projection(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let live = {
                let (log, projection) = open(dir.path());
                for op in &ops {
                    let (stream, e) = event_for(op);
                    let v = log.stream_version(&stream);
                    log.append(&stream, v, vec![e]).await.unwrap();
                }
                log.close().await.unwrap();
                projection.lock().unwrap().clone()
            };
            let log = reopen(dir.path());
            let mut replayed = Projection::default();
            log.replay(|e| replayed.apply(e)).unwrap();
            prop_assert_eq!(live.list(true, &Default::default()), replayed.list(true, &Default::default()));
            prop_assert_eq!(live.head(), replayed.head());
            Ok(())
        })?;
    }
}
