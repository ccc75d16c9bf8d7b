//! `watch` and `events`: following server streams, with reconnection after
//! the last cursor seen, progress bars and the `--until-running` logic.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use tonic::{Code, Status};

use super::format::{
    event_text, format_count, format_time_of_day, format_timestamp, status_label, status_line,
};
use super::json::{event_kind, watch_events_json, watch_message_json};
use super::{CliError, Client, ClientOpts, EXIT_PIPE_FAILED, Out, connect, parse_label};
use crate::proto::{
    DeleteReason, Pipe, PipeStatus, WatchEventsRequest, WatchPipeRequest, WatchPipeResponse,
    event::Payload, watch_events_response::Item,
};

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

/// Status line and per-table progress bars (drawn on stderr; hidden when
/// stderr is not a terminal).
struct ProgressView {
    multi: MultiProgress,
    status: ProgressBar,
    tables: Vec<(String, ProgressBar)>,
    pipe_id: String,
}

impl ProgressView {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let status = multi.add(ProgressBar::new_spinner().with_style(style));
        if !multi.is_hidden() {
            status.enable_steady_tick(Duration::from_millis(150));
        }
        Self {
            multi,
            status,
            tables: Vec::new(),
            pipe_id: String::new(),
        }
    }

    fn table_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "  {prefix:24!} [{bar:20}] {pos:>3}/{len:<3} parts  {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    fn update(&mut self, pipe: &Pipe) {
        if pipe.id != self.pipe_id {
            // A new incarnation (resync): start the bars over.
            for (_, bar) in self.tables.drain(..) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            self.pipe_id = pipe.id.clone();
        }
        self.status.set_message(status_line(pipe));
        for t in &pipe.tables {
            let bar = match self.tables.iter().find(|(name, _)| *name == t.source_table) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = self
                        .multi
                        .add(ProgressBar::new(0).with_style(Self::table_style()));
                    let prefix = if t.destination_table.is_empty()
                        || t.destination_table == t.source_table
                    {
                        t.source_table.clone()
                    } else {
                        format!("{} → {}", t.source_table, t.destination_table)
                    };
                    bar.set_prefix(prefix);
                    self.tables.push((t.source_table.clone(), bar.clone()));
                    bar
                }
            };
            let total = u64::from(t.snapshot_partitions_total);
            let done = u64::from(t.snapshot_partitions_done);
            if t.snapshot_done && total == 0 {
                bar.set_length(1);
                bar.set_position(1);
            } else {
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
            let mut msg = format!("{} rows", format_count(t.snapshot_rows));
            if t.snapshot_done {
                msg.push_str(" ✓");
            }
            if t.rows_inserted + t.rows_updated + t.rows_deleted > 0 {
                msg.push_str(&format!(
                    "  cdc +{} ~{} -{}",
                    format_count(t.rows_inserted),
                    format_count(t.rows_updated),
                    format_count(t.rows_deleted)
                ));
            }
            if t.soft_deletes_transferred > 0 {
                msg.push_str(&format!(
                    "  soft deletes {}",
                    format_count(t.soft_deletes_transferred)
                ));
            }
            bar.set_message(msg);
        }
    }

    /// Prints a line to stdout without tearing the bars.
    fn println(&self, out: &mut Out, line: &str) -> Result<(), CliError> {
        self.multi.suspend(|| out.line(line))
    }

    fn warn(&self, line: &str) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    fn finish(&self) {
        self.status.abandon();
        for (_, bar) in &self.tables {
            bar.abandon();
        }
    }
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

