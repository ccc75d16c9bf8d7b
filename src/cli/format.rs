//! Human-readable formatting: status names, sizes, durations, timestamps,
//! event one-liners, pipe summaries and plain-text tables.

use std::fmt::Write as _;

use prost_types::Timestamp;
use tonic::Code;

use crate::proto::{DeleteReason, Event, Pipe, PipeStatus, event::Payload};

/// Lower-case status name for humans ("running"), or `unknown(N)` for a value
/// this client does not know (a newer server).
pub(crate) fn status_label(raw: i32) -> String {
    match PipeStatus::try_from(raw) {
        Ok(s) => s.label(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// Canonical gRPC status code name, as in the gRPC spec ("NOT_FOUND").
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `1234567` -> `1,234,567`.
pub(crate) fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Binary byte sizes: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Compact durations: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub(crate) fn format_duration_ms(ms: u64) -> String {
    const SEC: u64 = 1000;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    if ms < SEC {
        format!("{ms}ms")
    } else if ms < MIN {
        format!("{:.1}s", ms as f64 / SEC as f64)
    } else if ms < HOUR {
        format!("{}m{:02}s", ms / MIN, (ms % MIN) / SEC)
    } else if ms < DAY {
        format!("{}h{:02}m", ms / HOUR, (ms % HOUR) / MIN)
    } else {
        format!("{}d{:02}h", ms / DAY, (ms % DAY) / HOUR)
    }
}

/// An LSN as sent by the server ("0/16B3748"), or "-" when there is none yet.
pub(crate) fn format_lsn(lsn: &str) -> &str {
    if lsn.is_empty() { "-" } else { lsn }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Splits a timestamp into (seconds since epoch, nanos in [0, 1e9)).
fn normalized(ts: &Timestamp) -> (i64, u32) {
    let extra = i64::from(ts.nanos.div_euclid(1_000_000_000));
    let nanos = ts.nanos.rem_euclid(1_000_000_000) as u32;
    (ts.seconds.saturating_add(extra), nanos)
}

/// RFC 3339 in UTC. With `fraction`, sub-second digits are kept (3, 6 or 9
/// of them, as in the protobuf JSON mapping); without, they are dropped.
pub(crate) fn format_timestamp(ts: &Timestamp, fraction: bool) -> String {
    let (secs, nanos) = normalized(ts);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    );
    if fraction && nanos != 0 {
        if nanos.is_multiple_of(1_000_000) {
            let _ = write!(out, ".{:03}", nanos / 1_000_000);
        } else if nanos.is_multiple_of(1_000) {
            let _ = write!(out, ".{:06}", nanos / 1_000);
        } else {
            let _ = write!(out, ".{nanos:09}");
        }
    }
    out.push('Z');
    out
}

/// Time of day in UTC, `HH:MM:SSZ`, for watch lines.
pub(crate) fn format_time_of_day(ts: Option<&Timestamp>) -> String {
    match ts {
        Some(ts) => {
            let (secs, _) = normalized(ts);
            let sod = secs.rem_euclid(86_400);
            format!(
                "{:02}:{:02}:{:02}Z",
                sod / 3600,
                (sod % 3600) / 60,
                sod % 60
            )
        }
        None => "--:--:--Z".to_owned(),
    }
}

fn opt_timestamp(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |t| format_timestamp(t, false))
}

/// Whether a PostgreSQL connection string carries a password (which would
/// then be visible in the process list). Handles both the URL form
/// (`postgres://user:secret@host/db`, `?password=`) and the key/value form
/// (`host=db password=secret`).
pub(crate) fn conn_string_has_password(conn: &str) -> bool {
    let lower = conn.to_ascii_lowercase();
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = lower.strip_prefix(scheme) {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@')
                && userinfo.contains(':')
            {
                return true;
            }
        }
    }
    // `password=` as a key (key/value form or URL query parameter), allowing
    // spaces around `=` as libpq does.
    let mut search = lower.as_str();
    while let Some(pos) = search.find("password") {
        let before = lower.len() - search.len() + pos;
        let key_start = before == 0
            || matches!(
                lower.as_bytes()[before - 1],
                b' ' | b'\t' | b'\n' | b'?' | b'&'
            );
        let after = search[pos + "password".len()..].trim_start();
        if key_start && after.starts_with('=') {
            return true;
        }
        search = &search[pos + "password".len()..];
    }
    false
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn delete_reason_label(raw: i32) -> String {
    match DeleteReason::try_from(raw) {
        Ok(DeleteReason::User) => "by user".to_owned(),
        Ok(DeleteReason::Resync) => "resync".to_owned(),
        Ok(DeleteReason::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("reason {raw}"),
    }
}

/// One-line description of an event, without time or sequence.
pub(crate) fn event_text(ev: &Event) -> String {
    let Some(payload) = &ev.payload else {
        return "unknown event (written by a newer server?)".to_owned();
    };
    match payload {
        Payload::PipeCreated(p) if p.resync_of.is_empty() => "created".to_owned(),
        Payload::PipeCreated(p) => format!("created (resync of {})", p.resync_of),
        Payload::PipeDeleted(p) => {
            let mut s = format!("deleted ({})", delete_reason_label(p.reason));
            if p.drop_destination_tables {
                s.push_str(", destination tables dropped");
            }
            s
        }
        Payload::ResyncStarted(p) if p.overrides.is_empty() => "resync started".to_owned(),
        Payload::ResyncStarted(p) => {
            let overrides: Vec<String> = p
                .overrides
                .iter()
                .map(|t| {
                    let mut s = t.source_table.clone();
                    if !t.destination_table.is_empty() {
                        let _ = write!(s, " → {}", t.destination_table);
                    }
                    if !t.order_by.is_empty() {
                        let _ = write!(s, " order by {}", t.order_by.join(","));
                    }
                    s
                })
                .collect();
            format!("resync started (overrides: {})", overrides.join("; "))
        }
        Payload::StepStarted(p) => format!("step {} started", p.step),
        Payload::SetupCompleted(p) => format!(
            "setup completed (slot {}, publication {}, consistent LSN {})",
            p.slot_name,
            p.publication_name,
            format_lsn(&p.consistent_lsn)
        ),
        Payload::SourceReleased(p) => format!(
            "source released (slot {} and publication {} dropped{})",
            p.slot_name,
            p.publication_name,
            if p.destination_tables_dropped {
                ", destination tables dropped"
            } else {
                ""
            }
        ),
        Payload::TablesPrepared(p) => {
            let tables: Vec<String> = p
                .tables
                .iter()
                .map(|t| {
                    let mut s = format!("{} → {}", t.source_table, t.destination_table);
                    if !t.load_table.is_empty() && t.load_table != t.destination_table {
                        let _ = write!(s, " via {}", t.load_table);
                    }
                    if !t.order_by.is_empty() {
                        let _ = write!(s, " order by {}", t.order_by.join(","));
                    }
                    s
                })
                .collect();
            format!("tables prepared: {}", tables.join("; "))
        }
        Payload::SnapshotStarted(p) => {
            let partitions: u64 = p.tables.iter().map(|t| u64::from(t.partitions_total)).sum();
            let rows: u64 = p.tables.iter().map(|t| t.estimated_rows).sum();
            format!(
                "snapshot started: {} table(s), {} partition(s), ~{} rows",
                p.tables.len(),
                partitions,
                format_count(rows)
            )
        }
        Payload::SnapshotProgress(p) => format!(
            "snapshot progress: {} {}/{} partitions, {} rows",
            p.source_table,
            p.partitions_done,
            p.partitions_total,
            format_count(p.rows_copied)
        ),
        Payload::SnapshotTableCompleted(p) => format!(
            "snapshot of {} completed: {} rows",
            p.source_table,
            format_count(p.rows)
        ),
        Payload::SnapshotCompleted(_) => "snapshot completed".to_owned(),
        Payload::SoftDeletesTransferred(p) => format!(
            "soft deletes transferred: {} ({})",
            format_count(p.rows),
            p.source_table
        ),
        Payload::SwapStarted(_) => "swap started".to_owned(),
        Payload::TablesSwapped(p) if p.destination_tables.is_empty() => "swapped".to_owned(),
        Payload::TablesSwapped(p) => format!("swapped: {}", p.destination_tables.join(", ")),
        Payload::CdcStarted(p) => format!("cdc started at LSN {}", format_lsn(&p.start_lsn)),
        Payload::CdcProgress(p) if p.rows > 0 => format!(
            "cdc batch {}..{}: {} rows in {} tx, {}, lag {}",
            format_lsn(&p.start_lsn),
            format_lsn(&p.lsn),
            format_count(p.rows),
            p.transactions,
            format_duration_ms(p.duration_ms),
            format_bytes(p.lag_bytes)
        ),
        Payload::CdcProgress(p) => format!(
            "cdc progress: LSN {}, lag {}",
            format_lsn(&p.lsn),
            format_bytes(p.lag_bytes)
        ),
        Payload::PipePaused(_) => "paused".to_owned(),
        Payload::PipeResumed(_) => "resumed".to_owned(),
        Payload::PipeFailed(p) => format!(
            "failed in step {}: {} ({})",
            if p.step.is_empty() { "?" } else { &p.step },
            p.reason,
            if p.retrying {
                "retrying"
            } else {
                "not retrying: action required"
            }
        ),
        Payload::PipeRecovered(_) => "recovered".to_owned(),
        Payload::PipeLabelsChanged(p) => {
            let mut parts: Vec<String> = p.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.extend(p.removed.iter().map(|k| format!("{k}-")));
            format!("labels changed ({})", parts.join(" "))
        }
        Payload::TablesAdded(p) => {
            let tables: Vec<String> = p
                .tables
                .iter()
                .map(|t| format!("{} → {}", t.source_table, t.destination_table))
                .collect();
            format!("tables added: {}", tables.join("; "))
        }
        Payload::TablesRemoved(p) => format!("tables removed: {}", p.source_tables.join(", ")),
        Payload::TableResyncRequested(p) => {
            format!("table resync requested: {}", p.source_tables.join(", "))
        }
        Payload::TableLoadStarted(p) => {
            let t = p.table.clone().unwrap_or_default();
            format!(
                "table load started: {} into {}, {} partition(s), ~{} rows, consistent LSN {}",
                t.source_table,
                t.load_table,
                p.partitions_total,
                format_count(p.estimated_rows),
                format_lsn(&p.consistent_lsn)
            )
        }
        Payload::TableLoadCompleted(p) => format!(
            "table load of {} completed: {} rows",
            p.source_table,
            format_count(p.rows)
        ),
        Payload::TableSwapped(p) => format!(
            "table resync of {} swapped into {} ({} soft deletes transferred)",
            p.source_table,
            p.destination_table,
            format_count(p.soft_deletes_transferred)
        ),
        Payload::SchemaChanged(c) => schema_change_text(c),
        Payload::TableFailed(f) => {
            format!("table {} FAILED at {}: {}", f.source_table, f.lsn, f.reason)
        }
        Payload::SlotHealthWarning(p) => format!(
            "slot warning ({}, wal_status {}): {}",
            slot_kind(p.kind),
            p.wal_status,
            p.message
        ),
        Payload::SlotHealthRecovered(p) => format!(
            "slot {} recovered (lag {}, wal_status {})",
            slot_kind(p.kind),
            format_bytes(p.lag_bytes),
            p.wal_status
        ),
        Payload::PartitionsChanged(p) => {
            let mut parts = Vec::new();
            if p.reset {
                parts.push(format!("{} partition(s) listed", p.replicated.len()));
            } else if !p.replicated.is_empty() {
                parts.push(format!(
                    "loaded {} ({} rows)",
                    p.replicated.join(", "),
                    format_count(p.rows)
                ));
            }
            if !p.attached.is_empty() {
                parts.push(format!("new: {} (loading its rows)", p.attached.join(", ")));
            }
            if !p.detached.is_empty() {
                parts.push(format!(
                    "WARNING detached or dropped: {} (its rows stay in ClickHouse)",
                    p.detached.join(", ")
                ));
            }
            format!("partitions of {}: {}", p.source_table, parts.join("; "))
        }
    }
}

/// `SLOT_WARNING_KIND_LAG` → `lag`.
fn slot_kind(kind: i32) -> String {
    crate::proto::SlotWarningKind::try_from(kind)
        .map(crate::proto::SlotWarningKind::label)
        .unwrap_or_else(|_| format!("kind {kind}"))
}

/// Renders rows under headers, columns padded to their widest cell.
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            for _ in cell.chars().count()..pad {
                l.push(' ');
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `pgpipe list`: one row per pipe.
pub(crate) fn pipes_table(pipes: &[Pipe]) -> String {
    let rows: Vec<Vec<String>> = pipes
        .iter()
        .map(|p| {
            let mut status = status_label(p.status);
            if p.resyncing {
                status.push_str(" (resyncing)");
            }
            vec![
                p.name.clone(),
                status,
                p.tables.len().to_string(),
                format_lsn(&p.last_lsn).to_owned(),
                format_bytes(p.lag_bytes),
                opt_timestamp(p.updated_at.as_ref()),
                p.id.clone(),
                labels_text(&p.labels),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME", "STATUS", "TABLES", "LAST LSN", "LAG", "UPDATED", "ID", "LABELS",
        ],
        &rows,
    )
}

/// One line for a SchemaChanged event: the source change, then what
/// ClickHouse got.
fn schema_change_text(c: &crate::proto::SchemaChanged) -> String {
    use crate::proto::SchemaChangeKind as K;
    let what = match c.kind() {
        K::AddColumn => format!("column {} {} added", c.column, c.new_type),
        K::DropColumn => format!("column {} dropped", c.column),
        K::RenameColumn => format!("column {} renamed to {}", c.column, c.new_column),
        K::RetypeColumn => format!(
            "column {} retyped {} -> {}",
            c.column, c.old_type, c.new_type
        ),
        K::Unspecified => format!("column {} changed", c.column),
    };
    format!(
        "{}: {what} at {}; clickhouse: {}",
        c.source_table, c.lsn, c.clickhouse
    )
}

fn snapshot_cell(t: &crate::proto::TableStats) -> String {
    let rows = format_count(t.snapshot_rows);
    // A table loaded beside CDC says so.
    let state = super::json::table_state_json(t.state);
    if t.state == crate::proto::TableState::Failed as i32 {
        return format!("failed: {}", t.error);
    }
    if t.state != crate::proto::TableState::Replicating as i32 {
        let progress = if t.snapshot_partitions_total > 0 {
            format!(
                ", {}/{} partitions, {rows} rows",
                t.snapshot_partitions_done, t.snapshot_partitions_total
            )
        } else {
            String::new()
        };
        return format!("{}{progress}", state.replace('_', " "));
    }
    if t.snapshot_done {
        format!("done, {rows} rows")
    } else if t.snapshot_partitions_total > 0 {
        format!(
            "{}/{} partitions, {rows} rows",
            t.snapshot_partitions_done, t.snapshot_partitions_total
        )
    } else if t.snapshot_rows > 0 {
        format!("{rows} rows")
    } else {
        "-".to_owned()
    }
}

/// `pgpipe get`: everything about one pipe.
pub(crate) fn pipe_summary(p: &Pipe) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<12}{value}");
    };
    field("Pipe", format!("{} (id {})", p.name, p.id));
    let mut status = status_label(p.status);
    if p.status == PipeStatus::Paused as i32 && p.paused_from != 0 {
        let _ = write!(status, " (resumes to {})", status_label(p.paused_from));
    }
    if p.resyncing {
        status.push_str(", resync in progress");
    }
    field("Status", status);
    if !p.status_detail.is_empty() {
        field("Detail", p.status_detail.clone());
    }
    if !p.error.is_empty() {
        let step = if p.failed_step.is_empty() {
            String::new()
        } else {
            format!("in step {}: ", p.failed_step)
        };
        field("Error", format!("{step}{}", p.error));
    }
    for w in &p.slot_warnings {
        field(
            "Slot",
            format!("warning ({}): {}", slot_kind(w.kind), w.message),
        );
    }
    if !p.delete_reason.is_empty() {
        field("Deleted", p.delete_reason.clone());
    }
    if !p.resync_of.is_empty() {
        field("Resync of", p.resync_of.clone());
    }
    if !p.labels.is_empty() {
        field("Labels", labels_text(&p.labels));
    }
    field(
        "Last LSN",
        format!(
            "{} (lag {})",
            format_lsn(&p.last_lsn),
            format_bytes(p.lag_bytes)
        ),
    );
    field(
        "Cursor",
        format!("{} (stream version {})", p.cursor, p.stream_version),
    );
    field("Created", opt_timestamp(p.created_at.as_ref()));
    field("Updated", opt_timestamp(p.updated_at.as_ref()));
    if let Some(cfg) = &p.config {
        if let Some(src) = &cfg.source {
            field("Source", src.connection_string.clone());
        }
        if let Some(dst) = &cfg.destination {
            let mut s = format!("{} database {}", dst.url, dst.database);
            if !dst.user.is_empty() {
                let _ = write!(s, " user {}", dst.user);
            }
            if !dst.ca_cert.is_empty() {
                let _ = write!(s, " (CA {})", dst.ca_cert);
            }
            field("ClickHouse", s);
        }
        for t in &cfg.tables {
            if let Some(cols) = column_options_text(t) {
                field("Columns", format!("{}: {cols}", t.source_table));
            }
        }
        if let Some(st) = &cfg.settings {
            field(
                "Settings",
                format!(
                    "parallelism {}, {} rows/partition, batch {}, sync interval {}",
                    st.snapshot_parallelism,
                    format_count(st.snapshot_rows_per_partition),
                    format_count(u64::from(st.cdc_batch_size)),
                    format_duration_ms(u64::from(st.cdc_sync_interval_ms))
                ),
            );
        }
    }

    for t in &p.tables {
        let Some(d) = &t.source_details else {
            continue;
        };
        if !d.generated_columns.is_empty() {
            field(
                "Generated",
                format!(
                    "{}: {} (stored generated, not replicated: PostgreSQL before 18 does not send them)",
                    t.source_table,
                    d.generated_columns.join(", ")
                ),
            );
        }
        if !d.partitions.is_empty() || !d.partitions_loading.is_empty() {
            let mut s = format!(
                "{}: {} partition(s) ({})",
                t.source_table,
                d.partitions.len(),
                d.partitions.join(", ")
            );
            if !d.partitions_loading.is_empty() {
                let _ = write!(s, "; loading {}", d.partitions_loading.join(", "));
            }
            field("Partitions", s);
        }
        if !d.partitions_detached.is_empty() {
            field(
                "Detached",
                format!(
                    "{}: {} (rows kept in ClickHouse: Postgres sends no deletes for a detached partition)",
                    t.source_table,
                    d.partitions_detached.join(", ")
                ),
            );
        }
    }

    let configured = p
        .config
        .as_ref()
        .map(|c| c.tables.as_slice())
        .unwrap_or(&[]);
    let mut rows: Vec<Vec<String>> = p
        .tables
        .iter()
        .map(|t| {
            let order_by = configured
                .iter()
                .find(|c| c.source_table == t.source_table)
                .map(|c| c.order_by.join(","))
                .unwrap_or_default();
            let mut soft = String::new();
            if t.soft_deletes_transferred > 0 {
                soft = format_count(t.soft_deletes_transferred);
            }
            vec![
                t.source_table.clone(),
                t.destination_table.clone(),
                if order_by.is_empty() {
                    "-".to_owned()
                } else {
                    order_by
                },
                snapshot_cell(t),
                format_count(t.rows_inserted),
                format_count(t.rows_updated),
                format_count(t.rows_deleted),
                if soft.is_empty() {
                    "-".to_owned()
                } else {
                    soft
                },
            ]
        })
        .collect();
    // Tables configured but without stats yet.
    for c in configured {
        if !p.tables.iter().any(|t| t.source_table == c.source_table) {
            rows.push(vec![
                c.source_table.clone(),
                if c.destination_table.is_empty() {
                    "-".to_owned()
                } else {
                    c.destination_table.clone()
                },
                if c.order_by.is_empty() {
                    "-".to_owned()
                } else {
                    c.order_by.join(",")
                },
                "-".to_owned(),
                "0".to_owned(),
                "0".to_owned(),
                "0".to_owned(),
                "-".to_owned(),
            ]);
        }
    }
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&render_table(
            &[
                "SOURCE TABLE",
                "DESTINATION",
                "ORDER BY",
                "SNAPSHOT",
                "INSERTED",
                "UPDATED",
                "DELETED",
                "SOFT DELETES",
            ],
            &rows,
        ));
    }
    if !p.steps.is_empty() {
        let rows: Vec<Vec<String>> = p
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.step.clone(),
                    opt_timestamp(s.started_at.as_ref()),
                    opt_timestamp(s.finished_at.as_ref()),
                    if s.finished_at.is_none() && s.duration_ms == 0 {
                        "running".to_owned()
                    } else {
                        format_duration_ms(s.duration_ms)
                    },
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render_table(
            &["STEP", "STARTED", "FINISHED", "DURATION"],
            &rows,
        ));
    }
    out
}

