//! One-line descriptions of events (`watch`, `events`, `history`).

use std::fmt::Write as _;

use super::{format_bytes, format_count, format_duration_ms, format_lsn};
use crate::proto::{DeleteReason, Event, event::Payload};

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
pub(super) fn slot_kind(kind: i32) -> String {
    crate::proto::SlotWarningKind::try_from(kind)
        .map(crate::proto::SlotWarningKind::label)
        .unwrap_or_else(|_| format!("kind {kind}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PipeFailed, SoftDeletesTransferred};

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
}
