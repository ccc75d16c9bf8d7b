//! Wiring of the service: listener, health, reflection, auth, replay,
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::api::{BearerAuth, CoreCell, PipeApi};
use crate::commands::Core;
use crate::domain::projection::Projection;
use crate::failpoint;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::pipe_service_server::PipeServiceServer;
use crate::store::{EventLog, LogError, SecretStore};

/// How `serve` runs: addresses, data directory, auth, TLS, and whether pipes
/// move data.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address of the gRPC server.
    pub listen: SocketAddr,
    /// Directory of the event log and secrets (sled).
    pub data_dir: PathBuf,
    /// Bearer token required on every RPC but health (None: open).
    pub token: Option<String>,
    /// Run the data plane (pipes move data). Off: the control plane alone
    /// (events, API, watch), with no connection to any Postgres or ClickHouse.
    pub engine: bool,
    /// Serve gRPC (health and reflection too) over TLS with this identity
    /// (None: plaintext).
    pub tls: Option<TlsFiles>,
    /// Serve Prometheus metrics on `GET /metrics` at this address (None:
    /// no metrics endpoint).
    pub metrics_listen: Option<SocketAddr>,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
}

/// Why the service could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The event log could not be opened, replayed or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A TLS certificate or key file could not be read.
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
    /// The certificate and key were read but rustls refused them.
    #[error("the TLS certificate and key cannot be used: {0}")]
    Tls(String),
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not load the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The replay task panicked or was cancelled.
    #[error("replay task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Opens the log, replays it into a projection and starts the writer.
/// Returns the core and how long replay took.
pub(crate) async fn open_core(
    data_dir: PathBuf,
    engine: bool,
) -> Result<(Arc<Core>, ReplayReport), ServeError> {
    let started = Instant::now();
    let secrets_dir = data_dir.clone();
    let (log, projection, stats) = tokio::task::spawn_blocking(move || {
        failpoint::hit_blocking(failpoint::REPLAY_BEFORE);
        let log = EventLog::open(&data_dir)?;
        let mut projection = Projection::default();
        let stats = log.replay(|e| projection.apply(e))?;
        Ok::<_, LogError>((log, projection, stats))
    })
    .await??;
    let projection = Arc::new(RwLock::new(projection));
    let hook_projection = Arc::clone(&projection);
    log.start_writer(Arc::new(move |e| match hook_projection.write() {
        Ok(mut p) => p.apply(e),
        Err(poisoned) => poisoned.into_inner().apply(e),
    }));
    let secrets = SecretStore::open(&secrets_dir, log.db())?;
    let core = Arc::new(Core::new(log, projection, secrets, engine));
    Ok((
        core,
        ReplayReport {
            events: stats.events,
            elapsed_ms: started.elapsed().as_millis() as u64,
        },
    ))
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayReport {
    pub events: u64,
    pub elapsed_ms: u64,
}

/// Binds `cfg.listen` and serves until `shutdown` resolves.
pub async fn serve(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let metrics = match cfg.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        None => None,
    };
    serve_on_listeners(listener, metrics, cfg, shutdown).await
}

/// Serves on an already bound listener. The listener answers at once (health
/// says NOT_SERVING, RPCs say UNAVAILABLE) while the log is replayed.
pub async fn serve_on(
    listener: TcpListener,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_on_listeners(listener, None, cfg, shutdown).await
}

/// As [`serve_on`], with the metrics endpoint on `metrics` when given
/// (`cfg.metrics_listen` is not bound here: tests pass a listener on port 0).
pub async fn serve_on_listeners(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.listen,
        source,
    })?;
    crate::tls::install_default_provider();
    // Before anything answers: a bad certificate or key is a start-up error.
    let mut builder = Server::builder();
    if let Some(files) = &cfg.tls {
        let id = crate::tls::read_identity(&files.cert, &files.key)?;
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(id.cert_pem, id.key_pem));
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServeError::Tls(chain(&e)))?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<PipeServiceServer<PipeApi>>()
        .await;

    let cell: CoreCell = Arc::new(OnceLock::new());
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let closing_rx_engine = closing_rx.clone();
    let mut engine_task = None;
    let auth = BearerAuth::new(cfg.token.as_deref());
    let pipes = InterceptedService::new(
        PipeServiceServer::new(PipeApi::new(Arc::clone(&cell), closing_rx)),
        {
            let auth = auth.clone();
            move |req| auth.check(req)
        },
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection = InterceptedService::new(reflection, move |req| auth.check(req));

    let metrics_task = match metrics {
        Some(l) => {
            let maddr = l.local_addr().map_err(|source| ServeError::Listen {
                addr: cfg.metrics_listen.unwrap_or(addr),
                source,
            })?;
            // Logged, not printed: stdout's first line is the gRPC address
            // and scripts may stop reading it after that.
            tracing::info!(addr = %maddr, "metrics endpoint listening on /metrics");
            let cell = Arc::clone(&cell);
            let render: crate::metrics::endpoint::Exposition =
                Arc::new(move || cell.get().map(|core| core.render_metrics()));
            Some(tokio::spawn(crate::metrics::endpoint::serve(
                l,
                render,
                closing_rx_engine.clone(),
            )))
        }
        None => None,
    };
    // Announced on stdout so scripts and tests can find a port chosen by the OS.
    println!("pgpipe listening on {addr}");
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), auth = cfg.token.is_some(), tls = cfg.tls.is_some(), "listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(pipes)
            .serve_with_incoming_shutdown(
                // Without nodelay small replies wait ~40 ms for Nagle.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let replay = async {
        let (core, report) = open_core(cfg.data_dir.clone(), cfg.engine).await?;
        tracing::info!(
            events = report.events,
            elapsed_ms = report.elapsed_ms,
            "event log replayed"
        );
        let _ = cell.set(Arc::clone(&core));
        if cfg.engine {
            engine_task = Some(crate::engine::spawn(
                Arc::clone(&core),
                closing_rx_engine.clone(),
            ));
        }
        health_reporter
            .set_serving::<PipeServiceServer<PipeApi>>()
            .await;
        Ok::<_, ServeError>(core)
    };
    tokio::pin!(shutdown);
    let core = tokio::select! {
        r = replay => Some(r?),
        _ = &mut shutdown => None,
    };
    if core.is_some() {
        shutdown.await;
    }
    tracing::info!("shutting down");
    health_reporter
        .set_not_serving::<PipeServiceServer<PipeApi>>()
        .await;
    let _ = closing_tx.send(true);
    let _ = stop_tx.send(());
    if let Some(engine) = engine_task {
        let _ = engine.await;
    }
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    // Clients get a GOAWAY; one that never lets go must not hold the log open.
    let abort = server.abort_handle();
    let served = match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!(
                timeout_s = DRAIN_TIMEOUT.as_secs(),
                "connections did not drain; closing them"
            );
            abort.abort();
            Ok(())
        }
    };
    if let Some(core) = core {
        core.log().close().await?;
        tracing::info!("event log flushed and closed");
    }
    served?;
    Ok(())
}

/// An error and its causes: tonic's transport errors say little alone.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
