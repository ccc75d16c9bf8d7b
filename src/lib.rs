//! pgpipe: replicate PostgreSQL tables into ClickHouse, with an event-sourced
//! lifecycle you can watch over gRPC.
//!
//! Data flows one way: `api` (gRPC requests) -> `commands` (decided
//! against the projection) -> [`store`] (durable events) ->
//! [`domain::projection`] (current state) -> [`watch`] (live streams).
//! `docs/architecture.md` draws it and holds the snapshot/CDC hand-off and
//! crash-replay arguments.
//!
//! # Layout
//!
//! - `api`: the gRPC service, auth, errors mapped to statuses; [`server`]
//!   wires it with health, reflection, TLS and the engine.
//! - `commands`: requests decided against the projection, appended as
//!   events; `commands::checks` looks at both ends before a pipe is recorded.
//! - [`domain`]: validation, names, settings, connection strings and the
//!   projection (the fold of events); it imports no layer above it.
//! - [`store`]: the sled event log and secrets; [`watch`]: followers.
//! - [`engine`]: the supervisor and a worker per pipe (`worker`: its run
//!   loop and retries; `steps`: setup, table preparation, snapshot, swap;
//!   `cdc`: the CDC loop, its routes and per-table machine), schema
//!   changes, partitions, slot health.
//! - Adapters: [`source`] (Postgres: checks, snapshot COPY, the replication
//!   stream), [`sink`] (ClickHouse: DDL, RowBinary, types, CDC changes
//!   applied), [`model`] (rows and changes between them).
//! - [`cli`]: the `pgpipe` client commands; [`metrics`]: Prometheus;
//!   [`tls`]: rustls material; `failpoint`: crash points for tests;
//!   `proto_ext`: enum labels; [`alloc`]: the allocator settings the
//!   binaries start with.
//!
//! Only what `src/main.rs`, the bench binary, the integration tests and the
//! fuzz targets use is `pub`; everything else is `pub(crate)`, so the
//! compiler finds dead code and the public surface stays documented.

#![warn(missing_docs)]

pub mod alloc;
pub(crate) mod api;
pub mod cli;
pub(crate) mod commands;
pub mod domain;
pub mod engine;
pub(crate) mod failpoint;
pub mod metrics;
pub mod model;
pub(crate) mod proto_ext;
pub mod server;
pub mod sink;
pub mod source;
pub mod store;
pub mod tls;
pub mod watch;

pub mod proto {
    //! Generated from `proto/pgpipe/v1/pgpipe.proto`.
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("pgpipe.v1");
    /// The encoded descriptors of the proto, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pgpipe_descriptor");
}
