//! `pgpipe.v1.PipeService`: requests become commands, errors become statuses.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio::sync::watch as watch_channel;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::history;
use crate::commands::{CommandError, Core};
use crate::domain::validate;
use crate::proto::pipe_service_server::PipeService;
use crate::proto::*;
use crate::store::{EventLog, LogError};
use crate::watch::{self, FeedItem, LabelFilter, PipeView};

/// Depth of each watcher's outgoing queue; the follower task waits when the
/// client reads slowly (the log, not memory, absorbs the difference).
const WATCH_QUEUE: usize = 64;

/// Filled once the log has been replayed; until then every RPC answers
/// UNAVAILABLE (and health says NOT_SERVING).
pub type CoreCell = Arc<OnceLock<Arc<Core>>>;

pub struct PipeApi {
    core: CoreCell,
    /// Flips to true at shutdown so open watch streams end and the server
    /// can drain.
    closing: watch_channel::Receiver<bool>,
}

impl PipeApi {
    pub fn new(core: CoreCell, closing: watch_channel::Receiver<bool>) -> Self {
        Self { core, closing }
    }

    fn core(&self) -> Result<Arc<Core>, Status> {
        self.core.get().cloned().ok_or_else(|| {
            Status::unavailable("pgpipe is replaying its event log; retry in a moment")
        })
    }

    /// The core for an RPC about the pipe `name` (UNAVAILABLE first, then
    /// INVALID_ARGUMENT for a malformed name).
    fn core_for(&self, name: &str) -> Result<Arc<Core>, Status> {
        let core = self.core()?;
        name_arg(name)?;
        Ok(core)
    }
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(i) => Status::invalid_argument(i.0),
            CommandError::NotFound(m) => Status::not_found(m),
            CommandError::AlreadyExists(m) => Status::already_exists(m),
            CommandError::FailedPrecondition(m) => Status::failed_precondition(m),
            CommandError::Conflict(m) => Status::aborted(m),
            CommandError::Log(l) => l.into(),
        }
    }
}

impl From<LogError> for Status {
    fn from(e: LogError) -> Self {
        match e {
            LogError::VersionConflict { .. } => Status::aborted(format!("{e}; retry")),
            LogError::Corrupt { .. } => Status::data_loss(e.to_string()),
            LogError::Storage(_)
            | LogError::Unavailable(_)
            | LogError::NotWritable(_)
            | LogError::Open { .. }
            | LogError::DataDir { .. } => Status::unavailable(e.to_string()),
        }
    }
}

fn name_arg(name: &str) -> Result<(), Status> {
    validate::pipe_name(name).map_err(|e| Status::invalid_argument(e.0))
}

fn cursor_arg(after: Option<u64>, head: u64) -> Result<u64, Status> {
    match after {
        Some(c) if c > head => Err(Status::out_of_range(format!(
            "after_cursor {c} is ahead of the log (head {head}); use a cursor from an earlier message"
        ))),
        Some(c) => Ok(c),
        None => Ok(head),
    }
}

/// The next item from a follower, or None when it ends, the server closes
/// or the client went away (noticed at once, not at the next send, so the
/// watcher gauge drops when a stream is closed).
async fn next_item<T, U>(
    rx: &mut mpsc::Receiver<T>,
    closing: &mut watch_channel::Receiver<bool>,
    out: &mpsc::Sender<U>,
) -> Option<T> {
    if *closing.borrow() {
        return None;
    }
    tokio::select! {
        item = rx.recv() => item,
        _ = closing.wait_for(|c| *c) => None,
        _ = out.closed() => None,
    }
}

#[tonic::async_trait]
impl PipeService for PipeApi {
    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn create_pipe(
        &self,
        request: Request<CreatePipeRequest>,
    ) -> Result<Response<CreatePipeResponse>, Status> {
        let core = self.core()?;
        let pipe = core.create(request.into_inner()).await?;
        tracing::info!(pipe_id = %pipe.id, "pipe created");
        Ok(Response::new(CreatePipeResponse { pipe: Some(pipe) }))
    }

