//! The .deb and .rpm packages, built for real for amd64 and arm64 by
//! `scripts/build-deb.sh` and `scripts/build-rpm.sh`, then linted, inspected,
//! run under qemu, and installed, upgraded and removed with the real dpkg and
//! rpm in a minimal chroot (the booted-Debian install lives with the e2e
//! harness).
//!
//! The release builds are slow, so they happen once per test run (a
//! `OnceLock` shared by every test here) into `<target>/packaging-test/`;
//! cargo's own incremental build makes a second run cheap.
//!
//! Needs root (chroot, mknod) and the Debian packages lintian, rpmlint, rpm,
//! shellcheck, qemu-user-static, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross
//! (scripts/install-test-deps.sh).
//!
//! Kept together (over 700 lines) because the tests share one build of
//! both packages per process (a release build is minutes on 2 cores).

#[path = "common/pkg.rs"]
mod pkg;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pkg::{packages, repo, run, sha256, stdout, target_dir};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONFFILE: &str = "/etc/istio-vm/config.toml";
const STATE: &str = "var/lib/istio-vm/state.json";

/// Size targets of the issue: stripped binary and .deb.
const MAX_BINARY: u64 = 8 * 1024 * 1024;
const MAX_DEB: u64 = 4 * 1024 * 1024;

// ---------------------------------------------------------------- lint

#[test]
fn debs_pass_lintian_and_shellcheck() {
    let p = packages();
    // lintian --fail-on error,warning, shellcheck on the maintainer scripts
    // as shipped.
    run(Command::new(repo().join("scripts/lint-packages.sh"))
        .arg(&p.deb_amd64)
        .arg(&p.deb_arm64));
}

#[test]
fn rpms_pass_rpmlint_and_shellcheck() {
    let p = packages();
    run(Command::new(repo().join("scripts/lint-packages.sh"))
        .arg(&p.rpm_x86_64)
        .arg(&p.rpm_aarch64));
}

/// The committed third-party notices match Cargo.lock (cargo-about),
/// debian/copyright names each of their licenses, and `cargo deny check
/// licenses bans sources` passes.
#[test]
fn licenses_match_the_lock_file_and_cargo_deny_passes() {
    let mut cmd = pkg::clean_command(&repo().join("scripts/licenses.sh"));
    run(cmd.arg("--check"));
    let expr = stdout(pkg::clean_command(&repo().join("scripts/licenses.sh")).arg("--expression"));
    let ids: Vec<&str> = expr.trim().split(" AND ").collect();
    for id in ["Apache-2.0", "MIT", "ISC", "CDLA-Permissive-2.0"] {
        assert!(ids.contains(&id), "{expr}");
    }
}

#[test]
fn lint_script_fails_on_a_bad_package() {
    // The lint step must be able to fail: a .deb whose control file lacks a
    // changelog and copyright (built by hand) is rejected by lintian.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/istio-vm-bad")).unwrap();
    std::fs::write(root.join("usr/share/istio-vm-bad/x"), "x\n").unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: istio-vm-bad\nVersion: 1\nArchitecture: all\n\
         Maintainer: t <t@example.org>\nDescription: bad\n",
    )
    .unwrap();
    let deb = dir.path().join("bad.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb));
    let out = Command::new(repo().join("scripts/lint-packages.sh"))
        .arg(&deb)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a package without copyright passed");
}

// ---------------------------------------------------------------- contents

/// `dpkg-deb --contents` as path -> (permissions, owner/group); directories
/// end in `/`.
fn deb_listing(deb: &Path) -> BTreeMap<String, (String, String)> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

fn expected_files() -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("/usr/bin/istio-vm", "-rwxr-xr-x"),
        (CONFFILE, "-rw-r--r--"),
        ("/usr/share/doc/istio-vm/copyright", "-rw-r--r--"),
        ("/usr/share/doc/istio-vm/changelog.Debian.gz", "-rw-r--r--"),
        ("/usr/share/doc/istio-vm/README.md", "-rw-r--r--"),
        ("/usr/share/doc/istio-vm/THIRD-PARTY-NOTICES", "-rw-r--r--"),
        ("/usr/share/lintian/overrides/istio-vm", "-rw-r--r--"),
        (
            "/usr/lib/systemd/system/istio-vm-capture.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/tmpfiles.d/istio-vm.conf", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/istio-vm.conf", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/istio-vm",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_istio-vm", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/istio-vm.fish",
            "-rw-r--r--",
        ),
    ];
    for page in MAN_PAGES {
        v.push((page, "-rw-r--r--"));
    }
    // Every unit of packaging/systemd/ (the verify service and timer too).
    for e in std::fs::read_dir(repo().join("packaging/systemd"))
        .unwrap()
        .flatten()
    {
        let path = format!(
            "/usr/lib/systemd/system/{}",
            e.file_name().to_string_lossy()
        );
        if !v.iter().any(|(p, _)| *p == path) {
            v.push((Box::leak(path.into_boxed_str()), "-rw-r--r--"));
        }
    }
    v
}

