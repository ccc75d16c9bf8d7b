//! grpcurl against a running server: how users meet pgpipe.
//! CI installs grpcurl (`cargo install grpcurl-rs`, see dev/env); locally
//! the test is skipped with a message when it is missing.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_the_service() {
    let Some(bin) = grpcurl_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(dir.path(), &[]);
    wait_serving(&p.url()).await;
    let addr = p.addr.clone();

    let list = grpcurl_ok(&bin, &["-plaintext", &addr, "list"]);
    assert!(list.contains("pgpipe.v1.PipeService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let describe = grpcurl_ok(
        &bin,
        &["-plaintext", &addr, "describe", "pgpipe.v1.PipeService"],
    );
    assert!(describe.contains("WatchPipe"), "{describe}");
    assert!(describe.contains("stream"), "{describe}");

    let create = serde_json::json!({
        "name": "curl",
        "source": {"connectionString": "postgres://app:pw@127.0.0.1:5432/app"},
        "destination": {"url": "http://127.0.0.1:8123", "database": "analytics"},
        "tables": [{"sourceTable": "public.orders"}]
    })
    .to_string();
    let created = grpcurl_ok(
        &bin,
        &[
            "-plaintext",
            "-d",
            &create,
            &addr,
            "pgpipe.v1.PipeService/CreatePipe",
        ],
    );
    assert!(created.contains("PIPE_STATUS_SETUP"), "{created}");

    let got = grpcurl_ok(
        &bin,
        &[
            "-plaintext",
            "-d",
            r#"{"name":"curl"}"#,
            &addr,
            "pgpipe.v1.PipeService/GetPipe",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["pipe"]["name"], "curl");
    assert!(!got.contains("pw@"), "{got}");

    // WatchPipe from a cursor: the stream ends after the pipe is deleted,
    // so grpcurl returns with every message printed.
    let mut c = connect(&p.url()).await;
    c.pause_pipe(pgpipe::proto::PausePipeRequest {
        name: "curl".into(),
    })
    .await
    .unwrap();
    c.delete_pipe(pgpipe::proto::DeletePipeRequest {
        name: "curl".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let watched = grpcurl_ok(
        &bin,
        &[
            "-plaintext",
            "-d",
            r#"{"name":"curl","afterCursor":"1"}"#,
            &addr,
            "pgpipe.v1.PipeService/WatchPipe",
        ],
    );
    assert!(watched.contains("pipePaused"), "{watched}");
    assert!(watched.contains("pipeDeleted"), "{watched}");
    assert!(watched.contains("PIPE_STATUS_DELETED"), "{watched}");
}

/// `pgpipe get --json` prints the pipe exactly as `grpcurl -emit-defaults`
/// does (proto3 JSON of every field), value for value. The control plane
/// alone, so nothing changes the pipe between the two reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_is_what_grpcurl_prints() {
    let Some(bin) = grpcurl_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(dir.path(), &[("PGPIPE_CONTROL_PLANE_ONLY", "true")]);
    wait_serving(&p.url()).await;
    let create = serde_json::json!({
        "name": "same",
        "source": {"connectionString": "postgres://app@127.0.0.1:5432/app"},
        "destination": {"url": "http://127.0.0.1:8123", "database": "analytics"},
        "tables": [{"sourceTable": "public.orders", "orderBy": ["id"]}],
        "settings": {"snapshotRowsPerPartition": "1000"},
        "labels": {"env": "dev"}
    })
    .to_string();
    let body = ["-plaintext", "-d", &create, &p.addr];
    grpcurl_ok(
        &bin,
        &[&body[..], &["pgpipe.v1.PipeService/CreatePipe"]].concat(),
    );
    let got = grpcurl_ok(
        &bin,
        &[
            "-plaintext",
            "-emit-defaults",
            "-d",
            r#"{"name":"same"}"#,
            &p.addr,
            "pgpipe.v1.PipeService/GetPipe",
        ],
    );
    let grpcurl: serde_json::Value = serde_json::from_str(&got).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .args(["--server", &p.url(), "get", "same", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, grpcurl["pipe"]);
}
