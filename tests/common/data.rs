//! Real Postgres and ClickHouse for data-plane tests (started by dev/env).
#![allow(dead_code)]

use std::time::Duration;

use pgpipe::proto::*;
use tokio_postgres::NoTls;

use super::wait::wait_pipe;
use super::{Client, delete_pipe};

/// The columns of [`items_sql`]'s table, as the oracle compares them.
pub const ITEMS_COLS: &str = "id, name, qty";

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

/// SQL creating `schema` with the usual test table, `items (id bigint
/// PRIMARY KEY, name text, qty int)`, and its rows `1..=rows`.
pub fn items_sql(schema: &str, rows: i64) -> String {
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text, qty int);
         INSERT INTO {schema}.items SELECT g, 'item ' || g, g % 13 FROM generate_series(1, {rows}) g;"
    )
}

/// Creates `schema` with the table of [`items_sql`] in the dev Postgres.
pub async fn make_items(schema: &str, rows: i64) {
    pg_exec(&items_sql(schema, rows)).await;
}

/// A single number a Postgres query returns (e.g. a `count(*)`).
pub async fn pg_count(sql: &str) -> i64 {
    pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Whether the dev Postgres has the replication slot.
pub async fn slot_exists(slot: &str) -> bool {
    pg_count(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .await
        > 0
}

/// Whether the dev Postgres has the publication.
pub async fn publication_exists(publication: &str) -> bool {
    pg_count(&format!(
        "SELECT count(*) FROM pg_publication WHERE pubname = '{publication}'"
    ))
    .await
        > 0
}

/// How many tables the publication holds (only those named `table`, when given).
pub async fn published_tables(publication: &str, table: Option<&str>) -> i64 {
    let only = table.map_or(String::new(), |t| format!(" AND tablename = '{t}'"));
    pg_count(&format!(
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = '{publication}'{only}"
    ))
    .await
}

/// The one row the ClickHouse query `q` returns (e.g. a count).
pub async fn ch_one<T: clickhouse::RowOwned + clickhouse::RowRead>(database: &str, q: &str) -> T {
    ch(database)
        .query(q)
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// Rows of the ClickHouse table (all of them, FINAL or not).
pub async fn ch_count(database: &str, table: &str) -> u64 {
    ch(database)
        .query(&format!("SELECT count() FROM `{table}`"))
        .fetch_one()
        .await
        .unwrap()
}

/// Rows sharing a `key` (ClickHouse arguments) in the table under FINAL.
pub async fn ch_duplicates(database: &str, table: &str, key: &str) -> i64 {
    ch(database)
        .query(&format!(
            "SELECT toInt64(count()) - toInt64(uniqExact({key})) FROM `{table}` FINAL"
        ))
        .fetch_one()
        .await
        .unwrap()
}

/// Validates `req` on `c`: exactly one problem, a COLUMN problem at
/// `field` (e.g. `tables[0].exclude_columns[1]`); returns it.
pub async fn the_column_problem(c: &mut Client, req: CreatePipeRequest, field: &str) -> Problem {
    let v = c
        .validate_pipe(super::validate_req(req))
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok, "{field}: {v:?}");
    assert_eq!(v.problems.len(), 1, "{field}: {v:?}");
    assert_eq!(v.problems[0].field, field);
    assert_eq!(v.problems[0].kind(), ProblemKind::Column, "{field}");
    v.problems[0].clone()
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

/// Waits until the deleted incarnation `id` released its slot and
/// publication (so no test leaves a slot pinning WAL behind).
pub async fn wait_released(c: &mut Client, id: &str) -> Pipe {
    super::wait::wait_released(c, id).await
}

/// Waits until the pipe's current incarnation is RUNNING (panics on FAILED).
pub async fn wait_running(c: &mut Client, name: &str, timeout: Duration) -> Pipe {
    wait_pipe(c, name, "RUNNING", timeout, |p| match p.status() {
        PipeStatus::Failed => panic!("pipe {name} failed: {} ({})", p.error, p.failed_step),
        s => s == PipeStatus::Running,
    })
    .await
}

/// Starts a whole-pipe resync and waits until its incarnation is RUNNING
/// with its tables swapped in; returns it.
pub async fn resync_and_wait(c: &mut Client, name: &str, timeout: Duration) -> Pipe {
    let new = super::resync(c, name).await.unwrap();
    let running = wait_running(c, name, timeout).await;
    assert_eq!(running.id, new.id, "another incarnation is running");
    assert!(running.swapped, "running before the swap: {running:?}");
    running
}

/// Rows of the source table that differ from the destination (FINAL, live
/// rows), in either direction, compared inside ClickHouse with the
/// postgresql() table function; `cols` are SQL expressions valid on both.
pub async fn diff(database: &str, dest: &str, schema: &str, table: &str, cols: &str) -> u64 {
    try_diff_as(database, dest, schema, table, cols, cols)
        .await
        .unwrap()
}

/// The rows that differ (see [`diff`]), with the columns as expressions of
/// each side (e.g. a renamed column: `kind` in Postgres, `category AS kind` in ClickHouse).
pub async fn try_diff_as(
    database: &str,
    dest: &str,
    schema: &str,
    table: &str,
    src_cols: &str,
    dst_cols: &str,
) -> Result<u64, clickhouse::error::Error> {
    let (hostport, db) = pg_parts();
    let src = format!("postgresql('{hostport}', '{db}', '{table}', 'postgres', '', '{schema}')");
    let q = diff_query(&src, database, dest, src_cols, dst_cols);
    Ok(ch(database).query(&q).fetch_one::<i64>().await? as u64)
}

/// The oracle: a ClickHouse query counting the rows that differ between
/// `src` (a `postgresql()` table function) and the live rows of
/// `database`.`dest` under FINAL, in either direction.
pub fn diff_query(src: &str, database: &str, dest: &str, src_cols: &str, dst_cols: &str) -> String {
    let dst = format!("`{database}`.`{dest}` FINAL WHERE _pgpipe_is_deleted = 0");
    format!(
        "SELECT toInt64(assumeNotNull((SELECT count() FROM (SELECT {src_cols} FROM {src} EXCEPT SELECT {dst_cols} FROM {dst})) + \
                (SELECT count() FROM (SELECT {dst_cols} FROM {dst} EXCEPT SELECT {src_cols} FROM {src})) + \
                abs(toInt64((SELECT count() FROM {src})) - toInt64((SELECT count() FROM {dst})))))"
    )
}

/// Polls `diff` until it is 0 (an error counts as a difference, e.g. a
/// column not added yet); panics saying `what` and the last difference
/// after `timeout`.
pub async fn wait_no_diff(
    what: &str,
    timeout: Duration,
    mut diff: impl AsyncFnMut() -> Result<u64, clickhouse::error::Error>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let d = match diff().await {
            Ok(0) => return,
            Ok(d) => d.to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} still differ after {timeout:?}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
    wait_equal_as(database, dest, schema, table, cols, cols, timeout).await;
}

/// A ClickHouse query's rows, each cell as ClickHouse prints it in
/// TabSeparated, unescaped (`\N` for NULL).
pub async fn ch_rows(database: &str, q: &str) -> Vec<Vec<String>> {
    fn unescape(cell: &str) -> String {
        if cell == "\\N" {
            return cell.to_owned();
        }
        let mut out = String::with_capacity(cell.len());
        let mut chars = cell.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        out
    }
    let bytes = ch(database)
        .query(q)
        .fetch_bytes("TabSeparated")
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(unescape).collect())
        .collect()
}

/// A Postgres query's rows, each cell as text (`\N` for NULL), read in
/// the session settings pgpipe uses (UTC, ISO dates).
pub async fn pg_rows(q: &str) -> Vec<Vec<String>> {
    let c = pg().await;
    c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .await
        .unwrap();
    c.simple_query(q)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("\\N").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Waits until the pipe is FAILED and returns it (panics if it does not
/// fail in time).
pub async fn wait_failed(c: &mut Client, name: &str, timeout: Duration) -> Pipe {
    wait_pipe(c, name, "FAILED", timeout, |p| {
        p.status() == PipeStatus::Failed
    })
    .await
}

/// How long a data-plane test waits for a pipe to load, fail or catch up.
pub const WAIT: Duration = Duration::from_secs(120);

/// The pipe name a test uses for its schema (names take no `_`).
pub fn pipe_name(schema: &str) -> String {
    schema.replace('_', "-")
}

/// Runs `sql` in Postgres (panics showing it on error).
pub async fn pg_exec(sql: &str) {
    pg().await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

/// Creates `schema` and runs `sql` in it.
pub async fn create_schema(schema: &str, sql: &str) {
    pg_exec(&format!(
        "CREATE SCHEMA {schema}; SET search_path = {schema}; {sql}"
    ))
    .await;
}

/// Runs `sql` with `schema` first on the search path.
pub async fn exec_in(schema: &str, sql: &str) {
    pg_exec(&format!("SET search_path = {schema}; {sql}")).await;
}

/// The Postgres server's version number (e.g. 150004).
pub async fn pg_version() -> i32 {
    pg().await
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0)
}

/// An in-process engine with the pipe `req` created and RUNNING.
pub async fn start_pipe(req: CreatePipeRequest) -> (super::InProcess, Client, Pipe) {
    let (srv, mut c) = super::engine().await;
    let name = req.name.clone();
    c.create_pipe(req).await.unwrap();
    let p = wait_running(&mut c, &name, WAIT).await;
    (srv, c, p)
}

/// Deletes the pipe and waits until its slot and publication are gone.
pub async fn delete_and_release(c: &mut Client, name: &str) {
    let p = delete_pipe(c, name).await;
    wait_released(c, &p.id).await;
}

/// Resyncs the pipe with `overrides` of its tables' options.
pub async fn resync_overrides(
    c: &mut Client,
    name: &str,
    overrides: Vec<TableConfig>,
    replace_column_options: bool,
) -> Result<Pipe, tonic::Status> {
    let r = c
        .resync_pipe(ResyncPipeRequest {
            name: name.into(),
            overrides,
            replace_column_options,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().pipe.unwrap())
}

/// Starts a resync of `tables` only (the incarnation stays); the pipe.
pub async fn resync_tables(c: &mut Client, name: &str, tables: &[&str]) -> Pipe {
    let req = ResyncPipeRequest {
        name: name.into(),
        tables: tables.iter().map(|t| (*t).into()).collect(),
        ..Default::default()
    };
    c.resync_pipe(req).await.unwrap().into_inner().pipe.unwrap()
}

/// The pipe's stats of `source_table` (panics if it has none).
pub fn table_stats<'a>(p: &'a Pipe, source_table: &str) -> &'a TableStats {
    p.tables
        .iter()
        .find(|t| t.source_table == source_table)
        .unwrap_or_else(|| panic!("no table {source_table} in {p:?}"))
}

/// What the pipe knows of `source_table` at the source (empty if nothing).
pub fn source_details(p: &Pipe, source_table: &str) -> SourceTableDetails {
    p.tables
        .iter()
        .find(|t| t.source_table == source_table)
        .and_then(|t| t.source_details.clone())
        .unwrap_or_default()
}

/// Waits until `table` is in `state` while the pipe stays RUNNING.
pub async fn wait_table_state(
    c: &mut Client,
    name: &str,
    table: &str,
    state: TableState,
) -> TableStats {
    let what = format!("table {table} {state:?}");
    let p = wait_pipe(c, name, &what, WAIT, |p| {
        assert_eq!(p.status(), PipeStatus::Running, "{p:?}");
        p.tables
            .iter()
            .any(|t| t.source_table == table && t.state() == state)
    })
    .await;
    table_stats(&p, table).clone()
}

/// Waits until the ClickHouse table `schema`.`table` (the database is named
/// as the schema) lists the same rows as the source's, up to `timeout`.
pub async fn wait_same(schema: &str, table: &str, cols: &str, timeout: Duration) {
    wait_equal(schema, table, schema, table, cols, timeout).await;
}

/// Waits until the ClickHouse table `database`.`table` lists exactly the
/// rows of the source's `schema`.`table`.
pub async fn wait_same_table(database: &str, schema: &str, table: &str, cols: &str) {
    wait_equal(database, table, schema, table, cols, WAIT).await;
}

/// Like [`wait_equal`], with the columns as expressions of each side (see
/// [`try_diff_as`]).
pub async fn wait_equal_as(
    database: &str,
    dest: &str,
    schema: &str,
    table: &str,
    src_cols: &str,
    dst_cols: &str,
    timeout: Duration,
) {
    let what = format!("{schema}.{table} and {database}.{dest}");
    wait_no_diff(&what, timeout, async || {
        try_diff_as(database, dest, schema, table, src_cols, dst_cols).await
    })
    .await;
}

/// Tables in the ClickHouse database.
pub async fn ch_tables(database: &str) -> Vec<String> {
    ch(database)
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(database)
        .fetch_all::<String>()
        .await
        .unwrap()
}

/// The ClickHouse table's columns and their types, in order, without
/// pgpipe's own columns.
pub async fn ch_column_types(database: &str, table: &str) -> Vec<(String, String)> {
    ch_rows(
        database,
        &format!(
            "SELECT name, type FROM system.columns WHERE database = '{database}' AND table = '{table}' \
             AND name NOT LIKE '\\\\_pgpipe\\\\_%' ORDER BY position"
        ),
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

/// The ClickHouse table's column names, as [`ch_column_types`].
pub async fn ch_columns(database: &str, table: &str) -> Vec<String> {
    ch_column_types(database, table)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The type of one ClickHouse column.
pub async fn ch_type(database: &str, table: &str, column: &str) -> String {
    ch(database)
        .query("SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(database)
        .bind(table)
        .bind(column)
        .fetch_one::<String>()
        .await
        .unwrap()
}

/// Polls the ClickHouse query `q` until its rows (as [`ch_rows`]) are
/// `want` (or panics showing both after 60 s).
pub async fn wait_ch_rows(database: &str, q: &str, want: &[Vec<String>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = ch_rows(database, q).await;
        if rows == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ClickHouse rows differ:\n got {rows:?}\nwant {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Rows of text cells from tuples of string-likes.
pub fn rows<const N: usize>(rows: &[[&str; N]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|c| (*c).to_owned()).collect())
        .collect()
}
