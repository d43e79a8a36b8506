//! istio-vm on a booted Debian with systemd (scripts/e2e, tests/common/e2e.rs):
//! install, reboot, the capture policy around `istio.service`, uninstall, and
//! an image baked with `install --root` booting for the first time.
//!
//! istio-vm is copied in as a bare binary (no package), so install places
//! the package's units under /etc itself ([`units::Options::packaged`]); the
//! package's own life on Debian 11, 12 and 13 is tests/packaging_e2e.rs.
//!
//! Istio itself cannot be installed here: the sidecar is the stand-in
//! `istio-sidecar` package of scripts/e2e/build-stand-in-deb.sh (Istio's unit,
//! start script and postinst layout, a test agent in place of pilot-agent).

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/pinned.rs"]
mod pinned;

use std::path::Path;
use std::time::Duration;

use e2e::Vm;
use istio_vm::{layout, units};

const BUNDLE: &str = "/root/bundle";
const SIDECAR_DEB: &str = "/root/istio-sidecar.deb";

/// A fresh container tree with istio-vm at /usr/bin/istio-vm (as the .deb
/// puts it), the example bundle and the stand-in sidecar package in /root.
fn prepare(tag: &str) -> Vm {
    let vm = Vm::new(tag);
    e2e::put(
        &vm,
        Path::new(env!("CARGO_BIN_EXE_istio-vm")),
        units::ISTIO_VM_BIN,
        0o755,
    );
    let bundle = e2e::repo().join("examples/bundle");
    for e in std::fs::read_dir(&bundle).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mode = if name == "istio-token" { 0o600 } else { 0o644 };
        e2e::put(&vm, &e.path(), &format!("{BUNDLE}/{name}"), mode);
    }
    let deb = e2e::stand_in_deb(vm.work_dir());
    e2e::put(&vm, &deb, SIDECAR_DEB, 0o644);
    vm
}

/// What install places on this copied-binary tree.
fn placed_units() -> Vec<units::GeneratedFile> {
    units::render(&units::Options {
        packaged: false,
        ..units::Options::default()
    })
}

/// Every table's rules, as the container's own netfilter has them.
fn rules(vm: &Vm) -> String {
    vm.ok("iptables-save; ip6tables-save")
}

fn istio_lines(rules: &str) -> Vec<&str> {
    rules.lines().filter(|l| l.contains("ISTIO_")).collect()
}

fn proxy_uid(vm: &Vm) -> String {
    vm.ok("id -u istio-proxy").trim().to_string()
}

/// The state a successful install promises, checked inside the container.
fn assert_onboarded(vm: &Vm) {
    vm.wait_until(
        "istio-vm-capture and istio are active",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture istio",
    );
    let uid = proxy_uid(vm);
    let r = rules(vm);
    for (chain, target) in [("OUTPUT", "ISTIO_OUTPUT"), ("PREROUTING", "ISTIO_INBOUND")] {
        assert!(
            r.lines()
                .any(|l| l.starts_with(&format!("-A {chain} "))
                    && l.ends_with(&format!("-j {target}"))),
            "no jump from {chain} to {target}:\n{r}"
        );
    }
    for want in [
        "--to-ports 15001".to_string(),
        "--to-ports 15006".into(),
        // DNS capture (ISTIO_META_DNS_CAPTURE=true) of resolv.conf's server.
        "--to-ports 15053".into(),
        "203.0.113.53".into(),
        // The proxy's own traffic is left alone, by its uid on this machine.
        format!("--uid-owner {uid}"),
    ] {
        assert!(r.contains(&want), "no `{want}` in the rules:\n{r}");
    }
    assert!(
        !r.contains("istio-start.sh stand-in"),
        "istio-start.sh touched netfilter although ISTIO_CUSTOM_IP_TABLES=true:\n{r}"
    );

    // Every placed path's owner and mode as docs/DESIGN.md's table, written
    // out in tests/common/pinned.rs (not taken from layout.rs).
    let paths: Vec<&str> = pinned::PINNED.iter().map(|(p, ..)| *p).collect();
    let got = vm.ok(&format!(
        "for p in {}; do stat -c \"%n %U %G %a %F\" \"$p\"; done",
        paths.join(" ")
    ));
    let want: Vec<String> = pinned::PINNED
        .iter()
        .map(|(p, k, o, m)| format!("{p} {}", pinned::stat_line(*k, o, *m)))
        .collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    // The package's units, placed under /etc by the copied binary.
    for g in placed_units() {
        let got = vm.ok(&format!("stat -c '%U %G %a' {}", g.path));
        assert_eq!(got.trim(), "root root 644", "{}", g.path);
    }
    // The agent can read its token (0600, its own), as the agent's user.
    vm.ok(&format!(
        "setpriv --reuid istio-proxy --regid istio-proxy --clear-groups head -c1 {} >/dev/null",
        layout::TOKEN
    ));
    let hosts = vm.ok("cat /etc/hosts");
    assert!(
        hosts.contains(&format!(
            "{}\n203.0.113.10 istiod.istio-system.svc\n{}\n",
            layout::HOSTS_BEGIN,
            layout::HOSTS_END
        )),
        "/etc/hosts:\n{hosts}"
    );
    // The sidecar runs as istio-proxy and is ready (the stand-in agent is
    // ready only with the root cert, token and cluster.env in place).
    vm.wait_until(
        "the agent runs as istio-proxy",
        Duration::from_secs(20),
        AGENT_USER,
    );
    vm.wait_until("the agent is ready", Duration::from_secs(20), AGENT_READY);
}

