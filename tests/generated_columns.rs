//! Stored generated columns on PostgreSQL before 18, against the real
//! Postgres and ClickHouse: pgoutput cannot send them, so they are left out
//! of the ClickHouse table, and the user is told: a GENERATED_COLUMN warning
//! in ValidatePipe (CreatePipe accepts), the column listed on GetPipe. The
//! other columns replicate through snapshot and CDC.

mod common;

use std::time::Duration;

use common::data::*;
use common::*;
use pgpipe::proto::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_column_is_reported_and_the_other_columns_replicate() {
    let pg = pg().await;
    let version: i32 = pg
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    if version >= 180_000 {
        eprintln!("PostgreSQL 18 publishes generated columns: nothing to report");
        return;
    }
    let schema = unique("gen");
    let t = format!("{schema}.orders");
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {t} (id bigint PRIMARY KEY, qty int, price int,
           total int GENERATED ALWAYS AS (qty * price) STORED);
         INSERT INTO {t} (id, qty, price) SELECT g, g % 10, g FROM generate_series(1, 500) g;"
    ))
    .await
    .unwrap();
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    let req = pipe_req(&name, &schema, &[&t]);

    let resp = c
        .validate_pipe(ValidatePipeRequest {
            name: req.name.clone(),
            source: req.source.clone(),
            destination: req.destination.clone(),
            tables: req.tables.clone(),
            settings: req.settings,
            labels: req.labels.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.ok,
        "a warning does not make the request bad: {resp:#?}"
    );
    let [p] = resp.problems.as_slice() else {
        panic!("one problem expected: {resp:#?}");
    };
    assert_eq!(p.kind(), ProblemKind::GeneratedColumn);
    assert!(p.warning);
    assert_eq!((p.table.as_str(), p.column.as_str()), (t.as_str(), "total"));
    for part in ["generated column", "left out", "PostgreSQL 18"] {
        assert!(p.message.contains(part), "{part:?} not in {}", p.message);
    }

    c.create_pipe(req).await.unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let stats = pipe.tables.iter().find(|s| s.source_table == t).unwrap();
    assert_eq!(
        stats
            .source_details
            .clone()
            .unwrap_or_default()
            .generated_columns,
        vec!["total".to_owned()]
    );
    pg.batch_execute(&format!(
        "INSERT INTO {t} (id, qty, price) VALUES (501, 2, 3);
         UPDATE {t} SET qty = qty + 1 WHERE id % 3 = 0;
         DELETE FROM {t} WHERE id % 7 = 0;"
    ))
    .await
    .unwrap();
    let cols = "id, ifNull(toString(qty), '~') AS qty, ifNull(toString(price), '~') AS price";
    wait_equal(
        &schema,
        "orders",
        &schema,
        "orders",
        cols,
        Duration::from_secs(120),
    )
    .await;
    let ch_cols: Vec<String> = ch(&schema)
        .query("SELECT name FROM system.columns WHERE database = ? AND table = 'orders' AND name NOT LIKE '\\_pgpipe\\_%' ORDER BY position")
        .bind(&schema)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ch_cols, ["id", "qty", "price"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_column_in_order_by_is_refused_saying_why() {
    let pg = pg().await;
    let version: i32 = pg
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    if version >= 180_000 {
        return;
    }
    let schema = unique("geno");
    let t = format!("{schema}.orders");
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {t} (id bigint PRIMARY KEY, qty int,
           total int GENERATED ALWAYS AS (qty * 2) STORED);"
    ))
    .await
    .unwrap();
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let mut req = pipe_req(&schema.replace('_', "-"), &schema, &[&t]);
    req.tables[0].order_by = vec!["total".into(), "id".into()];
    let err = c.create_pipe(req).await.unwrap_err();
    assert!(
        err.message().contains(
            "\"total\", which is a generated column, not replicated before PostgreSQL 18"
        ),
        "{}",
        err.message()
    );
}
