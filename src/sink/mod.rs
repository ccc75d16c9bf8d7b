//! ClickHouse sink: destination DDL, fast RowBinary inserts into
//! `ReplacingMergeTree` tables, unchanged-TOAST filling, and the resync's
//! soft-delete transfer.
//!
//! Every destination table has the source columns (types: see [`types`])
//! plus [`VERSION_COLUMN`] `UInt64` (snapshot rows: the slot's consistent
//! LSN; CDC: the commit LSN), [`IS_DELETED_COLUMN`] `UInt8` (soft delete) and
//! [`SYNCED_AT_COLUMN`] `DateTime64(6, 'UTC')`, with
//! `ENGINE = ReplacingMergeTree(_pgpipe_version, _pgpipe_is_deleted)`: under
//! `FINAL` the highest version of a key wins and a winning soft-delete
//! hides the key.
//!
//! Table names passed to [`ChSink`] methods are names inside the sink's
//! database; every identifier is quoted, so any name is safe.

mod apply;
mod codec;
mod ddl;
mod error;
mod ident;
mod literal;
mod toast;
pub(crate) mod types;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickhouse::Client;
use serde::Deserialize;

pub(crate) use apply::{ApplyTo, Change, RowLookup};
pub use codec::civil_from_days;
pub use ddl::{ColumnAlter, CreateMode};
pub use error::SinkError;
pub use ident::quote_ident;
pub use types::clickhouse_type;
pub use writer::{TableWriter, WriterOptions};

use crate::model::SourceTable;
use types::Kind;

/// `_pgpipe_version UInt64`: the LSN that produced the row version.
pub(crate) const VERSION_COLUMN: &str = "_pgpipe_version";
/// `_pgpipe_is_deleted UInt8`: 1 for a soft-deleted key.
pub(crate) const IS_DELETED_COLUMN: &str = "_pgpipe_is_deleted";
/// `_pgpipe_synced_at DateTime64(6, 'UTC')`: when pgpipe wrote the row.
pub(crate) const SYNCED_AT_COLUMN: &str = "_pgpipe_synced_at";
const METADATA_COLUMNS: [(&str, &str); 3] = [
    (VERSION_COLUMN, "UInt64"),
    (IS_DELETED_COLUMN, "UInt8"),
    (SYNCED_AT_COLUMN, "DateTime64(6, 'UTC')"),
];

const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one database of a ClickHouse server (HTTP interface).
/// Cheap to clone; clones share the destination-schema cache.
#[derive(Clone)]
pub struct ChSink {
    client: Client,
    database: String,
    /// The URL without credentials or query, for messages.
    url: String,
    user: String,
    schemas: Arc<Mutex<HashMap<String, Arc<Vec<DestColumn>>>>>,
}

impl std::fmt::Debug for ChSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChSink")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// A column of a destination table as `system.columns` reports it.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct DestColumn {
    /// Column name.
    pub name: String,
    /// The ClickHouse type, e.g. `Nullable(Decimal(12, 2))`.
    pub ch_type: String,
}

/// How one source column is written: its conversion and whether the
/// destination column is Nullable.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPlan {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) nullable: bool,
}

impl ColumnPlan {
    pub(crate) fn ch_type(&self) -> String {
        self.kind.ch_type(self.nullable)
    }
}

