//! systemd unit, drop-in, tmpfiles.d and sysusers.d rendering. Pure: the
//! install planner places what [`render`] returns and, on a live system,
//! runs `systemctl daemon-reload` and starts `istio.service`.
//!
//! # How the pieces fit
//!
//! Istio's `istio-sidecar` package ships `/lib/systemd/system/istio.service`
//! (`tools/packaging/common/istio.service`), which runs `istio-start.sh`. That
//! script installs the iptables rules itself on start and removes them in
//! `ExecStopPost=istio-start.sh clean` — after *every* stop, crashes included,
//! so during the `RestartSec=10` gap before a crash-restart the VM has no rules
//! and its traffic leaves the mesh in plain text (fail-open).
//!
//! istio-vm takes the rules away from the script:
//!
//! - `istio-vm-capture.service` (oneshot, `RemainAfterExit=yes`) applies the
//!   rules (`istio-vm capture apply`, rendered afresh from the placed
//!   cluster.env, `/etc/resolv.conf` and the istio-proxy uid/gid) and removes
//!   them on stop (`istio-vm capture remove`, by state).
//! - The drop-in `istio.service.d/istio-vm.conf` sets
//!   `ISTIO_CUSTOM_IP_TABLES=true`, which makes `istio-start.sh` skip both its
//!   iptables setup and its `clean` (`tools/packaging/common/istio-start.sh`),
//!   and makes `istio.service` require, and start after, the capture unit.
//! - The capture unit is `PartOf=istio.service`: an explicit stop or restart
//!   of `istio.service` is propagated to it.
//!
//! # Capture policy while the sidecar is down
//!
//! - **Crash-restart** (the agent dies, systemd restarts it after
//!   `RestartSec=10`): the rules *stay*. A crash is no job on the capture
//!   unit, so it remains active; connections made during the gap are refused
//!   (redirected to 15001, where nothing listens) instead of leaving the mesh
//!   in plain text (fail-closed). When systemd then restarts `istio.service`,
//!   it propagates the restart to `PartOf=` units: the capture unit's stop and
//!   start re-render the rules from the current cluster.env just before the
//!   agent starts again (they are out for the milliseconds between the two;
//!   `StopPropagatedFrom=` would avoid that, but needs systemd 249, newer than
//!   RHEL 8's or Debian 11's).
//! - **Explicit `systemctl stop istio`**: the stop is propagated, the capture
//!   unit stops and its `ExecStop` removes the rules, so the VM's network works
//!   without the sidecar (what the administrator asked for, and what Istio's
//!   own unit does).
//! - **`systemctl start istio`**: `Requires=` pulls the capture unit in first,
//!   the rules are back before the agent starts. If the rules cannot be
//!   applied, `istio.service` does not start (a sidecar without capture would
//!   silently leave the app's traffic outside the mesh).
//! - **Boot**: `multi-user.target` wants `istio.service` (see below), which
//!   pulls the capture unit in; the capture unit has no `[Install]` of its
//!   own and is never started alone, so a sidecar that is not started never
//!   leaves a VM with rules pointing at a proxy that does not run.
//!
//! The e2e tests (`tests/e2e_*.rs`) check each of these on a booted Debian.
//!
//! # Starting at boot
//!
//! Istio's unit has `[Install] WantedBy=multi-user.target`, but the upstream
//! guide never runs `systemctl enable`, so the sidecar does not come back
//! after a reboot. `istio-vm install` enables it the usual way,
//! `systemctl enable istio.service` (`systemctl --root=DIR enable` for an
//! image baked with `--root`, which works offline), when it onboards (the
//! drop-in below is placed or changes). So `systemctl is-enabled istio` says
//! what it is, and `systemctl disable istio` sticks: a later `install` with
//! the same bundle leaves it disabled. `uninstall` disables it again (the
//! sidecar has no mesh files left to start with).
//!
//! # Package content and per-VM files
//!
//! What is the same on every VM ships in the package under `/usr/lib`
//! ([`SHIPPED`], sources in `packaging/`): the capture unit, the
//! tmpfiles.d and the sysusers.d file (the one definition of istio-proxy,
//! which the maintainer scripts apply). An upgrade of the package replaces
//! them and its postinst reloads systemd: no rerun of `install`.
//! `install` writes only what belongs to this VM: the drop-in for Istio's
//! unit (with or without capture) and its state. A copied binary without the
//! package places the same embedded texts under `/etc` (where the
//! administrator's files go) when `/usr/lib`'s copy is absent
//! ([`Options::packaged`]); uninstall removes them.
//!
//! # Paths under /run
//!
//! Istio's paths say `/var/run/...`; on every systemd distribution
//! `/var/run` is a symlink to `/run`. tmpfiles.d warns about lines below the
//! legacy `/var/run`, so the rendered files use `/run/...`: the same files.

