//! Describing source tables from pg_catalog (parameterized queries only).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::SourceError;
use crate::domain::validate::QualifiedName;
use crate::model::{PgType, SourceColumn, SourceTable};

/// Describes each table: columns in attribute order (dropped columns
/// excluded, and generated columns unless the server can publish them:
/// before PostgreSQL 18 pgoutput never sends them, so the snapshot must not
/// either; they are listed in `generated_columns`), classified types (`PgType::Unsupported` for
/// a column pgpipe cannot replicate: not an error here, as the pipe may
/// exclude it), and the key pgoutput identifies rows by.
///
/// The key is the primary key, except with `REPLICA IDENTITY USING INDEX`,
/// where it is that index's columns (pgoutput sends those, not the primary
/// key, as the old key of updates and deletes).
pub async fn describe_tables(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<SourceTable>, SourceError> {
    let version = server_version(client).await?;
    let mut types = TypeCache::default();
    let mut out = Vec::with_capacity(tables.len());
    for q in tables {
        let report = describe_one(client, q, version, &mut types).await?;
        // Unsupported columns are described as such: the column mapping
        // refuses them unless excluded.
        if let Some(first) = report
            .problems
            .into_iter()
            .find(|p| !matches!(p, SourceError::UnsupportedType { .. }))
        {
            return Err(first);
        }
        out.push(report.table);
    }
    Ok(out)
}

/// A table as [`describe_table_problems`] found it.
#[derive(Debug)]
pub struct TableReport {
    /// Every column (unsupported ones typed `PgType::Unsupported`); `key`
    /// may be empty when `problems` says so.
    pub table: SourceTable,
    /// Every column name (unreplicated generated ones excluded), supported
    /// or not.
    pub all_columns: Vec<String>,
    /// Every problem that does not prevent describing the table: each
    /// unsupported column, a missing key or unusable replica identity.
    pub problems: Vec<SourceError>,
}

/// Like [`describe_tables`], but describes every table and reports every
/// problem of each instead of stopping at the first: an inner Err is a
/// table that cannot be described (missing, not a table, unreadable...).
pub async fn describe_table_problems(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<Result<TableReport, SourceError>>, SourceError> {
    let version = server_version(client).await?;
    let mut types = TypeCache::default();
    let mut out = Vec::with_capacity(tables.len());
    for q in tables {
        out.push(describe_one(client, q, version, &mut types).await);
    }
    Ok(out)
}

/// `server_version_num`: which columns are replicated depends on it.
async fn server_version(client: &Client) -> Result<i32, SourceError> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| SourceError::query("reading the server version", &e))?
        .get(0))
}

