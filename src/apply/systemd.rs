//! The live systemd side of install and uninstall: hooks that reload systemd
//! after the units ([`crate::units`]) are placed, (re)start the sidecar, and
//! stop it before the units go. Only planned when the root is `/`; under
//! `--root` the units come up at the image's first boot instead.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::layout;
use crate::plan::{Hook, HookEnv};
use crate::units;

/// True when systemd is this machine's init (sd_booted(3)): in a container or
/// chroot without it there is nothing to reload or start, and the units take
/// effect when the system boots with systemd.
fn booted_with_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether systemd knows `unit` (its package is installed).
fn unit_exists(unit: &str) -> Result<bool> {
    let out = Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", unit])
        .output()
        .context("running systemctl show")?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "loaded")
}

fn reload(_: &HookEnv) -> Result<()> {
    if !booted_with_systemd() {
        tracing::warn!("systemd is not running here: the units take effect at the next boot");
        return Ok(());
    }
    systemctl(&["daemon-reload"])
}

fn restart_sidecar(_: &HookEnv) -> Result<()> {
    if !booted_with_systemd() {
        tracing::warn!("systemd is not running here: istio.service starts at the next boot");
        return Ok(());
    }
    if !unit_exists(units::ISTIO_UNIT_NAME)? {
        tracing::warn!(
            "istio.service is not installed (Istio's istio-sidecar package): it starts at \
             boot once the package is installed, or with `systemctl start istio`"
        );
        return Ok(());
    }
    // Restart, not start: a changed cluster.env, mesh config, root cert or
    // unit only takes effect in a new process (and the restart re-renders
    // the capture rules, PartOf=). Starts it when it is not running.
    systemctl(&["restart", units::ISTIO_UNIT_NAME]).context(
        "the sidecar did not start; `systemctl status istio istio-vm-capture` and \
         `journalctl -u istio-vm-capture -u istio` say why",
    )
}

/// (Re)starts the verify timer, so that a changed interval takes effect.
fn restart_verify_timer(_: &HookEnv) -> Result<()> {
    if !booted_with_systemd() {
        return Ok(());
    }
    systemctl(&["restart", units::VERIFY_TIMER_NAME])
}

fn stop_sidecar(_: &HookEnv) -> Result<()> {
    if booted_with_systemd() {
        // Stopping the sidecar stops the capture unit (PartOf=), whose
        // ExecStop removes the rules. Units that are not loaded are no error.
        let out = Command::new("systemctl")
            .args([
                "stop",
                units::VERIFY_TIMER_NAME,
                units::VERIFY_SERVICE_NAME,
                units::ISTIO_UNIT_NAME,
                units::CAPTURE_UNIT_NAME,
            ])
            .output()
            .context("running systemctl stop")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("not loaded") && !err.contains("not found") {
                bail!("systemctl stop istio.service failed: {}", err.trim());
            }
        }
    }
    // Whatever else put Istio rules in (a hand-run `capture apply`, Istio's
    // own script before install), uninstall leaves none.
    crate::capture::live::remove_live(&[], &[]).context("removing the capture rules")?;
    Ok(())
}

/// Paths whose change needs a new sidecar process.
fn restart_triggers(files: &[units::GeneratedFile]) -> Vec<String> {
    let mut v: Vec<String> = files.iter().map(|f| f.path.to_string()).collect();
    v.extend(
        [layout::CLUSTER_ENV, layout::MESH_CONFIG, layout::ROOT_CERT]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// Hooks a live install runs after every file is placed.
pub fn install_hooks(files: &[units::GeneratedFile], start: bool) -> Vec<Hook> {
    let mut hooks = vec![Hook {
        id: "hook:systemd-reload".into(),
        detail: "systemctl daemon-reload".into(),
        run: reload,
        undo: None,
        after_change_of: files.iter().map(|f| f.path.to_string()).collect(),
    }];
    if start {
        hooks.push(Hook {
            id: "hook:istio-restart".into(),
            detail: format!(
                "systemctl restart {} (with {})",
                units::ISTIO_UNIT_NAME,
                units::CAPTURE_UNIT_NAME
            ),
            run: restart_sidecar,
            undo: None,
            after_change_of: restart_triggers(files),
        });
        hooks.push(Hook {
            id: "hook:verify-timer".into(),
            detail: format!("systemctl restart {}", units::VERIFY_TIMER_NAME),
            run: restart_verify_timer,
            undo: None,
            after_change_of: [
                units::VERIFY_SERVICE,
                units::VERIFY_TIMER,
                units::VERIFY_SERVICE_DROPIN,
                units::VERIFY_TIMER_DROPIN,
                units::TIMERS_DROPIN,
            ]
            .map(String::from)
            .to_vec(),
        });
    }
    hooks
}

/// Run by a live uninstall before the units are removed.
pub fn uninstall_stop_hook() -> Hook {
    Hook {
        id: "hook:istio-stop".into(),
        detail: format!(
            "systemctl stop {} {} {}; capture rules removed",
            units::VERIFY_TIMER_NAME,
            units::ISTIO_UNIT_NAME,
            units::CAPTURE_UNIT_NAME
        ),
        run: stop_sidecar,
        undo: None,
        after_change_of: Vec::new(),
    }
}

/// Run by a live uninstall after the units are removed.
pub fn uninstall_reload_hook() -> Hook {
    Hook {
        id: "hook:systemd-reload".into(),
        detail: "systemctl daemon-reload".into(),
        run: reload,
        undo: None,
        after_change_of: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_restarts_only_when_its_inputs_change() {
        let files = units::render(&units::Options::default());
        let hooks = install_hooks(&files, true);
        assert_eq!(hooks.len(), 3);
        let restart = &hooks[1];
        for p in [
            layout::CLUSTER_ENV,
            layout::MESH_CONFIG,
            layout::CAPTURE_UNIT,
        ] {
            assert!(restart.after_change_of.iter().any(|x| x == p), "{p}");
        }
        // A new token alone is re-read by the running agent.
        assert!(!restart.after_change_of.iter().any(|x| x == layout::TOKEN));
        assert!(!restart.after_change_of.is_empty());
        assert_eq!(install_hooks(&files, false).len(), 1);
    }
}
