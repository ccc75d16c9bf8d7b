//! ClickHouse SQL literals for Postgres values (a column's DEFAULT).
//!
//! The value goes through the same conversion as a written row (RowBinary
//! encoding), and the literal is built from those bytes, so a default reads
//! exactly what a row written with the value would: floats bit for bit
//! (`reinterpretAsFloat64(unhex(..))`), strings and bytea as their bytes
//! (`unhex(..)`), timestamps as microseconds. No text is spliced in
//! unescaped.

// The RowBinary value is read as the codec reads it (the same errors).
use super::codec::{decode_value, encode_value, read_uleb, take, take_arr};
use super::ident::quote_literal;
use super::types::Kind;

type R<T> = Result<T, String>;

/// `CAST(<value> AS <type>)` for a non-NULL value in Postgres text format,
/// typed as the column (`nullable` as in ClickHouse).
pub(crate) fn literal(kind: &Kind, nullable: bool, text: &[u8]) -> R<String> {
    let mut bytes = Vec::new();
    encode_value(kind, text, &mut bytes)?;
    let mut input = bytes.as_slice();
    let value = value_literal(kind, &mut input)?;
    if !input.is_empty() {
        return Err("trailing bytes after the value".into());
    }
    Ok(format!("CAST({value} AS {})", kind.ch_type(nullable)))
}

fn value_literal(kind: &Kind, input: &mut &[u8]) -> R<String> {
    let base = kind.ch_type(false);
    let mut text = Vec::new();
    Ok(match kind {
        Kind::Bool => (if take(input, 1)?[0] != 0 {
            "true"
        } else {
            "false"
        })
        .into(),
        Kind::Int16 => format!("CAST({} AS Int16)", i16::from_le_bytes(take_arr(input)?)),
        Kind::Int32 | Kind::DateDays => {
            format!("CAST({} AS Int32)", i32::from_le_bytes(take_arr(input)?))
        }
        Kind::Int64 | Kind::Time => {
            format!("CAST({} AS Int64)", i64::from_le_bytes(take_arr(input)?))
        }
        Kind::Float32 => format!(
            "reinterpretAsFloat32(unhex('{}'))",
            hex::encode(take(input, 4)?)
        ),
        Kind::Float64 => format!(
            "reinterpretAsFloat64(unhex('{}'))",
            hex::encode(take(input, 8)?)
        ),
        Kind::Timestamp | Kind::TimestampTz => format!(
            "fromUnixTimestamp64Micro(CAST({} AS Int64), 'UTC')",
            i64::from_le_bytes(take_arr(input)?)
        ),
        // Clamping happened in the encoding: the bytes are the inner kind's.
        Kind::Clamp(inner) => value_literal(inner, input)?,
        // JSON is sent as its text (input_format_binary_read_json_as_string).
        Kind::Text | Kind::Enum | Kind::Bytea | Kind::Json => {
            let n = read_uleb(input)? as usize;
            format!("CAST(unhex('{}') AS {base})", hex::encode(take(input, n)?))
        }
        Kind::Decimal { .. } | Kind::Date | Kind::Uuid => {
            decode_value(kind, input, &mut text)?;
            format!("CAST({} AS {base})", quote_literal(&text))
        }
        Kind::Array(elem) => {
            let n = read_uleb(input)?;
            let mut items = Vec::new();
            for _ in 0..n {
                if take(input, 1)?[0] != 0 {
                    items.push("NULL".to_string());
                } else {
                    items.push(value_literal(elem, input)?);
                }
            }
            format!("CAST([{}] AS {base})", items.join(", "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_typed_and_carry_no_raw_text() {
        let l = |k: Kind, t: &str| literal(&k, false, t.as_bytes()).unwrap();
        assert_eq!(l(Kind::Int32, "7"), "CAST(CAST(7 AS Int32) AS Int32)");
        assert_eq!(
            l(Kind::Text, "a'b"),
            "CAST(CAST(unhex('612762') AS String) AS String)"
        );
        assert_eq!(
            l(Kind::Float64, "1"),
            "CAST(reinterpretAsFloat64(unhex('000000000000f03f')) AS Float64)"
        );
        assert_eq!(
            l(
                Kind::Decimal {
                    precision: 10,
                    scale: 2
                },
                "3.5"
            ),
            "CAST(CAST('3.50' AS Decimal(10, 2)) AS Decimal(10, 2))"
        );
        assert_eq!(
            l(Kind::Array(Box::new(Kind::Int32)), "{1,NULL}"),
            "CAST(CAST([CAST(1 AS Int32), NULL] AS Array(Nullable(Int32))) AS Array(Nullable(Int32)))"
        );
        assert!(literal(&Kind::Int16, false, b"70000").is_err());
    }
}
