//! Change data capture over the streaming replication protocol: a
//! `replication=database` connection runs `START_REPLICATION SLOT ...
//! LOGICAL` with pgoutput and streams each transaction's messages as the
//! walsender decodes them (CopyBoth), so no transaction is ever held whole.
//!
//! The wire work (TLS, SCRAM/md5/trust, CopyBoth framing, keepalive replies
//! and standby status updates) is the `pgwire-replication` crate's; this
//! module turns its pgoutput payloads into the model's [`TxItem`]s and says
//! when the server may forget WAL ([`ChangeStream::confirm`]).
//!
//! Positions: the slot's `confirmed_flush_lsn` is only ever moved by
//! `confirm`, which the caller calls with a transaction's `end_lsn` once
//! ClickHouse has every row of it (or, when nothing is in flight, with a
//! keepalive's WAL end). A crash before that replays the transaction from
//! its start, with the same versions.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use pgwire_replication::{
    ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode as WireSsl, TlsConfig,
};
use tokio_postgres::Client;

use super::SourceError;
use super::connect::{OUTPUT_OPTIONS, host_port, parse_connection};
use super::pgoutput::{self, OldTuple, PgOutputMessage, TupleData, TupleValue};
use super::slot::slot_error_text;
use super::tls::SslMode;
use crate::model::{Cell, Change, ChangeKind, Lsn, Relation, Row, TxItem};

/// How often the position is reported to the server when it moved (the
/// server also asks for a reply before `wal_sender_timeout`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Decoded messages buffered between the connection's task and the apply
/// loop: bounds memory (a message is one row) while keeping the socket busy.
const BUFFER_EVENTS: usize = 2048;

/// Where and how to stream from.
pub struct StreamSpec<'a> {
    /// Source connection string.
    pub conn: &'a str,
    /// Password, when not in the connection string.
    pub password: Option<&'a str>,
    /// Replication slot to read.
    pub slot: &'a str,
    /// Publication naming the tables.
    pub publication: &'a str,
    /// Where to start: the slot's confirmed position (the server never
    /// sends a transaction that committed before the slot's position anyway).
    pub start: Lsn,
}

/// What the stream says next, in WAL order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A transaction starts; every change in it is versioned `commit_lsn`.
    Begin {
        /// Source transaction id.
        xid: u32,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_us: i64,
    },
    /// A change, relation or truncate of the open transaction. Rows have
    /// one cell per column of the latest Relation; an UPDATE that changes
    /// the key comes as a Delete of the old key then the Update; a delete
    /// row has its key columns set, the others Null.
    Item(TxItem),
    /// The open transaction ends: confirm `end_lsn` once it is stored.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: where the slot may be confirmed to.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_us: i64,
    },
    /// The server's WAL end, between transactions. Nothing published
    /// committed before it is still to come, so when nothing is being
    /// applied the slot may be confirmed up to it (a quiet publication on a
    /// busy server then pins no WAL).
    Idle {
        /// The server's WAL end.
        wal_end: Lsn,
    },
}

/// One streaming replication session on a slot.
pub struct ChangeStream {
    client: ReplicationClient,
    slot: String,
    publication: String,
    rels: HashMap<u32, RelKey>,
    /// Primary keys of REPLICA IDENTITY FULL tables, by OID.
    pk_names: HashMap<u32, Vec<String>>,
    /// Items converted but not returned yet (a key change gives two).
    queued: VecDeque<StreamItem>,
    /// A message received but not decoded yet: decoding a Relation may
    /// query the server, and a `next` dropped meanwhile must not lose it.
    undecoded: Option<(bytes::Bytes, Lsn)>,
    xid: Option<u32>,
}

