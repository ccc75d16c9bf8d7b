//! Slot health: the replication slot of a pipe whose CDC started is sampled
//! every `slot_check_interval_seconds` while the pipe runs or is paused, and
//! a warning is recorded when the slot holds too much WAL (LAG), stops
//! advancing while the server's WAL moves on (STALLED), or its `wal_status`
//! turns `unreserved`/`lost` (WAL_STATUS), so watchers learn of it before the
//! pipe fails. A recovery is recorded when a kind stops holding.
//!
//! Only transitions are recorded: [`SlotHealth`] is a pure state machine
//! (samples in, events out); [`monitor`] samples and appends. The monitor is
//! a task of its own, next to the pipe worker rather than inside its CDC
//! loop, because a paused pipe has no worker but pins WAL all the same: a
//! LAG warning while paused is the useful one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::Instrument;

use super::guard::watched;
use crate::commands::Core;
use crate::domain::settings::with_slot_health_defaults as with_defaults;
use crate::model::Lsn;
use crate::proto::event::Payload;
use crate::proto::{
    Pipe, PipeSettings, PipeStatus, SlotHealthRecovered, SlotHealthWarning, SlotWarningKind,
};
use crate::source;

/// One look at the slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the sample was taken.
    pub at: Instant,
    /// `missing` when the slot does not exist.
    pub wal_status: String,
    /// Whether a reader held the slot.
    pub active: bool,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed: Lsn,
    /// The server's current WAL position.
    pub wal: Lsn,
    /// The pipe is paused (a slot that does not move is expected then).
    pub paused: bool,
}

impl Sample {
    fn lag(&self) -> u64 {
        if self.wal_status == MISSING {
            0
        } else {
            self.wal.0.saturating_sub(self.confirmed.0)
        }
    }
}

const MISSING: &str = "missing";

fn bad_wal_status(s: &str) -> bool {
    matches!(s, "unreserved" | "lost" | MISSING)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub lag_bytes: u64,
    pub stall: Duration,
}

impl Thresholds {
    pub fn from_settings(s: &PipeSettings) -> Self {
        let s = with_defaults(s);
        Self {
            lag_bytes: s.slot_lag_warning_bytes,
            stall: Duration::from_secs(u64::from(s.slot_stall_warning_seconds)),
        }
    }
}

/// What holds, and since when the confirmed position stands still.
#[derive(Debug)]
pub(crate) struct SlotHealth {
    slot: String,
    /// Kinds that hold, with the wal_status their warning reported.
    holding: HashMap<SlotWarningKind, String>,
    /// Confirmed position at the last sample, when it last moved (or the
    /// pipe was paused), and the server's WAL position then.
    confirmed: Option<Lsn>,
    since: Option<Instant>,
    wal_since: Lsn,
}

impl SlotHealth {
    /// Starts from the warnings the projection shows as holding, so a
    /// restarted monitor neither repeats them nor misses their recovery.
    pub fn new(slot: &str, holding: &[SlotHealthWarning]) -> Self {
        let mut confirmed = None;
        let holding = holding
            .iter()
            .map(|w| {
                if w.kind() == SlotWarningKind::Stalled {
                    confirmed = w.confirmed_flush_lsn.parse().ok();
                }
                (w.kind(), w.wal_status.clone())
            })
            .collect();
        Self {
            slot: slot.to_owned(),
            holding,
            confirmed,
            since: None,
            wal_since: Lsn(0),
        }
    }