/// The one-line status shown above the progress bars while watching.
pub(crate) fn status_line(p: &Pipe) -> String {
    let mut s = format!(
        "{}  {}  lsn {}  lag {}  cursor {}",
        p.name,
        status_label(p.status),
        format_lsn(&p.last_lsn),
        format_bytes(p.lag_bytes),
        p.cursor
    );
    if p.resyncing {
        s.push_str("  [resyncing]");
    }
    if !p.error.is_empty() {
        let _ = write!(s, "  error: {}", short(&p.error, 120));
    }
    if !p.status_detail.is_empty() {
        let _ = write!(s, "  ({})", short(&p.status_detail, 120));
    }
    if !p.slot_warnings.is_empty() {
        let kinds: Vec<String> = p.slot_warnings.iter().map(|w| slot_kind(w.kind)).collect();
        let _ = write!(s, "  slot warning: {}", kinds.join(", "));
    }
    s
}

/// A table's excluded, renamed and typed columns, e.g. `without
/// password_hash; desc → description; born as String` (None when it has
/// none).
fn column_options_text(t: &crate::proto::TableConfig) -> Option<String> {
    let mut parts = Vec::new();
    if !t.exclude_columns.is_empty() {
        parts.push(format!("without {}", t.exclude_columns.join(", ")));
    }
    if !t.rename_columns.is_empty() {
        let renames: Vec<String> = t
            .rename_columns
            .iter()
            .map(|(from, to)| format!("{from} → {to}"))
            .collect();
        parts.push(renames.join(", "));
    }
    if !t.column_types.is_empty() {
        let mut types: Vec<String> = t
            .column_types
            .iter()
            .map(|(c, ty)| format!("{c} as {ty}"))
            .collect();
        types.sort();
        parts.push(types.join(", "));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `PROBLEM_KIND_WAL_LEVEL` → `wal_level`.
pub(crate) fn problem_kind_label(raw: i32) -> String {
    match crate::proto::ProblemKind::try_from(raw) {
        Ok(k) => k.label(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// The problems of a ValidatePipe answer, one row each.
pub(crate) fn problems_table(problems: &[crate::proto::Problem]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = problems
        .iter()
        .map(|p| {
            let mut kind = problem_kind_label(p.kind);
            if p.warning {
                kind.push_str(" (warning)");
            }
            vec![kind, dash(&p.table), dash(&p.column), p.message.clone()]
        })
        .collect();
    render_table(&["KIND", "TABLE", "COLUMN", "WHAT TO DO"], &rows)
}

/// Labels as `k=v,k2=v2` (sorted by key).
pub(crate) fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        PipeFailed, PipeSettings, SoftDeletesTransferred, TableStats, event::Payload,
    };

    #[test]
    fn slot_warnings_show_in_the_status_line_and_events() {
        let w = crate::proto::SlotHealthWarning {
            kind: crate::proto::SlotWarningKind::Lag as i32,
            wal_status: "reserved".into(),
            message: "slot s holds 2 GiB".into(),
            ..Default::default()
        };
        let p = Pipe {
            name: "orders".into(),
            slot_warnings: vec![w.clone()],
            ..Default::default()
        };
        assert!(
            status_line(&p).ends_with("  slot warning: lag"),
            "{}",
            status_line(&p)
        );
        let e = Event {
            payload: Some(Payload::SlotHealthWarning(w)),
            ..Default::default()
        };
        assert_eq!(
            event_text(&e),
            "slot warning (lag, wal_status reserved): slot s holds 2 GiB"
        );
    }

    #[test]
    fn counts_bytes_durations() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(format_duration_ms(850), "850ms");
        assert_eq!(format_duration_ms(12_340), "12.3s");
        assert_eq!(format_duration_ms(245_000), "4m05s");
        assert_eq!(format_duration_ms(7_380_000), "2h03m");
        assert_eq!(format_duration_ms(273_600_000), "3d04h");
        assert_eq!(format_lsn(""), "-");
        assert_eq!(format_lsn("0/16B3748"), "0/16B3748");
    }

    #[test]
    fn statuses_and_codes() {
        assert_eq!(status_label(PipeStatus::Running as i32), "running");
        assert_eq!(status_label(PipeStatus::Snapshot as i32), "snapshot");
        assert_eq!(status_label(42), "unknown(42)");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn timestamps() {
        let t = |seconds, nanos| Timestamp { seconds, nanos };
        assert_eq!(format_timestamp(&t(0, 0), true), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(&t(1_709_210_096, 0), false),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            format_timestamp(&t(1_709_210_096, 5_000_000), true),
            "2024-02-29T12:34:56.005Z"
        );
        assert_eq!(
            format_timestamp(&t(1_709_210_096, 5_000), true),
            "2024-02-29T12:34:56.000005Z"
        );
        assert_eq!(
            format_timestamp(&t(1_709_210_096, 7), true),
            "2024-02-29T12:34:56.000000007Z"
        );
        assert_eq!(
            format_timestamp(&t(1_709_210_096, 5_000_000), false),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(format_timestamp(&t(-1, 0), false), "1969-12-31T23:59:59Z");
        assert_eq!(
            format_timestamp(&t(951_782_400, 0), false),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(format_time_of_day(Some(&t(1_709_210_096, 0))), "12:34:56Z");
        assert_eq!(format_time_of_day(None), "--:--:--Z");
    }

    #[test]
    fn password_detection() {
        assert!(conn_string_has_password("postgres://u:secret@db/app"));
        assert!(conn_string_has_password(
            "postgresql://u:s@db:5432/app?sslmode=require"
        ));
        assert!(conn_string_has_password("postgres://u@db/app?password=x"));
        assert!(conn_string_has_password("host=db password=secret user=u"));
        assert!(conn_string_has_password("host=db PASSWORD = secret"));
        assert!(conn_string_has_password("password=x host=db"));
        assert!(!conn_string_has_password("postgres://u@db:5432/app"));
        assert!(!conn_string_has_password("host=db user=u dbname=app"));
        assert!(!conn_string_has_password("host=db user=password_admin"));
        assert!(!conn_string_has_password("host=db passfile=/x"));
    }

    #[test]
    fn event_lines() {
        let ev = |payload| Event {
            payload: Some(payload),
            ..Default::default()
        };
        assert_eq!(
            event_text(&ev(Payload::PipeCreated(crate::proto::PipeCreated {
                resync_of: "abc".into(),
                ..Default::default()
            }))),
            "created (resync of abc)"
        );
        assert_eq!(
            event_text(&ev(Payload::PipeDeleted(crate::proto::PipeDeleted {
                reason: DeleteReason::Resync as i32,
                drop_destination_tables: false,
            }))),
            "deleted (resync)"
        );
        assert_eq!(
            event_text(&ev(Payload::SoftDeletesTransferred(
                SoftDeletesTransferred {
                    source_table: "public.orders".into(),
                    rows: 1200,
                }
            ))),
            "soft deletes transferred: 1,200 (public.orders)"
        );
        assert_eq!(
            event_text(&ev(Payload::PipeFailed(PipeFailed {
                step: "snapshot".into(),
                reason: "boom".into(),
                retrying: true,
            }))),
            "failed in step snapshot: boom (retrying)"
        );
        assert_eq!(
            event_text(&Event::default()),
            "unknown event (written by a newer server?)"
        );
    }

    #[test]
    fn tables_and_summary() {
        let t = render_table(
            &["A", "LONG HEADER"],
            &[vec!["xyz".into(), "1".into()], vec!["ü".into(), "".into()]],
        );
        assert_eq!(t, "A    LONG HEADER\nxyz  1\nü\n");

        let pipe = Pipe {
            id: "id-1".into(),
            name: "orders".into(),
            status: PipeStatus::Paused as i32,
            paused_from: PipeStatus::Running as i32,
            last_lsn: "0/16B3748".into(),
            lag_bytes: 2048,
            tables: vec![TableStats {
                source_table: "public.orders".into(),
                destination_table: "orders".into(),
                snapshot_rows: 10,
                snapshot_done: true,
                rows_inserted: 1234,
                ..Default::default()
            }],
            config: Some(crate::proto::PipeConfig {
                settings: Some(PipeSettings {
                    snapshot_parallelism: 4,
                    snapshot_rows_per_partition: 500_000,
                    cdc_batch_size: 10_000,
                    cdc_sync_interval_ms: 1000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = pipe_summary(&pipe);
        assert!(!s.contains("Labels"), "{s}");
        let mut labeled = pipe.clone();
        labeled.labels = [("env", "prod"), ("team", "core")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(
            pipe_summary(&labeled).contains("Labels      env=prod,team=core\n"),
            "{}",
            pipe_summary(&labeled)
        );
        assert!(
            s.contains("Status      paused (resumes to running)\n"),
            "{s}"
        );
        assert!(s.contains("Last LSN    0/16B3748 (lag 2.0 KiB)\n"), "{s}");
        assert!(!s.contains("Columns"), "{s}");
        let mut columns = pipe.clone();
        if let Some(c) = columns.config.as_mut() {
            c.tables = vec![crate::proto::TableConfig {
                source_table: "public.users".into(),
                exclude_columns: vec!["password_hash".into()],
                rename_columns: [("desc".to_owned(), "description".to_owned())].into(),
                column_types: [
                    ("born".to_owned(), "Int32".to_owned()),
                    ("big".to_owned(), "String".to_owned()),
                ]
                .into(),
                ..Default::default()
            }];
        }
        let with_columns = pipe_summary(&columns);
        assert!(
            with_columns.contains(
                "Columns     public.users: without password_hash; desc → description; \
                 big as String, born as Int32\n"
            ),
            "{with_columns}"
        );
        assert!(
            s.contains("parallelism 4, 500,000 rows/partition, batch 10,000, sync interval 1.0s"),
            "{s}"
        );
        assert!(
            s.contains("public.orders  orders       -         done, 10 rows  1,234"),
            "{s}"
        );
        let l = pipes_table(std::slice::from_ref(&pipe));
        assert!(
            l.starts_with("NAME    STATUS  TABLES  LAST LSN   LAG      UPDATED  ID    LABELS\n"),
            "{l}"
        );
    }

    #[test]
    fn get_lists_generated_columns_and_partitions() {
        let pipe = Pipe {
            name: "events".into(),
            tables: vec![TableStats {
                source_table: "public.events".into(),
                source_details: Some(crate::proto::SourceTableDetails {
                    generated_columns: vec!["total".into()],
                    partitions: vec!["public.events_09".into(), "public.events_10".into()],
                    partitions_loading: vec!["public.events_08".into()],
                    partitions_detached: vec!["public.events_07".into()],
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = pipe_summary(&pipe);
        for line in [
            "Generated   public.events: total (stored generated, not replicated",
            "Partitions  public.events: 2 partition(s) (public.events_09, public.events_10); loading public.events_08",
            "Detached    public.events: public.events_07 (rows kept in ClickHouse",
        ] {
            assert!(s.contains(line), "{line:?} not in\n{s}");
        }
    }
}
