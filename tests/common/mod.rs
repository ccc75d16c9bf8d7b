//! Shared test harness: a pgpipe server in-process or as a child process,
//! and request builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod data;
pub mod peers;
pub mod proxy;
pub mod wait;
pub mod workload;

use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::*;
use pgpipe::server::{self, ServeConfig, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::client::GrpcService;
use tonic::codegen::{Body, Bytes, StdError};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub type Client = PipeServiceClient<Channel>;

/// A client sending `authorization: Bearer <token>` with every request.
pub type AuthedClient = PipeServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let v: MetadataValue<_> = format!("Bearer {}", self.0).parse().unwrap();
        r.metadata_mut().insert("authorization", v);
        Ok(r)
    }
}

/// A client of `url` that sends `token`.
pub async fn authed(url: &str, token: &str) -> AuthedClient {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    PipeServiceClient::with_interceptor(channel, Bearer(token.to_owned()))
}

/// What a PipeServiceClient can run on: a channel, with an interceptor or
/// not (so helpers serve [`Client`] and [`AuthedClient`] alike).
pub trait Transport:
    GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    >
{
}

impl<T> Transport for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        >
{
}

/// A server running inside the test process.
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set when the server serves TLS: how clients trust it.
    client_tls: Option<ClientTlsConfig>,
}

