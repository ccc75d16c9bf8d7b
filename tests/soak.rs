//! Soak: five pipes under continuous writes, one resync about every minute,
//! for `PGPIPE_SOAK_SECS` (default 600). The service's resident memory is
//! sampled after the initial loads, every 30 s and at the end; it must stay
//! flat, and at the end every table is equal row by row.
//!
//! Ignored by default (it takes minutes); dev/test runs it explicitly:
//! `cargo test --test soak -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::data::*;
use common::workload::*;
use common::*;
use pgpipe::proto::*;

const PIPES: usize = 5;
const ROWS: u64 = 10_000;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
const RESYNC_EVERY: Duration = Duration::from_secs(60);
/// Slack over the start figure: allocator arenas, sled's page cache and
/// per-connection buffers settle in the first minutes; a leak proportional
/// to the rows or events moved grows well past this over ten minutes.
const GROWTH_FACTOR: f64 = 1.5;
const GROWTH_SLACK_KB: u64 = 32 * 1024;

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes PGPIPE_SOAK_SECS (default 10 minutes); dev/test runs it"]
async fn five_pipes_under_writes_and_resyncs_keep_memory_flat_and_data_equal() {
    let secs: u64 = std::env::var("PGPIPE_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("PGPIPE_SOAK_SECS"))
        .unwrap_or(600);
    let seed = seed_from_env("PGPIPE_SOAK_SEED");
    println!("soak: PGPIPE_SOAK_SECS={secs} PGPIPE_SOAK_SEED={seed}");
    let schema = unique("soak");
    let db = pg().await;
    db.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let mut tables = Vec::new();
    let mut targets = Vec::new();
    for i in 0..PIPES {
        let shape = if i % 2 == 0 {
            Shape::Items
        } else {
            Shape::Pairs
        };
        let table = format!("t{i}");
        let q = format!("{schema}.{table}");
        targets.push(Target::create(&db, &q, shape, ROWS).await);
        tables.push((format!("{}-{i}", pipe_name(&schema)), table, shape));
    }

    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn_engine(dir.path(), &[]);
    let pid = p.child.id();
    wait_serving(&p.url()).await;
    let mut c = connect(&p.url()).await;
    for (name, table, _) in &tables {
        c.create_pipe(pipe_req(name, &schema, &[&format!("{schema}.{table}")]))
            .await
            .unwrap();
    }
    for (name, _, _) in &tables {
        wait_running(&mut c, name, Duration::from_secs(300)).await;
    }

    let started = Instant::now();
    let mut samples = vec![(0u64, rss_kb(pid))];
    println!(
        "soak: t=0s RSS {:.1} MB (after the initial loads)",
        mb(samples[0].1)
    );
    let workload = Workload::start(pg_url(), targets, seed, Duration::from_millis(20));
    let end = started + Duration::from_secs(secs);
    let mut next_sample = started + SAMPLE_EVERY;
    let mut next_resync = started + RESYNC_EVERY;
    let mut resyncs = 0usize;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_resync {
            let (name, _, _) = &tables[resyncs % PIPES];
            match c
                .resync_pipe(ResyncPipeRequest {
                    name: name.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => println!("soak: t={}s resync of {name}", started.elapsed().as_secs()),
                Err(e) => println!("soak: resync of {name} refused: {}", e.message()),
            }
            resyncs += 1;
            next_resync += RESYNC_EVERY;
        }
        if now >= next_sample {
            let t = started.elapsed().as_secs();
            let kb = rss_kb(pid);
            println!("soak: t={t}s RSS {:.1} MB", mb(kb));
            samples.push((t, kb));
            next_sample += SAMPLE_EVERY;
        }
        // A pipe that failed for good ends the soak early.
        for (name, _, _) in &tables {
            let p = get(&mut c, name).await;
            assert_ne!(p.status(), PipeStatus::Failed, "{name}: {}", p.error);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = workload.stop().await;
    println!("soak: workload {stats:?}, {resyncs} resyncs");

    for (name, _, _) in &tables {
        wait_running(&mut c, name, Duration::from_secs(300)).await;
    }
    for (_, table, shape) in &tables {
        wait_same(&schema, table, shape.cols(), Duration::from_secs(180)).await;
        let dups = ch_duplicates(&schema, table, shape.key()).await;
        assert_eq!(dups, 0, "{table}: duplicates under FINAL");
    }
    let t = started.elapsed().as_secs();
    let last = rss_kb(pid);
    samples.push((t, last));
    let first = samples[0].1;
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(last);
    println!(
        "soak: RSS samples (s, MB): {}",
        samples
            .iter()
            .map(|(t, kb)| format!("({t}, {:.1})", mb(*kb)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "soak: RSS start {:.1} MB, end {:.1} MB, peak {:.1} MB; cores {}",
        mb(first),
        mb(last),
        mb(peak),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // After warm-up (sled's cache, allocator arenas and connection buffers
    // filling): the rise and the least-squares slope, what bench/soak
    // reports and checks.
    let warm_up: u64 = std::env::var("PGPIPE_SOAK_WARMUP_SECS")
        .ok()
        .map(|s| s.parse().expect("PGPIPE_SOAK_WARMUP_SECS"))
        .unwrap_or(secs / 5);
    let warm: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= warm_up)
        .map(|(t, kb)| (*t as f64 / 60.0, mb(*kb)))
        .collect();
    let slope = slope_per_minute(&warm);
    let rise = match (warm.first(), warm.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0.0,
    };
    println!(
        "soak: after warm-up ({warm_up} s): rise {rise:.1} MB over {:.1} min, slope {slope:.3} MB/min",
        warm.last().map_or(0.0, |l| l.0) - warm.first().map_or(0.0, |f| f.0)
    );
    if let Ok(max) = std::env::var("PGPIPE_SOAK_MAX_SLOPE") {
        let max: f64 = max.parse().expect("PGPIPE_SOAK_MAX_SLOPE (MB/min)");
        assert!(
            slope < max,
            "RSS slope after warm-up {slope:.3} MB/min, goal < {max} MB/min"
        );
    }
    let bound = (first as f64 * GROWTH_FACTOR) as u64 + GROWTH_SLACK_KB;
    assert!(
        last <= bound,
        "memory grew: start {:.1} MB, end {:.1} MB (bound {:.1} MB)",
        mb(first),
        mb(last),
        mb(bound)
    );
}

/// Least-squares slope of (minutes, MB) points, in MB a minute.
fn slope_per_minute(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}
