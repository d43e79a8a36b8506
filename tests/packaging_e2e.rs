//! The real .deb on a booted Debian 11, 12 and 13 (the e2e harness,
//! tests/common/e2e.rs, one test per release, run side by side): `dpkg -i`,
//! `istio-vm install`, real packets through the capture rules (that
//! release's iptables and systemd), a reboot, `systemctl disable`/`enable`,
//! an upgrade to a package whose capture unit differs (in effect at once, no
//! rerun of install, the sidecar and its rules keep running, the heal
//! watcher restarts once onto the new binary) and that keeps a locally
//! edited conffile, `dpkg -r` that restores the VM through prerm, and
//! `dpkg -P` after which nothing of ours is left.
//!
//! The sidecar is the e2e harness's stand-in `istio-sidecar` package (Istio's
//! unit, start script and postinst layout; no real Envoy can be installed
//! here), installed first as on a VM prepared by Istio's own instructions.

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/pkg.rs"]
mod pkg;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::Vm;
use istio_vm::layout;

const BUNDLE: &str = "/root/bundle";
const DEB: &str = "/root/istio-vm.deb";
const DEB_REV2: &str = "/root/istio-vm-rev2.deb";
const SIDECAR_DEB: &str = "/root/istio-sidecar.deb";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything our package or `istio-vm install` may touch, one line per
/// path (type, mode, owner, size, content digest), sorted. Package manager
/// databases and systemd's own runtime state are left out, and so are the
/// sidecar's logs (/var/log/istio/*.log): istio.service writes them while it
/// runs, they belong to the istio-sidecar package.
const SNAPSHOT: &str = r#"
set -e
roots="/etc /usr /opt /var/lib /run/secrets"
for r in $roots; do [ -e "$r" ] && echo "$r"; done | while read -r r; do
    find "$r" -xdev \( -path /var/lib/dpkg -o -path /var/lib/systemd \
        -o -path /var/lib/apt -o -path /etc/ld.so.cache \) -prune -o -print0 |
    while IFS= read -r -d '' p; do
        # Size and digest of regular files only: a directory's size is the
        # filesystem's business (ext4 directories never shrink after a
        # package added and removed entries).
        if [ -f "$p" ] && [ ! -L "$p" ]; then
            sum="$(stat -c %s "$p") $(sha256sum "$p" | cut -c1-16)"
        else
            sum=-
        fi
        printf '%s %s\n' "$(stat -c '%n %F %a %U %G' "$p")" "$sum"
    done
done | sort
"#;

/// Every netfilter rule, user chain and non-ACCEPT policy, IPv4 and IPv6.
/// A table that only holds empty built-in chains (iptables-nft creates one on
/// first use and leaves it) filters nothing, the same as no table.
const RULES: &str =
    "{ iptables-save; ip6tables-save; } | grep -E '^-|^:[^ ]+ (-|DROP|REJECT) ' || true";

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_string).collect()
}

/// Paths of the snapshot lines that differ (in either direction).
fn changed_paths(before: &str, after: &str) -> BTreeSet<String> {
    let (b, a) = (lines(before), lines(after));
    b.symmetric_difference(&a)
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// The rev2 package with a capture unit that differs from rev1's (its
/// Description), as an upgrade that fixes a unit would bring.
fn rev2_with_changed_unit(dir: &std::path::Path) -> std::path::PathBuf {
    let p = pkg::amd64();
    let tree = dir.join("rev2-tree");
    let _ = std::fs::remove_dir_all(&tree);
    pkg::run(
        std::process::Command::new("dpkg-deb")
            .arg("-R")
            .arg(&p.deb_rev2)
            .arg(&tree),
    );
    let unit = tree.join("usr/lib/systemd/system/istio-vm-capture.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let changed = text.replace(
        &format!("Description={CAPTURE_DESCRIPTION}\n"),
        &format!("Description={CAPTURE_DESCRIPTION_REV2}\n"),
    );
    assert_ne!(changed, text, "no Description line in the unit");
    std::fs::write(&unit, changed).unwrap();
    pkg::run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find usr etc -type f -exec md5sum {} + > DEBIAN/md5sums")
            .arg("sh")
            .arg(&tree),
    );
    let out = dir.join("istio-vm-rev2-changed-unit.deb");
    pkg::run(
        std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out),
    );
    out
}