async fn describe_one(
    client: &Client,
    q: &QualifiedName,
    version: i32,
    types: &mut TypeCache,
) -> Result<TableReport, SourceError> {
    let name = q.canonical();
    let ctx = || format!("describing table {name}");
    let rows = client
        .query(
            "SELECT c.oid, c.relkind::text, c.relpersistence::text, c.relreplident::text, \
                    c.reltuples::float8, c.relpages::int8, \
                    (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8, \
                    has_table_privilege(c.oid, 'SELECT'), current_user::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&q.schema, &q.table],
        )
        .await
        .map_err(|e| SourceError::query(ctx(), &e))?;
    let Some(t) = rows.first() else {
        return Err(SourceError::TableMissing { table: name });
    };
    let oid: u32 = t.get(0);
    let relkind: String = t.get(1);
    let persistence: String = t.get(2);
    let replident: String = t.get(3);
    let reltuples: f64 = t.get(4);
    let relpages: i64 = t.get(5);
    let cur_pages: i64 = t.get(6);
    let can_select: bool = t.get(7);
    let user: String = t.get(8);

    let partitioned = relkind == "p";
    match relkind.as_str() {
        "r" => {}
        // Replicated through the root: publish_via_partition_root is
        // PostgreSQL 13's.
        "p" if version >= 130_000 => {}
        "p" => {
            return Err(SourceError::NotATable {
                table: name,
                kind: "partitioned table".into(),
                hint: " and partitioned tables from PostgreSQL 13 on \
                       (publish_via_partition_root); list its partitions instead"
                    .into(),
            });
        }
        k => {
            let kind = match k {
                "v" => "view",
                "m" => "materialized view",
                "f" => "foreign table",
                "S" => "sequence",
                "i" | "I" => "index",
                "c" => "composite type",
                "t" => "TOAST table",
                _ => "relation of another kind",
            };
            return Err(SourceError::NotATable {
                table: name,
                kind: kind.into(),
                hint: String::new(),
            });
        }
    }
    if persistence != "p" {
        return Err(SourceError::UnloggedTable { table: name });
    }
    if !can_select {
        return Err(SourceError::NoSelectPrivilege { table: name, user });
    }

    let generated = if version >= 120_000 {
        "a.attgenerated::text"
    } else {
        "''::text"
    };
    let cols = client
        .query(
            &format!(
                "SELECT a.attnum::int2, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        a.atttypid, a.atttypmod::int4, a.attnotnull, a.attndims::int4, {generated} \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| SourceError::query(ctx(), &e))?;
    let mut columns = Vec::with_capacity(cols.len());
    let mut attnums = Vec::with_capacity(cols.len());
    let mut all_columns = Vec::with_capacity(cols.len());
    let mut problems = Vec::new();
    let mut generated_columns = Vec::new();
    for c in &cols {
        let attnum: i16 = c.get(0);
        let col_name: String = c.get(1);
        let type_name: String = c.get(2);
        let type_oid: u32 = c.get(3);
        let typmod: i32 = c.get(4);
        let not_null: bool = c.get(5);
        let ndims: i32 = c.get(6);
        let gen_kind: String = c.get(7);
        if !replicates_generated(version, &gen_kind) {
            generated_columns.push(col_name);
            continue;
        }
        let unsupported = || SourceError::UnsupportedType {
            table: name.clone(),
            column: col_name.clone(),
            type_name: type_name.clone(),
        };
        all_columns.push(col_name.clone());
        let pg_type = if ndims > 1 {
            None
        } else {
            types
                .classify(client, type_oid, typmod)
                .await
                .map_err(|e| e.into_source_error(&name))?
        };
        // Kept going: every unsupported column is worth knowing at once. It
        // stays in the description (CDC rows carry it) for exclude_columns.
        let pg_type = pg_type.unwrap_or_else(|| {
            problems.push(unsupported());
            PgType::Unsupported
        });
        attnums.push(attnum);
        columns.push(SourceColumn {
            name: col_name,
            type_name,
            type_oid,
            pg_type,
            not_null,
            repr: None,
            attnum,
            typmod,
        });
    }

    let idx = client
        .query(
            "SELECT i.indisprimary, i.indisreplident, i.indkey::int2[] \
             FROM pg_index i WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)",
            &[&oid],
        )
        .await
        .map_err(|e| SourceError::query(ctx(), &e))?;
    let mut pk: Option<Vec<i16>> = None;
    let mut ri: Option<Vec<i16>> = None;
    for r in &idx {
        let (is_pk, is_ri, keys): (bool, bool, Vec<i16>) = (r.get(0), r.get(1), r.get(2));
        if is_pk {
            pk = Some(keys.clone());
        }
        if is_ri {
            ri = Some(keys);
        }
    }
    // A replica identity problem is the table's key problem: not reported
    // twice as "no primary key".
    let mut identity_reported = false;
    let key_attnums = match replident.as_str() {
        "i" => ri.or(pk),
        "n" => {
            problems.push(SourceError::ReplicaIdentityNothing {
                table: name.clone(),
            });
            identity_reported = true;
            None
        }
        "f" => {
            if pk.is_none() {
                problems.push(SourceError::ReplicaIdentityFullWithoutKey {
                    table: name.clone(),
                });
                identity_reported = true;
            }
            pk
        }
        _ => pk,
    };
    let mut key = Vec::new();
    match key_attnums.filter(|k| !k.is_empty()) {
        None if partitioned && !identity_reported => {
            problems.push(SourceError::PartitionedWithoutKey {
                table: name.clone(),
            })
        }
        None if !identity_reported => problems.push(SourceError::NoPrimaryKey {
            table: name.clone(),
        }),
        None => {}
        Some(k) => {
            for a in k {
                // A key on an expression (attnum 0) or a generated column
                // cannot identify rows in the change stream.
                let Some(i) = attnums.iter().position(|&x| x == a) else {
                    problems.push(SourceError::NoPrimaryKey {
                        table: name.clone(),
                    });
                    key.clear();
                    break;
                };
                key.push(i);
            }
        }
    }

    let (estimated_rows, pages) = if partitioned {
        // No storage of its own: the sums over the leaves.
        super::leaf_partitions(client, oid)
            .await?
            .iter()
            .fold((0, 0), |(r, p), l| (r + l.estimated_rows, p + l.pages))
    } else {
        estimate(reltuples, relpages, cur_pages)
    };
    let table = SourceTable {
        schema: q.schema.clone(),
        name: q.table.clone(),
        oid,
        columns,
        key,
        estimated_rows,
        pages,
        partitioned,
        generated_columns,
    };
    Ok(TableReport {
        table,
        all_columns,
        problems,
    })
}

/// Whether a column with this `attgenerated` is described (and so
/// replicated): ordinary columns always; stored generated columns from
/// PostgreSQL 18 on, whose pgoutput sends them when the publication says
/// `publish_generated_columns = stored` (see `ensure_publication`). Virtual
/// generated columns (18) are never sent.
fn replicates_generated(version: i32, attgenerated: &str) -> bool {
    match attgenerated {
        "" => true,
        "s" => version >= 180_000,
        _ => false,
    }
}

/// A relation's row and page estimates from pg_class and its current size.
pub(super) fn estimate(reltuples: f64, relpages: i64, cur_pages: i64) -> (u64, u64) {
    let reltuples = if reltuples.is_finite() && reltuples > 0.0 {
        reltuples
    } else {
        0.0
    };
    let pages = relpages.max(cur_pages).max(0) as u64;
    // Like the planner: scale the row density seen at the last ANALYZE to
    // the table's current size.
    let estimated_rows = if relpages > 0 && cur_pages > relpages {
        reltuples / relpages as f64 * cur_pages as f64
    } else {
        reltuples
    };
    (estimated_rows.round() as u64, pages)
}

/// What the rows that existed before a column was added read for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddedValue {
    /// NULL: no default (or `DEFAULT NULL`).
    Null,
    /// A constant default Postgres keeps in `attmissingval` (text output
    /// format): the existing rows read it without being rewritten.
    Missing(Vec<u8>),
    /// A default without a missing value: volatile (`now()`, `random()`,
    /// a sequence...), so Postgres rewrote the table with values pgpipe
    /// cannot know, or the table was rewritten since. The expression, for
    /// messages.
    Unknown(String),
}

/// What old rows read for column `attnum` of table `oid`
/// (`pg_attribute.atthasmissing/attmissingval`, `pg_attrdef`).
///
/// Without a missing value (a volatile default made Postgres rewrite the
/// table, or a later rewrite such as `ALTER COLUMN ... TYPE` stored the
/// values), a default whose expression calls only immutable functions is
/// evaluated: every old row got that value.
pub async fn added_column_value(
    client: &Client,
    oid: u32,
    attnum: i16,
) -> Result<AddedValue, SourceError> {
    let ctx = "reading a column default";
    let row = client
        .query_opt(
            "SELECT a.atthasmissing, a.attmissingval::text, d.adbin::text, \
                    pg_get_expr(d.adbin, d.adrelid), format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d \
                  ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum = $2",
            &[&oid, &attnum],
        )
        .await
        .map_err(|e| SourceError::query(ctx, &e))?;
    let Some(row) = row else {
        return Ok(AddedValue::Null);
    };
    let has_missing: bool = row.get(0);
    let missing: Option<String> = row.get(1);
    let tree: Option<String> = row.get(2);
    let expr: Option<String> = row.get(3);
    let type_name: String = row.get(4);
    if let (true, Some(m)) = (has_missing, &missing) {
        return Ok(match first_array_element(m.as_bytes()) {
            Some(Some(v)) => AddedValue::Missing(v),
            Some(None) => AddedValue::Null,
            None => AddedValue::Unknown(format!("attmissingval {m}")),
        });
    }
    let (Some(tree), Some(expr)) = (tree, expr) else {
        return Ok(AddedValue::Null);
    };
    // Functions (and operators' functions) the expression calls, from its
    // node tree; SQL value functions (CURRENT_TIMESTAMP...) and sequences
    // are never constant.
    if tree.contains("SQLVALUEFUNCTION") || tree.contains("NEXTVALUEEXPR") {
        return Ok(AddedValue::Unknown(expr));
    }
    let funcs: Vec<u32> = tree
        .split(":funcid ")
        .skip(1)
        .chain(tree.split(":opfuncid ").skip(1))
        .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    let immutable: bool = client
        .query_one(
            "SELECT coalesce(bool_and(provolatile = 'i'), true) FROM pg_proc WHERE oid = ANY($1)",
            &[&funcs],
        )
        .await
        .map_err(|e| SourceError::query(ctx, &e))?
        .get(0);
    if !immutable {
        return Ok(AddedValue::Unknown(expr));
    }
    // The catalog's own deparsed expression and type name: valid SQL.
    let value: Option<String> = client
        .query_one(
            &format!("SELECT (CAST(({expr}) AS {type_name}))::text"),
            &[],
        )
        .await
        .map_err(|e| SourceError::query(ctx, &e))?
        .get(0);
    Ok(value.map_or(AddedValue::Null, |v| AddedValue::Missing(v.into_bytes())))
}

/// The first element of a Postgres array literal (`{7}`, `{"a \"b\""}`):
/// Some(None) for NULL, None when it is not an array literal.
fn first_array_element(t: &[u8]) -> Option<Option<Vec<u8>>> {
    let inner = t.strip_prefix(b"{")?;
    if let Some(rest) = inner.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut it = rest.iter();
        while let Some(&c) = it.next() {
            match c {
                b'\\' => out.push(*it.next()?),
                b'"' => return Some(Some(out)),
                _ => out.push(c),
            }
        }
        return None;
    }
    let end = inner.iter().position(|&c| c == b',' || c == b'}')?;
    let v = inner[..end].trim_ascii();
    if v.eq_ignore_ascii_case(b"NULL") {
        Some(None)
    } else {
        Some(Some(v.to_vec()))
    }
}

