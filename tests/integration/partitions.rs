//! Partitioned tables, against the real Postgres and ClickHouse: a
//! partitioned parent replicates into ONE ClickHouse table (its partitions'
//! changes are published through it), partitions created or attached while
//! the pipe runs are included, a detached one keeps its rows and is
//! reported; resync and adding to a running pipe work on it. Every case
//! ends with the row-by-row oracle.

use std::time::Duration;

use crate::common::data::*;
use crate::common::peers::wait_pipe;
use crate::common::*;
use pgpipe::proto::*;

/// Columns compared by the oracle (NULLs made comparable).
const COLS: &str =
    "id, toString(at) AS at, ifNull(kind, '~') AS kind, ifNull(toString(n), '~') AS n";

/// `{schema}.events`, range-partitioned by month (September to November
/// 2026), keyed by (id, at), with `rows` rows spread over the months.
async fn make_events(schema: &str, rows: u64) -> String {
    let t = format!("{schema}.events");
    let mut sql = format!(
        "CREATE TABLE {t} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at))
           PARTITION BY RANGE (at);"
    );
    for (m, from, to) in [
        ("2026_09", "2026-09-01", "2026-10-01"),
        ("2026_10", "2026-10-01", "2026-11-01"),
        ("2026_11", "2026-11-01", "2026-12-01"),
    ] {
        sql.push_str(&format!(
            "CREATE TABLE {schema}.events_{m} PARTITION OF {t} FOR VALUES FROM ('{from}') TO ('{to}');"
        ));
    }
    sql.push_str(&insert_events(&t, 1, rows, "2026-09-01", 90));
    sql.push_str(&format!("ANALYZE {t};"));
    create_schema(schema, &sql).await;
    t
}

/// Rows `from..=to` dated `start` plus `id % days` days; some NULLs.
fn insert_events(table: &str, from: u64, to: u64, start: &str, days: u64) -> String {
    format!(
        "INSERT INTO {table} (id, at, kind, n) SELECT g, DATE '{start}' + (g % {days})::int, \
           CASE WHEN g % 5 = 0 THEN NULL ELSE 'kind ' || (g % 13) END, \
           CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 3)::int END \
         FROM generate_series({from}, {to}) g;"
    )
}

/// Waits until `{schema}.{table}` and its ClickHouse copy are equal.
async fn assert_equal(schema: &str, table: &str) {
    wait_same_table(schema, schema, table, COLS).await;
}

/// Waits until the pipe knows `leaves` among the table's partitions, none
/// loading (the pipe must stay RUNNING).
async fn wait_partitions(
    c: &mut Client,
    name: &str,
    source_table: &str,
    leaves: &[String],
) -> Pipe {
    wait_pipe(c, name, "partitions loaded", Duration::from_secs(60), |p| {
        assert_eq!(
            p.status(),
            PipeStatus::Running,
            "{} ({})",
            p.error,
            p.failed_step
        );
        let d = source_details(p, source_table);
        leaves.iter().all(|l| d.partitions.contains(l)) && d.partitions_loading.is_empty()
    })
    .await
}

/// A plain table shaped like `events` (to attach as a partition).
fn events_like(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at));"
    )
}

/// `events_{month}` of `schema`, attachable to `{schema}.events`.
fn leaf(schema: &str, month: &str) -> String {
    format!("{schema}.events_{month}")
}

