//! Stream bookkeeping for `watch`, independent of rendering.

use crate::cli::format::{event_text, status_label};
use crate::cli::json::event_kind;
use crate::proto::{DeleteReason, Pipe, PipeStatus, WatchPipeResponse, event::Payload};

/// What `--until-running` decided after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Continue,
    /// The pipe reached RUNNING (after not running / a resync).
    Running,
    /// A PipeFailed event with `retrying == false`.
    Failed {
        step: String,
        reason: String,
    },
}

/// What to do with one WatchPipeResponse.
#[derive(Debug)]
pub(crate) struct Observed {
    /// Human lines to print (without the time/sequence prefix for events).
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

/// Stream bookkeeping, independent of rendering: cursor for resuming,
/// duplicate suppression, which lines to print, and `--until-running`.
#[derive(Debug)]
pub(crate) struct Tracker {
    until_running: bool,
    initial_after: Option<u64>,
    last_cursor: Option<u64>,
    seen_not_running: bool,
    last_kind: Option<&'static str>,
    last_status: Option<(String, i32)>,
    /// The last message showed the pipe deleted by a user: the end of the
    /// stream is final.
    deleted: bool,
    messages: u64,
}

const PROGRESS_KINDS: [&str; 2] = ["snapshot_progress", "cdc_progress"];

impl Tracker {
    pub(crate) fn new(until_running: bool, after: Option<u64>) -> Self {
        Self {
            until_running,
            initial_after: after,
            last_cursor: None,
            seen_not_running: false,
            last_kind: None,
            last_status: None,
            deleted: false,
            messages: 0,
        }
    }

    /// The cursor to resume after: the last one seen, else the one we
    /// started from.
    pub(crate) fn resume_cursor(&self) -> Option<u64> {
        self.last_cursor.or(self.initial_after)
    }

    /// Whether the server ending the stream now is the normal end (the
    /// pipe was deleted), as opposed to a connection cut short.
    pub(crate) fn stream_end_is_final(&self) -> bool {
        self.deleted || self.messages == 0
    }

    /// Processes one message. `None`: a duplicate (already seen before a
    /// reconnection), to be ignored.
    pub(crate) fn observe(&mut self, msg: &WatchPipeResponse) -> Option<Observed> {
        // Already seen (replayed after a reconnection): the cursor never
        // goes backwards. A state message (no event) repeating the cursor
        // we resume from is not news either.
        if let Some(last) = self.last_cursor
            && msg.cursor <= last
        {
            return None;
        }
        if msg.event.is_some()
            && let Some(after) = self.initial_after
            && msg.cursor <= after
        {
            return None;
        }
        self.last_cursor = Some(msg.cursor);
        self.messages += 1;
        let mut lines = Vec::new();
        let default_pipe = Pipe::default();
        let pipe = msg.pipe.as_ref().unwrap_or(&default_pipe);
        let status = pipe.status;
        let mut verdict = Verdict::Continue;

        match &msg.event {
            None => lines.push(format!(
                "pipe {} ({}): {}{}, cursor {}",
                pipe.name,
                pipe.id,
                status_label(status),
                if pipe.resyncing { ", resyncing" } else { "" },
                msg.cursor
            )),
            Some(ev) => {
                let kind = event_kind(ev);
                if !PROGRESS_KINDS.contains(&kind) || self.last_kind != Some(kind) {
                    lines.push(event_text(ev));
                }
                self.last_kind = Some(kind);
                match &ev.payload {
                    Some(Payload::PipeFailed(f)) if !f.retrying => {
                        verdict = Verdict::Failed {
                            step: f.step.clone(),
                            reason: f.reason.clone(),
                        };
                    }
                    Some(Payload::ResyncStarted(_)) | Some(Payload::PipeCreated(_)) => {
                        self.seen_not_running = true;
                    }
                    Some(Payload::PipeDeleted(d)) => {
                        self.seen_not_running = true;
                        self.deleted = d.reason != DeleteReason::Resync as i32;
                    }
                    _ => {}
                }
            }
        }
        if msg.event.is_none() {
            // As the server decides: deleted, and not replaced by a resync.
            self.deleted = status == PipeStatus::Deleted as i32 && pipe.delete_reason != "resync";
        } else if status != PipeStatus::Deleted as i32 {
            self.deleted = false;
        }

        // A status change (of the same incarnation, or a new one) gets a line.
        let key = (pipe.id.clone(), status);
        if msg.event.is_some()
            && let Some((last_id, last_status)) = &self.last_status
            && (*last_id != key.0 || *last_status != status)
        {
            let mut line = format!(
                "status: {} → {}",
                status_label(*last_status),
                status_label(status)
            );
            if !pipe.status_detail.is_empty() {
                line.push_str(&format!(" ({})", pipe.status_detail));
            }
            lines.push(line);
        }
        self.last_status = Some(key);

        let running = status == PipeStatus::Running as i32 && !pipe.resyncing;
        if !running {
            self.seen_not_running = true;
        }
        if self.until_running
            && verdict == Verdict::Continue
            && running
            && self.seen_not_running
            // ResyncStarted is recorded on the running incarnation; the
            // resync is not over yet.
            && !matches!(
                msg.event.as_ref().and_then(|e| e.payload.as_ref()),
                Some(Payload::ResyncStarted(_))
            )
        {
            verdict = Verdict::Running;
        }
        if !self.until_running && matches!(verdict, Verdict::Failed { .. }) {
            verdict = Verdict::Continue;
        }
        Some(Observed { lines, verdict })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        Event, PipeCreated, PipeDeleted, PipeFailed, ResyncStarted, SnapshotProgress,
    };

