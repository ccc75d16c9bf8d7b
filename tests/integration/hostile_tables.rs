//! Source tables pgpipe cannot or must carefully replicate, against the real
//! Postgres and ClickHouse: no key, unsupported column types, ORDER BY a
//! column that does not exist (refused before anything is recorded), and
//! identifiers full of SQL metacharacters (replicated literally, never
//! executed).

use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;
use tonic::Code;

async fn canary_alive(schema: &str) -> i64 {
    pg().await
        .query_one(&format!("SELECT count(*) FROM {schema}.canary"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_cannot_be_replicated_are_refused_naming_the_fix() {
    let schema = unique("hst");
    pg_exec(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.canary (id int PRIMARY KEY); INSERT INTO {schema}.canary VALUES (1);
             CREATE TABLE {schema}.nokey (a int, b text);
             CREATE TABLE {schema}.nothing (id int PRIMARY KEY, b text);
             ALTER TABLE {schema}.nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE {schema}.shapes (id int PRIMARY KEY, p point);
             CREATE TABLE {schema}.ok (id int PRIMARY KEY, v text);"
        )).await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let (before_list, before_head) = (list_all(&mut c).await, log_head(&mut c).await);

    let ok = format!("{schema}.ok");
    let with_order = |order_by: &[&str]| {
        let mut r = pipe_req(&name, &schema, &[&ok]);
        r.tables[0].order_by = order_by.iter().map(|s| s.to_string()).collect();
        r
    };
    let cases: Vec<(&str, CreatePipeRequest, Vec<String>)> = vec![
        (
            "no primary key",
            pipe_req(&name, &schema, &[&format!("{schema}.nokey")]),
            vec![
                format!("table {schema}.nokey has no primary key"),
                "REPLICA IDENTITY USING INDEX".into(),
            ],
        ),
        (
            "replica identity nothing",
            pipe_req(&name, &schema, &[&format!("{schema}.nothing")]),
            vec![
                "REPLICA IDENTITY NOTHING".into(),
                format!("ALTER TABLE {schema}.nothing REPLICA IDENTITY DEFAULT"),
            ],
        ),
        (
            "unsupported type",
            pipe_req(&name, &schema, &[&format!("{schema}.shapes")]),
            vec![
                format!(
                    "table {schema}.shapes column \"p\" has type point, which pgpipe cannot replicate"
                ),
                "supported:".into(),
            ],
        ),
        (
            "order by a missing column",
            with_order(&["nope"]),
            vec![
                "names column \"nope\", which the table does not have".into(),
                "its columns are: id, v".into(),
            ],
        ),
        (
            "order by shaped like injection",
            with_order(&[&format!("id; DROP TABLE {schema}.canary; --")]),
            vec!["which the table does not have".into()],
        ),
        (
            "order by with a comment",
            with_order(&["id /* */, v"]),
            vec!["which the table does not have".into()],
        ),
        (
            "source table shaped like injection",
            pipe_req(
                &name,
                &schema,
                &[&format!("{schema}.\"ok; DROP TABLE {schema}.canary; --\"")],
            ),
            vec!["does not exist on the source".into()],
        ),
    ];
    for (what, req, needles) in cases {
        let e = c.create_pipe(req).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
        for n in &needles {
            assert!(
                e.message().contains(n.as_str()),
                "{what}: {:?} should mention {n:?}",
                e.message()
            );
        }
        assert_eq!(
            list_all(&mut c).await,
            before_list,
            "{what}: recorded a pipe"
        );
        assert_eq!(
            log_head(&mut c).await,
            before_head,
            "{what}: appended an event"
        );
    }
    assert_eq!(canary_alive(&schema).await, 1);
    let slots: i64 = pg()
        .await
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a publication was left behind");

    // The same checks guard a resync, before the old incarnation is touched.
    c.create_pipe(pipe_req(&name, &schema, &[&ok]))
        .await
        .unwrap();
    let live = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    // Paused, so no progress event moves the head meanwhile.
    pause(&mut c, &name).await;
    let (before_list, before_head) = (list_all(&mut c).await, log_head(&mut c).await);
    for order_by in [
        "nope".to_string(),
        format!("id; DROP TABLE {schema}.canary; --"),
    ] {
        let e = c
            .resync_pipe(ResyncPipeRequest {
                name: name.clone(),
                overrides: vec![TableConfig {
                    source_table: ok.clone(),
                    order_by: vec![order_by.clone(), "id".into()],
                    ..Default::default()
                }],
                tables: vec![],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("which the table does not have"),
            "{}",
            e.message()
        );
        assert_eq!(
            list_all(&mut c).await,
            before_list,
            "resync {order_by:?} recorded"
        );
        assert_eq!(log_head(&mut c).await, before_head);
    }
    assert_eq!(get(&mut c, &name).await.id, live.id);
    assert_eq!(canary_alive(&schema).await, 1);
}

/// ClickHouse quoting for the test's own reads.
fn ch_ident(s: &str) -> String {
    format!("`{}`", s.replace('\\', "\\\\").replace('`', "\\`"))
}

fn pg_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

type Row = (i64, Option<String>, i32, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identifiers_full_of_sql_metacharacters_replicate_literally() {
    let base = unique("hsq");
    let schema = format!("{base}\"; --");
    let table = "t'; DROP TABLE canary; --";
    let cols = ["id", "na\"me; /* x */", "val`ue", "名前 --"];
    let q = |c: &str| pg_ident(c);
    let pgt = format!("{}.{}", pg_ident(&schema), pg_ident(table));
    pg_exec(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.canary (id int PRIMARY KEY); INSERT INTO {s}.canary VALUES (1);
             CREATE TABLE {pgt} ({c0} bigint, {c1} text, {c2} int NOT NULL, {c3} text, PRIMARY KEY ({c0}, {c2}));
             INSERT INTO {pgt} SELECT g, 'it''s \"quoted\"; --' || g, g % 5, '`tick` /* ' || g || ' */'
               FROM generate_series(1, 300) g;",
            s = pg_ident(&schema),
            c0 = q(cols[0]),
            c1 = q(cols[1]),
            c2 = q(cols[2]),
            c3 = q(cols[3]),
        )).await;
    // A destination database whose name needs quoting too, with a canary.
    let db = format!("{base}-`db'");
    let chc = clickhouse::Client::default().with_url(ch_url());
    chc.query(&format!("CREATE DATABASE {}", ch_ident(&db)))
        .execute()
        .await
        .unwrap();
    chc.query(&format!(
        "CREATE TABLE {}.canary (id Int32) ENGINE = MergeTree ORDER BY id",
        ch_ident(&db)
    ))
    .execute()
    .await
    .unwrap();

    let (_srv, mut c) = engine().await;
    let name = pipe_name(&base);
    let mut req = pipe_req(&name, &db, &[&pgt]);
    req.tables[0].order_by = vec![cols[2].into(), cols[0].into()];
    c.create_pipe(req).await.unwrap();
    let p = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(p.config.unwrap().tables[0].destination_table, table);

    // Changes through CDC, with metacharacters in the values too.
    pg().await
        .batch_execute(&format!(
            "INSERT INTO {pgt} VALUES (1000, 'x''); DROP TABLE canary; --', 1, '/* */');
             UPDATE {pgt} SET {c1} = {c1} || ' `upd`' WHERE {c0} % 7 = 0;
             DELETE FROM {pgt} WHERE {c0} % 11 = 0;",
            c0 = q(cols[0]),
            c1 = q(cols[1]),
        ))
        .await
        .unwrap();

    let pg_rows = || async {
        let rows = pg()
            .await
            .query(
                &format!(
                    "SELECT {}, {}, {}, {} FROM {pgt} ORDER BY 1",
                    q(cols[0]),
                    q(cols[1]),
                    q(cols[2]),
                    q(cols[3])
                ),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect::<Vec<Row>>()
    };
    let ch_sql = format!(
        "SELECT {}, {}, {}, {} FROM {}.{} FINAL WHERE _pgpipe_is_deleted = 0 ORDER BY 1",
        ch_ident(cols[0]),
        ch_ident(cols[1]),
        ch_ident(cols[2]),
        ch_ident(cols[3]),
        ch_ident(&db),
        ch_ident(table)
    );
    let want = pg_rows().await;
    assert_eq!(want.len(), 300 + 1 - 300 / 11);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Result<Vec<Row>, _> = chc.query(&ch_sql).fetch_all::<Row>().await;
        match got {
            Ok(rows) if rows == want => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "destination never matched: {:?}",
                other.map(|r| r.len())
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing was executed: both canaries stand.
    assert_eq!(canary_alive(&pg_ident(&schema)).await, 1);
    let n: u64 = chc
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'canary'")
        .bind(db.as_str())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 1);
    delete_pipe(&mut c, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_and_sort_key_updates_under_a_non_key_order_by_are_applied() {
    // Found here: a delete carries only the source key, so its tombstone
    // landed under another sorting key, and an update of an ORDER BY column
    // left the old row live under the old one.
    let schema = unique("nko");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.items (id bigint PRIMARY KEY, qty int NOT NULL, name text);
             INSERT INTO {schema}.items SELECT g, g % 5 + 1, 'n' FROM generate_series(1, 100) g;"
    ))
    .await;
    let name = pipe_name(&schema);
    let mut req = pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    req.tables[0].order_by = vec!["qty".into(), "id".into()];
    let (_srv, _c, _) = start_pipe(req).await;
    pg_exec(&format!(
        "DELETE FROM {schema}.items WHERE id <= 10;
             UPDATE {schema}.items SET qty = 99 WHERE id = 50;
             UPDATE {schema}.items SET name = 'same sort key' WHERE id = 51;
             INSERT INTO {schema}.items VALUES (1000, 7, 'new'), (1001, 7, 'gone');
             UPDATE {schema}.items SET qty = 8 WHERE id = 1000;
             DELETE FROM {schema}.items WHERE id = 1001;
             UPDATE {schema}.items SET qty = 50 WHERE id = 60;
             UPDATE {schema}.items SET qty = 51 WHERE id = 60;
             UPDATE {schema}.items SET qty = 60 % 5 + 1 WHERE id = 60;"
    ))
    .await;
    wait_same(&schema, "items", "id, qty, name", Duration::from_secs(60)).await;
}
