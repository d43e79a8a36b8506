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
//! after a reboot. A drop-in cannot enable a unit (`systemctl enable` reads
//! `[Install]` from the unit file only). istio-vm instead places a drop-in for
//! `multi-user.target` with `Wants=istio.service`: a plain file, so the same
//! plan works live and in an image baked with `--root` (where no systemctl
//! runs), and `uninstall` removes exactly it, leaving alone whatever the
//! administrator enabled. `systemctl is-enabled istio` keeps saying what the
//! administrator did; `systemctl show -p WantedBy istio` lists
//! `multi-user.target`.
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
/// Makes the boot target want the sidecar (see "Starting at boot").
pub const BOOT_DROPIN: &str = "/etc/systemd/system/multi-user.target.d/istio-vm.conf";
/// Periodic verify (package content, `packaging/systemd/`); placed by
/// install as well, so that a copied binary brings them.
pub const VERIFY_SERVICE_NAME: &str = "istio-vm-verify.service";
pub const VERIFY_TIMER_NAME: &str = "istio-vm-verify.timer";
pub const VERIFY_SERVICE: &str = "/etc/systemd/system/istio-vm-verify.service";
pub const VERIFY_TIMER: &str = "/etc/systemd/system/istio-vm-verify.timer";
/// This VM's textfile path and interval (config `textfile`,
/// `verify_interval`).
pub const VERIFY_SERVICE_DROPIN: &str =
    "/etc/systemd/system/istio-vm-verify.service.d/istio-vm.conf";
pub const VERIFY_TIMER_DROPIN: &str = "/etc/systemd/system/istio-vm-verify.timer.d/istio-vm.conf";
/// Enables the timer as a plain file, like [`BOOT_DROPIN`] (works under
/// `--root`; uninstall removes exactly it).
pub const TIMERS_DROPIN: &str = "/etc/systemd/system/timers.target.d/istio-vm.conf";
const VERIFY_SERVICE_UNIT: &str = include_str!("../packaging/systemd/istio-vm-verify.service");
const VERIFY_TIMER_UNIT: &str = include_str!("../packaging/systemd/istio-vm-verify.timer");
/// The agent's directories below /run (in [`layout::PROXY_DIRS`]).
const SECRETS_DIR: &str = "/var/run/secrets";
const TOKENS_DIR: &str = "/var/run/secrets/tokens";

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `false` for `install --no-capture`: no capture unit, and the drop-in
    /// still keeps `istio-start.sh` from installing rules of its own.
    pub capture: bool,
    pub verify: VerifySchedule,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            capture: true,
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

/// Every file istio-vm places for systemd. A live install then runs
/// `systemctl daemon-reload` and (unless `--no-start`) starts [`START`];
/// uninstall removes them, stops the sidecar first and reloads after.
pub fn render(opts: &Options) -> Vec<GeneratedFile> {
    let file = |path, content| GeneratedFile {
        path,
        content,
        mode: 0o644,
    };
    let mut out = Vec::new();
    if opts.capture {
        out.push(file(layout::CAPTURE_UNIT, capture_unit()));
    }
    out.push(file(layout::ISTIO_DROPIN, istio_dropin(opts)));
    out.push(file(BOOT_DROPIN, boot_dropin()));
    out.push(file(VERIFY_SERVICE, VERIFY_SERVICE_UNIT.to_string()));
    out.push(file(VERIFY_TIMER, VERIFY_TIMER_UNIT.to_string()));
    out.push(file(
        VERIFY_SERVICE_DROPIN,
        verify_service_dropin(&opts.verify),
    ));
    out.push(file(VERIFY_TIMER_DROPIN, verify_timer_dropin(&opts.verify)));
    out.push(file(TIMERS_DROPIN, timers_dropin()));
    out.push(file(layout::TMPFILES, tmpfiles()));
    out.push(file(layout::SYSUSERS, sysusers()));
    out
}

