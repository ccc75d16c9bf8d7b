//! TLS on the three links: gRPC clients -> pgpipe, pgpipe -> Postgres
//! (`sslmode`, `sslrootcert`), pgpipe -> ClickHouse (https, `ca_cert`). Each
//! test makes its own CA and server certificates (rcgen); peers with TLS are
//! private dev environments (Postgres `ssl=on`, chfront over HTTPS).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::InProcess;
use crate::common::data::{self, wait_running};
use crate::common::peers::{PeerTls, PrivateEnv};
use pgpipe::proto::pipe_service_client::PipeServiceClient;
use pgpipe::proto::*;
use pgpipe::server::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig};

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and
/// a second CA that signed nothing here (an untrusted one).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgpipe-tls-")
            .tempdir()
            .unwrap();
        let ca = make_ca("pgpipe test CA");
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca.1)
            .unwrap();
        let other = make_ca("some other CA");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.pem", ca.0);
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("other-ca.pem", other.0);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn server_pair(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server.key"))
    }

    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
        }
    }

    /// Clients trusting this CA, verifying the name `localhost`.
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.ca()).unwrap()))
            .domain_name("localhost")
    }
}

/// A self-signed CA: its PEM and an issuer to sign with.
fn make_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn create_err(c: &mut common::Client, req: CreatePipeRequest) -> tonic::Status {
    match c.create_pipe(req).await {
        Ok(r) => panic!("CreatePipe succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

async fn make_table(env: &PrivateEnv, table: &str, rows: i32) {
    env.pg()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL); \
             INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipe_replicates_with_tls_on_all_three_links() {
    let pki = Pki::new();
    let env = PrivateEnv::up_with(PeerTls {
        pg: Some(pki.server_pair()),
        ch: Some(pki.server_pair()),
        ch_ca: Some(pki.ca()),
    })
    .await;
    make_table(&env, "tls_items", 2_500).await;
    let server = InProcess::start_tls(true, pki.server_files(), pki.client_tls()).await;
    let mut c = server.client().await;

    let mut req = env.pipe_req("tls-all", "tls_all", &["public.tls_items"]);
    req.source.as_mut().unwrap().connection_string = format!(
        "postgres://postgres@localhost:{}/pgpipe_dev?sslmode=verify-full&sslrootcert={}",
        env.pg_port,
        path_str(&pki.ca())
    );
    let dst = req.destination.as_mut().unwrap();
    assert!(env.ch_url().starts_with("https://"), "{}", env.ch_url());
    dst.url = env.ch_url();
    dst.ca_cert = path_str(&pki.ca()).to_owned();
    c.create_pipe(req).await.unwrap();
    wait_running(&mut c, "tls-all", Duration::from_secs(40)).await;

    // CDC over the same links.
    let pg = env.pg().await;
    pg.batch_execute(
        "INSERT INTO tls_items SELECT g, 'late ' || g FROM generate_series(2501, 2600) g; \
         UPDATE tls_items SET name = 'changed' WHERE id % 7 = 0; \
         DELETE FROM tls_items WHERE id % 11 = 0",
    )
    .await
    .unwrap();
    env.wait_equal(
        "tls_all",
        "tls_items",
        "public",
        "tls_items",
        "id, name",
        Duration::from_secs(30),
    )
    .await;

    // Every session pgpipe holds on the source is encrypted.
    let row = pg
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'pgpipe'",
            &[],
        )
        .await
        .unwrap();
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        tls >= 1 && plain == 0,
        "pgpipe sessions: {tls} with TLS, {plain} without"
    );
}

/// The replication connection (CDC) authenticates like the query ones:
/// SCRAM-SHA-256 over verify-full TLS with a URL, md5 without TLS with a
/// key=value string, the password given apart from the string.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdc_streams_with_scram_over_tls_and_with_md5() {
    let pki = Pki::new();
    let env = PrivateEnv::up_with(PeerTls {
        pg: Some(pki.server_pair()),
        ..Default::default()
    })
    .await;
    let pg = env.pg().await;
    pg.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN SUPERUSER REPLICATION PASSWORD 'scram-secret-1';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN SUPERUSER REPLICATION PASSWORD 'md5-secret-2';",
    )
    .await
    .unwrap();
    // These two users must give a password (the rest of the file trusts).
    env.hba_first(
        "hostssl all scram_user 127.0.0.1/32 scram-sha-256\n\
         hostssl all scram_user ::1/128 scram-sha-256\n\
         host all md5_user 127.0.0.1/32 md5\n\
         host all md5_user ::1/128 md5\n",
    )
    .await;
    make_table(&env, "auth_a", 500).await;
    make_table(&env, "auth_b", 500).await;

    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let mut scram = env.pipe_req("via-scram", "via_scram", &["public.auth_a"]);
    scram.source = Some(SourceConfig {
        connection_string: format!(
            "postgres://scram_user@localhost:{}/pgpipe_dev?sslmode=verify-full&sslrootcert={}",
            env.pg_port,
            path_str(&pki.ca())
        ),
        password: "scram-secret-1".into(),
    });
    c.create_pipe(scram).await.unwrap();
    let mut md5 = env.pipe_req("via-md5", "via_md5", &["public.auth_b"]);
    md5.source = Some(SourceConfig {
        connection_string: format!(
            "host=127.0.0.1 port={} user=md5_user dbname=pgpipe_dev sslmode=disable",
            env.pg_port
        ),
        password: "md5-secret-2".into(),
    });
    c.create_pipe(md5).await.unwrap();
    wait_running(&mut c, "via-scram", Duration::from_secs(60)).await;
    wait_running(&mut c, "via-md5", Duration::from_secs(60)).await;

    pg.batch_execute(
        "INSERT INTO auth_a SELECT g, 'late' FROM generate_series(501, 700) g;
         UPDATE auth_a SET name = 'changed' WHERE id % 5 = 0;
         INSERT INTO auth_b SELECT g, 'late' FROM generate_series(501, 700) g;
         DELETE FROM auth_b WHERE id % 3 = 0;",
    )
    .await
    .unwrap();
    for (db, table) in [("via_scram", "auth_a"), ("via_md5", "auth_b")] {
        env.wait_equal(
            db,
            table,
            "public",
            table,
            "id, name",
            Duration::from_secs(30),
        )
        .await;
    }
    // Both walsenders, one encrypted, as their own users.
    let rows = pg
        .query(
            "SELECT r.usename::text, s.ssl FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid) ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("md5_user".to_owned(), false),
            ("scram_user".to_owned(), true)
        ]
    );
}

