//! kill -9 at random moments under a continuous write workload: the service
//! (a real process) is killed over and over while two pipes load their
//! snapshot, stream changes and go through resyncs, and restarted on the
//! same data directory each time. At the end Postgres and ClickHouse hold
//! the same rows and the event log replays into a sane lifecycle.
//!
//! `PGPIPE_CHAOS_SEED` replays a run (the seed is printed);
//! `PGPIPE_CHAOS_KILLS` sets the number of kills (default 24).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::data::*;
use common::workload::*;
use common::*;
use pgpipe::domain::projection::{Projection, event_kind};
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;

const DEFAULT_KILLS: usize = 24;

/// Where a kill is aimed; the pipes' state at the moment is printed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Both pipes setting up and loading their snapshot.
    Snapshot,
    /// Both pipes streaming changes.
    Cdc,
    /// One pipe resyncing (setup, load, swap) while the other streams.
    Resync,
}

struct Fixture {
    schema: String,
    /// (pipe name, its source tables)
    pipes: Vec<(String, Vec<(String, Shape)>)>,
}

impl Fixture {
    fn tables(&self) -> impl Iterator<Item = &(String, Shape)> {
        self.pipes.iter().flat_map(|(_, t)| t)
    }
}

async fn make_fixture(rows: u64) -> (Fixture, Vec<Target>) {
    let schema = unique("chaos");
    let base = pipe_name(&schema);
    let fx = Fixture {
        pipes: vec![
            (
                format!("{base}-a"),
                vec![
                    ("items_a".to_owned(), Shape::Items),
                    ("pairs_a".to_owned(), Shape::Pairs),
                ],
            ),
            (
                format!("{base}-b"),
                vec![("items_b".to_owned(), Shape::Items)],
            ),
        ],
        schema,
    };
    let db = pg().await;
    db.batch_execute(&format!("CREATE SCHEMA {}", fx.schema))
        .await
        .unwrap();
    let mut targets = Vec::new();
    for (table, shape) in fx.tables() {
        let q = format!("{}.{table}", fx.schema);
        targets.push(Target::create(&db, &q, *shape, rows).await);
    }
    (fx, targets)
}

async fn create_pipes(c: &mut Client, fx: &Fixture) {
    for (name, tables) in &fx.pipes {
        let names: Vec<String> = tables
            .iter()
            .map(|(t, _)| format!("{}.{t}", fx.schema))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        c.create_pipe(pipe_req(name, &fx.schema, &names))
            .await
            .unwrap();
    }
}

/// "name: STATUS (resync, step)" for each pipe, for the kill log, and what
/// the pipes were doing.
async fn describe(c: &mut Client, fx: &Fixture) -> (String, HashSet<&'static str>) {
    let mut out = Vec::new();
    let mut doing = HashSet::new();
    for (name, _) in &fx.pipes {
        let p = get(c, name).await;
        doing.insert(activity(&p));
        let step = p
            .steps
            .last()
            .filter(|s| s.finished_at.is_none())
            .map(|s| s.step.clone())
            .unwrap_or_default();
        out.push(format!(
            "{}: {:?}{}{}",
            name.rsplit('-').next().unwrap_or(name),
            p.status(),
            if p.resync_of.is_empty() {
                ""
            } else {
                " (resync)"
            },
            if step.is_empty() {
                String::new()
            } else {
                format!(" [{step}]")
            }
        ));
    }
    (out.join(", "), doing)
}

fn resyncing(p: &Pipe) -> bool {
    !p.resync_of.is_empty() && p.status() != PipeStatus::Running
}

/// Waits (at most `timeout`) until `pred` holds for pipe `name`; goes on
/// without it (the kill only aims at that state).
async fn wait_for(c: &mut Client, name: &str, timeout: Duration, pred: impl Fn(&Pipe) -> bool) {
    if let Err(why) = common::wait::try_wait_pipe(c, name, "aimed at", timeout, pred).await {
        println!("chaos: {why}");
    }
}

/// Fail-points of the service during a phase: slower snapshot partitions
/// and (in the resync phase) a swap window held open, so that random kills
/// land in those steps and not only in CDC.
fn failpoints(phase: Phase) -> Vec<(&'static str, &'static str)> {
    match phase {
        // A load of 15 partitions per table takes 5 s or more: longer than
        // the wait before a kill, however fast the copy itself is.
        Phase::Snapshot => vec![("PGPIPE_FAILPOINTS", "snapshot.partition_done=sleep(1000)")],
        Phase::Cdc => vec![],
        Phase::Resync => vec![(
            "PGPIPE_FAILPOINTS",
            "snapshot.partition_done=sleep(100);swap.before_exchange=sleep(1500)",
        )],
    }
}

/// What each pipe was doing at a kill: "load" (first setup or snapshot),
/// "cdc", or "resync" (a resync's setup, load or swap).
fn activity(p: &Pipe) -> &'static str {
    match p.status() {
        PipeStatus::Running => "cdc",
        _ if !p.resync_of.is_empty() => "resync",
        PipeStatus::Setup | PipeStatus::Snapshot => "load",
        _ => "other",
    }
}

