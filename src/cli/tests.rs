//! Client tests against an in-process mock server: argument parsing, the
//! assembled requests, auth metadata, output, exit codes, and watch/events
//! reconnection (including a real server restart mid-stream).

use std::collections::VecDeque;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use clap::{CommandFactory, Parser};
use futures::{Stream, StreamExt, stream};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::create::build_create_request;
use super::labels::parse_label_change;
use super::*;
use crate::proto::pipe_service_server::{PipeService, PipeServiceServer};
use crate::proto::{
    CaughtUp, CdcStarted, CreatePipeRequest, CreatePipeResponse, DeletePipeRequest,
    DeletePipeResponse, DeleteReason, Event, GetPipeHistoryRequest, GetPipeHistoryResponse,
    GetPipeRequest, GetPipeResponse, ListPipesRequest, ListPipesResponse, PausePipeRequest,
    PausePipeResponse, PipeCreated, PipeDeleted, PipeFailed, PipeStatus, ResumePipeRequest,
    ResumePipeResponse, ResyncPipeRequest, ResyncPipeResponse, ResyncStarted, SetPipeLabelsRequest,
    SnapshotProgress, StepStarted, TableStats, ValidatePipeRequest, ValidatePipeResponse,
    WatchEventsRequest, WatchEventsResponse, WatchPipeRequest, WatchPipeResponse, event::Payload,
    watch_events_response::Item,
};

/// The client commands as a standalone parser (the binary embeds them).
#[derive(Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    cmd: ClientCommand,
}

fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
    TestCli::try_parse_from(std::iter::once("pgpipe").chain(args.iter().copied()))
}

// ------------------------------------------------------------------ mock

type WatchScript = Vec<Result<WatchPipeResponse, Status>>;
type EventsScript = Vec<Result<WatchEventsResponse, Status>>;

#[derive(Default)]
struct MockState {
    watch_scripts: VecDeque<WatchScript>,
    events_scripts: VecDeque<EventsScript>,
    /// Keep streams open after their script (instead of ending them).
    hold_open: bool,
    watch_calls: Vec<(String, Option<u64>)>,
    events_calls: Vec<(String, Option<u64>)>,
    auth: Vec<Option<String>>,
    created: Vec<CreatePipeRequest>,
    resyncs: Vec<ResyncPipeRequest>,
}

#[derive(Clone, Default)]
struct Mock(Arc<Mutex<MockState>>);

impl Mock {
    fn state(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.0.lock().unwrap()
    }

    fn record_auth<T>(&self, req: &Request<T>) {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.state().auth.push(auth);
    }
}

