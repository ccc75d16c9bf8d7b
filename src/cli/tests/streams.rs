//! watch, events and resync --wait: streams, reconnection and resuming.

use super::*;

#[tokio::test]
async fn resync_wait_resumes_after_the_cursor_and_reconnects() {
    let mock = Mock::default();
    {
        let mut st = mock.state();
        st.watch_scripts.push_back(vec![
            Ok(event_msg(
                11,
                "p2",
                PipeStatus::Setup,
                Payload::StepStarted(StepStarted {
                    step: "setup".into(),
                }),
            )),
            Ok(event_msg(
                12,
                "p2",
                PipeStatus::Snapshot,
                Payload::SnapshotProgress(SnapshotProgress {
                    source_table: "public.orders".into(),
                    rows_copied: 10,
                    partitions_done: 1,
                    partitions_total: 4,
                    ..Default::default()
                }),
            )),
            Err(Status::unavailable("server going away")),
        ]);
        st.watch_scripts.push_back(vec![
            // A duplicate of what was seen before the cut: ignored.
            Ok(event_msg(
                12,
                "p2",
                PipeStatus::Snapshot,
                Payload::SnapshotProgress(SnapshotProgress::default()),
            )),
            Ok(cdc_started_msg(13, "p2", "0/16B3748")),
        ]);
    }
    let (result, buf) = run(
        &mock,
        &[
            "resync",
            "orders",
            "--order-by",
            "public.orders=id",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(result.unwrap(), ExitCode::SUCCESS);
    let lines = buf.json_lines();
    let cursors: Vec<u64> = lines
        .iter()
        .map(|l| l["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(cursors, vec![10, 11, 12, 13], "{lines:?}");
    assert_eq!(lines[0]["pipe"]["resyncOf"], "p1");
    assert!(lines[3]["event"]["cdcStarted"].is_object(), "{lines:?}");
    assert_eq!(lines[3]["pipe"]["status"], "PIPE_STATUS_RUNNING");

    let st = mock.state();
    assert_eq!(
        st.watch_calls,
        vec![("orders".into(), Some(10)), ("orders".into(), Some(12))]
    );
    assert_eq!(st.resyncs[0].overrides[0].order_by, vec!["id"]);
    assert!(
        st.auth
            .iter()
            .all(|a| a.as_deref() == Some("Bearer s3cret"))
    );
}

#[tokio::test]
async fn watch_until_running_exits_1_on_final_failure() {
    let mock = Mock::watching(vec![
        Ok(state_msg("p1", PipeStatus::Running, 5)),
        Ok(event_msg(
            6,
            "p1",
            PipeStatus::Running,
            Payload::ResyncStarted(ResyncStarted::default()),
        )),
        Ok(event_msg(
            7,
            "p1",
            PipeStatus::Failed,
            Payload::PipeFailed(PipeFailed {
                step: "snapshot".into(),
                reason: "table public.orders has no primary key".into(),
                retrying: false,
            }),
        )),
        Ok(event_msg(
            8,
            "p1",
            PipeStatus::Running,
            Payload::PipeRecovered(Default::default()),
        )),
    ]);
    let (result, buf) = run(&mock, &["watch", "orders", "--until-running"]).await;
    assert_eq!(result.unwrap(), ExitCode::from(EXIT_PIPE_FAILED));
    let lines = buf.lines();
    assert_eq!(
        lines,
        vec![
            "pipe orders (p1): running, cursor 5",
            "12:35:02Z #6  resync started",
            "12:35:03Z #7  failed in step snapshot: table public.orders has no primary key \
             (not retrying: action required)",
            "12:35:03Z #7  status: running → failed",
        ]
    );
    assert_eq!(mock.state().watch_calls, vec![("orders".into(), None)]);
}

#[tokio::test]
async fn watch_ends_0_when_the_pipe_is_deleted() {
    let mock = Mock::watching(vec![
        Ok(state_msg("p1", PipeStatus::Running, 5)),
        Ok(deleted_msg(6, "p1", DeleteReason::User)),
    ]);
    let (result, buf) = run(&mock, &["watch", "orders"]).await;
    assert_eq!(result.unwrap(), ExitCode::SUCCESS);
    assert_eq!(
        buf.lines().last().map(String::as_str),
        Some("stream ended (pipe deleted)")
    );
}

#[tokio::test]
async fn watch_follows_a_resync_across_incarnations() {
    let mock = Mock::watching(vec![
        Ok(state_msg("p1", PipeStatus::Running, 5)),
        Ok(deleted_msg(6, "p1", DeleteReason::Resync)),
        Ok(event_msg(
            7,
            "p2",
            PipeStatus::Setup,
            Payload::PipeCreated(PipeCreated {
                name: "orders".into(),
                resync_of: "p1".into(),
                ..Default::default()
            }),
        )),
        Ok(cdc_started_msg(8, "p2", "0/1")),
    ]);
    let (result, buf) = run(&mock, &["watch", "orders", "--until-running"]).await;
    assert_eq!(result.unwrap(), ExitCode::SUCCESS);
    let lines = buf.lines();
    assert!(
        lines.contains(&"12:35:03Z #7  created (resync of p1)".to_owned()),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("pipe orders is running")
    );
}

#[tokio::test]
async fn events_json_caught_up_and_resume() {
    let mock = Mock::default();
    let ev = |seq| {
        Ok(WatchEventsResponse {
            item: Some(Item::Event(event(
                seq,
                "p1",
                Payload::PipeResumed(Default::default()),
            ))),
        })
    };
    {
        let mut st = mock.state();
        st.events_scripts.push_back(vec![
            ev(1),
            Ok(WatchEventsResponse {
                item: Some(Item::CaughtUp(CaughtUp { cursor: 1 })),
            }),
            ev(2),
            Err(Status::unavailable("bye")),
        ]);
        st.events_scripts.push_back(vec![
            ev(2),
            ev(3),
            Err(Status::permission_denied("token revoked")),
        ]);
    }
    let (result, buf) = run(
        &mock,
        &["events", "--after", "0", "--pipe", "orders", "--json"],
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "PERMISSION_DENIED: token revoked");
    let lines = buf.json_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["event"]["seq"], "1");
    assert!(lines[0]["event"]["pipeResumed"].is_object(), "{lines:?}");
    assert_eq!(lines[1], serde_json::json!({"caughtUp": {"cursor": "1"}}));
    assert_eq!(lines[2]["event"]["seq"], "2");
    assert_eq!(lines[3]["event"]["seq"], "3");
    assert_eq!(
        mock.state().events_calls,
        vec![("orders".into(), Some(0)), ("orders".into(), Some(2))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let mock = Mock::default();
    {
        let mut st = mock.state();
        st.hold_open = true;
        st.watch_scripts.push_back(vec![
            Ok(state_msg("p1", PipeStatus::Setup, 10)),
            Ok(event_msg(
                11,
                "p1",
                PipeStatus::Snapshot,
                Payload::SnapshotProgress(SnapshotProgress::default()),
            )),
        ]);
        st.watch_scripts.push_back(vec![Ok(event_msg(
            12,
            "p1",
            PipeStatus::Running,
            Payload::CdcStarted(CdcStarted::default()),
        ))]);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let kill = serve_killable(mock.clone(), listener);
    let opts = ClientOpts {
        server: format!("http://{addr}"),
        token: None,
        ca_cert: None,
    };
    let (mut out, buf) = capture();
    let watch = tokio::spawn(async move {
        exec(
            &opts,
            &["watch", "orders", "--until-running", "--json"],
            &mut out,
        )
        .await
    });
    // Wait for the first two messages, then kill the server mid-stream.
    for _ in 0..100 {
        if buf.lines().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(buf.lines().len(), 2);
    kill.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Same address, new server (the old connection is gone).
    let mut listener = None;
    for _ in 0..50 {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _kill2 = serve_killable(mock.clone(), listener.unwrap());
    let code = tokio::time::timeout(Duration::from_secs(20), watch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let cursors: Vec<u64> = buf
        .json_lines()
        .iter()
        .map(|l| l["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(cursors, vec![10, 11, 12]);
    assert_eq!(
        mock.state().watch_calls,
        vec![("orders".into(), None), ("orders".into(), Some(11))]
    );
}
