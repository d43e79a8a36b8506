use anyhow::Result;

use super::Ctx;
use crate::cli::ValidateArgs;
use crate::error::Failure;
use crate::report::Report;

pub fn run(_ctx: &Ctx, _args: &ValidateArgs) -> Result<Report> {
    Err(Failure::Usage("`validate` is not built yet".into()).into())
}
