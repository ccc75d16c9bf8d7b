//! Pipes moving data: Postgres -> ClickHouse, snapshot then CDC, compared
//! row by row (real Postgres with wal_level=logical, real ClickHouse engine).

use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;

const COLS: &str = "id, name, toDecimal64(amount, 2), qty, toDateTime64(created, 6, 'UTC'), flag";

async fn make_table(schema: &str, rows: i64) {
    let pg = pg().await;
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, name text, amount numeric(12,2), qty int,
                                       created timestamptz, flag boolean);
         INSERT INTO {schema}.orders SELECT g, 'name ' || g || E'\\t\\u00e9', g * 1.25, g % 7,
                now() - g * interval '1 minute', g % 2 = 0 FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipe_snapshots_then_streams_changes() {
    let schema = unique("e2e");
    make_table(&schema, 10_000).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.orders");
    c.create_pipe(pipe_req(&name, &schema, &[&table]))
        .await
        .unwrap();
    let p = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(p.tables[0].snapshot_rows, 10_000);
    assert!(p.tables[0].snapshot_done);
    wait_same(&schema, "orders", COLS, Duration::from_secs(30)).await;

    let pg = pg().await;
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.orders SELECT g, 'new', 1, 1, now(), true FROM generate_series(10001, 10100) g;
         UPDATE {schema}.orders SET name = 'updated', qty = qty + 1 WHERE id % 10 = 0;
         DELETE FROM {schema}.orders WHERE id % 15 = 0;"
    ))
    .await
    .unwrap();
    wait_same(&schema, "orders", COLS, Duration::from_secs(60)).await;
    // Deleted rows are soft-deleted, not gone.
    let deleted: u64 = ch_one(
        &schema,
        "SELECT count() FROM orders WHERE _pgpipe_is_deleted = 1",
    )
    .await;
    assert!(deleted > 0);
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_the_snapshot_are_neither_lost_nor_doubled() {
    let schema = unique("e2ew");
    make_table(&schema, 30_000).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.orders");
    let writer = {
        let schema = schema.clone();
        tokio::spawn(async move {
            let pg = pg().await;
            for i in 0..150i64 {
                pg.batch_execute(&format!(
                    "INSERT INTO {schema}.orders VALUES ({id}, 'w', 2, 2, now(), false);
                     UPDATE {schema}.orders SET qty = qty + 1 WHERE id = {u};
                     DELETE FROM {schema}.orders WHERE id = {d};",
                    id = 100_000 + i,
                    u = 1 + i * 7,
                    d = 2 + i * 11
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    c.create_pipe(pipe_req(&name, &schema, &[&table]))
        .await
        .unwrap();
    writer.await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    wait_same(&schema, "orders", COLS, Duration::from_secs(60)).await;
    let dups: i64 = ch_one(&schema, "SELECT count() - uniqExact(id) FROM orders FINAL").await;
    assert_eq!(dups, 0);
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_refuses_a_missing_table_before_recording_anything() {
    let schema = unique("e2em");
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let e = c
        .create_pipe(pipe_req(&name, &schema, &[&format!("{schema}.nope")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("nope"), "{}", e.message());
    let all = list_all(&mut c).await;
    assert!(all.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_with_a_new_order_by_rebuilds_and_swaps() {
    let schema = unique("e2er");
    make_table(&schema, 5_000).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.orders");
    c.create_pipe(pipe_req(&name, &schema, &[&table]))
        .await
        .unwrap();
    let old = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    // Rows 42 and 43 are soft-deleted in ClickHouse; 42 is then re-inserted
    // in Postgres right before the resync (its tombstone is still the latest
    // version in the original table): it must be live afterwards, while 43's
    // tombstone is carried over.
    let pg = pg().await;
    pg.batch_execute(&format!(
        "DELETE FROM {schema}.orders WHERE id IN (42, 43);"
    ))
    .await
    .unwrap();
    wait_same(&schema, "orders", COLS, Duration::from_secs(60)).await;
    let tombstones: u64 = ch_one(
        &schema,
        "SELECT count() FROM orders WHERE id IN (42, 43) AND _pgpipe_is_deleted = 1",
    )
    .await;
    assert_eq!(tombstones, 2, "deletes are soft deletes");
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.orders VALUES (42, 'back', 1, 1, now(), true);"
    ))
    .await
    .unwrap();

    let mut watch = watch_pipe(&mut c, &name, Some(old.cursor)).await;
    let new = resync_overrides(
        &mut c,
        &name,
        vec![TableConfig {
            source_table: table.clone(),
            order_by: vec!["qty".into(), "id".into()],
            ..Default::default()
        }],
        false,
    )
    .await
    .unwrap();
    assert_eq!(new.resync_of, old.id);
    let running = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(running.id, new.id);
    wait_same(&schema, "orders", COLS, Duration::from_secs(60)).await;
    let key: String = ch_one(&schema, "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = 'orders'").await;
    assert_eq!(key.replace(' ', ""), "qty,id");
    let tombstone_43: u64 = ch_one(
        &schema,
        "SELECT count() FROM orders WHERE id = 43 AND _pgpipe_is_deleted = 1",
    )
    .await;
    assert_eq!(
        tombstone_43,
        1,
        "soft-deleted row transferred: {:?}",
        get(&mut c, &name).await.tables
    );
    let live_42: u64 = ch_one(
        &schema,
        "SELECT count() FROM orders FINAL WHERE id = 42 AND _pgpipe_is_deleted = 0",
    )
    .await;
    assert_eq!(live_42, 1, "a re-inserted row stays live");

    // The watcher saw the whole resync, in order.
    let mut kinds = Vec::new();
    while !kinds.contains(&"cdc_started") {
        let m = tokio::time::timeout(
            Duration::from_secs(30),
            futures::StreamExt::next(&mut watch),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        let k = pgpipe::domain::projection::event_kind(m.event.as_ref().unwrap());
        if kinds.last() != Some(&k) {
            kinds.push(k);
        }
    }
    let order = [
        "resync_started",
        "pipe_deleted",
        "pipe_created",
        "setup_completed",
        "tables_prepared",
        "snapshot_started",
        "snapshot_completed",
        "swap_started",
        "soft_deletes_transferred",
        "tables_swapped",
        "cdc_started",
    ];
    let mut at = 0;
    for k in &kinds {
        if at < order.len() && *k == order[at] {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "events seen: {kinds:?}");
    delete_pipe(&mut c, &name).await;
}
