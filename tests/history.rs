//! GetPipeHistory: a pipe name's past from the event log, by kind, a page at
//! a time.

mod common;

use std::time::Duration;

use common::data::*;
use common::*;
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
    let srv = InProcess::start(None).await;
    let mut c = srv.client().await;
    c.create_pipe(create_req("hist")).await.unwrap();
    c.create_pipe(create_req("other")).await.unwrap();
    for _ in 0..5 {
        let name = "hist".to_string();
        c.pause_pipe(PausePipeRequest { name: name.clone() })
            .await
            .unwrap();
        c.resume_pipe(ResumePipeRequest { name }).await.unwrap();
    }
    let (events, pages) = all_pages(&mut c, "hist", HistoryKind::All, 3).await;
    assert_eq!(events.len(), 11);
    assert_eq!(pages, 4);
    assert_eq!(events, watched(&mut c, "hist").await);
    assert!(events.iter().all(|e| e.pipe_name == "hist"));
}

#[tokio::test]
async fn a_kind_keeps_only_its_events() {
    let srv = InProcess::start(None).await;
    let mut c = srv.client().await;
    c.create_pipe(create_req("kinds")).await.unwrap();
    c.pause_pipe(PausePipeRequest {
        name: "kinds".into(),
    })
    .await
    .unwrap();
    let (errors, _) = all_pages(&mut c, "kinds", HistoryKind::Errors, 10).await;
    assert!(errors.is_empty(), "{errors:?}");
    let (all, _) = all_pages(&mut c, "kinds", HistoryKind::All, 10).await;
    assert_eq!(all.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_and_cdc_history_of_a_running_pipe() {
    let schema = unique("hist");
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.t (id bigint PRIMARY KEY, v text);
             INSERT INTO {schema}.t SELECT g, 'v' || g FROM generate_series(1, 5000) g;"
        ))
        .await
        .unwrap();
    let srv = InProcess::start_engine().await;
    let mut c = srv.client().await;
    let name = schema.replace('_', "-");
    c.create_pipe(pipe_req(&name, &schema, &[&format!("{schema}.t")]))
        .await
        .unwrap();
    wait_running(&mut c, &name, Duration::from_secs(60)).await;

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
    let srv = InProcess::start(None).await;
    let mut c = srv.client().await;
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