/// The glibc floor of scripts/build-binary.sh.
const GLIBC_FLOOR: (u32, u32) = (2, 17);

/// The newest GLIBC_x.y symbol version `objdump -T` lists for `bin`.
fn newest_glibc(objdump: &str, bin: &Path) -> (u32, u32) {
    let out = stdout(Command::new(objdump).arg("-T").arg(bin));
    out.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut it = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next().flatten().unwrap_or(0)))
        })
        .max()
        .unwrap_or_else(|| panic!("no GLIBC_ versions in objdump -T of {}", bin.display()))
}

#[test]
fn binaries_use_no_glibc_symbol_newer_than_the_floor() {
    let p = packages();
    for (deb, objdump) in [
        (&p.deb_amd64, "objdump"),
        (&p.deb_arm64, "aarch64-linux-gnu-objdump"),
    ] {
        let d = tempfile::tempdir().unwrap();
        extract(deb, d.path());
        let bin = d.path().join("usr/bin/istio-vm");
        let newest = newest_glibc(objdump, &bin);
        assert!(
            newest <= GLIBC_FLOOR,
            "{} needs GLIBC_{}.{}, newer than the floor {}.{}",
            deb.display(),
            newest.0,
            newest.1,
            GLIBC_FLOOR.0,
            GLIBC_FLOOR.1
        );
        // And the package says so: libc6 (>= 2.x) with x at most the floor.
        let depends = stdout(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(deb)
                .arg("Depends"),
        );
        let libc = depends
            .split(',')
            .find(|d| d.trim().starts_with("libc6"))
            .unwrap_or_else(|| panic!("no libc6 in {depends}"));
        let v = libc
            .split(">=")
            .nth(1)
            .map(|v| v.trim().trim_end_matches(')'));
        if let Some(v) = v {
            let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
            let got = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            assert!(got <= GLIBC_FLOOR, "{libc}");
        }
    }
}

const MAN_PAGES: &[&str] = &[
    "/usr/share/man/man8/istio-vm.8.gz",
    "/usr/share/man/man8/istio-vm-validate.8.gz",
    "/usr/share/man/man8/istio-vm-install.8.gz",
    "/usr/share/man/man8/istio-vm-uninstall.8.gz",
    "/usr/share/man/man8/istio-vm-verify.8.gz",
    "/usr/share/man/man8/istio-vm-capture.8.gz",
];

#[test]
fn deb_contents_modes_fields_and_conffile() {
    let p = packages();
    for (deb, arch, libc) in [
        (&p.deb_amd64, "amd64", "libc6"),
        (&p.deb_arm64, "arm64", "libc6"),
    ] {
        let listing = deb_listing(deb);
        let files: BTreeMap<&str, &str> = listing
            .iter()
            .filter(|(path, _)| !path.ends_with('/'))
            .map(|(path, (mode, _))| (path.as_str(), mode.as_str()))
            .collect();
        let want: BTreeMap<&str, &str> = expected_files().into_iter().collect();
        assert_eq!(files, want, "{arch}: files and modes");
        for (path, (_, owner)) in &listing {
            assert_eq!(owner, "0/0", "{arch}: {path} not root-owned");
        }

        let field = |name: &str| {
            stdout(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
                .trim()
                .to_string()
        };
        assert_eq!(field("Package"), "istio-vm");
        assert_eq!(field("Version"), format!("{VERSION}-1"));
        assert_eq!(field("Architecture"), arch);
        assert_eq!(field("Section"), "admin");
        assert_eq!(field("Priority"), "optional");
        let depends = field("Depends");
        let deps: BTreeSet<&str> = depends
            .split(',')
            .map(|d| d.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(deps, BTreeSet::from(["iptables", libc]), "{depends}");
        assert_eq!(field("Recommends"), "iproute2, nftables");
        assert!(
            field("Description").lines().count() > 3,
            "extended description"
        );

        let control = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(control.path()));
        assert_eq!(
            std::fs::read_to_string(control.path().join("conffiles")).unwrap(),
            format!("{CONFFILE}\n")
        );
        for script in ["postinst", "prerm", "postrm"] {
            let meta = std::fs::metadata(control.path().join(script))
                .unwrap_or_else(|_| panic!("{arch}: {script} missing"));
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{script}");
        }
        assert!(!control.path().join("preinst").exists());

        assert!(
            std::fs::metadata(deb).unwrap().len() <= MAX_DEB,
            "{arch} .deb over 4 MiB"
        );
    }
}

/// Files of an .rpm as (permissions, owner, group, flags) by path.
fn rpm_listing(rpm: &Path) -> BTreeMap<String, (String, String, String, String)> {
    stdout(Command::new("rpm").arg("-qp").arg(rpm).args([
        "--qf",
        "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}. %{FILENAMES}\n]",
    ]))
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.splitn(5, ' ').collect();
        (
            f[4].to_string(),
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[3].trim_end_matches('.').to_string(),
            ),
        )
    })
    .collect()
}

