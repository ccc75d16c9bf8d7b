//! Stored generated columns on PostgreSQL before 18, against the real
//! Postgres and ClickHouse: pgoutput cannot send them, so they are left out
//! of the ClickHouse table, and the user is told: a GENERATED_COLUMN warning
//! in ValidatePipe (CreatePipe accepts), the column listed on GetPipe. The
//! other columns replicate through snapshot and CDC.

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;

/// A new schema named after `prefix` whose table `orders` the SQL that
/// `ddl` makes of the table's qualified name creates; the schema and that name.
async fn with_orders(prefix: &str, ddl: impl Fn(&str) -> String) -> (String, String) {
    let schema = unique(prefix);
    let t = format!("{schema}.orders");
    create_schema(&schema, &ddl(&t)).await;
    (schema, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_column_is_reported_and_the_other_columns_replicate() {
    if pg_version().await >= 180_000 {
        eprintln!("PostgreSQL 18 publishes generated columns: nothing to report");
        return;
    }
    let (schema, t) = with_orders("gen", |t| {
        format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, qty int, price int,
               total int GENERATED ALWAYS AS (qty * price) STORED);
             INSERT INTO {t} (id, qty, price) SELECT g, g % 10, g FROM generate_series(1, 500) g;"
        )
    })
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let req = pipe_req(&name, &schema, &[&t]);

    let resp = c
        .validate_pipe(validate_req(req.clone()))
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
    let pipe = wait_running(&mut c, &name, WAIT).await;
    assert_eq!(
        source_details(&pipe, &t).generated_columns,
        vec!["total".to_owned()]
    );
    pg_exec(&format!(
        "INSERT INTO {t} (id, qty, price) VALUES (501, 2, 3);
         UPDATE {t} SET qty = qty + 1 WHERE id % 3 = 0;
         DELETE FROM {t} WHERE id % 7 = 0;"
    ))
    .await;
    let cols = "id, ifNull(toString(qty), '~') AS qty, ifNull(toString(price), '~') AS price";
    wait_same_table(&schema, &schema, "orders", cols).await;
    assert_eq!(ch_columns(&schema, "orders").await, ["id", "qty", "price"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_column_in_order_by_is_refused_saying_why() {
    if pg_version().await >= 180_000 {
        return;
    }
    let (schema, t) = with_orders("geno", |t| {
        format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, qty int,
               total int GENERATED ALWAYS AS (qty * 2) STORED);"
        )
    })
    .await;
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req(&pipe_name(&schema), &schema, &[&t]);
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
