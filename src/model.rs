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

/// Text that is not an LSN (as `Lsn::from_str` got it, cut to 40 characters).
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
    /// `boolean`.
    Bool,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `numeric(p, s)`; both None for unconstrained `numeric`.
    Numeric {
        /// Total digits.
        precision: Option<u32>,
        /// Digits after the point.
        scale: Option<u32>,
    },
    /// text, varchar(n), char(n), name, citext-like text types.
    Text,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `time` (without time zone).
    Time,
    /// `interval`.
    Interval,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `inet` or `cidr`.
    Inet,
    /// A user enum type; labels in sort order.
    Enum {
        /// The enum's labels, in sort order.
        labels: Vec<String>,
    },
    /// One-dimensional array of an element type.
    Array(Box<PgType>),
    /// Any other type (`point`, multi-dimensional arrays, ...).
    Unsupported,
}

/// A column of a source table as pgpipe replicates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Column name, unquoted.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(10,2)`, `text[]`.
    pub type_name: String,
    /// `pg_attribute.atttypid`.
    pub type_oid: u32,
    /// The type, classified.
    pub pg_type: PgType,
    /// Declared NOT NULL (the ClickHouse column is then not Nullable).
    pub not_null: bool,
    /// `pg_attribute.attnum`: stays with the column through a rename or a
    /// type change (how a rename is told from a drop and an add); 0 when
    /// unknown.
    pub attnum: i16,
    /// `atttypmod` (-1 for none): pgoutput's Relation message carries it,
    /// so e.g. varchar(10) -> varchar(20) is seen.
    pub typmod: i32,
    /// The representation the user chose for the column
    /// (`TableConfig.column_types`); None: the default mapping. Set only on
    /// replicated views, never by the source's description.
    pub repr: Option<ColumnRepr>,
}

/// A per-column ClickHouse representation chosen instead of the default
/// mapping (`TableConfig.column_types`, see the table in `sink::types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnRepr {
    /// `String`: the Postgres text, verbatim.
    String,
    /// `Float64` for a numeric: NaN and ±Infinity kept, digits beyond a
    /// double's precision rounded (the user's choice).
    Float64,
    /// `Decimal(P, S)` for a numeric: values that do not fit are refused.
    Decimal {
        /// P: total digits, 1..=76.
        precision: u32,
        /// S: digits after the point, at most P.
        scale: u32,
    },
    /// `Int32` for a date: days since 1970-01-01; `infinity` / `-infinity`
    /// are 2147483647 / -2147483648.
    Int32,
    /// `Clamp` for a date or timestamp: the default type, with values
    /// outside ClickHouse's range stored as the range's ends.
    Clamp,
    /// `JSON` for json / jsonb: ClickHouse's JSON type (objects only).
    Json,
}

impl fmt::Display for ColumnRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnRepr::String => f.write_str("String"),
            ColumnRepr::Float64 => f.write_str("Float64"),
            ColumnRepr::Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            ColumnRepr::Int32 => f.write_str("Int32"),
            ColumnRepr::Clamp => f.write_str("Clamp"),
            ColumnRepr::Json => f.write_str("JSON"),
        }
    }
}

/// The `column_types` vocabulary, for messages.
pub(crate) const COLUMN_REPR_CHOICES: &str = "String, Float64, Decimal(P, S), Int32, Clamp, JSON";

impl FromStr for ColumnRepr {
    type Err = String;
    /// Parses a `column_types` value; names are case-insensitive, blanks
    /// around Decimal's numbers are ignored.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "unknown column type {:?}; choose one of {COLUMN_REPR_CHOICES}",
                s.chars().take(60).collect::<String>()
            )
        };
        let lower = t.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "string" => ColumnRepr::String,
            "float64" => ColumnRepr::Float64,
            "int32" => ColumnRepr::Int32,
            "clamp" => ColumnRepr::Clamp,
            "json" => ColumnRepr::Json,
            _ => {
                let args = lower
                    .strip_prefix("decimal")
                    .map(str::trim_start)
                    .and_then(|r| r.strip_prefix('('))
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                let (p, sc) = args.split_once(',').ok_or_else(|| {
                    format!("column type {t:?}: write Decimal(P, S), e.g. Decimal(20, 4)")
                })?;
                let num = |v: &str| v.trim().parse::<u32>().ok();
                let (Some(precision), Some(scale)) = (num(p), num(sc)) else {
                    return Err(format!(
                        "column type {t:?}: P and S must be numbers, e.g. Decimal(20, 4)"
                    ));
                };
                if !(1..=76).contains(&precision) || scale > precision {
                    return Err(format!(
                        "column type {t:?}: ClickHouse Decimal needs 1 <= P <= 76 and 0 <= S <= P"
                    ));
                }
                ColumnRepr::Decimal { precision, scale }
            }
        })
    }
}

