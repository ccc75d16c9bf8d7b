//! `watch` and `events`: following server streams, with reconnection after
//! the last cursor seen. `tracker` decides what each message means (lines to
//! print, `--until-running`), `view` draws the progress bars.

mod tracker;
mod view;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;
use tonic::{Code, Status, Streaming};

use super::format::{event_text, format_time_of_day, format_timestamp};
use super::json::{watch_events_json, watch_message_json};
use super::{CliError, Client, EXIT_PIPE_FAILED, Out, parse_label};
use crate::proto::{
    Pipe, WatchEventsRequest, WatchEventsResponse, WatchPipeRequest, WatchPipeResponse,
    watch_events_response::Item,
};

pub(crate) use tracker::{Tracker, Verdict};
use view::ProgressView;

/// Reconnection attempts in a row (without a message in between) before
/// giving up; the delay doubles from `FIRST_BACKOFF` up to `MAX_BACKOFF`.
const MAX_RECONNECTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Errors after which the same stream may be resumed: the server or the
/// network went away (as opposed to an answer from the server, such as
/// NOT_FOUND or PERMISSION_DENIED).
pub(crate) fn is_reconnectable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A connection dropped mid-stream surfaces as an h2/hyper error
        // mapped to one of these codes, with the transport's message.
        Code::Unknown | Code::Internal | Code::Cancelled => {
            let m = status.message().to_ascii_lowercase();
            [
                "h2 protocol error",
                "transport error",
                "connection",
                "broken pipe",
                "error reading a body",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    }
}

/// After a stream broke: the delay before reconnecting and the message that
/// says so, or the error to end with (not reconnectable, or out of attempts).
fn plan_reconnect(
    failure: Status,
    attempt: &mut u32,
    cursor: Option<u64>,
) -> Result<(Duration, String), CliError> {
    if !is_reconnectable(&failure) {
        return Err(failure.into());
    }
    if *attempt >= MAX_RECONNECTS {
        return Err(gave_up(failure));
    }
    *attempt += 1;
    let delay = backoff(*attempt);
    let message = format!(
        "stream interrupted ({}); reconnecting in {:.1}s after cursor {} (attempt {}/{MAX_RECONNECTS})",
        CliError::from(failure),
        delay.as_secs_f64(),
        cursor.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        *attempt,
    );
    Ok((delay, message))
}

fn gave_up(failure: Status) -> CliError {
    CliError::Watch(format!(
        "gave up after {MAX_RECONNECTS} reconnection attempts: {}",
        CliError::from(failure)
    ))
}

/// How `follow_pipe` renders.
pub(crate) struct WatchOptions {
    pub json: bool,
    pub until_running: bool,
    /// Draw progress bars (human mode on a terminal).
    pub bars: bool,
}

/// Follows one pipe until the stream ends (exit 0), or with
/// `until_running` until it is RUNNING (0) or FAILED for good (1).
pub(crate) async fn follow_pipe(
    client: &mut Client,
    name: &str,
    after: Option<u64>,
    opts: &WatchOptions,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let mut tracker = Tracker::new(opts.until_running, after);
    let mut view = (!opts.json && opts.bars).then(ProgressView::new);
    let result = follow_pipe_inner(client, name, &mut tracker, opts, out, &mut view).await;
    if let Some(v) = &view {
        v.finish();
    }
    result
}

fn emit(view: &Option<ProgressView>, out: &mut Out, line: &str) -> Result<(), CliError> {
    match view {
        Some(v) => v.println(out, line),
        None => out.line(line),
    }
}

fn warn(view: &Option<ProgressView>, line: &str) {
    match view {
        Some(v) => v.warn(line),
        None => eprintln!("{line}"),
    }
}

/// What one followed stream does with its messages; `follow` owns the
/// reconnection loop both `watch` and `events` share.
trait Follow {
    type Msg;
    /// Opens the stream, resuming after the last cursor seen.
    async fn open(&mut self, client: &mut Client) -> Result<Streaming<Self::Msg>, Status>;
    fn on_message(&mut self, msg: Self::Msg, out: &mut Out) -> Result<Step, CliError>;
    /// The server ended the stream: the exit code if that is final, `None`
    /// to resume.
    fn on_end(&mut self, out: &mut Out) -> Result<Option<ExitCode>, CliError>;
    /// The cursor to resume after (named in the reconnect message).
    fn cursor(&self) -> Option<u64>;
    fn warn(&self, line: &str);
}

enum Step {
    /// Nothing new (a duplicate, or a marker): the reconnect budget stays.
    Idle,
    /// A new message: the stream works, so the reconnect budget is reset.
    Progress,
    Exit(ExitCode),
}

