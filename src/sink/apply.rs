//! CDC changes applied to a destination table: unchanged TOAST values
//! filled, tombstones for a custom ORDER BY, one row per sorting key.

use std::collections::HashMap;
use std::future::Future;

use super::writer::WriterOptions;
use super::{ChSink, SinkError};
use crate::model::{Cell, Row, SourceTable};

/// One decoded change of a row, as CDC writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The row's replicated columns; unchanged TOAST values are
    /// [`Cell::UnchangedToast`] (a delete has the key columns only).
    pub row: Row,
    /// The commit LSN of its transaction (`_pgpipe_version`).
    pub version: u64,
    /// A delete: written as a soft-deleted row.
    pub deleted: bool,
}

/// Where one table's changes are written.
#[derive(Debug, Clone, Copy)]
pub struct ApplyTo<'a> {
    /// The ClickHouse table.
    pub dest: &'a str,
    /// Its replicated columns under their source names.
    pub table: &'a SourceTable,
    /// The ClickHouse ORDER BY (empty: the source key), for tombstones.
    pub order_by: &'a [String],
    /// Another table written the same rows (a table resync's `_resync`
    /// table).
    pub also: Option<&'a str>,
}

/// Reads the current values of a row's unchanged TOAST cells from the
/// source, for rows ClickHouse does not have yet (a table being loaded
/// beside CDC). The sink does not know the source: the caller provides it.
pub trait RowLookup {
    type Error: From<SinkError>;