async fn follow_pipe_inner(
    client: &mut Client,
    name: &str,
    tracker: &mut Tracker,
    opts: &WatchOptions,
    out: &mut Out,
    view: &mut Option<ProgressView>,
) -> Result<ExitCode, CliError> {
    let mut attempt = 0u32;
    loop {
        let request = WatchPipeRequest {
            name: name.to_owned(),
            after_cursor: tracker.resume_cursor(),
        };
        let failure = match client.watch_pipe(request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            let Some(observed) = tracker.observe(&msg) else {
                                continue;
                            };
                            attempt = 0;
                            if opts.json {
                                out.json_line(&watch_message_json(&msg))?;
                            } else {
                                if let (Some(v), Some(pipe)) = (view.as_mut(), msg.pipe.as_ref()) {
                                    v.update(pipe);
                                }
                                let prefix = match &msg.event {
                                    Some(ev) => {
                                        format!(
                                            "{} #{}  ",
                                            format_time_of_day(ev.at.as_ref()),
                                            ev.seq
                                        )
                                    }
                                    None => String::new(),
                                };
                                for line in &observed.lines {
                                    emit(view, out, &format!("{prefix}{line}"))?;
                                }
                            }
                            match observed.verdict {
                                Verdict::Continue => {}
                                Verdict::Running => {
                                    if !opts.json {
                                        emit(view, out, &format!("pipe {name} is running"))?;
                                    }
                                    return Ok(ExitCode::SUCCESS);
                                }
                                Verdict::Failed { step, reason } => {
                                    if let Some(v) = view.as_ref() {
                                        v.finish();
                                    }
                                    eprintln!(
                                        "error: pipe {name} failed in step {}: {reason}",
                                        if step.is_empty() { "?" } else { &step }
                                    );
                                    return Ok(ExitCode::from(EXIT_PIPE_FAILED));
                                }
                            }
                        }
                        Ok(None) if tracker.stream_end_is_final() => {
                            if opts.until_running {
                                return Err(CliError::Watch(format!(
                                    "the stream of pipe {name} ended (pipe deleted) before it reached RUNNING"
                                )));
                            }
                            if !opts.json {
                                emit(view, out, "stream ended (pipe deleted)")?;
                            }
                            return Ok(ExitCode::SUCCESS);
                        }
                        // Cut short (e.g. a server shutting down): resume.
                        Ok(None) => break Status::unavailable("the server ended the stream"),
                        Err(status) => break status,
                    }
                }
            }
        };
        let cursor = tracker.resume_cursor();
        let (delay, message) = plan_reconnect(failure, &mut attempt, cursor)?;
        warn(view, &message);
        tokio::time::sleep(delay).await;
    }
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
    let mut last_seq: Option<u64> = after;
    let mut attempt = 0u32;
    loop {
        let request = WatchEventsRequest {
            after_cursor: last_seq,
            pipe_name: pipe.unwrap_or_default().to_owned(),
            label_selector: selector.clone(),
        };
        let failure = match client.watch_events(request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            match &msg.item {
                                Some(Item::Event(ev)) => {
                                    if last_seq.is_some_and(|last| ev.seq <= last) {
                                        continue;
                                    }
                                    attempt = 0;
                                    last_seq = Some(ev.seq);
                                    if json {
                                        out.json_line(&watch_events_json(&msg))?;
                                    } else {
                                        out.line(&format!(
                                            "{} #{}  {}  {}",
                                            ev.at.as_ref().map_or_else(
                                                || "-".to_owned(),
                                                |t| format_timestamp(t, false)
                                            ),
                                            ev.seq,
                                            ev.pipe_name,
                                            event_text(ev)
                                        ))?;
                                    }
                                }
                                Some(Item::CaughtUp(c)) => {
                                    // Everything up to the head was delivered: a
                                    // reconnection may resume from there.
                                    if last_seq.is_none_or(|last| c.cursor > last) {
                                        last_seq = Some(c.cursor);
                                    }
                                    if json {
                                        out.json_line(&watch_events_json(&msg))?;
                                    } else {
                                        out.line(&format!(
                                            "-- caught up at cursor {}; live events follow --",
                                            c.cursor
                                        ))?;
                                    }
                                }
                                None => {}
                            }
                        }
                        Ok(None) => break Status::unavailable("the server ended the stream"),
                        Err(status) => break status,
                    }
                }
            }
        };
        let (delay, message) = plan_reconnect(failure, &mut attempt, last_seq)?;
        eprintln!("{message}");
        tokio::time::sleep(delay).await;
    }
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
    opts: &ClientOpts,
    args: WatchArgs,
    out: &mut Out,
    bars: bool,
) -> Result<ExitCode, CliError> {
    let mut client = connect(opts).await?;
    let options = WatchOptions {
        json: args.json,
        until_running: args.until_running,
        bars,
    };
    follow_pipe(&mut client, &args.name, args.after, &options, out).await
}

