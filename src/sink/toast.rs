//! Filling `Cell::UnchangedToast` from the destination.

use std::collections::{BTreeSet, HashMap};

use super::codec::{decode_cell, encode_cell, preview};
use super::ident::{quote_ident, quote_literal};
use super::types::Kind;
use super::{ChSink, ColumnPlan, SinkError, VERSION_COLUMN};
use crate::model::{Cell, Row, SourceTable};

/// Stop adding keys to one lookup query past this many bytes of key data
/// (the query must stay under ClickHouse's `max_query_size`, 256 KiB).
const KEYS_PER_QUERY_BYTES: usize = 48 * 1024;
const DEFAULT_MAX_QUERY_SIZE: usize = 256 * 1024 - 4096;

impl ChSink {
    /// Replaces every [`Cell::UnchangedToast`] in `rows` (CDC updates of
    /// `source`, in commit order) by the column's current value, as
    /// Postgres text or NULL, exactly as it would have arrived: from the
    /// latest earlier row in `rows` with the same key if there is one, else
    /// from the destination `table` (`FINAL`, highest version). Rows are
    /// matched on the source key columns, which must be set. For an update
    /// that changed the key, pass the row with the old key's values in the
    /// key cells, then put the new key back. Returns the number of cells
    /// filled; errors if a needed key is not in ClickHouse.
    pub async fn fill_unchanged(
        &self,
        table: &str,
        source: &SourceTable,
        rows: &mut [Row],
    ) -> Result<usize, SinkError> {
        let (filled, mut missing) = self.fill_from_previous(table, source, rows).await?;
        match missing.iter_mut().find_map(Option::take) {
            Some(e) => Err(e),
            None => Ok(filled),
        }
    }

    /// Like [`ChSink::fill_unchanged`], but a row whose key has no earlier
    /// row and is not in ClickHouse is left as it is: `missing[i]` holds the
    /// error `fill_unchanged` would have returned for row `i`. Used to copy
    /// a key's previous row (every non-key cell `UnchangedToast`), which may
    /// not exist.
    pub async fn fill_from_previous(
        &self,
        table: &str,
        source: &SourceTable,
        rows: &mut [Row],
    ) -> Result<(usize, Vec<Option<SinkError>>), SinkError> {
        let mut missing: Vec<Option<SinkError>> = (0..rows.len()).map(|_| None).collect();
        let has_toast = |r: &Row| r.iter().any(|c| matches!(c, Cell::UnchangedToast));
        if !rows.iter().any(has_toast) {
            return Ok((0, missing));
        }
        if source.key.is_empty() {
            return Err(SinkError::Schema(format!(
                "table {}.{} has no key: cannot look up unchanged TOAST values",
                source.schema, source.name
            )));
        }
        let plan = self.plan(table, source).await?;
        let key_plan: Vec<(usize, &ColumnPlan)> = source
            .key
            .iter()
            .map(|&i| {
                plan.get(i)
                    .map(|p| (i, p))
                    .ok_or_else(|| SinkError::Schema(format!("key column index {i} out of range")))
            })
            .collect::<Result<_, _>>()?;

        // Pass 1: each row's key (RowBinary), the latest earlier row with the
        // same key, and the keys (with columns) to fetch.
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
        let mut prior: Vec<Option<usize>> = Vec::with_capacity(rows.len());
        let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut wanted_keys: Vec<Vec<u8>> = Vec::new();
        let mut wanted_cols: BTreeSet<usize> = BTreeSet::new();
        for (i, row) in rows.iter().enumerate() {
            if row.len() != plan.len() {
                return Err(SinkError::RowWidth {
                    table: table.to_string(),
                    got: row.len(),
                    want: plan.len(),
                });
            }
            let mut key = Vec::new();
            for &(k, p) in &key_plan {
                if matches!(row[k], Cell::UnchangedToast) {
                    return Err(SinkError::Value {
                        table: table.to_string(),
                        column: p.name.clone(),
                        message: "key column is an unchanged TOAST value: cannot find the row"
                            .into(),
                    });
                }
                encode_cell(&p.kind, p.nullable, &row[k], &mut key).map_err(|message| {
                    SinkError::Value {
                        table: table.to_string(),
                        column: p.name.clone(),
                        message,
                    }
                })?;
            }
            let before = last.get(&key).copied();
            if before.is_none() && has_toast(row) {
                wanted_keys.push(key.clone());
                wanted_cols.extend(
                    row.iter()
                        .enumerate()
                        .filter(|(_, c)| matches!(c, Cell::UnchangedToast))
                        .map(|(j, _)| j),
                );
            }
            last.insert(key.clone(), i);
            prior.push(before);
            keys.push(key);
        }
        wanted_keys.sort();
        wanted_keys.dedup();
        let wanted_cols: Vec<usize> = wanted_cols.into_iter().collect();

        let mut fetched: HashMap<Vec<u8>, Vec<Cell>> = HashMap::new();
        let mut start = 0;
        while start < wanted_keys.len() {
            let mut end = start;
            let mut size = 0;
            while end < wanted_keys.len() && (end == start || size < KEYS_PER_QUERY_BYTES) {
                size += wanted_keys[end].len();
                end += 1;
            }
            self.fetch_current(
                table,
                &plan,
                &key_plan,
                &wanted_cols,
                &wanted_keys[start..end],
                &mut fetched,
            )
            .await?;
            start = end;
        }

        // Pass 2, in order: earlier rows are complete before later ones copy them.
        let mut filled = 0;
        for i in 0..rows.len() {
            for j in 0..plan.len() {
                if !matches!(rows[i][j], Cell::UnchangedToast) {
                    continue;
                }
                let value = match prior[i] {
                    // An earlier row left unfilled passes that on.
                    Some(p) if missing[p].is_some() => None,
                    Some(p) => Some(rows[p][j].clone()),
                    None => {
                        let pos = wanted_cols.iter().position(|&c| c == j);
                        match (fetched.get(&keys[i]), pos) {
                            (Some(vals), Some(pos)) => Some(vals[pos].clone()),
                            _ => None,
                        }
                    }
                };
                let Some(value) = value else {
                    if missing[i].is_none() {
                        let key: Vec<String> = key_plan
                            .iter()
                            .map(|&(k, _)| match &rows[i][k] {
                                Cell::Text(t) => preview(t),
                                other => format!("{other:?}"),
                            })
                            .collect();
                        missing[i] = Some(SinkError::ToastRowMissing {
                            table: table.to_string(),
                            column: plan[j].name.clone(),
                            key: format!("({})", key.join(", ")),
                        });
                    }
                    continue;
                };
                rows[i][j] = value;
                filled += 1;
            }
        }
        tracing::debug!(table = %table, filled, fetched = fetched.len(), "filled unchanged TOAST values");
        Ok((filled, missing))
    }

