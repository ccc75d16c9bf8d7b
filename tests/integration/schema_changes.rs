//! Schema changes at the source while a pipe runs (ADD COLUMN with
//! defaults, DROP, RENAME, widening and unsupported type changes), against
//! the real Postgres and ClickHouse: rows written before and after each
//! change end equal on both ends (postgresql() table function oracle), an
//! unsupported change fails only its table, and a table resync heals it.

use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;

/// Starts a pipe over `tables` of `schema`; waits until it runs.
async fn start(schema: &str, tables: &[&str]) -> (InProcess, Client, String) {
    let name = pipe_name(schema);
    let full: Vec<String> = tables.iter().map(|t| format!("{schema}.{t}")).collect();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (srv, c, _) = start_pipe(pipe_req(&name, schema, &full)).await;
    (srv, c, name)
}

/// Waits until `{schema}.{table}` and its ClickHouse copy are equal.
async fn equal(schema: &str, table: &str, cols: &str) {
    wait_same_table(schema, schema, table, cols).await;
}

/// Restarts the in-process engine on its data (the pipe replays its log).
async fn restart(srv: InProcess) -> (InProcess, Client) {
    let srv = InProcess::start_with(srv.stop().await, None, true).await;
    let c = srv.client().await;
    (srv, c)
}

/// The pipe's events of kind SCHEMA (SchemaChanged, TableFailed).
async fn schema_events(c: &mut Client, name: &str) -> Vec<Payload> {
    history(c, name, Some(HistoryKind::Schema))
        .await
        .into_iter()
        .filter_map(|e| e.payload)
        .collect()
}

fn changes(events: &[Payload]) -> Vec<(SchemaChangeKind, String, String)> {
    events
        .iter()
        .filter_map(|p| match p {
            Payload::SchemaChanged(c) => Some((c.kind(), c.column.clone(), c.new_column.clone())),
            _ => None,
        })
        .collect()
}

/// The pipe recorded `n` schema changes, all of `kind`.
async fn assert_changes(c: &mut Client, name: &str, n: usize, kind: SchemaChangeKind) {
    let kinds = changes(&schema_events(c, name).await);
    assert_eq!(kinds.len(), n, "{kinds:?}");
    assert!(kinds.iter().all(|k| k.0 == kind));
}

/// Old rows (some with TOASTed values) read the added column's default in
/// ClickHouse as in Postgres; new rows their own values; a column without
/// default reads NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_added_column_reads_its_default_in_old_rows() {
    let schema = unique("ddl_add");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, v text, big text);
         INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 5 = 0 THEN
             (SELECT string_agg(md5(g::text || k), '') FROM generate_series(1, 200) k) END
         FROM generate_series(1, 100) g;",
    )
    .await;
    let (_srv, mut c, name) = start(&schema, &["t"]).await;
    equal(&schema, "t", "id, v, big").await;

    exec_in(
        &schema,
        "ALTER TABLE t ADD COLUMN level int NOT NULL DEFAULT 7;
         ALTER TABLE t ADD COLUMN note text DEFAULT 'it''s \"{x}\" \\ ok';
         ALTER TABLE t ADD COLUMN price numeric(10,2) DEFAULT 12.5;
         ALTER TABLE t ADD COLUMN tags text[] DEFAULT '{a,NULL,\"b c\"}';
         ALTER TABLE t ADD COLUMN at timestamptz DEFAULT '2024-02-03 04:05:06.789+02';
         ALTER TABLE t ADD COLUMN plain int;
         INSERT INTO t (id, v, level, note, plain) VALUES (101, 'new', 3, NULL, 1), (102, 'new2', 4, 'n', NULL);
         UPDATE t SET v = v || '!' WHERE id % 10 = 0;",
    )
    .await;
    let cols = "id, v, big, level, note, price, tags, at, plain";
    equal(&schema, "t", cols).await;
    // Exactly: the old rows' values, not a type default.
    let sevens: u64 = ch_one(&schema, "SELECT count() FROM t FINAL WHERE level = 7 AND note = 'it''s \"{x}\" \\\\ ok' AND price = 12.5").await;
    assert_eq!(sevens, 100);
    assert_changes(&mut c, &name, 6, SchemaChangeKind::AddColumn).await;
    delete_and_release(&mut c, &name).await;
}

