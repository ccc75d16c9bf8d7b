//! Names: the rule every identifier a user gives obeys, and the names
//! pgpipe derives from them, written once.

/// A request (or part of one) that cannot be accepted; the message names
/// the field and says what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

pub const MAX_IDENT_LEN: usize = 63;

/// An identifier of either dialect: any characters but NUL, 1..=63 bytes
/// (Postgres truncates longer names silently, which would break mapping).
pub fn ident(field: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid(format!("{field} is empty")));
    }
    if s.len() > MAX_IDENT_LEN {
        return Err(Invalid(format!(
            "{field} {:?}… is {} bytes; identifiers may have at most {MAX_IDENT_LEN}",
            s.chars().take(20).collect::<String>(),
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(Invalid(format!("{field} contains a NUL character")));
    }
    Ok(())
}

/// The suffix of the scratch table a resync loads into before it swaps it
/// in; a user's destination table may not end with it.
pub const RESYNC_SUFFIX: &str = "_resync";

/// The table a resync of `destination` loads into.
pub fn resync_table(destination: &str) -> String {
    format!("{destination}{RESYNC_SUFFIX}")
}

/// True when `destination` would clash with a resync's scratch table.
pub fn is_resync_table(destination: &str) -> bool {
    destination.ends_with(RESYNC_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_table_is_recognised_as_one() {
        assert_eq!(resync_table("orders"), "orders_resync");
        assert!(is_resync_table(&resync_table("orders")));
        assert!(!is_resync_table("orders"));
    }
}
