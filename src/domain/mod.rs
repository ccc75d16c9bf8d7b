//! The domain: validation of requests, names, settings, connection strings
//! and the projection of events into pipe state. No I/O here, and nothing
//! from the layers above (commands, engine); the one adapter it reads is
//! the sink's type mapping, which `columns` asks whether a chosen column
//! type holds a source type's values.

pub mod columns;
pub mod conn;
pub mod names;
pub mod projection;
pub mod settings;
pub mod step;
pub mod validate;
