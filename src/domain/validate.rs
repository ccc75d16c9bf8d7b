//! Validation and normalization of what clients ask for, before anything is
//! recorded. Every error message names the field and says what to fix.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use super::conn::{PipeSecrets, split_password, split_tls};
use super::names::{self, RESYNC_SUFFIX};
pub(crate) use super::names::{Invalid, ident};
use super::settings;
use crate::proto::{DestinationConfig, PipeConfig, PipeSettings, SourceConfig, TableConfig};

pub(crate) const MAX_NAME_LEN: usize = 63;
pub(crate) const MAX_CONN_LEN: usize = 4096;
/// Longer URLs are not ClickHouse endpoints; refused before they are
/// recorded in every event and watch message of the pipe.
pub(crate) const MAX_URL_LEN: usize = 2048;
/// Bounds what the secrets file holds per pipe.
pub(crate) const MAX_PASSWORD_LEN: usize = 1024;
pub(crate) const MAX_TABLES: usize = 1000;
/// Label limits, as Kubernetes: small enough to copy into every Pipe message.
pub(crate) const MAX_LABELS: usize = 64;
pub(crate) const MAX_LABEL_KEY_LEN: usize = 63;
pub(crate) const MAX_LABEL_VALUE_LEN: usize = 253;
const LABEL_KEY_RULE: &str = "keys match [a-z0-9][a-z0-9._/-]{0,62}: 1 to 63 characters, lowercase letters, digits, `.`, `_`, `/`, `-`, starting with a letter or digit";

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// Pipe names become parts of replication slot and publication names, so
/// they are restricted to what those accept: lowercase letters, digits, `_`.
/// `-` is accepted and mapped to `_` where Postgres needs it.
pub(crate) fn pipe_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return invalid("name is required: a pipe name like `orders_to_ch`");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid(format!(
            "name is {} bytes long; use at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok {
        return invalid(format!(
            "name {name:?} is not allowed: start with a lowercase letter, then use only a-z, 0-9, `_` and `-`"
        ));
    }
    Ok(())
}

/// A source table reference: schema and table, unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// Schema (`public` when the text named none).
    pub schema: String,
    /// Table name.
    pub table: String,
}

impl QualifiedName {
    /// Canonical text: each part quoted only when it needs it.
    pub fn canonical(&self) -> String {
        format!(
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.table)
        )
    }
}

fn display_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Parses `schema.table`, `table` (schema `public`), with optional double
/// quotes around either part (`"My Schema"."Order.Items"`, `""` escapes a
/// quote). Unquoted parts keep their case as given: Postgres would fold them
/// to lowercase, which surprises users who typed `Orders` for "Orders".
pub(crate) fn qualified_name(field: &str, text: &str) -> Result<QualifiedName, Invalid> {
    // Errors quote the input, cut short: it may be megabytes.
    let shown = shorten(text);
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return invalid(format!("{field} {shown:?} has an unterminated quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return invalid(format!(
                        "{field} {shown:?}: a quote may only open a quoted part (write \"a\"\"b\" for a\"b)"
                    ));
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return invalid(format!(
                "{field} {shown:?} has an empty part: write `schema.table` or `table`"
            ));
        }
        ident(field, &part)?;
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(c) => {
                return invalid(format!(
                    "{field} {shown:?}: unexpected {c:?} after a quoted part"
                ));
            }
        }
    }
    match parts.len() {
        1 => Ok(QualifiedName {
            schema: "public".into(),
            table: parts.remove(0),
        }),
        2 => {
            let table = parts.remove(1);
            Ok(QualifiedName {
                schema: parts.remove(0),
                table,
            })
        }
        _ => invalid(format!(
            "{field} {shown:?} has {} parts: write `schema.table` (quote a part that contains a dot)",
            parts.len()
        )),
    }
}

/// At most 80 characters of `s`, marked when cut.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Refuses a text field longer than `max` bytes.
fn at_most(field: &str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.len() > max {
        return invalid(format!(
            "{field} is {} bytes; at most {max} are accepted",
            text.len()
        ));
    }
    Ok(())
}

