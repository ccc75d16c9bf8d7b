//! The gRPC API end to end through a real server: lifecycle, bad input,
//! auth.

use crate::common::*;
use pgpipe::proto::*;
use tonic::Code;

fn status_of(p: &Pipe) -> PipeStatus {
    PipeStatus::try_from(p.status).unwrap()
}

#[tokio::test]
async fn create_get_list_pause_resume_delete() {
    let (_srv, mut c) = control_plane().await;

    let created = create_pipe(&mut c, create_req("orders")).await;
    assert_eq!(created.name, "orders");
    assert_eq!(status_of(&created), PipeStatus::Setup);
    assert_eq!(created.tables.len(), 2);

    let by_name = get(&mut c, "orders").await;
    let by_id = get_id(&mut c, &created.id).await;
    assert_eq!(by_name, by_id);

    c.create_pipe(create_req("users")).await.unwrap();
    let list = list_live(&mut c).await;
    assert_eq!(
        list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["orders", "users"]
    );

    let paused = pause(&mut c, "orders").await;
    assert_eq!(status_of(&paused), PipeStatus::Paused);
    assert!(
        paused.status_detail.contains("WAL"),
        "{}",
        paused.status_detail
    );

    let resumed = resume(&mut c, "orders").await;
    assert_eq!(status_of(&resumed), PipeStatus::Setup);

    let deleted = delete_pipe(&mut c, "orders").await;
    assert_eq!(status_of(&deleted), PipeStatus::Deleted);
    let list = list_live(&mut c).await;
    assert_eq!(list.len(), 1);
    let all = list_all(&mut c).await;
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn secrets_never_come_back() {
    let (_srv, mut c) = control_plane().await;
    let p = create_pipe(&mut c, create_req("s")).await;
    let text = format!("{p:?}");
    assert!(!text.contains("pg-secret-pw"), "{text}");
    assert!(!text.contains("ch-secret-pw"), "{text}");
    assert_eq!(
        p.config.unwrap().source.unwrap().connection_string,
        "postgres://app@127.0.0.1:5432/app"
    );
}

#[tokio::test]
async fn secrets_are_not_in_the_event_log_on_disk() {
    let (srv, mut c) = control_plane().await;
    c.create_pipe(create_req("s")).await.unwrap();
    let dir = srv.stop().await;
    let log = pgpipe::store::EventLog::open(&dir.path().join("data")).unwrap();
    let mut events = Vec::new();
    log.replay(|e| events.push(format!("{e:?}"))).unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].contains("secret-pw"), "{}", events[0]);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let (srv, mut c) = control_plane().await;
    c.create_pipe(create_req("a")).await.unwrap();
    pause(&mut c, "a").await;
    let before = list_all(&mut c).await;
    let dir = srv.stop().await;
    let srv = InProcess::start_in(dir, None).await;
    let mut c = srv.client().await;
    let after = list_all(&mut c).await;
    assert_eq!(before, after);
}

async fn expect_code<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(needle),
        "message {:?} should mention {needle:?}",
        e.message()
    );
}

