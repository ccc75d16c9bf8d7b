//! Current values of single rows, by key.
//!
//! While a table is loaded beside CDC, an UPDATE may leave a TOASTed column
//! unchanged (pgoutput then sends no value) for a row the load has not
//! written to ClickHouse yet. The value is then read from the source table.
//! It may be newer than the change, but any later change of that row follows
//! in the stream with a higher version, so the final state is the same.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{SourceError, quote_ident};
use crate::domain::validate::QualifiedName;
use crate::model::{Cell, Row, SourceTable};

/// Fills the `UnchangedToast` cells of `row` from the source row with the
/// same key. Returns false (cells set to NULL) when the row no longer
/// exists: its deletion follows in the stream and supersedes this version.
pub async fn fill_from_source(
    client: &Client,
    table: &SourceTable,
    row: &mut Row,
) -> Result<bool, SourceError> {
    let wanted: Vec<usize> = (0..row.len())
        .filter(|&i| row[i] == Cell::UnchangedToast)
        .collect();
    if wanted.is_empty() {
        return Ok(true);
    }
    let q = QualifiedName {
        schema: table.schema.clone(),
        table: table.name.clone(),
    };
    let select = wanted
        .iter()
        .map(|&i| format!("{}::text", quote_ident(&table.columns[i].name)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut keys: Vec<Option<String>> = Vec::with_capacity(table.key.len());
    let mut filter = Vec::with_capacity(table.key.len());
    for (n, &k) in table.key.iter().enumerate() {
        let col = &table.columns[k];
        filter.push(format!(
            "{} = CAST(${}::text AS {})",
            quote_ident(&col.name),
            n + 1,
            col.type_name
        ));
        keys.push(match row.get(k) {
            Some(Cell::Text(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        });
    }
    // A partitioned table holds no rows itself: its partitions are read.
    let only = if table.partitioned { "" } else { "ONLY " };
    let sql = format!(
        "SELECT {select} FROM {only}{} WHERE {}",
        super::quote_table(&q),
        filter.join(" AND ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
    let found = client
        .query_opt(&sql, &params)
        .await
        .map_err(|e| SourceError::query(format!("reading a row of {}", q.canonical()), &e))?;
    let Some(found) = found else {
        for &i in &wanted {
            row[i] = Cell::Null;
        }
        return Ok(false);
    };
    for (n, &i) in wanted.iter().enumerate() {
        let v: Option<String> = found.get(n);
        row[i] = v.map_or(Cell::Null, |s| Cell::Text(s.into_bytes()));
    }
    Ok(true)
}
