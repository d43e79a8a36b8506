//! The real .deb on a booted Debian (the e2e harness, tests/common/e2e.rs):
//! `dpkg -i`, `istio-vm install`, an upgrade to a rebuilt package that keeps
//! a locally edited conffile, `dpkg -r` that restores the VM through prerm,
//! and `dpkg -P` after which nothing of ours is left.
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

fn prepare() -> Vm {
    let p = pkg::packages();
    let vm = Vm::new("pkg");
    e2e::put(&vm, &p.deb_amd64, DEB, 0o644);
    e2e::put(&vm, &p.deb_amd64_rev2, DEB_REV2, 0o644);
    let bundle = e2e::repo().join("examples/bundle");
    for e in std::fs::read_dir(&bundle).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mode = if name == "istio-token" { 0o600 } else { 0o644 };
        e2e::put(&vm, &e.path(), &format!("{BUNDLE}/{name}"), mode);
    }
    let sidecar = e2e::stand_in_deb(vm.work_dir());
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

#[test]
fn deb_install_upgrade_remove_purge_on_a_booted_debian() {
    let mut vm = prepare();
    vm.boot();

    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    let proxy_uid = vm.ok("id -u istio-proxy");
    let before = vm.ok(SNAPSHOT);
    let rules_before = vm.ok(RULES);
    let hosts_before = vm.ok("cat /etc/hosts");

    // Install: the postinst keeps the sidecar's user and starts nothing.
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
    vm.ok("istio-vm --version");
    vm.ok("test -e /usr/share/man/man8/istio-vm.8.gz");

    // Onboard with the packaged binary.
    vm.ok(&format!("istio-vm install --bundle {BUNDLE}"));
    assert_onboarded(&vm);

    // Upgrade to a rebuilt package: the edited conffile stays, and so does
    // the onboarding (prerm upgrade does not uninstall).
    let conf = layout::CONFIG_FILE;
    vm.ok(&format!(
        "printf '# edited on this VM\\ntimeout = \"5s\"\\n' >> {conf}"
    ));
    let edited = vm.ok(&format!("cat {conf}"));
    vm.ok(&format!("dpkg -i --force-confold {DEB_REV2}"));
    assert_eq!(vm.ok(&format!("cat {conf}")), edited, "conffile replaced");
    assert_eq!(
        vm.ok("dpkg-query -W -f '${Version}' istio-vm"),
        format!("{VERSION}-2")
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
}

/// Ours first, then Istio's (stand-in) istio-sidecar, with the real dpkg on
/// the Debian tree (no boot needed): one istio-proxy user, the one our
/// postinst made, and the sidecar's postinst accepts it and owns its
/// directories with it.
#[test]
fn ours_before_istio_sidecar_leaves_one_shared_user() {
    let vm = prepare();
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