#[tokio::test]
async fn plaintext_client_cannot_talk_to_a_tls_server() {
    let pki = Pki::new();
    let server = InProcess::start_tls(false, pki.server_files(), pki.client_tls()).await;
    // The TLS client works...
    let mut c = server.client().await;
    c.list_pipes(ListPipesRequest::default()).await.unwrap();
    // ...a plaintext one on the same port does not.
    let plain = format!("http://{}", server.addr);
    let result = async {
        let mut c = PipeServiceClient::connect(plain.clone()).await?;
        c.list_pipes(ListPipesRequest::default()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .expect("a plaintext call to a TLS server must fail, not hang");
    assert!(result.is_err(), "plaintext call to {plain} succeeded");
    assert_eq!(common::health_status(&plain).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_rejects_a_certificate_for_another_host() {
    let pki = Pki::new();
    let env = PrivateEnv::up_with(PeerTls {
        pg: Some(pki.server_pair()),
        ..Default::default()
    })
    .await;
    make_table(&env, "tls_items", 10).await;
    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let mut req = env.pipe_req("tls-name", "tls_name", &["public.tls_items"]);
    // The certificate is for localhost; hostaddr reaches the same server
    // under a name the certificate does not have.
    req.source.as_mut().unwrap().connection_string = format!(
        "host=db.wrong-name.test hostaddr=127.0.0.1 port={} user=postgres dbname=pgpipe_dev \
         sslmode=verify-full sslrootcert={}",
        env.pg_port,
        path_str(&pki.ca())
    );
    let status = create_err(&mut c, req.clone()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("TLS") && m.contains("db.wrong-name.test") && m.contains("not valid for name"),
        "{m}"
    );

    // The same certificate passes verify-ca (chain only), so the name was
    // the only problem.
    let conn = &mut req.source.as_mut().unwrap().connection_string;
    *conn = conn.replace("verify-full", "verify-ca");
    c.create_pipe(req).await.unwrap();
}

#[tokio::test]
async fn sslmode_require_fails_against_a_server_without_tls() {
    // The shared dev Postgres runs without ssl.
    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let mut req = data::pipe_req("tls-req", "tls_req", &["public.nothing_needed"]);
    let conn = &mut req.source.as_mut().unwrap().connection_string;
    conn.push_str(if conn.contains('?') {
        "&sslmode=require"
    } else {
        "?sslmode=require"
    });
    let status = create_err(&mut c, req).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("does not accept TLS") && m.contains("sslmode=require"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clickhouse_with_an_untrusted_ca_fails() {
    let pki = Pki::new();
    let env = PrivateEnv::up_with(PeerTls {
        ch: Some(pki.server_pair()),
        ch_ca: Some(pki.ca()),
        ..Default::default()
    })
    .await;
    make_table(&env, "tls_items", 10).await;
    let server = InProcess::start_engine().await;
    let mut c = server.client().await;
    let mut req = env.pipe_req("tls-ch", "tls_ch", &["public.tls_items"]);
    let dst = req.destination.as_mut().unwrap();
    dst.url = env.ch_url();
    dst.ca_cert = path_str(&pki.path("other-ca.pem")).to_owned();
    let status = create_err(&mut c, req.clone()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("TLS with ClickHouse") && m.contains("UnknownIssuer"),
        "{m}"
    );

    // With the CA that signed the certificate the same destination works.
    req.destination.as_mut().unwrap().ca_cert = path_str(&pki.ca()).to_owned();
    c.create_pipe(req).await.unwrap();
}

#[tokio::test]
async fn cli_talks_to_a_tls_server_with_its_ca() {
    let pki = Pki::new();
    let server = InProcess::start_tls(false, pki.server_files(), pki.client_tls()).await;
    // tokio's Command: the server runs on this test's runtime.
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
            .args(args)
            .env_remove("PGPIPE_SERVER")
            .env_remove("PGPIPE_TOKEN")
            .env_remove("PGPIPE_CA_CERT")
            .output()
    };
    let url = server.url();
    let ok = run(&["--server", &url, "--ca-cert", path_str(&pki.ca()), "list"])
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let untrusted = run(&[
        "--server",
        &url,
        "--ca-cert",
        path_str(&pki.path("other-ca.pem")),
        "list",
    ])
    .await
    .unwrap();
    assert_eq!(untrusted.status.code(), Some(2));
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_usable_key() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpipe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--control-plane-only"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--tls-cert")
        .arg(pki.path("server.pem"))
        .arg("--tls-key")
        .arg(pki.path("missing.key"))
        .env("PGPIPE_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read TLS key file") && err.contains("missing.key"),
        "{err}"
    );
}

#[tokio::test]
async fn grpcurl_reaches_health_and_reflection_over_tls() {
    let Some(bin) = common::grpcurl_or_skip() else {
        return;
    };
    let pki = Pki::new();
    let server = InProcess::start_tls(false, pki.server_files(), pki.client_tls()).await;
    let addr = format!("localhost:{}", server.addr.port());
    let ca = pki.ca();
    let grpcurl = |args: Vec<&str>| {
        // tokio's Command: the server runs on this test's runtime.
        tokio::process::Command::new(&bin).args(args).output()
    };
    let list = grpcurl(vec!["-cacert", path_str(&ca), &addr, "list"])
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && out.contains("pgpipe.v1.PipeService"),
        "{out}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let health = grpcurl(vec![
        "-cacert",
        path_str(&ca),
        "-d",
        r#"{"service":"pgpipe.v1.PipeService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&health.stdout);
    assert!(
        health.status.success() && out.contains("SERVING"),
        "{out}{}",
        String::from_utf8_lossy(&health.stderr)
    );
}
