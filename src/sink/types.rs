//! Postgres → ClickHouse type mapping (a user-visible contract).
//!
//! | Postgres                         | ClickHouse                         | Notes |
//! |----------------------------------|------------------------------------|-------|
//! | `bool`                           | `Bool`                             | |
//! | `int2` / `int4` / `int8`         | `Int16` / `Int32` / `Int64`        | |
//! | `float4` / `float8`              | `Float32` / `Float64`              | `NaN`, `Infinity`, `-Infinity` kept; values are bit-exact |
//! | `numeric(p, s)`, p ≤ 76          | `Decimal(p, s)`                    | `numeric(p, s)` with s > p → `Decimal(s, s)` |
//! | `numeric` (unconstrained)        | `Decimal(76, 38)`                  | |
//! | `numeric(p, s)`, p > 76          | `String` (Postgres text)           | lossless, not a number in ClickHouse |
//! | `text`, `varchar`, `char`, `name`| `String`                           | bytes as Postgres sends them (UTF-8) |
//! | `bytea`                          | `String`                           | the raw bytes (decoded from `\x…` hex or escape format) |
//! | `date`                           | `Date32`                           | 1900-01-01 … 2299-12-31; any other date (`±infinity`, BC, `0001-01-01`, `9999-12-31`) is refused unless the column chooses a type (below) |
//! | `timestamp`                      | `DateTime64(6, 'UTC')`             | wall-clock time stored as if UTC, so it displays as in Postgres whatever the server time zone; 1900-01-01 00:00:00 … 2299-12-31 23:59:59.999999, others refused like `date` |
//! | `timestamptz`                    | `DateTime64(6, 'UTC')`             | the instant (any offset in the text is applied); the same range, in UTC |
//! | `time`                           | `Int64`                            | microseconds since midnight (`24:00:00` = 86 400 000 000) |
//! | `interval`                       | `String`                           | Postgres text (`IntervalStyle` of the source session) |
//! | `uuid`                           | `UUID`                             | |
//! | `json`, `jsonb`                  | `String`                           | Postgres text (jsonb: Postgres' normalized form) |
//! | `inet` / `cidr`                  | `String`                           | Postgres text |
//! | enum types                       | `LowCardinality(String)`           | the label |
//! | `T[]` (one dimension)            | `Array(Nullable(T'))`              | T' as above; enum elements: `Array(LowCardinality(Nullable(String)))`; a multi-dimensional value is an error; explicit lower bounds (`[0:1]={…}`) are dropped |
//!
//! A nullable column is `Nullable(T)` (enum: `LowCardinality(Nullable(String))`).
//! ClickHouse has no `Nullable(Array(…))`: a nullable array column is
//! `Array(…)` and a NULL array is stored as `[]`.
//!
//! Values that cannot be represented are errors naming the table, column
//! and value (the pipe fails, nothing is silently altered): a numeric with
//! more integer or fractional digits than the `Decimal` holds (trailing
//! zeros beyond the scale are fine), numeric `NaN`/`±Infinity` (Decimal has
//! neither), a date or timestamp outside ClickHouse's range (1900-01-01 …
//! 2299-12-31 23:59:59.999999, so also `infinity`/`-infinity` and BC), an
//! array element likewise, a multi-dimensional array.
//!
//! A column can choose another representation (`TableConfig.column_types`,
//! source column → choice; [`Kind::for_type`] decides what fits):
//!
//! | Choice          | For                          | ClickHouse      | Stored |
//! |-----------------|------------------------------|-----------------|--------|
//! | `String`        | any supported type (arrays included) | `String`        | the Postgres text as sent (UTC for `timestamptz`, e.g. `2024-01-02 03:04:05+00`; `0044-03-15 BC`; `infinity`; numeric `NaN`, `Infinity`, any precision) |
//! | `Float64`       | `numeric`                    | `Float64`       | the nearest double: `NaN`/`±Infinity` kept, digits beyond ~17 significant rounded (lossy by choice) |
//! | `Decimal(P, S)` | `numeric` (unconstrained, or `numeric(p, s)` with P − S ≥ p − s and S ≥ s) | `Decimal(P, S)` | exact; values that do not fit are refused |
//! | `Int32`         | `date`                       | `Int32`         | days since 1970-01-01 (every Postgres date); `infinity` = 2147483647, `-infinity` = −2147483648 |
//! | `Clamp`         | `date`, `timestamp`, `timestamptz` | the default type | values outside the range stored as its ends (`-infinity`, BC → 1900-01-01, `infinity`, 9999-12-31 → 2299-12-31): lossy by choice |
//! | `JSON`          | `json`, `jsonb`              | `JSON`          | ClickHouse's JSON: paths typed by ClickHouse (`1.0` reads `1`), keys sorted, whitespace and `null` members dropped (lossy by choice); objects only: any other value is refused |
//!
//! Key and `order_by` columns take only choices that keep distinct values
//! distinct (`String`, `Int32`, `Decimal`). `JSON` needs ClickHouse ≥ 25.3
//! (pgpipe sends it as text, `input_format_binary_read_json_as_string`).
//!
//! The source session must produce Postgres' default text output: `DateStyle`
//! ISO, `bytea_output` hex (escape format is accepted too), and for
//! PG < 12 `extra_float_digits = 3` so floats are exact.
//!
//! Every destination table also has the metadata columns
//! `_pgpipe_version UInt64`, `_pgpipe_is_deleted UInt8` and
//! `_pgpipe_synced_at DateTime64(6, 'UTC')`.

