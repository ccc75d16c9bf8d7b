//! Resync end to end, against the real Postgres and ClickHouse: repeated
//! resyncs under a continuous writer, DeletePipe and a second ResyncPipe
//! while one runs, watchers that reconnect mid-resync, grpcurl following a
//! resync, and the step timings of a finished resync.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::data::*;
use crate::common::peers::wait_pipe;
use crate::common::*;
use futures::StreamExt;
use pgpipe::proto::*;
use tokio::time::Instant;

const COLS: &str = "id, name, qty";

/// `schema`.items with `rows` rows, analyzed (the load plans its
/// partitions from the statistics).
async fn make_table(schema: &str, rows: i64) {
    make_items(schema, rows).await;
    pg_exec(&format!("ANALYZE {schema}.items")).await;
}

/// The real binary with the data plane, optionally with fail-points.
async fn engine(dir: &tempfile::TempDir, failpoints: &str) -> (Proc, Client) {
    Proc::start_with_failpoints(dir.path(), failpoints).await
}

async fn create(c: &mut Client, name: &str, schema: &str) -> Pipe {
    c.create_pipe(pipe_req(name, schema, &[&format!("{schema}.items")]))
        .await
        .unwrap();
    wait_running(c, name, Duration::from_secs(180)).await
}

/// `pred`, for [`wait_pipe`], that panics at once if the pipe fails.
fn unless_failed(pred: impl Fn(&Pipe) -> bool) -> impl Fn(&Pipe) -> bool {
    move |p| {
        pred(p) || {
            assert!(
                p.status() != PipeStatus::Failed,
                "pipe {} failed: {} ({})",
                p.name,
                p.error,
                p.failed_step
            );
            false
        }
    }
}

/// Rows sharing a key in the destination under FINAL.
async fn duplicates(schema: &str) -> i64 {
    ch_duplicates(schema, "items", "id").await
}

async fn resync_tables(schema: &str) -> Vec<String> {
    ch(schema)
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE '%resync%' ORDER BY name",
        )
        .fetch_all()
        .await
        .unwrap()
}

/// pgpipe's Postgres sessions whose (last) statement mentions the schema:
/// the snapshot's COPY workers.
async fn copying_backends(schema: &str) -> i64 {
    pg().await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgpipe' AND query LIKE '%' || $1 || '%'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

/// Inserts, updates, deletes and re-inserts deleted keys until `stop`;
/// holding `gate` pauses it (to compare both ends at rest).
async fn writer(
    schema: String,
    rows: i64,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let pg = pg().await;
    let mut i: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let new = 1_000_000 + i;
        let upd = 1 + (i * 7) % rows;
        let del = 2 + (i * 11) % rows;
        // A key deleted 40 rounds ago comes back (possibly after a resync
        // carried its tombstone over).
        let back = 2 + ((i - 40).max(0) * 11) % rows;
        {
            let _g = gate.lock().await;
            pg.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO {schema}.items VALUES ({new}, 'new {i}', {q});
                 UPDATE {schema}.items SET qty = qty + 1, name = 'upd {i}' WHERE id = {upd};
                 DELETE FROM {schema}.items WHERE id = {del};
                 INSERT INTO {schema}.items VALUES ({back}, 'back {i}', 7)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name;
                 COMMIT;",
                q = i % 13
            ))
            .await
            .unwrap();
        }
        done.fetch_add(1, Ordering::SeqCst);
        i += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Three resyncs in a row while a writer inserts, updates and deletes the