#[test]
fn rpm_contents_config_and_requires() {
    let p = packages();
    for (rpm, arch) in [(&p.rpm_x86_64, "x86_64"), (&p.rpm_aarch64, "aarch64")] {
        let listing = rpm_listing(rpm);
        let files: BTreeMap<&str, &str> = listing
            .iter()
            .filter(|(_, (mode, ..))| !mode.starts_with('d'))
            .map(|(path, (mode, ..))| (path.as_str(), mode.as_str()))
            .collect();
        let mut want: BTreeMap<&str, &str> = expected_files()
            .into_iter()
            .filter(|(p, _)| {
                !p.contains("changelog.Debian") && !p.contains("lintian") && !p.contains("zsh")
            })
            .collect();
        // RPM conventions: licenses under /usr/share/licenses, zsh
        // completions in site-functions; the changelog is in the header.
        want.remove("/usr/share/doc/istio-vm/copyright");
        want.remove("/usr/share/doc/istio-vm/THIRD-PARTY-NOTICES");
        want.insert("/usr/share/licenses/istio-vm/copyright", "-rw-r--r--");
        want.insert(
            "/usr/share/licenses/istio-vm/THIRD-PARTY-NOTICES",
            "-rw-r--r--",
        );
        want.insert("/usr/share/zsh/site-functions/_istio-vm", "-rw-r--r--");
        assert_eq!(files, want, "{arch}: files and modes");
        for (path, (_, user, group, _)) in &listing {
            assert_eq!((user.as_str(), group.as_str()), ("root", "root"), "{path}");
        }
        // %config(noreplace): flags c (config) and n (noreplace).
        let flags = &listing[CONFFILE].3;
        assert!(
            flags.contains('c') && flags.contains('n'),
            "{CONFFILE} flags {flags}"
        );

        let q = |tag: &str| {
            stdout(
                Command::new("rpm")
                    .arg("-qp")
                    .arg(rpm)
                    .args(["--qf", &format!("%{{{tag}}}")]),
            )
        };
        assert_eq!(q("NAME"), "istio-vm");
        // The crates' licenses, not Apache-2.0 alone.
        let license = q("LICENSE");
        for id in ["Apache-2.0", "MIT", "ISC"] {
            assert!(license.split(" AND ").any(|l| l == id), "{license}");
        }
        assert_eq!(q("GROUP"), "Unspecified", "no Group tag");
        assert_eq!(q("PACKAGER"), "(none)", "no Packager tag");
        let recommends = stdout(Command::new("rpm").arg("-qp").arg("--recommends").arg(rpm));
        assert_eq!(
            recommends.lines().collect::<BTreeSet<_>>(),
            BTreeSet::from(["iproute", "nftables"])
        );
        // No directory of the shells' or systemd's packages is ours.
        for (path, (mode, ..)) in &listing {
            if mode.starts_with('d') {
                assert!(
                    path.ends_with("/istio-vm"),
                    "{arch}: owns the directory {path}"
                );
            }
        }
        assert_eq!(q("VERSION"), VERSION);
        assert_eq!(q("ARCH"), arch);
        assert!(q("CHANGELOGTEXT").contains("Initial release"));
        let requires = stdout(Command::new("rpm").arg("-qp").arg("--requires").arg(rpm));
        for need in ["iptables", "shadow-utils", "libc.so.6()(64bit)"] {
            assert!(
                requires.lines().any(|l| l.trim() == need),
                "{arch} requires lacks {need}:\n{requires}"
            );
        }
    }
}