use crate::model::{ColumnRepr, PgType, SourceColumn};

/// Largest `Decimal` precision ClickHouse supports.
pub const MAX_DECIMAL_PRECISION: u32 = 76;

/// How one column (or array element) is converted: the Postgres text
/// parsing rules together with the ClickHouse physical type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Any text kept verbatim (text, json, inet, interval, wide numeric).
    Text,
    /// bytea: Postgres hex/escape text decoded to raw bytes, stored as String.
    Bytea,
    Date,
    /// `timestamp` (no offset in the text).
    Timestamp,
    /// `timestamptz` (offset in the text).
    TimestampTz,
    /// `time` as microseconds since midnight.
    Time,
    Uuid,
    Enum,
    /// One-dimensional array; elements are always nullable.
    Array(Box<Kind>),
    /// A `date` as Int32 days since 1970-01-01 (`column_types` `Int32`):
    /// every Postgres date, `±infinity` as the Int32 range's ends.
    DateDays,
    /// A date or timestamp kind whose out-of-range values are stored as
    /// ClickHouse's range ends (`column_types` `Clamp`) instead of refused.
    Clamp(Box<Kind>),
    /// json/jsonb as ClickHouse's `JSON` (`column_types` `JSON`), sent as
    /// text (`input_format_binary_read_json_as_string`); objects only.
    Json,
}

/// The [`ReprFits`](crate::domain::columns::ReprFits) the engine gives the
/// domain's column checks.
pub(crate) fn repr_fits(t: &PgType, repr: ColumnRepr) -> Result<bool, String> {
    Kind::for_type(t, Some(repr)).map(|k| k.keeps_values_apart())
}

impl Kind {
    /// Classifies a Postgres type. Errors name what is unsupported.
    pub(crate) fn from_pg(t: &PgType) -> Result<Kind, String> {
        Ok(match t {
            PgType::Bool => Kind::Bool,
            PgType::Int2 => Kind::Int16,
            PgType::Int4 => Kind::Int32,
            PgType::Int8 => Kind::Int64,
            PgType::Float4 => Kind::Float32,
            PgType::Float8 => Kind::Float64,
            PgType::Numeric {
                precision: None, ..
            } => Kind::Decimal {
                precision: MAX_DECIMAL_PRECISION,
                scale: 38,
            },
            PgType::Numeric {
                precision: Some(p),
                scale,
            } => {
                let s = scale.unwrap_or(0);
                let p = (*p).max(s);
                if p == 0 {
                    return Err("numeric with precision 0".into());
                }
                if p > MAX_DECIMAL_PRECISION {
                    Kind::Text
                } else {
                    Kind::Decimal {
                        precision: p,
                        scale: s,
                    }
                }
            }
            PgType::Text | PgType::Json | PgType::Jsonb | PgType::Inet | PgType::Interval => {
                Kind::Text
            }
            PgType::Bytea => Kind::Bytea,
            PgType::Date => Kind::Date,
            PgType::Timestamp => Kind::Timestamp,
            PgType::TimestampTz => Kind::TimestampTz,
            PgType::Time => Kind::Time,
            PgType::Uuid => Kind::Uuid,
            PgType::Enum { .. } => Kind::Enum,
            PgType::Unsupported => return Err("the type is not supported".into()),
            PgType::Array(inner) => match inner.as_ref() {
                PgType::Array(_) => return Err("arrays of arrays are not supported".into()),
                other => Kind::Array(Box::new(Kind::from_pg(other)?)),
            },
        })
    }