async fn follow<F: Follow>(
    client: &mut Client,
    follower: &mut F,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let mut attempt = 0u32;
    loop {
        let failure = match follower.open(client).await {
            Err(status) => status,
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(msg)) => match follower.on_message(msg, out)? {
                        Step::Idle => {}
                        Step::Progress => attempt = 0,
                        Step::Exit(code) => return Ok(code),
                    },
                    Ok(None) => match follower.on_end(out)? {
                        Some(code) => return Ok(code),
                        // Cut short (e.g. a server shutting down): resume.
                        None => break Status::unavailable("the server ended the stream"),
                    },
                    Err(status) => break status,
                }
            },
        };
        let (delay, message) = plan_reconnect(failure, &mut attempt, follower.cursor())?;
        follower.warn(&message);
        tokio::time::sleep(delay).await;
    }
}

struct PipeFollower<'a> {
    name: &'a str,
    tracker: &'a mut Tracker,
    opts: &'a WatchOptions,
    view: &'a mut Option<ProgressView>,
}

impl Follow for PipeFollower<'_> {
    type Msg = WatchPipeResponse;

    async fn open(&mut self, client: &mut Client) -> Result<Streaming<Self::Msg>, Status> {
        let request = WatchPipeRequest {
            name: self.name.to_owned(),
            after_cursor: self.tracker.resume_cursor(),
        };
        Ok(client.watch_pipe(request).await?.into_inner())
    }

    fn on_message(&mut self, msg: WatchPipeResponse, out: &mut Out) -> Result<Step, CliError> {
        let Some(observed) = self.tracker.observe(&msg) else {
            return Ok(Step::Idle);
        };
        let name = self.name;
        let view = &mut *self.view;
        if self.opts.json {
            out.json_line(&watch_message_json(&msg))?;
        } else {
            if let (Some(v), Some(pipe)) = (view.as_mut(), msg.pipe.as_ref()) {
                v.update(pipe);
            }
            let prefix = match &msg.event {
                Some(ev) => format!("{} #{}  ", format_time_of_day(ev.at.as_ref()), ev.seq),
                None => String::new(),
            };
            for line in &observed.lines {
                emit(view, out, &format!("{prefix}{line}"))?;
            }
        }
        match observed.verdict {
            Verdict::Continue => Ok(Step::Progress),
            Verdict::Running => {
                if !self.opts.json {
                    emit(view, out, &format!("pipe {name} is running"))?;
                }
                Ok(Step::Exit(ExitCode::SUCCESS))
            }
            Verdict::Failed { step, reason } => {
                if let Some(v) = view.as_ref() {
                    v.finish();
                }
                eprintln!(
                    "error: pipe {name} failed in step {}: {reason}",
                    if step.is_empty() { "?" } else { &step }
                );
                Ok(Step::Exit(ExitCode::from(EXIT_PIPE_FAILED)))
            }
        }
    }

    fn on_end(&mut self, out: &mut Out) -> Result<Option<ExitCode>, CliError> {
        if !self.tracker.stream_end_is_final() {
            return Ok(None);
        }
        if self.opts.until_running {
            return Err(CliError::Watch(format!(
                "the stream of pipe {} ended (pipe deleted) before it reached RUNNING",
                self.name
            )));
        }
        if !self.opts.json {
            emit(self.view, out, "stream ended (pipe deleted)")?;
        }
        Ok(Some(ExitCode::SUCCESS))
    }

    fn cursor(&self) -> Option<u64> {
        self.tracker.resume_cursor()
    }

    fn warn(&self, line: &str) {
        warn(self.view, line);
    }
}

struct EventsFollower<'a> {
    last_seq: Option<u64>,
    pipe: Option<&'a str>,
    selector: &'a std::collections::BTreeMap<String, String>,
    json: bool,
}