use std::fmt::Write as _;

use crate::layout;

/// Where `istio-vm` itself is installed by the .deb/.rpm.
pub const ISTIO_VM_BIN: &str = "/usr/bin/istio-vm";
pub const ISTIO_UNIT_NAME: &str = "istio.service";
pub const CAPTURE_UNIT_NAME: &str = "istio-vm-capture.service";
/// Periodic verify (package content, `packaging/systemd/`).
pub const VERIFY_SERVICE_NAME: &str = "istio-vm-verify.service";
pub const VERIFY_TIMER_NAME: &str = "istio-vm-verify.timer";
pub const VERIFY_SERVICE: &str = "/usr/lib/systemd/system/istio-vm-verify.service";
pub const VERIFY_TIMER: &str = "/usr/lib/systemd/system/istio-vm-verify.timer";
/// This VM's textfile path and interval (config `textfile`,
/// `verify_interval`).
pub const VERIFY_SERVICE_DROPIN: &str =
    "/etc/systemd/system/istio-vm-verify.service.d/istio-vm.conf";
pub const VERIFY_TIMER_DROPIN: &str = "/etc/systemd/system/istio-vm-verify.timer.d/istio-vm.conf";
/// Puts the capture rules back after a firewall reload or flush (`istio-vm
/// capture watch`), while the sidecar runs (package content).
pub const HEAL_UNIT_NAME: &str = "istio-vm-capture-heal.service";
pub const HEAL_UNIT: &str = "/usr/lib/systemd/system/istio-vm-capture-heal.service";
/// The agent's directories below /run (in [`layout::PROXY_DIRS`]).
const SECRETS_DIR: &str = "/var/run/secrets";
const TOKENS_DIR: &str = "/var/run/secrets/tokens";

/// A file the package ships under `/usr/lib`, embedded so that a copied
/// binary can place it under `/etc` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// Where the package puts it.
    pub path: &'static str,
    /// Where `install` puts it when `path` is absent (no package).
    pub fallback: &'static str,
    pub content: &'static str,
}

/// Every file of `packaging/systemd/`, `packaging/tmpfiles.d/` and
/// `packaging/sysusers.d/` (a test keeps the list complete).
pub const SHIPPED: &[Shipped] = &[
    Shipped {
        path: layout::CAPTURE_UNIT,
        fallback: "/etc/systemd/system/istio-vm-capture.service",
        content: include_str!("../packaging/systemd/istio-vm-capture.service"),
    },
    Shipped {
        path: HEAL_UNIT,
        fallback: "/etc/systemd/system/istio-vm-capture-heal.service",
        content: include_str!("../packaging/systemd/istio-vm-capture-heal.service"),
    },
    Shipped {
        path: VERIFY_SERVICE,
        fallback: "/etc/systemd/system/istio-vm-verify.service",
        content: include_str!("../packaging/systemd/istio-vm-verify.service"),
    },
    Shipped {
        path: VERIFY_TIMER,
        fallback: "/etc/systemd/system/istio-vm-verify.timer",
        content: include_str!("../packaging/systemd/istio-vm-verify.timer"),
    },
    Shipped {
        path: layout::TMPFILES,
        fallback: "/etc/tmpfiles.d/istio-vm.conf",
        content: include_str!("../packaging/tmpfiles.d/istio-vm.conf"),
    },
    Shipped {
        path: layout::SYSUSERS,
        fallback: "/etc/sysusers.d/istio-vm.conf",
        content: include_str!("../packaging/sysusers.d/istio-vm.conf"),
    },
];

