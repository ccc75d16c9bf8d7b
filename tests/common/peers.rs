//! A private pair of peers for fault tests: a second dev environment
//! (`dev/env up` with its own state directory and ports: a Postgres cluster
//! with wal_level=logical and a chDB ClickHouse front) that a test may stop,
//! kill and restart without disturbing the shared one. Dropping the guard
//! runs `dev/env reset` (stops both, deletes the state).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pgpipe::proto::*;
use tokio_postgres::NoTls;

use super::Client;
/// The shared wait on a pipe's state (it used to live here).
#[allow(unused_imports)]
pub use super::wait::wait_pipe;

const PG_DB: &str = "pgpipe_dev";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port nothing listens on right now, for a server a test starts later.
///
/// Taken below the kernel's ephemeral range (32768-60999 by default): a port
/// from there (what binding port 0 returns) can be handed to any outgoing
/// connection's local end, or to another test's `:0` listener, between this
/// check and the server's bind; CI saw chfront fail with EADDRINUSE that way.
/// Ports handed out once are not handed out again in this process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for i in 0..SPAN {
        let port = (LOW + (seed.wrapping_add(i.wrapping_mul(7_919))) % SPAN) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Whether a failed `dev/env up` failed because a port was taken.
fn port_taken(message: &str) -> bool {
    message.contains("Address already in use") || message.contains("could not bind")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn check(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TLS for a private environment's peers: PEM files of a server
/// certificate and key for Postgres (`ssl=on`) and/or the ClickHouse front
/// (HTTPS), and the CA file that signed the front's certificate (so the
/// test's own ClickHouse queries trust it).
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    pub pg: Option<(PathBuf, PathBuf)>,
    pub ch: Option<(PathBuf, PathBuf)>,
    pub ch_ca: Option<PathBuf>,
}

/// The private environment; `dev/env reset` on drop.
pub struct PrivateEnv {
    dir: tempfile::TempDir,
    pub pg_port: u16,
    pub ch_port: u16,
    tls: PeerTls,
}

impl PrivateEnv {
    /// Starts a fresh private environment (about 10 s: initdb and chDB).
    pub async fn up() -> Self {
        Self::up_with(PeerTls::default()).await
    }

    /// Like [`PrivateEnv::up`], with TLS on the peers `tls` names.
    pub async fn up_with(tls: PeerTls) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgpipe-peers-")
            .tempdir()
            .unwrap();
        let mut env = Self {
            dir,
            pg_port: free_port(),
            ch_port: free_port(),
            tls,
        };
        // Another process may still take a port between the check and the
        // bind; then start again on other ports.
        for attempt in 1.. {
            let mut cmd = tokio::process::Command::from(env.command(&["up"]));
            let out = cmd.output().await;
            let failed = match &out {
                Ok(o) if o.status.success() => return env,
                Ok(o) => format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            if attempt >= 3 || !port_taken(&failed) {
                check("dev/env [\"up\"]", out);
            }
            eprintln!(
                "dev/env up on ports {}/{} found a port taken; retrying on others",
                env.pg_port, env.ch_port
            );
            let _ = env.command(&["reset"]).output();
            env.pg_port = free_port();
            env.ch_port = free_port();
        }
        unreachable!()
    }

    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(repo().join("dev/env"));
        cmd.args(args)
            .env("PGPIPE_DEV_DIR", self.state())
            .env("PGPIPE_DEV_PG_PORT", self.pg_port.to_string())
            .env("PGPIPE_DEV_CH_PORT", self.ch_port.to_string())
            .stdin(std::process::Stdio::null());
        if let Some((cert, key)) = &self.tls.pg {
            cmd.env("PGPIPE_DEV_PG_SSL_CERT", cert)
                .env("PGPIPE_DEV_PG_SSL_KEY", key);
        }
        if let Some((cert, key)) = &self.tls.ch {
            cmd.env("PGPIPE_DEV_CH_TLS_CERT", cert)
                .env("PGPIPE_DEV_CH_TLS_KEY", key);
        }
        // Reuse the shared environment's Python (chDB installed) if it has a venv.
        let venv = repo().join(".dev/venv/bin/python");
        if std::env::var_os("PYTHON").is_none() && venv.exists() {
            cmd.env("PYTHON", venv);
        }
        cmd
    }

    /// `dev/env ARGS` on this environment (`up` starts whatever is down).
    pub async fn dev_env(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::from(self.command(args));
        check(&format!("dev/env {args:?}"), cmd.output().await)
    }

    pub fn pg_url(&self) -> String {
        self.pg_url_for("postgres", PG_DB)
    }

    pub fn pg_url_for(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.pg_port)
    }

    /// `https://localhost:PORT` when the front serves HTTPS (the name its
    /// certificate is for), else `http://127.0.0.1:PORT`.
    pub fn ch_url(&self) -> String {
        if self.tls.ch.is_some() {
            format!("https://localhost:{}", self.ch_port)
        } else {
            format!("http://127.0.0.1:{}", self.ch_port)
        }
    }

    pub fn pg_data(&self) -> PathBuf {
        self.state().join("pg/data")
    }

    /// `pg_ctl ARGS -D <data>`, as the postgres OS user when we are root.
    pub async fn pg_ctl(&self, args: &[&str]) -> String {
        let bin = std::env::var("PGPIPE_DEV_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let pg_ctl = format!("{bin}/pg_ctl");
        let data = self.pg_data().to_string_lossy().into_owned();
        let mut all: Vec<&str> = Vec::new();
        if is_root() {
            all.extend(["runuser", "-u", "postgres", "--"]);
        }
        all.push(&pg_ctl);
        all.extend(["-D", &data]);
        all.extend_from_slice(args);
        let out = tokio::process::Command::new(all[0])
            .args(&all[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        check(&format!("{all:?}"), out)
    }

    /// Puts the pg_hba.conf `rules` (lines) ahead of the file's own, which
    /// trust everyone, and reloads the configuration.
    pub async fn hba_first(&self, rules: &str) {
        let hba = self.pg_data().join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("{rules}{rest}")).unwrap();
        self.pg_ctl(&["reload"]).await;
    }

    /// Stops Postgres (fast shutdown: sessions and walsenders are terminated).
    pub async fn stop_pg(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]).await;
    }

    /// Starts whatever is down (`dev/env up`).
    pub async fn start(&self) {
        self.dev_env(&["up"]).await;
    }

    pub async fn restart_pg(&self) {
        self.stop_pg().await;
        self.start().await;
    }

    /// SIGKILLs the ClickHouse front and waits until it is gone.
    pub async fn kill_ch(&self) {
        let pid_file = self.state().join("ch/chfront.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .to_owned();
        assert!(pid.parse::<u32>().is_ok(), "bad pid {pid:?}");
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await;
        for _ in 0..200 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chfront (pid {pid}) survived SIGKILL");
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.pg_url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.pg_url()));
        tokio::spawn(conn);
        client
    }

    pub fn ch(&self, database: &str) -> clickhouse::Client {
        if self.tls.ch.is_some() {
            // pgpipe's own https client, trusting the test's CA.
            return pgpipe::sink::ChSink::connect_with_ca(
                &self.ch_url(),
                "default",
                None,
                database,
                self.tls.ch_ca.as_deref(),
            )
            .unwrap_or_else(|e| panic!("https client for {}: {e}", self.ch_url()))
            .client()
            .clone()
            .with_database(database);
        }
        clickhouse::Client::default()
            .with_url(self.ch_url())
            .with_database(database)
    }

    /// A CreatePipe request between this environment's peers.
    pub fn pipe_req(&self, name: &str, database: &str, tables: &[&str]) -> CreatePipeRequest {
        CreatePipeRequest {
            name: name.into(),
            source: Some(SourceConfig {
                connection_string: self.pg_url(),
                password: String::new(),
            }),
            destination: Some(DestinationConfig {
                url: self.ch_url(),
                database: database.into(),
                user: "default".into(),
                password: String::new(),
                ca_cert: String::new(),
            }),
            tables: tables.iter().map(|t| super::table(t)).collect(),
            settings: Some(PipeSettings {
                snapshot_parallelism: 2,
                snapshot_rows_per_partition: 1_000,
                cdc_batch_size: 5_000,
                cdc_sync_interval_ms: 100,
                ..Default::default()
            }),
            labels: Default::default(),
        }
    }

    /// Waits until both sides hold the same rows (panics with the diff).
    pub async fn wait_equal(
        &self,
        database: &str,
        dest: &str,
        schema: &str,
        table: &str,
        cols: &str,
        timeout: Duration,
    ) {
        let src = format!(
            "postgresql('127.0.0.1:{}', '{PG_DB}', '{table}', 'postgres', '', '{schema}')",
            self.pg_port
        );
        let q = super::data::diff_query(&src, database, dest, cols, cols);
        let what = format!("{schema}.{table} and {database}.{dest}");
        super::data::wait_no_diff(&what, timeout, async || {
            Ok(self.ch(database).query(&q).fetch_one::<i64>().await? as u64)
        })
        .await;
    }

    /// [`PrivateEnv::wait_equal`] of `schema`.`table` and the ClickHouse
    /// table of the same name in the database named as the schema.
    pub async fn wait_same(&self, schema: &str, table: &str, cols: &str, timeout: Duration) {
        self.wait_equal(schema, table, schema, table, cols, timeout)
            .await;
    }

    /// Creates `schema` with the table of `data::items_sql` here.
    pub async fn make_items(&self, schema: &str, rows: i64) {
        self.pg()
            .await
            .batch_execute(&super::data::items_sql(schema, rows))
            .await
            .unwrap();
    }

    /// An in-process engine with a RUNNING pipe (named after the schema)
    /// of `schema`.items (see [`PrivateEnv::make_items`]) whose snapshot is
    /// in ClickHouse; its name and the pipe.
    pub async fn start_items_pipe(&self, schema: &str) -> (super::InProcess, Client, String, Pipe) {
        let name = super::data::pipe_name(schema);
        let req = self.pipe_req(&name, schema, &[&format!("{schema}.items")]);
        let (srv, c, p) = super::data::start_pipe(req).await;
        self.wait_same(
            schema,
            "items",
            super::data::ITEMS_COLS,
            Duration::from_secs(30),
        )
        .await;
        (srv, c, name, p)
    }

    /// Keeps at most 1 MB of WAL for slots and none for standbys (both
    /// reloadable), so a paused pipe's slot is lost after a few segments.
    pub async fn limit_slot_wal(&self) {
        let admin = self.pg().await;
        // One statement each: ALTER SYSTEM refuses an (implicit) transaction.
        for sql in [
            "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
            "ALTER SYSTEM SET wal_keep_size = 0",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(sql).await.unwrap();
        }
    }

    /// Sets `wal_level = replica` and restarts Postgres: a server logical
    /// decoding refuses.
    pub async fn without_logical_wal(&self) {
        self.set_wal_level("replica").await;
    }

    /// Sets `wal_level` (ALTER SYSTEM, which overrides dev/env's setting)
    /// and restarts Postgres.
    pub async fn set_wal_level(&self, level: &str) {
        let sql = format!("ALTER SYSTEM SET wal_level = {level}");
        self.pg().await.batch_execute(&sql).await.unwrap();
        self.restart_pg().await;
    }
}

impl Drop for PrivateEnv {
    fn drop(&mut self) {
        // Stops both and deletes the state (also the cluster under /var/tmp).
        let out = self.command(&["reset"]).output();
        if let Ok(o) = &out
            && !o.status.success()
        {
            eprintln!(
                "dev/env reset of {} failed: {}",
                self.state().display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Writes about 10 MB of WAL through `pg` (into its table `scratch (id int,
/// pad text)`), switches the segment and checkpoints: what makes a slot
/// that stands still fall behind.
pub async fn churn_wal(pg: &tokio_postgres::Client) {
    for sql in [
        "INSERT INTO scratch SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
        "SELECT pg_switch_wal()",
        "CHECKPOINT",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
}
