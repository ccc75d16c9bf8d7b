//! Parsers for table arguments: `create --table SPEC` and the
//! `resync --order-by TABLE=COLS` / `--dest TABLE=NAME` overrides.
//!
//! Identifiers may be double-quoted (`"My Schema"."Order-Items"`, with `""`
//! for a quote inside); separators inside quotes are not separators. Quoted
//! parts are passed to the server verbatim, quotes included.

use crate::proto::TableConfig;

/// Splits `s` on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            // `""` inside quotes is an escaped quote: toggling twice is a no-op.
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if in_quotes {
        return Err(format!("unterminated double quote in {s:?}"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// Checks `schema.table` or `table`, each part non-empty.
fn check_source_table(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("missing source table".to_owned());
    }
    let parts = split_unquoted(t, '.')?;
    if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!(
            "source table {t:?} is not `schema.table` or `table` (quote names that contain dots)"
        ));
    }
    Ok(())
}

/// Comma-separated column list; no empty entries.
fn parse_columns(s: &str, what: &str) -> Result<Vec<String>, String> {
    let cols: Vec<String> = split_unquoted(s, ',')?
        .into_iter()
        .map(|c| c.trim().to_owned())
        .collect();
    if cols.iter().any(String::is_empty) {
        return Err(format!("empty column name in {what} {s:?}"));
    }
    Ok(cols)
}

/// `schema.table[:dest_table][:col1,col2]`, e.g. `public.orders`,
/// `public.orders:orders_v2`, `public.orders::id,created_at`,
/// `public.orders:orders_v2:id`. An empty destination means the default (the
/// source table name); an omitted ORDER BY means the primary key.
pub(crate) fn parse_table_spec(spec: &str) -> Result<TableConfig, String> {
    let parts = split_unquoted(spec, ':')?;
    if parts.len() > 3 {
        return Err(format!(
            "table spec {spec:?} has more than 3 `:`-separated parts \
             (expected schema.table[:dest_table][:order_by_cols])"
        ));
    }
    let source_table = parts[0].trim().to_owned();
    check_source_table(&source_table).map_err(|e| format!("table spec {spec:?}: {e}"))?;
    let destination_table = parts
        .get(1)
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    let order_by = match parts.get(2) {
        None => Vec::new(),
        Some(cols) if cols.trim().is_empty() => {
            return Err(format!(
                "table spec {spec:?}: empty ORDER BY list (omit the last `:` to use the primary key)"
            ));
        }
        Some(cols) => parse_columns(cols, "ORDER BY list")?,
    };
    Ok(TableConfig {
        source_table,
        destination_table,
        order_by,
        ..Default::default()
    })
}

/// `TABLE=VALUE`, split at the first `=` outside quotes.
fn split_assignment(s: &str) -> Result<(String, String), String> {
    let parts = split_unquoted(s, '=')?;
    let Some((table, rest)) = parts.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return Err(format!("expected SOURCE_TABLE=VALUE, got {s:?}"));
    };
    let table = table.trim().to_owned();
    check_source_table(&table).map_err(|e| format!("{s:?}: {e}"))?;
    // Everything after the first separator, `=` included.
    let value = rest.join("=").trim().to_owned();
    Ok((table, value))
}

/// `resync --order-by SOURCE_TABLE=col1,col2`.
pub(crate) fn parse_order_by_override(s: &str) -> Result<(String, Vec<String>), String> {
    table_columns(s, "ORDER BY list")
}

/// `resync --dest SOURCE_TABLE=dest_table`.
pub(crate) fn parse_dest_override(s: &str) -> Result<(String, String), String> {
    let (table, dest) = split_assignment(s)?;
    if dest.is_empty() {
        return Err(format!("{s:?}: empty destination table"));
    }
    Ok((table, dest))
}

/// `create --exclude SOURCE_TABLE=col1,col2`.
pub(crate) fn parse_exclude(s: &str) -> Result<(String, Vec<String>), String> {
    table_columns(s, "column list")
}

/// `SOURCE_TABLE=col1,col2`, a non-empty `what`.
fn table_columns(s: &str, what: &str) -> Result<(String, Vec<String>), String> {
    let (table, cols) = split_assignment(s)?;
    if cols.is_empty() {
        return Err(format!("{s:?}: empty {what}"));
    }
    Ok((table, parse_columns(&cols, what)?))
}