/// What a live install starts after `systemctl daemon-reload` (unless
/// `--no-start`): starting the sidecar pulls the capture unit in first
/// (`Requires=`, `After=`).
pub const START: &str = ISTIO_UNIT_NAME;

const HEADER: &str = "# Written by istio-vm; `istio-vm uninstall` removes it. Do not edit:\n\
                      # the next `istio-vm install` puts it back as it was.\n";

/// `istio-vm-capture.service`: owns the traffic capture rules.
pub fn capture_unit() -> String {
    format!(
        "{HEADER}\
[Unit]
Description=istio-vm traffic capture for the Istio sidecar
# The DNS capture rules name the nameservers of /etc/resolv.conf, which DHCP
# writes once the network is up; without a wait-online service this target is
# reached at once.
Wants=network-online.target
After=network-online.target local-fs.target
Before={istio}
# An explicit stop or restart of the sidecar stops (removes the rules) or
# restarts (re-renders them) this unit; a crash of the sidecar does not.
PartOf={istio}

[Service]
Type=oneshot
RemainAfterExit=yes
# A oneshot has no start timeout by default; a netfilter lock held forever
# must not hang the boot.
TimeoutSec=90s
ExecStart={bin} capture apply
ExecStop={bin} capture remove
# No [Install]: started as a dependency of the sidecar, never alone, since
# rules without a running proxy would cut the VM off.
",
        istio = ISTIO_UNIT_NAME,
        bin = ISTIO_VM_BIN,
    )
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

/// `multi-user.target.d/istio-vm.conf`: start the sidecar at boot.
pub fn boot_dropin() -> String {
    format!(
        "{HEADER}\
# Starts Istio's sidecar at boot (it pulls in {cap}). Not
# `systemctl enable`, so that an image baked with --root comes up the same.
[Unit]
Wants={istio}
",
        cap = CAPTURE_UNIT_NAME,
        istio = ISTIO_UNIT_NAME
    )
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

/// `timers.target.d/istio-vm.conf`: start the verify timer at boot.
pub fn timers_dropin() -> String {
    format!(
        "{HEADER}\
# Starts the periodic verify at boot. Not `systemctl enable`, so that an
# image baked with --root comes up the same.
[Unit]
Wants={VERIFY_TIMER_NAME}
"
    )
}

/// `tmpfiles.d/istio-vm.conf`: runtime directories and the token at every
/// boot, and the owners of the placed files at the first boot of an image
/// baked with `install --root` (where istio-proxy did not exist yet).
pub fn tmpfiles() -> String {
    let u = layout::PROXY_USER;
    let mut s = String::from(HEADER);
    s.push_str(
        "# /run is a tmpfs: the token's directory is gone after a reboot, and with it\n\
         # the token (Istio issues #27691, #35343). Put both back from the persistent\n\
         # copy; `C` copies only when the target does not exist.\n",
    );
    for dir in [SECRETS_DIR, TOKENS_DIR] {
        let _ = writeln!(s, "d {} 0755 {u} {u} -", run_path(dir));
    }
    let token = run_path(layout::TOKEN);
    // Owner and mode on the `C` line itself: created root-owned, the file
    // below istio-proxy's directory could not be fixed by a later `z` line
    // (tmpfiles refuses that "unsafe path transition").
    let _ = writeln!(s, "C {token} 0600 {u} {u} - {}", layout::TOKEN_PERSISTENT);
    s.push_str(
        "\n# Owners of the placed directories and files. On an image baked with\n\
         # `istio-vm install --root`, istio-proxy is created by sysusers.d at first\n\
         # boot, just before this runs, and the files are still root's. `Z`, not a\n\
         # `z` per file: tmpfiles refuses to touch a root-owned file below a\n\
         # directory it has just given to istio-proxy (\"unsafe path transition\").\n\
         # Recursive as the install guide's `chown -R`; modes are kept.\n",
    );
    let recursive = recursive_dirs();
    for dir in layout::PROXY_DIRS {
        if dir.starts_with("/var/run/") {
            continue;
        }
        let _ = writeln!(s, "d {dir} 0755 {u} {u} -");
        if recursive.contains(dir) {
            let _ = writeln!(s, "Z {dir} - {u} {u} -");
        }
    }
    for p in layout::PLACEMENTS {
        let covered = recursive
            .iter()
            .any(|d| p.path.strip_prefix(d).is_some_and(|r| r.starts_with('/')));
        if p.path.starts_with("/var/run/") || covered {
            continue;
        }
        let user = match p.owner {
            layout::Owner::IstioProxy => u,
            layout::Owner::Root => "root",
        };
        let _ = writeln!(s, "z {} {:04o} {user} {user} -", p.path, p.mode);
    }
    s
}

/// The persistent proxy directories whose whole content belongs to
/// istio-proxy: every one with no other proxy directory below it (so not
/// `/var/lib/istio`, which also holds Istio's own data).
fn recursive_dirs() -> Vec<&'static str> {
    let persistent: Vec<&str> = layout::PROXY_DIRS
        .iter()
        .copied()
        .filter(|d| !d.starts_with("/var/run/"))
        .collect();
    persistent
        .iter()
        .copied()
        .filter(|d| {
            !persistent
                .iter()
                .any(|o| o.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
        })
        .collect()
}

/// `sysusers.d/istio-vm.conf`: istio-proxy as Istio's postinst creates it
/// (`tools/packaging/postinst.sh`): a system user with a group of the same
/// name, home `/var/lib/istio`, here without a login shell.
pub fn sysusers() -> String {
    format!(
        "{HEADER}u {u} - \"Istio sidecar proxy\" /var/lib/istio /usr/sbin/nologin\n",
        u = layout::PROXY_USER
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
        assert_eq!(values(&u, "Service", "Type"), ["oneshot"]);
        assert_eq!(values(&u, "Service", "RemainAfterExit"), ["yes"]);
        assert_eq!(values(&u, "Service", "TimeoutSec"), ["90s"]);
        assert_eq!(
            values(&u, "Service", "ExecStart"),
            ["/usr/bin/istio-vm capture apply"]
        );
        assert_eq!(
            values(&u, "Service", "ExecStop"),
            ["/usr/bin/istio-vm capture remove"]
        );
        assert_eq!(values(&u, "Unit", "Before"), ["istio.service"]);
        assert_eq!(values(&u, "Unit", "PartOf"), ["istio.service"]);
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
        let opts = Options {
            capture: false,
            ..Options::default()
        };
        let out = render(&opts);
        assert!(out.iter().all(|g| g.path != layout::CAPTURE_UNIT));
        let d = file(&out, layout::ISTIO_DROPIN);
        assert!(values(d, "Unit", "Requires").is_empty());
        assert_eq!(
            values(d, "Service", "Environment"),
            ["ISTIO_CUSTOM_IP_TABLES=true"]
        );
    }

    #[test]
    fn everything_is_0644_and_the_boot_target_wants_the_sidecar() {
        let out = render(&Options::default());
        let paths: Vec<&str> = out.iter().map(|g| g.path).collect();
        assert_eq!(
            paths,
            [
                layout::CAPTURE_UNIT,
                layout::ISTIO_DROPIN,
                BOOT_DROPIN,
                VERIFY_SERVICE,
                VERIFY_TIMER,
                VERIFY_SERVICE_DROPIN,
                VERIFY_TIMER_DROPIN,
                TIMERS_DROPIN,
                layout::TMPFILES,
                layout::SYSUSERS
            ]
        );
        assert!(out.iter().all(|g| g.mode == 0o644));
        let boot = file(&out, BOOT_DROPIN);
        assert_eq!(values(boot, "Unit", "Wants"), [ISTIO_UNIT_NAME]);
        // The capture unit is never wanted by a target of its own.
        assert!(section(file(&out, layout::CAPTURE_UNIT), "Install").is_empty());
    }

    #[test]
    fn verify_timer_runs_the_textfile_verify_at_the_configured_interval() {
        let svc = VERIFY_SERVICE_UNIT;
        assert_eq!(values(svc, "Service", "Type"), ["oneshot"]);
        assert_eq!(
            values(svc, "Service", "ExecStart"),
            [
                "/usr/bin/istio-vm verify --textfile /var/lib/prometheus/node-exporter/istio_vm.prom --output json"
            ]
        );
        assert_eq!(values(svc, "Service", "ProtectSystem"), ["strict"]);
        assert_eq!(values(svc, "Service", "NoNewPrivileges"), ["yes"]);
        let timer = VERIFY_TIMER_UNIT;
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
        assert_eq!(
            values(&timers_dropin(), "Unit", "Wants"),
            [VERIFY_TIMER_NAME]
        );
    }

    #[test]
    fn tmpfiles_restores_the_token_with_owner_and_mode() {
        let t = tmpfiles();
        let lines: Vec<Vec<&str>> = t
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        for l in &lines {
            // type path mode user group age [argument]
            assert!(l.len() == 6 || l.len() == 7, "{l:?}");
            assert!(!l[1].starts_with("/var/run/"), "legacy path {}", l[1]);
        }
        let pos = |ty: &str, path: &str| {
            lines
                .iter()
                .position(|l| l[0] == ty && l[1] == path)
                .unwrap_or_else(|| panic!("no `{ty} {path}` line"))
        };
        let copy = &lines[pos("C", "/run/secrets/tokens/istio-token")];
        assert_eq!(copy[2..5], ["0600", "istio-proxy", "istio-proxy"]);
        assert_eq!(copy[6], layout::TOKEN_PERSISTENT);
        // Parents before children, the copy after its directory.
        assert!(pos("d", "/run/secrets") < pos("d", "/run/secrets/tokens"));
        assert!(pos("d", "/run/secrets/tokens") < pos("C", "/run/secrets/tokens/istio-token"));
        // The baked image's persistent files get their owners at first boot:
        // each through a recursive `Z` on its directory, or a `z` of its own.
        for p in layout::PLACEMENTS {
            if p.path.starts_with("/var/run/") {
                continue;
            }
            let parent = std::path::Path::new(p.path)
                .parent()
                .unwrap()
                .to_str()
                .unwrap();
            let by_dir = lines.iter().any(|l| l[0] == "Z" && l[1] == parent);
            let by_file = lines.iter().any(|l| l[0] == "z" && l[1] == p.path);
            assert!(by_dir != by_file, "{}: Z on its dir xor z", p.path);
            if by_file {
                let l = &lines[pos("z", p.path)];
                assert_eq!(l[2], format!("{:04o}", p.mode));
            }
        }
        for d in layout::PROXY_DIRS {
            pos("d", &run_path(d));
        }
        // Never recursively over Istio's own data.
        assert!(
            lines
                .iter()
                .all(|l| !(l[0] == "Z" && l[1] == "/var/lib/istio"))
        );
    }

    #[test]
    fn sysusers_declares_istio_proxy_like_istios_postinst() {
        let s = sysusers();
        let line = s.lines().find(|l| l.starts_with("u ")).unwrap();
        assert_eq!(
            line,
            "u istio-proxy - \"Istio sidecar proxy\" /var/lib/istio /usr/sbin/nologin"
        );
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
        for g in render(&Options::default()) {
            let name = g.path.trim_start_matches('/').replace('/', "__");
            insta::assert_snapshot!(name, g.content);
        }
        insta::assert_snapshot!(
            "istio_dropin_no_capture",
            istio_dropin(&Options {
                capture: false,
                ..Options::default()
            })
        );
    }
}
