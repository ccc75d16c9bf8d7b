//! JSON rendering of API messages (written by hand from the prost structs;
//! enum values use their proto names, timestamps are RFC 3339 strings, and
//! 64-bit integers are plain JSON numbers), and parsing of the
//! `create --file` request.

use prost_types::Timestamp;
use serde_json::{Value, json};

use super::format::format_timestamp;
use crate::proto::{
    CreatePipeRequest, DeleteReason, DestinationConfig, Event, Pipe, PipeConfig, PipeSettings,
    PipeStatus, SourceConfig, TableConfig, WatchPipeResponse, event::Payload,
};

fn status_json(raw: i32) -> Value {
    match PipeStatus::try_from(raw) {
        Ok(s) => Value::from(s.as_str_name()),
        Err(_) => Value::from(raw),
    }
}

fn delete_reason_json(raw: i32) -> Value {
    match DeleteReason::try_from(raw) {
        Ok(r) => Value::from(r.as_str_name()),
        Err(_) => Value::from(raw),
    }
}

fn ts_json(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::from(format_timestamp(t, true)))
}

fn table_config_json(t: &TableConfig) -> Value {
    json!({
        "source_table": t.source_table,
        "destination_table": t.destination_table,
        "order_by": t.order_by,
        "exclude_columns": t.exclude_columns,
        "rename_columns": t.rename_columns,
        "column_types": t.column_types,
    })
}

/// Pipe configuration; passwords are never part of it (the server does not
/// return them, and this function would not print them either).
fn config_json(c: &PipeConfig) -> Value {
    json!({
        "source": c.source.as_ref().map(|s| json!({
            "connection_string": s.connection_string,
        })),
        "destination": c.destination.as_ref().map(|d| {
            let mut v = json!({
                "url": d.url,
                "database": d.database,
                "user": d.user,
            });
            // Only when set: most destinations trust the system's roots.
            if !d.ca_cert.is_empty() {
                v["ca_cert"] = json!(d.ca_cert);
            }
            v
        }),
        "tables": c.tables.iter().map(table_config_json).collect::<Vec<_>>(),
        "settings": c.settings.as_ref().map(|s| json!({
            "snapshot_parallelism": s.snapshot_parallelism,
            "snapshot_rows_per_partition": s.snapshot_rows_per_partition,
            "cdc_batch_size": s.cdc_batch_size,
            "cdc_sync_interval_ms": s.cdc_sync_interval_ms,
            "slot_lag_warning_bytes": s.slot_lag_warning_bytes,
            "slot_stall_warning_seconds": s.slot_stall_warning_seconds,
            "slot_check_interval_seconds": s.slot_check_interval_seconds,
            "drop_dropped_columns": s.drop_dropped_columns,
        })),
        "labels": c.labels,
    })
}

/// `TABLE_STATE_LOAD_PENDING` → `load_pending`.
pub(crate) fn table_state_json(raw: i32) -> String {
    crate::proto::TableState::try_from(raw)
        .map(crate::proto::TableState::label)
        .unwrap_or_else(|_| format!("state {raw}"))
}

/// A table's stats; `source_details` only when there is something to say
/// (generated columns, partitions).
fn table_stats_json(t: &crate::proto::TableStats) -> Value {
    let mut v = json!({
        "source_table": t.source_table,
        "destination_table": t.destination_table,
        "snapshot_rows": t.snapshot_rows,
        "snapshot_partitions_done": t.snapshot_partitions_done,
        "snapshot_partitions_total": t.snapshot_partitions_total,
        "snapshot_done": t.snapshot_done,
        "rows_inserted": t.rows_inserted,
        "rows_updated": t.rows_updated,
        "rows_deleted": t.rows_deleted,
        "soft_deletes_transferred": t.soft_deletes_transferred,
        "state": table_state_json(t.state),
        "error": t.error,
    });
    if let (Some(d), Some(obj)) = (&t.source_details, v.as_object_mut()) {
        obj.insert(
            "source_details".into(),
            json!({
                "generated_columns": d.generated_columns,
                "partitions": d.partitions,
                "partitions_loading": d.partitions_loading,
                "partitions_detached": d.partitions_detached,
            }),
        );
    }
    v
}