fn source(src: Option<&SourceConfig>) -> Result<(SourceConfig, Option<String>), Invalid> {
    let Some(src) = src else {
        return invalid(
            "source is required: give source.connection_string (e.g. postgres://user@host:5432/db)",
        );
    };
    let conn = src.connection_string.trim();
    if conn.is_empty() {
        return invalid("source.connection_string is required (e.g. postgres://user@host:5432/db)");
    }
    at_most("source.connection_string", conn, MAX_CONN_LEN)?;
    let (redacted, embedded) = split_password(conn);
    // tokio-postgres knows neither verify-ca/verify-full nor sslrootcert:
    // those are checked here and applied by the source's own TLS layer.
    let (without_tls, _) =
        split_tls(&redacted).map_err(|e| Invalid(format!("source.connection_string: {e}")))?;
    // Parse the redacted form so a parse error can never echo the password.
    let cfg = tokio_postgres::Config::from_str(&without_tls).map_err(|e| {
        Invalid(format!(
            "source.connection_string is not a valid PostgreSQL connection string ({e}); \
             use postgres://user@host:port/db or `host=... dbname=...`"
        ))
    })?;
    if cfg.get_hosts().is_empty() {
        return invalid(
            "source.connection_string names no host; add host=... or postgres://user@HOST/db",
        );
    }
    if cfg.get_dbname().is_none() {
        return invalid(
            "source.connection_string names no database; add dbname=... or /DB to the URL",
        );
    }
    at_most("source.password", &src.password, MAX_PASSWORD_LEN)?;
    let password = match (embedded, src.password.as_str()) {
        (Some(_), p) if !p.is_empty() => {
            return invalid(
                "source password given twice (in the connection string and in source.password); give it once",
            );
        }
        (Some(p), _) => Some(p),
        (None, "") => None,
        (None, p) => Some(p.to_owned()),
    };
    Ok((
        SourceConfig {
            connection_string: redacted,
            password: String::new(),
        },
        password,
    ))
}