fn pipe(id: &str, status: PipeStatus, cursor: u64) -> Pipe {
    Pipe {
        id: id.into(),
        name: "orders".into(),
        status: status as i32,
        cursor,
        tables: vec![TableStats {
            source_table: "public.orders".into(),
            destination_table: "orders".into(),
            snapshot_partitions_total: 4,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn state_msg(id: &str, status: PipeStatus, cursor: u64) -> WatchPipeResponse {
    WatchPipeResponse {
        cursor,
        pipe: Some(pipe(id, status, cursor)),
        event: None,
    }
}

fn event(seq: u64, id: &str, payload: Payload) -> Event {
    Event {
        seq,
        pipe_name: "orders".into(),
        pipe_id: id.into(),
        stream_version: seq,
        schema_version: 1,
        at: Some(prost_types::Timestamp {
            seconds: 1_709_210_096 + seq as i64,
            nanos: 0,
        }),
        payload: Some(payload),
    }
}

fn event_msg(seq: u64, id: &str, status: PipeStatus, payload: Payload) -> WatchPipeResponse {
    WatchPipeResponse {
        cursor: seq,
        pipe: Some(pipe(id, status, seq)),
        event: Some(event(seq, id, payload)),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn scripted<T: Send + 'static>(script: Vec<Result<T, Status>>, hold_open: bool) -> BoxStream<T> {
    let s = stream::iter(script);
    if hold_open {
        Box::pin(s.chain(stream::pending()))
    } else {
        Box::pin(s)
    }
}

#[tonic::async_trait]
impl PipeService for Mock {
    async fn create_pipe(
        &self,
        req: Request<CreatePipeRequest>,
    ) -> Result<Response<CreatePipeResponse>, Status> {
        self.record_auth(&req);
        let req = req.into_inner();
        let mut p = pipe("p1", PipeStatus::Setup, 3);
        p.name = req.name.clone();
        self.state().created.push(req);
        Ok(Response::new(CreatePipeResponse { pipe: Some(p) }))
    }

    async fn get_pipe(
        &self,
        req: Request<GetPipeRequest>,
    ) -> Result<Response<GetPipeResponse>, Status> {
        self.record_auth(&req);
        let req = req.into_inner();
        if req.name == "missing" {
            return Err(Status::not_found("pipe \"missing\" not found"));
        }
        Ok(Response::new(GetPipeResponse {
            pipe: Some(pipe("p1", PipeStatus::Running, 9)),
        }))
    }

    async fn list_pipes(
        &self,
        req: Request<ListPipesRequest>,
    ) -> Result<Response<ListPipesResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(ListPipesResponse {
            pipes: vec![pipe("p1", PipeStatus::Running, 9)],
        }))
    }

    async fn delete_pipe(
        &self,
        req: Request<DeletePipeRequest>,
    ) -> Result<Response<DeletePipeResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(DeletePipeResponse {
            pipe: Some(pipe("p1", PipeStatus::Deleted, 9)),
        }))
    }

    async fn pause_pipe(
        &self,
        req: Request<PausePipeRequest>,
    ) -> Result<Response<PausePipeResponse>, Status> {
        self.record_auth(&req);
        let mut p = pipe("p1", PipeStatus::Paused, 9);
        p.status_detail = "the replication slot retains WAL while paused".into();
        Ok(Response::new(PausePipeResponse { pipe: Some(p) }))
    }

    async fn resume_pipe(
        &self,
        req: Request<ResumePipeRequest>,
    ) -> Result<Response<ResumePipeResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(ResumePipeResponse {
            pipe: Some(pipe("p1", PipeStatus::Running, 9)),
        }))
    }

    async fn set_pipe_labels(
        &self,
        req: Request<SetPipeLabelsRequest>,
    ) -> Result<Response<crate::proto::SetPipeLabelsResponse>, Status> {
        self.record_auth(&req);
        let r = req.into_inner();
        let mut p = pipe(&r.name, PipeStatus::Running, 9);
        p.labels = r.labels;
        Ok(Response::new(crate::proto::SetPipeLabelsResponse {
            pipe: Some(p),
        }))
    }

    async fn resync_pipe(
        &self,
        req: Request<ResyncPipeRequest>,
    ) -> Result<Response<ResyncPipeResponse>, Status> {
        self.record_auth(&req);
        self.state().resyncs.push(req.into_inner());
        let mut p = pipe("p2", PipeStatus::Setup, 10);
        p.resync_of = "p1".into();
        p.resyncing = true;
        Ok(Response::new(ResyncPipeResponse { pipe: Some(p) }))
    }

    async fn validate_pipe(
        &self,
        req: Request<ValidatePipeRequest>,
    ) -> Result<Response<ValidatePipeResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(ValidatePipeResponse {
            ok: true,
            problems: Vec::new(),
        }))
    }

    async fn get_pipe_history(
        &self,
        req: Request<GetPipeHistoryRequest>,
    ) -> Result<Response<GetPipeHistoryResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(GetPipeHistoryResponse::default()))
    }

    async fn update_pipe(
        &self,
        req: Request<crate::proto::UpdatePipeRequest>,
    ) -> Result<Response<crate::proto::UpdatePipeResponse>, Status> {
        self.record_auth(&req);
        let r = req.into_inner();
        let mut p = pipe(&r.name, PipeStatus::Running, 9);
        for t in r.add_tables {
            p.tables.push(crate::proto::TableStats {
                source_table: t.source_table,
                state: crate::proto::TableState::LoadPending as i32,
                ..Default::default()
            });
        }
        Ok(Response::new(crate::proto::UpdatePipeResponse {
            pipe: Some(p),
            ..Default::default()
        }))
    }

    async fn get_pipe_throughput(
        &self,
        req: Request<crate::proto::GetPipeThroughputRequest>,
    ) -> Result<Response<crate::proto::GetPipeThroughputResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(Default::default()))
    }

    async fn get_load_summary(
        &self,
        req: Request<crate::proto::GetLoadSummaryRequest>,
    ) -> Result<Response<crate::proto::GetLoadSummaryResponse>, Status> {
        self.record_auth(&req);
        Ok(Response::new(Default::default()))
    }

    type WatchPipeStream = BoxStream<WatchPipeResponse>;

    async fn watch_pipe(
        &self,
        req: Request<WatchPipeRequest>,
    ) -> Result<Response<Self::WatchPipeStream>, Status> {
        self.record_auth(&req);
        let req = req.into_inner();
        let mut st = self.state();
        st.watch_calls.push((req.name, req.after_cursor));
        let script = st
            .watch_scripts
            .pop_front()
            .ok_or_else(|| Status::failed_precondition("no more watch scripts"))?;
        Ok(Response::new(scripted(script, st.hold_open)))
    }

    type WatchEventsStream = BoxStream<WatchEventsResponse>;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.record_auth(&req);
        let req = req.into_inner();
        let mut st = self.state();
        st.events_calls.push((req.pipe_name, req.after_cursor));
        let script = st
            .events_scripts
            .pop_front()
            .ok_or_else(|| Status::failed_precondition("no more events scripts"))?;
        Ok(Response::new(scripted(script, st.hold_open)))
    }
}

