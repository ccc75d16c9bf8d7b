//! Change data capture through the SQL interface of logical decoding
//! (`pg_logical_slot_peek_binary_changes` with pgoutput), assembled into
//! committed transactions.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::pgoutput::{self, OldTuple, PgOutputMessage, TupleData, TupleValue};
use super::slot::{parse_lsn, slot_error, slot_info};
use super::{SourceError, quote_ident};
use crate::model::{Cell, Change, ChangeKind, Lsn, Relation, Row, Transaction, TxItem};

const PEEK_SQL: &str = "SELECT lsn::text, xid::text, data \
     FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
          'proto_version', '1', 'publication_names', $3)";

/// Reads (without consuming) the committed transactions after the slot's
/// confirmed position, in commit order, about `max_changes` pgoutput
/// messages' worth (0: no limit). Postgres stops only at transaction
/// boundaries, so one large transaction is returned whole, whatever
/// `max_changes` says. Consume with [`advance_slot`] to a transaction's
/// `end_lsn` once it is stored.
///
/// Each transaction's items are in order; a [`TxItem::Relation`] precedes
/// the first change of each table in every call (each call is a new
/// decoding session) and follows a schema change, so compare it with the
/// known schema rather than treating every one as a change. Rows have one
/// cell per column of the latest Relation. An UPDATE that changes the key
/// is returned as a Delete of the old key followed by the Update. A delete
/// row has its key columns set, the others Null.
///
/// With PostgreSQL 15+ transactions without published changes are not
/// sent; when nothing comes back, the slot may be advanced to a
/// [`super::current_wal_lsn`] taken *before* this call, so it does not pin
/// WAL of unrelated activity.
pub async fn read_changes(
    client: &Client,
    slot: &str,
    publication: &str,
    max_changes: usize,
) -> Result<Vec<Transaction>, SourceError> {
    let limit: Option<i32> =
        (max_changes > 0).then(|| i32::try_from(max_changes).unwrap_or(i32::MAX));
    // publication_names is parsed as a list of identifiers: quote it.
    let pubs = quote_ident(publication);
    let ctx = "reading changes";
    let params: [&(dyn ToSql + Sync); 3] = [&slot, &limit, &pubs];
    let stream = client
        .query_raw(PEEK_SQL, params)
        .await
        .map_err(|e| slot_error(slot, Some(publication), ctx, &e))?;
    futures::pin_mut!(stream);

    // Phase 1: decode into complete transactions of raw messages. (No
    // other query may run on this connection until the stream is drained.)
    let mut raw: Vec<RawTx> = Vec::new();
    let mut open: Option<RawTx> = None;
    let mut full_identity: HashSet<u32> = HashSet::new();
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| slot_error(slot, Some(publication), ctx, &e))?
    {
        let data: &[u8] = row.try_get(2).map_err(|e| SourceError::query(ctx, &e))?;
        let msg = pgoutput::decode(data).map_err(|e| SourceError::Protocol {
            context: format!(
                "decoding changes of slot {slot:?} at {}",
                row.get::<_, &str>(0)
            ),
            reason: e.to_string(),
        })?;
        match msg {
            PgOutputMessage::Begin { final_lsn, xid, .. } => {
                if open.is_some() {
                    tracing::warn!(
                        slot,
                        xid,
                        "BEGIN inside an open transaction; dropping the open one"
                    );
                }
                open = Some(RawTx {
                    xid,
                    final_lsn,
                    msgs: Vec::new(),
                    commit: None,
                });
            }
            PgOutputMessage::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => match open.take() {
                Some(mut tx) => {
                    if tx.final_lsn != commit_lsn {
                        return Err(SourceError::Protocol {
                            context: format!("reading changes of slot {slot:?}"),
                            reason: format!(
                                "COMMIT at {commit_lsn} closes a transaction that began for {}",
                                tx.final_lsn
                            ),
                        });
                    }
                    tx.commit = Some((commit_lsn, end_lsn, commit_time));
                    raw.push(tx);
                }
                None => tracing::warn!(slot, %commit_lsn, "COMMIT without BEGIN; ignored"),
            },
            PgOutputMessage::Type { .. }
            | PgOutputMessage::Origin { .. }
            | PgOutputMessage::Message { .. } => {}
            other => {
                if let PgOutputMessage::Relation(r) = &other
                    && r.replica_identity == b'f'
                {
                    full_identity.insert(r.oid);
                }
                match open.as_mut() {
                    Some(tx) => tx.msgs.push(other),
                    None => {
                        return Err(SourceError::Protocol {
                            context: format!("reading changes of slot {slot:?}"),
                            reason: "a change outside of a transaction".into(),
                        });
                    }
                }
            }
        }
    }
    if let Some(tx) = open {
        tracing::debug!(
            slot,
            xid = tx.xid,
            "ignoring an incomplete trailing transaction"
        );
    }

    // Phase 2: primary keys of REPLICA IDENTITY FULL tables (pgoutput marks
    // every column as key for those).
    let mut pk_names: HashMap<u32, Vec<String>> = HashMap::new();
    for oid in full_identity {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1 AND i.indisprimary",
                &[&oid],
            )
            .await
            .map_err(|e| SourceError::query("reading primary keys", &e))?;
        pk_names.insert(oid, rows.iter().map(|r| r.get(0)).collect());
    }

    // Phase 3: convert to the model.
    let mut rels: HashMap<u32, RelKey> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for tx in raw {
        let Some((commit_lsn, end_lsn, commit_time_us)) = tx.commit else {
            continue;
        };
        let mut items = Vec::with_capacity(tx.msgs.len());
        for m in tx.msgs {
            convert(m, &mut rels, &pk_names, &mut items).map_err(|reason| {
                SourceError::Protocol {
                    context: format!("reading changes of slot {slot:?} (xid {})", tx.xid),
                    reason,
                }
            })?;
        }
        out.push(Transaction {
            xid: tx.xid,
            commit_lsn,
            end_lsn,
            commit_time_us,
            items,
        });
    }
    tracing::debug!(slot, transactions = out.len(), "read changes");
    Ok(out)
}

