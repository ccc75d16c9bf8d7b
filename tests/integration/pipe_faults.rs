//! Peers failing under a pipe, each test on its own private Postgres and
//! ClickHouse front (`dev/env` with a temporary state directory and free
//! ports, torn down on drop), so restarting them disturbs no other test:
//! a restart during CDC is retried and recovered from by itself, and
//! CreatePipe refuses an end it cannot use with FAILED_PRECONDITION naming
//! what to fix, recording nothing.

use std::time::{Duration, Instant};

use crate::common::data::{pipe_name, unique, wait_running};
use crate::common::peers::*;
use crate::common::*;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;

const COLS: &str = "id, name, qty";

/// Inserts 50 rows from `from`, updates and deletes some.
async fn write_some(env: &PrivateEnv, schema: &str, from: i64) {
    env.pg()
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.items SELECT g, 'late ' || g, 1 FROM generate_series({from}, {from} + 49) g;
             UPDATE {schema}.items SET qty = qty + 100, name = name || '+' WHERE id % 17 = 0;
             DELETE FROM {schema}.items WHERE id % 19 = 0;"
        ))
        .await
        .unwrap();
}

/// A table, an engine and a RUNNING pipe between the private peers, with
/// the snapshot already in ClickHouse.
async fn running_pipe(env: &PrivateEnv, prefix: &str) -> (InProcess, Client, String, String) {
    let schema = unique(prefix);
    env.make_items(&schema, 2_000).await;
    let (srv, c, name, _) = env.start_items_pipe(&schema).await;
    (srv, c, schema, name)
}

/// The pipe's events after `after` up to its current state.
async fn events_since(c: &mut Client, name: &str, after: u64) -> Vec<Event> {
    let head = get(c, name).await.cursor;
    let mut stream = watch_pipe(c, name, Some(after)).await;
    let mut events = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut stream),
    )
    .await
    {
        let m = m.unwrap();
        if let Some(e) = m.event {
            events.push(e);
        }
        if m.cursor >= head {
            break;
        }
    }
    events
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.payload {
            Some(Payload::PipeFailed(f)) => {
                format!("pipe_failed(retrying={}, {:?})", f.retrying, f.reason)
            }
            _ => pgpipe::domain::projection::event_kind(e).to_owned(),
        })
        .collect()
}

/// A failure reported as retrying, a recovery only once the peer was back
/// (events after `back_at`), and never a failure that needs the user.
fn assert_retried_and_recovered(events: &[Event], back_at: u64) {
    let all = kinds(events);
    let first_failure = events
        .iter()
        .position(|e| matches!(&e.payload, Some(Payload::PipeFailed(f)) if f.retrying));
    let Some(first_failure) = first_failure else {
        panic!("no PipeFailed(retrying) event: {all:?}");
    };
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.payload, Some(Payload::PipeFailed(f)) if !f.retrying)),
        "a failure that needs the user: {all:?}"
    );
    let last_failure = events
        .iter()
        .rposition(|e| matches!(&e.payload, Some(Payload::PipeFailed(_))))
        .unwrap();
    assert!(first_failure <= last_failure);
    assert!(
        !events
            .iter()
            .any(|e| e.seq <= back_at && matches!(&e.payload, Some(Payload::PipeRecovered(_)))),
        "recovered while the peer was still down: {all:?}"
    );
    assert!(
        events[last_failure..]
            .iter()
            .any(|e| matches!(&e.payload, Some(Payload::PipeRecovered(_)))),
        "no PipeRecovered after the last failure: {all:?}"
    );
}

