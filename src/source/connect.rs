//! Connecting to the source and checking that it can do logical replication.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use super::tls::{TlsParams, connector, split_tls};
use super::{MIN_SERVER_VERSION_NUM, SourceError, error_chain, format_db_error, has_io_source};

/// Used when the connection string sets no `connect_timeout`, so an
/// unreachable (black-holed) host fails instead of hanging.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// tokio-postgres' keepalive idle time when the string sets none.
const TOKIO_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
/// How long sent data may stay unacknowledged before the socket fails.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings that shape text output, pinned so COPY and pgoutput (whose
/// output functions run in this session) agree, and timeouts a role may
/// carry that would kill long COPYs or the idle snapshot coordinator.
const SESSION_SETUP: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0";

/// The same output settings as [`SESSION_SETUP`], as startup options for the
/// replication connection: there pgoutput's output functions run in the
/// walsender's session, which no SET can reach.
pub(crate) const OUTPUT_OPTIONS: &str = "-c DateStyle=ISO,YMD -c TimeZone=UTC \
     -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex";

/// The first host (a Unix socket's directory as text) and port, with
/// libpq's defaults.
pub(super) fn host_port(cfg: &Config) -> (String, u16) {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    (host, cfg.get_ports().first().copied().unwrap_or(5432))
}

/// Where a connection goes, for messages: `host:port/db` (never a password).
fn target(cfg: &Config) -> String {
    let (host, port) = host_port(cfg);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or(""))
}

/// Parses a connection string (URL or key=value form) into tokio-postgres'
/// settings and the TLS ones, with `application_name=pgpipe` and a connect
/// timeout. The password, if given, overrides one in `conn_str`. Both the
/// query connections and the replication connection start here, so they
/// accept the same strings.
///
/// tokio-postgres' `Config` parses everything but TLS: it rejects
/// `sslrootcert` (an unknown option) and `sslmode=verify-ca`/`verify-full`
/// (its `SslMode` has disable, prefer and require only). So [`split_tls`]
/// takes those two keys out of either form first, and `Config` parses the
/// rest; no other key is parsed by hand.
pub(crate) fn parse_connection(
    conn_str: &str,
    password: Option<&str>,
) -> Result<(Config, TlsParams), SourceError> {
    let (rest, tls) = split_tls(conn_str).map_err(SourceError::InvalidConnectionString)?;
    let mut cfg = Config::from_str(&rest).map_err(|e| {
        // The cause names the bad option, not its value.
        let cause = std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_else(|| e.to_string());
        SourceError::InvalidConnectionString(cause)
    })?;
    if let Some(p) = password {
        cfg.password(p);
    }
    cfg.application_name("pgpipe");
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // A network that drops packets leaves a socket open and silent: TCP
    // keepalives (idle after 30 s rather than the system's 2 h) and a bound
    // on unacknowledged data turn that into an error the worker retries.
    if !cfg.get_keepalives() || cfg.get_keepalives_idle() == TOKIO_KEEPALIVES_IDLE {
        cfg.keepalives(true);
        cfg.keepalives_idle(KEEPALIVES_IDLE);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    Ok((cfg, tls))
}

/// Connects to the source with `application_name=pgpipe` and the pinned
/// output settings, over TLS as `sslmode`/`sslrootcert` say (see
/// [`super::tls`]). The password, if given, overrides one in `conn_str`;
/// neither ever appears in errors or logs.
pub async fn connect(conn_str: &str, password: Option<&str>) -> Result<Client, SourceError> {
    let (mut cfg, tls) = parse_connection(conn_str, password)?;
    let target = target(&cfg);
    let user = cfg.get_user().unwrap_or("").to_owned();
    let make_tls = connector(&tls, &mut cfg).map_err(|e| SourceError::Tls {
        target: target.clone(),
        reason: e.to_string(),
    })?;
    let (client, connection) = cfg
        .connect(make_tls)
        .await
        .map_err(|e| classify_connect_error(&e, &target, &user, cfg.get_dbname(), &tls))?;
    let log_target = target.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target = %log_target, error = %error_chain(&e), "source connection ended with an error");
        }
    });
    client
        .batch_execute(SESSION_SETUP)
        .await
        .map_err(|e| SourceError::query("setting up the session", &e))?;
    tracing::debug!(target = %target, user = %user, sslmode = %tls.mode, "connected to source");
    Ok(client)
}

fn classify_connect_error(
    e: &tokio_postgres::Error,
    target: &str,
    user: &str,
    dbname: Option<&str>,
    tls: &TlsParams,
) -> SourceError {
    if let Some(reason) = tls_failure(e, tls) {
        return SourceError::Tls {
            target: target.into(),
            reason,
        };
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return SourceError::AuthFailed {
                target: target.into(),
                user: user.into(),
                reason: format_db_error(db),
            };
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return SourceError::DatabaseMissing {
                target: target.into(),
                database: dbname.unwrap_or(user).into(),
            };
        }
        if code.code().starts_with("08") || code.code().starts_with("57P") || code.code() == "53300"
        {
            // Connection exceptions, shutting down, too many connections.
            return SourceError::Unreachable {
                target: target.into(),
                reason: format_db_error(db),
            };
        }
        return SourceError::Query {
            context: format!("connecting to {target}"),
            reason: format_db_error(db),
        };
    }
    let chain = error_chain(e);
    if chain.contains("password missing") {
        return SourceError::AuthFailed {
            target: target.into(),
            user: user.into(),
            reason: "the server asks for a password but none was given".into(),
        };
    }
    if chain.contains("user missing") {
        return SourceError::InvalidConnectionString(
            "no user given; add user=... or postgres://USER@host/db".into(),
        );
    }
    if has_io_source(e) || chain.contains("timeout") || chain.contains("timed out") {
        return SourceError::Unreachable {
            target: target.into(),
            reason: chain,
        };
    }
    if chain.contains("authentication") || chain.contains("SASL") || chain.contains("SCRAM") {
        return SourceError::AuthFailed {
            target: target.into(),
            user: user.into(),
            reason: chain,
        };
    }
    SourceError::Query {
        context: format!("connecting to {target}"),
        reason: chain,
    }
}

