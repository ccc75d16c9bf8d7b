//! Real Postgres and ClickHouse for data-plane tests (started by dev/env).
#![allow(dead_code)]

use std::time::Duration;

use pgpipe::proto::*;
use tokio_postgres::NoTls;

use super::Client;

pub fn pg_url() -> String {
    std::env::var("PGPIPE_TEST_PG_URL")
        .expect("PGPIPE_TEST_PG_URL is unset: run `dev/env up` first (dev/test does)")
}

pub fn ch_url() -> String {
    std::env::var("PGPIPE_TEST_CH_URL")
        .expect("PGPIPE_TEST_CH_URL is unset: run `dev/env up` first (dev/test does)")
}

pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

pub fn ch(database: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(ch_url())
        .with_database(database)
}

/// A unique lowercase name per test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// host:port and database of the dev Postgres, for ClickHouse's postgresql().
pub fn pg_parts() -> (String, String) {
    let url = url::Url::parse(&pg_url()).unwrap();
    (
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)),
        url.path().trim_start_matches('/').to_owned(),
    )
}

pub fn pipe_req(name: &str, database: &str, tables: &[&str]) -> CreatePipeRequest {
    CreatePipeRequest {
        name: name.into(),
        source: Some(SourceConfig {
            connection_string: pg_url(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: ch_url(),
            database: database.into(),
            user: "default".into(),
            password: String::new(),
            ca_cert: String::new(),
        }),
        tables: tables
            .iter()
            .map(|t| TableConfig {
                source_table: (*t).into(),
                ..Default::default()
            })
            .collect(),
        settings: Some(PipeSettings {
            snapshot_parallelism: 3,
            snapshot_rows_per_partition: 2_000,
            cdc_batch_size: 5_000,
            cdc_sync_interval_ms: 100,
            ..Default::default()
        }),
        labels: Default::default(),
    }
}

pub async fn get(c: &mut Client, name: &str) -> Pipe {
    c.get_pipe(GetPipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .pipe
    .unwrap()
}

/// One incarnation, by id.
pub async fn get_id(c: &mut Client, id: &str) -> Pipe {
    c.get_pipe(GetPipeRequest {
        id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .pipe
    .unwrap()
}

/// Waits until the deleted incarnation `id` released its slot and
/// publication (so no test leaves a slot pinning WAL behind).
pub async fn wait_released(c: &mut Client, id: &str) -> Pipe {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = get_id(c, id).await;
        if p.source_released {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "source objects of {id} not released: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the pipe's current incarnation is RUNNING (panics on FAILED).
pub async fn wait_running(c: &mut Client, name: &str, timeout: Duration) -> Pipe {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let p = get(c, name).await;
        match p.status() {
            PipeStatus::Running => return p,
            PipeStatus::Failed => panic!("pipe {name} failed: {} ({})", p.error, p.failed_step),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipe {name} not RUNNING in time: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a whole-pipe resync and waits until its incarnation is RUNNING
/// with its tables swapped in; returns it.
pub async fn resync_and_wait(c: &mut Client, name: &str, timeout: Duration) -> Pipe {
    let new = c
        .resync_pipe(ResyncPipeRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pipe
        .unwrap();
    let running = wait_running(c, name, timeout).await;
    assert_eq!(running.id, new.id, "another incarnation is running");
    assert!(running.swapped, "running before the swap: {running:?}");
    running
}

/// Rows of the source table that differ from the destination (FINAL, live
/// rows), in either direction, compared inside ClickHouse with the
/// postgresql() table function; `cols` are SQL expressions valid on both.
pub async fn diff(database: &str, dest: &str, schema: &str, table: &str, cols: &str) -> u64 {
    try_diff(database, dest, schema, table, cols).await.unwrap()
}

pub async fn try_diff(
    database: &str,
    dest: &str,
    schema: &str,
    table: &str,
    cols: &str,
) -> Result<u64, clickhouse::error::Error> {
    let (hostport, db) = pg_parts();
    let src = format!("postgresql('{hostport}', '{db}', '{table}', 'postgres', '', '{schema}')");
    let dst = format!("`{database}`.`{dest}` FINAL WHERE _pgpipe_is_deleted = 0");
    let q = format!(
        "SELECT toInt64(assumeNotNull((SELECT count() FROM (SELECT {cols} FROM {src} EXCEPT SELECT {cols} FROM {dst})) + \
                (SELECT count() FROM (SELECT {cols} FROM {dst} EXCEPT SELECT {cols} FROM {src})) + \
                abs(toInt64((SELECT count() FROM {src})) - toInt64((SELECT count() FROM {dst})))))"
    );
    Ok(ch(database).query(&q).fetch_one::<i64>().await? as u64)
}

/// Waits until source and destination are equal (or panics with the diff).
pub async fn wait_equal(
    database: &str,
    dest: &str,
    schema: &str,
    table: &str,
    cols: &str,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // An error (e.g. a column not added yet) counts as a difference.
        let d = match try_diff(database, dest, schema, table, cols).await {
            Ok(0) => return,
            Ok(d) => d.to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{schema}.{table} and {database}.{dest} still differ: {d}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Like [`try_diff`], with the source's columns (`source_cols`) compared to
/// differently named destination columns (`dest_cols`), e.g. after a
/// rename kept under the old ClickHouse name.
pub async fn try_diff_as(
    database: &str,
    dest: &str,
    schema: &str,
    table: &str,
    source_cols: &str,
    dest_cols: &str,
) -> Result<u64, clickhouse::error::Error> {
    let (hostport, db) = pg_parts();
    let src = format!("postgresql('{hostport}', '{db}', '{table}', 'postgres', '', '{schema}')");
    let dst = format!("`{database}`.`{dest}` FINAL WHERE _pgpipe_is_deleted = 0");
    let q = format!(
        "SELECT toInt64(assumeNotNull((SELECT count() FROM (SELECT {source_cols} FROM {src} EXCEPT SELECT {dest_cols} FROM {dst})) + \
                (SELECT count() FROM (SELECT {dest_cols} FROM {dst} EXCEPT SELECT {source_cols} FROM {src})) + \
                abs(toInt64((SELECT count() FROM {src})) - toInt64((SELECT count() FROM {dst})))))"
    );
    Ok(ch(database).query(&q).fetch_one::<i64>().await? as u64)
}