fn spawn(dir: &std::path::Path, phase: Phase) -> Proc {
    Proc::spawn_engine(dir, &failpoints(phase))
}

/// Everything the log holds, from cursor 0 to the head.
/// The log tells a sane story: gap-free sequences, contiguous stream
/// versions, and per incarnation a created-first lifecycle whose milestones
/// come at most once, in order, with nothing but the release after deletion.
fn assert_sane_lifecycle(events: &[Event], head: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "seqs are not 1..={head}"
    );
    let mut versions: HashMap<&str, u64> = HashMap::new();
    // per incarnation: kinds seen so far
    let mut seen: HashMap<&str, Vec<&'static str>> = HashMap::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut deleted_for_resync: HashSet<&str> = HashSet::new();
    let milestones = [
        "pipe_created",
        "setup_completed",
        "tables_prepared",
        "snapshot_completed",
        "tables_swapped",
        "cdc_started",
        "pipe_deleted",
        "source_released",
    ];
    for e in events {
        let v = versions.entry(&e.pipe_name).or_insert(0);
        assert_eq!(
            e.stream_version,
            *v + 1,
            "stream {} jumps at seq {}",
            e.pipe_name,
            e.seq
        );
        *v = e.stream_version;
        let kind = event_kind(e);
        let id = e.pipe_id.as_str();
        let history = seen.entry(id).or_default();
        let ctx = || format!("seq {} {kind} of {id} after {history:?}", e.seq);
        if let Some(Payload::PipeCreated(c)) = &e.payload {
            assert!(history.is_empty(), "created twice: {}", ctx());
            names.insert(id, &e.pipe_name);
            assert_eq!(c.name, e.pipe_name);
            if !c.resync_of.is_empty() {
                assert!(
                    deleted_for_resync.contains(c.resync_of.as_str()),
                    "a resync incarnation before its predecessor was deleted for the resync: {}",
                    ctx()
                );
            }
        } else {
            assert!(
                !history.is_empty(),
                "an event before PipeCreated: {}",
                ctx()
            );
            assert_eq!(names[id], e.pipe_name, "changed stream: {}", ctx());
        }
        if history.contains(&"pipe_deleted") {
            assert_eq!(
                kind,
                "source_released",
                "an event after deletion: {}",
                ctx()
            );
        }
        if let Some(rank) = milestones.iter().position(|m| *m == kind) {
            assert!(!history.contains(&kind), "repeated milestone: {}", ctx());
            let later = milestones[rank + 1..].iter().find(|m| history.contains(m));
            assert!(later.is_none(), "out of order (after {later:?}): {}", ctx());
        }
        match kind {
            "cdc_progress" => assert!(history.contains(&"cdc_started"), "{}", ctx()),
            "snapshot_progress" | "snapshot_table_completed" => assert!(
                history.contains(&"snapshot_started") && !history.contains(&"snapshot_completed"),
                "{}",
                ctx()
            ),
            "snapshot_started" => assert!(history.contains(&"tables_prepared"), "{}", ctx()),
            "swap_started" | "tables_swapped" => {
                assert!(history.contains(&"snapshot_completed"), "{}", ctx())
            }
            "cdc_started" => assert!(history.contains(&"snapshot_completed"), "{}", ctx()),
            _ => {}
        }
        if let Some(Payload::PipeDeleted(d)) = &e.payload
            && d.reason() == DeleteReason::Resync
        {
            assert!(
                history.contains(&"resync_started"),
                "deleted for a resync without ResyncStarted: {}",
                ctx()
            );
            deleted_for_resync.insert(id);
        }
        history.push(kind);
    }
}

/// After a kill -9, a control-plane-only start (nothing appends) replays the
/// log: its story is sane and GetPipe/ListPipes equal a fold of WatchEvents.
async fn assert_log_replays(dir: &std::path::Path, fx: &Fixture) {
    let p = Proc::spawn(dir, &[]);
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    let (events, head) = all_events(&mut c).await;
    assert_sane_lifecycle(&events, head);
    let mut folded = Projection::default();
    for e in &events {
        folded.apply(e);
    }
    let listed = list_all(&mut c).await;
    assert_eq!(
        listed,
        folded.list(true, &Default::default()),
        "ListPipes differs from the fold"
    );
    for old in folded.all() {
        let by_id = get_id(&mut c, &old.id).await;
        assert_eq!(&by_id, old, "GetPipe by id differs from the fold");
    }
    for (name, _) in &fx.pipes {
        let now = get(&mut c, name).await;
        assert_eq!(now.status(), PipeStatus::Running, "{name}: {now:?}");
    }
    let incarnations = folded.all().count();
    let resyncs = folded.all().filter(|p| !p.resync_of.is_empty()).count();
    println!(
        "chaos: event log of {head} events replays sanely: {incarnations} incarnations, {resyncs} of them resyncs"
    );
    assert!(resyncs >= 1, "no resync happened");
}