/// The TLS problem behind a failed connection, worded for the user, or
/// None if the failure is not about TLS.
fn tls_failure(e: &tokio_postgres::Error, tls: &TlsParams) -> Option<String> {
    if e.as_db_error().is_some() {
        return None;
    }
    let chain = error_chain(e);
    if chain.contains("server does not support TLS") {
        return Some(format!(
            "the server does not accept TLS connections, but sslmode={} requires TLS; \
             enable ssl on the server, or lower sslmode",
            tls.mode
        ));
    }
    // tokio-postgres' kind for every failure of the TLS layer, including a
    // certificate rejected by rustls (its message says why).
    if chain.contains("TLS handshake") || chain.contains("invalid peer certificate") {
        let detail = chain
            .strip_prefix("error performing TLS handshake: ")
            .unwrap_or(&chain);
        return Some(format!(
            "TLS handshake failed (sslmode={}): {detail}; check sslrootcert in the connection \
             string and that the server's certificate is for this host",
            tls.mode
        ));
    }
    None
}

/// Facts about the source server, from [`check_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    /// `server_version`, e.g. `15.4 (Debian 15.4-1)`.
    pub version: String,
    pub user: String,
    pub database: String,
}

/// Checks that the server can serve a pipe: PostgreSQL 11+, `wal_level =
/// logical`, a UTF8 database, and a user with REPLICATION (or superuser,
/// or `rds_replication` on Amazon RDS). Fails with the first problem.
pub async fn check_server(client: &Client) -> Result<ServerInfo, SourceError> {
    let (info, mut problems) = server_problems(client).await?;
    if problems.is_empty() {
        Ok(info)
    } else {
        Err(problems.remove(0))
    }
}

/// Like [`check_server`], but returns every problem (in the order
/// [`check_server`] would report them); Err only if the server cannot be
/// asked at all.
pub async fn server_problems(
    client: &Client,
) -> Result<(ServerInfo, Vec<SourceError>), SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version'), \
                    current_setting('wal_level'), current_user::text, current_database()::text, \
                    pg_encoding_to_char(d.encoding)::text, r.rolsuper, r.rolreplication, \
                    EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' \
                            AND pg_has_role(r.oid, g.oid, 'MEMBER')) \
             FROM pg_roles r, pg_database d \
             WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| SourceError::query("checking the source server", &e))?;
    let info = ServerInfo {
        version_num: row.get(0),
        version: row.get(1),
        user: row.get(3),
        database: row.get(4),
    };
    let wal_level: String = row.get(2);
    let encoding: String = row.get(5);
    let (superuser, replication, rds): (bool, bool, bool) = (row.get(6), row.get(7), row.get(8));
    let problems = check_facts(
        &info,
        &wal_level,
        &encoding,
        superuser || replication || rds,
    );
    Ok((info, problems))
}

fn check_facts(
    info: &ServerInfo,
    wal_level: &str,
    encoding: &str,
    may_replicate: bool,
) -> Vec<SourceError> {
    let mut problems = Vec::new();
    if info.version_num < MIN_SERVER_VERSION_NUM {
        problems.push(SourceError::ServerTooOld {
            version: info.version.clone(),
        });
    }
    if wal_level != "logical" {
        problems.push(SourceError::WalLevel {
            actual: wal_level.into(),
        });
    }
    if encoding != "UTF8" {
        problems.push(SourceError::UnsupportedEncoding {
            encoding: encoding.into(),
        });
    }
    if !may_replicate {
        problems.push(SourceError::NoReplicationPrivilege {
            user: info.user.clone(),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: i32) -> ServerInfo {
        ServerInfo {
            version_num: v,
            version: "x".into(),
            user: "app".into(),
            database: "db".into(),
        }
    }

    #[test]
    fn server_facts_are_checked_in_order() {
        let first = |v, w, e, r| check_facts(&info(v), w, e, r).into_iter().next();
        assert!(first(150004, "logical", "UTF8", true).is_none());
        assert!(matches!(
            first(100020, "logical", "UTF8", true),
            Some(SourceError::ServerTooOld { .. })
        ));
        let e = first(150004, "replica", "UTF8", true).unwrap();
        assert!(matches!(e, SourceError::WalLevel { .. }));
        let m = e.to_string();
        assert!(m.contains("wal_level = \"replica\""), "{m}");
        assert!(
            m.contains("`ALTER SYSTEM SET wal_level = logical;` and restart"),
            "{m}"
        );
        assert!(matches!(
            first(150004, "logical", "LATIN1", true),
            Some(SourceError::UnsupportedEncoding { .. })
        ));
        assert!(matches!(
            first(150004, "logical", "UTF8", false),
            Some(SourceError::NoReplicationPrivilege { .. })
        ));
        // Every problem, not only the first.
        assert_eq!(
            check_facts(&info(150004), "replica", "UTF8", false).len(),
            2
        );
    }

    #[test]
    fn bad_connection_strings_do_not_echo_secrets() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(connect("host=h port=notaport password=hunter2", None))
            .unwrap_err();
        assert!(matches!(e, SourceError::InvalidConnectionString(_)));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
