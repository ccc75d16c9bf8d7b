//! The CDC loop's side of the replication stream: the next item, read
//! ahead while a batch is being written, and the liveness of a silent
//! connection.
//!
//! Reading ahead is what keeps the two ends busy at once: while ClickHouse
//! inserts one batch, the next one's messages are decoded. Items read ahead
//! are only queued, in order; the loop handles them afterwards exactly as
//! if they had just arrived (routing, schema changes and confirmations
//! happen in the loop, never here). The queue holds at most one batch's
//! worth of rows, so memory stays bounded by twice a batch.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tokio_postgres::Client;

use crate::model::{Lsn, TxItem};
use crate::source::{self, SourceError, StreamItem};

use super::row_bytes;

/// The replication stream with its read-ahead queue.
pub(super) struct Reader {
    stream: source::ChangeStream,
    liveness: source::Liveness,
    /// Items read while a batch was being written, in stream order.
    ahead: VecDeque<StreamItem>,
    /// Rows queued in `ahead`, and about how much memory they take.
    rows: usize,
    bytes: usize,
    /// At most this many rows / bytes are read ahead (a batch's limits).
    max_rows: usize,
    max_bytes: usize,
}

impl Reader {
    pub(super) fn new(
        stream: source::ChangeStream,
        slot: &str,
        max_rows: usize,
        max_bytes: usize,
    ) -> Self {
        Reader {
            stream,
            liveness: source::Liveness::new(slot),
            ahead: VecDeque::new(),
            rows: 0,
            bytes: 0,
            max_rows,
            max_bytes,
        }
    }

    /// The next item: one read ahead, else from the stream within `wait`
    /// (None when `wait` passes first).
    pub(super) async fn next_within(
        &mut self,
        wait: Duration,
        pg: &Client,
    ) -> Result<Option<StreamItem>, SourceError> {
        if let Some(item) = self.ahead.pop_front() {
            if let Some(b) = item_bytes(&item) {
                self.rows -= 1;
                self.bytes -= b;
            }
            return Ok(Some(item));
        }
        match tokio::time::timeout(wait, self.stream.next(pg)).await {
            Ok(item) => {
                self.liveness.heard();
                item.map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    /// Runs `write` to its end while reading the stream ahead (up to a
    /// batch's worth). A stream error waits for the write to finish, so a
    /// batch is never left half-sent, and is returned after it.
    pub(super) async fn while_writing<E>(
        &mut self,
        pg: &Client,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E>
    where
        E: From<SourceError>,
    {
        tokio::pin!(write);
        loop {
            if self.is_full() {
                return write.await;
            }
            let read = tokio::select! {
                biased;
                done = &mut write => return done,
                item = self.stream.next(pg) => item,
            };
            // Then what has already arrived, without polling the write
            // again for each item (that cost more CPU than it saved).
            let mut read = Some(read);
            while let Some(item) = read {
                match item {
                    Ok(item) => self.queue(item),
                    Err(e) => {
                        write.await?;
                        return Err(e.into());
                    }
                }
                read = if self.is_full() {
                    None
                } else {
                    self.stream.next(pg).now_or_never()
                };
            }
        }
    }

    fn queue(&mut self, item: StreamItem) {
        self.liveness.heard();
        if let Some(b) = item_bytes(&item) {
            self.rows += 1;
            self.bytes += b;
        }
        self.ahead.push_back(item);
    }

    fn is_full(&self) -> bool {
        self.rows >= self.max_rows || self.bytes >= self.max_bytes
    }

    /// See [`source::ChangeStream::confirm`].
    pub(super) fn confirm(&self, lsn: Lsn) {
        self.stream.confirm(lsn);
    }

    /// After a quiet spell: asks the server whether the connection is
    /// still alive (see [`source::Liveness`]).
    pub(super) async fn probe_if_silent(&mut self, pg: &Client) -> Result<(), SourceError> {
        self.liveness.probe_if_silent(pg).await
    }
}

/// About how much memory a queued row change takes (None: not a row).
fn item_bytes(item: &StreamItem) -> Option<usize> {
    match item {
        StreamItem::Item(TxItem::Change(c)) => Some(row_bytes(&c.row)),
        _ => None,
    }
}
