//! The durable event log, on sled.
//!
//! Layout of the `log` tree: key `b'e' ++ seq (u64 BE)`, value
//! `format (u8 = 1) ++ crc32(payload) (u32 LE) ++ payload` where payload is an
//! encoded `Event`. Sequences are global, gap-free and start at 1. The
//! per-pipe index (stream name -> seqs) lives in memory: replay reads every
//! record anyway, so rebuilding it costs nothing extra and cannot drift.
//!
//! Appends go through one writer task that drains every queued request,
//! checks each request's expected stream version, writes the records as one
//! atomic sled batch and flushes once (group commit). Only then are the
//! events applied by the commit hook (the projection), published to
//! watchers, and acknowledged. Readers never see past `durable_head`, so a
//! watcher cannot observe an event that a crash could still take back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::proto::{Event, event::Payload};

const RECORD_FORMAT: u8 = 1;
const EVENT_PREFIX: u8 = b'e';
/// Schema version written into every new event.
pub(crate) const EVENT_SCHEMA_VERSION: u32 = 1;
/// In-memory fan-out depth; a watcher further behind continues from the log.
const FEED_CAPACITY: usize = 4096;
/// Most requests folded into one group commit.
const MAX_GROUP: usize = 512;

/// What can go wrong with the event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled failed (other than a refused write).
    #[error("event log storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record fails its checks; `repair` truncates the log before it.
    #[error(
        "event log is corrupt at seq {seq}: {reason}; {valid} valid events precede it. \
         Run `pgpipe repair --data-dir <dir>` to truncate the log to the last valid event"
    )]
    Corrupt {
        /// Sequence of the first bad record.
        seq: u64,
        /// Valid events before it.
        valid: u64,
        /// What is wrong with the record.
        reason: String,
    },
    /// An append expected another stream version (optimistic concurrency): someone else wrote first.
    #[error("stream {stream:?} is at version {actual}, expected {expected}")]
    VersionConflict {
        /// The pipe name's stream.
        stream: String,
        /// The version the writer expected.
        expected: u64,
        /// The stream's version.
        actual: u64,
    },
    /// The writer is not started or has stopped.
    #[error("event log is not accepting writes: {0}")]
    Unavailable(String),
    /// The storage under the data directory refused a write. Sticky until
    /// restart: the failed batch may or may not be on disk, and sled itself
    /// refuses further writes after an I/O error.
    #[error(
        "the event log cannot be written: {0}; nothing more is recorded until this is fixed \
         and pgpipe is restarted (reads keep working)"
    )]
    NotWritable(WriteFailure),
    /// The log could not be opened (the storage refused it).
    #[error("cannot open the event log in {dir}: {reason}")]
    Open {
        /// The data directory.
        dir: String,
        /// Why the storage refused.
        reason: WriteFailure,
    },
    /// The data directory could not be created or made owner-only.
    #[error("cannot prepare the data directory {dir}: {source}")]
    DataDir {
        /// The data directory.
        dir: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why the storage refused a write, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailure {
    /// No space left (ENOSPC, EDQUOT).
    #[error("the file system holding the data directory is full ({0}); free space")]
    StorageFull(String),
    /// A read-only file system (EROFS).
    #[error("the data directory is on a read-only file system ({0}); make it writable")]
    ReadOnly(String),
    /// No permission (EACCES, EPERM).
    #[error("pgpipe may not write to the data directory ({0}); fix its permissions")]
    PermissionDenied(String),
    /// Any other I/O error.
    #[error("{0}")]
    Io(String),
}

impl WriteFailure {
    /// Classifies an I/O error from the storage.
    pub fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        // sled hands out clones of its first I/O error, rebuilt from the
        // kind and a debug string (the errno is lost): classify by kind, and
        // word the cause by kind too.
        let cause = match e.raw_os_error() {
            Some(_) => e.to_string(),
            None => e.kind().to_string(),
        };
        match (e.kind(), e.raw_os_error()) {
            (K::StorageFull | K::QuotaExceeded, _) | (_, Some(28 | 122)) => {
                Self::StorageFull(cause)
            }
            (K::ReadOnlyFilesystem, _) | (_, Some(30)) => Self::ReadOnly(cause),
            (K::PermissionDenied, _) | (_, Some(1 | 13)) => Self::PermissionDenied(cause),
            _ => Self::Io(e.to_string()),
        }
    }

    /// Classifies a sled error (its I/O errors by kind).
    pub fn from_sled(e: &sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Self::from_io(io),
            other => Self::Io(other.to_string()),
        }
    }
}

