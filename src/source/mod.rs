//! The Postgres source adapter: connection and server checks, table
//! descriptions, publication and slot management, the parallel initial
//! snapshot (COPY) and change data capture (pgoutput streamed over a
//! replication connection, see [`ChangeStream`]).
//!
//! Why the snapshot/CDC hand-off neither misses nor doubles a change (the
//! slot first, then the exported snapshot, versions `C - 1` and commit
//! LSNs): `docs/architecture.md`.
//!
//! # Output format
//!
//! Every session opened by [`connect`] pins the settings that shape text
//! output, and the replication connection pins the same ones as startup
//! options (pgoutput's output functions run in its walsender), so the
//! snapshot (COPY) and CDC produce identical text:
//! `DateStyle = 'ISO, YMD'`, `TimeZone = 'UTC'`, `IntervalStyle =
//! 'postgres'`, `extra_float_digits = 3`, `bytea_output = 'hex'`.

mod connect;
mod copy_text;
mod lookup;
mod partitions;
pub mod pgoutput;
mod schema;
mod slot;
mod snapshot;
mod stream;
pub(crate) mod tls;

// Public: what the integration tests drive against a real Postgres; the
// rest is for the engine only.
pub(crate) use connect::server_problems;
pub use connect::{check_server, connect};
pub(crate) use copy_text::CopyFormatError;
pub use copy_text::decode_copy_lines;
pub(crate) use lookup::fill_from_source;
pub(crate) use partitions::{Leaf, leaf_partitions, partition_overlaps};
pub(crate) use schema::{AddedValue, TableReport, added_column_value};
pub use schema::{describe_table_problems, describe_tables};
pub(crate) use slot::create_temporary_slot;
pub use slot::{
    create_slot, current_wal_lsn, drop_publication, drop_slot, ensure_publication, slot_info,
};
pub use snapshot::{Partition, SnapshotExport, SnapshotWorker, copy_select_sql, plan_partitions};
pub use stream::{ChangeStream, StreamItem, StreamSpec};
pub(crate) use stream::{Liveness, bounded};

use crate::domain::validate::QualifiedName;

/// Minimum supported server version (`server_version_num`): 11 brings
/// `pg_replication_slot_advance` and TRUNCATE in pgoutput.
pub(crate) const MIN_SERVER_VERSION_NUM: i32 = 110_000;

