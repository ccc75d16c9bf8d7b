//! Watch streams: cursors, slow watchers, fan-out, following across resync.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use pgpipe::proto::event::Payload;
use pgpipe::proto::*;

/// Appends `n` events to pipe `name` by toggling pause/resume.
async fn toggle(c: &mut Client, name: &str, n: usize) {
    for i in 0..n {
        if i % 2 == 0 {
            pause(c, name).await;
        } else {
            resume(c, name).await;
        }
    }
}

async fn next_event(s: &mut tonic::Streaming<WatchEventsResponse>) -> Event {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("no event within 20 s")
            .expect("stream ended")
            .unwrap();
        if let Some(watch_events_response::Item::Event(e)) = msg.item {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_from_a_cursor_has_no_gap_and_no_duplicate_while_appends_run() {
    let (_srv, mut c) = control_plane().await;
    for p in ["a", "b", "c", "d"] {
        c.create_pipe(create_req(p)).await.unwrap();
    }
    let writers: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|p| {
            let mut c = c.clone();
            tokio::spawn(async move { toggle(&mut c, p, 100).await })
        })
        .collect();
    // Read a few events at a time, disconnect, resume from the last cursor.
    let mut seen = Vec::new();
    let mut cursor = 0u64;
    while seen.len() < 404 {
        let mut s = c
            .watch_events(WatchEventsRequest {
                after_cursor: Some(cursor),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for _ in 0..37 {
            if seen.len() == 404 {
                break;
            }
            let e = next_event(&mut s).await;
            cursor = e.seq;
            seen.push(e.seq);
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen, (1..=404).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_events_says_when_it_has_caught_up() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("a")).await.unwrap();
    c.create_pipe(create_req("b")).await.unwrap();
    let mut s = c
        .watch_events(WatchEventsRequest {
            after_cursor: Some(0),
            pipe_name: "b".into(),
            label_selector: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    match first.item {
        Some(watch_events_response::Item::Event(e)) => {
            assert_eq!((e.seq, e.pipe_name.as_str()), (2, "b"))
        }
        other => panic!("{other:?}"),
    }
    let second = s.next().await.unwrap().unwrap();
    assert_eq!(
        second.item,
        Some(watch_events_response::Item::CaughtUp(CaughtUp {
            cursor: 2
        }))
    );
    pause(&mut c, "a").await;
    pause(&mut c, "b").await;
    let live = next_event(&mut s).await;
    assert_eq!((live.seq, live.pipe_name.as_str()), (4, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_still_receives_every_event() {
    let (_srv, mut c) = control_plane().await;
    let names: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    for n in &names {
        c.create_pipe(create_req(n)).await.unwrap();
    }
    let mut slow = watch_all(&mut c).await;
    // Far more events than the in-memory fan-out holds, while the watcher
    // reads nothing.
    let per_pipe = 160;
    let writers: Vec<_> = names
        .iter()
        .map(|n| {
            let (mut c, n) = (c.clone(), n.clone());
            tokio::spawn(async move { toggle(&mut c, &n, per_pipe).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let total = names.len() * (per_pipe + 1);
    let mut expected = 1u64;
    while (expected as usize) <= total {
        let e = next_event(&mut slow).await;
        assert_eq!(e.seq, expected);
        expected += 1;
        if expected.is_multiple_of(1000) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_watchers_see_the_same_ordered_events() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("fan")).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..200 {
        let s = watch_pipe(&mut c, "fan", None).await;
        streams.push(s);
    }
    toggle(&mut c, "fan", 20).await;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut cursors = Vec::new();
                while cursors.len() < 21 {
                    let m = s.next().await.unwrap().unwrap();
                    cursors.push(m.cursor);
                }
                cursors
            })
        })
        .collect();
    let expected: Vec<u64> = (1..=21).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), expected);
    }
}

fn kind(m: &WatchPipeResponse) -> &'static str {
    m.event
        .as_ref()
        .map_or("state", pgpipe::domain::projection::event_kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_pipe_starts_with_the_state_and_follows_a_resync_by_name() {
    let (_srv, mut c) = control_plane().await;
    let old = create_pipe(&mut c, create_req("rs")).await;
    let mut s = watch_pipe(&mut c, "rs", None).await;
    let first = s.next().await.unwrap().unwrap();
    assert!(first.event.is_none());
    assert_eq!(first.pipe.as_ref().unwrap().id, old.id);
    assert_eq!(first.cursor, 1);

    let new = resync(&mut c, "rs").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.next().await.unwrap().unwrap());
    }
    assert_eq!(
        got.iter().map(kind).collect::<Vec<_>>(),
        ["resync_started", "pipe_deleted", "pipe_created"]
    );
    assert_eq!(got[1].pipe.as_ref().unwrap().id, old.id);
    assert_eq!(
        got[1].pipe.as_ref().unwrap().status,
        PipeStatus::Deleted as i32
    );
    assert_eq!(got[2].pipe.as_ref().unwrap().id, new.id);
    assert_eq!(
        got[2].pipe.as_ref().unwrap().status,
        PipeStatus::Setup as i32
    );

    // The stream goes on with the new incarnation...
    pause(&mut c, "rs").await;
    let paused = s.next().await.unwrap().unwrap();
    assert_eq!(paused.pipe.unwrap().status, PipeStatus::Paused as i32);
    // ...and ends when the pipe is deleted for good.
    delete_pipe(&mut c, "rs").await;
    let deleted = s.next().await.unwrap().unwrap();
    assert!(matches!(
        deleted.event.unwrap().payload,
        Some(Payload::PipeDeleted(_))
    ));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_pipe_resumes_after_its_cursor_with_the_state_at_each_event() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("cur")).await.unwrap();
    c.create_pipe(create_req("other")).await.unwrap();
    toggle(&mut c, "cur", 3).await; // seqs 3, 4, 5: paused, resumed, paused
    toggle(&mut c, "other", 2).await;
    let mut s = watch_pipe(&mut c, "cur", Some(3)).await;
    let a = s.next().await.unwrap().unwrap();
    let b = s.next().await.unwrap().unwrap();
    assert_eq!((a.cursor, kind(&a)), (4, "pipe_resumed"));
    assert_eq!(a.pipe.unwrap().status, PipeStatus::Setup as i32);
    assert_eq!((b.cursor, kind(&b)), (5, "pipe_paused"));
    assert_eq!(b.pipe.unwrap().status, PipeStatus::Paused as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_watch_streams_end_when_the_server_shuts_down() {
    let (srv, mut c) = control_plane().await;
    c.create_pipe(create_req("x")).await.unwrap();
    let mut s = watch_pipe(&mut c, "x", None).await;
    s.next().await.unwrap().unwrap();
    // stop() fails the test if shutdown takes more than 10 s.
    srv.stop().await;
}
