//! Human-readable formatting. This file holds the values every command
//! shows (status names, sizes, durations, timestamps, labels); `event`
//! renders event one-liners, `pipe` the `get` summary and watch status line,
//! `table` plain-text tables.

use std::fmt::Write as _;

use prost_types::Timestamp;
use tonic::Code;

use crate::proto::PipeStatus;

mod event;
mod pipe;
mod table;

pub(crate) use event::event_text;
pub(crate) use pipe::{pipe_summary, status_line};
pub(crate) use table::{pipes_table, problem_kind_label, problems_table, render_table, table_of};

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
    let (year, month, day) = crate::sink::civil_from_days(secs.div_euclid(86_400));
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
        for (seconds, nanos, fraction, want) in [
            (0, 0, true, "1970-01-01T00:00:00Z"),
            (1_709_210_096, 0, false, "2024-02-29T12:34:56Z"),
            (1_709_210_096, 5_000_000, true, "2024-02-29T12:34:56.005Z"),
            (1_709_210_096, 5_000, true, "2024-02-29T12:34:56.000005Z"),
            (1_709_210_096, 7, true, "2024-02-29T12:34:56.000000007Z"),
            (1_709_210_096, 5_000_000, false, "2024-02-29T12:34:56Z"),
            (-1, 0, false, "1969-12-31T23:59:59Z"),
            (951_782_400, 0, false, "2000-02-29T00:00:00Z"),
        ] {
            assert_eq!(format_timestamp(&t(seconds, nanos), fraction), want);
        }
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
}
