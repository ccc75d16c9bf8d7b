//! The CDC loop's side of the replication stream: the next item within a
//! wait, and the liveness of a silent connection.
//!
//! Not read ahead while a batch is written: the connection's task already
//! buffers 2,048 messages, and decoding the next batch beside the insert
//! made the drain slower on 2 cores (more CPU for pgpipe and the
//! walsender; `bench/RESULTS.md`).

use std::time::Duration;

use tokio_postgres::Client;

use crate::model::Lsn;
use crate::source::{self, SourceError, StreamItem};

/// The replication stream and what tells a quiet one from a dead one.
pub(super) struct Reader {
    stream: source::ChangeStream,
    liveness: source::Liveness,
}

impl Reader {
    pub(super) fn new(stream: source::ChangeStream, slot: &str) -> Self {
        Reader {
            stream,
            liveness: source::Liveness::new(slot),
        }
    }

    /// The next item from the stream within `wait` (None when `wait`
    /// passes first; nothing is lost, see [`source::ChangeStream::next`]).
    pub(super) async fn next_within(
        &mut self,
        wait: Duration,
        pg: &Client,
    ) -> Result<Option<StreamItem>, SourceError> {
        match tokio::time::timeout(wait, self.stream.next(pg)).await {
            Ok(item) => {
                self.liveness.heard();
                item.map(Some)
            }
            Err(_) => Ok(None),
        }
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
