//! How a Relation message differs from the table as pgpipe knew it,
//! matched attnum by attnum (see the parent module), and which type changes
//! ClickHouse can follow in place. No I/O.

use crate::model::{Relation, SourceColumn, SourceTable};
use crate::proto::{SchemaChangeKind, SchemaChanged};
use crate::sink::types::Kind;

/// One column change between two shapes of a table (matched by attnum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ColumnChange {
    Added(SourceColumn),
    Dropped(SourceColumn),
    /// Same attnum, new name (the type may have changed too: then a
    /// `Retyped` follows, under the new name).
    Renamed {
        old: SourceColumn,
        new: SourceColumn,
    },
    Retyped {
        old: SourceColumn,
        new: SourceColumn,
    },
}

/// What the event says of the change itself: its kind, the column (by its
/// old name for a rename) and the types.
impl ColumnChange {
    pub(super) fn event(&self) -> SchemaChanged {
        let of = |kind: SchemaChangeKind, column: &SourceColumn| SchemaChanged {
            kind: kind as i32,
            column: column.name.clone(),
            ..Default::default()
        };
        match self {
            ColumnChange::Added(col) => SchemaChanged {
                new_type: col.type_name.clone(),
                ..of(SchemaChangeKind::AddColumn, col)
            },
            ColumnChange::Dropped(col) => SchemaChanged {
                old_type: col.type_name.clone(),
                ..of(SchemaChangeKind::DropColumn, col)
            },
            // A rename alone keeps the type (a Retyped follows otherwise).
            ColumnChange::Renamed { old, new } => SchemaChanged {
                new_column: new.name.clone(),
                old_type: old.type_name.clone(),
                new_type: old.type_name.clone(),
                ..of(SchemaChangeKind::RenameColumn, old)
            },
            ColumnChange::Retyped { old, new } => SchemaChanged {
                old_type: old.type_name.clone(),
                new_type: new.type_name.clone(),
                ..of(SchemaChangeKind::RetypeColumn, new)
            },
        }
    }
}

/// What a Relation message changed: the table in its new shape (columns in
/// the message's order, attnums and types from the catalog) and the
/// changes from the known shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RelationDiff {
    pub now: SourceTable,
    pub changes: Vec<ColumnChange>,
}

/// Whether a Relation message describes exactly the known columns.
pub(in crate::engine) fn same_shape(known: &SourceTable, rel: &Relation) -> bool {
    known.columns.len() == rel.columns.len()
        && known.columns.iter().zip(&rel.columns).all(|(k, r)| {
            k.name == r.name && k.type_oid == r.type_oid && k.typmod == r.type_modifier
        })
}

