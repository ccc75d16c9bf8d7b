//! Waits on a pipe's state that follow WatchPipe (and WatchEvents) instead
//! of polling GetPipe: they see every state the pipe passes through, as soon
//! as it is recorded, and end at a deadline saying what they waited for and
//! the last state seen.

use std::time::Duration;

use pgpipe::domain::projection::event_kind;
use pgpipe::proto::event::Payload;
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::*;
use tokio::time::{Instant, timeout_at};

use super::Transport;

/// The current incarnation of one pipe name, folded from WatchPipe.
///
/// WatchPipe sends the name's state first, then one message per event with
/// the state of the incarnation the event is about. That can be an older
/// incarnation (a resync's replaced one is deleted and releases its slot
/// after the new one exists), so a message only counts when it is about the
/// incarnation GetPipe would return: the one the latest PipeCreated made.
#[derive(Default)]
struct Current {
    pipe: Option<Pipe>,
    cursor: u64,
    /// Kind of the last event folded in ("" for the first state).
    last_event: &'static str,
    /// The name was deleted for good: WatchPipe ends after this event.
    deleted: bool,
}

impl Current {
    /// Folds one message in; true when the current incarnation changed.
    fn fold(&mut self, m: WatchPipeResponse) -> bool {
        self.cursor = m.cursor;
        let Some(p) = m.pipe else {
            return false;
        };
        let Some(e) = m.event else {
            self.deleted = p.status() == PipeStatus::Deleted && p.delete_reason != "resync";
            self.pipe = Some(p);
            return true;
        };
        let starts = matches!(e.payload, Some(Payload::PipeCreated(_)));
        let same = self.pipe.as_ref().is_some_and(|c| c.id == p.id);
        if !(starts || same) {
            return false;
        }
        if let Some(Payload::PipeDeleted(d)) = &e.payload {
            self.deleted = d.reason() != DeleteReason::Resync;
        }
        self.last_event = event_kind(&e);
        self.pipe = Some(p);
        true
    }

    /// The last state seen, for a failure message.
    fn describe(&self) -> String {
        match &self.pipe {
            None => format!("nothing received (cursor {})", self.cursor),
            Some(p) => format!(
                "incarnation {} {:?} after {} (cursor {}), error {:?}, failed step {:?}, detail {:?}: {p:?}",
                p.id,
                p.status(),
                if self.last_event.is_empty() {
                    "the first state"
                } else {
                    self.last_event
                },
                self.cursor,
                p.error,
                p.failed_step,
                p.status_detail,
            ),
        }
    }
}

/// Follows WatchPipe of `name` until `pred` holds for its current
/// incarnation (checked on the state when the watch starts, then after each
/// event about that incarnation); returns that state. Panics after
/// `timeout`, when the pipe is deleted for good (WatchPipe ends) or the
/// stream breaks, saying what it waited for and the last state seen.
pub async fn wait_pipe(
    c: &mut PipeServiceClient<impl Transport>,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl FnMut(&Pipe) -> bool,
) -> Pipe {
    try_wait_pipe(c, name, what, timeout, pred)
        .await
        .unwrap_or_else(|why| panic!("{why}"))
}

/// [`wait_pipe`] that says why it gave up instead of panicking (for a
/// test that only aims at a state and goes on without it).
pub async fn try_wait_pipe(
    c: &mut PipeServiceClient<impl Transport>,
    name: &str,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Pipe) -> bool,
) -> Result<Pipe, String> {
    let deadline = Instant::now() + timeout;
    let req = WatchPipeRequest {
        name: name.into(),
        after_cursor: None,
    };
    let mut stream = match timeout_at(deadline, c.watch_pipe(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            return Err(format!(
                "pipe {name}: WatchPipe refused while waiting for {what}: {s}"
            ));
        }
        Err(_) => {
            return Err(format!(
                "pipe {name}: WatchPipe did not open in {timeout:?} (waiting for {what})"
            ));
        }
    };
    let mut now = Current::default();
    loop {
        let m = match timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Err(_) => {
                return Err(format!(
                    "pipe {name}: not {what} after {timeout:?}; last state: {}",
                    now.describe()
                ));
            }
            Ok(Ok(None)) if now.deleted => {
                return Err(format!(
                    "pipe {name} was deleted while waiting for {what}; last state: {}",
                    now.describe()
                ));
            }
            Ok(Ok(None)) => {
                return Err(format!(
                    "pipe {name}: WatchPipe ended (server stopping?) while waiting for {what}; last state: {}",
                    now.describe()
                ));
            }
            Ok(Err(s)) => {
                return Err(format!(
                    "pipe {name}: WatchPipe failed while waiting for {what}: {s}; last state: {}",
                    now.describe()
                ));
            }
        };
        if now.fold(m)
            && let Some(p) = now.pipe.as_ref().filter(|p| pred(p))
        {
            return Ok(p.clone());
        }
    }
}

/// Waits until the incarnation `id` has released its slot and publication;
/// returns it. A release comes after the deletion that ends WatchPipe, so
/// this follows the name's events (WatchEvents) from the incarnation's
/// state, for its SourceReleased.
pub async fn wait_released(c: &mut PipeServiceClient<impl Transport>, id: &str) -> Pipe {
    let timeout = Duration::from_secs(60);
    let deadline = Instant::now() + timeout;
    let at = super::get_id(c, id).await;
    if at.source_released {
        return at;
    }
    // Every later event about `id` has a seq above the state's cursor.
    let req = WatchEventsRequest {
        after_cursor: Some(at.cursor),
        pipe_name: at.name.clone(),
        ..Default::default()
    };
    let mut stream = c.watch_events(req).await.unwrap().into_inner();
    let mut last = "nothing";
    loop {
        let e = match timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(WatchEventsResponse {
                item: Some(watch_events_response::Item::Event(e)),
            }))) => e,
            Ok(Ok(Some(_))) => continue,
            Err(_) => panic!(
                "source objects of {id} ({}) not released after {timeout:?}; last event of the name: {last}; state before: {at:?}",
                at.name
            ),
            Ok(Ok(None)) => panic!("WatchEvents of {} ended before {id} was released", at.name),
            Ok(Err(s)) => panic!(
                "WatchEvents of {} failed before {id} was released: {s}",
                at.name
            ),
        };
        if e.pipe_id == id && matches!(e.payload, Some(Payload::SourceReleased(_))) {
            return super::get_id(c, id).await;
        }
        last = event_kind(&e);
    }
}
