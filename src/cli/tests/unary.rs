//! One-call commands against the mock: output, errors and exit codes.

use super::*;

#[tokio::test]
async fn unary_commands_and_errors() {
    let mock = Mock::default();
    let opts = start(mock.clone()).await;

    let (mut out, buf) = capture();
    let code = exec(&opts, &["get", "orders", "--json"], &mut out)
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let v: Value = serde_json::from_str(&buf.lines().join("\n")).unwrap();
    assert_eq!(v["status"], "PIPE_STATUS_RUNNING");

    let err = exec(&opts, &["get", "missing"], &mut out)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "NOT_FOUND: pipe \"missing\" not found");

    let (mut out, buf) = capture();
    exec(&opts, &["list"], &mut out).await.unwrap();
    exec(&opts, &["pause", "orders"], &mut out).await.unwrap();
    exec(&opts, &["delete", "orders", "--drop-tables"], &mut out)
        .await
        .unwrap();
    let lines = buf.lines();
    assert!(lines[0].starts_with("NAME"), "{lines:?}");
    assert!(lines[1].starts_with("orders  running"), "{lines:?}");
    assert_eq!(lines[2], "pipe orders paused: status paused");
    assert_eq!(
        lines[3],
        "note: the replication slot retains WAL while paused"
    );
    assert_eq!(
        lines[4],
        "pipe orders deleted (id p1); destination tables dropped"
    );

    let auth = mock.state().auth.clone();
    assert_eq!(auth.len(), 5);
    assert!(auth.iter().all(|a| a.as_deref() == Some("Bearer s3cret")));

    // Nothing listening: a connection error, exit 2 material.
    let down = ClientOpts {
        server: "http://127.0.0.1:1".into(),
        token: None,
        ca_cert: None,
    };
    let err = exec(&down, &["list"], &mut out).await.unwrap_err();
    assert!(
        matches!(err, CliError::Connect { .. }),
        "{err}: connection refused expected"
    );
}

#[test]
fn schema_events_read_as_one_line_each() {
    use crate::proto::event::Payload;
    use crate::proto::{Event, SchemaChangeKind, SchemaChanged, TableFailed};
    let ev = |p| Event {
        payload: Some(p),
        ..Default::default()
    };
    let text = super::format::event_text(&ev(Payload::SchemaChanged(SchemaChanged {
        source_table: "public.t".into(),
        kind: SchemaChangeKind::RenameColumn as i32,
        column: "a".into(),
        new_column: "b".into(),
        lsn: "0/10".into(),
        clickhouse: "ALTER TABLE ...".into(),
        ..Default::default()
    })));
    assert_eq!(
        text,
        "public.t: column a renamed to b at 0/10; clickhouse: ALTER TABLE ..."
    );
    let text = super::format::event_text(&ev(Payload::TableFailed(TableFailed {
        source_table: "public.t".into(),
        reason: "resync this table".into(),
        lsn: "0/11".into(),
    })));
    assert_eq!(text, "table public.t FAILED at 0/11: resync this table");
}