const CAPTURE_DESCRIPTION: &str = "istio-vm traffic capture for the Istio sidecar";
const CAPTURE_DESCRIPTION_REV2: &str = "istio-vm traffic capture for the Istio sidecar (rev 2)";

fn prepare(suite: &str) -> Vm {
    let p = pkg::amd64();
    let vm = Vm::of_suite(&format!("pkg-{suite}"), suite);
    e2e::put(&vm, &p.deb, DEB, 0o644);
    e2e::put(&vm, &rev2_with_changed_unit(vm.work_dir()), DEB_REV2, 0o644);
    let bundle = e2e::repo().join("examples/bundle");
    for e in std::fs::read_dir(&bundle).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mode = if name == "istio-token" { 0o600 } else { 0o644 };
        e2e::put(&vm, &e.path(), &format!("{BUNDLE}/{name}"), mode);
    }
    let sidecar = e2e::stand_in_deb_with(pkg::portable_stand_in_agent(), vm.work_dir());
    e2e::put(&vm, &sidecar, SIDECAR_DEB, 0o644);
    vm
}

fn assert_onboarded(vm: &Vm) {
    vm.wait_until(
        "istio-vm-capture and istio are active",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture istio",
    );
    let rules = vm.ok(RULES);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("-A OUTPUT ") && l.ends_with("-j ISTIO_OUTPUT")),
        "no capture rules:\n{rules}"
    );
    assert!(vm.ok("cat /etc/hosts").contains(layout::HOSTS_BEGIN));
    vm.ok(&format!("test -s {}", layout::TOKEN));
    vm.ok(&format!("test -s {}", layout::STATE_FILE));
}