    /// The kind of a column: its type's default mapping, or the
    /// representation the user chose for it (`TableConfig.column_types`)
    /// if that can hold every value of the type. Errors say what to choose.
    pub(crate) fn for_type(t: &PgType, repr: Option<ColumnRepr>) -> Result<Kind, String> {
        let Some(repr) = repr else {
            return Kind::from_pg(t);
        };
        let kind = match (repr, t) {
            (_, PgType::Unsupported) => return Kind::from_pg(t),
            // The whole array literal, as Postgres prints it.
            (ColumnRepr::String, _) => Kind::Text,
            (_, PgType::Array(_)) => {
                return Err(format!(
                    "{repr} does not apply to arrays; choose String (the Postgres array text) \
                     or leave the column to the default mapping"
                ));
            }
            (ColumnRepr::Float64, PgType::Numeric { .. }) => Kind::Float64,
            (
                ColumnRepr::Decimal { precision, scale },
                PgType::Numeric {
                    precision: src_p,
                    scale: src_s,
                },
            ) => {
                if let Some(p) = src_p {
                    let s = src_s.unwrap_or(0);
                    let p = (*p).max(s);
                    if precision - scale < p - s || scale < s {
                        return Err(format!(
                            "{repr} cannot hold every numeric({p}, {s}) value: it needs at least \
                             {} integer and {s} fractional digits",
                            p - s
                        ));
                    }
                }
                Kind::Decimal { precision, scale }
            }
            (ColumnRepr::Int32, PgType::Date) => Kind::DateDays,
            (ColumnRepr::Clamp, PgType::Date | PgType::Timestamp | PgType::TimestampTz) => {
                Kind::Clamp(Box::new(Kind::from_pg(t)?))
            }
            (ColumnRepr::Json, PgType::Json | PgType::Jsonb) => Kind::Json,
            _ => {
                return Err(format!(
                    "{repr} is not a representation of this type; choose one of: {}",
                    choices(t)
                ));
            }
        };
        Ok(kind)
    }

    /// Whether distinct source values always stay distinct (a key or
    /// order_by column may only use such a representation).
    pub(crate) fn keeps_values_apart(&self) -> bool {
        !matches!(self, Kind::Clamp(_) | Kind::Json)
            && !matches!(self, Kind::Float64 | Kind::Float32)
    }

    /// The ClickHouse type of a value of this kind, without nullability.
    fn base_type(&self) -> String {
        match self {
            Kind::Bool => "Bool".into(),
            Kind::Int16 => "Int16".into(),
            Kind::Int32 => "Int32".into(),
            Kind::Int64 | Kind::Time => "Int64".into(),
            Kind::Float32 => "Float32".into(),
            Kind::Float64 => "Float64".into(),
            Kind::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
            Kind::Text | Kind::Bytea => "String".into(),
            Kind::Date => "Date32".into(),
            Kind::Timestamp | Kind::TimestampTz => "DateTime64(6, 'UTC')".into(),
            Kind::Uuid => "UUID".into(),
            Kind::Enum => "LowCardinality(String)".into(),
            Kind::Array(elem) => format!("Array({})", elem.ch_type(true)),
            Kind::DateDays => "Int32".into(),
            Kind::Clamp(inner) => inner.base_type(),
            Kind::Json => "JSON".into(),
        }
    }

    /// The ClickHouse type, in the canonical spelling `system.columns` uses.
    pub(crate) fn ch_type(&self, nullable: bool) -> String {
        match (self, nullable) {
            (Kind::Array(_), _) | (_, false) => self.base_type(),
            (Kind::Enum, true) => "LowCardinality(Nullable(String))".into(),
            (_, true) => format!("Nullable({})", self.base_type()),
        }
    }

    /// Whether a ClickHouse column of this kind can hold NULL.
    pub(crate) fn can_be_nullable(&self) -> bool {
        !matches!(self, Kind::Array(_))
    }
}

/// The `column_types` choices for a source type, for messages.
pub fn choices(t: &PgType) -> &'static str {
    match t {
        PgType::Numeric { .. } => "String, Float64, Decimal(P, S)",
        PgType::Date => "String, Int32, Clamp",
        PgType::Timestamp | PgType::TimestampTz => "String, Clamp",
        PgType::Json | PgType::Jsonb => "String, JSON",
        PgType::Unsupported => "none",
        _ => "String",
    }
}