/// A volatile default gave each old row a value the WAL does not carry:
/// that table fails (naming the column, saying to resync it), the other
/// keeps replicating, and the table resync makes it equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volatile_default_fails_only_its_table_until_it_is_resynced() {
    let schema = unique("ddl_vol");
    create_schema(
        &schema,
        "CREATE TABLE a (id bigint PRIMARY KEY, v text);
         CREATE TABLE b (id bigint PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 50) g;
         INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let (_srv, mut c, name) = start(&schema, &["a", "b"]).await;
    exec_in(
        &schema,
        "ALTER TABLE a ADD COLUMN r float8 DEFAULT random();
         INSERT INTO a (id, v) VALUES (51, 'x');",
    )
    .await;
    let a = format!("{schema}.a");
    let failed = wait_table_state(&mut c, &name, &a, TableState::Failed).await;
    assert!(
        failed.error.contains("\"r\"") && failed.error.contains("random()"),
        "{}",
        failed.error
    );
    assert!(
        failed.error.contains("resync this table"),
        "{}",
        failed.error
    );
    assert!(
        failed.error.contains(&format!("--table {a}")),
        "{}",
        failed.error
    );
    exec_in(
        &schema,
        "INSERT INTO b SELECT g, 'b' || g FROM generate_series(51, 80) g;",
    )
    .await;
    equal(&schema, "b", "id, v").await;
    let events = schema_events(&mut c, &name).await;
    assert!(
        events
            .iter()
            .any(|p| matches!(p, Payload::TableFailed(f) if f.source_table == a)),
        "{events:?}"
    );

    resync_tables(&mut c, &name, &[&a]).await;
    let healed = wait_table_state(&mut c, &name, &a, TableState::Replicating).await;
    assert!(healed.error.is_empty(), "{}", healed.error);
    exec_in(
        &schema,
        "INSERT INTO a (id, v) VALUES (52, 'y'); UPDATE a SET v = 'z' WHERE id = 1;",
    )
    .await;
    equal(&schema, "a", "id, v, r").await;
    delete_and_release(&mut c, &name).await;
}

/// DROP and RENAME under a write workload on both tables (which writes the
/// other columns): the dropped column stays in ClickHouse (NULL for new
/// rows), the renamed one follows, the other table is untouched; a restart
/// (projection replay) keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_and_rename_under_writes_keep_every_table_replicating() {
    use crate::common::workload::{Shape, Target, Workload, seed_from_env};
    let schema = unique("ddl_dr");
    let (t, u) = (format!("{schema}.t"), format!("{schema}.u"));
    create_schema(
        &schema,
        &format!(
            "{}; {}; {}; {};
             ALTER TABLE t ADD COLUMN r text, ADD COLUMN d text;
             UPDATE t SET r = 'r' || id, d = 'd' || id;",
            Shape::Items.ddl("t"),
            Shape::Pairs.ddl("u"),
            Shape::Items.insert("t", 1, 300),
            Shape::Pairs.insert("u", 1, 300),
        ),
    )
    .await;
    let (srv, mut c, name) = start(&schema, &["t", "u"]).await;
    let workload = Workload::start(
        pg_url(),
        vec![
            Target::new(&t, Shape::Items, 300),
            Target::new(&u, Shape::Pairs, 300),
        ],
        seed_from_env("PGPIPE_DDL_SEED"),
        Duration::from_millis(10),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    exec_in(&schema, "ALTER TABLE t DROP COLUMN d;").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    exec_in(&schema, "ALTER TABLE t RENAME COLUMN r TO r2;").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = workload.stop().await;
    assert!(stats.committed > 20, "{stats:?}");
    exec_in(&schema, "INSERT INTO t (id, r2) VALUES (100000, 'after');").await;
    let t_cols = format!("{}, ifNull(r2, '~') AS r2", Shape::Items.cols());
    equal(&schema, "t", &t_cols).await;
    equal(&schema, "u", Shape::Pairs.cols()).await;
    // The dropped column is kept: rows untouched since keep their value,
    // rows written since read NULL.
    let (old, new): (u64, u64) = ch_one(
        &schema,
        "SELECT countIf(d IS NOT NULL), countIf(d IS NULL AND id = 100000) \
             FROM t FINAL WHERE _pgpipe_is_deleted = 0",
    )
    .await;
    assert!(old > 0 && new == 1, "{old} {new}");
    let kinds = changes(&schema_events(&mut c, &name).await);
    assert_eq!(
        kinds,
        [
            (SchemaChangeKind::DropColumn, "d".into(), String::new()),
            (SchemaChangeKind::RenameColumn, "r".into(), "r2".into()),
        ]
    );

    // Restarted, the pipe replays its events and goes on.
    let (_srv, mut c) = restart(srv).await;
    exec_in(
        &schema,
        "INSERT INTO t (id, r2) VALUES (100001, 'restarted'); UPDATE t SET r2 = 'x' WHERE id = 100000;",
    )
    .await;
    equal(&schema, "t", &t_cols).await;
    let p = get(&mut c, &name).await;
    assert_eq!(p.status(), PipeStatus::Running);
    assert_eq!(changes(&schema_events(&mut c, &name).await).len(), 2);
    delete_and_release(&mut c, &name).await;
}

