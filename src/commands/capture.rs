use anyhow::Result;

use super::Ctx;
use crate::cli::CaptureArgs;
use crate::error::Failure;
use crate::report::Report;

pub fn run(_ctx: &Ctx, _args: &CaptureArgs) -> Result<Report> {
    Err(Failure::Usage("`capture` is not built yet".into()).into())
}
