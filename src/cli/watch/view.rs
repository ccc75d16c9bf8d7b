//! The status line and per-table progress bars of `watch`.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::format::{format_count, status_line};
use crate::cli::{CliError, Out};
use crate::proto::Pipe;

/// Status line and per-table progress bars (drawn on stderr; hidden when
/// stderr is not a terminal).
pub(super) struct ProgressView {
    multi: MultiProgress,
    status: ProgressBar,
    tables: Vec<(String, ProgressBar)>,
    pipe_id: String,
}

impl ProgressView {
    pub(super) fn new() -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let status = multi.add(ProgressBar::new_spinner().with_style(style));
        if !multi.is_hidden() {
            status.enable_steady_tick(Duration::from_millis(150));
        }
        Self {
            multi,
            status,
            tables: Vec::new(),
            pipe_id: String::new(),
        }
    }

    pub(super) fn table_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "  {prefix:24!} [{bar:20}] {pos:>3}/{len:<3} parts  {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    pub(super) fn update(&mut self, pipe: &Pipe) {
        if pipe.id != self.pipe_id {
            // A new incarnation (resync): start the bars over.
            for (_, bar) in self.tables.drain(..) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            self.pipe_id = pipe.id.clone();
        }
        self.status.set_message(status_line(pipe));
        for t in &pipe.tables {
            let bar = match self.tables.iter().find(|(name, _)| *name == t.source_table) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = self
                        .multi
                        .add(ProgressBar::new(0).with_style(Self::table_style()));
                    let prefix = if t.destination_table.is_empty()
                        || t.destination_table == t.source_table
                    {
                        t.source_table.clone()
                    } else {
                        format!("{} → {}", t.source_table, t.destination_table)
                    };
                    bar.set_prefix(prefix);
                    self.tables.push((t.source_table.clone(), bar.clone()));
                    bar
                }
            };
            let total = u64::from(t.snapshot_partitions_total);
            let done = u64::from(t.snapshot_partitions_done);
            if t.snapshot_done && total == 0 {
                bar.set_length(1);
                bar.set_position(1);
            } else {
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
            let mut msg = format!("{} rows", format_count(t.snapshot_rows));
            if t.snapshot_done {
                msg.push_str(" ✓");
            }
            if t.rows_inserted + t.rows_updated + t.rows_deleted > 0 {
                msg.push_str(&format!(
                    "  cdc +{} ~{} -{}",
                    format_count(t.rows_inserted),
                    format_count(t.rows_updated),
                    format_count(t.rows_deleted)
                ));
            }
            if t.soft_deletes_transferred > 0 {
                msg.push_str(&format!(
                    "  soft deletes {}",
                    format_count(t.soft_deletes_transferred)
                ));
            }
            bar.set_message(msg);
        }
    }

    /// Prints a line to stdout without tearing the bars.
    pub(super) fn println(&self, out: &mut Out, line: &str) -> Result<(), CliError> {
        self.multi.suspend(|| out.line(line))
    }

    pub(super) fn warn(&self, line: &str) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    pub(super) fn finish(&self) {
        self.status.abandon();
        for (_, bar) in &self.tables {
            bar.abandon();
        }
    }
}
