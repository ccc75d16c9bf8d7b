//! Source connection strings CreatePipe must refuse up front, without a
//! private environment: a black-holed host, and the machine's own
//! PostgreSQL on 127.0.0.1:5432 (wal_level=replica, trust auth). Wrong
//! passwords, roles and REPLICATION are covered in tests/pipe_faults.rs.

use std::time::{Duration, Instant};

use crate::common::data::*;
use crate::common::*;
use pgpipe::proto::*;
use tonic::Code;

async fn refused(c: &mut Client, req: CreatePipeRequest) -> String {
    let e = c.create_pipe(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let all = list_all(c).await;
    assert!(all.is_empty(), "recorded: {:?}", all);
    e.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_is_refused_in_bounded_time_without_the_password() {
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req("unreach", "unreach", &["public.t"]);
    // Nothing answers on 10.255.255.1 (unroutable here, or black-holed
    // elsewhere: the connect timeout bounds that case).
    req.source.as_mut().unwrap().connection_string =
        "postgres://app:Unreach-Pw-7@10.255.255.1:5432/app".into();
    let t0 = Instant::now();
    let msg = refused(&mut c, req).await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        msg.contains("cannot reach PostgreSQL at 10.255.255.1:5432/app"),
        "{msg}"
    );
    assert!(
        !msg.contains("Unreach-Pw-7"),
        "the password is echoed: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machines_own_postgres_without_logical_wal_is_refused_saying_so() {
    let Ok((sys, conn)) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3",
        tokio_postgres::NoTls,
    )
    .await
    else {
        eprintln!("skipped: no PostgreSQL on 127.0.0.1:5432");
        return;
    };
    tokio::spawn(conn);
    let level: String = sys.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    if level == "logical" {
        eprintln!("skipped: the PostgreSQL on 5432 has wal_level=logical");
        return;
    }
    let (_srv, mut c) = engine().await;
    let mut req = pipe_req("nolog", "nolog", &["pg_catalog.pg_class"]);
    // Trust auth: the password is sent to nobody, and must show nowhere.
    req.source.as_mut().unwrap().connection_string =
        "postgres://postgres:Sys-Pw-9@127.0.0.1:5432/postgres".into();
    let msg = refused(&mut c, req).await;
    assert!(msg.contains(&format!("wal_level = \"{level}\"")), "{msg}");
    assert!(
        msg.contains("logical replication needs wal_level = logical"),
        "{msg}"
    );
    assert!(!msg.contains("Sys-Pw-9"), "{msg}");
}
