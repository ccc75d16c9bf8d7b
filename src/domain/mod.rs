//! The domain: validation of requests, names, settings, connection strings
//! and the projection of events into pipe state. No I/O here, and nothing
//! from the layers above (commands, engine); the one adapter it reads is
//! the sink's type mapping, which `columns` asks whether a chosen column
//! type holds a source type's values.

pub(crate) mod columns;
pub(crate) mod conn;
pub(crate) mod names;
pub mod projection;
pub(crate) mod settings;
pub(crate) mod step;
pub mod validate;
