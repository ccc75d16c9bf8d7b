//! GetPipeHistory: a pipe name's past from the event log, by kind, a page at
//! a time.

use std::time::Duration;

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;
use tonic::Code;

fn req(name: &str, kind: HistoryKind, page_size: u32, page_token: &str) -> GetPipeHistoryRequest {
    GetPipeHistoryRequest {
        name: name.into(),
        kind: kind as i32,
        page_size,
        page_token: page_token.into(),
    }
}

/// Every page of `kind` for `name`, and the number of pages.
async fn all_pages(
    c: &mut Client,
    name: &str,
    kind: HistoryKind,
    size: u32,
) -> (Vec<Event>, usize) {
    let mut out = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .get_pipe_history(req(name, kind, size, &token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(
            r.events.len() <= size as usize,
            "a page holds at most page_size"
        );
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return (out, pages);
        }
        token = r.next_page_token;
    }
}

/// The stream's events as WatchEvents replays them (the reference).
async fn watched(c: &mut Client, name: &str) -> Vec<Event> {
    let mut s = c
        .watch_events(WatchEventsRequest {
            after_cursor: Some(0),
            pipe_name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        match m.item {
            Some(watch_events_response::Item::Event(e)) => out.push(e),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn pages_cover_every_event_once_in_order() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("hist")).await.unwrap();
    c.create_pipe(create_req("other")).await.unwrap();
    for _ in 0..5 {
        let name = "hist".to_string();
        pause(&mut c, &name).await;
        resume(&mut c, &name).await;
    }
    let (events, pages) = all_pages(&mut c, "hist", HistoryKind::All, 3).await;
    assert_eq!(events.len(), 11);
    assert_eq!(pages, 4);
    assert_eq!(events, watched(&mut c, "hist").await);
    assert!(events.iter().all(|e| e.pipe_name == "hist"));
}

#[tokio::test]
async fn a_kind_keeps_only_its_events() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("kinds")).await.unwrap();
    pause(&mut c, "kinds").await;
    let (errors, _) = all_pages(&mut c, "kinds", HistoryKind::Errors, 10).await;
    assert!(errors.is_empty(), "{errors:?}");
    let (all, _) = all_pages(&mut c, "kinds", HistoryKind::All, 10).await;
    assert_eq!(all.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_and_cdc_history_of_a_running_pipe() {
    let schema = unique("hist");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text);
             INSERT INTO {schema}.t SELECT g, 'v' || g FROM generate_series(1, 5000) g;"
    ))
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&format!("{schema}.t")])).await;

    let (snap, _) = all_pages(&mut c, &name, HistoryKind::Snapshot, 2).await;
    assert!(matches!(
        snap.first().and_then(|e| e.payload.as_ref()),
        Some(Payload::SnapshotStarted(_))
    ));
    assert!(matches!(
        snap.last().and_then(|e| e.payload.as_ref()),
        Some(Payload::SnapshotCompleted(_))
    ));
    assert!(snap.iter().all(|e| matches!(
        e.payload,
        Some(
            Payload::SnapshotStarted(_)
                | Payload::SnapshotProgress(_)
                | Payload::SnapshotTableCompleted(_)
                | Payload::SnapshotCompleted(_)
        )
    )));
    let (cdc, _) = all_pages(&mut c, &name, HistoryKind::Cdc, 100).await;
    assert!(
        matches!(
            cdc.first().and_then(|e| e.payload.as_ref()),
            Some(Payload::CdcStarted(_))
        ),
        "{cdc:?}"
    );
    let (errors, _) = all_pages(&mut c, &name, HistoryKind::Errors, 100).await;
    assert!(
        errors.is_empty(),
        "a healthy pipe has no error history: {errors:?}"
    );
}

#[tokio::test]
async fn bad_history_requests_are_refused() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("bad")).await.unwrap();
    let code = |r: Result<tonic::Response<GetPipeHistoryResponse>, tonic::Status>| {
        r.map(|_| ()).unwrap_err().code()
    };
    let nobody = c
        .get_pipe_history(req("nobody", HistoryKind::All, 0, ""))
        .await;
    assert_eq!(code(nobody), Code::NotFound);
    let token = c
        .get_pipe_history(req("bad", HistoryKind::All, 0, "x1"))
        .await;
    assert_eq!(code(token), Code::InvalidArgument);
    let big = c
        .get_pipe_history(req("bad", HistoryKind::All, 5000, ""))
        .await;
    assert_eq!(code(big), Code::InvalidArgument);
    let mut odd = req("bad", HistoryKind::All, 0, "");
    odd.kind = 42;
    let kind = c.get_pipe_history(odd).await;
    assert_eq!(code(kind), Code::InvalidArgument);
    let empty = c.get_pipe_history(req("", HistoryKind::All, 0, "")).await;
    assert_eq!(code(empty), Code::InvalidArgument);
}