async fn start(mock: Mock) -> ClientOpts {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(PipeServiceServer::new(mock))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    ClientOpts {
        server: format!("http://{addr}"),
        token: Some("s3cret".into()),
        ca_cert: None,
    }
}

/// Serves `mock` on `listener` from a runtime of its own; sending on the
/// returned channel kills that runtime, dropping every connection.
fn serve_killable(mock: Mock, listener: std::net::TcpListener) -> std::sync::mpsc::Sender<()> {
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            Server::builder()
                .add_service(PipeServiceServer::new(mock))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
        });
        let _ = killed.recv();
        rt.shutdown_background();
    });
    kill
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn capture() -> (Out, Buf) {
    let buf = Buf::default();
    (
        Out {
            w: Box::new(buf.clone()),
        },
        buf,
    )
}

fn cmd(args: &[&str]) -> ClientCommand {
    parse(args).unwrap().cmd
}

// ----------------------------------------------------------------- tests

#[test]
fn clap_definitions_are_valid() {
    TestCli::command().debug_assert();
}

#[test]
fn argument_parsing() {
    let cli = parse(&[
        "create",
        "orders",
        "--source",
        "host=db user=u",
        "--source-password-env",
        "PGPW",
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--table",
        "public.orders::id,created_at",
        "--table",
        "public.items:items2",
        "--parallelism",
        "8",
        "--server",
        "10.0.0.1:50051",
    ])
    .unwrap();
    assert_eq!(cli.opts.server, "10.0.0.1:50051");
    let ClientCommand::Create(a) = cli.cmd else {
        panic!("not create");
    };
    assert_eq!(a.tables.len(), 2);
    assert_eq!(a.tables[0].order_by, vec!["id", "created_at"]);
    assert_eq!(a.tables[1].destination_table, "items2");
    assert_eq!(a.parallelism, Some(8));

    // Missing required options, bad specs and out-of-range values fail.
    assert!(parse(&["create", "x", "--source", "s"]).is_err());
    assert!(parse(&["create", "--file", "p.json"]).is_ok());
    assert!(
        parse(&[
            "create",
            "x",
            "--source",
            "s",
            "--ch-url",
            "u",
            "--ch-database",
            "d",
            "--table",
            "a.b.c"
        ])
        .is_err()
    );
    assert!(parse(&["create", "--file", "f", "--parallelism", "65"]).is_err());
    assert!(
        parse(&[
            "create",
            "--file",
            "f",
            "--source-password-stdin",
            "--ch-password-stdin"
        ])
        .is_err()
    );
    // get: a name or --id, not both, not neither.
    assert!(parse(&["get"]).is_err());
    assert!(parse(&["get", "x", "--id", "y"]).is_err());
    assert!(parse(&["get", "--id", "y"]).is_ok());
    let ClientCommand::Resync(r) = cmd(&[
        "resync",
        "orders",
        "--order-by",
        "public.orders=id,ts",
        "--dest",
        "public.orders=orders_v2",
        "--wait",
    ]) else {
        panic!("not resync");
    };
    assert_eq!(
        r.order_by,
        vec![("public.orders".into(), vec!["id".into(), "ts".into()])]
    );
    assert!(r.wait);
    assert!(parse(&["resync", "orders", "--order-by", "public.orders"]).is_err());
    let ClientCommand::Watch(w) = cmd(&["watch", "orders", "--after", "42", "--json"]) else {
        panic!("not watch");
    };
    assert_eq!((w.after, w.json, w.until_running), (Some(42), true, false));
}