/// Unpack one file of a package into a fresh directory.
fn extract(pkg: &Path, dir: &Path) {
    if pkg.extension().is_some_and(|e| e == "deb") {
        run(Command::new("dpkg-deb").arg("-x").arg(pkg).arg(dir));
    } else {
        let cpio = run(Command::new("rpm2cpio").arg(pkg)).stdout;
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("starting cpio");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
        assert!(child.wait().unwrap().success(), "cpio failed");
    }
}

/// ELF e_machine of a binary: 62 = x86-64, 183 = AArch64.
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn both_formats_ship_the_same_stripped_binary() {
    let p = packages();
    for (deb, rpm, machine) in [
        (&p.deb_amd64, &p.rpm_x86_64, 62),
        (&p.deb_arm64, &p.rpm_aarch64, 183),
    ] {
        let d = tempfile::tempdir().unwrap();
        let r = tempfile::tempdir().unwrap();
        extract(deb, d.path());
        extract(rpm, r.path());
        let bin = d.path().join("usr/bin/istio-vm");
        assert_eq!(elf_machine(&bin), machine);
        assert_eq!(sha256(&bin), sha256(&r.path().join("usr/bin/istio-vm")));
        assert!(std::fs::metadata(&bin).unwrap().len() <= MAX_BINARY);
        // Stripped: no symbol table left.
        let sections = stdout(Command::new("readelf").arg("-S").arg("-W").arg(&bin));
        assert!(
            !sections.contains(".symtab"),
            "{} not stripped",
            bin.display()
        );
    }
}

// ---------------------------------------------------------------- arm64 under qemu

/// Run the packaged arm64 binary through qemu-user explicitly: binfmt_misc
/// is not mounted in containers and CI, so nothing may rely on it.
fn qemu(bin: &Path, args: &[&str]) -> Output {
    Command::new("qemu-aarch64-static")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(bin)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("starting qemu-aarch64-static")
}