/// whole time: each one ends RUNNING, equal to Postgres row by row, without
/// duplicates under FINAL or a `_resync` table left, and each incarnation
/// points at the one it replaced, whose slot is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_resyncs_in_a_row_under_a_continuous_writer() {
    let schema = unique("rsw");
    let rows = 20_000;
    make_table(&schema, rows).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = pipe_name(&schema);
    let mut prev = create(&mut c, &name, &schema).await;

    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(writer(
        schema.clone(),
        rows,
        gate.clone(),
        stop.clone(),
        done.clone(),
    ));
    // The writer is going before the first resync starts.
    while done.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut ids = vec![prev.id.clone()];
    for round in 1..=3 {
        let before = done.load(Ordering::SeqCst);
        let new = resync(&mut c, &name).await.unwrap();
        assert_ne!(new.id, prev.id);
        assert_eq!(new.resync_of, prev.id, "round {round}: resync_of");
        let running = wait_running(&mut c, &name, Duration::from_secs(180)).await;
        assert_eq!(running.id, new.id, "round {round}");
        assert_eq!(running.resync_of, prev.id, "round {round}");
        let during = done.load(Ordering::SeqCst) - before;
        assert!(during > 0, "round {round}: no write during the resync");

        {
            // Writer at rest: both ends must converge.
            let _quiet = gate.lock().await;
            wait_same(&schema, "items", COLS, Duration::from_secs(90)).await;
            assert_eq!(duplicates(&schema).await, 0, "round {round}: duplicates");
            assert_eq!(
                resync_tables(&schema).await,
                Vec::<String>::new(),
                "round {round}: a _resync table was left"
            );
            let old = wait_released(&mut c, &prev.id).await;
            assert_eq!(old.status(), PipeStatus::Deleted);
            assert_eq!(old.delete_reason, "resync");
            assert!(!slot_exists(&old.slot_name).await, "old slot kept");
            assert!(
                !publication_exists(&old.publication_name).await,
                "old publication kept"
            );
            let now = get(&mut c, &name).await;
            assert_eq!(now.status(), PipeStatus::Running, "round {round}");
            assert!(slot_exists(&now.slot_name).await);
        }
        eprintln!("round {round}: {during} writer transactions during the resync");
        ids.push(new.id.clone());
        prev = running;
    }
    stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
    wait_same(&schema, "items", COLS, Duration::from_secs(90)).await;
    assert_eq!(duplicates(&schema).await, 0);
    // The chain of incarnations, by id.
    for pair in ids.windows(2) {
        assert_eq!(get_id(&mut c, &pair[1]).await.resync_of, pair[0]);
    }
    delete_and_release(&mut c, &name).await;
}

