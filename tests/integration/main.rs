//! The integration tests, one binary: each former `tests/*.rs` is a module
//! here, so the crate is linked once. Run one file's tests with a filter:
//! `cargo test --test integration pipe_e2e::`.
//!
//! Tests that need a process of their own (they kill the service or
//! measure memory) are binaries of their own: `crash`, `chaos`, `soak` and
//! `event_log_memory` (see Cargo.toml). Everything here runs together in
//! one process, on parallel test threads: names of pipes, schemas, tables
//! and databases in the shared dev environment are unique per test.

#[path = "../common/mod.rs"]
mod common;

mod cdc_stream;
mod chfront;
mod cli_e2e;
mod column_types;
mod columns;
mod event_fuzz;
mod event_log;
mod generated_columns;
mod grpc_api;
mod grpc_bad_input;
mod grpcurl;
mod history;
mod hostile_tables;
mod labels;
mod metrics;
mod partitions;
mod pipe_e2e;
mod pipe_faults;
mod pipe_lifecycle;
mod pipe_types;
mod process;
mod resync_e2e;
mod schema_changes;
mod secrets_leak;
mod sink_ch;
mod sink_pg_oracle;
mod slot_health;
mod slot_lost;
mod source_checks;
mod source_pg;
mod storage_faults;
mod tables_update;
mod tls;
mod validate;
mod watch;