pub(crate) fn pipe_json(p: &Pipe) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "status": status_json(p.status),
        "config": p.config.as_ref().map(config_json),
        "tables": p.tables.iter().map(table_stats_json).collect::<Vec<_>>(),
        "last_lsn": p.last_lsn,
        "lag_bytes": p.lag_bytes,
        "error": p.error,
        "failed_step": p.failed_step,
        "created_at": ts_json(p.created_at.as_ref()),
        "updated_at": ts_json(p.updated_at.as_ref()),
        "resync_of": p.resync_of,
        "paused_from": status_json(p.paused_from),
        "status_detail": p.status_detail,
        "stream_version": p.stream_version,
        "cursor": p.cursor,
        "steps": p.steps.iter().map(|s| json!({
            "step": s.step,
            "started_at": ts_json(s.started_at.as_ref()),
            "finished_at": ts_json(s.finished_at.as_ref()),
            "duration_ms": s.duration_ms,
        })).collect::<Vec<_>>(),
        "resyncing": p.resyncing,
        "delete_reason": p.delete_reason,
        "labels": p.labels,
        "slot_warnings": p.slot_warnings.iter().map(slot_warning_json).collect::<Vec<_>>(),
        "slot_wal_status": p.slot_wal_status,
    })
}

fn slot_kind_json(kind: i32) -> String {
    crate::proto::SlotWarningKind::try_from(kind)
        .map(|k| k.as_str_name().to_owned())
        .unwrap_or_else(|_| kind.to_string())
}

fn slot_warning_json(w: &crate::proto::SlotHealthWarning) -> Value {
    json!({
        "kind": slot_kind_json(w.kind),
        "slot_name": w.slot_name,
        "wal_status": w.wal_status,
        "active": w.active,
        "lag_bytes": w.lag_bytes,
        "confirmed_flush_lsn": w.confirmed_flush_lsn,
        "threshold": w.threshold,
        "message": w.message,
    })
}

/// The event kind: the name of the `Event.payload` oneof field that is set
/// ("pipe_created", "snapshot_progress", ...), or "unknown".
pub(crate) fn event_kind(ev: &Event) -> &'static str {
    crate::domain::projection::event_kind(ev)
}