/// The ClickHouse type pgpipe creates for a source column (see the table in
/// the module docs), with its `column_types` choice applied.
pub fn clickhouse_type(column: &SourceColumn) -> Result<String, String> {
    let kind = Kind::for_column(column)?;
    Ok(kind.ch_type(!column.not_null && kind.can_be_nullable()))
}

impl Kind {
    /// [`Kind::for_type`] of a column; errors name the column.
    pub(crate) fn for_column(c: &SourceColumn) -> Result<Kind, String> {
        Kind::for_type(&c.pg_type, c.repr)
            .map_err(|e| format!("column {:?} ({}): {e}", c.name, c.type_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(p: Option<u32>, s: Option<u32>) -> PgType {
        PgType::Numeric {
            precision: p,
            scale: s,
        }
    }

    #[test]
    fn maps_types() {
        let k = |t: &PgType, n| Kind::from_pg(t).map(|k| k.ch_type(n)).unwrap();
        assert_eq!(k(&PgType::Bool, false), "Bool");
        assert_eq!(k(&PgType::Int8, true), "Nullable(Int64)");
        assert_eq!(k(&num(Some(12), Some(2)), false), "Decimal(12, 2)");
        assert_eq!(k(&num(Some(5), None), false), "Decimal(5, 0)");
        assert_eq!(k(&num(Some(2), Some(5)), false), "Decimal(5, 5)");
        assert_eq!(k(&num(None, None), true), "Nullable(Decimal(76, 38))");
        assert_eq!(k(&num(Some(77), Some(2)), false), "String");
        assert_eq!(k(&PgType::TimestampTz, false), "DateTime64(6, 'UTC')");
        assert_eq!(
            k(&PgType::Enum { labels: vec![] }, true),
            "LowCardinality(Nullable(String))"
        );
        let arr = |t: PgType| PgType::Array(Box::new(t));
        assert_eq!(k(&arr(PgType::Int4), true), "Array(Nullable(Int32))");
        assert_eq!(
            k(&arr(PgType::Enum { labels: vec![] }), false),
            "Array(LowCardinality(Nullable(String)))"
        );
        assert!(Kind::from_pg(&arr(arr(PgType::Int4))).is_err());
    }

    #[test]
    fn chosen_column_types_map_to_their_clickhouse_types() {
        let k = |t: &PgType, r: &str| {
            Kind::for_type(t, Some(r.parse().unwrap())).map(|k| k.ch_type(true))
        };
        assert_eq!(k(&num(None, None), "String").unwrap(), "Nullable(String)");
        assert_eq!(k(&num(None, None), "Float64").unwrap(), "Nullable(Float64)");
        assert_eq!(
            k(&num(None, None), "Decimal(20, 4)").unwrap(),
            "Nullable(Decimal(20, 4))"
        );
        // Widening a constrained numeric is fine, narrowing is not.
        assert!(k(&num(Some(10), Some(2)), "Decimal(12, 4)").is_ok());
        assert!(k(&num(Some(10), Some(2)), "Decimal(9, 2)").is_err());
        assert!(k(&num(Some(10), Some(2)), "Decimal(10, 1)").is_err());
        assert_eq!(k(&PgType::Date, "Int32").unwrap(), "Nullable(Int32)");
        assert_eq!(k(&PgType::Date, "Clamp").unwrap(), "Nullable(Date32)");
        assert_eq!(
            k(&PgType::TimestampTz, "Clamp").unwrap(),
            "Nullable(DateTime64(6, 'UTC'))"
        );
        assert_eq!(k(&PgType::Timestamp, "String").unwrap(), "Nullable(String)");
        assert_eq!(k(&PgType::Jsonb, "JSON").unwrap(), "Nullable(JSON)");
        assert_eq!(k(&PgType::Uuid, "String").unwrap(), "Nullable(String)");
        assert_eq!(
            k(&PgType::Array(Box::new(PgType::Date)), "String").unwrap(),
            "Nullable(String)"
        );
        for (t, r) in [
            (PgType::Date, "Float64"),
            (PgType::Timestamp, "Int32"),
            (PgType::Text, "JSON"),
            (PgType::Int4, "Clamp"),
            (PgType::Array(Box::new(PgType::Date)), "Clamp"),
        ] {
            let e = k(&t, r).unwrap_err();
            assert!(e.contains(r), "{e}");
        }
    }
}
