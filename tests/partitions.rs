//! Partitioned tables, against the real Postgres and ClickHouse: a
//! partitioned parent replicates into ONE ClickHouse table (its partitions'
//! changes are published through it), partitions created or attached while
//! the pipe runs are included, a detached one keeps its rows and is
//! reported; resync and adding to a running pipe work on it. Every case
//! ends with the row-by-row oracle.

mod common;

use std::time::Duration;

use common::data::*;
use common::*;
use pgpipe::proto::*;
use tokio::time::Instant;

/// Columns compared by the oracle (NULLs made comparable).
const COLS: &str =
    "id, toString(at) AS at, ifNull(kind, '~') AS kind, ifNull(toString(n), '~') AS n";

/// `{schema}.events`, range-partitioned by month (September to November
/// 2026), keyed by (id, at), with `rows` rows spread over the months.
async fn make_events(schema: &str, rows: u64) -> String {
    let t = format!("{schema}.events");
    let mut sql = format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {t} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at))
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
    pg().await.batch_execute(&sql).await.unwrap();
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

async fn assert_equal(schema: &str, source: &str, dest: &str) {
    wait_equal(schema, dest, schema, source, COLS, Duration::from_secs(120)).await;
}

/// Tables in the ClickHouse database.
async fn ch_tables(database: &str) -> Vec<String> {
    ch(database)
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(database)
        .fetch_all::<String>()
        .await
        .unwrap()
}

fn details(p: &Pipe, source_table: &str) -> SourceTableDetails {
    p.tables
        .iter()
        .find(|t| t.source_table == source_table)
        .and_then(|t| t.source_details.clone())
        .unwrap_or_default()
}

