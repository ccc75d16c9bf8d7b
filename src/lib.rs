//! pgpipe: replicate PostgreSQL tables into ClickHouse, with an event-sourced
//! lifecycle you can watch over gRPC.
//!
//! Data flows one way: [`api`] (gRPC requests) -> [`commands`] (decided
//! against the projection) -> [`store`] (durable events) ->
//! [`domain::projection`] (current state) -> [`watch`] (live streams).

pub mod api;
pub mod cli;
pub mod commands;
pub mod domain;
pub mod engine;
pub mod failpoint;
pub mod metrics;
pub mod model;
pub mod proto_ext;
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
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pgpipe_descriptor");
}
