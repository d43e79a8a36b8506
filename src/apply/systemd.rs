//! The systemd side of install and uninstall: hooks that reload systemd
//! after the units ([`crate::units`]) are placed, enable and (re)start the
//! sidecar, and stop and disable it before the units go. Live (root `/`) all
//! of them; under `--root` only the enablement (`systemctl --root=DIR`, which
//! works offline): the units come up at the image's first boot.

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

fn stop_sidecar(_: &HookEnv) -> Result<()> {
    if booted_with_systemd() {
        // Stopping the sidecar stops the capture unit (PartOf=), whose
        // ExecStop removes the rules. Units that are not loaded are no error.
        let out = Command::new("systemctl")
            .args(["stop", units::ISTIO_UNIT_NAME, units::CAPTURE_UNIT_NAME])
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

/// Where Istio's packages put `istio.service` (deb: /lib, rpm: /usr/lib; one
/// directory on a merged /usr), or an administrator's copy.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Whether the root has a unit file for `istio.service` (the istio-sidecar
/// package is installed).
fn istio_unit_present(root: &Path) -> bool {
    UNIT_DIRS.iter().any(|d| {
        root.join(d.trim_start_matches('/'))
            .join(units::ISTIO_UNIT_NAME)
            .exists()
    })
}

/// `systemctl [--root=DIR] ARGS`: live through the running manager, else
/// offline on the unit files (a baked image, a chroot).
fn systemctl_at(root: &Path, args: &[&str]) -> Result<()> {
    let mut all: Vec<String> = Vec::new();
    if root != Path::new("/") || !booted_with_systemd() {
        all.push(format!("--root={}", root.display()));
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    systemctl(&refs)
}

/// `systemctl enable istio.service`: the sidecar starts at boot, the usual
/// way (`systemctl disable istio` undoes it, `is-enabled` says it).
fn enable_sidecar(env: &HookEnv) -> Result<()> {
    if !istio_unit_present(&env.root) {
        tracing::warn!(
            "istio.service is not installed (Istio's istio-sidecar package): once it is,              `systemctl enable --now istio` starts it now and at every boot"
        );
        return Ok(());
    }
    systemctl_at(&env.root, &["enable", units::ISTIO_UNIT_NAME])
        .context("enabling istio.service at boot")
}

/// Undo of [`enable_sidecar`], and uninstall: without its mesh files the
/// sidecar has nothing to start with.
fn disable_sidecar(env: &HookEnv) -> Result<()> {
    if !istio_unit_present(&env.root) {
        return Ok(());
    }
    systemctl_at(&env.root, &["disable", units::ISTIO_UNIT_NAME])
        .context("disabling istio.service at boot")
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

/// Enables the sidecar when this VM is onboarded or its drop-in changes; a
/// `systemctl disable istio` between two runs with the same bundle sticks.
fn enable_hook() -> Hook {
    Hook {
        id: "hook:istio-enable".into(),
        detail: format!("systemctl enable {}", units::ISTIO_UNIT_NAME),
        run: enable_sidecar,
        undo: Some(disable_sidecar),
        after_change_of: vec![layout::ISTIO_DROPIN.into()],
    }
}

/// Hooks a live install runs after every file is placed.
pub fn install_hooks(files: &[units::GeneratedFile], start: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook {
            id: "hook:systemd-reload".into(),
            detail: "systemctl daemon-reload".into(),
            run: reload,
            undo: None,
            after_change_of: files.iter().map(|f| f.path.to_string()).collect(),
        },
        enable_hook(),
    ];
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
    }
    hooks
}

/// Hooks of an install under `--root` (an image being baked): the
/// enablement only, offline; the rest happens at the image's first boot.
pub fn baked_install_hooks() -> Vec<Hook> {
    vec![enable_hook()]
}

/// Run by an uninstall (live or under `--root`) before the units are removed.
pub fn uninstall_disable_hook() -> Hook {
    Hook {
        id: "hook:istio-disable".into(),
        detail: format!("systemctl disable {}", units::ISTIO_UNIT_NAME),
        run: disable_sidecar,
        undo: Some(enable_sidecar),
        after_change_of: Vec::new(),
    }
}

/// Run by a live uninstall before the units are removed.
pub fn uninstall_stop_hook() -> Hook {
    Hook {
        id: "hook:istio-stop".into(),
        detail: format!(
            "systemctl stop {} {}; capture rules removed",
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
        let files = units::render(&units::Options {
            capture: true,
            packaged: false,
        });
        let hooks = install_hooks(&files, true);
        assert_eq!(hooks.len(), 3);
        let restart = &hooks[2];
        for p in [
            layout::CLUSTER_ENV,
            layout::MESH_CONFIG,
            layout::ISTIO_DROPIN,
            "/etc/systemd/system/istio-vm-capture.service",
        ] {
            assert!(restart.after_change_of.iter().any(|x| x == p), "{p}");
        }
        // A new token alone is re-read by the running agent.
        assert!(!restart.after_change_of.iter().any(|x| x == layout::TOKEN));
        assert!(!restart.after_change_of.is_empty());
        assert_eq!(install_hooks(&files, false).len(), 2);
    }

    #[test]
    fn enabling_follows_the_dropin_only() {
        let h = enable_hook();
        assert_eq!(h.after_change_of, [layout::ISTIO_DROPIN]);
        assert!(h.undo.is_some());
        assert_eq!(baked_install_hooks().len(), 1);
    }

    /// Offline enable and disable on a tree, as an image builder's
    /// `--root` run does them: the usual `.wants` symlink, and none after.
    #[test]
    fn enable_and_disable_offline_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let env = HookEnv {
            root: dir.path().to_path_buf(),
            config: crate::config::Config::default(),
        };
        // No istio.service yet: a warning, nothing done.
        enable_sidecar(&env).unwrap();
        let wants = dir
            .path()
            .join("etc/systemd/system/multi-user.target.wants/istio.service");
        assert!(!wants.exists());
        let unit = dir.path().join("usr/lib/systemd/system/istio.service");
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(
            &unit,
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        enable_sidecar(&env).unwrap();
        assert_eq!(
            std::fs::read_link(&wants).unwrap(),
            Path::new("/usr/lib/systemd/system/istio.service")
        );
        disable_sidecar(&env).unwrap();
        assert!(std::fs::symlink_metadata(&wants).is_err());
    }
}
