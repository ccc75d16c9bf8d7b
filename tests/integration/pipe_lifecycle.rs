//! A live pipe's lifecycle against real Postgres and ClickHouse: pause,
//! resume, delete, failures that need a resync, schema changes, TOAST.

use std::time::Duration;

use crate::common::data::*;
use crate::common::wait::wait_pipe;
use crate::common::*;
use pgpipe::proto::*;

const COLS: &str = "id, name, qty";

async fn setup(rows: i64) -> (InProcess, Client, String, String) {
    let schema = unique("lc");
    make_items(&schema, rows).await;
    let name = pipe_name(&schema);
    let (srv, c, _) = start_pipe(pipe_req(&name, &schema, &[&format!("{schema}.items")])).await;
    (srv, c, schema, name)
}

async fn slot_exists(slot: &str) -> bool {
    let row = pg()
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

async fn wait_status(c: &mut Client, name: &str, status: PipeStatus) -> Pipe {
    let what = format!("{status:?}");
    wait_pipe(c, name, &what, Duration::from_secs(60), |p| {
        p.status() == status
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_keeps_the_slot_and_resume_catches_up() {
    let (_srv, mut c, schema, name) = setup(500).await;
    let paused = pause(&mut c, &name).await;
    assert!(slot_exists(&paused.slot_name).await);
    pg_exec(&format!(
        "INSERT INTO {schema}.items VALUES (9001, 'while paused', 1)"
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        diff(&schema, "items", &schema, "items", COLS).await > 0,
        "a paused pipe applies nothing"
    );
    resume(&mut c, &name).await;
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_drops_the_slot_and_publication_and_keeps_the_tables() {
    let (_srv, mut c, schema, name) = setup(100).await;
    let p = get(&mut c, &name).await;
    delete_pipe(&mut c, &name).await;
    wait_released(&mut c, &p.id).await;
    assert!(!slot_exists(&p.slot_name).await, "slot dropped");
    assert!(
        !publication_exists(&p.publication_name).await,
        "publication dropped"
    );
    let rows: u64 = ch_one(&schema, "SELECT count() FROM items").await;
    assert_eq!(rows, 100, "destination tables are kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_slot_fails_the_pipe_with_a_resync_hint_and_resync_recovers() {
    let (_srv, mut c, schema, name) = setup(200).await;
    let p = get(&mut c, &name).await;
    // Terminate the holder if any and drop the slot behind pgpipe's back.
    pg().await
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&p.slot_name],
        )
        .await
        .unwrap();
    let _ = pg()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&p.slot_name])
        .await;
    let failed = wait_status(&mut c, &name, PipeStatus::Failed).await;
    assert!(
        failed.error.to_lowercase().contains("resync"),
        "{}",
        failed.error
    );
    pg_exec(&format!(
        "INSERT INTO {schema}.items VALUES (7777, 'after', 1)"
    ))
    .await;
    resync(&mut c, &name).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breaking_schema_change_fails_the_table_and_a_table_resync_picks_up_the_new_structure() {
    let (_srv, mut c, schema, name) = setup(300).await;
    pg_exec(&format!(
        "ALTER TABLE {schema}.items ALTER COLUMN qty TYPE text;
             UPDATE {schema}.items SET qty = 'lots' WHERE id = 1;"
    ))
    .await;
    let table = format!("{schema}.items");
    let t = wait_table_state(&mut c, &name, &table, TableState::Failed).await;
    assert!(t.error.contains("resync this table"), "{}", t.error);
    c.resync_pipe(ResyncPipeRequest {
        name: name.clone(),
        tables: vec![table],
        ..Default::default()
    })
    .await
    .unwrap();
    wait_same(&schema, "items", COLS, Duration::from_secs(120)).await;
    let t: String = ch_one(&schema, "SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'items' AND name = 'qty'").await;
    assert!(t.contains("String"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_added_column_appears_in_clickhouse() {
    let (_srv, _c, schema, _name) = setup(50).await;
    pg_exec(&format!(
        "ALTER TABLE {schema}.items ADD COLUMN note text;
             INSERT INTO {schema}.items VALUES (5000, 'new', 1, 'hello');
             UPDATE {schema}.items SET note = 'n' || id WHERE id <= 10;"
    ))
    .await;
    wait_same(
        &schema,
        "items",
        "id, name, qty, note",
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_leaves_a_toasted_value_alone_keeps_it() {
    let schema = unique("lct");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.docs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE {schema}.docs ALTER COLUMN body SET STORAGE EXTERNAL;"
    ))
    .await;
    let name = pipe_name(&schema);
    let (_srv, _c, _) = start_pipe(pipe_req(&name, &schema, &[&format!("{schema}.docs")])).await;
    let pg = pg().await;
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.docs SELECT g, repeat(md5(g::text), 400), 0 FROM generate_series(1, 20) g;"
    ))
    .await
    .unwrap();
    wait_same(&schema, "docs", "id, body, n", Duration::from_secs(60)).await;
    pg.batch_execute(&format!("UPDATE {schema}.docs SET n = n + 1;"))
        .await
        .unwrap();
    wait_same(&schema, "docs", "id, body, n", Duration::from_secs(60)).await;
    let empty: u64 = ch_one(
        &schema,
        "SELECT count() FROM docs FINAL WHERE length(body) < 8000",
    )
    .await;
    assert_eq!(empty, 0);
}
