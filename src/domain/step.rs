//! The steps of a pipe incarnation, in order. [`Step::first_open`] is the
//! one place the ladder is spelled out: the worker resumes there, failure
//! reports, events, metrics and logs take the step's name from here.

use crate::proto::Pipe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Server checks, publication, slot (its consistent point).
    Setup,
    /// Destination (or `_resync`) tables created.
    PrepareTables,
    /// The parallel initial load from the exported snapshot.
    Snapshot,
    /// A resync only: soft deletes moved, tables exchanged.
    Swap,
    /// Change data capture, until the pipe stops.
    Cdc,
}

impl Step {
    /// The name in events (`StepStarted.step`, `PipeFailed.step`), metrics
    /// and logs; part of the event contract.
    pub fn name(self) -> &'static str {
        match self {
            Step::Setup => "setup",
            Step::PrepareTables => "prepare_tables",
            Step::Snapshot => "snapshot",
            Step::Swap => "swap",
            Step::Cdc => "cdc",
        }
    }

    /// The first step the pipe's state does not show as done: where a run
    /// of the steps resumes.
    pub fn first_open(pipe: &Pipe) -> Step {
        if pipe.slot_name.is_empty() {
            Step::Setup
        } else if !pipe.tables_prepared {
            Step::PrepareTables
        } else if !pipe.snapshot_done {
            Step::Snapshot
        } else if !pipe.resync_of.is_empty() && !pipe.swapped {
            Step::Swap
        } else {
            Step::Cdc
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_resumes_at_the_first_step_not_recorded_as_done() {
        let mut p = Pipe::default();
        assert_eq!(Step::first_open(&p), Step::Setup);
        p.slot_name = "s".into();
        assert_eq!(Step::first_open(&p), Step::PrepareTables);
        p.tables_prepared = true;
        assert_eq!(Step::first_open(&p), Step::Snapshot);
        p.snapshot_done = true;
        assert_eq!(Step::first_open(&p), Step::Cdc);
        // A resync swaps before CDC.
        p.resync_of = "old".into();
        assert_eq!(Step::first_open(&p), Step::Swap);
        p.swapped = true;
        assert_eq!(Step::first_open(&p), Step::Cdc);
    }

    #[test]
    fn names_are_the_event_contract() {
        let names: Vec<&str> = [
            Step::Setup,
            Step::PrepareTables,
            Step::Snapshot,
            Step::Swap,
            Step::Cdc,
        ]
        .into_iter()
        .map(Step::name)
        .collect();
        assert_eq!(
            names,
            ["setup", "prepare_tables", "snapshot", "swap", "cdc"]
        );
    }
}
