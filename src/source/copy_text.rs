//! Decoding of `COPY ... TO STDOUT` text format: rows end with `\n`, fields
//! are separated by tabs, `\N` is NULL, and backslash escapes stand for
//! special bytes (`\\ \t \n \r \b \f \v`, octal `\NNN`, hex `\xHH`; any
//! other escaped character stands for itself). A raw tab or newline is
//! always a separator: data tabs and newlines are escaped.

use memchr::{memchr, memchr2};

use crate::model::{Row, RowBatch};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CopyFormatError {
    #[error("a COPY row has {found} fields where {expected} were expected")]
    FieldCount { expected: usize, found: usize },
}

/// Decodes one row (without its trailing `\n`) of `ncols` fields.
#[cfg(test)]
pub fn decode_copy_line(line: &[u8], ncols: usize) -> Result<Row, CopyFormatError> {
    let mut batch = RowBatch::new(ncols);
    decode_line_into(line, &mut batch)?;
    Ok(batch.to_row(0))
}

/// Decodes every complete row (ending in `\n`) of `buf` into `out` and
/// returns how many bytes were consumed; an incomplete last row is left for
/// the caller to complete with more data. A `\.` end-of-data line is
/// consumed and ignored.
pub fn decode_copy_lines(
    buf: &[u8],
    ncols: usize,
    out: &mut Vec<Row>,
) -> Result<usize, CopyFormatError> {
    let mut batch = RowBatch::new(ncols);
    let used = decode_copy_lines_into(buf, &mut batch);
    out.extend((0..batch.len()).map(|i| batch.to_row(i)));
    used
}

/// [`decode_copy_lines`] into a [`RowBatch`]: no allocation per row or cell
/// once the batch's buffers have grown. Returns the bytes consumed; on an
/// error the batch holds only whole rows.
pub fn decode_copy_lines_into(buf: &[u8], batch: &mut RowBatch) -> Result<usize, CopyFormatError> {
    let mut start = 0;
    while let Some(off) = memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + off];
        if line != b"\\." {
            decode_line_into(line, batch)?;
        }
        start += off + 1;
    }
    Ok(start)
}

fn decode_line_into(line: &[u8], batch: &mut RowBatch) -> Result<(), CopyFormatError> {
    let ncols = batch.ncols;
    let first = batch.cells.len();
    let data_len = batch.data.len();
    let mut found = 0usize;
    let mut push = |f: &[u8], escaped: bool, batch: &mut RowBatch| {
        found += 1;
        if found > ncols {
            return;
        }
        if escaped && f == b"\\N" {
            batch.cells.push(None);
            return;
        }
        let s = batch.data.len();
        if escaped {
            unescape_into(f, &mut batch.data);
        } else {
            batch.data.extend_from_slice(f);
        }
        batch.cells.push(Some((s, batch.data.len())));
    };
    if !(ncols == 0 && line.is_empty()) {
        let mut start = 0;
        let mut pos = 0;
        let mut escaped = false;
        loop {
            match memchr2(b'\t', b'\\', &line[pos..]) {
                Some(off) => {
                    let p = pos + off;
                    if line[p] == b'\\' {
                        escaped = true;
                        pos = (p + 2).min(line.len());
                    } else {
                        push(&line[start..p], escaped, batch);
                        start = p + 1;
                        pos = start;
                        escaped = false;
                    }
                }
                None => {
                    push(&line[start..], escaped, batch);
                    break;
                }
            }
        }
    }
    if found != ncols {
        batch.cells.truncate(first);
        batch.data.truncate(data_len);
        return Err(CopyFormatError::FieldCount {
            expected: ncols,
            found,
        });
    }
    Ok(())
}

fn unescape_into(f: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < f.len() {
        let Some(off) = memchr(b'\\', &f[i..]) else {
            out.extend_from_slice(&f[i..]);
            break;
        };
        out.extend_from_slice(&f[i..i + off]);
        i += off + 1;
        let Some(&c) = f.get(i) else {
            // A lone trailing backslash: keep it.
            out.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match f.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match f.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cell;

    fn t(s: &[u8]) -> Cell {
        Cell::Text(s.to_vec())
    }

    #[test]
    fn splits_fields_and_recognizes_null() {
        let row = decode_copy_line(b"1\t\\N\t\tabc", 4).unwrap();
        assert_eq!(row, vec![t(b"1"), Cell::Null, t(b""), t(b"abc")]);
        // `\N` is NULL only as a whole field.
        let row = decode_copy_line(b"\\Nx\tx\\N", 2).unwrap();
        assert_eq!(row, vec![t(b"Nx"), t(b"xN")]);
    }

    #[test]
    fn unescapes_every_escape() {
        let row = decode_copy_line(b"a\\tb\\nc\\rd\\\\e\\bf\\fg\\vh", 1).unwrap();
        assert_eq!(row, vec![t(b"a\tb\nc\rd\\e\x08f\x0cg\x0bh")]);
        let row = decode_copy_line(b"\\101\\0\\7777\\x41\\x4\\xg\\q", 1).unwrap();
        // \101 = 'A', \0 = NUL, \777 = 0x1ff & 0xff, then '7'; \x41 = 'A'; \x4; \x without hex = 'x'.
        assert_eq!(row, vec![t(b"A\0\xff7A\x04xgq")]);
        let row = decode_copy_line(b"\\\tx\tend\\", 2).unwrap();
        assert_eq!(row, vec![t(b"\tx"), t(b"end\\")]);
    }

    #[test]
    fn counts_fields() {
        assert_eq!(
            decode_copy_line(b"a\tb", 3),
            Err(CopyFormatError::FieldCount {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(decode_copy_line(b"", 1).unwrap(), vec![t(b"")]);
        assert_eq!(decode_copy_line(b"", 0).unwrap(), Vec::<Cell>::new());
    }

    #[test]
    fn decodes_complete_lines_only() {
        let mut out = Vec::new();
        let n = decode_copy_lines(b"1\ta\n2\t\\N\n3\tpart", 2, &mut out).unwrap();
        assert_eq!(n, 9);
        assert_eq!(out, vec![vec![t(b"1"), t(b"a")], vec![t(b"2"), Cell::Null]]);
        let n = decode_copy_lines(b"\\.\n", 2, &mut out).unwrap();
        assert_eq!(n, 3);
        assert_eq!(out.len(), 2);
    }
}