#[test]
fn arm64_binary_runs_under_qemu_like_the_native_one() {
    let p = packages();
    let arm = tempfile::tempdir().unwrap();
    let amd = tempfile::tempdir().unwrap();
    extract(&p.deb_arm64, arm.path());
    extract(&p.deb_amd64, amd.path());
    let arm_bin = arm.path().join("usr/bin/istio-vm");
    let amd_bin = amd.path().join("usr/bin/istio-vm");

    let version = qemu(&arm_bin, &["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("istio-vm {VERSION}")
    );

    // validate on the shipped example bundle, as JSON: the arm64 build must
    // answer exactly as the amd64 one does (same exit code, same document).
    let args = [
        "--output",
        "json",
        "validate",
        "--bundle",
        "examples/bundle",
    ];
    let on_arm = qemu(&arm_bin, &args);
    let on_amd = Command::new(&amd_bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(on_arm.status.code(), on_amd.status.code());
    assert_eq!(
        String::from_utf8_lossy(&on_arm.stdout),
        String::from_utf8_lossy(&on_amd.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&on_arm.stdout)
        .unwrap_or_else(|e| panic!("validate --output json: {e}"));
    assert_eq!(doc["command"], "validate");
    // The example bundle is valid until 2126: no finding at all.
    assert_eq!(on_arm.status.code(), Some(0), "{doc}");
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["findings"], serde_json::json!([]), "{doc}");
}

// ---------------------------------------------------------------- installs in a chroot

/// A minimal root with just what the maintainer scripts and the binary need
/// (dash, getent, groupadd, useradd, rm, nologin and their libraries copied
/// from this Debian host), a one-user account database and /dev/null: the
/// real dpkg and rpm run the real scripts in it with `--root`.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("istio-vm-pkgroot-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc",
            "tmp",
            "var/tmp",
            "dev",
            "run/lock",
            "var/log",
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
            "var/lib/rpm",
            // Owned by the base system (filesystem, base-files, systemd, the
            // shells) on a real one.
            "usr/share/man/man8",
            "usr/share/doc",
            "usr/share/licenses",
            "usr/lib/systemd/system",
            "usr/lib/tmpfiles.d",
            "usr/lib/sysusers.d",
            "usr/share/bash-completion/completions",
            "usr/share/zsh/site-functions",
            "usr/share/zsh/vendor-completions",
            "usr/share/fish/vendor_completions.d",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("usr/bin/sh", "dash"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).unwrap();
        }
        // The maintainer scripts' fallback without systemd-sysusers reads
        // the sysusers.d line with grep, sed and awk (Priority: required).
        for prog in [
            "dash", "getent", "groupadd", "useradd", "rm", "nologin", "grep", "sed", "awk",
        ] {
            let host = which(prog);
            copy_in(root, &host);
            // awk is mawk through the alternatives: the name, too.
            if host.file_name().unwrap() != prog {
                let link = root.join("usr/bin").join(prog);
                if !link.exists() {
                    std::os::unix::fs::symlink(&host, link).unwrap();
                }
            }
            for lib in libraries(&host) {
                copy_in(root, &lib);
            }
        }
        // The binary comes from the package; its libraries from the host.
        let built = target_dir().join("x86_64-unknown-linux-gnu/release/istio-vm");
        for lib in libraries(&built) {
            copy_in(root, &lib);
        }
        for (file, text, mode) in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/group", "root:x:0:\n", 0o644),
            ("etc/shadow", "root:*:20000:0:99999:7:::\n", 0o640),
            ("etc/gshadow", "root:*::\n", 0o640),
            ("etc/hosts", "127.0.0.1 localhost\n", 0o644),
            ("etc/resolv.conf", "nameserver 203.0.113.53\n", 0o644),
            ("var/lib/dpkg/status", "", 0o644),
            ("var/lib/dpkg/available", "", 0o644),
        ] {
            std::fs::write(root.join(file), text).unwrap();
            std::fs::set_permissions(root.join(file), PermissionsExt::from_mode(mode)).unwrap();
        }
        std::fs::copy("/etc/login.defs", root.join("etc/login.defs")).unwrap();
        run(Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]));
        run(Command::new("rpm").arg("--root").arg(root).args([
            "--dbpath",
            "/var/lib/rpm",
            "--initdb",
        ]));
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    // dpkg and rpm run in a network namespace of their own: a maintainer
    // script that calls `istio-vm uninstall` acts as on a live system
    // (chroot's "/"), and its capture removal must never see this machine's
    // netfilter.
    fn dpkg(&self, args: &[&str]) -> Output {
        Command::new("unshare")
            .args(["--net", "--", "dpkg"])
            .arg(format!("--root={}", self.path().display()))
            .args(["--force-depends", "--force-confold"])
            .args(args)
            .output()
            .expect("starting dpkg")
    }

    fn rpm(&self, args: &[&str]) -> Output {
        Command::new("unshare")
            .args(["--net", "--", "rpm"])
            .arg("--root")
            .arg(self.path())
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args)
            .output()
            .expect("starting rpm")
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_default()
    }

    /// An account line of istio-proxy, split in fields.
    fn account(&self, file: &str) -> Option<Vec<String>> {
        self.read(file)
            .lines()
            .find(|l| l.starts_with("istio-proxy:"))
            .map(|l| l.split(':').map(str::to_string).collect())
    }

    /// Every path under the root with its type, mode, owner and content
    /// digest, except the package databases and account files (checked
    /// separately).
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.path(), self.path(), &mut out);
        out.retain(|p, _| {
            !(p.starts_with("var/lib/dpkg")
                || p.starts_with("var/lib/rpm")
                || p.starts_with("etc/passwd")
                || p.starts_with("etc/group")
                || p.starts_with("etc/shadow")
                || p.starts_with("etc/gshadow")
                || p == "etc/.pwd.lock"
                || p == "var/log/dpkg.log"
                || p == "var/log/faillog"
                || p == "var/log/lastlog")
        });
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let desc = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
        if meta.is_dir() {
            out.insert(rel, desc);
            walk(root, &path, out);
        } else if meta.is_file() {
            out.insert(rel, format!("{desc} {}", sha256(&path)));
        } else {
            out.insert(rel, desc);
        }
    }
}

fn which(prog: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(prog);
        if p.exists() {
            return p.canonicalize().unwrap();
        }
    }
    panic!("{prog} not found on this host");
}

