//! ClickHouse sink adapter (being written).