impl ChangeStream {
    /// Opens the replication connection and starts streaming the slot from
    /// `spec.start`. Fails if the server refuses (auth, TLS, missing slot or
    /// publication, the slot held by another session).
    pub async fn start(spec: StreamSpec<'_>) -> Result<Self, SourceError> {
        crate::tls::install_default_provider();
        let (cfg, timeout) = replication_config(&spec)?;
        let where_ = cfg.display_connection();
        let user = cfg.user.clone();
        let failed = |e: pgwire_replication::PgWireError| match wire_error(
            spec.slot,
            spec.publication,
            "starting replication",
            &e,
        ) {
            SourceError::AuthFailed { reason, .. } => SourceError::AuthFailed {
                target: where_.clone(),
                user: user.clone(),
                reason,
            },
            other => other,
        };
        let mut client = ReplicationClient::connect(cfg).await.map_err(failed)?;
        match tokio::time::timeout(timeout, client.wait_started()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                client.abort();
                return Err(SourceError::Unreachable {
                    target: where_,
                    reason: format!(
                        "the replication connection did not start within {}s",
                        timeout.as_secs()
                    ),
                });
            }
        }
        tracing::info!(slot = spec.slot, from = %spec.start, "streaming replication started");
        Ok(ChangeStream {
            client,
            slot: spec.slot.to_owned(),
            publication: spec.publication.to_owned(),
            rels: HashMap::new(),
            pk_names: HashMap::new(),
            queued: VecDeque::new(),
            undecoded: None,
            xid: None,
        })
    }

    /// The next item (cancel-safe: nothing is lost if the future is
    /// dropped before it completes, which the CDC loop does when a wait
    /// times out or a write it read ahead beside finishes). `pg` looks up the primary key of a
    /// REPLICA IDENTITY FULL table when its Relation arrives.
    pub async fn next(&mut self, pg: &Client) -> Result<StreamItem, SourceError> {
        loop {
            if let Some(item) = self.queued.pop_front() {
                return Ok(item);
            }
            if let Some((data, at)) = self.undecoded.clone() {
                let decoded = self.decode(pg, &data, at).await;
                self.undecoded = None;
                decoded?;
                continue;
            }
            let ev =
                self.client.recv().await.map_err(|e| {
                    wire_error(&self.slot, &self.publication, "streaming changes", &e)
                })?;
            let Some(ev) = ev else {
                return Err(SourceError::ConnectionLost {
                    context: format!("streaming changes of slot {:?}", self.slot),
                    reason: "the server ended the replication stream".into(),
                });
            };
            match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    self.xid = Some(xid);
                    return Ok(StreamItem::Begin {
                        xid,
                        commit_lsn: Lsn(final_lsn.as_u64()),
                        commit_time_us: commit_time_micros,
                    });
                }
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => {
                    self.xid = None;
                    return Ok(StreamItem::Commit {
                        commit_lsn: Lsn(lsn.as_u64()),
                        end_lsn: Lsn(end_lsn.as_u64()),
                        commit_time_us: commit_time_micros,
                    });
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if self.xid.is_none() {
                        return Ok(StreamItem::Idle {
                            wal_end: Lsn(wal_end.as_u64()),
                        });
                    }
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    self.undecoded = Some((data, Lsn(wal_start.as_u64())));
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => {
                    return Err(SourceError::ConnectionLost {
                        context: format!("streaming changes of slot {:?}", self.slot),
                        reason: "the replication stream stopped".into(),
                    });
                }
            }
        }
    }

    /// Tells the server that every transaction ending at or before `lsn`
    /// is stored: the slot's confirmed position moves there (sent within
    /// about a second) and older WAL may be recycled. Monotonic.
    pub fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
    }

    async fn decode(&mut self, pg: &Client, data: &[u8], at: Lsn) -> Result<(), SourceError> {
        let msg = pgoutput::decode(data).map_err(|e| SourceError::Protocol {
            context: format!("decoding changes of slot {:?} at {at}", self.slot),
            reason: e.to_string(),
        })?;
        match msg {
            PgOutputMessage::Begin { .. }
            | PgOutputMessage::Commit { .. }
            | PgOutputMessage::Type { .. }
            | PgOutputMessage::Origin { .. }
            | PgOutputMessage::Message { .. } => return Ok(()),
            _ => {}
        }
        if self.xid.is_none() {
            return Err(SourceError::Protocol {
                context: format!("streaming changes of slot {:?} at {at}", self.slot),
                reason: "a change outside of a transaction".into(),
            });
        }
        if let PgOutputMessage::Relation(r) = &msg
            && r.replica_identity == b'f'
        {
            let names = primary_key(pg, r.oid).await?;
            self.pk_names.insert(r.oid, names);
        }
        let mut items = Vec::with_capacity(2);
        convert(msg, &mut self.rels, &self.pk_names, &mut items).map_err(|reason| {
            SourceError::Protocol {
                context: format!(
                    "streaming changes of slot {:?} (xid {})",
                    self.slot,
                    self.xid.unwrap_or_default()
                ),
                reason,
            }
        })?;
        self.queued.extend(items.into_iter().map(StreamItem::Item));
        Ok(())
    }
}

/// Tells a quiet replication connection from a dead one. Silence is normal
/// (nothing published changes; the server's keepalives can be minutes
/// apart), and a network that drops packets without a reset leaves the
/// socket open and silent for good. So after [`SILENT_AFTER`] without a
/// message the server is asked, on the pipe's query connection, whether
/// the slot is still streaming: no answer within [`PROBE_TIMEOUT`], or the
/// slot inactive twice in a row (its walsender ended, e.g. after
/// `wal_sender_timeout` without our status updates), is a lost connection,
/// which the worker retries from the slot's position.
#[derive(Debug)]
pub struct Liveness {
    slot: String,
    last_message: Instant,
    last_probe: Option<Instant>,
    inactive: u32,
}

