//! Plain-text tables: `list`, and the problems `validate` finds.

use super::{format_bytes, format_lsn, labels_text, opt_timestamp, status_label};
use crate::proto::Pipe;

/// Renders rows under headers, columns padded to their widest cell.
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            for _ in cell.chars().count()..pad {
                l.push(' ');
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A table with a row per item: `row` makes an item's cells.
pub(crate) fn table_of<T>(
    headers: &[&str],
    items: &[T],
    row: impl Fn(&T) -> Vec<String>,
) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    render_table(headers, &rows)
}

/// `pgpipe list`: one row per pipe.
pub(crate) fn pipes_table(pipes: &[Pipe]) -> String {
    table_of(
        &[
            "NAME", "STATUS", "TABLES", "LAST LSN", "LAG", "UPDATED", "ID", "LABELS",
        ],
        pipes,
        |p| {
            let mut status = status_label(p.status);
            if p.resyncing {
                status.push_str(" (resyncing)");
            }
            vec![
                p.name.clone(),
                status,
                p.tables.len().to_string(),
                format_lsn(&p.last_lsn).to_owned(),
                format_bytes(p.lag_bytes),
                opt_timestamp(p.updated_at.as_ref()),
                p.id.clone(),
                labels_text(&p.labels),
            ]
        },
    )
}

/// `PROBLEM_KIND_WAL_LEVEL` → `wal_level`.
pub(crate) fn problem_kind_label(raw: i32) -> String {
    match crate::proto::ProblemKind::try_from(raw) {
        Ok(k) => k.label(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// The problems of a ValidatePipe answer, one row each.
pub(crate) fn problems_table(problems: &[crate::proto::Problem]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    table_of(&["KIND", "TABLE", "COLUMN", "WHAT TO DO"], problems, |p| {
        let mut kind = problem_kind_label(p.kind);
        if p.warning {
            kind.push_str(" (warning)");
        }
        vec![kind, dash(&p.table), dash(&p.column), p.message.clone()]
    })
}
