//! One rule set, two modes: the checks of a request write what they find
//! into [`Problems`]. A dry run (ValidatePipe, UpdatePipe with
//! `validate_only`) wants every problem; a command (CreatePipe, UpdatePipe,
//! ResyncPipe) stops at the first and refuses with it, so each rule is
//! written once and says the same in both.

use super::CommandError;
use crate::domain::columns::is_column_field;
use crate::domain::validate::Invalid;
use crate::proto::{Problem, ProblemKind};

/// The checks ended early (fail-fast mode, after the first problem).
#[derive(Debug)]
pub(crate) struct Stop;

pub(crate) struct Problems {
    pub list: Vec<Problem>,
    pub fail_fast: bool,
    /// Informational problems ([`Problem::warning`]): reported after the
    /// others, never a reason to refuse.
    warnings: Vec<Problem>,
    /// How a command refuses with the first problem.
    refusal: Option<CommandError>,
    /// The request field a config's `tables[i]` came from (`add_tables`
    /// for UpdatePipe), so problems name what the client sent.
    tables_field: &'static str,
}

impl Problems {
    /// Every problem (a dry run).
    pub fn all() -> Self {
        Self::new(false)
    }

    /// Up to the first problem (a command).
    pub fn first() -> Self {
        Self::new(true)
    }

    fn new(fail_fast: bool) -> Self {
        Self {
            list: Vec::new(),
            fail_fast,
            warnings: Vec::new(),
            refusal: None,
            tables_field: "tables",
        }
    }

    /// Names a checked config's `tables[i]` as the request's `field[i]`
    /// from now on.
    pub fn name_tables(&mut self, field: &'static str) {
        self.tables_field = field;
    }

    /// Records `p`; a command would refuse with `refusal(&p)`.
    pub fn push(
        &mut self,
        mut p: Problem,
        refusal: impl FnOnce(&Problem) -> CommandError,
    ) -> Result<(), Stop> {
        if self.tables_field != "tables"
            && let Some(rest) = p.field.strip_prefix("tables[")
        {
            p.field = format!("{}[{rest}", self.tables_field);
        }
        if self.refusal.is_none() {
            self.refusal = Some(refusal(&p));
        }
        self.list.push(p);
        if self.fail_fast { Err(Stop) } else { Ok(()) }
    }

    /// A malformed part of the request (column options: kind COLUMN).
    pub fn invalid(&mut self, field: &str, table: &str, e: Invalid) -> Result<(), Stop> {
        let kind = if is_column_field(field) {
            ProblemKind::Column
        } else {
            ProblemKind::InvalidRequest
        };
        let p = Problem {
            kind: kind as i32,
            table: table.to_owned(),
            message: e.0.clone(),
            field: field.to_owned(),
            ..Default::default()
        };
        self.push(p, |_| CommandError::Invalid(e))
    }

    /// A refusal that is no problem of the request's fields (the name is
    /// taken, the pipe is not in a state that allows it), reported as
    /// `kind` on `field`.
    pub fn refused(&mut self, kind: ProblemKind, field: &str, e: CommandError) -> Result<(), Stop> {
        let p = Problem {
            kind: kind as i32,
            message: e.to_string(),
            field: field.to_owned(),
            ..Default::default()
        };
        self.push(p, |_| e)
    }

    /// A problem at either end (from [`super::checks`]): column options
    /// that do not fit the source table are a bad request; the rest is the
    /// state of either end.
    pub fn at_the_ends(&mut self, p: Problem) -> Result<(), Stop> {
        self.push(p, |p| {
            if p.kind == ProblemKind::Column as i32 {
                CommandError::Invalid(Invalid(if p.field.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}: {}", p.field, p.message)
                }))
            } else {
                CommandError::FailedPrecondition(p.message.clone())
            }
        })
    }

    pub fn warn(&mut self, p: Problem) {
        self.warnings.push(Problem { warning: true, ..p });
    }

    /// How a command whose checks stopped refuses: with the first problem
    /// ([`Stop`] comes only after one).
    pub fn stopped(self) -> CommandError {
        self.refusal.unwrap_or_else(|| {
            CommandError::FailedPrecondition("the checks stopped without a problem".into())
        })
    }

    /// Every problem, then the warnings.
    pub fn into_list(mut self) -> Vec<Problem> {
        self.list.append(&mut self.warnings);
        self.list
    }
}
