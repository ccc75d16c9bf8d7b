//! Quoting of identifiers and literals in the SQL the sink builds. Every
//! user-provided name (database, table, column) goes through
//! [`quote_ident`]; values go through [`quote_literal`].

/// A ClickHouse identifier in backquotes, escaped (backslash, backquote and
/// control characters), so any name is taken literally.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// A ClickHouse string literal holding exactly `bytes` (which need not be
/// UTF-8): quote and backslash escaped, non-printable and non-ASCII bytes
/// as `\xHH`.
pub(crate) fn quote_literal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('\'');
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                out.push_str("\\x");
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    out.push('\'');
    out
}

/// Splits a key expression as `system.tables.sorting_key` shows it
/// (`` id, `we\`ird`, toDate(ts) ``) into its elements: column names
/// unquoted, any other expression verbatim.
pub(crate) fn split_key_expr(expr: &str) -> Vec<String> {
    let expr = strip_outer_parens(expr.trim());
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '`' | '\'' | '"' => {
                quote = Some(c);
                cur.push(c);
            }
            '(' | '[' => {
                depth += 1;
                cur.push(c);
            }
            ')' | ']' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts.iter().map(|p| unquote_ident(p.trim())).collect()
}

/// `(a, b)` → `a, b` when the parentheses enclose everything.
fn strip_outer_parens(s: &str) -> &str {
    if !(s.starts_with('(') && s.ends_with(')')) {
        return s;
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '`' | '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 && i + 1 != s.len() {
                    return s;
                }
            }
            _ => {}
        }
    }
    &s[1..s.len() - 1]
}

/// `` `a\`b` `` → ``a`b``, `"x"` → `x`; anything else (e.g. `` `a` + `b` ``)
/// unchanged.
fn unquote_ident(s: &str) -> String {
    let Some(q) = s.chars().next().filter(|&c| c == '`' || c == '"') else {
        return s.to_string();
    };
    let mut out = String::with_capacity(s.len());
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '0')) => out.push('\0'),
                Some((_, n)) => out.push(n),
                None => return s.to_string(),
            }
        } else if c == q {
            // The closing quote must end the text.
            return if i + 1 + c.len_utf8() == s.len() {
                out
            } else {
                s.to_string()
            };
        } else {
            out.push(c);
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a"), "`a`");
        assert_eq!(quote_ident("a`b\\c"), "`a\\`b\\\\c`");
        assert_eq!(quote_ident("x\ny"), "`x\\ny`");
        assert_eq!(quote_literal(b"it's \\ \xff\n"), "'it\\'s \\\\ \\xff\\x0a'");
    }

    #[test]
    fn splits_sorting_keys() {
        assert_eq!(split_key_expr("id"), vec!["id"]);
        assert_eq!(split_key_expr("`a\\`b`, `x y`"), vec!["a`b", "x y"]);
        assert_eq!(
            split_key_expr("tenant, toDate(ts, 'a,b'), id"),
            vec!["tenant", "toDate(ts, 'a,b')", "id"]
        );
        assert_eq!(split_key_expr("`a,b`, c"), vec!["a,b", "c"]);
        assert_eq!(split_key_expr(""), Vec::<String>::new());
        assert_eq!(split_key_expr("`a` + `b`"), vec!["`a` + `b`"]);
        assert_eq!(split_key_expr("(id)"), vec!["id"]);
        assert_eq!(split_key_expr("(`a)`, b)"), vec!["a)", "b"]);
        assert_eq!(split_key_expr("(a), (b)"), vec!["(a)", "(b)"]);
        let weird = "we`ird;'\"é\\x";
        assert_eq!(split_key_expr(&quote_ident(weird)), vec![weird]);
    }
}