/// The table as `rel` describes it, completed from the catalog (`fresh`),
/// and its changes from `known`. Err: why the change cannot be followed.
pub(super) fn diff(
    known: &SourceTable,
    fresh: &SourceTable,
    rel: &Relation,
) -> Result<RelationDiff, String> {
    let what = format!("{}.{}", known.schema, known.name);
    let mut cols = Vec::with_capacity(rel.columns.len());
    for r in &rel.columns {
        let same = |c: &&SourceColumn| c.type_oid == r.type_oid && c.typmod == r.type_modifier;
        // By name (its type as the catalog has it now: a message older than
        // a later type change carries values that fit the new type, or the
        // change fails the table); or, renamed again since, by the attnum
        // the name had.
        let found = fresh.columns.iter().find(|c| c.name == r.name).or_else(|| {
            let k = known.columns.iter().find(|k| k.name == r.name)?;
            fresh
                .columns
                .iter()
                .filter(|c| c.attnum == k.attnum)
                .find(same)
        });
        let Some(c) = found else {
            return Err(format!(
                "column {:?} of {what} changed again before pgpipe applied its earlier change",
                r.name
            ));
        };
        // The name now belongs to another attnum, and the old one is gone:
        // dropped and added again, and this message may be from either
        // side of it, so which rows hold which column cannot be told.
        if let Some(k) = known.columns.iter().find(|k| k.name == r.name)
            && k.attnum != c.attnum
            && !fresh.columns.iter().any(|f| f.attnum == k.attnum)
        {
            return Err(format!(
                "column {:?} of {what} was dropped and added again before pgpipe read the \
                 change",
                r.name
            ));
        }
        cols.push(SourceColumn {
            name: r.name.clone(),
            ..c.clone()
        });
    }
    let key_attnums = |t: &SourceTable| -> Vec<i16> {
        t.key
            .iter()
            .filter_map(|&i| t.columns.get(i).map(|c| c.attnum))
            .collect()
    };
    let fresh_key = key_attnums(fresh);
    let key: Vec<usize> = fresh_key
        .iter()
        .filter_map(|a| cols.iter().position(|c| c.attnum == *a))
        .collect();
    let now = SourceTable {
        columns: cols,
        key,
        ..fresh.clone()
    };
    if key_attnums(&now) != key_attnums(known) {
        return Err(format!(
            "the key (primary key or replica identity) of {what} changed"
        ));
    }
    let mut changes = Vec::new();
    for k in &known.columns {
        let Some(n) = now.columns.iter().find(|n| n.attnum == k.attnum) else {
            // Still in the catalog: the message is older than the column
            // (e.g. rows from before an ADD COLUMN read after a restart);
            // it comes back with a later message.
            if !fresh.columns.iter().any(|c| c.attnum == k.attnum) {
                changes.push(ColumnChange::Dropped(k.clone()));
            }
            continue;
        };
        if n.name != k.name {
            changes.push(ColumnChange::Renamed {
                old: k.clone(),
                new: SourceColumn {
                    type_name: k.type_name.clone(),
                    type_oid: k.type_oid,
                    typmod: k.typmod,
                    pg_type: k.pg_type.clone(),
                    ..n.clone()
                },
            });
        }
        if n.type_oid != k.type_oid || n.typmod != k.typmod {
            changes.push(ColumnChange::Retyped {
                old: SourceColumn {
                    name: n.name.clone(),
                    ..k.clone()
                },
                new: n.clone(),
            });
        }
    }
    for n in &now.columns {
        if !known.columns.iter().any(|k| k.attnum == n.attnum) {
            changes.push(ColumnChange::Added(n.clone()));
        }
    }
    Ok(RelationDiff { now, changes })
}

/// Whether every value of `old` fits `new` exactly (ClickHouse converts
/// the stored values on `MODIFY COLUMN`).
pub(super) fn widens(old: &Kind, new: &Kind) -> bool {
    use Kind::*;
    match (old, new) {
        (Int16, Int32 | Int64) | (Int32, Int64) | (Float32, Float64) => true,
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s2 >= s1 && p2 - s2 >= p1 - s1,
        _ => false,
    }
}