/// Waits until the pipe knows `leaves` among the table's partitions, none
/// loading (the pipe must stay RUNNING).
async fn wait_partitions(
    c: &mut Client,
    name: &str,
    source_table: &str,
    leaves: &[String],
) -> Pipe {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = get(c, name).await;
        assert_eq!(
            p.status(),
            PipeStatus::Running,
            "{} ({})",
            p.error,
            p.failed_step
        );
        let d = details(&p, source_table);
        if leaves.iter().all(|l| d.partitions.contains(l)) && d.partitions_loading.is_empty() {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not loaded in time: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn history(c: &mut Client, name: &str) -> Vec<Event> {
    c.get_pipe_history(GetPipeHistoryRequest {
        name: name.into(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

/// Inserts, updates that move rows to another partition (the partition key
/// is part of the key), updates in place and deletes.
async fn cdc_changes(t: &str) {
    pg().await
        .batch_execute(&format!(
            "{}
             UPDATE {t} SET at = at + 31, kind = 'moved' WHERE id % 7 = 0 AND at < '2026-10-25';
             UPDATE {t} SET n = -n WHERE id % 3 = 0;
             DELETE FROM {t} WHERE id % 11 = 0;
             BEGIN; UPDATE {t} SET at = '2026-09-15' WHERE id = 100 AND at >= '2026-10-01'; \
                    INSERT INTO {t} VALUES (1000000, '2026-11-30', 'late', 1); COMMIT;",
            insert_events(t, 7_001, 8_000, "2026-10-01", 60)
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_table_replicates_into_one_table_through_snapshot_and_cdc() {
    let schema = unique("part");
    let t = make_events(&schema, 7_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    let p = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_equal(&schema, "events", "events").await;
    // One destination table, the leaves copied in CTID ranges (2000 rows
    // each in pipe_req): more ranges than leaves.
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
    let stats = p.tables.iter().find(|s| s.source_table == t).unwrap();
    assert_eq!(stats.snapshot_rows, 7_000, "{stats:?}");
    assert!(stats.snapshot_partitions_total > 3, "{stats:?}");
    let leaves: Vec<String> = ["09", "10", "11"]
        .iter()
        .map(|m| format!("{schema}.events_2026_{m}"))
        .collect();
    assert_eq!(details(&p, &t).partitions, leaves);

    cdc_changes(&t).await;
    assert_equal(&schema, "events", "events").await;
    assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_created_or_attached_while_the_pipe_runs_are_replicated() {
    let schema = unique("patt");
    let t = make_events(&schema, 3_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;

    // A new partition: its rows arrive through the root.
    let pg = pg().await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.events_2026_12 PARTITION OF {t} \
           FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
         {}",
        insert_events(&t, 10_001, 11_000, "2026-12-01", 31)
    ))
    .await
    .unwrap();
    // A table with rows of its own, attached: those rows are in no WAL the
    // pipe decodes, and must be loaded.
    let old = format!("{schema}.events_2026_08");
    pg.batch_execute(&format!(
        "CREATE TABLE {old} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at));
         {}
         ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');",
        insert_events(&old, 20_001, 24_000, "2026-08-01", 31)
    ))
    .await
    .unwrap();
    // Changes go on meanwhile, in the attached partition too.
    pg.batch_execute(&format!(
        "UPDATE {t} SET kind = 'after attach' WHERE id % 10 = 1;
         DELETE FROM {t} WHERE id % 17 = 0;
         UPDATE {t} SET at = at + 31 WHERE id BETWEEN 20001 AND 20100;"
    ))
    .await
    .unwrap();
    assert_equal(&schema, "events", "events").await;
    let new = format!("{schema}.events_2026_12");
    let p = wait_partitions(&mut c, &name, &t, &[new, old.clone()]).await;
    assert_eq!(details(&p, &t).partitions.len(), 5, "{:?}", details(&p, &t));
    let attached = history(&mut c, &name).await.into_iter().any(|e| {
        matches!(&e.payload, Some(event::Payload::PartitionsChanged(p)) if p.attached.contains(&old))
    });
    assert!(
        attached,
        "no PartitionsChanged recorded the attached partition"
    );
    pg.batch_execute(&format!("UPDATE {old} SET n = 0 WHERE id % 2 = 0"))
        .await
        .unwrap();
    assert_equal(&schema, "events", "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detached_partition_keeps_its_rows_and_is_reported() {
    let schema = unique("pdet");
    let t = make_events(&schema, 900).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    assert_equal(&schema, "events", "events").await;

    let gone = format!("{schema}.events_2026_09");
    pg().await
        .batch_execute(&format!("ALTER TABLE {t} DETACH PARTITION {gone}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let p = loop {
        let p = get(&mut c, &name).await;
        if details(&p, &t).partitions_detached.contains(&gone) {
            break p;
        }
        assert!(Instant::now() < deadline, "detach not reported: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p.status(), PipeStatus::Running);
    assert!(!details(&p, &t).partitions.contains(&gone));
    // Its 300 rows stay in ClickHouse (Postgres sends no deletes).
    let live: u64 = ch(&schema)
        .query("SELECT count() FROM events FINAL WHERE _pgpipe_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(live, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipe_with_a_partitioned_table_resyncs() {
    let schema = unique("pres");
    let t = make_events(&schema, 5_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    cdc_changes(&t).await;
    assert_equal(&schema, "events", "events").await;

    let p = resync_and_wait(&mut c, &name, Duration::from_secs(120)).await;
    assert_eq!(details(&p, &t).partitions.len(), 3);
    assert_equal(&schema, "events", "events").await;
    pg().await
        .batch_execute(&format!(
            "UPDATE {t} SET kind = 'after resync' WHERE id % 4 = 0; DELETE FROM {t} WHERE id % 9 = 0;"
        ))
        .await
        .unwrap();
    assert_equal(&schema, "events", "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_table_added_to_a_running_pipe_is_loaded_beside_cdc() {
    let schema = unique("padd");
    let t = make_events(&schema, 5_000).await;
    let other = format!("{schema}.other");
    pg().await
        .batch_execute(&format!(
            "CREATE TABLE {other} (id bigint PRIMARY KEY, at date NOT NULL, kind text, n int);
             {}",
            insert_events(&other, 1, 100, "2026-01-01", 10)
        ))
        .await
        .unwrap();
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    let pipe = c
        .create_pipe(pipe_req(&name, &schema, &[&other]))
        .await
        .unwrap()
        .into_inner()
        .pipe
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;

    c.update_pipe(UpdatePipeRequest {
        name: name.clone(),
        add_tables: vec![table(&t)],
        ..Default::default()
    })
    .await
    .unwrap();
    cdc_changes(&t).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = get(&mut c, &name).await;
        assert_eq!(p.id, pipe.id);
        assert_eq!(p.status(), PipeStatus::Running, "{}", p.error);
        let loaded = p.tables.iter().any(|s| {
            s.source_table == t && s.state() == TableState::Replicating && s.snapshot_done
        });
        if loaded && p.table_loads.is_empty() {
            assert_eq!(details(&p, &t).partitions.len(), 3);
            break;
        }
        assert!(Instant::now() < deadline, "not loaded in time: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_equal(&schema, "events", "events").await;
    assert_equal(&schema, "other", "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_without_a_primary_key_is_refused() {
    let schema = unique("pnok");
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.logs (at date NOT NULL, line text) PARTITION BY RANGE (at);"
        ))
        .await
        .unwrap();
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let req = pipe_req(
        &schema.replace('_', "-"),
        &schema,
        &[&format!("{schema}.logs")],
    );
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

/// Waits for the process to end by itself (the fail-point fired).
async fn wait_exit(p: &mut Proc) {
    for _ in 0..600 {
        if p.child.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fail-point never fired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_while_an_attached_partition_loads_resumes_the_load() {
    let schema = unique("pcra");
    let t = make_events(&schema, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = schema.replace('_', "-");
    let mut p = Proc::spawn_engine(
        dir.path(),
        &[("PGPIPE_FAILPOINTS", "partition_load.partition_done=abort")],
    );
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let old = format!("{schema}.events_2026_08");
    pg().await
        .batch_execute(&format!(
            "CREATE TABLE {old} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at));
             {}
             ANALYZE {old};
             ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');",
            insert_events(&old, 20_001, 30_000, "2026-08-01", 31)
        ))
        .await
        .unwrap();
    // Killed after the first page range of the leaf reached ClickHouse.
    wait_exit(&mut p).await;
    drop(c);
    pg().await
        .batch_execute(&format!(
            "UPDATE {t} SET kind = 'while down' WHERE id % 6 = 0"
        ))
        .await
        .unwrap();

    let p = Proc::spawn_engine(dir.path(), &[]);
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    wait_partitions(&mut c, &name, &t, std::slice::from_ref(&old)).await;
    assert_equal(&schema, "events", "events").await;
    let dups: u64 = ch(&schema)
        .query("SELECT toUInt64(count() - uniqExact(id, at)) FROM events FINAL WHERE _pgpipe_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dups, 0, "duplicates under FINAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_resync_rebuilds_a_partitioned_table_while_the_pipe_runs() {
    let schema = unique("ptrs");
    let t = make_events(&schema, 4_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(120)).await;

    c.resync_pipe(ResyncPipeRequest {
        name: name.clone(),
        tables: vec![t.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    cdc_changes(&t).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = get(&mut c, &name).await;
        assert_eq!(p.id, pipe.id, "a table resync keeps the incarnation");
        assert_eq!(p.status(), PipeStatus::Running, "{}", p.error);
        let swapped = history(&mut c, &name)
            .await
            .iter()
            .any(|e| matches!(e.payload, Some(event::Payload::TableSwapped(_))));
        if swapped && p.table_loads.is_empty() {
            assert_eq!(details(&p, &t).partitions.len(), 3);
            break;
        }
        assert!(Instant::now() < deadline, "not swapped in time: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_equal(&schema, "events", "events").await;
    assert_eq!(ch_tables(&schema).await, vec!["events".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn column_options_apply_to_a_partitioned_table() {
    let schema = unique("pcol");
    let t = make_events(&schema, 3_000).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    let mut req = pipe_req(&name, &schema, &[&t]);
    req.tables[0].exclude_columns = vec!["n".into()];
    req.tables[0]
        .rename_columns
        .insert("kind".into(), "category".into());
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    cdc_changes(&t).await;

    let cols: Vec<String> = ch(&schema)
        .query("SELECT name FROM system.columns WHERE database = ? AND table = 'events' AND name NOT LIKE '\\_pgpipe\\_%' ORDER BY position")
        .bind(&schema)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(cols, ["id", "at", "category"]);
    // The renamed column holds the source's values, row by row.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = try_diff_as(
            &schema,
            "events",
            &schema,
            "events",
            "id, toString(at) AS at, ifNull(kind, '~') AS kind",
            "id, toString(at) AS at, ifNull(category, '~') AS kind",
        )
        .await;
        if matches!(d, Ok(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "still differ: {d:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unchanged_toast_values_of_an_attached_partition_are_read_from_the_source() {
    let schema = unique("ptst");
    let t = make_events(&schema, 300).await;
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;

    // Attached with TOASTed values, then updated at once (before the pipe
    // found the partition): pgoutput sends the big value as "unchanged",
    // and ClickHouse has no row to take it from yet.
    let old = format!("{schema}.events_2026_08");
    pg().await
        .batch_execute(&format!(
            "CREATE TABLE {old} (id bigint, at date NOT NULL, kind text, n int, PRIMARY KEY (id, at));
             INSERT INTO {old} SELECT g, DATE '2026-08-01' + (g % 31), \
               (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 200) i), g \
             FROM generate_series(50001, 50020) g;
             ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');
             UPDATE {t} SET n = -n WHERE id > 50000;"
        ))
        .await
        .unwrap();
    wait_partitions(&mut c, &name, &t, std::slice::from_ref(&old)).await;
    assert_equal(&schema, "events", "events").await;
    assert_eq!(get(&mut c, &name).await.status(), PipeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_and_its_parent_are_not_both_in_a_pipe() {
    let schema = unique("povl");
    let t = make_events(&schema, 100).await;
    let leaf = format!("{schema}.events_2026_10");
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
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
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    refused(
        c.update_pipe(UpdatePipeRequest {
            name: name.clone(),
            add_tables: vec![table(&leaf)],
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    let dry = c
        .update_pipe(UpdatePipeRequest {
            name: name.clone(),
            add_tables: vec![table(&leaf)],
            validate_only: true,
            ..Default::default()
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
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&t]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    pg().await
        .batch_execute(&format!(
            "TRUNCATE {t}; {}",
            insert_events(&t, 5_001, 5_050, "2026-10-01", 30)
        ))
        .await
        .unwrap();
    assert_equal(&schema, "events", "events").await;
}
