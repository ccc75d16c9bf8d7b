//! Column exclusion and rename per table (`exclude_columns`,
//! `rename_columns`), against the real Postgres and ClickHouse: the
//! destination table's columns, the initial load, CDC (including unchanged
//! TOAST values in a renamed column), a resync, a column added during CDC,
//! and the validation of the options.

use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;

/// The same rows compared on both ends: source columns (backquoted for
/// ClickHouse's postgresql() reader) and their destination names.
const SOURCE_COLS: &str = "id, `desc`, note, big_note, qty";
const DEST_COLS: &str = "id, description, note, big_note, qty";

/// `users`: id, desc (renamed), password_hash (excluded), note, big_note,
/// qty. Every 10th row has a `desc` and a `password_hash` far over 2 kB (stored
/// out of line: TOAST).
async fn make_table(schema: &str, rows: i64) {
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.users (id bigint PRIMARY KEY, \"desc\" text, password_hash text,
                                          note text, big_note text, qty int);
             INSERT INTO {schema}.users
             SELECT g, 'desc ' || g, 'hash ' || g, 'note ' || g, NULL, g % 11
             FROM generate_series(1, {rows}) g;
             UPDATE {schema}.users SET
                 \"desc\" = (SELECT string_agg(md5(id::text || '-' || k), '') FROM generate_series(1, 300) k),
                 password_hash = (SELECT string_agg(md5('p' || id || '-' || k), '') FROM generate_series(1, 300) k)
             WHERE id % 10 = 0;
             ANALYZE {schema}.users;"
        ))
        .await
        .unwrap();
}

/// The pipe of these tests: `password_hash` excluded, `desc` renamed to
/// `description`.
fn users_req(name: &str, schema: &str) -> CreatePipeRequest {
    let mut req = pipe_req(name, schema, &[&format!("{schema}.users")]);
    req.tables[0].exclude_columns = vec!["password_hash".into()];
    req.tables[0]
        .rename_columns
        .insert("desc".into(), "description".into());
    req
}

async fn wait_equal_renamed(schema: &str, timeout: Duration) {
    wait_users_equal(schema, SOURCE_COLS, DEST_COLS, timeout).await;
}

/// `users` and its destination hold the same rows, read as `source_cols`
/// and `dest_cols`.
async fn wait_users_equal(schema: &str, source_cols: &str, dest_cols: &str, timeout: Duration) {
    wait_equal_as(
        schema,
        "users",
        schema,
        "users",
        source_cols,
        dest_cols,
        timeout,
    )
    .await;
}

/// The destination table's columns, in order, without pgpipe's own.
async fn dest_columns(schema: &str, table: &str) -> Vec<String> {
    ch(schema)
        .query(
            "SELECT name FROM system.columns WHERE database = ? AND table = ? \
             AND name NOT LIKE '\\_pgpipe\\_%' ORDER BY position",
        )
        .bind(schema)
        .bind(table)
        .fetch_all::<String>()
        .await
        .unwrap()
}

async fn start(schema: &str, rows: i64) -> (InProcess, Client, String) {
    make_table(schema, rows).await;
    let name = pipe_name(schema);
    let (srv, c, _) = start_pipe(users_req(&name, schema)).await;
    (srv, c, name)
}