/// Shared libraries (and the loader) a dynamic executable needs, per ldd.
fn libraries(bin: &Path) -> Vec<PathBuf> {
    stdout(Command::new("ldd").arg(bin))
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Copy a host file to the same path under `root` (parents through the
/// root's own usr-merge symlinks).
fn copy_in(root: &Path, host: &Path) {
    let dest = root.join(host.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if !dest.exists() {
        std::fs::copy(host, &dest)
            .unwrap_or_else(|e| panic!("copying {} into the root: {e}", host.display()));
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_proxy_user(root: &Root, shell: &str) {
    let user = root
        .account("etc/passwd")
        .expect("istio-proxy user created");
    let group = root
        .account("etc/group")
        .expect("istio-proxy group created");
    // As Istio's istio-sidecar postinst: system uid/gid (below 1000), the
    // group of the same name as primary group, home /var/lib/istio.
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "system uid, got {uid}");
    assert_eq!(user[3], group[2], "primary group is istio-proxy");
    assert_eq!(user[5], "/var/lib/istio");
    assert_eq!(user[6], shell);
    // No home directory is made: the sidecar's own files create it.
    assert!(!root.path().join("var/lib/istio").exists());
}

/// The base system's directories the .deb lists: dpkg drops them at purge
/// when no other package in the chroot claims them (base-files, systemd and
/// the shells do on a real system).
const BASE_DIRS: [&str; 15] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/man/man8",
    "usr/lib/systemd",
    "usr/lib/systemd/system",
    "usr/lib/tmpfiles.d",
    "usr/lib/sysusers.d",
    "usr/share/bash-completion",
    "usr/share/bash-completion/completions",
    "usr/share/zsh",
    "usr/share/zsh/vendor-completions",
    "usr/share/fish",
    "usr/share/fish/vendor_completions.d",
    "usr/share/lintian",
    "usr/share/lintian/overrides",
];

#[test]
fn deb_install_upgrade_remove_purge_in_a_chroot() {
    let p = packages();
    let root = Root::new();
    let before = root.snapshot();

    ok(
        &root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()]),
        "dpkg --install",
    );
    assert_proxy_user(&root, "/usr/sbin/nologin");
    let uid = root.account("etc/passwd").unwrap()[2].clone();
    for (file, _) in expected_files() {
        assert!(
            root.path().join(&file[1..]).exists(),
            "{file} not installed"
        );
    }
    // Nothing was placed or started: no state, no units, no rules record.
    assert!(!root.path().join("var/lib/istio-vm").exists());
    assert!(!root.path().join("etc/systemd").exists());

    // Local edit of the conffile survives an upgrade to a rebuilt package.
    let conf = root.path().join(&CONFFILE[1..]);
    let edited = format!("{}backend = \"nftables\"\n", root.read(&CONFFILE[1..]));
    std::fs::write(&conf, &edited).unwrap();
    // Reinstall and upgrade: the scripts are idempotent, the user is kept.
    ok(
        &root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()]),
        "dpkg reinstall",
    );
    ok(
        &root.dpkg(&["--install", p.deb_amd64_rev2.to_str().unwrap()]),
        "dpkg upgrade to -2",
    );
    assert_eq!(root.read(&CONFFILE[1..]), edited, "edited conffile kept");
    assert_eq!(root.account("etc/passwd").unwrap()[2], uid);
    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}/var/lib/dpkg", root.path().display()))
            .args(["-W", "-f", "${Version} ${Status}", "istio-vm"]),
    );
    assert_eq!(status, format!("{VERSION}-2 install ok installed"));

    // Remove: every file but the conffile goes; prerm had no state to undo.
    ok(&root.dpkg(&["--remove", "istio-vm"]), "dpkg --remove");
    assert!(!root.path().join("usr/bin/istio-vm").exists());
    assert_eq!(
        root.read(&CONFFILE[1..]),
        edited,
        "conffile kept until purge"
    );

    // The tool's state (as `istio-vm install` would have left it after an
    // uninstall) goes on purge, with the conffile: nothing of ours is left.
    std::fs::create_dir_all(root.path().join("var/lib/istio-vm/backup")).unwrap();
    std::fs::write(root.path().join("var/lib/istio-vm/istio-token"), "x").unwrap();
    ok(&root.dpkg(&["--purge", "istio-vm"]), "dpkg --purge");
    // dpkg also drops the empty base directories the package lists, since
    // no other package in this chroot claims them (base-files does on a
    // real system).
    let base = BASE_DIRS;
    let mut before = before;
    let mut after = root.snapshot();
    before.retain(|p, _| !base.contains(&p.as_str()));
    after.retain(|p, _| !base.contains(&p.as_str()));
    assert_eq!(after, before, "something of the package is left");
    // The user stays (istio-sidecar may share it), as Debian does.
    assert_eq!(root.account("etc/passwd").unwrap()[2], uid);
}