/// `create --rename SOURCE_TABLE=old:new[,old2:new2]`.
pub(crate) fn parse_rename(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let (table, pairs) = split_assignment(s)?;
    if pairs.is_empty() {
        return Err(format!("{s:?}: empty rename list (write TABLE=old:new)"));
    }
    parse_columns(&pairs, "rename list")?
        .iter()
        .map(|pair| match split_unquoted(pair, ':')?.as_slice() {
            [from, to] if !from.trim().is_empty() && !to.trim().is_empty() => {
                Ok((from.trim().to_owned(), to.trim().to_owned()))
            }
            _ => Err(format!("{s:?}: {pair:?} is not old:new")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|list| (table, list))
}

/// `create --type SOURCE_TABLE=col:Type[,col2:Type]`: a column's ClickHouse
/// type choice (`column_types`). Commas inside parentheses belong to the
/// type (`price:Decimal(20, 4)`).
pub(crate) fn parse_type(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let (table, pairs) = split_assignment(s)?;
    if pairs.is_empty() {
        return Err(format!("{s:?}: empty type list (write TABLE=col:Type)"));
    }
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut in_quotes = false;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in pairs.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '(' if !in_quotes => depth += 1,
            ')' if !in_quotes => depth -= 1,
            ',' if !in_quotes && depth == 0 => {
                items.push(&pairs[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&pairs[start..]);
    for item in items {
        // The column is before the first `:` outside quotes.
        let parts = split_unquoted(item, ':')?;
        let (col, ty) = match parts.split_first() {
            Some((col, rest)) if !rest.is_empty() => (col.trim(), rest.join(":")),
            _ => return Err(format!("{s:?}: {:?} is not col:Type", item.trim())),
        };
        if col.is_empty() || ty.trim().is_empty() {
            return Err(format!("{s:?}: {:?} is not col:Type", item.trim()));
        }
        out.push((col.to_owned(), ty.trim().to_owned()));
    }
    Ok((table, out))
}

/// Whether two source table spellings name the same table as far as the
/// client can tell (`orders` is `public.orders`).
fn same_table(a: &str, b: &str) -> bool {
    let full = |t: &str| {
        if split_unquoted(t, '.').is_ok_and(|p| p.len() == 1) {
            format!("public.{t}")
        } else {
            t.to_owned()
        }
    };
    full(a) == full(b)
}

/// `--exclude`, `--rename` and `--type`: the column options `create` sets
/// and `resync` replaces.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ColumnFlags {
    /// Source columns not to replicate: SOURCE_TABLE=col1,col2 (resync:
    /// replaces the table's exclusions). Repeatable.
    #[arg(long, value_name = "TABLE=COLS", value_parser = parse_exclude)]
    pub exclude: Vec<(String, Vec<String>)>,

    /// ClickHouse names for source columns: SOURCE_TABLE=old:new[,old2:new2]
    /// (resync: replaces the table's renames). Repeatable.
    #[arg(long, value_name = "TABLE=OLD:NEW", value_parser = parse_rename)]
    pub rename: Vec<(String, Vec<(String, String)>)>,

    /// ClickHouse types for source columns: SOURCE_TABLE=col:Type[,col2:Type]
    /// (String, Float64, Decimal(P, S), Int32, Clamp, JSON; resync: replaces
    /// the table's column types). Repeatable.
    #[arg(long = "type", value_name = "TABLE=COL:TYPE", value_parser = parse_type)]
    pub types: Vec<(String, Vec<(String, String)>)>,
}

impl ColumnFlags {
    /// No column option given.
    pub fn is_empty(&self) -> bool {
        self.exclude.is_empty() && self.rename.is_empty() && self.types.is_empty()
    }
}

/// Adds `--exclude`, `--rename` and `--type` options to the `--table`
/// entries they name (`create`: a table given with --table or in --file);
/// an option naming no listed table is an error.
pub(crate) fn apply_column_options(
    tables: &mut [TableConfig],
    flags: &ColumnFlags,
) -> Result<(), String> {
    let ColumnFlags {
        exclude,
        rename,
        types,
    } = flags;
    fn entry<'a>(
        tables: &'a mut [TableConfig],
        table: &str,
        flag: &str,
    ) -> Result<&'a mut TableConfig, String> {
        tables
            .iter_mut()
            .find(|t| same_table(&t.source_table, table))
            .ok_or_else(|| format!("{flag} names table {table:?}, which no --table lists"))
    }
    for (table, cols) in exclude {
        entry(tables, table, "--exclude")?
            .exclude_columns
            .extend(cols.iter().cloned());
    }
    for (table, pairs) in rename {
        let t = entry(tables, table, "--rename")?;
        for (from, to) in pairs {
            if t.rename_columns.insert(from.clone(), to.clone()).is_some() {
                return Err(format!(
                    "--rename: column {from:?} of {table} is renamed twice"
                ));
            }
        }
    }
    for (table, pairs) in types {
        let t = entry(tables, table, "--type")?;
        for (col, ty) in pairs {
            if t.column_types.insert(col.clone(), ty.clone()).is_some() {
                return Err(format!("--type: column {col:?} of {table} is typed twice"));
            }
        }
    }
    Ok(())
}

/// `resync --exclude/--rename/--type/--reset-columns`: adds to `overrides`
/// the column options of each table named, starting from the pipe's
/// `current` ones (none with --reset-columns); --exclude replaces the
/// table's exclusions, --rename its renames, --type its column types.
/// Returns whether any table was named (the request then sets
/// replace_column_options).
pub(crate) fn resync_column_options(
    current: &[TableConfig],
    overrides: &mut Vec<TableConfig>,
    flags: &ColumnFlags,
    reset: &[String],
) -> Result<bool, String> {
    let ColumnFlags {
        exclude,
        rename,
        types,
    } = flags;
    let named = reset
        .iter()
        .map(|t| (t, "--reset-columns"))
        .chain(exclude.iter().map(|(t, _)| (t, "--exclude")))
        .chain(rename.iter().map(|(t, _)| (t, "--rename")))
        .chain(types.iter().map(|(t, _)| (t, "--type")));
    let mut any = false;
    let mut seeded = std::collections::HashSet::new();
    for (table, flag) in named {
        any = true;
        let Some(base) = current.iter().find(|t| same_table(&t.source_table, table)) else {
            let tables: Vec<&str> = current.iter().map(|t| t.source_table.as_str()).collect();
            return Err(format!(
                "{flag} names table {table:?}, which the pipe does not have; its tables are: {}",
                tables.join(", ")
            ));
        };
        let idx = match overrides
            .iter()
            .position(|o| same_table(&o.source_table, &base.source_table))
        {
            Some(i) => i,
            None => {
                overrides.push(TableConfig {
                    source_table: base.source_table.clone(),
                    ..Default::default()
                });
                overrides.len() - 1
            }
        };
        let o = &mut overrides[idx];
        // Replacing starts from what the table has (an --order-by entry
        // carries no column options of its own).
        if seeded.insert(idx) {
            o.exclude_columns = base.exclude_columns.clone();
            o.rename_columns = base.rename_columns.clone();
            o.column_types = base.column_types.clone();
        }
        if flag == "--reset-columns" {
            o.exclude_columns.clear();
            o.rename_columns.clear();
            o.column_types.clear();
        }
    }
    // A second pass, so that --reset-columns never undoes them.
    for (table, cols) in exclude {
        if let Some(o) = overrides
            .iter_mut()
            .find(|o| same_table(&o.source_table, table))
        {
            o.exclude_columns = cols.clone();
        }
    }
    for (table, pairs) in rename {
        if let Some(o) = overrides
            .iter_mut()
            .find(|o| same_table(&o.source_table, table))
        {
            o.rename_columns = pairs.iter().cloned().collect();
        }
    }
    for (table, pairs) in types {
        if let Some(o) = overrides
            .iter_mut()
            .find(|o| same_table(&o.source_table, table))
        {
            o.column_types = pairs.iter().cloned().collect();
        }
    }
    Ok(any)
}

/// Merges per-table overrides into one TableConfig per source table, in
/// the order tables were first mentioned.
pub(crate) fn merge_overrides(
    order_by: &[(String, Vec<String>)],
    dest: &[(String, String)],
) -> Vec<TableConfig> {
    let mut out: Vec<TableConfig> = Vec::new();
    fn entry<'a>(out: &'a mut Vec<TableConfig>, table: &str) -> &'a mut TableConfig {
        let idx = match out.iter().position(|t| t.source_table == table) {
            Some(i) => i,
            None => {
                out.push(TableConfig {
                    source_table: table.to_owned(),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        &mut out[idx]
    }
    for (table, cols) in order_by {
        entry(&mut out, table).order_by = cols.clone();
    }
    for (table, d) in dest {
        entry(&mut out, table).destination_table = d.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, value)` pairs as flags parse them.
    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// `TABLE=a,b` as flags parse it.
    fn table_list(table: &str, items: &[&str]) -> (String, Vec<String>) {
        (table.into(), items.iter().map(|c| c.to_string()).collect())
    }

    /// A table's configuration with `exclude`d columns.
    fn table(source: &str, exclude: &[&str]) -> TableConfig {
        TableConfig {
            source_table: source.into(),
            exclude_columns: exclude.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec(s: &str) -> (String, String, Vec<String>) {
        let t = parse_table_spec(s).unwrap();
        (t.source_table, t.destination_table, t.order_by)
    }

    #[test]
    fn resync_column_flags_start_from_the_tables_options_and_replace_what_they_name() {
        let mut users = table("public.users", &["password_hash"]);
        users.rename_columns = pairs(&[("desc", "description")]).into_iter().collect();
        let current = vec![users];
        // --order-by made an entry already: it gets the table's options.
        let mut overrides = merge_overrides(&[("users".into(), vec!["id".into()])], &[]);
        let flags = ColumnFlags {
            exclude: vec![("users".to_string(), vec!["note".to_string()])],
            ..Default::default()
        };
        let any = resync_column_options(&current, &mut overrides, &flags, &[]).unwrap();
        assert!(any);
        assert_eq!(overrides.len(), 1);
        assert_eq!(overrides[0].order_by, ["id"]);
        assert_eq!(overrides[0].exclude_columns, ["note"]);
        assert_eq!(
            overrides[0].rename_columns.get("desc").map(String::as_str),
            Some("description"),
            "renames kept"
        );
        // --reset-columns clears both, then --rename sets new ones.
        let mut overrides = Vec::new();
        let flags = ColumnFlags {
            rename: vec![("public.users".to_string(), pairs(&[("id", "user_id")]))],
            ..Default::default()
        };
        resync_column_options(&current, &mut overrides, &flags, &["public.users".into()]).unwrap();
        assert!(overrides[0].exclude_columns.is_empty());
        assert_eq!(overrides[0].rename_columns.len(), 1);
        assert_eq!(overrides[0].rename_columns["id"], "user_id");
        // Nothing named: nothing to replace.
        let none = ColumnFlags::default();
        assert!(!resync_column_options(&current, &mut Vec::new(), &none, &[]).unwrap());
        let err =
            resync_column_options(&current, &mut Vec::new(), &none, &["nope".into()]).unwrap_err();
        assert!(err.contains("public.users"), "{err}");
    }

    #[test]
    fn table_specs() {
        assert_eq!(
            spec("public.orders"),
            ("public.orders".into(), "".into(), vec![])
        );
        assert_eq!(spec("orders"), ("orders".into(), "".into(), vec![]));
        assert_eq!(
            spec("public.orders:orders_v2"),
            ("public.orders".into(), "orders_v2".into(), vec![])
        );
        assert_eq!(
            spec("public.orders::id, created_at"),
            (
                "public.orders".into(),
                "".into(),
                vec!["id".into(), "created_at".into()]
            )
        );
        assert_eq!(
            spec("public.orders:o:id"),
            ("public.orders".into(), "o".into(), vec!["id".into()])
        );
        // Quotes protect separators and are kept.
        assert_eq!(
            spec(r#""My Schema"."Order:Items":items:"a,b",c"#),
            (
                r#""My Schema"."Order:Items""#.into(),
                "items".into(),
                vec![r#""a,b""#.into(), "c".into()]
            )
        );
        assert_eq!(
            spec(r#""we""ird.x".t"#),
            (r#""we""ird.x".t"#.into(), "".into(), vec![])
        );
    }

    #[test]
    fn bad_table_specs() {
        for bad in [
            "",
            ":dest",
            "a.b.c",
            ".t",
            "s.",
            "s.t:d:id:extra",
            "s.t:d:",
            "s.t::id,,x",
            r#""unterminated.t"#,
        ] {
            assert!(parse_table_spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn column_options() {
        assert_eq!(
            parse_exclude("public.users=password_hash, token").unwrap(),
            table_list("public.users", &["password_hash", "token"])
        );
        assert!(parse_exclude("public.users=").is_err());
        assert_eq!(
            parse_rename(r#"users=desc:description,"a:b":c"#).unwrap(),
            (
                "users".into(),
                vec![
                    ("desc".into(), "description".into()),
                    (r#""a:b""#.into(), "c".into())
                ]
            )
        );
        for bad in [
            "users=desc",
            "users=desc:",
            "users=:x",
            "users=a:b:c",
            "users=",
        ] {
            assert!(parse_rename(bad).is_err(), "{bad:?} should be rejected");
        }
        let mut tables = vec![parse_table_spec("public.users").unwrap()];
        let flags = ColumnFlags {
            exclude: vec![("users".into(), vec!["password_hash".into()])],
            rename: vec![("public.users".into(), pairs(&[("desc", "description")]))],
            ..Default::default()
        };
        apply_column_options(&mut tables, &flags).unwrap();
        assert_eq!(tables[0].exclude_columns, vec!["password_hash"]);
        assert_eq!(tables[0].rename_columns["desc"], "description");
        let other = ColumnFlags {
            exclude: vec![("other".into(), vec!["x".into()])],
            ..Default::default()
        };
        let err = apply_column_options(&mut tables, &other);
        assert!(err.unwrap_err().contains("no --table"));
    }

    #[test]
    fn type_flags_keep_commas_inside_parentheses() {
        assert_eq!(
            parse_type("public.t=price:Decimal(20, 4),born:String, d:Int32").unwrap(),
            (
                "public.t".into(),
                pairs(&[
                    ("price", "Decimal(20, 4)"),
                    ("born", "String"),
                    ("d", "Int32")
                ])
            )
        );
        assert_eq!(
            parse_type(r#"t="a:b":Float64"#).unwrap(),
            ("t".into(), pairs(&[(r#""a:b""#, "Float64")]))
        );
        for bad in ["t=", "t=col", "t=col:", "t=:String", "t=a:String,,b:JSON"] {
            assert!(parse_type(bad).is_err(), "{bad:?} should be rejected");
        }
        let mut tables = vec![parse_table_spec("public.t").unwrap()];
        let types = ColumnFlags {
            types: vec![
                ("t".to_string(), pairs(&[("price", "Decimal(20, 4)")])),
                ("public.t".to_string(), pairs(&[("born", "String")])),
            ],
            ..Default::default()
        };
        apply_column_options(&mut tables, &types).unwrap();
        assert_eq!(tables[0].column_types["price"], "Decimal(20, 4)");
        assert_eq!(tables[0].column_types["born"], "String");
        let twice = ColumnFlags {
            types: vec![("t".to_string(), pairs(&[("born", "Int32")]))],
            ..Default::default()
        };
        assert!(apply_column_options(&mut tables, &twice).is_err());
    }

    #[test]
    fn resync_type_flag_replaces_the_tables_column_types() {
        let mut t = table("public.t", &["secret"]);
        t.column_types = pairs(&[("born", "String")]).into_iter().collect();
        let current = vec![t];
        let mut overrides = Vec::new();
        let types = ColumnFlags {
            types: vec![("t".to_string(), pairs(&[("born", "Int32")]))],
            ..Default::default()
        };
        assert!(resync_column_options(&current, &mut overrides, &types, &[]).unwrap());
        assert_eq!(overrides[0].column_types["born"], "Int32");
        assert_eq!(overrides[0].exclude_columns, ["secret"], "exclusions kept");
        // --reset-columns clears the types too.
        let mut overrides = Vec::new();
        let none = ColumnFlags::default();
        resync_column_options(&current, &mut overrides, &none, &["t".into()]).unwrap();
        assert!(overrides[0].column_types.is_empty());
    }

    #[test]
    fn overrides() {
        assert_eq!(
            parse_order_by_override("public.orders=id,created_at").unwrap(),
            table_list("public.orders", &["id", "created_at"])
        );
        assert_eq!(
            parse_order_by_override(r#""a=b".t="x=y""#).unwrap(),
            (r#""a=b".t"#.into(), vec![r#""x=y""#.into()])
        );
        assert!(parse_order_by_override("public.orders").is_err());
        assert!(parse_order_by_override("public.orders=").is_err());
        assert!(parse_order_by_override("=id").is_err());
        assert_eq!(
            parse_dest_override("public.orders=orders_v3").unwrap(),
            ("public.orders".into(), "orders_v3".into())
        );
        let merged = merge_overrides(
            &[
                ("a.x".into(), vec!["id".into()]),
                ("a.y".into(), vec!["k".into()]),
            ],
            &[("a.y".into(), "y2".into()), ("a.z".into(), "z2".into())],
        );
        let got: Vec<(&str, &str, usize)> = merged
            .iter()
            .map(|t| {
                (
                    t.source_table.as_str(),
                    t.destination_table.as_str(),
                    t.order_by.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("a.x", "", 1), ("a.y", "y2", 1), ("a.z", "z2", 0)]
        );
    }
}
