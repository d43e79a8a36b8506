//! `istio-vm validate --bundle SRC [--sha256 HEX] [--strict]`: read the bundle,
//! report every finding, change nothing.

use anyhow::Result;
use time::OffsetDateTime;

use super::Ctx;
use crate::bundle;
use crate::cli::ValidateArgs;
use crate::error::Failure;
use crate::report::Report;

pub fn run(ctx: &Ctx, args: &ValidateArgs) -> Result<Report> {
    let src = &args.bundle.bundle;
    let sha = args.bundle.sha256.as_deref();
    bundle::source::check_args(src, sha).map_err(Failure::Usage)?;
    let mut report = Report::new("validate");
    let load = bundle::source::LoadOptions {
        fetch_timeout: ctx.config.fetch_timeout,
    };
    report.findings = match bundle::source::load_with(src, sha, &load) {
        Ok(b) => {
            let opts = super::validate_options(ctx, &args.bundle);
            crate::validate::validate_with(&b, OffsetDateTime::now_utc(), &opts).findings
        }
        Err(findings) => findings,
    };
    // Errors fail; with --strict, so do warnings.
    report.ok = if args.strict {
        report.findings.is_empty()
    } else {
        !report.has_errors()
    };
    Ok(report)
}
