//! The domain: validation of requests and the projection of events into
//! pipe state. No I/O here.

pub mod columns;
pub mod names;
pub mod projection;
pub mod step;
pub mod validate;