impl Follow for EventsFollower<'_> {
    type Msg = WatchEventsResponse;

    async fn open(&mut self, client: &mut Client) -> Result<Streaming<Self::Msg>, Status> {
        let request = WatchEventsRequest {
            after_cursor: self.last_seq,
            pipe_name: self.pipe.unwrap_or_default().to_owned(),
            label_selector: self.selector.clone(),
        };
        Ok(client.watch_events(request).await?.into_inner())
    }

    fn on_message(&mut self, msg: WatchEventsResponse, out: &mut Out) -> Result<Step, CliError> {
        let (step, text) = match &msg.item {
            Some(Item::Event(ev)) => {
                if self.last_seq.is_some_and(|last| ev.seq <= last) {
                    return Ok(Step::Idle);
                }
                self.last_seq = Some(ev.seq);
                let at = ev
                    .at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| format_timestamp(t, false));
                let text = format!("{at} #{}  {}  {}", ev.seq, ev.pipe_name, event_text(ev));
                (Step::Progress, text)
            }
            Some(Item::CaughtUp(c)) => {
                // Everything up to the head was delivered: a
                // reconnection may resume from there.
                if self.last_seq.is_none_or(|last| c.cursor > last) {
                    self.last_seq = Some(c.cursor);
                }
                let text = format!("-- caught up at cursor {}; live events follow --", c.cursor);
                (Step::Idle, text)
            }
            None => return Ok(Step::Idle),
        };
        if self.json {
            out.json_line(&watch_events_json(&msg))?;
        } else {
            out.line(&text)?;
        }
        Ok(step)
    }

    /// The feed never ends for good: an end is always resumed.
    fn on_end(&mut self, _out: &mut Out) -> Result<Option<ExitCode>, CliError> {
        Ok(None)
    }

    fn cursor(&self) -> Option<u64> {
        self.last_seq
    }

    fn warn(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// Follows one pipe's stream; see `follow_pipe`.
async fn follow_pipe_inner(
    client: &mut Client,
    name: &str,
    tracker: &mut Tracker,
    opts: &WatchOptions,
    out: &mut Out,
    view: &mut Option<ProgressView>,
) -> Result<ExitCode, CliError> {
    let mut follower = PipeFollower {
        name,
        tracker,
        opts,
        view,
    };
    follow(client, &mut follower, out).await
}

/// Follows the global event feed (optionally one pipe's) forever.
pub(crate) async fn follow_events(
    client: &mut Client,
    after: Option<u64>,
    pipe: Option<&str>,
    selector: &std::collections::BTreeMap<String, String>,
    json: bool,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let mut follower = EventsFollower {
        last_seq: after,
        pipe,
        selector,
        json,
    };
    follow(client, &mut follower, out).await
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Pipe name (followed across resyncs).
    pub name: String,

    /// Resume after this cursor (from an earlier message) instead of
    /// starting with the current state.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<u64>,

    /// One JSON object per message per line, no progress bars.
    #[arg(long)]
    pub json: bool,

    /// Exit 0 once the pipe is RUNNING after having been seen not running
    /// (or resyncing); exit 1 if it fails without retrying.
    #[arg(long)]
    pub until_running: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Replay events after this cursor first (0: the whole log); without it,
    /// only new events.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<u64>,

    /// Only events of this pipe name.
    #[arg(long, value_name = "NAME")]
    pub pipe: Option<String>,

    /// Only events of pipes with label `key=value` (as of each event);
    /// repeatable (all must match).
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,

    /// One JSON object per event per line, and {"caught_up": CURSOR} once
    /// the replay reached the head of the log.
    #[arg(long)]
    pub json: bool,
}

/// `pgpipe watch`.
pub(super) async fn watch(
    client: &mut Client,
    args: WatchArgs,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    let options = WatchOptions {
        json: args.json,
        until_running: args.until_running,
        bars,
    };
    follow_pipe(client, &args.name, args.after, &options, out).await
}

/// `pgpipe events`.
pub(super) async fn events(
    client: &mut Client,
    args: EventsArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    follow_events(
        client,
        args.after,
        args.pipe.as_deref(),
        &args.selector.iter().cloned().collect(),
        args.json,
        out,
    )
    .await
}

/// The `watch --json` shape for a state without an event.
pub(super) fn state_message(pipe: &Pipe) -> Value {
    watch_message_json(&WatchPipeResponse {
        cursor: pipe.cursor,
        pipe: Some(pipe.clone()),
        event: None,
    })
}

pub(super) async fn wait_running(
    client: &mut Client,
    name: &str,
    after: u64,
    json: bool,
    bars: bool,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let options = WatchOptions {
        json,
        until_running: true,
        bars,
    };
    follow_pipe(client, name, Some(after), &options, out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(8));
    }

    #[test]
    fn reconnectable_errors() {
        assert!(is_reconnectable(&Status::unavailable("tcp connect error")));
        assert!(is_reconnectable(&Status::unknown(
            "h2 protocol error: error reading a body from connection"
        )));
        assert!(!is_reconnectable(&Status::not_found("no pipe")));
        assert!(!is_reconnectable(&Status::unknown("boom")));
        assert!(!is_reconnectable(&Status::unauthenticated("bad token")));
    }
}
