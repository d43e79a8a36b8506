//! scripts/build-repo.sh's rpm repository for real: the istio-vm .rpm (this
//! run's binary, rpm/istio-vm.spec) published with a throwaway key. rpm
//! itself checks the package signatures (`rpmkeys --checksig`: signed
//! passes, tampered and unsigned fail), gpgv checks `repomd.xml.asc`, and
//! Debian's dnf installs istio-vm into a chroot (`--installroot`, a copy of
//! the e2e Debian tree) from a static HTTP server on the test's LAN with
//! `gpgcheck=1` and `repo_gpgcheck=1`, and refuses the repository once its
//! metadata is tampered with.

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/pinned.rs"]
mod pinned;
#[path = "common/repo.rs"]
mod repo;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use repo::{SigningKey, StaticServer};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PORT: u16 = 8080;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn rpmbuild(spec: &Path, topdir: &Path, defines: &[(&str, String)]) -> PathBuf {
    let mut cmd = Command::new("rpmbuild");
    cmd.args(["-bb", "--quiet", "--target", "x86_64-linux"])
        .arg("--define")
        .arg(format!("_topdir {}", topdir.display()))
        // The debug binary is large: light compression keeps this quick.
        .args(["--define", "_binary_payload w1.gzdio"]);
    for (k, v) in defines {
        cmd.arg("--define").arg(format!("{k} {v}"));
    }
    let o = cmd
        .arg(spec)
        .output()
        .expect("running rpmbuild (apt-get install rpm)");
    assert!(
        o.status.success(),
        "rpmbuild {}:\n{}",
        spec.display(),
        text(&o)
    );
    let mut rpms: Vec<PathBuf> = repo::files_under(&topdir.join("RPMS"))
        .into_iter()
        .map(|p| topdir.join("RPMS").join(p))
        .collect();
    assert_eq!(rpms.len(), 1, "{rpms:?}");
    rpms.pop().unwrap()
}

/// rpmkeys with a scratch database holding only `key` (when given).
fn checksig(db: &Path, rpm: &Path, strict: bool) -> Output {
    let mut cmd = Command::new("rpmkeys");
    cmd.arg("--dbpath").arg(db);
    if strict {
        // Signatures required, not only digests (what dnf's gpgcheck does).
        cmd.args(["--define", "_pkgverify_level all"]);
    }
    cmd.arg("--checksig").arg(rpm).output().unwrap()
}