#[test]
fn deb_remove_with_state_runs_uninstall_and_stops_when_it_fails() {
    let p = packages();
    let root = Root::new();
    ok(
        &root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()]),
        "dpkg --install",
    );
    // A state file the tool cannot use: `istio-vm uninstall` must fail, and
    // then prerm must refuse the removal rather than strand capture rules
    // and units of a tool that is gone.
    std::fs::create_dir_all(root.path().join("var/lib/istio-vm")).unwrap();
    std::fs::write(root.path().join(STATE), "not a state file").unwrap();
    let out = root.dpkg(&["--remove", "istio-vm"]);
    assert!(!out.status.success(), "removal went ahead");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restoring the VM failed"), "{stderr}");
    assert!(root.path().join("usr/bin/istio-vm").exists());
    // The way out the message gives works.
    std::fs::remove_file(root.path().join(STATE)).unwrap();
    ok(&root.dpkg(&["--purge", "istio-vm"]), "dpkg --purge");
    assert!(!root.path().join("var/lib/istio-vm").exists());
}

#[test]
fn rpm_install_and_erase_in_a_chroot() {
    let p = packages();
    let root = Root::new();
    let before = root.snapshot();

    ok(
        &root.rpm(&["-i", "--nodeps", p.rpm_x86_64.to_str().unwrap()]),
        "rpm -i",
    );
    assert_proxy_user(&root, "/usr/sbin/nologin");
    let files = stdout(Command::new("rpm").arg("--root").arg(root.path()).args([
        "--dbpath",
        "/var/lib/rpm",
        "-ql",
        "istio-vm",
    ]));
    for f in files.lines() {
        assert!(root.path().join(&f[1..]).exists(), "{f} not installed");
    }
    assert!(files.lines().any(|f| f == "/usr/bin/istio-vm"));
    assert!(!root.path().join("var/lib/istio-vm").exists());

    // Upgrade semantics of the scriptlets: reinstalling the same package
    // runs %pre with 2 and the old %preun/%postun with 1; nothing is undone.
    ok(
        &root.rpm(&[
            "-U",
            "--replacepkgs",
            "--nodeps",
            p.rpm_x86_64.to_str().unwrap(),
        ]),
        "rpm -U --replacepkgs",
    );
    std::fs::create_dir_all(root.path().join("var/lib/istio-vm/backup")).unwrap();
    ok(
        &root.rpm(&[
            "-U",
            "--replacepkgs",
            "--nodeps",
            p.rpm_x86_64.to_str().unwrap(),
        ]),
        "rpm -U --replacepkgs with state",
    );
    assert!(
        root.path().join("var/lib/istio-vm/backup").exists(),
        "an upgrade removed the tool's state"
    );

    // An edited config is kept by rpm as .rpmsave; everything else goes.
    let conf = root.path().join(&CONFFILE[1..]);
    let edited = format!("{}timeout = \"5s\"\n", root.read(&CONFFILE[1..]));
    std::fs::write(&conf, &edited).unwrap();
    ok(&root.rpm(&["-e", "istio-vm"]), "rpm -e");
    let mut after = root.snapshot();
    let saved = after.remove("etc/istio-vm/config.toml.rpmsave");
    assert!(saved.is_some(), "edited config not saved");
    assert_eq!(root.read("etc/istio-vm/config.toml.rpmsave"), edited);
    after.remove("etc/istio-vm");
    assert_eq!(after, before, "something of the package is left");
    assert!(root.account("etc/passwd").is_some(), "user kept");
    assert_eq!(
        root.rpm(&["-q", "istio-vm"]).status.code(),
        Some(1),
        "still registered"
    );
}

#[test]
fn user_made_by_istio_sidecar_first_is_kept() {
    // istio-sidecar installed first made istio-proxy (with its own uid and
    // a login shell); ours must keep it exactly, on both formats.
    let p = packages();
    for format in ["deb", "rpm"] {
        let root = Root::new();
        for (file, line) in [
            ("etc/group", "istio-proxy:x:995:\n"),
            ("etc/gshadow", "istio-proxy:!::\n"),
            (
                "etc/passwd",
                "istio-proxy:x:997:995::/var/lib/istio:/bin/sh\n",
            ),
            ("etc/shadow", "istio-proxy:!:20000::::::\n"),
        ] {
            let path = root.path().join(file);
            let text = std::fs::read_to_string(&path).unwrap() + line;
            std::fs::write(&path, text).unwrap();
        }
        let out = if format == "deb" {
            root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()])
        } else {
            root.rpm(&["-i", "--nodeps", p.rpm_x86_64.to_str().unwrap()])
        };
        ok(&out, format);
        assert_eq!(
            root.read("etc/passwd")
                .lines()
                .filter(|l| l.starts_with("istio-proxy:"))
                .collect::<Vec<_>>(),
            ["istio-proxy:x:997:995::/var/lib/istio:/bin/sh"],
            "{format}"
        );
    }
}

