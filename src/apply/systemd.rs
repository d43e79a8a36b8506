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

/// (Re)starts the verify timer, so that a changed interval takes effect.
fn restart_verify_timer(_: &HookEnv) -> Result<()> {
    if !booted_with_systemd() {
        return Ok(());
    }
    systemctl(&["restart", units::VERIFY_TIMER_NAME])
}

fn stop_sidecar(env: &HookEnv) -> Result<()> {
    if booted_with_systemd() {
        // Stopping the sidecar stops the capture unit (PartOf=), whose
        // ExecStop removes the rules. Units that are not loaded are no error.
        let out = Command::new("systemctl")
            .args([
                "stop",
                units::VERIFY_TIMER_NAME,
                units::VERIFY_SERVICE_NAME,
                units::HEAL_UNIT_NAME,
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
    // Also without systemd (or a capture unit), uninstall leaves none of
    // the rules istio-vm's record names; another tool's ISTIO_* chains stay.
    let record = crate::commands::capture::recorded(&env.root);
    crate::capture::live::remove_live(&record, &[]).context("removing the capture rules")?;
    Ok(())
}

/// Where Istio's packages put `istio.service` (deb: /lib, rpm: /usr/lib; one
/// directory on a merged /usr), or an administrator's copy.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Whether the root has a unit file named `unit` (for `istio.service`: the
/// istio-sidecar package is installed).
fn unit_present(root: &Path, unit: &str) -> bool {
    UNIT_DIRS
        .iter()
        .any(|d| root.join(d.trim_start_matches('/')).join(unit).exists())
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

/// Whether a `systemctl` can be run here (a package's chroot, a container
/// image being built, may have none).
fn have_systemctl() -> bool {
    Command::new("systemctl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `systemctl enable|disable UNIT` when the root has the unit file. Without
/// a systemctl (a chroot with no systemd), enabling is left to whoever
/// boots it with systemd (a warning), and disabling removes the unit's
/// `.wants` links below the root's /etc/systemd/system, what `systemctl
/// disable` removes.
fn set_enabled(root: &Path, unit: &str, on: bool) -> Result<()> {
    if !unit_present(root, unit) {
        // A link left by an earlier enable whose unit file is gone (an
        // interrupted uninstall) is removed all the same.
        return if on {
            Ok(())
        } else {
            remove_wants_links(root, unit)
        };
    }
    let verb = if on { "enable" } else { "disable" };
    if !have_systemctl() {
        if on {
            tracing::warn!("no systemctl here: `systemctl enable {unit}` once systemd runs");
            return Ok(());
        }
        return remove_wants_links(root, unit);
    }
    systemctl_at(root, &[verb, unit]).with_context(|| format!("systemctl {verb} {unit}"))
}

fn remove_wants_links(root: &Path, unit: &str) -> Result<()> {
    let etc = root.join("etc/systemd/system");
    let Ok(dirs) = std::fs::read_dir(&etc) else {
        return Ok(());
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".wants") || name.ends_with(".requires")) {
            continue;
        }
        let link = d.path().join(unit);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            // As systemctl does: an emptied .wants directory goes too.
            let _ = std::fs::remove_dir(d.path());
        }
    }
    Ok(())
}

/// `systemctl enable` of the sidecar (starts at boot; `systemctl disable
/// istio` undoes it, `is-enabled` says it), of the verify timer
/// (`WantedBy=timers.target`), and with capture of the heal unit
/// (`WantedBy=istio.service`: started with the sidecar, stopped with it,
/// `BindsTo=`). Without capture the heal unit is disabled: it would pull
/// the capture unit in.
fn enable_units(env: &HookEnv, capture: bool) -> Result<()> {
    if !unit_present(&env.root, units::ISTIO_UNIT_NAME) {
        tracing::warn!(
            "istio.service is not installed (Istio's istio-sidecar package): once it is, \
             `systemctl enable --now istio` starts it now and at every boot"
        );
    }
    set_enabled(&env.root, units::ISTIO_UNIT_NAME, true)
        .context("enabling istio.service at boot")?;
    set_enabled(&env.root, units::VERIFY_TIMER_NAME, true)?;
    set_enabled(&env.root, units::HEAL_UNIT_NAME, capture)
}

fn enable_with_capture(env: &HookEnv) -> Result<()> {
    enable_units(env, true)
}

fn enable_without_capture(env: &HookEnv) -> Result<()> {
    enable_units(env, false)
}

/// The links [`disable_units`] found (link, target), for its undo in the
/// same run.
static DISABLED: std::sync::Mutex<Vec<(std::path::PathBuf, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// The `.wants`/`.requires` links of our units and the sidecar below the
/// root's /etc/systemd/system.
fn enablement_links(root: &Path) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    let Ok(dirs) = std::fs::read_dir(root.join("etc/systemd/system")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".wants") || name.ends_with(".requires")) {
            continue;
        }
        for unit in [
            units::HEAL_UNIT_NAME,
            units::VERIFY_TIMER_NAME,
            units::ISTIO_UNIT_NAME,
        ] {
            let link = d.path().join(unit);
            if let Ok(target) = std::fs::read_link(&link) {
                v.push((link, target));
            }
        }
    }
    v
}

/// Undo of an uninstall's [`disable_units`] (a later step failed): the
/// links it removed, exactly as they were. Not through `systemctl enable`:
/// the uninstall undoes its hooks before it puts its files back, so a unit
/// a copied binary placed under /etc is gone for the moment and systemctl
/// cannot read it; the rollback that follows puts it back under its link.
fn reenable_units(_: &HookEnv) -> Result<()> {
    let links = std::mem::take(&mut *DISABLED.lock().unwrap_or_else(|e| e.into_inner()));
    for (link, target) in links {
        if std::fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if let Some(d) = link.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// Undo of the enablement, and uninstall: without its mesh files the
/// sidecar has nothing to start with.
fn disable_units(env: &HookEnv) -> Result<()> {
    *DISABLED.lock().unwrap_or_else(|e| e.into_inner()) = enablement_links(&env.root);
    set_enabled(&env.root, units::HEAL_UNIT_NAME, false)?;
    set_enabled(&env.root, units::VERIFY_TIMER_NAME, false)?;
    set_enabled(&env.root, units::ISTIO_UNIT_NAME, false)
        .context("disabling istio.service at boot")?;
    // The .wants directories the enablement made, when nothing else is in
    // them (on a tree that had none, uninstall leaves none).
    for d in [
        "istio.service.wants",
        "timers.target.wants",
        "multi-user.target.wants",
    ] {
        let _ = std::fs::remove_dir(env.root.join("etc/systemd/system").join(d));
    }
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

/// Where `systemctl enable` links `unit`: one `TARGET.wants/UNIT` below
/// /etc/systemd/system per `WantedBy=` of its `[Install]` section.
fn wants_links(unit: &str, install_text: &str) -> Vec<String> {
    install_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("WantedBy="))
        .flat_map(str::split_whitespace)
        .map(|target| format!("/etc/systemd/system/{target}.wants/{unit}"))
        .collect()
}

/// The links [`enable_units`] may create, recorded in the journal before it
/// runs (no directory exists before a journal names it): Istio's unit is
/// `WantedBy=multi-user.target` (tools/packaging/common/istio.service,
/// 1.29.6), ours as shipped.
fn enabled_links(capture: bool) -> Vec<String> {
    let mut v = wants_links(units::ISTIO_UNIT_NAME, "WantedBy=multi-user.target");
    v.extend(wants_links(
        units::VERIFY_TIMER_NAME,
        units::shipped(units::VERIFY_TIMER),
    ));
    if capture {
        v.extend(wants_links(
            units::HEAL_UNIT_NAME,
            units::shipped(units::HEAL_UNIT),
        ));
    }
    v
}

/// Enables the units when this VM is onboarded or its drop-in changes
/// (capture on or off); a `systemctl disable istio` between two runs with the
/// same bundle sticks.
fn enable_hook(capture: bool) -> Hook {
    let mut detail = format!(
        "systemctl enable {} {}",
        units::ISTIO_UNIT_NAME,
        units::VERIFY_TIMER_NAME
    );
    if capture {
        detail = format!("{detail} {}", units::HEAL_UNIT_NAME);
    }
    Hook {
        id: "hook:istio-enable".into(),
        detail,
        run: if capture {
            enable_with_capture
        } else {
            enable_without_capture
        },
        undo: Some(disable_units),
        after_change_of: vec![layout::ISTIO_DROPIN.into()],
        creates: enabled_links(capture),
    }
}

/// Hooks a live install runs after every file is placed.
pub fn install_hooks(files: &[units::GeneratedFile], start: bool, capture: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook {
            id: "hook:systemd-reload".into(),
            detail: "systemctl daemon-reload".into(),
            run: reload,
            undo: None,
            after_change_of: files.iter().map(|f| f.path.to_string()).collect(),
            creates: Vec::new(),
        },
        enable_hook(capture),
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
            creates: Vec::new(),
        });
        hooks.push(Hook {
            id: "hook:verify-timer".into(),
            detail: format!("systemctl restart {}", units::VERIFY_TIMER_NAME),
            run: restart_verify_timer,
            undo: None,
            after_change_of: [
                units::VERIFY_SERVICE_DROPIN,
                units::VERIFY_TIMER_DROPIN,
                "/etc/systemd/system/istio-vm-verify.service",
                "/etc/systemd/system/istio-vm-verify.timer",
            ]
            .map(String::from)
            .to_vec(),
            creates: Vec::new(),
        });
    }
    hooks
}