struct RawTx {
    xid: u32,
    final_lsn: Lsn,
    msgs: Vec<PgOutputMessage>,
    /// Commit LSN, end LSN, commit time.
    commit: Option<(Lsn, Lsn, i64)>,
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
    let rel = |rels: &HashMap<u32, RelKey>, oid: u32| -> Result<(usize, Vec<usize>), String> {
        rels.get(&oid)
            .map(|r| (r.ncols, r.key.clone()))
            .ok_or_else(|| format!("a change of relation {oid} before its Relation message"))
    };
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
            let (ncols, _) = rel(rels, relation_oid)?;
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
            let (ncols, key) = rel(rels, relation_oid)?;
            let mut row = cells(new, ncols)?;
            if let Some(old) = old {
                let old = match old {
                    OldTuple::Key(t) | OldTuple::Full(t) => cells(t, ncols)?,
                };
                let mut key_changed = false;
                for &i in &key {
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
                        row: key_only(old, &key),
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
            let (ncols, key) = rel(rels, relation_oid)?;
            let row = match old {
                OldTuple::Key(t) | OldTuple::Full(t) => cells(t, ncols)?,
            };
            items.push(TxItem::Change(Change {
                relation_oid,
                kind: ChangeKind::Delete,
                row: key_only(row, &key),
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

/// Consumes the slot up to `lsn` (a transaction's `end_lsn`): decoding
/// resumes after it and the server may recycle older WAL. Idempotent: an
/// `lsn` at or before the slot's confirmed position is a no-op. Returns
/// the slot's confirmed position afterwards.
pub async fn advance_slot(client: &Client, slot: &str, lsn: Lsn) -> Result<Lsn, SourceError> {
    let ctx = "advancing the replication slot";
    let info = slot_info(client, slot)
        .await?
        .ok_or_else(|| SourceError::SlotLost {
            slot: slot.into(),
            reason: "the slot does not exist (it was dropped)".into(),
        })?;
    if info.is_lost() {
        return Err(SourceError::SlotLost {
            slot: slot.into(),
            reason: "the slot was invalidated (wal_status = lost): the server removed WAL it still needed, see max_slot_wal_keep_size".into(),
        });
    }
    if lsn <= info.confirmed_flush {
        return Ok(info.confirmed_flush);
    }
    let target = lsn.to_string();
    let row = client
        .query_one(
            "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &target],
        )
        .await
        .map_err(|e| slot_error(slot, None, ctx, &e))?;
    let end = parse_lsn(row.get(0), ctx)?;
    tracing::debug!(slot, to = %end, "advanced replication slot");
    Ok(end)
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

    #[test]
    fn key_change_is_delete_then_update() {
        let items = run(
            vec![
                PgOutputMessage::Relation(rel(b'd')),
                PgOutputMessage::Update {
                    relation_oid: 7,
                    old: Some(OldTuple::Key(vec![
                        t("1"),
                        TupleValue::Null,
                        TupleValue::Null,
                    ])),
                    new: vec![t("2"), t("x"), TupleValue::UnchangedToast],
                },
            ],
            &[],
        )
        .unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[1],
            TxItem::Change(Change {
                relation_oid: 7,
                kind: ChangeKind::Delete,
                row: vec![c("1"), Cell::Null, Cell::Null]
            })
        );
        assert_eq!(
            items[2],
            TxItem::Change(Change {
                relation_oid: 7,
                kind: ChangeKind::Update,
                row: vec![c("2"), c("x"), Cell::UnchangedToast]
            })
        );
    }

    #[test]
    fn unchanged_toasted_key_is_filled_from_the_old_key() {
        let items = run(
            vec![
                PgOutputMessage::Relation(rel(b'd')),
                PgOutputMessage::Update {
                    relation_oid: 7,
                    old: Some(OldTuple::Key(vec![
                        t("k"),
                        TupleValue::Null,
                        TupleValue::Null,
                    ])),
                    new: vec![TupleValue::UnchangedToast, t("x"), t("y")],
                },
            ],
            &[],
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1],
            TxItem::Change(Change {
                relation_oid: 7,
                kind: ChangeKind::Update,
                row: vec![c("k"), c("x"), c("y")]
            })
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
            TxItem::Change(Change {
                relation_oid: 7,
                kind: ChangeKind::Delete,
                row: vec![c("1"), Cell::Null, Cell::Null]
            })
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