async fn assert_equal_everywhere(fx: &Fixture) {
    for (table, shape) in fx.tables() {
        wait_same(&fx.schema, table, shape.cols(), Duration::from_secs(120)).await;
        let dups = ch_duplicates(&fx.schema, table, shape.key()).await;
        assert_eq!(dups, 0, "{table}: duplicates under FINAL");
    }
    let leftovers: Vec<String> = ch(&fx.schema)
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE '%\\_resync'")
        .fetch_all()
        .await
        .unwrap();
    assert!(leftovers.is_empty(), "scratch tables left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_write_load_lose_and_double_nothing() {
    let seed = seed_from_env("PGPIPE_CHAOS_SEED");
    let kills: usize = std::env::var("PGPIPE_CHAOS_KILLS")
        .ok()
        .map(|s| s.parse().expect("PGPIPE_CHAOS_KILLS"))
        .unwrap_or(DEFAULT_KILLS);
    println!("chaos: PGPIPE_CHAOS_SEED={seed} PGPIPE_CHAOS_KILLS={kills}");
    let started = Instant::now();
    let mut rng = Rng::new(seed);

    let (fx, targets) = make_fixture(30_000).await;
    let dir = tempfile::tempdir().unwrap();
    let workload = Workload::start(pg_url(), targets, rng.next_u64(), Duration::from_millis(20));

    let plan: Vec<Phase> = (0..kills)
        .map(|i| match i * 3 / kills.max(1) {
            0 => Phase::Snapshot,
            1 => Phase::Cdc,
            _ => Phase::Resync,
        })
        .collect();
    let mut p = spawn(dir.path(), plan.first().copied().unwrap_or(Phase::Cdc));
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    create_pipes(&mut c, &fx).await;
    let mut resync_next = 0usize;
    // Kills that caught at least one pipe in each activity.
    let mut kills_during: HashMap<&'static str, usize> = HashMap::new();
    for (i, phase) in plan.iter().copied().enumerate() {
        if i > 0 && plan[i - 1] != phase {
            // Entering CDC or the resyncs: both pipes must be streaming.
            for (name, _) in &fx.pipes {
                wait_running(&mut c, name, Duration::from_secs(180)).await;
            }
        }
        match phase {
            Phase::Snapshot => {
                tokio::time::sleep(Duration::from_millis(rng.range(300, 3000))).await
            }
            Phase::Cdc => tokio::time::sleep(Duration::from_millis(rng.range(200, 3000))).await,
            Phase::Resync => {
                let mut active = None;
                for (name, _) in &fx.pipes {
                    if resyncing(&get(&mut c, name).await) {
                        active = Some(name.clone());
                    }
                }
                let name = match active {
                    Some(n) => n,
                    None => {
                        let (name, _) = &fx.pipes[resync_next % fx.pipes.len()];
                        resync_next += 1;
                        match c
                            .resync_pipe(ResyncPipeRequest {
                                name: name.clone(),
                                ..Default::default()
                            })
                            .await
                        {
                            Ok(_) => println!("chaos: resync of {name} requested"),
                            Err(e) => println!("chaos: resync of {name} refused: {e:?}"),
                        }
                        name.clone()
                    }
                };
                // Aim at the start, the load or the swap of the resync.
                match rng.range(0, 3) {
                    0 => {}
                    1 => {
                        wait_for(&mut c, &name, Duration::from_secs(30), |p| {
                            p.status() == PipeStatus::Snapshot || !resyncing(p)
                        })
                        .await
                    }
                    _ => {
                        wait_for(&mut c, &name, Duration::from_secs(60), |p| {
                            p.status() == PipeStatus::Resync || !resyncing(p)
                        })
                        .await
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.range(50, 3000))).await;
            }
        }
        let (state, doing) = describe(&mut c, &fx).await;
        for d in doing {
            *kills_during.entry(d).or_default() += 1;
        }
        println!(
            "chaos: kill {}/{kills} ({phase:?}) at {:.1}s: {state}",
            i + 1,
            started.elapsed().as_secs_f64()
        );
        drop(c);
        p.kill9();
        let next = plan.get(i + 1).copied().unwrap_or(Phase::Cdc);
        p = spawn(dir.path(), next);
        wait_serving(&p.url()).await;
        c = connect(&p.url()).await;
    }
    println!("chaos: kills while a pipe was in each activity: {kills_during:?}");
    for activity in ["load", "cdc", "resync"] {
        assert!(
            kills_during.get(activity).copied().unwrap_or(0) >= (kills / 12).max(1),
            "too few kills during {activity}: {kills_during:?}"
        );
    }

    // Writes stop; the last restart must catch up with all of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = workload.stop().await;
    println!("chaos: workload {stats:?}");
    assert!(stats.committed > 100, "the workload barely ran: {stats:?}");
    for (name, _) in &fx.pipes {
        wait_running(&mut c, name, Duration::from_secs(180)).await;
    }
    assert_equal_everywhere(&fx).await;
    drop(c);
    p.kill9();
    assert_log_replays(dir.path(), &fx).await;
    println!(
        "chaos: seed {seed}, {kills} kills, passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
