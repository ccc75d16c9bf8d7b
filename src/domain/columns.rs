//! Per-table column exclusion, rename and type choice
//! (`TableConfig.exclude_columns`, `rename_columns`, `column_types`).
//!
//! One mapping step turns a described source table and its config into the
//! replicated view used everywhere downstream: the COPY selects the kept
//! columns by their source names, CDC rows (pgoutput always sends every
//! column) are projected by index, and the sink only ever sees the kept
//! columns under their destination names.

use std::collections::{HashMap, HashSet};

use super::names::{Invalid, ident};
use crate::model::{ColumnRepr, PgType, Row, SourceTable};
use crate::proto::TableConfig;

/// Prefix of pgpipe's own ClickHouse columns (`_pgpipe_version`, ...).
pub const RESERVED_PREFIX: &str = "_pgpipe_";
/// Postgres allows at most 1600 columns per table: longer lists are not
/// about a real table (and would bloat every event carrying the config).
pub const MAX_COLUMN_ENTRIES: usize = 1600;

/// True for a request field this module checks (ValidatePipe reports its
/// problems with kind COLUMN).
pub fn is_column_field(field: &str) -> bool {
    field.contains(".exclude_columns")
        || field.contains(".rename_columns")
        || field.contains(".column_types")
}

fn rename_field(i: usize, from: &str) -> String {
    format!("tables[{i}].rename_columns[{from:?}]")
}

fn type_field(i: usize, column: &str) -> String {
    format!("tables[{i}].column_types[{column:?}]")
}

/// Table entry `i`'s `column_types`, parsed (sorted by column, so the first
/// problem reported is the same on every run).
pub fn column_types(
    i: usize,
    t: &TableConfig,
) -> Result<Vec<(String, ColumnRepr)>, (String, Invalid)> {
    let mut out = Vec::with_capacity(t.column_types.len());
    let mut entries: Vec<(&String, &String)> = t.column_types.iter().collect();
    entries.sort();
    for (column, ty) in entries {
        let field = type_field(i, column);
        if let Err(e) = ident(&format!("tables[{i}].column_types key"), column) {
            return Err((field, e));
        }
        let repr = ty
            .parse::<ColumnRepr>()
            .map_err(|e| (field.clone(), Invalid(format!("{field}: {e}"))))?;
        out.push((column.clone(), repr));
    }
    Ok(out)
}

/// Checks of table entry `i`'s column options that need no source: names,
/// duplicates, reserved destination names, a column both excluded and
/// renamed, two columns renamed to one name. Errors carry the field.
pub fn check_static(i: usize, t: &TableConfig) -> Result<(), (String, Invalid)> {
    let fail = |field: String, msg: String| Err((field, Invalid(msg)));
    for (option, entries) in [
        ("exclude_columns", t.exclude_columns.len()),
        ("rename_columns", t.rename_columns.len()),
        ("column_types", t.column_types.len()),
    ] {
        if entries > MAX_COLUMN_ENTRIES {
            return fail(
                format!("tables[{i}].{option}"),
                format!("tables[{i}].{option} has {entries} entries; at most {MAX_COLUMN_ENTRIES}"),
            );
        }
    }
    let mut excluded = HashSet::new();
    for (j, c) in t.exclude_columns.iter().enumerate() {
        let field = format!("tables[{i}].exclude_columns[{j}]");
        if let Err(e) = ident(&field, c) {
            return Err((field, e));
        }
        if !excluded.insert(c.as_str()) {
            return fail(
                field.clone(),
                format!("{field}: column {c:?} is excluded twice"),
            );
        }
    }
    for (column, _) in column_types(i, t)? {
        if excluded.contains(column.as_str()) {
            let field = type_field(i, &column);
            return fail(
                field.clone(),
                format!(
                    "{field}: column {column:?} is excluded, so it has no ClickHouse type; drop \
                     it from one of exclude_columns and column_types"
                ),
            );
        }
    }
    // Sorted, so the first problem reported is the same on every run.
    let mut renames: Vec<(&String, &String)> = t.rename_columns.iter().collect();
    renames.sort();
    let mut targets: HashMap<&str, &str> = HashMap::new();
    for (from, to) in renames {
        let field = rename_field(i, from);
        if let Err(e) = ident(&format!("tables[{i}].rename_columns key"), from) {
            return Err((field, e));
        }
        if let Err(e) = ident(&field, to) {
            return Err((field, e));
        }
        if to.starts_with(RESERVED_PREFIX) {
            return fail(
                field.clone(),
                format!(
                    "{field}: {to:?} starts with `{RESERVED_PREFIX}`, which pgpipe reserves for its \
                     own columns; pick another name"
                ),
            );
        }
        if excluded.contains(from.as_str()) {
            return fail(
                field.clone(),
                format!(
                    "{field}: column {from:?} is both excluded and renamed; drop it from one of \
                     exclude_columns and rename_columns"
                ),
            );
        }
        if let Some(other) = targets.insert(to, from) {
            return fail(
                field.clone(),
                format!(
                    "{field}: columns {other:?} and {from:?} are both renamed to {to:?}; \
                     a destination column name can be used once"
                ),
            );
        }
    }
    Ok(())
}

