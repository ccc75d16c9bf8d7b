//! Labels of the proto enums, written once: the proto name without its
//! enum prefix, lowercase (`PIPE_STATUS_RUNNING` → `running`). The CLI,
//! its JSON, metrics labels and command errors all show these, so they are
//! a contract: a label changes only when the proto name does.

use crate::proto::{PipeStatus, ProblemKind, SchemaChangeKind, SlotWarningKind, TableState};

fn label(name: &'static str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

macro_rules! labels {
    ($($ty:ty => $prefix:literal),* $(,)?) => {$(
        impl $ty {
            #[doc = concat!("The name without `", $prefix, "`, lowercase.")]
            pub fn label(self) -> String {
                label(self.as_str_name(), $prefix)
            }
        }
    )*};
}

labels! {
    PipeStatus => "PIPE_STATUS_",
    TableState => "TABLE_STATE_",
    SlotWarningKind => "SLOT_WARNING_KIND_",
    ProblemKind => "PROBLEM_KIND_",
    SchemaChangeKind => "SCHEMA_CHANGE_KIND_",
}

impl TableState {
    /// The label as words, for sentences ("load pending").
    pub fn words(self) -> String {
        self.label().replace('_', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_the_proto_name_without_its_prefix_in_lowercase() {
        assert_eq!(PipeStatus::Running.label(), "running");
        assert_eq!(TableState::LoadPending.label(), "load_pending");
        assert_eq!(TableState::LoadPending.words(), "load pending");
        assert_eq!(SlotWarningKind::WalStatus.label(), "wal_status");
        assert_eq!(ProblemKind::WalLevel.label(), "wal_level");
        assert_eq!(SchemaChangeKind::AddColumn.label(), "add_column");
    }
}
