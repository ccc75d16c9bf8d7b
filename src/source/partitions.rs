//! The leaf partitions of a partitioned table: the tables that hold its
//! rows. The parent has no storage, so a snapshot copies each leaf (by CTID
//! page ranges, like any table) into the one destination table, while CDC
//! receives their changes under the parent's relation
//! (`publish_via_partition_root`).

use tokio_postgres::Client;

use super::SourceError;
use super::schema::estimate;
use crate::domain::validate::QualifiedName;

/// A leaf partition with the planner's estimates (for splitting its copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub schema: String,
    pub name: String,
    pub estimated_rows: u64,
    pub pages: u64,
}

impl Leaf {
    /// `schema.table`, as source tables are named in a pipe's config.
    pub fn canonical(&self) -> String {
        QualifiedName {
            schema: self.schema.clone(),
            table: self.name.clone(),
        }
        .canonical()
    }
}

/// The leaf partitions (at any depth) of the partitioned table `root`, in
/// name order. Foreign-table partitions are left out: they have no local
/// rows to copy and their changes are never in the WAL.
pub async fn leaf_partitions(client: &Client, root: u32) -> Result<Vec<Leaf>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.reltuples::float8, c.relpages::int8, \
                    (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8 \
             FROM pg_partition_tree($1::oid::regclass) t \
             JOIN pg_class c ON c.oid = t.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.isleaf AND c.relkind = 'r' \
             ORDER BY 1, 2",
            &[&root],
        )
        .await
        .map_err(|e| SourceError::query("listing the partitions of a partitioned table", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (estimated_rows, pages) = estimate(r.get(2), r.get(3), r.get(4));
            Leaf {
                schema: r.get(0),
                name: r.get(1),
                estimated_rows,
                pages,
            }
        })
        .collect())
}