    fn msg(
        cursor: u64,
        id: &str,
        status: PipeStatus,
        payload: Option<Payload>,
    ) -> WatchPipeResponse {
        WatchPipeResponse {
            cursor,
            pipe: Some(Pipe {
                id: id.into(),
                name: "orders".into(),
                status: status as i32,
                cursor,
                ..Default::default()
            }),
            event: payload.map(|p| Event {
                seq: cursor,
                pipe_name: "orders".into(),
                pipe_id: id.into(),
                payload: Some(p),
                ..Default::default()
            }),
        }
    }

    fn progress() -> Payload {
        Payload::SnapshotProgress(SnapshotProgress::default())
    }

    /// A message the tracker must not skip.
    fn see(
        t: &mut Tracker,
        cursor: u64,
        id: &str,
        status: PipeStatus,
        payload: Option<Payload>,
    ) -> Observed {
        t.observe(&msg(cursor, id, status, payload))
            .expect("a new message is observed")
    }

    fn deleted(reason: DeleteReason, drop_destination_tables: bool) -> Payload {
        Payload::PipeDeleted(PipeDeleted {
            reason: reason as i32,
            drop_destination_tables,
        })
    }

    fn failed(step: &str, reason: &str, retrying: bool) -> Payload {
        Payload::PipeFailed(PipeFailed {
            step: step.into(),
            reason: reason.into(),
            retrying,
        })
    }