    async fn get_pipe(
        &self,
        request: Request<GetPipeRequest>,
    ) -> Result<Response<GetPipeResponse>, Status> {
        let core = self.core()?;
        let req = request.into_inner();
        let pipe = match (req.name.is_empty(), req.id.is_empty()) {
            (false, true) => {
                name_arg(&req.name)?;
                core.get_by_name(&req.name)?
            }
            (true, false) => {
                if req.id.len() > 64 {
                    return Err(Status::invalid_argument("id is too long to be a pipe id"));
                }
                core.get_by_id(&req.id)?
            }
            (false, false) => {
                return Err(Status::invalid_argument("give either name or id, not both"));
            }
            (true, true) => {
                return Err(Status::invalid_argument("name or id is required"));
            }
        };
        Ok(Response::new(GetPipeResponse { pipe: Some(pipe) }))
    }

    async fn list_pipes(
        &self,
        request: Request<ListPipesRequest>,
    ) -> Result<Response<ListPipesResponse>, Status> {
        let core = self.core()?;
        let req = request.into_inner();
        validate::label_pairs("label_selector", &req.label_selector)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let pipes = core.read(|p| p.list(req.include_deleted, &req.label_selector));
        Ok(Response::new(ListPipesResponse { pipes }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn delete_pipe(
        &self,
        request: Request<DeletePipeRequest>,
    ) -> Result<Response<DeletePipeResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let pipe = core.delete(&req.name, req.drop_destination_tables).await?;
        tracing::info!(pipe_id = %pipe.id, "pipe deleted");
        Ok(Response::new(DeletePipeResponse { pipe: Some(pipe) }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn pause_pipe(
        &self,
        request: Request<PausePipeRequest>,
    ) -> Result<Response<PausePipeResponse>, Status> {
        let name = &request.get_ref().name;
        let core = self.core_for(name)?;
        let pipe = core.pause(name).await?;
        Ok(Response::new(PausePipeResponse { pipe: Some(pipe) }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn resume_pipe(
        &self,
        request: Request<ResumePipeRequest>,
    ) -> Result<Response<ResumePipeResponse>, Status> {
        let name = &request.get_ref().name;
        let core = self.core_for(name)?;
        let pipe = core.resume(name).await?;
        Ok(Response::new(ResumePipeResponse { pipe: Some(pipe) }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn resync_pipe(
        &self,
        request: Request<ResyncPipeRequest>,
    ) -> Result<Response<ResyncPipeResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        if !req.tables.is_empty() {
            if !req.overrides.is_empty() || req.replace_column_options {
                return Err(Status::invalid_argument(
                    "overrides apply to a whole-pipe resync; a table resync (tables) keeps each table's settings: send one or the other",
                ));
            }
            let pipe = core.resync_tables(&req.name, &req.tables).await?;
            tracing::info!(pipe_id = %pipe.id, tables = ?req.tables, "table resync requested");
            return Ok(Response::new(ResyncPipeResponse { pipe: Some(pipe) }));
        }
        let pipe = core
            .resync(&req.name, &req.overrides, req.replace_column_options)
            .await?;
        tracing::info!(pipe_id = %pipe.id, resync_of = %pipe.resync_of, "resync started");
        Ok(Response::new(ResyncPipeResponse { pipe: Some(pipe) }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn validate_pipe(
        &self,
        request: Request<ValidatePipeRequest>,
    ) -> Result<Response<ValidatePipeResponse>, Status> {
        let core = self.core()?;
        // Problems are the answer, not an error: a malformed request is
        // reported field by field like any other problem.
        let problems = core.validate(request.get_ref()).await;
        tracing::info!(problems = problems.len(), "pipe validated");
        Ok(Response::new(ValidatePipeResponse {
            ok: problems.iter().all(|p| p.warning),
            problems,
        }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn get_pipe_history(
        &self,
        request: Request<GetPipeHistoryRequest>,
    ) -> Result<Response<GetPipeHistoryResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let kind = HistoryKind::try_from(req.kind).map_err(|_| {
            Status::invalid_argument(format!(
                "kind {} is not a history kind (0 all, 1 errors, 2 cdc, 3 snapshot, 5 slot health)",
                req.kind
            ))
        })?;
        let size = history_page_size(req.page_size)?;
        let after: u64 = page_token(&req.page_token, "GetPipeHistory")?;
        let (events, next) = read_history(&core, &req.name, move |log, name| {
            history::page(log, name, kind, after, size)
        })
        .await?;
        Ok(Response::new(GetPipeHistoryResponse {
            events,
            next_page_token: next.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn get_pipe_throughput(
        &self,
        request: Request<GetPipeThroughputRequest>,
    ) -> Result<Response<GetPipeThroughputResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let width = match req.bucket_seconds {
            0 => history::DEFAULT_BUCKET_SECONDS,
            n if n > history::MAX_BUCKET_SECONDS => {
                return Err(Status::invalid_argument(format!(
                    "bucket_seconds {n} is too large: at most {} (a day)",
                    history::MAX_BUCKET_SECONDS
                )));
            }
            n => n,
        };
        let size = history_page_size(req.page_size)?;
        // The token names the bucket width too: resuming with another width
        // would split a bucket.
        let after = match req.page_token.as_str() {
            "" => 0,
            t => t
                .split_once('/')
                .filter(|(_, w)| w.parse::<u32>().ok() == Some(width))
                .and_then(|(seq, _)| seq.parse::<u64>().ok())
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "page_token is not one from an earlier GetPipeThroughput answer with \
                         this bucket_seconds: pass next_page_token as it came with the same \
                         bucket_seconds, or leave it empty to start over",
                    )
                })?,
        };
        let (points, next) = read_history(&core, &req.name, move |log, name| {
            history::throughput_page(log, name, width, after, size)
        })
        .await?;
        Ok(Response::new(GetPipeThroughputResponse {
            points,
            next_page_token: next.map(|s| format!("{s}/{width}")).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn get_load_summary(
        &self,
        request: Request<GetLoadSummaryRequest>,
    ) -> Result<Response<GetLoadSummaryResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let size = history_page_size(req.page_size)?;
        let offset: usize = page_token(&req.page_token, "GetLoadSummary")?;
        let (tables, next) = read_history(&core, &req.name, move |log, name| {
            history::load_summary_page(log, name, offset, size)
        })
        .await?;
        Ok(Response::new(GetLoadSummaryResponse {
            tables,
            next_page_token: next.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn set_pipe_labels(
        &self,
        request: Request<SetPipeLabelsRequest>,
    ) -> Result<Response<SetPipeLabelsResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let pipe = core
            .set_labels(&req.name, &req.labels, &req.remove_keys)
            .await?;
        Ok(Response::new(SetPipeLabelsResponse { pipe: Some(pipe) }))
    }

    #[tracing::instrument(skip_all, fields(pipe = %request.get_ref().name))]
    async fn update_pipe(
        &self,
        request: Request<UpdatePipeRequest>,
    ) -> Result<Response<UpdatePipeResponse>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        if req.validate_only {
            let (pipe, problems) = core
                .validate_update(&req.name, &req.add_tables, &req.remove_tables)
                .await?;
            tracing::info!(problems = problems.len(), "pipe update validated");
            return Ok(Response::new(UpdatePipeResponse {
                pipe: Some(pipe),
                ok: problems.iter().all(|p| p.warning),
                problems,
            }));
        }
        let pipe = core
            .update_tables(&req.name, &req.add_tables, &req.remove_tables)
            .await?;
        tracing::info!(
            pipe_id = %pipe.id,
            added = req.add_tables.len(),
            removed = req.remove_tables.len(),
            "pipe tables changed"
        );
        Ok(Response::new(UpdatePipeResponse {
            pipe: Some(pipe),
            ..Default::default()
        }))
    }

    type WatchPipeStream = ReceiverStream<Result<WatchPipeResponse, Status>>;

    async fn watch_pipe(
        &self,
        request: Request<WatchPipeRequest>,
    ) -> Result<Response<Self::WatchPipeStream>, Status> {
        let req = request.into_inner();
        let core = self.core_for(&req.name)?;
        let log = Arc::clone(core.log());
        let start = cursor_arg(req.after_cursor, log.head())?;
        let mut view = PipeView::load(&log, &req.name, start)?;
        if log.stream_version(&req.name) == 0 {
            return Err(Status::not_found(format!(
                "no pipe named {:?}; ListPipes shows the existing ones",
                req.name
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let (feed_tx, mut feed_rx) = mpsc::channel(WATCH_QUEUE);
        let resumed = req.after_cursor.is_some();
        let name = req.name.clone();
        let mut closing = self.closing.clone();
        let watcher = core.metrics().watcher();
        tokio::spawn(async move {
            let _watcher = watcher;
            if !resumed {
                let first = WatchPipeResponse {
                    cursor: start,
                    pipe: view.current(),
                    event: None,
                };
                if tx.send(Ok(first)).await.is_err() {
                    return;
                }
            }
            if view.ended() {
                return;
            }
            let follower = tokio::spawn(watch::follow(log, start, Some(name), feed_tx));
            while let Some(item) = next_item(&mut feed_rx, &mut closing, &tx).await {
                let msg = match item {
                    Ok(FeedItem::CaughtUp(_)) => continue,
                    Ok(FeedItem::Event(e)) => {
                        view.apply(&e);
                        let last = watch::is_final(&e);
                        let msg = WatchPipeResponse {
                            cursor: e.seq,
                            pipe: view.pipe_for(&e),
                            event: Some((*e).clone()),
                        };
                        if tx.send(Ok(msg)).await.is_err() || last {
                            break;
                        }
                        continue;
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let _ = tx.send(msg).await;
                break;
            }
            follower.abort();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchEventsStream = ReceiverStream<Result<WatchEventsResponse, Status>>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let core = self.core()?;
        let req = request.into_inner();
        let filter = if req.pipe_name.is_empty() {
            None
        } else {
            name_arg(&req.pipe_name)?;
            Some(req.pipe_name)
        };
        validate::label_pairs("label_selector", &req.label_selector)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let log = Arc::clone(core.log());
        let start = cursor_arg(req.after_cursor, log.head())?;
        let mut labels = if req.label_selector.is_empty() {
            None
        } else {
            // Reads history up to the cursor: off the async workers.
            let (log, stream, selector) = (Arc::clone(&log), filter.clone(), req.label_selector);
            let loaded = tokio::task::spawn_blocking(move || {
                LabelFilter::load(&log, stream.as_deref(), start, selector)
            })
            .await
            .map_err(|e| Status::internal(format!("reading labels from the log failed: {e}")))?;
            Some(loaded?)
        };
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let (feed_tx, mut feed_rx) = mpsc::channel(WATCH_QUEUE);
        let mut closing = self.closing.clone();
        let watcher = core.metrics().watcher();
        tokio::spawn(async move {
            let _watcher = watcher;
            let follower = tokio::spawn(watch::follow(log, start, filter, feed_tx));
            while let Some(item) = next_item(&mut feed_rx, &mut closing, &tx).await {
                let msg = match item {
                    Ok(FeedItem::Event(e)) if labels.as_mut().is_some_and(|l| !l.admit(&e)) => {
                        continue;
                    }
                    Ok(FeedItem::Event(e)) => Ok(WatchEventsResponse {
                        item: Some(watch_events_response::Item::Event((*e).clone())),
                    }),
                    Ok(FeedItem::CaughtUp(cursor)) => Ok(WatchEventsResponse {
                        item: Some(watch_events_response::Item::CaughtUp(CaughtUp { cursor })),
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    break;
                }
            }
            follower.abort();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A history page size: 0 is the default; more than the maximum is refused.
fn history_page_size(n: u32) -> Result<usize, Status> {
    match n as usize {
        0 => Ok(history::DEFAULT_PAGE),
        n if n > history::MAX_PAGE => Err(Status::invalid_argument(format!(
            "page_size {n} is too large: at most {}",
            history::MAX_PAGE
        ))),
        n => Ok(n),
    }
}

/// A page token from an earlier answer of `rpc` (empty: the first page).
fn page_token<T: FromStr + Default>(token: &str, rpc: &str) -> Result<T, Status> {
    if token.is_empty() {
        return Ok(T::default());
    }
    token.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "page_token is not one from an earlier {rpc} answer: \
             pass next_page_token as it came, or leave it empty to start over"
        ))
    })
}

/// One page of pipe `name`'s history, read by `read` off the async threads
/// (reading the log blocks); NOT_FOUND unless a pipe so named ever existed.
async fn read_history<T: Send + 'static>(
    core: &Core,
    name: &str,
    read: impl FnOnce(&EventLog, &str) -> Result<T, LogError> + Send + 'static,
) -> Result<T, Status> {
    history_exists(core, name)?;
    let log = Arc::clone(core.log());
    let name = name.to_owned();
    let page = tokio::task::spawn_blocking(move || read(&log, &name))
        .await
        .map_err(|e| Status::internal(format!("reading the history failed: {e}")))?;
    Ok(page?)
}

/// NOT_FOUND unless the name has a stream (a pipe so named ever existed).
fn history_exists(core: &Core, name: &str) -> Result<(), Status> {
    if core.log().stream_version(name) == 0 {
        return Err(Status::not_found(format!(
            "no pipe named {name:?} has ever existed"
        )));
    }
    Ok(())
}