#[derive(Debug, Clone)]
struct TypeRow {
    name: String,
    typtype: String,
    basetype: u32,
    typtypmod: i32,
    elem: u32,
    typlen: i32,
    category: String,
}

enum TypeError {
    Query(tokio_postgres::Error),
    Missing(u32),
}

impl TypeError {
    fn into_source_error(self, table: &str) -> SourceError {
        match self {
            TypeError::Query(e) => {
                SourceError::query(format!("reading column types of {table}"), &e)
            }
            TypeError::Missing(oid) => SourceError::Protocol {
                context: format!("reading column types of {table}"),
                reason: format!("type oid {oid} is not in pg_type"),
            },
        }
    }
}

#[derive(Default)]
struct TypeCache {
    rows: HashMap<u32, TypeRow>,
    enums: HashMap<u32, Vec<String>>,
}

impl TypeCache {
    async fn row(&mut self, client: &Client, oid: u32) -> Result<TypeRow, TypeError> {
        if let Some(r) = self.rows.get(&oid) {
            return Ok(r.clone());
        }
        let rows = client
            .query(
                "SELECT t.typname::text, t.typtype::text, t.typbasetype, t.typtypmod, t.typelem, \
                        t.typlen::int4, t.typcategory::text \
                 FROM pg_type t WHERE t.oid = $1",
                &[&oid],
            )
            .await
            .map_err(TypeError::Query)?;
        let r = rows.first().ok_or(TypeError::Missing(oid))?;
        let row = TypeRow {
            name: r.get(0),
            typtype: r.get(1),
            basetype: r.get(2),
            typtypmod: r.get(3),
            elem: r.get(4),
            typlen: r.get(5),
            category: r.get(6),
        };
        self.rows.insert(oid, row.clone());
        Ok(row)
    }