fn payload_json(p: &Payload) -> Value {
    match p {
        Payload::PipeCreated(p) => json!({
            "name": p.name,
            "config": p.config.as_ref().map(config_json),
            "resync_of": p.resync_of,
        }),
        Payload::PipeDeleted(p) => json!({
            "reason": delete_reason_json(p.reason),
            "drop_destination_tables": p.drop_destination_tables,
        }),
        Payload::ResyncStarted(p) => json!({
            "overrides": p.overrides.iter().map(table_config_json).collect::<Vec<_>>(),
        }),
        Payload::StepStarted(p) => json!({ "step": p.step }),
        Payload::SetupCompleted(p) => json!({
            "slot_name": p.slot_name,
            "publication_name": p.publication_name,
            "consistent_lsn": p.consistent_lsn,
        }),
        Payload::SourceReleased(p) => json!({
            "slot_name": p.slot_name,
            "publication_name": p.publication_name,
            "destination_tables_dropped": p.destination_tables_dropped,
        }),
        Payload::TablesPrepared(p) => json!({
            "tables": p.tables.iter().map(|t| json!({
                "source_table": t.source_table,
                "destination_table": t.destination_table,
                "load_table": t.load_table,
                "order_by": t.order_by,
            })).collect::<Vec<_>>(),
        }),
        Payload::SnapshotStarted(p) => json!({
            "tables": p.tables.iter().map(|t| json!({
                "source_table": t.source_table,
                "partitions_total": t.partitions_total,
                "estimated_rows": t.estimated_rows,
            })).collect::<Vec<_>>(),
        }),
        Payload::SnapshotProgress(p) => json!({
            "source_table": p.source_table,
            "rows_copied": p.rows_copied,
            "partitions_done": p.partitions_done,
            "partitions_total": p.partitions_total,
            "partition_ms_total": p.partition_ms_total,
        }),
        Payload::SnapshotTableCompleted(p) => json!({
            "source_table": p.source_table,
            "rows": p.rows,
        }),
        Payload::SoftDeletesTransferred(p) => json!({
            "source_table": p.source_table,
            "rows": p.rows,
        }),
        Payload::TablesSwapped(p) => json!({ "destination_tables": p.destination_tables }),
        Payload::CdcStarted(p) => json!({ "start_lsn": p.start_lsn }),
        Payload::CdcProgress(p) => json!({
            "start_lsn": p.start_lsn,
            "lsn": p.lsn,
            "lag_bytes": p.lag_bytes,
            "rows": p.rows,
            "duration_ms": p.duration_ms,
            "transactions": p.transactions,
            "first_commit_at": ts_json(p.first_commit_at.as_ref()),
            "tables": p.tables.iter().map(|t| json!({
                "source_table": t.source_table,
                "inserted": t.inserted,
                "updated": t.updated,
                "deleted": t.deleted,
            })).collect::<Vec<_>>(),
        }),
        Payload::PipeLabelsChanged(p) => json!({
            "set": p.set,
            "removed": p.removed,
            "labels": p.labels,
        }),
        Payload::PipeFailed(p) => json!({
            "step": p.step,
            "reason": p.reason,
            "retrying": p.retrying,
        }),
        Payload::TablesAdded(p) => json!({
            "tables": p.tables.iter().map(table_config_json).collect::<Vec<_>>(),
        }),
        Payload::TablesRemoved(p) => json!({ "source_tables": p.source_tables }),
        Payload::TableResyncRequested(p) => json!({ "source_tables": p.source_tables }),
        Payload::TableLoadStarted(p) => {
            let t = p.table.clone().unwrap_or_default();
            json!({
                "table": {
                    "source_table": t.source_table,
                    "destination_table": t.destination_table,
                    "load_table": t.load_table,
                    "order_by": t.order_by,
                },
                "partitions_total": p.partitions_total,
                "estimated_rows": p.estimated_rows,
                "consistent_lsn": p.consistent_lsn,
            })
        }
        Payload::TableLoadCompleted(p) => json!({
            "source_table": p.source_table,
            "rows": p.rows,
        }),
        Payload::TableSwapped(p) => json!({
            "source_table": p.source_table,
            "destination_table": p.destination_table,
            "soft_deletes_transferred": p.soft_deletes_transferred,

        }),
        Payload::SchemaChanged(c) => json!({
            "source_table": c.source_table,
            "kind": c.kind().label(),
            "column": c.column,
            "new_column": c.new_column,
            "old_type": c.old_type,
            "new_type": c.new_type,
            "lsn": c.lsn,
            "destination_column": c.destination_column,
            "clickhouse": c.clickhouse,
        }),
        Payload::TableFailed(f) => json!({
            "source_table": f.source_table,
            "reason": f.reason,
            "lsn": f.lsn,
        }),
        Payload::SlotHealthWarning(w) => slot_warning_json(w),
        Payload::SlotHealthRecovered(r) => json!({
            "kind": slot_kind_json(r.kind),
            "lag_bytes": r.lag_bytes,
            "wal_status": r.wal_status,
        }),
        Payload::PartitionsChanged(p) => json!({
            "source_table": p.source_table,
            "replicated": p.replicated,
            "attached": p.attached,
            "detached": p.detached,
            "reset": p.reset,
            "rows": p.rows,
        }),
        Payload::SnapshotCompleted(_)
        | Payload::SwapStarted(_)
        | Payload::PipePaused(_)
        | Payload::PipeResumed(_)
        | Payload::PipeRecovered(_) => json!({}),
    }
}

pub(crate) fn event_json(ev: &Event) -> Value {
    json!({
        "seq": ev.seq,
        "pipe_name": ev.pipe_name,
        "pipe_id": ev.pipe_id,
        "stream_version": ev.stream_version,
        "at": ts_json(ev.at.as_ref()),
        "schema_version": ev.schema_version,
        "kind": event_kind(ev),
        "payload": ev.payload.as_ref().map(payload_json),
    })
}

