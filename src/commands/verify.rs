//! `istio-vm verify`: runs the checks of `crate::verify` and reports them.

use anyhow::Result;

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::report::Report;
use crate::verify;

pub fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<Report> {
    // The flag wins over the config file and ISTIO_VM_TIMEOUT (default 3s).
    let timeout = args.timeout.unwrap_or(ctx.config.timeout);
    let opts = verify::Options {
        root: ctx.root.clone(),
        live: ctx.live(),
        timeout,
        wait: args.wait,
        skip_agent: args.skip_agent,
        probes: args.probe.clone(),
    };
    let checks = verify::run(&opts)?;
    let mut report = Report::new("verify");
    report.ok = verify::failed(&checks).is_empty();
    report.checks = checks;
    Ok(report)
}