fn destination(
    dst: Option<&DestinationConfig>,
) -> Result<(DestinationConfig, Option<String>), Invalid> {
    let Some(dst) = dst else {
        return invalid("destination is required: give destination.url and destination.database");
    };
    let url = dst.url.trim();
    if url.is_empty() {
        return invalid("destination.url is required (e.g. http://clickhouse:8123)");
    }
    at_most("destination.url", url, MAX_URL_LEN)?;
    at_most("destination.password", &dst.password, MAX_PASSWORD_LEN)?;
    let parsed = url::Url::parse(url).map_err(|e| {
        Invalid(format!(
            "destination.url {:?} is not a URL ({e}); use http://host:8123 or https://host:8443",
            url.chars().take(100).collect::<String>()
        ))
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return invalid(format!(
            "destination.url must use http or https, not {:?}",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return invalid(
            "destination.url must not carry credentials; use destination.user and destination.password",
        );
    }
    ident("destination.database", &dst.database)?;
    let user = if dst.user.is_empty() {
        "default".to_owned()
    } else {
        ident("destination.user", &dst.user)?;
        dst.user.clone()
    };
    let password = (!dst.password.is_empty()).then(|| dst.password.clone());
    let ca_cert = dst.ca_cert.trim();
    if !ca_cert.is_empty() {
        if parsed.scheme() != "https" {
            return invalid(
                "destination.ca_cert is only used with an https destination.url; use https:// or drop ca_cert",
            );
        }
        if ca_cert.len() > MAX_CONN_LEN || ca_cert.contains('\0') {
            return invalid("destination.ca_cert is not a usable file path");
        }
    }
    Ok((
        DestinationConfig {
            url: url.trim_end_matches('/').to_owned(),
            database: dst.database.clone(),
            user,
            password: String::new(),
            ca_cert: ca_cert.to_owned(),
        },
        password,
    ))
}

fn order_by(field: &str, cols: &[String]) -> Result<Vec<String>, Invalid> {
    let mut seen = HashSet::new();
    for (i, c) in cols.iter().enumerate() {
        ident(&format!("{field}[{i}]"), c)?;
        if !seen.insert(c) {
            return invalid(format!("{field} lists column {c:?} twice"));
        }
    }
    Ok(cols.to_vec())
}

/// Validates one table entry, filling in the default destination name.
pub(crate) fn table(i: usize, t: &TableConfig) -> Result<(QualifiedName, TableConfig), Invalid> {
    let field = format!("tables[{i}].source_table");
    if t.source_table.trim().is_empty() {
        return invalid(format!("{field} is required: write `schema.table`"));
    }
    let q = qualified_name(&field, &t.source_table)?;
    let dest = if t.destination_table.is_empty() {
        q.table.clone()
    } else {
        t.destination_table.clone()
    };
    ident(&format!("tables[{i}].destination_table"), &dest)?;
    if names::is_resync_table(&dest) {
        return invalid(format!(
            "tables[{i}].destination_table {dest:?} ends with `{RESYNC_SUFFIX}`, a suffix pgpipe uses during a resync; pick another name"
        ));
    }
    let order_by = order_by(&format!("tables[{i}].order_by"), &t.order_by)?;
    super::columns::check_static(i, t).map_err(|(_, e)| e)?;
    Ok((
        q.clone(),
        TableConfig {
            source_table: q.canonical(),
            destination_table: dest,
            order_by,
            exclude_columns: t.exclude_columns.clone(),
            rename_columns: t.rename_columns.clone(),
            // Canonical spellings, so GetPipe shows what will be created.
            column_types: super::columns::column_types(i, t)
                .map_err(|(_, e)| e)?
                .into_iter()
                .map(|(c, r)| (c, r.to_string()))
                .collect(),
        },
    ))
}

/// The source tables of a pipe config, parsed.
pub(crate) fn source_tables(config: &PipeConfig) -> Result<Vec<QualifiedName>, Invalid> {
    config
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| table(i, t).map(|(q, _)| q))
        .collect()
}

/// One problem of a request, with the field at fault and, for a table
/// entry, the source table as given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FieldProblem {
    pub field: String,
    pub table: String,
    pub invalid: Invalid,
}

/// What of a CreatePipe request is usable, and every problem found in it,
/// in the order of the request's fields (ValidatePipe reports them all;
/// CreatePipe refuses with the first).
#[derive(Debug, Default)]
pub(crate) struct RequestCheck {
    pub source: Option<(SourceConfig, Option<String>)>,
    pub destination: Option<(DestinationConfig, Option<String>)>,
    /// The valid table entries, normalized.
    pub tables: Vec<TableConfig>,
    /// Defaulted; None when invalid.
    pub settings: Option<PipeSettings>,
    pub problems: Vec<FieldProblem>,
}

impl RequestCheck {
    /// The config to record (labels aside) and the passwords kept apart,
    /// of the parts that are valid.
    pub fn config(&self) -> (PipeConfig, PipeSecrets) {
        let (source, source_password) = self.source.clone().unzip();
        let (destination, destination_password) = self.destination.clone().unzip();
        (
            PipeConfig {
                source,
                destination,
                tables: self.tables.clone(),
                settings: self.settings,
                labels: BTreeMap::new(),
            },
            PipeSecrets {
                source_password: source_password.flatten(),
                destination_password: destination_password.flatten(),
            },
        )
    }
}

/// Checks every part of a CreatePipe request on its own, so one bad part
/// does not hide the problems of the others.
pub(crate) fn check_request(
    name: &str,
    src: Option<&SourceConfig>,
    dst: Option<&DestinationConfig>,
    list: &[TableConfig],
    s: Option<&PipeSettings>,
    request_labels: &BTreeMap<String, String>,
) -> RequestCheck {
    let mut out = RequestCheck::default();
    let mut problem = |field: &str, table: &str, invalid: Invalid| {
        out.problems.push(FieldProblem {
            field: field.to_owned(),
            table: table.to_owned(),
            invalid,
        })
    };
    if let Err(e) = pipe_name(name) {
        problem("name", "", e);
    }
    let source = source(src).map_err(|e| problem("source", "", e)).ok();
    let destination = destination(dst)
        .map_err(|e| problem("destination", "", e))
        .ok();
    let mut valid = Vec::new();
    if list.is_empty() {
        problem(
            "tables",
            "",
            Invalid("tables is empty: list at least one source table (`schema.table`)".into()),
        );
    } else if list.len() > MAX_TABLES {
        // Entries are not looked at: the request is far out of bounds.
        problem(
            "tables",
            "",
            Invalid(format!(
                "tables has {} entries; at most {MAX_TABLES}",
                list.len()
            )),
        );
    } else {
        let mut sources = HashSet::new();
        let mut dests = HashSet::new();
        for (i, t) in list.iter().enumerate() {
            let field = format!("tables[{i}]");
            // Column options are reported under their own field.
            if let Err((field, e)) = super::columns::check_static(i, t) {
                problem(&field, &shorten(&t.source_table), e);
                continue;
            }
            match table(i, t) {
                Err(e) => problem(&field, &shorten(&t.source_table), e),
                Ok((q, t)) => {
                    if !sources.insert(q) {
                        problem(
                            &field,
                            &t.source_table,
                            Invalid(format!(
                                "tables[{i}]: source table {} is listed twice",
                                t.source_table
                            )),
                        );
                    } else if !dests.insert(t.destination_table.clone()) {
                        problem(
                            &field,
                            &t.source_table,
                            Invalid(format!(
                                "tables[{i}]: destination table {:?} is used by two entries; give one a destination_table",
                                t.destination_table
                            )),
                        );
                    } else {
                        valid.push(t);
                    }
                }
            }
        }
    }
    let settings = settings::checked(s)
        .map_err(|e| problem("settings", "", Invalid(e)))
        .ok();
    if let Err(e) = labels("labels", request_labels) {
        problem("labels", "", e);
    }
    out.source = source;
    out.destination = destination;
    out.tables = valid;
    out.settings = settings;
    out
}

/// A label key: `[a-z0-9][a-z0-9._/-]{0,62}`.
pub(crate) fn label_key(field: &str, key: &str) -> Result<(), Invalid> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
    });
    if !first_ok || !rest_ok || key.len() > MAX_LABEL_KEY_LEN {
        return invalid(format!(
            "{field} key {:?} is not allowed: {LABEL_KEY_RULE}",
            shorten(key)
        ));
    }
    Ok(())
}

