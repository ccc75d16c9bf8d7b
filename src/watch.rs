//! Watchers: follow the log from a cursor, then live.
//!
//! Each watcher is a task feeding a bounded channel (the tonic response
//! stream). It subscribes to the in-memory feed *before* reading history, so
//! every event is either in the history it reads or in the feed; seqs at or
//! below what it already sent are skipped, so nothing is doubled. A watcher
//! that falls behind the feed (lagged) goes back to reading the log: slow
//! watchers never block appends and never lose events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::domain::projection::{self, Projection, ends_stream};
use crate::domain::validate::selector_matches;
use crate::proto::{Event, Pipe, event::Payload};
use crate::store::{EventLog, LogError};

const HISTORY_CHUNK: usize = 512;

pub(crate) enum FeedItem {
    Event(Arc<Event>),
    /// Everything up to this cursor has been delivered; the rest is live.
    CaughtUp(u64),
}

/// Follows events with seq > `after` (of `stream` only, if given) until the
/// receiver goes away. Sends `CaughtUp` once, when history is exhausted.
pub(crate) async fn follow(
    log: Arc<EventLog>,
    after: u64,
    stream: Option<String>,
    tx: mpsc::Sender<Result<FeedItem, LogError>>,
) {
    let mut last = after;
    let mut caught_up = false;
    loop {
        let mut feed = log.subscribe();
        // History in chunks so a far-behind watcher does not hold memory.
        let head = log.head();
        while last < head {
            let mut batch = Vec::new();
            match history_chunk(&log, stream.as_deref(), last, head, &mut batch) {
                Ok(next) => last = next,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            for e in batch {
                if tx.send(Ok(FeedItem::Event(e))).await.is_err() {
                    return;
                }
            }
        }
        if !caught_up {
            caught_up = true;
            if tx.send(Ok(FeedItem::CaughtUp(last))).await.is_err() {
                return;
            }
        }
        loop {
            match feed.recv().await {
                Ok(e) => {
                    if e.seq <= last {
                        continue;
                    }
                    last = e.seq;
                    if stream.as_deref().is_some_and(|s| s != e.pipe_name) {
                        continue;
                    }
                    if tx.send(Ok(FeedItem::Event(e))).await.is_err() {
                        return;
                    }
                }
                // Fell behind the in-memory feed: continue from the log.
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// One bounded chunk of history in (`last`, `head`]; returns how far it
/// got (the head once a short chunk shows nothing more is there).
fn history_chunk(
    log: &EventLog,
    stream: Option<&str>,
    last: u64,
    head: u64,
    out: &mut Vec<Arc<Event>>,
) -> Result<u64, LogError> {
    let chunk = match stream {
        Some(s) => log.read_stream(s, last, head, HISTORY_CHUNK)?,
        None => log.read_after(last, head, HISTORY_CHUNK)?,
    };
    let next = match chunk.last() {
        Some(e) if chunk.len() >= HISTORY_CHUNK => e.seq,
        _ => head.max(last),
    };
    out.extend(chunk);
    Ok(next)
}

/// WatchEvents' label selector. An event passes when its pipe name's
/// labels, right after the event, have every pair of the selector. Labels
/// are folded from the log itself (not read from the live projection), so a
/// replay from a cursor passes exactly the events a live watcher passed.
pub(crate) struct LabelFilter {
    selector: BTreeMap<String, String>,
    labels: HashMap<String, BTreeMap<String, String>>,
}

impl LabelFilter {
    /// Folds the labels of every pipe name (or of `stream` only) from the
    /// log's start up to `upto`, the cursor the watcher starts after. This
    /// reads that much history once per watcher.
    pub fn load(
        log: &EventLog,
        stream: Option<&str>,
        upto: u64,
        selector: BTreeMap<String, String>,
    ) -> Result<Self, LogError> {
        let mut filter = Self {
            selector,
            labels: HashMap::new(),
        };
        let mut last = 0;
        while last < upto {
            let mut events = Vec::new();
            last = history_chunk(log, stream, last, upto, &mut events)?;
            for e in &events {
                filter.track(e);
            }
        }
        Ok(filter)
    }

    fn track(&mut self, e: &Event) {
        let labels = match &e.payload {
            Some(Payload::PipeCreated(c)) => c
                .config
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
            Some(Payload::PipeLabelsChanged(l)) => l.labels.clone(),
            _ => return,
        };
        self.labels.insert(e.pipe_name.clone(), labels);
    }

    /// Records the event's label change (if any) and says whether it passes.
    pub fn admit(&mut self, e: &Event) -> bool {
        self.track(e);
        let empty = BTreeMap::new();
        let labels = self.labels.get(&e.pipe_name).unwrap_or(&empty);
        selector_matches(&self.selector, labels)
    }
}

/// State of one pipe name's stream, folded from its events.
#[derive(Default)]
pub(crate) struct PipeView {
    fold: Projection,
    name: String,
}

impl PipeView {
    /// Folds the stream's history up to `upto` (inclusive).
    pub fn load(log: &EventLog, name: &str, upto: u64) -> Result<Self, LogError> {
        let mut view = Self {
            fold: Projection::default(),
            name: name.to_owned(),
        };
        let mut last = 0;
        while last < upto {
            let mut events = Vec::new();
            last = history_chunk(log, Some(name), last, upto, &mut events)?;
            for e in &events {
                view.fold.apply(e);
            }
        }
        Ok(view)
    }

    pub fn apply(&mut self, e: &Event) {
        self.fold.apply(e);
    }

    /// The state of the incarnation `e` is about, after `e`.
    pub fn pipe_for(&self, e: &Event) -> Option<Pipe> {
        self.fold.by_id(&e.pipe_id).cloned()
    }

    pub fn current(&self) -> Option<Pipe> {
        self.fold.by_name(&self.name).cloned()
    }

    /// True once the name's current incarnation is deleted for good.
    pub fn ended(&self) -> bool {
        self.current().is_some_and(|p| {
            p.status == crate::proto::PipeStatus::Deleted as i32 && p.delete_reason != "resync"
        })
    }
}

/// Whether a watcher should stop after sending this event.
pub(crate) fn is_final(e: &Event) -> bool {
    ends_stream(e)
}

pub use projection::event_kind;