async fn delete(c: &mut Client, name: &str) {
    delete_pipe(c, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_destination_has_the_kept_columns_under_their_new_names_and_the_load_matches() {
    let schema = unique("cols");
    let (_srv, mut c, name) = start(&schema, 3_000).await;
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["id", "description", "note", "big_note", "qty"]
    );
    let p = get(&mut c, &name).await;
    assert_eq!(p.tables[0].snapshot_rows, 3_000);
    let t = &p.config.unwrap().tables[0];
    assert_eq!(t.exclude_columns, ["password_hash"]);
    assert_eq!(
        t.rename_columns.get("desc").map(String::as_str),
        Some("description")
    );
    wait_equal_renamed(&schema, Duration::from_secs(30)).await;
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdc_applies_changes_to_the_kept_columns_only() {
    let schema = unique("colc");
    let (_srv, mut c, name) = start(&schema, 2_000).await;
    let pg = pg().await;
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.users SELECT g, 'new ' || g, 'secret', 'n', NULL, 1
             FROM generate_series(2001, 2100) g;
         UPDATE {schema}.users SET \"desc\" = 'changed', qty = qty + 1 WHERE id % 7 = 0;
         -- Only the excluded column: nothing visible changes.
         UPDATE {schema}.users SET password_hash = 'rotated' WHERE id % 3 = 0;
         -- desc (renamed) and password_hash (excluded) stay out-of-line
         -- TOAST values that pgoutput sends as unchanged.
         UPDATE {schema}.users SET note = 'toast kept' WHERE id % 10 = 0 AND id % 7 <> 0;
         DELETE FROM {schema}.users WHERE id % 13 = 0;"
    ))
    .await
    .unwrap();
    wait_equal_renamed(&schema, Duration::from_secs(60)).await;
    // The unchanged TOAST values were filled in, not left empty.
    let long: u64 = ch_one(
        &schema,
        "SELECT count() FROM users FINAL WHERE _pgpipe_is_deleted = 0 \
             AND note = 'toast kept' AND length(description) > 2000",
    )
    .await;
    assert!(long > 100, "{long} rows kept their long description");
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["id", "description", "note", "big_note", "qty"]
    );
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_keeps_the_exclusion_and_the_rename() {
    let schema = unique("colr");
    let (_srv, mut c, name) = start(&schema, 2_000).await;
    let old = get(&mut c, &name).await;
    pg_exec(&format!(
        "UPDATE {schema}.users SET \"desc\" = 'before resync' WHERE id <= 100;"
    ))
    .await;
    let new = resync_and_wait(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(new.resync_of, old.id);
    assert_eq!(
        new.config.as_ref().unwrap().tables[0].exclude_columns,
        ["password_hash"]
    );
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["id", "description", "note", "big_note", "qty"]
    );
    pg_exec(&format!(
        "UPDATE {schema}.users SET \"desc\" = 'after resync' WHERE id > 1900;
             DELETE FROM {schema}.users WHERE id <= 10;"
    ))
    .await;
    wait_equal_renamed(&schema, Duration::from_secs(60)).await;
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_column_added_during_cdc_is_added_while_the_exclusion_holds() {
    let schema = unique("cola");
    let (_srv, mut c, name) = start(&schema, 1_000).await;
    pg_exec(&format!(
        "ALTER TABLE {schema}.users ADD COLUMN extra int;
             INSERT INTO {schema}.users SELECT g, 'added ' || g, 'secret', 'n', NULL, 2, g * 3
                 FROM generate_series(1001, 1050) g;
             UPDATE {schema}.users SET extra = 7, password_hash = 'x' WHERE id <= 20;"
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if dest_columns(&schema, "users")
            .await
            .contains(&"extra".to_owned())
        {
            break;
        }
        let p = get(&mut c, &name).await;
        assert_ne!(p.status(), PipeStatus::Failed, "{}", p.error);
        assert!(tokio::time::Instant::now() < deadline, "extra never added");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["id", "description", "note", "big_note", "qty", "extra"]
    );
    wait_equal_renamed(&schema, Duration::from_secs(60)).await;
    // The new column's values arrived too.
    let extra: u64 = ch(&schema)
        .query("SELECT sum(extra) FROM users FINAL WHERE _pgpipe_is_deleted = 0")
        .fetch_one::<Option<i64>>()
        .await
        .unwrap()
        .unwrap_or_default() as u64;
    assert_eq!(
        extra,
        (1001..=1050).map(|g: u64| g * 3).sum::<u64>() + 20 * 7
    );
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_column_taking_a_renamed_columns_name_fails_its_table_saying_why() {
    let schema = unique("colx");
    let (_srv, mut c, name) = start(&schema, 100).await;
    pg_exec(&format!(
        "ALTER TABLE {schema}.users ADD COLUMN description text;
             INSERT INTO {schema}.users (id, description) VALUES (1000, 'clash');"
    ))
    .await;
    // Only the table fails (the pipe keeps running its other tables).
    let p = wait_table_state(
        &mut c,
        &name,
        &format!("{schema}.users"),
        TableState::Failed,
    )
    .await;
    assert!(
        p.error.contains("rename_columns[\"desc\"]") && p.error.contains("\"description\""),
        "{}",
        p.error
    );
    // Nothing of the clashing change was written.
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["id", "description", "note", "big_note", "qty"]
    );
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn column_options_that_do_not_fit_the_table_are_refused_naming_the_field() {
    let schema = unique("colv");
    make_table(&schema, 10).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let with = |exclude: &[&str], rename: &[(&str, &str)]| {
        let mut req = pipe_req(&name, &schema, &[&format!("{schema}.users")]);
        req.tables[0].exclude_columns = exclude.iter().map(|s| (*s).into()).collect();
        req.tables[0].rename_columns = rename
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        req
    };
    // (request, field at fault)
    let cases = [
        (with(&["note", "id"], &[]), "tables[0].exclude_columns[1]"),
        (
            with(&["password_hash", "nope"], &[]),
            "tables[0].exclude_columns[1]",
        ),
        (
            with(&[], &[("nope", "x")]),
            "tables[0].rename_columns[\"nope\"]",
        ),
        (
            with(&[], &[("desc", "note")]),
            "tables[0].rename_columns[\"desc\"]",
        ),
        (
            with(&[], &[("desc", "_pgpipe_version")]),
            "tables[0].rename_columns[\"desc\"]",
        ),
        (
            with(&["desc"], &[("desc", "description")]),
            "tables[0].rename_columns[\"desc\"]",
        ),
    ];
    for (req, field) in cases {
        the_column_problem(&mut c, req.clone(), field).await;
        let err = c.create_pipe(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // Excluding every column but the key is fine.
    let all_but_the_key = with(&["desc", "password_hash", "note", "big_note", "qty"], &[]);
    let v = c
        .validate_pipe(validate_req(all_but_the_key))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}

/// `shapes`: id, a `point` (no ClickHouse mapping), v, a 2-D array (none
/// either).
async fn make_shapes(schema: &str, rows: i64) {
    pg_exec(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.shapes (id bigint PRIMARY KEY, p point, v text, m int[][]);
             INSERT INTO {schema}.shapes
             SELECT g, point(g, -g), 'v ' || g, ARRAY[[g, 1], [2, 3]] FROM generate_series(1, {rows}) g;"
        )).await;
}

/// Waits until `shapes` matches its destination on the kept columns.
async fn shapes_equal(schema: &str, secs: u64) {
    let timeout = Duration::from_secs(secs);
    wait_same(schema, "shapes", "id, v", timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_column_of_an_unsupported_type_is_refused_until_excluded() {
    let schema = unique("colu");
    make_shapes(&schema, 10).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let req = pipe_req(&name, &schema, &[&format!("{schema}.shapes")]);
    let v = c
        .validate_pipe(validate_req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = v.problems.iter().map(|p| p.kind()).collect();
    assert_eq!(
        kinds,
        [ProblemKind::UnsupportedType, ProblemKind::UnsupportedType],
        "{v:?}"
    );
    assert!(
        v.problems[0].message.contains("type point")
            && v.problems[0].message.contains("exclude_columns"),
        "{v:?}"
    );
    // (As every problem of the source's tables.)
    let err = c.create_pipe(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("exclude_columns"),
        "{}",
        err.message()
    );
    // Excluding one leaves the other reported.
    let mut one = req.clone();
    one.tables[0].exclude_columns = vec!["p".into()];
    let v = c
        .validate_pipe(validate_req(one))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.problems.len(), 1, "{v:?}");
    assert_eq!(v.problems[0].column, "m", "{v:?}");
    let mut both = req;
    both.tables[0].exclude_columns = vec!["p".into(), "m".into()];
    let v = c
        .validate_pipe(validate_req(both))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_excluded_column_of_an_unsupported_type_is_left_out_of_load_cdc_and_resync() {
    let schema = unique("colp");
    make_shapes(&schema, 2_000).await;
    let name = pipe_name(&schema);
    let mut req = pipe_req(&name, &schema, &[&format!("{schema}.shapes")]);
    req.tables[0].exclude_columns = vec!["p".into(), "m".into()];
    let (_srv, mut c, _) = start_pipe(req).await;
    assert_eq!(dest_columns(&schema, "shapes").await, ["id", "v"]);
    shapes_equal(&schema, 30).await;
    // CDC rows carry the excluded columns; they are projected away.
    pg_exec(&format!(
        "INSERT INTO {schema}.shapes SELECT g, point(g, g), 'new ' || g, ARRAY[[1]]
                 FROM generate_series(2001, 2100) g;
             UPDATE {schema}.shapes SET p = point(0, 0) WHERE id <= 50;
             UPDATE {schema}.shapes SET v = 'changed', m = ARRAY[[9]] WHERE id BETWEEN 51 AND 80;
             DELETE FROM {schema}.shapes WHERE id BETWEEN 81 AND 90;"
    ))
    .await;
    shapes_equal(&schema, 60).await;
    resync_and_wait(&mut c, &name, Duration::from_secs(120)).await;
    pg_exec(&format!(
        "UPDATE {schema}.shapes SET v = 'after resync', p = point(1, 1) WHERE id > 2050;"
    ))
    .await;
    assert_eq!(dest_columns(&schema, "shapes").await, ["id", "v"]);
    shapes_equal(&schema, 60).await;
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_can_replace_the_column_options_and_keeps_soft_deletes() {
    let schema = unique("colo");
    let (_srv, mut c, name) = start(&schema, 2_000).await;
    pg_exec(&format!("DELETE FROM {schema}.users WHERE id <= 25;")).await;
    wait_equal_renamed(&schema, Duration::from_secs(60)).await;
    // The key renamed too: soft deletes are carried over under the new name.
    let mut o = table(&format!("{schema}.users"));
    o.exclude_columns = vec!["note".into()];
    o.rename_columns = [
        ("desc".to_string(), "details".to_string()),
        ("id".to_string(), "user_id".to_string()),
    ]
    .into();
    let new = resync_overrides(&mut c, &name, vec![o], true)
        .await
        .unwrap();
    let t = &new.config.as_ref().unwrap().tables[0];
    assert_eq!(t.exclude_columns, ["note"]);
    let running = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(running.id, new.id);
    assert_eq!(
        dest_columns(&schema, "users").await,
        ["user_id", "details", "password_hash", "big_note", "qty"]
    );
    pg_exec(&format!(
        "UPDATE {schema}.users SET \"desc\" = 'after', password_hash = 'h' WHERE id > 1990;"
    ))
    .await;
    wait_users_equal(
        &schema,
        "id, `desc`, password_hash, big_note, qty",
        "user_id, details, password_hash, big_note, qty",
        Duration::from_secs(60),
    )
    .await;
    let deleted: u64 = ch(&schema)
        // (Not FINAL: it leaves out the deleted rows.)
        .query("SELECT count() FROM users WHERE _pgpipe_is_deleted = 1 AND user_id <= 25")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(deleted, 25, "soft-deleted rows carried over");
    delete(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_column_options_are_refused_without_the_flag_or_when_they_do_not_fit() {
    let schema = unique("colq");
    let (_srv, mut c, name) = start(&schema, 10).await;
    let before = get(&mut c, &name).await;
    let with = |exclude: &[&str], replace: bool| {
        let mut o = table(&format!("{schema}.users"));
        o.exclude_columns = exclude.iter().map(|s| (*s).into()).collect();
        ResyncPipeRequest {
            name: name.clone(),
            overrides: vec![o],
            replace_column_options: replace,
            ..Default::default()
        }
    };
    // (request, code, what the message says)
    let cases = [
        (
            with(&["note"], false),
            tonic::Code::InvalidArgument,
            "replace_column_options",
        ),
        (
            with(&["note", "note"], true),
            tonic::Code::InvalidArgument,
            "overrides[0].exclude_columns[1]",
        ),
        (
            with(&["nope"], true),
            tonic::Code::InvalidArgument,
            "which the table does not have",
        ),
        (
            with(&["id"], true),
            tonic::Code::InvalidArgument,
            "key column",
        ),
    ];
    for (req, code, says) in cases {
        let err = c.resync_pipe(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{says}: {err:?}");
        assert!(err.message().contains(says), "{says}: {}", err.message());
    }
    let after = get(&mut c, &name).await;
    assert_eq!(after.id, before.id, "nothing replaced");
    assert_eq!(
        after.stream_version, before.stream_version,
        "nothing recorded"
    );
    delete(&mut c, &name).await;
}