#[tokio::test]
async fn create_rejects_bad_input_with_a_useful_message() {
    let (_srv, mut c) = control_plane().await;
    type Mutation = Box<dyn Fn(&mut CreatePipeRequest)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.name.clear()), "name is required"),
        (Box::new(|r| r.name = "Bad Name".into()), "lowercase"),
        (Box::new(|r| r.name = "x".repeat(64)), "at most 63"),
        (
            Box::new(|r| r.name = "a;drop table x".into()),
            "not allowed",
        ),
        (Box::new(|r| r.source = None), "source is required"),
        (
            Box::new(|r| r.source.as_mut().unwrap().connection_string.clear()),
            "connection_string is required",
        ),
        (
            Box::new(|r| r.source.as_mut().unwrap().connection_string = "x".repeat(5000)),
            "at most 4096",
        ),
        (
            Box::new(|r| {
                r.source.as_mut().unwrap().connection_string =
                    "host=h port=notaport dbname=d".into()
            }),
            "not a valid PostgreSQL connection string",
        ),
        (
            Box::new(|r| r.source.as_mut().unwrap().password = "again".into()),
            "given twice",
        ),
        (
            Box::new(|r| r.destination = None),
            "destination is required",
        ),
        (
            Box::new(|r| r.destination.as_mut().unwrap().url = "ftp://x".into()),
            "http or https",
        ),
        (
            Box::new(|r| r.destination.as_mut().unwrap().url = "not a url".into()),
            "not a URL",
        ),
        (
            Box::new(|r| r.destination.as_mut().unwrap().database.clear()),
            "destination.database is empty",
        ),
        (Box::new(|r| r.tables.clear()), "tables is empty"),
        (Box::new(|r| r.tables.push(table("orders"))), "listed twice"),
        (
            Box::new(|r| r.tables.push(table("other.orders"))),
            "used by two entries",
        ),
        (
            Box::new(|r| r.tables[0].source_table = "a.b.c".into()),
            "3 parts",
        ),
        (
            Box::new(|r| r.tables[0].source_table = "\"open".into()),
            "unterminated quote",
        ),
        (
            Box::new(|r| r.tables[0].destination_table = "x_resync".into()),
            "_resync",
        ),
        (
            Box::new(|r| r.tables[0].order_by = vec!["id".into(), "id".into()]),
            "twice",
        ),
        (
            Box::new(|r| r.tables[0].order_by = vec![String::new()]),
            "order_by[0] is empty",
        ),
        (
            Box::new(|r| {
                r.settings = Some(PipeSettings {
                    snapshot_parallelism: 1000,
                    ..Default::default()
                })
            }),
            "snapshot_parallelism",
        ),
        (
            Box::new(|r| {
                r.settings = Some(PipeSettings {
                    cdc_sync_interval_ms: 1,
                    ..Default::default()
                })
            }),
            "cdc_sync_interval_ms",
        ),
    ];
    for (i, (mutate, needle)) in cases.iter().enumerate() {
        let mut req = create_req(&format!("p{i}"));
        mutate(&mut req);
        let r = c.create_pipe(req).await;
        expect_code(r, Code::InvalidArgument, needle).await;
    }
    // Nothing was recorded by any of them.
    let all = list_all(&mut c).await;
    assert!(all.is_empty());
}

#[tokio::test]
async fn create_with_a_taken_name_is_already_exists() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("dup")).await.unwrap();
    expect_code(
        c.create_pipe(create_req("dup")).await,
        Code::AlreadyExists,
        "already exists",
    )
    .await;
}

#[tokio::test]
async fn a_deleted_name_can_be_created_again() {
    let (_srv, mut c) = control_plane().await;
    let first = create_pipe(&mut c, create_req("again")).await;
    delete_pipe(&mut c, "again").await;
    let second = create_pipe(&mut c, create_req("again")).await;
    assert_ne!(first.id, second.id);
}

