//! Labels on pipes: set at create, changed by SetPipeLabels (one
//! PipeLabelsChanged event), carried by a resync, kept across a restart,
//! and used to select pipes in ListPipes and WatchEvents. Control plane
//! only: no peer is needed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use pgpipe::proto::*;
use serde_json::Value;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labeled(name: &str, pairs: &[(&str, &str)]) -> CreatePipeRequest {
    CreatePipeRequest {
        labels: labels(pairs),
        ..create_req(name)
    }
}

async fn set(c: &mut Client, name: &str, set: &[(&str, &str)], remove: &[&str]) -> Pipe {
    c.set_pipe_labels(SetPipeLabelsRequest {
        name: name.into(),
        labels: labels(set),
        remove_keys: remove.iter().map(|k| k.to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
    .pipe
    .unwrap()
}

async fn names(c: &mut Client, selector: &[(&str, &str)]) -> Vec<String> {
    live_names(c, labels(selector)).await
}

/// `(pipe name, event kind)` of the events a WatchEvents stream delivers
/// until it has been quiet for a moment.
async fn drain(s: &mut tonic::Streaming<WatchEventsResponse>) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        if let Some(watch_events_response::Item::Event(e)) = msg.unwrap().item {
            out.push((e.pipe_name.clone(), pgpipe::watch::event_kind(&e)));
        }
    }
    out
}

fn invalid(e: tonic::Status, needles: &[&str]) {
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{:?} lacks {n:?}", e.message());
    }
}

#[tokio::test]
async fn labels_set_at_create_are_returned() {
    let (_srv, mut c) = control_plane().await;
    let want = labels(&[("env", "prod"), ("app.example.com/team", "core")]);
    let created = create_pipe(
        &mut c,
        labeled("a", &[("env", "prod"), ("app.example.com/team", "core")]),
    )
    .await;
    assert_eq!(created.labels, want);
    assert_eq!(created.config.unwrap().labels, want);
    assert_eq!(get(&mut c, "a").await.labels, want);
    let listed = list_live(&mut c).await;
    assert_eq!(listed[0].labels, want);
}

#[tokio::test]
async fn set_and_remove_append_one_event_that_watchers_see() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(labeled("a", &[("env", "dev"), ("tier", "bronze")]))
        .await
        .unwrap();
    let before = get(&mut c, "a").await;
    let mut w = watch_pipe(&mut c, "a", None).await;
    w.next().await.unwrap().unwrap(); // the current state

    let after = set(&mut c, "a", &[("env", "prod"), ("team", "core")], &["tier"]).await;
    assert_eq!(after.labels, labels(&[("env", "prod"), ("team", "core")]));
    assert_eq!(after.stream_version, before.stream_version + 1);

    let msg = w.next().await.unwrap().unwrap();
    let Some(event::Payload::PipeLabelsChanged(ch)) = msg.event.unwrap().payload else {
        panic!("expected pipe_labels_changed");
    };
    assert_eq!(ch.set, labels(&[("env", "prod"), ("team", "core")]));
    assert_eq!(ch.removed, vec!["tier".to_string()]);
    assert_eq!(ch.labels, after.labels);
    assert_eq!(msg.pipe.unwrap().labels, after.labels);

    // Asking for what is already there records nothing.
    let head_before = log_head(&mut c).await;
    let same = set(&mut c, "a", &[("env", "prod")], &["absent"]).await;
    assert_eq!(same.stream_version, after.stream_version);
    assert_eq!(log_head(&mut c).await, head_before);
}

