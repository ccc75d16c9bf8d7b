//! Postgres source adapter (being written).
