//! GetPipeHistory: a pipe name's events, read from the log through its
//! per-stream index, filtered by kind and paged. No second store: the log is
//! the history.

use crate::proto::event::Payload;
use crate::proto::{Event, HistoryKind};
use crate::store::{EventLog, LogError};

/// Events per page when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page a request may ask for.
pub const MAX_PAGE: usize = 1000;
/// Events read from the log per step while a page is being filled.
const CHUNK: usize = 1000;

/// Whether `e` belongs to the history of `kind`.
pub fn matches(kind: HistoryKind, e: &Event) -> bool {
    let Some(p) = &e.payload else {
        // An event of a newer writer: only "all" shows it.
        return kind == HistoryKind::All;
    };
    match kind {
        HistoryKind::All => true,
        HistoryKind::Errors => matches!(p, Payload::PipeFailed(_) | Payload::PipeRecovered(_)),
        HistoryKind::Cdc => matches!(p, Payload::CdcStarted(_) | Payload::CdcProgress(_)),
        HistoryKind::Snapshot => matches!(
            p,
            Payload::SnapshotStarted(_)
                | Payload::SnapshotProgress(_)
                | Payload::SnapshotTableCompleted(_)
                | Payload::SnapshotCompleted(_)
        ),
        HistoryKind::SlotHealth => matches!(
            p,
            Payload::SlotHealthWarning(_) | Payload::SlotHealthRecovered(_)
        ),
    }
}

/// Up to `page` events of stream `name` after seq `after` that are of
/// `kind`, oldest first, and where the next page starts when this one is
/// full (None: the log's end was reached).
pub fn page(
    log: &EventLog,
    name: &str,
    kind: HistoryKind,
    after: u64,
    page: usize,
) -> Result<(Vec<Event>, Option<u64>), LogError> {
    let head = log.head();
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let chunk = log.read_stream(name, cursor, head, CHUNK)?;
        if chunk.is_empty() {
            return Ok((out, None));
        }
        for e in chunk {
            cursor = e.seq;
            if matches(kind, &e) {
                out.push(Event::clone(&e));
                if out.len() >= page {
                    return Ok((out, Some(cursor)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CdcProgress, PipeFailed, PipePaused, SnapshotCompleted};

    fn ev(p: Payload) -> Event {
        Event {
            payload: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_keeps_its_own_events() {
        let failed = ev(Payload::PipeFailed(PipeFailed::default()));
        let cdc = ev(Payload::CdcProgress(CdcProgress::default()));
        let snap = ev(Payload::SnapshotCompleted(SnapshotCompleted::default()));
        let paused = ev(Payload::PipePaused(PipePaused::default()));
        assert!(matches(HistoryKind::Errors, &failed));
        assert!(!matches(HistoryKind::Errors, &cdc));
        assert!(matches(HistoryKind::Cdc, &cdc));
        assert!(!matches(HistoryKind::Cdc, &snap));
        assert!(matches(HistoryKind::Snapshot, &snap));
        assert!(!matches(HistoryKind::Snapshot, &paused));
        for e in [&failed, &cdc, &snap, &paused] {
            assert!(matches(HistoryKind::All, e));
        }
    }

    #[test]
    fn an_event_of_a_newer_writer_is_only_in_all() {
        let unknown = Event::default();
        assert!(matches(HistoryKind::All, &unknown));
        assert!(!matches(HistoryKind::Errors, &unknown));
    }
}