/// One `watch --json` line. `event` is null for the initial state message.
pub(crate) fn watch_message_json(m: &WatchPipeResponse) -> Value {
    json!({
        "cursor": m.cursor,
        "kind": m.event.as_ref().map(event_kind),
        "status": m.pipe.as_ref().map(|p| status_json(p.status)),
        "event": m.event.as_ref().map(event_json),
        "pipe": m.pipe.as_ref().map(pipe_json),
    })
}

// ------------------------------------------------------------ create --file

/// `snapshotRowsPerPartition` -> `snapshot_rows_per_partition`.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The non-null fields of a JSON object, keyed by their canonical
/// (snake_case) name; lowerCamelCase names are accepted as in the protobuf
/// JSON mapping. Unknown fields are an error, to catch typos.
fn fields<'a>(
    v: &'a Value,
    path: &str,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, &'a Value)>, String> {
    let Value::Object(map) = v else {
        return Err(format!("{path}: expected an object"));
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let canonical = snake_case(key);
        let Some(name) = allowed.iter().find(|a| **a == canonical) else {
            return Err(format!(
                "{path}: unknown field {key:?} (expected one of: {})",
                allowed.join(", ")
            ));
        };
        if !value.is_null() {
            out.push((*name, value));
        }
    }
    Ok(out)
}

fn string(v: &Value, path: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{path}: expected a string"))
}

/// A non-negative integer, as a JSON number or a decimal string (the
/// protobuf JSON mapping writes 64-bit integers as strings).
fn unsigned(v: &Value, path: &str) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{path}: expected a non-negative integer"))
}

fn unsigned32(v: &Value, path: &str) -> Result<u32, String> {
    u32::try_from(unsigned(v, path)?).map_err(|_| format!("{path}: value too large"))
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{path}: expected an array"))
}

fn table_from_json(v: &Value, path: &str) -> Result<TableConfig, String> {
    if let Value::String(spec) = v {
        return super::spec::parse_table_spec(spec).map_err(|e| format!("{path}: {e}"));
    }
    let mut t = TableConfig::default();
    let allowed = [
        "source_table",
        "destination_table",
        "order_by",
        "exclude_columns",
        "rename_columns",
        "column_types",
    ];
    for (k, v) in fields(v, path, &allowed)? {
        let p = format!("{path}.{k}");
        let strings = |v: &Value| -> Result<Vec<String>, String> {
            array(v, &p)?
                .iter()
                .enumerate()
                .map(|(i, c)| string(c, &format!("{p}[{i}]")))
                .collect()
        };
        match k {
            "source_table" => t.source_table = string(v, &p)?,
            "destination_table" => t.destination_table = string(v, &p)?,
            "order_by" => t.order_by = strings(v)?,
            "exclude_columns" => t.exclude_columns = strings(v)?,
            "column_types" => {
                let Value::Object(map) = v else {
                    return Err(format!(
                        "{p}: expected an object of source column -> type (e.g. \"String\")"
                    ));
                };
                for (col, ty) in map {
                    t.column_types
                        .insert(col.clone(), string(ty, &format!("{p}.{col}"))?);
                }
            }
            _ => {
                let Value::Object(map) = v else {
                    return Err(format!(
                        "{p}: expected an object of source column -> destination column"
                    ));
                };
                for (from, to) in map {
                    t.rename_columns
                        .insert(from.clone(), string(to, &format!("{p}.{from}"))?);
                }
            }
        }
    }
    Ok(t)
}