const AGENT_USER: &str = "u=; for d in /proc/[0-9]*; do \
    [ \"$(cat $d/comm 2>/dev/null)\" = stand-in-agent ] && u=$(stat -c %U $d); done; \
    [ \"$u\" = istio-proxy ]";

const AGENT_READY: &str = "exec 3<>/dev/tcp/127.0.0.1/15021 && \
    printf 'GET /healthz/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '";

/// Owner, mode and content digest of each path, or `absent`.
fn snapshot(vm: &Vm, paths: &[&str]) -> String {
    let mut script = String::from(
        "for p in \"$@\"; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then \
         printf '%s %s %s\\n' \"$p\" \"$(stat -c '%F %U %G %a' \"$p\")\" \
         \"$( [ -f \"$p\" ] && sha256sum < \"$p\" | cut -c1-16)\"; \
         else echo \"$p absent\"; fi; done",
    );
    script = format!("set -- {}; {script}", paths.join(" "));
    vm.ok(&script)
}

fn watched_paths() -> Vec<&'static str> {
    let mut v: Vec<&str> = layout::PLACEMENTS.iter().map(|p| p.path).collect();
    v.extend(placed_units().iter().map(|g| g.path));
    v.push(layout::ETC_HOSTS);
    v
}

/// The example's token with a later `iat`: a new token for the same
/// workload (its signature is not checked on the VM).
fn rotated_token() -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tok = std::fs::read_to_string(e2e::repo().join("examples/bundle/istio-token")).unwrap();
    let parts: Vec<&str> = tok.trim().split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&e.decode(parts[1]).unwrap()).unwrap();
    claims["iat"] = serde_json::json!(claims["iat"].as_i64().unwrap() + 3600);
    let payload = e.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn install(vm: &Vm, extra: &str) -> serde_json::Value {
    let out = vm.ok(&format!(
        "istio-vm install --bundle {BUNDLE} --output json {extra}"
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("install printed no JSON ({e}):\n{out}"))
}

#[test]
fn install_survives_a_reboot_and_uninstall_restores_everything() {
    let mut vm = prepare("life");
    vm.boot();
    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    let before = snapshot(&vm, &watched_paths());
    let rules_before = rules(&vm);

    let r = install(&vm, "");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["changed"], true, "{r}");
    assert_onboarded(&vm);
    assert_eq!(vm.ok("systemctl is-enabled istio").trim(), "enabled");

    // The units as written pass systemd's own checker, with Istio's unit and
    // its drop-in, and the boot target with ours.
    let verify = vm.sh(
        "systemd-analyze verify --man=no /etc/systemd/system/istio-vm-capture.service \
         /lib/systemd/system/istio.service multi-user.target 2>&1",
    );
    assert!(
        verify.status.success() && verify.stdout.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // A second run changes nothing, live services included.
    let capture_since =
        vm.ok("systemctl show -p ActiveEnterTimestampMonotonic --value istio-vm-capture");
    let r = install(&vm, "");
    assert_eq!(r["changed"], false, "{r}");
    assert_eq!(
        vm.ok("systemctl show -p ActiveEnterTimestampMonotonic --value istio-vm-capture"),
        capture_since
    );

    // A new token alone: only the token files change; the running agent
    // re-reads it, so neither it nor the capture is restarted.
    let agent_pid = vm.ok("systemctl show -p MainPID --value istio");
    vm.ok(&format!("cp -a {BUNDLE} {BUNDLE}2"));
    std::fs::write(vm.path(&format!("{BUNDLE}2/istio-token")), rotated_token()).unwrap();
    let r: serde_json::Value = serde_json::from_str(&vm.ok(&format!(
        "istio-vm install --bundle {BUNDLE}2 --output json"
    )))
    .expect("JSON");
    let mut changed: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "changed")
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            format!("file:{}", layout::TOKEN_PERSISTENT),
            format!("file:{}", layout::TOKEN)
        ],
        "{r}"
    );
    assert_eq!(vm.ok("systemctl show -p MainPID --value istio"), agent_pid);
    assert_eq!(
        vm.ok("systemctl show -p ActiveEnterTimestampMonotonic --value istio-vm-capture"),
        capture_since
    );

    // Reboot: /run is empty again. Nothing is run by hand afterwards.
    vm.reboot();
    assert_onboarded(&vm);
    // The token under /run is the rotated one, from its persistent copy.
    assert_eq!(
        std::fs::read_to_string(vm.path(layout::TOKEN_PERSISTENT)).unwrap(),
        rotated_token()
    );
    assert_eq!(
        vm.ok(&format!(
            "cmp {} {} && echo same",
            layout::TOKEN_PERSISTENT,
            layout::TOKEN
        ))
        .trim(),
        "same"
    );

    let r: serde_json::Value =
        serde_json::from_str(&vm.ok("istio-vm uninstall --output json")).expect("JSON");
    assert_eq!(r["ok"], true, "{r}");
    vm.wait_until(
        "istio and its capture are stopped",
        Duration::from_secs(30),
        "[ \"$(systemctl show -p ActiveState --value istio)\" = inactive ] && \
         [ \"$(systemctl show -p ActiveState --value istio-vm-capture)\" = inactive ]",
    );
    assert_eq!(istio_lines(&rules(&vm)), istio_lines(&rules_before));
    assert_eq!(snapshot(&vm, &watched_paths()), before);
    let state = vm.sh("systemctl show -p LoadState --value istio-vm-capture");
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "not-found");

    // And nothing of it comes back at the next boot.
    vm.reboot();
    assert!(!vm.sh("systemctl is-active -q istio").status.success());
    assert!(istio_lines(&rules(&vm)).is_empty(), "{}", rules(&vm));
}