#[tokio::test]
async fn unknown_pipes_are_not_found() {
    let (_srv, mut c) = control_plane().await;
    let n = || "ghost".to_string();
    expect_code(
        c.get_pipe(GetPipeRequest {
            name: n(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "ghost",
    )
    .await;
    expect_code(
        c.get_pipe(GetPipeRequest {
            id: "0000".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "0000",
    )
    .await;
    expect_code(
        c.delete_pipe(DeletePipeRequest {
            name: n(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "ghost",
    )
    .await;
    expect_code(
        c.pause_pipe(PausePipeRequest { name: n() }).await,
        Code::NotFound,
        "ghost",
    )
    .await;
    expect_code(
        c.resume_pipe(ResumePipeRequest { name: n() }).await,
        Code::NotFound,
        "ghost",
    )
    .await;
    expect_code(
        c.resync_pipe(ResyncPipeRequest {
            name: n(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "ghost",
    )
    .await;
    let r = c
        .watch_pipe(WatchPipeRequest {
            name: n(),
            ..Default::default()
        })
        .await;
    expect_code(r, Code::NotFound, "ghost").await;
}

#[tokio::test]
async fn get_needs_exactly_one_of_name_and_id() {
    let (_srv, mut c) = control_plane().await;
    expect_code(
        c.get_pipe(GetPipeRequest::default()).await,
        Code::InvalidArgument,
        "required",
    )
    .await;
    let both = GetPipeRequest {
        name: "a".into(),
        id: "b".into(),
    };
    expect_code(c.get_pipe(both).await, Code::InvalidArgument, "not both").await;
}

#[tokio::test]
async fn delete_twice_is_not_found_the_second_time() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("d")).await.unwrap();
    let del = || DeletePipeRequest {
        name: "d".into(),
        ..Default::default()
    };
    c.delete_pipe(del()).await.unwrap();
    expect_code(c.delete_pipe(del()).await, Code::NotFound, "deleted").await;
}

#[tokio::test]
async fn pause_and_resume_check_the_state() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("pr")).await.unwrap();
    let name = || "pr".to_string();
    expect_code(
        c.resume_pipe(ResumePipeRequest { name: name() }).await,
        Code::FailedPrecondition,
        "not paused",
    )
    .await;
    c.pause_pipe(PausePipeRequest { name: name() })
        .await
        .unwrap();
    expect_code(
        c.pause_pipe(PausePipeRequest { name: name() }).await,
        Code::FailedPrecondition,
        "already paused",
    )
    .await;
}

#[tokio::test]
async fn resync_overrides_are_checked_against_the_pipe() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("r")).await.unwrap();
    let o = ResyncPipeRequest {
        name: "r".into(),
        overrides: vec![TableConfig {
            source_table: "public.nope".into(),
            order_by: vec!["id".into()],
            ..Default::default()
        }],
        tables: vec![],
        ..Default::default()
    };
    expect_code(
        c.resync_pipe(o).await,
        Code::InvalidArgument,
        "not part of this pipe",
    )
    .await;
}

#[tokio::test]
async fn resync_carries_settings_over_and_applies_overrides() {
    let (_srv, mut c) = control_plane().await;
    let old = create_pipe(&mut c, create_req("r")).await;
    let o = ResyncPipeRequest {
        name: "r".into(),
        overrides: vec![TableConfig {
            source_table: "orders".into(),
            order_by: vec!["created_at".into(), "id".into()],
            ..Default::default()
        }],
        tables: vec![],
        ..Default::default()
    };
    let new = c.resync_pipe(o).await.unwrap().into_inner().pipe.unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.resync_of, old.id);
    assert!(new.resyncing);
    let (oc, nc) = (old.config.unwrap(), new.config.unwrap());
    assert_eq!(oc.source, nc.source);
    assert_eq!(oc.settings, nc.settings);
    assert_eq!(nc.tables[0].order_by, ["created_at", "id"]);
    assert_eq!(nc.tables[1], oc.tables[1]);
    let old_now = get_id(&mut c, &old.id).await;
    assert_eq!(status_of(&old_now), PipeStatus::Deleted);
    assert_eq!(old_now.delete_reason, "resync");
}

#[tokio::test]
async fn a_second_resync_while_one_runs_is_failed_precondition() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("r2")).await.unwrap();
    let req = || ResyncPipeRequest {
        name: "r2".into(),
        ..Default::default()
    };
    c.resync_pipe(req()).await.unwrap();
    expect_code(
        c.resync_pipe(req()).await,
        Code::FailedPrecondition,
        "already in progress",
    )
    .await;
}

#[tokio::test]
async fn racing_resyncs_start_exactly_one() {
    let srv = InProcess::start(None).await;
    let c = srv.client().await;
    c.clone().create_pipe(create_req("race")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.resync_pipe(ResyncPipeRequest {
                name: "race".into(),
                ..Default::default()
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn watch_cursor_from_the_future_is_out_of_range() {
    let (_srv, mut c) = control_plane().await;
    c.create_pipe(create_req("w")).await.unwrap();
    let r = c
        .watch_pipe(WatchPipeRequest {
            name: "w".into(),
            after_cursor: Some(99),
        })
        .await;
    expect_code(r, Code::OutOfRange, "ahead of the log").await;
    let r = c
        .watch_events(WatchEventsRequest {
            after_cursor: Some(99),
            ..Default::default()
        })
        .await;
    expect_code(r, Code::OutOfRange, "ahead of the log").await;
}

mod auth {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let v: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
        r
    }

    #[tokio::test]
    async fn with_a_token_configured_requests_without_it_are_unauthenticated() {
        let srv = InProcess::start(Some("t0ken")).await;
        let mut c = srv.client().await;
        let e = c.list_pipes(ListPipesRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .list_pipes(with_token(ListPipesRequest::default(), "wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(!e.message().contains("wrong"));
        let e = c
            .watch_events(WatchEventsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn with_the_right_token_requests_pass() {
        let srv = InProcess::start(Some("t0ken")).await;
        let mut c = srv.client().await;
        c.create_pipe(with_token(create_req("a"), "t0ken"))
            .await
            .unwrap();
        let l = c
            .list_pipes(with_token(ListPipesRequest::default(), "t0ken"))
            .await
            .unwrap();
        assert_eq!(l.into_inner().pipes.len(), 1);
    }

    #[tokio::test]
    async fn health_stays_open_with_a_token() {
        let srv = InProcess::start(Some("t0ken")).await;
        assert_eq!(health_status(&srv.url()).await, Some(1));
    }
}