    #[test]
    fn until_running_after_resync() {
        let mut t = Tracker::new(true, Some(10));
        // Resuming after a resync: events of the new incarnation.
        let payload = Some(Payload::StepStarted(Default::default()));
        let o = see(&mut t, 11, "p2", PipeStatus::Setup, payload);
        assert_eq!(o.verdict, Verdict::Continue);
        let o = see(&mut t, 12, "p2", PipeStatus::Snapshot, Some(progress()));
        assert_eq!(o.lines[0], "snapshot progress:  0/0 partitions, 0 rows");
        assert_eq!(o.lines[1], "status: setup → snapshot");
        // Repeated progress events print nothing.
        let o = see(&mut t, 13, "p2", PipeStatus::Snapshot, Some(progress()));
        assert!(o.lines.is_empty());
        // Duplicate after a reconnection: skipped.
        assert!(
            t.observe(&msg(13, "p2", PipeStatus::Snapshot, Some(progress())))
                .is_none()
        );
        assert_eq!(t.resume_cursor(), Some(13));
        // A server replaying its state message after a reconnection: skipped.
        assert!(
            t.observe(&msg(9, "p2", PipeStatus::Snapshot, None))
                .is_none()
        );
        // Events up to the cursor we were started from are skipped too.
        let mut fresh = Tracker::new(false, Some(10));
        assert!(
            fresh
                .observe(&msg(10, "p2", PipeStatus::Setup, Some(progress())))
                .is_none()
        );
        let payload = Some(Payload::CdcStarted(Default::default()));
        let o = see(&mut t, 14, "p2", PipeStatus::Running, payload);
        assert_eq!(o.verdict, Verdict::Running);
    }

    #[test]
    fn until_running_waits_for_a_transition() {
        let mut t = Tracker::new(true, None);
        // Already running: not done, the brief says "after having seen the
        // pipe not running or a resync".
        let o = see(&mut t, 5, "p1", PipeStatus::Running, None);
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(o.lines, vec!["pipe orders (p1): running, cursor 5"]);
        // ResyncStarted on the still-running old incarnation: keep waiting.
        let payload = Some(Payload::ResyncStarted(ResyncStarted::default()));
        let o = see(&mut t, 6, "p1", PipeStatus::Running, payload);
        assert_eq!(o.verdict, Verdict::Continue);
        let payload = Some(deleted(DeleteReason::Resync, false));
        let o = see(&mut t, 7, "p1", PipeStatus::Deleted, payload);
        assert_eq!(
            o.lines,
            vec!["deleted (resync)", "status: running → deleted"]
        );
        // A resync deletion is not the end of the name's stream.
        assert!(!t.stream_end_is_final());
        let o = see(
            &mut t,
            8,
            "p2",
            PipeStatus::Setup,
            Some(Payload::PipeCreated(PipeCreated {
                resync_of: "p1".into(),
                ..Default::default()
            })),
        );
        assert_eq!(
            o.lines,
            vec!["created (resync of p1)", "status: deleted → setup"]
        );
        let payload = Some(Payload::CdcStarted(Default::default()));
        let o = see(&mut t, 9, "p2", PipeStatus::Running, payload);
        assert_eq!(o.verdict, Verdict::Running);
    }

    /// A FAILED message of pipe `p` with `failed(step, reason, retrying)`.
    fn see_failed(t: &mut Tracker, cursor: u64, step: &str, reason: &str, retry: bool) -> Verdict {
        let payload = Some(failed(step, reason, retry));
        see(t, cursor, "p", PipeStatus::Failed, payload).verdict
    }

    #[test]
    fn failures() {
        let mut t = Tracker::new(true, None);
        // A failure that is retried is not the end of --until-running.
        let v = see_failed(&mut t, 1, "cdc", "peer down", true);
        assert_eq!(v, Verdict::Continue);
        let v = see_failed(&mut t, 2, "cdc", "slot lost", false);
        let (step, reason) = ("cdc".into(), "slot lost".into());
        assert_eq!(v, Verdict::Failed { step, reason });
        // Without --until-running a failure is just a line.
        let mut t = Tracker::new(false, None);
        assert_eq!(see_failed(&mut t, 2, "", "", false), Verdict::Continue);
        // A user deletion makes the end of the stream final.
        let user_deleted = Some(deleted(DeleteReason::User, true));
        let o = see(&mut t, 3, "p", PipeStatus::Deleted, user_deleted);
        assert_eq!(o.lines[0], "deleted (by user), destination tables dropped");
        assert!(t.stream_end_is_final());
    }
}
