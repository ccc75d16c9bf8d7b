//! Step `setup`: server checks, the publication, then the slot, whose
//! consistent point the snapshot/CDC hand-off rests on
//! (`docs/architecture.md`).

use crate::domain::step::Step;
use crate::domain::validate;
use crate::failpoint;
use crate::proto::event::Payload;
use crate::proto::*;
use crate::source;

use crate::engine::worker::{Ends, Result, Worker};

impl Worker {
    pub(in crate::engine) async fn setup(&mut self, ends: &Ends) -> Result<Pipe> {
        self.record(vec![Payload::StepStarted(StepStarted {
            step: Step::Setup.name().into(),
        })])
        .await?;
        source::check_server(&ends.pg).await?;
        ends.ch.create_database_if_missing().await?;
        let slot = source::slot_name(&self.id);
        let publication = source::publication_name(&self.id);
        let names: Vec<_> = ends
            .tables
            .iter()
            .map(|t| validate::QualifiedName {
                schema: t.schema.clone(),
                table: t.name.clone(),
            })
            .collect();
        source::ensure_publication(&ends.pg, &publication, &names).await?;
        failpoint::hit(failpoint::SETUP_BEFORE_SLOT).await;
        // A slot left by a crash before SetupCompleted was never recorded:
        // its consistent point is unknown, so start over with a new one.
        source::drop_slot(&ends.pg, &slot).await?;
        let consistent = source::create_slot(&ends.pg, &slot).await?;
        failpoint::hit(failpoint::SETUP_AFTER_SLOT).await;
        self.recovered().await?;
        self.record(vec![Payload::SetupCompleted(SetupCompleted {
            slot_name: slot,
            publication_name: publication,
            consistent_lsn: consistent.to_string(),
        })])
        .await
    }
}