/// Permissions of a data directory: it holds credentials (the secrets file)
/// and the history of every pipe, so only the owner may enter it.
#[cfg(unix)]
const DATA_DIR_MODE: u32 = 0o700;

/// Creates `dir` owner-only, or tightens an existing one that pgpipe owns
/// (empty, or holding pgpipe's files) to owner-only.
pub(crate) fn prepare_data_dir(dir: &Path) -> Result<(), LogError> {
    let err = |source| LogError::DataDir {
        dir: dir.display().to_string(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            // Parents as usual, the data directory itself owner-only (the
            // builder applies the mode to every level it creates, so do it
            // in two steps).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            match std::fs::DirBuilder::new().mode(DATA_DIR_MODE).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e)),
            }
        }
        let meta = std::fs::metadata(dir).map_err(err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let ours = std::fs::read_dir(dir)
                .map_err(err)?
                .filter_map(Result::ok)
                .all(|e| is_pgpipe_file(&e.file_name().to_string_lossy()));
            if ours {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
                    .map_err(err)?;
                tracing::warn!(dir = %dir.display(), old_mode = format!("{mode:o}"),
                    "data directory was readable by others; made it owner-only (0700)");
            } else {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"),
                    "data directory holds other files and is readable by others; \
                     it holds credentials: make it owner-only (chmod 700)");
            }
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(err)?;
    Ok(())
}

/// Names sled and pgpipe put into a data directory.
fn is_pgpipe_file(name: &str) -> bool {
    matches!(
        name,
        "conf" | "db" | "blobs" | "secrets.json" | "secrets.json.tmp"
    ) || name.starts_with("snap.")
}

/// What replay found.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayStats {
    /// Events replayed.
    pub events: u64,
    /// Seq of the last one (0 for an empty log).
    pub head: u64,
}

/// A function applied to every committed event, in order, before watchers
/// and the appender see it (the projection).
pub type CommitHook = Arc<dyn Fn(&Event) + Send + Sync>;

struct AppendRequest {
    stream: String,
    expected_version: u64,
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<Arc<Event>>, LogError>>,
}