/// Kept together because it is one scenario on one repository and one
/// machine: each step runs on the state the previous one left.
#[test]
fn rpm_repository_is_signed_and_dnf_installs_from_it_with_both_checks_on() {
    for tool in ["rpmbuild", "rpmkeys", "createrepo_c", "dnf"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "`{tool}` is missing (scripts/install-test-deps.sh installs it)"
        );
    }
    let work = tempfile::Builder::new()
        .prefix("istio-vm-repo-rpm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let w = work.path();
    let dist = w.join("dist");
    std::fs::create_dir_all(&dist).unwrap();

    // The real istio-vm .rpm around this run's binary.
    let built = rpmbuild(
        &e2e::repo().join("rpm/istio-vm.spec"),
        &w.join("rpmbuild"),
        &[
            ("pkg_version", VERSION.to_string()),
            ("srcdir", e2e::repo().display().to_string()),
            (
                "binary",
                e2e::target_profile_dir()
                    .join("istio-vm")
                    .display()
                    .to_string(),
            ),
        ],
    );
    let name = built.file_name().unwrap().to_owned();
    let unsigned = dist.join(&name);
    std::fs::rename(&built, &unsigned).unwrap();

    let key = SigningKey::new("istio-vm-archive");
    let out = w.join("out");
    key.build_repo(&dist, &out);
    let rpmdir = out.join("rpm");
    let signed = rpmdir.join("packages").join(&name);
    for f in ["repodata/repomd.xml", "repodata/repomd.xml.asc"] {
        assert!(rpmdir.join(f).is_file(), "no rpm/{f}");
    }

    // 1. rpm's own signature check, against the exported key only.
    let db = w.join("rpmdb");
    std::fs::create_dir_all(&db).unwrap();
    let o = Command::new("rpmkeys")
        .arg("--dbpath")
        .arg(&db)
        .arg("--import")
        .arg(out.join("istio-vm-archive-keyring.asc"))
        .output()
        .unwrap();
    assert!(o.status.success(), "rpmkeys --import: {}", text(&o));
    let o = checksig(&db, &signed, true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("digests signatures OK"), "{}", text(&o));
    let tampered = w.join("tampered.rpm");
    std::fs::copy(&signed, &tampered).unwrap();
    repo::flip_byte(&tampered);
    let o = checksig(&db, &tampered, false);
    assert!(!o.status.success(), "a tampered rpm passed: {}", text(&o));
    eprintln!("repo: rpmkeys --checksig, tampered: {}", text(&o).trim());
    let o = checksig(&db, &unsigned, true);
    assert!(!o.status.success(), "an unsigned rpm passed: {}", text(&o));
    eprintln!("repo: rpmkeys --checksig, unsigned: {}", text(&o).trim());
    // The header digest rpm prints is the unsigned package's: signing added
    // a signature and changed nothing else.
    let q = |p: &Path| {
        let o = Command::new("rpm")
            .args(["-qp", "--nosignature", "--qf", "%{SHA256HEADER}"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(q(&signed), q(&unsigned));

    // 2. The repository metadata's detached signature.
    let keyring = out.join("istio-vm-archive-keyring.gpg");
    let gpgv = |data: &Path| {
        Command::new("gpgv")
            .arg("--keyring")
            .arg(&keyring)
            .arg(rpmdir.join("repodata/repomd.xml.asc"))
            .arg(data)
            .output()
            .unwrap()
    };
    let o = gpgv(&rpmdir.join("repodata/repomd.xml"));
    assert!(o.status.success(), "gpgv repomd.xml: {}", text(&o));
    let repomd = std::fs::read_to_string(rpmdir.join("repodata/repomd.xml")).unwrap();
    let forged = w.join("repomd.xml");
    std::fs::write(&forged, repomd.replacen("<revision>", "<revision>1", 1)).unwrap();
    let o = gpgv(&forged);
    assert!(!o.status.success(), "gpgv accepted a changed repomd.xml");
    let bad: Vec<String> = text(&o)
        .lines()
        .filter(|l| l.contains("BAD"))
        .map(String::from)
        .collect();
    assert!(!bad.is_empty(), "{}", text(&o));
    eprintln!("repo: gpgv, changed repomd.xml: {}", bad.join("\n"));

    // 3. dnf into a chroot, from the LAN's static server. The chroot is the
    // e2e Debian tree (its shell and useradd run the scriptlets); its rpm
    // database is empty, so a stand-in package provides what istio-vm
    // requires (Debian's packages are not in rpm's database).
    let lan = fleet::Lan::new("rrp", 1);
    let _server = StaticServer::start(&lan.controller, fleet::CONTROLLER_ADDR, PORT, &out, None);
    let root = w.join("root");
    fleet::run(&[
        "cp",
        "-a",
        "--reflink=auto",
        fleet::path_of(&e2e::cached_rootfs()),
        fleet::path_of(&root),
    ]);
    let requires = Command::new("rpm")
        .args(["-qp", "--nosignature", "--requires"])
        .arg(&signed)
        .output()
        .unwrap();
    let provides: String = String::from_utf8_lossy(&requires.stdout)
        .lines()
        .filter(|l| !l.starts_with("rpmlib(") && !l.trim().is_empty())
        .map(|l| format!("Provides: {}\n", l.split_whitespace().next().unwrap()))
        .collect();
    let base_spec = w.join("base.spec");
    std::fs::write(
        &base_spec,
        format!(
            "Name: debian-base-provides\nVersion: 1\nRelease: 1\nSummary: what the Debian tree has\n\
             License: MIT\nBuildArch: noarch\n{provides}%description\nThe Debian tree's packages, for rpm.\n\
             %files\n"
        ),
    )
    .unwrap();
    let base = rpmbuild(&base_spec, &w.join("rpmbuild-base"), &[]);
    let o = Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-i", "--nosignature"])
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "rpm -i the provides package: {}",
        text(&o)
    );

    let base_url = format!("http://{}:{PORT}", fleet::CONTROLLER_ADDR);
    let repo_file = format!(
        "[istio-vm]\nname=istio-vm\nbaseurl={base_url}/rpm\nenabled=1\ngpgcheck=1\n\
         repo_gpgcheck=1\ngpgkey={base_url}/istio-vm-archive-keyring.asc\n"
    );
    std::fs::create_dir_all(root.join("etc/yum.repos.d")).unwrap();
    std::fs::write(root.join("etc/yum.repos.d/istio-vm.repo"), &repo_file).unwrap();
    // dnf takes reposdir from this machine unless told; the rest (cache,
    // rpm database, imported keys) lives in the installroot.
    let reposdir = format!(
        "--setopt=reposdir={}",
        root.join("etc/yum.repos.d").display()
    );
    let dnf = |args: &[&str]| -> Output {
        Command::new("ip")
            .args(["netns", "exec", &lan.hosts[0].netns, "dnf", "-y"])
            .arg("--installroot")
            .arg(&root)
            .args([
                "--releasever=1",
                &reposdir,
                "--setopt=install_weak_deps=False",
                "--disablerepo=*",
                "--enablerepo=istio-vm",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running dnf")
    };
    let started = std::time::Instant::now();
    let o = dnf(&["install", "istio-vm"]);
    assert!(
        o.status.success(),
        "dnf install ({reposdir}):\n{}\n{}",
        text(&o),
        text(&dnf(&["-v", "repolist"]))
    );
    eprintln!(
        "repo: dnf --installroot install from the repository {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = text(&o);
    assert!(
        log.contains("Importing GPG key") || log.contains("imported"),
        "dnf did not import the repository key:\n{log}"
    );
    let q = Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-q", "--qf", "%{VERSION} %{RSAHEADER:pgpsig}\n", "istio-vm"])
        .output()
        .unwrap();
    let q = text(&q);
    assert!(q.starts_with(&format!("{VERSION} RSA/SHA512")), "{q}");
    assert!(
        q.contains(&key.fingerprint[key.fingerprint.len() - 16..].to_lowercase()),
        "{q} (key {})",
        key.fingerprint
    );
    assert!(root.join("usr/bin/istio-vm").is_file());

    // 4. The metadata changed on the server after signing (as a mirror
    // that swapped in packages of its own would): dnf refuses the
    // repository.
    std::fs::write(
        rpmdir.join("repodata/repomd.xml"),
        format!("{repomd}<!-- changed -->\n"),
    )
    .unwrap();
    let o = dnf(&["--refresh", "reinstall", "istio-vm"]);
    assert!(
        !o.status.success(),
        "dnf used metadata with a broken signature:\n{}",
        text(&o)
    );
    let lines: Vec<String> = text(&o)
        .lines()
        .filter(|l| l.contains("GPG") || l.contains("signature") || l.contains("Error"))
        .map(String::from)
        .collect();
    assert!(!lines.is_empty(), "{}", text(&o));
    eprintln!("repo: dnf, changed repomd.xml:\n{}", lines.join("\n"));
}