impl InProcess {
    /// The control plane alone (no data plane, no peers needed).
    pub async fn start(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, token).await
    }

    pub async fn start_in(dir: tempfile::TempDir, token: Option<&str>) -> Self {
        Self::start_with(dir, token, false).await
    }

    /// The whole service, pipes moving data.
    pub async fn start_engine() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), None, true).await
    }

    pub async fn start_with(dir: tempfile::TempDir, token: Option<&str>, engine: bool) -> Self {
        Self::start_full(dir, token, engine, None).await
    }

    /// A server on TLS with `files`; its clients use `client_tls`.
    pub async fn start_tls(engine: bool, files: TlsFiles, client_tls: ClientTlsConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_full(dir, None, engine, Some((files, client_tls))).await
    }

    async fn start_full(
        dir: tempfile::TempDir,
        token: Option<&str>,
        engine: bool,
        tls: Option<(TlsFiles, ClientTlsConfig)>,
    ) -> Self {
        let (tls, client_tls) = tls.unzip();
        // PGPIPE_TEST_LOG=pgpipe=debug shows the service's logs in a test.
        if let Ok(filter) = std::env::var("PGPIPE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = ServeConfig {
            listen: addr,
            data_dir: dir.path().join("data"),
            token: token.map(str::to_owned),
            engine,
            tls,
            metrics_listen: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_on(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let s = Self {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
            client_tls,
        };
        s.wait_serving().await;
        s
    }

    /// `https://localhost:PORT` on TLS (the name in the test certificates).
    pub fn url(&self) -> String {
        match &self.client_tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// An endpoint for this server, with the client TLS settings if any.
    pub fn endpoint(&self) -> Endpoint {
        let e = Endpoint::from_shared(self.url()).unwrap();
        match &self.client_tls {
            Some(tls) => e.tls_config(tls.clone()).unwrap(),
            None => e,
        }
    }

    pub async fn client(&self) -> Client {
        if self.client_tls.is_none() {
            return connect(&self.url()).await;
        }
        for _ in 0..100 {
            if let Ok(ch) = self.endpoint().connect().await {
                return PipeServiceClient::new(ch);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not connect to {}", self.url());
    }

    async fn wait_serving(&self) {
        for _ in 0..400 {
            if health_of(self.endpoint()).await == Some(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server at {} never reported SERVING", self.url());
    }

    /// Graceful stop; returns the data directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server did not shut down within 10 s")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// An in-process control plane (no data plane) and a client of it.
pub async fn control_plane() -> (InProcess, Client) {
    let srv = InProcess::start(None).await;
    let c = srv.client().await;
    (srv, c)
}

/// An in-process engine and a client of it.
pub async fn engine() -> (InProcess, Client) {
    let srv = InProcess::start_engine().await;
    let c = srv.client().await;
    (srv, c)
}

pub async fn connect(url: &str) -> Client {
    for _ in 0..100 {
        if let Ok(c) = PipeServiceClient::connect(url.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not connect to {url}");
}

pub async fn health_status(url: &str) -> Option<i32> {
    health_of(Channel::from_shared(url.to_owned()).ok()?).await
}

/// The health status the server at `endpoint` reports (None: no answer).
pub async fn health_of(endpoint: Endpoint) -> Option<i32> {
    let channel = endpoint.connect().await.ok()?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pgpipe.v1.PipeService".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

pub async fn wait_serving(url: &str) {
    for _ in 0..400 {
        if health_status(url).await == Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {url} never reported SERVING");
}

/// The pgpipe binary as a child process (killed on drop).
pub struct Proc {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Proc {
    /// The control plane alone.
    pub fn spawn(data_dir: &Path, envs: &[(&str, &str)]) -> Self {
        let mut all = vec![("PGPIPE_CONTROL_PLANE_ONLY", "true")];
        all.extend_from_slice(envs);
        Self::spawn_with(data_dir, &all)
    }

    /// The whole service.
    pub fn spawn_engine(data_dir: &Path, envs: &[(&str, &str)]) -> Self {
        Self::spawn_with(data_dir, envs)
    }

    fn spawn_with(data_dir: &Path, envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpipe"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("PGPIPE_TOKEN")
            .env_remove("PGPIPE_CONTROL_PLANE_ONLY")
            .env("PGPIPE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pgpipe");
        let addr = listen_addr(&mut child);
        Self {
            child,
            addr,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The control plane alone as a child process, serving, and a client of it.
    pub async fn start(data_dir: &Path) -> (Self, Client) {
        let p = Self::spawn(data_dir, &[]);
        wait_serving(&p.url()).await;
        let c = connect(&p.url()).await;
        (p, c)
    }

    /// The whole service as a child process, serving, and a client of it.
    pub async fn start_engine(data_dir: &Path, envs: &[(&str, &str)]) -> (Self, Client) {
        let p = Self::spawn_engine(data_dir, envs);
        wait_serving(&p.url()).await;
        let c = connect(&p.url()).await;
        (p, c)
    }

    /// The whole service with `failpoints` (`PGPIPE_FAILPOINTS`; none if
    /// empty), serving, and a client of it.
    pub async fn start_with_failpoints(data_dir: &Path, failpoints: &str) -> (Self, Client) {
        let envs: &[(&str, &str)] = if failpoints.is_empty() {
            &[]
        } else {
            &[("PGPIPE_FAILPOINTS", failpoints)]
        };
        Self::start_engine(data_dir, envs).await
    }

    /// Waits for the process to end by itself (e.g. a fail-point fired).
    pub async fn wait_exit(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fail-point never fired"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

/// The address a `pgpipe serve` child prints first on its stdout (which
/// must be piped): `pgpipe listening on ADDR`.
pub fn listen_addr(child: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("pgpipe listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn table(source: &str) -> TableConfig {
    TableConfig {
        source_table: source.into(),
        ..Default::default()
    }
}

/// A valid CreatePipe request (the ends need not exist for the control
/// plane alone).
pub fn create_req(name: &str) -> CreatePipeRequest {
    CreatePipeRequest {
        name: name.into(),
        source: Some(SourceConfig {
            connection_string: "postgres://app:pg-secret-pw@127.0.0.1:5432/app".into(),
            password: String::new(),
        }),
        destination: Some(DestinationConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "analytics".into(),
            user: "default".into(),
            password: "ch-secret-pw".into(),
            ca_cert: String::new(),
        }),
        tables: vec![table("public.orders"), table("public.customers")],
        settings: None,
        labels: Default::default(),
    }
}

/// The ValidatePipe request checking what `r` would create.
pub fn validate_req(r: CreatePipeRequest) -> ValidatePipeRequest {
    ValidatePipeRequest {
        name: r.name,
        source: r.source,
        destination: r.destination,
        tables: r.tables,
        settings: r.settings,
        labels: r.labels,
    }
}

/// Adds `tables` to the running pipe `name`.
pub fn add_tables_req(name: &str, tables: Vec<TableConfig>) -> UpdatePipeRequest {
    UpdatePipeRequest {
        name: name.into(),
        add_tables: tables,
        ..Default::default()
    }
}

/// The pipe's history events (of `kind`, or all), first page of 1000.
pub async fn history(c: &mut Client, name: &str, kind: Option<HistoryKind>) -> Vec<Event> {
    c.get_pipe_history(GetPipeHistoryRequest {
        name: name.into(),
        kind: kind.map_or(0, |k| k as i32),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

/// An HTTP/1.1 request without a body: status, head and body of the answer
/// (status 0 if there is none).
pub async fn http(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

/// GET `path`: status and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http(addr, "GET", path).await?;
    Ok((status, body))
}

/// A second ClickHouse front (`dev/chfront.py`, or `PGPIPE_CHFRONT_PY`)
/// that wants a user and password, on a free port; killed on drop.
pub struct AuthFront {
    child: Child,
    dir: tempfile::TempDir,
    pub url: String,
}

impl AuthFront {
    /// Starts it and waits until it answers `/ping`.
    pub async fn start(user: &str, password: &str) -> Self {
        let script = std::env::var("PGPIPE_CHFRONT_PY")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/dev/chfront.py").to_string());
        let port = peers::free_port();
        let dir = tempfile::Builder::new()
            .prefix("chfront-auth-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("front.log")).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--user", user, "--password", password])
            .arg("--data")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {script}: {e}"));
        let mut front = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&addr, "/ping").await {
                return front;
            }
            if front.child.try_wait().unwrap().is_some() || tokio::time::Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(front.dir.path().join("front.log")).unwrap_or_default();
                panic!("auth front on {addr} did not come up:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AuthFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pipe's current incarnation, by name.
pub async fn get(c: &mut PipeServiceClient<impl Transport>, name: &str) -> Pipe {
    let by_name = GetPipeRequest {
        name: name.into(),
        ..Default::default()
    };
    c.get_pipe(by_name)
        .await
        .unwrap()
        .into_inner()
        .pipe
        .unwrap()
}

/// One incarnation, by id.
pub async fn get_id(c: &mut PipeServiceClient<impl Transport>, id: &str) -> Pipe {
    let by_id = GetPipeRequest {
        id: id.into(),
        ..Default::default()
    };
    c.get_pipe(by_id).await.unwrap().into_inner().pipe.unwrap()
}

/// Deletes the pipe; returns the deleted incarnation.
pub async fn delete_pipe(c: &mut PipeServiceClient<impl Transport>, name: &str) -> Pipe {
    c.delete_pipe(DeletePipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .pipe
    .unwrap()
}

/// The live pipes, as a plain ListPipes lists them.
pub async fn list_live(c: &mut PipeServiceClient<impl Transport>) -> Vec<Pipe> {
    let r = c.list_pipes(ListPipesRequest::default()).await.unwrap();
    r.into_inner().pipes
}

/// Every pipe incarnation the server knows, deleted ones included.
pub async fn list_all(c: &mut PipeServiceClient<impl Transport>) -> Vec<Pipe> {
    c.list_pipes(ListPipesRequest {
        include_deleted: true,
        label_selector: Default::default(),
    })
    .await
    .unwrap()
    .into_inner()
    .pipes
}

/// Names of the live pipes whose labels match `label_selector` (all when
/// it is empty), as ListPipes orders them.
pub async fn live_names(
    c: &mut Client,
    label_selector: std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    c.list_pipes(ListPipesRequest {
        include_deleted: false,
        label_selector,
    })
    .await
    .unwrap()
    .into_inner()
    .pipes
    .into_iter()
    .map(|p| p.name)
    .collect()
}

/// CreatePipe; the new incarnation.
pub async fn create_pipe(
    c: &mut PipeServiceClient<impl Transport>,
    req: CreatePipeRequest,
) -> Pipe {
    c.create_pipe(req).await.unwrap().into_inner().pipe.unwrap()
}

/// PausePipe; the paused incarnation.
pub async fn pause(c: &mut PipeServiceClient<impl Transport>, name: &str) -> Pipe {
    let req = PausePipeRequest { name: name.into() };
    c.pause_pipe(req).await.unwrap().into_inner().pipe.unwrap()
}

/// ResumePipe; the resumed incarnation.
pub async fn resume(c: &mut PipeServiceClient<impl Transport>, name: &str) -> Pipe {
    let req = ResumePipeRequest { name: name.into() };
    c.resume_pipe(req).await.unwrap().into_inner().pipe.unwrap()
}

/// A whole-pipe ResyncPipe; the new incarnation.
pub async fn resync(
    c: &mut PipeServiceClient<impl Transport>,
    name: &str,
) -> Result<Pipe, tonic::Status> {
    c.resync_pipe(ResyncPipeRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pipe.unwrap())
}

/// WatchEvents over the whole log, from the first event.
pub async fn watch_all(
    c: &mut PipeServiceClient<impl Transport>,
) -> tonic::Streaming<WatchEventsResponse> {
    c.watch_events(WatchEventsRequest {
        after_cursor: Some(0),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// WatchPipe of `name` after `after_cursor` (None: its state, then live).
pub async fn watch_pipe(
    c: &mut PipeServiceClient<impl Transport>,
    name: &str,
    after_cursor: Option<u64>,
) -> tonic::Streaming<WatchPipeResponse> {
    let req = WatchPipeRequest {
        name: name.into(),
        after_cursor,
    };
    c.watch_pipe(req).await.unwrap().into_inner()
}

/// Every event from the start, read through WatchEvents up to its
/// caught-up marker, and that cursor (the log's head).
pub async fn all_events(c: &mut PipeServiceClient<impl Transport>) -> (Vec<Event>, u64) {
    let mut s = watch_all(c).await;
    let mut events = Vec::new();
    loop {
        match next_item(&mut s, Duration::from_secs(30)).await {
            watch_events_response::Item::Event(e) => events.push(e),
            watch_events_response::Item::CaughtUp(cu) => return (events, cu.cursor),
        }
    }
}

/// The next item of a WatchEvents stream (panics if none comes in `wait`).
pub async fn next_item(
    s: &mut tonic::Streaming<WatchEventsResponse>,
    wait: Duration,
) -> watch_events_response::Item {
    loop {
        let m = tokio::time::timeout(wait, s.message())
            .await
            .unwrap_or_else(|_| panic!("WatchEvents said nothing for {wait:?}"))
            .unwrap()
            .expect("WatchEvents ended before caught_up");
        if let Some(item) = m.item {
            return item;
        }
    }
}

/// The log's head: the caught-up cursor a fresh live WatchEvents reports.
pub async fn log_head(c: &mut PipeServiceClient<impl Transport>) -> u64 {
    let mut s = c
        .watch_events(WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    loop {
        let item = next_item(&mut s, Duration::from_secs(10)).await;
        if let watch_events_response::Item::CaughtUp(cu) = item {
            return cu.cursor;
        }
    }
}

/// grpcurl, or None when it is not installed and the test should skip
/// (saying so); in CI (`CI` set) a missing grpcurl fails the test.
pub fn grpcurl_or_skip() -> Option<String> {
    let bin = grpcurl();
    if bin.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "grpcurl is missing in CI: dev/env up must install it"
        );
        eprintln!("SKIPPED: grpcurl not installed (cargo install grpcurl-rs)");
    }
    bin
}

/// Runs grpcurl `bin` with `args`; its stdout (panics showing both outputs
/// if it fails).
pub fn grpcurl_ok(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The grpcurl binary (`GRPCURL`, on PATH, or in ~/.cargo/bin), if any.
pub fn grpcurl() -> Option<String> {
    let candidates = [
        std::env::var("GRPCURL").ok(),
        Some("grpcurl".to_owned()),
        std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.cargo/bin/grpcurl")),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stdout.is_empty())
    })
}