/// What went wrong with the source, phrased so the user knows what to fix.
/// Messages never contain a password or a connection string.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection string does not parse (the message says why).
    #[error(
        "source connection string is not usable: {0}; use postgres://user@host:port/db or `host=... user=... dbname=...`"
    )]
    InvalidConnectionString(String),

    /// No connection: refused, DNS, timeout. Usually transient.
    #[error(
        "cannot reach PostgreSQL at {target}: {reason}; check the host and port, that the server is running and accepts TCP connections (listen_addresses), and that no firewall is in the way"
    )]
    Unreachable {
        /// The server, as `host:port/database`.
        target: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The TLS handshake or certificate check failed.
    #[error("TLS with PostgreSQL at {target} failed: {reason}")]
    Tls {
        /// The server, as `host:port/database`.
        target: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The server refused the user or password.
    #[error(
        "PostgreSQL at {target} rejected user {user:?}: {reason}; check the user name, the password (source.password) and the server's pg_hba.conf"
    )]
    AuthFailed {
        /// The server, as `host:port/database`.
        target: String,
        /// The source user.
        user: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The database named in the connection string does not exist.
    #[error(
        "database {database:?} does not exist on {target}; create it or fix the database name in the connection string"
    )]
    DatabaseMissing {
        /// The server, as `host:port/database`.
        target: String,
        /// The database asked for.
        database: String,
    },

    /// `wal_level` is not `logical`.
    #[error(
        "the source server has wal_level = {actual:?}, but logical replication needs wal_level = logical: run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    )]
    WalLevel {
        /// The server's `wal_level`.
        actual: String,
    },

    /// The user may not create replication slots.
    #[error(
        "user {user:?} lacks the REPLICATION privilege needed for replication slots: run `ALTER ROLE {quoted} WITH REPLICATION;` as a superuser (on Amazon RDS: `GRANT rds_replication TO {quoted};`)",
        quoted = quote_ident(user)
    )]
    NoReplicationPrivilege {
        /// The source user.
        user: String,
    },

    /// The server is older than PostgreSQL 11.
    #[error("the source runs PostgreSQL {version}; pgpipe needs PostgreSQL 11 or newer")]
    ServerTooOld {
        /// The server's version.
        version: String,
    },

    /// The database encoding is not UTF8.
    #[error(
        "the source database uses encoding {encoding}; pgpipe needs a UTF8 database (logical decoding sends values in the database encoding)"
    )]
    UnsupportedEncoding {
        /// The database encoding.
        encoding: String,
    },

    /// A configured table does not exist.
    #[error(
        "table {table} does not exist on the source; check tables[].source_table (names are case-sensitive: quote mixed-case names like \"MyTable\")"
    )]
    TableMissing {
        /// The table, as `schema.table`.
        table: String,
    },

    /// The relation is a view, sequence, foreign table...
    #[error("{table} is a {kind}, not a table; pgpipe replicates ordinary tables{hint}")]
    NotATable {
        /// The table, as `schema.table`.
        table: String,
        /// What the relation is instead, e.g. `view`.
        kind: String,
        /// How to replicate it anyway, if there is a way (may be empty).
        hint: String,
    },

    /// An UNLOGGED table: its changes never reach the WAL.
    #[error(
        "table {table} is UNLOGGED, so its changes never reach the WAL and cannot be replicated; run `ALTER TABLE {table} SET LOGGED`"
    )]
    UnloggedTable {
        /// The table, as `schema.table`.
        table: String,
    },

    /// No primary key nor replica identity index.
    #[error(
        "table {table} has no primary key; add one or set REPLICA IDENTITY USING INDEX (a unique index on NOT NULL columns)"
    )]
    NoPrimaryKey {
        /// The table, as `schema.table`.
        table: String,
    },

    /// A partitioned table without a primary key.
    #[error(
        "partitioned table {table} has no primary key; pgpipe replicates it into one ClickHouse table keyed by the parent's primary key (which must include the partition key, as Postgres requires): add one with ALTER TABLE {table} ADD PRIMARY KEY (...)"
    )]
    PartitionedWithoutKey {
        /// The table, as `schema.table`.
        table: String,
    },

    /// REPLICA IDENTITY FULL without a primary key.
    #[error(
        "table {table} has REPLICA IDENTITY FULL but no primary key, and ClickHouse needs a key: add a primary key or set REPLICA IDENTITY USING INDEX"
    )]
    ReplicaIdentityFullWithoutKey {
        /// The table, as `schema.table`.
        table: String,
    },

    /// REPLICA IDENTITY NOTHING: updates and deletes carry no key.
    #[error(
        "table {table} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be replicated: run `ALTER TABLE {table} REPLICA IDENTITY DEFAULT`"
    )]
    ReplicaIdentityNothing {
        /// The table, as `schema.table`.
        table: String,
    },

    /// The user may not read the table.
    #[error(
        "user {user:?} may not read table {table}: run `GRANT SELECT ON {table} TO {quoted};`",
        quoted = quote_ident(user)
    )]
    NoSelectPrivilege {
        /// The table, as `schema.table`.
        table: String,
        /// The source user.
        user: String,
    },

    /// A column of a type pgpipe cannot replicate.
    #[error(
        "table {table} column {column:?} has type {type_name}, which pgpipe cannot replicate; supported: bool, int2/4/8, float4/8, numeric, text/varchar/char, bytea, date, time, timestamp(tz), interval, uuid, json(b), inet/cidr, enums, domains and 1-D arrays of these; or leave the column out with the table's exclude_columns"
    )]
    UnsupportedType {
        /// The table, as `schema.table`.
        table: String,
        /// The column's name.
        column: String,
        /// The column's type (`format_type`).
        type_name: String,
    },

    /// The slot pgpipe would create already exists.
    #[error(
        "replication slot {slot:?} already exists on the source; drop it (SELECT pg_drop_replication_slot('{slot}')) if no other pipe uses it"
    )]
    SlotExists {
        /// The replication slot's name.
        slot: String,
    },

    /// Another connection reads the slot.
    #[error(
        "replication slot {slot:?} is in use by another connection (pid {pid}); stop the other consumer of the slot"
    )]
    SlotActive {
        /// The replication slot's name.
        slot: String,
        /// Backend process id of the other reader.
        pid: i32,
    },

    /// The slot lost WAL it needs: the pipe must be resynced.
    #[error(
        "replication slot {slot:?} is lost ({reason}); changes since the last sync can no longer be read: resync the pipe"
    )]
    SlotLost {
        /// The replication slot's name.
        slot: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The pipe's publication is gone.
    #[error(
        "publication {publication:?} does not exist on the source (was it dropped?); resync the pipe to recreate it"
    )]
    PublicationMissing {
        /// The publication's name.
        publication: String,
    },

    /// A statement was refused for lack of privilege.
    #[error(
        "permission denied while {action}: {reason}; the source user must own the tables (or be superuser) to create the publication"
    )]
    PermissionDenied {
        /// What pgpipe was doing, e.g. creating the publication.
        action: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The exported snapshot ended before every worker imported it.
    #[error(
        "the exported snapshot {snapshot:?} is gone ({reason}); its coordinator transaction ended before every worker imported it: restart the snapshot"
    )]
    SnapshotGone {
        /// The exported snapshot's name.
        snapshot: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The server sent something pgpipe does not understand (a bug).
    #[error(
        "unexpected data from PostgreSQL while {context}: {reason}; this is a pgpipe bug, please report it"
    )]
    Protocol {
        /// What pgpipe was doing when it happened.
        context: String,
        /// What the server or the library said.
        reason: String,
    },

    /// The connection broke mid-operation. Transient.
    #[error("lost the connection to the source while {context}: {reason}")]
    ConnectionLost {
        /// What pgpipe was doing when it happened.
        context: String,
        /// What the server or the library said.
        reason: String,
    },

    /// Any other PostgreSQL error.
    #[error("PostgreSQL error while {context}: {reason}")]
    Query {
        /// What pgpipe was doing when it happened.
        context: String,
        /// What the server or the library said.
        reason: String,
    },
}

