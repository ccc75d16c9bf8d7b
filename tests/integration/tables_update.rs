//! Changing a running pipe's tables, against the real Postgres and
//! ClickHouse: UpdatePipe adds a table (its own initial load while CDC of the
//! others goes on) and removes one; ResyncPipe with a table list rebuilds
//! one table while the pipe stays RUNNING. Every case ends with the
//! row-by-row oracle under a write workload.

use std::time::Duration;

use crate::common::data::*;
use crate::common::wait::wait_pipe;
use crate::common::workload::{Shape, Target, Workload};
use crate::common::*;
use pgpipe::proto::*;
use tokio::time::Instant;

/// A schema with Items-shaped tables `names`, each with `rows` rows.
async fn make_tables(schema: &str, names: &[&str], rows: u64) {
    let pg = pg().await;
    pg.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    for n in names {
        Target::create(&pg, &format!("{schema}.{n}"), Shape::Items, rows).await;
    }
}

async fn engine(dir: &tempfile::TempDir, failpoints: &str) -> (Proc, Client) {
    Proc::start_with_failpoints(dir.path(), failpoints).await
}

async fn update(
    c: &mut Client,
    name: &str,
    add: &[&str],
    remove: &[&str],
) -> Result<Pipe, tonic::Status> {
    c.update_pipe(UpdatePipeRequest {
        name: name.into(),
        add_tables: add.iter().map(|t| table(t)).collect(),
        remove_tables: remove.iter().map(|t| (*t).to_owned()).collect(),
        validate_only: false,
    })
    .await
    .map(|r| r.into_inner().pipe.unwrap())
}

fn state_of(p: &Pipe, source_table: &str) -> Option<TableState> {
    p.tables
        .iter()
        .find(|t| t.source_table == source_table)
        .map(|t| t.state())
}

/// Waits until `source_table` is part of the pipe and replicating; the pipe
/// must stay RUNNING (and the same incarnation) throughout.
async fn wait_replicating(c: &mut Client, name: &str, id: &str, source_table: &str) -> Pipe {
    let what = format!("{source_table} replicating");
    wait_pipe(c, name, &what, Duration::from_secs(180), |p| {
        assert_eq!(p.id, id, "the pipe was replaced");
        assert_eq!(
            p.status(),
            PipeStatus::Running,
            "the pipe left RUNNING: {} ({})",
            p.error,
            p.failed_step
        );
        state_of(p, source_table) == Some(TableState::Replicating) && p.table_loads.is_empty()
    })
    .await
}

async fn assert_equal(schema: &str, table: &str) {
    wait_same(schema, table, Shape::Items.cols(), Duration::from_secs(120)).await;
    let dups: u64 = ch_one(schema, &format!(
            "SELECT toUInt64(count() - uniqExact(id)) FROM `{table}` FINAL WHERE _pgpipe_is_deleted = 0"
        )).await;
    assert_eq!(dups, 0, "duplicates in {schema}.{table} under FINAL");
}

async fn history_kinds(c: &mut Client, name: &str) -> Vec<String> {
    history(c, name, None)
        .await
        .iter()
        .map(|e| pgpipe::domain::projection::event_kind(e).to_owned())
        .collect()
}

