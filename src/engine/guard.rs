//! When the engine may record a fact about a pipe incarnation: a named
//! condition checked on the projection at the stream version the append is
//! made at (through [`Core::append_when`]), so a deletion or a newer
//! incarnation recorded meanwhile is seen and nothing lands after it.

use crate::commands::Core;
use crate::domain::projection::Projection;
use crate::proto::event::Payload;
use crate::proto::{Pipe, PipeStatus};
use crate::store::LogError;
use crate::store::event_log::new_event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// The current incarnation of its name, neither deleted, paused nor
    /// failed: a worker's progress.
    Active,
    /// Not deleted: a worker's failure report (a paused or failed pipe's
    /// worker still says why it stopped).
    NotDeleted,
    /// The current incarnation, its CDC started and its slot watched: slot
    /// health.
    Watched,
    /// Its source objects not released yet: the release.
    Unreleased,
}

impl Guard {
    pub(crate) fn holds(self, pr: &Projection, id: &str, name: &str) -> bool {
        let Some(p) = pr.by_id(id) else {
            return false;
        };
        let current = pr.by_name(name).is_some_and(|c| c.id == id);
        match self {
            Guard::Active => {
                current
                    && !matches!(
                        p.status(),
                        PipeStatus::Deleted | PipeStatus::Paused | PipeStatus::Failed
                    )
            }
            Guard::NotDeleted => p.status() != PipeStatus::Deleted,
            Guard::Watched => current && watched(p),
            Guard::Unreleased => !p.source_released,
        }
    }
}

/// Records `payloads` about incarnation `id` (stream `name`) if `guard`
/// holds, deciding again after any conflicting append. The pipe as
/// recorded, or None when the guard did not hold (nothing recorded).
pub(crate) async fn record(
    core: &Core,
    guard: Guard,
    id: &str,
    name: &str,
    payloads: &[Payload],
) -> Result<Option<Pipe>, LogError> {
    let stored = core
        .append_when(name, usize::MAX, |pr, _| {
            Ok::<_, LogError>(if guard.holds(pr, id, name) {
                payloads.iter().cloned().map(|p| new_event(id, p)).collect()
            } else {
                Vec::new()
            })
        })
        .await?;
    if stored.is_empty() {
        return Ok(None);
    }
    Ok(core.read(|p| p.by_id(id).cloned()))
}

/// Whether the incarnation's slot is watched: current, CDC started, and
/// running or paused (a FAILED or deleted pipe's slot is the user's to fix
/// or already being released).
pub(super) fn watched(p: &Pipe) -> bool {
    p.cdc_started
        && !p.slot_name.is_empty()
        && matches!(p.status(), PipeStatus::Running | PipeStatus::Paused)
}