/// int4 -> int8, varchar(10) -> text, numeric(10,2) -> numeric(14,2):
/// ClickHouse's columns are widened in place; values beyond the old types
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn widening_a_type_modifies_the_clickhouse_column() {
    let schema = unique("ddl_wide");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, a int, s varchar(10), n numeric(10,2));
         INSERT INTO t SELECT g, g, 's' || g, g + 0.25 FROM generate_series(1, 50) g;",
    )
    .await;
    let (_srv, mut c, name) = start(&schema, &["t"]).await;
    exec_in(
        &schema,
        "ALTER TABLE t ALTER COLUMN a TYPE bigint, ALTER COLUMN s TYPE text,
             ALTER COLUMN n TYPE numeric(14,2);
         INSERT INTO t VALUES (51, 9000000000, repeat('long', 10), 123456789012.34);",
    )
    .await;
    equal(&schema, "t", "id, a, s, n").await;
    assert_eq!(ch_type(&schema, "t", "a").await, "Nullable(Int64)");
    assert_eq!(ch_type(&schema, "t", "n").await, "Nullable(Decimal(14, 2))");
    assert_changes(&mut c, &name, 3, SchemaChangeKind::RetypeColumn).await;
    delete_and_release(&mut c, &name).await;
}

/// A narrowing (int8 -> int4) fails only its table; the other keeps
/// replicating; the table resync rebuilds it with the new type, equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_narrowing_fails_only_its_table_and_a_table_resync_heals_it() {
    let schema = unique("ddl_narrow");
    create_schema(
        &schema,
        "CREATE TABLE a (id bigint PRIMARY KEY, big bigint, v text);
         CREATE TABLE b (id bigint PRIMARY KEY, v text);
         INSERT INTO a SELECT g, g, 'a' || g FROM generate_series(1, 50) g;
         INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let (srv, mut c, name) = start(&schema, &["a", "b"]).await;
    exec_in(
        &schema,
        "ALTER TABLE a ALTER COLUMN big TYPE int;
         INSERT INTO a VALUES (51, 51, 'after');",
    )
    .await;
    let a = format!("{schema}.a");
    let failed = wait_table_state(&mut c, &name, &a, TableState::Failed).await;
    assert!(
        failed.error.contains("\"big\"") && failed.error.contains("resync this table"),
        "{}",
        failed.error
    );
    // The others go on, and the failed table's changes are skipped.
    exec_in(
        &schema,
        "INSERT INTO b VALUES (51, 'b51'); INSERT INTO a VALUES (52, 52, 'skipped');",
    )
    .await;
    equal(&schema, "b", "id, v").await;

    // Restarted, the table is still failed (from the log) and skipped.
    let (_srv, mut c) = restart(srv).await;
    exec_in(&schema, "INSERT INTO b VALUES (52, 'b52');").await;
    equal(&schema, "b", "id, v").await;
    let again = wait_table_state(&mut c, &name, &a, TableState::Failed).await;
    assert_eq!(again.error, failed.error);
    let fails = schema_events(&mut c, &name)
        .await
        .into_iter()
        .filter(|p| matches!(p, Payload::TableFailed(_)))
        .count();
    assert_eq!(fails, 1);

    resync_tables(&mut c, &name, &[&a]).await;
    wait_table_state(&mut c, &name, &a, TableState::Replicating).await;
    exec_in(
        &schema,
        "INSERT INTO a VALUES (53, 53, 'healed'); DELETE FROM a WHERE id = 1;",
    )
    .await;
    equal(&schema, "a", "id, big, v").await;
    assert_eq!(ch_type(&schema, "a", "big").await, "Nullable(Int32)");
    delete_and_release(&mut c, &name).await;
}

/// Changes made while the pipe is paused (rows before and after them still
/// in the slot): on resume the ClickHouse table is brought in line and the
/// rows of both shapes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_while_paused_are_applied_on_resume() {
    let schema = unique("ddl_pause");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, a int, v text);
         INSERT INTO t SELECT g, g, 'v' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let (_srv, mut c, name) = start(&schema, &["t"]).await;
    pause(&mut c, &name).await;
    exec_in(
        &schema,
        "INSERT INTO t VALUES (51, 51, 'before');
         ALTER TABLE t ADD COLUMN level int NOT NULL DEFAULT 7;
         ALTER TABLE t ALTER COLUMN a TYPE bigint;
         INSERT INTO t VALUES (52, 9000000000, 'after', 3);",
    )
    .await;
    resume(&mut c, &name).await;
    equal(&schema, "t", "id, a, v, level").await;
    assert_eq!(ch_type(&schema, "t", "a").await, "Nullable(Int64)");
    let kinds: Vec<_> = changes(&schema_events(&mut c, &name).await)
        .into_iter()
        .map(|k| k.0)
        .collect();
    assert!(kinds.contains(&SchemaChangeKind::AddColumn), "{kinds:?}");
    assert!(kinds.contains(&SchemaChangeKind::RetypeColumn), "{kinds:?}");
    delete_and_release(&mut c, &name).await;
}

