//! Postgres text output format ⇄ ClickHouse RowBinary, per [`Kind`].
//!
//! `encode_*` parse one Postgres text value and append its RowBinary bytes;
//! `decode_*` read RowBinary bytes and render Postgres text that encodes back
//! to exactly the same bytes (used to fill unchanged TOAST values).
//!
//! RowBinary layout (checked against the server in `tests/sink_ch.rs`):
//! little-endian integers and floats; Bool as one byte 0/1; String as a
//! LEB128 length then the bytes; `Nullable(T)` as a byte 1 (NULL) or 0 then
//! T; `LowCardinality(T)` as T; `Decimal(P, S)` as its unscaled integer in
//! Int32/Int64/Int128/Int256 for P ≤ 9/18/38/76; `Date32` as Int32 days since
//! 1970-01-01; `DateTime64(6)` as Int64 microseconds since the epoch; `UUID`
//! as two little-endian u64 halves (i.e. each 8-byte half of the canonical
//! byte order reversed); `Array(T)` as a LEB128 count then the elements.

use std::borrow::Cow;

use super::types::Kind;
use crate::model::Cell;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// 1900-01-01 and 2299-12-31 in days since 1970-01-01: the Date32 range.
pub(crate) const DATE32_MIN: i64 = -25_567;
pub(crate) const DATE32_MAX: i64 = 120_529;
pub(crate) const DT64_MIN: i64 = DATE32_MIN * MICROS_PER_DAY;
pub(crate) const DT64_MAX: i64 = (DATE32_MAX + 1) * MICROS_PER_DAY - 1;

type R<T> = Result<T, String>;

/// A short, printable preview of an offending value for error messages.
pub(crate) fn preview(t: &[u8]) -> String {
    let s = String::from_utf8_lossy(t);
    let mut p: String = s.chars().take(48).collect();
    if s.chars().count() > 48 {
        p.push('…');
    }
    format!("{p:?}")
}

fn as_str(t: &[u8]) -> R<&str> {
    std::str::from_utf8(t).map_err(|_| format!("invalid UTF-8 in {}", preview(t)))
}

// ---------------------------------------------------------------- encoding

/// Encodes one cell of a column whose ClickHouse type is `kind` made
/// nullable or not.
pub(crate) fn encode_cell(kind: &Kind, nullable: bool, cell: &Cell, out: &mut Vec<u8>) -> R<()> {
    encode_ref(kind, nullable, cell.into(), out)
}

/// A cell by reference: owned [`Cell`]s and the snapshot's [`RowBatch`]
/// cells encode through the same code.
///
/// [`RowBatch`]: crate::model::RowBatch
#[derive(Debug, Clone, Copy)]
pub(crate) enum CellRef<'a> {
    Null,
    Text(&'a [u8]),
    UnchangedToast,
}

impl<'a> From<&'a Cell> for CellRef<'a> {
    fn from(c: &'a Cell) -> Self {
        match c {
            Cell::Null => CellRef::Null,
            Cell::Text(t) => CellRef::Text(t),
            Cell::UnchangedToast => CellRef::UnchangedToast,
        }
    }
}

impl<'a> From<Option<&'a [u8]>> for CellRef<'a> {
    fn from(c: Option<&'a [u8]>) -> Self {
        c.map_or(CellRef::Null, CellRef::Text)
    }
}

pub(crate) fn encode_ref(kind: &Kind, nullable: bool, cell: CellRef, out: &mut Vec<u8>) -> R<()> {
    match cell {
        CellRef::Text(t) => {
            if nullable {
                out.push(0);
            }
            encode_value(kind, t, out)
        }
        CellRef::Null if nullable => {
            out.push(1);
            Ok(())
        }
        // No Nullable(Array): NULL is stored as [] (documented).
        CellRef::Null if matches!(kind, Kind::Array(_)) => {
            out.push(0);
            Ok(())
        }
        CellRef::Null => Err("NULL in a column that is not Nullable in ClickHouse \
             (the source column allows NULL now: ALTER the destination column to Nullable or resync)"
            .into()),
        CellRef::UnchangedToast => Err("unchanged TOAST value was not filled in \
             (call ChSink::fill_unchanged before writing CDC updates)"
            .into()),
    }
}