// ------------------------------------------------ CDC batches, throughput,
// initial-load summaries

fn lsn(s: &str) -> u64 {
    s.parse::<pgpipe::model::Lsn>()
        .unwrap_or_else(|e| panic!("{s:?} is not an LSN: {e:?}"))
        .0
}

/// The CdcProgress events of `name` that carry a batch (rows applied).
async fn batches(c: &mut Client, name: &str) -> Vec<CdcProgress> {
    let (events, _) = all_pages(c, name, HistoryKind::Cdc, 1000).await;
    events
        .into_iter()
        .filter_map(|e| match e.payload {
            Some(Payload::CdcProgress(p)) if p.rows > 0 => Some(p),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdc_history_records_applied_batches_with_their_lsn_range_and_counts() {
    let schema = unique("histcdc");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text);
             CREATE TABLE {schema}.u (id bigint PRIMARY KEY, v text);
             INSERT INTO {schema}.t SELECT g, 'v' || g FROM generate_series(1, 100) g;"
    ))
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let tables = [format!("{schema}.t"), format!("{schema}.u")];
    c.create_pipe(pipe_req(&name, &schema, &[&tables[0], &tables[1]]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(60)).await;

    // Several transactions, apart in time so that they land in several
    // batches (one history event holds the batches of up to 5 s): 30
    // inserts, 10 updates, 5 deletes in t; 20 inserts in u.
    let pg = pg().await;
    for i in 0..5 {
        pg.batch_execute(&format!(
            "INSERT INTO {schema}.t SELECT g, 'n' FROM generate_series({a}, {b}) g;
             UPDATE {schema}.t SET v = 'u' WHERE id BETWEEN {ua} AND {ub};
             DELETE FROM {schema}.t WHERE id = {d};
             INSERT INTO {schema}.u SELECT g, 'n' FROM generate_series({ia}, {ib}) g;",
            a = 1000 + i * 6,
            b = 1000 + i * 6 + 5,
            ua = i * 2 + 1,
            ub = i * 2 + 2,
            d = 50 + i,
            ia = i * 4 + 1,
            ib = i * 4 + 4,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let batches = loop {
        let b = batches(&mut c, &name).await;
        let rows: u64 = b.iter().map(|p| p.rows).sum();
        if rows >= 65 {
            break b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CDC history holds {rows} of the 65 changes: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sum = |table: &str, f: fn(&TableChangeCounts) -> u64| -> u64 {
        batches
            .iter()
            .flat_map(|b| &b.tables)
            .filter(|t| t.source_table == table)
            .map(f)
            .sum()
    };
    assert_eq!(sum(&tables[0], |t| t.inserted), 30);
    assert_eq!(sum(&tables[0], |t| t.updated), 10);
    assert_eq!(sum(&tables[0], |t| t.deleted), 5);
    assert_eq!(sum(&tables[1], |t| t.inserted), 20);
    assert_eq!(batches.iter().map(|b| b.transactions).sum::<u32>(), 5);
    let mut previous_end = 0;
    for b in &batches {
        let counted: u64 = b
            .tables
            .iter()
            .map(|t| t.inserted + t.updated + t.deleted)
            .sum();
        assert_eq!(b.rows, counted, "rows are the per-table counts' sum: {b:?}");
        let (start, end) = (lsn(&b.start_lsn), lsn(&b.lsn));
        assert!(start < end, "a batch's range is increasing: {b:?}");
        assert!(
            start >= previous_end,
            "batches do not overlap: {b:?} starts before {previous_end:X}"
        );
        previous_end = end;
        assert!(b.transactions >= 1);
        assert!(b.first_commit_at.is_some(), "{b:?}");
    }
    // The projection still adds the batches up.
    let p = get(&mut c, &name).await;
    let t = p
        .tables
        .iter()
        .find(|t| t.source_table == tables[0])
        .unwrap();
    assert_eq!(
        (t.rows_inserted, t.rows_updated, t.rows_deleted),
        (30, 10, 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_steady_stream_of_small_transactions_is_recorded_every_few_seconds_not_per_batch() {
    let schema = unique("histrate");
    pg_exec(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text);"
    ))
    .await;
    let name = pipe_name(&schema);
    let (_srv, mut c, _) = start_pipe(pipe_req(&name, &schema, &[&format!("{schema}.t")])).await;

    // 40 transactions over about 8 s: each lands in a batch of its own
    // (200 ms apart, the default sync interval), yet the history records
    // them in a few events (one per 5 s window).
    let pg = pg().await;
    for i in 0..40 {
        pg.batch_execute(&format!("INSERT INTO {schema}.t VALUES ({i}, 'v')"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let batches = loop {
        let b = batches(&mut c, &name).await;
        if b.iter().map(|p| p.transactions).sum::<u32>() >= 40 {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(batches.iter().map(|b| b.rows).sum::<u64>(), 40);
    assert!(
        batches.len() <= 4,
        "40 transactions in 8 s make at most 4 history events, not one per batch: {}",
        batches.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_summary_of_a_partitioned_initial_load() {
    let schema = unique("histload");
    pg_exec(&format!(
        "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text);
             INSERT INTO {schema}.t SELECT g, 'v' || g FROM generate_series(1, 4500) g;
             ANALYZE {schema}.t;"
    ))
    .await;
    let (_srv, mut c) = engine().await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.t");
    let mut req = pipe_req(&name, &schema, &[&table]);
    if let Some(s) = req.settings.as_mut() {
        s.snapshot_rows_per_partition = 1000;
    }
    c.create_pipe(req).await.unwrap();
    let pipe = wait_running(&mut c, &name, Duration::from_secs(60)).await;

    let all = c
        .get_load_summary(GetLoadSummaryRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.tables.len(), 1, "{all:?}");
    let s = &all.tables[0];
    assert_eq!(s.pipe_id, pipe.id);
    assert_eq!(s.source_table, table);
    assert!(s.done, "{s:?}");
    assert!(s.partitions_total > 1, "several partitions: {s:?}");
    assert_eq!(s.partitions_done, s.partitions_total);
    assert_eq!(s.rows, 4500);
    assert!(s.started_at.is_some() && s.finished_at.is_some(), "{s:?}");
    let copy_ms = s.avg_partition_ms * u64::from(s.partitions_done);
    // pipe_req copies 3 partitions at a time; averages are rounded down.
    assert!(
        copy_ms <= s.duration_ms * 3 + 1000,
        "partitions ran within the load: {s:?}"
    );

    // A resync is a second incarnation: a second row, after the first.
    resync(&mut c, &name).await.unwrap();
    let again = wait_running(&mut c, &name, Duration::from_secs(60)).await;
    let first = c
        .get_load_summary(GetLoadSummaryRequest {
            name: name.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tables.len(), 1);
    assert_eq!(first.tables[0].pipe_id, pipe.id);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .get_load_summary(GetLoadSummaryRequest {
            name: name.clone(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.tables.len(), 1);
    assert_eq!(second.tables[0].pipe_id, again.id);
    assert_eq!(second.tables[0].rows, 4500);
    assert!(second.next_page_token.is_empty());
}

/// Appends `n` synthetic CdcProgress events to `name`'s stream, 7 seconds
/// apart from `base`, with the server stopped, and returns it restarted.
async fn with_synthetic_batches(srv: InProcess, name: &str, n: u64, base: i64) -> InProcess {
    let dir = srv.stop().await;
    {
        let log = pgpipe::store::EventLog::open(&dir.path().join("data")).unwrap();
        log.start_writer(std::sync::Arc::new(|_| {}));
        let mut version = log.stream_version(name);
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let events: Vec<Event> = chunk
                .iter()
                .map(|&i| {
                    let mut e = pgpipe::store::event_log::new_event(
                        "synthetic",
                        Payload::CdcProgress(CdcProgress {
                            lsn: format!("0/{:X}", (i + 1) * 100),
                            start_lsn: format!("0/{:X}", i * 100 + 1),
                            lag_bytes: i % 17,
                            rows: i % 5 + i % 3,
                            tables: vec![TableChangeCounts {
                                source_table: "public.t".into(),
                                inserted: i % 5,
                                updated: i % 3,
                                deleted: u64::from(i % 7 == 0),
                            }],
                            ..Default::default()
                        }),
                    );
                    e.at = Some(prost_types::Timestamp {
                        seconds: base + i as i64 * 7,
                        nanos: 0,
                    });
                    e
                })
                .collect();
            let len = events.len() as u64;
            log.append(name, version, events).await.unwrap();
            version += len;
        }
        log.close().await.unwrap();
    }
    InProcess::start_in(dir, None).await
}

fn throughput_req(name: &str, bucket: u32, size: u32, token: &str) -> GetPipeThroughputRequest {
    GetPipeThroughputRequest {
        name: name.into(),
        bucket_seconds: bucket,
        page_size: size,
        page_token: token.into(),
    }
}

async fn all_points(c: &mut Client, name: &str, bucket: u32, size: u32) -> Vec<ThroughputPoint> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .get_pipe_throughput(throughput_req(name, bucket, size, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.points.len() <= size as usize);
        out.extend(r.points);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

#[tokio::test]
async fn thousands_of_batches_page_the_same_as_one_read() {
    const N: u64 = 3000;
    // On a minute and an hour boundary, so that buckets are easy to count.
    const BASE: i64 = 1_800_000_000; // 30 000 000 minutes
    let (srv, mut c) = control_plane().await;
    c.create_pipe(create_req("busy")).await.unwrap();
    let srv = with_synthetic_batches(srv, "busy", N, BASE).await;
    let mut c = srv.client().await;

    let (small, pages) = all_pages(&mut c, "busy", HistoryKind::Cdc, 7).await;
    assert!(pages > 400);
    let (big, _) = all_pages(&mut c, "busy", HistoryKind::Cdc, 1000).await;
    assert_eq!(small.len(), N as usize);
    assert_eq!(small, big);

    let one_read = all_points(&mut c, "busy", 60, 1000).await;
    let paged = all_points(&mut c, "busy", 60, 13).await;
    assert_eq!(
        paged, one_read,
        "paging neither splits nor repeats a bucket"
    );
    let span = (N - 1) as i64 * 7;
    assert_eq!(one_read.len() as i64, span / 60 + 1);
    let starts: Vec<i64> = one_read.iter().map(|p| p.start.unwrap().seconds).collect();
    assert!(starts.windows(2).all(|w| w[0] + 60 == w[1]), "{starts:?}");
    assert_eq!(starts[0], BASE);
    let total = |f: fn(u64) -> u64| (0..N).map(f).sum::<u64>();
    assert_eq!(
        one_read.iter().map(|p| p.rows_inserted).sum::<u64>(),
        total(|i| i % 5)
    );
    assert_eq!(
        one_read.iter().map(|p| p.rows_updated).sum::<u64>(),
        total(|i| i % 3)
    );
    assert_eq!(
        one_read.iter().map(|p| p.rows_deleted).sum::<u64>(),
        total(|i| u64::from(i % 7 == 0))
    );
    let with_changes = (0..N).filter(|i| i % 5 + i % 3 + u64::from(i % 7 == 0) > 0);
    assert_eq!(
        one_read.iter().map(|p| p.batches).sum::<u64>(),
        with_changes.count() as u64
    );
    // The first minute holds events 0..=8 (at 0, 7, ..., 56 s).
    assert_eq!(one_read[0].lsn, format!("0/{:X}", 9 * 100));
    assert_eq!(one_read[0].lag_bytes, 8);
    assert_eq!(one_read[0].max_lag_bytes, 8);
    let last = one_read.last().unwrap();
    assert_eq!(last.lsn, format!("0/{:X}", N * 100));

    // Hour buckets: the same totals in fewer points.
    let hours = all_points(&mut c, "busy", 3600, 1).await;
    assert_eq!(hours.len() as i64, span / 3600 + 1);
    assert_eq!(
        hours.iter().map(|p| p.rows_inserted).sum::<u64>(),
        total(|i| i % 5)
    );
}

#[tokio::test]
async fn bad_throughput_and_load_summary_requests_are_refused() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("bad")).await.unwrap();
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        r.map(|_| ()).unwrap_err().code()
    }
    let t = |bucket, size, token: &str| throughput_req("bad", bucket, size, token);
    assert_eq!(
        code(
            c.get_pipe_throughput(throughput_req("nobody", 0, 0, ""))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(c.get_pipe_throughput(t(86_401, 0, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.get_pipe_throughput(t(0, 1001, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.get_pipe_throughput(t(0, 0, "x")).await),
        Code::InvalidArgument
    );
    // A token of another bucket width would split buckets.
    assert_eq!(
        code(c.get_pipe_throughput(t(60, 0, "5/3600")).await),
        Code::InvalidArgument
    );
    assert!(c.get_pipe_throughput(t(60, 0, "5/60")).await.is_ok());
    let load = |name: &str, size, token: &str| GetLoadSummaryRequest {
        name: name.into(),
        page_size: size,
        page_token: token.into(),
    };
    assert_eq!(
        code(c.get_load_summary(load("nobody", 0, "")).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.get_load_summary(load("bad", 0, "-1")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.get_load_summary(load("bad", 5000, "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.get_load_summary(load("", 0, "")).await),
        Code::InvalidArgument
    );
    let empty = c.get_load_summary(load("bad", 0, "")).await.unwrap();
    assert!(empty.into_inner().tables.is_empty(), "no load yet");
}