/// LZ4 saves bandwidth at a CPU cost on both ends: worth it across a
/// network, pure cost on loopback. `?compression=lz4|none` in the URL
/// overrides the choice by host.
fn compression_for(url: &url::Url) -> Result<clickhouse::Compression, String> {
    let asked = url
        .query_pairs()
        .find(|(k, _)| k == "compression")
        .map(|(_, v)| v.to_ascii_lowercase());
    match asked.as_deref() {
        Some("lz4") => Ok(clickhouse::Compression::Lz4),
        Some("none") => Ok(clickhouse::Compression::None),
        Some(other) => Err(format!(
            "compression={other} is not supported: use compression=lz4 or compression=none"
        )),
        None => Ok(if is_loopback(url) {
            clickhouse::Compression::None
        } else {
            clickhouse::Compression::Lz4
        }),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl ChSink {
    /// Prepares a client for `database` on the server at `url`
    /// (`http://host:8123`). Does no I/O: call [`ChSink::ping`] to check the
    /// server and the credentials. Credentials go in `user`/`password`,
    /// not in the URL.
    pub fn connect(
        url: &str,
        user: &str,
        password: Option<&str>,
        database: &str,
    ) -> Result<ChSink, SinkError> {
        Self::connect_with_ca(url, user, password, database, None)
    }

    /// The ClickHouse end of a pipe (its stored config and password).
    pub(crate) fn for_destination(
        dst: &crate::proto::DestinationConfig,
        password: Option<&str>,
    ) -> Result<ChSink, SinkError> {
        let ca_cert = (!dst.ca_cert.is_empty()).then(|| std::path::Path::new(&dst.ca_cert));
        Self::connect_with_ca(&dst.url, &dst.user, password, &dst.database, ca_cert)
    }

    /// Like [`ChSink::connect`]; for an `https` URL the server's certificate
    /// must chain to a CA in the PEM file `ca_cert` (None: the system's
    /// roots). Reads that file, but does no network I/O.
    pub fn connect_with_ca(
        url: &str,
        user: &str,
        password: Option<&str>,
        database: &str,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<ChSink, SinkError> {
        let parsed = url::Url::parse(url).map_err(|e| SinkError::InvalidUrl {
            url: url.chars().take(200).collect(),
            reason: e.to_string(),
        })?;
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.set_query(None);
        let shown = shown.to_string();
        let invalid = |reason: &str| SinkError::InvalidUrl {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        if ca_cert.is_some() && !https {
            return Err(invalid("a CA certificate file is only used with https"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not used: pass the user and password separately",
            ));
        }
        if database.is_empty() {
            return Err(SinkError::Schema(
                "the ClickHouse database name is empty".into(),
            ));
        }
        if user.is_empty() {
            return Err(SinkError::Schema(
                "the ClickHouse user name is empty".into(),
            ));
        }
        let compression = compression_for(&parsed).map_err(|r| invalid(&r))?;
        // The client gets the URL without our own parameter.
        let mut base = parsed.clone();
        let rest: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "compression")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        base.set_query(None);
        if !rest.is_empty() {
            base.query_pairs_mut().extend_pairs(rest);
        }
        let client = if https {
            https_client(ca_cert).map_err(|e| SinkError::Tls {
                url: shown.clone(),
                reason: e.to_string(),
            })?
        } else {
            Client::default()
        };
        let mut client = client
            .with_url(base.as_str())
            .with_user(user)
            .with_compression(compression);
        if let Some(p) = password {
            client = client.with_password(p);
        }
        Ok(ChSink {
            client,
            database: database.to_string(),
            url: shown,
            user: user.to_string(),
            schemas: Arc::default(),
        })
    }

    /// Checks that the server answers and accepts the credentials; returns
    /// the server version. Errors: [`SinkError::Unreachable`] (nothing
    /// answered within 10 s, connection refused, DNS...),
    /// [`SinkError::Auth`] (unknown user or wrong password), or another
    /// error (e.g. not a ClickHouse server).
    pub async fn ping(&self) -> Result<String, SinkError> {
        let query = self
            .client
            .query_raw("SELECT version()")
            .fetch_one::<String>();
        match tokio::time::timeout(PING_TIMEOUT, query).await {
            Err(_) => Err(SinkError::Unreachable {
                url: self.url.clone(),
                reason: format!("no answer within {} s", PING_TIMEOUT.as_secs()),
            }),
            Ok(Ok(version)) => {
                tracing::debug!(url = %self.url, version = %version, "clickhouse ping ok");
                Ok(version)
            }
            Ok(Err(e)) => Err(self.map_err(e)),
        }
    }

    /// The database this sink writes to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The underlying client (for tests and ad-hoc queries).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn map_err(&self, e: clickhouse::error::Error) -> SinkError {
        error::from_ch(e, &self.url, &self.user)
    }

    /// `` `db`.`table` ``
    pub(crate) fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.database), quote_ident(table))
    }

    /// Runs a statement built by the sink (identifiers already quoted).
    pub(crate) async fn exec(&self, sql: &str) -> Result<(), SinkError> {
        tracing::debug!(database = %self.database, sql = %sql, "clickhouse statement");
        self.client
            .query_raw(sql)
            .execute()
            .await
            .map_err(|e| self.map_err(e))
    }

    /// The columns of `table` in order, or None if it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Option<Vec<DestColumn>>, SinkError> {
        let cols = self
            .client
            .query_raw(
                "SELECT name, type AS ch_type FROM system.columns \
                 WHERE database = {db:String} AND table = {t:String} ORDER BY position",
            )
            .param("db", &self.database)
            .param("t", table)
            .fetch_all::<DestColumn>()
            .await
            .map_err(|e| self.map_err(e))?;
        Ok((!cols.is_empty()).then_some(cols))
    }

    /// Checks an existing destination table against `source` without
    /// changing anything: Ok(false) if it does not exist, Ok(true) if pgpipe
    /// can write to it, Err([`SinkError::Schema`]) saying what differs.
    pub(crate) async fn check_existing(
        &self,
        table: &str,
        source: &SourceTable,
    ) -> Result<bool, SinkError> {
        let Some(dest) = self.columns(table).await? else {
            return Ok(false);
        };
        plan_columns(&self.qualified(table), source, &dest)?;
        Ok(true)
    }

    /// Cached [`ChSink::columns`]; errors if the table does not exist.
    pub(crate) async fn dest_columns(
        &self,
        table: &str,
    ) -> Result<Arc<Vec<DestColumn>>, SinkError> {
        if let Some(cols) = self.cache().get(table) {
            return Ok(cols.clone());
        }
        let cols = self.columns(table).await?.ok_or_else(|| {
            SinkError::Schema(format!(
                "ClickHouse table {} does not exist",
                self.qualified(table)
            ))
        })?;
        let cols = Arc::new(cols);
        self.cache().insert(table.to_string(), cols.clone());
        Ok(cols)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<DestColumn>>>> {
        // A poisoned cache is still a valid cache.
        self.schemas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the cached columns of `table` (the sink's own DDL does this;
    /// call it after changing a destination table by other means).
    pub(crate) fn forget_schema(&self, table: &str) {
        self.cache().remove(table);
    }

    /// Matches the source columns to the destination table: each source
    /// column must exist with the mapped type (Nullable or not: the
    /// destination decides) and the metadata columns must be there.
    pub(crate) async fn plan(
        &self,
        table: &str,
        source: &SourceTable,
    ) -> Result<Vec<ColumnPlan>, SinkError> {
        let dest = self.dest_columns(table).await?;
        let plan = plan_columns(&self.qualified(table), source, &dest);
        if plan.is_err() {
            // The cache may be stale: look again once.
            self.forget_schema(table);
            let dest = self.dest_columns(table).await?;
            return plan_columns(&self.qualified(table), source, &dest);
        }
        plan
    }
}

/// How long an idle pooled connection is kept: less than ClickHouse's
/// keep-alive timeout (3 s before 23.11), as the crate's default client does.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A client for https URLs. The clickhouse crate's own TLS features trust
/// only built-in or system roots; this one can trust a given CA file.
fn https_client(ca_cert: Option<&std::path::Path>) -> Result<Client, crate::tls::TlsFileError> {
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    let roots = crate::tls::roots("CA certificate file (destination.ca_cert)", ca_cert)?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::tls::TlsFileError::Invalid {
            what: "TLS configuration",
            path: Default::default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(Client::with_http_client(hyper))
}

fn plan_columns(
    qualified: &str,
    source: &SourceTable,
    dest: &[DestColumn],
) -> Result<Vec<ColumnPlan>, SinkError> {
    let find = |name: &str| {
        dest.iter()
            .find(|c| c.name == name)
            .map(|c| c.ch_type.as_str())
    };
    for (name, ty) in METADATA_COLUMNS {
        if find(name) != Some(ty) {
            return Err(SinkError::Schema(format!(
                "ClickHouse table {qualified} is not a pgpipe table: it lacks column {name} {ty}"
            )));
        }
    }
    source
        .columns
        .iter()
        .map(|col| {
            let kind = Kind::for_column(col).map_err(|e| {
                SinkError::Schema(format!("{e} (table {}.{})", source.schema, source.name))
            })?;
            let Some(actual) = find(&col.name) else {
                return Err(SinkError::Schema(format!(
                    "ClickHouse table {qualified} has no column {:?} (source column of type {}): \
                     add it (ALTER TABLE ... ADD COLUMN) or resync the table",
                    col.name, col.type_name
                )));
            };
            let nullable = if actual == kind.ch_type(false) {
                false
            } else if actual == kind.ch_type(true) {
                true
            } else {
                let chosen = col
                    .repr
                    .map(|r| format!(" (column_types {r})"))
                    .unwrap_or_default();
                return Err(SinkError::Schema(format!(
                    "ClickHouse column {:?} of {qualified} is {actual}, but source type {}{chosen} \
                     maps to {}: change the column or resync the table",
                    col.name,
                    col.type_name,
                    kind.ch_type(!col.not_null && kind.can_be_nullable())
                )));
            };
            Ok(ColumnPlan {
                name: col.name.clone(),
                kind,
                nullable,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Compression;

    fn comp(url: &str) -> Result<Compression, String> {
        compression_for(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn loopback_destinations_are_not_compressed() {
        for u in [
            "http://127.0.0.1:8123",
            "http://localhost:8123",
            "http://[::1]:8123",
        ] {
            assert!(matches!(comp(u), Ok(Compression::None)), "{u}");
        }
    }

    #[test]
    fn remote_destinations_use_lz4() {
        assert!(matches!(
            comp("http://ch.example.com:8123"),
            Ok(Compression::Lz4)
        ));
        assert!(matches!(comp("http://10.1.2.3:8123"), Ok(Compression::Lz4)));
    }

    #[test]
    fn the_url_parameter_overrides_the_choice() {
        assert!(matches!(
            comp("http://127.0.0.1:8123/?compression=lz4"),
            Ok(Compression::Lz4)
        ));
        assert!(matches!(
            comp("http://ch.example.com/?compression=none"),
            Ok(Compression::None)
        ));
        let err = comp("http://ch.example.com/?compression=zstd").unwrap_err();
        assert!(err.contains("compression=lz4 or compression=none"), "{err}");
    }
}