impl SourceError {
    /// True for errors that may go away by retrying later (network trouble,
    /// server restarts); false for those the user has to fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unreachable { .. }
                // A certificate or CA file can be fixed without a resync.
                | SourceError::Tls { .. }
                | SourceError::ConnectionLost { .. }
                | SourceError::SlotActive { .. }
        )
    }

    /// Classifies a tokio-postgres error from an ordinary query.
    pub(crate) fn query(context: impl Into<String>, e: &tokio_postgres::Error) -> SourceError {
        let context = context.into();
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let reason = format_db_error(db);
            if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
                return SourceError::PermissionDenied {
                    action: context,
                    reason,
                };
            }
            if is_connection_class(code.code()) {
                return SourceError::ConnectionLost { context, reason };
            }
            return SourceError::Query { context, reason };
        }
        if e.is_closed() || has_io_source(e) {
            return SourceError::ConnectionLost {
                context,
                reason: error_chain(e),
            };
        }
        SourceError::Query {
            context,
            reason: error_chain(e),
        }
    }
}

/// SQLSTATE classes 08 (connection exception) and 57P (operator
/// intervention: shutdown, terminated backend).
fn is_connection_class(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

/// `ERROR: message (SQLSTATE x) DETAIL: ... HINT: ...` without the
/// statement (which may be long) or internal positions.
pub(crate) fn format_db_error(db: &tokio_postgres::error::DbError) -> String {
    let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str("; detail: ");
        s.push_str(d);
    }
    if let Some(h) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}

/// The error and its causes, joined: tokio-postgres' Display alone shows
/// only the kind ("db error", "error connecting to server").
pub(crate) fn error_chain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format_db_error(db);
    }
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn has_io_source(e: &tokio_postgres::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Quotes an identifier for SQL: always double-quoted, embedded quotes
/// doubled (`a"b` -> `"a""b"`).
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal like Postgres' `quote_literal`: single quotes
/// doubled; with backslashes, the `E'...'` form with backslashes doubled,
/// so the result is right whatever `standard_conforming_strings` says.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `"schema"."table"`.
pub(crate) fn quote_table(q: &QualifiedName) -> String {
    format!("{}.{}", quote_ident(&q.schema), quote_ident(&q.table))
}

/// The replication slot name of a pipe incarnation: `pgpipe_` and the first
/// 12 hex digits of its id (a UUID; each incarnation has its own, so a
/// resync's slot never collides with the old one's). Only `[a-z0-9_]`,
/// at most 63 bytes.
pub(crate) fn slot_name(pipe_id: &str) -> String {
    derived_name(pipe_id)
}

/// The publication name of a pipe incarnation (same rule as
/// [`slot_name`]; slots and publications live in separate namespaces).
pub(crate) fn publication_name(pipe_id: &str) -> String {
    derived_name(pipe_id)
}

fn derived_name(pipe_id: &str) -> String {
    let hex: String = pipe_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    let is_uuid_like =
        hex.len() == 12 && pipe_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let suffix = if is_uuid_like {
        hex
    } else {
        // Not a UUID: keep what is allowed, so distinct ids stay distinct
        // as far as possible.
        pipe_id
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .take(63 - "pgpipe_".len())
            .collect()
    };
    format!("pgpipe_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_always_quotes_and_doubles_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("My \"Tab\""), "\"My \"\"Tab\"\"\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn quote_literal_handles_quotes_and_backslashes() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn slot_names_are_short_lowercase_and_distinct() {
        let a = slot_name("3F2504E0-4F89-11D3-9A0C-0305E82C3301");
        assert_eq!(a, "pgpipe_3f2504e04f89");
        let b = slot_name("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
        assert_eq!(b, "pgpipe_3f2504e04f89");
        let c = slot_name(&uuid::Uuid::new_v4().to_string());
        assert_eq!(c.len(), "pgpipe_".len() + 12);
        assert_eq!(publication_name("x-Y z"), "pgpipe_x_y_z");
        let long = slot_name(&"q".repeat(200));
        assert!(long.len() <= 63);
        for n in [a, c, long] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
        }
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = SourceError::WalLevel {
            actual: "replica".into(),
        };
        let m = e.to_string();
        assert!(m.contains("wal_level = logical"), "{m}");
        assert!(m.contains("ALTER SYSTEM SET wal_level = logical"), "{m}");
        assert!(m.contains("restart"), "{m}");
        let e = SourceError::NoReplicationPrivilege {
            user: "App\"User".into(),
        };
        assert!(
            e.to_string()
                .contains("ALTER ROLE \"App\"\"User\" WITH REPLICATION")
        );
        let e = SourceError::SlotLost {
            slot: "s".into(),
            reason: "r".into(),
        };
        assert!(e.to_string().contains("resync the pipe"));
    }
}