/// A problem of a table entry's column options against the described
/// source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnProblem {
    /// Request field at fault, e.g. `tables[0].exclude_columns[1]`.
    pub field: String,
    /// The source column concerned.
    pub column: String,
    pub message: String,
    /// A kept column of a type pgpipe cannot replicate (the source's
    /// description reports it too, as an unsupported type).
    pub unsupported_type: bool,
}

/// A source table as replicated: the kept columns, by source and by
/// destination name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// Indexes into the described table's columns of the kept ones, in
    /// order: how a full row (pgoutput's) is projected.
    pub kept: Vec<usize>,
    /// The kept columns under their source names (what the COPY selects);
    /// `key` indexes into them.
    pub source: SourceTable,
    /// The same columns under their destination names: what ClickHouse has
    /// and everything on the sink side works with.
    pub dest: SourceTable,
}

impl Replicated {
    /// The replicated part of a full source row (cells in the described
    /// table's column order).
    pub fn project(&self, row: &Row) -> Row {
        if self.kept.len() == row.len() && self.kept.iter().enumerate().all(|(i, &k)| i == k) {
            return row.clone();
        }
        self.kept
            .iter()
            .map(|&i| row.get(i).cloned().unwrap_or(crate::model::Cell::Null))
            .collect()
    }

    /// The destination name of a source column (itself unless renamed).
    pub fn dest_name<'a>(cfg: &'a TableConfig, source: &'a str) -> &'a str {
        cfg.rename_columns
            .get(source)
            .map_or(source, String::as_str)
    }
}

/// The sink's word on a representation `column_types` chose for a column
/// (domain knows no ClickHouse types): `Ok(whether distinct values stay
/// distinct)` if it holds every value of the type, else why not and what
/// to choose.
pub type ReprFits = fn(&PgType, ColumnRepr) -> Result<bool, String>;