/// A label value: at most 253 characters (empty is allowed).
pub(crate) fn label_value(field: &str, key: &str, value: &str) -> Result<(), Invalid> {
    let n = value.chars().count();
    if n > MAX_LABEL_VALUE_LEN {
        return invalid(format!(
            "{field} value of key {key:?} has {n} characters; values may have at most {MAX_LABEL_VALUE_LEN}"
        ));
    }
    Ok(())
}

/// Label pairs (of a request or a selector): each key and value.
pub(crate) fn label_pairs(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        label_key(field, k)?;
        label_value(field, k, v)?;
    }
    Ok(())
}

/// A pipe's full label set: valid pairs, and not too many of them.
pub(crate) fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    label_pairs(field, labels)?;
    label_count(field, labels.len())
}

pub(crate) fn label_count(field: &str, n: usize) -> Result<(), Invalid> {
    if n > MAX_LABELS {
        return invalid(format!(
            "{field}: a pipe would have {n} labels; at most {MAX_LABELS} are allowed"
        ));
    }
    Ok(())
}

/// Whether `labels` has every pair of `selector` (an empty selector matches).
pub(crate) fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Applies resync overrides (matched by source table) to a pipe's tables;
/// with `replace_columns` their column options replace the tables'.
pub(crate) fn apply_overrides(
    tables: &[TableConfig],
    overrides: &[TableConfig],
    replace_columns: bool,
) -> Result<Vec<TableConfig>, Invalid> {
    let mut out = tables.to_vec();
    let mut seen = HashSet::new();
    for (i, o) in overrides.iter().enumerate() {
        let field = format!("overrides[{i}].source_table");
        let q = qualified_name(&field, &o.source_table)?;
        if !seen.insert(q.clone()) {
            return invalid(format!(
                "overrides[{i}]: {} is overridden twice",
                q.canonical()
            ));
        }
        let canonical = q.canonical();
        let Some(t) = out.iter_mut().find(|t| t.source_table == canonical) else {
            return Err(not_in_pipe(&format!("overrides[{i}]"), &canonical, tables));
        };
        if !o.order_by.is_empty() {
            t.order_by = order_by(&format!("overrides[{i}].order_by"), &o.order_by)?;
        }
        if !o.destination_table.is_empty() {
            ident(
                &format!("overrides[{i}].destination_table"),
                &o.destination_table,
            )?;
            // Same rule as at create: the suffix is the resync's scratch name.
            if names::is_resync_table(&o.destination_table) {
                return invalid(format!(
                    "overrides[{i}].destination_table {:?} ends with `{RESYNC_SUFFIX}`, a suffix pgpipe uses during a resync; pick another name",
                    o.destination_table
                ));
            }
            t.destination_table = o.destination_table.clone();
        }
        if replace_columns {
            t.exclude_columns = o.exclude_columns.clone();
            t.rename_columns = o.rename_columns.clone();
            t.column_types = o.column_types.clone();
            // Fields named as the request has them.
            let named = |e: Invalid| {
                Invalid(e.0.replace(&format!("tables[{i}]"), &format!("overrides[{i}]")))
            };
            super::columns::check_static(i, t).map_err(|(_, e)| named(e))?;
            t.column_types = super::columns::column_types(i, t)
                .map_err(|(_, e)| named(e))?
                .into_iter()
                .map(|(c, r)| (c, r.to_string()))
                .collect();
        } else if !o.exclude_columns.is_empty()
            || !o.rename_columns.is_empty()
            || !o.column_types.is_empty()
        {
            return invalid(format!(
                "overrides[{i}] sets exclude_columns, rename_columns or column_types, which a \
                 resync takes only with replace_column_options: true (they then replace the \
                 table's; empty lists clear them)"
            ));
        }
    }
    // Re-check uniqueness of destinations after renames.
    tables_unique_destinations(&out)?;
    Ok(out)
}

