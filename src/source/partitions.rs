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

/// Pairs `(i, j)` of `tables` where table i is a partition (at any depth)
/// of partitioned table j. Both cannot be in one pipe: with
/// `publish_via_partition_root` the partition's changes are published
/// under j only, so i's own destination would silently stop changing.
pub async fn partition_overlaps(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<(usize, usize)>, SourceError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| SourceError::query("reading the server version", &e))?
        .get(0);
    // pg_partition_ancestors is PostgreSQL 12's; partitioned tables are
    // replicated from 13 on.
    if version < 130_000 || tables.len() < 2 {
        return Ok(Vec::new());
    }
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
    let rows = client
        .query(
            "WITH t AS ( \
               SELECT i, to_regclass(format('%I.%I', s, n)) AS rel \
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, n, i)) \
             SELECT c.i::int8, p.i::int8 \
             FROM t c \
             CROSS JOIN LATERAL pg_partition_ancestors(c.rel) a \
             JOIN t p ON p.rel = a.relid AND p.i <> c.i \
             ORDER BY 1, 2",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| SourceError::query("checking the tables' partition trees", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (c, p): (i64, i64) = (r.get(0), r.get(1));
            ((c - 1) as usize, (p - 1) as usize)
        })
        .collect())
}