    /// One lookup: the current values of `cols` for `keys` (each the
    /// concatenated RowBinary of the key columns), passed to the server as
    /// RowBinary data in an escaped literal (`format(RowBinary, ...)`), so
    /// they compare exactly in the columns' own types.
    async fn fetch_current(
        &self,
        table: &str,
        plan: &[ColumnPlan],
        key_plan: &[(usize, &ColumnPlan)],
        cols: &[usize],
        keys: &[Vec<u8>],
        out: &mut HashMap<Vec<u8>, Vec<Cell>>,
    ) -> Result<(), SinkError> {
        let structure: Vec<String> = key_plan
            .iter()
            .enumerate()
            .map(|(n, (_, p))| format!("k{n} {}", p.ch_type()))
            .collect();
        let key_names: Vec<String> = key_plan.iter().map(|(_, p)| quote_ident(&p.name)).collect();
        let key_names = key_names.join(", ");
        let mut select = key_names.clone();
        for &c in cols {
            select.push_str(", ");
            select.push_str(&quote_ident(&plan[c].name));
        }
        let data: Vec<u8> = keys.concat();
        let sql = format!(
            "SELECT {select} FROM {} FINAL WHERE ({key_names}) IN \
             (SELECT * FROM format(RowBinary, {}, {})) \
             ORDER BY {} DESC LIMIT 1 BY {key_names}",
            self.qualified(table),
            quote_literal(structure.join(", ").as_bytes()),
            quote_literal(&data),
            quote_ident(VERSION_COLUMN),
        );
        let mut query = self.client.query_raw(&sql);
        if cols.iter().any(|&c| plan[c].kind == Kind::Json) {
            query = query.with_setting("output_format_binary_write_json_as_string", "1");
        }
        if sql.len() > DEFAULT_MAX_QUERY_SIZE {
            // Only with very long keys: one key per query, raise the limit.
            query = query.with_setting("max_query_size", (sql.len() + 4096).to_string());
        }
        let bytes = query
            .fetch_bytes("RowBinary")
            .map_err(|e| self.map_err(e))?
            .collect()
            .await
            .map_err(|e| self.map_err(e))?;
        let bad = |m: String| SinkError::Server {
            code: None,
            message: format!("unexpected RowBinary from the TOAST lookup in {table}: {m}"),
        };
        let mut input = &bytes[..];
        while !input.is_empty() {
            let before = input;
            for (_, p) in key_plan {
                decode_cell(&p.kind, p.nullable, &mut input).map_err(bad)?;
            }
            let key = before[..before.len() - input.len()].to_vec();
            let mut vals = Vec::with_capacity(cols.len());
            for &c in cols {
                vals.push(decode_cell(&plan[c].kind, plan[c].nullable, &mut input).map_err(bad)?);
            }
            out.insert(key, vals);
        }
        Ok(())
    }
}