#[test]
fn token_is_never_shown() {
    let cli = parse(&["--token", "hunter2", "list"]).unwrap();
    assert!(!format!("{cli:?}").contains("hunter2"));
    let help = TestCli::command().render_long_help().to_string();
    assert!(help.contains("PGPIPE_TOKEN"));
    assert!(AuthInterceptor::new(Some("bad\ntoken")).is_err());
    assert!(AuthInterceptor::new(Some("")).unwrap().header.is_none());
    assert_eq!(normalize_server("127.0.0.1:1"), "http://127.0.0.1:1");
    assert_eq!(normalize_server("https://x:1"), "https://x:1");
}

#[test]
fn create_request_from_options_env_stdin_and_file() {
    let env = |var: &str| match var {
        "PGPW" => Some("pg-secret".into()),
        _ => None,
    };
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "orders",
        "--source",
        "host=db user=u",
        "--source-password-env",
        "PGPW",
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--ch-password-stdin",
        "--table",
        "public.orders",
        "--batch-size",
        "500",
        "--drop-dropped-columns",
    ]) else {
        panic!()
    };
    let req = build_create_request(&a, &env, &mut Cursor::new("ch-secret\r\nrest\n")).unwrap();
    let source = req.source.unwrap();
    assert_eq!(source.connection_string, "host=db user=u");
    assert_eq!(source.password, "pg-secret");
    let dest = req.destination.unwrap();
    assert_eq!(dest.password, "ch-secret");
    assert_eq!(dest.database, "an");
    let settings = req.settings.unwrap();
    assert_eq!(settings.cdc_batch_size, 500);
    assert_eq!(settings.snapshot_parallelism, 0, "0 = server default");
    assert!(settings.drop_dropped_columns);

    // A missing env var or an empty stdin is an error.
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "x",
        "--source",
        "s",
        "--ch-url",
        "u",
        "--ch-database",
        "d",
        "--table",
        "t",
        "--ch-password-env",
        "NOPE",
    ]) else {
        panic!()
    };
    let err = build_create_request(&a, &env, &mut Cursor::new("")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable NOPE (named by --ch-password-env) is not set"
    );
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "x",
        "--source",
        "s",
        "--ch-url",
        "u",
        "--ch-database",
        "d",
        "--table",
        "t",
        "--source-password-stdin",
    ]) else {
        panic!()
    };
    assert!(build_create_request(&a, &env, &mut Cursor::new("")).is_err());

    // --file - from stdin, with options overriding it.
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "--file",
        "-",
        "--table",
        "public.b",
        "--parallelism",
        "2",
    ]) else {
        panic!()
    };
    let file = r#"{"name": "from-file", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": ["public.a"], "settings": {"snapshot_parallelism": 16, "cdcBatchSize": 7}}"#;
    let req = build_create_request(&a, &env, &mut Cursor::new(file)).unwrap();
    assert_eq!(req.name, "from-file");
    assert_eq!(req.tables.len(), 1);
    assert_eq!(req.tables[0].source_table, "public.b");
    let s = req.settings.unwrap();
    assert_eq!((s.snapshot_parallelism, s.cdc_batch_size), (2, 7));
}

