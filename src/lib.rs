//! pgpipe: replicate PostgreSQL tables into ClickHouse, with an event-sourced
//! lifecycle you can watch over gRPC.

pub mod cli;

pub mod proto {
    tonic::include_proto!("pgpipe.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pgpipe_descriptor");
}