/// Real packets through the rules of this release's netfilter tools: from a
/// veth interface's network (198.51.100.0/24; its peer answers nothing), an application's TCP
/// connection is redirected to the proxy's outbound port (nothing listens on
/// 15001 in the stand-in, so it is refused at once, where without capture it
/// would wait for an answer that never comes), the proxy's own is not, and a
/// DNS query to resolv.conf's nameserver (203.0.113.53) is answered by the
/// agent's DNS proxy on 15053.
fn capture_moves_real_packets(vm: &Vm) {
    vm.ok(
        "ip link add ivm0 type veth peer name ivm1 && ip addr add 198.51.100.10/24 dev ivm0 && \
         ip addr add 203.0.113.10/24 dev ivm0 && ip link set ivm1 up && ip link set ivm0 up",
    );
    let tcp = |user: &str| {
        let out = vm.sh(&format!(
            "{user} timeout 3 bash -c 'exec 3<>/dev/tcp/198.51.100.20/80' 2>&1; echo \"rc=$?\""
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let app = tcp("");
    assert!(
        app.contains("Connection refused") && app.trim_end().ends_with("rc=1"),
        "the application's connection was not redirected to 15001:\n{app}"
    );
    let proxy = tcp("setpriv --reuid istio-proxy --regid istio-proxy --clear-groups");
    assert!(
        proxy.trim_end().ends_with("rc=124"),
        "the proxy's own connection was captured:\n{proxy}"
    );
    // A DNS query (id 0x1234, one question: A x.example) over UDP; the
    // answer carries the id back.
    let dns = vm.ok(
        "timeout 3 bash -c 'exec 3<>/dev/udp/203.0.113.53/53; \
         printf \"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x01x\\x07example\\x00\\x00\\x01\\x00\\x01\" >&3; \
         head -c 2 <&3 | od -An -tx1'",
    );
    assert_eq!(
        dns.split_whitespace().collect::<Vec<_>>(),
        ["12", "34"],
        "{dns}"
    );
    vm.ok("ip link del ivm0");
}

/// The whole life of the package on one Debian release.
fn deb_life_on(suite: &str, systemd_version: u32) {
    let started = std::time::Instant::now();
    let mut vm = prepare(suite);
    vm.boot();
    let version = vm.ok("systemctl --version | head -n1");
    assert!(
        version.starts_with(&format!("systemd {systemd_version} ")),
        "{suite}: {version}"
    );

    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    let proxy_uid = vm.ok("id -u istio-proxy");
    let before = vm.ok(SNAPSHOT);
    let rules_before = vm.ok(RULES);
    let hosts_before = vm.ok("cat /etc/hosts");

    // Install: the postinst keeps the sidecar's user and starts nothing;
    // systemd knows the shipped unit and tmpfiles.d runs clean on it.
    vm.ok(&format!("dpkg -i {DEB}"));
    assert_eq!(vm.ok("id -u istio-proxy"), proxy_uid);
    assert_eq!(vm.ok("getent passwd istio-proxy | wc -l").trim(), "1");
    assert_eq!(
        vm.ok(RULES),
        rules_before,
        "the package alone changed rules"
    );
    vm.ok(&format!("test ! -e {}", layout::STATE_FILE));
    assert!(
        !vm.sh("systemctl is-active -q istio").status.success(),
        "the package started the sidecar"
    );
    let fragment = vm.ok("systemctl show -p FragmentPath --value istio-vm-capture");
    assert!(
        fragment
            .trim()
            .ends_with("lib/systemd/system/istio-vm-capture.service"),
        "{fragment}"
    );
    vm.ok("systemd-tmpfiles --create istio-vm.conf");
    vm.ok("istio-vm --version");
    // The binary of the glibc floor runs on this release's glibc.
    vm.ok(&format!("istio-vm validate --bundle {BUNDLE}"));
    vm.ok("test -e /usr/share/man/man8/istio-vm.8.gz");
    vm.ok("test -e /usr/share/doc/istio-vm/THIRD-PARTY-NOTICES");

    // Onboard with the packaged binary: only per-VM files go to /etc, and
    // the sidecar is enabled the usual way.
    vm.ok(&format!("istio-vm install --bundle {BUNDLE}"));
    assert_onboarded(&vm);
    vm.ok("test ! -e /etc/systemd/system/istio-vm-capture.service");
    for unit in ["istio", "istio-vm-verify.timer", "istio-vm-capture-heal"] {
        assert_eq!(
            vm.ok(&format!("systemctl is-enabled {unit}")).trim(),
            "enabled",
            "{suite}: {unit}"
        );
    }
    vm.wait_until(
        "the heal watcher and the verify timer are active",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture-heal istio-vm-verify.timer",
    );
    capture_moves_real_packets(&vm);
    // The exposure of every shipped unit on this release's systemd.
    for unit in [
        "istio-vm-capture.service",
        "istio-vm-capture-heal.service",
        "istio-vm-verify.service",
    ] {
        let sec = vm.ok(&format!(
            "systemd-analyze security --no-pager {unit} | tail -n 1"
        ));
        eprintln!(
            "MEASURE {suite}: systemd-analyze security {unit}: {}",
            sec.trim()
        );
    }
    // The heal unit runs only while the sidecar does.
    vm.ok("systemctl stop istio");
    assert!(
        !vm.sh("systemctl is-active -q istio-vm-capture-heal")
            .status
            .success(),
        "{suite}: the heal unit outlived the sidecar"
    );
    vm.ok("systemctl start istio");
    vm.wait_until(
        "the heal watcher is back with the sidecar",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture-heal",
    );

    // Reboot: the sidecar and its capture come back by themselves.
    vm.reboot();
    assert_onboarded(&vm);
    // tmpfiles.d and sysusers.d applied every line without a complaint.
    let complaints = vm.ok(
        "journalctl -b -p warning --no-pager -o cat -u systemd-tmpfiles-setup \
         -u systemd-sysusers",
    );
    assert!(complaints.trim().is_empty(), "{suite}: {complaints}");

    // `systemctl disable` means what an administrator expects, and a rerun
    // of install with the same bundle leaves it so.
    vm.ok("systemctl disable istio");
    vm.ok(&format!("istio-vm install --bundle {BUNDLE}"));
    vm.reboot();
    assert_eq!(
        vm.sh("systemctl is-enabled istio").stdout,
        b"disabled\n".to_vec()
    );
    assert!(!vm.sh("systemctl is-active -q istio").status.success());
    vm.ok("systemctl enable --now istio");
    assert_onboarded(&vm);

    // Upgrade to a package whose capture unit differs: systemd uses the new
    // unit right away (postinst's daemon-reload), install is not rerun, the
    // sidecar keeps running (same main process), and the edited conffile
    // stays.
    let conf = layout::CONFIG_FILE;
    vm.ok(&format!(
        "printf '# edited on this VM\\ntimeout = \"5s\"\\n' >> {conf}"
    ));
    let edited = vm.ok(&format!("cat {conf}"));
    let agent_pid = vm.ok("systemctl show -p MainPID --value istio");
    let heal_pid = vm.ok("systemctl show -p MainPID --value istio-vm-capture-heal");
    let rules_onboarded = vm.ok(RULES);
    assert_eq!(
        vm.ok("systemctl show -p Description --value istio-vm-capture")
            .trim(),
        CAPTURE_DESCRIPTION
    );
    let state_before = vm.ok(&format!("sha256sum {}", layout::STATE_FILE));
    vm.ok(&format!("dpkg -i --force-confold {DEB_REV2}"));
    assert_eq!(vm.ok(&format!("cat {conf}")), edited, "conffile replaced");
    assert_eq!(
        vm.ok("dpkg-query -W -f '${Version}' istio-vm"),
        format!("{VERSION}-2")
    );
    assert_eq!(
        vm.ok("systemctl show -p Description --value istio-vm-capture")
            .trim(),
        CAPTURE_DESCRIPTION_REV2
    );
    assert_eq!(
        vm.ok("systemctl show -p NeedDaemonReload --value istio-vm-capture")
            .trim(),
        "no"
    );
    // The sidecar keeps running and its rules stay; the heal watcher is
    // restarted once, onto the new binary.
    assert_eq!(vm.ok("systemctl show -p MainPID --value istio"), agent_pid);
    assert_eq!(
        vm.ok(RULES),
        rules_onboarded,
        "{suite}: the upgrade touched the rules"
    );
    vm.wait_until(
        "the heal watcher runs again",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture-heal",
    );
    assert_ne!(
        vm.ok("systemctl show -p MainPID --value istio-vm-capture-heal"),
        heal_pid,
        "{suite}: the heal watcher still runs the old binary"
    );
    assert_eq!(
        vm.ok(&format!("sha256sum {}", layout::STATE_FILE)),
        state_before,
        "the upgrade ran install"
    );
    assert_onboarded(&vm);
    // The edited config is valid and in force for the new binary.
    vm.ok(&format!("istio-vm install --bundle {BUNDLE} --check"));

    // Remove: prerm runs `istio-vm uninstall` while the binary exists; the
    // VM is as it was before our package, but for the kept conffile (and
    // the tool's state directory until purge).
    vm.ok("dpkg -r istio-vm");
    vm.ok("test ! -e /usr/bin/istio-vm");
    assert_eq!(vm.ok(RULES), rules_before, "rules not restored");
    assert_eq!(vm.ok("cat /etc/hosts"), hosts_before, "hosts not restored");
    assert!(
        !vm.sh("systemctl is-active -q istio-vm-capture")
            .status
            .success(),
        "capture unit still active"
    );
    assert_eq!(
        vm.sh("systemctl is-enabled istio").stdout,
        b"disabled\n".to_vec()
    );
    for unit in ["istio-vm-verify.timer", "istio-vm-capture-heal"] {
        assert!(
            !vm.sh(&format!("systemctl is-active -q {unit}"))
                .status
                .success(),
            "{suite}: {unit} still active"
        );
    }
    let after_remove = vm.ok(SNAPSHOT);
    let left: BTreeSet<String> = changed_paths(&before, &after_remove)
        .into_iter()
        .filter(|p| !p.starts_with("/var/lib/istio-vm"))
        .collect();
    assert_eq!(
        left,
        BTreeSet::from(["/etc/istio-vm".to_string(), conf.to_string()]),
        "after dpkg -r"
    );
    assert_eq!(vm.ok(&format!("cat {conf}")), edited);

    // Purge: nothing of ours is left.
    vm.ok("dpkg -P istio-vm");
    let after_purge = vm.ok(SNAPSHOT);
    assert_eq!(
        changed_paths(&before, &after_purge),
        BTreeSet::new(),
        "left after dpkg -P"
    );
    assert_eq!(vm.ok("id -u istio-proxy"), proxy_uid, "user kept");
    // The sidecar package is untouched and still works on its own.
    vm.ok("dpkg -s istio-sidecar >/dev/null");
    vm.shutdown();
    eprintln!(
        "{suite}: the package's booted life took {:.1?}",
        started.elapsed()
    );
}

/// Debian 11, 12 and 13 side by side, in one test: libtest would run at
/// most as many tests at once as there are cores (two in CI), and the
/// booted tests mostly wait on their containers. Each release's failure is
/// reported with its name; all three run to the end.
#[test]
fn deb_life_on_debian_11_12_13() {
    let failed: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = e2e::SUITES
            .iter()
            .map(|&(suite, systemd)| (suite, s.spawn(move || deb_life_on(suite, systemd))))
            .collect();
        runs.into_iter()
            .filter_map(|(suite, h)| {
                h.join().err().map(|e| {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("{suite}: {msg}")
                })
            })
            .collect()
    });
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn the_suites_are_the_harness_ones() {
    let want: Vec<(&str, u32)> = vec![("bullseye", 247), ("bookworm", 252), ("trixie", 257)];
    assert_eq!(e2e::SUITES, want.as_slice());
}

/// Ours first, then Istio's (stand-in) istio-sidecar, with the real dpkg on
/// the Debian tree (no boot needed): one istio-proxy user, the one our
/// postinst made, and the sidecar's postinst accepts it and owns its
/// directories with it.
#[test]
fn ours_before_istio_sidecar_leaves_one_shared_user() {
    let vm = prepare("bookworm");
    let dpkg = |deb: &str| {
        let out = std::process::Command::new("unshare")
            .args(["--net", "--", "dpkg"])
            .arg(format!("--root={}", vm.root().display()))
            .args(["--install", &vm.path(deb).display().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dpkg -i {deb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let accounts = |file: &str| -> Vec<String> {
        std::fs::read_to_string(vm.path(file))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("istio-proxy:"))
            .map(str::to_string)
            .collect()
    };
    assert!(accounts("/etc/passwd").is_empty());
    dpkg(DEB);
    let ours = accounts("/etc/passwd");
    assert_eq!(ours.len(), 1);
    let fields: Vec<&str> = ours[0].split(':').collect();
    assert_eq!(fields[5], "/var/lib/istio");
    assert_eq!(accounts("/etc/group").len(), 1);

    dpkg(SIDECAR_DEB);
    assert_eq!(
        accounts("/etc/passwd"),
        ours,
        "the sidecar changed the user"
    );
    assert_eq!(accounts("/etc/group").len(), 1);
    use std::os::unix::fs::MetadataExt;
    let certs = std::fs::metadata(vm.path("/etc/certs")).unwrap();
    assert_eq!(certs.uid().to_string(), fields[2], "/etc/certs owner");
    assert_eq!(certs.gid().to_string(), fields[3], "/etc/certs group");
}