/// Hooks of an install under `--root` (an image being baked): the
/// enablement only, offline; the rest happens at the image's first boot.
pub fn baked_install_hooks(capture: bool) -> Vec<Hook> {
    vec![enable_hook(capture)]
}

/// Run by an uninstall (live or under `--root`) before the units are removed.
pub fn uninstall_disable_hook() -> Hook {
    Hook {
        id: "hook:istio-disable".into(),
        detail: format!(
            "systemctl disable {} {} {}",
            units::ISTIO_UNIT_NAME,
            units::VERIFY_TIMER_NAME,
            units::HEAL_UNIT_NAME
        ),
        run: disable_units,
        undo: Some(reenable_units),
        after_change_of: Vec::new(),
        creates: Vec::new(),
    }
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
        creates: Vec::new(),
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
        creates: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_restarts_only_when_its_inputs_change() {
        let files = units::render(&units::Options {
            packaged: false,
            ..units::Options::default()
        });
        let hooks = install_hooks(&files, true, true);
        assert_eq!(hooks.len(), 4);
        let restart = &hooks[2];
        assert_eq!(restart.id, "hook:istio-restart");
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
        assert_eq!(install_hooks(&files, false, true).len(), 2);
    }

    #[test]
    fn enabling_follows_the_dropin_only() {
        for capture in [true, false] {
            let h = enable_hook(capture);
            assert_eq!(h.after_change_of, [layout::ISTIO_DROPIN]);
            assert!(h.undo.is_some());
            assert_eq!(h.detail.contains(units::HEAL_UNIT_NAME), capture);
            assert_eq!(baked_install_hooks(capture).len(), 1);
            // Every link it may make is named for the journal.
            let mut want = vec![
                "/etc/systemd/system/multi-user.target.wants/istio.service",
                "/etc/systemd/system/timers.target.wants/istio-vm-verify.timer",
            ];
            if capture {
                want.push("/etc/systemd/system/istio.service.wants/istio-vm-capture-heal.service");
            }
            assert_eq!(h.creates, want);
        }
    }

    fn write_unit(root: &Path, name: &str, install: &str) {
        let unit = root.join("usr/lib/systemd/system").join(name);
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(
            &unit,
            format!("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy={install}\n"),
        )
        .unwrap();
    }

    /// Offline enable and disable on a tree, as an image builder's
    /// `--root` run does them: the usual `.wants` symlinks, and none after.
    #[test]
    fn enable_and_disable_offline_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let env = HookEnv {
            root: dir.path().to_path_buf(),
            config: crate::config::Config::default(),
        };
        let etc = dir.path().join("etc/systemd/system");
        let sidecar = etc.join("multi-user.target.wants/istio.service");
        let timer = etc
            .join("timers.target.wants")
            .join(units::VERIFY_TIMER_NAME);
        let heal = etc.join("istio.service.wants").join(units::HEAL_UNIT_NAME);
        // No unit files yet: a warning, nothing done.
        enable_with_capture(&env).unwrap();
        assert!(!etc.exists());
        write_unit(dir.path(), "istio.service", "multi-user.target");
        write_unit(dir.path(), units::VERIFY_TIMER_NAME, "timers.target");
        write_unit(dir.path(), units::HEAL_UNIT_NAME, "istio.service");
        enable_with_capture(&env).unwrap();
        // What systemctl made is what the hook names for the journal.
        let named: Vec<_> = enabled_links(true)
            .iter()
            .map(|l| dir.path().join(l.trim_start_matches('/')))
            .collect();
        for d in std::fs::read_dir(&etc).unwrap() {
            for l in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let l = l.unwrap().path();
                assert!(named.contains(&l), "{l:?} is not named");
            }
        }
        for (link, name) in [
            (&sidecar, "istio.service"),
            (&timer, units::VERIFY_TIMER_NAME),
            (&heal, units::HEAL_UNIT_NAME),
        ] {
            assert_eq!(
                std::fs::read_link(link).unwrap(),
                Path::new("/usr/lib/systemd/system").join(name)
            );
        }
        // Capture turned off: the heal unit goes, the rest stays.
        enable_without_capture(&env).unwrap();
        assert!(std::fs::symlink_metadata(&heal).is_err());
        // (The links point into the root's /usr/lib: not followed here.)
        assert!(std::fs::symlink_metadata(&sidecar).is_ok());
        assert!(std::fs::symlink_metadata(&timer).is_ok());
        disable_units(&env).unwrap();
        for link in [&sidecar, &timer, &heal] {
            assert!(std::fs::symlink_metadata(link).is_err(), "{link:?}");
        }
    }

    /// Without a systemctl, disabling removes exactly the unit's links (and
    /// the directories that held only them), nothing else.
    #[test]
    fn disabling_without_systemctl_removes_the_wants_links() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/systemd/system");
        let wants = etc.join("istio.service.wants");
        let timers = etc.join("timers.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::fs::create_dir_all(&timers).unwrap();
        let to = Path::new("/usr/lib/systemd/system");
        std::os::unix::fs::symlink(to.join("h.service"), wants.join("h.service")).unwrap();
        std::os::unix::fs::symlink(to.join("h.service"), timers.join("h.service")).unwrap();
        std::os::unix::fs::symlink(to.join("o.timer"), timers.join("o.timer")).unwrap();
        remove_wants_links(dir.path(), "h.service").unwrap();
        assert!(!wants.exists());
        assert!(std::fs::symlink_metadata(timers.join("h.service")).is_err());
        assert!(std::fs::symlink_metadata(timers.join("o.timer")).is_ok());
    }
}
