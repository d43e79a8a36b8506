use anyhow::Result;

use super::Ctx;
use crate::cli::InstallArgs;
use crate::error::Failure;
use crate::report::Report;

pub fn install(_ctx: &Ctx, _args: &InstallArgs) -> Result<Report> {
    Err(Failure::Usage("`install` is not built yet".into()).into())
}

pub fn uninstall(_ctx: &Ctx) -> Result<Report> {
    Err(Failure::Usage("`uninstall` is not built yet".into()).into())
}
