//! Command-line client (being written).