/// The kind a ClickHouse type (without Nullable) was made from, for the
/// types a widening starts from.
pub(super) fn kind_of_ch_type(t: &str) -> Option<Kind> {
    Some(match t {
        "Int16" => Kind::Int16,
        "Int32" => Kind::Int32,
        "Float32" => Kind::Float32,
        _ => {
            let (p, s) = t
                .strip_prefix("Decimal(")?
                .strip_suffix(')')?
                .split_once(',')?;
            Kind::Decimal {
                precision: p.trim().parse().ok()?,
                scale: s.trim().parse().ok()?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PgType, RelationColumn};

    fn col(name: &str, attnum: i16, oid: u32, pg_type: PgType) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            type_name: format!("{pg_type:?}"),
            type_oid: oid,
            pg_type,
            not_null: false,
            attnum,
            typmod: -1,
            repr: None,
        }
    }

    fn table(cols: Vec<SourceColumn>) -> SourceTable {
        SourceTable {
            schema: "public".into(),
            name: "t".into(),
            oid: 9,
            columns: cols,
            key: vec![0],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            generated_columns: vec![],
        }
    }

    fn rel(t: &SourceTable) -> Relation {
        Relation {
            oid: t.oid,
            schema: t.schema.clone(),
            name: t.name.clone(),
            replica_identity: b'd',
            columns: t
                .columns
                .iter()
                .map(|c| RelationColumn {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.typmod,
                    is_key: c.attnum == 1,
                })
                .collect(),
        }
    }

    fn base() -> SourceTable {
        table(vec![
            col("id", 1, 20, PgType::Int8),
            col("a", 2, 23, PgType::Int4),
            col("b", 3, 25, PgType::Text),
        ])
    }

    #[test]
    fn a_column_under_another_name_with_its_attnum_was_renamed() {
        let known = base();
        let mut fresh = base();
        fresh.columns[1].name = "a2".into();
        let d = diff(&known, &fresh, &rel(&fresh)).unwrap();
        assert_eq!(d.changes.len(), 1);
        assert!(matches!(&d.changes[0], ColumnChange::Renamed { old, new }
            if old.name == "a" && new.name == "a2"));
    }

    #[test]
    fn a_column_dropped_and_added_under_its_name_cannot_be_told_apart() {
        let known = base();
        let mut fresh = base();
        fresh.columns[1].attnum = 4;
        fresh.columns.swap(1, 2);
        let err = diff(&known, &fresh, &rel(&fresh)).unwrap_err();
        assert!(err.contains("dropped and added again"), "{err}");
    }

    #[test]
    fn a_dropped_column_and_a_new_one_are_a_drop_and_an_add() {
        let known = base();
        let mut fresh = base();
        fresh.columns[1] = col("c", 4, 23, PgType::Int4);
        fresh.columns.swap(1, 2);
        let d = diff(&known, &fresh, &rel(&fresh)).unwrap();
        assert!(matches!(&d.changes[0], ColumnChange::Dropped(c) if c.name == "a"));
        assert!(matches!(&d.changes[1], ColumnChange::Added(c) if c.name == "c" && c.attnum == 4));
    }

    #[test]
    fn a_type_change_keeps_the_attnum() {
        let known = base();
        let mut fresh = base();
        fresh.columns[1] = col("a", 2, 20, PgType::Int8);
        let d = diff(&known, &fresh, &rel(&fresh)).unwrap();
        assert!(matches!(&d.changes[0], ColumnChange::Retyped { old, new }
            if old.pg_type == PgType::Int4 && new.pg_type == PgType::Int8));
    }

    #[test]
    fn a_relation_older_than_the_catalog_is_not_a_drop() {
        let known = base();
        let mut fresh = base();
        fresh.columns.push(col("c", 4, 23, PgType::Int4));
        // Rows written before `c` was added, read after a restart.
        let d = diff(&fresh, &fresh, &rel(&known)).unwrap();
        assert_eq!(d.changes, []);
        assert_eq!(d.now.columns.len(), 3);
    }

    #[test]
    fn a_key_change_cannot_be_followed() {
        let known = base();
        let mut fresh = base();
        fresh.key = vec![1];
        assert!(
            diff(&known, &fresh, &rel(&fresh))
                .unwrap_err()
                .contains("key")
        );
    }

    #[test]
    fn only_types_whose_values_all_fit_are_widened() {
        let dec = |p, s| Kind::Decimal {
            precision: p,
            scale: s,
        };
        assert!(widens(&Kind::Int16, &Kind::Int64));
        assert!(widens(&Kind::Int32, &Kind::Int64));
        assert!(widens(&Kind::Float32, &Kind::Float64));
        assert!(widens(&dec(10, 2), &dec(12, 2)));
        assert!(!widens(&dec(10, 2), &dec(10, 3)));
        assert!(!widens(&Kind::Int64, &Kind::Int32));
        assert!(!widens(&Kind::Text, &Kind::Int32));
    }
}