/// The `/etc` path a copied binary uses for the package's `path`.
pub fn fallback_path(path: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|s| s.path == path).map(|s| s.fallback)
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `false` for `install --no-capture`: no capture unit, and the drop-in
    /// still keeps `istio-start.sh` from installing rules of its own.
    pub capture: bool,
    /// The package's files are in the root's `/usr/lib` (the capture unit
    /// is there). Without them, `install` places [`SHIPPED`] under `/etc`.
    pub packaged: bool,
    pub verify: VerifySchedule,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            capture: true,
            packaged: true,
            verify: VerifySchedule::default(),
        }
    }
}

/// istio-vm-verify.timer's settings for this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySchedule {
    pub interval: std::time::Duration,
    /// `verify --textfile` path (config `textfile`, checked there).
    pub textfile: String,
}

impl Default for VerifySchedule {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for VerifySchedule {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            interval: c.verify_interval,
            textfile: c.textfile.clone(),
        }
    }
}

/// A file the planner places, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: &'static str,
    pub content: String,
    pub mode: u32,
}

/// Every file `install` places for systemd: the drop-in, and without the
/// package the embedded package files. A live install then runs
/// `systemctl daemon-reload`, enables and (unless `--no-start`) starts
/// [`START`]; uninstall stops and disables the sidecar, removes the files and
/// reloads.
pub fn render(opts: &Options) -> Vec<GeneratedFile> {
    let mut out = Vec::new();
    if !opts.packaged {
        for s in SHIPPED {
            if (s.path == layout::CAPTURE_UNIT || s.path == HEAL_UNIT) && !opts.capture {
                continue;
            }
            out.push(GeneratedFile {
                path: s.fallback,
                content: s.content.to_string(),
                mode: 0o644,
            });
        }
    }
    out.push(GeneratedFile {
        path: layout::ISTIO_DROPIN,
        content: istio_dropin(opts),
        mode: 0o644,
    });
    out.push(GeneratedFile {
        path: layout::TOKEN_TMPFILES,
        content: token_tmpfiles(),
        mode: 0o644,
    });
    out.push(GeneratedFile {
        path: VERIFY_SERVICE_DROPIN,
        content: verify_service_dropin(&opts.verify),
        mode: 0o644,
    });
    out.push(GeneratedFile {
        path: VERIFY_TIMER_DROPIN,
        content: verify_timer_dropin(&opts.verify),
        mode: 0o644,
    });
    out
}

/// `/etc/tmpfiles.d/istio-vm-token.conf`: the token under /run at every
/// boot, and the owners of what install places in Istio's directories. Per
/// VM, not in the package: systemd 247 (Debian 11) fails
/// systemd-tmpfiles-setup on a `C` line whose source does not exist, which
/// it does not on a VM that was never onboarded; and the owner lines touch
/// directories of the istio-sidecar package, so they exist only while this
/// VM is onboarded (uninstall removes the file and restores the owners
/// install's journal recorded).
pub fn token_tmpfiles() -> String {
    let u = layout::PROXY_USER;
    let mut s = format!(
        "{HEADER}\
# /run is a tmpfs: the token is gone after a reboot (Istio issues #27691,
# #35343). Put it back from the persistent copy; `C` copies only when the
# target does not exist. Owner and mode on the line itself; its parents are
# created root's, and the drop-in's ExecStartPre hands them to {u}
# before the agent starts.
C {token} 0600 {u} {u} - {persistent}

# Owners for an image baked with `istio-vm install --root` before {u}
# existed in it (sysusers.d creates the user at first boot, just before
# this runs); on an onboarded VM they are already so. `z` only adjusts what
# exists and never recurses: the sidecar's logs and Istio's own files (its
# sidecar.env) are never walked. tmpfiles refuses a path through a directory
# it has just given to {u} to a file still root's (\"unsafe path
# transition\"), and it applies a directory's line before the lines below it:
# so the files are plain lines, applied first while their directories are
# still root's, and the directories are one-name globs, which tmpfiles
# applies after every plain line and in the order written, deepest first.
",
        token = run_path(layout::TOKEN),
        persistent = layout::TOKEN_PERSISTENT,
    );
    for p in owned_placements() {
        let _ = writeln!(s, "z {} {:04o} {u} {u} -", p.path, p.mode);
    }
    for d in owned_dirs() {
        let _ = writeln!(s, "z {} 0755 {u} {u} -", one_name_glob(d));
    }
    s
}