pub(crate) fn write_uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    write_uleb(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Encodes the type's zero value (a tombstone's filler for columns that are
/// not part of the key: pgoutput sends only the key of a deleted row).
pub(crate) fn encode_default(kind: &Kind, out: &mut Vec<u8>) {
    let width = match kind {
        Kind::Bool => 1,
        Kind::Int16 => 2,
        Kind::Int32 | Kind::Float32 | Kind::Date | Kind::DateDays => 4,
        Kind::Int64 | Kind::Float64 | Kind::Timestamp | Kind::TimestampTz | Kind::Time => 8,
        Kind::Decimal { precision, .. } => decimal_width(*precision),
        Kind::Uuid => 16,
        // Empty string, empty array: a zero length.
        Kind::Text | Kind::Enum | Kind::Bytea | Kind::Array(_) => 1,
        Kind::Clamp(inner) => return encode_default(inner, out),
        // The empty object: an empty string is not JSON.
        Kind::Json => return write_string(out, b"{}"),
    };
    out.extend(std::iter::repeat_n(0u8, width));
}

/// Encodes one non-NULL Postgres text value.
pub(crate) fn encode_value(kind: &Kind, t: &[u8], out: &mut Vec<u8>) -> R<()> {
    match kind {
        Kind::Bool => out.push(parse_bool(t)?),
        Kind::Int16 => {
            let v = i16::try_from(parse_i64(t)?).map_err(|_| out_of_range(t, "Int16"))?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        Kind::Int32 => {
            let v = i32::try_from(parse_i64(t)?).map_err(|_| out_of_range(t, "Int32"))?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        Kind::Int64 => out.extend_from_slice(&parse_i64(t)?.to_le_bytes()),
        Kind::Float32 => out.extend_from_slice(&parse_f32(t)?.to_le_bytes()),
        Kind::Float64 => out.extend_from_slice(&parse_f64(t)?.to_le_bytes()),
        Kind::Decimal { precision, scale } => encode_decimal(t, *precision, *scale, out)?,
        Kind::Text | Kind::Enum => write_string(out, t),
        Kind::Bytea => encode_bytea(t, out)?,
        Kind::Date => out.extend_from_slice(&date32(t, false)?.to_le_bytes()),
        Kind::Timestamp => out.extend_from_slice(&datetime64(t, false, false)?.to_le_bytes()),
        Kind::TimestampTz => out.extend_from_slice(&datetime64(t, true, false)?.to_le_bytes()),
        Kind::Clamp(inner) => match inner.as_ref() {
            Kind::Date => out.extend_from_slice(&date32(t, true)?.to_le_bytes()),
            Kind::Timestamp => out.extend_from_slice(&datetime64(t, false, true)?.to_le_bytes()),
            Kind::TimestampTz => out.extend_from_slice(&datetime64(t, true, true)?.to_le_bytes()),
            other => encode_value(other, t, out)?,
        },
        Kind::DateDays => out.extend_from_slice(&date_days(t)?.to_le_bytes()),
        Kind::Json => {
            // ClickHouse's JSON holds objects only: anything else would be
            // refused by the server without naming the column.
            if t.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
                return Err(format!(
                    "json value {} is not an object, and ClickHouse's JSON type holds objects \
                     only: store the column as String (column_types)",
                    preview(t)
                ));
            }
            write_string(out, t);
        }
        Kind::Time => out.extend_from_slice(&parse_time(t)?.to_le_bytes()),
        Kind::Uuid => {
            let u = uuid::Uuid::try_parse_ascii(t)
                .map_err(|_| format!("invalid uuid {}", preview(t)))?;
            let b = u.as_bytes();
            out.extend(b[..8].iter().rev());
            out.extend(b[8..].iter().rev());
        }
        Kind::Array(elem) => {
            let elems = parse_array(t)?;
            write_uleb(out, elems.len() as u64);
            for e in elems {
                match e {
                    None => out.push(1),
                    Some(v) => {
                        out.push(0);
                        encode_value(elem, &v, out).map_err(|e| {
                            // The element's advice may name choices that
                            // do not apply to an array.
                            format!(
                                "array element: {e} (an array column can only be stored as \
                                 String, or excluded)"
                            )
                        })?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn out_of_range(t: &[u8], ty: &str) -> String {
    format!("value {} out of range for {ty}", preview(t))
}

fn parse_bool(t: &[u8]) -> R<u8> {
    match t {
        b"t" | b"true" => Ok(1),
        b"f" | b"false" => Ok(0),
        _ => Err(format!("invalid boolean {}", preview(t))),
    }
}

fn parse_i64(t: &[u8]) -> R<i64> {
    let err = || format!("invalid integer {}", preview(t));
    let (neg, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() {
        return Err(err());
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return Err(err());
        }
        let d = i64::from(c - b'0');
        v = v
            .checked_mul(10)
            .and_then(|v| {
                if neg {
                    v.checked_sub(d)
                } else {
                    v.checked_add(d)
                }
            })
            .ok_or_else(|| out_of_range(t, "Int64"))?;
    }
    Ok(v)
}

fn special_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn parse_f64(t: &[u8]) -> R<f64> {
    let s = as_str(t)?;
    if let Some(v) = special_float(s) {
        return Ok(v);
    }
    s.parse::<f64>()
        .map_err(|_| format!("invalid float {}", preview(t)))
}

fn parse_f32(t: &[u8]) -> R<f32> {
    let s = as_str(t)?;
    if let Some(v) = special_float(s) {
        return Ok(v as f32);
    }
    s.parse::<f32>()
        .map_err(|_| format!("invalid float {}", preview(t)))
}

// ---- Decimal: a tiny 256-bit two's complement integer (4 LE u64 limbs).

type I256 = [u64; 4];

fn i256_mul_add(v: &mut I256, mul: u64, add: u64) {
    let mut carry = u128::from(add);
    for limb in v.iter_mut() {
        let x = u128::from(*limb) * u128::from(mul) + carry;
        *limb = x as u64;
        carry = x >> 64;
    }
}

fn i256_negate(v: &mut I256) {
    let mut carry = 1u128;
    for limb in v.iter_mut() {
        let x = u128::from(!*limb) + carry;
        *limb = x as u64;
        carry = x >> 64;
    }
}

/// Divides a non-negative value in place by `d`, returning the remainder.
fn i256_divrem(v: &mut I256, d: u64) -> u64 {
    let mut rem = 0u128;
    for limb in v.iter_mut().rev() {
        let x = (rem << 64) | u128::from(*limb);
        *limb = (x / u128::from(d)) as u64;
        rem = x % u128::from(d);
    }
    rem as u64
}

/// Bytes of the Decimal's storage integer for a precision.
pub(crate) fn decimal_width(precision: u32) -> usize {
    match precision {
        0..=9 => 4,
        10..=18 => 8,
        19..=38 => 16,
        _ => 32,
    }
}

fn encode_decimal(t: &[u8], precision: u32, scale: u32, out: &mut Vec<u8>) -> R<()> {
    let ty = || format!("Decimal({precision}, {scale})");
    let s = as_str(t)?;
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Err(format!(
            "numeric {s} cannot be stored in {} (ClickHouse Decimal has no NaN/Infinity): \
             choose the column's type with column_types (String or Float64)",
            ty()
        ));
    }
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(format!("invalid numeric {}", preview(t)));
    }
    let int = int.trim_start_matches('0');
    let scale_us = scale as usize;
    let frac = if frac.len() > scale_us {
        let (keep, rest) = frac.split_at(scale_us);
        if rest.bytes().any(|c| c != b'0') {
            return Err(format!(
                "numeric {} has more than {scale} fractional digits: does not fit {} \
                 (it would be rounded); choose the column's type with column_types (String \
                 keeps every digit)",
                preview(t),
                ty()
            ));
        }
        keep
    } else {
        frac
    };
    if int.len() > (precision - scale) as usize {
        return Err(format!(
            "numeric {} out of range for {}: choose the column's type with column_types \
             (String keeps every digit)",
            preview(t),
            ty()
        ));
    }
    let mut v: I256 = [0; 4];
    for c in int.bytes().chain(frac.bytes()) {
        i256_mul_add(&mut v, 10, u64::from(c - b'0'));
    }
    for _ in frac.len()..scale_us {
        i256_mul_add(&mut v, 10, 0);
    }
    if neg {
        i256_negate(&mut v);
    }
    let mut bytes = [0u8; 32];
    for (i, limb) in v.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
    }
    out.extend_from_slice(&bytes[..decimal_width(precision)]);
    Ok(())
}

// ---- bytea

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes Postgres bytea text (hex `\x…` or the legacy escape format).
pub(crate) fn decode_bytea(t: &[u8]) -> R<Cow<'_, [u8]>> {
    let err = || format!("invalid bytea {}", preview(t));
    if let Some(hex) = t.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(err());
        }
        let mut v = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            let (Some(h), Some(l)) = (hex_val(pair[0]), hex_val(pair[1])) else {
                return Err(err());
            };
            v.push(h << 4 | l);
        }
        return Ok(Cow::Owned(v));
    }
    if !t.contains(&b'\\') {
        return Ok(Cow::Borrowed(t));
    }
    let mut v = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if t[i] != b'\\' {
            v.push(t[i]);
            i += 1;
        } else if t.get(i + 1) == Some(&b'\\') {
            v.push(b'\\');
            i += 2;
        } else {
            let oct = t.get(i + 1..i + 4).ok_or_else(err)?;
            if !oct.iter().all(|c| (b'0'..=b'7').contains(c)) || oct[0] > b'3' {
                return Err(err());
            }
            v.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
            i += 4;
        }
    }
    Ok(Cow::Owned(v))
}

