//! `istio-vm verify`: runs the checks of `crate::verify` and reports them.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Ctx;
use crate::cli::VerifyArgs;
use crate::report::Report;
use crate::verify;
use crate::verify::metrics::{self, Facts};

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
    crate::logging::log_checks(&checks);
    if let Some(path) = &args.textfile {
        let inputs = verify::inputs::Inputs::load(&ctx.root);
        let status = verify::inputs::read(&ctx.root, "/var/lib/dpkg/status").ok();
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
        let facts = Facts::gather(&inputs, status.as_deref(), now);
        let text = metrics::render(&checks, &facts);
        if let Err(e) = write_textfile(&ctx.root, path, &text) {
            // The checks' report still goes out; the run is not ok.
            let msg = format!("{e:#}");
            crate::logging::error_line(&msg);
            let mut report = Report::new("verify");
            report.ok = false;
            report.error = Some(msg);
            report.checks = checks;
            return Ok(report);
        }
    }
    let mut report = Report::new("verify");
    report.ok = verify::failed(&checks).is_empty();
    report.checks = checks;
    Ok(report)
}

/// Replaces `path` (under `root`) atomically: a temporary file in the same
/// directory, mode 0644, renamed over it, so node_exporter never reads half
/// a file. The temporary name does not end in `.prom`, which the textfile
/// collector would read. A symlink at `path` is replaced, never followed.
fn write_textfile(root: &Path, path: &Path, text: &str) -> Result<()> {
    let vm_path = path.to_string_lossy();
    if !path.is_absolute() {
        bail!("--textfile {vm_path}: give an absolute path");
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("--textfile {vm_path}: not a file path");
    };
    let real_dir: PathBuf = crate::sysroot::Sysroot::new(root)?
        .resolve(&dir.to_string_lossy())
        .with_context(|| format!("resolving {}", dir.display()))?
        .host;
    if !real_dir.is_dir() {
        // No node_exporter on this VM (the timer runs everywhere): the
        // journal says so at notice, and the checks count as usual.
        crate::logging::line(
            crate::logging::Priority::Notice,
            &format!(
                "verify: {} does not exist, metrics not written: install \
                 prometheus-node-exporter (its textfile collector reads that directory) or set \
                 `textfile` in the config file to the directory yours reads",
                dir.display()
            ),
        );
        return Ok(());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&real_dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {vm_path}"))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {vm_path}"))?;
    tmp.persist(real_dir.join(name))
        .map_err(|e| e.error)
        .with_context(|| format!("replacing {vm_path}"))?;
    Ok(())
}