#[test]
fn capture_follows_explicit_stops_but_stays_through_a_crash() {
    let mut vm = prepare("policy");
    vm.boot();
    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    install(&vm, "");
    assert_onboarded(&vm);
    let applied = istio_lines(&rules(&vm))
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();

    // An explicit stop of the sidecar takes the rules out with it.
    vm.ok("systemctl stop istio");
    vm.wait_until(
        "the capture unit stops with istio",
        Duration::from_secs(20),
        "[ \"$(systemctl show -p ActiveState --value istio-vm-capture)\" = inactive ]",
    );
    assert!(
        istio_lines(&rules(&vm)).is_empty(),
        "{}\n{}",
        rules(&vm),
        vm.ok("journalctl -u istio-vm-capture --no-pager | tail -n 20")
    );

    // Starting it puts them back first.
    let started = vm.sh("systemctl start istio");
    assert!(
        started.status.success(),
        "systemctl start istio failed:\n{}",
        vm.ok("systemctl status --no-pager -l istio istio-vm-capture; journalctl -b --no-pager -u istio -u istio-vm-capture | tail -n 60; true")
    );
    assert_onboarded(&vm);
    assert_eq!(istio_lines(&rules(&vm)), applied);

    // A crash: systemd waits RestartSec=10 before restarting. The rules stay
    // for the whole gap (fail-closed), the capture unit stays active.
    let capture_since = || {
        vm.ok("systemctl show -p ActiveEnterTimestampMonotonic --value istio-vm-capture")
            .trim()
            .to_string()
    };
    let before_crash = capture_since();
    // The agent dies (not a stop): its parent, the unit's main process,
    // exits with it.
    vm.kill_process("stand-in-agent");
    vm.wait_until(
        "istio.service waits to restart",
        Duration::from_secs(5),
        "[ \"$(systemctl show -p SubState --value istio)\" = auto-restart ]",
    );
    // Probe the whole gap: rules first, then the states. While the capture
    // unit is still the same active instance afterwards, its ExecStop had not
    // begun when the rules were read, so they must all be there.
    let mut probes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = vm.ok("iptables-save; ip6tables-save; echo '=== states'; \
             systemctl show -p ActiveState --value istio-vm-capture; \
             systemctl show -p ActiveEnterTimestampMonotonic --value istio-vm-capture; \
             systemctl show -p SubState --value istio");
        let (rules_now, states) = out.split_once("=== states\n").unwrap();
        let st: Vec<&str> = states.lines().collect();
        let same_capture = st[0] == "active" && st[1] == before_crash;
        if !(same_capture && st[2] == "auto-restart") {
            break;
        }
        assert_eq!(istio_lines(rules_now), applied, "rules gone during the gap");
        probes += 1;
        assert!(std::time::Instant::now() < deadline, "no restart in 30 s");
    }
    assert!(probes >= 5, "only {probes} probes in the restart gap");
    eprintln!(
        "{}: rules present at each of {probes} probes in the restart gap",
        vm.name
    );
    vm.wait_until(
        "istio.service restarted by systemd",
        Duration::from_secs(20),
        "[ \"$(systemctl show -p SubState --value istio)\" = running ]",
    );
    assert_onboarded(&vm);
    assert_eq!(istio_lines(&rules(&vm)), applied);
    // At the restart the capture unit was restarted with it (PartOf=): the
    // rules were rendered afresh for the new agent.
    assert_ne!(capture_since(), before_crash);

    // A restart keeps the sidecar captured.
    vm.ok("systemctl restart istio");
    assert_onboarded(&vm);
    assert_eq!(istio_lines(&rules(&vm)), applied);
}

