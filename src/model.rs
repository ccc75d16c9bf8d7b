//! The data-plane model shared by the Postgres source and the ClickHouse
//! sink: LSNs, source table schemas, and rows of values in Postgres' text
//! output format (what both `COPY ... TO STDOUT` (text) and pgoutput send),
//! so the snapshot and CDC go through one conversion to ClickHouse.

use std::fmt;
use std::str::FromStr;

/// A Postgres WAL position.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hex numbers like 16/B374D848")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.chars().take(40).collect());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A source column type, classified. Anything else is `Unsupported`: such a
/// column is described (pgoutput sends it, so CDC rows are projected past
/// it) but can only be excluded; kept, it is rejected at setup with the
/// column named, never replicated as garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p, s)`; both None for unconstrained `numeric`.
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    /// text, varchar(n), char(n), name, citext-like text types.
    Text,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Interval,
    Uuid,
    Json,
    Jsonb,
    Inet,
    /// A user enum type; labels in sort order.
    Enum {
        labels: Vec<String>,
    },
    /// One-dimensional array of an element type.
    Array(Box<PgType>),
    /// Any other type (`point`, multi-dimensional arrays, ...).
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(10,2)`, `text[]`.
    pub type_name: String,
    pub type_oid: u32,
    pub pg_type: PgType,
    pub not_null: bool,
    /// `pg_attribute.attnum`: stays with the column through a rename or a
    /// type change (how a rename is told from a drop and an add); 0 when
    /// unknown.
    pub attnum: i16,
    /// `atttypmod` (-1 for none): pgoutput's Relation message carries it,
    /// so e.g. varchar(10) -> varchar(20) is seen.
    pub typmod: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub schema: String,
    pub name: String,
    pub oid: u32,
    /// Columns in attribute order (dropped columns excluded).
    pub columns: Vec<SourceColumn>,
    /// Indexes into `columns` of the primary key (or replica identity
    /// index), in key order. Never empty for a table pgpipe accepts.
    pub key: Vec<usize>,
    /// Planner estimates, for partitioning the snapshot.
    pub estimated_rows: u64,
    pub pages: u64,
}

/// One value in Postgres' text output format (unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cell {
    Null,
    Text(Vec<u8>),
    /// pgoutput's "unchanged TOAST value": the column kept its old value.
    UnchangedToast,
}

pub type Row = Vec<Cell>;

/// Many rows in two reused buffers (the snapshot's hot path: no allocation
/// per row or per cell). Row `i`'s cells are
/// `cells[i * ncols..(i + 1) * ncols]`, each a byte range of `data` holding
/// the unescaped text value, or None for NULL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBatch {
    pub ncols: usize,
    pub data: Vec<u8>,
    pub cells: Vec<Option<(usize, usize)>>,
}

impl RowBatch {
    pub fn new(ncols: usize) -> RowBatch {
        RowBatch {
            ncols,
            ..RowBatch::default()
        }
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.cells.clear();
    }

    pub fn len(&self) -> usize {
        self.cells.len().checked_div(self.ncols).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Row `i`'s cells as text slices (None = NULL).
    pub fn row(&self, i: usize) -> impl ExactSizeIterator<Item = Option<&[u8]>> + '_ {
        self.cells[i * self.ncols..(i + 1) * self.ncols]
            .iter()
            .map(|c| c.map(|(s, e)| &self.data[s..e]))
    }

    /// Row `i` as owned cells.
    pub fn to_row(&self, i: usize) -> Row {
        self.row(i)
            .map(|c| c.map_or(Cell::Null, |t| Cell::Text(t.to_vec())))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One row change from CDC. `row` has one cell per column of the relation
/// as last described by a Relation message; for a delete, only the key
/// columns are set (others Null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub relation_oid: u32,
    pub kind: ChangeKind,
    pub row: Row,
}

/// A relation as described by pgoutput (sent before the first change of a
/// table in a session and again after its schema changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub is_key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxItem {
    Relation(Relation),
    Change(Change),
    Truncate { relation_oids: Vec<u32> },
}

/// A committed transaction, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u32,
    /// LSN of the commit record: the version of every change in it.
    pub commit_lsn: Lsn,
    /// End of the commit record: where the slot may be advanced to once the
    /// transaction is in ClickHouse.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC (the source's clock).
    pub commit_time_us: i64,
    pub items: Vec<TxItem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }
}