/// A source table as described by the catalog: what the snapshot, CDC and
/// the ClickHouse DDL work from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// Schema name, unquoted.
    pub schema: String,
    /// Table name, unquoted.
    pub name: String,
    /// `pg_class.oid`, how pgoutput names the relation.
    pub oid: u32,
    /// Columns in attribute order (dropped columns excluded).
    pub columns: Vec<SourceColumn>,
    /// Indexes into `columns` of the primary key (or replica identity
    /// index), in key order. Never empty for a table pgpipe accepts.
    pub key: Vec<usize>,
    /// Planner estimates, for partitioning the snapshot (for a partitioned
    /// table, the sums over its leaf partitions).
    pub estimated_rows: u64,
    /// Heap pages (`relpages`): snapshot partitions are page ranges.
    pub pages: u64,
    /// A partitioned table (relkind 'p'): it has no rows of its own; its
    /// leaf partitions are copied and their changes are published through
    /// it (`publish_via_partition_root`).
    pub partitioned: bool,
    /// Stored generated columns not in `columns`: PostgreSQL before 18
    /// cannot send them through logical replication.
    pub generated_columns: Vec<String>,
}

/// One value in Postgres' text output format (unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// The value in text output format.
    Text(Vec<u8>),
    /// pgoutput's "unchanged TOAST value": the column kept its old value.
    UnchangedToast,
}

/// One row: a cell per column, in the table's column order.
pub type Row = Vec<Cell>;

/// Many rows in two reused buffers (the snapshot's hot path: no allocation
/// per row or per cell). Row `i`'s cells are
/// `cells[i * ncols..(i + 1) * ncols]`, each a byte range of `data` holding
/// the unescaped text value, or None for NULL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBatch {
    /// Cells per row.
    pub ncols: usize,
    /// The text values of all cells, back to back.
    pub data: Vec<u8>,
    /// Each cell's byte range in `data` (None for NULL), row after row.
    pub cells: Vec<Option<(usize, usize)>>,
}

impl RowBatch {
    /// An empty batch of rows of `ncols` cells.
    pub fn new(ncols: usize) -> RowBatch {
        RowBatch {
            ncols,
            ..RowBatch::default()
        }
    }

    /// Empties the batch, keeping its buffers for the next rows.
    pub fn clear(&mut self) {
        self.data.clear();
        self.cells.clear();
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.cells.len().checked_div(self.ncols).unwrap_or(0)
    }

    /// No rows.
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

/// What a CDC change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new row.
    Insert,
    /// New values for an existing row (matched by key).
    Update,
    /// The row is gone (a soft delete in ClickHouse).
    Delete,
}

/// One row change from CDC. `row` has one cell per column of the relation
/// as last described by a Relation message; for a delete, only the key
/// columns are set (others Null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The table (`Relation::oid`).
    pub relation_oid: u32,
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// New values (key values for a delete).
    pub row: Row,
}

/// A relation as described by pgoutput (sent before the first change of a
/// table in a session and again after its schema changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID; changes name their table by it.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in the order changes carry their values.
    pub columns: Vec<RelationColumn>,
}

/// A column of a pgoutput Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// `atttypmod` (-1 for none).
    pub type_modifier: i32,
    /// Part of the replica identity (key) columns.
    pub is_key: bool,
}

/// One item of a transaction, in WAL order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxItem {
    /// A table's description (before its first change, and after a schema change).
    Relation(Relation),
    /// A row change.
    Change(Change),
    /// The tables were truncated.
    Truncate {
        /// The truncated tables (`Relation::oid`).
        relation_oids: Vec<u32>,
    },
}

/// A committed transaction, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Source transaction id.
    pub xid: u32,
    /// LSN of the commit record: the version of every change in it.
    pub commit_lsn: Lsn,
    /// End of the commit record: where the slot may be advanced to once the
    /// transaction is in ClickHouse.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC (the source's clock).
    pub commit_time_us: i64,
    /// The transaction's relations and changes, in WAL order.
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

    #[test]
    fn column_types_parse_to_their_canonical_spelling() {
        for (text, canon) in [
            ("String", "String"),
            ("string", "String"),
            (" Float64 ", "Float64"),
            ("Decimal(20,4)", "Decimal(20, 4)"),
            ("decimal( 76 , 0 )", "Decimal(76, 0)"),
            ("Int32", "Int32"),
            ("CLAMP", "Clamp"),
            ("json", "JSON"),
        ] {
            assert_eq!(text.parse::<ColumnRepr>().unwrap().to_string(), canon);
        }
        for bad in [
            "",
            "Date32",
            "Decimal",
            "Decimal(0, 0)",
            "Decimal(5, 6)",
            "Decimal(77, 2)",
            "Decimal(a, b)",
        ] {
            assert!(bad.parse::<ColumnRepr>().is_err(), "{bad}");
        }
    }
}