async fn ch_count(schema: &str, table: &str) -> u64 {
    ch_one(
        schema,
        &format!("SELECT count() FROM `{table}` FINAL WHERE _pgpipe_is_deleted = 0"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_added_table_is_loaded_beside_cdc_and_ends_equal_under_writes() {
    let schema = unique("tadd");
    make_tables(&schema, &["a", "b"], 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(&dir, "").await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a]))
        .await
        .unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(120)).await;

    let workload = Workload::start(
        pg_url(),
        vec![
            Target::new(&a, Shape::Items, 20_000),
            Target::new(&b, Shape::Items, 20_000),
        ],
        seed_for("tadd"),
        Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changed = update(&mut c, &name, &[&b], &[]).await.unwrap();
    assert_eq!(changed.id, pipe.id, "adding a table keeps the incarnation");
    assert_eq!(state_of(&changed, &b), Some(TableState::LoadPending));
    let done = wait_replicating(&mut c, &name, &pipe.id, &b).await;
    // Writes go on after the load, through CDC alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = workload.stop().await;
    assert!(stats.committed > 50, "the workload wrote: {stats:?}");

    assert_equal(&schema, "a").await;
    assert_equal(&schema, "b").await;
    let t = done.tables.iter().find(|t| t.source_table == b).unwrap();
    assert!(t.snapshot_done && t.snapshot_partitions_total > 1, "{t:?}");
    assert!(
        done.config
            .unwrap()
            .tables
            .iter()
            .any(|t| t.source_table == b),
        "the config lists the added table"
    );
    let kinds = history_kinds(&mut c, &name).await;
    for k in ["tables_added", "table_load_started", "table_load_completed"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_table_stops_replicating_and_keeps_its_destination() {
    let schema = unique("trem");
    make_tables(&schema, &["a", "b"], 1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(&dir, "").await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a, &b]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;

    let p = update(&mut c, &name, &[], &[&b]).await.unwrap();
    assert!(p.tables.iter().all(|t| t.source_table != b));
    assert!(p.prepared.iter().all(|t| t.source_table != b));
    let pg = pg().await;
    pg.batch_execute(&format!(
        "{}; {}",
        Shape::Items.insert(&b, 1_001, 1_500),
        Shape::Items.insert(&a, 1_001, 1_500)
    ))
    .await
    .unwrap();
    // `a` still replicates...
    assert_equal(&schema, "a").await;
    // ...`b` does not, and its ClickHouse table is kept as it was.
    assert_eq!(ch_count(&schema, "b").await, 1_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut published = published_tables(&p.publication_name, Some("b")).await;
    while published != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        published = published_tables(&p.publication_name, Some("b")).await;
    }
    assert_eq!(published, 0, "the removed table left the publication");

    // Added again after rows were deleted at the source meanwhile: the
    // reload leaves none of them behind.
    pg.batch_execute(&format!("DELETE FROM {b} WHERE id % 4 = 0"))
        .await
        .unwrap();
    update(&mut c, &name, &[&b], &[]).await.unwrap();
    wait_replicating(&mut c, &name, &p.id, &b).await;
    assert_equal(&schema, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_after_adding_a_table_carries_the_new_table_list() {
    let schema = unique("tarl");
    make_tables(&schema, &["a", "b"], 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(&dir, "").await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a]))
        .await
        .unwrap();
    let first = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    update(&mut c, &name, &[&b], &[]).await.unwrap();
    wait_replicating(&mut c, &name, &first.id, &b).await;

    let new = resync(&mut c, &name).await.unwrap();
    let second = wait_running(&mut c, &name, Duration::from_secs(180)).await;
    assert_eq!(second.id, new.id, "another incarnation is running");
    let tables: Vec<String> = second
        .config
        .unwrap()
        .tables
        .iter()
        .map(|t| t.source_table.clone())
        .collect();
    assert_eq!(tables, vec![a.clone(), b.clone()]);
    pg_exec(&Shape::Items.insert(&b, 3_001, 3_200)).await;
    assert_equal(&schema, "a").await;
    assert_equal(&schema, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_resync_rebuilds_one_table_while_the_pipe_keeps_running() {
    let schema = unique("trsy");
    make_tables(&schema, &["a", "b"], 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (_p, mut c) = engine(&dir, "").await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a, &b]))
        .await
        .unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    // Damage `b` in ClickHouse (rows only a rebuild brings back).
    ch(&schema)
        .query("DELETE FROM `b` WHERE id % 3 = 0")
        .execute()
        .await
        .unwrap();
    assert!(ch_count(&schema, "b").await < 20_000);

    let workload = Workload::start(
        pg_url(),
        vec![
            Target::new(&a, Shape::Items, 20_000),
            Target::new(&b, Shape::Items, 20_000),
        ],
        seed_for("trsy"),
        Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = resync_tables(&mut c, &name, &[&b]).await;
    assert_eq!(asked.id, pipe.id, "a table resync keeps the incarnation");
    assert_eq!(state_of(&asked, &b), Some(TableState::ResyncPending));
    let done = wait_replicating(&mut c, &name, &pipe.id, &b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop().await;

    assert_equal(&schema, "a").await;
    assert_equal(&schema, "b").await;
    let leftovers: u64 = ch_one(&schema, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'b_resync'").await;
    assert_eq!(leftovers, 0, "the old data is dropped after the swap");
    assert!(
        done.tables
            .iter()
            .all(|t| t.state() == TableState::Replicating)
    );
    let kinds = history_kinds(&mut c, &name).await;
    for k in [
        "table_resync_requested",
        "table_load_started",
        "table_load_completed",
        "table_swapped",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    assert!(
        !kinds
            .iter()
            .any(|x| x == "pipe_deleted" || x == "swap_started"),
        "a table resync is not a pipe resync: {kinds:?}"
    );
}

/// kill -9 in the middle of an added table's load, then in the middle of a
/// table resync: each resumes after the restart and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_load_resumes_after_a_crash() {
    let schema = unique("tcrs");
    make_tables(&schema, &["a", "b"], 12_000).await;
    let dir = tempfile::tempdir().unwrap();
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    let (mut p, mut c) = engine(&dir, "").await;
    c.create_pipe(pipe_req(&name, &schema, &[&a]))
        .await
        .unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(120)).await;
    drop(c);
    p.kill9();

    for (failpoint, ask) in [
        ("table_load.partition_done", "add"),
        ("table_swap.after_exchange", "resync"),
    ] {
        let (mut p, mut c) = engine(&dir, &format!("{failpoint}=abort")).await;
        let workload = Workload::start(
            pg_url(),
            vec![
                Target::new(&a, Shape::Items, 12_000),
                Target::new(&b, Shape::Items, 12_000),
            ],
            seed_for(failpoint),
            Duration::from_millis(5),
        );
        if ask == "add" {
            update(&mut c, &name, &[&b], &[]).await.unwrap();
        } else {
            c.resync_pipe(ResyncPipeRequest {
                name: name.clone(),
                tables: vec![b.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while p.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{failpoint} was not reached");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(c);
        let (_p, mut c) = engine(&dir, "").await;
        wait_replicating(&mut c, &name, &pipe.id, &b).await;
        workload.stop().await;
        assert_equal(&schema, "a").await;
        assert_equal(&schema, "b").await;
        drop(_p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_changes_are_refused_with_what_to_fix() {
    let schema = unique("tbad");
    make_tables(&schema, &["a", "b"], 100).await;
    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let head = get(&mut c, &name).await.stream_version;

    // (what, add, remove, code, message part)
    type Case<'a> = (&'a str, Vec<String>, Vec<String>, tonic::Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            "nothing",
            vec![],
            vec![],
            tonic::Code::InvalidArgument,
            "nothing to change",
        ),
        (
            "add existing",
            vec![a.clone()],
            vec![],
            tonic::Code::InvalidArgument,
            "already part of this pipe",
        ),
        (
            "remove unknown",
            vec![],
            vec![b.clone()],
            tonic::Code::InvalidArgument,
            "not part of this pipe",
        ),
        (
            "remove all",
            vec![],
            vec![a.clone()],
            tonic::Code::InvalidArgument,
            "delete the pipe instead",
        ),
        (
            "add twice",
            vec![b.clone(), b.clone()],
            vec![],
            tonic::Code::InvalidArgument,
            "listed twice",
        ),
        (
            "missing source",
            vec![format!("{schema}.nope")],
            vec![],
            tonic::Code::FailedPrecondition,
            "nope",
        ),
    ];
    for (what, add, remove, code, text) in cases {
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        let remove: Vec<&str> = remove.iter().map(String::as_str).collect();
        let err = update(&mut c, &name, &add, &remove).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {}", err.message());
    }
    let err = update(&mut c, "no-such-pipe", &[&b], &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let err = c
        .resync_pipe(ResyncPipeRequest {
            name: name.clone(),
            tables: vec![b.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not part of this pipe"),
        "{}",
        err.message()
    );
    let err = c
        .resync_pipe(ResyncPipeRequest {
            name: name.clone(),
            tables: vec![a.clone()],
            overrides: vec![table(&a)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        get(&mut c, &name).await.stream_version,
        head,
        "refused changes record nothing"
    );
}

fn seed_for(what: &str) -> u64 {
    what.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_every_problem_and_changes_nothing() {
    let schema = unique("tdry");
    make_tables(&schema, &["a", "b"], 100).await;
    pg_exec(&format!(
        "CREATE TABLE {schema}.nokey (v text); INSERT INTO {schema}.nokey VALUES ('x');"
    ))
    .await;
    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let name = pipe_name(&schema);
    let (a, b) = (format!("{schema}.a"), format!("{schema}.b"));
    c.create_pipe(pipe_req(&name, &schema, &[&a]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(120)).await;
    let head = get(&mut c, &name).await.stream_version;
    let dry = |add: Vec<String>, remove: Vec<String>| UpdatePipeRequest {
        name: name.clone(),
        add_tables: add.iter().map(|t| table(t)).collect(),
        remove_tables: remove,
        validate_only: true,
    };

    let ok = c
        .update_pipe(dry(vec![b.clone()], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok && ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.pipe.unwrap().tables.len(), 1, "nothing was added");

    let bad = c
        .update_pipe(dry(
            vec![format!("{schema}.missing"), format!("{schema}.nokey")],
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.ok);
    let kinds: Vec<(ProblemKind, String)> = bad
        .problems
        .iter()
        .map(|p| (p.kind(), format!("{} {}", p.table, p.message)))
        .collect();
    let has = |kind: ProblemKind, table: &str| {
        kinds
            .iter()
            .any(|(k, text)| *k == kind && text.contains(table))
    };
    assert!(has(ProblemKind::TableMissing, "missing"), "{kinds:?}");
    assert!(has(ProblemKind::NoKey, "nokey"), "{kinds:?}");

    let refused = c
        .update_pipe(dry(vec![], vec![a.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.ok);
    assert!(
        refused.problems[0]
            .message
            .contains("delete the pipe instead"),
        "{:?}",
        refused.problems
    );
    assert_eq!(
        get(&mut c, &name).await.stream_version,
        head,
        "a dry run records nothing"
    );
}
