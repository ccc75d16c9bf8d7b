//! Destination DDL and the resync's soft-delete transfer.

use std::collections::{HashMap, HashSet};

use super::ident::{quote_ident, split_key_expr};
use super::literal::literal;
use super::types::Kind;
use super::{ChSink, DestColumn, IS_DELETED_COLUMN, METADATA_COLUMNS, SinkError, VERSION_COLUMN};
use crate::model::{SourceColumn, SourceTable};

/// What `create_table` does when the table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Keep the existing table as it is.
    IfNotExists,
    /// Replace it atomically (`CREATE OR REPLACE TABLE`).
    OrReplace,
}

impl ChSink {
    /// `CREATE DATABASE IF NOT EXISTS` the sink's database.
    pub async fn create_database_if_missing(&self) -> Result<(), SinkError> {
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(&self.database)
        ))
        .await
    }

    /// Creates the destination table of `source`: its columns mapped (see
    /// [`super::types`]), the metadata columns, `ReplacingMergeTree(version,
    /// is_deleted)`, ordered by `order_by` or, if empty, the source key.
    ///
    /// `order_by` must name source columns and include every source key
    /// column (otherwise rows with different keys would be merged into one).
    /// Source key columns are never Nullable; a nullable source column in
    /// `order_by` stays `Nullable` and the table gets
    /// `SETTINGS allow_nullable_key = 1`.
    pub async fn create_table(
        &self,
        name: &str,
        source: &SourceTable,
        order_by: &[String],
        mode: CreateMode,
    ) -> Result<(), SinkError> {
        let sql = self.create_table_sql(name, source, order_by, mode)?;
        self.forget_schema(name);
        self.exec(&sql).await?;
        tracing::info!(database = %self.database, table = %name, ?mode, "created clickhouse table");
        Ok(())
    }

    pub(crate) fn create_table_sql(
        &self,
        name: &str,
        source: &SourceTable,
        order_by: &[String],
        mode: CreateMode,
    ) -> Result<String, SinkError> {
        let what = format!("{}.{}", source.schema, source.name);
        let schema_err = |m: String| SinkError::Schema(format!("table {what}: {m}"));
        if name.is_empty() {
            return Err(schema_err("empty destination table name".into()));
        }
        if source.columns.is_empty() {
            return Err(schema_err("no columns".into()));
        }
        let mut seen = HashSet::new();
        for c in &source.columns {
            if c.name.is_empty() {
                return Err(schema_err("a column has an empty name".into()));
            }
            if METADATA_COLUMNS.iter().any(|(m, _)| *m == c.name) {
                return Err(schema_err(format!(
                    "column {:?} collides with a pgpipe metadata column",
                    c.name
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(schema_err(format!("duplicate column {:?}", c.name)));
            }
        }
        let key_names: Vec<&str> = source
            .key
            .iter()
            .map(|&i| {
                source
                    .columns
                    .get(i)
                    .map(|c| c.name.as_str())
                    .ok_or_else(|| schema_err(format!("key column index {i} out of range")))
            })
            .collect::<Result<_, _>>()?;
        let order: Vec<&str> = if order_by.is_empty() {
            if key_names.is_empty() {
                return Err(schema_err(
                    "no primary key (or replica identity index) and no ORDER BY columns given"
                        .into(),
                ));
            }
            key_names.clone()
        } else {
            let mut seen = HashSet::new();
            for o in order_by {
                if !source.columns.iter().any(|c| &c.name == o) {
                    let names: Vec<&str> = source.columns.iter().map(|c| c.name.as_str()).collect();
                    return Err(schema_err(format!(
                        "ORDER BY column {o:?} is not a column of the table (columns: {})",
                        names.join(", ")
                    )));
                }
                if !seen.insert(o.as_str()) {
                    return Err(schema_err(format!("ORDER BY column {o:?} is listed twice")));
                }
            }
            if let Some(missing) = key_names.iter().find(|k| !seen.contains(**k)) {
                return Err(schema_err(format!(
                    "ORDER BY must include every primary key column, {missing:?} is missing \
                     (rows with different keys would otherwise be deduplicated into one)"
                )));
            }
            order_by.iter().map(String::as_str).collect()
        };

        let mut nullable_key = false;
        let mut cols = Vec::with_capacity(source.columns.len() + 3);
        for (i, c) in source.columns.iter().enumerate() {
            let kind = Kind::for_column(c).map_err(schema_err)?;
            let nullable = !c.not_null && !source.key.contains(&i) && kind.can_be_nullable();
            if nullable && order.contains(&c.name.as_str()) {
                nullable_key = true;
            }
            cols.push(format!(
                "    {} {}",
                quote_ident(&c.name),
                kind.ch_type(nullable)
            ));
        }
        for (m, ty) in METADATA_COLUMNS {
            cols.push(format!("    {} {ty}", quote_ident(m)));
        }
        let head = match mode {
            CreateMode::IfNotExists => "CREATE TABLE IF NOT EXISTS",
            CreateMode::OrReplace => "CREATE OR REPLACE TABLE",
        };
        let order_sql: Vec<String> = order.iter().map(|o| quote_ident(o)).collect();
        // A single column without parentheses: `sorting_key` then reads back as the name.
        let order_sql = match order_sql.as_slice() {
            [one] => one.clone(),
            _ => format!("({})", order_sql.join(", ")),
        };
        let mut sql = format!(
            "{head} {}\n(\n{}\n)\nENGINE = ReplacingMergeTree({}, {})\nORDER BY {order_sql}",
            self.qualified(name),
            cols.join(",\n"),
            quote_ident(VERSION_COLUMN),
            quote_ident(IS_DELETED_COLUMN),
        );
        if nullable_key {
            sql.push_str("\nSETTINGS allow_nullable_key = 1");
        }
        Ok(sql)
    }

    /// `TRUNCATE TABLE` (errors if it does not exist).
    pub async fn truncate(&self, table: &str) -> Result<(), SinkError> {
        self.exec(&format!("TRUNCATE TABLE {}", self.qualified(table)))
            .await
    }

    /// `DROP TABLE IF EXISTS`.
    pub async fn drop_table_if_exists(&self, table: &str) -> Result<(), SinkError> {
        self.forget_schema(table);
        self.exec(&format!("DROP TABLE IF EXISTS {}", self.qualified(table)))
            .await
    }

    /// Atomically swaps two tables' names (`EXCHANGE TABLES a AND b`; needs
    /// an Atomic database, ClickHouse's default).
    pub async fn exchange_tables(&self, a: &str, b: &str) -> Result<(), SinkError> {
        self.forget_schema(a);
        self.forget_schema(b);
        self.exec(&format!(
            "EXCHANGE TABLES {} AND {}",
            self.qualified(a),
            self.qualified(b)
        ))
        .await?;
        tracing::info!(database = %self.database, a = %a, b = %b, "exchanged clickhouse tables");
        Ok(())
    }

    /// Renames a table within the database.
    pub async fn rename_table(&self, from: &str, to: &str) -> Result<(), SinkError> {
        self.forget_schema(from);
        self.forget_schema(to);
        self.exec(&format!(
            "RENAME TABLE {} TO {}",
            self.qualified(from),
            self.qualified(to)
        ))
        .await
    }

    /// A query of `expr` over `system.tables`' row for `table` (none if it
    /// does not exist).
    fn table_info(&self, expr: &str, table: &str) -> clickhouse::query::Query {
        self.client
            .query_raw(&format!(
                "SELECT {expr} FROM system.tables WHERE database = {{db:String}} AND name = {{t:String}}"
            ))
            .param("db", &self.database)
            .param("t", table)
    }

    /// The table's UUID (Atomic databases keep it across EXCHANGE and
    /// RENAME, so it identifies the data, not the name); None if missing.
    pub async fn table_uuid(&self, table: &str) -> Result<Option<String>, SinkError> {
        self.table_info("toString(uuid)", table)
            .fetch_optional::<String>()
            .await
            .map_err(|e| self.map_err(e))
    }

    /// Whether `table` exists in the destination database.
    pub async fn table_exists(&self, table: &str) -> Result<bool, SinkError> {
        let n = self
            .table_info("count()", table)
            .fetch_one::<u64>()
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(n > 0)
    }

    /// The table's sorting key (ORDER BY) as column names (any element that
    /// is an expression, not a column, is returned as its SQL text), or None
    /// if the table does not exist.
    pub async fn sorting_key(&self, table: &str) -> Result<Option<Vec<String>>, SinkError> {
        let key = self
            .table_info("sorting_key", table)
            .fetch_optional::<String>()
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(key.map(|k| split_key_expr(&k)))
    }

    /// `ALTER TABLE ADD COLUMN IF NOT EXISTS` for a column added to the
    /// source, typed as `create_table` would (placed before the metadata
    /// columns). `default` (Postgres text) is what the existing rows read
    /// at the source (the column's `attmissingval`): it becomes the
    /// ClickHouse column's `DEFAULT`, so rows written before read it too.
    /// Without it they read NULL (Nullable) or the type's default. Returns
    /// the statement run.
    pub async fn add_column(
        &self,
        table: &str,
        column: &SourceColumn,
        default: Option<&[u8]>,
    ) -> Result<String, SinkError> {
        if column.name.is_empty() || METADATA_COLUMNS.iter().any(|(m, _)| *m == column.name) {
            return Err(SinkError::Schema(format!(
                "cannot add column {:?} to {}",
                column.name,
                self.qualified(table)
            )));
        }
        let kind = Kind::for_column(column).map_err(SinkError::Schema)?;
        let nullable = !column.not_null && kind.can_be_nullable();
        let default = match default {
            Some(v) => {
                let lit = literal(&kind, nullable, v).map_err(|e| {
                    SinkError::Schema(format!(
                        "the default of column {:?} ({}): {e}",
                        column.name, column.type_name
                    ))
                })?;
                format!(" DEFAULT {lit}")
            }
            None => String::new(),
        };
        self.forget_schema(table);
        let cols = self.dest_columns(table).await?;
        let position = match cols.iter().position(|c| c.name == VERSION_COLUMN) {
            Some(0) => " FIRST".to_string(),
            Some(i) => format!(" AFTER {}", quote_ident(&cols[i - 1].name)),
            None => String::new(),
        };
        let sql = format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}{default}{position}",
            self.qualified(table),
            quote_ident(&column.name),
            kind.ch_type(nullable),
        );
        self.exec(&sql).await?;
        self.forget_schema(table);
        tracing::info!(database = %self.database, table = %table, column = %column.name, "added clickhouse column");
        Ok(sql)
    }

    /// Runs `ALTER TABLE <table> <change>`; returns the statement run.
    async fn alter(&self, table: &str, change: String) -> Result<String, SinkError> {
        let sql = format!("ALTER TABLE {} {change}", self.qualified(table));
        self.exec(&sql).await?;
        Ok(sql)
    }

    /// [`Self::alter`] of the table's columns: its cached schema is dropped.
    async fn alter_schema(&self, table: &str, change: String) -> Result<String, SinkError> {
        let sql = self.alter(table, change).await?;
        self.forget_schema(table);
        Ok(sql)
    }

    /// `ALTER TABLE <table> <change>` of one column; returns the statement
    /// run.
    pub async fn alter_column(
        &self,
        table: &str,
        change: ColumnAlter<'_>,
    ) -> Result<String, SinkError> {
        if change.changes_schema() {
            self.alter_schema(table, change.sql()).await
        } else {
            self.alter(table, change.sql()).await
        }
    }

    /// Each column's comment (`system.columns.comment`), by name.
    pub async fn column_comments(&self, table: &str) -> Result<HashMap<String, String>, SinkError> {
        let rows = self
            .client
            .query_raw(
                "SELECT name, comment FROM system.columns \
                 WHERE database = {db:String} AND table = {t:String}",
            )
            .param("db", &self.database)
            .param("t", table)
            .fetch_all::<(String, String)>()
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(rows.into_iter().collect())
    }

    /// Resync step 4: copies the soft-deleted keys of `original` into
    /// `resync_table`, only for keys that have no row at all in
    /// `resync_table` (so a row deleted and later re-inserted at the source,
    /// which the resync loaded live, stays live: PeerDB's trap). A key counts
    /// as soft-deleted when its latest version in `original` has
    /// `_pgpipe_is_deleted = 1`; that latest row is copied with its version.
    /// Only columns present in both tables are copied (outside the key: with
    /// the same type); the others get their defaults. `renamed` maps a `resync_table` column to its name in
    /// `original` where they differ (a resync that changed rename_columns);
    /// `key_columns` are `resync_table`'s names. Returns the number of rows
    /// copied.
    pub async fn transfer_soft_deletes(
        &self,
        original: &str,
        resync_table: &str,
        key_columns: &[String],
        renamed: &HashMap<String, String>,
    ) -> Result<u64, SinkError> {
        if key_columns.is_empty() {
            return Err(SinkError::Schema(
                "transfer_soft_deletes: no key columns".into(),
            ));
        }
        let missing = |t: &str| {
            SinkError::Schema(format!(
                "ClickHouse table {} does not exist",
                self.qualified(t)
            ))
        };
        let orig = self
            .columns(original)
            .await?
            .ok_or_else(|| missing(original))?;
        let resync = self
            .columns(resync_table)
            .await?
            .ok_or_else(|| missing(resync_table))?;
        fn in_original<'a>(renamed: &'a HashMap<String, String>, name: &'a str) -> &'a str {
            renamed.get(name).map_or(name, String::as_str)
        }
        for k in key_columns
            .iter()
            .map(String::as_str)
            .chain([VERSION_COLUMN, IS_DELETED_COLUMN])
        {
            for (t, cols, k) in [
                (original, &orig, in_original(renamed, k)),
                (resync_table, &resync, k),
            ] {
                if !cols.iter().any(|c| c.name == k) {
                    return Err(SinkError::Schema(format!(
                        "table {} has no column {k:?}",
                        self.qualified(t)
                    )));
                }
            }
        }
        // A tombstone's columns outside the key are fillers: one whose type
        // changed (a resync with new column_types) is left to its default
        // rather than cast (a String filler `''` is no Int32).
        let base = |t: &str| {
            t.strip_prefix("Nullable(")
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(t)
                .to_owned()
        };
        let same_type = |c: &DestColumn| {
            key_columns.contains(&c.name)
                || orig.iter().any(|o| {
                    o.name == in_original(renamed, &c.name) && base(&o.ch_type) == base(&c.ch_type)
                })
        };
        // (name in original, name in resync_table) of the columns both have.
        let common: Vec<(String, String)> = resync
            .iter()
            .filter(|c| orig.iter().any(|o| o.name == in_original(renamed, &c.name)))
            .filter(|c| same_type(c))
            .map(|c| {
                (
                    quote_ident(in_original(renamed, &c.name)),
                    quote_ident(&c.name),
                )
            })
            .collect();
        let targets = common
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let common = common
            .iter()
            .map(|(o, _)| o.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let keys: Vec<String> = key_columns
            .iter()
            .map(|k| quote_ident(in_original(renamed, k)))
            .collect();
        let keys = keys.join(", ");
        let resync_keys: Vec<String> = key_columns.iter().map(|k| quote_ident(k)).collect();
        let resync_keys = resync_keys.join(", ");
        let (o, r) = (self.qualified(original), self.qualified(resync_table));
        let (ver, del) = (quote_ident(VERSION_COLUMN), quote_ident(IS_DELETED_COLUMN));
        // Candidates: keys with any tombstone in the original (usually few);
        // only their rows are sorted, and only their keys are looked up in
        // the resync table, so memory stays proportional to the tombstones.
        let select = format!(
            "SELECT {common} FROM (\
               SELECT * FROM {o} \
               WHERE ({keys}) IN (SELECT {keys} FROM {o} WHERE {del} = 1) \
               ORDER BY {ver} DESC, {del} DESC LIMIT 1 BY {keys}\
             ) \
             WHERE {del} = 1 AND ({keys}) NOT IN (\
               SELECT {resync_keys} FROM {r} \
               WHERE ({resync_keys}) IN (SELECT {keys} FROM {o} WHERE {del} = 1))"
        );
        let count_sql = format!("SELECT count() FROM ({select})");
        tracing::debug!(sql = %count_sql, "counting soft deletes to transfer");
        let expected = self
            .client
            .query_raw(&count_sql)
            .fetch_one::<u64>()
            .await
            .map_err(|e| self.map_err(e))?;
        if expected == 0 {
            tracing::info!(original = %original, resync = %resync_table, "no soft deletes to transfer");
            return Ok(0);
        }
        let insert = format!("INSERT INTO {r} ({targets}) {select}");
        tracing::debug!(sql = %insert, "transferring soft deletes");
        let mut cursor = self
            .client
            .query_raw(&insert)
            .with_setting("wait_end_of_query", "1")
            .fetch_bytes("TabSeparated")
            .map_err(|e| self.map_err(e))?;
        cursor.collect().await.map_err(|e| self.map_err(e))?;
        let written = cursor
            .summary()
            .and_then(|s| s.written_rows())
            .unwrap_or(expected);
        self.forget_schema(resync_table);
        tracing::info!(
            original = %original, resync = %resync_table, rows = written,
            "transferred soft-deleted rows"
        );
        Ok(written)
    }
}

/// One column change of `ALTER TABLE` (what a source schema change becomes
/// in ClickHouse); every form is idempotent where ClickHouse allows it.
#[derive(Debug, Clone, Copy)]
pub enum ColumnAlter<'a> {
    /// `DROP COLUMN IF EXISTS`.
    Drop(&'a str),
    /// `RENAME COLUMN IF EXISTS from TO to`.
    Rename {
        /// The column's name now.
        from: &'a str,
        /// Its new name.
        to: &'a str,
    },
    /// `COMMENT COLUMN IF EXISTS` (names and types stay).
    Comment {
        /// The column.
        column: &'a str,
        /// The comment, as text.
        comment: &'a str,
    },
    /// `MODIFY COLUMN` to another type.
    Modify {
        /// The column.
        column: &'a str,
        /// Its new ClickHouse type.
        ch_type: &'a str,
    },
}

impl ColumnAlter<'_> {
    fn sql(&self) -> String {
        match *self {
            Self::Drop(column) => format!("DROP COLUMN IF EXISTS {}", quote_ident(column)),
            Self::Rename { from, to } => format!(
                "RENAME COLUMN IF EXISTS {} TO {}",
                quote_ident(from),
                quote_ident(to)
            ),
            Self::Comment { column, comment } => format!(
                "COMMENT COLUMN IF EXISTS {} {}",
                quote_ident(column),
                super::ident::quote_literal(comment.as_bytes())
            ),
            Self::Modify { column, ch_type } => {
                format!("MODIFY COLUMN {} {ch_type}", quote_ident(column))
            }
        }
    }

    /// Whether a column's name or type changes (the cached schema goes).
    fn changes_schema(&self) -> bool {
        !matches!(self, Self::Comment { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PgType;

    fn col(name: &str, pg_type: PgType, not_null: bool) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            type_name: String::new(),
            type_oid: 0,
            pg_type,
            not_null,
            repr: None,
            attnum: 0,
            typmod: -1,
        }
    }

    fn table(cols: Vec<SourceColumn>, key: Vec<usize>) -> SourceTable {
        SourceTable {
            schema: "public".into(),
            name: "t".into(),
            oid: 1,
            columns: cols,
            key,
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            generated_columns: Vec::new(),
        }
    }

    fn sink() -> ChSink {
        ChSink::connect("http://127.0.0.1:1", "default", None, "d`b").unwrap()
    }

    #[test]
    fn create_sql() {
        let t = table(
            vec![
                col("id", PgType::Int8, true),
                col("tenant", PgType::Text, false),
                col(
                    "v",
                    PgType::Numeric {
                        precision: Some(12),
                        scale: Some(2),
                    },
                    false,
                ),
            ],
            vec![0],
        );
        let sql = sink()
            .create_table_sql("t`x", &t, &[], CreateMode::IfNotExists)
            .unwrap();
        assert!(
            sql.starts_with("CREATE TABLE IF NOT EXISTS `d\\`b`.`t\\`x`"),
            "{sql}"
        );
        assert!(sql.contains("`id` Int64,"), "{sql}");
        assert!(sql.contains("`v` Nullable(Decimal(12, 2)),"), "{sql}");
        assert!(sql.contains("ORDER BY `id`"), "{sql}");
        assert!(!sql.contains("allow_nullable_key"));

        let sql = sink()
            .create_table_sql(
                "t",
                &t,
                &["tenant".into(), "id".into()],
                CreateMode::OrReplace,
            )
            .unwrap();
        assert!(
            sql.contains("ORDER BY (`tenant`, `id`)\nSETTINGS allow_nullable_key = 1"),
            "{sql}"
        );

        let err = sink().create_table_sql("t", &t, &["nope".into()], CreateMode::OrReplace);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("\"nope\" is not a column")
        );
        let err = sink().create_table_sql("t", &t, &["tenant".into()], CreateMode::OrReplace);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("must include every primary key column")
        );
        let nokey = table(vec![col("a", PgType::Int4, true)], vec![]);
        assert!(
            sink()
                .create_table_sql("t", &nokey, &[], CreateMode::OrReplace)
                .is_err()
        );
        let clash = table(vec![col("_pgpipe_version", PgType::Int4, true)], vec![0]);
        assert!(
            sink()
                .create_table_sql("t", &clash, &[], CreateMode::OrReplace)
                .is_err()
        );
    }
}
