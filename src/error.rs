//! Error kinds that decide the process exit code (DESIGN.md "Exit codes").

use thiserror::Error;

/// Exit codes of the command contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success, changed or not.
    Ok = 0,
    /// Checked and not OK (validation errors, verify failures); nothing changed.
    NotOk = 1,
    /// Usage error.
    Usage = 2,
    /// The change failed part-way and was rolled back.
    RolledBack = 3,
}

/// Errors whose kind selects a non-default exit code. Anything else that
/// escapes a command is reported with exit 1 (nothing was changed).
#[derive(Debug, Error)]
pub enum Failure {
    /// Bad invocation or a capability this build does not have.
    #[error("{0}")]
    Usage(String),
    /// A change failed part-way; everything already done was undone.
    #[error("{message} (all changes were rolled back)")]
    RolledBack {
        message: String,
        /// Id of the step that failed, when the failure belongs to one.
        step: Option<String>,
    },
}

/// Attached (as anyhow context) to an error of a command that had already
/// planned its steps: `main` prints this report, with the failed step marked,
/// instead of a bare error.
#[derive(Debug)]
pub struct ReportOnError(pub Box<crate::report::Report>);

impl std::fmt::Display for ReportOnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stopped", self.0.command)
    }
}

/// The report to print for `err`, if the command attached one.
pub fn report_of(err: &anyhow::Error) -> Option<crate::report::Report> {
    err.downcast_ref::<ReportOnError>().map(|r| (*r.0).clone())
}

/// The failed step of a rolled-back change, if known.
pub fn failed_step(err: &anyhow::Error) -> Option<&str> {
    err.chain().find_map(|e| match e.downcast_ref::<Failure>() {
        Some(Failure::RolledBack { step: Some(s), .. }) => Some(s.as_str()),
        _ => None,
    })
}

impl Failure {
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) => Exit::Usage,
            Failure::RolledBack { .. } => Exit::RolledBack,
        }
    }
}

/// Map any error escaping a command to its exit code.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map(Failure::exit)
        .unwrap_or(Exit::NotOk)
}