async fn assert_no_duplicates(env: &PrivateEnv, schema: &str) {
    let dups: i64 = env
        .ch(schema)
        .query("SELECT toInt64(count()) - toInt64(uniqExact(id)) FROM items FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dups, 0, "duplicates under FINAL");
}

/// Retrying: `error` set while the status stays RUNNING.
async fn wait_retrying(c: &mut Client, name: &str) -> Pipe {
    let p = wait_pipe(
        c,
        name,
        "reporting an error",
        Duration::from_secs(60),
        |p| !p.error.is_empty(),
    )
    .await;
    assert_eq!(p.status(), PipeStatus::Running, "{p:?}");
    assert!(
        p.status_detail.contains("retrying"),
        "status_detail {:?} (error {:?})",
        p.status_detail,
        p.error
    );
    p
}

async fn wait_recovered(c: &mut Client, name: &str) -> Pipe {
    let p = wait_pipe(
        c,
        name,
        "recovered (error cleared)",
        Duration::from_secs(60),
        |p| p.error.is_empty(),
    )
    .await;
    assert_eq!(p.status(), PipeStatus::Running, "{p:?}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_during_cdc_is_retried_and_recovered_from() {
    let env = PrivateEnv::up().await;
    let (_srv, mut c, schema, name) = running_pipe(&env, "fpg").await;
    let before = get(&mut c, &name).await.cursor;

    // Changes possibly still in flight when Postgres goes down.
    write_some(&env, &schema, 10_000).await;
    env.stop_pg().await;
    let failing = wait_retrying(&mut c, &name).await;
    assert!(
        failing
            .error
            .contains(&format!("127.0.0.1:{}", env.pg_port))
            || failing.error.contains("source"),
        "the error should name the source: {}",
        failing.error
    );

    let back_at = get(&mut c, &name).await.cursor;
    env.start().await;
    write_some(&env, &schema, 20_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(90))
        .await;
    wait_recovered(&mut c, &name).await;
    assert_no_duplicates(&env, &schema).await;
    // Still streaming after the recovery.
    write_some(&env, &schema, 30_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(60))
        .await;
    assert_retried_and_recovered(&events_since(&mut c, &name, before).await, back_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_killed_during_cdc_is_retried_and_recovered_from() {
    let env = PrivateEnv::up().await;
    let (_srv, mut c, schema, name) = running_pipe(&env, "fch").await;
    let before = get(&mut c, &name).await.cursor;

    env.kill_ch().await;
    // Read from the slot but not writable: the batch must be retried.
    write_some(&env, &schema, 10_000).await;
    let failing = wait_retrying(&mut c, &name).await;
    assert!(
        failing
            .error
            .contains(&format!("127.0.0.1:{}", env.ch_port))
            || failing.error.to_lowercase().contains("clickhouse"),
        "the error should name the destination: {}",
        failing.error
    );
    // More changes while ClickHouse is down: the slot keeps them.
    write_some(&env, &schema, 20_000).await;

    let back_at = get(&mut c, &name).await.cursor;
    env.start().await;
    write_some(&env, &schema, 30_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(90))
        .await;
    wait_recovered(&mut c, &name).await;
    assert_no_duplicates(&env, &schema).await;
    write_some(&env, &schema, 40_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(60))
        .await;
    assert_retried_and_recovered(&events_since(&mut c, &name, before).await, back_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_during_cdc_is_reported_as_a_cdc_failure() {
    let env = PrivateEnv::up().await;
    let (_srv, mut c, _schema, name) = running_pipe(&env, "fst").await;
    env.stop_pg().await;
    let p = wait_retrying(&mut c, &name).await;
    assert_eq!(p.failed_step, "cdc", "{}", p.error);
    assert_eq!(p.status_detail, "retrying cdc after an error");
}

/// CreatePipe must be FAILED_PRECONDITION; returns the message.
async fn refused(c: &mut Client, req: CreatePipeRequest) -> String {
    let name = req.name.clone();
    let e = c.create_pipe(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert_nothing_recorded(c, &name).await;
    e.message().to_owned()
}

async fn assert_nothing_recorded(c: &mut Client, name: &str) {
    let all = list_all(c).await;
    assert!(all.is_empty(), "recorded: {:?}", all);
    let e = c
        .get_pipe(GetPipeRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

async fn slots(env: &PrivateEnv) -> i64 {
    env.pg()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should contain {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_while_a_peer_is_down_is_refused_and_records_nothing() {
    let env = PrivateEnv::up().await;
    let schema = unique("fdn");
    env.make_items(&schema, 500).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let req = env.pipe_req(&name, &schema, &[&format!("{schema}.items")]);

    env.stop_pg().await;
    let msg = refused(&mut c, req.clone()).await;
    assert_mentions(
        &msg,
        &[
            "source",
            &format!(
                "cannot reach PostgreSQL at 127.0.0.1:{}/pgpipe_dev",
                env.pg_port
            ),
            "check the host and port, that the server is running",
        ],
    );

    env.start().await;
    env.kill_ch().await;
    let msg = refused(&mut c, req.clone()).await;
    assert!(msg.starts_with("destination"), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{}", env.ch_port)),
        "names the ClickHouse address: {msg}"
    );
    assert_eq!(slots(&env).await, 0, "no slot or publication left behind");

    // Once both answer, the same request (and name) goes through.
    env.start().await;
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_with_a_wrong_database_role_or_password_is_refused_naming_it() {
    let env = PrivateEnv::up().await;
    let schema = unique("fau");
    env.make_items(&schema, 300).await;
    // A role that must give its password (scram) on 127.0.0.1, ahead of the
    // cluster's trust rules, and a role without REPLICATION.
    env.pg()
        .await
        .batch_execute(
            "CREATE ROLE pw_user LOGIN SUPERUSER PASSWORD 'right-pw';
             CREATE ROLE plain_user LOGIN;",
        )
        .await
        .unwrap();
    env.hba_first("host all pw_user 127.0.0.1/32 scram-sha-256\n")
        .await;

    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.items");
    let req = |conn: String, password: &str| {
        let mut r = env.pipe_req(&name, &schema, &[&table]);
        let s = r.source.as_mut().unwrap();
        s.connection_string = conn;
        s.password = password.into();
        r
    };
    let target = |db: &str| format!("127.0.0.1:{}/{db}", env.pg_port);

    let msg = refused(&mut c, req(env.pg_url_for("postgres", "no_such_db"), "")).await;
    assert_mentions(
        &msg,
        &[
            &format!(
                "database \"no_such_db\" does not exist on {}",
                target("no_such_db")
            ),
            "create it or fix the database name in the connection string",
        ],
    );

    let msg = refused(
        &mut c,
        req(env.pg_url_for("no_such_role", "pgpipe_dev"), ""),
    )
    .await;
    assert_mentions(
        &msg,
        &[
            &format!(
                "PostgreSQL at {} rejected user \"no_such_role\"",
                target("pgpipe_dev")
            ),
            "role \"no_such_role\" does not exist",
            "check the user name",
        ],
    );

    // Wrong password, in the URL and in source.password; neither is echoed.
    for (conn, password) in [
        (
            format!(
                "postgres://pw_user:wrong-pw-1@127.0.0.1:{}/pgpipe_dev",
                env.pg_port
            ),
            "",
        ),
        (env.pg_url_for("pw_user", "pgpipe_dev"), "wrong-pw-2"),
    ] {
        let msg = refused(&mut c, req(conn, password)).await;
        assert_mentions(
            &msg,
            &[
                "rejected user \"pw_user\"",
                "password authentication failed",
                "check the user name, the password (source.password)",
            ],
        );
        assert!(!msg.contains("wrong-pw"), "the password is echoed: {msg}");
    }
    let msg = refused(&mut c, req(env.pg_url_for("pw_user", "pgpipe_dev"), "")).await;
    assert_mentions(
        &msg,
        &[
            "rejected user \"pw_user\"",
            "the server asks for a password but none was given",
        ],
    );

    let msg = refused(&mut c, req(env.pg_url_for("plain_user", "pgpipe_dev"), "")).await;
    assert_mentions(
        &msg,
        &[
            "user \"plain_user\" lacks the REPLICATION privilege",
            "run `ALTER ROLE \"plain_user\" WITH REPLICATION;` as a superuser",
        ],
    );
    assert_eq!(slots(&env).await, 0, "no slot or publication left behind");

    // The right password (kept out of the stored connection string) works
    // end to end: the worker connects with it from the secret store.
    c.create_pipe(req(env.pg_url_for("pw_user", "pgpipe_dev"), "right-pw"))
        .await
        .unwrap();
    let p = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let stored = p.config.unwrap().source.unwrap();
    assert!(stored.password.is_empty() && !stored.connection_string.contains("right-pw"));
    write_some(&env, &schema, 10_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(60))
        .await;
}

async fn wal_level(env: &PrivateEnv) -> String {
    env.pg()
        .await
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_on_a_server_without_logical_wal_says_what_to_change() {
    let env = PrivateEnv::up().await;
    env.without_logical_wal().await;
    assert_eq!(wal_level(&env).await, "replica");

    let schema = unique("fwl");
    env.make_items(&schema, 300).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let req = env.pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    let msg = refused(&mut c, req.clone()).await;
    assert_mentions(
        &msg,
        &[
            "wal_level = \"replica\"",
            "logical replication needs wal_level = logical",
            "run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL",
        ],
    );
    assert_eq!(slots(&env).await, 0);

    // Doing exactly what the message says is enough.
    env.set_wal_level("logical").await;
    assert_eq!(wal_level(&env).await, "logical");
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    write_some(&env, &schema, 10_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(60))
        .await;
}

/// How long a peer stays unreachable in the outage tests below.
const OUTAGE: Duration = Duration::from_secs(30);

/// The pgpipe binary with `failpoints`, a table of `rows` and a pipe
/// between the private peers (created, not waited for).
async fn spawned_pipe(
    env: &PrivateEnv,
    prefix: &str,
    rows: i64,
    failpoints: &str,
) -> (tempfile::TempDir, Proc, Client, String, String) {
    let schema = unique(prefix);
    env.make_items(&schema, rows).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn_engine(dir.path(), &[("PGPIPE_FAILPOINTS", failpoints)]);
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    let name = pipe_name(&schema);
    c.create_pipe(env.pipe_req(&name, &schema, &[&format!("{schema}.items")]))
        .await
        .unwrap();
    (dir, p, c, schema, name)
}

async fn assert_equal_and_no_duplicates(env: &PrivateEnv, schema: &str) {
    env.wait_same(schema, "items", COLS, Duration::from_secs(120))
        .await;
    assert_no_duplicates(env, schema).await;
}

/// Which peer an initial-load fault takes away.
enum Outage {
    /// Postgres stopped for [`OUTAGE`].
    Postgres,
    /// The ClickHouse front killed, restarted at once after the error.
    ClickHouse,
}

/// A peer goes away while partitions are being copied: the pipe stays in
/// SNAPSHOT naming the step, retries, completes the load and ends equal.
async fn outage_during_the_snapshot(prefix: &str, outage: Outage) {
    let env = PrivateEnv::up().await;
    // Slow partitions keep the load going when the peer goes away.
    let (_dir, _p, mut c, schema, name) =
        spawned_pipe(&env, prefix, 20_000, "snapshot.partition_done=sleep(400)").await;
    wait_pipe(&mut c, &name, "loading", Duration::from_secs(60), |p| {
        p.status() == PipeStatus::Snapshot
            && p.tables.iter().any(|t| t.snapshot_partitions_done > 0)
    })
    .await;
    let before = get(&mut c, &name).await.cursor;

    let down_at = Instant::now();
    match outage {
        Outage::Postgres => env.stop_pg().await,
        Outage::ClickHouse => env.kill_ch().await,
    }
    let failing = wait_pipe(
        &mut c,
        &name,
        "reporting an error",
        Duration::from_secs(60),
        |p| !p.error.is_empty(),
    )
    .await;
    assert_eq!(failing.status(), PipeStatus::Snapshot, "{failing:?}");
    assert_eq!(failing.failed_step, "snapshot", "{}", failing.error);
    match outage {
        Outage::Postgres => {
            tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
            assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Snapshot);
        }
        Outage::ClickHouse => write_some(&env, &schema, 30_000).await,
    }

    let back_at = get(&mut c, &name).await.cursor;
    env.start().await;
    if matches!(outage, Outage::Postgres) {
        write_some(&env, &schema, 30_000).await;
    }
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    write_some(&env, &schema, 40_000).await;
    assert_equal_and_no_duplicates(&env, &schema).await;
    wait_recovered(&mut c, &name).await;
    assert_retried_and_recovered(&events_since(&mut c, &name, before).await, back_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_for_30_s_during_the_snapshot_is_retried_and_the_load_completes() {
    outage_during_the_snapshot("fps", Outage::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_killed_and_restarted_during_the_snapshot_is_retried_and_the_load_completes() {
    outage_during_the_snapshot("fcs", Outage::ClickHouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_for_30_s_during_cdc_is_retried_and_nothing_is_lost() {
    let env = PrivateEnv::up().await;
    let (_srv, mut c, schema, name) = running_pipe(&env, "fpc").await;
    let before = get(&mut c, &name).await.cursor;
    write_some(&env, &schema, 10_000).await;

    env.stop_pg().await;
    let down_at = Instant::now();
    wait_retrying(&mut c, &name).await;
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let still = get(&mut c, &name).await;
    assert!(
        still.status() == PipeStatus::Running && !still.error.is_empty(),
        "{still:?}"
    );

    let back_at = get(&mut c, &name).await.cursor;
    env.start().await;
    write_some(&env, &schema, 20_000).await;
    assert_equal_and_no_duplicates(&env, &schema).await;
    wait_recovered(&mut c, &name).await;
    write_some(&env, &schema, 30_000).await;
    assert_equal_and_no_duplicates(&env, &schema).await;
    assert_retried_and_recovered(&events_since(&mut c, &name, before).await, back_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_killed_and_restarted_during_the_swap_of_a_resync_completes_it() {
    let env = PrivateEnv::up().await;
    // The swap waits 5 s before exchanging the tables: ClickHouse dies then.
    let (_dir, _p, mut c, schema, name) =
        spawned_pipe(&env, "fsw", 3_000, "swap.before_exchange=sleep(5000)").await;
    let old = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    // Soft deletes the swap must carry over, and rows the new load holds.
    write_some(&env, &schema, 10_000).await;
    env.wait_same(&schema, "items", COLS, Duration::from_secs(60))
        .await;
    resync(&mut c, &name).await.unwrap();
    wait_pipe(&mut c, &name, "swapping", Duration::from_secs(120), |p| {
        p.status() == PipeStatus::Resync
    })
    .await;
    env.kill_ch().await;
    write_some(&env, &schema, 20_000).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = get(&mut c, &name).await;
    assert_eq!(during.status(), PipeStatus::Resync, "{during:?}");
    // Retried as the swap (every attempt, connecting included).
    assert_eq!(during.failed_step, "swap", "{}", during.error);
    assert_eq!(during.status_detail, "retrying swap after an error");

    env.start().await;
    let now = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(now.resync_of, old.id);
    assert!(now.swapped, "{now:?}");
    write_some(&env, &schema, 30_000).await;
    assert_equal_and_no_duplicates(&env, &schema).await;
    let leftovers: u64 = env
        .ch(&schema)
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'items_resync'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(leftovers, 0, "the old data is dropped after the swap");
}
