//! Names pgpipe derives from the user's names, written once.

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