/// `pgpipe events`.
pub(super) async fn events(
    opts: &ClientOpts,
    args: EventsArgs,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    let mut client = connect(opts).await?;
    follow_events(
        &mut client,
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

    #[test]
    fn until_running_after_resync() {
        let mut t = Tracker::new(true, Some(10));
        // Resuming after a resync: events of the new incarnation.
        let o = t
            .observe(&msg(
                11,
                "p2",
                PipeStatus::Setup,
                Some(Payload::StepStarted(Default::default())),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Continue);
        let o = t
            .observe(&msg(12, "p2", PipeStatus::Snapshot, Some(progress())))
            .unwrap();
        assert_eq!(o.lines[0], "snapshot progress:  0/0 partitions, 0 rows");
        assert_eq!(o.lines[1], "status: setup → snapshot");
        // Repeated progress events print nothing.
        let o = t
            .observe(&msg(13, "p2", PipeStatus::Snapshot, Some(progress())))
            .unwrap();
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
        let o = t
            .observe(&msg(
                14,
                "p2",
                PipeStatus::Running,
                Some(Payload::CdcStarted(Default::default())),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Running);
    }

    #[test]
    fn until_running_waits_for_a_transition() {
        let mut t = Tracker::new(true, None);
        // Already running: not done, the brief says "after having seen the
        // pipe not running or a resync".
        let o = t.observe(&msg(5, "p1", PipeStatus::Running, None)).unwrap();
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(o.lines, vec!["pipe orders (p1): running, cursor 5"]);
        // ResyncStarted on the still-running old incarnation: keep waiting.
        let o = t
            .observe(&msg(
                6,
                "p1",
                PipeStatus::Running,
                Some(Payload::ResyncStarted(ResyncStarted::default())),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Continue);
        let o = t
            .observe(&msg(
                7,
                "p1",
                PipeStatus::Deleted,
                Some(Payload::PipeDeleted(PipeDeleted {
                    reason: DeleteReason::Resync as i32,
                    drop_destination_tables: false,
                })),
            ))
            .unwrap();
        assert_eq!(
            o.lines,
            vec!["deleted (resync)", "status: running → deleted"]
        );
        // A resync deletion is not the end of the name's stream.
        assert!(!t.stream_end_is_final());
        let o = t
            .observe(&msg(
                8,
                "p2",
                PipeStatus::Setup,
                Some(Payload::PipeCreated(PipeCreated {
                    resync_of: "p1".into(),
                    ..Default::default()
                })),
            ))
            .unwrap();
        assert_eq!(
            o.lines,
            vec!["created (resync of p1)", "status: deleted → setup"]
        );
        let o = t
            .observe(&msg(
                9,
                "p2",
                PipeStatus::Running,
                Some(Payload::CdcStarted(Default::default())),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Running);
    }

    #[test]
    fn failures() {
        let mut t = Tracker::new(true, None);
        let o = t
            .observe(&msg(
                1,
                "p",
                PipeStatus::Failed,
                Some(Payload::PipeFailed(PipeFailed {
                    step: "cdc".into(),
                    reason: "peer down".into(),
                    retrying: true,
                })),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Continue);
        let o = t
            .observe(&msg(
                2,
                "p",
                PipeStatus::Failed,
                Some(Payload::PipeFailed(PipeFailed {
                    step: "cdc".into(),
                    reason: "slot lost".into(),
                    retrying: false,
                })),
            ))
            .unwrap();
        assert_eq!(
            o.verdict,
            Verdict::Failed {
                step: "cdc".into(),
                reason: "slot lost".into()
            }
        );
        // Without --until-running a failure is just a line.
        let mut t = Tracker::new(false, None);
        let o = t
            .observe(&msg(
                2,
                "p",
                PipeStatus::Failed,
                Some(Payload::PipeFailed(PipeFailed {
                    retrying: false,
                    ..Default::default()
                })),
            ))
            .unwrap();
        assert_eq!(o.verdict, Verdict::Continue);
        // A user deletion makes the end of the stream final.
        let o = t
            .observe(&msg(
                3,
                "p",
                PipeStatus::Deleted,
                Some(Payload::PipeDeleted(PipeDeleted {
                    reason: DeleteReason::User as i32,
                    drop_destination_tables: true,
                })),
            ))
            .unwrap();
        assert_eq!(o.lines[0], "deleted (by user), destination tables dropped");
        assert!(t.stream_end_is_final());
    }
}
