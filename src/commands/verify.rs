//! `istio-vm verify`: runs the checks of `crate::verify` and reports them.

use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::report::Report;
use crate::verify;

/// clap's default for `--timeout`; when the flag still has it, the config
/// file or environment (`timeout`, `ISTIO_VM_TIMEOUT`) decides.
const FLAG_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<Report> {
    let timeout = if args.timeout == FLAG_DEFAULT_TIMEOUT {
        ctx.config.timeout
    } else {
        args.timeout
    };
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