/// DeletePipe while the resync's initial load runs stops it for good: the
/// incarnation is DELETED, its slot and publication are dropped, nothing
/// writes into ClickHouse afterwards, and the name can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_during_a_resync_snapshot_stops_it_cleanly() {
    let schema = unique("rsd");
    // 12 partitions of 2000 rows, 3 workers, 1.5 s after each: ~6 s of load.
    make_table(&schema, 24_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(&dir, "snapshot.partition_done=sleep(1500)").await;
    let name = pipe_name(&schema);
    let old = create(&mut c, &name, &schema).await;

    let new = resync(&mut c, &name).await.unwrap();
    let loading = wait_pipe(
        &mut c,
        &name,
        "resync snapshot in progress",
        Duration::from_secs(60),
        unless_failed(|p| {
            p.id == new.id
                && p.status() == PipeStatus::Snapshot
                && p.tables.iter().any(|t| t.snapshot_partitions_done > 0)
        }),
    )
    .await;
    assert!(!loading.snapshot_done);
    // Several rounds of partitions: the load is far from over.
    assert!(
        loading.tables[0].snapshot_partitions_total >= 9,
        "{:?}",
        loading.tables
    );
    assert!(
        copying_backends(&schema).await > 0,
        "no snapshot backend seen while loading"
    );
    let slot = loading.slot_name.clone();
    let publication = loading.publication_name.clone();
    assert!(!slot.is_empty() && !publication.is_empty());

    let deleted = delete_pipe(&mut c, &name).await;
    assert_eq!(deleted.id, new.id);
    assert_eq!(deleted.status(), PipeStatus::Deleted);
    assert_eq!(deleted.delete_reason, "user");
    assert!(!deleted.resyncing);

    let released = wait_released(&mut c, &new.id).await;
    assert_eq!(released.status(), PipeStatus::Deleted);
    assert!(!released.swapped && !released.cdc_started);
    assert!(!slot_exists(&slot).await, "slot {slot} kept");
    assert!(
        !publication_exists(&publication).await,
        "publication {publication} kept"
    );
    wait_released(&mut c, &old.id).await;
    assert!(!slot_exists(&old.slot_name).await);
    assert!(!publication_exists(&old.publication_name).await);
    let by_name = get(&mut c, &name).await;
    assert_eq!(by_name.id, new.id);
    assert_eq!(by_name.status(), PipeStatus::Deleted);

    // Nothing keeps working: no pgpipe backend copies the table any more,
    // the scratch `_resync` table is gone (a stopped resync drops it) and
    // stays gone, and the live table does not change, across several
    // fail-point sleeps (a surviving worker would finish its next
    // partition by then).
    let deadline = Instant::now() + Duration::from_secs(30);
    while copying_backends(&schema).await > 0 {
        assert!(Instant::now() < deadline, "snapshot backends still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let original = ch_count(&schema, "items").await;
    for _ in 0..4 {
        assert_eq!(resync_tables(&schema).await, Vec::<String>::new());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            ch_count(&schema, "items").await,
            original,
            "items still written"
        );
        assert_eq!(copying_backends(&schema).await, 0);
    }
    let again = get(&mut c, &name).await;
    assert_eq!(again.id, new.id);
    assert_eq!(again.status(), PipeStatus::Deleted);

    // The name is free again.
    pg_exec(&format!(
        "INSERT INTO {schema}.items VALUES (99999, 'after delete', 1)"
    ))
    .await;
    let fresh = create(&mut c, &name, &schema).await;
    assert_ne!(fresh.id, new.id);
    assert!(fresh.resync_of.is_empty());
    wait_same(&schema, "items", COLS, Duration::from_secs(90)).await;
    assert_eq!(duplicates(&schema).await, 0);
    delete_and_release(&mut c, &name).await;
}

/// A second ResyncPipe while one runs (in SETUP, SNAPSHOT and during the
/// swap) is FAILED_PRECONDITION and changes nothing; once RUNNING, a new
/// resync is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_resync_while_one_runs_is_failed_precondition() {
    let schema = unique("rs2");
    make_table(&schema, 12_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(
        &dir,
        "snapshot.partition_done=sleep(1500);swap.before_exchange=sleep(3000)",
    )
    .await;
    let name = pipe_name(&schema);
    let old = create(&mut c, &name, &schema).await;

    let first = resync(&mut c, &name).await.unwrap();
    assert_eq!(first.resync_of, old.id);
    let refused = |e: tonic::Status, when: &str| {
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{when}: {e:?}");
        assert!(
            e.message().contains("already in progress"),
            "{when}: {}",
            e.message()
        );
    };
    // Right away (SETUP or just after).
    refused(resync(&mut c, &name).await.unwrap_err(), "setup");
    wait_pipe(
        &mut c,
        &name,
        "SNAPSHOT",
        Duration::from_secs(60),
        unless_failed(|p| p.status() == PipeStatus::Snapshot),
    )
    .await;
    refused(resync(&mut c, &name).await.unwrap_err(), "snapshot");
    wait_pipe(
        &mut c,
        &name,
        "RESYNC",
        Duration::from_secs(90),
        unless_failed(|p| p.status() == PipeStatus::Resync),
    )
    .await;
    refused(resync(&mut c, &name).await.unwrap_err(), "swap");

    let running = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(running.id, first.id, "a refused resync replaced the pipe");
    let all = list_all(&mut c).await;
    let ids: Vec<&str> = all
        .iter()
        .filter(|p| p.name == name)
        .map(|p| p.id.as_str())
        .collect();
    assert!(
        ids.len() <= 2 && ids.contains(&first.id.as_str()),
        "{ids:?}"
    );
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;
    assert_eq!(duplicates(&schema).await, 0);

    // Once RUNNING, three ResyncPipe at the same time: exactly one wins.
    let racing: Vec<_> = (0..3)
        .map(|_| {
            let mut c = c.clone();
            let name = name.clone();
            tokio::spawn(async move { resync(&mut c, &name).await })
        })
        .collect();
    let mut won = Vec::new();
    for r in futures::future::join_all(racing).await {
        match r.unwrap() {
            Ok(p) => won.push(p),
            Err(e) => refused(e, "racing resyncs"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let second = won.pop().unwrap();
    assert_eq!(second.resync_of, first.id);
    let done = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(done.id, second.id);
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;
    assert_eq!(duplicates(&schema).await, 0);
    delete_and_release(&mut c, &name).await;
}

fn is_cdc_started(m: &WatchPipeResponse) -> bool {
    matches!(
        m.event.as_ref().and_then(|e| e.payload.as_ref()),
        Some(event::Payload::CdcStarted(_))
    )
}

fn kind(m: &WatchPipeResponse) -> &'static str {
    m.event
        .as_ref()
        .map_or("state", pgpipe::domain::projection::event_kind)
}

async fn next_msg(s: &mut tonic::Streaming<WatchPipeResponse>) -> WatchPipeResponse {
    tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .expect("no watch message within 60 s")
        .expect("watch stream ended")
        .expect("watch stream error")
}

async fn watch_from(url: &str, name: &str, after: u64) -> tonic::Streaming<WatchPipeResponse> {
    watch_pipe(&mut connect(url).await, name, Some(after)).await
}

/// A watcher that drops its connection mid-resync and comes back with the
/// last cursor it saw gets exactly what an uninterrupted watcher got: the
/// same messages, no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_reconnecting_mid_resync_misses_nothing() {
    let schema = unique("rsc");
    make_table(&schema, 12_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (p, mut c) = engine(&dir, "snapshot.partition_done=sleep(1000)").await;
    let name = pipe_name(&schema);
    let old = create(&mut c, &name, &schema).await;
    let start = get(&mut c, &name).await.cursor;

    let mut whole = watch_from(&p.url(), &name, start).await;
    let mut first = watch_from(&p.url(), &name, start).await;
    let new = resync(&mut c, &name).await.unwrap();

    // Session 1: until the initial load reported progress, then gone.
    let mut split = Vec::new();
    loop {
        let m = next_msg(&mut first).await;
        let progress = kind(&m) == "snapshot_progress";
        split.push(m);
        if progress {
            break;
        }
    }
    drop(first);
    let last = split.last().unwrap().cursor;
    // Events happen while it is away.
    let away = wait_pipe(
        &mut c,
        &name,
        "events while away",
        Duration::from_secs(60),
        unless_failed(|p| p.cursor > last + 1),
    )
    .await;
    assert_eq!(away.id, new.id);

    // Session 2: resumes after the last cursor seen.
    let mut second = watch_from(&p.url(), &name, last).await;
    loop {
        let m = next_msg(&mut second).await;
        let end = is_cdc_started(&m);
        split.push(m);
        if end {
            break;
        }
    }
    let mut reference = Vec::new();
    loop {
        let m = next_msg(&mut whole).await;
        let end = is_cdc_started(&m);
        reference.push(m);
        if end {
            break;
        }
    }

    let cursors = |v: &[WatchPipeResponse]| v.iter().map(|m| m.cursor).collect::<Vec<_>>();
    assert_eq!(cursors(&split), cursors(&reference));
    // No gap: this server has one pipe, so its stream is the whole log.
    for (i, m) in reference.iter().enumerate() {
        assert_eq!(m.cursor, start + 1 + i as u64, "gap at {i}");
        assert_eq!(m.event.as_ref().unwrap().seq, m.cursor);
    }
    assert_eq!(split, reference, "messages differ");
    let kinds: Vec<&str> = reference.iter().map(kind).collect();
    assert_eq!(kinds[0], "resync_started", "{kinds:?}");
    assert!(kinds.contains(&"pipe_deleted") && kinds.contains(&"tables_swapped"));
    let last = reference.last().unwrap().pipe.as_ref().unwrap();
    assert_eq!(last.id, new.id);
    assert_eq!(last.resync_of, old.id);
    assert_eq!(last.status(), PipeStatus::Running);
    delete_and_release(&mut c, &name).await;
}

/// The JSON messages grpcurl printed so far (complete ones).
fn messages(out: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .collect()
}

const PAYLOADS: [&str; 20] = [
    "pipeCreated",
    "pipeDeleted",
    "resyncStarted",
    "tablesPrepared",
    "snapshotStarted",
    "snapshotProgress",
    "snapshotTableCompleted",
    "snapshotCompleted",
    "softDeletesTransferred",
    "swapStarted",
    "tablesSwapped",
    "cdcStarted",
    "cdcProgress",
    "pipePaused",
    "pipeResumed",
    "pipeFailed",
    "pipeRecovered",
    "stepStarted",
    "setupCompleted",
    "sourceReleased",
];

fn json_kind(m: &serde_json::Value) -> &'static str {
    match m.get("event") {
        None => "state",
        Some(e) => PAYLOADS
            .iter()
            .find(|k| e.get(**k).is_some())
            .copied()
            .unwrap_or("unknown"),
    }
}

/// grpcurl's WatchPipe, started before a resync, prints the whole resync in
/// order: old incarnation deleted (reason resync), new one created, tables
/// prepared, snapshot progress, swap (status RESYNC), soft deletes
/// transferred, tables swapped, CDC started (RUNNING).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_watch_shows_a_resync_in_order() {
    let Some(bin) = grpcurl_or_skip() else {
        return;
    };
    let schema = unique("rsg");
    make_table(&schema, 6_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (p, mut c) = engine(&dir, "").await;
    let name = pipe_name(&schema);
    let old = create(&mut c, &name, &schema).await;
    // Two soft-deleted rows to carry over.
    pg_exec(&format!("DELETE FROM {schema}.items WHERE id IN (10, 11)")).await;
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;

    let mut child = Command::new(&bin)
        .args([
            "-plaintext",
            "-d",
            &format!(r#"{{"name":"{name}"}}"#),
            &p.addr,
            "pgpipe.v1.PipeService/WatchPipe",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let reader = {
        let out = Arc::clone(&out);
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let snapshot = |out: &Arc<Mutex<String>>| messages(&out.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot(&out).is_empty() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!(
                "grpcurl printed no state message: {} {err}",
                out.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let new = resync(&mut c, &name).await.unwrap();
    let running = |m: &serde_json::Value| {
        json_kind(m) == "cdcStarted"
            && m["pipe"]["id"] == new.id.as_str()
            && m["pipe"]["status"] == "PIPE_STATUS_RUNNING"
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if snapshot(&out).iter().any(running) {
            break;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "grpcurl never showed RUNNING: {}",
                out.lock().unwrap().chars().take(20_000).collect::<String>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();

    let msgs = snapshot(&out);
    assert_eq!(json_kind(&msgs[0]), "state");
    assert_eq!(msgs[0]["pipe"]["id"], old.id.as_str());
    let kinds: Vec<&str> = msgs.iter().map(json_kind).collect();
    let pos = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        msgs.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{what} missing from {kinds:?}"))
    };
    let deleted = pos(
        &|m| {
            json_kind(m) == "pipeDeleted"
                && m["event"]["pipeDeleted"]["reason"] == "DELETE_REASON_RESYNC"
                && m["pipe"]["id"] == old.id.as_str()
        },
        "old incarnation deleted (reason resync)",
    );
    let created = pos(
        &|m| {
            json_kind(m) == "pipeCreated"
                && m["pipe"]["id"] == new.id.as_str()
                && m["pipe"]["resyncOf"] == old.id.as_str()
        },
        "new incarnation created",
    );
    let prepared = pos(&|m| json_kind(m) == "tablesPrepared", "tables prepared");
    let progress = pos(&|m| json_kind(m) == "snapshotProgress", "snapshot progress");
    let last_progress = msgs
        .iter()
        .rposition(|m| json_kind(m) == "snapshotProgress")
        .unwrap();
    let resync_status = pos(
        &|m| m["pipe"]["status"] == "PIPE_STATUS_RESYNC",
        "status PIPE_STATUS_RESYNC",
    );
    let soft = pos(
        &|m| json_kind(m) == "softDeletesTransferred",
        "soft deletes transferred",
    );
    let swapped = pos(&|m| json_kind(m) == "tablesSwapped", "tables swapped");
    let cdc = pos(&running, "CDC started, RUNNING");
    assert!(last_progress < resync_status, "{kinds:?}");
    let order = [
        deleted,
        created,
        prepared,
        progress,
        resync_status,
        soft,
        swapped,
        cdc,
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order {order:?}: {kinds:?}"
    );
    assert_eq!(json_kind(&msgs[resync_status]), "swapStarted", "{kinds:?}");
    let rows = &msgs[soft]["event"]["softDeletesTransferred"]["rows"];
    assert_eq!(rows, "2", "64-bit integers are strings in JSON");
    // Nothing after the old incarnation's deletion is about it but the
    // release of its source objects.
    for m in &msgs[deleted + 1..=cdc] {
        if m["pipe"]["id"] == old.id.as_str() {
            assert_eq!(json_kind(m), "sourceReleased", "{m}");
        }
    }
    delete_and_release(&mut c, &name).await;
}

fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// After a resync, GetPipe's steps each have a start, an end and a duration
/// that matches them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_of_a_finished_resync_have_start_end_and_duration() {
    let schema = unique("rst");
    make_table(&schema, 8_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = pipe_name(&schema);
    create(&mut c, &name, &schema).await;
    let new = resync(&mut c, &name).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let p = get(&mut c, &name).await;
    assert_eq!(p.id, new.id);
    let names: Vec<&str> = p.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        names,
        ["setup", "prepare_tables", "snapshot", "swap"],
        "{:?}",
        p.steps
    );
    let mut previous_end = i64::MIN;
    for s in &p.steps {
        let started = s
            .started_at
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no start", s.step));
        let finished = s
            .finished_at
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no end: {:?}", s.step, p.steps));
        let (a, b) = (ts_ms(started), ts_ms(finished));
        assert!(b >= a, "{} ends before it starts", s.step);
        assert!(
            a >= previous_end,
            "{} starts before the previous ended",
            s.step
        );
        assert!(
            (s.duration_ms as i64 - (b - a)).abs() <= 1,
            "{}: duration {} vs {}",
            s.step,
            s.duration_ms,
            b - a
        );
        previous_end = b;
    }
    delete_and_release(&mut c, &name).await;
}

/// A pipe that fails for good records the step that failed: a slot dropped
/// behind pgpipe's back fails CDC, so `failed_step` must be "cdc" (the same
/// holds for a resync whose initial load fails: "snapshot").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_names_the_step_that_failed() {
    let schema = unique("rsf");
    make_table(&schema, 500).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = pipe_name(&schema);
    let p = create(&mut c, &name, &schema).await;
    let pg = pg().await;
    pg.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
        &[&p.slot_name],
    )
    .await
    .unwrap();
    let _ = pg
        .execute("SELECT pg_drop_replication_slot($1)", &[&p.slot_name])
        .await;
    let failed = wait_failed(&mut c, &name, Duration::from_secs(60)).await;
    // Clean up first (a resync recovers it, then delete), then check.
    resync(&mut c, &name).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    delete_and_release(&mut c, &name).await;
    assert_eq!(failed.failed_step, "cdc", "{}", failed.error);
}
