use anyhow::Result;

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::error::Failure;
use crate::report::Report;

pub fn run(_ctx: &Ctx, _args: &VerifyArgs) -> Result<Report> {
    Err(Failure::Usage("`verify` is not built yet".into()).into())
}
