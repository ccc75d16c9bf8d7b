//! `--json` output: API messages in the proto3 JSON mapping (field names
//! in lowerCamelCase, enum values by name, 64-bit integers as strings,
//! timestamps as RFC 3339 in UTC), i.e. what grpcurl prints for the same
//! message, with every field (defaults included). The serde impls are
//! pbjson's, generated for twins of the API's messages (see `build.rs`).
//! Also the parsing of the `create --file` request.

use prost::Message;
use serde_json::Value;

use crate::proto::{
    CreatePipeRequest, DestinationConfig, Event, Pipe, PipeSettings, SourceConfig, TableConfig,
    WatchEventsResponse, WatchPipeResponse,
};

/// The API's messages again, with pbjson's serde impls. Same fields and
/// wire format as [`crate::proto`]; only `google.protobuf.Timestamp` is
/// [`Timestamp`] here, whose JSON form prost-types cannot give.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    unused_imports,
    unused_qualifications
)]
mod wire {
    include!(concat!(env!("OUT_DIR"), "/json/pgpipe.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/json/pgpipe.v1.serde.rs"));
}

/// `google.protobuf.Timestamp` for [`wire`]: its JSON is RFC 3339 in UTC
/// with a `Z` and 0, 3, 6 or 9 fractional digits, as protojson (grpcurl)
/// writes it. pbjson-types' own Timestamp writes `+00:00` instead.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Message)]
pub(crate) struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ts = prost_types::Timestamp {
            seconds: self.seconds,
            nanos: self.nanos,
        };
        s.serialize_str(&super::format::format_timestamp(&ts, true))
    }
}

/// Only because pbjson's generated `Deserialize` impls ask for it: the CLI
/// prints messages, it never reads them back from JSON.
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "timestamps are not read from JSON here",
        ))
    }
}

/// `msg` in the proto3 JSON mapping, through its twin `W` in [`wire`].
fn proto3_json<W>(msg: &impl Message) -> Value
where
    W: Message + Default + serde::Serialize,
{
    // Both sides are generated from the same .proto: the bytes always
    // decode. What can fail is an enum value newer than this CLI, which
    // pbjson will not print; say so in place of the message.
    W::decode(msg.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())
        .and_then(|w| serde_json::to_value(&w).map_err(|e| e.to_string()))
        .unwrap_or_else(
            |e| serde_json::json!({ "error": format!("cannot print this message as JSON: {e}") }),
        )
}

pub(crate) fn pipe_json(p: &Pipe) -> Value {
    proto3_json::<wire::Pipe>(p)
}

pub(crate) fn event_json(ev: &Event) -> Value {
    proto3_json::<wire::Event>(ev)
}

/// One `watch --json` line: the WatchPipe message as grpcurl prints it
/// (no `event` in the initial state message).
pub(crate) fn watch_message_json(m: &WatchPipeResponse) -> Value {
    proto3_json::<wire::WatchPipeResponse>(m)
}

/// One `events --json` line: the WatchEvents message as grpcurl prints it
/// (`{"event": {...}}`, or `{"caughtUp": {"cursor": "7"}}` once).
pub(crate) fn watch_events_json(m: &WatchEventsResponse) -> Value {
    proto3_json::<wire::WatchEventsResponse>(m)
}

/// `pgpipe throughput --json`: one object per point.
pub(crate) fn throughput_point_json(p: &crate::proto::ThroughputPoint) -> Value {
    proto3_json::<wire::ThroughputPoint>(p)
}

/// `pgpipe load-summary --json`: one object per incarnation and table.
pub(crate) fn load_summary_json(t: &crate::proto::TableLoadSummary) -> Value {
    proto3_json::<wire::TableLoadSummary>(t)
}

/// `TABLE_STATE_LOAD_PENDING` → `load_pending`.
pub(crate) fn table_state_json(raw: i32) -> String {
    crate::proto::TableState::try_from(raw)
        .map(crate::proto::TableState::label)
        .unwrap_or_else(|_| format!("state {raw}"))
}

/// The event kind: the name of the `Event.payload` oneof field that is set
/// ("pipe_created", "snapshot_progress", ...), or "unknown".
pub(crate) fn event_kind(ev: &Event) -> &'static str {
    crate::domain::projection::event_kind(ev)
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

/// An object of source column -> string (`what` names the value in errors).
fn column_map(v: &Value, path: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let Value::Object(map) = v else {
        return Err(format!(
            "{path}: expected an object of source column -> {what}"
        ));
    };
    map.iter()
        .map(|(col, x)| Ok((col.clone(), string(x, &format!("{path}.{col}"))?)))
        .collect()
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
            "column_types" => t
                .column_types
                .extend(column_map(v, &p, "type (e.g. \"String\")")?),
            _ => t
                .rename_columns
                .extend(column_map(v, &p, "destination column")?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event::Payload;
    use crate::proto::{PipeStatus, SnapshotProgress, TableStats};
    use serde_json::json;

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
                created_at: Some(prost_types::Timestamp {
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
                at: Some(prost_types::Timestamp {
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
        // proto3 JSON: lowerCamelCase, 64-bit integers as strings, enums by
        // name, the payload under its oneof field's name, every field.
        assert_eq!(v["cursor"], "42");
        assert_eq!(v["event"]["seq"], "42");
        assert_eq!(v["event"]["pipeName"], "orders");
        assert_eq!(v["event"]["at"], "2024-02-29T12:34:57.250Z");
        assert_eq!(
            v["event"]["snapshotProgress"],
            json!({"sourceTable": "public.orders", "rowsCopied": "5000",
                   "partitionsDone": 1, "partitionsTotal": 4,
                   "partitionMsTotal": "0"})
        );
        assert_eq!(v["pipe"]["status"], "PIPE_STATUS_SNAPSHOT");
        assert_eq!(v["pipe"]["pausedFrom"], "PIPE_STATUS_UNSPECIFIED");
        assert_eq!(v["pipe"]["createdAt"], "2024-02-29T12:34:56Z");
        assert_eq!(v["pipe"]["updatedAt"], Value::Null);
        assert_eq!(v["pipe"]["lagBytes"], "0");
        assert_eq!(v["pipe"]["tables"][0]["snapshotPartitionsTotal"], 4);
        assert_eq!(v["pipe"]["tables"][0]["snapshotRows"], "5000");
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
        assert_eq!(first["pipe"]["name"], "orders");
        // An enum value newer than this CLI: still JSON, saying why.
        let newer = pipe_json(&Pipe {
            status: 99,
            ..Default::default()
        });
        assert!(newer["error"].as_str().unwrap().contains("99"), "{newer}");
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