/// Placed files of istio-proxy outside istio-vm's own state directory (the
/// package's tmpfiles.d covers the token's copy there) and outside /run.
fn owned_placements() -> impl Iterator<Item = &'static layout::Placement> {
    layout::PLACEMENTS.iter().filter(|p| {
        p.owner == layout::Owner::IstioProxy
            && !p.path.starts_with("/var/run/")
            && !p.path.starts_with(&format!("{}/", layout::STATE_DIR))
    })
}

/// The persistent proxy directories, deepest first.
fn owned_dirs() -> Vec<&'static str> {
    let mut dirs: Vec<&str> = layout::PROXY_DIRS
        .iter()
        .copied()
        .filter(|d| !d.starts_with("/var/run/"))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    dirs
}

/// `/var/lib/istio` -> `/var/lib/isti[o]`: the same single path, as a glob.
fn one_name_glob(path: &str) -> String {
    let last = path.chars().last().expect("a path");
    format!("{}[{last}]", &path[..path.len() - last.len_utf8()])
}

/// The package's text of `path` ([`SHIPPED`]).
pub fn shipped(path: &str) -> &'static str {
    SHIPPED
        .iter()
        .find(|s| s.path == path)
        .map(|s| s.content)
        .unwrap_or_else(|| panic!("{path} is not shipped"))
}

/// What a live install starts after `systemctl daemon-reload` (unless
/// `--no-start`): starting the sidecar pulls the capture unit in first
/// (`Requires=`, `After=`).
pub const START: &str = ISTIO_UNIT_NAME;

const HEADER: &str = "# Written by istio-vm; `istio-vm uninstall` removes it. Do not edit:\n\
                      # the next `istio-vm install` puts it back as it was.\n";

/// `istio-vm-capture.service` as the package ships it.
pub fn capture_unit() -> &'static str {
    shipped(layout::CAPTURE_UNIT)
}

/// The drop-in for Istio's own `istio.service`.
pub fn istio_dropin(opts: &Options) -> String {
    let mut s = String::from(HEADER);
    if opts.capture {
        let _ = write!(
            s,
            "\
[Unit]
# The capture unit owns the rules; no sidecar without them.
Requires={cap}
After={cap}

",
            cap = CAPTURE_UNIT_NAME
        );
    }
    let run_secrets = run_path(SECRETS_DIR);
    let run_tokens = run_path(TOKENS_DIR);
    let _ = write!(
        s,
        "\
[Service]
# istio-start.sh neither installs nor cleans iptables rules when this is set
# (tools/packaging/common/istio-start.sh), also not in ExecStopPost after a
# crash: the rules belong to {cap}.
Environment=ISTIO_CUSTOM_IP_TABLES=true
# The agent creates its SDS socket directory below {run_secrets} (Istio issue
# #42603) and reads its token from {run_tokens}; /run is emptied at
# boot and the directories must belong to istio-proxy.
ExecStartPre=+/usr/bin/install -d -o {user} -g {user} -m 0755 {run_secrets} {run_tokens}
",
        cap = CAPTURE_UNIT_NAME,
        user = layout::PROXY_USER,
    );
    s
}

/// `istio-vm-verify.service.d/istio-vm.conf`: this VM's textfile.
pub fn verify_service_dropin(v: &VerifySchedule) -> String {
    let dir = std::path::Path::new(&v.textfile)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/".into());
    format!(
        "{HEADER}\
# From `textfile` in /etc/istio-vm/config.toml.
[Service]
ExecStart=
ExecStart={bin} verify --textfile {path} --output json
ReadWritePaths=-{dir}
",
        bin = ISTIO_VM_BIN,
        path = v.textfile,
    )
}

/// `istio-vm-verify.timer.d/istio-vm.conf`: this VM's interval, and a
/// random delay of a fifth of it (at most the unit's 30 s) so that a short
/// interval stays one.
pub fn verify_timer_dropin(v: &VerifySchedule) -> String {
    let secs = v.interval.as_secs().max(1);
    format!(
        "{HEADER}\
# From `verify_interval` in /etc/istio-vm/config.toml. The empty assignment
# resets every monotonic trigger of the unit (OnBootSec= too), so both follow.
[Timer]
OnUnitActiveSec=
OnBootSec=1min
OnUnitActiveSec={secs}s
RandomizedDelaySec={delay}s
",
        delay = (secs / 5).min(30),
    )
}

