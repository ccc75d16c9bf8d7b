//! CDC over the streaming replication protocol: transactions of any size
//! applied in chunks and confirmed at their end, the slot held by a
//! walsender, a quiet publication that pins no WAL, and reconnection after
//! the walsender or the server goes away (real Postgres 15 and ClickHouse).

use std::time::Duration;

use crate::common::data::*;
use crate::common::peers::PrivateEnv;
use crate::common::proxy::Proxy;
use crate::common::*;
use pgpipe::proto::*;

const COLS: &str = "id, n, s";

async fn make_table(pg: &tokio_postgres::Client, table: &str, rows: i64) {
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, n int, s text);
         INSERT INTO {table} SELECT g, g % 1000, md5(g::text) FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
}

/// One transaction inserting `rows` rows after `from`, and the WAL position
/// after its commit.
async fn big_transaction(pg: &tokio_postgres::Client, table: &str, from: i64, rows: i64) -> String {
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, g % 1000, md5(g::text) FROM generate_series({from}, {from} + {rows} - 1) g"
    ))
    .await
    .unwrap();
    pg.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn slot_of(c: &mut Client, name: &str) -> String {
    get(c, name).await.slot_name
}

/// Whether the slot's confirmed position is at or past `lsn`.
async fn confirmed_past(pg: &tokio_postgres::Client, slot: &str, lsn: &str) -> bool {
    pg.query_one(
        "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) \
         FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot, &lsn],
    )
    .await
    .unwrap()
    .get(0)
}

/// Polls `check` every `every` until it holds; panics saying `what` after
/// `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (after {timeout:?})"
        );
        tokio::time::sleep(every).await;
    }
}

/// Live rows of a ClickHouse table (FINAL, not deleted).
/// Waits until the ClickHouse table `database`.items holds the rows of the
/// private Postgres' public.items.
async fn wait_items_equal(env: &PrivateEnv, database: &str, timeout: Duration) {
    env.wait_equal(database, "items", "public", "items", COLS, timeout)
        .await;
}

async fn live_rows(database: &str, table: &str) -> u64 {
    ch(database)
        .query(&format!(
            "SELECT count() FROM `{table}` FINAL WHERE _pgpipe_is_deleted = 0"
        ))
        .fetch_one::<u64>()
        .await
        .unwrap()
}

async fn wait_count(database: &str, table: &str, want: u64, timeout: Duration) {
    let what = format!("{database}.{table} never had {want} rows");
    wait_until(&what, timeout, Duration::from_millis(500), || async {
        live_rows(database, table).await == want
    })
    .await;
}

/// A RUNNING in-process pipe over `<schema>.items` with `rows` rows.
struct Running {
    _srv: InProcess,
    pg: tokio_postgres::Client,
    schema: String,
    table: String,
    slot: String,
}

