//! A replication slot that can no longer deliver changes: invalidated by
//! the server (max_slot_wal_keep_size exceeded while the pipe was paused),
//! or dropped by someone else while paused. Either way the pipe must go
//! FAILED saying why and to resync (not retry forever), and a ResyncPipe
//! must bring the destination back to equal, row by row.

use std::time::Duration;

use crate::common::data::{unique, wait_running};
use crate::common::peers::*;
use crate::common::*;
use pgpipe::proto::*;

const COLS: &str = "id, name, qty";

async fn slot_state(env: &PrivateEnv, slot: &str) -> Option<(String, bool)> {
    env.pg()
        .await
        .query_opt(
            "SELECT coalesce(wal_status, ''), active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

async fn wait_slot_inactive(env: &PrivateEnv, slot: &str) {
    for _ in 0..150 {
        if let Some((_, false)) = slot_state(env, slot).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "slot {slot} still active: {:?}",
        slot_state(env, slot).await
    );
}

/// Waits for FAILED; asserts the pipe did not merely retry.
async fn wait_failed(c: &mut Client, name: &str) -> Pipe {
    wait_pipe(c, name, "FAILED", Duration::from_secs(60), |p| {
        p.status() == PipeStatus::Failed
    })
    .await
}

async fn running_then_paused(
    env: &PrivateEnv,
    prefix: &str,
) -> (InProcess, Client, String, String, String) {
    let schema = unique(prefix);
    env.make_items(&schema, 1000).await;
    let (srv, mut c, name, p) = env.start_items_pipe(&schema).await;
    pause(&mut c, &name).await;
    wait_slot_inactive(env, &p.slot_name).await;
    // Changes made while paused: the slot must carry them, or the resync.
    env.pg()
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.items SELECT g, 'paused ' || g, 1 FROM generate_series(5001, 5100) g;
             UPDATE {schema}.items SET qty = qty + 100 WHERE id % 17 = 0;
             DELETE FROM {schema}.items WHERE id % 19 = 0;"
        ))
        .await
        .unwrap();
    (srv, c, schema, name, p.slot_name)
}

async fn resync_and_compare(env: &PrivateEnv, c: &mut Client, schema: &str, name: &str) {
    env.pg()
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.items VALUES (9999, 'before resync', 2)"
        ))
        .await
        .unwrap();
    resync(c, name).await.unwrap();
    wait_running(c, name, Duration::from_secs(120)).await;
    env.wait_same(schema, "items", COLS, Duration::from_secs(60))
        .await;
    // And CDC flows on the new slot.
    env.pg()
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.items VALUES (10000, 'after resync', 3);
             DELETE FROM {schema}.items WHERE id = 1;"
        ))
        .await
        .unwrap();
    env.wait_same(schema, "items", COLS, Duration::from_secs(60))
        .await;
}

/// Resumes the pipe, waits until it is FAILED and checks that the error
/// names the slot and says what to do (resync); the pipe and its error in
/// lower case.
async fn resume_into_failed(c: &mut Client, name: &str, slot: &str) -> (Pipe, String) {
    resume(c, name).await;
    let failed = wait_failed(c, name).await;
    eprintln!("FAILED with: {}", failed.error);
    let err = failed.error.to_lowercase();
    assert!(err.contains(slot), "{}", failed.error);
    assert!(err.contains("resync"), "says what to do: {}", failed.error);
    (failed, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidated_slot_fails_the_pipe_with_a_resync_hint_and_resync_recovers() {
    let env = PrivateEnv::up().await;
    env.limit_slot_wal().await;
    let (_srv, mut c, schema, name, slot) = running_then_paused(&env, "slost").await;

    let pg = env.pg().await;
    pg.batch_execute("CREATE TABLE scratch (id int, pad text)")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        churn_wal(&pg).await;
        let state = slot_state(&env, &slot).await;
        if matches!(&state, Some((s, _)) if s == "lost") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never lost: {state:?}"
        );
    }

    let (failed, err) = resume_into_failed(&mut c, &name, &slot).await;
    assert!(
        err.contains("is lost")
            && err.contains("invalidated")
            && err.contains("max_slot_wal_keep_size"),
        "says what happened: {}",
        failed.error
    );
    // FAILED is final: no retry loop flips it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = get(&mut c, &name).await;
    assert_eq!(still.status(), PipeStatus::Failed);
    assert_eq!(
        still.stream_version, failed.stream_version,
        "still retrying"
    );

    resync_and_compare(&env, &mut c, &schema, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_dropped_while_paused_fails_the_pipe_on_resume_and_resync_recovers() {
    let env = PrivateEnv::up().await;
    let (_srv, mut c, schema, name, slot) = running_then_paused(&env, "sdrop").await;
    env.pg()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let (failed, err) = resume_into_failed(&mut c, &name, &slot).await;
    assert!(
        err.contains("is lost") && err.contains("it was dropped"),
        "{}",
        failed.error
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(&mut c, &name).await.stream_version,
        failed.stream_version
    );

    resync_and_compare(&env, &mut c, &schema, &name).await;
}
