//! Storage adapters: the sled event log and the secret store beside it.

pub mod event_log;
pub(crate) mod secrets;

pub use event_log::{EventLog, LogError};
pub use secrets::{PipeSecrets, SecretStore};