#[tokio::test]
async fn list_pipes_filters_by_label_selector() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(labeled("a", &[("env", "prod"), ("team", "core")]))
        .await
        .unwrap();
    c.create_pipe(labeled("b", &[("env", "prod")]))
        .await
        .unwrap();
    c.create_pipe(labeled("c", &[("env", "dev")]))
        .await
        .unwrap();
    c.create_pipe(create_req("d")).await.unwrap();
    assert_eq!(names(&mut c, &[]).await, ["a", "b", "c", "d"]);
    assert_eq!(names(&mut c, &[("env", "prod")]).await, ["a", "b"]);
    assert_eq!(
        names(&mut c, &[("env", "prod"), ("team", "core")]).await,
        ["a"]
    );
    assert!(names(&mut c, &[("env", "staging")]).await.is_empty());
    // A changed label changes the selection.
    set(&mut c, "c", &[("env", "prod")], &[]).await;
    assert_eq!(names(&mut c, &[("env", "prod")]).await, ["a", "b", "c"]);
}

/// Creates a (prod) and b (dev), moves b to prod and back, pausing each
/// pipe in between. Returns what a prod watcher must see.
async fn label_story(c: &mut Client) -> Vec<(String, &'static str)> {
    c.create_pipe(labeled("a", &[("env", "prod")]))
        .await
        .unwrap();
    c.create_pipe(labeled("b", &[("env", "dev")]))
        .await
        .unwrap();
    pause(c, "b").await;
    set(c, "b", &[("env", "prod")], &[]).await;
    resume(c, "b").await;
    set(c, "b", &[("env", "dev")], &[]).await;
    pause(c, "b").await;
    pause(c, "a").await;
    [
        ("a", "pipe_created"),
        ("b", "pipe_labels_changed"),
        ("b", "pipe_resumed"),
        ("a", "pipe_paused"),
    ]
    .iter()
    .map(|(n, k)| (n.to_string(), *k))
    .collect()
}