fn encode_bytea(t: &[u8], out: &mut Vec<u8>) -> R<()> {
    if let Some(hex) = t.strip_prefix(b"\\x") {
        // Fast path: decode straight into the output.
        if hex.len() % 2 != 0 {
            return Err(format!("invalid bytea {}", preview(t)));
        }
        write_uleb(out, (hex.len() / 2) as u64);
        for pair in hex.chunks_exact(2) {
            let (Some(h), Some(l)) = (hex_val(pair[0]), hex_val(pair[1])) else {
                return Err(format!("invalid bytea {}", preview(t)));
            };
            out.push(h << 4 | l);
        }
        return Ok(());
    }
    let v = decode_bytea(t)?;
    write_string(out, &v);
    Ok(())
}

// ---- dates and times

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant); public for the CLI and the bench, which print dates.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A cursor over ASCII text for the date/time parsers.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i < self.s.len() && self.i - start < max && self.s[self.i].is_ascii_digit() {
            v = v * 10 + i64::from(self.s[self.i] - b'0');
            self.i += 1;
        }
        let n = self.i - start;
        (n >= min).then_some((v, n))
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// `YYYY-MM-DD` (year may have more digits) → (year, month, day).
fn scan_date(sc: &mut Scan<'_>) -> Option<(i64, u32, u32)> {
    let (y, _) = sc.digits(1, 9)?;
    sc.eat(b'-').then_some(())?;
    let (m, _) = sc.digits(2, 2)?;
    sc.eat(b'-').then_some(())?;
    let (d, _) = sc.digits(2, 2)?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m as u32, d as u32))
}

/// `HH:MM:SS[.ffffff]` → microseconds.
fn scan_time(sc: &mut Scan<'_>) -> Option<i64> {
    let (h, _) = sc.digits(2, 2)?;
    sc.eat(b':').then_some(())?;
    let (mi, _) = sc.digits(2, 2)?;
    sc.eat(b':').then_some(())?;
    let (s, _) = sc.digits(2, 2)?;
    let mut frac = 0;
    if sc.eat(b'.') {
        let (f, n) = sc.digits(1, 6)?;
        frac = f * 10i64.pow(6 - n as u32);
    }
    if h > 24 || mi > 59 || s > 60 || (h == 24 && (mi, s, frac) != (0, 0, 0)) {
        return None;
    }
    Some(((h * 60 + mi) * 60 + s) * 1_000_000 + frac)
}

fn strip_bc(t: &[u8]) -> (&[u8], bool) {
    match t.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (t, false),
    }
}

/// A Postgres date or timestamp: finite (days, or microseconds since the
/// epoch) or one of the infinities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    NegInfinity,
    At(i128),
    Infinity,
}

/// Postgres `date` text (any year, BC included) → days since 1970-01-01.
fn parse_date(t: &[u8]) -> R<Moment> {
    match t {
        b"infinity" => return Ok(Moment::Infinity),
        b"-infinity" => return Ok(Moment::NegInfinity),
        _ => {}
    }
    let (body, bc) = strip_bc(t);
    let mut sc = Scan { s: body, i: 0 };
    let (y, m, d) = scan_date(&mut sc)
        .filter(|_| sc.done())
        .ok_or_else(|| format!("invalid date {} (expected DateStyle ISO)", preview(t)))?;
    // 1 BC is year 0 of the proleptic Gregorian calendar.
    let y = if bc { 1 - y } else { y };
    Ok(Moment::At(i128::from(days_from_civil(y, m, d))))
}

/// Why a value outside ClickHouse's range is refused, and the choices.
fn outside(what: &str, t: &[u8], range: &str, choices: &str) -> String {
    format!(
        "{what} {} is outside ClickHouse's range ({range}); it is not stored clamped \
         unless asked: choose the column's type with column_types ({choices})",
        preview(t)
    )
}

/// Postgres `date` → Date32 days: out of range is an error, or with
/// `clamp` the range's end.
fn date32(t: &[u8], clamp: bool) -> R<i32> {
    let days = match parse_date(t)? {
        Moment::At(d) if (i128::from(DATE32_MIN)..=i128::from(DATE32_MAX)).contains(&d) => d,
        _ if !clamp => {
            return Err(outside(
                "date",
                t,
                "Date32: 1900-01-01 to 2299-12-31",
                "String, Int32 or Clamp",
            ));
        }
        Moment::NegInfinity => i128::from(DATE32_MIN),
        Moment::Infinity => i128::from(DATE32_MAX),
        Moment::At(d) => d.clamp(i128::from(DATE32_MIN), i128::from(DATE32_MAX)),
    };
    Ok(days as i32)
}

/// Postgres `date` → Int32 days since 1970-01-01 (`column_types` Int32),
/// `infinity` / `-infinity` as i32::MAX / i32::MIN, which no finite date
/// takes.
fn date_days(t: &[u8]) -> R<i32> {
    match parse_date(t)? {
        Moment::Infinity => Ok(i32::MAX),
        Moment::NegInfinity => Ok(i32::MIN),
        Moment::At(d) => i32::try_from(d)
            .ok()
            .filter(|d| *d != i32::MAX && *d != i32::MIN)
            .ok_or_else(|| {
                format!(
                    "date {} is beyond Int32 days since 1970-01-01: store the column as String",
                    preview(t)
                )
            }),
    }
}

/// Postgres `timestamp`/`timestamptz` → DateTime64(6) ticks: out of range is
/// an error, or with `clamp` the range's end.
fn datetime64(t: &[u8], with_tz: bool, clamp: bool) -> R<i64> {
    let ticks = match parse_timestamp(t, with_tz)? {
        Moment::At(v) if (i128::from(DT64_MIN)..=i128::from(DT64_MAX)).contains(&v) => v,
        _ if !clamp => {
            return Err(outside(
                if with_tz { "timestamptz" } else { "timestamp" },
                t,
                "DateTime64: 1900-01-01 00:00:00 to 2299-12-31 23:59:59.999999 UTC",
                "String or Clamp",
            ));
        }
        Moment::NegInfinity => i128::from(DT64_MIN),
        Moment::Infinity => i128::from(DT64_MAX),
        Moment::At(v) => v.clamp(i128::from(DT64_MIN), i128::from(DT64_MAX)),
    };
    Ok(ticks as i64)
}