    /// The events a sample calls for (none while nothing changes).
    pub fn observe(&mut self, s: &Sample, t: &Thresholds) -> Vec<Payload> {
        let lag = s.lag();
        let mut out = Vec::new();

        // WAL_STATUS: raised when bad, raised again when it changes.
        let bad = bad_wal_status(&s.wal_status);
        match (bad, self.holding.get(&SlotWarningKind::WalStatus)) {
            (true, Some(was)) if *was == s.wal_status => {}
            (true, _) => out.push(self.warn(SlotWarningKind::WalStatus, s, 0)),
            (false, Some(_)) => out.push(self.recover(SlotWarningKind::WalStatus, s)),
            (false, None) => {}
        }

        // LAG: clears below 90% of the threshold, so it does not flap.
        let lag_holds = self.holding.contains_key(&SlotWarningKind::Lag);
        if !lag_holds && lag > t.lag_bytes {
            out.push(self.warn(SlotWarningKind::Lag, s, t.lag_bytes));
        } else if lag_holds && lag.saturating_mul(10) < t.lag_bytes.saturating_mul(9) {
            out.push(self.recover(SlotWarningKind::Lag, s));
        }

        // STALLED: the confirmed position stood still for `stall` while the
        // WAL moved past it. The clock restarts while there is nothing to
        // consume and while paused (the user stopped the pipe); a stall
        // that holds clears only when the slot moves.
        let moved = self.confirmed != Some(s.confirmed);
        if moved || s.paused || lag == 0 || self.since.is_none() {
            self.confirmed = Some(s.confirmed);
            self.since = Some(s.at);
            self.wal_since = s.wal;
        }
        let stall_holds = self.holding.contains_key(&SlotWarningKind::Stalled);
        if stall_holds && (moved || s.wal_status == MISSING) {
            out.push(self.recover(SlotWarningKind::Stalled, s));
        } else if !stall_holds
            && !s.paused
            && s.wal_status != MISSING
            && lag > 0
            && s.wal > self.wal_since
            && self
                .since
                .is_some_and(|since| s.at.saturating_duration_since(since) >= t.stall)
        {
            out.push(self.warn(SlotWarningKind::Stalled, s, t.stall.as_secs()));
        }
        out
    }

    fn warn(&mut self, kind: SlotWarningKind, s: &Sample, threshold: u64) -> Payload {
        self.holding.insert(kind, s.wal_status.clone());
        let slot = &self.slot;
        let lag = s.lag();
        let message = match kind {
            SlotWarningKind::Lag => format!(
                "replication slot {slot} holds {} of WAL, more than settings.slot_lag_warning_bytes \
                 ({}); the source keeps that WAL on disk until the pipe catches up. If the pipe is \
                 paused, resume or delete it; if it runs, check its error (is ClickHouse accepting \
                 writes?) and the source's free disk space",
                bytes(lag),
                bytes(threshold)
            ),
            SlotWarningKind::Stalled => format!(
                "replication slot {slot} has not advanced from {} for {threshold}s while the \
                 source's WAL moved {} past it: changes are not being applied. Check the pipe's \
                 error (ClickHouse or Postgres unreachable?) and the pgpipe logs",
                s.confirmed,
                bytes(lag)
            ),
            _ => match s.wal_status.as_str() {
                "unreserved" => format!(
                    "replication slot {slot} has wal_status unreserved: WAL it still needs is past \
                     max_slot_wal_keep_size and may be removed at the next checkpoint, after which \
                     the slot is lost and the pipe must be resynced. Let the pipe catch up now \
                     (resume it if paused) or raise max_slot_wal_keep_size"
                ),
                "lost" => format!(
                    "replication slot {slot} is lost: the source removed WAL it needed \
                     (max_slot_wal_keep_size exceeded), so changes after {} can no longer be read; \
                     resync the pipe",
                    s.confirmed
                ),
                _ => format!(
                    "replication slot {slot} does not exist (dropped outside pgpipe?); changes can \
                     no longer be read: resync the pipe"
                ),
            },
        };
        Payload::SlotHealthWarning(SlotHealthWarning {
            kind: kind as i32,
            slot_name: self.slot.clone(),
            wal_status: s.wal_status.clone(),
            active: s.active,
            lag_bytes: lag,
            confirmed_flush_lsn: s.confirmed.to_string(),
            threshold,
            message,
        })
    }