/// An UpdatePipe's table changes, checked against the pipe's tables:
/// returns the added tables (normalized as at create) and the canonical
/// names of the removed ones.
pub(crate) fn table_changes(
    current: &[TableConfig],
    add: &[TableConfig],
    remove: &[String],
) -> Result<(Vec<TableConfig>, Vec<String>), Invalid> {
    if add.is_empty() && remove.is_empty() {
        return invalid("nothing to change: give add_tables and/or remove_tables");
    }
    let listed = || {
        current
            .iter()
            .map(|t| t.source_table.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut removed = Vec::new();
    for (i, r) in remove.iter().enumerate() {
        let field = format!("remove_tables[{i}]");
        let canonical = qualified_name(&field, r)?.canonical();
        if !current.iter().any(|t| t.source_table == canonical) {
            return invalid(format!(
                "{field}: table {canonical} is not part of this pipe; its tables are: {}",
                listed()
            ));
        }
        if removed.contains(&canonical) {
            return invalid(format!("{field}: table {canonical} is listed twice"));
        }
        removed.push(canonical);
    }
    let mut added: Vec<TableConfig> = Vec::new();
    for (i, t) in add.iter().enumerate() {
        let (_, t) = table(i, t).map_err(|e| Invalid(e.0.replacen("tables[", "add_tables[", 1)))?;
        if current.iter().any(|c| c.source_table == t.source_table)
            && !removed.contains(&t.source_table)
        {
            return invalid(format!(
                "add_tables[{i}]: table {} is already part of this pipe; to rebuild it use ResyncPipe with tables",
                t.source_table
            ));
        }
        if removed.contains(&t.source_table) {
            return invalid(format!(
                "add_tables[{i}]: table {} is also in remove_tables; add it or remove it, not both",
                t.source_table
            ));
        }
        if added.iter().any(|a| a.source_table == t.source_table) {
            return invalid(format!(
                "add_tables[{i}]: table {} is listed twice",
                t.source_table
            ));
        }
        added.push(t);
    }
    let after: Vec<TableConfig> = current
        .iter()
        .filter(|t| !removed.contains(&t.source_table))
        .chain(&added)
        .cloned()
        .collect();
    if after.is_empty() {
        return invalid(
            "remove_tables would leave the pipe without tables; delete the pipe instead",
        );
    }
    if after.len() > MAX_TABLES {
        return invalid(format!(
            "the pipe would have {} tables; at most {MAX_TABLES}",
            after.len()
        ));
    }
    tables_unique_destinations(&after)?;
    Ok((added, removed))
}

/// The tables of a table resync, as canonical names of the pipe's tables.
/// `field` names a table the pipe does not replicate.
fn not_in_pipe(field: &str, canonical: &str, tables: &[TableConfig]) -> Invalid {
    let names: Vec<&str> = tables.iter().map(|t| t.source_table.as_str()).collect();
    Invalid(format!(
        "{field}: table {canonical} is not part of this pipe; its tables are: {}",
        names.join(", ")
    ))
}

pub(crate) fn resync_tables(
    current: &[TableConfig],
    tables: &[String],
) -> Result<Vec<String>, Invalid> {
    let mut out = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let field = format!("tables[{i}]");
        let canonical = qualified_name(&field, t)?.canonical();
        if !current.iter().any(|c| c.source_table == canonical) {
            return Err(not_in_pipe(&field, &canonical, current));
        }
        if out.contains(&canonical) {
            return invalid(format!("{field}: table {canonical} is listed twice"));
        }
        out.push(canonical);
    }
    Ok(out)
}

fn tables_unique_destinations(list: &[TableConfig]) -> Result<(), Invalid> {
    let mut dests = HashSet::new();
    for t in list {
        if !dests.insert(&t.destination_table) {
            return invalid(format!(
                "destination table {:?} would be used by two tables",
                t.destination_table
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