/// Postgres `timestamp`/`timestamptz` text → microseconds since the epoch
/// (UTC for timestamptz; any year, BC included).
fn parse_timestamp(t: &[u8], with_tz: bool) -> R<Moment> {
    match t {
        b"infinity" => return Ok(Moment::Infinity),
        b"-infinity" => return Ok(Moment::NegInfinity),
        _ => {}
    }
    let err = || format!("invalid timestamp {} (expected DateStyle ISO)", preview(t));
    let (body, bc) = strip_bc(t);
    let mut sc = Scan { s: body, i: 0 };
    let (y, m, d) = scan_date(&mut sc).ok_or_else(err)?;
    let y = if bc { 1 - y } else { y };
    if !(sc.eat(b' ') || sc.eat(b'T')) {
        return Err(err());
    }
    let tod = scan_time(&mut sc).ok_or_else(err)?;
    let mut offset_secs: i64 = 0;
    if with_tz {
        let sign = match sc.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(b'Z') => {
                sc.i += 1;
                0
            }
            _ => 0,
        };
        if sign != 0 {
            sc.i += 1;
            let (h, _) = sc.digits(2, 2).ok_or_else(err)?;
            let mut secs = h * 3600;
            if sc.eat(b':') {
                secs += sc.digits(2, 2).ok_or_else(err)?.0 * 60;
                if sc.eat(b':') {
                    secs += sc.digits(2, 2).ok_or_else(err)?.0;
                }
            }
            offset_secs = sign * secs;
        }
    }
    if !sc.done() {
        return Err(err());
    }
    let days = i128::from(days_from_civil(y, m, d));
    Ok(Moment::At(
        days * i128::from(MICROS_PER_DAY) + i128::from(tod) - i128::from(offset_secs) * 1_000_000,
    ))
}

/// Postgres `time` → microseconds since midnight.
fn parse_time(t: &[u8]) -> R<i64> {
    let mut sc = Scan { s: t, i: 0 };
    scan_time(&mut sc)
        .filter(|_| sc.done())
        .ok_or_else(|| format!("invalid time {}", preview(t)))
}

// ---- arrays

/// Parses a one-dimensional Postgres array literal into its elements'
/// texts (unescaped; `None` for NULL). Dimension decorations such as
/// `[0:2]=` are skipped.
pub(crate) fn parse_array(t: &[u8]) -> R<Vec<Option<Cow<'_, [u8]>>>> {
    let err = |why: &str| format!("invalid array {}: {why}", preview(t));
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let skip_ws = |i: &mut usize| {
        while *i < t.len() && ws(t[*i]) {
            *i += 1;
        }
    };
    let mut i = 0;
    if t.first() == Some(&b'[') {
        let eq = t
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| err("bad dimensions"))?;
        if t[..eq].iter().filter(|&&c| c == b'[').count() > 1 {
            return Err(err("multi-dimensional arrays are not supported"));
        }
        i = eq + 1;
    }
    skip_ws(&mut i);
    if t.get(i) != Some(&b'{') {
        return Err(err("expected '{'"));
    }
    i += 1;
    let mut elems = Vec::new();
    skip_ws(&mut i);
    if t.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            skip_ws(&mut i);
            let quoted = match t.get(i) {
                None => return Err(err("unterminated")),
                Some(b'{') => return Err(err("multi-dimensional arrays are not supported")),
                Some(b'"') => {
                    i += 1;
                    true
                }
                Some(_) => false,
            };
            let start = i;
            // Escaped copy, made only once a backslash is seen.
            let mut owned: Option<Vec<u8>> = None;
            // End of the element without trailing unescaped blanks
            // (an offset in `owned` if any, else in `t`).
            let mut keep = start;
            loop {
                let Some(&c) = t.get(i) else {
                    return Err(err("unterminated"));
                };
                if quoted && c == b'"' {
                    i += 1;
                    break;
                }
                if !quoted && (c == b',' || c == b'}') {
                    break;
                }
                if !quoted && (c == b'"' || c == b'{') {
                    return Err(err("unexpected character"));
                }
                if c == b'\\' {
                    let v = owned.get_or_insert_with(|| t[start..i].to_vec());
                    v.push(*t.get(i + 1).ok_or_else(|| err("dangling backslash"))?);
                    keep = v.len();
                    i += 2;
                    continue;
                }
                match owned.as_mut() {
                    Some(v) => {
                        v.push(c);
                        if quoted || !ws(c) {
                            keep = v.len();
                        }
                    }
                    None => {
                        if quoted || !ws(c) {
                            keep = i + 1;
                        }
                    }
                }
                i += 1;
            }
            let elem = match owned {
                Some(mut v) => {
                    if !quoted {
                        v.truncate(keep);
                    }
                    Some(Cow::Owned(v))
                }
                None => {
                    let e = if quoted {
                        &t[start..i - 1]
                    } else {
                        &t[start..keep.max(start)]
                    };
                    if !quoted && e.eq_ignore_ascii_case(b"NULL") {
                        None
                    } else {
                        Some(Cow::Borrowed(e))
                    }
                }
            };
            if !quoted && elem.as_ref().is_some_and(|e| e.is_empty()) {
                return Err(err("empty unquoted element"));
            }
            elems.push(elem);
            skip_ws(&mut i);
            match t.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(err("expected ',' or '}'")),
            }
        }
    }
    skip_ws(&mut i);
    if i != t.len() {
        return Err(err("junk after '}'"));
    }
    Ok(elems)
}

// ---------------------------------------------------------------- decoding

pub(super) fn take<'a>(input: &mut &'a [u8], n: usize) -> R<&'a [u8]> {
    if input.len() < n {
        return Err("truncated RowBinary data".into());
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

pub(super) fn take_arr<const N: usize>(input: &mut &[u8]) -> R<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(input, N)?);
    Ok(a)
}

pub(crate) fn read_uleb(input: &mut &[u8]) -> R<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = take(input, 1)?[0];
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad LEB128 length".into())
}

/// Reads one cell; renders a non-NULL value as Postgres text.
pub(crate) fn decode_cell(kind: &Kind, nullable: bool, input: &mut &[u8]) -> R<Cell> {
    if nullable && take(input, 1)?[0] != 0 {
        return Ok(Cell::Null);
    }
    let mut text = Vec::new();
    decode_value(kind, input, &mut text)?;
    Ok(Cell::Text(text))
}

fn push_float(out: &mut Vec<u8>, v: f64, dbg: String) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"Infinity");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Infinity");
    } else {
        // Debug is the shortest text that parses back to the same bits.
        out.extend_from_slice(dbg.as_bytes());
    }
}