/// Silence on the replication connection before the server is asked.
const SILENT_AFTER: Duration = Duration::from_secs(10);
/// How long the liveness query may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Runs `read` on a query connection within [`PROBE_TIMEOUT`]: a connection
/// that stopped answering (a network dropping packets without a reset) is a
/// lost connection the worker retries, not a task stuck for good. `lost`
/// makes the error from the reason ("the server did not answer ...").
pub async fn bounded<T>(
    read: impl std::future::Future<Output = Result<T, SourceError>>,
    lost: impl FnOnce(String) -> SourceError,
) -> Result<T, SourceError> {
    tokio::time::timeout(PROBE_TIMEOUT, read)
        .await
        .map_err(|_| {
            lost(format!(
                "the server did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        })?
}

/// Time between two liveness queries while the connection stays silent.
const PROBE_EVERY: Duration = Duration::from_secs(5);

impl Liveness {
    pub fn new(slot: &str) -> Self {
        Liveness {
            slot: slot.to_owned(),
            last_message: Instant::now(),
            last_probe: None,
            inactive: 0,
        }
    }

    /// A message arrived: the connection is alive.
    pub fn heard(&mut self) {
        self.last_message = Instant::now();
        self.inactive = 0;
    }

    /// Asks the server when the connection has been silent long enough;
    /// an error means the connection is lost.
    pub async fn probe_if_silent(&mut self, pg: &Client) -> Result<(), SourceError> {
        if self.last_message.elapsed() < SILENT_AFTER
            || self.last_probe.is_some_and(|at| at.elapsed() < PROBE_EVERY)
        {
            return Ok(());
        }
        self.last_probe = Some(Instant::now());
        let lost = |reason: String| SourceError::ConnectionLost {
            context: format!("streaming changes of slot {:?}", self.slot),
            reason,
        };
        let info = bounded(super::slot::slot_info(pg, &self.slot), |late| {
            let silent = self.last_message.elapsed().as_secs();
            lost(format!("no message for {silent} s, and {late}"))
        })
        .await?;
        if info.is_some_and(|i| i.active) {
            self.inactive = 0;
            return Ok(());
        }
        self.inactive += 1;
        if self.inactive >= 2 {
            return Err(lost(format!(
                "no message for {} s and the slot is not streaming on the server (its walsender ended)",
                self.last_message.elapsed().as_secs()
            )));
        }
        Ok(())
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        // Ends the session at once, so the slot is free for the next one.
        self.client.abort();
    }
}

/// The primary key columns of a table (pgoutput marks every column as key
/// for REPLICA IDENTITY FULL).
async fn primary_key(pg: &Client, oid: u32) -> Result<Vec<String>, SourceError> {
    let rows = pg
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary",
            &[&oid],
        )
        .await
        .map_err(|e| SourceError::query("reading primary keys", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The replication connection's settings, from the same connection string
/// (URL or key=value, sslmode/sslrootcert) the query connections use.
/// Also how long starting may take (the string's `connect_timeout`, or
/// the query connections' default).
fn replication_config(spec: &StreamSpec<'_>) -> Result<(ReplicationConfig, Duration), SourceError> {
    let (cfg, tls) = parse_connection(spec.conn, spec.password)?;
    // parse_connection always sets one.
    let timeout = cfg
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(15));
    let (host, port) = host_port(&cfg);
    let user = cfg.get_user().ok_or_else(|| {
        SourceError::InvalidConnectionString(
            "no user given; add user=... or postgres://USER@host/db".into(),
        )
    })?;
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = cfg.get_dbname().unwrap_or(user);
    let tls = match tls.mode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: WireSsl::Prefer,
            ..TlsConfig::default()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(tls.root_cert.clone()),
        SslMode::VerifyFull => TlsConfig::verify_full(tls.root_cert.clone()),
    };
    let options = match cfg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {OUTPUT_OPTIONS}"),
        _ => OUTPUT_OPTIONS.to_owned(),
    };
    let config =
        ReplicationConfig::new(host, user, password, database, spec.slot, spec.publication)
            .with_port(port)
            .with_tls(tls)
            .with_start_lsn(pgwire_replication::Lsn::from_u64(spec.start.0))
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(STATUS_INTERVAL)
            .with_buffer_size(BUFFER_EVENTS)
            .with_options(options)
            .with_application_name("pgpipe");
    Ok((config, timeout))
}

/// A replication-connection error as a [`SourceError`], classified like
/// the query connection's (transient ones make the worker reconnect with
/// backoff). The crate's messages carry no password.
fn wire_error(
    slot: &str,
    publication: &str,
    context: &str,
    e: &pgwire_replication::PgWireError,
) -> SourceError {
    use pgwire_replication::PgWireError as W;
    let reason = e.to_string();
    let context = format!("{context} of slot {slot:?}");
    match e {
        W::Io(_) | W::Task(_) => SourceError::ConnectionLost { context, reason },
        W::Auth(r) => SourceError::AuthFailed {
            target: context,
            user: String::new(),
            reason: r.clone(),
        },
        W::Tls(r) => SourceError::Tls {
            target: context,
            reason: r.clone(),
        },
        W::Server(r) => {
            if let Some(e) = slot_error_text(slot, publication, r) {
                e
            } else if r.contains("SQLSTATE 57P") || r.contains("SQLSTATE 08") || r.contains("53300")
            {
                // Shutdown, termination, connection trouble.
                SourceError::ConnectionLost { context, reason }
            } else {
                SourceError::Query { context, reason }
            }
        }
        _ => SourceError::Protocol { context, reason },
    }
}

struct RelKey {
    ncols: usize,
    /// Indexes of the columns that identify a row.
    key: Vec<usize>,
}

fn relation_key(r: &Relation, pk_names: &HashMap<u32, Vec<String>>) -> Vec<usize> {
    if r.replica_identity == b'f'
        && let Some(names) = pk_names.get(&r.oid).filter(|n| !n.is_empty())
    {
        let idx: Vec<usize> = r
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| names.contains(&c.name))
            .map(|(i, _)| i)
            .collect();
        if idx.len() == names.len() {
            return idx;
        }
    }
    r.columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect()
}

fn cells(t: TupleData, ncols: usize) -> Result<Row, String> {
    if t.len() != ncols {
        return Err(format!(
            "a tuple has {} columns where its relation has {ncols}",
            t.len()
        ));
    }
    t.into_iter()
        .map(|v| match v {
            TupleValue::Null => Ok(Cell::Null),
            TupleValue::UnchangedToast => Ok(Cell::UnchangedToast),
            TupleValue::Text(b) => Ok(Cell::Text(b)),
            TupleValue::Binary(_) => Err("a value in binary format (not requested)".to_owned()),
        })
        .collect()
}

fn key_only(mut row: Row, key: &[usize]) -> Row {
    for (i, c) in row.iter_mut().enumerate() {
        if !key.contains(&i) {
            *c = Cell::Null;
        }
    }
    row
}

fn convert(
    m: PgOutputMessage,
    rels: &mut HashMap<u32, RelKey>,
    pk_names: &HashMap<u32, Vec<String>>,
    items: &mut Vec<TxItem>,
) -> Result<(), String> {
    fn rel(rels: &HashMap<u32, RelKey>, oid: u32) -> Result<&RelKey, String> {
        rels.get(&oid)
            .ok_or_else(|| format!("a change of relation {oid} before its Relation message"))
    }
    match m {
        PgOutputMessage::Relation(r) => {
            let key = relation_key(&r, pk_names);
            rels.insert(
                r.oid,
                RelKey {
                    ncols: r.columns.len(),
                    key,
                },
            );
            items.push(TxItem::Relation(r));
        }
        PgOutputMessage::Insert { relation_oid, new } => {
            let ncols = rel(rels, relation_oid)?.ncols;
            items.push(TxItem::Change(Change {
                relation_oid,
                kind: ChangeKind::Insert,
                row: cells(new, ncols)?,
            }));
        }
        PgOutputMessage::Update {
            relation_oid,
            old,
            new,
        } => {
            let RelKey { ncols, key } = rel(rels, relation_oid)?;
            let ncols = *ncols;
            let mut row = cells(new, ncols)?;
            if let Some(old) = old {
                let old = match old {
                    OldTuple::Key(t) | OldTuple::Full(t) => cells(t, ncols)?,
                };
                let mut key_changed = false;
                for &i in key {
                    match (&row[i], &old[i]) {
                        // An unchanged (TOASTed) key column: take its value
                        // from the old key.
                        (Cell::UnchangedToast, o) => row[i] = o.clone(),
                        (n, o) => key_changed |= n != o,
                    }
                }
                if key_changed {
                    items.push(TxItem::Change(Change {
                        relation_oid,
                        kind: ChangeKind::Delete,
                        row: key_only(old, key),
                    }));
                }
            }
            items.push(TxItem::Change(Change {
                relation_oid,
                kind: ChangeKind::Update,
                row,
            }));
        }
        PgOutputMessage::Delete { relation_oid, old } => {
            let RelKey { ncols, key } = rel(rels, relation_oid)?;
            let row = match old {
                OldTuple::Key(t) | OldTuple::Full(t) => cells(t, *ncols)?,
            };
            items.push(TxItem::Change(Change {
                relation_oid,
                kind: ChangeKind::Delete,
                row: key_only(row, key),
            }));
        }
        PgOutputMessage::Truncate { relation_oids, .. } => {
            items.push(TxItem::Truncate { relation_oids });
        }
        PgOutputMessage::Begin { .. }
        | PgOutputMessage::Commit { .. }
        | PgOutputMessage::Type { .. }
        | PgOutputMessage::Origin { .. }
        | PgOutputMessage::Message { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelationColumn;

    fn rel(identity: u8) -> Relation {
        Relation {
            oid: 7,
            schema: "s".into(),
            name: "t".into(),
            replica_identity: identity,
            columns: ["id", "v", "big"]
                .iter()
                .enumerate()
                .map(|(i, n)| RelationColumn {
                    name: (*n).into(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: i == 0 || identity == b'f',
                })
                .collect(),
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(s.into())
    }
    fn c(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn run(msgs: Vec<PgOutputMessage>, pk: &[(u32, &str)]) -> Result<Vec<TxItem>, String> {
        let mut pk_names: HashMap<u32, Vec<String>> = HashMap::new();
        for (oid, n) in pk {
            pk_names.entry(*oid).or_default().push((*n).into());
        }
        let mut rels = HashMap::new();
        let mut items = Vec::new();
        for m in msgs {
            convert(m, &mut rels, &pk_names, &mut items)?;
        }
        Ok(items)
    }

    /// A change of relation 7, as `convert` emits it.
    fn change(kind: ChangeKind, row: Vec<Cell>) -> TxItem {
        TxItem::Change(Change {
            relation_oid: 7,
            kind,
            row,
        })
    }

    /// The items of one update of a default-identity relation 7.
    fn update_by_key(old_key: Vec<TupleValue>, new: Vec<TupleValue>) -> Vec<TxItem> {
        let update = PgOutputMessage::Update {
            relation_oid: 7,
            old: Some(OldTuple::Key(old_key)),
            new,
        };
        run(vec![PgOutputMessage::Relation(rel(b'd')), update], &[]).unwrap()
    }

    #[test]
    fn key_change_is_delete_then_update() {
        let items = update_by_key(
            vec![t("1"), TupleValue::Null, TupleValue::Null],
            vec![t("2"), t("x"), TupleValue::UnchangedToast],
        );
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[1],
            change(ChangeKind::Delete, vec![c("1"), Cell::Null, Cell::Null])
        );
        assert_eq!(
            items[2],
            change(
                ChangeKind::Update,
                vec![c("2"), c("x"), Cell::UnchangedToast]
            )
        );
    }

    #[test]
    fn unchanged_toasted_key_is_filled_from_the_old_key() {
        let items = update_by_key(
            vec![t("k"), TupleValue::Null, TupleValue::Null],
            vec![TupleValue::UnchangedToast, t("x"), t("y")],
        );
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1],
            change(ChangeKind::Update, vec![c("k"), c("x"), c("y")])
        );
    }

    #[test]
    fn full_identity_uses_the_primary_key() {
        let msgs = vec![
            PgOutputMessage::Relation(rel(b'f')),
            PgOutputMessage::Update {
                relation_oid: 7,
                old: Some(OldTuple::Full(vec![t("1"), t("a"), t("b")])),
                new: vec![t("1"), t("changed"), t("b")],
            },
            PgOutputMessage::Delete {
                relation_oid: 7,
                old: OldTuple::Full(vec![t("1"), t("changed"), t("b")]),
            },
        ];
        let items = run(msgs, &[(7, "id")]).unwrap();
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(
            items[2],
            change(ChangeKind::Delete, vec![c("1"), Cell::Null, Cell::Null])
        );
    }

    #[test]
    fn changes_need_their_relation_and_column_count() {
        assert!(
            run(
                vec![PgOutputMessage::Insert {
                    relation_oid: 7,
                    new: vec![t("1")]
                }],
                &[]
            )
            .is_err()
        );
        assert!(
            run(
                vec![
                    PgOutputMessage::Relation(rel(b'd')),
                    PgOutputMessage::Insert {
                        relation_oid: 7,
                        new: vec![t("1")]
                    }
                ],
                &[]
            )
            .is_err()
        );
    }
}