    fn recover(&mut self, kind: SlotWarningKind, s: &Sample) -> Payload {
        self.holding.remove(&kind);
        Payload::SlotHealthRecovered(SlotHealthRecovered {
            kind: kind as i32,
            lag_bytes: s.lag(),
            wal_status: s.wal_status.clone(),
        })
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Samples the slot: its state and the server's WAL position in one query
/// (a missing slot comes back as wal_status `missing`).
pub async fn sample(
    pg: &tokio_postgres::Client,
    slot: &str,
    paused: bool,
) -> Result<Sample, source::SourceError> {
    // to_jsonb: wal_status exists only from PostgreSQL 13 on.
    let row = pg
        .query_one(
            "SELECT pg_current_wal_flush_lsn()::text, s.confirmed_flush_lsn::text, \
                    CASE WHEN s.slot_name IS NULL THEN 'missing' \
                         ELSE coalesce(to_jsonb(s) ->> 'wal_status', 'unknown') END, \
                    coalesce(s.active, false) \
             FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| {
            source::SourceError::query(format!("sampling replication slot {slot:?}"), &e)
        })?;
    let lsn =
        |s: Option<&str>| -> Result<Lsn, source::SourceError> {
            match s {
                None => Ok(Lsn(0)),
                Some(s) => s.parse().map_err(|e: crate::model::LsnParseError| {
                    source::SourceError::Protocol {
                        context: "sampling the replication slot".into(),
                        reason: e.to_string(),
                    }
                }),
            }
        };
    Ok(Sample {
        at: Instant::now(),
        wal: lsn(row.get(0))?,
        confirmed: lsn(row.get(1))?,
        wal_status: row.get(2),
        active: row.get(3),
        paused,
    })
}

/// Starts a monitor for every watched incarnation and stops the others.
/// Called by the engine's reconcile.
pub(crate) fn reconcile(core: &Arc<Core>, monitors: &mut HashMap<String, JoinHandle<()>>) {
    let wanted: HashSet<String> = core.read(|p| {
        p.list(false, &BTreeMap::new())
            .into_iter()
            .filter(watched)
            .map(|p| p.id)
            .collect()
    });
    super::keep_tasks(core, monitors, wanted, monitor);
}

/// Samples one incarnation's slot until it stops being watched.
pub(crate) async fn monitor(core: Arc<Core>, id: String) {
    let Some(pipe) = core.read(|p| p.by_id(&id).cloned()) else {
        return;
    };
    let span = tracing::info_span!("slot_health", pipe = %pipe.name, pipe_id = %pipe.id);
    async move {
        let settings = pipe
            .config
            .as_ref()
            .and_then(|c| c.settings)
            .unwrap_or_default();
        let thresholds = Thresholds::from_settings(&settings);
        let every = Duration::from_secs(u64::from(
            with_defaults(&settings).slot_check_interval_seconds,
        ));
        let mut health = SlotHealth::new(&pipe.slot_name, &pipe.slot_warnings);
        let mut pg: Option<tokio_postgres::Client> = None;
        loop {
            let Some(p) = core.read(|pr| pr.by_id(&id).cloned()) else {
                return;
            };
            if !watched(&p) {
                return;
            }
            if pg.as_ref().is_none_or(|c| c.is_closed()) {
                pg = connect(&core, &p).await;
            }
            if let Some(client) = &pg {
                match sample(client, &p.slot_name, p.status() == PipeStatus::Paused).await {
                    Ok(s) => {
                        let events = health.observe(&s, &thresholds);
                        if !events.is_empty() && !record(&core, &id, &p.name, events).await {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not sample the replication slot");
                        pg = None;
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }
    .instrument(span)
    .await
}

async fn connect(core: &Core, p: &Pipe) -> Option<tokio_postgres::Client> {
    let secrets = match core.secrets().get(&p.id) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "slot health: no secrets");
            return None;
        }
    };
    let src = p
        .config
        .as_ref()
        .and_then(|c| c.source.clone())
        .unwrap_or_default();
    match source::connect(&src.connection_string, secrets.source_password.as_deref()).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "slot health: cannot connect to the source");
            None
        }
    }
}

