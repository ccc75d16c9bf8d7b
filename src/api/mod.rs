//! The gRPC edge: the PipeService, auth, and the mapping of typed errors to
//! statuses.

pub mod auth;
pub mod history;
pub mod service;

pub use auth::BearerAuth;
pub use service::{CoreCell, PipeApi};