/// The durable, totally ordered event log on sled: appends go through one
/// group-committing writer; readers replay, read and subscribe.
pub struct EventLog {
    db: sled::Db,
    tree: sled::Tree,
    durable_head: AtomicU64,
    /// Stream name -> seqs of its events, ascending.
    index: RwLock<HashMap<String, Vec<u64>>>,
    feed: broadcast::Sender<Arc<Event>>,
    writer: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    broken: AtomicBool,
    /// The first write failure, repeated to every later append.
    failure: Mutex<Option<WriteFailure>>,
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn encode_record(event: &Event) -> Vec<u8> {
    let payload = event.encode_to_vec();
    let mut v = Vec::with_capacity(payload.len() + 5);
    v.push(RECORD_FORMAT);
    v.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    v.extend_from_slice(&payload);
    v
}

/// Decodes and verifies one record; the error says what is wrong with it.
pub fn decode_record(bytes: &[u8]) -> Result<Event, String> {
    if bytes.len() < 5 {
        return Err(format!("record too short ({} bytes)", bytes.len()));
    }
    if bytes[0] != RECORD_FORMAT {
        return Err(format!("unknown record format {}", bytes[0]));
    }
    let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[5..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Event::decode(payload).map_err(|e| format!("undecodable event: {e}"))
}

fn key_seq(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[0] != EVENT_PREFIX {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..]);
    Some(u64::from_be_bytes(b))
}

/// sled's page cache limit. sled's memory grows past it with the data
/// (about 260 bytes per event at 64 MiB: 400k events took 135 MB, still
/// rising); at 8 MiB it levels off near 20 MB above the process's base
/// (tests/event_log_memory.rs), and appends were no slower.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl EventLog {
    /// Opens (or creates) the log in `dir`. Nothing is readable until
    /// [`EventLog::replay`] has verified it.
    pub fn open(dir: &Path) -> Result<Arc<Self>, LogError> {
        prepare_data_dir(dir)?;
        // sled caches up to 1 GiB by default, so a long-running service's
        // memory followed the log's growth; reads of old events (replay,
        // history) are sequential and do fine with less.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| LogError::Open {
                dir: dir.display().to_string(),
                reason: WriteFailure::from_sled(&e),
            })?;
        Self::with_db(db)
    }

    /// Opens the log in an already open sled database.
    pub fn with_db(db: sled::Db) -> Result<Arc<Self>, LogError> {
        let tree = db.open_tree("log")?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Ok(Arc::new(Self {
            db,
            tree,
            durable_head: AtomicU64::new(0),
            index: RwLock::new(HashMap::new()),
            feed,
            writer: Mutex::new(None),
            writer_task: Mutex::new(None),
            broken: AtomicBool::new(false),
            failure: Mutex::new(None),
        }))
    }

    /// The sled database, for other trees that must be flushed with the log
    /// (secrets).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Reads and verifies every record in order, calling `apply` on each,
    /// and builds the per-stream index. A bad record anywhere stops the
    /// replay with [`LogError::Corrupt`]: committed events are never
    /// silently skipped.
    pub fn replay(&self, mut apply: impl FnMut(&Event)) -> Result<ReplayStats, LogError> {
        let mut index: HashMap<String, Vec<u64>> = HashMap::new();
        let mut expected = 1u64;
        for item in self.tree.scan_prefix([EVENT_PREFIX]) {
            let (key, value) = item?;
            let corrupt = |reason: String| LogError::Corrupt {
                seq: expected,
                valid: expected - 1,
                reason,
            };
            let seq = key_seq(&key).ok_or_else(|| corrupt("malformed key".into()))?;
            if seq != expected {
                return Err(corrupt(format!("found seq {seq} where {expected} was due")));
            }
            let event = decode_record(&value).map_err(corrupt)?;
            if event.seq != seq {
                return Err(corrupt(format!("record carries seq {}", event.seq)));
            }
            apply(&event);
            // Only the first lookup of a stream allocates its name.
            match index.get_mut(event.pipe_name.as_str()) {
                Some(v) => v.push(seq),
                None => {
                    index.insert(event.pipe_name.clone(), vec![seq]);
                }
            }
            expected += 1;
        }
        let head = expected - 1;
        if let Ok(mut idx) = self.index.write() {
            *idx = index;
        }
        self.durable_head.store(head, Ordering::SeqCst);
        Ok(ReplayStats { events: head, head })
    }

    /// Starts the writer task; appends fail until this is called.
    pub fn start_writer(self: &Arc<Self>, on_commit: CommitHook) {
        let Ok(mut writer) = self.writer.lock() else {
            return;
        };
        if writer.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(1024);
        *writer = Some(tx);
        let log = Arc::clone(self);
        let task = tokio::spawn(async move { log.writer_loop(rx, on_commit).await });
        if let Ok(mut t) = self.writer_task.lock() {
            *t = Some(task);
        }
    }

    /// Stops accepting appends, lets the writer finish what is queued, and
    /// flushes. The log's files are released once the last handle drops.
    pub async fn close(&self) -> Result<(), LogError> {
        self.writer.lock().map(|mut w| w.take()).ok();
        let task = self.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.flush().await
    }

    /// Appends `events` (payload, pipe_id and at filled in by the caller) to
    /// `stream` if its version is still `expected_version`. Returns the
    /// events as stored, once they are durable and projected.
    pub async fn append(
        &self,
        stream: &str,
        expected_version: u64,
        events: Vec<Event>,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let writer = self
            .writer
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .ok_or_else(|| LogError::Unavailable("the event log is not open for writes".into()))?;
        let (reply, rx) = oneshot::channel();
        writer
            .send(AppendRequest {
                stream: stream.to_owned(),
                expected_version,
                events,
                reply,
            })
            .await
            .map_err(|_| LogError::Unavailable("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| LogError::Unavailable("the log writer has stopped".into()))?
    }

    async fn writer_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<AppendRequest>,
        on_commit: CommitHook,
    ) {
        let mut versions: HashMap<String, u64> = match self.index.read() {
            Ok(idx) => idx
                .iter()
                .map(|(k, v)| (k.clone(), v.len() as u64))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let mut next_seq = self.durable_head.load(Ordering::SeqCst) + 1;
        let mut group = Vec::with_capacity(MAX_GROUP);
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            if self.broken.load(Ordering::SeqCst) {
                let failure = self
                    .failure
                    .lock()
                    .ok()
                    .and_then(|f| f.clone())
                    .unwrap_or_else(|| WriteFailure::Io("an earlier write failed".into()));
                for req in group.drain(..) {
                    let _ = req.reply.send(Err(LogError::NotWritable(failure.clone())));
                }
                continue;
            }
            let now = prost_types::Timestamp::from(std::time::SystemTime::now());
            let mut batch = sled::Batch::default();
            let mut accepted: Vec<(oneshot::Sender<_>, Vec<Arc<Event>>)> = Vec::new();
            let mut touched: Vec<(String, u64)> = Vec::new();
            for req in group.drain(..) {
                let actual = versions.get(&req.stream).copied().unwrap_or(0);
                if actual != req.expected_version {
                    let _ = req.reply.send(Err(LogError::VersionConflict {
                        stream: req.stream,
                        expected: req.expected_version,
                        actual,
                    }));
                    continue;
                }
                let mut stored = Vec::with_capacity(req.events.len());
                let mut version = actual;
                for mut e in req.events {
                    version += 1;
                    e.seq = next_seq;
                    e.pipe_name = req.stream.clone();
                    e.stream_version = version;
                    e.schema_version = EVENT_SCHEMA_VERSION;
                    if e.at.is_none() {
                        e.at = Some(now);
                    }
                    batch.insert(&event_key(next_seq), encode_record(&e));
                    touched.push((req.stream.clone(), next_seq));
                    next_seq += 1;
                    stored.push(Arc::new(e));
                }
                versions.insert(req.stream, version);
                accepted.push((req.reply, stored));
            }
            if accepted.is_empty() {
                continue;
            }
            let written = match self.tree.apply_batch(batch) {
                Ok(()) => self.db.flush_async().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                // The batch may or may not be on disk; nothing more may be
                // written on top of that uncertainty. Nothing of it was
                // applied or published, and readers stop at durable_head.
                let failure = WriteFailure::from_sled(&e);
                self.broken.store(true, Ordering::SeqCst);
                if let Ok(mut f) = self.failure.lock() {
                    f.get_or_insert_with(|| failure.clone());
                }
                tracing::error!(error = %e, reason = %failure, events = touched.len(),
                    "event log write failed; refusing further appends until restart");
                for (reply, _) in accepted {
                    let _ = reply.send(Err(LogError::NotWritable(failure.clone())));
                }
                continue;
            }
            if let Ok(mut idx) = self.index.write() {
                for (stream, seq) in touched {
                    idx.entry(stream).or_default().push(seq);
                }
            }
            let head = next_seq - 1;
            for (_, events) in &accepted {
                for e in events {
                    on_commit(e);
                }
            }
            self.durable_head.store(head, Ordering::SeqCst);
            for (reply, events) in accepted {
                for e in &events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.feed.send(Arc::clone(e));
                }
                let _ = reply.send(Ok(events));
            }
        }
    }

    /// Seq of the last durable event (0 when empty).
    pub fn head(&self) -> u64 {
        self.durable_head.load(Ordering::SeqCst)
    }

    /// Live feed of committed events. Subscribe before reading history.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.feed.subscribe()
    }

    /// Number of events in a stream.
    pub fn stream_version(&self, stream: &str) -> u64 {
        self.index
            .read()
            .map(|idx| idx.get(stream).map_or(0, |v| v.len() as u64))
            .unwrap_or(0)
    }

    fn read_seq(&self, seq: u64) -> Result<Event, LogError> {
        let value = self.tree.get(event_key(seq))?.ok_or(LogError::Corrupt {
            seq,
            valid: seq.saturating_sub(1),
            reason: "missing record".into(),
        })?;
        decode_record(&value).map_err(|reason| LogError::Corrupt {
            seq,
            valid: seq.saturating_sub(1),
            reason,
        })
    }

    /// Up to `limit` durable events with seq in (`after`, `upto`], in order.
    pub(crate) fn read_after(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let head = upto.min(self.head());
        let mut out = Vec::new();
        if after >= head {
            return Ok(out);
        }
        for item in self.tree.range(event_key(after + 1)..=event_key(head)) {
            let (_, value) = item?;
            let e = decode_record(&value).map_err(|reason| LogError::Corrupt {
                seq: after + out.len() as u64 + 1,
                valid: after + out.len() as u64,
                reason,
            })?;
            out.push(Arc::new(e));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` durable events of `stream` with seq in (`after`, `upto`].
    pub fn read_stream(
        &self,
        stream: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let upto = upto.min(self.head());
        let seqs: Vec<u64> = match self.index.read() {
            Ok(idx) => match idx.get(stream) {
                Some(all) => {
                    let start = all.partition_point(|&s| s <= after);
                    all[start..]
                        .iter()
                        .copied()
                        .take_while(|&s| s <= upto)
                        .take(limit)
                        .collect()
                }
                None => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        seqs.into_iter()
            .map(|s| self.read_seq(s).map(Arc::new))
            .collect()
    }

    /// Flushes everything written so far (shutdown).
    pub async fn flush(&self) -> Result<(), LogError> {
        self.db
            .flush_async()
            .await
            .map_err(|e| LogError::NotWritable(WriteFailure::from_sled(&e)))?;
        Ok(())
    }
}

/// Truncates the log at its first invalid record. Returns how many records
/// were removed (0 when the log was valid).
pub fn repair(dir: &Path) -> Result<u64, LogError> {
    let db = sled::Config::new().path(dir).open()?;
    let tree = db.open_tree("log")?;
    let mut cut_from: Option<Vec<u8>> = None;
    for (expected, item) in (1u64..).zip(tree.scan_prefix([EVENT_PREFIX])) {
        let (key, value) = item?;
        let ok = key_seq(&key) == Some(expected)
            && decode_record(&value).is_ok_and(|e| e.seq == expected);
        if !ok {
            cut_from = Some(key.to_vec());
            break;
        }
    }
    let mut removed = 0;
    if let Some(from) = cut_from {
        let keys: Vec<_> = tree.range(from..).keys().collect::<Result<Vec<_>, _>>()?;
        for k in keys {
            tree.remove(k)?;
            removed += 1;
        }
        db.flush()?;
    }
    Ok(removed)
}

/// Builds an event for `append` (seq, stream and version are assigned there).
pub fn new_event(pipe_id: &str, payload: Payload) -> Event {
    Event {
        pipe_id: pipe_id.to_owned(),
        payload: Some(payload),
        ..Default::default()
    }
}