/// Parses a CreatePipeRequest written as JSON (field names in snake_case or
/// lowerCamelCase). A table may also be given as a SPEC string.
pub(crate) fn create_request_from_json(v: &Value) -> Result<CreatePipeRequest, String> {
    let mut req = CreatePipeRequest::default();
    let top = fields(
        v,
        "request",
        &[
            "name",
            "source",
            "destination",
            "tables",
            "settings",
            "labels",
        ],
    )?;
    for (k, v) in top {
        match k {
            "name" => req.name = string(v, "name")?,
            "source" => {
                let mut s = SourceConfig::default();
                for (k, v) in fields(v, "source", &["connection_string", "password"])? {
                    let p = format!("source.{k}");
                    match k {
                        "connection_string" => s.connection_string = string(v, &p)?,
                        _ => s.password = string(v, &p)?,
                    }
                }
                req.source = Some(s);
            }
            "destination" => {
                let mut d = DestinationConfig::default();
                for (k, v) in fields(
                    v,
                    "destination",
                    &["url", "database", "user", "password", "ca_cert"],
                )? {
                    let p = format!("destination.{k}");
                    let s = string(v, &p)?;
                    match k {
                        "url" => d.url = s,
                        "database" => d.database = s,
                        "user" => d.user = s,
                        "ca_cert" => d.ca_cert = s,
                        _ => d.password = s,
                    }
                }
                req.destination = Some(d);
            }
            "tables" => {
                req.tables = array(v, "tables")?
                    .iter()
                    .enumerate()
                    .map(|(i, t)| table_from_json(t, &format!("tables[{i}]")))
                    .collect::<Result<_, _>>()?;
            }
            "labels" => {
                let Value::Object(map) = v else {
                    return Err("labels: expected an object of strings".to_owned());
                };
                for (k, val) in map {
                    req.labels
                        .insert(k.clone(), string(val, &format!("labels.{k}"))?);
                }
            }
            _ => {
                let mut s = PipeSettings::default();
                for (k, v) in fields(
                    v,
                    "settings",
                    &[
                        "snapshot_parallelism",
                        "snapshot_rows_per_partition",
                        "cdc_batch_size",
                        "cdc_sync_interval_ms",
                        "slot_lag_warning_bytes",
                        "slot_stall_warning_seconds",
                        "slot_check_interval_seconds",
                        "drop_dropped_columns",
                    ],
                )? {
                    let p = format!("settings.{k}");
                    match k {
                        "snapshot_parallelism" => s.snapshot_parallelism = unsigned32(v, &p)?,
                        "snapshot_rows_per_partition" => {
                            s.snapshot_rows_per_partition = unsigned(v, &p)?
                        }
                        "cdc_batch_size" => s.cdc_batch_size = unsigned32(v, &p)?,
                        "slot_lag_warning_bytes" => s.slot_lag_warning_bytes = unsigned(v, &p)?,
                        "slot_stall_warning_seconds" => {
                            s.slot_stall_warning_seconds = unsigned32(v, &p)?
                        }
                        "slot_check_interval_seconds" => {
                            s.slot_check_interval_seconds = unsigned32(v, &p)?
                        }
                        "drop_dropped_columns" => {
                            s.drop_dropped_columns = v
                                .as_bool()
                                .ok_or_else(|| format!("{p}: expected true or false"))?
                        }
                        _ => s.cdc_sync_interval_ms = unsigned32(v, &p)?,
                    }
                }
                req.settings = Some(s);
            }
        }
    }
    Ok(req)
}

/// `pgpipe throughput --json`: one object per point.
pub(crate) fn throughput_point_json(p: &crate::proto::ThroughputPoint) -> Value {
    json!({
        "start": ts_json(p.start.as_ref()),
        "rows_inserted": p.rows_inserted,
        "rows_updated": p.rows_updated,
        "rows_deleted": p.rows_deleted,
        "batches": p.batches,
        "lag_bytes": p.lag_bytes,
        "max_lag_bytes": p.max_lag_bytes,
        "lsn": p.lsn,
    })
}