fn prod_watch(after_cursor: Option<u64>) -> WatchEventsRequest {
    WatchEventsRequest {
        after_cursor,
        pipe_name: String::new(),
        label_selector: labels(&[("env", "prod")]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_live_passes_only_events_of_matching_pipes() {
    let (_srv, mut c) = control_plane().await;
    let mut s = c.watch_events(prod_watch(None)).await.unwrap().into_inner();
    let expected = label_story(&mut c).await;
    assert_eq!(drain(&mut s).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_from_a_cursor_passes_what_a_live_watcher_passed() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(labeled("early", &[("env", "prod")]))
        .await
        .unwrap();
    let cursor = log_head(&mut c).await;
    let expected = label_story(&mut c).await;
    let mut s = c
        .watch_events(prod_watch(Some(cursor)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drain(&mut s).await, expected);
    // From the start, the earlier pipe's creation is there too.
    let mut all = c
        .watch_events(prod_watch(Some(0)))
        .await
        .unwrap()
        .into_inner();
    let mut with_early = vec![("early".to_string(), "pipe_created")];
    with_early.extend(expected);
    assert_eq!(drain(&mut all).await, with_early);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_applies_a_selector_and_a_pipe_name_together() {
    let (_srv, mut c) = control_plane().await;
    label_story(&mut c).await;
    let mut s = c
        .watch_events(WatchEventsRequest {
            pipe_name: "b".into(),
            ..prod_watch(Some(0))
        })
        .await
        .unwrap()
        .into_inner();
    let b_while_prod = [("b", "pipe_labels_changed"), ("b", "pipe_resumed")]
        .iter()
        .map(|(n, k)| (n.to_string(), *k))
        .collect::<Vec<_>>();
    assert_eq!(drain(&mut s).await, b_while_prod);
}

#[tokio::test]
async fn resync_carries_the_current_labels_to_the_new_incarnation() {
    let (_srv, mut c) = control_plane().await;
    let old = create_pipe(&mut c, labeled("a", &[("env", "prod")])).await;
    set(&mut c, "a", &[("team", "core")], &[]).await;
    let new = resync(&mut c, "a").await.unwrap();
    assert_ne!(new.id, old.id);
    let want = labels(&[("env", "prod"), ("team", "core")]);
    assert_eq!(new.labels, want);
    assert_eq!(get(&mut c, "a").await.labels, want);
    assert_eq!(names(&mut c, &[("team", "core")]).await, ["a"]);
}

#[tokio::test]
async fn labels_survive_a_restart() {
    let (srv, mut c) = control_plane().await;
    c.create_pipe(labeled("a", &[("env", "prod"), ("tier", "gold")]))
        .await
        .unwrap();
    c.create_pipe(labeled("b", &[("env", "dev")]))
        .await
        .unwrap();
    set(&mut c, "a", &[("team", "core")], &["tier"]).await;
    let before = get(&mut c, "a").await;
    drop(c);
    let srv = InProcess::start_in(srv.stop().await, None).await;
    let mut c = srv.client().await;
    let after = get(&mut c, "a").await;
    assert_eq!(after.labels, labels(&[("env", "prod"), ("team", "core")]));
    assert_eq!(after, before);
    assert_eq!(names(&mut c, &[("env", "prod")]).await, ["a"]);
}

#[tokio::test]
async fn a_key_outside_the_pattern_is_rejected_and_nothing_recorded() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("a")).await.unwrap();
    let h = log_head(&mut c).await;
    for key in ["Env", "-env", "env var", "émoji", ""] {
        let e = c
            .create_pipe(labeled("b", &[(key, "x")]))
            .await
            .unwrap_err();
        invalid(e, &[&format!("{key:?}"), "[a-z0-9]"]);
        let e = c
            .set_pipe_labels(SetPipeLabelsRequest {
                name: "a".into(),
                labels: labels(&[(key, "x")]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        invalid(e, &[&format!("{key:?}"), "[a-z0-9]"]);
    }
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "a".into(),
            remove_keys: vec!["Bad".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(e, &["remove_keys", "\"Bad\""]);
    assert_eq!(log_head(&mut c).await, h);
}

#[tokio::test]
async fn a_key_longer_than_63_is_rejected_and_nothing_recorded() {
    let (_srv, mut c) = control_plane().await;
    let h = log_head(&mut c).await;
    let ok = "k".repeat(63);
    c.create_pipe(labeled("a", &[(&ok, "v")])).await.unwrap();
    let h_ok = log_head(&mut c).await;
    assert_eq!(h_ok, h + 1);
    let long = "k".repeat(64);
    let e = c
        .create_pipe(labeled("b", &[(&long, "v")]))
        .await
        .unwrap_err();
    invalid(e, &[&long, "63 characters"]);
    assert_eq!(log_head(&mut c).await, h_ok);
}

#[tokio::test]
async fn a_value_longer_than_253_is_rejected_and_nothing_recorded() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(labeled("a", &[("note", &"v".repeat(253))]))
        .await
        .unwrap();
    let h = log_head(&mut c).await;
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "a".into(),
            labels: labels(&[("note", &"v".repeat(254))]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(e, &["\"note\"", "254", "253"]);
    assert_eq!(log_head(&mut c).await, h);
}

#[tokio::test]
async fn more_than_64_labels_are_rejected_and_nothing_recorded() {
    let (_srv, mut c) = control_plane().await;
    let many: Vec<(String, String)> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let e = c.create_pipe(labeled("a", &pairs)).await.unwrap_err();
    invalid(e, &["65 labels", "at most 64"]);
    // 64 at create, then one more by SetPipeLabels: the total counts.
    c.create_pipe(labeled("a", &pairs[..64])).await.unwrap();
    let h = log_head(&mut c).await;
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "a".into(),
            labels: labels(&[("one-more", "v")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(e, &["65 labels", "at most 64"]);
    assert_eq!(log_head(&mut c).await, h);
}

#[tokio::test]
async fn setting_and_removing_one_key_at_once_is_rejected() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(labeled("a", &[("env", "dev")]))
        .await
        .unwrap();
    let h = log_head(&mut c).await;
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "a".into(),
            labels: labels(&[("env", "prod")]),
            remove_keys: vec!["env".into()],
        })
        .await
        .unwrap_err();
    invalid(e, &["\"env\"", "not both"]);
    assert_eq!(log_head(&mut c).await, h);
}

#[tokio::test]
async fn a_bad_selector_is_rejected() {
    let (_srv, mut c) = control_plane().await;
    let e = c
        .list_pipes(ListPipesRequest {
            label_selector: labels(&[("Env", "prod")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(e, &["label_selector", "\"Env\""]);
    let e = c
        .watch_events(WatchEventsRequest {
            label_selector: labels(&[("env", &"v".repeat(300))]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(e, &["label_selector", "253"]);
}

#[tokio::test]
async fn labels_of_an_unknown_or_deleted_pipe_are_not_found() {
    let (_srv, mut c) = control_plane().await;
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "nope".into(),
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    c.create_pipe(create_req("gone")).await.unwrap();
    c.delete_pipe(DeletePipeRequest {
        name: "gone".into(),
        drop_destination_tables: false,
    })
    .await
    .unwrap();
    let e = c
        .set_pipe_labels(SetPipeLabelsRequest {
            name: "gone".into(),
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

// ------------------------------------------------------------------ CLI

fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("PGPIPE_TOKEN")
        .env_remove("PGPIPE_SERVER")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().expect("killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn cli_round_trip_create_labels_list_selector() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(dir.path(), &[]);
    wait_serving(&p.url()).await;
    let addr = p.url();
    let base = [
        "--source",
        "host=127.0.0.1 user=app dbname=app",
        "--ch-url",
        "http://127.0.0.1:8123",
        "--ch-database",
        "analytics",
        "--table",
        "public.orders",
    ];
    let mut args = vec!["create", "a"];
    args.extend(base);
    args.extend(["--label", "env=prod", "--label", "team=core", "--json"]);
    let (code, out, err) = cli(&addr, &args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        json(&out)["labels"],
        serde_json::json!({"env": "prod", "team": "core"})
    );

    // The JSON spec takes labels too; --label adds to them.
    let spec = dir.path().join("b.json");
    std::fs::write(
        &spec,
        r#"{"name": "b", "source": {"connection_string": "host=127.0.0.1 user=app dbname=app"},
            "destination": {"url": "http://127.0.0.1:8123", "database": "analytics"},
            "tables": ["public.orders"], "labels": {"env": "dev"}}"#,
    )
    .unwrap();
    let (code, out, err) = cli(
        &addr,
        &[
            "create",
            "--file",
            spec.to_str().unwrap(),
            "--label",
            "tier=gold",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        json(&out)["labels"],
        serde_json::json!({"env": "dev", "tier": "gold"})
    );

    let (code, out, err) = cli(&addr, &["labels", "a", "tier=silver", "team-"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "env=prod\ntier=silver\n");

    // Without changes it only prints the labels.
    let (code, out, err) = cli(&addr, &["labels", "b"]);
    assert_eq!((code, out.as_str()), (0, "env=dev\ntier=gold\n"), "{err}");

    let (code, out, _) = cli(&addr, &["list", "--selector", "env=prod", "--json"]);
    assert_eq!(code, 0);
    let listed: Vec<Value> = json(&out).as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "a");
    let (code, out, _) = cli(&addr, &["list", "--selector", "tier=gold"]);
    assert_eq!(code, 0);
    // The table's LABELS column.
    assert!(out.contains("env=dev,tier=gold"), "{out}");
    assert!(!out.contains("env=prod"), "{out}");

    // Bad input: the server's message names the key and the rule.
    let (code, _, err) = cli(&addr, &["labels", "a", "Bad=x"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"Bad\"") && err.contains("[a-z0-9]"), "{err}");
    let (code, _, err) = cli(&addr, &["labels", "a", "novalue"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KEY=VALUE"), "{err}");
}