    /// Follows domains down to their base type; returns it with the
    /// effective type modifier.
    async fn resolve_domain(
        &mut self,
        client: &Client,
        mut oid: u32,
        mut typmod: i32,
    ) -> Result<(u32, i32, TypeRow), TypeError> {
        // Domains cannot be cyclic, but stay bounded anyway.
        for _ in 0..32 {
            let row = self.row(client, oid).await?;
            if row.typtype != "d" {
                return Ok((oid, typmod, row));
            }
            if typmod == -1 {
                typmod = row.typtypmod;
            }
            oid = row.basetype;
        }
        Err(TypeError::Missing(oid))
    }

    async fn classify(
        &mut self,
        client: &Client,
        oid: u32,
        typmod: i32,
    ) -> Result<Option<PgType>, TypeError> {
        let (oid, typmod, row) = self.resolve_domain(client, oid, typmod).await?;
        if is_array(&row) {
            let (eoid, etypmod, erow) = self.resolve_domain(client, row.elem, typmod).await?;
            if is_array(&erow) {
                return Ok(None);
            }
            return Ok(self
                .scalar(client, eoid, etypmod, &erow)
                .await?
                .map(|t| PgType::Array(Box::new(t))));
        }
        self.scalar(client, oid, typmod, &row).await
    }