/// `pgpipe load-summary --json`: one object per incarnation and table.
pub(crate) fn load_summary_json(t: &crate::proto::TableLoadSummary) -> Value {
    json!({
        "pipe_id": t.pipe_id,
        "source_table": t.source_table,
        "partitions_done": t.partitions_done,
        "partitions_total": t.partitions_total,
        "rows": t.rows,
        "avg_partition_ms": t.avg_partition_ms,
        "started_at": ts_json(t.started_at.as_ref()),
        "finished_at": ts_json(t.finished_at.as_ref()),
        "duration_ms": t.duration_ms,
        "done": t.done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{SnapshotProgress, TableStats};

    #[test]
    fn watch_message_rendering() {
        let msg = WatchPipeResponse {
            cursor: 42,
            pipe: Some(Pipe {
                id: "p-2".into(),
                name: "orders".into(),
                status: PipeStatus::Snapshot as i32,
                tables: vec![TableStats {
                    source_table: "public.orders".into(),
                    destination_table: "orders".into(),
                    snapshot_rows: 5000,
                    snapshot_partitions_done: 1,
                    snapshot_partitions_total: 4,
                    ..Default::default()
                }],
                cursor: 42,
                created_at: Some(Timestamp {
                    seconds: 1_709_210_096,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            event: Some(Event {
                seq: 42,
                pipe_name: "orders".into(),
                pipe_id: "p-2".into(),
                stream_version: 7,
                schema_version: 1,
                at: Some(Timestamp {
                    seconds: 1_709_210_097,
                    nanos: 250_000_000,
                }),
                payload: Some(Payload::SnapshotProgress(SnapshotProgress {
                    source_table: "public.orders".into(),
                    rows_copied: 5000,
                    partitions_done: 1,
                    partitions_total: 4,
                    ..Default::default()
                })),
            }),
        };
        let v = watch_message_json(&msg);
        assert_eq!(v["cursor"], 42);
        assert_eq!(v["kind"], "snapshot_progress");
        assert_eq!(v["status"], "PIPE_STATUS_SNAPSHOT");
        assert_eq!(v["event"]["seq"], 42);
        assert_eq!(v["event"]["at"], "2024-02-29T12:34:57.250Z");
        assert_eq!(
            v["event"]["payload"],
            json!({"source_table": "public.orders", "rows_copied": 5000,
                   "partitions_done": 1, "partitions_total": 4,
                   "partition_ms_total": 0})
        );
        assert_eq!(v["pipe"]["status"], "PIPE_STATUS_SNAPSHOT");
        assert_eq!(v["pipe"]["paused_from"], "PIPE_STATUS_UNSPECIFIED");
        assert_eq!(v["pipe"]["created_at"], "2024-02-29T12:34:56Z");
        assert_eq!(v["pipe"]["updated_at"], Value::Null);
        assert_eq!(v["pipe"]["tables"][0]["snapshot_partitions_total"], 4);
        assert_eq!(v["pipe"]["tables"][0]["snapshot_rows"], 5000);
        // One line, parseable back.
        let line = v.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).ok(), Some(v));

        // The initial state message has no event.
        let first = watch_message_json(&WatchPipeResponse {
            cursor: 41,
            pipe: msg.pipe.clone(),
            event: None,
        });
        assert_eq!(first["event"], Value::Null);
        assert_eq!(first["kind"], Value::Null);
        // Unknown enum values come out as numbers.
        assert_eq!(status_json(99), json!(99));
    }

    #[test]
    fn create_file_parsing() {
        let v: Value = serde_json::from_str(
            r#"{
              "name": "orders",
              "source": {"connectionString": "host=db user=u"},
              "destination": {"url": "http://ch:8123", "database": "an", "user": null},
              "tables": [
                {"source_table": "public.orders", "orderBy": ["id", "created_at"]},
                "public.items:items_v2:id"
              ],
              "settings": {"snapshotParallelism": 8, "snapshot_rows_per_partition": "100000"}
            }"#,
        )
        .unwrap();
        let req = create_request_from_json(&v).unwrap();
        assert_eq!(req.name, "orders");
        assert_eq!(req.source.unwrap().connection_string, "host=db user=u");
        let d = req.destination.unwrap();
        assert_eq!(
            (d.url.as_str(), d.database.as_str(), d.user.as_str()),
            ("http://ch:8123", "an", "")
        );
        assert_eq!(req.tables.len(), 2);
        assert_eq!(req.tables[0].order_by, vec!["id", "created_at"]);
        assert_eq!(req.tables[1].destination_table, "items_v2");
        let s = req.settings.unwrap();
        assert_eq!(s.snapshot_parallelism, 8);
        assert_eq!(s.snapshot_rows_per_partition, 100_000);

        let err = create_request_from_json(&json!({"name": "x", "tabels": []})).unwrap_err();
        assert!(err.contains("unknown field \"tabels\""), "{err}");
        let err =
            create_request_from_json(&json!({"settings": {"cdc_batch_size": -1}})).unwrap_err();
        assert_eq!(
            err,
            "settings.cdc_batch_size: expected a non-negative integer"
        );
        assert!(create_request_from_json(&json!([1])).is_err());
    }
}
