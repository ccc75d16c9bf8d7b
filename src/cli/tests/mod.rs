//! Client tests against an in-process mock server. This file holds the
//! harness (the mock `PipeService`, output capture, parsing); the tests sit
//! by subject: `args` (argument parsing), `create` (assembled create and
//! resync requests), `unary` (one-call commands, output and exit codes) and
//! `streams` (watch/events reconnection, including a real server restart).

mod args;
mod create;
mod streams;
mod unary;

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
    /// A mock whose (first) WatchPipe stream plays `script`.
    fn watching(script: Vec<Result<WatchPipeResponse, Status>>) -> Self {
        let mock = Mock::default();
        mock.state().watch_scripts.push_back(script);
        mock
    }

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

/// The pipe deleted (not dropping its tables), as a watch message.
fn deleted_msg(seq: u64, id: &str, reason: DeleteReason) -> WatchPipeResponse {
    let deleted = PipeDeleted {
        reason: reason as i32,
        drop_destination_tables: false,
    };
    event_msg(seq, id, PipeStatus::Deleted, Payload::PipeDeleted(deleted))
}

/// CDC started at `lsn`, the pipe RUNNING, as a watch message.
fn cdc_started_msg(seq: u64, id: &str, lsn: &str) -> WatchPipeResponse {
    let started = CdcStarted {
        start_lsn: lsn.into(),
    };
    event_msg(seq, id, PipeStatus::Running, Payload::CdcStarted(started))
}

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

/// Serves `mock` and runs the command `args` against it once.
async fn run(mock: &Mock, args: &[&str]) -> (Result<ExitCode, CliError>, Buf) {
    let opts = start(mock.clone()).await;
    let (mut out, buf) = capture();
    (exec(&opts, args, &mut out).await, buf)
}

/// Runs the command `args` (no progress bars).
async fn exec(opts: &ClientOpts, args: &[&str], out: &mut Out) -> Result<ExitCode, CliError> {
    execute(opts, cmd(args), out, false).await
}