#[test]
fn group_without_user_is_completed() {
    // A leftover istio-proxy group (a half-removed earlier install) must not
    // make the install fail: the user is created in it.
    let p = packages();
    let root = Root::new();
    for (file, line) in [
        ("etc/group", "istio-proxy:x:990:\n"),
        ("etc/gshadow", "istio-proxy:!::\n"),
    ] {
        let path = root.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap() + line;
        std::fs::write(&path, text).unwrap();
    }
    ok(
        &root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()]),
        "dpkg --install",
    );
    assert_eq!(root.account("etc/passwd").unwrap()[3], "990");
}

#[test]
fn rpm_erase_with_state_runs_uninstall_and_stops_when_it_fails() {
    let p = packages();
    let root = Root::new();
    ok(
        &root.rpm(&["-i", "--nodeps", p.rpm_x86_64.to_str().unwrap()]),
        "rpm -i",
    );
    std::fs::create_dir_all(root.path().join("var/lib/istio-vm")).unwrap();
    std::fs::write(root.path().join(STATE), "not a state file").unwrap();
    let out = root.rpm(&["-e", "istio-vm"]);
    assert!(!out.status.success(), "erase went ahead");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restoring the VM failed"), "{stderr}");
    assert!(root.path().join("usr/bin/istio-vm").exists());
    assert!(root.path().join(STATE).exists(), "%postun ran");
    std::fs::remove_file(root.path().join(STATE)).unwrap();
    ok(&root.rpm(&["-e", "istio-vm"]), "rpm -e");
    assert!(!root.path().join("var/lib/istio-vm").exists());
    assert!(!root.path().join("usr/bin/istio-vm").exists());
}

/// `istio-vm install --root` on the tree (an image being baked), then the
/// package removed inside it: prerm / %preun run the packaged binary's
/// `uninstall`, and with the package's own files gone nothing is left.
fn removal_restores_a_baked_tree(format: &str) {
    let p = packages();
    let root = Root::new();
    let before = root.snapshot();
    let out = if format == "deb" {
        root.dpkg(&["--install", p.deb_amd64.to_str().unwrap()])
    } else {
        root.rpm(&["-i", "--nodeps", p.rpm_x86_64.to_str().unwrap()])
    };
    ok(&out, "package install");

    // The packaged binary, run from this machine on the tree.
    let bin = root.path().join("usr/bin/istio-vm");
    let install = Command::new(&bin)
        .arg("--root")
        .arg(root.path())
        .args(["--output", "json", "install", "--bundle"])
        .arg(repo().join("examples/bundle"))
        .output()
        .unwrap();
    ok(&install, "istio-vm --root install");
    let doc: serde_json::Value = serde_json::from_slice(&install.stdout).unwrap();
    assert_eq!(doc["changed"], true, "{doc}");
    assert!(root.read("etc/hosts").contains("# BEGIN istio-vm"));
    assert!(root.path().join(STATE).exists());
    assert!(root.path().join("etc/certs/root-cert.pem").exists());

    let out = if format == "deb" {
        root.dpkg(&["--purge", "istio-vm"])
    } else {
        root.rpm(&["-e", "istio-vm"])
    };
    ok(&out, "package removal");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uninstall: ok"),
        "prerm did not run istio-vm uninstall:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(root.read("etc/hosts"), "127.0.0.1 localhost\n");
    let mut after = root.snapshot();
    let mut before = before;
    if format == "deb" {
        // See deb_install_upgrade_remove_purge_in_a_chroot.
        let base = BASE_DIRS;
        before.retain(|p, _| !base.contains(&p.as_str()));
        after.retain(|p, _| !base.contains(&p.as_str()));
    }
    assert_eq!(after, before, "{format}: something is left");
}

#[test]
fn deb_purge_restores_a_baked_tree() {
    removal_restores_a_baked_tree("deb");
}

#[test]
fn rpm_erase_restores_a_baked_tree() {
    removal_restores_a_baked_tree("rpm");
}
