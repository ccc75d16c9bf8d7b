//! The steps before CDC, one file each, named after
//! [`Step`](crate::domain::step::Step): [`setup`], [`prepare_tables`],
//! [`snapshot`] and, for a resync, [`swap`]. Each is a method of the worker
//! that records its start and end; `worker::run_steps` runs them from the
//! first one not recorded as done. Why a redo of each is safe:
//! `docs/architecture.md` ("Crash safety of the other steps").

mod prepare_tables;
mod setup;
mod snapshot;
mod swap;

pub(super) use swap::drop_old_data;