async fn running_items(prefix: &str, rows: i64) -> Running {
    let schema = unique(prefix);
    create_schema(&schema, "").await;
    let pg = pg().await;
    let table = format!("{schema}.items");
    make_table(&pg, &table, rows).await;
    let (srv, _, p) = start_pipe(pipe_req(&pipe_name(&schema), &schema, &[&table])).await;
    Running {
        _srv: srv,
        pg,
        schema,
        table,
        slot: p.slot_name,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_row_transaction_is_applied_while_the_pipe_runs() {
    let Running {
        pg, schema, table, ..
    } = &running_items("big", 10).await;

    big_transaction(pg, table, 11, 1_000_000).await;
    wait_count(schema, "items", 1_000_010, Duration::from_secs(600)).await;
    assert_eq!(diff(schema, "items", schema, "items", COLS).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_larger_than_the_batch_is_written_in_chunks_and_confirmed_at_its_end() {
    let schema = unique("chunk");
    create_schema(&schema, "").await;
    let pg = pg().await;
    let table = format!("{schema}.items");
    make_table(&pg, &table, 10).await;
    // Each chunk of an open transaction waits a moment once written, so
    // the half-applied state can be seen.
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = Proc::start_engine(
        dir.path(),
        &[("PGPIPE_FAILPOINTS", "cdc.mid_transaction=sleep(700)")],
    )
    .await;
    let name = pipe_name(&schema);
    c.create_pipe(pipe_req(&name, &schema, &[&table]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(60)).await;
    let slot = slot_of(&mut c, &name).await;

    // 40,000 rows with cdc_batch_size 5,000: at least eight chunks.
    let end = big_transaction(&pg, &table, 11, 40_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut partial_seen = false;
    loop {
        let n = live_rows(&schema, "items").await;
        let confirmed = confirmed_past(&pg, &slot, &end).await;
        if n > 10 && n < 40_010 {
            partial_seen = true;
            assert!(
                !confirmed,
                "the slot moved past a transaction ClickHouse has only {n} rows of"
            );
        }
        if n == 40_010 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {n} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(partial_seen, "the transaction was never seen half-applied");
    // Confirmed once it is all in (standby status updates come every second).
    wait_until(
        "the slot was not confirmed past the transaction",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || confirmed_past(&pg, &slot, &end),
    )
    .await;
    assert_eq!(diff(&schema, "items", &schema, "items", COLS).await, 0);
    let batches = history(&mut c, &name, Some(HistoryKind::Cdc)).await;
    assert!(!batches.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_running_the_slot_is_held_by_a_walsender() {
    let Running { pg, slot, .. } = &running_items("wals", 100).await;
    // Held by a walsender of pgpipe's (application_name), as soon as CDC runs.
    let what = format!("no walsender of pgpipe holds slot {slot}");
    wait_until(
        &what,
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            pg.query_one(
                "SELECT count(*) FROM pg_replication_slots s \
             JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1 AND r.application_name = 'pgpipe'",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_publication_does_not_pin_wal_while_other_tables_take_writes() {
    let Running {
        pg, schema, slot, ..
    } = &running_items("quiet", 100).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.busy (id bigint PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();

    // Writes to a table outside the publication only.
    let mut at = String::new();
    for round in 0..5_i64 {
        pg.batch_execute(&format!(
            "INSERT INTO {schema}.busy SELECT g, md5(g::text) FROM generate_series({f}, {f} + 999) g",
            f = round * 1000
        ))
        .await
        .unwrap();
        at = pg
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let what = format!("the slot of a quiet publication stays behind {at}");
    wait_until(&what, Duration::from_secs(30), Duration::from_millis(300), || async {
        // Keep the server busy: the walsender reports its position in
        // keepalives while it has WAL to read.
        pg.batch_execute(&format!(
            "INSERT INTO {schema}.busy SELECT g, 'x' FROM generate_series(1, 10) g ON CONFLICT (id) DO UPDATE SET v = 'y'"
        ))
        .await
        .unwrap();
        confirmed_past(pg, slot, &at).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipe_reconnects_after_the_walsender_is_terminated_or_postgres_restarts() {
    let env = PrivateEnv::up().await;
    let pg = env.pg().await;
    make_table(&pg, "public.items", 1_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = "reconnect";
    c.create_pipe(env.pipe_req(name, "reconnect", &["public.items"]))
        .await
        .unwrap();
    wait_running(&mut c, name, Duration::from_secs(60)).await;
    let slot = slot_of(&mut c, name).await;

    // The walsender is terminated in the middle of a large transaction.
    big_transaction(&pg, "public.items", 1_001, 200_000).await;
    let ch = env.ch("reconnect");
    wait_until(
        "nothing of the transaction was applied",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            ch.query("SELECT count() FROM items FINAL")
                .fetch_one::<u64>()
                .await
                .unwrap()
                > 1_000
        },
    )
    .await;
    let killed: i64 = pg
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "no walsender held the slot");
    wait_items_equal(&env, "reconnect", Duration::from_secs(180)).await;

    // Postgres restarts while a stream of transactions is applied.
    drop(pg);
    for i in 0..20_i64 {
        env.pg()
            .await
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 1, 'r' FROM generate_series({f}, {f} + 4999) g;
                 UPDATE items SET n = n + 1 WHERE id % 97 = {m};",
                f = 300_000 + i * 5_000,
                m = i
            ))
            .await
            .unwrap();
    }
    env.restart_pg().await;
    let pg = env.pg().await;
    pg.batch_execute("DELETE FROM items WHERE id % 13 = 0")
        .await
        .unwrap();
    wait_items_equal(&env, "reconnect", Duration::from_secs(180)).await;
    let p = wait_running(&mut c, name, Duration::from_secs(60)).await;
    assert_eq!(p.status(), PipeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_gone_silent_is_detected_and_the_pipe_reconnects() {
    let env = PrivateEnv::up().await;
    let pg = env.pg().await;
    make_table(&pg, "public.items", 1_000).await;
    // The server ends a walsender that stops answering after 3 s (60 s by
    // default), so the new session finds the slot free sooner.
    for sql in [
        "ALTER SYSTEM SET wal_sender_timeout = '3s'",
        "SELECT pg_reload_conf()",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
    let proxy = Proxy::start(env.pg_port).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = "silent";
    let mut req = env.pipe_req(name, "silent", &["public.items"]);
    if let Some(s) = req.source.as_mut() {
        s.connection_string = s
            .connection_string
            .replace(&format!(":{}/", env.pg_port), &format!(":{}/", proxy.port));
    }
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, name, Duration::from_secs(60)).await;
    pg.batch_execute("INSERT INTO items SELECT g, 1, 'a' FROM generate_series(1001, 1100) g")
        .await
        .unwrap();
    wait_items_equal(&env, "silent", Duration::from_secs(60)).await;

    // Every connection pgpipe has goes silent, without a reset; the
    // changes made meanwhile arrive over new connections.
    proxy.black_hole();
    pg.batch_execute(
        "INSERT INTO items SELECT g, 2, 'b' FROM generate_series(2001, 3000) g;
         UPDATE items SET n = n + 10 WHERE id % 7 = 0;",
    )
    .await
    .unwrap();
    wait_items_equal(&env, "silent", Duration::from_secs(120)).await;
    let errors = history(&mut c, name, Some(HistoryKind::Errors)).await;
    let reasons: Vec<String> = errors
        .iter()
        .filter_map(|e| match &e.payload {
            Some(event::Payload::PipeFailed(f)) => Some(f.reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("did not answer within")),
        "the lost connection was reported on the pipe: {reasons:?}"
    );
    let p = wait_running(&mut c, name, Duration::from_secs(60)).await;
    assert_eq!(p.status(), PipeStatus::Running);
}