#[test]
fn an_image_baked_with_root_comes_up_onboarded_at_first_boot() {
    let mut vm = prepare("baked");
    // The image builder unpacks the sidecar package without running its
    // postinst, so the image has no istio-proxy user yet.
    let st = std::process::Command::new("dpkg")
        .arg(format!("--root={}", vm.root().display()))
        .arg("--unpack")
        .arg(vm.path(SIDECAR_DEB))
        .output()
        .expect("running dpkg --root");
    assert!(
        st.status.success(),
        "dpkg --unpack into the image failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let passwd = std::fs::read_to_string(vm.path("/etc/passwd")).unwrap();
    assert!(
        !passwd.contains("istio-proxy"),
        "the image already has istio-proxy"
    );

    // istio-vm install from outside, into the image tree.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_istio-vm"))
        .arg("--root")
        .arg(vm.root())
        .args(["install", "--output", "json", "--bundle"])
        .arg(e2e::repo().join("examples/bundle"))
        .output()
        .expect("running istio-vm install --root");
    assert!(
        out.status.success(),
        "install --root failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No user database was touched: the user comes at first boot.
    assert_eq!(
        std::fs::read_to_string(vm.path("/etc/passwd")).unwrap(),
        passwd
    );

    vm.boot();
    // sysusers.d made the user, tmpfiles.d the token and the owners; the boot
    // target started the sidecar and with it the capture.
    let pw = vm.ok("getent passwd istio-proxy");
    let f: Vec<&str> = pw.trim().split(':').collect();
    assert_eq!(f[5], "/var/lib/istio", "{pw}");
    assert_eq!(f[6], "/usr/sbin/nologin", "{pw}");
    assert_onboarded(&vm);
    // tmpfiles.d and sysusers.d applied every line without a complaint (a
    // refused "unsafe path transition" is only a warning in the journal).
    let complaints = vm.ok("journalctl -b -p warning --no-pager -o cat \
         -u systemd-tmpfiles-setup -u systemd-sysusers");
    assert!(complaints.trim().is_empty(), "{complaints}");
}

#[test]
fn no_start_places_the_units_and_starts_nothing() {
    let mut vm = prepare("nostart");
    vm.boot();
    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    let r = install(&vm, "--no-start");
    assert_eq!(r["ok"], true, "{r}");
    // systemd has read the units (daemon-reload ran) ...
    let dropins = vm.ok("systemctl show -p DropInPaths --value istio");
    assert!(dropins.contains(layout::ISTIO_DROPIN), "{dropins}");
    let wanted = vm.ok("systemctl show -p WantedBy --value istio");
    assert!(wanted.contains("multi-user.target"), "{wanted}");
    // ... but nothing runs, and no rules are in.
    for unit in ["istio", "istio-vm-capture"] {
        let state = vm.ok(&format!("systemctl show -p ActiveState --value {unit}"));
        assert_eq!(state.trim(), "inactive", "{unit}");
    }
    assert!(istio_lines(&rules(&vm)).is_empty(), "{}", rules(&vm));
    // Starting the sidecar by hand brings up everything.
    vm.ok("systemctl start istio");
    assert_onboarded(&vm);
}