/// Appends the events while the incarnation is still watched, checked at
/// the stream version appended at (as the worker's `record`), so nothing
/// lands after a deletion, resync or fatal failure. False: stop monitoring.
async fn record(core: &Core, id: &str, name: &str, payloads: Vec<Payload>) -> bool {
    match super::guard::record(core, super::guard::Guard::Watched, id, name, &payloads).await {
        Ok(Some(_)) => {
            for p in &payloads {
                tracing::info!(event = ?p, "slot health");
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not record slot health");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    struct Run {
        t0: Instant,
        health: SlotHealth,
        t: Thresholds,
    }

    impl Run {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                health: SlotHealth::new("s", &[]),
                t: Thresholds {
                    lag_bytes: 1000,
                    stall: Duration::from_secs(60),
                },
            }
        }

        /// One sample at `secs`, confirmed at `confirmed`, WAL at `wal`:
        /// what it records, `; `-separated ("" for nothing).
        fn at(&mut self, secs: u64, confirmed: u64, wal: u64, status: &str) -> String {
            self.sample(secs, confirmed, wal, status, false)
        }

        fn sample(
            &mut self,
            secs: u64,
            confirmed: u64,
            wal: u64,
            status: &str,
            paused: bool,
        ) -> String {
            let s = Sample {
                at: self.t0 + Duration::from_secs(secs),
                wal_status: status.into(),
                active: false,
                confirmed: Lsn(confirmed),
                wal: Lsn(wal),
                paused,
            };
            self.health
                .observe(&s, &self.t)
                .iter()
                .map(|p| match p {
                    Payload::SlotHealthWarning(w) => {
                        format!("warn {} {}", w.kind().as_str_name(), w.wal_status)
                    }
                    Payload::SlotHealthRecovered(r) => {
                        format!("ok {}", r.kind().as_str_name())
                    }
                    _ => unreachable!(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
    }

    #[test]
    fn a_lag_warning_is_recorded_once_while_it_holds_and_recovers_below_90_percent() {
        let mut r = Run::new();
        assert!(r.at(0, 100, 500, "reserved").is_empty());
        assert_eq!(
            r.at(1, 100, 1200, "reserved"),
            "warn SLOT_WARNING_KIND_LAG reserved"
        );
        assert!(r.at(2, 100, 5000, "reserved").is_empty(), "not repeated");
        assert!(
            r.at(3, 4050, 5000, "reserved").is_empty(),
            "950 is still within 90%"
        );
        assert_eq!(r.at(4, 5000, 5000, "reserved"), "ok SLOT_WARNING_KIND_LAG");
        assert!(r.at(5, 5000, 5100, "reserved").is_empty());
    }

    #[test]
    fn a_stall_is_reported_only_when_the_wal_moved_past_a_still_slot() {
        let mut r = Run::new();
        // The slot stands still but so does the WAL: idle, not stalled.
        assert!(r.at(0, 100, 100, "reserved").is_empty());
        assert!(r.at(120, 100, 100, "reserved").is_empty());
        // The WAL moves; the slot does not, for 60 s from its last move.
        assert!(r.at(130, 100, 200, "reserved").is_empty());
        assert_eq!(
            r.at(180, 100, 300, "reserved"),
            "warn SLOT_WARNING_KIND_STALLED reserved"
        );
        assert!(r.at(240, 100, 400, "reserved").is_empty(), "not repeated");
        assert_eq!(
            r.at(250, 350, 400, "reserved"),
            "ok SLOT_WARNING_KIND_STALLED"
        );
    }

    #[test]
    fn a_slot_that_keeps_moving_is_never_stalled() {
        let mut r = Run::new();
        for i in 0..100 {
            assert!(r.at(i * 30, i * 10, i * 10 + 5, "reserved").is_empty());
        }
    }

    #[test]
    fn a_paused_pipe_is_not_stalled_but_its_lag_is_reported() {
        let mut r = Run::new();
        assert!(r.sample(0, 100, 100, "reserved", true).is_empty());
        assert!(r.sample(500, 100, 900, "reserved", true).is_empty());
        assert_eq!(
            r.sample(600, 100, 1500, "reserved", true),
            "warn SLOT_WARNING_KIND_LAG reserved"
        );
        // Resumed: the stall clock starts at the resume, not the pause.
        assert!(r.at(610, 100, 1500, "reserved").is_empty());
        assert_eq!(
            r.at(680, 100, 1500, "reserved"),
            "",
            "the WAL did not move since the resume"
        );
        assert_eq!(
            r.at(690, 100, 1600, "reserved"),
            "warn SLOT_WARNING_KIND_STALLED reserved"
        );
    }

    #[test]
    fn a_change_of_wal_status_is_recorded_and_a_return_to_reserved_recovers() {
        let mut r = Run::new();
        assert!(r.at(0, 100, 100, "reserved").is_empty());
        assert!(r.at(1, 100, 100, "extended").is_empty(), "extended is fine");
        assert_eq!(
            r.at(2, 100, 100, "unreserved"),
            "warn SLOT_WARNING_KIND_WAL_STATUS unreserved"
        );
        assert!(r.at(3, 100, 100, "unreserved").is_empty(), "not repeated");
        assert_eq!(
            r.at(4, 100, 100, "reserved"),
            "ok SLOT_WARNING_KIND_WAL_STATUS"
        );
        assert_eq!(
            r.at(5, 100, 100, "unreserved"),
            "warn SLOT_WARNING_KIND_WAL_STATUS unreserved"
        );
        assert_eq!(
            r.at(6, 100, 100, "lost"),
            "warn SLOT_WARNING_KIND_WAL_STATUS lost",
            "unreserved -> lost is recorded"
        );
        assert_eq!(
            r.at(7, 0, 100, "missing"),
            "warn SLOT_WARNING_KIND_WAL_STATUS missing"
        );
    }

    #[test]
    fn kinds_are_independent() {
        let mut r = Run::new();
        assert!(r.at(0, 100, 100, "reserved").is_empty());
        assert_eq!(
            r.at(61, 100, 2000, "unreserved"),
            "warn SLOT_WARNING_KIND_WAL_STATUS unreserved; warn SLOT_WARNING_KIND_LAG unreserved; warn SLOT_WARNING_KIND_STALLED unreserved"
        );
        assert_eq!(
            r.at(62, 2000, 2000, "reserved"),
            "ok SLOT_WARNING_KIND_WAL_STATUS; ok SLOT_WARNING_KIND_LAG; ok SLOT_WARNING_KIND_STALLED"
        );
    }

    #[test]
    fn a_restarted_monitor_resumes_from_the_warnings_that_hold() {
        let holding = [
            SlotHealthWarning {
                kind: SlotWarningKind::Lag as i32,
                wal_status: "reserved".into(),
                ..Default::default()
            },
            SlotHealthWarning {
                kind: SlotWarningKind::Stalled as i32,
                confirmed_flush_lsn: Lsn(100).to_string(),
                wal_status: "reserved".into(),
                ..Default::default()
            },
        ];
        let mut r = Run::new();
        r.health = SlotHealth::new("s", &holding);
        // Still lagging and still at 100: nothing new.
        assert!(r.at(0, 100, 5000, "reserved").is_empty());
        assert_eq!(
            r.at(1, 5000, 5000, "reserved"),
            "ok SLOT_WARNING_KIND_LAG; ok SLOT_WARNING_KIND_STALLED"
        );
    }

    #[test]
    fn a_warning_says_what_happened_and_what_to_do() {
        let mut h = SlotHealth::new("pgpipe_x", &[]);
        let s = Sample {
            at: Instant::now(),
            wal_status: "lost".into(),
            active: false,
            confirmed: Lsn(0x16B3748),
            wal: Lsn(0x26B3748),
            paused: false,
        };
        let t = Thresholds {
            lag_bytes: GIB,
            stall: Duration::from_secs(300),
        };
        let events = h.observe(&s, &t);
        let Some(Payload::SlotHealthWarning(w)) = events.first() else {
            panic!("{events:?}")
        };
        assert_eq!(w.slot_name, "pgpipe_x");
        assert_eq!(w.lag_bytes, 0x0100_0000);
        assert_eq!(w.confirmed_flush_lsn, "0/16B3748");
        assert!(w.message.contains("pgpipe_x is lost"), "{}", w.message);
        assert!(w.message.contains("resync"), "{}", w.message);
    }
}