fn push_hms(out: &mut Vec<u8>, micros_of_day: i64) {
    let secs = micros_of_day / 1_000_000;
    let frac = micros_of_day % 1_000_000;
    out.extend_from_slice(
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60).as_bytes(),
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        out.push(b'.');
        out.extend_from_slice(f.trim_end_matches('0').as_bytes());
    }
}

fn push_date(out: &mut Vec<u8>, days: i64) {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        // As Postgres prints it: year 0 is 1 BC.
        out.extend_from_slice(format!("{:04}-{m:02}-{d:02} BC", 1 - y).as_bytes());
    } else {
        out.extend_from_slice(format!("{y:04}-{m:02}-{d:02}").as_bytes());
    }
}

/// Reads one non-NULL value and appends its Postgres text.
pub(crate) fn decode_value(kind: &Kind, input: &mut &[u8], out: &mut Vec<u8>) -> R<()> {
    match kind {
        Kind::Bool => out.push(if take(input, 1)?[0] != 0 { b't' } else { b'f' }),
        Kind::Int16 => {
            out.extend_from_slice(i16::from_le_bytes(take_arr(input)?).to_string().as_bytes())
        }
        Kind::Int32 => {
            out.extend_from_slice(i32::from_le_bytes(take_arr(input)?).to_string().as_bytes())
        }
        Kind::Int64 => {
            out.extend_from_slice(i64::from_le_bytes(take_arr(input)?).to_string().as_bytes())
        }
        Kind::Float32 => {
            let v = f32::from_le_bytes(take_arr(input)?);
            push_float(out, f64::from(v), format!("{v:?}"));
        }
        Kind::Float64 => {
            let v = f64::from_le_bytes(take_arr(input)?);
            push_float(out, v, format!("{v:?}"));
        }
        Kind::Decimal { precision, scale } => {
            let width = decimal_width(*precision);
            let raw = take(input, width)?;
            let mut bytes = [if raw[width - 1] & 0x80 != 0 { 0xff } else { 0 }; 32];
            bytes[..width].copy_from_slice(raw);
            let mut v: I256 = [0; 4];
            for (i, limb) in v.iter_mut().enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
                *limb = u64::from_le_bytes(b);
            }
            let neg = v[3] >> 63 == 1;
            if neg {
                i256_negate(&mut v);
            }
            let mut digits = Vec::new();
            while v != [0; 4] {
                digits.push(b'0' + i256_divrem(&mut v, 10) as u8);
            }
            let scale = *scale as usize;
            while digits.len() <= scale {
                digits.push(b'0');
            }
            digits.reverse();
            if neg {
                out.push(b'-');
            }
            let (int, frac) = digits.split_at(digits.len() - scale);
            out.extend_from_slice(int);
            if scale > 0 {
                out.push(b'.');
                out.extend_from_slice(frac);
            }
        }
        Kind::Text | Kind::Enum | Kind::Json => {
            let n = read_uleb(input)? as usize;
            out.extend_from_slice(take(input, n)?);
        }
        Kind::Clamp(inner) => decode_value(inner, input, out)?,
        Kind::DateDays => match i32::from_le_bytes(take_arr(input)?) {
            i32::MAX => out.extend_from_slice(b"infinity"),
            i32::MIN => out.extend_from_slice(b"-infinity"),
            d => push_date(out, i64::from(d)),
        },
        Kind::Bytea => {
            let n = read_uleb(input)? as usize;
            out.extend_from_slice(b"\\x");
            out.extend_from_slice(hex::encode(take(input, n)?).as_bytes());
        }
        Kind::Date => push_date(out, i64::from(i32::from_le_bytes(take_arr(input)?))),
        Kind::Timestamp | Kind::TimestampTz => {
            let ticks = i64::from_le_bytes(take_arr(input)?);
            push_date(out, ticks.div_euclid(MICROS_PER_DAY));
            out.push(b' ');
            push_hms(out, ticks.rem_euclid(MICROS_PER_DAY));
            if *kind == Kind::TimestampTz {
                out.extend_from_slice(b"+00");
            }
        }
        Kind::Time => {
            let v = i64::from_le_bytes(take_arr(input)?);
            if !(0..=MICROS_PER_DAY).contains(&v) {
                // Not written by pgpipe; keep the number so nothing is lost.
                return Err(format!("time value {v} µs is outside 00:00:00..24:00:00"));
            }
            push_hms(out, v);
        }
        Kind::Uuid => {
            let raw = take(input, 16)?;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&raw[..8]);
            b[8..].copy_from_slice(&raw[8..]);
            b[..8].reverse();
            b[8..].reverse();
            out.extend_from_slice(
                uuid::Uuid::from_bytes(b)
                    .hyphenated()
                    .to_string()
                    .as_bytes(),
            );
        }
        Kind::Array(elem) => {
            let n = read_uleb(input)?;
            out.push(b'{');
            let mut tmp = Vec::new();
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                if take(input, 1)?[0] != 0 {
                    out.extend_from_slice(b"NULL");
                    continue;
                }
                tmp.clear();
                decode_value(elem, input, &mut tmp)?;
                push_array_elem(out, &tmp);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Appends an array element, quoted and escaped when Postgres would.
fn push_array_elem(out: &mut Vec<u8>, e: &[u8]) {
    let needs_quotes = e.is_empty()
        || e.eq_ignore_ascii_case(b"NULL")
        || e.iter().any(|c| {
            matches!(
                c,
                b'{' | b'}' | b',' | b'"' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
            )
        });
    if !needs_quotes {
        out.extend_from_slice(e);
        return;
    }
    out.push(b'"');
    for &c in e {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: &Kind, t: &str) -> R<Vec<u8>> {
        let mut out = Vec::new();
        encode_value(kind, t.as_bytes(), &mut out)?;
        Ok(out)
    }

    /// encode → decode → encode gives the same bytes, and decode gives `canon`.
    fn round(kind: &Kind, t: &str, canon: &str) {
        let b = enc(kind, t).unwrap_or_else(|e| panic!("{t}: {e}"));
        let mut input = &b[..];
        let mut text = Vec::new();
        decode_value(kind, &mut input, &mut text).unwrap();
        assert!(input.is_empty(), "{t}: trailing bytes");
        assert_eq!(String::from_utf8_lossy(&text), canon, "{t}");
        assert_eq!(enc(kind, canon).unwrap(), b, "{t}: re-encode");
    }

    #[test]
    fn ints_and_bools() {
        assert_eq!(
            enc(&Kind::Int16, "-32768").unwrap(),
            (-32768i16).to_le_bytes()
        );
        assert!(enc(&Kind::Int16, "32768").is_err());
        assert_eq!(
            enc(&Kind::Int64, "-9223372036854775808").unwrap(),
            i64::MIN.to_le_bytes()
        );
        assert!(enc(&Kind::Int64, "9223372036854775808").is_err());
        assert!(enc(&Kind::Int32, "").is_err());
        assert!(enc(&Kind::Int32, "1.5").is_err());
        assert_eq!(enc(&Kind::Bool, "t").unwrap(), [1]);
        assert_eq!(enc(&Kind::Bool, "f").unwrap(), [0]);
        round(&Kind::Int32, "-42", "-42");
        round(&Kind::Bool, "true", "t");
    }

    #[test]
    fn floats() {
        assert!(
            f64::from_le_bytes(enc(&Kind::Float64, "NaN").unwrap().try_into().unwrap()).is_nan()
        );
        round(&Kind::Float64, "Infinity", "Infinity");
        round(&Kind::Float64, "-Infinity", "-Infinity");
        round(
            &Kind::Float64,
            "1.7976931348623157e+308",
            "1.7976931348623157e308",
        );
        round(&Kind::Float64, "0.1", "0.1");
        round(&Kind::Float64, "-0", "-0.0");
        round(&Kind::Float32, "3.4028235e+38", "3.4028235e38");
        round(&Kind::Float32, "1.1", "1.1");
        round(&Kind::Float64, "5e-324", "5e-324");
    }

    #[test]
    fn decimals() {
        let d = |p, s| Kind::Decimal {
            precision: p,
            scale: s,
        };
        assert_eq!(enc(&d(9, 2), "-1.50").unwrap(), (-150i32).to_le_bytes());
        assert_eq!(enc(&d(18, 2), "123.45").unwrap(), 12345i64.to_le_bytes());
        assert_eq!(
            enc(&d(38, 0), "99999999999999999999999999999999999999").unwrap(),
            99999999999999999999999999999999999999i128.to_le_bytes()
        );
        assert!(enc(&d(38, 0), "100000000000000000000000000000000000000").is_err());
        round(&d(12, 2), "1234567890.12", "1234567890.12");
        round(&d(12, 2), "-0.05", "-0.05");
        round(&d(12, 2), "7", "7.00");
        round(&d(12, 2), "7.100", "7.10");
        assert!(enc(&d(12, 2), "7.123").is_err(), "would round");
        assert!(
            enc(&d(12, 2), "12345678901.00").is_err(),
            "too many integer digits"
        );
        assert!(enc(&d(12, 2), "NaN").is_err());
        assert!(enc(&d(12, 2), "1e5").is_err());
        let max76 = "9".repeat(38) + "." + &"9".repeat(38);
        round(&d(76, 38), &max76, &max76);
        round(&d(76, 38), &format!("-{max76}"), &format!("-{max76}"));
        assert!(enc(&d(76, 38), &format!("1{max76}")).is_err());
        round(&d(76, 0), &"9".repeat(76), &"9".repeat(76));
        assert!(enc(&d(76, 0), &"9".repeat(77)).is_err());
        round(&d(5, 5), "0.00001", "0.00001");
        round(&d(76, 38), "0", "0.00000000000000000000000000000000000000");
    }

    #[test]
    fn bytea() {
        assert_eq!(enc(&Kind::Bytea, "\\x00ff41").unwrap(), [3, 0, 0xff, 0x41]);
        assert_eq!(
            enc(&Kind::Bytea, "a\\\\b\\000").unwrap(),
            [4, b'a', b'\\', b'b', 0]
        );
        assert!(enc(&Kind::Bytea, "\\x0").is_err());
        assert!(enc(&Kind::Bytea, "\\xzz").is_err());
        round(&Kind::Bytea, "\\x", "\\x");
        round(&Kind::Bytea, "\\xdeadbeef", "\\xdeadbeef");
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1900, 1, 1), DATE32_MIN);
        assert_eq!(days_from_civil(2299, 12, 31), DATE32_MAX);
        for z in [-800_000, -25_567, -1, 0, 1, 59, 19_000, 120_529, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        round(&Kind::Date, "2024-02-29", "2024-02-29");
        round(&Kind::Date, "1900-01-01", "1900-01-01");
        round(&Kind::Date, "2299-12-31", "2299-12-31");
        assert!(enc(&Kind::Date, "01/02/2024").is_err());

        round(
            &Kind::Timestamp,
            "2024-01-02 03:04:05.123456",
            "2024-01-02 03:04:05.123456",
        );
        round(
            &Kind::Timestamp,
            "2024-01-02 03:04:05",
            "2024-01-02 03:04:05",
        );
        round(
            &Kind::Timestamp,
            "1969-12-31 23:59:59.5",
            "1969-12-31 23:59:59.5",
        );
        assert!(enc(&Kind::Timestamp, "2024-01-02 03:04:05+00").is_err());
        round(
            &Kind::TimestampTz,
            "2024-01-02 03:04:05.123456+00",
            "2024-01-02 03:04:05.123456+00",
        );
        round(
            &Kind::TimestampTz,
            "2024-01-02 08:34:05+05:30",
            "2024-01-02 03:04:05+00",
        );
        round(
            &Kind::TimestampTz,
            "2024-01-01 23:04:05-04",
            "2024-01-02 03:04:05+00",
        );
        round(
            &Kind::TimestampTz,
            "1901-01-01 00:53:28+00:53:28",
            "1901-01-01 00:00:00+00",
        );
        assert!(enc(&Kind::TimestampTz, "2024-01-02 03:04:05.1234567+00").is_err());

        round(&Kind::Time, "00:00:00", "00:00:00");
        round(&Kind::Time, "23:59:59.999999", "23:59:59.999999");
        round(&Kind::Time, "24:00:00", "24:00:00");
        assert_eq!(
            enc(&Kind::Time, "00:00:01.5").unwrap(),
            1_500_000i64.to_le_bytes()
        );
        assert!(enc(&Kind::Time, "25:00:00").is_err());
    }

    /// Postgres dates outside ClickHouse's `Date` (1970 to 2149), which
    /// `DateDays` keeps.
    const BEYOND_DATE: [&str; 6] = [
        "0001-01-01",
        "1850-06-01",
        "9999-12-31",
        "infinity",
        "-infinity",
        "0044-03-15 BC",
    ];

    #[test]
    fn dates_outside_clickhouse_range_are_refused_naming_the_value() {
        for t in BEYOND_DATE {
            let e = enc(&Kind::Date, t).unwrap_err();
            assert!(
                e.contains(&format!("{t:?}")) && e.contains("column_types"),
                "{e}"
            );
        }
        for kind in [Kind::Timestamp, Kind::TimestampTz] {
            for t in [
                "0001-01-01 00:00:00",
                "1899-12-31 23:59:59.999999",
                "2300-01-01 00:00:00",
                "infinity",
                "-infinity",
            ] {
                let t = if kind == Kind::TimestampTz {
                    format!("{t}+00").replace("infinity+00", "infinity")
                } else {
                    t.to_string()
                };
                assert!(enc(&kind, &t).is_err(), "{t}");
            }
        }
        // The instant counts, not the wall clock: 1900-01-01 00:00 at +01 is 1899 in UTC.
        assert!(enc(&Kind::TimestampTz, "1900-01-01 00:00:00+01").is_err());
    }

    #[test]
    fn an_out_of_range_array_element_is_refused_saying_what_applies() {
        let dates = Kind::Array(Box::new(Kind::Date));
        let e = enc(&dates, "{2024-01-01,infinity}").unwrap_err();
        assert!(
            e.contains("\"infinity\"") && e.contains("only be stored as String"),
            "{e}"
        );
    }

    #[test]
    fn clamp_is_an_explicit_choice() {
        let clamp = |k: Kind| Kind::Clamp(Box::new(k));
        round(&clamp(Kind::Date), "2024-02-29", "2024-02-29");
        round(&clamp(Kind::Date), "infinity", "2299-12-31");
        round(&clamp(Kind::Date), "-infinity", "1900-01-01");
        round(&clamp(Kind::Date), "0044-03-15 BC", "1900-01-01");
        round(&clamp(Kind::Date), "10000-01-01", "2299-12-31");
        round(&clamp(Kind::Date), "1850-06-01", "1900-01-01");
        let tz = clamp(Kind::TimestampTz);
        round(&tz, "infinity", "2299-12-31 23:59:59.999999+00");
        round(&tz, "-infinity", "1900-01-01 00:00:00+00");
        round(
            &tz,
            "294276-12-31 23:59:59.999999+00",
            "2299-12-31 23:59:59.999999+00",
        );
        round(&tz, "4713-01-01 00:00:00+00 BC", "1900-01-01 00:00:00+00");
        round(
            &clamp(Kind::Timestamp),
            "0001-01-01 00:00:00",
            "1900-01-01 00:00:00",
        );
        round(
            &clamp(Kind::Timestamp),
            "2024-01-02 03:04:05",
            "2024-01-02 03:04:05",
        );
        let mut out = Vec::new();
        encode_default(&clamp(Kind::Date), &mut out);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn dates_as_int32_days_keep_every_postgres_date() {
        let days =
            |t: &str| i32::from_le_bytes(enc(&Kind::DateDays, t).unwrap().try_into().unwrap());
        assert_eq!(days("1970-01-01"), 0);
        assert_eq!(days("0001-01-01"), -719_162);
        assert_eq!(days("1850-06-01"), -43_678);
        assert_eq!(days("9999-12-31"), 2_932_896);
        assert_eq!(days("infinity"), i32::MAX);
        assert_eq!(days("-infinity"), i32::MIN);
        // 1 BC is year 0; Postgres' first date is 4714-11-24 BC.
        assert_eq!(days("0001-12-31 BC"), -719_163);
        let ends = ["4714-11-24 BC", "5874897-12-31"];
        for t in BEYOND_DATE.into_iter().chain(ends) {
            round(&Kind::DateDays, t, t);
        }
    }

    #[test]
    fn json_values_must_be_objects() {
        assert_eq!(enc(&Kind::Json, r#"{"a": 1}"#).unwrap(), b"\x08{\"a\": 1}");
        assert!(enc(&Kind::Json, " {}").is_ok());
        for t in ["[1, 2]", "\"text\"", "3", "null"] {
            let e = enc(&Kind::Json, t).unwrap_err();
            assert!(e.contains("not an object"), "{e}");
        }
        round(&Kind::Json, r#"{"k": [1, "x"]}"#, r#"{"k": [1, "x"]}"#);
        let mut out = Vec::new();
        encode_default(&Kind::Json, &mut out);
        assert_eq!(out, b"\x02{}");
    }

    #[test]
    fn uuid_layout() {
        let b = enc(&Kind::Uuid, "00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(hex::encode(&b), "7766554433221100ffeeddccbbaa9988");
        round(
            &Kind::Uuid,
            "00112233-4455-6677-8899-AABBCCDDEEFF",
            "00112233-4455-6677-8899-aabbccddeeff",
        );
        assert!(enc(&Kind::Uuid, "nope").is_err());
    }

    fn arr(t: &str) -> Vec<Option<String>> {
        parse_array(t.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| e.map(|v| String::from_utf8(v.into_owned()).unwrap()))
            .collect()
    }

    #[test]
    fn arrays() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(arr("{}"), Vec::<Option<String>>::new());
        assert_eq!(arr("{1,2,NULL}"), vec![s("1"), s("2"), None]);
        assert_eq!(
            arr(r#"{"a,b","c\"d",NULL,"NULL",null}"#),
            vec![s("a,b"), s("c\"d"), None, s("NULL"), None]
        );
        assert_eq!(
            arr(r#"{ a b , "" ,c\,d,e\ }"#),
            vec![s("a b"), s(""), s("c,d"), s("e ")]
        );
        assert_eq!(arr("[0:1]={7,8}"), vec![s("7"), s("8")]);
        assert!(parse_array(b"{{1,2},{3,4}}").is_err());
        assert!(parse_array(b"[1:2][1:1]={{1},{2}}").is_err());
        assert!(parse_array(b"{1,2").is_err());
        assert!(parse_array(b"{1,2}x").is_err());
        assert!(parse_array(b"1,2").is_err());

        let ints = Kind::Array(Box::new(Kind::Int32));
        assert_eq!(enc(&ints, "{1,NULL}").unwrap(), [2, 0, 1, 0, 0, 0, 1]);
        round(&ints, "{1,2,NULL}", "{1,2,NULL}");
        round(&ints, "{}", "{}");
        let texts = Kind::Array(Box::new(Kind::Text));
        round(
            &texts,
            r#"{"a,b","c\"d",NULL,"NULL",""," x","\\","é{}"}"#,
            r#"{"a,b","c\"d",NULL,"NULL",""," x","\\","é{}"}"#,
        );
        round(
            &Kind::Array(Box::new(Kind::Bytea)),
            r#"{"\\x00ff",NULL}"#,
            r#"{"\\x00ff",NULL}"#,
        );
        round(
            &Kind::Array(Box::new(Kind::TimestampTz)),
            r#"{"2024-01-02 03:04:05+01"}"#,
            r#"{"2024-01-02 02:04:05+00"}"#,
        );
        assert!(enc(&ints, "{1,x}").is_err());
    }

    #[test]
    fn cells() {
        let mut out = Vec::new();
        encode_cell(&Kind::Int32, true, &Cell::Null, &mut out).unwrap();
        encode_cell(&Kind::Int32, true, &Cell::Text(b"5".to_vec()), &mut out).unwrap();
        encode_cell(
            &Kind::Array(Box::new(Kind::Int32)),
            false,
            &Cell::Null,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [1, 0, 5, 0, 0, 0, 0]);
        assert!(encode_cell(&Kind::Int32, false, &Cell::Null, &mut out).is_err());
        assert!(encode_cell(&Kind::Int32, true, &Cell::UnchangedToast, &mut out).is_err());
        let mut input = &out[..];
        assert_eq!(
            decode_cell(&Kind::Int32, true, &mut input).unwrap(),
            Cell::Null
        );
        assert_eq!(
            decode_cell(&Kind::Int32, true, &mut input).unwrap(),
            Cell::Text(b"5".to_vec())
        );
    }

    #[test]
    fn leb128() {
        for n in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            write_uleb(&mut out, n);
            let mut input = &out[..];
            assert_eq!(read_uleb(&mut input).unwrap(), n);
            assert!(input.is_empty());
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn decode_text(kind: &Kind, bytes: &[u8]) -> String {
            let mut input = bytes;
            let mut out = Vec::new();
            decode_value(kind, &mut input, &mut out).unwrap();
            assert!(input.is_empty());
            String::from_utf8(out).unwrap()
        }

        /// Through its text and back, a float keeps its bits; a NaN need
        /// only stay a NaN (`is_nan` reads the little-endian bytes).
        fn float_round_trips(
            kind: &Kind,
            b: &[u8],
            is_nan: impl Fn(&[u8]) -> bool,
        ) -> Result<(), TestCaseError> {
            let again = enc(kind, &decode_text(kind, b)).unwrap();
            if is_nan(b) {
                prop_assert!(is_nan(&again));
            } else {
                prop_assert_eq!(again, b.to_vec());
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn array_text_round_trips(elems in prop::collection::vec(
                prop::option::of("[a-zA-Z0-9 ,{}\"\\\\'\t\né🌍]{0,8}"), 0..8)
            ) {
                let mut text = vec![b'{'];
                for (i, e) in elems.iter().enumerate() {
                    if i > 0 { text.push(b','); }
                    match e {
                        None => text.extend_from_slice(b"NULL"),
                        Some(s) => push_array_elem(&mut text, s.as_bytes()),
                    }
                }
                text.push(b'}');
                let parsed: Vec<Option<String>> = parse_array(&text).unwrap().into_iter()
                    .map(|e| e.map(|v| String::from_utf8(v.into_owned()).unwrap())).collect();
                prop_assert_eq!(parsed, elems);
            }

            #[test]
            fn decimals_round_trip(v in any::<i128>(), p in 1u32..=76, s_frac in 0.0f64..1.0) {
                let scale = ((f64::from(p) * s_frac) as u32).min(p);
                let kind = Kind::Decimal { precision: p, scale };
                let digits = v.unsigned_abs().to_string();
                let digits = &digits[..digits.len().min(p as usize)];
                let (int, frac) = digits.split_at(digits.len().saturating_sub(scale as usize));
                let text = format!("{}{}.{}", if v < 0 { "-" } else { "" }, if int.is_empty() { "0" } else { int }, frac);
                let bytes = enc(&kind, &text).unwrap();
                let back = decode_text(&kind, &bytes);
                prop_assert_eq!(enc(&kind, &back).unwrap(), bytes);
                let norm = |t: &str| -> (bool, String) {
                    let neg = t.starts_with('-');
                    let t = t.trim_start_matches('-');
                    let (i, f) = t.split_once('.').unwrap_or((t, ""));
                    let s = format!("{}.{}", i.trim_start_matches('0'), f.trim_end_matches('0'));
                    (neg && s != ".", s)
                };
                prop_assert_eq!(norm(&back), norm(&text));
            }

            #[test]
            fn floats_round_trip_bit_exact(bits in any::<u64>(), bits32 in any::<u32>()) {
                let b = f64::from_bits(bits).to_le_bytes();
                float_round_trips(&Kind::Float64, &b, |b| f64::from_le_bytes(b.try_into().unwrap()).is_nan())?;
                let b = f32::from_bits(bits32).to_le_bytes();
                float_round_trips(&Kind::Float32, &b, |b| f32::from_le_bytes(b.try_into().unwrap()).is_nan())?;
            }

            #[test]
            fn timestamps_round_trip(ticks in DT64_MIN..=DT64_MAX, off_min in -15 * 60i64..=15 * 60) {
                for kind in [Kind::Timestamp, Kind::TimestampTz] {
                    let b = ticks.to_le_bytes();
                    let text = decode_text(&kind, &b);
                    prop_assert_eq!(enc(&kind, &text).unwrap(), b.to_vec(), "{}", text);
                }
                // The same instant printed in another zone, as Postgres would.
                let local = ticks + off_min * 60_000_000;
                prop_assume!((DT64_MIN..=DT64_MAX).contains(&local));
                let mut text = decode_text(&Kind::Timestamp, &local.to_le_bytes()).into_bytes();
                let a = off_min.abs();
                text.extend_from_slice(format!("{}{:02}:{:02}", if off_min < 0 { '-' } else { '+' }, a / 60, a % 60).as_bytes());
                let got = enc(&Kind::TimestampTz, std::str::from_utf8(&text).unwrap()).unwrap();
                prop_assert_eq!(got, ticks.to_le_bytes().to_vec());
            }

            #[test]
            fn dates_and_times_round_trip(days in DATE32_MIN..=DATE32_MAX, micros in 0..=MICROS_PER_DAY) {
                let b = (days as i32).to_le_bytes();
                prop_assert_eq!(enc(&Kind::Date, &decode_text(&Kind::Date, &b)).unwrap(), b.to_vec());
                let b = micros.to_le_bytes();
                prop_assert_eq!(enc(&Kind::Time, &decode_text(&Kind::Time, &b)).unwrap(), b.to_vec());
            }

            #[test]
            fn bytea_and_uuid_round_trip(data in prop::collection::vec(any::<u8>(), 0..64), u in any::<[u8; 16]>()) {
                let mut b = Vec::new();
                write_string(&mut b, &data);
                prop_assert_eq!(enc(&Kind::Bytea, &decode_text(&Kind::Bytea, &b)).unwrap(), b);
                prop_assert_eq!(enc(&Kind::Uuid, &decode_text(&Kind::Uuid, &u)).unwrap(), u.to_vec());
            }
        }
    }
}