/// `/var/run/x` -> `/run/x`; anything else unchanged.
fn run_path(p: &str) -> String {
    match p.strip_prefix("/var/run/") {
        Some(rest) => format!("/run/{rest}"),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn file<'a>(out: &'a [GeneratedFile], path: &str) -> &'a str {
        out.iter()
            .find(|g| g.path == path)
            .map(|g| g.content.as_str())
            .unwrap_or_else(|| panic!("{path} not rendered"))
    }

    /// `key=value` lines of one section of a unit file (no continuation
    /// lines are rendered, so a line is a line).
    fn section<'a>(unit: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
        let mut inside = false;
        let mut out = Vec::new();
        for line in unit.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                inside = line == format!("[{name}]");
                continue;
            }
            if inside && !line.is_empty() && !line.starts_with('#') {
                let (k, v) = line.split_once('=').expect("key=value");
                out.push((k, v));
            }
        }
        out
    }

    fn values<'a>(unit: &'a str, sect: &str, key: &str) -> Vec<&'a str> {
        section(unit, sect)
            .into_iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn capture_unit_is_a_oneshot_owning_the_rules() {
        let u = capture_unit();
        assert_eq!(values(u, "Service", "Type"), ["oneshot"]);
        assert_eq!(values(u, "Service", "RemainAfterExit"), ["yes"]);
        assert_eq!(values(u, "Service", "TimeoutSec"), ["90s"]);
        assert_eq!(
            values(u, "Service", "ExecStart"),
            ["/usr/bin/istio-vm capture apply"]
        );
        assert_eq!(
            values(u, "Service", "ExecStop"),
            ["/usr/bin/istio-vm capture remove"]
        );
        assert_eq!(values(u, "Unit", "Before"), ["istio.service"]);
        assert_eq!(values(u, "Unit", "PartOf"), ["istio.service"]);
        // Never wanted by a target of its own.
        assert!(section(u, "Install").is_empty());
    }

    #[test]
    fn capture_unit_is_sandboxed_to_what_capture_needs() {
        let u = capture_unit();
        let one = |k: &str| {
            let v = values(u, "Service", k);
            assert_eq!(v.len(), 1, "{k}: {v:?}");
            v[0]
        };
        assert_eq!(one("NoNewPrivileges"), "yes");
        assert_eq!(one("ProtectSystem"), "strict");
        assert_eq!(one("ProtectHome"), "yes");
        assert_eq!(one("PrivateTmp"), "yes");
        let caps: BTreeSet<&str> = one("CapabilityBoundingSet").split(' ').collect();
        assert_eq!(
            caps,
            BTreeSet::from(["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"])
        );
        let families: BTreeSet<&str> = one("RestrictAddressFamilies").split(' ').collect();
        assert_eq!(
            families,
            BTreeSet::from(["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"])
        );
        // The scratch namespace of the read-back is a network namespace.
        assert_eq!(one("RestrictNamespaces"), "net");
        // What capture writes stays writable: its records and state, its
        // lock and the xtables lock.
        let rw: Vec<&str> = one("ReadWritePaths").split(' ').collect();
        for p in [layout::CAPTURE_DIR, layout::LOCK_FILE, "/run/xtables.lock"] {
            assert!(
                rw.iter()
                    .any(|d| p == *d || p.starts_with(&format!("{d}/"))),
                "{p} is read-only for the capture unit ({rw:?})"
            );
        }
    }

    #[test]
    fn dropin_hands_the_rules_to_the_capture_unit() {
        let d = istio_dropin(&Options::default());
        assert_eq!(
            values(&d, "Service", "Environment"),
            ["ISTIO_CUSTOM_IP_TABLES=true"]
        );
        assert_eq!(values(&d, "Unit", "Requires"), [CAPTURE_UNIT_NAME]);
        assert_eq!(values(&d, "Unit", "After"), [CAPTURE_UNIT_NAME]);
        let pre = values(&d, "Service", "ExecStartPre");
        assert_eq!(pre.len(), 1);
        assert!(pre[0].starts_with("+/usr/bin/install -d -o istio-proxy -g istio-proxy"));
        assert!(pre[0].ends_with("/run/secrets /run/secrets/tokens"));
        // A drop-in's [Install] is ignored by systemctl enable.
        assert!(section(&d, "Install").is_empty());
    }

    #[test]
    fn no_capture_keeps_istio_away_from_iptables_without_a_capture_unit() {
        for packaged in [true, false] {
            let opts = Options {
                capture: false,
                packaged,
                ..Options::default()
            };
            let out = render(&opts);
            assert!(
                out.iter()
                    .all(|g| g.path != "/etc/systemd/system/istio-vm-capture.service"
                        && g.path != "/etc/systemd/system/istio-vm-capture-heal.service")
            );
            let d = file(&out, layout::ISTIO_DROPIN);
            assert!(values(d, "Unit", "Requires").is_empty());
            assert_eq!(
                values(d, "Service", "Environment"),
                ["ISTIO_CUSTOM_IP_TABLES=true"]
            );
        }
    }

    #[test]
    fn install_writes_only_the_dropin_when_the_package_is_there() {
        let out = render(&Options::default());
        let paths: Vec<&str> = out.iter().map(|g| g.path).collect();
        assert_eq!(
            paths,
            [
                layout::ISTIO_DROPIN,
                layout::TOKEN_TMPFILES,
                VERIFY_SERVICE_DROPIN,
                VERIFY_TIMER_DROPIN
            ]
        );
        // Without the package: the same texts, under /etc.
        let out = render(&Options {
            packaged: false,
            ..Options::default()
        });
        let paths: Vec<&str> = out.iter().map(|g| g.path).collect();
        assert_eq!(
            paths,
            [
                "/etc/systemd/system/istio-vm-capture.service",
                "/etc/systemd/system/istio-vm-capture-heal.service",
                "/etc/systemd/system/istio-vm-verify.service",
                "/etc/systemd/system/istio-vm-verify.timer",
                "/etc/tmpfiles.d/istio-vm.conf",
                "/etc/sysusers.d/istio-vm.conf",
                layout::ISTIO_DROPIN,
                layout::TOKEN_TMPFILES,
                VERIFY_SERVICE_DROPIN,
                VERIFY_TIMER_DROPIN,
            ]
        );
        for s in SHIPPED {
            assert_eq!(file(&out, s.fallback), s.content);
            // Same file name: the /etc copy is what systemd would take
            // over the package's (and it is only placed without one).
            assert_eq!(
                Path::new(s.fallback).file_name(),
                Path::new(s.path).file_name()
            );
            assert!(s.path.starts_with("/usr/lib/") && s.fallback.starts_with("/etc/"));
        }
        assert!(out.iter().all(|g| g.mode == 0o644));
        assert_eq!(
            fallback_path(layout::SYSUSERS),
            Some("/etc/sysusers.d/istio-vm.conf")
        );
        assert_eq!(fallback_path("/etc/hosts"), None);
    }

    /// Every file under packaging/{systemd,tmpfiles.d,sysusers.d} is
    /// embedded (so a copied binary can place it) and shipped where
    /// [`SHIPPED`] says.
    #[test]
    fn verify_timer_runs_the_textfile_verify_at_the_configured_interval() {
        let svc = shipped(VERIFY_SERVICE);
        assert_eq!(values(svc, "Service", "Type"), ["oneshot"]);
        assert_eq!(
            values(svc, "Service", "ExecStart"),
            [
                "/usr/bin/istio-vm verify --textfile /var/lib/prometheus/node-exporter/istio_vm.prom --output json"
            ]
        );
        assert_eq!(values(svc, "Service", "ProtectSystem"), ["strict"]);
        assert_eq!(values(svc, "Service", "NoNewPrivileges"), ["yes"]);
        let timer = shipped(VERIFY_TIMER);
        assert_eq!(values(timer, "Timer", "OnBootSec"), ["1min"]);
        assert_eq!(values(timer, "Timer", "OnUnitActiveSec"), ["5min"]);
        assert!(!values(timer, "Timer", "RandomizedDelaySec").is_empty());
        assert_eq!(values(timer, "Install", "WantedBy"), ["timers.target"]);

        let v = VerifySchedule {
            interval: std::time::Duration::from_secs(20),
            textfile: "/var/lib/node_exporter/textfile/istio_vm.prom".into(),
        };
        let d = verify_timer_dropin(&v);
        // The empty assignment resets the unit's list of triggers (all of
        // them), so the boot trigger is stated again.
        assert_eq!(values(&d, "Timer", "OnUnitActiveSec"), ["", "20s"]);
        assert_eq!(
            values(&d, "Timer", "OnBootSec"),
            values(timer, "Timer", "OnBootSec")
        );
        assert_eq!(values(&d, "Timer", "RandomizedDelaySec"), ["4s"]);
        assert_eq!(
            values(
                &verify_timer_dropin(&VerifySchedule::default()),
                "Timer",
                "RandomizedDelaySec"
            ),
            ["30s"]
        );
        let d = verify_service_dropin(&v);
        assert_eq!(
            values(&d, "Service", "ExecStart"),
            [
                "",
                "/usr/bin/istio-vm verify --textfile /var/lib/node_exporter/textfile/istio_vm.prom --output json"
            ]
        );
        assert_eq!(
            values(&d, "Service", "ReadWritePaths"),
            ["-/var/lib/node_exporter/textfile"]
        );
    }

    #[test]
    fn every_packaging_file_is_embedded() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = BTreeSet::new();
        for (dir, dest) in [
            ("packaging/systemd", "/usr/lib/systemd/system"),
            ("packaging/tmpfiles.d", "/usr/lib/tmpfiles.d"),
            ("packaging/sysusers.d", "/usr/lib/sysusers.d"),
        ] {
            for e in std::fs::read_dir(repo.join(dir)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(e.path()).unwrap();
                let path = format!("{dest}/{name}");
                let s = SHIPPED
                    .iter()
                    .find(|s| s.path == path)
                    .unwrap_or_else(|| panic!("{dir}/{name} is not in units::SHIPPED"));
                assert_eq!(s.content, text, "{path}");
                on_disk.insert(path);
            }
        }
        let embedded: BTreeSet<String> = SHIPPED.iter().map(|s| s.path.to_string()).collect();
        assert_eq!(embedded, on_disk);
    }

    fn tmpfiles_lines(text: &str) -> Vec<Vec<&str>> {
        let lines: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        for l in &lines {
            // type path mode user group age [argument]
            assert!(l.len() == 6 || l.len() == 7, "{l:?}");
            assert!(!l[1].starts_with("/var/run/"), "legacy path {}", l[1]);
        }
        lines
    }

    #[test]
    fn package_tmpfiles_only_adjusts_istio_vms_own_paths() {
        let lines = tmpfiles_lines(shipped(layout::TMPFILES));
        assert!(!lines.is_empty());
        for l in lines {
            assert_eq!(l[0], "z", "{l:?}");
            assert!(
                l[1].starts_with(&format!("{}/", layout::STATE_DIR)),
                "package content adjusts {}, which is not istio-vm's",
                l[1]
            );
        }
    }

    #[test]
    fn token_tmpfiles_restores_the_token_with_owner_and_mode() {
        let text = token_tmpfiles();
        let lines = tmpfiles_lines(&text);
        let copy: Vec<_> = lines.iter().filter(|l| l[0] == "C").collect();
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0][1], run_path(layout::TOKEN));
        assert_eq!(copy[0][2..5], ["0600", "istio-proxy", "istio-proxy"]);
        assert_eq!(copy[0][6], layout::TOKEN_PERSISTENT);
    }

    /// `/var/lib/isti[o]` -> `/var/lib/istio`.
    fn unglob(p: &str) -> String {
        p.replace(['[', ']'], "")
    }

    #[test]
    fn one_name_glob_names_the_one_path() {
        assert_eq!(one_name_glob("/var/lib/istio"), "/var/lib/isti[o]");
        assert_eq!(unglob(&one_name_glob("/etc/certs")), "/etc/certs");
    }

    #[test]
    fn tmpfiles_gives_the_baked_files_their_owners_without_walking_anything() {
        let per_vm = token_tmpfiles();
        let mut lines = tmpfiles_lines(shipped(layout::TMPFILES));
        lines.extend(tmpfiles_lines(&per_vm));
        let owners: Vec<&Vec<&str>> = lines.iter().filter(|l| l[0] != "C").collect();
        // Never recursive: not over what grows (logs, Envoy's files), not
        // over Istio's own files (sidecar.env) or the administrator's.
        for l in &owners {
            assert_eq!(l[0], "z", "{l:?}");
            assert_eq!(l[3..5], ["istio-proxy", "istio-proxy"], "{l:?}");
        }
        // Each persistent placed file of istio-proxy: a plain line of its
        // own, with its mode.
        for p in layout::PLACEMENTS {
            if p.path.starts_with("/var/run/") || p.owner != layout::Owner::IstioProxy {
                continue;
            }
            let l = owners
                .iter()
                .find(|l| l[1] == p.path)
                .unwrap_or_else(|| panic!("no owner line for {}", p.path));
            assert_eq!(l[2], format!("{:04o}", p.mode));
        }
        // Each persistent proxy directory: a one-name glob (applied after
        // every plain line), deepest first.
        let dirs: Vec<String> = owners
            .iter()
            .filter(|l| l[1].contains('['))
            .map(|l| unglob(l[1]))
            .collect();
        let want: BTreeSet<String> = layout::PROXY_DIRS
            .iter()
            .filter(|d| !d.starts_with("/var/run/"))
            .map(|d| d.to_string())
            .collect();
        assert_eq!(dirs.iter().cloned().collect::<BTreeSet<_>>(), want);
        for (i, d) in dirs.iter().enumerate() {
            for later in &dirs[i + 1..] {
                assert!(!later.starts_with(&format!("{d}/")), "{d} before {later}");
            }
        }
        // Nothing else: every owner line is a placed file or a proxy dir.
        for l in &owners {
            let p = unglob(l[1]);
            assert!(
                want.contains(&p) || layout::PLACEMENTS.iter().any(|x| x.path == p),
                "owner line for {p}, which install does not place"
            );
        }
    }

    #[test]
    fn sysusers_declares_istio_proxy_like_istios_postinst() {
        let s = shipped(layout::SYSUSERS);
        let users: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            users,
            ["u istio-proxy - \"Istio sidecar proxy\" /var/lib/istio /usr/sbin/nologin"]
        );
    }

    /// The maintainer scripts take istio-proxy from the sysusers.d file
    /// (with systemd-sysusers, or its fields when that is absent): no second
    /// definition to drift.
    #[test]
    fn maintainer_scripts_apply_the_one_definition() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let postinst = std::fs::read_to_string(repo.join("debian/postinst")).unwrap();
        let spec = std::fs::read_to_string(repo.join("rpm/istio-vm.spec")).unwrap();
        for (name, text) in [("debian/postinst", &postinst), ("rpm/istio-vm.spec", &spec)] {
            assert!(text.contains("systemd-sysusers"), "{name}");
            assert!(
                !text.contains("Istio sidecar proxy"),
                "{name} repeats the GECOS"
            );
            assert!(!text.contains("/var/lib/istio "), "{name} repeats the home");
            assert!(!text.contains("--shell /"), "{name} repeats the shell");
        }
        assert!(postinst.contains(layout::SYSUSERS));
        assert!(spec.contains("packaging/sysusers.d/istio-vm.conf"));
    }

    #[test]
    fn runtime_dirs_are_the_layouts() {
        assert!(layout::PROXY_DIRS.contains(&SECRETS_DIR));
        assert!(layout::PROXY_DIRS.contains(&TOKENS_DIR));
        assert_eq!(
            std::path::Path::new(layout::TOKEN).parent().unwrap(),
            std::path::Path::new(TOKENS_DIR)
        );
    }

    #[test]
    fn run_path_maps_only_var_run() {
        assert_eq!(run_path("/var/run/secrets"), "/run/secrets");
        assert_eq!(run_path("/var/lib/istio"), "/var/lib/istio");
        assert_eq!(run_path("/var/runner"), "/var/runner");
    }

    #[test]
    fn snapshots() {
        insta::assert_snapshot!(
            "etc__systemd__system__istio.service.d__istio-vm.conf",
            istio_dropin(&Options::default())
        );
        insta::assert_snapshot!(
            "istio_dropin_no_capture",
            istio_dropin(&Options {
                capture: false,
                packaged: true,
                ..Options::default()
            })
        );
        insta::assert_snapshot!("etc__tmpfiles.d__istio-vm-token.conf", token_tmpfiles());
        let v = VerifySchedule::default();
        insta::assert_snapshot!(
            "etc__systemd__system__istio-vm-verify.service.d__istio-vm.conf",
            verify_service_dropin(&v)
        );
        insta::assert_snapshot!(
            "etc__systemd__system__istio-vm-verify.timer.d__istio-vm.conf",
            verify_timer_dropin(&v)
        );
    }
}