    async fn scalar(
        &mut self,
        client: &Client,
        oid: u32,
        typmod: i32,
        row: &TypeRow,
    ) -> Result<Option<PgType>, TypeError> {
        if let Some(t) = builtin_scalar(oid, typmod) {
            return Ok(Some(t));
        }
        if row.typtype == "e" {
            if let Some(labels) = self.enums.get(&oid) {
                return Ok(Some(PgType::Enum {
                    labels: labels.clone(),
                }));
            }
            let labels: Vec<String> = client
                .query(
                    "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
                    &[&oid],
                )
                .await
                .map_err(TypeError::Query)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            self.enums.insert(oid, labels.clone());
            return Ok(Some(PgType::Enum { labels }));
        }
        // The citext extension's case-insensitive text (its oid varies).
        if row.typtype == "b" && row.name == "citext" {
            return Ok(Some(PgType::Text));
        }
        Ok(None)
    }
}

/// A true array type (not `name`/`point`-like fixed-length types with an
/// element type, nor int2vector/oidvector whose text form differs).
fn is_array(row: &TypeRow) -> bool {
    row.elem != 0
        && row.typlen == -1
        && row.category == "A"
        && row.typtype == "b"
        && row.name != "int2vector"
        && row.name != "oidvector"
}

/// Built-in scalar types by their fixed oids.
fn builtin_scalar(oid: u32, typmod: i32) -> Option<PgType> {
    Some(match oid {
        16 => PgType::Bool,
        17 => PgType::Bytea,
        19 | 25 | 1042 | 1043 => PgType::Text,
        20 => PgType::Int8,
        21 => PgType::Int2,
        23 => PgType::Int4,
        114 => PgType::Json,
        3802 => PgType::Jsonb,
        700 => PgType::Float4,
        701 => PgType::Float8,
        650 | 869 => PgType::Inet,
        1082 => PgType::Date,
        1083 => PgType::Time,
        1114 => PgType::Timestamp,
        1184 => PgType::TimestampTz,
        1186 => PgType::Interval,
        2950 => PgType::Uuid,
        1700 => numeric(typmod),
        _ => return None,
    })
}

/// Decodes numeric's type modifier: `((p << 16) | s) + 4`, where since
/// PostgreSQL 15 the scale is an 11-bit signed number and may be negative
/// or exceed the precision. Mapped to what a decimal type can hold: a
/// negative scale rounds to tens, hundreds...: precision `p - s`, scale 0;
/// a scale above the precision widens the precision to the scale.
fn numeric(typmod: i32) -> PgType {
    if typmod < 4 {
        return PgType::Numeric {
            precision: None,
            scale: None,
        };
    }
    let t = typmod - 4;
    let p = (t >> 16) & 0xffff;
    let s = ((t & 0x7ff) ^ 1024) - 1024;
    let (p, s) = if s < 0 { (p - s, 0) } else { (p.max(s), s) };
    PgType::Numeric {
        precision: Some(p as u32),
        scale: Some(s as u32),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_missing_value_is_the_arrays_only_element() {
        use super::first_array_element as f;
        assert_eq!(f(b"{7}"), Some(Some(b"7".to_vec())));
        assert_eq!(f(br#"{"a\"b'c{}"}"#), Some(Some(br#"a"b'c{}"#.to_vec())));
        assert_eq!(f(br#"{"{1,NULL}"}"#), Some(Some(b"{1,NULL}".to_vec())));
        assert_eq!(f(b"{NULL}"), Some(None));
        assert_eq!(f(b"7"), None);
    }

    use super::*;

    fn typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7ff)) + 4
    }

    #[test]
    fn stored_generated_columns_are_replicated_from_postgres_18() {
        assert!(replicates_generated(150_004, ""));
        assert!(!replicates_generated(150_004, "s"));
        assert!(!replicates_generated(179_999, "s"));
        assert!(replicates_generated(180_000, "s"));
        assert!(!replicates_generated(180_000, "v"));
    }

    #[test]
    fn numeric_typmods_decode() {
        assert_eq!(
            numeric(-1),
            PgType::Numeric {
                precision: None,
                scale: None
            }
        );
        assert_eq!(
            numeric(typmod(10, 2)),
            PgType::Numeric {
                precision: Some(10),
                scale: Some(2)
            }
        );
        assert_eq!(
            numeric(typmod(5, -2)),
            PgType::Numeric {
                precision: Some(7),
                scale: Some(0)
            }
        );
        assert_eq!(
            numeric(typmod(3, 5)),
            PgType::Numeric {
                precision: Some(5),
                scale: Some(5)
            }
        );
    }
}
