//! Pipe settings: their defaults (0 means the default) and their bounds,
//! written once for the request checks and for the engine, which applies
//! the defaults again to pipes recorded before a setting existed.

use crate::proto::PipeSettings;

pub const MAX_PARALLELISM: u32 = 64;
pub const DEFAULT_PARALLELISM: u32 = 4;
pub const DEFAULT_ROWS_PER_PARTITION: u64 = 500_000;
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_SYNC_INTERVAL_MS: u32 = 1_000;

pub const DEFAULT_LAG_WARNING_BYTES: u64 = 1 << 30;
pub const DEFAULT_STALL_WARNING_SECONDS: u32 = 300;
pub const DEFAULT_CHECK_INTERVAL_SECONDS: u32 = 30;

/// `v`, or `default` for 0 (proto3's "not set").
fn or<T: Default + PartialEq>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

/// `s` with the slot health settings defaulted (0 means the default). Also
/// applied when a pipe runs, for pipes created before these settings.
pub fn with_slot_health_defaults(s: &PipeSettings) -> PipeSettings {
    PipeSettings {
        slot_lag_warning_bytes: or(s.slot_lag_warning_bytes, DEFAULT_LAG_WARNING_BYTES),
        slot_stall_warning_seconds: or(s.slot_stall_warning_seconds, DEFAULT_STALL_WARNING_SECONDS),
        slot_check_interval_seconds: or(
            s.slot_check_interval_seconds,
            DEFAULT_CHECK_INTERVAL_SECONDS,
        ),
        ..*s
    }
}

/// Range checks of the (defaulted) slot health settings.
fn check_slot_health(s: &PipeSettings) -> Result<(), String> {
    if s.slot_lag_warning_bytes < 1024 {
        return Err(format!(
            "settings.slot_lag_warning_bytes is {}; use at least 1024 (0 means the default, 1 GiB)",
            s.slot_lag_warning_bytes
        ));
    }
    if !(10..=604_800).contains(&s.slot_stall_warning_seconds) {
        return Err(format!(
            "settings.slot_stall_warning_seconds is {}; use 10..=604800 (0 means the default, 300)",
            s.slot_stall_warning_seconds
        ));
    }
    if !(1..=3_600).contains(&s.slot_check_interval_seconds) {
        return Err(format!(
            "settings.slot_check_interval_seconds is {}; use 1..=3600 (0 means the default, 30)",
            s.slot_check_interval_seconds
        ));
    }
    Ok(())
}

/// A request's settings (absent: all defaults), defaulted and checked; the
/// error names the setting and its bounds.
pub fn checked(s: Option<&PipeSettings>) -> Result<PipeSettings, String> {
    let s = s.cloned().unwrap_or_default();
    let out = PipeSettings {
        snapshot_parallelism: or(s.snapshot_parallelism, DEFAULT_PARALLELISM),
        snapshot_rows_per_partition: or(s.snapshot_rows_per_partition, DEFAULT_ROWS_PER_PARTITION),
        cdc_batch_size: or(s.cdc_batch_size, DEFAULT_BATCH_SIZE),
        cdc_sync_interval_ms: or(s.cdc_sync_interval_ms, DEFAULT_SYNC_INTERVAL_MS),
        ..with_slot_health_defaults(&s)
    };
    if out.snapshot_parallelism > MAX_PARALLELISM {
        return Err(format!(
            "settings.snapshot_parallelism is {}; use 1..={MAX_PARALLELISM}",
            out.snapshot_parallelism
        ));
    }
    if out.snapshot_rows_per_partition < 1_000 {
        return Err(
            "settings.snapshot_rows_per_partition must be at least 1000 (0 means the default, 500000)".into(),
        );
    }
    if out.cdc_batch_size > 1_000_000 {
        return Err(
            "settings.cdc_batch_size must be at most 1000000 (0 means the default, 10000)".into(),
        );
    }
    if out.cdc_sync_interval_ms < 10 || out.cdc_sync_interval_ms > 3_600_000 {
        return Err(
            "settings.cdc_sync_interval_ms must be within 10..=3600000 (0 means the default, 1000)"
                .into(),
        );
    }
    check_slot_health(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn settings_default_and_are_checked() {
        let d = with_slot_health_defaults(&PipeSettings::default());
        assert_eq!(d.slot_lag_warning_bytes, GIB);
        assert_eq!(d.slot_stall_warning_seconds, 300);
        assert_eq!(d.slot_check_interval_seconds, 30);
        assert!(check_slot_health(&d).is_ok());
        for bad in [
            PipeSettings {
                slot_lag_warning_bytes: 10,
                ..d
            },
            PipeSettings {
                slot_stall_warning_seconds: 5,
                ..d
            },
            PipeSettings {
                slot_check_interval_seconds: 3601,
                ..d
            },
        ] {
            assert!(check_slot_health(&bad).is_err(), "{bad:?}");
        }
    }
}
