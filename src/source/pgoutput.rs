//! Decoder for the pgoutput logical replication protocol, version 1
//! (<https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>).
//! Total on any input: malformed bytes give a [`DecodeError`], never a
//! panic, and no allocation is sized by an untrusted count beyond the bytes
//! actually present.

use crate::model::{Lsn, Relation, RelationColumn};

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`
    Null,
    /// `u`: an unchanged TOASTed value (not sent).
    UnchangedToast,
    /// `t`: the text output of the value.
    Text(Vec<u8>),
    /// `b`: binary format (only sent when the `binary` option is on; pgpipe
    /// never asks for it).
    Binary(Vec<u8>),
}

/// A row as sent: one value per column of the relation.
pub type TupleData = Vec<TupleValue>;

/// The old row sent with an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity columns (others null).
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

/// One decoded pgoutput message (the payload of an XLogData record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: a transaction starts.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: the transaction commits.
    Commit {
        /// Unused by the protocol so far (0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record.
        end_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// `O`: the transaction came from another node (replication origin).
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// `R`: a table's description.
    Relation(Relation),
    /// `Y`: a data type's name (sent before a Relation using a non-builtin type).
    Type {
        /// Type OID.
        oid: u32,
        /// Type's schema.
        schema: String,
        /// Type name.
        name: String,
    },
    /// `I`: a new row.
    Insert {
        /// The table.
        relation_oid: u32,
        /// The row.
        new: TupleData,
    },
    /// `U`: a changed row.
    Update {
        /// The table.
        relation_oid: u32,
        /// Old key or row, when the key changed or with REPLICA IDENTITY FULL.
        old: Option<OldTuple>,
        /// The new row.
        new: TupleData,
    },
    /// `D`: a deleted row.
    Delete {
        /// The table.
        relation_oid: u32,
        /// Its key (or whole row with REPLICA IDENTITY FULL).
        old: OldTuple,
    },
    /// `T`: tables truncated.
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        /// The tables.
        relation_oids: Vec<u32>,
    },
    /// `M`: a `pg_logical_emit_message` message.
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// The prefix it was emitted with.
        prefix: String,
        /// Its payload.
        content: Vec<u8>,
    },
}

/// Why bytes are not a valid pgoutput message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// A message type byte pgpipe does not know.
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownMessage(u8),
    /// The message ends before a field.
    #[error("pgoutput message {msg:?} is truncated at byte {at} (reading {what})")]
    Truncated {
        /// Message type.
        msg: char,
        /// The field being read.
        what: &'static str,
        /// Byte offset where the bytes ran out.
        at: usize,
    },
    #[error("pgoutput message {msg:?}: invalid {what}")]
    /// A field holds a value it may not.
    Invalid {
        /// Message type.
        msg: char,
        /// The field and what is wrong with it.
        what: String,
    },
    #[error("pgoutput message {msg:?} has {extra} unexpected trailing bytes")]
    /// Bytes left over after the message.
    TrailingBytes {
        /// Message type.
        msg: char,
        /// How many.
        extra: usize,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    msg: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                msg: self.msg,
                what,
                at: self.pos,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }
    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                msg: self.msg,
                what,
                at: self.buf.len(),
            });
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::Invalid {
            msg: self.msg,
            what: format!("{what} (not UTF-8)"),
        })?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }
    fn invalid(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            msg: self.msg,
            what: what.into(),
        }
    }
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| self.invalid(format!("{what} {n}")))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.count("column count")?;
        // Every column takes at least one byte: never preallocate beyond that.
        let mut out = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let v = match self.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                k @ (b't' | b'b') => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| self.invalid(format!("value length {len}")))?;
                    let bytes = self.take(len, "value")?.to_vec();
                    if k == b't' {
                        TupleValue::Text(bytes)
                    } else {
                        TupleValue::Binary(bytes)
                    }
                }
                k => return Err(self.invalid(format!("tuple column kind {k:#04x}"))),
            };
            out.push(v);
        }
        Ok(out)
    }

    fn new_tuple(&mut self) -> Result<TupleData, DecodeError> {
        match self.u8("tuple marker")? {
            b'N' => self.tuple(),
            k => Err(self.invalid(format!("tuple marker {k:#04x} where 'N' was expected"))),
        }
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, DecodeError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            k => Err(self.invalid(format!("old tuple marker {k:#04x}"))),
        }
    }
}

/// Decodes one pgoutput (protocol version 1) message.
pub fn decode(buf: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader {
        buf,
        pos: 1,
        msg: char::from(tag),
    };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => {
            let oid = r.u32("relation oid")?;
            let schema = r.string("namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.count("column count")?;
            let mut columns = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.string("column name")?;
                let type_oid = r.u32("column type oid")?;
                let type_modifier = r.i32("column type modifier")?;
                columns.push(RelationColumn {
                    name,
                    type_oid,
                    type_modifier,
                    is_key: flags & 1 == 1,
                });
            }
            PgOutputMessage::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutputMessage::Type {
            oid: r.u32("type oid")?,
            schema: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_oid = r.u32("relation oid")?;
            let new = r.new_tuple()?;
            PgOutputMessage::Insert { relation_oid, new }
        }
        b'U' => {
            let relation_oid = r.u32("relation oid")?;
            let marker = r.u8("tuple marker")?;
            let (old, new) = if marker == b'N' {
                (None, r.tuple()?)
            } else {
                let old = r.old_tuple(marker)?;
                (Some(old), r.new_tuple()?)
            };
            PgOutputMessage::Update {
                relation_oid,
                old,
                new,
            }
        }
        b'D' => {
            let relation_oid = r.u32("relation oid")?;
            let marker = r.u8("tuple marker")?;
            PgOutputMessage::Delete {
                relation_oid,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = r.i32("relation count")?;
            let n = usize::try_from(n).map_err(|_| r.invalid(format!("relation count {n}")))?;
            let options = r.u8("options")?;
            let mut relation_oids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_oids.push(r.u32("relation oid")?);
            }
            PgOutputMessage::Truncate {
                options,
                relation_oids,
            }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.i32("content length")?;
            let len =
                usize::try_from(len).map_err(|_| r.invalid(format!("content length {len}")))?;
            let content = r.take(len, "content")?.to_vec();
            PgOutputMessage::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            msg: r.msg,
            extra: r.remaining(),
        });
    }
    Ok(msg)
}

/// Encodes a message the way pgoutput does (for tests and fixtures).
pub fn encode(msg: &PgOutputMessage) -> Vec<u8> {
    let mut b = Vec::new();
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    fn tuple(b: &mut Vec<u8>, t: &TupleData) {
        b.extend_from_slice(&(t.len() as i16).to_be_bytes());
        for v in t {
            match v {
                TupleValue::Null => b.push(b'n'),
                TupleValue::UnchangedToast => b.push(b'u'),
                TupleValue::Text(x) | TupleValue::Binary(x) => {
                    b.push(if matches!(v, TupleValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    b.extend_from_slice(&(x.len() as i32).to_be_bytes());
                    b.extend_from_slice(x);
                }
            }
        }
    }
    fn old(b: &mut Vec<u8>, o: &OldTuple) {
        match o {
            OldTuple::Key(t) => {
                b.push(b'K');
                tuple(b, t);
            }
            OldTuple::Full(t) => {
                b.push(b'O');
                tuple(b, t);
            }
        }
    }
    match msg {
        PgOutputMessage::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            b.push(b'B');
            b.extend_from_slice(&final_lsn.0.to_be_bytes());
            b.extend_from_slice(&commit_time.to_be_bytes());
            b.extend_from_slice(&xid.to_be_bytes());
        }
        PgOutputMessage::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            b.push(b'C');
            b.push(*flags);
            b.extend_from_slice(&commit_lsn.0.to_be_bytes());
            b.extend_from_slice(&end_lsn.0.to_be_bytes());
            b.extend_from_slice(&commit_time.to_be_bytes());
        }
        PgOutputMessage::Origin { commit_lsn, name } => {
            b.push(b'O');
            b.extend_from_slice(&commit_lsn.0.to_be_bytes());
            s(&mut b, name);
        }
        PgOutputMessage::Relation(r) => {
            b.push(b'R');
            b.extend_from_slice(&r.oid.to_be_bytes());
            s(&mut b, &r.schema);
            s(&mut b, &r.name);
            b.push(r.replica_identity);
            b.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                b.push(u8::from(c.is_key));
                s(&mut b, &c.name);
                b.extend_from_slice(&c.type_oid.to_be_bytes());
                b.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        PgOutputMessage::Type { oid, schema, name } => {
            b.push(b'Y');
            b.extend_from_slice(&oid.to_be_bytes());
            s(&mut b, schema);
            s(&mut b, name);
        }
        PgOutputMessage::Insert { relation_oid, new } => {
            b.push(b'I');
            b.extend_from_slice(&relation_oid.to_be_bytes());
            b.push(b'N');
            tuple(&mut b, new);
        }
        PgOutputMessage::Update {
            relation_oid,
            old: o,
            new,
        } => {
            b.push(b'U');
            b.extend_from_slice(&relation_oid.to_be_bytes());
            if let Some(o) = o {
                old(&mut b, o);
            }
            b.push(b'N');
            tuple(&mut b, new);
        }
        PgOutputMessage::Delete {
            relation_oid,
            old: o,
        } => {
            b.push(b'D');
            b.extend_from_slice(&relation_oid.to_be_bytes());
            old(&mut b, o);
        }
        PgOutputMessage::Truncate {
            options,
            relation_oids,
        } => {
            b.push(b'T');
            b.extend_from_slice(&(relation_oids.len() as i32).to_be_bytes());
            b.push(*options);
            for o in relation_oids {
                b.extend_from_slice(&o.to_be_bytes());
            }
        }
        PgOutputMessage::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            b.push(b'M');
            b.push(u8::from(*transactional));
            b.extend_from_slice(&lsn.0.to_be_bytes());
            s(&mut b, prefix);
            b.extend_from_slice(&(content.len() as i32).to_be_bytes());
            b.extend_from_slice(content);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(s.as_bytes().to_vec())
    }

    fn samples() -> Vec<PgOutputMessage> {
        vec![
            PgOutputMessage::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 739_000_000_123_456,
                xid: 4242,
            },
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: -5,
            },
            PgOutputMessage::Origin {
                commit_lsn: Lsn(7),
                name: "origin_1".into(),
            },
            PgOutputMessage::Relation(Relation {
                oid: 16384,
                schema: "My Schema".into(),
                name: "t\"ab".into(),
                replica_identity: b'd',
                columns: vec![
                    RelationColumn {
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                        is_key: true,
                    },
                    RelationColumn {
                        name: "prix €".into(),
                        type_oid: 1700,
                        type_modifier: 655_366,
                        is_key: false,
                    },
                ],
            }),
            PgOutputMessage::Type {
                oid: 99999,
                schema: "public".into(),
                name: "mood".into(),
            },
            PgOutputMessage::Insert {
                relation_oid: 16384,
                new: vec![text("1"), TupleValue::Null],
            },
            PgOutputMessage::Update {
                relation_oid: 16384,
                old: None,
                new: vec![text("1"), TupleValue::UnchangedToast],
            },
            PgOutputMessage::Update {
                relation_oid: 16384,
                old: Some(OldTuple::Key(vec![text("1"), TupleValue::Null])),
                new: vec![text("2"), text("")],
            },
            PgOutputMessage::Update {
                relation_oid: 16384,
                old: Some(OldTuple::Full(vec![text("1"), text("x\ty")])),
                new: vec![text("1"), TupleValue::Binary(vec![0, 1, 2])],
            },
            PgOutputMessage::Delete {
                relation_oid: 16384,
                old: OldTuple::Key(vec![text("2"), TupleValue::Null]),
            },
            PgOutputMessage::Delete {
                relation_oid: 16384,
                old: OldTuple::Full(vec![text("2"), text("3.5")]),
            },
            PgOutputMessage::Truncate {
                options: 3,
                relation_oids: vec![1, 2, 16384],
            },
            PgOutputMessage::Message {
                transactional: true,
                lsn: Lsn(1),
                prefix: "pfx".into(),
                content: b"\0hello".to_vec(),
            },
        ]
    }

    #[test]
    fn hand_built_messages_round_trip() {
        for m in samples() {
            let bytes = encode(&m);
            assert_eq!(decode(&bytes).as_ref(), Ok(&m), "{bytes:?}");
            // Every strict prefix is an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "prefix {cut} of {m:?}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                decode(&longer),
                Err(DecodeError::TrailingBytes { .. })
            ));
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
        // Insert with a negative column count.
        assert!(decode(&[b'I', 0, 0, 0, 1, b'N', 0xff, 0xff]).is_err());
        // Insert with a value length past the end.
        assert!(decode(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0x7f, 0xff, 0xff, 0xff]).is_err());
        // Huge truncate count with no data does not allocate it.
        assert!(decode(&[b'T', 0x7f, 0xff, 0xff, 0xff, 0]).is_err());
        // Non-UTF-8 name.
        assert!(decode(&[b'Y', 0, 0, 0, 1, 0xff, 0, 0]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_messages(
            idx in 0usize..13,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = encode(&samples()[idx]);
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let n = bytes.len();
            let _ = decode(&bytes[..=cut % n]);
            let _ = decode(&bytes);
        }
    }
}