/// ClickHouse cannot rename a sorting-key column: it keeps its name, the
/// table's config maps the new source name to it (folded from the event,
/// so a restart uses it), and replication goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_key_column_keeps_its_clickhouse_name() {
    let schema = unique("ddl_rnkey");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let (srv, mut c, name) = start(&schema, &["t"]).await;
    exec_in(
        &schema,
        "ALTER TABLE t RENAME COLUMN id TO ident;
         INSERT INTO t VALUES (51, 'after'); UPDATE t SET v = 'u' WHERE ident = 1;",
    )
    .await;
    let same = async |schema: &str| {
        wait_equal_as(schema, "t", schema, "t", "ident, v", "id, v", WAIT).await
    };
    same(&schema).await;
    let p = get(&mut c, &name).await;
    let cfg = &p.config.unwrap().tables[0];
    assert_eq!(
        cfg.rename_columns.get("ident").map(String::as_str),
        Some("id")
    );

    let (_srv, mut c) = restart(srv).await;
    exec_in(
        &schema,
        "INSERT INTO t VALUES (52, 'restarted'); DELETE FROM t WHERE ident = 2;",
    )
    .await;
    same(&schema).await;
    delete_and_release(&mut c, &name).await;
}

/// With `drop_dropped_columns`, a column dropped at the source is dropped
/// in ClickHouse too; the change is visible in WatchPipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_dropped_columns_drops_the_clickhouse_column() {
    let schema = unique("ddl_dropd");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, v text, gone text);
         INSERT INTO t SELECT g, 'v' || g, 'g' FROM generate_series(1, 20) g;",
    )
    .await;
    let name = pipe_name(&schema);
    let mut req = pipe_req(&name, &schema, &[&format!("{schema}.t")]);
    if let Some(s) = req.settings.as_mut() {
        s.drop_dropped_columns = true;
    }
    let (_srv, mut c, _) = start_pipe(req).await;
    let mut watch = watch_pipe(&mut c, &name, None).await;
    exec_in(
        &schema,
        "ALTER TABLE t DROP COLUMN gone; INSERT INTO t VALUES (21, 'after');",
    )
    .await;
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(m) = watch.message().await.unwrap() {
            if let Some(Payload::SchemaChanged(s)) = m.event.and_then(|e| e.payload) {
                return s;
            }
        }
        panic!("watch ended");
    })
    .await
    .unwrap();
    assert_eq!(seen.kind(), SchemaChangeKind::DropColumn);
    assert_eq!(seen.column, "gone");
    assert!(
        seen.clickhouse.contains("DROP COLUMN"),
        "{}",
        seen.clickhouse
    );
    equal(&schema, "t", "id, v").await;
    let left: u64 = ch(&schema)
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = 't' AND name = 'gone'")
        .bind(&schema)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(left, 0);
    delete_and_release(&mut c, &name).await;
}

/// A crash after the ALTERs of a change, before its event is recorded: the
/// restarted service applies the change again harmlessly and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_the_alter_and_its_event_is_harmless() {
    let schema = unique("ddl_crash");
    create_schema(
        &schema,
        "CREATE TABLE t (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut c) = Proc::start_engine(
        dir.path(),
        &[("PGPIPE_FAILPOINTS", "schema_change.before_record=abort")],
    )
    .await;
    let name = pipe_name(&schema);
    c.create_pipe(pipe_req(&name, &schema, &[&format!("{schema}.t")]))
        .await
        .unwrap();
    wait_running(&mut c, &name, WAIT).await;
    exec_in(
        &schema,
        "INSERT INTO t VALUES (21, 'before');
         ALTER TABLE t ADD COLUMN level int NOT NULL DEFAULT 7;
         INSERT INTO t VALUES (22, 'after', 3);",
    )
    .await;
    p.wait_exit(WAIT).await;
    let (_p2, mut c) = Proc::start_engine(dir.path(), &[]).await;
    exec_in(&schema, "INSERT INTO t VALUES (23, 'restarted', 4);").await;
    equal(&schema, "t", "id, v, level").await;
    assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Running);
    delete_and_release(&mut c, &name).await;
    drop(p);
}