    /// Fills `row`'s [`Cell::UnchangedToast`] cells.
    fn fill(&self, row: &mut Row) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What is written with a row besides its cells.
#[derive(Debug, Clone, Copy)]
struct Meta {
    version: u64,
    deleted: bool,
    /// A tombstone for the key's previous row, which may not exist.
    buries_previous: bool,
}

impl ChSink {
    /// Writes one table's changes of a batch, in commit order: unchanged
    /// TOAST values are filled from earlier rows or ClickHouse, then only
    /// the last change per sorting key is sent (same-version rows would
    /// otherwise tie).
    ///
    /// When `order_by` has columns outside the source key, a row's sorting
    /// key can change while its source key stays, and a delete arrives with
    /// the key alone: its tombstone would land under another sorting key and
    /// leave the row live. So each change is preceded by a tombstone that
    /// copies the key's previous row (from earlier in the batch or
    /// ClickHouse; none if the key is new), and a delete is that copy.
    ///
    /// `lookup`: rows ClickHouse does not have yet are read from the source.
    /// The changes are taken by value: their rows are filled in place.
    pub async fn apply_changes<L: RowLookup>(
        &self,
        to: &ApplyTo<'_>,
        changes: Vec<Change>,
        lookup: Option<&L>,
    ) -> Result<(), L::Error> {
        let &ApplyTo {
            dest,
            table,
            order_by,
            also,
        } = to;
        let extra: Vec<usize> = order_by
            .iter()
            .filter_map(|name| table.columns.iter().position(|c| &c.name == name))
            .filter(|i| !table.key.contains(i))
            .collect();
        let mut cells: Vec<Row> = Vec::with_capacity(changes.len());
        let mut meta: Vec<Meta> = Vec::with_capacity(changes.len());
        let mut push = |row: Row, version: u64, deleted: bool, buries_previous: bool| {
            cells.push(row);
            meta.push(Meta {
                version,
                deleted,
                buries_previous,
            });
        };
        for Change {
            row,
            version,
            deleted,
        } in changes
        {
            if extra.is_empty() {
                push(row, version, deleted, false);
                continue;
            }
            let previous: Row = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if table.key.contains(&i) {
                        c.clone()
                    } else {
                        Cell::UnchangedToast
                    }
                })
                .collect();
            if deleted {
                push(previous, version, true, false);
            } else {
                push(previous, version, true, true);
                push(row, version, false, false);
            }
        }
        let mut keep_row = vec![true; cells.len()];
        if cells.iter().any(|r| r.contains(&Cell::UnchangedToast)) {
            if let (true, Some(lookup)) = (extra.is_empty(), lookup) {
                // A table being loaded: rows the load has not written yet are
                // read from the source.
                let (_, missing) = self.fill_from_previous(dest, table, &mut cells).await?;
                for (i, m) in missing.into_iter().enumerate() {
                    if m.is_some() {
                        lookup.fill(&mut cells[i]).await?;
                    }
                }
            } else if extra.is_empty() {
                self.fill_unchanged(dest, table, &mut cells).await?;
            } else {
                let (_, missing) = self.fill_from_previous(dest, table, &mut cells).await?;
                for (i, m) in missing.into_iter().enumerate() {
                    let Some(e) = m else { continue };
                    let Meta {
                        deleted,
                        buries_previous,
                        ..
                    } = meta[i];
                    if buries_previous {
                        // No previous row: nothing to bury.
                        keep_row[i] = false;
                    } else if deleted {
                        // A delete of a row ClickHouse never had: the key
                        // alone, as without a custom ORDER BY.
                        for c in cells[i].iter_mut() {
                            if *c == Cell::UnchangedToast {
                                *c = Cell::Null;
                            }
                        }
                    } else {
                        match lookup {
                            Some(lookup) => lookup.fill(&mut cells[i]).await?,
                            None => return Err(e.into()),
                        }
                    }
                }
            }
        }
        let key_cols: Vec<usize> = table.key.iter().chain(&extra).copied().collect();
        let mut last: HashMap<KeyOf, usize> = HashMap::with_capacity(cells.len());
        for (i, row) in cells.iter().enumerate() {
            if keep_row[i] {
                last.insert(
                    KeyOf {
                        row,
                        cols: &key_cols,
                    },
                    i,
                );
            }
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        // The insert buffers about what these rows take, not a full chunk:
        // a 4 MiB buffer for each small CDC batch made the allocator's heap
        // creep (the soak's RSS rose while the live heap stayed flat).
        let chunk_bytes = keep
            .iter()
            .map(|&i| encoded_len(&cells[i]))
            .sum::<usize>()
            .next_power_of_two()
            .clamp(MIN_CHUNK_BYTES, WriterOptions::default().chunk_bytes);
        // A table being resynced gets the same rows in its `_resync` table.
        for target in std::iter::once(dest).chain(also) {
            let options = WriterOptions {
                chunk_bytes,
                ..WriterOptions::default()
            };
            let mut writer = self.writer_with(target, table, options).await?;
            for &i in &keep {
                let Meta {
                    version, deleted, ..
                } = meta[i];
                writer.write(&cells[i], version, deleted).await?;
            }
            writer.end().await?;
        }
        Ok(())
    }
}

/// A row's key columns, borrowed: hashing and comparing it clones nothing
/// (the last change of each key in a batch is the one written).
struct KeyOf<'a> {
    row: &'a Row,
    cols: &'a [usize],
}

impl KeyOf<'_> {
    fn cells(&self) -> impl Iterator<Item = &Cell> {
        self.cols
            .iter()
            .map(|&k| self.row.get(k).unwrap_or(&Cell::Null))
    }
}

impl std::hash::Hash for KeyOf<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.cells().for_each(|c| c.hash(state));
    }
}

impl PartialEq for KeyOf<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cells().eq(other.cells())
    }
}

impl Eq for KeyOf<'_> {}

/// The smallest insert buffer of a CDC write.
const MIN_CHUNK_BYTES: usize = 64 << 10;

/// About how many RowBinary bytes a row takes (a value's bytes and its
/// length or null marker, and the version and deleted columns).
fn encoded_len(row: &Row) -> usize {
    row.iter()
        .map(|c| match c {
            Cell::Text(b) => b.len() + 9,
            Cell::Null | Cell::UnchangedToast => 9,
        })
        .sum::<usize>()
        + 17
}