/// Inserts, updates that move rows to another partition (the partition key
/// is part of the key), updates in place and deletes.
async fn cdc_changes(t: &str) {
    pg_exec(&format!(
        "{}
             UPDATE {t} SET at = at + 31, kind = 'moved' WHERE id % 7 = 0 AND at < '2026-10-25';
             UPDATE {t} SET n = -n WHERE id % 3 = 0;
             DELETE FROM {t} WHERE id % 11 = 0;
             BEGIN; UPDATE {t} SET at = '2026-09-15' WHERE id = 100 AND at >= '2026-10-01'; \
                    INSERT INTO {t} VALUES (1000000, '2026-11-30', 'late', 1); COMMIT;",
        insert_events(t, 7_001, 8_000, "2026-10-01", 60)
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_table_replicates_into_one_table_through_snapshot_and_cdc() {
    let schema = unique("part");
    let t = make_events(&schema, 7_000).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, p) = start_pipe(pipe_req(&name, &schema, &[&t])).await;
    assert_equal(&schema, "events").await;
    // One destination table, the leaves copied in CTID ranges (2000 rows
    // each in pipe_req): more ranges than leaves.
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
    let stats = table_stats(&p, &t);
    assert_eq!(stats.snapshot_rows, 7_000, "{stats:?}");
    assert!(stats.snapshot_partitions_total > 3, "{stats:?}");
    let leaves: Vec<String> = ["09", "10", "11"]
        .iter()
        .map(|m| leaf(&schema, &format!("2026_{m}")))
        .collect();
    assert_eq!(source_details(&p, &t).partitions, leaves);

    cdc_changes(&t).await;
    assert_equal(&schema, "events").await;
    assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_created_or_attached_while_the_pipe_runs_are_replicated() {
    let schema = unique("patt");
    let t = make_events(&schema, 3_000).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&t])).await;

    // A new partition: its rows arrive through the root.
    let new = leaf(&schema, "2026_12");
    pg_exec(&format!(
        "CREATE TABLE {new} PARTITION OF {t} FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
         {}",
        insert_events(&t, 10_001, 11_000, "2026-12-01", 31)
    ))
    .await;
    // A table with rows of its own, attached: those rows are in no WAL the
    // pipe decodes, and must be loaded.
    let old = leaf(&schema, "2026_08");
    pg_exec(&format!(
        "{}
         {}
         ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');",
        events_like(&old),
        insert_events(&old, 20_001, 24_000, "2026-08-01", 31)
    ))
    .await;
    // Changes go on meanwhile, in the attached partition too.
    pg_exec(&format!(
        "UPDATE {t} SET kind = 'after attach' WHERE id % 10 = 1;
         DELETE FROM {t} WHERE id % 17 = 0;
         UPDATE {t} SET at = at + 31 WHERE id BETWEEN 20001 AND 20100;"
    ))
    .await;
    assert_equal(&schema, "events").await;
    let p = wait_partitions(&mut c, &name, &t, &[new, old.clone()]).await;
    let d = source_details(&p, &t);
    assert_eq!(d.partitions.len(), 5, "{d:?}");
    let attached = history(&mut c, &name, None).await.into_iter().any(|e| {
        matches!(&e.payload, Some(event::Payload::PartitionsChanged(p)) if p.attached.contains(&old))
    });
    assert!(
        attached,
        "no PartitionsChanged recorded the attached partition"
    );
    pg_exec(&format!("UPDATE {old} SET n = 0 WHERE id % 2 = 0")).await;
    assert_equal(&schema, "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detached_partition_keeps_its_rows_and_is_reported() {
    let schema = unique("pdet");
    let t = make_events(&schema, 900).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&t])).await;
    assert_equal(&schema, "events").await;

    let gone = leaf(&schema, "2026_09");
    pg_exec(&format!("ALTER TABLE {t} DETACH PARTITION {gone}")).await;
    let p = wait_pipe(
        &mut c,
        &name,
        "detach reported",
        Duration::from_secs(60),
        |p| source_details(p, &t).partitions_detached.contains(&gone),
    )
    .await;
    assert_eq!(p.status(), PipeStatus::Running);
    assert!(!source_details(&p, &t).partitions.contains(&gone));
    // Its 300 rows stay in ClickHouse (Postgres sends no deletes).
    let live: u64 = ch_one(
        &schema,
        "SELECT count() FROM events FINAL WHERE _pgpipe_is_deleted = 0",
    )
    .await;
    assert_eq!(live, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipe_with_a_partitioned_table_resyncs() {
    let schema = unique("pres");
    let t = make_events(&schema, 5_000).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&t])).await;
    cdc_changes(&t).await;
    assert_equal(&schema, "events").await;

    let p = resync_and_wait(&mut c, &name, WAIT).await;
    assert_eq!(source_details(&p, &t).partitions.len(), 3);
    assert_equal(&schema, "events").await;
    pg_exec(&format!(
        "UPDATE {t} SET kind = 'after resync' WHERE id % 4 = 0; DELETE FROM {t} WHERE id % 9 = 0;"
    ))
    .await;
    assert_equal(&schema, "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_table_added_to_a_running_pipe_is_loaded_beside_cdc() {
    let schema = unique("padd");
    let t = make_events(&schema, 5_000).await;
    let other = format!("{schema}.other");
    pg_exec(&format!(
        "CREATE TABLE {other} (id bigint PRIMARY KEY, at date NOT NULL, kind text, n int);
         {}",
        insert_events(&other, 1, 100, "2026-01-01", 10)
    ))
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, pipe) = start_pipe(pipe_req(&name, &schema, &[&other])).await;

    c.update_pipe(add_tables_req(&name, vec![table(&t)]))
        .await
        .unwrap();
    cdc_changes(&t).await;
    let p = wait_pipe(&mut c, &name, "loaded", WAIT, |p| {
        assert_eq!(p.id, pipe.id);
        assert_eq!(p.status(), PipeStatus::Running, "{}", p.error);
        let loaded = p.tables.iter().any(|s| {
            s.source_table == t && s.state() == TableState::Replicating && s.snapshot_done
        });
        loaded && p.table_loads.is_empty()
    })
    .await;
    assert_eq!(source_details(&p, &t).partitions.len(), 3);
    assert_equal(&schema, "events").await;
    assert_equal(&schema, "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_without_a_primary_key_is_refused() {
    let schema = unique("pnok");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.logs (at date NOT NULL, line text) PARTITION BY RANGE (at);"
    ))
    .await;
    let (_srv, mut c) = engine().await;
    let req = pipe_req(&pipe_name(&schema), &schema, &[&format!("{schema}.logs")]);
    let err = c.create_pipe(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    for part in ["partitioned table", "no primary key", "partition key"] {
        assert!(
            err.message().contains(part),
            "{part:?} not in {}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_while_an_attached_partition_loads_resumes_the_load() {
    let schema = unique("pcra");
    let t = make_events(&schema, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (mut p, mut c) = Proc::start_engine(
        dir.path(),
        &[("PGPIPE_FAILPOINTS", "partition_load.partition_done=abort")],
    )
    .await;
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, WAIT).await;
    let old = leaf(&schema, "2026_08");
    pg_exec(&format!(
        "{}
         {}
         ANALYZE {old};
         ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');",
        events_like(&old),
        insert_events(&old, 20_001, 30_000, "2026-08-01", 31)
    ))
    .await;
    // Killed after the first page range of the leaf reached ClickHouse.
    p.wait_exit(Duration::from_secs(60)).await;
    drop(c);
    pg_exec(&format!(
        "UPDATE {t} SET kind = 'while down' WHERE id % 6 = 0"
    ))
    .await;

    let (_p, mut c) = Proc::start_engine(dir.path(), &[]).await;
    wait_running(&mut c, &name, WAIT).await;
    wait_partitions(&mut c, &name, &t, std::slice::from_ref(&old)).await;
    assert_equal(&schema, "events").await;
    let dups: u64 = ch_one(&schema, "SELECT toUInt64(count() - uniqExact(id, at)) FROM events FINAL WHERE _pgpipe_is_deleted = 0").await;
    assert_eq!(dups, 0, "duplicates under FINAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_resync_rebuilds_a_partitioned_table_while_the_pipe_runs() {
    let schema = unique("ptrs");
    let t = make_events(&schema, 4_000).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, pipe) = start_pipe(pipe_req(&name, &schema, &[&t])).await;

    resync_tables(&mut c, &name, &[&t]).await;
    cdc_changes(&t).await;
    // The request left the table RESYNC_PENDING, so REPLICATING again is
    // its swap.
    let p = wait_pipe(&mut c, &name, "swapped", WAIT, |p| {
        assert_eq!(p.id, pipe.id, "a table resync keeps the incarnation");
        assert_eq!(p.status(), PipeStatus::Running, "{}", p.error);
        table_stats(p, &t).state() == TableState::Replicating && p.table_loads.is_empty()
    })
    .await;
    let swapped = history(&mut c, &name, None)
        .await
        .iter()
        .any(|e| matches!(e.payload, Some(event::Payload::TableSwapped(_))));
    assert!(swapped, "replicating again without a TableSwapped event");
    assert_eq!(source_details(&p, &t).partitions.len(), 3);
    assert_equal(&schema, "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn column_options_apply_to_a_partitioned_table() {
    let schema = unique("pcol");
    let t = make_events(&schema, 3_000).await;
    let mut req = pipe_req(&pipe_name(&schema), &schema, &[&t]);
    req.tables[0].exclude_columns = vec!["n".into()];
    req.tables[0]
        .rename_columns
        .insert("kind".into(), "category".into());
    let (_srv, _c, _) = start_pipe(req).await;
    cdc_changes(&t).await;

    assert_eq!(
        ch_columns(&schema, "events").await,
        ["id", "at", "category"]
    );
    // The renamed column holds the source's values, row by row.
    wait_equal_as(
        &schema,
        "events",
        &schema,
        "events",
        "id, toString(at) AS at, ifNull(kind, '~') AS kind",
        "id, toString(at) AS at, ifNull(category, '~') AS kind",
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unchanged_toast_values_of_an_attached_partition_are_read_from_the_source() {
    let schema = unique("ptst");
    let t = make_events(&schema, 300).await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&t])).await;

    // Attached with TOASTed values, then updated at once (before the pipe
    // found the partition): pgoutput sends the big value as "unchanged",
    // and ClickHouse has no row to take it from yet.
    let old = leaf(&schema, "2026_08");
    pg_exec(&format!(
        "{}
         INSERT INTO {old} SELECT g, DATE '2026-08-01' + (g % 31), \
           (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 200) i), g \
         FROM generate_series(50001, 50020) g;
         ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');
         UPDATE {t} SET n = -n WHERE id > 50000;",
        events_like(&old)
    ))
    .await;
    wait_partitions(&mut c, &name, &t, std::slice::from_ref(&old)).await;
    assert_equal(&schema, "events").await;
    assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_and_its_parent_are_not_both_in_a_pipe() {
    let schema = unique("povl");
    let t = make_events(&schema, 100).await;
    let leaf = leaf(&schema, "2026_10");
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let refused = |e: tonic::Status| {
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        for part in [
            format!("{leaf} is a partition of {t}"),
            "list only one of them".into(),
        ] {
            assert!(
                e.message().contains(&part),
                "{part:?} not in {}",
                e.message()
            );
        }
    };
    refused(
        c.create_pipe(pipe_req(&name, &schema, &[&t, &leaf]))
            .await
            .unwrap_err(),
    );
    // Nor added later.
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, WAIT).await;
    refused(
        c.update_pipe(add_tables_req(&name, vec![table(&leaf)]))
            .await
            .unwrap_err(),
    );
    let dry = c
        .update_pipe(UpdatePipeRequest {
            validate_only: true,
            ..add_tables_req(&name, vec![table(&leaf)])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.ok, "{dry:?}");
    assert!(
        dry.problems
            .iter()
            .any(|p| p.kind() == ProblemKind::TableNotReplicable && p.table == leaf),
        "{dry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncating_the_partitioned_table_empties_the_clickhouse_table() {
    let schema = unique("ptru");
    let t = make_events(&schema, 900).await;
    let (_srv, _c, _) = start_pipe(pipe_req(&pipe_name(&schema), &schema, &[&t])).await;
    pg_exec(&format!(
        "TRUNCATE {t}; {}",
        insert_events(&t, 5_001, 5_050, "2026-10-01", 30)
    ))
    .await;
    assert_equal(&schema, "events").await;
}
