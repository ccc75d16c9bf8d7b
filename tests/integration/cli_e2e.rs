//! The `pgpipe` command-line client (the real binary) against a real
//! server with the data plane: create --wait, list, get, resync --wait,
//! watch --until-running, exit codes (0 running, 1 failed, 2 error) and
//! the bearer token.

use std::process::Stdio;
use std::time::Duration;

use crate::common::data::*;
use crate::common::wait::wait_pipe;
use crate::common::*;
use pgpipe::proto::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const COLS: &str = "id, name, qty";

async fn engine(dir: &tempfile::TempDir, envs: &[(&str, &str)]) -> Proc {
    let p = Proc::spawn_engine(dir.path(), envs);
    wait_serving(&p.url()).await;
    p
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `pgpipe --server ADDR ARGS...` with a clean environment for the
/// client's variables.
fn command(addr: &str, args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"));
    cmd.arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("PGPIPE_TOKEN")
        .env_remove("PGPIPE_SERVER")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

async fn pgpipe(addr: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(180), command(addr, args, envs).output())
        .await
        .unwrap_or_else(|_| panic!("pgpipe {args:?} did not finish within 180 s"))
        .unwrap();
    Run {
        code: out.status.code().expect("killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A 64-bit integer of `--json` output (proto3 JSON writes them as
/// strings); 0 when absent.
fn int(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The kind of a `--json` event: the name of its payload's oneof field
/// (the one field holding an object), e.g. `cdcStarted`.
fn payload_key(event: &Value) -> Option<&str> {
    event
        .as_object()?
        .iter()
        .find(|(_, v)| v.is_object())
        .map(|(k, _)| k.as_str())
}

fn create_args<'a>(name: &'a str, schema: &'a str, table: &'a str) -> Vec<String> {
    [
        "create",
        name,
        "--source",
        &pg_url(),
        "--ch-url",
        &ch_url(),
        "--ch-database",
        schema,
        "--table",
        table,
        "--parallelism",
        "3",
        "--rows-per-partition",
        "2000",
        "--sync-interval-ms",
        "100",
        "--wait",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// create --wait, list, get (text and JSON), resync --wait, watch
/// --until-running across a resync (live and replayed), delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_list_get_resync_and_watch() {
    let schema = unique("cli");
    make_items(&schema, 5_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[]).await;
    let addr = p.addr.as_str();
    let mut c = connect(&p.url()).await;
    let name = pipe_name(&schema);
    let table = format!("{schema}.items");

    let r = pgpipe(addr, &strs(&create_args(&name, &schema, &table)), &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("pipe {name} is running")),
        "{r:?}"
    );
    let created = get(&mut c, &name).await;
    assert_eq!(created.status(), PipeStatus::Running);
    assert_eq!(created.tables[0].snapshot_rows, 5_000);
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;

    // list
    let r = pgpipe(addr, &["list"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let header = r.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{r:?}"
    );
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not listed: {r:?}"));
    assert!(
        row.contains("running") && row.contains(&created.id),
        "{row}"
    );
    let r = pgpipe(addr, &["list", "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let list = json(&r.stdout);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not in {list}"));
    assert_eq!(listed["id"], created.id.as_str());
    assert_eq!(listed["status"], "PIPE_STATUS_RUNNING");

    // get
    let r = pgpipe(addr, &["get", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("{name} (id {})", created.id)),
        "{r:?}"
    );
    assert!(r.stdout.contains("running"), "{r:?}");
    let r = pgpipe(addr, &["get", &name, "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let got = json(&r.stdout);
    assert_eq!(got["id"], created.id.as_str());
    assert_eq!(got["name"], name.as_str());
    assert_eq!(got["status"], "PIPE_STATUS_RUNNING");
    assert_eq!(got["config"]["destination"]["database"], schema.as_str());
    assert_eq!(got["config"]["settings"]["snapshotParallelism"], 3);
    assert_eq!(got["tables"][0]["sourceTable"], table.as_str());
    assert_eq!(got["tables"][0]["snapshotRows"], "5000");
    assert_eq!(got["tables"][0]["snapshotDone"], true);
    let r = pgpipe(addr, &["get", "--id", &created.id, "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json(&r.stdout)["id"], created.id.as_str());

    // resync --wait
    pg_exec(&format!(
            "UPDATE {schema}.items SET qty = -1 WHERE id <= 10; DELETE FROM {schema}.items WHERE id = 20;"
        )).await;
    let r = pgpipe(addr, &["resync", &name, "--wait"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("resync of {name} started")),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!("pipe {name} is running")),
        "{r:?}"
    );
    let first = get(&mut c, &name).await;
    assert_eq!(first.status(), PipeStatus::Running, "{r:?}");
    assert_eq!(first.resync_of, created.id);
    assert!(!first.resyncing);
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;

    // watch --json --until-running, started before a resync.
    let mut child = command(addr, &["watch", &name, "--json", "--until-running"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let state = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no state line within 30 s")
        .unwrap()
        .expect("watch ended without a line");
    let state = json(&state);
    assert_eq!(state["event"], Value::Null);
    assert_eq!(state["pipe"]["id"], first.id.as_str());
    assert_eq!(state["pipe"]["status"], "PIPE_STATUS_RUNNING");
    let second = resync(&mut c, &name).await.unwrap();
    let mut watched = vec![state];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.next_line()).await {
            Err(_) => panic!("watch --until-running did not end: {watched:?}"),
            Ok(Ok(Some(l))) => watched.push(json(&l)),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("watch did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{watched:?}");
    let kinds: Vec<&str> = watched
        .iter()
        .map(|m| payload_key(&m["event"]).unwrap_or("state"))
        .collect();
    for k in [
        "resyncStarted",
        "pipeDeleted",
        "pipeCreated",
        "tablesSwapped",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let last = watched.last().unwrap();
    assert_eq!(payload_key(&last["event"]), Some("cdcStarted"), "{kinds:?}");
    assert_eq!(last["pipe"]["status"], "PIPE_STATUS_RUNNING");
    assert_eq!(last["pipe"]["id"], second.id.as_str());
    assert_eq!(last["pipe"]["resyncOf"], first.id.as_str());
    let cursors: Vec<u64> = watched.iter().map(|m| int(&m["cursor"])).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");

    // The same, replayed after the fact from the live watch's first cursor.
    let after = int(&watched[0]["cursor"]).to_string();
    let r = pgpipe(
        addr,
        &[
            "watch",
            &name,
            "--json",
            "--until-running",
            "--after",
            &after,
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let replayed: Vec<Value> = r.stdout.lines().map(json).collect();
    assert_eq!(
        replayed.last().unwrap()["pipe"]["id"],
        second.id.as_str(),
        "{r:?}"
    );
    assert_eq!(
        payload_key(&replayed.last().unwrap()["event"]),
        Some("cdcStarted")
    );
    let key = |m: &Value| {
        (
            m["cursor"].clone(),
            m["event"].clone(),
            m["pipe"]["id"].clone(),
        )
    };
    assert_eq!(
        replayed.iter().map(key).collect::<Vec<_>>(),
        watched[1..].iter().map(key).collect::<Vec<_>>(),
        "live and replayed watches differ"
    );

    // delete
    let r = pgpipe(addr, &["delete", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("pipe {name} deleted")), "{r:?}");
    wait_released(&mut c, &second.id).await;
    let r = pgpipe(addr, &["get", &name, "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json(&r.stdout)["status"], "PIPE_STATUS_DELETED");
}

/// `resync --wait` whose new incarnation fails for good (a column dropped
/// from the source while the resync's initial load is about to start)
/// exits 1 and names the step; resyncing the FAILED pipe then recovers it
/// (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_resync_that_fails_exits_1() {
    let schema = unique("clf");
    make_items(&schema, 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(
        &dir,
        &[("PGPIPE_FAILPOINTS", "snapshot.started=sleep(3000)")],
    )
    .await;
    let addr = p.addr.clone();
    let mut c = connect(&p.url()).await;
    let name = pipe_name(&schema);
    c.create_pipe(pipe_req(&name, &schema, &[&format!("{schema}.items")]))
        .await
        .unwrap();
    let old = wait_running(&mut c, &name, Duration::from_secs(120)).await;

    let resync = {
        let (addr, name) = (addr.clone(), name.clone());
        tokio::spawn(async move { pgpipe(&addr, &["resync", &name, "--wait"], &[]).await })
    };
    // The new incarnation has planned its load (fail-point sleep): the
    // source table changes under it.
    let what = "SNAPSHOT in the resync's incarnation";
    wait_pipe(&mut c, &name, what, Duration::from_secs(60), |p| {
        p.id != old.id && p.status() == PipeStatus::Snapshot
    })
    .await;
    pg_exec(&format!("ALTER TABLE {schema}.items DROP COLUMN qty")).await;
    let r = resync.await.unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    // The step named is checked by resync_e2e's
    // a_failure_names_the_step_that_failed (it names the wrong one).
    assert!(
        r.stderr
            .starts_with(&format!("error: pipe {name} failed in step ")),
        "{r:?}"
    );
    assert!(r.stderr.contains(r#"column "qty" does not exist"#), "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("resync of {name} started")),
        "{r:?}"
    );
    let failed = get(&mut c, &name).await;
    assert_eq!(failed.status(), PipeStatus::Failed);
    assert!(!failed.resyncing);
    assert_eq!(failed.resync_of, old.id);
    assert!(
        r.stderr.contains(&failed.error),
        "{r:?} vs {}",
        failed.error
    );

    // Resync is how a FAILED pipe recovers; it picks up the new structure.
    let r = pgpipe(&addr, &["resync", &name, "--wait"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let running = get(&mut c, &name).await;
    assert_eq!(running.status(), PipeStatus::Running);
    assert_eq!(running.resync_of, failed.id);
    wait_same(&schema, "items", "id, name", Duration::from_secs(60)).await;
    let r = pgpipe(&addr, &["delete", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    wait_released(&mut c, &running.id).await;
    wait_released(&mut c, &failed.id).await;
}

/// Unknown pipes: exit 2 with `error: NOT_FOUND: ...` on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_pipe_exits_2_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[]).await;
    let name = unique("nope").replace('_', "-");
    for args in [
        vec!["get", name.as_str()],
        vec!["get", name.as_str(), "--json"],
        vec!["resync", name.as_str(), "--wait"],
        vec!["delete", name.as_str()],
        vec!["pause", name.as_str()],
        vec!["watch", name.as_str(), "--json", "--until-running"],
    ] {
        let r = pgpipe(&p.addr, &args, &[]).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: NOT_FOUND"), "{args:?}: {r:?}");
        assert!(r.stderr.contains(&name), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}

/// A server with a token: without it (or with a wrong one) the CLI exits 2
/// with UNAUTHENTICATED; with `--token` or PGPIPE_TOKEN it works; the token
/// never appears in the CLI's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_is_required_and_never_printed() {
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let schema = unique("clt");
    make_items(&schema, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[("PGPIPE_TOKEN", &token)]).await;
    let addr = p.addr.as_str();
    let name = pipe_name(&schema);
    let table = format!("{schema}.items");
    let no_leak = |r: &Run, what: &str| {
        assert!(!r.all().contains(&token), "{what}: token printed: {r:?}");
        assert!(!r.all().contains(&wrong), "{what}: token printed: {r:?}");
    };

    for (args, envs) in [
        (vec!["list"], vec![]),
        (vec!["--token", wrong.as_str(), "list"], vec![]),
        (vec!["list"], vec![("PGPIPE_TOKEN", wrong.as_str())]),
        (vec!["get", "x", "--token", wrong.as_str()], vec![]),
        (
            vec![
                "watch",
                "x",
                "--json",
                "--until-running",
                "--token",
                wrong.as_str(),
            ],
            vec![],
        ),
    ] {
        let r = pgpipe(addr, &args, &envs).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("error: UNAUTHENTICATED"),
            "{args:?}: {r:?}"
        );
        no_leak(&r, &format!("{args:?}"));
    }
    let mut create = create_args(&name, &schema, &table);
    create.push("--token".into());
    create.push(token.clone());
    let r = pgpipe(addr, &strs(&create), &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    no_leak(&r, "create");
    for (args, envs) in [
        (vec!["list", "--token", token.as_str()], vec![]),
        (
            vec!["list", "--json"],
            vec![("PGPIPE_TOKEN", token.as_str())],
        ),
        (
            vec!["--token", token.as_str(), "get", name.as_str()],
            vec![],
        ),
        (
            vec!["get", name.as_str(), "--json"],
            vec![("PGPIPE_TOKEN", token.as_str())],
        ),
        (
            vec!["resync", name.as_str(), "--wait", "--token", token.as_str()],
            vec![],
        ),
        (
            vec!["resync", name.as_str(), "--wait", "--json"],
            vec![("PGPIPE_TOKEN", token.as_str())],
        ),
    ] {
        let r = pgpipe(addr, &args, &envs).await;
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains(&name), "{args:?}: {r:?}");
        no_leak(&r, &format!("{args:?}"));
    }
    // Errors with a valid token do not print it either.
    let r = pgpipe(addr, &["get", "missing-pipe", "--token", &token], &[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.starts_with("error: NOT_FOUND"), "{r:?}");
    no_leak(&r, "not found");
    let r = pgpipe(addr, &["--help"], &[("PGPIPE_TOKEN", &token)]).await;
    assert_eq!(r.code, 0, "{r:?}");
    no_leak(&r, "--help");

    let mut c = authed(&p.url(), &token).await;
    let current = get(&mut c, &name).await;
    assert_eq!(current.status(), PipeStatus::Running);
    assert!(!current.resync_of.is_empty());
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;
    let r = pgpipe(addr, &["delete", &name, "--token", &token], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    no_leak(&r, "delete");
    crate::common::wait::wait_released(&mut c, &current.id).await;
}

/// history (cdc batches, errors, snapshot), throughput and load-summary,
/// as tables and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_throughput_and_load_summary() {
    let schema = unique("clihist");
    make_items(&schema, 3_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[]).await;
    let addr = p.addr.as_str();
    let name = pipe_name(&schema);
    let table = format!("{schema}.items");
    let r = pgpipe(addr, &strs(&create_args(&name, &schema, &table)), &[]).await;
    assert_eq!(r.code, 0, "{r:?}");

    let pg = pg().await;
    for i in 0..3 {
        pg.batch_execute(&format!(
            "INSERT INTO {schema}.items SELECT g, 'new', 1 FROM generate_series({a}, {b}) g;
             UPDATE {schema}.items SET qty = 0 WHERE id = {u};",
            a = 10_000 + i * 10,
            b = 10_000 + i * 10 + 9,
            u = i + 1,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // --json: every batch of the cdc history, 33 changes in all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let r = pgpipe(addr, &["history", &name, "--kind", "cdc", "--json"], &[]).await;
        assert_eq!(r.code, 0, "{r:?}");
        let v = json(&r.stdout);
        let events = v.as_array().unwrap().clone();
        let rows: u64 = events.iter().map(|e| int(&e["cdcProgress"]["rows"])).sum();
        if rows >= 33 {
            assert_eq!(rows, 33, "{v}");
            break events;
        }
        assert!(Instant::now() < deadline, "{rows} of 33 changes: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(events[0]["cdcStarted"].is_object(), "{events:?}");
    let batch = events
        .iter()
        .find(|e| int(&e["cdcProgress"]["rows"]) > 0)
        .unwrap();
    assert_eq!(
        batch["cdcProgress"]["tables"][0]["sourceTable"],
        table.as_str()
    );
    assert!(
        batch["cdcProgress"]["startLsn"]
            .as_str()
            .unwrap()
            .contains('/')
    );

    // The table view: one row per event, the batch's LSN range and counts.
    let r = pgpipe(addr, &["history", &name, "--kind", "cdc"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let header = r.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("TIME") && header.contains("LSN") && header.contains("TABLES"),
        "{r:?}"
    );
    let row = r
        .stdout
        .lines()
        .find(|l| l.contains(&format!("{table} +")))
        .unwrap_or_else(|| panic!("no batch row: {r:?}"));
    assert!(row.contains(".."), "{row}");
    let r = pgpipe(
        addr,
        &["history", &name, "--kind", "cdc", "--limit", "1"],
        &[],
    )
    .await;
    assert_eq!(r.stdout.lines().count(), 2, "header and one row: {r:?}");

    let r = pgpipe(addr, &["history", &name, "--kind", "errors"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), format!("no error history for {name}"));
    let r = pgpipe(addr, &["history", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("pipe_created"), "{r:?}");

    // throughput: one bucket a day holds all the changes.
    let r = pgpipe(
        addr,
        &["throughput", &name, "--bucket", "1d", "--json"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let points = json(&r.stdout);
    let sum = |k: &str| -> u64 { points.as_array().unwrap().iter().map(|p| int(&p[k])).sum() };
    assert_eq!(
        (sum("rowsInserted"), sum("rowsUpdated")),
        (30, 3),
        "{points}"
    );
    let r = pgpipe(addr, &["throughput", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("START"), "{r:?}");

    // load-summary: the initial load of the table.
    let r = pgpipe(addr, &["load-summary", &name, "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let loads = json(&r.stdout);
    assert_eq!(loads[0]["sourceTable"], table.as_str());
    assert_eq!(loads[0]["rows"], "3000");
    assert_eq!(loads[0]["done"], true);
    assert_eq!(loads[0]["partitionsDone"], loads[0]["partitionsTotal"]);
    let r = pgpipe(addr, &["load-summary", &name], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let row = r.stdout.lines().nth(1).unwrap_or_default();
    assert!(row.contains(&table) && row.contains("done"), "{r:?}");

    let r = pgpipe(addr, &["history", "nobody"], &[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("NOT_FOUND"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_add_remove_and_a_table_resync() {
    let schema = unique("clitab");
    make_items(&schema, 3_000).await;
    pg_exec(&format!(
            "CREATE TABLE {schema}.more (id bigint PRIMARY KEY, name text, qty int);
             INSERT INTO {schema}.more SELECT g, 'more ' || g, g % 7 FROM generate_series(1, 5000) g;"
        )).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[]).await;
    let addr = p.addr.as_str();
    let name = pipe_name(&schema);
    let items = format!("{schema}.items");
    let more = format!("{schema}.more");
    let r = pgpipe(addr, &strs(&create_args(&name, &schema, &items)), &[]).await;
    assert_eq!(r.code, 0, "{r:?}");

    // Added with its own destination name; --wait returns once it replicates.
    let spec = format!("{more}:more_v2");
    let r = pgpipe(addr, &["tables", "add", &name, &spec, "--wait"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("{more} → more_v2  replicating")),
        "{r:?}"
    );
    wait_equal(
        &schema,
        "more_v2",
        &schema,
        "more",
        COLS,
        Duration::from_secs(60),
    )
    .await;

    let r = pgpipe(
        addr,
        &["resync", &name, "--table", &more, "--wait", "--json"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r.stdout);
    assert!(
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "TABLE_STATE_REPLICATING"),
        "{v}"
    );
    wait_equal(
        &schema,
        "more_v2",
        &schema,
        "more",
        COLS,
        Duration::from_secs(60),
    )
    .await;

    let r = pgpipe(addr, &["tables", "remove", &name, &more], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains(&more), "{r:?}");
    let r = pgpipe(addr, &["tables", "remove", &name, &more], &[]).await;
    assert_eq!(r.code, 2, "removing it again: {r:?}");
    assert!(r.all().contains("not part of this pipe"), "{r:?}");

    // The same through grpcurl, as users meet the service.
    if let Some(bin) = grpcurl() {
        let body = format!(
            r#"{{"name":"{name}","addTables":[{{"sourceTable":"{more}","destinationTable":"more_v3"}}]}}"#
        );
        let text = grpcurl_ok(
            &bin,
            &[
                "-plaintext",
                "-d",
                &body,
                addr,
                "pgpipe.v1.PipeService/UpdatePipe",
            ],
        );
        assert!(text.contains("TABLE_STATE_LOAD_PENDING"), "{text}");
        let r = pgpipe(addr, &["tables", "add", &name, "--wait", "--json"], &[]).await;
        assert_ne!(r.code, 0, "no table given: {r:?}");
        wait_equal(
            &schema,
            "more_v3",
            &schema,
            "more",
            COLS,
            Duration::from_secs(60),
        )
        .await;
    }
}

/// `resync --exclude/--rename` changes a table's column options (the rest
/// kept), `--reset-columns` drops them; a table the pipe lacks exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_changes_and_resets_column_options() {
    let schema = unique("clicol");
    make_items(&schema, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let p = engine(&dir, &[]).await;
    let addr = p.addr.as_str();
    let name = pipe_name(&schema);
    let items = format!("{schema}.items");
    let mut args = create_args(&name, &schema, &items);
    args.extend(["--rename".into(), format!("{items}=name:title")]);
    let r = pgpipe(addr, &strs(&args), &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let dest_cols = || async {
        ch(&schema)
            .query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() \
                 AND table = 'items' AND name NOT LIKE '\\_pgpipe\\_%' ORDER BY position",
            )
            .fetch_all::<String>()
            .await
            .unwrap()
    };
    assert_eq!(dest_cols().await, ["id", "title", "qty"]);

    let exclude = format!("{items}=qty");
    let r = pgpipe(
        addr,
        &["resync", &name, "--exclude", &exclude, "--wait"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dest_cols().await, ["id", "title"], "the rename is kept");
    wait_same(&schema, "items", "id", Duration::from_secs(60)).await;

    let r = pgpipe(
        addr,
        &["resync", &name, "--reset-columns", &items, "--wait"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(dest_cols().await, ["id", "name", "qty"]);
    wait_same(&schema, "items", COLS, Duration::from_secs(60)).await;

    let r = pgpipe(
        addr,
        &["resync", &name, "--exclude", "public.nope=qty"],
        &[],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.all().contains("which the pipe does not have"), "{r:?}");
}