#[test]
fn create_takes_column_options_for_listed_tables() {
    let env = |_: &str| None;
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "users",
        "--source",
        "host=db",
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--table",
        "public.users",
        "--exclude",
        "public.users=password_hash",
        "--rename",
        "users=desc:description,note:remark",
    ]) else {
        panic!()
    };
    let req = build_create_request(&a, &env, &mut Cursor::new("")).unwrap();
    let t = &req.tables[0];
    assert_eq!(t.exclude_columns, ["password_hash"]);
    assert_eq!(t.rename_columns["desc"], "description");
    assert_eq!(t.rename_columns["note"], "remark");

    // From a file too; an option for a table not listed is a usage error.
    let ClientCommand::Create(a) = cmd(&["create", "--file", "-", "--exclude", "public.other=x"])
    else {
        panic!()
    };
    let file = r#"{"name": "f", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": [{"sourceTable": "public.users", "excludeColumns": ["password_hash"],
                               "renameColumns": {"desc": "description"}}]}"#;
    let err = build_create_request(&a, &env, &mut Cursor::new(file)).unwrap_err();
    assert!(err.to_string().contains("no --table"), "{err}");
    let req =
        crate::cli::json::create_request_from_json(&serde_json::from_str(file).unwrap()).unwrap();
    assert_eq!(req.tables[0].exclude_columns, ["password_hash"]);
    assert_eq!(req.tables[0].rename_columns["desc"], "description");
}

#[test]
fn create_and_resync_take_column_types() {
    let env = |_: &str| None;
    let ClientCommand::Create(a) = cmd(&[
        "create",
        "people",
        "--source",
        "host=db",
        "--ch-url",
        "http://ch:8123",
        "--ch-database",
        "an",
        "--table",
        "public.people",
        "--type",
        "public.people=score:Decimal(20, 4),born:Int32",
        "--type",
        "people=doc:JSON",
    ]) else {
        panic!()
    };
    let req = build_create_request(&a, &env, &mut Cursor::new("")).unwrap();
    let types = &req.tables[0].column_types;
    assert_eq!(types["score"], "Decimal(20, 4)");
    assert_eq!(types["born"], "Int32");
    assert_eq!(types["doc"], "JSON");
    // A malformed flag is a usage error before anything is sent.
    assert!(parse(&["create", "x", "--type", "public.people=born"]).is_err());

    let file = r#"{"name": "f", "source": {"connection_string": "host=a"},
                   "destination": {"url": "http://ch", "database": "d"},
                   "tables": [{"sourceTable": "public.people",
                               "columnTypes": {"born": "String"}}]}"#;
    let req =
        crate::cli::json::create_request_from_json(&serde_json::from_str(file).unwrap()).unwrap();
    assert_eq!(req.tables[0].column_types["born"], "String");

    let ClientCommand::Resync(r) = cmd(&["resync", "people", "--type", "people=born:String"])
    else {
        panic!()
    };
    assert_eq!(
        r.types,
        [(
            "people".to_string(),
            vec![("born".to_string(), "String".to_string())]
        )]
    );
}

