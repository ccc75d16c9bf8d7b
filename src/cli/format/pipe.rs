//! One pipe: the `get` summary and the status line shown while watching.

use std::fmt::Write as _;

use super::event::slot_kind;
use super::*;
use crate::proto::Pipe;

fn snapshot_cell(t: &crate::proto::TableStats) -> String {
    let rows = format_count(t.snapshot_rows);
    // A table loaded beside CDC says so.
    let state = crate::cli::json::table_state_json(t.state);
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

#[cfg(test)]
mod tests {
    use super::super::{event_text, pipes_table, render_table};
    use super::*;
    use crate::proto::{Event, PipeSettings, TableStats, event::Payload};

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
