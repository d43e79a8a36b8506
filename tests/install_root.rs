//! Ownership, symlink trust, the unprivileged path and the bind-mounted
//! /etc/hosts: these need root (CI runs as root) and are never skipped.

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::Path;
use std::process::Command;

use fx::{debian_root, install, ok, tree, tree_diff};

fn example() -> &'static Path {
    common::example_bundle()
}

fn require_root() {
    common::require_root("chown, setpriv, mount namespaces");
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn with_proxy_user(r: &Path) {
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\nistio-proxy:x:997:\n").unwrap();
}

#[test]
fn ownership_follows_the_roots_own_user_database() {
    require_root();
    let root = debian_root();
    let r = root.path();
    with_proxy_user(r);
    // Someone else's hosts file keeps its owner; an existing /etc/certs gets
    // istio-proxy and gets root back on uninstall.
    std::os::unix::fs::chown(r.join("etc/hosts"), Some(1234), Some(1235)).unwrap();
    std::fs::create_dir(r.join("etc/certs")).unwrap();
    let before = tree(r, false);
    ok(&install(r, example(), &[], &[]));
    for p in [
        "etc/certs",
        "etc/certs/root-cert.pem",
        "run/secrets",
        "run/secrets/tokens",
        "run/secrets/tokens/istio-token",
        "var/lib/istio-vm/istio-token",
        "var/lib/istio",
        "var/lib/istio/envoy",
        "var/lib/istio/envoy/cluster.env",
        "etc/istio/config",
        "etc/istio/config/mesh",
        "etc/istio/proxy",
        "var/log/istio",
    ] {
        assert_eq!(owner(&r.join(p)), (998, 997), "{p}");
    }
    for p in [
        "etc/tmpfiles.d/istio-vm.conf",
        "etc/tmpfiles.d/istio-vm-token.conf",
        "etc/sysusers.d/istio-vm.conf",
        "var/lib/istio-vm",
        "var/lib/istio-vm/state.json",
        "var/lib/istio-vm/backup",
    ] {
        assert_eq!(owner(&r.join(p)), (0, 0), "{p}");
    }
    assert_eq!(owner(&r.join("etc/hosts")), (1234, 1235));
    let again = ok(&install(r, example(), &[], &[]));
    assert_eq!(again["changed"], false);
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    let after = tree(r, false);
    assert!(before == after, "{}", tree_diff(&before, &after));
}

#[test]
fn without_the_user_ownership_is_left_to_tmpfiles() {
    require_root();
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    assert_eq!(owner(&r.join("etc/certs/root-cert.pem")), (0, 0));
    let token = std::fs::read_to_string(r.join("etc/tmpfiles.d/istio-vm-token.conf")).unwrap();
    // Per VM and never recursive (see units::token_tmpfiles; proven at first
    // boot in e2e_systemd).
    assert!(token.contains("z /etc/certs/root-cert.pem 0644 istio-proxy istio-proxy -"));
    assert!(!token.contains("\nZ "), "{token}");
    assert!(token.contains("C /run/secrets/tokens/istio-token 0600 istio-proxy istio-proxy -"));
    // The user appears later (e.g. the istio-sidecar package): the next run
    // hands the files over.
    with_proxy_user(r);
    let v = ok(&install(r, example(), &[], &[]));
    assert!(fx::steps_with(&v, "changed").contains(&"file:/etc/certs/root-cert.pem".to_string()));
    assert_eq!(owner(&r.join("etc/certs/root-cert.pem")), (998, 997));
}

#[test]
fn parent_symlinks_must_belong_to_root() {
    require_root();
    // A root-owned /etc/istio -> /var/lib/istio (as istio-sidecar's postinst
    // makes it) is followed inside the root.
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/istio")).unwrap();
    symlink("/var/lib/istio", r.join("etc/istio")).unwrap();
    ok(&install(r, example(), &[], &[]));
    assert!(r.join("var/lib/istio/config/mesh").is_file());

    // The same link owned by another user is refused, nothing changes.
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/istio")).unwrap();
    symlink("/var/lib/istio", r.join("etc/istio")).unwrap();
    lchown(r.join("etc/istio"), Some(65534), Some(65534)).unwrap();
    let before = tree(r, false);
    let out = install(r, example(), &[], &[]);
    assert_ne!(out.status.code(), Some(0));
    let v = fx::json(&out);
    assert!(
        v["error"].as_str().unwrap().contains("not by root"),
        "{v:#}"
    );
    assert_eq!(tree(r, false), before);
}

/// Run the binary as nobody (65534) on a root tree nobody owns.
fn as_nobody(r: &Path, args: &[&str]) -> std::process::Output {
    let bin = assert_cmd::cargo::cargo_bin("istio-vm");
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(bin)
        .arg("--root")
        .arg(r)
        .args(args)
        .env_remove("ISTIO_VM_FAILPOINT")
        .env_remove("ISTIO_VM_ROOT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn unprivileged_install_into_a_scratch_root() {
    require_root();
    let root = debian_root();
    let r = root.path();
    // The README's first command, run by an ordinary user.
    Command::new("chown")
        .args(["-R", "-h", "65534:65534"])
        .arg(r)
        .status()
        .unwrap();
    // The bundle must be readable by nobody too.
    let b = fx::bundle_copy();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(b.path())
        .status()
        .unwrap();
    std::fs::set_permissions(
        b.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let before = tree(r, false);
    let bundle = b.path().to_str().unwrap();
    let v = ok(&as_nobody(
        r,
        &["--output", "json", "install", "--bundle", bundle],
    ));
    assert_eq!(v["changed"], true);
    assert_eq!(owner(&r.join("etc/certs/root-cert.pem")), (65534, 65534));
    let v = ok(&as_nobody(
        r,
        &["--output", "json", "install", "--bundle", bundle],
    ));
    assert_eq!(v["changed"], false, "{v:#}");
    ok(&as_nobody(r, &["--output", "json", "uninstall"]));
    let after = tree(r, false);
    assert!(before == after, "{}", tree_diff(&before, &after));
}

#[test]
fn bind_mounted_hosts_is_written_in_place() {
    require_root();
    let root = debian_root();
    let r = root.path();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "127.0.0.1 localhost\n").unwrap();
    let bin = assert_cmd::cargo::cargo_bin("istio-vm");
    // A private mount namespace: the bind mount vanishes with the process.
    let run = |args: &str| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(format!(
                "mount --bind \"$1\" \"$2/etc/hosts\"; \"$3\" --root \"$2\" --output json {args}"
            ))
            .arg("sh")
            .arg(outside.path())
            .arg(r)
            .arg(&bin)
            .env_remove("ISTIO_VM_FAILPOINT")
            .output()
            .expect("unshare (util-linux)")
    };
    let v = ok(&run(&format!("install --bundle {}", example().display())));
    assert!(fx::steps_with(&v, "changed").contains(&"hosts:/etc/hosts".to_string()));
    let got = std::fs::read_to_string(outside.path()).unwrap();
    assert!(
        got.starts_with("127.0.0.1 localhost\n# BEGIN istio-vm\n"),
        "{got}"
    );
    // The file under the mount point was never touched.
    assert!(
        !std::fs::read_to_string(r.join("etc/hosts"))
            .unwrap()
            .contains("istio-vm")
    );
    ok(&run("uninstall"));
    assert_eq!(
        std::fs::read_to_string(outside.path()).unwrap(),
        "127.0.0.1 localhost\n"
    );
}

/// The baked-image path, with systemd's own tools standing in for first
/// boot: sysusers.d creates istio-proxy inside the root, tmpfiles.d hands
/// over ownership and recreates the token under /run from its copy.
#[test]
fn first_boot_creates_the_user_and_fixes_ownership() {
    require_root();
    let root = debian_root();
    let r = root.path();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    // Istio's own file next to ours, and a log the sidecar wrote: first
    // boot gives ours to istio-proxy and leaves these alone.
    std::fs::create_dir_all(r.join("var/lib/istio/envoy")).unwrap();
    std::fs::write(r.join("var/lib/istio/envoy/sidecar.env"), "# Istio's\n").unwrap();
    std::fs::create_dir_all(r.join("var/log/istio")).unwrap();
    std::fs::write(r.join("var/log/istio/istio.log"), "").unwrap();
    ok(&install(r, example(), &[], &[]));
    // "Reboot": /run is a fresh tmpfs.
    std::fs::remove_dir_all(r.join("run/secrets")).unwrap();
    let sysusers = Command::new("systemd-sysusers")
        .arg(format!("--root={}", r.display()))
        .arg(r.join("etc/sysusers.d/istio-vm.conf"))
        .output()
        .expect("systemd-sysusers");
    assert!(
        sysusers.status.success(),
        "{}",
        String::from_utf8_lossy(&sysusers.stderr)
    );
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("istio-proxy:"))
        .expect("user created");
    assert!(
        line.ends_with(":/var/lib/istio:/usr/sbin/nologin"),
        "{line}"
    );
    let f: Vec<&str> = line.split(':').collect();
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert!(uid < 1000, "a system user: {line}");
    for boot in ["first boot", "second boot"] {
        if boot == "second boot" {
            std::fs::remove_dir_all(r.join("run/secrets")).unwrap();
        }
        let tmpfiles = Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", r.display()))
            .arg("--create")
            .arg(r.join("etc/tmpfiles.d/istio-vm.conf"))
            .arg(r.join("etc/tmpfiles.d/istio-vm-token.conf"))
            .output()
            .expect("systemd-tmpfiles");
        let err = String::from_utf8_lossy(&tmpfiles.stderr);
        assert!(tmpfiles.status.success() && err.is_empty(), "{boot}: {err}");
        let tok = r.join("run/secrets/tokens/istio-token");
        assert_eq!(
            std::fs::read(&tok).unwrap(),
            std::fs::read(example().join("istio-token")).unwrap()
        );
        assert_eq!(
            std::fs::metadata(&tok).unwrap().mode() & 0o7777,
            0o600,
            "{boot}"
        );
        for p in [
            "run/secrets/tokens/istio-token",
            "var/lib/istio-vm/istio-token",
            "etc/certs/root-cert.pem",
            "etc/certs",
            "var/lib/istio",
            "var/lib/istio/envoy",
            "var/lib/istio/envoy/cluster.env",
            "etc/istio/config",
            "etc/istio/config/mesh",
            "etc/istio/proxy",
            "var/log/istio",
        ] {
            assert_eq!(owner(&r.join(p)), (uid, gid), "{boot}: {p}");
        }
        for p in ["var/lib/istio/envoy/sidecar.env", "var/log/istio/istio.log"] {
            assert_eq!(owner(&r.join(p)), (0, 0), "{boot}: {p}");
        }
        let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("etc/certs/root-cert.pem"), 0o644, "{boot}");
        assert_eq!(mode("var/lib/istio-vm/istio-token"), 0o600, "{boot}");
    }
}