#[tokio::test]
async fn unary_commands_and_errors() {
    let mock = Mock::default();
    let opts = start(mock.clone()).await;

    let (mut out, buf) = capture();
    let code = execute(&opts, cmd(&["get", "orders", "--json"]), &mut out, false)
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v: Value = serde_json::from_str(&buf.lines().join("\n")).unwrap();
    assert_eq!(v["status"], "PIPE_STATUS_RUNNING");

    let err = execute(&opts, cmd(&["get", "missing"]), &mut out, false)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "NOT_FOUND: pipe \"missing\" not found");

    let (mut out, buf) = capture();
    execute(&opts, cmd(&["list"]), &mut out, false)
        .await
        .unwrap();
    execute(&opts, cmd(&["pause", "orders"]), &mut out, false)
        .await
        .unwrap();
    execute(
        &opts,
        cmd(&["delete", "orders", "--drop-tables"]),
        &mut out,
        false,
    )
    .await
    .unwrap();
    let lines = buf.lines();
    assert!(lines[0].starts_with("NAME"), "{lines:?}");
    assert!(lines[1].starts_with("orders  running"), "{lines:?}");
    assert_eq!(lines[2], "pipe orders paused: status paused");
    assert_eq!(
        lines[3],
        "note: the replication slot retains WAL while paused"
    );
    assert_eq!(
        lines[4],
        "pipe orders deleted (id p1); destination tables dropped"
    );

    let auth = mock.state().auth.clone();
    assert_eq!(auth.len(), 5);
    assert!(auth.iter().all(|a| a.as_deref() == Some("Bearer s3cret")));

    // Nothing listening: a connection error, exit 2 material.
    let down = ClientOpts {
        server: "http://127.0.0.1:1".into(),
        token: None,
        ca_cert: None,
    };
    let err = execute(&down, cmd(&["list"]), &mut out, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CliError::Connect { .. }),
        "{err}: connection refused expected"
    );
}

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
            Ok(event_msg(
                13,
                "p2",
                PipeStatus::Running,
                Payload::CdcStarted(CdcStarted {
                    start_lsn: "0/16B3748".into(),
                }),
            )),
        ]);
    }
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    let code = execute(
        &opts,
        cmd(&[
            "resync",
            "orders",
            "--order-by",
            "public.orders=id",
            "--wait",
            "--json",
        ]),
        &mut out,
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
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
    let mock = Mock::default();
    mock.state().watch_scripts.push_back(vec![
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
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    let code = execute(
        &opts,
        cmd(&["watch", "orders", "--until-running"]),
        &mut out,
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, ExitCode::from(EXIT_PIPE_FAILED));
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
    let mock = Mock::default();
    mock.state().watch_scripts.push_back(vec![
        Ok(state_msg("p1", PipeStatus::Running, 5)),
        Ok(event_msg(
            6,
            "p1",
            PipeStatus::Deleted,
            Payload::PipeDeleted(PipeDeleted {
                reason: DeleteReason::User as i32,
                drop_destination_tables: false,
            }),
        )),
    ]);
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    let code = execute(&opts, cmd(&["watch", "orders"]), &mut out, false)
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        buf.lines().last().map(String::as_str),
        Some("stream ended (pipe deleted)")
    );
}

#[tokio::test]
async fn watch_follows_a_resync_across_incarnations() {
    let mock = Mock::default();
    mock.state().watch_scripts.push_back(vec![
        Ok(state_msg("p1", PipeStatus::Running, 5)),
        Ok(event_msg(
            6,
            "p1",
            PipeStatus::Deleted,
            Payload::PipeDeleted(PipeDeleted {
                reason: DeleteReason::Resync as i32,
                drop_destination_tables: false,
            }),
        )),
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
        Ok(event_msg(
            8,
            "p2",
            PipeStatus::Running,
            Payload::CdcStarted(CdcStarted {
                start_lsn: "0/1".into(),
            }),
        )),
    ]);
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    let code = execute(
        &opts,
        cmd(&["watch", "orders", "--until-running"]),
        &mut out,
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
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
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    let err = execute(
        &opts,
        cmd(&["events", "--after", "0", "--pipe", "orders", "--json"]),
        &mut out,
        false,
    )
    .await
    .unwrap_err();
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
        execute(
            &opts,
            cmd(&["watch", "orders", "--until-running", "--json"]),
            &mut out,
            false,
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

#[test]
fn label_arguments() {
    assert_eq!(
        parse_label_change("env=prod").unwrap(),
        LabelChange::Set("env".into(), "prod".into())
    );
    assert_eq!(
        parse_label_change("env-").unwrap(),
        LabelChange::Remove("env".into())
    );
    // A `-` before `=` is part of the key; the value may hold `=`.
    assert_eq!(
        parse_label_change("a-=x=y").unwrap(),
        LabelChange::Set("a-".into(), "x=y".into())
    );
    assert_eq!(
        parse_label_change("empty=").unwrap(),
        LabelChange::Set("empty".into(), String::new())
    );
    for bad in ["novalue", "=x", "-", ""] {
        assert!(parse_label_change(bad).is_err(), "{bad}");
    }
    assert!(parse_label("k").is_err());
}

#[test]
fn schema_events_read_as_one_line_each() {
    use crate::proto::event::Payload;
    use crate::proto::{Event, SchemaChangeKind, SchemaChanged, TableFailed};
    let ev = |p| Event {
        payload: Some(p),
        ..Default::default()
    };
    let text = super::format::event_text(&ev(Payload::SchemaChanged(SchemaChanged {
        source_table: "public.t".into(),
        kind: SchemaChangeKind::RenameColumn as i32,
        column: "a".into(),
        new_column: "b".into(),
        lsn: "0/10".into(),
        clickhouse: "ALTER TABLE ...".into(),
        ..Default::default()
    })));
    assert_eq!(
        text,
        "public.t: column a renamed to b at 0/10; clickhouse: ALTER TABLE ..."
    );
    let text = super::format::event_text(&ev(Payload::TableFailed(TableFailed {
        source_table: "public.t".into(),
        reason: "resync this table".into(),
        lsn: "0/11".into(),
    })));
    assert_eq!(text, "table public.t FAILED at 0/11: resync this table");
}