/// The replicated view of `table` (described from the source) under table
/// entry `i`'s config. `strict` (a new pipe) also refuses excluded or
/// renamed columns the table does not have; otherwise (a running pipe, a
/// resync) those are ignored, as the source may have dropped them since.
pub fn replicated(
    i: usize,
    table: &SourceTable,
    cfg: &TableConfig,
    strict: bool,
    fits: ReprFits,
) -> Result<Replicated, Vec<ColumnProblem>> {
    let what = format!("{}.{}", table.schema, table.name);
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let mut problems = Vec::new();
    // An option of the entry names a column the table does not have.
    let missing = |option: &str, field: String, c: &str| ColumnProblem {
        field,
        column: c.to_owned(),
        unsupported_type: false,
        message: format!(
            "{option} of {what} names column {c:?}, which the table does not have; its columns \
             are: {}",
            names.join(", ")
        ),
    };
    let excluded: HashSet<&str> = cfg.exclude_columns.iter().map(String::as_str).collect();
    for (j, c) in cfg.exclude_columns.iter().enumerate() {
        let field = format!("tables[{i}].exclude_columns[{j}]");
        let Some(idx) = names.iter().position(|n| n == c) else {
            if strict {
                problems.push(missing("exclude_columns", field, c));
            }
            continue;
        };
        if table.key.contains(&idx) {
            problems.push(ColumnProblem {
                field,
                column: c.clone(),
                unsupported_type: false,
                message: format!(
                    "exclude_columns of {what} names key column {c:?}: primary key (or replica \
                     identity) columns identify rows in ClickHouse and must be replicated"
                ),
            });
        } else if cfg.order_by.iter().any(|o| o == c) {
            problems.push(ColumnProblem {
                field,
                column: c.clone(),
                unsupported_type: false,
                message: format!(
                    "exclude_columns of {what} names column {c:?}, which order_by uses; \
                     drop it from one of them"
                ),
            });
        }
    }
    let mut renames: Vec<(&String, &String)> = cfg.rename_columns.iter().collect();
    renames.sort();
    for (from, _) in &renames {
        if strict && !names.contains(&from.as_str()) {
            problems.push(missing("rename_columns", rename_field(i, from), from));
        }
    }
    let kept: Vec<usize> = (0..table.columns.len())
        .filter(|&k| !excluded.contains(names[k]))
        .collect();
    for &k in &kept {
        let c = &table.columns[k];
        if c.pg_type == PgType::Unsupported {
            problems.push(ColumnProblem {
                field: format!("tables[{i}].exclude_columns"),
                column: c.name.clone(),
                unsupported_type: true,
                message: format!(
                    "column {:?} of {what} has type {}, which pgpipe cannot replicate; add it \
                     to exclude_columns to leave it out",
                    c.name, c.type_name
                ),
            });
        }
    }
    // Chosen column types: the column must be replicated and the choice
    // hold every value of its type (a key or order_by column's values must
    // also stay distinct).
    let types = column_types(i, cfg).unwrap_or_default();
    for (c, repr) in &types {
        let field = type_field(i, c);
        let Some(idx) = names.iter().position(|n| n == c) else {
            if strict {
                problems.push(missing("column_types", field, c));
            }
            continue;
        };
        let col = &table.columns[idx];
        if excluded.contains(c.as_str()) || col.pg_type == PgType::Unsupported {
            // Reported by the static checks / as an unsupported type.
            continue;
        }
        let problem = match fits(&col.pg_type, *repr) {
            Err(e) => Some(e),
            Ok(keeps_apart)
                if !keeps_apart
                    && (table.key.contains(&idx) || cfg.order_by.iter().any(|o| o == c)) =>
            {
                Some(format!(
                    "{repr} can store different values as one, which a key or order_by column \
                     must not (rows would merge); choose String{}",
                    if col.pg_type == PgType::Date {
                        " or Int32"
                    } else {
                        ""
                    }
                ))
            }
            Ok(_) => None,
        };
        if let Some(e) = problem {
            problems.push(ColumnProblem {
                field,
                column: c.clone(),
                unsupported_type: false,
                message: format!(
                    "column_types of {what} gives column {c:?} ({}) type {repr}: {e}",
                    col.type_name
                ),
            });
        }
    }
    // Destination names must stay unique: a rename onto a kept column's
    // own name (not renamed away itself) would give ClickHouse two columns
    // with one name.
    let mut taken: HashMap<&str, &str> = HashMap::new();
    for &k in &kept {
        let src = names[k];
        let dst = Replicated::dest_name(cfg, src);
        if let Some(other) = taken.insert(dst, src) {
            let renamed = if cfg.rename_columns.contains_key(src) {
                src
            } else {
                other
            };
            problems.push(ColumnProblem {
                field: rename_field(i, renamed),
                column: renamed.to_owned(),
                unsupported_type: false,
                message: format!(
                    "rename_columns of {what} renames {renamed:?} to {dst:?}, which is already \
                     the name of another replicated column; pick another name (or rename or \
                     exclude that column too)"
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key: Vec<usize> = table
        .key
        .iter()
        .filter_map(|k| kept.iter().position(|x| x == k))
        .collect();
    let chosen: HashMap<&str, ColumnRepr> = types.iter().map(|(c, r)| (c.as_str(), *r)).collect();
    let source = SourceTable {
        columns: kept
            .iter()
            .map(|&k| {
                let mut c = table.columns[k].clone();
                c.repr = chosen.get(c.name.as_str()).copied();
                c
            })
            .collect(),
        key,
        ..table.clone()
    };
    let mut dest = source.clone();
    for c in &mut dest.columns {
        c.name = Replicated::dest_name(cfg, &c.name).to_owned();
    }
    Ok(Replicated { kept, source, dest })
}

/// Destination names that changed since the table was replicated under
/// `old` (an earlier incarnation's config): each of `view`'s destination
/// names mapped to the name the same source column had then.
pub fn renamed_since(view: &Replicated, old: &TableConfig) -> HashMap<String, String> {
    view.source
        .columns
        .iter()
        .zip(&view.dest.columns)
        .filter_map(|(s, d)| {
            let then = Replicated::dest_name(old, &s.name);
            (then != d.name).then(|| (d.name.clone(), then.to_owned()))
        })
        .collect()
}

/// The destination table's ORDER BY under destination names (what
/// ClickHouse sees; order_by is given in source names): order_by, or else
/// the key.
pub fn dest_order_by(cfg: &TableConfig, view: &Replicated) -> Vec<String> {
    if cfg.order_by.is_empty() {
        let dest = &view.dest;
        dest.key
            .iter()
            .map(|&i| dest.columns[i].name.clone())
            .collect()
    } else {
        cfg.order_by
            .iter()
            .map(|c| Replicated::dest_name(cfg, c).to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cell, PgType, SourceColumn};
    // The sink's rules, as the engine passes them.
    use crate::sink::types::repr_fits;

    fn table() -> SourceTable {
        let col = |n: &str| SourceColumn {
            name: n.into(),
            type_name: "text".into(),
            type_oid: 25,
            pg_type: PgType::Text,
            not_null: false,
            repr: None,
            attnum: 0,
            typmod: -1,
        };
        SourceTable {
            schema: "public".into(),
            name: "users".into(),
            oid: 1,
            columns: vec![col("id"), col("desc"), col("password_hash"), col("note")],
            key: vec![0],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            generated_columns: Vec::new(),
        }
    }

    fn cfg(exclude: &[&str], rename: &[(&str, &str)]) -> TableConfig {
        TableConfig {
            source_table: "public.users".into(),
            exclude_columns: exclude.iter().map(|s| (*s).into()).collect(),
            rename_columns: rename
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_view_keeps_other_columns_under_their_destination_names() {
        let c = cfg(&["password_hash"], &[("desc", "description")]);
        let r = replicated(0, &table(), &c, true, repr_fits).unwrap();
        assert_eq!(r.kept, vec![0, 1, 3]);
        let src: Vec<_> = r.source.columns.iter().map(|c| c.name.as_str()).collect();
        let dst: Vec<_> = r.dest.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(src, ["id", "desc", "note"]);
        assert_eq!(dst, ["id", "description", "note"]);
        assert_eq!(r.dest.key, vec![0]);
        let t = |s: &str| Cell::Text(s.into());
        let row = vec![t("1"), t("d"), t("secret"), Cell::UnchangedToast];
        assert_eq!(r.project(&row), vec![t("1"), t("d"), Cell::UnchangedToast]);
    }

    #[test]
    fn a_column_of_an_unsupported_type_must_be_excluded() {
        let mut t = table();
        t.columns[2].pg_type = PgType::Unsupported;
        t.columns[2].type_name = "point".into();
        let problems = replicated(0, &t, &cfg(&[], &[]), true, repr_fits).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].unsupported_type);
        assert_eq!(problems[0].column, "password_hash");
        assert!(problems[0].message.contains("type point"), "{problems:?}");
        let r = replicated(0, &t, &cfg(&["password_hash"], &[]), true, repr_fits).unwrap();
        assert_eq!(r.kept, vec![0, 1, 3]);
    }

    #[test]
    fn keys_and_unknown_columns_cannot_be_excluded() {
        let c = cfg(&["note", "id", "nope"], &[("gone", "x")]);
        let fields: Vec<String> = replicated(2, &table(), &c, true, repr_fits)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "tables[2].exclude_columns[1]",
                "tables[2].exclude_columns[2]",
                "tables[2].rename_columns[\"gone\"]"
            ]
        );
        // A running pipe ignores what the source dropped since, not keys.
        let lenient = replicated(2, &table(), &c, false, repr_fits).unwrap_err();
        assert_eq!(lenient.len(), 1);
        assert_eq!(lenient[0].column, "id");
    }

    #[test]
    fn a_rename_onto_a_kept_column_name_collides() {
        let c = cfg(&[], &[("desc", "note")]);
        let p = replicated(0, &table(), &c, true, repr_fits).unwrap_err();
        assert_eq!(p[0].field, "tables[0].rename_columns[\"desc\"]");
        // Swapping two names is fine, as is taking an excluded column's name.
        let swap = cfg(&[], &[("desc", "note"), ("note", "desc")]);
        assert!(replicated(0, &table(), &swap, true, repr_fits).is_ok());
        let onto_excluded = cfg(&["password_hash"], &[("desc", "password_hash")]);
        assert!(replicated(0, &table(), &onto_excluded, true, repr_fits).is_ok());
    }

    fn typed(types: &[(&str, &str)]) -> TableConfig {
        let mut c = cfg(&[], &[]);
        c.column_types = types
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect();
        c
    }

    fn dated() -> SourceTable {
        let mut t = table();
        t.columns[3].pg_type = PgType::Date;
        t.columns[3].type_name = "date".into();
        t
    }

    #[test]
    fn a_chosen_column_type_is_carried_by_the_view_under_both_names() {
        let mut c = typed(&[("note", "int32")]);
        c.rename_columns.insert("note".into(), "born".into());
        let r = replicated(0, &dated(), &c, true, repr_fits).unwrap();
        assert_eq!(r.dest.columns[3].name, "born");
        assert_eq!(r.dest.columns[3].repr, Some(ColumnRepr::Int32));
        assert_eq!(r.source.columns[3].repr, Some(ColumnRepr::Int32));
        assert_eq!(r.dest.columns[1].repr, None);
    }

    #[test]
    fn column_types_that_cannot_hold_the_column_are_refused_naming_the_field() {
        let field = |c: &TableConfig| {
            replicated(1, &dated(), c, true, repr_fits)
                .unwrap_err()
                .into_iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            field(&typed(&[("note", "Float64")])),
            ["tables[1].column_types[\"note\"]"]
        );
        assert_eq!(
            field(&typed(&[("nope", "String")])),
            ["tables[1].column_types[\"nope\"]"]
        );
        // A running pipe ignores a column the source dropped since.
        assert!(replicated(1, &dated(), &typed(&[("nope", "String")]), false, repr_fits).is_ok());
        // Clamp would merge distinct key (or order_by) values; String keeps them.
        let mut t = dated();
        t.key = vec![3];
        assert_eq!(
            replicated(1, &t, &typed(&[("note", "Clamp")]), true, repr_fits).unwrap_err()[0].field,
            "tables[1].column_types[\"note\"]"
        );
        assert!(replicated(1, &t, &typed(&[("note", "String")]), true, repr_fits).is_ok());
        let mut ordered = typed(&[("note", "Clamp")]);
        ordered.order_by = vec!["id".into(), "note".into()];
        assert!(replicated(1, &dated(), &ordered, true, repr_fits).is_err());
    }

    #[test]
    fn column_types_are_checked_statically_too() {
        let unknown = typed(&[("note", "Date64")]);
        let (field, e) = check_static(0, &unknown).unwrap_err();
        assert_eq!(field, "tables[0].column_types[\"note\"]");
        assert!(e.0.contains("String, Float64"), "{e:?}");
        let mut excluded = typed(&[("note", "String")]);
        excluded.exclude_columns = vec!["note".into()];
        assert_eq!(
            check_static(0, &excluded).unwrap_err().0,
            "tables[0].column_types[\"note\"]"
        );
        assert!(is_column_field("tables[0].column_types[\"note\"]"));
    }

    #[test]
    fn static_checks_name_the_field() {
        let reserved = cfg(&[], &[("desc", "_pgpipe_version")]);
        assert_eq!(
            check_static(1, &reserved).unwrap_err().0,
            "tables[1].rename_columns[\"desc\"]"
        );
        let twice = cfg(&["a", "a"], &[]);
        assert_eq!(
            check_static(0, &twice).unwrap_err().0,
            "tables[0].exclude_columns[1]"
        );
        let both = cfg(&["desc"], &[("desc", "d")]);
        assert!(check_static(0, &both).is_err());
        let same_target = cfg(&[], &[("a", "x"), ("b", "x")]);
        assert!(check_static(0, &same_target).is_err());
        assert!(check_static(0, &cfg(&["password_hash"], &[("desc", "description")])).is_ok());
    }
}
