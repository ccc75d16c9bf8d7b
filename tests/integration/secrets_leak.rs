//! Secrets never leak: a whole pipe life (create, CDC, resync, delete) with
//! a distinctive source password, destination password and bearer token,
//! then the raw bytes of the event log's files, the service's debug logs,
//! every error message and both watch streams are searched for them.
//!
//! The passwords live in `secrets.json` beside the log (0600, see
//! src/store/secrets.rs): that file is the one place they may be, so it is
//! the one file not searched while the pipe lives (and it must no longer
//! hold them once the pipe is deleted).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::data::*;
use crate::common::wait::wait_pipe;
use crate::common::{
    AuthedClient, Bearer, create_pipe, delete_pipe, resync, watch_all, watch_pipe,
};
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::*;
use tonic::Code;
use tonic::transport::Channel;

struct Service {
    child: Child,
    addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgpipe serve` with everything logged at debug into `log`.
fn spawn(data: &Path, token: &str, log: &Path) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("PGPIPE_TOKEN", token)
        .env("PGPIPE_LOG", "debug")
        .env("RUST_LOG", "debug")
        .env_remove("PGPIPE_CONTROL_PLANE_ONLY")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let addr = common::listen_addr(&mut child);
    Service { child, addr }
}

/// Every file under `dir` but the ones named in `skip`, as raw bytes.
fn files(dir: &Path, skip: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if skip.contains(&e.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        if p.is_dir() {
            out.extend(files(&p, skip));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn assert_clean(what: &str, hay: &[u8], secrets: &[&str]) {
    for s in secrets {
        assert!(!contains(hay, s), "{what} contains the secret {s:?}");
    }
}

async fn wait_running(c: &mut AuthedClient, name: &str, after_id: &str) {
    let what = format!("RUNNING in an incarnation other than {after_id:?}");
    wait_pipe(c, name, &what, Duration::from_secs(120), |p| {
        assert_ne!(p.status(), PipeStatus::Failed, "{}", p.error);
        p.id != after_id && p.status() == PipeStatus::Running
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passwords_and_token_appear_in_no_log_file_message_or_stream() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let pg_pw = format!("PgPw{}", &tag[..16]);
    let ch_pw = format!("ChPw{}", &tag[..16]);
    let token = format!("Tok{}", &tag[16..]);
    let wrong_token = format!("Wrong{}", &tag[..12]);
    let secrets = [pg_pw.as_str(), ch_pw.as_str(), token.as_str()];

    let schema = unique("sec");
    let role = format!("{schema}_role");
    let pg = pg().await;
    pg.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD '{pg_pw}';
         CREATE SCHEMA {schema};
         CREATE TABLE {schema}.items (id bigint PRIMARY KEY, name text);
         INSERT INTO {schema}.items SELECT g, 'n' || g FROM generate_series(1, 500) g;"
    ))
    .await
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("pgpipe.log");
    let mut svc = spawn(&data, &token, &log);
    common::wait_serving(&format!("http://{}", svc.addr)).await;
    let channel = Channel::from_shared(format!("http://{}", svc.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = PipeServiceClient::with_interceptor(channel.clone(), Bearer(token.clone()));
    let mut errors: Vec<String> = Vec::new();

    // Wrong and missing tokens: UNAUTHENTICATED, neither token echoed.
    let mut bad = PipeServiceClient::with_interceptor(channel.clone(), Bearer(wrong_token.clone()));
    let e = bad
        .list_pipes(ListPipesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    errors.push(format!("{e:?}"));
    let e = PipeServiceClient::new(channel.clone())
        .list_pipes(ListPipesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    errors.push(format!("{e:?}"));

    // Both watch streams recorded in full, from the start.
    let events = watch_all(&mut c).await;
    let events_seen = record(events);

    let name = pipe_name(&schema);
    let url = url::Url::parse(&pg_url()).unwrap();
    let conn = format!(
        "postgres://{role}:{pg_pw}@{}:{}{}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        url.path()
    );
    let mut req = pipe_req(&name, &schema, &[&format!("{schema}.items")]);
    req.source.as_mut().unwrap().connection_string = conn.clone();
    req.destination.as_mut().unwrap().password = ch_pw.clone();
    let created = create_pipe(&mut c, req.clone()).await;
    let watch = watch_pipe(&mut c, &name, None).await;
    let pipe_seen = record(watch);
    wait_running(&mut c, &name, "").await;
    // Positive control: the search would find them where they are kept.
    let kept = std::fs::read(data.join("secrets.json")).unwrap();
    assert!(contains(&kept, &pg_pw) && contains(&kept, &ch_pw));

    // Errors that involve the secrets' fields.
    let e = c.create_pipe(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    errors.push(format!("{e:?}"));
    let mut twice = req.clone();
    twice.name = format!("{name}-2");
    twice.source.as_mut().unwrap().password = pg_pw.clone();
    let e = c.create_pipe(twice).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    errors.push(format!("{e:?}"));
    let mut bad_port = req.clone();
    bad_port.name = format!("{name}-3");
    bad_port.source.as_mut().unwrap().connection_string =
        format!("postgres://{role}:{pg_pw}@127.0.0.1:1/x");
    let e = c.create_pipe(bad_port).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    errors.push(format!("{e:?}"));

    // CDC, resync, more CDC, delete.
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.items SELECT g, 'cdc' FROM generate_series(501, 600) g;
         UPDATE {schema}.items SET name = 'u' WHERE id % 9 = 0;
         DELETE FROM {schema}.items WHERE id % 13 = 0;"
    ))
    .await
    .unwrap();
    wait_same(&schema, "items", "id, name", Duration::from_secs(60)).await;
    resync(&mut c, &name).await.unwrap();
    wait_running(&mut c, &name, &created.id).await;
    pg.batch_execute(&format!(
        "INSERT INTO {schema}.items SELECT g, 'after' FROM generate_series(601, 650) g;"
    ))
    .await
    .unwrap();
    wait_same(&schema, "items", "id, name", Duration::from_secs(60)).await;
    delete_pipe(&mut c, &name).await;
    let pipe_stream = pipe_seen.await.unwrap();
    assert!(pipe_stream.contains("PipeDeleted"), "{pipe_stream}");
    // Give the engine a moment to release the source (and the secrets).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Graceful stop: everything flushed.
    let pid = svc.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(svc.child.wait().unwrap().success());
    let events_stream = events_seen.await.unwrap();
    assert!(events_stream.contains("PipeCreated"), "{events_stream}");

    let log_text = std::fs::read(&log).unwrap();
    assert!(
        contains(&log_text, "DEBUG"),
        "the service logged nothing at debug"
    );
    assert_clean("the service's log", &log_text, &secrets);
    assert_clean("the wrong token's log", &log_text, &[&wrong_token]);
    // The refusals were logged (without the token).
    assert!(
        contains(&log_text, "rejected unauthenticated request")
            && contains(&log_text, "wrong token")
    );
    for e in &errors {
        assert_clean(&format!("error {e}"), e.as_bytes(), &secrets);
        assert_clean(&format!("error {e}"), e.as_bytes(), &[&wrong_token]);
    }
    assert_clean("WatchEvents", events_stream.as_bytes(), &secrets);
    assert_clean("WatchPipe", pipe_stream.as_bytes(), &secrets);
    let log_files = files(&data, &["secrets.json"]);
    assert!(
        log_files.iter().any(|(p, _)| p.ends_with("db")),
        "{log_files:?}"
    );
    for (p, bytes) in &log_files {
        assert_clean(&p.display().to_string(), bytes, &secrets);
    }
    // The pipe is gone, and so are its passwords.
    if let Ok(s) = std::fs::read(data.join("secrets.json")) {
        assert_clean("secrets.json after delete", &s, &secrets);
    }
    let _ = pg
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
}

/// Records every message of `stream` (its Debug form, a line each) until it
/// ends or stays quiet for 30 s.
fn record<T: std::fmt::Debug + Send + 'static>(
    mut stream: tonic::Streaming<T>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(30), stream.message()).await
        {
            all.push_str(&format!("{m:?}\n"));
        }
        all
    })
}
