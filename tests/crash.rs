//! kill -9 at every named step (fail-points abort the process like SIGKILL):
//! after a restart the pipe resumes from the log and Postgres and ClickHouse
//! end equal, with no duplicates under FINAL.

mod common;

use std::time::Duration;

use common::data::*;
use common::*;

async fn write_some(schema: &str, from: i64) {
    pg_exec(&format!(
            "INSERT INTO {schema}.items SELECT g, 'late', 1 FROM generate_series({from}, {from} + 49) g;
             UPDATE {schema}.items SET qty = qty + 100 WHERE id % 17 = 0;
             DELETE FROM {schema}.items WHERE id % 19 = 0;"
        )).await;
}

/// Waits for the process to end by itself (the fail-point fired).
async fn wait_exit(p: &mut Proc) {
    p.wait_exit(Duration::from_secs(60)).await;
}

async fn assert_synced(schema: &str) {
    wait_same(schema, "items", ITEMS_COLS, Duration::from_secs(90)).await;
    let dups = ch_duplicates(schema, "items", "id").await;
    assert_eq!(dups, 0, "duplicates under FINAL");
}

/// A pipe of `schema`.items created on `c`.
async fn create(c: &mut Client, name: &str, schema: &str) {
    c.create_pipe(pipe_req(name, schema, &[&format!("{schema}.items")]))
        .await
        .unwrap();
}

/// Crash while a new pipe is being set up / loaded.
async fn crash_during_create(failpoint: &str) {
    let schema = unique("crc");
    make_items(&schema, 12_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let fp = format!("{failpoint}=abort");
    let (mut p, mut c) = Proc::start_with_failpoints(dir.path(), &fp).await;
    create(&mut c, &name, &schema).await;
    wait_exit(&mut p).await;
    write_some(&schema, 50_000).await;

    let (_p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    write_some(&schema, 60_000).await;
    assert_synced(&schema).await;
}

/// Crash during a resync of a running pipe.
async fn crash_during_resync(failpoint: &str) {
    let schema = unique("crr");
    make_items(&schema, 8_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (mut p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    create(&mut c, &name, &schema).await;
    let old = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    drop(c);
    p.kill9();

    let fp = format!("{failpoint}=abort");
    let (mut p, mut c) = Proc::start_with_failpoints(dir.path(), &fp).await;
    resync(&mut c, &name).await.unwrap();
    wait_exit(&mut p).await;
    write_some(&schema, 50_000).await;

    let (_p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    let now = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(now.resync_of, old.id);
    write_some(&schema, 60_000).await;
    assert_synced(&schema).await;
    let leftovers: u64 = ch_one(&schema, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'items_resync'").await;
    assert_eq!(
        leftovers, 0,
        "the old data is dropped once the swap is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_the_slot_is_created() {
    crash_during_create("setup.before_slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_slot_is_created_before_it_is_recorded() {
    crash_during_create("setup.after_slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_tables_are_created() {
    crash_during_create("prepare.after_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_when_the_snapshot_starts() {
    crash_during_create("snapshot.started").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_in_the_middle_of_the_snapshot() {
    crash_during_create("snapshot.partition_done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_cdc_after_clickhouse_acked_before_the_slot_advanced() {
    let schema = unique("crd");
    make_items(&schema, 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (mut p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    create(&mut c, &name, &schema).await;
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    drop(c);
    p.kill9();

    let (mut p, _c) = Proc::start_with_failpoints(dir.path(), "cdc.before_advance=abort").await;
    write_some(&schema, 50_000).await;
    wait_exit(&mut p).await;

    let (_p, _c) = Proc::start_engine(dir.path(), &[]).await;
    write_some(&schema, 60_000).await;
    assert_synced(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_in_the_middle_of_a_transaction_larger_than_the_batch() {
    let schema = unique("crt");
    make_items(&schema, 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (mut p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    create(&mut c, &name, &schema).await;
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    drop(c);
    p.kill9();

    // 60,000 rows and updates in one transaction, batches of 5,000: the
    // process dies once the first chunk is in ClickHouse.
    let (mut p, _c) = Proc::start_with_failpoints(dir.path(), "cdc.mid_transaction=abort").await;
    pg_exec(&format!(
        "BEGIN;
         INSERT INTO {schema}.items SELECT g, 'big', g % 5 FROM generate_series(100001, 160000) g;
         UPDATE {schema}.items SET qty = qty + 1 WHERE id % 3 = 0;
         DELETE FROM {schema}.items WHERE id % 7 = 0;
         COMMIT;"
    ))
    .await;
    wait_exit(&mut p).await;

    let (_p, _c) = Proc::start_engine(dir.path(), &[]).await;
    write_some(&schema, 200_000).await;
    assert_synced(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_resync_setup() {
    crash_during_resync("setup.after_slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_resync_load() {
    crash_during_resync("snapshot.partition_done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_the_swap() {
    crash_during_resync("swap.before_exchange").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_in_the_middle_of_the_swap() {
    crash_during_resync("swap.after_exchange").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_resync_tables_are_created() {
    crash_during_resync("prepare.after_create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_when_the_resync_load_starts() {
    crash_during_resync("snapshot.started").await;
}

/// Crash at start-up, before the log is replayed: the pipe resumes CDC from
/// its slot on the next start, with the changes made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_the_log_is_replayed() {
    let schema = unique("crp");
    make_items(&schema, 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (mut p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    create(&mut c, &name, &schema).await;
    let before = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    drop(c);
    p.kill9();
    write_some(&schema, 50_000).await;

    let mut p = Proc::spawn_engine(dir.path(), &[("PGPIPE_FAILPOINTS", "replay.before=abort")]);
    wait_exit(&mut p).await;

    let (_p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    let after = wait_running(&mut c, &name, Duration::from_secs(60)).await;
    assert_eq!(after.id, before.id, "the same incarnation resumes");
    write_some(&schema, 60_000).await;
    assert_synced(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_swap_is_recorded_before_the_old_data_is_dropped() {
    crash_during_resync("swap.before_drop").await;
}
