//! The `pgpipe` binary as users run it: health during replay, signals,
//! kill -9, a corrupt log.

use std::time::Duration;

use crate::common::*;
use pgpipe::proto::*;

#[tokio::test]
async fn health_is_not_serving_until_the_log_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(
        dir.path(),
        &[("PGPIPE_FAILPOINTS", "replay.before=sleep(3000)")],
    );
    // NOT_SERVING (2) while the replay is held back...
    let mut saw_not_serving = false;
    for _ in 0..40 {
        match health_status(&p.url()).await {
            Some(2) => {
                saw_not_serving = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(
        saw_not_serving,
        "health never said NOT_SERVING during replay"
    );
    // ...and RPCs say UNAVAILABLE with a reason.
    let mut c = connect(&p.url()).await;
    let e = c.list_pipes(ListPipesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("replaying"), "{}", e.message());
    wait_serving(&p.url()).await;
    c.list_pipes(ListPipesRequest::default()).await.unwrap();
}

#[tokio::test]
async fn an_acknowledged_create_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut c) = Proc::start(dir.path()).await;
    c.create_pipe(create_req("durable")).await.unwrap();
    pause(&mut c, "durable").await;
    p.kill9();
    let (_p, mut c) = Proc::start(dir.path()).await;
    let pipe = get(&mut c, "durable").await;
    assert_eq!(pipe.status, PipeStatus::Paused as i32);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_with_a_watcher_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut c) = Proc::start(dir.path()).await;
    c.create_pipe(create_req("w")).await.unwrap();
    let _stream = c
        .watch_events(WatchEventsRequest {
            after_cursor: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || p.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn a_corrupt_log_stops_start_up_and_repair_mends_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut p, mut c) = Proc::start(dir.path()).await;
        c.create_pipe(create_req("a")).await.unwrap();
        c.create_pipe(create_req("b")).await.unwrap();
        drop(c);
        tokio::task::spawn_blocking(move || p.terminate())
            .await
            .unwrap();
    }
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("log").unwrap();
        let (k, v) = tree.last().unwrap().unwrap();
        let mut bad = v.to_vec();
        bad[3] ^= 0x55;
        tree.insert(k, bad).unwrap();
        db.flush().unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_pgpipe");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt at seq 2"), "{stderr}");
    assert!(stderr.contains("pgpipe repair"), "{stderr}");

    let out = std::process::Command::new(bin)
        .args(["repair", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut 1"));

    let (_p, mut c) = Proc::start(dir.path()).await;
    let names = live_names(&mut c, Default::default()).await;
    assert_eq!(names, ["a"]);
}
